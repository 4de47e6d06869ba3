"""Capacity against theory (uhn.models.experiments.theory): the theory functions against known
values and independent implementations, the measurements against exact laws."""
import itertools
import math

import numpy as np
import pytest

from uhn.models.experiments import theory as t
from uhn.models.experiments import theory_report as tr
from uhn.models.memory import classical_hopfield


def test_ags_critical_load_and_overlap_are_the_published_values():
    # Amit, Gutfreund & Sompolinsky (1985): alpha_c = 0.138, with m = 0.967 just below it
    assert t.ags_critical_load() == pytest.approx(0.1379, abs=1e-4)
    assert t.ags_overlap(0.1379) == pytest.approx(0.967, abs=2e-3)
    assert math.isnan(t.ags_overlap(0.139))
    assert t.ags_overlap(0.05) > 0.999


def test_dam_theory_of_degree_two_is_the_classical_theory():
    # F(x) = x^2: F(y + 1) - F(y - 1) = 4 y, so the K&H SNR is sqrt((D - 1)/(N - 1))
    for D, N in [(50, 3), (100, 14), (400, 60)]:
        assert t.dam_stability_theory(D, N, 2) == pytest.approx(t.stable_fraction_theory(D, N),
                                                                rel=1e-12)


def test_krotov_hopfield_step_of_degree_two_is_the_zero_diagonal_classical_update():
    rng = np.random.default_rng(0)
    M = rng.choice([-1.0, 1.0], (7, 21))
    Q = rng.choice([-1.0, 1.0], (40, 21))
    W = classical_hopfield(M).W
    assert np.array_equal(t.krotov_hopfield_step(M, Q, 2), np.where(Q @ W >= 0, 1.0, -1.0))


def test_krotov_hopfield_step_is_the_energy_difference_rule():
    # brute force: s_i = +1 iff E(s with s_i = +1) <= E(s with s_i = -1), E = -sum_mu F(xi_mu . s)
    rng = np.random.default_rng(1)
    M = rng.choice([-1.0, 1.0], (5, 9))
    Q = rng.choice([-1.0, 1.0], (6, 9))
    for n in (3, 4):
        got = t.krotov_hopfield_step(M, Q, n, chunk=4)
        for b, i in itertools.product(range(6), range(9)):
            up, down = Q[b].copy(), Q[b].copy()
            up[i], down[i] = 1.0, -1.0
            E = lambda s: -np.sum((M @ s) ** n)  # noqa: E731
            assert got[b, i] == (1.0 if E(up) <= E(down) else -1.0)


def test_max_separation_capacity_follows_the_exact_nearest_pattern_law():
    D, f, N = 32, 8, 20
    p = t.TheoryPoint("softmax_capacity", dim=D, n_memories=N, separation="max", flips=f,
                      networks=1, min_probes=6000, seed=4)
    row = t.evaluate(p)
    want = t.nearest_retrieval_law(D, f, N)
    n = row["n_probes"]
    assert n >= 6000
    assert abs(row["n_correct"] / n - want) < 4.5 * math.sqrt(want * (1 - want) / n)


def test_nearest_capacity_inverts_the_law():
    cap = t.nearest_capacity_theory(48, 12)
    assert t.nearest_retrieval_law(48, 12, cap) == pytest.approx(0.99, abs=1e-9)


def test_one_memory_is_always_stable_in_every_network():
    for mode in ("sync", "async"):
        row = t.evaluate(t.TheoryPoint("classical", dim=50, n_memories=1, mode=mode, networks=3))
        assert row["n_stable"] == row["n_retrieved"] == row["n_probes"] == 3
        assert row["mean_overlap"] == 1.0
    for coding in ("binary", "bipolar"):
        row = t.evaluate(t.TheoryPoint("hopfield1982", dim=100, n_memories=1, mode=coding,
                                       networks=5))
        assert row["error_histogram"][0] == row["n_probes"] == 5


def test_async_update_ends_where_no_neuron_would_change():
    rng = np.random.default_rng(2)
    V = rng.integers(0, 2, (15, 100)).astype(float)
    S = 2 * V - 1
    T = S.T @ S
    np.fill_diagonal(T, 0)
    for binary, X0 in ((True, V), (False, S)):
        X, conv = t.async_update(X0, T, binary=binary, rng=np.random.default_rng(3))
        assert conv.all()
        h = X @ T
        off = 0.0 if binary else -1.0
        assert np.array_equal(np.where(h > 0, 1.0, np.where(h < 0, off, X)), X)


def test_binary_coding_makes_more_first_step_errors_than_bipolar():
    # the {0,1} bias sum_j T_ij roughly doubles the crosstalk variance at n = 15
    rows = t.run(t.hopfield1982_points(ns=(15,), networks=40))
    h = {e["coding"]: e for e in tr.analyse_hopfield1982(rows)}
    assert h["binary"]["first_error_ci"][0] > h["bipolar"]["first_error_ci"][1]
    assert h["binary"]["p0_ci"][1] < h["bipolar"]["p0_ci"][0]


def test_softmax_fixed_points_follow_the_theory_thresholds():
    # below 1/lambda_max(C) the mean is the stable fixed point; above Ramsauer's sufficient
    # condition for every pattern, the iteration stays at the pattern
    D, N = 64, 8
    M = t.network_patterns(t.TheoryPoint("softmax_fixed_points", dim=D, n_memories=N))
    th = t.softmax_thresholds(M)
    lo, hi = 0.5 * th["average"], 1.01 * max(th["single_per_pattern"])
    assert lo < hi
    rows = t.run(t.softmax_fixed_point_points(dim=D, n_memories=N, betas=(lo, hi), networks=1))
    fp = {e["beta"]: e for e in tr.analyse_fixed_points(rows)}
    assert fp[lo]["iterate_average"] == 1.0
    assert fp[hi]["iterate_single"] == 1.0 and fp[hi]["single_shot_single"] == 1.0


def _rest_velocity_bound(traj, scale=1.0):
    """The rest test's per-component velocity bound (integrate's docstring, tau_v = 1):
    fixed_point_tol + noise_factor (atol + rtol |y|), |y| <= ``scale``."""
    p = traj.params
    return p["fixed_point_tol"] + p["noise_factor"] * (p["atol"] + p["rtol"] * scale)


def test_dynamics_rest_at_small_beta_is_the_global_average():
    # beta -> 0: f(h) -> uniform, so the rest state v = M^T f(h) is the mean of the patterns.
    # |M^T f(h) - m|_inf <= sum |f_mu - 1/N| <= expm1(beta (max h - min h)) <= expm1(2 beta D)
    # (|h_mu| = |xi_mu . v| <= D), and at rest |v - M^T f(h)| is below the rest test's bound
    from uhn.dynamics.analysis.basin_retrieval import (rest_readout, softmax_fixed_point,
                                                       softmax_network)
    D, N, beta = 32, 8, 1e-9
    point = t.TheoryPoint("softmax_fixed_points", dim=D, n_memories=N, beta=beta, flips=8)
    M = t.network_patterns(point)
    Q = np.vstack([M, -M[:2]])                        # from the patterns and two anti-patterns
    m = M.mean(axis=0)
    Z, at_rest, traj = rest_readout(softmax_network(M, beta), Q)
    assert at_rest.all()
    shift = math.expm1(2 * beta * D)
    assert np.max(np.abs(Z - m)) <= shift
    assert np.max(np.abs(traj.v_final - m)) <= _rest_velocity_bound(traj) + shift
    assert np.min(np.max(np.abs(Q - m), axis=1)) > 0.5   # the queries started far from it
    Zb, ok = softmax_fixed_point(M, point)(Q)         # the builder theory.run takes: the same
    assert ok.all() and np.array_equal(Zb, Z)


def test_dynamics_rest_at_large_beta_is_the_stored_pattern():
    # well-separated patterns, beta = 1: at rest v = xi_i + e, |e|_inf <= the rest test's bound b,
    # so h_i - h_j >= Delta_i - 2 D b with Delta_i = D - max_j xi_i . xi_j, every other weight is
    # below exp(-beta (Delta_i - 2 D b)) and |z - xi_i|_inf <= 2 (N - 1) that + b
    from uhn.dynamics.analysis.basin_retrieval import rest_readout, softmax_network
    from uhn.models.experiments.basins import flip_bits
    D, N, beta = 64, 8, 1.0
    M = t.network_patterns(t.TheoryPoint("softmax_fixed_points", dim=D, n_memories=N, seed=3))
    G = M @ M.T
    np.fill_diagonal(G, -np.inf)
    delta = D - G.max(axis=1)
    assert delta.min() >= 24
    Q = flip_bits(M, 12, np.random.default_rng(0))
    Z, at_rest, traj = rest_readout(softmax_network(M, beta), Q)
    assert at_rest.all()
    err = np.max(np.abs(Z - M), axis=1)
    vb = _rest_velocity_bound(traj)
    assert np.all(err <= 2 * (N - 1) * np.exp(-beta * (delta - 2 * D * vb)) + vb)
    assert np.max(np.abs(Q - M)) == 2.0                # 12 bits were wrong at the start


def test_dynamics_and_iteration_reach_the_same_fixed_points_away_from_the_bifurcation():
    # the rest points of the flow are the iteration's fixed points z = M^T softmax(beta M z);
    # below beta ~ 0.07 (the average only) and above ~ 0.12 (single patterns) both reach the same
    # one: equal classes, and equal states to the solvers' tolerances: the rest test bounds
    # |dv/dt| by ~3.1e-7 per component and the map contracts (factor <= beta lambda_max(C)
    # <= 0.4 at beta <= 0.05, far less at a single pattern), so |z_dyn - z_iter| <= 3.1e-7 / 0.6
    from uhn.dynamics.analysis.basin_retrieval import softmax_fixed_point
    betas = (0.03, 0.05, 0.15, 0.3)
    pts = [p for f in (0, 16) for p in t.softmax_fixed_point_points(betas=betas, networks=2,
                                                                     flips=f, dynamics=True)]
    rows = t.run(pts, dynamics=softmax_fixed_point)
    for r in rows:
        assert r["dynamics_converged"] == r["n_converged"] == r["n_probes"] == 32
        for k in t.FIXED_POINT_KINDS:
            assert r[f"dynamics_{k}"] == r[f"iterate_{k}"]
        assert r["dynamics_agree"] == 32
        assert r["dynamics_iterate_gap"] <= 3.1e-7 / 0.6
    kinds = {(r["flips"], r["beta"]): r for r in rows}
    assert kinds[(16, 0.03)]["dynamics_average"] == 32 and kinds[(16, 0.3)]["dynamics_single"] == 32
    # the iteration and single-shot columns are the rows without the dynamics, bit for bit
    plain = t.run(t.softmax_fixed_point_points(betas=(0.05,), networks=2, flips=16))[0]
    with_dyn = kinds[(16, 0.05)]
    assert all(plain[k] == with_dyn[k] for k in plain if k.startswith(("iterate_", "single_shot_")))


def test_dynamics_points_need_their_builder_and_keep_old_keys():
    p = t.TheoryPoint("softmax_fixed_points", dim=16, n_memories=4, dynamics=True)
    with pytest.raises(ValueError, match="basin_retrieval.softmax_fixed_point"):
        t.run([p])
    with pytest.raises(ValueError, match="basin_retrieval.softmax_fixed_point"):
        t.evaluate(p)
    with pytest.raises(ValueError, match="softmax_fixed_points only"):
        t.TheoryPoint("classical", dynamics=True)
    with pytest.raises(ValueError, match="True or False"):
        t.TheoryPoint("softmax_fixed_points", dynamics="yes")
    plain = t.TheoryPoint("softmax_fixed_points", dim=16, n_memories=4)
    assert '"dynamics"' not in plain.key() and '"dynamics":true' in p.key()
    assert {q.experiment for q in t.figure_points(parts=("softmax_fixed_points",))} == \
        {"softmax_fixed_points"}
    assert all(q.dynamics for q in t.figure_points(parts=("softmax_fixed_points",)))
    with pytest.raises(ValueError, match="unknown parts"):
        t.figure_points(parts=("nope",))


def test_crossing_and_slope_recover_known_values():
    x = np.array([1.0, 2.0, 4.0, 8.0])
    n = np.full(4, 1000)
    c = tr.crossing(x, np.array([1000, 1000, 0, 0]), n, 0.99, boots=50, log=True)
    # log-interpolated between 2 (p = 1) and 4 (p = 0): 2 * 2^0.01
    assert c["value"] == pytest.approx(2 * 2 ** 0.01) and c["std"] == 0.0
    D = np.array([10.0, 20.0, 40.0])
    fit = tr.fit_slope(D, [(3 * d ** 2.5, [3 * d ** 2.5] * 5) for d in D])
    assert fit["slope"] == pytest.approx(2.5) and fit["std"] == pytest.approx(0.0, abs=1e-12)


def test_points_refuse_bad_parameters():
    with pytest.raises(ValueError, match="mode"):
        t.TheoryPoint("classical", mode="binary")
    with pytest.raises(ValueError, match="experiment"):
        t.TheoryPoint("nope")
    with pytest.raises(ValueError, match="cannot flip"):
        t.TheoryPoint("softmax_capacity", dim=10, flips=11)
    with pytest.raises(ValueError, match="beta"):
        t.TheoryPoint(beta=float("nan"))


def test_report_runs_on_a_small_study():
    rows = t.run(t.classical_points(dims=(60,), loads=(0.05, 0.2, 0.4), modes=("sync",),
                                    networks=2, min_probes=0)
                 + t.dam_points(degrees=(2,), dims=(50, 100), n_steps=4, min_probes=200)
                 + t.softmax_capacity_points(dims=(32, 40), separations=("max",), n_steps=4,
                                             min_probes=200))
    text = tr.report(rows, boots=50)
    for heading in ("sync  D=   60", "dense associative memory", "n=2: D=50", "max-law 14.9"):
        assert heading in text


def test_every_figure_is_written(tmp_path):
    from uhn.dynamics.analysis.basin_retrieval import softmax_fixed_point
    rows = t.run(t.classical_points(dims=(40,), loads=(0.05, 0.3), modes=("sync",), networks=1,
                                    min_probes=0)
                 + t.hopfield1982_points(ns=(5,), networks=2)
                 + t.dam_points(degrees=(2,), dims=(50, 100), n_steps=3, min_probes=100)
                 + t.softmax_fixed_point_points(dim=16, n_memories=4, betas=(0.01, 1.0),
                                                networks=1, dynamics=True)
                 + t.softmax_fixed_point_points(dim=16, n_memories=4, betas=(0.01, 1.0),
                                                networks=1, flips=4),
                 dynamics=softmax_fixed_point)
    # the fixed-point report has the dynamics where measured: at beta = 0.01 all three rules end
    # at the average, at beta = 1 at the pattern (16 bits, 4 well-separated patterns)
    text = tr.report(rows, boots=20)
    assert ("flips=0 beta=0.01  single shot 0.00/0.00/1.00  iterate 0.00/0.00/1.00  "
            "dynamics 0.00/0.00/1.00  (at rest 1.00, agree 1.00") in text
    assert "flips=4 beta=1  single shot 1.00/0.00/0.00  iterate 1.00/0.00/0.00\n" in text + "\n"
    paths = tr.make_theory_figures(rows, tmp_path, boots=20)
    assert sorted(p.name for p in paths) == ["theory_capacities.png", "theory_classical.png",
                                             "theory_fixed_points.png", "theory_hopfield1982.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
