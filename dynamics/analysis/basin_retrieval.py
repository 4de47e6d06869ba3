"""The continuous-time dynamics' fixed point as a retrieval rule of the experiments in
uhn.models.experiments (basins and theory), which cannot import uhn.dynamics: they take these
builders.

``fixed_point_retriever(M, point)`` (basins) builds the Network of the point's similarity with a
quadratic feature Lagrangian (L_v = |v|^2 / 2, so g(v) = v) and the memory Lagrangian whose
gradient is the point's separation (uhn.dynamics.lagrangians.for_separation: softmax(beta) ->
log_sum_exp(beta), ...), tau_v = 1, tau_h = 0.1; ``softmax_fixed_point(M, point)`` (theory's
softmax_fixed_points) the same Network of dot similarity and log_sum_exp(point.beta). Both
integrate the queries (batched RK45, stopped at rest, t_end = :data:`T_END`, :func:`rest_readout`)
and return the memory layer's readout there, P^T f(h) (B, D): the retrieved pattern. (The feature
state v is not: at rest v = sum_mu f_mu dS_mu/dg, which is P^T f(h) for the dot similarity but,
e.g., a sum of unit vectors (M_mu - g)/|M_mu - g| for the euclidean one; docs/theory.md
section 5.) A query that is not at rest by then counts with its final state, which the basin
criterion then judges like any other; an integration that stalls (:data:`MAX_NFEV`) is a
FloatingPointError, so the sweep stores the point as failed.
"""
from __future__ import annotations

import numpy as np

#: integration horizon of one retrieval (tau_v = 1)
T_END = 200.0
#: similarities invariant to the scale of g: their force sum_mu f_mu dS_mu/dg is orthogonal to
#: g = v (L_v quadratic), so d|v|/dt = -|v| / tau_v exactly and the only rest state is v = 0, where
#: they are undefined (:func:`fixed_point_retriever` refuses them; docs/theory_capacity.md section 6)
SCALE_INVARIANT = ("cosine",)
#: right-hand-side evaluations before a retrieval counts as stalled (a non-smooth similarity,
#: manhattan, can chatter at its kinks): the point is then stored as failed
MAX_NFEV = 20_000


def fixed_point_retriever(M, point):
    """queries (B, D) -> the readout P^T f(h) of the dynamics' final state (B, D) for memories M
    (see the module docstring); ValueError for a separation without an energy (max, ...) and
    for a similarity in :data:`SCALE_INVARIANT` (cosine), whose network has no fixed point."""
    from uhn.dynamics.lagrangians import NonConvexLagrangianError, for_separation, quadratic
    from uhn.dynamics.network import Network
    from uhn.models.experiments.basins import SEP_PARAM_NAMES
    from uhn.models.separation import get_separation
    from uhn.models.similarity import get_similarity
    if point.similarity in SCALE_INVARIANT:
        raise ValueError(
            f"the {point.similarity} similarity is invariant to the scale of g = v: its force "
            f"sum_mu f_mu dS_mu/dg is orthogonal to v, so d|v|/dt = -|v| / tau_v and the network "
            f"has no fixed point but v = 0, where {point.similarity} is undefined (|v| = |q| e^-t; "
            f"the direction's stiffness grows as e^2t and every integrator stalls by t ~ 8-9)")
    params = {} if point.sep_param is None else \
        {SEP_PARAM_NAMES.get(point.separation, "param"): point.sep_param}
    try:
        L_h = for_separation(get_separation(point.separation, **params))
    except NonConvexLagrangianError as err:
        raise ValueError(f"the dynamics need a separation with an energy: {err}") from None
    net = Network(np.asarray(M, dtype=np.float64), get_similarity(point.similarity),
                  L_v=quadratic(), L_h=L_h, tau_v=1.0, tau_h=0.1)
    return lambda Q: rest_readout(net, Q, point.similarity)[0]


def rest_readout(net, Q, label: str = "network"):
    """Integrate queries Q (B, D) to rest (RK45-batched, t_end = :data:`T_END`, at most
    :data:`MAX_NFEV` evaluations per query) and return (P^T f(h) at the end (B, D), at rest
    (B,) bool, the Trajectory, kept at its ends); a stall is a FloatingPointError naming
    ``label``."""
    from uhn.dynamics.integrate import integrate
    try:
        traj = integrate(net, Q, T_END, method="RK45-batched", stop_at_fixed_point=True,
                         keep="ends", max_nfev=MAX_NFEV)
    except RuntimeError as err:   # a stalled integration: a failed point, not a bug
        raise FloatingPointError(f"the dynamics of {label!r} did not finish: {err}") from None
    return np.asarray(net.readout(traj.h_final)), np.asarray(traj.converged, dtype=bool), traj


def softmax_network(M, beta: float):
    """The Network of memories M (N, D) with dot similarity, L_v = |v|^2 / 2 and
    L_h = log_sum_exp(beta), tau_v = 1, tau_h = 0.1 (:func:`softmax_fixed_point`'s)."""
    from uhn.dynamics.lagrangians import log_sum_exp, quadratic
    from uhn.dynamics.network import Network
    return Network(np.asarray(M, dtype=np.float64), "dot", L_v=quadratic(),
                   L_h=log_sum_exp(beta), tau_v=1.0, tau_h=0.1)


def softmax_fixed_point(M, point):
    """The builder uhn.models.experiments.theory.run takes (``dynamics=``): for random patterns M
    (N, D) and a TheoryPoint, queries (B, D) -> (P^T softmax(beta h) at rest (B, D), at rest (B,))
    of the Network with dot similarity, L_v quadratic, L_h = log_sum_exp(point.beta), tau_v = 1,
    tau_h = 0.1. At rest h = M v and v = M^T softmax(beta h), so its rest points are the fixed
    points z = M^T softmax(beta M z) of Memory.iterate (docs/theory.md section 5)."""
    net = softmax_network(M, point.beta)

    def retrieve(Q):
        Z, at_rest, _ = rest_readout(net, Q, f"dot/softmax(beta={point.beta:g})")
        return Z, at_rest

    return retrieve


#: the builders uhn.models.experiments.basins.run takes (``retrievers=``)
RETRIEVERS = {"dynamics": fixed_point_retriever}
