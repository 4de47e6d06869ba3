"""Capacity figures in the paper's style (Millidge et al. 2022, Figs. 2-5).

One figure per experiment: x = images stored (log scale) or corruption level / threshold,
y = fraction correctly retrieved, one line per similarity / separation, error bars = std over the
disjoint blocks. Functions return a matplotlib Figure and never show it; :func:`save_figure`
writes it atomically. Nothing here selects a backend: scripts and tests set ``MPLBACKEND=Agg``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from uhn.models.atomic import atomic_path
from uhn.models.experiments.capacity import AXES
from uhn.models.experiments.summary import curves, summarise

X_LABELS = {
    "n_memories": "Images stored N",
    "threshold": "Error threshold (sum of squared errors, 784-value scale)",
}
LEVEL_LABELS = {
    "gaussian": "Gaussian noise std",
    "mask_bottom": "Fraction of rows masked (bottom)",
    "mask_top": "Fraction of rows masked (top)",
    "random_pixels": "Probability of masking each pixel",
    "border": "Border fraction masked",
    "none": "Level",
}
TITLES = {
    "similarity_vs_n": "Capacity by similarity function",
    "separation_vs_n": "Capacity by separation function",
    "noise": "Retrieval vs Gaussian noise",
    "mask_fraction": "Retrieval vs fraction masked",
    "random_pixels": "Retrieval vs random pixel masking",
    "border": "Retrieval vs border masking",
    "threshold": "Retrieval vs error threshold",
    "hetero": "Auto- vs heteroassociative capacity",
}


def _describe(rows: Sequence[dict], experiment: str) -> str:
    """Subtitle naming the dataset and every setting shared by all rows (corruption, N, ...)."""
    r0 = rows[0]

    def shared(k):
        return all(r[k] == r0[k] for r in rows)

    parts = [r0["dataset"]]
    x = AXES[experiment][0]
    if x != "level" and shared("corruption") and shared("level"):
        parts.append("probe: none" if r0["corruption"] == "none"
                     else f"probe: {r0['corruption']} {r0['level']:g}")
    elif x == "level" and shared("corruption"):
        parts.append(f"probe: {r0['corruption']}")
    if x != "n_memories" and shared("n_memories"):
        parts.append(f"N = {r0['n_memories']}")
    if experiment != "separation_vs_n" and shared("separation") and shared("sep_param"):
        parts.append(f"separation: {summarise(rows[:1])[0]['separation_label']}")
    if experiment == "separation_vs_n" and shared("similarity"):
        parts.append(f"similarity: {r0['similarity']}")
    if x != "threshold" and shared("threshold"):
        parts.append(f"threshold {r0['threshold']:g}")
    if shared("convention") and r0["convention"] != "standard":
        parts.append(r0["convention"])
    blocks = {r["block"] for r in rows}
    parts.append(f"{len(blocks)} blocks")
    return ", ".join(parts)


def plot_capacity(rows: Sequence[dict], experiment: str, ax=None, title: Optional[str] = None):
    """Fraction correct (mean over blocks, error bars = std) per line of one experiment.

    Parameters
    ----------
    rows : result rows (uhn.models.experiments.capacity.run / load_results) of that experiment.
    experiment : a name of uhn.models.experiments.capacity.AXES; chooses x, the line grouping and the x scale.
    ax : axes to draw in (default: a new figure).
    title : default "<experiment title>" with a subtitle naming dataset and corruption.

    Returns the Figure. Lines are drawn in first-seen order; their y data are the summarised means.
    """
    import matplotlib.pyplot as plt

    if experiment not in AXES:
        raise ValueError(f"unknown experiment {experiment!r}; choose one of {sorted(AXES)}")
    rows = list(rows)
    if not rows:
        raise ValueError("no rows to plot")
    x_param, _, logx = AXES[experiment]
    if ax is None:
        fig, ax = plt.subplots(figsize=(7.0, 5.0))
    else:
        fig = ax.figure
    for label, (x, mean, std) in curves(summarise(rows), experiment).items():
        ax.errorbar(x, mean, yerr=std, marker="o", markersize=4, capsize=3, linewidth=1.6,
                    label=str(label))
    if logx:
        ax.set_xscale("log")
    if x_param == "level":
        kinds = {r["corruption"] for r in rows}
        ax.set_xlabel(LEVEL_LABELS.get(kinds.pop(), "Level") if len(kinds) == 1 else "Level")
    else:
        ax.set_xlabel(X_LABELS[x_param])
    ax.set_ylabel("Fraction correctly retrieved")
    ax.set_ylim(-0.02, 1.05)
    ax.grid(True, alpha=0.3)
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    if experiment == "threshold":
        ax.axvline(50, color="green", linestyle="--", linewidth=1.2, label="paper threshold (50)")
    ax.legend(fontsize=8, frameon=False)
    ax.set_title(title if title is not None
                 else f"{TITLES[experiment]}\n{_describe(rows, experiment)}", fontsize=10)
    fig.tight_layout()
    return fig


#: image formats :func:`save_figure` writes, by file suffix
FIGURE_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg")


def figure_path(path) -> Path:
    """``path`` with .png added when it has no suffix; ValueError naming the path if its suffix is
    not one of :data:`FIGURE_FORMATS` (callers check this before long work, not after it)."""
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".png")
    if path.suffix[1:].lower() not in FIGURE_FORMATS:
        raise ValueError(f"cannot write a figure to {str(path)!r}: unknown image suffix "
                         f"{path.suffix!r}; use one of {', '.join('.' + f for f in FIGURE_FORMATS)}")
    return path


def save_figure(fig, path, pdf: bool = False, dpi: int = 120) -> list[Path]:
    """Write fig in the format its suffix names (PNG when there is none; and a PDF beside it when
    ``pdf``) atomically; return the paths written.

    Each file is drawn into a temporary file in the same folder and moved into place with
    os.replace, so a reader never sees a half-written image. A suffix that is not one of
    :data:`FIGURE_FORMATS` is refused (ValueError) rather than written with the wrong bytes.
    """
    path = figure_path(path)
    fmt = path.suffix[1:].lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    targets = [(path, "jpeg" if fmt == "jpg" else fmt)]
    if pdf and fmt != "pdf":
        targets.append((targets[0][0].with_suffix(".pdf"), "pdf"))
    written = []
    for target, fmt in targets:
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi)
        written.append(target)
    return written


def plot_line_data(fig) -> dict:
    """{label: (x, y)} of the lines drawn by :func:`plot_capacity` (for tests and notebooks)."""
    ax = fig.axes[0]
    out = {}
    for container in ax.containers:
        line = container.lines[0]
        out[container.get_label()] = (np.asarray(line.get_xdata(), float),
                                 np.asarray(line.get_ydata(), float))
    return out
