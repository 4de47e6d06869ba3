"""Network construction errors, the right-hand side's fixed-point algebra, and closed-form values of
its defaults, readout, residual, pack layout and dtype promotion."""
import numpy as np
import pytest

from uhn.dynamics import lagrangians as L
from uhn.dynamics.network import Network
from uhn.models import Memory, get_similarity
from uhn.models.arrays import to_numpy
from uhn.models.separation import get_separation

EPS = np.finfo(float).eps


def M_():
    return np.random.default_rng(0).uniform(0, 1, (5, 4))


@pytest.mark.parametrize("tau", [0.0, -1.0, np.nan, np.inf])
def test_bad_time_constant(tau):
    with pytest.raises(ValueError, match=f"tau_v must be a positive finite time constant, got {tau}"):
        Network(M_(), tau_v=tau)
    with pytest.raises(ValueError, match=f"tau_h must be a positive finite time constant, got {tau}"):
        Network(M_(), tau_h=tau)
    with pytest.raises(TypeError, match="tau_v must be a real number, got str '1'"):
        Network(M_(), tau_v="1")


def linear(tau_v, tau_h, D=5, N=3, seed=0):
    """dot + quadratic L_v, L_h: dv/dt = (M^T h - v + I)/tau_v, dh/dt = (M v - h)/tau_h and
    E(v, h) = |v|^2/2 - I.v + |h|^2/2 - h.M v, a quadratic form."""
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((N, D)) / np.sqrt(D)
    return Network(M, "dot", L_v=L.quadratic(), L_h=L.quadratic(), tau_v=tau_v, tau_h=tau_h,
                   I=rng.standard_normal(D)), rng


@pytest.mark.parametrize("tau_v, tau_h", [(0.5, 0.2), (2.0, 0.05), (3.0, 1.5)])
def test_rhs_and_dEdt_scale_with_the_time_constants(tau_v, tau_h):
    """dv/dt and dh/dt are the closed forms divided by tau_v, tau_h; and dE/dt = grad E . dy/dt
    = -tau_v |dv/dt|^2 - tau_h |dh/dt|^2, checked against the central difference of E along
    dy/dt, which is exact for a quadratic E (no third derivative) up to round-off."""
    net, rng = linear(tau_v, tau_h)
    v, h = rng.standard_normal((4, net.D)), rng.standard_normal((4, net.N))
    dv, dh = net.rhs(v, h)
    # round-off: a few operations on terms of size |M^T h| + |v| + |I|, then one division
    np.testing.assert_allclose(dv, (h @ net.M - v + net.I) / tau_v, rtol=8 * EPS)
    np.testing.assert_allclose(dh, (v @ net.M.T - h) / tau_h, rtol=8 * EPS, atol=0)
    s = 0.1
    Ep, Em = net.energy(v + s * dv, h + s * dh), net.energy(v - s * dv, h - s * dh)
    fd = (Ep - Em) / (2 * s)
    # round-off of E: eps64 times the size of its terms (|v|^2, |I||v|, |h|^2, |h||M v|), a few
    # operations each, in both evaluations, divided by 2 s
    size = max(np.abs(x).max() for x in (v, h, dv, dh, net.I)) ** 2 * (net.D + net.N) * (1 + s) ** 2
    np.testing.assert_allclose(net.dEdt(v, h), fd, rtol=0, atol=8 * EPS * size / (2 * s))
    np.testing.assert_allclose(net.dEdt(v, h), -tau_v * (dv * dv).sum(1) - tau_h * (dh * dh).sum(1),
                               rtol=4 * EPS)
    # adiabatic: E(v) = |v|^2/2 - I.v - |M v|^2/2 and dE/dt = -tau_v |dv/dt|^2 along dv/dt
    dva = net.rhs_adiabatic(v)
    np.testing.assert_allclose(dva, (v @ net.M.T @ net.M - v + net.I) / tau_v, rtol=8 * EPS, atol=0)
    fda = (net.energy_adiabatic(v + s * dva) - net.energy_adiabatic(v - s * dva)) / (2 * s)
    np.testing.assert_allclose(net.dEdt_adiabatic(v), fda, rtol=0, atol=8 * EPS * size / (2 * s))


def test_nan_state_and_shape_mismatch():
    net = Network(M_())
    with pytest.raises(ValueError, match="feature state v"):
        net.check_state(np.array([[np.nan, 0, 0, 0]]))
    with pytest.raises(ValueError, match="shape mismatch: feature state has 3 entries, network has D=4"):
        net.check_state(np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"shape mismatch: memory state h has shape \(1, 2\)"):
        net.check_state(np.zeros((1, 4)), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="input current I must have shape"):
        Network(M_(), I=np.zeros(3))


@pytest.mark.parametrize("sim,msg", [("hamming", "has no gradient"), ])
def test_similarity_without_gradient_refused(sim, msg):
    with pytest.raises(ValueError, match=f"similarity '{sim}' {msg}.*differentiable similarities"):
        Network(np.sign(M_() - 0.5), sim)


def test_paper_code_refused():
    mem = Memory(M_(), similarity="euclidean", separation="softmax", convention="paper_code")
    with pytest.raises(ValueError, match="paper_code reciprocal similarities have no gradient"):
        Network(mem)


@pytest.mark.parametrize("sep", ["threshold", "max"])
def test_separation_without_energy_refused(sep):
    with pytest.raises(L.NonConvexLagrangianError, match="has no energy"):
        Network(Memory(M_(), separation=sep))


def test_lagrangian_type_checked():
    with pytest.raises(TypeError, match="L_v must be a uhn.dynamics.lagrangians.Lagrangian"):
        Network(M_(), L_v=np.tanh)


def test_fixed_point_algebra_dot_softmax():
    """At v = M^T softmax(beta M v), h = M v the RHS vanishes (found by iterating the map)."""
    M = M_()
    mem = Memory(M, similarity="dot", separation=get_separation("softmax", beta=2.0))
    z = mem.iterate(M[0] + 0.1, max_steps=2000, tol=0).states
    net = Network(mem)
    dv, dh = net.rhs(z[None], (M @ z)[None])
    assert np.abs(dv).max() < 1e-12 and np.abs(dh).max() < 1e-12


def test_memory_gives_lagrangian_of_its_separation():
    from uhn.models.separation import get_separation
    net = Network(Memory(M_(), separation=get_separation("softmax", beta=3.0)))
    assert net.L_h.kind == "log_sum_exp" and net.L_h.beta == 3.0
    assert "N=5" in repr(net) and net.describe()["D"] == 4


@pytest.mark.parametrize("sim", ["kl", "reverse_kl"])
@pytest.mark.parametrize("lv", ["quadratic", "log_cosh", "spherical"])
def test_kl_refuses_feature_rates_that_can_be_negative(sim, lv):
    """KL reads g as a distribution: rates that can go negative used to fail only midway through an
    integration ("got min -3.16e-09"); now the Network refuses them up front, naming L_v."""
    M = np.random.default_rng(0).uniform(0.1, 1, (3, 5))
    with pytest.raises(ValueError, match=rf"'{sim}' reads the feature rates .* must be non-negative.*softplus"):
        Network(M, sim, L_v=getattr(L, lv)())
    Network(M, sim, L_v=L.softplus())  # sigmoid rates are positive: accepted


@pytest.mark.parametrize("sim,L_v,L_h", [
    ("dot", L.quadratic(), L.log_sum_exp(3.0)),
    ("squared_euclidean", L.log_cosh(), L.rectified_polynomial(3)),
    ("cosine", L.quadratic(), L.exponential(2.0)),
    ("manhattan", L.quadratic(), L.log_sum_exp(1.0)),
    ("kl", L.softplus(), L.log_sum_exp(2.0)),
])
def test_energy_and_dEdt_together_are_the_separate_values_bit_for_bit(sim, L_v, L_h):
    """energy_and_dEdt shares g and S(g) between the two (the samples' energies: two products
    with the memories per state instead of three); the values are the separate calls' exactly,
    also for the adiabatic system, whose first output is S(g) of the float64 states, and for a
    float32 network (float64 energies of float32 states)."""
    rng = np.random.default_rng(3)
    for dtype in (np.float64, np.float32):
        M = rng.uniform(0.1, 1.0, (6, 5)).astype(dtype)
        net = Network(M, get_similarity(sim, **({"eps": 0.05} if sim == "manhattan" else {})), L_v=L_v, L_h=L_h,
                      tau_h=0.3, I=rng.uniform(0, 1, 5))
        v = rng.uniform(0.1, 1.0, (4, 5)).astype(dtype)
        h = rng.standard_normal((4, 6)).astype(dtype)
        E, dE = net.energy_and_dEdt(v, h)
        np.testing.assert_array_equal(E, net.energy(v, h))
        np.testing.assert_array_equal(dE, net.dEdt(v, h))
        S, Ea, dEa = net.energy_and_dEdt_adiabatic(v)
        np.testing.assert_array_equal(S, net.similarity(L_v.grad(v.astype(np.float64))))
        np.testing.assert_array_equal(Ea, net.energy_adiabatic(v))
        np.testing.assert_array_equal(dEa, net.dEdt_adiabatic(v))
        assert E.dtype == dE.dtype == Ea.dtype == np.float64


# --------------------------------------------------------------------------------------------------
# Values mutation testing (tools/mutate.py; docs/testing.md, "Full runs with --select
# coverage") found unchecked, on inputs where they are exact (dyadic numbers): the defaults, the
# heteroassociative readout, residual / fun / pack on the linear network (tests/conftest.py
# linear_net), the array-API right-hand side's 1/tau_v and the promotion of float32 states to a
# float64 network's dtype (which also found the adiabatic residual failing on array-API arrays).


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


def test_strict_rhs_divides_by_tau_v_of_two(to_strict):
    """tau_v dv/dt = M^T f - v with quadratic L_h (f = h) and dot similarity: with dyadic entries
    every operation is exact, so at tau_v = 2 dv/dt = (M^T h - v) / 2 exactly, on array-api-strict
    arrays as on numpy; dh/dt = (M v - h) / tau_h."""
    M = np.array([[1.0, -0.5], [0.25, 2.0], [-1.5, 0.75]])
    v, h = np.array([[0.5, -1.25]]), np.array([[0.375, -0.75, 1.0]])
    kw = dict(similarity="dot", L_v=L.quadratic(), L_h=L.quadratic(), tau_v=2.0, tau_h=0.5)
    expected_v, expected_h = (h @ M - v) / 2.0, (v @ M.T - h) / 0.5
    dv, dh = Network(to_strict(M), **kw).rhs(to_strict(v), to_strict(h))
    np.testing.assert_array_equal(to_numpy(dv), expected_v)
    np.testing.assert_array_equal(to_numpy(dh), expected_h)
    np.testing.assert_array_equal(Network(M, **kw).rhs(v, h)[0], expected_v)


def test_strict_float32_states_compute_in_the_networks_float64(to_strict):
    """float32 v and h given to a float64 network's residual (max |dy/dt|, which validates its
    states) are promoted before any arithmetic: with log cosh L_v (g = tanh v) and log-sum-exp L_h
    (softmax), the result equals the float64 computation from the same (exactly upcast) values to
    float64 round-off (a few eps64 of the terms, |terms| < 16 here), far below the ~1e-7 that a
    float32 tanh or softmax would leave. Both forms, (v, h) and adiabatic (h = S(g)): the adiabatic
    one raised on array-API arrays before (the validated v was unpacked as a pair, splitting rows).
    """
    import array_api_strict as xps
    rng = np.random.default_rng(3)
    M = rng.standard_normal((4, 3))
    v32, h32 = rng.standard_normal((2, 3)).astype(np.float32), rng.standard_normal((2, 4)).astype(np.float32)
    v32[1] += 6     # row 1: |dv/dt| ~ |v| > |dh/dt| ~ |M|, so the residual reads the v part (f = softmax(3 h))
    kw = dict(similarity="dot", L_v=L.log_cosh(), L_h=L.log_sum_exp(3.0), tau_v=1.0, tau_h=1.0)
    sM = to_strict(M)
    snet = Network(sM, **kw)
    for adiabatic in (False, True):
        sv, sh = xps.asarray(v32, device=sM.device), xps.asarray(h32, device=sM.device)
        r = snet.residual(sv, None if adiabatic else sh, adiabatic=adiabatic)
        assert r.dtype == xps.float64
        ref = Network(M, **kw).residual(v32.astype(np.float64), None if adiabatic else h32.astype(np.float64),
                                        adiabatic=adiabatic)
        np.testing.assert_allclose(to_numpy(r), ref, rtol=0, atol=64 * EPS)


def test_strict_initial_state_casts_h0_to_the_common_dtype(to_strict):
    """initial_state returns (v0, h0) in the common dtype of the queries and the memories: a float32
    h0 given with float64 queries to a float64 network comes back float64, with the same values
    (the upcast is exact)."""
    import array_api_strict as xps
    M = to_strict(np.eye(3, 2))
    h0 = xps.asarray(np.array([[0.1, -0.2, 0.3]], dtype=np.float32), device=M.device)
    v0, h = Network(M, "dot").initial_state(to_strict([[0.5, -0.25]]), h0)
    assert v0.dtype == xps.float64 and h.dtype == xps.float64
    np.testing.assert_array_equal(to_numpy(h), to_numpy(h0).astype(np.float64))


def test_network_docstring_names_its_default_similarity():
    """Network's docstring did not say that similarity=None means dot (issue 29): it names the
    default the constructor uses, and states the equations it integrates (docs/theory.md §2-3)."""
    M = np.eye(3, 2)
    assert Network(M).sim.name == "dot" == get_similarity("dot").name
    similarity_doc = Network.__doc__.split("similarity :")[1].split("L_v, L_h :")[0]
    assert 'default ``"dot"``' in similarity_doc
    for equation in ("tau_v dv/dt = sum_mu f_mu dS_mu/dg - v + I", "tau_h dh/dt = S(g) - h",
                     "E(v, h) = [(v - I).g - L_v(v)] + [h.f - L_h(h)] - f.S(g)"):
        assert equation in Network.__doc__
