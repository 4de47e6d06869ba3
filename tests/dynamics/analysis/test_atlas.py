"""The dynamics atlas: the beta-scaled memory Lagrangians, the single-shot output against
models.Memory, a linear network whose fixed point and Jacobian are known in closed form, the row
format (every parameter, every value, strict JSON), named errors, and ``uhn atlas``."""
import json
import math
import sys

import numpy as np
import pytest

import uhn.cli as cli
from uhn.dynamics.analysis import atlas
from uhn.dynamics import lagrangians as L
from uhn.dynamics.analysis.atlas import AtlasPoint
from uhn.models import Memory, get_separation
from uhn.models.experiments.store import load_results

EPS = np.finfo(np.float64).eps


@pytest.mark.parametrize("beta", [0.5, 1.0, 7.0])
def test_scaled_log_sum_exp_is_log_sum_exp_beta(beta, rng):
    """L(beta x)/beta with L = lse(1) is lse(beta): the same function computed two ways; both
    are a max-shifted logsumexp / softmax of beta x, so they agree to a few ulps of the terms."""
    x = rng.normal(size=(5, 7)) * 3
    u = rng.normal(size=(5, 7))
    scaled, direct = atlas.Scaled(L.log_sum_exp(1.0), beta), L.log_sum_exp(beta)
    size = np.abs(x).max(1) + 1.0  # |max x| + log sum exp(...) <= log 7 ~ 2: terms of value
    assert np.allclose(scaled.value(x), direct.value(x), rtol=0, atol=8 * EPS * size.max())
    assert np.allclose(scaled.grad(x), direct.grad(x), rtol=0, atol=8 * EPS)  # softmax in [0, 1]
    # hvp = beta (f u - f (f.u)): beta |u| sized terms
    assert np.allclose(scaled.hvp(x, u), direct.hvp(x, u), rtol=0,
                       atol=16 * EPS * beta * np.abs(u).max())
    assert atlas.memory_lagrangian("log_sum_exp", beta).name == f"log_sum_exp(beta={beta:g})"


def test_scaled_quadratic_and_polynomial_in_closed_form(rng):
    x, u = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
    q = atlas.memory_lagrangian("quadratic", 3.0)
    assert np.array_equal(q.grad(x), 3.0 * x) and np.array_equal(q.hvp(x, u), 3.0 * u)
    assert np.allclose(q.value(x), 1.5 * (x * x).sum(1), rtol=4 * EPS, atol=0)
    p = atlas.memory_lagrangian("rectified_polynomial", 2.0, degree=3)
    assert np.allclose(p.grad(x), np.maximum(2.0 * x, 0) ** 3, rtol=4 * EPS, atol=0)
    assert np.allclose(p.value(x), (np.maximum(2.0 * x, 0) ** 4).sum(1) / (4 * 2.0),
                       rtol=8 * EPS, atol=0)
    p.check_convex(x)  # Hessian 3 beta (beta x)_+^2 >= 0


def test_single_shot_is_memory_retrieve_with_softmax_beta():
    """z = M^T softmax(beta S(M, q)) computed by the atlas and by models.Memory: the same sums
    in a different order, so equal to round-off of |M^T| |w| (pixels <= 1, weights sum to 1)."""
    p = AtlasPoint(similarity="squared_euclidean", beta=5.0, n_memories=15, n_queries=6)
    net = atlas.network(p)
    M, Q = atlas.problem(p)
    z = atlas.single_shot(net, Q)
    mem = Memory(M, similarity="squared_euclidean", separation=get_separation("softmax", beta=5.0))
    assert np.allclose(z, mem.retrieve(Q), rtol=0, atol=64 * EPS * M.shape[0])


def test_linear_network_fixed_point_and_jacobian_in_closed_form():
    """dot similarity, L_v = |v|^2/2, L_h = beta |h|^2/2, I = 0 is linear:
    dv/dt = beta M^T h - v, tau dh/dt = M v - h. With beta sigma_max(M)^2 < 1 the only fixed point
    is 0, every query retrieves nothing, and the Jacobian is the constant matrix J below."""
    p0 = AtlasPoint(similarity="dot", L_h="quadratic", n_memories=6, n_queries=3, tau_ratio=0.5)
    M, _ = atlas.problem(p0)
    s2 = np.linalg.norm(M, 2) ** 2
    p = AtlasPoint(**{**p0.params(), "beta": 0.5 / s2})
    row = atlas.evaluate(p)
    D, N, tau, beta = M.shape[1], M.shape[0], p.tau_ratio, p.beta
    J = np.block([[-np.eye(D), beta * M.T], [M / tau, -np.eye(N) / tau]])
    lam = np.linalg.eigvals(J).real.max()
    # both eigvals of the same analytic J (fixed_points.jacobian uses it for dot): round-off of a
    # nonsymmetric eigenproblem ~ eps ||J|| times the condition of the eigenvalue (< 1e3 here)
    assert abs(row["jacobian_max_real"] - lam) <= 1e3 * EPS * np.linalg.norm(J, 2)
    assert lam < 0 and row["stable"] == 1.0
    assert row["converged"] == 1.0 and row["energy_passed"] and row["energy_monotone"]
    assert row["energy_violations"] == 0 and row["energy_violation"] is None
    assert not row["energy_diverging"]


def test_gain_above_one_diverges_and_is_a_failed_point_not_a_crash():
    """The same linear network with beta sigma_max^2 = 50 > 1 grows without bound: evaluate raises
    FloatingPointError naming the network, which atlas.run stores with the error."""
    p0 = AtlasPoint(similarity="dot", L_h="quadratic", n_memories=6, n_queries=3)
    M, _ = atlas.problem(p0)
    # max_nfev well above the default: the growing state takes ever smaller steps, and the
    # default limit would end it as a stall before it overflows
    p = AtlasPoint(**{**p0.params(), "beta": 50 / np.linalg.norm(M, 2) ** 2, "max_nfev": 100_000})
    with pytest.raises(FloatingPointError, match="floating-point error"):
        atlas.evaluate(p)
    row, = atlas.run([p])
    assert row["error"].startswith("FloatingPointError: integration of Network(")


def test_a_stalled_integration_is_a_failed_row_with_its_reason_and_cost():
    """An integration that needs more than max_nfev evaluations per query (here 50: the digits
    network at rtol 1e-6 takes hundreds of steps of 6 evaluations to reach rest) is stored as a
    failed row whose error names the limit, classified "stalled", with the time it took."""
    p = AtlasPoint(similarity="squared_euclidean", n_memories=10, n_queries=2, max_nfev=50)
    row, = atlas.run([p])
    assert row["error"].startswith("RuntimeError: integration stopped at t=")
    assert "more than 50 right-hand-side evaluations" in row["error"]
    assert atlas.failure_kind(row["error"]) == "stalled"
    assert row["seconds"] > 0 and "converged" not in row


@pytest.mark.parametrize("error, kind", [
    ("FloatingPointError: integration of Network(...) hit a floating-point error", "diverged"),
    ("OverflowError: exp overflow", "diverged"),
    ("RuntimeError: integration stopped at t=0.004 of 100.0: query 7: the step size fell below "
     "the spacing of floating-point times; the system is stiff", "step underflow"),
    ("RuntimeError: integration stopped at t=5.3 of 100.0: query 0: more than 10000 "
     "right-hand-side evaluations; the system is stiff", "stalled"),
    ("ValueError: bad", "invalid"),
    ("KeyError: x", "failed"),
])
def test_failure_kind_names_the_reason(error, kind):
    assert atlas.failure_kind(error) == kind


def test_figure_marks_failed_cells_with_their_reason(tmp_path):
    """Two measured cells and two failed ones (a stall, a divergence): the failed cells are
    hatched and say why, the measured ones show the energy verdict and convergence."""
    import matplotlib.pyplot as plt
    pts = atlas.grid([{"similarity": "squared_euclidean"}], L_v=("quadratic",),
                     L_h=("log_sum_exp",), betas=(1.0, 5.0), tau_ratios=(0.1, 1.0),
                     n_memories=10, n_queries=2)
    rows = atlas.run(pts[:2])
    rows.append({**pts[2].params(), "key": pts[2].key(),
                 "error": "RuntimeError: integration stopped at t=1 of 100.0: query 0: more "
                          "than 10000 right-hand-side evaluations"})
    rows.append({**pts[3].params(), "key": pts[3].key(),
                 "error": "FloatingPointError: integration of Network() overflowed"})
    fig = atlas.plot(rows)
    try:
        ax = fig.axes[0]
        texts = sorted(t.get_text() for t in ax.texts)
        assert texts == sorted(["diverged", "stalled"] + [
            f"{'E' if r['energy_passed'] else 'x'} {r['converged']:.2f}" for r in rows[:2]])
        hatched = [p for p in ax.patches if p.get_hatch()]
        assert len(hatched) == 2
        assert "2 points" in fig._suptitle.get_text()
        assert len(fig.axes) == 2  # the panel and its colour bar
    finally:
        plt.close(fig)


def test_row_holds_every_parameter_and_value_as_strict_json(tmp_path):
    pts = atlas.grid([{"similarity": "squared_euclidean"}], L_v=("log_cosh",), L_h=("log_sum_exp",),
                     betas=(20.0,), tau_ratios=(1.0,), n_memories=10, n_queries=4, level=0.1)
    row, = atlas.run(pts, tmp_path / "a.jsonl")
    assert row == load_results(tmp_path / "a.jsonl")[0]
    json.dumps(row, allow_nan=False)
    assert AtlasPoint.from_row(row) == pts[0] and row["key"] == pts[0].key()
    for name in ("energy_passed", "energy_monotone", "energy_sign_ok", "energy_fd_ok",
                 "energy_flow_ok", "converged", "t_converge_median", "t_converge_max",
                 "shot_accuracy", "fixed_point_accuracy", "memory_accuracy",
                 "fixed_point_agrees_shot", "dist_fixed_point_shot", "jacobian_max_real", "nfev",
                 "nfev_max_query"):
        assert row[name] is not None, name
    # the batch's evaluations are the sum over its 4 queries of each one's count
    assert row["nfev_max_query"] <= row["nfev"] <= 4 * row["nfev_max_query"]
    # a passed verdict is the conjunction of the checks recorded beside it
    assert row["energy_passed"] <= (row["energy_monotone"] and row["energy_sign_ok"]
                                    and row["energy_fd_ok"] and row["energy_flow_ok"])
    # softmax at beta 20 over digits 0.1-noise queries: single shot retrieves every one, and the
    # converged fixed points are stable (all eigenvalues of J with negative real part)
    assert row["shot_accuracy"] == 1.0 and row["converged"] == 1.0
    assert row["jacobian_max_real"] < 0
    assert 0 < row["t_converge_median"] <= row["t_converge_max"] <= pts[0].t_end


@pytest.mark.parametrize("kw, message", [
    ({"L_v": "relu"}, "unknown L_v 'relu'"),
    ({"L_h": "max"}, "unknown L_h 'max'"),
    ({"beta": 0}, "beta must be > 0"),
    ({"beta": math.inf}, "beta must be a finite number"),
    ({"n_queries": 30, "n_memories": 20}, r"n_queries \(30\) must be <= n_memories"),
    ({"n_memories": 2.5}, "n_memories must be a whole number"),
    ({"input_mode": "held"}, "input_mode must be one of"),
    ({"degree": 0}, "degree must be >= 1"),
])
def test_bad_points_are_named(kw, message):
    with pytest.raises(ValueError, match=message):
        AtlasPoint(**kw)


def test_validate_refuses_similarities_without_a_gradient_and_unknown_data():
    with pytest.raises(ValueError, match="similarity 'hamming' cannot drive the dynamics"):
        atlas.validate(AtlasPoint(similarity="hamming"))
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        atlas.validate(AtlasPoint(dataset="cifar"))
    with pytest.raises(TypeError, match="atlas points must be AtlasPoint"):
        atlas.run(["dot"])


def test_full_grid_is_the_documented_atlas():
    pts = atlas.grid()
    # 5 similarities x 2 L_v + kl x softplus, each x 3 L_h x 3 beta x 2 tau ratios
    assert len(pts) == (5 * 2 + 1) * 3 * 3 * 2 == len(set(pts))
    assert {p.L_v for p in pts if p.similarity == "kl"} == {"softplus"}
    assert {p.input_mode for p in pts if p.similarity == "cosine"} == {"clamped"}
    assert {p.sim_eps for p in pts if p.similarity == "manhattan"} == {0.05}


# ---------------------------------------------------------------------------------- uhn atlas

@pytest.fixture
def uhn():
    """uhn.cli.main (atlas is one of its subcommands)."""
    assert "atlas" in cli.SUBCOMMANDS
    return cli.main


def test_uhn_atlas_quick_end_to_end(tmp_path, capsys, uhn):
    out, fig = tmp_path / "a.jsonl", tmp_path / "atlas.png"
    assert uhn(["atlas", "--quick", "--out", str(out), "--figure", str(fig)]) == 0
    text = capsys.readouterr()
    rows = load_results(out)
    assert len(rows) == 8 and fig.stat().st_size > 0
    assert "== atlas: 8 points" in text.out and "max Re(lambda)" in text.out
    n_failed = sum(bool(r.get("error")) for r in rows)
    assert f"{n_failed} points failed" in text.out
    assert uhn(["atlas", "--quick", "--out", str(out)]) == 0  # resumed from the store
    assert load_results(out) == rows


@pytest.mark.parametrize("args, message", [
    (["--similarities", "hamming"], "similarity 'hamming' cannot drive the dynamics"),
    (["--figure", "x.pdf"], "--figure must be a .png file"),
    (["--n-queries", "30"], r"n_queries \(30\) must be <= n_memories"),
])
def test_uhn_atlas_bad_values_are_one_error_line(tmp_path, capsys, uhn, args, message):
    assert uhn(["atlas", "--quick", "--out", str(tmp_path / "a.jsonl"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("uhn atlas: error:")
    assert __import__("re").search(message, err[0])
    assert not (tmp_path / "a.jsonl").exists()


def test_uhn_atlas_refuses_workers_and_scheduler_together(uhn, capsys):
    with pytest.raises(SystemExit) as exc:
        uhn(["atlas", "--workers", "2", "--scheduler", "tcp://h:8786"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_atlas_module_runs_without_dask_for_the_local_engine(monkeypatch):
    """The in-process engine never imports dask (it is an optional extra)."""
    monkeypatch.setitem(sys.modules, "distributed", None)
    from uhn.models.experiments import sweep
    with sweep.connect() as engine:
        assert engine == "local"
    with pytest.raises(ImportError, match="pip install"):
        with sweep.connect(workers=1):
            pass
