"""uhn.models.atomic.atomic_path: the target holds the old content or the new, never a partial one."""
import os

import pytest

from uhn.models.atomic import atomic_path, umask


def test_replaces_on_success_with_usual_mode(tmp_path):
    target = tmp_path / "sub" / "f.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".f.txt.")
        tmp.write_text("new")
        assert not target.exists()          # nothing at the target until the block ends
    assert target.read_text() == "new"
    assert (target.stat().st_mode & 0o777) == 0o666 & ~umask()
    assert os.listdir(target.parent) == ["f.txt"]


def test_keeps_old_content_and_removes_tmp_on_error(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_temporary_names_carry_the_writer_pid(tmp_path):
    with atomic_path(tmp_path / "f.txt") as tmp:
        assert tmp.name.startswith(f".f.txt.{os.getpid()}.") and tmp.name.endswith(".tmp")
        tmp.write_text("x")


def test_write_bytes_on_a_full_disk_raises_oserror_keeps_old_file_and_no_tmp(tmp_path, monkeypatch):
    import errno

    from uhn.models import atomic
    target = tmp_path / "f.bin"
    atomic.write_bytes(target, b"old")

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", disk_full)
    with pytest.raises(OSError, match=r"cannot write .*f\.bin.*No space left on device") as info:
        atomic.write_bytes(target, b"new" * 1000)
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]
    assert atomic.write_bytes(target, memoryview(b"abc")) == target and target.read_bytes() == b"abc"


def test_clean_stale_removes_dead_writers_and_old_tmps_only(tmp_path):
    import subprocess
    import sys
    import time

    from uhn.models import atomic
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout)
    target = tmp_path / "fig.png"
    names = {"dead": f".fig.png.{dead}.a.tmp", "live": f".fig.png.{os.getppid()}.b.tmp",
             "mine": f".fig.png.{os.getpid()}.c.tmp", "old_no_pid": ".fig.png.k2j4.tmp",
             "user_png": ".fig.backup.png", "dead_png": f".fig.{dead}.q.png"}
    for n in names.values():
        (tmp_path / n).write_text("x")
    old = time.time() - 2 * atomic.STALE_TMP_SECONDS
    for key in ("old_no_pid", "user_png", "mine"):
        os.utime(tmp_path / names[key], (old, old))
    removed = {p.name for p in atomic.clean_stale(target)}
    assert removed == {names["dead"], names["old_no_pid"]}
    removed = {p.name for p in atomic.clean_stale(target, prefix=".fig.", suffix=".png")}
    assert removed == {names["dead_png"]}   # an old hidden .png without a pid may be the user's
    assert {p.name for p in tmp_path.iterdir()} == {names[k] for k in ("live", "mine", "user_png")}
