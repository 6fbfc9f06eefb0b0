"""`zippy eval relpose`: relative pose (essential matrix) AUC on ScanNet-style pairs.

Example::

    zippy eval relpose ../shared/data/localization/scannet_pairs --methods zippypoint,orb,sift,aliked \
        --out results/relpose/scannet

Writes summary.json, table.md and pose_error.png under ``--out`` (see :mod:`zippy_eval.relpose`)
and prints the table.
"""

from __future__ import annotations

import argparse

from zippy_apps.eval_args import add_method_options, limit_threads, method_run_options

HELP = "relative pose AUC@5/10/20 deg on ScanNet-style pairs (essential matrix RANSAC)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `zippy eval relpose`."""
    parser.add_argument("dataset", help="folder with images/ and scannet_sample_pairs_with_gt.txt")
    parser.add_argument("--methods", default="zippypoint,orb,sift,aliked", help="comma-separated methods")
    parser.add_argument("--max-keypoints", type=int, default=1024, help="keypoints per image (default 1024)")
    parser.add_argument("--resize-max", type=int, default=640, help="larger image side for extraction (default 640)")
    parser.add_argument("--estimator", default="pycolmap", choices=["pycolmap", "opencv"], help="essential matrix")
    parser.add_argument("--ransac-px", type=float, default=1.0, help="RANSAC threshold in resized pixels (default 1)")
    parser.add_argument("--out", default="results/relpose/latest", help="output folder")
    add_method_options(parser)


def run(args: argparse.Namespace) -> int:
    """Run the evaluation and print the markdown table."""
    limit_threads(args.threads)
    from zippy_eval.relpose import RelPoseConf
    from zippy_eval.relpose import run as run_pipeline

    conf = RelPoseConf(
        **method_run_options(args),
        max_keypoints=args.max_keypoints,
        resize_max=args.resize_max,
        estimator=args.estimator,
        ransac_px=args.ransac_px,
        num_threads=args.threads,
        overwrite=args.overwrite,
    )
    summary = run_pipeline(conf, args.dataset, args.out)
    from zippy_eval.results import print_results

    print_results(summary)
    return 0
