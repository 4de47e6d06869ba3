"""The hierarchical network (uhn.dynamics.hierarchical; docs/theory.md §11) against the equations.

E and dE/dt are checked against an independent formula written here from closed forms of the
Lagrangians (value, gradient, dense Hessian) and of the synapses (dense W, M g, -|m - g|^2), on
random layer graphs (hypothesis over the number of layers, sizes, convex Lagrangians and topology:
chain, star, cycle); the analytic dE/dt against a Richardson-checked finite difference of E along
the flow; the two-layer Network as the special case; clamped layers; refusals.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

from uhn.dynamics import lagrangians as lg
from uhn.dynamics.analysis.energy import verify_energy
from uhn.dynamics.analysis.fixed_points import jacobian, stability
from uhn.dynamics.hierarchical.layers import Layer
from uhn.dynamics.hierarchical.network import HierarchicalNetwork
from uhn.dynamics.hierarchical.synapses import Custom, Linear, Similarity
from uhn.dynamics.integrate import integrate
from uhn.dynamics.lagrangians import NonConvexLagrangianError
from uhn.dynamics.network import Network
from uhn.models.similarity import differentiable_names, get_similarity

EPS = np.finfo(np.float64).eps


# ------------------------------------------------------------------ the independent formula
def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


#: closed forms per row x (n,): (L(x), g(x), Hess L(x)) of each convex built-in used here
CLOSED = {
    "quadratic": (lg.quadratic, lambda x: (0.5 * x @ x, x, np.eye(len(x)))),
    "log_cosh": (lg.log_cosh, lambda x: (np.sum(np.log(np.cosh(x))), np.tanh(x),
                                         np.diag(1 - np.tanh(x) ** 2))),
    "softplus": (lg.softplus, lambda x: (np.sum(np.log1p(np.exp(x))), 1 / (1 + np.exp(-x)),
                                         np.diag(np.exp(-x) / (1 + np.exp(-x)) ** 2))),
    "lse2": (lambda: lg.log_sum_exp(2.0),
             lambda x: (np.log(np.sum(np.exp(2 * x))) / 2, _softmax(2 * x),
                        2 * (np.diag(_softmax(2 * x)) - np.outer(_softmax(2 * x), _softmax(2 * x))))),
}


def _syn_closed(kind, P, ga, gb):
    """(E_s, dE_s/dga, dE_s/dgb) of one row, from the formulas of docs/theory.md §11."""
    if kind == "linear":                      # -ga^T W gb
        return -ga @ P @ gb, -P @ gb, -P.T @ ga
    if kind == "dot":                         # -f . M g
        return -gb @ (P @ ga), -P.T @ gb, -P @ ga
    d = ga[None, :] - P                       # squared_euclidean: S_mu = -|m_mu - g|^2
    S = -np.sum(d ** 2, axis=1)
    return -gb @ S, 2 * (gb[:, None] * d).sum(0), -S


def _reference(spec, y):
    """(E, F, dE/dt) of one packed state y from the closed forms: the independent formula."""
    layers, syns = spec
    off = np.concatenate([[0], np.cumsum([n for _, n, _, _ in layers])])
    X = [y[off[i]:off[i + 1]] for i in range(len(layers))]
    forms = [CLOSED[lag][1](x) for (_, _, lag, _), x in zip(layers, X)]
    E = sum(x @ g - L for x, (L, g, _) in zip(X, forms))
    dEdg = [x.copy() for x in X]
    for a, b, kind, P in syns:
        e, da, db = _syn_closed(kind, P, forms[a][1], forms[b][1])
        E += e
        dEdg[a] = dEdg[a] + da
        dEdg[b] = dEdg[b] + db
    F = np.concatenate([-d / tau for d, (_, _, _, tau) in zip(dEdg, layers)])
    Fs = [F[off[i]:off[i + 1]] for i in range(len(layers))]
    dE = -sum(tau * f @ H @ f for f, (_, _, H), (_, _, _, tau) in zip(Fs, forms, layers))
    return E, F, dE


def _build(spec):
    layers, syns = spec
    L = [Layer(name, n, CLOSED[lag][0](), tau=tau) for name, n, lag, tau in layers]
    names = [name for name, _, _, _ in layers]
    S = []
    for a, b, kind, P in syns:
        if kind == "linear":
            S.append(Linear(names[a], names[b], P))
        else:
            S.append(Similarity(names[a], names[b], P, kind))
    return HierarchicalNetwork(L, S)


@st.composite
def graphs(draw):
    """A random layer graph: 2-4 layers of 1-5 units, convex Lagrangians, a chain, a star (a
    tree) or a cycle, each synapse linear, dot or squared_euclidean with random weights."""
    K = draw(st.integers(2, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    layers = [(f"l{i}", draw(st.integers(1, 5)), draw(st.sampled_from(sorted(CLOSED))),
               draw(st.sampled_from([1.0, 0.5, 0.1]))) for i in range(K)]
    topology = draw(st.sampled_from(["chain", "star", "cycle"] if K >= 3 else ["chain"]))
    edges = {"chain": [(i, i + 1) for i in range(K - 1)],
             "star": [(0, i) for i in range(1, K)],
             "cycle": [(i, (i + 1) % K) for i in range(K)]}[topology]
    syns = []
    for a, b in edges:
        kind = draw(st.sampled_from(["linear", "dot", "squared_euclidean"]))
        na, nb = layers[a][1], layers[b][1]
        P = 0.5 * rng.standard_normal((na, nb) if kind == "linear" else (nb, na))
        syns.append((a, b, kind, P))
    Y = rng.standard_normal((3, sum(n for _, n, _, _ in layers)))
    return (layers, syns), Y


def _size(spec, Y):
    """A bound on the terms E adds (for the round-off tolerance): sum of |x||g| + |L| + synapse
    terms, taken generously as (1 + |y|_1)^3 per row."""
    return (1 + np.abs(Y).sum(1)) ** 3


@given(graphs())
def test_energy_velocity_and_dEdt_equal_the_independent_formula(case):
    spec, Y = case
    net = _build(spec)
    ref = [_reference(spec, y) for y in Y]
    E_ref, F_ref, dE_ref = (np.array([r[k] for r in ref]) for k in range(3))
    v, h = Y[:, :net.D], Y[:, net.D:]
    tol = 64 * EPS * _size(spec, Y)          # two evaluations of sums of these terms, a few ulps each
    np.testing.assert_array_less(np.abs(net.energy(v, h) - E_ref), tol)
    F = np.concatenate(net.rhs(v, h), axis=1)
    np.testing.assert_array_less(np.abs(F - F_ref).max(1), tol * 10)      # / tau >= 0.1
    E2, dE = net.energy_and_dEdt(v, h)
    np.testing.assert_array_equal(E2, net.energy(v, h))
    np.testing.assert_array_less(np.abs(dE - dE_ref), tol * 100 * (1 + np.abs(F_ref).max(1)) ** 2)
    assert np.all(dE <= 64 * EPS * _size(spec, Y) * (1 + np.abs(F).max(1)) ** 2)


@given(graphs())
def test_analytic_dEdt_matches_a_finite_difference_of_E_along_the_flow(case):
    """fd(s) = (E(y + s F) - E(y - s F)) / 2s = dE/dt + E''' s^2 / 6 + ...: allowed error the
    Richardson truncation estimate |fd(s) - fd(2 s)| / 3 plus round-off 8 eps size(E) / s."""
    spec, Y = case
    net = _build(spec)
    F = net.velocity(Y)
    an = net.dEdt(Y[:, :net.D], Y[:, net.D:])
    speed = np.maximum(np.abs(F).max(1), 1e-300)
    s = 1e-4 / speed

    def fd(s):
        P, M = Y + s[:, None] * F, Y - s[:, None] * F
        return (net.energy(P[:, :net.D], P[:, net.D:]) - net.energy(M[:, :net.D], M[:, net.D:])) / (2 * s)

    f1, f2 = fd(s), fd(2 * s)
    allowed = 10 * (np.abs(f1 - f2) / 3 + 8 * EPS * _size(spec, Y) / s)
    np.testing.assert_array_less(np.abs(an - f1), allowed)


# ------------------------------------------------------------------ the two-layer special case
def _two_layer_cases():
    rng = np.random.default_rng(3)
    M = rng.standard_normal((6, 5))
    for name in differentiable_names():
        sim = get_similarity(name, eps=0.05) if name in ("manhattan", "euclidean") else name
        L_v = lg.softplus() if get_similarity(name).nonnegative_only else lg.quadratic()
        Mx = np.abs(M) / np.abs(M).sum(1, keepdims=True) if get_similarity(name).nonnegative_only else M
        yield name, dict(memories=Mx, similarity=sim, L_v=L_v, L_h=lg.log_sum_exp(2.0), tau_v=1.0,
                         tau_h=0.2, I=0.1 * rng.standard_normal(5))


@pytest.mark.parametrize("name,kw", list(_two_layer_cases()), ids=[n for n, _ in _two_layer_cases()])
def test_the_two_layer_network_is_the_special_case(name, kw):
    """Built from the same pieces (a feature layer, a memory layer, one similarity synapse), the
    general network computes the two-layer Network's operations in the same order: RHS, E,
    dE/dt, initial state and trajectories agree to round-off (here, bit for bit)."""
    net = Network(**kw)
    hn = HierarchicalNetwork.two_layer(**kw)
    Q = np.random.default_rng(4).standard_normal((3, 5))
    if get_similarity(name).nonnegative_only:
        Q = np.abs(Q)
    v0, h0 = net.initial_state(Q)
    w0, k0 = hn.initial_state(Q)
    np.testing.assert_array_equal(v0, w0)
    np.testing.assert_allclose(h0, k0, rtol=0, atol=16 * EPS * (1 + np.abs(h0).max()))
    for a, b in zip(net.rhs(v0, h0), hn.rhs(v0, h0)):
        np.testing.assert_allclose(a, b, rtol=0, atol=16 * EPS * (1 + np.abs(a).max()))
    E = net.energy(v0, h0)
    np.testing.assert_allclose(hn.energy(v0, h0), E, rtol=0, atol=16 * EPS * (1 + np.abs(E).max()))
    dE = net.dEdt(v0, h0)
    np.testing.assert_allclose(hn.dEdt(v0, h0), dE, rtol=0, atol=16 * EPS * (1 + np.abs(dE).max()))
    for method in ("RK45", "RK45-batched"):
        t1, t2 = (integrate(n, Q, 1.0, method=method, n_samples=11) for n in (net, hn))
        np.testing.assert_array_equal(t1.t, t2.t)
        scale = 1 + np.abs(t1.v).max() + np.abs(t1.h).max()
        # the same operations: any difference is round-off carried through the steps
        for a, b in ((t1.v, t2.v), (t1.h, t2.h), (t1.E, t2.E), (t1.dEdt, t2.dEdt)):
            np.testing.assert_allclose(b, a, rtol=0, atol=1e3 * EPS * scale)
        np.testing.assert_array_equal(t1.converged, t2.converged)


# ------------------------------------------------------------------ along integrated trajectories
def _cycle_network(clamp_b=False):
    rng = np.random.default_rng(1)
    layers = [Layer("a", 6), Layer("b", 4, lg.log_cosh(), tau=0.5, clamped=clamp_b),
              Layer("c", 5, lg.log_sum_exp(2.0), tau=0.2, bias=0.1 * rng.standard_normal(5))]
    syns = [Linear("a", "b", 0.5 * rng.standard_normal((6, 4))),
            Similarity("b", "c", rng.standard_normal((5, 4)), "squared_euclidean"),
            Linear("c", "a", 0.3 * rng.standard_normal((5, 6)))]
    return HierarchicalNetwork(layers, syns), rng.standard_normal((4, 6))


@pytest.mark.parametrize("method", ["RK45", "RK45-batched", "Radau"])
def test_energy_decreases_along_integrated_trajectories_of_a_cycle(method):
    net, Q = _cycle_network()
    traj = integrate(net, Q, 30.0, method=method)
    assert traj.converged.all()
    rep = verify_energy(net, traj)
    assert rep.passed, rep.summary()
    assert np.all(np.diff(traj.E, axis=0) <= 10 * 1e-8 * np.maximum(np.abs(traj.E[:-1]), 1))
    assert np.all(net.residual(traj.v[-1], traj.h[-1]) < 1e-5)


def test_clamped_layer_is_held_and_the_energy_still_decreases():
    net, Q = _cycle_network(clamp_b=True)
    traj = integrate(net, Q, 30.0, method="RK45-batched")
    b = net.layer_states(traj.v, traj.h)["b"]
    np.testing.assert_array_equal(b, np.broadcast_to(b[0], b.shape))
    assert np.abs(net.layer_states(traj.v, traj.h)["a"][-1] - Q).max() > 1e-3   # the free ones moved
    rep = verify_energy(net, traj)
    assert rep.passed, rep.summary()


def test_a_wrong_trajectory_fails_the_energy_check():
    """verify_energy on the hierarchical network can fail: a trajectory of another network."""
    net, Q = _cycle_network()
    traj = integrate(net, Q, 10.0, method="RK45")
    other, _ = _cycle_network(clamp_b=True)
    rep = verify_energy(other, traj)
    assert not rep.passed and any("do not solve" in v for v in rep.violations)


def test_jacobian_of_a_linear_chain_is_the_coupling_matrix():
    """Quadratic layers and linear synapses: tau dx/dt = -x + W y, so J = [[-I, W], [W^T, -I]] / tau."""
    rng = np.random.default_rng(5)
    W = 0.4 * rng.standard_normal((3, 2))
    net = HierarchicalNetwork([Layer("x", 3), Layer("y", 2, tau=0.5)], [Linear("x", "y", W)])
    J = np.block([[-np.eye(3), W], [W.T / 0.5, -np.eye(2) / 0.5]])
    v, h = rng.standard_normal(3), rng.standard_normal(2)
    np.testing.assert_allclose(jacobian(net, v, h), J, atol=1e-8)
    st_ = stability(net, v, h)
    assert st_.stable == (np.linalg.svd(W, compute_uv=False).max() < 1)


def test_custom_synapse_equals_the_linear_one():
    jnp = pytest.importorskip("jax.numpy")
    rng = np.random.default_rng(6)
    W = rng.standard_normal((3, 4))
    lin = Linear("a", "b", W)
    cus = Custom("a", "b", lambda ga, gb, s: -s * ga @ jnp.asarray(W) @ gb, name="bilinear", s=1.0)
    ga, gb = rng.standard_normal((5, 3)), rng.standard_normal((5, 4))
    np.testing.assert_allclose(cus.energy(ga, gb), lin.energy(ga, gb), rtol=1e-13, atol=1e-13)
    for a, b in zip(cus.drives(ga, gb), lin.drives(ga, gb)):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)


def test_initial_state_feeds_forward_and_layer_states_split_it():
    net, Q = _cycle_network()
    v0, h0 = net.initial_state(Q)
    parts = net.layer_states(v0, h0)
    syn_ab, syn_bc, syn_ca = net.synapses
    np.testing.assert_array_equal(parts["a"], Q)
    np.testing.assert_allclose(parts["b"], Q @ syn_ab.W, rtol=0, atol=64 * EPS * (1 + np.abs(Q).sum()))
    g_b = lg.log_cosh().grad(parts["b"])
    expected_c = net.layers[2].bias + syn_bc.scores(g_b) + Q @ syn_ca.W.T    # both set neighbours
    np.testing.assert_allclose(parts["c"], expected_c, rtol=0, atol=64 * EPS * (1 + np.abs(expected_c).max()))
    np.testing.assert_array_equal(net.pack_layers(parts), np.concatenate([v0, h0], axis=1))


# ------------------------------------------------------------------ refusals
class _Concave(lg.Lagrangian):
    kind = "concave"

    def value(self, x):
        return -0.5 * np.einsum("bk,bk->b", x, x)

    def grad(self, x):
        return -x

    def hvp(self, x, u):
        return -u


def test_a_non_convex_layer_is_refused_naming_it():
    with pytest.raises(NonConvexLagrangianError, match="layer 'hidden'"):
        Layer("hidden", 3, _Concave())
    with pytest.raises(NonConvexLagrangianError):
        Layer("hidden", 3, lg.elementwise(lambda x: -x ** 2, lambda x: -2 * x, lambda x: -2 + 0 * x))


def test_bad_graphs_are_refused():
    W = np.ones((3, 2))
    a, b = Layer("a", 3), Layer("b", 2)
    with pytest.raises(ValueError, match="duplicate"):
        HierarchicalNetwork([a, Layer("a", 2)], [])
    with pytest.raises(ValueError, match="'c'"):
        HierarchicalNetwork([a, b], [Linear("a", "c", W)])
    with pytest.raises(ValueError, match="shape mismatch"):
        HierarchicalNetwork([a, b], [Linear("b", "a", W)])
    with pytest.raises(ValueError, match="itself"):
        Linear("a", "a", np.eye(3))
    with pytest.raises(ValueError, match="no gradient"):
        Similarity("a", "b", np.ones((2, 3)), "hamming")
    with pytest.raises(ValueError, match="distribution"):
        HierarchicalNetwork([a, b], [Similarity("a", "b", np.ones((2, 3)) / 3, "kl")])
    net = HierarchicalNetwork([a, b], [Linear("a", "b", 0.1 * W)])
    with pytest.raises(ValueError, match="adiabatic"):
        integrate(net, np.ones(3), 1.0, adiabatic=True)
    with pytest.raises(ValueError, match="two-layer Network"):
        integrate(net, np.ones(3), 1.0, method="reduced")
    with pytest.raises(ValueError, match="shape mismatch"):
        net.initial_state(np.ones(2))
    with pytest.raises(ValueError, match="queries contains 1 NaN"):
        net.initial_state(np.array([1.0, np.nan, 0.0]))


def test_elementwise_autodiff_layers_and_a_custom_synapse_pass_the_energy_check():
    """The three kinds of layer Lagrangian (built-in, elementwise, autodiff) and a custom JAX
    synapse energy in one chain: integrated, E certified; the custom coupling -sum tanh(W^T ga) gb
    is a bounded symmetric interaction."""
    jnp = pytest.importorskip("jax.numpy")
    from uhn.dynamics import autodiff
    rng = np.random.default_rng(7)
    W = 0.5 * rng.standard_normal((4, 3))
    # an elementwise F well conditioned near 0 (log(cosh(x)) would lose all its digits there,
    # beyond the round-off verify_energy can know of: value_size defaults to |L|)
    sig = lambda x: 1 / (1 + np.exp(-x))                                                # noqa: E731
    cosh = lg.elementwise(lambda x: np.logaddexp(0, x), sig, lambda x: sig(x) * (1 - sig(x)), name="softplus")
    quartic = autodiff.lagrangian(lambda x: 0.5 * jnp.sum(x ** 2) + 0.05 * jnp.sum(x ** 4), name="quartic", size=3)
    layers = [Layer("a", 4), Layer("b", 3, quartic, tau=0.5), Layer("c", 2, cosh, tau=0.2)]
    syns = [Custom("a", "b", lambda ga, gb: -jnp.tanh(ga @ jnp.asarray(W)) @ gb, name="tanh_coupling"),
            Linear("b", "c", 0.4 * rng.standard_normal((3, 2)))]
    net = HierarchicalNetwork(layers, syns)
    traj = integrate(net, rng.standard_normal((3, 4)), 150.0, method="RK45-batched")
    rep = verify_energy(net, traj)
    assert rep.passed, rep.summary()
    assert traj.converged.all()


def test_a_custom_synapse_must_return_a_scalar():
    jnp = pytest.importorskip("jax.numpy")
    bad = Custom("a", "b", lambda ga, gb: ga * jnp.sum(gb), name="vector")
    with pytest.raises((ValueError, TypeError)):
        bad.energy(np.ones((2, 3)), np.ones((2, 3)))
