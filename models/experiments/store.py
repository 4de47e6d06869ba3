"""The results store: one JSON-lines file of rows, one row per point, keyed by ``row["key"]``.

Several runs may write one file at once (a short sweep started during a long one). Each write is
"take the exclusive lock <file>.lock, re-read the file, merge my rows by key, write a temporary
file, os.replace it" (:func:`merge_results`): a writer always merges with whatever the others
stored meanwhile, and a reader (who needs no lock) sees the old file or the new one, never a
partial one. The lock is an advisory fcntl.flock; on a platform without fcntl (Windows) there is no
lock, and concurrent runs of one file may then lose each other's rows (one run at a time stays
safe). The sidecar <file>.lock is left in place: deleting a lock file others may hold open would
break the lock. Rows are strict JSON (no NaN or Infinity); every unreadable line is a ValueError
naming ``path:line``.

Integrity: the sweep runner seals every row it makes (:func:`seal`): the field ``checksum`` is the
SHA-256 of the row's other fields as canonical JSON (:func:`row_checksum`). Every reader here
checks it, so a row changed after it was measured (a hand-edited ``fraction_correct``) is a
ValueError naming ``path:line``, not a value reused without notice. Rows without a checksum
(stores written before it existed) are read as they are; the sweep warns once per file when it
reuses them.

Used by uhn.models.experiments.sweep (which writes it) and by whoever reads its rows
(uhn.models.experiments.capacity, uhn.dynamics.analysis.atlas, the ``uhn`` commands).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Optional, Sequence

from uhn.models.atomic import STALE_TMP_SECONDS, atomic_path, clean_stale

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None

_WHAT_TO_DO = ("move the file aside (or fix that line) and run again; every row of the store is "
               "a JSON object with a 'key', written by uhn.models.experiments.sweep.run")


#: JSON's names of the values json.loads returns, for error messages
_JSON_KINDS = {int: "number", float: "number", str: "string", list: "array", bool: "boolean",
               type(None): "null"}


def _reject_constant(name):
    raise ValueError(f"{name} is not JSON (the store is strict JSON: no NaN or Infinity)")


#: the row field holding :func:`row_checksum`
CHECKSUM_FIELD = "checksum"


def row_checksum(row: dict) -> str:
    """SHA-256 (hex) of the row's fields other than ``checksum``, as canonical strict JSON (sorted
    keys; a float's JSON text is its shortest round-trip repr, so a stored row re-read gives the
    same checksum)."""
    body = {k: v for k, v in row.items() if k != CHECKSUM_FIELD}
    return hashlib.sha256(dumps_row(body).encode("utf-8")).hexdigest()


def seal(row: dict) -> dict:
    """The row with its ``checksum`` field (:func:`row_checksum`) set."""
    body = {k: v for k, v in row.items() if k != CHECKSUM_FIELD}
    return {**body, CHECKSUM_FIELD: row_checksum(body)}


def is_sealed(row: dict) -> bool:
    """True when the row carries a checksum (rows stored before checksums existed do not)."""
    return CHECKSUM_FIELD in row


def check_seal(row: dict) -> Optional[str]:
    """None when the row has no checksum or its checksum matches its fields; otherwise why not."""
    if CHECKSUM_FIELD not in row:
        return None
    stored = row[CHECKSUM_FIELD]
    try:
        found = row_checksum(row)
    except ValueError as err:
        return str(err)
    if stored != found:
        return (f"the row does not match its checksum (stored {str(stored)[:12]}..., its fields "
                f"give {found[:12]}...): it was changed after it was measured")
    return None


_WHAT_TO_DO_EDITED = ("delete that line (its point is then measured again), or restore the value; "
                      "a stored row is not edited by hand")


def _read_rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) of every non-blank line; ValueError naming ``path:line`` for a line that
    is not UTF-8, not strict JSON, not a JSON object, or a row that does not match its checksum."""
    if not path.exists():
        return []
    out = []
    with path.open("rb") as fh:
        for n, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8").strip()
                if not line:
                    continue
                row = json.loads(line, parse_constant=_reject_constant)
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}:{n}: not UTF-8 text ({err.reason} at byte "
                                 f"{err.start}); {_WHAT_TO_DO}") from None
            except ValueError as err:  # json.JSONDecodeError is a ValueError
                raise ValueError(f"{path}:{n}: not a JSON row ({err}); {_WHAT_TO_DO}") from None
            if not isinstance(row, dict):
                kind = _JSON_KINDS.get(type(row), type(row).__name__)
                raise ValueError(f"{path}:{n}: a JSON {kind}, not a row (a JSON object); "
                                 f"{_WHAT_TO_DO}")
            bad = check_seal(row)
            if bad is not None:
                raise ValueError(f"{path}:{n}: {bad}; {_WHAT_TO_DO_EDITED}")
            out.append((n, row))
    return out


def load_results(path) -> list[dict]:
    """Rows of a results file in file order (empty list when it does not exist).

    Raises ValueError naming ``path:line`` and what to do for any line that is not a strict-JSON
    object (binary garbage, a JSON scalar or list, NaN); nothing is skipped silently.
    """
    return [row for _, row in _read_rows(Path(path))]


def indexed_results(path) -> dict[str, tuple[int, dict]]:
    """The store's rows by key with their line numbers, ``{key: (line, row)}``, in file order (a
    key stored twice: the later row).

    ValueError naming ``path:line`` for a row without a string ``key``: :func:`merge_results`
    rewrites the file from this dict, so a row it cannot index would otherwise be dropped.
    """
    path, out = Path(path), {}
    for n, row in _read_rows(path):
        key = row.get("key")
        if not isinstance(key, str):
            raise ValueError(f"{path}:{n}: row has no 'key' (a string), so the results store "
                             f"cannot keep it when it merges new rows; {_WHAT_TO_DO}")
        out[key] = (n, row)
    return out


def stored_results(path) -> dict[str, dict]:
    """The store's rows by key, in file order (:func:`indexed_results` without the lines)."""
    return {k: row for k, (_, row) in indexed_results(path).items()}


def dumps_row(row: dict) -> str:
    """One strict-JSON line (sorted keys); ValueError naming the field holding NaN or infinity."""
    try:
        return json.dumps(row, sort_keys=True, allow_nan=False)
    except ValueError:
        bad = [k for k, v in row.items()
               if isinstance(v, float) and not math.isfinite(v)] or ["(nested)"]
        raise ValueError(f"row field {bad[0]!r} = {row.get(bad[0])!r} is not finite: JSON has no "
                         f"NaN or Infinity, so it cannot be stored") from None


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


class locked:
    """Context manager: the exclusive advisory lock of the store at ``path`` (blocks until free).

    On entry it also removes leftover temporary files of killed writers (:func:`clean_tmp`).
    Without fcntl it only cleans (no lock; see the module docstring).
    """

    def __init__(self, path: Path):
        self.path = path
        self.fd = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fcntl is not None:
            self.fd = os.open(_lock_path(self.path), os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(self.fd)
                raise
        clean_tmp(self.path)
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None


def clean_tmp(path: Path, stale_seconds: float = STALE_TMP_SECONDS) -> list[Path]:
    """Remove leftover ``.<name>.<pid>.<random>.tmp`` files of writers of the store at ``path``
    killed mid-write (:func:`uhn.models.atomic.clean_stale`); returns the paths removed."""
    return clean_stale(path, stale_seconds=stale_seconds)


def _replace_file(lines: Sequence[str], path: Path) -> None:
    """Write lines atomically (:func:`uhn.models.atomic.atomic_path`): ``.<name>.<pid>.<random>.tmp``
    in the same folder, fsync, os.replace. Callers hold the store's lock."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            for line in lines:
                fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def write_results(rows: Sequence[dict], path) -> None:
    """Replace the file's rows with ``rows`` as strict-JSON lines, atomically, under the lock.

    A reader (or an interruption) sees the old file or the new one, never a partial one. A row
    holding NaN or infinity raises ValueError naming the field, and the file is left as it was.
    (To add rows to a store others may be writing, use :func:`merge_results`.)
    """
    path = Path(path)
    lines = [dumps_row(r) for r in rows]  # before the lock: a bad row changes nothing
    with locked(path):
        _replace_file(lines, path)


def merge_results(rows: Sequence[dict], path) -> dict[str, dict]:
    """Store rows by key: under the lock, re-read the file, replace or append each row by its
    ``key`` (rows of other keys are kept in file order), write atomically. Returns the merged
    store by key. ValueError for a row without a key, a NaN value, or an unreadable stored line.
    """
    path = Path(path)
    new = {}
    for r in rows:
        if not isinstance(r.get("key"), str):
            raise ValueError(f"cannot store a row without a 'key' string (fields {sorted(r)})")
        new[r["key"]] = r
    lines = {k: dumps_row(r) for k, r in new.items()}  # before the lock: a bad row changes nothing
    with locked(path):
        stored = stored_results(path)
        old_lines = {k: dumps_row(r) for k, r in stored.items() if k not in new}
        stored.update(new)  # stored keys keep their place, new keys are appended
        _replace_file([old_lines[k] if k in old_lines else lines[k] for k in stored], path)
    return stored


def file_state(path: Path):
    """(inode, mtime, size) of the file, or None: changes whenever a writer replaces it."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size
