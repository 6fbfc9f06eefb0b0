"""A CPU-first detector-descriptor topology ("fast"): about 0.9 GMAC at 480x640, no full-resolution conv.

Where the KP2D topology (:mod:`zippy.models.net`) spends most of its 26 GMAC on 3x3 heads at 1/8 and 1/4
resolution, this one follows the ideas of XFeat (Potje et al., CVPR 2024) and tiny dense detectors:

* the image is turned to grey, normalized per image (mean / std: brightness and contrast changes cancel)
  and space-to-depth'ed by 4 at once, so the first conv already works at 1/4 resolution on 16 channels;
* a narrow encoder goes down to 1/32 by space-to-depth and 1x1 / 3x3 convs; the 1/16 and 1/32 features
  are projected and upsampled onto the 1/8 grid and added (multi-scale context at 1/8 cost);
* keypoints: a head on the 8x8-unshuffled grey pixels of each cell (64 values) and the fused 1/8
  features gives 65 logits per cell: one per pixel of the cell and one more. The keypoint is the
  soft-argmax of the 64 pixel logits, so its position is read from the pixels themselves, not from the
  cell grid. The score comes from the last logit, read as the head option ``kp_head`` says:

  - ``"sigmoid"`` (the default): the cell's score is the sigmoid of the last logit;
  - ``"softmax"``: a softmax over all 65, the last being "no keypoint in this cell"; the score is
    1 - p(no keypoint). Distillation then teaches this softmax the pixel of the teacher's keypoint, or
    "no keypoint", by cross-entropy (as XFeat's keypoint head is trained);

  With the option ``kp_margin`` = m > 0 the head's first layer also sees the grey pixels of a window m px
  wider than the cell on each side (a linear map of the (8 + 2m)^2 pixels, starting at zero so a network
  initialized from one without it detects exactly as before): a corner at a cell's edge is judged with its
  neighbourhood in view, as it is when a shift of the image puts it mid-cell;
* descriptors: a 1x1 conv of the fused features to 256 values at 1/8 resolution (sampled bilinearly at
  the keypoints and binarized by the extractor, exactly as for the KP2D topology). With the option
  ``local_desc`` = r > 0, a finer part ``desc_fine`` at 1/4 resolution is added to the samples of the 1/8 map:
  a linear 3x3 conv of the 1/4 encoder features to r channels, then a 1x1 conv to 256 (its weights start at
  zero, so a network initialized from one without it describes exactly as before). A 1/8 map gives
  keypoints a few pixels apart nearly the same descriptor; the 1/4 part can tell them apart. Both parts are
  linear, so the engine computes them at the selected keypoints only (:meth:`FastKeypointNet.describe`).

Every conv is built by the backbone's :class:`~zippy.models.layers.LayerFactory` (roles ``pool`` for
1x1, ``head`` for 3x3 conv-BN-ReLU, ``desc_out`` for the linear outputs), so compression backbones
apply to this topology through the same mechanism.

Input: float [B, 3, H, W] in [0, 1], H and W multiples of 8 (padded to 32 internally, outputs cropped).
Outputs: as :class:`~zippy.models.net.KeypointNet`: ``score`` [B, 1, H/8, W/8], ``coords`` [B, 2, H/8, W/8]
(x, y) in input pixels, ``desc`` [B, D, H/8, W/8] (with ``local_desc`` also ``desc_fine`` [B, D, H/4, W/4]: a
keypoint's descriptor is the sum of both maps' samples, :func:`zippy.postprocess.sample_network_descriptors`);
the "softmax" head adds its logits ``kp_logits`` [B, 65, H/8, W/8] (for the distillation loss).
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

__all__ = ["KP_HEADS", "FastKeypointNet", "fast_macs", "fold_for_inference"]

KP_HEADS = ("sigmoid", "softmax")

_GREY = (0.299, 0.587, 0.114)


class FastKeypointNet(nn.Module):
    """The "fast" topology; ``cfg.widths`` are the encoder widths at 1/4, 1/8, 1/16 (1/32 uses feat_dim)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.cell != 8:
            raise ValueError(f"the fast topology has 8x8 cells, got cell={cfg.cell}")
        self.cfg = cfg
        self.kp_head_kind = cfg.option("kp_head", "sigmoid")
        if self.kp_head_kind not in KP_HEADS:
            raise ValueError(f"unknown kp_head option {self.kp_head_kind!r}; choose one of {list(KP_HEADS)}")
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
        margin = cfg.option("kp_margin", 0)
        if isinstance(margin, bool) or not isinstance(margin, int) or not 0 <= margin <= 8:
            raise ValueError(f"kp_margin must be an integer number of pixels in 0..8 (0: off), got {margin!r}")
        self.kp_margin = margin
        self.kp_window: nn.Module | None = None
        if margin:
            if not (isinstance(self.kp_head[0], nn.Sequential) and isinstance(self.kp_head[0][1], nn.BatchNorm2d)):
                raise ValueError(f"kp_margin needs a conv-BatchNorm first keypoint layer, {cfg.backbone} has another")
            # the grey pixels of each cell's window (the cell and `margin` px around it) into the keypoint head's
            # first layer, starting at zero: a pixel at the cell's edge is judged with its neighbours in view
            side = 8 + 2 * margin
            self.kp_window = f.desc_out(side * side, 64)
            nn.init.zeros_(self.kp_window.weight)
            nn.init.zeros_(self.kp_window.bias)
        rank = int(cfg.option("local_desc", 0))
        if rank < 0:
            raise ValueError(f"local_desc must be >= 0 (0: off), got {rank}")
        self.local_desc: nn.Module | None = None
        if rank:
            self.local_desc = nn.Sequential(f.head_out(c4, rank), f.desc_out(rank, cfg.desc_dim))
            nn.init.zeros_(self.local_desc[1].weight)
            nn.init.zeros_(self.local_desc[1].bias)
        # soft-argmax offsets of the 64 pixels of a cell, in pixel_unshuffle's channel order (dy * 8 + dx)
        d = torch.arange(8, dtype=torch.float32)
        dy, dx = torch.meshgrid(d, d, indexing="ij")
        self.register_buffer("offsets", torch.stack([dx.flatten(), dy.flatten()], 0), persistent=False)

    def _grey(self, x: torch.Tensor) -> torch.Tensor:
        return _standardize(F.conv2d(x, self.grey.to(x.dtype)))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.detect(x)
        out["desc"] = self.desc_head(out.pop("feat")).float()
        if self.local_desc is not None:
            out["desc_fine"] = self.local_desc(out.pop("x4")).float()
        return out

    def detect(self, x: torch.Tensor, keypoints: bool = True) -> dict[str, torch.Tensor]:
        """Keypoint outputs (``score``, ``coords``; "softmax" head: ``kp_logits``), the fused 1/8 features
        ``feat`` [B, C, H/8, W/8] and, with ``local_desc``, the 1/4 encoder features ``x4`` [B, C4, H/4, W/4].
        ``keypoints=False`` leaves the keypoint head out (only ``feat`` and ``x4``: another detector's keypoints
        are described)."""
        _, _, h, w = x.shape
        if h % 8 or w % 8:
            raise ValueError(f"input size must be a multiple of 8, got {w}x{h}")
        g = self._grey(x)
        ph, pw = (-h) % 32, (-w) % 32
        if ph or pw:
            g = F.pad(g, (0, pw, 0, ph))
        hc, wc = h // 8, w // 8
        g4 = F.pixel_unshuffle(g, 4)
        x4 = self.enc4(g4)
        x8 = self._down(self.enc8, x4)
        x16 = self._down(self.enc16, x8)
        x32 = self._down(self.enc32, x16)
        size8 = x8.shape[-2:]
        fused = (
            x8
            + F.interpolate(self.lat16(x16), size=size8, mode="bilinear", align_corners=False)
            + F.interpolate(self.lat32(x32), size=size8, mode="bilinear", align_corners=False)
        )
        feat = self.fuse(fused)[..., :hc, :wc]
        out: dict[str, torch.Tensor] = {"feat": feat}
        if self.local_desc is not None:
            out["x4"] = x4[..., : 2 * hc, : 2 * wc]
        if not keypoints:
            return out
        logits = self._kp_logits(g, g4, feat).float()
        if self.kp_head_kind == "softmax":
            score = _mask_border(1.0 - torch.softmax(logits, 1)[:, 64:65])
            out["kp_logits"] = logits
        else:
            score = _mask_border(torch.sigmoid(logits[:, 64:65]))
        prob = torch.softmax(logits[:, :64], 1)
        offset = torch.einsum("bchw,kc->bkhw", prob, self.offsets)  # [B, 2, hc, wc] px inside the cell
        ys = torch.arange(hc, device=x.device, dtype=offset.dtype) * 8
        xs = torch.arange(wc, device=x.device, dtype=offset.dtype) * 8
        base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), 0)[None]
        out["score"], out["coords"] = score, base + offset
        return out

    def _down(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Half resolution: space-to-depth by 2, then the stage (its first conv is 1x1)."""
        return stage(F.pixel_unshuffle(x, 2))

    def _kp_logits(self, g: torch.Tensor, g4: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        """[B, 65, hc, wc] from the grey image g (padded), g space-to-depth by 4 (``g4``, the encoder's input;
        the folded network reads the cell windows from it) and the fused features [B, C, hc, wc]."""
        hc, wc = feat.shape[-2:]
        x = torch.cat([F.pixel_unshuffle(g, 8)[..., :hc, :wc], feat], 1)
        if self.kp_window is None:
            return self.kp_head(x)
        m = self.kp_margin
        win = F.unfold(g, 8 + 2 * m, padding=m, stride=8)  # [B, side * side, cells], each window row-major
        win = win.view(g.shape[0], -1, g.shape[-2] // 8, g.shape[-1] // 8)[..., :hc, :wc]
        conv, bn, act = self.kp_head[0]  # the window joins the first layer's conv, before its BatchNorm
        return self.kp_head[1:](act(bn(conv(x) + self.kp_window(win))))

    def describe(self, out: dict[str, torch.Tensor], keypoints: torch.Tensor, width: int, height: int) -> torch.Tensor:
        """Raw descriptors float [N, D] at ``keypoints`` [N, 2] of the first image of a :meth:`detect` output.

        The descriptor head is linear, so sampling the features first and projecting N vectors gives the
        dense map's bilinear samples (up to float rounding) at a fraction of the cost.
        """
        d = _linear(self.desc_head, sample_descriptors(out["feat"][0], keypoints, width, height))
        if self.local_desc is None or len(keypoints) == 0:
            return d
        # the 1/4 part: its 3x3 conv's taps are 1 px apart on the 1/4 map (4 px in the image), so all 9 share one
        # pair of bilinear fractions: gather the 4x4 patch around each keypoint once and interpolate it. The
        # same as sampling the dense desc_fine map, except within 4 px of the image border, where that map
        # is zero-padded and the taps here read the zero-padded features instead.
        conv3, conv1 = self.local_desc
        local = _linear_taps(conv3, _tap_patches(out["x4"][0], keypoints, width, height))
        return d + _linear(conv1, local)


def _standardize(g: torch.Tensor) -> torch.Tensor:
    """Each grey image of g [B, 1, H, W] to zero mean and unit spread (brightness and contrast cancel)."""
    return (g - g.mean((2, 3), keepdim=True)) / (g.std((2, 3), keepdim=True) + 0.02)


def _tap_patches(fmap: torch.Tensor, keypoints: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """The 3x3 taps (1 px apart) of ``fmap`` [C, h, w] around ``keypoints`` [N, 2] (x, y image px, pixel centres at
    integers, the map covering width x height px) with bilinear interpolation and zeros outside: [N, 3, 3, C],
    tap (dy, dx) at the keypoint's map position plus (dx - 1, dy - 1); as grid_sample (align_corners=False)."""
    c, h, w = fmap.shape
    u = (keypoints[:, 0] + 0.5) * (w / width) - 0.5
    v = (keypoints[:, 1] + 0.5) * (h / height) - 0.5
    u0, v0 = u.floor(), v.floor()
    fu, fv = (u - u0).view(-1, 1, 1, 1), (v - v0).view(-1, 1, 1, 1)
    r = torch.arange(-1, 3, device=fmap.device)
    rows, cols = v0.long()[:, None] + r, u0.long()[:, None] + r  # [N, 4]: rows v0 - 1 .. v0 + 2
    inside = (rows >= 0) & (rows < h), (cols >= 0) & (cols < w)
    index = rows.clamp(0, h - 1)[:, :, None] * w + cols.clamp(0, w - 1)[:, None, :]
    flat = fmap.permute(1, 2, 0).reshape(-1, c)  # [h * w, C]; a view of a channels-last map
    p = flat[index.flatten()].view(-1, 4, 4, c)
    if not (inside[0].all() and inside[1].all()):  # zeros outside the map (keypoints near the border)
        p = p * (inside[0][:, :, None] & inside[1][:, None, :])[..., None]
    top = p[:, :3, :3] + fu * (p[:, :3, 1:] - p[:, :3, :3])
    bottom = p[:, 1:, :3] + fu * (p[:, 1:, 1:] - p[:, 1:, :3])
    return top + fv * (bottom - top)


def _linear_taps(conv: nn.Conv2d, taps: torch.Tensor) -> torch.Tensor:
    """The 3x3 conv at the keypoints from their taps [N, 3, 3, C]: [N, O]."""
    w = _weight(conv).permute(0, 2, 3, 1).flatten(1)  # [O, (dy, dx, C)], the taps' order
    y = taps.flatten(1) @ w.t()
    return y + conv.bias if conv.bias is not None else y


def _linear(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The conv applied to flattened inputs x [N, C * k * k] (channel-major, then the k x k taps): [N, O]."""
    y = x @ _weight(conv).flatten(1).t()
    return y + conv.bias if conv.bias is not None else y


def _weight(conv: nn.Conv2d) -> torch.Tensor:
    """The weight a conv computes with: the fake-quantized one of an 8-bit conv, else the plain one."""
    return conv.quantized_weight() if isinstance(conv, QConv2d) else conv.weight


def fast_macs(model: nn.Module, height: int = 480, width: int = 640) -> dict[str, int]:
    """Multiply-accumulates per conv of ``model`` for one ``height`` x ``width`` image (hooks on nn.Conv2d).

    Counts the dense forward pass; the ``local_desc`` convs run at the keypoints only in the engine (1000
    keypoints: 1000 * (9 * C4 * r + r * 256)), so their dense count here overstates what an image costs."""
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
    """A copy of ``model`` for inference: the same function up to float32 rounding, in fewer operations.

    * every conv + BatchNorm pair becomes one plain float conv, its weights the trained 8-bit weights
      (dequantized) scaled by the BatchNorm factors;
    * each space-to-depth by 2 and the 1x1 conv after it become one 2x2 stride-2 conv;
    * the keypoint head's first conv, a 1x1 conv over the concatenated cell pixels and features, becomes
      an 8x8 stride-8 conv on the grey image plus a 1x1 conv on the features (no concatenation); with
      ``kp_margin`` the window part joins it as one (8 + 2 margin)-px stride-8 conv; when the margin is a
      multiple of 4 that conv reads the encoder's input, the grey image space-to-depth by 4, at stride 2;
    * the weights are laid out channels-last, so oneDNN's convs run in that layout (6-8 % faster for
      these narrow layers, with and without AVX-512, in interleaved timings of ``Extractor.extract``).

    Eval mode only.
    """
    import copy

    m = copy.deepcopy(model).eval()
    window = None
    if m.kp_window is not None:  # its part of the first keypoint layer, scaled by that layer's BatchNorm
        bn = m.kp_head[0][1]
        scale = _bn_scale(bn)
        side = 8 + 2 * m.kp_margin
        window = (
            _weight(m.kp_window).detach().reshape(64, 1, side, side) * scale.view(-1, 1, 1, 1),
            m.kp_window.bias.detach() * scale,
        )
        m.kp_window = None
    for parent in list(m.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Sequential) and len(child) == 3 and isinstance(child[1], nn.BatchNorm2d):
                setattr(parent, name, nn.Sequential(_plain_conv(child[0], child[1]), child[2]))
            elif isinstance(child, QConv2d):
                setattr(parent, name, _plain_conv(child, None))
    for stage in (m.enc8, m.enc16, m.enc32):
        conv = stage[0][0]
        stage[0][0] = _space_to_depth_conv(conv.weight, conv.bias, 2)
    conv, act = m.kp_head[0]
    cells = _space_to_depth_conv(conv.weight[:, :64], None, 8)  # the 64 cell pixels: pixel_unshuffle(g, 8)
    feat = _space_to_depth_conv(conv.weight[:, 64:], conv.bias, 1)  # the features: a 1x1 conv
    if window is not None:  # one (8 + 2 margin)-px window conv, stride 8, the cell's weights at its centre
        w, b = window
        p = m.kp_margin
        w[:, :, p : p + 8, p : p + 8] += cells.weight.detach()
        cells = nn.Conv2d(1, 64, w.shape[-1], stride=8, padding=p, bias=False)
        cells.weight.data.copy_(w)
        feat.bias.data.add_(b)
    reads_g4 = cells.padding[0] % 4 == 0 and cells.kernel_size[0] % 4 == 0
    if reads_g4:
        cells = _on_space_to_depth_4(cells)
    first = nn.Module()
    first.cells, first.feat, first.act, first.reads_g4 = cells, feat, act, reads_g4
    m.kp_head[0] = first
    m.__class__ = _FoldedFastNet
    return m.to(memory_format=torch.channels_last)


class _FoldedFastNet(FastKeypointNet):
    """The inference copy made by :func:`fold_for_inference` (same weights, rearranged; not for training)."""

    def _grey(self, x: torch.Tensor) -> torch.Tensor:
        # a product over the channels of the image (laid out channels-last by zippy.image.to_tensor), not a conv
        return _standardize((x.permute(0, 2, 3, 1) @ self.grey.view(3, 1).to(x.dtype)).permute(0, 3, 1, 2))

    def _down(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return stage(x)  # the first conv is the 2x2 stride-2 form of space-to-depth + 1x1

    def _kp_logits(self, g: torch.Tensor, g4: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        hc, wc = feat.shape[-2:]
        first = self.kp_head[0]  # the cell windows' part (a stride-8 conv on g, or stride 2 on g4), the features'
        cells = first.cells(g4 if first.reads_g4 else g)
        y = first.act(cells[..., :hc, :wc] + first.feat(feat))
        return self.kp_head[1:](y)


def _space_to_depth_conv(weight: torch.Tensor, bias: torch.Tensor | None, factor: int) -> nn.Conv2d:
    """The ``factor`` x ``factor`` stride-``factor`` conv equal to pixel_unshuffle(x, factor) then a 1x1 conv of
    ``weight`` [O, C * factor**2, 1, 1] and ``bias`` [O] (or None); factor 1 is the 1x1 conv itself.

    pixel_unshuffle puts input channel c's pixel (dy, dx) of each block at channel c * factor**2 + dy * factor + dx,
    so the 1x1 weight is the strided kernel [O, C, factor, factor] read in that order.
    """
    cout, cin = weight.shape[0], weight.shape[1] // factor**2
    out = nn.Conv2d(cin, cout, factor, stride=factor, bias=bias is not None)
    out.weight.data.copy_(weight.detach().reshape(cout, cin, factor, factor))
    if bias is not None:
        out.bias.data.copy_(bias.detach())
    return out.eval()


def _on_space_to_depth_4(conv: nn.Conv2d) -> nn.Conv2d:
    """The conv on pixel_unshuffle(g, 4) [B, 16, H/4, W/4] equal to ``conv`` (one input channel, stride 8, kernel
    and padding multiples of 4) on g [B, 1, H, W]: kernel pixel (4a + dy, 4b + dx) becomes tap (a, b) of input
    channel 4 dy + dx, at stride 2. Sixteen input channels suit oneDNN's kernels better than one (about 1 ms less
    per 480x640 image, with and without AVX-512), and g4 is the encoder's input anyway."""
    k, p = conv.kernel_size[0] // 4, conv.padding[0] // 4
    cout = conv.out_channels
    w = conv.weight.detach().reshape(cout, k, 4, k, 4).permute(0, 2, 4, 1, 3).reshape(cout, 16, k, k)
    out = nn.Conv2d(16, cout, k, stride=2, padding=p, bias=conv.bias is not None)
    out.weight.data.copy_(w)
    if conv.bias is not None:
        out.bias.data.copy_(conv.bias.detach())
    return out.eval()


def _bn_scale(bn: nn.BatchNorm2d) -> torch.Tensor:
    """The factor [C] an eval-mode BatchNorm multiplies each channel by."""
    return (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()


def _plain_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> nn.Conv2d:
    w = _weight(conv).detach().clone()
    b = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(conv.out_channels)
    if bn is not None:
        g = _bn_scale(bn)
        w = w * g.view(-1, 1, 1, 1)
        b = (b - bn.running_mean) * g + bn.bias.detach()
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding, bias=True)
    out.weight.data.copy_(w)
    out.bias.data.copy_(b)
    return out.eval()
