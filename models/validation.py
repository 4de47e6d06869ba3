"""Input checks shared by every public entry point: clear errors, never a silent NaN.

The checks run in the namespace of their input (numpy, torch, CuPy, array-api-strict, ...; see
models/arrays.py): ``xp=`` is the namespace the public entry point found, ``None`` finds it.
"""
from __future__ import annotations

import numbers
from typing import Union

import numpy as np

from uhn.models.arrays import (as_namespace, float_dtype, is_numpy_namespace, namespace,
    numpy_float, to_numpy)

#: what every seeded function accepts: an int seed or a numpy Generator
Seed = Union[int, np.integer, np.random.Generator]


def as_matrix(x, name: str, *, ndim_ok=(1, 2), xp=None) -> tuple:
    """Return ``x`` as a floating 2-D array of namespace ``xp`` and whether it was a single vector.

    ``xp`` is the namespace the public entry point found from its inputs (``xp=None``: numpy, for
    callers that compute in numpy only; ``x`` is converted with ``np.asarray``). float32 stays
    float32 and float64 float64, in every namespace (other namespaces also keep the device);
    integer, bool and other float arrays (float16, longdouble) become float64. Raises TypeError for non-numeric or complex
    data and ValueError naming ``name`` for wrong rank, empty arrays, NaN or inf.
    """
    if xp is not None and not is_numpy_namespace(xp):
        return _as_matrix_xp(x, name, ndim_ok, xp)
    a = np.asarray(x)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise TypeError(f"{name} must be a numeric array, got dtype {a.dtype}")
    if np.iscomplexobj(a):  # astype(float64) would silently drop the imaginary part
        raise TypeError(f"{name} must be real, got dtype {a.dtype}")
    if a.ndim not in ndim_ok:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndim_ok))} dimensions, got shape {a.shape}")
    single = a.ndim == 1
    a = numpy_float(np.atleast_2d(a))
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {a.shape})")
    check_finite(a, name)
    return a, single


def _as_matrix_xp(x, name, ndim_ok, xp):
    """as_matrix in a non-numpy namespace: the same checks through the array API standard."""
    a = as_namespace(x, xp)  # lists become arrays of xp; the caller found xp from x's library
    if xp.isdtype(a.dtype, "complex floating"):
        raise TypeError(f"{name} must be real, got dtype {a.dtype}")
    if not (xp.isdtype(a.dtype, "numeric") or a.dtype == xp.bool):
        raise TypeError(f"{name} must be a numeric array, got dtype {a.dtype}")
    if a.ndim not in ndim_ok:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndim_ok))} dimensions, got shape "
                         f"{tuple(a.shape)}")
    single = a.ndim == 1
    if single:
        a = a[None, :]
    dtype = float_dtype(xp, a.dtype)
    if a.dtype != dtype:
        a = xp.astype(a, dtype)
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(a.shape)})")
    check_finite(a, name, xp=xp)
    return a, single


def _sum_finite(a: np.ndarray) -> bool:
    """sum_i a_i is finite (one pass, no temporaries, unlike isfinite and any), which implies that
    every a_i is: a NaN makes the sum NaN, an inf makes it inf or NaN. False does not mean a bad
    entry (finite entries near the float maximum overflow the sum): the caller then looks entry by
    entry. numpy's own sum, not a BLAS dot: OpenBLAS threads left spinning after a dot take the
    cores from the compiled kernel that runs next."""
    with np.errstate(over="ignore", invalid="ignore"):  # also under a caller's errstate(raise)
        return bool(np.isfinite(np.add.reduce(a, axis=None)))


def all_finite(a, xp=None) -> bool:
    """Every entry of ``a`` is finite: for a numpy float array one sum first (no temporaries,
    :func:`_sum_finite`), entry by entry only when the sum is not finite; xp.isfinite elsewhere."""
    if xp is None:
        xp = namespace(a)
    if is_numpy_namespace(xp):
        if isinstance(a, np.ndarray) and a.dtype.kind == "f" and _sum_finite(a):
            return True
        return bool(np.isfinite(a).all())
    return bool(xp.all(xp.isfinite(a)))


def check_finite(a, name: str, *, xp=None) -> None:
    """Raise ValueError if ``a`` holds NaN or inf, saying how many and where the first is."""
    if xp is None:
        xp = namespace(a)
    if all_finite(a, xp):
        return
    bad = ~np.isfinite(to_numpy(a))  # the error path only: locate the first bad entry on the host
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(f"{name} contains {int(bad.sum())} NaN/inf value(s), first at index {first}")


def check_scores(S, who: str, *, xp=None) -> None:
    """Raise ValueError if a (B, N) score matrix handed to ``who`` holds NaN (or inf).

    One isfinite over the scores: O(B N), never a (B, N, D) pass. A separation fed NaN would
    otherwise return a plausible one-hot (argmax stops at the NaN) or pass the NaN through.
    """
    if xp is None:
        xp = namespace(S)
    if all_finite(S, xp):
        return
    S = to_numpy(S)
    bad = ~np.isfinite(S)
    b, mu = (int(i) for i in np.argwhere(bad)[0])
    raise ValueError(f"{who} got {int(bad.sum())} NaN/inf similarity score(s), first for query {b}, "
                     f"memory {mu} (value {S[b, mu]}); check the similarity and its parameters")


def real_param(value, name: str, *, low: float | None = None, low_open: bool = False,
               finite: bool = True) -> float:
    """``value`` as a float, or a ValueError/TypeError naming ``name``.

    Refuses NaN always, inf when ``finite``, and values below ``low`` (or equal to it when
    ``low_open``): the one place every similarity, separation and model checks a real parameter.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    v = float(value)
    if np.isnan(v) or (finite and np.isinf(v)):
        raise ValueError(f"{name} must be a finite number, got {v}")
    if low is not None and (v < low or (low_open and v == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low:g}, got {v:g}")
    return v


def int_param(value, name: str, *, low: int) -> int:
    """``value`` as an int >= ``low``; refuses non-integral values (2.7) instead of truncating them."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, (int, np.integer)):
        v = int(value)
    elif isinstance(value, (float, np.floating)) and float(value).is_integer():
        v = int(value)
    else:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if v < low:
        raise ValueError(f"{name} must be >= {low}, got {v}")
    return v


def require_positive(value, name: str, what: str, *, finite: bool = True) -> float:
    """``float(value)`` if it is a real number > 0 (and finite, unless ``finite=False`` lets +inf
    through); else ValueError (TypeError for a non-number) naming the parameter ``name``: one
    check for every time constant, time span and step size of the integrators and backends."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    x = float(value)
    if not (x > 0 and (np.isfinite(x) or not finite)):
        raise ValueError(f"{name} must be a positive {'finite ' if finite else ''}{what}, got {value}")
    return x


def require_count(value, name: str, minimum: int = 1) -> int:
    """``int(value)`` if it is an integer >= ``minimum``; else TypeError (not an integer) or
    ValueError naming the parameter ``name``: sample counts, step counts, evaluation budgets."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def check_same_width(M, Q, mname="memories", qname="queries") -> None:
    """Raise ValueError unless memories (N, D) and queries (B, D) share D."""
    if M.shape[1] != Q.shape[1]:
        raise ValueError(
            f"shape mismatch: {qname} have {Q.shape[1]} features but {mname} have {M.shape[1]} "
            f"({qname} shape {tuple(Q.shape)}, {mname} shape {tuple(M.shape)})")


def binary_coding(a, *, xp=None) -> str | None:
    """Return 'binary' for {0,1} data, 'bipolar' for {-1,1} data, else None."""
    if xp is None:
        xp = namespace(a)
    if bool(xp.all((a == 0) | (a == 1))):
        return "binary"
    if bool(xp.all((a == -1) | (a == 1))):
        return "bipolar"
    return None


def rng(seed: Seed) -> np.random.Generator:
    """A numpy Generator from an int seed, or the Generator itself; TypeError otherwise."""
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return np.random.default_rng(int(seed))
    raise TypeError(f"seed must be an int or a numpy Generator, got {type(seed).__name__}")


def from_registry(kind: str, cls: type, table: dict, spec, params: dict, where: str = ""):
    """Build ``table[spec](**params)``, or pass an instance of ``cls`` through unchanged.

    Shared by the similarity and separation registries: unknown names list the choices and bad
    parameters name the function they were given to.
    """
    if isinstance(spec, cls):
        if params:
            raise ValueError(f"parameters given with a {cls.__name__} object; set them when building it")
        return spec
    if spec not in table:
        raise ValueError(f"unknown {kind} {spec!r}{where}; choose one of {sorted(table)}")
    try:
        return table[spec](**params)
    except TypeError as err:
        raise TypeError(f"{kind} {spec!r}: bad parameters {params}: {err}") from None
