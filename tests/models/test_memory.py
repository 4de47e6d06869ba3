"""Memory z = P^T sep(sim(M, q)): batches, exact max retrieval, heteroassociation, bad input."""
import numpy as np
import pytest
from hypothesis import assume, given, strategies as st
from numpy.testing import assert_allclose, assert_array_equal

from uhn.models import Memory, get_separation, get_similarity
from uhn.models.arrays import to_numpy
from uhn.models.separation import Separation
from uhn.models.similarity import Similarity

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
    if sep == "polynomial":  # rectified: 0 on every score <= 0, so Memory refuses the distances
        return convention == "paper_code" or sim in ("dot", "cosine")
    return True


PAIRS = [(c, sim, sep) for c, sims in (("standard", STANDARD), ("paper_code", PAPER))
         for sim in sims for sep in SEPARATIONS if _valid(sim, sep, c)]


EPS = np.finfo(np.float64).eps


def _normalised_err(X, E):
    """Error of X / sum(X) (row-wise) given an error bound E on X: the numerator's E/|s|, the
    sum's (sum E + N eps sum|X|) times |X/s|/|s|."""
    s = X.sum(1, keepdims=True)
    return (E + np.abs(X / s) * (E.sum(1, keepdims=True) + X.shape[1] * EPS * np.abs(X).sum(1, keepdims=True))) \
        / np.abs(s)


def _pipeline_errors(sim_err, S_raw, sep_name, separation, convention, P):
    """Round-off bounds on the scores S, weights W and output Z of z = P^T sep(sim(M, q)),
    propagated to first order from the similarity's bound ``sim_err`` (tests/conftest.py).

    Returns (E_S, E_W, E_Z), or None where a discontinuous separation (max, k_max, threshold)
    could flip within round-off: the caller skips that draw."""
    params = separation.params
    S, E = S_raw, sim_err
    if convention == "paper_code":
        S, E = S_raw / S_raw.sum(1, keepdims=True), _normalised_err(S_raw, sim_err)
    N = S.shape[1]
    if sep_name in ("max", "k_max"):
        k = params.get("k", 1)
        top = -np.sort(-S, axis=1)
        # exact scores (E = 0, e.g. hamming counts) break ties identically in both: no flip
        if k < N and not np.all((top[:, k - 1] - top[:, k] > 2 * E.max(1)) | (E.max(1) == 0)):
            return None
        W, EW = None, np.zeros_like(S)
    elif sep_name == "threshold":
        if not np.all((np.abs(S - params["theta"]) > E) | (E == 0)):
            return None
        EW = np.zeros_like(S)
    elif sep_name == "identity":
        EW = E
    elif sep_name in ("polynomial", "polynomial_signed"):
        n = params["n"]  # d|S|^n = n |S|^(n-1) dS, and the power rounds to ~2 eps
        EW = n * np.abs(S) ** (n - 1) * E + 2 * EPS * np.abs(S) ** n
    elif sep_name == "softmax":
        beta = params["beta"]  # dW_i = W_i beta (dS_i - sum_j W_j dS_j), plus exp and the sum
        W = np.exp(beta * (S - S.max(1, keepdims=True)))
        W /= W.sum(1, keepdims=True)
        EW = W * beta * (E + (W * E).sum(1, keepdims=True)) + (N + 4) * EPS * W
    elif sep_name == "exp":
        W = np.exp(params["beta"] * S)
        EW = W * params["beta"] * E + 2 * EPS * W
    elif sep_name == "log":
        EW = E / np.abs(S) + 2 * EPS * np.abs(np.log(S))
    else:
        raise KeyError(sep_name)
    W = separation(S)
    if convention == "paper_code":
        EW, W = _normalised_err(W, EW), W / W.sum(1, keepdims=True)
    # Z = W P: the weights' error through |P|, plus the product's own (N + 2) eps |W| |P|
    EZ = EW @ np.abs(P) + (N + 2) * EPS * (np.abs(W) @ np.abs(P))
    return E, EW, EZ


@pytest.mark.parametrize("convention,sim,sep", PAIRS)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 9), d=st.integers(1, 12), b=st.integers(1, 5),
       o=st.integers(1, 4), hetero=st.booleans())
def test_batch_equals_loop_over_single_queries(score_err, convention, sim, sep, seed, n, d, b, o, hetero):
    r = np.random.default_rng(seed)
    if sim == "hamming":
        A, Q = r.integers(0, 2, (n, d)).astype(float), r.integers(0, 2, (b, d)).astype(float)
    else:
        A, Q = r.uniform(0.05, 1.0, (n, d)), r.uniform(0.05, 1.0, (b, d))
    P = r.normal(size=(n, o)) if hetero else None
    sim_params = {"p": 3} if sim == "minkowski" else {}
    similarity = get_similarity(sim, convention=convention, **sim_params)
    separation = _separation(sep, convention, n)
    mem = Memory(A, P, similarity=similarity, separation=separation, convention=convention)
    Pm = A if P is None else P
    # error bounds of the batch (and, identically, of each single query) from the similarity's
    # round-off: a 1-D query runs the same formulas with other BLAS summation orders, so the two
    # may differ by twice the bound. 1/KL (paper_code) is ill-conditioned as KL -> 0: such draws,
    # and draws where max/threshold could flip within round-off, are skipped
    sim_err = score_err(sim, convention, A, Q, **sim_params)
    assume(np.all(np.isfinite(sim_err)))
    errs = _pipeline_errors(sim_err, similarity(A, Q), sep, separation, convention, Pm)
    assume(errs is not None)
    ES, EW, EZ = errs
    Z, W, S = mem.retrieve(Q), mem.weights(Q), mem.similarities(Q)
    assert Z.shape == (b, o if hetero else d) and W.shape == S.shape == (b, n)
    assert np.all(np.isfinite(Z))
    for k in range(b):
        # a 1-D query gives 1-D results equal to the batch's row up to the round-off bounds
        assert np.all(np.abs(mem.retrieve(Q[k]) - Z[k]) <= 2 * EZ[k])
        assert np.all(np.abs(mem.weights(Q[k]) - W[k]) <= 2 * EW[k])
        assert np.all(np.abs(mem.similarities(Q[k]) - S[k]) <= 2 * ES[k])
    # the pipeline is literally z = P^T sep(sim(M, q)): same W, only the product's rounding differs
    assert np.all(np.abs(Z - W @ Pm) <= (n + 2) * EPS * (np.abs(W) @ np.abs(Pm)))


@pytest.mark.parametrize("sim", ["dot", "euclidean", "manhattan", "kl"])
def test_paper_code_max_gathers_the_row_the_dense_product_gives(rng, sim):
    """paper_code + max takes the gather of the standard convention: its normalised weights are
    one-hot exactly (sum 1), and the product of a one-hot row with P is that row of P bit for bit,
    so the gather is the dense path's answer, not an approximation of it (ties: lower index)."""
    A = rng.random((30, 12))
    Q = np.vstack([A[::-1] + 0.05 * rng.random((30, 12)), A[[3, 3]]])   # the last: exact hits
    P = rng.normal(size=(30, 5))
    for values in (None, P):
        mem = Memory(A, values, similarity=sim, separation="max", convention="paper_code")
        W = mem.weights(Q)
        assert_array_equal(W.sum(1), 1.0)
        assert_array_equal((W == 1).sum(1), 1)
        Pm = A if values is None else values
        assert_array_equal(mem.retrieve(Q), W @ Pm)
        assert_array_equal(mem.retrieve(Q), Pm[np.argmax(mem.similarities(Q), axis=1)])


def test_paper_code_normalises_scores_and_weights():
    A = np.array([[0.0, 1.0, 2.0], [2.0, 2.0, 0.0], [1.0, 1.0, 1.0]])
    q = np.array([0.5, 1.0, 1.5])
    mem = Memory(A, similarity="manhattan", separation="identity", convention="paper_code")
    d = np.abs(A - q).sum(1)
    # d: D = 3 positive terms, (D + 2) eps each way; 1/d one ulp; the normalisation N + 2 more;
    # Z sums N positive products, N + 2 more; the square doubles the relative error of s
    r_s = 2 * ((3 + 2) + 1 + (3 + 2)) * EPS
    assert_allclose(mem.similarities(q), (1 / d) / (1 / d).sum(), rtol=r_s)
    assert_allclose(mem.retrieve(q), ((1 / d) / (1 / d).sum()) @ A, rtol=r_s + 2 * (3 + 2) * EPS)
    mem = Memory(A, similarity="manhattan", separation=get_separation("polynomial", n=2), convention="paper_code")
    s = (1 / d) / (1 / d).sum()
    assert_allclose(mem.weights(q), s ** 2 / (s ** 2).sum(), rtol=2 * r_s + 2 * (3 + 2) * EPS)


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
def test_heteroassociative_corrupted_key_retrieves_its_value(rng, bipolar, flip, softmax_leak, sim, sep):
    keys = bipolar(rng, 30, 200)
    values = rng.normal(size=(30, 7))
    mem = Memory(keys, values, similarity=sim,
                 separation=get_separation("softmax", beta=5.0) if sep == "softmax" else sep)
    assert not mem.autoassociative and "hetero" in repr(mem)
    Q = flip(rng, keys, 0.15)
    Z = mem.retrieve(Q)
    assert Z.shape == (30, 7)
    if sep == "max":
        assert_array_equal(Z, values)
    else:
        S = mem.similarities(Q)
        assert np.all(np.argmax(S, axis=1) == np.arange(30))
        assert np.all(np.abs(Z - values) <= softmax_leak(S, 5.0, values)[:, None])
    with pytest.raises(ValueError, match="O == D"):
        mem.iterate(keys)


def test_identity_autoassociative_is_the_classical_projection(rng, bipolar):
    X = bipolar(rng, 5, 16)
    q = rng.normal(size=16)
    # two products of sums over N and D terms: (N + D + 4) eps times the absolute terms
    bound = (5 + 16 + 4) * EPS * (np.abs(X).T @ (np.abs(X) @ np.abs(q)))
    assert np.all(np.abs(Memory(X).retrieve(q) - X.T @ (X @ q)) <= bound)
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


def test_softmax_with_huge_beta_stays_finite(rng, softmax_leak):
    X = rng.random((50, 30))
    Q = X + 0.05 * rng.normal(size=X.shape)
    for sim in ("dot", "euclidean", "manhattan"):
        mem = Memory(X, similarity=sim, separation=get_separation("softmax", beta=1e6))
        Z = mem.retrieve(Q)
        assert np.all(np.isfinite(Z))
        Zmax = Memory(X, similarity=sim, separation="max").retrieve(Q)
        assert np.all(np.abs(Z - Zmax) <= softmax_leak(mem.similarities(Q), 1e6, X)[:, None])


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


# ------------------------------------------------------------------ no silent wrong answers
@pytest.mark.parametrize("output", [None, "sign"])
def test_k_max_with_more_k_than_memories_is_refused_in_retrieve(output):
    # standard convention without output used to gather all N rows and return their mean
    X = np.array([[1.0, -1.0, 1.0], [-1.0, 1.0, 1.0]])
    mem = Memory(X, similarity="dot", separation=get_separation("k_max", k=3), output=output)
    for call in (mem.retrieve, mem.weights):
        with pytest.raises(ValueError, match=r"k_max\(k=3\) asks for more memories than are stored \(2\)"):
            call(X[0])
    # k = N is legitimate: the mean of all memories
    assert_array_equal(Memory(X, separation=get_separation("k_max", k=2)).retrieve(X[0]), X.mean(0))


def test_huge_finite_inputs_retrieve_exactly_instead_of_memory_zero(rng):
    # 1e200-sized patterns: the GEMM squared distance overflowed to NaN, max then returned memory 0
    X = rng.random((20, 30))
    Q = X[::-1] + 0.01 * rng.normal(size=X.shape)
    for sim in ("euclidean", "manhattan", "cosine"):
        for s in (2.0 ** 665, 2.0 ** -665):  # ~1e200 and ~1e-200
            mem = Memory(X * s, similarity=sim, separation="max")
            assert_array_equal(mem.retrieve(Q * s), X[::-1] * s)
    with pytest.raises(OverflowError, match=r"similarity 'dot' gave 400 NaN/inf score\(s\) for finite inputs"):
        Memory(X * 1e200, separation="max").retrieve(Q * 1e200)


def test_nan_from_a_custom_similarity_or_separation_is_refused(rng):
    X = rng.random((4, 3))
    nan_sim = Similarity("nan_sim", lambda M, Q: np.full((Q.shape[0], M.shape[0]), np.nan))
    with pytest.raises(OverflowError, match=r"similarity 'nan_sim' gave 4 NaN/inf score"):
        Memory(X, similarity=nan_sim, separation="max").retrieve(X[0])
    # a separation that returns NaN for finite scores: Memory's own weight check names it
    nan_sep = Separation("nan_sep", lambda S: S * np.nan)
    with pytest.raises(FloatingPointError, match=r"separation nan_sep produced NaN/inf weights"):
        Memory(X, separation=nan_sep).retrieve(X[0])
    with pytest.raises(FloatingPointError, match=r"separation nan_sep produced NaN/inf weights"):
        Memory(X, separation=nan_sep).weights(X)


def test_iterate_parameters_are_checked(rng):
    mem = Memory(rng.random((4, 3)), similarity="euclidean", separation="max")
    # tol = -1 could never be met: it used to loop silently to max_steps
    for bad in (-1.0, np.nan):
        with pytest.raises(ValueError, match=r"iterate tol must be"):
            mem.iterate(np.ones(3), tol=bad)
    with pytest.raises(TypeError, match=r"iterate max_steps must be an integer, got float 2\.5"):
        mem.iterate(np.ones(3), max_steps=2.5)
    with pytest.raises(ValueError, match=r"iterate max_steps must be >= 1, got 0"):
        mem.iterate(np.ones(3), max_steps=0)


# --------------------------------------------------------------------------------------------------
# Values a full mutation run (tools/mutate.py; docs/testing.md, "Full runs with --select
# coverage") left unchecked, pinned on inputs where they are known exactly: the iteration cap, dtype
# promotion, the chunk budget, and the array-API iterate loop.


def test_n_memories_counts_rows():
    assert Memory(np.zeros((5, 7))).n_memories == 5


def test_float32_query_on_float64_memory_computes_in_float64():
    """The query is promoted to the memory's float64 (not the memory demoted to float32): the
    result equals, bit for bit, that of the same query given in float64."""
    rng = np.random.default_rng(0)
    M = rng.standard_normal((6, 5))
    q32 = rng.standard_normal((3, 5)).astype(np.float32)
    mem = Memory(M, similarity="dot", separation="softmax")
    z = mem.retrieve(q32)
    assert z.dtype == np.float64
    np.testing.assert_array_equal(z, mem.retrieve(q32.astype(np.float64)))


def test_iterate_stops_after_100_steps_by_default():
    """Dot + identity with M = (2, 0): z_{t+1} = M^T M z_t = 4 z_t never converges; after the
    default cap of 100 steps z = 4^100 q = 2^200 q exactly."""
    res = Memory(np.array([[2.0, 0.0]])).iterate(np.array([1.0, 0.0]))
    assert res.steps == 100 and not res.converged
    np.testing.assert_array_equal(res.states, [2.0**200, 0.0])


def test_smallest_chunk_budget_retrieves_one_row_at_a_time():
    """chunk_bytes = 1 (the smallest allowed) forces one query per chunk: the batch's result is,
    bit for bit, that of the queries retrieved one at a time (the same 1-row products), and agrees
    with the one-piece batch to the round-off of z = W P: |dz| <= 2 gamma_N sum_mu |w_mu||p_mu|
    plus the weights' own round-off (of the same size; N = 7, gamma_N = N eps)."""
    rng = np.random.default_rng(1)
    M, Q = rng.standard_normal((7, 4)), rng.standard_normal((5, 4))
    mem = Memory(M, similarity="euclidean", separation="softmax")
    z = Memory(M, similarity="euclidean", separation="softmax", chunk_bytes=1).retrieve(Q)
    np.testing.assert_array_equal(z, np.stack([mem.retrieve(q) for q in Q]))
    bound = 4 * 7 * EPS * (mem.weights(Q) @ np.abs(M))
    assert np.all(np.abs(z - mem.retrieve(Q)) <= bound)


def test_strict_iterate_stops_when_nothing_moves(to_strict):
    """The array-API loop of Memory.iterate: from a query one entry away from memory 0, dot + max
    retrieval moves that entry at step 1 and nothing at step 2 (max change 0, not > tol = 0), so it
    stops converged after 2 steps, as the numpy loop does."""
    M = np.array([[1.0, 1.0, 1.0, 1.0], [1.0, -1.0, 1.0, -1.0]])
    res = Memory(to_strict(M), similarity="dot", separation="max").iterate(to_strict([[1.0, 1.0, 1.0, 0.0]]))
    np.testing.assert_array_equal(to_numpy(res.states), M[:1])
    assert to_numpy(res.steps).tolist() == [2] and to_numpy(res.converged).tolist() == [True]


def test_iterate_continues_while_any_entry_moves():
    """Dot / max retrieval from a query that differs from memory 0 in one entry: step 1 moves that
    entry only (the rest already agree), step 2 retrieves the same memory and nothing moves:
    two steps, converged. 'moved' must mean the largest change exceeds tol, not the smallest."""
    M = np.array([[1.0, 1.0, 1.0, 1.0], [1.0, -1.0, 1.0, -1.0]])
    q = np.array([1.0, 1.0, 1.0, 0.0])
    res = Memory(M, similarity="dot", separation="max").iterate(q)
    np.testing.assert_array_equal(res.states, M[0])
    assert res.steps == 2 and res.converged


@pytest.mark.parametrize("sim", ["euclidean", "squared_euclidean", "manhattan", "minkowski", "kl",
                                 "reverse_kl", "hamming"])
def test_rectified_polynomial_on_distance_scores_is_refused(sim):
    """Every standard distance score is <= 0 (docs/theory.md §1.1) and the rectified polynomial
    max(S, 0)^n is 0 there (§1.3): such a memory returned z = 0 for every query, silently (issue
    29). It is refused at construction, naming both; the signed polynomial, the paper_code
    reciprocal distances (> 0) and softmax stay allowed."""
    X = (np.random.default_rng(0).random((4, 6)) > 0.5).astype(float)
    X[:, 0] = 1.0                                     # no all-zero row (kl, paper_code)
    assert get_similarity(sim).nonpositive
    with pytest.raises(ValueError, match=rf"polynomial\(n=2\) weights every score <= 0 with 0, and "
                                         rf"every '{sim}.*' score is <= 0.*z = 0 for every query"):
        Memory(X, similarity=sim, separation=get_separation("polynomial", n=2))
    with pytest.raises(ValueError, match="z = 0 for every query"):
        Memory(X, similarity=sim, separation=get_separation("threshold", theta=0.5))
    for sep in (get_separation("polynomial", n=2, rectified=False), get_separation("softmax")):
        assert np.any(Memory(X, similarity=sim, separation=sep).weights(X[:2]) != 0)
    if sim in ("euclidean", "manhattan", "kl", "reverse_kl"):
        mem = Memory(X, similarity=sim, separation=get_separation("polynomial", n=2), convention="paper_code")
        assert np.all(mem.weights(X[:2]) > 0)


def test_positive_similarities_keep_the_rectified_polynomial():
    for sim in ("dot", "cosine"):
        assert not get_similarity(sim).nonpositive
    X = np.random.default_rng(1).random((4, 6))
    assert np.all(Memory(X, similarity="dot", separation=get_separation("polynomial", n=2)).weights(X) > 0)


def _float32_cycle():
    """50 random images, 10 half-masked queries: cosine + identity iterates to a fixed point that
    float32 round-off keeps moving by 1-5 ulps from step to step."""
    rng = np.random.default_rng(0)
    M = rng.random((50, 784))
    return M, M[:10] * (rng.random((10, 784)) > 0.5)


def test_iterate_raises_a_tol_below_the_float32_resolution_with_a_warning():
    """float32 iterate(tol=1e-12) ran all 500 steps and reported not converged, where float64
    converges in 8 (issue 29): 1e-12 is 1e5 times below one float32 ulp of these states. The tol is
    raised to ITERATE_RESOLUTION_ULPS eps32 max|z| with a RuntimeWarning, and the states are the
    float64 fixed point to float32 accuracy."""
    from uhn.models.memory import ITERATE_RESOLUTION_ULPS
    M, Q = _float32_cycle()
    m64 = Memory(M, similarity="cosine", separation="identity")
    r64 = m64.iterate(Q, max_steps=500, tol=1e-12)
    assert r64.converged.all() and r64.steps.max() < 20
    m32 = Memory(M.astype(np.float32), similarity="cosine", separation="identity")
    with pytest.warns(RuntimeWarning, match=r"tol=1e-12 is below what float32 resolves for these states "
                                            rf"\({ITERATE_RESOLUTION_ULPS} eps max\|z\| = "):
        r32 = m32.iterate(Q.astype(np.float32), max_steps=500, tol=1e-12)
    assert r32.converged.all() and r32.steps.max() < 20
    scale = np.abs(r64.states).max(axis=1, keepdims=True)
    assert np.all(np.abs(r32.states - r64.states) <= 1e-5 * scale)
    with pytest.warns(RuntimeWarning, match="float32 resolves"):   # one array-API path, one rule
        xps = pytest.importorskip("array_api_strict")
        rs = Memory(xps.asarray(M.astype(np.float32)), similarity="cosine", separation="identity").iterate(
            xps.asarray(Q.astype(np.float32)), max_steps=500, tol=1e-12)
    assert bool(xps.all(rs.converged))


def test_iterate_keeps_a_resolvable_tol_and_tol_zero_as_given():
    """No warning where tol is above the resolution (float64 at 1e-12, float32 at 1e-4) and for
    tol = 0 (an exact repetition is asked for; float32 may then run to max_steps)."""
    import warnings
    M, Q = _float32_cycle()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Memory(M, similarity="cosine", separation="identity").iterate(Q, max_steps=50, tol=1e-12)
        r = Memory(M.astype(np.float32), similarity="cosine", separation="identity").iterate(
            Q.astype(np.float32), max_steps=50, tol=1e-4)
        assert r.converged.all()
        Memory(M.astype(np.float32), similarity="cosine", separation="identity").iterate(
            Q.astype(np.float32), max_steps=5, tol=0.0)
