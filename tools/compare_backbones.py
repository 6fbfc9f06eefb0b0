"""Every registered backbone on one table: size, compute, measured latency and development-split accuracy.

For each backbone (``zippy.models.available()``):

* **parameters**, the **weights file size** (zippy.weights format, fp32 state dict as saved by training)
  and the **packed size**: every conv weight at its bit width (binary 1, b-bit quantized b, float 32)
  plus one float32 scale per output channel (or per group) of quantized layers, other parameters float32;
* **MACs** (multiply-accumulates of the convolutions at 240x320) and **BOPs** (bit operations: MACs x
  weight bits x input bits, float = 32 bits), plus the **add/max operations** of bipolar morphological
  layers (they have no multiplications);
* **latency** of ``Extractor.extract`` (network + post-processing, median of ``repeats`` after a
  warm-up) at 240x320 and 480x640, one thread, on the engine the extractor really uses ("auto": the
  int8 engine where it supports the network, else fp32 with fake quantization); untrained networks get
  their quantization ranges from one random forward pass first, so they run on the engine their trained
  version would;
* **H@3 and MMA@3** on the development split through the HPatches pipeline
  (:func:`zippy_eval.hpatches.pipeline.run`), only for backbones with trained weights; the others are
  listed as "not trained yet", never given numbers.

Outputs: ``OUTPUT/summary.json`` (protocol, environment, per-backbone rows), ``OUTPUT/table.md``,
``OUTPUT/size_vs_accuracy.png``, ``OUTPUT/latency_vs_accuracy.png`` and the document ``docs/backbones.md``
(table and plots), all written atomically. Command line: ``python tools/compare_backbones.py``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zippy.io import atomic_path

log = logging.getLogger(__name__)

__all__ = ["CompareConfig", "compute_stats", "find_weights", "measure_latency", "run"]

REPO_ROOT = Path(__file__).resolve().parents[1]
NOT_TRAINED = "not trained yet"


@dataclass(frozen=True)
class CompareConfig:
    """What to compare and how.

    Attributes:
        backbones: names to compare (empty: every registered backbone).
        weights: backbone -> weights file (overrides the search below).
        runs_dir: folder searched for ``<runs_dir>/<backbone>/best.pt`` (then ``weights.pt``).
        dataset_dir: development-split HPatches-layout folder (None: no accuracy columns).
        settings: HPatches settings "HxW:K" for the accuracy columns (the first is the headline).
        include, exclude: glob patterns on sequence names (HPatches pipeline).
        sizes: latency resolutions (height, width).
        repeats: timed extractions per latency measurement.
        threads: torch / OpenCV / numba threads while measuring.
        latency: measure latency at all.
    """

    backbones: tuple[str, ...] = ()
    weights: dict[str, str] = field(default_factory=dict)
    runs_dir: str | None = None
    dataset_dir: str | None = None
    settings: tuple[str, ...] = ("240x320:300",)
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    sizes: tuple[tuple[int, int], ...] = ((240, 320), (480, 640))
    repeats: int = 5
    threads: int = 1
    latency: bool = True


def _registered() -> list[str]:
    import zippy.models.compression  # noqa: F401  (registers the compression backbones)
    from zippy.models import available

    return available()


def find_weights(name: str, conf: CompareConfig) -> tuple[Path | None, dict[str, Any]]:
    """(weights file, its meta) of a *trained* ``name``: explicit, shipped, or from ``runs_dir``; else (None, {})."""
    from zippy.weights import load_weights, shipped_weights

    candidates: list[Path] = []
    if name in conf.weights:
        candidates.append(Path(conf.weights[name]))
    else:
        shipped = shipped_weights(name)
        if shipped is not None:
            candidates.append(shipped)
        if conf.runs_dir:
            candidates += [Path(conf.runs_dir) / name / "best.pt", Path(conf.runs_dir) / name / "weights.pt"]
    for path in candidates:
        if not path.is_file():
            if name in conf.weights:
                raise FileNotFoundError(f"weights file for {name} not found: {path}")
            continue
        cfg, _, meta = load_weights(path)
        if cfg.backbone != name:
            raise ValueError(f"{path} holds backbone {cfg.backbone!r}, not {name!r}")
        if meta.get("trained", True) and int(meta.get("steps", 1)) > 0:
            return path, meta
    return None, {}


# ----------------------------------------------------------------------------------------------- size / compute


def _weight_bits(m: Any) -> tuple[int, int] | None:
    """(weight bits, input bits) of a conv-like module, or None for other modules."""
    from torch import nn

    from zippy.models.compression import A2QConv2d
    from zippy.quant.layers import ActQuant, BinaryConv2d, QConv2d

    if isinstance(m, BinaryConv2d):
        return 1, 1
    if isinstance(m, (QConv2d, A2QConv2d)):
        iq = m.input_quant
        return int(m.bits), int(iq.bits) if isinstance(iq, ActQuant) else 8
    if isinstance(m, nn.Conv2d):
        return 32, 32
    return None


def compute_stats(model: Any, height: int = 240, width: int = 320) -> dict[str, Any]:
    """Parameters, sizes, MACs, BOPs and BM add/max operations of ``model`` (see the module docstring)."""
    import torch

    from zippy.models.compression import BMConv2d, ShiftConv
    from zippy.quant.layers import BinaryConv2d, QConv2d, set_fake_quant
    from zippy.weights import save_weights

    params = sum(p.numel() for p in model.parameters())
    bits = 0
    weight_bits: dict[str, int] = {}
    for m in model.modules():
        wb = _weight_bits(m)
        for pname, p in m.named_parameters(recurse=False):
            if wb is not None and pname == "weight":
                weight_bits[str(wb[0])] = weight_bits.get(str(wb[0]), 0) + p.numel()
                bits += p.numel() * wb[0]
                if 1 < wb[0] < 32:  # quantized: one float32 scale per output channel or group
                    groups = getattr(m, "group_size", 0)
                    bits += 32 * p.shape[0] * (p.shape[1] // groups if groups else 1)
            elif wb is not None and wb[0] < 32 and pname in ("norm", "scale"):
                continue  # a2q's norms and scales end up in the per-channel scale counted above
            elif isinstance(m, ShiftConv) and pname == "logits":
                bits += 4 * p.shape[0]  # deployed: one offset index (4 bits) per channel
            else:
                bits += 32 * p.numel()
    counts = {"macs": 0, "bops": 0, "bm_ops": 0}

    def hook(m: Any, args: tuple[Any, ...], out: Any) -> None:
        per_out = (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        n = out.numel() // out.shape[0] * per_out
        if isinstance(m, BMConv2d) and bool(m.bm_enabled):
            counts["bm_ops"] += n
            return
        wb, ab = _weight_bits(m) or (32, 32)
        counts["macs"] += n
        counts["bops"] += n * wb * ab

    # a copy with fake quantization off, so every conv module runs (the integer-exact eval path of the
    # zippypoint chains calls F.conv2d directly); the counts depend on the shapes only
    probe = set_fake_quant(copy.deepcopy(model), False).eval()
    for m in probe.modules():
        if _weight_bits(m) is not None:
            m.register_forward_hook(hook)
    with torch.no_grad():
        probe(torch.rand(1, 3, height, width))
    with tempfile.TemporaryDirectory() as tmp:
        file_bytes = save_weights(Path(tmp) / "w.pt", model).stat().st_size
    n_binary = sum(p.numel() for m in model.modules() if isinstance(m, BinaryConv2d) for p in [m.weight])
    n_quant = sum(m.weight.numel() for m in model.modules() if isinstance(m, QConv2d))
    return {
        "params": params,
        "params_by_weight_bits": weight_bits,
        "binary_params": n_binary,
        "quantized_params": n_quant,
        "file_bytes": file_bytes,
        "packed_bytes": int(np.ceil(bits / 8)),
        "gmacs": counts["macs"] / 1e9,
        "gbops": counts["bops"] / 1e9,
        "bm_gops": counts["bm_ops"] / 1e9,
        "at": f"{height}x{width}",
    }


# ----------------------------------------------------------------------------------------------- latency


def _calibrated_copy(model: Any) -> Any:
    """A copy whose never-trained activation ranges are set by one random forward pass (latency only)."""
    import torch

    from zippy.quant.layers import ActQuant

    if all(bool(m.initialized) for m in model.modules() if isinstance(m, ActQuant)):
        return model
    m = copy.deepcopy(model).train()
    with torch.no_grad():
        m(torch.rand(1, 3, 64, 64))
    return m.eval()


def measure_latency(model: Any, sizes: Sequence[tuple[int, int]], repeats: int) -> dict[str, Any]:
    """Median ms of ``Extractor.extract`` per size (engine "auto") and the engine used."""
    import cv2
    import skimage.data

    from zippy.extractor import Extractor

    ex = Extractor(_calibrated_copy(model), engine="auto")
    photo = skimage.data.astronaut()
    out: dict[str, Any] = {"engine": ex.engine, "ms": {}, "load_before": os.getloadavg()[0]}
    for h, w in sizes:
        img = cv2.resize(photo, (w, h), interpolation=cv2.INTER_AREA)
        ex.extract(img, max_keypoints=1000)  # warm-up (kernel selection, numba compilation)
        times = []
        for _ in range(max(repeats, 1)):
            t0 = time.perf_counter()
            ex.extract(img, max_keypoints=1000)
            times.append(1e3 * (time.perf_counter() - t0))
        out["ms"][f"{h}x{w}"] = statistics.median(times)
    out["load_after"] = os.getloadavg()[0]
    return out


# ----------------------------------------------------------------------------------------------- accuracy


def _accuracy(trained: dict[str, Path], conf: CompareConfig, output_dir: Path) -> dict[str, dict[str, Any]]:
    """{backbone: {setting: {"h_acc@3", "mma@3", "num_pairs"}}} from the HPatches pipeline (dataset "all" group)."""
    if not trained or not conf.dataset_dir:
        return {}
    import json

    from zippy_eval.hpatches.pipeline import HPatchesConfig, Setting
    from zippy_eval.hpatches.pipeline import run as run_hpatches

    hconf = HPatchesConfig(
        methods=tuple(trained),
        settings=tuple(Setting.parse(s) for s in conf.settings),
        weights={k: str(v) for k, v in trained.items()},
        include=conf.include,
        exclude=conf.exclude,
        threads=conf.threads,
    )
    summary = json.loads(run_hpatches(hconf, conf.dataset_dir, output_dir / "hpatches").read_text())
    res: dict[str, dict[str, Any]] = {}
    for by_setting in summary["aggregates"].values():
        for stag, by_method in by_setting.items():
            for name, groups in by_method.items():
                g = groups.get("all", {})
                res.setdefault(name, {})[stag] = {
                    "h_acc@3": g.get("h_acc@3"),
                    "mma@3": g.get("mma@3"),
                    "num_pairs": g.get("num_pairs"),
                }
    return res


# ----------------------------------------------------------------------------------------------- run


def _describe(name: str) -> str:
    import re

    from zippy.models import get_factory

    doc = (get_factory(name).__doc__ or "").strip().splitlines()
    return re.sub(r":\w+:`([^`]+)`", r"\1", doc[0]).rstrip(".") if doc else ""


def _extra_notes(name: str, model: Any, engine: str | None, trained: bool) -> str:
    from zippy.models.compression import accumulator_report, weight_sparsity

    notes = []
    if name == "a2q":
        rows = accumulator_report(model)
        p = rows[0]["accumulator_bits"] if rows else None
        notes.append(f"P={p}: all layers fit: {all(r['fits'] for r in rows)}")
        if trained:  # the sparsity of random initial weights says nothing
            notes.append(f"weight sparsity {100 * weight_sparsity(model)['sparsity']:.1f}%")
    if engine == "fp32" and any(_weight_bits(m) not in (None, (32, 32)) for m in model.modules()):
        notes.append("no integer kernel here for this layout: latency is the fp32 fake-quant network")
    return "; ".join(notes)


def run(conf: CompareConfig, output_dir: str | os.PathLike, doc_path: str | os.PathLike | None = None) -> Path:
    """Compare the backbones; returns the summary.json path (see the module docstring).

    Raises:
        ValueError: an unknown backbone name; FileNotFoundError: an explicit weights file is missing.
    """
    from tqdm import tqdm

    from zippy.models import KeypointNet, ModelConfig
    from zippy.weights import file_sha256, load_model
    from zippy_eval.results import write_summary, write_text

    output_dir = Path(output_dir)
    known = _registered()
    names = list(conf.backbones) or sorted(known, key=lambda n: (n not in ("zippypoint", "kp2d"), n != "zippypoint", n))
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown backbones {unknown}; choose from {known}")
    from zippy.threads import set_threads

    set_threads(conf.threads)
    rows: list[dict[str, Any]] = []
    trained: dict[str, Path] = {}
    for name in tqdm(names, desc="backbones"):
        path, meta = find_weights(name, conf)
        if path is not None:
            model, _ = load_model(path)
            trained[name] = path
        else:
            import torch

            torch.manual_seed(0)
            model = KeypointNet(ModelConfig(backbone=name)).eval()
        row: dict[str, Any] = {"backbone": name, "what": _describe(name), "binary": bool(model.binary_descriptors)}
        row["weights"] = str(path) if path else None
        row["weights_sha256"] = file_sha256(path) if path else None
        row["trained"] = {k: meta.get(k) for k in ("steps", "wall_time_s")} if path else None
        row.update(compute_stats(model))
        lat = measure_latency(model, conf.sizes, conf.repeats) if conf.latency else None
        row["latency"] = lat
        row["notes"] = _extra_notes(name, model, lat["engine"] if lat else None, path is not None)
        rows.append(row)
        log.info("%s: %s", name, {k: row[k] for k in ("params", "packed_bytes", "gmacs")})
    acc = _accuracy(trained, conf, output_dir)
    headline = conf.settings[0].replace(":", "_top") if conf.settings else None
    for row in rows:
        row["accuracy"] = acc.get(row["backbone"]) if row["backbone"] in trained else None

    table = _table(rows, conf, headline)
    output_dir.mkdir(parents=True, exist_ok=True)
    plots = _plots(rows, headline, output_dir)
    write_text(output_dir / "table.md", table)
    protocol = {
        "name": "backbone comparison",
        "macs_at": "240x320",
        "latency": "median ms of Extractor.extract (network + post-processing), engine 'auto', after one warm-up",
        "latency_sizes": [f"{h}x{w}" for h, w in conf.sizes],
        "repeats": conf.repeats,
        "threads": conf.threads,
        "packed_size": "conv weights at their bit width + a float32 scale per output channel / group; rest float32",
        "bops": "MACs x weight bits x input bits (float: 32 x 32)",
        "accuracy": {
            "dataset_dir": conf.dataset_dir,
            "settings": list(conf.settings),
            "include": list(conf.include) if conf.include else None,
            "exclude": list(conf.exclude),
            "group": "all",
        },
        "untrained": f"listed as '{NOT_TRAINED}' without accuracy",
    }
    summary = write_summary(
        output_dir,
        protocol=protocol,
        dataset={"dataset_dir": conf.dataset_dir},
        methods={r["backbone"]: {"weights": r["weights"], "weights_sha256": r["weights_sha256"]} for r in rows},
        rows=rows,
        aggregates={r["backbone"]: r["accuracy"] for r in rows},
        extra={"config": asdict(conf), "plots": plots, "table": "table.md"},
    )
    if doc_path is not None:
        _write_doc(Path(doc_path), table, plots, output_dir, conf)
    return summary


def _fmt_ms(row: dict[str, Any], size: str) -> str:
    lat = row.get("latency")
    return f"{lat['ms'][size]:.0f}" if lat and size in lat["ms"] else "-"


def _table(rows: list[dict[str, Any]], conf: CompareConfig, headline: str | None) -> str:
    from zippy_eval.results import markdown_table

    sizes = [f"{h}x{w}" for h, w in conf.sizes]
    headers = ["backbone", "what", "trained", "params (M)", "weights file (MB)", "packed (MB)", "GMAC", "GBOP"]
    headers += ["BM G add-max", "engine", *[f"ms {s}" for s in sizes], "H@3", "MMA@3", "notes"]
    out = []
    for r in rows:
        acc = (r.get("accuracy") or {}).get(headline) if headline else None
        t = r.get("trained")
        trained = f"{t['steps']} steps, {t['wall_time_s'] / 60:.0f} min" if t and t.get("wall_time_s") else "-"
        out.append(
            [
                r["backbone"],
                r["what"],
                trained if r["weights"] else NOT_TRAINED,
                r["params"] / 1e6,
                r["file_bytes"] / 1e6,
                r["packed_bytes"] / 1e6,
                r["gmacs"],
                r["gbops"],
                r["bm_gops"] or None,
                (r.get("latency") or {}).get("engine", "-"),
                *[_fmt_ms(r, s) for s in sizes],
                acc["h_acc@3"] if acc else (NOT_TRAINED if not r["weights"] else "-"),
                acc["mma@3"] if acc else (NOT_TRAINED if not r["weights"] else "-"),
                r["notes"],
            ]
        )
    return markdown_table(headers, out, floatfmt=".3f")


def _plots(rows: list[dict[str, Any]], headline: str | None, output_dir: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from zippy_eval.results import save_figure

    done = {}
    pts = [(r, (r.get("accuracy") or {}).get(headline) if headline else None) for r in rows]
    pts = [(r, a) for r, a in pts if a and a.get("h_acc@3") is not None]
    size = rows[0]["latency"]["ms"] if rows and rows[0].get("latency") else {}
    first = next(iter(size), None)
    for key, xlabel, xfn in (
        ("size_vs_accuracy", "packed model size (MB)", lambda r: r["packed_bytes"] / 1e6),
        (
            "latency_vs_accuracy",
            f"latency {first} (ms, 1 thread)",
            lambda r: (r.get("latency") or {}).get("ms", {}).get(first),
        ),
    ):
        fig, ax = plt.subplots(figsize=(6, 4.2))
        usable = [(r, a) for r, a in pts if xfn(r) is not None]
        for r, a in usable:
            x = xfn(r)
            ax.scatter([x], [a["h_acc@3"]], marker="o", color="C0")
            ax.scatter([x], [a["mma@3"]], marker="^", color="C1")
            ax.annotate(r["backbone"], (x, a["h_acc@3"]), fontsize=8, xytext=(3, 3), textcoords="offset points")
        if not usable:
            ax.text(0.5, 0.5, "no trained backbone yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_xscale("log")
        ax.set_ylim(0, 1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"development split, {headline}")
        ax.scatter([], [], marker="o", color="C0", label="H@3")
        ax.scatter([], [], marker="^", color="C1", label="MMA@3")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = output_dir / f"{key}.png"
        save_figure(fig, path, dpi=100)
        done[key] = path.name
    return done


def _write_doc(doc: Path, table: str, plots: dict[str, str], output_dir: Path, conf: CompareConfig) -> None:
    from zippy_eval.results import environment, write_text

    env = environment()
    latency = (
        f"median of `Extractor.extract` (network + post-processing), {conf.threads} thread(s), engine "
        '"auto" (the int8 engine where it supports the network, else fp32 with fake quantization); load '
        "average before / after each measurement in `summary.json` (shared machine: compare ratios within one run)."
        if conf.latency
        else "**not measured in this run** (`--no-latency`)."
    )
    img_dir = doc.parent / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    links = []
    for key, name in plots.items():
        target = img_dir / f"backbones_{name}"
        with atomic_path(target) as tmp:
            shutil.copyfile(output_dir / name, tmp)
        links.append(f"![{key}](img/{target.name})")
    text = f"""# Compression backbones compared

Generated by `python tools/compare_backbones.py` (code: `tools/compare_backbones.py`); the full
record with the protocol and the environment is `{output_dir}/summary.json`.

Every backbone is the same detector-descriptor (same heads, 256-bit descriptors with 64 ones, same trainer
and evaluation); only the layers change (`zippy/models/backbones.py`, `zippy/models/compression.py`).
Backbones without trained weights are listed as "{NOT_TRAINED}": their size, compute and latency are
real (they do not depend on training), their accuracy is not given.

* sizes: "weights file" is the fp32 training weights file; "packed" counts every conv weight at its bit
  width plus a float32 scale per output channel (or group), the rest float32.
* compute at 240x320: GMAC = multiply-accumulates of the convolutions, GBOP = MACs x weight bits x input
  bits (float 32 x 32); BM layers have no multiplications and are counted as add/max pairs.
* latency: {latency}
* accuracy: development split `{conf.dataset_dir}`, setting {", ".join(conf.settings)}: homography
  accuracy at 3 px (H@3) and mean matching accuracy at 3 px (MMA@3), all sequences.

Machine: {env.get("cpu") or env.get("platform", "")}; torch {env.get("versions", {}).get("torch")};
threads {conf.threads}; load average at the end {os.getloadavg()[0]:.1f}.

{table}

{chr(10).join(links)}
"""
    write_text(doc, text)


# ----------------------------------------------------------------------------------------------- main


def _parse_weights(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--weights takes NAME=PATH, got {item!r}")
        out[name] = path
    return out


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as e:
        raise ValueError(f"sizes must look like HxW (e.g. 240x320), got {text!r}") from e
    return h, w


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options of ``python tools/compare_backbones.py``."""
    d = CompareConfig()
    parser.add_argument("--backbones", nargs="*", default=[], help="names (default: every registered backbone)")
    parser.add_argument("--weights", nargs="*", default=[], metavar="NAME=PATH", help="trained weights per backbone")
    parser.add_argument("--runs", default=None, help="folder with <backbone>/best.pt training runs")
    parser.add_argument("--dataset", default=None, help="development-split HPatches-layout folder")
    parser.add_argument("--include", nargs="*", default=None, help="sequence name patterns to use")
    parser.add_argument("--exclude", nargs="*", default=[], help="sequence name patterns to skip")
    parser.add_argument("--settings", nargs="+", default=list(d.settings), help="HPatches settings HxW:K")
    parser.add_argument("--sizes", nargs="+", default=[f"{h}x{w}" for h, w in d.sizes], help="latency sizes HxW")
    parser.add_argument("--repeats", type=int, default=d.repeats)
    parser.add_argument("--threads", type=int, default=d.threads)
    parser.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    parser.add_argument("--output", default="results/backbones", help="result folder")
    parser.add_argument("--doc", default=str(REPO_ROOT / "docs" / "backbones.md"), help="markdown document to write")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python tools/compare_backbones.py [options]``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    parser = argparse.ArgumentParser(description="compare every registered backbone on one table")
    add_arguments(parser)
    args = parser.parse_args(argv)
    conf = CompareConfig(
        backbones=tuple(args.backbones),
        weights=_parse_weights(args.weights),
        runs_dir=args.runs,
        dataset_dir=args.dataset,
        settings=tuple(args.settings),
        include=tuple(args.include) if args.include else None,
        exclude=tuple(args.exclude),
        sizes=tuple(_parse_size(s) for s in args.sizes),
        repeats=args.repeats,
        threads=args.threads,
        latency=not args.no_latency,
    )
    path = run(conf, args.output, args.doc)
    from zippy_eval.results import print_results

    print_results(path, f"; document: {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
