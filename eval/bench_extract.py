"""Extraction benchmark: time per stage, total per frame and peak memory, per method, size and thread count.

One run measures every method on the same real frames (``../shared/data/localization/
tum_freiburg_sequence``, consecutive 640x480 photos of an office, resized to each size with
INTER_AREA). Timing: one subprocess per (size, threads) builds every method, then goes frame by
frame running every method on each frame (rotating the order), so that load changes on a shared
machine hit all methods alike and the ratios between them hold. The thread count is set before
torch / OpenCV / numba start. Memory: one subprocess per (method, size) on one thread reports its
``ru_maxrss`` before / after building the method and after extracting 3 frames (``tracemalloc``
does not see torch's allocator).

Methods (names in the results):
    * ``zippyfast``: the CPU-first network (``zippy.load("zippyfast")``), its folded fp32 engine and its own
      keypoint detector (Shi-Tomasi corners, ``detector="corners"``); ``zippyfast-cells``: the same network
      with its 8x8-cell keypoint head (``detector="network"``; not in the default set).
    * ``zippypoint-fp32``: the zippypoint network in float with fake quantization switched off
      (``zippy.quant.set_fake_quant(model, False)``), torch eager.
    * ``zippypoint-fq``: the same network with fake quantization on (the training-time reference).
    * ``zippypoint-int8``: the int8 engine (``zippy.quant.int8``) on the path the load-time kernel check
      picks on this CPU (``engine_path`` "int8-direct" where oneDNN's u8 x s8 kernels are exact, "int8-split"
      where they saturate, e.g. AVX2 without VNNI); ``zippypoint-int8-split``: the split path forced (runs
      everywhere; on a VNNI machine it shows what an AVX2 CPU pays for exactness).
    * ``zippypoint-int8-x1.41+1``: the int8 engine on the two-scale pyramid; ``zippypoint-int8-x1.41+1-g2``: the
      same with a second cell grid half a cell away at each scale (``shifts=((0, 0), (4, 4))``);
      ``zippypoint-int8-x1.41+1-g4``: with four grids (shifts (0, 0), (4, 0), (0, 4), (4, 4)), the most
      accurate setting of docs/hpatches.md; none of the three in the default set.
    * ``zippypoint-onnx``: onnxruntime int8 graph (``zippy.quant.onnx_engine``; the engine auto takes where no
      exact oneDNN path exists, e.g. ARM; not in the default set).
    * ``zippypoint_small-int8`` / ``zippypoint_small-fp32``: the narrow shipped variant
      (``zippy.load("zippypoint_small")``, weights/zippypoint_small.pt), int8 engine / float with fake
      quantization off; ``zippypoint_small-int8-x1.41+1``: its int8 engine on a two-scale image pyramid
      (``zippy.load(..., scales=(1.41, 1.0))``), the more accurate setting of docs/hpatches.md.
    * ``kp2d-fp32``: the float KP2D-style baseline of the same topology.
    * ``orb``, ``sift``, ``akaze``, ``brisk``: OpenCV (``zippy_eval.methods``); ``aliked``: kornia ALIKED-T16;
      ``orb_teblid`` (ORB keypoints, TEBLID descriptors) on request, not in the default set.

Agreement: every zippypoint variant at one scale is compared with ``zippypoint-fq`` (the trained
network) when the run has it, on the frames of the last pass: ``kp_agree`` the fraction of its keypoints
found within 0.05 px, ``desc_agree`` the fraction of those with identical descriptors.

Per frame: ``network_ms`` and ``post_ms`` (zippy methods: network forward / NMS, top-k, sampling,
binarization), ``total_ms`` (the whole ``extract`` call from the RGB uint8 image), and ``match_ms``
(mutual nearest neighbours against the previous frame: Hamming for binary, L2 for float
descriptors). Reported per cell: medians over frames and repeats, the fastest frame, peak memory
(MB), keypoints.

Zippypoint weights: ``--weights`` (default: the shipped weights). An untrained network has no
trained activation ranges; then the EMA ranges are calibrated on the benchmark frames (train-mode
passes) so the int8 engine can run, and the summary says so (timing does not depend on the weights).

Writes ``results/bench_extract/<tag>/``: ``summary.json`` (protocol, environment with thread counts
and load average before / after, the CPU model and flags (:func:`zippy.cpu.cpu_info`) and the int8 kernel
check, rows, target checks), ``summary.md`` and ``times.png``.

Usage::

    python -m zippy_eval.bench_extract --tag main            # or: zippy bench extract --tag main
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_METHODS", "BenchConfig", "main", "run", "run_memory", "run_timing", "target_checks"]

REPO_ROOT = Path(__file__).resolve().parents[1]
FRAMES = REPO_ROOT.parent / "shared" / "data" / "localization" / "tum_freiburg_sequence"
DEFAULT_METHODS = (
    "zippyfast",
    "zippypoint-fp32",
    "zippypoint-fq",
    "zippypoint-int8",
    "zippypoint_small-fp32",
    "zippypoint_small-int8",
    "zippypoint_small-int8-x1.41+1",
    "kp2d-fp32",
    "orb",
    "sift",
    "akaze",
    "brisk",
    "aliked",
)
# name -> (model, engine, fake quantization on, image-pyramid scales, grid shifts)
ONE = ((0, 0),)
HALF_CELL = ((0, 0), (4, 4))
FOUR_GRIDS = ((0, 0), (4, 0), (0, 4), (4, 4))
ZIPPY_VARIANTS = {
    "zippypoint-fp32": ("zippypoint", "fp32", False, (1.0,), ONE),
    "zippypoint-fq": ("zippypoint", "fp32", True, (1.0,), ONE),
    "zippypoint-int8": ("zippypoint", "int8", True, (1.0,), ONE),
    "zippypoint-int8-split": ("zippypoint", "int8", True, (1.0,), ONE),
    "zippypoint-int8-x1.41+1": ("zippypoint", "int8", True, (1.41, 1.0), ONE),
    "zippypoint-int8-x1.41+1-g2": ("zippypoint", "int8", True, (1.41, 1.0), HALF_CELL),
    "zippypoint-int8-x1.41+1-g4": ("zippypoint", "int8", True, (1.41, 1.0), FOUR_GRIDS),
    "zippypoint-onnx": ("zippypoint", "onnx", True, (1.0,), ONE),
    "zippypoint_small-fp32": ("zippypoint_small", "fp32", False, (1.0,), ONE),
    "zippypoint_small-int8": ("zippypoint_small", "int8", True, (1.0,), ONE),
    "zippypoint_small-int8-x1.41+1": ("zippypoint_small", "int8", True, (1.41, 1.0), ONE),
    "kp2d-fp32": ("kp2d", "fp32", True, (1.0,), ONE),
    "zippyfast": ("zippyfast", "auto", True, (1.0,), ONE),
    "zippyfast-cells": ("zippyfast", "auto", True, (1.0,), ONE),
}
INT8_PATH = {"zippypoint-int8-split": "split"}  # variants that force an int8 path (else: the kernel check's)
DETECTOR = {"zippyfast-cells": "network"}  # variants that force a keypoint detector (else: the model's own)
REFERENCE = "zippypoint-fq"  # the trained network, which the agreement columns compare with
TARGET_MATCH_MS = 20.0


@dataclass
class BenchConfig:
    """Protocol of one benchmark run.

    Attributes:
        methods: method names (see the module docstring).
        sizes: (height, width) frame sizes.
        threads: thread counts (torch, OpenCV, numba, onnxruntime all get the same).
        frames: folder of frames (sorted by name); the first ``n_frames`` are used.
        n_frames: frames per cell (consecutive, so matching to the previous frame makes sense).
        repeats: passes over the frames after one warm-up pass.
        max_keypoints: keypoint budget of every method.
        weights: zippypoint weights file (None: shipped weights, else a calibrated untrained net).
        kp2d_weights: kp2d weights file (None: shipped / untrained).
        memory: also measure peak memory (one extra process per method and size).
    """

    methods: Sequence[str] = DEFAULT_METHODS
    sizes: Sequence[tuple[int, int]] = ((240, 320), (480, 640))
    threads: Sequence[int] = (1, 2)
    frames: str = str(FRAMES)
    n_frames: int = 8
    repeats: int = 2
    max_keypoints: int = 1000
    weights: str | None = None
    kp2d_weights: str | None = None
    timeout_s: float = 900.0
    memory: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- worker


def _set_threads(n: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)


def _load_frames(folder: str, n: int, size: tuple[int, int]) -> list[np.ndarray]:
    import cv2

    from zippy.image import read_image

    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:n]
    if len(paths) < 2:
        raise FileNotFoundError(f"need at least 2 frames in {folder}, found {len(paths)}")
    h, w = size
    return [cv2.resize(read_image(p), (w, h), interpolation=cv2.INTER_AREA) for p in paths]


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


class _Zippy:
    """A zippy extractor in one of the benchmark's variants."""

    def __init__(self, name: str, weights: str | None, kp2d_weights: str | None, frames: list[np.ndarray]):
        import torch

        import zippy
        from zippy.extractor import Extractor
        from zippy.quant import set_fake_quant

        model_name, engine, fake_quant, scales, shifts = ZIPPY_VARIANTS[name]
        w = {"zippypoint": weights, "kp2d": kp2d_weights}.get(model_name)  # others: their shipped weights
        ex = zippy.load(model_name, weights=w, engine="fp32")
        model = ex.model
        backbone = model.cfg.backbone
        self.calibrated = False
        if backbone == "zippypoint" and not ex.trained:
            # untrained: give the EMA quantizers ranges (train-mode passes) so the int8 engine can run
            from zippy.image import to_tensor

            model.train()
            with torch.no_grad():
                for im in frames[:4]:
                    model(to_tensor(im)[..., : im.shape[0] // 8 * 8, : im.shape[1] // 8 * 8])
            model.eval()
            self.calibrated = True
        if not fake_quant:
            set_fake_quant(model, False)
        self.extractor = Extractor(
            model,
            engine=engine,
            weights_path=ex.weights_path,
            meta=ex.meta,
            scales=scales,
            shifts=shifts,
            detector=DETECTOR.get(name),
        )
        if name in INT8_PATH:
            self.extractor._net.set_path(INT8_PATH[name], "forced by the benchmark")
            self.extractor.engine_path, self.extractor.engine_reason = f"int8-{INT8_PATH[name]}", "forced"
        self.binary = self.extractor.binary
        self.info = {
            "backbone": backbone,
            "engine": self.extractor.engine,
            "engine_path": self.extractor.engine_path,
            "engine_reason": self.extractor.engine_reason,
            "fake_quant": fake_quant,
            "scales": list(scales),
            "shifts": [list(d) for d in shifts],
            "detector": self.extractor.detector,
            "trained": bool(ex.trained),
            "weights": str(ex.weights_path) if ex.weights_path else None,
            "weights_sha256": ex.weights_sha256,
            "ranges_calibrated_on_frames": self.calibrated,
        }

    def extract(self, image: np.ndarray, k: int):
        f = self.extractor.extract(image, max_keypoints=k)
        return f, f.meta.get("time_network_ms"), f.meta.get("time_post_ms")


class _Other:
    def __init__(self, name: str):
        from zippy_eval.methods import get_method

        self.method = get_method(name)
        self.binary = self.method.binary
        self.info = self.method.info()

    def extract(self, image: np.ndarray, k: int):
        return self.method.extract(image, k), None, None


def _make(cfg: BenchConfig, name: str, frames: list[np.ndarray]) -> _Zippy | _Other:
    return _Zippy(name, cfg.weights, cfg.kp2d_weights, frames) if name in ZIPPY_VARIANTS else _Other(name)


def _setup(threads: int) -> Any:
    _set_threads(threads)
    import cv2
    import torch

    from zippy import matching

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    matching.set_num_threads(threads)
    return matching


def _median(v: list[float]) -> float | None:
    return float(np.median(v)) if v else None


def run_timing(cfg: BenchConfig, size: tuple[int, int], threads: int) -> list[dict[str, Any]]:
    """Time every method on the same frames in this process, interleaved (call it in a fresh process).

    All methods are built first; after one warm-up pass, each timed pass goes frame by frame and runs
    every method on that frame (rotating the order), so a load change on the shared machine hits all
    methods alike and the ratios between them stay meaningful.

    Returns:
        one row per method: medians and minima (ms) of network / post / total / match, keypoints, info.
    """
    import torch

    import zippy

    matching = _setup(threads)
    frames = _load_frames(cfg.frames, cfg.n_frames, size)
    methods = {name: _make(cfg, name, frames) for name in cfg.methods}
    if any(m.binary for m in methods.values()):
        matching.warmup(threads=threads)
    k = cfg.max_keypoints
    times: dict[str, dict[str, list[float]]] = {
        n: {"network_ms": [], "post_ms": [], "total_ms": [], "match_ms": [], "n": []} for n in methods
    }
    prev: dict[str, Any] = {}
    last: dict[str, list[Any]] = {n: [None] * len(frames) for n in methods}  # features of the last pass
    names = list(methods)
    for rep in range(cfg.repeats + 1):  # pass 0 warms up (lazy initialisation, JIT, kernel selection)
        prev.clear()
        for i, im in enumerate(frames):
            shift = (i + rep) % len(names)
            for name in names[shift:] + names[:shift]:
                m, rows = methods[name], times[name]
                t0 = time.perf_counter()
                f, net_ms, post_ms = m.extract(im, k)
                t1 = time.perf_counter()
                if name in prev:
                    zippy.match(f, prev[name], mutual=True)
                t2 = time.perf_counter()
                if rep > 0:
                    rows["total_ms"].append(1e3 * (t1 - t0))
                    rows["n"].append(len(f))
                    if net_ms is not None:
                        rows["network_ms"].append(float(net_ms))
                        rows["post_ms"].append(float(post_ms))
                    if name in prev:
                        rows["match_ms"].append(1e3 * (t2 - t1))
                prev[name] = f
                last[name][i] = f
    agreement = _agreement(methods, last)
    out = []
    for name, rows in times.items():
        total, match_ms = _median(rows["total_ms"]), _median(rows["match_ms"])
        out.append(
            {
                "method": name,
                "height": size[0],
                "width": size[1],
                "threads": threads,
                "torch_threads": torch.get_num_threads(),
                "network_ms": _median(rows["network_ms"]),
                "post_ms": _median(rows["post_ms"]),
                "total_ms": total,
                "match_ms": match_ms,
                "total_plus_match_ms": (total or 0.0) + (match_ms or 0.0),
                "network_ms_min": float(np.min(rows["network_ms"])) if rows["network_ms"] else None,
                "total_ms_min": float(np.min(rows["total_ms"])),
                "keypoints": float(np.mean(rows["n"])),
                **agreement.get(name, {"kp_agree": None, "desc_agree": None}),
                "info": methods[name].info,
                "frame_totals_ms": rows["total_ms"],
            }
        )
    return out


def _agreement(methods: dict[str, Any], feats: dict[str, list[Any]]) -> dict[str, dict[str, float]]:
    """kp_agree / desc_agree of every zippypoint variant at one scale and grid against :data:`REFERENCE`."""
    from zippy.features import compare_features

    if REFERENCE not in feats:
        return {}
    out = {}
    for name, m in methods.items():
        info = getattr(m, "info", {})
        if info.get("backbone") != "zippypoint" or info.get("scales") != [1.0] or info.get("shifts") != [[0, 0]]:
            continue
        if not info.get("fake_quant"):
            continue  # fake quantization off: another network
        c = compare_features(feats[REFERENCE], feats[name])
        out[name] = {"kp_agree": c["keypoints_found"], "desc_agree": c["descriptors_identical"]}
    return out


def run_memory(cfg: BenchConfig, method: str, size: tuple[int, int]) -> dict[str, Any]:
    """Memory of one method on one thread (call it in a fresh process): ``ru_maxrss`` (MB) before
    building the method, after building it, and after extracting 3 frames (first call included)."""
    _setup(1)
    frames = _load_frames(cfg.frames, min(cfg.n_frames, 3), size)
    rss0 = _maxrss_mb()
    m = _make(cfg, method, frames)
    rss1 = _maxrss_mb()
    for im in frames:
        m.extract(im, cfg.max_keypoints)
    rss2 = _maxrss_mb()
    return {
        "method": method,
        "height": size[0],
        "width": size[1],
        "peak_rss_mb": rss2,
        "model_mb": max(rss1 - rss0, 0.0),
        "extract_mb": max(rss2 - rss1, 0.0),
    }


# ----------------------------------------------------------------------------------------------- driver


def _run_worker(cfg: BenchConfig, job: dict[str, Any], threads: int) -> Any:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = str(threads)
    payload = json.dumps({"cfg": asdict(cfg), **job})
    proc = subprocess.run(
        [sys.executable, "-m", "zippy_eval.bench_extract", "--worker", payload],
        capture_output=True,
        text=True,
        env=env,
        timeout=cfg.timeout_s,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("{", "["))]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"benchmark worker {job} failed: {' | '.join(tail)}")
    return json.loads(lines[-1])


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _row(rows: list[dict[str, Any]], method: str, h: int, threads: int) -> dict[str, Any] | None:
    for r in rows:
        if r["method"] == method and r["height"] == h and r["threads"] == threads:
            return r
    return None


def target_checks(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's speed targets, evaluated on one thread (None where a needed cell is missing).

    Keys ``int8_*`` judge ``zippypoint-int8`` (the 5x speed-up against ``zippypoint-fp32``, the same
    network in float); the same keys with ``small_`` in front judge ``zippypoint_small-int8`` (against
    ``zippypoint_small-fp32``), the narrow shipped variant, where the run has it.
    """
    out: dict[str, Any] = {}
    for prefix, name in (("", "zippypoint"), ("small_", "zippypoint_small")):
        fp32, large = _row(rows, f"{name}-fp32", 480, 1), _row(rows, f"{name}-int8", 480, 1)
        small = _row(rows, f"{name}-int8", 240, 1)
        if fp32 and large:
            out[f"{prefix}int8_speedup_network_480x640"] = fp32["network_ms"] / large["network_ms"]
            out[f"{prefix}int8_speedup_total_480x640"] = fp32["total_ms"] / large["total_ms"]
            out[f"{prefix}int8_speedup_target_5x_met"] = out[f"{prefix}int8_speedup_network_480x640"] >= 5.0
        for other in ("sift", "akaze"):
            o = _row(rows, other, 480, 1)
            if large and o:
                out[f"{prefix}int8_total_vs_{other}_480x640"] = large["total_ms"] / o["total_ms"]
                out[f"{prefix}int8_faster_than_{other}"] = large["total_ms"] < o["total_ms"]
        if small:
            out[f"{prefix}int8_240x320_extract_plus_match_ms"] = small["total_plus_match_ms"]
            out[f"{prefix}int8_240x320_under_20ms"] = small["total_plus_match_ms"] < TARGET_MATCH_MS
    # the CPU-first network: whole extract <= 1/2 of SIFT's (aim 1/4), extract + match >= 30 FPS, within 2x of ORB
    for h in (480, 240):
        fast = _row(rows, "zippyfast", h, 1)
        if fast is None:
            continue
        size = f"{h}x{h * 4 // 3}"
        for other in ("sift", "orb", "orb_teblid"):
            o = _row(rows, other, h, 1)
            if o:
                out[f"fast_total_vs_{other}_{size}"] = fast["total_ms"] / o["total_ms"]
        if f"fast_total_vs_sift_{size}" in out:
            out[f"fast_half_of_sift_{size}_met"] = out[f"fast_total_vs_sift_{size}"] <= 0.5
        fps = 1e3 / fast["total_plus_match_ms"]
        out[f"fast_extract_plus_match_fps_{size}"] = fps
        out[f"fast_30fps_{size}_met"] = fps >= 30.0
    return out


def _plot(rows: list[dict[str, Any]], path: Path, threads: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from zippy_eval.results import save_figure

    sizes = sorted({(r["height"], r["width"]) for r in rows})
    fig, axes = plt.subplots(1, len(sizes), figsize=(6.5 * len(sizes), 4.5), squeeze=False)
    for ax, (h, w) in zip(axes[0], sizes):
        cells = [r for r in rows if r["height"] == h and r["threads"] == threads]
        names = [r["method"] for r in cells]
        net = [r["network_ms"] or 0.0 for r in cells]
        post = [r["post_ms"] or 0.0 for r in cells]
        other = [r["total_ms"] - (r["network_ms"] or 0.0) - (r["post_ms"] or 0.0) for r in cells]
        match = [r["match_ms"] or 0.0 for r in cells]
        y = np.arange(len(cells))
        ax.barh(y, net, color="#4c72b0", label="network")
        ax.barh(y, post, left=net, color="#dd8452", label="post-processing")
        left = np.add(net, post)
        ax.barh(y, other, left=left, color="#8c8c8c", label="other / whole method")
        ax.barh(y, match, left=left + np.asarray(other), color="#55a868", label="match vs previous")
        ax.set_yticks(y, names)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("ms per frame (log scale)")
        ax.set_title(f"{w}x{h}, {threads} thread(s)")
        if h == 240:
            ax.axvline(TARGET_MATCH_MS, color="k", ls="--", lw=0.8)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    return path


def _markdown(rows: list[dict[str, Any]], checks: dict[str, Any], cfg: BenchConfig, env: dict[str, Any]) -> str:
    from zippy_eval.results import markdown_table

    headers = [
        "method",
        "path",
        "size",
        "threads",
        "network ms",
        "post ms",
        "total ms",
        "match ms",
        "min total",
        "peak MB",
        "kp",
        "kp agree",
        "desc agree",
    ]
    table = []
    for r in sorted(rows, key=lambda r: (r["threads"], r["height"], list(cfg.methods).index(r["method"]))):
        table.append(
            [
                r["method"],
                r.get("engine_path") or "",
                f"{r['width']}x{r['height']}",
                r["threads"],
                r["network_ms"],
                r["post_ms"],
                r["total_ms"],
                r["match_ms"],
                r["total_ms_min"],
                r.get("peak_rss_mb"),
                round(r["keypoints"]),
                r.get("kp_agree"),
                r.get("desc_agree"),
            ]
        )
    lines = [
        "# Extraction benchmark",
        "",
        f"Frames: {cfg.n_frames} consecutive real frames from `{Path(cfg.frames).name}`, resized (INTER_AREA); "
        f"{cfg.repeats} timed passes after one warm-up; budget {cfg.max_keypoints} keypoints; medians per frame. "
        f"Load average before / after: {env.get('loadavg_before')} / {env.get('loadavg_after')} "
        f"on {os.cpu_count()} CPUs. Methods interleaved frame by frame in one process per size and thread "
        f"count; min total = fastest frame. Peak MB = max RSS of a separate 1-thread process that builds the "
        f"method and extracts 3 frames. kp / desc agree: keypoints within 0.05 px of `{REFERENCE}`'s (the "
        f"trained network), and identical descriptors among them.",
        "",
        f"CPU: {env.get('cpu_summary')}. int8 kernel check: {env.get('int8_kernel_check')}.",
        "",
        markdown_table(
            headers, table, floatfmt=[".3f", "", "", "", ".1f", ".1f", ".1f", ".2f", ".1f", ".0f", "", ".4f", ".4f"]
        ),
        "",
        "## Targets (1 thread)",
        "",
    ]
    for key, value in checks.items():
        lines.append(f"- {key}: {value:.3g}" if isinstance(value, float) else f"- {key}: {value}")
    return "\n".join(lines) + "\n"


def run(cfg: BenchConfig, output_dir: str | os.PathLike) -> Path:
    """Run the timing workers (one per size and thread count) and the memory workers (one per method and
    size), write the result files; returns ``summary.json``'s path."""
    from tqdm import tqdm

    from zippy_eval.results import environment, write_summary, write_text

    if not Path(cfg.frames).is_dir():
        raise FileNotFoundError(f"frames folder not found: {cfg.frames}")
    from zippy_eval.methods import OPENCV_METHODS

    known = set(DEFAULT_METHODS) | set(ZIPPY_VARIANTS) | set(OPENCV_METHODS)
    unknown = [m for m in cfg.methods if m not in known]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {sorted(known)}")
    out = Path(output_dir)
    load_before = _loadavg()
    jobs = [({"kind": "timing", "size": list(s), "threads": t}, t) for t in cfg.threads for s in cfg.sizes]
    if cfg.memory:
        jobs += [({"kind": "memory", "size": list(s), "method": m}, 1) for s in cfg.sizes for m in cfg.methods]
    rows: list[dict[str, Any]] = []
    memory: dict[tuple[str, int], dict[str, Any]] = {}
    loads = []
    for job, threads in tqdm(jobs, desc="bench extract", unit="job"):
        loads.append(_loadavg())
        result = _run_worker(cfg, job, threads)
        if job["kind"] == "timing":
            rows.extend(result)
        else:
            memory[(result["method"], result["height"])] = result
    for r in rows:
        mem = memory.get((r["method"], r["height"]), {})
        r.update({k: mem.get(k) for k in ("peak_rss_mb", "model_mb", "extract_mb")})
    load_after = _loadavg()
    checks = target_checks(rows)
    env = environment()
    cpu, kernels = _cpu_record()
    env.update({"loadavg_before": load_before, "loadavg_after": load_after, **kernels})
    env["cpu_summary"] = cpu["summary"]
    for r in rows:
        r["engine_path"] = r.get("info", {}).get("engine_path")
    methods_info = {r["method"]: r.get("info", {}) for r in rows if "info" in r}
    path = write_summary(
        out,
        protocol={k: v for k, v in asdict(cfg).items() if k != "extra"},
        dataset={"frames": cfg.frames, "n_frames": cfg.n_frames},
        methods=methods_info,
        rows=[{k: v for k, v in r.items() if k != "info"} for r in rows],
        aggregates={"targets_1_thread": checks},
        extra={
            "bench_environment": {"loadavg_before": load_before, "loadavg_after": load_after, "loadavg_per_job": loads},
            "cpu": cpu,
            **kernels,
        },
    )
    write_text(out / "summary.md", _markdown(rows, checks, cfg, env))
    _plot(rows, out / "times.png", threads=min(cfg.threads))
    return path


def _cpu_record() -> tuple[dict[str, Any], dict[str, Any]]:
    """The CPU (model, flags, ISA limits, one-line summary) and the int8 kernel check of this process (the
    workers inherit its environment, ONEDNN_MAX_CPU_ISA included)."""
    from zippy.cpu import cpu_info, cpu_summary

    cpu = {**cpu_info(), "summary": cpu_summary()}
    try:
        from zippy.quant.int8 import kernel_check

        check = kernel_check()
        kernels = {"int8_kernel_check": f"{check.path or 'none'}: {check.reason}"}
    except ImportError as e:
        kernels = {"int8_kernel_check": f"not run ({e})"}
    return cpu, kernels


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI options shared by ``python -m zippy_eval.bench_extract`` and ``zippy bench extract``."""
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), help="methods to measure")
    parser.add_argument("--sizes", nargs="+", default=["240x320", "480x640"], help="HxW sizes")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="thread counts")
    parser.add_argument("--frames", default=str(FRAMES), help="folder of frames (sorted by name)")
    parser.add_argument("--n-frames", type=int, default=8, help="frames per cell")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes over the frames")
    parser.add_argument("--max-keypoints", type=int, default=1000, help="keypoint budget")
    parser.add_argument("--weights", default=None, help="zippypoint weights (default: shipped)")
    parser.add_argument("--kp2d-weights", default=None, help="kp2d weights (default: shipped / untrained)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes (quicker)")
    parser.add_argument("--tag", default="default", help="results/bench_extract/<tag>/")
    parser.add_argument("--output", default=None, help="output folder (overrides --tag)")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """BenchConfig from parsed CLI arguments (sizes 'HxW')."""
    sizes = []
    for s in args.sizes:
        try:
            h, w = (int(v) for v in s.lower().split("x"))
        except ValueError:
            raise ValueError(f"size must be HxW like 480x640, got {s!r}") from None
        if h < 16 or w < 16:
            raise ValueError(f"size must be at least 16x16, got {s!r}")
        sizes.append((h, w))
    if any(t < 1 for t in args.threads):
        raise ValueError(f"thread counts must be >= 1, got {args.threads}")
    if args.n_frames < 2 or args.repeats < 1 or args.max_keypoints < 1:
        raise ValueError("need --n-frames >= 2, --repeats >= 1, --max-keypoints >= 1")
    return BenchConfig(
        methods=list(args.methods),
        sizes=sizes,
        threads=list(args.threads),
        frames=args.frames,
        n_frames=args.n_frames,
        repeats=args.repeats,
        max_keypoints=args.max_keypoints,
        weights=args.weights,
        kp2d_weights=args.kp2d_weights,
        memory=not args.no_memory,
    )


def output_dir_from_args(args: argparse.Namespace) -> Path:
    return Path(args.output) if args.output else REPO_ROOT / "results" / "bench_extract" / args.tag


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m zippy_eval.bench_extract``; ``--worker JSON`` runs one cell and prints its JSON row."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        spec = json.loads(argv[1])
        cfg = BenchConfig(**spec["cfg"])
        size = (int(spec["size"][0]), int(spec["size"][1]))
        if spec["kind"] == "timing":
            result: Any = run_timing(cfg, size, int(spec["threads"]))
        else:
            result = run_memory(cfg, spec["method"], size)
        print(json.dumps(result))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    path = run(config_from_args(args), output_dir_from_args(args))
    print(path.with_name("summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
