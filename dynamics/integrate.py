"""Integrate a Network with scipy.integrate.solve_ivp, one query or a batch in one vectorised RHS.

The batch is one ODE system of B (D + N) variables: solve_ivp's step control then sees the whole
batch, so each right-hand-side call costs two (B, D) x (D, N) products instead of B small ones.
A terminal event stops integration once every query sits at a fixed point
(max |dv/dt|, |dh/dt| below ``fixed_point_tol``).

:class:`Trajectory` is the one result form: the brian2 backend returns it too, and the energy check
(dynamics.energy) and the plots (dynamics.plotting) read it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import numpy as np
from scipy.integrate import solve_ivp
from scipy.sparse import block_diag, csr_matrix

from .network import Network

METHODS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")


@dataclass
class Trajectory:
    """States along an integrated trajectory of a batch of B queries.

    Attributes
    ----------
    t : (T,) sample times (time unit of tau; ms for brian2 runs).
    v : (T, B, D) feature states;  h : (T, B, N) memory states (h = S(g) when adiabatic).
    E : (T, B) energy;  dEdt : (T, B) analytic dE/dt at each sample.
    I : (B, D) the input current each query ran with.
    converged : (B,) True where the state reached a fixed point (velocity below tolerance).
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

    @property
    def v_final(self) -> np.ndarray:
        """(B, D) last feature state (the fixed point when converged)."""
        return self.v[-1]

    @property
    def h_final(self) -> np.ndarray:
        return self.h[-1]

    def query(self, b: int) -> "Trajectory":
        """The trajectory of query b alone (a batch of one)."""
        sl = slice(b, b + 1)
        return Trajectory(self.t, self.v[:, sl], self.h[:, sl], self.E[:, sl], self.dEdt[:, sl],
                          self.I[sl], self.converged[sl], self.method, self.backend, self.message,
                          self.adiabatic, dict(self.params))


def _velocity_norm(net: Network, y, I, adiabatic):
    if adiabatic:
        return np.abs(net.rhs_adiabatic(y.reshape(-1, net.D), I)).max()
    v, h = net.unpack(y)
    dv, dh = net.rhs(v, h, I)
    return max(np.abs(dv).max(), np.abs(dh).max())


def integrate(net: Network, Q, t_end: float = 50.0, *, method: str = "RK45", rtol: float = 1e-8,
              atol: float = 1e-10, t_eval=None, n_samples: int = 101,
              stop_at_fixed_point: bool = True, fixed_point_tol: float = 1e-8,
              adiabatic: bool = False, input_mode: str = "initial", h0=None,
              max_step: float = np.inf, max_nfev: int = 100_000) -> Trajectory:
    """Integrate tau_v dv/dt = sum_mu f_mu dS_mu/dg - v + I, tau_h dh/dt = S(g) - h from queries Q.

    Parameters
    ----------
    net : the Network.
    Q : (D,) or (B, D) queries. ``input_mode="initial"``: v(0) = q, I = net.I (default 0);
        ``"clamped"``: v(0) = q and I = q held on (the query as an input current).
    t_end : integrate over [0, t_end] unless every query converges first.
    method : any solve_ivp method; Radau / BDF (stiff, for tau_h << tau_v) get the
        block-diagonal Jacobian sparsity of the batch.
    t_eval : sample times; default ``n_samples`` evenly spaced over [0, t_end], cut at the event.
    stop_at_fixed_point : stop once max |dv/dt|, |dh/dt| < fixed_point_tol for the whole batch.
    adiabatic : integrate the reduced system (h = S(g) at all times).
    h0 : initial memory state (default S(g(q))).
    max_nfev : stop with RuntimeError after this many right-hand-side calls (a non-smooth
        similarity such as manhattan with eps = 0 chatters around its kinks and would otherwise
        run for hours; use its smoothed form, e.g. get_similarity("manhattan", eps=0.05)).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if not (np.isfinite(t_end) and t_end > 0):
        raise ValueError(f"t_end must be a positive finite time, got {t_end}")
    if input_mode not in ("initial", "clamped"):
        raise ValueError(f"input_mode must be 'initial' or 'clamped', got {input_mode!r}")
    v0, h0 = net.initial_state(Q, h0)
    B = v0.shape[0]
    I = v0.copy() if input_mode == "clamped" else net._I(None, B).copy()
    rhs = net.fun(I, adiabatic=adiabatic)
    calls = [0]

    def fun(t, y):
        calls[0] += 1
        if calls[0] > max_nfev:
            raise RuntimeError(
                f"integration stopped after {max_nfev} right-hand-side calls at t={t:.6g} of {t_end}: "
                f"the system is stiff or non-smooth ({net.sim.name}, smooth={net.sim.smooth}); "
                f"use a smoothed similarity (eps > 0), a stiff method (Radau/BDF) or raise max_nfev")
        return rhs(t, y)
    y0 = v0.ravel() if adiabatic else net.pack(v0, h0)
    width = net.D if adiabatic else net.D + net.N

    events = None
    if stop_at_fixed_point:
        def at_fixed_point(t, y):
            return _velocity_norm(net, y, I, adiabatic) - fixed_point_tol
        at_fixed_point.terminal = True
        at_fixed_point.direction = -1
        events = at_fixed_point

    if t_eval is None:
        t_eval = np.linspace(0.0, t_end, int(n_samples))
    t_eval = np.asarray(t_eval, dtype=np.float64)
    extra = {}
    if method in ("Radau", "BDF"):
        extra["jac_sparsity"] = block_diag([csr_matrix(np.ones((width, width)))] * B, format="csr")

    with np.errstate(over="raise", invalid="raise", divide="raise"):
        try:
            sol = solve_ivp(fun, (0.0, float(t_end)), y0, method=method, t_eval=t_eval,
                            rtol=rtol, atol=atol, events=events, max_step=max_step, **extra)
        except FloatingPointError as err:
            raise FloatingPointError(f"integration of {net!r} hit a floating-point error ({err}); "
                                     f"the state left the range this network can represent") from None
    if sol.status < 0:
        raise RuntimeError(f"solve_ivp failed: {sol.message}")
    ts, Y = sol.t, sol.y.T
    if stop_at_fixed_point and sol.t_events and len(sol.t_events[0]):
        te, ye = sol.t_events[0][0], sol.y_events[0][0]
        if not len(ts) or te > ts[-1]:
            ts, Y = np.append(ts, te), np.vstack([Y, ye[None, :]])
    T = len(ts)
    Yb = Y.reshape(T, B, width)
    v = Yb[:, :, :net.D]
    if adiabatic:
        h = np.stack([net.similarity(net.L_v.grad(vk)) for vk in v])
        E = np.stack([net.energy_adiabatic(vk, I) for vk in v])
        dE = np.stack([net.dEdt_adiabatic(vk, I) for vk in v])
        vel = np.abs(net.rhs_adiabatic(v[-1], I)).max(1)
    else:
        h = Yb[:, :, net.D:]
        E = np.stack([net.energy(vk, hk, I) for vk, hk in zip(v, h)])
        dE = np.stack([net.dEdt(vk, hk, I) for vk, hk in zip(v, h)])
        dv, dh = net.rhs(v[-1], h[-1], I)
        vel = np.maximum(np.abs(dv).max(1), np.abs(dh).max(1))
    params = {"rtol": rtol, "atol": atol, "t_end": float(t_end), "fixed_point_tol": fixed_point_tol,
              "input_mode": input_mode, "nfev": int(sol.nfev), **net.describe()}
    # the terminal event stops where max velocity crosses fixed_point_tol (to root-finding accuracy),
    # so the slowest query sits at the tolerance itself: allow that crossing
    return Trajectory(t=ts, v=v, h=h, E=E, dEdt=dE, I=I, converged=vel <= fixed_point_tol * (1 + 1e-6),
                      method=method, backend="scipy", message=sol.message, adiabatic=adiabatic,
                      params=params)
