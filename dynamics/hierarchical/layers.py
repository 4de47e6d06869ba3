"""One layer of a hierarchical associative memory (docs/theory.md §11): :class:`Layer`.

A layer a has a state x_a (B, n_a), a convex Lagrangian L_a whose gradient is its rates
g_a = dL_a/dx_a, a time constant tau_a, an optional constant bias (input current) b_a, and may be
clamped (its state held at its initial value). Its own part of the energy is

    E_a = x_a . g_a - L_a(x_a) - b_a . g_a

and, free, it moves as tau_a dx_a/dt = -dE/dg_a = -(x_a - b_a) - sum_s dE_s/dg_a over the synapses
s that touch it (uhn.dynamics.hierarchical.synapses).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from uhn.models.validation import check_finite, int_param, require_positive

from uhn.dynamics.hierarchical.kernels import shifted_scores
from uhn.dynamics.lagrangians import Lagrangian, LogSumExp, NonConvexLagrangianError, quadratic

#: the probe states on which a layer's Lagrangian is checked for convexity at construction:
#: PROBE_ROWS standard-normal rows times each scale (the visited states are re-checked by
#: verify_energy)
PROBE_SCALES = (0.1, 1.0, 3.0)
PROBE_ROWS = 16


class Layer:
    """A layer: ``name``, ``size`` n, Lagrangian (default quadratic: g = x), ``tau`` > 0, ``bias``
    (n,) or None (= 0), ``clamped``.

    The Lagrangian is any :class:`~uhn.dynamics.lagrangians.Lagrangian`: a built-in, an
    ``elementwise(F, dF, d2F)`` or one from ``uhn.dynamics.autodiff.lagrangian``. It must be convex
    (the energy's Lyapunov property rests on it, docs/theory.md §11): it is probed with
    ``check_convex`` at construction on random states of the layer's width, and a non-convex
    Lagrangian is refused with NonConvexLagrangianError naming the layer.
    """

    def __init__(self, name: str, size: int, lagrangian: Optional[Lagrangian] = None, *,
                 tau: float = 1.0, bias=None, clamped: bool = False):
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"layer name must be an identifier string, got {name!r}")
        self.name = name
        self.size = int_param(size, f"size of layer {name!r}", low=1)
        lag = quadratic() if lagrangian is None else lagrangian
        if not isinstance(lag, Lagrangian):
            raise TypeError(f"layer {name!r}: lagrangian must be a uhn.dynamics.lagrangians.Lagrangian, "
                            f"got {type(lag).__name__}")
        self.lagrangian = lag
        self.tau = require_positive(tau, f"tau of layer {name!r}", "time constant")
        if bias is not None:
            bias = np.array(bias, dtype=np.float64)
            if bias.shape != (self.size,):
                raise ValueError(f"bias of layer {name!r} must have shape ({self.size},), got {bias.shape}")
            check_finite(bias, f"bias of layer {name!r}")
            bias.flags.writeable = False
        self.bias = bias
        if not isinstance(clamped, (bool, np.bool_)):
            raise TypeError(f"clamped of layer {name!r} must be a bool, got {type(clamped).__name__}")
        self.clamped = bool(clamped)
        self.check_convex(probe_states(self.size))
        #: softmax rates computed here from views of the packed state (LogSumExp itself, not a subclass)
        self.softmax_beta = lag.beta if type(lag) is LogSumExp else None

    def __repr__(self) -> str:
        extra = (", clamped" if self.clamped else "") + (", bias" if self.bias is not None else "")
        return f"Layer({self.name!r}, {self.size}, {self.lagrangian.name}, tau={self.tau:g}{extra})"

    def describe(self) -> dict:
        """The layer's parameters, for result files."""
        return {"size": self.size, "lagrangian": self.lagrangian.name, "tau": self.tau,
                "bias": self.bias is not None, "clamped": self.clamped}

    def check_convex(self, x) -> None:
        """NonConvexLagrangianError naming the layer unless u^T Hess(L)(x) u >= 0 at the states x
        (Lagrangian.check_convex)."""
        try:
            self.lagrangian.check_convex(x)
        except NonConvexLagrangianError as err:
            raise NonConvexLagrangianError(f"layer {self.name!r}: {err}") from None

    def rates(self, x):
        """g = dL/dx, (B, n)."""
        return self.lagrangian.grad(x)

    def rates_of(self, Y, sl: slice):
        """g = dL/dx of the block x = Y[:, sl] of packed states Y (B, width), C-contiguous
        float64. A log_sum_exp layer: softmax(beta x) = exp(s) / sum exp(s) with
        s = beta x - max_row(beta x) from one compiled pass over the block
        (uhn.dynamics.hierarchical.kernels.shifted_scores): LogSumExp.grad's operations in its
        order, bit for bit; a row it cannot shift raises LogSumExp.grad's overflow error."""
        x = Y[:, sl]
        if self.softmax_beta is None:
            return self.lagrangian.grad(x)
        f = np.empty(x.shape)
        if not shifted_scores(Y, sl, self.softmax_beta, f):
            return self.lagrangian.grad(x)          # raises, naming beta and max |x|
        np.exp(f, out=f)
        f /= f.sum(axis=1, keepdims=True)
        return f

    def current(self, b=None):
        """The layer's constant input: ``b`` ((n,) or (B, n)) where given, else its bias (None: 0)."""
        return self.bias if b is None else b

    def energy(self, x, g, b=None):
        """x . g - L(x) - b . g, (B,): the layer's own energy term (g = its rates at x; b: the
        input of :meth:`current`)."""
        E = self.lagrangian.legendre(x)
        b = self.current(b)
        if b is not None:
            E = E - np.einsum("bk,bk->b", np.broadcast_to(b, g.shape), g)
        return E

    def energy_size(self, x, g, b=None):
        """(B,) the sum of |each term| of :meth:`energy`: its round-off is a few ulps of this."""
        size = np.einsum("bk,bk->b", np.abs(x), np.abs(g)) + self.lagrangian.value_size(x)
        b = self.current(b)
        if b is not None:
            size = size + np.einsum("bk,bk->b", np.abs(np.broadcast_to(b, g.shape)), np.abs(g))
        return size


def probe_states(size: int, seed: int = 0) -> np.ndarray:
    """(PROBE_ROWS len(PROBE_SCALES), size) seeded standard-normal states at each of PROBE_SCALES."""
    z = np.random.default_rng(seed).standard_normal((PROBE_ROWS, size))
    return np.concatenate([s * z for s in PROBE_SCALES])
