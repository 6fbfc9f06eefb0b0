"""Shared pieces of the `zippy` commands: model options, pair matching + homography."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

from zippy.config import ExtractorConfig, add_extractor_arguments
from zippy.features import Features
from zippy.tracking import PairResult


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """--model, --weights, --engine, --scales, --shifts, --nms-radius, --max-keypoints, --threshold."""
    add_extractor_arguments(p)
    p.add_argument("--max-keypoints", type=int, default=1000)
    p.add_argument("--threshold", type=float, default=None, help="minimum keypoint score")


def load_extractor(args: argparse.Namespace):
    """zippy.load from the model arguments; says so on stderr when the weights are untrained."""
    import sys

    import zippy

    ex = zippy.load(ExtractorConfig.from_args(args))
    if not ex.trained:
        print(f"note: {args.model} runs with UNTRAINED random weights (no trained weights found)", file=sys.stderr)
    return ex


@dataclass(frozen=True)
class PairTimes:
    """The time of each step of :func:`match_and_fit` (ms)."""

    warmup_ms: float  # preparing the matcher (numba's compile / cache load; 0 for the compiled kernels)
    match_ms: float  # matching alone: the median of the repeated calls
    ransac_ms: float  # homography fit


def matcher_description() -> str:
    """The Hamming matcher that runs here, e.g. ``native (avx2)`` (see zippy.matching.backend)."""
    from zippy.matching import backend

    return backend()


def match_and_fit(
    f0: Features, f1: Features, ransac_px: float = 3.0, timing_repeats: int = 1
) -> tuple[PairResult, PairTimes]:
    """Mutual nearest-neighbour matches (:func:`zippy.match`) and a homography by classic RANSAC (the estimator of
    the HPatches protocol, :func:`zippy.tracking.fit_pair`): ``.matches`` int64 [K, 2], ``.H`` (or None),
    ``.inliers`` bool [K], with the time of each step.

    The matcher is prepared first (zippy.matching.warmup: numba compiles on a fresh install, the compiled
    kernels need nothing), so that ``match_ms`` is matching time only: the median of ``timing_repeats``
    identical calls (a single call of a millisecond is at the mercy of the scheduler on a busy machine).
    """
    import time

    import zippy
    from zippy.tracking import fit_pair

    t0 = time.perf_counter()
    if f0.is_binary:
        zippy.matching.warmup()
    t1 = time.perf_counter()
    times = []
    for _ in range(max(1, timing_repeats)):
        t = time.perf_counter()
        matches, _ = zippy.match(f0, f1, mutual=True)
        times.append(time.perf_counter() - t)
    t2 = time.perf_counter()
    matches = np.asarray(matches, np.int64).reshape(-1, 2)
    res = fit_pair(f0, f1, matches, ransac_threshold=ransac_px, robust="ransac", max_iters=5000, confidence=0.9999)
    t3 = time.perf_counter()
    return res, PairTimes(1e3 * (t1 - t0), 1e3 * float(np.median(times)), 1e3 * (t3 - t2))
