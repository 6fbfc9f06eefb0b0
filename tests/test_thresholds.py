"""zippy.matching.THRESHOLDS (the measured constants hang together) and the measuring script's threshold rule."""

from __future__ import annotations

import numpy as np

from zippy.matching import THRESHOLDS, match_hamming
from zippy_eval.match_thresholds import largest_threshold


def test_thresholds_are_consistent():
    t = THRESHOLDS
    for v in (t.low, t.high, t.true_median, t.false_median, t.random_median, t.random_p01):
        assert isinstance(v, int) and 0 <= v <= 128 and v % 2 == 0  # 64-of-256 codes: even distances
    assert t.low < t.high < t.random_p01 <= t.random_median
    assert t.true_median < t.false_median < t.random_median
    assert 0.95 <= t.precision_low and 0.90 <= t.precision_high < t.precision_low
    assert t.precision_all < t.precision_high
    assert 0 < t.recall_low < t.recall_high < 1


def test_threshold_usable_as_max_distance():
    a = np.zeros((2, 32), np.uint8)
    a[0, :8] = 0xFF  # 64 ones in the first 8 bytes
    a[1, 8:16] = 0xFF
    b = a.copy()
    b[0, 0] = 0x00  # 8 bits off ...
    b[0, 16] = 0xFF  # ... and 8 on elsewhere: distance 16 <= low
    b[1, 8:13] = 0x00
    b[1, 16:21] = 0xFF  # distance 80 > high
    pairs, dist = match_hamming(a, b, max_distance=THRESHOLDS.low)
    np.testing.assert_array_equal(pairs, [[0, 0]])
    np.testing.assert_array_equal(dist, [16])


def test_largest_threshold_rule():
    ths = np.array([0, 2, 4, 6, 8])
    prec = np.array([np.nan, 1.0, 0.96, 0.91, 0.97])
    assert largest_threshold(ths, prec, 0.95) == 8  # the largest, even past a dip
    assert largest_threshold(ths, prec, 0.9) == 8
    assert largest_threshold(ths, prec, 0.99) == 2
    assert largest_threshold(ths, np.array([0.5] * 5), 0.9) is None
