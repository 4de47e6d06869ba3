"""``uhn capacity``: run the paper's capacity experiments into a resumable results store.

    uhn capacity --experiment similarity_vs_n --dataset mnist --figure figures/sim.png
    uhn capacity --experiment separation_vs_n --n-memories 10 100 1000 --blocks 5
    uhn capacity --all --quick --figures-dir figures/quick
    uhn capacity --all --workers 2                      on a dask LocalCluster of 2 processes
    uhn capacity --all --scheduler tcp://HOST:8786      on a running dask cluster

Results go to a JSON-lines file (default results/capacity.jsonl): as points finish, they are
merged into it under a lock (<file>.lock) and it is rewritten atomically, so several runs may
share one file at once; rerunning the same command resumes (stored points are not recomputed).
Ctrl-C keeps every finished point. With --workers or --scheduler the points are measured on a dask
cluster (uhn.models.experiments.sweep): the workers only measure, this process alone writes the results file, and
the rows are the same, bit for bit, as an in-process run's. A summary table (mean fraction correct over blocks) is printed
at the end of each experiment, and points whose measurement failed are counted on stderr. A bad
value (or an unreadable results file) stops the command before anything runs, with one
"error:" line and exit status 2.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from uhn.cli import (add_engine_arguments, capacity_progress_bar, fail, finite_float, interrupted,
    nonnegative_int, note, positive_int)
from uhn.models.experiments.figures import DEFAULT_RESULTS as DEFAULT_OUT
from uhn.models.experiments.figures import QUICK

def register(sub) -> None:
    from uhn.models.experiments.capacity import EXPERIMENTS, THRESHOLD_SCALINGS
    from uhn.models.corruption import KINDS
    p = sub.add_parser("capacity", help="run the paper's capacity experiments (resumable) and plot them",
                       description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--experiment", nargs="+", choices=sorted(EXPERIMENTS), metavar="NAME",
                       help=f"one or more of: {', '.join(EXPERIMENTS)}")
    which.add_argument("--all", action="store_true", help="every experiment")
    p.add_argument("--dataset", default="mnist", help="mnist (default), digits, natural or lfw")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results file (default {DEFAULT_OUT})")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse stored points (default); --no-resume recomputes and replaces them")
    p.add_argument("--blocks", type=positive_int, default=None, help="disjoint blocks per curve point (default 5)")
    p.add_argument("--n-memories", type=positive_int, nargs="+", default=None,
                   help="N list (N sweeps) or the single N (level / threshold sweeps)")
    p.add_argument("--levels", type=finite_float, nargs="+", default=None, help="corruption levels of a level sweep")
    p.add_argument("--thresholds", type=finite_float, nargs="+", default=None, help="thresholds of the threshold sweep")
    p.add_argument("--similarities", nargs="+", default=None, help="similarity names to compare")
    p.add_argument("--corruption", choices=KINDS, default=None,
                   help="probe of the N / threshold sweeps (default: the experiment's)")
    p.add_argument("--level", type=finite_float, default=None, help="level of --corruption")
    p.add_argument("--threshold", type=finite_float, default=None, help="correctness threshold (default 50)")
    p.add_argument("--threshold-scaling", choices=THRESHOLD_SCALINGS, default=None,
                   help="how the threshold scales with the image size (default per_value)")
    p.add_argument("--convention", choices=("standard", "paper_code"), default=None,
                   help="similarity convention (default: the experiment's; separation_vs_n and "
                        "hetero default to paper_code)")
    p.add_argument("--seed", type=nonnegative_int, default=None,
                   help="seed of the dataset shuffle and the corruptions (default 0)")
    p.add_argument("--quick", action="store_true",
                   help=f"small grids for a smoke run ({QUICK['blocks']} blocks, N in "
                        f"{QUICK['n_memories']}, 3 levels)")
    p.add_argument("--figure", type=Path, default=None, help="write the figure here (one experiment)")
    p.add_argument("--figures-dir", type=Path, default=None,
                   help="write capacity_<experiment>_<dataset>.png here for every experiment run")
    p.add_argument("--pdf", action="store_true", help="also write PDF figures")
    add_engine_arguments(p)
    p.set_defaults(func=run_cmd)


# ----------------------------------------------------------------------------------------------

def format_table(summaries, name: str) -> str:
    """Plain-text table: one row per x value, one column per line, mean fraction correct."""
    from uhn.models.experiments.capacity import AXES
    from uhn.models.experiments.summary import table
    xs, labels, grid = table(summaries, name)
    x_param = AXES[name][0]
    width = max(9, *(len(str(lab)) for lab in labels))
    head = f"{x_param:>11} " + " ".join(f"{str(lab):>{width}}" for lab in labels)
    lines = [head, "-" * len(head)]
    for x, row in zip(xs, grid):
        lines.append(f"{x:>11g} " + " ".join(f"{v:>{width}.3f}" for v in row))
    return "\n".join(lines)


def check_plan(names, kwargs: dict, out: Path) -> None:
    """Raise ValueError (with a message for the user) before anything runs: a bad value or typo
    in any experiment's points (uhn.models.experiments.capacity.validate) or an unreadable results file."""
    from uhn.models.experiments.capacity import experiment, validate
    from uhn.models.experiments.store import stored_results
    for name in names:
        for point in dict.fromkeys(experiment(name, **kwargs[name])):
            validate(point)
    stored_results(out)


def check_outputs(args) -> None:
    """ValueError (one line) before anything runs if the results file, --figure or --figures-dir
    cannot be written (uhn.cli.check_out_file / check_out_dir)."""
    from uhn.cli import check_out_dir, check_out_file
    check_out_file(args.out)
    if args.figure is not None:
        check_out_file(args.figure, "--figure")
    if args.figures_dir is not None:
        check_out_dir(args.figures_dir, "--figures-dir")


def failure_report(rows) -> str | None:
    """``k of n points failed ...; first: message`` for rows whose measurement raised, or None."""
    failed = [r for r in rows if r.get("fraction_correct") is None]
    if not failed:
        return None
    return (f"{len(failed)} of {len(rows)} points failed (stored with their error, not retried "
            f"on resume; --no-resume recomputes); first: {failed[0].get('error', 'no message')}")


def run_cmd(args) -> int:
    from uhn.models.experiments.capacity import EXPERIMENTS
    names = list(EXPERIMENTS) if args.all else list(dict.fromkeys(args.experiment))
    if args.figure is not None and len(names) > 1:
        return fail("capacity", "--figure takes one experiment; use --figures-dir for several")
    if args.figure is not None:
        from uhn.models.plotting import figure_path
        try:
            figure_path(args.figure)        # a bad suffix is refused now, not after the sweep
        except ValueError as err:
            return fail("capacity", str(err))
    overrides = dict(dataset=args.dataset, blocks=args.blocks, n_memories=args.n_memories,
                     levels=args.levels, thresholds=args.thresholds,
                     similarities=args.similarities, corruption=args.corruption, level=args.level,
                     threshold=args.threshold, threshold_scaling=args.threshold_scaling,
                     convention=args.convention, seed=args.seed)
    from uhn.models.experiments.figures import experiment_kwargs
    kwargs = {name: experiment_kwargs(name, quick=args.quick, **overrides) for name in names}
    try:
        check_outputs(args)
        check_plan(names, kwargs, args.out)
    except ValueError as err:
        return fail("capacity", str(err))
    from uhn.models.experiments import sweep
    with sweep.connect(args.workers, args.scheduler) as engine:
        local = isinstance(engine, str)
        threads = 1 if local else max(1, sum(engine.nthreads().values()))
        if not local:
            note(f"uhn capacity: measuring on {threads} dask worker threads "
                 f"({'LocalCluster' if args.workers else args.scheduler})")
        rc = _run_experiments(args, names, kwargs, engine, threads)
    return rc


def _run_experiments(args, names, kwargs, engine, threads) -> int:
    from uhn.models.experiments import figures
    from uhn.models.experiments.summary import summarise
    t_all = time.perf_counter()
    for name in names:
        kw = kwargs[name]
        figure = args.figure
        if figure is None and args.figures_dir is not None:
            figure = args.figures_dir / f"{figures.figure_stem(name, args.dataset)}.png"
        cb, close = capacity_progress_bar(name, threads)
        t0 = time.perf_counter()
        try:
            rows, written = figures.run_experiment(name, kw, args.out, resume=args.resume, progress=cb,
                                           figure=figure, pdf=args.pdf, engine=engine)
        except KeyboardInterrupt:
            close()
            return interrupted(args.out, name)
        finally:
            close()
        print(f"\n== {name} on {args.dataset}: {len(rows)} points "
              f"({time.perf_counter() - t0:.1f} s) -> {args.out}")
        print(format_table(summarise(rows), name))
        for path in written:
            print(f"  figure: {path}")
        report = failure_report(rows)
        if report is not None:
            print(f"uhn capacity: {name}: {report}", file=sys.stderr)
    if len(names) > 1:
        print(f"\nall {len(names)} experiments: {time.perf_counter() - t_all:.1f} s")
    return 0
