"""Atlas rows from their fields alone (queries and a full re-measurement), and a diverging
linear network classified as diverging, not as a stall."""
import re

import numpy as np
import pytest
import scipy.linalg

from uhn.dynamics.analysis import atlas
from uhn.dynamics.analysis.atlas import AtlasPoint
from uhn.dynamics.analysis.fixed_points import jacobian
from uhn.models.experiments import store, sweep
from uhn.models.experiments.store import load_results

SMALL = AtlasPoint(n_memories=6, n_queries=2)


def test_queries_are_rebuilt_from_a_rows_fields_by_the_documented_recipe(tmp_path):
    from uhn.models.corruption import corrupt
    from uhn.models.data import load_dataset
    path = tmp_path / "a.jsonl"
    p = AtlasPoint(n_memories=6, n_queries=3, corruption="mask_bottom", level=0.4, seed=3)
    atlas.run([p], path)
    row, = load_results(path)
    M, Q = atlas.queries(row)
    ds = load_dataset(row["dataset"], seed=row["seed"])  # the recipe of atlas.problem, spelt out
    M2 = ds.X[:row["n_memories"]]
    Q2 = corrupt(M2[:row["n_queries"]], row["corruption"], row["level"], ds.image_shape,
                 seed=np.random.default_rng(atlas.corruption_seed(AtlasPoint.from_row(row))))
    assert np.array_equal(M, M2) and np.array_equal(Q, Q2)
    assert np.array_equal(Q, atlas.problem(p)[1]) and not np.array_equal(Q, M[:3])


def test_an_atlas_row_is_recomputed_from_its_fields_alone(tmp_path):
    path = tmp_path / "a.jsonl"
    atlas.run([SMALL], path)
    row, = load_results(path)
    fresh = atlas.recompute(row)
    assert sweep.comparable(fresh) == sweep.comparable(row)
    assert store.check_seal(fresh) is None
    with pytest.raises(ValueError, match=r"lacks the parameter fields \['dataset'"):
        atlas.recompute({"key": row["key"]})


def test_a_diverging_linear_network_is_classified_diverging_not_stalled():
    """dot similarity, quadratic L_v and L_h at beta 5: a linear flow y' = J y with a constant
    Jacobian whose largest real eigenvalue is positive. RK45 follows the exponential growth with
    steps ~ 1 / lambda and exhausts max_nfev long before overflow; the row must say diverging,
    with lambda and the growth equal to the closed form y(t) = expm(J t) y(0)."""
    p = AtlasPoint(similarity="dot", L_h="quadratic", beta=5.0)
    row, = atlas.run([p])
    assert row["error"].startswith("FloatingPointError: diverging: the state grows without bound")
    assert "more than 10000 right-hand-side evaluations" in row["error"]  # the stall it explains
    assert atlas.failure_kind(row["error"]) == "diverged"
    m = re.search(r"query (\d+): \|\(v, h\)\| x(\S+) over t in \[0, (\S+)\], max Re\(lambda\) of "
                  r"the Jacobian = (\S+) at its initial state", row["error"])
    b, growth, t_p, lam = int(m[1]), float(m[2]), float(m[3]), float(m[4])
    net = atlas.network(p)
    _, Q = atlas.problem(p)
    v0, h0 = net.initial_state(Q)
    J = jacobian(net, v0[b], h0[b], np.zeros(net.D), method="fd")  # not the analytic one used
    lam_fd = np.linalg.eigvals(J).real.max()
    assert lam == pytest.approx(lam_fd, rel=5e-3)                  # 3 significant digits printed
    y0 = np.concatenate([v0[b], h0[b]])
    t_exact = atlas.PROBE_EFOLDS / lam_fd              # the probe's length, unrounded
    assert t_p == pytest.approx(t_exact, rel=5e-3)
    closed = np.linalg.norm(scipy.linalg.expm(J * t_exact) @ y0) / np.linalg.norm(y0)
    # 3 significant digits printed; RK45 at rtol 1e-6 over 10 e-foldings is far closer
    assert growth == pytest.approx(closed, rel=5e-3)
    assert growth > atlas.DIVERGENCE_GROWTH


def test_a_stiff_stall_of_a_bounded_flow_stays_a_stall():
    """log_sum_exp memory layer (bounded softmax rates): the Jacobian at the start has no
    positive eigenvalue, so a stall there is not called diverging."""
    p = AtlasPoint(similarity="squared_euclidean", n_memories=10, n_queries=2, max_nfev=50)
    net = atlas.network(p)
    _, Q = atlas.problem(p)
    assert atlas.divergence(net, Q, p) is None
    row, = atlas.run([p])
    assert atlas.failure_kind(row["error"]) == "stalled"


def test_a_divergence_behind_a_fast_transient_is_found_by_a_further_probe():
    """Euclidean similarity with quadratic L_v and L_h: the largest eigenvalue at the start (+99,
    the fast memory layer, tau_h = 0.1) decays into a slower growing mode (~ +26), so the first
    probe of 10 / 99 sees the state grow only ~9-fold; the next probe, 10 / 26 longer, finds the
    divergence. Checked against an independent integration: |(v, h)| really grows without bound."""
    from uhn.dynamics.integrate import integrate
    p = AtlasPoint(similarity="euclidean", L_h="quadratic", beta=5.0)
    net = atlas.network(p)
    _, Q = atlas.problem(p)
    why = atlas.divergence(net, Q, p)
    assert why is not None and why.startswith("diverging: the state grows without bound")
    b = int(re.search(r"query (\d+)", why)[1])
    lam_end = float(re.search(r", (\S+) at t = ", why)[1])
    assert 0 < lam_end < 99 / 2                        # the slower mode, not the initial one
    tr = integrate(net, Q[b:b + 1], 4.0, method="RK45-batched", rtol=p.rtol, atol=p.atol,
                   max_nfev=p.max_nfev, n_samples=5)
    size = [np.linalg.norm(np.concatenate([tr.v[i, 0], tr.h[i, 0]])) for i in range(5)]
    rates = np.diff(np.log(size))                     # per unit time
    assert np.all(rates[1:] > 0.5 * lam_end) and size[-1] > 1e30 * size[0]
