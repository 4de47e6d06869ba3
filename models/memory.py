"""Single-shot associative memory z = P^T sep(sim(M, q)) and its named instances.

:class:`Memory` composes a similarity (models.similarity), a separation (models.separation) and a
projection P: P = M is autoassociative, any other (N, O) value matrix is heteroassociative.
Every method takes one query (D,) or a batch (B, D); a batch is one vectorised computation and
gives exactly what looping over its rows gives.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np

from ._validate import as_matrix, check_same_width, int_param, real_param
from .separation import Separation, get_separation, top_k_indices
from .similarity import CONVENTIONS, Similarity, check_binary, get_similarity


def sign(x: np.ndarray) -> np.ndarray:
    """Bipolar sign with sign(0) = +1, so outputs stay in {-1, 1}."""
    return np.where(x >= 0, 1.0, -1.0)


OUTPUTS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    # each takes (z, W): the projected output and the separation weights that produced it
    "sign": lambda z, W: sign(z),
    # sparse distributed memory on {0,1} data: bit on where more than half the selected memories vote on
    "majority": lambda z, W: (z > 0.5 * W.sum(1, keepdims=True)).astype(np.float64),
}


@dataclass(frozen=True)
class IterationResult:
    """Outcome of iterating z_{t+1} = retrieve(z_t) from a batch of queries (for a single 1-D
    query: states (D,), and steps and converged as scalars)."""

    states: np.ndarray      #: (B, D) final states
    steps: np.ndarray       #: (B,) iterations each query took to stop changing
    converged: np.ndarray   #: (B,) bool, True where the state reached a fixed point


class Memory:
    """Universal Hopfield network z = P^T sep(sim(M, q)) (Millidge et al. 2022, eq. 1).

    Parameters
    ----------
    memories : (N, D) array, one stored pattern (key) per row.
    values : (N, O) array or None; None stores P = M (autoassociative).
    similarity : name or :class:`Similarity` (see ``models.similarity.names()``).
    separation : name or :class:`Separation` (see ``models.separation.names()``).
    output : None, ``"sign"``, ``"majority"`` or a callable ``f(z, W)`` applied to P^T w.
    convention : ``"standard"`` or ``"paper_code"``. The latter reproduces the official code:
        reciprocal-distance similarities, scores normalised to sum 1 before the separation and the
        weights normalised to sum 1 after it.
    """

    def __init__(self, memories, values=None, similarity: Union[str, Similarity] = "dot",
                 separation: Union[str, Separation] = "identity",
                 output: Union[None, str, Callable] = None, convention: str = "standard"):
        if convention not in CONVENTIONS:
            raise ValueError(f"unknown convention {convention!r}; choose one of {CONVENTIONS}")
        self.M, _ = as_matrix(memories, "memories", ndim_ok=(2,))
        if values is None:
            self.P = self.M
        else:
            self.P, _ = as_matrix(values, "values", ndim_ok=(2,))
            if self.P.shape[0] != self.M.shape[0]:
                raise ValueError(f"shape mismatch: {self.M.shape[0]} memories but {self.P.shape[0]} "
                                 f"values; heteroassociative storage pairs row mu of each")
        self.convention = convention
        self.similarity = get_similarity(similarity, convention=convention)
        self.separation = get_separation(separation)
        if isinstance(output, str):
            if output not in OUTPUTS:
                raise ValueError(f"unknown output {output!r}; choose one of {sorted(OUTPUTS)} or a callable")
            self._output = OUTPUTS[output]
        else:
            self._output = output
        self.output = output
        if self.similarity.binary_only:
            # fail at construction, not at the first query (queries are checked by the score itself)
            check_binary(self.M, self.M[:1], self.similarity.name)

    # ------------------------------------------------------------------ properties
    @property
    def n_memories(self) -> int:
        return self.M.shape[0]

    @property
    def autoassociative(self) -> bool:
        return self.P is self.M

    def __repr__(self) -> str:
        kind = "auto" if self.autoassociative else "hetero"
        return (f"Memory(N={self.M.shape[0]}, D={self.M.shape[1]}, O={self.P.shape[1]}, {kind}, "
                f"similarity={self.similarity.name}, separation={self.separation.name}, "
                f"output={self.output!r}, convention={self.convention!r})")

    # ------------------------------------------------------------------ pipeline
    def _queries(self, Q):
        Q, single = as_matrix(Q, "queries")
        check_same_width(self.M, Q)
        return Q, single

    def _scores(self, Q: np.ndarray) -> np.ndarray:
        S = self.similarity.checked_score(self.M, Q)  # finite, or OverflowError naming the similarity
        if self.convention == "paper_code":
            S = _normalise_sum(S, "similarity scores")
        return S

    def similarities(self, Q) -> np.ndarray:
        """S = sim(M, q): (N,) for one query, (B, N) for a batch."""
        Q, single = self._queries(Q)
        S = self._scores(Q)
        return S[0] if single else S

    def _weights(self, S: np.ndarray) -> np.ndarray:
        W = self.separation(S)  # NaN/inf scores raise ValueError naming the separation
        if self.convention == "paper_code":
            W = _normalise_sum(W, "separated scores")
        if not np.all(np.isfinite(W)):
            raise FloatingPointError(f"separation {self.separation.name} produced NaN/inf weights")
        return W

    def weights(self, Q) -> np.ndarray:
        """w = sep(sim(M, q)): (N,) or (B, N)."""
        Q, single = self._queries(Q)
        W = self._weights(self._scores(Q))
        return W[0] if single else W

    def retrieve(self, Q) -> np.ndarray:
        """z = P^T sep(sim(M, q)), then the output function: (O,) for one query, (B, O) for a batch."""
        Q, single = self._queries(Q)
        S = self._scores(Q)
        k = self.separation.top_k
        if k is not None and self.convention == "standard":
            # one-hot / uniform top-k weights: gather k rows of P instead of a dense (B,N)x(N,O) product;
            # top_k_indices refuses k > N as the dense path does
            idx = top_k_indices(S, k)
            z = self.P[idx[:, 0]] if k == 1 else self.P[idx].mean(axis=1)  # fancy indexing copies
            W = None
        else:
            W = self._weights(S)
            z = W @ self.P
        if self._output is not None:
            if W is None:
                W = self._weights(S)
            z = self._output(z, W)
        return z[0] if single else z

    __call__ = retrieve

    def iterate(self, Q, max_steps: int = 100, tol: float = 0.0) -> IterationResult:
        """Iterate z_{t+1} = retrieve(z_t) from z_0 = q until max|z_{t+1} - z_t| <= tol, at most
        ``max_steps`` (an integer >= 1) times; ``tol`` must be finite and >= 0 (a negative tol could
        never be met).

        Autoassociative memories only (the output must live in the query space).
        """
        max_steps = int_param(max_steps, "iterate max_steps", low=1)
        tol = real_param(tol, "iterate tol", low=0.0)
        if self.P.shape[1] != self.M.shape[1]:
            raise ValueError("iterate needs outputs in the query space (O == D); this memory maps "
                             f"{self.M.shape[1]} features to {self.P.shape[1]}")
        Z, single = self._queries(Q)
        Z = Z.copy()  # never write into the caller's array
        steps = np.zeros(Z.shape[0], dtype=int)
        active = np.ones(Z.shape[0], dtype=bool)
        for _ in range(max_steps):
            if not active.any():
                break
            new = np.atleast_2d(self.retrieve(Z[active]))
            moved = np.abs(new - Z[active]).max(axis=1) > tol
            Z[active] = new
            idx = np.flatnonzero(active)
            steps[idx] += 1
            active[idx[~moved]] = False
        res = IterationResult(Z, steps, ~active)
        if single:
            return IterationResult(Z[0], steps[0], res.converged[0])
        return res


def _normalise_sum(A: np.ndarray, what: str) -> np.ndarray:
    s = A.sum(axis=1, keepdims=True)
    if np.any(s == 0) or not np.all(np.isfinite(s)):
        raise FloatingPointError(f"paper_code convention: {what} sum to 0 or inf for some query, so "
                                 f"normalising them by their sum is undefined")
    return A / s


# ---------------------------------------------------------------------- named instances
class ClassicalHopfield(Memory):
    """Classical Hopfield network: dot similarity, identity separation, sign output,
    z = sign(M^T M q), plus the iterated update with weights W = M^T M (zero diagonal).
    Memories must be bipolar {-1, 1} (the sign output can only reproduce such patterns)."""

    def __init__(self, memories, zero_diagonal: bool = True):
        super().__init__(memories, similarity="dot", separation="identity", output="sign")
        if not np.all(np.abs(self.M) == 1.0):
            bad = np.argwhere(np.abs(self.M) != 1.0)[0]
            raise ValueError(f"classical_hopfield needs bipolar {{-1, 1}} memories, but memories"
                             f"[{bad[0]}, {bad[1]}] = {self.M[bad[0], bad[1]]:g}; map {{0, 1}} data "
                             f"with 2 x - 1")
        W = self.M.T @ self.M
        if zero_diagonal:
            np.fill_diagonal(W, 0.0)
        self.W = W

    def update(self, Q, max_sweeps: int = 50, mode: str = "async",
               seed: Optional[int] = 0) -> IterationResult:
        """Iterate s_i <- sign(sum_j W_ij s_j) to a fixed point.

        mode ``"async"`` updates one neuron at a time in a random order per sweep (seeded; the
        energy -s^T W s / 2 never increases); ``"sync"`` updates all at once.
        """
        if mode not in ("async", "sync"):
            raise ValueError(f"mode must be 'async' or 'sync', got {mode!r}")
        max_sweeps = int_param(max_sweeps, "update max_sweeps", low=1)
        S, single = self._queries(Q)
        S = sign(S)
        rng = np.random.default_rng(seed)
        B, D = S.shape
        steps = np.zeros(B, dtype=int)
        converged = np.zeros(B, dtype=bool)
        for sweep in range(max_sweeps):
            before = S.copy()
            if mode == "sync":
                S = sign(S @ self.W)
            else:
                for i in rng.permutation(D):  # vectorised over the batch, sequential over neurons
                    S[:, i] = sign(S @ self.W[:, i])
            changed = np.any(S != before, axis=1)
            steps[~converged] += 1
            converged |= ~changed
            if converged.all():
                break
        res = IterationResult(S, steps, converged)
        return IterationResult(S[0], steps[0], converged[0]) if single else res


def classical_hopfield(memories, zero_diagonal: bool = True) -> ClassicalHopfield:
    """HN = dot + identity + sign output (bipolar memories)."""
    return ClassicalHopfield(memories, zero_diagonal=zero_diagonal)


def sparse_distributed_memory(memories, values=None, radius: float = 0.0) -> Memory:
    """SDM = hamming + threshold: every memory within Hamming distance ``radius`` of the query
    votes (threshold separation with theta = -radius); output is the majority bit ({0,1} data)
    or the sign ({-1,1} data). ``radius`` must be finite and >= 0."""
    radius = real_param(radius, "sparse_distributed_memory radius", low=0.0)
    # the output function acts on the retrieved values, so their coding picks it (not the keys')
    V = np.asarray(memories if values is None else values)
    bipolar = np.any(V < 0)
    return Memory(memories, values, similarity="hamming",
                  separation=get_separation("threshold", theta=-radius),
                  output="sign" if bipolar else "majority")


def dense_associative_memory(memories, values=None, n: float = 3, rectified: bool = True,
                             output: Optional[str] = "sign", convention: str = "standard") -> Memory:
    """DAM (Krotov & Hopfield 2016) = dot + polynomial(n); sign output for bipolar patterns.
    ``convention="paper_code"`` normalises scores and weights to sum 1 (see :class:`Memory`)."""
    return Memory(memories, values, similarity="dot",
                  separation=get_separation("polynomial", n=n, rectified=rectified), output=output,
                  convention=convention)


def modern_hopfield(memories, values=None, beta: float = 1.0) -> Memory:
    """MCHN (Ramsauer et al. 2020) = dot + softmax(beta): z = P^T softmax(beta M q)."""
    return Memory(memories, values, similarity="dot", separation=get_separation("softmax", beta=beta))
