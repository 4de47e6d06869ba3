"""Error bounds the integrator tests share (tests/ is on sys.path through its conftest.py)."""
import numpy as np


def step_error_bound(nfev, W, rtol, atol, y_max, growth=1.0):
    """Bound on the global error (2-norm) of an adaptive solution: every accepted step's error
    estimate passes the controller, ||e / (atol + rtol |y|)||_rms < 1, so its local error has
    2-norm < sqrt(W) (atol + rtol max|y|); there are fewer steps than right-hand-side calls
    (``nfev``), and a local error made at time s reaches time t multiplied by at most ``growth``
    = sup ||dy(t)/dy(s)|| (1 for a contracting flow). The propagated solution is the higher-order
    one, so the true error is well below this."""
    return growth * nfev * np.sqrt(W) * (atol + rtol * y_max)
