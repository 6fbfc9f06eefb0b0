"""Argument helpers shared by the `zippy eval ...` commands."""

from __future__ import annotations

import argparse
import os


def csv_list(text: str) -> list[str]:
    """'orb, sift,,zippypoint' -> ['orb', 'sift', 'zippypoint']."""
    return [t.strip() for t in text.split(",") if t.strip()]


def method_weights(items: list[str]) -> dict[str, str | None]:
    """Repeated ``--weights METHOD=PATH`` options -> {method: path}."""
    out: dict[str, str | None] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--weights must be METHOD=PATH, got {item!r}")
        out[name.strip().lower()] = path
    return out


def scales_list(text: str) -> tuple[float, ...]:
    """'1.41,1' -> (1.41, 1.0): image-pyramid scales of the zippy methods (checked by zippy.load)."""
    try:
        return tuple(float(t) for t in csv_list(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 1.41,1, got {text!r}") from None


def limit_threads(threads: int) -> None:
    """Check ``--threads`` and set the thread variables of libraries that read them at start-up.

    NUMBA_NUM_THREADS is left alone on purpose: numba fixes its pool size when the pool starts and
    raises if the variable changes afterwards in the same process; the matcher's thread count is set
    with zippy.matching.set_num_threads instead (default 1).
    """
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))


def add_weights_option(parser: argparse.ArgumentParser) -> None:
    """Repeatable ``--weights METHOD=PATH`` (read with :func:`method_weights`)."""
    parser.add_argument(
        "--weights",
        action="append",
        default=[],
        metavar="METHOD=PATH",
        help="weights file of a zippy method (repeatable); default: the shipped weights",
    )


def add_scales_option(parser: argparse.ArgumentParser) -> None:
    """``--scales S1,S2,...``: the zippy image pyramid (read as a tuple of floats)."""
    parser.add_argument(
        "--scales",
        type=scales_list,
        default=(1.0,),
        metavar="S1,S2",
        help="zippy image-pyramid scales, e.g. 1.41,1: detect at each, keep the best keypoints (default 1)",
    )


def add_nms_option(parser: argparse.ArgumentParser) -> None:
    """``--nms-radius PX``: the zippy keypoint NMS radius (default ``zippy.DEFAULT_NMS_RADIUS``)."""
    from zippy import DEFAULT_NMS_RADIUS

    parser.add_argument(
        "--nms-radius",
        type=float,
        default=DEFAULT_NMS_RADIUS,
        metavar="PX",
        help=f"zippy keypoint NMS radius in px (default {DEFAULT_NMS_RADIUS:g})",
    )


def add_method_options(parser: argparse.ArgumentParser, *, threads_help: str = "torch / OpenCV threads") -> None:
    """The options every `zippy eval ...` command shares: --weights, --engine, --threads, --overwrite."""
    add_weights_option(parser)
    parser.add_argument("--engine", default="auto", help="zippy engine: auto, int8, fp32, onnx (default auto)")
    add_scales_option(parser)
    add_nms_option(parser)
    parser.add_argument("--threads", type=int, default=1, help=f"{threads_help} (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="recompute cached results")
