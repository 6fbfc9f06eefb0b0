"""Shi-Tomasi corners on a smoothed grey image: the keypoint detector of ``detector="corners"``.

A corner's position and score are functions of the pixels around it, so moving the image moves its corners
with it (a 4 px shift keeps 0.99 of them; the 8x8-cell head of the fast network keeps 0.64). The image is
smoothed by a Gaussian first: at sigma 1.6 px the corners survive the blur, noise and contrast changes of the
illumination pairs better (development split i_ repeatability 0.64 against 0.56 without smoothing; docs/hpatches.md,
"The corner detector").
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["CornerConfig", "detect_corners", "rgb_to_grey"]


@dataclass(frozen=True)
class CornerConfig:
    """Settings of :func:`detect_corners` (the defaults are the ones measured in docs/hpatches.md).

    Attributes:
        sigma: Gaussian smoothing of the grey image before detection (px, > 0).
        min_distance: smallest distance between two corners (px, >= 1); the stronger one is kept.
        block_size: side of the window over which the gradient products are summed (odd, >= 3).
        quality: corners weaker than this fraction of the strongest are dropped (in (0, 1)).
    """

    sigma: float = 1.6
    min_distance: float = 5.0
    block_size: int = 5
    quality: float = 0.001

    def __post_init__(self) -> None:
        if not self.sigma > 0:
            raise ValueError(f"sigma must be > 0 px, got {self.sigma!r}")
        if not self.min_distance >= 1:
            raise ValueError(f"min_distance must be >= 1 px, got {self.min_distance!r}")
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 3:
            raise ValueError(f"block_size must be an odd integer >= 3, got {self.block_size!r}")
        if self.block_size % 2 == 0:
            raise ValueError(f"block_size must be odd, got {self.block_size}")
        if not 0 < self.quality < 1:
            raise ValueError(f"quality must be in (0, 1), got {self.quality!r}")


def rgb_to_grey(x: np.ndarray) -> np.ndarray:
    """float32 [H, W] grey image (ITU-R 601 weights, as OpenCV's RGB2GRAY) of an RGB float32 [H, W, 3] image."""
    return cv2.cvtColor(np.ascontiguousarray(x, np.float32), cv2.COLOR_RGB2GRAY)


def detect_corners(
    grey: np.ndarray, max_keypoints: int, threshold: float | None = None, cfg: CornerConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ``max_keypoints`` strongest Shi-Tomasi corners of a grey image, at least ``cfg.min_distance`` apart.

    Args:
        grey: float32 or uint8 [H, W] (any intensity scale: the scores are relative to the strongest corner).
        max_keypoints: at most this many corners (> 0).
        threshold: minimum score in [0, 1] (None: ``cfg.quality``).
        cfg: detector settings (None: the defaults).

    Returns:
        keypoints float32 [N, 2] (x, y) px, pixel centres at integers; scores float32 [N] in (0, 1], the
        corner's smallest structure-tensor eigenvalue over the image's largest, in descending order.
    """
    cfg = cfg or CornerConfig()
    if grey.ndim != 2:
        raise ValueError(f"grey must be one channel [H, W], got shape {grey.shape}")
    if max_keypoints <= 0:
        raise ValueError(f"max_keypoints must be > 0, got {max_keypoints}")
    img = grey if grey.dtype == np.float32 else grey.astype(np.float32)
    img = cv2.GaussianBlur(img, (0, 0), cfg.sigma)
    quality = cfg.quality if threshold is None else max(cfg.quality, threshold)
    if quality >= 1.0:  # OpenCV takes quality levels below 1 only; a threshold of 1 keeps the strongest corner
        quality = np.nextafter(np.float32(1), np.float32(0))
    corners, strength = cv2.goodFeaturesToTrackWithQuality(
        img, max_keypoints, float(quality), float(cfg.min_distance), None, blockSize=cfg.block_size
    )
    if corners is None or len(corners) == 0:
        return np.zeros((0, 2), np.float32), np.zeros(0, np.float32)
    strength = strength.reshape(-1).astype(np.float32)
    top = float(strength[0]) if strength[0] > 0 else 1.0
    return corners.reshape(-1, 2).astype(np.float32), strength / top
