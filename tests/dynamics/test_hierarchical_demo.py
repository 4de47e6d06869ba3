"""The three-layer demonstration (uhn.dynamics.hierarchical.demo; docs/theory.md §11), its
equivalence with the pixel-space network at k = N, io and the per-layer views and plots."""
from __future__ import annotations

import numpy as np
import pytest

from uhn.dynamics.analysis.energy import verify_energy
from uhn.dynamics.hierarchical import demo
from uhn.dynamics.integrate import integrate
from uhn.dynamics.trajectory import load_trajectory

EPS = np.finfo(np.float64).eps


def _memories():
    rng = np.random.default_rng(0)
    return rng.random((6, 12)), rng


def test_pca_network_at_k_equal_N_has_the_pixel_networks_fixed_points():
    """theory §11: at rest x_p = V_k V_k^T X^T f, and with k = N the fixed-point equations are the
    pixel network's: each network's rest state is a fixed point of the other (velocity at the
    level of the rest test), and the pixels are the PCA projection of the memory mixture."""
    X, rng = _memories()
    Q = X[:3] * (rng.random((3, 12)) > 0.4)
    three, two = demo.pca_network(X, 6, beta=3.0), demo.pixel_network(X, beta=3.0)
    kw = dict(method="RK45-batched", rtol=1e-10, atol=1e-12, fixed_point_tol=1e-9)
    t3, t2 = integrate(three, Q, 200.0, **kw), integrate(two, Q, 200.0, **kw)
    assert t3.converged.all() and t2.converged.all()
    # the three-layer rest pixels in the pixel network, h = S(g): velocity ~ its rest threshold
    v3 = t3.v[-1]
    v3h, h3 = two.initial_state(v3)
    assert np.abs(np.concatenate(two.rhs(v3h, h3), axis=1)).max() < 1e-7
    # the pixel network's rest state, lifted: x_l = V^T x_p / alpha, memories fed forward
    lat = t2.v[-1] @ demo.pca_basis(X, 6) / demo.ALPHA
    mem = three.synapses[1].scores(lat)                         # quadratic latent: g = x
    Y = three.pack_layers({"pixels": t2.v[-1], "latent": lat, "memories": mem})
    assert np.abs(three.velocity(Y)).max() < 1e-7
    parts = three.layer_states(t3.v[-1], t3.h[-1])
    V = demo.pca_basis(X, 6)
    f = demo.memory_rates(three, t3)
    np.testing.assert_allclose(parts["pixels"], f @ X @ V @ V.T, atol=1e-7)    # the PCA projection
    assert verify_energy(three, t3).passed


def test_pca_network_refuses_bad_parameters():
    X, _ = _memories()
    with pytest.raises(ValueError, match="alpha must lie in"):
        demo.pca_network(X, 3, alpha=1.0)
    with pytest.raises(ValueError, match="exceeds the rank bound"):
        demo.pca_network(X, 7)


def test_a_trajectory_saves_and_loads_and_splits_into_layers(tmp_path):
    pytest.importorskip("xarray")
    X, _ = _memories()
    net = demo.pca_network(X, 4, beta=2.0)
    traj = integrate(net, X[:2] * 0.5, 40.0, method="RK45-batched")
    path = tmp_path / "h.nc"
    traj.save(path)
    back = load_trajectory(path)
    np.testing.assert_array_equal(back.v, traj.v)
    np.testing.assert_array_equal(back.h, traj.h)
    assert back.params["layers"] == traj.params["layers"]
    ds = net.layer_dataset(back)
    assert ds["x_latent"].shape == (len(traj.t), 2, 4) and ds["x_memories"].shape == (len(traj.t), 2, 6)
    np.testing.assert_array_equal(ds["x_pixels"].values, traj.v)
    np.testing.assert_allclose(ds["g_memories"].values.sum(-1), 1.0, atol=16 * EPS)   # softmax rates


def test_plots_draw_each_layer(tmp_path):
    plt = pytest.importorskip("matplotlib.pyplot")
    from uhn.dynamics.plotting import plot_energy
    X, _ = _memories()
    net = demo.pca_network(X, 4, beta=2.0)
    traj = integrate(net, X[:2] * 0.5, 40.0, method="RK45-batched")
    fig = demo.plot_layer_activity(net, traj)
    assert [ax.get_ylabel().split("\n")[0] for ax in fig.axes[:3]] == ["pixels", "latent", "memories"]
    plt.close(fig)
    plt.close(plot_energy(traj))
    results = demo.retrieval_comparison(X, X[:3] * 0.7, np.arange(3), ks=(6, 3), beta=3.0, verify=False)
    assert [r.k for r in results] == [None, 6, 3]
    fig = demo.plot_hierarchical_retrieval(results, X[:3] * 0.7, X, np.arange(3), (3, 4), n_show=3)
    plt.close(fig)
