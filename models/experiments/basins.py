"""Basins of attraction: the probability of retrieving each memory against the corruption level,
and the radius at which it falls to 1/2 (issue 31, section 3; docs/theory_capacity.md).

One measurement (:func:`evaluate`, one :class:`BasinPoint`): store N patterns (random bipolar
patterns of width D, or the first N images of a shuffled dataset), corrupt every stored pattern
``trials`` times at one level (``flips``: exactly round(level) bits of a bipolar pattern flipped,
at positions drawn uniformly without replacement; any other kind: :func:`uhn.models.corruption.corrupt`
with that std / fraction), retrieve every query with one retrieval rule and count it correct:

* bipolar data: sign(z) equals the stored pattern in every bit (sign(0) = +1, as the outputs);
* images: sum_i (x_i - z_i)^2 <= threshold D / 784 (the capacity protocol's criterion,
  :func:`uhn.models.experiments.capacity.effective_threshold`).

The retrieval rules (:data:`RETRIEVALS`): ``single`` (one shot, Memory.retrieve), ``iterate``
(Memory.iterate to a fixed point), and for the classical network ``async`` / ``sync``
(ClassicalHopfield.update, zero diagonal). A row holds the count correct per memory; the
probability p(level) = k / n has the Wilson interval of k successes in n trials
(:func:`wilson_interval`), and the basin radius r is where p falls through 1/2, interpolated
linearly between the two levels around the first crossing (:func:`half_radius`), with its sampling
error from a parametric bootstrap of the binomial counts (:func:`radius_with_error`).

Sweeps run on uhn.models.experiments.sweep (in process or on dask; resumable).
"""
from __future__ import annotations

import json
import math
import time
import zlib
from dataclasses import asdict, dataclass, fields, replace
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from uhn.models.validation import int_param

#: revision of :func:`evaluate`'s protocol; part of every key
PROTOCOL = 1
#: retrieval rules: one shot, iterated single shot, the classical network's updates, and the
#: continuous-time dynamics' fixed point (built outside this layer: uhn.models never imports
#: uhn.dynamics, so :func:`run` takes its builder, uhn.dynamics.analysis.basin_retrieval.RETRIEVERS)
RETRIEVALS = ("single", "iterate", "async", "sync", "dynamics")
#: network kinds: ``classical`` (dot + identity + sign, W = M^T M) or ``memory`` (any similarity
#: and separation, the named parameter ``sep_param``)
NETWORKS = ("classical", "memory")
#: the corruption of bipolar data (any other kind is uhn.models.corruption's, for images)
FLIPS = "flips"
#: the parameter of each parametrised separation (BasinPoint.sep_param)
SEP_PARAM_NAMES = {"softmax": "beta", "exp": "beta", "polynomial": "n", "k_max": "k",
                   "threshold": "theta"}
#: the probability at which the basin radius is read
HALF = 0.5


@dataclass(frozen=True)
class BasinPoint:
    """Every parameter of one basin measurement (one network, one corruption level).

    - ``data``: ``random`` (N random bipolar patterns of width ``dim``) or a uhn.models.data
      dataset name (``mnist``, ...; the first N images of its shuffle by ``seed``; ``dim`` is
      ignored and stored as 0).
    - ``network``, ``similarity``, ``separation``, ``sep_param``, ``output``: the memory
      (``classical`` fixes dot, identity and sign); ``output`` is ``sign`` or None.
    - ``retrieval``: one of :data:`RETRIEVALS`; ``max_steps`` bounds iterate / the update sweeps.
    - ``corruption``, ``level``: ``flips`` and a bit count (bipolar data), or a
      uhn.models.corruption kind and its level (images).
    - ``trials``: corrupted queries per stored pattern.
    - ``threshold``: the image criterion on sum (x - z)^2 for a 784-value image.
    - ``seed``: seeds the patterns (or the dataset shuffle) and, with the level, the corruptions.
    """

    data: str = "random"
    dim: int = 100
    n_memories: int = 1
    network: str = "classical"
    similarity: str = "dot"
    separation: str = "identity"
    sep_param: Optional[float] = None
    output: Optional[str] = "sign"
    retrieval: str = "single"
    corruption: str = FLIPS
    level: float = 0.0
    trials: int = 20
    max_steps: int = 100
    threshold: float = 50.0
    seed: int = 0

    def __post_init__(self):
        for name, low in (("dim", 0), ("n_memories", 1), ("trials", 1), ("max_steps", 1),
                          ("seed", 0)):
            object.__setattr__(self, name, int_param(getattr(self, name), name, low=low))
        object.__setattr__(self, "level", float(self.level))
        object.__setattr__(self, "threshold", float(self.threshold))
        if self.sep_param is not None:
            object.__setattr__(self, "sep_param", float(self.sep_param))
        for name in ("level", "threshold", "sep_param"):
            v = getattr(self, name)
            if v is not None and not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v}")
        if self.network not in NETWORKS:
            raise ValueError(f"network must be one of {NETWORKS}, got {self.network!r}")
        if self.retrieval not in RETRIEVALS:
            raise ValueError(f"retrieval must be one of {RETRIEVALS}, got {self.retrieval!r}")
        if self.retrieval in ("async", "sync") and self.network != "classical":
            raise ValueError(f"retrieval {self.retrieval!r} is the classical network's update; "
                             f"use network='classical' or retrieval 'single' / 'iterate'")
        if self.retrieval == "dynamics" and self.network != "memory":
            raise ValueError("retrieval 'dynamics' integrates a network of a similarity and a "
                             "separation: use network='memory'")
        if self.output not in (None, "sign"):
            raise ValueError(f"output must be 'sign' or None, got {self.output!r}")
        if self.data == "random":
            if self.dim < 1:
                raise ValueError("random patterns need dim >= 1")
            if self.corruption != FLIPS:
                raise ValueError(f"random bipolar patterns are corrupted by {FLIPS!r}, got "
                                 f"{self.corruption!r}")
            if not (self.level.is_integer() and 0 <= self.level <= self.dim):
                raise ValueError(f"flips must be a whole number of bits in [0, dim = {self.dim}], "
                                 f"got {self.level:g}")
        else:
            object.__setattr__(self, "dim", 0)
            if self.corruption == FLIPS:
                raise ValueError(f"dataset {self.data!r} holds images in [0, 1]: corrupt them with "
                                 f"a uhn.models.corruption kind, not {FLIPS!r}")
            if self.network == "classical":
                raise ValueError("the classical network stores bipolar patterns; use data='random' "
                                 "or network='memory' for images")
        if self.threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {self.threshold}")

    def params(self) -> dict:
        return asdict(self)

    def key(self) -> str:
        """Every parameter and the protocol revision, as canonical JSON."""
        return json.dumps({"protocol": PROTOCOL, "experiment": "basins", **self.params()},
                          sort_keys=True, separators=(",", ":"))

    @property
    def label(self) -> str:
        """The line a point belongs to, e.g. ``classical async`` or ``manhattan/max iterate``."""
        if self.network == "classical":
            return f"classical {self.retrieval}"
        sep = self.separation if self.sep_param is None else \
            f"{self.separation}({SEP_PARAM_NAMES.get(self.separation, 'param')}={self.sep_param:g})"
        return f"{self.similarity}/{sep} {self.retrieval}"


# ----------------------------------------------------------------------------------------------
# the pieces of one measurement
# ----------------------------------------------------------------------------------------------

def flip_bits(X, flips: int, seed=0) -> np.ndarray:
    """A copy of bipolar rows X (B, D) with exactly ``flips`` entries of each row negated, at
    positions drawn uniformly without replacement (independently per row)."""
    X = np.array(X, dtype=np.float64, ndmin=2)
    B, D = X.shape
    flips = int_param(flips, "flips", low=0)
    if flips > D:
        raise ValueError(f"cannot flip {flips} of {D} bits")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if flips:
        # the first `flips` columns of a uniform random permutation of each row
        idx = np.argsort(rng.random((B, D)), axis=1)[:, :flips]
        np.negative.at(X, (np.repeat(np.arange(B), flips), idx.ravel()))
    return X


def _separation(point: BasinPoint):
    from uhn.models.separation import get_separation
    if point.sep_param is None:
        return get_separation(point.separation)
    if point.separation not in SEP_PARAM_NAMES:
        raise ValueError(f"separation {point.separation!r} takes no parameter, got {point.sep_param}")
    return get_separation(point.separation, **{SEP_PARAM_NAMES[point.separation]: point.sep_param})


def retriever(M, point: BasinPoint, builders: Optional[dict] = None) -> Callable:
    """The retrieval rule of ``point`` over memories M: a function queries (B, D) -> states (B, D).
    ``builders``: {retrieval name: builder(M, point) -> that function} for rules built outside
    this module (``dynamics``)."""
    from uhn.models.memory import Memory, classical_hopfield
    if builders and point.retrieval in builders:
        return builders[point.retrieval](M, point)
    if point.retrieval == "dynamics":
        raise ValueError("retrieval 'dynamics' needs its builder: run(..., retrievers="
                         "uhn.dynamics.analysis.basin_retrieval.RETRIEVERS)")
    if point.network == "classical":
        net = classical_hopfield(M)
    else:
        net = Memory(M, similarity=point.similarity, separation=_separation(point),
                     output=point.output)
    if point.retrieval == "single":
        return net.retrieve
    if point.retrieval == "iterate":
        return lambda Q: net.iterate(Q, max_steps=point.max_steps).states
    mode, seed = point.retrieval, point.seed
    return lambda Q: net.update(Q, max_sweeps=point.max_steps, mode=mode, seed=seed).states


def is_correct(Z, T, *, bipolar: bool, threshold: float = 50.0) -> np.ndarray:
    """(B,) bool: query b retrieved its target T_b. Bipolar: sign(Z_b) == T_b in every bit
    (sign(0) = +1); images: sum_i (T_bi - Z_bi)^2 <= threshold D / 784."""
    Z, T = np.asarray(Z, dtype=np.float64), np.asarray(T, dtype=np.float64)
    if Z.shape != T.shape:
        raise ValueError(f"states {Z.shape} and targets {T.shape} differ in shape")
    if bipolar:
        return np.all(np.where(Z >= 0, 1.0, -1.0) == T, axis=1)
    from uhn.models.experiments.capacity import effective_threshold
    return np.sum((T - Z) ** 2, axis=1) <= effective_threshold(threshold, T.shape[1])


def success_counts(M, retrieve: Callable, corruption: str, level: float, trials: int, *,
                   image_shape=None, threshold: float = 50.0, seed=0) -> np.ndarray:
    """(N,) ints: of ``trials`` corruptions of each stored row of M, how many ``retrieve`` (queries
    (B, D) -> states) brings back to that row (criterion :func:`is_correct`; bipolar when
    ``corruption`` is ``flips``). All N * trials queries are one batch."""
    M = np.asarray(M, dtype=np.float64)
    trials = int_param(trials, "trials", low=1)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    T = np.repeat(M, trials, axis=0)            # row mu * trials + t: trial t of memory mu
    if corruption == FLIPS:
        level = float(level)
        if not level.is_integer():
            raise ValueError(f"flips must be a whole number of bits, got {level:g}")
        Q = flip_bits(T, int(level), rng)
    else:
        from uhn.models.corruption import corrupt
        if image_shape is None:
            raise ValueError(f"corruption {corruption!r} needs the image_shape")
        Q = corrupt(T, corruption, level, image_shape, seed=rng)
    ok = is_correct(retrieve(Q), T, bipolar=corruption == FLIPS, threshold=threshold)
    return ok.reshape(M.shape[0], trials).sum(axis=1)


def _seed(point: BasinPoint, what: str) -> np.random.SeedSequence:
    tag = zlib.crc32(f"{what}:{point.data}:{point.corruption}:{point.level!r}".encode())
    return np.random.SeedSequence([point.seed, point.dim, point.n_memories, point.trials, tag])


def memories(point: BasinPoint):
    """(M (N, D), image_shape or None) of a point: random bipolar patterns seeded by (seed, dim, N),
    the same at every level and retrieval rule, or the first N images of the dataset's shuffle."""
    if point.data == "random":
        from uhn.models.data import random_patterns
        seq = np.random.SeedSequence([point.seed, point.dim, point.n_memories, 31])
        return random_patterns(point.n_memories, point.dim, seed=np.random.default_rng(seq)), None
    from uhn.models.data import load_dataset
    ds = load_dataset(point.data, n=point.n_memories, seed=point.seed)
    return np.array(ds.X), ds.image_shape


def evaluate(point: BasinPoint, builders: Optional[dict] = None) -> dict:
    """One measurement: ``per_memory`` successes of ``trials`` per stored pattern, their total
    ``n_correct`` of ``n_queries`` and ``probability`` = n_correct / n_queries (``builders``:
    see :func:`retriever`)."""
    t0 = time.perf_counter()
    M, shape = memories(point)
    rng = np.random.default_rng(_seed(point, "corrupt"))
    counts = success_counts(M, retriever(M, point, builders), point.corruption, point.level,
                            point.trials,
                            image_shape=shape, threshold=point.threshold, seed=rng)
    n = int(M.shape[0] * point.trials)
    return {"per_memory": [int(c) for c in counts], "n_correct": int(counts.sum()),
            "n_queries": n, "probability": float(counts.sum()) / n,
            "seconds": time.perf_counter() - t0}


# ----------------------------------------------------------------------------------------------
# statistics: Wilson intervals, the radius at 1/2 and its bootstrap error
# ----------------------------------------------------------------------------------------------

def wilson_interval(k, n, z: float = 1.959963984540054) -> tuple:
    """Wilson score interval of k successes in n trials (arrays broadcast; z: normal quantile,
    default 95 %): (p^ + z^2/2n -+ z sqrt(p^(1-p^)/n + z^2/4n^2)) / (1 + z^2/n)."""
    k, n = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    if np.any(n < 1) or np.any(k < 0) or np.any(k > n):
        raise ValueError("wilson_interval needs 0 <= k <= n and n >= 1")
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return np.clip(mid - half, 0.0, 1.0), np.clip(mid + half, 0.0, 1.0)


def half_radius(levels, p, at: float = HALF) -> Optional[float]:
    """The level where p(level) first falls below ``at``, interpolated linearly between the last
    level with p >= at and the next (levels increasing): x_a + (p_a - at)(x_b - x_a)/(p_a - p_b).
    None where p starts below ``at`` or never falls below it on the grid."""
    x, p = np.asarray(levels, dtype=np.float64), np.asarray(p, dtype=np.float64)
    if x.ndim != 1 or x.shape != p.shape or x.size < 2:
        raise ValueError("half_radius needs matching 1-D levels and probabilities (>= 2 points)")
    if np.any(np.diff(x) <= 0):
        raise ValueError("levels must be strictly increasing")
    below = np.flatnonzero(p < at)
    if below.size == 0 or below[0] == 0:
        return None
    b = below[0]
    a = b - 1
    return float(x[a] + (p[a] - at) * (x[b] - x[a]) / (p[a] - p[b]))


def radius_with_error(levels, k, n, *, boots: int = 2000, seed=0, at: float = HALF) -> dict:
    """The basin radius of counts k of n per level (:func:`half_radius` of k/n) and its sampling
    error: a parametric bootstrap that redraws every k_i ~ Binomial(n_i, k_i / n_i).

    Returns radius (None off the grid), std and the 2.5 / 97.5 % percentiles of the bootstrap
    radii, and ``off_grid``: the fraction of redraws with no crossing (they are left out)."""
    k, n = np.asarray(k), np.asarray(n)
    r = half_radius(levels, k / n, at)
    rng = np.random.default_rng(seed)
    draws = rng.binomial(n, k / n, size=(int(boots), k.size)) / n
    rs = [half_radius(levels, d, at) for d in draws]
    ok = np.array([v for v in rs if v is not None])
    out = {"radius": r, "off_grid": 1 - ok.size / len(rs)}
    if ok.size:
        out.update(std=float(ok.std(ddof=1)) if ok.size > 1 else 0.0,
                   low=float(np.percentile(ok, 2.5)), high=float(np.percentile(ok, 97.5)))
    else:
        out.update(std=None, low=None, high=None)
    return out


# ----------------------------------------------------------------------------------------------
# sweeps
# ----------------------------------------------------------------------------------------------

def grid(base: BasinPoint, levels: Sequence[float], lines: Sequence[dict] = ({},)) -> list[BasinPoint]:
    """Points of a basin curve: every line (dict of overrides of ``base``) at every level."""
    return [replace(base, **line, level=float(v)) for line in lines for v in levels]


def flips_levels(dim: int, step: int = 1) -> list[float]:
    """0, step, 2 step, ... up to dim bits."""
    return [float(f) for f in range(0, int(dim) + 1, int(step))]


def _failure(message: str) -> dict:
    return {"probability": None, "error": message}


def run(points: Iterable[BasinPoint], path=None, *, engine="local", resume: bool = True,
        progress=None, retrievers: Optional[dict] = None) -> list[dict]:
    """Evaluate points into the results store ``path`` (uhn.models.experiments.sweep.run: in
    process or on a dask Client, resumable); the rows in point order. ``retrievers``: builders of
    rules defined outside this layer (:func:`retriever`; module-level functions, so a dask
    worker can unpickle them)."""
    import functools
    from uhn.models.experiments import sweep
    fn = evaluate if not retrievers else functools.partial(evaluate, builders=dict(retrievers))
    return sweep.run(list(points), fn, path, engine=engine, resume=resume,
                     progress=progress, failure=_failure)


def curves(rows: Iterable[dict], *, boots: int = 2000, seed: int = 0) -> dict:
    """Rows grouped into curves by everything but the level: {label: curve}, where a curve holds
    levels, k, n, p, the Wilson 95 % interval (low, high), and the radius with :func:`radius_with_error`'s
    std and 95 % interval (radius_std, radius_low, radius_high) and off_grid.
    Failed rows are skipped."""
    groups: dict = {}
    for row in rows:
        if row.get("error") or row.get("probability") is None:
            continue
        p = BasinPoint(**{f.name: row[f.name] for f in fields(BasinPoint)})
        groups.setdefault(replace(p, level=0.0), []).append(row)
    out = {}
    for base, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["level"])
        x = np.array([r["level"] for r in rs])
        k = np.array([r["n_correct"] for r in rs])
        n = np.array([r["n_queries"] for r in rs])
        lo, hi = wilson_interval(k, n)
        c = {"point": base, "levels": x, "k": k, "n": n, "p": k / n, "low": lo, "high": hi}
        r = (radius_with_error(x, k, n, boots=boots, seed=seed) if x.size >= 2 else
             {"radius": None, "std": None, "low": None, "high": None, "off_grid": 1.0})
        c.update(radius=r["radius"], radius_std=r["std"], radius_low=r["low"],
                 radius_high=r["high"], off_grid=r["off_grid"])
        out[base] = c
    # label each curve by its line; where two curves share one (other D, N, data, corruption,
    # trials or seed), add what tells them apart
    labels = [b.label for b in out]
    named = {}
    for base, c in out.items():
        label = base.label
        if labels.count(label) > 1:
            label += (f" [{base.data} D={base.dim} N={base.n_memories} {base.corruption} "
                      f"trials={base.trials} seed={base.seed} threshold={base.threshold:g}]")
        named[label] = c
    return named


def format_table(curves_: dict) -> str:
    """One line per curve: label, points, the radius at p = 1/2 with its bootstrap std and 95 %
    interval."""
    lines = [f"{'curve':40s} {'levels':>6s} {'radius':>9s} {'std':>7s} {'95% interval':>19s}"]
    for label, c in curves_.items():
        if c["radius"] is None:
            r = "off grid"
            s = iv = ""
        else:
            r = f"{c['radius']:.3f}"
            s = f"{c['radius_std']:.3f}"
            iv = f"[{c['radius_low']:.3f}, {c['radius_high']:.3f}]"
        lines.append(f"{label:40s} {len(c['levels']):6d} {r:>9s} {s:>7s} {iv:>19s}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# MNIST: single shot against the iterated network, per similarity
# ----------------------------------------------------------------------------------------------

#: similarities of the MNIST basin figure
MNIST_SIMILARITIES = ("euclidean", "manhattan", "dot", "cosine")
#: Gaussian noise stds of the MNIST basin figure
MNIST_NOISE = (0.1, 0.2, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0)


def mnist_points(similarities: Sequence[str] = MNIST_SIMILARITIES, levels=MNIST_NOISE,
                 n_memories: int = 100, trials: int = 5, corruption: str = "gaussian",
                 separation: str = "softmax", sep_param: Optional[float] = 1.0,
                 retrievals: Sequence[str] = ("single", "iterate"), max_steps: int = 50,
                 seed: int = 0, data: str = "mnist") -> list[BasinPoint]:
    """The MNIST basin comparison: for every similarity, single shot against the iterated network
    (softmax(beta) separation by default), probability of retrieval vs the corruption level."""
    base = BasinPoint(data=data, n_memories=n_memories, network="memory", output=None,
                      separation=separation, sep_param=sep_param, corruption=corruption,
                      trials=trials, max_steps=max_steps, seed=seed)
    lines = [{"similarity": s, "retrieval": r} for s in similarities for r in retrievals]
    return grid(base, levels, lines)


def figure_points(quick: bool = False, seed: int = 0) -> list[BasinPoint]:
    """The points of figures/basins_mnist.png (``uhn figures``; docs/theory_capacity.md): euclidean,
    dot and cosine, single shot, iterated and the dynamics' fixed point (refused for cosine, which
    has none: failed rows), 100 stored digits, 2 noisy queries each, noise std 0.1 .. 1.2. ``quick``: dot alone, 20 digits, one query, two
    levels (seconds; for tests)."""
    if quick:
        return mnist_points(similarities=("dot",), levels=(0.3, 1.2), n_memories=20, trials=1,
                            retrievals=("single", "iterate", "dynamics"), seed=seed)
    return mnist_points(similarities=("euclidean", "dot", "cosine"), levels=(0.1, 0.3, 0.5, 0.8, 1.2),
                        n_memories=100, trials=2, retrievals=("single", "iterate", "dynamics"),
                        seed=seed)


def plot(curves_: dict, path=None, *, xlabel: str = "corruption level", title: str = ""):
    """Probability of retrieval against the level, one line per curve with its Wilson 95 % band
    and its radius at 1/2 marked; saved atomically when ``path`` is given. Returns the figure."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, c in curves_.items():
        line, = ax.plot(c["levels"], c["p"], marker="o", ms=3, label=label)
        ax.fill_between(c["levels"], c["low"], c["high"], color=line.get_color(), alpha=0.2, lw=0)
        if c["radius"] is not None:
            ax.axvline(c["radius"], color=line.get_color(), ls=":", lw=1)
    ax.axhline(HALF, color="0.5", lw=0.8)
    ax.set(xlabel=xlabel, ylabel="P(retrieved)", ylim=(-0.03, 1.03), title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    if path is not None:
        from uhn.models.plotting import save_figure
        save_figure(fig, path)
    return fig


def make_basins_figure(path, *, points: Optional[list] = None, store=None, engine="local",
                       progress=None, retrievers: Optional[dict] = None):
    """The MNIST figure: :func:`mnist_points` (or ``points``; with ``retrievers`` =
    uhn.dynamics.analysis.basin_retrieval.RETRIEVERS and ``retrievals=("single", "iterate",
    "dynamics")`` the dynamics' fixed point too) run into ``store`` and plotted to ``path``;
    returns the curves."""
    rows = run(points if points is not None else mnist_points(), store, engine=engine,
               progress=progress, retrievers=retrievers)
    cs = curves(rows)
    plot(cs, path, xlabel="corruption level", title="MNIST basins: single shot vs fixed points")
    return cs
