"""Zippy: fast binary keypoint detection, description and matching on CPUs.

Typical use::

    import zippy
    extractor = zippy.load("zippypoint")            # trained weights from weights/, int8 engine where supported
    f0 = extractor.extract(image0, max_keypoints=1000)  # keypoints [N,2], scores [N], descriptors uint8 [N,32]
    f1 = extractor.extract(image1)
    pairs, dist = zippy.matching.match_hamming(f0.descriptors, f1.descriptors)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from zippy.features import Features, load_features, save_features

__version__ = "0.1.0"
# keypoint NMS radius (px) between neighbouring 8x8 cells. 1 since session 8: against the earlier 4 it raised
# zippypoint_small's development-split MMA@3 from 0.534 to 0.586 at the same H@3 (docs/hpatches.md)
DEFAULT_NMS_RADIUS = 1.0
__all__ = [
    "DEFAULT_NMS_RADIUS",
    "Features",
    "__version__",
    "available_models",
    "load",
    "load_features",
    "save_features",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())

if TYPE_CHECKING:
    from zippy.extractor import Extractor


def load(
    name: str = "zippypoint",
    *,
    weights: Any = None,
    engine: str = "auto",
    scales: Sequence[float] = (1.0,),
    shifts: Sequence[Sequence[int]] = ((0, 0),),
    nms_radius: float = DEFAULT_NMS_RADIUS,
    max_pixels: int | None = 4096 * 4096,
) -> Extractor:
    """Build an extractor by model name (see :func:`available_models`).

    Args:
        name: a registered backbone, e.g. "zippypoint" (binary + 8-bit) or "kp2d" (float), or a shipped
            variant of one, e.g. "zippypoint_small" (narrower and faster; weights/MODEL_CARD.md).
        weights: path of a weights file; None takes the shipped weights of ``name`` from weights/
            (for a backbone without shipped weights: untrained random weights, with a warning).
        engine: "auto" (int8 where supported, else fp32), "int8", "fp32" (fake-quant network in float), "onnx".
        scales: image-pyramid scales, e.g. (1.41, 1.0): detect and describe at each, keep the best
            ``max_keypoints`` over all (more accurate, costs the sum of the scales' areas); default one pass.
        shifts: grid shifts (dx, dy) in px, each a pass per scale with the network's 8x8 cell grid moved by
            (dx, dy), e.g. ((0, 0), (4, 4)): the network's keypoints and descriptors depend on where a point
            falls in its cell, and a second grid half a cell away finds and describes points the first
            misses (more accurate, costs one more pass per shift); default ((0, 0),), one grid.
        max_pixels: largest image accepted, in pixels per pass (height x width x the largest scale squared);
            larger images raise ValueError (resize them, or raise this; None: no limit). Default 4096 x 4096
            (16.8 MP, about 1.2 GB of memory).
        nms_radius: keypoint NMS radius in px between neighbouring 8x8 cells (default 1; 0: none). Session 8
            lowered it from 4, which raised MMA@3 on the development split (docs/hpatches.md, "Session 8").

    Raises:
        TypeError: ``name`` is not a str, or ``weights`` not a path.
        ValueError: unknown name or engine (the message lists the choices); a weights file that is not one.
        FileNotFoundError: ``weights`` names a file that does not exist.
    """
    from zippy.extractor import Extractor

    return Extractor.from_name(
        name,
        weights=weights,
        engine=engine,
        scales=scales,
        shifts=shifts,
        nms_radius=nms_radius,
        max_pixels=max_pixels,
    )


def available_models() -> list[str]:
    """Names :func:`load` takes: the registered backbones and the shipped variants, sorted."""
    from zippy.models import available
    from zippy.weights import shipped_models

    return sorted(set(available()) | set(shipped_models()))
