"""Every Lagrangian: gradient vs finite differences of the value, hvp vs finite differences of the
gradient, PSD Hessians, and refusal of non-convex ones."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dynamics import lagrangians as L

ALL = [L.quadratic(), L.rectified_polynomial(2.0), L.rectified_polynomial(3.0), L.signed_polynomial(3.0),
       L.log_sum_exp(1.0), L.log_sum_exp(5.0), L.exponential(0.5), L.spherical(), L.log_cosh(),
       L.softplus(), L.elementwise(lambda x: x ** 4 / 4 + x ** 2 / 2, lambda x: x ** 3 + x,
                                   lambda x: 3 * x ** 2 + 1, name="quartic")]
IDS = [lag.name for lag in ALL]


def _fd_grad(lag, x, eps=1e-6):
    G = np.empty_like(x)
    for j in range(x.shape[1]):
        e = np.zeros_like(x)
        e[:, j] = eps
        G[:, j] = (lag.value(x + e) - lag.value(x - e)) / (2 * eps)
    return G


@pytest.mark.parametrize("lag", ALL, ids=IDS)
@settings(max_examples=8)
@given(seed=st.integers(0, 2**31 - 1))
def test_grad_matches_fd_of_value(lag, seed):
    x = np.random.default_rng(seed).uniform(-2, 2, (3, 5))
    x[np.abs(x) < 1e-2] = 0.3  # stay off the kinks of rectified / signed polynomials
    np.testing.assert_allclose(lag.grad(x), _fd_grad(lag, x), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("lag", ALL, ids=IDS)
@settings(max_examples=8)
@given(seed=st.integers(0, 2**31 - 1))
def test_hvp_matches_fd_of_grad(lag, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, (3, 5))
    x[np.abs(x) < 1e-2] = 0.3
    u = rng.standard_normal(x.shape)
    eps = 1e-6
    fd = (lag.grad(x + eps * u) - lag.grad(x - eps * u)) / (2 * eps)
    np.testing.assert_allclose(lag.hvp(x, u), fd, rtol=1e-5, atol=1e-6)
    assert np.all(lag.curvature(x, u) >= -1e-12)  # PSD
    lag.check_convex(x)


@pytest.mark.parametrize("lag", ALL, ids=IDS)
def test_legendre_is_x_dot_grad_minus_value(lag):
    x = np.random.default_rng(1).uniform(-2, 2, (4, 6))
    np.testing.assert_allclose(lag.legendre(x), (x * lag.grad(x)).sum(1) - lag.value(x), atol=1e-10)


def test_log_sum_exp_grad_is_softmax_and_large_beta_x_is_finite():
    lag = L.log_sum_exp(10.0)
    x = np.array([[100.0, 99.0, -50.0]])
    f = lag.grad(x)
    assert np.isclose(f.sum(), 1.0) and np.all(np.isfinite(lag.value(x)))
    assert np.isfinite(lag.legendre(x)).all()


def test_non_psd_elementwise_refused_with_location():
    with pytest.raises(L.NonConvexLagrangianError, match=r"not convex: F''\(x\) = .* < 0 at x ="):
        L.elementwise(np.cos, lambda x: -np.sin(x), lambda x: -np.cos(x), name="cos")


def test_check_convex_reports_negative_direction():
    # convex on the construction probe but not on the visited states
    lag = L.elementwise(lambda x: x ** 3, lambda x: 3 * x ** 2, lambda x: 6 * x, name="cubic",
                        probe=np.linspace(0, 1, 11))
    with pytest.raises(L.NonConvexLagrangianError, match="negative Hessian direction at state row"):
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
