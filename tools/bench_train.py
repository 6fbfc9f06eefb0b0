"""Training throughput on this CPU: fp32 vs bf16 autocast (AMX), channels_last, data-loading workers.

Each setting runs a few optimizer steps of the real training step (network forward on both images,
KP2D-style losses, backward, AdamW) after a warm-up step, on the same pairs, in one process, and
reports pairs per second. Writes ``results/bench_train/<tag>/summary.json`` and ``summary.md``.

Usage::

    python tools/bench_train.py --images ../shared/data/train_images --steps 3 --threads 1
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from zippy.models import KeypointNet, ModelConfig
from zippy.train.data import AugmentConfig, HomographyPairs, list_images
from zippy.train.losses import LossConfig, pair_loss, split_views
from zippy_eval.results import markdown_table, write_summary, write_text


def _step(model: KeypointNet, opt: torch.optim.Optimizer, batch: dict[str, torch.Tensor], bf16: bool, cl: bool) -> None:
    x = torch.cat([batch["image0"], batch["image1"]])
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(x)
    b = batch["image0"].shape[0]
    o0, o1 = split_views(out, b)
    loss, _ = pair_loss(
        o0, o1, batch["H"], batch["valid1"], binary=model.binary_descriptors, ones=model.cfg.desc_ones,
        temperature=model.cfg.temperature, cfg=LossConfig(),
    )  # fmt: skip
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def measure(
    images: str, backbone: str, batch_size: int, steps: int, bf16: bool, channels_last: bool, workers: int
) -> dict[str, Any]:
    """Pairs per second of ``steps`` training steps (after one warm-up step)."""
    torch.manual_seed(0)
    model = KeypointNet(ModelConfig(backbone=backbone)).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ds = HomographyPairs(list_images(images), AugmentConfig(), seed=0)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, shuffle=False)
    it = iter(loader)
    _step(model, opt, next(it), bf16, channels_last)
    t0 = time.perf_counter()
    for _ in range(steps):
        _step(model, opt, next(it), bf16, channels_last)
    dt = time.perf_counter() - t0
    return {
        "backbone": backbone,
        "bf16": bf16,
        "channels_last": channels_last,
        "workers": workers,
        "batch_size": batch_size,
        "steps": steps,
        "seconds": dt,
        "pairs_per_s": steps * batch_size / dt,
    }


def run(conf: dict[str, Any], output_dir: str | os.PathLike) -> Path:
    """Measure every combination in ``conf`` and write the summary; returns the summary.json path."""
    torch.set_num_threads(conf["threads"])
    rows = []
    load0 = os.getloadavg()
    for backbone, bf16, cl, workers in itertools.product(
        conf["backbones"], conf["bf16"], conf["channels_last"], conf["workers"]
    ):
        rows.append(measure(conf["images"], backbone, conf["batch_size"], conf["steps"], bf16, cl, workers))
    out = Path(output_dir)
    load1 = os.getloadavg()
    path = write_summary(
        out, protocol=conf, dataset={"images": conf["images"]}, methods={}, rows=rows, aggregates={},
        extra={"loadavg_start": load0},
    )  # fmt: skip
    cols = ["backbone", "bf16", "channels_last", "workers", "batch_size", "pairs_per_s"]
    table = markdown_table(cols, [[r[k] for k in cols] for r in rows], floatfmt=".2f")
    note = f"threads {conf['threads']}, load average {load0[0]:.1f} -> {load1[0]:.1f}\n\n"
    write_text(out / "summary.md", "# Training throughput\n\n" + note + table + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", required=True)
    p.add_argument("--backbones", default="zippypoint")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="results/bench_train/default")
    a = p.parse_args(argv)
    conf = {
        "images": a.images,
        "backbones": a.backbones.split(","),
        "batch_size": a.batch_size,
        "steps": a.steps,
        "threads": a.threads,
        "bf16": [False, True],
        "channels_last": [False, True],
        "workers": [0, 1],
    }
    path = run(conf, a.out)
    print((path.parent / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
