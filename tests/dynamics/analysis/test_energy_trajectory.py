"""verify_energy checks the trajectory, not only the vector field.

Trajectories of mutated systems (a buggy backend) checked against the correct network must FAIL;
honest trajectories (solve_ivp, RK45-batched with queries stopping early, brian2 leapfrog at its
documented dt) must PASS. Every threshold is the report's own, derived in dynamics/analysis/energy.py from
the integrator's accuracy (re-integration), the finite difference's round-off and truncation
(dE/dt), or the round-off of the energy formula (stored E and dE/dt)."""
import numpy as np
import pytest

from uhn.dynamics import lagrangians as L
from uhn.dynamics.analysis.energy import verify_energy
from uhn.dynamics.integrate import integrate
from uhn.dynamics.network import Network

TAU_V, TAU_H = 2.5, 0.3     # neither is 1: a tau_v applied the wrong way round changes the flow


def _M():
    return np.random.default_rng(0).uniform(0, 0.5, (4, 6))


def _Q():
    return np.random.default_rng(1).uniform(0, 1, (2, 6))


def _net(cls=Network, sim="dot", **kw):
    kw = {"L_v": L.quadratic(), "L_h": L.log_sum_exp(2.0), "tau_v": TAU_V, "tau_h": TAU_H, **kw}
    return cls(_M(), sim, **kw)


class FlippedMemoryTerm(Network):
    """tau_v dv/dt = -sum_mu f_mu dS_mu/dg - v + I: the memory term's sign flipped."""

    def rhs(self, v, h, I=None, out=None):
        dv, dh = super().rhs(v, h, I, out)
        dv -= 2 * self.sim.vjp(self.M, self.L_v.grad(v), self.L_h.grad(h)) / self.tau_v
        return dv, dh


class StrongerSimilarity(Network):
    """tau_h dh/dt = 1.5 S(g) - h."""

    def rhs(self, v, h, I=None, out=None):
        dv, dh = super().rhs(v, h, I, out)
        dh += 0.5 * self.similarity(self.L_v.grad(v)) / self.tau_h
        return dv, dh


class TauTimes(Network):
    """dv/dt = (drive - v + I) * tau_v: ``out *= tau_v`` where it must be ``out /= tau_v``."""

    def rhs(self, v, h, I=None, out=None):
        dv, dh = super().rhs(v, h, I, out)
        dv *= self.tau_v ** 2
        return dv, dh


class DEdtWithoutTauV(Network):
    """dE/dt = -vdot^T H_v vdot - tau_h hdot^T H_h hdot: tau_v dropped."""

    def dEdt(self, v, h, I=None):
        dv, dh = self.rhs(v, h, I)
        return -self.L_v.curvature(v, dv) - self.tau_h * self.L_h.curvature(h, dh)


FLOW_VIOLATION = "do not solve this network's ODE"
FD_VIOLATION = "differs from the finite difference"


@pytest.mark.parametrize("method", ["RK45", "RK45-batched"])
@pytest.mark.parametrize("mutant", [FlippedMemoryTerm, StrongerSimilarity])
def test_trajectory_of_a_wrong_system_fails(mutant, method):
    """The old check rebuilt E and the vector field from the samples with the correct network and
    passed these: E still falls along the 1.5 S run, and only its samples betray it."""
    good = _net()
    tr = integrate(_net(mutant), _Q(), 5.0, n_samples=21, method=method)
    rep = verify_energy(good, tr)
    assert not rep.passed
    assert rep.flow_ratio > 1 and any(FLOW_VIOLATION in v for v in rep.violations), rep.summary()
    k, t, b = rep.flow_at
    assert 0 <= k < len(tr.t) - 1 and t == tr.t[k] and b in (0, 1)
    assert f"re-integrated from t={tr.t[k]:.6g}" in rep.summary()
    # the same trajectory passes the re-integration against the system that produced it
    assert verify_energy(_net(mutant), tr).flow_ratio <= 1


def test_only_the_flow_check_sees_the_stronger_similarity():
    """With E and dE/dt restored to the correct network's values, 1.5 S in dh/dt leaves every
    other check satisfied: the samples are consistent states of a decreasing E, just not of the
    flow of this network."""
    good = _net()
    tr = integrate(_net(StrongerSimilarity), _Q(), 5.0, n_samples=21)
    tr.E = np.stack([good.energy(v, h, tr.I) for v, h in zip(tr.v, tr.h)])
    tr.dEdt = np.stack([good.dEdt(v, h, tr.I) for v, h in zip(tr.v, tr.h)])
    rep = verify_energy(good, tr)
    assert [FLOW_VIOLATION in v for v in rep.violations] == [True], rep.summary()


def test_halved_hessian_caught_by_the_finite_difference(monkeypatch):
    """A Lagrangian whose hvp returns half the Hessian-vector product gives an analytic dE/dt off by
    up to a factor 2; the finite difference of E along the flow does not use hvp."""
    net = _net()
    tr = integrate(net, _Q(), 5.0, n_samples=21)
    assert verify_energy(net, tr).passed
    orig = L.LogSumExp.hvp
    monkeypatch.setattr(L.LogSumExp, "hvp", lambda self, x, u: 0.5 * orig(self, x, u))
    rep = verify_energy(net, tr)
    assert not rep.passed and rep.fd_ratio > 1
    assert any(FD_VIOLATION in v for v in rep.violations), rep.summary()
    # the error is the missing half of the memory term, tau_h hdot.H_h hdot / 2 (= tau_h times the
    # patched curvature), up to the finite difference's own error, which the allowed value bounds
    k, _, b = rep.fd_at
    dv, dh = net.rhs(tr.v[k], tr.h[k], tr.I)
    missing = TAU_H * net.L_h.curvature(tr.h[k], dh)[b]
    an = abs(net.dEdt(tr.v[k], tr.h[k], tr.I)[b])
    assert abs(rep.fd_max_error * an - missing) <= rep.fd_tol * an


def test_tampered_E_and_dEdt_are_seen():
    """Noise of 1e-9 on traj.E is 1e6 ulps of E here; the old check recomputed E and never read it."""
    net = _net()
    tr = integrate(net, _Q(), 5.0, n_samples=21)
    rep = verify_energy(net, tr)
    assert rep.passed and rep.stored_E_ratio <= 1 and rep.stored_dEdt_ratio <= 1   # same formula: round-off
    noisy = integrate(net, _Q(), 5.0, n_samples=21)
    noisy.E = noisy.E + 1e-9 * np.random.default_rng(0).standard_normal(noisy.E.shape)
    rep = verify_energy(net, noisy)
    assert not rep.passed and rep.stored_E_ratio > 1
    assert any(v.startswith("stored traj.E = ") and "beyond round-off" in v for v in rep.violations)
    noisy = integrate(net, _Q(), 5.0, n_samples=21)
    noisy.dEdt[3, 1] *= 1 + 1e-6
    rep = verify_energy(net, noisy)
    assert [v.startswith("stored traj.dEdt = ") and "(1 samples)" in v for v in rep.violations] == [True]


@pytest.mark.parametrize("mutant", [TauTimes, DEdtWithoutTauV])
def test_tau_v_mistakes_fail(mutant):
    """tau_v multiplied instead of divided, or dropped from dE/dt: the network is self-consistent
    (integrated and verified with the same mutant), but E no longer changes at the rate dE/dt says.
    With tau_v = 1 neither mistake changes anything; at tau_v = 2.5 the analytic dE/dt is off by a
    factor tau_v^2 or 1 / tau_v in its feature term."""
    net = _net(mutant)
    rep = verify_energy(net, integrate(net, _Q(), 5.0, n_samples=21))
    assert not rep.passed and rep.fd_ratio > 1
    assert any(FD_VIOLATION in v for v in rep.violations), rep.summary()
    same_at_tau_1 = _net(mutant, tau_v=1.0)
    assert verify_energy(same_at_tau_1, integrate(same_at_tau_1, _Q(), 5.0, n_samples=21)).passed


@pytest.mark.parametrize("clamped", [False, True])
def test_batched_trajectory_with_early_stops_passes(digits, clamped):
    """RK45-batched: queries stop at their own fixed points and hold their final state in later
    samples; windows after a query's t_final are not re-integrated, and the window it stops in
    ends at t_final."""
    M = digits[:20]
    net = Network(M, "squared_euclidean", L_v=L.log_cosh(), L_h=L.log_sum_exp(2.0), tau_v=TAU_V, tau_h=TAU_H)
    rng = np.random.default_rng(2)
    Q = M[:6] + rng.uniform(0.05, 0.6, (6, 1)) * rng.standard_normal((6, 64))
    tr = integrate(net, Q, 60.0, method="RK45-batched", n_samples=61, fixed_point_tol=1e-6,
                   input_mode="clamped" if clamped else "initial")
    t_final = np.array(tr.params["t_final_per_query"])
    assert t_final.max() - t_final.min() > 1.0        # the queries do stop at different times
    rep = verify_energy(net, tr, flow_budget=np.inf)
    assert rep.passed, rep.summary()
    # one window per query per sample interval it was still running in
    assert rep.flow_checked == int(sum(np.sum(tr.t[:-1] < tf) for tf in t_final))
    # and the check is live on this run: the same samples against a 1.5 S system fail
    wrong = StrongerSimilarity(M, "squared_euclidean", L_v=L.log_cosh(), L_h=L.log_sum_exp(2.0),
                               tau_v=TAU_V, tau_h=TAU_H)
    assert verify_energy(wrong, tr).flow_ratio > 1


def test_one_query_of_a_batched_run_passes(digits):
    """traj.query(b) keeps the batch's per-query params (t_final_per_query, nfev_per_query of all
    B queries): they are not this query's and are ignored, and its stored dE/dt, computed in the
    batch, differs from the one-query recomputation by the round-off of a velocity that has
    cancelled to ~1e-7 of its terms near the fixed point, which the allowance includes."""
    M = digits[:20]
    net = Network(M, "squared_euclidean", L_v=L.log_cosh(), L_h=L.log_sum_exp(2.0), tau_v=TAU_V, tau_h=TAU_H)
    rng = np.random.default_rng(2)
    Q = M[:6] + rng.uniform(0.05, 0.6, (6, 1)) * rng.standard_normal((6, 64))
    tr = integrate(net, Q, 60.0, method="RK45-batched", n_samples=61, fixed_point_tol=1e-6)
    for b in (0, 5):
        rep = verify_energy(net, tr.query(b))
        assert rep.passed, rep.summary()


def test_many_samples_reintegrate_at_most_max_windows_per_query_and_find_a_corrupted_one():
    net = _net()
    tr = integrate(net, _Q(), 5.0, n_samples=201, stop_at_fixed_point=False)
    rep = verify_energy(net, tr, max_windows=10, flow_budget=np.inf)
    assert rep.passed, rep.summary()
    assert rep.flow_checked == 10 * 2
    # a sample corrupted inside the early transient (window 2) is among those checked
    bad = integrate(net, _Q(), 5.0, n_samples=201, stop_at_fixed_point=False)
    bad.v[3, 0, 0] += 1e-3
    rep = verify_energy(net, bad, max_windows=10)
    assert rep.flow_at[0] in (2, 3) and rep.flow_at[2] == 0 and rep.flow_ratio > 1


def test_bad_options_refused():
    net = _net()
    tr = integrate(net, _Q(), 1.0, n_samples=5)
    with pytest.raises(ValueError, match="fd_safety must be a finite factor >= 1"):
        verify_energy(net, tr, fd_safety=0.5)
    with pytest.raises(ValueError, match="max_windows must be a positive integer"):
        verify_energy(net, tr, max_windows=0)
    fixed = integrate(net, _Q(), 1.0, n_samples=5)
    fixed.params = {"dt": 0.01, "scheme": "euler-ish"}
    with pytest.raises(ValueError, match="unknown scheme 'euler-ish' and no recorded 'order'"):
        verify_energy(net, fixed)


@pytest.mark.parametrize("sim,L_v,record_every", [("dot", L.quadratic(), 1),
                                                   ("squared_euclidean", L.log_cosh(), 5),
                                                   ("dot", L.log_cosh(), 10)])
def test_brian2_leapfrog_at_its_documented_dt_passes(sim, L_v, record_every):
    """brian2's leapfrog scheme (second order) at dt = 0.01 ms, the README's setting: the
    re-integration allows n dt^3 |y'''| / 6 + dt^2 |y''| per window (uhn.dynamics.analysis.energy), far below
    what a 1.5x tau_h in the checking network produces."""
    pytest.importorskip("brian2")
    from uhn.dynamics.backends.brian2_rate import run_brian2
    net = _net(sim=sim, L_v=L_v)
    tr = run_brian2(net, _Q(), t_end=2.0, dt=0.01, record_every=record_every, target="numpy")
    rep = verify_energy(net, tr)
    assert rep.passed, rep.summary()
    assert "fixed step dt = 0.01, order 2" in rep.summary()
    assert verify_energy(_net(sim=sim, L_v=L_v, tau_h=1.5 * TAU_H), tr).flow_ratio > 1


def test_non_finite_energy_is_a_violation():
    """NaN compares False with every tolerance: a state whose energy is NaN used to PASS."""
    import dataclasses
    M = np.random.default_rng(0).uniform(0, 0.5, (4, 6))
    net = Network(M, "dot", L_v=L.quadratic(), L_h=L.log_sum_exp(2.0))
    tr = integrate(net, M[:2] + 0.1, 5.0, n_samples=11)
    v = tr.v.copy()
    v[-1, 1, :] = 1e200     # |v|^2 / 2 overflows: E = inf - inf
    with np.errstate(all="ignore"):
        rep = verify_energy(net, dataclasses.replace(tr, v=v), check_convexity=False)
    assert not rep.passed
    assert any("E is not finite" in m and "at t=5 (query 1)" in m for m in rep.violations)


def test_converged_large_state_is_not_flagged_diverging():
    """Saturated tanh rates: a genuine fixed point far from the origin is no runaway."""
    import dataclasses
    M = np.random.default_rng(0).random((5, 8))   # lambda_max(M^T M) > 1: v grows like e^{ct}
    net = Network(M, "dot", L_v=L.quadratic(), L_h=L.quadratic())
    tr = integrate(net, M[:2], t_end=5.0)        # not converged: flagged
    rep = verify_energy(net, tr)
    assert "grew from" in rep.diverging
    marked = dataclasses.replace(tr, converged=np.ones_like(tr.converged))
    assert verify_energy(net, marked).diverging == ""


@pytest.mark.parametrize("n_samples, B", [(201, 4), (21, 4), (64, 4)])
def test_convexity_is_probed_at_every_stride_th_visited_state(monkeypatch, n_samples, B):
    """verify_energy's convexity probe reads every (T B // 256)-th row of the visited states of
    v and h (all rows when T B < 256): the rows it receives are exactly those, so a change of the
    density (or probing the initial states only) fails here."""
    from uhn.dynamics.analysis import energy
    M = np.random.default_rng(0).uniform(0, 0.5, (5, 6))
    net = Network(M, "dot", L_v=L.log_cosh(), L_h=L.log_sum_exp(2.0))
    tr = integrate(net, M[:B] + 0.1, 5.0, n_samples=n_samples, stop_at_fixed_point=False)
    T = len(tr.t)
    seen = {}
    for layer, lag in (("v", net.L_v), ("h", net.L_h)):
        monkeypatch.setattr(lag, "check_convex", lambda x, layer=layer: seen.setdefault(layer, x.copy()))
    verify_energy(net, tr)
    stride = max(1, T * B // energy.CONVEXITY_ROWS)
    np.testing.assert_array_equal(seen["v"], tr.v.reshape(T * B, -1)[::stride])
    np.testing.assert_array_equal(seen["h"], tr.h.reshape(T * B, -1)[::stride])
    assert len(seen["v"]) == (T * B if T * B < 256 else len(range(0, T * B, stride)))
    assert energy.CONVEXITY_ROWS == 256 and (T * B < 256 or 256 <= len(seen["v"]) <= 511)


# ------------------------------------------------------------------ the flow check's budget (issue 29)
def _long_run(B=8):
    net = _net()
    Q = np.random.default_rng(5).uniform(0, 1, (B, 6))
    return net, integrate(net, Q, 20.0, n_samples=101, stop_at_fixed_point=False)


def _count_reference(monkeypatch):
    """Record (rows, nfev) of every re-integration system verify_energy solves."""
    from uhn.dynamics.analysis import energy
    calls, orig = [], energy.solve_ivp

    def counted(fun, span, y0, **kw):
        sol = orig(fun, span, y0, **kw)
        calls.append((y0.size, sol.nfev))
        return sol
    monkeypatch.setattr(energy, "solve_ivp", counted)
    return calls


def test_flow_check_spends_its_budget_and_says_what_the_random_part_guarantees(monkeypatch):
    """8 queries x 100 windows: the default budget re-integrates a part of them. Each
    round after a stream's first starts only while the stream's half of FLOW_BUDGET times the
    trajectory's own row evaluations (nfev B) is not spent, so all rounds but the last of each
    stream fit in it; the coverage statement's percentage is 1 - 0.05^(1/r) for the r random
    windows covered (docs/theory.md §7), a budget of 0 still checks MIN_FLOW_ROWS windows, and an
    unlimited one stops at max_windows B."""
    import re
    from uhn.dynamics.analysis import energy
    net, tr = _long_run()
    W = net.D + net.N
    calls = _count_reference(monkeypatch)
    rep = verify_energy(net, tr)
    assert rep.passed, rep.summary()
    n = 100 * 8
    assert energy.MIN_FLOW_ROWS <= rep.flow_checked < 40 * 8
    assert sum(y0 // W for y0, _ in calls) == rep.flow_checked
    half = energy.FLOW_BUDGET * tr.params["nfev"] * 8 / 2
    spent = [y0 // W * nfev for y0, nfev in calls]
    assert sum(spent) <= 2 * half + max(spent)          # at most one round per stream past the budget
    m = re.fullmatch(rf"{rep.flow_checked} of {n} windows x queries: the largest trapezoid defects and "
                     r"(\d+) drawn at random \(seed 0\); a deviation in >= ([\d.]+) % of them is found "
                     r"with probability >= 95 %", rep.flow_coverage)
    assert m, rep.flow_coverage
    r = int(m.group(1))
    assert 1 <= r <= rep.flow_checked and float(m.group(2)) == float(f"{100 * (1 - 0.05 ** (1 / r)):.3g}")
    calls.clear()
    assert verify_energy(net, tr, flow_budget=0.0).flow_checked == energy.MIN_FLOW_ROWS
    assert verify_energy(net, tr, flow_budget=np.inf).flow_checked == 40 * 8
    assert verify_energy(net, tr, flow_budget=np.inf, max_windows=100).flow_checked == n


@pytest.mark.parametrize("k", [30, 77])
def test_a_corrupted_late_sample_is_found_within_the_budget(k):
    """A sample corrupted by 1e-4 in a late window, where no consecutive-first-windows rule would
    look: its two windows (k - 1, k) have the largest trapezoid defects, so the budgeted check
    re-integrates them first and fails there."""
    net, tr = _long_run()
    tr.v[k, 3, 2] += 1e-4
    rep = verify_energy(net, tr)
    assert not rep.passed and rep.flow_ratio > 1 and rep.flow_at[0] in (k - 1, k) and rep.flow_at[2] == 3
    assert rep.flow_checked < 40 * 8 and rep.flow_coverage.startswith(f"{rep.flow_checked} of 800 ")


def test_progress_bar_only_for_a_check_that_runs_long(capsys):
    """progress=True shows the bar (driver.time_bar, on stderr) at once; the default "auto" waits
    PROGRESS_DELAY = 2 s, so this sub-second check prints nothing; a callable gets fractions that
    rise to 1."""
    from uhn.dynamics.analysis import energy
    net = _net()
    tr = integrate(net, _Q(), 2.0, n_samples=11)
    verify_energy(net, tr, progress=True)
    err = capsys.readouterr().err
    assert "verifying energy:   0%|" in err
    assert "share =" not in err              # a percentage; the internal work count means nothing
    assert energy.PROGRESS_DELAY == 2.0
    verify_energy(net, tr)
    assert capsys.readouterr().err == ""
    seen = []
    verify_energy(net, tr, progress=lambda done, running: seen.append(done))
    assert seen == sorted(seen) and seen[-1] == 1.0 and 0 < seen[0] < 1
