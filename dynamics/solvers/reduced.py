"""Exact reduced solver for the dot-similarity network with linear feature rates: the method "reduced".

With S(g) = M g (dot similarity), L_v quadratic (g = v), any memory Lagrangian L_h (f = dL_h/dh)
and a constant input I ((D,) or one row per query), dS/dg = M is constant and the equations of
motion (docs/theory.md section 2) keep v(t) = c(t) + M^T a(t), with a(0) = 0 and c the part that
never feels the memories:

    tau_v dc/dt = I - c,  c(0) = v(0)   =>   c(t) = I + (v(0) - I) e^{-t/tau_v}      (closed form)
    tau_v da/dt = f(h) - a
    tau_h dh/dt = M c(t) + G a - h,       G = M M^T (N x N),
    M c(t) = M I + (M v(0) - M I) e^{-t/tau_v}

(adding the first two, times M^T, gives back the feature equation, and M v = M c + G a). The
state of a query is (a, h), 2N numbers instead of D + N, and one right-hand side costs the
(b, N) x (N, N) product a G plus elementwise work (M v(0) and M I are computed once per query),
instead of the two (b, D) x (D, N) products of the full system. The adiabatic limit tau_h -> 0
(h = M v = M c + G a, docs/theory.md section 4) reduces the same way to the N numbers a:

    tau_v da/dt = f(M c(t) + G a) - a.

The states of the full system are rebuilt only at the sample times, v = c(t) + M^T a (one GEMM
per sample); the energy, dE/dt and the Trajectory come from uhn.dynamics.solvers.driver on those
states, as for every method.

Integration: :func:`uhn.dynamics.solvers.rk45_batched.solve_batched` (Dormand-Prince 5(4), a
step size per query) on the rows [a, h, e] (adiabatic: [a, e]), where e is integrated with them,
de/dt = -e/tau_v, e(0) = 1, and c = I + (v(0) - I) e, M c = M I + (M v(0) - M I) e. The closed
form e = e^{-t/tau_v} is what e approximates (to the integrator's tolerance; tested), but it is
not used in the right-hand side: with e a state, the rows are an exact linear image of the full
state (v = I + (v(0) - I) e + M^T a, h = h), Runge-Kutta methods commute with linear changes of
variables, so for the same step sizes every stage equals the full system's stage mapped over.
With the exact exponential as a forcing term instead, the stiff h equation (tau_h << tau_v) sees
a non-autonomous term whose quadrature error the 5(4) estimate weighs heavily, and the
controller takes more steps than the full system. The clock also serves the rest test, which
solve_batched does not give the rows' times, and a query that stopped holds its final e in later
samples, as it holds a and h.

Error control is on (a, h, e), not on (v, h): the RMS over the 2N + 1 components of
err / (atol + rtol |y|). h is the same variable in both systems, with its error now averaged over
2N + 1 components instead of D + N; a local error err_a in a is an error M^T err_a in v, and the
relative part rtol |a_mu| of a's tolerance is measured on the coefficients a (O(f), mostly small)
rather than on the pixels v_i (the tests bound the difference to the full system). The Jacobian
of the full system is the reduced one plus the eigenvalue -1/tau_v on the directions orthogonal
to M's rows, so the stiffness (which sets an explicit method's step size here) is the same.

Fixed points: a query stops when the driver's test :func:`uhn.dynamics.solvers.driver.rest_ratio`
on the full state Y = [v, h] and velocity [dv/dt, dh/dt] is <= 1, with

    dv/dt = dc/dt + M^T da/dt = (I - v(0)) e / tau_v + M^T da/dt.

Evaluating it costs an (b, N) x (N, D) product, so it is only done where two cheap tests on
(a, h) cannot decide (neither can contradict the exact test, so the decisions are the same):

- necessary: the h components of the ratio, which are exactly the full test's (h and dh/dt are
  the same numbers); a row failing them is not at rest;
- sufficient: |dv/dt|_inf <= e |I - v(0)|_inf / tau_v + |M^T w|_2 with w = da/dt and
  |M^T w|_2 = sqrt(w^T G w) (:meth:`ReducedSystem.speed_bound`), against the smallest threshold
  of any v component, tol + noise atol / tau_v; a row passing it and the h test is at rest.
"""
from __future__ import annotations

import numpy as np

from uhn.dynamics.lagrangians import Quadratic
from uhn.dynamics.network import Network
from uhn.dynamics.solvers.driver import (Method, Problem, Samples, Settings, at_new_samples,
    held_samples, rest_ratio, run)
from uhn.dynamics.solvers.rk45_batched import solve_batched
from uhn.dynamics.trajectory import Trajectory

NAME = "reduced"


def check_reducible(net: Network) -> None:
    """ValueError unless ``net`` has dot similarity and a quadratic feature Lagrangian (g = v): the
    only networks whose feature state splits exactly into c(t) + M^T a(t)."""
    if not isinstance(net, Network):
        raise ValueError(f"the reduced solver is for the two-layer Network, not {type(net).__name__}; "
                         f"use integrate() with another method")
    if net.sim.name != "dot":
        raise ValueError(f"the reduced solver needs dot similarity (S(g) = M g), got {net.sim.name!r}: "
                         f"only then is dS/dg = M a constant matrix; use integrate()")
    if not isinstance(net.L_v, Quadratic):
        raise ValueError(f"the reduced solver needs a quadratic L_v (linear feature rates g = v), got "
                         f"{net.L_v.name}: with nonlinear rates v does not stay in span(M) + c(t); "
                         f"use integrate()")


class ReducedSystem:
    """The reduced dynamics of one batch: right-hand side, rest test and reconstruction.

    Rows are [a (N), h (N), e] (adiabatic: [a (N), e]); see the module docstring for the equations."""

    def __init__(self, net: Network, v0, I, adiabatic: bool):
        self.net, self.adiabatic = net, adiabatic
        # float64 throughout, also for a float32 network (its exact float64 twin of M): the rows
        # are N-sized, so float64 costs little, and float32 samples are rounded only at the end
        M = net.bound(np.dtype(np.float64))[1]
        v0 = np.asarray(v0, dtype=np.float64)
        self.M, self.N = M, net.N
        self.G = M @ M.T                           # (N, N) Gram matrix of the memories
        self.v0, self.I = v0, I
        self.dI = I - v0                           # (B, D): tau_v dc/dt = (I - v0) e
        self.dI_inf = np.abs(self.dI).max(axis=1)  # (B,)
        self.MI = I @ M.T                          # (B, N)
        self.Md = (v0 - I) @ M.T                   # (B, N): M c(t) = MI + Md e^{-t/tau_v}
        self.has_MI, self.has_Md = bool(self.MI.any()), bool(self.Md.any())
        self.width = (1 if adiabatic else 2) * self.N + 1
        self._rows = None

    def initial_rows(self, h0) -> np.ndarray:
        """(B, width): a = 0, h = h0, e = 1."""
        B, N = self.v0.shape[0], self.N
        Y0 = np.zeros((B, self.width))
        if not self.adiabatic:
            Y0[:, N:2 * N] = h0
        Y0[:, -1] = 1.0
        return Y0

    def _pick(self, rows):
        """Per-query constants of the running rows (re-indexed only when the set changes)."""
        if self._rows is not rows:
            self._rows = rows
            self._MI, self._Md = self.MI[rows], self.Md[rows]
        return self._MI, self._Md

    def _Mc(self, e, rows, out):
        """out += M c = M I + (M v0 - M I) e for the running rows (e: their clock column)."""
        MI, Md = self._pick(rows)
        if self.has_MI:
            out += MI
        if self.has_Md:
            out += Md * e[:, None]
        return out

    def F(self, t, Y, rows, out):
        """dY/dt of the rows Y (b, width), written into ``out`` (autonomous: t is not used)."""
        net, N = self.net, self.N
        a, e = np.ascontiguousarray(Y[:, :N]), Y[:, -1]   # a strided a @ G misses BLAS
        if self.adiabatic:
            s = self._Mc(e, rows, a @ self.G)            # h = M v = M c + G a
            np.subtract(net.L_h.grad(s), a, out=out[:, :N])
        else:
            h = Y[:, N:2 * N]
            np.subtract(net.L_h.grad(h), a, out=out[:, :N])
            dh = self._Mc(e, rows, a @ self.G)
            dh -= h
            dh /= net.tau_h
            out[:, N:2 * N] = dh
        out[:, :N] /= net.tau_v
        np.divide(e, -net.tau_v, out=out[:, -1])
        return out

    def full(self, Y, dY, rows):
        """Full states [v, h] and velocities [dv/dt, dh/dt] (adiabatic: v and dv/dt) of rows Y
        with derivatives dY: v = I + (v0 - I) e + M^T a, dv/dt = (I - v0) e / tau_v + M^T da/dt."""
        N = self.N
        e = Y[:, -1]
        b = len(Y)
        AV = np.concatenate([Y[:, :N], dY[:, :N]]) @ self.M      # one GEMM: M^T a and M^T da/dt
        v, dv = AV[:b], AV[b:]
        dI = self.dI[rows]
        v += self.I[rows]
        v -= dI * e[:, None]
        dv += dI * (e / self.net.tau_v)[:, None]
        if self.adiabatic:
            return v, dv
        return np.concatenate([v, Y[:, N:2 * N]], axis=1), np.concatenate([dv, dY[:, N:2 * N]], axis=1)

    def speed_bound(self, Y, dY, rows):
        """(b,) upper bound on |dv/dt|_inf from the reduced rows alone, O(N^2) per row:
        |dv/dt|_inf <= |I - v0|_inf e / tau_v + |M^T da/dt|_2, with |M^T da/dt|_2 = sqrt(w^T G w),
        w = da/dt (triangle inequality and |x|_inf <= |x|_2)."""
        w = dY[:, :self.N]
        MTw = np.sqrt(np.maximum(np.einsum("bi,bi->b", w @ self.G, w), 0.0))
        return Y[:, -1] * self.dI_inf[rows] / self.net.tau_v + MTw

    def rest_test(self, tol, noise, rtol, atol):
        """at_rest(Y, dY, rows) for solve_batched: driver.rest_ratio(...) <= 1 on the full
        state, decided by the cheap necessary and sufficient tests where they can (module docstring)."""
        net, N = self.net, self.N
        v_floor = tol + noise * atol / net.tau_v          # smallest threshold of a v component

        def at_rest(Y, dY, rows):
            ok = np.ones(len(Y), bool)
            if not self.adiabatic:                         # h components: the full test's own
                h, dh = Y[:, N:2 * N], dY[:, N:2 * N]
                floor = (atol + rtol * np.abs(h)) * (noise / net.tau_h) + tol
                ok = (np.abs(dh) <= floor).all(axis=1)
            if not ok.any():
                return ok
            cand = np.flatnonzero(ok)
            bound = self.speed_bound(Y[cand], dY[cand], rows[cand])
            exact = cand[bound > v_floor]                  # the bound cannot decide these
            if len(exact):
                Yf, dYf = self.full(Y[exact], dY[exact], rows[exact])
                ok[exact] = rest_ratio(net, Yf, dYf, tol, noise, rtol, atol, self.adiabatic) <= 1.0
            return ok

        return at_rest

    def rebuild(self, Ys, new):
        """States of the full system at the samples: (v (T, B, D), h (T, B, N), or None when
        adiabatic) from the rows Ys (T, B, width), v = I + (v0 - I) e + M^T a. A query that
        stopped holds its final row, so its later samples (``new`` False: driver.held_samples
        of Ys) are copied (driver.at_new_samples)."""
        N = self.N
        T, B, _ = Ys.shape
        v = np.empty((T, B, self.M.shape[1]), dtype=np.result_type(Ys, self.M))
        shape = (T, B, v.shape[2])
        at_new_samples(lambda Y, I, dI: (Y[:, :N] @ self.M + I - dI * Y[:, -1:],),
                       new, (Ys, np.broadcast_to(self.I, shape), np.broadcast_to(self.dI, shape)), (v,))
        return v, None if self.adiabatic else Ys[:, :, N:2 * N]


def check(net: Network, settings: Settings) -> None:
    """The method's refusals, before any work: a ``keep`` other than "all", and a network that is
    not reducible (:func:`check_reducible`)."""
    if isinstance(settings.keep, str) and settings.keep == "all":
        check_reducible(net)
        return
    raise ValueError(f"method='reduced' keeps every sample (it rebuilds v from them); "
                     f"got keep={settings.keep!r}, use keep='all'")


def solve(p: Problem) -> Samples:
    """The method "reduced" (uhn.dynamics.solvers.driver's contract): solve_batched on the
    reduced rows (module docstring), the full states rebuilt at the samples."""
    red = ReducedSystem(p.net, p.v0, p.I, p.adiabatic)
    at_rest = red.rest_test(p.fixed_point_tol, p.noise_factor, p.rtol, p.atol) if p.stop else None
    sol = solve_batched(red.F, red.initial_rows(p.h0), p.t_end, t_eval=p.t_eval, rtol=p.rtol,
                        atol=p.atol, max_step=p.max_step, max_nfev=p.max_nfev, on_stall=p.on_stall,
                        at_rest=at_rest, progress=p.progress)
    new = held_samples(sol.y)       # v and h repeat where their rows do: one mask for both uses
    v, h = red.rebuild(sol.y, new)
    return Samples(t=sol.t, v=v, h=h, stopped=sol.at_fixed_point, backend="numpy", new=new,
                   info={"nfev": int(sol.nfev.sum()), "nfev_per_query": sol.nfev.tolist(),
                         "t_final_per_query": sol.t_final.tolist()})


#: its row of uhn.dynamics.integrate.METHODS: the rows are float64 whatever the queries' dtype
#: (N-sized, cheap); the samples come back in the queries' dtype
METHOD = Method(solve, float64_rows=True, check=check)


def integrate_reduced(net: Network, Q, t_end: float = 50.0, *, I=None, blas_threads=None,
                      **options) -> Trajectory:
    """``integrate(net, Q, t_end, method="reduced", **options)`` (the same trajectory, bit for
    bit), with two differences: ``I``, a constant input current (D,) or (B, D), replaces the one
    ``input_mode`` would choose, and ``blas_threads`` defaults to None (BLAS left as it is).

    The options are integrate()'s (uhn.dynamics.solvers.driver.Settings) but ``keep``: "all"
    only. Refuses (ValueError) a network that is not dot similarity with quadratic L_v, and a
    time-varying (callable) input."""
    if callable(I):
        raise ValueError("the reduced solver needs a constant input current I: with a time-varying "
                         "I(t), c(t) has no closed form; use integrate()")
    return run(METHOD, NAME, net, Q, t_end, I=I, blas_threads=blas_threads, **options)
