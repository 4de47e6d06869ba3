"""Latent-space memories: single-shot retrieval (docs/theory.md section 1) on encoded patterns.

An encoder maps a pattern x (D,) to a code c = enc(x) (k,) and a decoder maps codes back,
x' = dec(c). :class:`LatentMemory` stores the codes C = enc(M) of the memories, scores the code of
each query against them with any similarity and separation, and decodes the retrieved code:

    z = dec( C^T sep(sim(C, enc(q))) ).

Encoders: :class:`PCAEncoder` (a linear PCA fitted on the stored set, numpy SVD) and
:class:`Encoder` (any user encode / decode pair). numpy arrays only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np

from uhn.models.memory import OUTPUTS, Memory
from uhn.models.validation import as_matrix, check_finite, check_same_width, int_param


def _rows(X, name: str, width: int, what: str):
    """X as a validated float (B, width) array (refusing NaN/inf and a wrong width) and whether
    it was one vector."""
    A, single = as_matrix(X, name)
    if A.shape[1] != width:
        raise ValueError(f"shape mismatch: {name} have {A.shape[1]} columns but this encoder's "
                         f"{what} have {width} (shape {tuple(A.shape)})")
    return A, single


@dataclass(frozen=True, eq=False)
class PCA:
    """A fitted linear code with orthonormal components V (k, D) and mean m (D,):

        enc(x) = V (x - m),    dec(c) = V^T c + m,

    so dec(enc(x)) is the orthogonal projection of x onto the affine span m + rowspace(V), and
    for k = D with ``centered=False`` enc is a rotation (every distance and dot product kept).
    Made by :meth:`fit` (or :meth:`PCAEncoder.fit`).

    Attributes: ``mean`` (D,) (zeros when not centred), ``components`` (k, D), ``singular_values``
    (k,) of the (centred) fitted data, ``total_variance`` (the sum of all its squared singular
    values), ``rank`` (of the fitted data), ``centered``.
    """

    mean: np.ndarray
    components: np.ndarray
    singular_values: np.ndarray
    total_variance: float
    rank: int
    centered: bool = True

    @property
    def k(self) -> int:
        """Code width."""
        return self.components.shape[0]

    @property
    def D(self) -> int:
        """Pattern width."""
        return self.components.shape[1]

    @property
    def explained_variance_ratio(self) -> float:
        """Fraction of the fitted data's (centred) sum of squares the k components keep."""
        if self.total_variance == 0:
            return 1.0
        return float((self.singular_values ** 2).sum() / self.total_variance)

    @classmethod
    def fit(cls, X, k: Optional[int] = None, center: bool = True) -> "PCA":
        """The first k principal axes of the rows of X (n, D), from the thin SVD of X - mean
        (sign fixed so each component's largest-|.| entry is positive). ``k=None``: all ``rank``
        components. k must be 1 <= k <= rank, the numerical rank of the (centred) data (numpy's
        matrix_rank tolerance s_max max(n, D) eps): further axes would be arbitrary directions
        of zero variance."""
        X, _ = as_matrix(X, "PCA data", ndim_ok=(2,))
        mean = X.mean(axis=0) if center else np.zeros(X.shape[1])
        _, s, Vt = np.linalg.svd(X - mean, full_matrices=False)
        tol = (s[0] if s.size else 0.0) * max(X.shape) * np.finfo(float).eps
        rank = int(np.count_nonzero(s > tol))
        if k is None:
            if rank == 0:
                raise ValueError(f"PCA data of shape {X.shape} has rank 0 "
                                 f"({'all rows equal' if center else 'all zero'}): no axis to keep")
            k = rank
        k = int_param(k, "PCA k", low=1)
        if k > rank:
            raise ValueError(f"PCA k = {k} exceeds the rank {rank} of the "
                             f"{'centred ' if center else ''}data of shape {X.shape}: only {rank} "
                             f"principal axes have non-zero variance (k <= {rank})")
        V = Vt[:k]
        flip = np.sign(V[np.arange(k), np.argmax(np.abs(V), axis=1)])
        return cls(mean, V * flip[:, None], s[:k].copy(), float((s ** 2).sum()), rank, bool(center))

    def truncate(self, k: int) -> "PCA":
        """The same code keeping its first k components (1 <= k <= self.k)."""
        k = int_param(k, "PCA k", low=1)
        if k > self.k:
            raise ValueError(f"PCA k = {k} exceeds the {self.k} components fitted (rank {self.rank})")
        return PCA(self.mean, self.components[:k], self.singular_values[:k], self.total_variance,
                   self.rank, self.centered)

    def encode(self, X):
        """c = V (x - m): (k,) for one pattern, (B, k) for a batch."""
        A, single = _rows(X, "patterns", self.D, "components")
        C = (A - self.mean) @ self.components.T
        return C[0] if single else C

    def decode(self, C):
        """x' = V^T c + m: (D,) for one code, (B, D) for a batch."""
        A, single = _rows(C, "codes", self.k, "codes")
        X = A @ self.components + self.mean
        return X[0] if single else X

    def __repr__(self) -> str:
        return (f"PCA(k={self.k}, D={self.D}, rank={self.rank}, centered={self.centered}, "
                f"explained={self.explained_variance_ratio:.3f})")


@dataclass(frozen=True)
class PCAEncoder:
    """An unfitted PCA code of width k: :meth:`fit` on the stored set gives the :class:`PCA`
    (``LatentMemory`` fits it on its memories)."""

    k: int
    center: bool = True

    def __post_init__(self):
        object.__setattr__(self, "k", int_param(self.k, "PCAEncoder k", low=1))

    def fit(self, X) -> PCA:
        return PCA.fit(X, self.k, self.center)


@dataclass(frozen=True)
class Encoder:
    """A user encode / decode pair: ``encode(X (B, D)) -> (B, k)``, ``decode(C (B, k)) -> (B, D')``
    (any functions of 2-D numpy arrays). Their outputs are checked: 2-D, one row per input row,
    finite (ValueError naming the function otherwise)."""

    encode_fn: Callable[[np.ndarray], np.ndarray]
    decode_fn: Callable[[np.ndarray], np.ndarray]
    name: str = "encoder"

    def __post_init__(self):
        for f in ("encode_fn", "decode_fn"):
            if not callable(getattr(self, f)):
                raise TypeError(f"Encoder {f} must be callable, got {type(getattr(self, f)).__name__}")

    def _apply(self, fn, X, what):
        A, single = as_matrix(X, f"{self.name} {what} input")
        out = np.asarray(fn(A))
        if out.ndim != 2 or out.shape[0] != A.shape[0]:
            raise ValueError(f"{self.name} {what} must return a (B, width) array for {A.shape[0]} "
                             f"rows, got shape {out.shape}")
        out = out.astype(np.float64, copy=False)
        check_finite(out, f"{self.name} {what} output")
        return out[0] if single else out

    def encode(self, X):
        return self._apply(self.encode_fn, X, "encode")

    def decode(self, C):
        return self._apply(self.decode_fn, C, "decode")


class LatentMemory:
    """A universal Hopfield network on codes (module docstring): with C = enc(M),

        z = dec( C^T sep(sim(C, enc(q))) ),

    retrieved by a :class:`uhn.models.memory.Memory` over C with any similarity, separation and
    convention. With ``values`` (N, O) the memory is heteroassociative: z = P^T sep(sim(C,
    enc(q))), not decoded. ``output`` (``"sign"``, ``"majority"`` or ``f(z, W)``) is applied to
    the decoded z. A linear decoder (PCA) maps the weighted code sum to the same weighted sum of
    the projected memories when the weights sum to 1 (max, k_max, softmax).

    ``encoder``: a fitted code (``encode`` and ``decode``: :class:`PCA`, :class:`Encoder`) or an
    unfitted one (``fit`` only: :class:`PCAEncoder`), fitted here on the memories. numpy only.
    """

    def __init__(self, memories, encoder, values=None, similarity="dot", separation="identity",
                 output: Union[None, str, Callable] = None, convention: str = "standard",
                 **memory_kwargs):
        M, _ = as_matrix(memories, "memories", ndim_ok=(2,))
        if not (hasattr(encoder, "encode") and hasattr(encoder, "decode")):
            if not hasattr(encoder, "fit"):
                raise TypeError(f"encoder must have encode and decode (a fitted code) or fit (e.g. "
                                f"PCAEncoder(k)), got {type(encoder).__name__}")
            encoder = encoder.fit(M)
        self.encoder = encoder
        self.D = M.shape[1]
        C = np.asarray(encoder.encode(M))
        if C.ndim != 2 or C.shape[0] != M.shape[0]:
            raise ValueError(f"encoder.encode must map the {M.shape[0]} memories to (N, k) codes, "
                             f"got shape {C.shape}")
        self.codes = C
        if isinstance(output, str) and output not in OUTPUTS:
            raise ValueError(f"unknown output {output!r}; choose one of {sorted(OUTPUTS)} or a callable")
        self.output = output
        self.decodes = values is None
        self.memory = Memory(C, values, similarity=similarity, separation=separation,
                             output=None if self.decodes else output, convention=convention,
                             **memory_kwargs)

    @property
    def n_memories(self) -> int:
        return self.memory.n_memories

    def __repr__(self) -> str:
        return f"LatentMemory(encoder={self.encoder!r}, D={self.D}, memory={self.memory!r})"

    def encode(self, Q):
        """enc(q) of validated queries: (k,) or (B, k). Queries must have the memories' D columns
        and be finite (ValueError)."""
        A, single = as_matrix(Q, "queries")
        check_same_width(np.empty((1, self.D)), A)
        C = np.asarray(self.encoder.encode(A))
        return C[0] if single else C

    def similarities(self, Q):
        """sim(C, enc(q)): (N,) or (B, N)."""
        return self.memory.similarities(self.encode(Q))

    def weights(self, Q):
        """sep(sim(C, enc(q))): (N,) or (B, N)."""
        return self.memory.weights(self.encode(Q))

    def retrieve_latent(self, Q):
        """The retrieved code C^T sep(sim(C, enc(q))) before decoding (or P^T w with values)."""
        return self.memory.retrieve(self.encode(Q))

    def retrieve(self, Q):
        """z of the class formula: (D,) or (B, D) decoded (or (O,) / (B, O) with values)."""
        codes = self.encode(Q)
        z = self.memory.retrieve(codes)
        if not self.decodes:
            return z
        single = np.ndim(z) == 1
        z = np.asarray(self.encoder.decode(z))
        if self.output is not None:
            W = self.memory.weights(codes)
            fn = OUTPUTS[self.output] if isinstance(self.output, str) else self.output
            Z2, W2 = np.atleast_2d(z), np.atleast_2d(W)
            z = np.asarray(fn(Z2, W2))
            z = z[0] if single else z
        return z
