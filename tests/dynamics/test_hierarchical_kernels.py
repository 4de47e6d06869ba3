"""The fused passes of the hierarchical right-hand side (uhn.dynamics.hierarchical.kernels): the
compiled kernels against the numpy sequence they replace, bit for bit (the same IEEE operations in
the same order, no fastmath), on blocks of a packed state; the velocity against its definition
written out with numpy; a softmax layer's rates against LogSumExp.grad; the refusals."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from uhn.dynamics import lagrangians as lg
from uhn.dynamics.hierarchical import kernels as K
from uhn.dynamics.hierarchical.layers import Layer
from uhn.dynamics.hierarchical.network import HierarchicalNetwork
from uhn.dynamics.hierarchical.synapses import Linear, Similarity

pytestmark = pytest.mark.skipif(not K.HAVE_NUMBA, reason="compares the numba kernels with numpy")


def _numpy_finish(o, x, b, tau, touched):
    """The numpy sequence the kernel replaces (network.py before the kernel)."""
    if touched:
        o -= x
    else:
        np.multiply(x, -1.0, out=o)     # = -x exactly (np.negative misreads (B, 1) strided views)
    if b is not None:
        o += b
    if tau != 1.0:
        o /= tau


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), rows=st.integers(1, 7), c0=st.integers(0, 5),
       n=st.integers(1, 9), tau=st.sampled_from([1.0, 0.1, 0.3, 7.0]), touched=st.booleans(),
       bias=st.sampled_from(["none", "vector", "rows"]))
def test_finish_layer_is_the_numpy_sequence_bit_for_bit(seed, rows, c0, n, tau, touched, bias):
    rng = np.random.default_rng(seed)
    width = c0 + n + 3
    X, O = rng.standard_normal((rows, width)), rng.standard_normal((rows, width))
    b = {"none": None, "vector": rng.standard_normal(n), "rows": rng.standard_normal((rows, n))}[bias]
    sl = slice(c0, c0 + n)
    want = O.copy()
    _numpy_finish(want[:, sl], X[:, sl], b, tau, touched)
    got = O.copy()
    K.finish_layer(got, X, sl, b, tau, touched)
    np.testing.assert_array_equal(got, want)        # other columns untouched, the block exact


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), rows=st.integers(1, 6), n=st.integers(1, 12),
       beta=st.floats(0.01, 50.0), scale=st.floats(0.01, 30.0))
def test_softmax_layer_rates_equal_log_sum_exp_grad_bit_for_bit(seed, rows, n, beta, scale):
    rng = np.random.default_rng(seed)
    Y = scale * rng.standard_normal((rows, 3 + n))
    layer = Layer("m", n, lg.log_sum_exp(beta))
    sl = slice(3, 3 + n)
    np.testing.assert_array_equal(layer.rates_of(Y, sl), layer.lagrangian.grad(Y[:, sl]))


def test_shifted_scores_flags_what_the_softmax_refuses():
    """+inf or NaN in a row, a row of -inf, or beta x overflowing: False, and the layer then raises
    LogSumExp.grad's OverflowError (naming beta), never a NaN rate."""
    out = np.empty((2, 3))
    for bad in (np.inf, np.nan, 1e308):
        Y = np.zeros((2, 4))
        Y[1, 2] = bad
        assert not K.shifted_scores(Y, slice(1, 4), 10.0, out)
        with pytest.raises(OverflowError, match="beta"):
            Layer("m", 3, lg.log_sum_exp(10.0)).rates_of(Y, slice(1, 4))
    Y = np.full((1, 3), -np.inf)
    assert not K.shifted_scores(Y, slice(0, 3), 1.0, np.empty((1, 3)))
    Y = np.array([[-np.inf, 0.0, 1.0]])     # a lone -inf beside a finite maximum: weight exactly 0
    assert K.shifted_scores(Y, slice(0, 3), 1.0, out[:1])
    assert Layer("m", 3, lg.log_sum_exp(1.0)).rates_of(Y, slice(0, 3))[0, 0] == 0.0


def test_kernel_refusals():
    O, X = np.zeros((2, 5)), np.zeros((2, 5))
    with pytest.raises(ValueError, match="C-contiguous"):
        K.finish_layer(O[:, :4], X[:, :4], slice(0, 2))
    with pytest.raises(ValueError, match="shape mismatch"):
        K.finish_layer(O, np.zeros((3, 5)), slice(0, 2))
    with pytest.raises(ValueError, match="input of 3 rows for 2 states"):
        K.finish_layer(O, X, slice(0, 2), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="shape mismatch"):
        K.shifted_scores(X, slice(0, 2), 1.0, np.empty((2, 3)))


def test_velocity_is_its_definition_written_with_numpy():
    """A three-layer chain with biases and an input current: the velocity (any output layout)
    equals -(x - b) + drives, / tau, computed here product by product, bit for bit."""
    rng = np.random.default_rng(0)
    W, M = rng.standard_normal((6, 4)), rng.standard_normal((5, 4))
    b1 = rng.standard_normal(4)
    net = HierarchicalNetwork([Layer("p", 6), Layer("l", 4, tau=0.3, bias=b1),
                               Layer("m", 5, lg.log_sum_exp(3.0), tau=0.1)],
                              [Linear("p", "l", W), Similarity("l", "m", M)])
    Y = rng.standard_normal((3, 15))
    I = rng.standard_normal((3, 6))
    p, l, m = Y[:, :6].copy(), Y[:, 6:10].copy(), Y[:, 10:].copy()
    f = lg.log_sum_exp(3.0).grad(m)
    vp = l @ net.synapses[0].WT
    vp -= p
    vp += I
    vl = p @ W
    vl += f @ M
    vl -= l
    vl += b1
    vl /= 0.3
    vm = l @ M.T
    vm -= m
    vm /= 0.1
    want = np.concatenate([vp, vl, vm], axis=1)
    np.testing.assert_array_equal(net.velocity(Y, I), want)
    out = np.empty((15, 3)).T                   # a non-contiguous output: filled all the same
    net.velocity(np.asfortranarray(Y), I, out=out)
    np.testing.assert_array_equal(out, want)
    # one state (1-D): BLAS's matrix-vector path, the same sums in another order (a few ulps)
    eps = np.finfo(np.float64).eps
    np.testing.assert_allclose(net.velocity(Y[0], I[0]), want[0], rtol=0,
                               atol=16 * eps * (np.abs(Y).sum() + np.abs(W).sum() + np.abs(M).sum()))


def test_a_size_one_layer_no_synapse_touches_moves_by_its_own_state():
    """tau dx/dt = -(x - b) for a layer of size 1 with no synapse: its (B, 1) block of the packed
    state is a strided view, on which numpy 2.3's np.negative(x, out=o) reads the wrong entries
    (the sequence this kernel replaced); the kernel reads each row's own."""
    net = HierarchicalNetwork([Layer("a", 3), Layer("b", 2), Layer("c", 1, tau=0.5, bias=[0.25])],
                              [Linear("a", "b", np.ones((3, 2)))])
    Y = np.arange(12.0).reshape(2, 6)
    np.testing.assert_array_equal(net.velocity(Y)[:, 5], (0.25 - Y[:, 5]) / 0.5)



def test_the_numpy_fallback_computes_the_same_velocity(monkeypatch):
    """Without numba the numpy sequences run (kernels._finish_numpy, _shifted_numpy): the same
    velocity, bit for bit, including the softmax layer and the untouched layer."""
    rng = np.random.default_rng(2)
    net = HierarchicalNetwork([Layer("p", 5), Layer("m", 4, lg.log_sum_exp(2.0), tau=0.2),
                               Layer("c", 1, tau=0.5, bias=[0.1])],
                              [Similarity("p", "m", rng.standard_normal((4, 5)))])
    Y, I = rng.standard_normal((3, 10)), rng.standard_normal(5)
    want = net.velocity(Y, I)
    monkeypatch.setattr(K, "_finish", K._finish_numpy)
    monkeypatch.setattr(K, "_shifted", K._shifted_numpy)
    np.testing.assert_array_equal(net.velocity(Y, I), want)
