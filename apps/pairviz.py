"""Side-by-side match pictures for `zippy demo` and `zippy match`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def draw_matches(
    img0: np.ndarray,
    img1: np.ndarray,
    kpts0: np.ndarray,
    kpts1: np.ndarray,
    pairs: np.ndarray,
    inliers: np.ndarray | None = None,
    title: str = "",
) -> np.ndarray:
    """Two RGB uint8 images side by side with keypoints and match lines (green inliers, red outliers).

    Args:
        img0, img1: RGB uint8 [H, W, 3]; kpts0 / kpts1: float [N, 2] (x, y); pairs: int [K, 2];
        inliers: bool [K] or None (all drawn green).

    Returns:
        RGB uint8 [max(H0, H1) + 24, W0 + W1, 3].
    """
    import cv2

    h = max(img0.shape[0], img1.shape[0])
    w0 = img0.shape[1]
    canvas = np.zeros((h + 24, w0 + img1.shape[1], 3), np.uint8)
    canvas[24 : 24 + img0.shape[0], :w0] = img0
    canvas[24 : 24 + img1.shape[0], w0:] = img1
    off0 = np.array([0, 24], np.float64)
    off1 = np.array([w0, 24], np.float64)
    for p in kpts0:
        cv2.circle(canvas, tuple(int(v) for v in np.round(p + off0)), 1, (255, 200, 0), -1)
    for p in kpts1:
        cv2.circle(canvas, tuple(int(v) for v in np.round(p + off1)), 1, (255, 200, 0), -1)
    ok = np.ones(len(pairs), bool) if inliers is None else inliers
    for (i, j), good in zip(pairs, ok):
        a = tuple(int(v) for v in np.round(kpts0[i] + off0))
        b = tuple(int(v) for v in np.round(kpts1[j] + off1))
        cv2.line(canvas, a, b, (40, 220, 40) if good else (230, 40, 40), 1, cv2.LINE_AA)
    cv2.putText(canvas, title, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write an RGB uint8 image as PNG atomically; returns the path."""
    import cv2

    from zippy.io import write_bytes

    path = Path(path)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"could not encode PNG for {path}")
    return write_bytes(path, buf.tobytes())
