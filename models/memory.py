"""Single-shot associative memory (docs/theory.md §1 Single-shot retrieval) and its named instances.

:class:`Memory`, whose docstring states the formula, composes a similarity (uhn.models.similarity), a separation (uhn.models.separation) and a
projection P: P = M is autoassociative, any other (N, O) value matrix is heteroassociative.
Every method takes one query (D,) or a batch (B, D); a batch is one vectorised computation and
gives exactly what looping over its rows gives.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import numpy as np

from uhn.models.arrays import (CHUNK_BYTES, as_namespace, device, is_numpy_namespace, library_name,
    namespace, rows_per_chunk, to_numpy)
from uhn.models.validation import all_finite, as_matrix, check_same_width, int_param, real_param
from uhn.models.separation import Separation, get_separation, top_k_indices
from uhn.models.similarity import (CONVENTIONS, Similarity, bind_private, check_binary,
    common_float, get_similarity)


#: a positive ``tol`` of :meth:`Memory.iterate` is at least this many ulps (eps of the state dtype)
#: of the row's largest |z|: one retrieval's round-off moves a state at its fixed point by a few
#: ulps (up to 5 seen in float32), so a smaller tol could never be met
ITERATE_RESOLUTION_ULPS = 16


def sign(x, *, xp=None):
    """Bipolar sign with sign(0) = +1, so outputs stay in {-1, 1} (in the namespace of x)."""
    if xp is None:
        xp = namespace(x)
    if is_numpy_namespace(xp):
        return np.where(x >= 0, 1.0, -1.0)
    return xp.astype(x >= 0, x.dtype) * 2.0 - 1.0


def _majority(z, W, xp=None):
    """Sparse distributed memory on {0,1} data: bit on where more than half the selected memories
    vote on, z > sum(W) / 2."""
    if xp is None:
        xp = namespace(z, W)
    return xp.astype(z > 0.5 * xp.sum(W, axis=1, keepdims=True), z.dtype)


OUTPUTS: dict[str, Callable[..., Any]] = {
    # each takes (z, W, xp=None): the projected output and the separation weights that produced it
    "sign": lambda z, W, xp=None: sign(z, xp=xp),
    "majority": _majority,
}


@dataclass(frozen=True)
class IterationResult:
    """Outcome of iterating z_{t+1} = retrieve(z_t) from a batch of queries (for a single 1-D
    query: states (D,), and steps and converged as scalars). Arrays of the queries' namespace."""

    states: Any      #: (B, D) final states
    steps: Any       #: (B,) iterations each query took to stop changing
    converged: Any   #: (B,) bool, True where the state reached a fixed point


class Memory:
    """Universal Hopfield network z = P^T sep(sim(M, q)) (Millidge et al. 2022, eq. 1; docs/theory.md
    §1): a similarity scores each memory against the query, a separation sharpens the scores
    into weights w, and the projection returns z = sum_mu w_mu P_mu.

    Computes in the array namespace and on the device of ``memories`` (numpy, torch, CuPy, ...;
    see docs/gpu.md): M and P are stored as arrays of that library, queries must be arrays of the
    same library (or lists), and results come back as such arrays. float32 memories are stored,
    and retrieved, in float32 (half the memory traffic; about 1e-7 relative error per operation);
    every other dtype is stored as float64. A query of a wider dtype than the memories computes in
    the wider one.

    Parameters
    ----------
    memories : (N, D) array, one stored pattern (key) per row.
    values : (N, O) array or None; None stores P = M (autoassociative).
    similarity : name or :class:`Similarity` (see ``uhn.models.similarity.names()``).
    separation : name or :class:`Separation` (see ``uhn.models.separation.names()``).
    output : None, ``"sign"``, ``"majority"`` or a callable ``f(z, W)`` applied to P^T w.
    convention : ``"standard"`` or ``"paper_code"``. The latter reproduces the official code:
        reciprocal-distance similarities, scores normalised to sum 1 before the separation and the
        weights normalised to sum 1 after it (numpy only).
    chunk_bytes : :meth:`retrieve` handles large query batches in chunks whose (b, N) score and
        weight matrices stay below this many bytes (the result is the same as in one piece).
    """

    def __init__(self, memories, values=None, similarity: Union[str, Similarity] = "dot",
                 separation: Union[str, Separation] = "identity",
                 output: Union[None, str, Callable] = None, convention: str = "standard",
                 chunk_bytes: int = 4 * CHUNK_BYTES):
        if convention not in CONVENTIONS:
            raise ValueError(f"unknown convention {convention!r}; choose one of {CONVENTIONS}")
        self.chunk_bytes = int_param(chunk_bytes, "Memory chunk_bytes", low=1)
        xp = self.xp = namespace(memories, values, names=("memories", "values"))
        self.M, _ = as_matrix(memories, "memories", ndim_ok=(2,), xp=xp)
        if values is None:
            self.P = self.M
        else:
            self.P, _ = as_matrix(values, "values", ndim_ok=(2,), xp=xp)
            if self.P.shape[0] != self.M.shape[0]:
                raise ValueError(f"shape mismatch: {self.M.shape[0]} memories but {self.P.shape[0]} "
                                 f"values; heteroassociative storage pairs row mu of each")
            self.M, self.P = common_float(xp, self.M, self.P)
        self.device = device(self.M)
        self.convention = convention
        self.similarity = get_similarity(similarity, convention=convention)
        self.separation = get_separation(separation)
        if self.similarity.nonpositive and self.separation.zero_at_nonpositive:
            # docs/theory.md 1.1 and 1.3: every score <= 0, every weight sep(S) = 0, so z = 0
            raise ValueError(
                f"separation {self.separation.name} weights every score <= 0 with 0, and every "
                f"{self.similarity.name!r} score is <= 0 (a negated distance): this memory would "
                f"return z = 0 for every query. Use a similarity with positive scores (dot, cosine, "
                f"or convention='paper_code', whose reciprocal distances are > 0), or a "
                f"shift-invariant separation (softmax, max, k_max)")
        self.similarity.namespace(self.M)   # numpy-only similarities / separations refuse other
        self.separation.namespace(self.M)   # namespaces here, not at the first query
        # per-memory work (normalised rows, logarithms, norms) done once, on a private copy
        self.similarity, self.M, self.P = bind_private(self.similarity, self.M, self.P, xp)
        if isinstance(output, str):
            if output not in OUTPUTS:
                raise ValueError(f"unknown output {output!r}; choose one of {sorted(OUTPUTS)} or a callable")
            builtin = OUTPUTS[output]
            self._output = lambda z, W: builtin(z, W, xp=xp)
        else:
            self._output = output
        self.output = output
        if self.similarity.binary_only:
            # fail at construction, not at the first query (queries are checked by the score itself)
            check_binary(self.M, self.M[:1, :], self.similarity.name, xp=xp)

    # ------------------------------------------------------------------ properties
    @property
    def n_memories(self) -> int:
        return self.M.shape[0]

    @property
    def autoassociative(self) -> bool:
        return self.P is self.M

    def __repr__(self) -> str:
        kind = "auto" if self.autoassociative else "hetero"
        where = "" if is_numpy_namespace(self.xp) else f", {library_name(self.xp)} on {self.device}"
        return (f"Memory(N={self.M.shape[0]}, D={self.M.shape[1]}, O={self.P.shape[1]}, {kind}, "
                f"similarity={self.similarity.name}, separation={self.separation.name}, "
                f"output={self.output!r}, convention={self.convention!r}{where})")

    # ------------------------------------------------------------------ pipeline
    def _queries(self, Q):
        """Validated (B, D) queries in this memory's namespace and dtype, and whether Q was 1-D.
        An array of another library raises TypeError, one on another device ValueError."""
        xp = self.xp
        if namespace(Q) is not xp and hasattr(Q, "shape"):
            raise TypeError(f"queries are {library_name(namespace(Q))} arrays but this Memory stores "
                            f"{library_name(xp)} arrays; convert the queries (or build the Memory "
                            f"from {library_name(namespace(Q))} memories)")
        if not is_numpy_namespace(xp):
            if not hasattr(Q, "shape"):
                Q = xp.asarray(Q, device=self.device)
            elif device(Q) != self.device:
                raise ValueError(f"queries are on device {device(Q)} but the memories on {self.device}; "
                                 f"move them to one device")
        Q, single = as_matrix(Q, "queries", xp=xp)
        check_same_width(self.M, Q)
        if Q.dtype != self.M.dtype:
            Q = xp.astype(Q, xp.result_type(Q, self.M))
        return Q, single

    def _MP(self, dtype):
        """(M, P) in ``dtype``: as stored, or promoted for a query of a wider float dtype."""
        if self.M.dtype == dtype:
            return self.M, self.P
        M = self.xp.astype(self.M, dtype)
        return M, (M if self.autoassociative else self.xp.astype(self.P, dtype))

    def _check_gram(self, gram, M, Q):
        """``gram`` as Q @ M.T of these validated queries and memories, or ValueError: this
        similarity must have a Gram form, the array must be this namespace's, of shape (B, N) and
        Q's dtype, and finite; and two entries, [0, N-1] and [B-1, 0], must equal the dot products
        of their rows within the rounding bound of a D-term sum (a spot check: it catches a
        product of other arrays or a transposed one, not every corrupted entry)."""
        xp, name = self.xp, self.similarity.name
        if not self.similarity.gram:
            raise ValueError(f"similarity {name!r} is not computed from Q @ M.T, so it cannot use "
                             f"gram=; retrieve without it")
        if namespace(gram) is not xp:
            raise TypeError(f"gram is a {library_name(namespace(gram))} array; this Memory computes "
                            f"in {library_name(xp)}")
        B, N, D = Q.shape[0], M.shape[0], M.shape[1]
        if tuple(gram.shape) != (B, N):
            raise ValueError(f"gram must be Q @ M.T of shape (B, N) = ({B}, {N}), got {tuple(gram.shape)}")
        if gram.dtype != Q.dtype:
            raise ValueError(f"gram has dtype {gram.dtype}; the queries and memories compute in {Q.dtype}")
        if not all_finite(gram, xp):
            raise ValueError("gram contains NaN/inf values; it must be Q @ M.T of finite arrays")
        info = np.finfo(to_numpy(gram[:1, :1]).dtype)
        gamma = D * float(info.eps) / (1 - D * float(info.eps))     # Higham's gamma_D
        floor = 2 * D * float(info.smallest_subnormal)             # products that underflowed
        for b, mu in {(0, N - 1), (B - 1, 0)}:
            terms = Q[b, :] * M[mu, :]
            want, scale = float(xp.sum(terms)), float(xp.sum(xp.abs(terms)))
            got = float(gram[b, mu])
            if abs(got - want) > 2 * gamma * scale + floor:    # each sum within gamma_D sum|terms|
                raise ValueError(f"gram is not Q @ M.T of these queries and memories: entry [{b}, {mu}] "
                                 f"is {got:.17g}, the product of their rows {want:.17g}")
        return gram

    def _scores(self, Q, gram=None):
        M, _ = self._MP(Q.dtype)
        if gram is not None:
            gram = self._check_gram(gram, M, Q)
        # finite, or OverflowError naming it
        S = self.similarity.checked_score(M, Q, xp=self.xp, gram=gram)
        if self.convention == "paper_code":
            S = _normalise_sum(S, "similarity scores", self.xp)
        return S

    def similarities(self, Q):
        """S = sim(M, q): (N,) for one query, (B, N) for a batch."""
        Q, single = self._queries(Q)
        S = self._scores(Q)
        return S[0, ...] if single else S

    def _weights(self, S):
        xp = self.xp
        W = self.separation.checked(S, xp=xp)  # NaN/inf scores raise ValueError naming the separation
        if self.convention == "paper_code":
            W = _normalise_sum(W, "separated scores", xp)
        if not bool(xp.all(xp.isfinite(W))):
            raise FloatingPointError(f"separation {self.separation.name} produced NaN/inf weights")
        return W

    def weights(self, Q):
        """The separation weights w of the class formula: (N,) or (B, N)."""
        Q, single = self._queries(Q)
        W = self._weights(self._scores(Q))
        return W[0, ...] if single else W

    def retrieve(self, Q, *, gram=None):
        """z of the class formula, then the output function: (O,) for one query, (B, O) for a batch.

        A batch whose (B, N) scores would exceed ``chunk_bytes`` runs in chunks of rows (each row
        is computed on its own either way; chunking changes the result by round-off at most, where
        BLAS sums a one-row product in another order).

        ``gram``: the product Q @ M.T (B, N) (a 1-D query: (N,)) when the caller already has it,
        for a similarity computed from it (``similarity.gram``: dot, euclidean,
        squared_euclidean, the paper's normalised dot), which then skips its own GEMM: retrieving
        the same queries from memories of the same M under several of them (the lines of a
        capacity curve) costs one product instead of one each. Read, never written; checked for
        shape, dtype, finiteness and at two entries (ValueError). The result equals retrieval
        without it (bit for bit where the product is the same; the paper's dot divides the
        product instead of its normalised operands: equal up to round-off)."""
        Q, single = self._queries(Q)
        B = Q.shape[0]
        if gram is not None:
            gram = as_namespace(gram, self.xp, like=self.M)
            if single and gram.ndim == 1:
                gram = gram[None, :]
        step = rows_per_chunk(3 * self.M.shape[0] * 8, self.chunk_bytes)  # S, W and a temporary
        if B <= step:
            z = self._retrieve(Q, gram)
        else:
            parts = [self._retrieve(Q[s:min(s + step, B), :],
                                    None if gram is None else gram[s:min(s + step, B), ...])
                     for s in range(0, B, step)]
            z = np.concatenate(parts) if is_numpy_namespace(self.xp) else self.xp.concat(parts, axis=0)
        return z[0, ...] if single else z

    def _retrieve(self, Q, gram=None):
        """:meth:`retrieve` of validated (b, D) queries in one piece (``gram``: their Q @ M.T)."""
        xp = self.xp
        S = self._scores(Q, gram)
        _, P = self._MP(Q.dtype)
        k = self.separation.top_k
        if k is not None and (self.convention == "standard" or k == 1):
            # one-hot / uniform top-k weights: gather k rows of P instead of a dense (B,N)x(N,O) product;
            # top_k_indices refuses k > N as the dense path does. paper_code normalises the weights
            # to sum 1, which leaves one-hot weights (k = 1) as they are, so it gathers too: the
            # product's sum of one 1 P_mu,i and exact zeros is P_mu,i (for k > 1, sum_k 1/k need not
            # be 1 in floating point, so it takes the product)
            idx = top_k_indices(S, k, xp=xp)
            if is_numpy_namespace(xp):
                z = P[idx[:, 0]] if k == 1 else P[idx].mean(axis=1)  # fancy indexing copies
            elif k == 1:
                z = xp.take(P, idx[:, 0], axis=0)
            else:
                rows = xp.take(P, xp.reshape(idx, (-1,)), axis=0)
                z = xp.mean(xp.reshape(rows, (idx.shape[0], k, P.shape[1])), axis=1)
            W = None
        else:
            W = self._weights(S)
            z = W @ P
        if self._output is not None:
            if W is None:
                W = self._weights(S)
            z = self._output(z, W)
        return z

    __call__ = retrieve

    def iterate(self, Q, max_steps: int = 100, tol: float = 0.0) -> IterationResult:
        """Iterate z_{t+1} = retrieve(z_t) from z_0 = q until max|z_{t+1} - z_t| <= tol, at most
        ``max_steps`` (an integer >= 1) times; ``tol`` must be finite and >= 0 (a negative tol could
        never be met). ``tol = 0`` asks for an exact repetition of the state.

        A positive ``tol`` below the resolution of the state dtype, ITERATE_RESOLUTION_ULPS eps
        max_i |z_{t+1, i}| per query (eps = 1.2e-7 in float32, 2.2e-16 in float64), is raised to
        it, with a RuntimeWarning when that stops a query: a retrieval's own round-off moves a
        state by a few ulps, so a tol of 1e-12 on float32 states of size 1 (1e5 times below one
        ulp) would never be met.

        Autoassociative memories only (the output must live in the query space).
        """
        max_steps = int_param(max_steps, "iterate max_steps", low=1)
        tol = real_param(tol, "iterate tol", low=0.0)
        if self.P.shape[1] != self.M.shape[1]:
            raise ValueError("iterate needs outputs in the query space (O == D); this memory maps "
                             f"{self.M.shape[1]} features to {self.P.shape[1]}")
        Z, single = self._queries(Q)
        if is_numpy_namespace(self.xp):
            Z, steps, converged = self._iterate_numpy(Z, max_steps, tol)
        else:
            Z, steps, converged = self._iterate_xp(Z, max_steps, tol)
        if single:
            return IterationResult(Z[0, ...], steps[0], converged[0])
        return IterationResult(Z, steps, converged)

    def _iterate_numpy(self, Z, max_steps, tol):
        Z = Z.copy()  # never write into the caller's array
        steps = np.zeros(Z.shape[0], dtype=int)
        active = np.ones(Z.shape[0], dtype=bool)
        limit = _Resolution(tol, np)
        for _ in range(max_steps):
            if not active.any():
                break
            new = np.atleast_2d(self.retrieve(Z[active]))
            moved = limit.moved(np.abs(new - Z[active]).max(axis=1), new)
            Z[active] = new
            idx = np.flatnonzero(active)
            steps[idx] += 1
            active[idx[~moved]] = False
        return Z, steps, ~active

    def _iterate_xp(self, Z, max_steps, tol):
        """The same loop in the array API: the still-moving rows are gathered (take), retrieved and
        merged back (where over an index map), so converged rows stay frozen."""
        xp, dev = self.xp, self.device
        B = Z.shape[0]
        steps = xp.zeros(B, dtype=xp.int64, device=dev)
        active = xp.ones(B, dtype=xp.bool, device=dev)
        limit = _Resolution(tol, xp)
        for _ in range(max_steps):
            idx = xp.nonzero(active)[0]
            if idx.shape[0] == 0:
                break
            old = xp.take(Z, idx, axis=0)
            new = self._retrieve(old)
            moved = limit.moved(xp.max(xp.abs(new - old), axis=1), new)
            # slot[b] = position of row b among the active rows (any value where inactive)
            slot = xp.cumulative_sum(xp.astype(active, xp.int64)) - 1
            slot = xp.where(active, slot, 0)
            Z = xp.where(active[:, None], xp.take(new, slot, axis=0), Z)
            steps = steps + xp.astype(active, xp.int64)
            active = xp.where(active, xp.take(moved, slot, axis=0), active)
        return Z, steps, ~active


class _Resolution:
    """The stopping test of :meth:`Memory.iterate`: ``moved(move, Z)`` is True for the rows whose
    largest change ``move`` (b,) exceeds ``tol``, or, for a positive tol below it,
    ITERATE_RESOLUTION_ULPS eps max_i |Z_bi| of the new states Z (b, D); one RuntimeWarning per
    call when that resolution is what stops a row."""

    def __init__(self, tol: float, xp):
        self.tol, self.xp, self.warned = tol, xp, False

    def moved(self, move, Z):
        xp, tol = self.xp, self.tol
        if tol == 0:
            return move > tol
        eps = float(xp.finfo(Z.dtype).eps)
        floor = ITERATE_RESOLUTION_ULPS * eps * xp.max(xp.abs(Z), axis=1)
        raised = (move > tol) & (move <= floor)
        if not self.warned and bool(xp.any(raised)):
            self.warned = True
            top = float(xp.max(xp.where(raised, floor, xp.zeros_like(floor))))
            hint = "" if Z.dtype == xp.float64 else " (float64 resolves a tighter tol)"
            warnings.warn(f"iterate: tol={tol:g} is below what {Z.dtype} resolves for these states "
                          f"({ITERATE_RESOLUTION_ULPS} eps max|z| = {top:.3g}, eps = {eps:.3g}): a "
                          f"retrieval's round-off alone moves a state by a few ulps, so the tol is "
                          f"raised to that resolution per query{hint}", RuntimeWarning, stacklevel=4)
        return (move > tol) & ~raised


def _normalise_sum(A, what: str, xp):
    s = xp.sum(A, axis=1, keepdims=True)
    if bool(xp.any(s == 0)) or not bool(xp.all(xp.isfinite(s))):
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
        xp = self.xp
        if not bool(xp.all(xp.abs(self.M) == 1.0)):
            M = to_numpy(self.M)
            bad = np.argwhere(np.abs(M) != 1.0)[0]
            raise ValueError(f"classical_hopfield needs bipolar {{-1, 1}} memories, but memories"
                             f"[{bad[0]}, {bad[1]}] = {M[bad[0], bad[1]]:g}; map {{0, 1}} data "
                             f"with 2 x - 1")
        W = self.M.T @ self.M
        if zero_diagonal:
            if is_numpy_namespace(xp):
                np.fill_diagonal(W, 0.0)
            else:
                W = xp.where(xp.eye(W.shape[0], dtype=W.dtype, device=self.device) == 1, 0.0, W)
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
        xp = self.xp
        S, single = self._queries(Q)
        S = sign(S, xp=xp)
        rng = np.random.default_rng(seed)
        B, D = S.shape
        steps = xp.zeros(B, dtype=xp.int64, device=self.device)
        converged = xp.zeros(B, dtype=xp.bool, device=self.device)
        for sweep in range(max_sweeps):
            before = xp.asarray(S, copy=True)
            if mode == "sync":
                S = sign(S @ self.W, xp=xp)
            else:
                for i in rng.permutation(D).tolist():  # vectorised over the batch, sequential over neurons
                    S[:, i] = sign(S @ self.W[:, i], xp=xp)
            changed = xp.any(S != before, axis=1)
            steps = steps + xp.astype(~converged, xp.int64)
            converged = converged | ~changed
            if bool(xp.all(converged)):
                break
        res = IterationResult(S, steps, converged)
        return IterationResult(S[0, ...], steps[0], converged[0]) if single else res


def classical_hopfield(memories, zero_diagonal: bool = True) -> ClassicalHopfield:
    """HN = dot + identity + sign output (bipolar memories)."""
    return ClassicalHopfield(memories, zero_diagonal=zero_diagonal)


def sparse_distributed_memory(memories, values=None, radius: float = 0.0) -> Memory:
    """SDM = hamming + threshold: every memory within Hamming distance ``radius`` of the query
    votes (threshold separation with theta = -radius); output is the majority bit ({0,1} data)
    or the sign ({-1,1} data). ``radius`` must be finite and >= 0."""
    radius = real_param(radius, "sparse_distributed_memory radius", low=0.0)
    # the output function acts on the retrieved values, so their coding picks it (not the keys')
    V = memories if values is None else values
    xp = namespace(V)
    bipolar = bool(xp.any(as_namespace(V, xp) < 0))
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
