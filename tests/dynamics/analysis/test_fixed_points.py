"""Jacobian, stability and the fixed point vs single-shot comparison."""
import numpy as np
import pytest

from uhn.dynamics import lagrangians as L
from uhn.dynamics.analysis.fixed_points import (compare, compare_table, distance_bound,
    format_table, jacobian, stability)
from uhn.dynamics.integrate import integrate
from uhn.dynamics.network import Network
from uhn.models.data import load_dataset
from uhn.models.separation import get_separation
from uhn.models.similarity import get_similarity


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", n=20, seed=0).X


@pytest.mark.parametrize("lv", [L.quadratic(), L.log_cosh()], ids=["quadratic", "log_cosh"])
def test_analytic_jacobian_matches_fd(lv, digits):
    net = Network(digits, "dot", L_v=lv, L_h=L.log_sum_exp(2.0), tau_h=0.3)
    rng = np.random.default_rng(0)
    v, h = rng.uniform(0, 1, 64), rng.standard_normal(20)
    eps = 1e-6
    Ja, Jf = jacobian(net, v, h, method="analytic"), jacobian(net, v, h, eps=eps, method="fd")
    assert Ja.shape == (84, 84)
    # central difference: truncation ~ |Jf(eps) - Jf(2 eps)| / 3 (Richardson, O(eps^2)), round-off
    # ~ a few ulps of the right-hand side's terms (|f| |M| + |v| for v, |S| + |h| for h) over the step
    Jf2 = jacobian(net, v, h, eps=2 * eps, method="fd")
    g, f = net.L_v.grad(v[None]), net.L_h.grad(h[None])
    terms = max((np.abs(f) @ np.abs(net.M)).max() + np.abs(v).max(),
                np.abs(net.similarity(g)).max() + np.abs(h).max())
    step = eps * max(1.0, np.abs(np.concatenate([v, h])).max())
    roundoff = 8 * np.finfo(float).eps * terms / step
    assert np.all(np.abs(Ja - Jf) <= 2 * (np.abs(Jf - Jf2) / 3 + roundoff))


def test_fd_jacobian_matches_directional_derivative():
    M = np.random.default_rng(0).uniform(0, 1, (5, 6))
    net = Network(M, get_similarity("minkowski", p=3), L_v=L.softplus(), L_h=L.log_sum_exp(2.0))
    rng = np.random.default_rng(1)
    v, h, u = rng.uniform(0, 1, 6), rng.standard_normal(5), rng.standard_normal(11)
    J = jacobian(net, v, h)

    def directional(eps):
        p = net.rhs((v + eps * u[:6])[None], (h + eps * u[6:])[None])
        m = net.rhs((v - eps * u[:6])[None], (h - eps * u[6:])[None])
        return np.concatenate([(p[0] - m[0])[0], (p[1] - m[1])[0]]) / (2 * eps)

    # both are central differences (J's columns at steps 1e-6 max(1, |x_j|), the directional one
    # at 1e-5 along u): each carries truncation O(eps^2) (Richardson estimate from a doubled step)
    # and round-off ~ ulps of the RHS terms over its step; J @ u sums 11 columns' errors
    eps = 1e-5
    fd, fd2 = directional(eps), directional(2 * eps)
    J2 = jacobian(net, v, h, eps=2e-6)
    terms = np.abs(np.concatenate(net.rhs(v[None], h[None]), axis=1)).max() + np.abs(np.r_[v, h]).max()
    u_abs = np.abs(u)
    roundoff = 8 * np.finfo(float).eps * terms * (1 / eps + u_abs.sum() / 1e-6)
    truncation = np.abs(fd - fd2) / 3 + np.abs(J - J2) @ u_abs / 3
    assert np.all(np.abs(J @ u - fd) <= 2 * (truncation + roundoff))


def test_retrieved_fixed_point_is_stable(digits):
    net = Network(digits, "dot", L_h=L.log_sum_exp(5.0))
    tr = integrate(net, digits[3] + 0.05, 100.0, fixed_point_tol=1e-5, noise_factor=0.0)
    assert tr.converged.all()
    st = stability(net, tr.v_final[0], tr.h_final[0])
    assert st.stable and st.max_real < 0 and np.all(st.eigenvalues.real < 0)
    assert st.residual < 1e-5
    ad = stability(net, tr.v_final[0], adiabatic=True)
    assert ad.stable and ad.eigenvalues.shape == (64,)


def test_unstable_state_detected():
    # dot + identity, memories with eigenvalue > 1 of M^T M: the origin is a saddle
    net = Network(2.0 * np.eye(3), "dot", L_h=L.quadratic())
    st = stability(net, np.zeros(3), np.zeros(3))
    assert not st.stable and st.max_real > 0


def test_jacobian_errors(digits):
    net = Network(digits, "squared_euclidean")
    with pytest.raises(ValueError, match="shape mismatch: jacobian needs one state"):
        jacobian(net, np.zeros(63), np.zeros(20))
    with pytest.raises(ValueError, match="analytic Jacobian is implemented for dot similarity only"):
        jacobian(net, np.zeros(64), np.zeros(20), method="analytic")
    with pytest.raises(ValueError, match="feature state v"):
        jacobian(net, np.full(64, np.nan), np.zeros(20))
    with pytest.raises(ValueError, match="needs the memory state h"):
        stability(net, np.zeros(64))


def test_compare_dot_softmax_matches_iterated_single_shot(digits):
    rng = np.random.default_rng(0)
    idx = np.arange(6)
    Q = digits[idx] + 0.2 * rng.standard_normal((6, 64))
    rows = compare(digits, idx, Q, "dot", get_separation("softmax", beta=5.0), t_end=200.0,
                   rtol=1e-11, atol=1e-13, fixed_point_tol=1e-8, iterate_tol=1e-13, iterate_steps=5000)
    assert len(rows) == 6
    for r in rows:
        assert r["readout"] == "v" and r["dyn_converged"] and r["iter_converged"]
        assert r["dist_dyn_iter"] < 1e-6
        assert r["dyn_retrieved"] == r["iter_retrieved"]
        assert r["energy_drop"] >= 0


def test_compare_squared_euclidean_gap_is_reported(digits):
    idx = np.arange(4)
    rows = compare(digits, idx, digits[idx] + 0.05, "squared_euclidean", get_separation("softmax", beta=5.0),
                   t_end=100.0)
    # v* = (2/3) M^T f: a third shorter than the retrieved memory, so far from z and the target
    for r in rows:
        assert r["shot_retrieved"]
        assert r["dist_dyn_target"] > 5 * r["dist_shot_target"] and r["dist_dyn_shot"] > 0.5


def test_compare_table_reports_failures_as_rows(digits):
    idx = np.arange(3)
    Q = digits[idx] + 0.1
    table = compare_table(digits, idx, Q, [("dot", get_separation("softmax", beta=5.0)),
                                           ("dot", get_separation("polynomial", n=3))],
                          t_end=20.0, max_nfev=2000)
    assert table[0]["error"] == "" and table[0]["n"] == 3
    assert table[1]["error"].startswith("RuntimeError") and np.isnan(table[1]["dist_dyn_shot"])
    text = format_table(table)
    assert "softmax(beta=5)" in text and "RuntimeError" in text


def test_compare_readouts_and_array_targets(digits):
    """Clamped input: "auto" reads out v* - I (v* - q), "v" the state itself and "memory"
    P^T f(h*); each distance is the one of that vector, recomputed here from an independent
    integration with the same settings (the same arithmetic: equal to round-off, rel 1e-12).
    Targets given as patterns near memories 3, 1, 4 are resolved to those indices."""
    from uhn.models import Memory
    idx = np.array([3, 1, 4])
    rng = np.random.default_rng(2)
    Q = digits[idx] + 0.1 * rng.standard_normal((3, 64))
    targets = digits[idx] + 0.01 * rng.standard_normal((3, 64))
    sep = get_separation("softmax", beta=5.0)
    kw = dict(t_end=100.0, input_mode="clamped", tau_v=2.0, tau_h=0.3)
    auto = compare(digits, targets, Q, "dot", sep, **kw)
    as_v = compare(digits, targets, Q, "dot", sep, readout="v", **kw)
    mem_rows = compare(digits, targets, Q, "dot", sep, readout="memory", **kw)
    assert [r["target"] for r in auto] == [3, 1, 4]
    mem = Memory(digits, similarity="dot", separation=sep)
    net = Network(mem, tau_v=2.0, tau_h=0.3)
    tr = integrate(net, Q, 100.0, input_mode="clamped")
    assert tr.converged.all()
    z = mem.retrieve(Q)
    expected = {"v_minus_I": tr.v_final - Q, "v": tr.v_final, "memory": net.readout(tr.h_final)}
    for rows, name in ((auto, "v_minus_I"), (as_v, "v"), (mem_rows, "memory")):
        for b, r in enumerate(rows):
            assert r["readout"] == name and r["dyn_converged"]
            assert r["dist_dyn_shot"] == pytest.approx(np.linalg.norm(expected[name][b] - z[b]), rel=1e-12)
            assert r["dist_dyn_target"] == pytest.approx(np.linalg.norm(expected[name][b] - digits[idx[b]]),
                                                         rel=1e-12)
    # the three readouts are different vectors: v* - q is the retrieved memory, v* is not
    assert all(a["dist_dyn_target"] < 0.5 * v["dist_dyn_target"] for a, v in zip(auto, as_v))
    for r in mem_rows:
        assert r["dist_dyn_shot"] == r["dist_mem_shot"] and r["dyn_retrieved"] == r["mem_retrieved"]


def test_compare_reports_a_diverging_iteration(digits):
    """dot + cubic polynomial: the iterated single-shot map z <- M^T (M z)^3 overflows, while the
    dynamics with bounded rates g = tanh(v) converge. The rows carry the iteration's error and NaN
    distances to it instead of raising."""
    idx = np.arange(3)
    rows = compare(digits, idx, digits[idx] + 0.1, "dot", get_separation("polynomial", n=3),
                   L_v=L.log_cosh(), t_end=20.0)
    for r in rows:
        assert r["iter_error"] == "separation polynomial(n=3) produced NaN/inf weights"
        assert not r["iter_converged"] and r["iter_steps"] == -1 and not r["iter_retrieved"]
        assert np.isnan(r["dist_dyn_iter"]) and np.isnan(r["dist_iter_target"])
        assert r["dyn_converged"] and np.isfinite(r["dist_dyn_shot"])


def test_compare_errors(digits):
    with pytest.raises(ValueError, match="shape mismatch: 2 queries but 3 target indices"):
        compare(digits, np.arange(3), digits[:2])
    with pytest.raises(ValueError, match=r"shape mismatch: targets must be 2 indices or a \(2, 64\) array, "
                                         r"got \(1, 63\)"):
        compare(digits, np.zeros(63), digits[:2])
    with pytest.raises(ValueError, match=r"target indices must lie in \[0, 20\)"):
        compare(digits, np.array([0, 20]), digits[:2])
    with pytest.raises(ValueError, match="readout must be one of"):
        compare(digits, np.arange(2), digits[:2], readout="h")
    with pytest.raises(ValueError, match="has no gradient"):
        B = np.where(digits > 0.5, 1.0, -1.0)
        compare(B, np.arange(2), B[:2], "hamming", "softmax")
    with pytest.raises(L.NonConvexLagrangianError, match="has no energy"):
        compare(digits, np.arange(2), digits[:2], "dot", "threshold")


def test_distance_bound_of_a_perturbed_fixed_point():
    """A state a known small offset d from an accurate fixed point: ydot = J d + O(|d|^2), so
    distance_bound = |J d| / sigma_min(J) lies between |d| (it is an upper bound of the true
    distance) and cond(J) |d|, up to O(|d|^2); at the fixed point itself it is ~0."""
    M = np.random.default_rng(0).uniform(0, 0.5, (4, 6))
    net = Network(M, "dot", L_h=L.log_sum_exp(2.0), tau_v=2.5, tau_h=0.3)
    tr = integrate(net, M[:1] + 0.05, 200.0, rtol=1e-12, atol=1e-14, fixed_point_tol=1e-13)
    v, h = tr.v_final[0], tr.h_final[0]
    at_fp = distance_bound(net, v, h)
    d = 1e-6 * np.random.default_rng(1).standard_normal(net.D + net.N)
    off = distance_bound(net, v + d[:net.D], h + d[net.D:])
    assert at_fp < 1e-3 * np.linalg.norm(d)
    cond = np.linalg.cond(jacobian(net, v, h))
    assert 0.999 * np.linalg.norm(d) <= off <= 1.001 * cond * np.linalg.norm(d)
