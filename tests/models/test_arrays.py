"""models/ computes in the array namespace and on the device of its inputs (docs/gpu.md).

Every standard similarity (score and gradient contraction), every separation, Memory and the four
named models run on array-api-strict arrays (which allow nothing outside the standard) placed on
array-api-strict's second device, return array-api-strict arrays on that device, and agree with the
numpy path. The tolerances are round-off bounds of the quantity compared: both paths add up the
same terms, possibly in another order or through an algebraically equal formula, so each side is
within gamma_n T of the exact value (gamma_n = n eps64, n the length of the longest chain of
roundings, T the sum of the magnitudes of the terms) and the two sides within 2 gamma_n T.
torch (CPU) runs the same checks where it is installed.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

from uhn.models import (Memory, classical_hopfield, dense_associative_memory, get_separation,
    get_similarity, modern_hopfield, sparse_distributed_memory)
from uhn.models.arrays import exp_max, namespace, to_numpy
from uhn.models.similarity import KL_EPS, _underflow_scale, differentiable_names

xps = pytest.importorskip("array_api_strict")

EPS = np.finfo(np.float64).eps
DEV = xps.Device("device1")   # not the default device: results must follow their inputs there
N, D, B = 9, 16, 5

SIMILARITIES = [("dot", {}), ("cosine", {}), ("euclidean", {}), ("euclidean", {"eps": 0.1}),
                ("squared_euclidean", {}), ("manhattan", {}), ("manhattan", {"eps": 0.1}),
                ("minkowski", {"p": 3}), ("minkowski", {"p": 2, "eps": 0.1}),
                ("minkowski", {"p": np.inf}), ("hamming", {}), ("kl", {}), ("reverse_kl", {})]
SEPARATIONS = [("identity", {}), ("threshold", {"theta": -2.0}), ("polynomial", {"n": 3}),
               ("polynomial", {"n": 2.5, "rectified": False}), ("softmax", {"beta": 3.0}),
               ("max", {}), ("k_max", {"k": 3}), ("exp", {"beta": 0.5}), ("log", {})]


def strict(a, dtype=None):
    return xps.asarray(np.asarray(a, dtype=dtype), device=DEV)


def assert_strict(x, dtype=xps.float64):
    """x is an array-api-strict array on DEV of the expected dtype."""
    assert namespace(x) is xps and x.device == DEV and x.dtype == dtype


def data(name, seed=0):
    rng = np.random.default_rng(seed)
    M, Q = rng.random((N, D)), rng.random((B, D))
    if name == "hamming":
        M, Q = (M > 0.5) * 1.0, (Q > 0.5) * 1.0
    return M, Q


def score_tolerance(name, params, M, Q, S):
    """Elementwise bound on |S_strict - S_numpy| (see the module docstring)."""
    A = np.abs
    p = params.get("p", 1.0)
    D = M.shape[1]
    if name == "dot":                       # one length-D dot product: gamma_D |q|.|m|
        return 2 * D * EPS * (A(Q) @ A(M).T)
    if name == "cosine":                    # a norm (D), a division, a dot (D) of unit vectors
        return 2 * (2 * D + 4) * EPS * np.ones_like(S)
    if name in ("squared_euclidean", "euclidean"):
        # |q|^2 + |m|^2 - 2 q.m: gamma_{D+2} times the magnitudes of the three terms
        T = (Q * Q).sum(1)[:, None] + (M * M).sum(1)[None, :] + 2 * (A(Q) @ A(M).T)
        err = 2 * (D + 2) * EPS * T
        if name == "squared_euclidean":
            return err
        # |sqrt(a) - sqrt(b)| = |a - b| / (sqrt(a) + sqrt(b)) <= |a - b| / sqrt(b), plus sqrt's own
        return err / A(S) + 4 * EPS * A(S) + (2 * EPS * params["eps"] if params.get("eps") else 0)
    if name == "hamming" or np.isinf(p):    # integer counts / a max: exact
        return np.zeros_like(S)
    if name in ("manhattan", "minkowski"):  # D non-negative powers summed, then the 1/p power
        return 2 * (D + 4) * EPS * A(S)
    if name in ("kl", "reverse_kl"):        # normalisation (D), log, a dot (D): magnitudes of both sums
        Mh = (M + KL_EPS) / (M + KL_EPS).sum(1, keepdims=True)
        Qh = (Q + KL_EPS) / (Q + KL_EPS).sum(1, keepdims=True)
        T = A(np.log(Qh)) @ Mh.T + Qh @ A(np.log(Mh)).T + A(Mh * np.log(Mh)).sum(1) + A(
            Qh * np.log(Qh)).sum(1)[:, None]
        return 2 * (2 * D + 4) * EPS * T
    raise AssertionError(name)


@pytest.mark.parametrize("name,params", SIMILARITIES, ids=lambda v: str(v))
def test_similarity_matches_numpy_on_strict_arrays(name, params):
    sim = get_similarity(name, **params)
    M, Q = data(name)
    S = sim(M, Q)
    Ss = sim(strict(M), strict(Q))
    assert_strict(Ss)
    tol = score_tolerance(name, params, M, Q, S)
    assert np.all(tol <= 1e-12 * np.abs(S).max())  # the derived bound is within the 1e-12 goal
    assert np.all(np.abs(to_numpy(Ss) - S) <= tol)
    # one query (1-D) gives the batch's row
    s0 = sim(strict(M), strict(Q[0]))
    assert s0.shape == (N,)
    assert np.array_equal(to_numpy(s0), to_numpy(Ss)[0]) or np.all(np.abs(to_numpy(s0) - S[0]) <= tol[0])


def vjp_tolerance(name, params, M, G, F):
    """Bound on |vjp_strict - vjp_numpy| (B, D): 2 gamma_n T with T the contraction of |F| with the
    magnitudes of every term of the formula (which may cancel), n = N + 2 D + 8 the longest chain
    (a length-D norm or distance, a power or division, the sum over N memories)."""
    A = np.abs
    Fa = A(F)
    ones = np.ones((B, D))
    if name == "dot":
        T = Fa @ A(M)
    elif name == "cosine":   # (F Mh)/|g| and (F.S) g/|g|^2: unit rows, divided by |g|
        T = (Fa @ np.ones((N, D)) + Fa.sum(1, keepdims=True)) / np.linalg.norm(G, axis=1, keepdims=True)
    elif name in ("squared_euclidean", "euclidean"):   # F M - sum(F) g, over r for euclidean
        r = np.sqrt(np.maximum(((G[:, None, :] - M[None]) ** 2).sum(2), 0) + params.get("eps", 0) ** 2)
        W = Fa / (r if name == "euclidean" else 1.0)
        # euclidean: W itself carries the error of r (its own gamma_{D+2} bound, relative 1/r^2 scale)
        T = 2 * (W @ A(M) + W.sum(1, keepdims=True) * A(G))
    elif name in ("manhattan", "minkowski"):   # |d_i|^(p-1)/dist^(p-1) <= 1 per term
        T = Fa.sum(1, keepdims=True) * ones
    elif name == "kl":
        Mh = (M + KL_EPS) / (M + KL_EPS).sum(1, keepdims=True)
        T = (Fa @ Mh) / (G + KL_EPS) + Fa.sum(1, keepdims=True) / (G + KL_EPS).sum(1, keepdims=True)
    elif name == "reverse_kl":
        Mh = (M + KL_EPS) / (M + KL_EPS).sum(1, keepdims=True)
        Gh = (G + KL_EPS) / (G + KL_EPS).sum(1, keepdims=True)
        S = Gh @ np.log(Mh).T - (Gh * np.log(Gh)).sum(1)[:, None]
        T = (Fa @ A(np.log(Mh)) + Fa.sum(1, keepdims=True) * A(np.log(Gh))
             + (Fa * A(S)).sum(1, keepdims=True)) / (G + KL_EPS).sum(1, keepdims=True)
    else:
        raise AssertionError(name)
    return 2 * (N + 2 * D + 8) * EPS * T


@pytest.mark.parametrize("name,params", [s for s in SIMILARITIES if s[0] in differentiable_names()
                                         and not np.isinf(s[1].get("p", 1))], ids=lambda v: str(v))
def test_vjp_matches_numpy_on_strict_arrays(name, params):
    sim = get_similarity(name, **params)
    M, G = data(name, seed=1)
    F = np.random.default_rng(2).normal(size=(B, N))
    J = sim.grad_contract(M, G, F)
    Js = sim.grad_contract(strict(M), strict(G), strict(F))
    assert_strict(Js)
    tol = vjp_tolerance(name, params, M, G, F)
    assert np.all(tol <= 1e-12 * np.abs(J).max())
    assert np.all(np.abs(to_numpy(Js) - J) <= tol)


@pytest.mark.parametrize("name", ["dot", "euclidean", "manhattan", "kl", "reverse_kl"])
def test_paper_code_similarities_are_numpy_only(name):
    sim = get_similarity(name, convention="paper_code")
    M, Q = data(name)
    with pytest.raises(TypeError, match=r"computes in numpy only, got array_api_strict arrays"):
        sim(strict(M), strict(Q))
    with pytest.raises(TypeError, match="numpy only"):
        Memory(strict(M), similarity=name, convention="paper_code")


def separation_tolerance(name, params, S, W):
    """Elementwise bound on |W_strict - W_numpy|. Comparisons, selections and copies are exact;
    a power, exp or log is within a few ulps of its value (|W| eps, |log| eps); softmax adds the
    shift (|X| eps, amplified by exp to |W| |X| eps) and a sum over N (gamma_N)."""
    if name in ("identity", "threshold", "max", "k_max"):
        return np.zeros_like(W)
    if name in ("polynomial", "exp", "log"):
        return 4 * EPS * np.abs(W)
    if name == "softmax":
        X = params["beta"] * S
        return 2 * (N + 4 + np.abs(X - X.max(1, keepdims=True))) * EPS * np.abs(W)
    raise AssertionError(name)


@pytest.mark.parametrize("name,params", SEPARATIONS, ids=lambda v: str(v))
def test_separation_matches_numpy_on_strict_arrays(name, params):
    sep = get_separation(name, **params)
    rng = np.random.default_rng(3)
    S = rng.random((B, N)) + 0.1 if name == "log" else rng.normal(size=(B, N)) * 2
    S[1, 2] = S[1, 5]  # a tie: max / k_max keep the lower index in both namespaces
    W = sep(S)
    Ws = sep(strict(S))
    assert_strict(Ws)
    assert np.all(np.abs(to_numpy(Ws) - W) <= separation_tolerance(name, params, S, W))
    assert to_numpy(sep(strict(S[0]))).shape == (N,)


def test_separations_refuse_nan_scores_in_any_namespace():
    S = strict([[0.0, np.nan, 1.0]])
    with pytest.raises(ValueError, match=r"separation softmax\(beta=1\) got 1 NaN/inf similarity score"):
        get_separation("softmax")(S)


# ---------------------------------------------------------------------------------------------
# Memory and the named models
# ---------------------------------------------------------------------------------------------

MEMORIES = [("dot", "softmax"), ("euclidean", "max"), ("manhattan", "k_max"), ("cosine", "identity"),
            ("kl", "softmax"), ("cosine", "polynomial"), ("squared_euclidean", "exp")]
SEP_PARAMS = {"k_max": {"k": 2}, "exp": {"beta": 0.1}, "softmax": {"beta": 4.0}, "polynomial": {"n": 2.0}}


def _memory(sim, sep, M, **kw):
    return Memory(M, similarity=sim, separation=get_separation(sep, **SEP_PARAMS.get(sep, {})), **kw)


def weight_tolerance(sep, S, W, dS):
    """Bound on |W_a - W_b| for weights computed from scores that differ by at most dS
    (elementwise, from score_tolerance), plus the separation's own round-off:
    identity dS; polynomial(2) |(S + d)^2 - S^2| <= 2 |S| dS + dS^2; exp(beta) W (e^{beta dS} - 1);
    softmax(beta): softmax_j(S + d) / softmax_j(S) lies in [e^{-2 beta max|d|}, e^{2 beta max|d|}];
    max / k_max select exactly the same memories when the k-th and (k+1)-th largest scores of the
    row differ by more than 2 max dS (asserted: the bound is then 0)."""
    params = SEP_PARAMS.get(sep, {})
    own = separation_tolerance(sep, params, S, W)
    if sep == "identity":
        return dS + own
    if sep == "polynomial":
        return 2 * np.abs(S) * dS + dS ** 2 + own
    if sep == "exp":
        return W * np.expm1(params["beta"] * dS) + own
    if sep == "softmax":
        return W * np.expm1(2 * params["beta"] * dS.max(1, keepdims=True)) + own
    if sep in ("max", "k_max"):
        k = params.get("k", 1)
        top = -np.sort(-S, axis=1)
        if k < S.shape[1]:
            assert np.all(top[:, k - 1] - top[:, k] > 2 * dS.max(1)), "a near-tie: selection uncertain"
        return np.zeros_like(W)
    raise AssertionError(sep)


def retrieve_tolerance(sim, sep, M, Q, P, mem):
    """Bound on |z_a - z_b| (B, O) for z = P^T w: |dW| |P| + 2 gamma_{N+2} |W| |P| (the product's
    round-off on each side), with dW from weight_tolerance and dS from score_tolerance."""
    S, W = mem.similarities(Q), mem.weights(Q)
    dS = score_tolerance(sim, {}, M, Q, S)
    dW = weight_tolerance(sep, S, W, dS)
    n = M.shape[0]
    return dW @ np.abs(P) + 2 * (n + 2) * EPS * (np.abs(W) @ np.abs(P))


@pytest.mark.parametrize("sim,sep", MEMORIES)
def test_memory_methods_match_numpy_on_strict_arrays(sim, sep):
    M, Q = data(sim)
    mem, mems = _memory(sim, sep, M), _memory(sim, sep, strict(M))
    assert mems.xp is xps and mems.device == DEV and "array_api_strict on" in repr(mems)
    S, W, Z = mem.similarities(Q), mem.weights(Q), mem.retrieve(Q)
    dS = score_tolerance(sim, {}, M, Q, S)
    tols = {"similarities": dS, "weights": weight_tolerance(sep, S, W, dS),
            "retrieve": retrieve_tolerance(sim, sep, M, Q, M, mem)}
    for method, a in (("similarities", S), ("weights", W), ("retrieve", Z)):
        b = getattr(mems, method)(strict(Q))
        assert_strict(b)
        assert np.all(np.abs(to_numpy(b) - a) <= tols[method]), method
        one = getattr(mems, method)(strict(Q[2]))   # one query: the batch's row
        assert one.ndim == 1 and np.all(np.abs(to_numpy(one) - a[2]) <= tols[method][2]), method


def test_iterate_matches_numpy_on_strict_arrays():
    """Both run the same number of steps; the states differ by at most T per-step retrieval bounds
    after T steps: |d_{t+1}| <= L |d_t| + delta with the map's Lipschitz constant L <= 1 near the
    fixed points the iteration converged to."""
    M, Q = data("dot")
    mem, mems = _memory("euclidean", "softmax", M), _memory("euclidean", "softmax", strict(M))
    r, rs = mem.iterate(Q, max_steps=40, tol=1e-9), mems.iterate(strict(Q), max_steps=40, tol=1e-9)
    assert_strict(rs.states)
    assert np.array_equal(to_numpy(rs.steps), r.steps) and np.array_equal(to_numpy(rs.converged),
                                                                          r.converged)
    assert r.converged.all() and len(set(r.steps.tolist())) > 1  # rows stop at different steps
    delta = retrieve_tolerance("euclidean", "softmax", M, r.states, M, mem)
    assert np.all(np.abs(to_numpy(rs.states) - r.states) <= r.steps[:, None] * delta)
    one = mems.iterate(strict(Q[1]), max_steps=40, tol=1e-9)
    assert int(one.steps) == r.steps[1] and bool(one.converged) == r.converged[1]


def test_named_models_match_numpy_on_strict_arrays():
    rng = np.random.default_rng(4)
    bip = np.where(rng.random((6, 24)) > 0.5, 1.0, -1.0)
    q = bip[:4].copy()
    q[:, :5] *= -1  # 5 flipped bits per query
    binary = (bip + 1) / 2
    cases = [(classical_hopfield, bip, q), (sparse_distributed_memory, binary, (q + 1) / 2),
             (sparse_distributed_memory, bip, q), (dense_associative_memory, bip, q),
             (modern_hopfield, bip, q)]
    for build, Mx, Qx in cases:
        mem = build(Mx)
        a, b = mem.retrieve(Qx), build(strict(Mx)).retrieve(strict(Qx))
        assert_strict(b)
        if build is modern_hopfield:   # dot scores of +-1 data are exact integers: dS = 0
            W = mem.weights(Qx)
            tol = separation_tolerance("softmax", {"beta": 1.0}, mem.similarities(Qx), W) @ np.abs(Mx) \
                + 2 * (Mx.shape[0] + 2) * EPS * (W @ np.abs(Mx))
            assert np.all(np.abs(to_numpy(b) - a) <= tol)
        else:                          # integer sums, powers and comparisons: exact
            assert np.array_equal(to_numpy(b), a), build.__name__
    hn, hns = classical_hopfield(bip), classical_hopfield(strict(bip))
    for mode in ("sync", "async"):
        u, us = hn.update(q, mode=mode, seed=1), hns.update(strict(q), mode=mode, seed=1)
        assert np.array_equal(to_numpy(us.states), u.states) and np.array_equal(to_numpy(us.steps), u.steps)


def test_classical_hopfield_refuses_non_bipolar_strict_memories():
    with pytest.raises(ValueError, match=r"needs bipolar \{-1, 1\} memories, but memories\[0, 1\] = 0.5"):
        classical_hopfield(strict([[1.0, 0.5], [-1.0, 1.0]]))


@pytest.mark.parametrize("sim,sep", [("dot", "softmax"), ("manhattan", "max"), ("euclidean", "k_max")])
def test_chunked_retrieval_equals_one_piece(sim, sep):
    """A batch larger than the chunk budget runs in pieces of rows; each row's result is computed
    from that row alone, so the pieces equal the one-piece result up to the summation order of
    the GEMMs (which may block differently for fewer rows): the retrieval bound."""
    M, _ = data(sim)
    Q = np.random.default_rng(5).random((41, D))
    tol = retrieve_tolerance(sim, sep, M, Q, M, _memory(sim, sep, M))
    for X, Y in ((M, Q), (strict(M), strict(Q))):
        whole = _memory(sim, sep, X).retrieve(Y)
        rows_of_3 = _memory(sim, sep, X, chunk_bytes=3 * 3 * N * 8).retrieve(Y)  # 3 rows a chunk
        a, b = to_numpy(whole), to_numpy(rows_of_3)
        assert b.shape == (41, D)
        assert np.all(np.abs(a - b) <= tol)


def test_batched_equals_single_queries_on_strict_arrays():
    M, Q = data("euclidean")
    mems = _memory("euclidean", "softmax", strict(M))
    tol = retrieve_tolerance("euclidean", "softmax", M, Q, M, _memory("euclidean", "softmax", M))
    Z = to_numpy(mems.retrieve(strict(Q)))
    for b in range(B):
        z = to_numpy(mems.retrieve(strict(Q[b])))
        assert np.all(np.abs(z - Z[b]) <= tol[b])


# ---------------------------------------------------------------------------------------------
# validation and dtypes in another namespace
# ---------------------------------------------------------------------------------------------

def test_query_of_another_library_is_refused():
    M, Q = data("dot")
    with pytest.raises(TypeError, match="queries are numpy arrays but this Memory stores array_api_strict"):
        Memory(strict(M)).retrieve(Q)
    with pytest.raises(TypeError, match="queries are array_api_strict arrays but this Memory stores numpy"):
        Memory(M).retrieve(strict(Q))
    with pytest.raises(TypeError, match="memories are array_api_strict arrays, values are numpy arrays"):
        Memory(strict(M), values=np.eye(N))
    with pytest.raises(TypeError, match="different array libraries"):
        get_similarity("dot")(strict(M), Q)


def test_query_on_another_device_is_refused():
    M, Q = data("dot")
    with pytest.raises(ValueError, match="queries are on device .*CPU_DEVICE.* but the memories on .*device1"):
        Memory(strict(M)).retrieve(xps.asarray(Q))


def test_bad_input_is_refused_in_any_namespace():
    M, Q = data("dot")
    Qn = Q.copy()
    Qn[1, 3] = np.nan
    with pytest.raises(ValueError, match=r"queries contains 1 NaN/inf value\(s\), first at index \(1, 3\)"):
        Memory(strict(M)).retrieve(strict(Qn))
    with pytest.raises(ValueError, match="shape mismatch: queries have 3 features but memories have 16"):
        Memory(strict(M)).retrieve(strict(Q[:, :3]))
    with pytest.raises(ValueError, match="queries must have 1 or 2 dimensions"):
        Memory(strict(M)).retrieve(strict(Q[None]))
    with pytest.raises(TypeError, match="queries must be real"):
        Memory(strict(M)).retrieve(xps.asarray(Q + 0j, device=DEV))
    with pytest.raises(ValueError, match="hamming similarity needs binary .* but the memories hold other"):
        Memory(strict(M), similarity="hamming")
    with pytest.raises(ValueError, match="KL similarities need non-negative queries"):
        get_similarity("kl")(strict(M), strict(-Q))
    with pytest.raises(ValueError, match=r"cosine similarity is undefined for all-zero queries \(rows \[0\]\)"):
        get_similarity("cosine")(strict(M), strict(np.zeros(D)))
    with pytest.raises(ValueError, match=r"k_max\(k=20\) asks for more memories than are stored \(9\)"):
        Memory(strict(M), separation=get_separation("k_max", k=20)).retrieve(strict(Q))


def test_integer_inputs_compute_in_float64():
    M = np.arange(6).reshape(2, 3)
    S = get_similarity("dot")(xps.asarray(M, device=DEV), xps.asarray(M, device=DEV))
    assert_strict(S)
    assert np.array_equal(to_numpy(S), (M @ M.T).astype(float))


def test_float32_stays_float32_in_other_namespaces():
    M, Q = data("dot")
    for sim in ("dot", "euclidean", "manhattan", "cosine", "kl"):
        mem = Memory(strict(M, np.float32), similarity=sim, separation="softmax")
        assert_strict(mem.retrieve(strict(Q, np.float32)), xps.float32)
        # a float64 query promotes (the standard's type promotion)
        assert_strict(mem.retrieve(strict(Q)), xps.float64)


def test_float32_limits_come_from_float32():
    """exp overflows float32 above log(3.4e38) = 88.72, and squares of float32 entries below
    2^-63 underflow: the limits are the dtype's, not float64's."""
    assert exp_max(xps, xps.float32) == pytest.approx(np.log(np.finfo(np.float32).max), rel=1e-12)
    assert _underflow_scale(np, np.float64) == 2.0 ** -300 and _underflow_scale(xps, xps.float32) == 2.0 ** -37
    with pytest.raises(OverflowError, match=r"reaches 90 > 88.7"):
        get_separation("exp")(strict([[90.0, 0.0]], np.float32))
    # |m - q| = 3e-30 (squares 1e-59, below float32's smallest subnormal 1.4e-45): the rescaled
    # distance is exact up to float32 rounding of the inputs and of the result (a few ulps32)
    m, q = strict([[3e-30, 0.0]], np.float32), strict([[0.0, 0.0]], np.float32)
    d = to_numpy(get_similarity("euclidean")(m, q))
    assert d.dtype == np.float32 and abs(d[0, 0] + 3e-30) <= 4 * np.finfo(np.float32).eps * 3e-30
    big = strict([[1e20, 0.0]], np.float32)   # squares 1e40 overflow float32 (max 3.4e38)
    d = to_numpy(get_similarity("euclidean")(big, q))
    assert abs(d[0, 0] + 1e20) <= 4 * np.finfo(np.float32).eps * 1e20


# ---------------------------------------------------------------------------------------------
# torch (CPU), where installed
# ---------------------------------------------------------------------------------------------

def test_torch_cpu_matches_numpy():
    torch = pytest.importorskip("torch")
    M, Q = data("dot")
    for sim, sep in MEMORIES:
        mem = _memory(sim, sep, M)
        a = mem.retrieve(Q)
        b = _memory(sim, sep, torch.asarray(M)).retrieve(torch.asarray(Q))
        assert isinstance(b, torch.Tensor) and b.dtype == torch.float64 and b.device.type == "cpu"
        assert np.all(np.abs(to_numpy(b) - a) <= retrieve_tolerance(sim, sep, M, Q, M, mem))
        z32 = _memory(sim, sep, torch.asarray(M, dtype=torch.float32)).retrieve(
            torch.asarray(Q, dtype=torch.float32))
        assert z32.dtype == torch.float32
        # float32: the same bound with eps32 in place of eps64, plus rounding the inputs to float32
        # (relative eps32/2 on each entry, which moves every score and output by at most as much as
        # the round-off of its first operation does)
        ratio = float(np.finfo(np.float32).eps) / EPS
        assert np.all(np.abs(to_numpy(z32) - a) <= 2 * ratio * retrieve_tolerance(sim, sep, M, Q, M, mem))


def test_as_matrix_without_a_namespace_converts_to_numpy():
    """Callers that compute in numpy only (dynamics/, corruption) call as_matrix without xp= and
    keep getting numpy float64, whatever array they were handed; with xp= the library is kept."""
    from uhn.models.validation import as_matrix
    torch = pytest.importorskip("torch")
    a, single = as_matrix(torch.ones(3, dtype=torch.float32), "x")
    assert isinstance(a, np.ndarray) and a.dtype == np.float64 and a.shape == (1, 3) and single
    from uhn.models.arrays import namespace as ns
    t = torch.ones((2, 3), dtype=torch.float32)
    b, _ = as_matrix(t, "x", xp=ns(t))
    assert isinstance(b, torch.Tensor) and b.dtype == torch.float32


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 12), d=st.integers(1, 10),
       b=st.integers(1, 30), rows=st.integers(1, 30),
       sim=st.sampled_from(["dot", "euclidean", "manhattan", "cosine", "kl"]),
       sep=st.sampled_from(["softmax", "identity", "polynomial"]))
def test_property_strict_and_chunked_retrieval_agree_with_numpy(seed, n, d, b, rows, sim, sep):
    """For any shapes and any chunk size, array-api-strict retrieval in chunks of ``rows`` queries
    equals numpy's one-piece retrieval within the derived retrieval bound."""
    rng = np.random.default_rng(seed)
    M, Q = rng.random((n, d)) + 0.05, rng.random((b, d)) + 0.05   # away from 0: cosine is defined
    if sep == "polynomial" and sim not in ("dot", "cosine"):
        sep = "softmax"   # a rectified polynomial of scores <= 0 is refused (it weights nothing)
    mem = _memory(sim, sep, M)
    z = _memory(sim, sep, strict(M), chunk_bytes=rows * 3 * n * 8).retrieve(strict(Q))
    assert_strict(z)
    assert np.all(np.abs(to_numpy(z) - mem.retrieve(Q)) <= retrieve_tolerance(sim, sep, M, Q, M, mem))


def test_softmax_and_logsumexp_are_max_shifted_in_any_namespace():
    """Closed forms at arguments whose exp overflows float64 (e^1000): for rows (c, c, x) with
    r = e^(x - c) (x - c is exact: Sterbenz), logsumexp = c + log(2 + r) and softmax =
    (1, 1, r) / (2 + r); each within a few ulps (a sum of three terms, one log, one exp, one
    division: 8 eps relative)."""
    from uhn.models.arrays import logsumexp, softmax
    c = 1000.0
    X = np.array([[c, c, c - np.log(3.0)], [-c, -c, -c - np.log(3.0)]])
    r = np.exp(X[:, 2] - X[:, 0])
    want_lse = X[:, 0] + np.log(2 + r)
    want_W = np.stack([np.ones(2), np.ones(2), r], axis=1) / (2 + r)[:, None]
    for xp, A in ((np, X), (xps, strict(X))):
        assert np.all(np.abs(to_numpy(logsumexp(A, xp)) - want_lse) <= 8 * EPS * np.abs(want_lse))
        assert np.all(np.abs(to_numpy(softmax(A, xp)) - want_W) <= 8 * EPS * want_W)
