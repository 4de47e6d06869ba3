"""Sphinx configuration of the universal-hopfield documentation.

Build (from the repository root; CI runs it through tests/test_docs.py):

    python -m sphinx -W --keep-going -b html docs docs/_build/html

Markdown pages (the theory and the docs/*.md notes) are read by myst-parser with dollarmath, so
their $...$ / $$...$$ LaTeX renders with MathJax; the API reference is generated from the
docstrings by autodoc and rendered by numpydoc.
"""
import os
import re
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))

import uhn  # noqa: E402  (installed: pip install -e ".[docs]")

project = "universal-hopfield"
author = "universal-hopfield contributors"
copyright = "2026, " + author
release = version = uhn.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# --- Markdown: LaTeX in $...$ and $$...$$, anchors for ## and ### headings (theory.md#...)
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

# --- API reference from the docstrings
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "none"          # the signatures show them; the docstrings give shapes
autosummary_generate = False
numpydoc_show_class_members = False  # autodoc lists members; numpydoc's stub tables would repeat them
numpydoc_class_members_toctree = False
numpydoc_validation_checks = set()   # render the docstrings, do not lint them (a docstring style guide is not this build's job)
# brian2 is imported inside the functions that need it; jax (the autodiff extra) is mocked so the
# reference builds with the docs extra alone
autodoc_mock_imports = ["jax"]

nitpicky = False   # docstrings name types in prose ("(B, D) array"), not as cross-references

# docs/reproducing.md opens with a level-2 heading (its first line is "## Reproducing the paper");
# Sphinx takes it as the page title all the same, so only that structural note is silenced
suppress_warnings = ["myst.header"]

html_theme = "alabaster"
html_title = "universal-hopfield"
html_static_path = []


# --- plain-text docstrings -> reStructuredText
# The docstrings write their equations as plain text, the way they read in help() and an editor:
# norms and absolute values as |x|, and display equations as an indented block after a blank
# line. reStructuredText would read |x| as a substitution reference and an indented block as a
# (possibly malformed) block quote. This hook, run before numpydoc, turns every indented block of
# prose outside the numpydoc field sections into a literal block (shown as written, monospaced)
# and escapes the bars and unpaired asterisks of the remaining prose. It changes no words.

_FIELD_SECTIONS = {"parameters", "returns", "yields", "receives", "raises", "warns",
                   "other parameters", "attributes", "methods", "see also"}
_INLINE_LITERAL = re.compile(r"(``.+?``|`[^`]+`)")


def _indent(line):
    return len(line) - len(line.lstrip())


def _escape_prose(line):
    """Escape | everywhere and a lone * in one line of prose, leaving inline literals alone."""
    parts = _INLINE_LITERAL.split(line)
    for k in range(0, len(parts), 2):        # even parts are outside ``...`` and `...`
        parts[k] = parts[k].replace("|", "\\|")
    text = "".join(parts)
    bullet = re.match(r"\s*\* ", text)       # a list item's marker is no emphasis
    head, body = (text[:bullet.end()], text[bullet.end():]) if bullet else ("", text)
    parts = _INLINE_LITERAL.split(body)
    if "".join(parts[0::2]).count("*") == 1:  # unpaired: emphasis without an end, e.g. (n, *shape)
        parts = [p.replace("*", "\\*") if k % 2 == 0 else p for k, p in enumerate(parts)]
    return head + "".join(parts)


_LIST_MARKER = re.compile(r"(\d+[.)]|[*+-]) +")


def _context_indent(lines, i):
    """Indentation of the text of the paragraph before line i (a list item's text, not its marker)."""
    j = i - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    if j < 0:
        return 0
    while j > 0 and lines[j - 1].strip():
        j -= 1                                # first line of that paragraph
    first = lines[j]
    marker = _LIST_MARKER.match(first.lstrip())
    return _indent(first) + (marker.end() if marker else 0)


def plain_text_docstring(lines):
    """Rewrite docstring ``lines`` in place (see the comment above)."""
    out = []
    section = None
    i, n = 0, len(lines)
    while i < n:
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < n else ""
        if line.strip() and set(nxt.strip()) == {"-"} and len(nxt.strip()) >= 3:
            section = line.strip().lower()   # a numpydoc section header and its underline
            out += [line, nxt]
            i += 2
            continue
        prose = section not in _FIELD_SECTIONS
        if (prose and line.strip() and i > 0 and not lines[i - 1].strip()
                and _indent(line) > _context_indent(lines, i)):
            # an indented display after a blank line: make it a literal block, introduced by the
            # previous non-blank line ("text:" -> "text::", else "text ::", which prints nothing)
            j = len(out) - 1
            while j >= 0 and not out[j].strip():
                j -= 1
            if j < 0 or set(out[j].strip()) == {"-"}:   # nothing before it, or a section underline
                out += ["::", ""]
            elif not out[j].rstrip().endswith("::"):
                prev = out[j].rstrip()
                out[j] = prev + ":" if prev.endswith(":") else prev + " ::"
            block = _indent(line)
            while i < n and (not lines[i].strip() or _indent(lines[i]) >= block):
                out.append(lines[i])
                i += 1
            continue
        out.append(_escape_prose(line))
        i += 1
    lines[:] = out


def _process_docstring(app, what, name, obj, options, lines):
    plain_text_docstring(lines)


def setup(app):
    # priority < 500: runs before numpydoc's own handler, on the docstring as written
    app.connect("autodoc-process-docstring", _process_docstring, priority=400)
