"""Shared pieces of the `zippy` commands: model options, pair matching + homography."""

from __future__ import annotations

import argparse

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


def match_and_fit(f0: Features, f1: Features, ransac_px: float = 3.0) -> PairResult:
    """Mutual nearest-neighbour matches and a homography by classic RANSAC (the estimator of the HPatches protocol;
    :func:`zippy.tracking.match_and_fit`): ``.matches`` int64 [K, 2], ``.H`` (or None), ``.inliers`` bool [K]."""
    from zippy.tracking import match_and_fit as fit

    return fit(f0, f1, ransac_threshold=ransac_px, robust="ransac", max_iters=5000, confidence=0.9999)
