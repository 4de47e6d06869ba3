"""Checks of dynamics/integrate.py values that a full mutation run (tools/mutate.py, docs/testing.md
"The third full runs") left unchecked: integrate's documented defaults, the Radau / BDF Jacobian
limit at its boundary, the convergence verdict (read at the last sample, on both sides of its
threshold, numpy and array paths), the array path's clamped current and keep=k, solve_ivp's exact
evaluation budget, keep=k and an event before the first sample time, and the time bar's
bookkeeping. Inputs are dyadic where the values are asserted exactly."""
import inspect

import numpy as np
import pytest

from uhn.dynamics import integrate as integ
from uhn.dynamics import lagrangians as L
from uhn.dynamics.integrate import JAC_NNZ_LIMIT, check_jacobian_size, integrate
from uhn.dynamics.network import Network


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
    assert integ.NOISE_FACTOR == 30.0
    full = integrate(net, np.array([1.0]), 1.0, stop_at_fixed_point=False)
    np.testing.assert_array_equal(full.t, np.linspace(0.0, 1.0, 101))
    np.testing.assert_array_equal(integ.sample_times(2.0), np.linspace(0.0, 2.0, 101))
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
    with integ._time_bar(True, 5.0, 4) as report:
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
    with integ._time_bar(False, 5.0, 4) as report:
        assert report is None
    fn = lambda t, n: None
    with integ._time_bar(fn, 5.0, 4) as report:
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
