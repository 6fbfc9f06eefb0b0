"""How much do keypoints and matches change when an image is only translated by a few pixels?

A network that sees the image through 8x8 cells (zippypoint) detects and describes a point differently
depending on where it falls in its cell, while a translation changes nothing for a shift-invariant
detector. For each image (image 1 of each sequence of an HPatches-layout folder), resized to the setting
plus a margin, this compares a window with the same window moved by s px to the left (the content moves s
px to the right), for s = 0 .. max_shift, and reports per shift:

* ``repeatability@3``: the fraction of the first window's keypoints, moved by s, with a keypoint of the
  second within 3 px;
* ``mma@3``: the fraction of mutual nearest-neighbour matches (Hamming for binary, L2 for float
  descriptors) that land within 3 px of the true position;
* the mean keypoint and match counts.

Writes ``summary.json`` (per-image rows, per-shift means) and ``table.md``.

Usage::

    python tools/shift_invariance.py ../shared/data/hpatches_like_dev --methods zippypoint,orb_teblid \\
        --include 'i_bsds500_test_2*' --out results/shift_invariance/s12
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zippy.config import ExtractorConfig

logger = logging.getLogger(__name__)

__all__ = ["main", "run", "shift_pair_metrics"]

THRESHOLD_PX = 3.0


def shift_pair_metrics(kp0: np.ndarray, kp1: np.ndarray, matches: np.ndarray, shift: float) -> dict[str, float]:
    """Repeatability and MMA at 3 px of two windows whose content differs by ``shift`` px along x.

    Args:
        kp0, kp1: float [N0, 2], [N1, 2] keypoints (x, y) of the first and the moved window.
        matches: int [K, 2] (index in kp0, index in kp1) mutual nearest neighbours.
        shift: content moves by +shift px in x from the first window to the second.

    Returns:
        {"repeatability@3", "mma@3", "n_kp", "n_matches"}; a rate without keypoints or matches is NaN
        (kept in the rows, so a failure shows instead of vanishing from the mean).
    """
    from zippy_eval.hpatches.metrics import _pairwise_distances, reprojection_errors

    moved = np.asarray(kp0, np.float64) + np.array([shift, 0.0])
    kp1 = np.asarray(kp1, np.float64)
    if len(moved) and len(kp1):
        rep = float((_pairwise_distances(moved, kp1).min(1) <= THRESHOLD_PX).mean())
    else:
        rep = float("nan")
    if len(matches):
        translation = np.array([[1.0, 0.0, shift], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        mma = float((reprojection_errors(kp0, kp1, matches, translation) <= THRESHOLD_PX).mean())
    else:
        mma = float("nan")
    return {"repeatability@3": rep, "mma@3": mma, "n_kp": 0.5 * (len(kp0) + len(kp1)), "n_matches": len(matches)}


def run(
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    methods: Sequence[str] = ("zippypoint", "orb_teblid"),
    weights: dict[str, str] | None = None,
    extractor: ExtractorConfig | None = None,
    setting: str = "480x640:1000",
    max_shift: int = 8,
    include: Sequence[str] | None = None,
    threads: int | None = 1,
) -> Path:
    """Measure every method at every shift 0..max_shift; returns the summary.json path.

    Args:
        dataset_dir: an HPatches-layout folder (image 1 of each sequence is used).
        output_dir: result folder (created): summary.json, table.md.
        methods: method names (``zippy_eval.methods``). weights: method -> weights file.
        extractor: options of the zippy methods (engine, image pyramid, grid shifts, NMS; others ignore them).
        setting: "HxW:top_k" as in ``zippy eval hpatches``. max_shift: largest shift in px (>= 1).
        include: glob patterns on sequence names (None: all). threads: torch / OpenCV threads.

    Raises:
        ValueError: max_shift < 1, an unknown method or a bad setting.
    """
    from tqdm import tqdm

    import zippy
    from zippy.image import read_image, resize_image
    from zippy.threads import set_threads
    from zippy_eval.hpatches.dataset import load_hpatches
    from zippy_eval.hpatches.pipeline import Setting
    from zippy_eval.methods import get_method
    from zippy_eval.results import write_summary, write_text

    if max_shift < 1:
        raise ValueError(f"max_shift must be >= 1, got {max_shift}")
    if threads is not None:
        set_threads(threads)
    st = Setting.parse(setting)
    weights = dict(weights or {})
    built = {m: get_method(m, weights=weights.get(m), extractor=extractor) for m in methods}
    dataset = load_hpatches(dataset_dir, include=tuple(include) if include else None)
    offsets = list(range(max_shift + 1))
    rows: list[dict[str, Any]] = []
    for seq in tqdm(dataset.sequences, desc="shift invariance", unit="image"):
        big = resize_image(read_image(seq.images[0]), st.width + max_shift, st.height)
        first = np.ascontiguousarray(big[:, max_shift:])
        for name, method in built.items():
            f0 = method.extract(first, st.max_keypoints)
            for s in offsets:
                moved = np.ascontiguousarray(big[:, max_shift - s : max_shift - s + st.width])
                f1 = f0 if s == 0 else method.extract(moved, st.max_keypoints)
                pairs, _ = zippy.match(f0, f1)
                metrics = shift_pair_metrics(f0.keypoints, f1.keypoints, pairs, s)
                rows.append({"sequence": seq.name, "method": name, "shift": s, **metrics})
    means = {
        name: {
            str(s): {
                k: float(np.mean([r[k] for r in rows if r["method"] == name and r["shift"] == s]))
                for k in ("repeatability@3", "mma@3", "n_kp", "n_matches")
            }
            for s in offsets
        }
        for name in built
    }
    output_dir = Path(output_dir)
    write_text(output_dir / "table.md", _table(means, offsets))
    return write_summary(
        output_dir,
        protocol={
            "setting": st.tag,
            "shifts_px": offsets,
            "threshold_px": THRESHOLD_PX,
            "matcher": "mutual nearest neighbours",
            "image": "image 1 of each sequence, resized to the setting plus max_shift columns",
            "include": list(include) if include else None,
            "threads": threads,
        },
        dataset=dataset.describe(),
        methods={name: m.info() for name, m in built.items()},
        rows=rows,
        aggregates=means,
        extra={"table": "table.md"},
    )


def _table(means: dict[str, Any], offsets: Sequence[int]) -> str:
    from zippy_eval.results import markdown_table

    head = ["method", "metric", *[f"{s} px" for s in offsets]]
    body = []
    for name, per_shift in means.items():
        for key in ("repeatability@3", "mma@3"):
            body.append([name, key, *[per_shift[str(s)][key] for s in offsets]])
    return (
        "# Shift invariance\n\nThe same image against itself moved by s px (mutual nearest neighbours, 3 px).\n\n"
        + markdown_table(head, body, ("s", "s") + (".3f",) * len(offsets))
        + "\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    from zippy.config import add_extractor_arguments
    from zippy_apps.eval_args import add_weights_option, csv_list, method_weights

    p = argparse.ArgumentParser(prog="python tools/shift_invariance.py", description=__doc__.splitlines()[0])
    p.add_argument("dataset", help="HPatches-layout folder (image 1 of each sequence is used)")
    p.add_argument("--out", required=True, help="result folder")
    p.add_argument("--methods", type=csv_list, default=["zippypoint", "orb_teblid"], help="comma separated")
    add_weights_option(p)
    add_extractor_arguments(p, model=False)
    p.add_argument("--setting", default="480x640:1000", help="HxW:top_k (default 480x640:1000)")
    p.add_argument("--max-shift", type=int, default=8, help="largest shift in px (default 8)")
    p.add_argument("--include", action="append", default=None, help="glob on sequence names (repeatable)")
    p.add_argument("--threads", type=int, default=1, help="torch / OpenCV threads (default 1)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    path = run(
        args.dataset,
        args.out,
        methods=args.methods,
        weights=method_weights(args.weights),
        extractor=ExtractorConfig.from_args(args),
        setting=args.setting,
        max_shift=args.max_shift,
        include=args.include,
        threads=args.threads,
    )
    from zippy_eval.results import print_results

    print_results(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
