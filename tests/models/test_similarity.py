"""Similarities against their formulas (docs/theory.md) and their gradients against finite
differences (the contraction sum_mu F_mu dS_mu/dg that the dynamics uses).

Tolerances come from round-off bounds: a sum of D products carries an error of at most
gamma_D = D eps (higher-order terms dropped, 2 added for the products and the final operation)
times the sum of the absolute terms, so (D + 2) eps T where T is that sum. The squared distance
|q|^2 + |m|^2 - 2 q.m is computed by GEMM, so its error is (D + 2) eps (|q| + |m|)^2 however small
the distance: a distance d then carries min(err/(2d), sqrt(err)).
"""
import numpy as np
import pytest
import scipy.stats
from hypothesis import assume, given, strategies as st
from numpy.testing import assert_allclose, assert_array_equal

from hypothesis.extra.numpy import arrays

from uhn.models.arrays import to_numpy
from uhn.models.similarity import (KL_EPS, RECIPROCAL_FLOOR, differentiable_names, get_similarity,
    names)

EPS = np.finfo(np.float64).eps


def _gemm_sq_err(A, Q):
    """Bound on the round-off of the GEMM squared distance |q|^2 + |m|^2 - 2 q.m, (B, N)."""
    nq, nm = np.linalg.norm(Q, axis=1)[:, None], np.linalg.norm(A, axis=1)[None, :]
    return (A.shape[1] + 2) * EPS * (nq + nm) ** 2


def _dist_err(sq_err, d):
    """Round-off of d = sqrt(d^2) given the error of d^2: err/(2d), at most sqrt(err) near d = 0."""
    return np.minimum(sq_err / (2 * np.maximum(d, 1e-300)), np.sqrt(sq_err))

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
    # integer data: every sum is exact; only the final sqrt / division rounds (a few ulps)
    assert_allclose(S, HAND[name], rtol=4 * EPS, atol=0)
    # a batch gives a (B, N) matrix whose rows are the single-query results
    S2 = sim(M, np.stack([q, M[0]]))
    assert S2.shape == (2, 2)
    assert_allclose(S2[0], HAND[name], rtol=4 * EPS, atol=0)


def test_minkowski_p3_hand_and_direct_formula(rng):
    sim = get_similarity("minkowski", p=3)
    # 3 terms of integer cubes (exact), then a cube root: a few ulps
    assert_allclose(sim(M, q), [-9.0 ** (1 / 3), -10.0 ** (1 / 3)], rtol=4 * EPS)
    A, Q = rng.normal(size=(7, 11)), rng.normal(size=(4, 11))
    direct = -(np.abs(Q[:, None, :] - A[None, :, :]) ** 3).sum(-1) ** (1 / 3)
    # both sum D positive cubes (relative error (D + 2) eps) in different orders; the cube root
    # divides that by 3 and adds an ulp: rtol = 2 ((D + 2) eps / 3 + eps)
    assert_allclose(sim(A, Q), direct, rtol=2 * ((11 + 2) / 3 + 1) * EPS)


def test_minkowski_generalises_manhattan_and_euclidean(rng):
    A, Q = rng.normal(size=(6, 9)), rng.normal(size=(5, 9))
    # sums of D positive terms: relative error (D + 2) eps each
    assert_allclose(get_similarity("minkowski", p=1)(A, Q), get_similarity("manhattan")(A, Q),
                    rtol=2 * (9 + 2) * EPS)
    S2, Se = get_similarity("minkowski", p=2)(A, Q), get_similarity("euclidean")(A, Q)
    # minkowski (a direct sum of D terms, uhn.models.kernels) is accurate to (D + 2) eps; euclidean is the GEMM form (module docstring)
    assert_allclose(S2, Se, rtol=2 * (9 + 2) * EPS, atol=_dist_err(_gemm_sq_err(A, Q), -Se).max())


def test_distance_similarities_on_random_data(rng):
    A, Q = rng.normal(size=(8, 13)), rng.normal(size=(6, 13))
    D = A.shape[1]
    diff = Q[:, None, :] - A[None, :, :]
    d2 = (diff ** 2).sum(-1)              # direct: relative error (D + 2) eps
    sq_err = _gemm_sq_err(A, Q) + (D + 2) * EPS * d2
    assert np.all(np.abs(get_similarity("squared_euclidean")(A, Q) + d2) <= sq_err)
    assert np.all(np.abs(get_similarity("euclidean")(A, Q) + np.sqrt(d2)) <= _dist_err(sq_err, np.sqrt(d2)))
    assert_allclose(get_similarity("manhattan")(A, Q), -np.abs(diff).sum(-1), rtol=2 * (D + 2) * EPS)
    cos = (Q @ A.T) / np.outer(np.linalg.norm(Q, axis=1), np.linalg.norm(A, axis=1))
    # |cos| <= 1 and both forms sum D products of unit-scale terms: atol = 2 (D + 4) eps
    assert_allclose(get_similarity("cosine")(A, Q), cos, rtol=0, atol=2 * (D + 4) * EPS)


def test_euclidean_of_a_memory_with_itself_is_zero(rng):
    A = rng.random((5, 30))
    S = get_similarity("euclidean")(A, A)
    assert np.all(np.diag(S) <= 0) and np.all(np.isfinite(S))
    # d^2 = 0 up to the GEMM round-off (D + 2) eps (2|x|)^2, so d <= sqrt of that = 2 sqrt((D + 2) eps) |x|
    tol = np.sqrt(np.diag(_gemm_sq_err(A, A)))
    assert np.all(-np.diag(S) <= tol)


def test_smoothed_euclidean_and_manhattan_formulas(rng):
    A, Q, eps = rng.normal(size=(5, 7)), rng.normal(size=(3, 7)), 0.3
    D = A.shape[1]
    diff = Q[:, None, :] - A[None, :, :]
    d2 = (diff ** 2).sum(-1)
    r = np.sqrt(d2 + eps ** 2)
    # GEMM squared distance (module docstring) through sqrt(d^2 + eps^2): error sq_err / (2 r)
    sq_err = _gemm_sq_err(A, Q) + (D + 2) * EPS * d2
    assert np.all(np.abs(get_similarity("euclidean", eps=eps)(A, Q) - (eps - r)) <= sq_err / (2 * r) + 2 * EPS * r)
    # each term sqrt(x^2 + eps^2) - eps rounds to within 2 eps (sqrt(x^2 + eps^2) + eps): sum over D
    terms = np.sqrt(diff ** 2 + eps ** 2)
    assert_allclose(get_similarity("manhattan", eps=eps)(A, Q), -(terms - eps).sum(-1),
                    rtol=0, atol=2 * (D + 2) * EPS * (terms + eps).sum(-1).max())


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
    # both compute sum_j p_j log p_j - sum_j p_j log r_j: round-off (D + 2) eps times the absolute
    # terms, each at most sum_j p_j |log(eps/(1 + D eps))| <= |log(KL_EPS / 2)| (p sums to 1)
    T = 2 * abs(np.log(KL_EPS / 2))
    assert_allclose(S, -want, rtol=0, atol=2 * (A.shape[1] + 2) * EPS * T)
    # the divergence of a vector from itself is zero, and it is the largest score
    S_self = get_similarity("reverse_kl" if reverse else "kl")(A, A)
    assert np.all(np.abs(np.diag(S_self)) <= (A.shape[1] + 2) * EPS * T)
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
    # a query equal to a memory: the distance is floored instead of dividing by zero
    S = pc("manhattan")(M, M[0])
    assert S[0] == 1.0 / RECIPROCAL_FLOOR and np.all(np.isfinite(S))


def _official_kl(x, z, reverse):
    """The official code's KL_divergence / reverse_KL_divergence for one memory x and query z,
    elementwise as it is written there: x^ = x/sum x, z^ = z/sum z, eps inside the logarithms.
    Returns (KL, T) with T the sum of the absolute terms (for the round-off bound)."""
    xh, zh = x / x.sum(), z / z.sum()
    p, r = (zh, xh) if reverse else (xh, zh)
    return (p * (np.log(p + KL_EPS) - np.log(r + KL_EPS))).sum(), (p * (np.abs(np.log(p + KL_EPS))
                                                                        + np.abs(np.log(r + KL_EPS)))).sum()


@pytest.mark.parametrize("reverse", [False, True])
def test_paper_code_kl_is_the_official_formula(rng, reverse):
    pc = get_similarity("reverse_kl" if reverse else "kl", convention="paper_code")
    # hand-worked: x^ = (1/4, 1/4, 1/2), z^ = (1/4, 1/2, 1/4); both directions give
    # KL = 1/4 log((1/2 + eps)/(1/4 + eps)), so S = 4 / log(0.5001/0.2501)
    x, z = np.array([1.0, 1.0, 2.0]), np.array([1.0, 2.0, 1.0])
    # log of a ratio near 2: the logs and the 3-term sum round to a few ulps of |log| ~ 1.4
    assert_allclose(pc(x[None, :], z), [4.0 / np.log(0.5001 / 0.2501)], rtol=16 * EPS)
    # random images with zero pixels, against the elementwise formula. The GEMM form's round-off
    # is (D + 2) eps T (T: the absolute terms), so 1/KL is good to a relative 2 (D + 2) eps T/|KL|
    A, Q = rng.random((6, 40)), rng.random((3, 40))
    A[0, :10] = 0.0
    Q[1, 5:20] = 0.0
    S = pc(A, Q)
    for b in range(3):
        for mu in range(6):
            kl, T = _official_kl(A[mu], Q[b], reverse)
            assert abs(S[b, mu] * kl - 1) <= 2 * (40 + 2) * EPS * T / abs(kl)


def test_paper_code_kl_keeps_the_sign_of_a_negative_divergence():
    # with eps inside the logarithms the official "KL" is not a divergence: for z^ = x^(1 + D eps) - eps
    # (the minimiser of the cross term) it is sum_j x^_j log(1 + eps/x^_j) - log(1 + D eps) < 0 by Jensen
    x = np.array([0.98, 0.02])
    z = x * (1 + 2 * KL_EPS) - KL_EPS
    kl, T = _official_kl(x, z, reverse=False)
    assert kl < 0
    S = get_similarity("kl", convention="paper_code")(x[None, :], z)
    assert S[0] < 0
    assert abs(S[0] * kl - 1) <= 2 * (2 + 2) * EPS * T / abs(kl)


@pytest.mark.parametrize("reverse", [False, True])
def test_paper_code_kl_exact_match_is_floored_and_zero_images_refused(reverse):
    pc = get_similarity("reverse_kl" if reverse else "kl", convention="paper_code")
    A = np.array([[0.2, 0.5, 0.3], [0.1, 0.0, 0.9]])
    # the query is memory 0 up to scale (so x^ = z^ and KL = 0): floored like the reciprocal distances
    S = pc(A, 3.0 * A[0])
    assert S[0] == 1.0 / RECIPROCAL_FLOOR and 0 < S[1] < S[0]
    with pytest.raises(ValueError, match=r"all-zero image in the queries"):
        pc(A, np.zeros(3))
    with pytest.raises(ValueError, match=r"all-zero image in the memories \(rows \[1\]"):
        pc(np.array([[0.2, 0.5, 0.3], [0.0, 0.0, 0.0]]), np.ones(3))
    with pytest.raises(ValueError, match="non-negative memories"):
        pc(np.array([[0.2, -0.5, 0.3]]), np.ones(3))


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
def test_grad_contract_matches_finite_difference(score_err, case, seed, n, d, b):
    params = dict(GRAD_CASES[case])
    sim_name = params.pop("name", case)
    sim = get_similarity(sim_name, **params)
    r = np.random.default_rng(seed)
    # positive data (KL reads vectors as distributions), kept away from every kink
    A = r.uniform(0.1, 1.0, (n, d))
    G = r.uniform(0.1, 1.0, (b, d))
    F = r.normal(size=(b, n))
    assume(np.abs(G[:, None, :] - A[None, :, :]).min() > 1e-3)  # |.| kinks of manhattan
    J = sim.grad_contract(A, G, F)
    assert J.shape == (b, d)
    h = 1e-5

    def central(k, i, step):
        e = np.zeros(d)
        e[i] = step
        return (_objective(sim, A, F[k], G[k] + e) - _objective(sim, A, F[k], G[k] - e)) / (2 * step)

    for k in range(b):
        fd = np.array([central(k, i, h) for i in range(d)])
        fd2 = np.array([central(k, i, 2 * h) for i in range(d)])
        # truncation c h^2: fd(2h) - fd(h) = 3 c h^2 estimates it (Richardson), taken with a factor
        # 2 margin for the next order; round-off: the objective sum_mu F_mu S_mu is off by
        # |F| . err(S) + (n + 2) eps |F| . |S|, so each difference quotient by twice that over 2h,
        # and fd, fd2 and J's comparison each carry it (factor 3)
        Sk = sim.score(A, G[k][None, :])[0]
        err_obj = np.abs(F[k]) @ (score_err(sim_name, "standard", A, G[k][None, :], **params)[0]
                                  + (n + 2) * EPS * np.abs(Sk))
        roundoff = 3 * 2 * err_obj / (2 * h)
        assert np.all(np.abs(J[k] - fd) <= 2 * np.abs(fd2 - fd) / 3 * 2 + roundoff)


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


# ------------------------------------------------------------------------------------ properties
ALL_SIMS = [("standard", n, {}) for n in ("dot", "cosine", "euclidean", "squared_euclidean", "manhattan",
                                          "kl", "reverse_kl")] + [("standard", "minkowski", {"p": 3})] + \
           [("paper_code", n, {}) for n in ("dot", "euclidean", "manhattan", "kl", "reverse_kl")]
positive = st.floats(0.05, 1.0)


def _pair(seed, n, b, d):
    r = np.random.default_rng(seed)
    return r.uniform(0.05, 1.0, (n, d)), r.uniform(0.05, 1.0, (b, d)), r


@pytest.mark.parametrize("conv,name,params", ALL_SIMS)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 8), b=st.integers(1, 4), d=st.integers(2, 12))
def test_permuting_memories_permutes_the_score_columns(score_err, conv, name, params, seed, n, b, d):
    A, Q, r = _pair(seed, n, b, d)
    perm = r.permutation(n)
    sim = get_similarity(name, convention=conv, **params)
    S, Sp = sim(A, Q), sim(A[perm], Q)
    err = score_err(name, conv, A, Q, **params)
    assume(np.all(np.isfinite(err)))
    # each form computes S[b, mu] from row mu alone; BLAS may order the sums differently: 2 err
    assert np.all(np.abs(Sp - S[:, perm]) <= 2 * err[:, perm])


@pytest.mark.parametrize("name,params", [("euclidean", {}), ("squared_euclidean", {}), ("manhattan", {}),
                                         ("minkowski", {"p": 3}), ("minkowski", {"p": np.inf})])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 6), b=st.integers(1, 4), d=st.integers(1, 10),
       shift=st.floats(-100.0, 100.0))
def test_distances_are_translation_invariant(score_err, name, params, seed, n, b, d, shift):
    A, Q, r = _pair(seed, n, b, d)
    c = shift * r.normal(size=d)
    sim = get_similarity(name, **params)
    S, St = sim(A, Q), sim(A + c, Q + c)
    # rounding a + c and q + c moves each coordinate of q - m by at most delta_j = eps (|a_j + c_j| +
    # |q_j + c_j|) / 2 ... bounded by eps (|a + c| + |q + c|)_j; an Lp distance moves by at most the
    # L1 norm of delta, a squared distance by 2 d |delta|_1 + |delta|_1^2
    delta = EPS * (np.abs(A + c)[None, :, :] + np.abs(Q + c)[:, None, :]).sum(-1)
    if name == "squared_euclidean":
        delta = 2 * np.sqrt(-S) * delta + delta ** 2
    pinf = params.get("p") == np.inf  # cdist's max norm: exact per coordinate, no sum
    tol = delta + (0 if pinf else score_err(name, "standard", A, Q, **params)
                   + score_err(name, "standard", A + c, Q + c, **params))
    assert np.all(np.abs(St - S) <= tol)


@pytest.mark.parametrize("conv,name,params", [s for s in ALL_SIMS if s[1] != "dot"])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 8), d=st.integers(2, 12))
def test_a_stored_memory_is_its_own_best_match(score_err, conv, name, params, seed, n, d):
    A, _, _ = _pair(seed, n, 1, d)
    S = get_similarity(name, convention=conv, **params)(A, A)
    err = score_err(name, conv, A, A, **params)
    diag = np.diag(S)
    others = np.where(np.eye(n, dtype=bool), -np.inf, S)
    # where the best other memory is separated by more than both round-offs the query must win
    # (ties within round-off are undecidable and skipped); the diagonal never loses beyond them
    assert np.all(diag[:, None] >= others - 2 * np.where(np.isfinite(err), err, 0) - err.diagonal()[:, None])
    clear = diag - others.max(1) > 2 * (err.max(1) + err.diagonal())
    assert np.all(np.argmax(S, axis=1)[clear] == np.arange(n)[clear])


# entries of any magnitude from 1e-300 to 1e300, either sign, never 0 (cosine refuses zero rows)
wide = st.one_of(st.floats(1e-300, 1e300), st.floats(-1e300, -1e-300))


@given(data=st.data(), d=st.integers(1, 8))
def test_cosine_stays_in_minus_one_one_for_any_scale(data, d):
    A = data.draw(arrays(np.float64, (data.draw(st.integers(1, 5)), d), elements=wide))
    Q = data.draw(arrays(np.float64, (data.draw(st.integers(1, 4)), d), elements=wide))
    S = get_similarity("cosine")(A, Q)
    # a dot product of two unit vectors: |S| <= 1 up to (D + 4) eps; huge (1e300) and tiny entries
    # are rescaled, never squared into inf or 0
    assert np.all(np.isfinite(S)) and np.all(np.abs(S) <= 1 + (A.shape[1] + 4) * EPS)
    # and a row is its own best direction
    assert np.all(np.abs(np.diag(get_similarity("cosine")(A, A)) - 1) <= (A.shape[1] + 4) * EPS)


@pytest.mark.parametrize("name", ["kl", "reverse_kl"])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 6), b=st.integers(1, 4), d=st.integers(1, 12),
       zeros=st.floats(0.0, 0.9))
def test_negated_kl_is_never_positive(score_err, name, seed, n, b, d, zeros):
    # S = -KL(p || r) <= 0 by Gibbs' inequality, up to round-off; zero pixels included
    r = np.random.default_rng(seed)
    A, Q = r.random((n, d)), r.random((b, d))
    A[r.random(A.shape) < zeros] = 0.0
    Q[r.random(Q.shape) < zeros] = 0.0
    S = get_similarity(name)(A, Q)
    assert np.all(S <= score_err(name, "standard", A, Q))


# ------------------------------------------------------------------ huge, tiny and bad parameters
@pytest.mark.parametrize("name,params", [("euclidean", {}), ("manhattan", {}), ("minkowski", {"p": 3}),
                                         ("euclidean", {"eps": 0.25}), ("manhattan", {"eps": 0.25})])
@pytest.mark.parametrize("k", [665, -665, 1000])  # 2^665 ~ 1e200: squares and cubes overflow / underflow
def test_distances_of_huge_and_tiny_inputs_scale_exactly(rng, name, params, k):
    A, Q = rng.random((6, 9)), rng.random((4, 9))
    s = 2.0 ** k
    # scaling by a power of two commutes with rounding: the distances scale exactly (eps with them),
    # except that cdist's x^(1/p) of a differently scaled sum may round 1 ulp apart for p = 3
    scaled = dict(params, eps=params["eps"] * s) if "eps" in params else params
    S = get_similarity(name, **scaled)(A * s, Q * s)
    assert np.all(np.isfinite(S))
    assert_allclose(S, s * get_similarity(name, **params)(A, Q), rtol=2 * EPS if "p" in params else 0, atol=0)


def test_cosine_of_huge_and_tiny_inputs(rng):
    A, Q = rng.random((6, 9)), rng.random((4, 9))
    S = get_similarity("cosine")(A, Q)
    # the rescaled rows round differently: |cos| <= 1 products, (D + 4) eps each way
    for s in (2.0 ** 700, 2.0 ** -700):
        assert_allclose(get_similarity("cosine")(A * s, Q * s), S, rtol=0, atol=2 * (9 + 4) * EPS)


def test_genuine_overflow_raises_naming_the_similarity():
    big = np.array([[1e200, 1e200]])
    with pytest.raises(OverflowError, match=r"similarity 'dot' gave 1 NaN/inf score.*overflow.*1e\+200"):
        get_similarity("dot")(big, big[0])
    with pytest.raises(OverflowError, match=r"similarity 'squared_euclidean'"):
        get_similarity("squared_euclidean")(big, -big[0])
    # the distance itself (4e308) is beyond float64
    with pytest.raises(OverflowError, match=r"manhattan distance .* exceeds the float64 range "
                                            r"\(entries up to 1.5e\+308\)"):
        get_similarity("manhattan")(np.array([[1.5e308, 1.5e308]]), np.array([-1.5e308, -1.5e308]))
    # the message quotes the largest |entry| of M and Q, wherever it is
    for M, Q in [([[1e308, 1.5e308]], [-1e308, -2.0]), ([[-1e308, -2.0]], [1e308, 1.5e308])]:
        with pytest.raises(OverflowError, match=r"\(entries up to 1.5e\+308\)"):
            get_similarity("manhattan")(np.array(M), np.array(Q))


def test_smoothness_flags_follow_eps():
    """A distance similarity has a kink at a memory (eps = 0) and is smooth for eps > 0."""
    for name in ("euclidean", "manhattan"):
        assert not get_similarity(name).smooth and get_similarity(name, eps=0.05).smooth
        assert get_similarity(name, eps=0.5).smooth


@pytest.mark.parametrize("name", ["euclidean", "manhattan", "minkowski"])
def test_smoothing_eps_must_be_finite_and_non_negative(name):
    # eps = nan used to give NaN scores, and max then "retrieved" memory 0 for every query
    for bad in (np.nan, np.inf):
        with pytest.raises(ValueError, match=rf"{name} smoothing eps must be a finite number"):
            get_similarity(name, eps=bad)
    with pytest.raises(ValueError, match=rf"{name} smoothing eps must be >= 0, got -0.1"):
        get_similarity(name, eps=-0.1)
    with pytest.raises(TypeError, match=rf"{name} smoothing eps must be a real number"):
        get_similarity(name, eps="0.1")


def test_minkowski_p_must_be_a_number_at_least_one():
    for bad in (np.nan, 0.5, -np.inf):
        with pytest.raises(ValueError, match=r"minkowski p must be"):
            get_similarity("minkowski", p=bad)


@pytest.mark.parametrize("name", ["kl", "reverse_kl", "cosine", "euclidean", "squared_euclidean"])
def test_bind_reuses_per_memory_work_and_changes_no_value(name, monkeypatch):
    """Similarity.bind(M) computes the memories' normalised rows / logarithms / unit rows once:
    score and vjp with that M give bit for bit what the unbound similarity gives, the per-memory
    normalisation is not redone per call, and another M array falls back to the general formula."""
    import uhn.models.similarity as msim
    rng = np.random.default_rng(3)
    M, Q, F = rng.random((7, 12)), rng.random((4, 12)), rng.random((4, 7))
    sim = get_similarity(name)
    bound = sim.bind(M)
    assert bound.prepare is None and sim.prepare is not None
    assert np.array_equal(bound.score(M, Q), sim.score(M, Q))
    assert np.array_equal(bound.vjp(M, Q, F), sim.vjp(M, Q, F))
    helper, per_call = {"cosine": ("_unit_rows", ["queries"]), "kl": ("_normalise_rows", ["queries"]),
                        "reverse_kl": ("_normalise_rows", ["queries"])}.get(name, ("_row_sq_norms", []))
    calls = []
    real = getattr(msim, helper)
    monkeypatch.setattr(msim, helper, lambda A, *a: calls.append(a[0] if a else "") or real(A, *a))
    bound.score(M, Q)
    assert calls == per_call                         # the memories' rows came from the memo
    other = M[::-1].copy()
    assert np.array_equal(bound.score(other, Q), sim.score(other, Q))   # not the bound array


@pytest.mark.parametrize("name", ["kl", "cosine"])
def test_memory_keeps_a_private_copy_for_bound_similarities(name):
    """Memory / Network bind such similarities to a read-only copy of the memories: changing the
    caller's array afterwards cannot leave the precomputed rows stale."""
    from uhn.dynamics.lagrangians import softplus
    from uhn.dynamics.network import Network
    from uhn.models import Memory
    rng = np.random.default_rng(4)
    X, Q = rng.random((6, 10)), rng.random((3, 10))
    mem = Memory(X, similarity=name, separation="max")
    net = Network(X, name, L_v=softplus())
    before, h_before = mem.similarities(Q), net.similarity(Q)
    X[:] = rng.random(X.shape)                       # the caller reuses its array
    assert np.array_equal(mem.similarities(Q), before) and np.array_equal(net.similarity(Q), h_before)
    with pytest.raises(ValueError, match="read-only"):
        mem.M[0, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        net.M[0, 0] = 1.0


# --------------------------------------------------------------------------------------------------
# Values a full mutation run (tools/mutate.py; docs/testing.md, "Full runs with --select
# coverage") left unchecked: the minkowski default, the names and smoothness flags the integrators
# read, cosine on rows of any magnitude (the rescaled route for tiny rows and the error naming
# all-zero rows), distances near the float64 limits, the paper_code KL floor, and the euclidean /
# minkowski gradients at a memory and at distances below 1, on numpy and on the array-API branch.
# Reference values are closed forms or explicit per-memory loops; tolerances are round-off bounds
# of the quantity compared.


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


def test_paper_kl_is_floored_exactly_within_its_round_off_bound():
    """paper_code KL floors a divergence within its GEMM round-off, (D + 2) eps64 (|sum p log p| +
    |sum p log r|) (2.3e-12 for uniform D = 784), at RECIPROCAL_FLOOR = 1e-12: a KL of 1.6e-12
    (between the floor and the bound) gives 1/RECIPROCAL_FLOOR, one of 6.5e-12 (above the bound)
    gives 1/KL to within bound/KL."""
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
