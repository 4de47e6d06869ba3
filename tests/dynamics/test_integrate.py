"""Integration: batch vs single queries, adiabatic limit, fixed points, errors."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dynamics import lagrangians as L
from dynamics.integrate import integrate
from dynamics.network import Network
from models.data import load_dataset


@pytest.fixture(scope="module")
def digits20():
    return load_dataset("digits", n=20, seed=0).X


@settings(max_examples=5)
@given(seed=st.integers(0, 2**31 - 1))
def test_batch_equals_single_queries(seed):
    rng = np.random.default_rng(seed)
    M = rng.uniform(0, 1, (6, 8))
    net = Network(M, "dot", L_h=L.log_sum_exp(3.0), tau_h=0.2)
    Q = M[:3] + 0.2 * rng.standard_normal((3, 8))
    batch = integrate(net, Q, 10.0, rtol=1e-10, atol=1e-12, stop_at_fixed_point=False, n_samples=11)
    for b in range(3):
        one = integrate(net, Q[b], 10.0, rtol=1e-10, atol=1e-12, stop_at_fixed_point=False, n_samples=11)
        np.testing.assert_allclose(batch.v[:, b], one.v[:, 0], atol=1e-6)
        np.testing.assert_allclose(batch.h[:, b], one.h[:, 0], atol=1e-6)


def test_adiabatic_error_shrinks_linearly_with_tau_h(digits20):
    M = digits20
    Q = M[:2] + 0.2
    ad = integrate(Network(M, "dot", L_h=L.log_sum_exp(1.0), tau_h=1.0), Q, 3.0, adiabatic=True,
                   stop_at_fixed_point=False, n_samples=7, rtol=1e-10, atol=1e-12)
    errs = []
    for tau_h in (0.1, 0.01, 0.001):
        net = Network(M, "dot", L_h=L.log_sum_exp(1.0), tau_h=tau_h)
        h0 = net.similarity(Q)
        full = integrate(net, Q, 3.0, h0=h0, stop_at_fixed_point=False, n_samples=7, rtol=1e-10,
                         atol=1e-12, method="Radau" if tau_h < 0.01 else "RK45")
        errs.append(np.abs(full.v - ad.v).max())
    assert errs[0] > errs[1] > errs[2]
    ratios = errs[0] / errs[1], errs[1] / errs[2]
    assert all(4 < r < 25 for r in ratios), (errs, ratios)  # ~10x per decade: linear in tau_h


def test_fixed_point_equals_iterated_single_shot(digits20):
    from models import Memory
    from models.separation import get_separation
    M = digits20
    mem = Memory(M, similarity="dot", separation=get_separation("softmax", beta=1.0))
    Q = M[:4] + 0.3 * np.random.default_rng(0).standard_normal((4, 64))
    tr = integrate(Network(mem), Q, 200.0, fixed_point_tol=1e-9, rtol=1e-11, atol=1e-13)
    it = mem.iterate(Q, max_steps=5000, tol=1e-13)
    assert it.converged.all()
    np.testing.assert_allclose(tr.v_final, it.states, atol=1e-6)


def test_squared_euclidean_fixed_point_is_two_thirds(digits20):
    from models import Memory
    from models.separation import get_separation
    M = digits20
    mem = Memory(M, similarity="squared_euclidean", separation=get_separation("softmax", beta=5.0))
    net = Network(mem)
    tr = integrate(net, M[:3] + 0.05, 100.0, fixed_point_tol=1e-9, rtol=1e-11, atol=1e-13)
    f = net.L_h.grad(tr.h_final)
    np.testing.assert_allclose(tr.v_final, (2.0 / 3.0) * f @ M, atol=1e-7)


def test_errors():
    net = Network(np.eye(3))
    with pytest.raises(ValueError, match="unknown method 'Euler'"):
        integrate(net, np.ones(3), 1.0, method="Euler")
    with pytest.raises(ValueError, match="t_end must be a positive finite time"):
        integrate(net, np.ones(3), 0.0)
    with pytest.raises(ValueError, match="input_mode must be 'initial' or 'clamped'"):
        integrate(net, np.ones(3), 1.0, input_mode="held")
    with pytest.raises(ValueError):
        integrate(net, np.ones(4), 1.0)
    with pytest.raises(ValueError):
        integrate(net, np.array([np.nan, 0, 0]), 1.0)


def test_cosine_needs_clamped_input():
    """With I = 0 cosine drives v toward 0 (dS/dg is orthogonal to g: no nonzero fixed point);
    clamped (I = q) converges to a nonzero state."""
    M = np.random.default_rng(0).uniform(0, 1, (5, 6))
    net = Network(M, "cosine", L_h=L.log_sum_exp(2.0))
    q = M[:1] + 0.1
    free = integrate(net, q, 2.0, stop_at_fixed_point=False, n_samples=5, max_nfev=20000)
    norms = np.linalg.norm(free.v[:, 0], axis=1)
    np.testing.assert_allclose(norms, norms[0] * np.exp(-free.t), rtol=1e-5)  # |v| = |q| e^{-t}
    with pytest.raises(RuntimeError, match="stiff or non-smooth"):  # the flow stiffens as |v| -> 0
        integrate(net, q, 20.0, stop_at_fixed_point=False, max_nfev=3000)
    g = free.v[0]
    assert abs(float((net.sim.vjp(M, g, net.L_h.grad(free.h[0])) * g).sum())) < 1e-10
    clamped = integrate(net, q, 100.0, input_mode="clamped", fixed_point_tol=1e-6)
    assert clamped.converged.all() and np.linalg.norm(clamped.v_final) > 0.5 * np.linalg.norm(q)
