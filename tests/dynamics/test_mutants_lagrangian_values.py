"""Closed-form checks of dynamics/lagrangians.py values that a full mutation run left unchecked.

log cosh beyond |x| = 1 (the branch of large arguments), the round-off sizes that energy's
allowances read (value_size, hvp_size: each a sum of the magnitudes of the terms, known in closed
form), the overflow errors of softmax and of the exponential Lagrangian when a single entry
overflows, and the tolerance of check_convex relative to |u|^2. See docs/testing.md ("Full runs
with --select coverage").
"""
import math

import numpy as np
import pytest

from uhn.dynamics import lagrangians as L

EPS = np.finfo(np.float64).eps


def test_log_cosh_value_beyond_one():
    """log cosh x for |x| >= 1 (x = 1, -3, 7.5; 0.5 takes the small-argument branch) against numpy's
    log(cosh x). Each side is within a few ulps of its terms, which sum to at most 5.5 times the
    result (class docstring): 16 eps times the result covers both."""
    x = np.array([[1.0, -3.0, 7.5, 0.5]])
    expected = np.log(np.cosh(x[0])).sum()
    np.testing.assert_allclose(L.log_cosh().value(x), [expected], rtol=16 * EPS * 5.5, atol=0)


def test_log_cosh_value_size_switches_at_one():
    """value_size sums |x| + 2 log 2 per entry with |x| >= 1 (the magnitudes of the large-argument
    formula's terms) and log cosh x itself below 1 (one positive term): at x = 1.0 exactly, 1.5
    and 0.5: 3 + 4 log 2 + log cosh(0.5), to the round-off of a 3-term sum of positive numbers."""
    x = np.array([[1.0, 1.5, 0.5]])
    expected = 1.0 + 2 * math.log(2.0) + 1.5 + 2 * math.log(2.0) + math.log(math.cosh(0.5))
    np.testing.assert_allclose(L.log_cosh().value_size(x), [expected], rtol=8 * EPS, atol=0)


def test_log_sum_exp_value_size_closed_form():
    """value_size = |max x| + |L(x) - max x|: x = (1, -2), beta = 1 gives L = 1 + log(1 + e^-3),
    so 1 + log(1 + e^-3) (shifting by the minimum instead would give 2 + 3 + log(1 + e^-3))."""
    x = np.array([[1.0, -2.0]])
    np.testing.assert_allclose(L.log_sum_exp(1.0).value_size(x), [1.0 + math.log1p(math.exp(-3.0))],
                               rtol=8 * EPS, atol=0)


def test_spherical_hvp_size_closed_form():
    """hvp_size = (|u| + |g| |g.u|) / |x| with g = x / |x|: x = (3, 4), u = (1, 0) gives |x| = 5,
    g = (0.6, 0.8), g.u = 0.6, so ((1 + 0.36) / 5, 0.48 / 5) = (0.272, 0.096)."""
    got = L.spherical().hvp_size(np.array([[3.0, 4.0]]), np.array([[1.0, 0.0]]))
    np.testing.assert_allclose(got, [[0.272, 0.096]], rtol=8 * EPS, atol=0)


def test_softmax_overflow_of_one_entry_is_an_error(as_array):
    """beta x = (inf, 0): one entry overflows; softmax would be NaN. grad raises naming beta, on
    numpy and on the array-API branch (array-api-strict)."""
    with pytest.raises(OverflowError, match=r"beta \* x overflows.*beta=10"):
        L.log_sum_exp(10.0).grad(as_array(np.array([[1e308, 0.0]])))


def test_exponential_overflow_of_one_entry_is_an_error():
    """exp(1000) overflows float64 while exp(0) does not: the error is raised, not an inf value."""
    with pytest.raises(OverflowError, match=r"exp\(beta x\) overflows \(beta x up to 1000"):
        L.exponential(1.0).value(np.array([[1000.0, 0.0]]))


class _Concave(L.Lagrangian):
    """Test Lagrangian with Hessian -a I: u^T H u = -a |u|^2 for every u."""

    kind = "test_concave"

    def __init__(self, a):
        super().__init__(a=a)
        self.a = a

    def hvp(self, x, u):
        return -self.a * u


def test_check_convex_refuses_curvature_below_minus_tol_u_squared():
    """-1e-8 |u|^2 is below the default tolerance -1e-10 |u|^2: refused."""
    with pytest.raises(L.NonConvexLagrangianError, match="negative Hessian direction at state row 0"):
        _Concave(1e-8).check_convex(np.zeros((2, 100)))


def test_check_convex_tolerance_is_relative_to_u_squared():
    """-1e-12 |u|^2 with |u|^2 about 100 (K = 100) is within -1e-10 |u|^2: accepted (an absolute
    tolerance, or one divided by |u|^2, would refuse it)."""
    _Concave(1e-12).check_convex(np.zeros((2, 100)))
