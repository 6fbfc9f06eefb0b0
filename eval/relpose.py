"""Relative pose evaluation (map-free style) on ScanNet pairs: match, essential matrix, pose AUC.

Dataset: ``scannet_pairs/images/*.jpg`` and ``scannet_sample_pairs_with_gt.txt``, one pair per line::

    name0 name1 rot0 rot1 K0(9 values) K1(9 values) T_0to1(16 values, row-major 4x4)

(SuperGlue's format: ``T_0to1`` maps points of camera 0 to camera 1, X1 = R X0 + t; rot0/rot1 are
EXIF-like quarter turns, which must be 0 here.) K is given for the original image resolution.

Protocol: features extracted on the image resized to ``resize_max`` (larger side), keypoints mapped
back to original pixels; mutual nearest-neighbour matching (Hamming / L2); relative pose by
LO-RANSAC on the essential matrix with pycolmap (``estimate_relative_pose`` + ``refine_relative_pose``)
or OpenCV (``findEssentialMat`` + ``recoverPose``), threshold ``ransac_px`` resized pixels. Pose error =
max(angle of R_est R_gt^T, angle between t_est and t_gt) (translation known up to scale; the sign
ambiguity is folded: min(e, 180 - e)); a failed estimate has an infinite error. AUC of the recall
curve at 5 / 10 / 20 degrees over all pairs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zippy.config import ExtractorConfig

__all__ = [
    "RelPoseConf",
    "RelPosePair",
    "angle_error_rotation",
    "angle_error_translation",
    "estimate_pose",
    "load_pairs",
    "pose_auc",
    "run",
]

logger = logging.getLogger(__name__)

AUC_THRESHOLDS = (5.0, 10.0, 20.0)
RANSAC_MAX_TRIALS = 10_000  # pycolmap's default (100k) takes ~10 s per pair at 10% inliers
PAIRS_FILE = "scannet_sample_pairs_with_gt.txt"


@dataclass(frozen=True)
class RelPosePair:
    """One evaluation pair.

    Attributes:
        name0, name1: image names relative to the image folder.
        K0, K1: float64 [3,3] intrinsics (pixel centres at integers).
        T_0to1: float64 [4,4] ground truth, X1 = R X0 + t.
    """

    name0: str
    name1: str
    K0: np.ndarray
    K1: np.ndarray
    T_0to1: np.ndarray


@dataclass(frozen=True)
class RelPoseConf:
    """Configuration of a relative pose run.

    Attributes:
        methods: feature methods (``zippy_eval.methods``).
        max_keypoints: keypoint budget per image.
        resize_max: larger side of the image given to the extractor (0: original size).
        estimator: "pycolmap" or "opencv".
        ransac_px: RANSAC threshold in resized pixels.
        weights: method name -> weights file.
        extractor: options of the zippy methods (:class:`zippy.ExtractorConfig`: engine, scales, shifts,
            nms_radius; its name and weights are each method's own); other methods ignore them.
        num_threads: OpenCV / torch threads.
        seed: RANSAC seed.
        overwrite: recompute cached features.
    """

    methods: tuple[str, ...] = ("zippypoint", "orb", "sift", "aliked")
    max_keypoints: int = 1024
    resize_max: int = 640
    estimator: str = "pycolmap"
    ransac_px: float = 1.0
    weights: dict[str, str | None] = field(default_factory=dict)
    extractor: ExtractorConfig = field(default_factory=ExtractorConfig)
    num_threads: int = 1
    seed: int = 0
    overwrite: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.methods, str) or not self.methods:
            raise ValueError(f"methods must be a non-empty sequence of names, got {self.methods!r}")
        if self.estimator not in ("pycolmap", "opencv"):
            raise ValueError(f"estimator must be 'pycolmap' or 'opencv', got {self.estimator!r}")
        if self.ransac_px <= 0 or self.max_keypoints <= 0:
            raise ValueError(
                f"ransac_px and max_keypoints must be positive, got {self.ransac_px}, {self.max_keypoints}"
            )

    def protocol(self) -> dict[str, Any]:
        """What determines the numbers, for summary.json."""
        d = asdict(self)
        d.update(self.extractor.options())  # engine, scales, shifts, nms_radius at the top level
        d.pop("overwrite")
        d.pop("extractor")
        d["matcher"] = "mutual nearest neighbour (Hamming for binary, L2 for float), zippy.matching"
        d["pose_error"] = "max(rotation angle, translation direction angle), translation sign folded"
        d["auc_thresholds_deg"] = list(AUC_THRESHOLDS)
        d["ransac"] = {"max_num_trials": RANSAC_MAX_TRIALS, "opencv_prob": 0.99999}
        return d


def load_pairs(root: str | os.PathLike) -> tuple[Path, list[RelPosePair], list[str]]:
    """Read the ScanNet pairs folder.

    Returns:
        image folder, pairs, problems (bad lines, missing images; each logged and skipped).

    Raises:
        ValueError: the folder is not in the expected layout.
    """
    root = Path(root)
    pairs_file, image_dir = root / PAIRS_FILE, root / "images"
    if not pairs_file.is_file() or not image_dir.is_dir():
        raise ValueError(f"{root}: expected images/ and {PAIRS_FILE} (SuperGlue's ScanNet sample layout)")
    pairs, problems = [], []
    for i, line in enumerate(pairs_file.read_text().splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        where = f"{pairs_file.name}:{i}"
        if len(fields) != 38:
            problems.append(f"{where}: expected 38 fields (names, rotations, K0, K1, T_0to1), got {len(fields)}")
            continue
        try:
            values = np.array([float(v) for v in fields[2:]])
        except ValueError:
            problems.append(f"{where}: non-numeric values")
            continue
        if values[0] != 0 or values[1] != 0:
            problems.append(f"{where}: rotated images (rot0/rot1 != 0) are not supported")
            continue
        missing = [n for n in fields[:2] if not (image_dir / n).is_file()]
        if missing:
            problems.append(f"{where}: image(s) not found: {missing}")
            continue
        pairs.append(
            RelPosePair(
                fields[0],
                fields[1],
                values[2:11].reshape(3, 3),
                values[11:20].reshape(3, 3),
                values[20:36].reshape(4, 4),
            )
        )
    for p in problems:
        logger.warning("%s (pair skipped)", p)
    if not pairs:
        raise ValueError(f"{pairs_file}: no usable pair")
    return image_dir, pairs, problems


def angle_error_rotation(R_est: np.ndarray, R_gt: np.ndarray) -> float:
    """Angle in degrees of R_est R_gt^T."""
    cos = (np.trace(R_est @ R_gt.T) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def angle_error_translation(t_est: np.ndarray, t_gt: np.ndarray) -> float:
    """Angle in degrees between two translation directions, sign folded (min(e, 180 - e)); inf if either is ~0."""
    n = np.linalg.norm(t_est) * np.linalg.norm(t_gt)
    if n < 1e-12:
        return float("inf")
    e = float(np.degrees(np.arccos(np.clip(float(t_est @ t_gt) / n, -1.0, 1.0))))
    return min(e, 180.0 - e)


def pose_auc(errors: Sequence[float], thresholds: Sequence[float] = AUC_THRESHOLDS) -> list[float]:
    """Area under the recall-vs-error curve up to each threshold, divided by the threshold (in [0, 1]).

    The curve joins (0, 0) and (e_k, (k + 1) / n) for the sorted errors below the threshold by straight
    lines and stays flat up to the threshold (the definition used by SuperGlue, LoFTR, glue-factory).
    Every error counts in n; inf (failure) never enters the curve. Example: a single error of 5 gives
    AUC@10 = (0.5 * 5 * 1 + 5 * 1) / 10 = 0.75.
    """
    e = np.sort(np.asarray(errors, np.float64).reshape(-1))
    n = len(e)
    if n == 0:
        return [0.0 for _ in thresholds]
    recall = np.arange(1, n + 1) / n
    out = []
    for t in thresholds:
        below = e < t
        x = np.concatenate([[0.0], e[below], [t]])
        y = np.concatenate([[0.0], recall[below], [recall[below][-1] if below.any() else 0.0]])
        out.append(float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2) / t))
    return out


def estimate_pose(
    kp0: np.ndarray,
    kp1: np.ndarray,
    K0: np.ndarray,
    K1: np.ndarray,
    size0: tuple[int, int],
    size1: tuple[int, int],
    threshold_px: float,
    estimator: str = "pycolmap",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, int] | None:
    """Relative pose cam1_from_cam0 from matched keypoints.

    Args:
        kp0, kp1: float [M,2] matched keypoints (pixel centres at integers).
        K0, K1: float [3,3] intrinsics in the same convention.
        size0, size1: (w, h) of the images.
        threshold_px: RANSAC threshold in pixels.
        estimator: "pycolmap" (LO-RANSAC + refinement) or "opencv" (findEssentialMat + recoverPose).
        seed: RANSAC seed (pycolmap).

    Returns:
        (R float64 [3,3], t float64 [3] unit, number of inliers), or None when fewer than 5 matches
        or the estimation failed.
    """
    if len(kp0) < 5:
        return None
    kp0 = np.asarray(kp0, np.float64)
    kp1 = np.asarray(kp1, np.float64)
    if estimator == "opencv":
        import cv2

        n0 = (kp0 - K0[[0, 1], [2, 2]]) / K0[[0, 1], [0, 1]]
        n1 = (kp1 - K1[[0, 1], [2, 2]]) / K1[[0, 1], [0, 1]]
        f = np.mean([K0[0, 0], K0[1, 1], K1[0, 0], K1[1, 1]])
        E, mask = cv2.findEssentialMat(n0, n1, np.eye(3), method=cv2.RANSAC, prob=0.99999, threshold=threshold_px / f)
        if E is None:
            return None
        best = None
        for Ei in np.split(E, len(E) // 3):
            n, R, t, _ = cv2.recoverPose(Ei, n0, n1, np.eye(3), 1e9, mask=mask.copy())
            if best is None or n > best[2]:
                best = (R, t.reshape(3), int(n))
        return best
    if estimator != "pycolmap":
        raise ValueError(f"estimator must be 'pycolmap' or 'opencv', got {estimator!r}")
    import pycolmap

    def camera(K: np.ndarray, size: tuple[int, int]) -> Any:
        return pycolmap.Camera(
            model="PINHOLE", width=int(size[0]), height=int(size[1]),
            params=[K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5],
        )  # fmt: skip

    cam0, cam1 = camera(K0, size0), camera(K1, size1)
    opts = pycolmap.RANSACOptions()
    opts.max_error = threshold_px
    opts.random_seed = seed
    opts.max_num_trials = RANSAC_MAX_TRIALS
    ret = pycolmap.estimate_relative_pose(cam0, kp0 + 0.5, cam1, kp1 + 0.5, opts)
    if ret is None:
        return None
    pose, mask = ret["cam2_from_cam1"], np.asarray(ret["inlier_mask"], bool).reshape(-1)
    refined = pycolmap.refine_relative_pose(pose, cam0, kp0 + 0.5, cam1, kp1 + 0.5, mask)
    if refined is not None:
        pose = refined["cam2_from_cam1"] if isinstance(refined, dict) else refined
    m = np.asarray(pose.matrix(), np.float64)
    return m[:, :3], m[:, 3], int(ret["num_inliers"])


def _evaluate_method(
    method: Any, conf: RelPoseConf, image_dir: Path, pairs: Sequence[RelPosePair], cache: Path
) -> list[dict[str, Any]]:
    from tqdm import tqdm

    import zippy
    from zippy.image import read_image
    from zippy_eval.localization import features_h5
    from zippy_eval.localization.pipeline import extract_resized

    features = cache / "features.h5"
    if conf.overwrite and features.exists():
        features.unlink()

    def feats(name: str) -> Any:
        if not features_h5.has_features(features, name):
            f = extract_resized(method, read_image(image_dir / name), conf.max_keypoints, conf.resize_max)
            features_h5.write_features(features, name, f)
        return features_h5.read_features(features, name)

    rows = []
    for p in tqdm(pairs, desc=f"relpose {method.name}", unit="pair", leave=False):
        f0, f1 = feats(p.name0), feats(p.name1)
        m, _ = zippy.match(f0, f1, mutual=True)
        scale = (
            max(f0.image_size) / conf.resize_max if conf.resize_max and max(f0.image_size) > conf.resize_max else 1.0
        )
        est = estimate_pose(
            f0.keypoints[m[:, 0]], f1.keypoints[m[:, 1]], p.K0, p.K1, f0.image_size, f1.image_size,
            conf.ransac_px * scale, conf.estimator, conf.seed,
        )  # fmt: skip
        row: dict[str, Any] = {
            "method": method.name,
            "pair": f"{p.name0} {p.name1}",
            "num_keypoints": [len(f0), len(f1)],
            "num_matches": len(m),
            "num_inliers": 0,
            "rotation_error_deg": None,
            "translation_error_deg": None,
            "pose_error_deg": None,
        }
        if est is not None:
            R, t, n_in = est
            er = angle_error_rotation(R, p.T_0to1[:3, :3])
            et = angle_error_translation(t, p.T_0to1[:3, 3])
            row.update(num_inliers=n_in, rotation_error_deg=er, translation_error_deg=et, pose_error_deg=max(er, et))
        rows.append(row)
    return rows


def _aggregate(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    errs = [r["pose_error_deg"] if r["pose_error_deg"] is not None else np.inf for r in rows]
    aucs = pose_auc(errs, AUC_THRESHOLDS)
    return {
        "num_pairs": len(rows),
        "num_estimated": int(sum(r["pose_error_deg"] is not None for r in rows)),
        "auc": {f"{t:g}deg": a for t, a in zip(AUC_THRESHOLDS, aucs)},
        "median_pose_error_deg": float(np.median(errs)) if errs else None,
        "mean_matches": float(np.mean([r["num_matches"] for r in rows])) if rows else None,
        "mean_inliers": float(np.mean([r["num_inliers"] for r in rows])) if rows else None,
    }


def _table(aggregates: dict[str, dict[str, Any]]) -> str:
    from zippy_eval.results import markdown_table

    headers = ["method", *[f"AUC@{t:g}°" for t in AUC_THRESHOLDS], "median err (°)", "matches", "inliers", "estimated"]
    rows = [
        [
            name,
            *(100 * v for v in a["auc"].values()),
            a["median_pose_error_deg"],
            a["mean_matches"],
            a["mean_inliers"],
            f"{a['num_estimated']}/{a['num_pairs']}",
        ]
        for name, a in aggregates.items()
    ]
    return markdown_table(headers, rows, ["s", ".1f", ".1f", ".1f", ".1f", ".0f", ".0f", "s"]) + "\n"


def _plot(rows: Sequence[dict[str, Any]], methods: Sequence[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from zippy_eval.results import save_figure

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name in methods:
        mr = [r for r in rows if r["method"] == name]
        e = np.sort([r["pose_error_deg"] for r in mr if r["pose_error_deg"] is not None])
        if mr:
            ax.step(np.concatenate([[0], e, [30]]), np.concatenate([np.arange(len(e) + 1), [len(e)]]) / len(mr),
                    where="post", label=name)  # fmt: skip
    ax.set_xlim(0, 30)
    ax.set_ylim(0, 1)
    ax.set_xlabel("pose error (deg)")
    ax.set_ylabel("fraction of pairs")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    return path


def run(conf: RelPoseConf, dataset_dir: str | os.PathLike, output_dir: str | os.PathLike) -> Path:
    """Evaluate every method of ``conf`` on the pairs of ``dataset_dir``; returns the summary.json path.

    Writes ``summary.json``, ``table.md`` and ``pose_error.png`` to ``output_dir`` and caches features
    in ``output_dir/cache/<method tag>/features.h5``.

    Raises:
        ValueError: wrong layout or no method can run.
    """
    from zippy.threads import set_threads
    from zippy_eval.localization.pipeline import method_tag
    from zippy_eval.methods import methods_for_run
    from zippy_eval.results import write_summary, write_text

    output_dir = Path(output_dir)
    set_threads(conf.num_threads)
    image_dir, pairs, problems = load_pairs(dataset_dir)
    rows: list[dict[str, Any]] = []
    aggregates: dict[str, dict[str, Any]] = {}
    infos: dict[str, dict[str, Any]] = {}
    methods, skipped = methods_for_run(conf)
    for method in methods:
        infos[method.name] = method.info()
        mrows = _evaluate_method(method, conf, image_dir, pairs, output_dir / "cache" / method_tag(method, conf))
        rows.extend(mrows)
        aggregates[method.name] = _aggregate(mrows)
        logger.info("%s: AUC %s", method.name, aggregates[method.name]["auc"])
    write_text(output_dir / "table.md", _table(aggregates))
    _plot(rows, list(infos), output_dir / "pose_error.png")
    dataset = {"root": str(Path(dataset_dir)), "num_pairs": len(pairs), "problems": problems}
    return write_summary(
        output_dir,
        protocol=conf.protocol(),
        dataset=dataset,
        methods=infos,
        rows=rows,
        aggregates=aggregates,
        extra={"skipped_methods": skipped, "table": "table.md", "plots": ["pose_error.png"]},
    )
