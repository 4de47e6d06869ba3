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
4. the trajectory solves the network's ODE: from sampled states y(t_k) the flow is re-integrated
   to t_{k+1} with DOP853 at a tolerance far below the trajectory's, batched over windows and
   queries, and compared with the sample y(t_{k+1}) (:func:`_flow_deviation` derives the allowed
   deviation from the trajectory's integrator: tolerances and step count of an adaptive method, dt
   and order of a fixed-step one). Which windows: within ``flow_budget`` times the integration's
   own right-hand-side evaluations, those with the largest trapezoid defect (where the samples
   agree least with the network's velocity) and a seeded random sample, whose size bounds the
   fraction of bad windows that could go unseen (docs/theory.md §7);
5. the stored ``traj.E`` and ``traj.dEdt`` against the values recomputed from the states: the same
   formula on the same states differs only by round-off (FD_SAFETY times ROUNDOFF_ULPS eps64 size(E)
   for E; for dE/dt, its round-off from :func:`_dEdt_and_size`, which counts the velocity's).

No relative floor is added to any tolerance: each is an estimate of the error of what is compared.

Checks 1-3 and 5 read only the sampled states and the network; check 4 is what catches a
trajectory of the wrong system (a buggy backend) checked against the right network.

A state that runs away (|v| growing by ``diverge_factor``) is flagged in ``diverging`` and fails: E then
decreases without bound, which is monotone but retrieves nothing. The Lagrangians' Hessians are
also checked on the states visited (convexity is what makes dE/dt <= 0 a theorem: random
directions and the smallest eigenvalue, Lagrangian.check_convex). Nothing is clipped: a violation
is reported with its size and location.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from math import factorial

import numpy as np
from scipy.integrate import solve_ivp
from threadpoolctl import threadpool_limits

from uhn.models.arrays import abs_rowdot

from uhn.dynamics.trajectory import Trajectory
from uhn.dynamics.lagrangians import NonConvexLagrangianError
from uhn.dynamics.network import Network
from uhn.dynamics.solvers.driver import BLAS_THREADS, time_bar

_EPS64 = np.finfo(np.float64).eps
#: round-off of one evaluation of E (or of dE/dt), in ulps of the summed sizes of its terms: each term
#: is a dot product, exp or log evaluated to a few ulps of the sum of |what it adds|
ROUNDOFF_ULPS = 4.0
#: an error is a violation when it exceeds FD_SAFETY times its estimate (an estimate of a bound, not
#: the bound: Richardson's truncation estimate is itself O(s^4)-accurate, round-off is a random walk)
FD_SAFETY = 10.0
#: verify_energy probes the Lagrangians' curvature at every (T B // CONVEXITY_ROWS)-th state row
CONVEXITY_ROWS = 256
#: the finite-difference check evaluates this many (sample, query) rows per batched call
FD_CHUNK_ROWS = 1024
#: a finite-difference step within this factor of the pilot step s0 reuses the pilot pair (at s0,
#: R + T is at most (FD_REUSE^2 + 2 / FD_REUSE) / 3 = 5/3 times its minimum over s)
FD_REUSE = 2.0
#: the flow check's first round re-integrates this many windows x queries whatever the budget
MIN_FLOW_ROWS = 8   # half from each of the two streams
#: default ``flow_budget``: the re-integration's right-hand-side row evaluations, as a multiple of the
#: trajectory's own (docs/theory.md §7: with the other checks, verify_energy then costs about what
#: the integration cost)
FLOW_BUDGET = 0.5
#: verify_energy's progress bar appears once the check has run this many seconds
PROGRESS_DELAY = 2.0
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
    flow_coverage: str = ""      #: which windows were re-integrated and what the sample guarantees
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
                 f"re-integrated ({self.flow_model})" + (f"; {self.flow_coverage}" if self.flow_coverage else ""),
                 f"  stored E / dE/dt vs recomputed: error / round-off allowance = "
                 f"{self.stored_E_ratio:.3g} / {self.stored_dEdt_ratio:.3g}",
                 f"  Lagrangian Hessians PSD on visited states: {self.convex} {self.convexity_message}"]
        if self.diverging:
            lines.append(f"  WARNING, diverging: {self.diverging}")
        lines += [f"  VIOLATION: {v}" for v in self.violations]
        return "\n".join(lines)


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
    size = abs_rowdot(v, g) + net.L_v.value_size(v) + abs_rowdot(net.input_current(I, n), g)
    if adiabatic:
        E = net.energy_adiabatic(v, I)
        f = net.L_h.grad(S)
        size += abs_rowdot(S, f) + net.L_h.value_size(S)
    else:
        h = Y[:, net.D:]
        E = net.energy(v, h, I)
        f = net.L_h.grad(h)
        size += abs_rowdot(h, f) + net.L_h.value_size(h)
    size += abs_rowdot(f, np.abs(S) + span)
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
    size = net.tau_v * abs_rowdot(dv, Hv)
    prop = net.tau_v * (2 * abs_rowdot(Hv, err_v) + abs_rowdot(net.L_v.hvp_size(v, err_v), err_v))
    if adiabatic:
        an = net.dEdt_adiabatic(v, I)
    else:
        h, dh = Y[:, D:], F[:, D:]
        an = net.dEdt(v, h, I)
        span = (np.linalg.norm(net.M, axis=1)[None, :] + np.linalg.norm(g, axis=1)[:, None]) ** 2
        err_h = ROUNDOFF_ULPS * _EPS64 * (np.abs(S) + span + np.abs(h)) / net.tau_h
        Hh = net.L_h.hvp_size(h, dh)
        size += net.tau_h * abs_rowdot(dh, Hh)
        prop += net.tau_h * (2 * abs_rowdot(Hh, err_h) + abs_rowdot(net.L_h.hvp_size(h, err_h), err_h))
    return an, size, ROUNDOFF_ULPS * _EPS64 * size + prop


def _flat_current(traj: Trajectory, T: int, B: int):
    """The input current of every (sample, query) row of the flattened (T B, W) states, or None."""
    if traj.I is None:
        return None
    I = np.broadcast_to(np.asarray(traj.I, dtype=np.float64), (B, traj.v.shape[-1]))
    return np.broadcast_to(I[None], (T, B, I.shape[1])).reshape(T * B, -1)


def _flow_fd(net: Network, traj: Trajectory, safety: float, Ys=None, tick=None):
    """At every sample: analytic dE/dt, the central difference fd(s) of E along the flow, and the
    allowed |analytic - fd|, all (T, B), plus the round-off R and truncation T estimates and the
    mask of samples where the state moves; and the velocities F (T, B, W) at the samples.

    fd(s) = (E(y + s ydot) - E(y - s ydot)) / (2 s) = E' + E''' s^2 / 6 + O(s^4), E' = dE/dt.
    Round-off: each E carries ~ ROUNDOFF_ULPS eps64 size(E), so fd carries R = ROUNDOFF_ULPS eps64
    size(E) / s. Truncation: fd(2 s) - fd(s) = E''' s^2 / 2, so T = |fd(s) - fd(2 s)| / 3 estimates
    |fd(s) - E'|. The step minimises R + |E'''| s^2 / 6: s = (3 ROUNDOFF_ULPS eps64 size / |E'''|)^(1/3),
    with |E'''| = 2 |fd(2 s0) - fd(s0)| / s0^2 from a pilot step s0 = eps64^(1/3) tau, tau =
    max(1, |y|) / |ydot| the time in which the state moves by its own size (s is kept within
    [s0/10, 10 s0]: a pilot difference lost in round-off gives s ~ s0). Where s comes out within
    a factor FD_REUSE of s0, the pilot pair is the pair (R and T estimated at s0 itself), so the
    second pair is evaluated only at the rows whose step moved further.

    All T B sample rows form one batch, evaluated FD_CHUNK_ROWS rows at a time."""
    Ys = _states(net, traj) if Ys is None else Ys
    T, B, W = Ys.shape
    Yf = Ys.reshape(T * B, W)
    If = _flat_current(traj, T, B)
    out = {k: np.zeros(T * B) for k in ("an", "fd", "allowed", "R", "T", "scale", "an_roundoff")}
    moving = np.zeros(T * B, bool)
    Fall = np.empty_like(Yf)
    for c0 in range(0, T * B, FD_CHUNK_ROWS):
        sl = slice(c0, min(c0 + FD_CHUNK_ROWS, T * B))
        Y = Yf[sl]
        I = None if If is None else If[sl]
        F = net.velocity(Y, I, traj.adiabatic)
        Fall[sl] = F
        an, scale, an_roundoff = _dEdt_and_size(net, Y, F, I, traj.adiabatic)
        speed = np.abs(F).max(1)
        mv = speed > 0
        tau = np.where(mv, np.maximum(1.0, np.abs(Y).max(1)) / np.where(mv, speed, 1.0), 0.0)

        def fd(s, r=slice(None)):
            Yr, Fr, Ir, m = Y[r], F[r], None if I is None else I[r], mv[r]
            Ep, sp = _energy_and_size(net, Yr + s[:, None] * Fr, Ir, traj.adiabatic)
            Em, sm = _energy_and_size(net, Yr - s[:, None] * Fr, Ir, traj.adiabatic)
            return (Ep - Em) / np.where(m, 2 * s, 1.0), np.maximum(sp, sm)

        s0 = _EPS64 ** (1 / 3) * tau
        p1, z1 = fd(s0)
        p2, z2 = fd(2 * s0)
        roundoff_E = ROUNDOFF_ULPS * _EPS64 * np.maximum(z1, z2)
        E3 = 2 * np.abs(p2 - p1) / np.where(mv, s0, 1.0) ** 2
        s_opt = np.cbrt(3 * roundoff_E / np.where(E3 > 0, E3, 1.0))
        s = np.where(E3 > 0, np.clip(s_opt, s0 / 10, 10 * s0), 10 * s0)
        again = mv & ~((s <= FD_REUSE * s0) & (s >= s0 / FD_REUSE))
        s = np.where(again, s, s0)
        f1, f2, zz = p1, p2, np.maximum(z1, z2)
        if again.any():
            a1, y1 = fd(s[again], again)
            a2, y2 = fd(2 * s[again], again)
            f1[again], f2[again], zz[again] = a1, a2, np.maximum(y1, y2)
        R = ROUNDOFF_ULPS * _EPS64 * zz / np.where(mv, s, 1.0)
        Tr = np.abs(f1 - f2) / 3
        out["an"][sl], out["scale"][sl], out["an_roundoff"][sl] = an, scale, an_roundoff
        out["fd"][sl] = np.where(mv, f1, an)
        out["R"][sl], out["T"][sl] = np.where(mv, R, 0.0), np.where(mv, Tr, 0.0)
        out["allowed"][sl] = safety * (out["R"][sl] + out["T"][sl] + an_roundoff)
        moving[sl] = mv
        if tick is not None:
            tick(sl.stop - sl.start)
    return {k: v.reshape(T, B) for k, v in out.items()}, moving.reshape(T, B), Fall.reshape(T, B, W)


def _rows_evaluated(traj: Trajectory, B: int) -> float:
    """Right-hand-side row evaluations the trajectory's own integration took: the sum of
    ``nfev_per_query``, or ``nfev`` times B (one solve_ivp system of B rows), or the fixed steps
    t / dt times B; 0 when the trajectory records none of these."""
    p = traj.params
    if np.size(p.get("nfev_per_query", ())) == B:
        return float(np.sum(p["nfev_per_query"]))
    if "nfev" in p:
        return float(p["nfev"]) * B
    if "dt" in p and len(traj.t):
        return float(traj.t[-1] - traj.t[0]) / float(p["dt"]) * B
    return 0.0


def _window_order(Ys, F, t, kk, bb, t1, rtol, atol, seed):
    """The two orders in which the candidate windows (kk, bb, ending at t1) are re-integrated:

    the windows by decreasing trapezoid defect d = |y1 - y0 - (t1 - t0) (F(y0) + F(y1)) / 2| /
    (atol + rtol |y|) (max over the components; F at the samples is already computed), relative
    to the defects of the same query's windows two samples away (max of those and 1), ties by d
    itself: where the samples agree least with the network's own velocity (a corrupted sample
    stands out of its neighbours however fast the transient around it; a wrong right-hand side
    raises every window, which the random stream then meets at once); and a random permutation
    (``numpy.random.default_rng(seed)``), whose covered prefix is what the coverage statement of docs/theory.md §7 counts."""
    grid = np.zeros((Ys.shape[0] + 3, Ys.shape[1]))    # screen of window k at row k + 2
    dur = np.zeros(grid.shape)
    dur[kk + 2, bb] = t1 - t[kk]
    for k in np.unique(kk):                     # one sample pair at a time: no (n, W) copies
        Y0, Y1, d = Ys[k], Ys[k + 1], dur[k + 2][:, None]
        defect = np.abs(Y1 - Y0 - d * (F[k] + F[k + 1]) / 2)
        den = atol + rtol * np.maximum(np.abs(Y0), np.abs(Y1))
        grid[k + 2] = np.where(den > 0, defect / np.where(den > 0, den, 1.0),
                               np.where(defect > 0, np.inf, 0.0)).max(1)
    screen = grid[kk + 2, bb]
    # against the windows two samples away (clean of a corruption of sample k, which enters
    # windows k - 1 and k): a smooth transient's defects change slowly with k, a corrupted
    # sample's stand out whatever their size
    grid[:] = 0.0
    grid[kk + 2, bb] = screen                   # candidates only (a stopped query's later windows: 0)
    level = np.maximum(np.maximum(grid[kk, bb], grid[kk + 4, bb]), 1.0)
    spike = screen / level
    return np.lexsort((-screen, -spike)), np.random.default_rng(seed).permutation(len(kk))


def _flow_deviation(net: Network, traj: Trajectory, safety: float, max_windows: int, *, F, Ys=None,
                    flow_budget: float = np.inf, seed: int = 0, tick=None):
    """Re-integrate the network's ODE from sampled states and compare with the next samples.

    For each chosen window k and query b, y(t_k) is integrated to t_(k+1) (or to the query's
    ``t_final_per_query`` if it stopped inside the window: RK45-batched holds a stopped query's
    state in later samples, and windows after it are skipped). The windows are chosen from two
    streams (:func:`_window_order`: largest trapezoid defect first, and seeded random), each in
    rounds that start with MIN_FLOW_ROWS / 2 windows and at most double, while the stream's half
    of ``flow_budget`` times the trajectory's row evaluations (:func:`_rows_evaluated`) lasts, and
    at most ``max_windows`` B in all. The windows of a round are one
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
    Ys = _states(net, traj) if Ys is None else Ys
    T, B, W = Ys.shape
    if T < 2:
        return None
    t = np.asarray(traj.t, dtype=np.float64)
    per_query = {k: np.asarray(traj.params[k], dtype=np.float64) for k in ("t_final_per_query", "nfev_per_query")
                 if np.size(traj.params.get(k, ())) == B}   # ignored unless one entry per query here
    t_stop = per_query.get("t_final_per_query", np.full(B, t[-1]))
    kk, bb = (a.ravel() for a in np.meshgrid(np.arange(T - 1), np.arange(B), indexing="ij"))
    t1 = np.minimum(t[kk + 1], t_stop[bb])
    keep = t1 > t[kk]
    kk, bb, t1 = kk[keep], bb[keep], t1[keep]
    if not len(kk):
        return None
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
        rtol = atol = 0.0
    else:
        rtol, atol = float(traj.params.get("rtol", 1e-8)), float(traj.params.get("atol", 1e-10))
        rtol_ref = float(np.clip(rtol / 1000, 1e-13, 1e-10))
    atol_ref = rtol_ref * 1e-2
    by_defect, rand = _window_order(Ys, F, t, kk, bb, t1, rtol if not fixed else 1e-8, atol if not fixed else 1e-10, seed)
    If = None if traj.I is None else np.broadcast_to(np.asarray(traj.I, dtype=np.float64), (B, W if traj.adiabatic else net.D))

    def reintegrate(sel):
        """Deviation and allowed deviation (rows, W) of the windows sel (indices into kk), one
        solve_ivp system, and its right-hand-side row evaluations."""
        k_, b_ = kk[sel], bb[sel]
        dur = t1[sel] - t[k_]
        Y0, Y1 = Ys[k_, b_], Ys[k_ + 1, b_]
        I = None if If is None else If[b_]
        rows = len(sel)
        m = max(int(np.ceil(dur.max() / dt - 1e-9)), p + 1) if fixed else 1  # spacing <= dt
        s_eval = np.linspace(0.0, 1.0, m + 1)

        def fun(s, y):
            return (net.velocity(y.reshape(rows, W), I, traj.adiabatic) * dur[:, None]).ravel()

        sol = solve_ivp(fun, (0.0, 1.0), Y0.ravel(), method="DOP853", rtol=rtol_ref, atol=atol_ref,
                        t_eval=s_eval)
        if sol.status < 0:
            raise RuntimeError(f"verify_energy: re-integrating the sampled windows failed: {sol.message}")
        ref = sol.y.T.reshape(m + 1, rows, W)
        mag = np.maximum(np.abs(Y0), np.abs(Y1))
        ref_steps = max(1, sol.nfev // _STAGES["DOP853"])
        ref_err = (atol_ref + rtol_ref * mag) * np.sqrt(rows * W) * ref_steps
        if fixed:
            # |y^(j)|, j = 1 .. p+1, from differences of F along the reference (spacing delta <= dt)
            Fr = np.stack([net.velocity(ref[j], I, traj.adiabatic) for j in range(m + 1)])  # (m+1, rows, W)
            delta = (dur / m)[:, None]
            tau_min = net.tau_v if traj.adiabatic else min(net.tau_v, net.tau_h)
            deriv = [np.abs(np.diff(Fr, n=j - 1, axis=0)).max(0) / delta ** (j - 1) for j in range(1, p + 2)]
            # a derivative of order p+1 may also come as y^(j) / tau^(p+1-j): the stiff decay 1/tau_min
            # enters the scheme's error constant (the split and the half-step interpolation of h)
            scale_local = np.max([d / tau_min ** (p + 1 - j) for j, d in enumerate(deriv, 1)], axis=0)
            scale_rec = np.max([d / tau_min ** (p - j) for j, d in enumerate(deriv[:p], 1)], axis=0)
            n_steps = np.maximum(np.round(dur / dt), 1.0)[:, None]
            model_err = n_steps * dt ** (p + 1) * scale_local / factorial(p + 1) + dt ** p * scale_rec
        else:
            stages = _STAGES.get(traj.method, 1)
            if "nfev_per_query" in per_query:        # a step size and an error norm per query
                nfev = per_query["nfev_per_query"][b_]
                n_norm = W
            else:
                nfev = np.full(rows, float(traj.params.get("nfev", 1)))
                n_norm = B * W
            amp = 1.0
            if traj.method == "reduced":
                # uhn.dynamics.solvers.reduced controls the error of (a, h, e), 2N + 1 numbers per query, and
                # v = c + M^T a carries a's error amplified by at most max_i sum_mu |M_mu,i|
                n_norm = 2 * net.N + 1
                amp = max(1.0, float(np.abs(net.M).sum(axis=0).max()))
            n_steps = np.maximum(nfev / stages, 1.0)[:, None]
            model_err = amp * n_steps * np.sqrt(n_norm) * (atol + rtol * mag)
        return np.abs(ref[-1] - Y1), safety * (model_err + ref_err), sol.nfev * rows

    if fixed:
        model = f"fixed step dt = {dt:g}, order {p}"
    else:
        model = (f"{traj.method}, rtol {rtol:g}, atol {atol:g}, <= nfev / {_STAGES.get(traj.method, 1)} "
                 f"steps per window")
    # two streams, each with half the budget and its own rounds (one solve_ivp system shares one
    # step size, so the fast transient windows the defect ranks first would slow the random ones)
    budget = flow_budget * _rows_evaluated(traj, B) / 2
    checked = np.zeros(len(kk), bool)
    parts = []
    cap = max_windows * B                        # at most max_windows windows per query on average
    for stream in (by_defect, rand):
        pos, spent, size, done = 0, 0.0, MIN_FLOW_ROWS // 2, 0
        while size > 0:
            new_ = []
            size = min(size, cap - int(checked.sum()))
            while len(new_) < size and pos < len(stream):
                if not checked[stream[pos]]:
                    new_.append(stream[pos])
                    checked[stream[pos]] = True
                pos += 1
            if not new_:
                break
            sel = np.asarray(new_)
            dev, allowed, cost = reintegrate(sel)
            parts.append((sel, dev, allowed))
            done, spent = done + len(sel), spent + cost
            if tick is not None:
                tick(len(sel))
            # next round: what the budget left buys at this round's cost per window, at most
            # doubling the windows so far (more rows in one system cost more per row)
            left = budget - spent
            if not np.isfinite(left):
                size = len(stream)
            else:
                size = 0 if left <= 0 else min(max(done, 1), int(left // (cost / len(sel))))
    sel = np.concatenate([s for s, _, _ in parts])
    dev = np.concatenate([d for _, d, _ in parts])
    allowed = np.concatenate([a for _, _, a in parts])
    ratio = dev / allowed
    r, i = np.unravel_index(np.argmax(ratio), ratio.shape)
    kr, br = kk[sel], bb[sel]
    n, checked = len(kk), len(sel)
    in_random = np.isin(rand, sel)
    r_cov = n if in_random.all() else int(np.argmin(in_random))
    coverage = (f"{checked} of {n} windows x queries" if checked < n else f"all {n} windows x queries")
    if checked < n:
        p95 = 1 - 0.05 ** (1 / max(r_cov, 1)) if r_cov else 1.0
        coverage += (f": the largest trapezoid defects and {r_cov} drawn at random (seed {seed}); a "
                     f"deviation in >= {100 * p95:.3g} % of them is found with probability >= 95 %")
    return {"ratio": float(ratio[r, i]), "dev": float(dev[r, i]), "allowed": float(allowed[r, i]),
            "at": (int(kr[r]), float(t[kr[r]]), int(br[r])), "component": int(i),
            "checked": checked, "model": model, "t1": float(t1[sel[r]]), "coverage": coverage,
            "bad": [(int(kr[j]), int(br[j]), float(ratio[j].max())) for j in np.flatnonzero(ratio.max(1) > 1)]}


def verify_energy(net: Network, traj: Trajectory, *, rtol_factor: float = 10.0,
                  atol_floor: float = 1e-12, fd_safety: float = FD_SAFETY,
                  flow_safety: float = FD_SAFETY, max_windows: int = 40, diverge_factor: float = 1e3,
                  check_convexity: bool = True, flow_budget: float = FLOW_BUDGET, seed: int = 0,
                  progress="auto") -> EnergyReport:
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
    max_windows : re-integrate at most max_windows B windows x queries (of all T - 1 per query).
    flow_budget : windows x queries are re-integrated in rounds from two streams
        (:func:`_window_order`: largest trapezoid defect, and seeded random), each stream until its
        right-hand-side row evaluations reach half of flow_budget times the trajectory's own
        (MIN_FLOW_ROWS windows in all at least; ``np.inf``: up to max_windows B). The report's
        ``flow_coverage`` says how many were checked and what the random part guarantees
        (docs/theory.md §7).
    seed : the seed of the random windows.
    progress : "auto" (a bar on stderr once the check has run PROGRESS_DELAY seconds), True (at
        once), False, or a callable ``report(done, running)`` with done in [0, 1].
    diverge_factor : a query that did not converge and whose |v| ends above
        diverge_factor * max(|v(0)|, 1) is reported as diverging (E decreasing without bound is no
        evidence of retrieval). A non-finite energy at any sample is a violation.
    check_convexity : Lagrangian.check_convex (8 random directions u^T Hess(L) u >= 0, and the
        smallest Hessian eigenvalue: exact for a diagonal Hessian, Lanczos otherwise, unless the
        Lagrangian is convex by construction) at a subsample of the visited states, every
        (T B // CONVEXITY_ROWS)-th of the T B state rows of v (and of h), 256 to 511 rows when
        T B >= 256, every row below (the dE/dt <= 0 check at every sample covers the directions
        the trajectory moved in).
    """
    net = net.on_host()         # a network on other arrays: checked on its numpy copy
    for name, val in (("fd_safety", fd_safety), ("flow_safety", flow_safety)):
        if not (np.isfinite(val) and val >= 1):
            raise ValueError(f"{name} must be a finite factor >= 1 on an error estimate, got {val}")
    if int(max_windows) != max_windows or max_windows < 1:
        raise ValueError(f"max_windows must be a positive integer, got {max_windows}")
    if not (flow_budget >= 0):
        raise ValueError(f"flow_budget must be >= 0 (a multiple of the integration's evaluations), got {flow_budget}")
    Ys = _states(net, traj)
    T, B = Ys.shape[:2]
    # integrate's BLAS policy: the products here are as small as the integration's, and a second
    # BLAS thread that waits for a core costs more than it saves (on a loaded machine, 60x)
    with threadpool_limits(BLAS_THREADS), _progress(progress, T, B,
                                                    min(T - 1, max_windows) * B) as tick:
        return _verify(net, traj, Ys, tick, rtol_factor, atol_floor, fd_safety, flow_safety, max_windows,
                       diverge_factor, check_convexity, flow_budget, seed)


@contextlib.contextmanager
def _progress(progress, T: int, B: int, n_windows: int):
    """``tick(rows)`` that advances verify_energy's bar (driver.time_bar) over its two costly
    parts: the T B sample rows of the finite differences (weight 1 each) and the windows x queries
    re-integrated (weight 4 each, about what one costs against a sample row's differences)."""
    total = T * B + 4 * n_windows
    delay = PROGRESS_DELAY if progress == "auto" else 0.0
    with time_bar(bool(progress) if progress == "auto" else progress, 1.0, B, desc="verifying energy",
                  unit="share", delay=delay, count=False) as report:
        if report is None:
            yield None
            return
        state = {"done": 0.0}

        def tick(rows, weight=1.0):
            state["done"] = min(state["done"] + weight * rows / total, 1.0)
            report(state["done"], B)
        yield tick
        report(1.0, B)


def _verify(net, traj, Ys, tick, rtol_factor, atol_floor, fd_safety, flow_safety, max_windows,
            diverge_factor, check_convexity, flow_budget, seed):
    """verify_energy's checks on the float64 states Ys (T, B, W); ``tick`` advances the bar."""
    T, B = Ys.shape[:2]
    E = np.empty((T, B))
    E_size = np.empty((T, B))
    Yf = Ys.reshape(T * B, -1)
    If = _flat_current(traj, T, B)
    for c0 in range(0, T * B, FD_CHUNK_ROWS):
        sl = slice(c0, min(c0 + FD_CHUNK_ROWS, T * B))
        e, z = _energy_and_size(net, Yf[sl], None if If is None else If[sl], traj.adiabatic)
        E.reshape(-1)[sl], E_size.reshape(-1)[sl] = e, z
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
    fdo, moving, F = _flow_fd(net, traj, fd_safety, Ys, tick)
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
    flow = _flow_deviation(net, traj, flow_safety, max_windows, F=F, Ys=Ys, flow_budget=flow_budget,
                           seed=seed, tick=None if tick is None else (lambda n: tick(n, 4.0)))
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
        violations.append(f"the trajectory diverges: {diverging}; {int(grew.sum())} of {B} queries")

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
                    "checked": 0, "model": "single sample: nothing to re-integrate", "coverage": ""}
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
        flow_model=flow["model"], flow_coverage=flow["coverage"], stored_E_ratio=float(np.nanmax(stored_E)),
        stored_dEdt_ratio=float(np.nanmax(stored_dE)))
