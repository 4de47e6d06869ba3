"""``uhn theory``: capacity against theory on random patterns, each measured number beside its
theory with a confidence interval (uhn.models.experiments.theory; docs/theory_capacity.md).

    uhn theory                                      the small study (about a minute on one core)
    uhn theory --parts classical hopfield1982       some parts of it
    uhn theory --scale figures --figures-dir figures  the grids of figures/theory_*.png
    uhn theory --scale figures --parts softmax_fixed_points --figures-dir figures
                                                    figures/theory_fixed_points.png alone
    uhn theory --scale paper --workers 2            the issue's sizes, on a dask LocalCluster

Parts: the classical network against the critical load 0.138 (Amit, Gutfreund & Sompolinsky
1985), Hopfield's (1982) {0, 1} protocol beside the bipolar one, dense associative memory's
capacity exponent against n - 1 (Krotov & Hopfield 2016), softmax / max capacity against the
exact nearest-pattern law, and the fixed point reached against beta (Ramsauer et al. 2020) by
single shot, Memory.iterate and the continuous-time dynamics (uhn.integrate). Rows
go to a JSON-lines store (default results/theory.jsonl); rerunning the same command resumes.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from uhn.cli import (add_engine_arguments, check_out_dir, check_out_file, engine_description,
    interrupted, nonnegative_int, note, positive_int, sweep_progress_bar)

DEFAULT_OUT = Path("results") / "theory.jsonl"


def register(sub) -> None:
    from uhn.models.experiments.theory import PARTS
    p = sub.add_parser("theory", help="capacity against theory: classical, Hopfield 1982, DAM, softmax",
                       description=__doc__.split("\n\n")[0],
                       epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--scale", choices=("small", "paper", "figures"), default="small",
                   help="small: a minute; paper: the issue's sizes (hours); figures: the grids "
                        "the tracked figures and docs/theory_capacity.md use")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=None,
                   help="parts of the study (default all)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results store (JSON lines)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse stored points; --no-resume recomputes and replaces them")
    p.add_argument("--figures-dir", type=Path, default=None,
                   help="write theory_*.png for the parts measured here")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of every pattern and probe")
    p.add_argument("--boots", type=positive_int, default=1000, help="bootstrap redraws of the fits")
    add_engine_arguments(p)
    p.set_defaults(func=run_cmd)


def points_from_args(args) -> list:
    """The theory points the command line asks for (ValueError for a bad combination)."""
    from uhn.models.experiments import theory
    if args.scale == "figures":
        return theory.figure_points(seed=args.seed, parts=tuple(args.parts or theory.PARTS))
    return theory.study_points(args.scale, parts=tuple(args.parts or theory.PARTS), seed=args.seed)


def run_cmd(args) -> int:
    from uhn.models.experiments import sweep, theory, theory_report
    from uhn.models.experiments.store import stored_results
    check_out_file(args.out)
    if args.figures_dir is not None:
        check_out_dir(args.figures_dir, "--figures-dir")
    points = points_from_args(args)
    stored_results(args.out)  # an unreadable store fails before anything runs
    note(f"uhn theory: {len(points)} points ({args.scale}) {engine_description(args)} -> {args.out}")
    t0 = time.perf_counter()
    dynamics = None
    if any(p.dynamics for p in points):   # the fixed points of the continuous-time network too
        from uhn.dynamics.analysis.basin_retrieval import softmax_fixed_point as dynamics
    cb, close = sweep_progress_bar("theory")
    try:
        with sweep.connect(args.workers, args.scheduler) as engine:
            rows = theory.run(points, args.out, engine=engine, resume=args.resume, progress=cb,
                              dynamics=dynamics)
    except KeyboardInterrupt:
        close()
        return interrupted(args.out)
    finally:
        close()
    print(f"== theory: {len(rows)} points ({time.perf_counter() - t0:.1f} s) -> {args.out}")
    print(theory_report.report(rows, boots=args.boots, seed=args.seed))
    failed = [r for r in rows if sweep.is_failed(r)]
    if failed:
        note(f"{len(failed)} points failed (their error is stored in {args.out})")
    if args.figures_dir is not None:
        for path in theory_report.make_theory_figures(rows, args.figures_dir, boots=args.boots,
                                                      seed=args.seed):
            print(f"wrote {path}")
    return 0
