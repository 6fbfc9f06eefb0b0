"""Localization datasets: the hloc / Aachen layout, Sceaux castle (leave-one-out), Sacre Coeur, synthetic.

hloc / Aachen layout (what :func:`load_hloc` reads)::

    root/images/...                                   every image; names are paths relative to images/
    root/queries/<split>_queries_with_intrinsics.txt  one query per line: name MODEL w h params...
                                                      e.g. "query/q1.jpg SIMPLE_RADIAL 1600 1200 1469 800 600 -0.03"
    root/queries/<split>_queries_poses.txt            optional ground truth: name qw qx qy qz tx ty tz (cam_from_world)
    root/3D-models/<model>/{cameras,images}.{bin,txt} optional COLMAP model of the database images (known poses:
                                                      the map is triangulated; without it, full SfM)
    root/database_with_intrinsics.txt                 optional, same line format, database intrinsics when
                                                      there is no model

Database images are those of the model, or else every image under images/ that is not a query.
Intrinsics follow COLMAP's pixel convention (centre of a w-pixel image at w / 2).

Sceaux castle (``images/*.JPG`` + ``images/K.txt``): no poses ship, so a reference SfM is built with
COLMAP's own SIFT (:func:`reference_sfm`) and cached; it is the pseudo ground truth of a
leave-one-out protocol where each image is localized against a map of the other ten. Its scale is
arbitrary: the reference is rescaled so that the median distance from a camera to the 3D points it
sees is 30 "metres" (the photos are taken a few tens of metres from the facade); this convention is
recorded in the results, and errors are also given relative to that depth.

Sacre Coeur (``mapping/*.jpg`` + ``query/*.jpg``): no intrinsics, no poses. A demo: intrinsics
guessed from EXIF or 1.2 x the larger side (COLMAP's default) and refined, map by SfM, poses written,
no recall.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zippy_eval.localization.cameras import CameraSpec, parse_intrinsics_line
from zippy_eval.localization.poses import Pose, read_poses

__all__ = [
    "IMAGE_SUFFIXES",
    "SCEAUX_DEPTH_M",
    "LocalizationDataset",
    "load_dataset",
    "load_hloc",
    "load_sacre_coeur",
    "load_sceaux",
    "reference_sfm",
    "shared_data_dir",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff")
SCEAUX_DEPTH_M = 30.0  # assumed median camera-to-point distance of the Sceaux reference (sets its scale)
HLOC_LAYOUT_HELP = (
    "expected the hloc / Aachen layout: <root>/images/ and <root>/queries/*_queries_with_intrinsics.txt "
    "(+ optional <root>/3D-models/<model>/ and <root>/queries/*_queries_poses.txt)"
)


@dataclass
class LocalizationDataset:
    """What the pipeline needs to build a map and localize queries.

    Attributes:
        name: short name for result folders.
        image_dir: root of the image names.
        db_names: map images (for leave-one-out: every image).
        query_names: query images (for leave-one-out: every image).
        cameras: intrinsics by image name; an image missing here has no intrinsics.
        db_poses: known cam_from_world of map images (map by triangulation), or None (map by SfM).
        query_gt: ground-truth cam_from_world of queries, or None (no evaluation).
        leave_one_out: each query is localized against a map of all the other images.
        guessed_intrinsics: intrinsics are guesses (EXIF / default focal) and get refined.
        notes: protocol notes recorded with the results (scale conventions, ...).
        problems: input problems found while loading (skipped images, bad lines), also recorded.
    """

    name: str
    image_dir: Path
    db_names: list[str]
    query_names: list[str]
    cameras: dict[str, CameraSpec]
    db_poses: dict[str, Pose] | None = None
    query_gt: dict[str, Pose] | None = None
    leave_one_out: bool = False
    guessed_intrinsics: bool = False
    notes: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, object]:
        """A JSON-able description for summary.json."""
        return {
            "name": self.name,
            "image_dir": str(self.image_dir),
            "num_db": len(self.db_names),
            "num_query": len(self.query_names),
            "known_db_poses": self.db_poses is not None,
            "ground_truth": self.query_gt is not None,
            "leave_one_out": self.leave_one_out,
            "guessed_intrinsics": self.guessed_intrinsics,
            "notes": dict(self.notes),
            "problems": list(self.problems),
        }


def shared_data_dir() -> Path:
    """``../shared/data`` beside the repository."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _list_images(root: Path) -> list[str]:
    return sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _read_intrinsics_file(path: Path, problems: list[str]) -> tuple[dict[str, CameraSpec], list[str]]:
    """Intrinsics by name, and the names of lines whose intrinsics could not be read (reported in ``problems``)."""
    out: dict[str, CameraSpec] = {}
    bad: list[str] = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            name, spec = parse_intrinsics_line(line)
        except ValueError as e:
            problems.append(f"{path.name}:{i}: {e} (no intrinsics: the image counts as a failure)")
            bad.append(line.split()[0])
            continue
        out[name] = spec
    return out, bad


def _find_model(root: Path) -> Path | None:
    models = root / "3D-models"
    if not models.is_dir():
        return None
    found = sorted({p.parent for p in models.rglob("images.bin")} | {p.parent for p in models.rglob("images.txt")})
    if len(found) > 1:
        logger.warning("several COLMAP models under %s, using %s", models, found[0])
    return found[0] if found else None


def load_hloc(root: str | os.PathLike, name: str | None = None) -> LocalizationDataset:
    """Read a dataset in the hloc / Aachen layout (see the module docstring).

    Images without intrinsics, unreadable lines and listed images that do not exist are reported in
    ``problems`` (and logged); such queries stay in the list and count as failures.

    Raises:
        ValueError: the folder is not in that layout (the message says what is expected).
    """
    import pycolmap

    root = Path(root)
    image_dir = root / "images"
    query_lists = (
        sorted((root / "queries").glob("*_queries_with_intrinsics.txt")) if (root / "queries").is_dir() else []
    )
    if not image_dir.is_dir() or not query_lists:
        raise ValueError(f"{root}: {HLOC_LAYOUT_HELP}")
    problems: list[str] = []
    on_disk = set(_list_images(image_dir))
    cameras: dict[str, CameraSpec] = {}
    query_names: list[str] = []
    for ql in query_lists:
        listed, bad = _read_intrinsics_file(ql, problems)
        cameras.update(listed)
        query_names.extend([*listed, *bad])
    for q in [q for q in query_names if q not in on_disk]:
        problems.append(f"query {q} is listed but not found under {image_dir} (counted as a failure)")
    gt: dict[str, Pose] | None = None
    for gp in sorted((root / "queries").glob("*_queries_poses.txt")):
        gt = {**(gt or {}), **read_poses(gp)}

    model = _find_model(root)
    db_poses: dict[str, Pose] | None = None
    if model is not None:
        rec = pycolmap.Reconstruction(str(model))
        db_poses = {}
        for im in rec.images.values():
            if not im.has_pose:
                continue
            db_poses[im.name] = Pose.from_rigid3d(im.cam_from_world())
            cameras.setdefault(im.name, CameraSpec.from_pycolmap(rec.cameras[im.camera_id]))
        db_names = sorted(db_poses)
        missing = [n for n in db_names if n not in on_disk]
        if missing:
            problems.append(f"{len(missing)} model image(s) not under images/, e.g. {missing[:3]} (skipped)")
            db_names = [n for n in db_names if n in on_disk]
            db_poses = {n: db_poses[n] for n in db_names}
    else:
        qset = set(query_names)
        db_names = sorted(on_disk - qset)
        db_file = root / "database_with_intrinsics.txt"
        if db_file.is_file():
            cameras.update(_read_intrinsics_file(db_file, problems)[0])
        no_k = [n for n in db_names if n not in cameras]
        if no_k:
            problems.append(f"{len(no_k)} database image(s) without intrinsics, e.g. {no_k[:3]} (left out of the map)")
            db_names = [n for n in db_names if n in cameras]
    for p in problems:
        logger.warning("%s: %s", root.name, p)
    if len(db_names) < 2:
        raise ValueError(f"{root}: need at least 2 database images with intrinsics, found {len(db_names)}")
    return LocalizationDataset(
        name or root.name, image_dir, db_names, sorted(set(query_names)), cameras, db_poses, gt, problems=problems
    )


def _read_K(path: Path) -> np.ndarray:
    try:
        K = np.loadtxt(path, dtype=np.float64)
    except ValueError as e:
        raise ValueError(f"{path}: expected a 3x3 matrix of numbers") from e
    if K.shape != (3, 3):
        raise ValueError(f"{path}: expected a 3x3 matrix, got shape {K.shape}")
    return K


def _image_size(path: Path) -> tuple[int, int]:
    import pycolmap

    cam = pycolmap.infer_camera_from_image(str(path))
    return int(cam.width), int(cam.height)


def reference_sfm(
    image_dir: str | os.PathLike,
    names: list[str],
    camera: CameraSpec,
    cache_dir: str | os.PathLike,
    *,
    max_image_size: int = 1600,
    num_threads: int = 1,
    overwrite: bool = False,
) -> Path:
    """COLMAP's own SIFT pipeline (extract, exhaustive match, incremental mapping) with fixed intrinsics.

    The result (largest model, binary) is cached in ``cache_dir/model`` and reused unless ``overwrite``.

    Returns:
        The model folder.

    Raises:
        ValueError: COLMAP could not reconstruct the images.
    """
    import pycolmap

    from zippy_eval.localization.mapping import colmap_quiet

    cache_dir = Path(cache_dir)
    model = cache_dir / "model"
    if (model / "images.bin").is_file() and not overwrite:
        return model
    cache_dir.mkdir(parents=True, exist_ok=True)
    database = cache_dir / "database.db"
    if database.exists():
        database.unlink()
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = camera.model
    reader.camera_params = ",".join(f"{v:.6f}" for v in camera.params)
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.max_image_size = max_image_size
    extraction.num_threads = num_threads
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = num_threads
    opts = pycolmap.IncrementalPipelineOptions()
    opts.num_threads = num_threads
    opts.mapper.num_threads = num_threads
    opts.random_seed = 0
    opts.ba_refine_focal_length = False
    opts.ba_refine_extra_params = False
    opts.mapper.abs_pose_refine_focal_length = False
    opts.mapper.abs_pose_refine_extra_params = False
    logger.info("reference SfM (COLMAP SIFT, max side %d) of %d images in %s", max_image_size, len(names), cache_dir)
    with colmap_quiet():
        pycolmap.set_random_seed(0)
        pycolmap.extract_features(
            str(database),
            str(image_dir),
            image_names=names,
            camera_mode=pycolmap.CameraMode.SINGLE,
            reader_options=reader,
            extraction_options=extraction,
            device=pycolmap.Device.cpu,
        )
        pycolmap.match_exhaustive(str(database), matching_options=matching, device=pycolmap.Device.cpu)
        models = cache_dir / "models"
        models.mkdir(exist_ok=True)
        recs = pycolmap.incremental_mapping(str(database), str(image_dir), str(models), options=opts)
    if not recs:
        raise ValueError(f"COLMAP could not reconstruct {image_dir}")
    best = max(recs.values(), key=lambda r: r.num_reg_images())
    model.mkdir(parents=True, exist_ok=True)
    best.write_binary(str(model))
    logger.info("reference SfM: %s", best.summary())
    return model


def median_point_depth(rec: object) -> float:
    """Median over registered images of the median depth of the 3D points each image observes."""
    depths = []
    for im in rec.images.values():  # type: ignore[attr-defined]
        if not im.has_pose:
            continue
        R, t = (np.asarray(im.cam_from_world().matrix())[:, :3], np.asarray(im.cam_from_world().matrix())[:, 3])
        xyz = [rec.points3D[p.point3D_id].xyz for p in im.points2D if p.has_point3D()]  # type: ignore[attr-defined]
        if xyz:
            depths.append(float(np.median((np.asarray(xyz) @ R.T + t)[:, 2])))
    if not depths:
        raise ValueError("the reference model has no observed 3D points")
    return float(np.median(depths))


def load_sceaux(
    root: str | os.PathLike, cache_dir: str | os.PathLike, *, num_threads: int = 1, overwrite: bool = False
) -> LocalizationDataset:
    """Sceaux castle: ``root/images/*.JPG`` + ``root/images/K.txt``; leave-one-out against the SIFT reference.

    Args:
        root: the sceaux_castle folder.
        cache_dir: where the reference SfM is built / cached (outside the repository).
        num_threads: COLMAP threads for the reference.
        overwrite: rebuild the reference.
    """
    import pycolmap

    root = Path(root)
    image_dir = root / "images"
    k_file = image_dir / "K.txt"
    if not k_file.is_file():
        raise ValueError(f"{root}: expected images/*.JPG and images/K.txt (the Sceaux castle layout)")
    names = _list_images(image_dir)
    if len(names) < 3:
        raise ValueError(f"{image_dir}: need at least 3 images for leave-one-out, found {len(names)}")
    K = _read_K(k_file)
    w, h = _image_size(image_dir / names[0])
    # K.txt puts the principal point at (w/2, h/2): COLMAP's convention already
    spec = CameraSpec.pinhole(K, w, h)
    model = reference_sfm(image_dir, names, spec, cache_dir, num_threads=num_threads, overwrite=overwrite)
    rec = pycolmap.Reconstruction(str(model))
    scale = SCEAUX_DEPTH_M / median_point_depth(rec)
    poses = {}
    for im in rec.images.values():
        if im.has_pose:
            p = Pose.from_rigid3d(im.cam_from_world())
            poses[im.name] = Pose(p.R, p.t * scale)
    problems = []
    unregistered = sorted(set(names) - set(poses))
    if unregistered:
        problems.append(f"reference SfM did not register {unregistered}: they have no ground truth (skipped)")
    names = sorted(poses)
    notes = {
        "reference": f"COLMAP SIFT SfM (pycolmap {pycolmap.__version__}), intrinsics fixed to K.txt, cached in {model}",
        "scale": f"reference scaled so that the median camera-to-point depth is {SCEAUX_DEPTH_M:g} m (assumed)",
        "protocol": "leave-one-out: each image localized against an SfM map of the other images built from the "
        "method's features, map aligned to the reference by a similarity from the map cameras' centres",
    }
    return LocalizationDataset(
        "sceaux_castle",
        image_dir,
        names,
        names,
        dict.fromkeys(names, spec),
        db_poses=poses,
        query_gt=poses,
        leave_one_out=True,
        notes=notes,
        problems=problems,
    )


def load_sacre_coeur(root: str | os.PathLike) -> LocalizationDataset:
    """Sacre Coeur demo: ``root/mapping/*.jpg`` (map by SfM) and ``root/query/*.jpg``; guessed intrinsics, no poses."""
    import pycolmap

    root = Path(root)
    if not (root / "mapping").is_dir() or not (root / "query").is_dir():
        raise ValueError(f"{root}: expected mapping/ and query/ folders of images (the Sacre Coeur demo layout)")
    names = _list_images(root)
    db = [n for n in names if n.startswith("mapping/")]
    queries = [n for n in names if n.startswith("query/")]
    cameras = {}
    for n in names:
        cameras[n] = CameraSpec.from_pycolmap(pycolmap.infer_camera_from_image(str(root / n)))
    notes = {"intrinsics": "guessed by COLMAP (EXIF focal or 1.2 x larger side), refined in SfM and localization"}
    return LocalizationDataset("sacre_coeur", root, db, queries, cameras, guessed_intrinsics=True, notes=notes)


def load_dataset(spec: str | os.PathLike, cache_dir: str | os.PathLike, *, num_threads: int = 1) -> LocalizationDataset:
    """A dataset by name ("synthetic", "sceaux_castle", "sacre_coeur") or by folder (layout detected).

    Args:
        spec: name or path.
        cache_dir: folder for generated data (synthetic scene, Sceaux reference SfM).
        num_threads: COLMAP threads for the Sceaux reference.

    Raises:
        ValueError: unknown name, or a folder in none of the known layouts.
        FileNotFoundError: a named shared dataset is absent.
    """
    cache_dir = Path(cache_dir)
    key = str(spec)
    if key == "synthetic":
        from zippy_eval.localization.synthetic import write_dataset

        root = cache_dir / "synthetic"
        if not (root / "queries" / "synthetic_queries_with_intrinsics.txt").is_file():
            write_dataset(root)
        return load_hloc(root, name="synthetic")
    if key in ("sceaux_castle", "sacre_coeur"):
        path = shared_data_dir() / "localization" / key
        if not path.is_dir():
            raise FileNotFoundError(f"shared dataset {key} not found at {path}")
    else:
        path = Path(spec)
        if not path.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {path}")
    if (path / "images" / "K.txt").is_file():
        return load_sceaux(path, cache_dir / "sceaux_reference", num_threads=num_threads)
    if (path / "mapping").is_dir() and (path / "query").is_dir():
        return load_sacre_coeur(path)
    if (path / "images").is_dir() and (path / "queries").is_dir():
        return load_hloc(path)
    raise ValueError(
        f"{path}: unknown dataset layout; {HLOC_LAYOUT_HELP}; or images/*.JPG + images/K.txt (Sceaux); "
        "or mapping/ + query/ (Sacre Coeur)"
    )
