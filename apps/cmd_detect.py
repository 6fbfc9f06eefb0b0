"""`zippy detect IMAGE... --out DIR`: features of images to .npz or .h5 files."""

from __future__ import annotations

import argparse
from pathlib import Path

from zippy_apps.common import add_model_arguments, load_extractor

HELP = (
    "detect and describe images; writes one feature file per image (.npz or .h5), named by its path below "
    "the images' common folder"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--format", choices=("npz", "h5"), default="npz")
    add_model_arguments(p)


def output_names(paths: list[Path], suffix: str) -> list[Path]:
    """Output file of each image, relative to the output folder: its path below the images' common folder
    with ``suffix`` (``a/s0.png b/s0.png`` -> ``a/s0.npz b/s0.npz``; images of one folder -> ``<stem>.npz``).

    Raises:
        ValueError: two images would write the same file (same stem in one folder, or one image twice).
    """
    import os

    resolved = [p.resolve() for p in paths]
    root = Path(os.path.commonpath([p.parent for p in resolved]))
    names = [p.relative_to(root).with_suffix(suffix) for p in resolved]
    seen: dict[Path, Path] = {}
    for src, name in zip(paths, names):
        key = Path(str(name).lower()) if os.path.normcase("A") == "a" else name
        if key in seen:
            raise ValueError(
                f"{seen[key]} and {src} would both write {name}: rename one, or run them with different --out"
            )
        seen[key] = src
    return names


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from zippy.features import save_features
    from zippy.image import read_image
    from zippy.io import remove_temps_of

    paths = [Path(p) for p in args.images]
    for p in paths:  # fail before any work on a missing file
        if not p.is_file():
            raise FileNotFoundError(f"image file not found: {p}")
    if args.max_keypoints <= 0:
        raise ValueError(f"--max-keypoints must be positive, got {args.max_keypoints}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out must be a folder, got the file {out}")
    names = output_names(paths, f".{args.format}")
    ex = load_extractor(args)
    for p, name in tqdm(list(zip(paths, names)), desc="detect", disable=len(paths) < 5):
        remove_temps_of(out / name)  # left by a killed run
        feats = ex.extract(read_image(p), args.max_keypoints, args.threshold)
        path = save_features(feats, out / name)
        print(f"{p}: {len(feats)} keypoints -> {path}")
    return 0
