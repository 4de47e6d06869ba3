"""Two trajectories of the same network compared: :func:`compare_trajectories` (brian2 against
solve_ivp, one method against another, a float32 run against float64).

At the sample times both trajectories hold (matched to 1e-9 of the time span), per query b:

    max |dv| = max_(k, i) |v_a(t_k)_i - v_b(t_k)_i|,      max |dh| likewise for h,
    fixed-point distance = || (v_a(T_a), h_a(T_a)) - (v_b(T_b), h_b(T_b)) ||_2   (final states),
    energy difference = max_k |E_a(t_k) - E_b(t_k)|,

E the stored energies, or recomputed in float64 from the states by ``net.energy`` when a
Network is given (then the comparison does not trust either trajectory's stored E).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TrajectoryComparison:
    """What :func:`compare_trajectories` measured; each array is per query (B,), each float the
    largest over the queries."""

    n_common: int                      # sample times both trajectories hold
    t_common_end: float                # the last of them
    dv: np.ndarray                     # (B,) max_k,i |v_a - v_b|
    dh: np.ndarray                     # (B,) max_k,mu |h_a - h_b|
    fixed_point_distance: np.ndarray   # (B,) |y_a(T_a) - y_b(T_b)|_2 of the final states
    energy_difference: np.ndarray      # (B,) max_k |E_a - E_b|
    energy_recomputed: bool            # E from net.energy (True) or the stored E (False)
    labels: tuple = ("a", "b")

    @property
    def max_dv(self) -> float:
        return float(self.dv.max())

    @property
    def max_dh(self) -> float:
        return float(self.dh.max())

    @property
    def max_fixed_point_distance(self) -> float:
        return float(self.fixed_point_distance.max())

    @property
    def max_energy_difference(self) -> float:
        return float(self.energy_difference.max())

    def summary(self) -> str:
        """Four lines: the state differences at the common samples, the fixed-point distance and
        the energy difference, each the largest over the queries."""
        a, b = self.labels
        src = "recomputed from the states" if self.energy_recomputed else "as stored"
        return (f"{a} vs {b} at {self.n_common} common sample times up to t = "
                f"{self.t_common_end:g}:\n"
                f"  max |v_{a} - v_{b}| = {self.max_dv:.3e}   max |h_{a} - h_{b}| = {self.max_dh:.3e}\n"
                f"  fixed points (final states): |y*_{a} - y*_{b}| = "
                f"{self.max_fixed_point_distance:.3e}\n"
                f"  energy ({src}): max |E_{a} - E_{b}| = {self.max_energy_difference:.3e}")


def common_samples(ta, tb) -> tuple[np.ndarray, np.ndarray]:
    """Indices (ia, ib) of the sample times ta[ia] == tb[ib], matched to 1e-9 of the larger time
    span (brian2 writes t_k as a fraction of t_end, solve_ivp as given)."""
    ta, tb = np.asarray(ta, float), np.asarray(tb, float)
    tol = 1e-9 * max(np.abs(ta).max(), np.abs(tb).max(), 1.0)
    j = np.searchsorted(tb, ta)
    lo, hi = np.clip(j - 1, 0, len(tb) - 1), np.clip(j, 0, len(tb) - 1)
    near = np.where(np.abs(tb[lo] - ta) <= np.abs(tb[hi] - ta), lo, hi)
    hit = np.abs(tb[near] - ta) <= tol
    return np.flatnonzero(hit), near[hit]


def compare_trajectories(a, b, net=None, labels=("a", "b")) -> TrajectoryComparison:
    """Compare trajectories ``a`` and ``b`` of the same network and queries (module docstring).

    Raises ValueError where they cannot be compared: different numbers of queries, features or
    memories, or no sample time in common.
    """
    for name, x, y in (("queries B", a.v.shape[1], b.v.shape[1]), ("features D", a.v.shape[2], b.v.shape[2]),
                       ("memories N", a.h.shape[2], b.h.shape[2])):
        if x != y:
            raise ValueError(f"compare_trajectories: the trajectories differ in their number of "
                             f"{name} ({x} and {y}); they are not runs of the same network and queries")
    if net is not None and (net.D, net.N) != (a.v.shape[2], a.h.shape[2]):
        raise ValueError(f"compare_trajectories: net has D = {net.D}, N = {net.N}, the trajectories "
                         f"D = {a.v.shape[2]}, N = {a.h.shape[2]}")
    ia, ib = common_samples(a.t, b.t)
    if len(ia) == 0:
        raise ValueError(f"compare_trajectories: no sample time in common (a: {len(a.t)} samples "
                         f"in [{a.t[0]:g}, {a.t[-1]:g}], b: {len(b.t)} in [{b.t[0]:g}, {b.t[-1]:g}]); "
                         f"integrate one with t_eval = the other's t")
    va, vb = np.asarray(a.v, float)[ia], np.asarray(b.v, float)[ib]
    ha, hb = np.asarray(a.h, float)[ia], np.asarray(b.h, float)[ib]
    if net is None:
        Ea, Eb = np.asarray(a.E, float)[ia], np.asarray(b.E, float)[ib]
    else:
        Ea, Eb = (np.stack([net.energy(vk, hk, tr.I) for vk, hk in zip(v, h)])
                  for tr, v, h in ((a, va, ha), (b, vb, hb)))
    ya = np.concatenate([np.asarray(a.v[-1], float), np.asarray(a.h[-1], float)], axis=1)
    yb = np.concatenate([np.asarray(b.v[-1], float), np.asarray(b.h[-1], float)], axis=1)
    return TrajectoryComparison(
        n_common=len(ia), t_common_end=float(np.asarray(a.t)[ia[-1]]),
        dv=np.abs(va - vb).max(axis=(0, 2)), dh=np.abs(ha - hb).max(axis=(0, 2)),
        fixed_point_distance=np.linalg.norm(ya - yb, axis=1),
        energy_difference=np.abs(Ea - Eb).max(axis=0), energy_recomputed=net is not None,
        labels=tuple(labels))
