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
import inspect
import sys
import time
from pathlib import Path

from uhn.cli import fail, finite_float, nonnegative_int, note, positive_int

DEFAULT_OUT = Path("results") / "capacity.jsonl"

#: smaller grids for --quick (seconds instead of a minute): 2 blocks, 4 N, 3 levels
QUICK = {"blocks": 2, "n_memories": (2, 10, 50, 100), "levels": (0.1, 0.5, 0.9),
         "noise_levels": (0.1, 0.5, 1.0), "thresholds": (10.0, 50.0, 100.0)}

#: the capacity figures ``uhn figures`` regenerates: (file stem, experiment, keyword overrides)
FIGURES = (
    ("capacity_similarity_mnist", "similarity_vs_n", {"dataset": "mnist"}),
    ("capacity_similarity_mnist_halved", "similarity_vs_n",
     {"dataset": "mnist", "corruption": "mask_bottom", "level": 0.5}),
    ("capacity_similarity_natural", "similarity_vs_n", {"dataset": "natural"}),
    ("capacity_separation_mnist", "separation_vs_n", {"dataset": "mnist"}),
    ("capacity_separation_natural", "separation_vs_n", {"dataset": "natural"}),
    ("capacity_noise_mnist", "noise", {"dataset": "mnist"}),
    ("capacity_mask_fraction_mnist", "mask_fraction", {"dataset": "mnist"}),
    ("capacity_random_pixels_mnist", "random_pixels", {"dataset": "mnist"}),
    ("capacity_border_mnist", "border", {"dataset": "mnist"}),
    ("capacity_threshold_mnist", "threshold", {"dataset": "mnist"}),
    ("capacity_hetero_mnist", "hetero", {"dataset": "mnist"}),
)


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
    engine = p.add_mutually_exclusive_group()
    engine.add_argument("--workers", type=positive_int, default=None,
                        help="measure on a dask LocalCluster of this many worker processes")
    engine.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                        help="measure on the dask cluster of this running scheduler")
    p.set_defaults(func=run_cmd)


# ----------------------------------------------------------------------------------------------

def experiment_kwargs(name: str, quick: bool = False, **overrides) -> dict:
    """Keyword arguments for uhn.models.experiments.capacity.EXPERIMENTS[name]: --quick grids, then overrides
    (None values dropped, parameters the experiment does not take ignored)."""
    from uhn.models.experiments.capacity import EXPERIMENTS
    accepted = inspect.signature(EXPERIMENTS[name]).parameters
    kw = {}
    if quick:
        kw["blocks"] = QUICK["blocks"]
        if name in ("similarity_vs_n", "separation_vs_n", "hetero"):
            kw["n_memories"] = QUICK["n_memories"]
        if name in ("mask_fraction", "random_pixels", "border"):
            kw["levels"] = QUICK["levels"]
        if name == "noise":
            kw["levels"] = QUICK["noise_levels"]
        if name == "threshold":
            kw["thresholds"] = QUICK["thresholds"]
    for k, v in overrides.items():
        if v is None or k not in accepted:
            continue
        if k == "n_memories" and name not in ("similarity_vs_n", "separation_vs_n", "hetero"):
            v = v[0] if isinstance(v, (list, tuple)) else v
        kw[k] = v
    return kw


def figure_stem(name: str, dataset: str) -> str:
    return f"capacity_{name}_{dataset}"


def _describe(row: dict) -> str:
    """Short description of a finished capacity row for the progress bar."""
    frac = row.get("fraction_correct")
    return f"N={row['n_memories']} {row['similarity']} {'failed' if frac is None else f'{frac:.2f}'}"


def _progress_bar(desc: str, threads: int = 1):
    """uhn.models.experiments.sweep.progress_bar (points done, failed, running) as the
    ``progress(done, total, row, computed)`` callback of uhn.models.experiments.capacity.run; returns (cb, close).
    ``threads``: the engine's worker threads; running = min(points left, threads)."""
    from uhn.models.experiments import sweep
    draw, close = sweep.progress_bar(desc, _describe)
    failed = [0]

    def cb(done, total, row, computed):
        failed[0] += sweep.is_failed(row)
        draw(sweep.Progress(done, total, failed[0], min(total - done, threads), row, computed))

    return cb, close


def format_table(summaries, name: str) -> str:
    """Plain-text table: one row per x value, one column per line, mean fraction correct."""
    from uhn.models.experiments.capacity import AXES, table
    xs, labels, grid = table(summaries, name)
    x_param = AXES[name][0]
    width = max(9, *(len(str(lab)) for lab in labels))
    head = f"{x_param:>11} " + " ".join(f"{str(lab):>{width}}" for lab in labels)
    lines = [head, "-" * len(head)]
    for x, row in zip(xs, grid):
        lines.append(f"{x:>11g} " + " ".join(f"{v:>{width}.3f}" for v in row))
    return "\n".join(lines)


def run_experiment(name: str, kwargs: dict, out: Path, resume: bool = True, progress=None,
                   figure: Path | None = None, pdf: bool = False, engine="local"):
    """Points of one experiment -> stored rows -> optional figure. Returns (rows, figure paths).
    ``engine``: "local" or a distributed.Client (uhn.models.experiments.sweep.connect)."""
    from uhn.models.experiments.capacity import experiment, run
    points = experiment(name, **kwargs)
    rows = run(points, out, resume=resume, progress=progress, engine=engine)
    written = []
    if figure is not None:
        import matplotlib.pyplot as plt
        from uhn.models.plotting import plot_capacity, save_figure
        fig = plot_capacity(rows, name)
        try:
            written = save_figure(fig, figure, pdf=pdf)
        finally:
            plt.close(fig)
    return rows, written


def make_capacity_figures(out_dir, quick: bool = False, progress_bar=None, results_path=None,
                          pdf: bool = False) -> list[Path]:
    """Regenerate every capacity figure of :data:`FIGURES` into out_dir; return the paths written.

    Results are kept in ``results_path`` (default results/capacity.jsonl, or
    results/capacity_quick.jsonl with ``quick``), so a second call only replots.
    ``progress_bar(desc) -> (progress, close)`` makes one progress callback per figure (each
    experiment has its own number of points), e.g. :func:`_progress_bar`; ``progress`` is passed to
    uhn.models.experiments.capacity.run as ``progress(done, total, row, computed)``. Full set measured at about
    2 minutes from an empty store on a 2-core machine (docs/reproducing.md).
    """
    out_dir = Path(out_dir)
    if results_path is None:
        results_path = DEFAULT_OUT.with_name("capacity_quick.jsonl") if quick else DEFAULT_OUT
    written = []
    for stem, name, overrides in FIGURES:
        kw = experiment_kwargs(name, quick=quick, **overrides)
        cb, close = progress_bar(stem) if progress_bar is not None else (None, None)
        try:
            _, paths = run_experiment(name, kw, Path(results_path), progress=cb,
                                      figure=out_dir / f"{stem}.png", pdf=pdf)
        finally:
            if close is not None:
                close()
        written.extend(paths)
    return written


def check_plan(names, kwargs: dict, out: Path) -> None:
    """Raise ValueError (with a message for the user) before anything runs: a bad value or typo
    in any experiment's points (uhn.models.experiments.capacity.validate) or an unreadable results file."""
    from uhn.models.experiments.capacity import experiment, stored_results, validate
    for name in names:
        for point in dict.fromkeys(experiment(name, **kwargs[name])):
            validate(point)
    stored_results(out)


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
    kwargs = {name: experiment_kwargs(name, quick=args.quick, **overrides) for name in names}
    try:
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
    from uhn.models.experiments.capacity import summarise
    t_all = time.perf_counter()
    for name in names:
        kw = kwargs[name]
        figure = args.figure
        if figure is None and args.figures_dir is not None:
            figure = args.figures_dir / f"{figure_stem(name, args.dataset)}.png"
        cb, close = _progress_bar(name, threads)
        t0 = time.perf_counter()
        try:
            rows, written = run_experiment(name, kw, args.out, resume=args.resume, progress=cb,
                                           figure=figure, pdf=args.pdf, engine=engine)
        except KeyboardInterrupt:
            close()
            from uhn.models.experiments.capacity import load_results
            n = len(load_results(args.out))
            print(f"\ninterrupted during {name}: every finished point is stored in {args.out} "
                  f"({n} rows). Run the same command again to resume "
                  f"(stored points are not recomputed).", file=sys.stderr)
            return 130
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
