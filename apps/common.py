"""Shared pieces of the `zippy` commands: model options, pair matching + homography."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

from zippy.features import Features
from zippy_apps.eval_args import add_nms_option, add_scales_option, add_shifts_option


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """--model, --weights, --engine, --scales, --shifts, --nms-radius, --max-keypoints, --threshold."""
    p.add_argument("--model", default="zippypoint", help="backbone name (default zippypoint)")
    p.add_argument("--weights", default=None, help="weights file (default: the shipped weights of --model)")
    p.add_argument("--engine", default="auto", help="auto, int8, fp32 or onnx (default auto)")
    add_scales_option(p)
    add_shifts_option(p)
    add_nms_option(p)
    p.add_argument("--max-keypoints", type=int, default=1000)
    p.add_argument("--threshold", type=float, default=None, help="minimum keypoint score")


def load_extractor(args: argparse.Namespace):
    """zippy.load from the model arguments; says so on stderr when the weights are untrained."""
    import sys

    import zippy

    ex = zippy.load(
        args.model,
        weights=args.weights,
        engine=args.engine,
        scales=args.scales,
        shifts=args.shifts,
        nms_radius=args.nms_radius,
    )
    if not ex.trained:
        print(f"note: {args.model} runs with UNTRAINED random weights (no trained weights found)", file=sys.stderr)
    return ex


@dataclass
class PairResult:
    """Matches of two images and the homography fitted to them, with the time of each step."""

    pairs: np.ndarray  # int64 [K, 2]
    H: np.ndarray | None  # float64 [3, 3] image0 -> image1
    inliers: np.ndarray  # bool [K]
    warmup_ms: float = 0.0  # preparing the matcher (numba's compile / cache load; 0 for the compiled kernels)
    match_ms: float = 0.0  # matching alone
    ransac_ms: float = 0.0  # homography fit


def matcher_description() -> str:
    """The Hamming matcher that runs here, e.g. ``native (avx2)`` (see zippy.matching.backend)."""
    from zippy.matching import backend

    return backend()


def match_and_fit(f0: Features, f1: Features, ransac_px: float = 3.0, timing_repeats: int = 1) -> PairResult:
    """Mutual nearest-neighbour matching (Hamming or L2) and a RANSAC homography.

    The matcher is prepared first (zippy.matching.warmup: numba compiles on a fresh install, the compiled
    kernels need nothing), so that ``match_ms`` is matching time only: the median of ``timing_repeats``
    identical calls (a single call of a millisecond is at the mercy of the scheduler on a busy machine).
    """
    import time

    from zippy.geometry import estimate_homography
    from zippy.matching import match_hamming, match_l2, warmup

    t0 = time.perf_counter()
    if f0.is_binary:
        warmup()
    t1 = time.perf_counter()
    match = match_hamming if f0.is_binary else match_l2
    times = []
    for _ in range(max(1, timing_repeats)):
        t = time.perf_counter()
        pairs, _ = match(f0.descriptors, f1.descriptors, mutual=True)
        times.append(time.perf_counter() - t)
    t2 = time.perf_counter()
    H, inl = estimate_homography(f0.keypoints[pairs[:, 0]], f1.keypoints[pairs[:, 1]], threshold=ransac_px)
    t3 = time.perf_counter()
    return PairResult(pairs, H, inl, 1e3 * (t1 - t0), 1e3 * float(np.median(times)), 1e3 * (t3 - t2))
