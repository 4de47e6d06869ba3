"""The integration methods below :func:`uhn.dynamics.integrate.integrate`."""
