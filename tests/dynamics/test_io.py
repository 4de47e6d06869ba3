"""Trajectory save / load (uhn.dynamics.io): exact netCDF-4 round trips of every backend's result."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

xr = pytest.importorskip("xarray")
pytest.importorskip("h5netcdf")

from uhn.dynamics import lagrangians as L  # noqa: E402
from uhn.dynamics.integrate import integrate  # noqa: E402
from uhn.dynamics.io import to_xarray  # noqa: E402
from uhn.dynamics.trajectory import Trajectory, from_xarray, load_trajectory, save_trajectory  # noqa: E402
from uhn.dynamics.network import Network  # noqa: E402

ARRAYS = ("t", "v", "h", "E", "dEdt", "I", "converged")


def _net(rng, N=5, D=7):
    M = rng.standard_normal((N, D)) / np.sqrt(D)
    return Network(M, "dot", L_h=L.log_sum_exp(4.0), tau_v=1.0, tau_h=0.1)


def assert_identical(a: Trajectory, b: Trajectory):
    """Every array bit-identical with its dtype and shape; every scalar field and param equal."""
    for name in ARRAYS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert x.tobytes() == y.tobytes(), name
    assert (a.method, a.backend, a.message, a.adiabatic) == (b.method, b.backend, b.message, b.adiabatic)
    assert a.params == b.params
    assert [type(v) for v in a.params.values()] == [type(v) for v in b.params.values()]


@pytest.mark.parametrize("method,adiabatic", [("RK45", False), ("RK45-batched", False), ("RK45", True)])
def test_round_trip_of_scipy_and_batched_runs_is_exact(tmp_path, rng, method, adiabatic):
    net = _net(rng)
    tr = integrate(net, net.M[:3] + 0.1 * rng.standard_normal((3, net.D)), t_end=3.0, method=method,
                   adiabatic=adiabatic, n_samples=31)
    path = save_trajectory(tr, tmp_path / "run.nc")
    assert path == tmp_path / "run.nc" and path.is_file()
    assert_identical(tr, load_trajectory(path))
    assert [p.name for p in tmp_path.iterdir()] == ["run.nc"]  # no temporary file left behind


def test_round_trip_of_a_brian2_run_is_exact(tmp_path, rng):
    pytest.importorskip("brian2")
    from uhn.dynamics.backends.brian2_rate import run_brian2
    net = _net(rng)
    tr = run_brian2(net, net.M[:2] + 0.05, t_end=0.5, dt=0.05, target="numpy")
    assert tr.backend == "brian2/numpy"
    assert_identical(tr, load_trajectory(save_trajectory(tr, tmp_path / "b2.nc")))


def test_file_opens_directly_in_xarray_with_named_dimensions_and_attributes(tmp_path, rng):
    net = _net(rng, N=4, D=6)
    tr = integrate(net, net.M[:2], t_end=1.0, n_samples=11)
    save_trajectory(tr, tmp_path / "run.nc")
    with xr.open_dataset(tmp_path / "run.nc") as ds:   # the default engine, as a user would
        assert ds["v"].dims == ("time", "query", "feature")
        assert ds["h"].dims == ("time", "query", "memory")
        assert ds["E"].dims == ds["dEdt"].dims == ("time", "query")
        assert dict(ds.sizes) == {"time": 11, "query": 2, "feature": 6, "memory": 4}
        np.testing.assert_array_equal(ds["time"].values, tr.t)
        assert ds.attrs["param_similarity"] == "dot"
        assert ds.attrs["param_tau_h"] == 0.1
        assert ds.attrs["backend"] == "scipy"


def test_to_xarray_and_from_xarray_are_inverse_in_memory(rng):
    net = _net(rng)
    tr = integrate(net, net.M[:1], t_end=1.0, n_samples=5)
    ds = to_xarray(tr)
    assert ds["converged"].dtype == bool
    assert_identical(tr, from_xarray(ds))


_scalars = (st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.text(max_size=8)
            | st.floats(allow_nan=False))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                       | st.tuples(inner, inner)
                       | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=8)


@given(params=st.dictionaries(st.from_regex(r"[a-z][a-z_0-9]{0,8}", fullmatch=True), _values, max_size=6))
def test_any_params_of_json_types_round_trip_with_their_types(tmp_path_factory, params):
    tr = Trajectory(t=np.array([0.0, 1.0]), v=np.zeros((2, 1, 2)), h=np.zeros((2, 1, 3)),
                    E=np.zeros((2, 1)), dEdt=np.zeros((2, 1)), I=np.zeros((1, 2)),
                    converged=np.array([True]), method="m", backend="b", params=params)
    path = tmp_path_factory.mktemp("p") / "t.nc"
    back = load_trajectory(save_trajectory(tr, path)).params
    assert back == params
    assert repr(back) == repr(params)   # same types all the way down (tuple vs list, int vs float)


@pytest.mark.parametrize("value", ["", "a\x00b", "\ud800", "null", "[1]", "\u00e9"])
def test_strings_netcdf_cannot_hold_as_attributes_are_json_encoded(tmp_path, value):
    tr = Trajectory(t=np.array([0.0]), v=np.zeros((1, 1, 1)), h=np.zeros((1, 1, 1)),
                    E=np.zeros((1, 1)), dEdt=np.zeros((1, 1)), I=np.zeros((1, 1)),
                    converged=np.array([True]), method="m", backend="b", message=value,
                    params={"x": value})
    back = load_trajectory(save_trajectory(tr, tmp_path / "s.nc"))
    assert back.params == {"x": value} and back.message == value


def test_non_finite_float_params_and_array_values_survive(tmp_path):
    v = np.array([[[np.nan, -0.0]], [[np.inf, 5e-324]]])
    tr = Trajectory(t=np.array([0.0, 1.0]), v=v, h=np.zeros((2, 1, 1)), E=np.full((2, 1), np.nan),
                    dEdt=np.zeros((2, 1)), I=np.zeros((1, 2)), converged=np.array([False]),
                    method="m", backend="b", params={"a": float("nan"), "b": float("-inf"),
                                                     "c": [float("nan")], "d": np.float64(2.5)})
    back = load_trajectory(save_trajectory(tr, tmp_path / "t.nc"))
    assert back.v.tobytes() == v.tobytes() and back.E.tobytes() == tr.E.tobytes()
    assert math.isnan(back.params["a"]) and back.params["b"] == -math.inf
    assert math.isnan(back.params["c"][0]) and back.params["d"] == 2.5 and type(back.params["d"]) is float


def test_bad_inputs_are_refused_with_a_clear_error(tmp_path, rng):
    with pytest.raises(TypeError, match="traj must be a uhn.dynamics.trajectory.Trajectory"):
        save_trajectory({"t": [0.0]}, tmp_path / "x.nc")
    net = _net(rng)
    tr = integrate(net, net.M[:1], t_end=1.0, n_samples=3)
    tr.params["bad"] = np.zeros(3)
    with pytest.raises(TypeError, match="params may not hold numpy arrays"):
        save_trajectory(tr, tmp_path / "x.nc")
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="does not exist"):
        load_trajectory(tmp_path / "missing.nc")
    (tmp_path / "junk.nc").write_bytes(b"not a netcdf file")
    with pytest.raises(ValueError, match="cannot read"):
        load_trajectory(tmp_path / "junk.nc")
    xr.Dataset({"x": ("a", np.arange(3.0))}).to_netcdf(tmp_path / "other.nc", engine="h5netcdf")
    with pytest.raises(ValueError, match="not a uhn trajectory"):
        load_trajectory(tmp_path / "other.nc")


def test_the_format_reads_and_writes_plain_fields(tmp_path, rng):
    """uhn.dynamics.io knows the format only: it writes any object with a Trajectory's fields and
    reads them back as the keyword arguments of Trajectory, which Trajectory.load builds on."""
    from types import SimpleNamespace
    from uhn.dynamics import io
    net = _net(rng)
    tr = integrate(net, net.M[:2], t_end=1.0, n_samples=4)
    plain = SimpleNamespace(**{name: getattr(tr, name) for name in io.FIELDS})
    path = io.write(plain, tmp_path / "plain.nc")
    fields = io.read(path)
    assert set(fields) == set(io.FIELDS)
    assert_identical(tr, Trajectory(**fields))
    assert_identical(tr, Trajectory.load(tr.save(tmp_path / "method.nc")))
