"""Batched Dormand-Prince 5(4) on any array-API namespace (torch, CuPy, array-api-strict): the
step of :func:`uhn.dynamics.solvers.rk45_batched.solve_batched`, with every row's time, step size, error control,
sampling and rest test kept on the arrays' device.

The numpy integrator compacts finished rows out of its buffers and runs compiled kernels; both
need data-dependent shapes or in-place writes the array API standard does not offer. Here every
row stays in the batch and a finished row is frozen instead: its step size is 0, so its stages
equal its state and every update is masked (``where``). Each step therefore costs the full batch's
right-hand side, which is what a GPU runs best (no gathers, fixed shapes), and the loop's only host
transfer is one small vector per step (how many rows are still running, the stall and
finite-state flags, the earliest running time for ``progress``, and how many sample times the
step passed). The dense outputs at those times are kept as computed (one (B, W) array per pass,
valid for the rows that passed a sample) and placed into the (T, B, W) samples after the loop by
one searchsorted and one take (:func:`_gather_samples`): no per-sample writes, no round trip.

Per row, exactly the numpy solver's arithmetic, in the same order per element (module docstring
of uhn.dynamics.solvers.rk45_batched): the same tableau and controller, the error norm accumulated in float64, float32
states integrated in float32. Only the sums of squares of the error norm are reduced in another
order (np.einsum there, sum(x * x) here), so step sizes can differ in the last bits; the tests
compare the two solvers within a bound that follows from that.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from uhn.models.arrays import device, library_name, namespace, to_numpy

from uhn.dynamics.solvers import dormand_prince as dp
from uhn.dynamics.solvers.driver import Problem, Samples, check_times, kept_indices, resolved_rtol

_A_ROWS = [[float(a) for a in dp.A[i, :i]] for i in range(dp.C.size)]
_B_ROW, _E_ROW = [float(b) for b in dp.B], [float(e) for e in dp.E]


def _weighted(Y, K, coef, h, xp):
    """Y + h[:, None] * sum_j coef_j K_j, summed in the numpy solver's order (rk45_batched._stage_numpy;
    its in-place ``out *= h`` on float32 rows multiplies in float64 and rounds: so here)."""
    s = K[0] * coef[0]
    for j in range(1, len(coef)):
        s = s + K[j] * coef[j]
    return dp.astype(s * h[:, None], Y.dtype, xp) + Y


def solve_batched_array(F: Callable, Y0, t_end: float, *, t_eval, rtol: Optional[float] = None,
                        atol: float = 1e-10, at_rest: Optional[Callable] = None,
                        max_step: float = np.inf, max_nfev: int = 100_000,
                        on_stall: Optional[Callable[[int, float, str], Exception]] = None,
                        progress: Optional[Callable[[float, int], None]] = None) -> dp.BatchSolution:
    """Integrate dY_b/dt = F(t_b, Y_b) for every row b of Y0 (B, W) from t = 0 to t_end, in the
    namespace and on the device of Y0.

    ``F(t, Y)`` gets the times t (B,) (float64) and states Y (B, W) of every row, finished rows
    included (frozen: their results are discarded), and returns dY/dt as a new (B, W) array.
    ``at_rest(Y, dYdt)`` returns a (B,) boolean array. Otherwise as
    :func:`uhn.dynamics.solvers.rk45_batched.solve_batched` with ``keep_every=1``: ``t_eval`` sample times (numpy),
    ``rtol`` per dtype, ``max_nfev``, ``on_stall``, ``progress``; a non-finite state raises
    FloatingPointError naming the row. Returns a dp.BatchSolution whose ``y`` (T, B, W) and
    ``y_final`` are arrays of Y0's namespace and the rest numpy.
    """
    xp = namespace(Y0)
    if Y0.ndim != 2 or not Y0.shape[0]:
        raise ValueError(f"Y0 must be a 2-D array (rows, width) with at least one row, got shape "
                         f"{tuple(Y0.shape)}")
    dev = device(Y0)
    np_dtype = np.float32 if Y0.dtype == xp.float32 else np.float64
    dtype = xp.float32 if np_dtype == np.float32 else xp.float64
    Y = xp.astype(Y0, dtype, copy=True)
    rtol = resolved_rtol(rtol, np_dtype)
    B, W = Y.shape
    t_eval = check_times(t_eval, t_end)
    T = len(t_eval)
    t_dev = xp.asarray(t_eval, device=dev)
    if on_stall is None:
        def on_stall(row, t, reason):
            return RuntimeError(f"row {row} stopped at t={t:.6g} of {t_end}: {reason}")
    f64 = xp.float64

    def zeros(dt=f64, shape=(B,)):
        return xp.zeros(shape, dtype=dt, device=dev)

    records = []            # (y (B, W), valid (B,)): the sample passes, in order
    t = zeros()
    nxt = zeros(xp.int64)
    run = xp.ones((B,), dtype=xp.bool, device=dev)
    t_final, y_final, nxt_final = xp.full((B,), float(t_end), dtype=f64, device=dev), Y, zeros(xp.int64)
    at_fp = xp.zeros((B,), dtype=xp.bool, device=dev)
    nfev, n_steps, n_rej = zeros(xp.int64), zeros(xp.int64), zeros(xp.int64)
    velocity = xp.full((B,), float("nan"), dtype=f64, device=dev)

    def store(n_pass, nxt_old, cnt, dense):
        """Keep the samples a step passed: pass i is every row's dense output at its slot
        nxt_old + i, valid where cnt > i. Each row's valid records are its samples in slot order,
        so :func:`_gather_samples` places them at the end (no per-slot writes in the loop). The
        records number P >= T (sample times before the last stop): more when rows pass a sample
        time in different steps, at most B T; device memory P B W instead of T B W."""
        for i in range(n_pass):
            mask = cnt > i
            slot = nxt_old + i
            records.append((dense(xp.take(t_dev, xp.minimum(slot, xp.full_like(slot, T - 1))), mask), mask))

    n0 = int(np.searchsorted(t_eval, 0.0, side="right"))   # sample times at t = 0: the initial state
    records.extend([(Y, run)] * n0)
    nxt = nxt + n0
    K0 = F(t, Y)
    h = dp.initial_step(F, t, Y, K0, t_end, max_step, rtol, atol, xp)
    nfev = nfev + 2
    rejected = xp.zeros((B,), dtype=xp.bool, device=dev)

    def finish(done):
        """Record the rows in ``done`` (still running) as finished."""
        nonlocal run, t_final, y_final, nxt_final, velocity
        done = done & run
        t_final = xp.where(done, t, t_final)
        y_final = xp.where(done[:, None], Y, y_final)
        nxt_final = xp.where(done, nxt, nxt_final)
        velocity = xp.where(done, xp.astype(xp.max(xp.abs(K0), axis=1), f64), velocity)
        run = run & ~done

    if at_rest is not None:
        fp = at_rest(Y, K0) & run
        at_fp = at_fp | fp
        finish(fp)

    running = bool(xp.any(run))
    while running:
        spacing = xp.abs(xp.nextafter(t, xp.full_like(t, float("inf"))) - t)
        min_step = 10 * spacing
        small = run & rejected & (h < min_step)
        h = xp.where(rejected, h, xp.maximum(h, min_step))
        h = xp.minimum(h, xp.full_like(h, float(max_step)))
        t_new = xp.where(run, xp.minimum(t + h, xp.full_like(t, float(t_end))), t)
        hs = t_new - t                                          # 0 for finished rows
        K = [K0]
        for i in range(1, dp.C.size):                             # k_i = F(t + c_i h, Y + h sum_j A_ij k_j)
            K.append(F(t + float(dp.C[i]) * hs, _weighted(Y, K, _A_ROWS[i], hs, xp)))
        Y_new = _weighted(Y, K, _B_ROW, hs, xp)
        err_sum = K[0] * _E_ROW[0]
        for j in range(1, len(_E_ROW) - 1):
            err_sum = err_sum + K[j] * _E_ROW[j]
        K.append(F(t_new, Y_new))
        nfev = nfev + dp.C.size * xp.astype(run, xp.int64)
        scale = xp.maximum(xp.abs(Y), xp.abs(Y_new)) * rtol + atol
        err = dp.rms(dp.astype((err_sum + K[-1] * _E_ROW[-1]) * hs[:, None], dtype, xp) / scale, xp)
        err = xp.where(run, err, xp.zeros_like(err))
        bad = ~xp.isfinite(err)
        ok = run & (err < 1)
        h = xp.where(run, hs * dp.step_factor(err, ok, rejected, xp), h)
        rejected = run & ~ok
        n_rej = n_rej + xp.astype(rejected, xp.int64)
        n_steps = n_steps + xp.astype(ok, xp.int64)

        def dense(tk, mask, Y=Y, K=K, t=t, hs=hs):
            theta = xp.where(mask, (tk - t) / xp.where(mask, hs, xp.ones_like(hs)), xp.zeros_like(hs))
            weights = dp.dense_weights(theta, hs, xp)
            out = Y
            for s in range(weights.shape[0]):                    # y + sum_s weights_s k_s, 7 stages
                out = dp.astype(out + weights[s, :][:, None] * K[s], dtype, xp)
            return out

        # sample times this step passes, per row: t_eval[j] for nxt <= j < nxt + cnt (t_eval[j] <= t_new)
        cnt = xp.where(ok, xp.searchsorted(t_dev, t_new, side="right") - nxt, xp.zeros_like(nxt))
        nxt_old, nxt = nxt, nxt + cnt
        t = xp.where(ok, t_new, t)
        Y = xp.where(ok[:, None], Y_new, Y)
        K0 = xp.where(ok[:, None], K[-1], K0)
        over = run & (nfev > max_nfev)
        done = ok & (t >= t_end)
        if at_rest is not None:
            fp = ok & at_rest(Y, K0)
            at_fp = at_fp | (fp & run)
            done = done | fp
        finish(done)
        flags = to_numpy(xp.stack([xp.astype(xp.sum(xp.astype(run, xp.int64)), f64),
                                   xp.astype(xp.any(small), f64),
                                   xp.astype(xp.any(bad), f64), xp.astype(xp.any(over), f64),
                                   xp.min(xp.where(run, t, xp.full_like(t, float(t_end)))),
                                   xp.astype(xp.max(cnt), f64)]))
        if flags[1] or flags[2] or flags[3]:
            _raise_stall(flags, small, bad, over, to_numpy(t), on_stall, max_nfev, xp)
        store(int(flags[5]), nxt_old, cnt, dense)
        running = int(flags[0])                            # rows still running
        if progress is not None:
            progress(float(flags[4]) if running else float(t_end), running)

    if progress is not None:
        progress(float(t_end), 0)
    return _assemble(t_eval, records, t_final, y_final, nxt_final, at_fp, velocity, nfev, n_steps,
                     n_rej, xp)


def _raise_stall(flags, small, bad, over, t, on_stall, max_nfev, xp):
    """The numpy solver's errors, for the first row that triggered one (error path: host copies)."""
    if flags[1]:
        b = int(np.flatnonzero(to_numpy(small))[0])
        raise on_stall(b, float(t[b]), "the step size fell below the spacing of floating-point times")
    if flags[2]:
        b = int(np.flatnonzero(to_numpy(bad))[0])
        raise FloatingPointError(f"row {b}: the state or its derivative became non-finite in the "
                                 f"step from t={t[b]:.6g}")
    b = int(np.flatnonzero(to_numpy(over))[0])
    raise on_stall(b, float(t[b]), f"more than {max_nfev} right-hand-side evaluations")


def _gather_samples(records, n, B, W, xp):
    """(n, B, W): row b's sample j is the (j+1)-th record valid for row b. With c[p, b] the number
    of row b's valid records among the first p + 1, that record is the first p with c[p, b] > j:
    one searchsorted over the row-major keys b (n + P + 1) + c (non-decreasing) and one take. A
    slot a row never reached (it stopped first) lands anywhere: the caller masks it."""
    R = xp.stack([r[0] for r in records])                        # (P, B, W)
    P = R.shape[0]
    dev = device(R)
    c = xp.cumulative_sum(xp.astype(xp.stack([r[1] for r in records]), xp.int64), axis=0)
    stride = n + P + 1
    rows = xp.arange(B, dtype=xp.int64, device=dev)[:, None] * stride
    keys = xp.reshape(rows + xp.permute_dims(c, (1, 0)), (B * P,))                 # (B P,)
    want = xp.reshape(rows + xp.arange(1, n + 1, dtype=xp.int64, device=dev)[None, :], (B * n,))
    idx = xp.minimum(xp.searchsorted(keys, want, side="left"), xp.full_like(want, B * P - 1))
    flat = xp.reshape(xp.permute_dims(R, (1, 0, 2)), (B * P, W))
    return xp.permute_dims(xp.reshape(xp.take(flat, idx, axis=0), (B, n, W)), (1, 0, 2))


def _assemble(t_eval, records, t_final, y_final, nxt_final, at_fp, velocity, nfev, n_steps,
              n_rej, xp):
    """rk45_batched._assemble for keep_every = 1: samples up to the last row's stop time, a stopped row
    holding its final state, and the final states at that time when it is not a sample time."""
    t_final_h = to_numpy(t_final)
    t_last = float(t_final_h.max())
    n = int(np.searchsorted(t_eval, t_last, side="right"))
    B, W = y_final.shape
    if n and records:
        got = _gather_samples(records, n, B, W, xp)
        slot = xp.arange(n, dtype=xp.int64, device=device(y_final))[:, None]
        y = xp.where((slot >= nxt_final[None, :])[:, :, None], y_final[None, ...], got)
    else:
        y = xp.broadcast_to(y_final[None, ...], (n, B, W))
    t_out = t_eval[:n]
    if not (n and t_eval[n - 1] >= t_last):
        y = xp.concat([y, y_final[None, ...]], axis=0)
        t_out = np.append(t_out, t_last)
    return dp.BatchSolution(t=t_out, y=y, t_final=t_final_h, y_final=y_final,
                         at_fixed_point=to_numpy(at_fp), velocity=to_numpy(velocity),
                         nfev=to_numpy(nfev), n_steps=to_numpy(n_steps), n_rejected=to_numpy(n_rej))


def solve(p: Problem) -> Samples:
    """The method "RK45-batched" on a network of another array-API namespace
    (uhn.dynamics.solvers.driver's contract): :func:`solve_batched_array` on the arrays' device,
    the rest test on driver.rest_floor's threshold there, the kept samples taken on the device."""
    net, xp = p.net, p.net.xp
    Y0 = p.Y0
    dev = device(Y0)

    def F(t, Y):
        return net.velocity(Y, p.current, p.adiabatic)

    at_rest = None
    if p.stop:
        base, slope = (xp.asarray(a, dtype=xp.float64, device=dev) for a in p.rest_floor())

        def at_rest(Y, dY):
            return xp.all(xp.abs(dY) <= base + slope * xp.abs(Y), axis=1)

    sol = solve_batched_array(F, Y0, p.t_end, t_eval=p.t_eval, rtol=p.rtol, atol=p.atol,
                              at_rest=at_rest, max_step=p.max_step, max_nfev=p.max_nfev,
                              on_stall=p.on_stall, progress=p.progress)
    ts, Y = sol.t, sol.y
    if p.keep_every != 1:
        kept = kept_indices(len(ts), p.keep_every)
        ts, Y = ts[kept], xp.take(Y, xp.asarray(kept, device=dev), axis=0)
    D = net.D
    return Samples(t=ts, v=Y[:, :, :D], h=None if p.adiabatic else Y[:, :, D:],
                   stopped=sol.at_fixed_point, backend=f"{library_name(xp)} on {dev}",
                   info={"nfev": int(sol.nfev.sum()), "nfev_per_query": sol.nfev.tolist(),
                         "t_final_per_query": sol.t_final.tolist()})
