"""Similarities against their formulas (DESIGN.md section 1) and their gradients against finite
differences (the contraction sum_mu F_mu dS_mu/dg that the dynamics uses)."""
import numpy as np
import pytest
import scipy.stats
from hypothesis import assume, given, strategies as st
from numpy.testing import assert_allclose

from models.similarity import KL_EPS, RECIPROCAL_FLOOR, differentiable_names, get_similarity, names

# hand-checked case: m1 - q = (0, 2, 1), m2 - q = (-1, 1, -2)
M = np.array([[1.0, 2.0, 3.0], [0.0, 1.0, 0.0]])
q = np.array([1.0, 0.0, 2.0])

HAND = {
    "dot": [7.0, 0.0],
    "cosine": [7.0 / np.sqrt(14.0 * 5.0), 0.0],
    "euclidean": [-np.sqrt(5.0), -np.sqrt(6.0)],
    "squared_euclidean": [-5.0, -6.0],
    "manhattan": [-3.0, -4.0],
}


@pytest.mark.parametrize("name", sorted(HAND))
def test_hand_checked_scores(name):
    sim = get_similarity(name)
    S = sim(M, q)
    assert S.shape == (2,)
    assert_allclose(S, HAND[name], rtol=1e-14, atol=1e-14)
    # a batch gives a (B, N) matrix whose rows are the single-query results
    S2 = sim(M, np.stack([q, M[0]]))
    assert S2.shape == (2, 2)
    assert_allclose(S2[0], HAND[name], rtol=1e-14, atol=1e-14)


def test_minkowski_p3_hand_and_direct_formula(rng):
    sim = get_similarity("minkowski", p=3)
    assert_allclose(sim(M, q), [-9.0 ** (1 / 3), -10.0 ** (1 / 3)], rtol=1e-14)
    A, Q = rng.normal(size=(7, 11)), rng.normal(size=(4, 11))
    direct = -(np.abs(Q[:, None, :] - A[None, :, :]) ** 3).sum(-1) ** (1 / 3)
    assert_allclose(sim(A, Q), direct, rtol=1e-12)


def test_minkowski_generalises_manhattan_and_euclidean(rng):
    A, Q = rng.normal(size=(6, 9)), rng.normal(size=(5, 9))
    assert_allclose(get_similarity("minkowski", p=1)(A, Q), get_similarity("manhattan")(A, Q), rtol=1e-13)
    assert_allclose(get_similarity("minkowski", p=2)(A, Q), get_similarity("euclidean")(A, Q), rtol=1e-12)


def test_distance_similarities_on_random_data(rng):
    A, Q = rng.normal(size=(8, 13)), rng.normal(size=(6, 13))
    diff = Q[:, None, :] - A[None, :, :]
    assert_allclose(get_similarity("euclidean")(A, Q), -np.sqrt((diff ** 2).sum(-1)), rtol=1e-12)
    assert_allclose(get_similarity("squared_euclidean")(A, Q), -(diff ** 2).sum(-1), rtol=1e-12)
    assert_allclose(get_similarity("manhattan")(A, Q), -np.abs(diff).sum(-1), rtol=1e-13)
    cos = (Q @ A.T) / np.outer(np.linalg.norm(Q, axis=1), np.linalg.norm(A, axis=1))
    assert_allclose(get_similarity("cosine")(A, Q), cos, rtol=1e-12)


def test_euclidean_of_a_memory_with_itself_is_zero(rng):
    A = rng.random((5, 30))
    S = get_similarity("euclidean")(A, A)
    assert np.all(np.diag(S) <= 0) and np.all(np.isfinite(S))
    assert_allclose(np.diag(S), 0.0, atol=1e-6)


def test_smoothed_euclidean_and_manhattan_formulas(rng):
    A, Q, eps = rng.normal(size=(5, 7)), rng.normal(size=(3, 7)), 0.3
    diff = Q[:, None, :] - A[None, :, :]
    assert_allclose(get_similarity("euclidean", eps=eps)(A, Q),
                    eps - np.sqrt((diff ** 2).sum(-1) + eps ** 2), rtol=1e-12)
    assert_allclose(get_similarity("manhattan", eps=eps)(A, Q),
                    -(np.sqrt(diff ** 2 + eps ** 2) - eps).sum(-1), rtol=1e-12)


def test_hamming_binary_and_bipolar():
    Mb = np.array([[1.0, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 0]])
    qb = np.array([1.0, 1, 1, 0])
    sim = get_similarity("hamming")
    assert_allclose(sim(Mb, qb), [-2.0, -3.0, 0.0])
    assert_allclose(sim(2 * Mb - 1, 2 * qb - 1), [-2.0, -3.0, 0.0])


def test_hamming_counts_differing_entries_on_random_data(rng):
    Mb, Qb = rng.integers(0, 2, (9, 40)).astype(float), rng.integers(0, 2, (5, 40)).astype(float)
    direct = -(Qb[:, None, :] != Mb[None, :, :]).sum(-1)
    sim = get_similarity("hamming")
    assert_allclose(sim(Mb, Qb), direct)
    assert_allclose(sim(2 * Mb - 1, 2 * Qb - 1), direct)


def test_hamming_all_ones_array_takes_the_other_coding():
    # all ones is both binary and bipolar: the other array decides which formula applies
    sim = get_similarity("hamming")
    assert_allclose(sim(np.ones((1, 4)), np.array([1.0, -1, -1, 1])), [-2.0])
    assert_allclose(sim(np.array([[1.0, -1, 1, -1], [1, 1, 1, 1]]), np.ones(4)), [-2.0, 0.0])
    assert_allclose(sim(np.ones((1, 4)), np.array([1.0, 0, 0, 1])), [-2.0])


def test_hamming_refuses_non_binary_and_mixed_codings():
    sim = get_similarity("hamming")
    with pytest.raises(ValueError, match="binary"):
        sim(np.array([[0.0, 0.5, 1.0]]), np.array([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="binary"):
        sim(np.array([[0.0, 1.0, 1.0]]), np.array([0.0, 0.2, 1.0]))
    with pytest.raises(ValueError, match="coding"):
        sim(np.array([[0.0, 1.0, 1.0]]), np.array([-1.0, 1.0, 1.0]))


@pytest.mark.parametrize("reverse", [False, True])
def test_kl_matches_scipy_entropy(rng, reverse):
    A = rng.random((6, 20))
    A[0, :5] = 0.0  # zero pixels: the eps keeps the logarithms finite
    Q = rng.random((4, 20))
    Q[1, 3:9] = 0.0
    S = get_similarity("reverse_kl" if reverse else "kl")(A, Q)
    # scipy.stats.entropy(p, q) = KL(p || q) after sum-normalising both
    want = np.array([[scipy.stats.entropy(*((qq + KL_EPS, m + KL_EPS) if reverse else (m + KL_EPS, qq + KL_EPS)))
                      for m in A] for qq in Q])
    assert_allclose(S, -want, rtol=1e-10, atol=1e-13)
    # the divergence of a vector from itself is zero, and it is the largest score
    S_self = get_similarity("reverse_kl" if reverse else "kl")(A, A)
    assert_allclose(np.diag(S_self), 0.0, atol=1e-12)
    assert np.all(np.argmax(S_self, axis=1) == np.arange(len(A)))


def test_kl_refuses_negative_data():
    with pytest.raises(ValueError, match="non-negative"):
        get_similarity("kl")(np.array([[0.5, -0.1]]), np.array([0.2, 0.3]))


def test_paper_code_variants():
    pc = lambda name: get_similarity(name, convention="paper_code")  # noqa: E731
    # euclidean[paper_code] is 1 / SQUARED distance, as in the official code
    assert_allclose(pc("euclidean")(M, q), [1 / 5.0, 1 / 6.0], rtol=1e-14)
    assert_allclose(pc("manhattan")(M, q), [1 / 3.0, 1 / 4.0], rtol=1e-14)
    # normalised dot product: (m / sum m) . (q / sum q)
    assert_allclose(pc("dot")(M, q), [7.0 / 18.0, 0.0], rtol=1e-14)
    A = np.array([[0.2, 0.5, 0.3], [0.1, 0.0, 0.9]])
    b = np.array([0.3, 0.3, 0.4])
    for name, args in (("kl", lambda m: (m + KL_EPS, b + KL_EPS)), ("reverse_kl", lambda m: (b + KL_EPS, m + KL_EPS))):
        want = [1.0 / scipy.stats.entropy(*args(m)) for m in A]
        assert_allclose(pc(name)(A, b), want, rtol=1e-10)
    # a query equal to a memory: the distance is floored instead of dividing by zero
    S = pc("manhattan")(M, M[0])
    assert S[0] == 1.0 / RECIPROCAL_FLOOR and np.all(np.isfinite(S))


def test_paper_code_dot_refuses_all_zero_image():
    with pytest.raises(ValueError, match="all-zero"):
        get_similarity("dot", convention="paper_code")(np.array([[0.0, 0.0], [1.0, 2.0]]), np.array([1.0, 1.0]))


def test_cosine_refuses_zero_vectors():
    with pytest.raises(ValueError, match="all-zero"):
        get_similarity("cosine")(np.array([[0.0, 0.0], [1.0, 2.0]]), np.array([1.0, 1.0]))


def test_registry_names_and_errors():
    assert set(names()) >= {"dot", "cosine", "euclidean", "squared_euclidean", "manhattan",
                            "minkowski", "hamming", "kl", "reverse_kl"}
    assert set(names("paper_code")) == {"dot", "euclidean", "manhattan", "kl", "reverse_kl"}
    assert "hamming" not in differentiable_names() and "dot" in differentiable_names()
    with pytest.raises(ValueError, match=r"unknown similarity 'cityblock'.*'dot'.*'manhattan'"):
        get_similarity("cityblock")
    with pytest.raises(ValueError, match=r"choose one of .*'euclidean'"):
        get_similarity("cosine", convention="paper_code")
    with pytest.raises(ValueError, match="unknown convention"):
        get_similarity("dot", convention="paper")
    with pytest.raises(TypeError, match="bad parameters"):
        get_similarity("dot", beta=2)
    with pytest.raises(ValueError, match="p must be >= 1"):
        get_similarity("minkowski", p=0.5)
    sim = get_similarity("minkowski", p=3)
    assert get_similarity(sim) is sim and sim.name == "minkowski(p=3)"


# ------------------------------------------------------------------------------------ gradients
GRAD_CASES = {
    "dot": {},
    "cosine": {},
    "squared_euclidean": {},
    "euclidean": {},
    "euclidean(eps)": {"name": "euclidean", "eps": 0.2},
    "manhattan": {},
    "manhattan(eps)": {"name": "manhattan", "eps": 0.05},
    "minkowski(p=3)": {"name": "minkowski", "p": 3},
    "kl": {},
    "reverse_kl": {},
}


def _objective(sim, A, F, g):
    """sum_mu F_mu S_mu(g)."""
    return float(F @ sim.score(A, g[None, :])[0])


@pytest.mark.parametrize("case", sorted(GRAD_CASES))
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 6), d=st.integers(1, 8), b=st.integers(1, 3))
def test_grad_contract_matches_finite_difference(case, seed, n, d, b):
    params = dict(GRAD_CASES[case])
    sim = get_similarity(params.pop("name", case), **params)
    r = np.random.default_rng(seed)
    # positive data (KL reads vectors as distributions), kept away from every kink
    A = r.uniform(0.1, 1.0, (n, d))
    G = r.uniform(0.1, 1.0, (b, d))
    F = r.normal(size=(b, n))
    assume(np.abs(G[:, None, :] - A[None, :, :]).min() > 1e-3)  # |.| kinks of manhattan
    J = sim.grad_contract(A, G, F)
    assert J.shape == (b, d)
    h = 1e-6
    for k in range(b):
        fd = np.empty(d)
        for i in range(d):
            e = np.zeros(d)
            e[i] = h
            fd[i] = (_objective(sim, A, F[k], G[k] + e) - _objective(sim, A, F[k], G[k] - e)) / (2 * h)
        assert_allclose(J[k], fd, rtol=1e-5, atol=1e-6 * (1 + np.abs(F[k]).sum()))


def test_grad_contract_squared_euclidean_closed_form(rng):
    A, G, F = rng.normal(size=(4, 5)), rng.normal(size=(2, 5)), rng.normal(size=(2, 4))
    want = np.stack([sum(F[k, m] * 2 * (A[m] - G[k]) for m in range(4)) for k in range(2)])
    assert_allclose(get_similarity("squared_euclidean").grad_contract(A, G, F), want, rtol=1e-12)


def test_manhattan_subgradient_is_zero_at_ties():
    A = np.array([[1.0, 2.0]])
    J = get_similarity("manhattan").grad_contract(A, np.array([[1.0, 3.0]]), np.array([[1.0]]))
    assert_allclose(J, [[0.0, -1.0]])  # sign(0) = 0 on the tied coordinate


def test_hamming_and_paper_code_have_no_gradient():
    with pytest.raises(ValueError, match="no gradient.*dynamics"):
        get_similarity("hamming").grad_contract(np.ones((2, 3)), np.ones((1, 3)), np.ones((1, 2)))
    for name in names("paper_code"):
        sim = get_similarity(name, convention="paper_code")
        assert not sim.differentiable
        with pytest.raises(ValueError, match="no gradient"):
            sim.grad_contract(np.ones((2, 3)), np.ones((1, 3)), np.ones((1, 2)))


def test_minkowski_infinity_is_the_max_norm_without_gradient(rng):
    A, Q = rng.normal(size=(5, 6)), rng.normal(size=(3, 6))
    sim = get_similarity("minkowski", p=np.inf)
    assert_allclose(sim(A, Q), -np.abs(Q[:, None, :] - A[None, :, :]).max(-1), rtol=1e-14)
    with pytest.raises(ValueError, match="no gradient"):
        sim.grad_contract(A, Q, np.ones((3, 5)))
    with pytest.raises(ValueError, match="p=inf"):
        get_similarity("minkowski", p=np.inf, eps=0.1)
