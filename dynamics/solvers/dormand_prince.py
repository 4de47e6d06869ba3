"""The Dormand-Prince 5(4) pair and its step-size control, shared by both batched integrators.

The tableau (c, A, b, e, P) is scipy.integrate.RK45's; one step from (t, y) with size h is

    k_1 = F(t, y),  k_i = F(t + c_i h, y + h sum_j A_ij k_j),  y_new = y + h sum_i b_i k_i
    err = || h sum_i e_i k_i / (atol + rtol max(|y|, |y_new|)) ||_rms,   accept iff err < 1
    accept: h <- h min(10, 0.9 err^(-1/5)) (factor <= 1 right after a rejection)
    reject: h <- h max(0.2, 0.9 err^(-1/5))

and samples inside an accepted step come from the quartic dense output
y(t + theta h) = y + h K^T P [theta, theta^2, theta^3, theta^4] (docs/theory.md section 6).

The controller's arithmetic below (initial step, error norm, step-size factor, dense-output
weights) is written once for numpy and every array-API namespace ``xp``:
uhn.dynamics.solvers.rk45_batched runs it on numpy rows, uhn.dynamics.solvers.rk45_batched_array
on other libraries' arrays (torch, CuPy, array-api-strict).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.integrate import RK45

from uhn.models.arrays import is_numpy_namespace

#: scipy.integrate._ivp.rk's controller constants
SAFETY, MIN_FACTOR, MAX_FACTOR = 0.9, 0.2, 10.0
#: the Butcher tableau: nodes C (6,), stage matrix A (6, 6), weights B (6,), error weights E (7,),
#: dense-output polynomial P (7, 4)
C, A, B, E, P = RK45.C, RK45.A, RK45.B, RK45.E, RK45.P
#: 4: the error exponent is -1 / (ORDER + 1)
ORDER = RK45.error_estimator_order
#: 7: six stages plus the first-same-as-last one
N_STAGES = E.size


@dataclass
class BatchSolution:
    """Output of the batched integrators (rk45_batched.solve_batched, rk45_batched_array.solve_batched_array).

    t : (T,) sample times, cut at the last row's end (thinned by ``keep_every``: the times
    driver.kept_indices picks);  y : (T, B, W) samples; a row that ended before a sample time
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


def astype(x, dtype, xp=np):
    """x in ``dtype`` (no copy when it already is)."""
    if x.dtype == dtype:
        return x
    return x.astype(dtype) if is_numpy_namespace(xp) else xp.astype(x, dtype)


def rms(x, xp=np):
    """Row-wise root mean square of a (b, W) array, accumulated and returned in float64 (the
    step-size control stays float64 for float32 states); numpy sums the squares with einsum,
    other namespaces with sum(x * x) (another order: the last bits may differ)."""
    if is_numpy_namespace(xp):
        return np.sqrt(np.einsum("bw,bw->b", x, x, dtype=np.float64) / x.shape[1])
    x = astype(x, xp.float64, xp)
    return xp.sqrt(xp.sum(x * x, axis=1) / x.shape[1])


def initial_step(F, t0, Y0, F0, t_end, max_step, rtol, atol, xp=np):
    """scipy's select_initial_step (Hairer, Norsett & Wanner II.4), one step size per row:
    h0 = 0.01 d0 / d1 (1e-6 if d0 or d1 < 1e-5), h1 = (0.01 / max(d1, d2))^(1/5) with
    d0 = |y0|, d1 = |f(y0)|, d2 = |f(y0 + h0 f(y0)) - f(y0)| / h0 (rms norms scaled by
    atol + rtol |y0|), h = min(100 h0, h1, t_end - t0, max_step). ``F(t, Y)`` returns dY/dt."""
    scale = atol + xp.abs(Y0) * rtol
    d0, d1 = rms(Y0 / scale, xp), rms(F0 / scale, xp)
    tiny = xp.full_like(d1, 1e-300)
    h0 = xp.where((d0 < 1e-5) | (d1 < 1e-5), xp.full_like(d0, 1e-6), 0.01 * d0 / xp.maximum(d1, tiny))
    h0 = xp.minimum(h0, t_end - t0)
    F1 = F(t0 + h0, astype(Y0 + h0[:, None] * F0, Y0.dtype, xp))
    d2 = rms((F1 - F0) / scale, xp) / h0
    dmax = xp.maximum(d1, d2)
    h1 = xp.where(dmax <= 1e-15, xp.maximum(xp.full_like(h0, 1e-6), h0 * 1e-3),
                  (0.01 / xp.maximum(dmax, tiny)) ** (1.0 / (ORDER + 1)))
    cap = min(float(t_end) - float(xp.max(t0)), float(max_step))
    return xp.minimum(xp.minimum(100 * h0, h1), xp.full_like(h1, cap))


def step_factor(err, ok, rejected, xp=np):
    """scipy RK45's step-size factor: SAFETY err^(-1/5), clipped to [MIN_FACTOR, MAX_FACTOR]
    (MAX_FACTOR where err = 0), at most 1 for an accepted step right after a rejection."""
    err_pos = xp.where(err == 0, xp.ones_like(err), err)
    factor = xp.where(err == 0, xp.full_like(err, MAX_FACTOR), SAFETY * err_pos ** (-1.0 / (ORDER + 1)))
    factor = xp.where(ok, xp.minimum(xp.full_like(factor, MAX_FACTOR), factor),
                      xp.maximum(xp.full_like(factor, MIN_FACTOR), factor))
    return xp.where(ok & rejected, xp.minimum(xp.ones_like(factor), factor), factor)


def dense_weights(theta, hs, xp=np):
    """(7, m) weights h sum_p P_sp theta^p (p = 1..4) of the quartic dense output
    y(t + theta h) = y + sum_s weights_s k_s, per row."""
    rows = [xp.zeros_like(theta) for _ in range(len(P))]
    power = theta
    for p in range(P.shape[1]):
        for s in range(len(P)):
            rows[s] = rows[s] + float(P[s, p]) * power
        power = power * theta
    return xp.stack([w * hs for w in rows])
