"""The three-layer network (uhn.dynamics.hierarchical.demo.pca_network) against its matrix products.

pixels (784) <-> latent (k = 50, linear synapse alpha V_k) <-> memories (N = 100, dot similarity
on the latent codes, log_sum_exp), B = 256 half-masked MNIST queries (the stored digits, bottom
half masked), rtol 1e-8, atol 1e-10, fixed_point_tol 1e-5.

Timed in ``--rounds`` interleaved rounds (every run once per round, so both sides of a ratio see
the same load; ratios within a round, reported as median (min - max) over the rounds):
  one RHS        net.velocity on the B = 256 batch (rates, drives, the layers' sums, into a
                 reused output array, as the integrators call it)
  products       its four matrix products alone, each into a preallocated output (their
                 cheapest form: a fresh (B, 784) result costs page faults as much as the
                 product on this machine): g_l @ W^T and g_p @ W (the linear synapse),
                 g_l @ C^T and f @ C (the similarity synapse)
  RK45-batched   integrate(net, Q, method="RK45-batched"): all of it (steps, fixed-point tests,
                 samples, energies) per query-evaluation, against one query's share (1/B) of the
                 four products of a B-row RHS
Everything under integrate's BLAS policy (1 thread). Wall-clock ratios are the goals; CPU-time
ratios are printed beside them in brackets (the machine is shared with other processes).
Targets (issue 30): one RHS <= 1.5x its products; RK45-batched per query-evaluation <= 2.5x its
share of them. Exit status 1 when a target is missed.
    python benchmarks/bench_hierarchical.py [--rounds 3] [--k 50]
"""
import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

from uhn.dynamics.hierarchical.demo import pca_network
from uhn.dynamics.integrate import integrate
from uhn.dynamics.solvers.driver import BLAS_THREADS
from uhn.models.corruption import corrupt
from uhn.models.data import load_dataset

T_END, TOL, RTOL, ATOL = 60.0, 1e-5, 1e-8, 1e-10
#: calls per round of one RHS and of the products alone (~1 s of each)
REPS = 300


def timed(fn):
    """(result, wall seconds, CPU seconds of this process)."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def repeat(fn, n):
    for _ in range(n):
        fn()


def spread(xs, fmt="{:.2f}"):
    xs = np.asarray(xs, dtype=float)
    return f"{fmt.format(np.median(xs))} ({fmt.format(xs.min())} - {fmt.format(xs.max())})"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--k", type=int, default=50, help="latent size")
    args = ap.parse_args(argv)
    ds = load_dataset("mnist", n=100, seed=0)
    X = np.asarray(ds.X, dtype=np.float64)
    B = 256
    Q = corrupt(X[np.arange(B) % len(X)], "mask_bottom", 0.5, ds.image_shape, seed=0)
    net = pca_network(X, args.k)
    lin, sim = net.synapses
    v, h = net.initial_state(Q)
    Y = np.concatenate([v, h], axis=1)
    X0 = net.split(Y)
    gp, gl = X0[0], X0[1]                          # quadratic layers: rates = states
    f = net.layers[2].rates(X0[2])
    W, WT, C = lin.W, lin.WT, sim.M
    out = np.empty_like(Y)
    kw = dict(fixed_point_tol=TOL, rtol=RTOL, atol=ATOL)

    CT = np.ascontiguousarray(C.T)
    bufs = [np.empty((B, n)) for n in (WT.shape[1], W.shape[1], CT.shape[1], C.shape[1])]

    def products():                 # into preallocated outputs: the cheapest form of the products
        for (a, m), o in zip(((gl, WT), (gp, W), (gl, CT), (f, C)), bufs):
            np.matmul(a, m, out=o)

    integrate(net, Q[:2], T_END, method="RK45-batched", **kw)       # compile the kernels
    rounds = []
    with threadpool_limits(limits=BLAS_THREADS, user_api="blas"):
        for _ in range(args.rounds):
            _, w_rhs, c_rhs = timed(lambda: repeat(lambda: net.velocity(Y, out=out), REPS))
            _, w_mm, c_mm = timed(lambda: repeat(products, REPS))
            tr, w_b, c_b = timed(lambda: integrate(net, Q, T_END, method="RK45-batched", **kw))
            nfev = float(np.sum(tr.params["nfev_per_query"]))
            rounds.append(dict(rhs=(w_rhs / REPS, c_rhs / REPS), mm=(w_mm / REPS, c_mm / REPS),
                               ev=(w_b / nfev, c_b / nfev), tr=tr, nfev=nfev))

    def ratio(a, b, i, share=1.0):
        return [rd[a][i] / (rd[b][i] * share) for rd in rounds]

    tr = rounds[-1]["tr"]
    print(f"# {len(rounds)} interleaved rounds, median (min - max); wall time [CPU time]; BLAS threads = "
          f"{BLAS_THREADS}; a 2-core machine shared with other processes")
    print(f"# network: {net!r}")
    rhs = ratio("rhs", "mm", 0)
    print(f"one RHS (B={B}): {spread([rd['rhs'][0] * 1e3 for rd in rounds], '{:.3f}')} ms; its four products "
          f"{spread([rd['mm'][0] * 1e3 for rd in rounds], '{:.3f}')} ms; ratio {spread(rhs)}x "
          f"[{spread(ratio('rhs', 'mm', 1))}x] (target <= 1.5x) {'PASS' if np.median(rhs) <= 1.5 else 'FAIL'}")
    ev = ratio("ev", "mm", 0, 1.0 / B)
    print(f"RK45-batched: {int(tr.converged.sum())}/{B} at a fixed point, RHS evaluations per query median "
          f"{int(np.median(tr.params['nfev_per_query']))}; per query-evaluation "
          f"{spread([rd['ev'][0] * 1e6 for rd in rounds], '{:.1f}')} us against its share of the products "
          f"{spread([rd['mm'][0] / B * 1e6 for rd in rounds], '{:.1f}')} us: {spread(ev)}x "
          f"[{spread(ratio('ev', 'mm', 1, 1.0 / B))}x] (target <= 2.5x) "
          f"{'PASS' if np.median(ev) <= 2.5 else 'FAIL'}")
    return 0 if np.median(rhs) <= 1.5 and np.median(ev) <= 2.5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
