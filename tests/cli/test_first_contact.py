"""First contact (issue 29): a first run says what it compiles, a sweep's ETA does not extrapolate
from the compile-laden first point, the command-line defaults that differ from the API's are
said, and an option pair that cannot work is refused before anything loads."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import uhn.cli as cli
from uhn.cli import Eta
from cli_run import run

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ compile notices
def test_library_notes_reach_stderr_once(capsys):
    cli.show_library_notes()
    cli.show_library_notes()                      # idempotent: one handler, one line per record
    logging.getLogger("uhn.models.kernels").info("compiling the X kernel for float64")
    logging.getLogger("uhn.models.kernels").debug("not shown")
    out, err = capsys.readouterr()
    assert out == "" and err == "compiling the X kernel for float64\n"


def _demo(cache, out):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "uhn", "demo", "--dataset", "digits", "--n-memories", "12",
                           "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.skipif(not __import__("uhn.models.kernels", fromlist=["x"]).HAVE_NUMBA,
                    reason="no numba: nothing is compiled")
def test_a_cold_demo_says_what_it_compiles_and_a_warm_one_is_silent(tmp_path):
    """An empty numba cache (a fresh install): the demo names each kernel it compiles, for which
    dtype and where it is cached, before the compile; the next run loads them and says nothing."""
    cache = tmp_path / "numba"
    cold = _demo(cache, tmp_path / "a.png")
    assert cold.returncode == 0, cold.stderr
    notices = [x for x in cold.stderr.splitlines() if x.startswith("compiling")]
    assert any("L1 / Lp distance kernel for float64" in x for x in notices), cold.stderr
    assert any("squared-distance kernel for float64" in x for x in notices), cold.stderr
    assert all(f"numba caches it in {cache}" in x for x in notices), notices
    assert "manhattan:" in cold.stdout
    warm = _demo(cache, tmp_path / "b.png")
    assert warm.returncode == 0 and "compiling" not in warm.stderr, warm.stderr
    def retrieved(stdout):                 # each similarity's fraction, without its timing
        return [x.split("(")[0] for x in stdout.splitlines() if "retrieved" in x]
    assert len(retrieved(cold.stdout)) == 6 and retrieved(warm.stdout) == retrieved(cold.stdout)


# ------------------------------------------------------------------ the sweep ETA
def test_eta_leaves_out_the_first_measured_point_and_stored_ones():
    """The issue's case: a resumed sweep of 100 points, 1 stored, whose first measured point
    takes 40 s (the compile) and the next ones 1 s each. tqdm's rate would say 98 x 40 s
    (1:05:20) after it; the Eta says nothing until two gaps agree, then 1 s per point left."""
    eta = Eta()
    assert eta.update(1, 100, False, now=0.0) is None          # from the store: no time
    assert eta.update(2, 100, True, now=40.0) is None          # first measured: start-up inside
    assert eta.update(3, 100, True, now=41.0) is None          # one gap: nothing to check it by
    assert eta.update(4, 100, False, now=41.0) is None         # a stored row adds no gap
    assert eta.update(5, 100, True, now=43.0) == pytest.approx(95 * 1.5)   # gaps 1 and 2 s
    assert eta.update(100, 100, True, now=44.0) == 0.0


def test_eta_drops_a_later_compile_but_keeps_a_parallel_pace():
    """A second kernel compiled at the second measured point (gap 3 s among 0.05 s gaps) is left
    out once there are three gaps; two workers finishing in pairs (gaps 0.01, 1.0, ...) keep
    their mean, 0.505 s a point."""
    eta = Eta()
    for i, t in enumerate([0.0, 3.0, 3.05]):
        assert eta.update(i + 1, 50, True, now=t) is None      # gaps 3 and 0.05: too far apart
    assert eta.update(4, 50, True, now=3.1) == pytest.approx(46 * 0.05)
    pair = Eta()
    t, left = 0.0, None
    for i in range(9):
        left = pair.update(i + 1, 100, True, now=t)
        t += 0.01 if i % 2 == 0 else 1.0
    assert left == pytest.approx(91 * (4 * 1.01 / 8))
    batches = Eta()                 # a cluster returning points in threes: most gaps are 0
    for i, t in enumerate([0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 4.0, 4.0]):
        left = batches.update(i + 1, 20, True, now=t)
    assert left == pytest.approx(12 * 4.0 / 7)


def test_capacity_progress_bar_runs_a_sweep_with_stored_and_failed_rows(capsys):
    cb, close = cli.capacity_progress_bar("noise", threads=2)
    rows = [{"n_memories": 10, "similarity": "dot", "fraction_correct": 0.5},
            {"n_memories": 20, "similarity": "dot", "fraction_correct": None, "error": "boom"},
            {"n_memories": 30, "similarity": "dot", "fraction_correct": 0.25}]
    for i, row in enumerate(rows):
        cb(i + 1, 3, row, i > 0)
    close()
    close()                                                    # twice is harmless
    _, err = capsys.readouterr()
    assert "noise" in err and "Traceback" not in err


# ------------------------------------------------------------------ defaults and option pairs
def test_dynamics_help_names_the_api_defaults_it_overrides(capsys):
    rc, out, _ = run(["dynamics", "--help"], capsys)
    text = " ".join(out.split())
    assert rc == 0
    for shown in ("(default: squared_euclidean; the API's default, Memory / Network, is dot)",
                  "(default: clamped; the API's default, integrate's input_mode, is initial)",
                  "(default: memory; the API's default, compare's readout, is auto)"):
        assert shown in text, shown


def test_demo_help_names_the_api_default_it_overrides(capsys):
    rc, out, _ = run(["demo", "--help"], capsys)
    assert rc == 0 and "(default: max; the API's default, Memory, is identity)" in " ".join(out.split())


def test_dynamics_header_names_overridden_defaults_left_in_place():
    from uhn.cli.dynamics_cmd import cli_defaults_note

    def build_args(argv):
        return cli.build_parser("dynamics").parse_args(["dynamics", *argv])
    assert cli_defaults_note(build_args([])) == (
        "command-line defaults: --similarity squared_euclidean (the API's default, Memory / Network, "
        "is dot); --input-mode clamped (the API's default, integrate, is initial); --readout memory "
        "(the API's default, compare, is auto)")
    args = build_args(["--similarity", "dot", "--input-mode", "initial", "--readout", "auto"])
    assert cli_defaults_note(args) == ""


@pytest.fixture
def load_reached(monkeypatch):
    """load_dataset raises a marker ValueError: an error naming it means the checks before it passed."""
    import uhn.models.data as data

    def marker(*a, **k):
        raise ValueError("load reached")
    monkeypatch.setattr(data, "load_dataset", marker)


@pytest.mark.parametrize("similarity", ["squared_euclidean", "euclidean", "manhattan", "kl"])
def test_polynomial_on_nonpositive_scores_is_refused_naming_the_fix(capsys, load_reached, similarity):
    rc, out, err = run(["dynamics", "--separation", "polynomial", "--similarity", similarity], capsys)
    line = err.strip().splitlines()[-1]
    assert rc == 2 and out == "" and "Traceback" not in err
    assert line.startswith("uhn dynamics: error: --separation polynomial weights nothing on "
                           f"--similarity {similarity}") and "use --similarity dot" in line


@pytest.mark.parametrize("argv", [["--separation", "polynomial", "--similarity", "dot"],
                                  ["--separation", "softmax"]])
def test_workable_pairs_pass_the_check(capsys, load_reached, argv):
    rc, _, err = run(["dynamics", *argv], capsys)
    assert rc == 2 and err.strip().endswith("error: load reached"), err


@pytest.mark.skipif(not __import__("uhn.models.kernels", fromlist=["x"]).HAVE_NUMBA,
                    reason="no numba: nothing is compiled")
def test_a_first_capacity_interrupted_while_compiling_keeps_the_kernels_it_finished(tmp_path):
    """The issue's case: a first ``uhn capacity`` (empty numba cache) interrupted (SIGINT) while
    it compiles its second kernel stops with exit 130 and the resume note; the rerun finishes
    and compiles again only what was not finished (the first kernel is not announced again)."""
    import signal
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"), MPLBACKEND="Agg",
               PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "uhn", "capacity", "--experiment", "similarity_vs_n", "--quick",
           "--out", str(tmp_path / "cap.jsonl")]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    seen = ""
    while seen.count("compiling the ") < 2:
        ch = proc.stderr.read(1)
        if not ch:
            break
        seen += ch
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=300)[1]
    finished = [x.split(" kernel")[0] for x in seen.replace("\r", "\n").splitlines()
                if x.startswith("compiling the ") and " kernel for " in x]
    assert len(finished) == 1, seen          # the second notice was being written when we stopped
    assert proc.returncode == 130 and "Run the same command again to resume" in rest, rest
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    announced = [x.split(" kernel")[0] for x in again.stderr.replace("\r", "\n").splitlines()
                 if x.startswith("compiling the ")]
    assert finished[0] not in announced, (finished, announced)
    assert "== similarity_vs_n on mnist: 48 points" in again.stdout
