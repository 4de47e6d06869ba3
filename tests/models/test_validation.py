"""uhn.models.validation. check_finite: its fast path (one sum) and the entry-by-entry check
must refuse exactly the arrays that hold NaN or inf, whatever their size, dtype and layout.
require_positive / require_count: the value back, or an error naming the parameter."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from uhn.models.validation import _sum_finite, check_finite, require_count, require_positive

BAD = [np.nan, np.inf, -np.inf]


@settings(max_examples=200, deadline=None)
@given(shape=st.tuples(st.integers(1, 7), st.integers(1, 9)), dtype=st.sampled_from([np.float64, np.float32]),
       scale=st.sampled_from([1.0, 1e150, 1e300, 1.7e308, 1e-300]), bad=st.lists(st.sampled_from(BAD), max_size=3),
       transpose=st.booleans(), seed=st.integers(0, 2**31))
def test_check_finite_refuses_exactly_the_arrays_with_nan_or_inf(shape, dtype, scale, bad, transpose, seed):
    """Huge finite entries (near 1.7e308 the sum overflows: the fast path says no, the exact check
    says yes), tiny ones, float32 (whose sums overflow above ~3.4e38), +inf beside -inf (inf - inf
    in the sum), and transposed (non-contiguous) arrays."""
    rng = np.random.default_rng(seed)
    with np.errstate(over="ignore"):
        a = (rng.standard_normal(shape) * scale).astype(dtype)
    a = np.where(np.isfinite(a), a, dtype(1.0))         # float32 may overflow the scale itself
    flat = rng.choice(a.size, size=min(len(bad), a.size), replace=False)
    for i, value in zip(flat, bad):
        a.flat[i] = value
    if transpose:
        a = a.T
    n_bad = int((~np.isfinite(a)).sum())
    if n_bad:
        with pytest.raises(ValueError, match=rf"x contains {n_bad} NaN/inf value\(s\)"):
            check_finite(a, "x")
    else:
        check_finite(a, "x")


def test_the_fast_path_answers_for_ordinary_data_and_defers_for_an_overflowing_sum():
    """It must be the path taken for ordinary data (the isfinite pass over the whole array is what it
    saves), and must not be trusted where the sum overflows; quietly, also where the caller turned
    overflow into an error (integrate runs under np.errstate(over="raise"))."""
    with np.errstate(over="raise", invalid="raise"):
        assert not _sum_finite(np.full((3, 4), 1e308))
        check_finite(np.full((3, 4), 1e308), "x")
    assert _sum_finite(np.full((3, 4), 1e300))
    assert not _sum_finite(np.full((3, 4), 1e308))                  # finite entries, inf sum
    check_finite(np.full((3, 4), 1e308), "x")                      # the exact check accepts them
    for value in BAD:
        a = np.ones((3, 4))
        a[2, 3] = value
        assert not _sum_finite(a)
    a = np.ones((3, 4))
    a[0, 0], a[1, 1] = np.inf, -np.inf
    assert not _sum_finite(a)


def test_require_positive_and_count():
    assert require_positive(np.float32(0.5), "dt", "time step") == 0.5
    assert require_positive(np.inf, "max_step", "step size", finite=False) == np.inf
    with pytest.raises(ValueError, match="max_step must be a positive step size, got nan"):
        require_positive(np.nan, "max_step", "step size", finite=False)
    with pytest.raises(ValueError, match="dt must be a positive finite time step, got inf"):
        require_positive(np.inf, "dt", "time step")
    with pytest.raises(TypeError, match="dt must be a real number, got bool True"):
        require_positive(True, "dt", "time step")
    assert require_count(np.int64(3), "n") == 3
    with pytest.raises(ValueError, match="record_every must be an integer >= 1, got 0"):
        require_count(0, "record_every")
    with pytest.raises(TypeError, match="record_every must be an integer, got float 2.0"):
        require_count(2.0, "record_every")
