"""``run(argv, capsys)``: the in-process ``uhn`` call the CLI tests share."""
from uhn.cli import main


def run(argv, capsys):
    """(exit status, stdout, stderr) of ``uhn argv`` in-process; argparse exits are caught."""
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err
