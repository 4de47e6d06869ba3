"""The shared driver below the integration methods of :func:`uhn.dynamics.integrate.integrate`.

Every method runs through :func:`run`, which owns everything the methods have in common; a method
owns only its time stepping. The contract, in the manner of scipy's ``OdeSolver``:

**A method** is one module in ``uhn/dynamics/solvers/`` with a function ``solve(problem) ->
Samples`` and one row ``Method(solve, ...)`` in ``uhn.dynamics.integrate.METHODS`` (its name ->
the row). :class:`Method` says what else the driver must know: a ``solve_array`` for networks on
other array-API namespaces (None: numpy only), ``float64_rows`` when the method computes in
float64 whatever the states' dtype (then its rtol default and floor and the input current are
float64's), and a ``check(net, settings)`` that refuses what the method cannot do, before any work.

**The driver**, :func:`run`, in this order:

1. checks the common arguments (:class:`Settings`, :func:`check_arguments`, :func:`check_keep`),
   then the method's ``check``;
2. builds the initial state (``Network.initial_state``), the input current
   (:func:`input_current`), the resolved rtol (:func:`resolved_rtol`) and the sample times
   (:func:`sample_times`) into a :class:`Problem`;
3. calls ``solve(problem)`` under the BLAS-threads limit, with the progress report
   (:func:`time_bar`) and numpy's floating-point errors raised: a FloatingPointError comes out as
   one message naming the network (:data:`OVERFLOW`);
4. assembles the :class:`~uhn.dynamics.trajectory.Trajectory`: the samples in the states' dtype,
   E and dE/dt at them (:func:`sample_energies`), the fixed-point verdict at the last sample
   (:func:`rest_ratio`), the message ("N of B queries reached a fixed point") and the params.

**solve(problem)** must integrate the batch (``problem.Y0`` = [v0, h0], or rows of its own built
from ``v0``, ``h0``, ``I``) over [0, t_end] with ``rtol`` and ``atol``; sample it at
``problem.t_eval`` up to the last query's stop, then at that stop time, keeping the samples
:func:`kept_indices` picks for ``problem.keep_every``; when ``problem.stop``, stop a query (or
the batch) where :func:`rest_ratio` <= 1 (docs/theory.md section 6); raise
``problem.on_stall(row, t, reason)`` past ``max_nfev`` right-hand-side calls or when the step
size vanishes; call ``problem.progress(t, n_running)`` when it is not None; and return
:class:`Samples`.
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
from threadpoolctl import threadpool_limits

from uhn.models.arrays import device, is_numpy_namespace, to_numpy
from uhn.models.validation import require_count, require_positive

from uhn.dynamics.trajectory import Trajectory

#: the fixed-point test's resolution factor (docs/theory.md section 6)
NOISE_FACTOR = 30.0
#: BLAS threads while integrating (integrate(blas_threads=...)): the right-hand side's products
#: are small, and a second BLAS thread that waits for a core costs more than it saves
BLAS_THREADS = 1
#: the energies at the samples are computed this many (query, sample) rows at a time: one batched
#: call per chunk instead of one per sample, with temporaries of a few (chunk, D + N) arrays
ENERGY_CHUNK_ROWS = 256
#: default relative tolerance per state dtype: float64 as scipy's solvers are used here; float32
#: ~840 eps32, comfortably above the floor of :func:`resolved_rtol`
DEFAULT_RTOL = {np.dtype(np.float64): 1e-8, np.dtype(np.float32): 1e-4}
#: the one message of a floating-point error during an integration
OVERFLOW = ("integration of {net!r} hit a floating-point error ({err}); the state left the range "
            "this network can represent")


@dataclass(frozen=True, eq=False)
class Settings:
    """The keyword options every method shares, with their defaults (their meaning:
    :func:`uhn.dynamics.integrate.integrate`)."""

    rtol: Optional[float] = None
    atol: float = 1e-10
    t_eval: object = None
    n_samples: int = 101
    stop_at_fixed_point: bool = True
    fixed_point_tol: float = 1e-8
    noise_factor: float = NOISE_FACTOR
    adiabatic: bool = False
    input_mode: str = "initial"
    h0: object = None
    max_step: float = np.inf
    max_nfev: int = 100_000
    keep: object = "all"
    blas_threads: Optional[int] = BLAS_THREADS
    progress: object = False


@dataclass(frozen=True, eq=False)
class Problem:
    """What ``solve`` gets: the checked and resolved inputs of one integration."""

    method: str
    net: object
    v0: object                  # (B, D) initial feature states
    h0: object                  # (B, N) initial memory states
    I: object                   # (B, D) constant input current
    current: object             # I, or None where there is none (the right-hand side may skip it)
    t_end: float
    t_eval: np.ndarray
    rtol: float
    atol: float
    stop: bool                  # stop at fixed points
    fixed_point_tol: float
    noise_factor: float
    adiabatic: bool
    max_step: float
    max_nfev: int
    keep_every: Optional[int]   # check_keep of integrate's ``keep``
    progress: Optional[Callable[[float, int], None]]

    @property
    def width(self) -> int:
        """Variables per query: D + N, or D when adiabatic."""
        return self.net.D if self.adiabatic else self.net.D + self.net.N

    @property
    def Y0(self):
        """(B, width) initial states [v0, h0] (adiabatic: v0)."""
        if self.adiabatic:
            return self.v0
        if is_numpy_namespace(self.net.xp):
            return np.concatenate([self.v0, self.h0], axis=1)
        return self.net.xp.concat([self.v0, self.h0], axis=1)

    def rest_floor(self, width: Optional[int] = None):
        """:func:`rest_floor` of this problem's network, tolerances and rest test."""
        return rest_floor(self.net, self.width if width is None else width, self.fixed_point_tol,
                          self.noise_factor, self.rtol, self.atol)

    def on_stall(self, row: Optional[int], t: float, reason: str) -> RuntimeError:
        """The error for an integration that cannot go on at time t (query ``row``, or the batch)."""
        return RuntimeError(stall_message(self.net, t, self.t_end,
                                          reason if row is None else f"query {row}: {reason}"))


@dataclass(eq=False)
class Samples:
    """What ``solve`` returns.

    t : (T,) sample times;  v : (T, B, D) and h : (T, B, N) (None when adiabatic) the samples, in
    the network's namespace, any float dtype (the driver casts them to the states' dtype);
    stopped : (B,) bool, True where the method stopped the query at a fixed point;
    info : params entries of the method (``nfev``, ...);  backend : where it computed;
    message : how it ended (None: the driver's fixed-point count);
    new : optional (T, B) :func:`held_samples` mask of v and h, when the method has it.
    """

    t: np.ndarray
    v: object
    h: object
    stopped: np.ndarray
    info: dict
    backend: str
    message: Optional[str] = None
    new: Optional[np.ndarray] = None


@dataclass(frozen=True)
class Method:
    """One row of ``uhn.dynamics.integrate.METHODS`` (module docstring)."""

    solve: Callable[[Problem], Samples]
    solve_array: Optional[Callable[[Problem], Samples]] = None
    float64_rows: bool = False
    check: Optional[Callable[[object, Settings], None]] = field(default=None)


def run(method: Method, name: str, net, Q, t_end, *, I=None, **options) -> Trajectory:
    """Integrate ``net`` from the queries Q over [0, t_end] with ``method`` (named ``name``) and
    the :class:`Settings` ``options``; ``I``, a constant input current (D,) or (B, D), replaces
    the one ``input_mode`` chooses. Steps 1-4 of the module docstring."""
    s = Settings(**options)
    t_end, max_step, max_nfev = check_arguments(t_end, s.rtol, s.atol, s.fixed_point_tol,
                                                s.noise_factor, s.input_mode, s.max_step, s.max_nfev)
    blas = None if s.blas_threads is None else require_count(s.blas_threads, "blas_threads")
    keep_every = check_keep(s.keep)
    if method.check is not None:
        method.check(net, s)
    xp = net.xp
    numpy = is_numpy_namespace(xp)
    solve = method.solve if numpy else method.solve_array
    if solve is None:
        net.require_numpy(f"method={name!r}")
    v0, h0 = net.initial_state(Q, s.h0)
    float32 = not method.float64_rows and v0.dtype == xp.float32
    rtol = resolved_rtol(s.rtol, np.float32 if float32 else np.float64)
    free = I is None and s.input_mode != "clamped" and net.I is None    # no current at all
    I = input_current(net, v0, s.input_mode, I, np.float64 if method.float64_rows else v0.dtype)
    t_eval = sample_times(t_end, s.t_eval, s.n_samples)
    B = v0.shape[0]
    with threadpool_limits(limits=blas, user_api="blas"):
        with time_bar(s.progress, t_end, B) as report:
            p = Problem(method=name, net=net, v0=v0, h0=h0, I=I, current=None if free else I,
                        t_end=t_end, t_eval=t_eval, rtol=rtol, atol=s.atol,
                        stop=bool(s.stop_at_fixed_point), fixed_point_tol=s.fixed_point_tol,
                        noise_factor=s.noise_factor, adiabatic=s.adiabatic, max_step=max_step,
                        max_nfev=max_nfev, keep_every=keep_every, progress=report)
            try:
                with np.errstate(over="raise", invalid="raise", divide="raise"):
                    out = solve(p)
            except FloatingPointError as err:
                raise FloatingPointError(OVERFLOW.format(net=net, err=err)) from None
        traj = assemble(name, p, out) if numpy else assemble_array(name, p, out)
    traj.params = {"rtol": rtol, "atol": s.atol, "t_end": float(t_end),
                   "fixed_point_tol": s.fixed_point_tol, "noise_factor": s.noise_factor,
                   "input_mode": s.input_mode, "keep": s.keep if isinstance(s.keep, str) else int(s.keep),
                   "blas_threads": blas, **out.info, **net.describe()}
    return traj


def assemble(name: str, p: Problem, out: Samples) -> Trajectory:
    """The Trajectory of numpy samples: cast to the states' dtype, energies at every sample, and
    ``converged`` where the method stopped the query at a fixed point or its last sample passes
    the test (a solve_ivp event stops where the batch's ratio crosses 1 to root-finding accuracy,
    where the ratio, a max over components at the integrator's noise floor, is not smooth: so
    the event, not the recomputed ratio, says whether the method found the fixed point)."""
    net, dtype = p.net, p.v0.dtype
    v = out.v.astype(dtype, copy=False)
    h = None if out.h is None else out.h.astype(dtype, copy=False)
    h, E, dE = sample_energies(net, v, h, p.I, out.new)
    Yf = v[-1] if p.adiabatic else np.concatenate([v[-1], h[-1]], axis=1)
    ratio = rest_ratio(net, Yf, net.velocity(Yf, p.I, p.adiabatic), p.fixed_point_tol,
                       p.noise_factor, p.rtol, p.atol, p.adiabatic)
    return Trajectory(t=out.t, v=v, h=h, E=E, dEdt=dE, I=p.I, converged=out.stopped | (ratio <= 1.0),
                      method=name, backend=out.backend, message=message(p, out),
                      adiabatic=p.adiabatic)


def assemble_array(name: str, p: Problem, out: Samples) -> Trajectory:
    """The Trajectory of samples on another array-API namespace: energies, dE/dt (float64) and the
    rest test at the last sample on the arrays' device, then one host copy of what it keeps."""
    net, xp = p.net, p.net.xp
    v = out.v
    T, B, D = v.shape
    Ir = xp.reshape(xp.broadcast_to(p.I, (T, B, D)), (T * B, D))   # the energies take it as float64
    vr = xp.reshape(v, (T * B, D))
    if p.adiabatic:     # h = S(g) of the float64 states, in the samples' dtype (as sample_energies)
        S, E, dE = net.energy_and_dEdt_adiabatic(vr, Ir)
        h = xp.reshape(xp.astype(S, v.dtype), (T, B, net.N))
        Yf = v[-1, ...]
    else:
        h = out.h
        E, dE = net.energy_and_dEdt(vr, xp.reshape(h, (T * B, net.N)), Ir)
        Yf = xp.concat([v[-1, ...], h[-1, ...]], axis=1)
    base, slope = (xp.asarray(a, dtype=xp.float64, device=device(p.v0)) for a in p.rest_floor())
    ratio = to_numpy(xp.max(xp.abs(net.velocity(Yf, p.current, p.adiabatic))
                            / (base + slope * xp.abs(Yf)), axis=1))
    return Trajectory(t=out.t, v=to_numpy(v), h=to_numpy(h), E=to_numpy(xp.reshape(E, (T, B))),
                      dEdt=to_numpy(xp.reshape(dE, (T, B))), I=to_numpy(xp.broadcast_to(p.I, (B, D))),
                      converged=out.stopped | (ratio <= 1.0), method=name, backend=out.backend,
                      message=message(p, out), adiabatic=p.adiabatic)


def message(p: Problem, out: Samples) -> str:
    """How the integration ended: the method's message, else "N of B queries reached a fixed
    point" (stopping at fixed points) or "reached t_end"."""
    if out.message is not None:
        return out.message
    if not p.stop:
        return "reached t_end"
    return f"{int(np.sum(out.stopped))} of {len(out.stopped)} queries reached a fixed point"


def stall_message(net, t, t_end, reason) -> str:
    """The one message of an integration that cannot go on at time t of t_end."""
    what = f"{net.sim.name}, smooth={net.sim.smooth}" if hasattr(net, "sim") else repr(net)
    return (f"integration stopped at t={t:.6g} of {t_end}: {reason}; the system is stiff or "
            f"non-smooth ({what}); use a smoothed similarity "
            f"(eps > 0), a stiff method (Radau/BDF) or raise max_nfev")


# ----------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------

def check_arguments(t_end, rtol, atol, fixed_point_tol, noise_factor, input_mode, max_step,
                    max_nfev):
    """The checks every integrator makes of its common arguments; returns (t_end, max_step,
    max_nfev) as numbers, or raises an error naming the bad one."""
    t_end = require_positive(t_end, "t_end", "time")
    max_step = require_positive(max_step, "max_step", "step size (np.inf for no limit)", finite=False)
    max_nfev = require_count(max_nfev, "max_nfev")
    if input_mode not in ("initial", "clamped"):
        raise ValueError(f"input_mode must be 'initial' or 'clamped', got {input_mode!r}")
    if (rtol is not None and not (np.isfinite(rtol) and rtol > 0)) or not (np.isfinite(atol) and atol >= 0):
        raise ValueError(f"tolerances must be finite with rtol > 0 and atol >= 0, got rtol={rtol}, "
                         f"atol={atol}")
    if not (fixed_point_tol >= 0 and noise_factor >= 0 and fixed_point_tol + noise_factor * atol > 0):
        raise ValueError(f"the fixed-point test needs fixed_point_tol >= 0 and noise_factor >= 0, "
                         f"not both giving a zero threshold (got fixed_point_tol={fixed_point_tol}, "
                         f"noise_factor={noise_factor}, atol={atol})")
    return t_end, max_step, max_nfev


def resolved_rtol(rtol, dtype) -> float:
    """``rtol`` checked against what states of ``dtype`` resolve, or the dtype's default for None.

    The error estimate of a step is a difference of stage sums that each carry round-off of a
    few eps |y|, so a relative tolerance near eps cannot be met honestly (the controller would
    chase round-off, shrinking h until the step underflows). Like scipy (which silently raises
    rtol to 100 eps), the floor is 100 eps of the dtype (2.2e-14 in float64, 1.2e-5 in float32);
    below it this raises ValueError naming the dtype instead."""
    dtype = np.dtype(dtype)
    if rtol is None:
        return DEFAULT_RTOL[dtype]
    floor = 100 * float(np.finfo(dtype).eps)
    if not rtol >= floor:
        raise ValueError(f"rtol={rtol:g} is below what {dtype} states resolve (100 eps = {floor:.2g}); "
                         f"use rtol >= {floor:.2g}" + (" or float64 queries and memories"
                                                       if dtype == np.float32 else ""))
    return float(rtol)


def input_current(net, v0, input_mode: str, I=None, dtype=None):
    """(B, D) constant input current of the queries v0, in the network's namespace: ``I`` if
    given ((D,) or (B, D), numpy, as float64), else v(0) when ``input_mode`` is "clamped", else
    net.I (zeros of ``dtype`` where the network has none)."""
    xp = net.xp
    numpy = is_numpy_namespace(xp)
    B = v0.shape[0]
    if I is not None:
        if input_mode == "clamped":
            raise ValueError("give either input_mode='clamped' (I = the queries) or an input "
                             "current I, not both")
        I = np.asarray(I, dtype=np.float64)
        if I.shape not in ((net.D,), (B, net.D)):
            raise ValueError(f"input current I must have shape ({net.D},) or ({B}, {net.D}), got {I.shape}")
        if not np.all(np.isfinite(I)):
            raise ValueError("input current I must be finite")
        return np.broadcast_to(I, (B, net.D)).copy()
    if input_mode == "clamped":
        return v0.copy() if numpy else xp.asarray(v0, copy=True)
    current = net.input_current(None, B, dtype)
    return current.copy() if numpy else current


def check_keep(keep) -> Optional[int]:
    """integrate's ``keep`` as the batched integrators' ``keep_every``: "all" -> 1, "ends" ->
    None, an integer k >= 1 -> k; else TypeError / ValueError naming ``keep``."""
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


def check_keep_every(keep_every) -> Optional[int]:
    """``keep_every`` as an int >= 1, or None (keep the first and the last sample only); else
    TypeError / ValueError naming the parameter."""
    if keep_every is None:
        return None
    if isinstance(keep_every, (bool, np.bool_)) or not isinstance(keep_every, (int, np.integer)):
        raise TypeError(f"keep_every must be an integer >= 1 or None, got "
                        f"{type(keep_every).__name__} {keep_every!r}")
    if keep_every < 1:
        raise ValueError(f"keep_every must be an integer >= 1 or None, got {keep_every}")
    return int(keep_every)


# ----------------------------------------------------------------------------------------------
# sample times
# ----------------------------------------------------------------------------------------------

def check_times(t_eval, t_end: float) -> np.ndarray:
    """``t_eval`` as a float64 array if it is a non-empty 1-D array of finite, strictly increasing
    times within [0, t_end]; else ValueError saying which condition fails and where."""
    t = np.asarray(t_eval, dtype=np.float64)
    if t.ndim != 1 or not len(t):
        raise ValueError(f"t_eval must be a non-empty 1-D array of times, got shape {t.shape}")
    if not np.all(np.isfinite(t)):
        k = int(np.flatnonzero(~np.isfinite(t))[0])
        raise ValueError(f"t_eval must be finite, got t_eval[{k}] = {t[k]}")
    if np.any(np.diff(t) <= 0):
        k = int(np.flatnonzero(np.diff(t) <= 0)[0])
        raise ValueError(f"t_eval must be strictly increasing, got t_eval[{k}] = {t[k]:g} >= "
                         f"t_eval[{k + 1}] = {t[k + 1]:g}")
    if t[0] < 0 or t[-1] > t_end:
        raise ValueError(f"t_eval must lie within [0, t_end] = [0, {t_end:g}], got "
                         f"[{t[0]:g}, {t[-1]:g}]")
    return t


def sample_times(t_end: float, t_eval=None, n_samples: int = 101) -> np.ndarray:
    """The sample times of an integration over [0, t_end]: ``t_eval`` checked by
    :func:`check_times`, or ``n_samples`` >= 2 evenly spaced times t_k = k t_end / (n_samples - 1)
    (at least both ends: with the single time 0 the trajectory would not hold its final state)."""
    if t_eval is None:
        return np.linspace(0.0, t_end, require_count(n_samples, "n_samples", minimum=2))
    return check_times(t_eval, t_end)


def kept_indices(count: int, keep_every: Optional[int]) -> np.ndarray:
    """Indices into an output of ``count`` >= 1 samples that ``keep_every`` keeps: every k-th
    sample 0, k, 2k, ... plus the last (count - 1); None keeps the first and the last. The one
    rule for thinning samples: every method keeps exactly these of its full output."""
    stride = count if keep_every is None else keep_every
    return np.union1d(np.arange(0, count, stride), [count - 1]).astype(np.int64)


# ----------------------------------------------------------------------------------------------
# the fixed-point test (docs/theory.md section 6)
# ----------------------------------------------------------------------------------------------

def rest_floor(net, width: int, tol, noise, rtol, atol):
    """(base, slope), each (width,): component i of a state y is at rest when
    |dy_i/dt| <= base_i + slope_i |y_i| = tol + noise (atol + rtol |y_i|) / tau_i, with
    base_i = tol + noise atol / tau_i and slope_i = noise rtol / tau_i; tau_i = tau_v for the D
    feature neurons, tau_h for the N memory neurons after them (width D: the adiabatic rows)."""
    if hasattr(net, "time_constants"):      # a network of more layers (uhn.dynamics.hierarchical)
        tau = net.time_constants(width)
    else:
        tau = np.full(width, net.tau_v)
        tau[net.D:] = net.tau_h
    return tol + noise * atol / tau, noise * rtol / tau


def rest_ratio(net, Y, dY, tol, noise, rtol, atol, adiabatic):
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


# ----------------------------------------------------------------------------------------------
# energies at the samples
# ----------------------------------------------------------------------------------------------

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


def sample_energies(net, v, h, I, new=None):
    """(h, E, dE/dt) at every sample of v (T, B, D) and h (T, B, N), each (T, B): the energy and
    its analytic rate (docs/theory.md section 3; Network.energy_and_dEdt). ``h`` None means the
    adiabatic system (section 4): h = S(g) is returned with E and dE/dt of the reduced system.
    The samples are flattened to (T B) rows and computed ``ENERGY_CHUNK_ROWS`` rows at a time
    (whole samples per chunk), each row with the input current I (B, D) of its query; a sample
    that repeats the one before it (a query that stopped early holds its final state) is copied,
    not recomputed (:func:`at_new_samples`). ``new``: the :func:`held_samples` mask when the
    caller has it (of the rows the samples were built from), else found from v and h."""
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


# ----------------------------------------------------------------------------------------------
# progress
# ----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def time_bar(progress, t_end: float, B: int, *, desc: str = "integrating", unit: str = "t",
             delay: float = 0.0, count: bool = True):
    """integrate's ``progress`` option as a callback ``report(t, running)``: None (False), the
    user's callable, or (True) a tqdm bar on stderr in simulated time 0..t_end with the number of
    queries still running. ``desc``, ``unit``: the bar's label and the name of its count (other
    callers count other work, e.g. verify_energy's share of its checks); ``delay``: seconds before
    the bar appears (tqdm's delay: a call that ends sooner prints nothing); ``count``: False shows
    the percentage alone (for a count that means nothing to the reader)."""
    if not progress:
        yield None
        return
    if callable(progress):
        yield progress
        return
    from tqdm import tqdm
    shown = (unit + " = {n:.3g} of {total:g} ") if count else ""
    bar = tqdm(total=float(t_end), desc=desc, unit=unit, leave=False, file=sys.stderr, delay=delay,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| " + shown + "{postfix}")
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
