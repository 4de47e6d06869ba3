"""Separation functions against hand-worked values and closed forms (docs/theory.md), row-wise on
(B, N) scores; bad parameters and NaN scores refused with the parameter or separation named."""
import re

import numpy as np
import pytest
import scipy.special
from hypothesis import given, strategies as st
from hypothesis.extra.numpy import arrays
from numpy.testing import assert_allclose, assert_array_equal

from uhn.models.separation import EXP_MAX, get_separation, names

EPS = np.finfo(np.float64).eps

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
    # hand-worked: S has dyadic entries, so every power below is exact in float64
    assert_array_equal(get_separation("polynomial", n=3)(S), [[0, 0, 0.125, 8], [27, 0, 1, 1]])
    Wsg = get_separation("polynomial", n=2, rectified=False)(S)
    assert_array_equal(Wsg, [[-2.25, 0, 0.25, 4], [9, -4, 1, 1]])
    # the signed form is odd-symmetric, the rectified one is zero for negative scores
    assert_array_equal(get_separation("polynomial", n=2, rectified=False)(-S), -Wsg)
    assert_array_equal(get_separation("polynomial", n=2)(-S), [[2.25, 0, 0, 0], [0, 4, 0, 0]])
    # a fractional degree: 0.25^0.5 = 0.5 and 4^1.5 = 8 exactly (pow is correctly rounded here)
    assert_array_equal(get_separation("polynomial", n=1.5)(np.array([0.25, 4.0, -1.0])), [0.125, 8.0, 0.0])
    assert get_separation("polynomial", n=3).lagrangian == "rectified_polynomial"
    assert get_separation("polynomial", n=3, rectified=False).lagrangian == "signed_polynomial"
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match=r"polynomial degree n must be > 0"):
            get_separation("polynomial", n=bad)
    for bad in (np.nan, np.inf):
        with pytest.raises(ValueError, match=r"polynomial degree n must be a finite number"):
            get_separation("polynomial", n=bad)


@pytest.mark.parametrize("rectified", [True, False])
def test_polynomial_below_degree_one_has_no_energy(rectified):
    # n < 1: the Hessian n |h|^(n-1) of the Lagrangian blows up at h = 0, so there is no energy
    sep = get_separation("polynomial", n=0.5, rectified=rectified)
    assert sep.lagrangian is None
    assert re.search(r"n < 1.*unbounded at h = 0", sep.no_energy)
    edge = get_separation("polynomial", n=1, rectified=rectified)  # n = 1 is still convex
    assert edge.lagrangian == ("rectified_polynomial" if rectified else "signed_polynomial")
    assert edge.no_energy == ""


@given(S=scores, beta=st.sampled_from([0.01, 0.5, 1.0, 3.0, 10.0]))
def test_softmax_matches_scipy_and_sums_to_one(S, beta):
    W = get_separation("softmax", beta=beta)(S)
    assert np.all(np.isfinite(W)) and np.all(W >= 0)
    # a sum of N rounded weights: within (N + 2) eps of 1
    assert_allclose(W.sum(1), 1.0, rtol=(S.shape[1] + 2) * EPS)
    # scipy rounds beta S and the shifted arguments independently: each weight's exponent may differ
    # by eps |beta S| max, a relative error of that, plus ~3 eps for exp and the normalisation
    rtol = 2 * (beta * np.abs(S).max() + 3) * EPS
    assert_allclose(W, scipy.special.softmax(beta * S, axis=1), rtol=rtol, atol=np.finfo(float).tiny)


@given(S=scores, shift=st.floats(-1e3, 1e3), beta=st.sampled_from([0.01, 1.0, 10.0]))
def test_softmax_is_shift_invariant(S, shift, beta):
    """softmax(S + c) = softmax(S) for a constant c per row (the max is shifted out anyway).
    Rounding S + c moves each score by up to eps |S + c| / 2, so beta (S + c) by that times beta;
    after the shift each exp(x) carries a relative error |dx| plus ~3 eps for exp, subtraction and
    the normalising sum: the weights agree to rtol = 2 (beta eps max|S + c| + 3 eps)."""
    S2 = S + shift
    W1, W2 = get_separation("softmax", beta=beta)(S), get_separation("softmax", beta=beta)(S2)
    rtol = 2 * (beta * EPS * np.abs(S2).max() + 3 * EPS)
    # subnormal weights (exp below -708) lose relative precision: absolute floor at the smallest normal
    assert_allclose(W2, W1, rtol=rtol, atol=np.finfo(float).tiny)


@given(S=scores)
def test_softmax_huge_beta_is_finite_and_one_hot_like(S):
    W = get_separation("softmax", beta=1e6)(S)
    assert np.all(np.isfinite(W))
    assert_allclose(W.sum(1), 1.0, rtol=(S.shape[1] + 2) * EPS)
    # all the weight sits on the maxima (ties share it) wherever the runner-up is clearly below
    top = S == S.max(1, keepdims=True)
    gap = np.where(top, np.inf, S.max(1, keepdims=True) - S).min(1)
    clear = gap > 1e-3
    # a runner-up 1e-3 below gets exp(-beta 1e-3) = exp(-1000), which underflows to 0
    assert_allclose(W[clear], top[clear] / top[clear].sum(1, keepdims=True), atol=S.shape[1] * np.exp(-1e3))


def test_softmax_huge_beta_hand_case():
    W = get_separation("softmax", beta=1e6)(np.array([0.1, 0.2, 0.3, 0.3 - 1e-4]))
    assert np.all(np.isfinite(W))
    # the runner-up, 1e-4 below the max, keeps exp(-1e6 * 1e-4) = exp(-100) ~ 4e-44
    assert_allclose(W, [0, 0, 1, 0], rtol=2 * np.exp(-100.0), atol=2 * np.exp(-100.0))
    assert 0 < W[3] < 2 * np.exp(-100.0)


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
    with pytest.raises(ValueError, match=r"k_max k must be >= 1, got 0"):
        get_separation("k_max", k=0)


def test_k_max_k_must_be_an_integer():
    # 2.7 used to become 2 silently; an integral float is accepted as that integer
    with pytest.raises(TypeError, match=r"k_max k must be an integer, got float 2\.7"):
        get_separation("k_max", k=2.7)
    with pytest.raises(TypeError, match="k_max k must be an integer"):
        get_separation("k_max", k="2")
    sep = get_separation("k_max", k=3.0)
    assert sep.top_k == 3 and sep.name == "k_max(k=3)"
    with pytest.raises(ValueError, match=r"k_max\(k=3\) asks for more memories than are stored \(2\)"):
        sep(np.array([[1.0, 2.0]]))


def test_exp_formula_and_overflow():
    # hand-worked: exp(2 * ln(2)/2) = 2, exp(2 * -ln(3)/2) = 1/3. The scores carry a rounding of
    # eps/2 relative, so beta S is off by up to eps |beta S| / 2 and exp(beta S) by that relatively,
    # plus 1 ulp for exp itself: rtol = (|beta S|max + 2) eps
    s = np.array([0.0, np.log(2.0) / 2, -np.log(3.0) / 2])
    assert_allclose(get_separation("exp", beta=2.0)(s), [1.0, 2.0, 1.0 / 3.0], rtol=(np.log(3.0) + 2) * EPS)
    assert_allclose(get_separation("exp")(np.array([0.0, 1.0])), [1.0, np.e], rtol=3 * EPS)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match=r"exp beta must be > 0"):
            get_separation("exp", beta=bad)
    with pytest.raises(ValueError, match=r"exp beta must be a finite number"):
        get_separation("exp", beta=np.nan)
    with pytest.raises(OverflowError, match="overflow"):
        get_separation("exp")(np.array([EXP_MAX + 1.0, 0.0]))
    with pytest.raises(OverflowError, match="softmax"):
        get_separation("exp", beta=1e6)(np.array([1.0]))


def test_log_formula_and_non_positive_scores():
    # np.e is e rounded (relative eps/2): its log is 1 within eps/2, plus 1 ulp for log itself
    assert_allclose(get_separation("log")(np.array([1.0, np.e, 0.5])), [0.0, 1.0, -np.log(2.0)], rtol=2 * EPS)
    for bad in ([1.0, 0.0], [1.0, -2.0]):
        with pytest.raises(ValueError, match="strictly positive"):
            get_separation("log")(np.array(bad))


def test_threshold_refuses_nan_and_infinite_theta():
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValueError, match=r"threshold theta must be a finite number"):
            get_separation("threshold", theta=bad)
    with pytest.raises(TypeError, match="threshold theta must be a real number"):
        get_separation("threshold", theta="0.5")


@pytest.mark.parametrize("name,params", [("identity", {}), ("threshold", {}), ("polynomial", {"n": 3}),
                                         ("polynomial", {"n": 2, "rectified": False}),
                                         ("softmax", {"beta": 2.0}), ("max", {}), ("k_max", {"k": 2}),
                                         ("exp", {}), ("log", {})])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_scores_are_refused_naming_the_separation(name, params, bad):
    # max used to return a one-hot at the NaN, identity/polynomial to pass it on, softmax to blame overflow
    sep = get_separation(name, **params)
    Sb = np.array([[0.3, 1.2, 0.7], [0.5, bad, 0.1]])
    with pytest.raises(ValueError, match=re.escape(f"separation {sep.name} got 1 NaN/inf") + r".*query 1, memory 1"):
        sep(Sb)
    with pytest.raises(ValueError, match=re.escape(f"separation {sep.name}")):
        sep(Sb[1])


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


# --------------------------------------------------------------------------------------------------
# Values mutation testing (tools/mutate.py; docs/testing.md) found unchecked, pinned on
# inputs where they are known exactly (dyadic scores, one-hot weights): a changed default, a flipped
# comparison or a wrong shift changes a number asserted here.


def test_threshold_default_theta_is_zero_and_includes_the_boundary():
    """sep(S)_mu = 1 if S_mu >= theta else 0, theta = 0 by default: a score equal to theta counts."""
    W = get_separation("threshold")(np.array([-1.0, -2.0**-1074, 0.0, 0.5]))
    np.testing.assert_array_equal(W, [0.0, 0.0, 1.0, 1.0])
    W = get_separation("threshold", theta=-3.0)(np.array([-3.0, -3.5]))
    np.testing.assert_array_equal(W, [1.0, 0.0])


@pytest.mark.parametrize("n", [1.0, 1.5])
def test_polynomial_of_degree_at_least_one_has_a_lagrangian(n):
    """Convex Lagrangian max(h, 0)^(n+1)/(n+1) for every n >= 1, not only integers >= 2."""
    sep = get_separation("polynomial", n=n)
    assert sep.lagrangian == "rectified_polynomial" and sep.no_energy == ""
    assert get_separation("polynomial", n=0.5).lagrangian is None


def test_polynomial_default_degree_is_two():
    """sep(S) = max(S, 0)^n with n = 2 by default (the docstring's default; a changed default
    survived a full mutation run of separation.py): exact on dyadic scores."""
    sep = get_separation("polynomial")
    np.testing.assert_array_equal(sep(np.array([[-1.5, 0.0, 0.5, 3.0]])), [[0.0, 0.0, 0.25, 9.0]])
    assert sep.name == "polynomial(n=2)"
    signed = get_separation("polynomial", rectified=False)
    np.testing.assert_array_equal(signed(np.array([[-1.5, 0.5]])), [[-2.25, 0.25]])


def test_k_max_weights_are_one_over_k_on_the_top_k():
    """Uniform 1/k on the k largest scores (ties to the lower index): for k = 4 exactly 0.25
    (a power of two, so exact), 0 elsewhere, summing to 1."""
    S = np.array([[5.0, 1.0, 4.0, 2.0, 3.0, 0.0]])
    W = get_separation("k_max", k=4)(S)
    np.testing.assert_array_equal(W, [[0.25, 0.0, 0.25, 0.25, 0.25, 0.0]])
    W = get_separation("k_max", k=4)(np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]))
    np.testing.assert_array_equal(W, [[0.0, 0.0, 0.25, 0.25, 0.25, 0.25]])


def test_top_k_names():
    """k = 1 is the paper's "max"; larger k carry their k (result files are keyed by these names)."""
    assert get_separation("max").name == "max" and get_separation("k_max", k=1).name == "max"
    assert get_separation("k_max", k=2).name == "k_max(k=2)"


def test_softmax_shifts_by_the_row_maximum():
    """exp(beta S) / sum exp(beta S) with the maximum shifted out: scores 1000 apart give the
    one-hot [1, 0] exactly (exp(-1000) underflows to 0); shifting by anything smaller would make
    exp overflow to inf and the weights NaN."""
    W = get_separation("softmax", beta=1.0)(np.array([[0.0, -1000.0], [-5000.0, 700.0]]))
    np.testing.assert_array_equal(W, [[1.0, 0.0], [0.0, 1.0]])


def test_separations_say_whether_they_zero_every_nonpositive_score():
    """The record Memory reads to refuse a separation that weights nothing on distance scores
    (issue 29): a rectified polynomial is 0 at every S <= 0, a signed one is not; threshold
    theta > 0 zeroes every S <= 0, theta <= 0 keeps the matches (S = 0); softmax never zeroes."""
    S = np.array([[-3.0, -0.5, 0.0]])
    cases = [(get_separation("polynomial", n=2), True), (get_separation("polynomial", n=2, rectified=False), False),
             (get_separation("threshold", theta=0.5), True), (get_separation("threshold", theta=0.0), False),
             (get_separation("threshold", theta=-1.0), False), (get_separation("softmax"), False),
             (get_separation("identity"), False), (get_separation("max"), False)]
    for sep, zeroes in cases:
        assert sep.zero_at_nonpositive is zeroes, sep.name
        assert bool(np.all(sep(S) == 0)) is zeroes, sep.name      # the record says what fn does
