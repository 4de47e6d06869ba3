"""verify_energy along integrated trajectories: every smooth similarity x Lagrangian pair passes,
analytic dE/dt equals a finite difference, and a broken energy is reported with its location."""
import itertools

import numpy as np
import pytest

from dynamics import lagrangians as L
from dynamics.energy import verify_energy
from dynamics.integrate import integrate
from dynamics.network import Network
from models.similarity import get_similarity

SIMS = {"dot": ({}, "initial"), "cosine": ({}, "clamped"), "squared_euclidean": ({}, "initial"),
        "euclidean": ({}, "initial"), "manhattan": ({"eps": 0.05}, "initial"),
        "minkowski": ({"p": 3}, "initial"), "kl": ({}, "initial"), "reverse_kl": ({}, "initial")}
LH = {"quadratic": L.quadratic, "log_sum_exp": lambda: L.log_sum_exp(2.0),
      "rectified_polynomial": lambda: L.rectified_polynomial(2.0), "exponential": lambda: L.exponential(1.0)}
LV = {"quadratic": L.quadratic, "log_cosh": L.log_cosh, "softplus": L.softplus, "spherical": L.spherical}


def _excluded(s, lh, lv):
    """Combinations whose trajectory leaves the representable range or stiffens, so there is
    nothing to verify (documented in docs/dynamics.md; test_known_unbounded_or_stiff covers them)."""
    if s in ("kl", "reverse_kl"):
        return lv != "softplus"  # KL needs positive rates
    if s == "dot" and lv == "quadratic" and lh in ("rectified_polynomial", "exponential"):
        return True  # unbounded g: the polynomial / exp feedback blows up in finite time
    if s == "squared_euclidean" and lh == "quadratic" and lv == "quadratic":
        return True  # f = h = -|m - g|^2 < 0 repels g from every memory without bound
    if s not in ("dot", "cosine") and lv == "spherical" and lh in ("log_sum_exp", "exponential"):
        return True  # |v| -> 0 where the spherical Hessian 1/|v| diverges: stiff
    return False


GRID = [c for c in itertools.product(SIMS, LH, LV) if not _excluded(*c)]


def _net(s, lh, lv, tau_h=0.2):
    rng = np.random.default_rng(0)
    M = rng.uniform(0, 0.5, (4, 6))
    return Network(M, get_similarity(s, **SIMS[s][0]), L_v=LV[lv](), L_h=LH[lh](), tau_v=1.0, tau_h=tau_h)


def _queries():
    return np.random.default_rng(1).uniform(0, 1, (2, 6))


@pytest.mark.parametrize("s,lh,lv", GRID, ids=["-".join(c) for c in GRID])
def test_energy_decreases_for_every_smooth_pair(s, lh, lv):
    net = _net(s, lh, lv)
    tr = integrate(net, _queries(), 5.0, input_mode=SIMS[s][1], n_samples=21, max_nfev=20000)
    rep = verify_energy(net, tr)
    assert rep.passed, rep.summary()
    assert rep.max_dEdt <= 1e-9 * max(1.0, np.abs(tr.E).max())
    assert np.all(np.diff(tr.E, axis=0) <= 1e-6)


@pytest.mark.parametrize("s", ["dot", "squared_euclidean", "kl"])
def test_energy_adiabatic(s):
    lv = "softplus" if s == "kl" else "quadratic"
    net = _net(s, "log_sum_exp", lv)
    tr = integrate(net, _queries(), 5.0, adiabatic=True, n_samples=21)
    rep = verify_energy(net, tr)
    assert rep.passed, rep.summary()
    assert rep.fd_checked > 0


@pytest.mark.parametrize("s,lh,lv", [("dot", "log_sum_exp", "quadratic"), ("cosine", "exponential", "log_cosh"),
                                     ("minkowski", "log_sum_exp", "softplus"), ("kl", "quadratic", "softplus")])
def test_analytic_dEdt_equals_finite_difference(s, lh, lv):
    net = _net(s, lh, lv)
    rng = np.random.default_rng(3)
    v = rng.uniform(0.1, 1, (3, 6))
    I = v.copy() if s == "cosine" else None
    h = net.similarity(net.L_v.grad(v)) + 0.1 * rng.standard_normal((3, 4))
    dv, dh = net.rhs(v, h, I)
    eps = 1e-6
    fd = (net.energy(v + eps * dv, h + eps * dh, I) - net.energy(v - eps * dv, h - eps * dh, I)) / (2 * eps)
    np.testing.assert_allclose(net.dEdt(v, h, I), fd, rtol=1e-6, atol=1e-10)
    assert np.all(net.dEdt(v, h, I) <= 0)


def test_broken_energy_reported_with_location(monkeypatch):
    net = _net("dot", "log_sum_exp", "quadratic")
    tr = integrate(net, _queries(), 5.0, n_samples=21)
    assert verify_energy(net, tr).passed
    orig = Network.energy
    monkeypatch.setattr(Network, "energy", lambda self, v, h, I=None: -orig(self, v, h, I))  # sign flipped
    rep = verify_energy(net, tr)
    assert not rep.passed
    assert "FAIL" in rep.summary()
    assert any("E rose by" in v and "query" in v for v in rep.violations)
    assert any("differs from the finite difference" in v for v in rep.violations)
    k, t, b = rep.increase_at
    assert 0 <= k < len(tr.t) and b in (0, 1) and t == tr.t[k]


def test_broken_dEdt_sign_reported(monkeypatch):
    net = _net("dot", "log_sum_exp", "quadratic")
    tr = integrate(net, _queries(), 5.0, n_samples=21)
    orig = Network.dEdt
    monkeypatch.setattr(Network, "dEdt", lambda self, v, h, I=None: -orig(self, v, h, I))
    rep = verify_energy(net, tr)
    assert not rep.passed and rep.max_dEdt > 0
    assert any("analytic dE/dt" in v and "> 0 at t=" in v for v in rep.violations)


def test_non_convex_lagrangian_on_visited_states_reported():
    cubic = L.elementwise(lambda x: x ** 3 / 6, lambda x: x ** 2 / 2, lambda x: x, name="cubic",
                          probe=np.linspace(0, 1, 5))
    net = Network(np.random.default_rng(0).uniform(0, 0.5, (4, 6)), "dot", L_v=L.quadratic(), L_h=cubic)
    tr = integrate(net, -_queries(), 1.0, n_samples=11)  # h < 0: F'' = h < 0
    rep = verify_energy(net, tr)
    assert not rep.passed and not rep.convex
    assert "negative Hessian direction" in rep.convexity_message


def test_non_smooth_manhattan_documented_behaviour():
    """manhattan with eps = 0: the subgradient flow chatters at the kinks; RK45 either finishes with
    a small E increase or is stopped by max_nfev with a RuntimeError that names the cure."""
    rng = np.random.default_rng(0)
    M = rng.uniform(0, 1, (4, 6))
    net = Network(M, get_similarity("manhattan"), L_h=L.log_sum_exp(2.0))
    assert not net.sim.smooth
    try:
        tr = integrate(net, M[:2] + 0.05, 20.0, n_samples=41, max_nfev=3000)
    except RuntimeError as err:
        assert "use a smoothed similarity (eps > 0)" in str(err)
    else:
        rep = verify_energy(net, tr)
        assert np.isfinite(rep.max_increase)  # reported, never clipped


def test_runaway_state_is_flagged_even_though_energy_decreases():
    """dot + identity separation: linear dynamics v' = (M^T M - I) v grow without bound.

    E falls monotonically (the check passes) but the report must say the state diverged, and a
    converging modern Hopfield run on the same memories must not be flagged."""
    import numpy as np

    from dynamics import lagrangians as L
    from dynamics.energy import verify_energy
    from dynamics.integrate import integrate
    from dynamics.network import Network

    M = np.random.default_rng(0).random((5, 8))
    runaway = Network(M, "dot", L.quadratic(), L.quadratic(), tau_v=1.0, tau_h=0.1)
    rep = verify_energy(runaway, integrate(runaway, M[:2], t_end=5.0))
    assert rep.passed and "grew from" in rep.diverging and "diverging" in rep.summary()
    mchn = Network(M, "dot", L.quadratic(), L.log_sum_exp(5.0), tau_v=1.0, tau_h=0.1)
    assert verify_energy(mchn, integrate(mchn, M[:2], t_end=5.0)).diverging == ""
