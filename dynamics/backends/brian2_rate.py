"""The Krotov-Hopfield network of uhn.dynamics.network as a brian2 rate model (docs/theory.md sections 2 and 8).

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
once per memory neuron per step (run_regularly) with a shift c that follows the state: generated
code has no max reduction, so a one-neuron group per copy renews c each step from the last
numerators, c <- log sum exp(beta h_last) + beta <h - h_last>_softmax (:func:`follow_shift`),
which lets softmax run at any beta the float64 state holds; a step in which exp would still
overflow is reported, not hidden.

Time is in milliseconds: ``tau_v`` and ``tau_h`` of the Network (in the network's time unit) are
read as ms, so ``t_end`` and ``dt`` are in the same unit as for uhn.dynamics.integrate; rates and states
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

Other similarities (cosine, euclidean / manhattan / minkowski with eps > 0, kl, reverse_kl) and the
spherical L_v (g = v/|v|) couple the features through g-dependent reductions that brian2 refreshes
once per step; for them the coupling sum_mu f_mu dS_mu/dg is frozen at the midpoint
(f(h_(k+1/2)), gm = 1.5 g_k - 0.5 g_(k-1)) and tau_v dv/dt = c - v + I is integrated exactly,
again second order; the reductions are summed variables of one-neuron-per-copy groups
(:func:`_coupling_spec`, :func:`_build_extrapolated`).

The step: ``dt="auto"`` (default of run_brian2) measures the scheme's error constant C in
e = C dt^2 from two short pilot runs (Richardson) and takes dt = 0.8 sqrt(dt_tol / C)
(:func:`auto_dt`).

A batch of B queries is simulated as B independent copies of the groups in one brian2
network (block-diagonal synapses), one run for the whole batch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from uhn.dynamics.backends.brian2_stability import check_step, stability_bound
from uhn.dynamics.backends.brian2_target import (DEFAULT_TARGET, TARGETS,  # noqa: F401
    brian2_target, default_cache_dir, import_brian2, step_count)
from uhn.dynamics.trajectory import Trajectory
from uhn.dynamics.network import Network
from uhn.models.validation import require_count, require_positive

from uhn.dynamics.solvers.driver import DEFAULT_RTOL, NOISE_FACTOR, Settings, rest_ratio

SCHEMES = ("leapfrog", "default")
#: the tolerances of the rest test behind ``converged``: integrate's float64 defaults, so that a
#: brian2 run and a solve_ivp run of the same network call the same states fixed points
REST_RTOL, REST_ATOL = DEFAULT_RTOL[np.dtype(np.float64)], Settings.atol
SUPPORTED_SIMILARITIES = ("dot", "squared_euclidean", "cosine", "euclidean", "manhattan", "minkowski",
                          "kl", "reverse_kl")
#: largest exponent exp() takes in float64 without overflow (log of the largest float64 is 709.78)
_EXP_OVER = 709.0

#: why each similarity the Network accepts is not expressed here (the message of the error raised)
_SIMILARITY_REASONS = {
    "euclidean": "with eps = 0 its gradient (M_mu - g)/|M_mu - g| is 0/0 at a memory, which is "
                 "exactly where retrieval converges; generated code cannot take the limit (use "
                 "get_similarity('euclidean', eps=...) with eps > 0, or squared_euclidean)",
    "manhattan": "with eps = 0 its subgradient sign(M_mu - g) is discontinuous at every memory, so a "
                 "fixed-step scheme chatters around the fixed points (use eps > 0)",
    "minkowski": "with eps = 0 its gradient |M_mu - g|_p^(1-p) |M_mu - g|^(p-1) sign(M_mu - g) is "
                 "singular at a memory (use eps > 0); p = inf has no gradient",
}
#: the feature rate g = L_v'(v) as a brian2 expression, and whether dv/dt stays linear in v
_L_V_RATES = {"quadratic": ("v", True), "log_cosh": ("tanh(v)", False),
              "softplus": ("1.0/(1.0 + exp(-v))", False), "spherical": ("v/sqrt(nv2)", False)}
_L_V_REASONS = {
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
    eps = net.sim.params.get("eps", 0.0)
    p = net.sim.params.get("p", 1.0)
    if sim not in SUPPORTED_SIMILARITIES or (sim in _SIMILARITY_REASONS
                                             and (eps == 0 or not np.isfinite(p))):
        why = _SIMILARITY_REASONS.get(sim, "not implemented")
        raise Brian2UnsupportedError(
            f"brian2 backend: {net.sim.name} similarity is not supported: {why}; supported "
            f"similarities: {', '.join(SUPPORTED_SIMILARITIES)} (euclidean, manhattan and minkowski "
            f"with eps > 0)")
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


#: the smoothing eps and exponent p with which supported_similarities probes the distances
#: that brian2 runs only smoothed (eps > 0)
PROBE_EPS, PROBE_P = 0.1, 3.0


def supported_similarities(eps: float = PROBE_EPS, p: float = PROBE_P) -> tuple:
    """The names of uhn.models.similarity.names() whose similarity :func:`check_supported`
    accepts (probed with sigmoid rates, which every similarity takes, and softmax memories), the
    distances built with smoothing ``eps``
    (and minkowski with exponent ``p``), as the CLI offers them."""
    from uhn.dynamics.lagrangians import softplus
    from uhn.models.similarity import get_similarity, names
    M = np.full((2, 2), 0.5)
    out = []
    for name in names():
        try:
            kw = {k: v for k, v in (("eps", eps), ("p", p)) if _accepts(name, k)}
            check_supported(Network(M, get_similarity(name, **kw), L_v=softplus()))
        except (Brian2UnsupportedError, TypeError, ValueError):
            continue
        out.append(name)
    return tuple(out)


def _accepts(name: str, param: str) -> bool:
    """Whether get_similarity(name) takes keyword ``param``."""
    from uhn.models.similarity import get_similarity
    try:
        get_similarity(name, **{param: PROBE_EPS if param == "eps" else PROBE_P})
    except (TypeError, ValueError):
        return False
    return True


def _uses_extrapolation(net: Network) -> bool:
    """True where the feature coupling depends on g other than linearly through the feature's own
    rate (every similarity but dot and squared_euclidean, and any similarity with spherical g):
    those networks are built by :func:`_coupling_spec` with the coupling frozen at the midpoint
    state extrapolated from the last two steps."""
    return net.sim.name not in ("dot", "squared_euclidean") or net.L_v.kind == "spherical"


@dataclass
class _Spec:
    """Generated code of one similarity for the extrapolated-midpoint scheme (see to_brian2).

    ``g`` is the feature rate at t_k and ``gm`` = 1.5 g_k - 0.5 g_(k-1) its extrapolation to
    t_(k+1/2); ``Z`` is sum_mu num_mu (softmax) or 1. Keys of the summed dicts are the target
    variable names; values are expressions in the synapse's pre/post variables."""

    w_sim: np.ndarray                    # (N, D) weights of feature -> memory synapses
    w_drive: np.ndarray                  # (N, D) weights of memory -> feature synapses
    mem_sums: dict                       # per memory, over features (feature -> memory synapses)
    feat_sums: dict = field(default_factory=dict)    # per copy, over features (A1 group)
    mem_exprs: str = "S = Sraw : 1\n"      # memory-group subexpressions, S among them
    rate_sums: dict = field(default_factory=dict)    # per copy, over memories (A2 group)
    drive: str = "w*num_pre"             # memory -> feature summed expression
    coupling: str = "drive/Z"            # sum_mu f_mu dS_mu/dg at (gm, f(h_(k+1/2)))
    k0: Optional[np.ndarray] = None      # (N,) constant per memory, if the score needs one


def _coupling_spec(net: Network) -> _Spec:
    """The score S_mu(g) and the contraction sum_mu f_mu dS_mu/dg of each similarity as brian2
    expressions (models/similarity.py states the same formulas; docs/theory.md section 2):

    dot          S = M.g                           c = sum f M
    sq_euclidean S = -|M - g|^2                    c = 2 (sum f M - g sum f)
    cosine       S = M^.g/|g|                      c = sum f M^ / |g| - (sum f S) g/|g|^2
    euclidean    S = eps - r, r = sqrt(|M - g|^2 + eps^2)    c = sum (f/r) M - g sum f/r
    minkowski    S = -s^(1/p), s = sum_i phi(M_i - g_i)^p, phi(x) = sqrt(x^2 + eps^2) - eps
                 c_i = -sum f s^((1-p)/p) phi(x)^(p-1) x / sqrt(x^2 + eps^2), x = g_i - M_i
    kl           S = sum_i M^_i log(g_i + e) - log Sigma - sum M^ log M^,  Sigma = sum (g + e)
                 c = (sum f M^)/(g + e) - (sum f)/Sigma        (M^ = (M + e)/sum(M + e))
    reverse_kl   S = sum_i (g_i + e) log M^_i / Sigma - [sum (g + e) log(g + e)/Sigma - log Sigma]
                 c = [sum f log M^ - (sum f) log((g + e)/Sigma) - sum f S] / Sigma
    """
    name = net.sim.name.split("(")[0]
    M = net.M
    prm = net.sim.params
    if name == "dot":
        return _Spec(M, M, {"Sraw": "w*g_pre"})
    if name == "squared_euclidean":
        return _Spec(M, M, {"Sraw": "-(w - g_pre)**2"}, coupling="2*(drive - gm*total)/Z")
    if name == "cosine":
        Mh = M / np.linalg.norm(M, axis=1, keepdims=True)
        return _Spec(Mh, Mh, {"Sraw": "w*g_pre", "Smraw": "w*gm_pre"},
                     feat_sums={"ng2": "g_pre**2", "nm2": "gm_pre**2"},
                     mem_exprs="S = Sraw/sqrt(ng2) : 1\n",
                     rate_sums={"fSraw": "num_pre*Smraw_pre"},   # sum f S(gm) = fSraw / |gm|
                     coupling="(drive - fSraw*gm/nm2)/(sqrt(nm2)*Z)")
    if name == "euclidean":
        return _Spec(M, M, {"Sraw": "(w - g_pre)**2", "Smraw": "(w - gm_pre)**2"},
                     mem_exprs="S = eps - sqrt(Sraw + eps**2) : 1\nrm = sqrt(Smraw + eps**2) : 1\n",
                     rate_sums={"fr": "num_pre/rm_pre"}, drive="w*num_pre/rm_pre",
                     coupling="(drive - gm*fr)/Z")
    if name in ("manhattan", "minkowski"):
        p = float(prm["p"])
        phi = "(sqrt(({x})**2 + eps**2) - eps)"
        pw = "" if p == 1 else f"**{p!r}"
        sc = "1.0" if p == 1 else f"Smraw**({(1 - p) / p!r})"
        tail = "" if p == 1 else f"*{phi.format(x='gm_post - w')}**{p - 1!r}"
        return _Spec(M, M, {"Sraw": phi.format(x="w - g_pre") + pw,
                            "Smraw": phi.format(x="w - gm_pre") + pw},
                     mem_exprs=f"S = -Sraw**{1 / p!r} : 1\nsc = {sc} : 1\n",
                     drive=f"-num_pre*sc_pre{tail}*(gm_post - w)/sqrt((gm_post - w)**2 + eps**2)")
    Mh = (M + prm["eps"]) / (M + prm["eps"]).sum(1, keepdims=True)
    if name == "kl":
        return _Spec(Mh, Mh, {"Sraw": "w*log(g_pre + eps)"},
                     feat_sums={"sg": "g_pre + eps", "sgm": "gm_pre + eps"},
                     mem_exprs="S = Sraw - log(sg) - k0 : 1\n",
                     coupling="(drive/(gm + eps) - total/sgm)/Z", k0=(Mh * np.log(Mh)).sum(1))
    if name == "reverse_kl":
        L = np.log(Mh)
        return _Spec(L, L, {"Sraw": "w*(g_pre + eps)", "Smraw": "w*(gm_pre + eps)"},
                     feat_sums={"sg": "g_pre + eps", "lg": "(g_pre + eps)*log(g_pre + eps)",
                                "sgm": "gm_pre + eps", "lgm": "(gm_pre + eps)*log(gm_pre + eps)"},
                     mem_exprs="S = Sraw/sg - lg/sg + log(sg) : 1\n",
                     # sum f S(gm) = fSraw/sgm - total (lgm/sgm - log sgm)
                     rate_sums={"fSraw": "num_pre*Smraw_pre"},
                     coupling="(drive - total*log((gm + eps)/sgm) - fSraw/sgm + total*(lgm/sgm "
                              "- log(sgm)))/(sgm*Z)")
    raise Brian2UnsupportedError(f"brian2 backend: no generated code for {net.sim.name}")


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
    net : the Network (see :func:`check_supported`).
    Q : (D,) or (B, D) queries; B copies of the network are built.
    dt : time step in ms (the network's time unit read as ms).
    scheme : "leapfrog" (memory group first, h at half steps; second order) or "default"
        (brian2's own scheduling; first order in the coupling).
    record_every : record v and h every this many steps.
    I : (D,) or (B, D) input current; default net.I (or 0).
    h0 : initial memory state (default S(g(q))).
    """
    b2 = import_brian2()

    check_supported(net)
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; choose one of {SCHEMES}")
    dt = require_positive(dt, "dt", "time step (ms)")
    record_every = require_count(record_every, "record_every")
    v0, h0 = net.initial_state(Q, h0)
    B, D, N = v0.shape[0], net.D, net.N
    Iext = np.broadcast_to(net.input_current(None, B) if I is None else np.asarray(I, float), (B, D))

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
        # c0 = log sum_mu exp(beta h_mu) at the state of the memories the first numerators
        # are relative to (h_start); see _follow_shift
        top = bh[:, N:].max(1)
        shift = top + np.log(np.exp(bh[:, N:] - top[:, None]).sum(1))
    elif net.L_h.kind == "exponential":
        if net.L_h.beta * h_start.max() > _EXP_OVER:
            raise OverflowError(f"brian2 backend: exp(beta h) overflows at the initial state "
                                f"(beta max h = {net.L_h.beta * h_start.max():.4g} > {_EXP_OVER:g})")

    clock = b2.Clock(dt=dt * b2.ms, name="uhn_clock")
    rec_dt = record_every * dt * b2.ms
    if _uses_extrapolation(net):
        if scheme != "leapfrog":
            raise ValueError(f"scheme {scheme!r} is offered for dot and squared_euclidean networks "
                             f"with elementwise rates only; {net.sim.name} with L_v = {net.L_v.name} "
                             f"runs the leapfrog scheme with an extrapolated midpoint")
        return _build_extrapolated(net, v0, h_start, Iext, dt, clock, rec_dt, params, shift,
                                   record_every)
    leap = scheme == "leapfrog"
    # orders inside the "groups" slot; a summed variable is refreshed at (target order - 1)
    # (the running softmax shift's group at num_order - 1, its summed dsum at num_order - 2)
    mem_order, num_order = (0, 3) if leap else (0, -5)
    norm_order, feat_order = (5, 7) if leap else (-2, 0)

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
""" + ("c : 1 (linked)\nhp : 1\n" if shift is not None else "c : 1 (constant)\n")
    memory = b2.NeuronGroup(B * N, mem_eqs, method="exact", clock=clock, order=mem_order,
                            namespace=params, name="uhn_memory")
    memory.run_regularly(numerator + ("\nhp = h" if shift is not None else ""), when="groups",
                         order=num_order, name="uhn_numerator")
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
        normaliser = b2.NeuronGroup(B, "total : 1\nc : 1", clock=clock, order=norm_order,
                                    name="uhn_normaliser")
        to_norm = b2.Synapses(memory, normaliser, "total_post = num_pre : 1 (summed)", clock=clock,
                              name="uhn_total")
        to_norm.connect(i=np.arange(B * N, dtype=np.int64),
                        j=np.repeat(np.arange(B, dtype=np.int64), N))
        feature.total = b2.linked_var(normaliser, "total",
                                      index=np.repeat(np.arange(B, dtype=np.int64), D))
        objs += [normaliser, to_norm]
        if shift is not None:
            objs += follow_shift(b2, memory, normaliser, h_start, shift, N, B, num_order - 1,
                                  clock, params)

    feature.v = v0.ravel()
    feature.I_ext = Iext.ravel()
    memory.h = h_start.ravel()

    return _assemble(b2, objs, feature, memory, normaliser, rec_dt, B=B, dt=float(dt),
                     record_every=record_every, scheme=scheme, shift=shift, normalised=normalised,
                     info={"method": method, "I": np.array(Iext)})


def follow_shift(b2, memory, normaliser, h_start, c0, N, B, order, clock, params,
                 prefix: str = "uhn") -> list:
    """The softmax shift that follows the state (docs/theory.md section 8): one neuron per copy
    at ``order`` (just before the numerators) renews c from the numerators of the previous step,

        c <- c + log(total) + beta sum_mu num_mu (h_mu - hp_mu) / total,

    hp the memory state those numerators were computed at: c = log sum exp(beta hp) + beta
    <h - hp>_p, the log-sum-exp at the last state moved by the softmax-weighted mean change of
    beta h (p the last softmax), a lower bound of log sum exp(beta h) by Jensen's inequality.
    Softmax is shift-invariant (num and total carry the same exp(-c)), so the shift changes no
    f_mu beyond round-off; exp overflows only where some beta h_mu ends a step more than ~709
    above c, i.e. a memory overtakes those that held the softmax weight by 709 / beta within one
    step (a step that does not resolve the dynamics). The memory neurons read c through a linked
    variable and set hp = h with each num (their eqs declare ``c : 1 (linked)`` and ``hp : 1``).
    Object names start with ``prefix`` (fixed names: the cython cache is hit by later runs).
    Sets the state before the first step (hp = h_start, num = exp(beta h_start - c0), total) and
    returns the new objects."""
    idx = np.repeat(np.arange(B, dtype=np.int64), N)
    shifter = b2.NeuronGroup(B, "c : 1\ndsum : 1\ntotal : 1 (linked)\n", clock=clock, order=order,
                             namespace=params, name=f"{prefix}_shift")
    shifter.total = b2.linked_var(normaliser, "total")
    syn = connect_blocks(b2, memory, shifter, N, 1, B, "dsum_post = num_pre*(h_pre - hp_pre) : 1 "
                         "(summed)", f"{prefix}_shift_syn", params, clock)
    shifter.run_regularly("c = c + log(total) + beta*dsum/total", when="groups", order=order,
                          name=f"{prefix}_follow_shift")
    memory.c = b2.linked_var(shifter, "c", index=idx)
    beta = float(params["beta"])
    num0 = np.exp(beta * h_start - c0[:, None])
    memory.hp = h_start.ravel()
    memory.num = num0.ravel()
    normaliser.total = num0.sum(1)
    shifter.c = c0
    return [shifter, syn]


def _assemble(b2, objs, feature, memory, normaliser, rec_dt, **fields) -> Brian2Model:
    """The model: start-of-step monitors of v and h every rec_dt, and the brian2 Network of all
    objects (fixed names, so the cython cache is hit by later runs of any shape)."""
    monitors = {"v": b2.StateMonitor(feature, "v", record=True, dt=rec_dt, when="start",
                                     name="uhn_monitor_v"),
                "h": b2.StateMonitor(memory, "h", record=True, dt=rec_dt, when="start",
                                     name="uhn_monitor_h")}
    shifter = [o for o in objs if getattr(o, "name", None) == "uhn_shift"]
    if shifter:   # the running softmax shift (follow_shift), for the range check
        monitors["c"] = b2.StateMonitor(shifter[0], ["c", "total"], record=True, dt=rec_dt,
                                        when="start", name="uhn_monitor_c")
    network = b2.Network(*objs, *monitors.values(), name="uhn_network")
    return Brian2Model(network=network, feature=feature, memory=memory, normaliser=normaliser,
                       monitors=monitors, **fields)


def connect_blocks(b2, pre, post, n_pre, n_post, B, eqs, name, params, clock, weights=None):
    """Synapses joining every neuron of each copy's pre block (n_pre) to every neuron of the same
    copy's post block (n_post), block-diagonal over the B copies, listed post-major (synapse k of
    a copy joins pre k % n_pre to post k // n_pre); ``weights`` (n_post, n_pre) then sets w in
    its ravel() order. Summed-variable expressions may read only the pre/post groups' own
    variables and subexpressions without linked variables (brian2 cannot resolve a linked
    variable through a synapse index)."""
    syn = b2.Synapses(pre, post, eqs, clock=clock, namespace=params, name=name)
    a = np.tile(np.repeat(np.arange(n_post), n_pre), B)
    b = np.tile(np.arange(n_pre), n_post * B)
    off_pre = np.repeat(np.arange(B) * n_pre, n_pre * n_post)
    off_post = np.repeat(np.arange(B) * n_post, n_pre * n_post)
    syn.connect(i=(off_pre + b).astype(np.int64), j=(off_post + a).astype(np.int64))
    if weights is not None:
        syn.w = np.tile(np.asarray(weights, float).ravel(), B)
    return syn


def _build_extrapolated(net, v0, h_start, Iext, dt, clock, rec_dt, params, shift, record_every):
    """The leapfrog scheme with an extrapolated midpoint, for couplings that depend on g
    nonlinearly or through reductions over the feature group (see :func:`_coupling_spec`).

    Per step, in this order inside the ``groups`` slot (a summed variable is refreshed just before
    its target group's order):

      -30  feature: [g = v/|v| (spherical)], gm = 1.5 g_k - 0.5 g_(k-1), g_prev = g_k
      -20  A1 (one neuron per copy): sums over the features of g_k and gm (norms, sums)
        0  memory: S(g_k) from the summed scores; h_(k-1/2) -> h_(k+1/2) exactly with S frozen
        2  softmax only: the running shift c (:func:`follow_shift`)
        3  memory: num = f(h_(k+1/2)) (unnormalised)
        5  A2 (one neuron per copy): Z = sum num, and sums over memories of num x (scores at gm)
        7  feature: v_k -> v_(k+1) exactly for tau_v dv/dt = c - v + I with the coupling
           c = sum_mu f_mu dS_mu/dg at (gm, f(h_(k+1/2))) frozen over the step

    gm is g at t_(k+1/2) up to O(dt^2) and f(h_(k+1/2)) is the midpoint memory rate, so the
    frozen coupling is a midpoint rule: second order, like the plain leapfrog. g_(-1) is
    g(v_0 - dt dv/dt(0)), so the first step is second order too. The explicit midpoint makes the
    coupling's own g-dependence explicit: stable while dt |d c/d g| / tau_v stays below about 1.
    """
    b2 = import_brian2()

    spec = _coupling_spec(net)
    B, D, N = v0.shape[0], net.D, net.N
    numerator, normalised = _NUMERATORS[net.L_h.kind]
    params = dict(params)
    if "eps" in net.sim.params:
        params["eps"] = float(net.sim.params["eps"])
    spherical = net.L_v.kind == "spherical"

    a1_vars = dict(spec.feat_sums)
    if spherical:
        a0 = b2.NeuronGroup(B, "nv2 : 1", clock=clock, order=-40, name="uhn_vnorm")
    a1 = b2.NeuronGroup(B, "".join(f"{k} : 1\n" for k in a1_vars) or "dummy1 : 1\n",
                        clock=clock, order=-20, name="uhn_featuresums")
    a2_vars = {"total": "num_pre", **spec.rate_sums}
    a2 = b2.NeuronGroup(B, "".join(f"{k} : 1\n" for k in a2_vars), clock=clock, order=5,
                        name="uhn_normaliser")

    g_line = "g : 1\n" if spherical else f"g = {_L_V_RATES[net.L_v.kind][0]} : 1\n"
    feat_eqs = (f"dv/dt = (c - v + I_ext)/tau_v : 1\nc = {spec.coupling} : 1\n"
                f"Z = {'total' if normalised else '1.0'} : 1\n{g_line}"
                "gm : 1\ng_prev : 1\ndrive : 1\nI_ext : 1 (constant)\n")
    if spherical:
        feat_eqs += "nv2 : 1 (linked)\n"
    feat_links = {k: a1 for k in a1_vars if k in spec.coupling}
    feat_links.update({k: a2 for k in a2_vars})
    feat_eqs += "".join(f"{k} : 1 (linked)\n" for k in feat_links)
    feature = b2.NeuronGroup(B * D, feat_eqs, method="exact", clock=clock, order=7,
                             namespace=params, name="uhn_feature")
    prep = ("g = v/sqrt(nv2)\n" if spherical else "") + "gm = 1.5*g - 0.5*g_prev\ng_prev = g"
    feature.run_regularly(prep, when="groups", order=-30, name="uhn_midpoint")

    mem_links = [k for k in a1_vars if k in spec.mem_exprs]
    mem_eqs = ("dh/dt = (S - h)/tau_h : 1\n" + spec.mem_exprs
               + "".join(f"{k} : 1\n" for k in spec.mem_sums)
               + "".join(f"{k} : 1 (linked)\n" for k in mem_links)
               + "num : 1\nk0 : 1 (constant)\n"
               + ("c : 1 (linked)\nhp : 1\n" if shift is not None else "c : 1 (constant)\n"))
    memory = b2.NeuronGroup(B * N, mem_eqs, method="exact", clock=clock, order=0,
                            namespace=params, name="uhn_memory")
    memory.run_regularly(numerator + ("\nhp = h" if shift is not None else ""), when="groups",
                         order=3, name="uhn_numerator")
    objs = [feature, memory, a1, a2]

    sums = "".join(f"{k}_post = {e} : 1 (summed)\n" for k, e in spec.mem_sums.items())
    objs.append(connect_blocks(b2, feature, memory, D, N, B, "w : 1 (constant)\n" + sums,
                                "uhn_similarity", params, clock, spec.w_sim))
    drive = connect_blocks(b2, memory, feature, N, D, B,
                            f"w : 1 (constant)\ndrive_post = {spec.drive} : 1 (summed)\n",
                            "uhn_drive", params, clock)
    drive.w = np.tile(spec.w_drive.T.ravel(), B)   # synapse (mu -> i) listed feature-major
    objs.append(drive)
    if a1_vars:
        objs.append(connect_blocks(b2, feature, a1, D, 1, B, "".join(
            f"{k}_post = {e} : 1 (summed)\n" for k, e in a1_vars.items()),
            "uhn_featuresum_syn", params, clock))
    objs.append(connect_blocks(b2, memory, a2, N, 1, B, "".join(
        f"{k}_post = {e} : 1 (summed)\n" for k, e in a2_vars.items()),
        "uhn_total", params, clock))
    idx_f = np.repeat(np.arange(B, dtype=np.int64), D)
    idx_m = np.repeat(np.arange(B, dtype=np.int64), N)
    for k, grp in feat_links.items():
        setattr(feature, k, b2.linked_var(grp, k, index=idx_f))
    for k in mem_links:
        setattr(memory, k, b2.linked_var(a1, k, index=idx_m))
    if spherical:
        objs += [a0, connect_blocks(b2, feature, a0, D, 1, B, "nv2_post = v_pre**2 : 1 (summed)",
                                     "uhn_vnorm_syn", params, clock)]
        feature.nv2 = b2.linked_var(a0, "nv2", index=idx_f)

    # g_(-1) = g(v_0 - dt dv/dt(0)): gm of the first step is then second-order accurate too
    dv0, _ = net.rhs(v0, net.similarity(net.L_v.grad(v0)), Iext)
    feature.v = v0.ravel()
    feature.g_prev = net.L_v.grad(v0 - dt * dv0).ravel()
    if spherical:
        feature.g = net.L_v.grad(v0).ravel()
    feature.I_ext = Iext.ravel()
    memory.h = h_start.ravel()
    if spec.k0 is not None:
        memory.k0 = np.tile(spec.k0, B)
    if shift is not None:
        objs += follow_shift(b2, memory, a2, h_start, shift, N, B, 2, clock, params)
    return _assemble(b2, objs, feature, memory, a2, rec_dt, B=B, dt=float(dt),
                     record_every=record_every, scheme="leapfrog", shift=shift,
                     normalised=normalised,
                     info={"method": "exact", "I": np.array(Iext), "midpoint": "extrapolated"})


def error_norm(v_a, h_a, v_b, h_b) -> float:
    """The distance between two runs that ``dt="auto"`` controls: max |v_a - v_b| + max |h_a - h_b|
    / max(1, max |h_b|). v is compared absolutely; h, a similarity score that grows like |M|^2
    (~100 on MNIST digits), relative to its own scale."""
    return float(np.abs(v_a - v_b).max()
                 + np.abs(h_a - h_b).max() / max(1.0, float(np.abs(h_b).max())))


#: the most steps one run takes (run_brian2's max_steps): ~1 ms each on MNIST with numpy
DEFAULT_MAX_STEPS = 1_000_000
#: tolerance of ``dt="auto"`` (error_norm against the exact solution) and its safety factor
DEFAULT_DT_TOL = 1e-3
_DT_SAFETY = 0.8


def auto_dt(net: Network, Q, t_end: float, tol: float = DEFAULT_DT_TOL, *, record_every: int = 1,
            scheme: str = "leapfrog", input_mode: str = "initial", h0=None,
            max_steps: int = DEFAULT_MAX_STEPS) -> tuple[float, dict]:
    """A step dt for which the leapfrog run over [0, t_end] stays within ``tol`` of the exact
    solution (in :func:`error_norm`), from the scheme's own error constant.

    The leapfrog error is e(dt) = C dt^2 + O(dt^3). Two pilot runs (numpy target) over the first
    T_p = min(t_end, 2 max(tau_v, tau_h)), where the transient that sets C happens, at
    dt_0 = T_p / n_0 ~ min(tau_v, tau_h) / 5 and dt_0 / 2, differ by C dt_0^2 (1 - 1/4); hence
    C = 4 |y_(dt_0) - y_(dt_0/2)| / (3 dt_0^2) (Richardson), and dt = 0.8 sqrt(tol / C), no larger
    than min(tau_v, tau_h) / 2, shrunk to divide t_end into a multiple of ``record_every`` steps.
    ("default" scheduling is first order: e = C dt, C = 2 |y_(dt_0) - y_(dt_0/2)| / dt_0.)

    Returns (dt, info) with info = {"tol", "C", "order", "pilot_t", "pilot_dt", "pilot_s"}.
    Cost: 3 n_0 pilot steps (n_0 ~ 10 max(tau)/min(tau)).
    """
    tol = require_positive(tol, "dt_tol", "tolerance")
    t_end = require_positive(t_end, "t_end", "time (ms)")
    record_every = require_count(record_every, "record_every")
    tau_min, tau_max = min(net.tau_v, net.tau_h), max(net.tau_v, net.tau_h)
    t_p = min(t_end, 2.0 * tau_max)
    n0 = max(2, int(np.ceil(t_p / (tau_min / 5.0))))
    dt0 = t_p / n0
    t0 = time.perf_counter()
    kw = dict(target="numpy", scheme=scheme, input_mode=input_mode, h0=h0)
    coarse = run_brian2(net, Q, t_p, dt0, **kw)
    fine = run_brian2(net, Q, t_p, dt0 / 2, record_every=2, **kw)
    diff = error_norm(coarse.v, coarse.h, fine.v, fine.h)
    order = 2 if scheme == "leapfrog" else 1
    C = diff / (1.0 - 2.0 ** -order) / dt0 ** order
    dt = _DT_SAFETY * (tol / C) ** (1.0 / order) if C > 0 else np.inf
    # the tolerance float64 can reach: the truncation error C dt^2 plus round-off of ~eps64 per
    # step (error_norm is relative to the state's scale), (t_end / dt) eps64, is smallest at
    # dt* = (t_end eps64 / (2 C))^(1/3), where it is 3 (C (t_end eps64 / 2)^2)^(1/3)
    eps = np.finfo(np.float64).eps
    floor = 3.0 * (C * (0.5 * t_end * eps) ** 2) ** (1.0 / 3.0) if order == 2 else 2 * np.sqrt(C * t_end * eps)
    if tol < floor:
        raise ValueError(f"dt_tol = {tol:g} is below what float64 can reach for this run: the "
                         f"scheme's error C dt^{order} (C = {C:.3g}) plus a round-off of eps64 per "
                         f"step over t_end = {t_end:g} ms is at least {floor:.2g} at any dt; use "
                         f"dt_tol >= {floor:.2g}")
    dt = min(dt, tau_min / 2.0, t_end / record_every)
    n_need = int(np.ceil(t_end / dt))
    if n_need > max_steps:
        raise ValueError(f"dt='auto' for dt_tol = {tol:g} needs dt = {dt:.3g} ms, {n_need} steps "
                         f"over t_end = {t_end:g} ms, more than max_steps = {max_steps} (error "
                         f"C dt^{order}, C = {C:.3g} from the pilot runs); raise dt_tol or max_steps")
    stab = stability_bound(net, Q, dt, Q if input_mode == "clamped" else None, h0)
    if not stab.stable:        # the accuracy step is beyond the stability bound: take 0.9 of it
        dt = 0.9 * stab.dt_max
    n = record_every * int(np.ceil(t_end / (dt * record_every)))
    info = {"tol": tol, "C": C, "order": order, "pilot_t": t_p, "pilot_dt": dt0,
            "pilot_s": time.perf_counter() - t0, "tol_floor": floor,
            "stability_dt_max": stab.dt_max}
    return t_end / n, info


def run_brian2(net: Network, Q, t_end: float, dt="auto", *, target: str = DEFAULT_TARGET,
               scheme: str = "leapfrog", record_every: int = 1, input_mode: str = "initial",
               h0=None, fixed_point_tol: float = 1e-8, cache_dir: Optional[str] = None,
               build_dir: Optional[str] = None, dt_tol: float = DEFAULT_DT_TOL,
               progress: bool = False, max_steps: int = DEFAULT_MAX_STEPS) -> Trajectory:
    """Simulate the network's equations of motion (docs/theory.md section 2) in brian2.

    Parameters
    ----------
    net : the Network (any differentiable similarity but eps = 0 distances; see
        :func:`check_supported`).
    Q : (D,) or (B, D) queries, v(0) = q; a batch is B independent copies in one brian2 run.
    t_end : simulated time in ms (the network's time unit read as ms); a whole number of steps.
    dt : time step in ms, or "auto" (default): the step :func:`auto_dt` chooses from two short
        pilot runs so that the run stays within ``dt_tol`` of the exact solution (recorded in
        ``params["dt_auto"]``), capped at 0.9 of the stability bound. A fixed dt must divide
        t_end; one beyond the explicit scheme's stability bound at the initial states
        (:func:`stability_bound`) gets a Brian2StabilityWarning naming the bound.
    dt_tol : tolerance of ``dt="auto"`` in :func:`error_norm` (default 1e-3); one below what
        float64 can reach over the run (truncation plus eps64 per step) is refused.
    max_steps : the most steps the run may take (default 10^6); more, fixed or chosen by
        ``dt="auto"``, is refused before anything runs.
    target : "numpy" or "cython" (runtime code generation) or "cpp_standalone" (a C++ project
        built in ``build_dir``, default a temporary directory removed afterwards).
    scheme : "leapfrog" (second order, default) or "default" (brian2 scheduling, first order).
    record_every : record every this many steps (t_end / dt must be a multiple of it).
    input_mode : "initial" (I = net.I or 0) or "clamped" (I = q), as in uhn.dynamics.integrate.
    h0 : initial memory state (default S(g(q))).
    fixed_point_tol : ``converged`` by solve_ivp's rest test at the last sample
        (uhn.dynamics.solvers.driver.rest_ratio, docs/theory.md section 6): every
        |dy_i/dt| <= fixed_point_tol + 30 (atol + rtol |y_i|) / tau_i with integrate's default
        float64 tolerances (rtol 1e-8, atol 1e-10; :data:`REST_RTOL`, :data:`REST_ATOL`).
    cache_dir : cython cache directory (default :func:`default_cache_dir`).
    progress : report the simulated time reached on stderr every 2 s of wall time (brian2's
        ``report="stderr"``).

    Returns
    -------
    Trajectory with backend "brian2/<target>", h interpolated to whole steps for the leapfrog
    scheme, E and dEdt from the Network's formulas, and params recording dt, target, scheme,
    method, the softmax shift and wall times in s: ``build_s`` (objects), ``run_s`` (code
    generation, compilation and simulation) and ``loop_s`` (the simulation loop alone; for
    cpp_standalone the compiled binary's run).
    """
    net.require_numpy("run_brian2")
    t_end = require_positive(t_end, "t_end", "time (ms)")
    record_every = require_count(record_every, "record_every")
    max_steps = require_count(max_steps, "max_steps")
    if input_mode not in ("initial", "clamped"):
        raise ValueError(f"input_mode must be 'initial' or 'clamped', got {input_mode!r}")
    dt_auto = None
    if isinstance(dt, str):
        if dt != "auto":
            raise ValueError(f"dt must be a positive finite time step (ms) or 'auto', got {dt!r}")
        check_supported(net)
        dt, dt_auto = auto_dt(net, Q, t_end, dt_tol, record_every=record_every, scheme=scheme,
                              input_mode=input_mode, h0=h0, max_steps=max_steps)
    dt = require_positive(dt, "dt", "time step (ms)")
    n_steps = step_count(t_end, dt, record_every)
    if n_steps > max_steps:
        raise ValueError(f"t_end / dt = {n_steps} steps is more than max_steps = {max_steps}; "
                         f"raise dt or max_steps")
    check_supported(net)
    Qm = np.atleast_2d(np.asarray(Q, dtype=np.float64))
    I = Qm.copy() if input_mode == "clamped" else None
    stab = check_step(net, Qm, dt, I, h0) if dt_auto is None else None

    b2 = import_brian2()
    with brian2_target(target, cache_dir, build_dir):
        t0 = time.perf_counter()
        model = to_brian2(net, Qm, dt, scheme=scheme, record_every=record_every, I=I, h0=h0)
        t1 = time.perf_counter()
        # one extra step so that the start-of-step monitors see the state at t_end
        model.network.run((n_steps + 1) * dt * b2.ms, report="stderr" if progress else None,
                          report_period=2 * b2.second)
        t2 = time.perf_counter()
        mon = model.monitors
        v = np.asarray(mon["v"].v).T
        h_start = np.asarray(mon["h"].h).T
        c_run = (np.asarray(mon["c"].c).T, np.asarray(mon["c"].total).T) if "c" in mon else None
        run_time = getattr(b2.get_device(), "_last_run_time", None)
    T = n_steps // record_every + 1
    B, D, N = model.B, net.D, net.N
    v = v[:T].reshape(T, B, D)
    h = h_start[:T].reshape(T, B, N)
    c_run, total_run = (None, None) if c_run is None else (c_run[0][:T], c_run[1][:T])
    if scheme == "leapfrog":   # h(t_k - dt/2) -> h(t_k) along the scheme's own step (S frozen at S_k)
        h = np.stack([_half_step(net, vk, hk, dt) for vk, hk in zip(v, h)])
    _check_finite_run(net, model, v, h, total_run)
    # t_k = k record_every dt, written as a fraction of t_end so that the last sample is t_end
    # itself (3 * 0.1 is 0.30000000000000004: integrate(net, q, 0.3, t_eval=t) would refuse it)
    t = np.arange(T) * record_every / n_steps * t_end
    Iv = model.info["I"]
    E = np.stack([net.energy(vk, hk, Iv) for vk, hk in zip(v, h)])
    dE = np.stack([net.dEdt(vk, hk, Iv) for vk, hk in zip(v, h)])
    ratio = rest_ratio(net, np.concatenate([v[-1], h[-1]], axis=1),
                       np.concatenate(net.rhs(v[-1], h[-1], Iv), axis=1), fixed_point_tol,
                       NOISE_FACTOR, REST_RTOL, REST_ATOL, adiabatic=False)
    params = {"dt": float(dt), "t_end": float(n_steps * dt), "target": target, "scheme": scheme,
              "record_every": int(record_every), "brian2_method": model.info["method"],
              "softmax_shift": None if model.shift is None else model.shift.tolist(),
              "softmax_shift_final": None if c_run is None else c_run[-1].tolist(),
              "input_mode": input_mode, "fixed_point_tol": fixed_point_tol,
              "rest_rtol": REST_RTOL, "rest_atol": REST_ATOL, "noise_factor": NOISE_FACTOR,
              "build_s": t1 - t0, "run_s": t2 - t1,
              "loop_s": run_time, "dt_auto": dt_auto,
              "stability_rho": None if stab is None else stab.rho,
              "time_unit": "ms", **net.describe()}
    return Trajectory(t=t, v=v, h=h, E=E, dEdt=dE, I=np.array(Iv), converged=ratio <= 1.0,
                      method=f"{scheme}/{model.info['method']}", backend=f"brian2/{target}",
                      message=f"{n_steps} steps of {dt:g} ms", adiabatic=False, params=params)


def _check_finite_run(net: Network, model: Brian2Model, v, h, total_run) -> None:
    """Raise FloatingPointError if the run left float64 range: the softmax normaliser
    total = sum_mu exp(beta h_mu - c) (``total_run`` (T, B), recorded with the state, the value
    of the step before), which overflows or vanishes when a memory overtakes the softmax's
    weight by ~709 / beta within one step (:func:`follow_shift`), or the state itself."""
    finite = np.isfinite(v).all((1, 2)) & np.isfinite(h).all((1, 2))
    if total_run is not None:
        bad = ~np.isfinite(total_run) | (total_run <= 0)
        if bad.any():
            k = int(np.flatnonzero(bad.any(1))[0])
            b = int(np.flatnonzero(bad[k])[0])
            if finite[:k].all():
                raise FloatingPointError(
                    f"brian2 backend: the softmax normaliser sum_mu exp(beta h_mu - c) of query {b} "
                    f"left float64 range before sample {k} (t = {k * model.record_every * model.dt:g} "
                    f"ms): the running shift c follows log sum exp(beta h) once per step, and a "
                    f"memory's beta h rose more than ~{_EXP_OVER:g} above it within one step of dt = "
                    f"{model.dt:g} ms (beta = {net.L_h.beta:g}); lower dt (or use dt='auto')")
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise FloatingPointError(f"brian2 backend: the state became non-finite at sample {bad} "
                                 f"(t = {bad * model.record_every * model.dt:g} ms)")
