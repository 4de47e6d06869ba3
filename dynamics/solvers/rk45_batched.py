"""Batched Dormand-Prince 5(4) with one step size per row: B independent ODEs dY_b/dt = F(t, Y_b).

scipy's solve_ivp sees a batch as one system, so one stiff or slow query sets the step size of all
of them and a query that has reached its fixed point keeps being integrated. Here every row b has
its own time t_b, step size h_b and error control, exactly as scipy's RK45 would give it alone
(same tableau, taken from scipy.integrate.RK45, same error norm and step-size controller), while
each stage is one vectorised call F(t, Y[active], rows, out) over the rows still running. A row
leaves the batch when it reaches t_end or when ``at_rest(Y, dY/dt, rows)`` says it sits at a
fixed point (dY/dt is read off the last stage of the step for free: first same as last).

The tableau, error norm and step-size controller are uhn.dynamics.solvers.dormand_prince's
(written once for every array namespace); uhn.dynamics.solvers.rk45_batched_array runs the same
step on other libraries' arrays (torch, CuPy) with frozen rows in place of this module's
compaction.

:func:`solve_batched` knows nothing of networks: it is plain array math (docs/theory.md section
6). :func:`solve` is the method "RK45-batched" of uhn.dynamics.solvers.driver on it.

Cost. Per step the right-hand side runs 6 times; everything else is the stage sums
Y + h sum_j A_ij k_j (5 of them plus y_new), the error norm, the dense output at sample times
and the rest test. These are memory-bound passes over (b, W) arrays, so they run as fused loops
that read each stage once and write nothing but the result: compiled with numba when it is
importable (``kernels="numba"``: one pass per stage sum, y_new and the error estimate's stage
sum in one pass, the scaled error in one more; compiled on first use, then cached on disk
beside this file), else in-place numpy operations into buffers allocated once
(``kernels="numpy"``, the reference; a few passes each). Both compute the same expressions in
the same order per element (numba without fastmath contracts nothing into fused multiply-adds)
and share the error norm's sum of squares, so they agree bit for bit (tested). Every (B, W)
buffer (the seven stages, the stage state, y_new, the error estimate, the samples) is allocated
once; the running rows are the first b rows of each buffer, rows that stop are compacted out in
place, and the first-same-as-last stage changes places with the first by a swap of indices.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from uhn.models.arrays import numpy_float

from uhn.dynamics.solvers import dormand_prince as dp
from uhn.dynamics.solvers.driver import (Problem, Samples, check_keep_every, check_times,
    resolved_rtol)

from uhn.models.kernels import HAVE_NUMBA, jit  # numba optional: without it the numpy paths run

_A_ROWS = [np.ascontiguousarray(dp.A[i, :i]) for i in range(dp.C.size)]
_B_ROW = np.ascontiguousarray(dp.B)
_E_ROW = np.ascontiguousarray(dp.E)
KERNELS = ("auto", "numba", "numpy")


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
    estimate h sum_i e_i K_i / scale whose row-wise rms (:func:`uhn.dynamics.solvers.dormand_prince.rms`) is the error norm."""
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
    (the sums of squares stay with numpy, :func:`uhn.dynamics.solvers.dormand_prince.rms`)."""
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


if HAVE_NUMBA:
    _stage_numba, _last_stage_numba = jit()(_stage_loops), jit()(_last_stage_loops)
    _error_numba, _dense_numba = jit()(_error_loops), jit()(_dense_loops)
    _within_numba = jit()(_within_loops)


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
                  progress: Optional[Callable[[float, int], None]] = None) -> dp.BatchSolution:
    """Integrate dY_b/dt = F(t_b, Y_b) for every row b of Y0 (B, W) from t = 0 to t_end.

    F(t, Y, rows, out) gets the times t (b,), states Y (b, W) of the rows still running and their
    indices ``rows`` into Y0 (to pick per-row parameters such as an input current; the same array
    object until the set of rows changes), writes dY/dt into ``out`` (b, W) and returns it. ``Y``
    and ``out`` are views of buffers the integrator reuses: F must not keep them.
    ``t_eval`` (non-empty, strictly increasing, within [0, t_end]: :func:`check_times`) are the
    sample times. float32 Y0 is integrated in float32 (every state, stage and sample; times, step
    sizes and the error norm stay float64), anything else in float64; ``rtol`` defaults to
    :data:`uhn.dynamics.solvers.driver.DEFAULT_RTOL` of that dtype and is refused below what it
    resolves (:func:`uhn.dynamics.solvers.driver.resolved_rtol`). A row stops at t_end, or once
    ``at_rest(Y, dYdt, rows)`` (a (b,) boolean mask) is True for it. A row that needs more than
    ``max_nfev`` evaluations, or whose step size underflows, raises the exception built by
    ``on_stall(row, t, reason)`` (RuntimeError by default); a non-finite state or derivative
    raises FloatingPointError naming the row.

    ``keep_every`` = k stores only every k-th sample and the last one (None: the first and the
    last), exactly the samples :func:`uhn.dynamics.solvers.driver.kept_indices` picks from the k = 1 output, bit for bit, in
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
    K = np.empty((dp.N_STAGES, B, W), dtype)  # stage i lives in K[slot[i]]; slot[0] <-> slot[6] is FSAL
    slot = np.arange(dp.N_STAGES)
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
    h = dp.initial_step(lambda tt, YY: F(tt, YY, rows, np.empty_like(YY)), t, Y, K[slot[0]], t_end,
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
        for i in range(1, dp.C.size):           # k_i = F(t + c_i h, Y + h sum_j A_ij k_j)
            stage(Ysr, Yr, K, slot[:i], _A_ROWS[i], hs, scratch[:n])
            F(t + dp.C[i] * hs, Ysr, rows, K[slot[i], :n])
        # y_new = Y + h sum_i b_i k_i, and the error estimate's sum over the same six stages
        last_stage(Ynr, err_buf[:n], Yr, K, slot[:-1], _B_ROW, _E_ROW, hs, scratch[:n])
        F(t_new, Ynr, rows, K[slot[-1], :n])
        nfev[rows] += dp.C.size
        err = dp.rms(error(err_buf[:n], Yr, Ynr, K, slot[-1], _E_ROW[-1], hs, rtol, atol, scratch[:n]))
        if not np.all(np.isfinite(err)):
            b = int(np.flatnonzero(~np.isfinite(err))[0])
            raise FloatingPointError(f"row {int(rows[b])}: the state or its derivative became "
                                     f"non-finite in the step from t={t[b]:.6g}")
        ok = err < 1
        h = hs * dp.step_factor(err, ok, rejected)
        rejected = ~ok
        n_rej[rows[~ok]] += 1
        all_ok = bool(ok.all())
        if ok.any():
            n_steps[rows[ok]] += 1
            # samples inside (t, t_new] from the dense output
            while np.any(take := ok & (nxt < T) & (t_eval[np.minimum(nxt, T - 1)] <= t_new)):
                idx = np.flatnonzero(take)
                weights = dp.dense_weights((t_eval[nxt[idx]] - t[idx]) / hs[idx], hs[idx])
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
                     dp.BatchSolution(t=None, y=None, t_final=t_final, y_final=y_final,
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


def solve(p: Problem) -> Samples:
    """The method "RK45-batched" (uhn.dynamics.solvers.driver's contract): :func:`solve_batched`
    on the (B, width) batch, each query stopping at its own fixed point (:func:`rows_within` on
    driver.rest_floor's threshold)."""
    net, I, adiabatic = p.net, p.I, p.adiabatic
    current = {"rows": None, "I": None}     # I of the running queries, redone when the set shrinks
    zero_input = not I.any()

    def F(t, Y, rows, out):
        if not zero_input and current["rows"] is not rows:
            current["rows"], current["I"] = rows, I[rows]
        return net.velocity(Y, None if zero_input else current["I"], adiabatic, out)

    Y0 = p.Y0
    at_rest = None
    if p.stop:        # rest_ratio <= 1 without the division, stopping at a row's first miss
        base, slope = p.rest_floor()

        def at_rest(Y, dY, rows):
            return rows_within(dY, Y, base, slope)

    sol = solve_batched(F, Y0, p.t_end, t_eval=p.t_eval, rtol=p.rtol, atol=p.atol, at_rest=at_rest,
                        max_step=p.max_step, max_nfev=p.max_nfev, on_stall=p.on_stall,
                        keep_every=p.keep_every, progress=p.progress)
    return Samples(t=sol.t, v=sol.y[:, :, :net.D], h=None if adiabatic else sol.y[:, :, net.D:],
                   stopped=np.asarray(sol.at_fixed_point, dtype=bool), backend="numpy",
                   info={"nfev": int(sol.nfev.sum()), "nfev_per_query": sol.nfev.tolist(),
                         "t_final_per_query": sol.t_final.tolist()})
