"""Atomic file writes, in one place: every file the package writes (results stores, figures,
trajectories, animations) goes through :func:`atomic_path` (or :func:`write_bytes`, built on it),
so a reader, a crash or Ctrl-C sees the old file or the new one, never a half-written one.

Temporary files are named ``<prefix><pid>.<random><suffix>`` (default prefix ``.<name>.``, a
hidden sibling of the target) with the writing process's id, so that the temporary file of a
writer killed mid-write (SIGKILL, power loss) is recognisable: the next write into that folder
removes it (:func:`clean_stale`) once its writer is no longer running, or once it is older than
:data:`STALE_TMP_SECONDS` whoever wrote it.
"""
from __future__ import annotations

import errno
import glob
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

#: a temporary file older than this (seconds) is a leftover of a killed writer, whoever wrote it
STALE_TMP_SECONDS = 3600.0


def umask() -> int:
    """The process's current file-creation mask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def pid_alive(pid: int) -> bool:
    """True while a process with id ``pid`` runs on this machine (os.kill(pid, 0) probe; on a
    platform without that probe, always True: nothing is removed for a dead writer there)."""
    if os.name != "posix":  # pragma: no cover - os.kill(pid, 0) is not a probe on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:  # not a pid at all
        return False
    return True


def default_prefix(path) -> str:
    """``.<name>.``: the prefix of the temporary files of writes to ``path``."""
    return f".{Path(path).name}."


def clean_stale(path, prefix: str | None = None, suffix: str = ".tmp",
                stale_seconds: float = STALE_TMP_SECONDS) -> list[Path]:
    """Remove leftover ``<prefix><pid>.<random><suffix>`` files of writers to ``path`` killed
    mid-write: those whose writer pid no longer runs on this machine, and any older than
    ``stale_seconds`` (with a ``.tmp`` suffix also those of an older naming without a pid).
    This process's own are kept.
    Returns the paths removed."""
    path = Path(path)
    prefix = default_prefix(path) if prefix is None else prefix
    removed, now, me = [], time.time(), os.getpid()
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*{glob.escape(suffix)}"):
        pid_field = tmp.name[len(prefix):].split(".", 1)[0]
        pid = int(pid_field) if pid_field.isdigit() else None
        try:
            age = now - tmp.stat().st_mtime
        except FileNotFoundError:
            continue
        dead = pid is not None and pid != me and not pid_alive(pid)
        # by age alone only ``.tmp`` files: a hidden ``.<name>.<word>.png`` may be the user's
        old = age > stale_seconds and pid != me and (pid is not None or suffix == ".tmp")
        if old or dead:
            try:
                tmp.unlink()
            except FileNotFoundError:
                continue
            removed.append(tmp)
    return removed


@contextmanager
def atomic_path(path, prefix: str | None = None, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a fresh temporary path ``<prefix><pid>.<random><suffix>`` in ``path``'s folder; when
    the block ends without an exception, the temporary file gets the usual permissions
    (0666 & ~umask) and is moved onto ``path`` with os.replace (atomic on one file system);
    otherwise it is removed and the exception propagates (the old file, if any, is untouched).

    ``prefix`` defaults to ``.<name>.`` (a hidden sibling); ``suffix`` keeps an extension for
    writers that infer the format from it. The folder is created if needed. Leftover temporary
    files of killed writers to ``path`` are removed first (:func:`clean_stale`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = default_prefix(path) if prefix is None else prefix
    clean_stale(path, prefix, suffix)
    fd, tmp = tempfile.mkstemp(prefix=f"{prefix}{os.getpid()}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_bytes(path, data) -> Path:
    """Write ``data`` (bytes or a buffer) to ``path`` atomically (:func:`atomic_path`: written,
    flushed and fsynced to a temporary file, then moved into place); returns the path.

    An OSError on the way (a full disk: ENOSPC, a quota: EDQUOT, a read-only folder) removes the
    temporary file, leaves the old file as it was, and is raised again as an OSError of the same
    errno naming ``path``.
    """
    path = Path(path)
    view = memoryview(data).cast("B")
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                written = 0
                while written < len(view):  # a short write on a filling disk: write the rest
                    written += fh.write(view[written:])
                fh.flush()
                os.fsync(fh.fileno())
    except OSError as err:
        code = err.errno if err.errno is not None else errno.EIO
        reason = err.strerror or str(err)
        raise OSError(code, f"cannot write {str(path)!r}: {reason} (the old file, if any, is "
                      f"unchanged; no temporary file is left)") from err
    return path


__all__ = ["atomic_path", "write_bytes", "clean_stale", "pid_alive", "umask", "default_prefix",
           "STALE_TMP_SECONDS"]
