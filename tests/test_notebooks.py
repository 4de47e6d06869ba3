"""The notebooks in notebooks/ are stored executed, show their figures, and state no typed results.

Two checks per notebook:

* the stored file (what a reader sees on GitHub) has every code cell executed, no errors, an
  image/png output in every cell that shows a figure, and is small enough to review;
* a fresh execution (nbclient, this environment's kernel, MPLBACKEND=Agg as in CI) runs top to
  bottom, including the asserts each notebook makes of its own claims, and again produces the
  figures: with Agg a bare ``plt.show()`` displays nothing, so the notebooks select the inline
  backend themselves.

Markdown cells may only use numbers that are parameters set in the notebook's code (results are
printed by code cells and asserted there), and no cell refers to the old design file; the
theory lives in docs/theory.md.
"""
import os
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
MAX_BYTES = 1_000_000
SHOWS_FIGURE = re.compile(r"plt\.show\(\)|display\(fig")
OLD_DESIGN_REFERENCE = re.compile(r"\.\./shared|DESIGN\.md")   # the theory is docs/theory.md now
NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:e[-+]?\d+)?%?")


def _read(path):
    return nbformat.read(path, as_version=4)


def _code(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def _figure_problems(nb):
    """Code cells that show a figure but have no image/png output, and error outputs."""
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        kinds = [o.output_type for o in cell.outputs]
        if "error" in kinds:
            problems.append(f"cell {i} stores an error")
        pngs = sum("image/png" in o.get("data", {}) for o in cell.outputs)
        if SHOWS_FIGURE.search(cell.source) and pngs == 0:
            problems.append(f"cell {i} shows a figure but has no image/png output")
        for o in cell.outputs:
            if o.output_type == "stream" and "non-interactive" in o.text:
                problems.append(f"cell {i}: {o.text.strip()[:120]}")
    return problems


def _typed_numbers(nb):
    """Numbers in markdown cells that no code cell sets (headings, section references, citation
    years and list numbering aside): a typed result instead of a computed one."""
    code = "\n".join(c.source for c in _code(nb))
    typed = []
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        text = "\n".join(line for line in cell.source.splitlines() if not line.startswith("#"))
        text = re.sub(r"section \d+|\(\d{4}\)|^\s*\d+\.\s", "", text, flags=re.M)  # refs, years, list items
        for num in NUMBER.findall(text):
            if num.endswith("%") or not re.search(rf"(?<![\w.]){re.escape(num)}(?![\w])", code):
                typed.append(num)
    return typed


def test_notebook_names():
    names = {p.name for p in NOTEBOOKS}
    assert {"01_single_shot_tour.ipynb", "02_energy_verification.ipynb", "03_brian2_rate_model.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_notebook_is_executed_with_its_figures(path):
    nb = _read(path)
    assert path.stat().st_size < MAX_BYTES, f"{path.name} is {path.stat().st_size} bytes"
    code = _code(nb)
    assert all(c.execution_count is not None for c in code), f"{path.name} has unexecuted cells"
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "not executed top to bottom"
    assert sum(bool(SHOWS_FIGURE.search(c.source)) for c in code) >= 1
    assert _figure_problems(nb) == []
    assert sum(c.source.count("assert ") for c in code) >= 5, f"{path.name} asserts too little"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_prose_states_no_typed_results(path):
    nb = _read(path)
    assert _typed_numbers(nb) == []
    assert [c.source[:60] for c in nb.cells if OLD_DESIGN_REFERENCE.search(c.source)] == []


def test_typed_number_detector():
    """The detector flags a result typed into markdown and passes a parameter the code sets."""
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# 02 — title\nWe run t_end = 100 (docs/theory.md section 3).\n"
                                      "7. a numbered item"),
        nbformat.v4.new_code_cell("T_END = 100.0\nprint(passed)")])
    assert _typed_numbers(nb) == []
    nb.cells.append(nbformat.v4.new_markdown_cell("32 of 32 networks pass; 75% retrieved; error 1.3e-9"))
    assert _typed_numbers(nb) == ["32", "32", "75%", "1.3e-9"]


def test_figure_detector():
    """A cell that calls plt.show() without a stored image is reported."""
    cell = nbformat.v4.new_code_cell("plt.show()", execution_count=1)
    nb = nbformat.v4.new_notebook(cells=[cell])
    assert _figure_problems(nb) == ["cell 0 shows a figure but has no image/png output"]
    cell.outputs = [nbformat.v4.new_output("display_data", data={"image/png": "iVBOR", "text/plain": "<Figure>"})]
    assert _figure_problems(nb) == []


CELL_TIMEOUT_S = 600


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # the kernel must import this checkout's packages and run this interpreter (a fresh machine has
    # no registered kernelspec; ipykernel's native "python3" kernel uses sys.executable)
    root = str(path.parent.parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    nb = _read(path)
    for cell in _code(nb):
        cell.outputs, cell.execution_count = [], None
    # per-cell limit, against a hung kernel: notebook 02's grid cell takes ~53 s on an idle 2-core
    # machine and ran past 120 s with two other processes on it (a CI run, 2026-12-03)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": root}})
    client.execute()  # raises CellExecutionError on the first failing cell (its asserts included)
    assert _figure_problems(nb) == []
