"""Speed of batched single-shot retrieval against one plain matrix product of the same shapes.

    python benchmarks/bench_retrieval.py            # N = 1000 memories, D = 784, B = 1000 queries
    python benchmarks/bench_retrieval.py --quick    # N = 200, D = 784, B = 200
    python benchmarks/bench_retrieval.py --threads 1   # pin BLAS threads (steadier on a busy machine)

Every retrieval is timed as a ratio to ``Q @ M.T`` measured in the same run (best of several
repeats, time.perf_counter), so the numbers compare across machines. Targets (issue "Single-shot
Universal Hopfield framework"): dot and euclidean retrieval <= 2x the matmul; manhattan <= 20x
the matmul with < 200 MB peak extra memory (tracemalloc tracks numpy's allocations).

Structural floor: a softmax (or any dense) separation needs a second product W @ P of the same
size as the reference, so its retrieval costs at least 2 matmuls plus an exp of a (B, N) matrix;
the 2x target is stated for max separation, and softmax is reported against it for information.
Manhattan has no GEMM form: scipy's cdist does B*N*D absolute differences in C, ~10x a matmul.
"""
from __future__ import annotations

import argparse
import sys
import time
import tracemalloc

import numpy as np

from models import Memory, get_separation


def best_time(fn, repeats: int) -> float:
    """Smallest wall time of ``repeats`` calls (after one warm-up call)."""
    fn()
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def peak_extra_mb(fn) -> float:
    """Peak memory allocated during ``fn()`` above what was allocated before it, in MB."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return (peak - base) / 2**20


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="N = B = 200 instead of 1000")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per case (best is kept)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="BLAS threads (default: the library's own)")
    args = ap.parse_args(argv)
    if args.threads is not None:
        from threadpoolctl import threadpool_limits
        with threadpool_limits(limits=args.threads, user_api="blas"):
            return run(args)
    return run(args)


def run(args) -> int:
    from threadpoolctl import threadpool_info
    N, D, B = (200, 784, 200) if args.quick else (1000, 784, 1000)
    repeats = args.repeats or (5 if args.quick else 7)

    rng = np.random.default_rng(args.seed)
    M = rng.random((N, D))
    Q = rng.random((B, D))

    t_ref = best_time(lambda: Q @ M.T, repeats)
    blas = [f"{i['internal_api']} {i['num_threads']} thread(s)" for i in threadpool_info()
            if i["user_api"] == "blas"]
    print(f"N={N} memories, D={D}, B={B} queries, float64, best of {repeats}; BLAS: {', '.join(blas)}")
    print(f"reference Q @ M.T: {t_ref * 1e3:.2f} ms")

    cases = [  # (label, similarity, separation, target ratio or None)
        ("dot + max", "dot", "max", 2.0),
        ("euclidean + max", "euclidean", "max", 2.0),
        ("dot + softmax", "dot", get_separation("softmax", beta=1.0), None),
        ("euclidean + softmax", "euclidean", get_separation("softmax", beta=1.0), None),
        ("manhattan + max", "manhattan", "max", 20.0),
    ]
    failed = []
    print(f"{'case':<24}{'time (ms)':>10}{'x matmul':>10}  target")
    for label, sim, sep, target in cases:
        mem = Memory(M, similarity=sim, separation=sep)
        t = best_time(lambda: mem.retrieve(Q), repeats)
        ratio = t / t_ref
        if target is None:
            verdict = "info: no target; a 2nd GEMM W @ P + exp of (B, N) make ~2x+ structural"
        else:
            ok = ratio <= target
            verdict = f"<= {target:g}x  {'PASS' if ok else 'FAIL'}"
            if not ok:
                failed.append(label)
        print(f"{label:<24}{t * 1e3:>10.2f}{ratio:>10.2f}  {verdict}")

    mem = Memory(M, similarity="manhattan", separation="max")
    mb = peak_extra_mb(lambda: mem.retrieve(Q))
    ok = mb < 200.0
    if not ok:
        failed.append("manhattan memory")
    print(f"manhattan + max peak extra memory: {mb:.1f} MB  (< 200 MB  {'PASS' if ok else 'FAIL'}; "
          f"a (B, N, D) difference array would take {B * N * D * 8 / 2**20:.0f} MB)")

    print("all targets PASS" if not failed else f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
