"""Keypoint tracking on camera streams, video files, stream URLs and image folders.

The Python API of ``zippy stream``: :func:`track` opens a source and returns a :class:`Stream`, an
iterator of :class:`FrameResult` (one per processed frame) that a caller can plug into its own code,
e.g. a SLAM front end::

    extractor = zippy.load("zippypoint_small")  # the fast variant, `zippy stream`'s default
    with track("video.mp4", extractor, size=(240, 320)) as stream:
        for r in stream:
            print(r.index, len(r.features), r.to_prev.num_inliers if r.to_prev else 0)

Per frame: read, resize to the working size, extract, match against the previous frame and against
the current keyframe, and fit robust geometry to both match sets (a homography, or with camera
intrinsics an essential matrix and relative pose). A new keyframe starts when the inliers to the
keyframe drop below ``keyframe_ratio`` times the inliers the first frame after the keyframe had.

Any object with ``.extract(rgb_uint8, max_keypoints=...) -> zippy.features.Features`` works as the
extractor (zippy extractors, OpenCV baselines from ``zippy_eval.methods``).

Bad input inside a stream is not fatal: an unreadable, empty or invalid frame is skipped with a
warning (recorded in :attr:`Stream.skipped`); a frame whose size differs from the first one is
resized to the working size and restarts tracking (its matches would mix two image geometries).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from zippy.features import Features
from zippy.geometry import ROBUST_METHODS

logger = logging.getLogger(__name__)

__all__ = [
    "FrameResult",
    "ImageFolderSource",
    "IterableSource",
    "PairResult",
    "RawFrame",
    "SkippedFrame",
    "SourceError",
    "Stream",
    "Tracker",
    "VideoSource",
    "open_source",
    "parse_intrinsics",
    "parse_size",
    "track",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
STAGES = ("read", "resize", "extract", "match", "geometry")
"""Stage names of :attr:`FrameResult.times`, in order."""

DEFAULT_ROBUST = ROBUST_METHODS[0]
MAX_ITERS = 1000
CONFIDENCE = 0.999

Matcher = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(descriptors0, descriptors1) -> int64 [K, 2] index pairs."""


class SourceError(ValueError):
    """A source cannot be opened: camera not found, unsupported or corrupt video, empty folder."""


class Extractor(Protocol):
    """What :func:`track` needs from an extractor."""

    def extract(self, image: np.ndarray, max_keypoints: int = ...) -> Features: ...


# ---------------------------------------------------------------------------------------------- sources


@dataclass
class RawFrame:
    """One frame as delivered by a source, before validation.

    Attributes:
        source_index: position in the source, counting frames that fail to decode.
        timestamp: seconds (video position, a numeric file name, or wall-clock time for live sources).
        image: RGB uint8 [H, W, 3] (or any array :func:`zippy.image.to_rgb_uint8` accepts); None when
            the frame could not be read.
        error: why ``image`` is None (or "" when it is not).
    """

    source_index: int
    timestamp: float
    image: np.ndarray | None
    error: str = ""


class VideoSource:
    """Frames from cv2.VideoCapture: a camera index, a video file or a stream URL.

    Args:
        target: camera index (int), video file path, or URL (anything with "://").
        max_read_failures: consecutive failed reads (50 ms apart for live sources) that end the
            stream; a file also ends at the first failed read past its frame count.
        timeout_ms: open and read timeout for URLs.

    Raises:
        FileNotFoundError: a video file that does not exist.
        SourceError: the camera, file or URL cannot be opened.
    """

    def __init__(self, target: int | str | os.PathLike, *, max_read_failures: int = 10, timeout_ms: int = 10000):
        import cv2

        self.max_read_failures = max_read_failures
        self.live = True
        if isinstance(target, int):
            self.description = f"camera {target}"
            self._cap = cv2.VideoCapture(target)
            hint = "no such camera, or it is in use (list devices with `v4l2-ctl --list-devices` on Linux)"
        elif "://" in str(target):
            self.description = f"stream {target}"
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
            self._cap = cv2.VideoCapture(str(target), cv2.CAP_ANY, params)
            hint = "unreachable address, unsupported protocol, or timeout"
        else:
            path = Path(target)
            if not path.is_file():
                raise FileNotFoundError(f"video file not found: {path}")
            self.description = f"video {path}"
            self.live = False
            self._cap = cv2.VideoCapture(str(path))
            hint = "not a video, corrupt, or a codec this OpenCV build cannot decode"
        if not self._cap.isOpened():
            self._cap.release()
            raise SourceError(f"cannot open {self.description}: {hint}")
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps: float | None = fps if math.isfinite(fps) and 0 < fps < 1000 else None
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count: int | None = count if count > 0 and not self.live else None

    def frames(self) -> Iterator[RawFrame]:
        """Yield frames until the end of the stream (see :class:`RawFrame`).

        Failed reads followed by a good frame are yielded as unreadable frames; a run of
        ``max_read_failures`` failed reads (or, for a file, one failed read past its last frame)
        ends the stream.
        """
        import cv2

        index, failures = 0, 0
        while True:
            ok, bgr = self._cap.read()
            if ok and bgr is not None and bgr.size:
                for k in range(failures):
                    yield RawFrame(index - failures + k, time.time(), None, "frame could not be read or decoded")
                failures = 0
                ts = time.time() if self.live else index / (self.fps or 30.0)
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if bgr.ndim == 3 and bgr.shape[2] == 3 else bgr
                yield RawFrame(index, ts, rgb)
                index += 1
                continue
            failures += 1
            index += 1
            frames_left = self.frame_count is not None and index - 1 < self.frame_count
            if not (self.live or frames_left) or failures >= self.max_read_failures:
                if self.frame_count is not None and index - failures < self.frame_count:
                    logger.warning("%s: ended after %d of %d frames (truncated or corrupt file)",
                                   self.description, index - failures, self.frame_count)  # fmt: skip
                elif self.live:
                    logger.info("%s: %d reads failed in a row: end of stream", self.description, failures)
                return
            if self.live:
                time.sleep(0.05)

    def close(self) -> None:
        """Release the capture device or file."""
        self._cap.release()


class ImageFolderSource:
    """Frames from the image files of a folder, in sorted file-name order.

    Timestamps are the file names when they are numbers (TUM RGB-D style), else ``index / fps``.

    Raises:
        FileNotFoundError: the folder does not exist.
        SourceError: it holds no image files.
    """

    def __init__(self, folder: str | os.PathLike, *, fps: float | None = None):
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"image folder not found: {folder}")
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not self.files:
            raise SourceError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in folder {folder}")
        self.description = f"folder {folder} ({len(self.files)} images)"
        self.fps = fps
        self.live = False
        self.frame_count: int | None = len(self.files)

    def frames(self) -> Iterator[RawFrame]:
        """Yield one frame per file; unreadable files give a frame with ``image=None``."""
        from zippy.image import read_image

        for index, path in enumerate(self.files):
            try:
                ts = float(path.stem)
            except ValueError:
                ts = index / (self.fps or 30.0)
            try:
                yield RawFrame(index, ts, read_image(path))
            except (ValueError, OSError) as e:
                yield RawFrame(index, ts, None, f"{path.name}: {e}")

    def close(self) -> None:
        """Nothing to release."""


class IterableSource:
    """Frames from an iterable of RGB uint8 arrays (None entries count as unreadable frames)."""

    def __init__(self, frames: Iterable[np.ndarray | None], *, fps: float | None = None):
        self._frames = frames
        self.description = f"{type(frames).__name__} of frames"
        self.fps = fps
        self.live = False
        self.frame_count: int | None = len(frames) if hasattr(frames, "__len__") else None

    def frames(self) -> Iterator[RawFrame]:
        """Yield the arrays as frames, timestamps ``index / fps``."""
        for index, image in enumerate(self._frames):
            ts = index / (self.fps or 30.0)
            yield RawFrame(index, ts, image, "" if image is not None else "frame is None")

    def close(self) -> None:
        """Close the iterable when it is a generator."""
        close = getattr(self._frames, "close", None)
        if callable(close):
            close()


Source = VideoSource | ImageFolderSource | IterableSource


def open_source(source: Any, *, fps: float | None = None) -> Source:
    """Open a frame source.

    Args:
        source: a camera index (int, or a string of digits), a video file, an image folder, a URL
            ("rtsp://...", "http://..."), an iterable of RGB uint8 arrays, or an already opened source.
        fps: nominal frame rate for sources that have none (folders, iterables).

    Raises:
        FileNotFoundError: a path that does not exist.
        SourceError: the source exists but cannot be opened.
        ValueError: ``source`` is of no supported kind.
    """
    if isinstance(source, VideoSource | ImageFolderSource | IterableSource):
        return source
    if isinstance(source, bool):
        raise ValueError(f"source must be a camera index, path, URL or iterable of frames, got {source!r}")
    if isinstance(source, int):
        return VideoSource(source)
    if isinstance(source, str) and source.strip().isdigit():
        return VideoSource(int(source))
    if isinstance(source, str | os.PathLike):
        if "://" in str(source):
            return VideoSource(str(source))
        path = Path(source)
        if path.is_dir():
            return ImageFolderSource(path, fps=fps)
        if not path.exists():
            raise FileNotFoundError(f"source not found: {path} (expected a camera index, video file, folder or URL)")
        return VideoSource(path)
    if isinstance(source, Iterable) and not isinstance(source, bytes | np.ndarray):
        return IterableSource(source, fps=fps)
    raise ValueError(f"source must be a camera index, path, URL or iterable of frames, got {type(source).__name__}")


# ---------------------------------------------------------------------------------------------- tracking


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
        times: milliseconds per stage (:data:`STAGES`).
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


def parse_size(text: str) -> tuple[int, int]:
    """Parse "HxW" (e.g. "240x320") into (height, width) >= 16 px each.

    Raises:
        ValueError: not two positive integers joined by "x", or smaller than 16 px.
    """
    parts = str(text).lower().replace("*", "x").split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"size must be HEIGHTxWIDTH like 240x320, got {text!r}") from None
    if h < 16 or w < 16:
        raise ValueError(f"size must be at least 16x16, got {text!r}")
    return h, w


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
    """Mutual nearest neighbours: Hamming for packed binary descriptors, L2 for float ones."""
    from zippy import matching

    fn = matching.match_hamming if binary else matching.match_l2
    if binary:
        logger.debug("Hamming kernels ready in %.2f s", matching.warmup())  # compile now, not on frame 1

    def match(d0: np.ndarray, d1: np.ndarray) -> np.ndarray:
        return fn(d0, d1, mutual=True)[0]

    return match


class Tracker:
    """Frame-to-frame and frame-to-keyframe matching with robust geometry, one frame at a time.

    Feed working-size RGB frames to :meth:`process` in order; :meth:`reset` restarts tracking.

    Args:
        extractor: object with ``.extract(rgb_uint8, max_keypoints=...) -> Features``.
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
        extractor: Extractor,
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
        self.K = None if intrinsics is None else _camera_matrix(parse_intrinsics(intrinsics))
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
        p0 = f0.keypoints[matches[:, 0]].astype(np.float64)
        p1 = f1.keypoints[matches[:, 1]].astype(np.float64)
        if self.K is None:
            threshold = 3.0 if self.ransac_threshold is None else self.ransac_threshold
            H, inliers = _homography(p0, p1, threshold, self.robust)
            return PairResult(ref_index, matches, inliers, "homography", H)
        threshold = 1.0 if self.ransac_threshold is None else self.ransac_threshold
        E, R, t, inliers = _relative_pose(p0, p1, self.K, threshold, self.robust)
        return PairResult(ref_index, matches, inliers, "essential", E, R, t)


def _camera_matrix(intrinsics: tuple[float, float, float, float]) -> np.ndarray:
    fx, fy, cx, cy = intrinsics
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def scale_intrinsics(
    intrinsics: tuple[float, float, float, float], scale: tuple[float, float]
) -> tuple[float, float, float, float]:
    """Intrinsics of an image resized by (sx, sy), pixel centres at integers (x -> (x + 0.5) s - 0.5)."""
    fx, fy, cx, cy = intrinsics
    sx, sy = scale
    return fx * sx, fy * sy, (cx + 0.5) * sx - 0.5, (cy + 0.5) * sy - 0.5


def _homography(p0: np.ndarray, p1: np.ndarray, threshold: float, robust: str) -> tuple[np.ndarray | None, np.ndarray]:
    """Robust homography p0 -> p1: (H float64 [3,3] or None, inlier mask bool [N])."""
    from zippy.geometry import estimate_homography

    return estimate_homography(p0, p1, threshold=threshold, max_iters=MAX_ITERS, confidence=CONFIDENCE, method=robust)


def _relative_pose(
    p0: np.ndarray, p1: np.ndarray, K: np.ndarray, threshold: float, robust: str = DEFAULT_ROBUST
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, np.ndarray]:
    """Essential matrix and the pose recovered from it: (E, R, t, inlier mask bool [N]); Nones on failure.

    The inliers are those of the essential matrix that also pass the cheirality check of recoverPose.
    """
    import cv2

    n = len(p0)
    none = (None, None, None, np.zeros(n, bool))
    if n < 5:
        return none
    from zippy.geometry import robust_flag

    method = robust_flag(robust)
    try:
        E, mask = cv2.findEssentialMat(p0, p1, K, method, CONFIDENCE, threshold, MAX_ITERS)
        if E is None or mask is None or E.shape[0] < 3:
            return none
        E = E[:3]  # several solutions may come stacked; the first is the best-scoring one
        _, R, t, pose_mask = cv2.recoverPose(E, p0, p1, K, mask=mask.copy())
    except cv2.error as e:  # degenerate configurations: a failed estimate, not a failed stream
        logger.debug("essential matrix estimation failed: %s", e)
        return none
    return E, R, t.ravel(), pose_mask.ravel() > 0


# ---------------------------------------------------------------------------------------------- stream


@dataclass
class SkippedFrame:
    """A frame of the source that was not processed, and why."""

    source_index: int
    reason: str


class Stream:
    """Iterator of :class:`FrameResult` over a source; see :func:`track`.

    Attributes:
        source: the opened source (``.description``, ``.fps``).
        skipped: frames that were not processed, with reasons.
        end_reason: why iteration ended ("end of stream", "max frames"; "" while running).
        processed: number of frames yielded so far.
    """

    def __init__(
        self,
        source: Any,
        extractor: Extractor,
        *,
        size: tuple[int, int] | None = (240, 320),
        max_keypoints: int = 500,
        keyframe_ratio: float = 0.5,
        intrinsics: tuple[float, float, float, float] | str | None = None,
        max_frames: int | None = None,
        fps: float | None = None,
        ransac_threshold: float | None = None,
        robust: str = DEFAULT_ROBUST,
        matcher: Matcher | None = None,
    ):
        if size is not None:
            if not (len(size) == 2 and all(isinstance(v, int | np.integer) and v >= 16 for v in size)):
                raise ValueError(f"size must be (height, width) integers >= 16 or None, got {size!r}")
            size = (int(size[0]), int(size[1]))
        if max_frames is not None and not (isinstance(max_frames, int | np.integer) and max_frames > 0):
            raise ValueError(f"max_frames must be a positive integer or None, got {max_frames!r}")
        self.size = size
        self.max_frames = max_frames
        self.intrinsics = None if intrinsics is None else parse_intrinsics(intrinsics)
        self.tracker = Tracker(
            extractor,
            max_keypoints=max_keypoints,
            keyframe_ratio=keyframe_ratio,
            ransac_threshold=ransac_threshold,
            robust=robust,
            matcher=matcher,
        )
        self.skipped: list[SkippedFrame] = []
        self.end_reason = ""
        self.processed = 0
        self.source = open_source(source, fps=fps)
        self._closed = False

    @property
    def fps(self) -> float | None:
        """Nominal frame rate of the source (None when unknown)."""
        return self.source.fps

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the source (safe to call more than once)."""
        if not self._closed:
            self._closed = True
            self.source.close()

    def _skip(self, source_index: int, reason: str) -> None:
        self.skipped.append(SkippedFrame(source_index, reason))
        logger.warning("%s: skipped frame %d: %s", self.source.description, source_index, reason)

    def __iter__(self) -> Iterator[FrameResult]:
        from zippy.image import resize_image, to_rgb_uint8

        if self._closed:
            raise ValueError("stream is closed")
        raw_size: tuple[int, int] | None = None  # (h, w) of the source frames being tracked
        work_size: tuple[int, int] | None = self.size  # (h, w) of the frames given to the tracker
        frames = self.source.frames()
        try:
            while self.max_frames is None or self.processed < self.max_frames:
                t0 = time.perf_counter()
                raw = next(frames, None)
                t1 = time.perf_counter()
                if raw is None:
                    self.end_reason = "end of stream"
                    return
                if raw.image is None:
                    self._skip(raw.source_index, raw.error or "no image")
                    continue
                try:
                    rgb = to_rgb_uint8(raw.image, name="frame")
                except ValueError as e:
                    self._skip(raw.source_index, str(e))
                    continue
                h, w = rgb.shape[:2]
                if raw_size is None:
                    raw_size = (h, w)
                    work_size = work_size or raw_size
                    if self.intrinsics is not None:
                        scale0 = (work_size[1] / w, work_size[0] / h)
                        self.tracker.K = _camera_matrix(scale_intrinsics(self.intrinsics, scale0))
                elif (h, w) != raw_size:
                    logger.warning(
                        "%s: frame %d is %dx%d, earlier frames were %dx%d: resized to the working size, tracking "
                        "restarted",
                        self.source.description, raw.source_index, h, w, raw_size[0], raw_size[1],
                    )  # fmt: skip
                    raw_size = (h, w)
                    self.tracker.reset()
                work_h, work_w = work_size or raw_size
                rgb = resize_image(rgb, work_w, work_h)
                t2 = time.perf_counter()
                result = self.tracker.process(
                    rgb,
                    index=self.processed,
                    source_index=raw.source_index,
                    timestamp=raw.timestamp,
                    scale=(work_w / w, work_h / h),
                )
                result.times = {"read": (t1 - t0) * 1e3, "resize": (t2 - t1) * 1e3, **result.times}
                self.processed += 1
                yield result
            self.end_reason = "max frames"
        finally:
            frames.close()


def track(source: Any, extractor: Extractor, **kwargs: Any) -> Stream:
    """Open ``source`` and track keypoints through it with ``extractor``.

    Args:
        source: camera index (0 or "0"), video file, image folder (sorted names), URL, or an iterable
            of RGB uint8 arrays.
        extractor: any object with ``.extract(rgb_uint8, max_keypoints=...) -> Features``.
        **kwargs: options of :class:`Stream`: ``size=(240, 320)`` (height, width; None keeps the
            first frame's size), ``max_keypoints=500``, ``keyframe_ratio=0.5``, ``intrinsics=None``
            ((fx, fy, cx, cy) or "fx,fy,cx,cy" in source pixels: switches to essential matrix and
            relative pose), ``max_frames=None``, ``fps=None``, ``ransac_threshold=None`` (3 px for
            homographies, 1 px for the essential matrix), ``robust="magsac"`` (or "fast", "ransac"), ``matcher=None``.

    Returns:
        A :class:`Stream`: iterate it for :class:`FrameResult` objects; close it (or use ``with``)
        to release the source early.

    Raises:
        FileNotFoundError: a path that does not exist.
        SourceError: a camera, file, URL or folder that cannot be opened.
        ValueError: invalid options.
    """
    return Stream(source, extractor, **kwargs)
