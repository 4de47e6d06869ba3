"""Network construction errors and the right-hand side's fixed-point algebra."""
import numpy as np
import pytest

from uhn.dynamics import lagrangians as L
from uhn.dynamics.network import Network
from uhn.models.validation import require_count, require_positive
from uhn.models import Memory, get_similarity

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


def test_require_positive_and_count():
    assert require_positive(np.float32(0.5), "dt", "time step") == 0.5
    assert require_positive(np.inf, "max_step", "step size", finite=False) == np.inf
    with pytest.raises(ValueError, match="max_step must be a positive step size, got nan"):
        require_positive(np.nan, "max_step", "step size", finite=False)
    with pytest.raises(ValueError, match="dt must be a positive finite time step, got inf"):
        require_positive(np.inf, "dt", "time step")
    with pytest.raises(TypeError, match="dt must be a real number, got bool True"):
        require_positive(True, "dt", "time step")
    assert require_count(np.int64(3), "n") == 3
    with pytest.raises(ValueError, match="record_every must be an integer >= 1, got 0"):
        require_count(0, "record_every")
    with pytest.raises(TypeError, match="record_every must be an integer, got float 2.0"):
        require_count(2.0, "record_every")


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
    mem = Memory(M, similarity="dot", separation=__import__("models").separation.get_separation("softmax", beta=2.0))
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
