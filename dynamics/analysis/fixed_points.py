"""Fixed points of the Krotov-Hopfield dynamics: Jacobian, stability, and comparison with single shot.

At a fixed point of the network's equations of motion (Network; docs/theory.md §2, and §5 for
what follows) h* = S(g*) and v* = I + sum_mu f_mu(h*) dS_mu/dg(g*). For dot similarity,
L_v = |v|^2/2 and I = 0 that is v* = M^T f(M v*), the fixed point of iterating the single-shot
map z = M^T sep(M q) (models.Memory.iterate); for other similarities it is not
(squared_euclidean with softmax gives v* = (2/3) M^T f). :func:`compare` measures that gap per
query, :func:`compare_table` per (similarity, separation) pair.

Readout of the dynamics (``readout=``): ``"v"`` the feature state v* itself; ``"v_minus_I"`` the
recurrent part v* - I = sum_mu f_mu dS_mu/dg (the natural output when the query is clamped as
I = q); ``"memory"`` the memory layer's projection P^T f(h*) (net.readout). ``"auto"`` (default)
is ``"v"`` with I = 0 and ``"v_minus_I"`` with a clamped input.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from uhn.models import Memory
from uhn.models.arrays import to_numpy
from uhn.models.separation import get_separation
from uhn.models.similarity import get_similarity

from uhn.dynamics.integrate import integrate
from uhn.dynamics.solvers.driver import NOISE_FACTOR
from uhn.dynamics.network import Network

READOUTS = ("auto", "v", "v_minus_I", "memory")


# ---------------------------------------------------------------------------------- Jacobian
def _one_state(net: Network, v, h):
    v = np.asarray(to_numpy(v), dtype=np.float64).reshape(-1)
    h = np.asarray(to_numpy(h), dtype=np.float64).reshape(-1)
    if v.shape != (net.D,) or h.shape != (net.N,):
        raise ValueError(f"shape mismatch: jacobian needs one state v ({net.D},) and h ({net.N},), "
                         f"got {v.shape} and {h.shape}")
    net.check_state(v[None], h[None])  # finite, right widths
    return v, h


def _I_row(net: Network, I):
    if I is None:
        return None
    I = np.asarray(to_numpy(I), dtype=np.float64).reshape(-1)
    if I.shape != (net.D,):
        raise ValueError(f"input current I must have shape ({net.D},), got {I.shape}")
    return I


def _hessian(lag, x):
    """Dense Hessian of a Lagrangian at one state x (K,), from K Hessian-vector products."""
    K = x.shape[0]
    return lag.hvp(np.broadcast_to(x, (K, K)).copy(), np.eye(K)).T


def jacobian(net: Network, v, h, I=None, eps: float = 1e-6, method: str = "auto") -> np.ndarray:
    """J = d(dv/dt, dh/dt)/d(v, h) at one state: dense (D + N, D + N), rows/columns ordered [v, h].

    Parameters
    ----------
    net : the Network.
    v, h : one state, (D,) and (N,) (or (1, D), (1, N)).
    I : input current (D,) (default net.I, i.e. 0 unless set).
    eps : relative step of the central differences, x +- eps * max(1, |x_j|) per coordinate.
    method : ``"fd"`` central differences (all 2 (D + N) perturbed states in one batched RHS call);
        ``"analytic"`` for dot similarity: J = [[-1/tau_v, M^T H_h / tau_v], [M H_v / tau_h, -1/tau_h]]
        with H the Lagrangians' Hessians; ``"auto"``: analytic for dot, else fd.

    A network on other arrays (torch, CuPy, ...) is analysed on its numpy copy
    (``Network.on_host``), as are the rest of this module's tools.
    """
    net = net.on_host()
    if method not in ("auto", "fd", "analytic"):
        raise ValueError(f"jacobian method must be 'auto', 'fd' or 'analytic', got {method!r}")
    v, h = _one_state(net, v, h)
    I = _I_row(net, I)
    D, N = net.D, net.N
    dot = isinstance(net, Network) and net.sim.name == "dot"
    if method == "analytic" and not dot:
        what = f"{net.sim.name!r}" if isinstance(net, Network) else f"a {type(net).__name__}"
        raise ValueError(f"analytic Jacobian is implemented for dot similarity only, not {what}; "
                         f"use method='fd'")
    if dot and method != "fd":
        Hv, Hh = _hessian(net.L_v, v), _hessian(net.L_h, h)
        J = np.empty((D + N, D + N))
        J[:D, :D] = -np.eye(D) / net.tau_v
        J[:D, D:] = net.M.T @ Hh / net.tau_v
        J[D:, :D] = net.M @ Hv / net.tau_h
        J[D:, D:] = -np.eye(N) / net.tau_h
        return J
    x = np.concatenate([v, h])
    K = D + N
    step = eps * np.maximum(1.0, np.abs(x))
    X = np.concatenate([x + np.diag(step), x - np.diag(step)])  # (2K, K)
    Iv = None if I is None else np.broadcast_to(I, (2 * K, D))
    dv, dh = net.rhs(X[:, :D], X[:, D:], Iv)
    R = np.concatenate([dv, dh], axis=1)
    return ((R[:K] - R[K:]) / (2 * step[:, None])).T


def jacobian_adiabatic(net: Network, v, I=None, eps: float = 1e-6) -> np.ndarray:
    """J = d(dv/dt)/dv of the reduced system (h = S(g)) at one state v (D,), central differences."""
    net = net.on_host()
    v = np.asarray(to_numpy(v), dtype=np.float64).reshape(-1)
    if v.shape != (net.D,):
        raise ValueError(f"shape mismatch: v must have shape ({net.D},), got {v.shape}")
    net.check_state(v[None])
    I = _I_row(net, I)
    D = net.D
    step = eps * np.maximum(1.0, np.abs(v))
    X = np.concatenate([v + np.diag(step), v - np.diag(step)])
    R = net.rhs_adiabatic(X, None if I is None else np.broadcast_to(I, (2 * D, D)))
    return ((R[:D] - R[D:]) / (2 * step[:, None])).T


@dataclass
class Stability:
    """Linear stability of one state: eigenvalues of the Jacobian, max real part, stable flag."""

    eigenvalues: np.ndarray
    max_real: float
    stable: bool          #: every eigenvalue has real part < -tol
    tol: float
    residual: float       #: max |dv/dt|, |dh/dt| at the state (a fixed point has ~0)


def stability(net: Network, v, h=None, I=None, *, adiabatic: bool = False, tol: float = 1e-9,
              method: str = "auto") -> Stability:
    """Eigenvalues of the Jacobian at (v, h); stable iff max Re(lambda) < -tol.

    ``adiabatic=True`` uses the reduced system's D x D Jacobian (h is ignored).
    """
    net = net.on_host()
    v, h, I = (None if x is None else to_numpy(x) for x in (v, h, I))
    if adiabatic:
        J = jacobian_adiabatic(net, v, I)
    else:
        if h is None:
            raise ValueError("stability of the full system needs the memory state h (or adiabatic=True)")
        J = jacobian(net, v, h, I, method=method)
    res = float(net.residual(v, h, I, adiabatic).max())
    lam = np.linalg.eigvals(J)
    mr = float(lam.real.max())
    return Stability(eigenvalues=lam, max_real=mr, stable=mr < -tol, tol=tol, residual=res)


def distance_bound(net: Network, v, h, I=None, method: str = "auto") -> float:
    """Linearised distance of the state y = (v, h) from the exact fixed point y* near it:
    y - y* = J^{-1} ydot + O(|ydot|^2), so |y - y*|_2 <= |ydot|_2 / sigma_min(J), J the Jacobian
    at y. An integrator stops where |ydot| is below its threshold, not at 0: this is how far its
    final state may lie from the fixed point (to first order)."""
    net = net.on_host()
    v, h = _one_state(net, v, h)
    I_row = _I_row(net, I)
    ydot = np.concatenate(net.rhs(v[None], h[None], None if I_row is None else I_row[None]), axis=1)[0]
    sigma_min = np.linalg.svd(jacobian(net, v, h, I, method=method), compute_uv=False)[-1]
    return float(np.linalg.norm(ydot) / sigma_min)


# ---------------------------------------------------------------------------------- comparison
def nearest(M, X):
    """Index of the nearest memory of each row of X (B, D) among the rows of M (N, D):
    argmin_mu |x - m_mu|^2 = argmin_mu (|x|^2 - 2 x.m_mu + |m_mu|^2), by one GEMM; ties to the
    lowest index; -1 for a row of X that is not finite."""
    if not np.all(np.isfinite(X)):
        ok = np.isfinite(X).all(1)
        return np.where(ok, nearest(M, np.where(ok[:, None], X, 0.0)), -1)
    d2 = (X * X).sum(1)[:, None] - 2.0 * X @ M.T + (M * M).sum(1)[None, :]
    return np.argmin(d2, axis=1)


def _targets(M, targets, B):
    t = np.asarray(targets)
    if t.ndim == 1 and np.issubdtype(t.dtype, np.integer):
        if t.shape != (B,):
            raise ValueError(f"shape mismatch: {B} queries but {t.shape[0]} target indices")
        if np.any((t < 0) | (t >= M.shape[0])):
            raise ValueError(f"target indices must lie in [0, {M.shape[0]})")
        return t.astype(int)
    t = np.atleast_2d(np.asarray(targets, dtype=np.float64))
    if t.shape != (B, M.shape[1]):
        raise ValueError(f"shape mismatch: targets must be {B} indices or a ({B}, {M.shape[1]}) array, "
                         f"got {t.shape}")
    return nearest(M, t)


def _dist(a, b):
    return np.linalg.norm(a - b, axis=1)


def compare(M, targets, queries, similarity="dot", separation="softmax", *, L_v=None,
            tau_v: float = 1.0, tau_h: float = 0.1, t_end: float = 50.0, method: str = "RK45",
            adiabatic: bool = False, input_mode: str = "initial", readout: str = "auto",
            rtol: float = 1e-8, atol: float = 1e-10, fixed_point_tol: float = 1e-8,
            noise_factor: float = NOISE_FACTOR,
            iterate_steps: int = 500, iterate_tol: float = 1e-10, max_nfev: int = 100_000) -> list:
    """Per query: the dynamics fixed point against the single-shot output z = Memory.retrieve(q)
    and the iterated single-shot fixed point (Memory.iterate), and each against the stored target.

    Parameters
    ----------
    M : (N, D) memories (autoassociative, P = M).
    targets : (B,) int indices into M, or (B, D) target patterns (their nearest memory is the target).
    queries : (B, D) queries (e.g. corrupted targets).
    similarity, separation : names or objects; the separation must have a convex Lagrangian
        (uhn.dynamics.lagrangians.for_separation), e.g. get_separation("softmax", beta=5).
    L_v : feature Lagrangian (default quadratic, g = v).
    tau_v, tau_h, t_end, method, adiabatic, input_mode, rtol, atol, fixed_point_tol,
    noise_factor, max_nfev : passed to uhn.dynamics.integrate.integrate (a fixed point is where every
        velocity is below fixed_point_tol + noise_factor (atol + rtol |y_i|) / tau_i, so the
        fixed points are accurate to about noise_factor * rtol relative: lower rtol for tighter ones).
    readout : which vector of the dynamics is compared (see the module docstring).
    iterate_steps, iterate_tol : Memory.iterate's limits.

    Returns one dict per query with keys: query, target, dyn_converged, dyn_residual, t_final,
    shot_retrieved / dyn_retrieved / iter_retrieved (nearest memory == target), dist_dyn_shot
    (|y* - z|), dist_dyn_iter (|y* - z_iter|), dist_shot_target, dist_dyn_target, dist_iter_target,
    iter_converged, iter_steps, readout (the readout used), energy_drop (E(0) - E(end)); and for the
    memory-layer readout y_mem = P^T f(h*) (always computed): mem_retrieved, dist_mem_shot,
    dist_mem_target.
    """
    if readout not in READOUTS:
        raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
    sim = get_similarity(similarity)
    sep = get_separation(separation)
    mem = Memory(M, similarity=sim, separation=sep)
    Q = np.atleast_2d(np.asarray(queries, dtype=np.float64))
    B = Q.shape[0]
    tidx = _targets(mem.M, targets, B)
    net = Network(mem, L_v=L_v, tau_v=tau_v, tau_h=tau_h)
    traj = integrate(net, Q, t_end, method=method, rtol=rtol, atol=atol, adiabatic=adiabatic,
                     input_mode=input_mode, fixed_point_tol=fixed_point_tol, noise_factor=noise_factor,
                     max_nfev=max_nfev)
    v_end, h_end = traj.v_final, traj.h_final
    if readout == "auto":
        readout = "v_minus_I" if input_mode == "clamped" or net.I is not None else "v"
    if readout == "v":
        y = v_end
    elif readout == "v_minus_I":
        y = v_end - traj.I
    else:
        y = net.readout(h_end)
    res = net.residual(v_end, h_end, traj.I, adiabatic)
    z = np.atleast_2d(mem.retrieve(Q))
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            it = mem.iterate(Q, max_steps=iterate_steps, tol=iterate_tol)
        zi, iter_conv, iter_steps, iter_error = (np.atleast_2d(it.states), it.converged,
                                                 np.atleast_1d(it.steps), "")
    except FloatingPointError as err:  # e.g. polynomial separation: the iterated map diverges
        zi = np.full_like(Q, np.nan)
        iter_conv, iter_steps, iter_error = np.zeros(B, bool), np.full(B, -1), str(err)
    T = mem.M[tidx]
    ym = net.readout(h_end)  # P^T f(h*): what the memory layer retrieves, whatever the similarity
    near_dyn, near_shot, near_iter = nearest(mem.M, y), nearest(mem.M, z), nearest(mem.M, zi)
    near_mem = nearest(mem.M, ym)
    d_ms, d_mt = _dist(ym, z), _dist(ym, T)
    d_ds, d_di = _dist(y, z), _dist(y, zi)
    d_st, d_dt, d_it = _dist(z, T), _dist(y, T), _dist(zi, T)
    drop = traj.E[0] - traj.E[-1]
    rows = []
    for b in range(B):
        rows.append({
            "query": b, "target": int(tidx[b]), "similarity": sim.name, "separation": sep.name,
            "readout": readout, "dyn_converged": bool(traj.converged[b]),
            "dyn_residual": float(res[b]), "t_final": float(traj.t[-1]),
            "iter_converged": bool(iter_conv[b]), "iter_steps": int(iter_steps[b]),
            "iter_error": iter_error,
            "dyn_retrieved": bool(near_dyn[b] == tidx[b]),
            "shot_retrieved": bool(near_shot[b] == tidx[b]),
            "iter_retrieved": bool(near_iter[b] == tidx[b]),
            "dist_dyn_shot": float(d_ds[b]), "dist_dyn_iter": float(d_di[b]),
            "dist_shot_target": float(d_st[b]), "dist_dyn_target": float(d_dt[b]),
            "dist_iter_target": float(d_it[b]), "energy_drop": float(drop[b]),
            "mem_retrieved": bool(near_mem[b] == tidx[b]), "dist_mem_shot": float(d_ms[b]),
            "dist_mem_target": float(d_mt[b]),
        })
    return rows


_FRACTIONS = ("dyn_converged", "iter_converged", "dyn_retrieved", "shot_retrieved", "iter_retrieved",
              "mem_retrieved")
_MEANS = ("dist_dyn_shot", "dist_dyn_iter", "dist_shot_target", "dist_dyn_target", "dist_iter_target",
          "dist_mem_shot", "dist_mem_target", "dyn_residual")


def summarise(rows: list) -> dict:
    """Aggregate :func:`compare` rows: fractions retrieved / converged and mean distances."""
    if not rows:
        raise ValueError("no rows to summarise")
    out = {k: rows[0][k] for k in ("similarity", "separation", "readout")}
    out["n"] = len(rows)
    for k in _FRACTIONS:
        out[k] = float(np.mean([r[k] for r in rows]))
    for k in _MEANS:
        vals = [r[k] for r in rows]
        out[k] = float(np.max(vals) if k == "dyn_residual" else np.mean(vals))
    out["error"] = ""
    return out


def compare_table(M, targets, queries, pairs, **kwargs) -> list:
    """:func:`summarise` (:func:`compare` (...)) for each entry of ``pairs`` on one dataset.

    ``pairs``: (similarity, separation) or (similarity, separation, overrides) with overrides a dict
    of :func:`compare` keywords for that pair (e.g. ``{"input_mode": "clamped"}`` for cosine,
    ``{"L_v": softplus()}`` for KL). An integration that stops with RuntimeError (too many RHS
    calls, e.g. a chattering non-smooth similarity) or FloatingPointError gives a row with
    ``error`` set and NaN numbers, not an exception: the table reports it.
    """
    table = []
    for entry in pairs:
        if len(entry) not in (2, 3):
            raise ValueError(f"each pair is (similarity, separation[, overrides]), got {entry!r}")
        sim, sep = entry[0], entry[1]
        kw = dict(kwargs, **(entry[2] if len(entry) == 3 else {}))
        try:
            table.append(summarise(compare(M, targets, queries, sim, sep, **kw)))
        except (RuntimeError, FloatingPointError, OverflowError) as err:
            nan = float("nan")
            row = {"similarity": get_similarity(sim).name, "separation": get_separation(sep).name,
                   "readout": kw.get("readout", "auto"), "n": len(np.atleast_2d(queries))}
            for k in _FRACTIONS + _MEANS:
                row[k] = nan
            row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
            table.append(row)
    return table


def format_table(table: list) -> str:
    """A plain-text (markdown) table of :func:`compare_table` / :func:`summarise` rows: fractions
    converged / retrieved, mean L2 distances (dist(v*, z) uses the chosen readout), max residual."""
    head = ("| similarity | separation | readout | n | dyn conv | iter conv | retrieved shot/iter/dyn/mem "
            "| dist(v*, z) | dist(v*, z_iter) | dist(P^T f(h*), z) | dist to target shot/iter/dyn/mem "
            "| max residual |")
    lines = [head, "|" + "---|" * 12]
    for r in table:
        if r.get("error"):
            lines.append(f"| {r['similarity']} | {r['separation']} | {r['readout']} | {r['n']} | "
                         f"{r['error']} | | | | | | | |")
            continue
        lines.append(
            f"| {r['similarity']} | {r['separation']} | {r['readout']} | {r['n']} | "
            f"{r['dyn_converged']:.2f} | {r['iter_converged']:.2f} | "
            f"{r['shot_retrieved']:.2f}/{r['iter_retrieved']:.2f}/{r['dyn_retrieved']:.2f}/"
            f"{r['mem_retrieved']:.2f} | {r['dist_dyn_shot']:.3g} | {r['dist_dyn_iter']:.3g} | "
            f"{r['dist_mem_shot']:.3g} | {r['dist_shot_target']:.3g}/{r['dist_iter_target']:.3g}/"
            f"{r['dist_dyn_target']:.3g}/{r['dist_mem_target']:.3g} | "
            f"{r['dyn_residual']:.1e} |")
    return "\n".join(lines)
