"""Batched vs one-query-at-a-time integration to the fixed point, and RHS cost vs its two matmuls.

B = 256 corrupted MNIST queries (gaussian 0.3), N = 100 memories, dot + softmax(beta=5),
tau_v = 1, tau_h = 0.1, rtol 1e-8, atol 1e-10, each query integrated until it sits at a fixed point
(integrate's criterion: every velocity below fixed_point_tol = 1e-5 + the integrator's resolution).

Runs, all timed in this one process:
  batched        integrate(net, Q, method="RK45-batched"): Dormand-Prince, a step size per query,
                 each query leaves the batch at its own fixed point
  one at a time  integrate(net, q, method="RK45") per query: solve_ivp with the fixed-point event
                 (the same tableau, controller and stopping rule), mean over ``--single`` queries
  bare solve_ivp solve_ivp(RK45) per query with the same event and nothing else (no energy or
                 samples): the cheapest one-at-a-time baseline
  one solve_ivp  integrate(net, Q, method="RK45"): the whole batch as one solve_ivp system
                 (one step size for all, stops when the last query converges), here and on a
                 mixed batch (192 queries near a memory, 64 halfway between two)
Targets (issue 3): per-query speed-up of the batched call over one at a time >= 20x; one RHS
<= 3x (g @ M.T + f @ M).
    python benchmarks/bench_dynamics.py [--single 16] [--skip-one-system]
"""
import argparse
import time

import numpy as np
from scipy.integrate import solve_ivp

from dynamics import lagrangians as L
from dynamics.integrate import NOISE_FACTOR, fixed_point_event, integrate
from dynamics.network import Network
from models.corruption import corrupt
from models.data import load_dataset

T_END, TOL, RTOL, ATOL = 50.0, 1e-5, 1e-8, 1e-10


def best(fn, repeat=5):
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def bare_solve_ivp(net, q):
    """solve_ivp on one query with integrate's fixed-point event, nothing else."""
    v0, h0 = net.initial_state(q)
    event = fixed_point_event(net, None, TOL, NOISE_FACTOR, RTOL, ATOL, False)
    return solve_ivp(net.fun(), (0, T_END), net.pack(v0, h0), method="RK45", rtol=RTOL, atol=ATOL,
                     events=event)


def mixed_batch(M):
    """Queries whose stop times differ: 192 near a memory, 64 halfway between two memories."""
    rng = np.random.default_rng(0)
    near = M[np.arange(192) % len(M)] + 0.01 * rng.standard_normal((192, M.shape[1]))
    blend = 0.5 * (M[:64] + M[1:65]) + 0.01 * rng.standard_normal((64, M.shape[1]))
    Q = np.vstack([near, blend])
    for beta in (0.05, 1.0):
        net = Network(M, "dot", L_h=L.log_sum_exp(beta), tau_h=0.1)
        kw = dict(rtol=RTOL, atol=ATOL, fixed_point_tol=TOL)
        one, t_one = timed(lambda: integrate(net, Q, 100.0, method="RK45", **kw))
        bat, t_bat = timed(lambda: integrate(net, Q, 100.0, method="RK45-batched", **kw))
        stops = np.array(bat.params["t_final_per_query"])
        print(f"mixed batch, softmax({beta:g}): one solve_ivp system {t_one:.2f} s (stops at "
              f"t = {one.t[-1]:.1f}), RK45-batched {t_bat:.2f} s (stops between t = {stops.min():.1f} "
              f"and {stops.max():.1f}): {t_one / t_bat:.1f}x")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--single", type=int, default=16, help="queries timed one at a time")
    ap.add_argument("--skip-one-system", action="store_true",
                    help="skip the slow whole-batch solve_ivp runs")
    args = ap.parse_args(argv)

    ds = load_dataset("mnist", n=100, seed=0)
    M = ds.X
    B = 256
    Q = corrupt(M[np.arange(B) % 100], "gaussian", 0.3, ds.image_shape, seed=1)
    net = Network(M, "dot", L_h=L.log_sum_exp(5.0), tau_h=0.1)
    kw = dict(fixed_point_tol=TOL, rtol=RTOL, atol=ATOL)

    tr, t_batch = timed(lambda: integrate(net, Q, T_END, method="RK45-batched", **kw))
    nfev = np.array(tr.params["nfev_per_query"])
    t_stop = np.array(tr.params["t_final_per_query"])
    n = args.single
    singles, t_single = timed(lambda: [integrate(net, Q[b], T_END, method="RK45", **kw) for b in range(n)])
    t_single /= n
    bare, t_bare = timed(lambda: [bare_solve_ivp(net, Q[b]) for b in range(n)])
    t_bare /= n
    gap = max(np.abs(s.v_final[0] - tr.v_final[b]).max() for b, s in enumerate(singles))

    per_query = t_batch / B
    speedup, speedup_bare = t_single / per_query, t_bare / per_query
    print(f"batched RK45-batched, B={B}: {t_batch:.2f} s = {per_query * 1e3:.2f} ms/query; "
          f"{int(tr.converged.sum())}/{B} at a fixed point, stop time median {np.median(t_stop):.1f} "
          f"(max {t_stop.max():.1f}), RHS evaluations per query median {int(np.median(nfev))}")
    print(f"one at a time, integrate(method='RK45') (mean of {n}): {t_single * 1e3:.1f} ms/query, "
          f"RHS evaluations {np.mean([s.params['nfev'] for s in singles]):.0f}; "
          f"max |v* batched - v* alone| = {gap:.1e}")
    print(f"one at a time, bare solve_ivp + event (mean of {n}): {t_bare * 1e3:.1f} ms/query, "
          f"RHS evaluations {np.mean([s.nfev for s in bare]):.0f}")
    print(f"per-query speed-up: {speedup:.1f}x over integrate one at a time, {speedup_bare:.1f}x over "
          f"bare solve_ivp (target >= 20x) {'PASS' if speedup_bare >= 20 else 'FAIL'}")
    if not args.skip_one_system:
        one, t_one = timed(lambda: integrate(net, Q, T_END, method="RK45", **kw))
        print(f"whole batch as one solve_ivp system: {t_one:.2f} s = {t_one / B * 1e3:.2f} ms/query "
              f"({t_one / t_batch:.1f}x the batched integrator), {one.params['nfev']} RHS calls, "
              f"{int(one.converged.sum())}/{B} at a fixed point, stopped at t = {one.t[-1]:.1f}")

    if not args.skip_one_system:
        mixed_batch(M)

    v, h = net.initial_state(Q)
    g, f = net.L_v.grad(v), net.L_h.grad(h)
    y = net.pack(v, h)
    fun = net.fun()
    t_rhs = best(lambda: fun(0.0, y), 20)
    t_mm = best(lambda: (g @ M.T, f @ M), 20)
    ratio = t_rhs / t_mm
    print(f"one RHS (B={B}): {t_rhs * 1e3:.3f} ms; g @ M.T + f @ M: {t_mm * 1e3:.3f} ms; "
          f"ratio {ratio:.2f}x (target <= 3x) {'PASS' if ratio <= 3 else 'FAIL'}")
    # both ways take the same RHS evaluations per query, so the speed-up cannot exceed the cost of
    # one query's RHS evaluation inside solve_ivp (its step overhead and the event included) over
    # one query's share of a B-row RHS call, even with no other cost in the batched integrator
    per_eval_single = t_bare / np.mean([s.nfev for s in bare])
    per_eval_batch = t_rhs / B
    print(f"ceiling at equal RHS counts: {per_eval_single * 1e6:.0f} us per evaluation one at a time "
          f"/ {per_eval_batch * 1e6:.1f} us per query in a B={B} RHS = {per_eval_single / per_eval_batch:.1f}x; "
          f"the batched integrator spends {per_query / np.median(nfev) * 1e6:.1f} us per query-evaluation")
    return 0 if speedup_bare >= 20 and ratio <= 3 else 1


if __name__ == "__main__":
    raise SystemExit(main())
