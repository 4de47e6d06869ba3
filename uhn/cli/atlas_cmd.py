"""``uhn atlas``: the dynamics atlas, similarity x (L_v, L_h) x beta x tau_h/tau_v x dataset.

    uhn atlas --figure figures/atlas_digits.png                 the full grid, in-process
    uhn atlas --quick --out results/atlas_quick.jsonl           a small grid (seconds)
    uhn atlas --workers 2                                       on a dask LocalCluster
    uhn atlas --scheduler tcp://HOST:8786                       on a running dask cluster

Each point integrates B corrupted queries and records the energy verdict, convergence and the time
to it, retrieval of the fixed point and of the memory-layer readout against the single-shot
output, and the largest Jacobian eigenvalue at the fixed points (uhn.dynamics.analysis.atlas). Rows go to a
JSON-lines results store (default results/atlas.jsonl) that the client alone writes, merging
under a lock; rerunning the same command resumes (stored points are not recomputed) and Ctrl-C
keeps every finished point. A point that fails (e.g. a stalled integration) is stored with its
error and the sweep goes on. A table goes to stdout; --figure draws the heat-map grid.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from uhn.cli import (add_engine_arguments, describe_atlas_row, engine_description, fail, finite_float,
    interrupted, note, positive_float, positive_int, sweep_progress_bar)

DEFAULT_OUT = Path("results") / "atlas.jsonl"

def register(sub) -> None:
    from uhn.dynamics.analysis.atlas import (FEATURE_LAGRANGIANS, FULL_BETAS, FULL_TAU_RATIOS,
        MEMORY_LAGRANGIANS)
    p = sub.add_parser("atlas", help="sweep similarity x Lagrangians x beta x tau: where the "
                                     "energy holds and the dynamics retrieve",
                       description=__doc__.split("\n\n")[0],
                       epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results store (JSON lines)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse stored points; --no-resume recomputes and replaces them")
    p.add_argument("--quick", action="store_true", help="a small grid for a smoke run")
    p.add_argument("--similarities", nargs="+", default=None, metavar="NAME",
                   help="similarity names (default: dot, cosine [clamped], squared_euclidean, "
                        "euclidean, manhattan(eps=0.05), kl [softplus rates])")
    p.add_argument("--L-v", dest="L_v", nargs="+", choices=tuple(FEATURE_LAGRANGIANS), default=None,
                   help="feature Lagrangians (default quadratic log_cosh; kl uses softplus)")
    p.add_argument("--L-h", dest="L_h", nargs="+", choices=MEMORY_LAGRANGIANS, default=None,
                   help="memory Lagrangians (default all three)")
    p.add_argument("--betas", type=positive_float, nargs="+", default=None,
                   help=f"inverse temperatures of the memory layer (default {FULL_BETAS})")
    p.add_argument("--tau-ratios", type=positive_float, nargs="+", default=None,
                   help=f"tau_h / tau_v values (default {FULL_TAU_RATIOS})")
    p.add_argument("--datasets", nargs="+", default=["digits"], help="dataset names")
    p.add_argument("--n-memories", type=positive_int, default=None, help="memories stored (default 20)")
    p.add_argument("--n-queries", type=positive_int, default=None, help="queries B per point (default 8)")
    p.add_argument("--level", type=finite_float, default=None, help="Gaussian noise std of the queries (default 0.2)")
    add_engine_arguments(p)
    p.add_argument("--figure", type=Path, default=None, help="write the heat-map grid here (PNG)")
    p.set_defaults(func=run_cmd)


def points_from_args(args):
    """The atlas points the command line asks for (ValueError for a bad value)."""
    from uhn.dynamics.analysis.atlas import FULL_SIMILARITIES, grid, grid_options
    sims, kw = grid_options(args.quick)
    if args.similarities is not None:
        known = {s["similarity"]: s for s in FULL_SIMILARITIES}
        sims = [known.get(name, {"similarity": name}) for name in dict.fromkeys(args.similarities)]
    for name in ("L_v", "L_h"):
        if getattr(args, name) is not None:
            kw[name] = tuple(getattr(args, name))
    if args.betas is not None:
        kw["betas"] = tuple(args.betas)
    if args.tau_ratios is not None:
        kw["tau_ratios"] = tuple(args.tau_ratios)
    for name in ("n_memories", "n_queries", "level"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    return grid(sims, datasets=tuple(args.datasets), **kw)


def run_cmd(args) -> int:
    from uhn.dynamics.analysis import atlas
    from uhn.models.experiments import sweep
    from uhn.models.experiments.store import stored_results

    from uhn.cli import check_out_file
    if args.figure is not None:
        if args.figure.suffix.lower() != ".png":
            return fail("atlas", f"--figure must be a .png file, got {str(args.figure)!r}")
        check_out_file(args.figure, "--figure")
    check_out_file(args.out)
    try:
        points = points_from_args(args)
        for p in points:
            atlas.validate(p)
        stored_results(args.out)  # an unreadable store fails before anything runs
    except ValueError as err:
        return fail("atlas", str(err))
    where = engine_description(args)
    note(f"uhn atlas: {len(points)} points {where} -> {args.out}")
    t0 = time.perf_counter()
    cb, close = sweep_progress_bar("atlas", describe_atlas_row)
    try:
        with sweep.connect(args.workers, args.scheduler) as engine:
            rows = atlas.run(points, args.out, engine=engine, resume=args.resume, progress=cb)
    except KeyboardInterrupt:
        close()
        return interrupted(args.out)
    finally:
        close()
    print(f"== atlas: {len(rows)} points ({time.perf_counter() - t0:.1f} s) -> {args.out}")
    print(atlas.format_table(rows))
    failed = [r for r in rows if sweep.is_failed(r)]
    ok = [r for r in rows if not sweep.is_failed(r)]
    print(f"energy check passed at {sum(r['energy_passed'] for r in ok)} of {len(ok)} measured "
          f"points; {len(failed)} points failed")
    if args.figure is not None:
        import matplotlib.pyplot as plt

        from uhn.models.plotting import save_figure
        fig = atlas.plot(rows)
        try:
            for path in save_figure(fig, args.figure):
                print(f"  figure: {path}")
        finally:
            plt.close(fig)
    if failed:
        print(f"uhn atlas: {len(failed)} of {len(rows)} points failed (stored with their error, "
              f"not retried on resume; --no-resume recomputes); first: {failed[0]['error']}",
              file=sys.stderr)
    return 0

