"""verify_energy along integrated trajectories: every smooth similarity x Lagrangian pair passes,
analytic dE/dt equals a finite difference, and a broken energy is reported with its location.

Time constants differ from 1 (TAUS): with tau_v = 1 a network that multiplied by tau_v instead of
dividing, or a dE/dt without its tau_v, would pass unseen."""
import itertools

import numpy as np
import pytest

from uhn.dynamics import lagrangians as L
from uhn.dynamics.analysis.energy import ROUNDOFF_ULPS, _energy_and_size, verify_energy
from uhn.dynamics.integrate import integrate
from uhn.dynamics.network import Network
from uhn.models.similarity import get_similarity

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
#: (tau_v, tau_h): the historical setting and one where neither time constant is 1
TAUS = [(1.0, 0.2), (2.5, 0.3)]
_EPS64 = np.finfo(np.float64).eps


def _net(s, lh, lv, tau_h=0.2, tau_v=1.0):
    rng = np.random.default_rng(0)
    M = rng.uniform(0, 0.5, (4, 6))
    return Network(M, get_similarity(s, **SIMS[s][0]), L_v=LV[lv](), L_h=LH[lh](), tau_v=tau_v, tau_h=tau_h)


def _queries():
    return np.random.default_rng(1).uniform(0, 1, (2, 6))


@pytest.mark.parametrize("s,lh,lv", GRID, ids=["-".join(c) for c in GRID])
def test_energy_decreases_for_every_smooth_pair(s, lh, lv, tau_v=TAUS[1][0], tau_h=TAUS[1][1]):
    """Every check passes on an honest solve_ivp trajectory (tau_v = 2.5, tau_h = 0.3; the other
    tests also run tau_v = 1); each tolerance is the report's own derived one (squared_euclidean-quadratic-softplus failed a fixed 1e-4 relative FD tolerance on
    some BLAS kernels: its FD error is round-off, which the report now estimates per sample)."""
    net = _net(s, lh, lv, tau_h=tau_h, tau_v=tau_v)
    tr = integrate(net, _queries(), 5.0, input_mode=SIMS[s][1], n_samples=21, max_nfev=20000)
    rep = verify_energy(net, tr, flow_budget=np.inf)   # every window, not the budget's sample
    # a runaway (manhattan with quadratic L_h grows without bound) fails for that reason alone
    runaway = [v for v in rep.violations if v.startswith("the trajectory diverges: |v| grew")]
    assert rep.violations == runaway and bool(runaway) == bool(rep.diverging), rep.summary()
    assert rep.fd_ratio <= 1 and rep.flow_ratio <= 1 and rep.max_increase <= rep.increase_tol
    assert rep.stored_E_ratio <= 1 and rep.stored_dEdt_ratio <= 1
    T, B = tr.E.shape
    assert rep.fd_checked == T * B                 # the flow moves at every sample: all compared
    assert rep.flow_checked == (T - 1) * B         # 20 windows <= max_windows: all re-integrated


@pytest.mark.parametrize("tau_v,tau_h", TAUS)
@pytest.mark.parametrize("s", ["dot", "squared_euclidean", "kl"])
def test_energy_adiabatic(s, tau_v, tau_h):
    lv = "softplus" if s == "kl" else "quadratic"
    net = _net(s, "log_sum_exp", lv, tau_h=tau_h, tau_v=tau_v)
    tr = integrate(net, _queries(), 5.0, adiabatic=True, n_samples=21)
    rep = verify_energy(net, tr, flow_budget=np.inf)
    assert rep.passed, rep.summary()
    assert rep.fd_checked == tr.E.size and rep.flow_checked == (len(tr.t) - 1) * tr.E.shape[1]


def _fd4(net, v, h, I, dv, dh, s):
    """Fourth-order central difference of E along (dv, dh): (-E(2s) + 8 E(s) - 8 E(-s) + E(-2s)) / 12 s
    = dE/dt + O(s^4), and the round-off estimate of that quotient: its weights sum to 18/12 in
    absolute value, each E carrying ROUNDOFF_ULPS eps64 size(E) (size: the summed |terms| of E)."""
    Es, sizes = [], []
    for c in (2, 1, -1, -2):
        E, size = _energy_and_size(net, np.hstack([v + c * s * dv, h + c * s * dh]), I, False)
        Es.append(E)
        sizes.append(size)
    fd = (-Es[0] + 8 * Es[1] - 8 * Es[2] + Es[3]) / (12 * s)
    return fd, 1.5 * ROUNDOFF_ULPS * _EPS64 * np.max(sizes, axis=0) / s


@pytest.mark.parametrize("tau_v,tau_h", TAUS)
@pytest.mark.parametrize("s,lh,lv", [("dot", "log_sum_exp", "quadratic"), ("cosine", "exponential", "log_cosh"),
                                     ("minkowski", "log_sum_exp", "softplus"), ("kl", "quadratic", "softplus"),
                                     ("squared_euclidean", "quadratic", "softplus")])
def test_analytic_dEdt_equals_finite_difference(s, lh, lv, tau_v, tau_h):
    """Network.dEdt against a fourth-order difference (independent of the report's second-order
    one) at random states off any trajectory. Step s = eps64^(1/5) / max|ydot|, which balances
    round-off ~ eps/s against truncation ~ s^4; truncation is estimated by Richardson from the
    steps s and 2s (|fd(s) - fd(2s)| / (2^4 - 1)). Allowed: 10 x (round-off + truncation) (the
    estimates are of the size of the error, not bounds), plus the analytic value's own round-off."""
    net = _net(s, lh, lv, tau_h=tau_h, tau_v=tau_v)
    rng = np.random.default_rng(3)
    v = rng.uniform(0.1, 1, (3, 6))
    I = v.copy() if s == "cosine" else None
    h = net.similarity(net.L_v.grad(v)) + 0.1 * rng.standard_normal((3, 4))
    dv, dh = net.rhs(v, h, I)
    step = _EPS64 ** 0.2 / np.abs(np.hstack([dv, dh])).max()
    fd1, r1 = _fd4(net, v, h, I, dv, dh, step)
    fd2, _ = _fd4(net, v, h, I, dv, dh, 2 * step)
    an = net.dEdt(v, h, I)
    # dE/dt = -tau_v dv.H_v dv - tau_h dh.H_h dh: round-off of a few ulps of the summed |terms|
    analytic_roundoff = ROUNDOFF_ULPS * _EPS64 * (tau_v * np.abs(dv * net.L_v.hvp(v, dv)).sum(1)
                                                  + tau_h * np.abs(dh * net.L_h.hvp(h, dh)).sum(1))
    allowed = 10 * (r1 + np.abs(fd1 - fd2) / 15) + analytic_roundoff
    assert np.all(np.abs(an - fd1) <= allowed), (an, fd1, allowed)
    assert np.all(an < 0)          # strictly: the states are not fixed points and the Hessians are PD here
    # the check has teeth: the allowed error is far below a 1e-6 relative formula error
    assert np.all(allowed < 1e-6 * np.abs(an))


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


def test_non_smooth_manhattan_stops_with_the_remedy():
    """manhattan with eps = 0: the subgradient flow chatters at the kinks, the step size collapses
    (t = 0.0276 of 20 after 3000 RK45 right-hand-side calls) and integrate stops with a
    RuntimeError that names the cure. Deterministic: same M, queries and max_nfev every run."""
    rng = np.random.default_rng(0)
    M = rng.uniform(0, 1, (4, 6))
    net = Network(M, get_similarity("manhattan"), L_h=L.log_sum_exp(2.0))
    assert not net.sim.smooth
    with pytest.raises(RuntimeError, match=r"stopped at t=0\.0\d+ of 20.*more than 3000 right-hand-side "
                                           r"calls.*use a smoothed similarity \(eps > 0\)"):
        integrate(net, M[:2] + 0.05, 20.0, n_samples=41, max_nfev=3000)
    smooth = Network(M, get_similarity("manhattan", eps=0.05), L_h=L.log_sum_exp(2.0))
    rep = verify_energy(smooth, integrate(smooth, M[:2] + 0.05, 20.0, n_samples=41, max_nfev=20000))
    assert rep.passed, rep.summary()


def test_runaway_state_is_flagged_even_though_energy_decreases():
    """dot + identity separation: linear dynamics v' = (M^T M - I) v grow without bound.

    E falls monotonically (the check passes) but the report must say the state diverged, and a
    converging modern Hopfield run on the same memories must not be flagged."""
    import numpy as np

    from uhn.dynamics import lagrangians as L
    from uhn.dynamics.analysis.energy import ROUNDOFF_ULPS, _energy_and_size, verify_energy
    from uhn.dynamics.integrate import integrate
    from uhn.dynamics.network import Network

    M = np.random.default_rng(0).random((5, 8))
    runaway = Network(M, "dot", L.quadratic(), L.quadratic(), tau_v=1.0, tau_h=0.1)
    rep = verify_energy(runaway, integrate(runaway, M[:2], t_end=5.0))
    # E does decrease, but a runaway is no retrieval: the check fails and says why
    assert not rep.passed and "grew from" in rep.diverging and "diverging" in rep.summary()
    assert [v for v in rep.violations if v.startswith("the trajectory diverges: |v| grew from")]
    assert rep.summary().startswith("energy check: FAIL")
    mchn = Network(M, "dot", L.quadratic(), L.log_sum_exp(5.0), tau_v=1.0, tau_h=0.1)
    assert verify_energy(mchn, integrate(mchn, M[:2], t_end=5.0)).diverging == ""


def test_dEdt_roundoff_at_an_exact_fixed_point_is_not_zero():
    """At h = S(g) the memory velocity comes out exactly 0 here, but a few ulps in an evaluation with
    another summation order (a batch of another size, another BLAS kernel): dE/dt is then
    -tau_h dh^T H_h dh with dh of the size of that round-off, not 0. The allowance must cover that
    second-order term; it was 2 hvp(dh) . |dh err|, which is 0 at dh = 0, so an honest stored dE/dt
    of -5e-25 against a recomputed -0 failed the energy check (notebook 02, kl + signed_polynomial(3)
    on a fresh machine)."""
    from uhn.dynamics.analysis.energy import _EPS64, _dEdt_and_size
    M = np.random.default_rng(0).uniform(0, 1, (4, 6))
    net = Network(M, "kl", L_v=L.softplus(), L_h=L.signed_polynomial(3.0), tau_v=2.5, tau_h=0.3)
    v = np.full((1, 6), 1e6)                       # sigmoid(1e6) == 1: H_v = 0 exactly
    h = net.similarity(net.L_v.grad(v))            # dh/dt = (S - h) / tau_h == 0 exactly
    Y = np.concatenate([v, h], axis=1)
    F = net.velocity(Y)
    assert np.all(F[:, 6:] == 0)
    an, _, roundoff = _dEdt_and_size(net, Y, F, None, False)
    assert an[0] == 0 and roundoff[0] > 0
    # the velocity one ulp-scale round-off away: dh of ROUNDOFF_ULPS eps64 (|S| + |h|) / tau_h
    dh = ROUNDOFF_ULPS * _EPS64 * (np.abs(h) + np.abs(h)) / net.tau_h
    perturbed = -net.tau_h * net.L_h.curvature(h, dh)
    assert 0 < abs(perturbed[0]) <= roundoff[0]
