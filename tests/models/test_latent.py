"""Latent-space memories (uhn.models.latent): PCA codes, user encoders, retrieval in latent space."""
import numpy as np
import pytest
from hypothesis import given, strategies as st
from numpy.testing import assert_allclose, assert_array_equal

from uhn.models import Memory
from uhn.models.latent import PCA, Encoder, LatentMemory, PCAEncoder

EPS = np.finfo(float).eps


def _data(rng, n=30, d=8):
    M = rng.normal(size=(n, d)) + 0.5
    return M, M + 0.4 * rng.normal(size=(n, d))


def _rotation_tol(D, *norms):
    """Round-off of scores computed through a D x D orthonormal rotation: each coordinate of
    V x is a D-term sum (error <= D eps |x| per entry, sqrt(D) of them), and V from the SVD is
    orthonormal to about D eps; a distance or a dot product of two such vectors is off by at most
    a few times D^1.5 eps times the product / sum of the norms involved."""
    return 8 * D ** 1.5 * EPS * np.prod(norms)


# ---------------------------------------------------------------- k = D: pixel-space retrieval
@pytest.mark.parametrize("separation", ["max", "softmax", "identity"])
def test_full_centred_pca_keeps_euclidean_retrieval(rng, separation):
    """k = D, centred: enc is a rotation after a shift, so every distance (euclidean is shift- and
    rotation-invariant) and hence every score, weight and retrieval equals pixel space."""
    M, Q = _data(rng)
    D = M.shape[1]
    lm = LatentMemory(M, PCAEncoder(D), similarity="euclidean", separation=separation)
    px = Memory(M, similarity="euclidean", separation=separation)
    R = max(np.linalg.norm(M - M.mean(0), axis=1).max(), np.linalg.norm(Q - M.mean(0), axis=1).max())
    tol = _rotation_tol(D, 2 * R)
    assert_allclose(lm.similarities(Q), px.similarities(Q), rtol=0, atol=tol)
    z, zp = lm.retrieve(Q), px.retrieve(Q)
    if separation == "max":
        assert_array_equal(np.argmax(lm.weights(Q), 1), np.argmax(px.weights(Q), 1))
    if separation == "identity":
        # weights that do not sum to 1: dec(sum w c) = m + sum_mu w_mu (x_mu - m), the pixel
        # z = sum_mu w_mu x_mu plus (1 - sum w) m
        zp = zp + (1 - px.weights(Q).sum(1, keepdims=True)) * M.mean(0)
    # z = sum_mu w_mu x_mu: a score error tol moves each weight by at most tol (identity) or the
    # weights by 2 tol in l1 (softmax, beta = 1), so z by N tol max|x|, plus the decode's own tol
    W = np.abs(px.weights(Q)).sum(1).max()
    assert_allclose(z, zp, rtol=0, atol=tol * (1 + 2 * len(M) * np.abs(M).max()) * (1 + W))


def test_full_uncentred_pca_keeps_dot_retrieval(rng):
    """k = D without centring: enc is a rotation, so m . q = (V m) . (V q): the dot product is kept
    (centring would change it: (m - c) . (q - c) != m . q)."""
    M, Q = _data(rng)
    D = M.shape[1]
    lm = LatentMemory(M, PCAEncoder(D, center=False), similarity="dot", separation="softmax")
    px = Memory(M, similarity="dot", separation="softmax")
    nm, nq = np.linalg.norm(M, axis=1).max(), np.linalg.norm(Q, axis=1).max()
    assert_allclose(lm.similarities(Q), px.similarities(Q), rtol=0, atol=_rotation_tol(D, nm, nq))
    centred = LatentMemory(M, PCAEncoder(D), similarity="dot", separation="softmax")
    assert np.abs(centred.similarities(Q) - px.similarities(Q)).max() > 1e3 * _rotation_tol(D, nm, nq)


def test_manhattan_is_not_rotation_invariant(rng):
    """The invariance above is a property of the similarity: L1 distances change under the same
    rotation (so the k = D tests can fail)."""
    M, Q = _data(rng)
    lm = LatentMemory(M, PCAEncoder(M.shape[1]), similarity="manhattan", separation="softmax")
    px = Memory(M, similarity="manhattan", separation="softmax")
    assert np.abs(lm.similarities(Q) - px.similarities(Q)).max() > 0.1


# ---------------------------------------------------------------- PCA itself
def test_pca_of_points_on_a_line(rng):
    """Data x = b + t u: one axis, +-u with its largest entry positive, all variance kept."""
    u = np.array([0.0, 3.0, -4.0]) / 5.0
    b = np.array([1.0, 2.0, 3.0])
    t = rng.normal(size=20)
    X = b + t[:, None] * u
    pca = PCA.fit(X, 1)
    assert pca.rank == 1
    assert_allclose(pca.components[0], -u, atol=1e-14)     # -4/5 is the largest |entry|: made +
    assert_allclose(pca.mean, X.mean(0), atol=1e-15)
    assert pca.explained_variance_ratio == pytest.approx(1.0, abs=1e-12)
    assert_allclose(pca.encode(X), -(t - t.mean())[:, None], atol=1e-13)
    with pytest.raises(ValueError, match="exceeds the rank 1"):
        PCA.fit(X, 2)


def test_projection_is_orthogonal_and_variance_adds_up(rng):
    X = rng.normal(size=(40, 10)) @ rng.normal(size=(10, 10))
    pca = PCA.fit(X, 4)
    assert_allclose(pca.components @ pca.components.T, np.eye(4), atol=10 * 10 * EPS)
    residual = X - pca.decode(pca.encode(X))
    assert_allclose(residual @ pca.components.T, 0, atol=100 * 10 * EPS * np.abs(X).max())
    kept = ((pca.encode(X)) ** 2).sum()
    total = ((X - X.mean(0)) ** 2).sum()
    assert pca.explained_variance_ratio == pytest.approx(kept / total, rel=1e-12)
    assert_allclose(pca.truncate(2).components, pca.components[:2])
    full = PCA.fit(X)
    assert full.k == full.rank == 10 and full.explained_variance_ratio == pytest.approx(1, abs=1e-12)


@given(n=st.integers(2, 12), d=st.integers(1, 9), seed=st.integers(0, 2**32 - 1),
       center=st.booleans(), data=st.data())
def test_round_trip_on_the_span(n, d, seed, center, data):
    """x = m + a V in the code's affine span: dec(enc(x)) = x and enc(dec(c)) = c, to the
    round-off of two k- and D-term products: (D + k) eps times the sizes involved."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.1, 10)
    pca = PCA.fit(X, center=center)
    k = data.draw(st.integers(1, pca.k))
    pca = pca.truncate(k)
    a = rng.normal(size=(5, k)) * rng.uniform(0.1, 10)
    x = pca.mean + a @ pca.components
    scale = np.abs(pca.mean).max() + np.abs(a).sum(1).max()
    tol = 4 * (d + k) * EPS * scale
    assert_allclose(pca.decode(pca.encode(x)), x, rtol=0, atol=tol)
    assert_allclose(pca.encode(pca.decode(a)), a, rtol=0, atol=tol)


# ---------------------------------------------------------------- the latent memory
def test_batched_equals_single_queries(rng):
    M, Q = _data(rng)
    lm = LatentMemory(M, PCAEncoder(3), similarity="manhattan", separation="softmax")
    Z = lm.retrieve(Q)
    single = np.stack([lm.retrieve(q) for q in Q])
    # the same row of the same products, summed in BLAS's order for a batch or for one row
    assert_allclose(single, Z, rtol=0, atol=8 * M.shape[1] * EPS * np.abs(M).max())
    assert lm.retrieve(Q[0]).shape == (M.shape[1],)
    assert lm.retrieve_latent(Q[0]).shape == (3,)
    assert lm.similarities(Q).shape == lm.weights(Q).shape == (len(Q), len(M))


def test_linear_decoder_returns_the_weighted_projected_memories(rng):
    """dec(sum_mu w_mu c_mu) = sum_mu w_mu dec(c_mu) when sum_mu w_mu = 1 (softmax)."""
    M, Q = _data(rng)
    lm = LatentMemory(M, PCAEncoder(4), similarity="euclidean", separation="softmax")
    W = lm.weights(Q)
    assert_allclose(W.sum(1), 1.0, atol=len(M) * EPS)
    proj = lm.encoder.decode(lm.codes)
    assert_allclose(lm.retrieve(Q), W @ proj, atol=1e-12 * np.abs(M).max() * len(M))


def test_max_retrieval_returns_the_projected_memory(rng):
    M, Q = _data(rng)
    lm = LatentMemory(M, PCAEncoder(5), similarity="euclidean", separation="max")
    idx = np.argmax(lm.similarities(Q), axis=1)
    codes = lm.encode(Q)
    want = np.argmin(((codes[:, None, :] - lm.codes[None]) ** 2).sum(-1), axis=1)
    assert_array_equal(idx, want)
    assert_allclose(lm.retrieve(Q), lm.encoder.decode(lm.codes[idx]), atol=0)


def test_user_encoder_pair_and_heteroassociation(rng):
    """A scaling code x -> 2x keeps the argmax of every distance; with values the retrieved rows
    are the values themselves, not decoded."""
    M, Q = _data(rng)
    enc = Encoder(lambda X: 2.0 * X, lambda C: C / 2.0, name="double")
    lm = LatentMemory(M, enc, similarity="euclidean", separation="max")
    px = Memory(M, similarity="euclidean", separation="max")
    assert_allclose(lm.retrieve(Q), px.retrieve(Q), atol=0)
    P = rng.normal(size=(len(M), 3))
    hetero = LatentMemory(M, enc, values=P, similarity="euclidean", separation="max")
    assert_array_equal(hetero.retrieve(Q), P[np.argmax(px.similarities(Q), 1)])


def test_output_is_applied_after_decoding(rng):
    M = rng.choice([-1.0, 1.0], size=(6, 12))
    Q = M.copy()
    Q[:, :2] *= -1
    lm = LatentMemory(M, PCAEncoder(5), similarity="euclidean", separation="max", output="sign")
    out = lm.retrieve(Q)
    assert set(np.unique(out)) <= {-1.0, 1.0}
    assert_array_equal(out, np.where(lm.encoder.decode(lm.retrieve_latent(Q)) >= 0, 1.0, -1.0))


# ---------------------------------------------------------------- bad input
def test_bad_inputs_are_refused(rng):
    M, Q = _data(rng, n=5, d=8)
    with pytest.raises(ValueError, match="exceeds the rank 4"):     # 5 centred points: rank 4
        LatentMemory(M, PCAEncoder(6))
    with pytest.raises(ValueError, match="must be >= 1"):
        PCAEncoder(0)
    with pytest.raises(ValueError, match="must be >= 1"):
        PCAEncoder(-3)
    with pytest.raises(TypeError, match="integer"):
        PCAEncoder(2.5)
    lm = LatentMemory(M, PCAEncoder(3))
    with pytest.raises(ValueError, match="shape mismatch"):
        lm.retrieve(Q[:, :7])
    with pytest.raises(ValueError, match="shape mismatch"):
        LatentMemory(M[:, :6], lm.encoder)                       # a code fitted on D = 8
    with pytest.raises(ValueError, match="shape mismatch"):
        lm.encoder.decode(np.zeros((2, 4)))
    bad = Q.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        lm.retrieve(bad)
    with pytest.raises(ValueError, match="NaN"):
        LatentMemory(np.where(bad > 1e9, 0, bad), PCAEncoder(2))
    with pytest.raises(ValueError, match="NaN"):
        LatentMemory(M, Encoder(lambda X: X * np.nan, lambda C: C)).retrieve(Q)
    with pytest.raises(ValueError, match="one row per|rows"):
        LatentMemory(M, Encoder(lambda X: X[:1], lambda C: C))
    with pytest.raises(TypeError, match="callable"):
        Encoder(3, lambda C: C)
    with pytest.raises(TypeError, match="encode and decode"):
        LatentMemory(M, object())
    with pytest.raises(ValueError, match="unknown output"):
        LatentMemory(M, PCAEncoder(2), output="round")
    with pytest.raises(ValueError, match="rank 0"):
        PCA.fit(np.ones((4, 3)))
