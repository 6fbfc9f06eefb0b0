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


def shifts_list(text: str) -> tuple[tuple[int, int], ...]:
    """'0:0,4:4' -> ((0, 0), (4, 4)): grid shifts (dx:dy) of the zippy methods (range checked by zippy.load)."""
    bad = argparse.ArgumentTypeError(f"expected comma-separated DX:DY integer pairs such as 0:0,4:4, got {text!r}")
    out = []
    for item in csv_list(text):
        dx, sep, dy = item.partition(":")
        if not sep:
            raise bad
        try:
            out.append((int(dx), int(dy)))
        except ValueError:
            raise bad from None
    if not out:
        raise bad
    return tuple(out)


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


def add_shifts_option(parser: argparse.ArgumentParser) -> None:
    """``--shifts DX:DY,...``: the zippy grid shifts (read as a tuple of (dx, dy) pairs)."""
    parser.add_argument(
        "--shifts",
        type=shifts_list,
        default=((0, 0),),
        metavar="DX:DY,...",
        help="zippy grid shifts in px, e.g. 0:0,4:4: one pass per shift and scale with the 8x8 cell grid moved, "
        "keep the best keypoints (default 0:0)",
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
    add_shifts_option(parser)
    add_nms_option(parser)
    parser.add_argument("--threads", type=int, default=1, help=f"{threads_help} (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="recompute cached results")
