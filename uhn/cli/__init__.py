"""The ``uhn`` command line. Each subcommand lives in its own module with ``register(subparsers)``
which adds a parser and sets ``func`` (called with the parsed args, returns an exit code).

Conventions, kept here once for every subcommand:

- exit status 0 on success, 1 when a check fails (e.g. the energy is not a Lyapunov function),
  2 on bad input: argparse's own errors, the ``type=`` validators below, and any ValueError,
  TypeError, OverflowError or FloatingPointError raised while a subcommand runs, which
  :func:`main` prints as one line ``uhn <command>: error: <message>`` on stderr (set UHN_DEBUG=1
  for the traceback);
- exit status 3 when the run could not finish for a reason outside its inputs: an OSError (a full
  disk, a folder that stopped being writable) or a sweep's cluster with no live worker
  (:class:`~uhn.models.experiments.sweep.ClusterError`), printed as one line
  ``uhn <command>: stopped: <message>``; what a sweep finished is stored;
- ``--help`` shows every option's default; ``uhn --version``;
- results on stdout, progress notes (:func:`note`) on stderr.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import math
import os
import sys

#: subcommand modules, in the order ``uhn --help`` lists them
SUBCOMMANDS = ("demo", "dynamics", "brian2", "capacity", "atlas", "basins", "theory", "figures")

#: errors a subcommand raises for values it cannot work with: reported as ``error:``, exit 2
INPUT_ERRORS = (ValueError, TypeError, OverflowError, FloatingPointError)


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version as _version
    try:
        return _version("universal-hopfield")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree not installed
        return "unknown (not installed)"


# ------------------------------------------------------------------ argparse type= validators
def _number(text: str, kind, name: str):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}")
    return value


def finite_float(text: str) -> float:
    """argparse type: a finite float (no nan / inf)."""
    return _number(text, float, "a finite number")


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0."""
    value = _number(text, float, "a positive finite number")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    """argparse type: a finite float >= 0."""
    value = _number(text, float, "a finite number >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = _number(text, int, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0 (e.g. a seed)."""
    value = _number(text, int, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def note(message: str) -> None:
    """A progress note on stderr (stdout keeps the results), flushed at once."""
    print(message, file=sys.stderr, flush=True)


class _NoteHandler(logging.Handler):
    """A library log record (``uhn.*`` at INFO and above) as a line on stderr, written through
    tqdm so that a progress bar on screen (a sweep's first point compiling) moves below it."""

    def emit(self, record):
        try:
            from tqdm import tqdm
            tqdm.write(self.format(record), file=sys.stderr)
            sys.stderr.flush()
        except Exception:  # pragma: no cover - a note must never stop a run
            self.handleError(record)


def show_library_notes() -> None:
    """Show the library's INFO log records (``uhn.*``: e.g. numba's first-run compile notices
    from uhn.models.kernels) on stderr as notes; idempotent."""
    logger = logging.getLogger("uhn")
    if not any(isinstance(h, _NoteHandler) for h in logger.handlers):
        logger.addHandler(_NoteHandler())
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)


def _writable(path, folder: bool, option: str):
    """``path`` as a Path; ValueError (one line, naming ``option``) unless a file (``folder``
    False) or a folder (True) can be written there: the path must not be a folder where a file is
    wanted or a file where a folder is, and its nearest existing folder must accept a new file (a
    probe file is created there and removed). Missing folders below it pass: the writers create them."""
    import tempfile
    from pathlib import Path
    path = Path(path)
    want = "a folder" if folder else "a file"
    if path.is_dir() and not folder:
        raise ValueError(f"{option} must name a file, but {str(path)!r} is a folder")
    if path.exists() and not path.is_dir() and folder:
        raise ValueError(f"{option} must name a folder, but {str(path)!r} is a file")
    base = path if folder else path.parent
    base = base.absolute()
    existing = base
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{option} {str(path)!r} cannot be {want}: {str(existing)!r} is a file, "
                         f"not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".uhn-probe-", dir=existing)
    except OSError as err:
        raise ValueError(f"{option} {str(path)!r} cannot be written: {str(existing)!r} does not "
                         f"accept new files ({err.strerror or err})") from None
    os.close(fd)
    os.unlink(probe)
    return path


def check_out_dir(out_dir, option: str = "--out"):
    """The output folder as a Path, checked before any long computation: ValueError (one line)
    if it is a file, lies under a file, or cannot be created or written (see :func:`_writable`)."""
    return _writable(out_dir, True, option)


def check_out_file(path, option: str = "--out"):
    """An output file as a Path, checked before any long computation: ValueError (one line) if it
    is a folder, lies under a file, or its folder cannot be created or written."""
    return _writable(path, False, option)


def save_outputs(out_dir, trajectories: dict, figures: dict) -> list:
    """Write each Trajectory as ``<out_dir>/<name>.nc`` (uhn.dynamics.io) and each matplotlib figure
    as ``<out_dir>/<name>.png`` (closing it); returns the paths written, in that order."""
    from pathlib import Path

    import matplotlib.pyplot as plt

    from uhn.dynamics.trajectory import save_trajectory
    from uhn.models.plotting import save_figure
    out = check_out_dir(out_dir)
    written = [save_trajectory(traj, out / f"{name}.nc") for name, traj in trajectories.items()]
    for name, fig in figures.items():
        try:
            written.extend(save_figure(fig, out / f"{name}.png"))
        finally:
            plt.close(fig)
    return written


def defaults_note(args, api_defaults: dict) -> str:
    """One line naming the options of this run left at a command-line default that differs from
    the API's, so a script calling the API with its own defaults knows what to pass: e.g.
    ``command-line defaults: --input-mode clamped (the API's default, integrate, is initial)``;
    '' when there is none. ``api_defaults``: {dest: (CLI default, API default, where)}."""
    parts = [f"--{name.replace('_', '-')} {cli} (the API's default, {where}, is {api})"
             for name, (cli, api, where) in api_defaults.items() if getattr(args, name) == cli]
    return "command-line defaults: " + "; ".join(parts) if parts else ""


# ------------------------------------------------------------------ progress bars
def describe_capacity_row(row: dict) -> str:
    """Short description of a finished capacity row for the progress bar."""
    frac = row.get("fraction_correct")
    return f"N={row['n_memories']} {row['similarity']} {'failed' if frac is None else f'{frac:.2f}'}"


def describe_atlas_row(row: dict) -> str:
    """Short description of a finished atlas row for the progress bar."""
    return f"{row['similarity']} {row['L_h']} beta={row['beta']:g}"


class Eta:
    """Seconds left in a sweep: the points left times a robust mean of the wall times between the
    points measured in this run. The first measured point is left out, and so is any gap over 10x
    the median gap: a point that carries start-up (numba's first-run compile of a kernel, tens of
    seconds on a fresh install; a worker's imports) says nothing of the others, and points read
    from the store take no time. t_left = (total - done) mean{d_i : d_i <= 10 median(d)}, d_i the
    gaps between measured points after the first; None until that is defined: two gaps within
    10x of each other, or three gaps."""

    #: a gap over this many medians is start-up, not the sweep's pace
    OUTLIER = 10.0

    def __init__(self):
        self.last = None
        self.gaps: list = []

    def update(self, done: int, total: int, computed: bool, now: float):
        """Record a finished point (``computed`` False when it came from the store) at time
        ``now``; return the seconds left, or None while there is nothing to extrapolate from."""
        import statistics
        if computed:
            if self.last is not None:
                self.gaps.append(now - self.last)
            self.last = now
        g = self.gaps
        if len(g) < 2 or (len(g) == 2 and max(g) > self.OUTLIER * min(g)):
            return None
        limit = self.OUTLIER * statistics.median(g)
        kept = [x for x in g if x <= limit] if limit > 0 else g   # points finishing in batches
        return max(0, total - done) * sum(kept) / len(kept)


def sweep_progress_bar(desc: str, describe=None):
    """A tqdm bar on stderr for a sweep (uhn.models.experiments.sweep.run's ``progress``,
    called with a sweep.Progress): points done, the :class:`Eta` (not tqdm's, which extrapolates
    from the compile-laden first point), failed and running counts and ``describe(row)`` of the last
    computed row. Returns (callback, close)."""
    import time

    from tqdm import tqdm
    state = {"bar": None, "eta": Eta()}

    def callback(p):
        if state["bar"] is None:
            state["bar"] = tqdm(total=p.total, desc=desc, unit="pt", leave=False, file=sys.stderr,
                                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
        bar = state["bar"]
        left = state["eta"].update(p.done, p.total, p.computed, time.monotonic())
        eta = "eta ?" if left is None else f"eta {tqdm.format_interval(left)}"
        text = f"{eta}, failed={p.failed} running={p.running}"
        if p.computed and describe is not None:
            text += " " + describe(p.row)
        bar.set_postfix_str(text, refresh=False)
        bar.update(p.done - bar.n)

    def close():
        if state["bar"] is not None:
            state["bar"].close()
            state["bar"] = None

    return callback, close


def capacity_progress_bar(desc: str, threads: int = 1):
    """:func:`sweep_progress_bar` (points done, eta, failed, running) as the
    ``progress(done, total, row, computed)`` callback of uhn.models.experiments.capacity.run;
    returns (cb, close). ``threads``: the engine's worker threads; running = min(points left,
    threads)."""
    from uhn.models.experiments import sweep
    draw, close = sweep_progress_bar(desc, describe_capacity_row)
    failed = [0]

    def cb(done, total, row, computed):
        failed[0] += sweep.is_failed(row)
        draw(sweep.Progress(done, total, failed[0], min(total - done, threads), row, computed))

    return cb, close


def add_engine_arguments(p) -> None:
    """``--workers N`` / ``--scheduler tcp://HOST:PORT`` (exclusive): where a sweep runs
    (uhn.models.experiments.sweep.connect); neither: in-process."""
    engine = p.add_mutually_exclusive_group()
    engine.add_argument("--workers", type=positive_int, default=None,
                        help="run on a dask LocalCluster of this many worker processes")
    engine.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                        help="run on the dask cluster of this running scheduler")


def engine_description(args) -> str:
    """Where :func:`add_engine_arguments`' options run the sweep, in words."""
    if args.workers is None and args.scheduler is None:
        return "in-process"
    if args.workers:
        return f"on a LocalCluster of {args.workers} workers"
    return f"on the cluster at {args.scheduler}"


def interrupted(out, during: str = "") -> int:
    """After Ctrl-C in a sweep: say on stderr that every finished point is stored in the results
    store ``out`` (with its row count) and how to resume; return exit status 130."""
    from uhn.models.experiments.store import load_results
    where = f" during {during}" if during else ""
    note(f"\ninterrupted{where}: every finished point is stored in {out} "
         f"({len(load_results(out))} rows). Run the same command again to resume "
         f"(stored points are not recomputed).")
    return 130


def fail(command: str, message: str, status: int = 2, label: str = "error") -> int:
    """Print ``uhn <command>: <label>: <message>`` (one line) on stderr; return ``status``."""
    message = " ".join(str(message).split())
    print(f"uhn {command}: {label}: {message}", file=sys.stderr)
    return status


def is_run_error(err: BaseException) -> bool:
    """Whether err stopped a run for a reason outside its inputs (see the module docstring): an
    OSError, or a sweep's ClusterError (that module is looked up only if something imported it,
    so the check costs no dask import)."""
    if isinstance(err, OSError):
        return True
    sweep = sys.modules.get("uhn.models.experiments.sweep")
    return sweep is not None and isinstance(err, sweep.ClusterError)


# ------------------------------------------------------------------ parser
class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps description / epilog layout and appends '(default: X)' to every option whose help
    does not already name its default (options defaulting to None or False show nothing)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("%(default)" in text or "(default" in text or action.default is None
                or action.default is False or action.default is argparse.SUPPRESS):
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """Every subcommand parser uses :class:`HelpFormatter` (a superset of the raw-description
    formatter a subcommand may ask for) and reports a bad command line in one line."""

    def __init__(self, *args, formatter_class=None, **kwargs):
        super().__init__(*args, formatter_class=HelpFormatter, **kwargs)

    def error(self, message):
        """One line ``<prog>: error: <message> (see <prog> --help)`` on stderr, exit status 2."""
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser(only: str = None) -> argparse.ArgumentParser:
    """The ``uhn`` parser with every subcommand, or with subcommand ``only`` alone: registering a
    subcommand imports what its options list (integrators, readouts, brian2 targets), imports a
    run of another subcommand does not need."""
    parser = _Parser(prog="uhn", description="Universal Hopfield Networks simulator (Millidge et al. 2022).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in SUBCOMMANDS if only is None else (only,):
        try:
            module = importlib.import_module(f"{__name__}.{name}_cmd")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}_cmd":
                raise
            continue  # subcommand not built yet
        module.register(sub)
    return parser


def main(argv=None) -> int:
    """Run ``uhn`` with argv (default sys.argv[1:]); returns the exit status (see the module
    docstring). argparse errors exit through SystemExit(2) as usual."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # a known subcommand first: build its parser alone (anything else: the whole parser, so
    # --help, --version and a misspelt command read as usual)
    parser = build_parser(argv[0] if argv and argv[0] in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    show_library_notes()
    try:
        return int(args.func(args) or 0)
    except INPUT_ERRORS as err:
        if os.environ.get("UHN_DEBUG"):
            raise
        return fail(args.command, str(err) or type(err).__name__)
    except (OSError, RuntimeError) as err:
        if os.environ.get("UHN_DEBUG") or not is_run_error(err):
            raise
        return fail(args.command, str(err) or type(err).__name__, status=3, label="stopped")


if __name__ == "__main__":
    sys.exit(main())
