"""Why a query did or did not retrieve its memory: one classification for every front end.

For a query q made from stored memory k, the run ends in a state (v*, h*). The memory layer's
weights there, w = f(h*) / sum_mu |f_mu(h*)| with f = dL_h/dh (the softmax itself for log-sum-exp
memory neurons), say which memory the network settled on. In order:

- ``not converged``: the final state is not a fixed point (the run ended while still moving).
- ``retrieved``: one memory dominates, max_mu w_mu >= :data:`DOMINANT` (0.5), and it is k.
- ``beta too small``: beta * (S_(1) - S_(2)) < :data:`MIN_BETA_GAP` (1) at the query, where
  S = sim(M, g(q)) and S_(1), S_(2) are its two largest entries: the initial separation
  exp(beta S_(1)) / exp(beta S_(2)) < e, so the memory layer cannot single out one memory.
  Only for memory Lagrangians with an inverse temperature beta (log_sum_exp, exponential).
- ``mixture state``: no memory dominates, max_mu w_mu < 0.5: the fixed point is a blend.
- ``spurious attractor``: converged, one memory dominates, but it is not k.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from uhn.dynamics.network import Network

#: a memory "dominates" the memory layer when its share of sum |f| is at least this
DOMINANT = 0.5
#: beta times the gap between the two best similarities at the query below this: beta too small
MIN_BETA_GAP = 1.0

VERDICTS = ("retrieved", "not converged", "beta too small", "mixture state", "spurious attractor")


@dataclass(frozen=True)
class Diagnosis:
    """The verdict on one query and the numbers behind it."""

    verdict: str          #: one of :data:`VERDICTS`
    target: int           #: the memory the query was made from
    winner: int           #: argmax_mu f_mu(h*): the memory the network settled on
    share: float          #: max_mu |f_mu(h*)| / sum_mu |f_mu(h*)|
    beta_gap: Optional[float]   #: beta (S_(1) - S_(2)) at the query; None without a beta
    converged: bool

    @property
    def retrieved(self) -> bool:
        return self.verdict == "retrieved"

    def reason(self) -> str:
        """One line: the verdict and why, with the numbers."""
        gap = "" if self.beta_gap is None else f"; beta x similarity gap at the query = {self.beta_gap:.3g}"
        if self.verdict == "retrieved":
            return f"retrieved memory {self.target} (weight share {self.share:.2f})"
        if self.verdict == "not converged":
            return (f"not converged: the run ended before a fixed point (leading memory {self.winner}, "
                    f"weight share {self.share:.2f}); raise --t-end")
        if self.verdict == "beta too small":
            return (f"beta too small: beta x (S_1 - S_2) = {self.beta_gap:.3g} < {MIN_BETA_GAP:g} at the "
                    f"query, so the memory layer cannot single out memory {self.target} (ended on "
                    f"memory {self.winner}, weight share {self.share:.2f}); raise beta")
        if self.verdict == "mixture state":
            return (f"mixture state: no memory dominates at the fixed point (largest weight share "
                    f"{self.share:.2f} < {DOMINANT:g}, on memory {self.winner}){gap}")
        return (f"spurious attractor: converged onto memory {self.winner} (weight share "
                f"{self.share:.2f}), not memory {self.target} the query was made from{gap}")


def classify(weights, targets, converged, beta_gap=None) -> list[Diagnosis]:
    """The classification of the module docstring from its numbers.

    weights : (B, N) memory-layer activations f(h*) at the final states.
    targets : (B,) memory index each query was made from.
    converged : (B,) whether each final state is a fixed point.
    beta_gap : (B,) beta (S_(1) - S_(2)) at each query, or None (no inverse temperature).
    """
    W = np.abs(np.atleast_2d(np.asarray(weights, dtype=np.float64)))
    B, N = W.shape
    t = np.asarray(targets).reshape(-1)
    c = np.asarray(converged, dtype=bool).reshape(-1)
    if t.shape != (B,) or c.shape != (B,):
        raise ValueError(f"shape mismatch: {B} weight rows but targets {t.shape} and converged {c.shape}")
    if not np.issubdtype(t.dtype, np.integer) or np.any((t < 0) | (t >= N)):
        raise ValueError(f"targets must be memory indices in [0, {N}), got {t.tolist()}")
    if not np.all(np.isfinite(W)):
        raise ValueError("weights f(h*) must be finite")
    g = None if beta_gap is None else np.asarray(beta_gap, dtype=np.float64).reshape(-1)
    if g is not None and g.shape != (B,):
        raise ValueError(f"shape mismatch: beta_gap has shape {g.shape}, expected ({B},)")
    total = W.sum(1)
    winner = W.argmax(1)
    share = np.divide(W.max(1), total, out=np.zeros(B), where=total > 0)
    out = []
    for b in range(B):
        gap = None if g is None else float(g[b])
        if not c[b]:
            verdict = "not converged"
        elif winner[b] == t[b] and share[b] >= DOMINANT:
            verdict = "retrieved"
        elif gap is not None and gap < MIN_BETA_GAP:
            verdict = "beta too small"
        elif share[b] < DOMINANT:
            verdict = "mixture state"
        else:
            verdict = "spurious attractor"
        out.append(Diagnosis(verdict, int(t[b]), int(winner[b]), float(share[b]), gap, bool(c[b])))
    return out


def beta_gap(net: Network, Q) -> Optional[np.ndarray]:
    """(B,) beta (S_(1) - S_(2)) with S = sim(M, g(q)) at each query, or None if L_h has no beta."""
    beta = net.L_h.params.get("beta")
    if beta is None or net.N < 2:
        return None
    Q = np.atleast_2d(np.asarray(Q, dtype=np.float64))
    S = net.similarity(net.L_v.grad(Q))
    top2 = np.sort(S, axis=1)[:, -2:]
    return float(beta) * (top2[:, 1] - top2[:, 0])


def diagnose(net: Network, traj, Q, targets) -> list[Diagnosis]:
    """:func:`classify` a run: weights f(h*) at the Trajectory's final states, its ``converged``
    flags, and beta (S_(1) - S_(2)) at the queries Q (B, D) it started from."""
    return classify(net.L_h.grad(traj.h_final), targets, traj.converged, beta_gap(net, Q))


def summary(diagnoses: list[Diagnosis]) -> str:
    """'k/B retrieved' and one line per query that was not, with its reason."""
    n_ok = sum(d.retrieved for d in diagnoses)
    lines = [f"retrieved {n_ok}/{len(diagnoses)} queries (memory-layer weights f(h*) at the final state)"]
    lines += [f"  query {b}: {d.reason()}" for b, d in enumerate(diagnoses) if not d.retrieved]
    return "\n".join(lines)
