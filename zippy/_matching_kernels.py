"""Numba kernels behind :mod:`zippy.matching` (imported lazily, only when numba is installed).

All kernels take descriptors as uint64 words: ``a`` [N, W] row-major and ``bt`` [W, M] word-major
(the transpose of the second set), with W a multiple of 4 (callers zero-pad: zero words change no
Hamming distance). For every row they compute the distances to a tile of columns into a small
int32 buffer (one vectorised loop: XOR + popcount, ``llvm.ctpop`` lowers to VPOPCNTQ on AVX-512
machines), then reduce the buffer:

* per row: the smallest distance and the *first* column reaching it (ties -> lowest index, as
  OpenCV's BFMatcher), optionally the second-smallest distance (for the ratio test);
* per column: the smallest distance and the first row reaching it (rows are visited in increasing
  order and only a strictly smaller distance replaces the current best).

Ties therefore resolve exactly like a minimum over the packed key ``(distance << 32) | index``.
The parallel kernels split the rows into chunks, each with its own column arrays, and merge those
in chunk order with the same strict comparison, so results do not depend on the thread count.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

BIG = np.int32(1 << 30)  # "no distance yet"; larger than any Hamming distance we accept
TILE = 512  # columns per tile: 16 KiB of the second set + 8 KiB of buffers + 4 KiB of column minima (L1)


@intrinsic
def _popcount64(typingctx, x):
    """Population count of a uint64 (LLVM ctpop intrinsic)."""
    if not isinstance(x, types.Integer):
        return None
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        fn = builder.module.declare_intrinsic("llvm.ctpop", [ir.IntType(64)])
        return builder.call(fn, args)

    return sig, codegen


@numba.njit(cache=True, nogil=True)
def _fill_tile(a, i, bt, j0, length, buf):
    """buf[:length] = Hamming distances of row i of ``a`` to columns j0 .. j0+length; returns their minimum."""
    dmin = BIG
    x0 = a[i, 0]
    x1 = a[i, 1]
    x2 = a[i, 2]
    x3 = a[i, 3]
    c0 = bt[0, j0 : j0 + length]
    c1 = bt[1, j0 : j0 + length]
    c2 = bt[2, j0 : j0 + length]
    c3 = bt[3, j0 : j0 + length]
    n_groups = a.shape[1] // 4
    if n_groups == 1:  # 256 bits: one fused loop
        for j in range(length):
            d = np.int32(
                _popcount64(x0 ^ c0[j]) + _popcount64(x1 ^ c1[j]) + _popcount64(x2 ^ c2[j]) + _popcount64(x3 ^ c3[j])
            )
            buf[j] = d
            dmin = min(dmin, d)
        return dmin
    for j in range(length):
        buf[j] = np.int32(
            _popcount64(x0 ^ c0[j]) + _popcount64(x1 ^ c1[j]) + _popcount64(x2 ^ c2[j]) + _popcount64(x3 ^ c3[j])
        )
    for g in range(1, n_groups):
        q = 4 * g
        x0 = a[i, q]
        x1 = a[i, q + 1]
        x2 = a[i, q + 2]
        x3 = a[i, q + 3]
        c0 = bt[q, j0 : j0 + length]
        c1 = bt[q + 1, j0 : j0 + length]
        c2 = bt[q + 2, j0 : j0 + length]
        c3 = bt[q + 3, j0 : j0 + length]
        for j in range(length):
            buf[j] += np.int32(
                _popcount64(x0 ^ c0[j]) + _popcount64(x1 ^ c1[j]) + _popcount64(x2 ^ c2[j]) + _popcount64(x3 ^ c3[j])
            )
    for j in range(length):
        dmin = min(dmin, buf[j])
    return dmin


@numba.njit(cache=True, nogil=True)
def _fill_tile4(a, i0, bt, j0, length, buf):
    """Four rows at once (256-bit descriptors): buf[r, :length] = distances of row i0 + r; returns the 4 minima.

    Each word of the second set is loaded once for four rows, which halves the memory traffic per pair.
    """
    x00 = a[i0, 0]
    x01 = a[i0, 1]
    x02 = a[i0, 2]
    x03 = a[i0, 3]
    x10 = a[i0 + 1, 0]
    x11 = a[i0 + 1, 1]
    x12 = a[i0 + 1, 2]
    x13 = a[i0 + 1, 3]
    x20 = a[i0 + 2, 0]
    x21 = a[i0 + 2, 1]
    x22 = a[i0 + 2, 2]
    x23 = a[i0 + 2, 3]
    x30 = a[i0 + 3, 0]
    x31 = a[i0 + 3, 1]
    x32 = a[i0 + 3, 2]
    x33 = a[i0 + 3, 3]
    c0 = bt[0, j0 : j0 + length]
    c1 = bt[1, j0 : j0 + length]
    c2 = bt[2, j0 : j0 + length]
    c3 = bt[3, j0 : j0 + length]
    b0 = buf[0]
    b1 = buf[1]
    b2 = buf[2]
    b3 = buf[3]
    m0 = BIG
    m1 = BIG
    m2 = BIG
    m3 = BIG
    for j in range(length):
        y0 = c0[j]
        y1 = c1[j]
        y2 = c2[j]
        y3 = c3[j]
        d0 = np.int32(_popcount64(x00 ^ y0) + _popcount64(x01 ^ y1) + _popcount64(x02 ^ y2) + _popcount64(x03 ^ y3))
        d1 = np.int32(_popcount64(x10 ^ y0) + _popcount64(x11 ^ y1) + _popcount64(x12 ^ y2) + _popcount64(x13 ^ y3))
        d2 = np.int32(_popcount64(x20 ^ y0) + _popcount64(x21 ^ y1) + _popcount64(x22 ^ y2) + _popcount64(x23 ^ y3))
        d3 = np.int32(_popcount64(x30 ^ y0) + _popcount64(x31 ^ y1) + _popcount64(x32 ^ y2) + _popcount64(x33 ^ y3))
        b0[j] = d0
        b1[j] = d1
        b2[j] = d2
        b3[j] = d3
        m0 = min(m0, d0)
        m1 = min(m1, d1)
        m2 = min(m2, d2)
        m3 = min(m3, d3)
    return m0, m1, m2, m3


@numba.njit(cache=True, nogil=True)
def _row_update(row, dmin, i, j0, length, want_second, rd, ri, rs):
    """Merge one tile's distances ``row`` (minimum dmin) into row i's best / second-best."""
    if dmin < rd[i]:
        jb = 0
        while row[jb] != dmin:  # the first column reaching the minimum
            jb += 1
        if want_second:
            s = BIG
            for j in range(length):
                v = row[j] if j != jb else BIG
                s = min(s, v)
            rs[i] = min(s, rd[i])  # the old best (if any) becomes a second-best candidate
        rd[i] = dmin
        ri[i] = j0 + jb
    elif want_second:
        rs[i] = min(rs[i], dmin)


@numba.njit(cache=True, nogil=True)
def _col_update(row, i, length, ccd, cci):
    """Columns take row i where its distance is strictly smaller (earlier rows win ties)."""
    ii = np.int32(i)
    for j in range(length):
        d = row[j]
        better = d < ccd[j]
        ccd[j] = d if better else ccd[j]
        cci[j] = ii if better else cci[j]


@numba.njit(cache=True, nogil=True)
def _col_update4(buf, i0, length, ccd, cci):
    """:func:`_col_update` for rows i0 .. i0+3 of buf at once (first row wins ties among them too)."""
    b0 = buf[0]
    b1 = buf[1]
    b2 = buf[2]
    b3 = buf[3]
    ii = np.int32(i0)
    for j in range(length):
        d = b0[j]
        k = ii
        v = b1[j]
        s = v < d
        d = v if s else d
        k = ii + 1 if s else k
        v = b2[j]
        s = v < d
        d = v if s else d
        k = ii + 2 if s else k
        v = b3[j]
        s = v < d
        d = v if s else d
        k = ii + 3 if s else k
        better = d < ccd[j]
        ccd[j] = d if better else ccd[j]
        cci[j] = k if better else cci[j]


@numba.njit(cache=True, nogil=True)
def _nn_rows(a, bt, r0, r1, want_second, want_cols, rd, ri, rs, cd, ci, buf):
    """Nearest neighbours of rows r0..r1 (updates rd/ri/rs) and the column minima over these rows (cd/ci).

    buf: int32 [4, TILE] scratch. 256-bit descriptors go four rows at a time.
    """
    m = bt.shape[1]
    four = a.shape[1] == 4
    for j0 in range(0, m, TILE):
        length = min(TILE, m - j0)
        ccd = cd[j0 : j0 + length]
        cci = ci[j0 : j0 + length]
        i = r0
        while i < r1:
            if four and i + 4 <= r1:
                m0, m1, m2, m3 = _fill_tile4(a, i, bt, j0, length, buf)
                _row_update(buf[0], m0, i, j0, length, want_second, rd, ri, rs)
                _row_update(buf[1], m1, i + 1, j0, length, want_second, rd, ri, rs)
                _row_update(buf[2], m2, i + 2, j0, length, want_second, rd, ri, rs)
                _row_update(buf[3], m3, i + 3, j0, length, want_second, rd, ri, rs)
                if want_cols:
                    _col_update4(buf, i, length, ccd, cci)
                i += 4
            else:
                row = buf[0]
                dmin = _fill_tile(a, i, bt, j0, length, row)
                _row_update(row, dmin, i, j0, length, want_second, rd, ri, rs)
                if want_cols:
                    _col_update(row, i, length, ccd, cci)
                i += 1


@numba.njit(cache=True, nogil=True)
def nn_serial(a, bt, want_second, want_cols):
    """Single-threaded nearest-neighbour pass.

    Args:
        a: uint64 [N, W] words of the first set (W a multiple of 4).
        bt: uint64 [W, M] words of the second set, word-major.
        want_second: also compute the second-smallest distance per row.
        want_cols: also compute the best row per column (for the mutual check).

    Returns:
        (rd, ri, rs, cd, ci): int32 arrays; per row best distance [N], its column [N] (-1 if M = 0),
        second-best distance [N] (BIG if none / not computed); per column best distance [M] and its row [M].
    """
    n = a.shape[0]
    m = bt.shape[1]
    rd = np.full(n, BIG, np.int32)
    ri = np.full(n, -1, np.int32)
    rs = np.full(n, BIG, np.int32)
    cd = np.full(m, BIG, np.int32)
    ci = np.full(m, -1, np.int32)
    buf = np.empty((4, TILE), np.int32)
    _nn_rows(a, bt, 0, n, want_second, want_cols, rd, ri, rs, cd, ci, buf)
    return rd, ri, rs, cd, ci


@numba.njit(cache=True, nogil=True, parallel=True)
def nn_parallel(a, bt, n_chunks, want_second, want_cols):
    """Like :func:`nn_serial`, rows split into ``n_chunks`` chunks run in parallel; same results."""
    n = a.shape[0]
    m = bt.shape[1]
    rd = np.full(n, BIG, np.int32)
    ri = np.full(n, -1, np.int32)
    rs = np.full(n, BIG, np.int32)
    cd_all = np.full((n_chunks, m), BIG, np.int32)
    ci_all = np.full((n_chunks, m), -1, np.int32)
    bufs = np.empty((n_chunks, 4, TILE), np.int32)
    for c in prange(n_chunks):
        r0 = c * n // n_chunks
        r1 = (c + 1) * n // n_chunks
        _nn_rows(a, bt, r0, r1, want_second, want_cols, rd, ri, rs, cd_all[c], ci_all[c], bufs[c])
    cd = cd_all[0].copy()
    ci = ci_all[0].copy()
    for c in range(1, n_chunks):  # chunks hold increasing rows: strict '<' keeps the lowest row on ties
        for j in range(m):
            if cd_all[c, j] < cd[j]:
                cd[j] = cd_all[c, j]
                ci[j] = ci_all[c, j]
    return rd, ri, rs, cd, ci


@numba.njit(cache=True, nogil=True)
def _knn_insert(row, dmin, i, j0, length, topd, topi):
    """Insert one tile's distances ``row`` (minimum dmin) into row i's sorted top-k lists."""
    k = topd.shape[1]
    kth = topd[i, k - 1]
    if dmin >= kth:
        return
    for j in range(length):
        d = row[j]
        if d < kth:  # strict: an earlier column with the same distance stays ahead
            p = k - 1
            while p > 0 and topd[i, p - 1] > d:
                topd[i, p] = topd[i, p - 1]
                topi[i, p] = topi[i, p - 1]
                p -= 1
            topd[i, p] = d
            topi[i, p] = j0 + j
            kth = topd[i, k - 1]


@numba.njit(cache=True, nogil=True)
def _knn_rows(a, bt, r0, r1, topd, topi, buf):
    """k nearest columns of rows r0..r1, sorted by (distance, index); updates topd/topi [N, k] in place."""
    m = bt.shape[1]
    four = a.shape[1] == 4
    for j0 in range(0, m, TILE):
        length = min(TILE, m - j0)
        i = r0
        while i < r1:
            if four and i + 4 <= r1:
                m0, m1, m2, m3 = _fill_tile4(a, i, bt, j0, length, buf)
                _knn_insert(buf[0], m0, i, j0, length, topd, topi)
                _knn_insert(buf[1], m1, i + 1, j0, length, topd, topi)
                _knn_insert(buf[2], m2, i + 2, j0, length, topd, topi)
                _knn_insert(buf[3], m3, i + 3, j0, length, topd, topi)
                i += 4
            else:
                dmin = _fill_tile(a, i, bt, j0, length, buf[0])
                _knn_insert(buf[0], dmin, i, j0, length, topd, topi)
                i += 1


@numba.njit(cache=True, nogil=True)
def knn_serial(a, bt, k):
    """k nearest neighbours per row: (distances int32 [N, k] (BIG = none), indices int32 [N, k] (-1 = none))."""
    n = a.shape[0]
    topd = np.full((n, k), BIG, np.int32)
    topi = np.full((n, k), -1, np.int32)
    buf = np.empty((4, TILE), np.int32)
    _knn_rows(a, bt, 0, n, topd, topi, buf)
    return topd, topi


@numba.njit(cache=True, nogil=True, parallel=True)
def knn_parallel(a, bt, k, n_chunks):
    """Like :func:`knn_serial` with rows split into ``n_chunks`` parallel chunks (rows are independent)."""
    n = a.shape[0]
    topd = np.full((n, k), BIG, np.int32)
    topi = np.full((n, k), -1, np.int32)
    bufs = np.empty((n_chunks, 4, TILE), np.int32)
    for c in prange(n_chunks):
        _knn_rows(a, bt, c * n // n_chunks, (c + 1) * n // n_chunks, topd, topi, bufs[c])
    return topd, topi
