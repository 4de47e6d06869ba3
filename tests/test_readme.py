"""README.md's code runs as written, each block alone, from a folder of the user's own.

Research code very often has its own ``models.py`` or ``dynamics/``: the package must not claim those
import names. Every ``python`` block of README.md runs in a fresh interpreter whose working
directory holds a ``models.py`` and a ``dynamics/`` package of its own (so the current directory,
first on ``sys.path``, would win any clash), and nothing installed may be a top-level ``models`` or
``dynamics``.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# the test command CI runs (.ci/run); README.md must give it verbatim
TEST_COMMAND = ('python3 -m venv .venv && . .venv/bin/activate && pip install -q -e ".[test]" '
                '&& MPLBACKEND=Agg python -m pytest -q')


def python_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    return re.findall(r"^```python[^\n]*\n(.*?)^```", text, flags=re.S | re.M)


def user_folder(path: Path) -> Path:
    """A folder of the user's own: a models.py and a dynamics/ package that are not ours."""
    (path / "models.py").write_text('Memory = "the user\'s"\nOURS = False\n', encoding="utf-8")
    (path / "dynamics").mkdir()
    (path / "dynamics" / "__init__.py").write_text('network = "the user\'s"\nOURS = False\n',
                                                   encoding="utf-8")
    return path


def run_python(code: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, MPLBACKEND="Agg")
    env.setdefault("UHN_BRIAN2_CACHE", str(ROOT / ".brian_cache"))
    env.pop("PYTHONPATH", None)          # only what is installed, and the user's folder
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_readme_has_python_blocks():
    # the extraction must find the tour, or the block test below would pass vacuously
    blocks = python_blocks()
    assert len(blocks) >= 2 and any("Memory(" in b for b in blocks)
    assert any("integrate(" in b and "verify_energy(" in b for b in blocks)


def test_readme_gives_the_ci_test_command():
    assert TEST_COMMAND in README.read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert TEST_COMMAND in ci.splitlines(), ".ci/run no longer runs the README's test command"


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= 160, f"README.md has {n} lines; details belong in docs/ (at most ~150)"


@pytest.mark.parametrize("k", range(len(python_blocks())), ids=lambda k: f"block{k + 1}")
def test_readme_block_runs_alone_beside_user_models(k, tmp_path):
    """Block k, alone, in a fresh interpreter, from a folder with the user's models.py and
    dynamics/; afterwards `uhn` came from the install and the user's modules are still theirs."""
    folder = user_folder(tmp_path)
    block = python_blocks()[k]
    check = textwrap.dedent(f"""
        import sys, uhn, models, dynamics
        assert not models.OURS and not dynamics.OURS, "the user's modules were replaced"
        here = {str(folder)!r}
        assert not uhn.__file__.startswith(here), uhn.__file__
        assert models.__file__.startswith(here), models.__file__
        mine = [m for m in ("models", "dynamics") if m in sys.modules
                and not (getattr(sys.modules[m], "__file__", None) or "").startswith(here)]
        assert not mine, f"top-level modules loaded from elsewhere: {{mine}}"
    """)
    proc = run_python(block + "\n# --- the test's checks\n" + check, folder)
    assert proc.returncode == 0, (f"README.md python block {k + 1} failed alone (exit "
                                  f"{proc.returncode}):\n{block}\n--- stdout\n{proc.stdout[-3000:]}"
                                  f"\n--- stderr\n{proc.stderr[-6000:]}")


def test_nothing_installed_as_top_level_models_or_dynamics(tmp_path):
    """From a neutral folder, `models` and `dynamics` are not importable: the install claims `uhn` only."""
    code = textwrap.dedent("""
        import importlib.util, sys
        sys.path = [p for p in sys.path if p not in ("", ".")]
        found = {m: importlib.util.find_spec(m) for m in ("models", "dynamics")}
        assert all(s is None for s in found.values()), found
        import uhn.models, uhn.dynamics
        assert importlib.util.find_spec("models") is None
    """)
    proc = run_python(code, tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
