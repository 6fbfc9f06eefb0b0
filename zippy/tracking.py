"""Frame-to-frame and frame-to-keyframe tracking with robust two-view geometry, one frame at a time.

:class:`Tracker` extracts features of each frame, matches them (:func:`zippy.match`, mutual nearest neighbours)
to the previous frame and to the current keyframe, and fits a homography to both match sets, or with camera
intrinsics an essential matrix and relative pose (:mod:`zippy.geometry`). A new keyframe starts when the inliers
to the keyframe drop below ``keyframe_ratio`` times the inliers the first frame after the keyframe had. Track ids
follow keypoints through inlier matches. The ``zippy stream`` app runs it over cameras, videos and folders::

    tracker = zippy.tracking.Tracker(zippy.load("zippypoint_small"), max_keypoints=500)
    for i, frame in enumerate(frames):  # RGB uint8 [H, W, 3], all of one size
        r = tracker.process(frame, index=i)
        print(i, len(r.features), r.to_prev.num_inliers if r.to_prev else 0)

:func:`match_and_fit` is the same matching and geometry for one pair of images.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from zippy.features import Features
from zippy.geometry import ROBUST_METHODS, camera_matrix, estimate_homography, estimate_relative_pose

if TYPE_CHECKING:
    from zippy.extractor import Extractor

logger = logging.getLogger(__name__)

__all__ = [
    "CONFIDENCE",
    "DEFAULT_ROBUST",
    "MAX_ITERS",
    "FrameResult",
    "PairResult",
    "Tracker",
    "default_matcher",
    "fit_pair",
    "match_and_fit",
    "parse_intrinsics",
]

DEFAULT_ROBUST = ROBUST_METHODS[0]
MAX_ITERS = 1000
CONFIDENCE = 0.999

Matcher = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(descriptors0, descriptors1) -> int64 [K, 2] index pairs."""


# ---------------------------------------------------------------------------------------------- results


@dataclass
class PairResult:
    """Matches and robust geometry between a reference frame and the current frame.

    Attributes:
        ref_index: :attr:`FrameResult.index` of the reference frame.
        matches: int64 [K, 2] pairs (reference keypoint index, current keypoint index).
        inliers: bool [K], RANSAC inliers of ``matrix`` (all False when it is None).
        model: "homography" or "essential".
        matrix: float64 [3, 3] homography mapping reference pixels to current pixels, or the essential
            matrix (x_cur^T E x_ref = 0 in normalized coordinates); None when estimation failed.
        R: float64 [3, 3] rotation of the relative pose (essential model only), x_cur = R x_ref + t.
        t: float64 [3] unit translation direction (essential model only).
    """

    ref_index: int
    matches: np.ndarray
    inliers: np.ndarray
    model: str
    matrix: np.ndarray | None = None
    R: np.ndarray | None = None
    t: np.ndarray | None = None

    @property
    def H(self) -> np.ndarray | None:
        """The homography (float64 [3, 3], reference -> current pixels) of a "homography" result, else None."""
        return self.matrix if self.model == "homography" else None

    @property
    def num_matches(self) -> int:
        """Number of matches K."""
        return len(self.matches)

    @property
    def num_inliers(self) -> int:
        """Number of geometric inliers."""
        return int(self.inliers.sum())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (counts and matrices, not the match arrays)."""
        out: dict[str, Any] = {
            "ref": self.ref_index,
            "matches": self.num_matches,
            "inliers": self.num_inliers,
            "model": self.model,
            "matrix": None if self.matrix is None else np.round(self.matrix, 8).ravel().tolist(),
        }
        if self.model == "essential":
            out["R"] = None if self.R is None else np.round(self.R, 8).ravel().tolist()
            out["t"] = None if self.t is None else np.round(self.t, 8).ravel().tolist()
        return out


@dataclass
class FrameResult:
    """Everything computed for one processed frame.

    Attributes:
        index: processed-frame counter from 0 (skipped frames do not count).
        source_index: position of the frame in its source (skipped frames count).
        timestamp: seconds (see :class:`RawFrame`).
        image: RGB uint8 [H, W, 3] at the working size; all pixel coordinates refer to it.
        features: keypoints, scores and descriptors of ``image``.
        track_ids: int64 [N], one per keypoint; a keypoint that is an inlier match of a previous-frame
            keypoint inherits its id, others get new ids (ids never repeat within a stream).
        to_prev: matches and geometry to the previous processed frame (None on the first frame and
            after a tracking restart).
        to_key: matches and geometry to the keyframe (the same object as ``to_prev`` when the
            previous frame is the keyframe; None when ``to_prev`` is None).
        keyframe_index: index of the keyframe that ``to_key`` refers to (this frame's own index
            when tracking (re)starts here).
        new_keyframe: this frame is the keyframe of the frames that follow.
        scale: (sx, sy) factors from source pixels to working pixels.
        times: milliseconds per stage: "extract", "match", "geometry" (a stream adds "read" and "resize").
    """

    index: int
    source_index: int
    timestamp: float
    image: np.ndarray
    features: Features
    track_ids: np.ndarray
    to_prev: PairResult | None
    to_key: PairResult | None
    keyframe_index: int
    new_keyframe: bool
    scale: tuple[float, float]
    times: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record of the frame (one line of the stats log)."""
        return {
            "index": self.index,
            "source_index": self.source_index,
            "timestamp": self.timestamp,
            "keypoints": len(self.features),
            "keyframe": self.keyframe_index,
            "new_keyframe": self.new_keyframe,
            "prev": None if self.to_prev is None else self.to_prev.to_dict(),
            "key": None if self.to_key is None else self.to_key.to_dict(),
            "times_ms": {k: round(v, 3) for k, v in self.times.items()},
        }


def parse_intrinsics(text: str | Iterable[float]) -> tuple[float, float, float, float]:
    """Parse "fx,fy,cx,cy" (pixels of the source frames) into four floats with fx, fy > 0.

    Raises:
        ValueError: not four finite numbers, or a focal length <= 0.
    """
    values = text.replace(" ", "").split(",") if isinstance(text, str) else list(text)
    try:
        fx, fy, cx, cy = (float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"intrinsics must be four numbers fx,fy,cx,cy, got {text!r}") from None
    if not all(math.isfinite(v) for v in (fx, fy, cx, cy)) or fx <= 0 or fy <= 0:
        raise ValueError(f"intrinsics need finite values and fx, fy > 0, got {text!r}")
    return fx, fy, cx, cy


def default_matcher(binary: bool) -> Matcher:
    """Mutual nearest neighbours (:func:`zippy.match`); for binary descriptors the Hamming kernels are compiled
    now rather than on the first frame."""
    import zippy

    if binary:
        logger.debug("Hamming kernels ready in %.2f s", zippy.matching.warmup())

    def match(d0: np.ndarray, d1: np.ndarray) -> np.ndarray:
        return zippy.match(d0, d1, mutual=True)[0]

    return match


def fit_pair(
    f0: Features,
    f1: Features,
    matches: np.ndarray,
    *,
    K: np.ndarray | None = None,
    ransac_threshold: float | None = None,
    robust: str = DEFAULT_ROBUST,
    max_iters: int = MAX_ITERS,
    confidence: float = CONFIDENCE,
    ref_index: int = 0,
) -> PairResult:
    """Robust geometry of matched features: a homography f0 -> f1, or with the camera matrix ``K`` [3, 3] (both
    views) the essential matrix and relative pose.

    Args:
        f0, f1: features of the reference and the current image. matches: int64 [K, 2] index pairs.
        ransac_threshold: px; default 3 for the homography, 1 (point-to-epipolar-line) for the essential matrix.
        robust: "magsac" (default), "fast" or "ransac" (:data:`zippy.geometry.ROBUST_METHODS`).
        max_iters, confidence: RANSAC stopping rule. ref_index: recorded in the result.
    """
    p0 = f0.keypoints[matches[:, 0]].astype(np.float64)
    p1 = f1.keypoints[matches[:, 1]].astype(np.float64)
    if K is None:
        threshold = 3.0 if ransac_threshold is None else ransac_threshold
        H, inliers = estimate_homography(
            p0, p1, threshold=threshold, max_iters=max_iters, confidence=confidence, method=robust
        )
        return PairResult(ref_index, matches, inliers, "homography", H)
    threshold = 1.0 if ransac_threshold is None else ransac_threshold
    E, R, t, inliers = estimate_relative_pose(p0, p1, K, threshold, max_iters, confidence, robust)
    return PairResult(ref_index, matches, inliers, "essential", E, R, t)


def match_and_fit(f0: Features, f1: Features, **options: Any) -> PairResult:
    """Mutual nearest-neighbour matches of two feature sets (:func:`zippy.match`) and their robust geometry
    (:func:`fit_pair`, which takes ``options``).

    Returns:
        A :class:`PairResult`: ``matches`` int64 [K, 2], ``inliers`` bool [K], ``H`` the homography (or None).
    """
    import zippy

    matches, _ = zippy.match(f0, f1, mutual=True)
    return fit_pair(f0, f1, np.asarray(matches, np.int64).reshape(-1, 2), **options)


class Tracker:
    """Frame-to-frame and frame-to-keyframe matching with robust geometry, one frame at a time.

    Feed working-size RGB frames to :meth:`process` in order; :meth:`reset` restarts tracking.

    Args:
        extractor: a :class:`zippy.extractor.Extractor`, or any object with the same
            ``.extract(rgb_uint8, max_keypoints=...) -> Features`` (e.g. the OpenCV baselines of
            ``zippy_eval.methods``).
        max_keypoints: keypoints per frame.
        keyframe_ratio: in [0, 1]; a new keyframe starts when the inliers to the keyframe fall below
            this fraction of the inliers of the first frame after it (0: only when geometry fails).
        intrinsics: (fx, fy, cx, cy) in working pixels; given, the essential matrix and relative pose
            are estimated instead of a homography.
        ransac_threshold: RANSAC inlier threshold in pixels: homography reprojection error, or for the
            essential matrix the point-to-epipolar-line distance (default 3 px and 1 px respectively).
        robust: "magsac" (OpenCV USAC_MAGSAC, default), "fast" (USAC_FAST) or "ransac" (classic RANSAC);
            homographies through :func:`zippy.geometry.estimate_homography`. All stop at 99.9% confidence
            or 1000 iterations. Classic RANSAC is far slower at the low inlier ratios of real sequences:
            on the TUM sequence at 240x320 with ORB, 20-90 ms per homography against ~1 ms for MAGSAC,
            and up to 1.2 s per essential matrix against ~20 ms. USAC_FAST saves ~0.3 ms per homography
            (zippypoint features at 240x320: 0.74 against 1.02 ms) but is less accurate on the test's
            generated video (frames within 3 px, 500 keypoints: 89.7 % against 100 % with
            zippypoint_small, 97.4 % against 100 % with zippypoint), so MAGSAC stays the default.
        matcher: (d0, d1) -> int64 [K, 2]; default :func:`default_matcher` by descriptor type.
    """

    def __init__(
        self,
        extractor: Extractor | Any,
        *,
        max_keypoints: int = 500,
        keyframe_ratio: float = 0.5,
        intrinsics: tuple[float, float, float, float] | None = None,
        ransac_threshold: float | None = None,
        robust: str = DEFAULT_ROBUST,
        matcher: Matcher | None = None,
    ):
        if not callable(getattr(extractor, "extract", None)):
            raise ValueError(f"extractor must have an .extract(image, max_keypoints) method, got {type(extractor)}")
        if not (isinstance(max_keypoints, int | np.integer) and max_keypoints > 0):
            raise ValueError(f"max_keypoints must be a positive integer, got {max_keypoints!r}")
        if not 0.0 <= float(keyframe_ratio) <= 1.0:
            raise ValueError(f"keyframe_ratio must be in [0, 1], got {keyframe_ratio!r}")
        if robust not in ROBUST_METHODS:
            raise ValueError(f"robust must be one of {list(ROBUST_METHODS)}, got {robust!r}")
        if ransac_threshold is not None and not ransac_threshold > 0:
            raise ValueError(f"ransac_threshold must be > 0 or None, got {ransac_threshold!r}")
        self.extractor = extractor
        self.max_keypoints = int(max_keypoints)
        self.keyframe_ratio = float(keyframe_ratio)
        self.K = None if intrinsics is None else camera_matrix(parse_intrinsics(intrinsics))
        self.ransac_threshold = None if ransac_threshold is None else float(ransac_threshold)
        self.robust = robust
        self.matcher = matcher
        self._next_track_id = 0
        self.reset()

    def reset(self) -> None:
        """Forget the previous frame and the keyframe: the next frame starts tracking anew."""
        self._prev: tuple[int, Features, np.ndarray] | None = None  # (index, features, track ids)
        self._key: tuple[int, Features] | None = None
        self._key_reference: int | None = None  # inliers of the first frame after the keyframe

    def process(
        self,
        image: np.ndarray,
        *,
        index: int,
        source_index: int | None = None,
        timestamp: float = 0.0,
        scale: tuple[float, float] = (1.0, 1.0),
    ) -> FrameResult:
        """Extract, match and fit geometry for one frame.

        Args:
            image: RGB uint8 [H, W, 3] at the working size.
            index: processed-frame counter (increasing).
            source_index: position in the source (defaults to ``index``).
            timestamp: seconds.
            scale: (sx, sy) from source pixels to ``image`` pixels, recorded in the result.

        Returns:
            The frame's :class:`FrameResult` (``times`` holds "extract", "match", "geometry").
        """
        times: dict[str, float] = {}
        t0 = time.perf_counter()
        feats = self.extractor.extract(image, max_keypoints=self.max_keypoints)
        if not isinstance(feats, Features):
            raise ValueError(f"extractor.extract must return zippy.features.Features, got {type(feats).__name__}")
        t1 = time.perf_counter()
        times["extract"] = (t1 - t0) * 1e3
        if self.matcher is None:  # set up (numba: compile) on the first frame, outside the stage times
            self.matcher = default_matcher(feats.is_binary)
            t1 = time.perf_counter()

        to_prev = to_key = None
        matches_prev = matches_key = None
        if self._prev is not None and self._key is not None:
            matches_prev = self._match(self._prev[1], feats)
            if self._key[0] != self._prev[0]:
                matches_key = self._match(self._key[1], feats)
        t2 = time.perf_counter()
        times["match"] = (t2 - t1) * 1e3

        if matches_prev is not None:
            assert self._prev is not None and self._key is not None  # for type checkers
            to_prev = self._geometry(self._prev[0], self._prev[1], feats, matches_prev)
            to_key = to_prev if matches_key is None else self._geometry(self._key[0], self._key[1], feats, matches_key)
        times["geometry"] = (time.perf_counter() - t2) * 1e3

        track_ids = np.arange(self._next_track_id, self._next_track_id + len(feats), dtype=np.int64)
        if to_prev is not None and self._prev is not None:
            good = to_prev.matches[to_prev.inliers]
            track_ids[good[:, 1]] = self._prev[2][good[:, 0]]
        self._next_track_id += len(feats)

        keyframe_index = index if self._key is None else self._key[0]
        new_keyframe = self._update_keyframe(to_key)
        if new_keyframe:
            self._key = (index, feats)
        self._prev = (index, feats, track_ids)
        return FrameResult(
            index=index,
            source_index=index if source_index is None else source_index,
            timestamp=float(timestamp),
            image=image,
            features=feats,
            track_ids=track_ids,
            to_prev=to_prev,
            to_key=to_key,
            keyframe_index=keyframe_index,
            new_keyframe=new_keyframe,
            scale=scale,
            times=times,
        )

    def _update_keyframe(self, to_key: PairResult | None) -> bool:
        """Decide whether the current frame becomes the keyframe (and keep the reference count)."""
        if to_key is None or to_key.matrix is None:
            self._key_reference = None
            return True
        if self._key_reference is None:
            self._key_reference = to_key.num_inliers
            return to_key.num_inliers == 0
        if to_key.num_inliers < self.keyframe_ratio * self._key_reference:
            self._key_reference = None
            return True
        return False

    def _match(self, f0: Features, f1: Features) -> np.ndarray:
        if len(f0) == 0 or len(f1) == 0:
            return np.zeros((0, 2), np.int64)
        if f0.descriptors.dtype != f1.descriptors.dtype or f0.descriptors.shape[1] != f1.descriptors.shape[1]:
            raise ValueError(
                f"descriptors of consecutive frames differ: {f0.descriptors.dtype} [*,{f0.descriptors.shape[1]}] "
                f"vs {f1.descriptors.dtype} [*,{f1.descriptors.shape[1]}]"
            )
        assert self.matcher is not None
        pairs = np.asarray(self.matcher(f0.descriptors, f1.descriptors), dtype=np.int64)
        return pairs.reshape(-1, 2)

    def _geometry(self, ref_index: int, f0: Features, f1: Features, matches: np.ndarray) -> PairResult:
        return fit_pair(
            f0, f1, matches, K=self.K, ransac_threshold=self.ransac_threshold, robust=self.robust, ref_index=ref_index
        )
