"""``uhn theory``: the study's points into a resumable store, the report of every number beside
its theory, figures on request; bad combinations are one error line."""
from __future__ import annotations

import json

from cli_run import run
from uhn.models.experiments import theory


def test_theory_runs_reports_and_resumes(capsys, tmp_path):
    out = tmp_path / "t.jsonl"
    argv = ["theory", "--parts", "hopfield1982", "--out", str(out), "--figures-dir", str(tmp_path / "f")]
    rc, text, err = run(argv, capsys)
    assert rc == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    points = theory.study_points("small", parts=("hopfield1982",))
    assert len(rows) == len(points) == 6
    # the report is theory_report.report of exactly those rows: Hopfield's n = 5 network recalls
    # every stored state in both codings, and the {0,1} coding loses more at n = 15
    assert "binary  n=  5  P0 = 1.000" in text and "bipolar n=  5  P0 = 1.000" in text
    p0 = {(r["mode"], r["n_memories"]): r for r in rows}
    assert set(p0) == {(m, n) for m in ("binary", "bipolar") for n in (5, 10, 15)}
    assert (tmp_path / "f" / "theory_hopfield1982.png").read_bytes()[:4] == b"\x89PNG"
    before = out.read_bytes()
    rc, text2, _ = run(argv, capsys)           # resumed: nothing recomputed, the same report
    assert rc == 0 and out.read_bytes() == before
    assert text2.splitlines()[1:] == text.splitlines()[1:]


def test_fixed_points_part_runs_the_dynamics(capsys, tmp_path):
    # the small study's fixed points: single shot, Memory.iterate and the dynamics' rest state
    # (beta = 1e-3: the global average for all three; beta = 1: the stored pattern)
    out = tmp_path / "t.jsonl"
    rc, text, err = run(["theory", "--parts", "softmax_fixed_points", "--out", str(out)], capsys)
    assert rc == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 13 and all(r["dynamics"] and r["dynamics_converged"] == 32 for r in rows)
    assert ("flips=0 beta=0.001  single shot 0.00/0.00/1.00  iterate 0.00/0.00/1.00  "
            "dynamics 0.00/0.00/1.00  (at rest 1.00, agree 1.00") in text
    assert "flips=0 beta=1  single shot 1.00/0.00/0.00  iterate 1.00/0.00/0.00  " \
           "dynamics 1.00/0.00/0.00" in text


def test_figures_scale_takes_parts():
    from types import SimpleNamespace
    from uhn.cli.theory_cmd import points_from_args
    args = SimpleNamespace(scale="figures", parts=["softmax_fixed_points"], seed=0)
    pts = points_from_args(args)
    assert len(pts) == 22 and all(p.dynamics for p in pts)   # 11 beta, flips 0 and 16
    assert len(theory.figure_points()) > len(theory.figure_points(quick=True))
