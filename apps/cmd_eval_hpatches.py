"""`zippy eval hpatches`: HPatches-style homography evaluation of keypoint methods.

Example::

    zippy eval hpatches /data/hpatches-sequences-release --methods orb,sift,zippypoint \
        --settings 240x320:300,480x640:1000 --out results/hpatches/baselines

Writes summary.json, table.md and mma_<dataset>.png under ``--out`` (see
:mod:`zippy_eval.hpatches.pipeline`) and prints the table.
"""

from __future__ import annotations

import argparse

from zippy_apps.eval_args import add_method_options, csv_list, limit_threads, method_run_options

HELP = "HPatches-style evaluation (repeatability, homography accuracy, matching score, MMA)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `zippy eval hpatches`."""
    parser.add_argument("datasets", nargs="+", metavar="DATASET", help="folder(s) in the HPatches sequences layout")
    parser.add_argument(
        "--methods",
        default="orb,sift",
        help="comma-separated methods, e.g. orb,sift,akaze,brisk,orb_teblid,aliked,zippypoint",
    )
    parser.add_argument(
        "--settings", default="240x320:300,480x640:1000", help="comma-separated HEIGHTxWIDTH:TOPK (default: both)"
    )
    parser.add_argument(
        "--out", default="results/hpatches/latest", help="output folder (default results/hpatches/latest)"
    )
    parser.add_argument("--include", action="append", default=None, metavar="GLOB", help="only sequences matching")
    parser.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="leave out sequences matching")
    parser.add_argument("--cache", default=None, help="feature cache folder (default OUT/cache)")
    parser.add_argument(
        "--dedup-px",
        type=float,
        default=0.0,
        metavar="PX",
        help="protocol variant: drop every method's keypoints within PX of a better one before matching "
        "(one corner found several times counts once; default 0, off)",
    )
    add_method_options(parser)


def run(args: argparse.Namespace) -> int:
    """Run the evaluation and print the markdown table."""
    limit_threads(args.threads)
    from zippy_eval.hpatches.pipeline import HPatchesConfig, Setting
    from zippy_eval.hpatches.pipeline import run as run_pipeline

    conf = HPatchesConfig(
        **method_run_options(args),
        settings=tuple(Setting.parse(s) for s in csv_list(args.settings)),
        dedup_px=args.dedup_px,
        include=tuple(args.include) if args.include else None,
        exclude=tuple(args.exclude),
        overwrite=args.overwrite,
        threads=args.threads,
        cache_dir=args.cache,
    )
    summary = run_pipeline(conf, args.datasets, args.out)
    from zippy_eval.results import print_results

    print_results(summary)
    return 0
