"""uhn.dynamics.backends.brian2_target: importing brian2 leaves the user's error reporting alone."""
import os
import subprocess
import sys
import textwrap


def _uncaught(code: str, tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=300)


def test_an_uncaught_error_after_a_brian2_import_reads_as_python_prints_it(tmp_path):
    p = _uncaught("""
        import sys
        from uhn.dynamics.backends.brian2_target import import_brian2
        hook = sys.excepthook
        b2 = import_brian2()
        assert b2.__name__ == "brian2" and sys.excepthook is hook
        raise ModuleNotFoundError("No module named 'jax'")
        """, tmp_path)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-1] == "ModuleNotFoundError: No module named 'jax'"
    assert "Brian 2 encountered" not in p.stderr
    # brian2 deletes its temp debug log at exit unless its own hook saw an error
    assert not [f for f in os.listdir(tmp_path) if f.startswith("brian_debug")]


def test_a_plain_brian2_import_does_take_over(tmp_path):
    """The behaviour the helper undoes, so the test above cannot pass by brian2 changing."""
    p = _uncaught("""
        import brian2
        raise ModuleNotFoundError("No module named 'jax'")
        """, tmp_path)
    assert p.returncode == 1 and "Brian 2 encountered an unexpected error" in p.stderr
