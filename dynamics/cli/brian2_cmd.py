"""``uhn brian2``: run one network and query in brian2 and in scipy's solve_ivp, and compare.

    uhn brian2 --similarity dot --separation softmax --beta 10 --n-memories 20 \\
               --dataset digits --t-end 20 --dt 0.01 --target numpy

Prints the largest state difference at the common sample times, each trajectory's energy
monotonicity (largest increase between samples) and the distance between the two fixed points.
"""
from __future__ import annotations

import time

import numpy as np

RATES = {"linear": "quadratic", "tanh": "log_cosh", "sigmoid": "softplus"}


def register(sub) -> None:
    p = sub.add_parser("brian2", help="run a network in brian2 and in scipy and compare them",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--similarity", default="dot", choices=["dot", "squared_euclidean"])
    p.add_argument("--separation", default="softmax",
                   choices=["softmax", "polynomial", "identity", "exp"],
                   help="memory-layer activation f = dL_h/dh (default softmax)")
    p.add_argument("--beta", type=float, default=10.0, help="softmax / exp inverse temperature")
    p.add_argument("--degree", type=float, default=3.0, help="polynomial degree n")
    p.add_argument("--rates", default="linear", choices=sorted(RATES),
                   help="feature rates g: linear (g = v), tanh or sigmoid")
    p.add_argument("--n-memories", type=int, default=20)
    p.add_argument("--dataset", default="digits",
                   help="models.data dataset name (digits, mnist, ...) or 'random' (bipolar, D=64)")
    p.add_argument("--noise", type=float, default=0.2, help="std of the Gaussian noise added to "
                   "the first memory to make the query")
    p.add_argument("--tau-v", type=float, default=1.0, help="ms")
    p.add_argument("--tau-h", type=float, default=0.1, help="ms")
    p.add_argument("--t-end", type=float, default=20.0, help="simulated time, ms")
    p.add_argument("--dt", type=float, default=0.01, help="brian2 time step, ms")
    p.add_argument("--record-every", type=int, default=1)
    p.add_argument("--target", default=None, choices=["numpy", "cython", "cpp_standalone"])
    p.add_argument("--scheme", default="leapfrog", choices=["leapfrog", "default"])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def _memories(args):
    if args.dataset == "random":
        from models.data import random_patterns
        return random_patterns(args.n_memories, 64, seed=args.seed) / 8.0, "random bipolar / 8"
    from models.data import load_dataset
    ds = load_dataset(args.dataset, n=args.n_memories, seed=args.seed)
    return ds.X, ds.name


def _lagrangians(args):
    from dynamics import lagrangians as L
    L_v = getattr(L, RATES[args.rates])()
    L_h = {"softmax": lambda: L.log_sum_exp(args.beta),
           "polynomial": lambda: L.rectified_polynomial(args.degree),
           "identity": L.quadratic,
           "exp": lambda: L.exponential(args.beta)}[args.separation]()
    return L_v, L_h


def _largest_increase(E):
    dE = np.diff(E, axis=0)
    k = int(np.argmax(dE.max(1))) if len(dE) else 0
    return (float(dE.max()) if len(dE) else 0.0), k


def run(args) -> int:
    from dynamics.brian2_backend import DEFAULT_TARGET, run_brian2
    from dynamics.integrate import integrate
    from dynamics.network import Network

    M, label = _memories(args)
    L_v, L_h = _lagrangians(args)
    net = Network(M, args.similarity, L_v=L_v, L_h=L_h, tau_v=args.tau_v, tau_h=args.tau_h)
    rng = np.random.default_rng(args.seed)
    q = M[0] + args.noise * rng.standard_normal(M.shape[1])
    target = args.target or DEFAULT_TARGET
    print(f"{net!r} on {label}; query = memory 0 + N(0, {args.noise:g}^2) noise")

    t0 = time.perf_counter()
    tr = run_brian2(net, q, args.t_end, args.dt, target=target, scheme=args.scheme,
                    record_every=args.record_every)
    t1 = time.perf_counter()
    ref = integrate(net, q, args.t_end, t_eval=tr.t, stop_at_fixed_point=False,
                    rtol=1e-10, atol=1e-12)
    t2 = time.perf_counter()
    # the two fixed points: scipy run on to convergence from the end of its trajectory
    fp = integrate(net, q, max(10 * args.t_end, 200.0), rtol=1e-10, atol=1e-12)

    dv = np.abs(tr.v - ref.v).max()
    dh = np.abs(tr.h - ref.h).max()
    print(f"brian2/{target} ({args.scheme}, dt = {args.dt:g} ms, {len(tr.t) - 1} samples): "
          f"{t1 - t0:.2f} s;  scipy RK45: {t2 - t1:.2f} s")
    print(f"max |v_brian2 - v_scipy| = {dv:.3e}   max |h_brian2 - h_scipy| = {dh:.3e}")
    for name, traj in (("brian2", tr), ("scipy ", ref)):
        inc, k = _largest_increase(traj.E)
        scale = np.abs(traj.E).max()
        verdict = "monotone" if inc <= 1e-12 * scale else "INCREASES"
        print(f"{name} energy: {traj.E[0, 0]:.6g} -> {traj.E[-1, 0]:.6g}; largest increase "
              f"{inc:.3e} (step {k}, {inc / scale:.1e} of max |E|): {verdict}; "
              f"max dE/dt = {traj.dEdt.max():.3e}")
    dist = np.linalg.norm(tr.v_final - fp.v_final)
    print(f"fixed points: |v*_brian2 - v*_scipy| = {dist:.3e} "
          f"(brian2 converged: {bool(tr.converged[0])} at t = {tr.t[-1]:g} ms; "
          f"scipy converged: {bool(fp.converged[0])} at t = {fp.t[-1]:g} ms)")
    nearest = int(np.argmin(((M - tr.v_final[0]) ** 2).sum(1)))
    print(f"brian2 fixed point is nearest memory {nearest} (query made from memory 0)")
    return 0
