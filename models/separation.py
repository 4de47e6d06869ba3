"""Separation functions sep(S): sharpen the (B, N) similarity scores into memory weights
(docs/theory.md §1.3 Separations; each factory below states its own formula).

Each :class:`Separation` acts row-wise on S (one row per query). The record ``lagrangian`` names
the convex Lagrangian L_h whose gradient is the separation (so it may serve as the memory-neuron
activation f = dL_h/dh of the continuous-time dynamics), or is None with ``no_energy`` saying why
no valid energy exists (docs/theory.md §2 and §3; log and max have none).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from uhn.models.arrays import (exp_max, float_dtype, is_numpy_namespace, library_name, namespace,
    numpy_float, softmax)
from uhn.models.validation import check_scores, from_registry, int_param, real_param

#: exp overflows float64 above this argument (other dtypes: uhn.models.arrays.exp_max)
EXP_MAX = np.log(np.finfo(np.float64).max)


@dataclass(frozen=True)
class Separation:
    """A row-wise separation function w = sep(S).

    Attributes
    ----------
    name : registry name with parameters, e.g. ``"softmax(beta=10)"``.
    fn : ``fn(S) -> W`` on (B, N) floating scores; with ``array_api`` it also takes ``xp=`` (the
        array namespace) and computes in any array-API namespace, else numpy only.
    top_k : for max / k_max, the number of memories kept; retrieval then gathers rows of P
        instead of a dense product.
    lagrangian : name of the convex L_h with dL_h/dh = sep (see uhn.dynamics.lagrangians), or None.
    no_energy : why there is no convex Lagrangian, when ``lagrangian`` is None.
    zero_at_nonpositive : True where every weight is 0 for a score <= 0 (the rectified
        polynomial; threshold with theta > 0): on a similarity whose scores are all <= 0
        (:attr:`uhn.models.similarity.Similarity.nonpositive`) it weights nothing.
    """

    name: str
    fn: Callable[[np.ndarray], np.ndarray]
    top_k: Optional[int] = None
    lagrangian: Optional[str] = None
    no_energy: str = ""
    zero_at_nonpositive: bool = False
    params: dict = field(default_factory=dict)
    array_api: bool = False

    def namespace(self, S):
        """The namespace of the scores; TypeError for a non-numpy one when ``fn`` is numpy-only."""
        xp = namespace(S)
        if not (self.array_api or is_numpy_namespace(xp)):
            raise TypeError(f"separation {self.name!r} computes in numpy only, got {library_name(xp)} "
                            f"arrays; convert them to numpy")
        return xp

    def __call__(self, S):
        """W = sep(S) row-wise; a 1-D score vector gives a 1-D result, in the namespace of S.

        NaN or inf scores raise ValueError naming this separation (max would otherwise return a
        one-hot at the NaN, identity and polynomial pass it through)."""
        xp = self.namespace(S)
        if is_numpy_namespace(xp):
            S = numpy_float(S)
        elif S.dtype != float_dtype(xp, S.dtype):
            S = xp.astype(S, xp.float64)
        single = S.ndim == 1
        if single:
            S = S[None, :]
        W = self.checked(S, xp=xp)
        return W[0, ...] if single else W

    def checked(self, S, *, xp):
        """fn(S) on a (B, N) floating score matrix of namespace ``xp``, refusing NaN/inf scores."""
        check_scores(S, f"separation {self.name}", xp=xp)
        return self.fn(S, xp=xp) if self.array_api else self.fn(S)


def _identity():
    """sep(S) = S: the gradient of the ``quadratic`` Lagrangian."""
    return _separation("identity", lambda S, xp: xp.asarray(S, copy=True), lagrangian="quadratic")


def _threshold(theta: float = 0.0):
    """sep(S)_mu = 1 if S_mu >= theta else 0 (sparse distributed memory); theta finite."""
    theta = real_param(theta, "threshold theta")
    return _separation(f"threshold(theta={theta:g})", lambda S, xp: xp.astype(S >= theta, S.dtype),
                      no_energy="a step function is not the gradient of a differentiable convex "
                                "function (its Lagrangian max(h - theta, 0) has no Hessian at theta)",
                      zero_at_nonpositive=theta > 0, params={"theta": theta})


def _polynomial(n: float = 2.0, rectified: bool = True):
    """Rectified: sep(S) = max(S, 0)^n, the gradient of ``rectified_polynomial(n)`` (convex for
    n >= 1). Signed: sep(S) = sign(S) |S|^n (odd-symmetric DAM form), the gradient of
    ``signed_polynomial(n)``, convex too."""
    n = real_param(n, "polynomial degree n", low=0.0, low_open=True)
    if rectified:
        fn = lambda S, xp: xp.clip(S, min=0.0) ** n  # noqa: E731
        name = f"polynomial(n={n:g})"
    else:
        fn = lambda S, xp: xp.sign(S) * xp.abs(S) ** n  # noqa: E731
        name = f"polynomial(n={n:g}, signed)"
    ok = n >= 1
    return _separation(name, fn,
                      lagrangian=("rectified_polynomial" if rectified else "signed_polynomial") if ok else None,
                      no_energy="" if ok else f"for n < 1 the Hessian n h^(n-1) of h^{n + 1:g}/{n + 1:g} is "
                                             f"unbounded at h = 0, so dE/dt is undefined there",
                      zero_at_nonpositive=rectified, params={"n": n, "rectified": rectified})


def _softmax(beta: float = 1.0):
    """sep(S)_mu = exp(beta S_mu) / sum_nu exp(beta S_nu), computed with the max shifted out so it
    stays finite for any finite beta S. The gradient of ``log_sum_exp(beta)``."""
    beta = real_param(beta, "softmax beta", low=0.0, low_open=True)

    def fn(S, xp):
        X = beta * S
        if not bool(xp.all(xp.isfinite(X))):
            raise OverflowError(f"softmax: beta * S overflows {S.dtype} (beta={beta:g}, "
                                f"max |S|={float(xp.max(xp.abs(S))):.3g}); lower beta or rescale the similarity")
        return softmax(X, xp, overwrite=True)  # X is a fresh array (never the caller's S)

    return _separation(f"softmax(beta={beta:g})", fn, lagrangian="log_sum_exp", params={"beta": beta})


def _exp(beta: float = 1.0):
    """sep(S)_mu = exp(beta S_mu), unnormalised: the gradient of ``exponential(beta)``, whose
    Hessian is positive (an energy) only for beta > 0, so beta <= 0 is refused."""
    beta = real_param(beta, "exp beta", low=0.0, low_open=True)

    def fn(S, xp):
        X = beta * S
        top, limit = float(xp.max(X)), exp_max(xp, X.dtype)
        if top > limit:
            raise OverflowError(f"exp separation overflows: beta * S reaches {top:.4g} > "
                                f"{limit:.1f}; use softmax (shift-invariant) or a smaller beta")
        return xp.exp(X)

    return _separation(f"exp(beta={beta:g})", fn, lagrangian="exponential", params={"beta": beta})


def _log():
    """sep(S)_mu = log(S_mu); needs S > 0 (e.g. the paper_code reciprocal similarities)."""

    def fn(S, xp):
        if bool(xp.any(S <= 0)):
            raise ValueError("log separation needs strictly positive similarity scores; the standard "
                             "convention's distance similarities are <= 0 (use convention='paper_code')")
        return xp.log(S)

    return _separation("log", fn, no_energy="log is concave and undefined for h <= 0: it is not the "
                                           "gradient of a convex Lagrangian, so no Lyapunov energy exists")


def _top_k(k: int):
    """Uniform weights 1/k on the k most similar memories (ties go to the lower index); k an
    integer >= 1 (2.7 is refused, not truncated) and at most the number of memories."""
    k = int_param(k, "k_max k", low=1)

    def fn(S, xp):
        idx = top_k_indices(S, k, xp=xp)
        if is_numpy_namespace(xp):
            W = np.zeros_like(S)
            np.put_along_axis(W, idx, 1.0 / k, axis=1)
            return W
        # spec-only (no scatter): memory mu is kept iff its rank in the row's stable order is < k
        if k == 1:
            return xp.astype(xp.arange(S.shape[1], device=S.device)[None, :] == idx, S.dtype)
        rank = xp.argsort(xp.argsort(-S, axis=1, stable=True), axis=1, stable=True)
        return xp.astype(rank < k, S.dtype) / k

    name = "max" if k == 1 else f"k_max(k={k})"
    return _separation(name, fn, top_k=k,
                      no_energy="argmax/top-k is piecewise constant: no convex Lagrangian has it as "
                                "gradient (softmax with beta -> inf is its smooth limit)",
                      params={"k": k})


def top_k_indices(S, k: int, *, xp=None):
    """Indices (B, k) of the k largest scores per row, deterministic: ties go to the lower index.

    Raises ValueError when k exceeds the number of memories N = S.shape[1] (k_max would otherwise
    silently keep all N, i.e. return their mean)."""
    if k > S.shape[1]:
        raise ValueError(f"k_max(k={k}) asks for more memories than are stored ({S.shape[1]})")
    if xp is None:
        xp = namespace(S)
    if k == 1:
        return xp.argmax(S, axis=1)[:, None]  # argmax returns the first maximum
    # stable sort of -S keeps equal scores in index order
    return xp.argsort(-S, axis=1, stable=True)[:, :k]


def _separation(name, fn, **kw) -> Separation:
    """A built-in Separation: ``fn(S, xp)`` in any array-API namespace (``xp`` found when omitted)."""
    def call(S, xp=None):
        return fn(S, namespace(S) if xp is None else xp)
    call.__doc__ = fn.__doc__
    return Separation(name, call, array_api=True, **kw)


_REGISTRY: dict[str, Callable[..., Separation]] = {
    "identity": _identity,
    "threshold": _threshold,
    "polynomial": _polynomial,
    "softmax": _softmax,
    "max": lambda: _top_k(1),
    "k_max": _top_k,
    "exp": _exp,
    "log": _log,
}


def names() -> list[str]:
    """Registered separation names."""
    return list(_REGISTRY)


def get_separation(spec, **params) -> Separation:
    """Look a separation up by name (``"softmax"``, beta=10), or pass a Separation through."""
    return from_registry("separation", Separation, _REGISTRY, spec, params)
