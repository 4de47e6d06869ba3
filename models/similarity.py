"""Similarity functions sim(M, Q): "larger = more similar", one registry for every consumer.

Each :class:`Similarity` maps memories ``M`` (N, D) and queries ``Q`` (B, D) to a score matrix
(B, N) without building a (B, N, D) array; differentiable ones also provide the gradient
contraction :attr:`Similarity.vjp`, the only derivative of S that the continuous-time dynamics,
the energy and its time derivative use (docs/theory.md §1.1 Similarities, §2 The two-layer
network). Each factory below states its own S_mu and gradient. Single-shot retrieval (models/), iterated retrieval and the ODE dynamics (dynamics/) all take
their similarities from :func:`get_similarity`.

Two conventions:

* ``"standard"`` (default): the clean negative-distance forms of docs/theory.md §1.1.
* ``"paper_code"``: what the official code of Millidge et al. computes, kept so published curves
  can be matched: reciprocal distances 1/sum|q-m| and 1/sum (q-m)^2 (squared, not the euclidean
  norm), 1/KL in the official form (below), and a "dot" that is the dot product of sum-normalised
  vectors. The score
  normalisation S / sum(S) the official code applies afterwards lives in
  :class:`uhn.models.memory.Memory` (``convention="paper_code"``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

import numpy as np

from uhn.models.arrays import (CHUNK_BYTES, errstate, is_numpy_namespace, library_name, namespace,
    numpy_float, rows_per_chunk, to_numpy)
from uhn.models.validation import (all_finite, as_matrix, binary_coding, check_same_width,
    from_registry, real_param)

#: small constant that keeps logarithms of zero-valued pixels finite in the KL similarities
KL_EPS = 1e-4


@dataclass(frozen=True)
class Similarity:
    """A similarity S = sim(M, Q) (B, N) with, when it is differentiable, its contraction vjp.

    Attributes
    ----------
    name : registry name, with parameters, e.g. ``"minkowski(p=3)"``.
    score : ``score(M, Q) -> (B, N)`` on validated floating arrays.
    vjp : ``vjp(M, G, F) -> (B, D)``, vjp(M, G, F)[b] = sum_mu F[b, mu] dS_mu/dg at g = G[b], or
        None when S has no gradient.
        Both return a fresh array the caller may overwrite (the dynamics do, in place).
    smooth : False where the gradient is a subgradient (a kink at a memory or at zero).
    binary_only : True for hamming, which is defined on {0,1} or {-1,1} data only.
    nonnegative_only : True for kl / reverse_kl, which read their inputs as distributions after
        sum-normalisation: the dynamics need non-negative feature rates g = dL_v/dv for them.
    nonpositive : True where every score is <= 0 by construction (the standard convention's
        negated distances and divergences): a separation that zeroes every score <= 0 (a
        rectified polynomial) then weights nothing, and :class:`uhn.models.memory.Memory` refuses it.
    array_api : True when ``score`` and ``vjp`` take an ``xp=`` keyword (the array namespace,
        found from the inputs when omitted) and compute in any array-API namespace (numpy, torch,
        CuPy, ...; see models/arrays.py). False (paper_code similarities, custom ones): numpy
        arrays only, and other namespaces are refused with a TypeError.
    prepare : ``prepare(M, xp) -> memo`` for similarities whose score redoes per-memory work on
        every call (normalised rows, their logarithms, norms); ``score`` and ``vjp`` then take a
        ``prep=memo`` keyword. :meth:`bind` uses it.
    score_vjp : ``score_vjp(M, G, F) -> (S, vjp)`` on numpy arrays, both in one pass over the
        (B, N, D) pairs, where a compiled kernel shares their work (manhattan); the dynamics'
        right-hand side, which needs both at the same states, uses it. None: the two separately.
    gram : True where S is a function of the product Q @ M.T and of per-row quantities (dot,
        euclidean, squared_euclidean, the paper's normalised dot): ``score`` then also takes a
        ``gram=G`` keyword, G = Q @ M.T of exactly these M and Q, already computed, which it reads
        (never writes) instead of computing the product: several such similarities scoring the
        same memories and queries (the lines of a capacity curve) share one GEMM
        (:meth:`uhn.models.memory.Memory.retrieve`'s ``gram``).
    """

    name: str
    score: Callable[..., Any]
    vjp: Optional[Callable[..., Any]] = None
    smooth: bool = True
    binary_only: bool = False
    nonnegative_only: bool = False
    nonpositive: bool = False
    params: dict = field(default_factory=dict)
    array_api: bool = False
    prepare: Optional[Callable[..., Any]] = None
    score_vjp: Optional[Callable[..., Any]] = None
    gram: bool = False

    @property
    def differentiable(self) -> bool:
        return self.vjp is not None

    def bind(self, M, xp=None) -> "Similarity":
        """This similarity with its per-memory quantities computed once for the memories ``M``:
        called with that same array object, score and vjp reuse them (one query against N = 5000
        memories then costs about one GEMV, as dot does); called with any other array they use
        the general formula. ``M`` must not change in place afterwards (:func:`bind_private`, which
        Memory and Network use, binds to a read-only copy). Similarities without per-memory work are returned as they are."""
        if self.prepare is None:
            return self
        memo = self.prepare(M, self.namespace(M) if xp is None else xp)
        score, vjp = self.score, self.vjp

        def bound_score(M_, Q, xp=None, **gram):
            return score(M_, Q, xp=xp, prep=memo if M_ is M else None, **gram)

        def bound_vjp(M_, G, F, xp=None):
            return vjp(M_, G, F, xp=xp, prep=memo if M_ is M else None)

        return replace(self, score=bound_score, vjp=None if vjp is None else bound_vjp,
                       prepare=None)

    def namespace(self, *arrays, names=("memories", "queries")):
        """The array namespace of the inputs; TypeError for a mix of libraries, or for a non-numpy
        namespace when this similarity computes in numpy only."""
        xp = namespace(*arrays, names=names)
        if not (self.array_api or is_numpy_namespace(xp)):
            raise TypeError(f"similarity {self.name!r} computes in numpy only, got {library_name(xp)} "
                            f"arrays; convert them to numpy (or use a convention='standard' similarity, "
                            f"which computes in any array-API namespace)")
        return xp

    def __call__(self, M, Q):
        """S[b, mu] = sim(M_mu, Q_b); a 1-D query gives a 1-D (N,) result, in the inputs' namespace."""
        xp = self.namespace(M, Q)
        M, _ = as_matrix(M, "memories", ndim_ok=(2,), xp=xp)
        Q, single = as_matrix(Q, "queries", xp=xp)
        check_same_width(M, Q)
        M, Q = common_float(xp, M, Q)
        S = self.checked_score(M, Q, xp=xp)
        return S[0, ...] if single else S

    def checked_score(self, M, Q, *, xp=None, gram=None):
        """``score(M, Q)`` on validated floating arrays, refusing a non-finite result; ``gram``:
        Q @ M.T already at hand, for a similarity with a Gram form (:attr:`gram`).

        Finite inputs can still give inf/NaN scores when an intermediate overflows (a dot product
        of 1e200-sized vectors); that raises OverflowError naming the similarity instead of letting
        max "retrieve" memory 0. One isfinite over the (B, N) scores; binary-only scores (hamming)
        validate their inputs themselves."""
        if xp is None:
            xp = self.namespace(M, Q)
        kw = {} if gram is None else {"gram": gram}
        with errstate(xp, over="ignore", invalid="ignore"):
            S = self.score(M, Q, xp=xp, **kw) if self.array_api else self.score(M, Q, **kw)
        if not all_finite(S, xp):
            raise OverflowError(
                f"similarity {self.name!r} gave {int(np.sum(~np.isfinite(to_numpy(S))))} NaN/inf score(s) "
                f"for finite inputs, an overflow of {M.dtype} (max |memories| = "
                f"{float(xp.max(xp.abs(M))):.3g}, max |queries| = {float(xp.max(xp.abs(Q))):.3g}); "
                f"rescale the data")
        return S

    def grad_contract(self, M, G, F):
        """:attr:`vjp` (M, G, F) on validated arrays, (B, D): the coupling term of the feature
        dynamics (docs/theory.md §2)."""
        if self.vjp is None:
            raise ValueError(
                f"similarity {self.name!r} has no gradient, so it cannot drive the continuous-time "
                f"dynamics; use a differentiable similarity (see uhn.models.similarity.differentiable_names())")
        xp = self.namespace(M, G, F, names=("memories", "states", "weights"))
        if is_numpy_namespace(xp):
            return self.vjp(numpy_float(M), np.atleast_2d(numpy_float(G)), np.atleast_2d(numpy_float(F)))
        G = G if G.ndim == 2 else G[None, :]
        F = F if F.ndim == 2 else F[None, :]
        return self.vjp(M, G, F, xp=xp) if self.array_api else self.vjp(M, G, F)


def bind_private(sim: Similarity, M, P=None, xp=None):
    """(bound similarity, M, P) for a holder of memories (Memory, Network): where ``sim`` has
    per-memory work, M becomes a private copy (read-only in numpy, so changing the caller's array
    later cannot leave the memo stale), P follows it when P is M, and the similarity is bound to
    the copy (:meth:`Similarity.bind`); otherwise all three are returned as they are."""
    if sim.prepare is None:
        return sim, M, P
    xp = sim.namespace(M) if xp is None else xp
    same = P is M
    if is_numpy_namespace(xp):
        M = np.array(M, copy=True)
        M.flags.writeable = False
    else:
        M = xp.asarray(M, copy=True)
    return sim.bind(M, xp), M, (M if same else P)


def common_float(xp, *arrays):
    """The arrays cast to their common floating dtype (numpy promotes a float32 @ float64 product
    itself; torch refuses one, so other namespaces promote explicitly)."""
    if is_numpy_namespace(xp) or len({a.dtype for a in arrays}) == 1:
        return arrays
    dtype = xp.result_type(*arrays)
    return tuple(a if a.dtype == dtype else xp.astype(a, dtype) for a in arrays)


def check_binary(M, Q, name: str, *, xp=None) -> str:
    """Raise ValueError unless M and Q are both {0,1} or both {-1,1}; return the coding."""
    if xp is None:
        xp = namespace(M, Q)
    cm, cq = binary_coding(M, xp=xp), binary_coding(Q, xp=xp)
    if cm is None or cq is None:
        which = "memories" if cm is None else "queries"
        raise ValueError(f"{name} similarity needs binary {{0,1}} or bipolar {{-1,1}} data, "
                         f"but the {which} hold other values")
    if cm != cq:
        # an all-ones array is both binary and bipolar (binary_coding says "binary"): the other
        # array decides the coding, else the binary formula would score bipolar data
        if bool(xp.all(M == 1)):
            return cq
        if bool(xp.all(Q == 1)):
            return cm
        raise ValueError(f"{name} similarity: memories are {cm} but queries are {cq}; use one coding")
    return cm


# ----------------------------------------------------------------------------------------------
# standard convention: every score / vjp takes xp= (found from the inputs when None)
# ----------------------------------------------------------------------------------------------

def _xp(xp, *arrays):
    """The namespace handed down, or (a direct call without one) the inputs' namespace."""
    return namespace(*arrays) if xp is None else xp


def _power_of_two_scale(M, Q, xp) -> float:
    """2^(e-1) with max |entry| of M and Q = f 2^e, 1/2 <= f < 1: dividing by it is exact and brings
    every entry into [-2, 2] (2^e itself would overflow for entries near the float maximum)."""
    big = max(float(xp.max(xp.abs(M))), float(xp.max(xp.abs(Q))))
    return math.ldexp(1.0, math.frexp(big)[1] - 1) if big > 0 else 1.0


def _underflow_scale(xp, dtype) -> float:
    """Entries below this may have had their squares (or p-th powers) underflow: 2^-300 in float64,
    the same fraction 300/1022 of the exponent range in other float dtypes (2^-37 in float32)."""
    min_exp = math.frexp(float(xp.finfo(dtype).smallest_normal))[1] - 1   # -1022 for float64
    return math.ldexp(1.0, round(min_exp * 300 / 1022))


def _overflow_safe(raw, M, Q, eps, name, xp):
    """raw(M, Q, eps) for a distance score homogeneous of degree 1 in (M, Q, eps), i.e.
    raw(M, Q, eps) = s raw(M/s, Q/s, eps/s). Computed directly; only where that overflows (squares
    or p-th powers of entries ~1e155 and up) or may have underflowed (a zero score with every
    entry below 2^-300, where squares of 1e-200 vanish) again on inputs divided by a power of two s
    (exact), then multiplied back. The checks are O(B N) on the scores; the O((N + B) D) scale only
    runs when they fire. A distance beyond the dtype's range itself raises OverflowError."""
    with errstate(xp, over="ignore", invalid="ignore", under="ignore"):
        S = raw(M, Q, eps)
    if all_finite(S, xp):
        # a distance score is <= 0, and 0 only at a match or on underflow (numpy: one max, no mask)
        if not (S.max() >= 0 if is_numpy_namespace(xp) else bool(xp.any(S >= 0))):
            return S
        s = _power_of_two_scale(M, Q, xp)
        if s >= _underflow_scale(xp, S.dtype):
            return S  # exact matches, not underflow
    else:
        s = _power_of_two_scale(M, Q, xp)
    with errstate(xp, over="ignore", invalid="ignore"):
        S = raw(M / s, Q / s, eps / s)
        S *= s
    if not all_finite(S, xp):
        if not (all_finite(M, xp) and all_finite(Q, xp)):
            # reached by a state that diverged (validated inputs are finite)
            raise OverflowError(f"{name} distance of non-finite entries: the queries or states hold "
                                f"inf or NaN, e.g. a state that diverged")
        big = max(float(xp.max(xp.abs(M))), float(xp.max(xp.abs(Q))))
        raise OverflowError(f"{name} distance between some query and memory exceeds the {S.dtype} range "
                            f"(entries up to {big:.3g}); rescale the data")
    return S


def _row_sq_norms(A, xp):
    """|A_i|^2 per row, (n,)."""
    return np.einsum("ij,ij->i", A, A) if is_numpy_namespace(xp) else xp.sum(A * A, axis=1)


def _gram_or_product(M, Q, xp, gram=None):
    """A fresh Q @ M.T: a copy of ``gram`` when the caller has the product (Similarity.gram)."""
    if gram is None:
        return Q @ M.T
    return np.array(gram, copy=True) if is_numpy_namespace(xp) else xp.asarray(gram, copy=True)


def _sq_dist(M, Q, xp, m2=None, eps: float = 0.0, root: bool = False, gram=None):
    """|M_mu - Q_b|^2 (B, N) through one GEMM (or ``gram`` = Q @ M.T, read only), clipped at 0
    against round-off; ``m2`` = the memories' |M_mu|^2 when already at hand
    (:meth:`Similarity.bind`). With ``root`` (numpy only): the euclidean score
    eps - sqrt(|M_mu - Q_b|^2 + eps^2) instead.

    numpy: finished in place in the GEMM's output (a copy of ``gram``) by one fused compiled pass
    (uhn.models.kernels.finish_sq_dist), one (B, N) array, no temporaries of that size."""
    m2 = _row_sq_norms(M, xp) if m2 is None else m2
    if not is_numpy_namespace(xp):
        G = Q @ M.T if gram is None else gram
        d2 = (xp.sum(Q * Q, axis=1)[:, None] - 2.0 * G) + m2[None, :]
        return xp.clip(d2, min=0.0)
    from uhn.models import kernels as _kernels
    return _kernels.finish_sq_dist(_gram_or_product(M, Q, xp, gram), np.einsum("ij,ij->i", Q, Q),
                                   m2, eps, root)


def _negate(d, xp):
    """-d (numpy: in place; d is a fresh array owned by the caller)."""
    return np.negative(d, out=d) if is_numpy_namespace(xp) else -d


def _standard(name, score, vjp=None, **kw) -> Similarity:
    """A standard-convention Similarity: score(M, Q, xp=None) and vjp(M, G, F, xp=None)."""
    return Similarity(name, score, vjp, array_api=True, **kw)


def _dot():
    """S_mu = M_mu . q;  dS_mu/dg = M_mu."""
    def score(M, Q, xp=None, gram=None):
        return _gram_or_product(M, Q, _xp(xp, M, Q), gram)

    return _standard("dot", score, lambda M, G, F, xp=None: F @ M, gram=True)


def _unit_rows(A, name, xp):
    """(A_i / |A_i|, |A_i|). A row whose squares overflow (entries ~1e155 and up) or underflow
    (~1e-155 and below) is first divided by its largest |entry|, so its direction stays exact.
    Other namespaces than numpy always take that route (one more O(n D) pass, no boolean scatter)."""
    if not is_numpy_namespace(xp):
        a = xp.max(xp.abs(A), axis=1, keepdims=True)
        if not bool(xp.all(a > 0)):
            zero = np.flatnonzero(to_numpy(a)[:, 0] == 0)
            raise ValueError(f"cosine similarity is undefined for all-zero {name} (rows {zero[:5].tolist()})")
        Ao = A / a
        no = xp.linalg.vector_norm(Ao, axis=1, keepdims=True)
        return Ao / no, a * no
    with np.errstate(over="ignore", under="ignore"):
        n = np.linalg.norm(A, axis=1, keepdims=True)
    odd = ~((n[:, 0] > 1e-150) & np.isfinite(n[:, 0]))
    if not odd.any():
        return A / n, n
    U = A / np.where(n > 0, n, 1.0)
    a = np.abs(A[odd]).max(axis=1, keepdims=True)
    if np.any(a == 0):
        zero = np.flatnonzero(odd)[a[:, 0] == 0]
        raise ValueError(f"cosine similarity is undefined for all-zero {name} (rows {zero[:5].tolist()})")
    Ao = A[odd] / a
    no = np.linalg.norm(Ao, axis=1, keepdims=True)
    U[odd] = Ao / no
    with np.errstate(over="ignore"):
        n[odd] = a * no
    return U, n


def _cosine():
    """S_mu = M_mu . q / (|M_mu| |q|);  dS_mu/dg = M^_mu/|g| - S_mu g/|g|^2."""

    def prepare(M, xp):
        return _unit_rows(M, "memories", xp)[0]

    def score(M, Q, xp=None, prep=None):
        xp = _xp(xp, M, Q)
        Mh = prepare(M, xp) if prep is None else prep
        return _unit_rows(Q, "queries", xp)[0] @ Mh.T

    def vjp(M, G, F, xp=None, prep=None):
        xp = _xp(xp, M, G, F)
        Mh = prepare(M, xp) if prep is None else prep
        Gh, gn = _unit_rows(G, "states", xp)
        S = Gh @ Mh.T
        return (F @ Mh) / gn - xp.sum(F * S, axis=1, keepdims=True) * Gh / gn

    return _standard("cosine", score, vjp, prepare=prepare)


def _squared_euclidean():
    """S_mu = -|M_mu - q|^2;  dS_mu/dg = 2 (M_mu - g)."""

    def score(M, Q, xp=None, prep=None, gram=None):
        xp = _xp(xp, M, Q)
        return _negate(_sq_dist(M, Q, xp, prep, gram=gram), xp)

    def vjp(M, G, F, xp=None, prep=None):
        xp = _xp(xp, M, G, F)
        return 2.0 * (F @ M - xp.sum(F, axis=1, keepdims=True) * G)

    return _standard("squared_euclidean", score, vjp, prepare=_row_sq_norms, gram=True, nonpositive=True)


def _euclidean(eps: float = 0.0):
    """S_mu = eps - sqrt(|M_mu - q|^2 + eps^2)  (eps = 0: -|M_mu - q|_2);
    dS_mu/dg = (M_mu - g) / sqrt(|M_mu - g|^2 + eps^2), taken as 0 at a memory when eps = 0."""
    eps = real_param(eps, "euclidean smoothing eps", low=0.0)

    def raw_of(xp, M0=None, m2=None, Q0=None, gram=None):
        def raw(M, Q, e):
            # |M_mu|^2 from the memo, and the caller's Q @ M.T, only for the bound memories and
            # the given queries themselves (not for a rescaled M / s, Q / s)
            m2_ = m2 if M is M0 else None
            G = gram if (M is M0 and Q is Q0) else None
            if is_numpy_namespace(xp):     # the whole score in the GEMM's output, one pass
                return _sq_dist(M, Q, xp, m2_, eps=e, root=True, gram=G)
            d = _sq_dist(M, Q, xp, m2_, gram=G)
            return (e - xp.sqrt(d + e * e)) if e else -xp.sqrt(d)
        return raw

    def score(M, Q, xp=None, prep=None, gram=None):
        xp = _xp(xp, M, Q)
        return _overflow_safe(raw_of(xp, M, prep, Q, gram), M, Q, eps, "euclidean", xp)

    def vjp(M, G, F, xp=None, prep=None):
        xp = _xp(xp, M, G, F)
        r = xp.sqrt(_sq_dist(M, G, xp, prep) + eps * eps)
        if is_numpy_namespace(xp):
            W = np.divide(F, r, out=np.zeros_like(F), where=r > 0)
        else:
            W = xp.where(r > 0, F / xp.where(r > 0, r, 1.0), 0.0)
        return W @ M - xp.sum(W, axis=1, keepdims=True) * G

    name = "euclidean" if eps == 0 else f"euclidean(eps={eps:g})"
    return _standard(name, score, vjp, smooth=eps > 0, params={"eps": eps}, prepare=_row_sq_norms,
                     gram=True, nonpositive=True)


def _chunked_pairwise_vjp(M, G, F, elementwise, xp, chunk_bytes=CHUNK_BYTES):
    """sum_mu F[b, mu] * elementwise(G[b] - M_mu) over chunks of queries (memory-bounded), in the
    spec-only form (numpy arrays go to the compiled kernels of :mod:`uhn.models.kernels`)."""
    B, D = G.shape
    N = M.shape[0]
    step = rows_per_chunk(8 * N * D, chunk_bytes)
    parts = []
    for s in range(0, B, step):
        e = min(s + step, B)  # the standard leaves out-of-bounds slice stops unspecified
        E = elementwise(G[s:e, None, :] - M[None, :, :], s, step)              # (b, N, D)
        parts.append((F[s:e, None, :] @ E)[:, 0, :])                           # batched GEMV
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)


def _pairwise_power_sums(M, Q, absx, p, xp, chunk_bytes=CHUNK_BYTES):
    """-(sum_i absx(Q_b,i - M_mu,i)^p)^(1/p) (B, N) (p = inf: -max_i) in the spec-only form, over
    chunks of queries so no (B, N, D) array is built (each chunk's (b, N, D) below chunk_bytes)."""
    B, D = Q.shape
    N = M.shape[0]
    step = rows_per_chunk(8 * N * D, chunk_bytes)
    parts = []
    for s in range(0, B, step):
        A = absx(Q[s:min(s + step, B), None, :] - M[None, :, :])
        if math.isinf(p):
            parts.append(-xp.max(A, axis=2))
        elif p == 1:
            parts.append(-xp.sum(A, axis=2))
        else:
            parts.append(-(xp.sum(A ** p, axis=2) ** (1.0 / p)))
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)


def _minkowski(p: float = 2.0, eps: float = 0.0, name: str | None = None):
    """S_mu = -(sum_i |M_mu,i - q_i|^p)^(1/p)  (p = 1: manhattan);
    eps > 0 smooths |x| to sqrt(x^2 + eps^2) - eps.  Gradient (eps = 0, p > 1):
    dS_mu/dg_i = -|g_i - M_mu,i|^(p-1) sign(g_i - M_mu,i) / |g - M_mu|_p^(p-1); for p = 1 the
    subgradient -sign(g_i - M_mu,i) (sign(0) = 0)."""
    p = real_param(p, "minkowski p", low=1.0, finite=False)  # p < 1 is not a metric
    name_ = name or "minkowski"
    eps = real_param(eps, f"{name_} smoothing eps", low=0.0)
    if np.isinf(p) and eps:
        raise ValueError("minkowski p=inf (the max norm) has no smoothed form here; use eps=0")

    def absx_of(xp, e=eps):
        if e:
            return lambda x: xp.sqrt(x * x + e * e) - e
        return xp.abs

    def dabsx_of(xp):
        return (lambda x: x / xp.sqrt(x * x + eps * eps)) if eps else xp.sign

    def raw_of(xp):
        def raw(M, Q, e):
            if not is_numpy_namespace(xp):
                return _pairwise_power_sums(M, Q, absx_of(xp, e), p, xp)
            if math.isinf(p):
                return _negate(_cdist(Q, M, "chebyshev"), xp)
            # compiled L1/Lp kernel (numba, both cores; its chunked-numpy reference without numba)
            from uhn.models import kernels as _kernels
            return _negate(_kernels.lp_scores(M, Q, p, eps=e, finite=True), xp)   # validated
        return raw

    def score(M, Q, xp=None):
        xp = _xp(xp, M, Q)
        return _overflow_safe(raw_of(xp), M, Q, eps, name_, xp)

    def vjp(M, G, F, xp=None):
        xp = _xp(xp, M, G, F)
        if is_numpy_namespace(xp):
            from uhn.models import kernels as _kernels
            if p == 1:
                return _negate(_kernels.l1_vjp(M, G, F, eps), xp)
            return _negate(_kernels.lp_vjp(M, G, F, p, eps, dist=-score(M, G, xp)), xp)
        absx, dabsx = absx_of(xp), dabsx_of(xp)
        if p == 1:
            return -_chunked_pairwise_vjp(M, G, F, lambda d, s, k: dabsx(d), xp)
        dist = -score(M, G, xp)  # (B, N); numpy returned above (compiled kernels)
        scale = xp.where(dist > 0, 1.0 / xp.where(dist > 0, dist, 1.0) ** (p - 1), 0.0)
        Fs = F * scale
        return -_chunked_pairwise_vjp(
            M, G, Fs, lambda d, s, k: absx(d) ** (p - 1) * dabsx(d), xp)

    def score_vjp(M, G, F):
        """p = 1: (S, vjp) by the fused L1 kernel (one pass, one sqrt per pair and feature for
        eps > 0); where a distance overflows (entries ~1e154 and up) the two separately, through
        score's exact rescaling, which raises OverflowError for a distance beyond the range (as
        score alone does: a state that diverged to inf / NaN reads as an overflow, not bad input)."""
        from uhn.models import kernels as _kernels
        dist, V = _kernels.l1_scores_vjp(M, G, F, eps, finite=True)
        if not all_finite(dist, np):
            return score(M, G), vjp(M, G, F)
        return _negate(dist, np), _negate(V, np)

    if name is None:
        name = f"minkowski(p={p:g})"
    if eps:
        name = f"{name}(eps={eps:g})" if "(" not in name else name[:-1] + f", eps={eps:g})"
    # p = inf (max norm): the p-power gradient formula is inf/inf, so offer no gradient rather than NaN
    return _standard(name, score, vjp if np.isfinite(p) else None, smooth=eps > 0,
                     params={"p": p, "eps": eps}, score_vjp=score_vjp if p == 1 else None,
                     nonpositive=True)


def _manhattan(eps: float = 0.0):
    """S_mu = -|M_mu - q|_1 (eps > 0: sum sqrt((M_mu,i - q_i)^2 + eps^2) - eps);
    dS_mu/dg = sign(M_mu - g) (subgradient, sign(0) = 0) or its smoothed form."""
    return _minkowski(1.0, eps, name="manhattan")


def _hamming():
    """S_mu = -(number of entries where M_mu and q differ); binary or bipolar data only.

    Computed by GEMM: bipolar d = (D - M.q)/2, binary d = |m| + |q| - 2 m.q. No gradient.
    """

    def score(M, Q, xp=None):
        xp = _xp(xp, M, Q)
        coding = check_binary(M, Q, "hamming", xp=xp)
        if coding == "bipolar":
            return -(M.shape[1] - Q @ M.T) / 2.0
        return -(xp.sum(Q, axis=1)[:, None] + xp.sum(M, axis=1)[None, :] - 2.0 * (Q @ M.T))

    return _standard("hamming", score, None, smooth=False, binary_only=True, nonpositive=True)


def _normalise_rows(A, name, eps, xp):
    """((A + eps) / sum(A + eps) per row, sum(A + eps)); refuses negative entries."""
    if bool(xp.any(A < 0)):
        raise ValueError(f"KL similarities need non-negative {name} (they are read as "
                         f"distributions after sum-normalisation); got min {float(xp.min(A)):.3g}")
    A = A + eps
    s = xp.sum(A, axis=1, keepdims=True)
    return A / s, s


def _kl(eps: float = KL_EPS):
    """S_mu = -KL(m^ || q^) = sum_i m^_i (log q^_i - log m^_i), x^ = (x + eps)/sum(x + eps);
    dS_mu/dg_j = m^_mu,j/(g_j + eps) - 1/sum(g + eps)."""

    def prepare(M, xp):
        """m^ and the negative entropy term sum_i m^_i log m^_i per memory."""
        Mh, _ = _normalise_rows(M, "memories", eps, xp)
        return Mh, xp.sum(Mh * xp.log(Mh), axis=1)

    def score(M, Q, xp=None, prep=None):
        xp = _xp(xp, M, Q)
        Mh, neg_entropy = prepare(M, xp) if prep is None else prep
        Qh, _ = _normalise_rows(Q, "queries", eps, xp)
        return xp.log(Qh) @ Mh.T - neg_entropy[None, :]

    def vjp(M, G, F, xp=None, prep=None):
        xp = _xp(xp, M, G, F)
        Mh = _normalise_rows(M, "memories", eps, xp)[0] if prep is None else prep[0]
        _normalise_rows(G, "states", eps, xp)  # refuses negative rates (use a positive L_v, e.g. softplus)
        Gp = G + eps
        return (F @ Mh) / Gp - xp.sum(F, axis=1, keepdims=True) / xp.sum(Gp, axis=1, keepdims=True)

    return _standard("kl", score, vjp, nonnegative_only=True, nonpositive=True, params={"eps": eps},
                     prepare=prepare)


def _reverse_kl(eps: float = KL_EPS):
    """S_mu = -KL(q^ || m^) = sum_i q^_i (log m^_i - log q^_i);
    dS_mu/dg_j = (log m^_mu,j - log q^_j - S_mu) / sum(g + eps)."""

    def prepare(M, xp):
        """log m^ per memory."""
        return xp.log(_normalise_rows(M, "memories", eps, xp)[0])

    def score(M, Q, xp=None, prep=None):
        xp = _xp(xp, M, Q)
        logMh = prepare(M, xp) if prep is None else prep
        Qh, _ = _normalise_rows(Q, "queries", eps, xp)
        return Qh @ logMh.T - xp.sum(Qh * xp.log(Qh), axis=1)[:, None]

    def vjp(M, G, F, xp=None, prep=None):
        xp = _xp(xp, M, G, F)
        logMh = prepare(M, xp) if prep is None else prep
        Gh, s = _normalise_rows(G, "states", eps, xp)
        S = Gh @ logMh.T - xp.sum(Gh * xp.log(Gh), axis=1)[:, None]
        return (F @ logMh - xp.sum(F, axis=1, keepdims=True) * xp.log(Gh)
                - xp.sum(F * S, axis=1, keepdims=True)) / s

    return _standard("reverse_kl", score, vjp, nonnegative_only=True, nonpositive=True,
                     params={"eps": eps}, prepare=prepare)


# ----------------------------------------------------------------------------------------------
# paper_code convention (official code of Millidge et al. 2022, functions.py)
# ----------------------------------------------------------------------------------------------

#: paper_code reciprocal similarities floor distances here: the official code divides by zero
#: (inf, then NaN after normalisation) when a query equals a stored memory exactly
RECIPROCAL_FLOOR = 1e-12


def _reciprocal(distance_name, distance):
    """S_mu = 1 / max(d(M_mu, q), RECIPROCAL_FLOOR)."""
    return Similarity(f"{distance_name}[paper_code]",
                      lambda M, Q: 1.0 / np.maximum(distance(M, Q), RECIPROCAL_FLOOR), None, smooth=False)


def _paper_dot():
    """(M_mu / sum M_mu) . (q / sum q): the official code's "normalized dot product"."""

    def score(M, Q, gram=None):
        """With ``gram`` = Q @ M.T: (Q M^T)_b,mu / (sum q_b sum m_mu), equal to the normalised
        product up to round-off (a few ulp)."""
        sm, sq = M.sum(1), Q.sum(1)
        if np.any(sm == 0) or np.any(sq == 0):
            raise ValueError("paper_code dot similarity divides by the pixel sum, which is 0 for an "
                             "all-zero image (the official code returns NaN here)")
        if gram is None:
            return (Q / sq[:, None]) @ (M / sm[:, None]).T
        S = gram / sq[:, None]
        S /= sm[None, :]
        return S

    return Similarity("dot[paper_code]", score, None, gram=True)


def _paper_distributions(A, name):
    """A / sum(A) per row, the official code's normalisation (no eps); refuses negative entries
    and all-zero rows (where the official code divides 0 by 0)."""
    if np.any(A < 0):
        raise ValueError(f"KL similarities need non-negative {name} (they are read as "
                         f"distributions after sum-normalisation); got min {A.min():.3g}")
    s = A.sum(1, keepdims=True)
    if np.any(s == 0):
        raise ValueError(f"paper_code KL similarity divides by the pixel sum, which is 0 for an all-zero "
                         f"image in the {name} (rows {np.flatnonzero(s[:, 0] == 0)[:5].tolist()}; the "
                         f"official code returns NaN here)")
    return A / s


def _paper_kl(reverse: bool, eps: float = KL_EPS):
    """The official code's KL_divergence / reverse_KL_divergence: with x^ = x/sum(x) for a stored
    memory x and z^ = z/sum(z) for the query (no eps there),

        KL    = sum_j x^_j (log(x^_j + eps) - log(z^_j + eps)),
        revKL = sum_j z^_j (log(z^_j + eps) - log(x^_j + eps)),      S = 1/KL (or 1/revKL).

    With eps inside the logarithms these are not true divergences: they can be slightly negative
    for a query close to a memory, and S keeps that sign (as the official code does). A KL within
    round-off of 0 (a query equal to a memory up to scale, where the official code divides by
    zero) is floored at RECIPROCAL_FLOOR, as the reciprocal distances are. Computed through one
    GEMM, KL = sum x^ log(x^ + eps) - sum x^ log(z^ + eps), whose round-off is at most about
    (D + 2) eps64 (|first sum| + |second sum|)."""

    def score(M, Q):
        P, R = _paper_distributions(M, "memories"), _paper_distributions(Q, "queries")
        if reverse:  # the query's distribution weighs the log-ratio
            P, R = R, P
        LP, LR = np.log(P + eps), np.log(R + eps)
        self_term = (P * LP).sum(1)                    # sum_j p_j log(p_j + eps)
        cross = LR @ P.T if not reverse else P @ LR.T  # sum_j p_j log(r_j + eps)
        self_term = self_term[None, :] if not reverse else self_term[:, None]
        kl = self_term - cross
        # within round-off of 0: the query is the memory (up to scale); the bound covers the GEMM
        floor = np.maximum(RECIPROCAL_FLOOR,
                           (M.shape[1] + 2) * np.finfo(float).eps * (np.abs(self_term) + np.abs(cross)))
        return np.where(np.abs(kl) <= floor, 1.0 / RECIPROCAL_FLOOR, 1.0 / np.where(kl == 0, 1.0, kl))

    return Similarity(("reverse_kl" if reverse else "kl") + "[paper_code]", score, None)


_STANDARD: dict[str, Callable[..., Similarity]] = {
    "dot": _dot,
    "cosine": _cosine,
    "euclidean": _euclidean,
    "squared_euclidean": _squared_euclidean,
    "manhattan": _manhattan,
    "minkowski": _minkowski,
    "hamming": _hamming,
    "kl": _kl,
    "reverse_kl": _reverse_kl,
}

def _cdist(Q, M, metric):
    """scipy's cdist, imported on first use (scipy.spatial is slow to import, and only the
    chebyshev (p = inf) and the paper_code euclidean distances use it)."""
    from scipy.spatial.distance import cdist
    return cdist(Q, M, metric)


def _l1_distances(M, Q):
    """sum_i |q_i - m_i| (B, N) on the compiled L1 kernel (scipy's cdist "cityblock" runs on one
    thread and upcasts float32)."""
    from uhn.models import kernels as _kernels
    return _kernels.l1_scores(M, Q, finite=True)     # a Similarity's inputs are validated


_PAPER_CODE: dict[str, Callable[..., Similarity]] = {
    "dot": _paper_dot,
    "euclidean": lambda: _reciprocal("euclidean", lambda M, Q: _cdist(Q, M, "sqeuclidean")),
    "manhattan": lambda: _reciprocal("manhattan", _l1_distances),
    "kl": lambda: _paper_kl(False),
    "reverse_kl": lambda: _paper_kl(True),
}

CONVENTIONS = ("standard", "paper_code")


def names(convention: str = "standard") -> list[str]:
    """Registered similarity names for a convention."""
    return list((_STANDARD if convention == "standard" else _PAPER_CODE).keys())


def differentiable_names() -> list[str]:
    """Names of the standard similarities that have a gradient (may drive the dynamics)."""
    return [n for n, f in _STANDARD.items() if f().differentiable]


def get_similarity(spec, convention: str = "standard", **params) -> Similarity:
    """Look a similarity up by name (``"minkowski"``, p=3), or pass a Similarity through."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; choose one of {CONVENTIONS}")
    table = _STANDARD if convention == "standard" else _PAPER_CODE
    return from_registry("similarity", Similarity, table, spec, params,
                         where=f" for convention {convention!r}")
