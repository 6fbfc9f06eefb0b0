"""Benchmark of the stream app: end-to-end frames per second including drawing, on one thread.

Runs the same loop as ``zippy stream --headless`` (:func:`zippy_apps.cmd_stream.run_stream`: read,
decode, resize, extract, match to the previous frame and to the keyframe, RANSAC, draw) for each
method on each source, and writes ``results/bench_stream/<tag>/``: ``summary.json`` (protocol,
environment with thread count and load, per-run FPS and stage times), ``summary.md`` and
``stage_times.png``.

Sources:
    * "synthetic": a video written here from a scikit-image photo panned, rotated and zoomed by known
      homographies (:func:`write_synthetic_video`); the fraction of frames whose estimated
      frame-to-frame homography is within 3 px mean corner error is recorded as a sanity check.
    * "tum": ``../shared/data/localization/tum_freiburg_sequence`` as an image folder (640x480 PNGs,
      decoded and resized every frame), when present.

zippy backbones run with the int8 engine when it is available (else "auto", recorded).
It lives in apps/ because it measures the app (dependencies point apps -> eval -> zippy).

Usage::

    OMP_NUM_THREADS=1 zippy bench stream --methods orb zippypoint --frames 200
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zippy.geometry import corner_error
from zippy.tracking import CONFIDENCE, DEFAULT_ROBUST, MAX_ITERS

logger = logging.getLogger(__name__)

__all__ = ["BenchConfig", "run", "synthetic_homographies", "write_synthetic_video"]

REPO_ROOT = Path(__file__).resolve().parents[1]
TUM_FOLDER = REPO_ROOT.parent / "shared" / "data" / "localization" / "tum_freiburg_sequence"
CORNER_THRESHOLD_PX = 3.0
TARGET_FPS = 30.0


def synthetic_homographies(n_frames: int, size: tuple[int, int], photo_size: tuple[int, int]) -> np.ndarray:
    """Homographies from photo pixels to each frame of a smooth pan + rotation + zoom.

    The frame centre follows a Lissajous path of radius 45 px around the photo centre, the rotation
    swings by +-12 degrees and the zoom between 1.0 and 1.15, one period over the sequence.

    Args:
        n_frames: number of frames (>= 2).
        size: frame (height, width).
        photo_size: photo (height, width).

    Returns:
        float64 [n_frames, 3, 3].
    """
    if n_frames < 2:
        raise ValueError(f"n_frames must be >= 2, got {n_frames}")
    h, w = size
    ph, pw = photo_size
    out = np.empty((n_frames, 3, 3))
    frame_centre = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    for i in range(n_frames):
        phase = 2.0 * np.pi * i / n_frames
        centre = np.array([(pw - 1) / 2.0 + 45.0 * np.sin(phase), (ph - 1) / 2.0 + 45.0 * np.sin(2.0 * phase)])
        angle = np.deg2rad(12.0) * np.sin(phase)
        zoom = 1.075 + 0.075 * np.cos(phase)
        rot = zoom * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        out[i] = np.eye(3)
        out[i, :2, :2] = rot
        out[i, :2, 2] = frame_centre - rot @ centre
    return out


def write_synthetic_video(
    path: str | os.PathLike,
    *,
    n_frames: int = 60,
    size: tuple[int, int] = (240, 320),
    fps: float = 30.0,
    photo: np.ndarray | None = None,
) -> np.ndarray:
    """Write a video of a photo seen by a panning, rotating, zooming camera.

    Args:
        path: video file (.mp4 written with the "mp4v" codec, .avi with "MJPG").
        n_frames: frames to write.
        size: frame (height, width).
        fps: frame rate stored in the file.
        photo: RGB uint8 [H, W, 3]; default ``skimage.data.astronaut()`` (512x512).

    Returns:
        float64 [n_frames - 1, 3, 3]: homography i maps pixels of frame i to pixels of frame i + 1.

    Raises:
        ValueError: the extension has no codec here, or OpenCV cannot write the file.
    """
    import cv2

    path = Path(path)
    codecs = {".mp4": "mp4v", ".avi": "MJPG"}
    if path.suffix.lower() not in codecs:
        raise ValueError(f"synthetic video must end in {sorted(codecs)}, got {path.name!r}")
    if photo is None:
        from skimage import data

        photo = data.astronaut()
    bgr = cv2.cvtColor(np.ascontiguousarray(photo), cv2.COLOR_RGB2BGR)
    h, w = size
    Hs = synthetic_homographies(n_frames, size, bgr.shape[:2])
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codecs[path.suffix.lower()]), fps, (w, h))
    if not writer.isOpened():
        raise ValueError(f"cannot write video {path}")
    try:
        for H in Hs:
            writer.write(cv2.warpPerspective(bgr, H, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
    finally:
        writer.release()
    return np.stack([Hs[i + 1] @ np.linalg.inv(Hs[i]) for i in range(n_frames - 1)])


@dataclass
class BenchConfig:
    """Benchmark protocol.

    Attributes:
        methods: extractor names (zippy backbones or ``zippy_eval.methods`` baselines; "zippypoint-proxy"
            times the int8 engine on an untrained, calibrated network while no trained weights exist).
        sources: "synthetic" and / or "tum".
        frames: frames of the synthetic video (the TUM folder has 17).
        size: working (height, width).
        max_keypoints: keypoints per frame.
        threads: CPU threads (OpenCV, torch, OMP env for libraries that read it at import).
        engine: zippy engine preferred; falls back to "auto" when it cannot be built.
        warmup: frames left out of the statistics.
        weights: {method: weights file} for zippy methods (default: the shipped weights).
    """

    methods: list[str] = field(default_factory=lambda: ["orb", "zippypoint"])
    sources: list[str] = field(default_factory=lambda: ["synthetic", "tum"])
    frames: int = 200
    size: tuple[int, int] = (240, 320)
    max_keypoints: int = 500
    threads: int = 1
    engine: str = "int8"
    warmup: int = 5
    weights: dict[str, str | None] = field(default_factory=dict)


class _SpeedProxy:
    """An untrained zippy network with calibrated activation ranges, for timing the int8 engine before
    trained weights exist: same layers and cost, meaningless keypoints."""

    def __init__(self, backbone: str, engine: str, size: tuple[int, int]):
        import cv2
        import torch
        from skimage import data

        from zippy.extractor import Extractor
        from zippy.models import build_network, default_config

        torch.manual_seed(0)
        model = build_network(default_config(backbone)).train()
        photo = cv2.resize(data.astronaut(), (size[1], size[0]), interpolation=cv2.INTER_AREA)
        x = torch.from_numpy(photo).permute(2, 0, 1)[None].float().div(255.0)
        with torch.no_grad():
            for _ in range(3):  # EMA ranges of the fake-quant layers, which int8 conversion needs
                model(x)
        self._extractor = Extractor(model.eval(), engine=engine)
        self.name = f"{backbone}-proxy"

    def extract(self, image: np.ndarray, max_keypoints: int = 1000) -> Any:
        return self._extractor.extract(image, max_keypoints=max_keypoints)

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "binary": bool(self._extractor.binary),
            "weights": "untrained, activation ranges calibrated on skimage astronaut (speed proxy only)",
            "weights_sha256": None,
            "params": {"engine": self._extractor.engine, "trained": False},
        }


def _load(
    name: str, engine: str, size: tuple[int, int] = (240, 320), weights: str | None = None
) -> tuple[Any, str | None]:
    """Extractor by name; int8 engine preferred for zippy backbones. Returns (extractor, note).

    "<backbone>-proxy" (e.g. "zippypoint-proxy") is :class:`_SpeedProxy`.
    """
    from zippy_apps.cmd_stream import load_extractor

    if name.endswith("-proxy"):
        return _SpeedProxy(name[: -len("-proxy")], engine, size), "untrained network: timing only"

    path = Path(weights) if weights else None
    try:
        return load_extractor(name, engine=engine, weights=path), None
    except (ValueError, RuntimeError, NotImplementedError) as e:
        if engine == "auto":
            raise
        note = f"engine {engine!r} unavailable ({e}); used 'auto'"
        logger.warning("%s: %s", name, note)
        return load_extractor(name, engine="auto", weights=path), note


def run(conf: BenchConfig, output_dir: str | os.PathLike) -> Path:
    """Run the benchmark and write summary.json, summary.md and stage_times.png into ``output_dir``.

    Returns:
        Path of summary.json.
    """
    from zippy.threads import set_threads
    from zippy_apps.cmd_stream import method_info, run_stream
    from zippy_apps.stream import track
    from zippy_eval.results import markdown_table, write_summary, write_text

    os.environ.setdefault("OMP_NUM_THREADS", str(conf.threads))
    load_start = [round(v, 2) for v in os.getloadavg()]
    output_dir = Path(output_dir)
    rows: list[dict[str, Any]] = []
    methods: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench_stream_") as tmp:
        sources: dict[str, tuple[Path, np.ndarray | None]] = {}
        if "synthetic" in conf.sources:
            video = Path(tmp) / "synthetic.mp4"
            sources["synthetic"] = (video, write_synthetic_video(video, n_frames=conf.frames, size=conf.size))
        if "tum" in conf.sources:
            if TUM_FOLDER.is_dir():
                sources["tum"] = (TUM_FOLDER, None)
            else:
                skipped["tum"] = f"folder not found: {TUM_FOLDER}"
        for name in conf.methods:
            try:
                extractor, note = _load(name, conf.engine, conf.size, conf.weights.get(name))
            except (ValueError, FileNotFoundError, RuntimeError) as e:
                skipped[name] = str(e)
                logger.warning("skipping %s: %s", name, e)
                continue
            set_threads(conf.threads)
            methods[name] = {**method_info(extractor, name), "note": note}
            for source_name, (path, gt) in sources.items():
                errors: list[float] = []

                def check(result: Any, gt: np.ndarray | None = gt, errors: list[float] = errors) -> None:
                    if gt is not None and result.to_prev is not None:
                        w, h = result.features.image_size
                        errors.append(corner_error(result.to_prev.matrix, gt[result.index - 1], w, h))

                stream = track(path, extractor, size=conf.size, max_keypoints=conf.max_keypoints)
                summary = run_stream(stream, progress=False, warmup=conf.warmup, on_result=check)
                row: dict[str, Any] = {
                    "method": name,
                    "source": source_name,
                    "frames": summary["frames"],
                    "fps": summary["fps"],
                    "times_ms": summary["times_ms"],
                    "threads": summary["threads"],
                    "meets_target": bool((summary["fps"]["mean"] or 0.0) >= TARGET_FPS),
                }
                if errors:
                    row["frac_corner_error_le_3px"] = float(np.mean(np.array(errors) <= CORNER_THRESHOLD_PX))
                rows.append(row)
                logger.info("%s on %s: %.1f FPS (mean)", name, source_name, summary["fps"]["mean"] or 0.0)
    protocol = {
        **asdict(conf),
        "loop": "zippy stream --headless: read, decode, resize, extract, match prev + keyframe, RANSAC, draw",
        "matcher": "mutual nearest neighbour (Hamming for binary, L2 for float)",
        "robust": f"{DEFAULT_ROBUST} homography, 3 px, confidence {CONFIDENCE}, at most {MAX_ITERS} iterations",
        "fps_definition": "mean = frames / time; p50 / p90 = 1000 / p50 / p90 frame time (ms)",
        "target_fps": TARGET_FPS,
    }
    dataset = {name: str(path) for name, (path, _) in sources.items()} if rows else {}
    summary_json = write_summary(
        output_dir,
        protocol=protocol,
        dataset={"sources": dataset, "synthetic_photo": "skimage.data.astronaut"},
        methods=methods,
        rows=rows,
        aggregates={f"{r['method']}/{r['source']}": r["fps"] for r in rows},
        extra={"skipped": skipped, "loadavg_start": load_start},
    )
    stages = ["read", "resize", "extract", "match", "geometry", "draw"]
    table = markdown_table(
        ["method", "source", "frames", "FPS mean", "FPS p50", "FPS p90", *[f"{s} ms" for s in stages], "H ok@3px"],
        [
            [
                r["method"],
                r["source"],
                r["frames"],
                r["fps"]["mean"],
                r["fps"]["p50"],
                r["fps"]["p90"],
                *[r["times_ms"].get(s, {}).get("mean") for s in stages],
                r.get("frac_corner_error_le_3px"),
            ]
            for r in rows
        ],
        floatfmt=["s", "s", "d", ".1f", ".1f", ".1f", *[".2f"] * len(stages), ".2f"],
    )
    from zippy.threads import thread_info

    threads = thread_info()  # after every extractor is loaded (torch's setting included)
    note = (
        f"Stream benchmark, {conf.size[0]}x{conf.size[1]}, {conf.max_keypoints} keypoints; threads: OpenCV "
        f"{threads['opencv_threads']}, matcher {threads['matcher_threads']}, torch {threads['torch_threads']}; "
        f"load average {load_start} at the start, {threads['loadavg']} at the end ({os.cpu_count()} CPUs). "
        f"Target: >= {TARGET_FPS:.0f} FPS end to end including drawing (zippy int8). Stage times are means in ms; "
        f"'H ok@3px' is the fraction of synthetic frames whose frame-to-frame homography is within 3 px."
    )
    skipped_md = "".join(f"\n- skipped {k}: {v}" for k, v in skipped.items())
    write_text(output_dir / "summary.md", f"{note}\n\n{table}\n{skipped_md}\n")
    if rows:
        _plot(rows, stages, output_dir / "stage_times.png")
    return summary_json


def _plot(rows: list[dict[str, Any]], stages: list[str], path: Path) -> None:
    """Stacked bars of mean stage times per run, FPS written above each bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from zippy_eval.results import save_figure

    labels = [f"{r['method']}\n{r['source']}" for r in rows]
    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 4))
    bottom = np.zeros(len(rows))
    for stage in stages:
        ms = np.array([r["times_ms"].get(stage, {}).get("mean") or 0.0 for r in rows])
        ax.bar(labels, ms, bottom=bottom, label=stage)
        bottom += ms
    for i, r in enumerate(rows):
        ax.text(i, bottom[i], f"{r['fps']['mean'] or 0:.1f} FPS", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("mean ms per frame")
    ax.set_title("zippy stream: stage times (1 thread)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
