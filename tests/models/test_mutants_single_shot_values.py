"""Closed-form checks of single-shot values that mutation testing (tools/mutate.py) found unchecked.

Each test pins a value the docstrings promise, on inputs where it is known exactly (dyadic
numbers, one-hot weights, distances of a single non-zero coordinate), so a wrong sign, a flipped
comparison, a changed default or a max/min swap in models/ changes a number asserted here.
See docs/testing.md for the run that found them.
"""
import numpy as np
import pytest

from uhn.models import Memory, get_separation, get_similarity
from uhn.models.memory import sparse_distributed_memory
from uhn.models.similarity import names

EPS = np.finfo(np.float64).eps


# ---------------------------------------------------------------------------------- separation
def test_threshold_default_theta_is_zero_and_includes_the_boundary():
    """sep(S)_mu = 1 if S_mu >= theta else 0, theta = 0 by default: a score equal to theta counts."""
    W = get_separation("threshold")(np.array([-1.0, -2.0**-1074, 0.0, 0.5]))
    np.testing.assert_array_equal(W, [0.0, 0.0, 1.0, 1.0])
    W = get_separation("threshold", theta=-3.0)(np.array([-3.0, -3.5]))
    np.testing.assert_array_equal(W, [1.0, 0.0])


@pytest.mark.parametrize("n", [1.0, 1.5])
def test_polynomial_of_degree_at_least_one_has_a_lagrangian(n):
    """Convex Lagrangian max(h, 0)^(n+1)/(n+1) for every n >= 1, not only integers >= 2."""
    sep = get_separation("polynomial", n=n)
    assert sep.lagrangian == "rectified_polynomial" and sep.no_energy == ""
    assert get_separation("polynomial", n=0.5).lagrangian is None


def test_polynomial_default_degree_is_two():
    """sep(S) = max(S, 0)^n with n = 2 by default (the docstring's default; a changed default
    survived a full mutation run of separation.py): exact on dyadic scores."""
    sep = get_separation("polynomial")
    np.testing.assert_array_equal(sep(np.array([[-1.5, 0.0, 0.5, 3.0]])), [[0.0, 0.0, 0.25, 9.0]])
    assert sep.name == "polynomial(n=2)"
    signed = get_separation("polynomial", rectified=False)
    np.testing.assert_array_equal(signed(np.array([[-1.5, 0.5]])), [[-2.25, 0.25]])


def test_k_max_weights_are_one_over_k_on_the_top_k():
    """Uniform 1/k on the k largest scores (ties to the lower index): for k = 4 exactly 0.25
    (a power of two, so exact), 0 elsewhere, summing to 1."""
    S = np.array([[5.0, 1.0, 4.0, 2.0, 3.0, 0.0]])
    W = get_separation("k_max", k=4)(S)
    np.testing.assert_array_equal(W, [[0.25, 0.0, 0.25, 0.25, 0.25, 0.0]])
    W = get_separation("k_max", k=4)(np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]))
    np.testing.assert_array_equal(W, [[0.0, 0.0, 0.25, 0.25, 0.25, 0.25]])


def test_top_k_names():
    """k = 1 is the paper's "max"; larger k carry their k (result files are keyed by these names)."""
    assert get_separation("max").name == "max" and get_separation("k_max", k=1).name == "max"
    assert get_separation("k_max", k=2).name == "k_max(k=2)"


def test_softmax_shifts_by_the_row_maximum():
    """exp(beta S) / sum exp(beta S) with the maximum shifted out: scores 1000 apart give the
    one-hot [1, 0] exactly (exp(-1000) underflows to 0); shifting by anything smaller would make
    exp overflow to inf and the weights NaN."""
    W = get_separation("softmax", beta=1.0)(np.array([[0.0, -1000.0], [-5000.0, 700.0]]))
    np.testing.assert_array_equal(W, [[1.0, 0.0], [0.0, 1.0]])


# ---------------------------------------------------------------------------------- similarity
def test_similarity_names_per_convention():
    assert names("paper_code") == ["dot", "euclidean", "manhattan", "kl", "reverse_kl"]
    assert names() == names("standard")
    assert "cosine" in names() and "cosine" not in names("paper_code")


@pytest.mark.parametrize("name", ["euclidean", "manhattan"])
def test_distances_near_the_float64_maximum(name, score_err):
    """M = [1.5e308, 0], q = [1.4e308, 0]: the distance 1e307 is representable although its
    square (and the memory's) overflows; rescaling by the power of two 2^1023 (exact) gives it
    within the round-off bound of the score (tests/conftest.py score_err: the GEMM form of the
    squared distance loses (D + 4) eps (|q| + |m|)^2, which the sqrt divides by 2 d)."""
    M, Q = np.array([[1.5e308, 0.0]]), np.array([[1.4e308, 0.0]])
    S = get_similarity(name)(M, Q)
    s = 2.0**1023  # the power of two that the bound is computed at (exact rescaling)
    exact = -(1.5e308 - 1.4e308)
    assert abs(S[0, 0] - exact) <= s * score_err(name, "standard", M / s, Q / s)[0, 0]
    # a large memory against a unit query and the reverse: the rescaling must come from the
    # largest entry of either array
    big, unit = np.array([[1e300, 0.0]]), np.array([[1.0, 0.0]])
    s = 2.0**996  # 1e300 = f 2^997, f in [1/2, 1)
    for M, Q in ((big, unit), (unit, big)):
        S = get_similarity(name)(M, Q)
        assert abs(S[0, 0] - (-1e300)) <= s * score_err(name, "standard", M / s, Q / s)[0, 0]


def test_euclidean_distance_of_tiny_vectors_does_not_underflow():
    """M = [1e-200, 0], q = [0, 1e-200]: the squares 1e-400 underflow to 0, so the direct GEMM
    form gives a false match 0; the rescaled computation gives -sqrt(2) 1e-200 to a few ulps
    (the scale is a power of two: exact; GEMM and sqrt add (D + 4) eps relative at most)."""
    S = get_similarity("euclidean")(np.array([[1e-200, 0.0]]), np.array([[0.0, 1e-200]]))
    exact = -np.sqrt(2.0) * 1e-200
    assert abs(S[0, 0] - exact) <= 6 * EPS * abs(exact)


# ---------------------------------------------------------------------------------- memory
def test_iterate_continues_while_any_entry_moves():
    """Dot / max retrieval from a query that differs from memory 0 in one entry: step 1 moves that
    entry only (the rest already agree), step 2 retrieves the same memory and nothing moves:
    two steps, converged. 'moved' must mean the largest change exceeds tol, not the smallest."""
    M = np.array([[1.0, 1.0, 1.0, 1.0], [1.0, -1.0, 1.0, -1.0]])
    q = np.array([1.0, 1.0, 1.0, 0.0])
    res = Memory(M, similarity="dot", separation="max").iterate(q)
    np.testing.assert_array_equal(res.states, M[0])
    assert res.steps == 2 and res.converged


def test_sdm_majority_output_needs_more_than_half_the_votes():
    """Sparse distributed memory on {0,1} data with every memory in range (radius = D): bit i is
    on where more than half of the 4 voting memories have it on: 3 of 4 -> 1, 2 of 4 -> 0 (not
    more than half), 1 of 4 -> 0."""
    M = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 1], [0, 0, 1, 0]], dtype=float)
    z = sparse_distributed_memory(M, radius=4.0).retrieve(np.zeros(4))
    np.testing.assert_array_equal(z, [1.0, 0.0, 0.0, 0.0])


def test_paper_kl_is_floored_exactly_within_its_round_off_bound():
    """paper_code KL floors a divergence within its GEMM round-off, (D + 2) eps64 (|sum p log p| +
    |sum p log r|) (2.3e-12 for uniform D = 784), at RECIPROCAL_FLOOR = 1e-12: a KL of 1.6e-12
    (between the floor and the bound) gives 1/RECIPROCAL_FLOOR, one of 6.5e-12 (above the bound)
    gives 1/KL to within bound/KL."""
    from uhn.models.similarity import KL_EPS, RECIPROCAL_FLOOR
    D = 784
    m = np.ones(D)
    P = m / D
    self_term = float((P * np.log(P + KL_EPS)).sum())
    bound = (D + 2) * EPS * 2 * abs(self_term)          # |cross| = |self| up to O(KL)
    sim = get_similarity("kl", convention="paper_code")
    for d, inside in ((3.7e-5, True), (7.4e-5, False)):
        q = m.copy()
        q[0] += d
        q[1] -= d
        R = q / q.sum()
        kl = float((P * (np.log(P + KL_EPS) - np.log(R + KL_EPS))).sum())
        assert (RECIPROCAL_FLOOR < kl <= bound) == inside and kl > RECIPROCAL_FLOOR
        s = float(sim(m[None], q[None])[0, 0])
        if inside:
            assert s == 1.0 / RECIPROCAL_FLOOR
        else:
            assert abs(s - 1.0 / kl) <= (1.0 / kl) * bound / kl
