"""Basins of attraction (uhn.models.experiments.basins): known answers on small cases."""
import math

import numpy as np
import pytest
from scipy import stats

from uhn.models.experiments import basins as b
from uhn.models.memory import Memory


@pytest.mark.parametrize("retrieval", ["single", "iterate", "sync"])
def test_one_pattern_has_basin_radius_half_the_width(retrieval):
    # one stored xi: M^T M q = xi (D - 2f), so f < D/2 flips retrieve xi and f > D/2 give -xi;
    # on the odd-D grid of whole flips p falls from 1 at (D-1)/2 to 0 at (D+1)/2: radius D/2
    D = 31
    rows = b.run(b.grid(b.BasinPoint(dim=D, n_memories=1, retrieval=retrieval, trials=8),
                        b.flips_levels(D)))
    p = np.array([r["probability"] for r in rows])
    f = np.arange(D + 1)
    assert np.array_equal(p, (f < D / 2).astype(float))
    c = b.curves(rows, boots=200)["classical " + retrieval]
    assert c["radius"] == D / 2 and c["radius_std"] == 0.0


def test_one_pattern_async_retrieves_below_the_tie_and_never_beyond_it():
    # zero diagonal: h_i = xi_i (m - xi_i s_i) with overlap m = D - 2f. m >= 3 (f <= (D-3)/2):
    # every update moves towards xi; m <= -3: towards -xi. At m = +-1 the ties h_i = 0 -> +1 make
    # the end depend on the order, so the radius lies in [(D-3)/2, (D+3)/2]
    D = 31
    rows = b.run(b.grid(b.BasinPoint(dim=D, n_memories=1, retrieval="async", trials=20),
                        b.flips_levels(D)))
    p = np.array([r["probability"] for r in rows])
    assert np.all(p[:(D - 3) // 2 + 1] == 1.0) and np.all(p[(D + 3) // 2:] == 0.0)
    assert 0 < p[(D - 1) // 2] < 1                           # the tie at m = 1 is order-dependent
    r = b.curves(rows, boots=200)["classical async"]["radius"]
    assert (D - 3) / 2 <= r <= (D + 3) / 2


def test_nearest_neighbour_retrieval_matches_the_hypergeometric_law():
    # two memories at Hamming distance d (odd: no ties); f flips of xi_1, k of them among the d
    # differing bits (k ~ Hypergeom(D, d, f)); the query is nearer xi_1 iff k < d / 2
    D, d, f, trials = 40, 9, 12, 4000
    rng = np.random.default_rng(3)
    x1 = rng.choice([-1.0, 1.0], D)
    x2 = x1.copy()
    x2[rng.choice(D, d, replace=False)] *= -1
    M = np.stack([x1, x2])
    mem = Memory(M, similarity="hamming", separation="max")
    k = b.success_counts(M, mem.retrieve, "flips", f, trials, seed=5)
    want = stats.hypergeom(D, d, f).cdf((d - 1) // 2)
    n = 2 * trials
    sd = math.sqrt(want * (1 - want) / n)
    assert abs(k.sum() / n - want) < 4.5 * sd      # 4.5 sigma: a false alarm once in 1e5 runs
    # and per memory (each has the same law)
    for km in k:
        assert abs(km / trials - want) < 4.5 * math.sqrt(want * (1 - want) / trials)


def test_flip_bits_flips_exactly_and_uniformly():
    X = np.ones((3000, 10))
    Y = b.flip_bits(X, 3, seed=1)
    assert np.all((Y != X).sum(axis=1) == 3) and np.all(np.abs(Y) == 1)
    assert np.all(X == 1)                                   # the input is untouched
    hits = (Y != X).sum(axis=0)                             # each position flipped w.p. 3/10
    chi2 = ((hits - 900.0) ** 2 / 900.0).sum()
    assert chi2 < stats.chi2(9).ppf(1 - 1e-5)
    with pytest.raises(ValueError, match="cannot flip 11 of 10"):
        b.flip_bits(X, 11)


def test_wilson_interval_known_values():
    lo, hi = b.wilson_interval(0, 10)
    z2 = 1.959963984540054 ** 2
    assert lo == 0.0 and hi == pytest.approx(z2 / (10 + z2), rel=1e-12)
    lo, hi = b.wilson_interval(50, 100)
    assert (lo + hi) / 2 == pytest.approx(0.5, abs=1e-15)
    # statsmodels' value for 50/100: (0.4038, 0.5962)
    assert lo == pytest.approx(0.40383, abs=1e-5) and hi == pytest.approx(0.59617, abs=1e-5)
    with pytest.raises(ValueError):
        b.wilson_interval(11, 10)


def test_half_radius_interpolates_the_first_crossing():
    assert b.half_radius([0, 1, 2, 3], [1.0, 0.8, 0.2, 0.6]) == pytest.approx(1.5)
    assert b.half_radius([0, 1, 2], [1.0, 0.9, 0.6]) is None       # never below 1/2
    assert b.half_radius([0, 1, 2], [0.4, 0.9, 0.6]) is None       # starts below
    with pytest.raises(ValueError, match="increasing"):
        b.half_radius([0, 2, 1], [1, 0.5, 0])


def test_radius_bootstrap_error_matches_the_delta_method():
    # r = x_a + (p_a - 1/2) dx / (p_a - p_b): var r = dx^2 [(1/2 - p_b)^2 var p_a
    # + (p_a - 1/2)^2 var p_b] / (p_a - p_b)^4, var p = p (1 - p) / n
    n = 4000
    pa, pb, dx = 0.8, 0.2, 1.0
    k = np.array([n, int(pa * n), int(pb * n), 0])
    out = b.radius_with_error([0, 1, 2, 3], k, np.full(4, n), boots=4000, seed=2)
    va, vb = pa * (1 - pa) / n, pb * (1 - pb) / n
    sd = dx * math.sqrt((0.5 - pb) ** 2 * va + (pa - 0.5) ** 2 * vb) / (pa - pb) ** 2
    assert out["radius"] == pytest.approx(1.5)
    # the bootstrap std of 4000 draws is within ~3 x sd / sqrt(2 x 4000) of the truth
    assert abs(out["std"] - sd) < 3 * sd / math.sqrt(2 * 4000) + 0.02 * sd
    assert out["low"] < 1.5 < out["high"]


def test_runs_resume_from_the_store(tmp_path):
    path = tmp_path / "basins.jsonl"
    points = b.grid(b.BasinPoint(dim=20, n_memories=3, trials=4), [0, 5, 10])
    first = b.run(points, path)
    seen = []
    again = b.run(points, path, progress=lambda s: seen.append(s.computed))
    assert seen == [False] * 3
    assert [r["per_memory"] for r in again] == [r["per_memory"] for r in first]


def test_points_refuse_what_cannot_be_measured():
    with pytest.raises(ValueError, match="whole number of bits"):
        b.BasinPoint(dim=10, level=2.5)
    with pytest.raises(ValueError, match="classical network's update"):
        b.BasinPoint(network="memory", retrieval="async")
    with pytest.raises(ValueError, match="uhn.models.corruption kind"):
        b.BasinPoint(data="mnist", network="memory")
    with pytest.raises(ValueError, match=r"\[0, dim = 10\]"):
        b.BasinPoint(dim=10, level=11)


def test_mnist_iterated_softmax_has_a_wider_basin_than_single_shot_is_measurable():
    # the MNIST pipeline end to end on a small case: rows for every line, a radius or None
    pts = b.mnist_points(similarities=("euclidean",), levels=(0.2, 3.0), n_memories=10,
                         trials=2, sep_param=1.0)
    cs = b.curves(b.run(pts), boots=50)
    assert set(cs) == {"euclidean/softmax(beta=1) single", "euclidean/softmax(beta=1) iterate"}
    for c in cs.values():
        assert c["n"].tolist() == [20, 20]
        assert c["p"][0] >= c["p"][1]          # more noise never helps on this pair of levels


def test_one_softmax_memory_is_retrieved_from_anywhere_by_every_rule():
    # N = 1: softmax weights are 1 whatever the query, so z = xi (single shot, iterate) and the
    # dynamics' fixed point v = P^T softmax(...) = xi: P = 1 up to D flips (the query -xi too)
    from uhn.dynamics.analysis.basin_retrieval import RETRIEVERS
    D = 12
    base = b.BasinPoint(dim=D, n_memories=1, network="memory", separation="softmax",
                        sep_param=1.0, output=None, trials=3)
    lines = [{"retrieval": r} for r in ("single", "iterate", "dynamics")]
    rows = b.run(b.grid(base, [0, 6, 12], lines), retrievers=RETRIEVERS)
    assert [r["probability"] for r in rows] == [1.0] * 9


def test_dynamics_without_its_builder_is_a_clear_error():
    p = b.BasinPoint(dim=8, network="memory", separation="softmax", sep_param=1.0,
                     retrieval="dynamics")
    with pytest.raises(ValueError, match="needs its builder"):
        b.evaluate(p)
    with pytest.raises(ValueError, match="network='memory'"):
        b.BasinPoint(retrieval="dynamics")


def test_the_dynamics_retrieve_through_the_memory_readout():
    # one MNIST digit, euclidean similarity: the readout P^T f(h) = x (weight 1) is retrieved;
    # the feature state at rest, v = (x - v)/|x - v|, a unit vector, would not be
    from uhn.dynamics.analysis.basin_retrieval import RETRIEVERS
    p = b.BasinPoint(data="mnist", n_memories=1, network="memory", similarity="euclidean",
                     separation="softmax", sep_param=1.0, output=None, retrieval="dynamics",
                     corruption="gaussian", level=0.3, trials=2)
    assert b.evaluate(p, RETRIEVERS)["probability"] == 1.0


def test_curves_of_different_sizes_are_kept_apart():
    rows = b.run(b.grid(b.BasinPoint(dim=11, n_memories=1, trials=2), b.flips_levels(11))
                 + b.grid(b.BasinPoint(dim=13, n_memories=1, trials=2), b.flips_levels(13)))
    cs = b.curves(rows, boots=20)
    assert sorted(c["radius"] for c in cs.values()) == [5.5, 6.5]


def test_cosine_dynamics_have_no_fixed_point_and_are_refused():
    # cosine is scale invariant: dS/dg = M^/|g| - S g/|g|^2 is orthogonal to g = v, so with
    # L_v quadratic d|v|/dt = -|v| exactly: |v(t)| = |v(0)| e^{-t}, to the integrator's rtol
    from uhn.dynamics.analysis.basin_retrieval import RETRIEVERS
    from uhn.dynamics.integrate import integrate
    from uhn.dynamics.lagrangians import log_sum_exp, quadratic
    from uhn.dynamics.network import Network
    rng = np.random.default_rng(5)
    M, Q = rng.random((12, 30)), rng.random((3, 30))
    net = Network(M, "cosine", L_v=quadratic(), L_h=log_sum_exp(1.0), tau_v=1.0, tau_h=0.1)
    traj = integrate(net, Q, 3.0, method="RK45-batched", n_samples=4, stop_at_fixed_point=True)
    assert not traj.converged.any()
    ratio = np.linalg.norm(traj.v, axis=-1) / np.linalg.norm(Q, axis=1)
    # the errors of the per-step local tolerances (rtol 1e-8) add up over ~100 steps
    np.testing.assert_allclose(ratio, np.exp(-traj.t)[:, None] * np.ones((1, 3)), rtol=1e-6)
    p = b.BasinPoint(data="random", dim=30, n_memories=12, network="memory", similarity="cosine",
                     separation="softmax", sep_param=1.0, output=None, retrieval="dynamics",
                     level=3, trials=1)
    with pytest.raises(ValueError, match="no fixed point but v = 0"):
        b.evaluate(p, RETRIEVERS)
    row = b.run([p], retrievers=RETRIEVERS)[0]      # the sweep stores it as a failed point
    assert row["probability"] is None and "orthogonal to v" in row["error"]
