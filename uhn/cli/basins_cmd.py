"""``uhn basins``: basins of attraction, P(retrieved) against the corruption level and the radius at
which it falls to 1/2.

    uhn basins --dim 101 --n-memories 1                     one pattern: radius D/2 (bit flips)
    uhn basins --dim 200 --n-memories 20 --retrievals single async sync
    uhn basins --mnist --figure figures/basins_mnist.png    single shot vs iterated, per similarity
    uhn basins --mnist --retrievals single dynamics         single shot vs the dynamics' fixed point
    uhn basins --mnist --workers 2                          on a dask LocalCluster

Random bipolar patterns are corrupted by flipping exactly L bits (levels: bit counts) and count as
retrieved when sign(z) equals the pattern; MNIST digits (--mnist) by a uhn.corrupt kind and level
(default Gaussian noise std) and count as retrieved when sum (x - z)^2 <= threshold D / 784
(uhn.models.experiments.basins). Rows go to a JSON-lines store (default results/basins.jsonl);
rerunning the same command resumes. The table gives each curve's radius with the std and 95 %
interval of a binomial bootstrap.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from uhn.cli import (add_engine_arguments, engine_description, fail, finite_float, interrupted,
    nonnegative_float, nonnegative_int, note, positive_float, positive_int)

DEFAULT_OUT = Path("results") / "basins.jsonl"


def register(sub) -> None:
    from uhn.models.experiments.basins import RETRIEVALS
    p = sub.add_parser("basins", help="basins of attraction: P(retrieved) vs corruption, radius "
                                      "at 1/2",
                       description=__doc__.split("\n\n")[0],
                       epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results store (JSON lines)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse stored points; --no-resume recomputes and replaces them")
    p.add_argument("--mnist", action="store_true",
                   help="the MNIST comparison: every similarity, single shot vs iterated")
    p.add_argument("--dim", type=positive_int, default=100, help="D of the random patterns")
    p.add_argument("--n-memories", type=positive_int, default=None,
                   help="patterns stored (default 10 random, 100 MNIST)")
    p.add_argument("--network", choices=("classical", "memory"), default="classical",
                   help="classical Hopfield (dot, identity, sign) or a Memory of "
                        "--similarity/--separation (random patterns)")
    p.add_argument("--similarities", nargs="+", default=None, metavar="NAME",
                   help="similarities (network memory; --mnist default: euclidean manhattan dot "
                        "cosine)")
    p.add_argument("--separation", default=None,
                   help="separation name (default identity; --mnist softmax)")
    p.add_argument("--sep-param", type=finite_float, default=None,
                   help="its parameter (softmax beta, polynomial n, ...; --mnist default 1)")
    p.add_argument("--retrievals", nargs="+", choices=RETRIEVALS, default=None,
                   help="retrieval rules (default single iterate; async/sync: classical only; "
                        "dynamics: the fixed point of uhn.integrate, network memory / --mnist)")
    p.add_argument("--corruption", default="gaussian",
                   help="--mnist: a uhn.corrupt kind (gaussian, mask_bottom, random_pixels, ...)")
    p.add_argument("--levels", type=nonnegative_float, nargs="+", default=None,
                   help="corruption levels (bit counts for random patterns; default every "
                        "--step bits from 0 to D)")
    p.add_argument("--step", type=positive_int, default=None,
                   help="bit-count step of the default levels (default D // 25)")
    p.add_argument("--trials", type=positive_int, default=None,
                   help="corrupted queries per stored pattern (default 20; --mnist 5)")
    p.add_argument("--max-steps", type=positive_int, default=100,
                   help="bound on iterations / update sweeps")
    p.add_argument("--threshold", type=positive_float, default=50.0,
                   help="MNIST criterion on sum (x - z)^2 for a 784-value image")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of patterns and corruptions")
    p.add_argument("--boots", type=positive_int, default=2000, help="bootstrap redraws")
    add_engine_arguments(p)
    p.add_argument("--figure", type=Path, default=None, help="write the figure here (PNG)")
    p.set_defaults(func=run_cmd)


def points_from_args(args):
    """The basin points the command line asks for (ValueError for a bad value)."""
    from uhn.models.experiments import basins
    seed = args.seed
    retrievals = tuple(args.retrievals or ("single", "iterate"))
    if args.mnist:
        kw = {"retrievals": retrievals, "corruption": args.corruption, "seed": seed,
              "max_steps": args.max_steps}
        for name, key in (("similarities", "similarities"), ("levels", "levels"),
                          ("n_memories", "n_memories"), ("trials", "trials"),
                          ("separation", "separation"), ("sep_param", "sep_param")):
            if getattr(args, name) is not None:
                kw[key] = tuple(getattr(args, name)) if name in ("similarities", "levels") \
                    else getattr(args, name)
        return [replace(p, threshold=args.threshold) for p in basins.mnist_points(**kw)]
    levels = args.levels or basins.flips_levels(args.dim, args.step or max(1, args.dim // 25))
    base = basins.BasinPoint(dim=args.dim, n_memories=args.n_memories or 10,
                             network=args.network, trials=args.trials or 20,
                             max_steps=args.max_steps, seed=seed)
    if args.network == "classical":
        if args.similarities or args.separation:
            raise ValueError("--similarities/--separation choose a --network memory")
        lines = [{"retrieval": r} for r in retrievals]
    else:
        lines = [{"similarity": s, "separation": args.separation or "identity",
                  "sep_param": args.sep_param, "retrieval": r}
                 for s in (args.similarities or ("dot",)) for r in retrievals]
    return basins.grid(base, levels, lines)


def run_cmd(args) -> int:
    from uhn.cli import check_out_file
    from uhn.models.experiments import basins, sweep
    from uhn.models.experiments.store import stored_results
    try:
        if args.figure is not None:
            if args.figure.suffix.lower() != ".png":
                raise ValueError(f"--figure must be a .png file, got {str(args.figure)!r}")
            check_out_file(args.figure, "--figure")
        check_out_file(args.out)
        points = points_from_args(args)
        stored_results(args.out)  # an unreadable store fails before anything runs
    except ValueError as err:
        return fail("basins", str(err))
    where = engine_description(args)
    note(f"uhn basins: {len(points)} points {where} -> {args.out}")
    t0 = time.perf_counter()
    cb, close = sweep.progress_bar("basins")
    try:
        retrievers = None
        if any(p.retrieval == "dynamics" for p in points):
            from uhn.dynamics.analysis.basin_retrieval import RETRIEVERS as retrievers
        with sweep.connect(args.workers, args.scheduler) as engine:
            rows = basins.run(points, args.out, engine=engine, resume=args.resume, progress=cb,
                              retrievers=retrievers)
    except KeyboardInterrupt:
        close()
        return interrupted(args.out)
    finally:
        close()
    curves = basins.curves(rows, boots=args.boots, seed=args.seed)
    unit = "corruption level" if args.mnist else "bits flipped"
    print(f"== basins: {len(rows)} points ({time.perf_counter() - t0:.1f} s) -> {args.out}; "
          f"radius = {unit} where P(retrieved) falls to 1/2 [bootstrap std, 95 %]")
    print(basins.format_table(curves))
    failed = [r for r in rows if sweep.is_failed(r)]
    if failed:
        print(f"{len(failed)} points failed, e.g. {failed[0]['error']}")
    if args.figure is not None:
        basins.plot(curves, args.figure, xlabel=unit)
        print(f"figure -> {args.figure}")
    return 0
