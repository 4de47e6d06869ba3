"""The netCDF-4 (HDF5) file format of a trajectory, through xarray.

This module knows the format only: it writes the fields of any object that has a
:class:`uhn.dynamics.trajectory.Trajectory`'s (read as attributes) and reads them back as a dict
of that class's keyword arguments; uhn.dynamics.trajectory (``Trajectory.save`` /
``Trajectory.load``, ``save_trajectory`` / ``load_trajectory``) builds on it.

The file is an ordinary netCDF-4 file that ``xarray.open_dataset(path)`` (or netCDF4 / h5py)
opens directly:

=============  ==========================  ==========================================
variable       dimensions                  meaning
=============  ==========================  ==========================================
``time``       (time,)                     sample times t (coordinate; ms for brian2)
``v``          (time, query, feature)      feature states v
``h``          (time, query, memory)       memory states h (h = S(g) when adiabatic)
``E``          (time, query)               energy E (docs/theory.md section 3)
``dEdt``       (time, query)               analytic dE/dt
``I``          (query, feature)            input current each query ran with
``converged``  (query,)                    fixed point reached (bool)
=============  ==========================  ==========================================

Global attributes: ``uhn_format`` = "uhn-trajectory", ``uhn_format_version``, the Trajectory's
``method``, ``backend``, ``message`` and ``adiabatic`` (0 / 1), and every entry of
``Trajectory.params`` as ``param_<name>``. Integers, floats and strings are stored as they are;
booleans, None, lists, tuples and dicts are JSON-encoded strings, and the attribute
``uhn_json_params`` lists which attributes those are (strings netCDF cannot hold, empty or
with a NUL, are JSON-encoded too), so that :func:`read` restores every
value equal to the saved one with its Python type. Arrays round-trip bit for bit with their dtypes
(no fill value, no compression loss).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from uhn.models.atomic import atomic_path

FORMAT = "uhn-trajectory"
FORMAT_VERSION = 1
ENGINE = "h5netcdf"

#: Trajectory array fields and their netCDF dimensions
_DIMS = {"v": ("time", "query", "feature"), "h": ("time", "query", "memory"),
         "E": ("time", "query"), "dEdt": ("time", "query"), "I": ("query", "feature"),
         "converged": ("query",)}
_PARAM = "param_"
#: every field a trajectory is written from (its attributes) and read back into (keyword arguments)
FIELDS = ("t",) + tuple(_DIMS) + ("method", "backend", "message", "adiabatic", "params")


def _xarray():
    try:
        import xarray
    except ImportError as err:  # pragma: no cover - exercised only without the optional extra
        raise ImportError("saving trajectories needs xarray and h5netcdf: "
                          "pip install xarray h5netcdf") from err
    return xarray


def _to_jsonable(value):
    """Python/numpy value -> JSON-encodable value; tuples are tagged so they load as tuples."""
    if isinstance(value, tuple):
        return {"__tuple__": [_to_jsonable(x) for x in value]}
    if isinstance(value, list):
        return [_to_jsonable(x) for x in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"params dict keys must be strings to be saved, got {list(value)!r}")
        return {k: _to_jsonable(x) for k, x in value.items()}
    if isinstance(value, np.ndarray):
        raise TypeError("params may not hold numpy arrays (use .tolist()); got an array of "
                        f"shape {value.shape}")
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot save a params value of type {type(value).__name__}: {value!r}")


def _from_jsonable(value):
    if isinstance(value, dict):
        if set(value) == {"__tuple__"}:
            return tuple(_from_jsonable(x) for x in value["__tuple__"])
        return {k: _from_jsonable(x) for k, x in value.items()}
    if isinstance(value, list):
        return [_from_jsonable(x) for x in value]
    return value


def _native(value) -> bool:
    """True for params stored as plain netCDF attributes (exact round trip of value and type)."""
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, int):
        return -2 ** 63 <= value < 2 ** 63
    if isinstance(value, float):
        return True
    if not isinstance(value, str) or value == "" or "\x00" in value:
        return False    # netCDF strings: no empty attribute, no embedded NUL, valid UTF-8 only
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def to_xarray(traj):
    """A trajectory (any object with the attributes :data:`FIELDS`) as an ``xarray.Dataset``
    (dimensions time / query / feature / memory; every parameter an attribute, see the module
    docstring)."""
    xr = _xarray()
    if not all(hasattr(traj, name) for name in FIELDS):
        raise TypeError(f"traj must be a uhn.dynamics.trajectory.Trajectory (or have its fields "
                        f"{', '.join(FIELDS)}), got {type(traj).__name__}")
    data = {name: (dims, np.asarray(getattr(traj, name))) for name, dims in _DIMS.items()}
    attrs = {"uhn_format": FORMAT, "uhn_format_version": FORMAT_VERSION}
    json_names = []

    def put(name, value):
        if isinstance(value, np.generic):
            value = value.item()
        if _native(value):
            attrs[name] = value
        else:
            attrs[name] = json.dumps(_to_jsonable(value), allow_nan=True)
            json_names.append(name)

    put("method", traj.method)
    put("backend", traj.backend)
    put("message", traj.message)
    attrs["adiabatic"] = int(bool(traj.adiabatic))
    for key, value in traj.params.items():
        if not isinstance(key, str):
            raise TypeError(f"params keys must be strings to be saved, got {key!r}")
        put(_PARAM + key, value)
    attrs["uhn_json_params"] = json.dumps(json_names)
    return xr.Dataset(data, coords={"time": ("time", np.asarray(traj.t))}, attrs=attrs)


def write(traj, path) -> Path:
    """Write ``traj`` (:func:`to_xarray`) to ``path`` as netCDF-4/HDF5, atomically (a temporary
    file in the same folder moved into place); returns the path. Read it back with :func:`read`."""
    path = Path(path)
    ds = to_xarray(traj)
    encoding = {name: {"_FillValue": None} for name in list(ds.data_vars) + ["time"]}
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine=ENGINE, encoding=encoding)
    return path


def _attr(value):
    return value.item() if isinstance(value, np.generic) else value


def read_dataset(ds) -> dict:
    """The fields stored in an ``xarray.Dataset`` made by :func:`to_xarray`, as the keyword
    arguments of a Trajectory (:data:`FIELDS`)."""
    if ds.attrs.get("uhn_format") != FORMAT:
        raise ValueError(f"not a uhn trajectory: attribute uhn_format is "
                         f"{ds.attrs.get('uhn_format')!r}, expected {FORMAT!r}")
    version = _attr(ds.attrs.get("uhn_format_version"))
    if version != FORMAT_VERSION:
        raise ValueError(f"uhn trajectory format version {version!r} is not supported "
                         f"(this reader knows version {FORMAT_VERSION})")
    missing = [name for name in _DIMS if name not in ds.data_vars]
    if missing:
        raise ValueError(f"not a complete uhn trajectory: variables {missing} are missing")
    json_names = set(json.loads(ds.attrs["uhn_json_params"]))

    def get(name):
        value = ds.attrs[name]
        return _from_jsonable(json.loads(value)) if name in json_names else _attr(value)

    params = {key[len(_PARAM):]: get(key) for key in ds.attrs if key.startswith(_PARAM)}
    arrays = {name: np.asarray(ds[name].values) for name in _DIMS}
    return dict(t=np.asarray(ds["time"].values), **arrays, method=get("method"),
                backend=get("backend"), message=get("message"),
                adiabatic=bool(_attr(ds.attrs["adiabatic"])), params=params)


def read(path) -> dict:
    """The fields of a trajectory written by :func:`write` (:func:`read_dataset`; the file is
    closed on return)."""
    xr = _xarray()
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"trajectory file {str(path)!r} does not exist")
    try:
        ds = xr.open_dataset(path, engine=ENGINE)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {str(path)!r} as a netCDF-4 trajectory: {err}") from None
    with ds:
        ds.load()
        return read_dataset(ds)


__all__ = ["write", "read", "to_xarray", "read_dataset", "FIELDS", "FORMAT", "FORMAT_VERSION"]
