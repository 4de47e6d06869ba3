"""The bounds of dynamics.energy.verify_energy, each probed just above and just below.

tools/mutate.py found these mutants of dynamics/energy.py surviving (docs/testing.md, "Remaining
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

from dynamics import lagrangians as L
from dynamics.energy import FD_SAFETY, ROUNDOFF_ULPS, verify_energy
from dynamics.integrate import Trajectory, integrate
from dynamics.network import Network

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
    assert rep.passed            # a runaway is reported, not a failure: E does decrease
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


def _size_E(s):
    """size(E) (dynamics.energy._energy_and_size's docstring) at the largest of y +- s ydot,
    y +- 2 s ydot: |v g| + size(L_v) + |h f| + size(L_h) + |f| (|S| + (|m| + |g|)^2) with g = v,
    L_v = v^2/2, f = h^2, L_h = h^3/3, S = v, |m| = 1."""
    def size(v, h):
        return v * v + v * v / 2 + h ** 3 + h ** 3 / 3 + h * h * (abs(v) + (1 + abs(v)) ** 2)
    return max(size(FD_V + k * s * FD_A, FD_H + k * s * FD_B) for k in (-2, -1, 1, 2))


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
    net = Network(np.array([[1.0]]), "dot", L_v=L.quadratic(), L_h=L.quadratic(), tau_v=1.0, tau_h=1.0)
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
