"""Sweep runner overhead and scaling: one sweep in-process and on dask LocalClusters of 1 and 2
worker processes (1 thread each), interleaved.

    python benchmarks/bench_sweep.py [--points 8] [--seconds 2.0] [--repeats 2]

Each point is a CPU-bound measurement of about ``--seconds`` (repeated 400x400 matrix products,
calibrated once, under the same 1-thread BLAS limit that uhn.models.experiments.sweep.run sets around every
measurement wherever it runs; a pure function of the point). Both clusters are started first
(start-up printed apart, not counted); then each repeat runs the same sweep in-process, on
LocalCluster(1) and on LocalCluster(2), one after the other, so that a change in the load of a
shared machine hits all three alike. Per run it prints the wall time of the sweep, the summed
measurement time the points reported, and

    overhead per point = (wall x workers - summed measurement) / points,

what the runner, the scheduler, pickling and the store's writes add to each point (for the
clusters it also holds any idle worker time at the end of the sweep). Goal: <= 5 % of a point of
1 s or more. Scaling = wall(1 worker) / wall(2 workers), the median over repeats. Every run's
rows are checked equal, bit for bit (timestamps and times aside), to the first in-process run's.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from uhn.models.experiments import sweep  # noqa: E402


@dataclass(frozen=True)
class BusyPoint:
    index: int
    reps: int

    def params(self):
        return asdict(self)

    def key(self):
        return f"busy-{self.index}-{self.reps}"


def busy(point: BusyPoint) -> dict:
    """``reps`` products of a seeded 400 x 400 matrix; returns a checksum and the time taken."""
    t0 = time.perf_counter()
    a = np.random.default_rng(point.index).standard_normal((400, 400)) / 20
    x = a
    for _ in range(point.reps):
        x = a @ x
        x /= np.abs(x).max()
    return {"checksum": float(x.sum()), "seconds": time.perf_counter() - t0}


def calibrate(seconds: float) -> int:
    """Products per point for ``seconds``, timed with 1 BLAS thread as every sweep runs them."""
    with sweep.blas_threads(1):
        busy(BusyPoint(0, 5))
        t0 = time.perf_counter()
        busy(BusyPoint(0, 50))
    per = (time.perf_counter() - t0) / 50
    return max(1, int(round(seconds / per)))


def one(name, points, engine, workers, path):
    t0 = time.perf_counter()
    rows = sweep.run(points, busy, path, engine=engine)
    wall = time.perf_counter() - t0
    work = sum(r["seconds"] for r in rows)
    over = (wall * workers - work) / len(points)
    mean = work / len(points)
    print(f"  {name:<24} wall {wall:7.2f} s  measured {work:7.2f} s  point {mean:5.2f} s  "
          f"overhead/point {over * 1e3:7.1f} ms ({100 * over / mean:5.1f} %)", flush=True)
    return wall, 100 * over / mean, [sweep.comparable(r) for r in rows]


def start_cluster(n):
    from distributed import Client, LocalCluster
    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    client = Client(cluster)
    client.wait_for_workers(n, timeout=120)
    print(f"LocalCluster({n}) start-up {time.perf_counter() - t0:.2f} s", flush=True)
    return cluster, client


def close_cluster(cluster, client):
    """Client first, then the cluster, each with a time limit (a worker process that does not
    stop is killed by its nanny's own timeout instead of hanging the benchmark)."""
    try:
        client.close(timeout=20)
    finally:
        cluster.close(timeout=30)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    reps = calibrate(args.seconds)
    points = [BusyPoint(i, reps) for i in range(args.points)]
    print(f"{args.points} points of ~{args.seconds:g} s ({reps} products each, 1 BLAS thread); "
          f"machine has {os.cpu_count()} cores, load average at start "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    clusters = {}
    ref = None
    walls = {"in-process": [], 1: [], 2: []}
    pct = {"in-process": [], 1: [], 2: []}
    try:
        for n in (1, 2):
            clusters[n] = start_cluster(n)
        with tempfile.TemporaryDirectory() as out:
            for rep in range(args.repeats):
                print(f"repeat {rep + 1} of {args.repeats}", flush=True)
                runs = [("in-process", "local", 1, "in-process")]
                runs += [(f"LocalCluster({n} worker{'s' * (n > 1)})", clusters[n][1], n, n)
                         for n in (1, 2)]
                for name, engine, workers, slot in runs:
                    path = Path(out) / f"{rep}-{workers}-{name[:5]}.jsonl"
                    wall, p, rows = one(name, points, engine, workers, path)
                    walls[slot].append(wall)
                    pct[slot].append(p)
                    if ref is None:
                        ref = rows
                    assert rows == ref, f"{name}: rows differ from the first in-process run's"
    finally:
        for n, (cluster, client) in clusters.items():
            t0 = time.perf_counter()
            close_cluster(cluster, client)
            print(f"LocalCluster({n}) closed in {time.perf_counter() - t0:.2f} s", flush=True)
    med = {k: statistics.median(v) for k, v in walls.items()}
    print("median over repeats: overhead per point " + ", ".join(
        f"{'in-process' if k == 'in-process' else f'LocalCluster({k})'} "
        f"{statistics.median(v):.1f} %" for k, v in pct.items()))
    print(f"scaling: 1 -> 2 workers {med[1] / med[2]:.2f}x (ideal 2); in-process / 2 workers "
          f"{med['in-process'] / med[2]:.2f}x; rows identical to the in-process run's in all "
          f"{3 * args.repeats} runs: yes; load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
