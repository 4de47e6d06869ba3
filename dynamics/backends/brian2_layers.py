"""A hierarchical network (uhn.dynamics.hierarchical, docs/theory.md §11) as a brian2 rate model:
chains of Linear and dot-similarity synapses (anything else is refused by name).

One neuron group of B n_a neurons per layer a (B copies of the network, block-diagonal synapses),
state ``h`` (the layer's x_a; dimensionless, time in ms as in uhn.dynamics.backends.brian2_rate),

    tau_a dh/dt = sum_s d_s / Z_s - h + b_a           (free layers; clamped layers hold h)

with one summed variable d_s per synapse s touching a, d_s = sum_j w_ij r_j over the other end's
rates r: the Linear synapse -g_a^T W g_b couples with w = W (on a) and W^T (on b); the dot
similarity -f . M g is the same bilinear form with W = M^T. A layer's rate is a subexpression of
h (quadratic h, log_cosh tanh(h), softplus 1/(1 + exp(-h))) with Z = 1, or, for log_sum_exp,
r = num = exp(beta h - c) and Z = total = sum num over the copy (a normaliser group), with the
running shift c of :func:`uhn.dynamics.backends.brian2_rate.follow_shift` (any beta the float64
state holds).

The scheme: a chain is bipartite, and every drive of a layer reads only its neighbours, so the
layers at even distance from the query layer live at whole steps t_k and the others at half steps
t_(k+1/2) (a staggered leapfrog, the two-layer rate model's scheme generalised): per step the
half-step layers go h_(k-1/2) -> h_(k+1/2) with the whole-step rates at t_k frozen, then the
whole-step layers go h_k -> h_(k+1) with the half-step rates at t_(k+1/2) frozen, each with its
linear decay integrated exactly (brian2 "exact"): a midpoint rule, second order in dt. The
half-step layers start half a step back, h(-dt/2) = D0 + (h0 - D0) exp(dt / (2 tau)) with the drive
D0 at the initial state, and are recorded at t_k - dt/2 and moved to t_k along the same closed
form before E and dE/dt are computed with the network's own formulas.

Not here (yet): dt="auto" and the linear stability bound of brian2_stability (both written for
the two-layer network's step map); a fixed dt is taken as given.
"""
from __future__ import annotations

import time
from typing import Optional

import numpy as np

from uhn.dynamics.backends.brian2_rate import Brian2UnsupportedError, connect_blocks, follow_shift
from uhn.dynamics.backends.brian2_target import DEFAULT_TARGET, brian2_target, import_brian2, step_count
from uhn.dynamics.hierarchical.network import HierarchicalNetwork
from uhn.dynamics.hierarchical.synapses import Linear, Similarity
from uhn.dynamics.solvers.driver import DEFAULT_RTOL, NOISE_FACTOR, Settings, rest_ratio
from uhn.dynamics.trajectory import Trajectory
from uhn.models.validation import require_count, require_positive

#: a layer's rate as a brian2 expression of its state h (log_sum_exp: the normalised numerators)
RATES = {"quadratic": "h", "log_cosh": "tanh(h)", "softplus": "1.0/(1.0 + exp(-h))"}
SOFTMAX = "log_sum_exp"
#: the rest test behind ``converged``: integrate's float64 defaults (as run_brian2)
REST_RTOL, REST_ATOL = DEFAULT_RTOL[np.dtype(np.float64)], Settings.atol
#: orders inside brian2's "groups" slot (a summed variable is refreshed at its target's order - 1):
#: the half-step layers, their softmax shift / numerators / normaliser, then the whole-step ones
_ORDERS = {1: dict(layer=0, shift=2, num=3, norm=5), 0: dict(layer=10, shift=13, num=14, norm=16)}


def _describe(s) -> str:
    if isinstance(s, Similarity):
        return f"a Similarity synapse with {s.name} similarity ({s!r})"
    return f"a {type(s).__name__} synapse ({s!r})"


def check_supported(net: HierarchicalNetwork) -> list:
    """Brian2UnsupportedError naming what brian2 cannot run: a synapse other than Linear or a dot
    Similarity, layers that do not form a chain (a tree, a cycle, apart), a Lagrangian without a
    brian2 rate (supported: quadratic, log_cosh, softplus, log_sum_exp). Returns each layer's
    parity, 0 for the whole-step layers (the query layer's), 1 for the half-step ones."""
    if not isinstance(net, HierarchicalNetwork):
        raise TypeError(f"run_brian2_layers takes a HierarchicalNetwork, got {type(net).__name__} "
                        f"(the two-layer Network runs in uhn.dynamics.backends.brian2_rate.run_brian2)")
    head = "brian2 runs chains of Linear and dot Similarity synapses"
    for s in net.synapses:
        if not (type(s) is Linear or (type(s) is Similarity and s.dot)):
            raise Brian2UnsupportedError(f"{head}; this network has {_describe(s)}")
    n = len(net.layers)
    nbrs = [[] for _ in range(n)]
    for a, b in net.ends:
        nbrs[a].append(b)
        nbrs[b].append(a)
    for i, nb in enumerate(nbrs):
        if len(nb) > 2:
            raise Brian2UnsupportedError(f"{head}; layer {net.layers[i].name!r} of this network "
                                         f"joins {len(nb)} synapses (a tree, not a chain)")
    parity, todo = {0: 0}, [0]
    while todo:
        i = todo.pop()
        for j in nbrs[i]:
            if j not in parity:
                parity[j] = 1 - parity[i]
                todo.append(j)
    if len(parity) < n:
        apart = [net.layers[i].name for i in range(n) if i not in parity]
        raise Brian2UnsupportedError(f"{head}; layers {apart} of this network are not connected "
                                     f"to the query layer {net.layers[0].name!r}")
    if len(net.synapses) != n - 1:
        raise Brian2UnsupportedError(f"{head}; the {len(net.synapses)} synapses of this network "
                                     f"among {n} layers close a cycle")
    for L in net.layers:
        if L.lagrangian.kind not in RATES and L.softmax_beta is None:
            raise Brian2UnsupportedError(
                f"brian2 backend: layer {L.name!r} has Lagrangian {L.lagrangian.name}, which has no "
                f"brian2 rate here; supported: {', '.join(RATES)}, {SOFTMAX}")
    return [parity[i] for i in range(n)]


def _drive_constants(net, Y, I):
    """(B, width) tau_a dx_a/dt + x_a = b_a + sum of the drives at packed states Y: for a
    half-step layer it depends on the whole-step layers' rates only (the chain is bipartite)."""
    return net.velocity(Y, I) * net.time_constants(Y.shape[1]) + Y


def _half_step(net, parity, Y, I, dt, back: bool):
    """Y with every free half-step layer moved by dt/2 along tau dx/dt = D - x with D frozen at
    the drives of Y's whole-step layers: back (to t - dt/2, the start) or forward (recorded
    t_k - dt/2 -> t_k)."""
    D = _drive_constants(net, Y, I)
    out = Y.copy()
    for L, sl, p in zip(net.layers, net.slices, parity):
        if p == 1 and not L.clamped:
            a = np.exp((0.5 if back else -0.5) * dt / L.tau)
            out[:, sl] = D[:, sl] + (Y[:, sl] - D[:, sl]) * a
    return out


def to_brian2_layers(net: HierarchicalNetwork, Y0, I, dt: float, record_every: int = 1):
    """The brian2 Network (groups, synapses, start-of-step monitors per layer) of ``net`` for the
    packed initial states Y0 (B, width) (half-step layers already at -dt/2) and the query layer's
    input I (B, D). Returns (network, {layer name: StateMonitor}, [shift monitors])."""
    b2 = import_brian2()
    parity = check_supported(net)
    B = Y0.shape[0]
    clock = b2.Clock(dt=dt * b2.ms, name="uhn_clock")
    rec_dt = record_every * dt * b2.ms
    soft = [L.softmax_beta is not None for L in net.layers]
    #: {layer: [(synapse k, the layer at its other end)]}
    touching = [[(k, b if a == i else a) for k, (a, b) in enumerate(net.ends) if i in (a, b)]
                for i in range(len(net.layers))]
    groups, norms, objs = [], {}, []
    for i, (L, sl) in enumerate(zip(net.layers, net.slices)):
        o = _ORDERS[parity[i]]
        params = {"tau": L.tau * b2.ms}
        drive = " + ".join(f"d{k}/Z{k}" if soft[j] else f"d{k}" for k, j in touching[i]) or "0"
        eqs = ("h : 1\n" if L.clamped else f"dh/dt = ({drive} - h + bias)/tau : 1\n") + "bias : 1 (constant)\n"
        eqs += "".join(f"d{k} : 1\n" for k, _ in touching[i])
        eqs += "".join(f"Z{k} : 1 (linked)\n" for k, j in touching[i] if soft[j])
        if soft[i]:
            params["beta"] = L.softmax_beta
            eqs += "num : 1\nc : 1 (linked)\nhp : 1\n"
        else:
            eqs += f"g = {RATES[L.lagrangian.kind]} : 1\n"
        G = b2.NeuronGroup(B * L.size, eqs, method="exact", clock=clock, order=o["layer"],
                           namespace=params, name=f"uhn_layer{i}")
        G.h = Y0[:, sl].ravel()
        if i == 0:
            G.bias = np.asarray(I, dtype=np.float64).ravel()
        elif L.bias is not None:
            G.bias = np.tile(L.bias, B)
        groups.append(G)
        objs.append(G)
        if soft[i]:
            G.run_regularly("num = exp(beta*h - c)\nhp = h", when="groups", order=o["num"],
                            name=f"uhn_layer{i}_numerator")
            norm = b2.NeuronGroup(B, "total : 1", clock=clock, order=o["norm"], name=f"uhn_layer{i}_norm")
            to_norm = b2.Synapses(G, norm, "total_post = num_pre : 1 (summed)", clock=clock,
                                  name=f"uhn_layer{i}_total")
            to_norm.connect(i=np.arange(B * L.size, dtype=np.int64),
                            j=np.repeat(np.arange(B, dtype=np.int64), L.size))
            x0 = params["beta"] * Y0[:, sl]
            top = x0.max(1)
            c0 = top + np.log(np.exp(x0 - top[:, None]).sum(1))
            objs += [norm, to_norm] + follow_shift(b2, G, norm, Y0[:, sl], c0, L.size, B, o["shift"],
                                                   clock, params, prefix=f"uhn_layer{i}")
            norms[i] = norm
    for k, (s, (a, b)) in enumerate(zip(net.synapses, net.ends)):
        W = s.W if isinstance(s, Linear) else s.M.T            # E_s = -g_a^T W g_b
        for post, pre, Wp in ((a, b, W), (b, a, W.T)):         # weights (n_post, n_pre)
            rate = "num_pre" if soft[pre] else "g_pre"
            objs.append(connect_blocks(b2, groups[pre], groups[post], net.sizes[pre], net.sizes[post], B,
                                       f"w : 1 (constant)\nd{k}_post = w*{rate} : 1 (summed)",
                                       f"uhn_syn{k}_to{post}", {}, clock, weights=Wp))
            if soft[pre]:
                setattr(groups[post], f"Z{k}", b2.linked_var(norms[pre], "total",
                        index=np.repeat(np.arange(B, dtype=np.int64), net.sizes[post])))
    monitors = {L.name: b2.StateMonitor(G, "h", record=True, dt=rec_dt, when="start",
                                        name=f"uhn_monitor{i}")
                for i, (L, G) in enumerate(zip(net.layers, groups))}
    totals = [b2.StateMonitor(norms[i], "total", record=True, dt=rec_dt, when="start",
                              name=f"uhn_monitor_total{i}") for i in sorted(norms)]
    network = b2.Network(*objs, *monitors.values(), *totals, name="uhn_network")
    return network, monitors, totals


def run_brian2_layers(net: HierarchicalNetwork, Q, t_end: float, dt: float, *,
                      target: str = DEFAULT_TARGET, record_every: int = 1,
                      input_mode: str = "initial", h0=None, fixed_point_tol: float = 1e-8,
                      cache_dir: Optional[str] = None, build_dir: Optional[str] = None) -> Trajectory:
    """Simulate the hierarchical network's equations of motion in brian2 (module docstring).

    ``Q`` (D,) or (B, D) queries set the query layer (the other layers start as
    HierarchicalNetwork.initial_state, or from ``h0`` (B, N)); ``t_end`` and the fixed step ``dt``
    in ms (the network's time unit read as ms), t_end a whole number of steps and of
    ``record_every`` steps; ``input_mode`` "initial" (the query layer's bias) or "clamped" (I = q);
    ``target`` "numpy", "cython" or "cpp_standalone" (uhn.dynamics.backends.brian2_target).
    Returns a Trajectory (backend "brian2/<target>", scheme "leapfrog", order 2) with v the query
    layer, h the other layers packed in order (HierarchicalNetwork.layer_states splits them), E and
    dE/dt from the network's formulas and ``converged`` by integrate's rest test at the last sample.
    """
    parity = check_supported(net)
    t_end = require_positive(t_end, "t_end", "time (ms)")
    dt = require_positive(dt, "dt", "time step (ms)")
    record_every = require_count(record_every, "record_every")
    if input_mode not in ("initial", "clamped"):
        raise ValueError(f"input_mode must be 'initial' or 'clamped', got {input_mode!r}")
    n_steps = step_count(t_end, dt, record_every)
    v0, hq = net.initial_state(Q, h0)
    B = v0.shape[0]
    I = v0.copy() if input_mode == "clamped" else np.array(net.input_current(None, B))
    Y0 = np.concatenate([v0, hq], axis=1)
    for L, sl in zip(net.layers, net.slices):
        if L.softmax_beta is not None:
            with np.errstate(over="ignore", invalid="ignore"):
                if not np.all(np.isfinite(L.softmax_beta * Y0[:, sl])):
                    raise OverflowError(f"brian2 backend: beta * x of layer {L.name!r} overflows at "
                                        f"the initial state (beta={L.softmax_beta:g})")
    Ystart = _half_step(net, parity, Y0, I, dt, back=True)
    b2 = import_brian2()
    with brian2_target(target, cache_dir, build_dir):
        t0 = time.perf_counter()
        network, monitors, totals = to_brian2_layers(net, Ystart, I, dt, record_every)
        t1 = time.perf_counter()
        network.run((n_steps + 1) * dt * b2.ms)     # one more step: the monitors see t_end
        t2 = time.perf_counter()
        T = n_steps // record_every + 1
        rec = [np.asarray(monitors[L.name].h).T[:T].reshape(T, B, L.size) for L in net.layers]
        total = [np.asarray(m.total).T[:T] for m in totals]
    Ys = np.concatenate(rec, axis=2)
    finite = np.isfinite(Ys).all((1, 2)) & np.all([np.isfinite(z).all(1) & (z > 0).all(1) for z in total]
                                                  or [np.ones(T, bool)], axis=0)
    if not finite.all():
        k = int(np.flatnonzero(~finite)[0])
        raise FloatingPointError(f"brian2 backend: the state or a softmax normaliser left float64 "
                                 f"range at sample {k} (t = {k * record_every * dt:g} ms); lower dt")
    W = net.width
    Irows = np.broadcast_to(I[None], (T, B, net.D)).reshape(T * B, net.D)
    Y = _half_step(net, parity, Ys.reshape(T * B, W), Irows, dt, back=False).reshape(T, B, W)
    E, dE = net.energy_and_dEdt(Y[..., :net.D].reshape(T * B, -1), Y[..., net.D:].reshape(T * B, -1), Irows)
    F = net.velocity(Y[-1], I)
    ratio = rest_ratio(net, Y[-1], F, fixed_point_tol, NOISE_FACTOR, REST_RTOL, REST_ATOL, adiabatic=False)
    t = np.arange(T) * record_every / n_steps * t_end
    params = {"dt": float(dt), "t_end": float(n_steps * dt), "target": target, "scheme": "leapfrog",
              "order": 2, "record_every": int(record_every), "brian2_method": "exact",
              "half_step_layers": [L.name for L, p in zip(net.layers, parity) if p],
              "input_mode": input_mode, "fixed_point_tol": fixed_point_tol, "rest_rtol": REST_RTOL,
              "rest_atol": REST_ATOL, "noise_factor": NOISE_FACTOR, "build_s": t1 - t0,
              "run_s": t2 - t1, "time_unit": "ms", **net.describe()}
    return Trajectory(t=t, v=Y[..., :net.D], h=Y[..., net.D:], E=E.reshape(T, B), dEdt=dE.reshape(T, B),
                      I=np.array(I), converged=ratio <= 1.0, method="leapfrog/exact",
                      backend=f"brian2/{target}", message=f"{n_steps} steps of {dt:g} ms",
                      adiabatic=False, params=params)
