"""Single-shot retrieval on a GPU (torch and CuPy, float32): query-steps per second per similarity.

    python benchmarks/bench_gpu.py                 # every CUDA backend found: N = 1000, D = 784,
                                                   # B = 1024 ... 65536, float32
    python benchmarks/bench_gpu.py --cpu           # torch on the CPU too (small sweep; no target)
    python benchmarks/bench_gpu.py --batches 1024 4096 --repeats 3

models/ computes in the namespace and on the device of its inputs (docs/gpu.md), so the benchmark
hands Memory torch or CuPy arrays on the GPU and times ``Memory.retrieve`` (one query-step = one
query retrieved once), against one plain ``Q @ M.T`` of the same shapes measured in the same run.
Every timing synchronises the device before reading the clock; the best of ``--repeats`` calls
after a warm-up is kept. Goal (issue "Array-API backends"): >= 2 M query-steps/s on one H100.

dynamics/: ``Network.rhs`` on the device (it computes in the namespace of its memories) against
its two matmuls, and ``integrate(method="RK45-batched")`` there (uhn.dynamics.solvers.rk45_batched_array) in
query-steps per second (goal: >= 2 M on one H100).

Without a CUDA device the script prints "no CUDA device" and exits 0 (after the CPU sweep when
``--cpu`` is given and torch is installed); CI never depends on a GPU.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from uhn.models import Memory, get_separation, get_similarity

#: (label, similarity, separation): every standard similarity with max (the capacity experiments'
#: setting), plus the modern Hopfield network (dot + softmax)
CASES = [
    ("dot + max", "dot", "max"),
    ("cosine + max", "cosine", "max"),
    ("euclidean + max", "euclidean", "max"),
    ("squared_euclidean + max", "squared_euclidean", "max"),
    ("manhattan + max", "manhattan", "max"),
    ("minkowski(p=3) + max", ("minkowski", {"p": 3}), "max"),
    ("hamming + max", "hamming", "max"),
    ("kl + max", "kl", "max"),
    ("reverse_kl + max", "reverse_kl", "max"),
    ("dot + softmax(beta=1)", "dot", ("softmax", {"beta": 1.0})),
]

GOAL_QUERY_STEPS = 2e6


def backends(cpu: bool) -> list:
    """(name, to_device(numpy array) -> array, synchronize()) for each backend available."""
    found = []
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        dev = torch.device("cuda")
        found.append((f"torch {torch.__version__} on {torch.cuda.get_device_name(dev)}",
                      lambda a: torch.asarray(a, device=dev), torch.cuda.synchronize))
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() > 0:
            name = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
            found.append((f"cupy {cupy.__version__} on {name}", cupy.asarray,
                          cupy.cuda.Device().synchronize))
    except Exception:  # not installed, or no driver / device: CuPy raises its own error types
        pass
    if cpu and torch is not None:
        found.append((f"torch {torch.__version__} on CPU", torch.asarray, lambda: None))
    return found


def best_time(fn, sync, repeats: int) -> float:
    """Smallest wall time of ``repeats`` synchronised calls after one warm-up call."""
    fn()
    sync()
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def _spec(s):
    return s if isinstance(s, str) else s[0]


def _params(s):
    return {} if isinstance(s, str) else s[1]


def single_shot(name, to_dev, sync, N, D, batches, repeats, seed) -> list[str]:
    """Retrieval per similarity over the batch sweep; returns the failed goal lines."""
    rng = np.random.default_rng(seed)
    M = rng.random((N, D), dtype=np.float32)
    Qall = rng.random((max(batches), D), dtype=np.float32)
    Mb, Qb = (M > 0.5).astype(np.float32), (Qall > 0.5).astype(np.float32)  # hamming: binary data
    print(f"\n== single-shot retrieval, {name}: N={N}, D={D}, float32, best of {repeats} ==")
    print(f"{'case':<26}" + "".join(f"{'B=' + str(b):>12}" for b in batches) + "   (query-steps/s)")
    failed = []
    rows = [("Q @ M.T (reference)", None, None)] + CASES
    for label, sim, sep in rows:
        cells = []
        for B in batches:
            if sim is None:
                Md, Qd = to_dev(M), to_dev(Qall[:B])
                t = best_time(lambda: Qd @ Md.T, sync, repeats)
            else:
                binary = _spec(sim) == "hamming"
                Md, Qd = to_dev(Mb if binary else M), to_dev((Qb if binary else Qall)[:B])
                mem = Memory(Md, similarity=get_similarity(_spec(sim), **_params(sim)),
                             separation=get_separation(_spec(sep), **_params(sep)))
                t = best_time(lambda: mem.retrieve(Qd), sync, repeats)
            cells.append(B / t)
        print(f"{label:<26}" + "".join(f"{c:>12.3g}" for c in cells))
        if sim is not None and _spec(sim) == "dot" and "CPU" not in name and max(cells) < GOAL_QUERY_STEPS:
            failed.append(f"{label} on {name}: {max(cells) / 1e6:.2f} M query-steps/s < 2 M")
    return failed


def network_rhs(name, to_dev, sync, N, D, batches, repeats, seed) -> None:
    """The dynamics' right-hand side on the device: ``Network.rhs`` (dot similarity, quadratic
    L_v, log_sum_exp(beta=1) L_h, float32) in query-evaluations per second, against its two
    matmuls (S = g M^T and the contraction f M) timed alone in the same run. The batched
    integrator is timed by :func:`rk45_batched`."""
    from uhn.dynamics import lagrangians as L
    from uhn.dynamics.network import Network
    rng = np.random.default_rng(seed)
    M = rng.random((N, D), dtype=np.float32)
    Qall = rng.random((max(batches), D), dtype=np.float32)
    Md = to_dev(M)
    net = Network(Md, similarity="dot", L_v=L.quadratic(), L_h=L.log_sum_exp(beta=1.0))
    print(f"\n== Network.rhs, {name}: N={N}, D={D}, float32, best of {repeats} ==")
    print(f"{'B':>8} {'rhs evals/s':>14} {'2 matmuls /s':>14} {'rhs / matmuls':>14}")
    for B in batches:
        v, h = net.initial_state(to_dev(Qall[:B]))
        t_rhs = best_time(lambda: net.rhs(v, h), sync, repeats)
        t_mm = best_time(lambda: (v @ Md.T, h @ Md), sync, repeats)
        print(f"{B:>8} {B / t_rhs:>14.3g} {B / t_mm:>14.3g} {t_rhs / t_mm:>14.2f}")


def rk45_batched(name, to_dev, sync, N, D, batches, seed, t_end=10.0) -> list[str]:
    """integrate(method="RK45-batched") on the device (uhn.dynamics.solvers.rk45_batched_array): dot similarity,
    log_sum_exp(beta=1), float32, queries = memories with 20 % of their entries redrawn, to
    t_end or each query's fixed point, keeping the first and last samples only. Prints
    query-steps per second (accepted + rejected steps of every query, per wall second) and the
    right-hand-side evaluations per second; returns the failed goal lines (>= 2 M query-steps/s)."""
    from uhn.dynamics import lagrangians as L
    from uhn.dynamics.integrate import integrate
    from uhn.dynamics.network import Network
    rng = np.random.default_rng(seed)
    M = rng.random((N, D), dtype=np.float32)
    net = Network(to_dev(M), similarity="dot", L_v=L.quadratic(), L_h=L.log_sum_exp(beta=1.0))
    print(f"\n== RK45-batched (integrate), {name}: N={N}, D={D}, float32, t_end={t_end:g} ==")
    print(f"{'B':>8} {'wall s':>8} {'query-steps/s':>14} {'rhs evals/s':>14} {'at fixed point':>15}")
    failed = []
    for B in batches:
        Q = M[rng.integers(0, N, B)].copy()
        redraw = rng.random(Q.shape) < 0.2
        Q[redraw] = rng.random(int(redraw.sum()), dtype=np.float32)
        Qd = to_dev(Q)
        sync()
        t0 = time.perf_counter()
        tr = integrate(net, Qd, t_end, method="RK45-batched", n_samples=2, keep="ends")
        sync()
        wall = time.perf_counter() - t0
        evals = float(np.sum(tr.params["nfev_per_query"]))
        steps = evals / 6                      # six evaluations per step, accepted or rejected
        print(f"{B:>8} {wall:>8.3g} {steps / wall:>14.3g} {evals / wall:>14.3g} "
              f"{int(tr.converged.sum()):>8} of {B}")
        if "CPU" not in name and B == max(batches) and steps / wall < GOAL_QUERY_STEPS:
            failed.append(f"RK45-batched on {name}: {steps / wall / 1e6:.2f} M query-steps/s < 2 M")
    return failed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu", action="store_true", help="also run torch on the CPU (small sweep)")
    ap.add_argument("--N", type=int, default=1000)
    ap.add_argument("--D", type=int, default=784)
    ap.add_argument("--batches", type=int, nargs="+", default=None,
                    help="batch sizes (default 1024 4096 16384 65536 on a GPU, 256 1024 on the CPU)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    found = backends(args.cpu)
    gpus = [b for b in found if "CPU" not in b[0]]
    if not gpus:
        print("no CUDA device (torch.cuda / CuPy found none): the GPU benchmark did not run")
    failed = []
    for name, to_dev, sync in found:
        on_cpu = "CPU" in name
        batches = args.batches or ([256, 1024] if on_cpu else [1024, 4096, 16384, 65536])
        failed += single_shot(name, to_dev, sync, args.N, args.D, batches, args.repeats, args.seed)
        network_rhs(name, to_dev, sync, args.N, args.D, batches, args.repeats, args.seed)
        failed += rk45_batched(name, to_dev, sync, args.N, args.D, batches, args.seed)
    if gpus:
        print("\nall goals met" if not failed else "\nbelow goal:\n  " + "\n  ".join(failed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
