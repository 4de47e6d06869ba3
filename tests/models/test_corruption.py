"""Corruptions: exact masked counts and places, noise statistics, seeding, no aliasing, bad input."""
import numpy as np
import pytest
from hypothesis import given, strategies as st
from numpy.testing import assert_array_equal
from scipy import integrate, stats

from uhn.models.corruption import (KINDS, border_mask, corrupt, gaussian_noise, mask_rows,
    masked_row_count, random_pixel_mask)

shapes = st.tuples(st.integers(1, 20), st.integers(1, 20), st.sampled_from([None, 1, 3])).map(
    lambda t: t[:2] if t[2] is None else t)
fracs = st.floats(0.0, 1.0)


def _images(seed, B, shape):
    """B images with every value in [0.05, 1]: a zero in the output was written by the corruption."""
    return np.random.default_rng(seed).uniform(0.05, 1.0, size=(B, int(np.prod(shape))))


def _hwc(Y, shape):
    return Y.reshape((Y.shape[0],) + tuple(shape) + ((1,) if len(shape) == 2 else ()))


# ------------------------------------------------------------------------------ row masking
@pytest.mark.parametrize("H,frac,rows", [(28, 0.5, 14), (28, 0.3, 9), (28, 0.7, 20), (28, 0.1, 3),
                                         (32, 0.1, 4), (28, 0.0, 0), (28, 1.0, 28), (10, 0.9, 9),
                                         (25, 0.5, 13)])
def test_masked_row_count_table(H, frac, rows):
    assert masked_row_count(H, frac) == rows


@pytest.mark.parametrize("H", [28, 32, 64])
def test_masked_row_count_matches_official_code(H):
    # the official code keeps rows [0, int(H * (1 - frac))) and zeroes the rest
    for k in range(21):
        frac = k / 20
        assert masked_row_count(H, frac) == H - int(H * (1 - frac))


@given(shape=shapes, frac=fracs, side=st.sampled_from(["bottom", "top"]), seed=st.integers(0, 99))
def test_mask_rows_exact(shape, frac, side, seed):
    X = _images(seed, 3, shape)
    Y = mask_rows(X, frac, shape, side=side)
    H = shape[0]
    k = masked_row_count(H, frac)
    zero_rows = np.flatnonzero((_hwc(Y, shape) == 0).all(axis=(0, 2, 3)))
    expected = np.arange(H - k, H) if side == "bottom" else np.arange(k)
    assert_array_equal(zero_rows, expected)
    keep = np.ones(H, bool)
    keep[expected] = False
    assert_array_equal(_hwc(Y, shape)[:, keep], _hwc(X, shape)[:, keep])  # nothing else touched
    assert (Y == 0).sum() == 3 * k * int(np.prod(shape)) // H


def test_mask_bottom_half_colour():
    X = _images(0, 2, (32, 32, 3))
    Y = _hwc(corrupt(X, "mask_bottom", 0.5, (32, 32, 3)), (32, 32, 3))
    assert (Y[:, 16:] == 0).all() and (Y[:, :16] > 0).all()
    Y = _hwc(corrupt(X, "mask_top", 0.5, (32, 32, 3)), (32, 32, 3))
    assert (Y[:, :16] == 0).all() and (Y[:, 16:] > 0).all()


# ------------------------------------------------------------------------------ pixel masking
def test_random_pixels_all_channels_and_rate():
    shape = (64, 64, 3)
    X = _images(1, 4, shape)
    for p in (0.1, 0.5, 0.9):
        Y = _hwc(random_pixel_mask(X, p, shape, seed=7), shape)
        zero = Y == 0
        assert_array_equal(zero.all(-1), zero.any(-1))  # a pixel loses all its channels or none
        frac = zero.all(-1).mean()
        assert abs(frac - p) < 4 * np.sqrt(p * (1 - p) / (4 * 64 * 64))
        assert_array_equal(Y[~zero], _hwc(X, shape)[~zero])  # the rest untouched
    m = _hwc(random_pixel_mask(X, 0.5, shape, seed=7), shape)[..., 0] == 0
    assert not np.array_equal(m[0], m[1])  # each image of the batch draws its own mask


def test_random_pixels_extremes_and_seed():
    X = _images(2, 3, (8, 8))
    assert_array_equal(random_pixel_mask(X, 0.0, (8, 8)), X)
    assert (random_pixel_mask(X, 1.0, (8, 8)) == 0).all()
    a = random_pixel_mask(X, 0.5, (8, 8), seed=3)
    assert_array_equal(a, random_pixel_mask(X, 0.5, (8, 8), seed=3))
    assert_array_equal(a, random_pixel_mask(X, 0.5, (8, 8), seed=np.random.default_rng(3)))
    assert not np.array_equal(a, random_pixel_mask(X, 0.5, (8, 8), seed=4))


# ------------------------------------------------------------------------------ border
@given(shape=shapes, frac=fracs, seed=st.integers(0, 99))
def test_border_exact_frame(shape, frac, seed):
    X = _images(seed, 2, shape)
    Y = _hwc(border_mask(X, frac, shape), shape)
    H, W = shape[:2]
    kh, kw = int(H * frac / 2 + 1e-9), int(W * frac / 2 + 1e-9)
    r, c = np.indices((H, W))
    frame = (r < kh) | (r >= H - kh) | (c < kw) | (c >= W - kw)
    assert_array_equal((Y == 0).all(axis=(0, 3)), frame)
    assert (Y[:, frame] == 0).all()
    assert_array_equal(Y[:, ~frame], _hwc(X, shape)[:, ~frame])


def test_border_counts():
    X = _images(0, 1, (28, 28))
    assert (border_mask(X, 0.5, (28, 28)) == 0).sum() == 28 * 28 - 14 * 14  # 7 on each side
    x = _images(0, 1, (25, 25))[0]
    Y = border_mask(x, 1.0, (25, 25)).reshape(25, 25)  # 12 on each side: the centre pixel survives
    assert (Y != 0).sum() == 1 and Y[12, 12] == x[12 * 25 + 12]
    Y = border_mask(_images(0, 1, (8, 20)), 0.5, (8, 20)).reshape(8, 20)  # 2 rows, 5 columns
    assert (Y[2:6, 5:15] != 0).all() and (Y == 0).sum() == 8 * 20 - 4 * 10


# ------------------------------------------------------------------------------ gaussian noise
def test_gaussian_range_and_std_zero():
    X = _images(0, 5, (28, 28))
    X[0, :10] = 0.0
    X[1, :10] = 1.0
    assert_array_equal(gaussian_noise(X, 0.0), X)
    for std in (0.1, 0.5, 3.0):
        Y = gaussian_noise(X, std, seed=1)
        assert Y.min() >= 0 and Y.max() <= 1 and Y.shape == X.shape
        assert not np.array_equal(Y, X)


def test_gaussian_statistics():
    X = np.full((50, 1000), 0.5)
    d = gaussian_noise(X, 0.05, seed=0) - X  # clipping almost never active 10 sd away
    assert abs(d.mean()) < 0.001 and abs(d.std() - 0.05) < 0.001
    # from black: clip(|N(0, s^2)|, 0, 1) has mean int_0^1 P(s|Z| > t) dt = int_0^1 2 (1 - Phi(t / s)) dt
    s = 0.5
    expect = integrate.quad(lambda t: 2 * stats.norm.sf(t / s), 0, 1)[0]
    Y = gaussian_noise(np.zeros((50, 1000)), s, seed=1)
    assert abs(Y.mean() - expect) < 0.005
    assert abs((Y == 1).mean() - 2 * stats.norm.sf(1 / s)) < 0.005
    assert_array_equal(Y, gaussian_noise(np.zeros((50, 1000)), s, seed=1))
    assert not np.array_equal(Y, gaussian_noise(np.zeros((50, 1000)), s, seed=2))


# ------------------------------------------------------------------------------ dispatch, copies
@pytest.mark.parametrize("kind", KINDS)
def test_input_untouched_and_fresh_output(kind):
    X = _images(0, 4, (6, 5, 3))
    before = X.copy()
    Y = corrupt(X, kind, 0.5, (6, 5, 3), seed=1)
    assert_array_equal(X, before)
    assert Y.dtype == np.float64 and Y.shape == X.shape and not np.shares_memory(X, Y)
    y = corrupt(X[2], kind, 0.5, (6, 5, 3), seed=1)  # one image in, one image out
    assert y.shape == (90,) and not np.shares_memory(X, y)
    assert_array_equal(X, before)


@pytest.mark.parametrize("kind", ["mask_bottom", "mask_top", "border", "none"])
def test_batch_equals_loop(kind):
    X = _images(3, 5, (9, 7))
    Y = corrupt(X, kind, 0.4, (9, 7))
    assert_array_equal(Y, np.stack([corrupt(x, kind, 0.4, (9, 7)) for x in X]))


def test_dispatch_matches_functions():
    X, shape = _images(4, 3, (10, 10)), (10, 10)
    assert_array_equal(corrupt(X, "gaussian", 0.3, shape, seed=5), gaussian_noise(X, 0.3, seed=5))
    assert_array_equal(corrupt(X, "mask_top", 0.3, shape), mask_rows(X, 0.3, shape, side="top"))
    assert_array_equal(corrupt(X, "random_pixels", 0.3, shape, seed=5), random_pixel_mask(X, 0.3, shape, seed=5))
    assert_array_equal(corrupt(X, "border", 0.3, shape), border_mask(X, 0.3, shape))
    assert_array_equal(corrupt(X, "none", 0.3, shape), X)


def test_integer_images_become_float():
    X = np.ones((2, 16), dtype=np.uint8)
    Y = corrupt(X, "mask_bottom", 0.5, (4, 4))
    assert Y.dtype == np.float64 and Y.sum() == 16


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kind,level", [("mask_bottom", 1.5), ("mask_top", -0.1), ("border", np.nan),
                                        ("random_pixels", 2.0), ("gaussian", -1.0), ("gaussian", np.inf)])
def test_bad_levels(kind, level):
    with pytest.raises(ValueError, match="must be"):
        corrupt(np.zeros((1, 4)), kind, level, (2, 2))


def test_bad_input():
    X = np.zeros((2, 100))
    with pytest.raises(ValueError, match=r"image_shape \(28, 28\) holds 784 values but the images have D = 100"):
        corrupt(X, "mask_bottom", 0.5, (28, 28))
    with pytest.raises(ValueError, match="D = 100"):
        corrupt(X, "gaussian", 0.5, (28, 28))  # checked even though the noise ignores the shape
    with pytest.raises(ValueError, match=r"\(H, W\) or \(H, W, C\)"):
        corrupt(X, "border", 0.5, (100,))
    with pytest.raises(ValueError, match=r"\(H, W\) or \(H, W, C\)"):
        corrupt(X, "border", 0.5, (10, 10.5))
    with pytest.raises(ValueError, match=r"unknown corruption 'blur'.*'gaussian'"):
        corrupt(X, "blur", 0.5, (10, 10))
    with pytest.raises(ValueError, match="side must be"):
        mask_rows(X, 0.5, (10, 10), side="left")
    X[1, 3] = np.nan
    for kind in KINDS:
        with pytest.raises(ValueError, match="NaN"):
            corrupt(X, kind, 0.5, (10, 10))
    with pytest.raises(TypeError, match="seed"):
        random_pixel_mask(np.zeros(4), 0.5, (2, 2), seed=0.5)
    with pytest.raises(ValueError, match="dimensions"):
        corrupt(np.zeros((2, 2, 4)), "none", 0, (2, 2))
