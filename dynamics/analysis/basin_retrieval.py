"""The continuous-time dynamics' fixed point as a retrieval rule of the basin experiments
(uhn.models.experiments.basins, which cannot import uhn.dynamics: it takes this builder).

``fixed_point_retriever(M, point)`` builds the Network of the point's similarity with a quadratic
feature Lagrangian (L_v = |v|^2 / 2, so g(v) = v) and the memory Lagrangian whose gradient is the
point's separation (uhn.dynamics.lagrangians.for_separation: softmax(beta) -> log_sum_exp(beta),
...), tau_v = 1, tau_h = 0.1, and returns queries -> v at the fixed point (integrate, batched
RK45, stopped at rest, t_end = :data:`T_END`) and returns the memory layer's readout there,
P^T f(h) (B, D): the retrieved pattern. (The feature state v is not: at rest
v = sum_mu f_mu dS_mu/dg, which is P^T f(h) for the dot similarity but, e.g., a sum of unit
vectors (M_mu - g)/|M_mu - g| for the euclidean one; docs/theory.md section 5.) A query that is
not at rest by then counts with its final state, which the basin criterion then judges like any
other; an integration that stalls
(:data:`MAX_NFEV`) is a FloatingPointError, so the sweep stores the point as failed.
"""
from __future__ import annotations

import numpy as np

#: integration horizon of one retrieval (tau_v = 1)
T_END = 200.0
#: right-hand-side evaluations before a retrieval counts as stalled (a non-smooth similarity,
#: manhattan, can chatter at its kinks): the point is then stored as failed
MAX_NFEV = 20_000


def fixed_point_retriever(M, point):
    """queries (B, D) -> the readout P^T f(h) of the dynamics' final state (B, D) for memories M
    (see the module docstring); ValueError for a separation without an energy (max, ...)."""
    from uhn.dynamics.integrate import integrate
    from uhn.dynamics.lagrangians import NonConvexLagrangianError, for_separation, quadratic
    from uhn.dynamics.network import Network
    from uhn.models.experiments.basins import SEP_PARAM_NAMES
    from uhn.models.separation import get_separation
    from uhn.models.similarity import get_similarity
    params = {} if point.sep_param is None else \
        {SEP_PARAM_NAMES.get(point.separation, "param"): point.sep_param}
    try:
        L_h = for_separation(get_separation(point.separation, **params))
    except NonConvexLagrangianError as err:
        raise ValueError(f"the dynamics need a separation with an energy: {err}") from None
    net = Network(np.asarray(M, dtype=np.float64), get_similarity(point.similarity),
                  L_v=quadratic(), L_h=L_h, tau_v=1.0, tau_h=0.1)

    def retrieve(Q):
        try:
            traj = integrate(net, Q, T_END, method="RK45-batched", stop_at_fixed_point=True,
                             keep="ends", max_nfev=MAX_NFEV)
        except RuntimeError as err:   # a stalled integration: a failed point, not a bug
            raise FloatingPointError(f"the dynamics of {point.similarity!r} did not finish: "
                                     f"{err}") from None
        return np.asarray(net.readout(traj.h_final))

    return retrieve


#: the builders uhn.models.experiments.basins.run takes (``retrievers=``)
RETRIEVERS = {"dynamics": fixed_point_retriever}
