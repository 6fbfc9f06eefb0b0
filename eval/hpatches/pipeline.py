"""HPatches evaluation pipeline: features (cached) -> matches -> per-pair metrics -> summary, table, plot.

Protocol (SuperPoint / KP2D): for each sequence, pairs (1, k). For each setting HxW:top-k, every
image is resized to exactly HxW (cv2.INTER_AREA when shrinking, INTER_LINEAR when enlarging; the
aspect ratio is not kept, as in KP2D) and the ground truth is rescaled with
:func:`zippy.geometry.scale_homography`. A method keeps its ``top-k`` keypoints by score. Binary
descriptors are matched by Hamming distance, float ones by L2 (:func:`zippy.match`):
mutual nearest neighbours for homography accuracy and MMA, one-way nearest neighbours both ways for
the matching score. Metric definitions: :mod:`zippy_eval.hpatches.metrics`.

Outputs in ``output_dir``: ``summary.json`` (protocol, datasets, methods with versions and weights
sha256, environment, per-pair rows, aggregates per dataset / setting / method / split, skipped
methods and sequences with reasons), ``table.md`` and ``mma_<dataset>.png``. Features are cached
as ``cache/<method-tag>/<setting>/<dataset-tag>/<sequence>/<k>.npz`` with an ``index.json`` per
folder (extraction time, source file size and mtime); cached features are reused unless
``overwrite`` or the source image changed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zippy.config import ExtractorConfig
from zippy.features import Features
from zippy.threads import set_threads
from zippy_eval.hpatches.dataset import HPatchesDataset, HSequence, load_hpatches
from zippy_eval.hpatches.metrics import (
    DEFAULT_ACCURACY_THRESHOLDS,
    DEFAULT_MMA_THRESHOLDS,
    FAR_WRONG_PX,
    WRONG_KEYS,
    _pairwise_distances,
    evaluate_pair,
    local_rotation_scale,
)
from zippy_eval.methods import Method, methods_for_run

__all__ = [
    "DEFAULT_SETTINGS",
    "HPatchesConfig",
    "Setting",
    "aggregate",
    "evaluate_sequence",
    "run",
    "suppress_near_duplicates",
]

logger = logging.getLogger(__name__)

PROTOCOL_NAME = "hpatches (SuperPoint / KP2D protocol)"
GROUPS = ("all", "i", "v")


@dataclass(frozen=True)
class Setting:
    """Evaluation resolution and keypoint budget."""

    height: int
    width: int
    max_keypoints: int

    def __post_init__(self) -> None:
        if self.height < 16 or self.width < 16 or self.max_keypoints < 1:
            raise ValueError(f"setting needs height, width >= 16 and max_keypoints >= 1, got {self}")

    @property
    def tag(self) -> str:
        """e.g. "240x320_top300"."""
        return f"{self.height}x{self.width}_top{self.max_keypoints}"

    @classmethod
    def parse(cls, text: str) -> Setting:
        """Parse "HxW:K", e.g. "240x320:300"."""
        m = re.fullmatch(r"\s*(\d+)x(\d+):(\d+)\s*", text)
        if m is None:
            raise ValueError(f"setting must look like HEIGHTxWIDTH:TOPK (e.g. 240x320:300), got {text!r}")
        return cls(int(m.group(1)), int(m.group(2)), int(m.group(3)))


DEFAULT_SETTINGS = (Setting(240, 320, 300), Setting(480, 640, 1000))


@dataclass(frozen=True)
class HPatchesConfig:
    """Everything that defines an HPatches run.

    Attributes:
        methods: method names (see :func:`zippy_eval.methods.available_methods`).
        settings: resolutions and keypoint budgets.
        weights: method name -> weights file (ALIKED, zippy backbones).
        extractor: options of the zippy methods (:class:`zippy.ExtractorConfig`: engine, scales, shifts,
            nms_radius; its name and weights are each method's own); other methods ignore them.
        dedup_px: protocol variant, 0 (default) = off: before matching, every method's keypoints within this
            distance (px) of a better-scored keypoint of the same image are dropped
            (:func:`suppress_near_duplicates`), so that one corner found several times (ORB's pyramid levels,
            zippy's scales and grid shifts) counts once.
        include, exclude: glob patterns on sequence names.
        overwrite: recompute cached features.
        rep_threshold: repeatability / localization distance (px).
        ms_threshold: matching-score distance (px).
        accuracy_thresholds: homography corner-error thresholds (px).
        mma_thresholds: MMA thresholds (px).
        ransac_threshold: cv2.findHomography RANSAC threshold (px).
        ransac_max_iters: RANSAC iterations.
        threads: torch / OpenCV threads (None leaves them alone).
        cache_dir: feature cache (default ``output_dir/cache``).
    """

    methods: tuple[str, ...] = ("orb", "sift")
    settings: tuple[Setting, ...] = DEFAULT_SETTINGS
    weights: dict[str, str] = field(default_factory=dict)
    extractor: ExtractorConfig = field(default_factory=ExtractorConfig)
    dedup_px: float = 0.0
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    overwrite: bool = False
    rep_threshold: float = 3.0
    ms_threshold: float = 3.0
    accuracy_thresholds: tuple[float, ...] = DEFAULT_ACCURACY_THRESHOLDS
    mma_thresholds: tuple[float, ...] = DEFAULT_MMA_THRESHOLDS
    ransac_threshold: float = 3.0
    ransac_max_iters: int = 5000
    threads: int | None = 1
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError("at least one method is needed")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods must be unique, got {list(self.methods)}")
        if not self.settings:
            raise ValueError("at least one setting is needed")
        for s in self.settings:
            if not isinstance(s, Setting):
                raise ValueError(f"settings must be Setting objects, got {type(s).__name__}")
        unknown = set(self.weights) - set(self.methods)
        if unknown:
            raise ValueError(f"weights given for methods not evaluated: {sorted(unknown)}")
        if not self.dedup_px >= 0:
            raise ValueError(f"dedup_px must be >= 0 (px; 0 = off), got {self.dedup_px!r}")

    def protocol(self) -> dict[str, Any]:
        """The protocol part of the summary."""
        return {
            "name": PROTOCOL_NAME,
            "pairs": "(1, k) for k = 2..N of every sequence",
            "settings": [
                {"height": s.height, "width": s.width, "max_keypoints": s.max_keypoints, "tag": s.tag}
                for s in self.settings
            ],
            "resize": "exact HxW (aspect not kept); cv2.INTER_AREA shrinking, INTER_LINEAR enlarging; GT rescaled",
            "matcher": "nearest neighbour: Hamming (binary) / L2 (float); mutual for H accuracy and MMA, "
            "one-way both directions for matching score",
            "rep_threshold_px": self.rep_threshold,
            "ms_threshold_px": self.ms_threshold,
            "homography": {
                "estimator": "cv2.findHomography RANSAC",
                "ransac_threshold_px": self.ransac_threshold,
                "max_iters": self.ransac_max_iters,
                "accuracy_thresholds_px": list(self.accuracy_thresholds),
                "error": "mean distance of the 4 warped corners of image 1",
            },
            "mma_thresholds_px": list(self.mma_thresholds),
            "include": list(self.include) if self.include else None,
            "exclude": list(self.exclude),
            "threads": self.threads,
            **self.extractor.options(),
            "dedup_px": self.dedup_px,
        }


# ----------------------------------------------------------------------------------------------- helpers


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_") or "x"


def _method_tag(method: Method) -> str:
    """Cache folder name: the method's cache key (name, version, weights hash, engine, extraction options), so stale
    features are never reused."""
    return _slug(method.cache_key())


def _dataset_tags(datasets: Sequence[HPatchesDataset]) -> list[str]:
    """Unique labels "<folder name>" (with a path hash when two folders share a name)."""
    names = [d.root.resolve().name for d in datasets]
    tags = []
    for d, name in zip(datasets, names):
        if names.count(name) > 1:
            name = f"{name}-{hashlib.sha1(str(d.root.resolve()).encode()).hexdigest()[:8]}"
        tags.append(_slug(name))
    return tags


def _fingerprint(path: Path) -> list[int]:
    st = path.stat()
    return [int(st.st_size), int(st.st_mtime_ns)]


def _resize(image: np.ndarray, setting: Setting) -> np.ndarray:
    from zippy.image import resize_image

    return resize_image(image, setting.width, setting.height)


def _scaled_gt(H: np.ndarray, size0: tuple[int, int], size1: tuple[int, int], setting: Setting) -> np.ndarray:
    from zippy.geometry import scale_homography

    s0 = (setting.width / size0[0], setting.height / size0[1])
    s1 = (setting.width / size1[0], setting.height / size1[1])
    return scale_homography(H, s0, s1)


def _nearest_neighbours(f0: Features, f1: Features) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mutual [K,2], nn01 [N0,2], nn10 [N1,2]) int64 index pairs; nn10 rows are (index in f1, index in f0)."""
    import zippy

    empty = np.zeros((0, 2), np.int64)
    if len(f0) == 0 or len(f1) == 0:
        return empty, empty, empty
    nn01, _ = zippy.match(f0, f1, mutual=False)
    nn10, _ = zippy.match(f1, f0, mutual=False)
    nn01, nn10 = np.asarray(nn01, np.int64).reshape(-1, 2), np.asarray(nn10, np.int64).reshape(-1, 2)
    back = np.full(len(f1), -1, np.int64)
    back[nn10[:, 0]] = nn10[:, 1]
    mutual = nn01[back[nn01[:, 1]] == nn01[:, 0]]
    return mutual, nn01, nn10


class _FeatureCache:
    """Features of one (method, setting, dataset) in npz files plus an index.json of timings and sources."""

    def __init__(self, folder: Path, overwrite: bool) -> None:
        self.folder = folder
        self.overwrite = overwrite
        self.index_path = folder / "index.json"
        self.index: dict[str, dict[str, Any]] = {}
        if self.index_path.is_file() and not overwrite:
            import json

            try:
                index = json.loads(self.index_path.read_text(encoding="utf-8"))
                if not isinstance(index, dict):
                    raise ValueError(f"expected a JSON object, got {type(index).__name__}")
                self.index = index
            except (ValueError, OSError) as e:
                logger.warning("ignoring unreadable cache index %s: %s", self.index_path, e)
        self.dirty = False

    def get(self, key: str, source: Path) -> tuple[Features, float | None] | None:
        from zippy.features import load_features

        entry = self.index.get(key)
        path = self.folder / f"{key}.npz"
        if self.overwrite or entry is None or entry.get("source") != _fingerprint(source) or not path.is_file():
            return None
        try:
            feats = load_features(path)
        except (ValueError, OSError) as e:  # a damaged entry is recomputed, never mistaken for a bad image
            logger.warning("recomputing the damaged cache entry %s: %s", path, e)
            del self.index[key]
            self.dirty = True
            return None
        return feats, entry.get("time_s")

    def put(self, key: str, source: Path, feats: Features, seconds: float) -> None:
        from zippy.features import save_features

        save_features(feats, self.folder / f"{key}.npz")
        self.index[key] = {"source": _fingerprint(source), "time_s": seconds}
        self.dirty = True

    def flush(self) -> None:
        from zippy_eval.results import write_json

        if self.dirty:
            write_json(self.index_path, self.index)
            self.dirty = False


# ----------------------------------------------------------------------------------------------- evaluation


def _evaluate_method(
    method: Method,
    setting: Setting,
    datasets: Sequence[HPatchesDataset],
    tags: Sequence[str],
    conf: HPatchesConfig,
    cache_root: Path,
    skipped_sequences: dict[str, dict[str, str]],
) -> tuple[list[dict[str, Any]], dict[str, list[float]]]:
    """Per-pair rows of one method at one setting, and the extraction times (s) of the images per dataset."""
    from tqdm import tqdm

    from zippy.image import read_image

    rows: list[dict[str, Any]] = []
    times: dict[str, list[float]] = {}
    total = sum(d.num_images for d in datasets)
    mtag = _method_tag(method)
    with tqdm(total=total, desc=f"{method.name} {setting.tag}", unit="img", leave=False) as bar:
        for dataset, dtag in zip(datasets, tags):
            cache = _FeatureCache(cache_root / mtag / setting.tag / dtag, conf.overwrite)
            dtimes = times.setdefault(dtag, [])
            try:
                for seq in dataset.sequences:
                    if seq.name in skipped_sequences.get(dtag, {}):
                        bar.update(len(seq.images))
                        continue
                    feats: list[Features] = []
                    try:
                        for k, path in enumerate(seq.images, start=1):
                            feats.append(_features(method, setting, cache, f"{seq.name}/{k}", path, read_image, dtimes))
                            bar.update(1)
                    except ValueError as e:  # unreadable image: skip the sequence by name, never silently
                        reason = f"unreadable image: {e}"
                        logger.warning("skipping sequence %s/%s: %s", dtag, seq.name, reason)
                        skipped_sequences.setdefault(dtag, {})[seq.name] = reason
                        bar.update(len(seq.images) - len(feats))
                        continue
                    cache.flush()  # index per finished sequence: a kill loses at most the sequence in flight
                    if conf.dedup_px > 0:
                        feats = [suppress_near_duplicates(f, conf.dedup_px) for f in feats]
                    rows.extend(evaluate_sequence(seq, feats, setting, conf, dtag, method.name))
            finally:
                cache.flush()
    return rows, times


def suppress_near_duplicates(feats: Features, radius: float) -> Features:
    """``feats`` without the keypoints within ``radius`` px of a kept keypoint with a higher score.

    Greedy, best score first (ties: the earlier keypoint); the kept keypoints stay in their order. Keypoints
    float32 [N, 2], scores [N] and descriptors [N, ...] are filtered together.
    """
    n = len(feats.keypoints)
    if n == 0:
        return feats
    kp = np.asarray(feats.keypoints, np.float64)
    order = np.argsort(-np.asarray(feats.scores, np.float64), kind="stable")
    close = _pairwise_distances(kp, kp) <= radius
    keep = np.zeros(n, bool)
    gone = np.zeros(n, bool)
    for i in order:
        if not gone[i]:
            keep[i] = True
            gone |= close[i]
    idx = np.flatnonzero(keep)
    return Features(feats.keypoints[idx], feats.scores[idx], feats.descriptors[idx], feats.image_size, dict(feats.meta))


def _features(
    method: Method, setting: Setting, cache: _FeatureCache, key: str, path: Path, read_image: Any, times: list[float]
) -> Features:
    hit = cache.get(key, path)
    if hit is not None:
        feats, seconds = hit
    else:
        image = _resize(read_image(path), setting)
        t0 = time.perf_counter()
        feats = method.extract(image, setting.max_keypoints)
        seconds = time.perf_counter() - t0
        cache.put(key, path, feats, seconds)
    if seconds is not None:
        times.append(float(seconds))
    return feats


def evaluate_sequence(
    seq: HSequence, feats: Sequence[Features], setting: Setting, conf: HPatchesConfig, dtag: str, method_name: str
) -> list[dict[str, Any]]:
    """Per-pair rows (pairs (1, k)) of one sequence from the features of its images at ``setting``.

    Args:
        seq: the sequence; feats: one Features per image of ``seq`` (in its order), extracted from the
            image resized to ``setting``; dtag, method_name: the row's ``dataset`` and ``method`` keys.
    """
    rows = []
    size = (setting.width, setting.height)
    centre = ((setting.width - 1) / 2, (setting.height - 1) / 2)
    for i, j, H in seq.pairs():
        f0, f1 = feats[i], feats[j]
        H_s = _scaled_gt(H, seq.sizes[i], seq.sizes[j], setting)
        mutual, nn01, nn10 = _nearest_neighbours(f0, f1)
        metrics = evaluate_pair(
            f0.keypoints,
            f1.keypoints,
            H_s,
            size,
            size,
            mutual,
            nn01,
            nn10,
            rep_threshold=conf.rep_threshold,
            ms_threshold=conf.ms_threshold,
            accuracy_thresholds=conf.accuracy_thresholds,
            mma_thresholds=conf.mma_thresholds,
            ransac_threshold=conf.ransac_threshold,
            max_iters=conf.ransac_max_iters,
        )
        rows.append(
            {
                "dataset": dtag,
                "sequence": seq.name,
                "kind": seq.kind,
                "pair": f"{i + 1}-{j + 1}",
                "setting": setting.tag,
                "method": method_name,
                **dict(zip(("rotation_deg", "scale_change"), local_rotation_scale(H_s, centre))),
                **metrics,
            }
        )
    return rows


def _mean(values: Sequence[float]) -> float | None:
    a = np.asarray([v for v in values if v is not None], np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else None


def aggregate(rows: Sequence[dict[str, Any]], conf: HPatchesConfig) -> dict[str, Any]:
    """Means over pairs: ``{dataset: {setting: {method: {group: metrics}}}}`` for groups all / i / v.

    Homography accuracy at t is the fraction of pairs with corner error <= t; localization error is
    averaged over the pairs where it is defined; MMA is the per-threshold mean of the per-pair curves.
    """
    out: dict[str, Any] = {}
    for row in rows:
        out.setdefault(row["dataset"], {}).setdefault(row["setting"], {}).setdefault(row["method"], [])
    for dtag, by_setting in out.items():
        for stag, by_method in by_setting.items():
            for mname in list(by_method):
                mine = [r for r in rows if (r["dataset"], r["setting"], r["method"]) == (dtag, stag, mname)]
                groups = {}
                for group in GROUPS:
                    sel = [r for r in mine if group == "all" or r["kind"] == group]
                    if sel:
                        groups[group] = _aggregate_group(sel, conf)
                        if group != "all":
                            groups[group]["by_pair"] = _by_pair(sel, conf)
                        if group == "v":
                            groups[group]["by_motion"] = _by_motion(sel, conf)
                by_method[mname] = groups
    return out


def _pair_order(pair: str) -> tuple[int, ...]:
    """Sort key of a pair name "1-k": by image numbers (k grows with the difficulty of v_ sequences)."""
    return tuple(int(x) if x.isdigit() else 0 for x in pair.split("-"))


def _by_pair(rows: Sequence[dict[str, Any]], conf: HPatchesConfig) -> dict[str, dict[str, Any]]:
    """H@3 and MMA@3 per pair name ("1-2" ... "1-6"), in image order: where a method breaks down
    (empty when 3 px is not among the configured thresholds)."""
    if not _has_3px(conf):
        return {}
    return {
        pair: _h3_mma3([r for r in rows if r["pair"] == pair], conf)
        for pair in sorted({r["pair"] for r in rows}, key=_pair_order)
    }


def _has_3px(conf: HPatchesConfig) -> bool:
    return 3 in conf.accuracy_thresholds and 3 in conf.mma_thresholds


def _h3_mma3(rows: Sequence[dict[str, Any]], conf: HPatchesConfig) -> dict[str, Any]:
    """num_pairs, H@3 and MMA@3 of a group of pair rows (the by-pair and by-motion cells)."""
    agg = _aggregate_group(rows, conf)
    return {key: agg[key] for key in ("num_pairs", "h_acc@3", "mma@3")}


# bins of the rotation (degrees) and the scale change of v_ pairs at the image centre: [lo, hi)
MOTION_BINS = {
    "rotation_deg": ((0, 10), (10, 20), (20, 30), (30, 180)),
    "scale_change": ((1.0, 1.2), (1.2, 1.4), (1.4, float("inf"))),
}


def _motion_label(key: str, lo: float, hi: float) -> str:
    if key == "rotation_deg":
        return f"rotation {lo:g}-{hi:g} deg" if hi < 180 else f"rotation >= {lo:g} deg"
    return f"scale {lo:g}-{hi:g}x" if np.isfinite(hi) else f"scale >= {lo:g}x"


def _by_motion(rows: Sequence[dict[str, Any]], conf: HPatchesConfig) -> dict[str, dict[str, Any]]:
    """H@3 and MMA@3 by the pair's rotation and scale change at the image centre (MOTION_BINS), the bins with
    pairs only: which motions a method does not cope with (empty when 3 px is not a configured threshold)."""
    if not _has_3px(conf):
        return {}
    out: dict[str, dict[str, Any]] = {}
    for key, bins in MOTION_BINS.items():
        for lo, hi in bins:
            sel = [r for r in rows if lo <= r[key] < hi]
            if sel:
                out[_motion_label(key, lo, hi)] = _h3_mma3(sel, conf)
    return out


def _aggregate_group(rows: Sequence[dict[str, Any]], conf: HPatchesConfig) -> dict[str, Any]:
    agg: dict[str, Any] = {"num_pairs": len(rows)}
    agg["repeatability"] = _mean([r["repeatability"] for r in rows])
    agg["localization_error"] = _mean([r["localization_error"] for r in rows])
    for t in conf.accuracy_thresholds:
        agg[f"h_acc@{t:g}"] = float(np.mean([bool(r[f"h_acc@{t:g}"]) for r in rows]))
    agg["matching_score"] = _mean([r["matching_score"] for r in rows])
    mma = np.mean(np.asarray([r["mma"] for r in rows], np.float64), axis=0)
    agg["mma"] = mma.tolist()
    for t, v in zip(conf.mma_thresholds, mma):
        if t in (1, 3, 5):
            agg[f"mma@{t:g}"] = float(v)
    for key in ("n_kp0", "n_kp1", "n_matches", "n_inliers", "n_correct@3"):
        agg[key] = _mean([r[key] for r in rows])
    # causes of the wrong matches, pooled: counts of all pairs over all their mutual matches
    n_matches = sum(r["n_matches"] for r in rows)
    for key in WRONG_KEYS:
        agg[key] = sum(r[key] for r in rows) / n_matches if n_matches else None
    return agg


# ----------------------------------------------------------------------------------------------- reports


def _table(summary: dict[str, Any], conf: HPatchesConfig) -> str:
    from zippy_eval.results import markdown_table

    lines = [
        "# HPatches evaluation",
        "",
        f"Protocol: {PROTOCOL_NAME}; mutual NN matching (Hamming / L2), RANSAC {conf.ransac_threshold:g} px, "
        f"{conf.ransac_max_iters} iterations; repeatability / MS at {conf.rep_threshold:g} px. "
        "Rep = repeatability, LE = localization error (px), H@t = homography accuracy (corner error <= t px), "
        "MS = matching score, MMA@t = mean matching accuracy, #kp = keypoints per image, #m = mutual matches, "
        "ms/img = extraction time per image.",
        "",
    ]
    if conf.dedup_px > 0:
        lines += [
            f"Protocol variant: every method's keypoints within {conf.dedup_px:g} px of a better-scored keypoint "
            "were dropped before matching (--dedup-px); not comparable with runs without it.",
            "",
        ]
    if summary.get("skipped_methods"):
        lines += ["Skipped methods: " + "; ".join(f"{k}: {v}" for k, v in summary["skipped_methods"].items()), ""]
    timing = summary["timings_ms_per_image"]
    for dtag, by_setting in summary["aggregates"].items():
        ds = summary["dataset"][dtag]
        lines += [
            f"## {dtag}",
            "",
            f"{ds['num_sequences']} sequences ({ds['num_i']} i, {ds['num_v']} v), {ds['num_pairs']} pairs; "
            f"root `{ds['root']}`.",
        ]
        skipped = summary["skipped_sequences"].get(dtag) or ds.get("skipped")
        if skipped:
            lines.append("Skipped sequences: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()))
        lines.append("")
        for stag, by_method in by_setting.items():
            headers = ["method", "Rep", "LE", "H@1", "H@3", "H@5", "MS", "MMA@1", "MMA@3", "MMA@5", "#kp", "#m"]
            headers.append("ms/img")
            body = []
            split_body = []
            for mname, groups in by_method.items():
                a = groups["all"]
                t = timing.get(dtag, {}).get(stag, {}).get(mname)
                body.append(
                    [mname, a["repeatability"], a["localization_error"]]
                    + [a.get(f"h_acc@{x}") for x in (1, 3, 5)]
                    + [a["matching_score"]]
                    + [a.get(f"mma@{x}") for x in (1, 3, 5)]
                    + [0.5 * (a["n_kp0"] + a["n_kp1"]), a["n_matches"], t]
                )
                row: list[Any] = [mname]
                for g in ("i", "v"):
                    gg = groups.get(g, {})
                    row += [gg.get("repeatability"), gg.get("h_acc@3"), gg.get("matching_score"), gg.get("mma@3")]
                split_body.append(row)
            fmts = [".3f"] * 10 + [".0f", ".0f", ".1f"]
            lines += [f"### {stag} (all {by_method[next(iter(by_method))]['all']['num_pairs']} pairs)", ""]
            lines += [markdown_table(headers, body, fmts), ""]
            if any(r[1] is not None for r in split_body) and any(r[5] is not None for r in split_body):
                sh = ["method", "i Rep", "i H@3", "i MS", "i MMA@3", "v Rep", "v H@3", "v MS", "v MMA@3"]
                lines += [f"{stag}, illumination (i) / viewpoint (v):", "", markdown_table(sh, split_body), ""]
            lines += _wrong_table(stag, by_method)
            lines += _pair_table(stag, by_method)
            lines += _motion_table(stag, by_method)
        lines.append(f"![MMA]({summary['plots'][dtag]})")
        lines.append("")
    return "\n".join(lines)


def _wrong_table(stag: str, by_method: dict[str, Any]) -> list[str]:
    """Lines of the table of wrong-match causes (fractions of all mutual matches) per split."""
    from zippy_eval.results import markdown_table

    headers, body = ["method"], []
    for g in ("i", "v"):
        headers += [f"{g} {name}" for name in ("out of view", "no partner", "partner elsewhere", "far")]
    for mname, groups in by_method.items():
        body.append([mname] + [groups.get(g, {}).get(key) for g in ("i", "v") for key in WRONG_KEYS])
    if all(v is None for row in body for v in row[1:]):
        return []
    note = (
        f"{stag}, wrong mutual matches at 3 px by cause, as fractions of all mutual matches of all pairs (the "
        f"first three add up to the pooled wrong fraction, near 1 - MMA@3, which averages per pair): out of "
        f"the other view; in view without a keypoint within 3 px (no partner); with one, but matched "
        f"elsewhere; far: wrong by more than {FAR_WRONG_PX:g} px, any cause."
    )
    return [note, "", markdown_table(headers, body), ""]


def _pair_table(stag: str, by_method: dict[str, Any]) -> list[str]:
    """Lines of the table of H@3 / MMA@3 per pair name (image 1 against image k) and split."""
    from zippy_eval.results import markdown_table

    columns = [(g, pair) for g in ("i", "v") for pair in _pairs_of(by_method, g)]
    if not columns:
        return []
    headers = ["method"] + [f"{g} {pair}" for g, pair in columns]
    body = []
    for mname, groups in by_method.items():
        row = [mname]
        for g, pair in columns:
            cell = groups.get(g, {}).get("by_pair", {}).get(pair)
            row.append(f"{cell['h_acc@3']:.2f} / {cell['mma@3']:.3f}" if cell else None)
        body.append(row)
    note = f"{stag}, H@3 / MMA@3 by pair (image 1 against image k; on v_ the views grow harder with k):"
    return [note, "", markdown_table(headers, body), ""]


def _motion_table(stag: str, by_method: dict[str, Any]) -> list[str]:
    """Lines of the table of v_ H@3 / MMA@3 by rotation and scale change (one row per bin, a column per method)."""
    from zippy_eval.results import markdown_table

    labels = list(dict.fromkeys(b for groups in by_method.values() for b in groups.get("v", {}).get("by_motion", {})))
    if not labels:
        return []
    headers = ["v_ pairs", "n", *by_method]
    body = []
    for label in labels:
        cells = [by_method[m].get("v", {}).get("by_motion", {}).get(label) for m in by_method]
        n = next(c["num_pairs"] for c in cells if c)
        body.append([label, n] + [f"{c['h_acc@3']:.2f} / {c['mma@3']:.3f}" if c else None for c in cells])
    note = f"{stag}, v_ H@3 / MMA@3 by the rotation and the scale change of the homography at the image centre:"
    return [note, "", markdown_table(headers, body, ".0f"), ""]


def _pairs_of(by_method: dict[str, Any], group: str) -> list[str]:
    pairs = {p for groups in by_method.values() for p in groups.get(group, {}).get("by_pair", {})}
    return sorted(pairs, key=_pair_order)


def _plot(aggregates: dict[str, Any], dtag: str, conf: HPatchesConfig, path: Path) -> Path:
    """MMA vs threshold: one row per setting, one column per split, one line per method; a last column
    with MMA@3 by pair (image 1 against image k), v_ solid and i_ dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from zippy_eval.results import save_figure

    by_setting = aggregates[dtag]
    settings = list(by_setting)
    fig, axes = plt.subplots(len(settings), 4, figsize=(17, 3.6 * len(settings)), squeeze=False)
    for r, stag in enumerate(settings):
        for c, group in enumerate(GROUPS):
            ax = axes[r][c]
            for mname, groups in by_setting[stag].items():
                if group in groups:
                    ax.plot(conf.mma_thresholds, groups[group]["mma"], marker="o", ms=3, label=mname)
            ax.set_title(f"{dtag} {stag} [{group}]", fontsize=9)
            ax.set_xlabel("threshold (px)")
            ax.set_ylabel("MMA")
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
        axes[r][0].legend(fontsize=7, loc="lower right")
        ax = axes[r][3]
        for i, groups in enumerate(by_setting[stag].values()):  # colours as in the other columns
            for group, style in (("v", "-"), ("i", "--")):
                by_pair = groups.get(group, {}).get("by_pair", {})
                if by_pair:
                    ys = [v["mma@3"] for v in by_pair.values()]
                    ax.plot(list(by_pair), ys, style, color=f"C{i}", marker="o", ms=3)
        ax.set_title(f"{dtag} {stag}: MMA@3 by pair (v_ solid, i_ dashed)", fontsize=9)
        ax.set_xlabel("pair (image 1 - image k)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=90)
    return path


# ----------------------------------------------------------------------------------------------- run


def run(
    conf: HPatchesConfig,
    dataset_dir: str | os.PathLike | Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
) -> Path:
    """Evaluate ``conf.methods`` on one or more HPatches-layout folders; returns the summary.json path.

    Args:
        conf: the run configuration.
        dataset_dir: a dataset folder, or several (each one is a dataset block in the results).
        output_dir: result folder (created): summary.json, table.md, mma_<dataset>.png, cache/.

    Raises:
        FileNotFoundError / ValueError: a dataset folder is missing or holds no usable sequence; an
            unknown method name; every method unavailable.
    """
    from zippy.io import remove_temp_files
    from zippy_eval.results import write_summary, write_text

    dirs = [dataset_dir] if isinstance(dataset_dir, (str, os.PathLike)) else list(dataset_dir)
    if not dirs:
        raise ValueError("no dataset folder given")
    output_dir = Path(output_dir)
    load_at_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    if conf.threads is not None:
        set_threads(conf.threads)
    datasets = [load_hpatches(d, include=conf.include, exclude=conf.exclude) for d in dirs]
    tags = _dataset_tags(datasets)

    methods, skipped_methods = methods_for_run(conf)

    cache_root = Path(conf.cache_dir) if conf.cache_dir else output_dir / "cache"
    for folder in {output_dir, cache_root}:  # what a killed run left mid-write (never a result)
        remove_temp_files(folder)
    rows: list[dict[str, Any]] = []
    timings: dict[str, dict[str, dict[str, float | None]]] = {}
    skipped_sequences: dict[str, dict[str, str]] = {}
    for method in methods:
        for setting in conf.settings:
            t0 = time.perf_counter()
            mrows, times = _evaluate_method(method, setting, datasets, tags, conf, cache_root, skipped_sequences)
            rows.extend(mrows)
            for dtag, t in times.items():
                by_method = timings.setdefault(dtag, {}).setdefault(setting.tag, {})
                by_method[method.name] = 1000.0 * float(np.mean(t)) if t else None
            logger.info("%s %s: %d pairs in %.1f s", method.name, setting.tag, len(mrows), time.perf_counter() - t0)
    # a sequence skipped for one method is dropped for all, so every method sees the same pairs
    rows = [r for r in rows if r["sequence"] not in skipped_sequences.get(r["dataset"], {})]
    aggregates = aggregate(rows, conf)

    plots = {dtag: f"mma_{dtag}.png" for dtag in tags if dtag in aggregates}
    dataset_info = {tag: d.describe() for tag, d in zip(tags, datasets)}
    summary = {
        "aggregates": aggregates,
        "dataset": dataset_info,
        "timings_ms_per_image": timings,
        "skipped_methods": skipped_methods,
        "skipped_sequences": skipped_sequences,
        "plots": plots,
    }
    # summary.json first, the table and plots (derived from it) after: the stale ones go first, so a kill
    # at any moment leaves either the old set, or the new summary with the new table / plots or none of them
    output_dir.mkdir(parents=True, exist_ok=True)
    for stale in [output_dir / "table.md", *output_dir.glob("mma_*.png")]:
        stale.unlink(missing_ok=True)
    path = write_summary(
        output_dir,
        protocol=conf.protocol() | {"config": _config_dict(conf)},
        dataset=dataset_info,
        methods={m.name: m.info() for m in methods},
        rows=rows,
        aggregates=aggregates,
        extra={
            "timings_ms_per_image": timings,
            "skipped_methods": skipped_methods,
            "skipped_sequences": skipped_sequences,
            "plots": plots,
            "table": "table.md",
            "loadavg_at_start": load_at_start,
        },
    )
    write_text(output_dir / "table.md", _table(summary, conf))
    for dtag, name in plots.items():
        _plot(aggregates, dtag, conf, output_dir / name)
    return path


def _config_dict(conf: HPatchesConfig) -> dict[str, Any]:
    d = asdict(conf)
    d["settings"] = [s.tag for s in conf.settings]
    return d
