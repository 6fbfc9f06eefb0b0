"""Evenly spread keypoint selection with a fixed count (for SLAM front ends), on any :class:`Features`.

Top-k by score piles keypoints onto the most textured region; a tracker wants them over the whole image.
Two selections, both returning exactly ``min(n, N)`` keypoints:

* ``"grid"``: the image is cut into about ``n`` square cells; every cell's best keypoint comes first (by
  score), then every cell's second best, and so on, until ``n`` are taken (ORB-SLAM's per-cell quota idea).
* ``"ssc"``: Suppression via Square Covering (Bailo et al., Pattern Recognition Letters 2018): visiting the
  keypoints by score, each kept keypoint suppresses the others within a square of side ``w`` around it; ``w``
  is the largest found by bisection that still keeps at least ``n``; the ``n`` best of those are returned.

Use::

    feats = extractor.extract(image, max_keypoints=4000)           # detect many
    feats = spread_keypoints(feats, 1000, method="ssc")            # keep 1000 spread over the image

numpy + numba, no torch.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from zippy.features import Features

__all__ = ["spread_indices", "spread_keypoints"]

METHODS = ("grid", "ssc")


@numba.njit(cache=True, nogil=True)
def _ssc_count(xy, cell, side, n_cols, n_rows, stop):
    """Keypoints (in order) kept by square covering with cells of ``cell`` px and squares of ``side`` cells."""
    covered = np.zeros((n_rows, n_cols), np.bool_)
    kept = np.empty(xy.shape[0], np.int64)
    count = 0
    for i in range(xy.shape[0]):
        c = min(n_cols - 1, max(0, int(xy[i, 0] / cell)))
        r = min(n_rows - 1, max(0, int(xy[i, 1] / cell)))
        if covered[r, c]:
            continue
        kept[count] = i
        count += 1
        if count >= stop:
            break
        for rr in range(max(0, r - side), min(n_rows, r + side + 1)):
            for cc in range(max(0, c - side), min(n_cols, c + side + 1)):
                covered[rr, cc] = True
    return kept[:count]


def _grid(xy: np.ndarray, order: np.ndarray, width: int, height: int, n: int) -> np.ndarray:
    cell = max(1.0, math.sqrt(width * height / n))
    cols = np.clip((xy[order, 0] / cell).astype(np.int64), 0, max(0, math.ceil(width / cell) - 1))
    rows = np.clip((xy[order, 1] / cell).astype(np.int64), 0, max(0, math.ceil(height / cell) - 1))
    key = rows * (cols.max(initial=0) + 1) + cols
    # rank of each keypoint within its cell (order is by score, so rank 0 is the cell's best)
    by_cell = np.argsort(key, kind="stable")
    starts = np.flatnonzero(np.r_[True, key[by_cell][1:] != key[by_cell][:-1]])
    first = np.repeat(starts, np.diff(np.r_[starts, len(by_cell)]))
    rank = np.empty(len(order), np.int64)
    rank[by_cell] = np.arange(len(by_cell)) - first
    pick = np.lexsort((np.arange(len(order)), rank))[:n]  # rank first, then score order
    return order[np.sort(pick)]


def _ssc(xy: np.ndarray, order: np.ndarray, width: int, height: int, n: int) -> np.ndarray:
    pts = np.ascontiguousarray(xy[order], np.float64)
    # cells of ~1/4 the spacing of n evenly spread points: the square side is searched in whole cells
    cell = max(0.5, math.sqrt(width * height / n) / 4)
    n_cols, n_rows = math.ceil(width / cell) + 1, math.ceil(height / cell) + 1
    lo, hi = 0, max(n_cols, n_rows)  # side 0 suppresses only its own cell; keeps the most
    best = _ssc_count(pts, cell, lo, n_cols, n_rows, n)
    while lo < hi:  # the largest side that still keeps n
        mid = (lo + hi + 1) // 2
        kept = _ssc_count(pts, cell, mid, n_cols, n_rows, n)
        if len(kept) >= n:
            lo, best = mid, kept
        else:
            hi = mid - 1
    if len(best) < n:  # even the smallest squares keep fewer (keypoints sharing cells): fill by score
        rest = np.setdiff1d(np.arange(len(order)), best)[: n - len(best)]
        best = np.sort(np.concatenate([best, rest]))
    return order[best[:n]]


def spread_indices(
    keypoints: np.ndarray, scores: np.ndarray, image_size: tuple[int, int], n: int, method: str = "grid"
) -> np.ndarray:
    """Indices of ``min(n, N)`` keypoints spread over the image, in descending score order.

    Args:
        keypoints: float [N, 2] (x, y) px.
        scores: float [N] (higher is better; ties: lower index first).
        image_size: (width, height).
        n: keypoints wanted (>= 1).
        method: "grid" or "ssc" (module docstring).

    Returns:
        int64 [min(n, N)].
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not (isinstance(n, (int, np.integer)) and n >= 1):
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    xy = np.asarray(keypoints, np.float64)
    sc = np.asarray(scores)
    if xy.ndim != 2 or xy.shape[1] != 2 or sc.shape != (xy.shape[0],):
        raise ValueError(f"expected keypoints [N,2] and scores [N], got {list(xy.shape)} and {list(sc.shape)}")
    w, h = (int(v) for v in image_size)
    if w < 1 or h < 1:
        raise ValueError(f"image_size must be positive (width, height), got {image_size}")
    order = np.argsort(-sc, kind="stable")
    if len(order) <= n:
        return order.astype(np.int64)
    pick = _grid(xy, order, w, h, n) if method == "grid" else _ssc(xy, order, w, h, n)
    return pick.astype(np.int64)


def spread_keypoints(features: Features, n: int, method: str = "grid") -> Features:
    """The ``min(n, N)`` keypoints of ``features`` chosen evenly over the image (:func:`spread_indices`),
    sorted by descending score, with their scores, descriptors and per-keypoint meta."""
    return features.subset(spread_indices(features.keypoints, features.scores, features.image_size, n, method))
