"""The brian2 code-generation target of one run, shared by the rate and spiking backends:
runtime ``numpy`` / ``cython`` (with its compiled-code cache) or the ``cpp_standalone`` device."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from typing import Optional

TARGETS = ("numpy", "cython", "cpp_standalone")
#: numpy: no compiler and no cold start; see docs/brian2.md for the measurements behind the choice
DEFAULT_TARGET = "numpy"


def default_cache_dir() -> str:
    """Cython cache of compiled brian2 code: $UHN_BRIAN2_CACHE, else ~/.cache/uhn-brian2."""
    return os.environ.get("UHN_BRIAN2_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "uhn-brian2")


@contextmanager
def brian2_target(target: str, cache_dir: Optional[str], build_dir: Optional[str]):
    """Select the codegen target (runtime) or the cpp_standalone device for one run, then restore
    the previous target, cython cache directory and device."""
    import brian2 as b2
    from brian2.devices.device import reset_device

    if target not in TARGETS:
        raise ValueError(f"unknown brian2 target {target!r}; choose one of {TARGETS}")
    prefs = b2.prefs
    old_target = prefs.codegen.target
    old_cache = prefs["codegen.runtime.cython.cache_dir"]
    cache_dir = cache_dir or default_cache_dir()
    tmp = None
    try:
        if target == "cython":
            os.makedirs(cache_dir, exist_ok=True)
            prefs["codegen.runtime.cython.cache_dir"] = cache_dir
        if target == "cpp_standalone":
            if build_dir is None:
                tmp = tempfile.TemporaryDirectory(prefix="uhn-brian2-standalone-")
                build_dir = tmp.name
            b2.set_device("cpp_standalone", directory=build_dir, build_on_run=True,
                          with_output=False)
        else:
            prefs.codegen.target = target
        yield
    finally:
        prefs.codegen.target = old_target
        prefs["codegen.runtime.cython.cache_dir"] = old_cache
        if target == "cpp_standalone":
            b2.get_device().reinit()
            b2.get_device().activate()
            reset_device()
        if tmp is not None:
            tmp.cleanup()
