"""tools/mutate.py's coverage-guided test selection and its scratch copy's package links, on toy
projects in a temporary folder.

The selection is only worth having if it is sound: a mutant must be run against every test that
executes its statement, and a statement no test context executes (import-time code) must fall back
to the whole list. Checked here end to end: a real coverage run, a real pytest run of the selection.
"""
import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("pytest_cov")

_SPEC = importlib.util.spec_from_file_location(
    "mutate_tool", os.path.join(os.path.dirname(__file__), "..", "tools", "mutate.py"))
mutate = importlib.util.module_from_spec(_SPEC)
sys.modules["mutate_tool"] = mutate  # its dataclasses look their module up there
_SPEC.loader.exec_module(mutate)

TOY = textwrap.dedent('''\
    SCALE = 2 + 1


    def f(x):
        return (x
                + 1)


    def g(x):
        if x > 0:
            return x * SCALE
        return -x
    ''')

TESTS = textwrap.dedent('''\
    from toy.mod import f, g


    def test_f():
        assert f(1) == 2


    def test_g_positive():
        assert g(2) == 6


    def test_g_negative():
        assert g(-2) == 2
    ''')


def _mutants_by_line(source):
    return {(m.line, m.what): m for m in mutate.list_mutants("toy/mod.py", source, guards=False)}


def test_statement_span_is_the_whole_simple_statement_and_only_a_compound_header():
    ms = _mutants_by_line(TOY)
    # `+ 1` sits on line 6 of a return statement that starts on line 5
    assert ms[(5, "+ -> -")].span == (5, 6)
    # the `>` of `if x > 0:` (line 10): the header only, not the body lines 11-12
    assert ms[(10, "> -> >=")].span == (10, 10)
    # a default-free module constant: its own line
    assert ms[(1, "+ -> -")].span == (1, 1)


def test_selected_tests_unions_the_span_and_falls_back_to_everything():
    ctx = {5: ["t::a"], 6: ["t::b", "t::a"], 9: ["t::c"]}
    assert mutate.selected_tests(ctx, (5, 6)) == ["t::a", "t::b"]
    assert mutate.selected_tests(ctx, (7, 8)) is None      # no test context: the whole list


@pytest.fixture
def toy_tree(tmp_path):
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "__init__.py").write_text("")
    (tmp_path / "toy" / "mod.py").write_text(TOY)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_toy.py").write_text(TESTS)
    return str(tmp_path)


def test_coverage_contexts_and_a_selected_run_on_a_toy_project(toy_tree):
    files = ["tests/test_toy.py"]
    ctx, _, secs = mutate.coverage_contexts(toy_tree, files, "toy/mod.py", timeout=300)
    # every test's seconds, for the fastest-first order of a selected run
    assert sorted(secs) == ["tests/test_toy.py::test_f", "tests/test_toy.py::test_g_negative",
                            "tests/test_toy.py::test_g_positive"]
    assert all(v >= 0 for v in secs.values())
    # line 1 runs at import only (collection), so no test context holds it
    assert 1 not in ctx
    assert ctx[5] == ["tests/test_toy.py::test_f"]
    assert ctx[10] == ["tests/test_toy.py::test_g_negative", "tests/test_toy.py::test_g_positive"]
    assert ctx[11] == ["tests/test_toy.py::test_g_positive"]
    assert ctx[12] == ["tests/test_toy.py::test_g_negative"]

    # the selection runs exactly the listed test and deselects the others
    sel = mutate.selected_tests(ctx, (11, 11))
    status, _, tail = mutate.run_tests(toy_tree, files, timeout=300, select=sel)
    assert status == "passed" and "1 passed, 2 deselected" in tail

    # a selected run goes fastest first by the baseline's seconds (file order is negative, positive)
    both = ["tests/test_toy.py::test_g_negative", "tests/test_toy.py::test_g_positive"]
    status, _, tail = mutate.run_tests(toy_tree, files, timeout=300, select=both, extra=("-vv",),
                                       durations={both[0]: 9.0, both[1]: 0.1})
    assert status == "passed"
    assert tail.index("test_g_positive PASSED") < tail.index("test_g_negative PASSED")

    # a mutant of line 11 (x * SCALE -> x / SCALE) is killed by the selected test alone
    src = TOY.replace("return x * SCALE", "return x / SCALE")
    with open(os.path.join(toy_tree, "toy", "mod.py"), "w") as fh:
        fh.write(src)
    status, _, tail = mutate.run_tests(toy_tree, files, timeout=300, select=sel)
    assert status == "failed" and "1 failed" in tail

    # an id that is not collected: the plugin refuses to narrow the run (all three tests run)
    with open(os.path.join(toy_tree, "toy", "mod.py"), "w") as fh:
        fh.write(TOY)
    status, _, tail = mutate.run_tests(toy_tree, files, timeout=300,
                                       select=["tests/test_toy.py::test_gone"])
    assert status == "passed" and "ids not collected; running all" in tail and "3 passed" in tail


def test_coverage_contexts_are_reused_from_the_results_file_under_the_same_key():
    """A resumed run (same commit, test files and --tests-from contents) reads the contexts back
    from the JSON results instead of measuring them again; another key measures them anew."""
    import json
    calls = []

    def compute():
        calls.append(1)
        return {5: ["t::a"], 11: ["t::b", "t::c"]}, 42.0, {"t::a": 0.5}

    key = {"files": ["tests/test_toy.py"], "tests_from": {}}
    info = {}
    ctx, secs, reused = mutate.cached_contexts(info, key, compute)
    assert not reused and secs == {"t::a": 0.5} and len(calls) == 1 and info["baseline_s"] == 42.0 and info["covered_lines"] == 2
    info = json.loads(json.dumps(info))        # what the results file holds
    again, secs, reused = mutate.cached_contexts(info, json.loads(json.dumps(key)), compute)
    assert reused and again == ctx and secs == {"t::a": 0.5} and len(calls) == 1
    _, _, reused = mutate.cached_contexts(info, {**key, "tests_from": {"tests/x.py": "0" * 64}}, compute)
    assert not reused and len(calls) == 2


def test_mutant_timeout_is_twice_what_its_tests_took_unmutated():
    # whole list (no selection or no recorded times): twice the module's baseline
    assert mutate.mutant_timeout(120, 300.0, None, {"t::a": 1.0}) == 600.0
    assert mutate.mutant_timeout(120, 300.0, ["t::a"], {}) == 600.0
    # a selection: twice its tests' seconds, an unrecorded test counted as the whole baseline
    assert mutate.mutant_timeout(10, 300.0, ["t::a", "t::b"], {"t::a": 1.5, "t::b": 4.0}) == 11.0
    assert mutate.mutant_timeout(10, 300.0, ["t::a", "t::c"], {"t::a": 1.5}) == 603.0
    # never below the floor (pytest's own start)
    assert mutate.mutant_timeout(120, 300.0, ["t::a"], {"t::a": 1.5}) == 120


def test_a_package_mapped_to_another_folder_is_imported_from_the_copy(tmp_path):
    """pyproject.toml maps ``toyuhn.models`` to the folder ``models/`` (as this project maps
    ``uhn.models``): with PYTHONPATH = the copy, that import name must give the copy's folder (a
    symlink ``toyuhn/models -> ../models``), and check_imports_copy must accept it; an unmapped
    copy fails to import it."""
    (tmp_path / "pyproject.toml").write_text(
        '[tool.setuptools.package-dir]\n"toyuhn" = "toyuhn"\n"toyuhn.models" = "models"\n')
    (tmp_path / "toyuhn").mkdir()
    (tmp_path / "toyuhn" / "__init__.py").write_text("")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("VALUE = 1\n")
    assert mutate.package_dirs(str(tmp_path)) == {"toyuhn": "toyuhn", "toyuhn.models": "models"}
    with pytest.raises(subprocess.CalledProcessError):
        mutate.check_imports_copy(str(tmp_path))
    assert mutate.link_packages(str(tmp_path)) == ["toyuhn", "toyuhn.models"]
    assert os.readlink(tmp_path / "toyuhn" / "models") == os.path.join("..", "models")
    assert not os.path.islink(tmp_path / "toyuhn" / "__init__.py")
    mutate.check_imports_copy(str(tmp_path))
    # a mutant written to the folder is what the import name runs
    (tmp_path / "models" / "__init__.py").write_text("VALUE = 2\n")
    out = subprocess.run([sys.executable, "-c", "import toyuhn.models as m; print(m.VALUE)"],
                         cwd=tmp_path, env=mutate._env(str(tmp_path)), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "2"
