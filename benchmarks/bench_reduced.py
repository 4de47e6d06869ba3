"""Reduced solver (uhn.dynamics.solvers.reduced) vs the full batched integrator, each query to its fixed point.

The setup of benchmarks/bench_dynamics.py, so the numbers compare: B = 256 corrupted MNIST
queries (gaussian 0.3), N = 100 memories, dot + log_sum_exp(beta=5), tau_v = 1, tau_h = 0.1,
rtol 1e-8, atol 1e-10, fixed_point_tol 1e-5, t_end 50.

Runs, interleaved round by round (the order alternating) so a busy machine slows both alike:
  reduced   integrate_reduced(net, Q): rows [a, h, e] of width 2N + 1, RHS cost N x N per query
  full      integrate(net, Q, method="RK45-batched"): rows [v, h] of width D + N
Prints min / median / max wall time of each, the speed-up (median and min ratios), right-hand-side
calls per query, stop times, converged flags, and max |difference| of the fixed points; then the
same with n_samples = 2 (only the start and the stop time sampled): the integration alone, without
E and dE/dt on the full (T, B, D) samples, which both runs compute the same way (Network.energy
and Network.dEdt) and which bounds the whole-call speed-up.
Goal: speed-up >= 5x. On a shared machine run it as OPENBLAS_NUM_THREADS=1 python ...: with more
BLAS threads than free cores, small GEMMs wait on spinning threads and the timings swing 10x.
    python benchmarks/bench_reduced.py [--rounds 3]
"""
import argparse
import time

import numpy as np

from bench_dynamics import ATOL, RTOL, T_END, TOL
from uhn.dynamics import lagrangians as L
from uhn.dynamics.integrate import integrate
from uhn.dynamics.network import Network
from uhn.dynamics.solvers.reduced import integrate_reduced
from uhn.models.corruption import corrupt
from uhn.models.data import load_dataset

GOAL = 5.0


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def stats(ts):
    return f"min {min(ts):.3f} s, median {np.median(ts):.3f} s, max {max(ts):.3f} s"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of both runs")
    args = ap.parse_args(argv)

    ds = load_dataset("mnist", n=100, seed=0)            # bench_dynamics.py's setup
    M = ds.X
    B = 256
    Q = corrupt(M[np.arange(B) % 100], "gaussian", 0.3, ds.image_shape, seed=1)
    net = Network(M, "dot", L_h=L.log_sum_exp(5.0), tau_h=0.1)
    for n_samples in (101, 2):
        ok = compare(net, Q, args.rounds, n_samples)
    return 0 if ok else 1


def compare(net, Q, rounds, n_samples):
    B = len(Q)
    kw = dict(fixed_point_tol=TOL, rtol=RTOL, atol=ATOL, n_samples=n_samples)
    print(f"--- n_samples = {n_samples}" + (" (integration alone)" if n_samples == 2 else ""))
    runs = {"reduced": lambda: integrate_reduced(net, Q, T_END, **kw),
            "full": lambda: integrate(net, Q, T_END, method="RK45-batched", **kw)}
    times = {k: [] for k in runs}
    out = {}
    for r in range(rounds):
        for name in (("reduced", "full") if r % 2 == 0 else ("full", "reduced")):
            out[name], t = timed(runs[name])
            times[name].append(t)
    red, full = out["reduced"], out["full"]
    for name, tr in (("reduced", red), ("full RK45-batched", full)):
        nfev = np.array(tr.params["nfev_per_query"])
        stop = np.array(tr.params["t_final_per_query"])
        key = "reduced" if name == "reduced" else "full"
        print(f"{name:18s} {stats(times[key])} ({np.median(times[key]) / B * 1e3:.2f} ms/query); "
              f"RHS calls per query median {int(np.median(nfev))}; stop time median {np.median(stop):.2f} "
              f"(max {stop.max():.2f}); {int(tr.converged.sum())}/{B} converged")
    ratio_med = np.median(times["full"]) / np.median(times["reduced"])
    ratio_min = min(times["full"]) / min(times["reduced"])
    dv = np.abs(red.v_final - full.v_final).max()
    dh = np.abs(red.h_final - full.h_final).max()
    same = bool(np.array_equal(red.converged, full.converged))
    print(f"speed-up: {ratio_med:.1f}x (medians), {ratio_min:.1f}x (minima), goal >= {GOAL:g}x "
          f"{'PASS' if ratio_med >= GOAL else 'FAIL'}")
    print(f"fixed points: max |v* reduced - v* full| = {dv:.2e}, max |h* reduced - h* full| = {dh:.2e} "
          f"(|v*| <= {np.abs(full.v_final).max():.2f}, |h*| <= {np.abs(full.h_final).max():.1f}); "
          f"converged flags {'identical' if same else 'DIFFER'}")
    return ratio_med >= GOAL and same


if __name__ == "__main__":
    raise SystemExit(main())
