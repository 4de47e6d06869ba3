"""brian2 for the rate and spiking backends: importing it without letting it take over the
user's error reporting, and the code-generation target of one run (runtime ``numpy`` /
``cython`` with its compiled-code cache, or the ``cpp_standalone`` device)."""
from __future__ import annotations

import os
import sys
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


def import_brian2():
    """``import brian2``, keeping the interpreter's own ``sys.excepthook``.

    On first import brian2 installs a hook that prints every uncaught error of the process (ours
    and the user's alike) as "Brian 2 encountered an unexpected error ... bug" and keeps a debug
    log in the temp folder. The hook that was there before is put back, so an uncaught error
    reads as Python prints it and brian2's log is deleted at exit as after a clean run.
    """
    before = sys.excepthook
    import brian2

    if sys.excepthook is not before and getattr(sys.excepthook, "__module__", "").startswith("brian2"):
        sys.excepthook = before
    return brian2


@contextmanager
def brian2_target(target: str, cache_dir: Optional[str], build_dir: Optional[str]):
    """Select the codegen target (runtime) or the cpp_standalone device for one run, then restore
    the previous target, cython cache directory and device."""
    b2 = import_brian2()
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


def step_count(t_end: float, dt: float, record_every: int) -> int:
    """The number of fixed steps dt in t_end (both ms) of a brian2 run: ValueError unless t_end is
    a whole number (>= 1) of steps, to 1e-9 relative, and a multiple of record_every steps."""
    n_steps = int(round(t_end / dt))
    if n_steps < 1 or abs(n_steps * dt - t_end) > 1e-9 * max(t_end, 1.0):
        raise ValueError(f"t_end = {t_end} ms is not a whole number of steps of dt = {dt} ms")
    if n_steps % record_every:
        raise ValueError(f"t_end / dt = {n_steps} steps is not a multiple of record_every = {record_every}")
    return n_steps
