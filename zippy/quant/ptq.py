"""Post-training quantization (PTQ): a trained float network to group-wise b-bit weights, no retraining.

Steps (:func:`quantize_post_training`):

1. Build the integer backbone of the requested bits ("int8" for 8-bit weights, else "int4", with the
   bits and the group size written into ``ModelConfig.options`` so the result reloads with strict keys)
   and copy the trained weights into it (the float factory's module layout: kp2d, int8, int4, ...).
2. Weights: every conv's weights are quantized symmetrically per group of ``group_size`` input
   channels of one output channel (per output channel where the group does not divide the inputs,
   e.g. the 3-channel stem). Each group's clipping range is chosen from ``clip_grid`` candidates in
   [``min_clip``, 1] x max|w| to minimize the squared rounding error; the clipped weights are stored,
   so the layer's own quantizer (scale = max|w| / qmax per group) reproduces exactly that grid.
3. Activations: the range of every EMA activation quantizer is calibrated on a few hundred images
   with fake quantization off (float activations): the mean over batches of the per-batch
   ``act_quantile`` / ``1 - act_quantile`` quantiles.

Group-wise 4-bit weights have no integer kernel here: such networks run on the fp32 engine (fake
quantization); the saving is model size.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from zippy.models import KeypointNet, ModelConfig
from zippy.quant.layers import ActQuant, set_fake_quant

log = logging.getLogger(__name__)

__all__ = ["PTQConfig", "calibration_batches", "clip_weights", "quantize_post_training"]


@dataclass(frozen=True)
class PTQConfig:
    """Settings of post-training quantization.

    Attributes:
        weight_bits: bits of the inner layers' weights (2..8).
        act_bits: bits of the inner layers' activations (2..8).
        edge_bits: bits of the stem and head output layers (weights and inputs).
        group_size: input channels per weight scale (0: per output channel).
        clip_grid: clipping ratios searched per group (1: no search, plain max scaling).
        min_clip: smallest clipping ratio searched.
        act_quantile: activation range quantile (1.0: min / max).
        max_samples: activation values sampled per quantizer and batch for the quantiles.
    """

    weight_bits: int = 4
    act_bits: int = 8
    edge_bits: int = 8
    group_size: int = 32
    clip_grid: int = 20
    min_clip: float = 0.5
    act_quantile: float = 0.9999
    max_samples: int = 200_000

    def __post_init__(self) -> None:
        for name in ("weight_bits", "act_bits", "edge_bits"):
            v = getattr(self, name)
            if not 2 <= v <= 8:
                raise ValueError(f"{name} must be in 2..8, got {v}")
        if self.group_size < 0 or self.clip_grid < 1 or not 0.0 < self.min_clip <= 1.0:
            raise ValueError(f"need group_size >= 0, clip_grid >= 1, 0 < min_clip <= 1, got {self}")
        if not 0.5 < self.act_quantile <= 1.0:
            raise ValueError(f"act_quantile must be in (0.5, 1], got {self.act_quantile}")

    def backbone(self) -> tuple[str, dict[str, Any]]:
        """(backbone name, options) of the quantized network."""
        name = "int8" if self.weight_bits == 8 else "int4"
        opts = {
            "weight_bits": self.weight_bits,
            "act_bits": self.act_bits,
            "edge_bits": self.edge_bits,
            "group_size": self.group_size,
        }
        return name, opts


def clip_weights(w: torch.Tensor, bits: int, group_size: int, grid: int = 20, min_clip: float = 0.5) -> torch.Tensor:
    """Clip each weight group to the range that minimizes its squared quantization error.

    Args:
        w: float [O, I, kh, kw]. bits: 2..8. group_size: input channels per group (0: whole output channel).
        grid: candidate ratios in [min_clip, 1] of each group's max|w|.

    Returns:
        float [O, I, kh, kw]: ``clamp(w, -r max|w_g|, r max|w_g|)`` with the best ratio r per group.
    """
    qmax = 2 ** (bits - 1) - 1
    o, i = w.shape[:2]
    g = w.detach().float().reshape(o, i // group_size if group_size else 1, -1)
    amax = g.abs().amax(-1, keepdim=True).clamp_min(1e-12)
    ratios = torch.linspace(1.0, min_clip, grid, dtype=g.dtype).view(-1, 1, 1, 1)
    lim = ratios * amax  # [R, O, G, 1]
    s = lim / qmax
    err = ((torch.clamp(torch.round(g / s), -qmax, qmax) * s - g) ** 2).sum(-1, keepdim=True)  # [R, O, G, 1]
    best = err.argmin(0, keepdim=True)  # first (largest) ratio wins ties
    r = torch.gather(ratios.expand_as(err), 0, best)[0]
    lo = r * amax
    return torch.maximum(torch.minimum(g, lo), -lo).reshape(w.shape).to(w.dtype)


def calibration_batches(
    files: Sequence[str | os.PathLike],
    n: int = 256,
    size: tuple[int, int] = (240, 320),
    batch_size: int = 8,
    seed: int = 0,
) -> Iterator[torch.Tensor]:
    """Batches float [B, 3, H, W] in [0, 1] of ``n`` images drawn from ``files``, resized to ``size`` (H, W).

    Raises:
        ValueError: no files, or a size that is not a multiple of 8.
    """
    from zippy.image import read_image, resize_image

    if not files:
        raise ValueError("calibration needs at least one image file")
    h, w = size
    if h % 8 or w % 8 or min(h, w) < 16:
        raise ValueError(f"calibration size must be multiples of 8 (>= 16), got {size}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(files))[: min(n, len(files))]
    buf: list[np.ndarray] = []
    for j in order:
        buf.append(resize_image(read_image(files[int(j)]), w, h))
        if len(buf) == batch_size:
            yield torch.from_numpy(np.stack(buf)).permute(0, 3, 1, 2).float() / 255.0
            buf = []
    if buf:
        yield torch.from_numpy(np.stack(buf)).permute(0, 3, 1, 2).float() / 255.0


def _sample(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    flat = x.detach().float().flatten()
    if flat.numel() <= k:
        return flat
    return flat[torch.randint(flat.numel(), (k,), generator=gen)]


@torch.no_grad()
def _calibrate_activations(model: nn.Module, batches: Iterable[torch.Tensor], cfg: PTQConfig) -> dict[str, list[float]]:
    quants = {n: m for n, m in model.named_modules() if isinstance(m, ActQuant) and not m.fixed}
    lows: dict[str, list[float]] = {n: [] for n in quants}
    highs: dict[str, list[float]] = {n: [] for n in quants}
    gen = torch.Generator().manual_seed(0)
    q = cfg.act_quantile

    def hook(name: str):
        def fn(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            v = _sample(args[0], cfg.max_samples, gen)
            k = min(max(round((1 - q) * v.numel()), 1), v.numel())  # order statistics (linear time)
            lows[name].append(float(torch.kthvalue(v, k).values))
            highs[name].append(float(torch.kthvalue(v, v.numel() + 1 - k).values))

        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in quants.items()]
    model.eval()
    set_fake_quant(model, False)
    n_batches = 0
    try:
        for x in batches:
            model(x)
            n_batches += 1
    finally:
        for h in handles:
            h.remove()
        set_fake_quant(model, True)
    if n_batches == 0:
        raise ValueError("no calibration batch was given")
    ranges = {}
    for name, m in quants.items():
        lo, hi = float(np.mean(lows[name])), float(np.mean(highs[name]))
        m.lo.fill_(lo)
        m.hi.fill_(hi)
        m.initialized.fill_(True)
        ranges[name] = [lo, hi]
    return ranges


def quantize_post_training(
    model: KeypointNet, batches: Iterable[torch.Tensor], cfg: PTQConfig | None = None
) -> tuple[KeypointNet, dict[str, Any]]:
    """Quantize a trained network without retraining (see the module docstring).

    Args:
        model: a trained KeypointNet with the float factory's module layout (e.g. "kp2d", "int8").
        batches: calibration batches float [B, 3, H, W] in [0, 1] (e.g. :func:`calibration_batches`
            of a few hundred training photos; never the evaluation images).
        cfg: bits, group size, clipping search, activation quantile.

    Returns:
        (quantized KeypointNet in eval mode, report) with report keys ``config``, ``backbone``,
        ``weight_rel_error`` {layer: ||Q(w) - w|| / ||w||} and ``act_ranges`` {quantizer: [lo, hi]}.

    Raises:
        ValueError: the network's layout does not fit the integer backbone.
    """
    from zippy.models.compression import QuantConv

    cfg = cfg or PTQConfig()
    name, opts = cfg.backbone()
    qcfg = ModelConfig.from_dict({**model.cfg.to_dict(), "backbone": name, "options": opts})
    qnet = KeypointNet(qcfg)
    own = qnet.state_dict()
    src = model.state_dict()
    bad = sorted(k for k in own if k in src and src[k].shape != own[k].shape)
    missing = sorted(k for k in own if k not in src and ".input_quant." not in k)
    if bad or missing:
        raise ValueError(
            f"{model.cfg.backbone!r} weights do not fit {name!r}: shape mismatch {bad[:4]}, missing {missing[:4]}"
        )
    qnet.load_state_dict({k: v for k, v in src.items() if k in own}, strict=False)
    errors = {}
    with torch.no_grad():
        for lname, m in qnet.named_modules():
            if not isinstance(m, QuantConv):
                continue
            w = m.weight.detach().clone()
            if cfg.clip_grid > 1:
                m.weight.copy_(clip_weights(w, m.bits, m.group_size, cfg.clip_grid, cfg.min_clip))
            m.eval()
            errors[lname] = float((m.quantized_weight() - w).norm() / w.norm().clamp_min(1e-12))
    ranges = _calibrate_activations(qnet, batches, cfg)
    worst = max(errors.values()) if errors else math.nan
    log.info("PTQ to %s %s: %d layers, worst weight rel. error %.3f", name, opts, len(errors), worst)
    report = {"config": asdict(cfg), "backbone": name, "weight_rel_error": errors, "act_ranges": ranges}
    return qnet.eval(), report
