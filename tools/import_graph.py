"""The import graph of the `uhn` package, read from its source (nothing is imported).

    python tools/import_graph.py          # cycles, private names used across modules, lines per module

Folders map to modules as pyproject.toml installs them: uhn/ is `uhn`, models/ is `uhn.models`,
dynamics/ is `uhn.dynamics`. Every import counts, the lazy ones inside functions too: a circle closed
by a function-level import is still a circle for the reader. tests/test_architecture.py asserts the
rules below on the same functions.

Rules read here:
- an edge A -> B is any `import B` / `from B import x` in A (relative imports resolved); an import of
  a package `__init__` that re-exports a name counts as an edge to the package;
- a private name is one that starts with a single underscore; importing one from another module, or
  reading `obj._name` of an object that is not `self` / `cls`, is a cross-module private use.
"""
from __future__ import annotations

import ast
import os
import sys
from collections import defaultdict

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
PACKAGE_DIRS = {"uhn": "uhn", "uhn.models": "models", "uhn.dynamics": "dynamics"}


def modules(root: str = ROOT) -> dict[str, str]:
    """Map every module name of the package to its file."""
    out = {}
    for pkg, folder in PACKAGE_DIRS.items():
        base = os.path.join(root, folder)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__")))
            rel = os.path.relpath(dirpath, base)
            prefix = pkg if rel == "." else pkg + "." + rel.replace(os.sep, ".")
            for f in sorted(filenames):
                if not f.endswith(".py"):
                    continue
                name = prefix if f == "__init__.py" else prefix + "." + f[:-3]
                out[name] = os.path.join(dirpath, f)
    return out


def package_folders(root: str = ROOT) -> dict[str, str]:
    """Map every package (a folder holding __init__.py) to its folder."""
    return {name: os.path.dirname(path) for name, path in modules(root).items()
            if path.endswith("__init__.py")}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(mods: dict[str, str]) -> list[tuple[str, str, str | None, int]]:
    """Every import inside the package: (importer, imported module, imported name or None, line)."""
    out = []
    for mod, path in mods.items():
        tree = ast.parse(open(path, encoding="utf-8").read(), path)
        is_pkg = path.endswith("__init__.py")
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name == "uhn" or a.name.startswith("uhn."):
                        out.append((mod, a.name, None, node.lineno))
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(mod, is_pkg, node)
                if target != "uhn" and not target.startswith("uhn."):
                    continue
                for a in node.names:
                    sub = target + "." + a.name
                    if sub in mods:           # `from uhn.dynamics import network`
                        out.append((mod, sub, None, node.lineno))
                    else:
                        out.append((mod, target, a.name, node.lineno))
    return out


def edges(mods: dict[str, str]) -> dict[str, set[str]]:
    """Module -> the package modules it imports (a package's __init__ does not import its parent)."""
    graph = defaultdict(set)
    for mod, target, _, _ in imports(mods):
        if target in mods and target != mod:
            graph[mod].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for v in sorted(set(graph) | {w for ws in graph.values() for w in ws}):
        if v not in index:
            visit(v)
    return out


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_uses(mods: dict[str, str]) -> list[str]:
    """Private names a module takes from another: imported, or read as `obj._name`."""
    out = []
    for mod, target, name, line in imports(mods):
        if name is not None and _private(name) and target != mod:
            out.append(f"{mods[mod]}:{line}: imports {target}.{name}")
    for mod, path in mods.items():
        tree = ast.parse(open(path, encoding="utf-8").read(), path)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and _private(node.attr)
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                out.append(f"{path}:{node.lineno}: reads ._{node.attr[1:]} of "
                           f"{ast.unparse(node.value)}")
    return out


def lines(mods: dict[str, str]) -> dict[str, int]:
    """Lines per module."""
    return {m: sum(1 for _ in open(p, encoding="utf-8")) for m, p in mods.items()}


def main() -> int:
    mods = modules()
    cyc = cycles(edges(mods))
    priv = private_uses(mods)
    n = lines(mods)
    print(f"{len(mods)} modules, {sum(n.values())} lines")
    print(f"import cycles: {len(cyc)}")
    for c in cyc:
        print("  " + " <-> ".join(c))
    print(f"private names used across modules: {len(priv)}")
    for p in priv:
        print("  " + os.path.relpath(p, ROOT))
    print("largest modules:")
    for m, k in sorted(n.items(), key=lambda kv: -kv[1])[:8]:
        print(f"  {k:5d}  {m}")
    return 1 if cyc or priv else 0


if __name__ == "__main__":
    sys.exit(main())
