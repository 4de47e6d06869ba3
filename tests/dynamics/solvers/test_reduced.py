"""The exact reduced solver (uhn.dynamics.solvers.reduced): v = c(t) + M^T a for dot similarity with linear
feature rates, checked against the full system (integrate with solve_ivp RK45 and RK45-batched),
the closed form of c, integrate's stopping rule, the energy check, and its refusals."""
from functools import lru_cache

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st
from scipy.integrate import solve_ivp

from uhn.dynamics import lagrangians as L
from uhn.dynamics.solvers.rk45_batched import solve_batched
from uhn.dynamics.analysis.energy import ROUNDOFF_ULPS, _energy_and_size, verify_energy
from uhn.dynamics.analysis.fixed_points import stability
from uhn.dynamics.integrate import integrate
from uhn.dynamics.solvers.driver import NOISE_FACTOR, rest_ratio
from uhn.dynamics.network import Network
from uhn.dynamics.solvers.reduced import ReducedSystem, integrate_reduced
from error_bounds import step_error_bound

N, D, B = 8, 30, 3
TAU_V, TAU_H = 2.5, 0.3            # != 1 and != each other: a misplaced tau changes the flow
RTOL, ATOL = 1e-10, 1e-12
EPS = np.finfo(float).eps


def memories(seed=0, sigma=None):
    """N positive patterns; with ``sigma``, scaled to largest singular value sigma (a linear
    memory layer is only stable for sigma < 1)."""
    M = np.random.default_rng(seed).uniform(0, 1, (N, D))
    return M if sigma is None else M * (sigma / np.linalg.norm(M, 2))


def queries(M, seed=1):
    return M[:B] + 0.3 * np.random.default_rng(seed).standard_normal((B, D))


LAYERS = {
    "log_sum_exp": (lambda: L.log_sum_exp(0.5), None),
    "quadratic": (L.quadratic, 0.8),
    "rectified_polynomial": (lambda: L.rectified_polynomial(3.0), 1.5),
}


def reduced_error_bound(net, traj, rtol, atol):
    """(B,) bound on the 2-norm error of the rebuilt (v, h) of a reduced run: the reduced rows
    [a, h, e] (width 2N + 1) have global error <= step_error_bound (steps x sqrt(width) x (atol +
    rtol max|y|)), and v = I + (v0 - I) e + M^T a turns an error (da, de) into M^T da - (I - v0) de,
    2-norm <= (||M||_2 + |v0 - I|) times it. max|y|: |e| <= 1, and a(t) is an average of f(h) over
    the past (tau_v da/dt = f - a, a(0) = 0), so |a| <= max |f| (taken over the samples)."""
    f_max = np.abs(net.L_h.grad(traj.h.reshape(-1, net.N))).max()
    y_max = max(1.0, f_max, np.abs(traj.h).max())
    nfev = np.asarray(traj.params["nfev_per_query"], dtype=float)
    amp = np.linalg.norm(net.M, 2) + np.linalg.norm(traj.v[0] - traj.I, axis=1)
    return amp * step_error_bound(nfev, 2 * net.N + 1, rtol, atol, y_max)


def full_error_bound(traj, rtol, atol, per_query):
    """Bound on the 2-norm error of a full-system run: steps x sqrt(W) x (atol + rtol max|y|), W
    the components under one error norm (one query's D + N for RK45-batched, the whole batch's
    B (D + N) for one solve_ivp system)."""
    T, Bq, Dq = traj.v.shape
    y_max = max(np.abs(traj.v).max(), np.abs(traj.h).max())
    if per_query:
        nfev, W = np.asarray(traj.params["nfev_per_query"], dtype=float), Dq + traj.h.shape[2]
    else:
        nfev, W = float(traj.params["nfev"]), Bq * (Dq + traj.h.shape[2])
    return step_error_bound(nfev, W, rtol, atol, y_max)


@pytest.mark.parametrize("layer", sorted(LAYERS))
@pytest.mark.parametrize("input_mode", ["clamped", "initial"])
def test_trajectory_equals_full_system(layer, input_mode):
    """At every sample, the reduced trajectory equals solve_ivp RK45 and RK45-batched on the full
    (v, h) system to within the sum of the two runs' global error bounds (both at rtol 1e-10);
    input clamped (I = q) and I = 0, tau_v = 2.5, tau_h = 0.3."""
    make, sigma = LAYERS[layer]
    M = memories(sigma=sigma)
    net = Network(M, "dot", L_h=make(), tau_v=TAU_V, tau_h=TAU_H)
    Q = queries(M)
    kw = dict(rtol=RTOL, atol=ATOL, stop_at_fixed_point=False, n_samples=9, input_mode=input_mode)
    red = integrate_reduced(net, Q, 6.0, **kw)
    assert red.method == "reduced" and red.v.shape == (9, B, D) and red.h.shape == (9, B, N)
    bound_red = reduced_error_bound(net, red, RTOL, ATOL)
    moved = np.abs(red.v[-1] - red.v[0]).max()
    assert moved > 0.02                              # the flow is not trivial over the window
    for method, per_query in (("RK45", False), ("RK45-batched", True)):
        full = integrate(net, Q, 6.0, method=method, **kw)
        np.testing.assert_array_equal(full.t, red.t)
        np.testing.assert_array_equal(full.I, red.I)
        gap = np.sqrt(np.sum((red.v - full.v) ** 2, axis=2) + np.sum((red.h - full.h) ** 2, axis=2))
        allowed = bound_red + full_error_bound(full, RTOL, ATOL, per_query)
        # measured 1e-11 .. 1.6e-9 against bounds of 4e-7 .. 6e-5 (steps x sqrt(W), no cancellation)
        assert np.all(gap <= allowed), (method, gap.max(), np.min(allowed))
        # E is the Network's own on the rebuilt states (evaluated there on all samples as one
        # batch: GEMM blocking changes the round-off, ROUNDOFF_ULPS eps64 x the size of E's terms)
        for k in range(len(red.t)):
            Ek, size = _energy_and_size(net, np.concatenate([red.v[k], red.h[k]], 1), red.I, False)
            assert np.all(np.abs(red.E[k] - Ek) <= 2 * ROUNDOFF_ULPS * EPS * size)


def test_adiabatic_equals_full_adiabatic():
    """tau_h -> 0: tau_v da/dt = f(M c + G a) - a equals integrate(adiabatic=True) on v, within
    both runs' error bounds (the reduced rows are [a, e], width N + 1)."""
    M = memories()
    net = Network(M, "dot", L_h=L.log_sum_exp(0.5), tau_v=TAU_V, tau_h=TAU_H)
    Q = queries(M)
    kw = dict(rtol=RTOL, atol=ATOL, stop_at_fixed_point=False, n_samples=9, adiabatic=True)
    red = integrate_reduced(net, Q, 6.0, **kw)
    full = integrate(net, Q, 6.0, method="RK45-batched", **kw)
    assert red.adiabatic and red.h.shape == (9, B, N)
    np.testing.assert_allclose(red.h, red.v @ M.T, rtol=0, atol=1e-12 * np.abs(red.h).max())
    y_max = max(1.0, np.abs(red.v).max(), np.abs(full.v).max())
    amp = np.linalg.norm(M, 2) + np.linalg.norm(red.v[0], axis=1)
    nf_r = np.asarray(red.params["nfev_per_query"], float)
    nf_f = np.asarray(full.params["nfev_per_query"], float)
    allowed = (amp * step_error_bound(nf_r, N + 1, RTOL, ATOL, y_max)
               + step_error_bound(nf_f, D, RTOL, ATOL, y_max))
    gap = np.linalg.norm(red.v - full.v, axis=2)
    assert np.all(gap <= allowed), (gap.max(), allowed.min())
    assert np.abs(red.v[-1] - red.v[0]).max() > 0.05


def test_clock_and_closed_form_of_c():
    """c(t) = I + (v0 - I) e^{-t/tau_v} solves tau_v dc/dt = I - c (against solve_ivp at rtol
    1e-12, error <= steps x sqrt(D) x (atol + rtol max|c|)); the clock column e that the reduced
    rows carry equals e^{-t/tau_v} within its own error bound (one row component under dopri's
    norm: steps x sqrt(2N + 1) x (atol + rtol))."""
    M = memories()
    net = Network(M, "dot", L_h=L.log_sum_exp(0.5), tau_v=TAU_V, tau_h=TAU_H)
    Q = queries(M)
    I = 0.5 * M[B:2 * B]                               # per-query constant input (B, D)
    te = np.linspace(0, 6, 13)
    ref = solve_ivp(lambda t, c: (I.ravel() - c) / TAU_V, (0, 6), Q.ravel(), t_eval=te,
                    rtol=1e-12, atol=1e-14)
    c = I + (Q - I) * np.exp(-te / TAU_V)[:, None, None]
    allowed = step_error_bound(ref.nfev, B * D, 1e-12, 1e-14, np.abs(c).max())
    assert np.abs(ref.y.T.reshape(-1, B, D) - c).max() <= allowed
    v0, h0 = net.initial_state(Q)
    red = ReducedSystem(net, v0, I, adiabatic=False)
    sol = solve_batched(red.F, red.initial_rows(h0), 6.0, t_eval=te, rtol=RTOL, atol=ATOL)
    clock_bound = step_error_bound(sol.nfev, 2 * N + 1, RTOL, ATOL, 1.0)
    assert np.all(np.abs(sol.y[:, :, -1] - np.exp(-te / TAU_V)[:, None]) <= clock_bound)


def test_per_query_input_equals_full_system():
    """A (B, D) input current: the reduced run equals solve_ivp on the full system's flat RHS with
    that input (error bounds as above)."""
    M = memories()
    net = Network(M, "dot", L_h=L.log_sum_exp(0.5), tau_v=TAU_V, tau_h=TAU_H)
    Q = queries(M)
    I = 0.5 * M[B:2 * B]
    red = integrate_reduced(net, Q, 6.0, I=I, rtol=RTOL, atol=ATOL, stop_at_fixed_point=False,
                            n_samples=9)
    v0, h0 = net.initial_state(Q)
    ref = solve_ivp(net.fun(I), (0, 6.0), net.pack(v0, h0), t_eval=red.t, rtol=RTOL, atol=ATOL)
    Y = ref.y.T.reshape(len(red.t), B, D + N)
    gap = np.sqrt(np.sum((red.v - Y[..., :D]) ** 2, 2) + np.sum((red.h - Y[..., D:]) ** 2, 2))
    y_max = max(np.abs(Y).max(), 1.0)
    allowed = reduced_error_bound(net, red, RTOL, ATOL) + step_error_bound(ref.nfev, B * (D + N), RTOL, ATOL, y_max)
    assert np.all(gap <= allowed), (gap.max(), allowed.min())
    np.testing.assert_array_equal(red.I, I)


def test_stopping_rule_matches_integrate():
    """Each query to its fixed point: the same converged flags as integrate(RK45-batched), and final
    states within 2 x (largest velocity the rest test lets through) / (slowest decay rate at the
    fixed point) of each other (linear convergence: a state whose velocity is w lies about w /
    |Re lambda_min| from the fixed point), plus both runs' error bounds."""
    M = memories()
    net = Network(M, "dot", L_h=L.log_sum_exp(2.0), tau_v=TAU_V, tau_h=TAU_H)
    Q = queries(M)
    rtol, atol, tol = 1e-8, 1e-10, 1e-6
    kw = dict(rtol=rtol, atol=atol, fixed_point_tol=tol, n_samples=11)
    red = integrate_reduced(net, Q, 200.0, **kw)
    full = integrate(net, Q, 200.0, method="RK45-batched", **kw)
    assert red.converged.all()
    np.testing.assert_array_equal(red.converged, full.converged)
    stops = np.asarray(red.params["t_final_per_query"])
    assert np.all(stops < 200.0)                     # every query stopped at rest, not at t_end
    Yf = np.concatenate([red.v_final, red.h_final], axis=1)
    assert np.all(rest_ratio(net, Yf, net.velocity(Yf, red.I), tol, NOISE_FACTOR, rtol, atol, False) <= 1)
    for b in range(B):
        st_ = stability(net, red.v_final[b], red.h_final[b], red.I[b])
        assert st_.stable
        rate = -st_.eigenvalues.real.max()
        floor_max = tol + NOISE_FACTOR * (atol + rtol * np.abs(Yf[b]).max()) / min(TAU_V, TAU_H)
        w = np.sqrt(D + N) * floor_max                  # 2-norm of a velocity at the threshold
        allowed = 2 * w / rate + reduced_error_bound(net, red.query(b), rtol, atol)[0] \
            + full_error_bound(full.query(b), rtol, atol, False)
        gap = np.sqrt(np.sum((red.v_final[b] - full.v_final[b]) ** 2)
                      + np.sum((red.h_final[b] - full.h_final[b]) ** 2))
        assert gap <= allowed, (b, gap, allowed)


@lru_cache(maxsize=None)
def _fixed_point(m_seed):
    """A network with a per-query input I and its fixed points (a*, h*): a* = f(h*),
    h* = M I + G a* (the reduced rows integrated from v0 = I, where c is constant, to rest)."""
    M = memories(m_seed)
    net = Network(M, "dot", L_h=L.log_sum_exp(1.0), tau_v=TAU_V, tau_h=TAU_H)
    I = np.random.default_rng(m_seed).uniform(0, 1, (B, D))
    red = ReducedSystem(net, I, I, adiabatic=False)
    _, h0 = net.initial_state(I)
    sol = solve_batched(red.F, red.initial_rows(h0), 400.0, t_eval=[400.0], rtol=1e-12, atol=1e-14)
    return net, I, sol.y_final


def _states_near_rest(seed, scale, e_scale, part="ah"):
    """Rows [a, h, e] a distance ~scale from a fixed point (a*, h*) of the network with input I,
    with v0 = I + (a vector orthogonal to M's rows): then M c(t) = M I, so (a*, h*) stays at rest
    while c(t) itself still moves, dv/dt = (I - v0) e / tau_v, which only the e term sees."""
    net, I, Yfp = _fixed_point(seed % 5)
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((B, D))
    Mp = np.linalg.pinv(net.M)
    v0 = I + (z - (z @ Mp) @ net.M)                   # v0 - I orthogonal to every memory
    red = ReducedSystem(net, v0, I, adiabatic=False)
    Y = Yfp.copy()
    for k, name in enumerate("ah"):                  # perturb a, h or both
        if name in part:
            Y[:, k * N:(k + 1) * N] += scale * rng.standard_normal((B, N))
    Y[:, -1] = rng.uniform(0.5, 1, B) * e_scale
    return net, red, Y


@settings(max_examples=30)
@given(seed=st.integers(0, 2**31 - 1), log_scale=st.floats(-13, -2), log_e=st.floats(-14, 0))
@example(seed=3, log_scale=-13.0, log_e=-4.0)    # at rest but for c(t): only the e term says no
@example(seed=4, log_scale=-13.0, log_e=-14.0)   # at rest: the cheap bound decides alone
@example(seed=5, log_scale=-9.0, log_e=-14.0)    # h at rest, v not: the exact test decides
def test_rest_test_decides_like_integrate(seed, log_scale, log_e):
    """The cheap necessary (h) and sufficient (|M^T u|_2 bound) tests never change the decision:
    at_rest on reduced rows equals integrate's rest_ratio <= 1 on the rebuilt full state and
    velocity, over states from far from to at a fixed point."""
    net, red, Y = _states_near_rest(seed, 10.0 ** log_scale, 10.0 ** log_e)
    rows = np.arange(B)
    dY = red.F(np.zeros(B), Y, rows, np.empty_like(Y))
    tol, rtol, atol = 1e-8, 1e-8, 1e-10
    decided = red.rest_test(tol, NOISE_FACTOR, rtol, atol)(Y, dY, rows)
    Yf, dYf = red.full(Y, dY, rows)
    # the rebuilt velocity is the full system's at the rebuilt state (round-off of the GEMMs:
    # eps64 x the size of the terms, |M|^T |a| + |I| + |v|)
    full_vel = net.velocity(Yf, red.I)
    size = np.abs(Yf).max() + np.abs(red.I).max() + np.abs(Y[:, :N]).sum(1).max() * np.abs(net.M).max()
    assert np.abs(dYf - full_vel).max() <= 64 * np.finfo(float).eps * size * N / min(TAU_V, TAU_H)
    expected = rest_ratio(net, Yf, dYf, tol, NOISE_FACTOR, rtol, atol, False) <= 1.0
    np.testing.assert_array_equal(decided, expected)


@settings(max_examples=20)
@given(seed=st.integers(0, 2**31 - 1), log_scale=st.floats(-12, 0), log_e=st.floats(-14, 0))
def test_speed_bound(seed, log_scale, log_e):
    """The cheap bound is an upper bound on |dv/dt|_inf of the rebuilt velocity, and its memory
    term is exactly |M^T w|_2, w = da/dt: e |I - v0|_inf / tau_v + |M^T w|_2 >= |dv/dt|_inf.
    Round-off: w^T G w and |M^T w|^2 are sums of ~N D products, each to ~N D eps64 x the sum of
    |terms| q = |w|^T |G| |w| (>= |w|^T |M| |M|^T |w|... the same size for both), which moves
    the square root n by <= min(err / (2 n), sqrt(err)); the c term adds a few ulps of itself."""
    net, red, Y = _states_near_rest(seed, 10.0 ** log_scale, 10.0 ** log_e)
    rows = np.arange(B)
    dY = red.F(np.zeros(B), Y, rows, np.empty_like(Y))
    _, dYf = red.full(Y, dY, rows)
    w = dY[:, :N]
    norm = np.linalg.norm(w @ net.M, axis=1)
    eps = np.finfo(float).eps
    q = np.einsum("bi,bi->b", np.abs(w) @ (np.abs(net.M) @ np.abs(net.M).T), np.abs(w))
    err_q = 4 * N * D * eps * q
    c_term = Y[:, -1] * np.abs(red.I - red.v0).max(1) / TAU_V
    roundoff = 2 * np.minimum(err_q / (2 * np.maximum(norm, 1e-300)), np.sqrt(err_q)) + 4 * eps * c_term
    bound = red.speed_bound(Y, dY, rows)
    assert np.all(np.abs(bound - c_term - norm) <= roundoff), np.abs(bound - c_term - norm) / roundoff
    assert np.all(np.abs(dYf[:, :D]).max(1) <= bound + roundoff)


def test_energy_check_passes():
    """uhn.dynamics.analysis.energy.verify_energy on the returned Trajectory: E never rises, dE/dt <= 0 and
    matches finite differences, and the samples solve the full network's ODE."""
    M = memories()
    net = Network(M, "dot", L_h=L.log_sum_exp(2.0), tau_v=TAU_V, tau_h=TAU_H)
    red = integrate_reduced(net, queries(M), 20.0, rtol=1e-8, atol=1e-10, n_samples=21)
    report = verify_energy(net, red)
    assert report.passed, report.summary()
    assert np.all(np.diff(red.E, axis=0) <= 10 * 1e-8 * np.maximum(np.abs(red.E[:-1]), 1) + 1e-12)


@pytest.mark.parametrize("kwargs, match", [
    (dict(similarity="cosine"), "needs dot similarity"),
    (dict(similarity="squared_euclidean"), "needs dot similarity"),
    (dict(L_v=L.log_cosh()), "needs a quadratic L_v"),
    (dict(L_v=L.softplus()), "needs a quadratic L_v"),
])
def test_refuses_other_networks(kwargs, match):
    M = memories()
    net = Network(M, kwargs.pop("similarity", "dot"), L_h=L.log_sum_exp(1.0), **kwargs)
    with pytest.raises(ValueError, match=match):
        integrate_reduced(net, queries(M), 1.0)


@pytest.mark.parametrize("I, match", [
    (lambda t: np.zeros(D), "constant input current"),
    (np.zeros(D + 1), r"shape \(30,\) or \(3, 30\)"),
    (np.full(D, np.nan), "must be finite"),
])
def test_refuses_bad_input(I, match):
    M = memories()
    net = Network(M, "dot", L_h=L.log_sum_exp(1.0))
    with pytest.raises(ValueError, match=match):
        integrate_reduced(net, queries(M), 1.0, I=I)
    with pytest.raises(ValueError, match="not both"):
        integrate_reduced(net, queries(M), 1.0, I=np.zeros(D), input_mode="clamped")


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(t_end=-1.0), ValueError, "t_end must be a positive"),
    (dict(input_mode="both"), ValueError, "input_mode must be"),
    (dict(rtol=0.0), ValueError, "tolerances must be"),
    (dict(max_nfev=0), ValueError, "max_nfev must be an integer >= 1"),
])
def test_refuses_bad_arguments(kwargs, exc, match):
    M = memories()
    net = Network(M, "dot", L_h=L.log_sum_exp(1.0))
    with pytest.raises(exc, match=match):
        integrate_reduced(net, queries(M), **kwargs)


def test_integrate_method_reduced_is_integrate_reduced():
    """integrate(net, Q, method="reduced") dispatches to the exact reduced solver: the same
    trajectory bit for bit, and the same refusals (a network it cannot reduce, a keep option it
    does not offer, a NaN tolerance)."""
    M = np.random.default_rng(0).uniform(0, 0.5, (4, 6))
    net = Network(M, "dot", L_h=L.log_sum_exp(2.0), tau_v=2.5, tau_h=0.3)
    Q = M[:2] + 0.05
    a = integrate(net, Q, 20.0, method="reduced")
    b = integrate_reduced(net, Q, 20.0)
    assert a.method == "reduced" and np.array_equal(a.v, b.v) and np.array_equal(a.h, b.h)
    with pytest.raises(ValueError, match="keeps every sample"):
        integrate(net, Q, 20.0, method="reduced", keep="ends")
    seen = []
    c = integrate(net, Q, 20.0, method="reduced", progress=lambda t, n: seen.append((t, n)))
    assert np.array_equal(c.v, a.v) and seen[-1] == (20.0, 0)
    with pytest.raises(ValueError, match="tolerances must be finite"):
        integrate(net, Q, 20.0, method="reduced", rtol=np.nan)
    with pytest.raises(ValueError, match="reduced solver needs dot similarity.*'squared_euclidean'"):
        integrate(Network(M, "squared_euclidean"), Q, 20.0, method="reduced")


@pytest.mark.parametrize("threads", [1, 2])
def test_integrate_method_reduced_applies_the_blas_policy(threads):
    """integrate(method="reduced") runs under integrate's BLAS-threads policy (it had ignored
    blas_threads): the BLAS pools seen from inside the integration have that many threads."""
    from threadpoolctl import threadpool_info
    M = np.random.default_rng(0).uniform(0, 0.5, (4, 6))
    net = Network(M, "dot", L_h=L.log_sum_exp(2.0))
    seen = set()

    def report(t, n):
        seen.update(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")

    tr = integrate(net, M[:2] + 0.05, 5.0, method="reduced", blas_threads=threads, progress=report)
    assert seen == {threads} and tr.params["blas_threads"] == threads
    with pytest.raises(ValueError, match="blas_threads"):
        integrate(net, M[:2], 5.0, method="reduced", blas_threads=0)


def test_float32_queries_give_float32_samples_rounded_from_the_float64_reduced_run():
    """The reduced rows are float64 for any network (the float64 twin of float32 memories), so a
    float32 problem (memories, queries and h0 float32, hence exact in float64) runs the very
    float64 integration of the same values in float64 and only rounds the samples: v and h equal
    the float64 run's samples rounded to float32, exactly, at the same times; E and dE/dt are
    float64, computed from the stored float32 samples, and pass the energy check."""
    M64 = memories()
    M32 = M64.astype(np.float32)
    Q32 = queries(M64).astype(np.float32)
    net32 = Network(M32, "dot", L_v=L.quadratic(), L_h=L.log_sum_exp(0.5), tau_v=TAU_V, tau_h=TAU_H)
    net64 = Network(M32.astype(np.float64), "dot", L_v=L.quadratic(), L_h=L.log_sum_exp(0.5),
                    tau_v=TAU_V, tau_h=TAU_H)
    h0 = net32.initial_state(Q32)[1]                      # float32
    t32 = integrate(net32, Q32, 20.0, method="reduced", h0=h0, rtol=RTOL, atol=ATOL)
    t64 = integrate(net64, Q32.astype(np.float64), 20.0, method="reduced", h0=h0.astype(np.float64),
                    rtol=RTOL, atol=ATOL)
    assert t32.v.dtype == t32.h.dtype == np.float32 and t32.E.dtype == t32.dEdt.dtype == np.float64
    assert np.array_equal(t32.t, t64.t)
    assert np.array_equal(t32.v, t64.v.astype(np.float32))
    assert np.array_equal(t32.h, t64.h.astype(np.float32))
    rep = verify_energy(net32, t32)
    assert rep.passed, rep.summary()
