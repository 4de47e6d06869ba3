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


@pytest.fixture(scope="session")
def to_strict():
    """to_strict(a): a as a float64 array-api-strict array on that library's second device
    ("device1": results must follow their inputs there). Skips the test, and only that test,
    where array-api-strict is not installed."""
    xps = pytest.importorskip("array_api_strict")
    dev = xps.Device("device1")
    return lambda a: xps.asarray(np.asarray(a, dtype=np.float64), device=dev)


@pytest.fixture(params=["numpy", "strict"])
def as_array(request):
    """as_array(a): a test using it runs twice, on numpy arrays (np.asarray) and on array-api-strict
    ones (:func:`to_strict`; that run alone skips where array-api-strict is not installed)."""
    return np.asarray if request.param == "numpy" else request.getfixturevalue("to_strict")


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


EPS = np.finfo(np.float64).eps


def _score_err(name, convention, A, Q, **params):
    """Round-off bound (B, N) on sim(A, Q) as uhn.models.similarity computes it, for tolerances.

    A sum of D products is off by at most (D + 2) eps times the sum of its absolute terms (first
    order; 2 for the products and the last operation). GEMM squared distances lose (D + 2) eps
    (|q| + |m|)^2 however close q and m are; a distance d then min(err/(2d), sqrt(err)). The
    reciprocal paper_code forms carry their denominator's relative error; 1/KL carries
    err(KL)/|KL|, unbounded as KL -> 0 (returned as inf: callers assume it away).
    """
    D = A.shape[1]
    g = (D + 4) * EPS
    nq, nm = np.linalg.norm(Q, axis=1)[:, None], np.linalg.norm(A, axis=1)[None, :]
    from uhn.models import get_similarity
    S = get_similarity(name, convention=convention, **params)(A, Q)
    if convention == "paper_code":
        if name in ("kl", "reverse_kl"):
            from uhn.models.similarity import KL_EPS
            xh, zh = A / A.sum(1, keepdims=True), Q / Q.sum(1, keepdims=True)
            p, r = (zh[:, None, :], xh[None, :, :]) if name == "reverse_kl" else (xh[None, :, :], zh[:, None, :])
            lp, lr = np.log(p + KL_EPS), np.log(r + KL_EPS)
            kl, T = (p * (lp - lr)).sum(-1), (p * (np.abs(lp) + np.abs(lr))).sum(-1)
            err = g * T
            return np.where(np.abs(kl) > 2 * err, np.abs(S) * err / np.maximum(np.abs(kl), 1e-300), np.inf)
        return g * np.abs(S)  # positive terms (reciprocal distances, normalised dot of positive data)
    if name == "dot":
        return g * (np.abs(Q) @ np.abs(A).T)
    if name == "cosine":
        return 2 * g * np.ones_like(S)
    if name in ("squared_euclidean", "euclidean"):
        sq = g * (nq + nm) ** 2
        # (smoothed form: -S = sqrt(d^2 + eps^2) - eps understates the sqrt's argument, so this is larger)
        return sq if name == "squared_euclidean" else np.minimum(sq / (2 * np.maximum(-S, 1e-300)), np.sqrt(sq))
    if name in ("manhattan", "minkowski"):
        return 2 * g * np.abs(S)  # positive terms, then a p-th root
    if name == "hamming":
        return np.zeros_like(S)  # integer counts, exact
    if name in ("kl", "reverse_kl"):
        from uhn.models.similarity import KL_EPS
        # |log p^_j| <= log(sum(x + eps)/eps) for each normalised entry, two sums of weight 1
        tot = max(A.sum(1).max(), Q.sum(1).max()) + D * KL_EPS
        return 2 * g * np.log(tot / KL_EPS) * np.ones_like(S)
    raise KeyError(name)


@pytest.fixture(scope="session")
def score_err():
    """score_err(name, convention, A, Q, **params): round-off bound (B, N) on the scores."""
    return _score_err


def _softmax_leak(S, beta, P):
    """Bound (B,) on |z - P[argmax]| for z = P^T softmax(beta S) (rows of S): every non-maximal
    weight is at most exp(-beta (S_max - S_nu)), and moving it onto the maximum changes z by at
    most 2 max|P| per unit; plus the product's own round-off (N + 4) eps max|P|."""
    gaps = S.max(1, keepdims=True) - S
    leak = np.exp(-beta * gaps).sum(1) - 1.0  # the maximum contributes exp(0) = 1
    pmax = np.abs(P).max()
    return 2 * pmax * np.maximum(leak, 0.0) + (S.shape[1] + 4) * EPS * pmax


@pytest.fixture(scope="session")
def softmax_leak():
    """softmax_leak(S, beta, P): bound on how far softmax retrieval lies from the best memory's value."""
    return _softmax_leak


@pytest.fixture
def linear_net():
    """M = I_2, dot similarity, quadratic L_v and L_h (g = v, f = h), tau_v = 2, tau_h = 1/2:
    dv/dt = (h M - v) / 2, dh/dt = (M v - h) / (1/2), exact in floating point for small integers."""
    from uhn.dynamics import lagrangians as L
    from uhn.dynamics.network import Network
    return Network(np.eye(2), similarity="dot", L_h=L.quadratic(), tau_v=2.0, tau_h=0.5)
