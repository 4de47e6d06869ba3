"""Checks of models/similarity.py values that a full mutation run (tools/mutate.py) left unchecked.

The minkowski default, the names and smoothness flags the integrators read, cosine on rows of any
magnitude (the rescaled route for tiny rows and the error naming all-zero rows), and the
euclidean / minkowski gradients at a memory and at distances below 1, on numpy and on the
array-API branch. Reference values are closed forms or explicit per-memory loops; tolerances are
round-off bounds of the quantity compared. See docs/testing.md ("Full runs with --select coverage").
"""
import numpy as np
import pytest

from uhn.models import get_similarity
from uhn.models.arrays import to_numpy

EPS = np.finfo(np.float64).eps


def test_minkowski_default_p_is_two():
    """-(3^p + 4^p)^(1/p) is -5 exactly for p = 2 (and about -4.50 for p = 3)."""
    sim = get_similarity("minkowski")
    assert sim.name == "minkowski(p=2)"
    assert sim(np.zeros((1, 2)), np.array([[3.0, 4.0]]))[0, 0] == -5.0


@pytest.mark.parametrize("name, params, label, smooth", [
    ("euclidean", {}, "euclidean", False),
    ("euclidean", {"eps": 0.5}, "euclidean(eps=0.5)", True),
    ("minkowski", {"p": 3}, "minkowski(p=3)", False),
    ("minkowski", {"p": 3, "eps": 0.5}, "minkowski(p=3, eps=0.5)", True),
    ("manhattan", {"eps": 0.5}, "manhattan(eps=0.5)", True),
])
def test_distance_names_and_smoothness(name, params, label, smooth):
    """The name says the parameters (results and figures are labelled by it); ``smooth`` is False
    exactly when eps = 0 (a kink at every memory: integrate refuses stiff solvers on it), True for
    any eps > 0, including eps < 1."""
    sim = get_similarity(name, **params)
    assert sim.name == label and sim.smooth is smooth


def test_cosine_error_names_the_all_zero_rows():
    """Rows 0 (entries 1e-200: its norm underflows) and 2 (all zero) both take the rescaled route;
    only row 2 is all zero, and the error names it."""
    M = np.array([[1e-200, 0.0], [1.0, 2.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match=r"all-zero memories \(rows \[2\]\)"):
        get_similarity("cosine")(M, np.ones((1, 2)))


def _cos_closed_form(M, Q):
    return np.array([[m @ q / np.sqrt((m @ m) * (q @ q)) for m in M] for q in Q])


def test_cosine_of_rows_of_any_magnitude(as_array):
    """One batch with a tiny query (entries 2^-540 ~ 3e-163: squares underflow), a query of norm
    0.5 and one with a zero entry: every score equals the closed form of the unscaled rows to the
    round-off of a normalised dot product, (D + 4) eps (D = 3)."""
    M = np.array([[1.0, 0.0, 2.0], [0.0, 3.0, 4.0], [2.0, -1.0, 1.0]])
    Q = np.array([[1.0, 1.0, 0.0], [0.3, 0.4, 0.0], [1.0, -2.0, 2.0]])
    Qin = Q.copy()
    Qin[0] *= 2.0**-540                       # exact: cosine is scale invariant
    S = get_similarity("cosine")(as_array(M), as_array(Qin))
    np.testing.assert_allclose(to_numpy(S), _cos_closed_form(M, Q), rtol=0, atol=7 * EPS)


def test_cosine_gradient_of_a_tiny_state_scales_as_one_over_its_norm():
    """dS_mu/dg = M^_mu/|g| - S_mu g/|g|^2 is homogeneous of degree -1: at g 2^-540 (norm underflows,
    the rescaled route) it is 2^540 times the gradient at g, to the round-off of both routes:
    2 (D + 4) eps (|F| |M^| + |F S| |g^|) / |g| per entry."""
    rng = np.random.default_rng(3)
    M, G, F = rng.standard_normal((5, 4)), rng.standard_normal((2, 4)), rng.standard_normal((2, 5))
    sim = get_similarity("cosine")
    ref = sim.vjp(M, G, F)
    tiny = sim.vjp(M, G * 2.0**-540, F) * 2.0**-540
    Mh = M / np.linalg.norm(M, axis=1, keepdims=True)
    gn = np.linalg.norm(G, axis=1, keepdims=True)
    S = (G / gn) @ Mh.T
    bound = 2 * 8 * EPS * (np.abs(F) @ np.abs(Mh) + np.abs(F * S).sum(1, keepdims=True) * np.abs(G / gn)) / gn
    assert np.all(np.abs(tiny - ref) <= bound)


def _loop_vjp(M, G, F, p):
    """sum_mu F_mu dS_mu/dg with dS_mu/dg_i = -|g_i - M_mu,i|^(p-1) sign(g_i - M_mu,i) / |g - M_mu|_p^(p-1),
    term by term; a memory at distance 0 contributes 0 (its subgradient)."""
    out = np.zeros_like(G)
    for b in range(G.shape[0]):
        for mu in range(M.shape[0]):
            x = G[b] - M[mu]
            r = np.sum(np.abs(x) ** p) ** (1.0 / p)
            if r > 0:
                out[b] -= F[b, mu] * np.abs(x) ** (p - 1) * np.sign(x) / r ** (p - 1)
    return out


@pytest.mark.parametrize("name, params, p", [("euclidean", {}, 2.0), ("minkowski", {"p": 3}, 3.0)])
def test_distance_gradient_at_a_memory_and_below_unit_distance(name, params, p, as_array):
    """State 0 sits on memory 1 (distance 0: that memory's term is 0, not NaN); everything is scaled
    by 1/100 so every other distance is below 1. The gradient contraction equals the per-memory
    loop. Error bound: the GEMM route of |g - M_mu|^2 loses (D + 3) eps (|g|^2 + |M_mu|^2) to
    cancellation, a relative (D + 3) eps (|g|^2 + |M_mu|^2) / r_mu^2 in r^2 (p = 2; the minkowski
    p-power sums lose only (D + 3) eps relative); each term is bounded by |F_mu|, so the sum
    within sum_mu |F_mu| (that relative error + 8 eps), times 2 for both sides."""
    rng = np.random.default_rng(5)
    D = 6
    M = rng.standard_normal((4, D)) / 100
    G = rng.standard_normal((3, D)) / 100
    G[0] = M[1]
    F = rng.standard_normal((3, 4))
    sim = get_similarity(name, **params)
    got = to_numpy(sim.vjp(as_array(M), as_array(G), as_array(F)))
    assert np.all(np.isfinite(got))
    r2 = ((G[:, None, :] - M[None, :, :]) ** 2).sum(-1)
    big = (G ** 2).sum(1)[:, None] + (M ** 2).sum(1)[None, :]
    rel = np.where(r2 > 0, (D + 3) * EPS * (big / np.where(r2 > 0, r2, 1.0) if p == 2 else 1.0), 0.0)
    bound = 2 * (np.abs(F) * (rel + 8 * EPS)).sum(1, keepdims=True)
    assert np.all(np.abs(got - _loop_vjp(M, G, F, p)) <= bound)
