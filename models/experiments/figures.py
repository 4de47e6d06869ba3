"""The capacity figures: which experiment each figure draws, the small ``--quick`` grids, and the
pipeline experiment -> results store -> figure that ``uhn capacity`` and ``uhn figures`` run.

It runs experiments (uhn.models.experiments.capacity.run) as well as drawing them
(uhn.models.plotting), so it lives with the experiments, above both.
"""
from __future__ import annotations

import inspect
from pathlib import Path

#: the default results store of the capacity experiments
DEFAULT_RESULTS = Path("results") / "capacity.jsonl"

#: smaller grids for ``quick`` (seconds instead of a minute): 2 blocks, 4 N, 3 levels
QUICK = {"blocks": 2, "n_memories": (2, 10, 50, 100), "levels": (0.1, 0.5, 0.9),
         "noise_levels": (0.1, 0.5, 1.0), "thresholds": (10.0, 50.0, 100.0)}

#: the capacity figures ``uhn figures`` regenerates: (file stem, experiment, keyword overrides)
FIGURES = (
    ("capacity_similarity_mnist", "similarity_vs_n", {"dataset": "mnist"}),
    ("capacity_similarity_mnist_halved", "similarity_vs_n",
     {"dataset": "mnist", "corruption": "mask_bottom", "level": 0.5}),
    ("capacity_similarity_natural", "similarity_vs_n", {"dataset": "natural"}),
    ("capacity_separation_mnist", "separation_vs_n", {"dataset": "mnist"}),
    ("capacity_separation_natural", "separation_vs_n", {"dataset": "natural"}),
    ("capacity_noise_mnist", "noise", {"dataset": "mnist"}),
    ("capacity_mask_fraction_mnist", "mask_fraction", {"dataset": "mnist"}),
    ("capacity_random_pixels_mnist", "random_pixels", {"dataset": "mnist"}),
    ("capacity_border_mnist", "border", {"dataset": "mnist"}),
    ("capacity_threshold_mnist", "threshold", {"dataset": "mnist"}),
    ("capacity_hetero_mnist", "hetero", {"dataset": "mnist"}),
)


def experiment_kwargs(name: str, quick: bool = False, **overrides) -> dict:
    """Keyword arguments for uhn.models.experiments.capacity.EXPERIMENTS[name]: the :data:`QUICK`
    grids, then overrides (None values dropped, parameters the experiment does not take ignored)."""
    from uhn.models.experiments.capacity import EXPERIMENTS
    accepted = inspect.signature(EXPERIMENTS[name]).parameters
    kw = {}
    if quick:
        kw["blocks"] = QUICK["blocks"]
        if name in ("similarity_vs_n", "separation_vs_n", "hetero"):
            kw["n_memories"] = QUICK["n_memories"]
        if name in ("mask_fraction", "random_pixels", "border"):
            kw["levels"] = QUICK["levels"]
        if name == "noise":
            kw["levels"] = QUICK["noise_levels"]
        if name == "threshold":
            kw["thresholds"] = QUICK["thresholds"]
    for k, v in overrides.items():
        if v is None or k not in accepted:
            continue
        if k == "n_memories" and name not in ("similarity_vs_n", "separation_vs_n", "hetero"):
            v = v[0] if isinstance(v, (list, tuple)) else v
        kw[k] = v
    return kw


def figure_stem(name: str, dataset: str) -> str:
    """File stem of an experiment's figure: ``capacity_<experiment>_<dataset>``."""
    return f"capacity_{name}_{dataset}"


def run_experiment(name: str, kwargs: dict, out: Path, resume: bool = True, progress=None,
                   figure: Path | None = None, pdf: bool = False, engine="local"):
    """Points of one experiment -> stored rows -> optional figure. Returns (rows, figure paths).
    ``engine``: "local" or a distributed.Client (uhn.models.experiments.sweep.connect)."""
    from uhn.models.experiments.capacity import experiment, run
    points = experiment(name, **kwargs)
    rows = run(points, out, resume=resume, progress=progress, engine=engine)
    written = []
    if figure is not None:
        import matplotlib.pyplot as plt

        from uhn.models.plotting import plot_capacity, save_figure
        fig = plot_capacity(rows, name)
        try:
            written = save_figure(fig, figure, pdf=pdf)
        finally:
            plt.close(fig)
    return rows, written


def make_capacity_figures(out_dir, quick: bool = False, progress_bar=None, results_path=None,
                          pdf: bool = False) -> list[Path]:
    """Regenerate every capacity figure of :data:`FIGURES` into out_dir; return the paths written.

    Results are kept in ``results_path`` (default :data:`DEFAULT_RESULTS`, or
    results/capacity_quick.jsonl with ``quick``), so a second call only replots.
    ``progress_bar(desc) -> (progress, close)`` makes one progress callback per figure (each
    experiment has its own number of points), e.g. uhn.cli.capacity_progress_bar; ``progress``
    is passed to uhn.models.experiments.capacity.run as ``progress(done, total, row, computed)``.
    """
    out_dir = Path(out_dir)
    if results_path is None:
        results_path = DEFAULT_RESULTS.with_name("capacity_quick.jsonl") if quick else DEFAULT_RESULTS
    written = []
    for stem, name, overrides in FIGURES:
        kw = experiment_kwargs(name, quick=quick, **overrides)
        cb, close = progress_bar(stem) if progress_bar is not None else (None, None)
        try:
            _, paths = run_experiment(name, kw, Path(results_path), progress=cb,
                                      figure=out_dir / f"{stem}.png", pdf=pdf)
        finally:
            if close is not None:
                close()
        written.extend(paths)
    return written
