"""uhn.dynamics.plotting: each figure carries the trajectory's data, labelled axes; the GIF has its frames."""
import os

os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from uhn.dynamics import plotting as P  # noqa: E402
from uhn.dynamics.analysis.energy import verify_energy  # noqa: E402
from uhn.dynamics.integrate import integrate  # noqa: E402
from uhn.dynamics import lagrangians as L  # noqa: E402
from uhn.dynamics.lagrangians import log_sum_exp  # noqa: E402
from uhn.dynamics.network import Network  # noqa: E402

SHAPE = (8, 8)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def setup():
    from sklearn.datasets import load_digits
    X = load_digits().data[:12] / 16.0
    net = Network(X, "squared_euclidean", L_h=log_sum_exp(1.0), tau_v=1.0, tau_h=0.1)
    rng = np.random.default_rng(0)
    Q = np.clip(X[:3] + 0.2 * rng.standard_normal(X[:3].shape), 0, 1)
    traj = integrate(net, Q, t_end=4.0, n_samples=41, stop_at_fixed_point=False)
    return X, net, Q, traj


def _line(ax, gid):
    lines = [ln for ln in ax.get_lines() if ln.get_gid() == gid]
    assert len(lines) == 1, gid
    return lines[0]


def test_energy_lines_equal_trajectory_energy(setup):
    X, net, Q, traj = setup
    report = verify_energy(net, traj)
    fig = P.plot_energy(traj, report)
    assert isinstance(fig, Figure)
    ax, ax2 = fig.axes
    for b in range(3):
        ln = _line(ax, f"energy-{b}")
        np.testing.assert_array_equal(ln.get_xdata(), traj.t)
        np.testing.assert_array_equal(ln.get_ydata(), traj.E[:, b])
    assert ax.get_ylabel() == "energy E"
    assert ax2.get_xlabel() == "time (tau_v)"
    assert ax2.get_yscale() == "log"
    assert report.passed and "PASS" in ax.get_title()
    assert not [ln for ln in ax.get_lines() if ln.get_gid() == "violation"]


def test_energy_marks_the_violating_sample(setup):
    X, net, Q, traj = setup
    report = verify_energy(net, traj)
    bad = type(traj)(**{**traj.__dict__})
    bad.E = traj.E.copy()
    bad.E[20, 1] += 5.0
    from dataclasses import replace
    failed = replace(report, passed=False, max_increase=5.0, increase_tol=1e-9,
                     increase_at=(19, float(traj.t[19]), 1), violations=["E rose"])
    fig = P.plot_energy(bad, failed)
    ax = fig.axes[0]
    assert "FAIL" in ax.get_title()
    mark = _line(ax, "violation")
    assert mark.get_xdata()[0] == traj.t[19] and mark.get_ydata()[0] == bad.E[19, 1]


def test_brian2_time_axis_is_ms(setup):
    X, net, Q, traj = setup
    from dataclasses import replace
    fig = P.plot_energy(replace(traj, backend="brian2/numpy"))
    assert fig.axes[1].get_xlabel() == "time (ms)"


def test_feature_trajectories(setup):
    X, net, Q, traj = setup
    fig = P.plot_feature_trajectories(traj, query=1, max_neurons=5, net=net, max_memories=3)
    ax, ax2 = fig.axes
    idx = P.moving_features(traj, 1, 5)
    assert len(idx) == 5
    change = np.abs(traj.v[-1, 1] - traj.v[0, 1])
    assert change[idx].min() >= np.sort(change)[-5]
    for i in idx:
        np.testing.assert_array_equal(_line(ax, f"v-{i}").get_ydata(), traj.v[:, 1, i])
    mems = P.top_memories(traj, net, 1, 3)
    for mu in mems:
        np.testing.assert_array_equal(_line(ax2, f"h-{mu}").get_ydata(), traj.h[:, 1, mu])
    assert ax.get_xlabel() == "time (tau_v)" and ax.get_ylabel() == "feature state v_i"
    assert ax2.get_ylabel() == "memory state h_mu"


def test_memory_activation_heat_map_is_f_of_h(setup):
    X, net, Q, traj = setup
    fig = P.plot_memory_activations(traj, net, query=2)
    ax, cax = fig.axes  # the heat map and its colorbar
    mesh = ax.collections[0]
    F = net.L_h.grad(traj.h[:, 2])
    np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(net.N, len(traj.t)), F.T)
    assert ax.get_ylabel() == "memory mu" and ax.get_xlabel() == "time (tau_v)"
    assert "f_mu(h)" in cax.get_ylabel()
    # softmax weights: columns sum to one
    np.testing.assert_allclose(F.sum(1), 1.0)


def test_memory_activation_top_rows(setup):
    X, net, Q, traj = setup
    fig = P.plot_memory_activations(traj, net, query=0, max_memories=4)
    rows = P.top_memories(traj, net, 0, 4)
    F = net.L_h.grad(traj.h[:, 0])
    arr = np.asarray(fig.axes[0].collections[0].get_array()).reshape(4, len(traj.t))
    np.testing.assert_allclose(arr, F[:, rows].T)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == [str(r) for r in rows]


def test_phase_portrait(setup):
    X, net, Q, traj = setup
    fig = P.plot_phase_portrait(net, (0, 1), trajectories=3, grid=7, t_end=3.0, n_samples=21)
    ax = fig.axes[0]
    trajs = [ln for ln in ax.get_lines() if ln.get_gid() == "trajectory"]
    assert len(trajs) == 9
    assert len([ln for ln in ax.get_lines() if ln.get_gid() == "memory"]) == 2
    quiver = ax.collections[0]
    assert quiver.N == 49
    assert "memory 0" in ax.get_xlabel() and "memory 1" in ax.get_ylabel()
    # the lines are the projections of the integrated states onto (a, b)
    _, _, project = P.plane_coordinates(net, (0, 1))
    np.testing.assert_allclose(project(X[0]), [1.0, 0.0], atol=1e-9)
    # a given trajectory is drawn as its projection
    fig2 = P.plot_phase_portrait(net, (0, 1), trajectories=[traj], grid=5)
    lines = [ln for ln in fig2.axes[0].get_lines() if ln.get_gid() == "trajectory"]
    assert len(lines) == 3
    AB = project(traj.v)
    np.testing.assert_allclose(lines[0].get_xdata(), AB[:, 0, 0])
    np.testing.assert_allclose(lines[0].get_ydata(), AB[:, 0, 1])


def test_retrieval_snapshots_show_v_at_those_times(setup):
    X, net, Q, traj = setup
    fig = P.plot_retrieval_snapshots(traj, SHAPE, query=1, n=5, target=X[1], spacing="time")
    ks = P.snapshot_indices(len(traj.t), 5)
    assert list(ks) == [0, 10, 20, 30, 40]
    assert len(fig.axes) == 6
    for ax, k in zip(fig.axes, ks):
        np.testing.assert_array_equal(ax.images[0].get_array(), traj.v[k, 1].reshape(SHAPE))
        assert ax.get_title().startswith(f"t = {traj.t[k]:.3g}")
    np.testing.assert_array_equal(fig.axes[-1].images[0].get_array(), X[1].reshape(SHAPE))


def test_change_indices_space_frames_evenly_in_path_length():
    # x(t) = 1 - exp(-t) on 1001 samples of [0, 10]: path length s(t) = 1 - exp(-t), so frame i of n
    # sits at the first sample with s >= s_T i/(n-1); the state moves by s_T/(n-1) between frames,
    # give or take one sample's step (at most 0.01 here)
    t = np.linspace(0, 10, 1001)
    x = (1 - np.exp(-t))[:, None]
    ks = P.change_indices(x, 6)
    assert ks[0] == 0 and ks[-1] == 1000
    s = x[:, 0]
    moves = np.diff(s[ks[:-1]])
    step = np.abs(np.diff(s)).max()
    np.testing.assert_allclose(moves, s[-1] / 5, atol=step)
    # evenly in time, 4 of the 6 frames sit after t = 2, where x moves by less than 14 % of its path
    assert (t[P.snapshot_indices(1001, 6)] >= 2).sum() == 5
    assert P.change_indices(np.zeros((7, 3)), 5).tolist() == [0, 6]     # no motion: first, last
    with pytest.raises(ValueError, match="not finite"):
        P.change_indices(np.array([0.0, np.inf, 1.0]), 3)


def test_frames_by_change_do_not_stand_still(setup):
    # the retrieval figure's complaint: frames evenly in time repeat the rest image; spaced by the
    # change of v, no frame (but possibly the last, the rest state) is a near-copy of the one before
    X, net, Q, traj = setup
    total = np.abs(np.diff(traj.v[:, 0], axis=0)).sum(axis=1).sum()

    def still(ks):   # frames whose L1 move from the previous frame is below 1 % of the path length
        return int((np.abs(np.diff(traj.v[ks, 0], axis=0)).sum(axis=1) < 0.01 * total).sum())

    by_time = P.frame_indices(traj, 0, 20, "time")
    by_change = P.frame_indices(traj, 0, 20, "change")
    assert still(by_time) >= 5          # this run settles early: many repeated frames in time
    assert still(by_change) <= 1
    with pytest.raises(ValueError, match="spacing must be"):
        P.frame_indices(traj, 0, 5, "even")


def test_fixed_point_vs_single_shot(setup):
    X, net, Q, traj = setup
    single = X[:3] * 1.0
    fig = P.plot_fixed_point_vs_single_shot(Q, traj.v_final, single, X[:3], SHAPE)
    image_axes = [ax for ax in fig.axes if ax.images]
    assert len(image_axes) == 15
    np.testing.assert_array_equal(image_axes[1].images[0].get_array(), traj.v_final[0].reshape(SHAPE))
    np.testing.assert_allclose(image_axes[4].images[0].get_array(),
                               np.abs(traj.v_final[0] - single[0]).reshape(SHAPE))
    # the colorbar sits beside the last column, overlapping no panel or panel title
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (cbar,) = [ax for ax in fig.axes if not ax.images]
    cb_box = cbar.get_window_extent(renderer)
    for ax in image_axes:
        assert not cb_box.overlaps(ax.get_window_extent(renderer))
        assert not cb_box.overlaps(ax.title.get_window_extent(renderer))
    with pytest.raises(ValueError, match="shape mismatch"):
        P.plot_fixed_point_vs_single_shot(Q, traj.v_final[:2], single, X[:3], SHAPE)


def test_animation_gif_frames(setup, tmp_path):
    from PIL import Image, ImageSequence
    X, net, Q, traj = setup
    out = P.animate_retrieval(traj, net, SHAPE, tmp_path / "anim.gif", fps=10, max_frames=8, dpi=40)
    assert out == tmp_path / "anim.gif" and out.exists()
    with Image.open(out) as im:
        assert sum(1 for _ in ImageSequence.Iterator(im)) == len(P.frame_indices(traj, 0, 8, "change"))
    assert [p.name for p in tmp_path.iterdir()] == ["anim.gif"]  # no temporary left behind
    with pytest.raises(ValueError, match="gif or .mp4"):
        P.animate_retrieval(traj, net, SHAPE, tmp_path / "anim.avi")


def test_bad_query_index(setup):
    X, net, Q, traj = setup
    with pytest.raises(IndexError, match="query 3 out of range for a batch of 3"):
        P.plot_feature_trajectories(traj, query=3)
    with pytest.raises(IndexError, match="query -4 out of range for a batch of 3"):
        P.plot_memory_activations(traj, net, query=-4)


def test_uhn_figures_quick(tmp_path, monkeypatch, capsys):
    """uhn figures writes every figure the repository's figures/ holds: here all but the
    capacity ones (--no-capacity; their names are test_uhn_figures_calls_capacity's and
    tests/models/experiments/test_capacity.py's), plus the atlas's results store."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    from pathlib import Path

    from uhn.cli import main
    assert main(["figures", "--quick", "--no-capacity", "--out", str(tmp_path)]) == 0
    names = {p.name for p in tmp_path.iterdir()}
    tracked = {p.name for p in (Path(__file__).resolve().parents[2] / "figures").iterdir()
               if p.suffix in (".png", ".gif")}          # not a results store or PDFs made there
    expected = {n for n in tracked if not n.startswith("capacity_")}
    assert names == expected | {"results"}
    assert len(expected) == 19 and {"atlas_digits.png", "spiking_network.png", "basins_mnist.png"} <= expected
    out = capsys.readouterr().out
    assert "wrote 19 files" in out


def test_uhn_figures_calls_capacity(tmp_path, monkeypatch):
    import uhn.models.experiments.figures as cap
    from uhn.cli import main
    calls = []

    def fake(out_dir, quick=False, progress=None, **kw):
        calls.append((out_dir, quick))
        p = tmp_path / "capacity_fake.png"
        p.write_bytes(b"")
        return [p]

    import uhn.cli.figures_cmd as fc
    monkeypatch.setattr(fc, "make_dynamics_figures", lambda *a, **k: [])
    monkeypatch.setattr(cap, "make_capacity_figures", fake)
    assert main(["figures", "--quick", "--out", str(tmp_path)]) == 0
    assert calls == [(tmp_path, True)]


def test_violation_sample_points_at_the_trajectory_check_when_only_it_fails():
    """A trajectory of the same network with a 3x slower memory layer: E still falls and dE/dt
    matches its finite difference at every state (those checks use the correct vector field), so
    only the trajectory check fails and the marker must sit at its worst window."""
    from uhn.dynamics.analysis.energy import verify_energy
    from uhn.dynamics.plotting import violation_sample
    M = np.random.default_rng(0).uniform(0, 1, (4, 6))
    make = lambda tau_h: Network(M, "dot", L.quadratic(), L.log_sum_exp(2.0), tau_v=1.0, tau_h=tau_h)  # noqa: E731
    tr = integrate(make(0.3), M[:2] + 0.1, 5.0, n_samples=21)
    rep = verify_energy(make(0.1), tr)
    assert not rep.passed and rep.flow_ratio > 1
    assert rep.max_increase <= rep.increase_tol and rep.fd_max_error <= rep.fd_tol
    assert violation_sample(rep) == tuple(rep.flow_at)
