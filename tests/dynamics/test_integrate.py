"""Integration: batch vs single queries, the linear system's exact solution for time constants
other than 1, adiabatic limit, fixed points, input validation and errors."""
import dataclasses
import inspect

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.linalg import expm
from scipy.sparse import block_diag, csr_matrix

import uhn.dynamics.integrate as integrate_module
from uhn.dynamics.solvers import driver, scipy_ivp
from uhn.dynamics import lagrangians as L
from uhn.dynamics.analysis.fixed_points import jacobian, jacobian_adiabatic
from uhn.dynamics.integrate import integrate
from uhn.dynamics.solvers.driver import NOISE_FACTOR, rest_ratio, sample_times
from uhn.dynamics.solvers.scipy_ivp import JAC_NNZ_LIMIT, block_sparsity, check_jacobian_size
from uhn.dynamics.trajectory import Trajectory
from uhn.dynamics.network import Network
from uhn.models.data import load_dataset

from error_bounds import step_error_bound


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
    rtol, atol = 1e-10, 1e-12
    batch = integrate(net, Q, 10.0, rtol=rtol, atol=atol, stop_at_fixed_point=False, n_samples=11)
    for b in range(3):
        one = integrate(net, Q[b], 10.0, rtol=rtol, atol=atol, stop_at_fixed_point=False, n_samples=11)
        # batch and single take different steps (one error norm over the batch vs over one
        # query), so they differ by at most the sum of their global errors: each bounded by its
        # steps (RK45: 6 calls per step) x sqrt(14) (atol + rtol max|y|) on this contracting
        # retrieval flow; measured 2e-10 against a bound of ~3e-7
        y_max = max(np.abs(one.v).max(), np.abs(one.h).max())
        tol = step_error_bound((batch.params["nfev"] + one.params["nfev"]) / 6, 14, rtol, atol, y_max)
        np.testing.assert_allclose(batch.v[:, b], one.v[:, 0], rtol=0, atol=tol)
        np.testing.assert_allclose(batch.h[:, b], one.h[:, 0], rtol=0, atol=tol)


def linear_network(tau_v, tau_h, D=6, N=4, seed=3):
    """dot similarity with quadratic L_v and L_h: a linear system dy/dt = A y, y = [v, h],
    A = [[-1/tau_v, M^T/tau_v], [M/tau_h, -1/tau_h]], stable for ||M||_2 < 1, solved exactly by
    y(t) = expm(A t) y(0)."""
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((N, D))
    M *= 0.8 / np.linalg.norm(M, 2)
    net = Network(M, "dot", L_v=L.quadratic(), L_h=L.quadratic(), tau_v=tau_v, tau_h=tau_h)
    A = np.block([[-np.eye(D) / tau_v, M.T / tau_v], [M / tau_h, -np.eye(N) / tau_h]])
    return net, A, rng.standard_normal((2, D))


TAUS = [(0.5, 0.2), (2.0, 0.05), (3.0, 1.5)]


@pytest.mark.parametrize("method", ["RK45", "RK45-batched", "Radau"])
@pytest.mark.parametrize("tau_v, tau_h", TAUS)
def test_linear_system_matches_matrix_exponential(tau_v, tau_h, method):
    """Time constants enter every integrator: the solution equals expm(A t) y(0) with A built
    from tau_v and tau_h (a Network that multiplied by tau, or ignored it, is off by O(1))."""
    net, A, Q = linear_network(tau_v, tau_h)
    rtol, atol = 1e-8, 1e-10
    tr = integrate(net, Q, 5.0, method=method, rtol=rtol, atol=atol, stop_at_fixed_point=False,
                   n_samples=11)
    np.testing.assert_array_equal(tr.t, np.linspace(0, 5.0, 11))
    Y0 = np.concatenate([Q, Q @ net.M.T], axis=1)       # h(0) = S(q) = M q
    exact = np.stack([Y0 @ expm(A * t).T for t in tr.t])
    got = np.concatenate([tr.v, tr.h], axis=2)
    # the flow's growth factor sup_s ||expm(A s)||_2 (1.0-1.2 here), and nfev per query; the
    # bound is ~1e-5, measured errors 1e-10 to 3e-9
    growth = max(np.linalg.norm(expm(A * s), 2) for s in np.linspace(0, 5.0, 51))
    nfev = tr.params["nfev"] / (len(Q) if method == "RK45-batched" else 1)
    tol = step_error_bound(nfev, A.shape[0], rtol, atol, np.abs(exact).max(), growth)
    assert np.abs(got - exact).max() < tol
    assert np.abs(exact[-1] - exact[0]).max() > 1e3 * tol   # the state moved far more than that


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
    from uhn.models import Memory
    from uhn.models.separation import get_separation
    M = digits20
    mem = Memory(M, similarity="dot", separation=get_separation("softmax", beta=1.0))
    Q = M[:4] + 0.3 * np.random.default_rng(0).standard_normal((4, 64))
    net = Network(mem)
    tr = integrate(net, Q, 200.0, fixed_point_tol=1e-9, rtol=1e-11, atol=1e-13)
    it = mem.iterate(Q, max_steps=5000, tol=1e-13)
    assert it.converged.all() and tr.converged.all()
    for b in range(4):
        # distance of each state to the exact fixed point y*: one Newton step |J^-1 F(y)|, F the
        # velocity there (full system for the dynamics; the adiabatic system, whose velocity is
        # z_next - z for tau_v = 1, for the iterate), first order in |y - y*|, so x 2 for the
        # remainder. Measured: 2e-9 apart against a bound of 4e-8 (query 3)
        F = np.concatenate(net.rhs(tr.v_final[b:b + 1], tr.h_final[b:b + 1]), axis=1)[0]
        newton_dyn = np.linalg.norm(np.linalg.solve(jacobian(net, tr.v_final[b], tr.h_final[b]), F))
        Fa = net.rhs_adiabatic(it.states[b:b + 1])[0]
        newton_it = np.linalg.norm(np.linalg.solve(jacobian_adiabatic(net, it.states[b]), Fa))
        assert np.linalg.norm(tr.v_final[b] - it.states[b]) <= 2 * (newton_dyn + newton_it)


def test_squared_euclidean_fixed_point_is_two_thirds(digits20):
    from uhn.models import Memory
    from uhn.models.separation import get_separation
    M = digits20
    mem = Memory(M, similarity="squared_euclidean", separation=get_separation("softmax", beta=5.0))
    net = Network(mem)
    tol, rtol, atol = 1e-9, 1e-11, 1e-13
    tr = integrate(net, M[:3] + 0.05, 100.0, fixed_point_tol=tol, rtol=rtol, atol=atol)
    assert tr.converged.all()
    f = net.L_h.grad(tr.h_final)
    # tau_v dv/dt = sum_mu f_mu (-2)(v - M_mu) - v = 2 M^T f - 3 v (the weights sum to 1), so
    # v - (2/3) M^T f = -(tau_v / 3) dv/dt exactly, and the integrator stops where every
    # |dv_i/dt| <= tol + 30 (atol + rtol |v_i|) / tau_v (to root-finding accuracy: x 1.01), plus
    # the round-off of f @ M (20 terms: 20 eps sum |f| |M|)
    speed = 1.01 * (tol + NOISE_FACTOR * (atol + rtol * np.abs(tr.v_final)) / net.tau_v)
    bound = net.tau_v / 3 * speed + 20 * np.finfo(float).eps * (np.abs(f) @ np.abs(M))
    assert np.all(np.abs(tr.v_final - (2.0 / 3.0) * f @ M) <= bound)


def test_errors():
    net = Network(np.eye(3))
    with pytest.raises(ValueError, match="unknown method 'Euler'"):
        integrate(net, np.ones(3), 1.0, method="Euler")
    with pytest.raises(ValueError, match="t_end must be a positive finite time"):
        integrate(net, np.ones(3), 0.0)
    with pytest.raises(ValueError, match="input_mode must be 'initial' or 'clamped'"):
        integrate(net, np.ones(3), 1.0, input_mode="held")
    with pytest.raises(ValueError, match=r"shape mismatch: queries have 4 features but memories have 3"):
        integrate(net, np.ones(4), 1.0)
    with pytest.raises(ValueError, match=r"queries contains 1 NaN/inf value\(s\), first at index \(0, 0\)"):
        integrate(net, np.array([np.nan, 0, 0]), 1.0)


@pytest.mark.parametrize("kw, exc, match", [
    (dict(n_samples=0), ValueError, "n_samples must be an integer >= 2, got 0"),
    (dict(n_samples=1), ValueError, "n_samples must be an integer >= 2, got 1"),
    (dict(n_samples=2.5), TypeError, "n_samples must be an integer, got float 2.5"),
    (dict(t_end=np.nan), ValueError, "t_end must be a positive finite time, got nan"),
    (dict(t_end="5"), TypeError, "t_end must be a real number, got str '5'"),
    (dict(t_eval=[0.0, np.nan]), ValueError, r"t_eval must be finite, got t_eval\[1\] = nan"),
    (dict(t_eval=[0.0, 0.5, 0.5]), ValueError,
     r"t_eval must be strictly increasing, got t_eval\[1\] = 0.5 >= t_eval\[2\] = 0.5"),
    (dict(t_eval=[0.0, 2.0]), ValueError, r"t_eval must lie within \[0, t_end\] = \[0, 1\]"),
    (dict(t_eval=[-0.1, 0.5]), ValueError, r"t_eval must lie within \[0, t_end\]"),
    (dict(t_eval=[]), ValueError, "t_eval must be a non-empty 1-D array"),
    (dict(t_eval=[[0.0, 0.5]]), ValueError, r"t_eval must be a non-empty 1-D array of times, got shape \(1, 2\)"),
    (dict(max_nfev=0), ValueError, "max_nfev must be an integer >= 1, got 0"),
    (dict(rtol=np.inf), ValueError, "tolerances must be finite with rtol > 0 and atol >= 0, got rtol=inf"),
    (dict(atol=np.nan), ValueError, "tolerances must be finite .* atol=nan"),
    (dict(rtol=0.0), ValueError, "tolerances must be finite with rtol > 0"),
    (dict(max_step=0.0), ValueError, "max_step must be a positive step size"),
    (dict(max_step=np.nan), ValueError, "max_step must be a positive step size"),
])
@pytest.mark.parametrize("method", ["RK45", "RK45-batched"])
def test_bad_arguments_named(kw, exc, match, method):
    """Each bad argument gets an error naming it (n_samples = 0 used to reach np.linspace and
    fail later with AttributeError; a NaN t_eval went on into solve_ivp)."""
    kw = dict(dict(t_end=1.0), **kw)
    with pytest.raises(exc, match=match):
        integrate(Network(np.eye(3)), np.ones(3), method=method, **kw)


def test_two_samples_and_infinite_max_step_are_allowed():
    tr = integrate(Network(np.eye(3)), np.ones(3), 1.0, n_samples=2, max_step=np.inf,
                   stop_at_fixed_point=False)
    np.testing.assert_array_equal(tr.t, [0.0, 1.0])


def test_overflow_is_a_floating_point_error_naming_the_network():
    """tau_h = 1e-300 with h(0) = S(q) - 1: dh/dt = 1e300 overflows at the first right-hand
    side; the integrator stops with FloatingPointError naming the network, not NaN states."""
    net = Network(np.eye(3), tau_h=1e-300)
    for method in ("RK45", "RK45-batched"):
        with pytest.raises(FloatingPointError, match=r"integration of Network\(N=3, D=3, .*tau_h=1e-300\) "
                                                     r"hit a floating-point error \(overflow encountered in "
                                                     r"divide\); the state left the range"):
            integrate(net, np.ones((1, 3)), 1.0, h0=np.zeros((1, 3)), method=method)


def test_block_sparsity_is_block_diagonal():
    """The CSR pattern built directly equals scipy's block_diag of B dense blocks."""
    for B, width in [(1, 1), (1, 4), (3, 5), (7, 2)]:
        ref = block_diag([csr_matrix(np.ones((width, width)))] * B, format="csr")
        got = block_sparsity(B, width)
        assert got.shape == ref.shape and got.nnz == B * width * width
        np.testing.assert_array_equal(got.toarray() != 0, ref.toarray() != 0)


@pytest.mark.parametrize("method", ["Radau", "BDF"])
def test_stiff_method_refuses_a_huge_jacobian_before_building_it(method):
    """B = 1000 MNIST-sized queries (D = 784, N = 100) would need a 7.8e8-nonzero pattern."""
    rng = np.random.default_rng(0)
    net = Network(rng.uniform(0, 1, (100, 784)) / 784, "dot")
    with pytest.raises(ValueError, match=rf"{method} on B=1000 queries of 884 variables needs a "
                                         r"block-diagonal Jacobian of 1000 x 884\^2 = 781,456,000 nonzeros "
                                         r"\(~9.4 GB.*RK45-batched.*at most 25 queries"):
        integrate(net, rng.uniform(0, 1, (1000, 784)), 1.0, method=method)


def test_jacobian_limit_applies_to_the_batch(monkeypatch):
    """The same check on a small system with the limit lowered: 3 queries x 6^2 = 108 > 100
    refused, 2 x 36 = 72 integrates (the adiabatic system's width is D alone)."""
    net, _, Q = linear_network(1.0, 0.1)
    Q = np.vstack([Q, Q[:1]])
    monkeypatch.setattr(scipy_ivp, "JAC_NNZ_LIMIT", 100)
    with pytest.raises(ValueError, match="B=3 queries of 10 variables"):
        integrate(net, Q, 1.0, method="Radau")
    with pytest.raises(ValueError, match="B=3 queries of 6 variables.*at most 2 queries"):
        integrate(net, Q, 1.0, method="Radau", adiabatic=True)
    tr = integrate(net, Q[:2], 1.0, method="Radau", adiabatic=True, stop_at_fixed_point=False)
    assert tr.v.shape == (101, 2, 6)


def test_trajectory_repr_is_one_short_line():
    net, _, Q = linear_network(1.0, 0.1)
    tr = integrate(net, Q, 2.0, n_samples=21, stop_at_fixed_point=False)
    text = repr(tr)
    assert text == ("Trajectory(method='RK45', backend='scipy', B=2, D=6, N=4, T=21, t=[0, 2], "
                    f"converged={int(tr.converged.sum())}/2, adiabatic=False)")
    assert str(tr) == text and "\n" not in text


def test_cosine_needs_clamped_input():
    """With I = 0 cosine drives v toward 0 (dS/dg is orthogonal to g: no nonzero fixed point);
    clamped (I = q) converges to a nonzero state."""
    M = np.random.default_rng(0).uniform(0, 1, (5, 6))
    net = Network(M, "cosine", L_h=L.log_sum_exp(2.0))
    q = M[:1] + 0.1
    free = integrate(net, q, 2.0, stop_at_fixed_point=False, n_samples=5, max_nfev=20000)
    norms = np.linalg.norm(free.v[:, 0], axis=1)
    # |v| = |q| e^{-t}; | |v| - |v_exact| | <= |v - v_exact|_2, within the adaptive solution's
    # global error bound (a contracting flow: |v| only shrinks)
    bound = step_error_bound(free.params["nfev"], net.D + net.N, 1e-8, 1e-10,
                             np.abs(np.concatenate([free.v, free.h], axis=2)).max())
    assert np.all(np.abs(norms - norms[0] * np.exp(-free.t)) <= bound)
    with pytest.raises(RuntimeError, match="stiff or non-smooth"):  # the flow stiffens as |v| -> 0
        integrate(net, q, 20.0, stop_at_fixed_point=False, max_nfev=3000)
    g = free.v[0]
    f = net.L_h.grad(free.h[0])
    # sum_mu f_mu dS_mu/dg = sum_mu f_mu (m^_mu - cos_mu g^) / |g| is orthogonal to g exactly; in
    # floating point each component errs by a few ulps of the terms it adds, |f| (|m^| + |cos| |g^|) / |g|,
    # and the dot product with g by D ulps of its own terms
    Mh, gh = M / np.linalg.norm(M, axis=1, keepdims=True), g / np.linalg.norm(g)
    cos = gh @ Mh.T
    terms = (np.abs(f) @ np.abs(Mh) + (np.abs(f) * np.abs(cos)).sum(1, keepdims=True) * np.abs(gh)) / np.linalg.norm(g)
    vjp = net.sim.vjp(M, g, f)
    bound = 8 * np.finfo(float).eps * ((terms * np.abs(g)).sum() + net.D * (np.abs(vjp * g)).sum())
    assert abs(float((vjp * g).sum())) <= bound
    clamped = integrate(net, q, 100.0, input_mode="clamped", fixed_point_tol=1e-6)
    assert clamped.converged.all() and np.linalg.norm(clamped.v_final) > 0.5 * np.linalg.norm(q)


def test_event_stop_counts_as_converged():
    """solve_ivp's fixed-point event stops where max_b ratio_b crosses 1; recomputed at the event
    state the (non-smooth) ratio came out 1 + 4e-6 on this run, which was reported not converged.
    The event, not the recomputed ratio, decides; both integrators must agree on the flag."""
    from uhn.models.data import load_dataset
    M = load_dataset("digits", n=20, seed=0).X
    q = M[0] + 0.2 * np.random.default_rng(0).standard_normal(M.shape[1])
    net = Network(M, "squared_euclidean", L_v=L.quadratic(), L_h=L.log_sum_exp(5.0))
    tr = integrate(net, q, 200, input_mode="clamped", rtol=1e-10, atol=1e-12)
    assert tr.t[-1] < 200 and "termination event" in tr.message
    assert tr.converged.tolist() == [True]
    trb = integrate(net, q, 200, input_mode="clamped", rtol=1e-10, atol=1e-12, method="RK45-batched")
    assert trb.converged.tolist() == [True]


def test_trajectory_save_load_methods(tmp_path):
    pytest.importorskip("xarray")
    net = Network(np.random.default_rng(0).uniform(0, 1, (4, 6)), "dot", L_h=L.log_sum_exp(2.0))
    tr = integrate(net, np.random.default_rng(1).uniform(0, 1, (2, 6)), 5.0, n_samples=11)
    tr.save(tmp_path / "t.nc")
    back = Trajectory.load(tmp_path / "t.nc")
    for name in ("t", "v", "h", "E", "dEdt", "I", "converged"):
        np.testing.assert_array_equal(getattr(back, name), getattr(tr, name))
    assert back.params == tr.params and back.method == tr.method


# ------------------------------------------------------------------ keep, BLAS threads, energies

@pytest.mark.parametrize("method", ["RK45", "RK45-batched"])
@pytest.mark.parametrize("adiabatic", [False, True])
def test_keep_returns_exactly_the_kept_samples(digits20, method, adiabatic):
    """keep = k or "ends" returns the samples kept_indices picks from keep="all": times and
    states bit for bit, the same convergence verdict, energies and dE/dt computed at the kept
    samples only. Queries stop at their fixed points between sample times, so the last
    sample is the stop time appended after the grid. The energies (and h = S(g) when adiabatic)
    are recomputed from those states in other chunks and other memory alignments, so their sums
    may run in another order (measured: 1 ulp of E): they agree within energy_reorder_bounds."""
    from uhn.dynamics.solvers.driver import kept_indices
    net = Network(digits20, "dot", L_h=L.log_sum_exp(2.0), tau_h=0.2)
    Q = digits20[:3] + 0.3 * np.random.default_rng(4).standard_normal((3, 64))
    kw = dict(method=method, adiabatic=adiabatic, n_samples=61, fixed_point_tol=1e-6)
    full = integrate(net, Q, 30.0, **kw)
    assert full.converged.all() and full.t[-1] < 30.0 and len(full.t) > 8
    for keep, k in ((3, 3), (4, 4), ("ends", None)):
        thin = integrate(net, Q, 30.0, keep=keep, **kw)
        kept = kept_indices(len(full.t), k)
        assert len(thin.t) == len(kept) >= 2 and thin.params["keep"] == keep
        for name in ("t", "v") if adiabatic else ("t", "v", "h"):
            np.testing.assert_array_equal(getattr(thin, name), getattr(full, name)[kept], err_msg=name)
        np.testing.assert_array_equal(thin.converged, full.converged)
        for j, i in enumerate(kept):
            if adiabatic:   # h = S(g), recomputed by a GEMM
                np.testing.assert_array_less(np.abs(thin.h[j] - full.h[i]), gemm_bound(full.v[i], net.M.T))
            bE, bdE = energy_reorder_bounds(net, full.v[i], full.h[i], full.I, adiabatic)
            np.testing.assert_array_less(np.abs(thin.E[j] - full.E[i]), bE)
            np.testing.assert_array_less(np.abs(thin.dEdt[j] - full.dEdt[i]), bdE)


@pytest.mark.parametrize("keep, exc, match", [
    ("final", ValueError, r"keep must be 'all', 'ends' or an integer k >= 1 \(every k-th sample and the last\), got 'final'"),
    (0, ValueError, "keep must be .* got int 0"),
    (2.5, TypeError, "keep must be .* got float 2.5"),
    (True, TypeError, "keep must be .* got bool True"),
])
def test_bad_keep_is_refused(keep, exc, match):
    with pytest.raises(exc, match=match):
        integrate(Network(np.eye(3)), np.ones(3), 1.0, keep=keep)


def test_bad_blas_threads_is_refused():
    with pytest.raises(ValueError, match="blas_threads must be an integer >= 1, got 0"):
        integrate(Network(np.eye(3)), np.ones(3), 1.0, blas_threads=0)
    with pytest.raises(TypeError, match="blas_threads must be an integer, got str 'one'"):
        integrate(Network(np.eye(3)), np.ones(3), 1.0, blas_threads="one")


@pytest.mark.parametrize("method", ["RK45", "RK45-batched"])
def test_blas_threads_are_limited_while_integrating(monkeypatch, method):
    """integrate runs its solver under threadpoolctl's BLAS limit (default BLAS_THREADS = 1),
    blas_threads=None leaves the setting as it is, and the setting is restored afterwards."""
    from threadpoolctl import threadpool_info, threadpool_limits
    seen = []
    real = integrate_module.METHODS[method]

    def spy(problem):
        seen.append(max(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"))
        return real.solve(problem)
    monkeypatch.setitem(integrate_module.METHODS, method, dataclasses.replace(real, solve=spy))
    net = Network(np.eye(3))
    with threadpool_limits(limits=2, user_api="blas"):
        integrate(net, np.ones(3), 1.0, method=method)
        integrate(net, np.ones(3), 1.0, method=method, blas_threads=None)
        integrate(net, np.ones(3), 1.0, method=method, blas_threads=2)
        after = max(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")
    assert seen == [driver.BLAS_THREADS, 2, 2] and driver.BLAS_THREADS == 1
    assert after == 2


def gemm_bound(A, Bm):
    """Elementwise bound on how much A @ Bm can change when its sums run in another order:
    gamma_n |A| @ |Bm|, gamma_n = n eps / (1 - n eps), n the inner dimension (Higham, 3.5)."""
    n = A.shape[1]
    eps = np.finfo(float).eps
    return n * eps / (1 - n * eps) * (np.abs(A) @ np.abs(Bm))


def energy_reorder_bounds(net, v, h, I, adiabatic):
    """(B,) bounds on how much E and dE/dt at states v (B, D), h (B, N) (h = S(g) when adiabatic)
    can change when their GEMMs and row sums run in another order, for a dot-similarity network
    with quadratic L_v and L_h = log_sum_exp(beta). The GEMMs S = g M^T and f M move by at most
    dS = gemm_bound(g, M^T) and dFM = gemm_bound(f, M); E (its -f.S term, or -L_h(S) when
    adiabatic) by at most f.dS; dE/dt = -tau_v |vdot|^2 - tau_h hdot'H_h hdot (H_h = beta (diag f
    - ff'), norm <= beta) through vdot (error dFM / tau_v, plus |df| M when f = softmax(beta S)
    moves with S: |df| <= 2 beta max(dS) f) and hdot (error dS / tau_h). The remaining row sums
    (einsum over D + N terms) add gamma_{D+N} times the sum of their terms' sizes."""
    beta = net.L_h.beta
    eps = np.finfo(float).eps
    f = net.L_h.grad(h)
    dS = gemm_bound(v, net.M.T)
    dFM = gemm_bound(f, net.M)
    if adiabatic:
        dFM = dFM + 2 * beta * dS.max(1, keepdims=True) * (f @ np.abs(net.M))
    vdot, hdot = net.rhs(v, h, I)
    dv, dh = dFM / net.tau_v, dS / net.tau_h
    gam = (net.D + net.N) * eps / (1 - (net.D + net.N) * eps)
    sizeE = np.abs(v * v).sum(1) + np.abs(I * v).sum(1) + np.abs(f * h).sum(1) + np.abs(h).max(1) + 1
    bE = np.einsum("bn,bn->b", f, dS) + gam * sizeE
    bdE = net.tau_v * np.einsum("bd,bd->b", 2 * np.abs(vdot) + dv, dv) + gam * net.tau_v * (vdot ** 2).sum(1)
    if not adiabatic:
        ndh = np.linalg.norm(dh, axis=1)
        bdE += net.tau_h * beta * (2 * np.linalg.norm(hdot, axis=1) + ndh) * ndh \
            + gam * net.tau_h * beta * (hdot ** 2).sum(1)
    return bE, bdE


def _hold(rng, T, B, *arrays):
    """Make each query hold its rows from a random sample on (as a query the batched integrator
    stops does), in place; returns the expected held_samples mask."""
    new = np.ones((T, B), dtype=bool)
    for b in range(B):
        stop = int(rng.integers(0, T))
        new[stop + 1:, b] = False
        for a in arrays:
            a[stop + 1:, b] = a[stop, b]
    return new


@settings(max_examples=40, deadline=None)
@given(T=st.integers(1, 9), B=st.integers(1, 5), chunk=st.integers(1, 12), seed=st.integers(0, 2**31))
def test_at_new_samples_computes_new_rows_once_and_copies_the_held(T, B, chunk, seed):
    """held_samples finds exactly the planted held samples (a change in one component of one of two
    arrays counts as new); at_new_samples calls fn on exactly those rows, in chunks of whole samples,
    and its outputs equal fn on every row (a row-wise fn, so the values are bit-equal)."""
    from uhn.dynamics.solvers.driver import at_new_samples, held_samples
    rng = np.random.default_rng(seed)
    a, c = rng.standard_normal((T, B, 3)), rng.standard_normal((T, B, 2))
    new = _hold(rng, T, B, a, c)
    if T > 1 and not new[1:].all():                       # one component of c moves: new again
        t, b = map(int, np.argwhere(~new)[0])
        c[t, b, 1] = np.nextafter(c[t, b, 1], np.inf)
        new[t, b] = True
        if t + 1 < T and not new[t + 1, b]:
            c[t + 1:, b] = c[t, b]
    np.testing.assert_array_equal(held_samples(a, c), new)
    seen = []

    def fn(x, y):
        seen.append(len(x))
        return np.einsum("kd,kd->k", x, x) + y[:, 0], x[:, ::-1] * y[:, 1:]

    out1, out2 = np.full((T, B), np.nan), np.full((T, B, 3), np.nan)
    at_new_samples(fn, new, (a, c), (out1, out2), chunk_rows=chunk)
    assert sum(seen) == new.sum()
    assert max(seen) <= max(1, chunk // B) * B     # never more than one chunk of whole samples
    full1, full2 = fn(a.reshape(T * B, 3), c.reshape(T * B, 2))
    np.testing.assert_array_equal(out1, full1.reshape(T, B))
    np.testing.assert_array_equal(out2, full2.reshape(T, B, 3))


def test_at_new_samples_chunks_are_chunk_rows_over_b_whole_samples():
    """Where every row is new the chunks are exactly chunk_rows // B samples (at least one), the
    last one short: 10 samples of one query in chunks of 4 rows, of three queries in chunks of
    2 samples (7 // 3), and chunks below one sample's rows still take a whole sample."""
    from uhn.dynamics.solvers.driver import at_new_samples
    for T, B, chunk, expect in [(10, 1, 4, [4, 4, 2]), (5, 3, 7, [6, 6, 3]), (3, 4, 2, [4, 4, 4])]:
        seen, out = [], np.empty((T, B))
        at_new_samples(lambda x: (seen.append(len(x)) or x[:, 0],), np.ones((T, B), bool),
                       (np.ones((T, B, 2)),), (out,), chunk_rows=chunk)
        assert seen == expect


def _energy_samples(digits20, seed, T, B):
    """(net, rng, v (T, B, 64), h (T, B, 20), I (B, 64)): samples near the first B digits."""
    net = Network(digits20, "dot", L_h=L.log_sum_exp(2.0), tau_h=0.2)
    rng = np.random.default_rng(seed)
    v = digits20[:B][None] + 0.3 * rng.standard_normal((T, B, 64))
    return net, rng, v, rng.standard_normal((T, B, 20)), rng.standard_normal((B, 64))


def _assert_each_sample_alone(net, v, h, I, hs, E, dE, adiabatic):
    """sample_energies' (hs, E, dE) against Network.energy / dEdt on each sample alone: the same
    expressions on the same rows, only the sums may run in another order for another row count,
    so within energy_reorder_bounds (and h = S(g) of the adiabatic system within gemm_bound)."""
    for k in range(len(v)):
        if adiabatic:
            hk = net.similarity(v[k])
            Ek, dEk = net.energy_adiabatic(v[k], I), net.dEdt_adiabatic(v[k], I)
            np.testing.assert_array_less(np.abs(hs[k] - hk), gemm_bound(v[k], net.M.T) + 1e-300)
        else:
            hk = h[k]
            Ek, dEk = net.energy(v[k], h[k], I), net.dEdt(v[k], h[k], I)
        bE, bdE = energy_reorder_bounds(net, v[k], hk, I, adiabatic)
        np.testing.assert_array_less(np.abs(E[k] - Ek), bE)
        np.testing.assert_array_less(np.abs(dE[k] - dEk), bdE)


@pytest.mark.parametrize("adiabatic", [False, True])
def test_sample_energies_of_held_samples_are_copied(monkeypatch, digits20, adiabatic):
    """A query that stopped holds its final state: sample_energies evaluates the energies on the
    new rows only (counted), and the held samples' E, dE/dt (and h = S(g)) equal those of the
    sample they repeat exactly; every sample agrees with its energies computed alone."""
    from uhn.dynamics.solvers.driver import sample_energies
    T, B = 6, 4
    net, rng, v, h, I = _energy_samples(digits20, 11, T, B)
    new = _hold(rng, T, B, v, h)
    assert 0 < new.sum() < T * B
    rows = []
    name = "energy_and_dEdt_adiabatic" if adiabatic else "energy_and_dEdt"
    real = getattr(Network, name)
    monkeypatch.setattr(Network, name, lambda self, v_, *a: rows.append(len(v_)) or real(self, v_, *a))
    hs, E, dE = sample_energies(net, v, None if adiabatic else h, I)
    assert sum(rows) == new.sum()
    for t, b in np.argwhere(~new):
        assert E[t, b] == E[t - 1, b] and dE[t, b] == dE[t - 1, b]
        np.testing.assert_array_equal(hs[t, b], hs[t - 1, b])
    _assert_each_sample_alone(net, v, h, I, hs, E, dE, adiabatic)


@pytest.mark.parametrize("adiabatic", [False, True])
def test_sample_energies_equal_one_sample_at_a_time(monkeypatch, digits20, adiabatic):
    """sample_energies flattens the samples into chunks of whole samples (here 2 of 7 samples
    per chunk, the last chunk short) with each row's own input current."""
    from uhn.dynamics.solvers.driver import sample_energies
    net, _, v, h, I = _energy_samples(digits20, 5, 7, 3)
    monkeypatch.setattr(driver, "ENERGY_CHUNK_ROWS", 2 * 3)
    hs, E, dE = sample_energies(net, v, None if adiabatic else h, I)
    _assert_each_sample_alone(net, v, h, I, hs, E, dE, adiabatic)


# --------------------------------------------------------------------------------------------------
# Values mutation testing (tools/mutate.py; docs/testing.md, "The third full runs") found
# unchecked: integrate's documented defaults, rest_ratio's closed form, the Radau / BDF Jacobian
# limit at its boundary, the convergence verdict (read at the last sample, on both sides of its
# threshold, numpy and array paths), the array path's clamped current and keep=k, solve_ivp's exact
# evaluation budget, keep=k and an event before the first sample time, Trajectory.query, and the
# time bar's bookkeeping. Inputs are dyadic where the values are asserted exactly.


@pytest.fixture
def net():
    """D = 2 feature and N = 3 memory neurons, tau_v = 4, tau_h = 1/4 (powers of two: exact)."""
    return Network(np.eye(3, 2), similarity="dot", tau_v=4.0, tau_h=0.25)


def test_rest_ratio_closed_form(net):
    """rest_ratio = max_i |dy_i/dt| / (tol + noise (atol + rtol |y_i|) / tau_i). With tol = 1,
    noise = 2, atol = 1/2, rtol = 1/2 (all dyadic: every operation exact):
      a v entry at y = 0: floor 1 + 2 (1/2) / 4 = 5/4, so |dy/dt| = 5/2 gives 2;
      an h entry at y = 3: floor 1 + 2 (1/2 + 3/2) / (1/4) = 17, so |dy/dt| = 51 gives 3."""
    Y = np.zeros((2, 5))
    dY = np.zeros((2, 5))
    dY[0, 1] = -2.5                         # row 0: only a feature neuron moves
    Y[1, 3], dY[1, 3] = 3.0, 51.0           # row 1: only a memory neuron moves
    r = rest_ratio(net, Y, dY, tol=1.0, noise=2.0, rtol=0.5, atol=0.5, adiabatic=False)
    np.testing.assert_array_equal(r, [2.0, 3.0])


def test_rest_ratio_adiabatic_uses_tau_v_for_every_entry(net):
    """Adiabatic rows hold v only (width D): floor = tol + noise (atol + rtol |v_i|) / tau_v;
    v = 2: 1 + 2 (1/2 + 1) / 4 = 7/4, so |dv/dt| = 7 gives 4."""
    Y, dY = np.array([[0.0, 2.0]]), np.array([[0.0, -7.0]])
    r = rest_ratio(net, Y, dY, tol=1.0, noise=2.0, rtol=0.5, atol=0.5, adiabatic=True)
    np.testing.assert_array_equal(r, [4.0])


def test_integrate_defaults():
    """integrate(net, q): t_end = 50, 101 evenly spaced samples, rtol = 1e-8, atol = 1e-10,
    fixed_point_tol = 1e-8 (the documented signature), recorded in the trajectory's params; sample_times has the same 101."""
    traj = integrate(Network(np.eye(2)), np.array([1.0, 0.0]), stop_at_fixed_point=False)
    np.testing.assert_array_equal(traj.t, np.linspace(0.0, 50.0, 101))
    p = traj.params
    assert (p["rtol"], p["atol"], p["t_end"], p["fixed_point_tol"]) == (1e-8, 1e-10, 50.0, 1e-8)
    np.testing.assert_array_equal(sample_times(2.0), np.linspace(0.0, 2.0, 101))


def test_trajectory_query_is_that_query_alone(linear_net):
    """traj.query(b) holds exactly column b of every per-query array, as a batch of one."""
    traj = integrate(linear_net, np.array([[0.1, 0.0], [0.0, 0.2], [0.3, 0.3]]), t_end=1.0,
                     stop_at_fixed_point=False)
    for b in range(3):
        q = traj.query(b)
        np.testing.assert_array_equal(q.v, traj.v[:, b:b + 1])
        np.testing.assert_array_equal(q.h, traj.h[:, b:b + 1])
        np.testing.assert_array_equal(q.E, traj.E[:, b:b + 1])
        np.testing.assert_array_equal(q.I, traj.I[b:b + 1])


def _decay_net():
    """D = N = 1, M = 0: dv/dt = -v / tau_v and dh/dt = (0 - h) / tau_h (dot similarity of a zero
    memory is 0): v(t) = v0 e^(-t), h(t) = h0 e^(-10 t); the fixed point is the origin."""
    return Network(np.zeros((1, 1)), "dot", L_v=L.quadratic(), L_h=L.quadratic())


def test_integrate_documented_defaults():
    """integrate(net, q) with no options: RK45, rtol 1e-8 (float64), atol 1e-10, t_end 50,
    fixed_point_tol 1e-8, noise_factor NOISE_FACTOR = 30, 1 BLAS thread, 101 samples over
    [0, t_end] (seen whole when stop_at_fixed_point=False), at most 100_000 RHS calls."""
    net = _decay_net()
    tr = integrate(net, np.array([1.0]))
    p = tr.params
    assert (tr.method, p["rtol"], p["atol"], p["t_end"]) == ("RK45", 1e-8, 1e-10, 50.0)
    assert (p["fixed_point_tol"], p["noise_factor"], p["blas_threads"]) == (1e-8, 30.0, 1)
    assert driver.NOISE_FACTOR == 30.0
    full = integrate(net, np.array([1.0]), 1.0, stop_at_fixed_point=False)
    np.testing.assert_array_equal(full.t, np.linspace(0.0, 1.0, 101))
    np.testing.assert_array_equal(driver.sample_times(2.0), np.linspace(0.0, 2.0, 101))
    assert inspect.signature(integrate).parameters["max_nfev"].default == 100_000


def test_jacobian_limit_is_twenty_million_nonzeros_inclusive():
    """B width^2 nonzeros up to JAC_NNZ_LIMIT = 2e7 are allowed, one more is refused:
    2000 queries of width 100 are exactly 2e7; 20_000_001 queries of width 1 are one over
    (nothing of that size is allocated: the check comes first)."""
    assert JAC_NNZ_LIMIT == 20_000_000
    check_jacobian_size("Radau", 2000, 100)
    with pytest.raises(ValueError, match=r"20,000,001 nonzeros .* integrate batches of at most "
                                         r"20000000 queries"):
        check_jacobian_size("BDF", 20_000_001, 1)
    # width 4473: 4473^2 = 20,007,729 > 2e7 on its own, so the advice is batches of 1
    with pytest.raises(ValueError, match=r"batches of at most 1 queries"):
        check_jacobian_size("Radau", 1, 4473)


class _Bar:
    """Stands in for tqdm: records update() amounts and postfix strings."""

    instances = []

    def __init__(self, total, **kw):
        self.total, self.n, self.updates, self.postfix, self.closed = total, 0.0, [], [], False
        _Bar.instances.append(self)

    def update(self, amount):
        self.updates.append(amount)
        self.n += amount

    def set_postfix_str(self, s, refresh=True):
        self.postfix.append(s)

    def close(self):
        self.closed = True


def test_time_bar_advances_by_simulated_time_and_counts_running_queries(monkeypatch):
    """progress=True: a bar over [0, t_end] in simulated time, advanced by the increase of the
    reported time (clipped to t_end, never backwards), its postfix the running queries whenever
    that count changes; a report with neither a later time nor a new count changes nothing.
    Times are dyadic: the amounts are exact."""
    import tqdm
    monkeypatch.setattr(tqdm, "tqdm", _Bar)
    _Bar.instances.clear()
    with driver.time_bar(True, 5.0, 4) as report:
        report(1.5, 4)           # +1.5, count unchanged: no postfix
        report(1.5, 4)           # nothing new: no update at all
        report(1.0, 3)           # earlier time (another row), one query fewer: +0, postfix
        report(2.25, 3)          # +0.75
        report(2.0, 2)           # earlier time again, one fewer: +0, postfix
        report(9.0, 0)           # clipped to t_end: +2.75, postfix
    bar, = _Bar.instances
    assert bar.total == 5.0 and bar.closed
    assert bar.updates == [1.5, 0.0, 0.75, 0.0, 2.75] and bar.n == 5.0
    assert bar.postfix == [f"({n} of 4 queries running)" for n in (3, 2, 0)]
    with driver.time_bar(False, 5.0, 4) as report:
        assert report is None
    fn = lambda t, n: None
    with driver.time_bar(fn, 5.0, 4) as report:
        assert report is fn


def test_converged_is_judged_at_the_final_sample():
    """Without stopping at a fixed point the verdict comes from the last sample alone: from v = 1,
    h = 1 the decay net is at e^(-50) ~ 2e-22 (velocity far below fixed_point_tol = 1e-8) at
    t_end = 50, while the second sample of 11 (e^(-5) ~ 7e-3 at t = 5) and the first of 2 (the
    initial state) are moving."""
    net = _decay_net()
    for n in (2, 11):
        tr = integrate(net, np.array([1.0]), 50.0, stop_at_fixed_point=False, n_samples=n,
                       h0=np.array([[1.0]]))
        assert tr.t[-1] == 50.0 and abs(tr.v[-1, 0, 0]) < 1e-20 and abs(tr.v[1 if n == 11 else 0, 0, 0]) > 1e-3
        assert tr.converged.tolist() == [True]


def test_array_integrator_clamps_the_query_as_a_current(as_array):
    """input_mode="clamped" holds I = q on: on the decay net tau_v dv/dt = -v + I is 0 at v = q, so
    every sample of v is q exactly (h relaxes to S(g) = 0 as e^(-t/tau_h)), on numpy and on
    array-api-strict arrays alike; without the current v would decay as e^(-t)."""
    net = Network(as_array(np.zeros((1, 2))), "dot", L_v=L.quadratic(), L_h=L.quadratic())
    q = np.array([[0.5, -0.25]])
    tr = integrate(net, as_array(q), 2.0, method="RK45-batched", input_mode="clamped",
                   stop_at_fixed_point=False, n_samples=5)
    np.testing.assert_array_equal(tr.I, q)
    np.testing.assert_array_equal(tr.v, np.broadcast_to(q, (5, 1, 2)))


def test_array_integrator_keeps_every_kth_sample(to_strict):
    """keep=2 on array-API arrays keeps samples 0, 2, 4 of five (and the last), as numpy does."""
    net = Network(to_strict(np.zeros((1, 2))), "dot", L_v=L.quadratic(), L_h=L.quadratic())
    kw = dict(method="RK45-batched", stop_at_fixed_point=False, n_samples=5)
    full = integrate(net, to_strict([[0.5, -0.25]]), 1.0, **kw)
    thin = integrate(net, to_strict([[0.5, -0.25]]), 1.0, keep=2, **kw)
    np.testing.assert_array_equal(thin.t, [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(thin.v, full.v[[0, 2, 4]])


def test_solve_ivp_evaluation_budget_is_exact():
    """max_nfev caps solve_ivp's right-hand-side calls exactly: a run that needs n calls passes
    with max_nfev = n and stops with the budget named at n - 1."""
    net = _decay_net()
    kw = dict(method="RK45", stop_at_fixed_point=False, n_samples=3)
    n = integrate(net, np.array([1.0]), 2.0, **kw).params["nfev"]
    assert integrate(net, np.array([1.0]), 2.0, max_nfev=n, **kw).params["nfev"] == n
    with pytest.raises(RuntimeError, match=f"more than {n - 1} right-hand-side calls"):
        integrate(net, np.array([1.0]), 2.0, max_nfev=n - 1, **kw)


def test_array_integrator_judges_convergence_at_the_final_sample(to_strict):
    """On array-API arrays too the verdict reads the last sample against the rest threshold
    fixed_point_tol + noise (atol + rtol |y|) / tau: from v = 1, h = 0 (h stays 0) the decay net
    is at rest by t = 50 (velocity ~ 2e-22; the first of two samples is the moving initial state)
    and not at t = 1 (velocity e^(-1) ~ 0.37, against 1e-8 + 30 (1e-10 + 1e-8 e^(-1)) ~ 1.2e-7)."""
    net = Network(to_strict(np.zeros((1, 1))), "dot", L_v=L.quadratic(), L_h=L.quadratic())
    kw = dict(method="RK45-batched", stop_at_fixed_point=False, n_samples=2, h0=to_strict([[0.0]]))
    assert integrate(net, to_strict([[1.0]]), 50.0, **kw).converged.tolist() == [True]
    assert integrate(net, to_strict([[1.0]]), 1.0, **kw).converged.tolist() == [False]
    kw["n_samples"] = 11        # the second of 11 samples, t = 5, still moves (e^(-5) ~ 7e-3)
    assert integrate(net, to_strict([[1.0]]), 50.0, **kw).converged.tolist() == [True]


def test_solve_ivp_keeps_every_kth_sample():
    """keep=2 with a solve_ivp method keeps samples 0, 2, 4 of five, bit for bit."""
    net = _decay_net()
    kw = dict(method="RK45", stop_at_fixed_point=False, n_samples=5)
    full = integrate(net, np.array([1.0]), 1.0, **kw)
    thin = integrate(net, np.array([1.0]), 1.0, keep=2, **kw)
    np.testing.assert_array_equal(thin.t, [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(thin.v, full.v[[0, 2, 4]])


@pytest.mark.parametrize("space", ["numpy", "strict"])
def test_final_ratio_between_one_and_two_is_not_converged(space, request):
    """At t = log(5e7) the decay net's v = 2e-8 moves at |dv/dt| = 2e-8 against the default rest
    threshold 1e-8 + 30 (1e-10 + 1e-8 * 2e-8) ~ 1.3e-8 (h held at 0): a ratio of ~1.54, so the
    final state is not a fixed point (RK45 at rtol 1e-8 keeps v to ~1e-7 relative here)."""
    wrap = np.asarray if space == "numpy" else request.getfixturevalue("to_strict")
    net = Network(wrap(np.zeros((1, 1))), "dot", L_v=L.quadratic(), L_h=L.quadratic())
    tr = integrate(net, wrap([[1.0]]), float(np.log(5e7)), method="RK45-batched",
                   stop_at_fixed_point=False, n_samples=2, h0=wrap([[0.0]]))
    v = abs(float(tr.v[-1, 0, 0]))
    assert 1.4 < v / (1e-8 + 30 * (1e-10 + 1e-8 * v)) < 1.7
    assert tr.converged.tolist() == [False]


def test_solve_ivp_event_before_the_first_sample_time_adds_the_event_state():
    """With two samples over [0, 50] the decay net from v = 1e-7, h = 0 reaches the rest threshold
    (~1.3e-8) at t ~ 2, long before the second sample time: the trajectory is the initial sample
    and the event state, converged."""
    net = _decay_net()
    tr = integrate(net, np.array([1e-7]), 50.0, n_samples=2, h0=np.array([[0.0]]))
    assert len(tr.t) == 2 and tr.t[0] == 0.0 and 1.5 < tr.t[1] < 3.0
    assert tr.converged.tolist() == [True]
