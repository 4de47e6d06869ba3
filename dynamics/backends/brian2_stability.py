"""The linear stability of brian2_rate's fixed step (docs/theory.md section 8): the Jacobian of
one leapfrog step as an operator (:func:`step_map_operator`), its spectral radius against the
ODE's own growth over the step (:func:`stability_bound`), and the warning run_brian2 gives for a
step beyond the bound (:func:`check_step`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from uhn.dynamics.network import Network

#: relative margin of the stability test: the finite-difference products carry ~1e-8 relative
#: error, raised to the power 1000 in the ODE growth estimate (stability_bound)
_STABILITY_MARGIN = 1e-3


class Brian2StabilityWarning(RuntimeWarning):
    """The fixed step is beyond the explicit scheme's linear stability bound (see
    :func:`stability_bound`)."""


def step_map_operator(net: Network, v, h, dt: float, I=None):
    """The Jacobian of one leapfrog step (v_k, h_(k-1/2)) -> (v_(k+1), h_(k+1/2)) linearised at
    the state (v, h) (each (D,), (N,)), as a scipy LinearOperator of size D + N, with the
    coupling c = tau_v dv/dt + v - I and the score S = tau_h dh/dt + h frozen over the step
    (docs/theory.md section 8):

        dh' = a_h dh + (1 - a_h) tau_h J_hv dv,
        dv' = a_v dv + (1 - a_v) (dv + tau_v (J_vv dv + J_vh dh')),      a = exp(-dt / tau),

    J the ODE's Jacobian, applied as central differences of ``net.rhs`` (one batched call of two
    states per product, relative step 1e-6)."""
    from scipy.sparse.linalg import LinearOperator
    D, N = net.D, net.N
    a_v, a_h = np.exp(-dt / net.tau_v), np.exp(-dt / net.tau_h)
    v, h = np.asarray(v, float).reshape(D), np.asarray(h, float).reshape(N)
    Irow = None if I is None else np.broadcast_to(np.asarray(I, float).reshape(-1, D), (2, D))
    scale = 1e-6 * max(1.0, float(np.abs(v).max()), float(np.abs(h).max()))

    def jvp(xv, xh):
        norm = max(float(np.abs(xv).max()), float(np.abs(xh).max()), 1e-300)
        e = scale / norm
        dv, dh = net.rhs(np.stack([v + e * xv, v - e * xv]), np.stack([h + e * xh, h - e * xh]), Irow)
        return (dv[0] - dv[1]) / (2 * e), (dh[0] - dh[1]) / (2 * e)

    def matvec(x):
        x = np.asarray(x).reshape(-1)
        if np.iscomplexobj(x):
            return matvec(x.real) + 1j * matvec(x.imag)
        xv, xh = x[:D], x[D:]
        _, Jh = jvp(xv, np.zeros(N))
        xh2 = a_h * xh + (1 - a_h) * net.tau_h * Jh
        Jv, _ = jvp(xv, xh2)
        return np.concatenate([a_v * xv + (1 - a_v) * (xv + net.tau_v * Jv), xh2])

    return LinearOperator((D + N, D + N), matvec=matvec, dtype=float)


def _spectral_radius(op) -> float:
    """Largest |eigenvalue| of a LinearOperator: ARPACK (scipy eigs, k = 1) from a fixed start
    vector, or dense below 300 rows (n products; ARPACK converges slowly on the clustered
    spectra of small maps)."""
    n = op.shape[0]
    if n < 300:
        A = np.column_stack([op.matvec(e) for e in np.eye(n)])
        return float(np.abs(np.linalg.eigvals(A)).max())
    from scipy.sparse.linalg import ArpackNoConvergence, eigs
    v0 = np.random.default_rng(0).standard_normal(n)
    try:
        return float(np.abs(eigs(op, k=1, which="LM", return_eigenvectors=False, tol=1e-8,
                                 v0=v0)).max())
    except ArpackNoConvergence:
        return float("nan")


@dataclass
class StabilityBound:
    """:func:`stability_bound`'s result: the step's growth factor ``rho`` (largest over the
    queries), the ODE's own growth exp(dt max Re lambda) over the same step, and ``dt_max``, the
    largest step (ms) at which the scheme grows no faster than the ODE (None: no bound found up
    to the step tested)."""

    dt: float
    rho: float
    ode_growth: float
    dt_max: Optional[float]
    query: int

    @property
    def stable(self) -> bool:
        """rho within 0.1 % of the ODE's growth; True also where the linearisation could not be
        assessed (a non-finite Jacobian at the initial state, ARPACK not converging: rho nan)."""
        return not (self.rho > self.ode_growth * (1 + _STABILITY_MARGIN))


def stability_bound(net: Network, Q, dt: float, I=None, h0=None) -> StabilityBound:
    """Is the fixed step dt linearly stable for ``net`` at the initial states of queries Q?

    rho = max |eigenvalue| of :func:`step_map_operator` at dt; the ODE's own growth over the step
    is exp(dt max Re lambda(J)), estimated as rho(delta)^(dt/delta) at delta = dt / 1000 (the
    map at a small step is 1 + delta J). The step is stable where rho <= that growth (+ 0.1 %; <= 1 for
    a network at rest or contracting). For one mode of eigenvalue lambda and one time constant
    tau this is the bound dt < -tau ln(1 - 2 Re(-lambda) / (tau |lambda|^2)) (dt < 2 / |lambda| for
    large real |lambda| tau), docs/theory.md section 8. When unstable, dt_max is found by
    bisection on the same test (8 halvings: within 0.4 % of dt). Linearised at the initial state
    only: states visited later may be stiffer. The extrapolated-midpoint networks
    (brian2_rate's other similarities) are tested with the same map, an approximation of their step."""
    v0, hq = net.initial_state(Q, h0)
    Iv = np.broadcast_to(net.input_current(None, v0.shape[0]) if I is None else np.asarray(I, float),
                         v0.shape)
    delta = dt / 1000.0

    def test(b, step):
        rho = _spectral_radius(step_map_operator(net, v0[b], hq[b], step, Iv[b]))
        if rho <= 1.0:
            return rho, 1.0
        small = _spectral_radius(step_map_operator(net, v0[b], hq[b], delta, Iv[b]))
        return rho, max(small, 1.0) ** (step / delta)

    worst = None
    for b in range(v0.shape[0]):
        rho, growth = test(b, dt)
        if worst is None or rho / growth > worst[0] / worst[1]:
            worst = (rho, growth, b)
    rho, growth, b = worst
    out = StabilityBound(dt=float(dt), rho=rho, ode_growth=growth, dt_max=None, query=b)
    if not out.stable:
        lo, hi = 0.0, float(dt)
        for _ in range(8):
            mid = 0.5 * (lo + hi)
            r, g = test(b, mid)
            lo, hi = (mid, hi) if not r > g * (1 + _STABILITY_MARGIN) else (lo, mid)
        out.dt_max = lo
    return out


def check_step(net: Network, Q, dt: float, I=None, h0=None) -> StabilityBound:
    """Warn (Brian2StabilityWarning) where dt is beyond :func:`stability_bound`, naming the
    bound; returns the bound."""
    import warnings
    sb = stability_bound(net, Q, dt, I, h0)
    if not sb.stable:
        warnings.warn(
            f"brian2 backend: dt = {dt:g} ms is beyond the explicit scheme's stability bound for "
            f"this network: one step grows perturbations by {sb.rho:.4g} where the ODE grows them "
            f"by {sb.ode_growth:.4g} (query {sb.query}, linearised at its initial state); "
            f"dt <= {sb.dt_max:.3g} ms is stable there (docs/theory.md section 8). The trajectory "
            f"and its energy will not follow the network's ODE", Brian2StabilityWarning, stacklevel=3)
    return sb
