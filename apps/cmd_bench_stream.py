"""`zippy bench stream`: end-to-end FPS of the stream app (extraction, matching, geometry, drawing)."""

from __future__ import annotations

import argparse
from pathlib import Path

from zippy_apps.eval_args import add_weights_option, method_weights

HELP = "end-to-end FPS of the stream app on a synthetic video and the TUM frames (JSON + table + plot)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--methods", nargs="+", default=["orb", "zippypoint"])
    p.add_argument("--sources", nargs="+", default=["synthetic", "tum"], choices=["synthetic", "tum"])
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--max-keypoints", type=int, default=500)
    p.add_argument("--engine", default="int8")
    p.add_argument("--threads", type=int, default=1)
    add_weights_option(p)
    p.add_argument("--output", type=Path, default=Path("results") / "bench_stream" / "default")


def run(args: argparse.Namespace) -> int:
    from zippy_apps.bench_stream import BenchConfig
    from zippy_apps.bench_stream import run as run_bench

    conf = BenchConfig(
        methods=args.methods,
        sources=args.sources,
        frames=args.frames,
        max_keypoints=args.max_keypoints,
        threads=args.threads,
        engine=args.engine,
        weights=method_weights(args.weights),
    )
    path = run_bench(conf, args.output)
    print((path.parent / "summary.md").read_text())
    return 0
