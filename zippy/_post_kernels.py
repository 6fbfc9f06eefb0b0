"""Numba kernel behind :func:`zippy.postprocess.select_keypoints`: cell NMS, filters and top-k in one pass.

As torch code the NMS was 24 shifted comparisons of small maps per image, mostly per-op overhead
(1.6 ms at 240x320 against 0.2 ms here). The kernel computes what select_keypoints' docstring
defines, in float32 like the torch code it replaced (tests/test_int8.py checks it against a brute force).
(numba's packed top-k of the descriptors was slower than numpy's partition, so that one stays numpy.)
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def select_cells(score, coords, r2, reach, max_x, max_y, threshold, max_keypoints):  # pragma: no cover - compiled
    """Flat cell indices of the kept keypoints, best first (ties: lower index), at most max_keypoints.

    score float32 [hc, wc]; coords float32 [2, hc, wc]; r2 float32 squared NMS radius (< 0: no NMS);
    a keypoint is kept when its score is > 0 and >= threshold, it lies at x <= max_x and y <= max_y, and
    no cell at most ``reach`` cells away has a better keypoint (higher score, or an equal score at a lower
    flat index) within the radius.
    """
    hc, wc = score.shape
    flat = np.empty(hc * wc, np.int64)
    n = 0
    for i in range(hc):
        for j in range(wc):
            s = score[i, j]
            if not (s > 0 and s >= threshold and coords[0, i, j] <= max_x and coords[1, i, j] <= max_y):
                continue
            x, y = coords[0, i, j], coords[1, i, j]
            kept = True
            if r2 >= 0:
                for a in range(max(i - reach, 0), min(i + reach + 1, hc)):
                    for b in range(max(j - reach, 0), min(j + reach + 1, wc)):
                        if a == i and b == j:
                            continue
                        sn = score[a, b]
                        better = sn >= s if a * wc + b < i * wc + j else sn > s
                        if better:
                            dx = coords[0, a, b] - x
                            dy = coords[1, a, b] - y
                            if dx * dx + dy * dy <= r2:
                                kept = False
                                break
                    if not kept:
                        break
            if kept:
                flat[n] = i * wc + j
                n += 1
    flat = flat[:n]
    keys = np.empty(n, np.float32)
    for m in range(n):
        keys[m] = -score[flat[m] // wc, flat[m] % wc]
    order = np.argsort(keys, kind="mergesort")  # stable: equal scores keep the lower index first
    return flat[order[: min(max_keypoints, n)]]
