"""``python -m uhn ...`` is the ``uhn`` command (:func:`uhn.cli.main`)."""
import sys

from uhn.cli import main

if __name__ == "__main__":
    sys.exit(main())
