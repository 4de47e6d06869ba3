"""The paper's capacity experiments (Millidge et al. 2022, section 5; docs/theory.md section 10).

Protocol of one measurement (:func:`evaluate`, one :class:`Point`):

1. load the dataset with its seeded shuffle and take block b of N images,
   X_b = X[b N:(b + 1) N] (blocks are disjoint, so the 5 blocks of a curve share no image);
2. corrupt every stored image into a query q_mu = corrupt(x_mu) (noise / masks, uhn.models.corruption);
3. retrieve all N queries as ONE batch, z_mu = P^T sep(sim(M, q_mu)) (uhn.models.memory.Memory);
4. count query mu correct when sum_i (t_mu,i - z_mu,i)^2 <= threshold * D / 784, where t_mu is
   the stored value (x_mu itself when autoassociative), and report the fraction correct.

A curve point is the mean and std of that fraction over the blocks
(uhn.models.experiments.summary.summarise). Experiments are named sweeps (:data:`EXPERIMENTS`)
that return lists of independent Points; :func:`run` evaluates them through
uhn.models.experiments.sweep into the resumable results store (uhn.models.experiments.store),
which several runs may write at once. Everything here is a pure function of its Point (no
printing, no global state besides a read-only dataset cache), so points can be farmed out to
other processes or machines as they are.
"""
from __future__ import annotations

import functools
import json
import math
import time
import zlib
from dataclasses import asdict, dataclass, fields, replace
from typing import Callable, Iterable, Optional

import numpy as np

from uhn.models.validation import all_finite, int_param

#: revision of the protocol implemented by :func:`evaluate`; part of every key, so rows measured
#: under an older protocol are never mistaken for current ones (bump when evaluate's meaning changes)
PROTOCOL = 1

#: the paper's N (images stored) for the capacity curves
PAPER_N = (2, 5, 10, 20, 50, 100, 200, 300, 500, 700, 1000)
#: similarity functions of the paper's capacity figures (its Jensen-Shannon variant is left out:
#: the official code's version picks the least similar memory, see docs/reproducing.md)
PAPER_SIMILARITIES = ("euclidean", "manhattan", "dot", "kl", "reverse_kl")
#: Gaussian noise std levels of the paper's noise figure (N = 100)
PAPER_NOISE = (0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0, 1.5)
#: masked fractions of the paper's mask figure (N = 50)
PAPER_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: the paper's correctness threshold on sum of squared errors (drawn at 50 in its threshold figure;
#: the official code's default is 60) for 784-value images
PAPER_THRESHOLD = 50.0
#: threshold rescalings for images with D != 784 values (see :func:`effective_threshold`)
THRESHOLD_SCALINGS = ("per_value", "official_inverse", "none")
#: how stored values relate to keys (see :func:`evaluate`)
ASSOCIATIONS = ("auto", "hetero", "hetero_pairs")

#: the separation parameter each parametrised separation takes (Point.sep_param)
SEP_PARAM_NAMES = {"softmax": "beta", "exp": "beta", "polynomial": "n", "k_max": "k",
                   "threshold": "theta"}


@dataclass(frozen=True)
class Point:
    """Every parameter of one capacity measurement (one block of one curve point).

    Attributes
    ----------
    dataset : uhn.models.data dataset name (``mnist``, ``digits``, ``natural``, ``lfw``).
    n_memories : N, images stored.
    similarity : uhn.models.similarity name, read under ``convention``.
    separation : uhn.models.separation name; ``sep_param`` its parameter (softmax / exp beta,
        polynomial degree n, k_max k, threshold theta) or None.
    corruption, level : uhn.models.corruption kind and its std / fraction / probability.
    threshold : correctness threshold on sum (t - z)^2 for a 784-value image, rescaled for other
        D by ``threshold_scaling`` (see :func:`effective_threshold`).
    convention : ``standard`` or ``paper_code`` (uhn.models.memory.Memory).
    associative : ``auto`` (values = the stored images), ``hetero`` (values = the stored images
        with the top half zeroed, i.e. their bottom halves, as in the official code), or
        ``hetero_pairs`` (key mu maps to image mu + 1 of the block: an arbitrary pairing).
    block : index b of the disjoint block X[b N:(b + 1) N] of the shuffled dataset.
    seed : seed of the dataset shuffle and (with block and N) of random corruptions.
    """

    dataset: str = "mnist"
    n_memories: int = 100
    similarity: str = "manhattan"
    separation: str = "max"
    sep_param: Optional[float] = None
    corruption: str = "mask_bottom"
    level: float = 0.5
    threshold: float = PAPER_THRESHOLD
    threshold_scaling: str = "per_value"
    convention: str = "standard"
    associative: str = "auto"
    block: int = 0
    seed: int = 0

    def __post_init__(self):
        # normalise numeric types so equal points have equal keys (1 vs 1.0, numpy scalars)
        # integral values only: 10.7 memories is a typo, not 10 (int() would truncate it silently)
        object.__setattr__(self, "n_memories", int_param(self.n_memories, "n_memories", low=1))
        object.__setattr__(self, "block", int_param(self.block, "block", low=0))
        object.__setattr__(self, "seed", int_param(self.seed, "seed", low=0))
        object.__setattr__(self, "level", float(self.level))
        object.__setattr__(self, "threshold", float(self.threshold))
        if self.sep_param is not None:
            object.__setattr__(self, "sep_param", float(self.sep_param))
        if self.n_memories < 1:
            raise ValueError(f"n_memories must be >= 1, got {self.n_memories}")
        if self.block < 0:
            raise ValueError(f"block must be >= 0, got {self.block}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        for name in ("level", "threshold", "sep_param"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
        if self.threshold < 0:
            raise ValueError(f"threshold must be >= 0 (a bound on a sum of squared errors), "
                             f"got {self.threshold}")
        if self.threshold_scaling not in THRESHOLD_SCALINGS:
            raise ValueError(f"threshold_scaling must be one of {THRESHOLD_SCALINGS}, "
                             f"got {self.threshold_scaling!r}")
        if self.associative not in ASSOCIATIONS:
            raise ValueError(f"associative must be one of {ASSOCIATIONS}, got {self.associative!r}")
        if self.convention not in ("standard", "paper_code"):
            raise ValueError(f"convention must be 'standard' or 'paper_code', got {self.convention!r}")

    def params(self) -> dict:
        """All parameters as a flat dict (JSON-serialisable)."""
        return asdict(self)

    def key(self) -> str:
        """Stable identity: every parameter and the protocol revision, as canonical JSON."""
        return json.dumps({"protocol": PROTOCOL, **self.params()}, sort_keys=True,
                          separators=(",", ":"))

    @property
    def separation_label(self) -> str:
        """E.g. ``max``, ``softmax(beta=100)``, ``polynomial(n=10)``."""
        if self.sep_param is None:
            return self.separation
        name = SEP_PARAM_NAMES.get(self.separation, "param")
        return f"{self.separation}({name}={self.sep_param:g})"

    @classmethod
    def from_row(cls, row: dict) -> "Point":
        """The Point a stored row was measured at (ValueError naming the fields it lacks)."""
        from uhn.models.experiments.sweep import point_from_row
        return point_from_row(cls, row)


PARAM_NAMES = tuple(f.name for f in fields(Point))


# ----------------------------------------------------------------------------------------------
# one measurement
# ----------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _dataset(name: str, seed: int):
    from uhn.models.data import load_dataset
    ds = load_dataset(name, seed=seed)
    ds.X.setflags(write=False)
    return ds


def available_images(dataset: str) -> int:
    """Number of images in a dataset."""
    return _dataset(dataset, 0).n


def max_n(dataset: str, n_blocks: int) -> int:
    """Largest N such that n_blocks disjoint blocks of N images fit in the dataset.

    ValueError unless n_blocks is a whole number >= 1 (every sweep calls this first)."""
    if isinstance(n_blocks, bool) or not float(n_blocks).is_integer() or n_blocks < 1:
        raise ValueError(f"blocks must be a whole number >= 1, got {n_blocks!r}")
    return available_images(dataset) // int(n_blocks)


def effective_threshold(threshold: float, D: int, scaling: str = "per_value") -> float:
    """The threshold on sum (t - z)^2 used for D-value images.

    ``per_value``: threshold * D / 784, the same mean squared error per value as ``threshold`` on
    28x28 MNIST. ``official_inverse``: threshold * 784 / D, what the official code's
    ``normalize_error_threshold=True`` computes (stricter on larger images; its capacity runs left
    it off). ``none``: the threshold as given.
    """
    if scaling == "per_value":
        return threshold * D / 784.0
    if scaling == "official_inverse":
        return threshold * 784.0 / D
    if scaling == "none":
        return float(threshold)
    raise ValueError(f"threshold scaling must be one of {THRESHOLD_SCALINGS}, got {scaling!r}")


def _separation(point: Point):
    from uhn.models.separation import get_separation
    if point.sep_param is None:
        return get_separation(point.separation)
    if point.separation not in SEP_PARAM_NAMES:
        raise ValueError(f"separation {point.separation!r} takes no parameter, got {point.sep_param}")
    value = point.sep_param
    return get_separation(point.separation, **{SEP_PARAM_NAMES[point.separation]: value})


def validate(point: Point) -> None:
    """Raise ValueError for a point that can never be measured: unknown dataset, corruption,
    similarity (for its convention) or separation, bad separation parameter, a level out of its
    corruption's range (a fraction or probability in [0, 1], a noise std >= 0), or too few images.
    (Non-finite level / threshold / sep_param, a negative threshold or seed, N < 1 and a negative
    block are refused when the Point is made.)

    :func:`run` checks every point first, so a typo fails at once instead of being stored as a
    failed measurement.
    """
    from uhn.models.corruption import KINDS, corrupt
    from uhn.models.data import names as dataset_names
    from uhn.models.similarity import get_similarity
    if point.dataset not in dataset_names():
        raise ValueError(f"unknown dataset {point.dataset!r}; choose one of {dataset_names()}")
    if point.corruption not in KINDS:
        raise ValueError(f"unknown corruption {point.corruption!r}; choose one of {KINDS}")
    get_similarity(point.similarity, convention=point.convention)
    _separation(point)
    shape = _dataset(point.dataset, 0).image_shape
    try:  # the corruption's own range check, on one blank image
        corrupt(np.zeros(math.prod(shape)), point.corruption, point.level, shape)
    except (TypeError, ValueError) as err:
        raise ValueError(f"level {point.level:g} does not fit corruption {point.corruption!r}: "
                         f"{err}") from None
    n = available_images(point.dataset)
    if (point.block + 1) * point.n_memories > n:
        raise ValueError(f"block {point.block} of {point.n_memories} images needs "
                         f"{(point.block + 1) * point.n_memories} images; dataset {point.dataset!r} "
                         f"has {n}")


def _corruption_seed(seed: int, block: int, n_memories: int, corruption: str):
    """Seed of the random corruptions of one block: independent across seed, block and N."""
    tag = zlib.crc32(corruption.encode())
    return np.random.SeedSequence([seed, block, n_memories, tag])


def _problem_key(point: Point) -> tuple:
    """The parameters :func:`problem` depends on (not the similarity, separation or convention:
    every line of a curve shares the problems of its (N, block) points)."""
    return (point.dataset, point.seed, point.block, point.n_memories, point.corruption,
            point.level, point.associative)


def problem(point: Point):
    """The arrays of one measurement: (keys M, values P or None, queries Q, targets T, image_shape).

    Keys are block ``point.block`` of N images of the shuffled dataset; queries the corrupted keys;
    targets the values each query should retrieve. The arrays are read-only: the last two problems
    are kept (:func:`_problem`), so points that differ only in the similarity, separation or
    convention (run consecutively by :func:`run`) draw the corruption once.
    """
    return _problem(_problem_key(point))


@functools.lru_cache(maxsize=2)
def _problem(key: tuple):
    from uhn.models.corruption import corrupt, mask_rows
    dataset, seed, b, N, corruption, level, associative = key
    ds = _dataset(dataset, seed)
    if (b + 1) * N > ds.n:
        raise ValueError(f"block {b} of {N} images needs {(b + 1) * N} images; dataset "
                         f"{dataset!r} has {ds.n} (at most {ds.n // N} blocks of {N})")
    M = np.array(ds.X[b * N:(b + 1) * N])
    rng = np.random.default_rng(_corruption_seed(seed, b, N, corruption))
    Q = corrupt(M, corruption, level, ds.image_shape, seed=rng)
    if associative == "auto":
        P = None
    elif associative == "hetero":
        P = mask_rows(M, 0.5, ds.image_shape, side="top")  # the bottom halves, as the official code
    else:
        P = np.roll(M, -1, axis=0)  # key mu -> image mu + 1 (mod N)
    for a in (M, P, Q):
        if a is not None:
            a.setflags(write=False)
    T = M if P is None else P
    return M, P, Q, T, ds.image_shape


@functools.lru_cache(maxsize=2)
def _gram(key: tuple) -> Optional[np.ndarray]:
    """Q @ M.T of the problem ``key`` (read-only), computed once for the lines that score from it
    (dot, euclidean, squared_euclidean, the paper's dot: Similarity.gram), which the sweep runs
    consecutively (:func:`run`): one GEMM per (N, block) instead of one per line. None where the
    product overflows (entries ~1e154 and up): each line then takes its own overflow-safe path."""
    M, _, Q, _, _ = _problem(key)
    with np.errstate(over="ignore", invalid="ignore"):
        G = Q @ M.T
    if not all_finite(G, np):
        return None
    G.setflags(write=False)
    return G


#: failures of one query's retrieval that count it as wrong rather than stopping the measurement
QUERY_ERRORS = (ValueError, FloatingPointError, OverflowError)


def retrieval_errors(point: Point) -> tuple[np.ndarray, list[str]]:
    """sum_i (t_mu,i - z_mu,i)^2 for every query mu of the block (N,), one batched retrieval
    (similarities scored from Q @ M.T share the problem's product, :func:`_gram`).

    If the batch raises (e.g. an all-zero masked query under the paper_code dot product, which
    divides by the pixel sum), the queries are retrieved one by one and those that raise get an
    infinite error, i.e. count as wrong, as the official code's NaN output does. Returns the
    errors and the messages of the failed queries (empty when the batch succeeded).
    """
    from uhn.models.memory import Memory
    M, P, Q, T, _ = problem(point)
    mem = Memory(M, P, similarity=point.similarity, separation=_separation(point),
                 convention=point.convention)
    try:
        Z = mem.retrieve(Q, gram=_gram(_problem_key(point)) if mem.similarity.gram else None)
    except QUERY_ERRORS:
        err, failed = np.empty(len(Q)), []
        for i in range(len(Q)):
            try:
                z = mem.retrieve(Q[i])
            except QUERY_ERRORS as e:
                err[i] = np.inf
                failed.append(f"{type(e).__name__}: {e}")
            else:
                err[i] = float(((T[i] - z) ** 2).sum())
        return err, failed
    Z -= T
    return np.einsum("ij,ij->i", Z, Z), []


def evaluate(point: Point) -> dict:
    """Fraction of one block's corrupted images retrieved within the threshold.

    Returns a dict with ``fraction_correct``, ``n_correct``, ``n_queries``, ``threshold_used``
    (after rescaling for D), ``median_error`` / ``mean_error`` (of sum (t - z)^2 over the queries
    that did not fail), ``n_failed_queries`` (queries whose retrieval raised, counted wrong; the first
    message in ``query_error``) and ``seconds``. Errors outside retrieval (unknown names, too few
    images) are raised; :func:`run` records those instead of stopping.
    """
    t0 = time.perf_counter()
    err, failed = retrieval_errors(point)
    D = _dataset(point.dataset, point.seed).D
    thr = effective_threshold(point.threshold, D, point.threshold_scaling)
    correct = int(np.count_nonzero(err <= thr))
    ok = err[np.isfinite(err)]
    out = {"fraction_correct": correct / err.size, "n_correct": correct,
           "n_queries": int(err.size), "threshold_used": thr,
           "median_error": float(np.median(ok)) if ok.size else None,
           "mean_error": float(ok.mean()) if ok.size else None,
           "n_failed_queries": len(failed), "seconds": time.perf_counter() - t0}
    if failed:
        out["query_error"] = failed[0]
    return out


# ----------------------------------------------------------------------------------------------
# experiments: named sweeps of independent points
# ----------------------------------------------------------------------------------------------

#: experiment name -> (x parameter, line parameter, x on a log scale)
AXES = {
    "similarity_vs_n": ("n_memories", "similarity", True),
    "separation_vs_n": ("n_memories", "separation_label", True),
    "noise": ("level", "similarity", False),
    "mask_fraction": ("level", "similarity", False),
    "random_pixels": ("level", "similarity", False),
    "border": ("level", "similarity", False),
    "threshold": ("threshold", "similarity", False),
    "hetero": ("n_memories", "association", True),
}


def _ns(dataset: str, n_memories, blocks: int) -> list[int]:
    """The N list: the paper's N values up to what ``blocks`` disjoint blocks of the dataset allow
    (never empty), or the given ones, refused (naming the cap) if any does not fit."""
    cap = max_n(dataset, blocks)
    if cap < 1:
        raise ValueError(f"dataset {dataset!r} has {available_images(dataset)} images: not enough "
                         f"for {blocks} blocks")
    if n_memories is None:
        kept = [n for n in sorted(PAPER_N) if n <= cap]
        return kept or [cap]
    ns = sorted({int_param(n, "n_memories", low=1) for n in n_memories})
    too_many = [n for n in ns if n > cap]
    if too_many:
        raise ValueError(f"n_memories {too_many} do not fit: {blocks} disjoint blocks of dataset "
                         f"{dataset!r} ({available_images(dataset)} images) allow at most {cap} "
                         f"memories each; use fewer blocks or N <= {cap}")
    return ns


def _grid(base: Point, blocks: int, **axes) -> list[Point]:
    """Points for every combination of the given axes (dicts of overrides), times every block."""
    combos = [{}]
    for values in axes.values():
        combos = [{**c, **v} for c in combos for v in values]
    return [replace(base, **c, block=b) for c in combos for b in range(int(blocks))]


def _sims(similarities, convention, paper_dot=False):
    """Similarity overrides; ``paper_dot`` adds the official code's normalised dot product (the
    dot product the paper plotted) as a ``paper_code`` line beside a standard-convention sweep."""
    sims = list(similarities or PAPER_SIMILARITIES)
    out = [{"similarity": s, "convention": convention} for s in sims]
    if paper_dot and convention == "standard" and "dot" in sims:
        out.append({"similarity": "dot", "convention": "paper_code"})
    return out


def similarity_vs_n(dataset="mnist", n_memories=None, blocks=5, similarities=None,
                    corruption="gaussian", level=0.5, convention="standard", paper_dot=True,
                    threshold=PAPER_THRESHOLD, threshold_scaling="per_value", seed=0) -> list[Point]:
    """Capacity vs N per similarity, max separation (paper Fig. 2; N capped to fit the blocks).

    Default probe: Gaussian noise std 0.5, which is what the official code's sweep applied (its
    ``plot_capacity_graphs`` calls ``gaussian_perturb_image`` whatever perturbation it is given,
    and ``run_similarity_function_experiments`` passes sigma = 0.5). ``corruption="mask_bottom",
    level=0.5`` gives the halved-image probe instead. ``paper_dot`` adds the official normalised
    dot product (``dot [paper_code]``) beside the standard-convention lines.
    """
    base = Point(dataset=dataset, separation="max", corruption=corruption, level=level,
                 threshold=threshold, threshold_scaling=threshold_scaling, convention=convention,
                 seed=seed)
    return _grid(base, blocks, sim=_sims(similarities, convention, paper_dot),
                 n=[{"n_memories": n} for n in _ns(dataset, n_memories, blocks)])


#: separations of the paper's separation figure under the paper_code convention (scores are
#: sum-normalised reciprocal distances in (0, 1), so polynomials and softmax(beta ~ 1e2-1e3) sharpen)
PAPER_SEPARATIONS = (("identity", None), ("polynomial", 2), ("polynomial", 3), ("polynomial", 5),
                     ("polynomial", 10), ("softmax", 1), ("softmax", 10), ("softmax", 100),
                     ("softmax", 1000), ("max", None))
#: separations meaningful on the standard convention's negative distances: only the
#: shift-invariant ones (softmax, max); betas in units of 1/distance (MNIST manhattan distances
#: between neighbours differ by ~1-30)
STANDARD_SEPARATIONS = (("softmax", 0.01), ("softmax", 0.1), ("softmax", 1), ("softmax", 10),
                        ("max", None))


def separation_vs_n(dataset="mnist", n_memories=None, blocks=5, separations=None,
                    similarity="manhattan", corruption="mask_bottom", level=0.5,
                    convention="paper_code", threshold=PAPER_THRESHOLD,
                    threshold_scaling="per_value", seed=0) -> list[Point]:
    """Capacity vs N per separation, manhattan similarity (paper Fig. 3).

    Default convention ``paper_code``: identity and polynomial separations need positive scores
    (on the standard negative distances a rectified polynomial is 0 everywhere and the identity
    weights the farthest memories most). With ``convention="standard"`` the default separations
    are :data:`STANDARD_SEPARATIONS`. ``separations``: list of (name, param or None).
    """
    if separations is None:
        separations = PAPER_SEPARATIONS if convention == "paper_code" else STANDARD_SEPARATIONS
    base = Point(dataset=dataset, similarity=similarity, corruption=corruption, level=level,
                 threshold=threshold, threshold_scaling=threshold_scaling, convention=convention,
                 seed=seed)
    seps = [{"separation": s, "sep_param": p} for s, p in separations]
    return _grid(base, blocks, sep=seps,
                 n=[{"n_memories": n} for n in _ns(dataset, n_memories, blocks)])


def _level_experiment(name, corruption, default_levels, default_n, doc):
    """A capacity-vs-corruption-level experiment: max separation, N fixed, one line per similarity
    (the four level sweeps below differ only in the corruption, its levels and N)."""

    def sweep(dataset="mnist", n_memories=default_n, levels=None, blocks=5, similarities=None,
              convention="standard", threshold=PAPER_THRESHOLD, threshold_scaling="per_value",
              seed=0) -> list[Point]:
        n = min(default_n if n_memories is None else int(n_memories), max_n(dataset, blocks))
        base = Point(dataset=dataset, n_memories=n, separation="max", corruption=corruption,
                     threshold=threshold, threshold_scaling=threshold_scaling,
                     convention=convention, seed=seed)
        return _grid(base, blocks, sim=_sims(similarities, convention, paper_dot=True),
                     lvl=[{"level": float(v)} for v in (levels or default_levels)])

    sweep.__name__ = sweep.__qualname__ = name
    sweep.__doc__ = doc
    return sweep


noise = _level_experiment(
    "noise", "gaussian", PAPER_NOISE, 100,
    "Fraction correct vs Gaussian noise std, N = 100, max separation (paper Fig. 4 left).")
mask_fraction = _level_experiment(
    "mask_fraction", "mask_bottom", PAPER_FRACTIONS, 50,
    "Fraction correct vs fraction of bottom rows masked, N = 50, max separation (Fig. 4 right).")
random_pixels = _level_experiment(
    "random_pixels", "random_pixels", PAPER_FRACTIONS, 50,
    "Fraction correct vs probability of zeroing each pixel, N = 50, max separation.")
border = _level_experiment(
    "border", "border", PAPER_FRACTIONS, 50,
    "Fraction correct vs border (frame) fraction masked, N = 50, max separation.")


PAPER_THRESHOLDS = (0.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 80.0, 100.0, 150.0, 200.0)


def threshold(dataset="mnist", n_memories=100, thresholds=None, blocks=5, similarities=None,
              separation="max", sep_param=None, corruption="gaussian", level=0.5,
              convention="standard", paper_dot=True, threshold_scaling="per_value",
              seed=0) -> list[Point]:
    """Fraction correct vs the correctness threshold (paper appendix threshold sweep), N = 100."""
    n = min(int(n_memories), max_n(dataset, blocks))
    base = Point(dataset=dataset, n_memories=n, separation=separation, sep_param=sep_param,
                 corruption=corruption, level=level, threshold_scaling=threshold_scaling,
                 convention=convention, seed=seed)
    return _grid(base, blocks, sim=_sims(similarities, convention, paper_dot),
                 thr=[{"threshold": float(t)} for t in (thresholds or PAPER_THRESHOLDS)])


def hetero(dataset="mnist", n_memories=None, blocks=5, similarities=("dot", "manhattan"),
           associations=("auto", "hetero"), corruption="gaussian", level=0.3,
           convention="paper_code", threshold=PAPER_THRESHOLD, threshold_scaling="per_value",
           seed=0) -> list[Point]:
    """Autoassociative vs heteroassociative capacity vs N, max separation (paper Fig. 5).

    As the official code: keys = the images, values = their bottom halves (``hetero``), queries =
    the images with Gaussian noise (std 0.3), counted correct against the value; convention
    ``paper_code`` so ``dot`` is its normalised dot product.
    """
    base = Point(dataset=dataset, separation="max", corruption=corruption, level=level,
                 threshold=threshold, threshold_scaling=threshold_scaling, convention=convention,
                 seed=seed)
    return _grid(base, blocks, sim=_sims(similarities, convention),
                 assoc=[{"associative": a} for a in associations],
                 n=[{"n_memories": n} for n in _ns(dataset, n_memories, blocks)])


EXPERIMENTS: dict[str, Callable[..., list[Point]]] = {
    "similarity_vs_n": similarity_vs_n,
    "separation_vs_n": separation_vs_n,
    "noise": noise,
    "mask_fraction": mask_fraction,
    "random_pixels": random_pixels,
    "border": border,
    "threshold": threshold,
    "hetero": hetero,
}


def experiment(name: str, **kwargs) -> list[Point]:
    """The points of a named experiment (see :data:`EXPERIMENTS`), keyword overrides passed on."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {sorted(EXPERIMENTS)}")
    return EXPERIMENTS[name](**kwargs)




def _version() -> str:
    from uhn.version import __version__
    return __version__


def _row(point: Point, result: dict) -> dict:
    return {**point.params(), **result, "key": point.key(), "protocol": PROTOCOL,
            "version": _version(), "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _failure(message: str) -> dict:
    """A failed capacity row: no fraction, the message in ``error``."""
    return {"fraction_correct": None, "error": message}


def run(points: Iterable[Point], path=None, resume: bool = True,
        progress: Optional[Callable[[int, int, dict, bool], None]] = None,
        flush_seconds: float = 1.0, evaluate_fn: Callable[[Point], dict] = None,
        engine="local", no_worker_timeout: Optional[float] = None) -> list[dict]:
    """Evaluate points into the results store at ``path``; return their rows, in point order.

    A thin use of :func:`uhn.models.experiments.sweep.run` (which documents the engines, the store and resuming)
    with the capacity row form.

    Parameters
    ----------
    points : Points to measure (duplicates are measured once).
    path : JSON-lines file, or None to keep the rows in memory only. Rows of other points already
        in the file, or stored there by other runs while this one runs, are kept: every write
        merges by key under the store's lock (uhn.models.experiments.store). Every row holds all
        parameters of its point, its key, the result, the protocol revision, the package version
        and a timestamp.
    resume : reuse stored rows whose key matches, including rows other runs stored since this one
        started (nothing is recomputed); False recomputes every point and replaces its stored row.
    progress : ``progress(done, total, row, computed)`` after each point (``computed`` False when
        the row came from the store). An exception it raises (e.g. KeyboardInterrupt) stops the run
        after that point's row is stored.
    flush_seconds : new rows are merged into the file when this long has passed since the last
        write, and always when the run ends or is interrupted: an interruption loses at most the
        point in flight (a hard kill, at most ``flush_seconds`` of work).
    evaluate_fn : measurement function (default :func:`evaluate`).
    engine : ``"local"`` (in-process) or a ``distributed.Client`` (uhn.models.experiments.sweep.connect).
    no_worker_timeout : on a cluster, seconds without a live worker before the run stops with
        uhn.models.experiments.sweep.ClusterError (None: sweep.NO_WORKER_TIMEOUT).

    Every point is checked with :func:`validate`, and the store read, before anything runs
    (ValueError on a typo or an unreadable row, naming ``path:line``). Starting a run also removes
    leftover temporary files of killed writers.

    A point whose evaluation raises ValueError / FloatingPointError / OverflowError, or returns a
    non-finite number, is stored with ``fraction_correct`` null and the message in ``error`` (it is
    deterministic, so it is not retried on resume).
    """
    from uhn.models.experiments import sweep
    evaluate_fn = evaluate_fn or evaluate
    unique = list(dict.fromkeys(points))
    for p in unique:
        validate(p)
    cb = None
    if progress is not None:
        def cb(state: "sweep.Progress"):
            progress(state.done, state.total, state.row, state.computed)
    # measured grouped by problem, so the lines of one (N, block) share one corruption draw and
    # one Q @ M.T (the caches of _problem and _gram), largest N first: glibc's malloc raises its
    # mmap threshold when it frees a large block, so the smaller problems after it reuse the heap
    # instead of faulting in fresh pages for every array; the rows come back in point order
    first = {}
    for p in unique:
        first.setdefault(_problem_key(p), len(first))
    order = sorted(range(len(unique)),
                   key=lambda i: (-unique[i].n_memories, first[_problem_key(unique[i])]))
    rows = sweep.run([unique[i] for i in order], evaluate_fn, path, engine=engine, resume=resume,
                     progress=cb, flush_seconds=flush_seconds, errors=sweep.POINT_ERRORS,
                     failure=_failure, make_row=_row,
                     no_worker_timeout=no_worker_timeout or sweep.NO_WORKER_TIMEOUT)
    by_key = {r["key"]: r for r in rows}
    return [by_key[p.key()] for p in unique]


def recompute(row: dict, evaluate_fn: Callable[[Point], dict] = None) -> dict:
    """The row measured again from its fields alone: the Point it names
    (:meth:`Point.from_row`), evaluated here (default :func:`evaluate`), as the sealed row
    :func:`run` would store for it. ``sweep.comparable`` of the two rows are equal for a row of
    this :data:`PROTOCOL` (the measurement is a pure function of the point); a row of another
    protocol is measured under this one (and gets this protocol's key)."""
    from uhn.models.experiments import sweep
    point = Point.from_row(row)
    validate(point)
    return sweep.measure_row(point, evaluate_fn or evaluate, sweep.POINT_ERRORS, _failure, _row)


def select(rows: Iterable[dict], points: Iterable[Point]) -> list[dict]:
    """The rows (e.g. of uhn.models.experiments.store.load_results) measured at the given points,
    in point order."""
    by_key = {r.get("key"): r for r in rows}
    return [by_key[k] for k in dict.fromkeys(p.key() for p in points) if k in by_key]
