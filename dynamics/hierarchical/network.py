"""A hierarchical associative memory: :class:`HierarchicalNetwork`, layers joined by synapses on
any graph (a chain, a tree, a cycle), with one energy that is a Lyapunov function of its
dynamics (docs/theory.md §11; Krotov 2021, "Hierarchical Associative Memory").

    E = sum_a [x_a . g_a - L_a(x_a) - b_a . g_a] + sum_s E_s(g_a(s), g_b(s)),
    tau_a dx_a/dt = -dE/dg_a = -(x_a - b_a) - sum_{s at a} dE_s/dg_a      (free layers),
    dx_a/dt = 0                                                             (clamped layers),
    dE/dt = -sum_{a free} tau_a xdot_a^T Hess(L_a)(x_a) xdot_a <= 0        (convex L_a).

The network has the interface of the two-layer :class:`~uhn.dynamics.network.Network` that the
integrators, verify_energy, the fixed-point analysis and io use, on a packed state: the first
layer is the *query layer* (``v``, D = its size; the queries set its initial state and an input
current I replaces its bias), the others follow it in order as ``h`` (N = the sum of their
sizes). :meth:`HierarchicalNetwork.layer_states` splits a state or a trajectory's samples into
one array per layer. numpy, float64.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from uhn.models.arrays import abs_rowdot, namespace
from uhn.models.validation import as_matrix, check_finite

from uhn.dynamics.hierarchical.kernels import finish_layer
from uhn.dynamics.hierarchical.layers import Layer
from uhn.dynamics.hierarchical.synapses import Similarity, Synapse
from uhn.dynamics.lagrangians import LogSumExp, quadratic

_EPS64 = np.finfo(np.float64).eps


class HierarchicalNetwork:
    """Layers (:class:`~uhn.dynamics.hierarchical.layers.Layer`, the first one the query layer)
    and synapses (:mod:`uhn.dynamics.hierarchical.synapses`) between them, with the energy and
    equations of motion of the module docstring.

    Refused: duplicate layer names, a synapse naming a layer that is not there or not fitting
    its size, a similarity synapse on rates it cannot read; a non-convex Lagrangian is refused
    by its Layer."""

    def __init__(self, layers: Sequence[Layer], synapses: Sequence[Synapse]):
        layers, synapses = list(layers), list(synapses)
        if len(layers) < 2:
            raise ValueError(f"a hierarchical network needs at least two layers, got {len(layers)}")
        for L in layers:
            if not isinstance(L, Layer):
                raise TypeError(f"layers must be uhn.dynamics.hierarchical.layers.Layer, got {type(L).__name__}")
        names = [L.name for L in layers]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate layer names {dup}")
        self.layers, self.index = layers, {n: i for i, n in enumerate(names)}
        self.synapses = synapses
        for s in synapses:
            if not isinstance(s, Synapse):
                raise TypeError(f"synapses must be uhn.dynamics.hierarchical.synapses.Synapse, got "
                                f"{type(s).__name__}")
            for end in (s.a, s.b):
                if end not in self.index:
                    raise ValueError(f"{s!r} names layer {end!r}, which the network does not have "
                                     f"(layers: {names})")
            A, B = layers[self.index[s.a]], layers[self.index[s.b]]
            s.check_sizes(A.size, B.size)
            s.check_rates(A.lagrangian, B.lagrangian)
        self.ends = [(self.index[s.a], self.index[s.b]) for s in synapses]
        self.sizes = [L.size for L in layers]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)
        self.slices = [slice(int(o), int(o) + n) for o, n in zip(self.offsets, self.sizes)]
        self.xp = namespace()       # numpy: the integrators' fast paths
        self.I = layers[0].bias
        self._taus = np.repeat([L.tau for L in layers], self.sizes)

    @classmethod
    def two_layer(cls, memories, similarity=None, L_v=None, L_h=None, tau_v: float = 1.0,
                  tau_h: float = 0.1, I=None) -> "HierarchicalNetwork":
        """The two-layer Network (docs/theory.md §2) built from layers and one similarity synapse:
        feature layer "v" (D, L_v, tau_v, bias I), memory layer "h" (N, L_h, tau_h), synapse
        -f . S(g); the arguments and defaults of Network."""
        M, _ = as_matrix(memories, "memories", ndim_ok=(2,))
        N, D = M.shape
        v = Layer("v", D, quadratic() if L_v is None else L_v, tau=tau_v, bias=I)
        h = Layer("h", N, LogSumExp(1.0) if L_h is None else L_h, tau=tau_h)
        return cls([v, h], [Similarity("v", "h", M, similarity)])

    # ------------------------------------------------------------------ sizes and repr
    @property
    def D(self) -> int:
        """Size of the query layer (the ``v`` part of a state)."""
        return self.sizes[0]

    @property
    def N(self) -> int:
        """Sum of the sizes of the other layers (the ``h`` part of a state)."""
        return int(self.offsets[-1]) - self.sizes[0]

    @property
    def tau_v(self) -> float:
        """The query layer's time constant."""
        return self.layers[0].tau

    @property
    def tau_h(self) -> float:
        """The smallest time constant of the other layers (the stiffest decay of the ``h`` part:
        what verify_energy's error estimate of a fixed-step run reads)."""
        return min(L.tau for L in self.layers[1:])

    @property
    def width(self) -> int:
        return int(self.offsets[-1])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float64)

    def __repr__(self) -> str:
        layers = ", ".join(f"{L.name}({L.size}, {L.lagrangian.name}{', clamped' if L.clamped else ''})"
                           for L in self.layers)
        return f"HierarchicalNetwork(layers=[{layers}], synapses={self.synapses!r})"

    def describe(self) -> dict:
        """The parameters that define the network, for result files."""
        return {"network": "hierarchical", "D": self.D, "N": self.N,
                "layers": {L.name: L.describe() for L in self.layers},
                "synapses": [s.describe() for s in self.synapses],
                "input_current": self.I is not None}

    def on_host(self) -> "HierarchicalNetwork":
        """Itself: the network computes in numpy."""
        return self

    def require_numpy(self, who: str) -> None:
        """Nothing to refuse: the network computes in numpy."""

    def time_constants(self, width: int) -> np.ndarray:
        """(width,) tau of each state component, in the packed layout (the driver's rest test)."""
        if width != self.width:
            raise ValueError(f"a hierarchical network has no adiabatic reduction; states have "
                             f"{self.width} components, not {width}")
        return self._taus

    # ------------------------------------------------------------------ states
    def split(self, Y) -> list:
        """The per-layer blocks (views) of packed states Y (..., width)."""
        return [Y[..., sl] for sl in self.slices]

    def layer_states(self, v, h=None) -> dict:
        """{layer name: its states} from packed states Y (..., width), or from (v, h) (..., D) and
        (..., N) (e.g. a Trajectory's ``traj.v``, ``traj.h``: (T, B, n_a) per layer)."""
        Y = np.asarray(v) if h is None else np.concatenate([np.asarray(v), np.asarray(h)], axis=-1)
        if Y.shape[-1] != self.width:
            raise ValueError(f"shape mismatch: states have {Y.shape[-1]} components, the network "
                             f"{self.width} ({', '.join(f'{L.name} {L.size}' for L in self.layers)})")
        return {L.name: Y[..., sl] for L, sl in zip(self.layers, self.slices)}

    def layer_dataset(self, traj):
        """An xarray Dataset of a trajectory with a variable per layer, ``x_<name>`` (time, query,
        unit_<name>), its rates ``g_<name>``, and E, dE/dt (time, query): for analysis and
        plotting (a saved trajectory of this network has the same x_<name> variables: uhn.dynamics.io)."""
        import xarray as xr         # the optional netCDF dependency (uhn[io]), loaded on use
        data = {}
        for L, x in zip(self.layers, self.split(np.concatenate([traj.v, traj.h], axis=-1))):
            dims = ("time", "query", f"unit_{L.name}")
            data[f"x_{L.name}"] = (dims, np.asarray(x))
            g = L.rates(np.asarray(x, dtype=np.float64).reshape(-1, L.size)).reshape(x.shape)
            data[f"g_{L.name}"] = (dims, g)
        data["E"] = (("time", "query"), np.asarray(traj.E))
        data["dEdt"] = (("time", "query"), np.asarray(traj.dEdt))
        return xr.Dataset(data, coords={"time": np.asarray(traj.t)},
                          attrs={"network": repr(self), "method": traj.method})

    def pack_layers(self, states: dict) -> np.ndarray:
        """Packed states (B, width) from {layer name: (B, n_a)} naming every layer."""
        missing = [L.name for L in self.layers if L.name not in states]
        extra = sorted(set(states) - set(self.index))
        if missing or extra:
            raise ValueError(f"pack_layers needs exactly the layers {list(self.index)}; missing "
                             f"{missing}, unknown {extra}")
        return np.concatenate([np.atleast_2d(np.asarray(states[L.name], dtype=np.float64))
                               for L in self.layers], axis=1)

    def check_state(self, v, h=None):
        """(v, h) as 2-D float64 arrays of widths D and N, finite."""
        v = np.atleast_2d(np.asarray(v, dtype=np.float64))
        if v.ndim != 2 or v.shape[1] != self.D:
            raise ValueError(f"shape mismatch: query-layer state has shape {v.shape}, layer "
                             f"{self.layers[0].name!r} has {self.D} units")
        check_finite(v, "query-layer state v")
        if h is None:
            return v
        h = np.atleast_2d(np.asarray(h, dtype=np.float64))
        if h.shape != (v.shape[0], self.N):
            raise ValueError(f"shape mismatch: the other layers' state h has shape {h.shape}, "
                             f"expected {(v.shape[0], self.N)}")
        check_finite(h, "state h of the other layers")
        return v, h

    def input_current(self, I, B, dtype=None):
        """The query layer's input as (B, D): ``I`` if given, else its bias, else zeros."""
        I = self.I if I is None else I
        if I is None:
            return np.zeros((B, self.D))
        return np.broadcast_to(np.asarray(I, dtype=np.float64), (B, self.D))

    def initial_state(self, Q, h0=None):
        """x_query(0) = q; the other layers, unless ``h0`` (B, N) is given, feed forward in layer
        order: x_a(0) = b_a + sum of the drives -dE_s/dg_a of the synapses from layers already set
        (evaluated with zero rates on the layer being set; for the two-layer network h(0) = S(g(q)),
        as Network.initial_state). Returns (v0, h0)."""
        Q, _ = as_matrix(Q, "queries", ndim_ok=(1, 2))
        Q = np.atleast_2d(np.asarray(Q, dtype=np.float64))
        if Q.shape[1] != self.D:
            raise ValueError(f"shape mismatch: queries have {Q.shape[1]} entries, the query layer "
                             f"{self.layers[0].name!r} has {self.D}")
        check_finite(Q, "queries")
        v0 = Q.copy()
        if h0 is not None:
            return self.check_state(v0, np.array(h0, dtype=np.float64, copy=True))
        B = len(v0)
        X = [v0] + [None] * (len(self.layers) - 1)
        G = [self.layers[0].rates(v0)] + [None] * (len(self.layers) - 1)
        for i in range(1, len(self.layers)):
            L = self.layers[i]
            x = np.zeros((B, L.size)) if L.bias is None else np.tile(L.bias, (B, 1))
            for s, (a, b) in zip(self.synapses, self.ends):
                if i in (a, b) and G[b if a == i else a] is not None:
                    da, db = s.drives(G[a] if a != i else np.zeros((B, self.sizes[a])),
                                      G[b] if b != i else np.zeros((B, self.sizes[b])))
                    x += da if a == i else db
            X[i], G[i] = x, L.rates(x)
        return self.check_state(v0, np.concatenate(X[1:], axis=1))

    # ------------------------------------------------------------------ dynamics
    def _rates(self, Y):
        """Each layer's rates at packed states Y (B, width), C-contiguous float64."""
        return [L.rates_of(Y, sl) for L, sl in zip(self.layers, self.slices)]

    def velocity(self, Y, I=None, adiabatic: bool = False, out=None) -> np.ndarray:
        """dY/dt (B, width) at packed states Y (B, width); ``I`` (B, D) or (D,) replaces the
        query layer's bias. No adiabatic form (ValueError)."""
        if adiabatic:
            raise ValueError("a hierarchical network has no adiabatic reduction (h = S(g) is the "
                             "two-layer Network's); integrate it with adiabatic=False")
        Y = np.ascontiguousarray(Y, dtype=np.float64)
        if Y.ndim == 1:
            F = self.velocity(Y[None], I)[0]
            if out is None:
                return F
            out[...] = F
            return out
        return self._velocity(Y, self._rates(Y), I, out)

    def _velocity(self, Y, G, I, out=None):
        """The velocity at packed states Y (C-contiguous float64) into ``out`` (B, width; a fresh
        array if None): each layer's drives written into its block of ``out`` by the synapses
        (Synapse.drives_into), then - x + b and / tau in place in one pass
        (uhn.dynamics.hierarchical.kernels.finish_layer)."""
        if out is None or not (out.flags.c_contiguous and out.dtype == np.float64):
            if out is not None:
                out[...] = self._velocity(Y, G, I)
                return out
            out = np.empty_like(Y)
        outs = self.split(out)
        touched = [False] * len(self.layers)
        for s, (a, b) in zip(self.synapses, self.ends):
            s.drives_into(G[a], G[b], outs[a], outs[b], touched[a], touched[b])
            touched[a] = touched[b] = True
        for i, (L, sl, o) in enumerate(zip(self.layers, self.slices, outs)):
            if L.clamped:
                o[...] = 0.0
            else:
                finish_layer(out, Y, sl, L.current(I if i == 0 else None), L.tau, touched[i])
        return out

    def rhs(self, v, h, I=None, out=None):
        """(dv/dt, dh/dt), (B, D) and (B, N), of the packed state [v, h]."""
        Y = np.concatenate([np.atleast_2d(v), np.atleast_2d(h)], axis=1)
        F = self.velocity(Y, I, out=out)
        return F[:, :self.D], F[:, self.D:]

    def rhs_adiabatic(self, v, I=None, out=None):
        """Refused: no adiabatic reduction."""
        return self.velocity(v, I, adiabatic=True)

    def residual(self, v, h=None, I=None, adiabatic: bool = False) -> np.ndarray:
        """(B,) max_i |dy_i/dt| at (v, h): 0 at a fixed point."""
        if adiabatic or h is None:
            return self.velocity(v, I, adiabatic=True)
        return np.abs(np.concatenate(self.rhs(v, h, I), axis=1)).max(axis=1)

    def _energy(self, X, G, I):
        E = 0.0
        for i, (L, x, g) in enumerate(zip(self.layers, X, G)):
            E = E + L.energy(x, g, I if i == 0 else None)
        for s, (a, b) in zip(self.synapses, self.ends):
            E = E + s.energy(G[a], G[b])
        return E

    def _dEdt(self, X, F):
        dE = 0.0
        for L, x, f in zip(self.layers, X, self.split(F)):
            if not L.clamped:
                dE = dE - L.tau * L.lagrangian.curvature(x, f)
        return dE

    def _packed(self, v, h):
        return np.concatenate([np.atleast_2d(np.asarray(v, dtype=np.float64)),
                               np.atleast_2d(np.asarray(h, dtype=np.float64))], axis=1)

    def energy(self, v, h, I=None):
        """E of the module docstring at (v, h), (B,), float64."""
        Y = self._packed(v, h)
        return self._energy(self.split(Y), self._rates(Y), I)

    def dEdt(self, v, h, I=None):
        """dE/dt = -sum_{a free} tau_a xdot_a^T Hess(L_a) xdot_a at (v, h), (B,)."""
        Y = self._packed(v, h)
        return self._dEdt(self.split(Y), self.velocity(Y, I))

    def energy_and_dEdt(self, v, h, I=None):
        """(E, dE/dt) at (v, h) from one evaluation of the rates and drives."""
        Y = self._packed(v, h)
        X, G = self.split(Y), self._rates(Y)
        return self._energy(X, G, I), self._dEdt(X, self._velocity(Y, G, I))

    def energy_layers(self, v, h, I=None) -> dict:
        """{layer name or synapse repr: its energy term (B,)}: the parts E sums."""
        Y = self._packed(v, h)
        X, G = self.split(Y), self._rates(Y)
        parts = {L.name: L.energy(x, g, I if i == 0 else None)
                 for i, (L, x, g) in enumerate(zip(self.layers, X, G))}
        parts.update({repr(s): s.energy(G[a], G[b]) for s, (a, b) in zip(self.synapses, self.ends)})
        return parts

    # ------------------------------------------------------------------ verify_energy's estimates
    def energy_and_size(self, Y, I, adiabatic: bool = False):
        """(E, size(E)) at packed states Y (B, width): size is the sum of |each term| E adds
        (verify_energy's round-off estimate is a few ulps of it)."""
        if adiabatic:
            self.velocity(Y, adiabatic=True)            # refused, with its message
        Y = np.ascontiguousarray(Y, dtype=np.float64)
        X, G = self.split(Y), self._rates(Y)
        size = 0.0
        for i, (L, x, g) in enumerate(zip(self.layers, X, G)):
            size = size + L.energy_size(x, g, I if i == 0 else None)
        for s, (a, b) in zip(self.synapses, self.ends):
            size = size + s.energy_size(G[a], G[b])
        return self._energy(X, G, I), size

    def dEdt_and_size(self, Y, F, I, adiabatic: bool, ulps: float):
        """(dE/dt, size, round-off) at packed states Y with velocity F, (B,) each: size is
        sum_a tau_a |xdot_a| . hvp_size(x_a, xdot_a); the round-off ulps eps size plus what the
        velocity's own round-off dF_a = ulps eps (drive sizes + |x_a| + |b_a|) / tau_a adds to the
        quadratic forms, 2 tau_a hvp_size(F_a) . |dF_a| + tau_a hvp_size(dF_a) . |dF_a|."""
        Y = np.ascontiguousarray(Y, dtype=np.float64)
        X, Fs = self.split(Y), self.split(F)
        G = self._rates(Y)
        dsize = [np.zeros_like(x) for x in X]
        for s, (a, b) in zip(self.synapses, self.ends):
            sa, sb = s.drive_sizes(G[a], G[b])
            dsize[a] += sa
            dsize[b] += sb
        size = prop = 0.0
        for i, (L, x, f) in enumerate(zip(self.layers, X, Fs)):
            if L.clamped:
                continue
            b = L.current(I if i == 0 else None)
            err = ulps * _EPS64 * (dsize[i] + np.abs(x) + (0.0 if b is None else np.abs(b))) / L.tau
            H = L.lagrangian.hvp_size(x, f)
            size = size + L.tau * abs_rowdot(f, H)
            prop = prop + L.tau * (2 * abs_rowdot(H, err) + abs_rowdot(L.lagrangian.hvp_size(x, err), err))
        an = self._dEdt(X, F)
        return an, size, ulps * _EPS64 * size + prop

    def check_convex(self, v, h=None) -> None:
        """NonConvexLagrangianError naming the layer unless every layer's Lagrangian has a PSD
        Hessian at its block of the state rows (v, h) (Layer.check_convex)."""
        for L, x in zip(self.layers, self.split(self._packed(v, h))):
            L.check_convex(x)

    # ------------------------------------------------------------------ flat interface
    def pack(self, v, h) -> np.ndarray:
        """Flatten (v, h) of a batch into one float64 vector [v_0, h_0, v_1, h_1, ...]."""
        return self._packed(v, h).ravel()

    def unpack(self, y: np.ndarray):
        """Inverse of :meth:`pack`."""
        Y = y.reshape(-1, self.width)
        return Y[:, :self.D], Y[:, self.D:]

    def fun(self, I=None, adiabatic: bool = False):
        """Right-hand side fun(t, y) -> dy/dt on flat float64 arrays, for scipy.integrate.solve_ivp."""
        if adiabatic:
            self.velocity(np.zeros((1, self.width)), adiabatic=True)
        W = self.width

        def f(t, y):
            return self.velocity(y.reshape(-1, W), I).ravel()
        return f
