"""Network construction errors and the right-hand side's fixed-point algebra."""
import numpy as np
import pytest

from dynamics import lagrangians as L
from dynamics.network import Network
from models import Memory


def M_():
    return np.random.default_rng(0).uniform(0, 1, (5, 4))


@pytest.mark.parametrize("tau", [0.0, -1.0, np.nan, np.inf])
def test_bad_time_constant(tau):
    with pytest.raises(ValueError, match="tau_v must be a positive finite time constant"):
        Network(M_(), tau_v=tau)
    with pytest.raises(ValueError, match="tau_h must be a positive finite time constant"):
        Network(M_(), tau_h=tau)


def test_nan_state_and_shape_mismatch():
    net = Network(M_())
    with pytest.raises(ValueError, match="feature state v"):
        net._check_state(np.array([[np.nan, 0, 0, 0]]))
    with pytest.raises(ValueError, match="shape mismatch: feature state has 3 entries, network has D=4"):
        net._check_state(np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"shape mismatch: memory state h has shape \(1, 2\)"):
        net._check_state(np.zeros((1, 4)), np.zeros((1, 2)))
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
    with pytest.raises(TypeError, match="L_v must be a dynamics.lagrangians.Lagrangian"):
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
    from models.separation import get_separation
    net = Network(Memory(M_(), separation=get_separation("softmax", beta=3.0)))
    assert net.L_h.kind == "log_sum_exp" and net.L_h.beta == 3.0
    assert "N=5" in repr(net) and net.describe()["D"] == 4
