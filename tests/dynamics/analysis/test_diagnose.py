"""uhn.dynamics.analysis.diagnose: why a query did or did not retrieve, on constructed cases with known answers."""
import numpy as np
import pytest

from uhn.dynamics import lagrangians as L
from uhn.dynamics.analysis.diagnose import (DOMINANT, MIN_BETA_GAP, beta_gap, classify, diagnose,
    summary)
from uhn.dynamics.integrate import integrate
from uhn.dynamics.network import Network


def test_each_verdict_on_constructed_weights():
    W = np.array([[0.9, 0.05, 0.05],    # dominant on the target
                  [0.4, 0.35, 0.25],    # no dominant entry
                  [0.05, 0.9, 0.05],    # dominant on the wrong memory
                  [0.4, 0.35, 0.25],    # blend, but the query was not separable
                  [0.9, 0.05, 0.05]])   # right memory, still moving
    d = classify(W, [0, 0, 0, 0, 0], [True, True, True, True, False], [5.0, 5.0, 5.0, 0.2, 5.0])
    assert [x.verdict for x in d] == ["retrieved", "mixture state", "spurious attractor",
                                      "beta too small", "not converged"]
    assert [x.winner for x in d] == [0, 0, 1, 0, 0]
    assert d[1].share == pytest.approx(0.4, abs=1e-15)     # 0.4 / 1.0, one rounding
    assert "mixture state" in d[1].reason() and "0.40" in d[1].reason()
    assert "memory 1" in d[2].reason() and "not memory 0" in d[2].reason()
    assert "raise beta" in d[3].reason() and "0.2" in d[3].reason()
    text = summary(d)
    assert text.splitlines()[0].startswith("retrieved 1/5 queries")
    assert len(text.splitlines()) == 5   # one line per failed query


def test_thresholds_are_inclusive_at_the_boundary():
    # share exactly DOMINANT counts as dominant; beta gap exactly MIN_BETA_GAP is enough
    W = np.array([[DOMINANT, 1 - DOMINANT]])
    assert classify(W, [0], [True], [MIN_BETA_GAP])[0].verdict == "retrieved"
    assert classify(W, [1], [True], [MIN_BETA_GAP])[0].verdict == "spurious attractor"


def test_signed_weights_use_their_magnitude_share():
    # polynomial-type activations need not be normalised or positive: share = max|f| / sum|f|
    d = classify([[-3.0, 1.0]], [0], [True])[0]
    assert d.winner == 0 and d.share == pytest.approx(0.75, abs=1e-15) and d.beta_gap is None


def test_beta_gap_is_beta_times_the_top_two_similarities():
    M = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.6]])
    net = Network(M, "dot", L_h=L.log_sum_exp(2.0))
    q = np.array([[1.0, 0.5]])          # S = M q = (1.0, 0.5, 0.9): gap 0.1, times beta 2
    np.testing.assert_allclose(beta_gap(net, q), [0.2], rtol=0, atol=4 * np.finfo(float).eps)
    assert beta_gap(Network(M, "dot", L_h=L.rectified_polynomial(3)), q) is None


def test_diagnose_a_real_run_small_beta_gives_a_blend_large_beta_retrieves():
    # three orthonormal memories, query leaning to memory 0: dot similarity, S = M q =
    # (0.6, 0.4, 0.3); beta = 1 gives beta * gap = 0.2 (< 1); beta = 50 gives 10
    M = np.eye(3)
    q = np.array([[0.6, 0.4, 0.3]])
    small = Network(M, "dot", L_h=L.log_sum_exp(1.0))
    d = diagnose(small, integrate(small, q, t_end=60.0), q, [0])[0]
    # at the fixed point v* = softmax(v*), whose only solution for beta = 1 is the uniform blend
    # (1/3, 1/3, 1/3). The run stops where |dv/dt| <= 1e-8 + 30 (1e-10 + 1e-8 |v|) / tau_v ~ 1e-7;
    # the map v -> softmax(v) contracts (Lipschitz <= beta / 2 = 0.5), so |v - v*| <= 2e-7 and
    # the share is 1/3 within that: 1e-6 allows 5x
    assert d.verdict == "beta too small" and d.converged
    assert d.share == pytest.approx(1 / 3, abs=1e-6)
    big = Network(M, "dot", L_h=L.log_sum_exp(50.0))
    d = diagnose(big, integrate(big, q, t_end=60.0), q, [0])[0]
    assert d.verdict == "retrieved" and d.share > 0.99
    d = diagnose(big, integrate(big, q, t_end=60.0), q, [1])[0]
    assert d.verdict == "spurious attractor" and d.winner == 0


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="targets must be memory indices"):
        classify([[0.5, 0.5]], [2], [True])
    with pytest.raises(ValueError, match="shape mismatch"):
        classify([[0.5, 0.5]], [0, 1], [True])
    with pytest.raises(ValueError, match="must be finite"):
        classify([[np.nan, 0.5]], [0], [True])
