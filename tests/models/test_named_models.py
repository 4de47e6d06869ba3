"""The named instances behave as the literature says: HN capacity ~0.14 D, DAM beyond it, MCHN in
one step, SDM within its radius (docs/theory.md sections 1 and 5)."""
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from uhn.models import (ClassicalHopfield, classical_hopfield, dense_associative_memory,
    modern_hopfield, sign, sparse_distributed_memory)
from uhn.models.arrays import to_numpy

D = 400
EPS = np.finfo(np.float64).eps


def test_named_instances_are_the_right_compositions(rng, bipolar):
    X = bipolar(rng, 4, 12)
    assert isinstance(classical_hopfield(X), ClassicalHopfield)
    hn = classical_hopfield(X)
    assert (hn.similarity.name, hn.separation.name, hn.output) == ("dot", "identity", "sign")
    sdm = sparse_distributed_memory((X > 0).astype(float), radius=3)
    assert (sdm.similarity.name, sdm.separation.name, sdm.output) == ("hamming", "threshold(theta=-3)", "majority")
    assert sparse_distributed_memory(X).output == "sign"
    dam = dense_associative_memory(X, n=3)
    assert (dam.similarity.name, dam.separation.name) == ("dot", "polynomial(n=3)")
    mchn = modern_hopfield(X, beta=4)
    assert (mchn.similarity.name, mchn.separation.name) == ("dot", "softmax(beta=4)")


def test_classical_hopfield_weights_and_single_shot(rng, bipolar):
    X = bipolar(rng, 6, 30)
    hn = classical_hopfield(X)
    W = X.T @ X
    np.fill_diagonal(W, 0)
    assert_array_equal(hn.W, W)
    assert_array_equal(classical_hopfield(X, zero_diagonal=False).W, X.T @ X)
    q = rng.normal(size=30)
    assert_array_equal(hn.retrieve(q), sign(X.T @ (X @ q)))
    assert set(np.unique(hn.retrieve(np.zeros(30)))) == {1.0}  # sign(0) = +1 keeps outputs bipolar


def _hn_recall(n, seed, flip, bipolar, mode="async"):
    rng = np.random.default_rng(seed)
    X = bipolar(rng, n, D)
    res = classical_hopfield(X).update(flip(rng, X, 0.05), mode=mode, seed=seed)
    return X, res, np.all(res.states == X, axis=1), (res.states * X).mean(1)


def test_classical_hopfield_recalls_below_capacity(flip, bipolar):
    X, res, recalled, overlap = _hn_recall(int(0.05 * D), 1, flip, bipolar)
    assert res.converged.all()
    assert recalled.mean() >= 0.95 and overlap.min() >= 0.99


def test_classical_hopfield_fails_above_capacity(flip, bipolar):
    # N = 0.3 D is twice the ~0.14 D capacity: the states wander off to spurious minima
    X, res, recalled, overlap = _hn_recall(int(0.3 * D), 2, flip, bipolar)
    assert recalled.mean() < 0.2
    assert overlap.mean() < 0.7


def test_classical_hopfield_async_update_never_raises_the_energy(flip, bipolar):
    rng = np.random.default_rng(3)
    X = bipolar(rng, 40, 100)
    hn = classical_hopfield(X)
    Q = flip(rng, X, 0.2)
    energy = lambda S: -0.5 * np.einsum("bi,ij,bj->b", S, hn.W, S)  # noqa: E731
    E0 = energy(Q)
    E1 = energy(hn.update(Q, max_sweeps=1).states)
    E2 = energy(hn.update(Q, max_sweeps=50).states)
    assert np.all(E1 <= E0 + 1e-9) and np.all(E2 <= E1 + 1e-9)
    fixed = hn.update(Q).states
    assert_array_equal(sign(fixed @ hn.W), fixed)  # a fixed point of the update rule
    one = hn.update(Q[0])                           # a 1-D query: its own row, scalar bookkeeping
    assert_array_equal(one.states, fixed[0])
    assert np.ndim(one.steps) == 0 and np.ndim(one.converged) == 0 and bool(one.converged)
    with pytest.raises(ValueError, match="async"):
        hn.update(Q, mode="random")


def test_dense_associative_memory_beats_classical_capacity(rng, flip, bipolar):
    n = int(0.3 * D)
    X = bipolar(rng, n, D)
    Q = flip(rng, X, 0.05)
    dam = dense_associative_memory(X, n=3)
    assert_array_equal(dam.retrieve(Q), X)  # single shot, every pattern
    res = dam.iterate(Q)
    assert res.converged.all() and np.all(res.steps <= 2)
    assert_array_equal(res.states, X)
    # the classical network fails at the same load (N/D = 0.3)
    hn_recalled = np.all(classical_hopfield(X).update(Q).states == X, axis=1)
    assert hn_recalled.mean() < 0.2


def test_dense_associative_memory_signed_polynomial(rng, flip, bipolar):
    X = bipolar(rng, 60, 200)
    dam = dense_associative_memory(X, n=3, rectified=False)
    assert_array_equal(dam.retrieve(flip(rng, X, 0.05)), X)
    # odd separation: the negated pattern is retrieved from a negated query
    assert_array_equal(dam.retrieve(-X[:5]), -X[:5])


def test_modern_hopfield_retrieves_in_one_step(rng, flip, bipolar, softmax_leak):
    X = bipolar(rng, 20, 256)
    Q = flip(rng, X, 0.10)
    mchn = modern_hopfield(X, beta=1.0)
    S = mchn.similarities(Q)
    assert np.all(np.argmax(S, axis=1) == np.arange(20))
    # the weight left on other memories is bounded by exp(-beta gap): a 10% flip leaves a dot-product
    # gap of ~128 - 2*26 to the nearest other pattern, so the leak ~exp(-70) is below round-off
    tol = softmax_leak(S, 1.0, X)[:, None]
    assert np.all(np.abs(mchn.retrieve(Q) - X) <= tol) and tol.max() <= 2 * (20 + 4) * np.finfo(float).eps
    res = mchn.iterate(Q)
    assert res.converged.all() and np.all(res.steps <= 2)
    assert np.all(np.abs(res.states - X) <= tol)


def test_modern_hopfield_small_beta_averages(rng, bipolar):
    # beta -> 0 gives uniform weights: the retrieval is the mean pattern (a metastable state)
    X = bipolar(rng, 20, 256)
    beta = 1e-9
    mchn = modern_hopfield(X, beta=beta)
    z = mchn.retrieve(X[0])
    # w_nu = exp(beta S_nu) / sum exp(beta S): each within a factor exp(+-beta range(S)) of 1/N, so
    # |z - mean| <= (exp(2 beta range) - 1) max|X| plus round-off (N + 4) eps max|X|
    S = mchn.similarities(X[0])
    tol = np.expm1(2 * beta * np.ptp(S)) + (20 + 4) * np.finfo(float).eps
    assert np.all(np.abs(z - X.mean(0)) <= tol)


def test_sparse_distributed_memory_within_radius(rng, flip, bipolar):
    Xb = (bipolar(rng, 50, 256) > 0).astype(float)  # random memories are ~128 bits apart
    sdm = sparse_distributed_memory(Xb, radius=30)
    Qb = (flip(rng, 2 * Xb - 1, 20 / 256) > 0).astype(float)  # 20 flipped bits: inside the radius
    assert_array_equal(sdm.weights(Qb), np.eye(50))
    assert_array_equal(sdm.retrieve(Qb), Xb)
    # bipolar coding with the sign output
    assert_array_equal(sparse_distributed_memory(2 * Xb - 1, radius=30).retrieve(2 * Qb - 1), 2 * Xb - 1)
    # outside the radius no memory votes and nothing is recalled
    far = (flip(rng, 2 * Xb - 1, 40 / 256) > 0).astype(float)
    assert_array_equal(sdm.weights(far), 0.0)
    assert_array_equal(sdm.retrieve(far), 0.0)


def test_sparse_distributed_memory_majority_vote(rng):
    # three memories inside the radius vote bit by bit: the majority wins
    M = np.array([[1.0, 1, 0, 0, 0, 0], [1, 0, 1, 0, 0, 0], [0, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]])
    z = sparse_distributed_memory(M, radius=2).retrieve(np.array([1.0, 1, 1, 0, 0, 0]))
    assert_array_equal(z, [1, 1, 1, 0, 0, 0])
    with pytest.raises(ValueError, match="binary"):
        sparse_distributed_memory(M * 0.5)


def test_heteroassociative_named_instances(rng, flip, bipolar, softmax_leak):
    keys, values = bipolar(rng, 15, 128), bipolar(rng, 15, 10)
    Q = flip(rng, keys, 0.1)
    mchn = modern_hopfield(keys, values)
    S = mchn.similarities(Q)
    assert np.all(np.argmax(S, axis=1) == np.arange(15))
    assert np.all(np.abs(mchn.retrieve(Q) - values) <= softmax_leak(S, 1.0, values)[:, None])
    assert_array_equal(dense_associative_memory(keys, values, n=3).retrieve(Q), values)


def test_sparse_distributed_memory_output_follows_the_values_coding():
    keys = np.array([[1.0, 0, 1, 0], [0, 1, 0, 1]])
    bip_vals = np.array([[1.0, -1, 1], [-1, -1, 1]])
    bin_vals = (bip_vals > 0).astype(float)
    assert_array_equal(sparse_distributed_memory(keys, bip_vals).retrieve(keys), bip_vals)
    assert_array_equal(sparse_distributed_memory(2 * keys - 1, bin_vals).retrieve(2 * keys - 1), bin_vals)


def test_dense_associative_memory_on_real_valued_digits_needs_normalised_weights():
    """README claim: unnormalised polynomial weights scale the output (0% retrieved on masked
    MNIST), the official code's normalisation to sum 1 retrieves most digits."""
    from uhn.models import Memory, get_separation
    from uhn.models.corruption import corrupt
    from uhn.models.data import load_dataset
    ds = load_dataset("mnist", n=100, seed=0)
    Q = corrupt(ds.X, "mask_bottom", 0.5, ds.image_shape, seed=0)

    def retrieved(Z):
        return np.mean(np.sum((Z - ds.X) ** 2, axis=1) <= 50)
    raw = dense_associative_memory(ds.X, output=None).retrieve(Q)
    assert retrieved(raw) == 0.0 and np.abs(raw).max() > 1e5
    # as the README writes it: the convention keyword is passed on to Memory
    dam = dense_associative_memory(ds.X, output=None, convention="paper_code")
    assert dam.convention == "paper_code"
    paper = dam.retrieve(Q)
    assert_array_equal(paper, Memory(ds.X, similarity="dot", separation=get_separation("polynomial", n=3),
                                     convention="paper_code").retrieve(Q))
    assert retrieved(paper) >= 0.7


def test_classical_hopfield_sync_update():
    # one memory x = (1, -1): W = x x^T with zero diagonal = [[0, -1], [-1, 0]]
    hn = classical_hopfield(np.array([[1.0, -1.0]]))
    # from (1, 1) the synchronous rule flips both neurons every sweep: sign((1, 1) W) = (-1, -1),
    # then back: a 2-cycle that never converges
    res = hn.update(np.array([1.0, 1.0]), mode="sync", max_sweeps=7)
    assert not res.converged and res.steps == 7
    assert_array_equal(res.states, [-1.0, -1.0])  # odd number of sweeps
    assert_array_equal(hn.update(np.array([1.0, 1.0]), mode="sync", max_sweeps=8).states, [1.0, 1.0])
    # the asynchronous rule updates one neuron at a time and lands on a stored pattern (+-x)
    a = hn.update(np.array([1.0, 1.0]), mode="async")
    assert a.converged and abs(a.states @ np.array([1.0, -1.0])) == 2


def test_classical_hopfield_sync_recalls_below_capacity(flip, bipolar):
    X, res, recalled, _ = _hn_recall(int(0.05 * D), 4, flip, bipolar, mode="sync")
    assert res.converged.all() and recalled.all()
    # one synchronous sweep is exactly sign(S W)
    rng = np.random.default_rng(5)
    Q = flip(rng, X, 0.2)
    hn = classical_hopfield(X)
    assert_array_equal(hn.update(Q, mode="sync", max_sweeps=1).states, sign(Q @ hn.W))


def test_classical_hopfield_refuses_non_bipolar_memories():
    with pytest.raises(ValueError, match=r"classical_hopfield needs bipolar \{-1, 1\} memories, but "
                                         r"memories\[0, 1\] = 0; map \{0, 1\} data with 2 x - 1"):
        classical_hopfield(np.array([[1.0, 0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"memories\[1, 0\] = 0.5"):
        classical_hopfield(np.array([[1.0, -1.0], [0.5, 1.0]]))
    with pytest.raises(TypeError, match=r"update max_sweeps must be an integer"):
        classical_hopfield(np.array([[1.0, -1.0]])).update(np.ones(2), max_sweeps=1.5)


def test_sparse_distributed_memory_radius_must_be_finite_and_non_negative():
    X = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match=r"sparse_distributed_memory radius must be >= 0, got -1"):
        sparse_distributed_memory(X, radius=-1)
    for bad in (np.nan, np.inf):
        with pytest.raises(ValueError, match=r"sparse_distributed_memory radius must be a finite number"):
            sparse_distributed_memory(X, radius=bad)


# --------------------------------------------------------------------------------------------------
# Values a full mutation run (tools/mutate.py; docs/testing.md, "Full runs with --select
# coverage") left unchecked, pinned on inputs where they are known exactly: the named models'
# defaults, the update caps, the async update's seeded order, SDM's majority and the zero diagonal
# of W on a non-numpy namespace.


def test_sdm_default_radius_is_zero():
    """radius = 0 by default: only a memory equal to the query votes. Memories 1 and 2 are at
    Hamming distance 1 from memory 0; with radius 1 they outvote its bit 1 (1 of 3 votes)."""
    M = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]], dtype=float)
    np.testing.assert_array_equal(sparse_distributed_memory(M).retrieve(M[0]), M[0])
    np.testing.assert_array_equal(sparse_distributed_memory(M, radius=1.0).retrieve(M[0]), M[1])


def test_modern_hopfield_default_beta_is_one():
    """z = M^T softmax(beta M q): scores (ln 3, 0) give weights (3/4, 1/4) at beta = 1 and
    (9/10, 1/10) at beta = 2 (each entry within a few eps of the exact fraction)."""
    M = np.eye(2)
    q = np.array([np.log(3.0), 0.0])
    np.testing.assert_allclose(modern_hopfield(M).retrieve(q), [0.75, 0.25], rtol=0, atol=8 * EPS)
    np.testing.assert_allclose(modern_hopfield(M, beta=2.0).retrieve(q), [0.9, 0.1], rtol=0, atol=8 * EPS)


def test_sync_update_runs_50_sweeps_by_default_on_a_two_cycle():
    """W = m m^T with zero diagonal for m = (1, -1) is [[0, -1], [-1, 0]]: synchronous updates send
    (1, 1) to (-1, -1) and back, so the default cap of 50 sweeps is reached without convergence."""
    res = classical_hopfield(np.array([[1.0, -1.0]])).update(np.array([1.0, 1.0]), mode="sync")
    assert res.steps == 50 and not res.converged
    np.testing.assert_array_equal(res.states, [1.0, 1.0])   # an even number of sweeps


def test_async_update_default_seed_is_zero():
    """One stored pattern m = 1 and a query with overlap m.s = 0: the first neuron updated sees the
    field m_i (m.s - m_i s_i) = -s_i and flips, after which every neuron aligns with the sign of the
    new overlap. So the fixed point is -s_i m for the first neuron i of the seeded permutation:
    with seed 0 that is neuron 2 (s = +1, fixed point -m); seed 1 starts at neuron 5 (+m)."""
    m = np.ones(8)
    s = np.array([1.0, 1, 1, 1, -1, -1, -1, -1])
    hop = classical_hopfield(m[None, :])
    for seed in (0, 1):
        first = np.random.default_rng(seed).permutation(8)[0]
        np.testing.assert_array_equal(hop.update(s, seed=seed).states, -s[first] * m)
    np.testing.assert_array_equal(hop.update(s).states, hop.update(s, seed=0).states)
    assert not np.array_equal(hop.update(s, seed=0).states, hop.update(s, seed=1).states)


def test_strict_classical_hopfield_has_a_zero_diagonal(to_strict):
    """W = M^T M with W_ii = 0 (zero_diagonal=True) on array-api-strict arrays, as on numpy."""
    M = np.array([[1.0, -1.0, 1.0], [1.0, 1.0, -1.0]])
    W = to_numpy(classical_hopfield(to_strict(M)).W)
    expected = M.T @ M
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_array_equal(W, expected)
    np.testing.assert_array_equal(to_numpy(classical_hopfield(to_strict(M), zero_diagonal=False).W), M.T @ M)


def test_sdm_majority_output_needs_more_than_half_the_votes():
    """Sparse distributed memory on {0,1} data with every memory in range (radius = D): bit i is
    on where more than half of the 4 voting memories have it on: 3 of 4 -> 1, 2 of 4 -> 0 (not
    more than half), 1 of 4 -> 0."""
    M = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 1], [0, 0, 1, 0]], dtype=float)
    z = sparse_distributed_memory(M, radius=4.0).retrieve(np.zeros(4))
    np.testing.assert_array_equal(z, [1.0, 0.0, 0.0, 0.0])
