"""The synapses of a hierarchical associative memory (docs/theory.md §11): each joins two layers a
and b and adds one energy term E_s(g_a, g_b) of their rates; the layers feel it as the drives
-dE_s/dg_a and -dE_s/dg_b. One energy per synapse is what makes the coupling symmetric.

- :class:`Linear`: E_s = -g_a^T W g_b for any real W (n_a, n_b); drives W g_b and W^T g_a.
- :class:`Similarity`: the UHN synapse E_s = -f . S(g), S_mu(g) = sim(M_mu, g): the lower layer's
  rates g against the stored memories M (N, n_a), weighted by the memory layer's rates f; drives
  sum_mu f_mu dS_mu/dg (the similarity's vjp) and S(g). Every differentiable similarity of the
  two-layer Network.
- :class:`Custom`: any E_s(g_a, g_b) written with jax.numpy, differentiated by JAX (as
  uhn.dynamics.autodiff does for similarities and Lagrangians).

Every synapse has ``a``, ``b`` (layer names), ``energy(ga, gb) -> (B,)``, ``drives(ga, gb) ->
(-dE/dga, -dE/dgb)``, and the sizes of their terms (``energy_size``, ``drive_sizes``) from which
verify_energy estimates round-off.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import numpy as np

from uhn.models.arrays import abs_rowdot
from uhn.models.similarity import Similarity as SimilarityRecord
from uhn.models.similarity import bind_private, differentiable_names, get_similarity
from uhn.models.validation import as_matrix, check_finite


class Synapse:
    """Base class: the two layer names and the shape (n_a, n_b) the synapse needs (None: any)."""

    kind = "synapse"

    def __init__(self, a: str, b: str):
        for end, name in (("a", a), ("b", b)):
            if not isinstance(name, str):
                raise TypeError(f"synapse end {end} must be a layer name (str), got {type(name).__name__}")
        if a == b:
            raise ValueError(f"synapse {self.kind} joins layer {a!r} to itself; a synapse joins two "
                             f"different layers (a self-coupling g^T W g belongs in the layer's Lagrangian)")
        self.a, self.b = a, b

    @property
    def shape(self):
        return (None, None)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.a!r}, {self.b!r})"

    def describe(self) -> dict:
        return {"kind": self.kind, "a": self.a, "b": self.b}

    def check_sizes(self, na: int, nb: int) -> None:
        """ValueError naming the synapse unless it fits layers of sizes na and nb."""
        want = self.shape
        for end, name, n, w in (("a", self.a, na, want[0]), ("b", self.b, nb, want[1])):
            if w is not None and n != w:
                raise ValueError(f"shape mismatch: {self!r} needs layer {name!r} of size {w}, "
                                 f"it has {n}")

    def check_rates(self, lagrangian_a, lagrangian_b) -> None:
        """Refuse the layers' Lagrangians where the synapse cannot read their rates (default: any)."""

    def drives_into(self, ga, gb, oa, ob, add_a: bool, add_b: bool) -> None:
        """Write (or, with ``add_*``, add) the drives -dE/dga, -dE/dgb into the arrays oa, ob (views
        of the integrator's output: no temporaries of their size where the synapse can avoid them)."""
        for o, d, add in zip((oa, ob), self.drives(ga, gb), (add_a, add_b)):
            if add:
                o += d
            else:
                o[...] = d


class Linear(Synapse):
    """E_s = -g_a^T W g_b with any real W (n_a, n_b); drives W g_b on a, W^T g_a on b."""

    kind = "linear"

    def __init__(self, a: str, b: str, W):
        super().__init__(a, b)
        W = np.array(W, dtype=np.float64)
        if W.ndim != 2:
            raise ValueError(f"weights W of {self!r} must be a 2-D (n_a, n_b) array, got shape {W.shape}")
        check_finite(W, f"weights W of {self!r}")
        W.flags.writeable = False
        self.W = W
        self.WT = np.ascontiguousarray(W.T)
        self.WT.flags.writeable = False
        self.absW, self.absWT = np.abs(W), np.abs(self.WT)

    @property
    def shape(self):
        return self.W.shape

    def energy(self, ga, gb):
        return -np.einsum("bk,bk->b", ga, gb @ self.WT)

    def energy_size(self, ga, gb):
        return abs_rowdot(ga, np.abs(gb) @ self.absWT)

    def drives(self, ga, gb):
        return gb @ self.WT, ga @ self.W

    def drives_into(self, ga, gb, oa, ob, add_a: bool, add_b: bool) -> None:
        for o, g, W, add in ((oa, gb, self.WT, add_a), (ob, ga, self.W, add_b)):
            if add:
                o += g @ W
            else:
                np.matmul(g, W, out=o)

    def drive_sizes(self, ga, gb):
        return np.abs(gb) @ self.absWT, np.abs(ga) @ self.absW


class Similarity(Synapse):
    """E_s = -f . S(g): g the rates of the lower layer ``a`` (n_a = D), f those of the memory layer
    ``b`` (n_b = N), S_mu(g) = sim(M_mu, g) with memories M (N, D); drives sum_mu f_mu dS_mu/dg on
    a, S(g) on b. ``similarity``: a name or a Similarity with a gradient (default "dot")."""

    kind = "similarity"

    def __init__(self, a: str, b: str, memories, similarity: Union[str, SimilarityRecord, None] = None):
        super().__init__(a, b)
        M, _ = as_matrix(memories, f"memories of {type(self).__name__}({a!r}, {b!r})", ndim_ok=(2,))
        sim = get_similarity("dot" if similarity is None else similarity)
        if not sim.differentiable:
            raise ValueError(f"similarity {sim.name!r} has no gradient dS/dg, so it cannot drive the "
                             f"dynamics; differentiable similarities: {', '.join(differentiable_names())}")
        if sim.binary_only:
            raise ValueError(f"similarity {sim.name!r} needs binary states; the dynamics are continuous")
        M = np.asarray(M, dtype=np.float64)
        self.sim, self.M, _ = bind_private(sim, M)
        self.name = sim.name
        #: the standard dot similarity (S = g @ M^T, vjp f @ M): drives_into writes its products in place
        self.dot = sim.name == "dot" and sim.prepare is None
        self.norm_M = np.linalg.norm(self.M, axis=1)
        self.absM = np.abs(self.M)

    @property
    def shape(self):
        return (self.M.shape[1], self.M.shape[0])

    def describe(self) -> dict:
        return {**super().describe(), "similarity": self.name}

    def __repr__(self) -> str:
        return f"Similarity({self.a!r}, {self.b!r}, {self.name})"

    def check_rates(self, lagrangian_a, lagrangian_b) -> None:
        """A similarity that reads the rates as a distribution needs g = dL_a/dx >= 0."""
        if self.sim.nonnegative_only:
            probe = np.linspace(-10.0, 10.0, 9)[None, :]
            g = lagrangian_a.grad(probe)
            if g.min() < 0:
                raise ValueError(f"similarity {self.name!r} of {self!r} reads the rates of layer "
                                 f"{self.a!r} as a distribution, but its Lagrangian "
                                 f"{lagrangian_a.name} gives g = {g.min():.3g} < 0; use positive "
                                 f"rates, e.g. softplus()")

    def scores(self, g):
        """S(g) = sim(M, g), (B, N)."""
        return self.sim.score(self.M, g)

    def energy(self, ga, gb):
        return -np.einsum("bk,bk->b", gb, self.scores(ga))

    def span(self, ga):
        """(|m_mu| + |g|)^2, (B, N): what a score adds before its terms cancel."""
        return (self.norm_M[None, :] + np.linalg.norm(ga, axis=1)[:, None]) ** 2

    def energy_size(self, ga, gb):
        return abs_rowdot(gb, np.abs(self.scores(ga)) + self.span(ga))

    def drives(self, ga, gb):
        return self.sim.vjp(self.M, ga, gb), self.scores(ga)

    def drives_into(self, ga, gb, oa, ob, add_a: bool, add_b: bool) -> None:
        """The dot similarity's drives f @ M and g @ M^T as matrix products into the outputs (the
        products Similarity.drives computes, the same BLAS calls); others as Synapse.drives_into."""
        if not self.dot:
            return super().drives_into(ga, gb, oa, ob, add_a, add_b)
        for o, g, W, add in ((oa, gb, self.M, add_a), (ob, ga, self.M.T, add_b)):
            if add:
                o += g @ W
            else:
                np.matmul(g, W, out=o)

    def drive_sizes(self, ga, gb):
        af = np.abs(gb)
        return (af @ self.absM + af.sum(1, keepdims=True) * np.abs(ga),
                np.abs(self.scores(ga)) + self.span(ga))


class Custom(Synapse):
    r"""E_s = fn(g_a, g_b, \*\*params) for one row of each layer's rates, written with jax.numpy and
    differentiated by JAX (float64); the drives are -grad fn. ``name`` labels it (default
    fn.__name__). ``shape``: (n_a, n_b) it needs, or None for any."""

    kind = "custom"

    def __init__(self, a: str, b: str, fn: Callable, name: Optional[str] = None, shape=None, **params):
        super().__init__(a, b)
        if not callable(fn):
            raise TypeError(f"custom synapse energy fn must be callable, got {type(fn).__name__}")
        import jax          # the optional autodiff dependency (uhn[autodiff]), loaded on use
        self._jax = jax
        self.label = name or getattr(fn, "__name__", "<lambda>")
        if self.label == "<lambda>":
            raise ValueError("a custom synapse from a lambda needs a name")
        self.params = {k: float(v) for k, v in params.items()}
        self._shape = (None, None) if shape is None else tuple(int(n) for n in shape)

        def one(ga, gb):
            return fn(ga, gb, **self.params)
        self._energy = jax.jit(jax.vmap(one))
        self._grads = jax.jit(jax.vmap(jax.grad(one, argnums=(0, 1))))

    @property
    def shape(self):
        return self._shape

    def describe(self) -> dict:
        return {**super().describe(), "name": self.label, **self.params}

    def __repr__(self) -> str:
        return f"Custom({self.a!r}, {self.b!r}, {self.label})"

    def _call(self, f, ga, gb, what):
        with self._jax.enable_x64(True):
            out = f(np.asarray(ga, dtype=np.float64), np.asarray(gb, dtype=np.float64))
            out = [np.array(o, dtype=np.float64) for o in (out if isinstance(out, tuple) else (out,))]
        for o in out:
            if o.ndim == 0 or o.shape[0] != ga.shape[0]:
                raise ValueError(f"custom synapse {self.label!r}: fn must return one scalar per row "
                                 f"of rates, got an output of shape {o.shape[1:]} per row")
            if not np.all(np.isfinite(o)):
                raise ValueError(f"custom synapse {self.label!r}: {what} is not finite at finite rates "
                                 f"(row {int(np.flatnonzero(~np.isfinite(o).reshape(len(o), -1).all(1))[0])})")
        return out

    def energy(self, ga, gb):
        E, = self._call(self._energy, ga, gb, "energy")
        if E.ndim != 1:
            raise ValueError(f"custom synapse {self.label!r}: fn must return a scalar, got shape {E.shape[1:]}")
        return E

    def energy_size(self, ga, gb):
        """|E_s| + |ga| . |dE_s/dga| + |gb| . |dE_s/dgb|: the terms of fn are unknown, and for an
        energy homogeneous in the rates (bilinear, polynomial) g . grad E measures them."""
        da, db = self.drives(ga, gb)
        return np.abs(self.energy(ga, gb)) + abs_rowdot(ga, da) + abs_rowdot(gb, db)

    def drives(self, ga, gb):
        da, db = self._call(self._grads, ga, gb, "gradient")
        return -da, -db

    def drive_sizes(self, ga, gb):
        da, db = self.drives(ga, gb)
        return np.abs(da), np.abs(db)
