"""`zippy eval localization`: visual localization against a map built from each method's features.

Examples::

    zippy eval localization synthetic --methods orb,sift,zippypoint --out results/localization/synthetic
    zippy eval localization sceaux_castle --methods zippypoint,orb,sift --out results/localization/sceaux
    zippy eval localization /data/aachen --methods zippypoint --pairs retrieval --out results/localization/aachen

DATASET is "synthetic" (generated into --cache), "sceaux_castle" or "sacre_coeur" (from ../shared/data)
or a folder in the hloc / Aachen layout (see :mod:`zippy_eval.localization.datasets`). Writes
summary.json, table.md and errors.png under ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse

from zippy_apps.eval_args import add_method_options, limit_threads, method_run_options

HELP = "visual localization: map from our features with pycolmap, queries by absolute pose, recall"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `zippy eval localization`."""
    parser.add_argument("dataset", help="synthetic, sceaux_castle, sacre_coeur, or a folder (hloc / Aachen layout)")
    parser.add_argument("--methods", default="zippypoint,orb,sift", help="comma-separated methods")
    parser.add_argument("--max-keypoints", type=int, default=2048, help="keypoints per image (default 2048)")
    parser.add_argument(
        "--resize-max", type=int, default=1024, help="larger image side for extraction, 0 = original (default 1024)"
    )
    parser.add_argument(
        "--mapping",
        default="auto",
        choices=["auto", "triangulate", "sfm"],
        help="auto: triangulate from known poses, SfM otherwise (SfM for leave-one-out)",
    )
    parser.add_argument(
        "--pairs",
        default="retrieval",
        choices=["retrieval", "match-count", "exhaustive"],
        help="image pairs: bag-of-words retrieval (default), match-count retrieval, or exhaustive",
    )
    parser.add_argument("--num-neighbors", type=int, default=10, help="pairs per image for the retrievals")
    parser.add_argument("--vocab", default=None, help="vocabulary for --pairs retrieval (default: the shipped one)")
    parser.add_argument("--max-queries", type=int, default=None, help="evaluate only the first N queries")
    parser.add_argument("--out", default="results/localization/latest", help="output folder")
    parser.add_argument(
        "--cache", default="results/localization/data", help="generated data: synthetic scene, Sceaux reference SfM"
    )
    parser.add_argument("--verbose-colmap", action="store_true", help="show COLMAP's own log")
    add_method_options(parser, threads_help="pycolmap / torch / OpenCV threads")


def run(args: argparse.Namespace) -> int:
    """Run the evaluation and print the markdown table."""
    limit_threads(args.threads)
    from zippy_eval.localization.datasets import load_dataset
    from zippy_eval.localization.pipeline import LocalizationConf
    from zippy_eval.localization.pipeline import run as run_pipeline

    conf = LocalizationConf(
        **method_run_options(args),
        max_keypoints=args.max_keypoints,
        resize_max=args.resize_max,
        mapping=args.mapping,
        pairs=args.pairs,
        num_neighbors=args.num_neighbors,
        vocabulary=args.vocab,
        num_threads=args.threads,
        max_queries=args.max_queries,
        overwrite=args.overwrite,
        verbose=args.verbose_colmap,
    )
    dataset = load_dataset(args.dataset, args.cache, num_threads=args.threads)
    summary = run_pipeline(conf, dataset, args.out)
    from zippy_eval.results import print_results

    print_results(summary)
    return 0
