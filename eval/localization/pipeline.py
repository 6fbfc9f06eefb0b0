"""Visual localization pipeline: features -> pairs -> matches -> map -> localization -> evaluation.

Each step is a function returning the path it wrote; :func:`run` chains them for every method of a
:class:`LocalizationConf` on one dataset and writes ``summary.json`` (protocol inside), ``table.md``
and ``errors.png`` to the output folder. Features and matches are cached in h5 files keyed by image
name under ``output_dir/cache/<method tag>/`` and reused unless ``overwrite``.

Pixel thresholds (two-view verification, absolute pose RANSAC) are given in pixels of the resized
image the features were extracted from and scaled to original pixels by the resize factor.

Evaluation: recall at (0.25 m, 2 deg), (0.5 m, 5 deg), (5 m, 10 deg) over all queries (failed queries
are misses, never dropped), median position / rotation errors over all queries (a failed query has
an infinite error, so the median is infinite when half fail) and over localized ones. Map size:
descriptor bytes per 3D point (32 for a 256-bit binary descriptor, 4 x D for float32 [D]).
"""

from __future__ import annotations

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
from zippy_eval.localization import features_h5
from zippy_eval.localization.datasets import LocalizationDataset
from zippy_eval.localization.localize import LocalizationResult, LocalizeOptions, localize_queries, write_failures
from zippy_eval.localization.mapping import MappingOptions, map_stats, reconstruct, triangulate
from zippy_eval.localization.pairs import (
    pairs_exhaustive,
    pairs_from_match_count,
    pairs_from_retrieval,
    pairs_to,
    write_pairs,
)
from zippy_eval.localization.poses import Pose, pose_error, recall_at, write_poses

__all__ = [
    "THRESHOLDS",
    "LocalizationConf",
    "align_pose",
    "extract",
    "extract_resized",
    "match",
    "method_tag",
    "run",
    "run_method",
    "slug",
]

logger = logging.getLogger(__name__)

THRESHOLDS: tuple[tuple[float, float], ...] = ((0.25, 2.0), (0.5, 5.0), (5.0, 10.0))


PAIRS = ("retrieval", "match-count", "exhaustive")


@dataclass(frozen=True)
class LocalizationConf:
    """Configuration of a localization run.

    Attributes:
        methods: feature methods from ``zippy_eval.methods`` ("zippypoint", "orb", "sift", ...).
        max_keypoints: keypoint budget per image.
        resize_max: images whose larger side exceeds this are downscaled for extraction (0: never);
            keypoints are scaled back to original pixels.
        weights: method name -> weights file (None entries: default weights).
        extractor: options of the zippy methods (:class:`zippy.ExtractorConfig`: engine, scales, shifts,
            nms_radius; its name and weights are each method's own); other methods ignore them.
        mapping: "auto" (triangulate from known poses, SfM otherwise; SfM for leave-one-out),
            "triangulate" or "sfm".
        pairs: "retrieval" (the default: query pairs and, without known database poses, map pairs from
            the bag-of-words vocabulary, ``num_neighbors`` per image; methods the vocabulary was not trained
            for fall back to "match-count"), "match-count" (query pairs ranked by the match count of the
            ``retrieval_keypoints`` strongest keypoints; map pairs exhaustive) or "exhaustive". With known
            database poses, map pairs come from the poses under both retrievals.
        vocabulary: vocabulary file for "retrieval" (None: the shipped one).
        num_neighbors: pairs per image for "retrieval" and "match-count".
        retrieval_keypoints: keypoints used to rank "match-count" candidates.
        verify_px: two-view verification threshold (resized pixels).
        pnp_px: absolute pose RANSAC threshold (resized pixels).
        min_inliers: absolute pose inliers needed to count a query as localized.
        align_max_error: similarity alignment RANSAC threshold on camera centres (dataset units).
        thresholds: (metres, degrees) recall thresholds.
        num_threads: threads for pycolmap, OpenCV and torch.
        max_queries: evaluate only the first N queries (None: all).
        seed: random seed of pycolmap's RANSAC and SfM.
        overwrite: recompute cached features, matches and maps.
        verbose: let COLMAP's log through.
    """

    methods: tuple[str, ...] = ("zippypoint",)
    max_keypoints: int = 2048
    resize_max: int = 1024
    weights: dict[str, str | None] = field(default_factory=dict)
    extractor: ExtractorConfig = field(default_factory=ExtractorConfig)
    mapping: str = "auto"
    pairs: str = "retrieval"
    vocabulary: str | None = None
    num_neighbors: int = 10
    retrieval_keypoints: int = 256
    verify_px: float = 3.0
    pnp_px: float = 6.0
    min_inliers: int = 12
    align_max_error: float = 1.0
    thresholds: tuple[tuple[float, float], ...] = THRESHOLDS
    num_threads: int = 1
    max_queries: int | None = None
    seed: int = 0
    overwrite: bool = False
    verbose: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.methods, str):
            raise ValueError(f"methods must be a sequence of names, got the string {self.methods!r}")
        if not self.methods:
            raise ValueError("methods must not be empty")
        if self.mapping not in ("auto", "triangulate", "sfm"):
            raise ValueError(f"mapping must be 'auto', 'triangulate' or 'sfm', got {self.mapping!r}")
        if self.pairs not in PAIRS:
            raise ValueError(f"pairs must be one of {PAIRS}, got {self.pairs!r}")
        if self.max_keypoints <= 0 or self.resize_max < 0 or self.num_threads < 1:
            raise ValueError(
                "max_keypoints and num_threads must be positive and resize_max >= 0, got "
                f"{self.max_keypoints}, {self.num_threads}, {self.resize_max}"
            )

    def protocol(self) -> dict[str, Any]:
        """What determines the numbers, for summary.json."""
        d = asdict(self)
        d.update(self.extractor.options())  # engine, scales, shifts, nms_radius at the top level
        d.pop("overwrite")
        d.pop("extractor")
        d.pop("verbose")
        d["matcher"] = "mutual nearest neighbour (Hamming for binary, L2 for float), zippy.matching"
        d["verification"] = "COLMAP two-view geometry (pycolmap.geometric_verification)"
        d["absolute_pose"] = "pycolmap.estimate_and_refine_absolute_pose"
        return d


# ----------------------------------------------------------------------------------------------- steps


def slug(text: str) -> str:
    """``text`` reduced to a safe file name."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_") or "x"


def method_tag(method: Any, conf: Any) -> str:
    """Cache folder of a method: its cache key (name, version, weights hash, engine, extraction options), budget and
    resize (stale caches never reused)."""
    return slug(f"{method.cache_key()}-k{conf.max_keypoints}-r{conf.resize_max}")


def _resize_factor(size: tuple[int, int], resize_max: int) -> float:
    """Extraction scale (<= 1) of an image of (w, h)."""
    if resize_max <= 0 or max(size) <= resize_max:
        return 1.0
    return resize_max / max(size)


def extract(
    method: Any,
    conf: LocalizationConf,
    image_dir: Path,
    names: Sequence[str],
    features_path: Path,
    problems: list[str],
) -> Path:
    """Extract features of ``names`` into ``features_path`` (cached ones skipped unless ``conf.overwrite``).

    Images are downscaled to ``conf.resize_max`` and keypoints mapped back to original pixels
    (x_orig = (x + 0.5) / s - 0.5). An unreadable image is logged, added to ``problems`` and skipped.
    """
    from tqdm import tqdm

    from zippy.image import read_image

    if conf.overwrite and features_path.exists():
        features_path.unlink()
    todo = [n for n in names if not features_h5.has_features(features_path, n)]
    for name in tqdm(todo, desc=f"extract {method.name}", unit="img", leave=False, disable=not todo):
        try:
            rgb = read_image(image_dir / name)
        except (OSError, ValueError) as e:
            msg = f"{name}: cannot read image ({e}); no features"
            logger.warning(msg)
            problems.append(msg)
            continue
        features_h5.write_features(
            features_path, name, extract_resized(method, rgb, conf.max_keypoints, conf.resize_max)
        )
    return features_path


def extract_resized(method: Any, rgb: np.ndarray, max_keypoints: int, resize_max: int) -> Features:
    """Extract on the image downscaled so that its larger side is at most ``resize_max`` (0: no resize).

    Args:
        method: a ``zippy_eval.methods.Method``.
        rgb: uint8 [H,W,3] RGB.
        max_keypoints: keypoint budget.
        resize_max: larger side for extraction.

    Returns:
        Features with keypoints float32 [N,2] in original pixels (x = (x_small + 0.5) / s - 0.5) and
        ``image_size`` = (W, H) of the original image.
    """
    import cv2

    h, w = rgb.shape[:2]
    s = _resize_factor((w, h), resize_max)
    small = rgb if s == 1.0 else cv2.resize(rgb, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
    f = method.extract(small, max_keypoints)
    sx, sy = small.shape[1] / w, small.shape[0] / h
    kp = (f.keypoints + 0.5) / np.array([sx, sy], np.float32) - 0.5
    return Features(kp.astype(np.float32), f.scores, f.descriptors, (w, h), dict(f.meta))


def _match_pair(f0: Any, f1: Any) -> tuple[np.ndarray, np.ndarray]:
    import zippy

    if len(f0) == 0 or len(f1) == 0:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    return zippy.match(f0, f1, mutual=True)


def match(pairs: Sequence[tuple[str, str]], features_path: Path, matches_path: Path, overwrite: bool = False) -> Path:
    """Mutual nearest-neighbour matches of every pair into ``matches_path`` (cached pairs skipped)."""
    from tqdm import tqdm

    if overwrite and matches_path.exists():
        matches_path.unlink()
    todo = [p for p in pairs if not features_h5.has_matches(matches_path, *p)]
    cache: dict[str, Any] = {}

    def feats(name: str) -> Any:
        if name not in cache:
            cache[name] = features_h5.read_features(features_path, name)
        return cache[name]

    for a, b in tqdm(todo, desc="match", unit="pair", leave=False, disable=not todo):
        m, d = _match_pair(feats(a), feats(b))
        features_h5.write_matches(matches_path, a, b, m, d, len(feats(a)))
    return matches_path


def align_pose(pose: Pose, sim: Any) -> Pose:
    """Express ``pose`` (cam_from_map) in the target frame of ``sim`` (``pycolmap.Sim3d`` tgt_from_map)."""
    m = np.asarray(sim.matrix(), np.float64)  # [3,4] = [s R_a | t_a]
    s = float(sim.scale)
    Ra, ta = m[:, :3] / s, m[:, 3]
    R = pose.R @ Ra.T
    return Pose(R, s * pose.t - R @ ta)


def _align_map(model_dir: Path, ref_poses: dict[str, Pose], conf: LocalizationConf) -> tuple[Any, str]:
    """Similarity map -> reference from the registered map cameras.

    Camera centres alone fix the rotation poorly when they spread little (a 3 cm centre error over a
    1 m spread tilts the map by ~2 deg), so each camera also contributes a point on its optical axis
    at distance L (L = the spread of the reference centres): a first similarity from the centres
    gives the scale that places that point in the map frame, then both sets of points are aligned.
    """
    import pycolmap

    rec = pycolmap.Reconstruction(str(model_dir))
    src_poses, tgt_poses = [], []
    for im in rec.images.values():
        if im.has_pose and im.name in ref_poses:
            src_poses.append(Pose.from_rigid3d(im.cam_from_world()))
            tgt_poses.append(ref_poses[im.name])
    if len(src_poses) < 3:
        return None, f"only {len(src_poses)} map images registered: cannot align the map"
    ransac = pycolmap.RANSACOptions()
    ransac.max_error = conf.align_max_error
    ransac.random_seed = conf.seed
    src = np.stack([p.center for p in src_poses])
    tgt = np.stack([p.center for p in tgt_poses])
    found = pycolmap.estimate_sim3d_robust(src, tgt, ransac)
    if found is None:
        return None, "similarity alignment of the map failed"
    sim = found["tgt_from_src"]
    spread = float(np.median(np.linalg.norm(tgt - tgt.mean(0), axis=1)))
    if spread > 0:
        src_axis = src + np.stack([p.R[2] for p in src_poses]) * (spread / float(sim.scale))
        tgt_axis = tgt + np.stack([p.R[2] for p in tgt_poses]) * spread
        refined = pycolmap.estimate_sim3d_robust(np.vstack([src, src_axis]), np.vstack([tgt, tgt_axis]), ransac)
        if refined is not None:
            sim = refined["tgt_from_src"]
    return sim, ""


# ----------------------------------------------------------------------------------------------- per method


@dataclass
class _MethodRun:
    results: list[LocalizationResult]
    maps: list[dict[str, float]]
    seconds: float
    pairs: dict[str, Any]


def _pix_scale(dataset: LocalizationDataset, conf: LocalizationConf) -> float:
    """Original pixels per resized pixel (median over images with intrinsics)."""
    sizes = [(c.width, c.height) for c in dataset.cameras.values()]
    if not sizes:
        return 1.0
    return float(np.median([1.0 / _resize_factor(s, conf.resize_max) for s in sizes]))


def run_method(
    method: Any, conf: LocalizationConf, dataset: LocalizationDataset, work_dir: Path, problems: list[str]
) -> _MethodRun:
    """All steps for one method; returns per-query results and map statistics."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    work_dir.mkdir(parents=True, exist_ok=True)
    queries = list(dataset.query_names)[: conf.max_queries] if conf.max_queries else list(dataset.query_names)
    db = list(dataset.db_names)
    names = sorted(set(db) | set(queries))
    features = extract(method, conf, dataset.image_dir, names, work_dir / "features.h5", problems)
    pdir = work_dir / pairs_tag(_pairs_kind(method, conf), conf)  # pairs, matches, maps, poses
    have = set(features_h5.list_features(features))
    scale = _pix_scale(dataset, conf)
    mopts = MappingOptions(
        num_threads=conf.num_threads,
        ransac_max_error=conf.verify_px * scale,
        refine_intrinsics=dataset.guessed_intrinsics,
        seed=conf.seed,
        verbose=conf.verbose,
    )
    lopts = LocalizeOptions(
        ransac_max_error=conf.pnp_px * scale,
        min_inliers=conf.min_inliers,
        refine_focal_length=dataset.guessed_intrinsics,
        seed=conf.seed,
    )
    db_ok = [n for n in db if n in have]
    mapping = conf.mapping
    if mapping == "auto":
        mapping = "triangulate" if dataset.db_poses is not None and not dataset.leave_one_out else "sfm"
    if mapping == "triangulate" and dataset.db_poses is None:
        raise ValueError(f"{dataset.name}: mapping 'triangulate' needs known database poses; use 'sfm'")

    # pairs and matches: map pairs among the database images, query pairs to the database
    t_pairs = time.perf_counter()
    pairs_kind = _pairs_kind(method, conf)
    map_pairs, q_pairs = _make_pairs(pairs_kind, queries, db_ok, dataset, features, conf, have)
    t_match = time.perf_counter()
    write_pairs(map_pairs, pdir / "pairs-map.txt")
    write_pairs(q_pairs, pdir / "pairs-query.txt")
    matches = match([*map_pairs, *q_pairs], features, pdir / "matches.h5", conf.overwrite)
    pair_stats = {
        "pairs": pairs_kind,
        "num_map_pairs": len(map_pairs),
        "num_query_pairs": len(q_pairs),
        "pairs_seconds": t_match - t_pairs,
        "matching_seconds": time.perf_counter() - t_match,
    }

    cameras: dict[str, Any] = {n: dataset.cameras.get(n) for n in queries}
    for q in queries:
        if q not in have and cameras.get(q) is not None:
            cameras[q] = None  # fails with "no intrinsics"-like reason below
    results: list[LocalizationResult] = []
    maps: list[dict[str, float]] = []
    desc_bytes = _descriptor_bytes(features, db_ok)
    if dataset.leave_one_out:
        verified = _verified_database(pdir / "verified", db_ok, dataset, features, map_pairs, matches, mopts, conf)
        for q in tqdm(queries, desc=f"leave-one-out {method.name}", unit="query", leave=False):
            fold_db = [n for n in db_ok if n != q]
            fold_pairs = [p for p in map_pairs if q not in p]
            if pairs_kind == "exhaustive":
                fold_q = [(q, n) for n in fold_db]
            else:  # the query's neighbours in the retrieval graph
                fold_q = [(q, b if a == q else a) for a, b in map_pairs if q in (a, b)]
            res, stats = _map_and_localize(
                q, {q: cameras[q] if q in have else None}, fold_db, fold_pairs, fold_q, mapping, dataset,
                features, matches, pdir / "folds" / slug(q), mopts, lopts, conf, verified,
            )  # fmt: skip
            results.extend(res)
            if stats:
                maps.append(stats | _bytes(stats, desc_bytes))
    else:
        res, stats = _map_and_localize(
            None, cameras, db_ok, map_pairs, q_pairs, mapping, dataset, features, matches,
            pdir / "map", mopts, lopts, conf,
        )  # fmt: skip
        results.extend(res)
        if stats:
            maps.append(stats | _bytes(stats, desc_bytes))
    for r in results:
        if r.pose is None and r.name not in have:
            r.reason = "no features (image unreadable)"
    write_poses({r.name: r.pose for r in results if r.pose is not None}, pdir / "poses.txt")
    write_failures(results, pdir / "failures.txt")
    return _MethodRun(results, maps, time.perf_counter() - t0, pair_stats)


def _verified_database(
    folder: Path,
    names: list[str],
    dataset: LocalizationDataset,
    features: Path,
    pairs: list[tuple[str, str]],
    matches: Path,
    mopts: MappingOptions,
    conf: LocalizationConf,
) -> Path:
    """A COLMAP database of all map images with verified matches, built once and shared by the folds."""
    from zippy_eval.localization.mapping import build_database, verify_database

    final = folder / "database.db"
    if final.is_file() and not conf.overwrite:
        return final
    from zippy.io import atomic_path

    with atomic_path(final) as tmp:  # "replaced if it exists": the empty temporary file is rewritten
        build_database(tmp, names, dataset.cameras, features, pairs, matches)
        n = verify_database(tmp, mopts)
    logger.info("verified %d of %d map pairs once for all folds", n, len(pairs))
    return final


def _descriptor_bytes(features: Path, names: Sequence[str]) -> int:
    for n in names:
        f = features_h5.read_features(features, n)
        return int(f.descriptors.shape[1] * f.descriptors.dtype.itemsize)
    return 0


def _bytes(stats: dict[str, float], desc_bytes: int) -> dict[str, float]:
    return {
        "descriptor_bytes_per_point": desc_bytes,
        "descriptor_bytes_map": desc_bytes * int(stats["num_points3D"]),
    }


def pairs_tag(kind: str, conf: LocalizationConf) -> str:
    """Folder (inside a method's cache) of what depends on the pairs: "pairs-exhaustive", "pairs-retrieval10"."""
    return f"pairs-{kind}" if kind == "exhaustive" else f"pairs-{kind}{conf.num_neighbors}"


def _vocabulary(conf: LocalizationConf) -> Any:
    from zippy.vocabulary import Vocabulary

    return Vocabulary.load(conf.vocabulary)


def _pairs_kind(method: Any, conf: LocalizationConf) -> str:
    """conf.pairs, with "retrieval" falling back to "match-count" (logged) for descriptors the vocabulary was not
    trained for (another method, or other weights)."""
    if conf.pairs != "retrieval":
        return conf.pairs
    info = method.info()
    if not info.get("binary"):
        logger.info("%s: float descriptors, no vocabulary: match-count retrieval", info["name"])
        return "match-count"
    voc = _vocabulary(conf)
    want, sha = voc.meta.get("model"), voc.meta.get("model_sha256")
    if info["name"] != want or (sha and info.get("weights_sha256") not in (None, sha)):
        logger.info("%s: the vocabulary was trained for %s descriptors: match-count retrieval", info["name"], want)
        return "match-count"
    return "retrieval"


def _make_pairs(
    kind: str,
    queries: Sequence[str],
    db: list[str],
    dataset: LocalizationDataset,
    features: Path,
    conf: LocalizationConf,
    have: set[str],
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(map pairs, query pairs) of one method. Leave-one-out datasets have no separate query pairs."""
    from zippy_eval.localization.pairs import pairs_from_poses, unordered_pairs

    qs = [q for q in queries if q in have]
    if kind == "exhaustive" or len(db) <= conf.num_neighbors:
        map_pairs, q_pairs = pairs_exhaustive(db), pairs_to(qs, db)
    elif kind == "match-count":
        map_pairs = pairs_exhaustive(db)
        q_pairs = _match_count_pairs(qs, db, features, conf)
    else:
        cache: dict[str, np.ndarray] = {}

        def desc(name: str) -> np.ndarray:
            if name not in cache:
                cache[name] = features_h5.read_features(features, name).descriptors
            return cache[name]

        voc = _vocabulary(conf)
        map_pairs = unordered_pairs(pairs_from_retrieval(db, db, desc, voc, conf.num_neighbors))
        q_pairs = pairs_from_retrieval(qs, db, desc, voc, conf.num_neighbors)
    if kind != "exhaustive" and dataset.db_poses is not None and not dataset.leave_one_out:
        map_pairs = pairs_from_poses({n: dataset.db_poses[n] for n in db}, conf.num_neighbors)
    if dataset.leave_one_out:
        q_pairs = []  # query pairs are map pairs
    return map_pairs, q_pairs


def _match_count_pairs(
    qs: Sequence[str], db: Sequence[str], features: Path, conf: LocalizationConf
) -> list[tuple[str, str]]:
    from tqdm import tqdm

    k = conf.retrieval_keypoints
    cache = {n: features_h5.read_features(features, n).subset(slice(0, k)) for n in db}
    with tqdm(total=len(qs), desc="retrieval", unit="query", leave=False) as bar:
        qf: dict[str, Any] = {}

        def count(q: str, d: str) -> int:
            if q not in qf:
                qf.clear()
                qf[q] = features_h5.read_features(features, q).subset(slice(0, k))
            return len(_match_pair(qf[q], cache[d])[0])

        return pairs_from_match_count(qs, db, count, conf.num_neighbors, progress=bar.update)


def _map_and_localize(
    query: str | None,
    cameras: dict[str, Any],
    db: list[str],
    map_pairs: list[tuple[str, str]],
    q_pairs: list[tuple[str, str]],
    mapping: str,
    dataset: LocalizationDataset,
    features: Path,
    matches: Path,
    work: Path,
    mopts: MappingOptions,
    lopts: LocalizeOptions,
    conf: LocalizationConf,
    verified_db: Path | None = None,
) -> tuple[list[LocalizationResult], dict[str, float] | None]:
    import pycolmap

    def fail(reason: str) -> list[LocalizationResult]:
        logger.warning("%s: %s", query or dataset.name, reason)
        return [LocalizationResult(q, None, reason=reason) for q in cameras]

    model = work / "model"
    reuse = (model / "images.bin").is_file() and not conf.overwrite
    if mapping == "triangulate":
        if dataset.db_poses is None:
            raise ValueError(f"{dataset.name}: triangulation needs known database poses")
        if not reuse:
            poses = {n: dataset.db_poses[n] for n in db}
            model = triangulate(
                work, dataset.image_dir, poses, dataset.cameras, features, map_pairs, matches, mopts, verified_db
            )
    elif not reuse:
        built = reconstruct(
            work, dataset.image_dir, db, dataset.cameras, features, map_pairs, matches, mopts, verified_db
        )
        if built is None:
            return fail("SfM could not build a map"), None
        model = built
    stats = map_stats(pycolmap.Reconstruction(str(model)))
    sim = None
    if mapping == "sfm" and dataset.query_gt is not None:
        if dataset.db_poses is None:
            logger.warning("%s: SfM map without database poses cannot be compared to the ground truth", dataset.name)
        else:
            sim, why = _align_map(model, dataset.db_poses, conf)
            if sim is None:
                return fail(why), stats
            stats["align_scale"] = float(sim.scale)
    results = localize_queries(model, cameras, q_pairs, features, matches, lopts)
    if sim is not None:
        for r in results:
            if r.pose is not None:
                r.pose = align_pose(r.pose, sim)
    return results, stats


# ----------------------------------------------------------------------------------------------- evaluation


def _rows(method: str, results: Sequence[LocalizationResult], gt: dict[str, Pose] | None) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        row: dict[str, Any] = {
            "method": method,
            "query": r.name,
            "localized": r.pose is not None,
            "num_matches_2d3d": r.num_matches,
            "num_inliers": r.num_inliers,
            "reason": r.reason,
            "position_error": None,
            "rotation_error_deg": None,
        }
        if gt is not None and r.pose is not None and r.name in gt:
            dt, dr = pose_error(r.pose, gt[r.name])
            row["position_error"], row["rotation_error_deg"] = dt, dr
        rows.append(row)
    return rows


def _aggregate(rows: Sequence[dict[str, Any]], maps: Sequence[dict[str, float]], conf: LocalizationConf, gt: bool):
    n = len(rows)
    agg: dict[str, Any] = {
        "num_queries": n,
        "num_localized": int(sum(r["localized"] for r in rows)),
    }
    if gt:
        errs = [
            (r["position_error"], r["rotation_error_deg"]) if r["position_error"] is not None else (np.inf, np.inf)
            for r in rows
        ]
        e = np.asarray(errs, np.float64).reshape(-1, 2)
        agg["recall"] = {
            f"{dt:g}m_{dr:g}deg": v for (dt, dr), v in zip(conf.thresholds, recall_at(errs, n, conf.thresholds))
        }
        agg["median_position_error_all"] = float(np.median(e[:, 0])) if n else None
        agg["median_rotation_error_deg_all"] = float(np.median(e[:, 1])) if n else None
        ok = e[np.isfinite(e[:, 0])]
        agg["median_position_error_localized"] = float(np.median(ok[:, 0])) if len(ok) else None
        agg["median_rotation_error_deg_localized"] = float(np.median(ok[:, 1])) if len(ok) else None
    if maps:
        for key in ("num_reg_images", "num_points3D", "mean_track_length", "mean_reprojection_error"):
            agg[f"map_{key}_mean"] = float(np.mean([m[key] for m in maps]))
        agg["descriptor_bytes_per_point"] = int(maps[0]["descriptor_bytes_per_point"])
        agg["map_descriptor_bytes_mean"] = float(np.mean([m["descriptor_bytes_map"] for m in maps]))
    return agg


def _table(
    aggregates: dict[str, dict[str, Any]],
    conf: LocalizationConf,
    gt: bool,
    pair_stats: dict[str, dict[str, Any]] | None = None,
) -> str:
    from zippy_eval.results import markdown_table

    headers = ["method", "localized"]
    fmts = ["s", "s"]
    if gt:
        headers += [f"{dt:g} m, {dr:g}°" for dt, dr in conf.thresholds]
        headers += ["median pos. err", "median rot. err (°)"]
        fmts += [".1%"] * len(conf.thresholds) + [".3f", ".2f"]
    headers += ["3D points", "B / point", "map descriptors (KiB)", "pairs", "matched pairs", "matching s"]
    fmts += [".0f", "d", ".0f", "s", "d", ".1f"]
    rows = []
    for name, a in aggregates.items():
        row: list[Any] = [name, f"{a['num_localized']}/{a['num_queries']}"]
        if gt:
            row += list(a["recall"].values())
            row += [a["median_position_error_all"], a["median_rotation_error_deg_all"]]
        kib = a.get("map_descriptor_bytes_mean")
        row += [
            a.get("map_num_points3D_mean"),
            a.get("descriptor_bytes_per_point"),
            kib / 1024 if kib is not None else None,
        ]
        ps = (pair_stats or {}).get(name, {})
        row += [
            ps.get("pairs"),
            ps.get("num_map_pairs", 0) + ps.get("num_query_pairs", 0) if ps else None,
            ps.get("matching_seconds"),
        ]
        rows.append(row)
    return markdown_table(headers, rows, fmts) + "\n"


def _plot(rows: Sequence[dict[str, Any]], methods: Sequence[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from zippy_eval.results import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for name in methods:
        mr = [r for r in rows if r["method"] == name]
        n = len(mr)
        for ax, key in zip(axes, ("position_error", "rotation_error_deg")):
            e = np.sort([r[key] for r in mr if r[key] is not None])
            if n and len(e):
                ax.step(np.concatenate([[0], e]), np.arange(len(e) + 1) / n, where="post", label=name)
    for ax, label in zip(axes, ("position error", "rotation error (deg)")):
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_xlabel(label)
        ax.set_ylabel("fraction of queries")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    return path


def run(conf: LocalizationConf, dataset: LocalizationDataset, output_dir: str | os.PathLike) -> Path:
    """Localize ``dataset`` with every method of ``conf``; returns the summary.json path.

    Writes ``output_dir/summary.json``, ``table.md``, ``errors.png`` (with ground truth) and, per
    method, ``output_dir/cache/<method tag>/`` with features.h5, matches.h5, pairs, maps, poses.txt
    (``name qw qx qy qz tx ty tz``) and failures.txt.

    Raises:
        ValueError: every method unavailable, or an impossible configuration for the dataset.
    """
    from zippy_eval.methods import methods_for_run
    from zippy_eval.results import write_summary, write_text

    output_dir = Path(output_dir)
    set_threads(conf.num_threads)
    problems = list(dataset.problems)
    rows: list[dict[str, Any]] = []
    aggregates: dict[str, dict[str, Any]] = {}
    infos: dict[str, dict[str, Any]] = {}
    maps: dict[str, list[dict[str, float]]] = {}
    timings: dict[str, float] = {}
    poses_files: dict[str, str] = {}
    pair_stats: dict[str, dict[str, Any]] = {}
    gt = dataset.query_gt is not None
    methods, skipped = methods_for_run(conf)
    for method in methods:
        infos[method.name] = method.info()
        work = output_dir / "cache" / method_tag(method, conf)
        out = run_method(method, conf, dataset, work, problems)
        mrows = _rows(method.name, out.results, dataset.query_gt)
        rows.extend(mrows)
        maps[method.name] = out.maps
        aggregates[method.name] = _aggregate(mrows, out.maps, conf, gt)
        timings[method.name] = out.seconds
        poses = work / pairs_tag(out.pairs["pairs"], conf) / "poses.txt"
        poses_files[method.name] = str(poses.relative_to(output_dir))
        pair_stats[method.name] = out.pairs
        logger.info("%s on %s: %s", method.name, dataset.name, aggregates[method.name].get("recall", ""))
    output_dir.mkdir(parents=True, exist_ok=True)
    write_text(output_dir / "table.md", _table(aggregates, conf, gt, pair_stats))
    extra: dict[str, Any] = {
        "skipped_methods": skipped,
        "problems": sorted(set(problems)),
        "maps": maps,
        "seconds": timings,
        "pairs": pair_stats,
        "poses": poses_files,
        "table": "table.md",
    }
    if gt:
        _plot(rows, list(infos), output_dir / "errors.png")
        extra["plots"] = ["errors.png"]
    return write_summary(
        output_dir,
        protocol=conf.protocol(),
        dataset=dataset.describe(),
        methods=infos,
        rows=rows,
        aggregates=aggregates,
        extra=extra,
    )
