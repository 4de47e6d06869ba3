"""Batched vs one-query-at-a-time integration, and RHS cost vs its two matmuls.

B = 256 corrupted MNIST queries, N = 100 memories, dot + softmax(beta=5), RK45 to the fixed point.
Targets (issue): per-query speed-up of the batched call >= 20x; one RHS <= 3x (g @ M.T + f @ M).
    python benchmarks/bench_dynamics.py
"""
import time

import numpy as np
from scipy.integrate import solve_ivp

from dynamics import lagrangians as L
from dynamics.integrate import integrate
from dynamics.network import Network
from models.corruption import corrupt
from models.data import load_dataset


def best(fn, repeat=5):
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def main():
    ds = load_dataset("mnist", n=356, seed=0)
    M = ds.X[:100]
    B = 256
    Q = corrupt(ds.X[100:100 + B] * 0 + M[np.arange(B) % 100], "gaussian", 0.3, ds.image_shape, seed=1)
    net = Network(M, "dot", L_h=L.log_sum_exp(5.0), tau_h=0.1)
    t_end, tol = 50.0, 1e-5

    t0 = time.perf_counter()
    tr = integrate(net, Q, t_end, fixed_point_tol=tol)
    t_batch = time.perf_counter() - t0
    n_single = 16
    t0 = time.perf_counter()
    for b in range(n_single):
        v0, h0 = net.initial_state(Q[b])
        solve_ivp(net.fun(), (0, t_end), net.pack(v0, h0), method="RK45", rtol=1e-8, atol=1e-10)
    t_single = (time.perf_counter() - t0) / n_single
    speedup = t_single / (t_batch / B)
    print(f"batch of {B}: {t_batch:.2f} s ({t_batch / B * 1e3:.2f} ms/query, t_final {tr.t[-1]:.3g}, "
          f"nfev {tr.params['nfev']}, converged {int(tr.converged.sum())}/{B})")
    print(f"single solve_ivp (mean of {n_single}, to t_end, no event): {t_single * 1e3:.1f} ms/query")
    print(f"per-query speed-up: {speedup:.1f}x (target >= 20x) {'PASS' if speedup >= 20 else 'FAIL'}")

    v, h = net.initial_state(Q)
    g, f = net.L_v.grad(v), net.L_h.grad(h)
    y = net.pack(v, h)
    fun = net.fun()
    t_rhs = best(lambda: fun(0.0, y), 20)
    t_mm = best(lambda: (g @ M.T, f @ M), 20)
    ratio = t_rhs / t_mm
    print(f"one RHS (flat, B={B}): {t_rhs * 1e3:.3f} ms; g @ M.T + f @ M: {t_mm * 1e3:.3f} ms; "
          f"ratio {ratio:.2f}x (target <= 3x) {'PASS' if ratio <= 3 else 'FAIL'}")
    return 0 if speedup >= 20 and ratio <= 3 else 1


if __name__ == "__main__":
    raise SystemExit(main())
