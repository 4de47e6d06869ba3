"""Closed-form checks of dynamics values that mutation testing (tools/mutate.py) found unchecked.

Each test pins a value the docstrings promise on inputs where it is known exactly (dyadic
numbers, so every floating-point operation below is exact unless a comment says otherwise); a
wrong sign, a dropped ``/= tau``, a flipped comparison or a changed default changes a number
asserted here. See docs/testing.md for the run that found them.
"""
import numpy as np
import pytest

from uhn.dynamics import lagrangians as L
from uhn.dynamics.solvers.rk45_batched import solve_batched
from uhn.dynamics.integrate import rest_ratio
from uhn.dynamics.network import Network

EPS = np.finfo(np.float64).eps


@pytest.fixture
def net():
    """D = 2 feature and N = 3 memory neurons, tau_v = 4, tau_h = 1/4 (powers of two: exact)."""
    return Network(np.eye(3, 2), similarity="dot", tau_v=4.0, tau_h=0.25)


# ---------------------------------------------------------------------------------- rest_ratio
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


# ---------------------------------------------------------------------------------- network
def test_network_defaults():
    """Network(M): dot similarity, quadratic L_v, log_sum_exp(beta=1) L_h, tau_v = 1, tau_h = 0.1."""
    net = Network(np.eye(2))
    assert (net.tau_v, net.tau_h) == (1.0, 0.1)
    assert net.sim.name == "dot" and net.L_v.name == "quadratic" and net.L_h.name == "log_sum_exp(beta=1)"


def test_heteroassociative_readout_closed_form():
    """z = P^T f(h) with f = softmax (beta = 1): h = [0, log 3] gives f = [1/4, 3/4] (to the
    rounding of log 3 and exp: a few eps), so P = [[4, 0, 8], [0, 4, 8]] reads out [1, 3, 8]."""
    P = np.array([[4.0, 0.0, 8.0], [0.0, 4.0, 8.0]])
    net = Network(np.eye(2), values=P)
    z = net.readout(np.array([[0.0, np.log(3.0)]]))
    # f is off by a few eps relative; |P| <= 8 and two terms per output: 4 * 8 * 4 eps bounds it
    np.testing.assert_allclose(z, [[1.0, 3.0, 8.0]], rtol=0, atol=128 * EPS)


@pytest.fixture
def linear_net():
    """M = I_2, dot similarity, quadratic L_v and L_h (g = v, f = h), tau_v = 2, tau_h = 1/2:
    dv/dt = (h M - v) / 2, dh/dt = (M v - h) / (1/2), exact in floating point for small integers."""
    return Network(np.eye(2), similarity="dot", L_h=L.quadratic(), tau_v=2.0, tau_h=0.5)


def test_residual_and_flat_rhs_closed_form(linear_net):
    """At v = [2, 0], h = [0, 3]: dv/dt = ([0, 3] - [2, 0]) / 2 = [-1, 3/2] and
    dh/dt = ([2, 0] - [0, 3]) / (1/2) = [4, -6], so the residual max_i |dy_i/dt| is 6; the flat
    solve_ivp interface fun(t, y) on the pack() layout returns the same numbers."""
    v, h = np.array([[2.0, 0.0], [0.0, 0.0]]), np.array([[0.0, 3.0], [0.0, 0.0]])
    np.testing.assert_array_equal(linear_net.residual(v, h), [6.0, 0.0])
    dy = linear_net.fun()(0.0, linear_net.pack(v, h))
    np.testing.assert_array_equal(dy, [-1.0, 1.5, 4.0, -6.0, 0.0, 0.0, 0.0, 0.0])
    # adiabatic: h = S(g) = M v, so dv/dt = (M^T M v - v) / 2 = 0 for M = I: a line of fixed points
    np.testing.assert_array_equal(linear_net.residual(v, adiabatic=True), [0.0, 0.0])


def test_pack_unpack_layout(linear_net):
    """pack(v, h) = [v_0, h_0, v_1, h_1, ...] and unpack is its inverse."""
    v, h = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[10.0, 11.0], [12.0, 13.0]])
    y = linear_net.pack(v, h)
    np.testing.assert_array_equal(y, [1, 2, 10, 11, 3, 4, 12, 13])
    v2, h2 = linear_net.unpack(y)
    np.testing.assert_array_equal(v2, v)
    np.testing.assert_array_equal(h2, h)


# ---------------------------------------------------------------------------------- lagrangians
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


# ---------------------------------------------------------------------------------- dopri
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


# ---------------------------------------------------------------------------------- integrate
def test_integrate_defaults():
    """integrate(net, q): t_end = 50, 101 evenly spaced samples, rtol = 1e-8, atol = 1e-10,
    fixed_point_tol = 1e-8 (the documented signature), recorded in the trajectory's params; sample_times has the same 101."""
    from uhn.dynamics.integrate import integrate, sample_times
    traj = integrate(Network(np.eye(2)), np.array([1.0, 0.0]), stop_at_fixed_point=False)
    np.testing.assert_array_equal(traj.t, np.linspace(0.0, 50.0, 101))
    p = traj.params
    assert (p["rtol"], p["atol"], p["t_end"], p["fixed_point_tol"]) == (1e-8, 1e-10, 50.0, 1e-8)
    np.testing.assert_array_equal(sample_times(2.0), np.linspace(0.0, 2.0, 101))


# ---------------------------------------------------------------------------------- energy
def test_energy_increase_tolerance_uses_max_abs_E_and_one(linear_net):
    """The monotonicity check allows an increase of rtol_factor * rtol * max(|E|, 1) + atol_floor
    between samples. On the linear network E = |v - h|^2 / 2 (quadratic L_v and L_h, M = I), from
    v = [1/10, 0], h = 0 it is at most 1/200 < 1, so the allowance is 10 * 1e-8 * 1 + 1e-12 (to
    the rounding of those two products and the sum: 3 eps relative) and the reported relative
    increase is the increase itself (divided by 1)."""
    from uhn.dynamics.analysis.energy import verify_energy
    from uhn.dynamics.integrate import integrate
    traj = integrate(linear_net, np.array([0.1, 0.0]), t_end=5.0, h0=np.zeros((1, 2)))
    assert np.abs(traj.E).max() <= 0.005 * (1 + 4 * EPS)
    rep = verify_energy(linear_net, traj)
    assert rep.passed, rep.summary()
    assert abs(rep.increase_tol - (10 * 1e-8 + 1e-12)) <= 3 * EPS * 1e-7
    assert rep.max_increase_relative == rep.max_increase


def test_trajectory_query_is_that_query_alone(linear_net):
    """traj.query(b) holds exactly column b of every per-query array, as a batch of one."""
    from uhn.dynamics.integrate import integrate
    traj = integrate(linear_net, np.array([[0.1, 0.0], [0.0, 0.2], [0.3, 0.3]]), t_end=1.0,
                     stop_at_fixed_point=False)
    for b in range(3):
        q = traj.query(b)
        np.testing.assert_array_equal(q.v, traj.v[:, b:b + 1])
        np.testing.assert_array_equal(q.h, traj.h[:, b:b + 1])
        np.testing.assert_array_equal(q.E, traj.E[:, b:b + 1])
        np.testing.assert_array_equal(q.I, traj.I[b:b + 1])


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
    from scipy.integrate import solve_ivp
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


def test_sample_times_must_strictly_increase():
    """A repeated sample time is refused like a decreasing one, naming the first pair."""
    from uhn.dynamics.solvers.rk45_batched import check_times
    with pytest.raises(ValueError, match=r"strictly increasing, got t_eval\[1\] = 1 >= t_eval\[2\] = 1"):
        check_times([0.0, 1.0, 1.0, 2.0], 5.0)
    np.testing.assert_array_equal(check_times([0.0, 1.0, 2.0], 5.0), [0.0, 1.0, 2.0])


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
    from uhn.dynamics.solvers.rk45_batched import kept_indices
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
