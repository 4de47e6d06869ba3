"""Similarity functions sim(M, Q): "larger = more similar", one registry for every consumer.

Each :class:`Similarity` maps memories ``M`` (N, D) and queries ``Q`` (B, D) to a score matrix
(B, N) without building a (B, N, D) array. Differentiable ones also provide the contraction the
continuous-time dynamics needs (DESIGN.md section 2),

    vjp(M, G, F)[b] = sum_mu F[b, mu] * dS_mu/dg (G[b])        (B, D),

which is the only derivative of S that the right-hand side, the energy and its time derivative
use. Single-shot retrieval (models/), iterated retrieval and the ODE dynamics (dynamics/) all take
their similarities from :func:`get_similarity`.

Two conventions:

* ``"standard"`` (default): the clean negative-distance forms of DESIGN.md section 1.
* ``"paper_code"``: what the official code of Millidge et al. computes, kept so published curves
  can be matched: reciprocal distances 1/sum|q-m| and 1/sum (q-m)^2 (squared, not the euclidean
  norm), 1/KL in the official form (below), and a "dot" that is the dot product of sum-normalised
  vectors. The score
  normalisation S / sum(S) the official code applies afterwards lives in
  :class:`models.memory.Memory` (``convention="paper_code"``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
from scipy.spatial.distance import cdist

from ._validate import as_matrix, binary_coding, check_same_width, from_registry, real_param

#: small constant that keeps logarithms of zero-valued pixels finite in the KL similarities
KL_EPS = 1e-4


@dataclass(frozen=True)
class Similarity:
    """A similarity S = sim(M, Q) (B, N) with, when it is differentiable, its contraction vjp.

    Attributes
    ----------
    name : registry name, with parameters, e.g. ``"minkowski(p=3)"``.
    score : ``score(M, Q) -> (B, N)`` on validated float64 arrays.
    vjp : ``vjp(M, G, F) -> (B, D)`` = sum_mu F_mu dS_mu/dg, or None when S has no gradient.
        Both return a fresh array the caller may overwrite (the dynamics do, in place).
    smooth : False where the gradient is a subgradient (a kink at a memory or at zero).
    binary_only : True for hamming, which is defined on {0,1} or {-1,1} data only.
    nonnegative_only : True for kl / reverse_kl, which read their inputs as distributions after
        sum-normalisation: the dynamics need non-negative feature rates g = dL_v/dv for them.
    """

    name: str
    score: Callable[[np.ndarray, np.ndarray], np.ndarray]
    vjp: Optional[Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = None
    smooth: bool = True
    binary_only: bool = False
    nonnegative_only: bool = False
    params: dict = field(default_factory=dict)

    @property
    def differentiable(self) -> bool:
        return self.vjp is not None

    def __call__(self, M, Q) -> np.ndarray:
        """S[b, mu] = sim(M_mu, Q_b); a 1-D query gives a 1-D (N,) result."""
        M, _ = as_matrix(M, "memories", ndim_ok=(2,))
        Q, single = as_matrix(Q, "queries")
        check_same_width(M, Q)
        S = self.checked_score(M, Q)
        return S[0] if single else S

    def checked_score(self, M: np.ndarray, Q: np.ndarray) -> np.ndarray:
        """``score(M, Q)`` on validated float64 arrays, refusing a non-finite result.

        Finite inputs can still give inf/NaN scores when an intermediate overflows (a dot product
        of 1e200-sized vectors); that raises OverflowError naming the similarity instead of letting
        max "retrieve" memory 0. One isfinite over the (B, N) scores; binary-only scores (hamming)
        validate their inputs themselves."""
        with np.errstate(over="ignore", invalid="ignore"):
            S = self.score(M, Q)
        bad = ~np.isfinite(S)
        if bad.any():
            raise OverflowError(
                f"similarity {self.name!r} gave {int(bad.sum())} NaN/inf score(s) for finite inputs, an "
                f"overflow of float64 (max |memories| = {np.abs(M).max():.3g}, max |queries| = "
                f"{np.abs(Q).max():.3g}); rescale the data")
        return S

    def grad_contract(self, M, G, F) -> np.ndarray:
        """sum_mu F[b, mu] dS_mu/dg evaluated at G[b]: the (B, D) term of the feature dynamics."""
        if self.vjp is None:
            raise ValueError(
                f"similarity {self.name!r} has no gradient, so it cannot drive the continuous-time "
                f"dynamics; use a differentiable similarity (see models.similarity.differentiable_names())")
        return self.vjp(np.asarray(M, float), np.atleast_2d(G), np.atleast_2d(F))


def check_binary(M: np.ndarray, Q: np.ndarray, name: str) -> str:
    """Raise ValueError unless M and Q are both {0,1} or both {-1,1}; return the coding."""
    cm, cq = binary_coding(M), binary_coding(Q)
    if cm is None or cq is None:
        which = "memories" if cm is None else "queries"
        raise ValueError(f"{name} similarity needs binary {{0,1}} or bipolar {{-1,1}} data, "
                         f"but the {which} hold other values")
    if cm != cq:
        # an all-ones array is both binary and bipolar (binary_coding says "binary"): the other
        # array decides the coding, else the binary formula would score bipolar data
        if np.all(M == 1):
            return cq
        if np.all(Q == 1):
            return cm
        raise ValueError(f"{name} similarity: memories are {cm} but queries are {cq}; use one coding")
    return cm


# ----------------------------------------------------------------------------------------------
# standard convention
# ----------------------------------------------------------------------------------------------

def _power_of_two_scale(M, Q) -> float:
    """2^(e-1) with max |entry| of M and Q = f 2^e, 1/2 <= f < 1: dividing by it is exact and brings
    every entry into [-2, 2] (2^e itself would overflow for entries near the float64 maximum)."""
    big = max(float(np.abs(M).max()), float(np.abs(Q).max()))
    return float(np.ldexp(1.0, int(np.frexp(big)[1]) - 1)) if big > 0 else 1.0


def _overflow_safe(raw, M, Q, eps, name):
    """raw(M, Q, eps) for a distance score homogeneous of degree 1 in (M, Q, eps), i.e.
    raw(M, Q, eps) = s raw(M/s, Q/s, eps/s). Computed directly; only where that overflows (squares
    or p-th powers of entries ~1e155 and up) or may have underflowed (a zero score with every
    entry below 2^-300, where squares of 1e-200 vanish) again on inputs divided by a power of two s
    (exact), then multiplied back. The checks are O(B N) on the scores; the O((N + B) D) scale only
    runs when they fire. A distance beyond float64's range itself raises OverflowError."""
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        S = raw(M, Q, eps)
    if np.isfinite(S).all():
        if not (S >= 0).any():  # a distance score is <= 0, and 0 only at a match or on underflow
            return S
        s = _power_of_two_scale(M, Q)
        if s >= 2.0 ** -300:
            return S  # exact matches, not underflow
    else:
        s = _power_of_two_scale(M, Q)
    with np.errstate(over="ignore", invalid="ignore"):
        S = raw(M / s, Q / s, eps / s)
        S *= s
    if not np.isfinite(S).all():
        raise OverflowError(f"{name} distance between some query and memory exceeds the float64 range "
                            f"(entries up to {s:.3g}); rescale the data")
    return S


def _sq_dist(M, Q):
    """|M_mu - Q_b|^2 (B, N) through one GEMM, clipped at 0 against round-off.

    Built in place in the GEMM's output: one (B, N) array, no temporaries of that size."""
    d2 = Q @ M.T
    d2 *= -2.0
    d2 += np.einsum("ij,ij->i", Q, Q)[:, None]
    d2 += np.einsum("ij,ij->i", M, M)[None, :]
    return np.maximum(d2, 0.0, out=d2)


def _negate(d):
    """-d computed in place (d is a fresh array owned by the caller)."""
    return np.negative(d, out=d)


def _dot():
    """S_mu = M_mu . q;  dS_mu/dg = M_mu."""
    return Similarity("dot", lambda M, Q: Q @ M.T, lambda M, G, F: F @ M)


def _unit_rows(A, name):
    """(A_i / |A_i|, |A_i|). A row whose squares overflow (entries ~1e155 and up) or underflow
    (~1e-155 and below) is first divided by its largest |entry|, so its direction stays exact."""
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

    def score(M, Q):
        return _unit_rows(Q, "queries")[0] @ _unit_rows(M, "memories")[0].T

    def vjp(M, G, F):
        Mh, _ = _unit_rows(M, "memories")
        Gh, gn = _unit_rows(G, "states")
        S = Gh @ Mh.T
        return (F @ Mh) / gn - (F * S).sum(1, keepdims=True) * Gh / gn

    return Similarity("cosine", score, vjp)


def _squared_euclidean():
    """S_mu = -|M_mu - q|^2;  dS_mu/dg = 2 (M_mu - g)."""
    return Similarity("squared_euclidean", lambda M, Q: _negate(_sq_dist(M, Q)),
                      lambda M, G, F: 2.0 * (F @ M - F.sum(1, keepdims=True) * G))


def _euclidean(eps: float = 0.0):
    """S_mu = eps - sqrt(|M_mu - q|^2 + eps^2)  (eps = 0: -|M_mu - q|_2);
    dS_mu/dg = (M_mu - g) / sqrt(|M_mu - g|^2 + eps^2), taken as 0 at a memory when eps = 0."""
    eps = real_param(eps, "euclidean smoothing eps", low=0.0)

    def raw(M, Q, e):
        d = _sq_dist(M, Q)  # fresh (B, N) array: finish in place
        if e:
            d += e * e
        np.sqrt(d, out=d)
        d = _negate(d)
        if e:
            d += e
        return d

    def score(M, Q):
        return _overflow_safe(raw, M, Q, eps, "euclidean")

    def vjp(M, G, F):
        r = np.sqrt(_sq_dist(M, G) + eps * eps)
        W = np.divide(F, r, out=np.zeros_like(F), where=r > 0)
        return W @ M - W.sum(1, keepdims=True) * G

    name = "euclidean" if eps == 0 else f"euclidean(eps={eps:g})"
    return Similarity(name, score, vjp, smooth=eps > 0, params={"eps": eps})


def _chunked_pairwise_vjp(M, G, F, elementwise, chunk_bytes=64 * 2**20):
    """sum_mu F[b, mu] * elementwise(G[b] - M_mu) over chunks of queries (memory-bounded)."""
    B, D = G.shape
    N = M.shape[0]
    out = np.empty((B, D))
    step = max(1, int(chunk_bytes // (8 * N * D)))
    for s in range(0, B, step):
        diff = G[s:s + step, None, :] - M[None, :, :]
        out[s:s + step] = np.einsum("bn,bnd->bd", F[s:s + step], elementwise(diff, s, step))
    return out


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

    def absx(x, e=eps):
        return np.sqrt(x * x + e * e) - e if e else np.abs(x)

    def dabsx(x):
        return x / np.sqrt(x * x + eps * eps) if eps else np.sign(x)

    def raw(M, Q, e):
        if e == 0:
            return _negate(cdist(Q, M, "cityblock" if p == 1 else "minkowski", **({} if p == 1 else {"p": p})))
        out = np.empty((Q.shape[0], M.shape[0]))
        for b in range(Q.shape[0]):  # smoothed form: one (N, D) block per query
            s = absx(Q[b] - M, e).__pow__(p).sum(1)
            out[b] = -s ** (1.0 / p)
        return out

    def score(M, Q):
        return _overflow_safe(raw, M, Q, eps, name_)

    def vjp(M, G, F):
        if p == 1:
            return -_chunked_pairwise_vjp(M, G, F, lambda d, s, k: dabsx(d))
        dist = -score(M, G)  # (B, N)
        scale = np.divide(1.0, dist ** (p - 1), out=np.zeros_like(dist), where=dist > 0)
        Fs = F * scale
        return -_chunked_pairwise_vjp(
            M, G, Fs, lambda d, s, k: absx(d) ** (p - 1) * dabsx(d))

    if name is None:
        name = f"minkowski(p={p:g})"
    if eps:
        name = f"{name}(eps={eps:g})" if "(" not in name else name[:-1] + f", eps={eps:g})"
    # p = inf (max norm): the p-power gradient formula is inf/inf, so offer no gradient rather than NaN
    return Similarity(name, score, vjp if np.isfinite(p) else None, smooth=eps > 0,
                      params={"p": p, "eps": eps})


def _manhattan(eps: float = 0.0):
    """S_mu = -|M_mu - q|_1 (eps > 0: sum sqrt((M_mu,i - q_i)^2 + eps^2) - eps);
    dS_mu/dg = sign(M_mu - g) (subgradient, sign(0) = 0) or its smoothed form."""
    return _minkowski(1.0, eps, name="manhattan")


def _hamming():
    """S_mu = -(number of entries where M_mu and q differ); binary or bipolar data only.

    Computed by GEMM: bipolar d = (D - M.q)/2, binary d = |m| + |q| - 2 m.q. No gradient.
    """

    def score(M, Q):
        coding = check_binary(M, Q, "hamming")
        if coding == "bipolar":
            return -(M.shape[1] - Q @ M.T) / 2.0
        return -(Q.sum(1)[:, None] + M.sum(1)[None, :] - 2.0 * (Q @ M.T))

    return Similarity("hamming", score, None, smooth=False, binary_only=True)


def _normalise_rows(A, name, eps):
    if np.any(A < 0):
        raise ValueError(f"KL similarities need non-negative {name} (they are read as "
                         f"distributions after sum-normalisation); got min {A.min():.3g}")
    A = A + eps
    s = A.sum(1, keepdims=True)
    return A / s, s


def _kl(eps: float = KL_EPS):
    """S_mu = -KL(m^ || q^) = sum_i m^_i (log q^_i - log m^_i), x^ = (x + eps)/sum(x + eps);
    dS_mu/dg_j = m^_mu,j/(g_j + eps) - 1/sum(g + eps)."""

    def score(M, Q):
        Mh, _ = _normalise_rows(M, "memories", eps)
        Qh, _ = _normalise_rows(Q, "queries", eps)
        return np.log(Qh) @ Mh.T - (Mh * np.log(Mh)).sum(1)[None, :]

    def vjp(M, G, F):
        Mh, _ = _normalise_rows(M, "memories", eps)
        _normalise_rows(G, "states", eps)  # refuses negative rates (use a positive L_v, e.g. softplus)
        Gp = G + eps
        return (F @ Mh) / Gp - F.sum(1, keepdims=True) / Gp.sum(1, keepdims=True)

    return Similarity("kl", score, vjp, nonnegative_only=True, params={"eps": eps})


def _reverse_kl(eps: float = KL_EPS):
    """S_mu = -KL(q^ || m^) = sum_i q^_i (log m^_i - log q^_i);
    dS_mu/dg_j = (log m^_mu,j - log q^_j - S_mu) / sum(g + eps)."""

    def score(M, Q):
        Mh, _ = _normalise_rows(M, "memories", eps)
        Qh, _ = _normalise_rows(Q, "queries", eps)
        return Qh @ np.log(Mh).T - (Qh * np.log(Qh)).sum(1)[:, None]

    def vjp(M, G, F):
        Mh, _ = _normalise_rows(M, "memories", eps)
        Gh, s = _normalise_rows(G, "states", eps)
        S = Gh @ np.log(Mh).T - (Gh * np.log(Gh)).sum(1)[:, None]
        return (F @ np.log(Mh) - F.sum(1, keepdims=True) * np.log(Gh)
                - (F * S).sum(1, keepdims=True)) / s

    return Similarity("reverse_kl", score, vjp, nonnegative_only=True, params={"eps": eps})


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

    def score(M, Q):
        sm, sq = M.sum(1), Q.sum(1)
        if np.any(sm == 0) or np.any(sq == 0):
            raise ValueError("paper_code dot similarity divides by the pixel sum, which is 0 for an "
                             "all-zero image (the official code returns NaN here)")
        return (Q / sq[:, None]) @ (M / sm[:, None]).T

    return Similarity("dot[paper_code]", score, None)


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

_PAPER_CODE: dict[str, Callable[..., Similarity]] = {
    "dot": _paper_dot,
    "euclidean": lambda: _reciprocal("euclidean", lambda M, Q: cdist(Q, M, "sqeuclidean")),
    "manhattan": lambda: _reciprocal("manhattan", lambda M, Q: cdist(Q, M, "cityblock")),
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
