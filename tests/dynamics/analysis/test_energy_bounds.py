"""The bounds of uhn.dynamics.analysis.energy.verify_energy, each probed just above and just below.

tools/mutate.py found these mutants of dynamics/analysis/energy.py surviving (docs/testing.md, "Remaining
survivors and why"): the default ``diverge_factor``, the ``an > slack`` sign test, the pilot step
and the E''' estimate that choose the finite-difference step, the step count assumed for a method
without a known stage count, and the fixed-step (brian2) error model. Each test below plants a
state, an error or a deviation on either side of one bound and checks the verdict, and compares
the numbers the report gives with the docstring's formula evaluated here by hand. Inputs are
dyadic where possible, so the flows and energies are exact in floating point unless a comment
says otherwise; every tolerance is an error estimate stated next to it.
"""
from math import factorial, sqrt

import numpy as np
import pytest

from uhn.dynamics import lagrangians as L
from uhn.dynamics.analysis.energy import FD_SAFETY, ROUNDOFF_ULPS, verify_energy
from uhn.dynamics.integrate import integrate
from uhn.dynamics.trajectory import Trajectory
from uhn.dynamics.network import Network

EPS = np.finfo(np.float64).eps
FLOW_VIOLATION = "the samples do not solve this network's ODE"
#: bound on the steps the check's own DOP853 reference takes over one window (rtol_ref <= 1e-10,
#: an 8th-order method: ~ |lambda| (t1 - t0) rtol_ref^(-1/8) ~ 20-70 steps on the flows below)
REF_STEPS_MAX = 1000


def _trajectory(net, t, Y, method, params, adiabatic=False):
    """A hand-made Trajectory through the states Y (T, B, W) at times t, with E and dE/dt stored
    from ``net``'s own formulas, one sample at a time (what verify_energy recomputes: the same
    formula on the same states, so the stored-value check sees no difference)."""
    Y = np.asarray(Y, dtype=np.float64)
    B, D = Y.shape[1], net.D
    v = Y if adiabatic else Y[..., :D]
    if adiabatic:
        h = np.stack([net.similarity(net.L_v.grad(vk)) for vk in v])
        E = np.stack([net.energy_adiabatic(vk) for vk in v])
        dE = np.stack([net.dEdt_adiabatic(vk) for vk in v])
    else:
        h = Y[..., D:]
        E = np.stack([net.energy(vk, hk) for vk, hk in zip(v, h)])
        dE = np.stack([net.dEdt(vk, hk) for vk, hk in zip(v, h)])
    return Trajectory(t=np.asarray(t, dtype=np.float64), v=v, h=h, E=E, dEdt=dE, I=np.zeros((B, D)),
                      converged=np.zeros(B, bool), method=method, backend="hand-made",
                      adiabatic=adiabatic, params=params)


# ------------------------------------------------------------------ 6. diverging (diverge_factor)
def _growing(factor):
    """D = N = 1, M = 2, dot similarity, quadratic L_v and L_h, tau_v = tau_h = 1: dv/dt = 2h - v,
    dh/dt = 2v - h, so from v = h = 1 the state is e^t (1, 1) and |v| grows by ``factor`` at
    t = log(factor); E = v^2/2 + h^2/2 - 2 v h = -e^(2t) falls without bound."""
    net = Network(np.array([[2.0]]), "dot", L_v=L.quadratic(), L_h=L.quadratic(), tau_v=1.0, tau_h=1.0)
    return net, integrate(net, np.array([1.0]), np.log(factor), h0=np.array([[1.0]]))


def test_default_diverge_factor_is_1000():
    """|v| from 1 to 1000.5 (RK45 at rtol 1e-8 over ~70 steps: relative error ~1e-6, far inside
    the 5e-4 that separates it from 1000 and 1001; asserted exactly below) is a runaway with the
    documented default diverge_factor = 1e3, and not one against 1001; from 1 to 999.5 it is not."""
    net, above = _growing(1000.5)
    n1 = abs(above.v[-1, 0, 0])
    assert 1000 < n1 < 1001 and not above.converged[0]
    rep = verify_energy(net, above)
    assert rep.diverging.startswith(f"|v| grew from 1 to {n1:.3g} by t={above.t[-1]:.6g} (query 0)")
    assert not rep.passed and rep.violations == [f"the trajectory diverges: {rep.diverging}; 1 of 1 queries"]
    assert verify_energy(net, above, diverge_factor=1001.0).diverging == ""
    net, below = _growing(999.5)
    assert 999 < abs(below.v[-1, 0, 0]) < 1000
    assert verify_energy(net, below).diverging == ""
    assert verify_energy(net, below, diverge_factor=999.0).diverging != ""


# ------------------------------------------------------------------ 2. sign of the analytic dE/dt
def _origin_net(cls=Network):
    """Adiabatic, dot similarity, quadratic L_v and L_h: at v = 0 (I = 0) g = S = f = 0, so the
    velocity, dE/dt and every term its round-off estimate adds up are exactly 0: slack = 0."""
    return cls(np.array([[0.5, 0.25], [0.0, 1.0]]), "dot", L_v=L.quadratic(), L_h=L.quadratic())


class _PositiveDEdt(Network):
    """dE/dt planted one subnormal above 0 (5e-324, the smallest positive double) for every query
    but the first of a batch: the smallest possible excess over a slack of exactly 0."""

    def dEdt_adiabatic(self, v, I=None):
        out = super().dEdt_adiabatic(v, I)
        out[1:] = 5e-324
        return out


def test_zero_dEdt_at_an_exact_fixed_point_is_no_violation():
    """dE/dt <= 0 is the theorem: at a fixed point dE/dt = 0 exactly, with a round-off allowance of
    exactly 0 (nothing is added), must pass; ``an > slack`` is the test, not ``>=``."""
    net = _origin_net()
    tr = integrate(net, np.zeros((2, 2)), 1.0, adiabatic=True, n_samples=3, stop_at_fixed_point=False)
    assert np.all(tr.v == 0) and np.all(tr.dEdt == 0)
    rep = verify_energy(net, tr)
    assert rep.violations == [] and rep.passed, rep.summary()
    assert rep.max_dEdt == 0 and rep.sign_tol == 0


def test_dEdt_one_subnormal_above_zero_slack_is_a_violation_where_it_is():
    """Query 0 at dE/dt = -0 (= slack, not over), query 1 one subnormal over: exactly one sign
    violation, located at the first sample and query 1 (the first entry that is over)."""
    net = _origin_net(_PositiveDEdt)
    tr = _trajectory(net, [0.0, 1.0], np.zeros((2, 2, 2)), "RK45", {"rtol": 1e-8, "atol": 1e-10},
                     adiabatic=True)
    assert np.all(tr.dEdt[:, 0] == 0) and np.all(tr.dEdt[:, 1] == 5e-324)
    rep = verify_energy(net, tr)
    assert rep.violations == ["analytic dE/dt = 4.941e-324 > 0 at t=0 (query 1)"], rep.summary()
    assert rep.max_dEdt == 5e-324 and rep.sign_tol == 0 and rep.dEdt_at == (0, 0.0, 1)


# ------------------------------------------------------------------ 3. the finite-difference step
# D = N = 1, M = 1, dot similarity, quadratic L_v, L_h = max(h, 0)^3 / 3 (f = h^2 for h > 0),
# tau_v = 1, tau_h = 1/256. For h > 0
#     E = v^2/2 + (2/3) h^3 - h^2 v,  a = dv/dt = h^2 - v,  b = dh/dt = 256 (v - h),
# a cubic in the state, so along the flow E(y + s ydot) is a cubic in s: the central difference
# fd(s) = E' + E''' s^2 / 6 exactly (no O(s^4) term), E''' = 4 b^3 - 6 a b^2.
FD_V, FD_H = 1 / 8, 1 / 16
FD_A, FD_B = -31 / 256, 16.0                  # exact: 1/256 - 1/8 and 256 (1/8 - 1/16)
FD_E3 = 4 * FD_B ** 3 - 6 * FD_A * FD_B ** 2  # 16570, exact


class _OffsetDEdt(Network):
    """The analytic dE/dt with a planted error ``delta`` added."""

    delta = 0.0

    def dEdt(self, v, h, I=None):
        return super().dEdt(v, h, I) + self.delta


def _cubic_net(cls=Network):
    return cls(np.array([[1.0]]), "dot", L_v=L.quadratic(), L_h=L.rectified_polynomial(2.0),
               tau_v=1.0, tau_h=1 / 256)


def _cubic_size(v, h):
    """size(E) (uhn.dynamics.analysis.energy._energy_and_size's docstring) of the cubic net at (v, h > 0):
    |v g| + size(L_v) + |h f| + size(L_h) + |f| (|S| + (|m| + |g|)^2) with g = v, L_v = v^2/2,
    f = h^2, L_h = h^3/3, S = v, |m| = 1."""
    return v * v + v * v / 2 + h ** 3 + h ** 3 / 3 + h * h * (abs(v) + (1 + abs(v)) ** 2)


def _size_E(s):
    """The cubic net's size(E) at the largest of y +- s ydot, y +- 2 s ydot (y = (FD_V, FD_H))."""
    return max(_cubic_size(FD_V + k * s * FD_A, FD_H + k * s * FD_B) for k in (-2, -1, 1, 2))


def _fd_step_by_hand():
    """The docstring's step: pilot s0 = eps^(1/3) tau with tau = max(1, |y|) / |ydot| (= 1/16),
    |E'''| from the pilot pair, s = (3 ROUNDOFF_ULPS eps size / |E'''|)^(1/3) within
    [s0/10, 10 s0]; and how far the pilot's E''' can be off: the pilot pair is exact but for
    round-off, R(s0) + R(2 s0) = 1.5 ROUNDOFF_ULPS eps size / s0 on the difference
    fd(2 s0) - fd(s0) = E''' s0^2 / 2, a relative error delta, so s (~ E'''^(-1/3)) lies within
    [(1 + delta)^(-1/3), (1 - delta)^(-1/3)] times the exact one."""
    s0 = EPS ** (1 / 3) * max(1.0, FD_V, FD_H) / max(abs(FD_A), abs(FD_B))
    z0 = _size_E(s0)
    s = np.cbrt(3 * ROUNDOFF_ULPS * EPS * z0 / FD_E3)
    delta = 1.5 * ROUNDOFF_ULPS * EPS * z0 / s0 / (FD_E3 * s0 ** 2 / 2)
    lo, hi = s * (1 + delta) ** (-1 / 3), s * (1 - delta) ** (-1 / 3)
    assert delta < 0.1 and s0 / 10 < lo and hi < 10 * s0      # the clip is inactive: s = s_opt
    return lo, hi


def _fd_bounds_by_hand():
    """Intervals for the reported round-off R = ROUNDOFF_ULPS eps size / s and truncation
    T = |fd(s) - fd(2 s)| / 3 = |E'''| s^2 / 6 +- (R(s) + R(2 s)) / 3 (each fd carries round-off
    up to its R; R(2 s) = R(s) / 2 to the size's change over 2 s ydot, < 1e-5 relative)."""
    lo, hi = _fd_step_by_hand()
    r = [ROUNDOFF_ULPS * EPS * min(_size_E(lo), _size_E(hi)) / hi,
         ROUNDOFF_ULPS * EPS * max(_size_E(lo), _size_E(hi)) / lo]
    t = [FD_E3 * lo ** 2 / 6 - r[1] / 2, FD_E3 * hi ** 2 / 6 + r[1] / 2]
    return r, t


def _one_sample(net):
    return _trajectory(net, [0.0], [[[FD_V, FD_H]]], "RK45", {"rtol": 1e-8, "atol": 1e-10})


def test_fd_step_balances_roundoff_and_truncation():
    """The reported round-off and truncation of the central difference are those of the step the
    docstring prescribes (pilot eps^(1/3) tau, E''' from the pilot pair): R within the pilot's
    error of E''' (about 3 %), T within the fd's own round-off; a pilot of eps^(1/3) |y| |ydot|
    or an E''' divided by 2 s0 instead of s0^2 moves the step, hence R and T, by factors > 3."""
    net = _cubic_net()
    dv, dh = net.rhs(np.array([[FD_V]]), np.array([[FD_H]]))
    assert (dv[0, 0], dh[0, 0]) == (FD_A, FD_B)
    rep = verify_energy(net, _one_sample(net))
    assert rep.passed, rep.summary()
    (r_lo, r_hi), (t_lo, t_hi) = _fd_bounds_by_hand()
    assert r_lo <= rep.fd_roundoff <= r_hi
    assert t_lo <= rep.fd_truncation <= t_hi


@pytest.mark.parametrize("side", ["above", "below"])
def test_fd_planted_error_against_the_allowed_by_hand(side):
    """An error planted in the analytic dE/dt at twice the largest allowed value by hand,
    FD_SAFETY (R + T + round-off of dE/dt), is reported; at half the smallest it is not. The
    analytic-vs-fd difference of the honest value is at most T + R (the fd's truncation and
    round-off), a tenth of the allowed, so neither side is near the verdict's threshold."""
    net = _cubic_net(_OffsetDEdt)
    an_roundoff = verify_energy(net, _one_sample(net)).sign_tol / FD_SAFETY  # dE/dt's own, ~5e-15
    (r_lo, r_hi), (t_lo, t_hi) = _fd_bounds_by_hand()
    allowed_lo = FD_SAFETY * (r_lo + max(t_lo, 0.0) + an_roundoff)
    allowed_hi = FD_SAFETY * (r_hi + t_hi + an_roundoff)
    net.delta = 2 * allowed_hi if side == "above" else allowed_lo / 2
    rep = verify_energy(net, _one_sample(net))
    if side == "above":
        assert not rep.passed and rep.fd_ratio > 1 and rep.fd_at == (0, 0.0, 0)
        assert [v for v in rep.violations if "differs from the finite difference" in v] == rep.violations
        assert len(rep.violations) == 1
    else:
        assert rep.passed and rep.fd_ratio <= 1, rep.summary()


# ------------------------------------------------------------------ 4. flow model, unknown method
def test_unknown_method_allows_one_step_per_evaluation():
    """Radau (not in the stage table): at least one right-hand-side evaluation per step, so the
    window has at most nfev steps and the allowed deviation is
    FLOW_SAFETY nfev sqrt(B W) (atol + rtol |y|) plus the reference's own error.

    Net: D = N = 1, M = 1, quadratic L_v and L_h, tau = 1: dv/dt = h - v, dh/dt = v - h, so every
    v = h is a fixed point with E = (v - h)^2 / 2 = 0. Samples (0, 0) at t = 0 and (d, d) at t = 1:
    the re-integration from 0 stays exactly at 0, so the deviation is d exactly, and E, dE/dt and
    the finite differences are exactly 0: the flow check is the only one that can object. d is
    planted at r times the allowed by hand, d = r FD_SAFETY K (atol + rtol d), K = nfev sqrt(2)."""
    net = _quad_net()
    rtol = atol = 2.0 ** -10
    nfev = 8
    K = nfev * sqrt(2)
    # the reference's term: (atol_ref + rtol_ref |y|) sqrt(2) per reference step, with rtol_ref =
    # clip(rtol / 1000, 1e-13, 1e-10) = 1e-10 and atol_ref = 1e-12, at most 1e-10 / 2^-10 ~ 1e-7 of
    # the model's term per step; over <= REF_STEPS_MAX reference steps against nfev model steps
    rho = 1e-10 / 2.0 ** -10 * REF_STEPS_MAX / nfev
    for r in (0.9, 1.1):
        d = r * FD_SAFETY * K * atol / (1 - r * FD_SAFETY * K * rtol)
        tr = _trajectory(net, [0.0, 1.0], [[[0.0, 0.0]], [[d, d]]], "Radau",
                         {"rtol": rtol, "atol": atol, "nfev": nfev})
        rep = verify_energy(net, tr)
        # ratio = d / (allowed by hand + reference term): r / (1 + rho) <= ratio <= r (to rounding)
        assert r / (1 + rho) <= rep.flow_ratio <= r * (1 + 8 * EPS)
        assert rep.flow_deviation == d and rep.flow_checked == 1
        assert rep.flow_model == "Radau, rtol 0.000976562, atol 0.000976562, <= nfev / 1 steps per window"
        flow = [v for v in rep.violations if FLOW_VIOLATION in v]
        assert flow == rep.violations and len(flow) == (r > 1)
    assert "1.1 times the allowed" in flow[0]


# ------------------------------------------------------------------ 4. flow model, fixed step
def test_fixed_step_error_model_of_a_leapfrog_run():
    """brian2-style params (dt, scheme = leapfrog: order p = 2): the allowed deviation over a
    window of n = (t1 - t0) / dt steps is FLOW_SAFETY times
        n dt^(p+1) |y^(p+1)| / (p+1)!  +  dt^p |y^(p)|
    (|y^(j)| over the window, from differences of F at spacing dt; with tau_min = 1 the
    tau-scaled forms y^(j) / tau^(p+1-j) of the code's comment are the plain maxima over j).

    Net: D = N = 1, M = 1/2, quadratic L_v and L_h, tau_v = tau_h = 1: dy/dt = A y with
    A = [[-1, 1/2], [1/2, -1]]; from y0 = (1, -1), an eigenvector, y = e^(lambda t) y0 with
    lambda = -3/2, so F = lambda y and its (j-1)-th difference at spacing dt is largest at the
    window's start: |y^(j)| = (3/2) q^(j-1) with q = (1 - e^(lambda dt)) / dt. dt = 1/64, a window
    [0, 2]: n = 128 steps, so the model is dt^2 (128 dt (3/2) q^2 / 6 + (3/2) q). The second sample
    is the exact e^(2 lambda) y0 with a deviation planted on v at 0.9 and 1.1 times FLOW_SAFETY
    times the model."""
    net = Network(np.array([[0.5]]), "dot", L_v=L.quadratic(), L_h=L.quadratic(), tau_v=1.0, tau_h=1.0)
    dt, t1, p = 2.0 ** -6, 2.0, 2
    lam = -1.5
    q = -np.expm1(lam * dt) / dt
    deriv = [1.5 * q ** (j - 1) for j in range(1, p + 2)]          # |y'|, |y''|, |y'''|
    model = (t1 / dt) * dt ** (p + 1) * max(deriv) / factorial(p + 1) + dt ** p * max(deriv[:p])
    # what separates the report from FLOW_SAFETY model: the reference's error eps_ref per state
    # component, <= REF_STEPS_MAX (atol_ref + rtol_ref |y|) at rtol_ref = 1e-11, atol_ref = 1e-13,
    # |y| <= 1: it enters the second differences of F (|A|_inf = 3/2) as 4 (3/2) eps_ref / dt^2
    # against |y'''| = (3/2) q^2, and the allowance itself as its own term,
    # eps_ref_step sqrt(2) REF_STEPS_MAX; and the sample's own deviation from the exact solution
    # (eps_ref again, against the planted d)
    eps_ref = REF_STEPS_MAX * (1e-13 + 1e-11)
    rel = 4 * eps_ref / dt ** 2 / q ** 2 + eps_ref * sqrt(2) / model + eps_ref / (0.9 * FD_SAFETY * model)
    assert rel < 1e-3
    y1 = np.exp(lam * t1) * np.array([1.0, -1.0])
    for r in (0.9, 1.1):
        d = r * FD_SAFETY * model
        tr = _trajectory(net, [0.0, t1], [[[1.0, -1.0]], [y1 + [d, 0.0]]], "leapfrog/exact",
                         {"dt": dt, "scheme": "leapfrog"})
        rep = verify_energy(net, tr)
        assert rep.flow_model == "fixed step dt = 0.015625, order 2" and rep.flow_at == (0, 0.0, 0)
        assert abs(rep.flow_tol / (FD_SAFETY * model) - 1) <= rel
        assert abs(rep.flow_ratio / r - 1) <= 2 * rel
        flow = [v for v in rep.violations if FLOW_VIOLATION in v]
        assert flow == rep.violations and len(flow) == (r > 1)
    assert "re-integrated from t=0 to t=2 (query 0), state component 0" in flow[0]


# ------------------------------------------------------------------ the size and round-off formulas
# A second full mutation run of dynamics/analysis/energy.py (docs/testing.md, "Full runs with --select
# coverage") left the terms of the round-off estimates, the reports of degenerate trajectories and
# several verdict thresholds unchecked; the tests below pin each.
def _size_net():
    """D = 2, N = 3, dot similarity, quadratic L_v, log-sum-exp L_h (beta = 2: a Hessian with
    off-diagonal terms), tau_v = 4 and tau_h = 1/4 (a dropped or inverted tau changes every term),
    and an input current I."""
    M = np.array([[1.0, -0.5], [0.25, 2.0], [-1.5, 0.75]])
    return Network(M, "dot", L_v=L.quadratic(), L_h=L.log_sum_exp(2.0), tau_v=4.0, tau_h=0.25)


_SIZE_Y = np.array([[0.5, -1.25, 0.3, -0.7, 1.1], [2.0, 0.125, -0.4, 0.9, 0.05]])
_SIZE_I = np.array([[0.25, -0.5], [1.0, 0.75]])


def _energy_size_by_hand(net, y, I, adiabatic):
    """_energy_and_size's docstring term by term, one query, explicit loops:
    sum_i |v_i g_i| + size(L_v) + sum_i |I_i g_i| + sum_mu |h_mu f_mu| + size(L_h)
    + sum_mu |f_mu| (|S_mu| + (|m_mu| + |g|)^2), with h = S(g) when adiabatic."""
    D, N = net.D, net.N
    v = y[:D]
    g = v                                              # quadratic L_v
    S = np.array([sum(net.M[mu, i] * g[i] for i in range(D)) for mu in range(N)])
    h = S if adiabatic else y[D:]
    f = net.L_h.grad(h[None])[0]
    gn = np.sqrt(sum(x * x for x in g))
    size = sum(abs(v[i] * g[i]) + abs(I[i] * g[i]) for i in range(D)) + net.L_v.value_size(v[None])[0]
    size += sum(abs(h[mu] * f[mu]) for mu in range(N)) + net.L_h.value_size(h[None])[0]
    size += sum(abs(f[mu]) * (abs(S[mu]) + (np.linalg.norm(net.M[mu]) + gn) ** 2) for mu in range(N))
    return size


@pytest.mark.parametrize("adiabatic", [False, True])
def test_energy_size_term_by_term(adiabatic):
    """The size of E's terms (what its round-off allowance scales) equals the docstring's sum
    evaluated term by term, to the round-off of a sum of about 20 positive terms (32 eps)."""
    from uhn.dynamics.analysis.energy import _energy_and_size
    net = _size_net()
    Y = _SIZE_Y[:, :net.D] if adiabatic else _SIZE_Y
    E, size = _energy_and_size(net, Y, _SIZE_I, adiabatic)
    expected = [_energy_size_by_hand(net, y, I, adiabatic) for y, I in zip(Y, _SIZE_I)]
    np.testing.assert_allclose(size, expected, rtol=32 * EPS, atol=0)
    E_ref = net.energy_adiabatic(Y, _SIZE_I) if adiabatic else net.energy(Y[:, :2], Y[:, 2:], _SIZE_I)
    np.testing.assert_array_equal(E, E_ref)


def _dEdt_roundoff_by_hand(net, y, F, I, adiabatic):
    """_dEdt_and_size's docstring term by term, one query: the velocity's round-off
    dF_v = U eps (sum_mu |f_mu| |M_mu,i| + |f|_1 |g_i| + |v_i| + |I_i|) / tau_v and
    dF_h = U eps (|S_mu| + (|m_mu| + |g|)^2 + |h_mu|) / tau_h; size = tau_v |F_v| . H_v(F_v) +
    tau_h |F_h| . H_h(F_h) (H = hvp_size); round-off = U eps size + sum over both layers of
    tau (2 H(F) . dF + H(dF) . dF)."""
    U = ROUNDOFF_ULPS * EPS
    D, N = net.D, net.N
    v, g = y[:D], y[:D]
    S = net.M @ g
    h = S if adiabatic else y[D:]
    f = net.L_h.grad(h[None])[0]
    gn = np.linalg.norm(g)
    dFv = np.array([U * (sum(abs(f[mu]) * abs(net.M[mu, i]) for mu in range(N)) + sum(abs(f)) * abs(g[i])
                         + abs(v[i]) + abs(I[i])) / net.tau_v for i in range(D)])
    layers = [(net.L_v, v, F[:D], dFv, net.tau_v)]
    if not adiabatic:
        dFh = np.array([U * (abs(S[mu]) + (np.linalg.norm(net.M[mu]) + gn) ** 2 + abs(h[mu])) / net.tau_h
                        for mu in range(N)])
        layers.append((net.L_h, h, F[D:], dFh, net.tau_h))
    size = prop = 0.0
    for lag, x, Fx, dF, tau in layers:
        H = lag.hvp_size(x[None], Fx[None])[0]
        size += tau * sum(abs(Fx) * H)
        prop += tau * (2 * sum(H * dF) + sum(lag.hvp_size(x[None], dF[None])[0] * dF))
    return size, U * size + prop


@pytest.mark.parametrize("adiabatic", [False, True])
def test_dEdt_size_and_roundoff_term_by_term(adiabatic):
    """Size and round-off of the analytic dE/dt against the docstring, term by term, on a moving
    query and on one whose velocity is exactly 0 (there the round-off is the second-order term
    tau H(dF) . dF alone: its sign matters). Each side sums a few dozen positive terms in another
    order: 64 eps relative."""
    from uhn.dynamics.analysis.energy import _dEdt_and_size
    net = _size_net()
    Y = _SIZE_Y[:, :net.D] if adiabatic else _SIZE_Y
    F = net.velocity(Y, _SIZE_I, adiabatic)
    F[1] = 0.0
    an, size, roundoff = _dEdt_and_size(net, Y, F, _SIZE_I, adiabatic)
    by_hand = np.array([_dEdt_roundoff_by_hand(net, y, Fy, I, adiabatic) for y, Fy, I in zip(Y, F, _SIZE_I)])
    assert size[1] == 0 and roundoff[1] > 0
    np.testing.assert_allclose(size, by_hand[:, 0], rtol=64 * EPS, atol=0)
    np.testing.assert_allclose(roundoff, by_hand[:, 1], rtol=64 * EPS, atol=0)
    an_ref = net.dEdt_adiabatic(Y, _SIZE_I) if adiabatic else net.dEdt(Y[:, :2], Y[:, 2:], _SIZE_I)
    np.testing.assert_array_equal(an, an_ref)


def test_fd_allowed_is_safety_times_roundoff_truncation_and_analytic_roundoff():
    """allowed = FD_SAFETY (R + T + round-off of dE/dt) (verify_energy's fd_safety): on the cubic
    net's one sample the report gives allowed / |dE/dt| (fd_tol), R, T and FD_SAFETY times dE/dt's
    round-off (sign_tol), so fd_tol |dE/dt| = FD_SAFETY (R + T) + sign_tol to a few roundings."""
    net = _cubic_net()
    rep = verify_energy(net, _one_sample(net))
    lhs = rep.fd_tol * abs(rep.max_dEdt)
    rhs = FD_SAFETY * (rep.fd_roundoff + rep.fd_truncation) + rep.sign_tol
    assert rep.sign_tol > 0
    assert abs(lhs - rhs) <= 8 * EPS * rhs


def test_fd_error_between_one_and_two_allowed_is_a_violation():
    """An error planted at 1.5 times the allowed (read off an honest run; the honest difference is
    at most R + T + round-off, a tenth of the allowed, so the ratio lies in [1.4, 1.6]) is reported."""
    net = _cubic_net(_OffsetDEdt)
    honest = verify_energy(net, _one_sample(net))
    net.delta = 1.5 * honest.fd_tol * abs(honest.max_dEdt)
    rep = verify_energy(net, _one_sample(net))
    assert 1.4 <= rep.fd_ratio <= 1.6 and not rep.passed
    assert len(rep.violations) == 1 and "differs from the finite difference" in rep.violations[0]


def test_single_sample_report_has_nothing_to_compare():
    """One sample: no increase (0, relative 0, tolerance atol_floor), no window to re-integrate
    (every flow field 0, its model says why), no sampled E(t) to differentiate (NaN)."""
    net = _cubic_net()
    rep = verify_energy(net, _one_sample(net), atol_floor=2.0 ** -40)
    assert rep.passed, rep.summary()
    assert (rep.max_increase, rep.max_increase_relative, rep.increase_tol) == (0.0, 0.0, 2.0 ** -40)
    assert rep.increase_at == (0, 0.0, 0)
    assert (rep.flow_ratio, rep.flow_deviation, rep.flow_tol, rep.flow_checked) == (0.0, 0.0, 0.0, 0)
    assert rep.flow_at == (0, 0.0, 0) and rep.flow_model == "single sample: nothing to re-integrate"
    assert np.isnan(rep.sampled_fd_max_error)


def test_exact_fixed_point_is_not_a_moving_sample():
    """At the origin net's exact fixed point the velocity is 0: no finite difference is taken
    (fd_checked 0) and nothing is reported as its error (ratio, round-off and truncation 0)."""
    net = _origin_net()
    tr = integrate(net, np.zeros((2, 2)), 1.0, adiabatic=True, n_samples=3, stop_at_fixed_point=False)
    rep = verify_energy(net, tr)
    assert rep.fd_checked == 0
    assert (rep.fd_ratio, rep.fd_roundoff, rep.fd_truncation) == (0.0, 0.0, 0.0)


# D = N = 1, M = 1, dot similarity, quadratic L_v and L_h: E = (v - h)^2 / 2, every v = h a fixed
# point. Samples with v - h = 16 + k d: E from 128 up, each step E rises by about 16 d.
def _quad_net():
    return Network(np.array([[1.0]]), "dot", L_v=L.quadratic(), L_h=L.quadratic(), tau_v=1.0, tau_h=1.0)


def _rising(n, d, params):
    net = _quad_net()
    Y = [[[16.0 + k * d, 0.0]] for k in range(n)]
    return net, _trajectory(net, np.arange(float(n)), Y, "RK45", params)


def _rises(rep):
    return [v for v in rep.violations if v.startswith("E rose") or v.startswith("... and")]


def test_increase_tolerance_is_relative_to_E_with_default_rtol():
    """tol = rtol_factor rtol max(|E|, 1) + atol_floor with rtol = 1e-8 when the trajectory records
    none: at E = 128, 10 * 1e-8 * 128 + 1e-12 = 1.28e-5. Two samples (the smallest trajectory with
    an increase): a rise of 16 * 2^-24 ~ 9.5e-7 is inside; 16 * 2^-19 ~ 3.1e-5 is over, reported
    with its tolerance and its size relative to |E| = 128."""
    for d, over in ((2.0 ** -24, False), (2.0 ** -19, True)):
        net, tr = _rising(2, d, {"atol": 1e-10, "nfev": 8})
        rep = verify_energy(net, tr)
        rise = tr.E[1, 0] - tr.E[0, 0]
        assert rep.max_increase == rise and rep.increase_tol == 10 * 1e-8 * 128 + 1e-12
        assert rep.max_increase_relative == rise / 128
        assert _rises(rep) == ([f"E rose by {rise:.3e} from t=0 to t=1 (query 0); tolerance 1.280e-05"]
                               if over else [])


@pytest.mark.parametrize("n", [6, 7])
def test_increase_messages_list_five_then_count_the_rest(n):
    """n - 1 rises over tolerance: five are listed; a sixth is counted as '... and 1 more'."""
    net, tr = _rising(n, 2.0 ** -19, {"rtol": 1e-8, "atol": 1e-10, "nfev": 8})
    msgs = _rises(verify_energy(net, tr))
    assert len([m for m in msgs if m.startswith("E rose")]) == 5
    assert msgs[5:] == (["... and 1 more increases above tolerance"] if n == 7 else [])


@pytest.mark.parametrize("n", [2, 3])
def test_sampled_dEdt_needs_three_samples(n):
    """np.gradient of E(t) is compared with dE/dt from three samples on (NaN with two)."""
    net, tr = _rising(n, 2.0 ** -19, {"rtol": 1e-8, "atol": 1e-10, "nfev": 8})
    s = verify_energy(net, tr).sampled_fd_max_error
    assert np.isnan(s) if n == 2 else np.isfinite(s)


def test_growth_below_the_factor_from_a_large_start_is_no_runaway():
    """|v| from 100 to 200 at fixed points v = h (E = 0 throughout): a factor 2, far below
    diverge_factor = 1000 times max(|v(0)|, 1) = 1e5: not diverging."""
    net = _quad_net()
    tr = _trajectory(net, [0.0, 1.0], [[[100.0, 100.0]], [[200.0, 200.0]]], "RK45",
                     {"rtol": 1e-8, "atol": 1e-10, "nfev": 8})
    assert verify_energy(net, tr).diverging == ""


def test_default_window_budget_is_40():
    """A 101-sample run of one query re-integrates 40 windows by default (max_windows = 40)."""
    net = _quad_net()
    tr = integrate(net, np.array([1.0]), 2.0, n_samples=101, stop_at_fixed_point=False)
    assert len(tr.t) == 101
    assert verify_energy(net, tr, flow_budget=np.inf).flow_checked == 40


@pytest.mark.parametrize("method, scheme", [("RK45", "RK45"), ("RK23", "RK23"), ("DOP853", "DOP853"),
                                            ("RK45-batched", "RK45"), ("reduced", "RK45")])
def test_flow_model_counts_steps_by_scipy_stage_count(method, scheme):
    """The flow model bounds a window's steps by nfev / (right-hand-side evaluations per step),
    scipy's own n_stages for its explicit Runge-Kutta methods (6, 3, 12); the batched and the
    reduced integrators step with the same Dormand-Prince pair as RK45."""
    import scipy.integrate
    net = _quad_net()
    tr = integrate(net, np.array([1.0]), 1.0, method=method, n_samples=5, stop_at_fixed_point=False)
    stages = getattr(scipy.integrate, scheme).n_stages
    assert verify_energy(net, tr).flow_model.endswith(f"<= nfev / {stages} steps per window")


def test_brian2_default_scheme_is_first_order():
    """A fixed-step trajectory of brian2's default scheme (uhn.dynamics.backends.brian2_rate: first order in
    dt) is judged with the order-1 error model."""
    net = _quad_net()
    tr = _trajectory(net, [0.0, 1.0], [[[1.0, 1.0]], [[1.0, 1.0]]], "brian2", {"dt": 2.0 ** -6, "scheme": "default"})
    assert verify_energy(net, tr).flow_model == "fixed step dt = 0.015625, order 1"


def test_reduced_method_error_norm_counts_its_own_variables():
    """uhn.dynamics.solvers.reduced controls the error of (a, h, e), 2N + 1 numbers per query: its flow model
    is FLOW_SAFETY amp (nfev / 6) sqrt(2N + 1) (atol + rtol |y|) (amp = max(1, max_i sum_mu
    |M_mu,i|) = 1 here). Net: _quad_net (N = 1: sqrt 3; every v = h a fixed point); samples
    (0, 0) and (d, d), so the deviation is d exactly (as in the Radau test above), planted at 0.9
    and 1.1 times the model (the reference's term is below 1e-6 of it)."""
    net = _quad_net()
    rtol = atol = 2.0 ** -10
    nfev = 12
    K = (nfev / 6) * sqrt(3)
    for r in (0.9, 1.1):
        d = r * FD_SAFETY * K * atol / (1 - r * FD_SAFETY * K * rtol)
        tr = _trajectory(net, [0.0, 1.0], [[[0.0, 0.0]], [[d, d]]], "reduced",
                         {"rtol": rtol, "atol": atol, "nfev": nfev})
        rep = verify_energy(net, tr)
        assert r / (1 + 1e-6) <= rep.flow_ratio <= r * (1 + 8 * EPS)
        assert len([v for v in rep.violations if FLOW_VIOLATION in v]) == (r > 1)


def test_window_after_a_query_stopped_is_not_checked():
    """RK45-batched holds a stopped query's state: with t_final_per_query = 0.5 at samples
    t = 0, 0.5, 1 the window [0.5, 1] ends where it starts (t1 = min(1, 0.5)) and is skipped: one
    window checked. (The state sits at the fixed point v = h = 1 throughout.)"""
    net = _quad_net()
    tr = _trajectory(net, [0.0, 0.5, 1.0], [[[1.0, 1.0]]] * 3, "RK45-batched",
                     {"rtol": 1e-8, "atol": 1e-10, "t_final_per_query": [0.5], "nfev_per_query": [8]})
    rep = verify_energy(net, tr)
    assert rep.passed, rep.summary()
    assert rep.flow_checked == 1


def test_sign_check_reports_the_sample_closest_to_violating():
    """dEdt_at names the sample with the largest dE/dt - slack. Query 0 at v = 1000 + 2^-43, h = 1000
    (exact: 2^-43 is 1000's ulp): dE/dt = -2 (2^-43)^2 ~ -2.6e-26, but a slack of about 1e-23 from
    the large state; query 1 at v = h = 0: dE/dt = 0 with a slack of only the second-order term of
    dh's round-off (FD_SAFETY tau_h (U eps |m|^2)^2 ~ 8e-30). Query 1 is the closer (-8e-30 > -1e-23)."""
    net = _quad_net()
    d = 2.0 ** -43
    tr = _trajectory(net, [0.0], [[[1000.0 + d, 1000.0], [0.0, 0.0]]], "RK45", {"rtol": 1e-8, "atol": 1e-10})
    assert tr.dEdt[0, 0] == -2 * d * d and tr.dEdt[0, 1] == 0
    rep = verify_energy(net, tr)
    assert rep.passed, rep.summary()
    assert rep.dEdt_at == (0, 0.0, 1) and rep.max_dEdt == 0
    assert rep.sign_tol == FD_SAFETY * (ROUNDOFF_ULPS * EPS) ** 2


# ------------------------------------------------------------------ 3. the step when |E'''| < 1
def test_fd_step_for_a_small_third_derivative_is_the_clipped_balance():
    """The balancing step applies whenever the pilot finds E''' != 0, also below 1: on the cubic
    net at h = 2^-9, v = h^2 = 2^-18 (exact), dv/dt = h^2 - v = 0 and dh/dt = b = 256 (v - h) =
    2^-10 - 2^-1 exactly, so E''' = 4 b^3 ~ -0.497 (|E'''| < 1). tau = max(1, |y|) / |b| and
    s0 = eps^(1/3) tau; the balance s_opt = (3 ROUNDOFF_ULPS eps size / |E'''|)^(1/3) ~ 2.7e-7 lies
    below s0 / 10 ~ 1.2e-6, so s = s0 / 10 (an E''' treated as 0 would give 10 s0, 100 times
    more). The pilot's E''' is off by its round-off, 1.5 ROUNDOFF_ULPS eps size / s0 over
    |E'''| s0^2 / 2, ~1e-5 relative: far from moving s_opt across the clip (a factor 4.5).
    The reported round-off is R = ROUNDOFF_ULPS eps size / s with the size at y +- s ydot,
    y +- 2 s ydot; over 2 s |ydot| ~ 1.2e-6 the size changes by under 1e-3 relative."""
    net = _cubic_net()
    v, h = 2.0 ** -18, 2.0 ** -9
    a, b = net.rhs(np.array([[v]]), np.array([[h]]))
    assert (a[0, 0], b[0, 0]) == (0.0, 2.0 ** -10 - 0.5)
    b = b[0, 0]
    s0 = EPS ** (1 / 3) * max(1.0, v, h) / abs(b)

    z = _cubic_size(v, h)
    s_opt = np.cbrt(3 * ROUNDOFF_ULPS * EPS * z / (4 * abs(b) ** 3))
    assert s_opt < s0 / 10 / 4
    tr = _trajectory(net, [0.0], [[[v, h]]], "RK45", {"rtol": 1e-8, "atol": 1e-10})
    rep = verify_energy(net, tr)
    assert rep.passed, rep.summary()
    s = s0 / 10
    R = ROUNDOFF_ULPS * EPS * max(_cubic_size(v, h + k * s * b) for k in (-2, -1, 1, 2)) / s
    assert abs(rep.fd_roundoff / R - 1) < 1e-3
    # at 4.5 times the balancing step truncation dominates: T = |fd(s) - fd(2 s)| / 3 is
    # |E'''| s^2 / 6 exactly for this cubic, up to the two differences' round-off, (R + R/2) / 3
    T = 4 * abs(b) ** 3 * s ** 2 / 6
    assert T > 10 * R and abs(rep.fd_truncation - T) <= R / 2


# ------------------------------------------------------------------ 4. flow model: the third full run
# A full run of the second half of dynamics/analysis/energy.py's mutants (docs/testing.md) found the
# fixed-step model's time-constant weights, its step-count and reference-point floors, the
# reference tolerance and its error term, and the reduced method's norm size unchecked.
def _fixed_model_by_hand(lam, dt, t1, p, tau_min, longest=None):
    """verify_energy's fixed-step allowance (before FD_SAFETY) for the state component
    y(t) = e^(lam t) of a window [0, t1]: m = max(ceil(longest / dt), p + 1) reference points
    (``longest``: the longest window checked, default t1) at spacing delta = t1 / m; |y^(j)| = max over the points of |(j-1)-th difference of F| /
    delta^(j-1) with F = lam e^(lam t) (largest at the window's start: a decay); then
    n dt^(p+1) max_j |y^(j)| / tau_min^(p+1-j) / (p+1)! + dt^p max_(j<=p) |y^(j)| / tau_min^(p-j),
    n = max(round(t1 / dt), 1)."""
    m = max(int(np.ceil((longest or t1) / dt - 1e-9)), p + 1)
    delta = t1 / m
    F = lam * np.exp(lam * delta * np.arange(m + 1))
    deriv = [np.abs(np.diff(F, n=j - 1)).max() / delta ** (j - 1) for j in range(1, p + 2)]
    n = max(round(t1 / dt), 1)
    local = max(d / tau_min ** (p + 1 - j) for j, d in enumerate(deriv, 1))
    rec = max(d / tau_min ** (p - j) for j, d in enumerate(deriv[:p], 1))
    return n * dt ** (p + 1) * local / factorial(p + 1) + dt ** p * rec, delta, min(deriv)


@pytest.mark.parametrize("case", ["tau_h = 1/4, 16 steps", "tau = 1, one step"])
def test_fixed_step_model_weights_time_constants_and_counts_one_step_windows(case):
    """The fixed-step allowance, by hand (_fixed_model_by_hand), in two settings the leapfrog test
    above leaves open:
    * tau_v = 1, tau_h = 1/4 and M = 0: v = e^(-t) and h = 0 decouple, and the stiff layer's
      1/tau_min = 4 weights the derivatives (16 |y'| is the largest term, not |y'''|);
    * tau_v = tau_h = 1, M = 1/2 (the leapfrog test's eigenvector y = e^(-3t/2) (1, -1)) over a
      window of one step dt = 1/8: one step (not a floor of two) and p + 1 = 3 reference points
      at spacing dt / 3 (not 4), each moving the allowance by more than 0.7 %.
    The sample after the window is the exact state plus a deviation on v planted at 0.9 and 1.1
    times FD_SAFETY times the allowance. What separates the report from that: the reference's
    error e_ref <= REF_STEPS_MAX (1e-13 + 1e-11) per component, which enters the allowance as its
    own term (e_ref sqrt(2)) and the differences of F (|A|_inf <= 4) as up to 4 |A| e_ref / delta^2
    on the smallest |y^(j)|: rel below, under 1e-3 in both cases."""
    if case.startswith("tau_h"):
        net = Network(np.zeros((1, 1)), "dot", L_v=L.quadratic(), L_h=L.quadratic(), tau_v=1.0, tau_h=0.25)
        lam, y0, dt, t1, tau_min = -1.0, np.array([1.0, 0.0]), 2.0 ** -6, 0.25, 0.25
    else:
        net = Network(np.array([[0.5]]), "dot", L_v=L.quadratic(), L_h=L.quadratic(), tau_v=1.0, tau_h=1.0)
        lam, y0, dt, t1, tau_min = -1.5, np.array([1.0, -1.0]), 0.125, 0.125, 1.0
    model, delta, smallest = _fixed_model_by_hand(lam, dt, t1, 2, tau_min)
    e_ref = REF_STEPS_MAX * (1e-13 + 1e-11)
    rel = e_ref * (sqrt(2) / model + 4 * 4 / delta ** 2 / smallest)
    assert rel < 1e-3
    for r in (0.9, 1.1):
        d = r * FD_SAFETY * model
        y1 = np.exp(lam * t1) * y0 + [d, 0.0]
        tr = _trajectory(net, [0.0, t1], [[y0], [y1]], "leapfrog/exact", {"dt": dt, "scheme": "leapfrog"})
        rep = verify_energy(net, tr)
        assert rep.flow_at == (0, 0.0, 0)
        assert abs(rep.flow_tol / (FD_SAFETY * model) - 1) <= rel
        # (the one-step case's deviation, ~0.35, also raises E: only the flow verdict is asserted)
        flow = [v for v in rep.violations if FLOW_VIOLATION in v]
        assert len(flow) == (r > 1)
        assert all(v.endswith("; 1 of 1 windows x queries over") for v in flow)


def test_reference_tolerance_and_its_error_term():
    """With atol = 0 and a trajectory resting at 0 the model's term is 0, so the allowed deviation
    is FD_SAFETY times the reference's own error alone: (atol_ref + rtol_ref |y|) sqrt(rows W)
    times its steps, with rtol_ref = clip(rtol / 1000, 1e-13, 1e-10) and atol_ref = rtol_ref / 100.
    rtol = 1e-8 gives 1e-11 (not the clip's 1e-10); rtol = 1e-12 the floor 1e-13. Its steps are
    scipy's DOP853 count for the same system (nfev // 12, at least 1), one window, one query, W = 2."""
    from scipy.integrate import solve_ivp
    net = _quad_net()
    for rtol, rtol_ref in ((1e-8, 1e-11), (1e-12, 1e-13)):
        tr = _trajectory(net, [0.0, 1.0], [[[0.0, 0.0]], [[0.0, 0.0]]], "RK45",
                         {"rtol": rtol, "atol": 0.0, "nfev": 6})
        rep = verify_energy(net, tr)
        sol = solve_ivp(lambda s, y: net.velocity(y[None], None, False)[0], (0.0, 1.0), np.zeros(2),
                        method="DOP853", rtol=rtol_ref, atol=rtol_ref * 1e-2, t_eval=[0.0, 1.0])
        steps = max(1, sol.nfev // 12)
        assert rep.flow_tol == pytest.approx(FD_SAFETY * rtol_ref * 1e-2 * sqrt(2) * steps, rel=4 * EPS, abs=0)
        assert rep.passed and rep.flow_deviation == 0


def test_reduced_method_norm_size_amplification_and_one_step():
    """The reduced solver's model with N = 2 memories (its error norm over 2N + 1 = 5 numbers),
    amp = max(1, max_i sum_mu |M_mu,i|) = 2 (M = [[1, 1/4], [1, 1/4]]: column sums 2 and 1/2, the
    larger counts) and nfev = 6, one step (the floor of one, not two): allowed = FD_SAFETY amp
    sqrt(5) (atol + rtol |y|). The net is at rest at 0; samples 0 and (d, d, d, d) with d planted
    at 0.9 and 1.1 times the allowance (the reference stays at 0 exactly: the deviation is d)."""
    net = Network(np.array([[1.0, 0.25], [1.0, 0.25]]), "dot", L_v=L.quadratic(), L_h=L.quadratic(),
                  tau_v=1.0, tau_h=1.0)
    rtol = atol = 2.0 ** -10
    K = 2 * sqrt(5)
    for r in (0.9, 1.1):
        d = r * FD_SAFETY * K * atol / (1 - r * FD_SAFETY * K * rtol)
        tr = _trajectory(net, [0.0, 1.0], [[[0.0] * 4], [[d] * 4]], "reduced",
                         {"rtol": rtol, "atol": atol, "nfev": 6})
        rep = verify_energy(net, tr)
        assert r / (1 + 1e-6) <= rep.flow_ratio <= r * (1 + 8 * EPS)
        assert len([v for v in rep.violations if FLOW_VIOLATION in v]) == (r > 1)


def test_largest_increase_is_reported_where_it_is():
    """E = (16 + k d)^2 / 2 at samples k = 0, 1, 2: the second rise, (16 + 2d)^2/2 - (16 + d)^2/2
    = 16 d + 3 d^2 / 2, is the larger (by d^2), and is the one reported, at sample 1, t = 1."""
    net, tr = _rising(3, 2.0 ** -19, {"rtol": 1e-8, "atol": 1e-10, "nfev": 8})
    rises = np.diff(tr.E[:, 0])
    assert rises[1] > rises[0]
    rep = verify_energy(net, tr)
    assert rep.max_increase == rises[1] and rep.increase_at == (1, 1.0, 0)


def test_increase_between_one_and_two_tolerances_is_reported():
    """A rise of 16 * 2^-20 ~ 1.5e-5 at E = 128 is 1.19 times the tolerance 1.28e-5: reported."""
    net, tr = _rising(2, 2.0 ** -20, {"rtol": 1e-8, "atol": 1e-10, "nfev": 8})
    rep = verify_energy(net, tr)
    assert 1 < rep.max_increase / rep.increase_tol < 2
    assert len(_rises(rep)) == 1


@pytest.mark.parametrize("base", [16.0, 2.0 ** -4])
def test_sampled_dEdt_error_is_the_largest_gap_relative_to_each_querys_largest_dEdt(base):
    """sampled_fd_max_error = max over samples and queries of |np.gradient(E, t) - dE/dt| /
    max(max_t |dE/dt| of that query, 1e-12); on three samples of _quad_net with v - h = base + k d
    (h = 0) dE/dt = -2 (base + k d)^2 (quadratic Lagrangians, tau = 1) and E = (base + k d)^2 / 2,
    so the largest gap is at the last sample; base = 1/16 puts |dE/dt| below 1 (no floor there)."""
    d = 2.0 ** -19
    net = _quad_net()
    x = base + d * np.arange(3)
    tr = _trajectory(net, [0.0, 1.0, 2.0], [[[xk, 0.0]] for xk in x], "RK45",
                     {"rtol": 1e-8, "atol": 1e-10, "nfev": 8})
    E, an = x * x / 2, -2 * x * x
    grad = np.array([E[1] - E[0], (E[2] - E[0]) / 2, E[2] - E[1]])
    expected = np.max(np.abs(grad - an)) / np.max(np.abs(an))
    assert verify_energy(net, tr).sampled_fd_max_error == pytest.approx(expected, rel=16 * EPS, abs=0)


@pytest.mark.parametrize("r", [0.5, 1.5])
def test_stored_energy_error_against_its_roundoff_allowance_below_unit_size(r):
    """A stored E off by r times its allowance FD_SAFETY ROUNDOFF_ULPS eps size(E) is a violation
    iff r > 1, with stored_E_ratio = r. At (v, h) = (2^-10, 0) of _quad_net, size(E) = |v g| +
    size(L_v) = 1.5 2^-20 < 1 (the allowance has no floor at 1). The planted error, ~1.3e-20, is
    added to E = 2^-21 whose ulp is ~1e-22: r is kept to 1 %."""
    net = _quad_net()
    tr = _trajectory(net, [0.0], [[[2.0 ** -10, 0.0]]], "RK45", {"rtol": 1e-8, "atol": 1e-10})
    allowance = FD_SAFETY * ROUNDOFF_ULPS * EPS * 1.5 * 2.0 ** -20
    tr.E = tr.E + r * allowance
    rep = verify_energy(net, tr)
    assert rep.stored_E_ratio == pytest.approx(r, rel=0.01)
    stored = [v for v in rep.violations if v.startswith("stored traj.E")]
    assert len(stored) == (r > 1) and rep.passed == (r < 1)


def test_diverging_report_names_the_runaway_query():
    """Of two queries of _growing's net, the one at the origin stays there (a fixed point) and the
    one from v = h = 1 grows by 1000.5: the report names query 1."""
    net = Network(np.array([[2.0]]), "dot", L_v=L.quadratic(), L_h=L.quadratic(), tau_v=1.0, tau_h=1.0)
    tr = integrate(net, np.array([[0.0], [1.0]]), np.log(1000.5), h0=np.array([[0.0], [1.0]]))
    rep = verify_energy(net, tr)
    assert rep.diverging.startswith("|v| grew from 1 to") and "(query 1)" in rep.diverging


@pytest.mark.parametrize("r", [0.4, 2.5])
def test_flow_model_defaults_to_rtol_1e8_and_atol_1e10(r):
    """A trajectory that records neither tolerance is judged with integrate's defaults, rtol 1e-8
    and atol 1e-10: one RK45 step (nfev = 6) over a batch of one query of W = 2 components, so
    the allowance is FD_SAFETY sqrt(2) (1e-10 + 1e-8 d) plus the reference's term, which is at most
    REF_STEPS_MAX (1e-13 + 1e-11 d) sqrt(2), up to as large again: the ratio of a deviation planted
    at r times the model lies in [r / 2, r], a violation for r = 2.5 and none for r = 0.4."""
    net = _quad_net()
    K = sqrt(2)
    d = r * FD_SAFETY * K * 1e-10 / (1 - r * FD_SAFETY * K * 1e-8)
    tr = _trajectory(net, [0.0, 1.0], [[[0.0, 0.0]], [[d, d]]], "RK45", {"nfev": 6})
    rep = verify_energy(net, tr)
    assert r / 2 <= rep.flow_ratio <= r * (1 + 8 * EPS)
    assert len([v for v in rep.violations if FLOW_VIOLATION in v]) == (r > 1)


def test_stored_value_violation_names_the_worst_sample_and_its_stored_value():
    """Stored E off by 1.5 and 3 times its allowance at two queries (the state of the test above):
    the message quotes the worse one, query 1, with its stored value to 17 digits."""
    net = _quad_net()
    tr = _trajectory(net, [0.0], [[[2.0 ** -10, 0.0], [2.0 ** -10, 0.0]]], "RK45",
                     {"rtol": 1e-8, "atol": 1e-10})
    allowance = FD_SAFETY * ROUNDOFF_ULPS * EPS * 1.5 * 2.0 ** -20
    tr.E = tr.E + np.array([[1.5, 3.0]]) * allowance
    rep = verify_energy(net, tr)
    stored = [v for v in rep.violations if v.startswith("stored traj")]
    assert stored == [f"stored traj.E = {tr.E[0, 1]:.17g} at t=0 (query 1) differs from E recomputed "
                      f"from the state, {2.0 ** -21:.17g}, beyond round-off (2 samples)"]
    assert rep.stored_E_ratio == pytest.approx(3.0, rel=0.01)


def test_diverging_report_names_the_largest_growth_factor():
    """Of two runaways on _growing's net (dv/dt = 2h - v, dh/dt = 2v - h: the (1, 1) part grows as
    e^t, the (1, -1) part decays), query 0 from (1, 1) grows by 1000.5 and query 1 from (10, 6)
    by about 0.8 * 1000.5 = 800 (its (1, 1) part is 8): both exceed diverge_factor = 100, and the
    report names the larger factor, query 0 (not the larger final |v| = 8000, query 1)."""
    net = Network(np.array([[2.0]]), "dot", L_v=L.quadratic(), L_h=L.quadratic(), tau_v=1.0, tau_h=1.0)
    tr = integrate(net, np.array([[1.0], [10.0]]), np.log(1000.5), h0=np.array([[1.0], [6.0]]))
    assert abs(tr.v[-1, 1, 0]) > abs(tr.v[-1, 0, 0])
    rep = verify_energy(net, tr, diverge_factor=100.0)
    assert rep.diverging.startswith("|v| grew from 1 to") and "(query 0)" in rep.diverging


def test_stored_dEdt_ratio_is_the_largest_over_queries():
    """stored dE/dt planted off by 0.25 and 0.75 times each query's own allowance (read from an
    honest single-query report: sign_tol = FD_SAFETY times dE/dt's round-off there): the batch
    report's stored_dEdt_ratio is the larger, 0.75 (the planted errors, ~1e-20 on dE/dt ~ 1e-6,
    are kept to a few percent)."""
    net = _quad_net()
    tr = _trajectory(net, [0.0], [[[2.0 ** -10, 0.0], [2.0 ** -9, 0.0]]], "RK45",
                     {"rtol": 1e-8, "atol": 1e-10})
    allow = [verify_energy(net, tr.query(b)).sign_tol for b in range(2)]
    tr.dEdt = tr.dEdt + np.array([[0.25 * allow[0], 0.75 * allow[1]]])
    rep = verify_energy(net, tr)
    assert rep.passed and rep.stored_dEdt_ratio == pytest.approx(0.75, rel=0.05)


def test_fd_step_balances_a_small_third_derivative_inside_the_clip():
    """|E'''| < 1 with the balancing step inside [s0/10, 10 s0]: the cubic net's energy with
    tau_h = 1 (E = v^2/2 + (2/3) h^3 - h^2 v, a = dv/dt = h^2 - v, b = dh/dt = v - h) at h = 2^-3,
    v = h^2 = 2^-6 (exact: a = 0, b = -7/64), so E''' = 4 b^3 ~ -5.2e-3 and tau = 1/|b| ~ 9.1:
    s_opt = (3 ROUNDOFF_ULPS eps size / |E'''|)^(1/3) ~ 0.39 s0. The pilot resolves E''' to
    delta = 1.5 ROUNDOFF_ULPS eps size / s0 / (|E'''| s0^2 / 2) ~ 6 %, so s (~ E'''^(-1/3)) is
    within 2.1 % of s_opt and R = ROUNDOFF_ULPS eps size / s within 2.2 % (the size changes by
    < 1e-4 over y +- 2 s ydot)."""
    net = Network(np.array([[1.0]]), "dot", L_v=L.quadratic(), L_h=L.rectified_polynomial(2.0),
                  tau_v=1.0, tau_h=1.0)
    v, h = 2.0 ** -6, 2.0 ** -3
    a, b = net.rhs(np.array([[v]]), np.array([[h]]))
    assert (a[0, 0], b[0, 0]) == (0.0, -7 / 64)
    b = b[0, 0]

    z, E3 = _cubic_size(v, h), 4 * abs(b) ** 3
    s0 = EPS ** (1 / 3) / abs(b)
    s_opt = np.cbrt(3 * ROUNDOFF_ULPS * EPS * z / E3)
    delta = 1.5 * ROUNDOFF_ULPS * EPS * z / s0 / (E3 * s0 ** 2 / 2)
    assert s0 / 10 < s_opt * (1 + delta) ** (-1 / 3) and s_opt * (1 - delta) ** (-1 / 3) < 10 * s0
    tr = _trajectory(net, [0.0], [[[v, h]]], "RK45", {"rtol": 1e-8, "atol": 1e-10})
    rep = verify_energy(net, tr)
    assert rep.passed, rep.summary()
    R = ROUNDOFF_ULPS * EPS * z / s_opt
    assert abs(rep.fd_roundoff / R - 1) < 0.022


def _convex_below_25():
    """F(x) = x^2/2 up to x = 25 and 625 - (x - 50)^2 / 2 beyond (C^1, F'' = -1 there): passes
    the construction probe on [-20, 20], concave where x > 25."""
    return L.Elementwise(lambda x: np.where(x < 25, x * x / 2, 625 - (x - 50) ** 2 / 2),
                         lambda x: np.where(x < 25, x, 50 - x),
                         lambda x: np.where(x < 25, 1.0, -1.0), name="convex below 25")


@pytest.mark.parametrize("layer", ["v", "h"])
def test_convexity_is_probed_on_every_state_of_a_short_trajectory(layer):
    """Fewer than 512 visited states (T B = 2 here) are all probed: a state at 30 in the second
    sample, where the Lagrangian of that layer is concave, is reported (the first sample, at 1,
    is in its convex part)."""
    kw = {"L_v": _convex_below_25(), "L_h": L.quadratic()} if layer == "v" else \
        {"L_v": L.quadratic(), "L_h": _convex_below_25()}
    net = Network(np.array([[0.0]]), "dot", tau_v=1.0, tau_h=1.0, **kw)
    Y = [[[1.0, 1.0]], [[30.0, 1.0]]] if layer == "v" else [[[1.0, 1.0]], [[1.0, 30.0]]]
    tr = _trajectory(net, [0.0, 1.0], Y, "RK45", {"rtol": 1e-8, "atol": 1e-10, "nfev": 8})
    rep = verify_energy(net, tr)
    assert not rep.convex and "negative Hessian direction at state row 1" in rep.convexity_message


def test_fixed_step_reference_points_follow_the_longest_window():
    """Every window is re-integrated with the same number of reference points, enough for the
    longest one at spacing <= dt: with windows [0, 1/8] and [1/8, 5/8] at dt = 1/8 that is 4
    points, so the short window's differences of F are taken at spacing 1/32 (3 points, its own
    need, would give 1/24 and move the allowance by ~1.6 %). Net and solution as the one-step case
    of the test above (y = e^(-3t/2) (1, -1)); a deviation of half the allowance is planted at
    t = 1/8 and the last sample is the exact flow from that deviated state (matrix exponential),
    so the first window is the worst."""
    from scipy.linalg import expm
    net = Network(np.array([[0.5]]), "dot", L_v=L.quadratic(), L_h=L.quadratic(), tau_v=1.0, tau_h=1.0)
    lam, y0, dt = -1.5, np.array([1.0, -1.0]), 0.125
    model, delta, smallest = _fixed_model_by_hand(lam, dt, dt, 2, 1.0, longest=0.5)
    assert delta == dt / 4
    y1 = np.exp(lam * dt) * y0 + [0.5 * FD_SAFETY * model, 0.0]
    y2 = expm(np.array([[-1.0, 0.5], [0.5, -1.0]]) * 0.5) @ y1
    tr = _trajectory(net, [0.0, dt, 5 * dt], [[y0], [y1], [y2]], "leapfrog/exact",
                     {"dt": dt, "scheme": "leapfrog"})
    rep = verify_energy(net, tr)
    e_ref = REF_STEPS_MAX * (1e-13 + 1e-11)
    rel = e_ref * (sqrt(2) / model + 4 * 4 / delta ** 2 / smallest)
    assert rep.flow_at == (0, 0.0, 0) and abs(rep.flow_tol / (FD_SAFETY * model) - 1) <= rel


class _PlantedEnergy(Network):
    """E = 2 v + c v^3 (v the single feature neuron) in place of the network's energy: at v = 0
    the central differences along a flow with dv/dt = 5 are exact up to the cubic term (v +- s
    dv/dt = +-round(5 s), and doubling s doubles it exactly), so the pilot's E''' is exactly 0
    for c = 0 and 750 c, resolved to < 1 %, for c = 2^-13."""

    c = 0.0

    def energy(self, v, h, I=None):
        return 2 * v[:, 0] + self.c * v[:, 0] ** 3


@pytest.mark.parametrize("c", [0.0, 2.0 ** -13])
def test_fd_step_fallback_and_upper_clip(c):
    """When the pilot finds E''' = 0 the step is 10 s0; when it finds an E''' so small that the
    balance s_opt = (3 ROUNDOFF_ULPS eps size / E''')^(1/3) ~ 1.9 x 10 s0 lies above the clip, the
    step is clipped to 10 s0. State v = 0, h = 4 with I = 1, M = 1, quadratic Lagrangians, tau = 1:
    dv/dt = h - v + I = 5, dh/dt = v - h = -4, so tau = max(1, 4) / 5 and s0 = eps^(1/3) tau. The
    round-off R = ROUNDOFF_ULPS eps size / s, with size (the network's own terms, not the planted
    energy's) |v g| + v^2/2 + |I g| + |h f| + h^2/2 + |f| (|S| + (|m| + |g|)^2) at the largest of
    y +- s ydot, y +- 2 s ydot, is then that of s = 10 s0 (to rounding)."""
    net = _PlantedEnergy(np.array([[1.0]]), "dot", L_v=L.quadratic(), L_h=L.quadratic(), tau_v=1.0, tau_h=1.0)
    net.c = c
    tr = _trajectory(net, [0.0], [[[0.0, 4.0]]], "RK45", {"rtol": 1e-8, "atol": 1e-10})
    tr.I = np.ones((1, 1))
    F = net.velocity(np.array([[0.0, 4.0]]), tr.I, False)[0]
    assert F.tolist() == [5.0, -4.0]
    s0 = EPS ** (1 / 3) * 4.0 / 5.0
    s = 10 * s0
    if c:
        assert np.cbrt(3 * ROUNDOFF_ULPS * EPS * 28 / (750 * c)) > 1.5 * s    # the clip binds

    def size(v, h):
        return v * v + v * v / 2 + abs(v) + h * h + h * h / 2 + abs(h) * (abs(v) + (1 + abs(v)) ** 2)

    z = max(size(k * s * 5.0, 4.0 - k * s * 4.0) for k in (-2, -1, 1, 2))
    rep = verify_energy(net, tr)
    assert abs(rep.fd_roundoff / (ROUNDOFF_ULPS * EPS * z / s) - 1) < 1e-9


def test_documented_safety_factor_and_roundoff_ulps():
    """docs/theory.md section 7 states the verdicts' constants: FD_SAFETY = 10 times an error
    estimate is allowed, and an evaluation of E carries ROUNDOFF_ULPS = 4 ulps of its size. The
    planted-error tests above compute their thresholds from these names, so a changed constant
    would move the threshold and the tests with it: pinned here against the documentation."""
    import pathlib
    from uhn.dynamics.analysis import energy
    theory = (pathlib.Path(__file__).resolve().parents[3] / "docs" / "theory.md").read_text()
    assert "`FD_SAFETY` $= 10$" in theory and "`ROUNDOFF_ULPS` $= 4$" in theory
    assert (energy.FD_SAFETY, energy.ROUNDOFF_ULPS) == (10.0, 4.0)


def test_reference_of_one_step_counts_one_step():
    """A flow so slow (M = 0, tau_v = tau_h = 2^46: y' = -y / 2^46) that the DOP853 reference
    crosses the window [0, 1] in one step (its scaled derivative is ~1e-3, so scipy's first step
    is the whole window): the reference's error term counts max(1, nfev // 12) = 1 step, checked
    against scipy's own count for the same system. Samples: y0 = (1, 1) and its exact decay."""
    from scipy.integrate import solve_ivp
    tau = 2.0 ** 46
    net = Network(np.zeros((1, 1)), "dot", L_v=L.quadratic(), L_h=L.quadratic(), tau_v=tau, tau_h=tau)
    y1 = np.exp(-1 / tau)
    rtol, rtol_ref = 1e-8, 1e-11
    tr = _trajectory(net, [0.0, 1.0], [[[1.0, 1.0]], [[y1, y1]]], "RK45",
                     {"rtol": rtol, "atol": 0.0, "nfev": 6})
    sol = solve_ivp(lambda s, y: -y / tau, (0.0, 1.0), np.ones(2), method="DOP853", rtol=rtol_ref,
                    atol=rtol_ref * 1e-2, t_eval=[0.0, 1.0])
    assert sol.nfev // 12 == 1
    rep = verify_energy(net, tr)
    # allowed = FD_SAFETY (1 step sqrt(2) (0 + rtol |y|) + (atol_ref + rtol_ref |y|) sqrt(2) 1 step),
    # |y| = max(|y0|, |y1|) = 1
    expected = FD_SAFETY * sqrt(2) * (rtol + rtol_ref * 1e-2 + rtol_ref)
    assert rep.flow_tol == pytest.approx(expected, rel=8 * EPS, abs=0)


# --------------------------------------------------------------------------------------------------
# The increase allowance's max(|E|, 1) (a mutant found by tools/mutate.py, docs/testing.md).


def test_energy_increase_tolerance_uses_max_abs_E_and_one(linear_net):
    """The monotonicity check allows an increase of rtol_factor * rtol * max(|E|, 1) + atol_floor
    between samples. On the linear network E = |v - h|^2 / 2 (quadratic L_v and L_h, M = I), from
    v = [1/10, 0], h = 0 it is at most 1/200 < 1, so the allowance is 10 * 1e-8 * 1 + 1e-12 (to
    the rounding of those two products and the sum: 3 eps relative) and the reported relative
    increase is the increase itself (divided by 1)."""
    traj = integrate(linear_net, np.array([0.1, 0.0]), t_end=5.0, h0=np.zeros((1, 2)))
    assert np.abs(traj.E).max() <= 0.005 * (1 + 4 * EPS)
    rep = verify_energy(linear_net, traj)
    assert rep.passed, rep.summary()
    assert abs(rep.increase_tol - (10 * 1e-8 + 1e-12)) <= 3 * EPS * 1e-7
    assert rep.max_increase_relative == rep.max_increase
