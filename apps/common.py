"""Shared pieces of the `zippy` commands: model options, pair matching + homography."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

from zippy.config import ExtractorConfig, add_extractor_arguments
from zippy.features import Features


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


@dataclass
class PairResult:
    """Matches of two images and the homography fitted to them."""

    pairs: np.ndarray  # int64 [K, 2]
    H: np.ndarray | None  # float64 [3, 3] image0 -> image1
    inliers: np.ndarray  # bool [K]


def match_and_fit(f0: Features, f1: Features, ransac_px: float = 3.0) -> PairResult:
    """Mutual nearest-neighbour matching (Hamming or L2) and a RANSAC homography."""
    import zippy
    from zippy.geometry import estimate_homography

    pairs, _ = zippy.match(f0, f1, mutual=True)
    H, inl = estimate_homography(f0.keypoints[pairs[:, 0]], f1.keypoints[pairs[:, 1]], threshold=ransac_px)
    return PairResult(pairs, H, inl)
