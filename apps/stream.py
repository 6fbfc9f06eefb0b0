"""Keypoint tracking on camera streams, video files, stream URLs and image folders.

The Python API of ``zippy stream``: :func:`track` opens a source and returns a :class:`Stream`, an
iterator of :class:`FrameResult` (one per processed frame) that a caller can plug into its own code,
e.g. a SLAM front end::

    extractor = zippy.load("zippypoint_small")  # the fast variant, `zippy stream`'s default
    with track("video.mp4", extractor, size=(240, 320)) as stream:
        for r in stream:
            print(r.index, len(r.features), r.to_prev.num_inliers if r.to_prev else 0)

Per frame: read, resize to the working size, then :class:`zippy.tracking.Tracker` (extract, match against the
previous frame and the keyframe, robust geometry). This module holds the sources and the loop; the tracking and
its geometry are the library's (:mod:`zippy.tracking`, :mod:`zippy.geometry`).

The extractor is a :class:`zippy.extractor.Extractor` or any object with the same
``.extract(rgb_uint8, max_keypoints=...) -> zippy.features.Features`` (e.g. the OpenCV baselines of
``zippy_eval.methods``).

Bad input inside a stream is not fatal: an unreadable, empty or invalid frame is skipped with a
warning (recorded in :attr:`Stream.skipped`); a frame whose size differs from the first one is
resized to the working size and restarts tracking (its matches would mix two image geometries).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from zippy.geometry import camera_matrix, scale_intrinsics
from zippy.tracking import (
    DEFAULT_ROBUST,
    FrameResult,
    Matcher,
    PairResult,
    Tracker,
    parse_intrinsics,
)

if TYPE_CHECKING:
    from zippy.extractor import Extractor

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


class SourceError(ValueError):
    """A source cannot be opened: camera not found, unsupported or corrupt video, empty folder."""


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
        extractor: Extractor | Any,
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
                        self.tracker.K = camera_matrix(scale_intrinsics(self.intrinsics, scale0))
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


def track(source: Any, extractor: Extractor | Any, **kwargs: Any) -> Stream:
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
