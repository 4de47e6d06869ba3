"""Every Lagrangian: values, gradients, Hessians and Legendre terms against closed forms derived by
hand; gradient vs finite differences of the value and hvp vs finite differences of the gradient,
with tolerances from the differences' round-off and truncation; PSD Hessians; refusal of
non-convex ones."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from uhn.dynamics import lagrangians as L

ALL = [L.quadratic(), L.rectified_polynomial(2.0), L.rectified_polynomial(3.0), L.signed_polynomial(3.0),
       L.log_sum_exp(1.0), L.log_sum_exp(5.0), L.exponential(0.5), L.spherical(), L.log_cosh(),
       L.softplus(), L.elementwise(lambda x: x ** 4 / 4 + x ** 2 / 2, lambda x: x ** 3 + x,
                                   lambda x: 3 * x ** 2 + 1, name="quartic")]
IDS = [lag.name for lag in ALL]
EPS = np.finfo(np.float64).eps
#: round-off of one evaluation, in ulps of the summed |terms| it adds (as in uhn.dynamics.analysis.energy)
ULPS = 4.0
#: an error may be this many times its estimate (estimates of the error's size, not bounds)
SAFETY = 10.0
_L2 = np.log(2.0)


def _central(fun, x, u, s):
    """(fun(x + s u) - fun(x - s u)) / (2 s)."""
    return (fun(x + s * u) - fun(x - s * u)) / (2 * s)


def _fd_and_allowed(fun, size_fun, x, u):
    """Directional derivative of ``fun`` at x along u by central differences, and the error it may
    have: round-off ULPS eps size / s (size: the summed |terms| of one evaluation, ``size_fun``)
    plus the Richardson truncation estimate |fd(s) - fd(2s)| / 3 (fd(s) = f' + f'''s^2/6 + ...),
    at s = eps^(1/3) max(1, |x|) / max|u|, where the two balance for O(1) derivatives."""
    s = EPS ** (1 / 3) * max(1.0, np.abs(x).max()) / np.abs(u).max()
    f1 = _central(fun, x, u, s)
    f2 = _central(fun, x, u, 2 * s)
    size = np.maximum(size_fun(x + s * u), size_fun(x - s * u))
    return f1, SAFETY * (ULPS * EPS * size / s + np.abs(f1 - f2) / 3)


def _points(seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, (3, 5))
    x[np.abs(x) < 1e-2] = 0.3  # stay off the kinks of rectified / signed polynomials (s ~ 1e-5)
    return x, rng.standard_normal(x.shape)


@pytest.mark.parametrize("lag", ALL, ids=IDS)
@settings(max_examples=8)
@given(seed=st.integers(0, 2**31 - 1))
def test_grad_matches_fd_of_value(lag, seed):
    """u . grad L(x) = d/ds L(x + s u) at s = 0."""
    x, u = _points(seed)
    fd, allowed = _fd_and_allowed(lag.value, lag.value_size, x, u)
    an = np.einsum("bk,bk->b", u, lag.grad(x))
    an_roundoff = ULPS * EPS * np.abs(u * lag.grad(x)).sum(1)
    assert np.all(np.abs(an - fd) <= allowed + SAFETY * an_roundoff), (an, fd, allowed)


@pytest.mark.parametrize("lag", ALL, ids=IDS)
@settings(max_examples=8)
@given(seed=st.integers(0, 2**31 - 1))
def test_hvp_matches_fd_of_grad(lag, seed):
    """H(x) u = d/ds grad L(x + s u) at s = 0, componentwise; H PSD at x."""
    x, u = _points(seed)
    fd, allowed = _fd_and_allowed(lag.grad, lambda y: np.abs(lag.grad(y)), x, u)
    Hu = lag.hvp(x, u)
    # hvp's own round-off: a few ulps of the terms it adds, at most |H| |u| ~ max|fd| max|u| per entry
    hvp_roundoff = ULPS * EPS * np.abs(u).max() * max(np.abs(fd).max(), np.abs(Hu).max())
    assert np.all(np.abs(Hu - fd) <= allowed + SAFETY * hvp_roundoff), (Hu, fd, allowed)
    c = lag.curvature(x, u)
    assert np.all(c >= -SAFETY * ULPS * EPS * np.abs(u * Hu).sum(1))  # PSD up to round-off
    lag.check_convex(x)


def _logs(beta, k):
    """x = log(1..k) / beta, where exp(beta x) = 1, 2, ..., k: closed forms become rational."""
    return (np.log(np.arange(1.0, k + 1)) / beta)[None, :]


#: closed forms derived by hand: name -> (Lagrangian, x, L(x), grad L(x), legendre x.grad - L, H(x) 1)
CLOSED = {
    # L = |x|^2/2: grad x, legendre |x|^2 - |x|^2/2 = |x|^2/2 = 7, H = I
    "quadratic": (L.quadratic(), np.array([[1.0, -2.0, 3.0]]), 7.0, [1.0, -2.0, 3.0], 7.0,
                  [1.0, 1.0, 1.0]),
    # L = sum max(x,0)^3/3: grad max(x,0)^2, legendre x max(x,0)^2 - max(x,0)^3/3 = (2/3) sum max(x,0)^3,
    # H = 2 max(x,0)
    "rectified_polynomial(2)": (L.rectified_polynomial(2.0), np.array([[2.0, -1.0, 0.5]]),
                                (8 + 0.125) / 3, [4.0, 0.0, 0.25], (2 / 3) * (8 + 0.125), [4.0, 0.0, 1.0]),
    # L = sum |x|^4/4: grad sign(x)|x|^3, legendre (3/4) sum |x|^4, H = 3 x^2
    "signed_polynomial(3)": (L.signed_polynomial(3.0), np.array([[2.0, -1.0, 0.5]]),
                             (16 + 1 + 0.0625) / 4, [8.0, -1.0, 0.125], 0.75 * (16 + 1 + 0.0625),
                             [12.0, 3.0, 0.75]),
    # beta = 2, exp(beta x) = 1..4: L = log(10)/2, f = k/10, legendre (1/beta) sum f log f,
    # H 1 = beta (f - f (f.1)) = 0 (softmax is shift invariant)
    "log_sum_exp(2)": (L.log_sum_exp(2.0), _logs(2.0, 4), np.log(10.0) / 2, [0.1, 0.2, 0.3, 0.4],
                       sum(f * np.log(f) for f in (0.1, 0.2, 0.3, 0.4)) / 2, [0.0] * 4),
    # beta = 0.5, exp(beta x) = 1..3: L = 6/beta = 12, grad 1, 2, 3,
    # legendre sum (x - 1/beta) exp(beta x) = sum k (2 log k - 2), H = beta exp(beta x)
    "exponential(0.5)": (L.exponential(0.5), _logs(0.5, 3), 12.0, [1.0, 2.0, 3.0],
                         sum(k * (2 * np.log(k) - 2) for k in (1, 2, 3)), [0.5, 1.0, 1.5]),
    # L = |x| = 5 at (3, 4): grad x/5, legendre |x|^2/|x| - |x| = 0, H u = (u - g (g.u)) / |x|
    "spherical": (L.spherical(), np.array([[3.0, 4.0]]), 5.0, [0.6, 0.8], 0.0,
                  [(1 - 0.6 * 1.4) / 5, (1 - 0.8 * 1.4) / 5]),
    # x = +-log 2: cosh = 5/4, tanh = +-3/5: L = 2 log(5/4), legendre 2 ((3/5) log 2 - log(5/4)),
    # H = 1 - tanh^2 = 16/25
    "log_cosh": (L.log_cosh(), np.array([[_L2, -_L2]]), 2 * np.log(1.25), [0.6, -0.6],
                 2 * (0.6 * _L2 - np.log(1.25)), [0.64, 0.64]),
    # x = +-log 3: L = log 4 + log(4/3), sigmoid 3/4 and 1/4, legendre (3/4 - 1/4) log 3 - L,
    # H = s (1 - s) = 3/16
    "softplus": (L.softplus(), np.array([[np.log(3.0), -np.log(3.0)]]), np.log(4.0) + np.log(4 / 3),
                 [0.75, 0.25], 0.5 * np.log(3.0) - np.log(4.0) - np.log(4 / 3), [0.1875, 0.1875]),
    # F = x^4/4 + x^2/2 at (2, -1): L = 6 + 3/4, grad x^3 + x, legendre 3 x^4/4 + x^2/2, H = 3 x^2 + 1
    "elementwise(quartic)": (ALL[-1], np.array([[2.0, -1.0]]), 6.75, [10.0, -2.0],
                             (12 + 2) + (0.75 + 0.5), [13.0, 4.0]),
}


@pytest.mark.parametrize("name", list(CLOSED))
def test_closed_forms(name):
    """value, grad, legendre and hvp against forms derived by hand at points where exp / log / cosh
    take rational values. Each side is a handful of float64 operations (<= 1 ulp each for exp,
    log, tanh) on terms no larger than |x| |grad|_1 + |L| + 1: 64 ulps of that covers both."""
    lag, x, val, grad, leg, hu = CLOSED[name]
    tol = 64 * EPS * (np.abs(x).max() * np.abs(np.asarray(grad)).sum() + abs(val) + 1.0)
    assert abs(lag.value(x)[0] - val) <= tol
    np.testing.assert_allclose(lag.grad(x)[0], grad, rtol=0, atol=tol)
    assert abs(lag.legendre(x)[0] - leg) <= tol
    np.testing.assert_allclose(lag.hvp(x, np.ones_like(x))[0], hu, rtol=0, atol=tol)


@pytest.mark.parametrize("lag", ALL, ids=IDS)
def test_legendre_is_x_dot_grad_minus_value(lag):
    """Only log_sum_exp overrides legendre ((1/beta) sum f log f, no cancellation): it equals the
    definition up to the definition's round-off, a few ulps of |x.grad| + size(L)."""
    x = np.random.default_rng(1).uniform(-2, 2, (4, 6))
    direct = (x * lag.grad(x)).sum(1) - lag.value(x)
    size = np.abs(x * lag.grad(x)).sum(1) + lag.value_size(x)
    assert np.all(np.abs(lag.legendre(x) - direct) <= SAFETY * ULPS * EPS * size)


def test_log_cosh_small_x_has_no_cancellation():
    """log cosh x = x^2/2 - x^4/12 + x^6/45 - 17 x^8/2520 + O(x^10): for |x| <= 1e-2 the next term,
    31 x^10/14175, is below 1e-19 of x^2/2, a reference to well below an ulp. The former
    |x| + log1p(exp(-2|x|)) - log 2 lost ~ log 2 / (x^2/2) ulps (1e8 at x = 1e-4)."""
    x = np.array([[1e-8, -3e-6, 1e-4, -2e-3, 1e-2]])
    ref = (x ** 2 / 2 - x ** 4 / 12 + x ** 6 / 45 - 17 * x ** 8 / 2520)[0]
    lag = L.log_cosh()
    got = np.array([lag.value(x[:, [i]])[0] for i in range(x.shape[1])])
    assert np.all(np.abs(got - ref) <= ULPS * EPS * ref), got / ref - 1
    assert np.all(lag.value_size(x) == lag.value(x))   # no cancelling terms below |x| = 1


def test_log_sum_exp_value_size_counts_the_cancelling_max():
    """(1/beta) log sum exp(beta x) = max x + (1/beta) log sum exp(beta (x - max x)): at x = (-1000,
    -1000) the terms are -1000 and log(2), so value_size = 1000 + log 2 while |L| = 1000 - log 2."""
    lag = L.log_sum_exp(1.0)
    x = np.array([[-1000.0, -1000.0]])
    assert abs(lag.value(x)[0] - (-1000 + _L2)) <= 4 * EPS * 1000
    assert abs(lag.value_size(x)[0] - (1000 + _L2)) <= 4 * EPS * 1000


def test_log_sum_exp_large_beta_x_closed_form():
    """beta = 10, x = (100, 99, -50): exp(beta (x - 100)) = 1, e^-10, e^-1500 (= 0 in float64), so
    f = (1, e^-10, 0) / (1 + e^-10), L = 100 + log1p(e^-10)/10 and legendre = (1/10) sum f log f
    with log f0 = -log1p(e^-10), log f1 = -10 - log1p(e^-10). Tolerance: a few ulps of the terms,
    |x| |f| ~ 100 for L and 1 for the rest."""
    lag = L.log_sum_exp(10.0)
    x = np.array([[100.0, 99.0, -50.0]])
    a = np.exp(-10.0)
    f = np.array([1.0, a, 0.0]) / (1 + a)
    np.testing.assert_allclose(lag.grad(x)[0], f, rtol=0, atol=8 * EPS)
    assert abs(lag.value(x)[0] - (100 + np.log1p(a) / 10)) <= 8 * EPS * 100
    leg = (f[0] * -np.log1p(a) + f[1] * (-10 - np.log1p(a))) / 10
    assert abs(lag.legendre(x)[0] - leg) <= 8 * EPS


def test_non_psd_elementwise_refused_with_location():
    with pytest.raises(L.NonConvexLagrangianError, match=r"not convex: F''\(x\) = .* < 0 at x ="):
        L.elementwise(np.cos, lambda x: -np.sin(x), lambda x: -np.cos(x), name="cos")


def test_elementwise_default_probe_is_the_documented_grid():
    """Construction checks F'' on the documented default probe, 2001 points evenly spaced over
    [-20, 20] (spacing 0.02): a curvature negative only on (20, 21) or between two grid points
    is not seen there (check_convex on the visited states is the guard for those), one at a grid
    point is."""
    seen = []

    def d2F(x):
        seen.append(np.array(x, copy=True))
        return np.ones_like(x)

    L.elementwise(lambda x: x * x / 2, lambda x: x, d2F, name="recorded")
    assert len(seen) == 1 and np.array_equal(seen[0], np.linspace(-20, 20, 2001))

    def bumps(lo, hi):
        return lambda x: np.where((np.asarray(x) > lo) & (np.asarray(x) < hi), -1.0, 1.0)

    L.elementwise(np.abs, np.sign, bumps(20.005, 21.0), name="beyond")        # not on the grid
    L.elementwise(np.abs, np.sign, bumps(0.005, 0.015), name="between")       # 0 and 0.02 on it
    with pytest.raises(L.NonConvexLagrangianError, match="at x = 0.02"):
        L.elementwise(np.abs, np.sign, bumps(0.015, 0.025), name="on")


def test_check_convex_reports_negative_direction():
    # convex on the construction probe but not on the visited states
    lag = L.elementwise(lambda x: x ** 3, lambda x: 3 * x ** 2, lambda x: 6 * x, name="cubic",
                        probe=np.linspace(0, 1, 11))
    # every row is non-convex (6 x < 0): the first one is named
    with pytest.raises(L.NonConvexLagrangianError, match="negative Hessian direction at state row 0 "):
        lag.check_convex(-np.ones((2, 3)))


def test_bad_parameters_refused():
    with pytest.raises(L.NonConvexLagrangianError, match="degree n=0.5 < 1"):
        L.rectified_polynomial(0.5)
    with pytest.raises(ValueError, match="positive finite beta"):
        L.log_sum_exp(0.0)
    with pytest.raises(ValueError, match="positive finite beta"):
        L.exponential(-1.0)
    with pytest.raises(ValueError, match="no direction"):
        L.spherical().grad(np.zeros((1, 3)))


@pytest.mark.parametrize("sep,kind", [("identity", "quadratic"), ("softmax", "log_sum_exp"),
                                      ("exp", "exponential"), ("polynomial", "rectified_polynomial")])
def test_for_separation(sep, kind):
    assert L.for_separation(sep).kind == kind


@pytest.mark.parametrize("sep", ["threshold", "max", "log"])
def test_separation_without_energy_refused(sep):
    with pytest.raises(L.NonConvexLagrangianError, match=f"separation {sep}.* has no energy"):
        L.for_separation(sep)


@pytest.mark.parametrize("lag,u_of_x", [(L.spherical(), lambda x: 3.0 * x),
                                        (L.log_sum_exp(5.0), lambda x: np.ones_like(x))],
                         ids=["spherical-radial", "log_sum_exp-uniform"])
def test_hvp_size_bounds_the_cancellation(lag, u_of_x):
    """Directions where H u = 0 exactly but the computed terms are O(|u| |H|): the radial direction
    of the spherical Hessian (u - g (g.u)) / |x|, and the uniform shift of softmax. The computed
    hvp is round-off, a few ulps of hvp_size (not of |hvp|, which is ~0): the energy check's
    round-off estimate of dE/dt uses hvp_size for exactly this."""
    x = np.random.default_rng(4).uniform(-2, 2, (5, 7))
    u = u_of_x(x)
    Hu, size = lag.hvp(x, u), lag.hvp_size(x, u)
    assert np.all(size.sum(1) > 1e3 * np.abs(Hu).sum(1))   # the terms cancel by orders of magnitude ...
    assert np.all(np.abs(Hu) <= ULPS * EPS * size)         # ... to round-off of their size


@pytest.mark.parametrize("lag", ALL, ids=IDS)
def test_hvp_size_covers_hvp(lag):
    x, u = _points(5)
    assert np.all(lag.hvp_size(x, u) >= np.abs(lag.hvp(x, u)) * (1 - ULPS * EPS))


def test_log_sum_exp_gradient_names_an_overflowing_beta():
    """softmax(beta x) refuses beta x = inf (or a row that is -inf throughout) with an error naming
    beta, never NaN weights; a lone -inf beside a finite maximum is the exact weight 0."""
    from uhn.dynamics.lagrangians import LogSumExp
    with pytest.raises(OverflowError, match=r"beta \* x overflows float64 \(beta=1e\+308"):
        LogSumExp(1e308).grad(np.array([[10.0, 0.0]]))
    with pytest.raises(OverflowError, match="overflows float32"):
        LogSumExp(1e38).grad(np.array([[-10.0, -20.0]], dtype=np.float32))
    with pytest.raises(OverflowError, match="overflows"):
        LogSumExp(1.0).grad(np.array([[np.nan, 0.0]]))
    f = LogSumExp(1e308).grad(np.array([[1e-300, -10.0], [0.0, 0.0]]))
    assert np.array_equal(f, [[1.0, 0.0], [0.5, 0.5]])   # exact: exp(0) = 1, exp(-inf) = 0


# --------------------------------------------------------------------------------------------------
# Values a full mutation run (tools/mutate.py; docs/testing.md, "Full runs with --select
# coverage") left unchecked: the defaults, log cosh beyond |x| = 1 (the branch of large arguments),
# the round-off sizes that energy's allowances read (value_size, hvp_size: each a sum of the
# magnitudes of the terms, known in closed form), the overflow errors of softmax and of the
# exponential Lagrangian when a single entry overflows, and the tolerance of check_convex relative
# to |u|^2.


def test_lagrangian_defaults():
    assert L.log_sum_exp().beta == 1.0 and L.exponential().beta == 1.0
    assert L.rectified_polynomial().n == 2.0 and L.signed_polynomial().n == 3.0
    assert L.RectifiedPolynomial().n == 2.0 and L.SignedPolynomial().n == 3.0
    assert L.LogSumExp().beta == 1.0 and L.Exponential().beta == 1.0


def test_log_cosh_value_size_closed_form():
    """For |x| >= 1 log cosh x is summed from |x| + log1p(exp(-2|x|)) - log 2, whose terms add up
    to at most |x| + 2 log 2 (log1p(...) <= log 2): value_size = sum of that per entry;
    below 1 the single term log cosh x itself. A few eps relative (logs and exp round)."""
    x = np.array([[3.0, -2.0, 0.5]])
    expected = 3.0 + 2.0 + 4.0 * np.log(2.0) + np.log(np.cosh(0.5))
    np.testing.assert_allclose(L.log_cosh().value_size(x), [expected], rtol=8 * EPS)


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


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1e-3])
def test_check_convex_refuses_a_tol_that_would_turn_it_off(bad):
    """tol=nan made every comparison c < -tol |u|^2 false, so a concave Hessian passed (issue 29)."""
    with pytest.raises(ValueError, match="convexity check tol must be"):
        _Concave(1.0).check_convex(np.ones((2, 3)), tol=bad)
    with pytest.raises(L.NonConvexLagrangianError):           # the same call with a real tol
        _Concave(1.0).check_convex(np.ones((2, 3)))


class _NaNCurvature(_Concave):
    kind = "test_nan_curvature"

    def hvp(self, x, u):
        return np.where(x > 1.5, np.nan, u)


def test_check_convex_refuses_a_nan_curvature_at_a_visited_state():
    """u^T H u = NaN compared false with -tol |u|^2 and was accepted (issue 29)."""
    lag = _NaNCurvature(1.0)
    lag.check_convex(np.ones((2, 3)))
    with pytest.raises(L.NonConvexLagrangianError, match=r"NaN/inf curvature u\^T H u = nan at state row 1"):
        lag.check_convex(np.array([[1.0, 1.0, 1.0], [1.0, 2.0, 1.0]]))


@pytest.mark.parametrize("which,fns", [
    ("F(x)", (lambda x: x * x / 2 + np.where(x > 10, np.inf, 0.0), lambda x: x, np.ones_like)),
    ("F'(x)", (lambda x: x * x / 2, lambda x: np.where(x < -5, np.nan, x), np.ones_like)),
    ("F''(x)", (lambda x: x * x / 2, lambda x: x, lambda x: np.where(x > 0, np.inf, 1.0))),
])
def test_elementwise_refuses_nan_or_inf_on_its_probe(which, fns):
    """An F, F' or F'' that is NaN or inf on the probe grid was accepted (an inf F'' passes
    F'' >= 0; a NaN F fails later, in the integration): refused, naming which and where."""
    import re
    with pytest.raises(ValueError, match=rf"Lagrangian elementwise\(bad\): its {re.escape(which)} is NaN/inf "
                                         r"at the probe state"):
        L.elementwise(*fns, name="bad")
    L.elementwise(*fns, name="bad", probe=np.linspace(-4.0, -0.5, 8))   # finite on its own probe


# ------------------------------------------------------------------ smallest eigenvalue (issue 29)
def _sym(K, seed, shift=0.0):
    A = np.random.default_rng(seed).standard_normal((K, K))
    return (A + A.T) / 2 + shift * np.eye(K)


@settings(max_examples=20, deadline=None)
@given(K=st.integers(1, 30), seed=st.integers(0, 2**16))
def test_lanczos_is_exact_when_the_krylov_space_fills_the_layer(K, seed):
    """K <= LANCZOS_STEPS: the Krylov space is the whole space (restarted where it closes), so the
    smallest Ritz value is eigvalsh's lambda_min to round-off (RITZ_ULPS K eps |H|_2)."""
    H = _sym(K, seed)
    lam, norm = L.smallest_eigenvalue(lambda x, u: u @ H, np.zeros((2, K)))
    ref = np.linalg.eigvalsh(H)
    tol = L.RITZ_ULPS * K * np.finfo(float).eps * np.abs(ref).max()
    np.testing.assert_allclose(lam, ref[0], rtol=0, atol=tol)
    np.testing.assert_allclose(norm, np.abs(ref).max(), rtol=0, atol=tol)


@pytest.mark.parametrize("seed", range(5))
def test_lanczos_ritz_value_is_an_upper_bound_on_lambda_min(seed):
    """K = 120 > LANCZOS_STEPS: the smallest Ritz value is a Rayleigh quotient, so it never falls
    below lambda_min (up to round-off); on a random spectrum 40 steps bring it within 10 % of the
    spread (Kaniel-Paige: the extreme eigenvalues converge first)."""
    H = _sym(120, seed)
    ref = np.linalg.eigvalsh(H)
    lam, _ = L.smallest_eigenvalue(lambda x, u: u @ H, np.zeros((1, 120)), seed=seed)
    tol = L.RITZ_ULPS * 120 * np.finfo(float).eps * np.abs(ref).max()
    assert lam[0] >= ref[0] - tol
    assert lam[0] - ref[0] <= 0.1 * (ref[-1] - ref[0])


def test_one_concave_axis_of_a_wide_layer_is_found_where_random_directions_miss_it():
    """The issue's case: 300 units, Hessian diag(1, ..., 1) with -3 on one axis. A random
    direction u sees u^T H u = |u|^2 - 4 u_7^2 > 0 (u_7^2 ~ |u|^2 / 300): the probes pass; the
    Lanczos estimate finds -3 (the Krylov space of a two-eigenvalue operator closes after two
    steps, exactly) and the refusal names it and the state row."""

    class Tilted(L.Lagrangian):
        kind = "tilted"

        def value(self, x):
            return 0.5 * (x ** 2).sum(1) - 2 * x[:, 7] ** 2

        def grad(self, x):
            g = x.copy()
            g[:, 7] -= 4 * x[:, 7]
            return g

        def hvp(self, x, u):
            out = u.copy()
            out[:, 7] -= 4 * u[:, 7]
            return out

    lag = Tilted()
    X = np.random.default_rng(3).standard_normal((6, 300))
    u = np.random.default_rng(0).standard_normal((6, 300))
    assert np.all(lag.curvature(X, u) > 0)            # what the random probes alone would see
    with pytest.raises(L.NonConvexLagrangianError, match=r"eigenvalue -3 < 0 at state row 0 .*Lanczos"):
        lag.check_convex(X)


def test_a_single_negative_diagonal_entry_is_found_exactly():
    """An elementwise Lagrangian (diagonal Hessian F''(x_i)) with F'' < 0 on one entry of one
    visited state among 500 positive ones: the diagonal is read exactly, entry and row named."""
    lag = L.elementwise(lambda x: x ** 4 / 12 - x ** 2 / 2 + x ** 2, lambda x: x ** 3 / 3 + x,
                        lambda x: x ** 2 + 1 - 2 * (x < -5), name="dent", probe=np.linspace(0, 1, 5))
    X = np.ones((3, 500))
    X[2, 123] = -5.5                                   # F'' = 30.25 + 1 - 2 > 0: still convex
    lag.check_convex(X)
    lag2 = L.elementwise(lambda x: x ** 2, lambda x: 2 * x, lambda x: 2 - 3 * (x < -5), name="dent2",
                         probe=np.linspace(0, 1, 5))
    with pytest.raises(L.NonConvexLagrangianError, match=r"eigenvalue -1 < 0 \(diagonal entry 123\) at state row 2"):
        lag2.check_convex(X)


def test_elementwise_nan_at_a_visited_state_is_refused_there():
    """F = x^1.5 is finite and convex on its probe (x > 0); at a visited state with a negative
    entry its derivative is NaN: refused at that state, naming it (issue 29: it used to surface as
    a stalled integration after 100,000 right-hand sides)."""
    lag = L.elementwise(lambda x: np.abs(x) ** 1.5 * np.sign(x) ** 2, lambda x: 1.5 * np.sqrt(x),
                        lambda x: 0.75 / np.sqrt(x), name="p15", probe=np.linspace(0.1, 2, 5))
    np.testing.assert_allclose(lag.grad(np.array([[1.0, 4.0]])), [[1.5, 3.0]], rtol=1e-15)
    with np.errstate(invalid="ignore"):
        with pytest.raises(ValueError, match=r"F'\(x\) = nan at the finite state x = -2 \(index \(0, 1\)\)"):
            lag.grad(np.array([[1.0, -2.0]]))
