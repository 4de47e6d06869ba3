"""verify_energy's cost against the integration it verifies (issue 29, goal 2: <= 2x).

MNIST memories (uhn.load_dataset("mnist")), N = 50 .. 1000 memories, B = 10 .. 256 queries: the
first B memories (cycled when B > N) with the bottom half masked (uhn.corrupt "mask_bottom" 0.5),
quadratic L_v, log_sum_exp(beta) L_h (softmax separation), tau_v = 1, tau_h = 0.1, integrated by
``uhn.integrate`` with its defaults (RK45, rtol 1e-8, t_end 50, stopping at the fixed point). Per
size and similarity, ``--rounds`` interleaved rounds of (integrate, verify_energy on that
trajectory), each timed in this one process; the ratio verify / integrate is taken within a round
and reported as the median (min - max) over rounds. Every check of verify_energy runs (default
options: the flow check's budget FLOW_BUDGET, the convexity probes); each round's report must PASS.

    python benchmarks/bench_energy.py [--rounds 3] [--sizes 50x10,200x64,1000x256] [--sims dot,squared_euclidean]

The largest sizes get fewer rounds (``--big-rounds``): a round at N = 1000, B = 256 takes minutes on
a loaded 2-core machine.
"""
import argparse
import time

import numpy as np

import uhn
from uhn.dynamics import lagrangians as L
from uhn.dynamics.analysis import energy

GOAL = 2.0


def problem(N, B, sim, beta):
    ds = uhn.load_dataset("mnist", n=N)
    Q = uhn.corrupt(ds.X[np.arange(B) % N], "mask_bottom", 0.5, ds.image_shape)
    net = uhn.Network(ds.X, similarity=sim, L_h=L.log_sum_exp(beta), tau_v=1.0, tau_h=0.1)
    return net, Q


def one_round(net, Q):
    t0 = time.perf_counter()
    traj = uhn.integrate(net, Q)
    t1 = time.perf_counter()
    rep = energy.verify_energy(net, traj, progress=False)
    t2 = time.perf_counter()
    if not rep.passed:
        raise SystemExit(f"verify_energy failed on an honest trajectory:\n{rep.summary()}")
    return t1 - t0, t2 - t1, rep


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--big-rounds", type=int, default=1, help="rounds for sizes with N B >= 50000")
    ap.add_argument("--sizes", default="50x10,50x256,200x64,1000x10,1000x256")
    ap.add_argument("--sims", default="dot,squared_euclidean")
    ap.add_argument("--beta", type=float, default=1.0)
    a = ap.parse_args(argv)
    sizes = [tuple(int(x) for x in s.split("x")) for s in a.sizes.split(",")]
    sims = a.sims.split(",")
    print(f"verify_energy / integrate (median (min - max) of interleaved rounds), log_sum_exp(beta={a.beta:g}), "
          f"FLOW_BUDGET {energy.FLOW_BUDGET}, goal <= {GOAL:g}x")
    print(f"{'similarity':<12}{'N':>6}{'B':>5}{'rounds':>7}{'integrate s':>13}{'verify s':>10}"
          f"{'ratio':>22}  windows re-integrated")
    worst = 0.0
    for N, B in sizes:
        for sim in sims:
            net, Q = problem(N, B, sim, a.beta)
            rounds = a.big_rounds if N * B >= 50000 else a.rounds
            ti, tv, ratio = [], [], []
            for _ in range(rounds):
                i, v, rep = one_round(net, Q)
                ti.append(i), tv.append(v), ratio.append(v / i)
            r = np.asarray(ratio)
            worst = max(worst, float(np.median(r)))
            print(f"{sim:<12}{N:>6}{B:>5}{rounds:>7}{np.median(ti):>13.2f}{np.median(tv):>10.2f}"
                  f"{f'{np.median(r):.2f} ({r.min():.2f} - {r.max():.2f})x':>22}  "
                  f"{rep.flow_checked} ({rep.flow_coverage.split(':')[0]})", flush=True)
    print(f"goal: verify_energy <= {GOAL:g}x integrate at every size: worst median {worst:.2f}x "
          f"({'met' if worst <= GOAL else 'NOT met'})")
    return 0 if worst <= GOAL else 1


if __name__ == "__main__":
    raise SystemExit(main())
