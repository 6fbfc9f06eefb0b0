"""`zippy demo`: the whole pipeline on a photo that ships with scikit-image, no download."""

from __future__ import annotations

import argparse
import time

import numpy as np

from zippy_apps.common import add_model_arguments, load_extractor, match_and_fit, matcher_description

HELP = "extract, match and fit a homography on a built-in photo warped by a known homography"

# A fixed view change: about 20 degrees of rotation, some zoom and perspective (maps image 0 to image 1).
DEMO_H = np.array([[0.85, -0.30, 90.0], [0.28, 0.88, -40.0], [0.0002, 0.0001, 1.0]])


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--image", default="astronaut", help="a scikit-image sample name or an image path")
    p.add_argument("--out", default="zippy_demo.png", help="side-by-side match picture (PNG)")


def demo_pair(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image0, image1, H): a photo and its view under DEMO_H with a lighting change (RGB uint8)."""
    import cv2

    from zippy.image import read_image, to_rgb_uint8

    if name.replace("_", "").isalpha() and "." not in name:
        import skimage.data

        if not hasattr(skimage.data, name):
            raise ValueError(f"unknown scikit-image sample {name!r} (try astronaut, coffee, chelsea, rocket)")
        img0 = to_rgb_uint8(getattr(skimage.data, name)())
    else:
        img0 = read_image(name)
    h, w = img0.shape[:2]
    img1 = cv2.warpPerspective(img0, DEMO_H, (w, h), flags=cv2.INTER_LINEAR)
    # lighting: gamma, per-channel gain and a horizontal shading gradient
    x = np.linspace(0.6, 1.2, w, dtype=np.float32)[None, :, None]
    lit = (img1.astype(np.float32) / 255) ** 1.4 * np.array([1.1, 0.95, 0.85], np.float32) * x
    img1 = (np.clip(lit, 0, 1) * 255 + 0.5).astype(np.uint8)
    return img0, img1, DEMO_H


def run(args: argparse.Namespace) -> int:
    from zippy.geometry import corner_error
    from zippy_apps.pairviz import draw_matches, write_png

    img0, img1, H_gt = demo_pair(args.image)
    ex = load_extractor(args)
    ex.extract(img0, args.max_keypoints)  # warm-up (first call allocates)
    t0 = time.perf_counter()
    f0 = ex.extract(img0, args.max_keypoints, args.threshold)
    t1 = time.perf_counter()
    f1 = ex.extract(img1, args.max_keypoints, args.threshold)
    t2 = time.perf_counter()
    res, times = match_and_fit(f0, f1, timing_repeats=5)
    h, w = img0.shape[:2]
    err = corner_error(res.H, H_gt, w, h)
    state = "trained" if ex.trained else "UNTRAINED"
    print(f"model: {ex.name} ({state}), engine {ex.engine}, image {args.image} {w}x{h}")
    print(f"keypoints: {len(f0)} / {len(f1)}   matches: {len(res.matches)}   inliers: {int(res.inliers.sum())}")
    print(f"corner error: {err:.2f} px" + ("  (no homography found)" if res.H is None else ""))
    print(
        f"time: extract {1e3 * (t1 - t0):.1f} + {1e3 * (t2 - t1):.1f} ms, match {times.match_ms:.2f} ms "
        f"({len(f0)} x {len(f1)}, median of 5), RANSAC {times.ransac_ms:.1f} ms"
    )
    print(f"matcher: {matcher_description()}, warm-up {times.warmup_ms:.1f} ms (not in the match time)")
    title = f"{ex.name} ({state}) {len(res.matches)} matches, {int(res.inliers.sum())} inliers, corner err {err:.2f}px"
    path = write_png(args.out, draw_matches(img0, img1, f0.keypoints, f1.keypoints, res.matches, res.inliers, title))
    print(f"picture: {path.resolve()}")
    return 0
