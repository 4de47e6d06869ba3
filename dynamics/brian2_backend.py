"""The Krotov-Hopfield network of dynamics.network as a brian2 rate model (docs/theory.md sections 2 and 8).

Three neuron groups per query and two synapse lists that both hold M (w = M.ravel() order):

    feature group (D):   tau_v dv/dt = coupling(g, drive, total) - v + I,   g = L_v'(v)
    memory group (N):    tau_h dh/dt = S - h,                               num = f(h) (unnormalised)
    normaliser (1):      total = sum_mu num_mu                 (only when softmax or squared_euclidean)

    S_mu    = sum_i w_mu,i g_i              (dot)   or  -sum_i (w_mu,i - g_i)^2   (squared_euclidean)
    drive_i = sum_mu w_mu,i num_mu
    coupling = drive / total  (softmax)   or  drive  (other f)                          (dot)
             = 2 (drive / total - g)      or  2 (drive - g total)                        (squared_euclidean)

S, drive and total are brian2 summed variables, each written by one Synapses object; the feature
neurons read ``total`` through a linked variable. The softmax numerator exp(beta h - c) is computed
once per memory neuron per step (run_regularly) with a constant shift c = beta max h(0) per query,
because generated code has no max reduction; a shift that lets exp overflow or the sum underflow is
reported, not hidden.

Time is in milliseconds: ``tau_v`` and ``tau_h`` of the Network (in the network's time unit) are
read as ms, so ``t_end`` and ``dt`` are in the same unit as for dynamics.integrate; rates and states
are dimensionless.

Schemes. brian2 refreshes summed variables in the ``groups`` slot just before the target's state
updater and holds them constant over the step, so with brian2's default scheduling the coupling is
first order in dt whatever the state-update method (``scheme="default"``). ``scheme="leapfrog"``
(the default) orders the memory group before the feature group: h lives at half steps
t_(k+1/2), the feature update over [t_k, t_(k+1)] sees f(h_(k+1/2)) and the memory update over
[t_(k-1/2), t_(k+1/2)] sees S(g(v_k)), a midpoint split that is second order at the same cost.
Each group's own linear decay is integrated exactly (brian2 method "exact"; "rk4" when g is
nonlinear). The memory state is started half a step back, h(-dt/2), by the closed-form solution
with S frozen at S(g(v_0)), and recorded h is interpolated to whole steps (mean of the two half
steps) before E and dE/dt are computed with the Network's own formulas.

A batch of B queries is simulated as B independent copies of the three groups in one brian2
network (block-diagonal synapses), one run for the whole batch.
"""
from __future__ import annotations

import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .integrate import Trajectory
from .network import Network, require_count, require_positive

TARGETS = ("numpy", "cython", "cpp_standalone")
SCHEMES = ("leapfrog", "default")
#: numpy: no compiler and no cold start; see docs/brian2.md for the measurements behind the choice
DEFAULT_TARGET = "numpy"
SUPPORTED_SIMILARITIES = ("dot", "squared_euclidean")
#: largest exponent exp() takes in float64 without overflow, and the smallest before the sum underflows
_EXP_OVER, _EXP_UNDER = 709.0, -700.0

#: why each similarity the Network accepts is not expressed here (the message of the error raised)
_SIMILARITY_REASONS = {
    "cosine": "its gradient M_mu/(|M_mu| |g|) - S_mu g/|g|^2 couples every feature through the norm "
              "|g| and through sum_mu f_mu S_mu; both are reductions that would each need a further "
              "one-neuron summed group (not implemented)",
    "euclidean": "its gradient (M_mu - g)/|M_mu - g| is 0/0 at a memory, which is exactly where "
                 "retrieval converges; generated code cannot take the limit (use squared_euclidean)",
    "manhattan": "its subgradient sign(M_mu - g) is discontinuous at every memory, so a fixed-step "
                 "brian2 scheme chatters around the fixed points (not implemented)",
    "minkowski": "its gradient |M_mu - g|_p^(1-p) |M_mu - g|^(p-1) sign(M_mu - g) needs a per-memory "
                 "norm fed back to every synapse and is singular at a memory (not implemented)",
    "kl": "it normalises g by sum_i g_i, a reduction over the feature group that needs a further "
          "summed group, and takes logs of rates that can reach 0 (not implemented)",
    "reverse_kl": "it normalises g by sum_i g_i, a reduction over the feature group that needs a "
                  "further summed group, and takes logs of rates that can reach 0 (not implemented)",
}

#: the feature rate g = L_v'(v) as a brian2 expression, and whether dv/dt stays linear in v
_L_V_RATES = {"quadratic": ("v", True), "log_cosh": ("tanh(v)", False),
              "softplus": ("1.0/(1.0 + exp(-v))", False)}
_L_V_REASONS = {
    "spherical": "g = v/|v| couples every feature through the norm |v|, a reduction over the "
                 "feature group that needs a further summed group (not implemented)",
    "elementwise": "its activation is a Python callable, which brian2 cannot translate into "
                   "generated code",
}
_L_H_REASONS = {
    "elementwise": "its activation is a Python callable, which brian2 cannot translate into "
                   "generated code",
    "spherical": "f = h/|h| is not a separation function of this network (not implemented)",
    "log_cosh": "not implemented as a memory-layer activation",
    "softplus": "not implemented as a memory-layer activation",
}


#: f = L_h'(h) up to normalisation, as (brian2 code for num, normalised by total?)
_NUMERATORS = {
    "log_sum_exp": ("num = exp(beta*h - c)", True),
    "rectified_polynomial": ("num = clip(h, 0, inf)**n", False),
    "signed_polynomial": ("num = sign(h)*abs(h)**n", False),
    "quadratic": ("num = h", False),
    "exponential": ("num = exp(beta*h)", False),
}


class Brian2UnsupportedError(ValueError):
    """The network uses a similarity or Lagrangian this brian2 formulation cannot express."""


def check_supported(net: Network) -> None:
    """Raise Brian2UnsupportedError naming the part of ``net`` brian2 cannot run, and why."""
    sim = net.sim.name.split("(")[0]
    if sim not in SUPPORTED_SIMILARITIES:
        why = _SIMILARITY_REASONS.get(sim, "not implemented")
        raise Brian2UnsupportedError(
            f"brian2 backend: {net.sim.name} similarity is not supported: {why}; supported "
            f"similarities: {', '.join(SUPPORTED_SIMILARITIES)}")
    if net.L_v.kind not in _L_V_RATES:
        why = _L_V_REASONS.get(net.L_v.kind, "not implemented")
        raise Brian2UnsupportedError(
            f"brian2 backend: feature Lagrangian L_v = {net.L_v.name} is not supported: {why}; "
            f"supported: {', '.join(_L_V_RATES)}")
    if net.L_h.kind not in _NUMERATORS:
        why = _L_H_REASONS.get(net.L_h.kind, "not implemented")
        raise Brian2UnsupportedError(
            f"brian2 backend: memory Lagrangian L_h = {net.L_h.name} is not supported: {why}; "
            f"supported: {', '.join(_NUMERATORS)}")


def default_cache_dir() -> str:
    """Cython cache of compiled brian2 code: $UHN_BRIAN2_CACHE, else ~/.cache/uhn-brian2."""
    return os.environ.get("UHN_BRIAN2_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "uhn-brian2")


@dataclass
class Brian2Model:
    """The brian2 objects of one network and batch, ready to run (see :func:`to_brian2`)."""

    network: object          # brian2.Network
    feature: object          # NeuronGroup (B*D)
    memory: object           # NeuronGroup (B*N)
    normaliser: object       # NeuronGroup (B) or None
    monitors: dict           # "v", "h": recorded at the start of each step (h at t - dt/2 for leapfrog)
    B: int
    dt: float                # ms
    record_every: int
    scheme: str
    shift: Optional[np.ndarray]   # (B,) softmax shift c, or None
    normalised: bool
    info: dict = field(default_factory=dict)


def _half_step_back(net: Network, v0, h0, dt):
    """h(-dt/2) such that the exact h update over one step with S frozen at S(g(v0)) gives the
    solution through h(0) = h0 at t = dt/2: h(-dt/2) = S0 + (h0 - S0) exp(dt / (2 tau_h))."""
    S0 = net.similarity(net.L_v.grad(v0))
    return S0 + (h0 - S0) * np.exp(0.5 * dt / net.tau_h)


def _half_step(net: Network, v, h_half, dt):
    """h(t_k) from h(t_k - dt/2) by the leapfrog step's own closed form with S frozen at
    S(g(v_k)): h = S_k + (h_half - S_k) exp(-dt / (2 tau_h))."""
    S = net.similarity(net.L_v.grad(v))
    return S + (h_half - S) * np.exp(-0.5 * dt / net.tau_h)


def to_brian2(net: Network, Q, dt: float = 0.01, *, scheme: str = "leapfrog",
              record_every: int = 1, I=None, h0=None) -> Brian2Model:
    """Build the brian2 groups, synapses and monitors of ``net`` for queries Q (v(0) = q).

    The current brian2 device and codegen target are used as they are (run_brian2 sets them).

    Parameters
    ----------
    net : the Network (similarity dot or squared_euclidean, see :func:`check_supported`).
    Q : (D,) or (B, D) queries; B copies of the network are built.
    dt : time step in ms (the network's time unit read as ms).
    scheme : "leapfrog" (memory group first, h at half steps; second order) or "default"
        (brian2's own scheduling; first order in the coupling).
    record_every : record v and h every this many steps.
    I : (D,) or (B, D) input current; default net.I (or 0).
    h0 : initial memory state (default S(g(q))).
    """
    import brian2 as b2

    check_supported(net)
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; choose one of {SCHEMES}")
    dt = require_positive(dt, "dt", "time step (ms)")
    record_every = require_count(record_every, "record_every")
    v0, h0 = net.initial_state(Q, h0)
    B, D, N = v0.shape[0], net.D, net.N
    Iext = np.broadcast_to(net._I(None, B) if I is None else np.asarray(I, float), (B, D))

    numerator, normalised = _NUMERATORS[net.L_h.kind]
    sq = net.sim.name == "squared_euclidean"
    needs_total = normalised or sq
    g_expr, linear = _L_V_RATES[net.L_v.kind]
    if sq:
        coupling = "2*(drive/total - g)" if normalised else "2*(drive - g*total)"
    else:
        coupling = "drive/total" if normalised else "drive"
    method = "exact" if linear else "rk4"

    h_start = _half_step_back(net, v0, h0, dt) if scheme == "leapfrog" else h0
    shift = None
    params = {"tau_v": net.tau_v * b2.ms, "tau_h": net.tau_h * b2.ms}
    params.update({k: float(val) for k, val in net.L_h.params.items()})
    if net.L_h.kind == "log_sum_exp":
        with np.errstate(over="ignore", invalid="ignore"):
            bh = net.L_h.beta * np.concatenate([h0, h_start], axis=1)
        if not np.all(np.isfinite(bh)):
            raise OverflowError(f"brian2 backend: beta * h(0) overflows (beta={net.L_h.beta:g})")
        shift = bh[:, :N].max(1)       # c = beta max_mu h_mu(0), the initial state itself
    elif net.L_h.kind == "exponential":
        if net.L_h.beta * h_start.max() > _EXP_OVER:
            raise OverflowError(f"brian2 backend: exp(beta h) overflows at the initial state "
                                f"(beta max h = {net.L_h.beta * h_start.max():.4g} > {_EXP_OVER:g})")

    clock = b2.Clock(dt=dt * b2.ms, name="uhn_clock")
    rec_dt = record_every * dt * b2.ms
    leap = scheme == "leapfrog"
    # orders inside the "groups" slot; a summed variable is refreshed at (target order - 1)
    mem_order, num_order = (0, 2) if leap else (0, -5)
    norm_order, feat_order = (4, 6) if leap else (-2, 0)

    feat_eqs = f"""dv/dt = ({coupling} - v + I_ext)/tau_v : 1
g = {g_expr} : 1
drive : 1
I_ext : 1 (constant)
"""
    if needs_total:
        feat_eqs += "total : 1 (linked)\n"
    feature = b2.NeuronGroup(B * D, feat_eqs, method=method, clock=clock, order=feat_order,
                             namespace=params, name="uhn_feature")
    mem_eqs = """dh/dt = (S - h)/tau_h : 1
S : 1
num : 1
c : 1 (constant)
"""
    memory = b2.NeuronGroup(B * N, mem_eqs, method="exact", clock=clock, order=mem_order,
                            namespace=params, name="uhn_memory")
    memory.run_regularly(numerator, when="groups", order=num_order, name="uhn_numerator")
    objs = [feature, memory]

    # w = M.ravel() per copy: synapse k of copy b joins memory mu_k and feature d_k of that copy
    mu = np.tile(np.repeat(np.arange(N), D), B)
    d = np.tile(np.arange(D), N * B)
    off_f = np.repeat(np.arange(B) * D, N * D)
    off_m = np.repeat(np.arange(B) * N, N * D)
    w = np.tile(net.M.ravel(), B)
    s_expr = "-(w - g_pre)**2" if sq else "w*g_pre"
    to_memory = b2.Synapses(feature, memory, f"w : 1 (constant)\nS_post = {s_expr} : 1 (summed)",
                            clock=clock, namespace=params, name="uhn_similarity")
    to_memory.connect(i=(off_f + d).astype(np.int64), j=(off_m + mu).astype(np.int64))
    to_memory.w = w
    to_feature = b2.Synapses(memory, feature, "w : 1 (constant)\ndrive_post = w*num_pre : 1 (summed)",
                             clock=clock, namespace=params, name="uhn_drive")
    to_feature.connect(i=(off_m + mu).astype(np.int64), j=(off_f + d).astype(np.int64))
    to_feature.w = w
    objs += [to_memory, to_feature]

    normaliser = None
    if needs_total:
        normaliser = b2.NeuronGroup(B, "total : 1", clock=clock, order=norm_order, name="uhn_normaliser")
        to_norm = b2.Synapses(memory, normaliser, "total_post = num_pre : 1 (summed)", clock=clock,
                              name="uhn_total")
        to_norm.connect(i=np.arange(B * N, dtype=np.int64),
                        j=np.repeat(np.arange(B, dtype=np.int64), N))
        feature.total = b2.linked_var(normaliser, "total",
                                      index=np.repeat(np.arange(B, dtype=np.int64), D))
        objs += [normaliser, to_norm]

    feature.v = v0.ravel()
    feature.I_ext = Iext.ravel()
    memory.h = h_start.ravel()
    if shift is not None:
        memory.c = np.repeat(shift, N)

    monitors = {"v": b2.StateMonitor(feature, "v", record=True, dt=rec_dt, when="start",
                                     name="uhn_monitor_v"),
                "h": b2.StateMonitor(memory, "h", record=True, dt=rec_dt, when="start",
                                     name="uhn_monitor_h")}
    objs += list(monitors.values())
    network = b2.Network(*objs, name="uhn_network")
    return Brian2Model(network=network, feature=feature, memory=memory, normaliser=normaliser,
                       monitors=monitors, B=B, dt=float(dt), record_every=record_every,
                       scheme=scheme, shift=shift, normalised=normalised,
                       info={"method": method, "I": np.array(Iext)})


@contextmanager
def _brian2_target(target: str, cache_dir: Optional[str], build_dir: Optional[str]):
    """Select the codegen target (runtime) or the cpp_standalone device for one run, then restore
    the previous target, cython cache directory and device."""
    import brian2 as b2
    from brian2.devices.device import reset_device

    if target not in TARGETS:
        raise ValueError(f"unknown brian2 target {target!r}; choose one of {TARGETS}")
    prefs = b2.prefs
    old_target = prefs.codegen.target
    old_cache = prefs["codegen.runtime.cython.cache_dir"]
    cache_dir = cache_dir or default_cache_dir()
    tmp = None
    try:
        if target == "cython":
            os.makedirs(cache_dir, exist_ok=True)
            prefs["codegen.runtime.cython.cache_dir"] = cache_dir
        if target == "cpp_standalone":
            if build_dir is None:
                tmp = tempfile.TemporaryDirectory(prefix="uhn-brian2-standalone-")
                build_dir = tmp.name
            b2.set_device("cpp_standalone", directory=build_dir, build_on_run=True,
                          with_output=False)
        else:
            prefs.codegen.target = target
        yield
    finally:
        prefs.codegen.target = old_target
        prefs["codegen.runtime.cython.cache_dir"] = old_cache
        if target == "cpp_standalone":
            b2.get_device().reinit()
            b2.get_device().activate()
            reset_device()
        if tmp is not None:
            tmp.cleanup()


def run_brian2(net: Network, Q, t_end: float, dt: float = 0.01, *, target: str = DEFAULT_TARGET,
               scheme: str = "leapfrog", record_every: int = 1, input_mode: str = "initial",
               h0=None, fixed_point_tol: float = 1e-8, cache_dir: Optional[str] = None,
               build_dir: Optional[str] = None) -> Trajectory:
    """Simulate tau_v dv/dt = sum_mu f_mu dS_mu/dg - v + I, tau_h dh/dt = S(g) - h in brian2.

    Parameters
    ----------
    net : the Network (dot or squared_euclidean similarity; see :func:`check_supported`).
    Q : (D,) or (B, D) queries, v(0) = q; a batch is B independent copies in one brian2 run.
    t_end : simulated time in ms (the network's time unit read as ms); a whole number of steps.
    dt : time step in ms.
    target : "numpy" or "cython" (runtime code generation) or "cpp_standalone" (a C++ project
        built in ``build_dir``, default a temporary directory removed afterwards).
    scheme : "leapfrog" (second order, default) or "default" (brian2 scheduling, first order).
    record_every : record every this many steps (t_end / dt must be a multiple of it).
    input_mode : "initial" (I = net.I or 0) or "clamped" (I = q), as in dynamics.integrate.
    h0 : initial memory state (default S(g(q))).
    fixed_point_tol : ``converged`` where max |dv/dt|, |dh/dt| at the last sample is below it.
    cache_dir : cython cache directory (default :func:`default_cache_dir`).

    Returns
    -------
    Trajectory with backend "brian2/<target>", h interpolated to whole steps for the leapfrog
    scheme, E and dEdt from the Network's formulas, and params recording dt, target, scheme,
    method, the softmax shift and wall times in s: ``build_s`` (objects), ``run_s`` (code
    generation, compilation and simulation) and ``loop_s`` (the simulation loop alone; for
    cpp_standalone the compiled binary's run).
    """
    t_end = require_positive(t_end, "t_end", "time (ms)")
    dt = require_positive(dt, "dt", "time step (ms)")
    record_every = require_count(record_every, "record_every")
    if input_mode not in ("initial", "clamped"):
        raise ValueError(f"input_mode must be 'initial' or 'clamped', got {input_mode!r}")
    n_steps = int(round(t_end / dt))
    if n_steps < 1 or abs(n_steps * dt - t_end) > 1e-9 * max(t_end, 1.0):
        raise ValueError(f"t_end = {t_end} ms is not a whole number of steps of dt = {dt} ms")
    if n_steps % record_every:
        raise ValueError(f"t_end / dt = {n_steps} steps is not a multiple of record_every = {record_every}")
    check_supported(net)
    Qm = np.atleast_2d(np.asarray(Q, dtype=np.float64))
    I = Qm.copy() if input_mode == "clamped" else None

    import brian2 as b2
    with _brian2_target(target, cache_dir, build_dir):
        t0 = time.perf_counter()
        model = to_brian2(net, Qm, dt, scheme=scheme, record_every=record_every, I=I, h0=h0)
        t1 = time.perf_counter()
        # one extra step so that the start-of-step monitors see the state at t_end
        model.network.run((n_steps + 1) * dt * b2.ms)
        t2 = time.perf_counter()
        mon = model.monitors
        v = np.asarray(mon["v"].v).T
        h_start = np.asarray(mon["h"].h).T
        run_time = getattr(b2.get_device(), "_last_run_time", None)
    T = n_steps // record_every + 1
    B, D, N = model.B, net.D, net.N
    v = v[:T].reshape(T, B, D)
    h = h_start[:T].reshape(T, B, N)
    if scheme == "leapfrog":   # h(t_k - dt/2) -> h(t_k) along the scheme's own step (S frozen at S_k)
        h = np.stack([_half_step(net, vk, hk, dt) for vk, hk in zip(v, h)])
    _check_finite_run(net, model, v, h)
    # t_k = k record_every dt, written as a fraction of t_end so that the last sample is t_end
    # itself (3 * 0.1 is 0.30000000000000004: integrate(net, q, 0.3, t_eval=t) would refuse it)
    t = np.arange(T) * record_every / n_steps * t_end
    Iv = model.info["I"]
    E = np.stack([net.energy(vk, hk, Iv) for vk, hk in zip(v, h)])
    dE = np.stack([net.dEdt(vk, hk, Iv) for vk, hk in zip(v, h)])
    vel = net.residual(v[-1], h[-1], Iv)
    params = {"dt": float(dt), "t_end": float(n_steps * dt), "target": target, "scheme": scheme,
              "record_every": int(record_every), "brian2_method": model.info["method"],
              "softmax_shift": None if model.shift is None else model.shift.tolist(),
              "input_mode": input_mode, "fixed_point_tol": fixed_point_tol,
              "build_s": t1 - t0, "run_s": t2 - t1,
              "loop_s": run_time,
              "time_unit": "ms", **net.describe()}
    return Trajectory(t=t, v=v, h=h, E=E, dEdt=dE, I=np.array(Iv), converged=vel < fixed_point_tol,
                      method=f"{scheme}/{model.info['method']}", backend=f"brian2/{target}",
                      message=f"{n_steps} steps of {dt:g} ms", adiabatic=False, params=params)


def _check_finite_run(net: Network, model: Brian2Model, v, h) -> None:
    """Raise FloatingPointError if the run left float64 range, naming the softmax shift if it is
    the cause (exp(beta h - c) overflowing, or every numerator underflowing so that total = 0)."""
    if model.shift is not None:
        arg = net.L_h.beta * h - model.shift[None, :, None]
        top = arg.max(2)
        if np.nanmax(top) > _EXP_OVER or np.nanmin(top) < _EXP_UNDER:
            k, b = np.unravel_index(np.nanargmax(np.abs(top)), top.shape)
            raise FloatingPointError(
                f"brian2 backend: the constant softmax shift c = beta max h(0) = {model.shift[b]:.4g} "
                f"(query {b}) no longer fits at sample {k}: max(beta h) - c = {top[k, b]:.4g} is "
                f"outside [{_EXP_UNDER:g}, {_EXP_OVER:g}], so exp overflows or the normaliser "
                f"underflows; lower beta or rescale the memories")
    if not (np.all(np.isfinite(v)) and np.all(np.isfinite(h))):
        bad = np.flatnonzero(~(np.isfinite(v).all((1, 2)) & np.isfinite(h).all((1, 2))))[0]
        raise FloatingPointError(f"brian2 backend: the state became non-finite at sample {bad} "
                                 f"(t = {bad * model.record_every * model.dt:g} ms)")
