"""The training loop: CPU-friendly, checkpointed, resumable, DDP-ready (torchrun, gloo backend).

Files in ``out_dir``:
    last.pt      resumable checkpoint (model fp32, AdamW moments in bf16, step), rewritten atomically
    best.pt      weights file (zippy.weights format) of the best validation score so far
    weights.pt   weights file of the latest validation / the end of the run (BN recalibrated)
    log.jsonl    one JSON object per logged step / validation
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from zippy.models import ModelConfig, build_network, clip_binary_weights, compression, default_config
from zippy.quant.layers import reset_activation_ranges, set_fake_quant
from zippy.quant.ste import set_ste
from zippy.train.bn import recalibrate_batchnorm
from zippy.train.data import DEV_PREFIX, TRAIN_GLOBS, AugmentConfig, HomographyPairs, augment_config, list_images
from zippy.train.distill import DistillConfig, Distiller, make_teacher
from zippy.train.init import init_from
from zippy.train.losses import LossConfig, pair_loss, split_views, view_corners
from zippy.train.validate import VALIDATION_PHOTOMETRY, ValidationSet, validate
from zippy.weights import atomic_torch_save, save_weights

log = logging.getLogger(__name__)

__all__ = ["TrainConfig", "train", "validation_set"]


@dataclass
class TrainConfig:
    """Settings of a training run (saved in the checkpoint and the log)."""

    images: str
    out_dir: str
    extra_images: tuple[str, ...] = ()  # more training folders, all of whose photos are used
    backbone: str = "zippypoint"
    steps: int = 20000
    minutes: float = 0.0  # wall-clock budget (0: none): training ends at `steps` or after this many minutes
    batch_size: int = 8
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 1e-4
    warmup_steps: int = 200
    workers: int = 1
    threads: int = 0  # 0: leave torch's default
    bf16: bool = False
    channels_last: bool = False
    ckpt_minutes: float = 5.0
    val_every: int = 500
    val_images: str | None = None  # folder of development photos (bsds500_test_* by default)
    val_pairs: int = 24
    log_every: int = 10
    seed: int = 0
    init: str | None = None  # weights / checkpoint to start from (e.g. a float warm-up)
    temperature: float | None = None
    train_globs: tuple[str, ...] = TRAIN_GLOBS
    crop: tuple[int, int] = (240, 320)  # training crop (height, width)
    photo_short_side: tuple[int, int] | None = None  # photo rescale range (AugmentConfig.photo_short_side)
    float_warmup_steps: int = 0  # steps trained with quantization off (binary convs as float) before QAT
    ste: str = "ste"  # straight-through estimator of quantized layers: "ste" or "ana" (additive noise annealing)
    distill: str | None = None  # teacher: "aliked", an ALIKED .pth, a zippy weights file or a shipped backbone
    distill_weight: float = 1.0
    distill_options: dict[str, Any] = field(default_factory=dict)  # DistillConfig overrides, e.g. {"max_points": 64}
    teacher_cache: str | None = None  # cache folder of a cached teacher (ALIKED); default out_dir/teacher_cache
    model_options: dict[str, Any] = field(default_factory=dict)  # backbone options (ModelConfig.options)
    model_config: dict[str, Any] = field(default_factory=dict)  # other ModelConfig fields (e.g. feat_dim)
    bn_recal_batches: int = 8  # batches of training pairs used to recalibrate BN before validating / exporting
    loss: dict[str, Any] = field(default_factory=dict)
    augment: dict[str, Any] = field(default_factory=dict)  # AugmentConfig overrides (not the crop sizes)


def _overridden(cls: type, overrides: dict[str, Any], what: str) -> Any:
    """``cls(**overrides)`` with a clear error naming the unknown fields of the ``what`` setting."""
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ValueError(f"{what}: unknown {cls.__name__} fields {unknown}; choose from {names}")
    return cls(**overrides)


def _is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _progress(tc: TrainConfig, step: int, elapsed_s: float) -> float:
    """Fraction of the training done: of the steps, or of the time budget when that is further along."""
    frac = step / max(tc.steps, 1)
    if tc.minutes > 0:
        frac = max(frac, elapsed_s / (60.0 * tc.minutes))
    return min(frac, 1.0)


def _lr_at(tc: TrainConfig, step: int, progress: float | None = None) -> float:
    """Linear warm-up over ``warmup_steps``, then a cosine decay to ``min_lr`` over the rest of the run.

    ``progress`` (the fraction of the run done, see :func:`_progress`) places the cosine when a time budget
    ends the run; by default it is ``step / steps``.
    """
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    if progress is None:
        t = (step - tc.warmup_steps) / max(tc.steps - tc.warmup_steps, 1)
    else:
        w = tc.warmup_steps / max(tc.steps, 1) if tc.minutes <= 0 else 0.0
        t = (progress - w) / max(1.0 - w, 1e-9)
    return tc.min_lr + 0.5 * (tc.lr - tc.min_lr) * (1 + math.cos(math.pi * min(t, 1.0)))


def _compact_optimizer_state(opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Optimizer state with moment tensors in bf16 (halves the checkpoint); restored to fp32 on load."""
    sd = opt.state_dict()
    state = {
        k: {n: (t.to(torch.bfloat16) if torch.is_tensor(t) and t.ndim > 0 else t) for n, t in v.items()}
        for k, v in sd["state"].items()
    }
    return {"state": state, "param_groups": sd["param_groups"]}


def _restore_optimizer_state(opt: torch.optim.Optimizer, sd: dict[str, Any]) -> None:
    state = {
        k: {n: (t.float() if torch.is_tensor(t) and t.ndim > 0 else t) for n, t in v.items()}
        for k, v in sd["state"].items()
    }
    opt.load_state_dict({"state": state, "param_groups": sd["param_groups"]})


def _setup_distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def _drop_torn_line(path: Path) -> None:
    """Cut a last line without its newline (a process killed mid-append) so appends start on a fresh line."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        keep = data.rfind(b"\n") + 1
        f.truncate(keep)
    log.warning("dropped the torn last line of %s (an interrupted run)", path)


def _raise_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so the final checkpoint is written (as on Ctrl-C)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def _sigterm_deferred() -> Iterator[None]:
    """A SIGTERM inside the block is logged and ignored: the final checkpoint and weights.pt are being written,
    and an exit in the middle of them would lose the run's end (a stop request that arrives as the run ends on
    its own, or a second one). The previous handler is restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        log.warning("SIGTERM while writing the final checkpoint and weights: finishing them first")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _ignore_stop_signals(worker_id: int) -> None:
    """Data workers ignore Ctrl-C / SIGTERM sent to the whole process group (``pkill -f``, a terminal):
    the main process writes its final checkpoint and then shuts them down. A worker killed first made
    that checkpoint fail ("DataLoader worker ... is killed by signal")."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _augment(tc: TrainConfig, overrides: dict[str, Any]) -> AugmentConfig:
    """The run's crop and training scale with the photometric ``overrides``."""
    pss = tuple(tc.photo_short_side) if tc.photo_short_side else None
    return augment_config(tc.crop, pss, overrides)


def validation_set(tc: TrainConfig) -> ValidationSet:
    """The quick validation's fixed pairs: ``val_pairs`` development photos at the training crop and scale.

    They use fixed photometric ranges (:data:`VALIDATION_PHOTOMETRY`), not the training's, so that runs
    with different augmentations are validated on the same pairs.
    """
    val_dir = tc.val_images or tc.images
    vfiles = list_images(val_dir, ("bsds500_test_*",) if tc.val_images is None else ("*",))
    return ValidationSet(vfiles[: tc.val_pairs], aug=_augment(tc, VALIDATION_PHOTOMETRY))


def train(tc: TrainConfig, *, resume: bool = False, progress: bool = True) -> Path:
    """Run (or resume) training; returns the path of the latest weights file.

    Interrupting (Ctrl-C or SIGTERM) writes a final checkpoint before leaving.
    """
    from tqdm import tqdm

    _raise_on_sigterm()
    if tc.minutes > 0 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("--minutes is not supported with several processes (their clocks would stop them apart)")
    rank, world = _setup_distributed()
    if tc.threads:
        torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed + rank)
    out = Path(tc.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = out / "last.pt", out / "log.jsonl"
    if _is_main():
        from zippy.io import remove_temp_files

        remove_temp_files(out, recursive=False)  # a checkpoint write cut short by a kill
        _drop_torn_line(log_path)

    clash = sorted({"backbone", "options"} & set(tc.model_config))
    if clash:
        raise ValueError(f"model_config may not set {clash}: use backbone / model_options")
    mcfg = {**tc.model_config, "options": dict(tc.model_options)}
    if tc.temperature is not None:
        mcfg["temperature"] = tc.temperature
    model = build_network(default_config(tc.backbone, **mcfg))
    lcfg = _overridden(LossConfig, tc.loss, "loss")
    dcfg = _overridden(DistillConfig, tc.distill_options, "distill_options")
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    step, best, elapsed0 = 0, -1.0, 0.0
    if resume and ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model = build_network(ModelConfig.from_dict(ck["model_config"]))
        model.load_state_dict(ck["model"], strict=True)
        opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        _restore_optimizer_state(opt, ck["optimizer"])
        step, best, elapsed0 = int(ck["step"]), float(ck["best"]), float(ck.get("elapsed_s", 0.0))
        log.info("resumed from %s at step %d", ckpt_path, step)
    elif resume:
        log.warning("--resume: no checkpoint at %s, starting from scratch", ckpt_path)
    if step == 0 and tc.init:
        init_from(model, tc.init)
    if tc.ste != "ste":
        set_ste(model, tc.ste)
    if step < tc.float_warmup_steps:
        set_fake_quant(model, False, binary=False)
        log.info("float warm-up: quantization off until step %d", tc.float_warmup_steps)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model

    files = list_images(tc.images, tuple(tc.train_globs))
    for folder in tc.extra_images:  # every photo of these folders but the development split's
        files += [f for f in list_images(folder, ("*",)) if not f.name.startswith(DEV_PREFIX)]
    aug = _augment(tc, tc.augment)
    dataset = HomographyPairs(files, aug, seed=tc.seed)
    distiller = None
    if tc.distill:
        cache = Path(tc.teacher_cache) if tc.teacher_cache else out / "teacher_cache"
        distiller = Distiller(make_teacher(tc.distill, files=files, cache_dir=cache, cfg=dcfg), dcfg)
        if _is_main() and hasattr(distiller.teacher, "build_cache"):
            distiller.teacher.build_cache(progress=progress)
    sampler = (
        DistributedSampler(dataset, num_replicas=world, rank=rank, seed=tc.seed, drop_last=True)
        if world > 1
        else RandomSampler(dataset, generator=torch.Generator().manual_seed(tc.seed))
    )
    loader_kw = {
        "num_workers": tc.workers,
        "persistent_workers": tc.workers > 0,
        "drop_last": True,
        "worker_init_fn": _ignore_stop_signals if tc.workers > 0 else None,
    }
    loader = DataLoader(dataset, batch_size=tc.batch_size, sampler=sampler, **loader_kw)
    vset = validation_set(tc) if _is_main() and tc.val_every > 0 else None

    if _is_main():
        _append_jsonl(log_path, {"event": "start", "step": step, "world": world, "config": asdict(tc)})
    steps_per_epoch = len(loader)
    epoch = step // max(steps_per_epoch, 1)
    bar = tqdm(total=tc.steps, initial=step, disable=not (progress and _is_main()), desc="train", dynamic_ncols=True)
    t_start, t_ckpt, seen = time.time(), time.time(), 0
    binary = model.binary_descriptors

    recal_set = HomographyPairs(files, aug, seed=tc.seed + 1000)

    def recalibrate() -> None:
        def batches():
            for i in range(tc.bn_recal_batches):
                items = [recal_set[(i * tc.batch_size + j) % len(recal_set)] for j in range(tc.batch_size)]
                views = [torch.stack([it[key] for it in items]) for key in ("image0", "image1")]
                yield torch.cat(views)

        recalibrate_batchnorm(model, batches())

    def export(name: str, metrics: dict[str, float] | None = None) -> None:
        meta = {"trained": True, "steps": step, "train_config": asdict(tc), **(metrics or {})}
        meta["wall_time_s"] = elapsed0 + time.time() - t_start
        # a "pruned" network ships physically smaller (its zeroed channels removed); last.pt keeps the full one
        shipped = compression.export_pruned(model).eval() if model.cfg.backbone == "pruned" else model
        save_weights(out / name, shipped, meta)

    bm_layers = [m for m in model.modules() if isinstance(m, compression.BMConv2d)]
    if step == 0 and tc.init and bm_layers:
        # "bm" from trained float weights (--init): the convs hold the trained weights; convert them to BM
        # layer by layer (least-squares fit on calibration crops) before fine-tuning
        for m in bm_layers:
            m.bm_enabled.fill_(False)
        n = tc.batch_size
        calib = [torch.stack([recal_set[i]["image0"] for i in range(j * n, (j + 1) * n)]) for j in range(2)]
        scores = compression.convert_to_bm(model, calib)
        if _is_main():
            _append_jsonl(log_path, {"event": "bm_conversion", "r2": scores})

    def checkpoint() -> None:
        elapsed = elapsed0 + time.time() - t_start
        atomic_torch_save(
            {
                "model": model.state_dict(),
                "model_config": model.cfg.to_dict(),
                "optimizer": _compact_optimizer_state(opt),
                "step": step,
                "best": best,
                "elapsed_s": elapsed,
                "train_config": asdict(tc),
            },
            ckpt_path,
        )

    def done() -> bool:
        return _progress(tc, step, elapsed0 + time.time() - t_start) >= 1.0

    try:
        while not done():
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            dataset.set_epoch(epoch)
            for batch in loader:
                if done():
                    break
                if step == tc.float_warmup_steps > 0:
                    set_fake_quant(model, True, binary=True)
                    reset_activation_ranges(model)
                    log.info("step %d: float warm-up over, quantization-aware training from here", step)
                lr = _lr_at(tc, step, _progress(tc, step, elapsed0 + time.time() - t_start))
                for g in opt.param_groups:
                    g["lr"] = lr
                x = torch.cat([batch["image0"], batch["image1"]], 0)
                if tc.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=tc.bf16):
                    outs = net(x)
                b = batch["image0"].shape[0]
                out0, out1 = split_views(outs, b)
                corners = None
                if lcfg.corner_desc_weight:
                    corners = tuple(view_corners(batch[k], lcfg.corner_points) for k in ("image0", "image1"))
                loss, parts = pair_loss(
                    out0,
                    out1,
                    batch["H"].double().float(),
                    batch["valid1"],
                    binary=binary,
                    ones=model.cfg.desc_ones,
                    temperature=model.cfg.temperature,
                    cfg=lcfg,
                    corners=corners,
                )
                loss = loss + compression.regularization(model)
                if distiller is not None:
                    d_loss, d_parts = distiller.loss(out0, out1, batch, model)
                    loss = loss + tc.distill_weight * d_loss
                    parts.update(d_parts)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                clip_binary_weights(model)
                compression.after_step(model, step + 1, tc.steps)
                step += 1
                seen += b * world
                bar.update(1)
                bar.set_postfix({k: f"{parts[k]:.3f}" for k in ("loss", "loc", "desc", "desc_precision")})
                if _is_main() and step % tc.log_every == 0:
                    rate = seen / max(time.time() - t_start, 1e-9)
                    _append_jsonl(log_path, {"step": step, "lr": lr, "pairs_per_s": rate, **parts})
                if vset is not None and step % tc.val_every == 0:
                    recalibrate()
                    metrics = validate(model, vset)
                    # the switch to quantization happens at the start of step float_warmup_steps + 1
                    float_mode = step <= tc.float_warmup_steps and tc.float_warmup_steps > 0
                    metrics["float_mode"] = float(float_mode)
                    score = metrics["val_h3"] + metrics["val_mma3"]
                    _append_jsonl(log_path, {"step": step, "event": "val", **metrics})
                    bar.write(f"step {step}: {metrics}")
                    export("weights.pt", metrics)
                    if score > best and not float_mode:  # best.pt: quantized weights only
                        best = score
                        export("best.pt", metrics)
                if _is_main() and time.time() - t_ckpt > 60 * tc.ckpt_minutes:
                    checkpoint()
                    t_ckpt = time.time()
            epoch += 1
    finally:
        bar.close()
        with _sigterm_deferred():
            if _is_main():
                checkpoint()
                recalibrate()
                export("weights.pt")
                _append_jsonl(log_path, {"event": "stop", "step": step})
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()
    return out / "weights.pt"
