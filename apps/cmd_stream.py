"""`zippy stream`: live keypoints and tracking on a camera, video file, image folder or stream URL.

The loop is :func:`run_stream` (drawing, window, annotated video, JSONL stats log, summary) over the
iterator of :func:`zippy_apps.stream.track`; the benchmark (``zippy_eval.bench_stream``) runs the same loop.

Outputs are finalized on every exit path (end of stream, ``--max-frames``, q / Esc in the window,
Ctrl-C, an error): the video and log are written under temporary names (:mod:`zippy.io`) and renamed at the end,
and the summary (mean / p50 / p90 FPS and stage times) is printed and written next to the log as
``<log stem>.summary.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from zippy.threads import set_threads, thread_info

logger = logging.getLogger(__name__)

HELP = "live keypoints and tracking on a camera, video file, image folder or stream URL"

VIDEO_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "XVID"}
WINDOW = "zippy stream"
WARMUP_FRAMES = 1
"""Frames left out of the summary statistics (the first frame pays for lazy initialization)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `zippy stream`."""
    from zippy.geometry import ROBUST_METHODS
    from zippy.tracking import DEFAULT_ROBUST

    parser.add_argument("--source", default="0", help="camera index, video file, image folder or URL (default 0)")
    parser.add_argument("--size", default="240x320", help="working size HEIGHTxWIDTH, or 'native' (default 240x320)")
    parser.add_argument("--headless", action="store_true", help="no window even when a display exists")
    parser.add_argument("--out", type=Path, help="annotated video to write (.mp4, .avi, .mkv, .mov)")
    parser.add_argument("--log", type=Path, help="per-frame stats as JSON lines; summary beside it")
    parser.add_argument("--max-frames", type=int, help="stop after N processed frames")
    parser.add_argument("--intrinsics", help="fx,fy,cx,cy in source pixels: essential matrix and relative pose")
    parser.add_argument(
        "--model",
        default="zippypoint_small",
        help="zippy model (default zippypoint_small, the fast shipped variant; zippypoint: the accurate one) "
        "or a baseline (orb, sift, ...)",
    )
    parser.add_argument("--weights", type=Path, help="weights file of a zippy backbone (default: shipped)")
    parser.add_argument("--engine", default="auto", help="zippy engine: auto, int8, fp32, onnx (default auto)")
    parser.add_argument("--max-keypoints", type=int, default=500, help="keypoints per frame (default 500)")
    parser.add_argument(
        "--keyframe-ratio", type=float, default=0.5, help="new keyframe below this fraction of inliers (default 0.5)"
    )
    parser.add_argument(
        "--ransac-threshold", type=float, help="RANSAC threshold in px (default 3 for homography, 1 for essential)"
    )
    parser.add_argument(
        "--robust",
        default=DEFAULT_ROBUST,
        choices=list(ROBUST_METHODS),
        help="robust estimator: OpenCV USAC_MAGSAC (default), USAC_FAST or RANSAC",
    )
    parser.add_argument("--fps", type=float, help="frame rate of folders and of the output video if unknown")
    parser.add_argument("--threads", type=int, help="CPU threads for OpenCV and torch (default: library default)")
    parser.add_argument(
        "--loops",
        action="store_true",
        help="detect loop closures between keyframes (zippy.loop; printed, and listed in the summary)",
    )
    parser.add_argument("--vocab", type=Path, help="vocabulary for --loops (default: the shipped one)")


def run(args: argparse.Namespace) -> int:
    """Run the stream app; returns 0, or 130 when interrupted with Ctrl-C."""
    from .draw import display_available
    from .stream import parse_intrinsics, parse_size, track

    size = None if str(args.size).lower() == "native" else parse_size(args.size)
    intrinsics = parse_intrinsics(args.intrinsics) if args.intrinsics else None
    if args.max_frames is not None and args.max_frames <= 0:
        raise ValueError(f"--max-frames must be > 0, got {args.max_frames}")
    if args.threads is not None and args.threads <= 0:
        raise ValueError(f"--threads must be > 0, got {args.threads}")
    if args.fps is not None and not (math.isfinite(args.fps) and args.fps > 0):
        raise ValueError(f"--fps must be a positive number, got {args.fps}")
    check_output_paths(args.out, args.log)

    extractor = load_extractor(args.model, engine=args.engine, weights=args.weights)
    if args.threads is not None:
        set_threads(args.threads)
    display = False
    if not args.headless:
        display = display_available()
        if not display:
            logger.info("no display available (or OpenCV without GUI support): running headless")
    stream = track(
        args.source,
        extractor,
        size=size,
        max_keypoints=args.max_keypoints,
        keyframe_ratio=args.keyframe_ratio,
        intrinsics=intrinsics,
        max_frames=args.max_frames,
        fps=args.fps,
        ransac_threshold=args.ransac_threshold,
        robust=args.robust,
    )
    info = {
        "source": stream.source.description,
        "model": method_info(extractor, args.model),
        "size": None if size is None else list(size),
        "max_keypoints": args.max_keypoints,
        "keyframe_ratio": args.keyframe_ratio,
        "intrinsics": None if intrinsics is None else list(intrinsics),
        "ransac_threshold": args.ransac_threshold,
        "robust": args.robust,
    }
    on_result = None
    if args.loops:
        on_result, info["loops"] = loop_callback(extractor, args.vocab)
    summary = run_stream(
        stream, out=args.out, log=args.log, display=display, fps=args.fps, info=info, on_result=on_result
    )
    print(format_summary(summary))
    if summary["interrupted"]:
        return 130
    if summary["frames"] == 0:
        skipped = summary["skipped"]
        why = f"; first: {skipped[0]['reason']}" if skipped else ""
        raise ValueError(f"no frame processed from {info['source']}: {len(skipped)} frame(s) skipped{why}")
    return 0


def loop_callback(extractor: Any, vocab: Path | None) -> tuple[Callable[[Any], None], list[dict[str, Any]]]:
    """A run_stream ``on_result`` that feeds the keyframes (as ORB-SLAM does; every frame would fill memory at
    camera rates) to a :class:`zippy.loop.LoopDetector`, prints the loops it accepts, and the list they are
    recorded in (the summary's "loops"; ``frame`` / ``match`` count keyframes, ``source_index`` /
    ``match_source_index`` are the frames' positions in the source)."""
    from zippy.loop import LoopDetector
    from zippy.vocabulary import Vocabulary

    voc = Vocabulary.load(vocab)
    voc.check_extractor(extractor)
    detector = LoopDetector(voc)
    loops: list[dict[str, Any]] = []
    sources: list[int] = []

    def on_result(result: Any) -> None:
        if sources and not result.new_keyframe:
            return
        sources.append(result.source_index)
        loop = detector.process(result.features)
        if loop.detected:
            loops.append(loop.to_dict() | {"source_index": sources[-1], "match_source_index": sources[loop.match]})
            print(f"loop: frame {sources[-1]} -> frame {sources[loop.match]} (keyframes {loop.frame} -> {loop.match}, "
                  f"score {loop.score:.3f}, {loop.inliers} inliers)")  # fmt: skip

    return on_result, loops


def check_output_paths(out: Path | None, log: Path | None) -> None:
    """Fail before opening the source when an output cannot be written (missing folders are created later).

    Raises:
        ValueError: unknown video extension, or --out and --log are the same file.
        IsADirectoryError: an output names an existing folder.
        NotADirectoryError: an output folder cannot be created (a file is in the way).
    """
    if out is not None and out.suffix.lower() not in VIDEO_FOURCC:
        raise ValueError(f"--out must end in one of {sorted(VIDEO_FOURCC)}, got {out.name!r}")
    if out is not None and log is not None and out.resolve() == log.resolve():
        raise ValueError(f"--out and --log name the same file: {out}")
    for path in (out, log):
        if path is None:
            continue
        if path.is_dir():
            raise IsADirectoryError(f"output {path} is a folder: give a file name")
        folder = path.resolve().parent  # created when the output is written; what exists must be a folder
        while not folder.exists():
            folder = folder.parent
        if not folder.is_dir():
            raise NotADirectoryError(f"cannot create the folder of {path}: {folder} is a file")


def load_extractor(name: str, *, engine: str = "auto", weights: Path | None = None) -> Any:
    """A zippy backbone or a baseline from ``zippy_eval.methods`` by name (ValueError lists the choices)."""
    from zippy.config import ExtractorConfig
    from zippy_eval.methods import MethodUnavailableError, get_method

    try:
        method = get_method(name, weights=weights, extractor=ExtractorConfig(engine=engine))
    except MethodUnavailableError as e:
        raise ValueError(str(e)) from e
    trained = method.info().get("params", {}).get("trained")
    if trained is False:
        logger.warning("%s has untrained (random) weights: keypoints and matches are meaningless", name)
    return method


def method_info(extractor: Any, name: str) -> dict[str, Any]:
    """``extractor.info()`` when it has one, else its name and type."""
    info = getattr(extractor, "info", None)
    return dict(info()) if callable(info) else {"name": name, "type": type(extractor).__name__}


class _Outputs:
    """The annotated video and the JSONL log, written under temporary names (:mod:`zippy.io`) until
    :meth:`finalize` moves them into place."""

    def __init__(self, out: Path | None, log: Path | None, fps: float):
        from zippy.io import AtomicFile, remove_temps_of

        for path in (out, log):  # what a killed run left
            if path is not None:
                remove_temps_of(path)
                if path == log:
                    remove_temps_of(summary_path(path))
        self.out, self.log, self.fps = out, log, fps
        self.video_frames = 0
        self._writer: Any = None
        self._log = None if log is None else AtomicFile(log, "w", buffering=1)
        try:
            self._video = None if out is None else AtomicFile(out, "wb")
        except BaseException:
            if self._log is not None:
                self._log.discard()
            raise
        if self._video is not None:
            self._video.file.close()  # OpenCV writes the temporary file by name
        self._video_tmp = None if self._video is None else self._video.tmp

    def write_frame(self, image: np.ndarray) -> None:
        import cv2

        if self._video_tmp is None:
            return
        if self._writer is None:
            assert self.out is not None
            h, w = image.shape[:2]
            fourcc = cv2.VideoWriter_fourcc(*VIDEO_FOURCC[self.out.suffix.lower()])
            self._writer = cv2.VideoWriter(str(self._video_tmp), fourcc, self.fps, (w, h))
            if not self._writer.isOpened():
                raise ValueError(f"cannot write video {self.out} (codec {VIDEO_FOURCC[self.out.suffix.lower()]})")
        self._writer.write(image)
        self.video_frames += 1

    def write_record(self, record: dict[str, Any]) -> None:
        if self._log is not None:
            self._log.write(json.dumps(record, allow_nan=False) + "\n")

    def finalize(self) -> dict[str, str | None]:
        """Close and rename the outputs; returns their final paths (None when not written)."""
        paths: dict[str, str | None] = {"video": None, "log": None}
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        try:
            if self._video is not None and not self._video.done:
                if self.video_frames and self._video.tmp.stat().st_size:
                    paths["video"] = str(self._video.commit())
                else:
                    logger.warning("no frames were processed: no video written to %s", self.out)
                    self._video.discard()
            if self._log is not None and not self._log.done:
                paths["log"] = str(self._log.commit())
        finally:  # an error above leaves no temporary file behind
            for f in (self._video, self._log):
                if f is not None and not f.done:
                    f.discard()
        return paths


def run_stream(
    stream: Any,
    *,
    out: Path | None = None,
    log: Path | None = None,
    display: bool = False,
    fps: float | None = None,
    info: dict[str, Any] | None = None,
    on_result: Callable[[Any], None] | None = None,
    progress: bool = True,
    warmup: int = WARMUP_FRAMES,
) -> dict[str, Any]:
    """Draw, show, write and log every frame of ``stream``; return the summary.

    Args:
        stream: a :class:`zippy_apps.stream.Stream` (closed on return).
        out: annotated video path (BGR frames at the working size).
        log: JSONL path: one :meth:`FrameResult.to_dict` record per frame with ``times_ms`` completed by
            "draw", "write", "display" and "total" (wall time of the whole frame, read to display) and
            the instantaneous "fps". The summary goes to ``<log stem>.summary.json``.
        display: show a window (q or Esc stops).
        fps: output video frame rate when the source has none (default 30).
        info: extra fields for the summary (model, options).
        on_result: called with each FrameResult after it is drawn (e.g. to check geometry).
        progress: tqdm progress bar.
        warmup: first frames left out of the statistics.

    Returns:
        The summary (see :func:`summarize`) with "frames", "interrupted", "end_reason", "skipped",
        "outputs", the statistics and ``info``.
    """
    from tqdm import tqdm

    from .draw import Drawer, show

    outputs = _Outputs(out, log, fps=stream.fps or fps or 30.0)
    drawer = Drawer()
    totals: list[dict[str, float]] = []
    keyframes = 0
    interrupted = False
    stopped_by_user = False
    started = time.time()
    ema_ms: float | None = None
    last_draw_ms = 0.0
    total = stream.max_frames or stream.source.frame_count
    bar = tqdm(total=total, unit="frame", disable=not progress, leave=False)
    try:
        t_prev = time.perf_counter()
        for result in stream:
            t0 = time.perf_counter()
            shown = {**result.times, "draw": last_draw_ms}  # drawing this frame is not timed yet: show the last
            canvas = drawer.draw(result, fps=None if ema_ms is None else 1000.0 / ema_ms, times=shown)
            t1 = time.perf_counter()
            outputs.write_frame(canvas)
            t2 = time.perf_counter()
            if display and not show(WINDOW, canvas):
                stopped_by_user = True
            t3 = time.perf_counter()
            times = dict(result.times)
            times.update(draw=(t1 - t0) * 1e3, write=(t2 - t1) * 1e3, display=(t3 - t2) * 1e3)
            last_draw_ms = times["draw"]
            times["total"] = (t3 - t_prev) * 1e3
            t_prev = t3
            ema_ms = times["total"] if ema_ms is None else 0.9 * ema_ms + 0.1 * times["total"]
            keyframes += int(result.new_keyframe)
            totals.append(times)
            record = result.to_dict()
            record["times_ms"] = {k: round(v, 3) for k, v in times.items()}
            record["fps"] = round(1000.0 / times["total"], 2) if times["total"] > 0 else None
            outputs.write_record(record)
            if on_result is not None:
                on_result(result)
            bar.update(1)
            if stopped_by_user:
                break
    except KeyboardInterrupt:
        interrupted = True
        logger.warning("interrupted: finalizing outputs after %d frames", len(totals))
    finally:
        bar.close()
        stream.close()
        paths = outputs.finalize()
        if display:
            _close_windows()
        end_reason = (
            "interrupted" if interrupted else "stopped in window" if stopped_by_user else stream.end_reason or "error"
        )
        summary = {
            "frames": len(totals),
            "keyframes": keyframes,
            "interrupted": interrupted,
            "end_reason": end_reason,
            "skipped": [{"source_index": s.source_index, "reason": s.reason} for s in stream.skipped],
            "wall_s": round(time.time() - started, 3),
            **summarize(totals, warmup=warmup),
            "threads": thread_info(),
            "outputs": paths,
            **(info or {}),
        }
        if log is not None:
            from zippy_eval.results import write_json

            write_json(summary_path(log), summary)
    return summary


def _close_windows() -> None:
    import cv2

    try:
        cv2.destroyWindow(WINDOW)
    except cv2.error as e:
        logger.debug("window already closed: %s", e)


def summary_path(log: Path) -> Path:
    """``stats.jsonl`` -> ``stats.summary.json`` (same folder)."""
    return log.with_name(f"{log.stem}.summary.json")


def _stats(values: np.ndarray) -> dict[str, float | None]:
    if len(values) == 0:
        return {"mean": None, "p50": None, "p90": None}
    return {
        "mean": round(float(np.mean(values)), 3),
        "p50": round(float(np.percentile(values, 50)), 3),
        "p90": round(float(np.percentile(values, 90)), 3),
    }


def summarize(times: list[dict[str, float]], *, warmup: int = WARMUP_FRAMES) -> dict[str, Any]:
    """Frame-rate and stage-time statistics over per-frame stage times in ms.

    The first ``warmup`` frames are left out (all frames when there are no others). FPS figures are
    computed from the frame times ("total"): mean = frames / time, p50 = 1000 / median frame time,
    p90 = 1000 / 90th-percentile frame time (the rate 90% of frames reach or beat).

    Returns:
        {"stats_frames", "warmup_frames", "fps": {"mean", "p50", "p90"}, "times_ms": {stage: {"mean", "p50", "p90"}}}
    """
    used = times[warmup:] if len(times) > warmup else times
    stages: list[str] = []
    for t in used:
        stages += [k for k in t if k not in stages]
    times_ms = {k: _stats(np.array([t[k] for t in used if k in t], np.float64)) for k in stages}
    total = times_ms.get("total", {"mean": None, "p50": None, "p90": None})

    def rate(ms: float | None) -> float | None:
        return round(1000.0 / ms, 2) if ms else None

    return {
        "stats_frames": len(used),
        "warmup_frames": len(times) - len(used),
        "fps": {k: rate(v) for k, v in total.items()},
        "times_ms": times_ms,
    }


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable summary: frames, FPS and a stage-time table."""
    fps = summary.get("fps", {})

    def f(v: float | None) -> str:
        return "-" if v is None or not math.isfinite(v) else f"{v:.1f}"

    lines = [
        f"{summary['frames']} frames ({summary['end_reason']}), {summary['keyframes']} keyframes, "
        f"{len(summary['skipped'])} skipped",
        f"FPS mean {f(fps.get('mean'))}  p50 {f(fps.get('p50'))}  p90 {f(fps.get('p90'))}",
        f"{'stage':<10}{'mean ms':>9}{'p50':>8}{'p90':>8}",
    ]
    for stage, s in summary.get("times_ms", {}).items():
        lines.append(f"{stage:<10}{f(s['mean']):>9}{f(s['p50']):>8}{f(s['p90']):>8}")
    for key, path in summary.get("outputs", {}).items():
        if path:
            lines.append(f"{key}: {path}")
    return "\n".join(lines)
