"""Shared fixtures: seeded generators, pattern helpers and small offline data (no downloads)."""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# Hypothesis profiles. No per-example deadline anywhere: the suite shares a small, busy machine.
#   "ci"        derandomized: the same 15 examples every run, so a red CI run is reproducible
#               (selected when the environment variable CI is set, as .ci/run does);
#   "dev"       15 fresh random examples per test (the default for local runs);
#   "thorough"  500 fresh random examples per test, to hunt for failures locally.
# HYPOTHESIS_PROFILE=<name> overrides the choice.
_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=15, derandomize=True, print_blob=True, **_COMMON)
settings.register_profile("dev", max_examples=15, **_COMMON)
settings.register_profile("thorough", max_examples=500, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def _bipolar(rng, n, d):
    """n random patterns in {-1, 1}^d."""
    return rng.choice([-1.0, 1.0], size=(n, d))


def _flip(rng, X, frac):
    """Copy of bipolar X with exactly round(frac * D) entries of every row negated."""
    X = np.array(X, dtype=float)
    k = int(round(frac * X.shape[1]))
    for row in X:
        row[rng.choice(X.shape[1], k, replace=False)] *= -1
    return X


@pytest.fixture
def bipolar():
    """bipolar(rng, n, d): random {-1, 1} patterns."""
    return _bipolar


@pytest.fixture
def flip():
    """flip(rng, X, frac): bipolar X with a fraction frac of each row's entries negated."""
    return _flip


@pytest.fixture(scope="session")
def digits():
    """sklearn's 8x8 digits (ship offline) scaled to [0, 1]: (1797, 64), values k/16."""
    from sklearn.datasets import load_digits
    return load_digits().data / 16.0
