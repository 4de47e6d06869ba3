"""Query corruptions of the paper's capacity protocol (docs/theory.md section 10).

Each function takes flattened images X (B, D) or one image (D,), with ``image_shape`` (H, W) or
(H, W, C) (channels last, D = H*W*C), and returns a new float64 array of the same shape; the input
is never modified. Randomness comes only from ``seed`` (an int or a numpy Generator), drawn for the
whole batch at once. Counts of masked rows follow the official code of Millidge et al. (2022,
functions.py), which is what the published curves used:

* ``gaussian``: clip(|x + N(0, std^2)|, 0, 1).
* ``mask_bottom`` / ``mask_top``: the official code keeps the top int(H (1 - frac)) rows and zeroes
  the rest, so H - floor(H (1 - frac)) rows are zeroed (= ceil(H frac)); frac = 0.5 is the paper's
  halved image. ``mask_top`` zeroes the same number of rows from the top.
* ``random_pixels``: each pixel is zeroed, all its channels together, with probability prob.
* ``border``: zero a frame int(H frac / 2) rows deep at the top and bottom and int(W frac / 2)
  columns wide at the left and right.
"""
from __future__ import annotations

import math

import numpy as np

from uhn.models.validation import Seed, as_matrix
from uhn.models.validation import rng as _rng


KINDS = ("none", "gaussian", "mask_bottom", "mask_top", "random_pixels", "border")

#: tolerance on H*frac before taking a floor, so that e.g. 10*(1 - 0.9) = 0.9999999999999998 counts
#: as 1 row (the official code's plain int() would give 0 there; on 28/32/64-row images at levels
#: that are multiples of 0.05 both agree)
_FLOOR_TOL = 1e-9


def _floor(x: float) -> int:
    return int(math.floor(x + _FLOOR_TOL))


def _check_shape(image_shape, D: int) -> tuple:
    """(H, W, C) from image_shape (H, W) or (H, W, C); ValueError unless prod(image_shape) == D."""
    try:
        shape = tuple(int(s) for s in image_shape)
    except (TypeError, ValueError):
        raise ValueError(f"image_shape must be (H, W) or (H, W, C), got {image_shape!r}") from None
    if len(shape) not in (2, 3) or any(s < 1 for s in shape) or shape != tuple(image_shape):
        raise ValueError(f"image_shape must be (H, W) or (H, W, C) of positive ints, got {image_shape!r}")
    if math.prod(shape) != D:
        raise ValueError(f"image_shape {shape} holds {math.prod(shape)} values but the images have "
                         f"D = {D}")
    return shape if len(shape) == 3 else shape + (1,)


def _images(X, image_shape):
    """Validated float64 copy of X as (B, D), its (B, H, W, C) view, and whether X was one image."""
    A, single = as_matrix(X, "images")
    hwc = _check_shape(image_shape, A.shape[1])
    out = A.copy() if np.may_share_memory(A, X) else A  # as_matrix does not copy float64 input
    return out, out.reshape((out.shape[0],) + hwc), single


def _finish(out, single):
    return out[0] if single else out


def _check_level(value, name: str, upper: float | None = 1.0) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not np.isfinite(v) or v < 0 or (upper is not None and v > upper):
        rng = "[0, 1]" if upper is not None else ">= 0 and finite"
        raise ValueError(f"{name} must be {rng}, got {value!r}")
    return v


def gaussian_noise(X, std: float, seed: Seed = 0, image_shape=None) -> np.ndarray:
    """x' = clip(|x + e|, 0, 1), e ~ N(0, std^2) independently per value (std = 0: X, for X in [0, 1]).

    ``image_shape`` is optional (the noise ignores it); when given it is checked against D.
    """
    std = _check_level(std, "gaussian noise std", upper=None)
    A, single = as_matrix(X, "images")
    if image_shape is not None:
        _check_shape(image_shape, A.shape[1])
    out = A + _rng(seed).normal(0.0, std, size=A.shape)  # a fresh array: finish in place
    np.abs(out, out=out)
    np.clip(out, 0.0, 1.0, out=out)
    return _finish(out, single)


def masked_row_count(H: int, frac: float) -> int:
    """Rows zeroed by :func:`mask_rows`: H - floor(H (1 - frac)), as in the official code."""
    return H - _floor(H * (1.0 - frac))


def mask_rows(X, frac: float, image_shape, side: str = "bottom") -> np.ndarray:
    """Zero the last (side="bottom") or first (side="top") H - floor(H (1 - frac)) image rows.

    That count is the official code's (it keeps the top int(H (1 - frac)) rows), i.e. ceil(H frac)
    up to round-off: 9 of 28 rows at frac = 0.3, 14 at the paper's frac = 0.5. All channels.
    """
    frac = _check_level(frac, "mask fraction")
    if side not in ("bottom", "top"):
        raise ValueError(f"side must be 'bottom' or 'top', got {side!r}")
    out, img, single = _images(X, image_shape)
    k = masked_row_count(img.shape[1], frac)  # H - k <= H, so k = 0 slices nothing
    H = img.shape[1]
    if side == "bottom":
        img[:, H - k:] = 0.0
    else:
        img[:, :k] = 0.0
    return _finish(out, single)


def random_pixel_mask(X, prob: float, image_shape, seed: Seed = 0) -> np.ndarray:
    """Zero each pixel (all its channels together) independently with probability prob."""
    prob = _check_level(prob, "pixel mask probability")
    out, img, single = _images(X, image_shape)
    B, H, W, _ = img.shape
    mask = _rng(seed).random((B, H, W)) < prob
    img[mask] = 0.0
    return _finish(out, single)


def border_mask(X, frac: float, image_shape) -> np.ndarray:
    """Zero a frame of int(H frac / 2) rows at top and bottom and int(W frac / 2) columns at each side.

    As in the official code's ``image_inpaint`` (which uses H for both on square images); frac = 1
    zeroes an even-sided image completely, while a 25x25 image keeps its centre pixel (12 + 12 < 25).
    """
    frac = _check_level(frac, "border fraction")
    out, img, single = _images(X, image_shape)
    _, H, W, _ = img.shape
    kh, kw = _floor(H * frac / 2), _floor(W * frac / 2)
    if kh:
        img[:, :kh] = 0.0
        img[:, H - kh:] = 0.0
    if kw:
        img[:, :, :kw] = 0.0
        img[:, :, W - kw:] = 0.0
    return _finish(out, single)


def corrupt(X, kind: str, level: float, image_shape, seed: Seed = 0) -> np.ndarray:
    """Corrupt images by name: ``kind`` in KINDS, ``level`` its std, fraction or probability.

    ``none`` returns a validated copy (level ignored); ``gaussian``: std = level >= 0;
    ``mask_bottom`` / ``mask_top``: row fraction; ``random_pixels``: probability; ``border``:
    frame fraction (each in [0, 1]).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown corruption {kind!r}; choose one of {KINDS}")
    if kind == "none":
        out, _, single = _images(X, image_shape)
        return _finish(out, single)
    if kind == "gaussian":
        return gaussian_noise(X, level, seed=seed, image_shape=image_shape)
    if kind in ("mask_bottom", "mask_top"):
        return mask_rows(X, level, image_shape, side=kind[5:])
    if kind == "random_pixels":
        return random_pixel_mask(X, level, image_shape, seed=seed)
    return border_mask(X, level, image_shape)
