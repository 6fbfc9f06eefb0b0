"""`zippy match IMG0 IMG1 --out vis.png`: match two images and draw the result."""

from __future__ import annotations

import argparse
import time

from zippy_apps.common import add_model_arguments, load_extractor, match_and_fit, matcher_description

HELP = "match two images (mutual nearest neighbours + RANSAC homography) and draw the matches"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image0")
    p.add_argument("image1")
    p.add_argument("--out", default="matches.png", help="side-by-side picture (PNG)")
    add_model_arguments(p)


def run(args: argparse.Namespace) -> int:
    from zippy.image import read_image
    from zippy_apps.pairviz import draw_matches, write_png

    img0, img1 = read_image(args.image0), read_image(args.image1)
    ex = load_extractor(args)
    t0 = time.perf_counter()
    f0 = ex.extract(img0, args.max_keypoints, args.threshold)
    f1 = ex.extract(img1, args.max_keypoints, args.threshold)
    t1 = time.perf_counter()
    res, times = match_and_fit(f0, f1)
    n_in = int(res.inliers.sum())
    print(f"keypoints {len(f0)} / {len(f1)}, matches {len(res.matches)}, homography inliers {n_in}")
    print(
        f"time: extract {1e3 * (t1 - t0):.0f} ms (both images, first call included), match {times.match_ms:.2f} ms, "
        f"RANSAC {times.ransac_ms:.1f} ms; matcher {matcher_description()}, warm-up {times.warmup_ms:.1f} ms"
    )
    title = f"{ex.name}: {len(res.matches)} matches, {n_in} inliers"
    path = write_png(args.out, draw_matches(img0, img1, f0.keypoints, f1.keypoints, res.matches, res.inliers, title))
    print(f"picture: {path.resolve()}")
    return 0
