"""Custom similarities and Lagrangians from a plain function, differentiated by JAX.

A user writes only the scalar function; every derivative the dynamics need comes from automatic
differentiation, and the result is an ordinary :class:`uhn.models.similarity.Similarity` or
:class:`uhn.dynamics.lagrangians.Lagrangian`, so :class:`uhn.dynamics.network.Network`, ``integrate``,
``verify_energy``, the fixed-point and Jacobian tools and the plots take it unchanged.

* :func:`similarity` ``(fn)`` with ``fn(m, g) -> scalar`` for one memory row m (D,) and one state
  g (D,): its score and gradient contraction (``jax.vjp`` of the (N,) score vector, vmapped over
  the queries) are stated at the function.
* :func:`lagrangian` ``(value_fn)`` with ``value_fn(x) -> scalar`` for one layer state x (K,): an
  :class:`AutodiffLagrangian`, whose value, activation (``jax.grad``) and Hessian-vector product
  (``jax.jvp`` of the gradient) are vmapped over the rows of a batch. Convexity is checked as the
  built-in Lagrangians are: at construction on probe states, and later by
  :meth:`AutodiffLagrangian.check_convex` on the states a trajectory visited (``verify_energy``
  calls it); a Hessian with an eigenvalue below -tol raises NonConvexLagrangianError.

Write ``fn`` with ``jax.numpy`` (or with the array-API namespace of its arguments,
``xp = g.__array_namespace__()``); plain numpy functions cannot be traced. Parameters passed as
keywords (``similarity(gauss, s=0.5)``) reach ``fn`` as keyword arguments and appear in the name.

Why JAX rather than torch.func: the CPU wheels of jax + jaxlib are a few tens of MB (torch is a
multi-GB install), ``jit`` + ``vmap`` give batched derivatives compiled once per shape, and
float64 works on CPU. JAX computes in float32 unless 64-bit mode is on; the energy checks need
float64, so every call here runs inside the scoped ``jax.enable_x64(True)`` context rather than
flipping the global ``jax_enable_x64`` flag, which would change the user's other JAX code. ``jit``
keys its cache on that flag, so compiled functions are reused across calls. Arrays go in and come
out as numpy float64 (fresh, writable copies, as the built-in similarities return).

Needs the ``autodiff`` extra: ``pip install -e ".[autodiff]"``.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

try:
    import jax
    import jax.numpy as jnp
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("uhn.dynamics.autodiff needs JAX: pip install -e \".[autodiff]\" "
                      "(or pip install jax)") from exc

from uhn.models.similarity import Similarity, names as _similarity_names

from uhn.dynamics.lagrangians import (Lagrangian, NonConvexLagrangianError, check_finite_values,
    check_tol)

_EPS64 = np.finfo(np.float64).eps
#: round-off of a dense AD Hessian's smallest eigenvalue, in units of K eps64 |H|_F (eigvalsh is
#: backward stable to a small multiple of K eps64 |H|_2, and each entry of H carries a few ulps of
#: the terms it adds; |H|_2 <= |H|_F)
HESSIAN_ULPS = 16.0
#: dense Hessians are used for the convexity check up to this layer width; wider layers use the
#: base class's check: random-direction probes and a Lanczos estimate of the smallest eigenvalue
DENSE_HESSIAN_MAX = 256
#: default probe scales for a Lagrangian without ``probe=``: standard-normal states times these
PROBE_SCALES = (0.01, 0.1, 1.0, 3.0, 10.0)
#: default probe width when neither ``probe`` nor ``size`` is given
PROBE_SIZE = 4


def _x64(compiled: Callable) -> Callable:
    """Call a jitted JAX function on numpy float64 arrays inside the scoped 64-bit context; return
    a fresh, writable numpy float64 array."""

    def call(*args):
        with jax.enable_x64(True):
            out = compiled(*(np.asarray(a, dtype=np.float64) for a in args))
            return np.array(out, dtype=np.float64)

    return call


def _check_function(fn, what: str) -> None:
    if not callable(fn):
        raise TypeError(f"{what} must be a callable written with jax.numpy, got {type(fn).__name__} {fn!r}")


def _label(fn, name: Optional[str], what: str) -> str:
    label = getattr(fn, "__name__", None) if name is None else name
    if not isinstance(label, str) or not label or label == "<lambda>":
        raise ValueError(f"{what}: give name=... (a lambda or unnamed callable has no usable name)")
    return label


def _params(params: dict, what: str) -> dict:
    """Real numbers as floats; arrays (numpy, JAX, nested lists) as read-only numpy float64 arrays,
    passed to fn as such: inside the 64-bit context a float64 array stays float64 (a
    ``jnp.asarray`` in the user's closure outside it would have made it float32)."""
    out = {}
    for k, v in params.items():
        if isinstance(v, bool) or isinstance(v, (str, bytes)) or v is None:
            raise TypeError(f"{what} parameter {k!r} must be a real number or array, got {type(v).__name__} {v!r}")
        if isinstance(v, (int, float, np.integer, np.floating)):
            if not np.isfinite(v):
                raise ValueError(f"{what} parameter {k!r} must be finite, got {v}")
            out[k] = float(v)
            continue
        try:
            a = np.asarray(v)
        except Exception as exc:
            raise TypeError(f"{what} parameter {k!r} must be a real number or array, got {type(v).__name__}") from exc
        if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
            raise TypeError(f"{what} parameter {k!r} must be a real array, got dtype {a.dtype}"
                            + (" (complex: pass the real and imaginary parts separately)"
                               if np.issubdtype(a.dtype, np.complexfloating) else ""))
        a = np.array(a, dtype=np.float64)       # a copy: later changes to the caller's array do not leak in
        if not np.isfinite(a).all():
            raise ValueError(f"{what} parameter {k!r} must be finite, got non-finite entries at "
                             f"{np.argwhere(~np.isfinite(a))[0].tolist()}")
        a.flags.writeable = False
        out[k] = a
    return out


def _with_params(label: str, params: dict) -> str:
    inner = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}=array{v.shape}"
                      for k, v in params.items())
    return f"{label}({inner})" if inner else label


def _scalar_output(fn, shapes, what: str) -> None:
    """Trace fn on abstract float64 arrays of the given shapes (no computation); refuse a result
    that is not a real floating scalar (TypeError for an integer, boolean or complex one)."""
    with jax.enable_x64(True):
        try:
            out = jax.eval_shape(fn, *(jax.ShapeDtypeStruct(s, jnp.float64) for s in shapes))
        except Exception as exc:  # a shape error inside user code: say which call failed
            raise ValueError(f"{what} failed on arguments of shapes {shapes}: "
                             f"{type(exc).__name__}: {exc}") from exc
    if getattr(out, "shape", None) != ():
        raise ValueError(f"{what} must return a scalar, got {getattr(out, 'shape', type(out).__name__)} "
                         f"for arguments of shapes {shapes}")
    if jnp.issubdtype(out.dtype, jnp.complexfloating):
        raise TypeError(f"{what} returns a complex scalar ({out.dtype}); it must be real (its imaginary "
                        f"part would be discarded): return e.g. jnp.real(...) or jnp.abs(...) explicitly")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"{what} returns {out.dtype}; it must return a real floating scalar: an "
                        f"integer or boolean output has no gradient, so it would drive nothing "
                        f"(compute in floating point, e.g. without .astype(int) or a comparison)")


# ----------------------------------------------------------------------------------- similarity
def similarity(fn: Callable, name: Optional[str] = None, *, smooth: bool = True, **params) -> Similarity:
    """A :class:`~uhn.models.similarity.Similarity` from ``fn(m, g, **params) -> scalar``.

    Its scores and gradient contraction are

        S[b, mu] = fn(M_mu, Q_b),    vjp(M, G, F)[b] = sum_mu F[b, mu] d fn(M_mu, g)/dg  at g = G[b]

    Parameters
    ----------
    fn : callable (m (D,), g (D,)) -> scalar, written with jax.numpy; "larger = more similar".
    name : the similarity's name (default ``fn.__name__``; required for a lambda). Built-in names
        are refused: code that special-cases e.g. ``"dot"`` (the analytic Jacobian) would misread it.
    smooth : False if fn has kinks (its gradient is then a subgradient), as for the built-ins.
    **params : real numbers or real arrays passed to fn as keyword arguments (arrays as float64,
        whatever JAX's global 64-bit flag) and shown in the name.

    The score and vjp refuse (ValueError) NaN/inf results for finite inputs, naming the query row:
    e.g. the gradient of sqrt(|m - g|^2) at m = g, where a smoothed form is needed.
    """
    _check_function(fn, "similarity fn")
    label = _label(fn, name, "autodiff.similarity")
    if label in _similarity_names("standard"):
        raise ValueError(f"autodiff.similarity name {label!r} is a built-in similarity; choose another "
                         f"name (code that special-cases the built-ins would misread it)")
    p = _params(params, f"similarity {label!r}")
    full = _with_params(label, p)

    def one(m, g):
        return fn(m, g, **p)

    row = jax.vmap(one, in_axes=(0, None))                        # (N, D), (D,) -> (N,)
    score_c = jax.jit(jax.vmap(row, in_axes=(None, 0)))           # (N, D), (B, D) -> (B, N)

    def vjp_one(M, g, f):
        _, pull = jax.vjp(lambda gg: row(M, gg), g)
        return pull(f)[0]

    vjp_c = jax.jit(jax.vmap(vjp_one, in_axes=(None, 0, 0)))      # -> (B, D)
    score_x, vjp_x = _x64(score_c), _x64(vjp_c)
    checked_widths: set = set()

    def check_width(D):
        if D not in checked_widths:
            _scalar_output(one, ((D,), (D,)), f"similarity fn {full!r}")
            checked_widths.add(D)

    def score(M, Q):
        check_width(M.shape[1])
        S = score_x(M, Q)
        _refuse_nonfinite(S, (M, Q), full, "score")
        return S

    def vjp(M, G, F):
        check_width(M.shape[1])
        out = vjp_x(M, G, F)
        _refuse_nonfinite(out, (M, G, F), full, "gradient sum_mu f_mu dS_mu/dg")
        return out

    return Similarity(full, score, vjp, smooth=bool(smooth), params=p)


def _refuse_nonfinite(out, inputs, who: str, what: str) -> None:
    bad = ~np.isfinite(out)
    if bad.any() and all(np.isfinite(a).all() for a in inputs):
        b = int(np.flatnonzero(bad.any(axis=1))[0])
        raise ValueError(f"autodiff similarity {who!r}: its {what} is NaN/inf at state row {b} for finite "
                         f"inputs (a kink or a singularity of fn there, e.g. sqrt or log at 0; use a "
                         f"smoothed form)")


# ----------------------------------------------------------------------------------- Lagrangian
class AutodiffLagrangian(Lagrangian):
    """L(x) = value_fn(x) per row, with dL/dx = jax.grad(value_fn) and (d^2 L/dx^2) u = jvp of the
    gradient, each vmapped over the batch; refused unless its Hessian is positive semidefinite on
    the probe states (dense Hessian, smallest eigenvalue >= -tol). Build it with :func:`lagrangian`."""

    kind = "autodiff"

    def __init__(self, value_fn: Callable, name: Optional[str] = None, probe=None,
                 size: Optional[int] = None, tol: float = 1e-10, **params):
        _check_function(value_fn, "Lagrangian value_fn")
        self.label = _label(value_fn, name, "autodiff.lagrangian")
        super().__init__()
        self.params = _params(params, f"Lagrangian {self.label!r}")   # floats and float64 arrays
        p = dict(self.params)

        def one(x):
            return value_fn(x, **p)

        grad_one = jax.grad(one)
        self._value = _x64(jax.jit(jax.vmap(one)))
        self._grad = _x64(jax.jit(jax.vmap(grad_one)))
        self._hvp = _x64(jax.jit(jax.vmap(lambda x, u: jax.jvp(grad_one, (x,), (u,))[1])))
        self._hess = _x64(jax.jit(jax.vmap(jax.hessian(one))))
        self._one = one
        self._widths: set = set()
        tol = check_tol(tol)
        P = self._probe(probe, size)
        P = self._rows(P)
        check_finite_values(self.name, P, value=self._value(P), gradient=self._grad(P))
        self.check_convex(P, tol=tol)

    @property
    def name(self) -> str:
        return f"autodiff({_with_params(self.label, self.params)})"

    def _probe(self, probe, size):
        if probe is not None:
            P = np.atleast_2d(np.asarray(probe, dtype=np.float64))
            if P.ndim != 2 or not np.isfinite(P).all():
                raise ValueError(f"Lagrangian {self.label!r}: probe must be finite states (P, K), got "
                                 f"shape {np.shape(probe)}")
            return P
        K = PROBE_SIZE if size is None else int(size)
        if K < 1:
            raise ValueError(f"Lagrangian {self.label!r}: size must be >= 1, got {size}")
        Z = np.random.default_rng(0).standard_normal((4, K))
        return np.concatenate([s * Z for s in PROBE_SCALES])

    def _rows(self, x):
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        K = x.shape[1]
        if K not in self._widths:
            _scalar_output(self._one, ((K,),), f"Lagrangian value_fn {self.name!r}")
            self._widths.add(K)
        return x

    def _finite(self, out, x, what):
        """out, refused (ValueError naming the row) where it is NaN/inf for a finite state row:
        a Lagrangian that leaves its domain at a visited state says so there, not as a stalled
        integration thousands of right-hand sides later."""
        bad = ~np.isfinite(out.reshape(len(out), -1)).all(axis=1) & np.isfinite(x).all(axis=1)
        if bad.any():
            b = int(np.flatnonzero(bad)[0])
            raise ValueError(f"Lagrangian {self.name}: its {what} is NaN/inf at state row {b} "
                             f"(x = {np.array2string(x[b], precision=3, threshold=8)}), a finite state: "
                             f"value_fn leaves its domain there (e.g. log or sqrt of a negative "
                             f"number; give a Lagrangian defined on every state the dynamics visit)")
        return out

    def value(self, x):
        """L(x) = value_fn(x) per row, (B,)."""
        x = self._rows(x)
        return self._finite(self._value(x), x, "value")

    def grad(self, x):
        """dL/dx per row (reverse-mode AD), (B, K)."""
        x = self._rows(x)
        return self._finite(self._grad(x), x, "gradient")

    def hvp(self, x, u):
        """(d^2 L/dx^2)(x) u per row (forward-over-reverse AD), (B, K)."""
        x = self._rows(x)
        return self._hvp(x, np.asarray(u, dtype=np.float64))

    def hessian(self, x):
        """Dense Hessians d^2 L/dx^2 at each row, (B, K, K)."""
        return self._hess(self._rows(x))

    def check_convex(self, x, n_probes: int = 8, seed: int = 0, tol: float = 1e-10) -> None:
        """Raise NonConvexLagrangianError if the Hessian at some row of x (B, K) has an eigenvalue
        below -(tol + HESSIAN_ULPS K eps64 |H|_F) (the second term: round-off of the AD Hessian and
        of eigvalsh). Dense Hessians for K <= DENSE_HESSIAN_MAX, in chunks; wider layers use the
        base class's check: random-direction probes u^T H u < -tol |u|^2 and the Lanczos estimate
        of the smallest eigenvalue (an upper bound on it, so a concave axis is found: issue 29).
        ``tol`` finite and >= 0."""
        tol = check_tol(tol)
        x = self._rows(x)
        B, K = x.shape
        if K > DENSE_HESSIAN_MAX:
            return super().check_convex(x, n_probes=n_probes, seed=seed, tol=tol)
        chunk = max(1, 2**20 // (K * K))
        for s in range(0, B, chunk):
            H = self.hessian(x[s:s + chunk])
            if not np.isfinite(H).all():
                b = s + int(np.flatnonzero(~np.isfinite(H).all(axis=(1, 2)))[0])
                raise NonConvexLagrangianError(
                    f"Lagrangian {self.name} has a NaN/inf Hessian at state row {b}: its energy is not a "
                    f"Lyapunov function there")
            lam = np.linalg.eigvalsh(H)[:, 0]
            allowed = tol + HESSIAN_ULPS * K * _EPS64 * np.linalg.norm(H, axis=(1, 2))
            bad = lam < -allowed
            if bad.any():
                b = int(np.flatnonzero(bad)[0])
                raise NonConvexLagrangianError(
                    f"Lagrangian {self.name} is not convex: its Hessian has eigenvalue {lam[b]:.3g} < 0 at "
                    f"state row {s + b} (x = {np.array2string(x[s + b], precision=3, threshold=8)}): its "
                    f"energy is not a Lyapunov function")


def lagrangian(value_fn: Callable, name: Optional[str] = None, *, probe=None, size: Optional[int] = None,
               tol: float = 1e-10, **params) -> AutodiffLagrangian:
    """A Lagrangian from its value alone: ``L(x) = value_fn(x, **params)`` for one row x (K,).

    Parameters
    ----------
    value_fn : callable x (K,) -> scalar, written with jax.numpy; must be convex.
    name : shown as ``autodiff(name(params))`` (default ``value_fn.__name__``; required for a lambda).
    probe : states (P, K) on which convexity is checked at construction; default
        standard-normal states of width ``size`` (default PROBE_SIZE) times each of PROBE_SCALES.
        Give ``probe`` (or ``size``) when value_fn only accepts one width.
    tol : an eigenvalue of the Hessian below -tol (plus its round-off) refuses the Lagrangian.
    **params : real numbers or real arrays passed to value_fn as keyword arguments, e.g. ``beta=5``
        or ``W=matrix`` (arrays as float64, whatever JAX's global 64-bit flag).

    Raises NonConvexLagrangianError if the Hessian has a negative eigenvalue at a probe state
    (dense eigenvalues up to DENSE_HESSIAN_MAX units, a Lanczos estimate of the smallest one
    beyond: :func:`uhn.dynamics.lagrangians.check_smallest_eigenvalue`); ValueError if its value
    or gradient is NaN/inf at a probe, or later at any finite state it is evaluated at.
    """
    return AutodiffLagrangian(value_fn, name=name, probe=probe, size=size, tol=tol, **params)


__all__ = ["similarity", "lagrangian", "AutodiffLagrangian", "HESSIAN_ULPS", "DENSE_HESSIAN_MAX",
           "PROBE_SCALES", "PROBE_SIZE"]
