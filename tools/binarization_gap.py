"""What does binarizing the descriptors cost? The same network's HPatches numbers, float against k-ones bits.

A binary network (zippypoint) samples a float descriptor map at its keypoints, then keeps the top k of
the 256 values as ones (hard top-k, k = 64 for the shipped networks). This evaluates, on one set of
keypoints per image, several descriptors made from the same float samples:

* ``float``: the samples L2-normalized, matched by L2 (what the network knows before binarization);
* ``k<k>``: top-k bits, matched by Hamming; ``k`` equal to the network's own (64) is what it ships.

Everything else is the HPatches protocol of ``zippy eval hpatches`` (mutual nearest neighbours, RANSAC
3 px, H@t and MMA@t; the binary row with the network's own k equals that run's numbers). Writes
``summary.json`` (rows and aggregates per variant) and ``table.md``.

Usage::

    python tools/binarization_gap.py ../shared/data/hpatches_like_dev --model zippypoint \\
        --scales 1.41,1 --out results/binarization_gap/latest
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zippy.config import ExtractorConfig
from zippy.features import Features

logger = logging.getLogger(__name__)

__all__ = ["descriptor_variant", "main", "run"]


def descriptor_variant(feats: Features, variant: str) -> Features:
    """``feats`` (raw float32 [N, D] descriptors) with final descriptors of one variant.

    Args:
        feats: features from an extractor with ``raw_descriptors = True``.
        variant: "float" (L2-normalized float32 [N, D]) or "k<k>" (top-k bits packed, uint8 [N, D/8]).
    """
    import torch

    from zippy.postprocess import finalize_descriptors

    if feats.descriptors.dtype != np.float32:
        raise ValueError(f"raw float32 descriptors expected, got {feats.descriptors.dtype}")
    if variant != "float" and not (variant.startswith("k") and variant[1:].isdigit()):
        raise ValueError(f"variant must be 'float' or 'k<ones>' (e.g. 'k64'), got {variant!r}")
    binary = variant != "float"
    ones = int(variant[1:]) if binary else 0
    # the extractor's own last step, so the variants are made exactly as shipped descriptors are
    desc = finalize_descriptors(torch.from_numpy(feats.descriptors), binary, ones).numpy()
    return Features(feats.keypoints, feats.scores, desc, feats.image_size, dict(feats.meta))


def run(
    dataset_dir: str | os.PathLike,
    config: ExtractorConfig,
    output_dir: str | os.PathLike,
    *,
    setting: str = "480x640:1000",
    ones: Sequence[int] = (32, 64, 96, 128),
    include: Sequence[str] | None = None,
    threads: int | None = 1,
) -> Path:
    """Evaluate the float and k-ones variants of one network's descriptors; returns the summary.json path.

    Args:
        dataset_dir: an HPatches-layout folder. config: the extractor of a binary network (its weights, engine,
            scales, shifts, NMS radius).
        output_dir: result folder (created): summary.json, table.md.
        setting: "HxW:top_k" as in ``zippy eval hpatches``.
        ones: the k values to binarize with (each in (0, D)).
        include: glob patterns on sequence names (None: all). threads: torch / OpenCV threads.

    Raises:
        ValueError: the network's descriptors are not binary; a bad k or setting.
    """
    from tqdm import tqdm

    import zippy
    from zippy.image import read_image, resize_image
    from zippy.threads import set_threads
    from zippy_eval.hpatches.dataset import load_hpatches
    from zippy_eval.hpatches.pipeline import HPatchesConfig, Setting, aggregate
    from zippy_eval.hpatches.pipeline import evaluate_sequence as sequence_rows
    from zippy_eval.results import write_summary, write_text

    load_at_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    if threads is not None:
        set_threads(threads)
    st = Setting.parse(setting)
    extractor = zippy.load(config)
    weights = extractor.weights_path
    if not extractor.binary:
        raise ValueError(f"{weights} holds a float-descriptor network ({extractor.name}); nothing to binarize")
    dim = extractor.cfg.desc_dim
    bad = [k for k in ones if not 0 < int(k) < dim]
    if bad or not ones or len(set(ones)) != len(ones):
        raise ValueError(f"ones must be distinct, non-empty, each in (0, {dim}), got {list(ones)}")
    extractor.raw_descriptors = True
    variants = ["float"] + [f"k{int(k)}" for k in ones]
    conf = HPatchesConfig(
        methods=tuple(variants),
        settings=(st,),
        extractor=extractor.config,
        include=tuple(include) if include else None,
        threads=threads,
    )
    dataset = load_hpatches(dataset_dir, include=conf.include)
    dtag = Path(dataset_dir).name
    rows: list[dict[str, Any]] = []
    seconds: list[float] = []
    for seq in tqdm(dataset.sequences, desc="binarization gap", unit="seq"):
        raw = []
        for path in seq.images:
            image = resize_image(read_image(path), st.width, st.height)
            t0 = time.perf_counter()
            raw.append(extractor.extract(image, st.max_keypoints))
            seconds.append(time.perf_counter() - t0)
        for v in variants:
            rows.extend(sequence_rows(seq, [descriptor_variant(f, v) for f in raw], st, conf, dtag, v))
    aggregates = aggregate(rows, conf)[dtag][st.tag]
    table = _table(aggregates, variants, extractor.cfg.desc_ones)
    output_dir = Path(output_dir)
    write_text(output_dir / "table.md", table)
    return write_summary(
        output_dir,
        protocol=conf.protocol() | {"variants": variants, "network_ones": extractor.cfg.desc_ones},
        dataset=dataset.describe(),
        methods={"zippypoint": {"weights": str(weights), "weights_sha256": extractor.weights_sha256}},
        rows=rows,
        aggregates=aggregates,
        extra={
            "table": "table.md",
            "extraction_ms_per_image": 1e3 * float(np.mean(seconds)) if seconds else None,
            "loadavg_at_start": load_at_start,
        },
    )


def _table(aggregates: dict[str, Any], variants: Sequence[str], own_ones: int) -> str:
    from zippy_eval.results import markdown_table

    head = ["descriptor", "H@3", "MMA@3", "i H@3", "i MMA@3", "v H@3", "v MMA@3", "#m"]
    body = []
    for v in variants:
        g = aggregates[v]
        label = f"{v} (the network's own)" if v == f"k{own_ones}" else v
        cells = [label, g["all"]["h_acc@3"], g["all"]["mma@3"]]
        for kind in ("i", "v"):
            cells += [g[kind]["h_acc@3"], g[kind]["mma@3"]] if kind in g else [None, None]
        body.append([*cells, g["all"]["n_matches"]])
    return (
        "# Binarization gap\n\nOne set of keypoints per image; descriptors: the float samples (L2) or their top-k "
        "bits (Hamming). Mutual nearest neighbours, HPatches protocol.\n\n"
        + markdown_table(head, body, (".3f",) * 7 + (".0f",))
        + "\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    from zippy.config import ExtractorConfig, add_extractor_arguments

    p = argparse.ArgumentParser(prog="python tools/binarization_gap.py", description=__doc__.splitlines()[0])
    p.add_argument("dataset", help="HPatches-layout folder")
    p.add_argument("--out", required=True, help="result folder")
    p.add_argument("--setting", default="480x640:1000", help="HxW:top_k (default 480x640:1000)")
    add_extractor_arguments(p)
    p.add_argument("--ones", default="32,64,96,128", help="k values, comma separated (default 32,64,96,128)")
    p.add_argument("--include", action="append", default=None, help="glob on sequence names (repeatable)")
    p.add_argument("--threads", type=int, default=1, help="torch / OpenCV threads (default 1)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        ones = [int(k) for k in args.ones.split(",")]
    except ValueError as e:
        p.error(f"--ones takes integers, comma separated: {e}")
    path = run(
        args.dataset,
        ExtractorConfig.from_args(args),
        args.out,
        setting=args.setting,
        ones=ones,
        include=args.include,
        threads=args.threads,
    )
    from zippy_eval.results import print_results

    print_results(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
