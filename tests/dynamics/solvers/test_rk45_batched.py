"""The batched Dormand-Prince integrator (uhn.dynamics.solvers.rk45_batched, integrate(method="RK45-batched")):
per-row step control equal to scipy's RK45 on each row alone, per-query stopping, and the
noise-aware fixed-point criterion."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.integrate import solve_ivp

from uhn.dynamics import lagrangians as L
from uhn.dynamics.solvers import rk45_batched as dopri
from uhn.dynamics.solvers.driver import check_times, kept_indices
from uhn.dynamics.solvers.rk45_batched import solve_batched
from uhn.dynamics.analysis.energy import verify_energy
from uhn.dynamics.integrate import integrate
from uhn.dynamics.network import Network
from uhn.models.data import load_dataset
from uhn.models.similarity import get_similarity
from error_bounds import step_error_bound

EPS = np.finfo(np.float64).eps
RATES = np.array([0.5, 1.0, 3.0, 10.0])


def decay(t, Y, rows, out):
    """dY/dt = -k_row Y, a different rate per row."""
    return np.multiply(-RATES[rows, None], Y, out=out)


@pytest.fixture(scope="module")
def digits20():
    return load_dataset("digits", n=20, seed=0).X


def test_each_row_takes_scipy_rk45_steps():
    """Same tableau and controller as scipy's RK45: per row, the same RHS count and samples to
    round-off, and the exact solution to the tolerance."""
    Y0 = np.arange(1.0, 13.0).reshape(4, 3)
    te = np.linspace(0, 5, 11)
    sol = solve_batched(decay, Y0, 5.0, t_eval=te, rtol=1e-8, atol=1e-10)
    exact = np.exp(-RATES[None, :, None] * te[:, None, None]) * Y0[None]
    for b, k in enumerate(RATES):
        # a decaying flow (growth 1): within the adaptive solution's global error bound
        bound = step_error_bound(sol.nfev[b], 3, 1e-8, 1e-10, np.abs(Y0[b]).max())
        assert np.abs(sol.y[:, b] - exact[:, b]).max() <= bound
        ref = solve_ivp(lambda t, y: -k * y, (0, 5), Y0[b], t_eval=te, rtol=1e-8, atol=1e-10)
        assert sol.nfev[b] == ref.nfev
        # the same steps in another order of operations: a few ulps per step, over nfev steps
        assert np.abs(sol.y[:, b] - ref.y.T).max() <= sol.nfev[b] * np.finfo(float).eps * np.abs(Y0[b]).max()
    assert len(set(sol.nfev.tolist())) == 4  # stiffer rows took more steps: step sizes are per row


def test_rows_stop_at_their_own_fixed_point_and_hold_it():
    Y0 = np.ones((4, 2))
    te = np.linspace(0, 50, 26)
    sol = solve_batched(decay, Y0, 50.0, t_eval=te,
                        at_rest=lambda Y, dY, rows: np.abs(dY).max(1) < 1e-6)
    assert sol.at_fixed_point.all()
    # |dY/dt| = k e^{-kt} < 1e-6 first at t = ln(1e6 k)/k, reached within one step
    expected = np.log(1e6 * RATES) / RATES
    assert np.all(sol.t_final >= expected) and np.all(sol.t_final < expected + 1.0)
    assert sol.t[-1] == sol.t_final.max()       # samples end where the last row stopped
    for b in range(4):
        after = sol.t > sol.t_final[b]
        np.testing.assert_array_equal(sol.y[after, b], np.broadcast_to(sol.y_final[b], (after.sum(), 2)))
    assert np.all(sol.velocity < 1e-6)
    assert np.all(np.diff(sol.nfev[np.argsort(sol.t_final)]) != 0)


def test_stall_and_bad_sample_times():
    with pytest.raises(RuntimeError, match=r"row 0 stopped at t=[0-9.]+ of 100.0: more than 50 right-hand-side evaluations"):
        solve_batched(decay, np.ones((4, 1)), 100.0, t_eval=[0.0], max_nfev=50)
    def turns_nan(t, Y, rows, out):  # row 2's derivative is NaN after t = 0.5: an error, not a loop
        out[:] = -Y
        out[(rows == 2) & (t > 0.5)] = np.nan
        return out
    with pytest.raises(FloatingPointError, match="row 2: the state or its derivative became non-finite"):
        solve_batched(turns_nan, np.ones((4, 1)), 5.0, t_eval=[0.0])
    with pytest.raises(ValueError, match=r"t_eval must be strictly increasing, got t_eval\[0\] = 0.5 >= "
                                         r"t_eval\[1\] = 0.2"):
        solve_batched(decay, np.ones((4, 1)), 1.0, t_eval=[0.5, 0.2])
    with pytest.raises(ValueError, match=r"t_eval must lie within \[0, t_end\] = \[0, 1\], got \[0, 2\]"):
        solve_batched(decay, np.ones((4, 1)), 1.0, t_eval=[0.0, 2.0])
    with pytest.raises(ValueError, match=r"t_eval must be finite, got t_eval\[1\] = inf"):
        solve_batched(decay, np.ones((4, 1)), 1.0, t_eval=[0.0, np.inf])


@pytest.mark.parametrize("tau_v, tau_h", [(1.0, 0.2), (2.5, 0.3), (0.4, 0.05)])
def test_network_trajectory_matches_solve_ivp_rk45(digits20, tau_v, tau_h):
    M = digits20
    net = Network(M, "dot", L_h=L.log_sum_exp(3.0), tau_v=tau_v, tau_h=tau_h)
    q = M[2] + 0.2 * np.random.default_rng(1).standard_normal(64)
    kw = dict(rtol=1e-10, atol=1e-12, stop_at_fixed_point=False, n_samples=21)
    a = integrate(net, q, 10.0, method="RK45-batched", **kw)
    b = integrate(net, q, 10.0, method="RK45", **kw)
    np.testing.assert_array_equal(a.t, b.t)
    assert a.params["nfev"] == b.params["nfev"]
    # same tableau, controller and step count: the runs differ only where round-off (BLAS sums
    # in another order) shifts an accepted step, which moves the solution by at most that step's
    # local error; at the explicit method's stability limit (tau_h = 0.05) such shifts recur, so
    # allow one per step (nfev / 6 steps): measured 4e-16 for tau_h >= 0.2 and 4e-9 for
    # tau_h = 0.05, against a bound of ~3e-6
    y_max = max(np.abs(b.v).max(), np.abs(b.h).max())
    tol = step_error_bound(b.params["nfev"] / 6, net.D + net.N, 1e-10, 1e-12, y_max)
    np.testing.assert_allclose(a.v, b.v, rtol=0, atol=tol)
    np.testing.assert_allclose(a.h, b.h, rtol=0, atol=tol)
    assert a.backend == "numpy" and b.backend == "scipy"


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), B=st.integers(2, 6), clamped=st.booleans())
def test_batch_equals_each_query_alone(seed, B, clamped):
    """A query's trajectory does not depend on the rest of the batch: same step count, same
    stopping time and samples to the tolerance (BLAS sums a batch in another order, and a
    step-size controller at its stability limit turns that round-off into ~1e-6 shifts of t) (queries leave the batch at different times, and with a clamped
    input each keeps its own current after the batch shrinks)."""
    rng = np.random.default_rng(seed)
    M = rng.uniform(0, 1, (5, 7))
    net = Network(M, "squared_euclidean", L_h=L.log_sum_exp(2.0), tau_h=0.1)
    Q = M[rng.integers(0, 5, B)] + rng.uniform(0.05, 0.6, (B, 1)) * rng.standard_normal((B, 7))
    kw = dict(method="RK45-batched", fixed_point_tol=1e-7, n_samples=31,
              input_mode="clamped" if clamped else "initial")
    batch = integrate(net, Q, 30.0, **kw)
    from uhn.dynamics.analysis.fixed_points import distance_bound
    for b in range(B):
        one = integrate(net, Q[b], 30.0, **kw)
        assert batch.params["nfev_per_query"][b] == one.params["nfev"]
        assert batch.params["t_final_per_query"][b] == pytest.approx(one.t[-1], rel=1e-4)
        T = len(one.t)
        # both solve the same ODE with the same steps: each within the adaptive solution's global
        # error bound of the exact samples, so within twice it of each other
        y_max = max(np.abs(one.v).max(), np.abs(one.h).max())
        tol = 2 * step_error_bound(one.params["nfev"] / 6, net.D + net.N, 1e-8, 1e-10, y_max)
        np.testing.assert_allclose(batch.v[:T, b], one.v[:, 0], rtol=0, atol=tol)
        # the final states sit near one fixed point, each within its distance_bound of it
        if one.converged[0]:
            off = distance_bound(net, batch.v_final[b], batch.h_final[b], batch.I[b]) + \
                distance_bound(net, one.v_final[0], one.h_final[0], one.I[0])
            assert np.linalg.norm(batch.v_final[b] - one.v_final[0]) <= 2 * off
        assert batch.converged[b] == one.converged[0]


def test_adiabatic_batched_matches_solve_ivp(digits20):
    net = Network(digits20, "dot", L_h=L.log_sum_exp(2.0))
    Q = digits20[:3] + 0.1
    kw = dict(adiabatic=True, stop_at_fixed_point=False, n_samples=11, rtol=1e-10, atol=1e-12)
    a = integrate(net, Q, 5.0, method="RK45-batched", **kw)
    b = integrate(net, Q, 5.0, method="RK45", **kw)
    # each within its global error bound of the exact solution; a local error grows along the
    # flow by at most exp(mu t), mu the largest logarithmic norm of the Jacobian
    # (beta M^T H_f M - 1) / tau_v over the visited states (H_f the softmax Hessian)
    M, beta = digits20, 2.0
    mu = max(beta * np.linalg.norm(M.T @ (np.diag(f) - np.outer(f, f)) @ M, 2) - 1.0
             for f in net.L_h.grad(net.similarity(a.v.reshape(-1, net.D)))) / net.tau_v
    growth = np.exp(max(mu, 0.0) * 5.0)
    y_max = np.abs(b.v).max()
    tol = growth * (step_error_bound(max(a.params["nfev_per_query"]) / 6, net.D, 1e-10, 1e-12, y_max)
                    + step_error_bound(b.params["nfev"] / 6, len(Q) * net.D, 1e-10, 1e-12, y_max))
    np.testing.assert_allclose(a.v, b.v, rtol=0, atol=tol)
    assert a.adiabatic and verify_energy(net, a).passed


@pytest.mark.parametrize("sim", ["dot", "squared_euclidean", "euclidean", "minkowski"])
def test_energy_decreases_along_batched_trajectories(digits20, sim):
    s = get_similarity(sim, p=3) if sim == "minkowski" else get_similarity(sim)
    net = Network(digits20 / 16, s, L_v=L.log_cosh(), L_h=L.log_sum_exp(2.0), tau_h=0.1)
    Q = digits20[:6] / 16 + 0.1 * np.random.default_rng(2).standard_normal((6, 64))
    tr = integrate(net, Q, 20.0, method="RK45-batched", n_samples=81)
    rep = verify_energy(net, tr)
    assert rep.passed, rep


def test_stiff_layer_noise_floor(digits20):
    """An explicit method on tau_h << tau_v leaves |dh/dt| jittering near (atol + rtol|h|)/tau_h:
    a purely absolute tolerance below that floor never sees the fixed point; the default
    criterion (noise_factor = 30 times the floor) does, and the state it stops at is within
    the tolerance of the accurate fixed point."""
    M = digits20
    net = Network(M, "dot", L_h=L.log_sum_exp(0.05), tau_h=0.05)
    Q = M[:4] + 0.5
    strict = integrate(net, Q, 60.0, method="RK45-batched", noise_factor=0.0, fixed_point_tol=1e-9)
    assert not strict.converged.any() and strict.t[-1] == 60.0
    h = np.abs(strict.h_final).max()
    _, dh = net.rhs(strict.v_final, strict.h_final)
    assert 1e-9 < np.abs(dh).max() < 30 * (1e-10 + 1e-8 * h) / 0.05  # above 1e-9, below the floor
    auto = integrate(net, Q, 60.0, method="RK45-batched")
    assert auto.converged.all() and np.all(np.array(auto.params["t_final_per_query"]) < 60.0)
    accurate = integrate(net, Q, 200.0, method="Radau", rtol=1e-12, atol=1e-14, fixed_point_tol=1e-12,
                         noise_factor=0.0)
    assert accurate.converged.all()
    # each stop is off the exact fixed point by about J^{-1} ydot (fixed_points.distance_bound)
    from uhn.dynamics.analysis.fixed_points import distance_bound
    for b in range(len(Q)):
        off = sum(distance_bound(net, r.v_final[b], r.h_final[b]) for r in (auto, accurate))
        assert np.linalg.norm(auto.v_final[b] - accurate.v_final[b]) <= 2 * off


def test_non_smooth_similarity_stalls_with_a_clear_error():
    M = np.random.default_rng(0).uniform(0, 1, (4, 5))
    net = Network(M, get_similarity("manhattan"), L_h=L.log_sum_exp(5.0))
    with pytest.raises(RuntimeError, match="query 0: more than 2000 .*smoothed similarity"):
        integrate(net, M[:2] + 0.01, 50.0, method="RK45-batched", max_nfev=2000,
                  stop_at_fixed_point=False)


def test_finite_time_blow_up_is_reported_not_nan():
    """Linear g with exponential rates blows up in finite time (t ~ 1e-7 from 20 M_0): the step
    size collapses onto the spacing of floating-point times and the integrator says so, naming
    the query and the time, instead of returning NaN or inf states."""
    M = np.random.default_rng(0).uniform(0, 1, (4, 5))
    net = Network(M, "dot", L_h=L.exponential(1.0))
    with pytest.raises(RuntimeError, match=r"integration stopped at t=[0-9.e-]+ of 50.0: query 0: the "
                                           r"step size fell below the spacing of floating-point times"):
        integrate(net, M[:2] * 20, 50.0, method="RK45-batched")


@pytest.mark.parametrize("kw, match", [
    (dict(fixed_point_tol=0.0, noise_factor=0.0), "zero threshold"),
    (dict(noise_factor=-1.0), "noise_factor >= 0"),
    (dict(rtol=0.0), "rtol > 0"),
    (dict(atol=-1e-9), "atol >= 0"),
])
@pytest.mark.parametrize("method", ["RK45", "RK45-batched"])
def test_bad_tolerances_are_refused(kw, match, method):
    with pytest.raises(ValueError, match=match):
        integrate(Network(np.eye(3)), np.ones(3), 1.0, method=method, **kw)


# ------------------------------------------------------------------ step kernels and kept samples

KERNELS = ["numpy"] + (["numba"] if dopri.HAVE_NUMBA else [])


@pytest.mark.parametrize("kernels", KERNELS)
def test_each_kernel_takes_scipy_rk45_steps(kernels):
    """Both implementations of the step arithmetic (fused numba loops, in-place numpy) give each
    row scipy's RK45 alone: the same RHS count and samples to round-off (1e-12 relative: the
    stage sums are the same expressions, summed in another order than scipy's np.dot, a few ulps
    per step over ~100 steps of a contracting flow)."""
    Y0 = np.arange(1.0, 13.0).reshape(4, 3)
    te = np.linspace(0, 5, 11)
    sol = solve_batched(decay, Y0, 5.0, t_eval=te, rtol=1e-8, atol=1e-10, kernels=kernels)
    for b, k in enumerate(RATES):
        ref = solve_ivp(lambda t, y: -k * y, (0, 5), Y0[b], t_eval=te, rtol=1e-8, atol=1e-10)
        assert sol.nfev[b] == ref.nfev
        np.testing.assert_allclose(sol.y[:, b], ref.y.T, rtol=1e-12, atol=1e-15)


@pytest.mark.skipif(not dopri.HAVE_NUMBA, reason="numba not installed")
def test_numba_and_numpy_kernels_agree_bit_for_bit(digits20):
    """The two kernels evaluate the same expressions per element in the same order (numba
    without fastmath fuses no multiply-adds) and share the error norm's reduction, so a batch
    whose queries leave at different times (compaction of the running rows, partly rejected
    steps) gives identical steps, stop times and samples."""
    net = Network(digits20, "dot", L_h=L.log_sum_exp(3.0), tau_h=0.05)  # near RK45's stability limit
    rng = np.random.default_rng(3)
    Y0 = np.concatenate(net.initial_state(digits20[:5] + rng.uniform(0.1, 2, (5, 1))
                                          * rng.standard_normal((5, 64))), axis=1)
    te = np.linspace(0, 20, 41)

    def F(t, Y, rows, out):
        return net.velocity(Y, None, False, out)

    def at_rest(Y, dY, rows):
        return np.abs(dY).max(1) < 1e-5

    a = solve_batched(F, Y0, 20.0, t_eval=te, at_rest=at_rest, kernels="numba")
    b = solve_batched(F, Y0, 20.0, t_eval=te, at_rest=at_rest, kernels="numpy")
    assert len(set(a.t_final.tolist())) == 5      # every query left the batch at its own time
    assert a.n_rejected.sum() > 0                 # and some steps were rejected
    for name in ("t", "y", "t_final", "y_final", "nfev", "n_steps", "n_rejected", "velocity"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_unknown_kernels_and_bad_keep_every_are_refused():
    with pytest.raises(ValueError, match=r"kernels must be one of \('auto', 'numba', 'numpy'\), got 'cuda'"):
        solve_batched(decay, np.ones((4, 1)), 1.0, t_eval=[0.0], kernels="cuda")
    with pytest.raises(ValueError, match="keep_every must be an integer >= 1 or None, got 0"):
        solve_batched(decay, np.ones((4, 1)), 1.0, t_eval=[0.0], keep_every=0)
    with pytest.raises(TypeError, match="keep_every must be an integer >= 1 or None, got float 2.0"):
        solve_batched(decay, np.ones((4, 1)), 1.0, t_eval=[0.0], keep_every=2.0)
    with pytest.raises(ValueError, match=r"Y0 must be a 2-D array \(rows, width\) with at least one row, got shape \(0, 2\)"):
        solve_batched(decay, np.zeros((0, 2)), 1.0, t_eval=[0.0])
    with pytest.raises(ValueError, match=r"Y0 must be a 2-D array \(rows, width\) with at least one row, got shape \(4,\)"):
        solve_batched(decay, np.ones(4), 1.0, t_eval=[0.0])


@pytest.mark.parametrize("stop", ["t_end", "at_rest"])
@pytest.mark.parametrize("keep_every", [2, 3, 7, 25, None])
def test_keep_every_stores_exactly_the_kept_samples(stop, keep_every):
    """keep_every thins the full output to kept_indices, bit for bit, and allocates room for the
    kept samples only. 't_end': the output ends on t_eval's last time (index 25, not a multiple of
    3 or 7: taken from each row's latest sample); 'at_rest': rows stop at their own times and the
    output ends on the last stop time, appended after the sample times."""
    Y0 = np.arange(1.0, 9.0).reshape(4, 2)
    te = np.linspace(0, 30, 26)
    # at rest where |dY| = k y0 e^{-kt} < 1e-3: t = 1.1 (k = 10) ... 13.8 (k = 0.5), between samples
    kw = dict(t_eval=te, at_rest=(lambda Y, dY, rows: np.abs(dY).max(1) < 1e-3) if stop == "at_rest" else None)
    full = solve_batched(decay, Y0, 30.0, **kw)
    thin = solve_batched(decay, Y0, 30.0, keep_every=keep_every, **kw)
    if stop == "t_end":
        assert len(full.t) == 26 and full.t[-1] == 30.0
    else:
        assert 13 < full.t[-1] < 16 and full.t[-1] not in te
    kept = kept_indices(len(full.t), keep_every)
    np.testing.assert_array_equal(thin.t, full.t[kept])
    np.testing.assert_array_equal(thin.y, full.y[kept])
    for name in ("t_final", "y_final", "nfev", "n_steps", "velocity", "at_fixed_point"):
        np.testing.assert_array_equal(getattr(thin, name), getattr(full, name))
    stride = 26 if keep_every is None else keep_every
    assert thin.y.base.shape == (-(-26 // stride) + 1, 4, 2)    # the one samples buffer


@pytest.mark.parametrize("kernels", KERNELS)
def test_rows_within_is_the_fixed_point_test(digits20, kernels):
    """rows_within(dY, Y, base, slope) with integrate's rest_floor is rest_ratio <= 1: checked on
    rows whose velocities sit at 0.5, 0.999, 1.001 and 2 times the threshold in one component
    (away from the rounding of the ratio's division, ~1e-16); a NaN velocity is never at rest."""
    from uhn.dynamics.solvers.driver import rest_floor, rest_ratio
    net = Network(digits20, "dot", tau_v=2.0, tau_h=0.1)
    rng = np.random.default_rng(0)
    Y = rng.standard_normal((8, 84))
    base, slope = rest_floor(net, 84, 1e-6, 30.0, 1e-8, 1e-10)
    floor = base + slope * np.abs(Y)
    dY = 0.1 * floor * rng.uniform(-1, 1, Y.shape)
    for r, f in enumerate([0.5, 0.999, 1.001, 2.0, 0.5, 0.999, 1.001, 2.0]):
        i = 10 if r < 4 else 70                 # a feature or a memory component
        dY[r, i] = -f * floor[r, i]
    within = dopri.rows_within(dY, Y, base, slope, kernels=kernels)
    np.testing.assert_array_equal(within, [True, True, False, False] * 2)
    np.testing.assert_array_equal(within, rest_ratio(net, Y, dY, 1e-6, 30.0, 1e-8, 1e-10, False) <= 1)
    dY[1, 40] = np.nan
    assert not dopri.rows_within(dY, Y, base, slope, kernels=kernels)[1]
    with pytest.raises(ValueError, match="kernels must be one of"):
        dopri.rows_within(dY, Y, base, slope, kernels="gpu")


def test_progress_reports_simulated_time_and_running_rows():
    """progress(t, n) after every step: t the earliest running row's time, never decreasing; n
    the rows still running, falling as rows stop (a row is at rest once |Y| < 1e-3, at
    t = log(1000) / k, reached after a different number of steps per row); the last call is
    (t_end, 0). Reporting changes nothing in the solution."""
    calls = []
    Y0 = np.ones((4, 2))
    at_rest = lambda Y, dY, rows: np.abs(Y).max(1) < 1e-3
    sol = solve_batched(decay, Y0, 20.0, t_eval=np.linspace(0, 20, 5), at_rest=at_rest,
                        progress=lambda t, n: calls.append((t, n)))
    ts, ns = np.array([c[0] for c in calls]), np.array([c[1] for c in calls])
    assert np.all(np.diff(ts) >= 0) and np.all(np.diff(ns) <= 0) and calls[-1] == (20.0, 0)
    assert ns[0] == 4 and len(set(ns)) >= 3 and sol.at_fixed_point.all()
    # every report's t is at most the stop time of each row still running after it
    assert max(t for t, n in calls if n == 4) <= sol.t_final.min() + 1e-12
    plain = solve_batched(decay, Y0, 20.0, t_eval=np.linspace(0, 20, 5), at_rest=at_rest)
    assert np.array_equal(sol.y, plain.y) and np.array_equal(sol.t_final, plain.t_final)


@pytest.mark.parametrize("method", ["RK45-batched", "RK45"])
def test_integrate_progress_option(digits20, method, capsys):
    """integrate(progress=callable) sees times in [0, t_end]; progress=True draws a bar on stderr
    in simulated time; the trajectory is the one without progress."""
    net = Network(digits20, "dot", L_h=L.log_sum_exp(1.0), tau_v=2.5, tau_h=0.3)
    Q = digits20[:3] + 0.05
    seen = []
    tr = integrate(net, Q, 5.0, method=method, progress=lambda t, n: seen.append((float(t), n)))
    assert seen and all(0.0 <= t <= 5.0 for t, _ in seen) and max(t for t, _ in seen) == tr.t[-1]
    bar = integrate(net, Q, 5.0, method=method, progress=True)
    err = capsys.readouterr().err
    assert "integrating" in err and "of 5" in err
    plain = integrate(net, Q, 5.0, method=method)
    assert np.array_equal(tr.v, plain.v) and np.array_equal(bar.v, plain.v)


# --------------------------------------------------------------------------------------------------
# Values mutation testing (tools/mutate.py; docs/testing.md) found unchecked: the evaluation
# and rejection counts, scipy's initial step on slow and time-dependent flows, strictly increasing
# sample times, the exact evaluation budget, and thinned samples with the velocity at a stop.


def test_batched_rk45_counts_evaluations_steps_and_rejections():
    """Every attempted step of Dormand-Prince costs 6 evaluations (first same as last), plus 2 to
    start (F(t0) and the initial-step probe): nfev = 2 + 6 (accepted + rejected), per row. A
    loose tolerance on y' = -50 y from a large state forces rejections, so both counts matter."""
    rates = np.array([1.0, 50.0])

    def F(t, Y, rows, out):
        return np.multiply(-rates[rows, None], Y, out=out)

    sol = solve_batched(F, np.full((2, 1), 1e3), 2.0, t_eval=np.linspace(0, 2, 5), rtol=1e-3, atol=1e-6)
    assert sol.n_rejected[1] > 0
    np.testing.assert_array_equal(sol.nfev, 2 + 6 * (sol.n_steps + sol.n_rejected))


@pytest.mark.parametrize("system", ["slow", "non-autonomous", "from zero", "nonlinear", "flat start",
                                    "tiny state"])
def test_initial_step_is_scipys_on_slow_and_time_dependent_flows(system):
    """The batched solver's first step is scipy's select_initial_step, so each row takes the
    steps of solve_ivp(RK45) alone: the same evaluation count, samples equal to a few ulps per
    step. "slow": y' = -1e-7 y, whose scaled derivative norm d1 = |f| / (atol + rtol |y|) ~ 0.1
    is below 1 (h0 = 0.01 d0 / d1, not a smaller floor); "non-autonomous": y' = e^(10 t), where
    the probe derivative is taken at t0 + h0 (e^(+0.1) - 1, not e^(-0.1) - 1); "from zero":
    y' = cos t from y = 0 (d0 = 0: the probe step is 1e-6); "nonlinear": y' = -y^3, whose probe
    state is y0 + h0 f(y0) (the other side gives another |f(y1) - f(y0)|); "flat start":
    y' = t^6 from y = 1, where both probe derivatives vanish (d1 = 0, d2 ~ 1e-21 <= 1e-15), so the
    first step is min(100 h0, max(1e-6, 1e-3 h0)) with h0 = 1e-6; "tiny state": y' = cos t from
    |y| ~ atol (d0 = |y| / (atol + rtol |y|) ~ 0.5, above the 1e-5 that switches to h0 = 1e-6)."""
    if system == "slow":
        f, Y0, t_end, rtol, atol = (lambda t, y: -1e-7 * y), np.array([[1.0], [2.0]]), 5e6, 1e-6, 1e-12
    elif system == "non-autonomous":
        f, Y0, t_end, rtol, atol = (lambda t, y: np.exp(10 * t) + 0 * y), np.array([[1.0], [0.5]]), 1.0, 1e-6, 1e-9
    elif system == "from zero":
        f, Y0, t_end, rtol, atol = (lambda t, y: np.cos(t) + 0 * y), np.array([[0.0], [0.0]]), 3.0, 1e-6, 1e-9
    elif system == "nonlinear":
        f, Y0, t_end, rtol, atol = (lambda t, y: -y ** 3), np.array([[1.0], [3.0]]), 2.0, 1e-6, 1e-9
    elif system == "flat start":
        f, Y0, t_end, rtol, atol = (lambda t, y: t ** 6 + 0 * y), np.array([[1.0], [2.0]]), 2.0, 1e-6, 1e-9
    else:
        f, Y0, t_end, rtol, atol = (lambda t, y: np.cos(t) + 0 * y), np.array([[5e-10], [2.5e-10]]), 3.0, 1e-6, 1e-9

    def F(t, Y, rows, out):
        out[:] = f(t[:, None], Y)
        return out

    te = np.linspace(0.0, t_end, 5)
    sol = solve_batched(F, Y0, t_end, t_eval=te, rtol=rtol, atol=atol)
    for b in range(len(Y0)):
        ref = solve_ivp(f, (0.0, t_end), Y0[b], t_eval=te, rtol=rtol, atol=atol)
        assert sol.nfev[b] == ref.nfev
        if system == "tiny state":
            # stage sums of O(1) terms around a state that starts at 5e-10 round differently
            # from scipy's by more than an ulp of the final |y| per evaluation (measured up to
            # ~9): compare with the exact solution y0 + sin t within the adaptive solution's
            # global error, at most (atol + rtol |y|) per step over nfev / 6 steps
            exact = Y0[b, 0] + np.sin(te)
            assert np.abs(sol.y[:, b, 0] - exact).max() <= sol.nfev[b] / 6 * (atol + rtol * 1.0)
            continue
        scale = np.abs(ref.y).max()
        assert np.abs(sol.y[:, b, 0] - ref.y[0]).max() <= sol.nfev[b] * EPS * scale


def test_batched_evaluation_budget_is_exact():
    """max_nfev caps each row's right-hand-side evaluations exactly: rows that need n evaluations
    finish with max_nfev = n and stop with the budget named at n - 1."""
    Y0 = np.ones((2, 1))
    te = np.linspace(0.0, 2.0, 3)

    def F(t, Y, rows, out):
        np.negative(Y, out=out)
        return out

    n = int(solve_batched(F, Y0, 2.0, t_eval=te).nfev.max())
    assert solve_batched(F, Y0, 2.0, t_eval=te, max_nfev=n).nfev.max() == n
    with pytest.raises(RuntimeError, match=f"more than {n - 1} right-hand-side evaluations"):
        solve_batched(F, Y0, 2.0, t_eval=te, max_nfev=n - 1)


def _decay_rows(t, Y, rows, out):
    """dY/dt = -k_b Y with k = 1, 3, 9, 27 per row (by the row's index in the batch)."""
    np.multiply(Y, -(3.0 ** rows)[:, None], out=out)
    return out


def test_thinned_samples_are_the_full_outputs_and_velocity_is_the_largest():
    """keep_every = k stores exactly the samples kept_indices picks from the k = 1 output, bit for
    bit, for every sample count and stride here, with rows stopping at their own fixed points
    (rest when max |dY/dt| < 1e-4: rates 3, 9, 27 stop at t ~ 3.7, 1.3, 0.5, some between the
    last two sample times, while rate 1 runs to t_end = 8), including the last sample when it is
    not on the stride; the velocity reported at a stop is max_i |dY_i/dt| (components 1 and 2 of
    a row differ by a factor 2)."""
    Y0 = np.tile([1.0, 2.0], (4, 1))
    at_rest = lambda Y, dY, rows: np.abs(dY).max(1) < 1e-4
    for T in range(2, 10):
        te = np.linspace(0.0, 8.0, T)
        full = solve_batched(_decay_rows, Y0, 8.0, t_eval=te, at_rest=at_rest)
        assert full.at_fixed_point.tolist() == [False, True, True, True] and full.t[-1] == 8.0
        np.testing.assert_array_equal(full.velocity[1:], 3.0 ** np.arange(1, 4) * np.abs(full.y_final[1:]).max(1))
        for k in (2, 3):
            thin = solve_batched(_decay_rows, Y0, 8.0, t_eval=te, at_rest=at_rest, keep_every=k)
            kept = kept_indices(len(full.t), k)
            np.testing.assert_array_equal(thin.t, full.t[kept])
            np.testing.assert_array_equal(thin.y, full.y[kept])
