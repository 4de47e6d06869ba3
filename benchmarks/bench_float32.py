"""float32 end to end: single-shot retrieval against a float32 GEMM, and the batched integrator in
float32 against float64 (both kept in their dtype; issue "CPU performance", goal: dot / euclidean
+ max <= 1.2x a float32 matmul of the same size).

    python benchmarks/bench_float32.py                 # N = B = 1000, D = 784 MNIST; B = 256 dynamics
    python benchmarks/bench_float32.py --rounds 11 --quick

Part 1: ``Memory(M32, sim, "max").retrieve(Q32)`` for dot and euclidean on MNIST (values in [0, 1],
float32), each against ``Q32 @ M32.T`` timed in the same round; the float64 pair beside it.
Rounds interleave every case (load on this shared machine hits all alike); printed: the median
time and min / median / max of the per-round ratio, the verdict on the median.

Part 2: B = 256 corrupted MNIST queries (gaussian 0.3), N = 100, dot + softmax(5), tau_h = 0.1,
``integrate(method="RK45-batched", keep="ends")`` to each query's fixed point, float32 and
float64 at the same rtol = 1e-4 (the float32 default; float64 at 1e-8 takes other step counts),
1 BLAS thread: time per query-evaluation of each, and their ratio. The outputs' dtypes are checked
(a float32 run that came back float64 is a FAIL).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_retrieval import interleaved, ratio_line  # noqa: E402  (the shared timing helpers)

from uhn.dynamics import lagrangians as L  # noqa: E402
from uhn.dynamics.integrate import integrate  # noqa: E402
from uhn.dynamics.network import Network  # noqa: E402
from uhn.models import Memory  # noqa: E402
from uhn.models.corruption import corrupt  # noqa: E402
from uhn.models.data import load_dataset  # noqa: E402


def retrieval(N: int, B: int, rounds: int, failed: list) -> None:
    ds = load_dataset("mnist", n=N + B, seed=0)
    cases = {}
    data = {}
    for dt in (np.float32, np.float64):
        M, Q = ds.X[:N].astype(dt), ds.X[N:N + B].astype(dt)
        data[dt] = (M, Q)
        name = np.dtype(dt).name
        cases[f"gemm {name}"] = (lambda M=M, Q=Q: Q @ M.T)
        for sim in ("dot", "euclidean"):
            mem = Memory(M, similarity=sim, separation="max")
            out = mem.retrieve(Q[:2])
            if out.dtype != dt:
                failed.append(f"{sim} {name} returned {out.dtype}")
            cases[f"{sim} + max {name}"] = (lambda mem=mem, Q=Q: mem.retrieve(Q))
    t = interleaved(cases, rounds)
    print(f"retrieval, N = {N}, B = {B}, D = {ds.D}, {rounds} interleaved rounds "
          f"(ms median; ratio to the GEMM of the same dtype: min / median / max)")
    for dt in (np.float32, np.float64):
        name = np.dtype(dt).name
        print(f"  GEMM Q @ M.T {name}: {np.median(t[f'gemm {name}']) * 1e3:.2f} ms")
        for sim in ("dot", "euclidean"):
            ratio_line(f"{sim} + max {name}", t[f"{sim} + max {name}"], t[f"gemm {name}"],
                       1.2 if dt == np.float32 else None, failed)
    r = t["gemm float32"] / t["gemm float64"]
    print(f"  float32 GEMM / float64 GEMM: {np.median(r):.2f} (min {r.min():.2f}, max {r.max():.2f})")


def dynamics(B: int, rounds: int, failed: list) -> None:
    ds = load_dataset("mnist", n=100, seed=0)
    Q = corrupt(ds.X[np.arange(B) % 100], "gaussian", 0.3, ds.image_shape, seed=1)
    runs = {}
    for dt in (np.float32, np.float64):
        net = Network(ds.X.astype(dt), "dot", L_h=L.log_sum_exp(5.0), tau_h=0.1)
        q = Q.astype(dt)
        integrate(net, q[:2], 50.0, method="RK45-batched", rtol=1e-4)      # numba compiles / loads
        runs[np.dtype(dt).name] = (lambda net=net, q=q: integrate(net, q, 50.0, method="RK45-batched",
                                                                  rtol=1e-4, fixed_point_tol=1e-5,
                                                                  keep="ends"))
    out = {}
    with threadpool_limits(limits=1, user_api="blas"):
        for name, fn in runs.items():
            out[name] = fn()
        t = interleaved(runs, rounds)
    print(f"RK45-batched, B = {B} MNIST queries, N = 100, dot + softmax(5), rtol 1e-4, 1 BLAS thread, "
          f"{rounds} interleaved rounds")
    per_eval = {}
    for name, tr in out.items():
        nfev = int(np.sum(tr.params["nfev_per_query"]))
        per_eval[name] = t[name] / nfev
        ok = tr.v.dtype == np.dtype(name) and tr.E.dtype == np.float64
        if not ok:
            failed.append(f"dynamics {name}: states {tr.v.dtype}, energies {tr.E.dtype}")
        print(f"  {name}: {np.median(t[name]) * 1e3:.1f} ms, {nfev} evaluations, "
              f"{np.median(per_eval[name]) * 1e6:.2f} us per query-evaluation, "
              f"{int(tr.converged.sum())}/{B} at a fixed point, states {tr.v.dtype}, energies {tr.E.dtype}")
    r = per_eval["float32"] / per_eval["float64"]
    print(f"  float32 / float64 per query-evaluation: median {np.median(r):.2f} "
          f"(min {r.min():.2f}, max {r.max():.2f})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    ap.add_argument("--quick", action="store_true", help="N = B = 200 retrieval, B = 64 dynamics")
    args = ap.parse_args(argv)
    failed: list = []
    n = 200 if args.quick else 1000
    retrieval(n, n, args.rounds, failed)
    dynamics(64 if args.quick else 256, max(1, args.rounds // 2), failed)
    print("FAILED: " + "; ".join(failed) if failed else "all goals met")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
