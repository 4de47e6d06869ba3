"""dynamics/ Lagrangians and Network compute in the array namespace and on the device of their
inputs (docs/gpu.md), checked on array-api-strict arrays (which allow nothing outside the standard)
placed on its second device.

Every result must be an array-api-strict array on that device, of the dtype the numpy path gives,
and agree with the numpy path. Both paths add up the same terms, in another order (np.einsum
against sum(a * b)) or through an algebraically equal formula (scipy's logsumexp and expit against
their max-shifted forms), so each side lies within gamma_n T of the exact value and the two sides
within 2 gamma_n T, with T the sum of the magnitudes of the terms (the sizes uhn.dynamics.analysis.energy
uses for its own round-off allowances: ``value_size``, ``hvp_size``, size(E)) and gamma_n = n eps64
for the longest chain of roundings, n = (length of the longest sum) + 8 elementwise operations.
"""
from __future__ import annotations

import numpy as np
import pytest

from uhn.dynamics import lagrangians as L
from uhn.dynamics.analysis.energy import _energy_and_size
from uhn.dynamics.network import Network
from uhn.models import Memory, get_separation
from uhn.models.arrays import namespace, to_numpy
from uhn.models.similarity import get_similarity

xps = pytest.importorskip("array_api_strict")

EPS = np.finfo(np.float64).eps
DEV = xps.Device("device1")   # not the default device: results must follow their inputs there
N, D, B = 9, 16, 5


def strict(a, dtype=None):
    return xps.asarray(np.asarray(a, dtype=dtype), device=DEV)


def host(x, dtype=xps.float64):
    """x checked to be an array-api-strict array on DEV of ``dtype``, as numpy."""
    assert namespace(x) is xps and x.device == DEV and x.dtype == dtype
    return to_numpy(x)


def gamma(n_sum: int) -> float:
    """Round-off of one path, relative to the sum of the magnitudes of the terms."""
    return (n_sum + 8) * EPS


LAGRANGIANS = [L.quadratic(), L.rectified_polynomial(2.0), L.rectified_polynomial(1.5),
               L.signed_polynomial(3.0), L.log_sum_exp(2.0), L.exponential(0.5), L.spherical(),
               L.log_cosh(), L.softplus()]


@pytest.mark.parametrize("lag", LAGRANGIANS, ids=lambda lag: lag.name)
def test_lagrangian_on_strict_arrays_agrees_with_numpy(lag):
    rng = np.random.default_rng(3)
    x = 2.0 * rng.standard_normal((B, D))
    x[0, :3] = 0.0                       # the kink of the rectified and signed forms
    x[1, 0] = 2.5                        # log_cosh's two branches meet at |x| = 1
    x[1, 1] = -0.75
    u = rng.standard_normal((B, D))
    xs, us = strict(x), strict(u)
    tol = 2 * gamma(D)
    A = np.abs
    hsize = lag.hvp_size(x, u)
    g = lag.grad(x)
    vs = lag.value_size(x)
    checks = {
        # per row: sums of D terms, each known to a few ulps of its magnitude
        "value": (lag.value(xs), lag.value(x), vs),
        "value_size": (lag.value_size(xs), vs, vs),
        # per entry: elementwise forms, or (softmax, spherical) one normalising sum of D terms
        "grad": (lag.grad(xs), g, A(g) if lag.kind not in ("spherical",) else A(g) + A(x) / np.linalg.norm(
            x, axis=1, keepdims=True)),
        "hvp": (lag.hvp(xs, us), lag.hvp(x, u), hsize),
        "hvp_size": (lag.hvp_size(xs, us), hsize, hsize),
        # x.g - L and u^T H u: one more sum of D products over what was compared above
        "legendre": (lag.legendre(xs), lag.legendre(x), (A(x) * A(g)).sum(1) + vs),
        "curvature": (lag.curvature(xs, us), lag.curvature(x, u), (A(u) * hsize).sum(1)),
    }
    for what, (got, want, size) in checks.items():
        got = host(got)
        assert got.shape == want.shape, what
        err = np.abs(got - want)
        assert np.all(err <= tol * size), (what, float(np.max(err - tol * size)))


def test_elementwise_lagrangian_runs_the_users_functions_on_strict_arrays():
    """F = x^4 / 4 written with the array's own operations (x * x ...) works on any namespace; a
    function that returns numpy for strict states is refused naming the library."""
    quartic = L.elementwise(lambda x: x * x * x * x / 4, lambda x: x * x * x, lambda x: 3 * x * x,
                            name="quartic")
    x = (np.arange(B * D) - 40.0).reshape(B, D) / 16   # k / 16, |k| <= 40: x^3 has <= 18 bits, exact
    got = host(quartic.grad(strict(x)))
    assert np.array_equal(got, x * x * x)
    # sums of D non-negative terms: gamma_D of the result
    assert np.allclose(host(quartic.value(strict(x))), (x ** 4 / 4).sum(1), rtol=2 * gamma(D), atol=0)
    # a user function that builds numpy arrays (here from the shape alone) for strict states
    numpy_only = L.elementwise(lambda x: np.ones(tuple(x.shape)), lambda x: np.ones(tuple(x.shape)),
                               lambda x: np.zeros(np.shape(x)), name="numpy_built")
    with pytest.raises(TypeError, match="returned ndarray for array_api_strict states"):
        numpy_only.grad(strict(x))


def test_lagrangian_overflow_is_reported_on_strict_arrays():
    with pytest.raises(OverflowError, match=r"beta \* x overflows float64"):
        L.log_sum_exp(1e300).grad(strict(np.full((1, 3), 1e10)))
    with pytest.raises(OverflowError, match="exp\\(beta x\\) overflows"):
        L.exponential(1.0).grad(strict(np.full((1, 3), 800.0)))
    with pytest.raises(ValueError, match="x = 0 has no direction"):
        L.spherical().grad(strict(np.zeros((1, 3))))


NETWORKS = [
    ("dot", {}, L.quadratic(), L.log_sum_exp(4.0)),
    ("euclidean", {}, L.quadratic(), L.log_sum_exp(2.0)),
    ("squared_euclidean", {}, L.log_cosh(), L.rectified_polynomial(2.0)),
    ("cosine", {}, L.quadratic(), L.exponential(0.5)),
    ("manhattan", {"eps": 0.1}, L.quadratic(), L.log_sum_exp(1.0)),
    ("minkowski", {"p": 3}, L.quadratic(), L.log_sum_exp(1.0)),
    ("kl", {}, L.softplus(), L.log_sum_exp(1.0)),
]


def _pair(name, params, L_v, L_h, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    M = rng.random((N, D)).astype(dtype)
    I = 0.25 * rng.standard_normal(D)
    kw = dict(similarity=get_similarity(name, **params), L_v=L_v, L_h=L_h, tau_v=0.5, tau_h=0.25, I=I)
    return Network(M, **kw), Network(strict(M), **kw), M, I


@pytest.mark.parametrize("name,params,L_v,L_h", NETWORKS, ids=[n[0] for n in NETWORKS])
def test_network_on_strict_arrays_agrees_with_numpy(name, params, L_v, L_h):
    """rhs, velocity, residual, energies, dE/dt and the readout of a network on strict memories
    against the same network on numpy memories, at one set of states.

    Tolerances (see the module docstring): the right-hand side adds, per entry, the N terms of the
    gradient contraction (bounded by |f| |M| + |f|_1 |g|, uhn.dynamics.analysis.energy's drive estimate) and
    |v| + |I|, or a score (|S| + (|m| + |g|)^2) and |h|, each divided by its tau; E adds the terms
    size(E) of uhn.dynamics.analysis.energy._energy_and_size; dE/dt = -tau vdot^T H vdot carries the velocity's
    error through 2 |H vdot|.|d vdot| plus its own sum; the readout sums N products |f| |P|."""
    net, snet, M, I = _pair(name, params, L_v, L_h)
    rng = np.random.default_rng(1)
    Q = rng.random((B, D))
    v0, h0 = net.initial_state(Q)
    sv0, sh0 = snet.initial_state(strict(Q))
    n = D + N
    tol = 2 * gamma(n)
    # the state the flow reaches a little later: generic, not the initial h = S(g)
    v, h = v0 + 0.1 * rng.standard_normal(v0.shape), h0 + 0.1 * rng.standard_normal(h0.shape)
    if name == "kl":
        v = np.abs(v)
    sv, sh = strict(v), strict(h)

    g, f = L_v.grad(v), L_h.grad(h)
    S = net.similarity(g)

    def score_size(g):
        return np.abs(net.similarity(g)) + (np.linalg.norm(M, axis=1)[None, :]
                                            + np.linalg.norm(g, axis=1)[:, None]) ** 2

    def drive_size(f):
        return (np.abs(f) @ np.abs(M) + np.abs(f).sum(1, keepdims=True) * np.abs(g) + np.abs(v)
                + np.abs(I)) / net.tau_v

    size_dv, size_dh = drive_size(f), (score_size(g) + np.abs(h)) / net.tau_h

    def close(got, want, size, what):
        err = np.abs(host(got) - want)
        assert np.all(err <= tol * size), (what, float(np.max(err - tol * size)))

    close(sv0, v0, np.abs(v0), "initial v")
    close(sh0, h0, score_size(L_v.grad(v0)), "initial h = S(g(q))")
    close(snet.similarity(L_v.grad(sv)), S, score_size(g), "S(g)")
    dv, dh = net.rhs(v, h)
    sdv, sdh = snet.rhs(sv, sh)
    close(sdv, dv, size_dv, "dv/dt")
    close(sdh, dh, size_dh, "dh/dt")
    Y = np.concatenate([v, h], axis=1)
    size_F = np.concatenate([size_dv, size_dh], axis=1)
    close(snet.velocity(strict(Y)), np.concatenate([dv, dh], axis=1), size_F, "velocity")
    close(snet.residual(sv, sh), net.residual(v, h), size_F.max(1), "residual")

    E, size_E = _energy_and_size(net, Y, None, adiabatic=False)
    close(snet.energy(sv, sh), E, size_E, "E")
    E_ad, size_Ead = _energy_and_size(net, v, None, adiabatic=True)
    close(snet.energy_adiabatic(sv), E_ad, size_Ead, "E adiabatic")

    def quad_size(lag, x, u, size_u, tau):
        """tau u.H u: its own sum of products, and the velocity's error (tol size_u) entering
        twice through |H u|."""
        Hu = lag.hvp_size(x, u)
        return tau * ((np.abs(u) * Hu).sum(1) + 2 * (Hu * size_u).sum(1))

    close(snet.dEdt(sv, sh), net.dEdt(v, h),
          quad_size(L_v, v, dv, size_dv, net.tau_v) + quad_size(L_h, h, dh, size_dh, net.tau_h), "dE/dt")
    dva = net.rhs_adiabatic(v)
    size_dva = drive_size(L_h.grad(S))
    close(snet.rhs_adiabatic(sv), dva, size_dva, "dv/dt adiabatic")
    close(snet.dEdt_adiabatic(sv), net.dEdt_adiabatic(v), quad_size(L_v, v, dva, size_dva, net.tau_v),
          "dE/dt adiabatic")
    close(snet.readout(sh), net.readout(h), np.abs(f) @ np.abs(M), "readout")


def test_float32_network_on_strict_arrays_keeps_float32_and_computes_energies_in_float64():
    """float32 memories and states: the right-hand side stays float32 (and equals the numpy
    float32 path to float32 round-off), energies come back float64 from the float64 twin of the
    memories (equal to the numpy float32 network's float64 energies to float64 round-off)."""
    net, snet, M, I = _pair("euclidean", {}, L.quadratic(), L.log_sum_exp(2.0), dtype=np.float32)
    Q = np.random.default_rng(2).random((B, D)).astype(np.float32)
    v, h = net.initial_state(Q)
    sv, sh = snet.initial_state(strict(Q))
    assert v.dtype == np.float32 and host(sv, xps.float32).dtype == np.float32
    eps32 = float(np.finfo(np.float32).eps)
    dv, dh = net.rhs(v, h)
    sdv, sdh = snet.rhs(sv, sh)
    g, f = v, net.L_h.grad(h)
    span = (np.linalg.norm(M, axis=1)[None, :] + np.linalg.norm(g, axis=1)[:, None]) ** 2
    size_dv = (np.abs(f) @ np.abs(M) + np.abs(f).sum(1, keepdims=True) * np.abs(g) + np.abs(v)
               + np.abs(I)) / net.tau_v
    size_dh = (np.abs(net.similarity(g)) + span + np.abs(h)) / net.tau_h
    for got, want, size in ((sdv, dv, size_dv), (sdh, dh, size_dh)):
        assert np.all(np.abs(host(got, xps.float32) - want) <= 2 * (D + N + 8) * eps32 * size)
    Y = np.concatenate([v, h], axis=1).astype(np.float64)
    E, size_E = _energy_and_size(net, Y, None, adiabatic=False)
    sE = host(snet.energy(sv, sh))                   # float64 from float32 states
    assert np.all(np.abs(sE - E) <= 2 * gamma(D + N) * size_E)


def test_network_from_a_memory_of_strict_arrays():
    """A models.Memory holding strict arrays gives a strict network with its similarity and the
    memory Lagrangian of its separation (softmax(beta) -> log_sum_exp(beta))."""
    rng = np.random.default_rng(4)
    M = rng.random((N, D))
    mem = Memory(strict(M), similarity="dot", separation=get_separation("softmax", beta=3.0))
    snet, net = Network(mem), Network(Memory(M, similarity="dot", separation=get_separation("softmax", beta=3.0)))
    assert snet.L_h.name == "log_sum_exp(beta=3)" and namespace(snet.M) is xps
    Q = rng.random((B, D))
    v, h = net.initial_state(Q)
    # E: the sum of the magnitudes of its terms (uhn.dynamics.analysis.energy), two sums of up to D + N terms
    E, size_E = _energy_and_size(net, np.concatenate([v, h], axis=1), None, adiabatic=False)
    sv, sh = snet.initial_state(strict(Q))
    assert np.all(np.abs(host(snet.energy(sv, sh)) - E) <= 2 * gamma(D + N) * size_E)


def test_strict_network_refuses_numpy_states_and_numpy_only_methods():
    from uhn.dynamics.integrate import integrate
    _, snet, M, _ = _pair("dot", {}, L.quadratic(), L.log_sum_exp(1.0))
    Q = np.random.default_rng(5).random((B, D))
    with pytest.raises(TypeError, match="queries is a numpy array but the network's memories are "
                                        "array_api_strict arrays"):
        snet.initial_state(Q)
    with pytest.raises(ValueError, match="feature state v contains 1 NaN/inf"):
        bad = Q.copy()
        bad[2, 3] = np.nan
        snet.check_state(strict(bad))
    with pytest.raises(ValueError, match=r"memory state h has shape \(5, 3\), expected \(5, 9\)"):
        snet.check_state(strict(Q), strict(np.zeros((B, 3))))
    with pytest.raises(TypeError, match="method='RK45' computes in numpy, but this network's memories "
                                        "are array_api_strict arrays; use method='RK45-batched'"):
        integrate(snet, strict(Q), 1.0, method="RK45")
    with pytest.raises(TypeError, match="run_brian2 computes in numpy"):
        from uhn.dynamics.backends.brian2_rate import run_brian2
        run_brian2(snet, strict(Q), 1.0)


# ------------------------------------------------------------------ the batched integrator
def _linear(B_, W, seed=0):
    """dY_b/dt = lambda_b A Y_b, A = -diag(a): contracting, |lambda a| <= 6; both solvers' F."""
    rng = np.random.default_rng(seed)
    a, lam = rng.uniform(0.5, 3, W), rng.uniform(0.5, 2, B_)
    A, As, ls = -np.diag(a), strict(-np.diag(a)), strict(lam)

    def F_np(t, Y, rows, out):
        out[:] = (Y @ A.T) * lam[rows][:, None]
        return out

    def F_xp(t, Y):
        return (Y @ xps.astype(As, Y.dtype).T) * xps.astype(ls, Y.dtype)[:, None]
    return F_np, F_xp, rng.standard_normal((B_, W)), float(np.max(a) * np.max(lam))


def _step_drift(n_terms, eps, rtol):
    """How far two correct runs' step sizes drift apart, relative: the error norm divides an
    error estimate, itself a cancelling difference of stages, by atol + rtol |y|, so a round-off
    difference of (n + 8) eps |y| between the runs' states or right-hand sides (n the longest sum)
    moves err, hence h ~ err^(-1/5), by up to (n + 8) eps / rtol relative."""
    return (n_terms + 8) * eps / rtol


def _global_error(n_steps, atol, rtol, y_max):
    """Each run lies within its steps times the local tolerance atol + rtol |y| of the exact flow
    (a contracting one: local errors do not grow), so two runs within twice that."""
    return 2 * n_steps * (atol + rtol * y_max)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_solve_batched_array_takes_the_numpy_solvers_steps(dtype):
    """The array solver (masked rows, on the device) against uhn.dynamics.solvers.rk45_batched.solve_batched (numpy
    kernels, compacted rows) on a contracting linear system with a rest test. The two do the same
    arithmetic per element except the error norm's sum of squares (W terms, reduced in another
    order), so their step sizes drift apart by at most :func:`_step_drift` relative per step:
    1e-7 in float64, where an accept/reject decision would have to sit that close to err = 1 to
    flip (so the step counts are equal), 1e-2 in float32 (counts may differ by a step or two).
    Either way both runs are within the integrator's global error of the exact flow, and their
    stop times within the accumulated drift."""
    from uhn.dynamics.solvers.rk45_batched import solve_batched
    from uhn.dynamics.solvers.rk45_batched_array import solve_batched_array
    B_, W, t_end = 6, 5, 30.0
    F_np, F_xp, Y0, lam_max = _linear(B_, W)
    Y0 = Y0.astype(dtype)
    t_eval = np.linspace(0, t_end, 31)
    rtol, atol = (1e-8 if dtype == np.float64 else 1e-4), 1e-10
    floor = 1e-3

    def rest_np(Y, dY, rows):
        return np.abs(dY).max(1) < floor

    def rest_xp(Y, dY):
        return xps.max(xps.abs(dY), axis=1) < floor

    a = solve_batched(F_np, Y0, t_end, t_eval=t_eval, rtol=rtol, atol=atol, at_rest=rest_np,
                      kernels="numpy")
    b = solve_batched_array(F_xp, strict(Y0), t_end, t_eval=t_eval, rtol=rtol, atol=atol,
                            at_rest=rest_xp)
    assert b.at_fixed_point.all() and np.array_equal(a.at_fixed_point, b.at_fixed_point)
    eps = float(np.finfo(dtype).eps)
    if dtype == np.float64:
        for name in ("n_steps", "n_rejected", "nfev"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
    else:
        assert np.abs(a.n_steps + a.n_rejected - b.n_steps - b.n_rejected).max() <= 2
    drift = _step_drift(W, eps, rtol)
    assert np.all(np.abs(b.t_final - a.t_final) <= drift * a.t_final)
    assert np.array_equal(a.t[:-1], b.t[:-1]) and abs(a.t[-1] - b.t[-1]) <= drift * a.t[-1]
    xdtype = xps.float32 if dtype == np.float32 else xps.float64
    tol = _global_error(a.n_steps.max(), atol, rtol, np.abs(Y0).max())
    assert np.abs(host(b.y, xdtype) - a.y).max() <= tol
    assert np.abs(host(b.y_final, xdtype) - a.y_final).max() <= tol
    # max |dY/dt| at the stop: F is linear with |lambda a| <= lam_max, so states within tol give
    # velocities within lam_max tol
    assert np.all(np.abs(b.velocity - a.velocity) <= lam_max * tol)
    assert np.all(b.velocity < floor)                   # the rest test's own verdict


@pytest.mark.parametrize("n_samples", [3, 601])
def test_solve_batched_array_moves_one_small_vector_to_the_host_per_step(monkeypatch, n_samples):
    """The loop's only device-to-host traffic is one flags vector per step (module docstring):
    every to_numpy and every bool/int/float/index of an array-api-strict array is counted while
    the solver runs. Steps = loop iterations = max over rows of accepted + rejected steps; the
    rest is a fixed number before the loop (the first rest test) and after it (the assembly).
    With 601 sample times (about 4 per step) most steps pass several: sampling adds no transfer
    of its own (the loop before this change made one more per sampling pass)."""
    import uhn.dynamics.solvers.rk45_batched_array as da
    count = {"n": 0}
    real = da.to_numpy

    def counted(x):
        count["n"] += 1
        return real(x)

    monkeypatch.setattr(da, "to_numpy", counted)
    cls = type(strict(np.zeros(1)))
    for name in ("__bool__", "__int__", "__float__", "__index__"):
        orig = getattr(cls, name)

        def wrapped(self, *a, _orig=orig):
            count["n"] += 1
            return _orig(self, *a)
        monkeypatch.setattr(cls, name, wrapped)
    _, F_xp, Y0, _ = _linear(6, 5)
    t_eval = np.linspace(0, 30.0, n_samples)
    b = da.solve_batched_array(F_xp, strict(Y0), 30.0, t_eval=t_eval, rtol=1e-8, atol=1e-10)
    transfers = count["n"]
    iterations = int((b.n_steps + b.n_rejected).max())
    assert iterations > 20 and (n_samples == 3 or len(t_eval) > 3 * iterations)
    assert iterations <= transfers <= iterations + 10, (transfers, iterations)


def test_solve_batched_array_on_a_non_autonomous_system():
    """dY/dt = -a Y + sin(omega t) + cos(omega t) per row: F depends on the stage times
    t + c_i h, the initial step's probe time and t_new, which an autonomous network never
    exercises. Row 0 starts at Y = 0, where the initial step selection takes its small-norm branch
    (h0 = 1e-6, so the first step is 100 h0, below the curvature estimate h1). Against the numpy
    solver: the same steps (float64, see :func:`_step_drift`) and samples within the global error."""
    from uhn.dynamics.solvers.rk45_batched import solve_batched
    from uhn.dynamics.solvers.rk45_batched_array import solve_batched_array
    rng = np.random.default_rng(8)
    B_, W, t_end = 4, 3, 12.0
    a, omega = rng.uniform(0.5, 2.0, (B_, W)), 3.0
    sa = strict(a)

    def F_np(t, Y, rows, out):
        out[:] = -a[rows] * Y + (np.sin(omega * t) + np.cos(omega * t))[:, None]
        return out

    def F_xp(t, Y):
        return -sa * Y + (xps.sin(omega * t) + xps.cos(omega * t))[:, None]

    Y0 = rng.standard_normal((B_, W))
    Y0[0] = 0.0
    t_eval = np.linspace(0, t_end, 25)
    rtol, atol = 1e-8, 1e-10
    x = solve_batched(F_np, Y0, t_end, t_eval=t_eval, rtol=rtol, atol=atol, kernels="numpy")
    y = solve_batched_array(F_xp, strict(Y0), t_end, t_eval=t_eval, rtol=rtol, atol=atol)
    assert np.array_equal(x.n_steps, y.n_steps) and np.array_equal(x.nfev, y.nfev)
    assert np.array_equal(x.t, y.t) and np.all(y.t_final == t_end)
    assert np.abs(host(y.y) - x.y).max() <= _global_error(x.n_steps.max(), atol, rtol, np.abs(x.y).max())


def test_error_norm_accumulates_in_float64():
    """dopri_array._rms of float32 rows is float64 and equals the float64 root mean square of the
    same (exactly representable) values to float64 round-off (W terms summed: (W + 2) eps64)."""
    from uhn.dynamics.solvers.dormand_prince import rms as _rms
    x = np.random.default_rng(9).standard_normal((4, 1000)).astype(np.float32) * 1e3
    got = host(_rms(strict(x), xps), xps.float64)
    want = np.sqrt((x.astype(np.float64) ** 2).mean(1))
    assert np.all(np.abs(got - want) <= (1000 + 2) * EPS * want)
    # float32 accumulation would be off by ~ sqrt(W) eps32 relative, far above that bound
    assert (1000 + 2) * EPS < np.finfo(np.float32).eps


def test_solve_batched_array_reports_a_stalled_row():
    from uhn.dynamics.solvers.rk45_batched_array import solve_batched_array
    _, F_xp, Y0, _ = _linear(3, 4)
    with pytest.raises(RuntimeError, match="row 0 stopped at t=.* more than 20 right-hand-side evaluations"):
        solve_batched_array(F_xp, strict(Y0), 10.0, t_eval=np.linspace(0, 10, 3), max_nfev=20)
    with pytest.raises(ValueError, match=r"at least one row, got shape \(0, 4\)"):
        solve_batched_array(F_xp, strict(np.zeros((0, 4))), 10.0, t_eval=[0.0])


def _integrate_pair(**kw):
    from uhn.dynamics.integrate import integrate
    rng = np.random.default_rng(6)
    M = rng.random((N, D))
    Q = M[:4] + 0.2 * rng.standard_normal((4, D))
    args = dict(similarity="dot", L_v=L.quadratic(), L_h=L.log_sum_exp(4.0), tau_v=0.5, tau_h=0.25,
                I=0.1 * np.ones(D))
    net, snet = Network(M, **args), Network(strict(M), **args)
    a = integrate(net, Q, 30.0, method="RK45-batched", **kw)
    b = integrate(snet, strict(Q), 30.0, method="RK45-batched", **kw)
    return net, snet, a, b


@pytest.mark.parametrize("kw", [{}, {"adiabatic": True}, {"input_mode": "clamped"}],
                         ids=["two-layer", "adiabatic", "clamped"])
def test_integrate_on_strict_arrays_follows_the_numpy_run_and_passes_the_energy_check(kw):
    """integrate(method="RK45-batched") of a network on strict arrays: the same steps and stops as
    the numpy network (nfev per query, sample times, converged), states within the per-step
    round-off of the two right-hand sides ((D + N + 8) eps of the terms they add, about |y| here,
    per step, on a flow that contracts to its fixed point), and a Trajectory of numpy arrays
    whose stored energies agree with the numpy network's recomputation and pass verify_energy."""
    from uhn.dynamics.analysis.energy import verify_energy
    net, snet, a, b = _integrate_pair(**kw)
    rtol, atol = a.params["rtol"], a.params["atol"]
    assert b.params["nfev_per_query"] == a.params["nfev_per_query"]
    assert np.array_equal(a.converged, b.converged) and b.converged.all()
    drift = _step_drift(D + N, EPS, rtol)
    assert np.array_equal(a.t[:-1], b.t[:-1]) and abs(a.t[-1] - b.t[-1]) <= drift * a.t[-1]
    assert isinstance(b.v, np.ndarray) and b.backend.startswith("array_api_strict on")
    steps = max(a.params["nfev_per_query"]) / 6
    for x, y in ((a.v, b.v), (a.h, b.h)):
        assert np.abs(x - y).max() <= _global_error(steps, atol, rtol, np.abs(x).max())
    rep = verify_energy(snet, b)
    assert rep.passed, rep.summary()
    assert rep.stored_E_ratio <= 1 and rep.stored_dEdt_ratio <= 1


def test_integrate_on_strict_arrays_keeps_the_ends_only_when_asked():
    _, _, _, full = _integrate_pair()
    _, _, _, ends = _integrate_pair(keep="ends")
    assert len(ends.t) == 2 and np.array_equal(ends.t, full.t[[0, -1]])
    assert np.array_equal(ends.v, full.v[[0, -1]]) and np.array_equal(ends.E, full.E[[0, -1]])


def test_integrate_float32_strict_network_keeps_float32_states():
    from uhn.dynamics.integrate import integrate
    rng = np.random.default_rng(7)
    M = rng.random((N, D)).astype(np.float32)
    snet = Network(strict(M), "dot", L_h=L.log_sum_exp(4.0))
    tr = integrate(snet, strict(M[:3] + 0.1 * rng.standard_normal((3, D)).astype(np.float32)), 40.0,
                   method="RK45-batched")
    assert tr.v.dtype == tr.h.dtype == np.float32 and tr.E.dtype == np.float64
    assert tr.params["rtol"] == 1e-4 and tr.converged.all()


def test_fixed_point_tools_analyse_a_strict_network_on_its_host_copy():
    """jacobian, stability and distance_bound of a network on strict arrays, at strict states:
    the numbers of the numpy network with the same memories, exactly (Network.on_host copies the
    memories, so both compute the same expressions on the same values)."""
    from uhn.dynamics.analysis.fixed_points import (distance_bound, jacobian, jacobian_adiabatic,
        stability)
    net, snet, M, I = _pair("euclidean", {}, L.quadratic(), L.log_sum_exp(2.0))
    v, h = net.initial_state(M[:1] + 0.05)
    sv, sh = strict(v), strict(h)
    assert snet.on_host() is snet.on_host() and namespace(snet.on_host().M) is np
    assert np.array_equal(jacobian(snet, sv, sh, method="fd"), jacobian(net, v, h, method="fd"))
    assert np.array_equal(jacobian_adiabatic(snet, sv), jacobian_adiabatic(net, v))
    a, b = stability(snet, sv, sh), stability(net, v, h)
    assert np.array_equal(a.eigenvalues, b.eigenvalues) and a.residual == b.residual
    assert distance_bound(snet, sv, sh) == distance_bound(net, v, h)
