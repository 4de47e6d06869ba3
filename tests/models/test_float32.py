"""float32 numpy inputs stay float32 through the single-shot framework (similarities, separations,
Memory, the named models), and agree with float64 on the same float32 values within float32's
round-off: the bounds of conftest's ``score_err`` (written for eps64) with eps32 in their place."""
import numpy as np
import pytest

from uhn.models import Memory, get_separation, get_similarity
from uhn.models.arrays import numpy_float
from uhn.models.validation import as_matrix
from uhn.models.similarity import names as similarity_names
from uhn.models.separation import names as separation_names

EPS32, EPS64 = float(np.finfo(np.float32).eps), float(np.finfo(np.float64).eps)
RATIO = EPS32 / EPS64

PARAMS = {"minkowski": {"p": 3.0}}
SEP_PARAMS = {"k_max": {"k": 3}}


def _data(rng, N=40, D=30, B=6, binary=False):
    M, Q = rng.random((N, D)), rng.random((B, D))
    if binary:
        M, Q = (M > 0.5) * 1.0, (Q > 0.5) * 1.0
    # float32 values: the float64 reference then computes on exactly the same numbers
    return M.astype(np.float32), Q.astype(np.float32)


def test_numpy_float_keeps_float32_and_float64_only():
    assert numpy_float(np.ones(2, np.float32)).dtype == np.float32
    assert numpy_float(np.ones(2, np.float64)).dtype == np.float64
    for dt in (np.float16, np.int32, np.int64, bool, np.longdouble):
        assert numpy_float(np.ones(2, dt)).dtype == np.float64, dt
    a = np.ones(3, np.float32)
    assert numpy_float(a) is a                      # no copy
    assert as_matrix(a, "x")[0].dtype == np.float32


@pytest.mark.parametrize("name", similarity_names())
def test_similarity_float32_in_float32_out_within_float32_roundoff(name, rng, score_err):
    sim = get_similarity(name, **PARAMS.get(name, {}))
    M32, Q32 = _data(rng, binary=sim.binary_only)
    S32 = sim(M32, Q32)
    S64 = sim(M32.astype(np.float64), Q32.astype(np.float64))
    assert S32.dtype == np.float32 and S64.dtype == np.float64
    # the float64 bound on the same computation, with eps32 for eps64 (score_err is linear in eps),
    # plus rounding the float32 result once (eps32 |S|)
    tol = RATIO * score_err(name, "standard", M32.astype(np.float64), Q32.astype(np.float64),
                            **PARAMS.get(name, {})) + EPS32 * np.abs(S64)
    assert np.all(np.abs(S32 - S64) <= tol)


@pytest.mark.parametrize("name", [n for n in similarity_names() if get_similarity(n).differentiable])
def test_similarity_gradient_keeps_float32(name, rng):
    sim = get_similarity(name, **PARAMS.get(name, {}))
    M32, Q32 = _data(rng)
    F32 = rng.random((Q32.shape[0], M32.shape[0])).astype(np.float32)
    G32 = sim.grad_contract(M32, Q32, F32)
    G64 = sim.grad_contract(*(a.astype(np.float64) for a in (M32, Q32, F32)))
    assert G32.dtype == np.float32
    # G[b, i] = sum_mu F[b, mu] dS_mu/dg_i: N terms, each with the relative error of its own
    # derivative (norms and sums over D entries: (D + 4) eps32), summed with (N + 4) eps32 of the sum
    # of their sizes T[b, i] = sum_mu |F[b, mu]| |dS_mu/dg_i| (the derivatives from one-hot weights)
    N, D = M32.shape
    M64, Q64 = M32.astype(np.float64), Q32.astype(np.float64)
    T = sum(np.abs(F32[:, [mu]]) * np.abs(sim.grad_contract(M64, Q64, np.eye(N)[[mu] * len(Q64)]))
            for mu in range(N))
    assert np.all(np.abs(G32 - G64) <= (N + D + 8) * EPS32 * T)


@pytest.mark.parametrize("name", separation_names())
def test_separation_keeps_float32(name, rng):
    if name == "log":
        S = rng.random((5, 12)) + 0.5
    else:
        S = rng.standard_normal((5, 12))
    sep = get_separation(name, **SEP_PARAMS.get(name, {}))
    W32 = sep(S.astype(np.float32))
    W64 = sep(S.astype(np.float32).astype(np.float64))
    assert W32.dtype == np.float32
    # elementwise maps and softmax: a few roundings of eps32 relative to |W| (softmax: exp, the sum
    # of 12 terms and a division: (12 + 4) eps32 relative)
    assert np.all(np.abs(W32 - W64) <= 16 * EPS32 * np.maximum(np.abs(W64), np.abs(W64).max()))


@pytest.mark.parametrize("sim", ["dot", "euclidean", "manhattan", "cosine", "kl"])
def test_memory_retrieves_in_float32(sim, rng, score_err, softmax_leak):
    M32, Q32 = _data(rng)
    mem32 = Memory(M32, similarity=sim, separation="max")
    assert mem32.M.dtype == np.float32 and mem32.P.dtype == np.float32
    z32 = mem32.retrieve(Q32)
    z64 = Memory(M32.astype(np.float64), similarity=sim, separation="max").retrieve(Q32.astype(np.float64))
    assert z32.dtype == np.float32
    # max picks a memory row: the same row unless two scores tie within float32's round-off
    S64 = get_similarity(sim)(M32.astype(np.float64), Q32.astype(np.float64))
    top2 = np.sort(S64, axis=1)[:, -2:]
    gap = top2[:, 1] - top2[:, 0]
    clear = gap > 2 * RATIO * score_err(sim, "standard", M32.astype(np.float64), Q32.astype(np.float64)).max(1)
    assert clear.any()
    assert np.array_equal(z32[clear], z64[clear].astype(np.float32))


def test_mixed_dtypes_compute_in_the_wider_one(rng):
    M32, Q32 = _data(rng)
    assert Memory(M32).retrieve(Q32.astype(np.float64)).dtype == np.float64
    assert Memory(M32.astype(np.float64)).retrieve(Q32).dtype == np.float64
    assert Memory(M32.astype(np.int64)).M.dtype == np.float64
