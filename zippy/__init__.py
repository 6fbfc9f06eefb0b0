"""Zippy: fast binary keypoint detection, description and matching on CPUs.

Typical use (``image0`` and ``image1`` are numpy RGB images)::

    >>> import zippy
    >>> extractor = zippy.load("zippypoint")             # shipped trained weights, int8 engine where supported
    >>> f0 = extractor.extract(image0, max_keypoints=1000)  # keypoints [N,2], scores [N], descriptors uint8 [N,32]
    >>> f1 = extractor.extract(image1)
    >>> pairs, dist = zippy.match(f0, f1)                 # mutual nearest neighbours: int64 [K,2], distances [K]
    >>> pairs.dtype, pairs.shape[1]
    (dtype('int64'), 2)

``zippy.matching`` (the matcher alone, numpy only) is reachable as an attribute after ``import zippy``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from zippy import matching
from zippy.config import DEFAULT_NMS_RADIUS, ExtractorConfig
from zippy.features import Features, load_features, save_features

__version__ = "0.1.0"
__all__ = [
    "DEFAULT_NMS_RADIUS",
    "ExtractorConfig",
    "Features",
    "__version__",
    "available_backbones",
    "available_models",
    "load",
    "load_features",
    "match",
    "matching",
    "save_features",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())

if TYPE_CHECKING:
    from zippy.extractor import Extractor


def load(config: str | ExtractorConfig = "zippypoint", /, **options: Any) -> Extractor:
    """Build an extractor: ``zippy.load("zippypoint", scales=(1.41, 1.0))`` or ``zippy.load(config)``.

    Args:
        config: a model name of :func:`available_models` (e.g. "zippypoint", "zippypoint_small", "kp2d"), or an
            :class:`ExtractorConfig`.
        **options: fields of :class:`ExtractorConfig` (weights, engine, scales, shifts, nms_radius,
            allow_untrained, max_pixels); with a config given, they replace its fields.

    Returns:
        The extractor; ``extractor.config`` is the config it was built from, with the engine it really runs.

    Raises:
        TypeError: ``config`` is neither a name (str) nor an ExtractorConfig, or ``weights`` is not a path.
        ValueError: unknown name, engine or option (the message lists the choices); a backbone without trained
            weights unless ``allow_untrained=True``.
        FileNotFoundError: ``weights`` names a file that does not exist.
    """
    from zippy.extractor import Extractor

    return Extractor.from_config(ExtractorConfig.build(config, **options))


def available_models() -> list[str]:
    """Names :func:`load` takes with trained weights (the shipped ``weights/<name>.pt`` files), sorted."""
    from zippy.weights import shipped_models

    return shipped_models()


def available_backbones() -> list[str]:
    """The trainable architectures of the backbone registry, sorted; without shipped weights they load only with
    ``zippy.load(name, allow_untrained=True)`` (random weights) or ``weights=`` a trained file."""
    from zippy.models import available

    return sorted(available())


def match(f0: Any, f1: Any, **options: Any) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour matching of two feature sets: Hamming for packed bits, L2 for float descriptors.

    Args:
        f0, f1: :class:`Features` (or descriptor arrays) of two images, both uint8 [N, B] packed bits or both
            float32 [N, D], of the same width.
        **options: those of :func:`zippy.matching.match_hamming` / :func:`zippy.matching.match_l2`: ``mutual``
            (default True), ``ratio``, ``max_distance``, ``threads``.

    Returns:
        pairs int64 [K, 2] (index in f0, index in f1), sorted by the first index, and their distances [K]
        (int32 Hamming distances, or float32 L2 distances).

    Raises:
        ValueError: the two descriptor sets differ in kind or width.
    """
    d0, d1 = (np.asarray(getattr(f, "descriptors", f)) for f in (f0, f1))
    if d0.dtype != d1.dtype or d0.ndim != 2 or d1.ndim != 2 or d0.shape[1] != d1.shape[1]:
        raise ValueError(
            "descriptors must be of one kind and width, "
            f"got {d0.dtype} {list(d0.shape)} and {d1.dtype} {list(d1.shape)}"
        )
    if d0.dtype == np.uint8:
        return matching.match_hamming(d0, d1, **options)
    return matching.match_l2(d0, d1, **options)
