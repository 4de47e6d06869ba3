"""Mutation testing of the physics modules: mutate one operator, run the relevant tests, list survivors.

A mutant is the module with one AST node changed (operators below). It is *killed* when the module's
tests fail (or time out, or the module no longer imports) and *survives* when they all pass: a
survivor is either equivalent (no computed value changes) or a value the tests never check.

Why a small AST mutator of our own and not mutmut / cosmic-ray: both mutate the source tree in place
(mutmut 3 also wants its own ``mutants/`` set-up and a trampoline in every function), while several
people edit this checkout at once and the tests read it; cosmic-ray needs a session database and a
config per module. Here every mutant is written into a scratch copy of one *committed* tree
(``git archive <commit>``), pytest runs there with ``PYTHONPATH`` pointing at the copy (its folders
linked where pyproject.toml's package-dir puts them, ``uhn/models -> ../models``; checked before the
first mutant: ``uhn.models``, ``uhn.dynamics`` must be the copy's), and the operators are exactly
those where one wrong character is a wrong paper result:

    arith     +  <-> -,  *  <-> /,  ** -> *            (binary operators and augmented assignments)
    augdrop   ``x op= y`` -> ``pass``                    (e.g. ``out /= tau`` dropped)
    neg       ``-x`` -> ``x``                            (unary minus removed)
    cmp       <  <-> <=,  >  <-> >=,  == <-> !=
    const     numeric literal c -> c + 1                 (2.0 -> 3.0, 0.5 -> 1.5, 0 -> 1)
    minmax    max <-> min (builtins, np.max/np.min, np.maximum/np.minimum, argmax/argmin)

Not mutated: docstrings, f-strings and anything inside a ``raise`` statement (messages), and (unless
``--guards``) the test of an ``if`` whose body only raises (validation-only lines; their behaviour
is what ``pytest.raises`` tests check, which the ordinary suite covers).

Usage (from the repository root, the project's venv active)::

    python tools/mutate.py --max-per-module 40 --seed 0 --timeout 120 --out mutation_results.json
    python tools/mutate.py --list                      # the mutants, without running anything
    python tools/mutate.py --only dynamics/solvers/rk45_batched.py:17 # re-run chosen mutants (module:index)
    python tools/mutate.py --only models/separation.py:12 --tests-from tests/models/test_x.py \
        --tests tests/models/test_x.py --out /tmp/kill.json   # does a new, uncommitted test kill it?

``--select coverage`` (needs ``pip install -e ".[mutation]"``: coverage + pytest-cov) first runs the
module's tests once under coverage with one context per test, then runs each mutant against only the
tests that execute its statement (``-x`` still stops at the first failure). A statement no test
context executes (import-time code, numba-compiled kernels, lines no test reaches) gets the module's
whole test list, so selection never skips a test that could see the mutant *through that line*; it
can miss one that sees it only through a value cached by an earlier test, so a survivor under
selection is worth one ``--only`` rerun without ``--select`` before it is called real. The selected
tests run fastest first (seconds recorded in the baseline run) and time out at twice their baseline
seconds (:func:`mutant_timeout`); contexts and seconds are kept in the results file for a resumed run.

Results go to ``--out`` (JSON, rewritten atomically after every mutant, resumable: a rerun with the
same commit, seed and sampling skips mutants already done). The summary table per module and the
survivors (with their diffs) are printed at the end.
"""
from __future__ import annotations

import argparse
import ast
import copy
import difflib
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: module -> the test files that check it (globs of this repository's own tests, relative to the root).
#: Each module's own test file holds the tests written to kill its survivors (docs/testing.md); the
#: other files are those whose tests also execute the module (measured under coverage).
TESTS = {
    # the array-API tests exercise the spec-only branches of these modules (a mutant there is
    # killed only by them); test_kernels.py the L1/Lp path numpy similarities now run on
    "models/similarity.py": ["tests/models/test_similarity.py", "tests/models/test_memory.py",
                             "tests/models/test_kernels.py", "tests/models/test_arrays.py",
                             "tests/models/test_named_models.py"],
    "models/separation.py": ["tests/models/test_separation.py", "tests/models/test_memory.py",
                             "tests/models/test_arrays.py", "tests/models/test_named_models.py"],
    "models/memory.py": ["tests/models/test_memory.py", "tests/models/test_named_models.py",
                         "tests/models/test_arrays.py"],
    # test_array_api_dynamics.py: the spec-only branches of the Lagrangians, Network and the
    # array batched integrator
    "dynamics/lagrangians.py": ["tests/dynamics/test_lagrangians.py", "tests/dynamics/analysis/test_energy.py",
                                "tests/dynamics/test_array_api_dynamics.py", "tests/dynamics/test_network.py",
                                "tests/dynamics/test_integrate.py", "tests/dynamics/analysis/test_energy_bounds.py"],
    # test_float32_dynamics.py: float32 networks (the float64 twin of the memories, dtypes kept)
    "dynamics/network.py": ["tests/dynamics/test_network.py", "tests/dynamics/analysis/test_energy.py",
                            "tests/dynamics/test_integrate.py", "tests/dynamics/test_array_api_dynamics.py",
                            "tests/dynamics/test_float32_dynamics.py", "tests/dynamics/analysis/test_energy_bounds.py"],
    "dynamics/analysis/energy.py": ["tests/dynamics/analysis/test_energy.py",
                                    "tests/dynamics/analysis/test_energy_trajectory.py",
                                    "tests/dynamics/analysis/test_energy_bounds.py"],
    # test_array_api_dynamics.py: rk45_batched's controller helpers (initial step, error norm,
    # casts) also run inside uhn.dynamics.solvers.rk45_batched_array
    "dynamics/solvers/rk45_batched.py": ["tests/dynamics/solvers/test_rk45_batched.py",
                                         "tests/dynamics/test_float32_dynamics.py",
                                         "tests/dynamics/test_array_api_dynamics.py", "tests/dynamics/test_integrate.py",
                                         "tests/dynamics/analysis/test_energy_bounds.py"],
    "dynamics/solvers/rk45_batched_array.py": ["tests/dynamics/test_array_api_dynamics.py",
                                               "tests/dynamics/test_integrate.py"],
    "dynamics/integrate.py": ["tests/dynamics/test_integrate.py", "tests/dynamics/solvers/test_rk45_batched.py",
                              "tests/dynamics/test_float32_dynamics.py", "tests/dynamics/solvers/test_reduced.py",
                              "tests/dynamics/test_array_api_dynamics.py",
                              "tests/dynamics/analysis/test_energy_bounds.py"],
}

_ARITH = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.Pow: ast.Mult}
_CMP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq}
_MINMAX = {"max": "min", "min": "max", "maximum": "minimum", "minimum": "maximum",
           "argmax": "argmin", "argmin": "argmax", "nanmax": "nanmin", "nanmin": "nanmax"}
_SYM = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**", ast.Lt: "<", ast.LtE: "<=",
        ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!="}


@dataclass
class Mutant:
    module: str
    index: int      # position in the module's full (unsampled) list: stable across runs of one commit
    op: str
    line: int
    col: int
    what: str       # e.g. "+ -> -"
    source_line: str
    span: tuple = ()  # (first, last) source line of the statement (header) holding the node


# ------------------------------------------------------------------------------------------ mutants
def _skipped_nodes(tree: ast.AST, guards: bool) -> set[int]:
    """ids of nodes never mutated: docstrings, f-strings, raise statements, validation-only if tests."""
    skip: set[int] = set()

    def mark(node):
        for n in ast.walk(node):
            skip.add(id(n))

    for node in ast.walk(tree):
        if isinstance(node, (ast.Raise, ast.JoinedStr, ast.Assert)):
            mark(node)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                mark(body[0])
        elif isinstance(node, ast.If) and not guards:
            if all(isinstance(s, ast.Raise) for s in node.body) and not node.orelse:
                mark(node.test)
    return skip


def _sites(tree: ast.AST, guards: bool):
    """Yield (node, field-path-independent description, op, apply) for every mutation site, in a
    deterministic order (ast.walk is breadth-first and deterministic for one source)."""
    skip = _skipped_nodes(tree, guards)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
            new = _ARITH[type(node.op)]
            yield node, "arith", f"{_SYM[type(node.op)]} -> {_SYM[new]}", ("op", new)
        elif isinstance(node, ast.AugAssign):
            if type(node.op) in _ARITH:
                new = _ARITH[type(node.op)]
                yield node, "arith", f"{_SYM[type(node.op)]}= -> {_SYM[new]}=", ("op", new)
            yield node, "augdrop", "augmented assignment dropped", ("drop", None)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            yield node, "neg", "unary minus removed", ("unneg", None)
        elif isinstance(node, ast.Compare):
            for k, op in enumerate(node.ops):
                if type(op) in _CMP:
                    new = _CMP[type(op)]
                    yield node, "cmp", f"{_SYM[type(op)]} -> {_SYM[new]}", ("cmp", (k, new))
        elif isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
                and not isinstance(node.value, bool):
            yield node, "const", f"{node.value!r} -> {node.value + 1!r}", ("const", node.value + 1)
        elif isinstance(node, ast.Name) and node.id in _MINMAX and isinstance(node.ctx, ast.Load):
            yield node, "minmax", f"{node.id} -> {_MINMAX[node.id]}", ("name", _MINMAX[node.id])
        elif isinstance(node, ast.Attribute) and node.attr in _MINMAX and isinstance(node.ctx, ast.Load):
            yield node, "minmax", f".{node.attr} -> .{_MINMAX[node.attr]}", ("attr", _MINMAX[node.attr])


class _Apply(ast.NodeTransformer):
    def __init__(self, target_index: int, guards: bool):
        self.target_index, self.guards = target_index, guards

    def run(self, tree):
        sites = list(_sites(tree, self.guards))
        node, _, _, (kind, arg) = sites[self.target_index]
        self.node, self.kind, self.arg = node, kind, arg
        return self.visit(tree)

    def generic_visit(self, node):
        node = super().generic_visit(node)
        if node is not self.node:
            return node
        k, a = self.kind, self.arg
        if k == "op":
            node.op = a()
        elif k == "drop":
            return ast.copy_location(ast.Pass(), node)
        elif k == "unneg":
            return node.operand
        elif k == "cmp":
            node.ops[a[0]] = a[1]()
        elif k == "const":
            node.value = a
        elif k == "name":
            node.id = a
        elif k == "attr":
            node.attr = a
        return node


def statement_span(parents: dict, node: ast.AST) -> tuple[int, int]:
    """Source lines (first, last) of the innermost statement holding ``node``: the whole statement
    for a simple one, only the header (up to its first body line) for a compound one (``if``,
    ``for``, ``def`` ...), so that a mutant in an ``if`` test selects the tests that evaluate the
    test, not every test that runs some line of its body. ``parents``: id(child) -> parent."""
    stmt = node
    while not isinstance(stmt, ast.stmt):
        stmt = parents[id(stmt)]
    body = getattr(stmt, "body", None)
    if isinstance(body, list) and body:
        return stmt.lineno, max(stmt.lineno, body[0].lineno - 1)
    return stmt.lineno, stmt.end_lineno


def list_mutants(module: str, source: str, guards: bool) -> list[Mutant]:
    tree = ast.parse(source)
    lines = source.splitlines()
    parents = {id(c): p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
    out = []
    for i, (node, op, what, _) in enumerate(_sites(tree, guards)):
        out.append(Mutant(module, i, op, node.lineno, node.col_offset, what, lines[node.lineno - 1].strip(),
                          statement_span(parents, node)))
    return out


def mutated_source(source: str, index: int, guards: bool) -> str:
    """The module's source with mutant ``index`` applied (re-emitted by ast.unparse; line numbers of
    the unmutated code are irrelevant to the tests)."""
    tree = ast.parse(source)
    tree = _Apply(index, guards).run(tree)
    ast.fix_missing_locations(tree)
    return ast.unparse(tree)


def sample(mutants: list[Mutant], k: int | None, seed: int) -> list[Mutant]:
    """At most k mutants: the first k of a fixed-seed shuffle, so a larger k extends a smaller one's
    sample (a resumed run with a larger k reuses every result), run in source order."""
    if k is None or len(mutants) <= k:
        return mutants
    order = list(mutants)
    random.Random(f"{seed}:{mutants[0].module}").shuffle(order)
    return sorted(order[:k], key=lambda m: m.index)


# ------------------------------------------------------------------------------------------ running
def export_tree(commit: str, dest: str) -> str:
    """Unpack the committed tree of ``commit`` into ``dest`` (fresh), its packages linked for import
    (:func:`link_packages`); return the full hash."""
    full = subprocess.run(["git", "-C", REPO, "rev-parse", commit], check=True, capture_output=True,
                          text=True).stdout.strip()
    if os.path.exists(dest):
        shutil.rmtree(dest)
    os.makedirs(dest)
    archive = subprocess.run(["git", "-C", REPO, "archive", full], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    link_packages(dest)
    return full


def package_dirs(tree: str) -> dict:
    """pyproject.toml's ``[tool.setuptools.package-dir]`` of ``tree``: import name -> folder."""
    import tomllib
    with open(os.path.join(tree, "pyproject.toml"), "rb") as fh:
        return tomllib.load(fh).get("tool", {}).get("setuptools", {}).get("package-dir", {})


def link_packages(tree: str) -> list[str]:
    """Make the copy importable as installed with ``PYTHONPATH=tree``: a package whose folder is
    not where its import name puts it (``"uhn.models" = "models"``) gets a relative symlink there
    (``uhn/models -> ../models``); the editable install's finder would otherwise serve the
    repository's folder for it. A mutant is written to the folder itself (``models/x.py``), the
    one file both paths name. Returns the import names mapped."""
    names = sorted((n for n in package_dirs(tree) if n), key=lambda n: n.count("."))
    for name in names:
        natural = os.path.join(tree, *name.split("."))
        target = os.path.join(tree, package_dirs(tree)[name])
        if os.path.realpath(natural) != os.path.realpath(target):
            os.symlink(os.path.relpath(target, os.path.dirname(natural)), natural)
    return names


def _env(tree: str) -> dict:
    env = dict(os.environ)
    env.update(PYTHONPATH=tree, PYTHONDONTWRITEBYTECODE="1", HYPOTHESIS_PROFILE="ci", MPLBACKEND="Agg")
    env.pop("CI", None)
    return env


def check_imports_copy(tree: str) -> None:
    """The copy's packages (every import name of its package-dir), not the editable install in the
    repository, must be what pytest imports."""
    code = "import importlib, sys\nfor n in sys.argv[1:]:\n    print(importlib.import_module(n).__file__)"
    names = [n for n in package_dirs(tree) if n]
    out = subprocess.run([sys.executable, "-c", code, *names], cwd=tree, env=_env(tree), capture_output=True,
                         text=True, check=True).stdout.split()
    for path in out:
        if not os.path.realpath(path).startswith(os.path.realpath(tree) + os.sep):
            raise RuntimeError(f"the scratch copy is not what gets imported: {path} (expected under {tree})")


def test_files(tree: str, module: str) -> list[str]:
    import glob
    files = []
    for pattern in TESTS[module]:
        files += sorted(os.path.relpath(p, tree) for p in glob.glob(os.path.join(tree, pattern)))
    return files


#: pytest plugin written into the scratch copy. $MUTATE_SELECT: keep only the node ids listed there
#: (if any listed id is not collected, a parametrisation whose id changed, it keeps everything),
#: fastest first by the seconds in $MUTATE_ORDER (a JSON {node id: seconds}): a mutant is then
#: usually killed by a quick test, while a survivor still runs them all. $MUTATE_DURATIONS: write
#: each test's setup + call + teardown seconds there (the baseline run).
_SELECT_PLUGIN = """import json, os, sys

_durations = {}


def pytest_collection_modifyitems(session, config, items):
    path = os.environ.get("MUTATE_SELECT")
    if not path:
        return
    keep = set(open(path).read().splitlines())
    found = {item.nodeid for item in items}
    if keep - found:
        if not session.testsfailed:  # a collection error (the mutant breaks an import) is a kill
            sys.stderr.write(f"mutate-select: {len(keep - found)} ids not collected; running all\\n")
        return
    config.hook.pytest_deselected(items=[i for i in items if i.nodeid not in keep])
    items[:] = [i for i in items if i.nodeid in keep]
    order = os.environ.get("MUTATE_ORDER")
    if order:
        secs = json.load(open(order))
        items.sort(key=lambda i: secs.get(i.nodeid, float("inf")))


def pytest_runtest_logreport(report):
    if os.environ.get("MUTATE_DURATIONS"):
        _durations[report.nodeid] = _durations.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session):
    path = os.environ.get("MUTATE_DURATIONS")
    if path:
        with open(path, "w") as fh:
            json.dump(_durations, fh)
"""
_SELECT_MODULE = "_mutate_select"


def run_tests(tree: str, files: list[str], timeout: float, select: list[str] | None = None,
              extra: tuple = (), env_extra: dict | None = None,
              durations: dict | None = None) -> tuple[str, float, str]:
    """('passed' | 'failed' | 'timeout', seconds, tail of the output). ``select``: run only these
    node ids of ``files`` (through the plugin above), fastest first by ``durations`` if given."""
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
           "--benchmark-disable", *extra, *files]
    env = _env(tree)
    env.update(env_extra or {})
    if select is not None or "MUTATE_DURATIONS" in env:
        with open(os.path.join(tree, _SELECT_MODULE + ".py"), "w") as fh:
            fh.write(_SELECT_PLUGIN)
        cmd[3:3] = ["-p", _SELECT_MODULE]
    if select is not None:
        sel = os.path.join(tree, ".mutate_select.txt")
        with open(sel, "w") as fh:
            fh.write("\n".join(select) + "\n")
        env["MUTATE_SELECT"] = sel
        if durations:
            order = os.path.join(tree, ".mutate_order.json")
            with open(order, "w") as fh:
                json.dump(durations, fh)
            env["MUTATE_ORDER"] = order
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        status = "passed" if proc.returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        status = "timeout"
    if proc.returncode in (4, 5):  # usage error / nothing collected: a fault of this tool, not a kill
        raise RuntimeError(f"pytest exit {proc.returncode} (usage error or no tests): {(out or '')[-800:]}")
    return status, time.monotonic() - t0, (out or "")[-1500:]


def coverage_contexts(tree: str, files: list[str], module: str, timeout: float) -> tuple[dict, float, dict]:
    """Run ``files`` once under coverage with one context per test (pytest-cov ``--cov-context=test``);
    return ({line: sorted node ids of the tests whose setup, call or teardown executed it}, seconds,
    {node id: its seconds in this run}). Lines executed only outside any test (imports, collection)
    are absent."""
    try:
        import coverage
    except ImportError as err:
        raise SystemExit('--select coverage needs coverage and pytest-cov: pip install -e ".[mutation]"') from err
    data_file = os.path.join(tree, ".coverage_mutate")
    if os.path.exists(data_file):
        os.remove(data_file)
    package = module.split("/")[0]
    times_file = os.path.join(tree, ".mutate_durations.json")
    status, secs, tail = run_tests(tree, files, timeout,
                                   extra=(f"--cov={package}", "--cov-context=test", "--cov-report="),
                                   env_extra={"COVERAGE_FILE": data_file, "MUTATE_DURATIONS": times_file})
    if status != "passed":
        print(tail)
        raise SystemExit(f"baseline tests of {module} do not pass unmutated under coverage ({status})")
    cov = coverage.CoverageData(basename=data_file)
    cov.read()
    target = os.path.realpath(os.path.join(tree, module))
    fname = next((f for f in cov.measured_files() if os.path.realpath(f) == target), None)
    if fname is None:
        raise SystemExit(f"coverage measured nothing of {module}: is the copy what pytest imports?")
    out = {}
    for line, ctxs in cov.contexts_by_lineno(fname).items():
        ids = sorted({c.rsplit("|", 1)[0] for c in ctxs if c})
        if ids:
            out[line] = ids
    with open(times_file) as fh:
        durations = json.load(fh)
    return out, secs, durations


def cached_contexts(info: dict, key: dict, compute) -> tuple[dict, dict, bool]:
    """(contexts, durations, reused): the module's coverage contexts and per-test seconds from
    ``info["coverage"]`` when they were measured under the same ``key`` (test files and
    --tests-from contents; the commit is the results file's own), else ``compute()`` ->
    (contexts, seconds, durations), stored in ``info`` as JSON (line numbers as strings) with the
    seconds as the module's baseline."""
    cached = info.get("coverage")
    if cached and cached.get("key") == key:
        contexts, reused = {int(line): ids for line, ids in cached["contexts"].items()}, True
        durations = cached.get("durations", {})
    else:
        contexts, info["baseline_s"], durations = compute()
        reused = False
        info["coverage"] = {"key": key, "contexts": {str(k): v for k, v in contexts.items()},
                            "durations": durations}
    info["covered_lines"] = len(contexts)
    return contexts, durations, reused


def mutant_timeout(floor: float, baseline_s: float, select, durations) -> float:
    """Seconds a mutant's run may take before it counts as killed (a mutant that makes the code
    loop or stall). A survivor runs every test it is given, so never less than twice what those
    tests took unmutated (a loaded machine cannot turn survivors into "timeouts"): twice the
    selected tests' seconds in the baseline run under coverage (itself slower than a plain run;
    a test without a recorded time counts as the whole baseline), or twice the whole baseline
    when everything runs; and never less than ``floor`` (--timeout, which covers pytest's start)."""
    if select is None or not durations:
        return max(floor, 2 * baseline_s)
    return max(floor, 2 * sum(durations.get(i, baseline_s) for i in select))


def _digest(tree: str, paths: list[str]) -> dict:
    """{path: sha256 of its content in the copy} of the --tests-from files (part of the key under
    which coverage contexts are reused: an edited test file must be measured again)."""
    return {p: hashlib.sha256(open(os.path.join(tree, p), "rb").read()).hexdigest() for p in paths}


def selected_tests(contexts: dict, span: tuple) -> list[str] | None:
    """Node ids of the tests that execute any line of ``span``; None (run the whole list) when no
    test context executes it (import-time code, compiled kernels, unreached lines)."""
    ids = set()
    for line in range(span[0], span[1] + 1):
        ids.update(contexts.get(line, ()))
    return sorted(ids) or None


def _clear_pyc(tree: str) -> None:
    """Delete the copy's bytecode (a mutant written within the same second and of the same size
    could otherwise be served from a stale .pyc). numba's on-disk caches beside it are kept: they
    check the source file's own time stamp, so only a mutant of the compiled module recompiles
    (clearing them made every mutant recompile every kernel)."""
    for root, _, files in os.walk(tree):
        for f in files:
            if f.endswith(".pyc"):
                os.remove(os.path.join(root, f))


def save(path: str, data: dict) -> None:
    """Write JSON atomically: a crash never leaves a half-written results file."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".mutate-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=1)
    os.replace(tmp, path)


def summarise(data: dict) -> str:
    rows = ["| module | mutants | killed | survived | timeout | baseline s |", "|---|---|---|---|---|---|"]
    surv = []
    for module, info in data["modules"].items():
        res = info["results"].values()
        n = len(res)
        killed = sum(r["status"] in ("failed",) for r in res)
        tout = sum(r["status"] == "timeout" for r in res)
        survived = [r for r in res if r["status"] == "passed"]
        rows.append(f"| {module} | {n} | {killed + tout} | {len(survived)} | {tout} | "
                    f"{info.get('baseline_s', float('nan')):.0f} |")
        surv += survived
    rows.append("")
    rows.append("survivors:")
    for r in sorted(surv, key=lambda r: (r["module"], r["index"])):
        rows.append(f"  {r['module']}:{r['index']}  line {r['line']}  [{r['op']}] {r['what']}:  {r['source_line']}")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modules", nargs="*", default=list(TESTS), help="modules to mutate (default: every module of TESTS)")
    ap.add_argument("--commit", default="HEAD", help="committed tree to mutate (default HEAD)")
    ap.add_argument("--max-per-module", type=int, default=40, help="random sample size per module (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="seconds per mutant run (at least twice its tests' unmutated run: mutant_timeout); "
                         "over it counts as killed")
    ap.add_argument("--baseline-timeout", type=float, default=None,
                    help="seconds for the unmutated (coverage) run of a module's tests (default 3 x --timeout)")
    ap.add_argument("--guards", action="store_true", help="also mutate validation-only if tests")
    ap.add_argument("--scratch", default="/tmp/mut/tree", help="scratch copy of the tree (recreated)")
    ap.add_argument("--out", default="mutation_results.json")
    ap.add_argument("--only", nargs="*", default=None, help="module:index mutants to (re-)run, ignoring the sample")
    ap.add_argument("--tests-from", default=None,
                    help="copy these test files from the working tree into the copy (new tests not yet committed)")
    ap.add_argument("--tests", nargs="*", default=None,
                    help="run these test files instead of the module's mapped ones (to check new tests kill chosen mutants)")
    ap.add_argument("--select", choices=("all", "coverage"), default="all",
                    help="coverage: run each mutant against only the tests that execute its statement")
    ap.add_argument("--skip-done", action="store_true",
                    help="with --only: skip mutants the results file already holds (resume a long --only list)")
    ap.add_argument("--list", action="store_true", help="print the sampled mutants and exit")
    args = ap.parse_args(argv)
    k = args.max_per_module or None
    baseline_limit = args.baseline_timeout or 3 * args.timeout

    full = export_tree(args.commit, args.scratch)
    tests_from = args.tests_from.split(",") if args.tests_from else []
    for extra in tests_from:
        shutil.copy(os.path.join(REPO, extra), os.path.join(args.scratch, extra))
    only = {}
    for spec in args.only or []:
        mod, idx = spec.rsplit(":", 1)
        only.setdefault(mod, set()).add(int(idx))
    modules = list(only) if only else args.modules

    params = {"commit": full, "seed": args.seed, "max_per_module": k, "guards": args.guards,
              "timeout_s": args.timeout, "python": sys.version.split()[0], "select": args.select}
    data = {"params": params, "modules": {}}
    if os.path.exists(args.out):
        old = json.load(open(args.out))
        if all(old["params"].get(x, "all" if x == "select" else None) == params[x]
               for x in ("commit", "seed", "guards", "select")):
            data = old
            data["params"] = params
    plan = {}
    for module in modules:
        src = open(os.path.join(args.scratch, module)).read()
        allm = list_mutants(module, src, args.guards)
        chosen = [allm[i] for i in sorted(only[module])] if only else sample(allm, k, args.seed)
        plan[module] = (src, allm, chosen)
    if args.list:
        for module, (_, allm, chosen) in plan.items():
            print(f"{module}: {len(chosen)} of {len(allm)} mutants")
            for m in chosen:
                print(f"  {m.index:4d} line {m.line:4d} [{m.op}] {m.what}: {m.source_line}")
        return 0

    check_imports_copy(args.scratch)
    print(f"commit {full}; copy {args.scratch}; imports verified to come from the copy", flush=True)
    for module, (src, allm, chosen) in plan.items():
        info = data["modules"].setdefault(module, {"total_mutants": len(allm), "results": {}})
        info["total_mutants"] = len(allm)
        files = args.tests or test_files(args.scratch, module)
        info["tests"] = files
        path = os.path.join(args.scratch, module)
        contexts, durations = None, None
        if args.select == "coverage":
            # the coverage run doubles as the baseline (slower than a plain run: a safe timeout base);
            # kept in the results file, so a resumed run of the same commit and tests reuses it
            key = {"files": files, "tests_from": _digest(args.scratch, tests_from)}
            contexts, durations, reused = cached_contexts(info, key, lambda: coverage_contexts(
                args.scratch, files, module, baseline_limit))
            if reused:
                print(f"{module}: coverage contexts reused from {args.out}", flush=True)
            save(args.out, data)
        elif "baseline_s" not in info or only:
            status, secs, tail = run_tests(args.scratch, files, baseline_limit)
            if status != "passed":
                print(tail)
                raise SystemExit(f"baseline tests of {module} do not pass unmutated ({status}); fix that first")
            info["baseline_s"] = secs
            save(args.out, data)
        print(f"== {module}: {len(chosen)} of {len(allm)} mutants, baseline {info['baseline_s']:.0f} s, "
              f"tests {' '.join(files)}", flush=True)
        for j, m in enumerate(chosen):
            key = str(m.index)
            if key in info["results"] and (not only or args.skip_done):
                continue
            try:
                with open(path, "w") as fh:
                    fh.write(mutated_source(src, m.index, args.guards))
                _clear_pyc(args.scratch)
                select = selected_tests(contexts, m.span) if contexts is not None else None
                status, secs, tail = run_tests(args.scratch, files,
                                               mutant_timeout(args.timeout, info["baseline_s"],
                                                              select, durations),
                                               select, durations=durations)
            finally:
                with open(path, "w") as fh:
                    fh.write(src)
            diff = "".join(difflib.unified_diff(
                ast.unparse(ast.parse(src)).splitlines(True), mutated_source(src, m.index, args.guards).splitlines(True),
                n=0))
            info["results"][key] = {**asdict(m), "status": status, "seconds": round(secs, 1),
                                    "tests_run": "all" if select is None else len(select),
                                    "diff": diff[-800:], "tail": tail[-600:] if status != "passed" else ""}
            save(args.out, data)
            print(f"  [{j + 1}/{len(chosen)}] {module}:{m.index} line {m.line} [{m.op}] {m.what} -> "
                  f"{'SURVIVED' if status == 'passed' else status} ({secs:.0f} s, "
                  f"{'all' if select is None else len(select)} tests)", flush=True)
    _clear_pyc(args.scratch)
    print(summarise(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
