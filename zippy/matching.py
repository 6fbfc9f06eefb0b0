"""Exact brute-force descriptor matching: Hamming for packed bits, L2 for floats. Never imports torch.

Hamming backends, fastest first (``available_backends()``; ``backend()`` names the one that runs):

* ``"native"``: compiled C kernels (``zippy/_hamming.c``, built when the package is installed; nothing
  to compile at run time). One build serves every x86-64 CPU: the instruction set is chosen at run time,
  AVX-512 VPOPCNTDQ, else AVX2 (nibble-lookup popcount with VPSHUFB), else scalar POPCNT; portable C
  elsewhere. ``ZIPPY_MATCHER_ISA=avx2`` (or ``avx512``, ``popcnt``, ``generic``) forces one, e.g. to
  benchmark the AVX2 path on an AVX-512 machine; :func:`native_isa` tells which one runs.
* ``"numba"``: the same algorithm JIT-compiled by numba (``zippy/_matching_kernels.py``); the first call
  of a fresh install compiles for seconds, later processes load numba's on-disk cache.
* ``"numpy"``: the distances as an exact float32 GEMM of the unpacked bits
  (``|a - b|^2 = |a|^2 + |b|^2 - 2 a.b`` is an exact integer there).

All backends give identical results; ``backend="auto"`` takes the first available.

Semantics (shared by every function here):

* Ties: the lowest index wins, in both directions, as OpenCV's ``cv2.BFMatcher`` (checked: its
  ``knnMatch`` lists equal distances in increasing train index, and ``crossCheck=True`` keeps (i, j)
  iff j is the first nearest column of row i and i the first nearest row of column j).
* ``mutual=True`` equals ``cv2.BFMatcher(norm, crossCheck=True).match``.
* ``ratio=r`` keeps a nearest neighbour at distance d1 iff ``d1 < r * d2`` (strict, compared in
  float64) with d2 the second-smallest distance of the row, i.e. ``m.distance < r * n.distance`` on
  ``knnMatch(k=2)``. Equal distances (d1 == d2) therefore fail. When the second set has a single
  descriptor there is no d2 and the test passes.
* ``max_distance=t`` keeps d1 <= t (inclusive).
* Filters combine with AND; pairs come sorted by their index in the first set.
* Memory stays O(N0 + N1) plus fixed-size blocks: a 10^6-descriptor database matched against 10^3
  queries never builds the 10^9 distance matrix.
* Threads: 1 by default; ``threads=`` (or :func:`set_num_threads`) splits the rows into chunks run in
  parallel (native: Python threads, the GIL is released; numba: its thread pool); results do not
  depend on it (each chunk reduces its own rows, column minima merge in row order). The numpy path
  runs its GEMM in BLAS, limited through threadpoolctl when that is installed (else by the usual
  ``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS`` set before numpy starts); its results are exact too.

Example::

    pairs, dist = match_hamming(f0.descriptors, f1.descriptors)            # mutual nearest neighbours
    m0 = matches_to_matches0(pairs, len(f0))                                # hloc / LightGlue form
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import numpy as np

__all__ = [
    "available_backends",
    "backend",
    "get_num_threads",
    "hamming_distances",
    "knn_hamming",
    "knn_l2",
    "match_guided",
    "match_hamming",
    "match_l2",
    "matches0_to_matches",
    "matches_to_matches0",
    "max_num_threads",
    "native_isa",
    "set_num_threads",
    "warmup",
]

logger = logging.getLogger(__name__)

_BIG = 1 << 30  # "no distance" sentinel in int32 results (same value as the kernels' BIG)
_INT64_MAX = np.iinfo(np.int64).max
_BLOCK_ELEMS = 1 << 22  # numpy path: distance blocks of at most 4M float32 (16 MiB)
_COL_BLOCK = 4096  # numpy path: columns per block
_MAX_BYTES = 1 << 16  # widest binary descriptor accepted (keeps the numpy GEMM keys exact)
_NATIVE_MIN_ROWS = 64  # native threads: at least this many rows per chunk
_ISA_ENV = "ZIPPY_MATCHER_ISA"
_default_threads: int | None = None
_kernels: Any = None
_native: Any = None  # the compiled module, False when it is not built
_pool: Any = None  # (size, ThreadPoolExecutor) of the native backend, created on first parallel call


# ----------------------------------------------------------------------------------------- backends
def _numba_installed() -> bool:
    return importlib.util.find_spec("numba") is not None


def _native_module() -> Any:
    """The compiled kernels (zippy._hamming) or None when the extension was not built."""
    global _native
    if _native is None:
        try:
            from zippy import _hamming
        except ImportError as e:
            logger.debug("compiled Hamming kernels not available (%s); using numba / numpy", e)
            _native = False
        else:
            _native = _hamming
    return _native or None


def available_backends() -> list[str]:
    """Backends usable here, fastest first: a sublist of ``["native", "numba", "numpy"]``."""
    out = ["native"] if _native_module() is not None else []
    return [*out, "numba", "numpy"] if _numba_installed() else [*out, "numpy"]


def native_isa() -> str | None:
    """The instruction set the native kernels use: ``"avx512"``, ``"avx2"``, ``"popcnt"`` or ``"generic"``.

    The best one the CPU supports, unless the environment variable ``ZIPPY_MATCHER_ISA`` names another
    (read at every call, so a benchmark can switch paths). None when the extension is not built.

    Raises:
        ValueError: ``ZIPPY_MATCHER_ISA`` names an unknown ISA or one this CPU lacks.
    """
    mod = _native_module()
    if mod is None:
        return None
    isas = mod.isas()
    want = os.environ.get(_ISA_ENV, "").strip().lower()
    if not want or want == "auto":
        return isas[0]
    if want not in isas:
        raise ValueError(f"{_ISA_ENV}={want!r}: this CPU supports {', '.join(isas)} (or 'auto')")
    return want


def backend(name: str = "auto") -> str:
    """What runs for ``backend=name``: e.g. ``"native (avx2)"``, ``"numba"`` or ``"numpy"``."""
    resolved = _resolve_backend(name)
    return f"native ({native_isa()})" if resolved == "native" else resolved


def _resolve_backend(backend: str) -> str:
    if backend == "auto":
        return available_backends()[0]
    if backend not in ("native", "numba", "numpy"):
        raise ValueError(f"backend must be one of 'auto', 'native', 'numba', 'numpy', got {backend!r}")
    if backend == "numba" and not _numba_installed():
        raise ValueError("backend='numba' requested but numba is not installed (pip install numba)")
    if backend == "native" and _native_module() is None:
        raise ValueError(
            "backend='native' requested but the compiled kernels are not built (reinstall with a C compiler: "
            "pip install -e .)"
        )
    return backend


def _get_kernels() -> Any:
    global _kernels
    if _kernels is None:
        from zippy import _matching_kernels

        _kernels = _matching_kernels
    return _kernels


def set_num_threads(n: int | None) -> None:
    """Threads of later calls that pass no ``threads=`` (native / numba); None restores the default, 1.

    More than one thread needs ``n <= NUMBA_NUM_THREADS`` (numba's pool size, fixed at start-up).
    The default is 1 because the typical sizes (N <= a few thousand) gain little from a second thread
    and a busy machine makes a parallel region wait for its slowest thread.
    """
    global _default_threads
    if n is not None:
        _check_threads(n)
    _default_threads = n


def get_num_threads() -> int:
    """Threads a call without ``threads=`` uses (see :func:`set_num_threads`)."""
    return 1 if _default_threads is None else _default_threads


def max_num_threads() -> int | None:
    """The most threads :func:`set_num_threads` accepts: numba's pool size (None without numba: no limit)."""
    if not _numba_installed():
        return None
    import numba

    return int(numba.config.NUMBA_NUM_THREADS)


def _check_threads(n: Any, numba_limit: bool = True) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"threads must be a positive int, got {n!r}")
    limit = max_num_threads() if numba_limit else None
    if limit is not None and n > limit:
        raise ValueError(f"threads must be <= NUMBA_NUM_THREADS = {limit} (set it before starting), got {n}")
    return int(n)


@contextmanager
def _numba_threads(n: int):
    import numba

    old = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(old)


@contextmanager
def _blas_threads(n: int | None):
    if n is None or importlib.util.find_spec("threadpoolctl") is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=n, user_api="blas"):
        yield


def warmup(backend: str = "auto", threads: int | None = None) -> float:
    """Compile (or load from numba's cache) the numba Hamming kernels; returns the seconds it took.

    Only the numba backend needs it: its first call in a fresh environment compiles (several seconds);
    later processes load the kernels from numba's on-disk cache (``cache=True``). The parallel kernels
    are only prepared when ``threads`` (default :func:`get_num_threads`) is > 1. The native backend is
    compiled ahead of time and the numpy one needs nothing: for them this returns 0 at once.
    """
    if _resolve_backend(backend) != "numba":
        return 0.0
    nthreads = _threads_for(threads, "numba")
    t0 = time.perf_counter()
    d = np.zeros((256, 32), np.uint8)  # >= 64 rows per thread, so the parallel kernels run too
    for t in sorted({1, nthreads}):
        match_hamming(d, d, ratio=0.9, backend="numba", threads=t)
        knn_hamming(d, d, k=2, backend="numba", threads=t)
    return time.perf_counter() - t0


# --------------------------------------------------------------------------------------- validation
def _describe(x: Any) -> str:
    if isinstance(x, np.ndarray):
        order = "" if x.flags.c_contiguous else " non-contiguous"
        return f"{x.dtype}{order} [{','.join(str(s) for s in x.shape)}]"
    return type(x).__name__


def _check_pair(d0: Any, d1: Any, kind: str) -> None:
    """Validate two descriptor sets; kind is 'binary' (uint8 packed bits) or 'float'."""
    want = "uint8 [N,B] packed bits" if kind == "binary" else "float [N,D]"
    for name, d in (("d0", d0), ("d1", d1)):
        if not isinstance(d, np.ndarray):
            raise ValueError(f"{name} must be a numpy array {want}, got {_describe(d)}")
        if kind == "binary" and d.dtype != np.uint8:
            hint = " (float descriptors: use match_l2 / knn_l2)" if np.issubdtype(d.dtype, np.floating) else ""
            raise ValueError(f"{name} must be {want}{hint}, got {_describe(d)}")
        if kind == "float" and not np.issubdtype(d.dtype, np.floating):
            hint = " (packed binary descriptors: use match_hamming / knn_hamming)" if d.dtype == np.uint8 else ""
            raise ValueError(f"{name} must be {want}{hint}, got {_describe(d)}")
        if d.ndim != 2:
            raise ValueError(f"{name} must be 2-D {want}, got {_describe(d)}")
        if d.shape[1] == 0:
            raise ValueError(
                f"{name} must have at least one {'byte' if kind == 'binary' else 'dimension'}, got {_describe(d)}"
            )
        if kind == "binary" and d.shape[1] > _MAX_BYTES:
            raise ValueError(f"{name} must be at most {_MAX_BYTES} bytes wide, got {_describe(d)}")
        if not d.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous (np.ascontiguousarray), got {_describe(d)}")
    if d0.shape[1] != d1.shape[1]:
        raise ValueError(f"d0 and d1 must have the same width, got {_describe(d0)} and {_describe(d1)}")
    if kind == "float":
        for name, d in (("d0", d0), ("d1", d1)):
            if d.size and not np.isfinite(d).all():
                raise ValueError(f"{name} must be finite, got NaN or inf in {_describe(d)}")


def _check_options(ratio: float | None, max_distance: float | None) -> None:
    if ratio is not None and not (isinstance(ratio, (int, float, np.floating)) and 0 < ratio <= 1):
        raise ValueError(f"ratio must be a number in (0, 1] or None, got {ratio!r}")
    if max_distance is not None and not (
        isinstance(max_distance, (int, float, np.integer, np.floating)) and max_distance >= 0
    ):
        raise ValueError(f"max_distance must be a number >= 0 or None, got {max_distance!r}")


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    return int(k)


def _threads_for(threads: int | None, backend: str) -> int | None:
    """numba: the thread count to use; numpy: the BLAS limit (None = leave BLAS alone)."""
    if threads is None:
        return get_num_threads() if backend in ("native", "numba") else None
    return _check_threads(threads, numba_limit=backend == "numba")


# ------------------------------------------------------------------------------ shared finalisation
def _finalize(
    rd: np.ndarray,
    ri: np.ndarray,
    rs: np.ndarray,
    ci: np.ndarray | None,
    mutual: bool,
    ratio: float | None,
    max_distance: float | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs from per-row best (rd distance, ri index), second-best rs and per-column best row ci.

    rd / rs hold ``inf`` (float) or ``>= _BIG`` (int) where there is no neighbour; ci must be given
    (N1 >= 1) when mutual is set.
    """
    keep = ri >= 0
    if mutual and ci is not None:
        keep &= ci[np.where(keep, ri, 0)] == np.arange(ri.shape[0])
    if ratio is not None:
        second = rs.astype(np.float64)
        if np.issubdtype(rs.dtype, np.integer):
            second[rs >= _BIG] = np.inf
        keep &= rd.astype(np.float64) < float(ratio) * second
    if max_distance is not None:
        keep &= rd.astype(np.float64) <= float(max_distance)
    idx = np.flatnonzero(keep)
    pairs = np.stack([idx, ri[idx].astype(np.int64)], axis=1).astype(np.int64, copy=False)
    return pairs.reshape(-1, 2), rd[idx]


def _empty_result(dist_dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 2), np.int64), np.zeros((0,), dist_dtype)


# -------------------------------------------------------------------------------- numba (Hamming)
def _to_words(d: np.ndarray) -> np.ndarray:
    """uint8 [N,B] -> uint64 [N,W], W a multiple of 4, zero-padded (zeros add no Hamming distance)."""
    n, nbytes = d.shape
    width = -(-nbytes // 32) * 32
    if width == nbytes:
        words = d.view(np.uint64)
        return words if words.flags.aligned else words.copy()  # numba wants aligned data
    out = np.zeros((n, width), np.uint8)
    out[:, :nbytes] = d
    return out.view(np.uint64)


def _nn_numba(d0: np.ndarray, d1: np.ndarray, want_second: bool, want_cols: bool, threads: int):
    kern = _get_kernels()
    a = _to_words(d0)
    bt = np.ascontiguousarray(_to_words(d1).T)
    chunks = min(threads, max(1, d0.shape[0] // 64))
    if chunks == 1:
        return kern.nn_serial(a, bt, want_second, want_cols)
    with _numba_threads(threads):
        return kern.nn_parallel(a, bt, np.int64(chunks), want_second, want_cols)


def _knn_numba(d0: np.ndarray, d1: np.ndarray, k: int, threads: int):
    kern = _get_kernels()
    a = _to_words(d0)
    bt = np.ascontiguousarray(_to_words(d1).T)
    chunks = min(threads, max(1, d0.shape[0] // 64))
    if chunks == 1:
        return kern.knn_serial(a, bt, np.int64(k))
    with _numba_threads(threads):
        return kern.knn_parallel(a, bt, np.int64(k), np.int64(chunks))


# ---------------------------------------------------------------------------- native (C, Hamming)
def _native_chunks(n0: int, threads: int) -> list[tuple[int, int]]:
    chunks = max(1, min(threads, n0 // _NATIVE_MIN_ROWS))
    return [(c * n0 // chunks, (c + 1) * n0 // chunks) for c in range(chunks)]


def _run_chunks(fn: Callable[[int, int], Any], chunks: list[tuple[int, int]]) -> list[Any]:
    """fn(r0, r1) for every row chunk: in this thread when there is one, else in the thread pool."""
    global _pool
    if len(chunks) == 1:
        return [fn(*chunks[0])]
    if _pool is None or _pool[0] < len(chunks):
        from concurrent.futures import ThreadPoolExecutor

        _pool = (len(chunks), ThreadPoolExecutor(max_workers=len(chunks), thread_name_prefix="zippy-matching"))
    return list(_pool[1].map(lambda c: fn(*c), chunks))


def _nn_native(d0: np.ndarray, d1: np.ndarray, want_second: bool, want_cols: bool, threads: int):
    """(rd, ri, rs, ci) int32 from the compiled kernels; column minima of row chunks merge in row order."""
    mod, isa = _native_module(), native_isa()
    n0, n1, nbytes = d0.shape[0], d1.shape[0], d0.shape[1]
    rd, ri, rs = (np.empty(n0, np.int32) for _ in range(3))

    def run(r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
        cd, ci = np.empty(n1, np.int32), np.empty(n1, np.int32)
        mod.nn(isa, d0[r0:r1], d1, nbytes, want_second, want_cols, rd[r0:r1], ri[r0:r1], rs[r0:r1], cd, ci)
        return cd, ci + np.int32(r0) * (ci >= 0)

    chunks = _native_chunks(n0, threads)
    parts = _run_chunks(run, chunks)
    cd, ci = parts[0]
    for cd_c, ci_c in parts[1:]:  # later chunks hold later rows: strict '<' keeps the first row on ties
        better = cd_c < cd
        cd, ci = np.where(better, cd_c, cd), np.where(better, ci_c, ci)
    return rd, ri, rs, ci


def _knn_native(d0: np.ndarray, d1: np.ndarray, k: int, threads: int) -> tuple[np.ndarray, np.ndarray]:
    """(distances int32 [N0, k] (_BIG = none), indices int32 [N0, k] (-1 = none)); rows are independent."""
    mod, isa = _native_module(), native_isa()
    n0, nbytes = d0.shape[0], d0.shape[1]
    topd, topi = np.empty((n0, k), np.int32), np.empty((n0, k), np.int32)
    _run_chunks(
        lambda r0, r1: mod.knn(isa, d0[r0:r1], d1, nbytes, k, topd[r0:r1], topi[r0:r1]), _native_chunks(n0, threads)
    )
    return topd, topi


# ------------------------------------------------------------------------------ numpy (GEMM blocks)
class _Gemm:
    """Distance blocks from one float32 GEMM of augmented vectors.

    With ``a' = [a, |a|^2 * R + r, 1]`` and ``b' = [-2 R b, 1, |b|^2 * R]`` a GEMM gives
    ``K = R * |a - b|^2 + r`` where r is the row's position inside its block (binary) or 0 (float, R = 1).
    For Hamming the vectors are the unpacked bits, so every term and every partial sum is an integer
    below 2^24 (the row block is sized for that): K is exact, ``K.argmin(1)`` finds the first nearest
    column and ``K.min(0)`` encodes both the distance and the first nearest row of every column.
    Rows / columns are converted block by block, so memory stays bounded for huge databases.
    """

    def __init__(self, d0: np.ndarray, d1: np.ndarray, binary: bool):
        self.d0, self.d1, self.binary = d0, d1, binary
        n0, n1 = d0.shape[0], d1.shape[0]
        self.col_block = max(1, min(n1, _COL_BLOCK))
        rows = max(1, min(n0, _BLOCK_ELEMS // self.col_block))
        if binary:  # |partial sums| <= R * (4 * bits + 1) < 2^24 keeps float32 exact
            rows = max(1, min(rows, ((1 << 24) - 1) // (4 * 8 * d0.shape[1] + 1)))
        self.row_block = rows
        self.scale = float(rows) if binary else 1.0

    def _vectors(self, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.binary:
            v = np.unpackbits(d, axis=1).astype(np.float32)
            return v, v.sum(axis=1)
        v = d.astype(np.float32, copy=False)
        return v, np.einsum("ij,ij->i", v, v)

    def blocks(self):
        """Yield (c0, c1, [(r0, r1), ...]): column blocks with their row blocks, in increasing order."""
        n0, n1 = self.d0.shape[0], self.d1.shape[0]
        rows = [(r, min(r + self.row_block, n0)) for r in range(0, n0, self.row_block)]
        for c0 in range(0, n1, self.col_block):
            c1 = min(c0 + self.col_block, n1)
            b, sb = self._vectors(self.d1[c0:c1])
            ones = np.ones((c1 - c0, 1), np.float32)
            self._cols = np.concatenate([b * (-2.0 * self.scale), ones, (sb * self.scale)[:, None]], axis=1)
            yield c0, c1, rows

    def keys(self, r0: int, r1: int) -> np.ndarray:
        """K float32 [r1 - r0, c1 - c0] for the current column block (see the class docstring)."""
        a, sa = self._vectors(self.d0[r0:r1])
        offset = np.arange(r1 - r0, dtype=np.float32) if self.binary else np.zeros(r1 - r0, np.float32)
        rows = np.concatenate([a, (sa * self.scale + offset)[:, None], np.ones((r1 - r0, 1), np.float32)], axis=1)
        k = rows @ self._cols.T
        if not self.binary:
            np.maximum(k, 0.0, out=k)  # rounding can make |a - b|^2 slightly negative
        return k

    def distances(self, k: np.ndarray, offset: np.ndarray) -> np.ndarray:
        """Distances (float64; squared for float vectors) from keys of rows at ``offset`` in the block."""
        if not self.binary:
            return k.astype(np.float64)
        return (k.astype(np.float64) - offset) / self.scale


def _nn_numpy(d0: np.ndarray, d1: np.ndarray, binary: bool, want_second: bool, want_cols: bool):
    """Same outputs as the numba kernels: float64 distances (squared for floats), int64 indices."""
    n0, n1 = d0.shape[0], d1.shape[0]
    rd = np.full(n0, np.inf)
    ri = np.full(n0, -1, np.int64)
    rs = np.full(n0, np.inf)
    cd = np.full(n1, np.inf)
    ci = np.full(n1, -1, np.int64)
    gemm = _Gemm(d0, d1, binary)
    for c0, c1, rows in gemm.blocks():
        for r0, r1 in rows:
            k = gemm.keys(r0, r1)
            local = np.arange(r1 - r0)
            if want_cols:  # before the row pass, which overwrites the row minima
                kmin = k.min(axis=0)
                if binary:  # kmin = R * d + first row
                    kint = kmin.astype(np.int64)
                    db = (kint // int(gemm.scale)).astype(np.float64)
                    ib = kint % int(gemm.scale)
                else:
                    db = kmin.astype(np.float64)
                    ib = (k == kmin).argmax(axis=0)  # first row on ties
                better = db < cd[c0:c1]  # earlier row blocks win ties
                cd[c0:c1] = np.where(better, db, cd[c0:c1])
                ci[c0:c1] = np.where(better, ib + r0, ci[c0:c1])
            jb = k.argmin(axis=1)  # first column on ties
            dmin = gemm.distances(k[local, jb], local)
            old = rd[r0:r1]
            improve = dmin < old  # earlier column blocks win ties
            if want_second:
                if k.shape[1] > 1:
                    k[local, jb] = np.inf
                    s = gemm.distances(k.min(axis=1), local)
                else:
                    s = np.full(r1 - r0, np.inf)
                rs[r0:r1] = np.where(improve, np.minimum(s, old), np.minimum(rs[r0:r1], dmin))
            rd[r0:r1] = np.where(improve, dmin, old)
            ri[r0:r1] = np.where(improve, jb + c0, ri[r0:r1])
    return rd, ri, rs, cd, ci


def _knn_numpy(d0: np.ndarray, d1: np.ndarray, k: int, binary: bool) -> tuple[np.ndarray, np.ndarray]:
    """k nearest (squared for floats) distances float64 [N0,k] (inf = none) and indices int64 [N0,k] (-1 = none).

    Candidates are ranked by the int64 key (float32 bits of the distance << 32 | column): non-negative
    float32 bit patterns sort like the values, so the key orders by distance, then by lowest index.
    """
    n0 = d0.shape[0]
    keys = np.full((n0, k), _INT64_MAX, np.int64)
    gemm = _Gemm(d0, d1, binary)
    for c0, c1, rows in gemm.blocks():
        cols = np.arange(c0, c1, dtype=np.int64)
        for r0, r1 in rows:
            dist = gemm.distances(gemm.keys(r0, r1), np.arange(r1 - r0)[:, None]).astype(np.float32)
            bk = (dist.view(np.int32).astype(np.int64) << 32) | cols[None, :]
            allk = np.concatenate([keys[r0:r1], bk], axis=1)
            if allk.shape[1] > k:
                allk = np.partition(allk, k - 1, axis=1)[:, :k]
            keys[r0:r1] = np.sort(allk, axis=1)
    valid = keys != _INT64_MAX
    idx = np.where(valid, keys & 0xFFFFFFFF, -1)
    dist = (keys >> 32).astype(np.int32).view(np.float32).astype(np.float64)
    return np.where(valid, dist, np.inf), idx


# ----------------------------------------------------------------------------------------- Hamming
def _nn_hamming(d0, d1, want_second, want_cols, backend, threads):
    """(rd int32, ri int64, rs int32 (>= _BIG: none), ci int64) for Hamming by any backend."""
    if backend == "native":
        rd, ri, rs, ci = _nn_native(d0, d1, want_second, want_cols, threads)
        return rd, ri.astype(np.int64), rs, ci.astype(np.int64)
    if backend == "numba":
        rd, ri, rs, _, ci = _nn_numba(d0, d1, want_second, want_cols, threads)
        return rd, ri.astype(np.int64), rs, ci.astype(np.int64)
    with _blas_threads(threads):
        rd, ri, rs, _, ci = _nn_numpy(d0, d1, True, want_second, want_cols)
    none = np.int32(_BIG)
    to_int = lambda x: np.where(np.isfinite(x), x, none).astype(np.int32)  # noqa: E731
    return to_int(rd), ri, to_int(rs), ci


def match_hamming(
    d0: np.ndarray,
    d1: np.ndarray,
    *,
    mutual: bool = True,
    ratio: float | None = None,
    max_distance: float | None = None,
    threads: int | None = None,
    backend: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour matching of packed binary descriptors by Hamming distance.

    Args:
        d0: uint8 [N0, B] packed bits (B = 32 for 256-bit descriptors; any B >= 1), C-contiguous.
        d1: uint8 [N1, B] packed bits, same B.
        mutual: keep (i, j) only if i is also the nearest row of column j (cv2 crossCheck=True).
        ratio: Lowe's test, keep iff d1 < ratio * d2 (strict; no second neighbour passes). None = off.
        max_distance: keep iff distance <= max_distance. None = off.
        threads: threads for this call (default :func:`get_num_threads`); results do not depend on it.
        backend: "auto" (the first of :func:`available_backends`), "native", "numba" or "numpy" (identical
            results; see the module docstring).

    Returns:
        pairs: int64 [K, 2], (index in d0, index in d1), sorted by the first column.
        distances: int32 [K] Hamming distances of the pairs.

    Raises:
        ValueError: wrong type, dtype (e.g. float), ndim, width, non-contiguous input or bad options.
    """
    _check_pair(d0, d1, "binary")
    _check_options(ratio, max_distance)
    backend = _resolve_backend(backend)
    nthreads = _threads_for(threads, backend)
    if d0.shape[0] == 0 or d1.shape[0] == 0:
        return _empty_result(np.int32)
    rd, ri, rs, ci = _nn_hamming(d0, d1, ratio is not None, mutual, backend, nthreads)
    return _finalize(rd, ri, rs, ci if mutual else None, mutual, ratio, max_distance)


def knn_hamming(
    d0: np.ndarray,
    d1: np.ndarray,
    k: int = 2,
    *,
    max_distance: float | None = None,
    threads: int | None = None,
    backend: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest descriptors of d1 for every descriptor of d0 (e.g. candidates from a map database).

    Neighbours are ordered by distance, then by index (as ``cv2.BFMatcher.knnMatch``). Memory is
    O((N0 + N1) * B + N0 * k): a database of 10^6 descriptors is streamed, never a full distance matrix.

    Args:
        d0: uint8 [N0, B] packed bits (queries).
        d1: uint8 [N1, B] packed bits (database).
        k: neighbours per query, >= 1.
        max_distance: neighbours farther than this (distance > max_distance) are dropped (-1).
        threads: threads for this call; results do not depend on it.
        backend: "auto", "native", "numba" or "numpy".

    Returns:
        indices: int64 [N0, k] indices into d1, -1 where there is no (k-th) neighbour.
        distances: int32 [N0, k] Hamming distances, -1 where the index is -1.
    """
    _check_pair(d0, d1, "binary")
    _check_options(None, max_distance)
    k = _check_k(k)
    backend = _resolve_backend(backend)
    nthreads = _threads_for(threads, backend)
    n0 = d0.shape[0]
    if n0 == 0 or d1.shape[0] == 0:
        return np.full((n0, k), -1, np.int64), np.full((n0, k), -1, np.int32)
    if backend in ("native", "numba"):
        dist, idx = (_knn_native if backend == "native" else _knn_numba)(d0, d1, k, nthreads)
        idx = idx.astype(np.int64)
    else:
        with _blas_threads(nthreads):
            fdist, idx = _knn_numpy(d0, d1, k, binary=True)
        dist = np.where(idx >= 0, fdist, 0).astype(np.int32)
    valid = idx >= 0
    if max_distance is not None:
        valid &= dist <= max_distance
    return np.where(valid, idx, -1), np.where(valid, dist, -1).astype(np.int32)


def hamming_distances(d0: np.ndarray, d1: np.ndarray) -> np.ndarray:
    """Full Hamming distance matrix int32 [N0, N1] (memory N0 * N1 * 4 bytes: for small sets and tests)."""
    _check_pair(d0, d1, "binary")
    out = np.empty((d0.shape[0], d1.shape[0]), np.int32)
    gemm = _Gemm(d0, d1, binary=True)
    for c0, c1, rows in gemm.blocks():
        for r0, r1 in rows:
            out[r0:r1, c0:c1] = gemm.distances(gemm.keys(r0, r1), np.arange(r1 - r0)[:, None])
    return out


# ---------------------------------------------------------------------------------------------- L2
def match_l2(
    d0: np.ndarray,
    d1: np.ndarray,
    *,
    mutual: bool = True,
    ratio: float | None = None,
    max_distance: float | None = None,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour matching of float descriptors by Euclidean distance (options as match_hamming).

    Distances come from a float32 GEMM (``|a|^2 + |b|^2 - 2 a.b``), so they can differ from OpenCV's
    direct sums in the last bits; exact ties (e.g. duplicate descriptors) resolve to the lowest index.

    Args:
        d0: float [N0, D] (float32 preferred; other float dtypes are converted), C-contiguous, finite.
        d1: float [N1, D].
        mutual: keep (i, j) only if i is also the nearest row of column j (cv2 crossCheck=True).
        ratio: keep iff d1 < ratio * d2 on Euclidean (not squared) distances. None = off.
        max_distance: keep iff Euclidean distance <= max_distance. None = off.
        threads: BLAS threads for this call (needs threadpoolctl; otherwise BLAS's own setting).

    Returns:
        pairs: int64 [K, 2] sorted by the first column; distances: float32 [K] Euclidean distances.
    """
    _check_pair(d0, d1, "float")
    _check_options(ratio, max_distance)
    if threads is not None:
        threads = _check_threads(threads, numba_limit=False)
    if d0.shape[0] == 0 or d1.shape[0] == 0:
        return _empty_result(np.float32)
    with _blas_threads(threads):
        rd, ri, rs, _, ci = _nn_numpy(d0, d1, False, ratio is not None, mutual)
    rd, rs = np.sqrt(rd).astype(np.float32), np.sqrt(rs).astype(np.float32)
    return _finalize(rd, ri, rs, ci if mutual else None, mutual, ratio, max_distance)


def knn_l2(
    d0: np.ndarray, d1: np.ndarray, k: int = 2, *, max_distance: float | None = None, threads: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """k nearest float descriptors by Euclidean distance: (indices int64 [N0,k], distances float32 [N0,k]).

    Missing neighbours have index -1 and distance inf. Ordered by distance, then index.
    """
    _check_pair(d0, d1, "float")
    _check_options(None, max_distance)
    k = _check_k(k)
    if threads is not None:
        threads = _check_threads(threads, numba_limit=False)
    n0 = d0.shape[0]
    if n0 == 0 or d1.shape[0] == 0:
        return np.full((n0, k), -1, np.int64), np.full((n0, k), np.inf, np.float32)
    with _blas_threads(threads):
        sq, idx = _knn_numpy(d0, d1, k, binary=False)
    dist = np.sqrt(sq).astype(np.float32)
    valid = idx >= 0
    if max_distance is not None:
        valid &= dist <= max_distance
    return np.where(valid, idx, -1), np.where(valid, dist, np.float32(np.inf)).astype(np.float32)


# ----------------------------------------------------------------------------------------- guided
def _check_points(p: Any, n: int, name: str) -> np.ndarray:
    if not isinstance(p, np.ndarray) or p.ndim != 2 or p.shape != (n, 2) or not np.issubdtype(p.dtype, np.number):
        raise ValueError(f"{name} must be a float array [{n},2] (x, y), got {_describe(p)}")
    return p.astype(np.float64)


def _radius_candidates(pred: np.ndarray, kpts: np.ndarray, radius: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (i, j) with |pred_i - kpts_j| <= radius_i, found through a uniform grid of keypoint buckets.

    Returns int64 arrays i [C], j [C] sorted by i then j. Predictions that are not finite get none.
    """
    n1 = kpts.shape[0]
    ok = np.isfinite(pred).all(axis=1)
    if n1 == 0 or not ok.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    lo = kpts.min(axis=0)
    extent = np.maximum(kpts.max(axis=0) - lo, 1e-9)
    r_ok = radius[ok]
    cell = max(float(np.median(r_ok)), 1e-9)
    # at most ~4 cells per keypoint (and >= 1): a coarser grid only costs extra candidates to reject
    min_cell = float(np.sqrt(extent[0] * extent[1] / max(4 * n1, 1)))
    cell = max(cell, min_cell, float(extent.max()) / 4096)
    ncx, ncy = (np.floor(extent / cell).astype(np.int64) + 1).tolist()
    kc = np.floor((kpts - lo) / cell).astype(np.int64)
    kcell = kc[:, 1] * ncx + kc[:, 0]
    order = np.argsort(kcell, kind="stable")  # keypoints grouped by cell, increasing index inside
    starts = np.searchsorted(kcell[order], np.arange(ncx * ncy + 1))
    qi = np.flatnonzero(ok)
    p = pred[qi]
    r = radius[qi]
    x0 = np.clip(np.floor((p[:, 0] - r - lo[0]) / cell), 0, ncx - 1).astype(np.int64)
    x1 = np.clip(np.floor((p[:, 0] + r - lo[0]) / cell), -1, ncx - 1).astype(np.int64)
    y0 = np.clip(np.floor((p[:, 1] - r - lo[1]) / cell), 0, ncy - 1).astype(np.int64)
    y1 = np.clip(np.floor((p[:, 1] + r - lo[1]) / cell), -1, ncy - 1).astype(np.int64)
    nx = np.maximum(x1 - x0 + 1, 0)
    ny = np.maximum(y1 - y0 + 1, 0)
    # (query, cell) pairs
    ncells = nx * ny
    q_rep = np.repeat(np.arange(qi.size), ncells)
    local = np.arange(q_rep.size) - np.repeat(np.cumsum(ncells) - ncells, ncells)
    cx = x0[q_rep] + local % np.maximum(nx[q_rep], 1)
    cy = y0[q_rep] + local // np.maximum(nx[q_rep], 1)
    cells = cy * ncx + cx
    # (query, keypoint) pairs
    counts = starts[cells + 1] - starts[cells]
    q_c = np.repeat(q_rep, counts)
    pos = np.arange(q_c.size) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(starts[cells], counts)
    j = order[pos]
    dx = kpts[j, 0] - p[q_c, 0]
    dy = kpts[j, 1] - p[q_c, 1]
    inside = dx * dx + dy * dy <= r[q_c] * r[q_c]
    i_out, j_out = qi[q_c[inside]], j[inside]
    key = i_out.astype(np.int64) * n1 + j_out  # one int64 sort (i < 2^31, j < n1) instead of a lexsort
    key.sort()
    return key // n1, key % n1


def _pair_distances(d0: np.ndarray, d1: np.ndarray, i: np.ndarray, j: np.ndarray, metric: str) -> np.ndarray:
    if metric == "l2":
        diff = d0[i].astype(np.float32) - d1[j].astype(np.float32)
        return np.sqrt(np.einsum("ij,ij->i", diff, diff))
    mod = _native_module()
    if mod is not None:
        out = np.empty(i.shape[0], np.int32)
        mod.pair_distances(native_isa(), d0, d1, d0.shape[1], i, j, out)
        return out
    x = np.bitwise_xor(d0[i], d1[j])
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(x).sum(axis=1, dtype=np.int32)
    return _POPCOUNT8[x].sum(axis=1, dtype=np.int32)


_POPCOUNT8 = np.array([bin(v).count("1") for v in range(256)], np.uint8)


MAX_COORDINATE = 1e9
"""Largest |x| or |y| :func:`match_guided` takes (pixels); squared distances of larger ones are not exact."""


def match_guided(
    d0: np.ndarray,
    d1: np.ndarray,
    pred0: np.ndarray,
    kpts1: np.ndarray,
    radius: float | np.ndarray,
    *,
    mutual: bool = True,
    ratio: float | None = None,
    max_distance: float | None = None,
    candidate_filter: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    metric: str = "hamming",
) -> tuple[np.ndarray, np.ndarray]:
    """Guided (search-by-projection) matching: each d0 descriptor only meets d1 keypoints near its prediction.

    For SLAM / tracking: ``pred0`` are the predicted image positions of map points (d0), ``kpts1`` the
    keypoints of the current frame (d1). Candidates are the keypoints within ``radius`` (Euclidean,
    inclusive) of the prediction, found through grid buckets (as ORB-SLAM's search by projection), then
    narrowed by ``candidate_filter`` (e.g. a scale / octave check). Matching is the dense definition
    restricted to candidate pairs: nearest candidate, ratio against the second-nearest candidate,
    mutual = the row is also the nearest candidate row of that keypoint; ties to the lowest index.
    With an infinite-like radius and no filter it equals :func:`match_hamming` / :func:`match_l2`.

    Args:
        d0: uint8 [N0, B] (metric "hamming") or float [N0, D] (metric "l2") map-point descriptors.
        d1: uint8 [N1, B] or float [N1, D] keypoint descriptors.
        pred0: float [N0, 2] predicted (x, y) of each d0 descriptor; rows with NaN/inf get no match; finite
            values must be within +-``MAX_COORDINATE`` (1e9) px.
        kpts1: float [N1, 2] (x, y) keypoints of d1, finite, within +-``MAX_COORDINATE`` px.
        radius: search radius in pixels, a finite number >= 0 or float [N0] per point.
        mutual, ratio, max_distance: as in :func:`match_hamming`.
        candidate_filter: optional ``f(i int64 [C], j int64 [C]) -> bool [C]``; False drops candidate (i, j).
        metric: "hamming" or "l2".

    Returns:
        pairs int64 [K, 2] sorted by the first column; distances int32 [K] (hamming) or float32 [K] (l2).
    """
    if metric not in ("hamming", "l2"):
        raise ValueError(f"metric must be 'hamming' or 'l2', got {metric!r}")
    _check_pair(d0, d1, "binary" if metric == "hamming" else "float")
    _check_options(ratio, max_distance)
    n0, n1 = d0.shape[0], d1.shape[0]
    pred = _check_points(pred0, n0, "pred0")
    kpts = _check_points(kpts1, n1, "kpts1")
    if not np.isfinite(kpts).all():
        raise ValueError("kpts1 must be finite, got NaN or inf")
    # beyond this, squared distances lose all precision or overflow (false matches): refuse
    if n1 and np.abs(kpts).max() > MAX_COORDINATE:
        raise ValueError(f"kpts1 must be within +-{MAX_COORDINATE:g} px, got |x| up to {np.abs(kpts).max():.3g}")
    big = np.isfinite(pred) & (np.abs(pred) > MAX_COORDINATE)
    if big.any():
        raise ValueError(
            f"pred0 must be within +-{MAX_COORDINATE:g} px, got |x| up to {np.abs(pred[big]).max():.3g} "
            "(set predictions far outside the image to NaN: they get no match)"
        )
    r = np.asarray(radius, dtype=np.float64)
    if r.ndim == 0:
        r = np.full(n0, float(r))
    if r.shape != (n0,) or not np.isfinite(r).all() or (r < 0).any():
        raise ValueError(
            f"radius must be a finite number >= 0 or float [{n0}] of them, got {_describe(np.asarray(radius))}"
        )
    dist_dtype = np.int32 if metric == "hamming" else np.float32
    i, j = _radius_candidates(pred, kpts, r)
    if candidate_filter is not None and i.size:
        keep = np.asarray(candidate_filter(i, j))
        if keep.shape != i.shape or keep.dtype != np.bool_:
            raise ValueError(f"candidate_filter must return bool [{i.size}], got {_describe(keep)}")
        i, j = i[keep], j[keep]
    if i.size == 0:
        return _empty_result(dist_dtype)
    if metric == "hamming" and _native_module() is not None:  # one pass over the sorted candidates
        rd, ri, rs, cd, ci = (np.empty(n, np.int32) for n in (n0, n0, n0, n1, n1))
        _native_module().guided(native_isa(), d0, d1, d0.shape[1], i, j, rd, ri, rs, cd, ci)
        return _finalize(
            rd, ri.astype(np.int64), rs, ci.astype(np.int64) if mutual else None, mutual, ratio, max_distance
        )
    d = _pair_distances(d0, d1, i, j, metric)
    # per row: best = smallest (d, j); candidates are sorted by (i, j), a stable sort by d keeps j order
    o = np.lexsort((j, d, i))
    i_s, j_s, d_s = i[o], j[o], d[o]
    first = np.r_[True, i_s[1:] != i_s[:-1]]
    starts = np.flatnonzero(first)
    rows = i_s[starts]
    none = _BIG if metric == "hamming" else np.inf
    rd = np.full(n0, none, dist_dtype)
    ri = np.full(n0, -1, np.int64)
    rs = np.full(n0, none, dist_dtype)
    rd[rows] = d_s[starts]
    ri[rows] = j_s[starts]
    has_second = np.r_[starts[1:], i_s.size] - starts > 1
    rs[rows[has_second]] = d_s[starts[has_second] + 1]
    ci = None
    if mutual:  # per keypoint: best = smallest (d, i)
        o = np.lexsort((i, d, j))
        jf = j[o]
        firstc = np.r_[True, jf[1:] != jf[:-1]]
        ci = np.full(n1, -1, np.int64)
        ci[jf[firstc]] = i[o][firstc]
    return _finalize(rd, ri, rs, ci, mutual, ratio, max_distance)


# ------------------------------------------------------------------------------------ matches0 form
def matches_to_matches0(pairs: np.ndarray, n0: int) -> np.ndarray:
    """Pairs int [K, 2] -> matches0 int64 [n0]: the matched index in the second set, -1 = unmatched.

    Raises:
        ValueError: pairs not [K, 2] integers, indices out of range, or a first index used twice.
    """
    if (
        not isinstance(pairs, np.ndarray)
        or pairs.ndim != 2
        or pairs.shape[1] != 2
        or not np.issubdtype(pairs.dtype, np.integer)
    ):
        raise ValueError(f"pairs must be an int array [K,2], got {_describe(pairs)}")
    if isinstance(n0, bool) or not isinstance(n0, (int, np.integer)) or n0 < 0:
        raise ValueError(f"n0 must be an int >= 0, got {n0!r}")
    m0 = np.full(int(n0), -1, np.int64)
    if pairs.shape[0] == 0:
        return m0
    i, j = pairs[:, 0], pairs[:, 1]
    if i.min() < 0 or i.max() >= n0 or j.min() < 0:
        raise ValueError(f"pair indices must lie in [0, {n0}) x [0, inf), got {i.min()}..{i.max()} x {j.min()}..")
    if np.unique(i).size != i.size:
        raise ValueError("pairs use a first index more than once; matches0 needs one match per row")
    m0[i] = j
    return m0


def matches0_to_matches(matches0: np.ndarray) -> np.ndarray:
    """matches0 int [N0] (-1 = unmatched) -> pairs int64 [K, 2] sorted by the first index."""
    if not isinstance(matches0, np.ndarray) or matches0.ndim != 1 or not np.issubdtype(matches0.dtype, np.integer):
        raise ValueError(f"matches0 must be an int array [N0], got {_describe(matches0)}")
    i = np.flatnonzero(matches0 >= 0)
    return np.stack([i, matches0[i]], axis=1).astype(np.int64).reshape(-1, 2)


# ----------------------------------------------------------------------------------------- thresholds
from dataclasses import dataclass  # noqa: E402  (kept with the constant it serves, at the end of the module)


@dataclass(frozen=True)
class MatchThresholds:
    """Hamming distances of zippy's descriptors (256 bits, 64 ones: distances are even, 0..128), measured.

    Measured with ``python -m zippy_eval.match_thresholds`` (docs/vocabulary.md): the shipped ``zippypoint``
    model, 1000 keypoints per image at the images' own size (at most 640 px), mutual nearest neighbours
    (``match_hamming(mutual=True)``) on the 250 pairs of 50 HPatches-like sequences of the development
    photos; a match is true within 3 px of the ground-truth homography (104,007 true, 25,249 false).
    Precision is over the mutual matches with distance <= the threshold; recall over the true ones.

    Use ``low`` where a wrong match is expensive (ORB-SLAM's TH_LOW role: search by projection, map
    points), ``high`` for candidates checked afterwards (ORB-SLAM's TH_HIGH role). ORB-SLAM's own values
    (50 / 100) are ORB's: for these descriptors a random pair lies near 96 and 100 filters nothing
    (precision 0.805, the same as no threshold).

    Attributes:
        low: largest threshold with precision >= 0.95.
        high: largest threshold with precision >= 0.90.
        precision_low, precision_high: precision at ``low`` / ``high``.
        recall_low, recall_high: fraction of the true matches kept at ``low`` / ``high``.
        precision_all: precision of all mutual matches (no threshold).
        true_median, false_median: median distance of true / false mutual matches.
        random_median, random_p01: median and 1st percentile of descriptors of unrelated images.
    """

    low: int = 22
    high: int = 34
    precision_low: float = 0.952
    precision_high: float = 0.902
    recall_low: float = 0.437
    recall_high: float = 0.856
    precision_all: float = 0.805
    true_median: int = 24
    false_median: int = 38
    random_median: int = 96
    random_p01: int = 64


THRESHOLDS = MatchThresholds()
"""Calibrated thresholds of the shipped ``zippypoint`` descriptors, e.g. ``match_hamming(d0, d1,
max_distance=THRESHOLDS.high)``; see :class:`MatchThresholds` for how they were measured."""
