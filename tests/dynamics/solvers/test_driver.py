"""The shared driver (uhn.dynamics.solvers.driver): its contract with a method, and its helpers."""
import inspect

import numpy as np
import pytest

from uhn.dynamics import lagrangians as L
from uhn.dynamics.integrate import METHODS, integrate
from uhn.dynamics.network import Network
from uhn.dynamics.solvers import driver
from uhn.dynamics.solvers.driver import Method, Samples, Settings, check_times, kept_indices


def test_kept_indices():
    assert kept_indices(10, 1).tolist() == list(range(10))
    assert kept_indices(10, 3).tolist() == [0, 3, 6, 9]
    assert kept_indices(11, 3).tolist() == [0, 3, 6, 9, 10]
    assert kept_indices(11, None).tolist() == [0, 10]
    assert kept_indices(1, None).tolist() == [0] and kept_indices(1, 4).tolist() == [0]


def test_sample_times_must_strictly_increase():
    """A repeated sample time is refused like a decreasing one, naming the first pair."""
    with pytest.raises(ValueError, match=r"strictly increasing, got t_eval\[1\] = 1 >= t_eval\[2\] = 1"):
        check_times([0.0, 1.0, 1.0, 2.0], 5.0)
    np.testing.assert_array_equal(check_times([0.0, 1.0, 2.0], 5.0), [0.0, 1.0, 2.0])


def test_settings_defaults_are_integrates():
    """The driver's defaults (used by integrate_reduced's **options) are integrate's, one by one."""
    sig = inspect.signature(integrate).parameters
    for name, value in vars(Settings()).items():
        assert sig[name].default is value or sig[name].default == value, name
    assert set(sig) - set(vars(Settings())) == {"net", "Q", "t_end", "method"}


def _euler(p):
    """A toy method: explicit Euler on the batch, exactly at the sample times (10 substeps each)."""
    Y, t, out = np.array(p.Y0, dtype=float), 0.0, [np.array(p.Y0, dtype=float)]
    for t_next in p.t_eval[1:]:
        dt = (t_next - t) / 10
        for _ in range(10):
            Y = Y + dt * p.net.velocity(Y, p.current, p.adiabatic)
        t = t_next
        out.append(Y.copy())
    Ys = np.stack(out)
    D = p.net.D
    return Samples(t=p.t_eval, v=Ys[:, :, :D], h=None if p.adiabatic else Ys[:, :, D:],
                   stopped=np.zeros(len(Y), bool), info={"nfev": 10 * (len(p.t_eval) - 1)},
                   backend="toy")


@pytest.mark.parametrize("adiabatic", [False, True])
def test_a_new_method_is_one_solve_and_one_row(monkeypatch, adiabatic):
    """A solve that only steps gets the rest from the driver: argument checks, the samples in the
    states' dtype, E and dE/dt at them (the Network's, sample by sample), the verdict, the message
    and the params of every method."""
    monkeypatch.setitem(METHODS, "euler", Method(_euler))
    net = Network(np.eye(3, dtype=np.float32), "dot", L_h=L.log_sum_exp(2.0), tau_h=0.5)
    Q = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1]], dtype=np.float32)
    tr = integrate(net, Q, 2.0, method="euler", n_samples=5, adiabatic=adiabatic)
    assert (tr.method, tr.backend, tr.message) == ("euler", "toy", "0 of 2 queries reached a fixed point")
    assert tr.v.dtype == np.float32 and tr.v.shape == (5, 2, 3) and tr.h.shape == (5, 2, 3)
    np.testing.assert_array_equal(tr.t, np.linspace(0, 2, 5))
    for k in range(5):
        if adiabatic:
            np.testing.assert_allclose(tr.E[k], net.energy_adiabatic(tr.v[k]), rtol=1e-12)
        else:
            np.testing.assert_allclose(tr.E[k], net.energy(tr.v[k], tr.h[k]), rtol=1e-12)
    p = tr.params
    assert (p["nfev"], p["keep"], p["blas_threads"], p["rtol"]) == (40, "all", 1, 1e-4)  # float32 rtol
    assert not tr.converged.any()
    with pytest.raises(ValueError, match="t_end must be a positive finite time"):
        integrate(net, Q, 0.0, method="euler")
    stop = integrate(net, Q, 2.0, method="euler", n_samples=5, stop_at_fixed_point=False)
    assert stop.message == "reached t_end"


def test_one_floating_point_error_and_one_stall_message(monkeypatch):
    """Whatever a method raises as FloatingPointError comes out as the one text naming the network;
    Problem.on_stall builds the one stall message, naming the query when there is one."""
    def overflow(p):
        raise FloatingPointError("overflow encountered in exp")

    def stall(p):
        raise p.on_stall(3, 1.25, "too many steps")

    monkeypatch.setitem(METHODS, "overflow", Method(overflow))
    monkeypatch.setitem(METHODS, "stall", Method(stall))
    net = Network(np.eye(3))
    with pytest.raises(FloatingPointError, match=r"integration of Network\(N=3, D=3.*hit a floating-point "
                                                 r"error \(overflow encountered in exp\); the state left"):
        integrate(net, np.ones(3), 1.0, method="overflow")
    with pytest.raises(RuntimeError, match=r"integration stopped at t=1.25 of 1.0: query 3: too many "
                                           r"steps; the system is stiff or non-smooth \(dot"):
        integrate(net, np.ones(3), 1.0, method="stall")


def test_a_method_check_refuses_before_any_work(monkeypatch):
    """Method.check runs after the common checks and before the solve."""
    calls = []

    def check(net, settings):
        calls.append(settings.keep)
        raise ValueError("not for this network")

    monkeypatch.setitem(METHODS, "picky", Method(lambda p: calls.append("solved"), check=check))
    with pytest.raises(ValueError, match="not for this network"):
        integrate(Network(np.eye(3)), np.ones(3), 1.0, method="picky", keep=2)
    assert calls == [2]
    with pytest.raises(ValueError, match="tolerances must be finite"):
        integrate(Network(np.eye(3)), np.ones(3), 1.0, method="picky", rtol=np.nan)
    assert calls == [2]


def test_input_current_rules():
    """The queries when clamped, net.I otherwise (zeros of the asked dtype without one), an explicit
    current checked for shape and finiteness and refused together with clamping."""
    net = Network(np.eye(3))
    v0 = np.array([[1.0, 2.0, 3.0]])
    np.testing.assert_array_equal(driver.input_current(net, v0, "clamped"), v0)
    zero = driver.input_current(net, v0.astype(np.float32), "initial", dtype=np.float32)
    assert zero.dtype == np.float32 and not zero.any()
    I = driver.input_current(net, v0, "initial", [0.5, 0.0, 1.0])
    assert I.dtype == np.float64 and I.tolist() == [[0.5, 0.0, 1.0]]
    with pytest.raises(ValueError, match="not both"):
        driver.input_current(net, v0, "clamped", [0.5, 0.0, 1.0])
    with pytest.raises(ValueError, match=r"shape \(3,\) or \(1, 3\), got \(2,\)"):
        driver.input_current(net, v0, "initial", [0.5, 0.0])
    with pytest.raises(ValueError, match="must be finite"):
        driver.input_current(net, v0, "initial", [np.inf, 0.0, 0.0])
