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
