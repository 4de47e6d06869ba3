"""The full MNIST similarity-vs-N capacity curve, as a user runs it: one whole process, 1 BLAS thread.

    python benchmarks/bench_curve.py [--runs 3]

Runs ``python -m dynamics capacity --experiment similarity_vs_n --no-resume`` (the paper's N = 2 ..
1000, 5 disjoint blocks per point, every similarity of the experiment: euclidean, manhattan, dot,
kl, reverse_kl and the official code's normalised dot) in a fresh subprocess with
OPENBLAS_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS = 1, into a scratch results file, ``--runs``
times; prints the whole-process wall time of each run (imports, MNIST load, every point, the
results store, the table), their median, and the sweep time the command itself reports.
Goal (issue "CPU performance"): <= 2.2 s whole process.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOAL_S = 2.2


def one_run(out_dir: str) -> tuple[float, float, int]:
    """(whole-process seconds, the sweep seconds it printed, points) of one fresh process."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "dynamics", "capacity", "--experiment", "similarity_vs_n",
           "--no-resume", "--out", os.path.join(out_dir, "curve.jsonl")]
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=out_dir)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"capacity run failed ({done.returncode}):\n{done.stderr[-2000:]}")
    m = re.search(r"(\d+) points \(([\d.]+) s\)", done.stdout + done.stderr)
    if not m:
        raise SystemExit("could not read the point count / sweep time from the command's output")
    return wall, float(m.group(2)), int(m.group(1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    walls, sweeps = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            wall, sweep, points = one_run(tmp)
            walls.append(wall)
            sweeps.append(sweep)
            print(f"run {i + 1}: {wall:.2f} s whole process, sweep {sweep:.2f} s, {points} points")
    med = float(np.median(walls))
    print(f"median whole process {med:.2f} s (min {min(walls):.2f}, max {max(walls):.2f}); sweep "
          f"median {np.median(sweeps):.2f} s; goal <= {GOAL_S} s: {'PASS' if med <= GOAL_S else 'FAIL'}")
    return 0 if med <= GOAL_S else 1


if __name__ == "__main__":
    sys.exit(main())
