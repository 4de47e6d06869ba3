"""First contact: a cold ``uhn demo`` (fresh install: numba has compiled nothing) against a warm one.

    python benchmarks/bench_first_run.py                    # 3 rounds of the default demo
    python benchmarks/bench_first_run.py --rounds 5 -- --n-memories 50 --dataset digits

A cold run is a fresh process whose NUMBA_CACHE_DIR is an empty temporary folder, so numba finds
no cached kernel and compiles what the call needs (uhn.models.kernels builds one kernel variant
per call kind, each cached on disk once compiled); a warm run is a fresh process with the folder
that round's cold run filled. Rounds interleave cold and warm, so a change in the machine's load
hits both; the reading is the ratio of the medians (and the median of the per-round ratios).
Times are whole processes (interpreter start, imports, data load, retrieval, the PNG), as a user
waits for them. Also printed: the longest stretch of each run with nothing new on the terminal
(stdout and stderr together) and the line it followed, so a silent compile shows.
Goal (issue 29): cold <= 3x warm, and no silent stretch over ~2 s that no line explains.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL = 3.0


def timed_run(argv, env):
    """(wall seconds, output lines with the time each appeared) of one process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    for line in proc.stdout:
        lines.append((time.perf_counter() - t0, line.rstrip()))
    rc = proc.wait()
    wall = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"{' '.join(argv)} exited {rc}:\n" + "\n".join(x for _, x in lines))
    return wall, lines


def longest_silence(lines, wall):
    """(seconds, the line before it) of the longest gap between two lines (start and end included)."""
    stamps = [(0.0, "(process start)")] + lines + [(wall, "(exit)")]
    gaps = [(b[0] - a[0], a[1]) for a, b in zip(stamps, stamps[1:])]
    return max(gaps)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved cold / warm rounds (default 3)")
    ap.add_argument("demo_args", nargs="*", help="arguments after -- go to uhn demo")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_first_run.") as tmp:
        argv = [sys.executable, "-m", "uhn", "demo", "--out", str(Path(tmp) / "demo.png"), *args.demo_args]
        print(f"command: uhn demo {' '.join(argv[4:])}")
        print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f} at the start")
        cold, warm, ratios, silences, notices = [], [], [], [], []
        for r in range(args.rounds):
            cache = Path(tmp) / f"numba_cache_{r}"
            cache.mkdir()
            env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
            c, lines = timed_run(argv, env)
            w, wlines = timed_run(argv, env)
            cold.append(c), warm.append(w), ratios.append(c / w)
            silences.append(longest_silence(lines, c))
            notices.append([x for _, x in lines if x.startswith("compiling")])
            quiet = longest_silence(wlines, w)
            print(f"round {r + 1}: cold {c:6.2f} s  warm {w:6.2f} s  cold/warm {c / w:5.2f}x  "
                  f"longest silence: cold {silences[-1][0]:.2f} s after {silences[-1][1][:40]!r}, "
                  f"warm {quiet[0]:.2f} s after {quiet[1][:40]!r}")
        print("compile notices of the cold run (round 1):")
        for line in notices[0]:
            print(f"  {line}")
        mc, mw = statistics.median(cold), statistics.median(warm)
        ratio = mc / mw
        print(f"median cold {mc:.2f} s, median warm {mw:.2f} s: cold / warm {ratio:.2f}x "
              f"(median of per-round ratios {statistics.median(ratios):.2f}x); load average "
              f"{os.getloadavg()[0]:.2f} at the end")
        met = ratio <= GOAL
        print(f"goal: cold <= {GOAL:g}x warm: {'met' if met else 'NOT met'} ({ratio:.2f}x)")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
