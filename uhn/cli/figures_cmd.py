"""``uhn figures``: regenerate every figure in figures/ (dynamics, spiking network, atlas, capacity curves).

    uhn figures --out figures            # everything (capacity from the results store if present)
    uhn figures --out /tmp/f --quick     # small sizes, a few seconds of dynamics

Everything is written under --out: the figures, and the capacity results store they are drawn
from in <out>/results/capacity.jsonl (capacity_quick.jsonl with --quick), so a second run only
replots.

Dynamics figures: a squared-Euclidean network with log-sum-exp memory neurons (softmax separation,
beta = 0.3), quadratic feature neurons, tau_v = 1, tau_h = 0.1, storing N MNIST digits and
integrated from digits with their bottom 30 % masked: energy with its verification, feature and
memory trajectories, the separation weights over time, a phase portrait in the plane of two
stored digits, snapshots of v(t), the fixed point beside single-shot retrieval, a GIF, and the
brian2 (numpy target) simulation of the same network overlaid on scipy's. Then the spiking network's
approach to its rate model (notebook 05's study), the dynamics atlas of ``uhn atlas`` (its store
in <out>/results/atlas.jsonl), the capacity curves, and the experiments after the paper: the
three-layer network against pixel space (docs/theory.md section 11), latent-space capacity
(docs/latent.md), capacity against theory and MNIST basins of attraction (docs/theory_capacity.md),
their stores in <out>/results/. See docs/figures.md.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from uhn.cli import capacity_progress_bar, describe_atlas_row, sweep_progress_bar

#: the network the dynamics figures use (squared_euclidean + softmax, v* = (2/3) M^T f; docs/theory.md)
SIMILARITY, BETA, CORRUPTION, LEVEL = "squared_euclidean", 0.3, "mask_bottom", 0.3


def register(sub) -> None:
    p = sub.add_parser("figures", help="regenerate every figure in figures/ (dynamics, spiking, atlas, capacity curves)",
                       description=__doc__.split("\n\n")[0], epilog="\n\n".join(__doc__.split("\n\n")[1:3]))
    p.add_argument("--out", type=Path, default=Path("figures"),
                   help="output folder for the figures and the capacity results store")
    p.add_argument("--quick", action="store_true", help="small sizes (seconds); for tests and a first look")
    p.add_argument("--no-capacity", action="store_true", help="skip the capacity figures")
    p.add_argument("--no-brian2", action="store_true", help="skip the brian2 vs scipy overlay")
    p.add_argument("--no-spiking", action="store_true", help="skip the spiking-network figures")
    p.add_argument("--no-atlas", action="store_true", help="skip the dynamics atlas")
    p.add_argument("--no-extensions", action="store_true",
                   help="skip the experiments after the paper (hierarchical, latent, theory, basins)")
    p.set_defaults(func=run)


def _save(fig, path: Path, written: list, log) -> None:
    import matplotlib.pyplot as plt
    from uhn.models.plotting import save_figure
    try:
        written.extend(save_figure(fig, path))
    finally:
        plt.close(fig)
    log(f"  wrote {path}")


def make_dynamics_figures(out_dir, quick: bool = False, brian2: bool = True, log=None) -> list[Path]:
    """Write the dynamics figures into out_dir; return the paths written (PNG and GIF)."""
    import matplotlib
    matplotlib.use("Agg")
    import numpy as np

    from uhn.dynamics import plotting as P
    from uhn.dynamics.analysis.energy import verify_energy
    from uhn.dynamics.integrate import integrate
    from uhn.dynamics.lagrangians import log_sum_exp
    from uhn.dynamics.network import Network
    from uhn.models import Memory
    from uhn.models.corruption import corrupt
    from uhn.models.data import load_dataset
    from uhn.models.separation import get_separation

    log = log or (lambda msg: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    n_mem, n_q = (20, 3) if quick else (50, 4)
    log(f"loading {n_mem} MNIST digits ...")
    ds = load_dataset("mnist", n=n_mem, seed=0)
    Q = corrupt(ds.X[:n_q], CORRUPTION, LEVEL, ds.image_shape, seed=0)
    net = Network(ds.X, SIMILARITY, L_h=log_sum_exp(BETA), tau_v=1.0, tau_h=0.1)
    t0 = time.perf_counter()
    traj = integrate(net, Q, t_end=5.0, n_samples=61 if quick else 121)
    report = verify_energy(net, traj)
    log(f"integrated {net!r} from {n_q} queries in {time.perf_counter() - t0:.1f} s; "
        f"energy check {'PASS' if report.passed else 'FAIL'}")

    _save(P.plot_energy(traj, report), out / "dynamics_energy.png", written, log)
    _save(P.plot_feature_trajectories(traj, 0, net=net), out / "dynamics_feature_trajectories.png", written, log)
    _save(P.plot_memory_activations(traj, net, 0), out / "dynamics_memory_activations.png", written, log)
    _save(P.plot_retrieval_snapshots(traj, ds.image_shape, 0, n=6, target=ds.X[0]),
          out / "dynamics_snapshots.png", written, log)

    t0 = time.perf_counter()
    small = Network(ds.X[:6], SIMILARITY, L_h=log_sum_exp(BETA), tau_v=1.0, tau_h=0.1)
    _save(P.plot_phase_portrait(small, (0, 1), trajectories=3 if quick else 5, grid=13 if quick else 19,
                                t_end=8.0, n_samples=41 if quick else 81),
          out / "dynamics_phase_portrait.png", written, log)
    log(f"  phase portrait in {time.perf_counter() - t0:.1f} s")

    single = Memory(ds.X, similarity=SIMILARITY, separation=get_separation("softmax", beta=BETA)).retrieve(Q)
    _save(P.plot_fixed_point_vs_single_shot(Q, traj.v_final, single, ds.X[:n_q], ds.image_shape),
          out / "dynamics_fixed_point_vs_single_shot.png", written, log)

    t0 = time.perf_counter()
    written.append(P.animate_retrieval(traj, net, ds.image_shape, out / "dynamics_retrieval.gif",
                                       fps=12, max_frames=25 if quick else 60))
    log(f"  wrote {written[-1]} in {time.perf_counter() - t0:.1f} s")

    if brian2:
        from uhn.dynamics.backends.brian2_rate import run_brian2
        t0 = time.perf_counter()
        bnet = Network(ds.X[:10], SIMILARITY, L_h=log_sum_exp(BETA), tau_v=1.0, tau_h=0.1)
        q1 = Q[:1]
        t_end = 4.0 if quick else 8.0
        log(f"  brian2 (numpy target): simulating {t_end} ms ...")
        b_traj = run_brian2(bnet, q1, t_end=t_end, dt=0.01, record_every=5)
        s_traj = integrate(bnet, q1, t_end=t_end, t_eval=b_traj.t, stop_at_fixed_point=False)
        log(f"  brian2 ({b_traj.backend}) simulated {t_end} ms in {time.perf_counter() - t0:.1f} s")
        _save(P.plot_brian2_overlay(s_traj, b_traj, bnet), out / "dynamics_brian2_vs_scipy.png", written, log)
    return written


#: --quick spiking study: n = 1, 4 for 8 ms (the full one: uhn.dynamics.backends.brian2_spiking.FIGURE_STUDY)
SPIKING_QUICK = {"t_end": 8.0, "dt": 0.1, "r_max": 0.2, "ns": (1, 4), "raster_n": 4}


def make_spiking_figures(out_dir, quick: bool = False, log=None) -> list[Path]:
    """spiking_network.png and spiking_convergence.png (uhn.dynamics.backends.brian2_spiking.convergence_study on
    uhn.dynamics.backends.brian2_spiking.mnist_network, brian2's numpy target) in out_dir; the paths written."""
    import matplotlib
    matplotlib.use("Agg")

    from uhn.dynamics import plotting as P
    from uhn.dynamics.backends.brian2_spiking import (FIGURE_STUDY, convergence_study, format_study,
        mnist_network)

    log = log or (lambda msg: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    net, Q, image_shape = mnist_network()
    cfg = SPIKING_QUICK if quick else FIGURE_STUDY
    log(f"  spiking: n = {cfg['ns']} neurons per unit, {cfg['t_end']} ms ...")
    study = convergence_study(net, Q, cfg["t_end"], ns=cfg["ns"], dt=cfg["dt"], r_max=cfg["r_max"],
                              raster_n=cfg["raster_n"])
    log(format_study(study))
    _save(P.plot_spiking_network(study, net, image_shape), out / "spiking_network.png", written, log)
    _save(P.plot_spiking_convergence(study), out / "spiking_convergence.png", written, log)
    return written


def make_atlas_figure(out_dir, quick: bool = False, log=None, progress=None) -> list[Path]:
    """atlas_digits.png: the atlas of ``uhn atlas`` (``--quick``) drawn from its results store
    <out>/results/atlas[_quick].jsonl (missing points are measured in-process and stored)."""
    import matplotlib
    matplotlib.use("Agg")

    from uhn.dynamics.analysis import atlas

    log = log or (lambda msg: None)
    store = Path(out_dir) / "results" / ("atlas_quick.jsonl" if quick else "atlas.jsonl")
    store.parent.mkdir(parents=True, exist_ok=True)
    points = atlas.default_points(quick)
    log(f"  atlas: {len(points)} points (stored in {store}, so a second run only replots)")
    rows = atlas.run(points, store, progress=progress)
    written: list[Path] = []
    _save(atlas.plot(rows), Path(out_dir) / "atlas_digits.png", written, log)
    return written


def make_extension_figures(out_dir, quick: bool = False, log=None, progress_bar=None) -> list[Path]:
    """The figures of the experiments after the paper, each from its library function, results in
    ``<out>/results/{latent,theory,basins}[_quick].jsonl``: ``hierarchical_retrieval.png``
    (uhn.dynamics.hierarchical.demo.hierarchical_figure), ``latent_capacity_mnist[_nearest].png``
    (latent_capacity.make_latent_figures), ``theory_*.png`` (theory.figure_points,
    theory_report.make_theory_figures), ``basins_mnist.png`` (basins.figure_points with the
    dynamics' fixed point, basins.make_basins_figure). ``progress_bar(name)`` -> (callback,
    close) shows each sweep's progress."""
    import matplotlib
    matplotlib.use("Agg")

    from uhn.dynamics.analysis.basin_retrieval import RETRIEVERS, softmax_fixed_point
    from uhn.dynamics.hierarchical.demo import hierarchical_figure
    from uhn.models.experiments import basins, latent_capacity, theory, theory_report

    log = log or (lambda msg: None)
    out = Path(out_dir)
    tag = "_quick" if quick else ""
    (out / "results").mkdir(parents=True, exist_ok=True)

    def swept(name, fn):
        cb, close = progress_bar(name) if progress_bar else (None, lambda: None)
        try:
            return fn(cb)
        finally:
            close()

    written: list[Path] = []
    t0 = time.perf_counter()
    small = {"n": 30, "n_queries": 4, "ks": (30, 10)} if quick else {}
    paths, _ = hierarchical_figure(out / "hierarchical_retrieval.png", **small)
    written += paths
    log(f"  wrote {out / 'hierarchical_retrieval.png'} in {time.perf_counter() - t0:.1f} s")
    written += swept("latent", lambda cb: latent_capacity.make_latent_figures(
        out, quick=quick, results_path=out / "results" / f"latent{tag}.jsonl", progress=cb))
    rows = swept("theory", lambda cb: theory.run(theory.figure_points(quick),
                                                 out / "results" / f"theory{tag}.jsonl", progress=cb,
                                                 dynamics=softmax_fixed_point))
    written += [Path(p) for p in theory_report.make_theory_figures(rows, out)]
    swept("basins", lambda cb: basins.make_basins_figure(
        out / "basins_mnist.png", points=basins.figure_points(quick),
        store=out / "results" / f"basins{tag}.jsonl", progress=cb, retrievers=RETRIEVERS))
    written.append(out / "basins_mnist.png")
    for p in written[1:]:
        log(f"  wrote {p}")
    return written


def results_path(out_dir, quick: bool) -> Path:
    """The capacity results store inside the output folder: <out>/results/capacity[_quick].jsonl."""
    return Path(out_dir) / "results" / ("capacity_quick.jsonl" if quick else "capacity.jsonl")


def run(args: argparse.Namespace) -> int:
    from uhn.cli import check_out_dir
    check_out_dir(args.out)
    t_all = time.perf_counter()

    def log(msg):
        print(msg, flush=True)

    print(f"dynamics figures -> {args.out}{' (quick)' if args.quick else ''}", flush=True)
    t0 = time.perf_counter()
    written = make_dynamics_figures(args.out, quick=args.quick, brian2=not args.no_brian2, log=log)
    print(f"dynamics figures: {len(written)} files in {time.perf_counter() - t0:.1f} s", flush=True)
    if not args.no_spiking:
        t0 = time.perf_counter()
        paths = make_spiking_figures(args.out, quick=args.quick, log=log)
        written.extend(paths)
        print(f"spiking figures: {len(paths)} files in {time.perf_counter() - t0:.1f} s", flush=True)
    if not args.no_atlas:
        t0 = time.perf_counter()
        cb, close = sweep_progress_bar("atlas", describe_atlas_row)
        try:
            paths = make_atlas_figure(args.out, quick=args.quick, log=log, progress=cb)
        finally:
            close()
        written.extend(paths)
        print(f"atlas figure: {len(paths)} files in {time.perf_counter() - t0:.1f} s", flush=True)
    if not args.no_extensions:
        t0 = time.perf_counter()
        print("figures of the experiments after the paper (results stored in "
              f"{Path(args.out) / 'results'}, so a second run only replots)", flush=True)
        paths = make_extension_figures(args.out, quick=args.quick, log=log,
                                       progress_bar=lambda name: sweep_progress_bar(name, None))
        written.extend(paths)
        print(f"extension figures: {len(paths)} files in {time.perf_counter() - t0:.1f} s", flush=True)
    if not args.no_capacity:
        from uhn.models.experiments.figures import make_capacity_figures
        t0 = time.perf_counter()
        store = results_path(args.out, args.quick)
        print(f"capacity figures (results are stored in {store}, so a second run only replots)", flush=True)
        paths = make_capacity_figures(args.out, quick=args.quick, progress_bar=capacity_progress_bar,
                                      results_path=store)
        written.extend(paths)
        print(f"capacity figures: {len(paths)} files in {time.perf_counter() - t0:.1f} s", flush=True)
    print(f"wrote {len(written)} files in {time.perf_counter() - t_all:.1f} s:")
    for p in written:
        print(f"  {p}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from uhn.cli import main
    sys.exit(main(["figures", *sys.argv[1:]]))
