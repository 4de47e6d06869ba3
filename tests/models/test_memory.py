"""Memory z = P^T sep(sim(M, q)): batches, exact max retrieval, heteroassociation, bad input."""
import numpy as np
import pytest
from hypothesis import given, strategies as st
from numpy.testing import assert_allclose, assert_array_equal

from models import Memory, get_separation, get_similarity

STANDARD = ["dot", "cosine", "euclidean", "squared_euclidean", "manhattan", "minkowski", "kl",
            "reverse_kl", "hamming"]
PAPER = ["dot", "euclidean", "manhattan", "kl", "reverse_kl"]
SEPARATIONS = {
    "identity": {}, "threshold": {}, "polynomial": {"n": 3}, "polynomial_signed": {"n": 2, "rectified": False},
    "softmax": {"beta": 2.0}, "max": {}, "k_max": {"k": 2}, "exp": {"beta": 0.5}, "log": {},
}


def _separation(name, convention, n_mem):
    params = dict(SEPARATIONS[name])
    if name == "polynomial_signed":
        name = "polynomial"
    if name == "threshold":
        # paper_code scores are normalised to sum 1: theta = 1/N keeps at least the best memory
        params["theta"] = 1.0 / n_mem if convention == "paper_code" else -2.0
    return get_separation(name, **params)


def _valid(sim, sep, convention):
    """The (similarity, separation) pairs that are defined on positive data."""
    if sep == "log":  # needs positive scores: the reciprocal paper_code forms, or dot/cosine of positive data
        return convention == "paper_code" or sim in ("dot", "cosine")
    return True


PAIRS = [(c, sim, sep) for c, sims in (("standard", STANDARD), ("paper_code", PAPER))
         for sim in sims for sep in SEPARATIONS if _valid(sim, sep, c)]


@pytest.mark.parametrize("convention,sim,sep", PAIRS)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 9), d=st.integers(1, 12), b=st.integers(1, 5),
       o=st.integers(1, 4), hetero=st.booleans())
def test_batch_equals_loop_over_single_queries(convention, sim, sep, seed, n, d, b, o, hetero):
    r = np.random.default_rng(seed)
    if sim == "hamming":
        A, Q = r.integers(0, 2, (n, d)).astype(float), r.integers(0, 2, (b, d)).astype(float)
    else:
        A, Q = r.uniform(0.05, 1.0, (n, d)), r.uniform(0.05, 1.0, (b, d))
    P = r.normal(size=(n, o)) if hetero else None
    similarity = get_similarity(sim, convention=convention, **({"p": 3} if sim == "minkowski" else {}))
    mem = Memory(A, P, similarity=similarity, separation=_separation(sep, convention, n), convention=convention)
    Z, W, S = mem.retrieve(Q), mem.weights(Q), mem.similarities(Q)
    assert Z.shape == (b, o if hetero else d) and W.shape == S.shape == (b, n)
    assert np.all(np.isfinite(Z))
    for k in range(b):
        # a 1-D query gives 1-D results equal to the batch's row (up to BLAS summation order)
        assert_allclose(mem.retrieve(Q[k]), Z[k], rtol=1e-12, atol=1e-12)
        assert_allclose(mem.weights(Q[k]), W[k], rtol=1e-12, atol=1e-12)
        assert_allclose(mem.similarities(Q[k]), S[k], rtol=1e-12, atol=1e-12)
    # the pipeline is literally z = P^T sep(sim(M, q))
    Pm = A if P is None else P
    assert_allclose(Z, W @ Pm, rtol=1e-12, atol=1e-12)


def test_paper_code_normalises_scores_and_weights():
    A = np.array([[0.0, 1.0, 2.0], [2.0, 2.0, 0.0], [1.0, 1.0, 1.0]])
    q = np.array([0.5, 1.0, 1.5])
    mem = Memory(A, similarity="manhattan", separation="identity", convention="paper_code")
    d = np.abs(A - q).sum(1)
    assert_allclose(mem.similarities(q), (1 / d) / (1 / d).sum(), rtol=1e-14)
    assert_allclose(mem.retrieve(q), ((1 / d) / (1 / d).sum()) @ A, rtol=1e-14)
    mem = Memory(A, similarity="manhattan", separation=get_separation("polynomial", n=2), convention="paper_code")
    s = (1 / d) / (1 / d).sum()
    assert_allclose(mem.weights(q), s ** 2 / (s ** 2).sum(), rtol=1e-14)


# ------------------------------------------------------------------ exact retrieval with max
def _exact_cases(rng):
    """(similarity, convention, params, data) on which max must return each stored memory."""
    cont = rng.uniform(0.0, 1.0, (40, 50))
    bip = rng.choice([-1.0, 1.0], (40, 50))
    binary = (bip > 0).astype(float)
    # equal pixel sums: the paper_code normalised dot product peaks at the memory itself
    fixed_ones = np.zeros((40, 50))
    for row in fixed_ones:
        row[rng.choice(50, 10, replace=False)] = 1.0
    return [
        # dot product: only patterns of equal norm are guaranteed (a brighter memory can win)
        ("dot", "standard", {}, bip),
        ("cosine", "standard", {}, cont),
        ("euclidean", "standard", {}, cont),
        ("squared_euclidean", "standard", {}, cont),
        ("manhattan", "standard", {}, cont),
        ("minkowski", "standard", {"p": 3}, cont),
        ("kl", "standard", {}, cont),
        ("reverse_kl", "standard", {}, cont),
        ("hamming", "standard", {}, binary),
        ("hamming", "standard", {}, bip),
        ("dot", "paper_code", {}, fixed_ones),
        ("euclidean", "paper_code", {}, cont),
        ("manhattan", "paper_code", {}, cont),
        ("kl", "paper_code", {}, cont),
        ("reverse_kl", "paper_code", {}, cont),
    ]


@pytest.mark.parametrize("case", range(15))
def test_max_retrieves_uncorrupted_memory_exactly_random(case):
    sim, conv, params, X = _exact_cases(np.random.default_rng(7))[case]
    mem = Memory(X, similarity=get_similarity(sim, convention=conv, **params), separation="max", convention=conv)
    assert_array_equal(mem.retrieve(X), X)
    assert_array_equal(mem.weights(X), np.eye(len(X)))
    assert_array_equal(mem.retrieve(X[3]), X[3])


@pytest.mark.parametrize("sim,conv,params", [
    ("cosine", "standard", {}), ("euclidean", "standard", {}), ("squared_euclidean", "standard", {}),
    ("manhattan", "standard", {}), ("minkowski", "standard", {"p": 3}), ("kl", "standard", {}),
    ("reverse_kl", "standard", {}), ("hamming", "standard", {}), ("euclidean", "paper_code", {}),
    ("manhattan", "paper_code", {}), ("kl", "paper_code", {}), ("reverse_kl", "paper_code", {}),
])
def test_max_retrieves_uncorrupted_digit_exactly(digits, sim, conv, params):
    X = digits[:300]
    if sim == "hamming":
        X = (X > 0.5).astype(float)
    mem = Memory(X, similarity=get_similarity(sim, convention=conv, **params), separation="max", convention=conv)
    assert_array_equal(mem.retrieve(X), X)


@pytest.mark.parametrize("conv", ["standard", "paper_code"])
def test_dot_max_prefers_bright_memories_on_real_images(digits, conv):
    # the paper's point: (normalised) dot product does not peak at the query itself on images
    X = digits[:300]
    mem = Memory(X, similarity="dot", separation="max", convention=conv)
    exact = np.all(mem.retrieve(X) == X, axis=1)
    assert 0 < exact.mean() < 1


# ------------------------------------------------------------------ heteroassociation
@pytest.mark.parametrize("sim,sep", [("dot", "max"), ("euclidean", "max"), ("manhattan", "max"),
                                     ("dot", "softmax"), ("euclidean", "softmax")])
# softmax beta = 5: the true key is ~9 euclidean units (~120 dot units) closer than any other
def test_heteroassociative_corrupted_key_retrieves_its_value(rng, bipolar, flip, sim, sep):
    keys = bipolar(rng, 30, 200)
    values = rng.normal(size=(30, 7))
    mem = Memory(keys, values, similarity=sim,
                 separation=get_separation("softmax", beta=5.0) if sep == "softmax" else sep)
    assert not mem.autoassociative and "hetero" in repr(mem)
    Z = mem.retrieve(flip(rng, keys, 0.15))
    assert Z.shape == (30, 7)
    if sep == "max":
        assert_array_equal(Z, values)
    else:
        assert_allclose(Z, values, atol=1e-9)
    with pytest.raises(ValueError, match="O == D"):
        mem.iterate(keys)


def test_identity_autoassociative_is_the_classical_projection(rng, bipolar):
    X = bipolar(rng, 5, 16)
    q = rng.normal(size=16)
    assert_allclose(Memory(X).retrieve(q), X.T @ (X @ q), rtol=1e-12)
    assert_allclose(Memory(X, output="sign").retrieve(q), np.where(X.T @ (X @ q) >= 0, 1, -1))


def test_iterate_does_not_touch_the_query_and_reports_steps(rng):
    X = rng.random((6, 10))
    Q = X + 0.01 * rng.normal(size=X.shape)
    Q0 = Q.copy()
    res = Memory(X, similarity="euclidean", separation="max").iterate(Q)
    assert_array_equal(Q, Q0)
    assert_array_equal(res.states, X) and res.converged.all()
    assert_array_equal(res.steps, 2)  # one step to reach the memory, one to see it stays
    one = Memory(X, similarity="euclidean", separation="max").iterate(Q[0])
    assert_array_equal(one.states, X[0])
    assert np.ndim(one.steps) == 0 and np.ndim(one.converged) == 0  # a 1-D query gives scalars
    assert one.steps == 2 and bool(one.converged) is True


# ------------------------------------------------------------------ bad input
def test_shape_mismatch_names_both_shapes():
    mem = Memory(np.ones((5, 4)))
    with pytest.raises(ValueError, match=r"shape mismatch.*3 features.*4.*\(5, 4\)"):
        mem.retrieve(np.ones(3))
    with pytest.raises(ValueError, match=r"\(2, 6\).*\(5, 4\)"):
        mem.retrieve(np.ones((2, 6)))
    with pytest.raises(ValueError, match=r"\(2, 6\).*\(5, 4\)"):
        get_similarity("euclidean")(np.ones((5, 4)), np.ones((2, 6)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_refused(bad):
    A = np.ones((3, 4))
    A[1, 2] = bad
    with pytest.raises(ValueError, match=r"memories contains 1 NaN/inf.*\(1, 2\)"):
        Memory(A)
    q = np.ones(4)
    q[0] = bad
    with pytest.raises(ValueError, match="queries contains 1 NaN/inf"):
        Memory(np.ones((3, 4))).retrieve(q)
    with pytest.raises(ValueError, match="values contains 1 NaN/inf"):
        Memory(np.ones((3, 4)), values=A)


def test_empty_and_misshapen_memories():
    for empty in (np.empty((0, 4)), np.empty((3, 0))):
        with pytest.raises(ValueError, match="empty"):
            Memory(empty)
    with pytest.raises(ValueError, match="2 dimensions"):
        Memory(np.ones(4))
    with pytest.raises(ValueError, match="1 or 2 dimensions"):
        Memory(np.ones((3, 4))).retrieve(np.ones((2, 2, 4)))
    with pytest.raises(TypeError, match="numeric"):
        Memory(np.array([["a", "b"]]))
    with pytest.raises(TypeError, match="real"):
        Memory(np.array([[1.0 + 2.0j, 3.0]]))


def test_hamming_refuses_non_binary_data_at_construction_and_query():
    with pytest.raises(ValueError, match="binary"):
        Memory(np.array([[0.0, 0.5], [1.0, 1.0]]), similarity="hamming")
    mem = Memory(np.array([[0.0, 1.0], [1.0, 1.0]]), similarity="hamming", separation="max")
    with pytest.raises(ValueError, match="binary"):
        mem.retrieve(np.array([0.3, 1.0]))
    with pytest.raises(ValueError, match="coding"):
        mem.retrieve(np.array([-1.0, 1.0]))


def test_softmax_with_huge_beta_stays_finite(rng):
    X = rng.random((50, 30))
    Q = X + 0.05 * rng.normal(size=X.shape)
    for sim in ("dot", "euclidean", "manhattan"):
        mem = Memory(X, similarity=sim, separation=get_separation("softmax", beta=1e6))
        Z = mem.retrieve(Q)
        assert np.all(np.isfinite(Z))
        assert_allclose(Z, Memory(X, similarity=sim, separation="max").retrieve(Q), atol=1e-12)


def test_unknown_names_list_the_choices():
    X = np.ones((2, 3))
    with pytest.raises(ValueError, match=r"unknown similarity 'cosinus'.*choose one of.*'cosine'"):
        Memory(X, similarity="cosinus")
    with pytest.raises(ValueError, match=r"unknown separation 'softermax'.*choose one of.*'softmax'"):
        Memory(X, separation="softermax")
    with pytest.raises(ValueError, match=r"unknown output 'tanh'.*'majority'.*'sign'"):
        Memory(X, output="tanh")
    with pytest.raises(ValueError, match=r"unknown convention 'paper'.*'paper_code'"):
        Memory(X, convention="paper")


def test_heteroassociative_row_count_mismatch():
    with pytest.raises(ValueError, match=r"shape mismatch: 4 memories but 3 values"):
        Memory(np.ones((4, 5)), values=np.ones((3, 2)))


def test_log_separation_on_negative_scores_says_why():
    mem = Memory(np.random.default_rng(0).random((4, 3)), similarity="euclidean", separation="log")
    with pytest.raises(ValueError, match="paper_code"):
        mem.retrieve(np.zeros(3) + 0.5)


@pytest.mark.parametrize("sep", ["max", "k_max", "softmax"])
def test_retrieval_never_aliases_the_stored_memories(rng, sep):
    X = rng.random((6, 5))
    X0 = X.copy()
    mem = Memory(X, similarity="euclidean", separation=get_separation("k_max", k=2) if sep == "k_max" else sep)
    Z = mem.retrieve(X)
    assert not np.shares_memory(Z, mem.M)
    Z[:] = -1.0
    assert_array_equal(mem.M, X0)
