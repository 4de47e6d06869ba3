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

A trajectory of a network of layers (uhn.dynamics.hierarchical: ``params["layers"]`` maps each
layer's name to its description, ``size`` included, in the order of the packed state) is stored
with a variable per layer instead of ``v`` and ``h``: ``x_<name>`` with dimensions
(time, query, unit_<name>), the query layer first, and the attribute ``uhn_layers``, the JSON
list of [name, size]; :func:`read` checks them as it checks ``v`` and ``h`` and gives back the
packed ``v`` (the first layer) and ``h`` (the others, in order), bit for bit.

Global attributes: ``uhn_format`` = "uhn-trajectory", ``uhn_format_version`` (2), the Trajectory's
``method``, ``backend``, ``message`` and ``adiabatic`` (0 / 1), and every entry of
``Trajectory.params`` as ``param_<name>``. Integers, floats and strings are stored as they are;
booleans, None, lists, tuples and dicts are JSON-encoded strings, and the attribute
``uhn_json_params`` lists which attributes those are (strings netCDF cannot hold, empty or
with a NUL, are JSON-encoded too), so that :func:`read` restores every
value equal to the saved one with its Python type. Arrays round-trip bit for bit with their dtypes
(no fill value, no compression loss).

Integrity (format version 2): every array (``time`` and the six above) has its checksum in the
attribute ``uhn_sha256_<name>``, the SHA-256 of its dtype, shape and little-endian C-order bytes
(:func:`checksum`). :func:`read` checks the format and its version, that every variable and
attribute is there, each variable's dimensions and dtype (floating point; ``converged`` bool) and
each checksum, and raises ValueError naming the file, the variable and what was expected against
what was found. Files of version 1 (written before the checksums) are still read, after the same
structural checks, with a warning that their arrays cannot be verified: they were written by
this package whole (atomic writes), so refusing them would strand results that are most likely
intact, while the warning says that a corruption cannot be told apart.

Writing (:func:`write`) serialises the whole file in memory first and then writes those bytes
through uhn.models.atomic.write_bytes: no HDF5 file is ever open on the disk being written, so a
full disk is an OSError naming the file, with the old file kept and the temporary file removed
(letting the HDF5 library write a file in place that a full disk cuts short crashed the process
in its close of the half-written file). The price is one copy of the file in memory. An xarray
too old to write HDF5 to memory (``to_netcdf()`` without a path returning bytes for the h5netcdf
engine; 2026.9 does) falls back to writing the temporary file in place.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np

from uhn.models.atomic import atomic_path, write_bytes

FORMAT = "uhn-trajectory"
FORMAT_VERSION = 2
#: the versions :func:`read` knows: 1 (no checksums, read with a warning) and 2
READABLE_VERSIONS = (1, 2)
#: global attribute holding the checksum of array ``name`` (:func:`checksum`)
CHECKSUM_ATTR = "uhn_sha256_{}"
#: global attributes every trajectory file has (besides ``param_*`` and the checksums)
REQUIRED_ATTRS = ("uhn_format", "uhn_format_version", "method", "backend", "message",
                  "adiabatic", "uhn_json_params")
ENGINE = "h5netcdf"

#: Trajectory array fields and their netCDF dimensions
_DIMS = {"v": ("time", "query", "feature"), "h": ("time", "query", "memory"),
         "E": ("time", "query"), "dEdt": ("time", "query"), "I": ("query", "feature"),
         "converged": ("query",)}
#: the dtype kind each array must have (f: floating point, b: bool)
_KINDS = {"time": "f", "v": "f", "h": "f", "E": "f", "dEdt": "f", "I": "f", "converged": "b"}
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


def checksum(array) -> str:
    """SHA-256 (hex) of an array's dtype name, shape and little-endian C-order bytes: equal for
    two arrays exactly when they are equal bit for bit with the same dtype and shape."""
    a = np.asarray(array)
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    digest = hashlib.sha256(f"{a.dtype.name}{a.shape}".encode())
    digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()


#: global attribute of a layered file: the JSON list of [layer name, size], query layer first
LAYERS_ATTR = "uhn_layers"


def layer_layout(traj):
    """[(name, size), ...] of a trajectory of a network of layers (``params["layers"]``: {name:
    {"size": n, ...}} in packed order), or None for a two-layer trajectory. ValueError when the
    sizes do not split v and h (the first layer v, the others h) or a name cannot name a netCDF
    variable."""
    layers = traj.params.get("layers") if isinstance(traj.params, dict) else None
    if not isinstance(layers, dict) or not layers:
        return None
    layout = []
    for name, desc in layers.items():
        size = desc.get("size") if isinstance(desc, dict) else None
        if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
            return None     # not a layer description: a parameter that happens to be named so
        if not isinstance(name, str) or not name or "/" in name or "\x00" in name:
            raise ValueError(f"layer name {name!r} cannot name a netCDF variable")
        layout.append((name, int(size)))
    D, N = np.shape(traj.v)[-1], np.shape(traj.h)[-1]
    sizes = [n for _, n in layout]
    if sizes[0] != D or sum(sizes[1:]) != N:
        raise ValueError(f"params['layers'] sizes {sizes} do not split the trajectory's v (width "
                         f"{D}: the first layer) and h (width {N}: the others)")
    return layout


def _expected_dims(layout) -> dict:
    """{variable: dimensions} of a file with this layer layout (None: v and h)."""
    dims = dict(_DIMS)
    if layout:
        del dims["v"], dims["h"]
        dims = {**{f"x_{name}": ("time", "query", f"unit_{name}") for name, _ in layout}, **dims}
    return dims


def _kind(name: str) -> str:
    return "f" if name.startswith("x_") else _KINDS[name]


def to_xarray(traj):
    """A trajectory (any object with the attributes :data:`FIELDS`) as an ``xarray.Dataset``
    (dimensions time / query / feature / memory; every parameter an attribute, see the module
    docstring)."""
    xr = _xarray()
    if not all(hasattr(traj, name) for name in FIELDS):
        raise TypeError(f"traj must be a uhn.dynamics.trajectory.Trajectory (or have its fields "
                        f"{', '.join(FIELDS)}), got {type(traj).__name__}")
    layout = layer_layout(traj)
    data = {name: (dims, np.asarray(getattr(traj, name))) for name, dims in _DIMS.items()}
    attrs = {"uhn_format": FORMAT, "uhn_format_version": FORMAT_VERSION}
    if layout:
        v, h = data.pop("v")[1], data.pop("h")[1]
        cuts = np.cumsum([n for _, n in layout[1:]])[:-1]
        parts = [v] + (np.split(h, cuts, axis=-1) if len(layout) > 2 else [h])
        data = {**{f"x_{name}": (("time", "query", f"unit_{name}"), np.ascontiguousarray(x))
                   for (name, _), x in zip(layout, parts)}, **data}
        attrs[LAYERS_ATTR] = json.dumps([[name, n] for name, n in layout])
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
    for name, (_, array) in data.items():
        attrs[CHECKSUM_ATTR.format(name)] = checksum(array)
    t = np.asarray(traj.t)
    attrs[CHECKSUM_ATTR.format("time")] = checksum(t)
    return xr.Dataset(data, coords={"time": ("time", t)}, attrs=attrs)


def write(traj, path) -> Path:
    """Write ``traj`` (:func:`to_xarray`) to ``path`` as netCDF-4/HDF5, atomically; returns the
    path. Read it back with :func:`read`.

    The file is built in memory and its bytes written through uhn.models.atomic.write_bytes (a
    temporary ``.<name>.<pid>.<random>.tmp`` in the same folder, fsynced, moved into place;
    leftovers of killed saves into that folder are removed first). A full disk raises OSError
    naming the path; the old file is kept and no temporary file is left.
    """
    path = Path(path)
    ds = to_xarray(traj)
    encoding = {name: {"_FillValue": None} for name in list(ds.data_vars) + ["time"]}
    try:
        data = ds.to_netcdf(engine=ENGINE, encoding=encoding)  # no path: the file's bytes
    except (ValueError, TypeError, NotImplementedError):
        data = None  # an xarray too old to write HDF5 in memory (it refuses, naming scipy)
    if data is None:  # pragma: no cover - depends on the installed xarray
        with atomic_path(path) as tmp:  # written in place by the HDF5 library (no ENOSPC guard)
            ds.to_netcdf(tmp, engine=ENGINE, encoding=encoding)
        return path
    try:
        return write_bytes(path, data)
    finally:
        # xarray hands back a view of its in-memory file: end the export now, or the buffer's
        # own close at garbage collection fails ("Exception ignored ... BufferError: Existing
        # exports of data", printed on python 3.13)
        if isinstance(data, memoryview):
            data.release()


def _attr(value):
    return value.item() if isinstance(value, np.generic) else value


def _stored_layout(ds):
    """The [(name, size), ...] a layered file names in its ``uhn_layers`` attribute (None: a
    two-layer file); ValueError text when the attribute is not such a list."""
    if LAYERS_ATTR not in ds.attrs:
        return None
    try:
        layout = [(str(name), int(n)) for name, n in json.loads(_attr(ds.attrs[LAYERS_ATTR]))]
    except (TypeError, ValueError) as err:
        raise ValueError(f"attribute {LAYERS_ATTR!r} is not a JSON list of [name, size] ({err})")
    if len(layout) < 2:
        raise ValueError(f"attribute {LAYERS_ATTR!r} names {len(layout)} layer(s), a layered "
                         f"trajectory has at least 2")
    return layout


def _check_structure(ds, layout=None) -> list[str]:
    """What is wrong with the variables of a trajectory Dataset (empty when nothing): missing
    variables, wrong dimensions, wrong dtypes, layer variables of the wrong size."""
    problems = []
    if "time" not in ds.variables:
        problems.append("variable 'time' (the sample times, dimension (time,)) is missing")
    expected_dims = _expected_dims(layout)
    missing = [name for name in expected_dims if name not in ds.data_vars]
    if missing:
        problems.append(f"variables {missing} are missing")
    for name, n in layout or ():
        var = ds.variables.get(f"x_{name}")
        if var is not None and var.ndim == 3 and var.shape[-1] != n:
            problems.append(f"variable 'x_{name}' has {var.shape[-1]} units, the layout "
                            f"{LAYERS_ATTR!r} says {n}")
    expected = {"time": ("time",), **expected_dims}
    for name, dims in expected.items():
        if name not in ds.variables:
            continue
        var = ds.variables[name]
        if tuple(var.dims) != dims:
            problems.append(f"variable {name!r} has dimensions {tuple(var.dims)}, expected {dims}")
        kind = _kind(name)
        if var.dtype.kind != kind:
            want = "bool" if kind == "b" else "floating point"
            problems.append(f"variable {name!r} has dtype {var.dtype}, expected {want}")
    return problems


def read_dataset(ds, source: str = "dataset") -> dict:
    """The fields stored in an ``xarray.Dataset`` made by :func:`to_xarray`, as the keyword
    arguments of a Trajectory (:data:`FIELDS`), after the checks of the module docstring (format,
    version, variables, attributes, dimensions, dtypes, checksums). ValueError naming ``source``
    (the file, for :func:`read`) and everything that is wrong."""
    def fail(problems):
        raise ValueError(f"{source}: not a valid uhn trajectory: " + "; ".join(problems))

    if ds.attrs.get("uhn_format") != FORMAT:
        raise ValueError(f"{source}: not a uhn trajectory: attribute uhn_format is "
                         f"{ds.attrs.get('uhn_format')!r}, expected {FORMAT!r}")
    version = _attr(ds.attrs.get("uhn_format_version"))
    if version not in READABLE_VERSIONS:
        raise ValueError(f"{source}: uhn trajectory format version {version!r} is not supported "
                         f"(this reader knows versions {READABLE_VERSIONS})")
    try:
        layout = _stored_layout(ds)
    except ValueError as err:
        fail([str(err)])
    problems = _check_structure(ds, layout)
    missing_attrs = [a for a in REQUIRED_ATTRS if a not in ds.attrs]
    if missing_attrs:
        problems.append(f"global attributes {missing_attrs} are missing")
    if problems:
        fail(problems)
    try:
        json_names = set(json.loads(ds.attrs["uhn_json_params"]))
    except (TypeError, ValueError) as err:
        fail([f"attribute 'uhn_json_params' is not a JSON list of names ({err})"])
    arrays = {name: np.asarray(ds[name].values) for name in _expected_dims(layout)}
    arrays["time"] = np.asarray(ds["time"].values)
    if version >= 2:
        bad = []
        for name, array in arrays.items():
            stored = ds.attrs.get(CHECKSUM_ATTR.format(name))
            if stored is None:
                bad.append(f"attribute {CHECKSUM_ATTR.format(name)!r} (the checksum of {name!r}) "
                           f"is missing")
            elif _attr(stored) != checksum(array):
                bad.append(f"variable {name!r} does not match its checksum (stored sha256 "
                           f"{str(_attr(stored))[:12]}..., found {checksum(array)[:12]}...): the "
                           f"file was changed or corrupted after it was written")
        if bad:
            fail(bad)
    else:
        warnings.warn(f"{source}: uhn trajectory format version 1 has no checksums, so its arrays "
                      f"cannot be verified (structure checked); save it again to add them",
                      UserWarning, stacklevel=3)

    def get(name):
        value = ds.attrs[name]
        if name not in json_names:
            return _attr(value)
        try:
            return _from_jsonable(json.loads(value))
        except (TypeError, ValueError) as err:
            fail([f"attribute {name!r} is listed as JSON but is not ({err})"])

    params = {key[len(_PARAM):]: get(key) for key in ds.attrs if key.startswith(_PARAM)}
    t = arrays.pop("time")
    if layout:
        parts = [arrays.pop(f"x_{name}") for name, _ in layout]
        arrays["v"] = parts[0]
        arrays["h"] = parts[1] if len(parts) == 2 else np.concatenate(parts[1:], axis=-1)
    return dict(t=t, **arrays, method=get("method"), backend=get("backend"),
                message=get("message"), adiabatic=bool(_attr(ds.attrs["adiabatic"])),
                params=params)


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
        return read_dataset(ds, str(path))


__all__ = ["write", "read", "to_xarray", "read_dataset", "checksum", "layer_layout", "LAYERS_ATTR",
           "FIELDS", "FORMAT",
           "FORMAT_VERSION", "READABLE_VERSIONS", "CHECKSUM_ATTR", "REQUIRED_ATTRS"]
