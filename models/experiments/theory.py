"""Capacity against theory on random patterns (issue 31, section 2; docs/theory_capacity.md).

Five measurements, each a :class:`TheoryPoint` evaluated by :func:`evaluate` on the sweep runner
(uhn.models.experiments.sweep: in process or on dask, resumable), each beside its theory:

``classical``  the classical Hopfield network (zero diagonal) started at every stored pattern and
    updated (``sync`` or ``async``) to a fixed point: the fraction of stored patterns that are
    exact fixed points (theory: (1 - P_e)^D, P_e = Phi(-sqrt((D - 1)/(N - 1))) per bit, the
    independent-bit Gaussian approximation) and of final overlaps m >= :data:`RETRIEVED_OVERLAP`;
    the load where that fraction crosses 1/2 is the finite-size critical load alpha_c(D), against
    Amit, Gutfreund & Sompolinsky (1985): alpha_c = 0.138 (:func:`ags_critical_load`), and the mean
    final overlap against the AGS retrieval overlap m(alpha) (:func:`ags_overlap`).
``hopfield1982``  Hopfield's (1982) protocol: 100 two-state neurons V in {0, 1},
    T_ij = sum_s (2 V_i^s - 1)(2 V_j^s - 1), T_ii = 0, threshold 0, asynchronous single-neuron
    updates (V_i <- 1 if sum_j T_ij V_j > 0, 0 if < 0, unchanged at 0) from each stored state to
    a fixed point; the histogram of final errors (his Fig. 2), beside the bipolar network with the
    same T and tie rule. In {0, 1}, sum_j T_ij V_j = (T s + T 1)_i / 2 with s = 2V - 1: the bias
    (T 1)_i adds noise of variance ~n (N - 1), so the first-update error rate is
    Phi(-sqrt((N - 1)/(2n - 1))) instead of the bipolar Phi(-sqrt((N - 1)/(n - 1)))
    (:func:`first_step_error`).
``dam``  dense associative memory of Krotov & Hopfield (2016) energy degree n, i.e. the gradient
    rule z = sign(sum_mu xi_mu g(xi_mu . q)) with g(x) = sign(x) |x|^(n-1) (the library's signed
    polynomial separation of degree n - 1; n = 2 is the classical network with its diagonal): the
    probability that a stored pattern is one-step stable; the largest N with probability >= 0.99
    per D, whose fitted exponent (bootstrap) is compared with n - 1 and with the exponent of the
    finite-D signal-to-noise prediction (:func:`dam_stability_theory`) over the same D.
``softmax_capacity``  z = sign(M^T softmax(beta M q)) (or ``max``) from a stored pattern with a
    fixed fraction rho of its bits flipped: the largest N retrieved with probability >= 0.99 per D,
    which grows exponentially in D; for the max separation the law is exact,
    P = P(H > f)^(N-1) .. P(H >= f)^(N-1) with H ~ Binomial(D, 1/2) the distance of another
    pattern to the query (ties go to the lower index), :func:`nearest_capacity_theory`.
``softmax_fixed_points``  the state reached from a (corrupted) stored pattern, single shot and
    Memory.iterate, classified by its weights w = softmax(beta M z): ``single`` (1/sum w^2 < 1.5),
    ``average`` (1/sum w^2 > N/2) or ``metastable`` (Ramsauer et al. 2020), against beta, with the
    theory thresholds :func:`softmax_thresholds`: the average's linear stability 1/lambda_max(C)
    and Ramsauer's sufficient separation condition for single-pattern retrieval.

Every fraction comes with its Wilson interval (uhn.models.experiments.basins.wilson_interval)
and every crossing and fitted exponent with a parametric bootstrap of the binomial counts.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, fields, replace
from typing import Iterable, Optional, Sequence

import numpy as np
from scipy import optimize, special, stats

from uhn.models.experiments.basins import flip_bits, half_radius, is_correct, wilson_interval
from uhn.models.validation import int_param

#: revision of :func:`evaluate`'s protocol; part of every key
PROTOCOL = 1
#: the measurements (:class:`TheoryPoint`.experiment)
KINDS = ("classical", "hopfield1982", "dam", "softmax_capacity", "softmax_fixed_points")
#: a final overlap counted as retrieval in the classical experiment (AGS: m >= 0.967 below
#: alpha_c, m ~ 0.3 or less above it)
RETRIEVED_OVERLAP = 0.9
#: the probability at which a capacity (largest N) is read
CAPACITY_LEVEL = 0.99
#: the published critical load (Amit, Gutfreund & Sompolinsky 1985)
AGS_ALPHA_C = 0.138


@dataclass(frozen=True)
class TheoryPoint:
    """Every parameter of one theory measurement.

    experiment : one of :data:`KINDS`. dim : D (neurons). n_memories : N (patterns).
    mode : ``sync`` / ``async`` (classical), ``binary`` / ``bipolar`` (hopfield1982).
    degree : the DAM energy degree n. separation, beta : ``softmax`` (beta) or ``max``.
    flips : bits flipped in each query (softmax experiments).
    networks : independent pattern sets, at least; min_probes : more networks until the probes
        reach this many (small N: a few probes per network). probes : queries per network (None:
        every stored pattern; at most N).
    max_sweeps : bound on update sweeps / iterations. seed : seeds everything.
    """

    experiment: str = "classical"
    dim: int = 100
    n_memories: int = 10
    mode: str = "async"
    degree: int = 2
    separation: str = "softmax"
    beta: float = 1.0
    flips: int = 0
    networks: int = 10
    probes: Optional[int] = None
    min_probes: int = 0
    max_sweeps: int = 100
    seed: int = 0

    def __post_init__(self):
        for name, low in (("dim", 2), ("n_memories", 1), ("degree", 2), ("flips", 0),
                          ("networks", 1), ("min_probes", 0), ("max_sweeps", 1), ("seed", 0)):
            object.__setattr__(self, name, int_param(getattr(self, name), name, low=low))
        if self.probes is not None:
            object.__setattr__(self, "probes", int_param(self.probes, "probes", low=1))
        object.__setattr__(self, "beta", float(self.beta))
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"beta must be a finite number > 0, got {self.beta}")
        if self.experiment not in KINDS:
            raise ValueError(f"experiment must be one of {KINDS}, got {self.experiment!r}")
        modes = {"classical": ("sync", "async"), "hopfield1982": ("binary", "bipolar")}
        if self.experiment in modes and self.mode not in modes[self.experiment]:
            raise ValueError(f"{self.experiment} mode must be one of {modes[self.experiment]}, "
                             f"got {self.mode!r}")
        if self.separation not in ("softmax", "max"):
            raise ValueError(f"separation must be 'softmax' or 'max', got {self.separation!r}")
        if self.flips > self.dim:
            raise ValueError(f"cannot flip {self.flips} of {self.dim} bits")

    def params(self) -> dict:
        return asdict(self)

    def key(self) -> str:
        return json.dumps({"protocol": PROTOCOL, "study": "theory", **self.params()},
                          sort_keys=True, separators=(",", ":"))

    @property
    def load(self) -> float:
        """alpha = N / D."""
        return self.n_memories / self.dim


# ----------------------------------------------------------------------------------------------
# theory
# ----------------------------------------------------------------------------------------------

def _ags_g(y):
    """erf(y)/y - (2/sqrt(pi)) exp(-y^2) = sqrt(2 alpha) on the AGS T = 0 retrieval branch."""
    return special.erf(y) / y - 2 / math.sqrt(math.pi) * np.exp(-y * y)


def ags_critical_load() -> float:
    """alpha_c of the T = 0 replica-symmetric solution (Amit, Gutfreund & Sompolinsky 1985): the
    retrieval equation y (sqrt(2 alpha) + (2/sqrt(pi)) e^{-y^2}) = erf(y), m = erf(y), has a
    solution y > 0 for alpha <= alpha_c = max_y g(y)^2 / 2 (g: erf(y)/y - (2/sqrt(pi)) e^{-y^2})."""
    res = optimize.minimize_scalar(lambda y: -_ags_g(y), bounds=(0.5, 3.0), method="bounded",
                                   options={"xatol": 1e-12})
    return float(_ags_g(res.x) ** 2 / 2)


def ags_overlap(alpha: float) -> float:
    """The AGS T = 0 retrieval overlap m(alpha) = erf(y), y the largest root of
    g(y) = sqrt(2 alpha) (:func:`ags_critical_load`); NaN above alpha_c (no retrieval state)."""
    if alpha <= 0:
        return 1.0
    res = optimize.minimize_scalar(lambda y: -_ags_g(y), bounds=(0.5, 3.0), method="bounded",
                                   options={"xatol": 1e-12})
    target = math.sqrt(2 * alpha)
    if _ags_g(res.x) < target:
        return float("nan")
    y = optimize.brentq(lambda y: _ags_g(y) - target, res.x, 50.0, xtol=1e-14)
    return float(special.erf(y))


def stable_fraction_theory(D: int, N: int) -> float:
    """(1 - P_e)^D, P_e = Phi(-sqrt((D - 1)/(N - 1))): a stored pattern an exact fixed point of
    the zero-diagonal network (each bit's crosstalk Gaussian and independent)."""
    if N <= 1:
        return 1.0
    return float(stats.norm.cdf(math.sqrt((D - 1) / (N - 1))) ** D)


def first_step_error(N: int, n: int, coding: str) -> float:
    """Per-bit probability that the first update of a stored state of Hopfield's (1982) network
    is wrong: Phi(-sqrt((N - 1)/(n - 1))) bipolar, Phi(-sqrt((N - 1)/(2 n - 1))) in {0, 1}
    (the bias sum_j T_ij adds variance ~n (N - 1)); Gaussian crosstalk."""
    var = {"bipolar": n - 1, "binary": 2 * n - 1}[coding]
    return 0.0 if var == 0 else float(stats.norm.cdf(-math.sqrt((N - 1) / var)))


def _sum_pm1_pmf(D: int):
    """Values and probabilities of a sum of D independent uniform +-1 variables."""
    k = np.arange(D + 1)
    return D - 2.0 * k, stats.binom(D, 0.5).pmf(k)


def dam_stability_theory(D: int, N: int, n: int) -> float:
    """P(a stored pattern is stable under Krotov & Hopfield's (2016) update of energy degree n,
    F(x) = x^n): xi_i h_i = F(D) - F(D - 2) plus, from each other pattern, a term
    a [F(y + 1) - F(y - 1)] (a = +-1, y a sum of D - 1 signs independent of a) of mean 0 and exact
    variance v (a binomial sum), taken Gaussian; bits independent:
    Phi((F(D) - F(D - 2)) / sqrt((N - 1) v))^D."""
    if N <= 1:
        return 1.0
    y, w = _sum_pm1_pmf(D - 1)
    v = float(np.sum(w * ((y + 1.0) ** n - (y - 1.0) ** n) ** 2))
    signal = float(D) ** n - float(D - 2) ** n
    return float(stats.norm.cdf(signal / math.sqrt((N - 1) * v)) ** D)


def krotov_hopfield_step(M, Q, n: int, chunk: int = 64) -> np.ndarray:
    """One synchronous update of Krotov & Hopfield's (2016) dense associative memory, energy
    E = -sum_mu F(xi_mu . s), F(x) = x^n: s_i <- sign(sum_mu [F(xi_mu,i + y_mu,i) - F(-xi_mu,i +
    y_mu,i)]) with y_mu,i = sum_{j != i} xi_mu,j s_j (sign(0) = +1). M (N, D), Q (B, D) bipolar."""
    M, Q = np.asarray(M, dtype=np.float64), np.asarray(Q, dtype=np.float64)
    out = np.empty_like(Q)
    for s in range(0, Q.shape[0], chunk):
        q = Q[s:s + chunk]
        S = q @ M.T                                           # (b, N)
        Y = S[:, :, None] - M[None, :, :] * q[:, None, :]     # (b, N, D): the sum without bit i
        h = np.sum((Y + M[None]) ** n - (Y - M[None]) ** n, axis=1)
        out[s:s + chunk] = np.where(h >= 0, 1.0, -1.0)
    return out


def capacity_from_law(prob, level: float = CAPACITY_LEVEL, n_max: float = 1e12) -> float:
    """The largest real N with prob(N) >= level for a prob decreasing in N (bisection on log N)."""
    lo, hi = 1.0, 2.0
    while prob(hi) >= level:
        lo, hi = hi, hi * 2
        if hi > n_max:
            return float("inf")
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if prob(mid) >= level else (lo, mid)
    return lo


def nearest_retrieval_law(D: int, flips: int, N: int) -> float:
    """Exact P(the nearest stored pattern, ties to the lower index, is the right one) for a query
    ``flips`` bits from a uniformly chosen stored pattern among N random ones: with
    a = P(H > f), b = P(H >= f), H ~ Binomial(D, 1/2) the distance of another pattern to the
    query, target index i wins w.p. a^i b^(N-1-i), so P = (b^N - a^N) / (N (b - a))."""
    H = stats.binom(D, 0.5)
    a, b = float(H.sf(flips)), float(H.sf(flips - 1))
    if b == a:
        return a ** (N - 1)
    return float((b ** N - a ** N) / (N * (b - a)))


def nearest_capacity_theory(D: int, flips: int, level: float = CAPACITY_LEVEL) -> float:
    """The largest N with :func:`nearest_retrieval_law` >= ``level`` (real N, bisection)."""
    return capacity_from_law(lambda N: nearest_retrieval_law(D, flips, N), level)


def softmax_thresholds(M, flips: int = 0) -> dict:
    """Theory betas of the fixed point of z -> M^T softmax(beta M z) for stored rows M (N, D):

    ``average``: 1 / lambda_max(C), C = (1/N) sum_mu (xi_mu - m)(xi_mu - m)^T: the Jacobian at
        uniform weights is beta C, so below it the mean m is a stable fixed point;
    ``single``: per pattern i, the smallest beta meeting Ramsauer et al.'s (2020, Thm 4)
        sufficient condition Delta_i >= 2/(beta N) + ln(2 (N - 1) N beta R^2) / beta, with
        Delta_i = xi_i . xi_i - max_{j != i} xi_i . xi_j and R = max |xi| (inf where no beta meets
        it), searched from beta_0 = 1 / (2 (N - 1) N R^2), where the logarithm turns positive
        (below it the inequality holds vacuously); its median over the patterns."""
    M = np.asarray(M, dtype=np.float64)
    N = M.shape[0]
    C = np.cov(M.T, bias=True)
    out = {"average": float(1 / np.linalg.eigvalsh(C)[-1])}
    G = M @ M.T
    R2 = float(np.max(np.sum(M * M, axis=1)))
    betas = []
    for i in range(N):
        others = np.delete(G[i], i)
        delta = G[i, i] - (others.max() if others.size else -np.inf)

        def excess(b):
            return delta - 2 / (b * N) - math.log(2 * max(N - 1, 1) * N * b * R2) / b

        # from where the logarithm turns positive: below, the bound's ln term is negative and
        # the inequality holds vacuously (outside the theorem's regime)
        b0 = 1 / (2 * max(N - 1, 1) * N * R2)
        grid = b0 * np.logspace(0, 10, 500)
        ok = [b for b in grid if excess(b) >= 0]
        if not ok:
            betas.append(float("inf"))
            continue
        j = int(np.searchsorted(grid, ok[0]))
        betas.append(float(optimize.brentq(excess, grid[j - 1], grid[j])) if j > 0 else float(grid[0]))
    out["single_per_pattern"] = betas
    out["single"] = float(np.median(betas))
    return out


# ----------------------------------------------------------------------------------------------
# measurements
# ----------------------------------------------------------------------------------------------

def network_count(point: TheoryPoint) -> int:
    """Networks a point measures: ``networks``, or more until the probes reach ``min_probes``."""
    per = point.n_memories if point.probes is None else min(point.probes, point.n_memories)
    return max(point.networks, -(-point.min_probes // per))


def _rng(point: TheoryPoint, network: int):
    tag = [point.seed, point.dim, point.n_memories, network, KINDS.index(point.experiment),
           point.degree, point.flips]
    return np.random.default_rng(np.random.SeedSequence(tag))


def _patterns(rng, N, D):
    return rng.integers(0, 2, size=(N, D)).astype(np.float64) * 2 - 1


def _probe_rows(rng, N, probes):
    return np.arange(N) if probes is None or probes >= N else rng.choice(N, probes, replace=False)


def _networks(point: TheoryPoint):
    """(rng, random bipolar patterns M (N, D), probed rows idx) of each network of a point."""
    for t in range(network_count(point)):
        rng = _rng(point, t)
        M = _patterns(rng, point.n_memories, point.dim)
        yield rng, M, _probe_rows(rng, point.n_memories, point.probes)


def async_update(X, T, *, binary: bool, rng, max_sweeps: int = 100):
    """Hopfield's (1982) asynchronous rule on a batch of states X (B, D) with couplings T (D, D):
    in random-order sweeps, x_i <- on if (X T)_i > 0, off if < 0, unchanged at 0 (on/off = 1/0
    in {0, 1}, 1/-1 bipolar), until a sweep changes nothing. Returns (states, converged (B,))."""
    X = np.array(X, dtype=np.float64)
    off = 0.0 if binary else -1.0
    B, D = X.shape
    active = np.ones(B, dtype=bool)
    for _ in range(max_sweeps):
        changed = np.zeros(B, dtype=bool)
        for i in rng.permutation(D):
            h = X @ T[:, i]
            new = np.where(h > 0, 1.0, np.where(h < 0, off, X[:, i]))
            changed |= new != X[:, i]
            X[:, i] = new
        active = changed
        if not active.any():
            break
    return X, ~active


def _classical(point):
    from uhn.models.memory import classical_hopfield
    D, N = point.dim, point.n_memories
    stable = retrieved = probes = 0
    overlaps, converged = [], 0
    for rng, M, idx in _networks(point):
        net = classical_hopfield(M)
        X = M[idx]
        h = X @ net.W
        stable += int(np.sum(np.all(np.where(h >= 0, 1.0, -1.0) == X, axis=1)))
        res = net.update(X, max_sweeps=point.max_sweeps, mode=point.mode,
                         seed=int(rng.integers(2 ** 31)))
        m = np.sum(res.states * X, axis=1) / D
        overlaps.extend(m.tolist())
        retrieved += int(np.sum(m >= RETRIEVED_OVERLAP))
        converged += int(np.sum(res.converged))
        probes += len(idx)
    return {"n_probes": probes, "n_stable": stable, "n_retrieved": retrieved,
            "n_converged": converged, "mean_overlap": float(np.mean(overlaps))}


def _hopfield1982(point):
    D, n = point.dim, point.n_memories
    hist = np.zeros(D + 1, dtype=int)
    first = 0
    for t in range(network_count(point)):
        rng = _rng(point, t)
        V = rng.integers(0, 2, size=(n, D)).astype(np.float64)
        S = 2 * V - 1
        T = S.T @ S
        np.fill_diagonal(T, 0.0)
        X0 = V if point.mode == "binary" else S
        # errors of the first update of every bit (synchronously, from the stored state)
        h = X0 @ T
        off = 0.0 if point.mode == "binary" else -1.0
        first += int(np.sum(np.where(h > 0, 1.0, np.where(h < 0, off, X0)) != X0))
        X, _ = async_update(X0, T, binary=point.mode == "binary", rng=rng,
                            max_sweeps=point.max_sweeps)
        errors = np.sum(X != X0, axis=1).astype(int)
        hist += np.bincount(errors, minlength=D + 1)
    return {"n_probes": int(hist.sum()), "error_histogram": hist.tolist(),
            "first_step_errors": first, "first_step_bits": int(hist.sum()) * D,
            "n_exact": int(hist[0])}


def _dam(point):
    ok = probes = 0
    for _, M, idx in _networks(point):
        Z = krotov_hopfield_step(M, M[idx], point.degree)
        ok += int(np.sum(is_correct(Z, M[idx], bipolar=True)))
        probes += len(idx)
    return {"n_probes": probes, "n_correct": ok}


def _memory_softmax(M, point, output="sign"):
    from uhn.models.memory import Memory
    from uhn.models.separation import get_separation
    sep = get_separation("softmax", beta=point.beta) if point.separation == "softmax" else "max"
    return Memory(M, similarity="dot", separation=sep, output=output)


def _softmax_capacity(point):
    ok = probes = 0
    for rng, M, idx in _networks(point):
        Q = flip_bits(M[idx], point.flips, rng)
        Z = _memory_softmax(M, point).retrieve(Q)
        ok += int(np.sum(is_correct(Z, M[idx], bipolar=True)))
        probes += len(idx)
    return {"n_probes": probes, "n_correct": ok}


#: fixed-point classes of the softmax network, by the effective number 1/sum w^2 of its weights
FIXED_POINT_KINDS = ("single", "metastable", "average")


def classify_weights(W) -> np.ndarray:
    """Per row of weights W (B, N): ``single`` where 1/sum w^2 < 1.5, ``average`` where it
    exceeds N/2, else ``metastable``."""
    W = np.asarray(W, dtype=np.float64)
    neff = 1 / np.sum(W * W, axis=1)
    N = W.shape[1]
    return np.where(neff < 1.5, "single", np.where(neff > N / 2, "average", "metastable"))


def _softmax_fixed_points(point):
    counts = {f"{how}_{k}": 0 for how in ("single_shot", "iterate") for k in FIXED_POINT_KINDS}
    probes = conv = 0
    for rng, M, idx in _networks(point):
        Q = flip_bits(M[idx], point.flips, rng)
        mem = _memory_softmax(M, point, output=None)
        one = mem.retrieve(Q)
        res = mem.iterate(Q, max_steps=point.max_sweeps, tol=1e-10)
        conv += int(np.sum(res.converged))
        for how, Z in (("single_shot", one), ("iterate", res.states)):
            kinds = classify_weights(mem.weights(Z))
            for k in FIXED_POINT_KINDS:
                counts[f"{how}_{k}"] += int(np.sum(kinds == k))
        probes += len(idx)
    return {"n_probes": probes, "n_converged": conv, **counts}


_EVALUATE = {"classical": _classical, "hopfield1982": _hopfield1982, "dam": _dam,
             "softmax_capacity": _softmax_capacity, "softmax_fixed_points": _softmax_fixed_points}


def evaluate(point: TheoryPoint) -> dict:
    """One measurement (its fields: see the module docstring) and the seconds it took."""
    t0 = time.perf_counter()
    out = _EVALUATE[point.experiment](point)
    out["seconds"] = time.perf_counter() - t0
    return out


def run(points: Iterable[TheoryPoint], path=None, *, engine="local", resume: bool = True,
        progress=None) -> list[dict]:
    """Evaluate points into the results store ``path`` (uhn.models.experiments.sweep.run)."""
    from uhn.models.experiments import sweep
    return sweep.run(list(points), evaluate, path, engine=engine, resume=resume,
                     progress=progress)


def _point(row) -> TheoryPoint:
    return TheoryPoint(**{f.name: row[f.name] for f in fields(TheoryPoint)})


# ----------------------------------------------------------------------------------------------
# named grids: small defaults (tests), paper-scale with scale="paper"
# ----------------------------------------------------------------------------------------------

def classical_points(dims=(100, 200), loads=None, modes=("sync", "async"), networks=4,
                     min_probes=200, seed=0, scale: str = "small") -> list[TheoryPoint]:
    """alpha = N/D sweeps of the classical network per D and update mode (probes capped at 100
    patterns per network). ``scale="paper"``: D = 100, 200, 500, 1000, >= 1000 probes."""
    if scale == "paper":
        dims, networks, min_probes = (100, 200, 500, 1000), 10, 1000
    loads = loads or (0.04, 0.08, 0.10, 0.12, 0.14, 0.16, 0.18, 0.20, 0.24)
    return [TheoryPoint("classical", dim=D, n_memories=max(1, round(a * D)), mode=m,
                        networks=networks, probes=100, min_probes=min_probes, seed=seed)
            for m in modes for D in dims for a in loads]


def hopfield1982_points(ns=(5, 10, 15), networks=100, seed=0) -> list[TheoryPoint]:
    """Hopfield's (1982) N = 100 neurons, n = 5, 10, 15 memories, {0, 1} and bipolar."""
    return [TheoryPoint("hopfield1982", dim=100, n_memories=n, mode=c, networks=networks,
                        seed=seed) for c in ("binary", "bipolar") for n in ns]


#: D grids per DAM energy degree n (capacity ~ D^(n - 1) must stay measurable)
DAM_DIMS = {2: (50, 100, 200, 400), 3: (20, 30, 45, 70), 4: (12, 16, 22, 30)}
#: the wider D grids of ``scale="paper"``
DAM_DIMS_PAPER = {2: (50, 100, 200, 400, 800), 3: (20, 30, 45, 70, 100), 4: (12, 16, 22, 30, 40)}


def dam_points(degrees=(2, 3, 4), dims=None, n_steps: int = 10, networks=2, probes=200,
               min_probes=1000, seed=0, scale: str = "small") -> list[TheoryPoint]:
    """DAM one-step stability vs N per (n, D): N on a geometric grid from 0.3x to 3x the theory's
    capacity (:func:`dam_stability_theory`). ``scale="paper"``: wider D, >= 10,000 probes."""
    grids = DAM_DIMS
    if scale == "paper":
        networks, probes, grids, min_probes = 4, 500, DAM_DIMS_PAPER, 10000
    pts = []
    for n in degrees:
        for D in (dims or grids[n]):
            cap = capacity_from_law(lambda N: dam_stability_theory(D, N, n))
            Ns = sorted({max(2, int(round(v))) for v in np.geomspace(0.3 * cap, 3 * cap, n_steps)})
            pts += [TheoryPoint("dam", dim=D, n_memories=N, degree=n, networks=networks,
                                probes=probes, min_probes=min_probes, seed=seed) for N in Ns]
    return pts


def softmax_capacity_points(dims=(32, 40, 48, 56), rho: float = 0.25, separations=("max", "softmax"),
                            beta: float = 1.0, n_steps: int = 10, networks=2, probes=500,
                            min_probes=1000, seed=0, scale: str = "small") -> list[TheoryPoint]:
    """Softmax / max capacity vs D at flips = round(rho D): N from 0.3x to 3x the exact
    nearest-pattern capacity. ``scale="paper"``: D up to 80, 20 networks."""
    if scale == "paper":
        dims, min_probes = (32, 40, 48, 56, 64, 72, 80), 10000
    pts = []
    for D in dims:
        f = int(round(rho * D))
        cap = nearest_capacity_theory(D, f)
        Ns = sorted({max(2, int(round(v))) for v in np.geomspace(0.3 * cap, 3 * cap, n_steps)})
        pts += [TheoryPoint("softmax_capacity", dim=D, n_memories=N, separation=s, beta=beta,
                            flips=f, networks=networks, probes=probes, min_probes=min_probes,
                            seed=seed)
                for s in separations for N in Ns]
    return pts


def softmax_fixed_point_points(dim=64, n_memories=16, betas=None, flips=0, networks=4,
                               seed=0) -> list[TheoryPoint]:
    """The fixed point reached against beta (log grid 1e-3 .. 10 per unit of D)."""
    betas = betas or tuple(float(b) for b in np.geomspace(1e-3, 1.0, 13))
    return [TheoryPoint("softmax_fixed_points", dim=dim, n_memories=n_memories, beta=b,
                        flips=flips, networks=networks, max_sweeps=200, seed=seed) for b in betas]


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
    """Per (flips, beta): the fraction of probes ending in each fixed-point kind, single shot and
    iterated, with Wilson intervals."""
    out = []
    for r in sorted((r for r in rows if r.get("experiment") == "softmax_fixed_points"
                     and not r.get("error")), key=lambda r: (r["flips"], r["beta"])):
        e = {"beta": r["beta"], "n": r["n_probes"], "dim": r["dim"], "n_memories": r["n_memories"],
             "flips": r["flips"]}
        for how in ("single_shot", "iterate"):
            for kind in FIXED_POINT_KINDS:
                k = r[f"{how}_{kind}"]
                e[f"{how}_{kind}"] = k / r["n_probes"]
                e[f"{how}_{kind}_ci"] = wilson_interval(k, r["n_probes"])
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
        lines.append("softmax fixed points vs beta: fraction single / metastable / average")
        for e in fp:
            lines.append(f"  flips={e['flips']} beta={e['beta']:.4g}  single shot {e['single_shot_single']:.2f}/"
                         f"{e['single_shot_metastable']:.2f}/{e['single_shot_average']:.2f}  "
                         f"iterate {e['iterate_single']:.2f}/{e['iterate_metastable']:.2f}/"
                         f"{e['iterate_average']:.2f}")
    return "\n".join(lines)


def softmax_theory(row) -> float:
    """The exact nearest-pattern capacity at a row's (dim, flips)."""
    return nearest_capacity_theory(row["dim"], row["flips"])


# ----------------------------------------------------------------------------------------------
# the whole study and its figures
# ----------------------------------------------------------------------------------------------

#: the parts of the study, in the order :func:`study_points` lists them
PARTS = ("classical", "hopfield1982", "dam", "softmax_capacity", "softmax_fixed_points")


def study_points(scale: str = "small", parts: Sequence[str] = PARTS, seed: int = 0) -> list:
    """Every point of the study: ``small`` (a minute on one core) or ``paper`` (the issue's
    sizes: classical D = 100 .. 1000, 100 networks for Hopfield 1982, >= 10,000 probes per DAM
    and softmax point)."""
    if scale not in ("small", "paper"):
        raise ValueError(f"scale must be 'small' or 'paper', got {scale!r}")
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown parts {unknown}; choose from {PARTS}")
    make = {"classical": lambda: classical_points(scale=scale, seed=seed),
            "hopfield1982": lambda: hopfield1982_points(networks=100 if scale == "paper" else 20,
                                                        seed=seed),
            "dam": lambda: dam_points(scale=scale, seed=seed),
            "softmax_capacity": lambda: softmax_capacity_points(scale=scale, seed=seed),
            "softmax_fixed_points": lambda: softmax_fixed_point_points(
                networks=10 if scale == "paper" else 2, seed=seed)}
    return [p for part in parts for p in make[part]()]


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
        ax.legend(fontsize=7)
    axes[0].set_title("dense associative memory (theory dashed)")
    axes[1].set_title("softmax / max (exact max law dashed)")
    fig.tight_layout()
    return _save(fig, path) if path is not None else fig


def plot_fixed_points(analysis: list[dict], thresholds: Optional[dict] = None, path=None):
    """Fraction of probes ending at a single pattern, a metastable mixture or the global average
    against beta, single shot (dashed) and iterated (solid), for entries of one ``flips``; theory
    betas dotted (1/lambda_max(C)) and dash-dotted (Ramsauer's condition, median)."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4))
    b = np.array([e["beta"] for e in analysis])
    for kind, color in zip(FIXED_POINT_KINDS, ("C0", "C1", "C2")):
        ax.plot(b, [e[f"iterate_{kind}"] for e in analysis], "-o", ms=3, color=color,
                label=f"{kind} (iterate)")
        ax.plot(b, [e[f"single_shot_{kind}"] for e in analysis], "--", color=color,
                label=f"{kind} (single shot)")
    if thresholds:
        ax.axvline(thresholds["average"], color="k", ls=":", lw=1)
        ax.axvline(thresholds["single"], color="k", ls="-.", lw=1)
    ax.set(xscale="log", xlabel="beta", ylabel="fraction of probes")
    ax.legend(fontsize=7)
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
        fp = [e for e in fp if e["flips"] == fp[0]["flips"]]   # one corruption per figure
        e = fp[0]
        rng = _rng(TheoryPoint("softmax_fixed_points", dim=e["dim"], n_memories=e["n_memories"],
                               beta=e["beta"], seed=seed), 0)
        th = softmax_thresholds(_patterns(rng, e["n_memories"], e["dim"]))
        paths.append(plot_fixed_points(fp, th, out / "theory_fixed_points.png"))
    return paths
