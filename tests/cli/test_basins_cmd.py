"""``uhn basins``: the table it prints, the store it writes and resumes, its one-line errors."""
import json

import pytest

from cli_run import run

import uhn.cli as cli

PNG = b"\x89PNG\r\n\x1a\n"


def test_basins_is_a_subcommand():
    assert "basins" in cli.SUBCOMMANDS


def test_one_pattern_prints_radius_half_the_width_and_resumes(tmp_path, capsys):
    store, fig = tmp_path / "b.jsonl", tmp_path / "b.png"
    argv = ["basins", "--dim", "41", "--n-memories", "1", "--retrievals", "single", "sync",
            "--step", "1", "--trials", "3", "--out", str(store), "--figure", str(fig)]
    rc, out, err = run(argv, capsys)
    assert rc == 0, err
    rows = [json.loads(line) for line in store.read_text().splitlines()]
    assert len(rows) == 2 * 42
    for line in out.splitlines():
        if line.startswith("classical "):
            assert line.split()[3] == "20.500"          # D / 2, std 0
            assert line.split()[4] == "0.000"
    assert sum(line.startswith("classical ") for line in out.splitlines()) == 2
    assert fig.read_bytes()[:8] == PNG
    before = store.read_text()
    rc, out2, _ = run(argv, capsys)                     # resumed: the same table, store untouched
    assert rc == 0 and store.read_text() == before
    table = lambda text: [ln for ln in text.splitlines() if ln.startswith("classical ")]  # noqa: E731
    assert table(out2) == table(out)


@pytest.mark.parametrize("argv, message", [
    (["--dim", "10", "--levels", "2.5"], "whole number of bits"),
    (["--dim", "10", "--levels", "11"], "[0, dim = 10]"),
    (["--network", "memory", "--retrievals", "async"], "classical network's update"),
    (["--similarities", "dot"], "--network memory"),
    (["--figure", "x.pdf"], "must be a .png"),
])
def test_bad_input_is_one_error_line(argv, message, tmp_path, capsys):
    rc, out, err = run(["basins", "--out", str(tmp_path / "s.jsonl")] + argv, capsys)
    assert rc == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("uhn basins: error: ") and message in last
    assert not (tmp_path / "s.jsonl").exists()
