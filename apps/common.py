"""Shared pieces of the `zippy` commands: model options, pair matching + homography."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

from zippy.features import Features
from zippy_apps.eval_args import add_nms_option, add_scales_option, add_shifts_option


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """--model, --weights, --engine, --scales, --shifts, --nms-radius, --max-keypoints, --threshold, --max-pixels."""
    p.add_argument("--model", default="zippypoint", help="backbone name (default zippypoint)")
    p.add_argument("--weights", default=None, help="weights file (default: the shipped weights of --model)")
    p.add_argument("--engine", default="auto", help="auto, int8, fp32 or onnx (default auto)")
    add_scales_option(p)
    add_shifts_option(p)
    add_nms_option(p)
    p.add_argument("--max-keypoints", type=int, default=1000)
    p.add_argument("--threshold", type=float, default=None, help="minimum keypoint score")
    p.add_argument(
        "--max-pixels",
        type=int,
        default=4096 * 4096,
        help="refuse larger images (pixels per pass, default 4096x4096 = 16777216; about 1.2 GB of memory)",
    )


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
        max_pixels=args.max_pixels,
    )
    if not ex.trained:
        print(f"note: {args.model} runs with UNTRAINED random weights (no trained weights found)", file=sys.stderr)
    return ex


@dataclass
class PairResult:
    """Matches of two images and the homography fitted to them."""

    pairs: np.ndarray  # int64 [K, 2]
    H: np.ndarray | None  # float64 [3, 3] image0 -> image1
    inliers: np.ndarray  # bool [K]


def match_and_fit(f0: Features, f1: Features, ransac_px: float = 3.0) -> PairResult:
    """Mutual nearest-neighbour matching (Hamming or L2) and a RANSAC homography."""
    from zippy.geometry import estimate_homography
    from zippy.matching import match_hamming, match_l2

    match = match_hamming if f0.is_binary else match_l2
    pairs, _ = match(f0.descriptors, f1.descriptors, mutual=True)
    H, inl = estimate_homography(f0.keypoints[pairs[:, 0]], f1.keypoints[pairs[:, 1]], threshold=ransac_px)
    return PairResult(pairs, H, inl)
