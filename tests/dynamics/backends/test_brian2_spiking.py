"""The spiking Krotov-Hopfield network (uhn.dynamics.backends.brian2_spiking) against the rate model it samples.

numpy target, D = 16 features, N = 4 memories: each test runs in about a second.
"""
import numpy as np
import pytest

pytest.importorskip("brian2")

from uhn.dynamics.integrate import integrate
from uhn.dynamics.lagrangians import log_sum_exp, quadratic, softplus
from uhn.dynamics.network import Network
from uhn.dynamics.backends.brian2_spiking import energy_rises, rate_distance, run_spiking

D, N = 16, 4


def _net(tau_v=10.0, tau_h=2.0, beta=2.0):
    rng = np.random.default_rng(0)
    M = rng.choice([-1.0, 1.0], size=(N, D))
    Q = M[:2] + 0.5 * rng.standard_normal((2, D))
    return Network(M, "dot", L_v=softplus(), L_h=log_sum_exp(beta), tau_v=tau_v, tau_h=tau_h), Q


def _rate(net, Q, t):
    return integrate(net, Q, t[-1], t_eval=t, stop_at_fixed_point=False, rtol=1e-10, atol=1e-12)


def test_distance_to_the_rate_model_falls_like_one_over_sqrt_n():
    """The unit currents are sums of Poisson counts whose mean drift is the rate model's, so the
    distance is noise of variance ~ 1/(n r_max tau): RMS ~ n^(-1/2). Over n = 16 .. 1024 (two
    seeds each) the fitted log-log slope must be -1/2 within 0.2: the RMS over T = 51 correlated
    samples x 2 queries x 16 units estimates the noise to ~15% per run (measured spread), so the
    slope over a factor-64 range of n errs by about 0.15 / log(64) x 2 ~ 0.1, and the O(dt)
    bias floor (~1e-3 at dt = 0.05 ms, well below the n = 1024 noise of ~5e-3) bends it little."""
    net, Q = _net()
    ns, dist = [16, 64, 256, 1024], []
    ref = None
    for n in ns:
        d = []
        for seed in (1, 2):
            run = run_spiking(net, Q, 40.0, dt=0.05, n=n, r_max=0.2, record_every=16, seed=seed,
                              record_spikes=False)
            if ref is None:
                ref = _rate(net, Q, run.traj.t)
            d.append(rate_distance(run, ref)["g_rms"])
        dist.append(np.sqrt(np.mean(np.square(d))))
    slope = np.polyfit(np.log(ns), np.log(dist), 1)[0]
    assert -0.7 < slope < -0.3, (slope, dist)
    assert dist[-1] < dist[0] / 4       # 64x the neurons: 8x closer in expectation


def test_spike_count_matches_the_population_rates():
    """Query 0's feature spikes over the run: a sum of independent Bernoulli(r_max g_i dt) draws,
    mean lambda = n r_max dt sum_k sum_i g_i(v_k) (the step-k spikes fire at the rates of the
    state after step k's update, recorded at sample k + 1) and variance <= lambda: within
    5 sqrt(lambda) (5 sigma)."""
    net, Q = _net()
    n, r_max, dt = 20, 0.2, 0.05
    run = run_spiking(net, Q, 10.0, dt=dt, n=n, r_max=r_max, seed=3)
    i, t = run.spikes_v
    lam = n * r_max * dt * run.rates_v[1:, 0].sum()
    assert abs(len(i) - lam) < 5 * np.sqrt(lam), (len(i), lam)
    assert i.min() >= 0 and i.max() < D * n and t.max() < 10.0
    # per unit too (neuron k belongs to unit k // n), each within 5 sigma
    lam_i = n * r_max * dt * run.rates_v[1:, 0].sum(0)
    counts = np.bincount(i // n, minlength=D)
    assert np.all(np.abs(counts - lam_i) < 5 * np.sqrt(lam_i))
    # memory spikes: softmax rates sum to 1, so n r_max dt spikes per step per query in expectation
    lam_h = n * r_max * dt * run.rates_h[1:, 0].sum()
    np.testing.assert_allclose(lam_h, n * r_max * 10.0, rtol=1e-12)
    assert abs(len(run.spikes_h[0]) - lam_h) < 5 * np.sqrt(lam_h)


def test_same_seed_same_spikes_and_energy_bookkeeping():
    net, Q = _net()
    a = run_spiking(net, Q, 5.0, dt=0.05, n=8, seed=7)
    b = run_spiking(net, Q, 5.0, dt=0.05, n=8, seed=7)
    c = run_spiking(net, Q, 5.0, dt=0.05, n=8, seed=8)
    np.testing.assert_array_equal(a.spikes_v[0], b.spikes_v[0])
    np.testing.assert_array_equal(a.traj.v, b.traj.v)
    assert not np.array_equal(a.traj.v, c.traj.v)
    assert a.traj.backend == "brian2-spiking/numpy" and a.traj.v.shape == (101, 2, D)
    # E is the Network's energy at the recorded unit states
    np.testing.assert_array_equal(a.traj.E[7], net.energy(a.traj.v[7], a.traj.h[7], a.traj.I))
    rep = energy_rises(a.traj.E)
    dE = np.diff(a.traj.E, axis=0)
    assert rep["fraction"] == np.mean(dE > 0) and rep["max_rise"] == dE.max()


def test_energy_rises_counts():
    E = np.array([[3.0], [2.0], [2.5], [1.0]])
    assert energy_rises(E) == {"fraction": 1 / 3, "max_rise": 0.5, "total_rise": 0.5, "total_fall": 2.5}


def test_rate_distance_refuses_other_sample_times():
    net, Q = _net()
    run = run_spiking(net, Q, 1.0, dt=0.05, n=2, record_spikes=False)
    ref = _rate(net, Q, np.linspace(0, 1.0, 5))
    with pytest.raises(ValueError, match="different sample times"):
        rate_distance(run, ref)


@pytest.mark.parametrize("kw, match", [
    (dict(r_max=30.0), r"r_max \* dt = 1.5 > 1: a neuron cannot fire more than once per step"),
    (dict(n=0), r"n must be an integer >= 1, got 0"),
    (dict(dt=0.0), r"dt must be a positive finite time step \(ms\), got 0.0"),
    (dict(r_max=-1.0), r"r_max must be a positive finite rate \(kHz\), got -1.0"),
    (dict(t_end=1.01), r"t_end = 1.01 ms is not a whole number of steps of dt = 0.05 ms"),
    (dict(input_mode="held"), r"input_mode must be 'initial' or 'clamped'"),
])
def test_bad_arguments(kw, match):
    net, Q = _net()
    with pytest.raises(ValueError, match=match):
        run_spiking(net, Q, **dict(dict(t_end=1.0, dt=0.05, n=2), **kw))


@pytest.mark.parametrize("sim, L_v, L_h, words", [
    ("cosine", softplus(), log_sum_exp(1.0), "similarity 'cosine'"),
    ("dot", quadratic(), log_sum_exp(1.0), "L_v = quadratic"),
    ("dot", softplus(), quadratic(), "L_h = quadratic"),
])
def test_unsupported_networks_are_refused(sim, L_v, L_h, words):
    net, Q = _net()
    other = Network(net.M, sim, L_v=L_v, L_h=L_h)
    with pytest.raises(ValueError, match="spiking network: unsupported " + words):
        run_spiking(other, Q, 1.0, dt=0.05, n=2)


# ------------------------------------------------------------------ the convergence study
def test_convergence_study_rows_are_the_measures_of_its_runs():
    """Each row is rate_distance / energy_rises of its own run against the study's rate model; the
    slopes are the log-log least-squares exponents of those rows; accuracy counts the queries
    whose last-10-sample memory rates peak at their target."""
    from uhn.dynamics.backends.brian2_spiking import convergence_study, format_study
    net, Q = _net()
    study = convergence_study(net, Q, 4.0, ns=(4, 1), dt=0.05, record_every=4, seed=3, raster_n=4,
                              targets=[0, 1])
    assert [r["n"] for r in study.rows] == [1, 4] and sorted(study.runs) == [1, 4]
    assert study.rate.t.shape == (21,) and study.rate.t[-1] == 4.0
    for r in study.rows:
        run = study.runs[r["n"]]
        assert r["g_rms"] == rate_distance(run, study.rate)["g_rms"]
        assert r["total_rise"] == energy_rises(run.traj.E)["total_rise"]
        f_end = run.rates_h[-10:].mean(0)
        assert r["accuracy"] == np.mean(np.argmax(f_end, 1) == [0, 1])
    g = [r["g_rms"] for r in study.rows]
    assert study.slopes["g"] == pytest.approx(np.log(g[1] / g[0]) / np.log(4.0), rel=1e-9)
    assert study.rate_accuracy == np.mean(np.argmax(net.L_h.grad(study.rate.h[-1]), 1) == [0, 1])
    assert all(0 < r["wall"] < 120 for r in study.rows)
    # the rate model is integrated tightly (rtol 1e-10): an independent run agrees to round-off
    ref = _rate(net, Q, study.rate.t)
    np.testing.assert_allclose(study.rate.v, ref.v, rtol=0, atol=1e-8)
    # each query is its own memory's noisy copy: the rate model retrieves both, so swapping the
    # targets turns the accuracy from 1 to 0
    assert study.rate_accuracy == 1.0
    swapped = convergence_study(net, Q, 4.0, ns=(4,), dt=0.05, record_every=4, seed=3,
                                raster_n=None, targets=[1, 0])
    assert swapped.rate_accuracy == 0.0
    # the spiking accuracy: 1 against the memories its runs end on, 0 against any others (the
    # same seed gives the same run)
    ends = np.argmax(study.runs[4].rates_h[-10:].mean(0), 1)
    for targets, want in [(ends, 1.0), ((ends + 1) % N, 0.0)]:
        again = convergence_study(net, Q, 4.0, ns=(4,), dt=0.05, record_every=4, seed=3,
                                  raster_n=None, targets=targets)
        assert again.rows[0]["accuracy"] == want
    assert len(study.runs[4].spikes_v[0]) > 0 and study.runs[1].spikes_v is None  # raster at n = 4 only
    table = format_study(study).splitlines()
    assert len(table) == 4 and table[-1].startswith("fitted exponents: g distance ~ n^")


def test_convergence_study_refuses_bad_options():
    from uhn.dynamics.backends.brian2_spiking import _exponent, convergence_study
    net, Q = _net()
    with pytest.raises(ValueError, match="raster_n = 8 is not one of ns"):
        convergence_study(net, Q, 1.0, ns=(1, 4), dt=0.05, raster_n=8)
    with pytest.raises(ValueError, match="one memory index per query"):
        convergence_study(net, Q, 1.0, ns=(1,), dt=0.05, raster_n=None, targets=[0])
    with pytest.raises(ValueError, match="record_every = 3 must divide the 20 steps"):
        convergence_study(net, Q, 1.0, ns=(1,), dt=0.05, raster_n=None, record_every=3)
    # out-of-range targets scored accuracy 0.0 whatever was retrieved; now refused, naming them
    n_q = len(np.atleast_2d(Q))
    for t, exc, match in ((net.N, ValueError, rf"in \[0, {net.N}\) .* got {net.N} for query 0"),
                          (-1, ValueError, r"got -1 for query 0"),
                          (0.5, TypeError, r"integer memory indices, got dtype float64")):
        with pytest.raises(exc, match=match):
            convergence_study(net, Q, 1.0, ns=(1,), dt=0.05, raster_n=None, targets=[t] * n_q)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")         # a zero is refused before any log(0)
        assert np.isnan(_exponent([1], [0.5])) and np.isnan(_exponent([1, 4], [0.5, 0.0]))
    assert _exponent([1, 4, 16], [1.0, 0.5, 0.25]) == pytest.approx(-0.5, rel=1e-12)


def test_spiking_figures_show_every_run():
    """The raster figure needs recorded spikes; its energy panel has one line per n and the rate
    model's; the convergence figure one point per n."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from uhn.dynamics.plotting import plot_spiking_convergence, plot_spiking_network
    from uhn.dynamics.backends.brian2_spiking import convergence_study
    net, Q = _net()
    study = convergence_study(net, Q, 2.0, ns=(1, 2, 4), dt=0.05, record_every=4, raster_n=2)
    fig = plot_spiking_network(study, net, image_shape=(4, 4))
    assert len(fig.axes) == 4 and len(fig.axes[3].get_lines()) == 4
    assert [len(line.get_xdata()) for line in fig.axes[3].get_lines()] == [11] * 4
    plt.close(fig)
    fig = plot_spiking_convergence(study)
    assert [len(line.get_xdata()) for line in fig.axes[0].get_lines()[:2]] == [3, 3]
    plt.close(fig)
    study.raster_n = None
    with pytest.raises(ValueError, match="needs a study with raster_n"):
        plot_spiking_network(study, net)


def test_mnist_network_refuses_more_queries_than_memories():
    from uhn.dynamics.backends.brian2_spiking import mnist_network
    with pytest.raises(ValueError, match="n_queries must lie in 1..n_memories = 3"):
        mnist_network(n_memories=3, n_queries=4)
    net, Q, shape = mnist_network(n_memories=3, n_queries=2)
    assert Q.shape == (2, 784) and shape == (28, 28)
    np.testing.assert_allclose(net.M.std(1), 2.0, rtol=1e-12)
    np.testing.assert_allclose(Q.mean(1), 0.0, atol=1e-12)


def test_softmax_shift_follows_the_state_at_large_beta():
    """beta = 1000, queries 0.2 q: h grows by more than one unit from h(0) within t_end, so beta h leaves exp's range
    of a shift taken once at h(0) (the rate backend's former constant shift; the spiking model
    now renews it every step, uhn.dynamics.backends.brian2_rate.follow_shift). The run stays
    finite, its spiking memories retrieve the rate model's memory, and the state stays close to
    the rate model's (the Poisson noise of n = 16 neurons per unit)."""
    from uhn.dynamics.backends.brian2_spiking import run_spiking
    net, Q = _net(beta=1000.0)
    Q = 0.2 * Q
    run = run_spiking(net, Q, 10.0, dt=0.05, n=16, record_every=10, seed=2)
    rate = _rate(net, Q, run.traj.t)
    assert np.all(np.isfinite(run.traj.v)) and np.all(np.isfinite(run.traj.h))
    assert 1000.0 * (run.traj.h.max() - run.traj.h[0].max()) > 709
    np.testing.assert_array_equal(np.argmax(run.rates_h[-1], 1), np.argmax(rate.h[-1], 1))
