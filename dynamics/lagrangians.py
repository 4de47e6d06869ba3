"""Lagrangians of neuron layers: L(x), its gradient (the activation) and Hessian-vector products.

A layer of the Krotov-Hopfield network is a Lagrangian plus a size: feature neurons v have
g = dL_v/dv, memory neurons h have f = dL_h/dh (f plays the separation function; docs/theory.md
§2, whose table lists every Lagrangian here; each class states its own L). The energy needs each
layer's Legendre term (:meth:`Lagrangian.legendre`), and the Lyapunov argument (§3) needs each
Hessian to be positive semidefinite on the states visited; :meth:`Lagrangian.check_convex` verifies that and
:class:`NonConvexLagrangianError` refuses a Lagrangian that fails.

All methods act row-wise on a batch x (B, K) and compute in the array namespace and on the device
of x (numpy, torch, CuPy, any array-API library: models/arrays.py); numpy keeps its fused
paths (np.einsum, scipy's logsumexp and expit, in-place softmax). :class:`Elementwise` runs the
user's functions on whatever arrays it is given.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy.special import expit, logsumexp

from uhn.models.arrays import array_namespace, errstate, is_numpy_namespace, rowdot, to_numpy
from uhn.models.arrays import logsumexp as xp_logsumexp
from uhn.models.arrays import softmax as stable_softmax
from uhn.models.separation import EXP_MAX, Separation, get_separation
from uhn.models.validation import real_param


class NonConvexLagrangianError(ValueError):
    """The Lagrangian's Hessian is not positive semidefinite, so E is no Lyapunov function."""


def check_tol(tol) -> float:
    """The convexity tolerance ``tol`` of ``check_convex`` as a float, or ValueError/TypeError:
    finite and >= 0 (a NaN tolerance makes every comparison false and would accept any Hessian)."""
    return real_param(tol, "convexity check tol", low=0.0)


def check_finite_values(name: str, where, **values) -> None:
    """Raise ValueError naming the Lagrangian ``name``, the quantity and the probe state where any
    of ``values`` (quantity name -> array of per-state values, first axis = probe states of
    ``where``) is NaN or inf: a Lagrangian must be finite on its probes."""
    for what, a in values.items():
        a = np.asarray(a, dtype=np.float64)
        bad = ~np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            at = np.array2string(np.asarray(where)[k], precision=3, threshold=8)
            raise ValueError(f"Lagrangian {name}: its {what} is NaN/inf at the probe state {at}; a "
                             f"Lagrangian must be finite on the states the dynamics visit (give probe= "
                             f"states inside its domain if it has one)")


#: Lanczos steps per state row of :func:`smallest_eigenvalue` (a Krylov space of this dimension,
#: or of the layer's width when it is narrower: then the eigenvalues are exact)
LANCZOS_STEPS = 40
#: round-off of a Ritz value, in units of K eps64 |H|_2 (as for a dense eigvalsh: the Hessian-vector
#: products carry a few ulps of the terms they add, and full reorthogonalisation keeps the basis
#: orthonormal to a few ulps)
RITZ_ULPS = 16.0


def smallest_eigenvalue(hvp: Callable, x, steps: int = LANCZOS_STEPS, seed: int = 0):
    """(lambda_min, |H|_2) estimates (B,) of the Hessians at the rows of x (B, K), from
    hvp(x, U) -> H(x_b) U_b alone: Lanczos with full reorthogonalisation, m = min(K, steps) steps
    from a seeded random start vector per row, batched over the rows.

    Each row's Ritz values are the eigenvalues of Q^T H Q over its Krylov basis Q, so the smallest
    is >= lambda_min(H) (Cauchy interlacing): a Ritz value below zero is a concave direction of the
    Hessian itself, found without forming it. For m = K it is lambda_min exactly; for m < K the
    Kaniel-Paige bound theta - lambda_min <= (lambda_max - lambda_min) tan^2(phi) /
    T_(m-1)(1 + 2 gap)^2 (phi: start vector vs eigenvector, T: Chebyshev polynomial, gap: relative
    distance to the next eigenvalue) makes an isolated negative eigenvalue converge geometrically.
    A Krylov space that closes early (an invariant subspace) is extended by a fresh random vector
    orthogonal to it."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    B, K = x.shape
    m = max(1, min(K, int(steps)))
    rng = np.random.default_rng(seed)
    Q = np.zeros((m, B, K))
    alpha, beta = np.zeros((B, m)), np.zeros((B, m))

    def orthonormal(w, j):
        for _ in range(2):                       # twice is enough (Kahan-Parlett)
            w = w - np.einsum("jb,jbk->bk", np.einsum("jbk,bk->jb", Q[:j], w), Q[:j])
        return w

    q = rng.standard_normal((B, K))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    for j in range(m):
        Q[j] = q
        w = np.asarray(hvp(x, q), dtype=np.float64)
        if not np.isfinite(w).all():              # refused by the caller, at the first such row
            return np.where(np.isfinite(w).all(axis=1), 0.0, np.nan), np.zeros(B)
        alpha[:, j] = np.einsum("bk,bk->b", q, w)
        w = orthonormal(w, j + 1)
        b = np.linalg.norm(w, axis=1)
        if j == m - 1:
            break
        scale = np.abs(alpha[:, :j + 1]).max(1) + beta[:, :j + 1].max(1)
        closed = b <= 1e-12 * np.maximum(scale, 1e-300)
        if closed.any():                         # restart: a random vector orthogonal to the basis
            r = orthonormal(rng.standard_normal((B, K)), j + 1)
            w = np.where(closed[:, None], r, w)
            b = np.where(closed, 0.0, b)
        beta[:, j] = b
        q = w / np.where(closed, np.linalg.norm(w, axis=1), b)[:, None]
    Tm = np.zeros((B, m, m))
    idx = np.arange(m)
    Tm[:, idx, idx] = alpha
    Tm[:, idx[:-1], idx[1:]] = Tm[:, idx[1:], idx[:-1]] = beta[:, :m - 1]
    theta = np.linalg.eigvalsh(Tm)
    return theta[:, 0], np.abs(theta).max(1)


def check_smallest_eigenvalue(name: str, hvp: Callable, x, tol: float, steps: int = LANCZOS_STEPS,
                              seed: int = 0) -> None:
    """Raise NonConvexLagrangianError naming the eigenvalue and the state row where the Lanczos
    estimate of lambda_min(H) (:func:`smallest_eigenvalue`, an upper bound on it) is below
    -(tol + RITZ_ULPS K eps64 |H|_2), or is not finite."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    K = x.shape[1]
    lam, norm = smallest_eigenvalue(hvp, x, steps, seed)
    allowed = tol + RITZ_ULPS * K * np.finfo(np.float64).eps * norm
    bad = ~(lam >= -allowed)
    if bad.any():
        b = int(np.flatnonzero(bad)[0])
        at = np.array2string(x[b], precision=3, threshold=8)
        if not np.isfinite(lam[b]):
            raise NonConvexLagrangianError(
                f"Lagrangian {name} has a NaN/inf Hessian-vector product at state row {b} (x = {at}): "
                f"its energy is not a Lyapunov function there")
        raise NonConvexLagrangianError(
            f"Lagrangian {name} is not convex: its Hessian has eigenvalue {lam[b]:.3g} < 0 at state "
            f"row {b} (x = {at}; Lanczos, {min(K, steps)} steps): its energy is not a Lyapunov function")


class Lagrangian:
    """Base class: subclasses define value, grad and hvp (row-wise on (B, K) arrays)."""

    kind: str = "abstract"
    #: the Hessian is diagonal (an elementwise L): its smallest eigenvalue is min_i of hvp(x, 1)
    diagonal_hessian: bool = False
    #: the Hessian is PSD at every state by construction (a proof, not a probe): check_convex
    #: then runs only its random-direction probes (a guard against a wrong hvp)
    convex_everywhere: bool = False

    def __init__(self, **params):
        self.params = {k: float(v) for k, v in params.items()}

    @property
    def name(self) -> str:
        inner = ", ".join(f"{k}={v:g}" for k, v in self.params.items())
        return f"{self.kind}({inner})" if inner else self.kind

    def __repr__(self) -> str:
        return self.name

    def value(self, x: np.ndarray) -> np.ndarray:
        """L(x) per row, (B,)."""
        raise NotImplementedError

    def grad(self, x: np.ndarray) -> np.ndarray:
        """Activation dL/dx, (B, K)."""
        raise NotImplementedError

    def hvp(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Hessian-vector product (d^2 L/dx^2) u, (B, K)."""
        raise NotImplementedError

    def value_size(self, x: np.ndarray) -> np.ndarray:
        """(B,) the sum of |each term| that :meth:`value` adds up to L(x): its round-off is a few
        ulps of this (not of |L(x)|, which can be far smaller when the terms cancel). Default
        |L(x)|, right for a sum of non-negative terms each computed to a few ulps."""
        return array_namespace(x).abs(self.value(x))

    def hvp_size(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        """(B, K) the size of the terms each entry of :meth:`hvp` adds up: its round-off is a few
        ulps of this. Default |hvp(x, u)|, right for a diagonal Hessian (one product per entry)."""
        return array_namespace(x).abs(self.hvp(x, u))

    def legendre(self, x: np.ndarray) -> np.ndarray:
        """Energy term of the layer, x . dL/dx - L(x), (B,)."""
        return rowdot(x, self.grad(x), array_namespace(x)) - self.value(x)

    def curvature(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        """u^T Hess(L)(x) u per row, (B,): must be >= 0 for the Lyapunov argument."""
        return rowdot(u, self.hvp(x, u), array_namespace(x))

    def check_convex(self, x, n_probes: int = 8, seed: int = 0, tol: float = 1e-10) -> None:
        """Raise NonConvexLagrangianError if u^T H(x) u < -tol |u|^2 for random probe directions u
        at any of the states x (B, K) (e.g. the states a trajectory visited), or if the Lanczos
        estimate of the smallest Hessian eigenvalue there (:func:`check_smallest_eigenvalue`, an
        upper bound on it) is below -tol minus its round-off; the check runs in
        numpy on a host copy of x (its probe directions come from numpy's generator). ``tol`` must
        be finite and >= 0 (NaN would turn the check off); a NaN/inf curvature is refused too."""
        tol = check_tol(tol)
        x = np.atleast_2d(np.asarray(to_numpy(x), dtype=np.float64))
        rng = np.random.default_rng(seed)
        for _ in range(n_probes):
            u = rng.standard_normal(x.shape)
            c = self.curvature(x, u)
            if not np.isfinite(c).all():
                b = int(np.flatnonzero(~np.isfinite(c))[0])
                raise NonConvexLagrangianError(
                    f"Lagrangian {self.name} has a NaN/inf curvature u^T H u = {c[b]} at state row {b}: "
                    f"its energy is not a Lyapunov function there")
            scale = np.einsum("bk,bk->b", u, u)
            bad = c < -tol * scale
            if np.any(bad):
                b = int(np.flatnonzero(bad)[0])
                raise NonConvexLagrangianError(
                    f"Lagrangian {self.name} has a negative Hessian direction at state row {b} "
                    f"(u^T H u = {c[b]:.3g}): its energy is not a Lyapunov function")
        # a random direction sees a single concave axis of a wide layer only with weight ~1/K:
        # the exact diagonal, or the Lanczos estimate of the smallest eigenvalue, finds it
        if self.convex_everywhere:
            return
        if self.diagonal_hessian:
            d = np.asarray(to_numpy(self.hvp(x, np.ones_like(x))), dtype=np.float64)
            bad = ~(d >= -tol)
            if bad.any():
                b, i = np.argwhere(bad)[0]
                raise NonConvexLagrangianError(
                    f"Lagrangian {self.name} is not convex: its Hessian has eigenvalue {d[b, i]:.3g} < 0 "
                    f"(diagonal entry {i}) at state row {b}: its energy is not a Lyapunov function")
            return
        check_smallest_eigenvalue(self.name, self.hvp, x, tol, seed=seed)


class Quadratic(Lagrangian):
    """L = sum x^2 / 2;  dL/dx = x;  Hessian = I (classical HN memory layer, linear neurons)."""

    kind = "quadratic"
    diagonal_hessian = True
    convex_everywhere = True

    def value(self, x):
        return 0.5 * rowdot(x, x, array_namespace(x))

    def grad(self, x):
        return x

    def hvp(self, x, u):
        return u


class _Polynomial(Lagrangian):
    """L = sum a(x)^(n+1) / (n+1) with a(x) = max(x, 0) or |x|;  dL/dx = s(x) a(x)^n;
    Hessian n a(x)^(n-1) (times the indicator x > 0 for the rectified form: :meth:`_mask`)."""

    diagonal_hessian = True
    convex_everywhere = True          # n a^(n-1) >= 0 for n >= 1

    def __init__(self, n: float):
        if not n >= 1:
            raise NonConvexLagrangianError(
                f"{self.kind} degree n={n} < 1: the Hessian n |x|^(n-1) is unbounded at 0")
        super().__init__(n=n)
        self.n = float(n)

    def _a(self, x, xp):
        raise NotImplementedError

    def _s(self, x, xp):
        raise NotImplementedError

    def _mask(self, x, c, xp):
        """The Hessian term c where the form is curved (0 elsewhere)."""
        raise NotImplementedError

    def value(self, x):
        xp = array_namespace(x)
        return xp.sum(self._a(x, xp) ** (self.n + 1), axis=1) / (self.n + 1)

    def grad(self, x):
        xp = array_namespace(x)
        return self._s(x, xp) * self._a(x, xp) ** self.n

    def hvp(self, x, u):
        xp = array_namespace(x)
        return self._mask(x, self.n * self._a(x, xp) ** (self.n - 1) * u, xp)


class RectifiedPolynomial(_Polynomial):
    """L = sum max(x, 0)^(n+1) / (n+1);  dL/dx = max(x, 0)^n (dense associative memory)."""

    kind = "rectified_polynomial"

    def __init__(self, n: float = 2.0):
        super().__init__(n)

    def _a(self, x, xp):
        return xp.maximum(x, 0.0) if is_numpy_namespace(xp) else xp.maximum(x, xp.zeros_like(x))

    def _s(self, x, xp):
        return 1.0

    def _mask(self, x, c, xp):
        return c * (x > 0) if is_numpy_namespace(xp) else xp.where(x > 0, c, xp.zeros_like(c))


class SignedPolynomial(_Polynomial):
    """L = sum |x|^(n+1) / (n+1);  dL/dx = sign(x) |x|^n."""

    kind = "signed_polynomial"

    def __init__(self, n: float = 3.0):
        super().__init__(n)

    def _a(self, x, xp):
        return xp.abs(x)

    def _s(self, x, xp):
        return xp.sign(x)

    def _mask(self, x, c, xp):
        return c


def _overflow(beta: float, x: np.ndarray, who: str) -> OverflowError:
    x = to_numpy(x)
    return OverflowError(f"{who}: beta * x overflows {x.dtype} (beta={beta:g}, max |x|="
                         f"{np.nanmax(np.abs(x)):.3g}); lower beta")


def _check_beta_x(beta: float, x: np.ndarray, who: str, xp) -> np.ndarray:
    with errstate(xp, over="ignore"):   # judged below
        bx = beta * x
    if not bool(xp.all(xp.isfinite(bx))):
        raise _overflow(beta, x, who)
    return bx


def _softmax_beta(beta: float, x: np.ndarray, who: str) -> np.ndarray:
    """softmax(beta x) row-wise (uhn.models.arrays.softmax: max-shifted, in place on the one
    fresh array beta x; this runs at every right-hand-side call). Overflow is read off the row
    maxima (a pass over (B, N) instead of isfinite over every entry): +inf or NaN anywhere in a row
    makes its maximum non-finite, and so does a row that is -inf throughout; a lone -inf beside a
    finite maximum is the exact weight 0."""
    xp = array_namespace(x)
    with np.errstate(over="ignore"):    # judged below, also under integrate's errstate(raise)
        X = beta * x
    top = X.max(axis=1) if xp is np else xp.max(X, axis=1)   # the method: numpy's fastest call
    if not bool(xp.all(xp.isfinite(top))):
        raise _overflow(beta, x, who)
    return stable_softmax(X, xp, overwrite=True)


class LogSumExp(Lagrangian):
    """L = (1/beta) log sum exp(beta x);  dL/dx = softmax(beta x);
    Hessian = beta (diag(f) - f f^T), PSD (modern continuous Hopfield memory layer).
    Computed with the maximum shifted out, so it stays finite for any finite beta x."""

    kind = "log_sum_exp"
    convex_everywhere = True

    def __init__(self, beta: float = 1.0):
        if not (np.isfinite(beta) and beta > 0):
            raise ValueError(f"log_sum_exp needs a positive finite beta, got {beta}")
        super().__init__(beta=beta)
        self.beta = float(beta)

    def value(self, x):
        xp = array_namespace(x)
        bx = _check_beta_x(self.beta, x, self.name, xp)
        if is_numpy_namespace(xp):
            return logsumexp(bx, axis=1) / self.beta
        return xp_logsumexp(bx, xp) / self.beta

    def value_size(self, x):
        # logsumexp adds max(x) and (1/beta) log sum exp(beta (x - max x)) >= 0, which cancel when max x < 0
        xp = array_namespace(x)
        m = xp.max(x, axis=1)
        return xp.abs(m) + xp.abs(self.value(x) - m)

    def grad(self, x):
        return _softmax_beta(self.beta, x, self.name)

    def hvp(self, x, u):
        f = self.grad(x)
        return self.beta * (f * u - f * rowdot(f, u, array_namespace(x))[:, None])

    def hvp_size(self, x, u):
        # beta (f u - f (f.u)): the two terms cancel along u = 1 (softmax is shift invariant)
        xp = array_namespace(x)
        f = self.grad(x)
        return self.beta * (xp.abs(f * u) + f * xp.abs(rowdot(f, u, xp))[:, None])

    def legendre(self, x):
        # x.f - L = (1/beta) sum f log f (log f = beta x - log Z): no cancellation of two large terms
        xp = array_namespace(x)
        f = self.grad(x)
        with errstate(xp, divide="ignore", invalid="ignore"):
            flogf = xp.where(f > 0, f * xp.log(xp.where(f > 0, f, 1.0)), 0.0)
        return xp.sum(flogf, axis=1) / self.beta


class Exponential(Lagrangian):
    """L = sum exp(beta x) / beta;  dL/dx = exp(beta x) (unnormalised exp separation)."""

    kind = "exponential"
    diagonal_hessian = True
    convex_everywhere = True

    def __init__(self, beta: float = 1.0):
        if not (np.isfinite(beta) and beta > 0):
            raise ValueError(f"exponential Lagrangian needs a positive finite beta, got {beta}")
        super().__init__(beta=beta)
        self.beta = float(beta)

    def _exp(self, x):
        xp = array_namespace(x)
        bx = _check_beta_x(self.beta, x, self.name, xp)
        top = float(xp.max(bx))
        if top > EXP_MAX:
            raise OverflowError(f"{self.name}: exp(beta x) overflows (beta x up to {top:.4g})")
        return xp.exp(bx)

    def value(self, x):
        return array_namespace(x).sum(self._exp(x), axis=1) / self.beta

    def grad(self, x):
        return self._exp(x)

    def hvp(self, x, u):
        return self.beta * self._exp(x) * u


class Spherical(Lagrangian):
    """L = |x|_2;  dL/dx = x / |x| (unit-norm rates);  Hessian = (I - g g^T) / |x|, PSD."""

    kind = "spherical"
    convex_everywhere = True

    def _norm(self, x):
        xp = array_namespace(x)
        if is_numpy_namespace(xp):
            n = np.linalg.norm(x, axis=1, keepdims=True)
        else:
            n = xp.sqrt(xp.sum(x * x, axis=1, keepdims=True))
        if bool(xp.any(n == 0)):
            raise ValueError("spherical Lagrangian: x = 0 has no direction (|x| = 0)")
        return n

    def value(self, x):
        return self._norm(x)[:, 0]

    def grad(self, x):
        return x / self._norm(x)

    def hvp(self, x, u):
        n = self._norm(x)
        g = x / n
        return (u - g * rowdot(g, u, array_namespace(x))[:, None]) / n

    def hvp_size(self, x, u):
        # (u - g (g.u)) / |x|: the two terms cancel along the radial direction u = x
        xp = array_namespace(x)
        n = self._norm(x)
        g = x / n
        return (xp.abs(u) + xp.abs(g) * xp.abs(rowdot(g, u, xp))[:, None]) / n


class LogCosh(Lagrangian):
    """L = sum log cosh(x);  dL/dx = tanh(x) (bounded rates in (-1, 1));  Hessian = 1 - tanh^2.

    log cosh x = log1p(2 sinh(x/2)^2) for |x| < 1 (cosh x - 1 = 2 sinh(x/2)^2 exactly, no
    cancellation: accurate to a few ulps of x^2/2), and |x| + log1p(exp(-2|x|)) - log 2 beyond (no
    overflow; the terms sum to at most (1 + 2 log 2) / log cosh(1) ~ 5.5 times the result)."""

    kind = "log_cosh"
    diagonal_hessian = True
    convex_everywhere = True

    def _terms(self, x):
        xp = array_namespace(x)
        a = xp.abs(x)
        big = a >= 1.0
        with errstate(xp, over="ignore"):
            small = xp.log1p(2.0 * xp.sinh(xp.where(big, 0.0, 0.5 * a)) ** 2)
        large = a + xp.log1p(xp.exp(-2.0 * a)) - math.log(2.0)
        return xp.where(big, large, small), xp.where(big, a + 2.0 * math.log(2.0), small)

    def value(self, x):
        return array_namespace(x).sum(self._terms(x)[0], axis=1)

    def value_size(self, x):
        return array_namespace(x).sum(self._terms(x)[1], axis=1)

    def grad(self, x):
        return array_namespace(x).tanh(x)

    def hvp(self, x, u):
        return (1.0 - array_namespace(x).tanh(x) ** 2) * u


class Softplus(Lagrangian):
    """L = sum log(1 + e^x);  dL/dx = sigmoid(x) (firing rates in (0, 1));  Hessian = s (1 - s)."""

    kind = "softplus"
    diagonal_hessian = True
    convex_everywhere = True

    def value(self, x):
        xp = array_namespace(x)
        return xp.sum(xp.logaddexp(0.0, x) if is_numpy_namespace(xp) else xp.logaddexp(x, 0.0), axis=1)

    def grad(self, x):
        xp = array_namespace(x)
        if is_numpy_namespace(xp):
            return expit(x)
        e = xp.exp(-xp.abs(x))                  # in (0, 1]: no overflow for any x
        return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))

    def hvp(self, x, u):
        s = self.grad(x)
        return s * (1.0 - s) * u


class Elementwise(Lagrangian):
    """L = sum_i F(x_i) for a user-supplied convex F with derivatives dF and d2F.

    Refused at construction if d2F < 0 anywhere on ``probe`` (default: 2001 points in [-20, 20]);
    :meth:`check_convex` re-checks on the states actually visited.
    """

    kind = "elementwise"
    diagonal_hessian = True

    def __init__(self, F: Callable, dF: Callable, d2F: Callable, name: str = "custom",
                 probe=None):
        super().__init__()
        self.F, self.dF, self.d2F, self.label = F, dF, d2F, name
        xs = np.linspace(-20, 20, 2001) if probe is None else np.asarray(probe, dtype=np.float64)
        with np.errstate(all="ignore"):
            vals = {what: np.broadcast_to(np.asarray(fn(xs), dtype=np.float64), xs.shape).ravel()
                    for what, fn in (("F(x)", F), ("F'(x)", dF), ("F''(x)", d2F))}
        xs = xs.ravel()
        check_finite_values(self.name, xs, **vals)
        c = vals["F''(x)"]
        bad = ~(c >= -1e-12)
        if np.any(bad):
            raise NonConvexLagrangianError(
                f"Lagrangian {name!r} is not convex: F''(x) = {c[bad][0]:.3g} < 0 at x = {xs[bad][0]:.3g}")

    @property
    def name(self) -> str:
        return f"elementwise({self.label})"

    def _call(self, fn, x):
        """fn(x) as an array of x's namespace: float64 numpy for numpy x (the user's function may
        return a list or another dtype); for other arrays the function must stay in their
        namespace (write it with that library's operations, or see uhn.dynamics.autodiff)."""
        xp = array_namespace(x)
        y = fn(x)
        if is_numpy_namespace(xp):
            y = np.asarray(y, dtype=np.float64)
            bad = ~np.isfinite(y) & np.isfinite(x)
            if bad.any():   # here, naming the state, not as a stalled integration later
                at = tuple(int(k) for k in np.argwhere(bad)[0])
                what = {id(self.F): "F", id(self.dF): "F'", id(self.d2F): "F''"}.get(id(fn), "F")
                raise ValueError(f"Lagrangian {self.name}: {what}(x) = {np.broadcast_to(y, bad.shape)[at]} "
                                 f"at the finite state x = {np.broadcast_to(x, bad.shape)[at]:.6g} "
                                 f"(index {at}): F leaves its domain there (give a Lagrangian "
                                 f"defined on every state the dynamics visit)")
            return y
        if type(y).__module__.split(".")[0] != type(x).__module__.split(".")[0]:
            raise TypeError(f"Lagrangian {self.name}: {getattr(fn, '__name__', 'F')}(x) returned "
                            f"{type(y).__name__} for {type(x).__module__.split('.')[0]} states; "
                            f"write F, dF, d2F with that library's operations")
        return y

    def value(self, x):
        return array_namespace(x).sum(self._call(self.F, x), axis=1)

    def value_size(self, x):
        xp = array_namespace(x)
        return xp.sum(xp.abs(self._call(self.F, x)), axis=1)

    def grad(self, x):
        return self._call(self.dF, x)

    def hvp(self, x, u):
        return self._call(self.d2F, x) * u


# ------------------------------------------------------------------ constructors
def quadratic() -> Quadratic:
    return Quadratic()


def rectified_polynomial(n: float = 2.0) -> RectifiedPolynomial:
    return RectifiedPolynomial(n)


def signed_polynomial(n: float = 3.0) -> SignedPolynomial:
    return SignedPolynomial(n)


def log_sum_exp(beta: float = 1.0) -> LogSumExp:
    return LogSumExp(beta)


def exponential(beta: float = 1.0) -> Exponential:
    return Exponential(beta)


def spherical() -> Spherical:
    return Spherical()


def log_cosh() -> LogCosh:
    return LogCosh()


def softplus() -> Softplus:
    return Softplus()


def elementwise(F, dF, d2F, name: str = "custom", probe=None) -> Elementwise:
    return Elementwise(F, dF, d2F, name=name, probe=probe)


_BY_KIND = {
    "quadratic": lambda p: Quadratic(),
    "rectified_polynomial": lambda p: RectifiedPolynomial(p["n"]),
    "signed_polynomial": lambda p: SignedPolynomial(p["n"]),
    "log_sum_exp": lambda p: LogSumExp(p["beta"]),
    "exponential": lambda p: Exponential(p["beta"]),
}


def for_separation(separation) -> Lagrangian:
    """The memory-layer Lagrangian L_h whose gradient is ``separation`` (name or Separation).

    identity -> quadratic, polynomial(n) -> rectified / signed polynomial, softmax(beta) ->
    log_sum_exp(beta), exp(beta) -> exponential(beta). Threshold, max, k_max and log have no
    convex Lagrangian and raise NonConvexLagrangianError saying why.
    """
    sep: Separation = get_separation(separation)
    if sep.lagrangian is None:
        raise NonConvexLagrangianError(f"separation {sep.name} has no energy: {sep.no_energy}")
    return _BY_KIND[sep.lagrangian](sep.params)
