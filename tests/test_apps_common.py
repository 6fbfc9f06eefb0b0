"""Tests of zippy_apps.common.match_and_fit: matching time reported apart from the matcher's warm-up and RANSAC."""

from __future__ import annotations

import numpy as np

from zippy import matching
from zippy.features import Features
from zippy_apps.common import match_and_fit, matcher_description


def _features(kpts: np.ndarray, desc: np.ndarray) -> Features:
    return Features(
        keypoints=kpts.astype(np.float32),
        scores=np.ones(len(kpts), np.float32),
        descriptors=desc,
        image_size=(640, 480),
    )


def test_match_and_fit_times_each_step():
    rng = np.random.default_rng(0)
    d0 = rng.integers(0, 256, (300, 32), dtype=np.uint8)
    k0 = rng.uniform(0, 600, (300, 2))
    f0 = _features(k0, d0)
    shift = np.array([5.0, -3.0])
    f1 = _features((k0 + shift)[::-1].copy(), d0[::-1].copy())  # same points shifted, rows reversed
    res, times = match_and_fit(f0, f1, timing_repeats=3)
    pairs, _ = matching.match_hamming(d0, d0[::-1].copy())
    assert np.array_equal(res.matches, pairs) and len(pairs) == 300
    assert res.H is not None and np.allclose(res.H[:2, 2], [5.0, -3.0], atol=1e-3)
    assert min(times.warmup_ms, times.match_ms, times.ransac_ms) >= 0.0
    assert matcher_description() == matching.backend()
