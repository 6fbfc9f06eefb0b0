"""HPatches metrics after SuperPoint (DeTone et al. 2018) and KP2D (Tang et al. 2020), MMA after D2-Net.

Conventions: keypoints are float [N,2] (x, y) pixels with pixel centres at integers; ``H`` is the
ground-truth homography float64 [3,3] mapping image 0 to image 1; an image size is (width, height);
a point is *visible* in an image of size (w, h) when 0 <= x <= w - 1 and 0 <= y <= h - 1.

Definitions (per pair):

* **Repeatability** at eps (3 px). Keep the keypoints of image 0 whose warp by H is visible in
  image 1 (``S0``, taken in image-1 coordinates after warping) and the keypoints of image 1 whose warp
  by H^-1 is visible in image 0 (``S1``, in image-1 coordinates): the shared view. With
  ``d[a, b] = ||S0[a] - S1[b]||``, ``c0 = #{a : min_b d[a, b] <= eps}`` and
  ``c1 = #{b : min_a d[a, b] <= eps}``, repeatability = (c0 + c1) / (|S0| + |S1|); 0 when the shared
  view holds no keypoint.
* **Localization error** at eps: the mean of those minimum distances that are <= eps, over both
  directions ((sum over c0 terms + sum over c1 terms) / (c0 + c1)); undefined (NaN) when c0 + c1 = 0.
* **Homography accuracy** at t (1, 3, 5 px): mutual-nearest-neighbour descriptor matches go to
  cv2.findHomography (RANSAC, 3 px, 5000 iterations). The corner error is the mean distance between
  the four corners of image 0 ((0,0), (w-1,0), (w-1,h-1), (0,h-1)) warped by the estimate and by H;
  a pair is correct at t when the corner error <= t. Fewer than 4 matches or no estimate gives an
  infinite corner error: incorrect at every t.
* **Matching score** (KP2D's implementation of SuperPoint's definition) at 3 px: every keypoint of
  image 0 is matched to its descriptor nearest neighbour in image 1 (not mutual); the neighbour is
  warped back by H^-1. Among the matches whose warped-back neighbour is visible in image 0, the
  fraction within (strictly) 3 px of the query keypoint is score01. score10 is the same from image 1
  to image 0 with H. Matching score = (score01 + score10) / 2 (a direction with no visible match
  scores 0).
* **MMA** at t = 1..10 px (D2-Net): the fraction of mutual-nearest-neighbour matches whose
  reprojection error ||H(k0) - k1|| <= t, over all matches of the pair (no visibility filter); 0 for
  a pair without matches. Aggregates average the per-pair values.
* **Wrong mutual matches** at eps (3 px), counted per pair by cause (:func:`wrong_matches`): the
  keypoint of image 0 warps outside image 1 (*out of view*); it warps inside but no keypoint of
  image 1 lies within eps of it (*no partner*: the detector missed it); or such a partner exists and
  the descriptor chose another keypoint (*partner elsewhere*). Also counted: wrong matches farther
  than 32 px from the true position (*far*: not a near miss). Aggregates pool the counts of all pairs
  and divide by all their mutual matches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from zippy.geometry import corner_error, estimate_homography, visible_mask, warp_points

__all__ = [
    "DEFAULT_ACCURACY_THRESHOLDS",
    "DEFAULT_MMA_THRESHOLDS",
    "FAR_WRONG_PX",
    "WRONG_KEYS",
    "HomographyResult",
    "RepeatabilityResult",
    "evaluate_pair",
    "homography_accuracy",
    "local_rotation_scale",
    "matching_score",
    "mean_matching_accuracy",
    "repeatability",
    "reprojection_errors",
    "wrong_matches",
]

FAR_WRONG_PX = 32.0
WRONG_KEYS = ("wrong_out_of_view", "wrong_no_partner", "wrong_partner_elsewhere", "wrong_far")

DEFAULT_MMA_THRESHOLDS: tuple[int, ...] = tuple(range(1, 11))
DEFAULT_ACCURACY_THRESHOLDS: tuple[int, ...] = (1, 3, 5)


def _points(p: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(p, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"{name} must be [N,2] (x, y), got {a.dtype} {list(a.shape)}")
    return a


def _pairs(pairs: np.ndarray, n0: int, n1: int, name: str = "pairs") -> np.ndarray:
    a = np.asarray(pairs)
    if a.size == 0:
        return np.zeros((0, 2), np.int64)
    if a.ndim != 2 or a.shape[1] != 2 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must be int [K,2], got {a.dtype} {list(a.shape)}")
    if (a < 0).any() or (a[:, 0] >= n0).any() or (a[:, 1] >= n1).any():
        raise ValueError(f"{name} index out of range for {n0} and {n1} keypoints")
    return a.astype(np.int64)


def _homography(H: np.ndarray) -> np.ndarray:
    H = np.asarray(H, dtype=np.float64)
    if H.shape != (3, 3) or not np.isfinite(H).all():
        raise ValueError(f"homography must be finite float [3,3], got {H.dtype} {list(H.shape)}")
    return H


def local_rotation_scale(H: np.ndarray, point: tuple[float, float]) -> tuple[float, float]:
    """Rotation and scale change of a homography near a point (of its local affine map, the Jacobian).

    Args:
        H: float [3,3] mapping image 0 pixels to image 1 pixels.
        point: (x, y) in image 0, e.g. the image centre.

    Returns:
        (|rotation| in degrees, in [0, 180]; scale change max(s, 1/s) >= 1, s = sqrt(|det J|)).
    """
    H = _homography(H)
    q = H @ np.array([point[0], point[1], 1.0])
    if abs(q[2]) < 1e-12:
        raise ValueError(f"the homography maps {point} to infinity")
    u, v = q[0] / q[2], q[1] / q[2]
    J = np.array([[H[0, 0] - u * H[2, 0], H[0, 1] - u * H[2, 1]], [H[1, 0] - v * H[2, 0], H[1, 1] - v * H[2, 1]]])
    J /= q[2]
    rotation = abs(float(np.degrees(np.arctan2(J[1, 0] - J[0, 1], J[0, 0] + J[1, 1]))))
    s = float(np.sqrt(abs(np.linalg.det(J))))
    return rotation, (max(s, 1.0 / s) if s > 0 else float("inf"))


def _pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances float64 [len(a), len(b)]."""
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))


@dataclass(frozen=True)
class RepeatabilityResult:
    """Repeatability and localization error of one pair (see the module doc).

    Attributes:
        repeatability: (c0 + c1) / (n_shared0 + n_shared1), in [0, 1].
        localization_error: mean distance (px) of the repeated keypoints; NaN when none repeats.
        n_shared0: keypoints of image 0 visible in image 1.
        n_shared1: keypoints of image 1 visible in image 0.
        n_repeated: c0 + c1.
    """

    repeatability: float
    localization_error: float
    n_shared0: int
    n_shared1: int
    n_repeated: int


def repeatability(
    kp0: np.ndarray,
    kp1: np.ndarray,
    H: np.ndarray,
    size0: tuple[int, int],
    size1: tuple[int, int],
    threshold: float = 3.0,
) -> RepeatabilityResult:
    """Repeatability and localization error at ``threshold`` px over the shared view.

    Args:
        kp0: keypoints of image 0, float [N0,2] (x, y).
        kp1: keypoints of image 1, float [N1,2].
        H: float64 [3,3], image 0 -> image 1.
        size0, size1: (width, height) of images 0 and 1.
        threshold: distance (px, in image 1) under which (<=) a keypoint counts as repeated.
    """
    kp0, kp1, H = _points(kp0, "kp0"), _points(kp1, "kp1"), _homography(H)
    w0 = warp_points(kp0, H)
    s0 = w0[visible_mask(w0, *size1)]
    s1 = kp1[visible_mask(warp_points(kp1, np.linalg.inv(H)), *size0)]
    n0, n1 = len(s0), len(s1)
    if n0 == 0 or n1 == 0:
        return RepeatabilityResult(0.0, float("nan"), n0, n1, 0)
    d = _pairwise_distances(s0, s1)
    min0, min1 = d.min(axis=1), d.min(axis=0)
    ok0, ok1 = min0 <= threshold, min1 <= threshold
    c = int(ok0.sum() + ok1.sum())
    rep = c / (n0 + n1)
    err = float((min0[ok0].sum() + min1[ok1].sum()) / c) if c else float("nan")
    return RepeatabilityResult(float(rep), err, n0, n1, c)


def reprojection_errors(kp0: np.ndarray, kp1: np.ndarray, pairs: np.ndarray, H: np.ndarray) -> np.ndarray:
    """||H(kp0[i]) - kp1[j]|| for each match (i, j); float64 [K] (inf where the warp is at infinity)."""
    kp0, kp1, H = _points(kp0, "kp0"), _points(kp1, "kp1"), _homography(H)
    pairs = _pairs(pairs, len(kp0), len(kp1))
    if len(pairs) == 0:
        return np.zeros(0, np.float64)
    return np.linalg.norm(warp_points(kp0[pairs[:, 0]], H) - kp1[pairs[:, 1]], axis=1)


def wrong_matches(
    kp0: np.ndarray,
    kp1: np.ndarray,
    pairs: np.ndarray,
    H: np.ndarray,
    size1: tuple[int, int],
    threshold: float = 3.0,
    far_px: float = FAR_WRONG_PX,
) -> dict[str, int]:
    """Wrong matches (error > ``threshold`` px) of one pair counted by cause (see the module doc).

    Args:
        kp0, kp1: keypoints float [N0,2], [N1,2]. pairs: int [K,2] mutual-NN matches.
        H: float64 [3,3], image 0 -> image 1. size1: (width, height) of image 1.

    Returns:
        ints ``wrong_out_of_view``, ``wrong_no_partner``, ``wrong_partner_elsewhere`` (they sum to the
        wrong matches) and ``wrong_far`` (error > ``far_px``, any cause).
    """
    err = reprojection_errors(kp0, kp1, pairs, H)
    counts = dict.fromkeys(WRONG_KEYS, 0)
    wrong = err > threshold
    if not wrong.any():
        return counts
    kp0, kp1, pairs = _points(kp0, "kp0"), _points(kp1, "kp1"), np.asarray(pairs).reshape(-1, 2)
    w = warp_points(kp0[pairs[wrong, 0]], _homography(H))
    in_view = visible_mask(w, *size1)
    if len(kp1):
        partner = _pairwise_distances(w, kp1).min(axis=1) <= threshold
    else:
        partner = np.zeros(len(w), bool)
    counts["wrong_out_of_view"] = int((~in_view).sum())
    counts["wrong_no_partner"] = int((in_view & ~partner).sum())
    counts["wrong_partner_elsewhere"] = int((in_view & partner).sum())
    counts["wrong_far"] = int((err > far_px).sum())
    return counts


def mean_matching_accuracy(
    kp0: np.ndarray,
    kp1: np.ndarray,
    pairs: np.ndarray,
    H: np.ndarray,
    thresholds: Sequence[float] = DEFAULT_MMA_THRESHOLDS,
) -> np.ndarray:
    """Fraction of matches with reprojection error <= t for each t; float64 [T], zeros without matches.

    Args:
        kp0, kp1: keypoints float [N0,2], [N1,2].
        pairs: int [K,2] mutual-NN matches (index in kp0, index in kp1).
        H: float64 [3,3], image 0 -> image 1.
        thresholds: pixel thresholds t.
    """
    return _accuracy_curve(reprojection_errors(kp0, kp1, pairs, H), thresholds)


def _accuracy_curve(err: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    t = np.asarray(thresholds, np.float64)
    if len(err) == 0:
        return np.zeros(len(t), np.float64)
    return (err[None, :] <= t[:, None]).mean(axis=1)


def matching_score(
    kp0: np.ndarray,
    kp1: np.ndarray,
    nn01: np.ndarray,
    nn10: np.ndarray,
    H: np.ndarray,
    size0: tuple[int, int],
    size1: tuple[int, int],
    threshold: float = 3.0,
) -> float:
    """KP2D matching score (see the module doc).

    Args:
        kp0, kp1: keypoints float [N0,2], [N1,2].
        nn01: int [K01,2] pairs (i in image 0, j in image 1): each image-0 keypoint's nearest neighbour.
        nn10: int [K10,2] pairs (j in image 1, i in image 0): each image-1 keypoint's nearest neighbour.
        H: float64 [3,3], image 0 -> image 1.
        size0, size1: (width, height) of images 0 and 1.
        threshold: a match is correct when its error is < threshold px.
    """
    kp0, kp1, H = _points(kp0, "kp0"), _points(kp1, "kp1"), _homography(H)
    nn01 = _pairs(nn01, len(kp0), len(kp1), "nn01")
    nn10 = _pairs(nn10, len(kp1), len(kp0), "nn10")

    def direction(q: np.ndarray, t: np.ndarray, nn: np.ndarray, H_t_to_q: np.ndarray, size_q: tuple[int, int]) -> float:
        if len(nn) == 0:
            return 0.0
        back = warp_points(t[nn[:, 1]], H_t_to_q)
        vis = visible_mask(back, *size_q)
        if not vis.any():
            return 0.0
        err = np.linalg.norm(back[vis] - q[nn[vis, 0]], axis=1)
        return float((err < threshold).sum() / vis.sum())

    s01 = direction(kp0, kp1, nn01, np.linalg.inv(H), size0)
    s10 = direction(kp1, kp0, nn10, H, size1)
    return (s01 + s10) / 2.0


@dataclass(frozen=True)
class HomographyResult:
    """Estimated homography of one pair.

    Attributes:
        H: float64 [3,3] estimate, or None.
        corner_error: mean corner distance in px (inf without an estimate).
        n_inliers: RANSAC inliers.
        correct: {threshold: corner_error <= threshold}.
    """

    H: np.ndarray | None
    corner_error: float
    n_inliers: int
    correct: dict[float, bool]


def homography_accuracy(
    kp0: np.ndarray,
    kp1: np.ndarray,
    pairs: np.ndarray,
    H: np.ndarray,
    size0: tuple[int, int],
    thresholds: Sequence[float] = DEFAULT_ACCURACY_THRESHOLDS,
    ransac_threshold: float = 3.0,
    max_iters: int = 5000,
) -> HomographyResult:
    """RANSAC homography from matches and its corner error against ``H``.

    Args:
        kp0, kp1: keypoints float [N0,2], [N1,2].
        pairs: int [K,2] mutual-NN matches.
        H: ground truth float64 [3,3], image 0 -> image 1.
        size0: (width, height) of image 0 (whose corners are warped).
        thresholds: corner-error thresholds (px) for correctness.
        ransac_threshold: RANSAC reprojection threshold (px).
        max_iters: RANSAC iterations.
    """
    kp0, kp1, H = _points(kp0, "kp0"), _points(kp1, "kp1"), _homography(H)
    pairs = _pairs(pairs, len(kp0), len(kp1))
    H_est, inliers = estimate_homography(
        kp0[pairs[:, 0]], kp1[pairs[:, 1]], threshold=ransac_threshold, max_iters=max_iters
    )
    err = corner_error(H_est, H, *size0)
    return HomographyResult(H_est, err, int(inliers.sum()), {t: bool(err <= t) for t in thresholds})


def evaluate_pair(
    kp0: np.ndarray,
    kp1: np.ndarray,
    H: np.ndarray,
    size0: tuple[int, int],
    size1: tuple[int, int],
    mutual: np.ndarray,
    nn01: np.ndarray,
    nn10: np.ndarray,
    *,
    rep_threshold: float = 3.0,
    ms_threshold: float = 3.0,
    accuracy_thresholds: Sequence[float] = DEFAULT_ACCURACY_THRESHOLDS,
    mma_thresholds: Sequence[float] = DEFAULT_MMA_THRESHOLDS,
    ransac_threshold: float = 3.0,
    max_iters: int = 5000,
) -> dict[str, object]:
    """All metrics of one pair as a flat dict (a summary row without the identifying keys).

    Args:
        kp0, kp1: keypoints float [N0,2], [N1,2] (top-k already applied).
        H: float64 [3,3], image 0 -> image 1.
        size0, size1: (width, height).
        mutual: int [K,2] mutual-NN matches (homography accuracy, MMA).
        nn01, nn10: int pairs of one-way nearest neighbours (matching score), see :func:`matching_score`.

    Returns:
        keys n_kp0, n_kp1, n_shared0, n_shared1, repeatability, localization_error, n_matches,
        n_inliers, corner_error, h_acc@t (bool per accuracy threshold), matching_score, mma (list [T]),
        n_correct@3 (matches with error <= 3 px) and the :func:`wrong_matches` counts at 3 px.
    """
    rep = repeatability(kp0, kp1, H, size0, size1, rep_threshold)
    hom = homography_accuracy(kp0, kp1, mutual, H, size0, accuracy_thresholds, ransac_threshold, max_iters)
    err = reprojection_errors(kp0, kp1, mutual, H)
    row: dict[str, object] = {
        "n_kp0": len(kp0),
        "n_kp1": len(kp1),
        "n_shared0": rep.n_shared0,
        "n_shared1": rep.n_shared1,
        "repeatability": rep.repeatability,
        "localization_error": rep.localization_error,
        "n_matches": len(err),
        "n_correct@3": int((err <= 3.0).sum()),
        "n_inliers": hom.n_inliers,
        "corner_error": hom.corner_error,
    }
    for t in accuracy_thresholds:
        row[f"h_acc@{t:g}"] = hom.correct[t]
    row["matching_score"] = matching_score(kp0, kp1, nn01, nn10, H, size0, size1, ms_threshold)
    row["mma"] = _accuracy_curve(err, mma_thresholds).tolist()
    row.update(wrong_matches(kp0, kp1, mutual, H, size1, 3.0))
    return row
