"""The ``uhn`` command line: exit statuses (0, 1 on a failed check, 2 on bad input), what each
subcommand prints and writes, and that nothing is written outside the chosen output.

Runs in-process through uhn.cli.main with capsys (small sizes: sklearn digits, few queries,
short runs, brian2 on the numpy target), plus real subprocess runs of ``python -m uhn``.
"""
import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import uhn.cli as cli
from cli_run import run

REPO = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


def error_line(err: str, command: str) -> str:
    """The one error line of stderr (progress notes before it are allowed; nothing after)."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert lines and lines[-1].startswith(f"uhn {command}: error: " if command else "uhn: error: "), err
    assert sum("error:" in line for line in lines) == 1, err
    return lines[-1]


# ------------------------------------------------------------------ conventions
def test_version_and_help_with_defaults(capsys):
    from importlib.metadata import version
    rc, out, _ = run(["--version"], capsys)
    assert rc == 0 and out.strip() == f"uhn {version('universal-hopfield')}"
    for command, shown in [("dynamics", "(default: 5.0)"), ("demo", "(default: 100)"),
                           ("brian2", "(default: numpy)"), ("figures", "(default: figures)")]:
        rc, out, _ = run([command, "--help"], capsys)
        assert rc == 0 and shown in " ".join(out.split()), (command, out)


@pytest.mark.parametrize("argv,message", [
    (["demo", "--separation", "foo"], "unknown separation 'foo'"),
    (["demo", "--dataset", "foo"], "unknown dataset 'foo'"),
    (["demo", "--corruption", "foo", "--dataset", "digits"], "unknown corruption 'foo'"),
    (["demo", "--n-memories", "0"], "argument --n-memories: expected a positive integer, got '0'"),
    (["demo", "--level", "nan"], "argument --level: expected a finite number >= 0, got 'nan'"),
    (["demo", "--out", "picture.jpg"], "--out must name a .png file, got 'picture.jpg'"),
    (["demo", "--threshold", "-1"], "argument --threshold: expected a finite number >= 0, got '-1'"),
    (["capacity", "--experiment", "noise", "--figure", "curve.jpgg"],
     "unknown image suffix '.jpgg'"),     # refused before the sweep, not after it
    (["capacity", "--experiment", "similarity_vs_n", "--n-memories", "5000", "--blocks", "3"],
     "n_memories [5000] do not fit"),
    (["dynamics", "--similarity", "foo"], "unknown similarity 'foo'"),
    (["dynamics", "--beta", "inf"], "argument --beta: expected a finite number, got 'inf'"),
    (["dynamics", "--t-end", "-1"], "argument --t-end: expected a positive finite number, got '-1'"),
    (["dynamics", "--tau-h", "0"], "argument --tau-h: expected a positive finite number, got '0'"),
    (["dynamics", "--n-queries", "2.5"], "argument --n-queries: expected a positive integer, got '2.5'"),
    (["dynamics", "--separation", "max"], "argument --separation: invalid choice: 'max'"),
    (["brian2", "--dt", "0"], "argument --dt: expected a positive finite number or 'auto', got '0'"),
    (["brian2", "--dt", "fast"], "argument --dt: expected a positive finite number or 'auto', got 'fast'"),
    (["brian2", "--dt-tol", "0"], "argument --dt-tol: expected a positive finite number, got '0'"),
    (["brian2", "--t-end", "0.015", "--dt", "0.01"], "not a whole number of steps of dt = 0.01 ms"),
    (["brian2", "--dataset", "foo"], "unknown dataset 'foo'"),
    (["brian2", "--record-every", "0"], "argument --record-every: expected a positive integer"),
    (["brian2", "--seed", "-1"], "argument --seed: expected an integer >= 0, got '-1'"),
    (["nonsense"], "invalid choice: 'nonsense'"),
])
def test_bad_values_give_one_error_line_and_exit_2(capsys, argv, message):
    rc, out, err = run(argv, capsys)
    assert rc == 2
    line = error_line(err, argv[0] if argv[0] != "nonsense" else "")
    assert message in line


@pytest.mark.parametrize("command", ["dynamics", "brian2", "figures"])
def test_out_that_is_a_file_is_refused_before_any_work(capsys, tmp_path, command):
    f = tmp_path / "taken"
    f.write_text("x")
    rc, out, err = run([command, "--out", str(f)], capsys)
    assert rc == 2 and "is a file" in error_line(err, command)
    assert out == ""   # refused before loading or integrating anything


def test_input_errors_raised_inside_a_subcommand_are_one_line(capsys, monkeypatch):
    # any ValueError / TypeError / OverflowError / FloatingPointError from library code: exit 2
    def boom(args):
        raise FloatingPointError("overflow in exp\nsecond line")
    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda only=None: parser)
    parser._subparsers._group_actions[0].choices["demo"].set_defaults(func=boom)
    rc, _, err = run(["demo"], capsys)
    assert rc == 2 and error_line(err, "demo") == "uhn demo: error: overflow in exp second line"


def test_a_subcommand_builds_its_own_parser_alone(capsys):
    """`uhn <command>` registers that subcommand only, so it does not import what the others'
    options need: in a fresh interpreter the capacity parser leaves the integrators, the fixed
    points, brian2's backend and scipy.spatial (only two rare similarities use it) unimported.
    `uhn --help` still lists every subcommand."""
    import subprocess
    import sys
    code = ("import sys; from uhn.cli import build_parser; p = build_parser('capacity'); "
            "print(sorted(p._subparsers._group_actions[0].choices), [m for m in ('uhn.dynamics.integrate', "
            "'uhn.dynamics.analysis.fixed_points', 'uhn.dynamics.backends.brian2_rate', 'scipy.spatial') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["['capacity']", "[]"]
    rc, out, _ = run(["--help"], capsys)
    assert rc == 0 and all(c in out for c in cli.SUBCOMMANDS)
    assert sorted(cli.build_parser()._subparsers._group_actions[0].choices) == sorted(cli.SUBCOMMANDS)


def test_validators():
    assert cli.positive_int("3") == 3 and cli.nonnegative_int("0") == 0
    assert cli.positive_float("1e-3") == 1e-3 and cli.finite_float("-2") == -2.0
    for fn, text in [(cli.positive_int, "0"), (cli.positive_int, "x"), (cli.nonnegative_int, "-1"),
                     (cli.positive_float, "0"), (cli.positive_float, "nan"), (cli.finite_float, "-inf"),
                     (cli.nonnegative_float, "-1e-300")]:
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(repr(text))):
            fn(text)


# ------------------------------------------------------------------ demo
def test_demo_prints_each_similarity_and_writes_a_png(capsys, tmp_path):
    from uhn.models import Memory
    from uhn.models.corruption import corrupt
    from uhn.models.data import load_dataset
    out_png = tmp_path / "d" / "demo.png"
    rc, out, _ = run(["demo", "--dataset", "digits", "--n-memories", "30", "--out", str(out_png)], capsys)
    assert rc == 0
    assert out_png.read_bytes()[:8] == PNG
    # the printed fractions are those of the library on the same data
    ds = load_dataset("digits", n=30, seed=0)
    Q = corrupt(ds.X, "gaussian", 0.5, ds.image_shape, seed=0)
    thr = 50.0 * ds.D / 784
    for name in ("dot", "euclidean", "manhattan"):
        Z = Memory(ds.X, similarity=name, separation="max").retrieve(Q)
        frac = np.mean(((Z - ds.X) ** 2).sum(1) <= thr)
        assert re.search(rf"^\s*{name}:\s+{frac:.3f} retrieved", out, re.M), (name, frac, out)
    assert f"wrote {out_png}" in out
    assert "command-line defaults: --separation max (the API's default, Memory, is identity)" in out


# ------------------------------------------------------------------ dynamics
DYN = ["dynamics", "--n-queries", "4"]


def test_dynamics_defaults_retrieve_every_query_and_keep_the_trajectory(capsys, tmp_path):
    from uhn.dynamics.trajectory import load_trajectory
    rc, out, err = run(DYN + ["--out", str(tmp_path / "run")], capsys)
    assert rc == 0, err
    assert "energy check: PASS" in out
    assert "retrieved 4/4 queries" in out
    assert "| squared_euclidean | softmax(beta=5) | memory | 4 | 1.00 |" in out
    assert "integrating 4 queries" in err   # progress on stderr, results on stdout
    # the header says which command-line defaults differ from the API's
    assert "command-line defaults: --similarity squared_euclidean (the API's default, Memory / " \
           "Network, is dot); --input-mode clamped (the API's default, integrate, is initial)" in out
    traj = load_trajectory(tmp_path / "run" / "trajectory.nc")
    assert traj.v.shape[1:] == (4, 64) and traj.h.shape[1:] == (4, 20) and traj.converged.all()
    assert traj.params["similarity"] == "squared_euclidean" and traj.params["input_mode"] == "clamped"
    for name in ("energy", "memory_activations", "snapshots"):
        assert (tmp_path / "run" / f"{name}.png").read_bytes()[:8] == PNG
    # the saved run is the library's run with the same settings, bit for bit
    from uhn.dynamics.integrate import integrate
    from uhn.dynamics.network import Network
    from uhn.dynamics import lagrangians as L
    from uhn.models.corruption import corrupt
    from uhn.models.data import load_dataset
    ds = load_dataset("digits", n=20, seed=0)
    Q = corrupt(ds.X[:4], "gaussian", 0.3, ds.image_shape, seed=1)
    net = Network(ds.X, "squared_euclidean", L_h=L.log_sum_exp(5.0), tau_v=1.0, tau_h=0.1)
    ref = integrate(net, Q, 50.0, input_mode="clamped")
    assert ref.v.tobytes() == traj.v.tobytes()


def test_dynamics_says_why_queries_were_not_retrieved(capsys):
    # dot similarity on unnormalised digits: high-norm memory 2 captures queries 0 and 1
    rc, out, _ = run(DYN + ["--similarity", "dot", "--input-mode", "initial"], capsys)
    assert rc == 0
    assert "retrieved 2/4 queries" in out
    assert re.search(r"query 0: spurious attractor: converged onto memory 2 .* not memory 0", out)
    rc, out, _ = run(DYN + ["--beta", "0.05"], capsys)
    assert "retrieved 0/4 queries" in out and out.count("beta too small") == 4


def test_dynamics_exits_1_when_the_energy_check_fails(capsys, monkeypatch):
    import uhn.dynamics.analysis.energy as energy
    real = energy.verify_energy

    def failing(net, traj, **kw):
        report = real(net, traj, **kw)
        report.passed = False
        return report
    monkeypatch.setattr(energy, "verify_energy", failing)
    rc, out, _ = run(DYN + ["--n-queries", "2"], capsys)
    assert rc == 1


def test_dynamics_exits_2_when_the_integration_cannot_finish(capsys):
    rc, out, err = run(DYN + ["--max-nfev", "5"], capsys)
    assert rc == 2 and "integration failed" in error_line(err, "dynamics")


# ------------------------------------------------------------------ brian2
B2 = ["brian2", "--target", "numpy"]


def test_brian2_short_run_prints_comparison_and_keeps_both_trajectories(capsys, tmp_path):
    pytest.importorskip("brian2")
    from uhn.dynamics.trajectory import load_trajectory
    rc, out, err = run(B2 + ["--t-end", "5", "--dt", "0.02", "--record-every", "5",
                             "--out", str(tmp_path)], capsys)
    assert rc == 0, err
    assert "brian2 energy:" in out and "monotone" in out and "INCREASES" not in out
    # 5 ms = 5 tau_v is not enough to settle: the diagnosis says so
    assert "brian2 run: not converged" in out
    b2, sp = load_trajectory(tmp_path / "brian2.nc"), load_trajectory(tmp_path / "scipy.nc")
    assert b2.backend == "brian2/numpy" and b2.params["dt"] == 0.02 and len(b2.t) == 51
    np.testing.assert_array_equal(b2.t, sp.t)
    dv = float(re.search(r"max \|v_brian2 - v_scipy\| = (\S+)", out).group(1))
    # the printed difference is the saved one: "%.3e" keeps 4 significant digits, a relative
    # rounding of at most 5e-4
    assert dv == pytest.approx(np.abs(b2.v - sp.v).max(), rel=5e-4)
    assert (tmp_path / "brian2_vs_scipy.png").read_bytes()[:8] == PNG


def test_brian2_defaults_retrieve_memory_0(capsys):
    """The default step is run_brian2's: dt = "auto" for dt_tol = 1e-3, so the printed feature
    difference to scipy (rtol 1e-10) is the scheme's error, which auto_dt aims at 0.8^2 of that
    tolerance in error_norm (max-norm relative to max(1, |y|); the digits' features are O(1));
    the bound allows 10x for the error constant estimated from a short pilot window."""
    pytest.importorskip("brian2")
    rc, out, _ = run(B2, capsys)
    assert rc == 0 and "brian2 run: retrieved memory 0" in out
    assert re.search(r"dt = [\d.e-]+ ms \(auto\)", out)
    dv = float(re.search(r"max \|v_brian2 - v_scipy\| = (\S+)", out).group(1))
    assert dv < 1e-2


def test_brian2_exits_1_when_an_energy_increases(capsys, monkeypatch):
    pytest.importorskip("brian2")
    import uhn.cli.brian2_cmd as b2cmd
    monkeypatch.setattr(b2cmd, "_largest_increase", lambda E: (1.0, 3))
    rc, out, _ = run(B2 + ["--t-end", "1", "--dt", "0.05"], capsys)
    assert rc == 1 and "INCREASES" in out


# ------------------------------------------------------------------ figures
def test_figures_write_only_under_out(capsys, tmp_path, monkeypatch):
    import uhn.models.experiments.figures as capacity_figures
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    calls = {}

    def fake_capacity(out_dir, quick=False, progress_bar=None, results_path=None, pdf=False):
        calls.update(out_dir=Path(out_dir), results_path=Path(results_path))
        return []
    monkeypatch.setattr(capacity_figures, "make_capacity_figures", fake_capacity)
    out = tmp_path / "F"
    rc, text, _ = run(["figures", "--out", str(out), "--quick", "--no-brian2"], capsys)
    assert rc == 0
    assert list(cwd.iterdir()) == []
    assert calls == {"out_dir": out, "results_path": out / "results" / "capacity_quick.jsonl"}
    for name in ("dynamics_energy.png", "spiking_network.png", "spiking_convergence.png", "atlas_digits.png",
                 "hierarchical_retrieval.png", "latent_capacity_mnist.png", "latent_capacity_mnist_nearest.png",
                 "theory_classical.png", "theory_hopfield1982.png", "theory_capacities.png",
                 "theory_fixed_points.png", "basins_mnist.png"):
        assert (out / name).read_bytes()[:8] == PNG, name
    for store in ("atlas", "latent", "theory", "basins"):
        assert (out / "results" / f"{store}_quick.jsonl").is_file(), store
    assert "wrote" in text


# ------------------------------------------------------------------ python -m uhn
def _python_m(*args):
    env = dict(os.environ, MPLBACKEND="Agg")
    return subprocess.run([sys.executable, "-m", "uhn", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_python_m_uhn_version_and_bad_input():
    p = _python_m("--version")
    assert p.returncode == 0 and p.stdout.startswith("uhn ")
    p = _python_m("demo", "--separation", "foo")
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().splitlines() == [
        "uhn demo: error: unknown separation 'foo'; choose one of ['exp', 'identity', 'k_max', "
        "'log', 'max', 'polynomial', 'softmax', 'threshold']"]


def test_python_m_uhn_runs_a_subcommand(tmp_path):
    p = _python_m("dynamics", "--n-queries", "2", "--t-end", "20", "--out", str(tmp_path))
    assert p.returncode == 0, p.stderr
    assert "retrieved 2/2 queries" in p.stdout and (tmp_path / "trajectory.nc").is_file()
