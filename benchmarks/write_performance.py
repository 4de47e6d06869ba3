"""Write docs/performance.md from the benchmarks' saved output (benchmarks/output/*.txt).

    python benchmarks/write_performance.py            # rewrite docs/performance.md
    python benchmarks/write_performance.py --check    # exit 1 if docs/performance.md is stale
    python benchmarks/write_performance.py --record "python benchmarks/bench_load.py" \\
        --conditions "2-core machine, otherwise idle"  # run one benchmark, save its output, rewrite

Every number on the page comes from an output file: the summary table quotes a match of a
regular expression in one (a missing match is an error, not an empty cell), and each file is
shown whole under its command. An output file is the benchmark's printed lines after a header of
``# key: value`` lines: ``command`` (what printed it), ``date``, ``conditions`` (machine, threads,
sizes), ``source`` (verbatim output, or where a transcription came from) and any number of
``note`` lines. Files written by ``--record`` are verbatim; some older ones are transcriptions of
readings the README quoted when the printed lines were not kept, and their ``source`` says so.
"""
from __future__ import annotations

import argparse
import datetime
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = ROOT / "benchmarks" / "output"
DOC = ROOT / "docs" / "performance.md"

# the order of the sections; files not named here follow, sorted
ORDER = ["bench_retrieval", "bench_float32", "bench_dynamics", "bench_reduced", "bench_curve",
         "bench_load", "bench_sweep"]

# (output file, what is measured, regular expression whose first group is the reading, goal)
SUMMARY = [
    ("bench_retrieval", "manhattan + max retrieval / one `Q @ M.T`", r"manhattan \+ max\s+[\d.]+\s+([\d.]+)\s+<= 4x", "<= 4x"),
    ("bench_retrieval", "minkowski(p=3) + max retrieval / one `Q @ M.T`", r"minkowski\(p=3\) \+ max\s+[\d.]+\s+([\d.]+)\s+<= 8x", "<= 8x"),
    ("bench_retrieval", "one query, N = 5000: manhattan / dot (median)",
     r"  manhattan \+ max\s+[\d.]+\s+[\d.]+\s+([\d.]+)\s+[\d.]+\s+<= 2x", "<= 2x"),
    ("bench_retrieval", "manhattan(eps) RHS / dot RHS, float64 (median)",
     r"float64: dot RHS[^\n]*\n[^\n]*\n  manhattan\(eps=0\.05\) RHS, fused kernel\s+[\d.]+\s+[\d.]+\s+([\d.]+)", "<= 5x"),
    ("bench_retrieval", "manhattan(eps) RHS / dot RHS, float32 (median)",
     r"float32: dot RHS[^\n]*\n[^\n]*\n  manhattan\(eps=0\.05\) RHS, fused kernel\s+[\d.]+\s+[\d.]+\s+([\d.]+)", "<= 5x"),
    ("bench_float32", "dot + max / float32 GEMM (median)", r"dot \+ max float32\s+[\d.]+\s+[\d.]+\s+([\d.]+)", "<= 1.2x"),
    ("bench_float32", "euclidean + max / float32 GEMM (median)", r"euclidean \+ max float32\s+[\d.]+\s+[\d.]+\s+([\d.]+)", "<= 1.2x"),
    ("bench_dynamics", "RK45-batched per query / bare solve_ivp one at a time",
     r"([\d.]+ \([\d.]+ - [\d.]+\)x) over bare solve_ivp", ">= 10x"),
    ("bench_dynamics", "batched query-evaluation / its share of the two matmuls",
     r"two matmuls: ([\d.]+ \([\d.]+ - [\d.]+\)x)", "<= 2x"),
    ("bench_dynamics", "one RHS / its two matmuls", r"ratio ([\d.]+ \([\d.]+ - [\d.]+\)x)", "<= 3x"),
    ("bench_dynamics", "`method=\"reduced\"` per query / bare solve_ivp",
     r"ms/query, ([\d.]+ \([\d.]+ - [\d.]+\)x) per query", ""),
    ("bench_reduced", "reduced / RK45-batched, integration alone (medians)",
     r"n_samples = 2 \(integration alone\)[\s\S]*?speed-up: ([\d.]+x) \(medians\)", ">= 5x"),
    ("bench_curve", "MNIST similarity-vs-N curve, whole process (median of 5)", r"median whole process ([\d.]+ s)", "<= 2.2 s"),
    ("bench_load", "MNIST load, uhn reader (median of 5)", r"uhn reader \(loadtxt uint8\)\s+min [\d.]+ s\s+median ([\d.]+ s)", ""),
    ("bench_energy", "verify_energy / integrate, worst median over N = 50..1000, B = 10..256",
     r"worst median ([\d.]+x)", "<= 2x"),
    ("bench_first_run", "first `uhn demo` (empty numba cache) / a warm one (median)",
     r"cold / warm ([\d.]+x)", "<= 3x"),
    ("bench_brian2", "brian2 numpy target / solve_ivp, MNIST N = 50, B = 10, beta = 1",
     r"ratio brian2/solve_ivp at beta = 1: numpy ([\d.]+x)", "-"),
    ("bench_brian2", "brian2 cpp_standalone binary / solve_ivp, same network, beta = 1000",
     r"ratio brian2/solve_ivp at beta = 1000: .*cpp_standalone ([\d.]+x)", "-"),
    ("bench_hierarchical", "three-layer network: one RHS / its four products",
     r"one RHS .*?; ratio ([\d.]+ \([\d.]+ - [\d.]+\)x)", "<= 1.5x"),
    ("bench_hierarchical", "three-layer network: RK45-batched per query-evaluation / its products",
     r"RK45-batched: .*?: ([\d.]+ \([\d.]+ - [\d.]+\)x)", "<= 2.5x"),
    ("bench_sweep", "sweep overhead per point, LocalCluster(2) (median over repeats)",
     r"median over repeats: [^\n]*LocalCluster\(2\) ([\d.]+ %)", "<= 5 %"),
]

INTRO = """\
# Performance

*Written by `python benchmarks/write_performance.py` from the benchmarks' saved output in
`benchmarks/output/`; do not edit by hand.* Each section below is one output file: the command
that printed it, when, under which conditions, and the lines. Readings are ratios measured in the
same run wherever the benchmark allows it: the machine they ran on has two cores shared with other
work, so absolute times vary between runs. A file whose `source` says "transcribed" holds readings
an earlier README quoted from that command's output when the printed lines were not kept; a fresh
run (`--record`) replaces it with verbatim output.

How the compiled L1 / Lp kernels (`uhn.models.kernels`) use threads: numba's threads only for calls
of at least `uhn.models.kernels.SERIAL_WORK` element operations, split over blocks of queries, or
over tiles of memories for the scores of a single block; smaller calls, such as one query's
right-hand side in the dynamics, run on the calling thread.

brian2's cost per step and target (`benchmarks/bench_brian2.py`) is in [brian2.md](brian2.md), the
GPU benchmark (`benchmarks/bench_gpu.py`, not yet run on a GPU) in [gpu.md](gpu.md).
"""


HEADER_FIELDS = ("command", "date", "conditions", "source", "note")


@dataclass
class Output:
    """One saved benchmark output: its header fields and its printed lines."""
    name: str
    command: str = ""
    date: str = ""
    conditions: str = ""
    source: str = ""
    notes: list = field(default_factory=list)
    body: str = ""


def read_output(path: Path) -> Output:
    """Parse one output file (header of ``# key: value`` lines, then the printed lines)."""
    out = Output(path.stem)
    lines = path.read_text(encoding="utf-8").splitlines()
    k = 0
    while k < len(lines) and lines[k].startswith("# "):
        key, sep, value = lines[k][2:].partition(": ")
        if not sep or key not in HEADER_FIELDS:
            break                                # the printed lines may start with a comment too
        if key == "note":
            out.notes.append(value.strip())
        else:
            setattr(out, key, value.strip())
        k += 1
    out.body = "\n".join(lines[k:]).strip("\n")
    if not out.command or not out.body:
        raise ValueError(f"{path}: an output file needs a '# command:' line and printed lines")
    return out


def read_outputs(folder: Path = OUTPUTS) -> list[Output]:
    """Every output file of ``folder``, in ORDER first."""
    files = {p.stem: p for p in folder.glob("*.txt")}
    names = [n for n in ORDER if n in files] + sorted(set(files) - set(ORDER))
    return [read_output(files[n]) for n in names]


def summary_rows(outputs: list[Output]) -> list[tuple[str, str, str, str]]:
    """(what, reading, goal, file) for every SUMMARY row whose output file exists."""
    by_name = {o.name: o for o in outputs}
    rows = []
    for name, what, pattern, goal in SUMMARY:
        if name not in by_name:
            continue
        m = re.search(pattern, by_name[name].body + "\n")
        if m is None:
            raise ValueError(f"benchmarks/output/{name}.txt has no reading for {what!r} "
                             f"(pattern {pattern!r}); update SUMMARY or the output file")
        rows.append((what, m.group(1), goal, name))
    return rows


def render(outputs: list[Output]) -> str:
    """The text of docs/performance.md."""
    parts = [INTRO, "## Summary\n",
             "| measured | reading | goal | output |", "|---|---|---|---|"]
    for what, reading, goal, name in summary_rows(outputs):
        parts.append(f"| {what} | {reading} | {goal or '-'} | [{name}](#{name}) |")
    parts.append("")
    for o in outputs:
        parts += [f"## {o.name}\n", f"`{o.command}`\n"]
        for label, value in (("date", o.date), ("conditions", o.conditions), ("source", o.source)):
            if value:
                parts.append(f"- {label}: {value}")
        parts += ["", "```", o.body, "```", ""]
        parts += [note + "\n" for note in o.notes]
    return "\n".join(parts).rstrip("\n") + "\n"


def record(command: str, conditions: str, folder: Path = OUTPUTS) -> Path:
    """Run a benchmark command (from the repository root) and save its printed output verbatim."""
    argv = shlex.split(command)
    script = next((a for a in argv if a.endswith(".py")), None)
    if script is None:
        raise ValueError(f"cannot tell the benchmark of {command!r} (no .py argument)")
    proc = subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, text=True)
    # exit status 1 with printed lines: the benchmark ran and reports a goal it did not meet
    crashed = "Traceback (most recent call last)" in proc.stderr
    if proc.returncode not in (0, 1) or crashed or not proc.stdout.strip():
        raise RuntimeError(f"{command!r} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    header = [f"# command: {command}", f"# date: {datetime.date.today().isoformat()}",
              f"# conditions: {conditions}", "# source: verbatim output (--record)"]
    if proc.returncode == 1:
        header.append("# note: the benchmark exited with status 1: a goal below is not met")
    path = folder / (Path(script).stem + ".txt")
    path.write_text("\n".join(header) + "\n" + proc.stdout.strip("\n") + "\n", encoding="utf-8")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the page is not what would be written")
    ap.add_argument("--record", metavar="COMMAND", help="run this benchmark command and save its output first")
    ap.add_argument("--conditions", default="", help="with --record: machine, threads, load")
    ap.add_argument("--outputs", type=Path, default=OUTPUTS, help="folder of the output files")
    ap.add_argument("--doc", type=Path, default=DOC, help="the page to write")
    args = ap.parse_args(argv)
    if args.record:
        print(f"saved {record(args.record, args.conditions, args.outputs)}")
    text = render(read_outputs(args.outputs))
    if args.check:
        current = args.doc.read_text(encoding="utf-8") if args.doc.is_file() else ""
        if current != text:
            print(f"{args.doc} is stale: run python benchmarks/write_performance.py", file=sys.stderr)
            return 1
        return 0
    args.doc.write_text(text, encoding="utf-8")
    print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
