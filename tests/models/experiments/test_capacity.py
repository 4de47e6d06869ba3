"""Capacity experiments: exact retrieval, known failures, sweeps, the resumable atomic store,
summaries, figures and the ``uhn capacity`` command (tiny configurations, seconds)."""
import json
import math

import matplotlib

matplotlib.use("Agg")  # tests only: the library never picks a backend

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from uhn.models.experiments import capacity as cap  # noqa: E402
from uhn.models.experiments.capacity import Point, effective_threshold, evaluate, run  # noqa: E402
from uhn.models.experiments.store import load_results, write_results  # noqa: E402
from uhn.models.experiments.summary import summarise  # noqa: E402
from uhn.models.plotting import plot_capacity, plot_line_data, save_figure  # noqa: E402

#: similarities whose score is largest exactly at q = m, so max separation retrieves an uncorrupted
#: stored image exactly (the dot product is not among them: q.m' > q.q for a brighter m')
SELF_MAXIMAL = {"standard": ["euclidean", "squared_euclidean", "manhattan", "cosine", "kl",
                             "reverse_kl"],
                "paper_code": ["euclidean", "manhattan", "kl", "reverse_kl"]}


def tiny(**kw):
    """A fast point: 30 sklearn digits (8x8)."""
    return Point(**{"dataset": "digits", "n_memories": 30, **kw})


@pytest.mark.parametrize("convention", ["standard", "paper_code"])
def test_max_separation_without_corruption_is_exact(convention):
    for sim in SELF_MAXIMAL[convention]:
        for block in (0, 1):
            p = tiny(similarity=sim, corruption="none", convention=convention, block=block)
            r = evaluate(p)
            assert r["fraction_correct"] == 1.0, (sim, convention, block)
            assert r["median_error"] == 0.0 and r["n_queries"] == 30


def test_raw_dot_product_prefers_bright_images():
    """Documented: standard dot + max is not exact even without corruption on digits."""
    r = evaluate(Point(dataset="digits", n_memories=100, similarity="dot", corruption="none"))
    assert r["fraction_correct"] < 0.95


def test_identity_dot_on_many_mnist_images_fails():
    r = evaluate(Point(dataset="mnist", n_memories=100, similarity="dot", separation="identity",
                       corruption="none"))
    assert r["fraction_correct"] == 0.0
    assert r["median_error"] > 1e6  # the unnormalised sum of 100 images


def test_distance_beats_dot_on_noisy_mnist():
    """The paper's headline on its own probe (Gaussian std 0.5, max separation), one block."""
    frac = {s: evaluate(Point(dataset="mnist", n_memories=50, similarity=s,
                              corruption="gaussian", level=0.5))["fraction_correct"]
            for s in ("euclidean", "manhattan", "dot")}
    assert frac["euclidean"] >= frac["dot"] and frac["manhattan"] >= frac["dot"]
    assert frac["manhattan"] > 0.9


def test_blocks_are_disjoint_and_queries_corrupted():
    M0, _, Q0, T0, shape = cap.problem(tiny(block=0, corruption="mask_bottom", level=0.5))
    M1, _, _, _, _ = cap.problem(tiny(block=1))
    assert shape == (8, 8)
    assert not (M0[:, None, :] == M1[None, :, :]).all(-1).any()
    assert np.all(Q0.reshape(-1, 8, 8)[:, 4:] == 0) and T0 is M0
    with pytest.raises(ValueError, match="blocks"):
        cap.problem(Point(dataset="lfw", n_memories=100, block=2))


def test_random_corruptions_depend_on_seed_and_block_only():
    p = tiny(corruption="random_pixels", level=0.3)
    assert np.array_equal(cap.problem(p)[2], cap.problem(p)[2])
    assert not np.array_equal(cap.problem(p)[2][:5], cap.problem(tiny(corruption="random_pixels", level=0.3, seed=1))[2][:5])


def test_hetero_counts_against_the_value():
    p = tiny(associative="hetero", corruption="none")
    M, P, Q, T, _ = cap.problem(p)
    assert T is P and np.all(P.reshape(-1, 8, 8)[:, :4] == 0)
    assert np.array_equal(P.reshape(-1, 8, 8)[:, 4:], M.reshape(-1, 8, 8)[:, 4:])
    assert evaluate(p)["fraction_correct"] == 1.0
    pairs = tiny(associative="hetero_pairs", corruption="none")
    M, P, _, _, _ = cap.problem(pairs)
    assert np.array_equal(P[0], M[1]) and evaluate(pairs)["fraction_correct"] == 1.0


def test_threshold_scaling():
    assert effective_threshold(50, 784) == 50
    assert effective_threshold(50, 3072) == pytest.approx(50 * 3072 / 784)
    assert effective_threshold(50, 3072, "official_inverse") == pytest.approx(50 * 784 / 3072)
    assert effective_threshold(50, 64, "none") == 50


def test_failing_queries_count_as_wrong():
    """An all-zero masked query under the paper_code dot (the official code's NaN) is a miss."""
    r = evaluate(Point(dataset="mnist", n_memories=20, similarity="dot", convention="paper_code",
                       corruption="mask_bottom", level=1.0))
    assert r["n_failed_queries"] == 20 and r["fraction_correct"] == 0.0
    assert "all-zero" in r["query_error"]


def test_point_keys():
    a, b = Point(level=1, n_memories=np.int64(10)), Point(level=1.0, n_memories=10)
    assert a == b and a.key() == b.key() and json.loads(a.key())["protocol"] == cap.PROTOCOL
    assert len({Point(threshold=t).key() for t in (50, 60)}) == 2
    assert Point.from_row({**a.params(), "fraction_correct": 1.0}) == a
    assert Point(separation="softmax", sep_param=100).separation_label == "softmax(beta=100)"
    with pytest.raises(ValueError, match=r"associative must be one of \('auto', 'hetero', 'hetero_pairs'\), got 'other'"):
        Point(associative="other")


def test_sweeps_cap_n_and_cover_blocks():
    pts = cap.similarity_vs_n(dataset="lfw", blocks=5)  # 200 faces: N <= 40
    assert max(p.n_memories for p in pts) == 20
    assert {p.block for p in pts} == set(range(5))
    sims = {(p.similarity, p.convention) for p in pts}
    assert ("dot", "paper_code") in sims and ("euclidean", "standard") in sims
    seps = {p.separation_label for p in cap.separation_vs_n(n_memories=[10], blocks=1)}
    assert {"identity", "polynomial(n=10)", "softmax(beta=1000)", "max"} <= seps
    for name in cap.EXPERIMENTS:
        pts = cap.experiment(name, dataset="digits", blocks=2)
        assert pts and len(set(pts)) == len(pts)
        for p in pts[:3]:
            cap.validate(p)


def test_requested_n_that_does_not_fit_is_refused_not_dropped():
    """The paper's default N list is capped by what the blocks allow; an N the user asked for is
    never silently dropped (it was: 2000 with 3 blocks of MNIST's 5000 images vanished, and 5000
    alone silently became 1666)."""
    with pytest.raises(ValueError, match=r"n_memories \[2000\] do not fit: 3 disjoint blocks of "
                                         r"dataset 'mnist' \(5000 images\) allow at most 1666"):
        cap.similarity_vs_n(dataset="mnist", n_memories=[10, 2000], blocks=3)
    pts = cap.similarity_vs_n(dataset="mnist", n_memories=[10, 1666], blocks=3, similarities=["dot"])
    assert sorted({p.n_memories for p in pts}) == [10, 1666]


@pytest.mark.parametrize("field,value", [("n_memories", 10.7), ("block", 1.9), ("seed", 2.5)])
def test_point_refuses_fractional_integers(field, value):
    """int() truncated them silently (10.7 memories measured as 10)."""
    with pytest.raises(TypeError, match=rf"{field} must be an integer, got float {value}"):
        Point(**{field: value})
    assert getattr(Point(**{field: float(int(value))}), field) == int(value)   # 10.0 is 10


def test_run_validates_before_measuring(tmp_path):
    with pytest.raises(ValueError, match="unknown similarity"):
        run([tiny(), tiny(similarity="nope")], tmp_path / "r.jsonl")
    assert not (tmp_path / "r.jsonl").exists()


def _counting(monkeypatch):
    calls = []
    real = cap.evaluate

    def counted(p):
        calls.append(p)
        return real(p)

    monkeypatch.setattr(cap, "evaluate", counted)
    return calls


def test_resume_after_interruption_recomputes_nothing(tmp_path, monkeypatch):
    path = tmp_path / "res.jsonl"
    points = [tiny(n_memories=n, block=b) for n in (5, 10, 20) for b in (0, 1)]
    calls = _counting(monkeypatch)

    def interrupt_after_4(done, total, row, computed):
        if done == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(points, path, progress=interrupt_after_4, flush_seconds=3600)
    stored = load_results(path)
    # measured largest N first (a problem's lines together): N = 20, then 10, then 5
    assert calls == points[4:] + points[2:4]
    assert [r["key"] for r in stored] == [p.key() for p in calls]  # nothing lost
    assert len(calls) == 4

    seen = []
    rows = run(points, path, progress=lambda d, t, r, c: seen.append(c))
    assert len(calls) == 6 and calls[4:] == points[:2]  # only the two missing points
    assert seen == [False] * 4 + [True] * 2
    assert [r["key"] for r in rows] == [p.key() for p in points]   # rows in point order
    assert rows[2:] == sorted(stored, key=lambda r: (r["n_memories"], r["block"]))

    run(points, path)  # all stored: nothing runs
    assert len(calls) == 6
    run(points[:1], path, resume=False)  # recompute one, keep the others
    assert len(calls) == 7 and len(load_results(path)) == 6


def test_results_file_reloads_same_numbers(tmp_path):
    path = tmp_path / "r.jsonl"
    rows = run([tiny(block=b, corruption="gaussian", level=0.3) for b in range(3)], path)
    again = load_results(path)
    assert again == rows
    assert [r["fraction_correct"] for r in again] == [r["fraction_correct"] for r in rows]
    for r in again:
        assert set(cap.PARAM_NAMES) <= set(r)
        assert r["version"] and r["timestamp"] and r["seed"] == 0 and r["protocol"] == cap.PROTOCOL
    assert summarise(again) == summarise(rows)


def test_failed_points_are_stored_not_retried(tmp_path, monkeypatch):
    def boom(p):
        raise FloatingPointError("diverged")
    path = tmp_path / "r.jsonl"
    rows = run([tiny()], path, evaluate_fn=boom)
    assert rows[0]["fraction_correct"] is None and "diverged" in rows[0]["error"]
    assert run([tiny()], path, evaluate_fn=lambda p: 1 / 0)[0]["error"]  # resumed, not re-run
    s = summarise(rows)[0]
    assert math.isnan(s["mean"]) and s["n_blocks"] == 0 and s["errors"]


def test_unstorable_rows_leave_the_file_as_it_was(tmp_path):
    path = tmp_path / "r.jsonl"
    write_results([{"a": 1}], path)
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_results([{"a": 2}, {"b": object()}], path)
    assert load_results(path) == [{"a": 1}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl", "r.jsonl.lock"]
    path.unlink()
    run([tiny()], path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl", "r.jsonl.lock"]


def test_summarise_mean_std_over_blocks():
    rows = [{**tiny(block=b, n_memories=n).params(), "fraction_correct": f}
            for n, fs in ((10, (1.0, 0.5, 0.0)), (20, (0.25, 0.75, 0.5))) for b, f in enumerate(fs)]
    s = summarise(rows)
    assert [x["n_memories"] for x in s] == [10, 20]
    assert s[0]["mean"] == pytest.approx(0.5) and s[0]["std"] == pytest.approx(np.std([1, .5, 0]))
    assert s[1]["mean"] == pytest.approx(0.5) and s[1]["blocks"] == [0, 1, 2]
    assert all(x["n_blocks"] == 3 and "block" not in x for x in s)


def test_plot_lines_are_the_summarised_means(tmp_path):
    pts = cap.similarity_vs_n(dataset="digits", n_memories=[5, 20, 50], blocks=2,
                              similarities=["euclidean", "dot"])
    rows = run(pts)
    fig = plot_capacity(rows, "similarity_vs_n")
    try:
        ax = fig.axes[0]
        lines = plot_line_data(fig)
        assert list(lines) == ["euclidean", "dot", "dot [paper_code]"]
        assert ax.get_xlabel() == "Images stored N" and "Fraction" in ax.get_ylabel()
        assert ax.get_xscale() == "log" and "digits" in ax.get_title()
        assert [t.get_text() for t in ax.get_legend().get_texts()] == list(lines)
        summ = summarise(rows)
        for label, (x, y) in lines.items():
            sim, conv = (label.split()[0], "paper_code" if "paper_code" in label else "standard")
            want = [s["mean"] for s in summ if s["similarity"] == sim and s["convention"] == conv]
            assert np.array_equal(x, [5, 20, 50]) and np.allclose(y, want)
        written = save_figure(fig, tmp_path / "f.png", pdf=True)
        assert [p.name for p in written] == ["f.png", "f.pdf"]
        assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert not list(tmp_path.glob(".*.tmp"))
    finally:
        plt.close(fig)


def test_cli_quick_end_to_end(tmp_path, capsys):
    from uhn.cli import main
    out, fig = tmp_path / "r.jsonl", tmp_path / "figs" / "sim.png"
    rc = main(["capacity", "--experiment", "similarity_vs_n", "--quick", "--out", str(out),
               "--figure", str(fig)])
    assert rc == 0
    assert fig.exists() and fig.stat().st_size > 20_000
    assert fig.read_bytes()[:4] == b"\x89PNG"
    text = capsys.readouterr().out
    assert "euclidean" in text and "manhattan" in text and "n_memories" in text
    n = len(load_results(out))
    assert n == 6 * 4 * 2  # 5 similarities + paper dot, 4 N, 2 blocks
    assert main(["capacity", "--experiment", "similarity_vs_n", "--quick", "--out", str(out)]) == 0
    assert len(load_results(out)) == n


def test_cli_all_quick_and_interrupt(tmp_path, capsys, monkeypatch):
    from uhn.cli import main
    from uhn.models.experiments import figures
    out = tmp_path / "r.jsonl"
    rc = main(["capacity", "--all", "--quick", "--dataset", "digits", "--out", str(out),
               "--figures-dir", str(tmp_path / "figs")])
    assert rc == 0
    assert len(list((tmp_path / "figs").glob("*.png"))) == len(cap.EXPERIMENTS)

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(figures, "run_experiment", interrupted)
    assert main(["capacity", "--experiment", "noise", "--out", str(out)]) == 130
    assert "resume" in capsys.readouterr().err


def test_make_capacity_figures(tmp_path, monkeypatch):
    from uhn.models.experiments import figures
    monkeypatch.setattr(figures, "FIGURES", (
        ("capacity_noise_digits", "noise", {"dataset": "digits"}),
        ("capacity_threshold_digits", "threshold", {"dataset": "digits"})))
    calls, closed = {}, []

    def bar(desc):  # one bar per figure, each counting its own experiment's points
        calls[desc] = []
        return (lambda *a: calls[desc].append(a)), (lambda: closed.append(desc))
    paths = figures.make_capacity_figures(tmp_path / "figs", quick=True, progress_bar=bar,
                                          results_path=tmp_path / "r.jsonl")
    assert [p.name for p in paths] == ["capacity_noise_digits.png", "capacity_threshold_digits.png"]
    assert all(p.exists() for p in paths)
    assert closed == ["capacity_noise_digits", "capacity_threshold_digits"]
    for desc, c in calls.items():
        done, total = [a[0] for a in c], c[0][1]
        assert done == list(range(1, total + 1)) and all(a[1] == total for a in c), desc
    from uhn.models.experiments.capacity import experiment
    for stem, name, kw in figures.FIGURES:  # each total is its own experiment's point count
        n = len(experiment(name, **figures.experiment_kwargs(name, quick=True, **kw)))
        assert calls[stem][0][1] == n


@pytest.mark.parametrize("kw, message", [
    ({"corruption": "mask_bottom", "level": 5}, r"level 5 does not fit corruption 'mask_bottom'.*\[0, 1\]"),
    ({"corruption": "random_pixels", "level": 1.5}, r"level 1.5 does not fit .*\[0, 1\]"),
    ({"corruption": "gaussian", "level": -0.1}, r"level -0.1 does not fit .*>= 0"),
    ({"corruption": "gaussian", "level": math.inf}, "level must be a finite number"),
    ({"level": math.nan}, "level must be a finite number"),
    ({"threshold": math.nan}, "threshold must be a finite number"),
    ({"threshold": -1.0}, "threshold must be >= 0"),
    ({"seed": -1}, "seed must be >= 0"),
    ({"separation": "softmax", "sep_param": math.nan}, "sep_param must be a finite number"),
])
def test_validate_refuses_values_that_can_never_be_measured(kw, message):
    with pytest.raises(ValueError, match=message):
        cap.validate(tiny(**kw))  # the Point itself may refuse first: either way before running


@pytest.mark.parametrize("blocks", [0, -1, 2.5])
def test_sweeps_refuse_a_bad_block_count(blocks):
    for name in cap.EXPERIMENTS:
        with pytest.raises(ValueError, match=r"blocks must be a whole number >= 1"):
            cap.experiment(name, dataset="digits", blocks=blocks)


def _exit_code(argv):
    """uhn.cli.main's exit status, whether it returns it or raises SystemExit (argparse)."""
    from uhn.cli import main
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize("args, message", [
    (["--experiment", "mask_fraction", "--levels", "0.3", "5", "--blocks", "2",
      "--similarities", "dot"], "level 5 does not fit corruption 'mask_bottom'"),
    (["--experiment", "noise", "--blocks", "0"], "argument --blocks: expected a positive integer, got '0'"),
    (["--experiment", "noise", "--threshold", "nan"], "argument --threshold: expected a finite number, got 'nan'"),
    (["--experiment", "threshold", "--thresholds", "10", "inf"], "argument --thresholds: expected a finite number, got 'inf'"),
    (["--experiment", "noise", "--levels", "x"], "argument --levels: expected a finite number, got 'x'"),
    (["--experiment", "noise", "--seed", "-1"], "argument --seed: expected an integer >= 0, got '-1'"),
    (["--experiment", "hetero", "--n-memories", "0"], "argument --n-memories: expected a positive integer, got '0'"),
    (["--experiment", "noise", "--similarities", "nope"], "unknown similarity 'nope'"),
    (["--experiment", "noise", "--dataset", "cifar"], "unknown dataset 'cifar'"),
    (["--experiment", "noise", "threshold", "--figure", "f.png"], "--figure takes one experiment"),
])
def test_cli_bad_values_are_one_error_line_and_status_2(tmp_path, capsys, args, message):
    out = tmp_path / "x.jsonl"
    # the last --dataset wins in argparse, so an args --dataset overrides digits
    assert _exit_code(["capacity", "--dataset", "digits", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("uhn capacity: error: ") and message in last, err
    assert "Traceback" not in err
    assert not out.exists()  # nothing measured, nothing stored


def test_cli_reports_failed_points_instead_of_crashing(tmp_path, capsys, monkeypatch):
    real = cap.evaluate

    def diverges_at_half(p):
        if p.level == 0.5 and p.block == 1:
            raise FloatingPointError("diverged")
        return real(p)

    monkeypatch.setattr(cap, "evaluate", diverges_at_half)
    out = tmp_path / "x.jsonl"
    argv = ["capacity", "--experiment", "noise", "--quick", "--dataset", "digits", "--out", str(out)]
    assert _exit_code(argv) == 0
    captured = capsys.readouterr()
    # quick noise grid: 3 levels x (5 similarities + paper dot) x 2 blocks = 36 points; the 6 of
    # level 0.5 block 1 fail
    assert "noise: 6 of 36 points failed" in captured.err
    assert "first: FloatingPointError: diverged" in captured.err and "Traceback" not in captured.err
    assert "level" in captured.out  # the table is still printed, from the blocks that worked
    rows = load_results(out)
    assert len(rows) == 36 and sum(r["fraction_correct"] is None for r in rows) == 6
    assert _exit_code(argv) == 0  # resumed: the failure is reported again, nothing re-measured
    assert "6 of 36 points failed" in capsys.readouterr().err


# ---------------------------------------------------------------------- uhn capacity on dask

def _comparable_rows(path):
    from uhn.models.experiments.sweep import comparable
    return {r["key"]: comparable(r) for r in load_results(path)}


def test_cli_on_a_local_cluster_and_a_running_scheduler_gives_the_serial_rows(tmp_path, capsys,
                                                                              monkeypatch):
    """uhn capacity --workers 2 (a LocalCluster of 2 processes) and --scheduler ADDRESS (an
    already running cluster) store the in-process rows bit for bit (timestamps aside), print the
    same table, and draw a bar of done / failed / running points."""
    distributed = pytest.importorskip("distributed")
    import uhn.cli
    from uhn.cli import main
    from uhn.models.experiments import sweep
    seen = []
    # what `uhn capacity`'s bar draws through: the CLI's own sweep bar where it has one
    owner, name = ((uhn.cli, "sweep_progress_bar") if hasattr(uhn.cli, "sweep_progress_bar")
                   else (sweep, "progress_bar"))
    real_bar = getattr(owner, name)

    def recording_bar(desc, describe=None):
        draw, close = real_bar(desc, describe)
        return (lambda p: (seen.append(p), draw(p))), close
    monkeypatch.setattr(owner, name, recording_bar)
    argv = ["capacity", "--experiment", "noise", "--quick", "--dataset", "digits",
            "--similarities", "manhattan", "cosine"]
    assert main([*argv, "--out", str(tmp_path / "serial.jsonl")]) == 0
    serial_out = capsys.readouterr().out
    serial = _comparable_rows(tmp_path / "serial.jsonl")
    assert len(serial) == 3 * 2 * 2  # 3 levels x 2 similarities x 2 blocks
    assert [p.done for p in seen] == list(range(1, 13)) and {p.running for p in seen[:-1]} == {1}
    seen.clear()
    assert main([*argv, "--workers", "2", "--out", str(tmp_path / "workers.jsonl")]) == 0
    text = capsys.readouterr()
    assert "measuring on 2 dask worker threads" in text.err
    assert _comparable_rows(tmp_path / "workers.jsonl") == serial
    assert text.out.split("points (")[1].split("\n", 1)[1] == serial_out.split("points (")[1].split("\n", 1)[1]
    assert [p.done for p in seen] == list(range(1, 13)) and seen[-1].failed == 0
    assert all(p.running == min(2, 12 - p.done) for p in seen)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        assert main([*argv, "--scheduler", cluster.scheduler_address,
                     "--out", str(tmp_path / "scheduler.jsonl")]) == 0
    assert _comparable_rows(tmp_path / "scheduler.jsonl") == serial


@pytest.mark.parametrize("args, message", [
    (["--workers", "2", "--scheduler", "tcp://h:8786"], "not allowed with argument"),
    (["--workers", "0"], "argument --workers: expected a positive integer, got '0'"),
    (["--scheduler", "localhost"], "scheduler must be an address such as tcp://HOST:8786"),
])
def test_cli_engine_options_are_checked(tmp_path, capsys, args, message):
    out = tmp_path / "x.jsonl"
    assert _exit_code(["capacity", "--experiment", "noise", "--quick", "--dataset", "digits",
                       *args, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_lines_of_one_point_share_one_read_only_problem():
    """Points that differ only in the similarity (or separation, convention) get the very same
    read-only arrays: the corruption is drawn once per (N, block), not once per line."""
    a = cap.problem(tiny(similarity="dot", corruption="gaussian", level=0.3))
    b = cap.problem(tiny(similarity="manhattan", convention="paper_code", corruption="gaussian", level=0.3))
    assert all(x is y for x, y in zip(a[:4], b[:4]))
    M, _, Q, _, _ = a
    assert not M.flags.writeable and not Q.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        Q[0, 0] = 0.0
    # another block is another problem, with other noise
    c = cap.problem(tiny(similarity="dot", corruption="gaussian", level=0.3, block=1))
    assert not np.array_equal(c[2], Q)


def test_run_measures_grouped_by_problem_largest_first_and_returns_rows_in_point_order():
    order = []

    def fake(point):
        order.append((point.n_memories, point.similarity))
        return {"fraction_correct": 1.0}

    points = [tiny(n_memories=n, similarity=s) for s in ("dot", "euclidean") for n in (10, 20)]
    rows = run(points, evaluate_fn=fake)
    assert order == [(20, "dot"), (20, "euclidean"), (10, "dot"), (10, "euclidean")]   # largest N first
    assert [(r["n_memories"], r["similarity"]) for r in rows] == [(p.n_memories, p.similarity) for p in points]
