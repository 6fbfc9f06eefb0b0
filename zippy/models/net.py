"""The KP2D-style detector-descriptor topology shared by every backbone.

Input: float [B, 3, H, W] in [0, 1], H and W multiples of 8 (the extractor pads).
Outputs (dict):
    score:  float [B, 1, H/8, W/8] in [0, 1], one keypoint per 8x8 cell, 1-cell border set to 0.
    coords: float [B, 2, H/8, W/8] (x, y) keypoint position in input pixels, inside the image.
    desc:   float [B, D, H/4, W/4] raw descriptor map (binarized / normalized after sampling).
"""

from __future__ import annotations

import torch
from torch import nn

from zippy.models.config import ModelConfig
from zippy.models.registry import get_factory
from zippy.quant.layers import BinaryConv2d

__all__ = ["KeypointNet", "clip_binary_weights", "count_parameters"]


class SpaceToDepth(nn.Module):
    """[B, C, H, W] -> [B, 4C, H/2, W/2] (replaces pooling)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # same channel order as F.pixel_unshuffle(x, 2) (c * 4 + dy * 2 + dx), faster on CPU here
        b, c, h, w = x.shape
        return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h // 2, w // 2)


class KeypointNet(nn.Module):
    """Encoder (3 space-to-depth stages + 1/8 block) and score / position / descriptor heads."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        f = get_factory(cfg.backbone)(cfg)
        self.binary_descriptors = f.binary_descriptors
        c1, c2, c3 = cfg.widths
        c = cfg.feat_dim
        self.stem = f.stem(3, c1)
        stages = []
        cin = c1
        for w in (c1, c2, c3):
            stages.append(nn.Sequential(SpaceToDepth(), f.pool(4 * cin, w), f.residual(w), f.residual(w)))
            cin = w
        self.stages = nn.Sequential(*stages)
        self.block8 = nn.Sequential(f.expand(c3, c), f.residual(c))
        self.score_head = nn.Sequential(f.head(c, c), f.head_out(c, 1))
        self.position_head = nn.Sequential(f.head(c, c), f.head_out(c, 2))
        self.desc_head = nn.Sequential(
            f.head(c, 2 * c),
            nn.PixelShuffle(2),
            f.head(2 * c // 4, c),
            f.desc_out(c, cfg.desc_dim),
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        _, _, h, w = x.shape
        cell = self.cfg.cell
        if h % cell or w % cell:
            raise ValueError(f"input size must be a multiple of {cell}, got {w}x{h}")
        feat = self.block8(self.stages(self.stem(x)))
        score = torch.sigmoid(self.score_head(feat).float())
        score = _mask_border(score)
        offset = torch.tanh(self.position_head(feat).float())
        coords = _cell_coords(offset, cell, self.cfg.cross_ratio, w, h)
        desc = self.desc_head(feat).float()
        return {"score": score, "coords": coords, "desc": desc}


def _mask_border(score: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros_like(score)
    mask[..., 1:-1, 1:-1] = 1.0
    return score * mask


def _cell_coords(offset: torch.Tensor, cell: int, cross_ratio: float, w: int, h: int) -> torch.Tensor:
    """Cell centres plus offsets in [-1, 1] scaled by cross_ratio * (cell - 1) / 2, clipped to the image."""
    hc, wc = offset.shape[-2:]
    step = (cell - 1) / 2.0
    ys = torch.arange(hc, device=offset.device, dtype=offset.dtype) * cell + step
    xs = torch.arange(wc, device=offset.device, dtype=offset.dtype) * cell + step
    base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), 0)[None]  # [1, 2, hc, wc]
    coords = base + offset * (cross_ratio * step)
    x = coords[:, 0:1].clamp(0, w - 1)
    y = coords[:, 1:2].clamp(0, h - 1)
    return torch.cat([x, y], 1)


def clip_binary_weights(model: nn.Module) -> None:
    """Keep the latent weights of binary convs in [-1, 1] (call after each optimizer step)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BinaryConv2d):
                m.weight.clamp_(-1.0, 1.0)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameters by precision: 'binary' (BinaryConv2d weights), '8bit' (QConv2d weights), 'float' (rest)."""
    from zippy.quant.layers import QConv2d

    counts = {"binary": 0, "8bit": 0, "float": 0}
    for m in model.modules():
        for pname, p in m.named_parameters(recurse=False):
            if isinstance(m, BinaryConv2d) and pname == "weight":
                counts["binary"] += p.numel()
            elif isinstance(m, QConv2d) and pname == "weight":
                counts["8bit"] += p.numel()
            else:
                counts["float"] += p.numel()
    counts["total"] = sum(counts.values())
    return counts
