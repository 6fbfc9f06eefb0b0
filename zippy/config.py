"""The extractor's options as one frozen record, :class:`ExtractorConfig`, and the command-line options that build it.

One object travels from the command line (:func:`add_extractor_arguments` / :meth:`ExtractorConfig.from_args`)
through the evaluation configs to :func:`zippy.load`, and names the feature caches (:meth:`ExtractorConfig.tag`).
This module imports neither torch nor numpy.
"""

from __future__ import annotations

import argparse
import dataclasses
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_NMS_RADIUS",
    "DETECTORS",
    "ENGINES",
    "ExtractorConfig",
    "add_extractor_arguments",
    "check_detector",
    "check_nms_radius",
    "check_scales",
    "check_shifts",
    "parse_scales",
    "parse_shifts",
]

# keypoint NMS radius (px) between neighbouring 8x8 cells; against 4 px it raised zippypoint_small's MMA@3 on the
# development split from 0.534 to 0.586 at the same H@3 (docs/hpatches.md)
DEFAULT_NMS_RADIUS = 1.0
ENGINES = ("auto", "fp32", "int8", "onnx")
# keypoint detectors: the network's own keypoint head, or Shi-Tomasi corners (zippy.corners) described by the network
DETECTORS = ("network", "corners")


def check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    """Validated image-pyramid scales: a non-empty sequence of distinct numbers in [0.25, 4]."""
    try:
        out = tuple(float(s) for s in scales)
    except (TypeError, ValueError):
        raise ValueError(f"scales must be a sequence of numbers, got {scales!r}") from None
    if not out or len(set(out)) != len(out) or not all(0.25 <= s <= 4.0 for s in out):
        raise ValueError(f"scales must be distinct numbers in [0.25, 4], at least one, got {scales!r}")
    return out


def check_shifts(shifts: Sequence[Sequence[int]], cell: int = 8) -> tuple[tuple[int, int], ...]:
    """Validated grid shifts: a non-empty sequence of distinct (dx, dy) integer pairs, each in [0, cell)."""
    try:
        out = tuple((int(dx), int(dy)) for dx, dy in shifts)
        exact = all(float(a) == int(a) for pair in shifts for a in pair)
    except (TypeError, ValueError):
        raise ValueError(f"shifts must be a sequence of (dx, dy) integer pairs, got {shifts!r}") from None
    if not out or not exact or len(set(out)) != len(out) or not all(0 <= a < cell for pair in out for a in pair):
        raise ValueError(f"shifts must be distinct (dx, dy) integer pairs in [0, {cell}), at least one, got {shifts!r}")
    return out


def check_detector(detector: str | None) -> str | None:
    """Validated keypoint detector: one of :data:`DETECTORS`, or None (the model's own)."""
    if detector is not None and detector not in DETECTORS:
        raise ValueError(f"unknown detector {detector!r}; choose one of {list(DETECTORS)} (or None: the model's own)")
    return detector


def check_nms_radius(nms_radius: float) -> float:
    """Validated keypoint NMS radius in px (>= 0; 0 keeps the best keypoint of every cell)."""
    try:
        ok = not isinstance(nms_radius, bool) and float(nms_radius) >= 0 and float(nms_radius) == nms_radius
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"nms_radius must be a number >= 0 (px), got {nms_radius!r}")
    return float(nms_radius)


DEFAULT_MAX_PIXELS = 4096 * 4096
"""Largest image an extractor takes by default, in pixels per pass (height x width x the largest pyramid scale
squared): 16.8 MP, about 1.2 GB of memory and 20 s with the shipped network on one core of a 2-core machine (a
6000x8000 photo takes 3.5 GB and 59 s). Resize larger images (``zippy.image.resize_image``) or raise the limit
with ``zippy.load(..., max_pixels=...)`` / ``--max-pixels``."""


def check_max_pixels(max_pixels: int | None) -> int | None:
    """Validate the image size limit: a positive integer, or None for no limit."""
    if max_pixels is None:
        return None
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, numbers.Integral) or max_pixels <= 0:
        raise ValueError(f"max_pixels must be a positive integer or None (no limit), got {max_pixels!r}")
    return int(max_pixels)


@dataclass(frozen=True)
class ExtractorConfig:
    """What :func:`zippy.load` builds an extractor from; validated and normalized on construction.

    Attributes:
        name: a model of :func:`zippy.available_models` (shipped trained weights), or with ``allow_untrained`` a
            backbone of :func:`zippy.available_backbones`.
        weights: path of a weights file; None takes the shipped weights of ``name`` (weights/).
        engine: "auto" (int8 where the CPU and network support it, else fp32), "int8", "fp32" (the fake-quantized
            network in float) or "onnx" (ONNX Runtime).
        scales: image-pyramid scales, e.g. (1.41, 1.0): detect and describe at each, keep the best keypoints over
            all (more accurate, costs the sum of the scales' areas); default one pass at scale 1.
        shifts: grid shifts (dx, dy) in px, each in [0, 8): a pass per scale with the network's 8x8 cell grid
            moved by (dx, dy), e.g. ((0, 0), (4, 4)). The network's keypoints depend on where a point falls in its
            cell, and a second grid half a cell away finds points the first misses; default ((0, 0),).
        nms_radius: keypoint NMS radius in px between neighbouring cells (default 1; 0: none).
        detector: where the keypoints come from: "network" (the network's keypoint head) or "corners" (Shi-Tomasi
            corners of the smoothed image, :mod:`zippy.corners`, described by the network); None (default): the
            model's own choice, saved in its weights file ("corners" for zippyfast, "network" for the others).
        allow_untrained: a backbone without trained weights loads with random weights instead of raising
            ValueError (for tests, training and speed measurements, never for results).
        max_pixels: largest image accepted, in pixels per pass (height x width x the largest scale squared);
            larger images raise ValueError (resize them, or raise this; None: no limit). Default 4096 x 4096.

    The keypoint budget is not part of it: it is an argument of ``Extractor.extract`` (the evaluation protocols
    set one per resolution).
    """

    name: str = "zippypoint"
    weights: str | None = None
    engine: str = "auto"
    scales: tuple[float, ...] = (1.0,)
    shifts: tuple[tuple[int, int], ...] = ((0, 0),)
    nms_radius: float = DEFAULT_NMS_RADIUS
    allow_untrained: bool = False
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    detector: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"name must be a model name (str), got {type(self.name).__name__} {self.name!r}")
        if not self.name:
            raise ValueError("name must be a model name, got ''")
        if self.weights is not None:
            if not isinstance(self.weights, (str, os.PathLike)):
                got = type(self.weights).__name__
                raise TypeError(f"weights must be a path (str or os.PathLike) or None, got {got}")
            object.__setattr__(self, "weights", os.fspath(self.weights))
        object.__setattr__(self, "max_pixels", check_max_pixels(self.max_pixels))
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; choose one of {list(ENGINES)}")
        object.__setattr__(self, "scales", check_scales(self.scales))
        object.__setattr__(self, "shifts", check_shifts(self.shifts))
        object.__setattr__(self, "nms_radius", check_nms_radius(self.nms_radius))
        object.__setattr__(self, "allow_untrained", bool(self.allow_untrained))
        object.__setattr__(self, "detector", check_detector(self.detector))

    @classmethod
    def build(cls, config: str | ExtractorConfig = "zippypoint", /, **options: Any) -> ExtractorConfig:
        """A config from a name and options, or a given config with some options replaced (``name=`` among the
        options replaces the name).

        Raises:
            ValueError: an unknown option (the message lists the known ones) or a bad value.
        """
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(options) - set(fields))
        if unknown:
            raise ValueError(f"unknown extractor option(s) {unknown}; choose from {fields}")
        if isinstance(config, ExtractorConfig):
            return dataclasses.replace(config, **options) if options else config
        return cls(**{"name": config, **options})

    def replace(self, **options: Any) -> ExtractorConfig:
        """A copy with some options changed (validated again)."""
        return ExtractorConfig.build(self, **options)

    def options(self) -> dict[str, Any]:
        """The options that shape the features, JSON-ready (for protocols): engine, scales, shifts, nms_radius,
        detector (None: the model's own)."""
        return {
            "engine": self.engine,
            "scales": list(self.scales),
            "shifts": [list(d) for d in self.shifts],
            "nms_radius": self.nms_radius,
            "detector": self.detector,
        }

    def tag(self) -> str:
        """Cache-name part of the options that change the features besides the name, weights and engine: the
        pyramid unless one pass at scale 1 ("x1.41+1"), the grid shifts unless only (0, 0) ("g0-0+4-4"), always
        the NMS radius ("nms1") and a detector chosen here ("corners"), joined by "-", e.g. "x1.41+1-g0-0+4-4-nms1"."""
        parts = [] if self.scales == (1.0,) else ["x" + "+".join(f"{s:g}" for s in self.scales)]
        if self.shifts != ((0, 0),):
            parts.append("g" + "+".join(f"{dx}-{dy}" for dx, dy in self.shifts))
        parts.append(f"nms{self.nms_radius:g}")
        return "-".join(parts if self.detector is None else [*parts, self.detector])

    @classmethod
    def from_args(cls, args: argparse.Namespace, **options: Any) -> ExtractorConfig:
        """The config of the options :func:`add_extractor_arguments` added (``--model`` / ``--weights`` when present);
        ``options`` override or complete them (e.g. ``name=`` for commands without ``--model``)."""
        got = {"engine": args.engine, "scales": args.scales, "shifts": args.shifts, "nms_radius": args.nms_radius}
        if hasattr(args, "detector"):
            got["detector"] = args.detector
        if isinstance(getattr(args, "model", None), str):
            got["name"] = args.model
        if isinstance(getattr(args, "weights", None), (str, os.PathLike)):
            got["weights"] = args.weights
        if hasattr(args, "max_pixels"):
            got["max_pixels"] = args.max_pixels
        return cls.build(**{**got, **options})


def parse_scales(text: str) -> tuple[float, ...]:
    """'1.41,1' -> (1.41, 1.0): image-pyramid scales (checked by :class:`ExtractorConfig`)."""
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 1.41,1, got {text!r}") from None


def parse_shifts(text: str) -> tuple[tuple[int, int], ...]:
    """'0:0,4:4' -> ((0, 0), (4, 4)): grid shifts DX:DY (range checked by :class:`ExtractorConfig`)."""
    bad = argparse.ArgumentTypeError(f"expected comma-separated DX:DY integer pairs such as 0:0,4:4, got {text!r}")
    out = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
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


def add_extractor_arguments(parser: argparse.ArgumentParser, *, model: bool = True) -> None:
    """Add the extractor options, read back with :meth:`ExtractorConfig.from_args`.

    Args:
        parser: the command's parser.
        model: also add ``--model NAME`` and ``--weights PATH`` (commands that run one extractor); commands that
            compare several methods name them otherwise and take their own ``--weights``.
    """
    if model:
        parser.add_argument("--model", default="zippypoint", help="model name (default zippypoint)")
        parser.add_argument("--weights", default=None, help="weights file (default: the shipped weights of --model)")
    parser.add_argument("--engine", default="auto", help="zippy engine: auto, int8, fp32 or onnx (default auto)")
    parser.add_argument(
        "--scales",
        type=parse_scales,
        default=(1.0,),
        metavar="S1,S2",
        help="zippy image-pyramid scales, e.g. 1.41,1: detect at each, keep the best keypoints (default 1)",
    )
    parser.add_argument(
        "--shifts",
        type=parse_shifts,
        default=((0, 0),),
        metavar="DX:DY,...",
        help="zippy grid shifts in px, e.g. 0:0,4:4: one pass per shift and scale with the 8x8 cell grid moved, "
        "keep the best keypoints (default 0:0)",
    )
    parser.add_argument(
        "--nms-radius",
        type=float,
        default=DEFAULT_NMS_RADIUS,
        metavar="PX",
        help=f"zippy keypoint NMS radius in px (default {DEFAULT_NMS_RADIUS:g})",
    )
    parser.add_argument(
        "--detector",
        choices=DETECTORS,
        default=None,
        help="zippy keypoints: the network's keypoint head or Shi-Tomasi corners described by the network "
        "(default: the model's own; zippyfast: corners)",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse larger images (pixels per pass; default 4096x4096 = {DEFAULT_MAX_PIXELS}, about 1.2 GB)",
    )
