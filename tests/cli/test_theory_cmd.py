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


def test_figures_scale_takes_no_parts(capsys, tmp_path):
    rc, out, err = run(["theory", "--scale", "figures", "--parts", "dam", "--out",
                        str(tmp_path / "t.jsonl")], capsys)
    assert rc == 2 and "Traceback" not in err
    assert "--parts selects parts of --scale small or paper" in err
    assert len(theory.figure_points()) > len(theory.figure_points(quick=True))
