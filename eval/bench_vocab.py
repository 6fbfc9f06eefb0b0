"""Retrieval benchmark of the bag-of-words vocabulary on the development split.

Every image of an HPatches-like folder (generated from the development photos with `zippy make-hpatches-like`)
queries all the other images of all sequences; a query succeeds at k when one of its k best results is an
image of its own sequence (recall@1, recall@5). Compared:

* ``<method>+vocab``: the vocabulary of that method's descriptors (zippy: the shipped one or ``--vocab``; ORB:
  trained here by the same code on the same training photos with the same k and levels, cached in the output
  folder), DBoW2 L1 scores from :class:`zippy.vocabulary.Database`;
* ``<method>+exhaustive``: the number of mutual nearest-neighbour matches with every other image (the upper
  bound that costs one full matching per database image).

Also: BoW transform time per image, query time per image, and the query time of a 10,000-image database of
synthetic BoW vectors (random descriptors, quantized). Writes summary.json, table.md and retrieval.png.

Example::

    zippy make-hpatches-like ../shared/data/train_images results/vocab/dev_seq --n 50 --glob 'bsds500_test_*' \
        --max-side 640
    python -m zippy_eval.bench_vocab --dev results/vocab/dev_seq --train-images ../shared/data/train_images \
        ../shared/data/train_images_extra --exclude 'bsds500_test_*' --out results/vocab/retrieval
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

from zippy.features import Features, load_features, save_features
from zippy.vocabulary import Database, Vocabulary

logger = logging.getLogger(__name__)


def cpu_info() -> dict[str, Any]:
    """CPU model, the SIMD flags that matter here, and the numba / oneDNN target overrides."""
    model, flags = None, []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model is None:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512bw", "avx512_vpopcntdq", "avx512_vnni", "popcnt", "neon", "asimd")
    return {
        "cpu_model": model,
        "cpu_flags": [f for f in wanted if f in flags],
        "NUMBA_CPU_NAME": os.environ.get("NUMBA_CPU_NAME"),
        "ONEDNN_MAX_CPU_ISA": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "loadavg": list(os.getloadavg()),
    }


def dev_images(root: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """Images of every sequence folder under ``root`` and their sequence labels."""
    from zippy_eval.hpatches.dataset import load_hpatches

    ds = load_hpatches(root)
    paths, labels, names = [], [], []
    for i, seq in enumerate(ds.sequences):
        names.append(seq.name)
        for p in seq.images:
            paths.append(p)
            labels.append(i)
    if not paths:
        raise ValueError(f"no sequences under {root}")
    return paths, np.asarray(labels), names


def describe(paths: Sequence[Path], method: Any, max_keypoints: int, cache: Path) -> list[Features]:
    """Features of each image (own size), cached as ``cache/<sequence>_<file>.npz``."""
    from tqdm import tqdm

    from zippy.image import read_image

    out = []
    for p in tqdm(paths, desc=f"describe {method.name}", unit="img"):
        f = cache / f"{p.parent.name}_{p.stem}.npz"
        if f.is_file():
            out.append(load_features(f))
            continue
        feats = method.extract(read_image(p), max_keypoints)
        save_features(Features(feats.keypoints, feats.scores, feats.descriptors, feats.image_size), f)
        out.append(feats)
    return out


def recall_at(ranked: np.ndarray, labels: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """ranked: int [Q, >= max(ks)] result ids per query (query itself excluded), -1 padded."""
    out = {}
    for k in ks:
        hit = [np.any((r[:k] >= 0) & (labels[np.maximum(r[:k], 0)] == labels[q])) for q, r in enumerate(ranked)]
        out[f"recall@{k}"] = float(np.mean(hit))
    return out


def run_vocab(voc: Vocabulary, feats: list[Features], labels: np.ndarray, n: int = 5) -> dict[str, Any]:
    voc.transform(feats[0].descriptors)  # compile / load the kernels
    bows, t_tr = [], []
    for f in feats:
        t0 = time.perf_counter()
        bows.append(voc.transform(f.descriptors))
        t_tr.append(time.perf_counter() - t0)
    db = Database(voc)
    for b in bows:
        db.add(b)
    db.query(bows[0], n + 1)
    ranked = np.full((len(feats), n), -1, np.int64)
    t_q = []
    for q, b in enumerate(bows):
        t0 = time.perf_counter()
        r = db.query(b, n + 1)
        t_q.append(time.perf_counter() - t0)
        ids = r.ids[r.ids != q][:n]
        ranked[q, : len(ids)] = ids
    return {
        **recall_at(ranked, labels, (1, 5)),
        "transform_ms_per_image": 1e3 * float(np.median(t_tr)),
        "transform_ms_mean": 1e3 * float(np.mean(t_tr)),
        "query_ms_per_image": 1e3 * float(np.median(t_q)),
        "query_ms_mean": 1e3 * float(np.mean(t_q)),
        "words": voc.num_words,
        "mean_features": float(np.mean([len(f) for f in feats])),
        "ranked": ranked,
    }


def run_exhaustive(feats: list[Features], labels: np.ndarray, n: int = 5) -> dict[str, Any]:
    from tqdm import tqdm

    from zippy.matching import match_hamming

    m = len(feats)
    counts = np.zeros((m, m), np.int64)
    t0 = time.perf_counter()
    for i in tqdm(range(m), desc="exhaustive", unit="img"):
        for j in range(i + 1, m):
            c = len(match_hamming(feats[i].descriptors, feats[j].descriptors, mutual=True)[0])
            counts[i, j] = counts[j, i] = c
    per_query_ms = 1e3 * (time.perf_counter() - t0) * 2 / m  # each pair serves two queries
    np.fill_diagonal(counts, -1)
    ranked = np.argsort(-counts, axis=1, kind="stable")[:, :n]
    return {**recall_at(ranked, labels, (1, 5)), "query_ms_per_image": per_query_ms, "ranked": ranked}


def scale_test(voc: Vocabulary, n_images: int = 10_000, n_desc: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Query time of an ``n_images`` database of BoW vectors of random descriptors."""
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    db = Database(voc)
    for _ in tqdm(range(n_images), desc="synthetic database", unit="img"):
        db.add(rng.integers(0, 256, (n_desc, 32), dtype=np.uint8))
    queries = [voc.transform(rng.integers(0, 256, (n_desc, 32), dtype=np.uint8)) for _ in range(50)]
    db.query(queries[0], 10)
    times = []
    for q in queries:
        t0 = time.perf_counter()
        db.query(q, 10)
        times.append(time.perf_counter() - t0)
    entries = int(sum(len(db.vector(i)) for i in range(len(db))))
    return {
        "images": n_images,
        "descriptors_per_image": n_desc,
        "entries": entries,
        "query_ms": 1e3 * float(np.median(times)),
        "query_ms_mean": 1e3 * float(np.mean(times)),
    }


def main(argv: Sequence[str] | None = None) -> int:
    from zippy_eval.methods import get_method
    from zippy_eval.results import environment, markdown_table, save_figure, write_json, write_text
    from zippy_eval.vocab import VocabTrainConf, train_vocabulary

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dev", required=True, help="HPatches-like folder of the development split")
    ap.add_argument("--vocab", default=None, help="zippy vocabulary (default: the shipped one)")
    ap.add_argument("--train-images", nargs="+", required=True, help="training photo folders (ORB vocabulary)")
    ap.add_argument("--exclude", nargs="*", default=["bsds500_test_*"])
    ap.add_argument("--max-images", type=int, default=None, help="ORB vocabulary: as the zippy one's (default)")
    ap.add_argument("--max-keypoints", type=int, default=1000)
    ap.add_argument("--scale-images", type=int, default=10_000)
    ap.add_argument("--no-exhaustive", action="store_true")
    ap.add_argument("--out", default="results/vocab/retrieval")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    out = Path(args.out)
    paths, labels, seqs = dev_images(Path(args.dev))
    voc_z = Vocabulary.load(args.vocab)
    tc = voc_z.meta.get("train_conf", {})
    max_images = args.max_images if args.max_images is not None else tc.get("max_images")
    orb_file = out / f"orb_vocab_k{voc_z.k}_l{voc_z.levels}_n{max_images}.npz"
    if orb_file.is_file():
        voc_o = Vocabulary.load(orb_file)
    else:
        conf = VocabTrainConf(
            model="orb", k=voc_z.k, levels=voc_z.levels, max_images=max_images, exclude=tuple(args.exclude),
            max_keypoints=tc.get("max_keypoints", 1000), short_side=tc.get("short_side", 480),
            max_descriptors=tc.get("max_descriptors"), seed=tc.get("seed", 0),
        )  # fmt: skip
        _, voc_o = train_vocabulary(args.train_images, orb_file, conf, cache_dir=out / "train_cache")
    results: dict[str, Any] = {}
    methods: dict[str, Any] = {}
    for name, voc in (("zippypoint", voc_z), ("orb", voc_o)):
        method = get_method(name)
        methods[name] = method.info()
        if name == "zippypoint":
            voc.check_model(Path(str(methods[name].get("weights"))).stem if methods[name]["weights"] != "shipped"
                            else name, methods[name].get("weights_sha256"))  # fmt: skip
        feats = describe(paths, method, args.max_keypoints, out / "dev_cache" / name)
        results[f"{name}+vocab"] = run_vocab(voc, feats, labels) | {
            "vocabulary": {k: voc.meta.get(k) for k in ("k", "levels", "model", "training_images", "centre_rule")}
        }
        if not args.no_exhaustive:
            results[f"{name}+exhaustive"] = run_exhaustive(feats, labels)
    scale = scale_test(voc_z, args.scale_images)
    rows = []
    for name, r in results.items():
        r.pop("ranked")
        rows.append([name, r["recall@1"], r["recall@5"], r.get("transform_ms_per_image"), r["query_ms_per_image"]])
    table = markdown_table(
        ["method", "recall@1", "recall@5", "BoW transform ms / image", "query ms / image"],
        rows,
        [".3f", ".3f", ".3f", ".2f", ".2f"],
    )
    table += (
        f"\n{len(paths)} images in {len(seqs)} sequences; each queries the other {len(paths) - 1} (times: medians; "
        "exhaustive: the matching of one query with all the others). "
        f"{scale['images']}-image synthetic database ({scale['entries']} inverted-file entries): "
        f"{scale['query_ms']:.2f} ms per query (median).\n"
    )
    env = environment() | cpu_info()
    write_json(
        out / "summary.json",
        {
            "protocol": {
                "dev": str(args.dev),
                "images": len(paths),
                "sequences": seqs,
                "max_keypoints": args.max_keypoints,
                "query": "every image against all others; success at k if an image of its sequence is in the top k",
                "exhaustive": "count of mutual nearest-neighbour Hamming matches (zippy.matching.match_hamming)",
            },
            "methods": methods,
            "vocabularies": {"zippypoint": voc_z.meta, "orb": voc_o.meta},
            "environment": env,
            "aggregates": results,
            "scale_test": scale,
        },
    )
    write_text(out / "table.md", table)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a0, a1) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(results)
    x = np.arange(len(names))
    a0.bar(x - 0.2, [results[n]["recall@1"] for n in names], 0.4, label="recall@1")
    a0.bar(x + 0.2, [results[n]["recall@5"] for n in names], 0.4, label="recall@5")
    a0.set_xticks(x, names, rotation=15)
    a0.set_ylim(0, 1)
    a0.legend()
    a0.set_title(f"retrieval, {len(paths)} dev images")
    a1.bar(x, [results[n]["query_ms_per_image"] for n in names])
    a1.set_yscale("log")
    a1.set_xticks(x, names, rotation=15)
    a1.set_ylabel("ms per query")
    a1.set_title(f"query time ({env['cpu_model']})", fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "retrieval.png")
    print(table)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
