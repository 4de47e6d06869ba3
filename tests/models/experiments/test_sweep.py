"""The sweep runner: in-process and on a dask LocalCluster (2 worker processes, 1 thread each)
the rows are the same bit for bit (bookkeeping fields aside), every row is stored once, a worker
killed mid-sweep loses nothing, a failed point is stored with its error and the sweep goes on."""
import json
import os
import signal
import time

import pytest

from uhn.models.experiments import capacity as cap
from uhn.models.experiments import sweep
from uhn.models.experiments.capacity import Point
from uhn.models.experiments.store import load_results

distributed = pytest.importorskip("distributed")


def digits(**kw):
    return Point(**{"dataset": "digits", "n_memories": 20, "corruption": "gaussian",
                    "level": 0.3, **kw})


POINTS = [digits(similarity=s, block=b) for s in ("manhattan", "euclidean", "cosine")
          for b in range(3)]


def slow_evaluate(point):
    """cap.evaluate after a pause, so that points are still running when a worker is killed."""
    time.sleep(0.4)
    return cap.evaluate(point)


def failing_on_cosine(point):
    if point.similarity == "cosine":
        raise FloatingPointError(f"diverged at block {point.block}")
    return cap.evaluate(point)


def blas_thread_count(point):
    """The BLAS threads the measurement runs with (threadpoolctl), as a row."""
    from threadpoolctl import threadpool_info
    return {"blas": [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]}


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    c = distributed.Client(cluster)
    try:
        yield c
    finally:
        c.close()
        cluster.close()


@pytest.fixture(scope="module")
def serial():
    """The serial rows of POINTS, by key, without the volatile fields."""
    return {r["key"]: sweep.comparable(r) for r in cap.run(POINTS)}


def _by_key(rows):
    return {r["key"]: sweep.comparable(r) for r in rows}


# ---------------------------------------------------------------------------------- in-process

def test_local_rows_are_the_capacity_rows_and_failures_do_not_stop_the_sweep(tmp_path, serial):
    seen = []
    rows = sweep.run(POINTS, failing_on_cosine, tmp_path / "s.jsonl", progress=seen.append,
                     failure=cap._failure, make_row=cap._row)
    assert [r["key"] for r in rows] == [p.key() for p in POINTS]
    bad = [r for r in rows if sweep.is_failed(r)]
    assert [r["similarity"] for r in bad] == ["cosine"] * 3
    assert bad[0]["error"] == "FloatingPointError: diverged at block 0"
    assert bad[0]["fraction_correct"] is None
    good = [r for r in rows if not sweep.is_failed(r)]
    assert _by_key(good) == {k: v for k, v in serial.items() if k in _by_key(good)}
    assert [(p.done, p.failed) for p in seen] == [(i + 1, max(0, i - 5)) for i in range(9)]
    assert load_results(tmp_path / "s.jsonl") == rows


def test_a_failed_row_records_how_long_the_failed_measurement_took():
    """A stalled integration costs its whole limit: the failed row says how long (a volatile
    field, like a measured row's seconds)."""
    def stalls(point):
        time.sleep(0.2)
        raise FloatingPointError("stalled")

    row, = sweep.run(POINTS[:1], stalls)
    assert row["error"] == "FloatingPointError: stalled"
    assert 0.2 <= row["seconds"] < 10  # perf_counter around a 0.2 s sleep (never shorter)
    assert "seconds" in sweep.VOLATILE_FIELDS


def test_a_bug_in_evaluate_stops_the_sweep_and_keeps_finished_rows(tmp_path):
    def buggy(point):
        if point.block == 2:
            raise KeyError("bug")
        return cap.evaluate(point)

    with pytest.raises(KeyError, match="bug"):
        sweep.run(POINTS, buggy, tmp_path / "s.jsonl", flush_seconds=3600)
    assert [r["key"] for r in load_results(tmp_path / "s.jsonl")] == [p.key() for p in POINTS[:2]]


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="engine must be 'local' or a distributed.Client"):
        sweep.run(POINTS, cap.evaluate, engine="threads")
    with pytest.raises(TypeError, match="engine must be .*got int"):
        sweep.run(POINTS, cap.evaluate, engine=2)
    with pytest.raises(ValueError, match="flush_seconds must be a finite number >= 0"):
        sweep.run(POINTS, cap.evaluate, flush_seconds=float("nan"))
    with pytest.raises(TypeError, match="evaluate_fn must return a dict, got list"):
        sweep.run(POINTS[:1], lambda p: [1.0])
    with pytest.raises(ValueError, match="either workers .* or scheduler"):
        with sweep.connect(workers=2, scheduler="tcp://localhost:8786"):
            pass
    with pytest.raises(ValueError, match="workers must be a whole number >= 1, got 0"):
        with sweep.connect(workers=0):
            pass
    with pytest.raises(ValueError, match="scheduler must be an address"):
        with sweep.connect(scheduler="localhost"):
            pass
    with sweep.connect() as engine:
        assert engine == "local"


def test_blas_threads_limit_is_set_for_the_measurement_and_restored(tmp_path):
    """Every in-process measurement runs with 1 BLAS thread by default (as on a dask worker,
    whose nanny sets OPENBLAS_NUM_THREADS=1); the process's own limit is restored afterwards."""
    before = blas_thread_count(None)
    rows = sweep.run(POINTS[:2], blas_thread_count)
    assert [r["blas"] for r in rows] == [[1] * len(before["blas"])] * 2
    assert blas_thread_count(None) == before
    n = min(2, os.cpu_count())
    assert sweep.run(POINTS[:1], blas_thread_count, blas_threads=n)[0]["blas"] == [n] * len(before["blas"])
    assert sweep.run(POINTS[:1], blas_thread_count, blas_threads=None)[0]["blas"] == before["blas"]
    with sweep.blas_threads(1):
        with pytest.raises(ValueError, match="blas_threads = 2 while another measurement"):
            with sweep.blas_threads(2):
                pass
        assert blas_thread_count(None)["blas"] == [1] * len(before["blas"])
    assert blas_thread_count(None) == before
    with pytest.raises(ValueError, match="blas_threads must be a whole number >= 1 or None, got 0"):
        sweep.run(POINTS[:1], blas_thread_count, blas_threads=0)


def test_an_in_process_sweep_sets_the_blas_limit_once(monkeypatch):
    """threadpoolctl rescans the loaded libraries every time a limit is set (1.8 ms); an
    in-process sweep sets it once around all its points, each measurement nesting inside."""
    import threadpoolctl
    calls = []
    real = threadpoolctl.threadpool_limits

    def counting(*args, **kwargs):
        calls.append(kwargs.get("limits"))
        return real(*args, **kwargs)

    monkeypatch.setattr(threadpoolctl, "threadpool_limits", counting)
    rows = sweep.run(POINTS[:4], blas_thread_count)
    assert calls == [1]
    before = blas_thread_count(None)["blas"]
    assert [r["blas"] for r in rows] == [[1] * len(before)] * 4


# ---------------------------------------------------------------------------------- dask

def test_measurements_run_with_the_same_blas_threads_in_process_and_on_workers(client):
    local = sweep.run(POINTS[:3], blas_thread_count)
    remote = sweep.run(POINTS[:3], blas_thread_count, engine=client)
    assert [r["blas"] for r in remote] == [r["blas"] for r in local]
    assert {tuple(r["blas"]) for r in local} == {(1,) * len(local[0]["blas"])}


def test_cluster_rows_equal_the_serial_rows_bit_for_bit(tmp_path, client, serial):
    path = tmp_path / "s.jsonl"
    seen = []
    rows = cap.run(POINTS, path, engine=client, progress=lambda *a: seen.append(a[0]))
    assert [r["key"] for r in rows] == [p.key() for p in POINTS]  # point order
    assert _by_key(rows) == serial  # every float equal, not close
    stored = load_results(path)
    assert len(stored) == len({r["key"] for r in stored}) == len(POINTS)
    assert _by_key(stored) == serial
    assert seen == list(range(1, 10))
    # resumed: nothing is submitted again
    assert cap.run(POINTS, path, engine=client, evaluate_fn=lambda p: 1 / 0) == rows


def test_cluster_failures_are_stored_and_the_sweep_goes_on(tmp_path, client):
    seen = []
    rows = sweep.run(POINTS, failing_on_cosine, tmp_path / "s.jsonl", engine=client,
                     progress=seen.append, failure=cap._failure, make_row=cap._row)
    assert sorted(r["error"] for r in rows if sweep.is_failed(r)) == [
        f"FloatingPointError: diverged at block {b}" for b in range(3)]
    assert seen[-1].done == 9 and seen[-1].failed == 3 and seen[-1].running == 0
    assert all(0 <= p.running <= 2 for p in seen)


def test_a_worker_killed_mid_sweep_loses_nothing(tmp_path, client, serial):
    """Kill one of the two worker processes after the first row arrives, while the other points
    are queued or running: the scheduler reruns its points; each row is stored exactly once and
    equals the serial row."""
    path = tmp_path / "s.jsonl"
    killed = []

    def kill_one_worker(done, total, row, computed):
        if not killed:
            # a worker that holds a point right now (each evaluation sleeps 0.4 s, so one is
            # mid-way): killing it loses that point, which the scheduler must rerun
            victim, held = next((w, ts) for w, ts in sorted(client.processing().items()) if ts)
            killed.append((victim, list(held)))
            pid = client.run(os.getpid, workers=[victim])[victim]
            os.kill(pid, signal.SIGKILL)  # a hard kill: the worker cannot report anything

    rows = cap.run(POINTS, path, engine=client, evaluate_fn=slow_evaluate, flush_seconds=0,
                   progress=kill_one_worker)
    assert killed and killed[0][1]        # the victim was processing at least one point
    stored = load_results(path)
    assert len(stored) == len({r["key"] for r in stored}) == len(POINTS)
    assert _by_key(stored) == _by_key(rows) == serial
    client.wait_for_workers(2, timeout=60)  # the nanny restarts it for the next test


def test_an_interrupted_cluster_sweep_resumes_where_it_stopped(tmp_path, client, serial):
    path = tmp_path / "s.jsonl"

    def interrupt_after_3(done, total, row, computed):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cap.run(POINTS, path, engine=client, evaluate_fn=slow_evaluate, flush_seconds=3600,
                progress=interrupt_after_3)
    first = load_results(path)
    assert len(first) == 3  # every finished row kept, nothing more
    computed = []
    rows = cap.run(POINTS, path, engine=client,
                   progress=lambda d, t, r, c: computed.append(c))
    assert computed.count(False) == 3 and computed.count(True) == 6
    assert _by_key(rows) == serial
    assert [json.loads(json.dumps(r)) for r in load_results(path)] == load_results(path)


def test_atlas_points_on_the_cluster_equal_the_serial_rows(tmp_path, client):
    from uhn.dynamics.analysis import atlas
    pts = atlas.grid([{"similarity": "dot"}, {"similarity": "squared_euclidean"}],
                     L_v=("quadratic",), L_h=("log_sum_exp", "quadratic"), betas=(5.0,),
                     tau_ratios=(0.1,), n_memories=10, n_queries=3)
    serial_rows = atlas.run(pts)
    rows = atlas.run(pts, tmp_path / "a.jsonl", engine=client)
    assert _by_key(rows) == _by_key(serial_rows)
    assert any(sweep.is_failed(r) for r in rows)  # dot + quadratic L_h diverges: stored, not raised


# ------------------------------------------------------------------------ clusters that fail

def test_a_cluster_without_workers_stops_with_an_error_and_stored_rows_stay(tmp_path):
    path = tmp_path / "s.jsonl"
    cap.run(POINTS[:2], path)                     # stored before the cluster run
    before = load_results(path)
    with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cl, \
            distributed.Client(cl) as c:
        t0 = time.monotonic()
        with pytest.raises(sweep.ClusterError, match=r"no live worker for [1-9]\d* s "
                           r"\(no_worker_timeout = 1 s\) with 2 of 2 points unfinished"):
            cap.run(POINTS[:4], path, engine=c, no_worker_timeout=1.0)
        assert time.monotonic() - t0 < 30
    assert load_results(path) == before


def test_workers_that_vanish_mid_sweep_stop_it_and_the_finished_rows_are_stored(tmp_path):
    path = tmp_path / "s.jsonl"
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cl, distributed.Client(cl) as c:
        seen = []

        def stop_workers(done, total, row, computed):
            seen.append(row["key"])
            if len(seen) == 1:
                cl.scale(0)                           # every worker gone, none coming back

        with pytest.raises(sweep.ClusterError, match="no live worker"):
            cap.run(POINTS[:6], path, engine=c, evaluate_fn=slow_evaluate, flush_seconds=3600,
                    progress=stop_workers, no_worker_timeout=1.0)
    stored = load_results(path)
    assert [r["key"] for r in stored] == seen and 1 <= len(seen) < 6


def test_a_worker_killed_while_the_cluster_starts_is_a_cluster_error(tmp_path):
    import dask
    preload = tmp_path / "die.py"
    preload.write_text("import os\nos._exit(1)\n")
    with dask.config.set({"distributed.worker.preload": [str(preload)]}):
        with pytest.raises(sweep.ClusterError, match=r"LocalCluster of 1 workers did not start"):
            with sweep.connect(workers=1):
                pass
