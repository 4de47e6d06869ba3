"""``uhn brian2`` offers what the backend runs (uhn/cli/brian2_cmd.py)."""
import re

import numpy as np
import pytest

pytest.importorskip("brian2")

from uhn.cli import build_parser, main
from uhn.dynamics.backends.brian2_rate import SUPPORTED_SIMILARITIES, supported_similarities


def _choices():
    sub = build_parser("brian2")._subparsers._group_actions[0].choices["brian2"]
    return next(a for a in sub._actions if a.dest == "similarity").choices


def test_similarity_choices_are_the_backends_supported_ones():
    """Derived from check_supported over uhn.models.similarity.names(): every similarity the
    backend expresses (the distances smoothed by --eps), hamming refused."""
    assert tuple(_choices()) == supported_similarities()
    assert set(supported_similarities()) == set(SUPPORTED_SIMILARITIES)
    assert "hamming" not in _choices()


def test_a_smoothed_distance_and_kl_run_from_the_command_line(capsys):
    rc = main(["brian2", "--similarity", "kl", "--rates", "sigmoid", "--t-end", "0.5", "--dt", "0.05",
               "--n-memories", "5"])
    out = capsys.readouterr().out
    assert rc == 0 and "similarity=kl" in out
    dv = float(re.search(r"max \|v_brian2 - v_scipy\| = (\S+)", out).group(1))
    assert np.isfinite(dv) and dv < 1e-2
    rc = main(["brian2", "--similarity", "minkowski", "--eps", "0.2", "--p", "3", "--t-end", "0.5",
               "--dt", "0.01", "--n-memories", "5"])
    out = capsys.readouterr().out
    assert rc == 0 and "minkowski" in out and "eps=0.2" in out.replace(" ", "")
