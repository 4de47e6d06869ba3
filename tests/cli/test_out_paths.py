"""Every output path of every subcommand is checked before any computation (uhn.cli.check_out_file /
check_out_dir): a folder where a file is wanted, a file where a folder is, a path under a file and
a folder that accepts no new file each give one ``error:`` line, exit status 2, no traceback, and
nothing computed (the data loaders and sweeps are replaced by a failing stub here)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import uhn.cli as cli
from cli_run import run

# where a file cannot be created even by root: /proc accepts no new files
READ_ONLY = Path("/proc")


@pytest.fixture
def nothing_computed(monkeypatch):
    """Loading a dataset or running a sweep fails the test: the path check must come first."""
    def refuse(*a, **k):
        raise AssertionError("computation started before the output path was checked")
    import uhn.models.data as data
    import uhn.models.experiments.sweep as sweep
    monkeypatch.setattr(data, "load_dataset", refuse)
    monkeypatch.setattr(sweep, "run", refuse)


def _cases(tmp):
    """(argv, text the error names) for each command and each kind of bad output path."""
    folder = tmp / "a_folder.png"
    folder.mkdir()
    file = tmp / "a_file"
    file.write_text("x")
    under = file / "sub"
    ro = READ_ONLY / "uhn_no_such_dir"
    cases = []
    for argv in (["demo", "--out"], ["capacity", "--experiment", "noise", "--out"],
                 ["capacity", "--experiment", "noise", "--figure"], ["atlas", "--quick", "--out"],
                 ["atlas", "--quick", "--figure"], ["theory", "--out"]):
        cases += [(argv + [str(folder)], "is a folder"),
                  (argv + [str(under / "x.png")], "is a file, not a folder"),
                  (argv + [str(ro / "x.png")], "does not accept new files")]
    for argv in (["dynamics", "--out"], ["brian2", "--out"], ["figures", "--out"],
                 ["capacity", "--experiment", "noise", "--figures-dir"], ["theory", "--figures-dir"]):
        cases += [(argv + [str(file)], "is a file"),
                  (argv + [str(under)], "is a file, not a folder"),
                  (argv + [str(ro)], "does not accept new files")]
    return cases


@pytest.mark.skipif(not READ_ONLY.is_dir(), reason="needs /proc")
def test_every_bad_output_path_is_one_error_line_before_any_work(capsys, tmp_path, nothing_computed):
    cases = _cases(tmp_path)
    assert len(cases) == 33
    for argv, text in cases:
        rc, out, err = run(argv, capsys)
        lines = err.strip().splitlines()
        assert rc == 2 and "Traceback" not in err, (argv, err)
        assert len(lines) == 1 and lines[0].startswith(f"uhn {argv[0]}: error: "), (argv, err)
        assert text in lines[0] and argv[-1] in lines[0], (argv, lines[0])
        assert out == "", (argv, out)
    # the checks leave nothing behind: no probe file, no folder created
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "a_folder.png"]
    assert list((tmp_path / "a_folder.png").iterdir()) == []


def test_good_paths_pass_and_missing_folders_are_left_to_the_writers(tmp_path):
    deep = tmp_path / "new" / "deeper" / "x.png"
    assert cli.check_out_file(deep) == deep
    assert cli.check_out_dir(tmp_path / "new" / "run1") == tmp_path / "new" / "run1"
    assert cli.check_out_dir(tmp_path) == tmp_path
    existing = tmp_path / "old.png"
    existing.write_bytes(b"x")
    assert cli.check_out_file(existing) == existing     # replaced atomically later: fine
    assert list(tmp_path.iterdir()) == [existing]       # nothing created, probe removed
    with pytest.raises(ValueError, match=r"--figure must name a file, but .* is a folder"):
        cli.check_out_file(tmp_path, "--figure")


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True,
                    reason="root writes into a read-only folder; /proc stands in above")
def test_a_folder_without_write_permission_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ValueError, match="does not accept new files"):
            cli.check_out_file(locked / "x.png")
    finally:
        locked.chmod(0o700)
