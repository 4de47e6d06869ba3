"""The ``uhn`` command line. Each subcommand lives in its own module with ``register(subparsers)``
which adds a parser and sets ``func`` (called with the parsed args, returns an exit code)."""
from __future__ import annotations

import argparse
import importlib
import sys

#: subcommand modules, in the order ``uhn --help`` lists them
SUBCOMMANDS = ("demo", "dynamics", "brian2", "capacity", "figures")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="uhn", description="Universal Hopfield Networks simulator (Millidge et al. 2022).")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}_cmd")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}_cmd":
                raise
            continue  # subcommand not built yet
        module.register(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
