"""`zippy train`: self-supervised training on an image folder (also under torchrun for DDP)."""

from __future__ import annotations

import argparse
import json

HELP = "train a backbone on random homographic pairs of an image folder (resumable; torchrun-ready)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", required=True, help="folder of training photos")
    p.add_argument(
        "--extra-images",
        action="append",
        default=[],
        help="another folder of training photos, all used (repeatable; bsds500_test_* photos are always left out)",
    )
    p.add_argument("--out", required=True, help="run folder (checkpoints, log.jsonl, weights)")
    p.add_argument("--backbone", default="zippypoint", help="registered backbone name (default zippypoint)")
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument(
        "--minutes",
        type=float,
        default=0.0,
        help="wall-clock budget: stop after this many minutes of training (resumes count), the learning "
        "rate's cosine follows whichever of steps and time is further along (default: no budget)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="pairs per step and process")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=200, help="linear learning-rate warm-up steps")
    p.add_argument("--workers", type=int, default=1, help="data loading worker processes")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (AMX): ~3x faster here")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--ckpt-minutes", type=float, default=5.0)
    p.add_argument("--val-every", type=int, default=500, help="steps between quick validations (0: never)")
    p.add_argument("--val-images", default=None, help="development photos (default: bsds500_test_* of --images)")
    p.add_argument(
        "--init",
        default=None,
        help="weights or checkpoint to start from: same backbone by tensor name, another one by structure "
        "(e.g. a trained float kp2d network as the warm-up of zippypoint)",
    )
    p.add_argument("--temperature", type=float, default=None, help="BinNormTrain temperature")
    p.add_argument("--loss", default="{}", help="JSON overrides of LossConfig, e.g. '{\"desc_weight\": 1}'")
    p.add_argument("--crop", default="240x320", help="training crop HxW (default 240x320)")
    p.add_argument(
        "--photo-short-side",
        default=None,
        help="LO,HI: resize each photo so its short side is uniform in [LO, HI] px before cropping, e.g. "
        "240,480 to train small crops at the pixel scale of 240x320-480x640 evaluation (default: the crop "
        "covers 60-100%% of the short side)",
    )
    p.add_argument(
        "--float-warmup-steps",
        type=int,
        default=0,
        help="train this many steps with quantization off (binary convs as float convs), then QAT",
    )
    p.add_argument("--ste", choices=("ste", "ana"), default="ste", help="estimator of quantized layers' gradients")
    p.add_argument("--distill", default=None, help="teacher: aliked, an ALIKED .pth, a zippy weights file or 'kp2d'")
    p.add_argument("--distill-weight", type=float, default=1.0)
    p.add_argument(
        "--distill-options",
        default="{}",
        help="JSON overrides of DistillConfig, e.g. '{\"max_points\": 64}' (teacher points per training view)",
    )
    p.add_argument(
        "--teacher-cache",
        default=None,
        help="folder of the ALIKED teacher cache, shareable between runs (default OUT/teacher_cache)",
    )
    p.add_argument("--options", default="{}", help="JSON backbone options, e.g. '{\"accumulator_bits\": 20}'")
    p.add_argument(
        "--model",
        default="{}",
        help="JSON ModelConfig fields, e.g. '{\"feat_dim\": 128}' for the light heads (default: the paper's sizes)",
    )
    p.add_argument(
        "--augment",
        default="{}",
        help='JSON overrides of the training augmentation (zippy.train.data.AugmentConfig), e.g. \'{"gamma": 0, '
        '"channel_gain": 0, "shade": 0}\' turns the illumination changes off (the crop is --crop)',
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--no-progress", action="store_true")


def _json_object(flag: str, text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{flag} must be a JSON object, got {text!r}: {e}") from e
    if not isinstance(value, dict):
        raise ValueError(f"{flag} must be a JSON object, got {text!r}")
    return value


def _short_side_range(text: str | None, crop: tuple[int, ...]) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        lo, hi = (int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--photo-short-side must be LO,HI in pixels, e.g. 240,480; got {text!r}") from None
    if not min(crop) <= lo <= hi:
        raise ValueError(f"--photo-short-side needs {min(crop)} <= LO <= HI (the crop must fit), got {text!r}")
    return lo, hi


def run(args: argparse.Namespace) -> int:
    from zippy.models import available
    from zippy.train.trainer import TrainConfig, train

    if args.backbone not in available():
        raise ValueError(f"unknown backbone {args.backbone!r}; choose one of {available()}")
    loss, options = _json_object("--loss", args.loss), _json_object("--options", args.options)
    model = _json_object("--model", args.model)
    augment = _json_object("--augment", args.augment)
    try:
        crop = tuple(int(v) for v in args.crop.lower().split("x"))
    except ValueError:
        crop = ()
    if len(crop) != 2 or min(crop) < 16 or crop[0] % 8 or crop[1] % 8:
        raise ValueError(f"--crop must be HxW with multiples of 8 (>= 16), got {args.crop!r}")
    pss = _short_side_range(args.photo_short_side, crop)
    tc = TrainConfig(
        images=args.images,
        extra_images=tuple(args.extra_images),
        out_dir=args.out,
        backbone=args.backbone,
        steps=args.steps,
        minutes=args.minutes,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        workers=args.workers,
        threads=args.threads,
        bf16=args.bf16,
        channels_last=args.channels_last,
        ckpt_minutes=args.ckpt_minutes,
        val_every=args.val_every,
        val_images=args.val_images,
        init=args.init,
        temperature=args.temperature,
        seed=args.seed,
        loss=loss,
        crop=crop,
        photo_short_side=pss,
        augment=augment,
        ste=args.ste,
        float_warmup_steps=args.float_warmup_steps,
        distill=args.distill,
        distill_weight=args.distill_weight,
        distill_options=_json_object("--distill-options", args.distill_options),
        teacher_cache=args.teacher_cache,
        model_options=options,
        model_config=model,
    )
    path = train(tc, resume=args.resume, progress=not args.no_progress)
    print(f"weights: {path}")
    return 0
