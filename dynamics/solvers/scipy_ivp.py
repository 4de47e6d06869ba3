"""The solve_ivp methods ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA") on a whole batch.

The batch is one ODE system of B (D + N) variables (B D when adiabatic), so each right-hand-side
call costs two (B, D) x (D, N) products instead of B small ones, but one step size serves the
whole batch and the terminal event :func:`fixed_point_event` stops the integration only once
every query sits at a fixed point. Radau and BDF get the block-diagonal Jacobian sparsity of the
batch (:func:`block_sparsity`), refused beyond :data:`JAC_NNZ_LIMIT` nonzeros. A method of
uhn.dynamics.solvers.driver (its contract there).
"""
from __future__ import annotations

import numpy as np
from scipy.integrate import solve_ivp
from scipy.sparse import csr_matrix

from uhn.dynamics.solvers.driver import Problem, Samples, kept_indices, rest_ratio

NAMES = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")
#: most nonzeros of the block-diagonal Jacobian sparsity that Radau / BDF may be given: B blocks of
#: width^2 (width = D + N, or D when adiabatic). The pattern alone costs 12 bytes per nonzero
#: (int32 index + float64 value once scipy converts it) and the finite-difference Jacobian and its
#: sparse LU at least as much again, so 2e7 nonzeros is ~0.5 GB; B = 1000 MNIST queries
#: (width 884) would need 7.8e8 (~9 GB).
JAC_NNZ_LIMIT = 20_000_000


def block_sparsity(B: int, width: int) -> csr_matrix:
    """The Jacobian sparsity of B independent queries of ``width`` variables each: block-diagonal
    with B dense width x width blocks, built directly as CSR arrays (row r of block b = r // width
    holds columns b width, ..., b width + width - 1), in time and memory linear in B width^2."""
    n = B * width
    indptr = np.arange(n + 1, dtype=np.int64) * width
    starts = np.arange(n, dtype=np.int64) // width * width
    indices = (starts[:, None] + np.arange(width, dtype=np.int64)).ravel()
    return csr_matrix((np.ones(n * width, dtype=np.int8), indices, indptr), shape=(n, n))


def check_jacobian_size(method: str, B: int, width: int) -> None:
    """Refuse a Radau / BDF solve whose block-diagonal Jacobian, B width^2 nonzeros, exceeds
    JAC_NNZ_LIMIT, naming its size, before anything of that size is allocated."""
    nnz = B * width * width
    if nnz > JAC_NNZ_LIMIT:
        fit = max(1, JAC_NNZ_LIMIT // (width * width))
        raise ValueError(
            f"{method} on B={B} queries of {width} variables needs a block-diagonal Jacobian of "
            f"{B} x {width}^2 = {nnz:,} nonzeros (~{nnz * 12 / 1e9:.2g} GB for its sparsity pattern "
            f"alone; limit uhn.dynamics.solvers.scipy_ivp.JAC_NNZ_LIMIT = {JAC_NNZ_LIMIT:,}); use "
            f"method='RK45-batched' or integrate batches of at most {fit} queries")


def fixed_point_event(net, I, tol, noise, rtol, atol, adiabatic):
    """solve_ivp event on the flat batch state: max over queries of driver.rest_ratio - 1,
    terminal, crossing downward (every query at a fixed point)."""
    width = net.D if adiabatic else net.D + net.N

    def at_fixed_point(t, y):
        Y = y.reshape(-1, width)
        return rest_ratio(net, Y, net.velocity(Y, I, adiabatic), tol, noise, rtol, atol, adiabatic).max() - 1.0
    at_fixed_point.terminal = True
    at_fixed_point.direction = -1
    return at_fixed_point


def solve(p: Problem) -> Samples:
    """One solve_ivp call (method ``p.method``) on the flattened batch, its samples thinned by
    ``p.keep_every``; the fixed-point event ends it for the whole batch."""
    net, Y0 = p.net, p.Y0
    B, width = Y0.shape
    if p.method in ("Radau", "BDF"):
        check_jacobian_size(p.method, B, width)
    rhs = net.fun(p.I, adiabatic=p.adiabatic)
    calls = [0]

    def fun(t, y):
        calls[0] += 1
        if calls[0] > p.max_nfev:
            raise p.on_stall(None, t, f"more than {p.max_nfev} right-hand-side calls")
        if p.progress is not None:
            p.progress(t, B)
        return rhs(t, y)

    events = (fixed_point_event(net, p.I, p.fixed_point_tol, p.noise_factor, p.rtol, p.atol,
                                p.adiabatic) if p.stop else None)
    extra = {"jac_sparsity": block_sparsity(B, width)} if p.method in ("Radau", "BDF") else {}
    sol = solve_ivp(fun, (0.0, p.t_end), Y0.ravel(), method=p.method, t_eval=p.t_eval, rtol=p.rtol,
                    atol=p.atol, events=events, max_step=p.max_step, **extra)
    if sol.status < 0:
        raise RuntimeError(f"solve_ivp failed: {sol.message}")
    ts, Y = sol.t, sol.y.T
    event = p.stop and bool(sol.t_events) and len(sol.t_events[0]) > 0
    if event:
        te, ye = sol.t_events[0][0], sol.y_events[0][0]
        if not len(ts) or te > ts[-1]:
            ts, Y = np.append(ts, te), np.vstack([Y, ye[None, :]])
    if p.keep_every != 1 and len(ts):
        kept = kept_indices(len(ts), p.keep_every)
        ts, Y = ts[kept], Y[kept]
    Yb = Y.reshape(len(ts), B, width)
    return Samples(t=ts, v=Yb[:, :, :net.D], h=None if p.adiabatic else Yb[:, :, net.D:],
                   stopped=np.full(B, event), info={"nfev": int(sol.nfev)}, backend="scipy",
                   message=sol.message)
