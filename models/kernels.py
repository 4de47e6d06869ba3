"""Compiled L1 / Lp kernels: minkowski scores and their gradient contraction, dtype kept.

Four functions, each a positive-distance building block that :mod:`uhn.models.similarity` negates
(x = q - m elementwise, eps >= 0 a smoothing width, p >= 1):

    absx(x)   = |x|                        (eps = 0)     sqrt(x^2 + eps^2) - eps   (eps > 0)
    dabsx(x)  = sign(x), sign(0) = 0       (eps = 0)     x / sqrt(x^2 + eps^2)     (eps > 0)

    l1_scores(M, Q)[b, mu]      = sum_i absx(Q[b, i] - M[mu, i])                         (B, N)
    lp_scores(M, Q, p)[b, mu]   = (sum_i absx(Q[b, i] - M[mu, i])^p)^(1/p)               (B, N)
    l1_vjp(M, G, F)[b, i]       = sum_mu F[b, mu] dabsx(G[b, i] - M[mu, i])              (B, D)
    lp_vjp(M, G, F, p)[b, i]    = sum_mu Fs[b, mu] absx(x)^(p-1) dabsx(x),  x = G[b, i] - M[mu, i],
                                  Fs = F / dist^(p-1) (0 where dist = 0), dist = lp_scores(M, G, p)

so that for S_mu = -dist_mu (the minkowski similarity), sum_mu F_mu dS_mu/dg = -lp_vjp(M, G, F, p)
(l1 is p = 1, where the weights are F itself).

Two implementations with one API:

* numba (``HAVE_NUMBA``): parallel over blocks of queries (``prange``; the scores of a single
  block, e.g. one query against N = 5000 memories, over tiles of memories instead), memories tiled
  so a block of M stays in L2 while the queries of a block pass over it, four queries per memory row in
  registers (one load of M feeds four accumulators), the inner loop over D vectorised (SIMD).
  One compiled variant per (kernel, smoothing eps > 0 or not, exponent code), built and compiled
  on its first call of each dtype, so a call compiles only what it runs (~1 s a variant; one
  kernel holding every variant took ~16 s), and each variant is cached on disk as soon as it is
  compiled (``cache=True``: numba's ``__pycache__`` beside this file, NUMBA_CACHE_DIR or its
  user-wide cache; where none is writable it compiles in memory instead, with a warning), so an
  interrupted first run keeps what it finished. A compile (not a load from the cache) is logged at
  INFO on ``uhn.models.kernels`` (:func:`compile_notice`); the ``uhn`` command shows it.
* chunked numpy (the reference, and the path used when numba is not importable): one block of
  queries at a time against all memories, never a (B, N, D) array larger than ``CHUNK_BYTES``.

float32 in gives float32 out and float32 accumulation (sums of D = 784 nonnegative float32
terms: relative error <= D eps32 ~ 5e-5, in practice far less since the SIMD lanes are partial
sums); float64 agrees with the numpy reference to ~1e-13 relative. Mixed dtypes compute in
their common dtype (``np.result_type``); integer or bool inputs compute in float64.
"""
from __future__ import annotations

import contextlib
import logging
import math
import threading
import warnings

import numpy as np

from uhn.models.validation import check_finite

try:  # numba is optional: without it the chunked-numpy reference below does the work
    import numba as _nb
    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised by the fallback tests via monkeypatch
    _nb = None
    HAVE_NUMBA = False

#: where the compile notices go (INFO): ``uhn`` on the command line shows them on stderr
log = logging.getLogger(__name__)

#: the chunked numpy path keeps its (chunk, N, D) temporaries under this many bytes
CHUNK_BYTES = 32 * 2**20

#: queries per register group in the compiled kernels (one M load feeds this many sums)
_GROUP = 4

# exponent codes: which power a^e the compiled term uses (constants folded at each call site)
_E0, _E1, _E2, _E3, _E4, _EHALF, _E1HALF, _EGEN = range(8)
_EXPONENT_CODES = {0.0: _E0, 1.0: _E1, 2.0: _E2, 3.0: _E3, 4.0: _E4, 0.5: _EHALF, 1.5: _E1HALF}


def _exponent_code(e: float) -> int:
    """Code of the power a^e: a closed form of multiplications / one sqrt, else the general pow."""
    return _EXPONENT_CODES.get(float(e), _EGEN)


# ----------------------------------------------------------------------------------------------
# input handling (shared by both paths)
# ----------------------------------------------------------------------------------------------

def _float_dtype(*arrays) -> np.dtype:
    """float32 if every array is float32, else float64 (ints, bools and mixes compute in float64)."""
    dt = np.result_type(*arrays)
    return np.dtype(np.float32) if dt == np.float32 else np.dtype(np.float64)


def _matrix(a, name: str, dtype, finite: bool = False) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool) \
            or np.iscomplexobj(a):
        raise TypeError(f"{name} must be a real numeric array, got dtype {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {a.shape})")
    a = np.ascontiguousarray(a, dtype=dtype)
    if not finite:
        check_finite(a, name)
    return a


def _pair(M, Q, qname: str, dtype=None, finite: bool = False):
    """M and Q validated, C-contiguous, of ``dtype`` (default: their common float dtype);
    ``finite``: the caller has checked them for NaN / inf already (the O((N + B) D) pass skipped)."""
    dtype = _float_dtype(np.asarray(M), np.asarray(Q)) if dtype is None else dtype
    M = _matrix(M, "memories", dtype, finite)
    Q = _matrix(Q, qname, dtype, finite)
    if M.shape[1] != Q.shape[1]:
        raise ValueError(f"memories have width {M.shape[1]} but {qname} have width {Q.shape[1]}")
    return M, Q


def _check_p(p) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)):
        raise TypeError(f"p must be a real number, got {type(p).__name__} {p!r}")
    p = float(p)
    if not (math.isfinite(p) and p >= 1.0):
        raise ValueError(f"p must be a finite number >= 1, got {p}")
    return p


def _check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)):
        raise TypeError(f"eps must be a real number, got {type(eps).__name__} {eps!r}")
    eps = float(eps)
    if not (math.isfinite(eps) and eps >= 0.0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    return eps


def _out(out, shape, dtype, name="out"):
    if out is None:
        return np.empty(shape, dtype)
    if not isinstance(out, np.ndarray) or out.shape != shape or out.dtype != dtype \
            or not out.flags.c_contiguous or not out.flags.writeable:
        got = (f"shape {out.shape}, dtype {out.dtype}, C-contiguous {out.flags.c_contiguous}"
               if isinstance(out, np.ndarray) else type(out).__name__)
        raise ValueError(f"{name} must be a writeable C-contiguous {dtype} array of shape {shape}, got {got}")
    return out


# ----------------------------------------------------------------------------------------------
# chunked numpy reference
# ----------------------------------------------------------------------------------------------

def _absx_np(x, eps):
    """absx(x) = |x| (eps = 0) or sqrt(x^2 + eps^2) - eps, in place on the fresh array x."""
    if eps == 0.0:
        return np.abs(x, out=x)
    x *= x
    x += eps * eps
    np.sqrt(x, out=x)
    x -= eps
    return x


def _dabsx_np(x, eps):
    """dabsx(x) = sign(x) (sign(0) = 0) or x / sqrt(x^2 + eps^2)."""
    if eps == 0.0:
        return np.sign(x)
    return x / np.sqrt(x * x + eps * eps)


def _chunks(B, N, D, itemsize):
    step = max(1, int(CHUNK_BYTES // (itemsize * N * D)))
    return range(0, B, step), step


def _np_power_sums(M, Q, p, eps, out):
    """out[b, mu] = sum_i absx(Q[b, i] - M[mu, i])^p, a block of queries at a time."""
    starts, step = _chunks(Q.shape[0], *M.shape, M.itemsize)
    for s in starts:
        a = _absx_np(Q[s:s + step, None, :] - M[None, :, :], eps)
        if p != 1.0:
            a **= p
        np.sum(a, axis=2, out=out[s:s + step])
    return out


def _np_weighted_terms(M, G, W, e, eps, out):
    """out[b] = sum_mu W[b, mu] absx(x)^e dabsx(x), x = G[b] - M[mu], a block of queries at a time."""
    starts, step = _chunks(G.shape[0], *M.shape, M.itemsize)
    for s in starts:
        x = G[s:s + step, None, :] - M[None, :, :]
        t = _dabsx_np(x, eps)
        if e != 0.0:
            t *= _absx_np(x, eps) ** e
        np.einsum("bn,bnd->bd", W[s:s + step], t, out=out[s:s + step])
    return out


# ----------------------------------------------------------------------------------------------
# numba kernels
# ----------------------------------------------------------------------------------------------

def jit(**options):
    """``numba.njit(**options)`` with an on-disk cache where one can be written, else in memory (with
    a warning): the one way the package's compiled kernels are built (numba must be importable,
    :data:`HAVE_NUMBA`)."""
    def deco(fn):
        try:
            return _nb.njit(cache=True, **options)(fn)
        except RuntimeError as err:  # "no locator available": read-only install and no user cache
            warnings.warn(f"numba cannot cache {fn.__name__} on disk ({err}); compiling in memory",
                          RuntimeWarning, stacklevel=2)
            return _nb.njit(cache=False, **options)(fn)
    return deco


if HAVE_NUMBA:
    @jit(inline="always")
    def _absx_nb(x, eps, smooth):
        if smooth:
            return math.sqrt(x * x + eps * eps) - eps
        return abs(x)

    @jit(inline="always")
    def _dabsx_nb(x, eps, one, smooth):
        if smooth:
            return x / math.sqrt(x * x + eps * eps)
        # sign with sign(0) = 0, as two selects (vectorises; no fastmath touches it); ``one`` is
        # a 1 of the data's dtype, so float32 stays float32 (a literal 1.0 would promote)
        return (x > 0) * one - (x < 0) * one

    @jit()
    def _pow_nb(a, e, one, ecode):
        """a^e for a >= 0; ecode is a constant at every call site, so the branches fold."""
        if ecode == 0:
            return one
        if ecode == 1:
            return a
        if ecode == 2:
            return a * a
        if ecode == 3:
            return a * a * a
        if ecode == 4:
            a2 = a * a
            return a2 * a2
        if ecode == 5:
            return math.sqrt(a)
        if ecode == 6:
            return a * math.sqrt(a)
        return a ** e

    @jit(inline="always")
    def _sum_tile(M, Q, out, b0, b1, m0, m1, p, eps, zero, one, smooth, ecode):
        """out[b, mu] = sum_i absx(Q[b, i] - M[mu, i])^p for b in [b0, b1), mu in [m0, m1)."""
        D = Q.shape[1]
        b = b0
        while b + 4 <= b1:
            for mu in range(m0, m1):
                s0 = zero
                s1 = zero
                s2 = zero
                s3 = zero
                for i in range(D):
                    m = M[mu, i]
                    s0 += _pow_nb(_absx_nb(Q[b, i] - m, eps, smooth), p, one, ecode)
                    s1 += _pow_nb(_absx_nb(Q[b + 1, i] - m, eps, smooth), p, one, ecode)
                    s2 += _pow_nb(_absx_nb(Q[b + 2, i] - m, eps, smooth), p, one, ecode)
                    s3 += _pow_nb(_absx_nb(Q[b + 3, i] - m, eps, smooth), p, one, ecode)
                out[b, mu] = s0
                out[b + 1, mu] = s1
                out[b + 2, mu] = s2
                out[b + 3, mu] = s3
            b += 4
        for bb in range(b, b1):
            for mu in range(m0, m1):
                s = zero
                for i in range(D):
                    s += _pow_nb(_absx_nb(Q[bb, i] - M[mu, i], eps, smooth), p, one, ecode)
                out[bb, mu] = s

    @jit(inline="always")
    def _vjp_tile(M, G, W, out, b0, b1, m0, m1, e, eps, one, smooth, ecode):
        """out[b] += sum_mu W[b, mu] absx(x)^e dabsx(x), x = G[b] - M[mu], mu in [m0, m1)."""
        D = G.shape[1]
        b = b0
        while b + 4 <= b1:
            for mu in range(m0, m1):
                w0 = W[b, mu]
                w1 = W[b + 1, mu]
                w2 = W[b + 2, mu]
                w3 = W[b + 3, mu]
                if w0 == 0 and w1 == 0 and w2 == 0 and w3 == 0:
                    continue  # exact zeros add nothing (one-hot and sparse weights skip most rows)
                for i in range(D):
                    m = M[mu, i]
                    x0 = G[b, i] - m
                    x1 = G[b + 1, i] - m
                    x2 = G[b + 2, i] - m
                    x3 = G[b + 3, i] - m
                    out[b, i] += w0 * (_pow_nb(_absx_nb(x0, eps, smooth), e, one, ecode) * _dabsx_nb(x0, eps, one, smooth))
                    out[b + 1, i] += w1 * (_pow_nb(_absx_nb(x1, eps, smooth), e, one, ecode) * _dabsx_nb(x1, eps, one, smooth))
                    out[b + 2, i] += w2 * (_pow_nb(_absx_nb(x2, eps, smooth), e, one, ecode) * _dabsx_nb(x2, eps, one, smooth))
                    out[b + 3, i] += w3 * (_pow_nb(_absx_nb(x3, eps, smooth), e, one, ecode) * _dabsx_nb(x3, eps, one, smooth))
            b += 4
        for bb in range(b, b1):
            for mu in range(m0, m1):
                w = W[bb, mu]
                if w == 0:
                    continue
                for i in range(D):
                    x = G[bb, i] - M[mu, i]
                    out[bb, i] += w * (_pow_nb(_absx_nb(x, eps, smooth), e, one, ecode) * _dabsx_nb(x, eps, one, smooth))

    @jit(inline="always")
    def _fused_l1_tile(M, G, W, S, V, b0, b1, m0, m1, eps, zero, one, smooth):
        """S[b, mu] = sum_i absx(x_i) and V[b] += sum_mu W[b, mu] dabsx(x), x = G[b] - M[mu]:
        one pass, and for eps > 0 one sqrt per element serves both (absx = r - eps, dabsx = x / r)."""
        D = G.shape[1]
        for b in range(b0, b1):
            for mu in range(m0, m1):
                w = W[b, mu]
                s = zero
                for i in range(D):
                    x = G[b, i] - M[mu, i]
                    if smooth:
                        r = math.sqrt(x * x + eps * eps)
                        s += r - eps
                        V[b, i] += w * (x / r)
                    else:
                        s += abs(x)
                        V[b, i] += w * ((x > 0) * one - (x < 0) * one)
                S[b, mu] = s


def _make_sums_kernel(smooth: bool, ecode: int):
    """The distance-sum kernel for one (smooth, ecode): those two are closure constants, so the
    compiled body holds one inlined _sum_tile (one variant compiles in ~1 s, where a kernel with
    every variant inlined behind runtime branches took ~16 s) and numba caches each variant on
    disk under its own key (the closure's cell contents are part of numba's cache key)."""
    # reassoc lets the D-sum run as SIMD partial sums (a different order of the same nonnegative
    # terms: error still <= D eps sum); contract allows FMA. Nothing that touches NaN/inf/sign(0).
    @jit(parallel=True, fastmath={"reassoc", "contract"})
    def _sums_kernel(M, Q, out, p, eps, zero, one, qb, nb, groups):
        """Parallel over (query block, group of memory tiles) pairs: ``groups`` = 1 splits the
        query blocks only; a single block (one query against N = 5000 memories) splits its
        tiles into ``groups`` runs. Every out[b, mu] is the same _sum_tile sum either way."""
        B = Q.shape[0]
        N = M.shape[0]
        nblocks = (B + qb - 1) // qb
        ntiles = (N + nb - 1) // nb
        per = (ntiles + groups - 1) // groups
        for k in _nb.prange(nblocks * groups):
            b0 = (k // groups) * qb
            b1 = min(B, b0 + qb)
            for t in range((k % groups) * per, min(ntiles, (k % groups + 1) * per)):
                m0 = t * nb
                m1 = min(N, m0 + nb)
                _sum_tile(M, Q, out, b0, b1, m0, m1, p, eps, zero, one, smooth, ecode)
    return _sums_kernel


def _make_vjp_kernel(smooth: bool, ecode: int):
    """The gradient-contraction kernel for one (smooth, ecode), as :func:`_make_sums_kernel`."""
    # contract only (FMA): the sum over memories runs in order per element, so no reassoc needed
    @jit(parallel=True, fastmath={"contract"})
    def _vjp_kernel(M, G, W, out, e, eps, one, qb, nb):
        B = G.shape[0]
        N = M.shape[0]
        nblocks = (B + qb - 1) // qb
        for k in _nb.prange(nblocks):
            b0 = k * qb
            b1 = min(B, b0 + qb)
            for b in range(b0, b1):
                out[b, :] = 0
            for m0 in range(0, N, nb):
                m1 = min(N, m0 + nb)
                _vjp_tile(M, G, W, out, b0, b1, m0, m1, e, eps, one, smooth, ecode)
    return _vjp_kernel


def _make_fused_l1_kernel(smooth: bool, ecode: int = 1):
    """The fused L1 distance + contraction kernel for one smoothing, as :func:`_make_sums_kernel`."""
    @jit(parallel=True, fastmath={"reassoc", "contract"})
    def _fused_l1_kernel(M, G, W, S, V, eps, zero, one, qb, nb):
        B = G.shape[0]
        N = M.shape[0]
        nblocks = (B + qb - 1) // qb
        for k in _nb.prange(nblocks):
            b0 = k * qb
            b1 = min(B, b0 + qb)
            for b in range(b0, b1):
                V[b, :] = 0
            for m0 in range(0, N, nb):
                m1 = min(N, m0 + nb)
                _fused_l1_tile(M, G, W, S, V, b0, b1, m0, m1, eps, zero, one, smooth)
    return _fused_l1_kernel


#: kernel factories by kind, and what a compile notice calls each kind
_FACTORIES = {"sums": _make_sums_kernel, "vjp": _make_vjp_kernel, "fused": _make_fused_l1_kernel}
_LABELS = {"sums": "L1 / Lp distance", "vjp": "L1 / Lp gradient",
           "fused": "fused L1 distance + gradient", "sq_dist": "squared-distance"}
#: the variants built in this process, by (kind, smooth, ecode)
_BUILT: dict = {}
_BUILD_LOCK = threading.Lock()


def _kernel(kind: str, smooth: bool, ecode: int):
    """The compiled kernel ``kind`` for (smooth, ecode), built on first use (compiled, or loaded
    from numba's disk cache, on its first call of each dtype)."""
    key = (kind, bool(smooth), int(ecode))
    with _BUILD_LOCK:               # two threads calling at once build one dispatcher
        if key not in _BUILT:
            _BUILT[key] = _FACTORIES[kind](*key[1:])
        return _BUILT[key]


#: (kernel, dtype) pairs called in this process: a later call neither loads nor compiles
_CALLED: set = set()
#: (kernel, argument types) compiles already announced
_ANNOUNCED: set = set()


@contextlib.contextmanager
def compile_notice(kernel, label: str, dtype):
    """Around the first call of a numba ``kernel`` with arrays of ``dtype`` in this process: if
    numba finds no cached build and compiles (its ``numba:compile`` event, which a load from the
    disk cache does not raise), log at INFO what it compiles and where the build is cached, so a
    first run does not sit silent for the second or more a compile takes."""
    key = (kernel, np.dtype(dtype).name)
    if key in _CALLED or not HAVE_NUMBA:
        yield
        return
    from numba.core import event

    class Notice(event.Listener):
        def on_start(self, ev):
            once = (kernel, tuple(ev.data.get("args") or ()))
            if ev.data.get("dispatcher") is kernel and once not in _ANNOUNCED:
                _ANNOUNCED.add(once)        # one notice when two threads wait on one compile
                log.info("compiling the %s kernel for %s (first run only; numba caches it in %s)",
                         label, key[1], kernel.stats.cache_path)

        def on_end(self, ev):
            pass

    with event.install_listener("numba:compile", Notice()):
        yield
    _CALLED.add(key)


#: exponent codes with a compiled closed form, per smoothing (others take the general pow)
_SUM_CODES = {False: {_E1, _E2, _E3, _E4, _E1HALF}, True: {_E1, _E2, _E3}}
_VJP_CODES = {False: {_E0, _E1, _E2, _E3, _EHALF}, True: {_E0, _E1, _E2}}


def _blocking(B, N, D, itemsize):
    """Queries per parallel block and memories per cache tile for the compiled kernels.

    Blocks of up to 16 queries (a multiple of the register group of 4), fewer when B is small so
    every thread gets work; tiles of memories of ~256 KiB so a tile of M stays in L2 while the
    block's queries pass over it."""
    threads = _nb.get_num_threads()
    per_thread = -(-B // (2 * threads))
    qb = max(_GROUP, min(16, _GROUP * -(-per_thread // _GROUP)))
    nb = max(8, (256 * 1024) // (itemsize * D))
    return qb, min(N, nb)


#: below this many element operations (B N D) a compiled kernel runs on the calling thread alone:
#: starting numba's worker threads costs more than they save on so little work, and far more on a
#: loaded machine, where a worker waits for a core
SERIAL_WORK = 2 ** 18


def _launch(kernel, qb: int, M, Q, *args):
    """kernel(M, Q, *args) on numba's threads, or on one thread (numba.set_num_threads(1) for this
    call, restored after) when the queries Q (B, D) make a single block of ``qb`` or the call has
    fewer than SERIAL_WORK element operations (B N D). Each block is computed by one thread either
    way, so the result is the same."""
    if Q.shape[0] > qb and Q.size * M.shape[0] >= SERIAL_WORK:
        return kernel(M, Q, *args)
    prev = _nb.get_num_threads()
    _nb.set_num_threads(1)
    try:
        return kernel(M, Q, *args)
    finally:
        _nb.set_num_threads(prev)


def _use_numba() -> bool:
    return HAVE_NUMBA


def _power_sums(M, Q, p, eps, out):
    """out[b, mu] = sum_i absx(Q[b, i] - M[mu, i])^p by the compiled kernel or the numpy reference."""
    if not _use_numba():
        return _np_power_sums(M, Q, p, eps, out)
    smooth = eps > 0.0
    code = _exponent_code(p)
    code = code if code in _SUM_CODES[smooth] else _EGEN
    qb, nb = _blocking(Q.shape[0], *M.shape, M.itemsize)
    t = M.dtype.type
    kernel = _kernel("sums", smooth, code)
    with compile_notice(kernel, _LABELS["sums"], M.dtype):
        if Q.shape[0] <= qb and M.shape[0] > nb and Q.size * M.shape[0] >= SERIAL_WORK:
            # one block of queries against several tiles of memories (one query at N = 5000): the
            # threads split the tiles (the same sums: equal to the one-thread result bit for bit)
            kernel(M, Q, out, t(p), t(eps), t(0), t(1), qb, nb, 2 * _nb.get_num_threads())
        else:
            _launch(kernel, qb, M, Q, out, t(p), t(eps), t(0), t(1), qb, nb, 1)
    return out


def _weighted_terms(M, G, W, e, eps, out):
    """out[b] = sum_mu W[b, mu] absx(x)^e dabsx(x), x = G[b] - M[mu] (compiled or numpy)."""
    if not _use_numba():
        return _np_weighted_terms(M, G, W, e, eps, out)
    smooth = eps > 0.0
    code = _exponent_code(e)
    code = code if code in _VJP_CODES[smooth] else _EGEN
    qb, nb = _blocking(G.shape[0], *M.shape, M.itemsize)
    t = M.dtype.type
    kernel = _kernel("vjp", smooth, code)
    with compile_notice(kernel, _LABELS["vjp"], M.dtype):
        _launch(kernel, qb, M, G, W, out, t(e), t(eps), t(1), qb, nb)
    return out


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------

def l1_scores(M, Q, out=None, *, eps=0.0, finite=False):
    """L1 distances (B, N): out[b, mu] = sum_i absx(Q[b, i] - M[mu, i]), absx = |x| or
    sqrt(x^2 + eps^2) - eps. Positive distances; the manhattan similarity is their negative.
    ``finite=True``: M and Q are known free of NaN / inf (a Similarity's validated inputs), so the
    check that reads all of M again (a quarter of one query's time at N = 5000) is skipped."""
    eps = _check_eps(eps)
    M, Q = _pair(M, Q, "queries", finite=finite)
    out = _out(out, (Q.shape[0], M.shape[0]), M.dtype)
    return _power_sums(M, Q, 1.0, eps, out)


def lp_scores(M, Q, p, out=None, *, eps=0.0, finite=False):
    """Lp distances (B, N): out[b, mu] = (sum_i absx(Q[b, i] - M[mu, i])^p)^(1/p); ``finite`` as
    for :func:`l1_scores`."""
    p, eps = _check_p(p), _check_eps(eps)
    M, Q = _pair(M, Q, "queries", finite=finite)
    out = _out(out, (Q.shape[0], M.shape[0]), M.dtype)
    _power_sums(M, Q, p, eps, out)
    if p != 1.0:
        np.power(out, M.dtype.type(1.0 / p), out=out)
    return out


def _weights(F, B, N, dtype):
    F = _matrix(F, "F", dtype)
    if F.shape != (B, N):
        raise ValueError(f"F must have shape (B, N) = {(B, N)} (states x memories), got {F.shape}")
    return F


def l1_vjp(M, G, F, eps=0.0, out=None):
    """(B, D): out[b, i] = sum_mu F[b, mu] dabsx(G[b, i] - M[mu, i]), dabsx = sign (sign(0) = 0)
    or x / sqrt(x^2 + eps^2). The manhattan contraction sum_mu F_mu dS_mu/dg is its negative."""
    eps = _check_eps(eps)
    dtype = _float_dtype(np.asarray(M), np.asarray(G), np.asarray(F))
    M, G = _pair(M, G, "states", dtype)
    F = _weights(F, G.shape[0], M.shape[0], dtype)
    out = _out(out, G.shape, dtype)
    return _weighted_terms(M, G, F, 0.0, eps, out)


def lp_vjp(M, G, F, p, eps=0.0, dist=None, out=None):
    """(B, D): out[b, i] = sum_mu Fs[b, mu] absx(x)^(p-1) dabsx(x), x = G[b, i] - M[mu, i],
    Fs = F / dist^(p-1) (0 where dist = 0), dist = lp_scores(M, G, p, eps=eps) unless given.

    The minkowski contraction sum_mu F_mu dS_mu/dg (S = -dist) is its negative; pass ``dist``
    when the scores at G are already at hand (the dynamics compute them for the h equation)."""
    p, eps = _check_p(p), _check_eps(eps)
    dtype = _float_dtype(np.asarray(M), np.asarray(G), np.asarray(F))
    M, G = _pair(M, G, "states", dtype)
    B, N = G.shape[0], M.shape[0]
    F = _weights(F, B, N, dtype)
    out = _out(out, G.shape, dtype)
    if p == 1.0:
        return _weighted_terms(M, G, F, 0.0, eps, out)
    if dist is None:
        dist = lp_scores(M, G, p, eps=eps)
    else:
        dist = _matrix(dist, "dist", dtype)
        if dist.shape != (B, N):
            raise ValueError(f"dist must have shape (B, N) = {(B, N)}, got {dist.shape}")
        if np.any(dist < 0):
            raise ValueError("dist must be nonnegative (distances, not similarities)")
    scale = np.zeros_like(dist)
    np.power(dist, dtype.type(1.0 - p), out=scale, where=dist > 0)
    scale *= F
    return _weighted_terms(M, G, scale, p - 1.0, eps, out)


def l1_scores_vjp(M, G, F, eps=0.0, *, finite=False):
    """(l1_scores(M, G, eps=eps), l1_vjp(M, G, F, eps)) in one pass over the (B, N, D) pairs.

    What one right-hand side of the manhattan dynamics needs (S(g) for the memory neurons and
    sum_mu F_mu dS_mu/dg for the feature neurons); for eps > 0 the sqrt(x^2 + eps^2) behind both
    is computed once per element, which is most of the cost. ``finite=True`` skips the NaN / inf
    check of M and G (a non-finite entry then gives non-finite distances, for the caller to see)."""
    eps = _check_eps(eps)
    dtype = _float_dtype(np.asarray(M), np.asarray(G), np.asarray(F))
    M, G = _pair(M, G, "states", dtype, finite=finite)
    F = _weights(F, G.shape[0], M.shape[0], dtype)
    S = np.empty((G.shape[0], M.shape[0]), dtype)
    V = np.empty(G.shape, dtype)
    if not _use_numba():
        return _np_power_sums(M, G, 1.0, eps, S), _np_weighted_terms(M, G, F, 0.0, eps, V)
    t = dtype.type
    qb, nb = _blocking(G.shape[0], *M.shape, M.itemsize)
    kernel = _kernel("fused", eps > 0.0, 1)
    with compile_notice(kernel, _LABELS["fused"], dtype):
        _launch(kernel, qb, M, G, F, S, V, t(eps), t(0), t(1), qb, nb)
    return S, V


# ----------------------------------------------------------------------------------------------
# the elementwise finish of the GEMM-form squared distances (euclidean, squared_euclidean)
# ----------------------------------------------------------------------------------------------

def _finish_sq_dist_np(G, q2, m2, eps, root):
    """In place on G = Q @ M.T (B, N): d2 = max((-2 G + |q_b|^2) + |m_mu|^2, 0) (NaN stays NaN),
    then with ``root`` the euclidean score eps - sqrt(d2 + eps^2) (-sqrt(d2) for eps = 0), else
    d2 itself. The reference: numpy, one pass per operation."""
    G *= -2.0
    G += q2[:, None]
    G += m2[None, :]
    np.maximum(G, 0.0, out=G)
    if root:
        if eps:
            G += eps * eps
        np.sqrt(G, out=G)
        np.negative(G, out=G)
        if eps:
            G += eps
    return G


if HAVE_NUMBA:
    @jit()
    def _finish_sq_dist_kernel(G, q2, m2, minus_two, zero, eps, eps2, root, smooth):
        # the numpy reference's operations in its order, per element (no fastmath: nothing is
        # contracted or reordered, so the two agree bit for bit); constants come in G's dtype.
        # One thread: the pass is memory-bound, and a parallel loop's static schedule waits for
        # any thread that another process has descheduled
        B, N = G.shape
        for b in range(B):
            qb = q2[b]
            row = G[b]
            for n in range(N):
                x = (minus_two * row[n] + qb) + m2[n]
                if x < zero:            # NaN fails the test and stays NaN, as np.maximum keeps it
                    x = zero
                if root:
                    if smooth:
                        x = x + eps2
                    x = -np.sqrt(x)
                    if smooth:
                        x = x + eps
                row[n] = x
        return G


def finish_sq_dist(G, q2, m2, eps: float = 0.0, root: bool = False):
    """:func:`_finish_sq_dist_np` in one compiled pass over G (numba), else numpy; G is
    overwritten and returned. G, q2, m2 of one float dtype (float32 or float64)."""
    if not _use_numba() or G.dtype not in (np.float32, np.float64) or \
            not (q2.dtype == m2.dtype == G.dtype) or not G.flags.c_contiguous:
        return _finish_sq_dist_np(G, q2, m2, eps, root)
    t = G.dtype.type
    with compile_notice(_finish_sq_dist_kernel, _LABELS["sq_dist"], G.dtype):
        return _finish_sq_dist_kernel(G, q2, m2, t(-2.0), t(0.0), t(eps), t(eps * eps), bool(root),
                                      eps > 0.0)
