"""Compiled L1 / Lp kernels (models/kernels.py) against a broadcast numpy reference written here.

Tolerances come from the error of the compared quantity:

* scores: a sum of D nonnegative terms a_i^p. Each term carries a few roundings (the difference
  q - m, |x| or sqrt(x^2 + eps^2) - eps, whose cancellation costs ~ulp * eps absolutely, and the
  power: ~p ulps), and summing D nonnegative terms in any order adds <= D ulp of the sum. So
  |sum - ref| <= (D + 3 p + 4) u sum_i (a_i + eps)^p with u the unit round-off of the dtype, and
  the root ^(1/p) divides that relative error by p (plus one ulp for the root itself).
* contractions: sum over N signed terms w_mu t_mu, so the error is absolute, relative to
  sum_mu |w_mu t_mu|: N u from the summation plus the relative error of each term, which for
  p > 1 includes the weight 1/dist^(p-1), i.e. (p - 1) times the score's relative error.
"""
import tracemalloc
import warnings

import numpy as np
import pytest
from hypothesis import given, strategies as st

from uhn.models import kernels as K

EPS = {np.float64: np.finfo(np.float64).eps / 2, np.float32: np.finfo(np.float32).eps / 2}


# ----------------------------------------------------------------------------------------------
# independent reference (plain broadcasting, float64 on the given values)
# ----------------------------------------------------------------------------------------------

def _abs_terms(M, Q, eps):
    x = np.asarray(Q, np.float64)[:, None, :] - np.asarray(M, np.float64)[None, :, :]
    a = np.abs(x) if eps == 0 else np.sqrt(x * x + eps * eps) - eps
    da = np.sign(x) if eps == 0 else x / np.sqrt(x * x + eps * eps)
    return x, a, da


def ref_scores(M, Q, p, eps):
    """(dist, bound): (sum_i a_i^p)^(1/p) and the error bound of the module docstring / u."""
    _, a, _ = _abs_terms(M, Q, eps)
    s = (a ** p).sum(-1)
    D = a.shape[-1]
    sum_bound = (D + 3 * p + 4) * ((a + eps) ** p).sum(-1)  # in units of u
    dist = s ** (1.0 / p)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(s > 0, sum_bound / s, 0.0) / p + 1.0
    return dist, rel * dist


def ref_vjp(M, G, F, p, eps):
    """(V, bound / u): sum_mu Fs a^(p-1) da, Fs = F / dist^(p-1) (0 at dist = 0)."""
    dist, dist_bound = ref_scores(M, G, p, eps)
    _, a, da = _abs_terms(M, G, eps)
    with np.errstate(divide="ignore", invalid="ignore"):
        Fs = np.where(dist > 0, np.asarray(F, np.float64) / dist ** (p - 1), 0.0)
        dist_rel = np.where(dist > 0, dist_bound / dist, 0.0)
    T = Fs[:, :, None] * a ** (p - 1) * da
    N = M.shape[0]
    per_term_rel = (p - 1) * dist_rel[:, :, None] + 3 * p + 8
    bound = (N * np.abs(T) + per_term_rel * np.abs(T)).sum(1)
    # the smoothed power a^(p-1) inherits the ~ulp * eps cancellation of a, scaled by (p - 1)
    bound += (p - 1) * 4 * eps * (np.abs(Fs)[:, :, None] * (a + eps) ** max(p - 2, 0)).sum(1)
    return T.sum(1), bound


def _close(got, want, bound_in_u, dtype):
    u = EPS[dtype]
    err = np.abs(np.asarray(got, np.float64) - want)
    ok = err <= bound_in_u * u + np.finfo(dtype).tiny
    assert ok.all(), (f"max error {err.max():.3g}, bound there {(bound_in_u * u).flat[np.argmax(err)]:.3g}, "
                      f"worst ratio {np.max(err / (bound_in_u * u + np.finfo(dtype).tiny)):.3g}")


shapes = st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 17))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@given(shape=shapes, p=st.sampled_from([1.0, 1.5, 2.0, 3.0]), eps=st.sampled_from([0.0, 0.05]),
       seed=st.integers(0, 2**31))
def test_scores_and_vjp_match_reference(dtype, shape, p, eps, seed):
    B, N, D = shape
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(N, D)).astype(dtype)
    Q = rng.normal(size=(B, D)).astype(dtype)
    Q[0, : D // 2] = M[0, : D // 2]  # exact zeros of x = q - m: sign(0) = 0 and 0^(p-1) paths
    F = rng.normal(size=(B, N)).astype(dtype)
    S = K.lp_scores(M, Q, p, eps=eps)
    V = K.lp_vjp(M, Q, F, p, eps=eps)
    assert S.dtype == dtype and V.dtype == dtype
    assert S.shape == (B, N) and V.shape == (B, D)
    want, bound = ref_scores(M, Q, p, eps)
    _close(S, want, bound, dtype)
    want, bound = ref_vjp(M, Q, F, p, eps)
    _close(V, want, bound, dtype)
    if p == 1.0:
        _close(K.l1_scores(M, Q, eps=eps), *ref_scores(M, Q, 1.0, eps), dtype)
        _close(K.l1_vjp(M, Q, F, eps), *ref_vjp(M, Q, F, 1.0, eps), dtype)


def test_float64_agrees_to_1e12_on_a_wide_case():
    """D = 784, N = 50: the bound (D + 7) u sum is 8.8e-14 relative, inside the 1e-12 goal."""
    rng = np.random.default_rng(0)
    M, Q, F = rng.random((50, 784)), rng.random((13, 784)), rng.random((13, 50))
    for p in (1.0, 3.0):
        want, _ = ref_scores(M, Q, p, 0.0)
        np.testing.assert_allclose(K.lp_scores(M, Q, p), want, rtol=1e-12, atol=0)
        want, bound = ref_vjp(M, Q, F, p, 0.0)
        _close(K.lp_vjp(M, Q, F, p), want, bound, np.float64)


def test_general_and_closed_form_exponents_agree():
    """p = 2.7 takes the general pow, p = 4 its closed form; both against the reference."""
    rng = np.random.default_rng(1)
    M, Q, F = rng.random((11, 23)), rng.random((6, 23)), rng.normal(size=(6, 11))
    for p in (2.5, 2.7, 4.0):
        for eps in (0.0, 0.05):
            _close(K.lp_scores(M, Q, p, eps=eps), *ref_scores(M, Q, p, eps), np.float64)
            _close(K.lp_vjp(M, Q, F, p, eps=eps), *ref_vjp(M, Q, F, p, eps), np.float64)


def test_sign_of_zero_at_a_stored_memory():
    """At g = M_mu exactly, the L1 subgradient of that memory is sign(0) = 0 in every coordinate,
    and the Lp weight 1/dist^(p-1) of a zero distance is 0, not inf or NaN."""
    rng = np.random.default_rng(2)
    M = rng.random((5, 12))
    G = M[[3]]
    F = np.zeros((1, 5))
    F[0, 3] = 1.0
    for p in (1.0, 1.5, 3.0):
        V = K.lp_vjp(M, G, F, p)
        assert np.all(V == 0.0), (p, V)
    assert K.l1_scores(M, G)[0, 3] == 0.0
    assert K.lp_scores(M, G, 3.0)[0, 3] == 0.0


def test_mnist_rows():
    """Real digits: most pixels are exactly 0 in both the memory and the query (x = 0)."""
    from uhn.models.data import load_dataset
    X = load_dataset("mnist", n=40, seed=0).X
    M, Q = X[:30], np.vstack([X[25:35], 1.0 - X[:3]])
    F = np.random.default_rng(3).random((Q.shape[0], 30))
    for p, eps in [(1.0, 0.0), (1.0, 0.05), (3.0, 0.0)]:
        for dtype in (np.float64, np.float32):
            m, q, f = M.astype(dtype), Q.astype(dtype), F.astype(dtype)
            _close(K.lp_scores(m, q, p, eps=eps), *ref_scores(m, q, p, eps), dtype)
            _close(K.lp_vjp(m, q, f, p, eps=eps), *ref_vjp(m, q, f, p, eps), dtype)


@pytest.mark.skipif(not K.HAVE_NUMBA, reason="numba not installed: the numpy path is the only one")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("p,eps", [(1.0, 0.0), (1.0, 0.05), (1.5, 0.0), (3.0, 0.05)])
def test_numpy_fallback_equals_compiled(monkeypatch, dtype, p, eps):
    """The chunked numpy path (used without numba) agrees with the compiled one within the
    reference bounds (the two sum in different orders, so not bitwise)."""
    rng = np.random.default_rng(4)
    M, Q = rng.random((21, 30)).astype(dtype), rng.random((9, 30)).astype(dtype)
    F = rng.normal(size=(9, 21)).astype(dtype)
    compiled = K.lp_scores(M, Q, p, eps=eps), K.lp_vjp(M, Q, F, p, eps=eps)
    monkeypatch.setattr(K, "HAVE_NUMBA", False)
    fallback = K.lp_scores(M, Q, p, eps=eps), K.lp_vjp(M, Q, F, p, eps=eps)
    for c, f in zip(compiled, fallback):
        assert c.dtype == f.dtype == dtype
    sw, sb = ref_scores(M, Q, p, eps)
    vw, vb = ref_vjp(M, Q, F, p, eps)
    # each is within bound of the reference, so they are within twice the bound of each other
    _close(compiled[0], fallback[0].astype(np.float64), 2 * sb, dtype)
    _close(compiled[1], fallback[1].astype(np.float64), 2 * vb, dtype)


@pytest.mark.parametrize("numba_on", [True, False])
def test_no_batch_by_memories_by_width_array(monkeypatch, numba_on):
    """Peak traced memory stays far below one (B, N, D) array (here 75 MB) on both paths."""
    if numba_on and not K.HAVE_NUMBA:
        pytest.skip("numba not installed")
    monkeypatch.setattr(K, "HAVE_NUMBA", numba_on and K.HAVE_NUMBA)
    monkeypatch.setattr(K, "CHUNK_BYTES", 4 * 2**20)
    rng = np.random.default_rng(5)
    B, N, D = 120, 100, 784
    M, Q, F = rng.random((N, D)), rng.random((B, D)), rng.random((B, N))
    K.l1_scores(M[:2], Q[:2]), K.lp_vjp(M[:2], Q[:2], F[:2, :2], 3.0)  # compile outside the trace
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        K.l1_scores(M, Q)
        K.l1_vjp(M, Q, F, 0.05)
        K.lp_vjp(M, Q, F, 3.0)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    full = B * N * D * 8
    # numpy path: a few (chunk, N, D) temporaries of <= CHUNK_BYTES each plus (B, N) arrays
    assert peak < 4 * K.CHUNK_BYTES + 4 * B * N * 8 + 2 * B * D * 8 < full / 4, peak


def test_dtypes():
    rng = np.random.default_rng(6)
    M32, Q32 = rng.random((4, 5), dtype=np.float32), rng.random((3, 5), dtype=np.float32)
    assert K.l1_scores(M32, Q32).dtype == np.float32
    assert K.l1_vjp(M32, Q32, np.ones((3, 4), np.float32)).dtype == np.float32
    assert K.l1_scores(M32, Q32.astype(np.float64)).dtype == np.float64  # mixed: common dtype
    Mi = np.arange(8).reshape(2, 4)
    np.testing.assert_array_equal(K.l1_scores(Mi, Mi), [[0.0, 16.0], [16.0, 0.0]])  # ints: float64


def test_out_is_filled_in_place():
    rng = np.random.default_rng(7)
    M, Q = rng.random((4, 5)), rng.random((3, 5))
    out = np.full((3, 4), np.nan)
    assert K.l1_scores(M, Q, out) is out
    _close(out, *ref_scores(M, Q, 1.0, 0.0), np.float64)
    with pytest.raises(ValueError, match=r"out must be a writeable C-contiguous float64 array of shape \(3, 4\)"):
        K.l1_scores(M, Q, np.empty((4, 3)))
    with pytest.raises(ValueError, match="out must be .* float64"):
        K.lp_scores(M, Q, 2.0, np.empty((3, 4), np.float32))


def test_bad_inputs_are_refused_by_name():
    M, Q, F = np.ones((4, 5)), np.ones((3, 5)), np.ones((3, 4))
    with pytest.raises(ValueError, match="p must be a finite number >= 1, got 0.5"):
        K.lp_scores(M, Q, 0.5)
    with pytest.raises(ValueError, match="p must be a finite number >= 1, got inf"):
        K.lp_vjp(M, Q, F, np.inf)
    with pytest.raises(TypeError, match="p must be a real number"):
        K.lp_scores(M, Q, "3")
    with pytest.raises(ValueError, match="eps must be a finite number >= 0, got -0.1"):
        K.l1_scores(M, Q, eps=-0.1)
    with pytest.raises(ValueError, match="memories have width 5 but queries have width 4"):
        K.l1_scores(M, np.ones((3, 4)))
    with pytest.raises(ValueError, match=r"F must have shape \(B, N\) = \(3, 4\)"):
        K.l1_vjp(M, Q, np.ones((4, 3)))
    with pytest.raises(ValueError, match="queries contains 1 NaN/inf"):
        K.l1_scores(M, np.array([[1, 2, np.nan, 4, 5.0]]))
    with pytest.raises(ValueError, match="memories must be 2-D"):
        K.l1_scores(np.ones(5), Q)
    with pytest.raises(TypeError, match="states must be a real numeric array"):
        K.l1_vjp(M, Q.astype(complex), F)
    with pytest.raises(ValueError, match="dist must be nonnegative"):
        K.lp_vjp(M, Q, F, 2.0, dist=-np.ones((3, 4)))


@pytest.mark.parametrize("name", ["manhattan", "minkowski"])
def test_similarities_skip_the_kernels_second_finiteness_pass_but_not_their_own(monkeypatch, rng, name):
    """A Similarity validates its inputs once (as_matrix; Memory at construction), so it calls the
    kernels with finite=True: the kernel does not read all of M again for NaN / inf (counted with
    a spy), gives the same bits as the checking call, and NaN memories are still refused by name.
    Without the flag the kernel checks both arrays itself."""
    from uhn.models import Memory, get_similarity
    M, q = rng.random((50, 12)), rng.random((2, 12))
    seen = []
    real = K.check_finite
    monkeypatch.setattr(K, "check_finite", lambda a, n, **kw: seen.append(n) or real(a, n, **kw))
    sim = get_similarity(name, **({"p": 3} if name == "minkowski" else {}))
    mem = Memory(M, similarity=sim, separation="max")
    S = mem.similarities(q)
    assert seen == []
    np.testing.assert_array_equal(-S, K.lp_scores(M, q, 3.0) if name == "minkowski" else K.l1_scores(M, q))
    assert seen == ["memories", "queries"]
    bad = M.copy()
    bad[7, 3] = np.nan
    with pytest.raises(ValueError, match="memories contains 1 NaN/inf value"):
        sim(bad, q)
    with pytest.raises(ValueError, match="memories contains 1 NaN/inf value"):
        Memory(bad, similarity=sim)
    with pytest.raises(ValueError, match="memories contains 1 NaN/inf value"):
        K.l1_scores(bad, q)


def test_precomputed_dist_gives_the_same_contraction():
    rng = np.random.default_rng(8)
    M, G, F = rng.random((7, 9)), rng.random((4, 9)), rng.normal(size=(4, 7))
    dist = K.lp_scores(M, G, 3.0)
    np.testing.assert_array_equal(K.lp_vjp(M, G, F, 3.0, dist=dist), K.lp_vjp(M, G, F, 3.0))


@pytest.mark.skipif(not K.HAVE_NUMBA, reason="numba not installed")
def test_unwritable_cache_compiles_in_memory_with_a_warning(monkeypatch):
    """Where numba finds no writable cache location it raises at decoration; jit warns instead."""
    real = K._nb.njit

    def njit(*args, cache=False, **kw):
        if cache:
            raise RuntimeError("cannot cache function 'f': no locator available for file 'x.py'")
        return real(*args, **kw)

    monkeypatch.setattr(K._nb, "njit", njit)

    def f(x):
        return 2 * x

    with pytest.warns(RuntimeWarning, match="numba cannot cache f on disk .*compiling in memory"):
        g = K.jit()(f)
    assert g(3.0) == 6.0


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@given(shape=shapes, eps=st.sampled_from([0.0, 0.05]), seed=st.integers(0, 2**31))
def test_fused_l1_scores_and_vjp(dtype, shape, eps, seed):
    """One pass gives both halves of a manhattan RHS, each within the reference bounds."""
    B, N, D = shape
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(N, D)).astype(dtype)
    G = rng.normal(size=(B, D)).astype(dtype)
    G[0, : D // 2] = M[0, : D // 2]
    F = rng.normal(size=(B, N)).astype(dtype)
    S, V = K.l1_scores_vjp(M, G, F, eps)
    assert S.dtype == V.dtype == dtype
    _close(S, *ref_scores(M, G, 1.0, eps), dtype)
    _close(V, *ref_vjp(M, G, F, 1.0, eps), dtype)


def test_fused_l1_fallback_and_mnist(monkeypatch):
    from uhn.models.data import load_dataset
    X = load_dataset("mnist", n=40, seed=0).X
    M, G = X[:30], X[25:40]
    F = np.random.default_rng(9).random((15, 30))
    got = K.l1_scores_vjp(M, G, F, 0.05)
    monkeypatch.setattr(K, "HAVE_NUMBA", False)
    ref = K.l1_scores_vjp(M, G, F, 0.05)
    for g, r, (want, bound) in zip(got, ref, [ref_scores(M, G, 1.0, 0.05), ref_vjp(M, G, F, 1.0, 0.05)]):
        _close(g, want, bound, np.float64)
        _close(r, want, bound, np.float64)


@pytest.mark.parametrize("numba_on", [True, False])
@pytest.mark.parametrize("name,params,p", [("manhattan", {}, 1.0), ("manhattan", {"eps": 0.05}, 1.0),
                                           ("minkowski", {"p": 3.0}, 3.0)])
def test_similarity_registry_runs_on_these_kernels(monkeypatch, numba_on, name, params, p):
    """get_similarity's manhattan / minkowski scores and gradient contraction (what Memory and
    Network call) are these kernels, compiled or their numpy reference: the call reaches the
    kernel, and the result is -dist / -vjp within the reference bounds."""
    if numba_on and not K.HAVE_NUMBA:
        pytest.skip("numba not installed")
    from uhn.models.similarity import get_similarity
    monkeypatch.setattr(K, "HAVE_NUMBA", numba_on)
    calls = []
    real = K._power_sums
    monkeypatch.setattr(K, "_power_sums", lambda *a: calls.append(a[2]) or real(*a))
    rng = np.random.default_rng(7)
    M, Q, F = rng.random((12, 40)), rng.random((5, 40)), rng.normal(size=(5, 12))
    sim = get_similarity(name, **params)
    eps = params.get("eps", 0.0)
    dist, bound = ref_scores(M, Q, p, eps)
    _close(-sim.score(M, Q), dist, bound, np.float64)
    assert calls == [p]
    V, vbound = ref_vjp(M, Q, F, p, eps)
    _close(-sim.grad_contract(M, Q, F), V, vbound, np.float64)


@pytest.mark.skipif(not K.HAVE_NUMBA, reason="the thread policy is numba's")
@pytest.mark.parametrize("p, eps", [(1.0, 0.0), (1.0, 0.05), (3.0, 0.0), (2.5, 0.0)])
def test_one_query_against_many_memories_splits_the_memories(monkeypatch, p, eps):
    """The scores of one block of queries against several memory tiles split the tiles into
    2 x threads groups run in parallel, and equal the one-thread run's bit for bit (the same
    per-pair sums); below SERIAL_WORK the block runs whole on one thread (groups = 1)."""
    import numba
    rng = np.random.default_rng(8)
    M, Q = rng.uniform(0, 1, (700, 400)), rng.uniform(0, 1, (3, 400))     # 3 * 700 * 400 > 2^18
    groups = []
    real = K._kernel

    def kernel(kind, *variant):          # the built kernel, its last argument (groups) recorded
        compiled = real(kind, *variant)
        return lambda *a: (groups.append(a[-1]), compiled(*a))[1]
    monkeypatch.setattr(K, "_kernel", kernel)
    qb, nb = K._blocking(3, 700, 400, 8)
    assert qb >= 3 and nb < 700                        # one block, several tiles
    split = K.lp_scores(M, Q, p, eps=eps) if p != 1 else K.l1_scores(M, Q, eps=eps)
    assert groups == [2 * numba.get_num_threads()]
    monkeypatch.setattr(K, "SERIAL_WORK", 2 ** 30)     # the same call on one thread
    one = K.lp_scores(M, Q, p, eps=eps) if p != 1 else K.l1_scores(M, Q, eps=eps)
    assert groups[1:] == [1]
    np.testing.assert_array_equal(split, one)
    dist, bound = ref_scores(M, Q, p, eps)
    _close(split, dist, bound, np.float64)


@pytest.mark.skipif(not K.HAVE_NUMBA, reason="the thread policy is numba's")
def test_small_calls_run_on_one_thread_with_the_same_result(monkeypatch):
    """A call with one block of queries or fewer than SERIAL_WORK element operations runs on the
    calling thread alone (numba.set_num_threads(1), the count restored after, also when the
    kernel raises); a large one on numba's threads. Every block is computed by one thread either
    way, so forcing the large call onto one thread gives the same bits."""
    import numba
    rng = np.random.default_rng(5)
    M, G = rng.uniform(0, 1, (64, 64)), rng.uniform(0, 1, (128, 64))     # 128 * 64 * 64 = 2^19
    F = rng.uniform(0, 1, (128, 64))
    seen = []
    real = numba.set_num_threads
    monkeypatch.setattr(K._nb, "set_num_threads", lambda n: (seen.append(n), real(n))[1])
    before = numba.get_num_threads()
    big = (K.l1_scores_vjp(M, G, F, eps=0.05), K.lp_scores(M, G, 3.0), K.lp_vjp(M, G, F, 3.0))
    assert seen == [] and numba.get_num_threads() == before
    K.l1_scores_vjp(M[:4], G[:2], F[:2, :4], eps=0.05)                 # one block: one thread
    assert seen == [1, before] and numba.get_num_threads() == before
    monkeypatch.setattr(K, "SERIAL_WORK", 2 ** 20)                      # the same large call, serial
    small = (K.l1_scores_vjp(M, G, F, eps=0.05), K.lp_scores(M, G, 3.0), K.lp_vjp(M, G, F, 3.0))
    for a, b in zip(big[0] + big[1:], small[0] + small[1:]):
        np.testing.assert_array_equal(a, b)
    seen.clear()

    def failing_kernel(M, Q):
        raise ValueError("boom")
    with pytest.raises(ValueError, match="boom"):
        K._launch(failing_kernel, 4, M[:1], G[:1])
    assert seen == [1, before] and numba.get_num_threads() == before


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_manhattan_rhs_at_a_diverged_state_is_an_overflow_like_score(rng, bad):
    """A state that diverged (inf / NaN in g) reaches the fused kernel from the dynamics' RHS:
    it must raise what score alone raises, OverflowError naming the non-finite entries (the
    atlas files it as "diverged"), not the ValueError of bad user input (a regression of the
    fused path, found when uhn figures redrew the atlas: six points read "invalid")."""
    from uhn.dynamics.analysis.atlas import failure_kind
    from uhn.dynamics.lagrangians import log_sum_exp
    from uhn.dynamics.network import Network
    from uhn.models import get_similarity
    sim = get_similarity("manhattan", eps=0.05)
    M, G, F = rng.random((40, 30)), rng.random((5, 30)), rng.random((5, 40))
    G[3, 7] = bad
    for call in (lambda: sim.score(M, G), lambda: sim.score_vjp(M, G, F),
                 lambda: Network(M, sim, L_h=log_sum_exp(1.0)).rhs(G, np.zeros((5, 40)))):
        with pytest.raises(OverflowError, match="non-finite entries: the queries or states hold inf or NaN") as e:
            call()
        assert failure_kind(f"OverflowError: {e.value}") == "diverged"


@pytest.mark.parametrize("eps", [0.0, 0.05])
def test_manhattan_score_vjp_is_score_and_vjp_in_one_pass(rng, eps):
    """Similarity.score_vjp (the fused L1 kernel) against the separate score and vjp: the same
    sums of the same D terms in another order, so within D eps of the sums of their magnitudes;
    where a distance overflows (entries 1e300) it falls back to score's exact rescaling, finite.
    The dynamics' right-hand side takes this path (one pass over the (B, N, D) pairs)."""
    from uhn.models import get_similarity
    sim = get_similarity("manhattan", eps=eps)
    M, G, F = rng.random((40, 30)), rng.random((5, 30)), rng.random((5, 40))
    S, V = sim.score_vjp(M, G, F)
    S0, V0 = sim.score(M, G), sim.vjp(M, G, F)
    D = M.shape[1]
    eps64 = np.finfo(np.float64).eps
    np.testing.assert_array_less(np.abs(S - S0), D * eps64 * np.abs(S0) + 1e-300)
    # each V[b, i] sums N terms |F| dabsx <= |F|: at most N eps sum|F| apart
    bound = np.broadcast_to((2 * M.shape[0] * eps64 * np.abs(F).sum(1))[:, None], V.shape)
    np.testing.assert_array_less(np.abs(V - V0), bound + 1e-300)
    assert get_similarity("minkowski", p=3).score_vjp is None and get_similarity("dot").score_vjp is None
    big = 1e300     # eps > 0: the squares in sqrt(x^2 + eps^2) overflow; eps = 0: |x| does not
    S, V = sim.score_vjp(M * big, G * big, F)
    assert np.all(np.isfinite(S)) and np.all(np.isfinite(V))
    S0 = sim.score(M * big, G * big)
    if eps:
        np.testing.assert_array_equal(S, S0)        # the fallback: score's own rescaled values
    else:
        np.testing.assert_array_less(np.abs(S - S0), D * eps64 * np.abs(S0))


_FIRST_RUN = """
import logging, sys, numpy as np
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="LOG %(message)s")
from uhn.models import kernels as K
M, Q = np.random.default_rng(0).random((30, 50)), np.random.default_rng(1).random((9, 50))
print("scores", float(np.abs(K.l1_scores(M, Q) - np.abs(Q[:, None] - M[None]).sum(2)).max()), flush=True)
if sys.argv[1] == "vjp":
    K.l1_vjp(M, Q, np.ones((9, 30)))
    print("vjp done", flush=True)
"""


def _first_run(cache, what, kill_on=None):
    """Run _FIRST_RUN in a fresh process with NUMBA_CACHE_DIR=cache; with ``kill_on``, SIGKILL it
    as soon as a line containing that text appears. Returns its stdout lines."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-c", _FIRST_RUN, what], stdout=subprocess.PIPE,
                            text=True, env=env)
    lines = []
    for line in proc.stdout:
        lines.append(line.strip())
        if kill_on is not None and kill_on in line:
            proc.kill()
            break
    proc.stdout.close()
    proc.wait(timeout=120)
    return lines


@pytest.mark.skipif(not K.HAVE_NUMBA, reason="numba not installed")
def test_first_run_compiles_only_what_it_calls_says_so_and_keeps_it(tmp_path):
    """A call compiles its own kernel variant alone (the scores of eps = 0, p = 1: no gradient or
    fused kernel), logs at INFO that it compiles it and where numba caches it, and the build is
    on disk when the process ends: a second process loads it without a compile notice. A
    process killed while compiling a second kernel keeps the first (numba writes each function's
    cache once it is compiled): the next run compiles the second alone."""
    lines = _first_run(tmp_path, "scores")
    notices = [x for x in lines if x.startswith("LOG compiling")]
    assert len(notices) == 1 and "L1 / Lp distance kernel for float64" in notices[0], lines
    assert str(tmp_path) in notices[0]
    assert float(lines[-1].split()[1]) < 1e-12
    built = sorted(p.name for p in tmp_path.rglob("*.nbi"))
    assert any("_sums_kernel" in n for n in built) and not any("vjp" in n or "fused" in n for n in built), built
    # killed while compiling the gradient kernel: the scores kernel is kept
    lines = _first_run(tmp_path, "vjp", kill_on="LOG compiling the L1 / Lp gradient")
    assert not any("distance kernel" in x for x in lines) and "gradient kernel" in lines[-1], lines
    lines = _first_run(tmp_path, "vjp")
    notices = [x for x in lines if x.startswith("LOG compiling")]
    assert len(notices) == 1 and "L1 / Lp gradient kernel" in notices[0] and lines[-1] == "vjp done", lines
    assert not any(x.startswith("LOG") for x in _first_run(tmp_path, "vjp"))
