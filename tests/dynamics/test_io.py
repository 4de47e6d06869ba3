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


# ---------------------------------------------------------------------------------------------
# files you can trust: checksums, schema checks, full disks, killed saves
# ---------------------------------------------------------------------------------------------

def _small(rng):
    net = _net(rng, N=4, D=6)
    return integrate(net, net.M[:3] + 0.1, t_end=2.0, n_samples=9)


def _write_ds(ds, path):
    """Write a (tampered) Dataset as the file a foreign writer would leave."""
    enc = {name: {"_FillValue": None} for name in list(ds.data_vars)
           + (["time"] if "time" in ds.variables else [])}
    ds.to_netcdf(path, engine="h5netcdf", encoding=enc)
    return path


def test_flipped_bytes_of_an_array_are_found_by_its_checksum(tmp_path, rng):
    tr = _small(rng)
    path = save_trajectory(tr, tmp_path / "run.nc")
    raw = bytearray(path.read_bytes())
    at = raw.find(tr.v.tobytes())  # no compression: the array's bytes lie in the file as they are
    assert at > 0
    raw[at + 40:at + 56] = bytes(b ^ 0xFF for b in raw[at + 40:at + 56])  # 16 flipped bytes
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"run\.nc.*variable 'v' does not match its checksum"):
        load_trajectory(path)


def test_checksum_is_exactly_bitwise_equality_with_dtype_and_shape():
    from uhn.dynamics.io import checksum
    a = np.arange(6.0)
    assert checksum(a) == checksum(a.copy()) == checksum(a.astype(">f8"))  # same values
    assert checksum(a) != checksum(a.reshape(2, 3))                          # shape
    b = a.copy()
    b[5] = np.nextafter(b[5], np.inf)                                         # one ulp
    assert checksum(a) != checksum(b)
    assert checksum(np.zeros(3, bool)) != checksum(np.zeros(3, np.int8))     # dtype


def _without_attr(ds, name):
    return ds.drop_attrs(deep=False).assign_attrs({k: v for k, v in ds.attrs.items() if k != name})


@pytest.mark.parametrize("tamper,match", [
    (lambda ds: ds.drop_vars("time"), r"variable 'time' .* is missing"),
    (lambda ds: ds.assign(converged=ds["converged"].astype(float)),
     r"variable 'converged' has dtype float64, expected bool"),
    (lambda ds: ds.assign(E=(("sample", "query"), np.zeros((4, 3)))),
     r"variable 'E' has dimensions \('sample', 'query'\), expected \('time', 'query'\)"),
    (lambda ds: ds.assign(v=(("time", "query"), ds["v"].values[:, :, 0])),
     r"variable 'v' has dimensions \('time', 'query'\), expected \('time', 'query', 'feature'\)"),
    (lambda ds: ds.assign(h=ds["h"].astype(int)), r"variable 'h' has dtype int64, expected floating"),
    (lambda ds: _without_attr(ds, "method"), r"global attributes \['method'\] are missing"),
    (lambda ds: _without_attr(ds, "uhn_sha256_E"),
     r"attribute 'uhn_sha256_E' \(the checksum of 'E'\) is missing"),
])
def test_a_malformed_file_is_an_error_naming_file_variable_and_what_is_expected(tmp_path, rng,
                                                                                 tamper, match):
    ds = to_xarray(_small(rng))
    path = _write_ds(tamper(ds), tmp_path / "bad.nc")
    with pytest.raises(ValueError, match=r"bad\.nc: not a valid uhn trajectory: .*" + match):
        load_trajectory(path)


def test_a_version_1_file_without_checksums_loads_with_a_warning_naming_it(tmp_path, rng):
    tr = _small(rng)
    ds = to_xarray(tr)
    attrs = {k: v for k, v in ds.attrs.items() if not k.startswith("uhn_sha256_")}
    attrs["uhn_format_version"] = 1
    path = _write_ds(ds.drop_attrs(deep=False).assign_attrs(attrs), tmp_path / "old.nc")
    with pytest.warns(UserWarning, match=r"old\.nc: uhn trajectory format version 1 has no checksums"):
        back = load_trajectory(path)
    assert_identical(tr, back)
    ds2 = ds.drop_attrs(deep=False).assign_attrs({**attrs, "uhn_format_version": 3})
    with pytest.raises(ValueError, match=r"version 3 is not supported"):
        load_trajectory(_write_ds(ds2, tmp_path / "new.nc"))


def test_a_full_disk_raises_oserror_and_keeps_the_old_file_and_no_temporary(tmp_path, rng,
                                                                              monkeypatch):
    import errno
    from uhn.models import atomic
    old, new = _small(rng), _small(np.random.default_rng(7))
    path = save_trajectory(old, tmp_path / "run.nc")
    real_open = open

    class FillingDisk:
        """A file that takes 1000 bytes and then reports ENOSPC, as a full disk does."""

        def __init__(self, *a, **k):
            self.fh = real_open(*a, **k)

        def write(self, data):
            if self.fh.tell() >= 1000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.fh.write(bytes(data[:1000]))

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    monkeypatch.setattr(atomic, "open", FillingDisk, raising=False)
    with pytest.raises(OSError, match=r"cannot write .*run\.nc.*No space left") as info:
        new.save(path)
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["run.nc"]
    assert_identical(old, load_trajectory(path))


def test_stale_temporary_files_of_dead_savers_are_removed_by_the_next_save(tmp_path, rng):
    import os
    import subprocess
    import sys
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_tmp = tmp_path / f".run.nc.{int(dead.stdout)}.x1y2.tmp"
    live_tmp = tmp_path / f".run.nc.{os.getppid()}.z3.tmp"  # a live saver's: kept
    for f in (dead_tmp, live_tmp):
        f.write_bytes(b"\0" * 4096)
    save_trajectory(_small(rng), tmp_path / "run.nc")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["run.nc", live_tmp.name])


def test_a_save_killed_midway_leaves_a_temporary_that_the_next_save_removes(tmp_path, rng):
    import os
    import signal
    import subprocess
    import sys
    import time
    script = (
        "import os, time, numpy as np\n"
        "from uhn.models import atomic\n"
        "from uhn.dynamics.trajectory import Trajectory\n"
        "atomic.os.fsync = lambda fd: (print('writing', flush=True), time.sleep(60))\n"
        "T, B, D, N = 50, 8, 64, 20\n"
        "z = np.zeros\n"
        "tr = Trajectory(np.arange(T, dtype=float), z((T, B, D)), z((T, B, N)), z((T, B)), z((T, B)),"
        " z((B, D)), z(B, bool), 'RK45', 'scipy')\n"
        f"tr.save({str(tmp_path / 'run.nc')!r})\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"  # the bytes are written, not yet moved
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    left = [p for p in tmp_path.iterdir() if p.name.startswith(f".run.nc.{proc.pid}.")]
    assert len(left) == 1 and left[0].stat().st_size > 50 * 8 * 64 * 8  # the half-saved file
    time.sleep(0.05)
    save_trajectory(_small(rng), tmp_path / "run.nc")
    assert [p.name for p in tmp_path.iterdir()] == ["run.nc"]


def test_the_hdf5_library_never_writes_to_the_disk_during_a_save(tmp_path, rng, monkeypatch):
    """What crashed on a full disk was h5netcdf closing a file it had written in place: a save
    builds the file in memory, so h5netcdf is only ever handed an in-memory buffer."""
    import os

    import h5netcdf
    opened = []
    real_init = h5netcdf.File.__init__

    def spy(self, path, *args, **kwargs):
        opened.append(path)
        return real_init(self, path, *args, **kwargs)

    monkeypatch.setattr(h5netcdf.File, "__init__", spy)
    save_trajectory(_small(rng), tmp_path / "run.nc")
    assert opened and not any(isinstance(p, (str, bytes, os.PathLike)) for p in opened), opened


# ---------------------------------------------------------------- networks of layers: a variable per layer
def _layered(rng):
    from uhn.dynamics.hierarchical import demo
    X = rng.random((6, 12))
    net = demo.pca_network(X, 4, beta=2.0)          # pixels (12) <-> latent (4) <-> memories (6)
    return net, integrate(net, X[:2] * 0.5, 10.0, method="RK45-batched", n_samples=7)


def test_a_layered_trajectory_is_stored_a_variable_per_layer_and_read_back_packed(tmp_path, rng):
    net, tr = _layered(rng)
    path = save_trajectory(tr, tmp_path / "layers.nc")
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        assert "v" not in ds and "h" not in ds
        assert ds["x_pixels"].dims == ("time", "query", "unit_pixels")
        assert (ds.sizes["unit_pixels"], ds.sizes["unit_latent"], ds.sizes["unit_memories"]) == (12, 4, 6)
        np.testing.assert_array_equal(ds["x_pixels"].values, tr.v)
        np.testing.assert_array_equal(ds["x_latent"].values, tr.h[..., :4])
        np.testing.assert_array_equal(ds["x_memories"].values, tr.h[..., 4:])
        assert ds.attrs["uhn_layers"] == '[["pixels", 12], ["latent", 4], ["memories", 6]]'
    assert_identical(tr, load_trajectory(path))


@pytest.mark.parametrize("tamper,match", [
    (lambda ds: ds.drop_vars("x_latent"), r"variables \['x_latent'\] are missing"),
    (lambda ds: ds.assign(x_memories=ds["x_memories"] + 1e-3),
     r"variable 'x_memories' does not match its checksum"),
    (lambda ds: ds.assign_attrs(uhn_layers='[["pixels", 12], ["latent", 5], ["memories", 6]]'),
     r"variable 'x_latent' has 4 units, the layout 'uhn_layers' says 5"),
    (lambda ds: ds.assign_attrs(uhn_layers='{"pixels": 12}'), r"'uhn_layers' is not a JSON list"),
])
def test_a_tampered_layered_file_names_the_layer(tmp_path, rng, tamper, match):
    _, tr = _layered(rng)
    path = _write_ds(tamper(to_xarray(tr)), tmp_path / "bad.nc")
    with pytest.raises(ValueError, match=r"bad\.nc: not a valid uhn trajectory: .*" + match):
        load_trajectory(path)


def test_layer_sizes_that_do_not_split_the_state_are_refused_on_save(tmp_path, rng):
    import dataclasses
    _, tr = _layered(rng)
    layers = dict(tr.params["layers"])
    layers["latent"] = {**layers["latent"], "size": 3}
    bad = dataclasses.replace(tr, params={**tr.params, "layers": layers})
    with pytest.raises(ValueError, match=r"sizes \[12, 3, 6\] do not split the trajectory's v"):
        save_trajectory(bad, tmp_path / "x.nc")
    assert not list(tmp_path.iterdir())


def test_a_save_ends_its_view_of_the_in_memory_file(tmp_path, rng, monkeypatch):
    """xarray returns the in-memory file as a memoryview: write releases it once the bytes are
    written, so the buffer's close at garbage collection never meets a live export (python 3.13
    printed 'Exception ignored ... BufferError: Existing exports of data' for it)."""
    import uhn.dynamics.io as io
    seen = []
    real = io.write_bytes

    def spy(path, data):
        seen.append(data)
        return real(path, data)
    monkeypatch.setattr(io, "write_bytes", spy)
    path = save_trajectory(_small(rng), tmp_path / "run.nc")
    assert load_trajectory(path).v.shape[0] == 9
    (data,) = seen
    if isinstance(data, memoryview):
        with pytest.raises(ValueError, match="released"):
            data.tobytes()
