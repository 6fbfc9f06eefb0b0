"""Build a 3D map from our keypoints and matches with pycolmap.

Two ways, both from a COLMAP database that holds our keypoints (+0.5: COLMAP's pixel centres) and
our matches, geometrically verified by COLMAP (:func:`verify_database`):

* :func:`triangulate`: known camera poses (a reference model), points triangulated with
  ``pycolmap.triangulate_points`` (poses and intrinsics kept fixed).
* :func:`reconstruct`: full SfM with ``pycolmap.incremental_mapping``; the largest model is kept.

Both return the folder of the written COLMAP model (binary). Keypoint indices in the database, and
hence ``point2D_idx`` in the model, are the indices of the keypoints in the features h5 file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zippy_eval.localization import features_h5
from zippy_eval.localization.cameras import COLMAP_OFFSET, CameraSpec
from zippy_eval.localization.poses import Pose

__all__ = [
    "MappingOptions",
    "build_database",
    "colmap_quiet",
    "copy_verified",
    "map_stats",
    "reconstruct",
    "triangulate",
    "verify_database",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MappingOptions:
    """Options of map building.

    Attributes:
        num_threads: threads pycolmap may use (1 or 2 on a shared machine).
        ransac_max_error: two-view geometric verification threshold in pixels (original image scale).
        min_num_inliers: verified pairs need at least this many inliers.
        refine_intrinsics: SfM may refine focal length and distortion (False when intrinsics are known).
        min_model_size: SfM models with fewer registered images are discarded.
        seed: pycolmap random seed (reproducible RANSAC).
        verbose: let COLMAP's own log through.
    """

    num_threads: int = 1
    ransac_max_error: float = 4.0
    min_num_inliers: int = 15
    refine_intrinsics: bool = False
    min_model_size: int = 3
    seed: int = 0
    verbose: bool = False


@contextlib.contextmanager
def colmap_quiet(verbose: bool = False) -> Iterator[None]:
    """Silence COLMAP's INFO log (glog) inside the block unless ``verbose``."""
    import pycolmap

    if verbose:
        yield
        return
    old = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = 1
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = old


def build_database(
    database_path: str | os.PathLike,
    names: Sequence[str],
    cameras: Mapping[str, CameraSpec],
    features_path: str | os.PathLike,
    pairs: Sequence[tuple[str, str]],
    matches_path: str | os.PathLike,
) -> dict[str, int]:
    """Write a fresh COLMAP database: cameras (identical intrinsics shared), trivial rigs, frames, images,
    keypoints and raw matches of ``pairs`` whose both images are in ``names``.

    Args:
        database_path: the .db file (replaced if it exists).
        names: images of the map.
        cameras: intrinsics of every image in ``names``.
        features_path: features h5 holding every image of ``names``.
        pairs: image pairs whose matches go in.
        matches_path: matches h5 holding ``pairs``.

    Returns:
        image name -> database image id.

    Raises:
        ValueError: an image without intrinsics.
        KeyError: features or matches missing from the h5 files.
    """
    import pycolmap

    database_path = Path(database_path)
    missing = [n for n in names if n not in cameras]
    if missing:
        raise ValueError(f"no intrinsics for {len(missing)} map image(s), e.g. {missing[:3]}")
    database_path.parent.mkdir(parents=True, exist_ok=True)
    if database_path.exists():
        database_path.unlink()
    db = pycolmap.Database.open(str(database_path))
    try:
        spec_ids: dict[CameraSpec, tuple[int, object]] = {}
        image_ids: dict[str, int] = {}
        for name in names:
            spec = cameras[name]
            if spec not in spec_ids:
                camera = spec.to_pycolmap()
                camera.has_prior_focal_length = True  # type: ignore[attr-defined]
                camera_id = db.write_camera(camera)
                camera.camera_id = camera_id  # type: ignore[attr-defined]
                rig = pycolmap.Rig()
                rig.add_ref_sensor(camera.sensor_id)  # type: ignore[attr-defined]
                rig_id = db.write_rig(rig)
                if rig_id != camera_id:  # add_camera_with_trivial_rig in triangulate() relies on it
                    raise RuntimeError(f"database rig id {rig_id} != camera id {camera_id}")
                spec_ids[spec] = (camera_id, camera)
            camera_id, camera = spec_ids[spec]
            image_id = db.write_image(pycolmap.Image(name=name, camera_id=camera_id))
            frame = pycolmap.Frame()
            frame.rig_id = camera_id
            frame.add_data_id(pycolmap.data_t(camera.sensor_id, image_id))  # type: ignore[attr-defined]
            db.write_frame(frame)
            kp = features_h5.read_features(features_path, name).keypoints.astype(np.float32)
            db.write_keypoints(image_id, kp + COLMAP_OFFSET)
            image_ids[name] = image_id
        written: set[tuple[int, int]] = set()
        for a, b in pairs:
            if a not in image_ids or b not in image_ids or a == b:
                continue
            ia, ib = image_ids[a], image_ids[b]
            if (ia, ib) in written or (ib, ia) in written:
                continue
            m, _ = features_h5.read_matches(matches_path, a, b)
            if len(m):
                db.write_matches(ia, ib, m.astype(np.uint32))
            written.add((ia, ib))
    finally:
        db.close()
    return image_ids


def verify_database(database_path: str | os.PathLike, options: MappingOptions) -> int:
    """Geometric verification of every matched pair in the database by COLMAP. Returns the verified pairs."""
    import pycolmap

    tvg = pycolmap.TwoViewGeometryOptions()
    tvg.min_num_inliers = options.min_num_inliers
    tvg.ransac.max_error = options.ransac_max_error
    tvg.ransac.random_seed = options.seed
    tvg.ransac.num_threads = 1
    verifier = pycolmap.GeometricVerifierOptions()
    verifier.num_threads = options.num_threads
    with colmap_quiet(options.verbose):
        pycolmap.geometric_verification(str(database_path), verifier_options=verifier, two_view_geometry_options=tvg)
    db = pycolmap.Database.open(str(database_path))
    try:
        return int(db.num_verified_image_pairs())
    finally:
        db.close()


def copy_verified(src_database: str | os.PathLike, dst_database: str | os.PathLike) -> int:
    """Copy two-view geometries (verified inliers) from ``src`` to ``dst`` for the image pairs both hold,
    matching images by name. Saves re-running geometric verification on subsets (leave-one-out folds).

    Returns:
        The number of pairs copied.
    """
    import pycolmap

    src = pycolmap.Database.open(str(src_database))
    dst = pycolmap.Database.open(str(dst_database))
    try:
        src_ids = {im.name: im.image_id for im in src.read_all_images()}
        dst_images = sorted(dst.read_all_images(), key=lambda im: im.image_id)
        n = 0
        for i, a in enumerate(dst_images):
            for b in dst_images[i + 1 :]:
                if a.name not in src_ids or b.name not in src_ids:
                    continue
                sa, sb = src_ids[a.name], src_ids[b.name]
                if not src.exists_two_view_geometry(sa, sb):
                    continue
                dst.write_two_view_geometry(a.image_id, b.image_id, src.read_two_view_geometry(sa, sb))
                n += 1
    finally:
        src.close()
        dst.close()
    return n


def _pipeline_options(options: MappingOptions) -> object:
    import pycolmap

    opts = pycolmap.IncrementalPipelineOptions()
    opts.num_threads = options.num_threads
    opts.random_seed = options.seed
    opts.min_model_size = options.min_model_size
    opts.extract_colors = False
    # the structure-less fallback spends minutes on an image that cannot register: it stays unregistered
    opts.structure_less_registration_fallback = False
    opts.mapper.num_threads = options.num_threads
    opts.mapper.random_seed = options.seed
    opts.triangulation.random_seed = options.seed
    refine = options.refine_intrinsics
    opts.ba_refine_focal_length = refine
    opts.ba_refine_extra_params = refine
    opts.mapper.abs_pose_refine_focal_length = refine
    opts.mapper.abs_pose_refine_extra_params = refine
    return opts


def _prepare(
    output_dir: Path,
    names: Sequence[str],
    cameras: Mapping[str, CameraSpec],
    features_path: str | os.PathLike,
    pairs: Sequence[tuple[str, str]],
    matches_path: str | os.PathLike,
    options: MappingOptions,
    verified_db: str | os.PathLike | None = None,
) -> tuple[Path, dict[str, int]]:
    import pycolmap

    pycolmap.set_random_seed(options.seed)
    database = output_dir / "database.db"
    image_ids = build_database(database, names, cameras, features_path, pairs, matches_path)
    if verified_db is not None:
        num_verified = copy_verified(verified_db, database)
    else:
        num_verified = verify_database(database, options)
    logger.info("map database: %d images, %d verified pairs", len(image_ids), num_verified)
    return database, image_ids


def triangulate(
    output_dir: str | os.PathLike,
    image_dir: str | os.PathLike,
    poses: Mapping[str, Pose],
    cameras: Mapping[str, CameraSpec],
    features_path: str | os.PathLike,
    pairs: Sequence[tuple[str, str]],
    matches_path: str | os.PathLike,
    options: MappingOptions = MappingOptions(),
    verified_db: str | os.PathLike | None = None,
) -> Path:
    """Triangulate our matches from known poses.

    Args:
        output_dir: work folder; the model goes to ``output_dir/model``.
        image_dir: image root (COLMAP reads nothing from it here, but its API wants it).
        poses: cam_from_world of every map image.
        cameras: intrinsics of every map image.
        features_path, pairs, matches_path: our features and matches.
        options: mapping options.
        verified_db: a database already verified on a superset of the images (its two-view
            geometries are copied instead of verifying again).

    Returns:
        The model folder.
    """
    import pycolmap

    output_dir = Path(output_dir)
    names = sorted(poses)
    if len(names) < 2:
        raise ValueError(f"triangulation needs at least 2 images with poses, got {len(names)}")
    database, image_ids = _prepare(output_dir, names, cameras, features_path, pairs, matches_path, options, verified_db)
    rec = pycolmap.Reconstruction()
    camera_ids: dict[CameraSpec, int] = {}
    for name in names:
        spec = cameras[name]
        if spec not in camera_ids:
            camera_ids[spec] = len(camera_ids) + 1  # same order as build_database
            rec.add_camera_with_trivial_rig(spec.to_pycolmap(camera_ids[spec]))
        image = pycolmap.Image(name=name, camera_id=camera_ids[spec], image_id=image_ids[name])
        rec.add_image_with_trivial_frame(image, poses[name].to_rigid3d())
    model = output_dir / "model"
    model.mkdir(parents=True, exist_ok=True)
    with colmap_quiet(options.verbose):
        out = pycolmap.triangulate_points(
            rec, str(database), str(image_dir), str(model), options=_pipeline_options(options)
        )
    out.write_binary(str(model))
    logger.info("triangulated map: %s", map_stats(out))
    return model


def reconstruct(
    output_dir: str | os.PathLike,
    image_dir: str | os.PathLike,
    names: Sequence[str],
    cameras: Mapping[str, CameraSpec],
    features_path: str | os.PathLike,
    pairs: Sequence[tuple[str, str]],
    matches_path: str | os.PathLike,
    options: MappingOptions = MappingOptions(),
    verified_db: str | os.PathLike | None = None,
) -> Path | None:
    """Incremental SfM from our features; the model with most registered images goes to ``output_dir/model``.

    Arguments as :func:`triangulate`, with ``names`` the map images (no poses needed).

    Returns:
        The model folder, or None when COLMAP reconstructed nothing (logged with the reason).
    """
    import pycolmap

    output_dir = Path(output_dir)
    if len(names) < 2:
        raise ValueError(f"SfM needs at least 2 images, got {len(names)}")
    database, _ = _prepare(output_dir, names, cameras, features_path, pairs, matches_path, options, verified_db)
    models = output_dir / "models"
    if models.exists():
        shutil.rmtree(models)
    models.mkdir(parents=True)
    with colmap_quiet(options.verbose):
        recs = pycolmap.incremental_mapping(
            str(database), str(image_dir), str(models), options=_pipeline_options(options)
        )
    if not recs:
        logger.warning("SfM reconstructed no model from %d images (too few verified matches?)", len(names))
        return None
    best = max(recs.values(), key=lambda r: r.num_reg_images())
    model = output_dir / "model"
    model.mkdir(parents=True, exist_ok=True)
    best.write_binary(str(model))
    logger.info("SfM map (%d model(s), largest kept): %s", len(recs), map_stats(best))
    return model


def map_stats(rec: object, descriptor_bytes: int | None = None) -> dict[str, float]:
    """Size statistics of a ``pycolmap.Reconstruction``.

    Args:
        rec: the map.
        descriptor_bytes: bytes of one descriptor (32 for 256-bit binary, 4 x D for float32 [D]); when
            given, adds the bytes needed to keep one descriptor per observation and per 3D point.
    """
    n_points = int(rec.num_points3D())  # type: ignore[attr-defined]
    n_obs = int(sum(p.track.length() for p in rec.points3D.values()))  # type: ignore[attr-defined]
    stats: dict[str, float] = {
        "num_reg_images": int(rec.num_reg_images()),  # type: ignore[attr-defined]
        "num_points3D": n_points,
        "num_observations": n_obs,
        "mean_track_length": n_obs / n_points if n_points else 0.0,
        "mean_reprojection_error": float(rec.compute_mean_reprojection_error()) if n_points else float("nan"),  # type: ignore[attr-defined]
    }
    if descriptor_bytes is not None:
        stats["descriptor_bytes_per_point"] = int(descriptor_bytes)
        stats["descriptor_bytes_all_points"] = int(descriptor_bytes) * n_points
        stats["descriptor_bytes_all_observations"] = int(descriptor_bytes) * n_obs
    return stats
