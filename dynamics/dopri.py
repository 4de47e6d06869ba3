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

The module knows nothing of networks: it is plain array math (docs/theory.md section 6), so a GPU array
library can later stand in for numpy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from scipy.integrate import RK45

SAFETY, MIN_FACTOR, MAX_FACTOR = 0.9, 0.2, 10.0  # scipy.integrate._ivp.rk's controller constants
_C, _A, _B, _E, _P = RK45.C, RK45.A, RK45.B, RK45.E, RK45.P
_ORDER = RK45.error_estimator_order  # 4: the error exponent is -1/5


@dataclass
class BatchSolution:
    """Output of :func:`solve_batched`.

    t : (T,) sample times, cut at the last row's end;  y : (T, B, W) samples; a row that ended
    before a sample time holds its final state there.
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


def _rms(x: np.ndarray) -> np.ndarray:
    """Row-wise root mean square of a (b, W) array."""
    return np.sqrt(np.einsum("bw,bw->b", x, x) / x.shape[1])


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


def _initial_step(F, t0, Y0, F0, rows, t_end, max_step, rtol, atol):
    """scipy's select_initial_step (Hairer, Norsett & Wanner II.4), one step size per row."""
    scale = atol + np.abs(Y0) * rtol
    d0, d1 = _rms(Y0 / scale), _rms(F0 / scale)
    h0 = np.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / np.maximum(d1, 1e-300))
    h0 = np.minimum(h0, t_end - t0)
    F1 = F(t0 + h0, Y0 + h0[:, None] * F0, rows, np.empty_like(Y0))
    d2 = _rms((F1 - F0) / scale) / h0
    dmax = np.maximum(d1, d2)
    h1 = np.where(dmax <= 1e-15, np.maximum(1e-6, h0 * 1e-3),
                  (0.01 / np.maximum(dmax, 1e-300)) ** (1.0 / (_ORDER + 1)))
    return np.minimum(np.minimum(100 * h0, h1), min(t_end - t0.max(), max_step))


def solve_batched(F: Callable[..., np.ndarray], Y0, t_end: float, *, t_eval, rtol: float = 1e-8,
                  atol: float = 1e-10, at_rest: Optional[Callable[..., np.ndarray]] = None,
                  max_step: float = np.inf, max_nfev: int = 100_000,
                  on_stall: Callable[[int, float, str], Exception] = None) -> BatchSolution:
    """Integrate dY_b/dt = F(t_b, Y_b) for every row b of Y0 (B, W) from t = 0 to t_end.

    F(t, Y, rows, out) gets the times t (b,), states Y (b, W) of the rows still running and their
    indices ``rows`` into Y0 (to pick per-row parameters such as an input current; the same array
    object until the set of rows changes), writes dY/dt into ``out`` (b, W) and returns it.
    ``t_eval`` (non-empty, strictly increasing, within [0, t_end]: :func:`check_times`) are the
    sample times. A row stops at t_end, or once
    ``at_rest(Y, dYdt, rows)`` (a (b,) boolean mask) is True for it. A row that needs more than
    ``max_nfev`` evaluations, or whose step size underflows, raises the exception built by
    ``on_stall(row, t, reason)`` (RuntimeError by default); a non-finite state or derivative
    raises FloatingPointError naming the row.
    """
    Y = np.array(Y0, dtype=np.float64, copy=True)
    B, W = Y.shape
    t_eval = check_times(t_eval, t_end)
    if on_stall is None:
        def on_stall(row, t, reason):
            return RuntimeError(f"row {row} stopped at t={t:.6g} of {t_end}: {reason}")
    T = len(t_eval)
    samples = np.empty((T + 1, B, W))           # + 1: room for the last row's stop time
    t_final, y_final = np.full(B, float(t_end)), np.empty((B, W))
    at_fp, velocity = np.zeros(B, bool), np.full(B, np.nan)
    nfev, n_steps, n_rej = np.zeros(B, np.int64), np.zeros(B, np.int64), np.zeros(B, np.int64)

    rows = np.arange(B)
    t = np.zeros(B)
    nxt = np.zeros(B, np.int64)                 # index of the next sample time per row
    nxt_final = np.zeros(B, np.int64)
    while len(t_eval) and np.any(take := (nxt < T) & (t_eval[np.minimum(nxt, T - 1)] <= 0.0)):
        samples[nxt[take], rows[take]] = Y[take]    # samples at t = 0
        nxt[take] += 1
    K = np.empty((_E.size, B, W))
    F(t, Y, rows, K[0])
    nfev += 1
    h = _initial_step(F, t, Y, K[0], rows, t_end, max_step, rtol, atol)
    nfev += 1
    rejected = np.zeros(B, bool)    # this step was rejected before (scipy's rule: no growth then)

    def retire(done):
        """Record rows in mask ``done`` as finished and drop them from the active arrays."""
        nonlocal rows, t, Y, K, h, nxt, rejected
        r = rows[done]
        t_final[r], y_final[r], nxt_final[r] = t[done], Y[done], nxt[done]
        velocity[r] = np.abs(K[0][done]).max(axis=1)
        keep = ~done
        rows, t, Y, h = rows[keep], t[keep], Y[keep], h[keep]
        nxt, rejected = nxt[keep], rejected[keep]
        K = np.ascontiguousarray(K[:, keep])

    if at_rest is not None:
        done = at_rest(Y, K[0], rows)
        at_fp[rows[done]] = True
        if done.any():
            retire(done)

    while len(rows):
        min_step = 10 * np.abs(np.nextafter(t, np.inf) - t)
        if np.any(small := rejected & (h < min_step)):
            b = int(np.flatnonzero(small)[0])
            raise on_stall(int(rows[b]), float(t[b]),
                           "the step size fell below the spacing of floating-point times")
        h = np.minimum(np.where(rejected, h, np.maximum(h, min_step)), max_step)
        t_new = np.minimum(t + h, t_end)
        hs = t_new - t
        hc = hs[:, None]
        for i in range(1, _C.size):
            Ys = np.tensordot(_A[i, :i], K[:i], axes=(0, 0))
            Ys *= hc
            Ys += Y                             # Y + h sum_j A_ij K_j
            F(t + _C[i] * hs, Ys, rows, K[i])
        Y_new = np.tensordot(_B, K[:-1], axes=(0, 0))
        Y_new *= hc
        Y_new += Y
        F(t_new, Y_new, rows, K[-1])
        nfev[rows] += _C.size
        scale = np.maximum(np.abs(Y), np.abs(Y_new))
        scale *= rtol
        scale += atol
        err = np.tensordot(_E, K, axes=(0, 0))
        err *= hc
        err /= scale
        err = _rms(err)
        if not np.all(np.isfinite(err)):
            b = int(np.flatnonzero(~np.isfinite(err))[0])
            raise FloatingPointError(f"row {int(rows[b])}: the state or its derivative became "
                                     f"non-finite in the step from t={t[b]:.6g}")
        with np.errstate(divide="ignore"):
            factor = np.where(err == 0, MAX_FACTOR, SAFETY * err ** (-1.0 / (_ORDER + 1)))
        ok = err < 1
        factor = np.where(ok, np.minimum(MAX_FACTOR, factor), np.maximum(MIN_FACTOR, factor))
        factor = np.where(ok & rejected, np.minimum(1.0, factor), factor)
        h = hs * factor
        rejected = ~ok
        n_rej[rows[~ok]] += 1
        if ok.any():
            n_steps[rows[ok]] += 1
            # samples inside (t, t_new] from the dense output
            while np.any(take := ok & (nxt < T) & (t_eval[np.minimum(nxt, T - 1)] <= t_new)):
                theta = (t_eval[nxt[take]] - t[take]) / hs[take]
                powers = np.cumprod(np.repeat(theta[:, None], _P.shape[1], axis=1), axis=1)
                weights = (_P @ powers.T) * hs[take]        # (stages, b): h sum_p P_sp theta^p
                Kt = K[:, take]
                y = Y[take]
                for s in range(len(_P)):
                    y += weights[s, :, None] * Kt[s]
                samples[nxt[take], rows[take]] = y
                nxt[take] += 1
            t = np.where(ok, t_new, t)
            if ok.all():
                Y, K[0] = Y_new, K[-1]
            else:
                Y[ok] = Y_new[ok]
                K[0, ok] = K[-1, ok]
        if np.any(over := nfev[rows] > max_nfev):
            b = int(np.flatnonzero(over)[0])
            raise on_stall(int(rows[b]), float(t[b]),
                           f"more than {max_nfev} right-hand-side evaluations")
        done = ok & (t >= t_end)
        if at_rest is not None and ok.any():
            fp = ok.copy()
            fp[ok] = at_rest(Y, K[0], rows) if ok.all() else at_rest(Y[ok], K[0, ok], rows[ok])
            at_fp[rows[fp]] = True
            done |= fp
        if done.any():
            retire(done)

    t_last = float(t_final.max()) if B else 0.0
    n = int(np.searchsorted(t_eval, t_last, side="right"))  # samples at or before t_last
    held = np.arange(n)[:, None] >= nxt_final[None, :]     # (n, B): after that row had stopped
    samples[:n][held] = np.broadcast_to(y_final, (n, B, W))[held]
    t_out = t_eval[:n]
    if not n or t_out[-1] < t_last:             # end on the last row's stop time
        t_out = np.append(t_out, t_last)
        samples[n] = y_final
        n += 1
    y_out = samples[:n]
    return BatchSolution(t=t_out, y=y_out, t_final=t_final, y_final=y_final, at_fixed_point=at_fp,
                         velocity=velocity, nfev=nfev, n_steps=n_steps, n_rejected=n_rej)
