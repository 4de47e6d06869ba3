"""The results store never loses a row: concurrent writers (real processes) merge, every
unreadable line is an error naming file:line, the file is strict JSON, leftovers of killed
writers are cleaned up."""
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uhn.models.experiments import capacity as cap
from uhn.models.experiments import store
from uhn.models.experiments.capacity import Point, run
from uhn.models.experiments.store import load_results, stored_results, write_results

REPO = Path(__file__).resolve().parents[3]

#: a file barrier for writer processes: each drops <dir>/<name>.ready at its first measurement
#: (after it has read the store) and waits for all of them, so every writer has read the store
#: before any writes: the interleaving under which a load-once / rewrite-whole store loses rows
BARRIER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import uhn.models.experiments.capacity as cap

    def arm_barrier(folder, name, n, timeout=120.0):
        real, state = cap.evaluate, {"armed": True}

        def evaluate(point):
            if state["armed"]:
                state["armed"] = False
                Path(folder, name + ".ready").touch()
                t0 = time.monotonic()
                while len(list(Path(folder).glob("*.ready"))) < n:
                    if time.monotonic() - t0 > timeout:
                        raise SystemExit("barrier timed out")
                    time.sleep(0.01)
            return real(point)

        cap.evaluate = evaluate  # run() looks the default evaluate up at call time
""")


def _spawn(tmp_path, name, body, n):
    """A python process running BARRIER, arm_barrier(..., name, n), then body."""
    script = BARRIER + f"arm_barrier({str(tmp_path / 'barrier')!r}, {name!r}, {n})\n" + body
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(procs, timeout=240):
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err
        outs.append((out, err))
    return outs


def test_concurrent_cli_runs_keep_every_row(tmp_path):
    """The issue's repro: two `uhn capacity` runs writing one file at once (manhattan and
    euclidean), each having read the store before the other wrote. Both keep all their rows."""
    (tmp_path / "barrier").mkdir()
    procs = [_spawn(tmp_path, sim, textwrap.dedent(f"""
        from uhn.cli import main
        sys.exit(main(["capacity", "--experiment", "similarity_vs_n", "--dataset", "digits",
                       "--quick", "--similarities", {sim!r}, "--out", "s.jsonl"]))
        """), 2) for sim in ("manhattan", "euclidean")]
    _wait(procs)
    rows = load_results(tmp_path / "s.jsonl")
    per_sim = {s: sum(r["similarity"] == s for r in rows) for s in ("manhattan", "euclidean")}
    assert per_sim == {"manhattan": 4 * 2, "euclidean": 4 * 2}  # quick grid: 4 N x 2 blocks
    assert len({r["key"] for r in rows}) == len(rows) == 16


def test_concurrent_writers_merge_rows_of_every_process(tmp_path):
    """Three processes flush after every point (flush_seconds=0) into one file: 2 x 3 x 2 of
    their own points each plus one point all three measure. Every row survives, once."""
    (tmp_path / "barrier").mkdir()
    body = textwrap.dedent("""
        from uhn.models.experiments.capacity import Point, run
        me = {i}
        pts = [Point(dataset="digits", n_memories=n, similarity=s, corruption="gaussian",
                     level=0.1 * (me + 1), block=b)
               for n in (5, 10) for s in ("euclidean", "manhattan", "cosine") for b in (0, 1)]
        shared = Point(dataset="digits", n_memories=3, corruption="none")
        run(pts + [shared], "store.jsonl", flush_seconds=0)
        """)
    procs = [_spawn(tmp_path, f"w{i}", body.replace("{i}", str(i)), 3) for i in range(3)]
    _wait(procs)
    rows = load_results(tmp_path / "store.jsonl")
    levels = sorted(round(r["level"], 3) for r in rows if r["n_memories"] != 3)
    assert levels == [0.1] * 12 + [0.2] * 12 + [0.3] * 12
    assert sum(r["n_memories"] == 3 for r in rows) == 1
    assert len({r["key"] for r in rows}) == len(rows) == 37
    assert not list(tmp_path.glob(".store.jsonl.*.tmp"))


def test_rows_stored_by_another_run_meanwhile_are_kept_and_reused(tmp_path):
    """A run merges with what another run stored after it started, and (resume) reuses it."""
    path = tmp_path / "r.jsonl"
    a, b, c = (Point(dataset="digits", n_memories=5, block=i) for i in range(3))

    def other_run_meanwhile(done, total, row, computed):
        if done == 1:
            run([b, c], path)  # another writer, while this run is between points

    calls = []
    rows = run([a, b, c], path, flush_seconds=0, progress=other_run_meanwhile,
               evaluate_fn=lambda p: calls.append(p) or cap.evaluate(p))
    assert calls == [a]  # b and c came from the other run's rows
    assert {r["key"] for r in load_results(path)} == {p.key() for p in (a, b, c)}
    assert [r["key"] for r in rows] == [p.key() for p in (a, b, c)]


@pytest.mark.parametrize("line, what", [
    (b'{"n_memories": 5, "fraction_correct": 1.0}', "no 'key'"),
    (b"3", "a JSON number, not a row"),
    (b'["key", 1]', "a JSON array, not a row"),
    (b'"key"', "a JSON string, not a row"),
    (b"\xff\xfe\x00garbage\x80", "not UTF-8"),
    (b'{"key": "k", "threshold": NaN}', "not a JSON row.*NaN is not JSON"),
    (b'{"key": "k", "fraction', "not a JSON row"),
])
def test_every_unreadable_row_is_an_error_naming_file_and_line(tmp_path, line, what):
    path = tmp_path / "r.jsonl"
    good = run([Point(dataset="digits", n_memories=5)], path)[0]
    before = path.read_bytes() + line + b"\n" + json.dumps(good).encode() + b"\n"
    path.write_bytes(before)
    message = rf"r\.jsonl:2: .*{what}.*move the file aside"
    with pytest.raises(ValueError, match=message):
        run([Point(dataset="digits", n_memories=5, block=1)], path)
    with pytest.raises(ValueError, match=message):
        stored_results(path)
    if what != "no 'key'":  # load_results reads any JSON-object rows, keyed or not
        with pytest.raises(ValueError, match=message):
            load_results(path)
    assert path.read_bytes() == before  # nothing dropped, nothing rewritten


def test_cli_reports_an_unreadable_store_in_one_line(tmp_path, capsys):
    from uhn.cli import main
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n')
    assert main(["capacity", "--experiment", "noise", "--quick", "--dataset", "digits",
                 "--out", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err and "r.jsonl:1" in err
    assert path.read_text() == '{"a": 1}\n'


def test_store_is_strict_json(tmp_path):
    path = tmp_path / "r.jsonl"
    write_results([{"key": "a", "x": 1.5}], path)
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="field 'x' .* not finite"):
            write_results([{"key": "a", "x": bad}], path)
        with pytest.raises(ValueError, match="field 'x' .* not finite"):
            store.merge_results([{"key": "b", "x": bad}], path)
    assert path.read_text() == '{"key": "a", "x": 1.5}\n'
    # a measurement returning NaN is a failed point (stored as null + message), not a bare NaN
    p = Point(dataset="digits", n_memories=5)
    row = run([p], path, evaluate_fn=lambda q: {"fraction_correct": float("nan")})[0]
    assert row["fraction_correct"] is None and "not finite" in row["error"]
    for line in path.read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in the store"))


def test_leftover_tmp_files_of_killed_writers_are_removed_when_a_run_starts(tmp_path):
    path = tmp_path / "r.jsonl"
    run([Point(dataset="digits", n_memories=5)], path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)  # exited: no process has this pid (pids are not reused at once)
    dead_tmp = tmp_path / f".r.jsonl.{dead_pid}.abc123.tmp"
    old_tmp = tmp_path / ".r.jsonl.k2j4h1x9.tmp"  # the previous naming, no pid: removed by age
    live_tmp = tmp_path / f".r.jsonl.{os.getppid()}.fresh.tmp"  # a live writer's, just made
    other = tmp_path / f".other.jsonl.{dead_pid}.x.tmp"  # another store's
    for f in (dead_tmp, old_tmp, live_tmp, other):
        f.write_text('{"key": "partial')
    stale = time.time() - 2 * store.STALE_TMP_SECONDS
    os.utime(old_tmp, (stale, stale))
    run([Point(dataset="digits", n_memories=5)], path)  # resumed: nothing computed or written
    assert not dead_tmp.exists() and not old_tmp.exists()
    assert live_tmp.exists() and other.exists()
    assert len(load_results(path)) == 1


def test_interrupted_write_leaves_old_file_and_no_tmp(tmp_path, monkeypatch):
    path = tmp_path / "r.jsonl"
    write_results([{"key": "a"}], path)

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_results([{"key": "a"}, {"key": "b"}], path)
    monkeypatch.undo()
    assert load_results(path) == [{"key": "a"}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl", "r.jsonl.lock"]


def test_without_fcntl_the_store_still_works_unlocked(tmp_path, monkeypatch):
    """A platform without fcntl (Windows) gets no lock but the same merge and atomic write."""
    monkeypatch.setattr(store, "fcntl", None)
    path = tmp_path / "r.jsonl"
    store.merge_results([{"key": "a", "x": 1}], path)
    store.merge_results([{"key": "b", "x": 2}, {"key": "a", "x": 3}], path)
    assert load_results(path) == [{"key": "a", "x": 3}, {"key": "b", "x": 2}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl"]  # no lock file made


@settings(max_examples=25)
@given(st.lists(st.lists(st.tuples(st.sampled_from("abcdef"), st.integers(-5, 5)), max_size=5),
                max_size=6))
def test_merging_batches_keeps_the_union_with_the_latest_row_per_key(tmp_path_factory, batches):
    path = tmp_path_factory.mktemp("merge") / "r.jsonl"
    want = {}
    for batch in batches:
        store.merge_results([{"key": k, "v": v} for k, v in batch], path)
        for k, v in batch:
            want.setdefault(k, None)  # first-stored order
            want[k] = v
    rows = load_results(path)
    assert [(r["key"], r["v"]) for r in rows] == list(want.items())


def test_fractional_k_max_is_refused_not_truncated():
    """k_max with k = 2.7 used to become k = 2 silently inside a capacity point."""
    from uhn.models.experiments.capacity import Point, validate
    with pytest.raises(TypeError, match=r"k_max k must be an integer, got float 2\.7"):
        validate(Point(dataset="digits", n_memories=10, separation="k_max", sep_param=2.7))
    validate(Point(dataset="digits", n_memories=10, separation="k_max", sep_param=3.0))  # integral: fine


# ------------------------------------------------------------------ rows you can trust on resume

def _stored_line(path, key):
    """(line number, row) of ``key`` in the store file."""
    for n, line in enumerate(path.read_text().splitlines(), 1):
        row = json.loads(line)
        if row["key"] == key:
            return n, row
    raise AssertionError(key)


def _rewrite_line(path, n, row):
    lines = path.read_text().splitlines()
    lines[n - 1] = json.dumps(row, sort_keys=True)
    path.write_text("\n".join(lines) + "\n")


POINTS = [Point(dataset="digits", n_memories=5, block=b) for b in range(3)]


def test_rows_are_sealed_and_a_hand_edited_value_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "r.jsonl"
    rows = run(POINTS, path)
    assert all(store.check_seal(r) is None and store.is_sealed(r) for r in rows)
    assert all(r["checksum"] == store.row_checksum(r) for r in load_results(path))
    n, row = _stored_line(path, POINTS[1].key())
    row["fraction_correct"] = 1.0 if row["fraction_correct"] != 1.0 else 0.0
    _rewrite_line(path, n, row)
    before = path.read_bytes()
    for read in (lambda: run(POINTS, path), lambda: load_results(path)):
        with pytest.raises(ValueError, match=rf"r\.jsonl:{n}: the row does not match its checksum"
                                             r".*changed after it was measured; delete that line"):
            read()
    assert path.read_bytes() == before
    lines = path.read_text().splitlines()          # the advice works: delete the line, resume
    path.write_text("\n".join(lines[:n - 1] + lines[n:]) + "\n")
    computed = []
    again = run(POINTS, path, progress=lambda d, t, r, c: computed.append(c))
    assert computed == [False, True, False] and again[1]["fraction_correct"] == rows[1]["fraction_correct"]


def test_a_row_whose_fields_are_not_its_keys_point_is_an_error_on_resume(tmp_path):
    path = tmp_path / "r.jsonl"
    run(POINTS, path)
    n, row = _stored_line(path, POINTS[2].key())
    row["n_memories"] = 6                          # edited, and sealed again to look genuine
    _rewrite_line(path, n, store.seal(row))
    with pytest.raises(ValueError, match=rf"r\.jsonl:{n}: the row's n_memories = 6 is not its "
                                         r"point's 5 \(fields \['n_memories'\]"):
        run(POINTS, path)


def test_a_row_missing_its_fields_is_an_error_naming_file_and_line_not_a_keyerror(tmp_path,
                                                                                 capsys):
    from uhn.cli import main
    from uhn.dynamics.analysis import atlas
    path = tmp_path / "a.jsonl"
    first = atlas.default_points(quick=True)[0]
    path.write_text(json.dumps({"key": "other"}) + "\n" + json.dumps({"key": first.key()}) + "\n")
    with pytest.raises(ValueError, match=r"a\.jsonl:2: the row of this point lacks the parameter "
                                         r"fields \['dataset', 'n_memories'"):
        atlas.run([first], path)
    assert main(["atlas", "--quick", "--out", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "KeyError" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("uhn atlas: error:") and "a.jsonl:2: the row of this point lacks" in last
    with pytest.raises(ValueError, match=r"lacks the parameter fields \['dataset'"):
        atlas.AtlasPoint.from_row({"key": first.key()})
    with pytest.raises(ValueError, match=r"not a Point row: it lacks the parameter fields"):
        Point.from_row({"key": "x", "similarity": "dot"})


def test_rows_without_a_checksum_are_reused_with_one_warning_naming_the_file(tmp_path):
    import warnings
    path = tmp_path / "old.jsonl"
    rows = run(POINTS, path)
    old = [{k: v for k, v in r.items() if k != "checksum"} for r in rows]
    write_results(old, path)                       # as a store of before the checksums
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = run(POINTS, path)
    msgs = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(msgs) == 1 and msgs[0].startswith(f"{path}: rows stored without a checksum")
    assert again == old                            # reused as they are, not recomputed


def test_a_capacity_row_is_recomputed_from_its_fields_alone(tmp_path):
    from uhn.models.experiments import sweep
    path = tmp_path / "r.jsonl"
    run(POINTS[:2], path)
    for row in load_results(path):
        fresh = cap.recompute(row)
        assert sweep.comparable(fresh) == sweep.comparable(row)
        assert store.check_seal(fresh) is None
    tampered = {**row, "fraction_correct": 0.123}
    assert cap.recompute(tampered)["fraction_correct"] == row["fraction_correct"]
