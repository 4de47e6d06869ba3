"""The hierarchical network as a brian2 rate model (uhn.dynamics.backends.brian2_layers) against
uhn.integrate on the same HierarchicalNetwork: a three-layer chain pixels - linear - latent - dot
similarity - memories (log_sum_exp) within the staggered leapfrog's second-order error estimate
(err(dt) from a run at 2 dt), its energy certified by verify_energy; the two-layer special case
equal to run_brian2's rate model; a clamped layer held; the refusals by name. numpy target only
(cython and cpp_standalone compile slowly here; brian2_target is tested in test_brian2_target)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("brian2")

from uhn.dynamics import lagrangians as lg
from uhn.dynamics.analysis.energy import verify_energy
from uhn.dynamics.backends.brian2_layers import check_supported, run_brian2_layers
from uhn.dynamics.backends.brian2_rate import Brian2UnsupportedError, run_brian2
from uhn.dynamics.hierarchical.layers import Layer
from uhn.dynamics.hierarchical.network import HierarchicalNetwork
from uhn.dynamics.hierarchical.synapses import Custom, Linear, Similarity
from uhn.dynamics.integrate import integrate
from uhn.dynamics.network import Network

EPS = np.finfo(np.float64).eps
#: a second-order scheme's error falls by 4 per halving of dt up to its O(dt^3) term: err(dt) <=
#: SAFETY C dt^2 with C = err(2 dt) / (2 dt)^2 from a run at twice the step (as test_brian2_rate)
SECOND_ORDER_SAFETY = 1.25


def _chain(clamp_query=False):
    """pixels (12) <-> latent (4, linear synapse alpha V_k) <-> memories (5, dot similarity on the
    latent codes, log_sum_exp(3)): the demo's network in small (uhn.dynamics.hierarchical.demo)."""
    rng = np.random.default_rng(0)
    D, k, N = 12, 4, 5
    X = rng.random((N, D))
    V = np.linalg.svd(X, full_matrices=False)[2][:k].T
    a = 0.7
    net = HierarchicalNetwork(
        [Layer("pixels", D, clamped=clamp_query), Layer("latent", k, tau=0.2, bias=0.05 * np.ones(k)),
         Layer("memories", N, lg.log_sum_exp(3.0), tau=0.1)],
        [Linear("pixels", "latent", a * V), Similarity("latent", "memories", (1 - a * a) / a * X @ V, "dot")])
    return net, X[:2] + 0.2 * rng.standard_normal((2, D))


def _error(tr, net, Q):
    ref = integrate(net, Q, tr.t[-1], method="RK45", rtol=1e-11, atol=1e-13, t_eval=tr.t)
    return max(np.abs(tr.v - ref.v).max(), np.abs(tr.h - ref.h).max())


def test_three_layer_chain_matches_integrate_to_second_order_and_its_energy_is_certified():
    net, Q = _chain()
    tr = run_brian2_layers(net, Q, 2.0, 0.01)
    assert tr.v.shape == (201, 2, 12) and tr.h.shape == (201, 2, 9) and tr.backend == "brian2/numpy"
    err = _error(tr, net, Q)
    err_2dt = _error(run_brian2_layers(net, Q, 2.0, 0.02, record_every=5), net, Q)
    assert err <= SECOND_ORDER_SAFETY * err_2dt / 4, f"err(dt) {err:.3g}, err(2 dt) {err_2dt:.3g}"
    assert err_2dt / err > 3.2                                   # second order, not first
    assert np.abs(tr.v[-1] - tr.v[0]).max() > 100 * err          # it moved far more than it erred
    rep = verify_energy(net, tr)
    assert rep.passed, rep.summary()
    assert np.all(np.diff(tr.E, axis=0) < 0)                     # E falls at every step here
    assert tr.params["half_step_layers"] == ["latent"] and tr.params["order"] == 2


def test_a_clamped_query_layer_is_held_and_the_rest_follows_integrate():
    net, Q = _chain(clamp_query=True)
    tr = run_brian2_layers(net, Q, 1.0, 0.01)
    np.testing.assert_array_equal(tr.v, np.broadcast_to(Q, tr.v.shape))
    err = _error(tr, net, Q)
    err_2dt = _error(run_brian2_layers(net, Q, 1.0, 0.02, record_every=5), net, Q)
    assert err <= SECOND_ORDER_SAFETY * err_2dt / 4
    assert np.abs(tr.h[-1] - tr.h[0]).max() > 100 * err


def test_clamped_input_follows_integrate_with_clamped_input():
    """input_mode="clamped": the query is the query layer's input current I = q throughout."""
    net, Q = _chain()

    def error(tr):
        ref = integrate(net, Q, tr.t[-1], method="RK45", rtol=1e-11, atol=1e-13, t_eval=tr.t,
                        input_mode="clamped")
        return max(np.abs(tr.v - ref.v).max(), np.abs(tr.h - ref.h).max())

    tr = run_brian2_layers(net, Q, 1.0, 0.01, input_mode="clamped")
    np.testing.assert_array_equal(tr.I, Q)
    err, err_2dt = error(tr), error(run_brian2_layers(net, Q, 1.0, 0.02, input_mode="clamped"))
    assert err <= SECOND_ORDER_SAFETY * err_2dt / 4
    unclamped = run_brian2_layers(net, Q, 1.0, 0.01)
    assert np.abs(tr.v[-1] - unclamped.v[-1]).max() > 100 * err     # the input matters


def test_the_two_layer_network_runs_as_run_brian2_does():
    """HierarchicalNetwork.two_layer in this backend is run_brian2's leapfrog on the Network: the
    same scheme, the same states up to the round-off of sums taken in another order."""
    rng = np.random.default_rng(1)
    M, Q = rng.standard_normal((5, 6)), rng.standard_normal((2, 6))
    kw = dict(memories=M, similarity="dot", L_h=lg.log_sum_exp(2.0), tau_v=1.0, tau_h=0.2,
              I=0.1 * rng.standard_normal(6))
    a = run_brian2(Network(**kw), Q, 1.0, 0.01, target="numpy")
    b = run_brian2_layers(HierarchicalNetwork.two_layer(**kw), Q, 1.0, 0.01)
    scale = 1 + np.abs(a.v).max() + np.abs(a.h).max()
    for x, y in ((a.v, b.v), (a.h, b.h), (a.E, b.E)):
        np.testing.assert_allclose(y, x, rtol=0, atol=1e3 * EPS * scale)


def _layers(*names_sizes):
    return [Layer(n, s) for n, s in names_sizes]


def test_what_brian2_cannot_run_is_refused_by_name():
    rng = np.random.default_rng(2)
    M = rng.standard_normal((3, 4))
    chain = "brian2 runs chains of Linear and dot Similarity synapses"
    pytest.importorskip("jax")
    import jax.numpy as jnp

    def bilinear(ga, gb):
        return -jnp.dot(ga, gb)

    custom = HierarchicalNetwork(_layers(("a", 3), ("b", 3)), [Custom("a", "b", bilinear)])
    with pytest.raises(Brian2UnsupportedError, match=f"{chain}; this network has a Custom synapse"):
        run_brian2_layers(custom, np.ones(3), 1.0, 0.1)
    cos = HierarchicalNetwork(_layers(("a", 4), ("m", 3)), [Similarity("a", "m", M, "cosine")])
    with pytest.raises(Brian2UnsupportedError, match="a Similarity synapse with cosine similarity"):
        check_supported(cos)
    W = np.ones((2, 2))
    star = HierarchicalNetwork(_layers(("a", 2), ("b", 2), ("c", 2), ("d", 2)),
                               [Linear("a", "b", W), Linear("a", "c", W), Linear("a", "d", W)])
    with pytest.raises(Brian2UnsupportedError, match="layer 'a' of this network joins 3 synapses"):
        check_supported(star)
    cycle = HierarchicalNetwork(_layers(("a", 2), ("b", 2), ("c", 2)),
                                [Linear("a", "b", W), Linear("b", "c", W), Linear("c", "a", W)])
    with pytest.raises(Brian2UnsupportedError, match="close a cycle"):
        check_supported(cycle)
    apart = HierarchicalNetwork(_layers(("a", 2), ("b", 2), ("c", 2)), [Linear("a", "b", W)])
    with pytest.raises(Brian2UnsupportedError, match=r"layers \['c'\] .* not connected"):
        check_supported(apart)
    poly = HierarchicalNetwork([Layer("a", 2), Layer("b", 2, lg.rectified_polynomial(3))], [Linear("a", "b", W)])
    with pytest.raises(Brian2UnsupportedError, match="layer 'b' has Lagrangian rectified_polynomial"):
        check_supported(poly)
    with pytest.raises(TypeError, match=r"Network runs in uhn.dynamics.backends.brian2_rate.run_brian2\)"):
        check_supported(Network(M))


@pytest.mark.parametrize("kw, match", [(dict(t_end=1.0, dt=0.3), "whole number of steps"),
                                       (dict(t_end=1.0, dt=0.1, record_every=3), "multiple of record_every"),
                                       (dict(t_end=1.0, dt=0.1, input_mode="held"), "input_mode"),
                                       (dict(t_end=1.0, dt=-0.1), "dt")])
def test_bad_arguments(kw, match):
    net, Q = _chain()
    with pytest.raises(ValueError, match=match):
        run_brian2_layers(net, Q, **kw)
