"""The one place for array-namespace helpers (the array API standard through array-api-compat).

models/ computes in the namespace and on the device of its inputs: numpy (the default, with its
compiled fast paths: the numba L1 / Lp kernels, np.einsum, in-place ``out=`` arithmetic), torch
(CPU or CUDA), CuPy, or any array-API-conforming library (array-api-strict in the tests). The
namespace is found once, at a public entry point (:func:`namespace`), and handed down as ``xp=`` so
helpers never re-inspect their arguments; numpy-only calls sit behind ``if is_numpy_namespace(xp):
...`` with a spec-only version beside them. Conversion to numpy (error messages, bookkeeping) goes
through :func:`to_numpy` only. See docs/gpu.md.
"""
from __future__ import annotations

import math

import numpy as np

try:
    import array_api_compat as _compat
except ImportError:  # a numpy-only install: numpy inputs work, other libraries are refused by namespace()
    _compat = None

#: numpy's namespace: numpy itself from 2.1 on (it follows the standard: astype, isdtype, clip(min=),
#: argsort(stable=)), array-api-compat's wrapper of it before that
NUMPY = (np if _compat is None or np.lib.NumpyVersion(np.__version__) >= "2.1.0"
         else _compat.array_namespace(np.empty(0)))

#: temporaries of the chunked pairwise (B, N, D) computations stay below this many bytes
CHUNK_BYTES = 64 * 2**20


def _is_array(x) -> bool:
    if isinstance(x, np.ndarray):
        return True
    if isinstance(x, (np.generic, bool, int, float, complex)):
        return False
    return hasattr(x, "__array_namespace__") if _compat is None else _compat.is_array_api_obj(x)


def namespace(*arrays, names: tuple[str, ...] | None = None):
    """The array namespace shared by ``arrays`` (non-arrays, e.g. lists and None, are ignored).

    numpy arrays (and inputs that hold no array at all) give :data:`NUMPY`, the ``numpy`` module
    itself, so the default path pays nothing; others give array-api-compat's namespace (``array_api_compat.torch``,
    ``cupy``, ``array_api_strict``). Arrays of two different libraries raise TypeError naming them
    (``names`` labels the arguments in that message)."""
    found = [(i, x) for i, x in enumerate(arrays) if _is_array(x)]
    if not found:
        return NUMPY
    kinds = {}
    for i, x in found:
        kinds.setdefault(_library(x), i)
    if len(kinds) > 1:
        label = (lambda i: names[i]) if names else (lambda i: f"argument {i}")
        what = ", ".join(f"{label(i)} are {lib} arrays" for lib, i in kinds.items())
        raise TypeError(f"inputs come from different array libraries ({what}); convert them to one "
                        f"library (and device) first")
    if isinstance(found[0][1], np.ndarray):
        return NUMPY
    if _compat is None:
        raise TypeError(f"{_library(found[0][1])} arrays need the array-api-compat package "
                        f"(pip install array-api-compat); without it models/ computes in numpy only")
    return _compat.array_namespace(*(x for _, x in found))


def _library(x) -> str:
    """The top-level module name of an array's library ('numpy', 'torch', 'cupy', ...)."""
    return type(x).__module__.split(".")[0]


def is_numpy_namespace(xp) -> bool:
    """True for numpy itself and for array-api-compat's numpy wrapper: the fast paths apply."""
    return xp is np or (_compat is not None and _compat.is_numpy_namespace(xp))


def device(x):
    """The device an array lives on ('cpu' for numpy)."""
    return "cpu" if _compat is None else _compat.device(x)


def library_name(xp) -> str:
    """A short readable name of a namespace for messages ('numpy', 'torch', 'array_api_strict')."""
    return "numpy" if is_numpy_namespace(xp) else xp.__name__.replace("array_api_compat.", "")


def float_dtype(xp, dtype):
    """``dtype`` when it is a real floating dtype, else float64 (integers and bools compute in
    float64, as numpy's path always does)."""
    return dtype if xp.isdtype(dtype, "real floating") else xp.float64


def numpy_float(a) -> np.ndarray:
    """``a`` as a numpy array of the dtype models/ computes in: float32 stays float32 (end to end,
    at half the memory traffic), every other dtype (integers, bools, float16, longdouble) becomes
    float64. No copy when ``a`` already is float32 or float64."""
    a = np.asarray(a)
    return a.astype(np.float32 if a.dtype == np.float32 else np.float64, copy=False)


def exp_max(xp, dtype) -> float:
    """The largest argument exp takes without overflowing ``dtype``: log(finfo(dtype).max)."""
    return math.log(float(xp.finfo(dtype).max))


def errstate(xp, **kwargs):
    """``np.errstate(**kwargs)``: numpy's floating-point warnings, also raised by namespaces that
    compute through numpy (array-api-strict); the others do not warn, and every result is checked
    with isfinite all the same."""
    return np.errstate(**kwargs)


def to_numpy(x) -> np.ndarray:
    """The one boundary from any namespace to numpy: a host copy (or view) of ``x``.

    torch: ``detach().cpu().numpy()``; CuPy: ``get()``; anything else through DLPack or
    ``np.asarray``."""
    if isinstance(x, np.ndarray) or _compat is None:
        return np.asarray(x)
    if _compat.is_torch_array(x):
        return x.detach().cpu().numpy()
    if _compat.is_cupy_array(x):
        return x.get()
    try:
        return np.from_dlpack(x)
    except (TypeError, AttributeError, RuntimeError, BufferError):
        return np.asarray(x)


def as_namespace(x, xp, *, like=None):
    """``x`` (an array of ``xp`` or any array-like such as a list) as an array of ``xp`` on the
    device of ``like``. An array of another library raises TypeError."""
    if _is_array(x):
        return x
    if like is None:
        return xp.asarray(x)
    return xp.asarray(x, device=device(like))


def softmax(X, xp, *, overwrite: bool = False):
    """Row-wise softmax exp(X - max X) / sum exp(X - max X) (max-shifted: finite for any finite X).

    numpy path in place on ``X`` when ``overwrite`` (the caller's fresh array), one pass each."""
    if is_numpy_namespace(xp):
        if not overwrite:
            X = X.copy()
        X -= X.max(axis=1, keepdims=True)
        np.exp(X, out=X)
        X /= X.sum(axis=1, keepdims=True)
        return X
    E = xp.exp(X - xp.max(X, axis=1, keepdims=True))
    return E / xp.sum(E, axis=1, keepdims=True)


def rowdot(a, b, xp):
    """Row-wise dot products sum_k a_bk b_bk, (B,): np.einsum on numpy (one pass, no temporary),
    sum(a * b, axis=1) elsewhere."""
    if is_numpy_namespace(xp):
        return np.einsum("bk,bk->b", a, b)
    return xp.sum(a * b, axis=1)


def abs_rowdot(a, b) -> np.ndarray:
    """sum_k |a_bk| |b_bk| per row of two (B, K) numpy arrays: the scale of the round-off of the
    row-wise dot product a_b . b_b (the energy checks' tolerances are multiples of it)."""
    return np.einsum("bk,bk->b", np.abs(a), np.abs(b))


def array_namespace(x):
    """:func:`namespace` of one array, with numpy arrays answered first: for the functions that
    run at every right-hand-side call (Lagrangians), where a full lookup would cost more than a
    small batch's arithmetic."""
    return np if type(x) is np.ndarray else namespace(x)


def logsumexp(X, xp):
    """Row-wise log sum_j exp(X_j) = m + log sum_j exp(X_j - m), m = max_j X_j (max-shifted)."""
    m = xp.max(X, axis=1, keepdims=True)
    return (m + xp.log(xp.sum(xp.exp(X - m), axis=1, keepdims=True)))[:, 0]


def rows_per_chunk(bytes_per_row: int, budget: int = CHUNK_BYTES) -> int:
    """How many rows of ``bytes_per_row`` bytes fit a memory budget (at least 1)."""
    return max(1, int(budget // max(1, bytes_per_row)))
