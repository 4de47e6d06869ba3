"""The one result form of an integration: :class:`Trajectory`, and its netCDF-4 round trip.

Every integration method (uhn.dynamics.integrate) and the brian2 backend return it; the energy
check (uhn.dynamics.analysis.energy) and the plots (uhn.dynamics.plotting) read it. The file
format is uhn.dynamics.io's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from uhn.dynamics import io


@dataclass
class Trajectory:
    """States along an integrated trajectory of a batch of B queries.

    Attributes
    ----------
    t : (T,) sample times (time unit of tau; ms for brian2 runs).
    v : (T, B, D) feature states;  h : (T, B, N) memory states (h = S(g) when adiabatic).
    E : (T, B) energy;  dEdt : (T, B) analytic dE/dt at each sample (docs/theory.md section 3).
    I : (B, D) the input current each query ran with.
    converged : (B,) True where the final state is a fixed point (see ``integrate``: velocity below
        fixed_point_tol + noise_factor x the integrator's resolution).
    method, backend, message : which integrator ran and how it ended.
    adiabatic : True for the reduced system (tau_h -> 0).
    params : every setting that produced it (tolerances, dt, scheme, network description).
    """

    t: np.ndarray
    v: np.ndarray
    h: np.ndarray
    E: np.ndarray
    dEdt: np.ndarray
    I: np.ndarray
    converged: np.ndarray
    method: str
    backend: str
    message: str = ""
    adiabatic: bool = False
    params: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        """One line: the arrays are summarised by their sizes (T samples of B queries, D features,
        N memories), the time range and how many queries converged."""
        T, B, D = self.v.shape
        t = f"t=[{self.t[0]:g}, {self.t[-1]:g}]" if len(self.t) else "t=[]"
        return (f"Trajectory(method={self.method!r}, backend={self.backend!r}, B={B}, D={D}, "
                f"N={self.h.shape[2]}, T={T}, {t}, converged={int(np.sum(self.converged))}/{B}, "
                f"adiabatic={self.adiabatic})")

    @property
    def v_final(self) -> np.ndarray:
        """(B, D) last feature state (the fixed point when converged)."""
        return self.v[-1]

    @property
    def h_final(self) -> np.ndarray:
        return self.h[-1]

    def save(self, path) -> Path:
        """Write this trajectory to a netCDF-4 file (uhn.dynamics.io), atomically; returns the path."""
        return io.write(self, path)

    @classmethod
    def load(cls, path) -> "Trajectory":
        """Read a trajectory written by :meth:`save`; exact round trip."""
        return cls(**io.read(path))

    def query(self, b: int) -> "Trajectory":
        """The trajectory of query b alone (a batch of one)."""
        sl = slice(b, b + 1)
        return Trajectory(self.t, self.v[:, sl], self.h[:, sl], self.E[:, sl], self.dEdt[:, sl],
                          self.I[sl], self.converged[sl], self.method, self.backend, self.message,
                          self.adiabatic, dict(self.params))


def save_trajectory(traj: Trajectory, path) -> Path:
    """Write ``traj`` to ``path`` as netCDF-4/HDF5 (atomically: a temporary file in the same folder
    moved into place); returns the path. Read it back with :func:`load_trajectory`."""
    return io.write(traj, path)


def load_trajectory(path) -> Trajectory:
    """Read a Trajectory written by :func:`save_trajectory` (the file is closed on return)."""
    return Trajectory.load(path)


def from_xarray(ds) -> Trajectory:
    """The Trajectory stored in an ``xarray.Dataset`` made by :func:`uhn.dynamics.io.to_xarray`."""
    return Trajectory(**io.read_dataset(ds))


__all__ = ["Trajectory", "save_trajectory", "load_trajectory", "from_xarray"]
