"""Figures of the continuous-time dynamics, read from a :class:`~uhn.dynamics.integrate.Trajectory`.

Every function returns a matplotlib Figure (it never calls ``plt.show``); save it with
``uhn.models.plotting.save_figure`` (atomic PNG). Time axes are labelled in the trajectory's unit:
"time (tau_v)" for scipy runs (the network's time unit, tau_v = 1 by default) and "time (ms)"
for brian2 runs.

    plot_energy                      E(t) per query, energy-check verdict, |dE/dt| on a log scale
    plot_feature_trajectories        v_i(t) of the features that move most, h_mu(t) of the top memories
    plot_memory_activations          f(h(t)) (the separation weights) as a memories x time heat map
    plot_phase_portrait              flow in the plane v = a M_i + b M_j, trajectories from a grid
    plot_retrieval_snapshots         v(t) as images at n times
    plot_fixed_point_vs_single_shot  query | fixed point | single shot | target | difference
    animate_retrieval                GIF: v(t) as an image beside E(t) with a moving marker
    plot_brian2_overlay              a brian2 run (dashed) over the scipy run of the same network
    plot_spiking_network             a spiking run: rasters, memory rates, E(t) beside the rate model
    plot_spiking_convergence         distance to the rate model and energy rises against n
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from uhn.models.atomic import atomic_path

from uhn.dynamics.trajectory import Trajectory
from uhn.dynamics.network import Network

#: font sizes used throughout (readable when a figure is shrunk into a two-column paper)
FONT = {"label": 10, "title": 10, "tick": 8, "legend": 8}


def _plt():
    import matplotlib.pyplot as plt
    return plt


def time_label(traj: Trajectory) -> str:
    """Axis label of the trajectory's time unit: ms for brian2 runs, tau_v otherwise."""
    return "time (ms)" if str(traj.backend).startswith("brian2") else "time (tau_v)"


def _style(ax, xlabel=None, ylabel=None, title=None):
    if xlabel is not None:
        ax.set_xlabel(xlabel, fontsize=FONT["label"])
    if ylabel is not None:
        ax.set_ylabel(ylabel, fontsize=FONT["label"])
    if title is not None:
        ax.set_title(title, fontsize=FONT["title"])
    ax.tick_params(labelsize=FONT["tick"])


def _check_query(traj: Trajectory, query: int) -> int:
    B = traj.v.shape[1]
    if not (-B <= query < B):
        raise IndexError(f"query {query} out of range for a batch of {B}")
    return int(query) % B


def _image(x: np.ndarray, image_shape) -> np.ndarray:
    """Reshape a flat state to an image; colour images are clipped to [0, 1] (imshow needs it)."""
    img = np.asarray(x, dtype=np.float64).reshape(tuple(image_shape))
    return np.clip(img, 0.0, 1.0) if img.ndim == 3 else img


def _show_image(ax, x, image_shape, vmin=0.0, vmax=1.0, cmap="gray"):
    img = _image(x, image_shape)
    im = ax.imshow(img, cmap=cmap if img.ndim == 2 else None, vmin=vmin, vmax=vmax,
                   interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def violation_sample(report) -> Optional[tuple]:
    """(sample k, time t_k, query b) of the check that failed first in ``report``; None if passed.

    Order: an increase of E between samples, then a positive analytic dE/dt, then a mismatch of
    dE/dt with the finite difference, then samples that do not solve the ODE (the start of the
    worst window), then (convexity only) the largest increase.
    """
    if report is None or report.passed:
        return None
    if report.max_increase > report.increase_tol:
        return tuple(report.increase_at)
    if report.max_dEdt > 0 and any("> 0" in v for v in report.violations):
        return tuple(report.dEdt_at)
    if report.fd_max_error > report.fd_tol:
        return tuple(report.fd_at)
    if getattr(report, "flow_ratio", 0.0) > 1:
        return tuple(report.flow_at)
    return tuple(report.increase_at)


# ---------------------------------------------------------------------------- energy
def plot_energy(traj: Trajectory, report=None, queries: Optional[Sequence[int]] = None,
                title: Optional[str] = None):
    """E(t) per query (top) and |dE/dt| on a log scale (bottom); the energy check's verdict.

    Parameters
    ----------
    traj : the trajectory; one line per query in ``queries`` (default all, at most 10).
    report : optional :class:`uhn.dynamics.analysis.energy.EnergyReport`; its PASS/FAIL is written in the
        title and, if it failed, the violating sample is marked with a red cross.
    """
    plt = _plt()
    B = traj.E.shape[1]
    queries = list(range(min(B, 10))) if queries is None else [_check_query(traj, q) for q in queries]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(5.5, 5.0), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 2]})
    colors = plt.get_cmap("tab10")
    for i, b in enumerate(queries):
        ax.plot(traj.t, traj.E[:, b], color=colors(i % 10), lw=1.5, label=f"query {b}", gid=f"energy-{b}")
        d = np.abs(traj.dEdt[:, b])
        ax2.semilogy(traj.t, np.where(d > 0, d, np.nan), color=colors(i % 10), lw=1.2,
                     gid=f"dEdt-{b}")
    verdict = ""
    if report is not None:
        verdict = "energy check: PASS" if report.passed else "energy check: FAIL"
        where = violation_sample(report)
        if where is not None:
            k, tk, b = where
            ax.plot([traj.t[k]], [traj.E[k, b]], "x", color="red", ms=12, mew=2.5,
                    label=f"violation (query {b}, t={tk:.3g})", gid="violation")
    head = title if title is not None else f"energy along the flow ({traj.backend}, {traj.method})"
    _style(ax, ylabel="energy E", title=f"{head}\n{verdict}" if verdict else head)
    if report is not None:
        ax.title.set_color("tab:green" if report.passed else "tab:red")
    _style(ax2, xlabel=time_label(traj), ylabel="|dE/dt|")
    if len(queries) <= 10:
        ax.legend(fontsize=FONT["legend"], frameon=False, ncol=2)
    ax.grid(alpha=0.3)
    ax2.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------- trajectories
def moving_features(traj: Trajectory, query: int = 0, max_neurons: int = 12) -> np.ndarray:
    """Indices of the ``max_neurons`` features whose state changes most, |v_i(T) - v_i(0)|, sorted."""
    q = _check_query(traj, query)
    change = np.abs(traj.v[-1, q] - traj.v[0, q])
    order = np.argsort(-change, kind="stable")[:max_neurons]
    return np.sort(order)


def top_memories(traj: Trajectory, net: Network, query: int = 0, k: int = 8) -> np.ndarray:
    """Indices of the k memories with the largest peak activation f_mu(h(t)), sorted by index."""
    q = _check_query(traj, query)
    F = net.L_h.grad(traj.h[:, q])
    return np.sort(np.argsort(-F.max(0), kind="stable")[:k])


def plot_feature_trajectories(traj: Trajectory, query: int = 0, max_neurons: int = 12,
                              net: Optional[Network] = None, max_memories: int = 6):
    """v_i(t) of the features that move most (left) and h_mu(t) of the memories (right).

    Parameters
    ----------
    max_neurons : number of feature neurons drawn (those with the largest |v_i(T) - v_i(0)|).
    net : if given, the memory panel shows the ``max_memories`` memories with the largest peak
        f_mu(h); otherwise those with the largest final h_mu.
    """
    plt = _plt()
    q = _check_query(traj, query)
    idx = moving_features(traj, q, max_neurons)
    if net is not None:
        mem = top_memories(traj, net, q, max_memories)
    else:
        mem = np.sort(np.argsort(-traj.h[-1, q], kind="stable")[:max_memories])
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9.0, 3.6))
    cmap = plt.get_cmap("viridis")
    for j, i in enumerate(idx):
        ax.plot(traj.t, traj.v[:, q, i], color=cmap(j / max(1, len(idx) - 1)), lw=1.2,
                label=f"v_{i}", gid=f"v-{i}")
    _style(ax, time_label(traj), "feature state v_i",
           f"{len(idx)} of {traj.v.shape[2]} feature neurons (largest change)")
    tab = plt.get_cmap("tab10")
    for j, mu in enumerate(mem):
        ax2.plot(traj.t, traj.h[:, q, mu], color=tab(j % 10), lw=1.4, label=f"memory {mu}",
                 gid=f"h-{mu}")
    _style(ax2, time_label(traj), "memory state h_mu", f"{len(mem)} of {traj.h.shape[2]} memory neurons")
    ax2.legend(fontsize=FONT["legend"], frameon=False)
    for a in (ax, ax2):
        a.grid(alpha=0.3)
    fig.suptitle(f"query {q}", fontsize=FONT["title"])
    fig.tight_layout()
    return fig


def plot_memory_activations(traj: Trajectory, net: Network, query: int = 0,
                            max_memories: Optional[int] = 60):
    """Heat map of f(h(t)) = dL_h/dh, the separation weights, memories x time, with a colorbar.

    When N > ``max_memories`` only the memories with the largest peak activation are drawn (their
    indices label the rows). The QuadMesh's array is f(h(t))[:, rows].T.
    """
    plt = _plt()
    q = _check_query(traj, query)
    F = net.L_h.grad(traj.h[:, q])            # (T, N)
    N = F.shape[1]
    rows = np.arange(N) if max_memories is None or N <= max_memories else top_memories(traj, net, q, max_memories)
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    ypos = np.arange(len(rows))
    mesh = ax.pcolormesh(traj.t, ypos, F[:, rows].T, shading="nearest", cmap="magma")
    cb = fig.colorbar(mesh, ax=ax)
    cb.set_label(f"f_mu(h) ({net.L_h.name})", fontsize=FONT["label"])
    cb.ax.tick_params(labelsize=FONT["tick"])
    label = "memory mu" if len(rows) == N else f"memory mu (top {len(rows)} of {N})"
    if len(rows) <= 30:
        ax.set_yticks(ypos)
        ax.set_yticklabels([str(r) for r in rows])
    _style(ax, time_label(traj), label, f"separation weights f(h(t)), query {q}")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------- phase portrait
def plane_coordinates(net: Network, memory_indices=(0, 1), base=None):
    """(P, base, project): v = base + a M_i + b M_j + rest; project(v) -> (..., 2) least-squares (a, b)."""
    i, j = memory_indices
    P = np.stack([net.M[i], net.M[j]])                       # (2, D)
    base = np.zeros(net.D) if base is None else np.asarray(base, dtype=np.float64)
    pinv = np.linalg.pinv(P)                                 # (D, 2)

    def project(v):
        return (np.asarray(v) - base) @ pinv
    return P, base, project


def plot_phase_portrait(net: Network, memory_indices=(0, 1), trajectories=4, *, extent=(-0.3, 1.3, -0.3, 1.3),
                        grid: int = 17, t_end: float = 10.0, adiabatic: bool = True, base=None,
                        n_samples: int = 81):
    """Flow of the network in the plane v = base + a M_i + b M_j (+ rest), with trajectories.

    The vector field is the right-hand side (adiabatic, h = S(g); or the full one with h on its
    slow manifold h = S(g)) evaluated at each grid point of the plane and projected onto (a, b) by
    least squares; arrows are coloured by speed. Trajectories start on a regular
    ``trajectories x trajectories`` grid of the plane (or at given (K, D) states, or are given as a
    list of Trajectory objects) and are projected the same way; each is coloured by the memory its
    end point weights most (f(h)), which shows the basins of attraction. Trajectory lines carry
    gid "trajectory"; the memories are marked with stars.
    """
    from uhn.dynamics.integrate import integrate
    plt = _plt()
    P, base, project = plane_coordinates(net, memory_indices, base)
    a0, a1, b0, b1 = extent
    A, Bc = np.meshgrid(np.linspace(a0, a1, grid), np.linspace(b0, b1, grid))
    V = base + A.reshape(-1, 1) * P[0] + Bc.reshape(-1, 1) * P[1]
    if adiabatic:
        dV = net.rhs_adiabatic(V)
    else:
        dV, _ = net.rhs(V, net.similarity(net.L_v.grad(V)))
    dAB = dV @ np.linalg.pinv(P)
    U, W = dAB[:, 0].reshape(A.shape), dAB[:, 1].reshape(A.shape)
    speed = np.hypot(U, W)

    trajs = []
    if isinstance(trajectories, (int, np.integer)):
        n = int(trajectories)
        sa, sb = np.meshgrid(np.linspace(a0, a1, n + 2)[1:-1], np.linspace(b0, b1, n + 2)[1:-1])
        starts = base + sa.reshape(-1, 1) * P[0] + sb.reshape(-1, 1) * P[1]
        if len(starts):
            trajs = [integrate(net, starts, t_end=t_end, adiabatic=adiabatic, n_samples=n_samples,
                               rtol=1e-6, atol=1e-8)]
    elif isinstance(trajectories, Trajectory):
        trajs = [trajectories]
    elif trajectories is not None and len(trajectories) and isinstance(trajectories[0], Trajectory):
        trajs = list(trajectories)
    elif trajectories is not None:
        trajs = [integrate(net, np.atleast_2d(trajectories), t_end=t_end, adiabatic=adiabatic,
                           n_samples=n_samples, rtol=1e-6, atol=1e-8)]

    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    q = ax.quiver(A, Bc, U / np.maximum(speed, 1e-12), W / np.maximum(speed, 1e-12), np.log10(speed + 1e-12),
                  cmap="Greys", pivot="mid", scale=grid * 1.6, width=0.004, alpha=0.9)
    cb = fig.colorbar(q, ax=ax)
    cb.set_label("log10 speed |d(a,b)/dt| (1/tau_v)", fontsize=FONT["label"])
    cb.ax.tick_params(labelsize=FONT["tick"])
    tab = plt.get_cmap("tab10")
    basin_colour = {}
    for tr in trajs:
        AB = project(tr.v)                                   # (T, B, 2)
        winners = net.L_h.grad(tr.h[-1]).argmax(1)
        for b in range(AB.shape[1]):
            mu = int(winners[b])
            c = basin_colour.setdefault(mu, tab(len(basin_colour) % 10))
            ax.plot(AB[:, b, 0], AB[:, b, 1], color=c, lw=1.4, gid="trajectory")
            ax.plot(AB[0, b, 0], AB[0, b, 1], "o", color=c, ms=3.5, gid="start")
            ax.plot(AB[-1, b, 0], AB[-1, b, 1], "s", color=c, ms=4, mec="k", mew=0.5, gid="end")
    i, j = memory_indices
    for (x, y), name in (((1, 0), f"M_{i}"), ((0, 1), f"M_{j}")):
        ax.plot([x], [y], "*", color="gold", mec="k", ms=16, zorder=5, gid="memory")
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(8, 6), fontsize=FONT["label"])
    handles = [plt.Line2D([], [], color=c, lw=1.6, label=f"ends at memory {mu}") for mu, c in basin_colour.items()]
    if handles:
        ax.legend(handles=handles, fontsize=FONT["legend"], loc="lower left", frameon=True)
    ax.set_xlim(a0, a1)
    ax.set_ylim(b0, b1)
    _style(ax, f"a (coefficient of memory {i})", f"b (coefficient of memory {j})",
           f"phase portrait in span(M_{i}, M_{j}), {'adiabatic' if adiabatic else 'full'} flow\n"
           f"{net.sim.name}, L_v={net.L_v.name}, L_h={net.L_h.name}, N={net.N}")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------- images
def snapshot_indices(T: int, n: int) -> np.ndarray:
    """n sample indices spread evenly over 0..T-1 (fewer if T < n), first and last included."""
    return np.unique(np.round(np.linspace(0, T - 1, min(n, T))).astype(int))


def change_indices(states, n: int) -> np.ndarray:
    """At most n sample indices spread evenly over the path length of ``states`` (T, ...).

    With s_k = sum_{j<=k} ||x_j - x_{j-1}|| (s_0 = 0), index k_i is the first sample with
    s_k >= s_T i / (n - 1), i = 0..n-1, first and last included: each frame moves the state by
    about s_T / (n - 1). Samples evenly spaced in time are mostly at rest (the state moves early,
    then settles); this puts the frames where it moves. A state that never moves gives [0, T-1].
    """
    x = np.asarray(states, dtype=np.float64)
    T = x.shape[0]
    if T == 0:
        raise ValueError("no samples to choose frames from")
    if n < 2 or T < 2:
        return np.array([0] if T == 1 or n < 1 else [0, T - 1])
    steps = np.linalg.norm(x[1:].reshape(T - 1, -1) - x[:-1].reshape(T - 1, -1), axis=1)
    s = np.concatenate(([0.0], np.cumsum(steps)))
    if not np.isfinite(s[-1]):
        raise ValueError("states are not finite; cannot space frames by their change")
    if s[-1] == 0.0:
        return np.array([0, T - 1])
    ks = np.searchsorted(s, s[-1] * np.linspace(0.0, 1.0, min(n, T)), side="left")
    return np.unique(np.clip(np.concatenate(([0], ks, [T - 1])), 0, T - 1))


def frame_indices(traj: Trajectory, query: int, n: int, spacing: str) -> np.ndarray:
    """Sample indices for n frames of one query: ``spacing`` "change" (even in the path length of
    v, :func:`change_indices`) or "time" (even in the sample index, :func:`snapshot_indices`)."""
    if spacing == "change":
        return change_indices(traj.v[:, query], n)
    if spacing == "time":
        return snapshot_indices(len(traj.t), n)
    raise ValueError(f"spacing must be 'change' or 'time', got {spacing!r}")


def plot_retrieval_snapshots(traj: Trajectory, image_shape, query: int = 0, n: int = 6, target=None,
                             spacing: str = "change"):
    """v(t) of one query as images at n samples (target last if given), spaced by
    :func:`frame_indices` (default: evenly in the state's change, so no two panels repeat)."""
    plt = _plt()
    q = _check_query(traj, query)
    ks = frame_indices(traj, q, n, spacing)
    cols = len(ks) + (target is not None)
    fig, axes = plt.subplots(1, cols, figsize=(1.6 * cols, 2.0), squeeze=False)
    axes = axes[0]
    unit = "ms" if str(traj.backend).startswith("brian2") else "tau_v"
    for ax, k in zip(axes, ks):
        _show_image(ax, traj.v[k, q], image_shape)
        ax.set_title(f"t = {traj.t[k]:.3g} {unit}", fontsize=FONT["tick"])
    if target is not None:
        _show_image(axes[-1], target, image_shape)
        axes[-1].set_title("target", fontsize=FONT["tick"])
    fig.suptitle(f"feature state v(t) of query {q}", fontsize=FONT["title"])
    fig.tight_layout()
    return fig


def plot_fixed_point_vs_single_shot(query, fixed_point, single_shot, target, image_shape,
                                    labels=("query", "fixed point", "single shot", "target")):
    """Rows of query | fixed point of the dynamics | single-shot output | target | |fp - ss|.

    Inputs are (D,) or (B, D). Titles give the squared error to the target; the last column is the
    absolute difference of fixed point and single shot, with a colorbar.
    """
    plt = _plt()
    arrs = [np.atleast_2d(np.asarray(x, dtype=np.float64)) for x in (query, fixed_point, single_shot, target)]
    B = arrs[0].shape[0]
    if any(a.shape != arrs[0].shape for a in arrs):
        raise ValueError(f"shape mismatch: {[a.shape for a in arrs]}")
    # constrained layout gives the colorbar its own space beside the last column (a colorbar
    # stolen from axes without a layout engine overlaps that column's titles)
    fig, axes = plt.subplots(B, 5, figsize=(9.0, 1.75 * B + 0.6), squeeze=False, layout="constrained")
    diff_im = None
    dmax = max(float(np.abs(arrs[1] - arrs[2]).max()), 1e-12)
    for r in range(B):
        for c in range(4):
            ax = axes[r, c]
            _show_image(ax, arrs[c][r], image_shape)
            err = float(((arrs[c][r] - arrs[3][r]) ** 2).sum())
            text = labels[c] if c == 3 else f"{labels[c]}\nerr {err:.3g}"
            ax.set_title(text if r == 0 or c != 3 else "", fontsize=FONT["tick"])
            if c in (0, 1, 2) and r > 0:
                ax.set_title(f"err {err:.3g}", fontsize=FONT["tick"])
        ax = axes[r, 4]
        d = np.abs(arrs[1][r] - arrs[2][r])
        diff_im = ax.imshow(d.reshape(tuple(image_shape))[..., 0] if len(image_shape) == 3 else
                            d.reshape(tuple(image_shape)), cmap="viridis", vmin=0, vmax=dmax)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"|fp - ss|, max {d.max():.2g}", fontsize=FONT["tick"])
    cb = fig.colorbar(diff_im, ax=list(axes[:, 4]), shrink=0.8)
    cb.ax.tick_params(labelsize=FONT["tick"])
    cb.set_label("|fixed point - single shot|", fontsize=FONT["tick"])
    fig.suptitle("fixed point of the dynamics vs single-shot retrieval (err: squared error to target)",
                 fontsize=FONT["title"])
    return fig


# ---------------------------------------------------------------------------- animation
def animate_retrieval(traj: Trajectory, net: Network, image_shape, path, fps: int = 12,
                      query: int = 0, max_frames: int = 60, dpi: int = 80,
                      spacing: str = "change") -> Path:
    """Write an animation of v(t) as an image beside E(t) with a moving marker; return its path.

    ``path`` ending in .gif uses PillowWriter; .mp4 uses FFMpegWriter and needs ffmpeg on PATH
    (ValueError otherwise). Frames are ``frame_indices(traj, query, max_frames, spacing)``: by
    default evenly in the change of v, so frames do not stand still while v settles (evenly in
    time, "time", most frames of a run to rest repeat the last image). The file is drawn into
    a temporary file in the same folder and moved into place (a reader never sees half a file).
    """
    from matplotlib import animation
    plt = _plt()
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".gif":
        writer = animation.PillowWriter(fps=fps)
    elif suffix == ".mp4":
        if shutil.which("ffmpeg") is None:
            raise ValueError("mp4 needs ffmpeg on PATH, which is missing; write a .gif instead")
        writer = animation.FFMpegWriter(fps=fps)
    else:
        raise ValueError(f"animation path must end in .gif or .mp4, got {path.name!r}")
    q = _check_query(traj, query)
    ks = frame_indices(traj, q, max_frames, spacing)
    fig, (ax_img, ax_e) = plt.subplots(1, 2, figsize=(7.0, 3.2), gridspec_kw={"width_ratios": [1, 1.5]})
    im = _show_image(ax_img, traj.v[0, q], image_shape)
    title = ax_img.set_title("", fontsize=FONT["title"])
    ax_e.plot(traj.t, traj.E[:, q], color="tab:blue", lw=1.5)
    (marker,) = ax_e.plot([traj.t[0]], [traj.E[0, q]], "o", color="tab:red", ms=8)
    _style(ax_e, time_label(traj), "energy E", f"{net.sim.name}, L_h={net.L_h.name}, N={net.N}")
    ax_e.grid(alpha=0.3)
    fig.tight_layout()
    unit = "ms" if str(traj.backend).startswith("brian2") else "tau_v"

    def update(frame):
        k = ks[frame]
        im.set_data(_image(traj.v[k, q], image_shape))
        marker.set_data([traj.t[k]], [traj.E[k, q]])
        title.set_text(f"v(t), t = {traj.t[k]:.3g} {unit}")
        return im, marker, title

    anim = animation.FuncAnimation(fig, update, frames=len(ks), blit=False)
    try:
        with atomic_path(path, prefix=f".{path.stem}.", suffix=suffix) as tmp:
            anim.save(tmp, writer=writer, dpi=dpi)
    finally:
        plt.close(fig)
    return path


def plot_brian2_overlay(scipy_traj, brian_traj, net, query: int = 0, n_features: int = 4):
    """E(t), h_mu(t) and v_i(t) of the brian2 run (dashed, ms) over the scipy run (solid, tau_v)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(11.0, 3.4))
    axes[0].plot(scipy_traj.t, scipy_traj.E[:, query], lw=2.2, color="tab:blue", label="scipy RK45")
    axes[0].plot(brian_traj.t, brian_traj.E[:, query], "--", lw=1.5, color="tab:orange",
                 label=f"{brian_traj.backend}, dt={brian_traj.params.get('dt')} ms")
    axes[0].set_ylabel("energy E", fontsize=FONT["label"])
    tab = plt.get_cmap("tab10")
    for j, mu in enumerate(top_memories(scipy_traj, net, query, 3)):
        axes[1].plot(scipy_traj.t, scipy_traj.h[:, query, mu], lw=2.2, color=tab(j), alpha=0.6)
        axes[1].plot(brian_traj.t, brian_traj.h[:, query, mu], "--", lw=1.3, color=tab(j), label=f"h_{mu}")
    axes[1].set_ylabel("memory state h_mu", fontsize=FONT["label"])
    for j, i in enumerate(moving_features(scipy_traj, query, n_features)):
        axes[2].plot(scipy_traj.t, scipy_traj.v[:, query, i], lw=2.2, color=tab(j), alpha=0.6)
        axes[2].plot(brian_traj.t, brian_traj.v[:, query, i], "--", lw=1.3, color=tab(j), label=f"v_{i}")
    axes[2].set_ylabel("feature state v_i", fontsize=FONT["label"])
    for ax in axes:
        ax.set_xlabel("time (ms = tau_v units)", fontsize=FONT["label"])
        ax.tick_params(labelsize=FONT["tick"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=FONT["legend"], frameon=False)
    n = min(len(scipy_traj.t), len(brian_traj.t))
    err = float(np.abs(brian_traj.E[:n, query] - scipy_traj.E[:n, query]).max())
    fig.suptitle(f"brian2 rate model (dashed) vs scipy (solid): {net.sim.name}, N={net.N}, D={net.D}; "
                 f"max |E difference| {err:.2g}", fontsize=FONT["title"])
    fig.tight_layout()
    return fig


def plot_spiking_network(study, net: Network, image_shape=None, row: Optional[int] = None,
                         bin_ms: float = 4.0):
    """Query 0 of a spiking :class:`~uhn.dynamics.backends.brian2_spiking.ConvergenceStudy` at n = ``study.raster_n``:
    the spikes of the feature neurons of one image row (default the middle row; without
    ``image_shape`` the first 28 feature units), the spikes of the memory neurons (the target's
    in red), the memory rates f(h) beside the rate model's and beside the target's rate read off
    its spikes in ``bin_ms`` bins, and E(t) of every n beside the rate model's."""
    plt = _plt()
    if study.raster_n is None:
        raise ValueError("plot_spiking_network needs a study with raster_n (recorded spikes)")
    run, rate = study.runs[study.raster_n], study.rate
    n, target = run.n, int(study.targets[0])
    width = image_shape[1] if image_shape is not None else min(28, net.D)
    row = (image_shape[0] // 2 if image_shape is not None else 0) if row is None else row
    fig, ax = plt.subplots(4, 1, figsize=(7, 9), sharex=True,
                           gridspec_kw={"height_ratios": [2, 1.2, 1.5, 1.5]})
    i_v, t_v = run.spikes_v
    band = (i_v // n >= row * width) & (i_v // n < (row + 1) * width)
    ax[0].plot(t_v[band], i_v[band] - row * width * n, "|", ms=2, color="k")
    ax[0].set_ylabel(f"feature neurons\n(row {row}, {n} per pixel)")
    i_h, t_h = run.spikes_h
    mine = i_h // n == target
    ax[1].plot(t_h[~mine], i_h[~mine], "|", ms=2, color="0.6")
    ax[1].plot(t_h[mine], i_h[mine], "|", ms=2, color="C3")
    ax[1].set_ylim(-1, net.N * n)
    ax[1].set_ylabel(f"memory neurons\n({n} per memory;\ntarget in red)")
    for mu in range(net.N):
        ax[2].plot(run.traj.t, run.rates_h[:, 0, mu], color="C3" if mu == target else "0.7", lw=1)
    ax[2].plot(rate.t, net.L_h.grad(rate.h[:, 0])[:, target], "k--", lw=1.5, label="rate model, target")
    t_end = float(run.traj.t[-1])
    bins = np.arange(0.0, t_end + 1e-9, bin_ms)
    counts = np.histogram(t_h[mine], bins)[0]
    ax[2].step(bins[1:], counts / (n * run.r_max * bin_ms), color="C0", where="pre",
               label=f"target, from its spikes ({bin_ms:g} ms bins)")
    ax[2].set_ylabel("memory rate f")
    ax[2].legend(fontsize=FONT["legend"], loc="center right")
    for k, other in study.runs.items():
        ax[3].plot(other.traj.t, other.traj.E[:, 0], lw=1, label=f"spiking, n = {k}")
    ax[3].plot(rate.t, rate.E[:, 0], "k--", lw=1.5, label="rate model")
    ax[3].set_ylabel("energy E")
    ax[3].set_xlabel("time (ms)")
    ax[3].legend(fontsize=FONT["legend"])
    fig.tight_layout()
    return fig


def plot_spiking_convergence(study):
    """Log-log against neurons per unit n: the RMS distance of the spiking rates g and f to the
    rate model's (with the n^(-1/2) of Poisson counts), and the summed / largest energy rise."""
    plt = _plt()
    rows = study.rows
    ns = np.array([r["n"] for r in rows], float)
    g = np.array([r["g_rms"] for r in rows])
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    ax[0].loglog(ns, g, "o-", label=f"feature rates g (slope {study.slopes['g']:.2f})")
    ax[0].loglog(ns, [r["f_rms"] for r in rows], "s-",
                 label=f"memory rates f (slope {study.slopes['f']:.2f})")
    ax[0].loglog(ns, g[0] * ns ** -0.5, "k:", label="n^(-1/2)")
    ax[0].set_xlabel("neurons per unit n")
    ax[0].set_ylabel("RMS distance to the rate model")
    ax[0].legend(fontsize=FONT["legend"])
    ax[1].loglog(ns, [r["total_rise"] for r in rows], "o-",
                 label=f"summed rises (slope {study.slopes['rise']:.2f})")
    ax[1].loglog(ns, [r["max_rise"] for r in rows], "s-", label="largest rise")
    ax[1].set_xlabel("neurons per unit n")
    ax[1].set_ylabel("energy increase")
    ax[1].legend(fontsize=FONT["legend"])
    fig.tight_layout()
    return fig
