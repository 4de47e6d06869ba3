"""The three-layer demonstration of docs/theory.md §11: half-masked MNIST digits retrieved by

    pixels (784, quadratic) <-> latent (k, quadratic) <-> memories (N, log_sum_exp(beta'))

with a linear synapse W = alpha V_k (V_k: the top k right singular vectors of the stored digits X,
an uncentred PCA; no training) and a dot-similarity synapse on latent codes C = ((1 - alpha^2) /
alpha) X V_k, against the same memories stored in pixel space (the two-layer Network, dot,
log_sum_exp(beta)). At rest the latent is x_l = C^T f / (1 - alpha^2) and the pixels
x_p = V_k V_k^T X^T f: the PCA projection of the retrieved mixture, and the memory layer's
scores are ((1 - alpha^2) / alpha^2) X V_k V_k^T X^T f. With beta' = beta alpha^2 / (1 - alpha^2)
(= beta at the default alpha = 1/sqrt(2)) the fixed points are those of the pixel network with
V_k V_k^T in place of the identity, x_p = V_k V_k^T X^T softmax(beta X V_k V_k^T x_p): for k = N
(the memories' span) the two networks have the same fixed points. (At the start the scores are
beta' (1 - alpha^2) X V_k V_k^T q = beta alpha^2 X V_k V_k^T q: the paths differ.)

:func:`retrieval_comparison` runs both (RK45-batched, the energy certificate on each),
:func:`plot_hierarchical_retrieval` draws the comparison, :func:`hierarchical_figure` writes
figures/hierarchical_retrieval.png, :func:`plot_layer_activity` draws each layer's activity.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from math import sqrt
from typing import Optional, Sequence

import numpy as np

from uhn.models.validation import as_matrix, int_param, real_param

from uhn.dynamics.analysis.energy import verify_energy
from uhn.dynamics.hierarchical.layers import Layer
from uhn.dynamics.hierarchical.network import HierarchicalNetwork
from uhn.dynamics.hierarchical.synapses import Linear, Similarity
from uhn.dynamics.integrate import integrate
from uhn.dynamics.lagrangians import log_sum_exp
from uhn.dynamics.network import Network

#: the default coupling, at which the memory layer's beta' equals the pixel network's beta (module docstring)
ALPHA = 1.0 / sqrt(2.0)


def pca_basis(memories, k: int) -> np.ndarray:
    """V_k (D, k): the top k right singular vectors of the memories (N, D) (uncentred PCA, numpy SVD)."""
    X, _ = as_matrix(memories, "memories", ndim_ok=(2,))
    k = int_param(k, "latent size k", low=1)
    if k > min(X.shape):
        raise ValueError(f"latent size k={k} exceeds the rank bound min(N, D) = {min(X.shape)} of the memories")
    return np.linalg.svd(np.asarray(X, dtype=np.float64), full_matrices=False)[2][:k].T


def pca_network(memories, k: int, beta: float = 5.0, *, alpha: float = ALPHA, tau_latent: float = 0.1,
                tau_memory: float = 0.1) -> HierarchicalNetwork:
    """pixels (D) <-> latent (k) <-> memories (N) of the module docstring: Linear(pixels, latent,
    alpha V_k), Similarity(latent, memories, ((1 - alpha^2) / alpha) X V_k, "dot"), memory
    Lagrangian log_sum_exp(beta alpha^2 / (1 - alpha^2)); 0 < alpha < 1 (alpha >= 1 makes the linear loop
    marginal or unstable: its energy is then unbounded below)."""
    X = np.asarray(as_matrix(memories, "memories", ndim_ok=(2,))[0], dtype=np.float64)
    alpha = real_param(alpha, "alpha", low=0.0, low_open=True)
    if not alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}: at alpha >= 1 the pixel-latent loop "
                         f"has a non-decaying mode and E is unbounded below")
    beta = real_param(beta, "beta", low=0.0, low_open=True)
    V = pca_basis(X, k)
    N, D = X.shape
    layers = [Layer("pixels", D), Layer("latent", k, tau=tau_latent),
              Layer("memories", N, log_sum_exp(beta * alpha ** 2 / (1 - alpha ** 2)), tau=tau_memory)]
    codes = (1 - alpha ** 2) / alpha * X @ V
    return HierarchicalNetwork(layers, [Linear("pixels", "latent", alpha * V),
                                        Similarity("latent", "memories", codes, "dot")])


def pixel_network(memories, beta: float = 5.0, *, tau_memory: float = 0.1) -> Network:
    """The same memories in pixel space: Network(X, "dot", L_h=log_sum_exp(beta), tau_h)."""
    return Network(memories, "dot", L_h=log_sum_exp(beta), tau_h=tau_memory)


def memory_rates(net, traj) -> np.ndarray:
    """(B, N) the memory layer's rates f at the last sample (either network)."""
    if isinstance(net, HierarchicalNetwork):
        x = net.layer_states(traj.v[-1], traj.h[-1])["memories"]
        return net.layers[net.index["memories"]].rates(x)
    return net.L_h.grad(traj.h[-1])


@dataclass
class Retrieval:
    """One network's run: ``accuracy`` (argmax of the memory rates = the target), ``t_rest``
    (median time to rest over the queries), ``wall_s`` (integration time on this machine),
    ``energy_passed`` (verify_energy), the network and its trajectory."""

    name: str
    k: Optional[int]
    accuracy: float
    t_rest: float
    wall_s: float
    energy_passed: Optional[bool]
    pixel_error: float          #: mean |x_p - target| at rest
    net: object = field(repr=False)
    traj: object = field(repr=False)


def retrieval_comparison(memories, queries, targets, ks: Sequence[int] = (100, 20), beta: float = 5.0,
                         t_end: float = 60.0, *, verify: bool = True, max_windows: int = 8) -> list:
    """Retrieve ``queries`` (B, D) with the pixel network and the three-layer network for each
    latent size in ``ks``; ``targets`` (B,) the index of each query's memory. Returns one
    :class:`Retrieval` per network, the pixel network first."""
    X = np.asarray(as_matrix(memories, "memories", ndim_ok=(2,))[0], dtype=np.float64)
    targets = np.asarray(targets)
    nets = [("pixel space (two layers)", None, pixel_network(X, beta))]
    nets += [(f"PCA latent k={k} (three layers)", int(k), pca_network(X, k, beta)) for k in ks]
    out = []
    for name, k, net in nets:
        t0 = time.perf_counter()
        traj = integrate(net, queries, t_end, method="RK45-batched")
        wall = time.perf_counter() - t0
        passed = verify_energy(net, traj, max_windows=max_windows).passed if verify else None
        f = memory_rates(net, traj)
        out.append(Retrieval(name=name, k=k, accuracy=float(np.mean(f.argmax(1) == targets)),
                             t_rest=float(np.median(traj.params["t_final_per_query"])), wall_s=wall,
                             energy_passed=passed,
                             pixel_error=float(np.abs(traj.v[-1] - X[targets]).mean()),
                             net=net, traj=traj))
    return out


def plot_hierarchical_retrieval(results: Sequence[Retrieval], queries, memories, targets, image_shape,
                                n_show: int = 6):
    """The comparison as one figure: for ``n_show`` queries the masked query, each network's
    pixels at rest and the stored digit; below, E(t) of the first query per network and a table
    of accuracy, median time to rest and the energy verdict."""
    import matplotlib.pyplot as plt
    X = np.asarray(memories, dtype=np.float64)
    n_show = min(int(n_show), len(queries))
    rows = 2 + len(results)
    fig = plt.figure(figsize=(1.3 * n_show + 4.2, 1.25 * rows + 0.6), layout="constrained")
    gs = fig.add_gridspec(rows, n_show + 3, width_ratios=[1] * n_show + [0.25, 1.6, 1.6])
    images = [("query", np.asarray(queries))] + [(r.name.split(" (")[0], r.traj.v[-1]) for r in results] \
        + [("stored", X[np.asarray(targets)])]
    for i, (label, imgs) in enumerate(images):
        for j in range(n_show):
            ax = fig.add_subplot(gs[i, j])
            ax.imshow(imgs[j].reshape(image_shape), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    ax = fig.add_subplot(gs[:rows // 2 + 1, n_show + 1:])
    for r in results:
        ax.plot(r.traj.t, r.traj.E[:, 0] - r.traj.E[-1, 0] + 1e-12, label=r.name.split(" (")[0])
    ax.set_yscale("log")
    ax.set_xlabel("t", fontsize=8), ax.set_ylabel("E(t) - E(rest), query 0", fontsize=8)
    ax.tick_params(labelsize=7), ax.legend(fontsize=6)
    ax = fig.add_subplot(gs[rows // 2 + 1:, n_show + 1:])
    ax.axis("off")
    cells = [[r.name.split(" (")[0].replace("PCA latent ", "latent "), f"{r.accuracy:.2f}", f"{r.t_rest:.1f}",
              {True: "PASS", False: "FAIL", None: "-"}[r.energy_passed]] for r in results]
    table = ax.table(cellText=cells, colLabels=["network", "accuracy", "t to rest", "energy"],
                     loc="center", cellLoc="center")
    table.auto_set_font_size(False), table.set_fontsize(7), table.scale(1.0, 1.2)
    table.auto_set_column_width([0, 1, 2, 3])
    fig.suptitle(f"half-masked MNIST, N={len(X)} memories: pixel space vs a PCA latent layer "
                 f"(no training)", fontsize=9)
    return fig


def hierarchical_figure(path="figures/hierarchical_retrieval.png", n: int = 100, n_queries: int = 20,
                        ks: Sequence[int] = (100, 20), beta: float = 5.0, seed: int = 0):
    """Run :func:`retrieval_comparison` on the first ``n_queries`` of ``n`` MNIST digits, their
    bottom half masked, and write :func:`plot_hierarchical_retrieval` to ``path`` (atomically).
    Returns (paths written, results)."""
    from uhn.models.corruption import corrupt
    from uhn.models.data import load_dataset
    from uhn.models.plotting import save_figure
    import matplotlib.pyplot as plt
    ds = load_dataset("mnist", n=n, seed=seed)
    X = np.asarray(ds.X, dtype=np.float64)
    B = int_param(n_queries, "n_queries", low=1)
    Q = corrupt(X[:B], "mask_bottom", 0.5, ds.image_shape, seed=seed)
    results = retrieval_comparison(X, Q, np.arange(B), ks=ks, beta=beta)
    fig = plot_hierarchical_retrieval(results, Q, X, np.arange(B), ds.image_shape)
    try:
        return save_figure(fig, path), results
    finally:
        plt.close(fig)


def plot_layer_activity(net: HierarchicalNetwork, traj, query: int = 0):
    """Each layer's rates g_a(t) of one query: a heat map per layer (units x time), with the
    layer's name, size and Lagrangian."""
    import matplotlib.pyplot as plt
    parts = net.layer_states(traj.v[:, query], traj.h[:, query])
    fig, axes = plt.subplots(len(parts), 1, figsize=(7, 1.6 * len(parts)), sharex=True, squeeze=False)
    for ax, L in zip(axes[:, 0], net.layers):
        g = L.rates(parts[L.name])
        im = ax.imshow(g.T, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest",
                       extent=(traj.t[0], traj.t[-1], -0.5, L.size - 0.5))
        ax.set_ylabel(f"{L.name}\n({L.size}, {L.lagrangian.name})", fontsize=7)
        ax.tick_params(labelsize=7)
        fig.colorbar(im, ax=ax, pad=0.01)
    axes[-1, 0].set_xlabel("t", fontsize=8)
    fig.suptitle(f"rates of each layer, query {query}", fontsize=9)
    return fig
