"""Tests that keep the documentation honest.

* No tracked file sends the reader outside the repository: the mathematical contract is
  docs/theory.md, and a clone has nothing beside it.
* docs/performance.md is written by benchmarks/write_performance.py; CITATION.cff matches the
  package (README.md's code blocks: tests/test_readme.py).
* docs/theory.md exists, every "docs/theory.md section N" cited in a tracked file is one of its
  numbered headings, and the constants it quotes are the code's.
* The Sphinx build (API reference + theory + docs pages) passes with warnings as errors, and the
  docstring hook of docs/conf.py turns plain-text math into valid reStructuredText.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THEORY = ROOT / "docs" / "theory.md"

# built from parts so that this file does not itself contain the strings it forbids
OUTSIDE_REFERENCES = ("../" + "shared", "DESIGN" + ".md")


def tracked_files() -> list[Path]:
    """Files git tracks in this checkout; skip the test when this is not a git checkout."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout (or git is not installed): no list of tracked files")
    names = [n for n in out.stdout.decode("utf-8", "surrogateescape").split("\0") if n]
    return [ROOT / n for n in names if (ROOT / n).is_file()]


def mentions(needle: str) -> list[str]:
    """'path:line: text' for every line of a tracked file that contains ``needle``."""
    hits = []
    for path in tracked_files():
        data = path.read_bytes()
        if needle.encode() not in data:
            continue
        for k, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            if needle in line:
                hits.append(f"{path.relative_to(ROOT)}:{k}: {line.strip()[:120]}")
    return hits


@pytest.mark.parametrize("needle", OUTSIDE_REFERENCES)
def test_no_tracked_file_points_outside_the_repository(needle):
    hits = mentions(needle)
    assert not hits, (f"{len(hits)} line(s) of tracked files mention {needle!r}, which a clone does "
                      f"not have; cite docs/theory.md (e.g. 'docs/theory.md section 2') instead:\n"
                      + "\n".join(hits))


# ------------------------------------------------------------------------------- performance
def test_performance_page_is_written_by_its_script():
    """docs/performance.md is what benchmarks/write_performance.py writes from benchmarks/output/
    (so every number on it is one a benchmark printed); a hand edit or a stale page fails here."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "write_performance.py"), "--check"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_performance_script_records_verbatim_output(tmp_path):
    """--record saves a command's printed lines under a header, and the page quotes them."""
    (tmp_path / "out").mkdir()
    doc = tmp_path / "performance.md"
    script = ROOT / "benchmarks" / "write_performance.py"
    cmd = f"{sys.executable} -c \"print('one reading: 1.25x')\" # fake_bench.py"
    proc = subprocess.run([sys.executable, str(script), "--record", cmd, "--conditions", "a test",
                           "--outputs", str(tmp_path / "out"), "--doc", str(doc)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    saved = (tmp_path / "out" / "fake_bench.txt").read_text(encoding="utf-8").splitlines()
    assert saved[0] == f"# command: {cmd}" and "# conditions: a test" in saved
    assert saved[-1] == "one reading: 1.25x"
    text = doc.read_text(encoding="utf-8")
    assert "## fake_bench" in text and "one reading: 1.25x" in text and "verbatim" in text


# ------------------------------------------------------------------------------------ citation
def test_citation_file_matches_the_package():
    """CITATION.cff is valid CFF 1.2.0 for this version and cites both papers."""
    import uhn

    text = (ROOT / "CITATION.cff").read_text(encoding="utf-8")
    try:
        import yaml
    except ImportError:                  # pyyaml is not a dependency: check the few top-level keys
        top = dict(re.findall(r"^([\w-]+):[ \t]*(.*)$", text, flags=re.M))
        data = {k: v.strip().strip("\"'") for k, v in top.items()}
        refs = text
    else:
        data = yaml.safe_load(text)
        refs = " ".join(str(r.get("title", "")) for r in
                        [data.get("preferred-citation", {})] + list(data.get("references", [])))
    assert str(data["cff-version"]) == "1.2.0"
    assert data["title"] == "universal-hopfield"
    assert str(data["version"]) == uhn.__version__, "CITATION.cff's version is not uhn.__version__"
    assert data["license"] == "MIT"
    assert "Universal Hopfield Networks" in refs and "Large Associative Memory Problem" in refs
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").startswith("MIT License")


# ------------------------------------------------------------------------------------ theory
def theory_text() -> str:
    assert THEORY.is_file(), "docs/theory.md, the mathematical contract, is missing"
    return THEORY.read_text(encoding="utf-8")


def theory_sections() -> dict[int, str]:
    """{N: title} of the '## N. title' headings of docs/theory.md."""
    return {int(m.group(1)): m.group(2).strip()
            for m in re.finditer(r"^## (\d+)\. (.+)$", theory_text(), flags=re.M)}


def test_theory_covers_the_contract():
    titles = " | ".join(theory_sections().values()).lower()
    for topic in ("single-shot", "two-layer", "energy", "adiabatic", "fixed points", "integrators",
                  "verification", "brian2", "non-smooth"):
        assert topic in titles, f"docs/theory.md has no section heading about {topic!r}: {titles}"


# "docs/theory.md section 3", "theory.md sections 2 and 5", "theory.md sections 2-4", "§ 6"
_CITE = re.compile(r"theory\.md(?:,)?\s+(?:sections?|§)\s*(\d+(?:\s*(?:,|and|-|to)\s*\d+)*)")


def cited_sections() -> dict[int, list[str]]:
    cites: dict[int, list[str]] = {}
    for path in tracked_files():
        if path.suffix not in (".py", ".md", ".ipynb", ".rst", ".txt") or path == THEORY:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for m in _CITE.finditer(text):
            spec = m.group(1)
            nums = [int(x) for x in re.findall(r"\d+", spec)]
            if re.search(r"\d\s*(?:-|to)\s*\d", spec):
                nums = list(range(nums[0], nums[-1] + 1))
            for n in nums:
                cites.setdefault(n, []).append(str(path.relative_to(ROOT)))
    return cites


def test_cited_theory_sections_exist():
    sections = theory_sections()
    missing = {n: where for n, where in cited_sections().items() if n not in sections}
    assert not missing, (f"files cite sections of docs/theory.md that it does not have "
                         f"(it has {sorted(sections)}): {missing}")


def test_theory_anchor_links_resolve():
    """Links 'theory.md#anchor' from tracked Markdown files name a heading of docs/theory.md
    (myst/GitHub slugs: lower case, punctuation dropped, spaces to hyphens)."""
    heads = re.findall(r"^#{1,6} (.+)$", theory_text(), flags=re.M)
    slugs = {re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", h.strip().lower())) for h in heads}
    bad = []
    for path in tracked_files():
        if path.suffix != ".md":
            continue
        for anchor in re.findall(r"theory\.md#([\w-]+)", path.read_text(encoding="utf-8")):
            if anchor not in slugs:
                bad.append(f"{path.relative_to(ROOT)}: #{anchor}")
    assert not bad, f"anchors into docs/theory.md that name no heading: {bad}"


def test_theory_quotes_the_codes_constants():
    """Numbers the theory states are read from the code, so a change of either shows up here."""
    from uhn.dynamics.solvers import dormand_prince as dopri
    from uhn.dynamics import integrate as integ
    from uhn.dynamics.backends import brian2_rate as b2b
    from uhn.models import similarity as sim
    import inspect

    text = theory_text()
    # the stopping rule: |dy_i/dt| <= tol + NOISE_FACTOR (atol + rtol |y_i|) / tau_i, tol = 1e-8
    assert integ.NOISE_FACTOR == 30.0
    assert r"\mathrm{tol} + 30\, \frac{\mathrm{atol} + \mathrm{rtol}\, \lvert y_i \rvert}{\tau_i}" in text
    assert inspect.signature(integ.integrate).parameters["fixed_point_tol"].default == 1e-8
    assert "`fixed_point_tol` (default $10^{-8}$)" in text
    # the step-size controller of the batched Dormand-Prince pair
    assert (dopri.SAFETY, dopri.MIN_FACTOR, dopri.MAX_FACTOR) == (0.9, 0.2, 10.0)
    assert r"h \min(10, 0.9\, \mathrm{err}^{-1/5})" in text
    assert r"h \max(0.2, 0.9\, \mathrm{err}^{-1/5})" in text
    # KL smoothing and the paper_code reciprocal floor
    assert sim.KL_EPS == 1e-4 and r"$\varepsilon = 10^{-4}$ (`KL_EPS`)" in text
    assert sim.RECIPROCAL_FLOOR == 1e-12 and r"10^{-12}" in text
    # brian2: how far beta h may rise above the running softmax shift in one step before exp overflows
    assert b2b._EXP_OVER == 709.0 and "some $\\beta h_\\mu$ ends a step more than 709 above $c$" in text


# ------------------------------------------------------------------------------------ Sphinx
def test_api_reference_lists_every_module():
    """docs/api/*.rst has one automodule per module of the package (tools/import_graph.py's list;
    `python -m uhn`'s __main__ aside), and names none that does not exist."""
    spec = importlib.util.spec_from_file_location("import_graph_tool", ROOT / "tools" / "import_graph.py")
    graph = importlib.util.module_from_spec(spec)
    sys.modules["import_graph_tool"] = graph
    spec.loader.exec_module(graph)
    modules = set(graph.modules(str(ROOT))) - {"uhn.__main__"}
    documented = set()
    for rst in (ROOT / "docs" / "api").glob("*.rst"):
        documented |= set(re.findall(r"^\.\. automodule:: (\S+)$", rst.read_text(encoding="utf-8"), flags=re.M))
    assert not modules - documented, f"modules without an API page entry: {sorted(modules - documented)}"
    assert not documented - modules, f"API entries for modules that do not exist: {sorted(documented - modules)}"


def test_every_docs_page_is_in_the_toctree():
    """Each docs/*.md page is reachable from docs/index.md's toctree (Sphinx would only warn)."""
    index = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    toctree = re.search(r"```\{toctree\}\n(.*?)```", index, flags=re.S).group(1)
    entries = {line.strip() for line in toctree.splitlines() if line.strip() and not line.startswith(":")}
    pages = {p.stem for p in (ROOT / "docs").glob("*.md")} - {"index"}
    assert pages <= entries, f"docs pages missing from the toctree: {sorted(pages - entries)}"


def _sphinx_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("sphinx", "myst_parser", "numpydoc"))


needs_sphinx = pytest.mark.skipif(not _sphinx_available(),
                                  reason="sphinx, myst-parser or numpydoc not installed (pip install -e '.[docs]')")


def load_conf():
    spec = importlib.util.spec_from_file_location("uhn_docs_conf", ROOT / "docs" / "conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    return conf


def rst_problems(rst: str) -> list[str]:
    """docutils system messages (level >= WARNING) of a reStructuredText fragment."""
    from docutils.core import publish_doctree

    doctree = publish_doctree(rst, settings_overrides={"report_level": 5, "halt_level": 5})
    return [m.astext() for m in doctree.findall()
            if m.tagname == "system_message" and m["level"] >= 2]


@needs_sphinx
def test_plain_text_docstring_hook_gives_valid_rst():
    conf = load_conf()
    raw = ["Energy E = |v|^2 / 2 of a state (n, *shape), see ``a|b`` and `x|y`.",
           "",
           "    tau dv/dt = -v + |I|     (the display, kept as written)",
           "        indented deeper",
           "",
           "* a list item with |x|",
           "  and a continuation",
           "",
           "1. an item introducing a display:",
           "",
           "       E''' = |s|",
           "",
           "   more text of the item with |y|.",
           "",
           "Parameters",
           "----------",
           "x : (B, D) array",
           "    |x| must be finite."]
    assert rst_problems("\n".join(raw)), "the raw text must be invalid rst, else this test shows nothing"
    lines = list(raw)
    conf.plain_text_docstring(lines)
    assert rst_problems("\n".join(lines)) == []
    assert lines[0] == r"Energy E = \|v\|^2 / 2 of a state (n, \*shape), see ``a|b`` and `x|y`. ::"
    assert lines[2:4] == raw[2:4]                       # the display is untouched (literal block)
    assert lines[5] == r"* a list item with \|x\|"     # the bullet stays a bullet
    assert lines[8] == "1. an item introducing a display::"
    assert lines[10] == raw[10]
    assert lines[12] == r"   more text of the item with \|y\|."
    assert lines[-1] == r"    \|x\| must be finite."


@needs_sphinx
def test_sphinx_build_has_no_warnings(tmp_path):
    """The CI command of the API reference, ``python -m sphinx -W --keep-going -b html docs
    docs/_build/html``, into a temporary directory."""
    out = tmp_path / "html"
    env = dict(os.environ, MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                           "-d", str(tmp_path / "doctrees"), "docs", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"sphinx build failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-8000:]}"
    for page in ("index.html", "theory.html", "api/models.html", "api/dynamics.html"):
        assert (out / page).is_file(), f"{page} was not built"
    api = (out / "api" / "dynamics.html").read_text(encoding="utf-8")
    for name in ("uhn.dynamics.network.Network", "uhn.dynamics.integrate.integrate",
                 "uhn.dynamics.analysis.energy.verify_energy", "uhn.dynamics.backends.brian2_rate.run_brian2"):
        assert f'id="{name}"' in api, f"the API reference has no entry for {name}"
    theory = (out / "theory.html").read_text(encoding="utf-8")
    assert 'class="math' in theory and "$$" not in theory, "theory.md math was not rendered"
