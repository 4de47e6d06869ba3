"""Closed-form checks of models/memory.py values that a full mutation run (tools/mutate.py) left unchecked.

Each test pins a value on inputs where it is known exactly: defaults of the named models, the
iteration caps, the async update's seeded order, dtype promotion, the zero diagonal of W on a
non-numpy namespace. See docs/testing.md ("Full runs with --select coverage") for the run.
"""
import numpy as np
import pytest

from uhn.models import Memory, classical_hopfield, modern_hopfield, sparse_distributed_memory
from uhn.models.arrays import to_numpy

EPS = np.finfo(np.float64).eps


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


# -------------------------------------------------------------- the array-API branches
def test_strict_iterate_stops_when_nothing_moves(to_strict):
    """The array-API loop of Memory.iterate: from a query one entry away from memory 0, dot + max
    retrieval moves that entry at step 1 and nothing at step 2 (max change 0, not > tol = 0), so it
    stops converged after 2 steps, as the numpy loop does."""
    M = np.array([[1.0, 1.0, 1.0, 1.0], [1.0, -1.0, 1.0, -1.0]])
    res = Memory(to_strict(M), similarity="dot", separation="max").iterate(to_strict([[1.0, 1.0, 1.0, 0.0]]))
    np.testing.assert_array_equal(to_numpy(res.states), M[:1])
    assert to_numpy(res.steps).tolist() == [2] and to_numpy(res.converged).tolist() == [True]


def test_strict_classical_hopfield_has_a_zero_diagonal(to_strict):
    """W = M^T M with W_ii = 0 (zero_diagonal=True) on array-api-strict arrays, as on numpy."""
    M = np.array([[1.0, -1.0, 1.0], [1.0, 1.0, -1.0]])
    W = to_numpy(classical_hopfield(to_strict(M)).W)
    expected = M.T @ M
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_array_equal(W, expected)
    np.testing.assert_array_equal(to_numpy(classical_hopfield(to_strict(M), zero_diagonal=False).W), M.T @ M)
