"""compare_trajectories (uhn.dynamics.analysis.compare) on hand-built trajectories with known
differences, and brian2 against solve_ivp through it."""
import numpy as np
import pytest

import uhn
from uhn.dynamics.analysis.compare import TrajectoryComparison, common_samples, compare_trajectories
from uhn.dynamics.network import Network
from uhn.dynamics.trajectory import Trajectory


def _traj(t, v, h, E):
    T, B, D = v.shape
    return Trajectory(t=np.asarray(t, float), v=v, h=h, E=E, dEdt=np.zeros_like(E),
                      I=np.zeros((B, D)), converged=np.zeros(B, bool), method="hand", backend="test")


def _pair():
    """a on t = 0, 1, 2, 3; b on t = 0, 2, 3 (+1e-12, within the match tolerance) with
    v_b - v_a = 0.5 at (t = 2, query 1, feature 0), h_b - h_a = -0.25 at (t = 3, query 0, memory 2),
    E_b - E_a = 0.125 at (t = 0, query 1); query 0's final h also differs by (0, 0, -0.25)."""
    rng = np.random.default_rng(0)
    T, B, D, N = 4, 2, 3, 4
    va, ha, Ea = rng.standard_normal((T, B, D)), rng.standard_normal((T, B, N)), rng.standard_normal((T, B))
    keep = [0, 2, 3]
    vb, hb, Eb = va[keep].copy(), ha[keep].copy(), Ea[keep].copy()
    vb[1, 1, 0] += 0.5
    hb[2, 0, 2] -= 0.25
    Eb[0, 1] += 0.125
    return _traj([0, 1, 2, 3], va, ha, Ea), _traj([0, 2, 3 + 1e-12], vb, hb, Eb)


def test_differences_are_the_hand_computed_ones():
    a, b = _pair()
    c = compare_trajectories(a, b, labels=("x", "y"))
    assert isinstance(c, TrajectoryComparison) and c.n_common == 3 and c.t_common_end == 3.0
    np.testing.assert_array_equal(c.dv, [0.0, 0.5])
    np.testing.assert_array_equal(c.dh, [0.25, 0.0])
    np.testing.assert_array_equal(c.energy_difference, [0.0, 0.125])
    # final states: query 0 differs by 0.25 in one h component, query 1 not at all
    np.testing.assert_array_equal(c.fixed_point_distance, [0.25, 0.0])
    assert (c.max_dv, c.max_dh, c.max_fixed_point_distance, c.max_energy_difference) == (0.5, 0.25, 0.25, 0.125)
    text = c.summary()
    assert "max |v_x - v_y| = 5.000e-01" in text and "max |h_x - h_y| = 2.500e-01" in text
    assert "|y*_x - y*_y| = 2.500e-01" in text and "max |E_x - E_y| = 1.250e-01" in text
    assert "3 common sample times up to t = 3" in text and "as stored" in text
    # symmetric
    d = compare_trajectories(b, a)
    np.testing.assert_array_equal(d.dv, c.dv)
    np.testing.assert_array_equal(d.fixed_point_distance, c.fixed_point_distance)


def test_common_samples_match_to_a_relative_tolerance():
    ia, ib = common_samples([0.0, 0.1, 0.2, 0.30000000000000004], [0.0, 0.2, 0.3, 0.5])
    np.testing.assert_array_equal(ia, [0, 2, 3])
    np.testing.assert_array_equal(ib, [0, 1, 2])
    ia, ib = common_samples([0.0, 1.0], [0.0 + 1e-6, 1.0 + 1e-6])
    assert len(ia) == 0


def test_energy_recomputed_from_the_states_with_a_network():
    """With net, E comes from net.energy of the states, not the stored E: two trajectories with
    the same states and different stored E differ by 0 in energy, and by the stored difference
    without net."""
    rng = np.random.default_rng(1)
    M = rng.standard_normal((4, 3))
    net = Network(M, "dot")
    v, h = rng.standard_normal((2, 1, 3)), rng.standard_normal((2, 1, 4))
    E = np.stack([net.energy(vk, hk) for vk, hk in zip(v, h)])
    a = _traj([0, 1], v, h, E)
    b = _traj([0, 1], v.copy(), h.copy(), E + 7.0)
    assert compare_trajectories(a, b).max_energy_difference == 7.0
    c = compare_trajectories(a, b, net)
    assert c.energy_recomputed and c.max_energy_difference == 0.0 and "recomputed" in c.summary()


@pytest.mark.parametrize("change, match", [
    ("B", "number of queries B"), ("N", "number of memories N"), ("t", "no sample time in common"),
])
def test_incomparable_trajectories_are_refused(change, match):
    a, b = _pair()
    if change == "B":
        b = _traj(b.t, b.v[:, :1], b.h[:, :1], b.E[:, :1])
    elif change == "N":
        b = _traj(b.t, b.v, b.h[:, :, :3], b.E)
    else:
        b = _traj(b.t + 10.0, b.v, b.h, b.E)
    with pytest.raises(ValueError, match=match):
        compare_trajectories(a, b)


def test_net_of_another_shape_is_refused():
    a, b = _pair()
    with pytest.raises(ValueError, match=r"net has D = 5, N = 2"):
        compare_trajectories(a, b, Network(np.ones((2, 5)), "dot"))


def test_exported_from_uhn():
    assert uhn.compare_trajectories is compare_trajectories
