"""brian2 at every beta solve_ivp handles (the running softmax shift), its rest test, the
stability bound of a fixed step and the budget of dt="auto" (uhn.dynamics.backends.brian2_rate;
docs/theory.md section 8, docs/brian2.md).

The networks are MNIST digits (uhn.load_dataset("mnist")), queries half-masked and noisy
(uhn.corrupt), N small so that the numpy target is quick. The compiled targets run the running
shift at beta = 1000 in test_brian2_rate.py's cpp_standalone test (one build) and its cython test.
"""
import warnings

import numpy as np
import pytest

pytest.importorskip("brian2")

import uhn
from uhn.dynamics.analysis.compare import compare_trajectories
from uhn.dynamics.backends.brian2_rate import DEFAULT_DT_TOL, error_norm, run_brian2
from uhn.dynamics.backends.brian2_stability import Brian2StabilityWarning, stability_bound
from uhn.dynamics.integrate import integrate
from uhn.dynamics.lagrangians import log_cosh, log_sum_exp
from uhn.dynamics.network import Network


def _mnist(beta, n=6, B=2, tau_h=0.1):
    ds = uhn.load_dataset("mnist", n=n, seed=0)
    M = ds.X
    Q = uhn.corrupt(M[:B], "mask_bottom", 0.5, ds.image_shape, seed=0)
    Q = np.clip(Q + 0.1 * np.random.default_rng(0).standard_normal(Q.shape), 0, 1)
    return Network(M, "dot", L_h=log_sum_exp(beta), tau_v=1.0, tau_h=tau_h), Q


def _reference(net, Q, t):
    return integrate(net, Q, t[-1], t_eval=t, stop_at_fixed_point=False, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("beta", [1.0, 8.0, 100.0, 1000.0])
def test_mnist_softmax_within_dt_tol_of_solve_ivp_at_every_beta(beta):
    """beta max h(0) is 30 - 50 per unit beta on these digits: at beta = 8 the former constant
    shift c = beta max h(0) no longer fitted exp's range once h moved by 709 / beta; the running
    shift follows it. dt="auto" keeps error_norm within dt_tol of solve_ivp (documented)."""
    net, Q = _mnist(beta)
    tr = run_brian2(net, Q, 4.0, target="numpy")
    ref = _reference(net, Q, tr.t)
    err = error_norm(tr.v, tr.h, ref.v, ref.h)
    assert err <= DEFAULT_DT_TOL, (beta, tr.params["dt"], err)
    # the shift moved with beta h (h grows by ~75 here), at beta >= 100 far beyond exp's range
    # of 709 from its start: a constant shift would have overflowed
    moved = np.abs(np.subtract(tr.params["softmax_shift_final"], tr.params["softmax_shift"]))
    assert moved.max() > 30 * beta
    # compare_trajectories reads the same state differences (its feature part of error_norm)
    c = compare_trajectories(tr, ref, net)
    assert c.max_dv == np.abs(tr.v - ref.v).max() <= err


@pytest.mark.parametrize("beta", [8.0, 1000.0])
def test_converged_follows_solve_ivps_rest_test(beta):
    """Run on to the fixed point: brian2's converged is solve_ivp's rest test (driver.rest_ratio
    with integrate's default tolerances) at its last state, so both call the same state a fixed
    point; the two final states are as close as the rest test allows (a fixed point of the
    leapfrog map is a zero of the right-hand side)."""
    from uhn.dynamics.solvers.driver import NOISE_FACTOR, rest_ratio
    net, Q = _mnist(beta)
    tr = run_brian2(net, Q, 40.0, 0.05, target="numpy", record_every=100)
    ref = integrate(net, Q, 40.0)
    assert ref.converged.all() and tr.converged.all()
    Y = np.concatenate([tr.v_final, tr.h_final], axis=1)
    dY = np.concatenate(net.rhs(tr.v_final, tr.h_final), axis=1)
    ratio = rest_ratio(net, Y, dY, 1e-8, NOISE_FACTOR, 1e-8, 1e-10, False)
    np.testing.assert_array_equal(tr.converged, ratio <= 1)
    # far from the fixed point it is not converged
    early = run_brian2(net, Q, 0.5, 0.05, target="numpy")
    assert not early.converged.any()
    c = compare_trajectories(tr, integrate(net, Q, 40.0, t_eval=tr.t, stop_at_fixed_point=False,
                                           rtol=1e-11, atol=1e-13))
    assert c.max_fixed_point_distance <= 1e-6


def test_a_beta_float64_cannot_hold_is_refused():
    net, Q = _mnist(1e307)
    # the Lagrangian itself refuses it, as for solve_ivp
    with pytest.raises(OverflowError, match=r"beta \* (x|h\(0\)) overflows"):
        run_brian2(net, Q, 1.0, 0.05, target="numpy")


# ------------------------------------------------------------------------------ stability bound

def _digits_tanh():
    """uhn brian2's defaults with --rates tanh: 20 sklearn digits, squared Euclidean, softmax
    beta = 5, memory 0 + N(0, 0.2^2) held on as input."""
    M = uhn.load_dataset("digits", n=20, seed=0).X
    net = Network(M, "squared_euclidean", L_v=log_cosh(), L_h=log_sum_exp(5.0), tau_v=1.0, tau_h=0.1)
    q = M[0] + 0.2 * np.random.default_rng(0).standard_normal(M.shape[1])
    return net, q


def test_a_step_beyond_the_stability_bound_is_warned_with_the_bound():
    """dt = 2 tau_v (the issue's run: E rose by 48.6) is beyond the bound (1.10 ms at the initial
    state); the runs agree: at 1.25 ms E rises, at 0.8 ms (below 0.9 of the bound) it falls at
    every step, and no warning is given there."""
    net, q = _digits_tanh()
    sb = stability_bound(net, q, 2.0, I=q)
    assert not sb.stable and sb.rho > 1.5 and 1.0 < sb.dt_max < 1.2
    with pytest.warns(Brian2StabilityWarning, match=r"dt = 2 ms is beyond the explicit scheme's "
                                                    r"stability bound .* dt <= 1\.[01]\d* ms"):
        bad = run_brian2(net, q, 20.0, 2.0, target="numpy", input_mode="clamped")
    assert np.diff(bad.E, axis=0).max() > 1.0
    with pytest.warns(Brian2StabilityWarning):
        worse = run_brian2(net, q, 20.0, 1.25, target="numpy", input_mode="clamped")
    assert np.diff(worse.E, axis=0).max() > 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", Brian2StabilityWarning)
        ok = run_brian2(net, q, 20.0, 0.8, target="numpy", input_mode="clamped")
    assert np.diff(ok.E, axis=0).max() <= 1e-12 * np.abs(ok.E).max()


def test_stability_bound_matches_the_scalar_formula():
    """One memory, D = 1, linear rates and squared Euclidean similarity with identity L_h: the
    step map's spectral radius against the closed form of a 2x2 map (docs/theory.md section 8)."""
    from uhn.dynamics.lagrangians import quadratic
    from uhn.dynamics.backends.brian2_stability import step_map_operator
    net = Network(np.array([[2.0]]), "squared_euclidean", L_v=quadratic(), L_h=quadratic(),
                  tau_v=1.0, tau_h=0.5)
    v, h = np.array([0.3]), np.array([-0.4])
    for dt in (0.1, 1.0, 3.0):
        P = np.column_stack([step_map_operator(net, v, h, dt).matvec(e) for e in np.eye(2)])
        # S = -(m - g)^2, f = h: c = 2 f (m - g), dS/dg = 2 (m - g); C_v = -2 h, C_h = 2 (m - v)
        a_v, a_h = np.exp(-dt), np.exp(-dt / 0.5)
        Sv, Cv, Ch = 2 * (2.0 - v[0]), -2 * h[0], 2 * (2.0 - v[0])
        hv, hh = (1 - a_h) * Sv, a_h
        exact = np.array([[a_v + (1 - a_v) * (Cv + Ch * hv), (1 - a_v) * Ch * hh], [hv, hh]])
        np.testing.assert_allclose(P, exact, rtol=1e-7, atol=1e-9)


# ------------------------------------------------------------------------------ dt = "auto" budget

def test_auto_dt_refuses_a_tolerance_float64_cannot_reach():
    net, Q = _mnist(1.0)
    with pytest.raises(ValueError, match=r"dt_tol = 1e-15 is below what float64 can reach .* "
                                         r"use dt_tol >= "):
        run_brian2(net, Q, 4.0, target="numpy", dt_tol=1e-15)


def test_auto_dt_has_a_step_budget():
    """dt_tol = 1e-9 needs ~10^4 steps here: refused with max_steps = 1000, before the run."""
    net, Q = _mnist(1.0)
    with pytest.raises(ValueError, match=r"dt='auto' for dt_tol = 1e-09 needs dt = .* more than "
                                         r"max_steps = 1000"):
        run_brian2(net, Q, 4.0, target="numpy", dt_tol=1e-9, max_steps=1000)
    with pytest.raises(ValueError, match=r"t_end / dt = 4000 steps is more than max_steps = 1000"):
        run_brian2(net, Q, 4.0, 0.001, target="numpy", max_steps=1000)
