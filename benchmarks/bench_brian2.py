"""brian2 (numpy, cython, cpp_standalone) against scipy's solve_ivp on MNIST-sized networks.

    python benchmarks/bench_brian2.py            # D = 784, N = 100 and 1000, 5 ms at dt = 0.05 ms
    python benchmarks/bench_brian2.py --quick    # N = 100 only, 2 ms, no cpp_standalone
    python benchmarks/bench_brian2.py --spiking  # the spiking network (uhn.dynamics.backends.brian2_spiking) only
    python benchmarks/bench_brian2.py --ratio    # MNIST N = 50, B = 10: brian2 / solve_ivp per target, beta 1 and 1000

Same network (dot similarity, softmax beta = 1, tau_v = 1 ms, tau_h = 0.1 ms), same query (an
MNIST digit plus Gaussian noise; random data if uhn.models.data is unavailable), same simulated time.
Per step = wall time of the run / number of brian2 steps; scipy's "per step" is its wall time over
the same number of brian2 steps, so the ratio is the cost of one simulated interval. The cython
timing is a warm cache (a first call fills it; its cold cost is printed when the cache was empty).
cpp_standalone is split into code generation + compile + run (wall) and the run of the binary alone.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from uhn.dynamics.backends.brian2_rate import run_brian2
from uhn.dynamics.integrate import integrate
from uhn.dynamics.lagrangians import log_sum_exp
from uhn.dynamics.network import Network


def _memories(n, seed=0):
    try:
        from uhn.models.data import load_dataset
        ds = load_dataset("mnist", n=n + 1, seed=seed)
        return ds.X[:n], ds.X[n], "mnist"
    except Exception:  # noqa: BLE001 - offline fallback
        rng = np.random.default_rng(seed)
        X = (rng.random((n + 1, 784)) < 0.2).astype(float)
        return X[:n], X[n], "random binary"


def bench(N, t_end, dt, targets, cache_dir):
    M, _, label = _memories(N)
    net = Network(M, "dot", L_h=log_sum_exp(1.0), tau_v=1.0, tau_h=0.1)
    rng = np.random.default_rng(1)
    q = np.clip(M[0] + 0.3 * rng.standard_normal(M.shape[1]), 0, 1)
    n_steps = int(round(t_end / dt))
    rows = []
    t0 = time.perf_counter()
    ref = integrate(net, q, t_end, t_eval=[0.0, t_end], stop_at_fixed_point=False, rtol=1e-8, atol=1e-10)
    t_scipy = time.perf_counter() - t0
    rows.append(("scipy RK45 (rtol 1e-8)", t_scipy, None, f"{ref.params['nfev']} RHS calls"))
    for target in targets:
        extra = ""
        if target == "cython":
            t0 = time.perf_counter()
            run_brian2(net, q, dt, dt, target="cython", cache_dir=cache_dir)
            first = time.perf_counter() - t0
            extra = f"first call {first:.1f} s (compile if cold)"
        t0 = time.perf_counter()
        tr = run_brian2(net, q, t_end, dt, target=target, record_every=n_steps, cache_dir=cache_dir)
        wall = time.perf_counter() - t0
        err = np.abs(tr.v[-1] - ref.v[-1]).max()
        if target == "cpp_standalone":
            run = tr.params["loop_s"]
            extra = f"binary ran {run:.3f} s ({run / n_steps * 1e3:.3f} ms/step); build {wall - run:.1f} s"
            rows.append((f"brian2/{target} (total)", wall, err, extra))
            rows.append((f"brian2/{target} (binary)", run, err, ""))
        else:
            loop = tr.params["loop_s"]
            rows.append((f"brian2/{target} (loop)", loop, err,
                         f"{extra}; objects {tr.params['build_s']:.2f} s, codegen+run "
                         f"{tr.params['run_s']:.2f} s".lstrip("; ")))
    print(f"\nD = {net.D}, N = {N} ({label}), {t_end:g} ms at dt = {dt:g} ms = {n_steps} steps, "
          f"{2 * N * net.D} synapses")
    print(f"{'':34s} {'wall s':>9s} {'ms/step':>9s} {'x scipy':>8s} {'|v-v_scipy|':>12s}")
    for name, wall, err, note in rows:
        e = "" if err is None else f"{err:.1e}"
        print(f"{name:34s} {wall:9.3f} {wall / n_steps * 1e3:9.3f} {wall / t_scipy:8.1f} {e:>12s}  {note}")


def bench_spiking(N=100, n=100, t_end=100.0, dt=0.1, targets=("numpy", "cpp_standalone")):
    """uhn.dynamics.backends.brian2_spiking on MNIST (D = 784, N memories, n Poisson neurons per unit, one query):
    simulated time per wall second of the simulation loop, and ns per synapse event (each spike
    delivered to its unit's count synapse, plus the 2 D N unit-to-unit summed synapses per step)."""
    from uhn.dynamics.lagrangians import softplus
    from uhn.dynamics.backends.brian2_spiking import run_spiking
    X, x, label = _memories(N)
    Z = X - X.mean(1, keepdims=True)
    M = 2 * Z / Z.std(1, keepdims=True)
    zq = x - x.mean()
    net = Network(M, "dot", L_v=softplus(), L_h=log_sum_exp(0.05), tau_v=10.0, tau_h=2.0)
    neurons = (net.D + N) * n
    print(f"\nspiking: D = {net.D}, N = {N} ({label}), n = {n} per unit = {neurons} Poisson neurons, "
          f"{2 * net.D * N} unit synapses, {t_end:g} ms at dt = {dt:g} ms")
    print(f"{'':28s} {'loop s':>8s} {'sim s/wall s':>13s} {'spikes':>9s} {'events':>10s} "
          f"{'ns/event':>9s} {'ns/neuron-step':>15s}")
    for target in targets:
        t0 = time.perf_counter()
        run = run_spiking(net, 2 * zq / zq.std(), t_end, dt=dt, n=n, r_max=0.2, target=target,
                          record_every=int(round(t_end / dt)), record_spikes=False)
        wall = time.perf_counter() - t0
        p = run.traj.params
        loop = p["loop_s"]
        spikes = p["spikes_v"] + p["spikes_h"]
        steps = int(round(t_end / dt)) + 1
        print(f"{'brian2-spiking/' + target:28s} {loop:8.3f} {t_end * 1e-3 / loop:13.4f} "
              f"{spikes:9.0f} {p['synapse_events']:10.3g} {loop / p['synapse_events'] * 1e9:9.2f} "
              f"{loop / (neurons * steps) * 1e9:15.2f}   (total wall {wall:.1f} s)")


def bench_ratio(betas=(1.0, 1000.0), N=50, B=10, t_end=10.0, rounds=3,
                targets=("numpy", "cython", "cpp_standalone"), cache_dir=None):
    """The paper's network (MNIST, N = 50 memories, dot + softmax, tau_v = 1 ms, tau_h = 0.1 ms),
    B = 10 half-masked noisy queries (uhn.corrupt), t_end ms without early stop: wall time of
    run_brian2 per target over that of uhn.integrate (RK45, rtol 1e-8) in the same round,
    medians of ``rounds`` interleaved rounds. Each target is run once before the rounds (cython
    fills its cache); the step is the one dt="auto" picks (dt_tol 1e-3), fixed for every timed
    run, so the pilot runs are not timed. cpp_standalone builds the project on every run: its
    "after compile" time is the binary's loop (params["loop_s"]), its whole call shown beside."""
    import uhn
    from uhn.dynamics.backends.brian2_rate import auto_dt, error_norm
    ds = uhn.load_dataset("mnist", n=N, seed=0)
    M = ds.X
    Q = uhn.corrupt(M[:B], "mask_bottom", 0.5, ds.image_shape, seed=0)
    Q = np.clip(Q + 0.1 * np.random.default_rng(0).standard_normal(Q.shape), 0, 1)
    print(f"\nMNIST D = {M.shape[1]}, N = {N}, B = {B} half-masked + N(0, 0.1^2) queries, dot + "
          f"softmax, tau_v = 1 ms, tau_h = 0.1 ms, t_end = {t_end:g} ms, {rounds} interleaved rounds")
    for beta in betas:
        net = Network(M, "dot", L_h=log_sum_exp(beta), tau_v=1.0, tau_h=0.1)
        dt, info = auto_dt(net, Q, t_end)
        n_steps = int(round(t_end / dt))
        times = {k: [] for k in ("scipy", *targets, "cpp_standalone (whole call)")}
        errs = {}
        for target in targets:      # warm-up: compile / fill the cache
            run_brian2(net, Q, t_end, dt, target=target, record_every=n_steps, cache_dir=cache_dir)
        for _ in range(rounds):
            t0 = time.perf_counter()
            ref = uhn.integrate(net, Q, t_end, t_eval=np.linspace(0, t_end, 2),
                                stop_at_fixed_point=False)
            times["scipy"].append(time.perf_counter() - t0)
            for target in targets:
                t0 = time.perf_counter()
                tr = run_brian2(net, Q, t_end, dt, target=target, record_every=n_steps,
                                cache_dir=cache_dir)
                wall = time.perf_counter() - t0
                if target == "cpp_standalone":
                    times[target].append(tr.params["loop_s"])
                    times["cpp_standalone (whole call)"].append(wall)
                else:
                    times[target].append(wall)
                errs[target] = error_norm(tr.v, tr.h, ref.v, ref.h)
        med = {k: float(np.median(v)) for k, v in times.items() if v}
        print(f"beta = {beta:g}: dt = {dt:.4g} ms (auto, dt_tol 1e-3) = {n_steps} steps; "
              f"scipy RK45 {med['scipy']:.3f} s ({ref.params['nfev']} RHS calls)")
        print(f"  {'':30s} {'median s':>9s} {'/ scipy':>8s} {'error_norm at t_end':>20s}")
        for k, m in med.items():
            if k == "scipy":
                continue
            e = errs.get(k.split(" ")[0])
            print(f"  brian2/{k:23s} {m:9.3f} {m / med['scipy']:8.1f} {e:20.2e}")
        print(f"  ratio brian2/solve_ivp at beta = {beta:g}: "
              + ", ".join(f"{k.split(' ')[0] + (' (whole)' if 'whole' in k else '')} "
                          f"{m / med['scipy']:.1f}x" for k, m in med.items() if k != "scipy"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="N = 100 only, 2 ms, no cpp_standalone")
    p.add_argument("--spiking", action="store_true", help="only the spiking network benchmark")
    p.add_argument("--ratio", action="store_true", help="only brian2 / solve_ivp on MNIST N = 50, "
                   "B = 10 at beta 1 and 1000, per target")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of --ratio")
    p.add_argument("--dt", type=float, default=0.05)
    p.add_argument("--cache-dir", default=None, help="cython cache (default $UHN_BRIAN2_CACHE or "
                   "~/.cache/uhn-brian2)")
    a = p.parse_args(argv)
    if a.spiking:
        bench_spiking()
        return
    if a.ratio:
        print(f"cores: {os.cpu_count()} (shared with other work: absolute times vary, ratios are "
              f"measured in the same rounds)")
        bench_ratio(rounds=a.rounds, cache_dir=a.cache_dir)
        return
    if a.quick:
        sizes, t_end, targets = [100], 2.0, ["numpy", "cython"]
    else:
        sizes, t_end, targets = [100, 1000], 5.0, ["numpy", "cython", "cpp_standalone"]
    print(f"cores: {os.cpu_count()} (shared); cython cache: "
          f"{a.cache_dir or os.environ.get('UHN_BRIAN2_CACHE') or '~/.cache/uhn-brian2'}; "
          f"tmp: {tempfile.gettempdir()}")
    for N in sizes:
        bench(N, t_end, a.dt, targets, a.cache_dir)


if __name__ == "__main__":
    main()
