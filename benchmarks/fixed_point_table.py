"""The fixed point vs single-shot table of docs/dynamics.md, regenerated.

sklearn digits, N = 20 memories, 8 queries = memories 0..7 + gaussian noise (std 0.3),
softmax(beta=5) unless stated, tau_v = 1, tau_h = 0.1, t_end = 200, integrate's defaults
(RK45, rtol 1e-8, fixed point: velocity below 1e-8 + 30 x the integrator's resolution).
    python benchmarks/fixed_point_table.py [--method RK45-batched]
"""
import argparse

import numpy as np

from uhn.dynamics import lagrangians as L
from uhn.dynamics.analysis.fixed_points import compare_table, format_table
from uhn.models.corruption import corrupt
from uhn.models.data import load_dataset
from uhn.models.separation import get_separation
from uhn.models.similarity import get_similarity


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="RK45")
    args = ap.parse_args(argv)
    ds = load_dataset("digits", n=20, seed=0)
    M = ds.X
    idx = np.arange(8)
    Q = corrupt(M[idx], "gaussian", 0.3, ds.image_shape, seed=0)
    soft = get_separation("softmax", beta=5.0)
    pairs = [
        ("dot", soft),
        ("dot", get_separation("softmax", beta=1.0)),
        ("squared_euclidean", soft),
        ("euclidean", soft),
        ("cosine", soft, {"input_mode": "clamped"}),
        (get_similarity("manhattan", eps=0.05), soft),
        (get_similarity("minkowski", p=3), soft),
        ("kl", soft, {"L_v": L.softplus()}),
        ("reverse_kl", soft, {"L_v": L.softplus()}),
        ("dot", get_separation("polynomial", n=3)),
        ("dot", get_separation("polynomial", n=3), {"L_v": L.log_cosh()}),
    ]
    table = compare_table(M, idx, Q, pairs, t_end=200.0, method=args.method, max_nfev=200_000)
    print(format_table(table))


if __name__ == "__main__":
    main()
