"""Two-view geometry: homographies (applying, rescaling, sampling random ones, estimating robustly, corner error)
and the essential matrix with the relative pose of calibrated cameras.

All points are (x, y) float arrays [N, 2] in pixels with pixel centres at integer coordinates.
Homographies are float64 [3, 3] mapping points of image 0 to image 1.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "ROBUST_METHODS",
    "camera_matrix",
    "corner_error",
    "estimate_homography",
    "estimate_relative_pose",
    "random_homography",
    "robust_flag",
    "scale_homography",
    "scale_intrinsics",
    "visible_mask",
    "warp_points",
]


def warp_points(points: np.ndarray, H: np.ndarray) -> np.ndarray:
    """Apply homography ``H`` [3,3] to points [N,2]; returns float64 [N,2] (inf where w == 0)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    hom = pts @ H[:, :2].T + H[:, 2]
    w = hom[:, 2:3]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = hom[:, :2] / w
    out[~np.isfinite(out).all(1)] = np.inf
    return out


def scale_homography(H: np.ndarray, scale0: tuple[float, float], scale1: tuple[float, float]) -> np.ndarray:
    """Adapt ``H`` (image 0 -> image 1) to images resized by (sx, sy) factors ``scale0`` and ``scale1``.

    With pixel centres at integers, a resize by s maps x to (x + 0.5) * s - 0.5.
    """

    def resize_matrix(s: tuple[float, float]) -> np.ndarray:
        sx, sy = s
        return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]], dtype=np.float64)

    out = resize_matrix(scale1) @ np.asarray(H, np.float64) @ np.linalg.inv(resize_matrix(scale0))
    return out / out[2, 2]


def image_corners(width: int, height: int) -> np.ndarray:
    """The four image corners [4,2] (x, y) as used by the HPatches corner error."""
    return np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], dtype=np.float64)


def corner_error(H_est: np.ndarray | None, H_gt: np.ndarray, width: int, height: int) -> float:
    """Mean distance between image-0 corners warped by the estimate and by the truth (inf if no estimate)."""
    if H_est is None:
        return float("inf")
    c = image_corners(width, height)
    d = np.linalg.norm(warp_points(c, H_est) - warp_points(c, H_gt), axis=1)
    return float(np.mean(d)) if np.isfinite(d).all() else float("inf")


# robust estimator name -> OpenCV flag name; the first is the recommended default (the stream app's)
_ROBUST_CV2 = {"magsac": "USAC_MAGSAC", "fast": "USAC_FAST", "ransac": "RANSAC"}
ROBUST_METHODS = tuple(_ROBUST_CV2)


def robust_flag(method: str) -> int:
    """OpenCV's flag for a robust estimator name of ``ROBUST_METHODS``: "magsac" (cv2.USAC_MAGSAC), "fast"
    (cv2.USAC_FAST) or "ransac" (cv2.RANSAC); unknown names raise ValueError listing the choices."""
    import cv2

    if method not in _ROBUST_CV2:
        raise ValueError(f"unknown robust method {method!r}; choose one of {list(ROBUST_METHODS)}")
    return getattr(cv2, _ROBUST_CV2[method])


def estimate_homography(
    pts0: np.ndarray,
    pts1: np.ndarray,
    threshold: float = 3.0,
    max_iters: int = 5000,
    confidence: float = 0.9999,
    method: str = "ransac",
) -> tuple[np.ndarray | None, np.ndarray]:
    """cv2.findHomography on matched points [N,2] -> (H float64 [3,3] or None, inlier mask bool [N]).

    Args:
        method: "ransac" (classic, the HPatches protocol), "magsac" (OpenCV USAC_MAGSAC: ~1 ms, the
            stream app's default) or "fast" (OpenCV USAC_FAST: ~0.3 ms faster, less accurate).
    """
    import cv2

    flag = robust_flag(method)
    n = len(pts0)
    if n < 4:
        return None, np.zeros(n, bool)
    try:
        H, mask = cv2.findHomography(
            np.asarray(pts0, np.float64),
            np.asarray(pts1, np.float64),
            flag,
            threshold,
            maxIters=max_iters,
            confidence=confidence,
        )
    except cv2.error as e:  # degenerate point sets: a failed estimate, reported as None
        log.debug("homography estimation failed: %s", e)
        return None, np.zeros(n, bool)
    if H is None or mask is None:
        return None, np.zeros(n, bool)
    return H, mask.ravel().astype(bool)


def camera_matrix(intrinsics: tuple[float, float, float, float]) -> np.ndarray:
    """(fx, fy, cx, cy) -> the float64 [3, 3] camera matrix K."""
    fx, fy, cx, cy = intrinsics
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def scale_intrinsics(
    intrinsics: tuple[float, float, float, float], scale: tuple[float, float]
) -> tuple[float, float, float, float]:
    """Intrinsics of an image resized by (sx, sy), pixel centres at integers (x -> (x + 0.5) s - 0.5)."""
    fx, fy, cx, cy = intrinsics
    sx, sy = scale
    return fx * sx, fy * sy, (cx + 0.5) * sx - 0.5, (cy + 0.5) * sy - 0.5


def estimate_relative_pose(
    pts0: np.ndarray,
    pts1: np.ndarray,
    K: np.ndarray,
    threshold: float = 1.0,
    max_iters: int = 1000,
    confidence: float = 0.999,
    method: str = "magsac",
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, np.ndarray]:
    """Essential matrix of matched points [N, 2] of two views with camera matrix ``K`` [3, 3], and the pose
    recovered from it.

    Args:
        threshold: RANSAC threshold, point-to-epipolar-line distance in px.
        method: robust estimator of :data:`ROBUST_METHODS` ("magsac", "fast" or "ransac").

    Returns:
        (E float64 [3, 3], R float64 [3, 3], t float64 [3] unit direction with x1 = R x0 + t, inlier mask bool [N]);
        Nones and an all-False mask when estimation fails (fewer than 5 points, a degenerate set). The inliers are
        those of E that also pass the cheirality check of cv2.recoverPose.
    """
    import cv2

    n = len(pts0)
    none = (None, None, None, np.zeros(n, bool))
    if n < 5:
        return none
    flag = robust_flag(method)
    p0, p1 = np.asarray(pts0, np.float64), np.asarray(pts1, np.float64)
    try:
        E, mask = cv2.findEssentialMat(p0, p1, K, flag, confidence, threshold, max_iters)
        if E is None or mask is None or E.shape[0] < 3:
            return none
        E = E[:3]  # several solutions may come stacked; the first is the best-scoring one
        _, R, t, pose_mask = cv2.recoverPose(E, p0, p1, K, mask=mask.copy())
    except cv2.error as e:  # degenerate configurations: a failed estimate, not an error
        log.debug("essential matrix estimation failed: %s", e)
        return none
    return E, R, t.ravel(), pose_mask.ravel() > 0


def visible_mask(points: np.ndarray, width: int, height: int, border: float = 0.0) -> np.ndarray:
    """Boolean [N]: points inside [border, size - 1 - border] in both axes."""
    p = np.asarray(points)
    return (
        np.isfinite(p).all(1)
        & (p[:, 0] >= border)
        & (p[:, 0] <= width - 1 - border)
        & (p[:, 1] >= border)
        & (p[:, 1] <= height - 1 - border)
    )


def random_homography(
    rng: np.random.Generator,
    width: int,
    height: int,
    *,
    max_angle_deg: float = 45.0,
    scale_range: tuple[float, float] = (0.7, 1.3),
    perspective: float = 0.15,
    translation: float = 0.15,
) -> np.ndarray:
    """Sample a homography about the image centre: rotation, isotropic scale, translation, perspective.

    ``perspective`` moves each corner by up to that fraction of the image size; ``translation`` is a
    fraction of the size. Returns float64 [3, 3] mapping the image to its warped view.
    """
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    corners = image_corners(width, height)
    jitter = rng.uniform(-perspective, perspective, size=(4, 2)) * np.array([width, height])
    moved = corners + jitter
    a = np.deg2rad(rng.uniform(-max_angle_deg, max_angle_deg))
    s = np.exp(rng.uniform(np.log(scale_range[0]), np.log(scale_range[1])))
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) * s
    t = rng.uniform(-translation, translation, size=2) * np.array([width, height])
    dst = (moved - [cx, cy]) @ rot.T + [cx, cy] + t
    return _homography_from_4(corners, dst)


def _homography_from_4(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Exact homography from 4 point correspondences (DLT)."""
    rows = []
    for (x, y), (u, v) in zip(src, dst):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y, -u])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y, -v])
    _, _, vt = np.linalg.svd(np.asarray(rows, np.float64))
    H = vt[-1].reshape(3, 3)
    return H / H[2, 2]
