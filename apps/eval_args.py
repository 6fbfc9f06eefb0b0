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


def add_method_options(parser: argparse.ArgumentParser, *, threads_help: str = "torch / OpenCV threads") -> None:
    """The options every `zippy eval ...` command shares: --weights METHOD=PATH, the zippy extractor options
    (:func:`zippy.config.add_extractor_arguments`, read with ``ExtractorConfig.from_args``), --threads, --overwrite."""
    from zippy.config import add_extractor_arguments

    add_weights_option(parser)
    add_extractor_arguments(parser, model=False)
    parser.add_argument("--threads", type=int, default=1, help=f"{threads_help} (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="recompute cached results")


def method_run_options(args: argparse.Namespace) -> dict:
    """The fields every evaluation config takes from :func:`add_method_options` and ``--methods``: ``methods``
    (lower-cased names), ``weights`` ({method: file}) and ``extractor`` (the zippy methods' ExtractorConfig)."""
    from zippy.config import ExtractorConfig

    return {
        "methods": tuple(m.lower() for m in csv_list(args.methods)),
        "weights": method_weights(args.weights),
        "extractor": ExtractorConfig.from_args(args),
    }
