"""Hamming distances of true and false matches on the development split, and the precision each threshold gives.

For each pair (1, k) of every HPatches-like sequence (generated from the development photos), the mutual
nearest-neighbour matches of zippy descriptors (1000 keypoints at the images' own size) are labelled true when
the ground-truth homography maps the first keypoint within ``--px`` pixels (3) of the second, false otherwise.
For every even threshold t: precision (true among the matches with distance <= t), recall (true matches kept)
and the fraction of matches kept; plus the distances of random descriptor pairs of different images. The
numbers behind ``zippy.matching.THRESHOLDS``. Writes summary.json, table.md and distances.png.

Example::

    python -m zippy_eval.match_thresholds --dev results/vocab/dev_seq --out results/vocab/thresholds
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def largest_threshold(thresholds: np.ndarray, precision: np.ndarray, target: float) -> int | None:
    """The largest threshold whose precision is >= target (None: none reaches it)."""
    ok = np.flatnonzero(precision >= target)
    return int(thresholds[ok.max()]) if ok.size else None


def measure(dev: Path, cache: Path, method_name: str, max_keypoints: int, px: float) -> dict[str, Any]:
    from zippy.geometry import warp_points
    from zippy.matching import match_hamming
    from zippy_eval.bench_vocab import describe
    from zippy_eval.hpatches.dataset import load_hpatches
    from zippy_eval.methods import get_method

    method = get_method(method_name)
    ds = load_hpatches(dev)
    true_d, false_d, rand_d = [], [], []
    rng = np.random.default_rng(0)
    prev = None
    for seq in ds.sequences:
        feats = describe(list(seq.images), method, max_keypoints, cache)
        for i, j, H in seq.pairs():
            f0, f1 = feats[i], feats[j]
            pairs, dist = match_hamming(f0.descriptors, f1.descriptors, mutual=True)
            err = np.linalg.norm(warp_points(f0.keypoints[pairs[:, 0]], H) - f1.keypoints[pairs[:, 1]], axis=1)
            true_d.append(dist[err <= px])
            false_d.append(dist[err > px])
        if prev is not None:  # random pairs: first images of consecutive sequences
            a = prev.descriptors[rng.integers(0, len(prev), 200)]
            b = feats[0].descriptors[rng.integers(0, len(feats[0]), 200)]
            rand_d.append(np.unpackbits(a ^ b, axis=1).sum(1))
        prev = feats[0]
    t, f, r = (np.concatenate(x).astype(np.int64) for x in (true_d, false_d, rand_d))
    ths = np.arange(0, 130, 2)
    kept_t = np.array([(t <= x).sum() for x in ths])
    kept_f = np.array([(f <= x).sum() for x in ths])
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(kept_t + kept_f > 0, kept_t / (kept_t + kept_f), np.nan)
    recall = kept_t / max(1, len(t))
    return {
        "method": method.info(),
        "sequences": len(ds.sequences),
        "pairs": sum(s.num_pairs for s in ds.sequences),
        "true_matches": len(t),
        "false_matches": len(f),
        "true_median": float(np.median(t)),
        "false_median": float(np.median(f)),
        "random_median": float(np.median(r)),
        "random_p01": float(np.percentile(r, 1)),
        "thresholds": ths.tolist(),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "kept": ((kept_t + kept_f) / max(1, len(t) + len(f))).tolist(),
        "hist_true": np.bincount(t, minlength=257).tolist(),
        "hist_false": np.bincount(f, minlength=257).tolist(),
        "hist_random": np.bincount(r, minlength=257).tolist(),
        "largest_threshold_for_precision": {
            str(p): largest_threshold(ths, precision, p) for p in (0.99, 0.95, 0.9, 0.8)
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    from zippy_eval.bench_vocab import cpu_info
    from zippy_eval.results import environment, markdown_table, save_figure, write_json, write_text

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dev", required=True, help="HPatches-like folder of the development split")
    ap.add_argument("--method", default="zippypoint")
    ap.add_argument("--max-keypoints", type=int, default=1000)
    ap.add_argument("--px", type=float, default=3.0, help="a match is true within this many pixels")
    ap.add_argument("--cache", default=None, help="feature cache (default: OUT/../retrieval/dev_cache/METHOD)")
    ap.add_argument("--out", default="results/vocab/thresholds")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    out = Path(args.out)
    cache = Path(args.cache) if args.cache else out.parent / "retrieval" / "dev_cache" / args.method
    m = measure(Path(args.dev), cache, args.method, args.max_keypoints, args.px)
    rows = [
        [t, p, r, k]
        for t, p, r, k in zip(m["thresholds"], m["precision"], m["recall"], m["kept"])
        if t % 8 == 0 or t in (50, 100)
    ]
    table = markdown_table(["max distance", "precision", "recall of true matches", "matches kept"], rows)
    table += (
        f"\n{m['true_matches']} true and {m['false_matches']} false mutual-NN matches (true: within {args.px:g} px "
        f"of the ground truth) on {m['pairs']} pairs of {m['sequences']} sequences. Median distance: true "
        f"{m['true_median']:g}, false {m['false_median']:g}, random descriptor pairs {m['random_median']:g} "
        f"(1st percentile {m['random_p01']:g}). Largest threshold with precision >= 0.99 / 0.95 / 0.9 / 0.8: "
        + " / ".join(str(v) for v in m["largest_threshold_for_precision"].values())
        + ".\n"
    )
    write_json(
        out / "summary.json",
        {
            "protocol": {
                "dev": str(args.dev),
                "max_keypoints": args.max_keypoints,
                "px": args.px,
                "matcher": "zippy.matching.match_hamming(mutual=True)",
            },
            "environment": environment() | cpu_info(),
            "aggregates": m,
        },
    )
    write_text(out / "table.md", table)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a0, a1) = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(257)
    for key, label in (("hist_true", "true matches"), ("hist_false", "false matches"), ("hist_random", "random")):
        h = np.asarray(m[key], np.float64)
        a0.plot(x[:129], h[:129] / max(1.0, h.sum()), label=label)
    a0.set_xlabel("Hamming distance")
    a0.set_ylabel("fraction")
    a0.legend()
    a1.plot(m["thresholds"], m["precision"], label="precision")
    a1.plot(m["thresholds"], m["recall"], label="recall of true matches")
    a1.set_xlabel("max distance")
    a1.set_ylim(0, 1.02)
    a1.grid(alpha=0.3)
    a1.legend()
    fig.tight_layout()
    save_figure(fig, out / "distances.png")
    print(table)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
