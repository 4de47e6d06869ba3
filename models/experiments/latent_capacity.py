"""Capacity in latent space: the similarity-vs-N curve of the paper (docs/theory.md section 10) in
pixel space beside PCA latent spaces of width k (uhn.models.latent, docs/latent.md).

One measurement (:func:`evaluate`, one :class:`LatentPoint`):

1. the problem of the pixel-space protocol, unchanged (uhn.models.experiments.capacity.problem):
   block b of N shuffled images stored, each corrupted into a query with the same seeded draw;
2. a PCA fitted on the stored block itself (``fit="stored"``: the encoder sees the memories, not
   the corrupted queries) or on every other image of the dataset (``fit="heldout"``), of width
   k_used = min(k, rank) (a PCA of N images has rank <= N - 1); ``k=None`` is pixel space;
3. memories and queries encoded, all N queries retrieved as one batch in latent space with
   uhn.models.memory.Memory, the retrieved codes decoded;
4. three fractions of the N queries, each judged in pixel space on the decoded output z_mu:
   ``fraction_correct``: sum_i (x_mu,i - z_mu,i)^2 <= threshold D / 784 against the stored image
   x_mu, exactly the pixel-space criterion (capacity.evaluate); ``fraction_correct_projected``:
   the same threshold against the target's own reconstruction dec(enc(x_mu)) (what a rank-k code
   can return at best); ``fraction_nearest``: of the decoded memories dec(enc(x_nu)) (the stored
   images themselves in pixel space), the one nearest to z_mu (euclidean) is the target's own,
   nu = mu: the right memory was retrieved (no threshold; under max separation, the argmax).

:func:`latent_vs_n` builds the grid, :func:`run` measures it into the resumable results store
through uhn.models.experiments.sweep, :func:`summarise` / :func:`capacity_table` summarise it and
:func:`plot_latent_capacity` / :func:`make_latent_figures` draw it.
"""
from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from uhn.models.experiments import capacity
from uhn.models.validation import int_param

#: revision of :func:`evaluate`'s protocol; part of every key
PROTOCOL = 1
#: latent widths of the experiment (None = pixel space)
LATENT_KS = (16, 64, 256)
#: N of the curve: the paper's, then up to all 5,000 shipped MNIST digits (fewer blocks there)
LATENT_N = capacity.PAPER_N + (2000, 5000)
#: the two probes: Gaussian noise std 0.5 (the paper's sweep) and the halved image
PROBES = (("gaussian", 0.5), ("mask_bottom", 0.5))
#: where the encoder is fitted
FITS = ("stored", "heldout")
#: the measures of a row (fractions of the block's queries)
MEASURES = ("fraction_correct", "fraction_correct_projected", "fraction_nearest")
#: the default results store
DEFAULT_RESULTS = Path("results") / "latent_capacity.jsonl"


@dataclass(frozen=True)
class LatentPoint:
    """Every parameter of one latent-capacity measurement (one block of one curve point): the
    fields of uhn.models.experiments.capacity.Point (autoassociative), plus ``k`` (latent width,
    None for pixel space) and ``fit`` (``stored`` or ``heldout``; None in pixel space)."""

    dataset: str = "mnist"
    n_memories: int = 100
    similarity: str = "euclidean"
    convention: str = "standard"
    separation: str = "max"
    sep_param: Optional[float] = None
    corruption: str = "gaussian"
    level: float = 0.5
    threshold: float = capacity.PAPER_THRESHOLD
    threshold_scaling: str = "per_value"
    k: Optional[int] = None
    fit: Optional[str] = None
    block: int = 0
    seed: int = 0

    def __post_init__(self):
        self.capacity_point()   # the shared fields' checks (N, block, seed, level, threshold, ...)
        if self.k is None:
            if self.fit is not None:
                raise ValueError(f"fit={self.fit!r} needs a latent width k; pixel space has no encoder")
        else:
            object.__setattr__(self, "k", int_param(self.k, "latent k", low=1))
            if self.fit not in FITS:
                raise ValueError(f"fit must be one of {FITS} for a latent space, got {self.fit!r}")
        for name in ("n_memories", "block", "seed"):
            object.__setattr__(self, name, int(getattr(self, name)))
        object.__setattr__(self, "level", float(self.level))
        object.__setattr__(self, "threshold", float(self.threshold))
        if self.sep_param is not None:
            object.__setattr__(self, "sep_param", float(self.sep_param))

    def capacity_point(self) -> "capacity.Point":
        """The pixel-space Point with the same problem and retrieval parameters."""
        return capacity.Point(**{f.name: getattr(self, f.name) for f in fields(capacity.Point)
                                 if f.name != "associative"})

    @property
    def space(self) -> str:
        """Line label: ``pixel``, ``k=64`` or ``k=64 heldout``."""
        if self.k is None:
            return "pixel"
        return f"k={self.k}" + ("" if self.fit == "stored" else f" {self.fit}")

    def params(self) -> dict:
        return asdict(self)

    def key(self) -> str:
        return json.dumps({"experiment": "latent_capacity", "protocol": PROTOCOL, **self.params()},
                          sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_row(cls, row: dict) -> "LatentPoint":
        return cls(**{f.name: row[f.name] for f in fields(cls)})


PARAM_NAMES = tuple(f.name for f in fields(LatentPoint))


def validate(point: LatentPoint) -> None:
    """ValueError for a point that can never be measured (capacity.validate's checks; a held-out
    fit of a block that leaves no other image)."""
    capacity.validate(point.capacity_point())
    if point.fit == "heldout" and point.n_memories >= capacity.available_images(point.dataset):
        raise ValueError(f"fit='heldout' with N = {point.n_memories} leaves no image of dataset "
                         f"{point.dataset!r} outside the block to fit the PCA on")


@functools.lru_cache(maxsize=2)
def _images(dataset: str, seed: int) -> np.ndarray:
    """The shuffled images capacity.problem cuts its blocks from (read-only)."""
    from uhn.models.data import load_dataset
    X = load_dataset(dataset, seed=seed).X
    X.setflags(write=False)
    return X


@functools.lru_cache(maxsize=4)
def _full_pca(dataset: str, seed: int, block: int, n: int, fit: str):
    """Every PCA axis of the fitting set of block ``block`` of n images (one SVD serves every k):
    the block itself (``stored``) or every other image (``heldout``)."""
    from uhn.models.latent import PCA
    X = _images(dataset, seed)
    inside = np.arange(block * n, (block + 1) * n)
    return PCA.fit(X[inside] if fit == "stored" else np.delete(X, inside, axis=0))


def encoder(point: LatentPoint):
    """The fitted PCA of a latent point, of width min(k, rank of its fitting set)."""
    full = _full_pca(point.dataset, point.seed, point.block, point.n_memories, point.fit)
    return full.truncate(min(point.k, full.k))


def _separation(point: LatentPoint):
    from uhn.models.separation import get_separation
    if point.sep_param is None:
        return get_separation(point.separation)
    return get_separation(point.separation,
                          **{capacity.SEP_PARAM_NAMES[point.separation]: point.sep_param})


def _retrieve(mem, Q):
    """Retrieve a batch; if it raises, query by query, failures as None rows (counted wrong)."""
    try:
        return list(mem.retrieve(Q)), []
    except capacity.QUERY_ERRORS:
        out, failed = [], []
        for q in Q:
            try:
                out.append(mem.retrieve(q))
            except capacity.QUERY_ERRORS as e:
                out.append(None)
                failed.append(f"{type(e).__name__}: {e}")
        return out, failed


def evaluate(point: LatentPoint) -> dict:
    """The three fractions of the module docstring for one block, with ``k_used``,
    ``explained_variance`` (of the fitting set kept by the code), ``mean_reconstruction_error``
    (mean sum (x - dec(enc(x)))^2 over the stored images), ``threshold_used``, ``median_error``,
    ``n_queries``, ``n_failed_queries`` and ``seconds``. A similarity that needs non-negative
    inputs (kl, reverse_kl) on signed PCA codes raises ValueError (stored as a failed row)."""
    from uhn.models.memory import Memory
    from uhn.models.similarity import get_similarity
    t0 = time.perf_counter()
    M, _, Q, T, _ = capacity.problem(point.capacity_point())
    N, D = M.shape
    extra = {}
    if point.k is None:
        Cm, Cq, decode, target_proj = M, Q, (lambda Z: Z), T
    else:
        enc = encoder(point)
        sim = get_similarity(point.similarity, convention=point.convention)
        Cm, Cq = enc.encode(M), enc.encode(Q)
        if sim.nonnegative_only and (Cm.min() < 0 or Cq.min() < 0):
            raise ValueError(f"similarity {point.similarity!r} reads its inputs as distributions and "
                             f"needs non-negative codes; PCA codes are signed (not applicable)")
        decode, target_proj = enc.decode, enc.decode(Cm)
        R = target_proj - M
        extra = {"k_used": enc.k, "explained_variance": enc.explained_variance_ratio,
                 "mean_reconstruction_error": float(np.einsum("ij,ij->i", R, R).mean())}
    mem = Memory(Cm, similarity=point.similarity, separation=_separation(point),
                 convention=point.convention)
    codes, failed = _retrieve(mem, Cq)
    ok = np.array([c is not None for c in codes])
    Z = np.full((N, D), np.nan)
    if ok.any():
        Z[ok] = decode(np.stack([c for c in codes if c is not None]))
    thr = capacity.effective_threshold(point.threshold, D, point.threshold_scaling)

    def sq(A, B):
        E = np.where(ok[:, None], A - B, 0.0)
        return np.where(ok, np.einsum("ij,ij->i", E, E), np.inf)

    err, err_proj = sq(Z, T), sq(Z, target_proj)
    Zf, R = np.where(ok[:, None], Z, 0.0), target_proj   # the outputs max can return
    d2 = (Zf ** 2).sum(1)[:, None] - 2.0 * Zf @ R.T + (R ** 2).sum(1)[None, :]
    nearest = ok & (np.argmin(d2, axis=1) == np.arange(N))
    out = {"fraction_correct": float(np.mean(err <= thr)),
           "fraction_correct_projected": float(np.mean(err_proj <= thr)),
           "fraction_nearest": float(np.mean(nearest)),
           "n_queries": int(N), "threshold_used": thr,
           "median_error": float(np.median(err[ok])) if ok.any() else None,
           "n_failed_queries": len(failed), **extra,
           "seconds": time.perf_counter() - t0}
    if failed:
        out["query_error"] = failed[0]
    return out


def latent_vs_n(dataset="mnist", n_memories=None, ks=LATENT_KS, similarities=None,
                probes=PROBES, fits=("stored",), blocks=5, convention="standard", paper_dot=True,
                threshold=capacity.PAPER_THRESHOLD, threshold_scaling="per_value",
                full_rank=True, seed=0) -> list[LatentPoint]:
    """Fraction correct vs N, max separation, per similarity (those of the paper's capacity
    figure, ``dot [paper_code]`` beside them), per probe, in pixel space and at each latent width
    k and fit. N defaults to :data:`LATENT_N` up to the dataset's size; each N gets
    min(blocks, images // N) disjoint blocks (N = 5,000 MNIST digits: one block). A held-out fit
    is left out where the block is the whole dataset. ``full_rank`` adds the control k = D
    (fitted on the stored set, so k_used = its rank): every axis kept, a shift and rotation of
    the memories' span with no reduction, which tells what centring and rotating alone do."""
    n_images = capacity.available_images(dataset)
    if n_memories is None:
        n_memories = [n for n in LATENT_N if n < n_images] + [n_images]
    ns = sorted({int_param(n, "n_memories", low=1) for n in n_memories})
    too_many = [n for n in ns if n > n_images]
    if too_many:
        raise ValueError(f"n_memories {too_many} exceed the {n_images} images of {dataset!r}")
    blocks = int_param(blocks, "blocks", low=1)
    spaces = [(None, None)] + [(int(k), f) for k in ks for f in fits]
    if full_rank:
        D = len(_images(dataset, seed)[0])
        if (D, "stored") not in spaces:
            spaces.append((D, "stored"))
    sims = _sims(similarities, convention, paper_dot)
    points = []
    for corruption, level in probes:
        for n in ns:
            for b in range(min(blocks, n_images // n)):
                for k, fit in spaces:
                    if fit == "heldout" and n >= n_images:
                        continue
                    for s in sims:
                        points.append(LatentPoint(dataset=dataset, n_memories=n, corruption=corruption,
                                                  level=level, threshold=threshold,
                                                  threshold_scaling=threshold_scaling, k=k, fit=fit,
                                                  block=b, seed=seed, **s))
    return points


def _sims(similarities, convention, paper_dot):
    """The (similarity, convention) lines of the pixel-space capacity curve, in its order."""
    pts = capacity.similarity_vs_n(n_memories=[1], blocks=1, similarities=similarities,
                                   convention=convention, paper_dot=paper_dot)
    return [{"similarity": p.similarity, "convention": p.convention} for p in pts]


def _failure(message: str) -> dict:
    return {m: None for m in MEASURES} | {"error": message}


def run(points: Iterable[LatentPoint], path=None, resume: bool = True, progress=None,
        engine="local", flush_seconds: float = 1.0) -> list[dict]:
    """Measure points into the results store at ``path`` (uhn.models.experiments.sweep.run:
    resumable, merged by key under a lock, replaced atomically; every row holds all parameters of
    its point); return their rows in point order. ``progress(sweep.Progress)`` after each point.
    Points are checked first (:func:`validate`) and measured grouped by problem, largest N first,
    so the lines of one (N, block, probe) share one corruption draw and one SVD."""
    from uhn.models.experiments import sweep
    unique = list(dict.fromkeys(points))
    for p in unique:
        validate(p)
    order = sorted(unique, key=lambda p: (-p.n_memories, p.block, p.corruption, p.level,
                                          p.fit or "", p.k or 0))
    rows = sweep.run(order, evaluate, path, engine=engine, resume=resume, progress=progress,
                     flush_seconds=flush_seconds, failure=_failure)
    by_key = {r["key"]: r for r in rows}
    return [by_key[p.key()] for p in unique]


def _line(row: dict) -> str:
    return row["similarity"] + (" [paper_code]" if row["convention"] == "paper_code" else "")


def summarise(rows: Iterable[dict]) -> list[dict]:
    """Mean and std (ddof=0) over blocks of each measure, per curve point (every parameter but
    ``block``); ``space``, ``line`` (similarity label), ``n_blocks`` and ``errors`` added."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple((n, r[n]) for n in PARAM_NAMES if n != "block"), []).append(r)
    out = []
    for gk, rs in groups.items():
        s = dict(gk)
        s.update(space=LatentPoint.from_row(rs[0]).space, line=_line(rs[0]), n_blocks=len(rs),
                 errors=sorted({r["error"] for r in rs if r.get("error")}))
        for m in MEASURES:
            v = np.array([np.nan if r.get(m) is None else r[m] for r in rs], float)
            good = v[np.isfinite(v)]
            s[m] = float(good.mean()) if good.size else math.nan
            s[m + "_std"] = float(good.std()) if good.size else math.nan
        out.append(s)
    return out


def capacity_table(summaries: Sequence[dict], measure: str = "fraction_correct",
                   level: float = 0.9) -> list[dict]:
    """Per (probe, similarity, space): ``capacity``, the largest N of the curve whose mean
    ``measure`` is >= ``level`` with every smaller N of the curve also >= level (0 when the
    smallest fails; None when not applicable, every block failed), and ``at_max_n``, the mean
    at the largest N measured."""
    if measure not in MEASURES:
        raise ValueError(f"unknown measure {measure!r}; choose one of {MEASURES}")
    lines: dict[tuple, list] = {}
    for s in summaries:
        lines.setdefault((s["corruption"], s["level"], s["line"], s["space"]), []).append(s)
    out = []
    for (corruption, lev, line, space), ss in lines.items():
        ss = sorted(ss, key=lambda s: s["n_memories"])
        vals = [s[measure] for s in ss]
        if all(math.isnan(v) for v in vals):
            cap = None
        else:
            cap = 0
            for s, v in zip(ss, vals):
                if not v >= level:
                    break
                cap = s["n_memories"]
        out.append({"corruption": corruption, "level": lev, "similarity": line, "space": space,
                    "capacity": cap, "at_max_n": vals[-1], "max_n": ss[-1]["n_memories"]})
    return out


def format_table(table: Sequence[dict], spaces: Sequence[str]) -> str:
    """A Markdown table: one row per (probe, similarity), one column per space, each cell
    ``capacity (fraction at the largest N)`` (``>= N`` where the curve never fell below the
    level); ``n/a`` where not applicable."""
    cells: dict[tuple, dict] = {}
    for t in table:
        cells.setdefault((f"{t['corruption']} {t['level']:g}", t["similarity"]), {})[t["space"]] = t
    head = "| probe | similarity | " + " | ".join(spaces) + " |"
    lines = [head, "|" + "---|" * (len(spaces) + 2)]
    for (probe, sim), by_space in cells.items():
        row = []
        for sp in spaces:
            t = by_space.get(sp)
            if t is None:
                row.append("")
            elif t["capacity"] is None:
                row.append("n/a")
            else:
                cap = f">= {t['capacity']}" if t["capacity"] == t["max_n"] else str(t["capacity"])
                row.append(f"{cap} ({t['at_max_n']:.3f})")
        lines.append(f"| {probe} | {sim} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def format_at_n(summaries: Sequence[dict], measure: str, n: int, spaces: Sequence[str]) -> str:
    """A Markdown table of ``measure`` at N = n: ``mean +- std (blocks)`` per (probe, similarity)
    and space; ``n/a`` where every block failed, blank where not measured."""
    cells: dict[tuple, dict] = {}
    for s in summaries:
        key = (f"{s['corruption']} {s['level']:g}", s["line"])
        cells.setdefault(key, {})
        if s["n_memories"] == n:
            cells[key][s["space"]] = s
    lines = ["| probe | similarity | " + " | ".join(spaces) + " |", "|" + "---|" * (len(spaces) + 2)]
    for (probe, sim), by_space in cells.items():
        row = []
        for sp in spaces:
            s = by_space.get(sp)
            row.append("" if s is None else "n/a" if math.isnan(s[measure]) else
                       f"{s[measure]:.3f} +- {s[measure + '_std']:.3f} ({s['n_blocks']})")
        lines.append(f"| {probe} | {sim} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def _space_order(sp: str):
    return (sp != "pixel", "heldout" in sp, int(sp.split()[0][2:]) if sp != "pixel" else 0)


def report(rows: Sequence[dict], level: float = 0.9, at_n: Sequence[int] = (1000, 5000)) -> str:
    """Markdown: for each of ``fraction_correct`` and ``fraction_nearest``, the table of
    :func:`format_table` (capacity at ``level``, and the mean at the largest N) and the tables of
    :func:`format_at_n` at each N of ``at_n`` that was measured; pixel space first."""
    summaries = summarise(rows)
    spaces = sorted({s["space"] for s in summaries}, key=_space_order)
    measured = {s["n_memories"] for s in summaries}
    out = []
    for measure in ("fraction_correct", "fraction_nearest"):
        out.append(f"{measure}: largest N with mean >= {level:g} (mean at the largest N)\n")
        out.append(format_table(capacity_table(summaries, measure, level), spaces) + "\n")
        for n in at_n:
            if n in measured:
                here = sorted({s["space"] for s in summaries if s["n_memories"] == n},
                              key=_space_order)
                out.append(f"{measure} at N = {n}: mean +- std over blocks (blocks)\n")
                out.append(format_at_n(summaries, measure, n, here) + "\n")
    return "\n".join(out)


def plot_latent_capacity(rows: Sequence[dict], measure: str = "fraction_correct"):
    """One panel per (probe, similarity): ``measure`` (mean over blocks, error bars = std) vs N
    on a log axis, one line per space (pixel solid black, latent widths coloured, held-out fits
    dashed). Returns the Figure."""
    import matplotlib.pyplot as plt
    if measure not in MEASURES:
        raise ValueError(f"unknown measure {measure!r}; choose one of {MEASURES}")
    summaries = summarise(rows)
    if not summaries:
        raise ValueError("no rows to plot")
    probes = list(dict.fromkeys((s["corruption"], s["level"]) for s in summaries))
    sims = list(dict.fromkeys(s["line"] for s in summaries))
    spaces = list(dict.fromkeys(s["space"] for s in summaries))
    fig, axes = plt.subplots(len(probes), len(sims), figsize=(2.8 * len(sims), 2.6 * len(probes)),
                             sharex=True, sharey=True, squeeze=False)
    spaces = sorted(spaces, key=_space_order)
    ks = sorted({sp.split()[0] for sp in spaces if sp != "pixel"}, key=lambda k: int(k[2:]))
    colours = dict(zip(ks, plt.get_cmap("viridis")(np.linspace(0.0, 0.8, max(1, len(ks))))))
    style = {sp: {"color": colours[sp.split()[0]], "linestyle": "--" if "heldout" in sp else "-"}
             for sp in spaces if sp != "pixel"}     # one colour per k, held-out fits dashed
    style["pixel"] = {"color": "black", "linestyle": "-"}
    for i, probe in enumerate(probes):
        for j, sim in enumerate(sims):
            ax = axes[i, j]
            for sp in spaces:
                pts = sorted((s["n_memories"], s[measure], s[measure + "_std"]) for s in summaries
                             if (s["corruption"], s["level"]) == probe and s["line"] == sim
                             and s["space"] == sp)
                if not pts or all(math.isnan(p[1]) for p in pts):
                    continue
                x, y, e = (np.array(c, float) for c in zip(*pts))
                ax.errorbar(x, y, yerr=e, marker="o", markersize=2.5, capsize=2, linewidth=1.2,
                            label=sp, **style[sp])
            ax.set_xscale("log")
            ax.set_ylim(-0.03, 1.05)
            ax.grid(True, alpha=0.3)
            if i == 0:
                ax.set_title(sim, fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{probe[0]} {probe[1]:g}\n{measure.replace('_', ' ')}", fontsize=8)
            if i == len(probes) - 1:
                ax.set_xlabel("Images stored N", fontsize=8)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    for ax in axes.flat:   # the fullest legend (kl panels have no latent lines)
        h, lab = ax.get_legend_handles_labels()
        if len(lab) > len(labels):
            handles, labels = h, lab
    r0 = rows[0]
    fig.suptitle(f"Capacity in pixel vs PCA latent space ({r0['dataset']}, separation "
                 f"{LatentPoint.from_row(r0).capacity_point().separation_label}, threshold "
                 f"{r0['threshold']:g})", fontsize=10, y=0.99)
    top = 1 - 0.3 / fig.get_figheight()       # inches below the figure's top edge
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, top), ncol=len(labels),
               fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, top - 0.2 / fig.get_figheight()))
    return fig


#: the small grid of ``quick``: 2 blocks, 3 N, k = 16 and 64, fitted on the stored set only
QUICK = {"n_memories": (10, 100, 500), "ks": (16, 64), "blocks": 2, "fits": ("stored",)}


def make_latent_figures(out_dir="figures", quick: bool = False, results_path=None,
                        progress=None, resume: bool = True, **overrides) -> list[Path]:
    """Run :func:`latent_vs_n` into the store (``results_path``, default :data:`DEFAULT_RESULTS`)
    and write ``latent_capacity_mnist.png`` (``fraction_correct``) and
    ``latent_capacity_mnist_nearest.png`` (``fraction_nearest``) to ``out_dir`` (atomically,
    uhn.models.plotting.save_figure). Default grid: :func:`latent_vs_n`'s, with stored and
    held-out fits; ``quick``: the :data:`QUICK` grid; ``overrides``: latent_vs_n's keywords.
    Returns the paths."""
    import matplotlib.pyplot as plt
    from uhn.models.plotting import save_figure
    kw = {"fits": ("stored", "heldout"), **(QUICK if quick else {}), **overrides}
    rows = run(latent_vs_n(**kw), results_path or DEFAULT_RESULTS, resume=resume,
               progress=progress)
    written = []
    for measure, stem in (("fraction_correct", "latent_capacity_mnist"),
                          ("fraction_nearest", "latent_capacity_mnist_nearest")):
        fig = plot_latent_capacity(rows, measure)
        written += save_figure(fig, Path(out_dir) / f"{stem}.png")
        plt.close(fig)
    return written
