"""Sweep runner overhead and scaling: one sweep in-process and on dask LocalClusters of 1 and 2
worker processes (1 thread each).

    python benchmarks/bench_sweep.py [--points 8] [--seconds 1.0]

Each point is a CPU-bound measurement of about ``--seconds`` (repeated 400x400 matrix products,
calibrated once; a pure function of the point). Per engine it prints the wall time of the sweep
(cluster start-up excluded, printed apart), the summed measurement time the workers reported,
and the overhead per point = (wall x workers - summed measurement) / points: what the runner,
the scheduler, pickling and the store's writes add to each point. Goal: <= 5 % of a 1 s point.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import sweep  # noqa: E402

A = None


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
    t0 = time.perf_counter()
    busy(BusyPoint(0, 50))
    per = (time.perf_counter() - t0) / 50
    return max(1, int(round(seconds / per)))


def one(name, points, engine, workers, out):
    path = Path(out) / f"{name}.jsonl"
    t0 = time.perf_counter()
    rows = sweep.run(points, busy, path, engine=engine)
    wall = time.perf_counter() - t0
    work = sum(r["seconds"] for r in rows)
    over = (wall * workers - work) / len(points)
    mean = work / len(points)
    print(f"{name:<22} wall {wall:7.2f} s  measured {work:7.2f} s  point {mean:5.2f} s  "
          f"overhead/point {over * 1e3:7.1f} ms ({100 * over / mean:5.1f} %)")
    return wall, [sweep.comparable(r) for r in rows]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=1.0)
    args = ap.parse_args(argv)
    reps = calibrate(args.seconds)
    points = [BusyPoint(i, reps) for i in range(args.points)]
    print(f"{args.points} points of ~{args.seconds:g} s ({reps} products each); machine has "
          f"{__import__('os').cpu_count()} cores")
    from distributed import Client, LocalCluster
    with tempfile.TemporaryDirectory() as out:
        serial, ref = one("in-process", points, "local", 1, out)
        walls = {}
        for n in (1, 2):
            t0 = time.perf_counter()
            with LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                              dashboard_address=None) as cluster, Client(cluster) as client:
                client.wait_for_workers(n)
                print(f"LocalCluster({n}) start-up {time.perf_counter() - t0:.2f} s")
                walls[n], rows = one(f"LocalCluster({n} worker{'s' * (n > 1)})", points, client,
                                     n, out)
            assert rows == ref, "cluster rows differ from the serial rows"
    print(f"scaling: 1 -> 2 workers {walls[1] / walls[2]:.2f}x; in-process / 2 workers "
          f"{serial / walls[2]:.2f}x; rows identical to the serial run: yes")


if __name__ == "__main__":
    main()
