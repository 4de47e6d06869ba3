"""Batched Dormand-Prince 5(4) with one step size per row: B independent ODEs dY_b/dt = F(t, Y_b).

scipy's solve_ivp sees a batch as one system, so one stiff or slow query sets the step size of all
of them and a query that has reached its fixed point keeps being integrated. Here every row b has
its own time t_b, step size h_b and error control, exactly as scipy's RK45 would give it alone
(same tableau, taken from scipy.integrate.RK45, same error norm and step-size controller), while
each stage is one vectorised call F(t, Y[active], rows, out) over the rows still running. A row
leaves the batch when it reaches t_end or when ``at_rest(Y, dY/dt, rows)`` says it sits at a
fixed point (dY/dt is read off the last stage of the step for free: first same as last).

Per row, one step from (t, y) with size h (c, A, b, e the Butcher tableau):

    k_1 = F(t, y),  k_i = F(t + c_i h, y + h sum_j A_ij k_j),  y_new = y + h sum_i b_i k_i
    err = || h sum_i e_i k_i / (atol + rtol max(|y|, |y_new|)) ||_rms,   accept iff err < 1
    accept: h <- h min(10, 0.9 err^(-1/5)) (factor <= 1 right after a rejection)
    reject: h <- h max(0.2, 0.9 err^(-1/5))

and samples inside an accepted step come from the method's quartic dense output
y(t + theta h) = y + h K^T P [theta, theta^2, theta^3, theta^4].

The module knows nothing of networks: it is plain array math (docs/theory.md section 6). The
controller's arithmetic (initial step, error norm, step-size factor, dense-output weights) is
written once for any array-API namespace; uhn.dynamics.solvers.rk45_batched_array runs it on other libraries'
arrays (torch, CuPy) with frozen rows in place of this module's compaction.

Cost. Per step the right-hand side runs 6 times; everything else is the stage sums
Y + h sum_j A_ij k_j (5 of them plus y_new), the error norm, the dense output at sample times
and the rest test. These are memory-bound passes over (b, W) arrays, so they run as fused loops
that read each stage once and write nothing but the result: compiled with numba when it is
importable (``kernels="numba"``: one pass per stage sum, y_new and the error estimate's stage
sum in one pass, the scaled error in one more; compiled on first use, ~5 s, then cached on disk
beside this file), else in-place numpy operations into buffers allocated once
(``kernels="numpy"``, the reference; a few passes each). Both compute the same expressions in
the same order per element (numba without fastmath contracts nothing into fused multiply-adds)
and share the error norm's sum of squares, so they agree bit for bit (tested). Every (B, W)
buffer (the seven stages, the stage state, y_new, the error estimate, the samples) is allocated
once; the running rows are the first b rows of each buffer, rows that stop are compacted out in
place, and the first-same-as-last stage changes places with the first by a swap of indices.
Measured (benchmarks/bench_dynamics.py, B = 256 MNIST queries, N = 100, 1 BLAS thread): the
whole batched integration costs ~1.9x its share of the two matmuls per query-evaluation.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from scipy.integrate import RK45

from uhn.models.arrays import is_numpy_namespace, numpy_float

try:  # numba is optional: without it the numpy reference kernels below do the step arithmetic
    import numba as _nb
    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - the numpy path is tested with kernels="numpy"
    _nb = None
    HAVE_NUMBA = False

SAFETY, MIN_FACTOR, MAX_FACTOR = 0.9, 0.2, 10.0  # scipy.integrate._ivp.rk's controller constants
_C, _A, _B, _E, _P = RK45.C, RK45.A, RK45.B, RK45.E, RK45.P
_ORDER = RK45.error_estimator_order  # 4: the error exponent is -1/5
_N_STAGES = _E.size                     # 7: six stages plus the first-same-as-last one
_A_ROWS = [np.ascontiguousarray(_A[i, :i]) for i in range(_C.size)]
_B_ROW = np.ascontiguousarray(_B)
_E_ROW = np.ascontiguousarray(_E)
KERNELS = ("auto", "numba", "numpy")


@dataclass
class BatchSolution:
    """Output of :func:`solve_batched`.

    t : (T,) sample times, cut at the last row's end (thinned by ``keep_every``: the times
    :func:`kept_indices` picks);  y : (T, B, W) samples; a row that ended before a sample time
    holds its final state there.
    t_final : (B,) time at which each row stopped;  y_final : (B, W) its state then.
    at_fixed_point : (B,) True where the row stopped because ``at_rest`` said so.
    velocity : (B,) max |dY/dt| at t_final.
    nfev : (B,) right-hand-side evaluations per row;  n_steps, n_rejected : (B,) step counts.
    """

    t: np.ndarray
    y: np.ndarray
    t_final: np.ndarray
    y_final: np.ndarray
    at_fixed_point: np.ndarray
    velocity: np.ndarray
    nfev: np.ndarray
    n_steps: np.ndarray
    n_rejected: np.ndarray


# ----------------------------------------------------------------------------------------------
# the controller's arithmetic, written once for numpy and every array-API namespace ``xp``
# (uhn.dynamics.solvers.rk45_batched_array runs the same functions on other libraries' arrays)
# ----------------------------------------------------------------------------------------------

def _astype(x, dtype, xp=np):
    """x in ``dtype`` (no copy when it already is)."""
    if x.dtype == dtype:
        return x
    return x.astype(dtype) if is_numpy_namespace(xp) else xp.astype(x, dtype)


def _rms(x, xp=np):
    """Row-wise root mean square of a (b, W) array, accumulated and returned in float64 (the
    step-size control stays float64 for float32 states); numpy sums the squares with einsum,
    other namespaces with sum(x * x) (another order: the last bits may differ)."""
    if is_numpy_namespace(xp):
        return np.sqrt(np.einsum("bw,bw->b", x, x, dtype=np.float64) / x.shape[1])
    x = _astype(x, xp.float64, xp)
    return xp.sqrt(xp.sum(x * x, axis=1) / x.shape[1])


def _initial_step(F, t0, Y0, F0, t_end, max_step, rtol, atol, xp=np):
    """scipy's select_initial_step (Hairer, Norsett & Wanner II.4), one step size per row:
    h0 = 0.01 d0 / d1 (1e-6 if d0 or d1 < 1e-5), h1 = (0.01 / max(d1, d2))^(1/5) with
    d0 = |y0|, d1 = |f(y0)|, d2 = |f(y0 + h0 f(y0)) - f(y0)| / h0 (rms norms scaled by
    atol + rtol |y0|), h = min(100 h0, h1, t_end - t0, max_step). ``F(t, Y)`` returns dY/dt."""
    scale = atol + xp.abs(Y0) * rtol
    d0, d1 = _rms(Y0 / scale, xp), _rms(F0 / scale, xp)
    tiny = xp.full_like(d1, 1e-300)
    h0 = xp.where((d0 < 1e-5) | (d1 < 1e-5), xp.full_like(d0, 1e-6), 0.01 * d0 / xp.maximum(d1, tiny))
    h0 = xp.minimum(h0, t_end - t0)
    F1 = F(t0 + h0, _astype(Y0 + h0[:, None] * F0, Y0.dtype, xp))
    d2 = _rms((F1 - F0) / scale, xp) / h0
    dmax = xp.maximum(d1, d2)
    h1 = xp.where(dmax <= 1e-15, xp.maximum(xp.full_like(h0, 1e-6), h0 * 1e-3),
                  (0.01 / xp.maximum(dmax, tiny)) ** (1.0 / (_ORDER + 1)))
    cap = min(float(t_end) - float(xp.max(t0)), float(max_step))
    return xp.minimum(xp.minimum(100 * h0, h1), xp.full_like(h1, cap))


def _step_factor(err, ok, rejected, xp=np):
    """scipy RK45's step-size factor: SAFETY err^(-1/5), clipped to [MIN_FACTOR, MAX_FACTOR]
    (MAX_FACTOR where err = 0), at most 1 for an accepted step right after a rejection."""
    err_pos = xp.where(err == 0, xp.ones_like(err), err)
    factor = xp.where(err == 0, xp.full_like(err, MAX_FACTOR), SAFETY * err_pos ** (-1.0 / (_ORDER + 1)))
    factor = xp.where(ok, xp.minimum(xp.full_like(factor, MAX_FACTOR), factor),
                      xp.maximum(xp.full_like(factor, MIN_FACTOR), factor))
    return xp.where(ok & rejected, xp.minimum(xp.ones_like(factor), factor), factor)


def _dense_weights(theta, hs, xp=np):
    """(7, m) weights h sum_p P_sp theta^p (p = 1..4) of the quartic dense output
    y(t + theta h) = y + sum_s weights_s k_s, per row."""
    rows = [xp.zeros_like(theta) for _ in range(len(_P))]
    power = theta
    for p in range(_P.shape[1]):
        for s in range(len(_P)):
            rows[s] = rows[s] + float(_P[s, p]) * power
        power = power * theta
    return xp.stack([w * hs for w in rows])


#: default relative tolerance per state dtype: float64 as scipy's solvers are used here; float32
#: ~840 eps32, comfortably above the floor below
DEFAULT_RTOL = {np.dtype(np.float64): 1e-8, np.dtype(np.float32): 1e-4}


def resolved_rtol(rtol, dtype) -> float:
    """``rtol`` checked against what states of ``dtype`` resolve, or the dtype's default for None.

    The error estimate h sum_i e_i k_i of a step is a difference of stage sums that each carry
    round-off of a few eps |y|, so a relative tolerance near eps cannot be met honestly (the
    controller would chase round-off, shrinking h until the step underflows). Like scipy (which
    silently raises rtol to 100 eps), the floor is 100 eps of the dtype (2.2e-14 in float64,
    1.2e-5 in float32); below it this raises ValueError naming the dtype instead."""
    dtype = np.dtype(dtype)
    if rtol is None:
        return DEFAULT_RTOL[dtype]
    floor = 100 * float(np.finfo(dtype).eps)
    if not rtol >= floor:
        raise ValueError(f"rtol={rtol:g} is below what {dtype} states resolve (100 eps = {floor:.2g}); "
                         f"use rtol >= {floor:.2g}" + (" or float64 queries and memories"
                                                       if dtype == np.float32 else ""))
    return float(rtol)


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


def kept_indices(count: int, keep_every: Optional[int]) -> np.ndarray:
    """Indices into an output of ``count`` >= 1 samples that ``keep_every`` keeps: every k-th
    sample 0, k, 2k, ... plus the last (count - 1); None keeps the first and the last. The one
    rule for thinning samples: :func:`solve_batched` stores exactly these of its full output."""
    stride = count if keep_every is None else keep_every
    return np.union1d(np.arange(0, count, stride), [count - 1]).astype(np.int64)


# ----------------------------------------------------------------------------------------------
# step arithmetic: stage sums and the error norm, numpy reference and numba kernels
# ----------------------------------------------------------------------------------------------

def _stage_numpy(out, Y, K, slots, a, h, scratch):
    """out = Y + h[:, None] * sum_j a_j K[slots[j]] on the b = len(Y) running rows, in place."""
    b = len(Y)
    np.multiply(K[slots[0], :b], a[0], out=out)
    for j in range(1, len(a)):
        np.multiply(K[slots[j], :b], a[j], out=scratch)
        out += scratch
    out *= h[:, None]
    out += Y
    return out


def _last_stage_numpy(out, err, Y, K, slots, a, e, h, scratch):
    """out = Y + h sum_{j<6} b_j K_j (y_new, a = b) and, from the same stages, the partial error
    sum err = sum_{j<6} e_j K_j (:func:`_error_numpy` adds the last stage)."""
    b = len(Y)
    np.multiply(K[slots[0], :b], a[0], out=out)
    np.multiply(K[slots[0], :b], e[0], out=err)
    for j in range(1, len(a)):
        np.multiply(K[slots[j], :b], a[j], out=scratch)
        out += scratch
        np.multiply(K[slots[j], :b], e[j], out=scratch)
        err += scratch
    out *= h[:, None]
    out += Y
    return out


def _error_numpy(err, Y, Y_new, K, last, e_last, h, rtol, atol, scale):
    """err = h (err + e_7 K[last]) / (atol + rtol max(|Y|, |Y_new|)) in place on the b = len(Y)
    running rows: with err = sum_{j<6} e_j K_j from :func:`_last_stage_numpy`, the scaled error
    estimate h sum_i e_i K_i / scale whose row-wise rms (:func:`_rms`) is the error norm."""
    b = len(Y)
    np.multiply(K[last, :b], e_last, out=scale)
    err += scale
    err *= h[:, None]
    np.abs(Y, out=scale)
    np.maximum(scale, np.abs(Y_new), out=scale)
    scale *= rtol
    scale += atol
    err /= scale
    return err


def _stage_loops(out, Y, K, slots, a, h, scratch):
    """Compiled form of :func:`_stage_numpy`: per row, sum the stages into ``out`` (one pass over
    each stage, the row stays in cache), then out = Y + h out."""
    b, W = Y.shape
    m = a.shape[0]
    for r in range(b):
        o = out[r]
        k0 = K[slots[0], r]
        for w in range(W):
            o[w] = a[0] * k0[w]
        for j in range(1, m):
            aj = a[j]
            kj = K[slots[j], r]
            for w in range(W):
                o[w] += aj * kj[w]
        hr = h[r]
        y = Y[r]
        for w in range(W):
            o[w] = y[w] + hr * o[w]
    return out


def _last_stage_loops(out, err, Y, K, slots, a, e, h, scratch):
    """Compiled form of :func:`_last_stage_numpy`: y_new and the partial error sum in one pass
    over the six stages."""
    b, W = Y.shape
    m = a.shape[0]
    for r in range(b):
        o = out[r]
        x = err[r]
        k0 = K[slots[0], r]
        for w in range(W):
            o[w] = a[0] * k0[w]
            x[w] = e[0] * k0[w]
        for j in range(1, m):
            aj = a[j]
            ej = e[j]
            kj = K[slots[j], r]
            for w in range(W):
                o[w] += aj * kj[w]
                x[w] += ej * kj[w]
        hr = h[r]
        y = Y[r]
        for w in range(W):
            o[w] = y[w] + hr * o[w]
    return out


def _error_loops(err, Y, Y_new, K, last, e_last, h, rtol, atol, scale):
    """Compiled form of :func:`_error_numpy`: the last stage, the step size and the scaling in
    one pass. The same operations per element in the same order, so the two agree bit for bit
    (the sums of squares stay with numpy, :func:`_rms`)."""
    b, W = Y.shape
    for r in range(b):
        x = err[r]
        k = K[last, r]
        hr = h[r]
        y = Y[r]
        yn = Y_new[r]
        for w in range(W):
            x[w] = ((x[w] + e_last * k[w]) * hr) / (max(abs(y[w]), abs(yn[w])) * rtol + atol)
    return err


def _dense_numpy(out, Y, K, slots, weights, idx):
    """out[r] = Y[idx[r]] + sum_s weights[s, r] K[slots[s], idx[r]]: the dense output of rows idx
    (weights (7, m) = h sum_p P_sp theta^p), elementwise per row, so a row's sample does not
    depend on which other rows are sampled with it."""
    np.take(Y, idx, axis=0, out=out)
    for s in range(len(weights)):
        out += weights[s, :, None] * np.take(K[slots[s]], idx, axis=0)
    return out


def _dense_loops(out, Y, K, slots, weights, idx):
    """Compiled form of :func:`_dense_numpy` (no gathered copies of the stages)."""
    m, W = out.shape
    for r in range(m):
        i = idx[r]
        o = out[r]
        y = Y[i]
        for w in range(W):
            o[w] = y[w]
        for s in range(weights.shape[0]):
            c = weights[s, r]
            k = K[slots[s], i]
            for w in range(W):
                o[w] += c * k[w]
    return out


def _within_numpy(dY, Y, base, slope, out):
    """out[r] = all_i |dY[r, i]| <= base_i + slope_i |Y[r, i]| (False where dY is NaN)."""
    floor = np.abs(Y)
    floor *= slope
    floor += base
    np.all(np.abs(dY) <= floor, axis=1, out=out)
    return out


def _within_loops(dY, Y, base, slope, out):
    """Compiled form of :func:`_within_numpy`, leaving a row at its first component outside
    (most rows, most steps: a row far from rest costs a few components)."""
    b, W = Y.shape
    for r in range(b):
        ok = True
        for w in range(W):
            if not abs(dY[r, w]) <= base[w] + slope[w] * abs(Y[r, w]):
                ok = False
                break
        out[r] = ok
    return out


def _jit(fn):
    """numba.njit with an on-disk cache where one can be written, else in memory (with a warning)."""
    try:
        return _nb.njit(cache=True)(fn)
    except RuntimeError as err:  # pragma: no cover - "no locator available": read-only install
        warnings.warn(f"numba cannot cache {fn.__name__} on disk ({err}); compiling in memory",
                      RuntimeWarning, stacklevel=2)
        return _nb.njit(cache=False)(fn)


if HAVE_NUMBA:
    _stage_numba, _last_stage_numba = _jit(_stage_loops), _jit(_last_stage_loops)
    _error_numba, _dense_numba = _jit(_error_loops), _jit(_dense_loops)
    _within_numba = _jit(_within_loops)


def _kernels(kernels: str):
    """(stage, last stage, error, dense) functions for ``kernels`` = "auto" (numba if importable),
    "numba", "numpy"."""
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}")
    if kernels == "numba" and not HAVE_NUMBA:
        raise ValueError("kernels='numba' needs numba, which is not installed; use 'auto' or 'numpy'")
    if kernels == "numpy" or not HAVE_NUMBA:
        return _stage_numpy, _last_stage_numpy, _error_numpy, _dense_numpy
    return _stage_numba, _last_stage_numba, _error_numba, _dense_numba


def rows_within(dY, Y, base, slope, kernels: str = "auto") -> np.ndarray:
    """(b,) boolean: for each row r of dY, Y (b, W), every |dY[r, i]| <= base_i + slope_i |Y[r, i]|
    (base, slope (W,)); False for a row with a NaN. A rest test for ``at_rest``: with
    base_i = tol + noise atol / tau_i and slope_i = noise rtol / tau_i it is integrate's
    fixed-point test. Compiled with an early exit per row when numba is importable."""
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}")
    fn = _within_numba if HAVE_NUMBA and kernels != "numpy" else _within_numpy
    return fn(dY, Y, base, slope, np.empty(len(Y), dtype=bool))


def solve_batched(F: Callable[..., np.ndarray], Y0, t_end: float, *, t_eval, rtol: Optional[float] = None,
                  atol: float = 1e-10, at_rest: Optional[Callable[..., np.ndarray]] = None,
                  max_step: float = np.inf, max_nfev: int = 100_000,
                  on_stall: Callable[[int, float, str], Exception] = None,
                  keep_every: Optional[int] = 1, kernels: str = "auto",
                  progress: Optional[Callable[[float, int], None]] = None) -> BatchSolution:
    """Integrate dY_b/dt = F(t_b, Y_b) for every row b of Y0 (B, W) from t = 0 to t_end.

    F(t, Y, rows, out) gets the times t (b,), states Y (b, W) of the rows still running and their
    indices ``rows`` into Y0 (to pick per-row parameters such as an input current; the same array
    object until the set of rows changes), writes dY/dt into ``out`` (b, W) and returns it. ``Y``
    and ``out`` are views of buffers the integrator reuses: F must not keep them.
    ``t_eval`` (non-empty, strictly increasing, within [0, t_end]: :func:`check_times`) are the
    sample times. float32 Y0 is integrated in float32 (every state, stage and sample; times, step
    sizes and the error norm stay float64), anything else in float64; ``rtol`` defaults to
    :data:`DEFAULT_RTOL` of that dtype and is refused below what it resolves (:func:`resolved_rtol`). A row stops at t_end, or once
    ``at_rest(Y, dYdt, rows)`` (a (b,) boolean mask) is True for it. A row that needs more than
    ``max_nfev`` evaluations, or whose step size underflows, raises the exception built by
    ``on_stall(row, t, reason)`` (RuntimeError by default); a non-finite state or derivative
    raises FloatingPointError naming the row.

    ``keep_every`` = k stores only every k-th sample and the last one (None: the first and the
    last), exactly the samples :func:`kept_indices` picks from the k = 1 output, bit for bit, in
    memory for those alone. ``kernels`` picks the step arithmetic (module docstring): "auto"
    (numba when importable), "numba" or "numpy". ``progress(t, n)``, if given, is called after
    every step with the earliest time t of the n rows still running (and (t_end, 0) at the end).
    """
    stage, last_stage, error, dense = _kernels(kernels)
    keep_every = check_keep_every(keep_every)
    Y0 = numpy_float(Y0)
    Y = np.array(Y0, copy=True)
    if Y.ndim != 2 or not len(Y):
        raise ValueError(f"Y0 must be a 2-D array (rows, width) with at least one row, got shape {Y.shape}")
    dtype = Y.dtype
    rtol = resolved_rtol(rtol, dtype)
    B, W = Y.shape
    t_eval = check_times(t_eval, t_end)
    if on_stall is None:
        def on_stall(row, t, reason):
            return RuntimeError(f"row {row} stopped at t={t:.6g} of {t_end}: {reason}")
    T = len(t_eval)
    stride = T if keep_every is None else keep_every    # t_eval index j is stored iff j % stride == 0
    samples = np.empty((-(-T // stride) + 1, B, W), dtype)      # + 1: room for the last sample
    latest = np.empty((B, W), dtype) if stride > 1 else None    # each row's latest sample (the last one's source)
    t_final, y_final = np.full(B, float(t_end)), np.empty((B, W), dtype)
    at_fp, velocity = np.zeros(B, bool), np.full(B, np.nan)
    nfev, n_steps, n_rej = np.zeros(B, np.int64), np.zeros(B, np.int64), np.zeros(B, np.int64)

    def store(j, r, y):
        """Samples y (m, W) at t_eval indices j of batch rows r."""
        if latest is not None:
            latest[r] = y
        kept = j % stride == 0
        if kept.all():
            samples[j // stride, r] = y
        elif kept.any():
            samples[j[kept] // stride, r[kept]] = y[kept]

    # buffers, allocated once: the running rows are the first n rows of each
    K = np.empty((_N_STAGES, B, W), dtype)  # stage i lives in K[slot[i]]; slot[0] <-> slot[6] is FSAL
    slot = np.arange(_N_STAGES)
    Y_new, Ys, scratch, err_buf, dense_out = (np.empty((B, W), dtype) for _ in range(5))
    n = B
    rows = np.arange(B)
    t = np.zeros(B)
    nxt = np.zeros(B, np.int64)                 # index of the next sample time per row
    nxt_final = np.zeros(B, np.int64)
    while np.any(take := (nxt < T) & (t_eval[np.minimum(nxt, T - 1)] <= 0.0)):
        store(nxt[take], rows[take], Y[take])   # samples at t = 0
        nxt[take] += 1
    F(t, Y, rows, K[slot[0]])
    nfev += 1
    h = _initial_step(lambda tt, YY: F(tt, YY, rows, np.empty_like(YY)), t, Y, K[slot[0]], t_end,
                      max_step, rtol, atol)
    nfev += 1
    rejected = np.zeros(B, bool)    # this step was rejected before (scipy's rule: no growth then)

    def retire(done):
        """Record rows in mask ``done`` as finished; compact the others to the buffers' front."""
        nonlocal rows, t, h, nxt, rejected, n
        r = rows[done]
        K0 = K[slot[0], :n]
        t_final[r], y_final[r], nxt_final[r] = t[done], Y[:n][done], nxt[done]
        velocity[r] = np.abs(K0[done]).max(axis=1)
        keep = np.flatnonzero(~done)
        m = len(keep)
        Y[:m] = Y[:n][keep]                     # the fancy index copies before the assignment
        K[slot[0], :m] = K0[keep]
        rows, t, h, nxt, rejected = rows[keep], t[keep], h[keep], nxt[keep], rejected[keep]
        n = m

    if at_rest is not None:
        done = at_rest(Y, K[slot[0]], rows)
        at_fp[rows[done]] = True
        if done.any():
            retire(done)

    while n:
        min_step = 10 * np.abs(np.nextafter(t, np.inf) - t)
        if np.any(small := rejected & (h < min_step)):
            b = int(np.flatnonzero(small)[0])
            raise on_stall(int(rows[b]), float(t[b]),
                           "the step size fell below the spacing of floating-point times")
        h = np.minimum(np.where(rejected, h, np.maximum(h, min_step)), max_step)
        t_new = np.minimum(t + h, t_end)
        hs = t_new - t
        Yr, Ysr, Ynr = Y[:n], Ys[:n], Y_new[:n]
        for i in range(1, _C.size):             # k_i = F(t + c_i h, Y + h sum_j A_ij k_j)
            stage(Ysr, Yr, K, slot[:i], _A_ROWS[i], hs, scratch[:n])
            F(t + _C[i] * hs, Ysr, rows, K[slot[i], :n])
        # y_new = Y + h sum_i b_i k_i, and the error estimate's sum over the same six stages
        last_stage(Ynr, err_buf[:n], Yr, K, slot[:-1], _B_ROW, _E_ROW, hs, scratch[:n])
        F(t_new, Ynr, rows, K[slot[-1], :n])
        nfev[rows] += _C.size
        err = _rms(error(err_buf[:n], Yr, Ynr, K, slot[-1], _E_ROW[-1], hs, rtol, atol, scratch[:n]))
        if not np.all(np.isfinite(err)):
            b = int(np.flatnonzero(~np.isfinite(err))[0])
            raise FloatingPointError(f"row {int(rows[b])}: the state or its derivative became "
                                     f"non-finite in the step from t={t[b]:.6g}")
        ok = err < 1
        h = hs * _step_factor(err, ok, rejected)
        rejected = ~ok
        n_rej[rows[~ok]] += 1
        all_ok = bool(ok.all())
        if ok.any():
            n_steps[rows[ok]] += 1
            # samples inside (t, t_new] from the dense output
            while np.any(take := ok & (nxt < T) & (t_eval[np.minimum(nxt, T - 1)] <= t_new)):
                idx = np.flatnonzero(take)
                weights = _dense_weights((t_eval[nxt[idx]] - t[idx]) / hs[idx], hs[idx])
                y = dense(dense_out[:len(idx)], Yr, K, slot, weights, idx)
                store(nxt[idx], rows[idx], y)
                nxt[idx] += 1
            t = np.where(ok, t_new, t)
            if all_ok:                          # swap buffers instead of copying
                Y, Y_new = Y_new, Y
                slot[0], slot[-1] = slot[-1], slot[0]
            else:
                np.copyto(Yr, Ynr, where=ok[:, None])
                np.copyto(K[slot[0], :n], K[slot[-1], :n], where=ok[:, None])
        if np.any(over := nfev[rows] > max_nfev):
            b = int(np.flatnonzero(over)[0])
            raise on_stall(int(rows[b]), float(t[b]),
                           f"more than {max_nfev} right-hand-side evaluations")
        done = ok & (t >= t_end)
        if at_rest is not None and ok.any():
            K0 = K[slot[0], :n]
            fp = ok.copy()
            fp[ok] = at_rest(Y[:n], K0, rows) if all_ok else at_rest(Y[:n][ok], K0[ok], rows[ok])
            at_fp[rows[fp]] = True
            done |= fp
        if done.any():
            retire(done)
        if progress is not None:
            progress(float(t.min()) if n else float(t_end), n)

    if progress is not None:
        progress(float(t_end), 0)
    return _assemble(t_eval, stride, samples, latest, t_final, y_final, nxt_final,
                     BatchSolution(t=None, y=None, t_final=t_final, y_final=y_final,
                                   at_fixed_point=at_fp, velocity=velocity, nfev=nfev,
                                   n_steps=n_steps, n_rejected=n_rej))


def _assemble(t_eval, stride, samples, latest, t_final, y_final, nxt_final, sol):
    """Fill ``sol.t``, ``sol.y``: the stored samples (t_eval indices 0, stride, 2 stride, ... up
    to the last row's stop time t_last), a row that had stopped holding its final state, and the
    last sample of the full output (t_eval's last time <= t_last, or t_last itself) unless stored."""
    t_last = float(t_final.max())
    n = int(np.searchsorted(t_eval, t_last, side="right"))  # samples at or before t_last
    js = np.arange(0, n, stride)                            # stored t_eval indices, slots 0, 1, ...
    S = len(js)
    held = js[:, None] >= nxt_final[None, :]                # (S, B): after that row had stopped
    samples[:S][held] = np.broadcast_to(y_final, (S,) + y_final.shape)[held]
    t_out = t_eval[js]
    if n and t_eval[n - 1] >= t_last:           # the full output ends on the sample t_eval[n - 1]
        if (n - 1) % stride:                    # not stored: from each row's latest sample
            stopped = nxt_final <= n - 1
            samples[S] = latest
            samples[S, stopped] = y_final[stopped]
            t_out, S = np.append(t_out, t_eval[n - 1]), S + 1
    else:                                       # the full output ends on the last row's stop time
        samples[S] = y_final
        t_out, S = np.append(t_out, t_last), S + 1
    sol.t, sol.y = t_out, samples[:S]
    return sol
