"""The shape of the package: docs/ARCHITECTURE.md is its true map, and its import rules hold.

The import graph is read from the source by tools/import_graph.py (nothing is imported), lazy
function-level imports included.
"""
from __future__ import annotations

import importlib.util
import os
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"

_SPEC = importlib.util.spec_from_file_location("import_graph_tool", ROOT / "tools" / "import_graph.py")
import_graph = importlib.util.module_from_spec(_SPEC)
sys.modules["import_graph_tool"] = import_graph
_SPEC.loader.exec_module(import_graph)

# the one module outside uhn/cli that may import it: `python -m uhn`
CLI_ENTRY_POINTS = {"uhn.__main__"}


@pytest.fixture(scope="module")
def mods() -> dict[str, str]:
    return import_graph.modules(str(ROOT))


@pytest.fixture(scope="module")
def graph(mods) -> dict[str, set[str]]:
    return import_graph.edges(mods)


def module_files(mods) -> set[str]:
    """Every module file of the package, as a path relative to the repository root."""
    return {Path(p).relative_to(ROOT).as_posix() for p in mods.values()}


def mapped_files() -> set[str]:
    """The module files ARCHITECTURE.md's map names: the first cell of each table row."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    return set(re.findall(r"^\|\s*`((?:uhn|models|dynamics)/[\w/]+\.py)`\s*\|", text, flags=re.M))


def named_files() -> set[str]:
    """Every module file named anywhere on the page (tables and prose)."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    return set(re.findall(r"`((?:uhn|models|dynamics)/[\w/]+\.py)`", text))


def is_under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_map_reads_the_files():
    # the extraction must see the map, or the next test would compare two empty sets
    files = mapped_files()
    assert {"dynamics/network.py", "models/memory.py", "uhn/cli/__init__.py"} <= files


def test_every_module_is_on_the_map(mods):
    missing = sorted(module_files(mods) - mapped_files())
    assert not missing, f"modules docs/ARCHITECTURE.md's map does not name: {missing}"


def test_the_map_names_only_modules_that_exist(mods):
    ghosts = sorted(named_files() - module_files(mods))
    assert not ghosts, f"docs/ARCHITECTURE.md names modules that do not exist: {ghosts}"


def test_no_import_cycles(graph):
    cyc = import_graph.cycles(graph)
    assert not cyc, "import cycles: " + "; ".join(" <-> ".join(c) for c in cyc)


def test_no_private_names_across_modules(mods):
    uses = [os.path.relpath(u, ROOT) for u in import_graph.private_uses(mods)]
    assert not uses, f"{len(uses)} private names used across modules:\n" + "\n".join(uses)


def test_pyproject_lists_exactly_the_package_folders():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    listed = config["tool"]["setuptools"]["packages"]
    folders = import_graph.package_folders(str(ROOT))
    assert len(listed) == len(set(listed)), f"pyproject.toml lists a package twice: {listed}"
    assert set(listed) == set(folders), (
        f"[tool.setuptools] packages {sorted(listed)} != the package folders {sorted(folders)}: "
        f"a folder left out is not installed, a name without a folder breaks the install")
    # the mapping of the three roots is the one tools/import_graph.py reads
    assert config["tool"]["setuptools"]["package-dir"] == import_graph.PACKAGE_DIRS


def test_models_never_imports_dynamics_or_cli(graph):
    bad = sorted(f"{a} -> {b}" for a, bs in graph.items() if is_under(a, "uhn.models")
                 for b in bs if is_under(b, "uhn.dynamics") or is_under(b, "uhn.cli"))
    assert not bad, f"uhn.models imports the layers above it: {bad}"


def test_only_the_cli_imports_the_cli(graph):
    bad = sorted(f"{a} -> {b}" for a, bs in graph.items()
                 if not is_under(a, "uhn.cli") and a not in CLI_ENTRY_POINTS
                 for b in bs if is_under(b, "uhn.cli"))
    assert not bad, f"library modules import the command line: {bad}"


def test_solvers_sit_below_the_front_door(graph):
    bad = sorted(f"{a} -> {b}" for a, bs in graph.items() if is_under(a, "uhn.dynamics.solvers")
                 for b in bs if b == "uhn.dynamics.integrate")
    assert not bad, f"solvers import integrate, the front door above them: {bad}"


def test_library_never_imports_the_top_level_api(mods):
    """models/ and dynamics/ take nothing from `uhn` itself (its lazy names are for users) but
    the version."""
    bad = sorted(f"{a} imports {name}" for a, target, name, _ in import_graph.imports(mods)
                 if (is_under(a, "uhn.models") or is_under(a, "uhn.dynamics")) and target == "uhn"
                 and name not in ("version",))
    assert not bad, f"library modules import the top-level uhn: {bad}"


def test_every_everyday_name_resolves_to_its_defining_module():
    """`uhn.<name>` for every name of uhn.__all__ loads from the module _API names, where it is
    defined (not re-exported from elsewhere), and an unknown name is an AttributeError."""
    import importlib

    import pytest

    import uhn
    for name, module in uhn._API.items():
        value = getattr(uhn, name)
        assert value is getattr(importlib.import_module(module), name), name
        assert getattr(value, "__module__", module) == module, (name, value.__module__)
    for name, module in uhn._MODULES.items():
        assert getattr(uhn, name) is importlib.import_module(module)
    assert set(uhn.__all__) == set(uhn._API) | set(uhn._MODULES) | {"__version__"}
    with pytest.raises(AttributeError, match="no attribute 'Hopfield'"):
        uhn.Hopfield
