"""Start a network from another one's weights: same backbone by name, another backbone by structure.

Every backbone shares the KeypointNet topology, so their convolutions and batch norms come in the same
order with the same shapes even where module names differ (a binary branch has extra quantizers, a
kp2d one has none). That lets a trained float kp2d network start a zippypoint one (a float warm-up
followed by quantization-aware fine-tuning): 8-bit convs take the float weights (their fake
quantization rounds them), binary convs take them as latent weights (clipped to [-1, 1], their signs
are the binary weights), batch norms take their affine parameters and running statistics.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from zippy.models import KeypointNet, ModelConfig, build_network
from zippy.quant.layers import BinaryConv2d
from zippy.weights import load_weights

log = logging.getLogger(__name__)

__all__ = ["init_from", "transfer_by_structure"]


def _load_source(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(blob, dict) and "model" in blob and "model_config" in blob:  # a training checkpoint
        return ModelConfig.from_dict(blob["model_config"]), blob["model"]
    cfg, sd, _ = load_weights(path)
    return cfg, sd


def _layers(model: nn.Module) -> tuple[list[nn.Conv2d], list[nn.BatchNorm2d]]:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    return convs, bns


def transfer_by_structure(src: nn.Module, dst: nn.Module) -> int:
    """Copy convolutions and batch norms from ``src`` to ``dst`` in module order; returns tensors copied.

    Raises:
        ValueError: the two networks do not have the same sequence of conv / batch-norm shapes.
    """
    (sc, sb), (dc, db) = _layers(src), _layers(dst)
    if len(sc) != len(dc) or len(sb) != len(db):
        raise ValueError(f"different structure: {len(sc)} convs / {len(sb)} BNs vs {len(dc)} / {len(db)}")
    for i, (a, b) in enumerate(zip(sc, dc)):
        if a.weight.shape != b.weight.shape:
            raise ValueError(f"conv {i}: weight {list(a.weight.shape)} vs {list(b.weight.shape)}")
    for i, (a, b) in enumerate(zip(sb, db)):
        if a.num_features != b.num_features:
            raise ValueError(f"batch norm {i}: {a.num_features} vs {b.num_features} features")
    copied = 0
    with torch.no_grad():
        for a, b in zip(sc, dc):
            w = a.weight.detach()
            b.weight.copy_(w.clamp(-1.0, 1.0) if isinstance(b, BinaryConv2d) else w)
            copied += 1
            if a.bias is not None and b.bias is not None:
                b.bias.copy_(a.bias.detach())
                copied += 1
        for a, b in zip(sb, db):
            b.load_state_dict(a.state_dict())
            copied += len(a.state_dict())
    return copied


def init_from(model: KeypointNet, path: str | os.PathLike) -> int:
    """Initialise ``model`` from a weights file or training checkpoint; returns the number of tensors set.

    Same backbone: every tensor whose name and shape match. Another backbone: by structure
    (:func:`transfer_by_structure`), e.g. a trained float kp2d network into zippypoint, and by names
    where the structures differ (a backbone that replaces convolutions).
    """
    path = Path(path)
    cfg, sd = _load_source(path)
    n = 0
    if cfg.backbone != model.cfg.backbone:
        src = build_network(cfg)
        src.load_state_dict(sd, strict=True)
        try:
            n = transfer_by_structure(src, model)
        except ValueError as e:  # e.g. shift or depthwise-separable layers: fall back to matching names
            log.warning(
                "%s -> %s: %s; copying the tensors whose names and shapes match", cfg.backbone, model.cfg.backbone, e
            )
    if n == 0:
        own = model.state_dict()
        taken = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(taken, strict=False)
        n = len(taken)
    src_head = cfg.option("kp_head", "sigmoid") if cfg.topology == "fast" else None
    dst_head = getattr(model, "kp_head_kind", None)
    if src_head and dst_head and src_head != dst_head:
        # a sigmoid head's last logit is a score (high: keypoint), a softmax head's is "no keypoint"
        last = model.kp_head[-1]
        with torch.no_grad():
            last.weight[64].neg_()
            last.bias[64].neg_()
        log.info("%s -> %s keypoint head: the last keypoint logit is negated", src_head, dst_head)
    log.info("initialised %d/%d tensors from %s (%s)", n, len(model.state_dict()), path, cfg.backbone)
    return n
