"""Loop-closure benchmark: a sequence that goes forward and comes back over its own frames.

The frames of a folder (TUM RGB-D fr3 office, 17 frames about 1 s apart) are played forward, then backward.
The backward frames are altered so that no descriptor repeats exactly: gamma 1.3, Gaussian noise (sigma 3
grey levels) and a 4 px crop of the left and top borders resized back to the frame size (a 0.6 % zoom and a
shift). :class:`zippy.loop.LoopDetector` sees the 34 frames in order. A detected loop is correct when the
frame it returns shows the same original frame within ``--tolerance`` frames (1). Recall counts the
backward frames that could close a loop: a forward frame within the tolerance lies outside the
``exclude_recent`` window. Writes summary.json, table.md and loops.png.

Example::

    python -m zippy_eval.bench_loop --frames ../shared/data/localization/tum_freiburg_sequence \
        --out results/vocab/loops
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def alter(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gamma 1.3, noise sigma 3, 4 px crop of the left / top borders resized back."""
    import cv2

    h, w = rgb.shape[:2]
    x = 255.0 * (rgb.astype(np.float64) / 255.0) ** 1.3 + rng.normal(0, 3, rgb.shape)
    x = np.clip(x, 0, 255).astype(np.uint8)
    return cv2.resize(x[4:, 4:], (w, h), interpolation=cv2.INTER_LINEAR)


def evaluate(
    results: list[Any], original: list[int], n_forward: int, exclude_recent: int, tolerance: int
) -> dict[str, Any]:
    """Precision / recall of the detected loops against the frames' original indices."""
    positives, correct_detected, detected, wrong = 0, 0, 0, []
    for p, r in enumerate(results):
        if p < n_forward:
            if r.detected:
                detected += 1
                wrong.append([p, r.match])
            continue
        o = original[p]
        eligible = any(abs(m - o) <= tolerance for m in range(max(0, p - exclude_recent)))
        positives += int(eligible)
        if r.detected:
            detected += 1
            if abs(original[r.match] - o) <= tolerance:
                correct_detected += 1
            else:
                wrong.append([p, r.match])
    return {
        "detected": detected,
        "correct": correct_detected,
        "positives": positives,
        "precision": correct_detected / detected if detected else None,
        "recall": correct_detected / positives if positives else None,
        "wrong": wrong,
    }


def main(argv: Sequence[str] | None = None) -> int:
    from zippy.image import read_image
    from zippy.loop import LoopConfig, LoopDetector
    from zippy.vocabulary import Vocabulary
    from zippy_eval.bench_vocab import cpu_info
    from zippy_eval.methods import get_method
    from zippy_eval.results import environment, markdown_table, save_figure, write_json, write_text

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", required=True, help="folder of consecutive frames")
    ap.add_argument("--method", default="zippypoint")
    ap.add_argument("--vocab", default=None, help="vocabulary (default: the shipped one)")
    ap.add_argument("--max-keypoints", type=int, default=1000)
    ap.add_argument("--exclude-recent", type=int, default=5)
    ap.add_argument("--tolerance", type=int, default=1)
    ap.add_argument("--out", default="results/vocab/loops")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    out = Path(args.out)
    files = sorted(p for p in Path(args.frames).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if len(files) < 3:
        raise ValueError(f"need at least 3 frames in {args.frames}, got {len(files)}")
    method = get_method(args.method)
    voc = Vocabulary.load(args.vocab)
    rng = np.random.default_rng(0)
    images = [read_image(p) for p in files]
    original = list(range(len(files))) + list(range(len(files) - 1, -1, -1))
    frames = images + [alter(images[i], rng) for i in original[len(files) :]]
    feats = [method.extract(im, args.max_keypoints) for im in frames]
    rows, runs = [], {}
    for consistency in (1, 2, 3):
        for geometric in (True, False):
            cfg = LoopConfig(exclude_recent=args.exclude_recent, consistency=consistency, geometric=geometric)
            det = LoopDetector(voc, cfg)
            t0 = time.perf_counter()
            results = [det.process(f) for f in feats]
            ms = 1e3 * (time.perf_counter() - t0) / len(feats)
            ev = evaluate(results, original, len(files), args.exclude_recent, args.tolerance)
            key = f"consistency{consistency}_{'geometric' if geometric else 'bow-only'}"
            runs[key] = {"config": asdict(cfg), **ev, "ms_per_frame": ms, "frames": [r.to_dict() for r in results]}
            rows.append([consistency, "yes" if geometric else "no", ev["detected"], ev["correct"], ev["positives"],
                         ev["precision"], ev["recall"], ms])  # fmt: skip
    table = markdown_table(
        ["consistency", "geometric check", "loops", "correct", "possible", "precision", "recall", "ms / frame"],
        rows,
        ["d", "s", "d", "d", "d", ".2f", ".2f", ".1f"],
    )
    table += (
        f"\n{len(files)} frames forward then backward ({len(frames)}), {args.method} {args.max_keypoints} keypoints, "
        f"exclude_recent {args.exclude_recent}, tolerance {args.tolerance} frame(s); ms / frame: BoW transform, "
        "query, and geometric check (extraction not included).\n"
    )
    write_json(
        out / "summary.json",
        {
            "protocol": {
                "frames": Path(args.frames).name,
                "n_frames": len(frames),
                "backward_alteration": "gamma 1.3, noise sigma 3, 4 px crop of left/top resized back",
                "tolerance": args.tolerance,
                "max_keypoints": args.max_keypoints,
            },
            "method": method.info(),
            "vocabulary": voc.meta,
            "environment": environment() | cpu_info(),
            "runs": runs,
        },
    )
    write_text(out / "table.md", table)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    best = runs["consistency2_geometric"]["frames"]
    ax.plot(range(len(frames)), [original[p] for p in range(len(frames))], "k-", lw=0.8, label="frame shown")
    hits = [(r["frame"], original[r["match"]]) for r in best if r["detected"]]
    if hits:
        ax.plot(*zip(*hits), "go", label="loop detected (matched frame)")
    ax.set_xlabel("time step")
    ax.set_ylabel("original frame index")
    ax.set_title("loops, consistency 2 + geometric check")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, out / "loops.png")
    print(table)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
