"""Integrate a Network: the one front door :func:`integrate` and its :data:`METHODS` table.

A method is one module in uhn/dynamics/solvers/ and one row here; everything the methods share
(argument checks, initial state, input current, sample times, stall and overflow handling,
energies at the samples, the fixed-point verdict, params, the Trajectory) is
uhn.dynamics.solvers.driver's, whose docstring writes the contract.

- the solve_ivp methods ("RK45", "Radau", ...; uhn.dynamics.solvers.scipy_ivp): the batch is one
  ODE system, one step size for all of it, stopped once every query sits at a fixed point;
- "RK45-batched" (uhn.dynamics.solvers.rk45_batched, and rk45_batched_array for networks on
  other array-API namespaces): the same Dormand-Prince pair with one step size and one error
  control per query, each query leaving the batch at its own fixed point, so a query's
  trajectory is what RK45 would give it alone;
- "reduced" (uhn.dynamics.solvers.reduced): the exact reduced system of dot similarity with
  quadratic L_v, the same step on N x N products.

The result is a :class:`~uhn.dynamics.trajectory.Trajectory`.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from uhn.models.arrays import is_numpy_namespace, library_name

from uhn.dynamics.network import Network
from uhn.dynamics.solvers import reduced, rk45_batched, rk45_batched_array, scipy_ivp
from uhn.dynamics.solvers.driver import BLAS_THREADS, NOISE_FACTOR, Method, run
from uhn.dynamics.trajectory import Trajectory

#: method name -> its row (uhn.dynamics.solvers.driver.Method)
METHODS = {
    **{name: Method(scipy_ivp.solve) for name in scipy_ivp.NAMES},
    "RK45-batched": Method(rk45_batched.solve, solve_array=rk45_batched_array.solve),
    reduced.NAME: reduced.METHOD,
}


def integrate(net: Network, Q, t_end: float = 50.0, *, method: str = "RK45", rtol: Optional[float] = None,
              atol: float = 1e-10, t_eval=None, n_samples: int = 101,
              stop_at_fixed_point: bool = True, fixed_point_tol: float = 1e-8,
              noise_factor: float = NOISE_FACTOR, adiabatic: bool = False, input_mode: str = "initial", h0=None,
              max_step: float = np.inf, max_nfev: int = 100_000, keep="all",
              blas_threads=BLAS_THREADS, progress=False) -> Trajectory:
    """Integrate the network's equations of motion (docs/theory.md section 2) from queries Q.

    Parameters
    ----------
    net : the Network.
    Q : (D,) or (B, D) queries. ``input_mode="initial"``: v(0) = q, I = net.I (default 0);
        ``"clamped"``: v(0) = q and I = q held on (the query as an input current).
    t_end : integrate over [0, t_end] unless every query converges first.
    method : a name of :data:`METHODS`: any solve_ivp method (Radau / BDF, for tau_h << tau_v,
        get the block-diagonal Jacobian sparsity of the batch), or "RK45-batched": Dormand-Prince
        with a step size per query, each query stopping at its own fixed point (the one method for
        networks on other array-API namespaces), or "reduced": the exact reduced solver for dot
        similarity with quadratic L_v (uhn.dynamics.solvers.reduced, N x N products instead of N x D).
    rtol, atol : the solver's tolerances. ``rtol`` defaults to 1e-8 for float64 states and 1e-4
        for float32 ones (uhn.dynamics.solvers.driver.DEFAULT_RTOL) and is refused below 100 eps of
        the state dtype (driver.resolved_rtol): float32 cannot resolve more.
    t_eval : sample times; default ``n_samples`` (>= 2) evenly spaced over [0, t_end], cut where the last
        query stops. With "RK45-batched", a query that stopped earlier holds its final state.
    stop_at_fixed_point : stop at a fixed point (solve_ivp: once every query is at one;
        "RK45-batched": each query at its own): every component's velocity below
        fixed_point_tol + noise_factor (atol + rtol |y_i|) / tau_i (docs/theory.md section 6). The
        second term is the integrator's resolution (set noise_factor = 0 for a purely absolute
        test): an explicit method on a stiff layer (tau_h << tau_v) keeps |dh/dt| jittering near
        (atol + rtol |h|) / tau_h and would otherwise never see a fixed point.
    adiabatic : integrate the reduced system (h = S(g) at all times).
    h0 : initial memory state (default S(g(q))).
    max_nfev : stop with RuntimeError after this many right-hand-side calls (per query with
        "RK45-batched"): a non-smooth similarity such as manhattan with eps = 0 chatters around its
        kinks and would otherwise run for hours; use its smoothed form, e.g.
        get_similarity("manhattan", eps=0.05).
    keep : which of the samples (the times ``t_eval`` up to the last query's stop, then that stop
        time) the trajectory keeps: "all"; an integer k, every k-th sample (indices 0, k, 2k, ...)
        and the last one; "ends", the first and the last sample only (the energy check needs
        two). The kept samples are those of keep="all", bit for bit (driver.kept_indices).
        With "RK45-batched" only the kept samples are ever stored; solve_ivp methods thin after
        solving; "reduced" keeps all. The energies are computed at the kept samples only.
    blas_threads : BLAS threads while integrating (threadpoolctl), default ``BLAS_THREADS`` = 1;
        None leaves BLAS as it is.
    progress : True: a progress bar on stderr in simulated time, with the number of queries still
        running (RK45-batched retires them at their fixed points); a callable ``report(t, n)`` is
        called instead (after every step, or every right-hand-side call for solve_ivp methods).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {tuple(METHODS)}")
    row = METHODS[method]
    if row.solve_array is None and not is_numpy_namespace(net.xp):
        arrays = " or ".join(repr(name) for name, m in METHODS.items() if m.solve_array is not None)
        raise TypeError(f"method={method!r} computes in numpy, but this network's memories are "
                        f"{library_name(net.xp)} arrays; use method={arrays} (on their device) or "
                        f"a network of numpy memories")
    return run(row, method, net, Q, t_end, rtol=rtol, atol=atol, t_eval=t_eval,
               n_samples=n_samples, stop_at_fixed_point=stop_at_fixed_point,
               fixed_point_tol=fixed_point_tol, noise_factor=noise_factor, adiabatic=adiabatic,
               input_mode=input_mode, h0=h0, max_step=max_step, max_nfev=max_nfev, keep=keep,
               blas_threads=blas_threads, progress=progress)
