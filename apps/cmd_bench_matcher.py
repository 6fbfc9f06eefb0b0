"""`zippy bench matcher`: speed of the bitwise matcher against OpenCV, faiss and float GEMM matching.

Example::

    zippy bench matcher --tag default            # N = 500..5000, 1 and 2 threads, all methods

Writes results/bench_matcher/<tag>/summary.json, table.md and bench_matcher.png (see
:mod:`zippy_eval.bench_matcher`) and prints the table.
"""

from __future__ import annotations

import argparse

HELP = "benchmark mutual-NN matching: zippy (numba / numpy) vs cv2.BFMatcher, faiss, float GEMM"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `zippy bench matcher`."""
    from zippy_eval.bench_matcher import add_arguments as add

    add(parser)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark (one subprocess per thread count) and print the markdown table."""
    from zippy_eval.bench_matcher import config_from_args
    from zippy_eval.bench_matcher import run as run_bench

    conf, output_dir = config_from_args(args)
    summary = run_bench(conf, output_dir)
    from zippy_eval.results import print_results

    print_results(summary)
    return 0
