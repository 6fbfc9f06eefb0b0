"""`zippy bench extract`: extraction speed per stage, total per frame and peak memory of every method.

Example::

    zippy bench extract --tag main                 # 240x320 and 480x640, 1 and 2 threads, all methods
    zippy bench extract --methods zippypoint-int8 sift --sizes 480x640 --threads 1 --tag quick

Writes results/bench_extract/<tag>/summary.json, summary.md and times.png (see
:mod:`zippy_eval.bench_extract`) and prints the table.
"""

from __future__ import annotations

import argparse

HELP = "benchmark extraction: zippypoint fp32 / fake-quant / int8, kp2d, ORB, SIFT, AKAZE, BRISK, ALIKED"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `zippy bench extract`."""
    from zippy_eval.bench_extract import add_arguments as add

    add(parser)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark (one timing subprocess per size and thread count, one memory subprocess per method and
    size) and print the table."""
    from zippy_eval.bench_extract import config_from_args, output_dir_from_args
    from zippy_eval.bench_extract import run as run_bench

    summary = run_bench(config_from_args(args), output_dir_from_args(args))
    print(summary.with_name("summary.md").read_text(encoding="utf-8"))
    print(f"results: {summary.parent}")
    return 0
