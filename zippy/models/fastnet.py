"""A CPU-first detector-descriptor topology ("fast"): about 0.9 GMAC at 480x640, no full-resolution conv.

Where the KP2D topology (:mod:`zippy.models.net`) spends most of its 26 GMAC on 3x3 heads at 1/8 and 1/4
resolution, this one follows the ideas of XFeat (Potje et al., CVPR 2024) and tiny dense detectors:

* the image is turned to grey, normalized per image (mean / std: brightness and contrast changes cancel)
  and space-to-depth'ed by 4 at once, so the first conv already works at 1/4 resolution on 16 channels;
* a narrow encoder goes down to 1/32 by space-to-depth and 1x1 / 3x3 convs; the 1/16 and 1/32 features
  are projected and upsampled onto the 1/8 grid and added (multi-scale context at 1/8 cost);
* keypoints: a head on the 8x8-unshuffled grey pixels of each cell (64 values) and the fused 1/8
  features gives 64 position logits (one per pixel of the cell) and a score logit. The keypoint is the
  soft-argmax of the 64 logits, so its position is read from the pixels themselves, not from the cell
  grid; the score is the sigmoid of the last logit;
* descriptors: a 1x1 conv of the fused features to 256 values at 1/8 resolution (sampled bilinearly at
  the keypoints and binarized by the extractor, exactly as for the KP2D topology).

Every conv is built by the backbone's :class:`~zippy.models.layers.LayerFactory` (roles ``pool`` for
1x1, ``head`` for 3x3 conv-BN-ReLU, ``desc_out`` for the linear outputs), so compression backbones
apply to this topology through the same mechanism.

Input: float [B, 3, H, W] in [0, 1], H and W multiples of 8 (padded to 32 internally, outputs cropped).
Outputs: as :class:`~zippy.models.net.KeypointNet`: ``score`` [B, 1, H/8, W/8], ``coords`` [B, 2, H/8, W/8]
(x, y) in input pixels, ``desc`` [B, D, H/8, W/8].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zippy.models.config import ModelConfig
from zippy.models.net import _mask_border
from zippy.models.registry import get_factory
from zippy.postprocess import sample_descriptors
from zippy.quant.layers import QConv2d

__all__ = ["FastKeypointNet", "fast_macs", "fold_for_inference"]

_GREY = (0.299, 0.587, 0.114)


class FastKeypointNet(nn.Module):
    """The "fast" topology; ``cfg.widths`` are the encoder widths at 1/4, 1/8, 1/16 (1/32 uses feat_dim)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.cell != 8:
            raise ValueError(f"the fast topology has 8x8 cells, got cell={cfg.cell}")
        self.cfg = cfg
        f = get_factory(cfg.backbone)(cfg)
        self.binary_descriptors = f.binary_descriptors
        c4, c8, c16 = cfg.widths
        c32 = cfg.feat_dim
        fuse = c8
        self.register_buffer("grey", torch.tensor(_GREY).view(1, 3, 1, 1), persistent=False)
        self.enc4 = nn.Sequential(f.head(16, c4), f.head(c4, c4))
        self.enc8 = nn.Sequential(f.pool(4 * c4, c8), f.head(c8, c8))
        self.enc16 = nn.Sequential(f.pool(4 * c8, c16), f.head(c16, c16))
        self.enc32 = nn.Sequential(f.pool(4 * c16, c32), f.head(c32, c32))
        self.lat16 = f.pool(c16, fuse)
        self.lat32 = f.pool(c32, fuse)
        self.fuse = f.pool(fuse, 2 * fuse)
        self.desc_head = f.desc_out(2 * fuse, cfg.desc_dim)
        self.kp_head = nn.Sequential(f.pool(64 + 2 * fuse, 64), f.pool(64, 64), f.desc_out(64, 65))
        # soft-argmax offsets of the 64 pixels of a cell, in pixel_unshuffle's channel order (dy * 8 + dx)
        d = torch.arange(8, dtype=torch.float32)
        dy, dx = torch.meshgrid(d, d, indexing="ij")
        self.register_buffer("offsets", torch.stack([dx.flatten(), dy.flatten()], 0), persistent=False)

    def _grey(self, x: torch.Tensor) -> torch.Tensor:
        g = (x * self.grey).sum(1, keepdim=True)
        mean = g.mean((2, 3), keepdim=True)
        std = g.std((2, 3), keepdim=True)
        return (g - mean) / (std + 0.02)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.detect(x)
        out["desc"] = self.desc_head(out.pop("feat")).float()
        return out

    def detect(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Keypoint outputs (``score``, ``coords``) and the fused 1/8 features ``feat`` [B, C, H/8, W/8]."""
        _, _, h, w = x.shape
        if h % 8 or w % 8:
            raise ValueError(f"input size must be a multiple of 8, got {w}x{h}")
        g = self._grey(x)
        ph, pw = (-h) % 32, (-w) % 32
        if ph or pw:
            g = F.pad(g, (0, pw, 0, ph))
        hc, wc = h // 8, w // 8
        x4 = self.enc4(F.pixel_unshuffle(g, 4))
        x8 = self.enc8(F.pixel_unshuffle(x4, 2))
        x16 = self.enc16(F.pixel_unshuffle(x8, 2))
        x32 = self.enc32(F.pixel_unshuffle(x16, 2))
        size8 = x8.shape[-2:]
        fused = (
            x8
            + F.interpolate(self.lat16(x16), size=size8, mode="bilinear", align_corners=False)
            + F.interpolate(self.lat32(x32), size=size8, mode="bilinear", align_corners=False)
        )
        feat = self.fuse(fused)[..., :hc, :wc]
        cells = F.pixel_unshuffle(g, 8)[..., :hc, :wc]
        logits = self.kp_head(torch.cat([cells, feat], 1)).float()
        score = torch.sigmoid(logits[:, 64:65])
        score = _mask_border(score)
        prob = torch.softmax(logits[:, :64], 1)
        offset = torch.einsum("bchw,kc->bkhw", prob, self.offsets)  # [B, 2, hc, wc] px inside the cell
        ys = torch.arange(hc, device=x.device, dtype=offset.dtype) * 8
        xs = torch.arange(wc, device=x.device, dtype=offset.dtype) * 8
        base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), 0)[None]
        coords = base + offset
        return {"score": score, "coords": coords, "feat": feat}

    def describe(self, out: dict[str, torch.Tensor], keypoints: torch.Tensor, width: int, height: int) -> torch.Tensor:
        """Raw descriptors float [N, D] at ``keypoints`` [N, 2] of the first image of a :meth:`detect` output.

        The descriptor head is linear, so sampling the features first and projecting N vectors gives the
        dense map's bilinear samples (up to float rounding) at a fraction of the cost.
        """
        f = sample_descriptors(out["feat"][0], keypoints, width, height)  # [N, C]
        conv = self.desc_head
        w = conv.quantized_weight() if isinstance(conv, QConv2d) else conv.weight
        d = f @ w.flatten(1).t()
        return d + conv.bias if conv.bias is not None else d


def fast_macs(model: nn.Module, height: int = 480, width: int = 640) -> dict[str, int]:
    """Multiply-accumulates per conv of ``model`` for one ``height`` x ``width`` image (hooks on nn.Conv2d)."""
    macs: dict[str, int] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):

            def hook(mod, inp, out, name=name):
                kh, kw = mod.kernel_size
                macs[name] = int(out.numel() // out.shape[0] * (mod.in_channels // mod.groups) * kh * kw)

            hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, height, width))
    finally:
        for hk in hooks:
            hk.remove()
    return macs


def fold_for_inference(model: FastKeypointNet) -> FastKeypointNet:
    """A copy of ``model`` for inference: every conv + BatchNorm pair folded into one plain float conv.

    The folded weights are the trained 8-bit weights (dequantized) scaled by the BatchNorm factors, so the
    copy computes the same function up to float32 rounding with fewer operations. Eval mode only.
    """
    import copy

    m = copy.deepcopy(model).eval()
    for parent in list(m.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Sequential) and len(child) == 3 and isinstance(child[1], nn.BatchNorm2d):
                setattr(parent, name, nn.Sequential(_plain_conv(child[0], child[1]), child[2]))
            elif isinstance(child, QConv2d):
                setattr(parent, name, _plain_conv(child, None))
    return m


def _plain_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> nn.Conv2d:
    w = (conv.quantized_weight() if isinstance(conv, QConv2d) else conv.weight).detach().clone()
    b = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(conv.out_channels)
    if bn is not None:
        g = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
        w = w * g.view(-1, 1, 1, 1)
        b = (b - bn.running_mean) * g + bn.bias.detach()
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding, bias=True)
    out.weight.data.copy_(w)
    out.bias.data.copy_(b)
    return out.eval()
