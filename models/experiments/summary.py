"""Capacity rows summarised: mean and std over blocks per curve point, curves per line, tables.

Reads the rows of uhn.models.experiments.capacity.run (or of the results store,
uhn.models.experiments.store.load_results) of one named experiment (its axes:
uhn.models.experiments.capacity.AXES).
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

from uhn.models.experiments.capacity import AXES, PARAM_NAMES, Point


def _label(row: dict, param: str):
    """Line label: the parameter's value, similarities under paper_code marked as such."""
    if param == "separation_label" and param not in row:
        return Point.from_row(row).separation_label
    if param == "association":
        return f"{similarity_label(row)} {row['associative']}"
    if param == "similarity":
        return similarity_label(row)
    return row[param]


def similarity_label(row: dict) -> str:
    """``dot`` or, under the paper_code convention, ``dot [paper_code]``."""
    return row["similarity"] + (" [paper_code]" if row["convention"] == "paper_code" else "")


def summarise(rows: Iterable[dict]) -> list[dict]:
    """Mean and std (ddof=0, as the paper's np.std) of fraction_correct over blocks.

    Rows are grouped by every parameter except ``block``; each summary holds those parameters,
    ``separation_label``, ``mean``, ``std``, ``n_blocks``, ``blocks`` and ``errors`` (blocks that
    raised; they count as NaN and are left out of mean and std). Groups keep first-seen order.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        gk = tuple((n, r[n]) for n in PARAM_NAMES if n != "block")
        groups.setdefault(gk, []).append(r)
    out = []
    for gk, rs in groups.items():
        vals = np.array([r["fraction_correct"] if r["fraction_correct"] is not None else np.nan
                         for r in rs], dtype=float)
        ok = np.isfinite(vals)
        s = dict(gk)
        s["separation_label"] = Point.from_row(rs[0]).separation_label
        s.update(mean=float(vals[ok].mean()) if ok.any() else math.nan,
                 std=float(vals[ok].std()) if ok.any() else math.nan,
                 n_blocks=int(ok.sum()), blocks=sorted(int(r["block"]) for r in rs),
                 errors=sorted({r["error"] for r in rs if r.get("error")}))
        out.append(s)
    return out


def curves(summaries: Sequence[dict], experiment_name: str) -> dict:
    """{line label: (x array, mean array, std array)} for an experiment's summaries, x sorted."""
    x_param, line_param, _ = AXES[experiment_name]
    lines: dict = {}
    for s in summaries:
        lines.setdefault(_label(s, line_param), []).append((s[x_param], s["mean"], s["std"]))
    return {k: tuple(np.array(c) for c in zip(*sorted(v))) for k, v in lines.items()}


def table(summaries: Sequence[dict], experiment_name: str) -> tuple[list, list, list]:
    """(x values, line labels, rows of means) for printing a summary table."""
    cs = curves(summaries, experiment_name)
    xs = sorted({float(x) for x, _, _ in cs.values() for x in x})
    labels = list(cs)
    grid = []
    for x in xs:
        row = []
        for lab in labels:
            cx, m, _ = cs[lab]
            hit = np.flatnonzero(np.isclose(cx.astype(float), x))
            row.append(float(m[hit[0]]) if hit.size else math.nan)
        grid.append(row)
    return xs, labels, grid
