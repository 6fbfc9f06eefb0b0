"""Where the int8 engine spends its time: per layer and per stage, at each size.

Every module of the converted network (:mod:`zippy.quant.int8`) and the layout helpers it calls
(space-to-depth, depth-to-space) get a timer; the extractor's real path then runs on real frames:
``detect`` (the network up to the descriptor head's 1/4-resolution input), keypoint selection (NMS,
top-k), ``describe`` (the descriptor head's last convs at the keypoints) and binarization. Each
module's *self* time is its time minus its timed children's, so the per-stage sums add up to the
total. Stages: stem, the three encoder stages, the 1/8 block, the score / position heads, the
descriptor head, descriptors at keypoints, glue (image quantization, sigmoid, cell coordinates, the
driver's own time) and post-processing.

Writes ``summary.json``, ``summary.md`` (stage table and the slowest layers) and ``stages.png``.

Usage::

    python tools/profile_int8.py --sizes 240x320,480x640 --frames 8 --out results/profile_int8/latest
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from zippy_eval.bench_extract import FRAMES
from zippy_eval.results import environment, markdown_table, save_figure, write_json, write_text

__all__ = ["STAGES", "add_arguments", "main", "profile_network", "run", "run_args", "stage_of"]

STAGES = (
    "stem",
    "stage 1 (1/2)",
    "stage 2 (1/4)",
    "stage 3 (1/8)",
    "block 1/8",
    "score + position heads",
    "descriptor head",
    "descriptors at keypoints",
    "glue",
    "post-processing",
)


def stage_of(name: str) -> str:
    """The stage of a timed item: a module path of the int8 network, ``fn:<helper>`` or ``post:<step>``."""
    if name.startswith("post:"):
        return "post-processing"
    if name == "fn:depth_to_space":
        return "descriptor head"
    if name == "fn:space_to_depth":
        return "glue"
    head = name.split(".")[0]
    if head == "stages":
        return STAGES[1 + int(name.split(".")[1])]
    table = {
        "stem": "stem",
        "block8": "block 1/8",
        "heads": "score + position heads",
        "score_in": "score + position heads",
        "score_conv": "score + position heads",
        "score_out": "score + position heads",
        "position_in": "score + position heads",
        "position_conv": "score + position heads",
        "position_out": "score + position heads",
        "desc_in": "descriptor head",
        "desc_convs": "descriptor head",
        "sparse_desc": "descriptors at keypoints",
    }
    return table.get(head, "glue")


class _Timers:
    """Inclusive and self time of nested calls (a stack of running timers)."""

    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)
        self.self_time: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[list[float]] = []  # per running call: [children time]

    @contextlib.contextmanager
    def time(self, name: str) -> Iterator[None]:
        self._stack.append([0.0])
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            (children,) = self._stack.pop()
            self.total[name] += dt
            self.self_time[name] += dt - children
            self.calls[name] += 1
            if self._stack:
                self._stack[-1][0] += dt

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.time(name):
                return fn(*args, **kwargs)

        return timed

    def clear(self) -> None:
        self.total.clear()
        self.self_time.clear()
        self.calls.clear()


@contextlib.contextmanager
def _instrumented(net: nn.Module, timers: _Timers) -> Iterator[None]:
    """Time every submodule's forward and the int8 module's layout helpers; undone on exit."""
    from zippy.quant import int8

    patched: list[nn.Module] = []
    for name, module in net.named_modules():
        if name and not isinstance(module, (nn.ModuleList, nn.Sequential)):
            module.forward = timers.wrap(name, module.forward)  # instance attribute shadows the method
            patched.append(module)
    helpers = {fn: getattr(int8, fn) for fn in ("space_to_depth", "depth_to_space")}
    for fn, orig in helpers.items():
        setattr(int8, fn, timers.wrap(f"fn:{fn}", orig))
    try:
        yield
    finally:
        for module in patched:
            del module.forward
        for fn, orig in helpers.items():
            setattr(int8, fn, orig)


def profile_network(net: nn.Module, frames: Sequence[np.ndarray], max_keypoints: int, repeats: int) -> dict[str, Any]:
    """Profile an :class:`~zippy.quant.int8.Int8KeypointNet` on same-size RGB uint8 frames [H, W, 3].

    Returns ``{"total_ms", "stages": {stage: ms}, "layers": [{name, type, stage, calls, ms, self_ms}]}``,
    times per frame (mean over ``repeats`` passes over the frames, after one warm-up pass).
    """
    from zippy.image import to_tensor
    from zippy.postprocess import finalize_descriptors, select_keypoints

    if not frames:
        raise ValueError("need at least one frame")
    h, w = frames[0].shape[:2]
    if h % net.cfg.cell or w % net.cfg.cell:
        raise ValueError(f"frame size must be a multiple of {net.cfg.cell}, got {w}x{h}")
    xs = [to_tensor(f) for f in frames]
    timers = _Timers()

    def one(x: torch.Tensor) -> None:
        with timers.time("frame"):
            with timers.time("detect"):
                out = net.detect(x)
            with timers.time("post:select_keypoints"):
                kpts, _ = select_keypoints(out["score"][0, 0], out["coords"][0], w, h, max_keypoints, None, 4.0)
            with timers.time("describe"):
                desc = net.describe(out, kpts, w, h)
            with timers.time("post:binarize"):
                finalize_descriptors(desc, net.binary_descriptors, net.cfg.desc_ones)

    with torch.inference_mode(), _instrumented(net, timers):
        for x in xs:
            one(x)
        timers.clear()
        for _ in range(repeats):
            for x in xs:
                one(x)
    n = repeats * len(xs)
    modules = dict(net.named_modules())
    stages = dict.fromkeys(STAGES, 0.0)
    layers = []
    for name, self_s in timers.self_time.items():
        if name == "frame":  # the driver's own time between the timed steps (and any preemption there)
            stages["glue"] += 1e3 * self_s / n
            continue
        # the self time of detect / describe is their own code: image quantization, sigmoid, coordinates
        stage = "glue" if name in ("detect", "describe") else stage_of(name)
        stages[stage] += 1e3 * self_s / n
        module = modules.get(name)
        layers.append(
            {
                "name": name,
                "type": type(module).__name__ if module is not None else "function",
                "detail": module.extra_repr().split(", in=")[0] if module is not None else "",
                "stage": stage,
                "calls": timers.calls[name] / n,
                "ms": 1e3 * timers.total[name] / n,
                "self_ms": 1e3 * self_s / n,
            }
        )
    layers.sort(key=lambda r: -r["self_ms"])
    return {"total_ms": 1e3 * timers.total["frame"] / n, "stages": stages, "layers": layers}


def _plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(results)
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.8 * len(sizes)))
    left = np.zeros(len(sizes))
    colors = plt.get_cmap("tab10").colors
    for i, stage in enumerate(STAGES):
        ms = np.array([results[s]["stages"][stage] for s in sizes])
        ax.barh(sizes, ms, left=left, color=colors[i % len(colors)], label=stage)
        left += ms
    ax.set_xlabel("ms per frame (1 image, int8 engine)")
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    ax.set_title("int8 extraction time by stage")
    fig.tight_layout()
    save_figure(fig, path)


def run(
    weights: str | Path | None,
    output_dir: str | Path,
    *,
    sizes: Sequence[tuple[int, int]] = ((240, 320), (480, 640)),
    frames_dir: str | Path = FRAMES,
    n_frames: int = 8,
    repeats: int = 3,
    max_keypoints: int = 1000,
    threads: int = 1,
    model: nn.Module | None = None,
) -> Path:
    """Profile the int8 engine of ``weights`` (default: the shipped zippypoint; or an in-memory ``model``) and
    write ``summary.json``, ``summary.md`` and ``stages.png`` into ``output_dir``. Returns the summary path."""
    import cv2

    from zippy.image import read_image
    from zippy.quant import int8
    from zippy.weights import load_model, shipped_weights

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    if model is None:
        path = Path(weights) if weights is not None else shipped_weights("zippypoint")
        if path is None:
            raise FileNotFoundError("no weights given and no shipped zippypoint weights found")
        model, _ = load_model(path)
    net = int8.convert(model.eval())
    paths = sorted(p for p in Path(frames_dir).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not paths:
        raise FileNotFoundError(f"no .png / .jpg frames in {frames_dir}")
    images = [read_image(p) for p in paths[:n_frames]]
    env_before = environment()
    results = {}
    for h, w in sizes:
        frames = [cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA) for im in images]
        results[f"{h}x{w}"] = profile_network(net, frames, max_keypoints, repeats)
    out = Path(output_dir)
    summary = write_json(
        out / "summary.json",
        {
            "protocol": {
                "frames": [str(p) for p in paths[:n_frames]],
                "repeats": repeats,
                "max_keypoints": max_keypoints,
                "threads": threads,
                "weights": None if weights is None else str(weights),
            },
            "environment": {"before": env_before, "after": environment()},
            "results": results,
        },
    )
    write_text(out / "summary.md", _markdown(results, env_before, environment(), len(images), repeats, threads))
    _plot(results, out / "stages.png")
    return summary


def _markdown(results: dict[str, Any], env0: dict, env1: dict, n: int, repeats: int, threads: int) -> str:
    sizes = list(results)
    lines = [
        "# int8 engine profile",
        "",
        f"{n} frames x {repeats} passes per size, {threads} torch thread(s); load average before / after: "
        f"{env0['loadavg']} / {env1['loadavg']}. Self time per stage (timers add ~1 us per call).",
        "",
    ]
    rows = [[stage] + [results[s]["stages"][stage] for s in sizes] for stage in STAGES]
    rows.append(["**total per frame**"] + [results[s]["total_ms"] for s in sizes])
    lines += [markdown_table(["stage"] + [f"{s} ms" for s in sizes], rows, ".2f"), ""]
    for s in sizes:
        top = results[s]["layers"][:15]
        lines += [f"## Slowest items at {s} (self time)", ""]
        lines.append(
            markdown_table(
                ["item", "type", "detail", "calls / frame", "self ms", "incl. ms"],
                [[r["name"], r["type"], r["detail"], r["calls"], r["self_ms"], r["ms"]] for r in top],
                ["", "", "", ".0f", ".2f", ".2f"],
            )
        )
        lines.append("")
    return "\n".join(lines)


def _sizes(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        try:
            h, w = (int(v) for v in part.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"sizes are HxW[,HxW...], got {text!r}") from None
        out.append((h, w))
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``python tools/profile_int8.py``."""
    p.add_argument("--weights", default=None, help="zippypoint weights (default: the shipped ones)")
    p.add_argument("--sizes", type=_sizes, default=[(240, 320), (480, 640)], help="HxW[,HxW...]")
    p.add_argument("--frames-dir", default=str(FRAMES), help="folder of real frames (default: the TUM sequence)")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-keypoints", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="results/profile_int8/latest")


def run_args(a: argparse.Namespace) -> int:
    """Run with parsed options and print the markdown summary."""
    summary = run(
        a.weights, a.out, sizes=a.sizes, frames_dir=a.frames_dir, n_frames=a.frames, repeats=a.repeats,
        max_keypoints=a.max_keypoints, threads=a.threads,
    )  # fmt: skip
    print(summary.with_name("summary.md").read_text(encoding="utf-8"))
    print(f"results: {summary.parent}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run_args(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
