"""Does the int8 engine give the trained (fake-quantized fp32) network's keypoints and descriptors?

For each development photo (``bsds500_test_*``, never trained on) at each size, both engines extract
the same budget of keypoints; a reference keypoint counts as found when the int8 engine has one within
0.05 px, and its descriptor as identical when all 256 bits agree. Writes ``summary.json`` and
``summary.md`` into the output folder.

Usage::

    python tools/int8_check.py --weights runs/zippypoint/weights.pt --out results/int8_check/s2
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zippy.features import compare_features

logger = logging.getLogger(__name__)

__all__ = ["main", "run"]

REPO_ROOT = Path(__file__).resolve().parents[1]
DEV_PHOTOS = REPO_ROOT.parent / "shared" / "data" / "train_images"


def run(
    weights: str | Path,
    output_dir: str | Path,
    *,
    photos: str | Path = DEV_PHOTOS,
    n_photos: int = 20,
    sizes: Sequence[tuple[int, int]] = ((240, 320), (480, 640)),
    max_keypoints: int = 1000,
) -> Path:
    """Compare engine "fp32" (fake quantization) with engine "int8" and write the results; returns summary.json."""
    import cv2
    from tqdm import tqdm

    from zippy.extractor import Extractor
    from zippy.image import read_image
    from zippy.weights import file_sha256, load_model
    from zippy_eval.results import markdown_table, write_summary, write_text

    files = sorted(Path(photos).glob("bsds500_test_*"))[:n_photos]
    if not files:
        raise FileNotFoundError(f"no bsds500_test_* photos in {photos}")
    model, meta = load_model(weights)
    ref, test = Extractor(model, engine="fp32"), Extractor(model, engine="int8")
    rows: list[dict[str, Any]] = []
    for h, w in sizes:
        images = [cv2.resize(read_image(p), (w, h), interpolation=cv2.INTER_AREA) for p in files]
        a = [ref.extract(im, max_keypoints=max_keypoints) for im in tqdm(images, desc=f"fp32 {w}x{h}")]
        b = [test.extract(im, max_keypoints=max_keypoints) for im in tqdm(images, desc=f"int8 {w}x{h}")]
        rows.append({"height": h, "width": w, "photos": len(files), **compare_features(a, b)})
    out = Path(output_dir)
    path = write_summary(
        out,
        protocol={"max_keypoints": max_keypoints, "tol_px": 0.05, "engines": ["fp32", "int8"]},
        dataset={"photos": str(photos), "files": [p.name for p in files]},
        methods={"zippypoint": {"weights": str(weights), "weights_sha256": file_sha256(weights), **_meta_info(meta)}},
        rows=rows,
        aggregates={"target_descriptors_identical": 0.99, "met": all(r["descriptors_identical"] >= 0.99 for r in rows)},
    )
    cells = []
    for r in rows:
        size = f"{r['width']}x{r['height']}"
        cells.append([size, r["photos"], int(r["n_reference"]), r["keypoints_found"], r["descriptors_identical"]])
    headers = ["size", "photos", "reference keypoints", "found by int8 (0.05 px)", "identical descriptors"]
    table = markdown_table(headers, cells, floatfmt=["", "", "", ".4f", ".4f"])
    write_text(out / "summary.md", f"int8 engine vs fake-quantized fp32, weights `{weights}`\n\n{table}\n")
    return path


def _meta_info(meta: dict[str, Any]) -> dict[str, Any]:
    """The provenance fields of a weights file's meta worth recording."""
    return {k: meta[k] for k in ("trained", "steps", "wall_time_s") if k in meta}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="zippypoint weights file")
    parser.add_argument("--out", default="results/int8_check/default")
    parser.add_argument("--photos", default=str(DEV_PHOTOS), help="folder with the bsds500_test_* photos")
    parser.add_argument("--n-photos", type=int, default=20)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    path = run(args.weights, args.out, photos=args.photos, n_photos=args.n_photos)
    print((path.parent / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
