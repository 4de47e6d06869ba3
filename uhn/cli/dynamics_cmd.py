"""``uhn dynamics``: integrate corrupted queries, verify the energy, say which retrieved and why not.

    uhn dynamics --dataset digits --n-memories 20 --similarity squared_euclidean --separation softmax \\
                 --beta 5 --corruption gaussian --level 0.3 --n-queries 8 --t-end 50 --out run1

The defaults retrieve every query: 20 sklearn digits stored with squared-Euclidean similarity and
softmax memory neurons (beta = 5), each query a digit with Gaussian noise (std 0.3) held on as an
input current I = q (``--input-mode clamped``). Prints verify_energy(...).summary(), which
queries were retrieved and, for the others, why not (uhn.dynamics.analysis.diagnose: not converged, beta too
small, mixture state, spurious attractor), and the fixed point vs single-shot table. With
``--out DIR`` the trajectory is kept as DIR/trajectory.nc (uhn.dynamics.io) beside its figures.
Exit status: 0, 1 if the energy check fails, 2 on bad input or an integration that could not finish.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

RATES = {"linear": "quadratic", "tanh": "log_cosh", "sigmoid": "softplus", "spherical": "spherical"}


def register(sub) -> None:
    from uhn.dynamics.analysis.fixed_points import READOUTS
    from uhn.dynamics.integrate import METHODS
    from uhn.cli import (finite_float, nonnegative_float, nonnegative_int, positive_float,
        positive_int)
    p = sub.add_parser("dynamics", help="integrate the Krotov-Hopfield dynamics, check the energy, "
                       "say which queries were retrieved and why not",
                       description=__doc__.split("\n\n")[0], epilog="\n\n".join(__doc__.split("\n\n")[2:]))
    p.add_argument("--dataset", default="digits", help="uhn.models.data dataset (digits, mnist, ...)")
    p.add_argument("--n-memories", type=positive_int, default=20, help="stored patterns N")
    p.add_argument("--similarity", default="squared_euclidean",
                   help="differentiable similarity (dot, cosine, euclidean, squared_euclidean, "
                        "manhattan, minkowski, kl, reverse_kl) (default: squared_euclidean; "
                        "the API's default, Memory / Network, is dot)")
    p.add_argument("--eps", type=nonnegative_float, default=None,
                   help="smoothing of euclidean / manhattan / minkowski (manhattan defaults to 0.05)")
    p.add_argument("--p", type=positive_float, default=3.0, help="minkowski exponent")
    p.add_argument("--separation", default="softmax", choices=["softmax", "polynomial", "identity", "exp"],
                   help="memory-layer activation f = dL_h/dh")
    p.add_argument("--beta", type=finite_float, default=5.0, help="softmax / exp inverse temperature")
    p.add_argument("--degree", type=finite_float, default=3.0, help="polynomial degree n")
    p.add_argument("--rates", default=None, choices=sorted(RATES),
                   help="feature rates g = dL_v/dv (default linear; sigmoid for kl/reverse_kl)")
    p.add_argument("--corruption", default="gaussian", help="uhn.models.corruption kind of the queries")
    p.add_argument("--level", type=nonnegative_float, default=0.3, help="corruption level")
    p.add_argument("--n-queries", type=positive_int, default=8,
                   help="queries, made from memories 0, 1, ... (at most N)")
    p.add_argument("--t-end", type=positive_float, default=50.0, help="integration time (tau_v units)")
    p.add_argument("--tau-v", type=positive_float, default=1.0, help="feature time constant")
    p.add_argument("--tau-h", type=positive_float, default=0.1, help="memory time constant")
    p.add_argument("--input-mode", default="clamped", choices=["initial", "clamped"],
                   help="the query as v(0) with I = 0 ('initial') or also held on as an input "
                        "current I = q ('clamped') (default: clamped; the API's default, "
                        "integrate's input_mode, is initial)")
    p.add_argument("--readout", default="memory", choices=READOUTS,
                   help="what the fixed point vs single shot table compares: the memory layer's "
                        "P^T f(h*) ('memory'), v* ('v'), v* - I ('v_minus_I'), or 'auto' "
                        "(default: memory; the API's default, compare's readout, is auto)")
    p.add_argument("--adiabatic", action="store_true", help="integrate the tau_h -> 0 reduced system")
    p.add_argument("--method", default="RK45", choices=METHODS,
                   help="a solve_ivp method, or RK45-batched: a step size per query, each query "
                        "stopping at its own fixed point (faster for many queries)")
    p.add_argument("--max-nfev", type=positive_int, default=100_000,
                   help="give up after this many right-hand-side evaluations")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="dataset subset and corruption seed")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for trajectory.nc and the figures (nothing is written without it)")
    p.set_defaults(func=run)


def _similarity(args):
    from uhn.models.similarity import get_similarity
    params = {}
    if args.similarity == "minkowski":
        params["p"] = args.p
    if args.similarity in ("euclidean", "manhattan", "minkowski"):
        eps = args.eps if args.eps is not None else (0.05 if args.similarity == "manhattan" else 0.0)
        params["eps"] = eps
    return get_similarity(args.similarity, **params)


def _separation(args):
    from uhn.models.separation import get_separation
    if args.separation in ("softmax", "exp"):
        return get_separation(args.separation, beta=args.beta)
    if args.separation == "polynomial":
        return get_separation("polynomial", n=args.degree)
    return get_separation(args.separation)


#: options whose command-line default differs from the API's: (CLI default, API default, where)
API_DEFAULTS = {"similarity": ("squared_euclidean", "dot", "Memory / Network"),
                "input_mode": ("clamped", "initial", "integrate"),
                "readout": ("memory", "auto", "compare")}


def cli_defaults_note(args) -> str:
    """uhn.cli.defaults_note of :data:`API_DEFAULTS`: the header line naming them, or ''."""
    from uhn.cli import defaults_note
    return defaults_note(args, API_DEFAULTS)


def _figures(traj, report, net, ds, targets) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    from uhn.dynamics import plotting as P
    figs = {"energy": P.plot_energy(traj, report), "memory_activations": P.plot_memory_activations(traj, net, 0)}
    if len(ds.image_shape) in (2, 3):
        figs["snapshots"] = P.plot_retrieval_snapshots(traj, ds.image_shape, 0, n=6, target=ds.X[targets[0]])
    return figs


def run(args: argparse.Namespace) -> int:
    from uhn.dynamics import lagrangians as L
    from uhn.dynamics.analysis.diagnose import diagnose, summary
    from uhn.dynamics.analysis.energy import verify_energy
    from uhn.dynamics.analysis.fixed_points import compare_table, format_table
    from uhn.dynamics.integrate import integrate
    from uhn.dynamics.network import Network
    from uhn.models import Memory
    from uhn.models.corruption import corrupt
    from uhn.models.data import load_dataset

    from uhn.cli import check_out_dir, fail, note, save_outputs

    if args.out is not None:
        check_out_dir(args.out)
    sim, sep = _similarity(args), _separation(args)   # bad names stop here, before any loading
    if sim.nonpositive and sep.zero_at_nonpositive:
        raise ValueError(f"--separation {args.separation} weights nothing on --similarity "
                         f"{args.similarity}: its scores are all <= 0 and the rectified polynomial "
                         f"maps them to 0; use --similarity dot (or cosine), or --separation softmax")
    note(f"loading {args.n_memories} {args.dataset} images ...")
    ds = load_dataset(args.dataset, n=args.n_memories, seed=args.seed)
    M = ds.X
    nq = min(args.n_queries, ds.n)
    targets = np.arange(nq)
    Q = corrupt(M[targets], args.corruption, args.level, ds.image_shape, seed=args.seed + 1)
    rates = args.rates or ("sigmoid" if args.similarity in ("kl", "reverse_kl") else "linear")
    L_v = getattr(L, RATES[rates])()
    net = Network(Memory(M, similarity=sim, separation=sep), L_v=L_v, tau_v=args.tau_v, tau_h=args.tau_h)
    mode = args.input_mode
    print(f"{net!r}\ndataset {ds.name}: {nq} queries, corruption {args.corruption}({args.level:g}), "
          f"input {mode}, {'adiabatic' if args.adiabatic else 'full'} system, {args.method}")
    differ = cli_defaults_note(args)
    if differ:
        print(differ)
    note(f"integrating {nq} queries to t = {args.t_end:g} with {args.method} ...")
    t0 = time.perf_counter()
    try:
        traj = integrate(net, Q, args.t_end, method=args.method, adiabatic=args.adiabatic,
                         input_mode=mode, max_nfev=args.max_nfev, progress=sys.stderr.isatty())
    except RuntimeError as err:
        return fail("dynamics", f"integration failed: {err}")
    per_query = traj.params.get("nfev_per_query")
    nfev = (f"median {int(np.median(per_query))} RHS evaluations per query" if per_query
            else f"{traj.params['nfev']} RHS calls on the whole batch")
    print(f"integrated to t={traj.t[-1]:.4g} in {time.perf_counter() - t0:.2f} s ({nfev}); "
          f"converged {int(traj.converged.sum())}/{nq}")
    report = verify_energy(net, traj)
    print(report.summary())
    print(summary(diagnose(net, traj, Q, targets)))
    note("comparing fixed points with single-shot retrieval (integrates again) ...")
    table = compare_table(M, targets, Q, [(sim, sep)], L_v=L_v, tau_v=args.tau_v, tau_h=args.tau_h,
                          t_end=args.t_end, method=args.method, adiabatic=args.adiabatic,
                          input_mode=mode, readout=args.readout, max_nfev=args.max_nfev)
    print("\nfixed point vs single shot (mean L2 distances; fractions of queries):")
    print(format_table(table))
    if args.out is not None:
        for path in save_outputs(args.out, {"trajectory": traj}, _figures(traj, report, net, ds, targets)):
            print(f"wrote {path}")
    return 0 if report.passed else 1
