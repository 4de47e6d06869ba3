"""Numerical verification that the energy is a Lyapunov function along a trajectory (DESIGN.md 3).

Three independent checks, each reported with where it was worst (sample index, time, query):

1. monotonicity: the largest increase E(t_{k+1}) - E(t_k) between samples, relative to
   ``increase_tol = rtol_factor * rtol * max(|E|, 1) + atol_floor`` (rtol: the integrator's);
2. sign: the analytic dE/dt = -tau_v vdot^T H_v vdot - tau_h hdot^T H_h hdot at every sample must be
   <= round-off (``sign_tol`` relative to the size of its two terms);
3. consistency: the analytic dE/dt against a central finite difference of E along the flow,
   (E(x + eps xdot) - E(x - eps xdot)) / (2 eps), at every sample where dE/dt is not yet lost in
   round-off (near a fixed point it decays like |velocity|^2); and, reported only, against
   np.gradient of the sampled E(t) (sample-spacing dependent).

A state that runs away (|v| growing by ``diverge_factor``) is flagged in ``diverging``: E then
decreases without bound, which is monotone but retrieves nothing. The Lagrangians' Hessians are also probed on the states visited (convexity is what makes
dE/dt <= 0 a theorem). Nothing is clipped: a violation is reported with its size and location.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .integrate import Trajectory
from .lagrangians import NonConvexLagrangianError
from .network import Network

_EPS64 = np.finfo(np.float64).eps


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
    sign_tol: float
    fd_max_error: float          #: max |analytic - finite difference| / max(|analytic|, scale)
    fd_tol: float
    fd_at: tuple
    fd_checked: int              #: samples where dE/dt was large enough to compare
    sampled_fd_max_error: float  #: analytic vs np.gradient(E, t), relative; informational
    convex: bool
    diverging: str = ""          #: non-empty when the state ran away (E unbounded below)
    convexity_message: str = ""
    violations: list = field(default_factory=list)  #: human-readable failures

    def summary(self) -> str:
        status = "PASS" if self.passed else "FAIL"
        lines = [f"energy check: {status}",
                 f"  largest increase of E between samples: {self.max_increase:.3e} "
                 f"(relative {self.max_increase_relative:.3e}, tolerance {self.increase_tol:.3e}) "
                 f"at sample/time/query {self.increase_at}",
                 f"  largest analytic dE/dt: {self.max_dEdt:.3e} (tolerance {self.sign_tol:.3e}) at "
                 f"{self.dEdt_at}",
                 f"  analytic dE/dt vs finite difference of E: max relative error {self.fd_max_error:.3e}"
                 f" (tolerance {self.fd_tol:.1e}, {self.fd_checked} samples); vs sampled E(t): {self.sampled_fd_max_error:.3e}",
                 f"  Lagrangian Hessians PSD on visited states: {self.convex} {self.convexity_message}"]
        if self.diverging:
            lines.append(f"  WARNING, diverging: {self.diverging}")
        lines += [f"  VIOLATION: {v}" for v in self.violations]
        return "\n".join(lines)


def _flow_fd(net: Network, traj: Trajectory, eps_rel: float):
    """Central difference of E along the flow at every sample, and the analytic value."""
    T, B, _ = traj.v.shape
    fd = np.empty((T, B))
    an = np.empty((T, B))
    scale = np.empty((T, B))
    noise = np.empty((T, B))
    for k in range(T):
        v, h = traj.v[k], traj.h[k]
        if traj.adiabatic:
            dv = net.rhs_adiabatic(v, traj.I)
            eps = eps_rel * max(1.0, np.abs(v).max()) / max(np.abs(dv).max(), 1e-300)
            fd[k] = (net.energy_adiabatic(v + eps * dv, traj.I)
                     - net.energy_adiabatic(v - eps * dv, traj.I)) / (2 * eps)
            an[k] = net.dEdt_adiabatic(v, traj.I)
            scale[k] = net.tau_v * (np.abs(net.L_v.curvature(v, dv)) + np.einsum("bk,bk->b", dv, dv))
            Ek = net.energy_adiabatic(v, traj.I)
        else:
            dv, dh = net.rhs(v, h, traj.I)
            vel = max(np.abs(dv).max(), np.abs(dh).max(), 1e-300)
            eps = eps_rel * max(1.0, np.abs(v).max(), np.abs(h).max()) / vel
            fd[k] = (net.energy(v + eps * dv, h + eps * dh, traj.I)
                     - net.energy(v - eps * dv, h - eps * dh, traj.I)) / (2 * eps)
            an[k] = net.dEdt(v, h, traj.I)
            scale[k] = (net.tau_v * (np.abs(net.L_v.curvature(v, dv)) + np.einsum("bk,bk->b", dv, dv))
                        + net.tau_h * (np.abs(net.L_h.curvature(h, dh)) + np.einsum("bk,bk->b", dh, dh)))
            Ek = net.energy(v, h, traj.I)
        # round-off of the difference quotient: ~ 1e-16 |E| / (2 eps), eps the step in time units
        noise[k] = _EPS64 * np.maximum(np.abs(Ek), 1.0) / (2 * eps)
    return an, fd, scale, noise


def verify_energy(net: Network, traj: Trajectory, *, rtol_factor: float = 10.0,
                  atol_floor: float = 1e-12, sign_tol: float = 1e-9, fd_tol: float = 1e-4,
                  fd_eps: float = 1e-6, fd_range: float = 1e-6, diverge_factor: float = 1e3, check_convexity: bool = True) -> EnergyReport:
    """Check E decreases along ``traj`` of ``net`` (energies recomputed in float64 from the states).

    Parameters
    ----------
    rtol_factor, atol_floor : an increase between samples is a violation when it exceeds
        rtol_factor * rtol * max(|E|, 1) + atol_floor (rtol from the trajectory's integrator;
        for fixed-step backends, the ``rtol`` recorded in its params).
    sign_tol : analytic dE/dt may exceed 0 by at most sign_tol times the size of its two terms
        (|tau_v vdot^T H_v vdot| + tau_v |vdot|^2 + the same for h: the |vdot|^2 part keeps round-off
        from failing a flow along a flat Hessian direction, where both terms are ~0).
    fd_tol : allowed relative mismatch between analytic dE/dt and the flow finite difference,
        checked at samples where |dE/dt| >= fd_range * its largest value for that query
        (``fd_checked`` counts them).
    diverge_factor : a query whose |v| ends above diverge_factor * max(|v(0)|, 1) is reported as
        diverging (E decreasing without bound is no evidence of retrieval).
    """
    E = np.stack([net.energy_adiabatic(vk, traj.I) for vk in traj.v]) if traj.adiabatic else \
        np.stack([net.energy(vk, hk, traj.I) for vk, hk in zip(traj.v, traj.h)])
    T, B = E.shape
    violations = []
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
    an, fd, scale, noise = _flow_fd(net, traj, fd_eps)
    slack = sign_tol * np.maximum(scale, 1e-300) + 1e-300
    k, b = np.unravel_index(np.argmax(an - slack), an.shape)
    max_dEdt = float(an.max())
    if np.any(an > slack):
        kk, bb = np.argwhere(an > slack)[0]
        violations.append(f"analytic dE/dt = {an[kk, bb]:.3e} > 0 at t={traj.t[kk]:.6g} (query {bb})")
    # compare only where dE/dt is measurable: within fd_range of its largest size for that query
    # (at a fixed point dE/dt ~ |velocity|^2 decays below the difference quotient's truncation error)
    # and above the round-off of the difference quotient itself (a flow with dE/dt = 0 exactly,
    # e.g. v decaying radially under the spherical L_v, has nothing to compare)
    measurable = ((np.abs(an) >= fd_range * np.abs(an).max(axis=0, keepdims=True))
                  & (np.abs(an) >= 1e3 * noise))
    fd_err = np.where(measurable, np.abs(an - fd) / np.maximum(np.abs(an), 1e-300), 0.0)
    kf, bf = np.unravel_index(np.argmax(fd_err), fd_err.shape)
    if fd_err[kf, bf] > fd_tol:
        violations.append(f"analytic dE/dt {an[kf, bf]:.6e} differs from the finite difference "
                          f"{fd[kf, bf]:.6e} at t={traj.t[kf]:.6g} (query {bf})")
    if T > 2:
        grad = np.gradient(E, traj.t, axis=0)
        sampled = float((np.abs(grad - an) / np.maximum(np.abs(an).max(0), 1e-12)).max())
    else:
        sampled = float("nan")

    # 4. boundedness (reported, not a failure of monotonicity): E may fall without bound while
    # the state runs away (e.g. dot + identity separation, whose linear dynamics grow like
    # exp((lambda_max(M^T M) - 1) t)); E then decreases but no attractor is reached
    n0 = np.linalg.norm(traj.v[0], axis=1)
    n1 = np.linalg.norm(traj.v[-1], axis=1)
    diverging = ""
    if np.any(n1 > diverge_factor * np.maximum(n0, 1.0)):
        b = int(np.argmax(n1 / np.maximum(n0, 1.0)))
        diverging = (f"|v| grew from {n0[b]:.3g} to {n1[b]:.3g} by t={traj.t[-1]:.6g} (query {b}) while "
                     f"E fell to {E[-1, b]:.3g}: E is unbounded below along this run, no attractor")

    convex, cmsg = True, ""
    if check_convexity:
        try:
            net.L_v.check_convex(traj.v.reshape(-1, traj.v.shape[-1])[:: max(1, T * B // 256)])
            if not traj.adiabatic:
                net.L_h.check_convex(traj.h.reshape(-1, traj.h.shape[-1])[:: max(1, T * B // 256)])
        except NonConvexLagrangianError as err:
            convex, cmsg = False, str(err)
            violations.append(cmsg)

    return EnergyReport(
        passed=not violations, max_increase=max_inc, max_increase_relative=float(inc_rel),
        increase_tol=inc_tol, increase_at=inc_at, max_dEdt=max_dEdt,
        dEdt_at=(int(k), float(traj.t[k]), int(b)), sign_tol=sign_tol,
        fd_max_error=float(fd_err[kf, bf]), fd_tol=fd_tol, fd_at=(int(kf), float(traj.t[kf]), int(bf)),
        fd_checked=int(measurable.sum()),
        sampled_fd_max_error=sampled, convex=convex, convexity_message=cmsg, diverging=diverging,
        violations=violations)
