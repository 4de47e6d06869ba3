"""Why the cosine dynamics stall on MNIST (docs/theory_capacity.md section 6): no fixed point.

Cosine is invariant to the scale of g, so with L_v quadratic (g = v) the force
sum_mu f_mu dS_mu/dg is orthogonal to v and d|v|/dt = -|v|/tau_v exactly: |v(t)| = |v(0)| e^-t,
while the direction's equation stiffens as e^2t. This prints |v(t)| / (|v(0)| e^-t), the
right-hand-side evaluations per query to t_end = 2, 4, 6, 8 (RK45-batched), the memory layer's
weights at the end, and (--stiff) how far BDF and Radau get with 100,000 evaluations.

MNIST, the first 100 digits of the seed-0 shuffle (the basins experiment's memories), queries =
digits 0..3 + gaussian noise std 0.1, softmax(beta = 1) memory neurons, tau_v = 1, tau_h = 0.1.
    python benchmarks/cosine_no_fixed_point.py [--stiff]
"""
import argparse
import time

import numpy as np

from uhn.dynamics.integrate import integrate
from uhn.dynamics.lagrangians import log_sum_exp, quadratic
from uhn.dynamics.network import Network
from uhn.models.corruption import corrupt
from uhn.models.data import load_dataset


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stiff", action="store_true", help="also BDF and Radau on one query (~1 min)")
    args = ap.parse_args(argv)
    ds = load_dataset("mnist", n=100, seed=0)
    M = np.array(ds.X)
    Q = corrupt(M[:4], "gaussian", 0.1, ds.image_shape, seed=0)
    net = Network(M, "cosine", L_v=quadratic(), L_h=log_sum_exp(1.0), tau_v=1.0, tau_h=0.1)
    for t_end in (2.0, 4.0, 6.0, 8.0):
        t0 = time.perf_counter()
        tr = integrate(net, Q, t_end, method="RK45-batched", keep="all", n_samples=5,
                       max_nfev=200_000)
        ratio = np.linalg.norm(tr.v, axis=-1) / (np.linalg.norm(Q, axis=1) * np.exp(-tr.t)[:, None])
        w = np.asarray(net.L_h.grad(tr.h_final))
        print(f"t_end {t_end:g}: {time.perf_counter() - t0:.1f} s, rhs evaluations per query "
              f"{tr.params['nfev_per_query']}, at rest {int(tr.converged.sum())}/4, "
              f"|v(t)|/(|v(0)| e^-t) in [{ratio.min():.6f}, {ratio.max():.6f}], "
              f"max weight {np.round(w.max(axis=1), 3).tolist()}, argmax {w.argmax(axis=1).tolist()}")
    if args.stiff:
        for method in ("BDF", "Radau"):
            t0 = time.perf_counter()
            try:
                integrate(net, Q[:1], 30.0, method=method, max_nfev=100_000)
                print(f"{method}: reached t = 30")
            except RuntimeError as err:
                print(f"{method} ({time.perf_counter() - t0:.0f} s): {str(err).split(';')[0]}")


if __name__ == "__main__":
    main()
