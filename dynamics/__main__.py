"""``python -m dynamics ...`` is the ``uhn`` command (dynamics.cli.main)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
