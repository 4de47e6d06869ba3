"""One sweep runner: evaluate independent points into the results store, in-process or on a dask
cluster.

A sweep is a list of *points*: hashable (frozen dataclass) objects with ``.params()`` (a flat,
JSON-serialisable dict of every parameter) and ``.key()`` (a stable string identity), such as
:class:`uhn.models.experiments.capacity.Point` or :class:`uhn.dynamics.analysis.atlas.AtlasPoint`, and a measurement
``evaluate_fn(point) -> dict`` that is a pure function of the point (every random number seeded
from its parameters). :func:`run` turns each point into one row

    row = {**point.params(), **evaluate_fn(point), "key": point.key(), "version", "timestamp"}

(``make_row`` overrides that form) and merges the rows into the JSON-lines results store :mod:`uhn.models.experiments.store`
(merge by key under a lock, atomic replace, strict JSON). Two engines run
the measurements:

- ``engine="local"`` (default): one after another in this process; nothing to start.
- ``engine=<distributed.Client>``: every missing point is submitted to the dask cluster the client
  is connected to (:func:`connect` starts a ``LocalCluster`` or connects to a running scheduler).
  Workers only *measure*; the client is the only writer of the store, so it never sees a
  concurrent write from a worker. A worker that dies mid-sweep loses nothing: dask reschedules its
  points on the other workers, and each point's row is written once, when its result arrives.

Both engines give the same rows, bit for bit, apart from the bookkeeping fields
:data:`VOLATILE_FIELDS` (wall time and timestamp): a worker returns the measurement's floats, which
pickle exactly, and every measurement runs with the same number of BLAS threads (``blas_threads``,
default 1, set by :func:`blas_threads` around each measurement wherever it runs: a multithreaded
GEMM may sum in another order, and a dask worker's nanny starts it with OPENBLAS_NUM_THREADS=1
where this process would use every core). A point whose measurement raises one of ``errors`` (default :data:`POINT_ERRORS`),
or returns a non-finite number (strict JSON cannot hold it), is stored as a *failed* row
(``failure(message)`` merged into the row, default ``{"error": message}``) and the sweep goes on;
it is deterministic, so resuming does not retry it. Any other exception is a bug: the rows
finished so far are stored and the exception propagates (on a cluster, the remaining futures are
cancelled).

Rows you can trust: every row is sealed with a checksum of its fields
(uhn.models.experiments.store.seal). On resume a stored row is reused only when its checksum
matches and its parameter fields equal those of the point it is keyed by; otherwise the run stops
with a ValueError naming ``path:line`` before measuring anything further (delete the line to have
the point measured again). Rows stored before checksums existed are reused with one warning naming
the file.

A sweep on a cluster cannot hang: when the cluster has had no live worker for
``no_worker_timeout`` seconds (default :data:`NO_WORKER_TIMEOUT`) while points are unfinished, the
run stops with :class:`ClusterError` saying so; the rows finished so far are stored. A
LocalCluster whose workers die while it starts is a ClusterError too (:func:`connect`).
"""
from __future__ import annotations

import contextlib
import json
import math
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from uhn.models.experiments.store import (dumps_row, file_state, indexed_results, is_sealed,
    locked, merge_results, seal)

#: exceptions of one point's measurement that store it as a failed point instead of stopping a run
POINT_ERRORS = (ValueError, FloatingPointError, OverflowError)

#: row fields that differ between two runs of the same point (everything else is bit-identical)
VOLATILE_FIELDS = ("seconds", "timestamp", "checksum")

#: seconds a cluster may have no live worker, with points unfinished, before :func:`run` stops
NO_WORKER_TIMEOUT = 60.0


class ClusterError(RuntimeError):
    """The dask cluster cannot run the sweep: it has had no live worker for the set time, or its
    workers died while it started. The rows finished before it are stored."""

@dataclass(frozen=True)
class Progress:
    """State of a sweep after one point finished, passed to ``progress``.

    done : points with a row (stored before, or measured now, failed included); total : points.
    failed : rows with an error among ``done``; running : points being measured right now
    (1 or 0 in-process; on a cluster, submitted and unfinished, capped by the worker threads).
    row : the row that just finished; computed : False when it came from the store.
    """

    done: int
    total: int
    failed: int
    running: int
    row: dict
    computed: bool


def is_failed(row: dict) -> bool:
    """True for the row of a point whose measurement raised (it holds an ``error`` message)."""
    return bool(row.get("error"))


def comparable(row: dict) -> dict:
    """The row without :data:`VOLATILE_FIELDS`: equal for two runs of the same point."""
    return {k: v for k, v in row.items() if k not in VOLATILE_FIELDS}


def default_row(point, result: dict) -> dict:
    """``{**point.params(), **result, "key", "version", "timestamp"}``."""
    from uhn.version import __version__
    return {**point.params(), **result, "key": point.key(), "version": __version__,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def default_failure(message: str) -> dict:
    return {"error": message}


_BLAS_LOCK = threading.Lock()
_BLAS_STATE = {"depth": 0, "limits": None, "threads": None}


@contextlib.contextmanager
def blas_threads(n: Optional[int]):
    """Run the block with the BLAS libraries (OpenBLAS, MKL, ...) limited to ``n`` threads, and
    restore their previous limits afterwards (threadpoolctl). None: leave them as they are.

    The limit is process-wide, so concurrent blocks in one process (a dask worker with several
    threads) share it: the first to enter sets it, the last to leave restores it; a block that
    asks for another ``n`` while one is active is a ValueError (its rows could differ)."""
    _check_blas_threads(n)
    if n is None:
        yield
        return
    from threadpoolctl import threadpool_limits
    # a limit covers the libraries loaded when it is set: load scipy's own BLAS (scipy.linalg,
    # which scipy.integrate and numba use) first, or a measurement that imports it later runs it
    # unlimited
    import scipy.linalg  # noqa: F401
    with _BLAS_LOCK:
        if _BLAS_STATE["depth"] == 0:
            _BLAS_STATE["limits"] = threadpool_limits(limits=n, user_api="blas")
            _BLAS_STATE["threads"] = n
        elif _BLAS_STATE["threads"] != n:
            raise ValueError(f"blas_threads = {n} while another measurement in this process runs "
                             f"with {_BLAS_STATE['threads']}")
        _BLAS_STATE["depth"] += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS_STATE["depth"] -= 1
            if _BLAS_STATE["depth"] == 0:
                _BLAS_STATE["limits"].restore_original_limits()
                _BLAS_STATE["limits"] = _BLAS_STATE["threads"] = None


#: :func:`blas_threads` under another name, for :func:`run`, whose parameter of that name hides it
_blas_block = blas_threads


def _check_blas_threads(n) -> None:
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"blas_threads must be a whole number >= 1 or None, got {n!r}")


def measure(evaluate_fn: Callable, point, errors: tuple = POINT_ERRORS,
            failure: Callable[[str], dict] = default_failure,
            blas: Optional[int] = 1) -> dict:
    """evaluate_fn(point) as a storable result, run under :func:`blas_threads` (``blas``); an
    ``errors`` exception (or a non-finite number in the result, which strict JSON cannot hold) as
    ``failure("<Type>: <message>")`` plus ``seconds``, the time the failed measurement took. This
    is what a worker runs: the result is checked where it was made."""
    t0 = time.perf_counter()
    try:
        with blas_threads(blas):
            result = evaluate_fn(point)
        if not isinstance(result, dict):
            raise TypeError(f"evaluate_fn must return a dict, got {type(result).__name__}")
        dumps_row(result)
    except errors as err:
        # what the failure cost is worth knowing (a stalled integration runs to its limit)
        return {**failure(f"{type(err).__name__}: {err}"), "seconds": time.perf_counter() - t0}
    return result


def measure_row(point, evaluate_fn: Callable, errors: tuple = POINT_ERRORS,
                failure: Callable[[str], dict] = default_failure,
                make_row: Callable[[Any, dict], dict] = default_row,
                blas: Optional[int] = 1) -> dict:
    """The sealed row of one point, measured here and now: ``seal(make_row(point,
    measure(evaluate_fn, point, ...)))``, exactly what :func:`run` stores for it (in-process)."""
    return seal(make_row(point, measure(evaluate_fn, point, errors, failure, blas)))


def point_from_row(cls, row: dict):
    """The point of dataclass ``cls`` (its fields: the parameters) that a stored row was measured
    at; ValueError naming the parameter fields the row lacks (instead of a bare KeyError)."""
    from dataclasses import fields
    if not isinstance(row, dict):
        raise TypeError(f"a row is a dict of fields, got {type(row).__name__}")
    names = [f.name for f in fields(cls)]
    missing = [n for n in names if n not in row]
    if missing:
        raise ValueError(f"this row is not a {cls.__name__} row: it lacks the parameter fields "
                         f"{missing} (has {sorted(row)[:8]}{' ...' if len(row) > 8 else ''})")
    return cls(**{n: row[n] for n in names})


def _is_client(engine) -> bool:
    return hasattr(engine, "submit") and hasattr(engine, "nthreads")


def _check_engine(engine):
    if isinstance(engine, str):
        if engine != "local":
            raise ValueError(f"engine must be 'local' or a distributed.Client, got {engine!r}")
        return
    if not _is_client(engine):
        raise TypeError(f"engine must be 'local' or a distributed.Client, got "
                        f"{type(engine).__name__}")


def run(points: Iterable, evaluate_fn: Callable, path=None, *, engine: Any = "local",
        resume: bool = True, progress: Optional[Callable[[Progress], None]] = None,
        flush_seconds: float = 1.0, errors: tuple = POINT_ERRORS,
        failure: Callable[[str], dict] = default_failure,
        make_row: Callable[[Any, dict], dict] = default_row,
        blas_threads: Optional[int] = 1,
        no_worker_timeout: float = NO_WORKER_TIMEOUT) -> list[dict]:
    """Evaluate points into the results store at ``path``; return their rows, in point order.

    Parameters
    ----------
    points : hashable points with ``.key()`` and ``.params()`` (duplicates are measured once).
    evaluate_fn : ``evaluate_fn(point) -> dict`` of JSON values; a pure function of the point. On
        a cluster it is pickled (cloudpickle) to the workers.
    path : JSON-lines store, or None to keep the rows in memory only. Rows of other points, and rows
        other runs store meanwhile, are kept (every write merges by key under the store's lock).
    engine : ``"local"`` or a ``distributed.Client`` (see the module docstring, :func:`connect`).
    resume : reuse stored rows whose key matches (in-process, also rows another run stored after
        this one started); False recomputes every point and replaces its row. A reused row must
        match its checksum and its point's parameters (ValueError naming ``path:line``).
    progress : ``progress(Progress)`` after each point; an exception it raises (e.g.
        KeyboardInterrupt) stops the sweep after that point's row is stored.
    flush_seconds : new rows are merged into the file when this long has passed since the last
        write, and always when the sweep ends or is interrupted (a hard kill of the client loses at
        most ``flush_seconds`` of finished rows).
    errors, failure : exceptions stored as failed points, and the fields a failed row gets.
    make_row : ``make_row(point, result) -> row`` (default :func:`default_row`).
    blas_threads : BLAS threads of every measurement, in this process and on the workers alike
        (:func:`blas_threads`; default 1, so that rows do not depend on where a point ran and a
        worker per core does not oversubscribe it); None leaves them as they are.
    no_worker_timeout : on a cluster, seconds without any live worker (points unfinished) after
        which the run stops with :class:`ClusterError`, storing the rows finished so far.

    The store is read before anything runs: an unreadable row is a ValueError naming ``path:line``.
    """
    _check_engine(engine)
    _check_blas_threads(blas_threads)
    if not (isinstance(flush_seconds, (int, float)) and math.isfinite(flush_seconds)
            and flush_seconds >= 0):
        raise ValueError(f"flush_seconds must be a finite number >= 0, got {flush_seconds!r}")
    if not (isinstance(no_worker_timeout, (int, float)) and not isinstance(no_worker_timeout, bool)
            and math.isfinite(no_worker_timeout) and no_worker_timeout > 0):
        raise ValueError(f"no_worker_timeout must be a finite number of seconds > 0, got "
                         f"{no_worker_timeout!r}")
    unique = list(dict.fromkeys(points))
    keys = [p.key() for p in unique]
    store = _Store(path, flush_seconds)
    out: dict[str, dict] = {}
    counts = {"done": 0, "failed": 0}

    def finished(key, row, computed, running):
        out[key] = row
        counts["done"] += 1
        counts["failed"] += is_failed(row)
        if progress is not None:
            progress(Progress(counts["done"], len(unique), counts["failed"], running, row,
                              computed))

    try:
        if isinstance(engine, str):  # "local"
            # one BLAS limit around the whole loop: each measurement's own blas_threads() then
            # nests inside it instead of rescanning the loaded libraries at every point
            with _blas_block(blas_threads):
                for p, k in zip(unique, keys):
                    row = store.lookup(p, k) if resume else None
                    if row is not None:
                        finished(k, row, False, 0)
                        continue
                    row = measure_row(p, evaluate_fn, errors, failure, make_row, blas_threads)
                    store.add(row)
                    finished(k, row, True, 0)
        else:
            todo = []
            for p, k in zip(unique, keys):
                row = store.lookup(p, k) if resume else None
                if row is None:
                    todo.append((p, k))
                else:
                    finished(k, row, False, 0)
            _run_dask(engine, todo, evaluate_fn, errors, failure, make_row, store, finished,
                      blas_threads, no_worker_timeout)
    finally:
        store.flush()
    return [out[k] for k in keys]


class _Store:
    """The client's view of the results store: rows by key (with their lines), re-read when another
    run replaced the file, new rows merged in at most every ``flush_seconds``."""

    def __init__(self, path, flush_seconds: float):
        self.path = None if path is None else Path(path)
        self.flush_seconds = flush_seconds
        self.by_key, self.seen, self.pending, self.warned = {}, None, [], False
        if self.path is not None:
            with locked(self.path):  # also removes leftover temporary files of killed writers
                self.seen = file_state(self.path)
                self.by_key = indexed_results(self.path)
        self.last = time.monotonic()

    def lookup(self, point, key):
        """The stored row of ``point`` (keyed ``key``) or None, re-reading the file if another run
        replaced it (no lock needed: every write is an atomic replace). ValueError naming
        ``path:line`` when the row's parameter fields are not the point's (the checksum is
        checked as the file is read, uhn.models.experiments.store)."""
        if self.path is not None and key not in self.by_key and file_state(self.path) != self.seen:
            self.seen = file_state(self.path)
            self.by_key = indexed_results(self.path)
        entry = self.by_key.get(key)
        if entry is None:
            return None
        line, row = entry
        if line is not None:
            self.check(point, line, row)
        return row

    def check(self, point, line: int, row: dict) -> None:
        """ValueError naming ``path:line`` unless the row holds its point's parameters; one
        warning per store for rows without a checksum."""
        expected = json.loads(json.dumps(point.params()))
        missing = [f for f in expected if f not in row]
        where = f"{self.path}:{line}"
        fix = ("delete that line to have the point measured again (or run with resume=False / "
               "--no-resume)")
        if missing:
            raise ValueError(f"{where}: the row of this point lacks the parameter fields "
                             f"{missing}; {fix}")
        differ = [f for f in expected if row[f] != expected[f]]
        if differ:
            f = differ[0]
            raise ValueError(f"{where}: the row's {f} = {row[f]!r} is not its point's "
                             f"{expected[f]!r} (fields {differ} differ from the key's): the row "
                             f"was not measured at the point it is stored under; {fix}")
        if not is_sealed(row) and not self.warned:
            self.warned = True
            warnings.warn(f"{self.path}: rows stored without a checksum (before checksums "
                          f"existed) are reused unverified; run with resume=False (--no-resume) "
                          f"to measure them again", UserWarning, stacklevel=4)

    def add(self, row: dict) -> None:
        self.pending.append(row)
        if time.monotonic() - self.last >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        if self.path is not None and self.pending:
            merged = merge_results(self.pending, self.path)
            self.by_key = {k: (None, r) for k, r in merged.items()}  # checked as read and made
            self.seen = file_state(self.path)
            self.pending.clear()
        self.last = time.monotonic()


#: seconds between two looks at the cluster while no result arrives
_POLL_SECONDS = 0.2


def _run_dask(client, todo, evaluate_fn, errors, failure, make_row, store, finished,
              blas, no_worker_timeout: float = NO_WORKER_TIMEOUT) -> None:
    """Submit every (point, key) of ``todo`` to the cluster; write each row as its result arrives.

    Each point is one task (``pure=False``: a resubmitted sweep measures again instead of reusing
    a cached result). The scheduler reruns the tasks of a worker that died on the other workers
    (up to its ``allowed-failures``); a task that keeps killing workers is a ClusterError here.
    While no result arrives the cluster's workers are counted: none for ``no_worker_timeout``
    seconds is a :class:`ClusterError` (the finished rows are stored by the caller).
    """
    from distributed import as_completed
    if not todo:
        return
    threads = max(1, sum(client.nthreads().values()))
    futures = {client.submit(measure, evaluate_fn, p, errors, failure, blas, pure=False,
                             key=f"sweep-point-{i}-{time.monotonic_ns()}"): (p, k)
               for i, (p, k) in enumerate(todo)}
    in_flight = len(futures)
    last_worker = time.monotonic()
    try:
        ac = as_completed(list(futures))
        while not ac.is_empty():
            batch = ac.next_batch(block=False)
            if not batch:
                now = time.monotonic()
                if _live_workers(client):
                    last_worker = now
                elif now - last_worker > no_worker_timeout:
                    raise ClusterError(
                        f"the dask cluster has had no live worker for {now - last_worker:.0f} s "
                        f"(no_worker_timeout = {no_worker_timeout:g} s) with {in_flight} of "
                        f"{len(futures)} points unfinished: its workers died or never started. "
                        f"The finished points are stored; start workers (or fix what kills them) "
                        f"and run again to resume")
                time.sleep(_POLL_SECONDS)
                continue
            for fut in batch:
                p, k = futures[fut]
                result = _result(fut)
                in_flight -= 1
                row = seal(make_row(p, result))
                store.add(row)
                finished(k, row, True, min(in_flight, threads))
                last_worker = time.monotonic()
    finally:
        pending = [f for f in futures if not f.done()]
        if pending:
            client.cancel(pending)


def _live_workers(client) -> int:
    """Workers the scheduler knows now (0 when it cannot be asked)."""
    try:
        return len(client.nthreads())
    except Exception:  # noqa: BLE001 - a scheduler that does not answer has no worker for us
        return 0


def _result(fut):
    """fut.result(), with a task that kept killing its workers (distributed's KilledWorker) as a
    ClusterError saying so; a bug in evaluate_fn is re-raised as it is."""
    try:
        return fut.result()
    except Exception as err:
        if type(err).__name__ == "KilledWorker":
            raise ClusterError(f"a sweep point killed every dask worker that ran it ({err}); "
                               f"the finished points are stored. A point that crashes its "
                               f"process (out of memory, a segfault) cannot be stored as a failed "
                               f"row: run it in-process to see the crash") from None
        raise


# ---------------------------------------------------------------------------------------------
# engines and progress
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def connect(workers: Optional[int] = None, scheduler: Optional[str] = None,
            threads_per_worker: int = 1, start_timeout: float = 60.0):
    """The engine for :func:`run`, closed on exit.

    Neither given: ``"local"`` (in-process, nothing started). ``workers=N``: a
    ``distributed.LocalCluster`` of N worker processes with ``threads_per_worker`` threads each
    (no dashboard). ``scheduler="tcp://HOST:PORT"``: a Client of that running dask scheduler
    (``dask scheduler`` / ``dask worker``, dask-jobqueue, ...). ImportError with the install line
    when dask.distributed is missing; :class:`ClusterError` when the cluster does not start (a
    worker killed while it starts) or the scheduler does not answer within ``start_timeout`` s.
    """
    if workers is not None and scheduler is not None:
        raise ValueError("give either workers (start a LocalCluster) or scheduler (connect to "
                         "a running cluster), not both")
    if workers is None and scheduler is None:
        yield "local"
        return
    if workers is not None and (isinstance(workers, bool) or int(workers) != workers
                                or workers < 1):
        raise ValueError(f"workers must be a whole number >= 1, got {workers!r}")
    if scheduler is not None and (not isinstance(scheduler, str) or "://" not in scheduler):
        raise ValueError(f"scheduler must be an address such as tcp://HOST:8786, got {scheduler!r}")
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ImportError("sweeps on a cluster need dask.distributed: "
                          "pip install 'universal-hopfield[cluster]' (or 'dask[distributed]')") from None
    with contextlib.ExitStack() as stack:
        try:
            if scheduler is not None:
                client = stack.enter_context(Client(scheduler, timeout=start_timeout))
            else:
                cluster = stack.enter_context(LocalCluster(
                    n_workers=int(workers), threads_per_worker=threads_per_worker,
                    processes=True, dashboard_address=None))
                client = stack.enter_context(Client(cluster, timeout=start_timeout))
        except Exception as err:  # noqa: BLE001 - distributed raises many kinds here
            what = (f"cannot connect to the dask scheduler at {scheduler}" if scheduler is not None
                    else f"the dask LocalCluster of {workers} workers did not start")
            raise ClusterError(f"{what}: {type(err).__name__}: {err or 'no detail'} (a worker "
                               f"killed while it started: out of memory, a failing preload, a "
                               f"signal)") from None
        yield client


def progress_bar(desc: str, describe: Optional[Callable[[dict], str]] = None):
    """A tqdm bar on stderr for :func:`run`: points done, with ``failed`` and ``running`` counts
    (and ``describe(row)`` of the last computed row) in its postfix. Returns (callback, close)."""
    from tqdm import tqdm
    state = {"bar": None}

    def callback(p: Progress):
        if state["bar"] is None:
            state["bar"] = tqdm(total=p.total, desc=desc, unit="pt", leave=False, file=sys.stderr)
        bar = state["bar"]
        bar.update(1)
        text = f"failed={p.failed} running={p.running}"
        if p.computed and describe is not None:
            text += " " + describe(p.row)
        bar.set_postfix_str(text, refresh=False)

    def close():
        if state["bar"] is not None:
            state["bar"].close()
            state["bar"] = None

    return callback, close
