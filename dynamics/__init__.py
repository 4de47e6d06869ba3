"""Continuous-time Krotov-Hopfield networks for any differentiable similarity (docs/theory.md section 2).

The network (:mod:`~uhn.dynamics.network`) and its Lagrangians, the one front door
:func:`~uhn.dynamics.integrate.integrate` over :mod:`~uhn.dynamics.solvers`, the checks of
:mod:`~uhn.dynamics.analysis`, and the brian2 :mod:`~uhn.dynamics.backends`.
"""
