"""Capacity against theory, analysed: the rows of uhn.models.experiments.theory as fractions
with Wilson intervals, crossings (critical loads, capacities) and fitted exponents with a
parametric bootstrap of the binomial counts, the plain-text :func:`report` beside every theory
value, and the figures (:func:`make_theory_figures`). docs/theory_capacity.md shows the numbers.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from uhn.models.experiments.basins import half_radius, wilson_interval
from uhn.models.experiments.theory import (AGS_ALPHA_C, CAPACITY_LEVEL, FIXED_POINT_KINDS,
    FIXED_POINT_RULES, RETRIEVED_OVERLAP, TheoryPoint, ags_critical_load, ags_overlap, capacity_from_law,
    dam_stability_theory, first_step_error, nearest_capacity_theory, network_patterns,
    softmax_thresholds, stable_fraction_theory)


# ----------------------------------------------------------------------------------------------
# analysis: fractions with Wilson intervals, crossings and exponents with a bootstrap
# ----------------------------------------------------------------------------------------------

def crossing(x, k, n, at: float, *, boots: int = 1000, seed=0, log: bool = False) -> dict:
    """Where k/n (decreasing in x) first falls below ``at``, interpolated linearly (in log x when
    ``log``), and its parametric-bootstrap std and 95 % interval (k_i ~ Binomial(n_i, k_i/n_i)).
    ``draws``: the bootstrap values (None off the grid)."""
    x = np.asarray(x, dtype=np.float64)
    k, n = np.asarray(k), np.asarray(n)
    t = np.log(x) if log else x
    back = np.exp if log else (lambda v: v)
    r = half_radius(t, k / n, at)
    rng = np.random.default_rng(seed)
    draws = []
    for d in rng.binomial(n, k / n, size=(int(boots), k.size)) / n:
        v = half_radius(t, d, at)
        draws.append(None if v is None else float(back(v)))
    ok = np.array([v for v in draws if v is not None])
    out = {"value": None if r is None else float(back(r)), "draws": draws}
    if ok.size > 1:
        out.update(std=float(ok.std(ddof=1)), low=float(np.percentile(ok, 2.5)),
                   high=float(np.percentile(ok, 97.5)))
    else:
        out.update(std=None, low=None, high=None)
    return out


def fit_slope(x, ys_draws, *, log_x: bool = True, log_y: bool = True) -> dict:
    """Least-squares slope of (log) y against (log) x, and over bootstrap redraws: ``ys_draws``
    is a list (one per x) of (estimate, draws); draws are paired by index, a draw with any None
    is dropped. Returns slope, std, low, high (95 %)."""
    fx = np.log if log_x else (lambda v: np.asarray(v, dtype=np.float64))
    fy = np.log if log_y else (lambda v: np.asarray(v, dtype=np.float64))
    X = fx(np.asarray(x, dtype=np.float64))
    est = np.array([e for e, _ in ys_draws], dtype=np.float64)
    slope = float(np.polyfit(X, fy(est), 1)[0])
    B = min(len(d) for _, d in ys_draws)
    slopes = []
    for b in range(B):
        col = [d[b] for _, d in ys_draws]
        if any(v is None for v in col):
            continue
        slopes.append(np.polyfit(X, fy(np.array(col)), 1)[0])
    slopes = np.array(slopes)
    return {"slope": slope, "std": float(slopes.std(ddof=1)) if slopes.size > 1 else None,
            "low": float(np.percentile(slopes, 2.5)) if slopes.size else None,
            "high": float(np.percentile(slopes, 97.5)) if slopes.size else None,
            "kept": int(slopes.size)}


def _groups(rows, experiment, by):
    out: dict = {}
    for r in rows:
        if r.get("error") or r.get("experiment") != experiment:
            continue
        out.setdefault(tuple(r[b] for b in by), []).append(r)
    return out


def analyse_classical(rows, *, boots: int = 1000, seed: int = 0) -> list[dict]:
    """Per (mode, D): the loads, the stable and retrieved fractions with Wilson intervals and their
    theory, the mean final overlap beside the AGS overlap, and alpha_c(D) (retrieved fraction
    crossing 1/2) with its bootstrap interval."""
    out = []
    for (mode, D), rs in sorted(_groups(rows, "classical", ("mode", "dim")).items()):
        rs = sorted(rs, key=lambda r: r["n_memories"])
        N = np.array([r["n_memories"] for r in rs])
        n = np.array([r["n_probes"] for r in rs])
        ks, kr = np.array([r["n_stable"] for r in rs]), np.array([r["n_retrieved"] for r in rs])
        c = crossing(N / D, kr, n, 0.5, boots=boots, seed=seed)
        out.append({"mode": mode, "dim": D, "loads": N / D, "n": n,
                    "stable": ks / n, "stable_ci": wilson_interval(ks, n),
                    "stable_theory": np.array([stable_fraction_theory(D, m) for m in N]),
                    "retrieved": kr / n, "retrieved_ci": wilson_interval(kr, n),
                    "overlap": np.array([r["mean_overlap"] for r in rs]),
                    "overlap_theory": np.array([ags_overlap(m / D) for m in N]),
                    "alpha_c": c})
    return out


def extrapolate_alpha_c(curves_: list[dict], mode: str) -> dict:
    """alpha_c(D) = alpha_inf + a / sqrt(D) fitted over the D of one mode (bootstrap draws paired),
    alpha_inf with its interval against AGS's 0.138."""
    cs = [c for c in curves_ if c["mode"] == mode and c["alpha_c"]["value"] is not None]
    if len(cs) < 2:
        return {"alpha_inf": None}
    x = 1 / np.sqrt([c["dim"] for c in cs])
    fit = lambda y: np.polyfit(x, y, 1)[1]  # noqa: E731  (intercept)
    est = fit(np.array([c["alpha_c"]["value"] for c in cs]))
    B = min(len(c["alpha_c"]["draws"]) for c in cs)
    vals = []
    for b in range(B):
        col = [c["alpha_c"]["draws"][b] for c in cs]
        if None not in col:
            vals.append(fit(np.array(col)))
    vals = np.array(vals)
    return {"alpha_inf": float(est), "std": float(vals.std(ddof=1)) if vals.size > 1 else None,
            "low": float(np.percentile(vals, 2.5)) if vals.size else None,
            "high": float(np.percentile(vals, 97.5)) if vals.size else None,
            "dims": [c["dim"] for c in cs]}


def analyse_hopfield1982(rows) -> list[dict]:
    """Per (coding, n): the error histogram (fractions), P(0 errors) and P(<= 5 errors) with Wilson
    intervals, and the first-update bit error rate beside :func:`first_step_error`."""
    out = []
    for (mode, n), rs in sorted(_groups(rows, "hopfield1982", ("mode", "n_memories")).items()):
        hist = np.sum([r["error_histogram"] for r in rs], axis=0)
        tot = int(hist.sum())
        e_k, e_n = sum(r["first_step_errors"] for r in rs), sum(r["first_step_bits"] for r in rs)
        out.append({"coding": mode, "n": n, "probes": tot, "histogram": hist / tot,
                    "p0": hist[0] / tot, "p0_ci": wilson_interval(hist[0], tot),
                    "p5": hist[:6].sum() / tot, "p5_ci": wilson_interval(hist[:6].sum(), tot),
                    "first_error": e_k / e_n, "first_error_ci": wilson_interval(e_k, e_n),
                    "first_error_theory": first_step_error(rs[0]["dim"], n, mode)})
    return out


def analyse_capacity(rows, experiment: str, by: Sequence[str], theory, *, boots: int = 1000,
                     seed: int = 0, log_y: bool = True) -> list[dict]:
    """Largest N with P(correct) >= 0.99 per D (log-N interpolated crossing, bootstrap) for each
    line ``by`` (e.g. ("degree",)), the theory's capacity per D (``theory(row)`` of a row at that
    D -> N or (low, high)), and the fitted slope of ln N* against ln D (``log_y``, a power law) or
    against D (the exponential law) with its bootstrap interval, beside the theory's slope over
    the same D."""
    out = []
    lines: dict = {}
    for key, rs in _groups(rows, experiment, tuple(by) + ("dim",)).items():
        lines.setdefault(key[:-1], {})[key[-1]] = rs
    for line, per_d in sorted(lines.items()):
        dims, caps, th = [], [], []
        for D in sorted(per_d):
            rs = sorted(per_d[D], key=lambda r: r["n_memories"])
            N = np.array([r["n_memories"] for r in rs])
            k = np.array([r["n_correct"] for r in rs])
            n = np.array([r["n_probes"] for r in rs])
            c = crossing(N, k, n, CAPACITY_LEVEL, boots=boots, seed=seed, log=True)
            c.update(N=N, p=k / n, ci=wilson_interval(k, n))
            dims.append(D)
            caps.append(c)
            th.append(theory(rs[0]))
        entry = {"line": dict(zip(by, line)), "dims": np.array(dims), "capacity": caps,
                 "theory": th}
        good = [(D, c) for D, c in zip(dims, caps) if c["value"] is not None]
        if len(good) >= 2:
            entry["fit"] = fit_slope([D for D, _ in good], [(c["value"], c["draws"]) for _, c in good],
                                     log_x=log_y, log_y=True)
            thv = np.array(th, dtype=np.float64)
            entry["theory_slope"] = float(np.polyfit(np.log(dims) if log_y else np.array(dims, float),
                                                     np.log(thv), 1)[0])
        out.append(entry)
    return out


def analyse_fixed_points(rows) -> list[dict]:
    """Per (flips, beta): the fraction of probes ending in each fixed-point kind, single shot,
    iterated and (rows with dynamics) the dynamics' rest state, with Wilson intervals; for the
    dynamics also the fractions at rest and agreeing with the iteration's class, and the largest
    |z_dynamics - z_iterate| where they agree (``dynamics_iterate_gap``). A row measured with
    the dynamics replaces one without at the same (flips, beta, D, N, networks, seed): their
    single-shot and iterated counts are the same."""
    best: dict = {}
    for r in rows:
        if r.get("experiment") != "softmax_fixed_points" or r.get("error"):
            continue
        at = tuple(r[k] for k in ("flips", "beta", "dim", "n_memories", "networks", "seed"))
        if at not in best or (r.get("dynamics") and not best[at].get("dynamics")):
            best[at] = r
    out = []
    for r in sorted(best.values(), key=lambda r: (r["flips"], r["beta"])):
        n = r["n_probes"]
        e = {"beta": r["beta"], "n": n, "dim": r["dim"], "n_memories": r["n_memories"],
             "flips": r["flips"], "dynamics": bool(r.get("dynamics"))}
        for how in FIXED_POINT_RULES if e["dynamics"] else FIXED_POINT_RULES[:2]:
            for kind in FIXED_POINT_KINDS:
                k = r[f"{how}_{kind}"]
                e[f"{how}_{kind}"] = k / n
                e[f"{how}_{kind}_ci"] = wilson_interval(k, n)
        if e["dynamics"]:
            e.update(dynamics_at_rest=r["dynamics_converged"] / n,
                     dynamics_agree=r["dynamics_agree"] / n,
                     dynamics_iterate_gap=r["dynamics_iterate_gap"])
        out.append(e)
    return out


def dam_theory(row) -> float:
    """Capacity at 0.99 of :func:`dam_stability_theory` at a row's (dim, degree)."""
    D, n = row["dim"], row["degree"]
    return capacity_from_law(lambda N: dam_stability_theory(D, N, n))


def _fmt(c, digits=4):
    if c.get("value") is None:
        return "off grid"
    if c.get("std") is None:
        return f"{c['value']:.{digits}g}"
    return f"{c['value']:.{digits}g} [{c['low']:.{digits}g}, {c['high']:.{digits}g}]"


def report(rows, *, boots: int = 1000, seed: int = 0) -> str:
    """The table of every measured number beside its theory (plain text)."""
    lines = []
    cl = analyse_classical(rows, boots=boots, seed=seed)
    if cl:
        lines.append(f"classical Hopfield: alpha_c(D) where P(final overlap >= {RETRIEVED_OVERLAP}) "
                     f"= 1/2 [95% bootstrap]; AGS alpha_c = {ags_critical_load():.4f}")
        for c in cl:
            lines.append(f"  {c['mode']:5s} D={c['dim']:5d}  alpha_c = {_fmt(c['alpha_c'])}")
        for mode in sorted({c["mode"] for c in cl}):
            e = extrapolate_alpha_c(cl, mode)
            if e["alpha_inf"] is not None and e.get("std") is not None:
                lines.append(f"  {mode:5s} alpha_c(D) = alpha_inf + a/sqrt(D): alpha_inf = "
                             f"{e['alpha_inf']:.4f} [{e['low']:.4f}, {e['high']:.4f}] vs 0.138")
    hp = analyse_hopfield1982(rows)
    if hp:
        lines.append("Hopfield (1982), N = 100: P(0 errors), P(<= 5 errors) [Wilson 95%], "
                     "first-update bit error rate vs Gaussian theory")
        for h in hp:
            lines.append(f"  {h['coding']:7s} n={h['n']:3d}  P0 = {h['p0']:.3f} "
                         f"[{h['p0_ci'][0]:.3f}, {h['p0_ci'][1]:.3f}]  P<=5 = {h['p5']:.3f} "
                         f"[{h['p5_ci'][0]:.3f}, {h['p5_ci'][1]:.3f}]  first-step error "
                         f"{h['first_error']:.4f} (theory {h['first_error_theory']:.4f})")
    dam = analyse_capacity(rows, "dam", ("degree",), dam_theory, boots=boots, seed=seed)
    if dam:
        lines.append("dense associative memory: N* = largest N with P(stable) >= 0.99")
        for d in dam:
            n = d["line"]["degree"]
            caps = ", ".join(f"D={D}: {_fmt(c, 3)} (theory {t:.3g})"
                             for D, c, t in zip(d["dims"], d["capacity"], d["theory"]))
            lines.append(f"  n={n}: {caps}")
            if "fit" in d and d["fit"]["std"] is not None:
                f = d["fit"]
                lines.append(f"  n={n}: exponent {f['slope']:.3f} [{f['low']:.3f}, {f['high']:.3f}] "
                             f"vs n-1 = {n - 1}, finite-D theory {d['theory_slope']:.3f}")
    sm = analyse_capacity(rows, "softmax_capacity", ("separation", "beta"),
                          softmax_theory, boots=boots, seed=seed, log_y=False) \
        if any(r.get("experiment") == "softmax_capacity" for r in rows) else []
    if sm:
        lines.append("softmax / max separation: N* at P >= 0.99, queries with rho D bits flipped; "
                     "slope of ln N* vs D")
        for d in sm:
            caps = ", ".join(f"D={D}: {_fmt(c, 3)} (exact max-law {t:.3g})"
                             for D, c, t in zip(d["dims"], d["capacity"], d["theory"]))
            lines.append(f"  {d['line']}: {caps}")
            if "fit" in d and d["fit"]["std"] is not None:
                f = d["fit"]
                lines.append(f"  {d['line']}: d ln N*/dD = {f['slope']:.4f} [{f['low']:.4f}, "
                             f"{f['high']:.4f}] vs exact max-law {d['theory_slope']:.4f}")
    fp = analyse_fixed_points(rows)
    if fp:
        lines.append("softmax fixed points vs beta: fraction single / metastable / average; "
                     "dynamics: at rest, same class as iterate, max |z_dyn - z_iter| there")
        for e in fp:
            text = "  ".join(f"{how.replace('_', ' ')} " + "/".join(
                f"{e[f'{how}_{k}']:.2f}" for k in FIXED_POINT_KINDS)
                for how in FIXED_POINT_RULES if f"{how}_single" in e)
            if e["dynamics"]:
                text += (f"  (at rest {e['dynamics_at_rest']:.2f}, agree {e['dynamics_agree']:.2f}, "
                         f"gap {e['dynamics_iterate_gap']:.1e})")
            lines.append(f"  flips={e['flips']} beta={e['beta']:.4g}  {text}")
    return "\n".join(lines)


def softmax_theory(row) -> float:
    """The exact nearest-pattern capacity at a row's (dim, flips)."""
    return nearest_capacity_theory(row["dim"], row["flips"])


# ----------------------------------------------------------------------------------------------
# figures
# ----------------------------------------------------------------------------------------------

def _save(fig, path):
    from uhn.models.plotting import save_figure
    save_figure(fig, path)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path


def plot_classical(curves_: list[dict], path=None):
    """Classical Hopfield: fraction of exact fixed points (theory dashed), fraction retrieved
    (m >= 0.9) with Wilson bands, and the mean final overlap beside AGS m(alpha), vs alpha = N/D;
    AGS alpha_c dotted."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for c in curves_:
        lab = f"{c['mode']} D={c['dim']}"
        ln, = axes[0].plot(c["loads"], c["stable"], "o-", ms=3, label=lab)
        axes[0].plot(c["loads"], c["stable_theory"], "--", color=ln.get_color(), lw=1)
        axes[1].plot(c["loads"], c["retrieved"], "o-", ms=3, color=ln.get_color(), label=lab)
        axes[1].fill_between(c["loads"], *c["retrieved_ci"], color=ln.get_color(), alpha=0.2, lw=0)
        axes[2].plot(c["loads"], c["overlap"], "o-", ms=3, color=ln.get_color(), label=lab)
    a = np.linspace(0.005, ags_critical_load(), 200)
    axes[2].plot(a, [ags_overlap(v) for v in a], "k-", lw=1.5, label="AGS m(alpha)")
    for ax, yl in zip(axes, ("exact fixed points (theory dashed)", f"P(m >= {RETRIEVED_OVERLAP})",
                             "mean final overlap")):
        ax.axvline(AGS_ALPHA_C, color="k", ls=":", lw=1)
        ax.set(xlabel="load alpha = N / D", ylabel=yl)
    axes[1].axhline(0.5, color="0.5", lw=0.8)
    axes[2].legend(fontsize=6)
    fig.tight_layout()
    return _save(fig, path) if path is not None else fig


def plot_hopfield1982(analysis: list[dict], path=None):
    """Hopfield (1982) Fig. 2: the distribution of final errors from each stored state, N = 100,
    per n, {0, 1} against bipolar."""
    import matplotlib.pyplot as plt
    ns = sorted({h["n"] for h in analysis})
    fig, axes = plt.subplots(1, len(ns), figsize=(4 * len(ns), 3.4), squeeze=False)
    for ax, n in zip(axes[0], ns):
        for h in analysis:
            if h["n"] == n:
                k = np.arange(len(h["histogram"]))
                ax.step(k[:41], h["histogram"][:41], where="mid",
                        label=f"{h['coding']} (P0 = {h['p0']:.2f})")
        ax.set(title=f"n = {n}", xlabel="errors in the final state", ylabel="fraction of states",
               yscale="log", ylim=(1e-3, 1.05))
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path) if path is not None else fig


def plot_capacities(dam: list[dict], softmax: list[dict], path=None):
    """Left: DAM capacity N* (P >= 0.99) vs D, log-log, with the SNR theory (dashed) and the
    fitted exponent; right: softmax / max capacity vs D, log-linear, with the exact max law."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, entries, logx in ((axes[0], dam, True), (axes[1], softmax, False)):
        for d in entries:
            caps = d["capacity"]
            ok = [(D, c) for D, c in zip(d["dims"], caps) if c["value"] is not None]
            if not ok:
                continue
            D = np.array([v for v, _ in ok], dtype=float)
            y = np.array([c["value"] for _, c in ok])
            err = np.array([[c["value"] - (c["low"] or c["value"]), (c["high"] or c["value"]) - c["value"]]
                            for _, c in ok]).T
            fit = d.get("fit", {})
            lab = ", ".join(f"{k}={v}" for k, v in d["line"].items())
            if fit.get("slope") is not None:
                lab += f" (slope {fit['slope']:.2f})"
            ln = ax.errorbar(D, y, yerr=err, fmt="o", ms=4, capsize=2, label=lab)
            ax.plot(d["dims"], d["theory"], "--", color=ln[0].get_color(), lw=1)
        ax.set(yscale="log", xscale="log" if logx else "linear", xlabel="D",
               ylabel="largest N with P >= 0.99")
        if logx:
            from matplotlib.ticker import NullFormatter
            ax.xaxis.set_minor_formatter(NullFormatter())
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    axes[0].set_title("dense associative memory (theory dashed)")
    axes[1].set_title("softmax / max (exact max law dashed)")
    fig.tight_layout()
    return _save(fig, path) if path is not None else fig


#: line style of each rule in :func:`plot_fixed_points`
_RULE_STYLE = {"single_shot": dict(ls="--", marker=None), "iterate": dict(ls="-", marker="o", ms=3),
               "dynamics": dict(ls=":", marker="x", ms=5)}


def plot_fixed_points(analysis: list[dict], thresholds: Optional[dict] = None, path=None):
    """Fraction of probes ending at a single pattern, a metastable mixture or the global average
    against beta, single shot (dashed), iterated (solid) and the dynamics' rest state (dotted,
    crosses, where measured), one panel per ``flips``; theory betas dotted (1/lambda_max(C)) and
    dash-dotted (Ramsauer's condition, median): ``thresholds`` one :func:`softmax_thresholds`
    dict for every panel or {flips: dict}."""
    import matplotlib.pyplot as plt
    flips = sorted({e["flips"] for e in analysis})
    fig, axes = plt.subplots(1, len(flips), figsize=(6.4 * len(flips), 4), squeeze=False)
    for ax, f in zip(axes[0], flips):
        es = [e for e in analysis if e["flips"] == f]
        b = np.array([e["beta"] for e in es])
        for how in FIXED_POINT_RULES:
            have = [e for e in es if f"{how}_single" in e]
            if not have:
                continue
            for kind, color in zip(FIXED_POINT_KINDS, ("C0", "C1", "C2")):
                ax.plot([e["beta"] for e in have], [e[f"{how}_{kind}"] for e in have],
                        color=color, label=f"{kind} ({how.replace('_', ' ')})", **_RULE_STYLE[how])
        th = thresholds.get(f) if thresholds and "average" not in thresholds else thresholds
        if th:
            ax.axvline(th["average"], color="k", ls=":", lw=1)
            ax.axvline(th["single"], color="k", ls="-.", lw=1)
        ax.set(xscale="log", xlabel="beta", ylabel="fraction of probes", xlim=(b.min(), b.max()),
               title=f"D = {es[0]['dim']}, N = {es[0]['n_memories']}, {f} bits flipped")
        ax.legend(fontsize=6)
    fig.tight_layout()
    return _save(fig, path) if path is not None else fig


def make_theory_figures(rows, out_dir, *, boots: int = 1000, seed: int = 0) -> list:
    """Every figure of the study that ``rows`` hold, written to ``out_dir``
    (theory_classical.png, theory_hopfield1982.png, theory_capacities.png,
    theory_fixed_points.png); returns the paths written."""
    from pathlib import Path
    out = Path(out_dir)
    paths = []
    cl = analyse_classical(rows, boots=boots, seed=seed)
    if cl:
        paths.append(plot_classical(cl, out / "theory_classical.png"))
    hp = analyse_hopfield1982(rows)
    if hp:
        paths.append(plot_hopfield1982(hp, out / "theory_hopfield1982.png"))
    dam = analyse_capacity(rows, "dam", ("degree",), dam_theory, boots=boots, seed=seed)
    sm = analyse_capacity(rows, "softmax_capacity", ("separation", "beta"), softmax_theory,
                          boots=boots, seed=seed, log_y=False)
    if dam or sm:
        paths.append(plot_capacities(dam, sm, out / "theory_capacities.png"))
    fp = analyse_fixed_points(rows)
    if fp:
        th = {}
        for e in fp:      # network 0 of each corruption (the patterns are seeded with flips)
            th.setdefault(e["flips"], softmax_thresholds(network_patterns(TheoryPoint(
                "softmax_fixed_points", dim=e["dim"], n_memories=e["n_memories"], beta=e["beta"],
                flips=e["flips"], seed=seed))))
        paths.append(plot_fixed_points(fp, th, out / "theory_fixed_points.png"))
    return paths
