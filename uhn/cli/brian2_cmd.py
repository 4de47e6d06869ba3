"""``uhn brian2``: run one network and query in brian2 and in scipy's solve_ivp, and compare.

    uhn brian2 --similarity squared_euclidean --separation softmax --beta 5 --n-memories 20 \\
               --dataset digits --t-end 20 --target numpy --out b2run

The time step is chosen as run_brian2 chooses it (``--dt auto``: two short pilot runs estimate
the scheme's error constant and pick the step that keeps the run within ``--dt-tol`` of the exact
solution); ``--dt 0.01`` fixes it instead.

The defaults retrieve: 20 sklearn digits, squared-Euclidean similarity, softmax memory neurons
(beta = 5), the query memory 0 plus Gaussian noise (std 0.2) held on as an input current.
Prints the largest state difference at the common sample times, each trajectory's energy
monotonicity (largest increase between samples), the distance between the two fixed points, and
which memory the brian2 run retrieved or why it did not (uhn.dynamics.analysis.diagnose). With ``--out DIR``
both trajectories are kept (DIR/brian2.nc, DIR/scipy.nc; uhn.dynamics.io) beside the overlay figure.
Exit status: 0, 1 if an energy increases between samples, 2 on bad input.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

RATES = {"linear": "quadratic", "tanh": "log_cosh", "sigmoid": "softplus"}


def register(sub) -> None:
    from uhn.dynamics.backends.brian2_rate import (DEFAULT_DT_TOL, DEFAULT_TARGET, PROBE_EPS,
        PROBE_P, SCHEMES, TARGETS, supported_similarities)
    from uhn.cli import (finite_float, nonnegative_float, nonnegative_int, positive_float,
        positive_int)
    p = sub.add_parser("brian2", help="run a network in brian2 and in scipy and compare them",
                       description=__doc__.split("\n\n")[0], epilog="\n\n".join(__doc__.split("\n\n")[2:]))
    p.add_argument("--similarity", default="squared_euclidean", choices=supported_similarities(),
                   help="similarity S(g): every one the brian2 backend runs (its check_supported); "
                        "kl and reverse_kl need --rates sigmoid")
    p.add_argument("--eps", type=positive_float, default=PROBE_EPS,
                   help="smoothing of the euclidean, manhattan and minkowski distances (brian2 runs "
                        "them with eps > 0 only)")
    p.add_argument("--p", type=positive_float, default=PROBE_P, help="minkowski exponent")
    p.add_argument("--separation", default="softmax",
                   choices=["softmax", "polynomial", "identity", "exp"],
                   help="memory-layer activation f = dL_h/dh")
    p.add_argument("--beta", type=finite_float, default=5.0, help="softmax / exp inverse temperature")
    p.add_argument("--degree", type=finite_float, default=3.0, help="polynomial degree n")
    p.add_argument("--rates", default="linear", choices=sorted(RATES),
                   help="feature rates g: linear (g = v), tanh or sigmoid")
    p.add_argument("--n-memories", type=positive_int, default=20, help="stored patterns N")
    p.add_argument("--dataset", default="digits",
                   help="uhn.models.data dataset name (digits, mnist, ...) or 'random' (bipolar, D=64)")
    p.add_argument("--noise", type=nonnegative_float, default=0.2, help="std of the Gaussian noise "
                   "added to memory 0 to make the query")
    p.add_argument("--input-mode", default="clamped", choices=["initial", "clamped"],
                   help="the query as v(0) with I = 0 ('initial') or also held on as I = q ('clamped')")
    p.add_argument("--tau-v", type=positive_float, default=1.0, help="feature time constant, ms")
    p.add_argument("--tau-h", type=positive_float, default=0.1, help="memory time constant, ms")
    p.add_argument("--t-end", type=positive_float, default=20.0, help="simulated time, ms")
    p.add_argument("--dt", type=step_or_auto, default="auto",
                   help="brian2 time step, ms, or 'auto' (default, as run_brian2): the step two short "
                        "pilot runs find for --dt-tol")
    p.add_argument("--dt-tol", type=positive_float, default=DEFAULT_DT_TOL,
                   help=f"tolerance of --dt auto (uhn.dynamics.backends.brian2_rate.error_norm; default {DEFAULT_DT_TOL:g})")
    p.add_argument("--record-every", type=positive_int, default=1, help="record every this many steps")
    p.add_argument("--target", default=DEFAULT_TARGET, choices=TARGETS,
                   help="brian2 code generation target (cython compiles for about a minute on first use)")
    p.add_argument("--scheme", default="leapfrog", choices=SCHEMES, help="integration scheme")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="dataset subset and noise seed")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for brian2.nc, scipy.nc and the overlay figure (nothing is written without it)")
    p.set_defaults(func=run)


def step_or_auto(text: str):
    """argparse type of --dt: 'auto' or a finite float > 0."""
    from uhn.cli import positive_float
    if text == "auto":
        return text
    try:
        return positive_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a positive finite number or 'auto', got {text!r}") from None


def _memories(args):
    if args.dataset == "random":
        from uhn.models.data import random_patterns
        return random_patterns(args.n_memories, 64, seed=args.seed) / 8.0, "random bipolar / 8"
    from uhn.models.data import load_dataset
    ds = load_dataset(args.dataset, n=args.n_memories, seed=args.seed)
    return ds.X, ds.name


def _lagrangians(args):
    from uhn.dynamics import lagrangians as L
    L_v = getattr(L, RATES[args.rates])()
    L_h = {"softmax": lambda: L.log_sum_exp(args.beta),
           "polynomial": lambda: L.rectified_polynomial(args.degree),
           "identity": L.quadratic,
           "exp": lambda: L.exponential(args.beta)}[args.separation]()
    return L_v, L_h


def _similarity(args):
    """The similarity, smoothed by --eps where it is a distance (and with --p for minkowski)."""
    from uhn.models.similarity import get_similarity
    kw = {"euclidean": {"eps": args.eps}, "manhattan": {"eps": args.eps},
          "minkowski": {"eps": args.eps, "p": args.p}}.get(args.similarity, {})
    return get_similarity(args.similarity, **kw)


def _largest_increase(E):
    dE = np.diff(E, axis=0)
    k = int(np.argmax(dE.max(1))) if len(dE) else 0
    return (float(dE.max()) if len(dE) else 0.0), k


def run(args: argparse.Namespace) -> int:
    from uhn.dynamics.backends.brian2_rate import default_cache_dir, run_brian2
    from uhn.dynamics.analysis.compare import compare_trajectories
    from uhn.dynamics.analysis.diagnose import diagnose
    from uhn.dynamics.integrate import integrate
    from uhn.dynamics.network import Network

    from uhn.cli import check_out_dir, note, save_outputs

    if args.out is not None:
        check_out_dir(args.out)
    M, label = _memories(args)
    L_v, L_h = _lagrangians(args)
    net = Network(M, _similarity(args), L_v=L_v, L_h=L_h, tau_v=args.tau_v, tau_h=args.tau_h)
    rng = np.random.default_rng(args.seed)
    q = M[0] + args.noise * rng.standard_normal(M.shape[1])
    target = args.target
    mode = args.input_mode
    print(f"{net!r} on {label}; query = memory 0 + N(0, {args.noise:g}^2) noise, input {mode}")

    steps = (f"dt chosen for dt_tol = {args.dt_tol:g} by two pilot runs" if args.dt == "auto"
             else f"{int(round(args.t_end / args.dt))} steps of {args.dt:g} ms")
    if target == "numpy":
        note(f"brian2/numpy: simulating {args.t_end:g} ms ({steps}) ...")
    else:
        note(f"brian2/{target}: generating and compiling code (about a minute the first time; "
             f"cache {default_cache_dir()}), then simulating {args.t_end:g} ms ({steps}) ...")
    t0 = time.perf_counter()
    tr = run_brian2(net, q, args.t_end, args.dt, target=target, scheme=args.scheme,
                    record_every=args.record_every, input_mode=mode, progress=sys.stderr.isatty(),
                    dt_tol=args.dt_tol)
    dt = tr.params["dt"]
    t1 = time.perf_counter()
    note("scipy: the same network with solve_ivp (rtol 1e-10) on brian2's sample times, then on to "
         "its fixed point ...")
    ref = integrate(net, q, args.t_end, t_eval=tr.t, stop_at_fixed_point=False, input_mode=mode,
                    rtol=1e-10, atol=1e-12)
    t2 = time.perf_counter()
    # the two fixed points: scipy run on to convergence from the same query
    fp = integrate(net, q, max(10 * args.t_end, 200.0), input_mode=mode, rtol=1e-10, atol=1e-12)

    print(f"brian2/{target} ({args.scheme}, dt = {dt:g} ms{' (auto)' if args.dt == 'auto' else ''}, "
          f"{len(tr.t) - 1} samples): "
          f"{t1 - t0:.2f} s;  scipy RK45: {t2 - t1:.2f} s")
    print(compare_trajectories(tr, ref, net, labels=("brian2", "scipy")).summary())
    monotone = True
    for name, traj in (("brian2", tr), ("scipy ", ref)):
        inc, k = _largest_increase(traj.E)
        scale = np.abs(traj.E).max()
        ok = inc <= 1e-12 * scale
        monotone &= bool(ok)
        print(f"{name} energy: {traj.E[0, 0]:.6g} -> {traj.E[-1, 0]:.6g}; largest increase "
              f"{inc:.3e} (step {k}, {inc / scale:.1e} of max |E|): {'monotone' if ok else 'INCREASES'}; "
              f"max dE/dt = {traj.dEdt.max():.3e}")
    dist = compare_trajectories(tr, fp).max_fixed_point_distance
    print(f"fixed points: |y*_brian2 - y*_scipy| = {dist:.3e} against scipy run on to its fixed "
          f"point (brian2 converged: {bool(tr.converged[0])} at t = {tr.t[-1]:g} ms; "
          f"scipy converged: {bool(fp.converged[0])} at t = {fp.t[-1]:g} ms; the same rest test)")
    d = diagnose(net, tr, q[None], [0])[0]
    print(f"brian2 run: {d.reason()}")
    if args.out is not None:
        from uhn.dynamics.plotting import plot_brian2_overlay
        for path in save_outputs(args.out, {"brian2": tr, "scipy": ref},
                                 {"brian2_vs_scipy": plot_brian2_overlay(ref, tr, net)}):
            print(f"wrote {path}")
    return 0 if monotone else 1
