"""``uhn dynamics``: integrate corrupted queries, verify the energy, compare with single shot.

    uhn dynamics --dataset digits --n-memories 20 --similarity dot --separation softmax --beta 5 \\
                 --corruption gaussian --level 0.3 --n-queries 8 --t-end 50 [--adiabatic]

Prints verify_energy(...).summary() and the fixed point vs single-shot table; exits 1 if the
energy check fails, 2 if the integration could not finish.
"""
from __future__ import annotations

import time

import numpy as np

RATES = {"linear": "quadratic", "tanh": "log_cosh", "sigmoid": "softplus", "spherical": "spherical"}


def register(sub) -> None:
    from dynamics.integrate import METHODS
    p = sub.add_parser("dynamics", help="integrate the Krotov-Hopfield dynamics, check the energy, "
                       "compare fixed points with single-shot retrieval",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="digits", help="models.data dataset (digits, mnist, ...)")
    p.add_argument("--n-memories", type=int, default=20)
    p.add_argument("--similarity", default="dot",
                   help="differentiable similarity (dot, cosine, euclidean, squared_euclidean, "
                        "manhattan, minkowski, kl, reverse_kl)")
    p.add_argument("--eps", type=float, default=None,
                   help="smoothing of euclidean / manhattan / minkowski (manhattan defaults to 0.05)")
    p.add_argument("--p", type=float, default=3.0, help="minkowski exponent")
    p.add_argument("--separation", default="softmax", choices=["softmax", "polynomial", "identity", "exp"])
    p.add_argument("--beta", type=float, default=5.0)
    p.add_argument("--degree", type=float, default=3.0)
    p.add_argument("--rates", default=None, choices=sorted(RATES),
                   help="feature rates g = dL_v/dv (default linear; sigmoid for kl/reverse_kl)")
    p.add_argument("--corruption", default="gaussian")
    p.add_argument("--level", type=float, default=0.3)
    p.add_argument("--n-queries", type=int, default=8)
    p.add_argument("--t-end", type=float, default=50.0)
    p.add_argument("--tau-v", type=float, default=1.0)
    p.add_argument("--tau-h", type=float, default=0.1)
    p.add_argument("--input-mode", default=None, choices=["initial", "clamped"],
                   help="query as v(0) (default) or as a clamped current I = q (default for cosine)")
    p.add_argument("--adiabatic", action="store_true", help="integrate the tau_h -> 0 reduced system")
    p.add_argument("--method", default="RK45", choices=METHODS,
                   help="a solve_ivp method, or RK45-batched: a step size per query, each query "
                        "stopping at its own fixed point (faster for many queries)")
    p.add_argument("--max-nfev", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def _similarity(args):
    from models.similarity import get_similarity
    params = {}
    if args.similarity == "minkowski":
        params["p"] = args.p
    if args.similarity in ("euclidean", "manhattan", "minkowski"):
        eps = args.eps if args.eps is not None else (0.05 if args.similarity == "manhattan" else 0.0)
        params["eps"] = eps
    return get_similarity(args.similarity, **params)


def _separation(args):
    from models.separation import get_separation
    if args.separation in ("softmax", "exp"):
        return get_separation(args.separation, beta=args.beta)
    if args.separation == "polynomial":
        return get_separation("polynomial", n=args.degree)
    return get_separation(args.separation)


def run(args) -> int:
    from dynamics import lagrangians as L
    from dynamics.energy import verify_energy
    from dynamics.fixed_points import compare_table, format_table
    from dynamics.integrate import integrate
    from dynamics.network import Network
    from models import Memory
    from models.corruption import corrupt
    from models.data import load_dataset

    ds = load_dataset(args.dataset, n=args.n_memories, seed=args.seed)
    M = ds.X
    nq = min(args.n_queries, args.n_memories)
    targets = np.arange(nq)
    Q = corrupt(M[targets], args.corruption, args.level, ds.image_shape, seed=args.seed + 1)
    sim, sep = _similarity(args), _separation(args)
    rates = args.rates or ("sigmoid" if args.similarity in ("kl", "reverse_kl") else "linear")
    L_v = getattr(L, RATES[rates])()
    mode = args.input_mode or ("clamped" if args.similarity == "cosine" else "initial")
    try:
        net = Network(Memory(M, similarity=sim, separation=sep), L_v=L_v, tau_v=args.tau_v,
                      tau_h=args.tau_h)
    except ValueError as err:
        print(f"error: {err}")
        return 2
    print(f"{net!r}\ndataset {ds.name}: {nq} queries, corruption {args.corruption}({args.level:g}), "
          f"input {mode}, {'adiabatic' if args.adiabatic else 'full'} system, {args.method}")
    t0 = time.perf_counter()
    try:
        traj = integrate(net, Q, args.t_end, method=args.method, adiabatic=args.adiabatic,
                         input_mode=mode, max_nfev=args.max_nfev)
    except (RuntimeError, FloatingPointError, OverflowError) as err:
        print(f"integration failed: {err}")
        return 2
    per_query = traj.params.get("nfev_per_query")
    nfev = (f"median {int(np.median(per_query))} RHS evaluations per query" if per_query
            else f"{traj.params['nfev']} RHS calls on the whole batch")
    print(f"integrated to t={traj.t[-1]:.4g} in {time.perf_counter() - t0:.2f} s ({nfev}); "
          f"converged {int(traj.converged.sum())}/{nq}")
    report = verify_energy(net, traj)
    print(report.summary())
    table = compare_table(M, targets, Q, [(sim, sep)], L_v=L_v, tau_v=args.tau_v, tau_h=args.tau_h,
                          t_end=args.t_end, method=args.method, adiabatic=args.adiabatic,
                          input_mode=mode, max_nfev=args.max_nfev)
    print("\nfixed point vs single shot (mean L2 distances; fractions of queries):")
    print(format_table(table))
    return 0 if report.passed else 1
