"""A run stopped by something outside its inputs (a sweep's cluster with no live worker, a full
disk) is one ``stopped:`` line and exit status 3, not a traceback; a RuntimeError that is
neither (a bug) keeps its traceback."""
from __future__ import annotations

import errno

import pytest

import uhn.models.experiments.sweep as sweep
from cli_run import run


def _raising(err):
    def stub(*a, **k):
        raise err
    return stub


def test_cluster_without_workers_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(sweep, "run", _raising(sweep.ClusterError(
        "no live dask worker for 60 s; the 3 finished rows are stored")))
    rc, out, err = run(["atlas", "--quick", "--out", str(tmp_path / "a.jsonl")], capsys)
    assert rc == 3 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("uhn atlas: stopped: no live dask worker for 60 s; "
                                            "the 3 finished rows are stored")


def test_full_disk_is_one_line(monkeypatch, capsys, tmp_path):
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "r.jsonl"))
    monkeypatch.setattr(sweep, "run", _raising(full))
    rc, out, err = run(["capacity", "--experiment", "noise", "--quick", "--out",
                        str(tmp_path / "r.jsonl")], capsys)
    assert rc == 3 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("uhn capacity: stopped: [Errno 28] No space left")


def test_a_bug_keeps_its_traceback(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(sweep, "run", _raising(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        run(["atlas", "--quick", "--out", str(tmp_path / "a.jsonl")], capsys)


@pytest.mark.parametrize("argv", [["atlas", "--quick"], ["basins", "--dim", "11"], ["theory", "--parts", "hopfield1982"],
                                  ["capacity", "--experiment", "noise", "--quick"]])
def test_ctrl_c_in_any_sweep_says_where_the_finished_points_are(monkeypatch, capsys, tmp_path, argv):
    out = tmp_path / "r.jsonl"
    monkeypatch.setattr(sweep, "run", _raising(KeyboardInterrupt()))
    rc, _, err = run(argv + ["--out", str(out)], capsys)
    assert rc == 130 and "Traceback" not in err
    assert f"every finished point is stored in {out} (0 rows). Run the same command again to resume" in err
