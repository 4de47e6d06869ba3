"""float32 networks: the right-hand side and the integrators' states stay float32, energies are
float64, float32 refuses a relative tolerance it cannot resolve, and float32 trajectories reach
the float64 fixed points within the linearised distance bound of each final state."""
import numpy as np
import pytest

from uhn.dynamics import lagrangians as L
from uhn.dynamics.solvers.driver import DEFAULT_RTOL, resolved_rtol
from uhn.dynamics.analysis.energy import verify_energy
from uhn.dynamics.analysis.fixed_points import distance_bound
from uhn.dynamics.integrate import integrate
from uhn.dynamics.network import Network
from uhn.models.similarity import get_similarity

EPS32 = float(np.finfo(np.float32).eps)
RATIO = EPS32 / float(np.finfo(np.float64).eps)

CASES = [("dot", {}), ("euclidean", {}), ("manhattan", {"eps": 0.1}), ("kl", {})]


def _net(sim, params, M, **kw):
    extra = {"L_v": L.softplus()} if sim == "kl" else {}
    return Network(M, similarity=get_similarity(sim, **params), tau_h=0.1, **extra, **kw)


@pytest.fixture(scope="module")
def data32():
    """20 of the offline 8x8 digits as memories, 6 noisy copies as queries, float32."""
    from sklearn.datasets import load_digits
    X = load_digits().data[:40] / 16.0
    rng = np.random.default_rng(7)
    Q = X[:6] + 0.1 * rng.standard_normal((6, 64))
    return X[:20].astype(np.float32), Q.astype(np.float32)


def test_rtol_floor_and_defaults():
    assert resolved_rtol(None, np.float32) == DEFAULT_RTOL[np.dtype(np.float32)] == 1e-4
    assert resolved_rtol(None, np.float64) == 1e-8
    floor32 = 100 * EPS32
    assert resolved_rtol(floor32, np.float32) == floor32
    with pytest.raises(ValueError, match=r"rtol=1e-08 is below what float32 states resolve \(100 eps = 1\.2e-05\)"):
        resolved_rtol(1e-8, np.float32)
    with pytest.raises(ValueError, match="below what float64 states resolve"):
        resolved_rtol(1e-15, np.float64)


def test_integrate_refuses_an_rtol_float32_cannot_resolve(data32):
    M, Q = data32
    net = _net("dot", {}, M)
    with pytest.raises(ValueError, match="below what float32 states resolve.*or float64 queries"):
        integrate(net, Q, t_end=1.0, method="RK45-batched", rtol=1e-8)
    with pytest.raises(ValueError, match="below what float32 states resolve"):
        integrate(net, Q, t_end=1.0, method="RK45", rtol=1e-6)
    # float64 queries on float32 memories compute in float64: rtol 1e-8 is fine there
    assert integrate(net, Q.astype(np.float64), t_end=0.5, method="RK45-batched", rtol=1e-8).v.dtype == np.float64


@pytest.mark.parametrize("sim, params", CASES)
def test_rhs_keeps_float32_and_energy_is_float64(sim, params, data32, score_err):
    M, Q = data32
    net32, net64 = _net(sim, params, M), _net(sim, params, M.astype(np.float64))
    v, h = net32.initial_state(Q)
    assert v.dtype == h.dtype == np.float32
    dv, dh = net32.rhs(v, h)
    assert dv.dtype == dh.dtype == np.float32
    v64, h64 = v.astype(np.float64), h.astype(np.float64)
    dv64, dh64 = net64.rhs(v64, h64)
    N, D = M.shape
    # error model, first order in eps32: the rates g = L_v'(v), f = L_h'(h) carry a few eps32
    # relative (elementwise maps; softmax's sum over N: (N + 4) eps32); J_mu = dS_mu/dg (one-hot
    # weights through the similarity's own gradient) turns an error in g into one in S_mu.
    g64, f64 = net64.L_v.grad(v64), net64.L_h.grad(h64)
    sim = net64.sim
    J = np.stack([sim.grad_contract(net64.M, g64, np.eye(N)[[mu] * len(g64)]) for mu in range(N)])
    # dv: sum of N terms f_mu J_mu, each with the relative error of its derivative ((D + 4) eps32:
    # norms and sums over D) and of f, summed with (N + 4) eps32, then - v + I: (N + D + 8) eps32
    # times the sum of the terms' sizes
    terms_v = np.einsum("bn,nbd->bd", np.abs(f64), np.abs(J)) + np.abs(v64)
    err_v = (2 * N + D + 12) * EPS32 * terms_v / net64.tau_v
    # dh: S(g) to the score round-off of the similarity (conftest's bound, with eps32 for eps64),
    # plus the effect of g's own rounding (sum_i |J_mu,i| 4 eps32 |g_i|), then - h
    S64 = net64.similarity(g64)
    err_S = (score_err(sim.name.split("(")[0], "standard", net64.M, g64, **params) * RATIO
             + 4 * EPS32 * np.einsum("nbd,bd->bn", np.abs(J), np.abs(g64)))
    err_h = (err_S + 2 * EPS32 * (np.abs(S64) + np.abs(h64))) / net64.tau_h
    assert np.all(np.abs(dv - dv64) <= err_v)
    assert np.all(np.abs(dh - dh64) <= err_h)
    # energies: float64, and exactly the float64 network's on the same (float32) values, because
    # the float32 network computes them on a float64 twin of its memories
    for a, b in ((net32.energy(v, h), net64.energy(v, h)), (net32.dEdt(v, h), net64.dEdt(v, h)),
                 (net32.energy_adiabatic(v), net64.energy_adiabatic(v))):
        assert a.dtype == np.float64 and np.array_equal(a, b)


@pytest.mark.parametrize("adiabatic", [False, True])
def test_scipy_methods_return_float32_samples_of_the_float64_solution(adiabatic, data32):
    """solve_ivp integrates in float64 whatever the input; a float32 network's float64 states use
    its float64 twin, so the float32 samples are the float64 trajectory's, rounded once."""
    M, Q = data32
    tr32 = integrate(_net("dot", {}, M), Q, t_end=5.0, method="RK45", rtol=1e-4, adiabatic=adiabatic)
    h0 = None if adiabatic else tr32.h[0]   # h(0) = S(g(q)) was computed in float32: start there
    tr64 = integrate(_net("dot", {}, M.astype(np.float64)), Q.astype(np.float64), t_end=5.0,
                     method="RK45", rtol=1e-4, adiabatic=adiabatic, h0=h0)
    assert tr32.v.dtype == tr32.h.dtype == np.float32 and tr32.E.dtype == np.float64
    assert np.array_equal(tr32.t, tr64.t)
    assert np.array_equal(tr32.v, tr64.v.astype(np.float32))


@pytest.mark.parametrize("sim, params", CASES)
def test_batched_float32_reaches_the_float64_fixed_point(sim, params, data32):
    M, Q = data32
    net32, net64 = _net(sim, params, M), _net(sim, params, M.astype(np.float64))
    # t_end long enough for every query to stop at its fixed point (the slowest, dot: t = 94)
    tr32 = integrate(net32, Q, t_end=150.0, method="RK45-batched", keep="ends")
    tr64 = integrate(net64, Q.astype(np.float64), t_end=150.0, method="RK45-batched", keep="ends")
    assert tr32.v.dtype == tr32.h.dtype == np.float32 and tr32.E.dtype == tr32.dEdt.dtype == np.float64
    assert tr32.params["rtol"] == 1e-4
    assert tr32.converged.all() and tr64.converged.all()
    for b in range(len(Q)):
        # both final states lie within their linearised distance of the exact fixed point
        # (|ydot| / sigma_min(J), in float64), plus float32's rounding of the stored state
        v32, h32, v64, h64 = tr32.v[-1, b], tr32.h[-1, b], tr64.v[-1, b], tr64.h[-1, b]
        y32 = np.concatenate([v32, h32]).astype(np.float64)
        bound = (distance_bound(net64, v32, h32) + distance_bound(net64, v64, h64)
                 + EPS32 * np.linalg.norm(y32))
        assert np.linalg.norm(y32 - np.concatenate([v64, h64])) <= bound


@pytest.mark.parametrize("sim, params", CASES)
def test_energy_check_passes_on_float32_trajectories(sim, params, data32):
    M, Q = data32
    net = _net(sim, params, M)
    tr = integrate(net, Q, t_end=10.0, method="RK45-batched")
    rep = verify_energy(net, tr)
    assert rep.passed, rep.violations


def test_float32_energy_check_still_catches_a_wrong_energy(data32):
    """A float32 trajectory of one network checked against another (tau_v doubled): the analytic
    dE/dt of the checked network no longer matches its finite difference along the stored flow."""
    M, Q = data32
    tr = integrate(_net("dot", {}, M), Q, t_end=10.0, method="RK45-batched")
    rep = verify_energy(_net("dot", {}, M, tau_v=2.0), tr)
    assert not rep.passed and rep.violations
