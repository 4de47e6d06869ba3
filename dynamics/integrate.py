"""Integrate a Network, one query or a batch in one vectorised RHS.

Two integrators, same result form:

- scipy.integrate.solve_ivp (``method`` = "RK45", "Radau", ...): the batch is one ODE system of
  B (D + N) variables, so each right-hand-side call costs two (B, D) x (D, N) products instead of
  B small ones, but one step size serves the whole batch and a terminal event stops integration
  only once every query sits at a fixed point (the test of :func:`rest_ratio`).
- "RK45-batched" (uhn.dynamics.solvers.rk45_batched): the same Dormand-Prince pair with one step size and one
  error control per query, each query leaving the batch at its own fixed point; a query's
  trajectory is then what RK45 would give it alone, at a fraction of the cost per query.

:class:`Trajectory` is the one result form: the brian2 backend returns it too, and the energy check
(uhn.dynamics.analysis.energy) and the plots (uhn.dynamics.plotting) read it.
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from scipy.integrate import solve_ivp
from scipy.sparse import csr_matrix

from threadpoolctl import threadpool_limits

from uhn.models.arrays import device, is_numpy_namespace, library_name, to_numpy

from uhn.dynamics.solvers.rk45_batched import (check_keep_every, check_times, kept_indices,
    resolved_rtol, rows_within, solve_batched)
from uhn.dynamics.solvers.rk45_batched_array import solve_batched_array
from uhn.dynamics.network import Network
from uhn.models.validation import require_count, require_positive

SCIPY_METHODS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")
BATCHED = "RK45-batched"
#: the exact reduced solver of uhn.dynamics.solvers.reduced (dot similarity, quadratic L_v)
REDUCED = "reduced"
METHODS = SCIPY_METHODS + (BATCHED, REDUCED)
NOISE_FACTOR = 30.0
#: most nonzeros of the block-diagonal Jacobian sparsity that Radau / BDF may be given: B blocks of
#: width^2 (width = D + N, or D when adiabatic). The pattern alone costs 12 bytes per nonzero
#: (int32 index + float64 value once scipy converts it) and the finite-difference Jacobian and its
#: sparse LU at least as much again, so 2e7 nonzeros is ~0.5 GB; B = 1000 MNIST queries
#: (width 884) would need 7.8e8 (~9 GB).
JAC_NNZ_LIMIT = 20_000_000
#: the energies at the samples are computed this many (query, sample) rows at a time: one batched
#: call per chunk instead of one per sample, with temporaries of a few (chunk, D + N) arrays
ENERGY_CHUNK_ROWS = 256
#: BLAS threads while integrating (integrate(blas_threads=...)). The right-hand side's products
#: are small ((B, D) x (D, N), B = 256, D = 784, N = 100: ~1 ms), and a second BLAS thread that
#: waits for a core costs more than it saves: on this 2-core machine under load (other processes
#: running) one thread made the batched integration 8x faster in wall time (5.4 s vs 43.6 s for
#: B = 256) and the two products 40x faster (1.4 ms vs 56 ms); on an idle machine one thread was
#: measured 1.3x faster for these products and burns 5.8x less CPU under load.
BLAS_THREADS = 1


@dataclass
class Trajectory:
    """States along an integrated trajectory of a batch of B queries.

    Attributes
    ----------
    t : (T,) sample times (time unit of tau; ms for brian2 runs).
    v : (T, B, D) feature states;  h : (T, B, N) memory states (h = S(g) when adiabatic).
    E : (T, B) energy;  dEdt : (T, B) analytic dE/dt at each sample.
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

    def save(self, path) -> None:
        """Write this trajectory to a netCDF-4 file (uhn.dynamics.io.save_trajectory), atomically."""
        from uhn.dynamics.io import save_trajectory
        save_trajectory(self, path)

    @classmethod
    def load(cls, path) -> "Trajectory":
        """Read a trajectory written by :meth:`save` (uhn.dynamics.io.load_trajectory); exact round trip."""
        from uhn.dynamics.io import load_trajectory
        return load_trajectory(path)

    def query(self, b: int) -> "Trajectory":
        """The trajectory of query b alone (a batch of one)."""
        sl = slice(b, b + 1)
        return Trajectory(self.t, self.v[:, sl], self.h[:, sl], self.E[:, sl], self.dEdt[:, sl],
                          self.I[sl], self.converged[sl], self.method, self.backend, self.message,
                          self.adiabatic, dict(self.params))


def rest_floor(net: Network, width: int, tol, noise, rtol, atol):
    """(base, slope), each (width,): component i of a state y is at rest when
    |dy_i/dt| <= base_i + slope_i |y_i| = tol + noise (atol + rtol |y_i|) / tau_i, with
    base_i = tol + noise atol / tau_i and slope_i = noise rtol / tau_i; tau_i = tau_v for the D
    feature neurons, tau_h for the N memory neurons after them (width D: the adiabatic rows)."""
    tau = np.full(width, net.tau_v)
    tau[net.D:] = net.tau_h
    return tol + noise * atol / tau, noise * rtol / tau


def rest_ratio(net: Network, Y, dY, tol, noise, rtol, atol, adiabatic):
    """(b,) max_i |dy_i/dt| / (tol + noise (atol + rtol |y_i|) / tau_i) per row of states Y (b, W)
    (the threshold from :func:`rest_floor`; ``adiabatic``: rows of v alone, every tau_i = tau_v).

    A query sits at a fixed point when this is <= 1. The second term is the velocity the
    integrator cannot resolve: an explicit method on a stiff layer (tau_h << tau_v) keeps that
    layer jittering at its error tolerance, |dh/dt| ~ (atol + rtol |h|) / tau_h, forever."""
    base, slope = rest_floor(net, net.D if adiabatic else net.D + net.N, tol, noise, rtol, atol)
    floor = np.abs(Y)
    floor *= slope
    floor += base
    return (np.abs(dY) / floor).max(axis=1)


def _stall_message(net: Network, t, t_end, reason):
    return (f"integration stopped at t={t:.6g} of {t_end}: {reason}; the system is stiff or "
            f"non-smooth ({net.sim.name}, smooth={net.sim.smooth}); use a smoothed similarity "
            f"(eps > 0), a stiff method (Radau/BDF) or raise max_nfev")


def check_arguments(t_end, rtol, atol, fixed_point_tol, noise_factor, input_mode, max_step,
                    max_nfev):
    """The checks every integrator makes of its common arguments; returns (t_end, max_step,
    max_nfev) as numbers, or raises an error naming the bad one."""
    t_end = require_positive(t_end, "t_end", "time")
    max_step = require_positive(max_step, "max_step", "step size (np.inf for no limit)", finite=False)
    max_nfev = require_count(max_nfev, "max_nfev")
    if input_mode not in ("initial", "clamped"):
        raise ValueError(f"input_mode must be 'initial' or 'clamped', got {input_mode!r}")
    if rtol is not None and not (np.isfinite(rtol) and rtol > 0):
        raise ValueError(f"tolerances must be finite with rtol > 0 and atol >= 0, got rtol={rtol}, "
                         f"atol={atol}")
    if not (np.isfinite(atol) and atol >= 0):
        raise ValueError(f"tolerances must be finite with rtol > 0 and atol >= 0, got rtol={rtol}, "
                         f"atol={atol}")
    if not (fixed_point_tol >= 0 and noise_factor >= 0 and fixed_point_tol + noise_factor * atol > 0):
        raise ValueError(f"the fixed-point test needs fixed_point_tol >= 0 and noise_factor >= 0, "
                         f"not both giving a zero threshold (got fixed_point_tol={fixed_point_tol}, "
                         f"noise_factor={noise_factor}, atol={atol})")
    return t_end, max_step, max_nfev


def integrate(net: Network, Q, t_end: float = 50.0, *, method: str = "RK45", rtol: Optional[float] = None,
              atol: float = 1e-10, t_eval=None, n_samples: int = 101,
              stop_at_fixed_point: bool = True, fixed_point_tol: float = 1e-8,
              noise_factor: float = NOISE_FACTOR, adiabatic: bool = False, input_mode: str = "initial", h0=None,
              max_step: float = np.inf, max_nfev: int = 100_000, keep="all",
              blas_threads=BLAS_THREADS, progress=False) -> Trajectory:
    """Integrate tau_v dv/dt = sum_mu f_mu dS_mu/dg - v + I, tau_h dh/dt = S(g) - h from queries Q.

    Parameters
    ----------
    net : the Network.
    Q : (D,) or (B, D) queries. ``input_mode="initial"``: v(0) = q, I = net.I (default 0);
        ``"clamped"``: v(0) = q and I = q held on (the query as an input current).
    t_end : integrate over [0, t_end] unless every query converges first.
    method : any solve_ivp method (Radau / BDF, for tau_h << tau_v, get the block-diagonal
        Jacobian sparsity of the batch), or "RK45-batched": Dormand-Prince with a step size per
        query, each query stopping at its own fixed point (uhn.dynamics.solvers.rk45_batched; much faster for B > 1),
        or "reduced": the exact reduced solver for dot similarity with quadratic L_v
        (:func:`uhn.dynamics.solvers.reduced.integrate_reduced`, N x N products instead of N x D).
    rtol, atol : the solver's tolerances. ``rtol`` defaults to 1e-8 for float64 states and 1e-4
        for float32 ones (uhn.dynamics.solvers.rk45_batched.DEFAULT_RTOL) and is refused below 100 eps of the state
        dtype (uhn.dynamics.solvers.rk45_batched.resolved_rtol): float32 cannot resolve more.
    t_eval : sample times; default ``n_samples`` (>= 2) evenly spaced over [0, t_end], cut where the last
        query stops. With "RK45-batched", a query that stopped earlier holds its final state.
    stop_at_fixed_point : stop at a fixed point (solve_ivp: once every query is at one;
        "RK45-batched": each query at its own): every component's velocity below
        fixed_point_tol + noise_factor (atol + rtol |y_i|) / tau_i. The second term is the
        integrator's resolution (set noise_factor = 0 for a purely absolute test): an explicit
        method on a stiff layer (tau_h << tau_v) keeps |dh/dt| jittering near
        (atol + rtol |h|) / tau_h (measured up to ~12x that, MNIST, tau_h = 0.1) and would
        otherwise never see a fixed point.
    adiabatic : integrate the reduced system (h = S(g) at all times).
    h0 : initial memory state (default S(g(q))).
    max_nfev : stop with RuntimeError after this many right-hand-side calls (per query with
        "RK45-batched"): a non-smooth similarity such as manhattan with eps = 0 chatters around its
        kinks and would otherwise run for hours; use its smoothed form, e.g.
        get_similarity("manhattan", eps=0.05).
    keep : which of the samples (the times ``t_eval`` up to the last query's stop, then that stop
        time) the trajectory keeps: "all"; an integer k, every k-th sample (indices 0, k, 2k, ...)
        and the last one; "ends", the first and the last sample only (the energy check needs
        two). The kept samples are those of keep="all", bit for bit (uhn.dynamics.solvers.rk45_batched.kept_indices).
        With "RK45-batched" only the kept samples are ever stored (at B = 256, N = 1000 and 101
        samples the stored states are ~75 % of the peak memory); solve_ivp methods thin after
        solving. The energies are computed at the kept samples only.
    blas_threads : BLAS threads while integrating (threadpoolctl), default ``BLAS_THREADS`` = 1
        (measured faster for these products, see its comment); None leaves BLAS as it is.
    progress : True: a progress bar on stderr in simulated time, with the number of queries still
        running (RK45-batched retires them at their fixed points); a callable ``report(t, n)`` is
        called instead (after every step, or every right-hand-side call for solve_ivp methods).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if not is_numpy_namespace(net.xp):
        if method != BATCHED:
            raise TypeError(f"method={method!r} computes in numpy, but this network's memories are "
                            f"{library_name(net.xp)} arrays; use method='{BATCHED}' (on their "
                            f"device) or a network of numpy memories")
        return _integrate_array(net, Q, t_end, rtol=rtol, atol=atol, t_eval=t_eval,
                                n_samples=n_samples, stop_at_fixed_point=stop_at_fixed_point,
                                fixed_point_tol=fixed_point_tol, noise_factor=noise_factor,
                                adiabatic=adiabatic, input_mode=input_mode, h0=h0,
                                max_step=max_step, max_nfev=max_nfev, keep=keep, progress=progress)
    t_end, max_step, max_nfev = check_arguments(t_end, rtol, atol, fixed_point_tol, noise_factor,
                                                input_mode, max_step, max_nfev)
    if blas_threads is not None:
        blas_threads = require_count(blas_threads, "blas_threads")
    if method == REDUCED:
        if keep != "all":
            raise ValueError(f"method='reduced' keeps every sample (it rebuilds v from them); "
                             f"got keep={keep!r}, use keep='all'")
        from uhn.dynamics.solvers.reduced import integrate_reduced
        with threadpool_limits(limits=blas_threads, user_api="blas"), \
                _time_bar(progress, t_end, len(np.atleast_2d(Q))) as report:
            # the reduced rows are float64 whatever the queries' dtype (N-sized, cheap); the
            # samples come back in the queries' dtype
            traj = integrate_reduced(net, Q, t_end, rtol=resolved_rtol(rtol, np.float64), atol=atol,
                                     t_eval=t_eval, n_samples=n_samples,
                                     stop_at_fixed_point=stop_at_fixed_point,
                                     fixed_point_tol=fixed_point_tol, noise_factor=noise_factor,
                                     adiabatic=adiabatic, input_mode=input_mode, h0=h0,
                                     max_step=max_step, max_nfev=max_nfev, progress=report)
        traj.params["blas_threads"] = blas_threads
        return traj
    keep_every = _keep_every(keep)
    v0, h0 = net.initial_state(Q, h0)
    rtol = resolved_rtol(rtol, v0.dtype)   # float32 states: float32 samples, whatever the solver
    B = v0.shape[0]
    I = v0.copy() if input_mode == "clamped" else net.input_current(None, B, v0.dtype).copy()
    width = net.D if adiabatic else net.D + net.N
    Y0 = v0 if adiabatic else np.concatenate([v0, h0], axis=1)
    t_eval = sample_times(t_end, t_eval, n_samples)
    solver = _solve_batched if method == BATCHED else _solve_scipy
    if method in ("Radau", "BDF"):
        check_jacobian_size(method, B, width)
    with threadpool_limits(limits=blas_threads, user_api="blas"):
        try:
            with np.errstate(over="raise", invalid="raise", divide="raise"):
                with _time_bar(progress, t_end, B) as report:
                    ts, Y, info = solver(net, Y0, I, t_end, method=method, t_eval=t_eval, rtol=rtol,
                                         atol=atol, tol=fixed_point_tol if stop_at_fixed_point else None,
                                         noise=noise_factor, adiabatic=adiabatic, max_step=max_step,
                                         max_nfev=max_nfev, keep_every=keep_every, progress=report)
        except FloatingPointError as err:
            raise FloatingPointError(f"integration of {net!r} hit a floating-point error ({err}); "
                                     f"the state left the range this network can represent") from None
        T = len(ts)
        Yb = Y.reshape(T, B, width).astype(v0.dtype, copy=False)  # solve_ivp computes in float64
        v = Yb[:, :, :net.D]
        h = None if adiabatic else Yb[:, :, net.D:]
        h, E, dE = sample_energies(net, v, h, I)
    Yf = Yb[-1]
    ratio = rest_ratio(net, Yf, net.velocity(Yf, I, adiabatic), fixed_point_tol, noise_factor,
                        rtol, atol, adiabatic)
    # a query is converged when the solver stopped it at a fixed point or its final state passes
    # the test. The solve_ivp event stops where max_b ratio_b crosses 1 to root-finding accuracy in
    # t, but the ratio (a max over components of a velocity at the integrator's noise floor) is not
    # smooth there: recomputed at the event state it was measured at 1 + 4e-6, so the event itself,
    # not a recomputed ratio, says whether the solver found the fixed point
    stopped = info.pop("stopped_at_fixed_point")
    params = {"rtol": rtol, "atol": atol, "t_end": float(t_end), "fixed_point_tol": fixed_point_tol,
              "noise_factor": noise_factor, "input_mode": input_mode, "keep": keep if isinstance(keep, str) else int(keep),
              "blas_threads": blas_threads, **info, **net.describe()}
    return Trajectory(t=ts, v=v, h=h, E=E, dEdt=dE, I=I, converged=stopped | (ratio <= 1.0),
                      method=method, backend="scipy" if method in SCIPY_METHODS else "numpy",
                      message=info.pop("message"), adiabatic=adiabatic, params=params)


def _integrate_array(net: Network, Q, t_end, *, rtol, atol, t_eval, n_samples, stop_at_fixed_point,
                     fixed_point_tol, noise_factor, adiabatic, input_mode, h0, max_step, max_nfev,
                     keep, progress) -> Trajectory:
    """integrate(method="RK45-batched") for a network on non-numpy arrays: the step, sampling,
    rest test (:func:`rest_floor`'s threshold), energies and dE/dt at the samples (float64) on the
    arrays' device (uhn.dynamics.solvers.rk45_batched_array), then one host copy of the samples ``keep`` retains:
    the Trajectory holds numpy arrays, so verify_energy, the plots and uhn.dynamics.io read it as any
    other (``keep="ends"`` copies the first and last samples only)."""
    xp = net.xp
    keep_every = _keep_every(keep)
    t_end, max_step, max_nfev = check_arguments(t_end, rtol, atol, fixed_point_tol, noise_factor,
                                                input_mode, max_step, max_nfev)
    v0, h0 = net.initial_state(Q, h0)
    rtol = resolved_rtol(rtol, np.float32 if v0.dtype == xp.float32 else np.float64)
    B, D = v0.shape
    I = xp.asarray(v0, copy=True) if input_mode == "clamped" else net.input_current(None, B, v0.dtype)
    Y0 = v0 if adiabatic else xp.concat([v0, h0], axis=1)
    t_eval = sample_times(t_end, t_eval, n_samples)
    zero_input = input_mode != "clamped" and net.I is None

    def F(t, Y):
        return net.velocity(Y, None if zero_input else I, adiabatic)

    # rest_floor's threshold on the device: the rest test of the solver and the final ratio
    base, slope = (xp.asarray(a, dtype=xp.float64, device=device(v0))
                   for a in rest_floor(net, Y0.shape[1], fixed_point_tol, noise_factor, rtol, atol))
    at_rest = None
    if stop_at_fixed_point:
        def at_rest(Y, dY):
            return xp.all(xp.abs(dY) <= base + slope * xp.abs(Y), axis=1)

    def stall(row, t, reason):
        return RuntimeError(_stall_message(net, t, t_end, f"query {row}: {reason}"))

    try:
        with np.errstate(over="raise", invalid="raise", divide="raise"), \
                _time_bar(progress, t_end, B) as report:
            sol = solve_batched_array(F, Y0, t_end, t_eval=t_eval, rtol=rtol, atol=atol,
                                      at_rest=at_rest, max_step=max_step, max_nfev=max_nfev,
                                      on_stall=stall, progress=report)
    except FloatingPointError as err:
        raise FloatingPointError(f"integration of {net!r} hit a floating-point error ({err}); "
                                 f"the state left the range this network can represent") from None
    ts, Y = sol.t, sol.y
    if keep_every != 1:
        kept = kept_indices(len(ts), keep_every)
        ts, Y = ts[kept], xp.take(Y, xp.asarray(kept, device=device(v0)), axis=0)
    T = len(ts)
    v = Y[:, :, :D]
    Ir = xp.reshape(xp.broadcast_to(I, (T, B, D)), (T * B, D))   # the energies take it as float64
    vr = xp.reshape(v, (T * B, D))
    if adiabatic:       # h = S(g) of the float64 states, in the samples' dtype (as sample_energies)
        S, E, dE = net.energy_and_dEdt_adiabatic(vr, Ir)
        h = xp.reshape(xp.astype(S, v.dtype), (T, B, net.N))
    else:
        h = Y[:, :, D:]
        E, dE = net.energy_and_dEdt(vr, xp.reshape(h, (T * B, net.N)), Ir)
    Yf = Y[-1, ...]
    ratio = to_numpy(xp.max(xp.abs(net.velocity(Yf, None if zero_input else I, adiabatic))
                            / (base + slope * xp.abs(Yf)), axis=1))
    n_fp = int(sol.at_fixed_point.sum())
    message = (f"{n_fp} of {B} queries reached a fixed point" if stop_at_fixed_point else "reached t_end")
    params = {"rtol": rtol, "atol": atol, "t_end": float(t_end), "fixed_point_tol": fixed_point_tol,
              "noise_factor": noise_factor, "input_mode": input_mode,
              "keep": keep if isinstance(keep, str) else int(keep), "nfev": int(sol.nfev.sum()),
              "nfev_per_query": sol.nfev.tolist(), "t_final_per_query": sol.t_final.tolist(),
              **net.describe()}
    return Trajectory(t=ts, v=to_numpy(v), h=to_numpy(h), E=to_numpy(xp.reshape(E, (T, B))),
                      dEdt=to_numpy(xp.reshape(dE, (T, B))), I=to_numpy(xp.broadcast_to(I, (B, D))),
                      converged=sol.at_fixed_point | (ratio <= 1.0), method=BATCHED,
                      backend=f"{library_name(xp)} on {device(v0)}", message=message,
                      adiabatic=adiabatic, params=params)


def _keep_every(keep):
    """integrate's ``keep`` as uhn.dynamics.solvers.rk45_batched's ``keep_every``: "all" -> 1, "ends" -> None,
    an integer k >= 1 -> k; else TypeError / ValueError naming ``keep``."""
    if isinstance(keep, str):
        if keep in ("all", "ends"):
            return 1 if keep == "all" else None
        raise ValueError(f"keep must be 'all', 'ends' or an integer k >= 1 (every k-th sample and "
                         f"the last), got {keep!r}")
    try:
        return check_keep_every(keep)
    except (TypeError, ValueError):
        kind = TypeError if isinstance(keep, bool) or not isinstance(keep, (int, np.integer)) else ValueError
        raise kind(f"keep must be 'all', 'ends' or an integer k >= 1 (every k-th sample and the "
                   f"last), got {type(keep).__name__} {keep!r}") from None


def held_samples(*arrays) -> np.ndarray:
    """(T, B) bool for arrays (T, B, ...) of the same T and B: False where query b's rows of every
    array at sample t equal those at sample t - 1 exactly (a query that the batched integrator
    stopped at its fixed point holds its final state there), True elsewhere and at t = 0."""
    T, B = arrays[0].shape[:2]
    new = np.ones((T, B), dtype=bool)
    for t in range(1, T):       # sample by sample: temporaries of one sample, not of all of them
        new[t] = False
        for a in arrays:
            new[t] |= (a[t] != a[t - 1]).reshape(B, -1).any(axis=1)
    return new


def at_new_samples(fn, new, inputs, outputs, chunk_rows: int = None):
    """outputs[j][t, b] = fn(*rows)[j] for every sample t and query b, with ``fn`` called only on the
    rows where ``new`` (:func:`held_samples`) and every other row copied from the sample before.

    ``inputs`` and ``outputs`` are (T, B, ...) arrays (broadcast views welcome as inputs); ``fn``
    takes one (K, ...) array per input, the new rows of a chunk of chunk_rows // B whole samples
    (``chunk_rows`` default ``ENERGY_CHUNK_ROWS``; at least one sample), and returns one (K, ...)
    array per output. A chunk where every row is new is passed as a reshaped view, no gather."""
    T, B = new.shape
    per = max(1, (ENERGY_CHUNK_ROWS if chunk_rows is None else chunk_rows) // max(B, 1))
    for k in range(0, T, per):
        sel = new[k:k + per]
        c, every = len(sel), bool(sel.all())
        if not every and not sel.any():
            continue
        rows = [a[k:k + c].reshape((c * B,) + a.shape[2:]) if every else a[k:k + c][sel]
                for a in inputs]
        for out, values in zip(outputs, fn(*rows)):
            if every:
                out[k:k + c] = values.reshape((c, B) + out.shape[2:])
            else:
                out[k:k + c][sel] = values
    for t in np.flatnonzero(~new.all(axis=1)):     # ascending: a run of held samples copies its first
        held = ~new[t]
        for out in outputs:
            out[t, held] = out[t - 1, held]


def sample_energies(net: Network, v, h, I, new=None):
    """(h, E, dE/dt) at every sample of v (T, B, D) and h (T, B, N), each (T, B):
    E = [(v - I).g - L_v] + [h.f - L_h] - f.S(g) and dE/dt = -tau_v vdot'H_v vdot - tau_h hdot'H_h hdot
    (Network.energy, Network.dEdt). ``h`` None means the adiabatic system: h = S(g) is returned,
    E = (v - I).g - L_v - L_h(S(g)) and dE/dt = -tau_v vdot'H_v vdot. The samples are flattened to
    (T B) rows and computed ``ENERGY_CHUNK_ROWS`` rows at a time (whole samples per chunk), each
    row with the input current I (B, D) of its query; a sample that repeats the one before it
    (a query that stopped early holds its final state) is copied, not recomputed
    (:func:`at_new_samples`). ``new``: the :func:`held_samples` mask when the caller has it
    (of the rows the samples were built from), else found from v and h."""
    T, B, D = v.shape
    Ib = np.broadcast_to(I, (T, B, D))
    E, dE = np.empty((T, B)), np.empty((T, B))
    if h is None:   # h = S(g) of the float64 states, stored in the samples' dtype
        hs = np.empty((T, B, net.N), v.dtype)
        new = held_samples(v) if new is None else new
        at_new_samples(net.energy_and_dEdt_adiabatic, new, (v, Ib), (hs, E, dE))
        return hs, E, dE
    new = held_samples(v, h) if new is None else new
    at_new_samples(net.energy_and_dEdt, new, (v, h, Ib), (E, dE))
    return h, E, dE


def sample_times(t_end: float, t_eval=None, n_samples: int = 101) -> np.ndarray:
    """The sample times of an integration over [0, t_end]: ``t_eval`` checked by
    uhn.dynamics.solvers.rk45_batched.check_times (1-D, finite, strictly increasing, within [0, t_end]), or
    ``n_samples`` >= 2 evenly spaced times t_k = k t_end / (n_samples - 1), k = 0 .. n_samples - 1
    (at least both ends: with the single time 0 the trajectory would not hold its final state)."""
    if t_eval is None:
        return np.linspace(0.0, t_end, require_count(n_samples, "n_samples", minimum=2))
    return check_times(t_eval, t_end)


def block_sparsity(B: int, width: int) -> csr_matrix:
    """The Jacobian sparsity of B independent queries of ``width`` variables each: block-diagonal
    with B dense width x width blocks, built directly as CSR arrays (row r of block b = r // width
    holds columns b width, ..., b width + width - 1), in time and memory linear in B width^2."""
    n = B * width
    indptr = np.arange(n + 1, dtype=np.int64) * width
    starts = np.arange(n, dtype=np.int64) // width * width
    indices = (starts[:, None] + np.arange(width, dtype=np.int64)).ravel()
    return csr_matrix((np.ones(n * width, dtype=np.int8), indices, indptr), shape=(n, n))


def check_jacobian_size(method: str, B: int, width: int) -> None:
    """Refuse a Radau / BDF solve whose block-diagonal Jacobian, B width^2 nonzeros, exceeds
    JAC_NNZ_LIMIT, naming its size, before anything of that size is allocated."""
    nnz = B * width * width
    if nnz > JAC_NNZ_LIMIT:
        fit = max(1, JAC_NNZ_LIMIT // (width * width))
        raise ValueError(
            f"{method} on B={B} queries of {width} variables needs a block-diagonal Jacobian of "
            f"{B} x {width}^2 = {nnz:,} nonzeros (~{nnz * 12 / 1e9:.2g} GB for its sparsity pattern "
            f"alone; limit uhn.dynamics.integrate.JAC_NNZ_LIMIT = {JAC_NNZ_LIMIT:,}); use "
            f"method='RK45-batched' or integrate batches of at most {fit} queries")


def fixed_point_event(net: Network, I, tol, noise, rtol, atol, adiabatic):
    """solve_ivp event on the flat batch state: max over queries of :func:`rest_ratio` - 1,
    terminal, crossing downward (every query at a fixed point)."""
    width = net.D if adiabatic else net.D + net.N

    def at_fixed_point(t, y):
        Y = y.reshape(-1, width)
        return rest_ratio(net, Y, net.velocity(Y, I, adiabatic), tol, noise, rtol, atol, adiabatic).max() - 1.0
    at_fixed_point.terminal = True
    at_fixed_point.direction = -1
    return at_fixed_point


@contextlib.contextmanager
def _time_bar(progress, t_end: float, B: int):
    """The ``progress`` option of :func:`integrate` as a callback ``report(t, running)``: None
    (False), the user's callable, or (True) a tqdm bar on stderr in simulated time 0..t_end with
    the number of queries still running."""
    if not progress:
        yield None
        return
    if callable(progress):
        yield progress
        return
    from tqdm import tqdm
    bar = tqdm(total=float(t_end), desc="integrating", unit="t", leave=False, file=sys.stderr,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| t = {n:.3g} of {total:g} {postfix}")
    state = {"t": 0.0, "running": B}

    def report(t, running):
        t = min(float(t), float(t_end))
        if t > state["t"] or running != state["running"]:
            bar.update(max(t - state["t"], 0.0))
            state["t"] = max(t, state["t"])
            if running != state["running"]:
                state["running"] = running
                bar.set_postfix_str(f"({running} of {B} queries running)", refresh=False)
    try:
        yield report
    finally:
        bar.close()


def _solve_scipy(net, Y0, I, t_end, *, method, t_eval, rtol, atol, tol, noise, adiabatic, max_step,
                 max_nfev, keep_every, progress=None):
    """One solve_ivp call on the flattened batch, its samples thinned by ``keep_every``
    (uhn.dynamics.solvers.rk45_batched.kept_indices). Returns (t, Y (T, B*width), info)."""
    B, width = Y0.shape
    rhs = net.fun(I, adiabatic=adiabatic)
    calls = [0]

    def fun(t, y):
        calls[0] += 1
        if calls[0] > max_nfev:
            raise RuntimeError(_stall_message(net, t, t_end, f"more than {max_nfev} right-hand-side calls"))
        if progress is not None:
            progress(t, B)
        return rhs(t, y)

    events = None if tol is None else fixed_point_event(net, I, tol, noise, rtol, atol, adiabatic)
    extra = {}
    if method in ("Radau", "BDF"):
        extra["jac_sparsity"] = block_sparsity(B, width)
    sol = solve_ivp(fun, (0.0, t_end), Y0.ravel(), method=method, t_eval=t_eval, rtol=rtol,
                    atol=atol, events=events, max_step=max_step, **extra)
    if sol.status < 0:
        raise RuntimeError(f"solve_ivp failed: {sol.message}")
    ts, Y = sol.t, sol.y.T
    event = tol is not None and bool(sol.t_events) and len(sol.t_events[0]) > 0
    if event:
        te, ye = sol.t_events[0][0], sol.y_events[0][0]
        if not len(ts) or te > ts[-1]:
            ts, Y = np.append(ts, te), np.vstack([Y, ye[None, :]])
    if keep_every != 1 and len(ts):
        kept = kept_indices(len(ts), keep_every)
        ts, Y = ts[kept], Y[kept]
    return ts, Y, {"nfev": int(sol.nfev), "message": sol.message,
                   "stopped_at_fixed_point": np.full(B, event)}


def _solve_batched(net, Y0, I, t_end, *, method, t_eval, rtol, atol, tol, noise, adiabatic, max_step,
                   max_nfev, keep_every, progress=None):
    """uhn.dynamics.solvers.rk45_batched.solve_batched on the (B, width) batch. Returns (t, Y (T, B*width), info)."""
    current = {"rows": None, "I": None}     # I of the running queries, redone when the set shrinks
    zero_input = not I.any()

    def F(t, Y, rows, out):
        if not zero_input and current["rows"] is not rows:
            current["rows"], current["I"] = rows, I[rows]
        return net.velocity(Y, None if zero_input else current["I"], adiabatic, out)

    if tol is not None:       # rest_ratio <= 1 without the division, stopping at a row's first miss
        base, slope = rest_floor(net, Y0.shape[1], tol, noise, rtol, atol)

    def at_rest(Y, dY, rows):
        return rows_within(dY, Y, base, slope)

    def stall(row, t, reason):
        return RuntimeError(_stall_message(net, t, t_end, f"query {row}: {reason}"))

    sol = solve_batched(F, Y0, t_end, t_eval=t_eval, rtol=rtol, atol=atol,
                        at_rest=None if tol is None else at_rest,
                        max_step=max_step, max_nfev=max_nfev, on_stall=stall,
                        keep_every=keep_every, progress=progress)
    n_fp = int(sol.at_fixed_point.sum())
    message = (f"{n_fp} of {len(Y0)} queries reached a fixed point" if tol is not None
               else "reached t_end")
    return sol.t, sol.y.reshape(len(sol.t), -1), {
        "nfev": int(sol.nfev.sum()), "nfev_per_query": sol.nfev.tolist(),
        "t_final_per_query": sol.t_final.tolist(), "message": message,
        "stopped_at_fixed_point": np.asarray(sol.at_fixed_point, dtype=bool)}
