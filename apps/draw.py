"""Drawing stream results: keypoints, match tracks, inlier counts, FPS and per-stage milliseconds.

Everything is drawn with a few vectorized OpenCV / numpy calls so that drawing costs about a
millisecond at 240x320 and does not dominate the frame rate it reports.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import deque
from collections.abc import Mapping

import numpy as np

from .stream import FrameResult

logger = logging.getLogger(__name__)

__all__ = ["Drawer", "display_available", "show"]

# BGR colours
TRACKED = (60, 220, 60)  # keypoints that are inlier matches of the previous frame, and their tracks
UNTRACKED = (40, 40, 230)  # keypoints without an inlier match
TEXT = (255, 255, 255)
OUTLINE = (0, 0, 0)
KEYFRAME = (0, 200, 255)

STAGE_LABELS = {"read": "read", "resize": "rsz", "extract": "ext", "match": "mat", "geometry": "geo", "draw": "draw"}


class Drawer:
    """Draws :class:`~zippy_apps.stream.FrameResult` objects; keeps recent positions per track id.

    Args:
        track_length: frames of history drawn behind each tracked keypoint (0: no tracks).
        text: draw the text overlay (counts, FPS, stage times).
    """

    def __init__(self, *, track_length: int = 6, text: bool = True):
        if not (isinstance(track_length, int) and track_length >= 0):
            raise ValueError(f"track_length must be an integer >= 0, got {track_length!r}")
        self.track_length = track_length
        self.text = text
        self._history: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=max(track_length, 1))

    def reset(self) -> None:
        """Forget the track history."""
        self._history.clear()

    def draw(
        self, result: FrameResult, *, fps: float | None = None, times: Mapping[str, float] | None = None
    ) -> np.ndarray:
        """Draw one frame.

        Args:
            result: the frame to draw (its image is RGB uint8 [H, W, 3]).
            fps: frames per second to show (None: not shown).
            times: milliseconds per stage to show (default ``result.times``).

        Returns:
            BGR uint8 [H, W, 3], a new array (``result.image`` is not modified).
        """
        import cv2

        canvas = cv2.cvtColor(result.image, cv2.COLOR_RGB2BGR)
        kpts = result.features.keypoints
        ids = result.track_ids
        tracked = np.zeros(len(kpts), bool)
        if result.to_prev is not None and result.to_prev.num_matches:
            tracked[result.to_prev.matches[result.to_prev.inliers, 1]] = True
        if self.track_length and tracked.any():
            self._draw_tracks(canvas, kpts[tracked], ids[tracked])
        _dots(canvas, kpts[~tracked], UNTRACKED)
        _dots(canvas, kpts[tracked], TRACKED)
        order = np.argsort(ids, kind="stable")
        self._history.appendleft((ids[order], kpts[order]))
        if result.new_keyframe:
            h, w = canvas.shape[:2]
            cv2.rectangle(canvas, (0, 0), (w - 1, h - 1), KEYFRAME, 2)
        if self.text:
            _put_lines(canvas, _overlay_lines(result, fps, result.times if times is None else times))
        return canvas

    def _draw_tracks(self, canvas: np.ndarray, kpts: np.ndarray, ids: np.ndarray) -> None:
        """Polylines through the last positions of each tracked keypoint (newest first)."""
        import cv2

        steps = [kpts.astype(np.float32)]
        alive = np.ones(len(ids), bool)
        for past_ids, past_pts in list(self._history)[: self.track_length]:
            if len(past_ids) == 0:
                break
            pos = np.clip(np.searchsorted(past_ids, ids), 0, len(past_ids) - 1)
            alive &= past_ids[pos] == ids
            if not alive.any():
                break
            steps.append(np.where(alive[:, None], past_pts[pos], np.nan).astype(np.float32))
        if len(steps) < 2:
            return
        path = np.stack(steps, axis=1)  # [M, L, 2]; a track's valid positions are a prefix
        lengths = np.isfinite(path[:, :, 0]).sum(1)
        # pad each track with its oldest position (zero-length segments) so one [M, L, 2] array
        # goes to a single polylines call: much faster than a list of M ragged arrays
        last = np.minimum(np.arange(path.shape[1])[None], lengths[:, None] - 1)
        pts = np.round(path[np.arange(len(path))[:, None], last]).astype(np.int32)
        cv2.polylines(canvas, pts, False, TRACKED, 1, cv2.LINE_8)


def _dots(canvas: np.ndarray, pts: np.ndarray, colour: tuple[int, int, int]) -> None:
    """2x2 px dots at rounded keypoint positions (numpy indexing: much faster than cv2.circle per point)."""
    if len(pts) == 0:
        return
    h, w = canvas.shape[:2]
    xy = np.round(pts).astype(np.int64)
    x = np.clip(xy[:, 0], 0, w - 2)
    y = np.clip(xy[:, 1], 0, h - 2)
    for dy in (0, 1):
        for dx in (0, 1):
            canvas[y + dy, x + dx] = colour


def _overlay_lines(result: FrameResult, fps: float | None, times: Mapping[str, float]) -> list[str]:
    head = f"#{result.index}  kf {result.keyframe_index}{' NEW' if result.new_keyframe else ''}"
    if fps is not None and np.isfinite(fps):
        head += f"  {fps:.1f} FPS"
    counts = f"kpts {len(result.features)}"
    for label, pair in (("prev", result.to_prev), ("key", result.to_key)):
        if pair is not None:
            counts += f"  {label} {pair.num_inliers}/{pair.num_matches}"
    stages = [f"{STAGE_LABELS.get(k, k)} {v:.1f}" for k, v in times.items() if k in STAGE_LABELS]
    lines = [head, counts]
    if stages:
        half = (len(stages) + 1) // 2
        lines += ["ms " + " ".join(stages[:half]), "   " + " ".join(stages[half:])]
    return lines


def _put_lines(canvas: np.ndarray, lines: list[str]) -> None:
    """White text with a black outline, top left, scaled to the image width."""
    import cv2

    scale = max(0.35, canvas.shape[1] / 900.0)
    step = round(36 * scale) + 3
    for i, line in enumerate(lines):
        org = (4, step * (i + 1) - 2)
        cv2.putText(canvas, line, org, cv2.FONT_HERSHEY_SIMPLEX, scale, OUTLINE, 2, cv2.LINE_AA)
        cv2.putText(canvas, line, org, cv2.FONT_HERSHEY_SIMPLEX, scale, TEXT, 1, cv2.LINE_AA)


def display_available() -> bool:
    """True when a window can be shown: a display exists (DISPLAY / WAYLAND_DISPLAY on Linux) and
    OpenCV has GUI support (the headless wheels do not)."""
    import cv2

    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        logger.debug("no DISPLAY / WAYLAND_DISPLAY: no window")
        return False
    try:
        cv2.namedWindow("zippy-probe", cv2.WINDOW_NORMAL)
        cv2.destroyWindow("zippy-probe")
    except cv2.error as e:
        logger.debug("OpenCV cannot open windows (%s)", str(e).strip().splitlines()[-1])
        return False
    return True


def show(window: str, image: np.ndarray) -> bool:
    """Show ``image`` (BGR) in ``window``; False when the user pressed q / Esc or closed the window."""
    import cv2

    cv2.imshow(window, image)
    key = cv2.waitKey(1) & 0xFF
    if key in (ord("q"), 27):
        return False
    return cv2.getWindowProperty(window, cv2.WND_PROP_VISIBLE) >= 1
