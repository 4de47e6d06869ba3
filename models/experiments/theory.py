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
``softmax_fixed_points``  the state reached from a (corrupted) stored pattern, single shot,
    Memory.iterate and (``dynamics=True``) the continuous-time network's rest state, classified by
    its weights w = softmax(beta M z): ``single`` (1/sum w^2 < 1.5), ``average``
    (1/sum w^2 > N/2) or ``metastable`` (Ramsauer et al. 2020), against beta, with the theory
    thresholds :func:`softmax_thresholds`: the average's linear stability 1/lambda_max(C) and
    Ramsauer's sufficient separation condition for single-pattern retrieval. The dynamics
    (uhn.integrate of a Network with dot similarity, L_v = |v|^2/2 and L_h = log_sum_exp(beta),
    read out as z = P^T f(h) at rest) come from a builder :func:`run` takes, because uhn.models
    never imports uhn.dynamics: uhn.dynamics.analysis.basin_retrieval.softmax_fixed_point.

uhn.models.experiments.theory_report analyses the rows: every fraction with its Wilson interval,
every crossing and fitted exponent with a parametric bootstrap of the binomial counts, the report
and the figures.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, fields, replace
from typing import Iterable, Optional, Sequence

import numpy as np
from scipy import optimize, special, stats

from uhn.models.experiments.basins import flip_bits, is_correct
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

    - ``experiment``: one of :data:`KINDS`; ``dim``: D (neurons); ``n_memories``: N (patterns).
    - ``mode``: ``sync`` / ``async`` (classical), ``binary`` / ``bipolar`` (hopfield1982).
    - ``degree``: the DAM energy degree n; ``separation``, ``beta``: ``softmax`` (beta) or ``max``.
    - ``flips``: bits flipped in each query (softmax experiments).
    - ``networks``: independent pattern sets, at least; ``min_probes``: more networks until the
      probes reach this many (small N: a few probes per network); ``probes``: queries per
      network (None: every stored pattern; at most N).
    - ``max_sweeps``: bound on update sweeps / iterations; ``seed``: seeds everything.
    - ``dynamics``: softmax_fixed_points also integrates the continuous-time network (its builder
      is :func:`run`'s ``dynamics``); left out of the key when False, so earlier rows stay valid.
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
    dynamics: bool = False

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
        if not isinstance(self.dynamics, (bool, np.bool_)):
            raise ValueError(f"dynamics must be True or False, got {self.dynamics!r}")
        object.__setattr__(self, "dynamics", bool(self.dynamics))
        if self.dynamics and self.experiment != "softmax_fixed_points":
            raise ValueError(f"dynamics=True is a part of softmax_fixed_points only, not of "
                             f"{self.experiment!r}")

    def params(self) -> dict:
        out = asdict(self)
        if not out["dynamics"]:
            del out["dynamics"]   # the protocol before the dynamics: its stored rows stay valid
        return out

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


def network_patterns(point: TheoryPoint, network: int = 0) -> np.ndarray:
    """The random bipolar patterns (N, D) that network ``network`` of a point stores."""
    return _patterns(_rng(point, network), point.n_memories, point.dim)


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


#: the rules whose end states the fixed-point experiment classifies (``dynamics`` on request)
FIXED_POINT_RULES = ("single_shot", "iterate", "dynamics")
#: the builder :func:`run` / :func:`evaluate` need for points with dynamics=True
DYNAMICS_BUILDER = "uhn.dynamics.analysis.basin_retrieval.softmax_fixed_point"


def _softmax_fixed_points(point, dynamics=None):
    """Counts ``<rule>_<kind>`` of the end states' classes; with the dynamics also
    ``dynamics_converged`` (queries at rest by t_end), ``dynamics_agree`` (same class as
    Memory.iterate) and ``dynamics_iterate_gap``: the largest |z_dynamics - z_iterate| over the
    queries both brought to rest in the same class (the two rest sets are the same,
    z = M^T softmax(beta M z), so this is the two solvers' tolerance)."""
    rules = FIXED_POINT_RULES if point.dynamics else FIXED_POINT_RULES[:2]
    if point.dynamics and dynamics is None:
        raise ValueError(f"a point with dynamics=True needs the dynamics' builder: "
                         f"run(..., dynamics={DYNAMICS_BUILDER})")
    counts = {f"{how}_{k}": 0 for how in rules for k in FIXED_POINT_KINDS}
    probes = conv = 0
    extra = {"dynamics_converged": 0, "dynamics_agree": 0, "dynamics_iterate_gap": 0.0} \
        if point.dynamics else {}
    for rng, M, idx in _networks(point):
        Q = flip_bits(M[idx], point.flips, rng)
        mem = _memory_softmax(M, point, output=None)
        ends = {"single_shot": mem.retrieve(Q)}
        res = mem.iterate(Q, max_steps=point.max_sweeps, tol=1e-10)
        ends["iterate"] = res.states
        conv += int(np.sum(res.converged))
        if point.dynamics:
            Z, at_rest = dynamics(M, point)(Q)
            ends["dynamics"] = np.asarray(Z, dtype=np.float64)
            at_rest = np.asarray(at_rest, dtype=bool)
            extra["dynamics_converged"] += int(np.sum(at_rest))
        kinds = {how: classify_weights(mem.weights(ends[how])) for how in rules}
        for how in rules:
            for k in FIXED_POINT_KINDS:
                counts[f"{how}_{k}"] += int(np.sum(kinds[how] == k))
        if point.dynamics:
            same = kinds["dynamics"] == kinds["iterate"]
            extra["dynamics_agree"] += int(np.sum(same))
            both = same & at_rest & np.asarray(res.converged, dtype=bool)
            if both.any():
                gap = float(np.max(np.abs(ends["dynamics"][both] - res.states[both])))
                extra["dynamics_iterate_gap"] = max(extra["dynamics_iterate_gap"], gap)
        probes += len(idx)
    return {"n_probes": probes, "n_converged": conv, **counts, **extra}


_EVALUATE = {"classical": _classical, "hopfield1982": _hopfield1982, "dam": _dam,
             "softmax_capacity": _softmax_capacity, "softmax_fixed_points": _softmax_fixed_points}


def evaluate(point: TheoryPoint, dynamics=None) -> dict:
    """One measurement (its fields: see the module docstring) and the seconds it took.
    ``dynamics``: builder(M, point) -> (queries (B, D) -> (rest readouts (B, D), at rest (B,)))
    for points with dynamics=True (uhn.dynamics.analysis.basin_retrieval.softmax_fixed_point)."""
    t0 = time.perf_counter()
    if point.experiment == "softmax_fixed_points":
        out = _softmax_fixed_points(point, dynamics)
    else:
        out = _EVALUATE[point.experiment](point)
    out["seconds"] = time.perf_counter() - t0
    return out


def run(points: Iterable[TheoryPoint], path=None, *, engine="local", resume: bool = True,
        progress=None, dynamics=None) -> list[dict]:
    """Evaluate points into the results store ``path`` (uhn.models.experiments.sweep.run).
    ``dynamics``: the builder of :func:`evaluate`, needed when a point has dynamics=True (a
    module-level function, so a dask worker can unpickle it)."""
    import functools
    from uhn.models.experiments import sweep
    points = list(points)
    if dynamics is None and any(p.dynamics for p in points):
        raise ValueError(f"points with dynamics=True need the dynamics' builder: "
                         f"run(..., dynamics={DYNAMICS_BUILDER})")
    fn = evaluate if dynamics is None else functools.partial(evaluate, dynamics=dynamics)
    return sweep.run(points, fn, path, engine=engine, resume=resume, progress=progress)


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
                               seed=0, dynamics: bool = False) -> list[TheoryPoint]:
    """The fixed point reached against beta (log grid 1e-3 .. 1); ``dynamics``: the
    continuous-time network's rest state too (:func:`run` then needs its builder)."""
    betas = betas or tuple(float(b) for b in np.geomspace(1e-3, 1.0, 13))
    return [TheoryPoint("softmax_fixed_points", dim=dim, n_memories=n_memories, beta=b,
                        flips=flips, networks=networks, max_sweeps=200, seed=seed,
                        dynamics=dynamics) for b in betas]


# ----------------------------------------------------------------------------------------------
# the whole study
# ----------------------------------------------------------------------------------------------

#: the parts of the study, in the order :func:`study_points` lists them
PARTS = ("classical", "hopfield1982", "dam", "softmax_capacity", "softmax_fixed_points")


def study_points(scale: str = "small", parts: Sequence[str] = PARTS, seed: int = 0,
                 dynamics: bool = True) -> list:
    """Every point of the study: ``small`` (a minute on one core) or ``paper`` (the issue's
    sizes: classical D = 100 .. 1000, 100 networks for Hopfield 1982, >= 10,000 probes per DAM
    and softmax point). ``dynamics``: the fixed points of the continuous-time network too
    (:func:`run` then needs its builder)."""
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
                networks=10 if scale == "paper" else 2, seed=seed, dynamics=dynamics)}
    return [p for part in parts for p in make[part]()]


def figure_points(quick: bool = False, seed: int = 0, parts: Sequence[str] = PARTS) -> list:
    """The points the figures in figures/ are drawn from (``uhn figures``), the grids
    docs/theory_capacity.md quotes: the paper-scale classical and Hopfield (1982) parts, DAM with
    >= 3,000 probes on 8 N per (n, D) (n = 4 up to D = 60), softmax/max capacity for D = 32 .. 72, and the fixed points
    (single shot, iterated and the dynamics) on 11 beta in [0.03, 0.3] without and with 16
    flipped bits. ``quick``: the ``small`` study with DAM at degree 2 alone (seconds; for tests).
    ``parts``: those parts of it only. :func:`run` needs the dynamics' builder for the fixed
    points."""
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown parts {unknown}; choose from {PARTS}")
    return [p for p in _figure_points(quick, seed) if p.experiment in parts]


def _figure_points(quick: bool, seed: int) -> list:
    if quick:
        return (study_points("small", parts=("classical", "hopfield1982", "softmax_capacity",
                                              "softmax_fixed_points"), seed=seed)
                + dam_points(degrees=(2,), networks=1, probes=100, min_probes=100, n_steps=4,
                             seed=seed))
    betas = tuple(float(b) for b in np.geomspace(0.03, 0.3, 11))
    return (study_points("paper", parts=("classical", "hopfield1982"), seed=seed)
            + dam_points(min_probes=3000, n_steps=8, seed=seed)
            + dam_points(degrees=(4,), dims=(40, 50, 60), min_probes=3000, n_steps=8, seed=seed)
            + softmax_capacity_points(dims=(32, 40, 48, 56, 64, 72), min_probes=3000, seed=seed)
            + softmax_fixed_point_points(betas=betas, networks=10, seed=seed, dynamics=True)
            + softmax_fixed_point_points(betas=betas, networks=10, flips=16, seed=seed,
                                         dynamics=True))
