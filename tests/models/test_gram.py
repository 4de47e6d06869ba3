"""Retrieval from a product the caller already has: Memory.retrieve(Q, gram=Q @ M.T).

The similarities with a Gram form (dot, euclidean, squared_euclidean, the paper's normalised dot)
score from Q @ M.T plus per-row quantities; handed the product, they skip their own GEMM. The
result must be the one retrieval computes without it: bit for bit where the same product enters
the same arithmetic, within round-off for the paper's dot (it divides the product instead of
multiplying the normalised operands). The capacity sweep shares one product per (N, block)
problem among its lines (uhn.models.experiments.capacity._gram).
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from uhn.models import Memory
from uhn.models.experiments import capacity
from uhn.models.similarity import get_similarity

GRAM_FORMS = ["dot", "euclidean", "squared_euclidean"]
EPS = np.finfo(np.float64).eps


def test_the_similarities_with_a_gram_form():
    standard = {name: get_similarity(name).gram for name in
                ["dot", "euclidean", "squared_euclidean", "cosine", "manhattan", "kl", "reverse_kl"]}
    assert standard == {"dot": True, "euclidean": True, "squared_euclidean": True, "cosine": False,
                        "manhattan": False, "kl": False, "reverse_kl": False}
    assert get_similarity("dot", convention="paper_code").gram
    assert not get_similarity("euclidean", convention="paper_code").gram   # 1 / distance: no GEMM form


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 9), d=st.integers(1, 12), b=st.integers(1, 6),
       sim=st.sampled_from(GRAM_FORMS), sep=st.sampled_from(["max", "softmax", "identity"]),
       hetero=st.booleans(), eps=st.sampled_from([0.0, 0.3]))
def test_retrieval_with_the_product_equals_retrieval_without(seed, n, d, b, sim, sep, hetero, eps):
    rng = np.random.default_rng(seed)
    M, Q = rng.standard_normal((n, d)), rng.standard_normal((b, d))
    P = rng.standard_normal((n, 3)) if hetero else None
    similarity = get_similarity(sim, eps=eps) if sim == "euclidean" else sim
    mem = Memory(M, P, similarity=similarity, separation=sep)
    np.testing.assert_array_equal(mem.retrieve(Q, gram=Q @ M.T), mem.retrieve(Q))
    # one query with its (N,) product row
    np.testing.assert_array_equal(mem.retrieve(Q[0], gram=Q[0] @ M.T), mem.retrieve(Q[0]))
    # chunked batches slice the product with the queries: the scores are those of the whole
    # batch's product (a one-row GEMM may round otherwise), so max gathers the same rows
    small = Memory(M, P, similarity=similarity, separation=sep, chunk_bytes=1)
    G = Q @ M.T
    G.setflags(write=False)                     # read, never written
    if sep == "max":
        np.testing.assert_array_equal(small.retrieve(Q, gram=G), mem.retrieve(Q, gram=G))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 9), d=st.integers(1, 12), b=st.integers(1, 6))
def test_paper_dot_from_the_product_is_equal_up_to_round_off(seed, n, d, b):
    """Paper dot: (Q/sq)(M/sm)^T against (Q M^T)/(sq sm). Positive entries (pixel data), so each
    way is a D-term sum of positive terms with relative error <= (D + 2) eps; the normalised
    scores s / sum(s) then differ by at most twice that, relative, and the (scores-weighted)
    retrieval by that times max |P|."""
    rng = np.random.default_rng(seed)
    M, Q = rng.random((n, d)) + 0.01, rng.random((b, d)) + 0.01
    mem = Memory(M, similarity="dot", separation="identity", convention="paper_code")
    z, z0 = mem.retrieve(Q, gram=Q @ M.T), mem.retrieve(Q)
    np.testing.assert_allclose(z, z0, rtol=0, atol=4 * (d + 2) * EPS * np.abs(M).max())


@pytest.mark.parametrize("name, convention", [("dot", "standard"), ("euclidean", "standard"),
                                              ("squared_euclidean", "standard"), ("dot", "paper_code")])
def test_scores_from_the_product_are_the_scores(rng, name, convention):
    """Similarity.score(M, Q, gram=Q @ M.T) itself (no Memory, no normalisation after it): equal
    to the score without it, bit for bit, or for the paper's dot (which divides the product by
    the two pixel sums instead of multiplying the normalised rows) within (D + 2) eps relative,
    positive data: each way is a D-term sum of positive terms."""
    M, Q = rng.random((7, 5)) + 0.1, rng.random((3, 5)) + 0.1
    sim = get_similarity(name, convention=convention)
    kw = {"xp": np} if sim.array_api else {}
    S0 = sim.score(M, Q, **kw)
    S = sim.score(M, Q, gram=Q @ M.T, **kw)
    if convention == "paper_code":
        np.testing.assert_allclose(S, S0, rtol=2 * (5 + 2) * EPS, atol=0)
    else:
        np.testing.assert_array_equal(S, S0)


def test_a_product_that_is_not_q_m_t_is_refused(rng):
    M, Q = rng.random((6, 5)), rng.random((6, 5))
    mem = Memory(M, similarity="dot", separation="max")
    with pytest.raises(ValueError, match=r"gram is not Q @ M.T of these queries and memories: entry \[(0, 5|5, 0)\]"):
        mem.retrieve(Q, gram=M @ Q.T)                     # the transposed product (square, same shape)
    with pytest.raises(ValueError, match=r"of shape \(B, N\) = \(6, 6\), got \(6, 5\)"):
        mem.retrieve(Q, gram=(Q @ M.T)[:, :5])
    with pytest.raises(ValueError, match="gram has dtype float32; the queries and memories compute in float64"):
        mem.retrieve(Q, gram=(Q @ M.T).astype(np.float32))
    G = Q @ M.T
    G[2, 3] = np.nan
    with pytest.raises(ValueError, match="gram contains NaN/inf"):
        mem.retrieve(Q, gram=G)
    with pytest.raises(ValueError, match="'manhattan' is not computed from Q @ M.T"):
        Memory(M, similarity="manhattan").retrieve(Q, gram=Q @ M.T)
    # an entry off by more than the rounding bound of a 5-term sum is caught at a checked entry
    G = Q @ M.T
    G[0, 5] *= 1 + 1e-9
    with pytest.raises(ValueError, match=r"entry \[0, 5\]"):
        mem.retrieve(Q, gram=G)


def test_huge_entries_keep_the_overflow_safe_path(rng):
    """The capacity sweep hands no product where it overflows; euclidean then rescales as usual."""
    M, Q = rng.random((4, 3)) * 1e200, rng.random((2, 3)) * 1e200
    with np.errstate(over="ignore"):
        assert not np.isfinite(Q @ M.T).all()
    z = Memory(M, similarity="euclidean", separation="max").retrieve(Q)
    assert np.all(np.isfinite(z))


def test_capacity_lines_share_one_product_and_measure_the_same(monkeypatch):
    """The lines of one (N, block) problem that score from Q @ M.T get the same read-only product
    object, and every measured value equals the one computed without sharing (monkeypatched)."""
    points = capacity.experiment("similarity_vs_n", dataset="digits", blocks=2, n_memories=[10, 50])
    first = {}                          # grouped by problem, as capacity.run measures them
    for p in points:
        first.setdefault(capacity._problem_key(p), len(first))
    points.sort(key=lambda p: first[capacity._problem_key(p)])
    capacity._problem.cache_clear()
    capacity._gram.cache_clear()
    shared = {}
    for p in points:
        key = capacity._problem_key(p)
        if p.similarity in ("dot", "euclidean"):
            G = capacity._gram(key)
            assert not G.flags.writeable
            assert shared.setdefault(key, G) is G
    fields = ("n_correct", "median_error", "mean_error", "n_failed_queries")
    with_gram = [{f: capacity.evaluate(p)[f] for f in fields} for p in points]
    monkeypatch.setattr(capacity, "_gram", lambda key: None)
    without = [{f: capacity.evaluate(p)[f] for f in fields} for p in points]
    for p, a, b in zip(points, with_gram, without):
        if p.convention == "paper_code":            # divides the product: equal up to round-off
            assert a["n_correct"] == b["n_correct"]
            np.testing.assert_allclose(a["median_error"], b["median_error"], rtol=1e-12)
        else:
            assert a == b, p


@pytest.mark.parametrize("sim", GRAM_FORMS)
def test_the_product_in_another_array_namespace(sim):
    """array-api-strict arrays: the product is read in that namespace (copied where the score
    would have owned it) and gives the numpy retrieval's result within round-off."""
    xps = pytest.importorskip("array_api_strict")
    rng = np.random.default_rng(3)
    M, Q = rng.random((7, 5)), rng.random((4, 5))
    mem = Memory(xps.asarray(M), similarity=sim, separation="softmax")
    Qx = xps.asarray(Q)
    G = Qx @ xps.asarray(M).T
    z = np.asarray(mem.retrieve(Qx, gram=G))
    np.testing.assert_allclose(z, np.asarray(mem.retrieve(Qx)), rtol=1e-13, atol=1e-15)
    np.testing.assert_array_equal(np.asarray(G), Q @ M.T)     # G itself left as it was
    with pytest.raises(TypeError, match="gram is a numpy array; this Memory computes in array_api_strict"):
        mem.retrieve(Qx, gram=Q @ M.T)


def test_the_spot_check_bound_is_two_gamma_d_of_the_summed_magnitudes(rng):
    """An entry is refused when it differs from the sum of its rows' products by more than
    2 gamma_D sum |q_i m_i| (each of the two sums is within gamma_D of it; Higham's
    gamma_D = D u / (1 - D u)): 1.5 of that passes, 2.5 is refused, at either checked entry."""
    M, Q = rng.random((6, 5)) + 0.5, rng.random((4, 5)) + 0.5
    mem = Memory(M, similarity="dot", separation="max")
    D, u = 5, np.finfo(np.float64).eps
    gamma = D * u / (1 - D * u)
    for b, mu in [(0, 5), (3, 0)]:
        terms = Q[b] * M[mu]
        want, scale = float(np.sum(terms)), float(np.sum(np.abs(terms)))
        for factor, refused in [(1.5, False), (2.5, True)]:
            G = Q @ M.T
            G[b, mu] = want + factor * gamma * scale
            assert abs(G[b, mu] - want) == pytest.approx(factor * gamma * scale, rel=0.2)
            if refused:
                with pytest.raises(ValueError, match=rf"entry \[{b}, {mu}\]"):
                    mem.retrieve(Q, gram=G)
            else:
                mem.retrieve(Q, gram=G)
