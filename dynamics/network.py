"""The two-layer Krotov-Hopfield network for any differentiable similarity: :class:`Network`,
whose docstring states its equations (docs/theory.md §2 The two-layer network, §3 The energy, §4
The adiabatic limit).

Every method is batched: v (B, D), h (B, N), I (D,) or (B, D). float32 memories and states stay
float32 in the dynamics (the right-hand side, the integrators' states); energies and their time
derivatives are always computed in float64 (on a float64 twin of the memories), because the energy
check compares differences of E that float32 could not resolve.

The network computes in the array namespace and on the device of its memories (numpy, torch,
CuPy, any array-API library; models/arrays.py): states, energies and rates come back as arrays
of that library. numpy keeps the in-place paths (``out=``); the flat scipy interface
(:meth:`pack`, :meth:`fun`) and uhn.dynamics.integrate are numpy only.
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np

from uhn.models import Memory
from uhn.models.arrays import (array_namespace, as_namespace, device, is_numpy_namespace,
    library_name, namespace, numpy_float, rowdot, to_numpy)
from uhn.models.validation import as_matrix, check_finite, check_same_width, require_positive
from uhn.models.similarity import Similarity, bind_private, differentiable_names, get_similarity

from uhn.dynamics.lagrangians import Lagrangian, LogSumExp, for_separation, quadratic


def _f64(x, xp):
    """x as a 2-D float64 array of namespace ``xp``."""
    if is_numpy_namespace(xp):
        return np.atleast_2d(np.asarray(x, dtype=np.float64))
    x = as_namespace(x, xp)
    x = x[None, :] if x.ndim == 1 else x
    return x if x.dtype == xp.float64 else xp.astype(x, xp.float64)


class Network:
    """Krotov-Hopfield network with memories M (N, D), optional values P (N, O) for the readout.

    Feature neurons v (D) with rates g = dL_v/dv, memory neurons h (N) with rates f = dL_h/dh, a
    similarity S_mu(g) = sim(M_mu, g) and a constant input current I (docs/theory.md §2):

        tau_v dv/dt = sum_mu f_mu dS_mu/dg - v + I,        tau_h dh/dt = S(g) - h,

    with the energy (docs/theory.md §3; dE/dt <= 0 for convex L_v, L_h: :meth:`dEdt`)

        E(v, h) = [(v - I).g - L_v(v)] + [h.f - L_h(h)] - f.S(g).

    The adiabatic limit tau_h -> 0 (h = S(g), docs/theory.md §4) is :meth:`rhs_adiabatic` and
    :meth:`energy_adiabatic`.

    Parameters
    ----------
    memories : (N, D) array, or a models.Memory (its M, P and similarity are used and, unless
        ``L_h`` is given, the memory Lagrangian whose gradient is its separation).
    similarity : name or Similarity with a gradient (``uhn.models.similarity.differentiable_names()``);
        default ``"dot"`` (a Memory's own similarity when ``memories`` is one).
    L_v, L_h : Lagrangians of the feature and memory layers (default quadratic and
        log_sum_exp(beta=1): the modern continuous Hopfield network).
    tau_v, tau_h : time constants (> 0), in the time unit of the integration.
    I : constant input current (D,) or None (= 0).
    values : (N, O) values for the heteroassociative readout P^T f(h); default P = M.
    """

    def __init__(self, memories, similarity: Union[str, Similarity, None] = None,
                 L_v: Optional[Lagrangian] = None, L_h: Optional[Lagrangian] = None,
                 tau_v: float = 1.0, tau_h: float = 0.1, I=None, values=None):
        self.xp = namespace(memories.M if isinstance(memories, Memory) else memories, values,
                            names=("memories", "values"))
        xp = self.xp
        if isinstance(memories, Memory):
            mem = memories
            memories, values = mem.M, (None if mem.autoassociative else mem.P)
            similarity = mem.similarity if similarity is None else similarity
            if L_h is None:
                L_h = for_separation(mem.separation)
            if mem.convention != "standard":
                raise ValueError("the dynamics use the standard similarity convention; the "
                                 "paper_code reciprocal similarities have no gradient")
        self.M, _ = as_matrix(memories, "memories", ndim_ok=(2,), xp=xp)
        self.P = self.M if values is None else as_matrix(values, "values", ndim_ok=(2,), xp=xp)[0]
        if self.P.shape[0] != self.M.shape[0]:
            raise ValueError(f"shape mismatch: {self.M.shape[0]} memories but {self.P.shape[0]} values")
        self.sim = get_similarity("dot" if similarity is None else similarity)
        if not self.sim.differentiable:
            raise ValueError(f"similarity {self.sim.name!r} has no gradient dS/dg, so it cannot drive "
                             f"the continuous-time dynamics; differentiable similarities: "
                             f"{', '.join(differentiable_names())}")
        if self.sim.binary_only:
            raise ValueError(f"similarity {self.sim.name!r} needs binary states; the dynamics are continuous")
        # per-memory work (normalised rows, logarithms, norms) done once instead of in every RHS
        # call, on a private copy of the memories
        self._unbound_sim = self.sim
        self.sim, self.M, self.P = bind_private(self.sim, self.M, self.P, xp=xp)
        self._sim64 = None      # the float64 twin for energies of a float32 network (bound)
        self._host = None       # the numpy copy of a network on other arrays (on_host)
        self.L_v = quadratic() if L_v is None else L_v
        self.L_h = LogSumExp(1.0) if L_h is None else L_h
        for name, lag in (("L_v", self.L_v), ("L_h", self.L_h)):
            if not isinstance(lag, Lagrangian):
                raise TypeError(f"{name} must be a uhn.dynamics.lagrangians.Lagrangian, got {type(lag).__name__}")
        if self.sim.nonnegative_only:
            probe = np.linspace(-10.0, 10.0, 9)[None, :]
            g = self.L_v.grad(probe)
            if g.min() < 0:
                raise ValueError(
                    f"similarity {self.sim.name!r} reads the feature rates g = dL_v/dv as a distribution, "
                    f"so they must be non-negative, but L_v={self.L_v.name} gives g = {g.min():.3g} at "
                    f"v = {probe[0, int(np.argmin(g))]:g}; use positive rates, e.g. L_v=softplus() "
                    f"(g = sigmoid(v))")
        self.tau_v = require_positive(tau_v, "tau_v", "time constant")
        self.tau_h = require_positive(tau_h, "tau_h", "time constant")
        if I is not None:
            I = np.asarray(to_numpy(I), dtype=np.float64)
            if I.shape != (self.D,):
                raise ValueError(f"input current I must have shape ({self.D},), got {I.shape}")
            check_finite(I, "input current I")
            if not is_numpy_namespace(xp):
                I = xp.asarray(I, device=device(self.M))
        self.I = I

    # ------------------------------------------------------------------ sizes and repr
    @property
    def D(self) -> int:
        return self.M.shape[1]

    @property
    def N(self) -> int:
        return self.M.shape[0]

    @property
    def dtype(self) -> np.dtype:
        """The dtype the right-hand side computes in for states of this dtype or narrower:
        float32 for float32 memories, else float64."""
        return self.M.dtype

    def __repr__(self) -> str:
        return (f"Network(N={self.N}, D={self.D}, similarity={self.sim.name}, L_v={self.L_v.name}, "
                f"L_h={self.L_h.name}, tau_v={self.tau_v:g}, tau_h={self.tau_h:g})")

    def describe(self) -> dict:
        """The parameters that define the network, for result files."""
        return {"N": self.N, "D": self.D, "similarity": self.sim.name, "L_v": self.L_v.name,
                "L_h": self.L_h.name, "tau_v": self.tau_v, "tau_h": self.tau_h,
                "input_current": self.I is not None}

    def on_host(self) -> "Network":
        """This network with numpy memories (a host copy, made once): itself when it is numpy.
        The checks that run in numpy (verify_energy, the fixed-point analysis) use it."""
        if is_numpy_namespace(self.xp):
            return self
        if self._host is None:
            P = None if self.P is self.M else to_numpy(self.P)
            self._host = Network(to_numpy(self.M), self._unbound_sim, L_v=self.L_v, L_h=self.L_h,
                                 tau_v=self.tau_v, tau_h=self.tau_h,
                                 I=None if self.I is None else to_numpy(self.I), values=P)
        return self._host

    def require_numpy(self, who: str) -> None:
        """Raise TypeError unless the network computes in numpy: for the parts of dynamics/ that
        run through scipy, brian2 or numpy-only kernels (``who`` names the caller)."""
        if not is_numpy_namespace(self.xp):
            raise TypeError(f"{who} computes in numpy, but this network's memories are "
                            f"{library_name(self.xp)} arrays; build the network from numpy memories "
                            f"for it (the Network methods themselves run on {library_name(self.xp)})")

    # ------------------------------------------------------------------ helpers
    def input_current(self, I, B, dtype=None):
        """The input current as a (B, D) array of the network's namespace (zeros of ``dtype``,
        default float64, when there is none; a given current as float64)."""
        xp = self.xp
        if I is None:
            I = self.I
        if I is None:
            dtype = xp.float64 if dtype is None else dtype
            if is_numpy_namespace(xp):
                return np.zeros((B, self.D), dtype=dtype)
            return xp.zeros((B, self.D), dtype=dtype, device=device(self.M))
        if is_numpy_namespace(xp):
            return np.broadcast_to(I, (B, self.D))
        return xp.broadcast_to(_f64(self._namespaced(I, "input current I"), xp), (B, self.D))

    def _namespaced(self, x, name):
        """x as an array of the network's namespace: a numpy array (or list) handed to a network
        of another library is refused with a message, since it would need a host-device copy at
        every call; arrays of another library raise in ``namespace``."""
        if is_numpy_namespace(self.xp):
            return x
        if isinstance(x, np.ndarray) or not hasattr(x, "__array_namespace__"):
            if isinstance(x, (list, tuple, float, int)):
                return self.xp.asarray(x, device=device(self.M))
            raise TypeError(f"{name} is a {type(x).__module__.split('.')[0]} array but the network's "
                            f"memories are {library_name(self.xp)} arrays; convert it to one library "
                            f"(and device) first")
        namespace(self.M, x, names=("memories", name))
        return x

    def check_state(self, v, h=None):
        """(v, h) as 2-D arrays of the network's computing dtype (float32 only when both the
        memories and the state are float32)."""
        xp = self.xp
        if not is_numpy_namespace(xp):
            v, _ = as_matrix(self._namespaced(v, "feature state v"), "feature state v", xp=xp)
            dtype = xp.result_type(v.dtype, self.M.dtype)
            v = v if v.dtype == dtype else xp.astype(v, dtype)
        else:
            dtype = np.result_type(numpy_float(v), self.M)
            v = np.atleast_2d(np.asarray(v, dtype=dtype))
        if v.shape[1] != self.D:
            raise ValueError(f"shape mismatch: feature state has {v.shape[1]} entries, network has D={self.D}")
        check_finite(v, "feature state v", xp=xp)
        if h is None:
            return v
        if not is_numpy_namespace(xp):
            h, _ = as_matrix(self._namespaced(h, "memory state h"), "memory state h", xp=xp)
            h = h if h.dtype == dtype else xp.astype(h, dtype)
        else:
            h = np.atleast_2d(np.asarray(h, dtype=dtype))
        if tuple(h.shape) != (v.shape[0], self.N):
            raise ValueError(f"shape mismatch: memory state h has shape {tuple(h.shape)}, expected "
                             f"{(v.shape[0], self.N)}")
        check_finite(h, "memory state h", xp=xp)
        return v, h

    def similarity(self, g: np.ndarray) -> np.ndarray:
        """S(g) = sim(M, g), (B, N), in the dtype of g (float64 g: float64 memories)."""
        sim, M = self.bound(g.dtype)
        return sim.score(M, g)

    def bound(self, dtype):
        """(similarity, memories) for states of ``dtype``: as stored, except float64 states on a
        float32 network, which get a float64 twin of the memories (bound once; exact, since
        float32 values are float64 values), so energies and solve_ivp's float64 states carry
        float64 round-off in every term, per-memory ones such as |M_mu|^2 included."""
        f64 = self.xp.float64
        if dtype != f64 or self.M.dtype == f64:
            return self.sim, self.M
        if self._sim64 is None:
            M64 = (self.M.astype(np.float64) if is_numpy_namespace(self.xp)
                   else self.xp.astype(self.M, f64))
            self._sim64 = bind_private(self._unbound_sim, M64, xp=self.xp)[:2]
        return self._sim64

    def initial_state(self, Q, h0=None):
        """v(0) = q and h(0) = S(g(v(0))) unless h0 is given. Returns (v0, h0), each 2-D, in the
        common dtype of Q and the memories (float32 if both are)."""
        xp = self.xp
        Q, _ = as_matrix(self._namespaced(Q, "queries"), "queries", xp=xp)
        check_same_width(self.M, Q)
        if is_numpy_namespace(xp):
            v0 = Q.astype(np.result_type(Q, self.M))
        else:
            dtype = xp.result_type(Q.dtype, self.M.dtype)
            v0 = xp.astype(Q, dtype)      # a copy: the state never aliases the caller's queries
        if h0 is None:
            h0 = self.similarity(self.L_v.grad(v0))
        v0, h0 = self.check_state(v0, h0)
        return v0, (h0.copy() if is_numpy_namespace(xp) else xp.asarray(h0, copy=True))

    # ------------------------------------------------------------------ dynamics
    def _drive(self, g, f, v, I, out, V=None):
        """dv/dt of the class's equations into ``out``; vjp returns a fresh array, so the sum is
        built in place (this runs once per stage of every integrator step); other
        namespaces (``out=None``) return a new array. ``V``: the contraction sum_mu f_mu dS_mu/dg
        when already computed (numpy; :meth:`_rhs` with a fused score_vjp)."""
        sim, M = self.bound(g.dtype)
        I = self.I if I is None else I
        if out is None:                     # the array-API path: no in-place arithmetic
            xp = self.xp
            r = sim.vjp(M, g, f) - v
            if I is not None:
                I = self._namespaced(I, "input current I")
                r = r + (I if I.dtype == r.dtype else xp.astype(I, r.dtype))
            return r / self.tau_v if self.tau_v != 1.0 else r
        np.subtract(sim.vjp(M, g, f) if V is None else V, v, out=out)
        if I is not None:
            out += I
        if self.tau_v != 1.0:
            out /= self.tau_v
        return out

    def rhs(self, v, h, I=None, out=None):
        """(dv/dt, dh/dt), (B, D) and (B, N): the equations of motion of the class docstring.

        ``out``: optional (B, D + N) array to write [dv/dt, dh/dt] into (the returned pair are
        views of it; numpy only)."""
        return self._rhs(v, h, I, out)[:2]

    def _rhs(self, v, h, I, out, g=None, S=None):
        """(dv/dt, dh/dt, S(g)) of :meth:`rhs`, given g = L_v'(v) and S = S(g) where the caller
        has them. Without S, a similarity with a fused ``score_vjp`` (manhattan) computes S(g)
        and its contraction in one pass over the (B, N, D) pairs (numpy)."""
        g = self.L_v.grad(v) if g is None else g
        f = self.L_h.grad(h)
        if not is_numpy_namespace(self.xp):
            S = self.similarity(g) if S is None else S
            return self._drive(g, f, v, I, None), (S - h) / self.tau_h, S
        if out is None:
            out = np.empty((v.shape[0], self.D + self.N), dtype=np.result_type(v, h, self.M))
        dv, dh = out[:, :self.D], out[:, self.D:]
        sim, M = self.bound(g.dtype)
        V = None
        if S is None:
            S, V = sim.score_vjp(M, g, f) if sim.score_vjp is not None else (self.similarity(g), None)
        self._drive(g, f, v, I, dv, V)
        np.subtract(S, h, out=dh)
        dh /= self.tau_h
        return dv, dh, S

    def rhs_adiabatic(self, v, I=None, out=None):
        """dv/dt = (sum_mu f_mu(S(g)) dS_mu/dg - v + I) / tau_v, with h = S(g) (tau_h -> 0;
        docs/theory.md §4)."""
        return self._rhs_adiabatic(v, I, out)

    def _rhs_adiabatic(self, v, I, out, g=None, S=None):
        """:meth:`rhs_adiabatic`, given g = L_v'(v) and S = S(g) where the caller has them."""
        if out is None and is_numpy_namespace(self.xp):
            out = np.empty_like(v)
        g = self.L_v.grad(v) if g is None else g
        S = self.similarity(g) if S is None else S
        return self._drive(g, self.L_h.grad(S), v, I, out)

    def velocity(self, Y, I=None, adiabatic: bool = False, out=None) -> np.ndarray:
        """dY/dt (B, D + N) at states Y = [v, h] (B, D + N) (the pack() layout, one row per query);
        with ``adiabatic``, dv/dt (B, D) of the reduced system at Y = v (B, D)."""
        if adiabatic:
            return self.rhs_adiabatic(Y, I, out=out)
        if not is_numpy_namespace(self.xp):
            return self.xp.concat(self.rhs(Y[:, :self.D], Y[:, self.D:], I), axis=1)
        if out is None:
            out = np.empty_like(Y)
        self.rhs(Y[:, :self.D], Y[:, self.D:], I, out=out)
        return out

    def residual(self, v, h=None, I=None, adiabatic: bool = False) -> np.ndarray:
        """(B,) max_i |dy_i/dt| at (v, h), or at v with h = S(g) when ``adiabatic``: 0 at a fixed point."""
        xp = self.xp
        if not is_numpy_namespace(xp):
            if adiabatic:       # check_state(v) returns v alone: unpacking it would split its rows
                Y = self.check_state(v)
            else:
                Y = xp.concat(list(self.check_state(v, h)), axis=1)
            return xp.max(xp.abs(self.velocity(Y, I, adiabatic)), axis=1)
        v = np.atleast_2d(numpy_float(v))
        Y = v if adiabatic else np.concatenate([v, np.atleast_2d(numpy_float(h))], axis=1)
        return np.abs(self.velocity(Y, I, adiabatic)).max(axis=1)

    def energy(self, v, h, I=None):
        """E(v, h) of the class docstring (docs/theory.md §3), (B,), in float64."""
        v, h = _f64(v, self.xp), _f64(h, self.xp)
        g = self.L_v.grad(v)
        return self._energy(v, h, I, g, self.similarity(g))

    def _energy(self, v, h, I, g, S):
        """:meth:`energy` of float64 states, given g = L_v'(v) and S = S(g)."""
        xp = self.xp
        f = self.L_h.grad(h)
        Iv = self.input_current(I, v.shape[0])
        return (self.L_v.legendre(v) - rowdot(Iv, g, xp) + self.L_h.legendre(h) - rowdot(f, S, xp))

    def energy_adiabatic(self, v, I=None):
        """E(v) = (v - I).g - L_v(v) - L_h(S(g)): the energy with h = S(g) (docs/theory.md §4),
        (B,), in float64."""
        v = _f64(v, self.xp)
        g = self.L_v.grad(v)
        return self._energy_adiabatic(v, I, g, self.similarity(g))

    def _energy_adiabatic(self, v, I, g, S):
        """:meth:`energy_adiabatic` of float64 states, given g = L_v'(v) and S = S(g)."""
        return self.L_v.legendre(v) - rowdot(self.input_current(I, v.shape[0]), g, self.xp) - self.L_h.value(S)

    def dEdt(self, v, h, I=None):
        """dE/dt = -tau_v vdot^T H_v vdot - tau_h hdot^T H_h hdot (docs/theory.md §3), with
        H = Hess(L) of each layer; (B,), in float64."""
        v, h = _f64(v, self.xp), _f64(h, self.xp)
        return self._dEdt(v, h, *self.rhs(v, h, I))

    def _dEdt(self, v, h, dv, dh):
        """:meth:`dEdt` from the velocities (dv, dh) at (v, h)."""
        return -self.tau_v * self.L_v.curvature(v, dv) - self.tau_h * self.L_h.curvature(h, dh)

    def dEdt_adiabatic(self, v, I=None):
        """dE/dt = -tau_v vdot^T H_v vdot along the adiabatic flow (docs/theory.md §4), (B,), in
        float64."""
        v = _f64(v, self.xp)
        return self._dEdt_adiabatic(v, self.rhs_adiabatic(v, I))

    def _dEdt_adiabatic(self, v, dv):
        """:meth:`dEdt_adiabatic` from the adiabatic velocity dv at v."""
        return -self.tau_v * self.L_v.curvature(v, dv)

    def energy_and_dEdt(self, v, h, I=None):
        """(E, dE/dt), (B,) each, the values of :meth:`energy` and :meth:`dEdt`, from one
        g = L_v'(v) and one S(g): two products with the memories per state instead of three (a
        similarity with a fused score_vjp takes its one pass for dE/dt, as dEdt does)."""
        v, h = _f64(v, self.xp), _f64(h, self.xp)
        g = self.L_v.grad(v)
        S = self.similarity(g)
        # a fused score_vjp (manhattan) computes dE/dt's S(g) itself, as dEdt does: each of the
        # two values is then the separate call's, bit for bit
        fused = self.bound(g.dtype)[0].score_vjp is not None
        dv, dh, _ = self._rhs(v, h, I, None, g, None if fused else S)
        return self._energy(v, h, I, g, S), self._dEdt(v, h, dv, dh)

    def energy_and_dEdt_adiabatic(self, v, I=None):
        """(S(g), E, dE/dt) of the adiabatic system, the values of :meth:`similarity` (of the
        float64 states), :meth:`energy_adiabatic` and :meth:`dEdt_adiabatic`, from one S(g)."""
        v = _f64(v, self.xp)
        g = self.L_v.grad(v)
        S = self.similarity(g)
        dv = self._rhs_adiabatic(v, I, None, g, S)
        return S, self._energy_adiabatic(v, I, g, S), self._dEdt_adiabatic(v, dv)

    def readout(self, h) -> np.ndarray:
        """z = P^T f(h): the memory layer's output in value space (B, O)."""
        if is_numpy_namespace(self.xp):
            return self.L_h.grad(np.atleast_2d(h)) @ self.P
        h = self._namespaced(h, "memory state h")
        return self.L_h.grad(h[None, :] if h.ndim == 1 else h) @ self.P

    # ------------------------------------------------------------------ flat interface
    def pack(self, v, h) -> np.ndarray:
        """Flatten (v, h) of a batch into one float64 vector [v_0, h_0, v_1, h_1, ...]."""
        return np.concatenate([v, h], axis=1).ravel()

    def unpack(self, y: np.ndarray):
        """Inverse of :meth:`pack`."""
        Y = y.reshape(-1, self.D + self.N)
        return Y[:, :self.D], Y[:, self.D:]

    def fun(self, I=None, adiabatic: bool = False):
        """Right-hand side fun(t, y) -> dy/dt on flat float64 arrays, for scipy.integrate.solve_ivp."""
        if adiabatic:
            D = self.D

            def f_ad(t, y):
                return self.rhs_adiabatic(y.reshape(-1, D), I).ravel()
            return f_ad

        def f(t, y):
            v, h = self.unpack(y)
            out = np.empty((v.shape[0], self.D + self.N))  # the pack() layout
            self.rhs(v, h, I, out=out)
            return out.ravel()
        return f

