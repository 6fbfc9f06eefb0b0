"""Localize query images against a map: 2D-3D correspondences through our matches, then
``pycolmap.estimate_and_refine_absolute_pose`` (LO-RANSAC P3P + non-linear refinement).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zippy_eval.localization import features_h5
from zippy_eval.localization.cameras import COLMAP_OFFSET, CameraSpec
from zippy_eval.localization.poses import Pose

__all__ = ["LocalizationResult", "LocalizeOptions", "correspondences_2d3d", "localize_queries", "write_failures"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalizeOptions:
    """Absolute pose options.

    Attributes:
        ransac_max_error: reprojection threshold in pixels (original image scale).
        min_inliers: a pose with fewer inliers counts as a failure.
        refine_focal_length: refine the query focal length (only for guessed intrinsics).
        seed: RANSAC seed.
    """

    ransac_max_error: float = 12.0
    min_inliers: int = 12
    refine_focal_length: bool = False
    seed: int = 0


@dataclass
class LocalizationResult:
    """Outcome for one query.

    Attributes:
        name: query image name.
        pose: estimated cam_from_world, None when the query failed.
        num_matches: 2D-3D correspondences found.
        num_inliers: RANSAC inliers (0 on failure).
        reason: why the query failed ("" on success).
        info: extras (db images matched, ...).
    """

    name: str
    pose: Pose | None
    num_matches: int = 0
    num_inliers: int = 0
    reason: str = ""
    info: dict[str, Any] = field(default_factory=dict)


def correspondences_2d3d(
    query: str,
    db_names: Sequence[str],
    rec: Any,
    matches_path: str | os.PathLike,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2D-3D correspondences of a query through its matches with map images.

    Args:
        query: query image name.
        db_names: map images matched with the query (pairs must be in ``matches_path``).
        rec: ``pycolmap.Reconstruction`` whose image keypoints are the features h5 keypoints.
        matches_path: matches h5.

    Returns:
        Query keypoint indices int64 [M], 3D points float64 [M,3], 3D point ids int64 [M]; a query
        keypoint matched to several 3D points appears several times (deduplicated per (kp, point)).
    """
    name_to_image = {im.name: im for im in rec.images.values() if im.has_pose}
    kp_idx: list[np.ndarray] = []
    pt_ids: list[np.ndarray] = []
    for name in db_names:
        image = name_to_image.get(name)
        if image is None:  # not registered in the map
            continue
        m, _ = features_h5.read_matches(matches_path, query, name)
        if not len(m):
            continue
        ids = np.array([p.point3D_id for p in image.points2D], np.uint64)
        if m[:, 1].max() >= len(ids):
            raise ValueError(
                f"matches of {query!r}-{name!r} index keypoint {m[:, 1].max()} but the map image has {len(ids)}: "
                "features and map are out of sync (rerun with --overwrite)"
            )
        found = ids[m[:, 1]]
        ok = found != np.uint64(_invalid_point3d_id())
        kp_idx.append(m[ok, 0])
        pt_ids.append(found[ok].astype(np.int64))
    if not kp_idx:
        return np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros(0, np.int64)
    pairs = np.unique(np.stack([np.concatenate(kp_idx), np.concatenate(pt_ids)], axis=1), axis=0)
    xyz = np.array([rec.points3D[int(i)].xyz for i in pairs[:, 1]], np.float64).reshape(-1, 3)
    return pairs[:, 0], xyz, pairs[:, 1]


def _invalid_point3d_id() -> int:
    import pycolmap

    return int(pycolmap.INVALID_POINT3D_ID)


def localize_queries(
    model_dir: str | os.PathLike,
    queries: Mapping[str, CameraSpec | None],
    query_pairs: Sequence[tuple[str, str]],
    features_path: str | os.PathLike,
    matches_path: str | os.PathLike,
    options: LocalizeOptions = LocalizeOptions(),
    progress: Callable[[int], None] | None = None,
) -> list[LocalizationResult]:
    """Localize each query; a query that cannot be localized gets a result with ``pose=None`` and a reason.

    Args:
        model_dir: COLMAP model built from the same features.
        queries: query name -> intrinsics (None: no intrinsics, the query fails with that reason).
        query_pairs: (query, map image) pairs matched in ``matches_path``.
        features_path: features h5 with the query keypoints.
        matches_path: matches h5.
        options: RANSAC options.
        progress: called with 1 after each query.
    """
    import pycolmap

    rec = pycolmap.Reconstruction(str(model_dir))
    by_query: dict[str, list[str]] = {}
    for q, d in query_pairs:
        by_query.setdefault(q, []).append(d)
    est = pycolmap.AbsolutePoseEstimationOptions()
    est.ransac.max_error = options.ransac_max_error
    est.ransac.random_seed = options.seed
    ref = pycolmap.AbsolutePoseRefinementOptions()
    ref.refine_focal_length = options.refine_focal_length
    ref.refine_extra_params = False
    results = []
    for name, spec in queries.items():
        results.append(
            _localize_one(name, spec, by_query.get(name, []), rec, features_path, matches_path, est, ref, options)
        )
        if progress is not None:
            progress(1)
    return results


def _localize_one(
    name: str,
    spec: CameraSpec | None,
    db_names: Sequence[str],
    rec: Any,
    features_path: str | os.PathLike,
    matches_path: str | os.PathLike,
    est: Any,
    ref: Any,
    options: LocalizeOptions,
) -> LocalizationResult:
    import pycolmap

    if spec is None:
        return LocalizationResult(name, None, reason="no intrinsics")
    if not db_names:
        return LocalizationResult(name, None, reason="no map image paired with the query")
    kp_idx, xyz, _ = correspondences_2d3d(name, db_names, rec, matches_path)
    n = len(kp_idx)
    if n < 4:
        return LocalizationResult(name, None, num_matches=n, reason=f"only {n} 2D-3D matches")
    kp = features_h5.read_features(features_path, name).keypoints.astype(np.float64)
    points2d = kp[kp_idx] + COLMAP_OFFSET
    ret = pycolmap.estimate_and_refine_absolute_pose(points2d, xyz, spec.to_pycolmap(), est, ref)
    if ret is None:
        return LocalizationResult(name, None, num_matches=n, reason="absolute pose RANSAC failed")
    inliers = int(ret["num_inliers"])
    if inliers < options.min_inliers:
        return LocalizationResult(
            name, None, num_matches=n, num_inliers=inliers, reason=f"{inliers} inliers < {options.min_inliers}"
        )
    return LocalizationResult(name, Pose.from_rigid3d(ret["cam_from_world"]), num_matches=n, num_inliers=inliers)


def write_failures(results: Sequence[LocalizationResult], path: str | os.PathLike) -> Path:
    """Write ``name reason`` lines of the failed queries (atomic)."""
    from zippy_eval.results import write_text

    return write_text(path, "".join(f"{r.name}\t{r.reason}\n" for r in results if r.pose is None))
