"""brian2 rate models against scipy's solve_ivp on the same Network (dynamics.brian2_backend).

Most tests use the numpy target (no compilation); one test compiles with cython (its cache is
$UHN_BRIAN2_CACHE or ~/.cache/uhn-brian2, about a minute cold) and one builds cpp_standalone.
"""
import numpy as np
import pytest

pytest.importorskip("brian2")

from dynamics.brian2_backend import Brian2UnsupportedError, check_supported, run_brian2, to_brian2
from dynamics.integrate import Trajectory, integrate
from dynamics.lagrangians import (elementwise, exponential, log_cosh, log_sum_exp, quadratic,
                                  rectified_polynomial, signed_polynomial, softplus, spherical)
from dynamics.network import Network

D, N = 32, 8


def _patterns(seed=0, scale=1.0 / np.sqrt(D)):
    rng = np.random.default_rng(seed)
    M = rng.choice([-1.0, 1.0], size=(N, D)) * scale
    Q = M[:2] + 0.4 * scale * rng.standard_normal((2, D))
    return M, Q


def _net(case):
    """The three networks of the issue (and a classical one with sigmoid rates)."""
    if case == "dot-softmax":
        M, Q = _patterns()
        return Network(M, "dot", L_v=quadratic(), L_h=log_sum_exp(10.0), tau_v=1.0, tau_h=0.1), Q
    if case == "dot-poly3":
        # bounded rates g = tanh(v): with g = v the cubic dense associative memory diverges
        M, Q = _patterns(scale=0.1)
        return Network(M, "dot", L_v=log_cosh(), L_h=rectified_polynomial(3), tau_v=1.0, tau_h=0.1), Q
    if case == "sqeuclid-softmax":
        M, Q = _patterns()
        return Network(M, "squared_euclidean", L_v=quadratic(), L_h=log_sum_exp(10.0),
                       tau_v=1.0, tau_h=0.1), Q
    if case == "dot-identity-sigmoid":
        M, Q = _patterns(scale=0.5 / np.sqrt(D))
        return Network(M, "dot", L_v=softplus(), L_h=quadratic(), tau_v=1.0, tau_h=0.5), Q
    if case == "dot-signedpoly3":
        M, Q = _patterns(scale=0.1)
        return Network(M, "dot", L_v=log_cosh(), L_h=signed_polynomial(3), tau_v=1.0, tau_h=0.1), Q
    if case == "dot-exp":
        M, Q = _patterns(scale=0.5 / np.sqrt(D))
        return Network(M, "dot", L_v=log_cosh(), L_h=exponential(1.0), tau_v=1.0, tau_h=0.1), Q
    if case == "sqeuclid-exp":
        # unnormalised: the feature equation reads sum_mu f_mu from the normaliser group
        M, Q = _patterns()
        return Network(M, "squared_euclidean", L_v=quadratic(), L_h=exponential(4.0),
                       tau_v=1.0, tau_h=0.1), Q
    raise KeyError(case)


def _reference(net, Q, t, **kw):
    return integrate(net, Q, t[-1], t_eval=t, stop_at_fixed_point=False, rtol=1e-11, atol=1e-13, **kw)


def _err(a: Trajectory, b: Trajectory) -> float:
    return max(np.abs(a.v - b.v).max(), np.abs(a.h - b.h).max())


CASES = ["dot-softmax", "dot-poly3", "sqeuclid-softmax", "dot-identity-sigmoid", "dot-signedpoly3",
         "dot-exp", "sqeuclid-exp"]


@pytest.mark.parametrize("case", CASES)
def test_leapfrog_matches_solve_ivp_and_energy_falls_every_step(case):
    net, Q = _net(case)
    tr = run_brian2(net, Q, t_end=3.0, dt=0.01, target="numpy")
    assert tr.v.shape == (301, 2, D) and tr.h.shape == (301, 2, N) and tr.E.shape == (301, 2)
    ref = _reference(net, Q, tr.t)
    np.testing.assert_allclose(tr.t, ref.t)
    err = _err(tr, ref)
    assert err < 1e-4, f"{case}: max state error {err:.3g} vs solve_ivp"
    # the trajectory moves by far more than the error
    assert np.abs(tr.v[-1] - tr.v[0]).max() > 100 * err
    # recorded energy falls at every step (to 1e-12 relative) and the analytic dE/dt is <= 0
    dE = np.diff(tr.E, axis=0)
    assert np.all(dE <= 1e-12 * np.abs(tr.E[1:])), f"{case}: largest increase {dE.max():.3g}"
    assert np.all(tr.dEdt <= 1e-12 * np.abs(tr.E))
    assert np.abs(tr.E - ref.E).max() < 1e-4 * max(1.0, np.abs(ref.E).max())


def test_trajectory_records_backend_scheme_and_dt():
    net, Q = _net("dot-softmax")
    tr = run_brian2(net, Q[0], t_end=0.5, dt=0.05, target="numpy", record_every=2)
    assert tr.backend == "brian2/numpy" and tr.method == "leapfrog/exact"
    assert tr.params["dt"] == 0.05 and tr.params["scheme"] == "leapfrog"
    assert tr.params["target"] == "numpy" and tr.params["time_unit"] == "ms"
    np.testing.assert_allclose(tr.t, [0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    assert tr.v.shape == (6, 1, D)
    # the softmax shift is beta max h at the start, recorded per query
    assert len(tr.params["softmax_shift"]) == 1


def test_batch_equals_one_query_at_a_time():
    net, Q = _net("sqeuclid-softmax")
    both = run_brian2(net, Q, t_end=1.0, dt=0.02, target="numpy")
    for b in range(2):
        one = run_brian2(net, Q[b], t_end=1.0, dt=0.02, target="numpy")
        np.testing.assert_allclose(both.v[:, b], one.v[:, 0], rtol=0, atol=1e-13)
        np.testing.assert_allclose(both.h[:, b], one.h[:, 0], rtol=0, atol=1e-12)


def test_fixed_point_equals_scipy_fixed_point():
    net, Q = _net("dot-softmax")
    # a fixed point of the leapfrog step is exactly a zero of the right-hand side (h = S(g),
    # v = sum f dS/dg + I), so the two agree far below the discretisation error of the path
    tr = run_brian2(net, Q, t_end=60.0, dt=0.05, target="numpy", record_every=100,
                    fixed_point_tol=1e-11)
    ref = integrate(net, Q, 100.0, rtol=1e-11, atol=1e-13, fixed_point_tol=1e-11)
    assert tr.converged.all() and ref.converged.all()
    assert np.abs(tr.v_final - ref.v_final).max() < 1e-9
    assert np.abs(tr.h_final - ref.h_final).max() < 1e-9
    # it is a retrieval: the fixed point is closest to the memory each query was made from
    assert np.all(np.argmax(tr.v_final @ net.M.T, axis=1) == [0, 1])


def test_leapfrog_is_second_order_default_scheduling_first_order():
    net, Q = _net("dot-softmax")
    t_end, ratios = 2.0, {}
    for scheme in ("leapfrog", "default"):
        errs = []
        for dt in (0.04, 0.02):
            tr = run_brian2(net, Q, t_end=t_end, dt=dt, target="numpy", scheme=scheme,
                            record_every=int(round(0.2 / dt)))
            errs.append(_err(tr, _reference(net, Q, tr.t)))
        ratios[scheme] = errs[0] / errs[1]
    assert 3.5 < ratios["leapfrog"] < 4.5, ratios
    assert 1.7 < ratios["default"] < 2.3, ratios


def test_clamped_input_matches_solve_ivp():
    net, Q = _net("dot-softmax")
    tr = run_brian2(net, Q, t_end=2.0, dt=0.01, target="numpy", input_mode="clamped")
    np.testing.assert_allclose(tr.I, Q)
    ref = _reference(net, Q, tr.t, input_mode="clamped")
    assert _err(tr, ref) < 1e-4


@pytest.mark.parametrize("similarity, L_v, L_h, words", [
    ("cosine", quadratic(), log_sum_exp(1.0), ["cosine", "|g|"]),
    ("euclidean", quadratic(), log_sum_exp(1.0), ["euclidean", "0/0 at a memory"]),
    ("manhattan", quadratic(), log_sum_exp(1.0), ["manhattan", "discontinuous"]),
    ("dot", spherical(), log_sum_exp(1.0), ["L_v = spherical", "|v|"]),
    ("dot", quadratic(), elementwise(lambda x: x ** 2 / 2, lambda x: x, lambda x: np.ones_like(x)),
     ["L_h = elementwise", "Python callable"]),
])
def test_unsupported_networks_are_refused_with_the_reason(similarity, L_v, L_h, words):
    M, Q = _patterns()
    net = Network(M, similarity, L_v=L_v, L_h=L_h)
    with pytest.raises(Brian2UnsupportedError) as err:
        check_supported(net)
    for w in words:
        assert w in str(err.value)
    with pytest.raises(Brian2UnsupportedError):
        run_brian2(net, Q, t_end=0.1, dt=0.01, target="numpy")


def test_softmax_shift_overflow_is_reported():
    # queries at 0 give h(0) = 0 so the shift is c = 0; h then climbs to |M_mu|^2 = 32 and
    # beta h = 3200 would overflow exp without a larger shift
    rng = np.random.default_rng(1)
    M = rng.choice([-1.0, 1.0], size=(N, D))
    net = Network(M, "dot", L_h=log_sum_exp(100.0), tau_v=1.0, tau_h=0.1)
    q = 0.01 * M[0]
    with pytest.raises(FloatingPointError, match="softmax shift"):
        with np.errstate(over="ignore", invalid="ignore"):
            run_brian2(net, q, t_end=2.0, dt=0.01, target="numpy")


def test_bad_arguments():
    net, Q = _net("dot-softmax")
    with pytest.raises(ValueError, match="whole number of steps"):
        run_brian2(net, Q, t_end=1.005, dt=0.01, target="numpy")
    with pytest.raises(ValueError, match="record_every"):
        run_brian2(net, Q, t_end=1.0, dt=0.01, target="numpy", record_every=3)
    with pytest.raises(ValueError, match="target"):
        run_brian2(net, Q, t_end=1.0, dt=0.01, target="cuda")
    with pytest.raises(ValueError, match="scheme"):
        to_brian2(net, Q, 0.01, scheme="rk4")


def test_cython_target_matches_numpy_target():
    """Compiles the model with Cython (cold cache: about a minute on two shared cores)."""
    pytest.importorskip("Cython")
    net, Q = _net("sqeuclid-softmax")
    cy = run_brian2(net, Q, t_end=1.0, dt=0.01, target="cython")
    npy = run_brian2(net, Q, t_end=1.0, dt=0.01, target="numpy")
    assert cy.backend == "brian2/cython"
    assert _err(cy, npy) < 1e-12
    assert _err(cy, _reference(net, Q, cy.t)) < 1e-4


def test_cpp_standalone_matches_numpy_and_restores_the_runtime_device():
    from brian2 import get_device
    from brian2.devices.device import RuntimeDevice

    net, Q = _net("dot-softmax")
    sa = run_brian2(net, Q, t_end=1.0, dt=0.01, target="cpp_standalone")
    assert sa.backend == "brian2/cpp_standalone" and 0 < sa.params["loop_s"] < sa.params["run_s"]
    assert isinstance(get_device(), RuntimeDevice)
    npy = run_brian2(net, Q, t_end=1.0, dt=0.01, target="numpy")
    assert _err(sa, npy) < 1e-12
