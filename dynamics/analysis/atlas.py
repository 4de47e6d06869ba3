"""The dynamics atlas: where the general energy function holds and where the dynamics retrieve,
across similarity x (L_v, L_h) x beta x tau_h/tau_v x dataset.

One :class:`AtlasPoint` is one network and one batch of B corrupted queries. :func:`evaluate`
integrates them (uhn.dynamics.integrate, "RK45-batched": each query to its own fixed point) under
the network's equations of motion (docs/theory.md section 2) with the memory Lagrangian at inverse
temperature beta, L_h^beta(h) = L_h(beta h) / beta, and records, as one strict-JSON row (every parameter and every measured value):

- the energy verdict of uhn.dynamics.analysis.energy.verify_energy: passed, monotone (largest increase of E
  between samples within the integrator's tolerance), sign (analytic dE/dt <= round-off), the
  finite-difference check (worst |analytic - fd| / allowed) and the trajectory check (worst
  deviation from the re-integrated flow / allowed), diverging, violations;
- convergence: the fraction of queries at a fixed point and the time each took (median, max);
- retrieval, each as the fraction of queries whose output's nearest memory (Euclidean) is the
  query's own memory: the single-shot output z = P^T f(S(M, q)) (the same f, the similarity on
  the query itself), the fixed point's feature readout (v*, or v* - I when the query is clamped as
  the input I = q), the memory-layer readout P^T f(h*); and the fraction of queries whose fixed
  point lands on the same memory as the single shot, with the mean distance |y* - z|;
- the largest real part of the Jacobian's eigenvalues at each converged fixed point
  (uhn.dynamics.analysis.fixed_points.stability; < 0: linearly stable), the worst over the batch.

beta is the inverse temperature of the memory layer for every L_h: log_sum_exp(beta) (softmax
with beta), beta h^2 / 2 for quadratic (f = beta h), and for the rectified
polynomial (beta h)_+^(n+1) / ((n+1) beta) (f = (beta h)_+^n, the dense associative memory's
separation polynomial(n)). :func:`grid` builds the atlas's points and
:func:`run` measures them through uhn.models.experiments.sweep (in-process or on a dask cluster) into the results
store; :func:`plot` draws the heat-map grid.
"""
from __future__ import annotations

import functools
import json
import math
import time
import zlib
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np

from uhn.dynamics import lagrangians as lag

#: revision of the measurement in :func:`evaluate`; part of every key (bump when its meaning changes).
#: 2: rows gain ``nfev_max_query``; max_nfev 10000 (was 20000); the flow check re-integrates
#: FLOW_WINDOWS = 4 sample windows (was 8). 3: a stall whose state grows exponentially
#: (:func:`divergence`) is stored as a FloatingPointError "diverging", not a RuntimeError stall
PROTOCOL = 3

#: sample windows per query that verify_energy's trajectory check re-integrates (the first two and
#: two spread over the rest). Its reference solution (DOP853 at rtol / 1000) costs time linear in
#: the windows and dominated a point's time with 8; docs/sweeps.md has the measurements behind 4.
FLOW_WINDOWS = 4

#: feature Lagrangians by name: g = v, tanh v, sigmoid v
FEATURE_LAGRANGIANS = {"quadratic": lag.quadratic, "log_cosh": lag.log_cosh,
                       "softplus": lag.softplus}
#: memory Lagrangians by name (before the beta scaling, see :func:`memory_lagrangian`)
MEMORY_LAGRANGIANS = ("log_sum_exp", "rectified_polynomial", "quadratic")
INPUT_MODES = ("initial", "clamped")

#: the similarities of the full atlas: name, smoothing eps, how the query enters, which feature
#: Lagrangians (KL needs positive rates: sigmoid; cosine is scale-free, so the query is clamped
#: as an input current or v drifts along the ray; manhattan smoothed so it has a gradient)
FULL_SIMILARITIES = (
    {"similarity": "dot"},
    {"similarity": "cosine", "input_mode": "clamped"},
    {"similarity": "squared_euclidean"},
    {"similarity": "euclidean"},
    {"similarity": "manhattan", "sim_eps": 0.05},
    {"similarity": "kl", "L_v": ("softplus",)},
)
FULL_L_V = ("quadratic", "log_cosh")
FULL_L_H = MEMORY_LAGRANGIANS
FULL_BETAS = (1.0, 5.0, 20.0)
FULL_TAU_RATIOS = (0.1, 1.0)


@dataclass(frozen=True)
class AtlasPoint:
    """Every parameter of one atlas measurement.

    Attributes
    ----------
    dataset : uhn.models.data dataset name; the memories are its first ``n_memories`` images after the
        seeded shuffle, the queries the first ``n_queries`` of them corrupted.
    similarity, sim_eps : uhn.models.similarity name and its smoothing eps (None: not smoothed).
    L_v : feature Lagrangian (:data:`FEATURE_LAGRANGIANS`).
    L_h, degree : memory Lagrangian (:data:`MEMORY_LAGRANGIANS`) and the rectified polynomial's
        n (f = (beta h)_+^n).
    beta : inverse temperature of the memory layer (L_h^beta(h) = L_h(beta h) / beta).
    tau_ratio : tau_h / tau_v (tau_v = 1).
    input_mode : "initial" (v(0) = q, I = 0) or "clamped" (v(0) = q and I = q held on).
    corruption, level : uhn.models.corruption kind and level of the queries.
    t_end, rtol, atol, max_nfev : integration limits (uhn.dynamics.integrate). A query that needs more
        than ``max_nfev`` right-hand-side evaluations before it is at rest or at t_end is a stall
        (a stiff or kinked flow for the explicit integrator): the point is stored as failed with
        the integrator's message. 10000 is above the most any query of the full digits grid
        needs when its point finishes (8270: euclidean with quadratic L_v and L_h at beta 1,
        running to t_end; kl with quadratic L_h 5942-6170): the grid fails at the same 37 points
        as with the earlier 20000, and 5000 would lose 11 measured points (docs/sweeps.md).
    seed : dataset shuffle and corruption seed.
    """

    dataset: str = "digits"
    n_memories: int = 20
    n_queries: int = 8
    similarity: str = "dot"
    sim_eps: Optional[float] = None
    L_v: str = "quadratic"
    L_h: str = "log_sum_exp"
    degree: int = 3
    beta: float = 1.0
    tau_ratio: float = 0.1
    input_mode: str = "initial"
    corruption: str = "gaussian"
    level: float = 0.2
    t_end: float = 100.0
    rtol: float = 1e-6
    atol: float = 1e-9
    max_nfev: int = 10_000
    seed: int = 0

    def __post_init__(self):
        for name in ("n_memories", "n_queries", "degree", "max_nfev", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not float(value).is_integer():
                raise ValueError(f"{name} must be a whole number, got {value!r}")
            object.__setattr__(self, name, int(value))
        for name in ("beta", "tau_ratio", "level", "t_end", "rtol", "atol", "sim_eps"):
            value = getattr(self, name)
            if value is None and name == "sim_eps":
                continue
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
            object.__setattr__(self, name, value)
        for name in ("n_memories", "n_queries", "max_nfev"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.degree < 1:
            raise ValueError(f"degree must be >= 1 (f = (beta h)_+^n), got {self.degree}")
        for name in ("beta", "tau_ratio", "t_end", "rtol"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.atol < 0 or (self.sim_eps is not None and self.sim_eps < 0):
            raise ValueError(f"atol and sim_eps must be >= 0, got {self.atol}, {self.sim_eps}")
        if self.n_queries > self.n_memories:
            raise ValueError(f"n_queries ({self.n_queries}) must be <= n_memories "
                             f"({self.n_memories}): each query is a corrupted memory")
        if self.L_v not in FEATURE_LAGRANGIANS:
            raise ValueError(f"unknown L_v {self.L_v!r}; choose one of {tuple(FEATURE_LAGRANGIANS)}")
        if self.L_h not in MEMORY_LAGRANGIANS:
            raise ValueError(f"unknown L_h {self.L_h!r}; choose one of {MEMORY_LAGRANGIANS}")
        if self.input_mode not in INPUT_MODES:
            raise ValueError(f"input_mode must be one of {INPUT_MODES}, got {self.input_mode!r}")

    def params(self) -> dict:
        """All parameters as a flat dict (JSON-serialisable)."""
        return asdict(self)

    def key(self) -> str:
        """Stable identity: every parameter and the protocol revision, as canonical JSON."""
        return json.dumps({"atlas_protocol": PROTOCOL, **self.params()}, sort_keys=True,
                          separators=(",", ":"))

    @classmethod
    def from_row(cls, row: dict) -> "AtlasPoint":
        """The point a stored row was measured at (ValueError naming the fields it lacks)."""
        from uhn.models.experiments.sweep import point_from_row
        return point_from_row(cls, row)

    @property
    def similarity_label(self) -> str:
        """E.g. ``dot``, ``manhattan(eps=0.05)``, ``cosine [clamped]``."""
        label = self.similarity if self.sim_eps is None else f"{self.similarity}(eps={self.sim_eps:g})"
        return label + (" [clamped]" if self.input_mode == "clamped" else "")

    @property
    def L_h_label(self) -> str:
        return f"rect_poly(n={self.degree})" if self.L_h == "rectified_polynomial" else self.L_h


# ----------------------------------------------------------------------------------------------
# the network of a point
# ----------------------------------------------------------------------------------------------

class Scaled(lag.Lagrangian):
    """L_beta(x) = L(beta x) / beta: the Lagrangian ``base`` at inverse temperature beta.

    dL_beta/dx = L'(beta x); Hessian beta L''(beta x) (convex when L is). log_sum_exp(1) scaled by
    beta is log_sum_exp(beta)."""

    def __init__(self, base: lag.Lagrangian, beta: float):
        if not (np.isfinite(beta) and beta > 0):
            raise ValueError(f"beta must be a positive finite number, got {beta}")
        # the name carries the effective inverse temperature (a base beta_0 scales to beta_0 beta)
        super().__init__(**{**base.params, "beta": base.params.get("beta", 1.0) * beta})
        self.kind = base.kind
        self.base, self.beta = base, float(beta)

    def value(self, x):
        return self.base.value(self.beta * x) / self.beta

    def value_size(self, x):
        return self.base.value_size(self.beta * x) / self.beta

    def grad(self, x):
        return self.base.grad(self.beta * x)

    def hvp(self, x, u):
        return self.beta * self.base.hvp(self.beta * x, u)


def memory_lagrangian(name: str, beta: float, degree: int = 3) -> lag.Lagrangian:
    """L_h^beta(h) = L_h(beta h) / beta for L_h in :data:`MEMORY_LAGRANGIANS` (log_sum_exp comes
    as the library's log_sum_exp(beta), the same function)."""
    if name == "log_sum_exp":
        return lag.log_sum_exp(beta)
    if name == "quadratic":
        return Scaled(lag.quadratic(), beta)
    if name == "rectified_polynomial":
        return Scaled(lag.rectified_polynomial(degree), beta)
    raise ValueError(f"unknown L_h {name!r}; choose one of {MEMORY_LAGRANGIANS}")


def similarity(point: AtlasPoint):
    from uhn.models.similarity import get_similarity
    params = {} if point.sim_eps is None else {"eps": point.sim_eps}
    return get_similarity(point.similarity, **params)


def network(point: AtlasPoint):
    """The uhn.dynamics.network.Network of a point (tau_v = 1, tau_h = tau_ratio)."""
    from uhn.dynamics.network import Network
    M, _ = problem(point)
    return Network(M, similarity(point), L_v=FEATURE_LAGRANGIANS[point.L_v](),
                   L_h=memory_lagrangian(point.L_h, point.beta, point.degree), tau_v=1.0,
                   tau_h=point.tau_ratio)


@functools.lru_cache(maxsize=8)
def _dataset(name: str, seed: int):
    from uhn.models.data import load_dataset
    ds = load_dataset(name, seed=seed)
    ds.X.setflags(write=False)
    return ds


def corruption_seed(point: AtlasPoint) -> np.random.SeedSequence:
    """The seed of a point's corruption draw: SeedSequence([seed, n_queries,
    zlib.crc32(corruption as UTF-8)])."""
    return np.random.SeedSequence([point.seed, point.n_queries,
                                   zlib.crc32(point.corruption.encode())])


def problem(point: AtlasPoint):
    """(memories M (N, D), queries Q (B, D)): M = the first N images of
    ``load_dataset(dataset, seed=seed)`` (its seeded shuffle), Q = the first B of them corrupted,
    ``corrupt(M[:B], corruption, level, image_shape, seed=default_rng(corruption_seed(point)))``."""
    from uhn.models.corruption import corrupt
    ds = _dataset(point.dataset, point.seed)
    if point.n_memories > ds.n:
        raise ValueError(f"n_memories = {point.n_memories} but dataset {point.dataset!r} has {ds.n} images")
    M = np.array(ds.X[:point.n_memories])
    Q = corrupt(M[:point.n_queries], point.corruption, point.level, ds.image_shape,
                seed=np.random.default_rng(corruption_seed(point)))
    return M, Q


def queries(row) -> tuple[np.ndarray, np.ndarray]:
    """(memories M, queries Q) of a stored atlas row (or an AtlasPoint), rebuilt from its fields
    alone (:func:`problem`); ValueError naming the fields a row lacks."""
    point = row if isinstance(row, AtlasPoint) else AtlasPoint.from_row(row)
    return problem(point)


def validate(point: AtlasPoint) -> None:
    """ValueError for a point that can never be measured: unknown dataset / corruption /
    similarity, a similarity without a gradient, a bad level or too few images (built once)."""
    from uhn.models.data import names
    if point.dataset not in names():
        raise ValueError(f"unknown dataset {point.dataset!r}; choose one of {names()}")
    sim = similarity(point)
    if not sim.differentiable or sim.binary_only:
        from uhn.models.similarity import differentiable_names
        raise ValueError(f"similarity {sim.name!r} cannot drive the dynamics (no gradient); "
                         f"choose one of {differentiable_names()}")
    problem(point)


# ----------------------------------------------------------------------------------------------
# one measurement
# ----------------------------------------------------------------------------------------------

def single_shot(net, Q) -> np.ndarray:
    """z = P^T f(S(M, q)) per query (B, O): the single-shot output with the network's own
    separation f = dL_h/dh, the similarity taken on the query itself."""
    with np.errstate(over="raise", invalid="raise"):
        return net.L_h.grad(net.sim.score(net.M, np.atleast_2d(Q))) @ net.P


def _fraction(mask) -> float:
    return float(np.mean(mask)) if np.size(mask) else 0.0


def evaluate(point: AtlasPoint) -> dict:
    """Integrate the point's B queries and measure the energy verdict, convergence, retrieval and
    stability (see the module docstring). Every value is a finite JSON number, a bool, a string
    or None (None: not defined, e.g. no converged query for the Jacobian)."""
    from uhn.dynamics.analysis.energy import verify_energy
    from uhn.dynamics.analysis.fixed_points import nearest, stability
    from uhn.dynamics.integrate import integrate
    t0 = time.perf_counter()
    net = network(point)
    M, Q = problem(point)
    B = Q.shape[0]
    targets = np.arange(B)
    try:
        traj = integrate(net, Q, point.t_end, method="RK45-batched", rtol=point.rtol,
                         atol=point.atol, input_mode=point.input_mode, max_nfev=point.max_nfev)
    except RuntimeError as err:
        # a stall may be a state growing exponentially (the step follows the growth): say so
        why = divergence(net, Q, point) if "right-hand-side evaluations" in str(err) else None
        if why is not None:
            raise FloatingPointError(f"{why}; the integrator stopped: {err}") from None
        raise
    report = verify_energy(net, traj, max_windows=FLOW_WINDOWS, progress=False)  # the sweep's bar shows progress
    v, h = traj.v_final, traj.h_final
    y = v - traj.I if point.input_mode == "clamped" else v
    y_mem = net.readout(h)
    z = single_shot(net, Q)
    near_fp, near_mem, near_shot = nearest(M, y), nearest(M, y_mem), nearest(M, z)
    conv = np.asarray(traj.converged, bool)
    t_final = np.asarray(traj.params["t_final_per_query"], float)
    lam = [stability(net, v[b], h[b], traj.I[b]).max_real for b in np.flatnonzero(conv)]
    sign_bad = any(m.startswith("analytic dE/dt =") for m in report.violations)
    dist = np.linalg.norm(y - z, axis=1)
    return {
        "energy_passed": bool(report.passed),
        "energy_monotone": bool(report.max_increase <= report.increase_tol),
        "energy_sign_ok": not sign_bad,
        "energy_fd_ok": bool(report.fd_ratio <= 1.0),
        "energy_flow_ok": bool(report.flow_ratio <= 1.0),
        "energy_max_increase_relative": float(report.max_increase_relative),
        "energy_max_dEdt": float(report.max_dEdt),
        "energy_fd_ratio": float(report.fd_ratio),
        "energy_flow_ratio": float(report.flow_ratio),
        "energy_diverging": bool(report.diverging),
        "energy_violations": len(report.violations),
        "energy_violation": report.violations[0] if report.violations else None,
        "converged": _fraction(conv),
        "t_converge_median": float(np.median(t_final[conv])) if conv.any() else None,
        "t_converge_max": float(t_final[conv].max()) if conv.any() else None,
        "nfev": int(traj.params["nfev"]),
        "nfev_max_query": int(max(traj.params["nfev_per_query"])),
        "shot_accuracy": _fraction(near_shot == targets),
        "fixed_point_accuracy": _fraction(near_fp == targets),
        "memory_accuracy": _fraction(near_mem == targets),
        "fixed_point_agrees_shot": _fraction(near_fp == near_shot),
        "dist_fixed_point_shot": float(dist.mean()) if np.all(np.isfinite(dist)) else None,
        "jacobian_max_real": float(max(lam)) if lam else None,
        "stable": _fraction(np.array(lam) < 0) if lam else 0.0,
        "seconds": time.perf_counter() - t0,
    }


#: growth of |(v, h)| over a probe of :data:`PROBE_EFOLDS` e-foldings of the fastest unstable
#: mode that makes a stalled integration a diverging one (e^5 ~ 148: a bounded, merely stiff flow
#: does not multiply its state by that)
DIVERGENCE_GROWTH = math.exp(5.0)
#: e-foldings 1 / max Re(lambda) of the initial state's Jacobian that the divergence probe covers
PROBE_EFOLDS = 10.0
#: probes of :func:`divergence` at most (each PROBE_EFOLDS / lambda longer than the last)
PROBE_ROUNDS = 4


def divergence(net, Q, point: AtlasPoint) -> Optional[str]:
    """Why the state of the point's flow grows without bound, or None when it does not.

    An explicit integrator follows an exponentially growing state with a step size ~ 1 /
    growth rate, so a diverging linear flow (dot similarity, quadratic L_v and L_h: constant
    Jacobian) exhausts max_nfev long before it overflows, and looked like a stiff stall. The test:
    lambda = the largest real part of the Jacobian's eigenvalues at the queries' initial states
    (uhn.dynamics.analysis.fixed_points.stability); while lambda > 0, integrate the query of the
    largest lambda :data:`PROBE_EFOLDS` / lambda further (lambda re-taken at the state reached:
    a fast transient mode may give way to a slower growing one) and call it diverging once
    |(v, h)| grew by more than :data:`DIVERGENCE_GROWTH` with lambda still > 0 (a linear flow
    grows ~ e^(lambda t) along its unstable mode); at most :data:`PROBE_ROUNDS` probes, none
    past t_end."""
    from uhn.dynamics.analysis.fixed_points import stability
    from uhn.dynamics.integrate import integrate
    I = Q if point.input_mode == "clamped" else np.zeros_like(Q)
    v0, h0 = net.initial_state(Q)
    lam0 = [stability(net, v0[b], h0[b], I[b]).max_real for b in range(len(Q))]
    b = int(np.argmax(lam0))
    lam, t_probe = lam0[b], 0.0
    for _ in range(PROBE_ROUNDS):
        if not lam > 0 or t_probe >= point.t_end:
            return None
        t_probe = min(point.t_end, t_probe + PROBE_EFOLDS / lam)
        try:
            with np.errstate(over="raise", invalid="raise"):
                probe = integrate(net, Q[b:b + 1], t_probe, method="RK45-batched",
                                  rtol=point.rtol, atol=point.atol, input_mode=point.input_mode,
                                  max_nfev=point.max_nfev, n_samples=2)
        except (RuntimeError, FloatingPointError, OverflowError):
            return None  # not a clean exponential growth: leave the integrator's own verdict
        y0 = np.concatenate([probe.v[0, 0], probe.h[0, 0]])
        y1 = np.concatenate([probe.v[-1, 0], probe.h[-1, 0]])
        growth = np.linalg.norm(y1) / max(np.linalg.norm(y0), np.finfo(float).tiny)
        lam = stability(net, probe.v[-1, 0], probe.h[-1, 0], probe.I[0]).max_real
        if growth > DIVERGENCE_GROWTH and lam > 0:
            return (f"diverging: the state grows without bound (query {b}: |(v, h)| "
                    f"x{growth:.3g} over t in [0, {t_probe:.3g}], max Re(lambda) of the Jacobian "
                    f"= {lam0[b]:+.3g} at its initial state, {lam:+.3g} at t = {t_probe:.3g})")
    return None


#: failures of one point stored as failed rows: bad values, overflow, and an integration that
#: stalled (uhn.dynamics.integrate raises RuntimeError after max_nfev steps of a stiff or kinked flow)
ATLAS_ERRORS = (ValueError, FloatingPointError, OverflowError, RuntimeError)


# ----------------------------------------------------------------------------------------------
# the grid and the sweep
# ----------------------------------------------------------------------------------------------

def grid(similarities: Sequence[dict] = FULL_SIMILARITIES, L_v: Sequence[str] = FULL_L_V,
         L_h: Sequence[str] = FULL_L_H, betas: Sequence[float] = FULL_BETAS,
         tau_ratios: Sequence[float] = FULL_TAU_RATIOS, datasets: Sequence[str] = ("digits",),
         **base) -> list[AtlasPoint]:
    """The atlas's points: every similarity spec x feature Lagrangian x L_h x beta x tau ratio x
    dataset. A similarity spec is a dict of AtlasPoint fields (``similarity``, ``sim_eps``,
    ``input_mode``) and may name its own feature Lagrangians as ``"L_v": (...)`` (KL: softplus).
    ``base``: other AtlasPoint fields (n_queries, corruption, level, ...)."""
    out = []
    for spec in similarities:
        spec = dict(spec)
        lvs = spec.pop("L_v", L_v)
        for ds in datasets:
            for lv in lvs:
                for lh in L_h:
                    for beta in betas:
                        for r in tau_ratios:
                            out.append(AtlasPoint(**{**base, **spec, "dataset": ds, "L_v": lv,
                                                     "L_h": lh, "beta": beta, "tau_ratio": r}))
    return list(dict.fromkeys(out))


def recompute(row: dict, evaluate_fn=None) -> dict:
    """The atlas row measured again from its fields alone: its point (:meth:`AtlasPoint.from_row`),
    validated and evaluated here (default :func:`evaluate`), as the sealed row :func:`run` stores
    (failures as failed rows). ``sweep.comparable`` of the two rows are equal for a row of this
    :data:`PROTOCOL`."""
    from uhn.models.experiments import sweep
    point = AtlasPoint.from_row(row)
    validate(point)
    return sweep.measure_row(point, evaluate_fn or evaluate, ATLAS_ERRORS, _failure)


#: the ``quick`` grid of :func:`grid_options`: two similarities, one L_v, two L_h, two betas, one
#: tau ratio, 4 queries of 10 digits
QUICK = {"similarities": ("dot", "squared_euclidean"), "L_v": ("quadratic",),
         "L_h": ("log_sum_exp", "quadratic"), "betas": (1.0, 20.0), "tau_ratios": (0.1,),
         "n_memories": 10, "n_queries": 4}


def grid_options(quick: bool = False) -> tuple[list, dict]:
    """(similarity specs, :func:`grid` keywords) of the full atlas or of the :data:`QUICK` one."""
    if not quick:
        return list(FULL_SIMILARITIES), {}
    kw = {k: QUICK[k] for k in ("L_v", "L_h", "betas", "tau_ratios", "n_memories", "n_queries")}
    return [s for s in FULL_SIMILARITIES if s["similarity"] in QUICK["similarities"]], kw


def default_points(quick: bool = False, datasets=("digits",)) -> list[AtlasPoint]:
    """The points of ``uhn atlas`` (``--quick``) with no other option: those of
    figures/atlas_digits.png (``uhn figures``)."""
    sims, kw = grid_options(quick)
    return grid(sims, datasets=tuple(datasets), **kw)


def _failure(message: str) -> dict:
    return {"error": message}


def run(points: Sequence[AtlasPoint], path=None, *, engine="local", resume: bool = True,
        progress=None, flush_seconds: float = 1.0, evaluate_fn=None,
        no_worker_timeout: Optional[float] = None) -> list[dict]:
    """Validate every point, then measure them with uhn.models.experiments.sweep.run (same engines, store and
    resume); rows in point order. A point that fails (:data:`ATLAS_ERRORS`) is stored with its
    ``error`` and the sweep goes on. ``no_worker_timeout``: seconds a cluster may have no live
    worker before the run stops with uhn.models.experiments.sweep.ClusterError (None: the
    sweep's default)."""
    from uhn.models.experiments import sweep
    unique = list(dict.fromkeys(points))
    for p in unique:
        if not isinstance(p, AtlasPoint):
            raise TypeError(f"atlas points must be AtlasPoint, got {type(p).__name__}")
        validate(p)
    return sweep.run(unique, evaluate_fn or evaluate, path, engine=engine, resume=resume,
                     progress=progress, flush_seconds=flush_seconds, errors=ATLAS_ERRORS,
                     failure=_failure,
                     no_worker_timeout=no_worker_timeout or sweep.NO_WORKER_TIMEOUT)


# ----------------------------------------------------------------------------------------------
# table and figure
# ----------------------------------------------------------------------------------------------

TABLE_COLUMNS = ("energy_passed", "converged", "shot_accuracy", "fixed_point_accuracy",
                 "memory_accuracy", "fixed_point_agrees_shot", "jacobian_max_real")


def format_table(rows: Sequence[dict]) -> str:
    """One line per row: the point's labels and the measured values (``failed: <error>`` for a
    failed point)."""
    head = (f"{'similarity':<26} {'L_v':<10} {'L_h':<26} {'beta':>5} {'tau':>5}  energy conv  "
            f"shot fixpt   mem agree  max Re(lambda)")
    lines = [head, "-" * len(head)]
    for r in rows:
        p = AtlasPoint.from_row(r)
        lead = (f"{p.similarity_label:<26} {p.L_v:<10} {p.L_h_label:<26} {p.beta:>5g} "
                f"{p.tau_ratio:>5g}  ")
        if r.get("error"):
            lines.append(lead + f"failed: {r['error'][:80]}")
            continue
        lam = r["jacobian_max_real"]
        lines.append(lead + f"{'pass' if r['energy_passed'] else 'FAIL':>6} {r['converged']:>4.2f}  "
                     f"{r['shot_accuracy']:>4.2f}  {r['fixed_point_accuracy']:>4.2f}  "
                     f"{r['memory_accuracy']:>4.2f}  {r['fixed_point_agrees_shot']:>4.2f}  "
                     + ("-" if lam is None else f"{lam:>10.3g}"))
    return "\n".join(lines)


def failure_kind(error: str) -> str:
    """Short reason of a failed row's ``error``: "diverged" (FloatingPointError / OverflowError:
    the state overflowed or grows without bound, :func:`divergence`), "stalled" (more than max_nfev right-hand-side evaluations: a stiff or
    kinked flow), "step underflow" (the step size fell below the spacing of floating-point
    times: a blow-up in finite time, or a flow too stiff for the explicit method), "invalid"
    (ValueError) or "failed" (anything else)."""
    kind = error.split(":", 1)[0]
    if kind == "RuntimeError":
        if "right-hand-side evaluations" in error:
            return "stalled"
        if "step size fell below" in error:
            return "step underflow"
    return {"FloatingPointError": "diverged", "OverflowError": "diverged",
            "ValueError": "invalid"}.get(kind, "failed")


def plot(rows: Sequence[dict], value: str = "fixed_point_accuracy"):
    """The atlas figure: one panel per (similarity, L_v) row and L_h column, each a heat map over
    beta (rows) x tau_h/tau_v (columns) of ``value``; a measured cell is marked with the energy
    verdict (E: passed, x: failed) and the fraction of queries converged, a failed point is a
    hatched grey cell naming its :func:`failure_kind`."""
    import matplotlib.pyplot as plt
    ok = list(rows)
    if not ok:
        raise ValueError("no rows to plot")
    pts = [AtlasPoint.from_row(r) for r in ok]
    row_keys = list(dict.fromkeys((p.similarity_label, p.L_v) for p in pts))
    col_keys = list(dict.fromkeys(p.L_h_label for p in pts))
    betas = sorted({p.beta for p in pts})
    taus = sorted({p.tau_ratio for p in pts})
    n_failed = sum(bool(r.get("error")) for r in ok)
    n_passed = sum(bool(r.get("energy_passed")) for r in ok if not r.get("error"))
    fig, axes = plt.subplots(len(row_keys), len(col_keys), squeeze=False, sharex=True,
                             sharey=True, layout="constrained",
                             figsize=(1.9 * len(col_keys) + 2.2, 0.95 * len(row_keys) + 1.4))
    cmap = plt.get_cmap("viridis")
    image = None
    for i, rk in enumerate(row_keys):
        for j, ck in enumerate(col_keys):
            ax = axes[i, j]
            grid_v = np.full((len(betas), len(taus)), np.nan)
            marks, failed = {}, []
            for p, r in zip(pts, ok):
                if (p.similarity_label, p.L_v) != rk or p.L_h_label != ck:
                    continue
                a, b = betas.index(p.beta), taus.index(p.tau_ratio)
                if r.get("error"):
                    failed.append((a, b))
                    marks[a, b] = failure_kind(r["error"]).replace(" ", "\n")
                    continue
                grid_v[a, b] = r[value]
                marks[a, b] = f"{'E' if r['energy_passed'] else 'x'} {r['converged']:.2f}"
            image = ax.imshow(np.ma.masked_invalid(grid_v), cmap=cmap, vmin=0, vmax=1,
                              aspect="auto", origin="lower")
            ax.set_facecolor("white")
            for a, b in failed:
                ax.add_patch(plt.Rectangle((b - 0.5, a - 0.5), 1, 1, facecolor="0.82",
                                           hatch="////", edgecolor="0.55", linewidth=0))
            for (a, b), text in marks.items():
                dark = (a, b) in failed or grid_v[a, b] > 0.6
                ax.text(b, a, text, ha="center", va="center", fontsize=6.5,
                        color="k" if dark else "w",
                        fontweight="bold" if (a, b) in failed else "normal")
            ax.set_xticks(range(len(taus)), [f"{t:g}" for t in taus], fontsize=6.5)
            ax.set_yticks(range(len(betas)), [f"{b:g}" for b in betas], fontsize=6.5)
            ax.tick_params(length=2, pad=1)
            if i == 0:
                ax.set_title(f"L_h = {ck}", fontsize=8)
            if j == 0:
                sim = rk[0].replace("(", "\n(").replace(" [", "\n[")
                ax.set_ylabel(f"{sim}\nL_v={rk[1]}\nbeta", fontsize=6.5)
            if i == len(row_keys) - 1:
                ax.set_xlabel("tau_h / tau_v", fontsize=7)
    fig.suptitle(f"Dynamics atlas: {value.replace('_', ' ')} (colour) of {len(ok)} points\n"
                 f"cell text: E = energy check passed / x = failed, then fraction of queries "
                 f"converged;\nhatched = point failed (diverged / stalled / step underflow): {n_failed} points; "
                 f"energy check passed at {n_passed} of {len(ok) - n_failed} measured", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.35, aspect=25, pad=0.02,
                 label=value.replace("_", " "))
    return fig
