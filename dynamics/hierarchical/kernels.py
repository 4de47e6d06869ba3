"""The elementwise passes of a hierarchical network's right-hand side, fused and in place
(docs/theory.md §11): what is left of tau_a dx_a/dt = -(x_a - b_a) + drives once the synapses have
written their matrix products into the output, and the shifted exponent of a softmax layer.

    finish_layer(O, X, sl, b, tau, touched):  o <- ((o - x) + b) / tau   (touched: o holds drives)
                                              o <- ((-x) + b) / tau      (no synapse wrote o)
    shifted_scores(X, sl, beta, out) -> ok:   out <- beta x - max_row(beta x); False where a
                                              row's maximum is not finite (+inf or NaN in it,
                                              or -inf throughout): the caller then raises with
                                              the Lagrangian's own message

x = X[:, sl] is a layer's block of the packed states X (B, width) and o = O[:, sl] of the packed
output, both C-contiguous: each kernel runs row by row over 1-D contiguous rows, which vectorise
(numpy's ufuncs on the strided (B, n) views ran ~3x slower than on contiguous arrays here, and
numba loops over 2-D views of unknown strides do not vectorise). The operations are those of the
numpy sequences ``o -= x; o += b; o /= tau`` and ``X = beta x; X -= X.max(axis=1, keepdims=True)``
in their order, so the results are theirs bit for bit (no fastmath). numba, compiled on first use
and cached on disk (cache=True, as uhn.models.kernels); without numba those numpy sequences run.
"""
from __future__ import annotations

import math

import numpy as np

from uhn.models.kernels import HAVE_NUMBA, jit  # numba optional: without it the numpy paths run

#: a (1, 1) stand-in for "no bias" (the compiled kernel takes one array type)
_NO_BIAS = np.zeros((1, 1))


def _finish_loops(O, X, c0, c1, b, has_b, tau, touched):
    brow = b.shape[0] > 1
    div = tau != 1.0
    for r in range(O.shape[0]):
        o, x = O[r, c0:c1], X[r, c0:c1]     # 1-D contiguous rows: the loops vectorise
        br = b[r if brow else 0]
        if touched:
            for j in range(o.shape[0]):
                o[j] = o[j] - x[j]
        else:
            for j in range(o.shape[0]):
                o[j] = -x[j]
        if has_b:
            for j in range(o.shape[0]):
                o[j] = o[j] + br[j]
        if div:
            for j in range(o.shape[0]):
                o[j] = o[j] / tau


def _shifted_loops(X, c0, c1, beta, out):
    for r in range(X.shape[0]):
        x, s = X[r, c0:c1], out[r]
        m = -math.inf
        bad = False
        for j in range(x.shape[0]):
            y = beta * x[j]
            s[j] = y
            if y > m:
                m = y
            elif y != y:
                bad = True
        if bad or not math.isfinite(m):
            return False
        for j in range(s.shape[0]):
            s[j] = s[j] - m
    return True


def _finish_numpy(O, X, c0, c1, b, has_b, tau, touched):
    o, x = O[:, c0:c1], X[:, c0:c1]
    if touched:
        o -= x
    else:       # -x; not np.negative(x, out=o), which misreads (B, 1) strided views in numpy 2.3
        np.multiply(x, -1.0, out=o)
    if has_b:
        o += b
    if tau != 1.0:
        o /= tau


def _shifted_numpy(X, c0, c1, beta, out):
    with np.errstate(over="ignore", invalid="ignore"):
        np.multiply(X[:, c0:c1], beta, out=out)
    top = out.max(axis=1, keepdims=True)
    if not np.all(np.isfinite(top)):
        return False
    out -= top
    return True


_finish, _shifted = (jit()(_finish_loops), jit()(_shifted_loops)) if HAVE_NUMBA \
    else (_finish_numpy, _shifted_numpy)


def _packed(A, name):
    if not (isinstance(A, np.ndarray) and A.ndim == 2 and A.dtype == np.float64
            and A.flags.c_contiguous):
        raise ValueError(f"{name} must be a C-contiguous 2-D float64 array")
    return A


def finish_layer(O, X, sl: slice, b=None, tau: float = 1.0, touched: bool = True) -> None:
    """In place on the columns ``sl`` of O (B, width): o <- ((o - x) + b) / tau, or ((-x) + b) / tau
    unless ``touched``, x = X[:, sl]; ``b`` (n,), (B, n) or None (no bias); no division where
    tau = 1. O, X: C-contiguous float64 (the packed output and state)."""
    _packed(O, "the output")
    _packed(X, "the state")
    if X.shape != O.shape:
        raise ValueError(f"shape mismatch: states {X.shape}, output {O.shape}")
    c0, c1, _ = sl.indices(O.shape[1])
    if b is None:
        _finish(O, X, c0, c1, _NO_BIAS, False, float(tau), bool(touched))
        return
    b = np.ascontiguousarray(b, dtype=np.float64).reshape(-1, c1 - c0)
    if b.shape[0] not in (1, O.shape[0]):
        raise ValueError(f"shape mismatch: input of {b.shape[0]} rows for {O.shape[0]} states")
    _finish(O, X, c0, c1, b, True, float(tau), bool(touched))


def shifted_scores(X, sl: slice, beta: float, out) -> bool:
    """out (B, n) <- beta x - max_row(beta x), x = X[:, sl] (X C-contiguous float64, out a fresh
    C-contiguous (B, n)); False (``out`` then unspecified) where a row's maximum is not finite."""
    _packed(X, "the state")
    c0, c1, _ = sl.indices(X.shape[1])
    if _packed(out, "out").shape != (X.shape[0], c1 - c0):
        raise ValueError(f"shape mismatch: out {out.shape} for {(X.shape[0], c1 - c0)}")
    return bool(_shifted(X, c0, c1, float(beta), out))
