"""`zippy detect IMAGE... --out DIR`: features of images to .npz or .h5 files."""

from __future__ import annotations

import argparse
from pathlib import Path

from zippy_apps.common import add_model_arguments, load_extractor

HELP = "detect and describe images; writes one feature file per image (.npz or .h5)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--format", choices=("npz", "h5"), default="npz")
    add_model_arguments(p)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from zippy.features import save_features
    from zippy.image import read_image

    paths = [Path(p) for p in args.images]
    for p in paths:  # fail before any work on a missing file
        if not p.is_file():
            raise FileNotFoundError(f"image file not found: {p}")
    if args.max_keypoints <= 0:
        raise ValueError(f"--max-keypoints must be positive, got {args.max_keypoints}")
    ex = load_extractor(args)
    out = Path(args.out)
    for p in tqdm(paths, desc="detect", disable=len(paths) < 5):
        feats = ex.extract(read_image(p), args.max_keypoints, args.threshold)
        path = save_features(feats, out / f"{p.stem}.{args.format}")
        print(f"{p}: {len(feats)} keypoints -> {path}")
    return 0
