"""Separation functions against their formulas (DESIGN.md section 1), row-wise on (B, N) scores."""
import numpy as np
import pytest
import scipy.special
from hypothesis import given, strategies as st
from hypothesis.extra.numpy import arrays
from numpy.testing import assert_allclose, assert_array_equal

from models.separation import EXP_MAX, get_separation, names

S = np.array([[-1.5, 0.0, 0.5, 2.0],
              [3.0, -2.0, 1.0, 1.0]])

scores = arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 12)),
                elements=st.floats(-50, 50, allow_nan=False))


def test_identity():
    W = get_separation("identity")(S)
    assert_array_equal(W, S)
    assert W is not S


def test_threshold_includes_the_boundary():
    W = get_separation("threshold", theta=0.5)(S)
    assert_array_equal(W, [[0, 0, 1, 1], [1, 0, 1, 1]])
    assert_array_equal(get_separation("threshold")(S), [[0, 1, 1, 1], [1, 0, 1, 1]])


def test_polynomial_rectified_and_signed():
    assert_allclose(get_separation("polynomial", n=3)(S), np.maximum(S, 0) ** 3)
    assert_allclose(get_separation("polynomial", n=3)(S)[0], [0, 0, 0.125, 8])
    Wsg = get_separation("polynomial", n=2, rectified=False)(S)
    assert_allclose(Wsg[0], [-2.25, 0, 0.25, 4])
    assert_allclose(Wsg, np.sign(S) * np.abs(S) ** 2)
    # the signed form is odd-symmetric, the rectified one is zero for negative scores
    assert_allclose(get_separation("polynomial", n=2, rectified=False)(-S), -Wsg)
    assert get_separation("polynomial", n=3).lagrangian == "rectified_polynomial"
    assert get_separation("polynomial", n=3, rectified=False).lagrangian == "signed_polynomial"
    with pytest.raises(ValueError, match="positive degree"):
        get_separation("polynomial", n=0)


@given(S=scores, beta=st.sampled_from([0.01, 0.5, 1.0, 3.0, 10.0]))
def test_softmax_matches_scipy_and_sums_to_one(S, beta):
    W = get_separation("softmax", beta=beta)(S)
    assert np.all(np.isfinite(W)) and np.all(W >= 0)
    assert_allclose(W.sum(1), 1.0, rtol=1e-12)
    assert_allclose(W, scipy.special.softmax(beta * S, axis=1), rtol=1e-10, atol=1e-300)


@given(S=scores)
def test_softmax_huge_beta_is_finite_and_one_hot_like(S):
    W = get_separation("softmax", beta=1e6)(S)
    assert np.all(np.isfinite(W))
    assert_allclose(W.sum(1), 1.0, rtol=1e-12)
    # all the weight sits on the maxima (ties share it) wherever the runner-up is clearly below
    top = S == S.max(1, keepdims=True)
    gap = np.where(top, np.inf, S.max(1, keepdims=True) - S).min(1)
    clear = gap > 1e-3
    assert_allclose(W[clear], top[clear] / top[clear].sum(1, keepdims=True), atol=1e-12)


def test_softmax_huge_beta_hand_case():
    W = get_separation("softmax", beta=1e6)(np.array([0.1, 0.2, 0.3, 0.3 - 1e-4]))
    assert np.all(np.isfinite(W))
    assert_allclose(W, [0, 0, 1, 0], atol=1e-40)


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_softmax_parameters_and_overflow():
    for bad in (0.0, -1.0, np.inf, np.nan):
        with pytest.raises(ValueError, match="beta"):
            get_separation("softmax", beta=bad)
    with pytest.raises(OverflowError, match="overflows"):
        get_separation("softmax", beta=1e6)(np.array([1e305, 0.0]))


def test_max_is_one_hot_and_breaks_ties_to_the_lowest_index():
    sep = get_separation("max")
    W = sep(S)
    assert_array_equal(W, [[0, 0, 0, 1], [1, 0, 0, 0]])
    assert_array_equal(sep(np.array([1.0, 3.0, 3.0, 2.0])), [0, 1, 0, 0])
    assert_array_equal(sep(np.array([[5.0, 5.0, 5.0]])), [[1, 0, 0]])
    assert sep.top_k == 1 and sep.lagrangian is None and sep.no_energy


@given(S=scores, k=st.integers(1, 5))
def test_k_max_gives_k_entries_of_one_over_k(S, k):
    if k > S.shape[1]:
        with pytest.raises(ValueError, match="more memories"):
            get_separation("k_max", k=k)(S)
        return
    W = get_separation("k_max", k=k)(S)
    assert np.all((W == 0) | (W == 1.0 / k))
    assert_array_equal((W > 0).sum(1), k)
    # every kept score is >= every dropped score
    kept_min = np.where(W > 0, S, np.inf).min(1)
    dropped_max = np.where(W > 0, -np.inf, S).max(1)
    assert np.all(kept_min >= dropped_max)


def test_k_max_ties_go_to_lower_indices():
    W = get_separation("k_max", k=2)(np.array([1.0, 3.0, 2.0, 3.0, 3.0]))
    assert_array_equal(W, [0, 0.5, 0, 0.5, 0])
    with pytest.raises(ValueError, match="k >= 1"):
        get_separation("k_max", k=0)


def test_exp_formula_and_overflow():
    assert_allclose(get_separation("exp")(np.array([0.0, 1.0, -2.0])), [1.0, np.e, np.exp(-2.0)], rtol=1e-15)
    assert_allclose(get_separation("exp", beta=2.0)(S), np.exp(2.0 * S), rtol=1e-15)
    with pytest.raises(OverflowError, match="overflow"):
        get_separation("exp")(np.array([EXP_MAX + 1.0, 0.0]))
    with pytest.raises(OverflowError, match="softmax"):
        get_separation("exp", beta=1e6)(np.array([1.0]))


def test_log_formula_and_non_positive_scores():
    assert_allclose(get_separation("log")(np.array([1.0, np.e, 0.5])), [0.0, 1.0, np.log(0.5)], rtol=1e-15)
    for bad in ([1.0, 0.0], [1.0, -2.0]):
        with pytest.raises(ValueError, match="strictly positive"):
            get_separation("log")(np.array(bad))


def test_energy_flags():
    for name in ("max", "log", "threshold"):
        sep = get_separation(name)
        assert sep.lagrangian is None and sep.no_energy
    assert get_separation("k_max", k=3).lagrangian is None
    assert get_separation("identity").lagrangian == "quadratic"
    assert get_separation("softmax", beta=2).lagrangian == "log_sum_exp"
    assert get_separation("exp").lagrangian == "exponential"


def test_registry_errors():
    assert set(names()) == {"identity", "threshold", "polynomial", "softmax", "max", "k_max", "exp", "log"}
    with pytest.raises(ValueError, match=r"unknown separation 'argmax'.*'k_max'.*'softmax'"):
        get_separation("argmax")
    with pytest.raises(TypeError, match="bad parameters"):
        get_separation("max", k=3)
    sep = get_separation("softmax", beta=10)
    assert get_separation(sep) is sep and sep.name == "softmax(beta=10)"
    with pytest.raises(ValueError, match="parameters given"):
        get_separation(sep, beta=2)


@pytest.mark.parametrize("name,params", [("identity", {}), ("threshold", {}), ("polynomial", {"n": 3}),
                                         ("softmax", {"beta": 2.0}), ("max", {}), ("k_max", {"k": 2}),
                                         ("exp", {}), ("log", {})])
def test_separations_never_write_into_the_scores(name, params):
    S = np.abs(np.array([[0.3, 1.2, 0.7], [2.0, 0.1, 0.5]]))
    S0 = S.copy()
    W = get_separation(name, **params)(S)
    assert_array_equal(S, S0)
    assert not np.shares_memory(W, S)
