"""Atomic file writes, in one place: every file the package writes (results stores, figures,
trajectories, animations) goes through :func:`atomic_path`, so a reader, a crash or Ctrl-C sees the
old file or the new one, never a half-written one."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def umask() -> int:
    """The process's current file-creation mask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path, prefix: str | None = None, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a fresh temporary path in ``path``'s folder; when the block ends without an exception,
    the temporary file gets the usual permissions (0666 & ~umask) and is moved onto ``path`` with
    os.replace (atomic on one file system); otherwise it is removed and the exception propagates.

    ``prefix`` defaults to ``.<name>.`` (a hidden sibling); ``suffix`` keeps an extension for
    writers that infer the format from it. The folder is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix if prefix is not None else f".{path.name}.",
                               suffix=suffix, dir=path.parent)
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
