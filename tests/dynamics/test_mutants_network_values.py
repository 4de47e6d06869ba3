"""Checks of dynamics/network.py values that a full mutation run (tools/mutate.py) left unchecked:
the array-API right-hand side's 1/tau_v at tau_v = 2 and the promotion of float32 states to a
float64 network's dtype (which also found the adiabatic residual failing on array-API arrays). See docs/testing.md ("Full runs with --select coverage")."""
import numpy as np

from uhn.dynamics import lagrangians as L
from uhn.dynamics.network import Network
from uhn.models.arrays import to_numpy

EPS = np.finfo(np.float64).eps


def test_strict_rhs_divides_by_tau_v_of_two(to_strict):
    """tau_v dv/dt = M^T f - v with quadratic L_h (f = h) and dot similarity: with dyadic entries
    every operation is exact, so at tau_v = 2 dv/dt = (M^T h - v) / 2 exactly, on array-api-strict
    arrays as on numpy; dh/dt = (M v - h) / tau_h."""
    M = np.array([[1.0, -0.5], [0.25, 2.0], [-1.5, 0.75]])
    v, h = np.array([[0.5, -1.25]]), np.array([[0.375, -0.75, 1.0]])
    kw = dict(similarity="dot", L_v=L.quadratic(), L_h=L.quadratic(), tau_v=2.0, tau_h=0.5)
    expected_v, expected_h = (h @ M - v) / 2.0, (v @ M.T - h) / 0.5
    dv, dh = Network(to_strict(M), **kw).rhs(to_strict(v), to_strict(h))
    np.testing.assert_array_equal(to_numpy(dv), expected_v)
    np.testing.assert_array_equal(to_numpy(dh), expected_h)
    np.testing.assert_array_equal(Network(M, **kw).rhs(v, h)[0], expected_v)


def test_strict_float32_states_compute_in_the_networks_float64(to_strict):
    """float32 v and h given to a float64 network's residual (max |dy/dt|, which validates its
    states) are promoted before any arithmetic: with log cosh L_v (g = tanh v) and log-sum-exp L_h
    (softmax), the result equals the float64 computation from the same (exactly upcast) values to
    float64 round-off (a few eps64 of the terms, |terms| < 16 here), far below the ~1e-7 that a
    float32 tanh or softmax would leave. Both forms, (v, h) and adiabatic (h = S(g)): the adiabatic
    one raised on array-API arrays before (the validated v was unpacked as a pair, splitting rows).
    """
    import array_api_strict as xps
    rng = np.random.default_rng(3)
    M = rng.standard_normal((4, 3))
    v32, h32 = rng.standard_normal((2, 3)).astype(np.float32), rng.standard_normal((2, 4)).astype(np.float32)
    v32[1] += 6     # row 1: |dv/dt| ~ |v| > |dh/dt| ~ |M|, so the residual reads the v part (f = softmax(3 h))
    kw = dict(similarity="dot", L_v=L.log_cosh(), L_h=L.log_sum_exp(3.0), tau_v=1.0, tau_h=1.0)
    sM = to_strict(M)
    snet = Network(sM, **kw)
    for adiabatic in (False, True):
        sv, sh = xps.asarray(v32, device=sM.device), xps.asarray(h32, device=sM.device)
        r = snet.residual(sv, None if adiabatic else sh, adiabatic=adiabatic)
        assert r.dtype == xps.float64
        ref = Network(M, **kw).residual(v32.astype(np.float64), None if adiabatic else h32.astype(np.float64),
                                        adiabatic=adiabatic)
        np.testing.assert_allclose(to_numpy(r), ref, rtol=0, atol=64 * EPS)


def test_strict_initial_state_casts_h0_to_the_common_dtype(to_strict):
    """initial_state returns (v0, h0) in the common dtype of the queries and the memories: a float32
    h0 given with float64 queries to a float64 network comes back float64, with the same values
    (the upcast is exact)."""
    import array_api_strict as xps
    M = to_strict(np.eye(3, 2))
    h0 = xps.asarray(np.array([[0.1, -0.2, 0.3]], dtype=np.float32), device=M.device)
    v0, h = Network(M, "dot").initial_state(to_strict([[0.5, -0.25]]), h0)
    assert v0.dtype == xps.float64 and h.dtype == xps.float64
    np.testing.assert_array_equal(to_numpy(h), to_numpy(h0).astype(np.float64))
