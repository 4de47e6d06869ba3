"""A spiking Krotov-Hopfield network in brian2 whose n -> infinity limit is the rate model.

Every feature unit i and every memory unit mu of a :class:`uhn.dynamics.network.Network` (dot
similarity, sigmoid feature rates g = L_v'(v) with L_v = softplus, softmax memory rates
f = L_h'(h) with L_h = log_sum_exp(beta); docs/theory.md section 2) becomes a population of n
Poisson neurons. A neuron of population i fires in a step of length dt with probability
r_max g_i dt, one of population mu with probability r_max f_mu dt, so the population's expected
rate is n r_max g_i (n r_max f_mu). The unit states are the synaptic currents the spikes drive,
filtered with the network's own time constants:

    tau_v dv_i/dt  = -v_i + I_i + sum_mu M_mu,i  s_mu(t) / (n r_max)
    tau_h dh_mu/dt = -h_mu      + sum_i  M_mu,i  s_i(t)  / (n r_max)

where s_i(t) = sum over the spikes of population i of delta(t - t_spike). Since E[s_i] = n r_max
g_i, the expected drift is the rate model's equations of motion (docs/theory.md section 2, dot
similarity), and the fluctuations about it are those of a sum of Poisson counts: relative size
1 / sqrt(n r_max tau g) per unit, so the distance to the rate trajectory falls like n^(-1/2)
until the O(dt) bias of the discrete scheme (spikes of step k act in step k + 1) is reached.

Scheme per step (brian2 "groups", "thresholds", "synapses" slots): the unit groups integrate their
linear decay exactly with the input of the spikes counted in the previous step, held over the
step (a spike count c_i contributes M_mu,i c_i / (n r_max dt) as a constant current, i.e. the
spike's charge M_mu,i / (n r_max) spread over the step); the memory units compute
num = exp(beta h - c) and the normaliser Z = sum num (c the running shift of
uhn.dynamics.backends.brian2_rate.follow_shift, renewed every step); then each spiking neuron fires with probability r_max rate dt and its
spike adds 1 to its unit's count.

Time in ms, rates r_max in kHz (spikes per ms). A batch of B queries is B independent copies.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from uhn.dynamics.backends.brian2_rate import connect_blocks, follow_shift
from uhn.dynamics.backends.brian2_target import DEFAULT_TARGET, brian2_target, import_brian2, step_count
from uhn.dynamics.trajectory import Trajectory
from uhn.dynamics.network import Network
from uhn.models.validation import require_count, require_positive


@dataclass
class SpikingRun:
    """A spiking run: the unit states as a :class:`Trajectory` and the spikes of query 0.

    ``traj.v``, ``traj.h`` are the unit currents (T, B, D) / (T, B, N); E and dE/dt are the
    Network's formulas at those states. ``spikes_v`` / ``spikes_h`` are (neuron, time in ms)
    arrays of query 0's feature and memory neurons; neuron k belongs to unit k // n.
    ``rates_v`` = g(v) and ``rates_h`` = f(h) (T, B, .) are the populations' firing
    probabilities per ms in units of r_max: the population rates the spikes encode."""

    traj: Trajectory
    spikes_v: tuple
    spikes_h: tuple
    n: int
    r_max: float

    @property
    def rates_v(self) -> np.ndarray:
        return _rates(self.traj, "v")

    @property
    def rates_h(self) -> np.ndarray:
        return _rates(self.traj, "h")


def _rates(traj: Trajectory, which: str) -> np.ndarray:
    from uhn.dynamics.lagrangians import log_sum_exp, softplus
    if which == "v":
        return softplus().grad(traj.v.reshape(-1, traj.v.shape[2])).reshape(traj.v.shape)
    beta = traj.params["beta"]
    return log_sum_exp(beta).grad(traj.h.reshape(-1, traj.h.shape[2])).reshape(traj.h.shape)


def check_spiking(net: Network) -> None:
    """Raise ValueError unless ``net`` has what the spiking populations encode: dot similarity,
    L_v = softplus (rates g = sigmoid(v) in (0, 1)) and L_h = log_sum_exp (softmax rates in (0, 1))."""
    problems = []
    if net.sim.name != "dot":
        problems.append(f"similarity {net.sim.name!r} (the spiking network uses dot: S = M g is "
                        f"a sum of spike counts weighted by M)")
    if net.L_v.kind != "softplus":
        problems.append(f"L_v = {net.L_v.name} (feature rates must lie in [0, 1] to be firing "
                        f"probabilities r_max g dt: use L_v = softplus, g = sigmoid(v))")
    if net.L_h.kind != "log_sum_exp":
        problems.append(f"L_h = {net.L_h.name} (memory rates must lie in [0, 1]: use "
                        f"L_h = log_sum_exp(beta), softmax rates)")
    if problems:
        raise ValueError("spiking network: unsupported " + "; ".join(problems))


def run_spiking(net: Network, Q, t_end: float, dt: float = 0.05, n: int = 100,
                r_max: float = 0.2, *, seed: Optional[int] = 0, target: str = DEFAULT_TARGET,
                record_every: int = 1, input_mode: str = "initial", record_spikes: bool = True,
                build_dir: Optional[str] = None) -> SpikingRun:
    """Simulate the spiking network of ``net`` (see the module docstring) for queries Q.

    Parameters
    ----------
    net : Network with dot similarity, L_v = softplus, L_h = log_sum_exp (:func:`check_spiking`).
    Q : (D,) or (B, D) queries: v(0) = q, h(0) = S(g(q)) = M sigmoid(q).
    t_end, dt : simulated time and step, ms (dt must divide t_end).
    n : neurons per unit (each of the D + N units), >= 1.
    r_max : largest firing rate, kHz (spikes per ms); r_max dt <= 1 (a probability per step).
    seed : brian2's random seed (None: not set); the same seed gives the same spikes.
    target : "numpy" or "cython" or "cpp_standalone" (as uhn.dynamics.backends.brian2_rate.run_brian2).
    record_every : record v, h every this many steps.
    input_mode : "initial" (I = net.I or 0) or "clamped" (I = q).
    record_spikes : keep the spikes of query 0 (SpikeMonitors).

    Returns
    -------
    SpikingRun; ``traj.params`` holds n, r_max, dt, seed, the spike counts and wall times
    (``loop_s`` the simulation loop alone, as in run_brian2) and ``synapse_events`` (the spikes
    delivered, each to one count synapse, plus the per-step unit-to-unit synaptic updates).
    """
    b2 = import_brian2()

    check_spiking(net)
    t_end = require_positive(t_end, "t_end", "time (ms)")
    dt = require_positive(dt, "dt", "time step (ms)")
    n = require_count(n, "n")
    r_max = require_positive(r_max, "r_max", "rate (kHz)")
    record_every = require_count(record_every, "record_every")
    if r_max * dt > 1:
        raise ValueError(f"r_max * dt = {r_max * dt:g} > 1: a neuron cannot fire more than once per "
                         f"step; lower dt (ms) or r_max (kHz)")
    if input_mode not in ("initial", "clamped"):
        raise ValueError(f"input_mode must be 'initial' or 'clamped', got {input_mode!r}")
    n_steps = step_count(t_end, dt, record_every)
    Qm = np.atleast_2d(np.asarray(Q, dtype=np.float64))
    v0, h0 = net.initial_state(Qm)
    B, D, N = v0.shape[0], net.D, net.N
    Iext = Qm.copy() if input_mode == "clamped" else np.array(net.input_current(None, B))
    beta = net.L_h.beta
    top = beta * h0.max(1)      # c0 = log sum_mu exp(beta h_mu(0)), then follow_shift renews it
    shift = top + np.log(np.exp(beta * h0 - top[:, None]).sum(1))

    with brian2_target(target, None, build_dir):
        if seed is not None:
            b2.seed(seed)
        t0 = time.perf_counter()
        clock = b2.Clock(dt=dt * b2.ms, name="spk_clock")
        ns = {"tau_v": net.tau_v * b2.ms, "tau_h": net.tau_h * b2.ms, "beta": float(beta),
              "r_max": r_max, "dt_ms": dt, "n_pop": float(n)}
        # unit currents: exact decay with the previous step's spike counts as constant input
        feat = b2.NeuronGroup(B * D, """dv/dt = (drive/(n_pop*r_max*dt_ms) - v + I_ext)/tau_v : 1
                                        gr : 1
                                        drive : 1
                                        cnt : 1
                                        I_ext : 1 (constant)""",
                              method="exact", clock=clock, order=2, namespace=ns, name="spk_feature")
        mem = b2.NeuronGroup(B * N, """dh/dt = (inp/(n_pop*r_max*dt_ms) - h)/tau_h : 1
                                       inp : 1
                                       num : 1
                                       cnt : 1
                                       fr : 1
                                       total : 1 (linked)
                                       c : 1 (linked)
                                       hp : 1""",
                             method="exact", clock=clock, order=0, namespace=ns, name="spk_memory")
        mem.run_regularly("num = exp(beta*h - c)\nhp = h", when="groups", order=4, name="spk_numerator")
        norm = b2.NeuronGroup(B, "total : 1", clock=clock, order=6, name="spk_normaliser")
        # the rates the populations fire at, from the updated states: g = sigmoid(v), f = softmax
        feat.run_regularly("gr = 1.0/(1.0 + exp(-v))", when="groups", order=3, name="spk_rate_v")
        mem.run_regularly("fr = num/total", when="groups", order=7, name="spk_rate_h")
        # spiking populations: n neurons per unit, firing with probability r_max * rate * dt
        pv = b2.NeuronGroup(B * D * n, "rate : 1 (linked)", threshold="rand() < r_max*rate*dt_ms",
                            clock=clock, namespace=ns, name="spk_pop_v")
        ph = b2.NeuronGroup(B * N * n, "rate : 1 (linked)", threshold="rand() < r_max*rate*dt_ms",
                            clock=clock, namespace=ns, name="spk_pop_h")
        pv.rate = b2.linked_var(feat, "gr", index=np.repeat(np.arange(B * D, dtype=np.int64), n))
        ph.rate = b2.linked_var(mem, "fr", index=np.repeat(np.arange(B * N, dtype=np.int64), n))
        # each spike adds 1 to its unit's count (cleared after the units read it, before spiking)
        count_v = b2.Synapses(pv, feat, on_pre="cnt_post += 1", clock=clock, name="spk_count_v")
        count_v.connect(i=np.arange(B * D * n, dtype=np.int64),
                        j=np.repeat(np.arange(B * D, dtype=np.int64), n))
        count_h = b2.Synapses(ph, mem, on_pre="cnt_post += 1", clock=clock, name="spk_count_h")
        count_h.connect(i=np.arange(B * N * n, dtype=np.int64),
                        j=np.repeat(np.arange(B * N, dtype=np.int64), n))
        for grp, nm in ((feat, "v"), (mem, "h")):
            grp.run_regularly("cnt = 0", when="thresholds", order=-1, name=f"spk_clear_{nm}")
        # unit to unit: the counts weighted by M, summed (w = M.ravel() / M.T.ravel() per copy)
        to_mem = connect_blocks(b2, feat, mem, D, N, B, "w : 1 (constant)\ninp_post = w*cnt_pre : 1 (summed)",
                                 "spk_similarity", ns, clock, net.M)
        to_feat = connect_blocks(b2, mem, feat, N, D, B, "w : 1 (constant)\ndrive_post = w*cnt_pre : 1 (summed)",
                                  "spk_drive", ns, clock, net.M.T)
        to_norm = connect_blocks(b2, mem, norm, N, 1, B, "total_post = num_pre : 1 (summed)",
                                  "spk_total", ns, clock)
        mem.total = b2.linked_var(norm, "total", index=np.repeat(np.arange(B, dtype=np.int64), N))
        feat.v = v0.ravel()
        feat.I_ext = Iext.ravel()
        mem.h = h0.ravel()
        # the shift group at order 3 (its summed change of h at 2), just before the numerators
        objs_shift = follow_shift(b2, mem, norm, h0, shift, N, B, 3, clock, ns, prefix="spk")
        # the first step reads the expected counts of the initial rates (there are no earlier spikes)
        g0, f0 = net.L_v.grad(v0), net.L_h.grad(h0)
        feat.cnt = (n * r_max * dt * g0).ravel()
        mem.cnt = (n * r_max * dt * f0).ravel()
        rec_dt = record_every * dt * b2.ms
        mon_v = b2.StateMonitor(feat, "v", record=True, dt=rec_dt, when="start", name="spk_mon_v")
        mon_h = b2.StateMonitor(mem, "h", record=True, dt=rec_dt, when="start", name="spk_mon_h")
        objs = [feat, mem, norm, pv, ph, count_v, count_h, to_mem, to_feat, to_norm, mon_v, mon_h,
                *objs_shift]
        rate_v = b2.PopulationRateMonitor(pv, name="spk_prate_v")
        rate_h = b2.PopulationRateMonitor(ph, name="spk_prate_h")
        objs += [rate_v, rate_h]
        if record_spikes:
            sm_v = b2.SpikeMonitor(pv, name="spk_spikes_v")   # kept for query 0 below
            sm_h = b2.SpikeMonitor(ph, name="spk_spikes_h")
            objs += [sm_v, sm_h]
        network = b2.Network(*objs, name="spk_network")
        t1 = time.perf_counter()
        network.run((n_steps + 1) * dt * b2.ms)
        t2 = time.perf_counter()
        loop_s = getattr(b2.get_device(), "_last_run_time", None)
        T = n_steps // record_every + 1
        v = np.asarray(mon_v.v).T[:T].reshape(T, B, D)
        h = np.asarray(mon_h.h).T[:T].reshape(T, B, N)
        spikes_v = spikes_h = None
        if record_spikes:
            spikes_v, spikes_h = (_first_copy(np.asarray(m.i), np.asarray(m.t / b2.ms), K * n,
                                              n_steps * dt - 0.5 * dt)
                                  for m, K in ((sm_v, D), (sm_h, N)))
        n_spk = (float(np.sum(rate_v.rate / b2.kHz)) * dt * B * D * n,
                 float(np.sum(rate_h.rate / b2.kHz)) * dt * B * N * n)
    if not (np.all(np.isfinite(v)) and np.all(np.isfinite(h))):
        raise FloatingPointError("spiking network: the state became non-finite (exp(beta h - c) "
                                 "overflowed?); lower beta or rescale the memories")
    t = np.arange(T) * record_every / n_steps * t_end
    E = np.stack([net.energy(vk, hk, Iext) for vk, hk in zip(v, h)])
    dE = np.stack([net.dEdt(vk, hk, Iext) for vk, hk in zip(v, h)])
    spikes = n_spk[0] + n_spk[1]
    params = {"n": n, "r_max": r_max, "dt": dt, "t_end": float(n_steps * dt), "seed": seed,
              "target": target, "beta": float(beta), "input_mode": input_mode,
              "record_every": record_every, "spikes_v": n_spk[0], "spikes_h": n_spk[1],
              "synapse_events": spikes + 2.0 * B * D * N * (n_steps + 1),
              "build_s": t1 - t0, "run_s": t2 - t1, "loop_s": loop_s, "time_unit": "ms",
              **net.describe()}
    traj = Trajectory(t=t, v=v, h=h, E=E, dEdt=dE, I=np.array(Iext),
                      converged=np.zeros(B, bool), method=f"poisson(n={n})",
                      backend=f"brian2-spiking/{target}", message=f"{n_steps} steps of {dt:g} ms, "
                      f"{spikes:.0f} spikes", params=params)
    return SpikingRun(traj=traj, spikes_v=spikes_v, spikes_h=spikes_h, n=n, r_max=r_max)


def _first_copy(i, t, size, t_last):
    """The spikes of neurons 0..size-1 (query 0) before t_last: the steps 0 .. n_steps - 1, whose
    rates are the recorded samples 1 .. n_steps (the run has one extra step to record t_end)."""
    keep = (i < size) & (t < t_last)
    return i[keep], t[keep]


def rate_distance(run: SpikingRun, rate: Trajectory) -> dict:
    """Distance of the population rates to the rate model's at the common sample times:
    ``g_rms`` / ``f_rms`` = RMS over time, queries and units of g(v_spiking) - g(v_rate) and
    f(h_spiking) - f(h_rate), and ``v_rms`` of the states themselves."""
    if run.traj.t.shape != rate.t.shape or not np.allclose(run.traj.t, rate.t, rtol=0,
                                                            atol=1e-9 * max(1.0, rate.t[-1])):
        raise ValueError("rate_distance: the two trajectories have different sample times "
                         "(integrate the rate model with t_eval=run.traj.t)")
    g_rate = _rates(rate, "v")
    rate_params = dict(rate.params, beta=run.traj.params["beta"])
    f_rate = _rates(Trajectory(**{**rate.__dict__, "params": rate_params}), "h")
    rms = lambda x: float(np.sqrt(np.mean(x ** 2)))   # noqa: E731
    return {"g_rms": rms(run.rates_v - g_rate), "f_rms": rms(run.rates_h - f_rate),
            "v_rms": rms(run.traj.v - rate.v)}


def energy_rises(E: np.ndarray) -> dict:
    """How often and how much the energy E (T, B) rises between samples: ``fraction`` of steps
    with dE > 0, ``max_rise`` the largest dE, and ``total_rise`` / ``total_fall`` the summed rises
    and falls (per query, averaged)."""
    dE = np.diff(np.asarray(E, float), axis=0)
    return {"fraction": float(np.mean(dE > 0)), "max_rise": float(dE.max()) if dE.size else 0.0,
            "total_rise": float(np.clip(dE, 0, None).sum(0).mean()),
            "total_fall": float(-np.clip(dE, None, 0).sum(0).mean())}


#: the study of ``figures/spiking_*.png`` (``uhn figures``) and notebook 05: ms, ms, kHz
FIGURE_STUDY = {"t_end": 40.0, "dt": 0.1, "r_max": 0.2, "ns": (1, 4, 16, 64), "raster_n": 16}


def mnist_network(n_memories: int = 20, n_queries: int = 10, noise: float = 0.5, beta: float = 0.05,
                  tau_v: float = 10.0, tau_h: float = 2.0, seed: int = 0):
    """The spiking example of notebook 05 and ``figures/spiking_*.png``: (net, Q, image_shape).

    ``n_memories`` MNIST digits, each standardised to mean 0 and standard deviation 2 (so the
    sigmoid feature rates use their range), stored in a dot / softplus / log_sum_exp(beta)
    network (times in ms); queries = the first ``n_queries`` digits with Gaussian noise of std
    ``noise`` (seed + 1), standardised the same way, so query b targets memory b."""
    from uhn.models.corruption import corrupt
    from uhn.models.data import load_dataset

    from uhn.dynamics.lagrangians import log_sum_exp, softplus

    def standardise(X):
        Z = X - X.mean(1, keepdims=True)
        return 2.0 * Z / Z.std(1, keepdims=True)

    if not 1 <= n_queries <= n_memories:
        raise ValueError(f"n_queries must lie in 1..n_memories = {n_memories}, got {n_queries}")
    ds = load_dataset("mnist", n=n_memories, seed=seed)
    Q = corrupt(ds.X[:n_queries], "gaussian", noise, ds.image_shape, seed=seed + 1)
    net = Network(standardise(ds.X), "dot", L_v=softplus(), L_h=log_sum_exp(beta),
                  tau_v=tau_v, tau_h=tau_h)
    return net, standardise(Q), ds.image_shape


@dataclass
class ConvergenceStudy:
    """Spiking runs at several neurons-per-unit n beside the rate model they sample
    (:func:`convergence_study`). ``rows`` (one dict per n, ascending): n, accuracy, wall (s),
    g_rms / f_rms / v_rms (:func:`rate_distance`), fraction / max_rise / total_rise / total_fall
    (:func:`energy_rises`). ``slopes``: least-squares exponents k of value ~ n^k for "g", "f"
    (the RMS distances) and "rise" (summed energy rises); NaN with fewer than two n."""

    rate: Trajectory
    runs: dict
    rows: list
    slopes: dict
    rate_accuracy: float
    targets: np.ndarray
    raster_n: Optional[int]


def _exponent(ns, values) -> float:
    """k of values ~ ns^k by least squares in log-log (NaN for < 2 points or a non-positive value)."""
    values = np.asarray(values, float)
    if len(ns) < 2 or not np.all(values > 0):
        return float("nan")
    return float(np.polyfit(np.log(np.asarray(ns, float)), np.log(values), 1)[0])


def convergence_study(net: Network, Q, t_end: float, *, ns=(1, 4, 16, 64), dt: float = 0.1,
                      r_max: float = 0.2, record_every: int = 10, seed: int = 1,
                      raster_n: Optional[int] = 16, targets=None,
                      target: str = DEFAULT_TARGET) -> ConvergenceStudy:
    """The spiking network's approach to its rate model as the neurons per unit n grow.

    Integrates the rate model (scipy RK45, rtol 1e-10, no early stop) at the spiking runs'
    sample times (every ``record_every`` steps of ``dt``), then runs :func:`run_spiking` once per
    n in ``ns`` with the same seed, recording query 0's spikes at n = ``raster_n`` (None: none).
    Accuracy = fraction of queries b whose memory rates f(h), averaged over the last 10 samples
    (the rate model: its final f), peak at ``targets[b]`` (default b; each an integer in
    [0, N), else ValueError / TypeError before anything runs)."""
    from uhn.dynamics.integrate import integrate
    ns = sorted({require_count(n, "n") for n in ns})
    if raster_n is not None and raster_n not in ns:
        raise ValueError(f"raster_n = {raster_n} is not one of ns = {ns}")
    Q = np.atleast_2d(np.asarray(Q, float))
    targets = np.arange(len(Q)) if targets is None else np.asarray(targets)
    if targets.shape != (len(Q),):
        raise ValueError(f"targets must have one memory index per query ({len(Q)}), got shape {targets.shape}")
    if not np.issubdtype(targets.dtype, np.integer):
        raise TypeError(f"targets must be integer memory indices, got dtype {targets.dtype}")
    bad = np.flatnonzero((targets < 0) | (targets >= net.N))
    if len(bad):
        raise ValueError(f"targets must be memory indices in [0, {net.N}) (N = {net.N} memories), got "
                         f"{targets[bad[0]]} for query {bad[0]}: an index no memory has would score "
                         f"accuracy 0 whatever the network retrieves")
    n_steps = int(round(t_end / dt))
    if n_steps % record_every:
        raise ValueError(f"record_every = {record_every} must divide the {n_steps} steps of t_end / dt")
    t_rec = np.linspace(0.0, t_end, n_steps // record_every + 1)
    rate = integrate(net, Q, t_end, t_eval=t_rec, stop_at_fixed_point=False, rtol=1e-10, atol=1e-12)
    rate_accuracy = float(np.mean(np.argmax(net.L_h.grad(rate.h[-1]), 1) == targets))
    runs, rows = {}, []
    for n in ns:
        t0 = time.perf_counter()
        run = run_spiking(net, Q, t_end, dt=dt, n=n, r_max=r_max, record_every=record_every,
                          seed=seed, record_spikes=(n == raster_n), target=target)
        wall = time.perf_counter() - t0
        runs[n] = run
        acc = float(np.mean(np.argmax(run.rates_h[-10:].mean(0), 1) == targets))
        rows.append(dict(n=n, accuracy=acc, wall=wall, **rate_distance(run, rate),
                         **energy_rises(run.traj.E)))
    slopes = {k: _exponent(ns, [r[col] for r in rows])
              for k, col in (("g", "g_rms"), ("f", "f_rms"), ("rise", "total_rise"))}
    return ConvergenceStudy(rate, runs, rows, slopes, rate_accuracy, targets, raster_n)


def format_study(study: ConvergenceStudy) -> str:
    """The study's rows as a text table, then the fitted exponents."""
    lines = [f"{'n':>4s} {'accuracy':>9s} {'g rms':>8s} {'f rms':>8s} {'E rises':>8s} {'max rise':>9s} "
             f"{'sum rises':>10s} {'sum falls':>10s} {'wall s':>7s}"]
    for r in study.rows:
        lines.append(f"{r['n']:4d} {r['accuracy']:9.2f} {r['g_rms']:8.4f} {r['f_rms']:8.4f} "
                     f"{r['fraction']:8.2f} {r['max_rise']:9.3f} {r['total_rise']:10.3f} "
                     f"{r['total_fall']:10.2f} {r['wall']:7.1f}")
    s = study.slopes
    lines.append(f"fitted exponents: g distance ~ n^{s['g']:.2f}, f distance ~ n^{s['f']:.2f}, "
                 f"summed energy rise ~ n^{s['rise']:.2f}")
    return "\n".join(lines)
