"""Numerical verification that the energy is a Lyapunov function along a trajectory (docs/theory.md
§7 Energy verification; the energy and its theorem: §3).

Checks, each reported with where it was worst (sample index, time, query):

1. monotonicity: the largest increase E(t_{k+1}) - E(t_k) between samples, relative to
   ``increase_tol = rtol_factor * rtol * max(|E|, 1) + atol_floor`` (rtol: the integrator's);
2. sign: the analytic dE/dt (Network.dEdt, docs/theory.md §3) at every sample must be
   <= FD_SAFETY times its round-off (that of the quadratic forms and of the velocity, see
   :func:`_dEdt_and_size`);
3. consistency: the analytic dE/dt against a central finite difference of E along the flow,
   fd(s) = (E(y + s ydot) - E(y - s ydot)) / (2 s), with a tolerance estimated per sample from the
   two errors of fd(s) (see :func:`_flow_fd`):

       round-off   R = ROUNDOFF_ULPS eps64 size(E) / s        (size(E): sum of |each term| of E)
       truncation  T = |fd(s) - fd(2 s)| / 3                  (Richardson: fd(s) = E' + E''' s^2/6 + ...)
       |analytic - fd(s)| <= FD_SAFETY (R + T + round-off of the analytic value)

   with s = (3 ROUNDOFF_ULPS eps64 size(E) / |E'''|)^(1/3), the step that balances the two (E'''
   from a pilot pair of differences); and, reported only, against np.gradient of the sampled E(t);
4. the trajectory solves the network's ODE: from each sample y(t_k) (all windows, or
   ``max_windows`` of them always including the first ones, where the transient is fastest) the
   flow is re-integrated to t_{k+1} with DOP853 at a tolerance far below the trajectory's, batched
   over windows and queries, and compared with the sample y(t_{k+1}) (:func:`_flow_deviation`
   derives the allowed deviation from the trajectory's integrator: tolerances and step count of an
   adaptive method, dt and order of a fixed-step one);
5. the stored ``traj.E`` and ``traj.dEdt`` against the values recomputed from the states: the same
   formula on the same states differs only by round-off (FD_SAFETY times ROUNDOFF_ULPS eps64 size(E)
   for E; for dE/dt, its round-off from :func:`_dEdt_and_size`, which counts the velocity's).

No relative floor is added to any tolerance: each is an estimate of the error of what is compared.

Checks 1-3 and 5 read only the sampled states and the network; check 4 is what catches a
trajectory of the wrong system (a buggy backend) checked against the right network.

A state that runs away (|v| growing by ``diverge_factor``) is flagged in ``diverging``: E then
decreases without bound, which is monotone but retrieves nothing. The Lagrangians' Hessians are
also probed on the states visited (convexity is what makes dE/dt <= 0 a theorem). Nothing is
clipped: a violation is reported with its size and location.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import factorial

import numpy as np
from scipy.integrate import solve_ivp

from uhn.dynamics.trajectory import Trajectory
from uhn.dynamics.lagrangians import NonConvexLagrangianError
from uhn.dynamics.network import Network

_EPS64 = np.finfo(np.float64).eps
#: round-off of one evaluation of E (or of dE/dt), in ulps of the summed sizes of its terms: each term
#: is a dot product, exp or log evaluated to a few ulps of the sum of |what it adds|
ROUNDOFF_ULPS = 4.0
#: an error is a violation when it exceeds FD_SAFETY times its estimate (an estimate of a bound, not
#: the bound: Richardson's truncation estimate is itself O(s^4)-accurate, round-off is a random walk)
FD_SAFETY = 10.0
#: verify_energy probes the Lagrangians' curvature at every (T B // CONVEXITY_ROWS)-th state row
CONVEXITY_ROWS = 256
#: right-hand-side evaluations per step of scipy's explicit methods (RK45 and RK45-batched: 6 with
#: first-same-as-last); an implicit method takes at least one evaluation per step
_STAGES = {"RK45": 6, "RK45-batched": 6, "reduced": 6, "RK23": 3, "DOP853": 12}
#: order of the brian2 schemes (uhn.dynamics.backends.brian2_rate): leapfrog is a midpoint split, second order;
#: brian2's default scheduling holds the coupling over the step, first order
_SCHEME_ORDER = {"leapfrog": 2, "default": 1}


@dataclass
class EnergyReport:
    """Outcome of :func:`verify_energy`. ``passed`` is True only if every check passed."""

    passed: bool
    max_increase: float          #: largest E(t_{k+1}) - E(t_k) over samples and queries
    max_increase_relative: float  #: that increase divided by max(|E|, 1) at that step
    increase_tol: float
    increase_at: tuple           #: (sample k, time t_k, query b) of the largest increase
    max_dEdt: float              #: largest analytic dE/dt (should be <= 0)
    dEdt_at: tuple
    sign_tol: float              #: allowed positive dE/dt (its round-off) at that sample
    fd_max_error: float          #: |analytic - fd| / |analytic| at the sample of the largest fd_ratio
    fd_tol: float                #: the allowed relative error at that sample (> it iff fd_ratio > 1)
    fd_at: tuple
    fd_checked: int              #: samples where the flow moved (velocity > 0), all compared
    sampled_fd_max_error: float  #: analytic vs np.gradient(E, t), relative; informational
    convex: bool
    diverging: str = ""          #: non-empty when the state ran away (E unbounded below)
    convexity_message: str = ""
    violations: list = field(default_factory=list)  #: human-readable failures
    fd_ratio: float = 0.0        #: max |analytic - fd| / allowed (a violation above 1)
    fd_roundoff: float = 0.0     #: round-off estimate R of fd at that sample
    fd_truncation: float = 0.0   #: Richardson truncation estimate T of fd at that sample
    flow_ratio: float = 0.0      #: max |re-integrated - sampled state| / allowed (violation above 1)
    flow_deviation: float = 0.0  #: that deviation (one state component)
    flow_tol: float = 0.0        #: its allowed value
    flow_at: tuple = (0, 0.0, 0)  #: (window start k, t_k, query b)
    flow_checked: int = 0        #: windows x queries re-integrated
    flow_model: str = ""         #: how the allowed deviation was derived
    stored_E_ratio: float = 0.0  #: max |traj.E - recomputed E| / round-off allowance
    stored_dEdt_ratio: float = 0.0  #: the same for traj.dEdt

    def summary(self) -> str:
        status = "PASS" if self.passed else "FAIL"
        lines = [f"energy check: {status}",
                 f"  largest increase of E between samples: {self.max_increase:.3e} "
                 f"(relative {self.max_increase_relative:.3e}, tolerance {self.increase_tol:.3e}) "
                 f"at sample/time/query {self.increase_at}",
                 f"  largest analytic dE/dt: {self.max_dEdt:.3e} (tolerance {self.sign_tol:.3e}) at "
                 f"{self.dEdt_at}",
                 f"  analytic dE/dt vs finite difference of E: worst error / allowed = {self.fd_ratio:.3g} "
                 f"at sample/time/query {self.fd_at} (relative error {self.fd_max_error:.3e}, allowed "
                 f"{self.fd_tol:.3e}: round-off {self.fd_roundoff:.2e} + truncation "
                 f"{self.fd_truncation:.2e}; {self.fd_checked} samples); vs sampled E(t): "
                 f"{self.sampled_fd_max_error:.3e}",
                 f"  samples solve the ODE: worst deviation / allowed = {self.flow_ratio:.3g} "
                 f"({self.flow_deviation:.3e} vs {self.flow_tol:.3e}) over the window from "
                 f"sample/time/query {self.flow_at}; {self.flow_checked} windows x queries "
                 f"re-integrated ({self.flow_model})",
                 f"  stored E / dE/dt vs recomputed: error / round-off allowance = "
                 f"{self.stored_E_ratio:.3g} / {self.stored_dEdt_ratio:.3g}",
                 f"  Lagrangian Hessians PSD on visited states: {self.convex} {self.convexity_message}"]
        if self.diverging:
            lines.append(f"  WARNING, diverging: {self.diverging}")
        lines += [f"  VIOLATION: {v}" for v in self.violations]
        return "\n".join(lines)


def _rowabs(a, b):
    return np.einsum("bk,bk->b", np.abs(a), np.abs(b))


def _states(net: Network, traj: Trajectory) -> np.ndarray:
    """Packed samples (T, B, W) in float64: [v, h] per query, or v alone for an adiabatic
    trajectory (float32 samples are exact float64 values; every check computes in float64)."""
    Y = traj.v if traj.adiabatic else np.concatenate([traj.v, traj.h], axis=2)
    return np.asarray(Y, dtype=np.float64)


def _energy_and_size(net: Network, Y, I, adiabatic: bool):
    """E at packed states Y (B, W), and size(E) (B,): the sum of |each term| that E adds up,

        sum_i |v_i g_i| + size(L_v(v)) + sum_i |I_i g_i| + sum_mu |h_mu f_mu| + size(L_h(h))
        + sum_mu |f_mu| (|S_mu| + (|m_mu| + |g|)^2)

    (adiabatic: h = S(g) and the E of docs/theory.md §4: sum_mu |S_mu f_mu(S)| + size(L_h(S)) for
    the memory part). size(L) is :meth:`Lagrangian.value_size`, the terms the Lagrangian's value
    adds; (|m_mu| + |g|)^2 bounds the terms a similarity score adds before they cancel (the GEMM
    form |m|^2 - 2 m.g + |g|^2 of squared_euclidean, m.g of dot). ROUNDOFF_ULPS eps64 size(E)
    estimates the round-off of E: round-off follows the size of what is added, not of the result."""
    if hasattr(net, "energy_and_size"):     # a network of more layers (uhn.dynamics.hierarchical)
        return net.energy_and_size(Y, I, adiabatic)
    n = len(Y)
    v = Y if adiabatic else Y[:, :net.D]
    g = net.L_v.grad(v)
    S = net.similarity(g)
    span = (np.linalg.norm(net.M, axis=1)[None, :] + np.linalg.norm(g, axis=1)[:, None]) ** 2
    size = _rowabs(v, g) + net.L_v.value_size(v) + _rowabs(net.input_current(I, n), g)
    if adiabatic:
        E = net.energy_adiabatic(v, I)
        f = net.L_h.grad(S)
        size += _rowabs(S, f) + net.L_h.value_size(S)
    else:
        h = Y[:, net.D:]
        E = net.energy(v, h, I)
        f = net.L_h.grad(h)
        size += _rowabs(h, f) + net.L_h.value_size(h)
    size += _rowabs(f, np.abs(S) + span)
    return E, size


def _dEdt_and_size(net: Network, Y, F, I, adiabatic: bool):
    """Analytic dE/dt at Y (B, W) with velocity F, the size of its terms and its round-off, (B,) each.

    size = tau_v sum_i |vdot_i| hvp_size(v, vdot)_i + the same for h: the terms the quadratic forms
    vdot^T H vdot add before they cancel (:meth:`Lagrangian.hvp_size`; e.g. the spherical Hessian
    (u - g (g.u)) / |v| along the radial flow, where dE/dt = 0 exactly).
    Round-off: ROUNDOFF_ULPS eps64 size, plus what the velocity's own round-off dF contributes to
    the quadratic form, (F + dF)^T H (F + dF) - F^T H F = 2 F^T H dF + dF^T H dF, bounded by
    2 tau hvp_size(F) . |dF| + tau hvp_size(dF) . |dF| (the second term is what remains at a fixed
    point, where F may come out exactly 0 in one evaluation and a few ulps in another). dF is a few
    ulps of what the right-hand side (Network, docs/theory.md §2) adds: for dv/dt the terms of
    the contraction, bounded by |f| |M| + |f|_1 |g| (the vjp of dot / squared_euclidean-type
    similarities), and |v| + |I|; for dh/dt |S| + (|m| + |g|)^2 and |h|. Near a fixed point they
    cancel to a velocity many orders below them."""
    if hasattr(net, "dEdt_and_size"):       # a network of more layers (uhn.dynamics.hierarchical)
        return net.dEdt_and_size(Y, F, I, adiabatic, ROUNDOFF_ULPS)
    D = net.D
    v = Y if adiabatic else Y[:, :D]
    g = net.L_v.grad(v)
    S = net.similarity(g)
    absM = np.abs(net.M)
    f = net.L_h.grad(S if adiabatic else Y[:, D:])
    I_abs = np.abs(net.input_current(I, len(Y)))
    dv = F if adiabatic else F[:, :D]
    drive = np.abs(f) @ absM + np.abs(f).sum(1, keepdims=True) * np.abs(g)
    err_v = ROUNDOFF_ULPS * _EPS64 * (drive + np.abs(v) + I_abs) / net.tau_v
    Hv = net.L_v.hvp_size(v, dv)
    size = net.tau_v * _rowabs(dv, Hv)
    prop = net.tau_v * (2 * _rowabs(Hv, err_v) + _rowabs(net.L_v.hvp_size(v, err_v), err_v))
    if adiabatic:
        an = net.dEdt_adiabatic(v, I)
    else:
        h, dh = Y[:, D:], F[:, D:]
        an = net.dEdt(v, h, I)
        span = (np.linalg.norm(net.M, axis=1)[None, :] + np.linalg.norm(g, axis=1)[:, None]) ** 2
        err_h = ROUNDOFF_ULPS * _EPS64 * (np.abs(S) + span + np.abs(h)) / net.tau_h
        Hh = net.L_h.hvp_size(h, dh)
        size += net.tau_h * _rowabs(dh, Hh)
        prop += net.tau_h * (2 * _rowabs(Hh, err_h) + _rowabs(net.L_h.hvp_size(h, err_h), err_h))
    return an, size, ROUNDOFF_ULPS * _EPS64 * size + prop


def _flow_fd(net: Network, traj: Trajectory, safety: float):
    """At every sample: analytic dE/dt, the central difference fd(s) of E along the flow, and the
    allowed |analytic - fd|, all (T, B), plus the round-off R and truncation T estimates and the
    mask of samples where the state moves.

    fd(s) = (E(y + s ydot) - E(y - s ydot)) / (2 s) = E' + E''' s^2 / 6 + O(s^4), E' = dE/dt.
    Round-off: each E carries ~ ROUNDOFF_ULPS eps64 size(E), so fd carries R = ROUNDOFF_ULPS eps64
    size(E) / s. Truncation: fd(2 s) - fd(s) = E''' s^2 / 2, so T = |fd(s) - fd(2 s)| / 3 estimates
    |fd(s) - E'|. The step minimises R + |E'''| s^2 / 6: s = (3 ROUNDOFF_ULPS eps64 size / |E'''|)^(1/3),
    with |E'''| = 2 |fd(2 s0) - fd(s0)| / s0^2 from a pilot step s0 = eps64^(1/3) tau, tau =
    max(1, |y|) / |ydot| the time in which the state moves by its own size (s is kept within
    [s0/10, 10 s0]: a pilot difference lost in round-off gives s ~ s0)."""
    Ys = _states(net, traj)
    T, B, _ = Ys.shape
    out = {k: np.zeros((T, B)) for k in ("an", "fd", "allowed", "R", "T", "scale", "an_roundoff")}
    moving = np.zeros((T, B), bool)
    for k in range(T):
        Y = Ys[k]
        F = net.velocity(Y, traj.I, traj.adiabatic)
        an, scale, an_roundoff = _dEdt_and_size(net, Y, F, traj.I, traj.adiabatic)
        speed = np.abs(F).max(1)
        mv = speed > 0
        tau = np.where(mv, np.maximum(1.0, np.abs(Y).max(1)) / np.where(mv, speed, 1.0), 0.0)

        def fd(s):
            Ep, sp = _energy_and_size(net, Y + s[:, None] * F, traj.I, traj.adiabatic)
            Em, sm = _energy_and_size(net, Y - s[:, None] * F, traj.I, traj.adiabatic)
            return (Ep - Em) / np.where(mv, 2 * s, 1.0), np.maximum(sp, sm)

        s0 = _EPS64 ** (1 / 3) * tau
        p1, z1 = fd(s0)
        p2, z2 = fd(2 * s0)
        roundoff_E = ROUNDOFF_ULPS * _EPS64 * np.maximum(z1, z2)
        E3 = 2 * np.abs(p2 - p1) / np.where(mv, s0, 1.0) ** 2
        s_opt = np.cbrt(3 * roundoff_E / np.where(E3 > 0, E3, 1.0))
        s = np.where(E3 > 0, np.clip(s_opt, s0 / 10, 10 * s0), 10 * s0)
        f1, z1 = fd(s)
        f2, z2 = fd(2 * s)
        R = ROUNDOFF_ULPS * _EPS64 * np.maximum(z1, z2) / np.where(mv, s, 1.0)
        Tr = np.abs(f1 - f2) / 3
        out["an"][k], out["scale"][k], out["an_roundoff"][k] = an, scale, an_roundoff
        out["fd"][k] = np.where(mv, f1, an)
        out["R"][k], out["T"][k] = np.where(mv, R, 0.0), np.where(mv, Tr, 0.0)
        out["allowed"][k] = safety * (out["R"][k] + out["T"][k] + an_roundoff)
        moving[k] = mv
    return out, moving


def _windows(n: int, max_windows: int) -> np.ndarray:
    """Indices of the windows [t_k, t_(k+1)] to re-integrate: all n, or max_windows of them: the
    first half of the budget consecutively from k = 0 (the fast early transient), the rest evenly
    spread over what remains."""
    if n <= max_windows:
        return np.arange(n)
    head = max_windows // 2
    rest = np.unique(np.linspace(head, n - 1, max_windows - head).round().astype(int))
    return np.concatenate([np.arange(head), rest])


def _flow_deviation(net: Network, traj: Trajectory, safety: float, max_windows: int):
    """Re-integrate the network's ODE from sampled states and compare with the next samples.

    For each chosen window k and query b, y(t_k) is integrated to t_(k+1) (or to the query's
    ``t_final_per_query`` if it stopped inside the window: RK45-batched holds a stopped query's
    state in later samples, and windows after it are skipped). All windows and queries are one
    solve_ivp(DOP853) system in the window's own time s in [0, 1], dy/ds = (t_(k+1) - t_k) F(y),
    at rtol_ref = clip(rtol / 1000, 1e-13, 1e-10) (1e-11 for fixed-step runs), atol_ref =
    rtol_ref * 1e-2, so its error stays three orders below the trajectory's.

    Allowed deviation of each component i (all times ``safety``):

    * adaptive method with rtol, atol: the error accumulated over the window is at most the sum
      of the local errors of its steps, each <= (atol + rtol |y_i|) sqrt(n_norm) (the step
      controller bounds the RMS over n_norm components: the whole flattened batch for solve_ivp,
      one query's row when ``nfev_per_query`` is recorded), and the window has at most
      n_steps = nfev / stages steps (stages per accepted step: RK45 6, RK23 3, DOP853 12; any
      other method, implicit ones included, at least one evaluation per step: nfev). The flows
      here are dissipative, so local errors are not amplified along the window.
    * fixed step dt of order p (brian2: params ``dt``, ``scheme``; leapfrog p = 2, default p = 1):
      local error dt^(p+1) |y^(p+1)| / (p+1)! per step, times the n = (t_(k+1) - t_k) / dt steps of
      the window, plus dt^p |y^(p)| for the recorded state itself (the leapfrog run records h at
      half steps and interpolates it to whole ones), with y^(p) = d^(p-1) F/dt^(p-1) from
      differences of F along the reference at spacing <= dt.
    * plus the reference's own error, (atol_ref + rtol_ref |y_i|) sqrt(n_ref) times its steps.

    Returns None when there is no window to check, else a dict with the worst ratio and where."""
    Ys = _states(net, traj)
    T, B, W = Ys.shape
    if T < 2:
        return None
    t = np.asarray(traj.t, dtype=np.float64)
    per_query = {k: np.asarray(traj.params[k], dtype=np.float64) for k in ("t_final_per_query", "nfev_per_query")
                 if np.size(traj.params.get(k, ())) == B}   # ignored unless one entry per query here
    t_stop = per_query.get("t_final_per_query", np.full(B, t[-1]))
    kk, bb = (a.ravel() for a in np.meshgrid(_windows(T - 1, max_windows), np.arange(B), indexing="ij"))
    t1 = np.minimum(t[kk + 1], t_stop[bb])
    keep = t1 > t[kk]
    kk, bb, t1 = kk[keep], bb[keep], t1[keep]
    if not len(kk):
        return None
    dur = t1 - t[kk]
    Y0, Y1 = Ys[kk, bb], Ys[kk + 1, bb]
    I = np.asarray(traj.I, dtype=np.float64)[bb]
    rows = len(kk)
    fixed = "dt" in traj.params and "rtol" not in traj.params
    if fixed:
        dt = float(traj.params["dt"])
        scheme = traj.params.get("scheme", "")
        if "order" in traj.params:
            p = int(traj.params["order"])
        elif scheme in _SCHEME_ORDER:
            p = _SCHEME_ORDER[scheme]
        else:
            raise ValueError(f"verify_energy: fixed-step trajectory (dt = {dt:g}) of unknown scheme "
                             f"{scheme!r} and no recorded 'order' in traj.params: its accuracy is unknown")
        rtol_ref = 1e-11
        m = max(int(np.ceil(dur.max() / dt - 1e-9)), p + 1)   # reference points per window: spacing <= dt
    else:
        rtol, atol = float(traj.params.get("rtol", 1e-8)), float(traj.params.get("atol", 1e-10))
        rtol_ref = float(np.clip(rtol / 1000, 1e-13, 1e-10))
        m = 1
    atol_ref = rtol_ref * 1e-2
    s_eval = np.linspace(0.0, 1.0, m + 1)

    def fun(s, y):
        return (net.velocity(y.reshape(rows, W), I, traj.adiabatic) * dur[:, None]).ravel()

    sol = solve_ivp(fun, (0.0, 1.0), Y0.ravel(), method="DOP853", rtol=rtol_ref, atol=atol_ref,
                    t_eval=s_eval)
    if sol.status < 0:
        raise RuntimeError(f"verify_energy: re-integrating the sampled windows failed: {sol.message}")
    ref = sol.y.T.reshape(m + 1, rows, W)
    Yref = ref[-1]
    mag = np.maximum(np.abs(Y0), np.abs(Y1))
    ref_steps = max(1, sol.nfev // _STAGES["DOP853"])
    ref_err = (atol_ref + rtol_ref * mag) * np.sqrt(rows * W) * ref_steps
    if fixed:
        # |y^(j)|, j = 1 .. p+1, from differences of F along the reference (spacing delta <= dt)
        F = np.stack([net.velocity(ref[j], I, traj.adiabatic) for j in range(m + 1)])  # (m+1, rows, W)
        delta = (dur / m)[:, None]
        tau_min = net.tau_v if traj.adiabatic else min(net.tau_v, net.tau_h)
        deriv = [np.abs(np.diff(F, n=j - 1, axis=0)).max(0) / delta ** (j - 1) for j in range(1, p + 2)]
        # a derivative of order p+1 may also come as y^(j) / tau^(p+1-j): the stiff decay 1/tau_min
        # enters the scheme's error constant (the split and the half-step interpolation of h)
        scale_local = np.max([d / tau_min ** (p + 1 - j) for j, d in enumerate(deriv, 1)], axis=0)
        scale_rec = np.max([d / tau_min ** (p - j) for j, d in enumerate(deriv[:p], 1)], axis=0)
        n_steps = np.maximum(np.round(dur / dt), 1.0)[:, None]
        model_err = n_steps * dt ** (p + 1) * scale_local / factorial(p + 1) + dt ** p * scale_rec
        model = f"fixed step dt = {dt:g}, order {p}"
    else:
        method = traj.method
        stages = _STAGES.get(method, 1)
        if "nfev_per_query" in per_query:        # a step size and an error norm per query
            nfev = per_query["nfev_per_query"][bb]
            n_norm = W
        else:
            nfev = np.full(rows, float(traj.params.get("nfev", 1)))
            n_norm = B * W
        amp = 1.0
        if method == "reduced":
            # uhn.dynamics.solvers.reduced controls the error of (a, h, e), 2N + 1 numbers per query, and
            # v = c + M^T a carries a's error amplified by at most max_i sum_mu |M_mu,i|
            n_norm = 2 * net.N + 1
            amp = max(1.0, float(np.abs(net.M).sum(axis=0).max()))
        n_steps = np.maximum(nfev / stages, 1.0)[:, None]
        model_err = amp * n_steps * np.sqrt(n_norm) * (atol + rtol * mag)
        model = f"{method}, rtol {rtol:g}, atol {atol:g}, <= nfev / {stages} steps per window"
    allowed = safety * (model_err + ref_err)
    dev = np.abs(Yref - Y1)
    ratio = dev / allowed
    r, i = np.unravel_index(np.argmax(ratio), ratio.shape)
    return {"ratio": float(ratio[r, i]), "dev": float(dev[r, i]), "allowed": float(allowed[r, i]),
            "at": (int(kk[r]), float(t[kk[r]]), int(bb[r])), "component": int(i),
            "checked": rows, "model": model, "t1": float(t1[r]),
            "bad": [(int(kk[j]), int(bb[j]), float(ratio[j].max())) for j in np.flatnonzero(ratio.max(1) > 1)]}


def verify_energy(net: Network, traj: Trajectory, *, rtol_factor: float = 10.0,
                  atol_floor: float = 1e-12, fd_safety: float = FD_SAFETY,
                  flow_safety: float = FD_SAFETY, max_windows: int = 40, diverge_factor: float = 1e3,
                  check_convexity: bool = True) -> EnergyReport:
    """Check that ``traj`` solves ``net``'s ODE and that E decreases along it (energies recomputed in
    float64 from the states); see the module docstring for the checks and their error estimates.

    Parameters
    ----------
    rtol_factor, atol_floor : an increase between samples is a violation when it exceeds
        rtol_factor * rtol * max(|E|, 1) + atol_floor (rtol from the trajectory's integrator;
        for fixed-step backends, the ``rtol`` recorded in its params).
    fd_safety : |analytic dE/dt - fd| may be at most fd_safety times the estimated round-off +
        truncation of fd (and round-off of the analytic value) at that sample; analytic dE/dt may
        exceed 0 by at most fd_safety times its round-off; stored E and dE/dt may differ from the
        recomputed ones by at most fd_safety times their round-off.
    flow_safety : a sampled state may deviate from the re-integrated flow by at most flow_safety
        times the error the trajectory's integrator can have made over the window.
    max_windows : re-integrate at most this many sample windows (the first ones and a spread).
    diverge_factor : a query that did not converge and whose |v| ends above
        diverge_factor * max(|v(0)|, 1) is reported as diverging (E decreasing without bound is no
        evidence of retrieval). A non-finite energy at any sample is a violation.
    check_convexity : probe u^T Hess(L) u >= 0 (Lagrangian.check_convex: 8 random directions u)
        at a subsample of the visited states, every (T B // CONVEXITY_ROWS)-th of the T B state rows of v
        (and of h), 256 to 511 rows when T B >= 256, every row below: a spot check of the
        curvature the Lyapunov argument needs (the dE/dt <= 0 check at every sample covers the
        directions the trajectory moved in).
    """
    net = net.on_host()         # a network on other arrays: checked on its numpy copy
    for name, val in (("fd_safety", fd_safety), ("flow_safety", flow_safety)):
        if not (np.isfinite(val) and val >= 1):
            raise ValueError(f"{name} must be a finite factor >= 1 on an error estimate, got {val}")
    if int(max_windows) != max_windows or max_windows < 1:
        raise ValueError(f"max_windows must be a positive integer, got {max_windows}")
    Ys = _states(net, traj)
    T, B = Ys.shape[:2]
    pairs = [_energy_and_size(net, Ys[k], traj.I, traj.adiabatic) for k in range(T)]
    E = np.stack([p[0] for p in pairs])
    E_size = np.stack([p[1] for p in pairs])
    violations = []
    if not np.all(np.isfinite(E)):
        # every comparison below is False for NaN, so a NaN energy would otherwise pass silently
        kn, bn = np.argwhere(~np.isfinite(E))[0]
        violations.append(f"E is not finite ({E[kn, bn]}) at t={traj.t[kn]:.6g} (query {bn}), "
                          f"{int((~np.isfinite(E)).sum())} samples: the state left the range where "
                          f"the energy can be evaluated")
    rtol = float(traj.params.get("rtol", 1e-8))
    absE = np.maximum(np.abs(E), 1.0)

    # 1. monotonicity between samples
    if T > 1:
        inc = np.diff(E, axis=0)
        tol_k = rtol_factor * rtol * absE[:-1] + atol_floor
        k, b = np.unravel_index(np.argmax(inc), inc.shape)
        max_inc = float(inc[k, b])
        worst_ratio = inc / tol_k
        bad = np.argwhere(worst_ratio > 1)
        for kk, bb in bad[:5]:
            violations.append(f"E rose by {inc[kk, bb]:.3e} from t={traj.t[kk]:.6g} to "
                              f"t={traj.t[kk + 1]:.6g} (query {bb}); tolerance {tol_k[kk, bb]:.3e}")
        if len(bad) > 5:
            violations.append(f"... and {len(bad) - 5} more increases above tolerance")
        inc_at = (int(k), float(traj.t[k]), int(b))
        inc_rel = max_inc / absE[k, b]
        inc_tol = float(tol_k[k, b])
    else:
        max_inc, inc_rel, inc_tol, inc_at = 0.0, 0.0, atol_floor, (0, float(traj.t[0]), 0)

    # 2 and 3. analytic dE/dt: sign and agreement with finite differences
    fdo, moving = _flow_fd(net, traj, fd_safety)
    an, fd, scale = fdo["an"], fdo["fd"], fdo["scale"]
    slack = fd_safety * fdo["an_roundoff"]
    k, b = np.unravel_index(np.argmax(an - slack), an.shape)
    max_dEdt = float(an.max())
    if np.any(an > slack):
        kk, bb = np.argwhere(an > slack)[0]
        violations.append(f"analytic dE/dt = {an[kk, bb]:.3e} > 0 at t={traj.t[kk]:.6g} (query {bb})")
    fd_err = np.abs(an - fd)
    fd_ratio = np.where(moving, fd_err / np.maximum(fdo["allowed"], 1e-300), 0.0)
    kf, bf = np.unravel_index(np.argmax(fd_ratio), fd_ratio.shape)
    if fd_ratio[kf, bf] > 1:
        violations.append(
            f"analytic dE/dt {an[kf, bf]:.6e} differs from the finite difference {fd[kf, bf]:.6e} "
            f"at t={traj.t[kf]:.6g} (query {bf}) by {fd_err[kf, bf]:.3e}, {fd_ratio[kf, bf]:.3g} times "
            f"the allowed {fdo['allowed'][kf, bf]:.3e} (round-off {fdo['R'][kf, bf]:.2e}, truncation "
            f"{fdo['T'][kf, bf]:.2e}); {int((fd_ratio > 1).sum())} samples over")
    den = np.maximum(np.abs(an[kf, bf]), 1e-300)
    if T > 2:
        grad = np.gradient(E, traj.t, axis=0)
        sampled = float((np.abs(grad - an) / np.maximum(np.abs(an).max(0), 1e-12)).max())
    else:
        sampled = float("nan")

    # 4. the samples solve the network's ODE
    flow = _flow_deviation(net, traj, flow_safety, max_windows)
    if flow is not None and flow["ratio"] > 1:
        k4, t4, b4 = flow["at"]
        violations.append(
            f"the samples do not solve this network's ODE: re-integrated from t={t4:.6g} to "
            f"t={flow['t1']:.6g} (query {b4}), state component {flow['component']} differs from the "
            f"sample by {flow['dev']:.3e}, {flow['ratio']:.3g} times the allowed {flow['allowed']:.3e} "
            f"({flow['model']}); {len(flow['bad'])} of {flow['checked']} windows x queries over")

    # 5. stored E and dE/dt against the recomputed values (same formula, same states: round-off)
    stored_E = np.abs(np.asarray(traj.E) - E) / (fd_safety * ROUNDOFF_ULPS * _EPS64 * np.maximum(E_size, 1e-300))
    stored_dE = np.abs(np.asarray(traj.dEdt) - an) / (fd_safety * np.maximum(fdo["an_roundoff"], 1e-300))
    for name, rat, ref in (("E", stored_E, E), ("dE/dt", stored_dE, an)):
        if np.any(~(rat <= 1)):
            ks, bs = np.unravel_index(np.argmax(np.where(np.isnan(rat), np.inf, rat)), rat.shape)
            stored = (traj.E if name == "E" else traj.dEdt)[ks, bs]
            violations.append(f"stored traj.{'E' if name == 'E' else 'dEdt'} = {stored:.17g} at "
                              f"t={traj.t[ks]:.6g} (query {bs}) differs from {name} recomputed from "
                              f"the state, {ref[ks, bs]:.17g}, beyond round-off "
                              f"({int((~(rat <= 1)).sum())} samples)")

    # 6. boundedness (reported, not a failure of monotonicity): E may fall without bound while
    # the state runs away (e.g. dot + identity separation, whose linear dynamics grow like
    # exp((lambda_max(M^T M) - 1) t)); E then decreases but no attractor is reached
    # (a query at a fixed point is no runaway, however large |v*| is: saturated tanh / sigmoid
    # rates put genuine fixed points at |v*| ~ 1e3-1e6)
    n0 = np.linalg.norm(traj.v[0], axis=1)
    n1 = np.linalg.norm(traj.v[-1], axis=1)
    grew = (n1 > diverge_factor * np.maximum(n0, 1.0)) & ~np.asarray(traj.converged, dtype=bool)
    diverging = ""
    if np.any(grew):
        b = int(np.argmax(np.where(grew, n1 / np.maximum(n0, 1.0), -np.inf)))
        diverging = (f"|v| grew from {n0[b]:.3g} to {n1[b]:.3g} by t={traj.t[-1]:.6g} (query {b}) while "
                     f"E fell to {E[-1, b]:.3g}: E is unbounded below along this run, no attractor")

    convex, cmsg = True, ""
    if check_convexity:
        stride = max(1, T * B // CONVEXITY_ROWS)
        try:
            if hasattr(net, "layer_states"):    # a network of more layers: every layer's Lagrangian
                net.check_convex(traj.v.reshape(-1, traj.v.shape[-1])[::stride],
                                 traj.h.reshape(-1, traj.h.shape[-1])[::stride])
            else:
                net.L_v.check_convex(traj.v.reshape(-1, traj.v.shape[-1])[::stride])
                if not traj.adiabatic:
                    net.L_h.check_convex(traj.h.reshape(-1, traj.h.shape[-1])[::stride])
        except NonConvexLagrangianError as err:
            convex, cmsg = False, str(err)
            violations.append(cmsg)

    flow = flow or {"ratio": 0.0, "dev": 0.0, "allowed": 0.0, "at": (0, float(traj.t[0]), 0),
                    "checked": 0, "model": "single sample: nothing to re-integrate"}
    return EnergyReport(
        passed=not violations, max_increase=max_inc, max_increase_relative=float(inc_rel),
        increase_tol=inc_tol, increase_at=inc_at, max_dEdt=max_dEdt,
        dEdt_at=(int(k), float(traj.t[k]), int(b)), sign_tol=float(slack[k, b]),
        fd_max_error=float(fd_err[kf, bf] / den), fd_tol=float(fdo["allowed"][kf, bf] / den),
        fd_at=(int(kf), float(traj.t[kf]), int(bf)), fd_checked=int(moving.sum()),
        sampled_fd_max_error=sampled, convex=convex, convexity_message=cmsg, diverging=diverging,
        violations=violations, fd_ratio=float(fd_ratio[kf, bf]), fd_roundoff=float(fdo["R"][kf, bf]),
        fd_truncation=float(fdo["T"][kf, bf]), flow_ratio=flow["ratio"], flow_deviation=flow["dev"],
        flow_tol=flow["allowed"], flow_at=flow["at"], flow_checked=flow["checked"],
        flow_model=flow["model"], stored_E_ratio=float(np.nanmax(stored_E)),
        stored_dEdt_ratio=float(np.nanmax(stored_dE)))
