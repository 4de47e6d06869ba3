"""The compiled finish of the GEMM-form squared distances (uhn.models.kernels.finish_sq_dist) is the
numpy reference bit for bit: the same IEEE operations in the same order, per element."""
import numpy as np
import pytest

from uhn.models import kernels as K

pytestmark = pytest.mark.skipif(not K.HAVE_NUMBA, reason="numba not installed")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("root", [False, True])
def test_compiled_finish_equals_the_numpy_reference_bit_for_bit(dtype, eps, root):
    rng = np.random.default_rng(3)
    B, N = 37, 53
    G = rng.standard_normal((B, N)).astype(dtype)
    q2 = (rng.random(B) + 0.1).astype(dtype)
    m2 = (rng.random(N) + 0.1).astype(dtype)
    G[0, :5] = (q2[0] + m2[:5]) / 2        # a distance of exactly 0 (a query on a memory)
    G[1, 0] = (q2[1] + m2[0]) / 2 * 1.01   # slightly negative before the clip at 0
    G[2, 3] = np.nan                        # NaN stays NaN (as np.maximum keeps it)
    a = K.finish_sq_dist(G.copy(), q2, m2, eps, root)
    b = K._finish_sq_dist_np(G.copy(), q2, m2, eps, root)
    assert a.dtype == dtype
    np.testing.assert_array_equal(a, b)     # NaN where NaN, equal elsewhere
    assert np.isnan(a[2, 3]) and not np.isnan(np.delete(a.ravel(), 2 * N + 3)).any()
    d0 = a[1, 0]
    assert d0 == (eps - np.sqrt(dtype(eps * eps)) if root else 0.0)   # clipped at 0 first


def test_other_layouts_take_the_reference_path():
    rng = np.random.default_rng(4)
    G = rng.standard_normal((6, 8))
    q2, m2 = rng.random(6) + 1, rng.random(8) + 1
    ref = K._finish_sq_dist_np(G.copy(), q2, m2, 0.0, True)
    Gf = np.asfortranarray(G)               # not C-contiguous: numpy reference, same values
    np.testing.assert_array_equal(K.finish_sq_dist(Gf, q2, m2, 0.0, True), ref)
    mixed = K.finish_sq_dist(G.copy(), q2.astype(np.float32), m2, 0.0, False)   # mixed dtypes
    assert mixed.dtype == np.float64
