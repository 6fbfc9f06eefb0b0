"""Compression backbones: the other compression techniques as registered options of the same network.

Every backbone here keeps the KP2D-style topology (zippy.models.net), the heads and the 256-bit binary
descriptors with k ones; only the layers of some roles change (see zippy.models.layers for the roles).
Module paths stay those of the float factory wherever a layer keeps its shape, so ``zippy train --init``
copies a trained float (kp2d) network into any of them.

=========  =========================================================================================
name       what changes
=========  =========================================================================================
int8       every conv 8-bit: per-channel symmetric weights, 8-bit (EMA-range) inputs; no binary layers
int4       4-bit weights and activations; first (stem) and last (head outputs) layers 8-bit
int4w6a    4-bit weights, 6-bit activations; first and last layers 8-bit
a2q        accumulator-aware quantization: each output channel's integer weights have an l1 norm
           small enough that a P-bit accumulator (option ``accumulator_bits``, default 16) can never
           overflow for any input on the layer's input grid (:func:`accumulator_report`)
bm         bipolar morphological 3x3 encoder convs: sums of products replaced by max of sums in the
           log domain (:class:`BMConv2d`); :func:`convert_to_bm` converts trained convs layer by layer
shift      3x3 encoder convs replaced by a per-channel spatial shift (learnt by shift attention) and a
           1x1 conv (:class:`ShiftConv`)
pruned     float network whose channel groups are pruned by soft filter pruning or a group-lasso
           penalty during training; :func:`export_pruned` writes the physically smaller network
dsconv     depthwise-separable blocks (3x3 depthwise + 1x1) in place of the 3x3 encoder and head convs
=========  =========================================================================================

Backbone settings live in ``ModelConfig.options`` (saved in every weights file); each backbone
accepts only its own keys (unknown keys raise). Training hooks for the trainer:
:func:`regularization` (a loss term) and :func:`after_step` (annealing, soft filter pruning).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zippy.models.config import ModelConfig
from zippy.models.layers import ConvBNAct, LayerFactory, Residual, conv
from zippy.models.registry import register
from zippy.quant.layers import ActQuant, BinaryConv2d, QConv2d, weight_fake_quant
from zippy.quant.ste import ana_noise, fake_quant, set_ste_noise, ste_modules, weight_quant

log = logging.getLogger(__name__)

__all__ = [
    "A2QConv2d",
    "BMConv2d",
    "QuantAct",
    "QuantConv",
    "ShiftConv",
    "accumulator_report",
    "after_step",
    "bm_from_float",
    "convert_to_bm",
    "export_pruned",
    "group_norms",
    "prune_groups",
    "regularization",
    "soft_prune",
    "weight_sparsity",
]


def _options(cfg: ModelConfig, defaults: dict[str, Any], backbone: str) -> dict[str, Any]:
    """cfg.options merged over ``defaults``; keys the backbone does not know raise ValueError."""
    given = dict(cfg.options)
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"backbone {backbone!r} does not take options {unknown}; it takes {sorted(defaults)}")
    return {**defaults, **given}


def _bits(value: Any, name: str, lo: int = 2, hi: int = 8) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= int(value) <= hi:
        raise ValueError(f"option {name} must be an integer in {lo}..{hi}, got {value!r}")
    return int(value)


# ============================================================================== quantized layers


class QuantAct(ActQuant):
    """:class:`ActQuant` whose training-time rounding follows an STE mode (zippy.quant.ste).

    The range tracking and the grid are ActQuant's; with mode "ste" the output is ActQuant's exactly.
    """

    def __init__(self, bits: int = 8, fixed_range: tuple[float, float] | None = None, momentum: float = 0.01):
        super().__init__(bits, fixed_range, momentum)
        self.ste_mode, self.ste_noise, self.ste_sample = "ste", 0.0, False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)  # tracks the range; hard fake quantization
        if self.training and self.enabled and self.ste_mode != "ste" and bool(self.initialized):
            scale, zp = self.qparams()
            y = fake_quant(
                x.float(), scale, zp, 0, self.qmax, mode=self.ste_mode, noise=self.ste_noise, sample=self.ste_sample
            ).to(x.dtype)
        return y


class QuantConv(QConv2d):
    """:class:`QConv2d` with b-bit weights per output channel or per group of input channels, and STE modes.

    Extra args:
        bits: weight bits (2..8). group_size: input channels per weight scale (0: one per output channel).

    With ``group_size = 0`` and mode "ste" the weights are exactly QConv2d's (``weight_fake_quant``).
    """

    def __init__(self, *args: Any, bits: int = 8, group_size: int = 0, input_quant: ActQuant | None = None, **kw: Any):
        super().__init__(*args, bits=bits, input_quant=input_quant, **kw)
        cin = self.in_channels // self.groups
        self.group_size = int(group_size) if group_size and cin % int(group_size) == 0 and cin > group_size else 0
        self.ste_mode, self.ste_noise, self.ste_sample = "ste", 0.0, False

    def quantized_weight(self) -> torch.Tensor:
        """float [O, I, k, k]: the weights the layer computes with."""
        if not self.quant_enabled:
            return self.weight
        if self.group_size == 0 and (self.ste_mode == "ste" or not self.training):
            return weight_fake_quant(self.weight, self.bits)
        return weight_quant(
            self.weight,
            self.bits,
            group_size=self.group_size,
            mode=self.ste_mode,
            noise=self.ste_noise,
            sample=self.ste_sample,
            training=self.training,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.input_quant(x), self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", bits={self.bits}, group_size={self.group_size}"


class _QuantFactory(LayerFactory):
    """Shared body of the integer backbones: every conv quantized, the float factory's module layout.

    Options: ``weight_bits``, ``act_bits`` (inner layers), ``edge_bits`` (stem and head outputs, weights
    and inputs), ``group_size`` (input channels per weight scale, 0 = per output channel).
    """

    binary_descriptors = True
    defaults: ClassVar[dict[str, Any]] = {"weight_bits": 8, "act_bits": 8, "edge_bits": 8, "group_size": 0}

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        opts = _options(cfg, self.defaults, self.name)
        self.opts = opts
        self.wbits = _bits(opts["weight_bits"], "weight_bits")
        self.abits = _bits(opts["act_bits"], "act_bits")
        self.ebits = _bits(opts["edge_bits"], "edge_bits")
        gs = opts.get("group_size", 0)
        if isinstance(gs, bool) or not isinstance(gs, (int, np.integer)) or gs < 0:
            raise ValueError(f"option group_size must be an integer >= 0, got {gs!r}")
        self.group_size = int(gs)

    def qconv(
        self, cin: int, cout: int, k: int, *, bias: bool = False, edge: bool = False, input_range=None
    ) -> nn.Conv2d:
        bits = self.ebits if edge else self.wbits
        abits = self.ebits if edge else self.abits
        return QuantConv(
            cin,
            cout,
            k,
            padding=k // 2,
            bias=bias,
            bits=bits,
            group_size=self.group_size,
            input_quant=QuantAct(abits, input_range),
        )

    def stem(self, cin: int, cout: int) -> nn.Module:
        return ConvBNAct(self.qconv(cin, cout, 3, edge=True, input_range=(0.0, 1.0)), cout, nn.Hardswish(inplace=True))

    def pool(self, cin: int, cout: int) -> nn.Module:
        return ConvBNAct(self.qconv(cin, cout, 1), cout)

    def encoder_branch(self, cin: int, cout: int) -> nn.Module:
        return nn.Sequential(self.qconv(cin, cout, 3), nn.ReLU(inplace=True), nn.BatchNorm2d(cout))

    def expand(self, cin: int, cout: int) -> nn.Module:
        shortcut = nn.Sequential(self.qconv(cin, cout, 1), nn.BatchNorm2d(cout))
        return Residual(self.encoder_branch(cin, cout), shortcut)

    def head(self, cin: int, cout: int, k: int = 3) -> nn.Module:
        return ConvBNAct(self.qconv(cin, cout, k), cout)

    def head_out(self, cin: int, cout: int) -> nn.Module:
        return self.qconv(cin, cout, 3, bias=True, edge=True)

    def desc_out(self, cin: int, cout: int) -> nn.Module:
        return self.qconv(cin, cout, 1, bias=True, edge=True)


@register("int8")
class Int8Layers(_QuantFactory):
    """Every conv 8-bit (per-channel symmetric weights, 8-bit inputs), no binary layers."""


@register("int4")
class Int4Layers(_QuantFactory):
    """4-bit weights and activations; the stem and the head output convs stay 8-bit."""

    defaults: ClassVar[dict[str, Any]] = {**_QuantFactory.defaults, "weight_bits": 4, "act_bits": 4}


@register("int4w6a")
class Int4W6ALayers(_QuantFactory):
    """4-bit weights, 6-bit activations; the stem and the head output convs stay 8-bit."""

    defaults: ClassVar[dict[str, Any]] = {**_QuantFactory.defaults, "weight_bits": 4, "act_bits": 6}


# ============================================================================== a2q


class A2QConv2d(nn.Conv2d):
    """Accumulator-aware quantized conv (after Colbert et al., A2Q, ICCV 2023).

    Weights are ``w = g' v / ||v||_1`` per output channel with ``g' = min(|g|, T s)``, quantized with a
    learnt per-channel scale ``s`` and rounding toward zero: ``q = clamp(trunc(w / s), -qmax, qmax)``.
    Since truncation never grows a magnitude, ``||q||_1 <= ||w||_1 / s = g' / s <= T`` with

        T = (2^(P-1) - 1) / (2^N - 1)

    for a P-bit signed accumulator and N-bit inputs. Any input on the N-bit grid has integers
    ``|x_int| <= 2^N - 1`` (with or without the zero point subtracted), so ``|sum q x_int| <= 2^(P-1) - 1``:
    integer accumulation can never overflow. The bias, the zero-point correction and a folded BatchNorm
    (which only rescales ``s`` per channel) act after the accumulator and do not change the bound.

    ``v`` is the ``weight`` parameter (so float weights load into it); ``g`` and ``s`` are initialized
    from it on the first forward unless loaded from a trained file (buffer ``initialized``).
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        k: int,
        *,
        bias: bool = False,
        bits: int = 8,
        accumulator_bits: int = 16,
        input_quant: ActQuant,
    ):
        super().__init__(cin, cout, k, padding=k // 2, bias=bias)
        self.bits = _bits(bits, "weight_bits")
        if not self.bits < accumulator_bits <= 32:
            raise ValueError(f"accumulator_bits must be in {self.bits + 1}..32, got {accumulator_bits}")
        self.accumulator_bits = int(accumulator_bits)
        self.input_quant = input_quant
        self.quant_enabled = True
        self.ste_mode, self.ste_noise, self.ste_sample = "ste", 0.0, False
        self.norm = nn.Parameter(torch.ones(cout))
        self.scale = nn.Parameter(torch.ones(cout))
        self.register_buffer("initialized", torch.tensor(False))
        self._init_from_weight()

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    @property
    def input_bits(self) -> int:
        return int(self.input_quant.bits)

    @property
    def l1_limit(self) -> float:
        """T: the largest l1 norm of one output channel's integer weights that cannot overflow."""
        return (2 ** (self.accumulator_bits - 1) - 1) / (2**self.input_bits - 1)

    @torch.no_grad()
    def _init_from_weight(self) -> None:
        v = self.weight.detach().float().flatten(1)
        s = (v.abs().amax(1) / self.qmax).clamp_min(1e-8)
        self.scale.copy_(s)
        self.norm.copy_(torch.minimum(v.abs().sum(1), self.l1_limit * s))

    def _normalized(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(w / s, s): the l1-bounded weights in units of the scale, float [O, I, k, k], and s float [O]."""
        if not bool(self.initialized):
            self._init_from_weight()
            self.initialized.fill_(True)
        v = self.weight
        l1 = v.abs().flatten(1).sum(1).clamp_min(1e-12)
        s = self.scale.abs().clamp_min(1e-8)
        # the 1e-6 margin keeps float rounding of w / s from ever exceeding T
        g = torch.minimum(self.norm.abs(), self.l1_limit * (1 - 1e-6) * s)
        return v * (g / (l1 * s)).view(-1, 1, 1, 1), s

    def integer_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(q, s): integer-valued float [O, I, k, k] weights and float [O] scales; the layer uses q * s."""
        t, s = self._normalized()
        q = fake_quant(
            t,
            1.0,
            0.0,
            -self.qmax,
            self.qmax,
            mode=self.ste_mode,
            noise=self.ste_noise,
            sample=self.ste_sample,
            training=self.training,
            rounding="zero",
        )
        return q, s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_quant(x)
        q, s = self.integer_weight() if self.quant_enabled else self._normalized()
        return self._conv_forward(x, q * s.view(-1, 1, 1, 1), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", bits={self.bits}, accumulator_bits={self.accumulator_bits}"


@register("a2q")
class A2QLayers(_QuantFactory):
    """Accumulator-aware quantization: every conv an :class:`A2QConv2d` with a P-bit accumulator bound.

    Options: ``accumulator_bits`` (P, default 16), ``weight_bits`` (8), ``act_bits`` (8), ``edge_bits`` (8).
    """

    defaults: ClassVar[dict[str, Any]] = {"weight_bits": 8, "act_bits": 8, "edge_bits": 8, "accumulator_bits": 16}

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.acc_bits = _bits(self.opts["accumulator_bits"], "accumulator_bits", 8, 32)

    def qconv(
        self, cin: int, cout: int, k: int, *, bias: bool = False, edge: bool = False, input_range=None
    ) -> nn.Conv2d:
        return A2QConv2d(
            cin,
            cout,
            k,
            bias=bias,
            bits=self.ebits if edge else self.wbits,
            accumulator_bits=self.acc_bits,
            input_quant=QuantAct(self.ebits if edge else self.abits, input_range),
        )


def _integer_weights(m: nn.Module) -> tuple[torch.Tensor, int] | None:
    """(integer weights float [O, ...], input bits) of a layer computing with integer weights, else None."""
    if isinstance(m, A2QConv2d):
        was = m.training
        m.eval()
        with torch.no_grad():
            q, _ = m.integer_weight()
        m.train(was)
        return q, m.input_bits
    if isinstance(m, QConv2d) and getattr(m, "group_size", 0) == 0 and isinstance(m.input_quant, ActQuant):
        w = m.weight.detach().float()
        qmax = 2 ** (m.bits - 1) - 1
        scale = w.abs().flatten(1).amax(1).clamp_min(1e-8) / qmax
        q = torch.round(weight_fake_quant(w, m.bits) / scale.view(-1, *([1] * (w.dim() - 1))))
        return q, int(m.input_quant.bits)
    if isinstance(m, BinaryConv2d):
        return torch.where(m.weight.detach() >= 0, 1.0, -1.0), 1
    return None


def accumulator_report(model: nn.Module) -> list[dict[str, Any]]:
    """Worst-case integer accumulator of every layer that computes with integer weights.

    For output channel c with integer weights q_c and N-bit inputs (integers in [0, 2^N - 1], or the same
    range shifted by the zero point), the largest possible |accumulator| is bounded by
    ``||q_c||_1 (2^N - 1)``; ``worst_case`` is the maximum over channels and ``bits_needed`` the signed
    accumulator width that holds it. A2Q layers also give their P and whether the bound fits in it.
    Binary layers count inputs as 1 bit (+-1 values: bound ||q||_1).

    Returns:
        one dict per layer: ``layer``, ``kind``, ``input_bits``, ``max_l1``, ``worst_case``,
        ``bits_needed``, ``accumulator_bits`` (A2Q only, else None), ``fits`` (A2Q only, else None).
    """
    rows = []
    for name, m in model.named_modules():
        got = _integer_weights(m)
        if got is None:
            continue
        q, nbits = got
        l1 = q.abs().flatten(1).sum(1)
        max_l1 = int(l1.max()) if l1.numel() else 0
        worst = max_l1 * (1 if isinstance(m, BinaryConv2d) else 2**nbits - 1)
        p = m.accumulator_bits if isinstance(m, A2QConv2d) else None
        rows.append(
            {
                "layer": name,
                "kind": type(m).__name__,
                "input_bits": nbits,
                "max_l1": max_l1,
                "worst_case": worst,
                "bits_needed": math.ceil(math.log2(worst + 1)) + 1 if worst > 0 else 1,
                "accumulator_bits": p,
                "fits": None if p is None else worst <= 2 ** (p - 1) - 1,
            }
        )
    return rows


def weight_sparsity(model: nn.Module) -> dict[str, Any]:
    """Fraction of integer weights that are exactly 0, per layer and over all integer-weight layers.

    Returns:
        ``{"layers": {name: fraction}, "zeros": int, "total": int, "sparsity": float}``.
    """
    layers, zeros, total = {}, 0, 0
    for name, m in model.named_modules():
        got = _integer_weights(m)
        if got is None:
            continue
        q = got[0]
        z = int((q == 0).sum())
        layers[name] = z / max(q.numel(), 1)
        zeros += z
        total += q.numel()
    return {"layers": layers, "zeros": zeros, "total": total, "sparsity": zeros / max(total, 1)}


# ============================================================================== bm

_NEG = np.float32(-1000.0)  # log-magnitude of 0: exp() of anything near it is exactly 0 in float32
_LOW = np.float32(-3.0e38)
_BM_KERNELS: dict[str, Callable[..., Any]] = {}


def _bm_kernels() -> dict[str, Callable[..., Any]]:
    """Numba max-plus kernels (compiled on first use, cached on disk)."""
    if _BM_KERNELS:
        return _BM_KERNELS
    import numba

    @numba.njit(cache=True, nogil=True, fastmath=True)
    def bm_forward(ap, an, vw, sw, k, out, idx, track):  # pragma: no cover - compiled
        # out[b, t, o] = max over (c, dy, dx) of a[b, c, y+dy, x+dx] + vw[o, c, dy, dx], where the sign
        # combination t = 2 * (input negative) + (weight negative) selects a = ap or an.
        nb, nc, hp, wp = ap.shape
        no = vw.shape[0]
        h = hp - k + 1
        w = wp - k + 1
        out[:] = _LOW
        idx[:] = -1
        for b in range(nb):
            for o in range(no):
                for c in range(nc):
                    for dy in range(k):
                        for dx in range(k):
                            v = vw[o, c, dy, dx]
                            if v <= _NEG:
                                continue
                            tp = 0 if sw[o, c, dy, dx] > 0 else 1
                            tap = (c * k + dy) * k + dx
                            for y in range(h):
                                rp = ap[b, c, y + dy, dx : dx + w]
                                rn = an[b, c, y + dy, dx : dx + w]
                                mp = out[b, tp, o, y]
                                mn = out[b, tp + 2, o, y]
                                if track:
                                    ip = idx[b, tp, o, y]
                                    inn = idx[b, tp + 2, o, y]
                                    for x in range(w):
                                        s = rp[x] + v
                                        if s > mp[x]:
                                            mp[x] = s
                                            ip[x] = tap
                                        s2 = rn[x] + v
                                        if s2 > mn[x]:
                                            mn[x] = s2
                                            inn[x] = tap
                                else:
                                    for x in range(w):
                                        mp[x] = max(mp[x], rp[x] + v)
                                        mn[x] = max(mn[x], rn[x] + v)

    @numba.njit(cache=True, nogil=True)
    def bm_backward(grad, idx, k, gap, gan, gvw):  # pragma: no cover - compiled
        nb, _, no, h, w = grad.shape
        kk = k * k
        for b in range(nb):
            for t in range(4):
                for o in range(no):
                    for y in range(h):
                        for x in range(w):
                            g = grad[b, t, o, y, x]
                            tap = idx[b, t, o, y, x]
                            if g == 0 or tap < 0:
                                continue
                            c = tap // kk
                            r = tap - c * kk
                            dy = r // k
                            dx = r - dy * k
                            if t < 2:
                                gap[b, c, y + dy, x + dx] += g
                            else:
                                gan[b, c, y + dy, x + dx] += g
                            gvw[o, c, dy, dx] += g

    _BM_KERNELS.update(forward=bm_forward, backward=bm_backward)
    return _BM_KERNELS


class _MaxPlus4(torch.autograd.Function):
    """Max-plus 'convolution' for the 4 sign combinations; see :func:`bm_maxplus`."""

    @staticmethod
    def forward(ctx, ap, an, vw, sw, k):  # type: ignore[override]
        kern = _bm_kernels()
        nb, _, hp, wp = ap.shape
        no = vw.shape[0]
        h, w = hp - k + 1, wp - k + 1
        track = any(ctx.needs_input_grad[:3])
        out = np.empty((nb, 4, no, h, w), np.float32)
        idx = np.empty((nb, 4, no, h, w) if track else (1, 1, 1, 1, 1), np.int32)
        a_p = np.ascontiguousarray(ap.detach().float().numpy())
        a_n = np.ascontiguousarray(an.detach().float().numpy())
        v = np.ascontiguousarray(vw.detach().float().numpy())
        s = np.ascontiguousarray(sw.numpy().astype(np.int8))
        kern["forward"](a_p, a_n, v, s, k, out, idx, track)
        if track:
            ctx.save_for_backward(torch.from_numpy(idx))
            ctx.shapes = (ap.shape, vw.shape, k)
        return torch.from_numpy(out)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (idx,) = ctx.saved_tensors
        a_shape, v_shape, k = ctx.shapes
        gap = np.zeros(tuple(a_shape), np.float32)
        gan = np.zeros(tuple(a_shape), np.float32)
        gvw = np.zeros(tuple(v_shape), np.float32)
        _bm_kernels()["backward"](np.ascontiguousarray(grad.float().numpy()), idx.numpy(), k, gap, gan, gvw)
        return torch.from_numpy(gap), torch.from_numpy(gan), torch.from_numpy(gvw), None, None


def _log_abs(x: torch.Tensor, positive: bool) -> torch.Tensor:
    """log(x) where x > 0 (positive) / log(-x) where x < 0, else the 'log 0' constant; tiny |x| count as 0."""
    mag = x if positive else -x
    return torch.where(mag > 1e-30, torch.log(mag.clamp_min(1e-30)), torch.full_like(mag, float(_NEG)))


def bm_maxplus(x: torch.Tensor, weight: torch.Tensor, padding: int) -> torch.Tensor:
    """The bipolar morphological approximation of ``conv2d(x, weight, padding=padding)`` (stride 1).

    With ``x+ = max(x, 0)``, ``x- = max(-x, 0)`` and likewise for the weights,

        BM(x, W) = e(x+, W+) - e(x+, W-) - e(x-, W+) + e(x-, W-),
        e(a, b)[o, p] = exp(max_{c, d} (ln a[c, p + d] + ln b[o, c, d]))

    i.e. each of the four sign-sorted sums of products is replaced by its largest term, computed with
    additions and a max in the log domain (no multiplication). Zero-padded like the conv.

    Args:
        x: float [B, C, H, W]. weight: float [O, C, k, k] (odd k). padding: k // 2.

    Returns:
        float [B, O, H, W]; differentiable in ``x`` and ``weight``.
    """
    if x.dim() != 4 or weight.dim() != 4 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"expected x [B, C, H, W] and weight [O, C, k, k], got {list(x.shape)} {list(weight.shape)}")
    k = int(weight.shape[-1])
    pad = (padding,) * 4
    ap = F.pad(_log_abs(x.float(), True), pad, value=float(_NEG))
    an = F.pad(_log_abs(x.float(), False), pad, value=float(_NEG))
    w = weight.float()
    vw = torch.log(w.abs().clamp_min(1e-12))
    vw = torch.where(w.abs() > 1e-12, vw, torch.full_like(vw, float(_NEG)))
    sw = (w.detach() < 0).to(torch.int8) * -2 + 1  # +1 / -1
    m = torch.exp(_MaxPlus4.apply(ap, an, vw, sw, k))
    return m[:, 0] - m[:, 1] - m[:, 2] + m[:, 3]


class BMConv2d(nn.Conv2d):
    """A conv replaced by its bipolar morphological approximation: ``y = alpha * BM(x, W) + beta``.

    ``weight`` holds W (the conv weights, so trained float weights load into it); ``alpha`` / ``bias``
    are per-channel, fitted by least squares against the conv on calibration data (:func:`convert_to_bm`).
    The buffer ``bm_enabled`` switches between the BM layer and the plain conv ``conv(x, W)`` (used during
    layer-by-layer conversion; saved with the weights). Stride 1, 'same' padding.
    """

    def __init__(self, cin: int, cout: int, k: int = 3):
        super().__init__(cin, cout, k, padding=k // 2, bias=True)
        nn.init.zeros_(self.bias)
        self.alpha = nn.Parameter(torch.ones(cout))
        self.register_buffer("bm_enabled", torch.tensor(True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.bm_enabled):
            return self._conv_forward(x, self.weight, None)
        y = bm_maxplus(x, self.weight, self.padding[0]).to(x.dtype)
        return y * self.alpha.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


@register("bm")
class BMLayers(LayerFactory):
    """Bipolar morphological 3x3 convs in the encoder's residual blocks; everything else float.

    Option ``bm_layers``: indices of the encoder 3x3 convs made BM, in network order (0-1 stage 1,
    2-3 stage 2, 4-5 stage 3, 6 the 1/8 expand block, 7 the 1/8 residual block). Default (0, 1, 2, 3):
    the max-plus kernels cost about as much per layer as a float conv's multiply-adds but without
    BLAS, so every BM layer adds roughly 0.1-0.4 s per 240x320 image on one core here.
    """

    binary_descriptors = True
    n_encoder_convs: ClassVar[int] = 8
    defaults: ClassVar[dict[str, Any]] = {"bm_layers": (0, 1, 2, 3)}

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        layers = _options(cfg, self.defaults, self.name)["bm_layers"]
        try:
            chosen = sorted({int(i) for i in layers})
        except (TypeError, ValueError) as e:
            raise ValueError(f"option bm_layers must be a list of integers, got {layers!r}") from e
        if any(not 0 <= i < self.n_encoder_convs for i in chosen):
            raise ValueError(f"bm_layers must be in 0..{self.n_encoder_convs - 1}, got {layers!r}")
        self.bm_layers = set(chosen)
        self._count = 0

    def encoder_branch(self, cin: int, cout: int) -> nn.Module:
        i = self._count
        self._count += 1
        c = BMConv2d(cin, cout, 3) if i in self.bm_layers else conv(cin, cout, 3)
        return nn.Sequential(c, nn.ReLU(inplace=True), nn.BatchNorm2d(cout))


def bm_from_float(model: nn.Module, bm_layers: Sequence[int] | None = None) -> nn.Module:
    """A "bm" network holding ``model``'s trained weights (kp2d float or any float-layout backbone), BM off.

    Every BM layer starts disabled (it computes the original conv): :func:`convert_to_bm` enables them.

    Raises:
        ValueError: a weight of ``model`` does not fit the bm network.
    """
    from zippy.models.net import KeypointNet

    opts = {} if bm_layers is None else {"bm_layers": tuple(int(i) for i in bm_layers)}
    cfg = ModelConfig.from_dict({**model.cfg.to_dict(), "backbone": "bm", "options": opts})
    net = KeypointNet(cfg)
    own = net.state_dict()
    src = model.state_dict()
    bad = [k for k in own if k in src and src[k].shape != own[k].shape]
    if bad:
        raise ValueError(f"weights do not fit the bm network: {bad[:5]}")
    missing = [k for k in own if k not in src and not k.endswith(("alpha", "bias", "bm_enabled"))]
    if missing:
        raise ValueError(f"the source network lacks {missing[:5]} (expected a float-layout network)")
    net.load_state_dict({k: v for k, v in src.items() if k in own}, strict=False)
    for m in net.modules():
        if isinstance(m, BMConv2d):
            m.bm_enabled.fill_(False)
    return net


@torch.no_grad()
def _fit_bm(layer: BMConv2d, inputs: list[torch.Tensor]) -> float:
    """Least-squares alpha, beta per channel so alpha * BM + beta matches the conv; returns R^2."""
    stats = torch.zeros(5, layer.out_channels, dtype=torch.float64)  # n, sum b, sum t, sum bb, sum bt
    tt = torch.zeros(layer.out_channels, dtype=torch.float64)
    for x in inputs:
        t = layer._conv_forward(x, layer.weight, None).double().transpose(0, 1).flatten(1)
        b = bm_maxplus(x, layer.weight, layer.padding[0]).double().transpose(0, 1).flatten(1)
        stats += torch.stack([torch.full_like(b[:, 0], b.shape[1]), b.sum(1), t.sum(1), (b * b).sum(1), (b * t).sum(1)])
        tt += (t * t).sum(1)
    n, sb, st, sbb, sbt = stats
    var_b = sbb - sb * sb / n
    cov = sbt - sb * st / n
    alpha = torch.where(var_b > 1e-12, cov / var_b.clamp_min(1e-12), torch.zeros_like(cov))
    beta = (st - alpha * sb) / n
    layer.alpha.copy_(alpha.float())
    layer.bias.copy_(beta.float())
    # residual sum of squares of the fit vs the variance of the conv output
    var_t = tt - st * st / n
    rss = var_t - alpha * cov
    return float(1.0 - rss.sum() / var_t.sum().clamp_min(1e-12))


def convert_to_bm(
    model: nn.Module,
    images: Iterable[torch.Tensor],
    *,
    layers: Sequence[str] | None = None,
    finetune: Callable[[nn.Module, str], None] | None = None,
) -> dict[str, float]:
    """Convert a "bm" network's conv layers to BM one at a time, in network order (Limonova et al.).

    For each layer: record its inputs on the calibration images through the network as converted so far,
    fit alpha and beta per channel by least squares against the original conv, enable BM, then call
    ``finetune(model, layer_name)`` (e.g. a few hundred training steps) before converting the next one.

    Args:
        model: a "bm" KeypointNet (e.g. from :func:`bm_from_float`); it is modified in place.
        images: calibration batches, float [B, 3, H, W] in [0, 1] (H, W multiples of 8); kept in memory.
        layers: names of the BMConv2d modules to convert (default: all still disabled, in order).
        finetune: optional callback after each conversion.

    Returns:
        {layer name: R^2 of the fitted BM output against the conv output on the calibration inputs}.
    """
    batches = list(images)
    if not batches:
        raise ValueError("convert_to_bm needs at least one calibration batch")
    bm = {n: m for n, m in model.named_modules() if isinstance(m, BMConv2d)}
    names = [n for n, m in bm.items() if not bool(m.bm_enabled)] if layers is None else list(layers)
    unknown = [n for n in names if n not in bm]
    if unknown:
        raise ValueError(f"not BM layers: {unknown}; BM layers are {list(bm)}")
    scores = {}
    for name in names:
        layer = bm[name]
        seen: list[torch.Tensor] = []
        handle = layer.register_forward_pre_hook(lambda _m, args, seen=seen: seen.append(args[0].detach().clone()))
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                for x in batches:
                    model(x)
        finally:
            handle.remove()
            model.train(was)
        scores[name] = _fit_bm(layer, seen)
        layer.bm_enabled.fill_(True)
        log.info("BM conversion of %s: R^2 = %.3f", name, scores[name])
        if finetune is not None:
            finetune(model, name)
    return scores


# ============================================================================== shift


class ShiftConv(nn.Module):
    """A 3x3 conv replaced by a per-channel spatial shift and a 1x1 conv (Wu et al., 2018).

    Each input channel moves by one of the k x k offsets, chosen by shift attention (Hacene et al., 2019):
    per-channel logits over the offsets, ``softmax(logits / temperature)`` mixes the shifted copies during
    training (a depthwise conv), the temperature is annealed (:func:`after_step`) and from
    ``hard_from`` of training on, and always in eval mode, each channel takes its argmax offset:
    a zero-multiplication memory shift. Initial logits favour the grouping of the original shift layer
    (channel i -> offset i mod k^2).
    """

    def __init__(self, cin: int, cout: int, k: int = 3):
        super().__init__()
        self.k = k
        init = torch.zeros(cin, k * k)
        init[torch.arange(cin), torch.arange(cin) % (k * k)] = 2.0
        self.logits = nn.Parameter(init)
        self.pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.temperature = 1.0
        self.hard = False

    def offsets(self) -> torch.Tensor:
        """int64 [C]: the chosen offset of each channel (index dy * k + dx)."""
        return self.logits.detach().argmax(1)

    def _hard_shift(self, x: torch.Tensor) -> torch.Tensor:
        k, p = self.k, self.k // 2
        _, _, h, w = x.shape
        xp = F.pad(x, (p, p, p, p))
        out = torch.empty_like(x)
        off = self.offsets()
        for s in torch.unique(off).tolist():
            ch = (off == s).nonzero().flatten()
            dy, dx = divmod(int(s), k)
            out[:, ch] = xp[:, ch, dy : dy + h, dx : dx + w]
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.pw(self._hard_shift(x))
        att = torch.softmax(self.logits / self.temperature, 1)
        if self.hard:
            one_hot = F.one_hot(att.argmax(1), att.shape[1]).to(att.dtype)
            att = one_hot + att - att.detach()
        kernel = att.view(-1, 1, self.k, self.k).to(x.dtype)
        y = F.conv2d(x, kernel, padding=self.k // 2, groups=x.shape[1])
        return self.pw(y)

    def anneal(self, progress: float, start: float = 1.0, end: float = 0.05, hard_from: float = 0.8) -> None:
        """Temperature from ``start`` to ``end`` (geometric) and hard shifts from ``hard_from`` of training."""
        p = min(max(progress, 0.0), 1.0)
        self.temperature = start * (end / start) ** p
        self.hard = p >= hard_from


@register("shift")
class ShiftLayers(LayerFactory):
    """Shift layers (learnt shift + 1x1 conv) in place of the 3x3 encoder convs; everything else float."""

    binary_descriptors = True

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        _options(cfg, {}, self.name)

    def encoder_branch(self, cin: int, cout: int) -> nn.Module:
        return nn.Sequential(ShiftConv(cin, cout, 3), nn.ReLU(inplace=True), nn.BatchNorm2d(cout))


# ============================================================================== dsconv


def _dsconv(cin: int, cout: int) -> nn.Sequential:
    """3x3 depthwise conv, BN, ReLU, 1x1 pointwise conv (MobileNet's separable block)."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False),
        nn.BatchNorm2d(cin),
        nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, 1, bias=False),
    )


@register("dsconv")
class DSConvLayers(LayerFactory):
    """Depthwise-separable blocks in place of the 3x3 encoder and head convs.

    The stem (3 input channels: a separable conv saves nothing there) and the two tiny 3x3 head output
    convs (1 and 2 output channels) stay plain convs.
    """

    binary_descriptors = True

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        _options(cfg, {}, self.name)

    def encoder_branch(self, cin: int, cout: int) -> nn.Module:
        return nn.Sequential(_dsconv(cin, cout), nn.ReLU(inplace=True), nn.BatchNorm2d(cout))

    def head(self, cin: int, cout: int, k: int = 3) -> nn.Module:
        return ConvBNAct(_dsconv(cin, cout) if k == 3 else conv(cin, cout, k), cout)


# ============================================================================== pruned

# The channel groups of the topology: channels that must be removed together. Producers write the
# group's channels (conv output rows, then the BatchNorm of those channels); consumers read them (conv
# input columns). ``unit`` > 1: a group channel spans that many consecutive conv channels (space-to-depth
# before a consumer, pixel shuffle after a producer). Paths are those of the float factory's layout.
_PRODUCER = tuple[str, str, int]  # conv path, BatchNorm path, unit
_CONSUMER = tuple[str, int]  # conv path, unit


@dataclass(frozen=True)
class PruneGroup:
    """A channel group: its name, producers (conv, BN, unit) and consumers (conv, unit)."""

    name: str
    producers: tuple[_PRODUCER, ...]
    consumers: tuple[_CONSUMER, ...]


def _branch(p: str) -> _PRODUCER:
    return (f"{p}.branch.0", f"{p}.branch.2", 1)


def prune_groups() -> list[PruneGroup]:
    """The prunable channel groups of the KP2D-style topology, in network order."""
    groups = [
        PruneGroup("stem", (("stem.0", "stem.1", 1),), (("stages.0.1.0", 4),)),
    ]
    for i in range(3):
        nxt = ((f"stages.{i + 1}.1.0", 4),) if i < 2 else (("block8.0.branch.0", 1), ("block8.0.shortcut.0", 1))
        groups.append(
            PruneGroup(
                f"stage{i}",
                ((f"stages.{i}.1.0", f"stages.{i}.1.1", 1), _branch(f"stages.{i}.2"), _branch(f"stages.{i}.3")),
                ((f"stages.{i}.2.branch.0", 1), (f"stages.{i}.3.branch.0", 1), *nxt),
            )
        )
    groups += [
        PruneGroup(
            "feat",
            (_branch("block8.0"), ("block8.0.shortcut.0", "block8.0.shortcut.1", 1), _branch("block8.1")),
            (("block8.1.branch.0", 1), ("score_head.0.0", 1), ("position_head.0.0", 1), ("desc_head.0.0", 1)),
        ),
        PruneGroup("score", (("score_head.0.0", "score_head.0.1", 1),), (("score_head.1", 1),)),
        PruneGroup("position", (("position_head.0.0", "position_head.0.1", 1),), (("position_head.1", 1),)),
        PruneGroup("desc0", (("desc_head.0.0", "desc_head.0.1", 4),), (("desc_head.2.0", 1),)),
        PruneGroup("desc1", (("desc_head.2.0", "desc_head.2.1", 1),), (("desc_head.3", 1),)),
    ]
    return groups


def _logical_widths(cfg: ModelConfig) -> dict[str, int]:
    c1, c2, c3 = cfg.widths
    c = cfg.feat_dim
    return {
        "stem": c1,
        "stage0": c1,
        "stage1": c2,
        "stage2": c3,
        "feat": c,
        "score": c,
        "position": c,
        "desc0": 2 * c // 4,
        "desc1": c,
    }


# role, input group (None: image / fixed), input unit, output group (None: fixed output) -- in call order
_PRUNED_CALLS: tuple[tuple[str, str | None, int, str | None], ...] = (
    ("stem", None, 1, "stem"),
    ("pool", "stem", 4, "stage0"),
    ("residual", "stage0", 1, "stage0"),
    ("residual", "stage0", 1, "stage0"),
    ("pool", "stage0", 4, "stage1"),
    ("residual", "stage1", 1, "stage1"),
    ("residual", "stage1", 1, "stage1"),
    ("pool", "stage1", 4, "stage2"),
    ("residual", "stage2", 1, "stage2"),
    ("residual", "stage2", 1, "stage2"),
    ("expand", "stage2", 1, "feat"),
    ("residual", "feat", 1, "feat"),
    ("head", "feat", 1, "score"),
    ("head_out", "score", 1, None),
    ("head", "feat", 1, "position"),
    ("head_out", "position", 1, None),
    ("head", "feat", 1, "desc0"),
    ("head", "desc0", 1, "desc1"),
    ("desc_out", "desc1", 1, None),
)


@register("pruned")
class PrunedLayers(LayerFactory):
    """Float layers with binary descriptors whose channel groups can be pruned (:func:`prune_groups`).

    Options:
        pruned_widths: {group: width} of an exported (physically smaller) network; empty while training.
        prune_method: "sfp" (soft filter pruning: every ``prune_every`` steps, and at the last step, the
            ``prune_rate`` weakest channels of each group are zeroed; they may grow back until the end)
            or "group_lasso" (a penalty ``prune_lambda * sum of per-channel L2 norms`` added to the loss).
        prune_rate: fraction of each group's channels removed (sfp; and by export after group lasso).
        prune_every: steps between soft prunings.
        prune_lambda: group-lasso weight.
    """

    binary_descriptors = True
    defaults: ClassVar[dict[str, Any]] = {
        "pruned_widths": (),
        "prune_method": "sfp",
        "prune_rate": 0.3,
        "prune_every": 100,
        "prune_lambda": 1e-4,
    }

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        opts = _options(cfg, self.defaults, self.name)
        if opts["prune_method"] not in ("sfp", "group_lasso"):
            raise ValueError(f"prune_method must be 'sfp' or 'group_lasso', got {opts['prune_method']!r}")
        if not 0.0 <= float(opts["prune_rate"]) < 1.0:
            raise ValueError(f"prune_rate must be in [0, 1), got {opts['prune_rate']!r}")
        widths = _logical_widths(cfg)
        given = dict(opts["pruned_widths"])
        unknown = sorted(set(given) - set(widths))
        if unknown:
            raise ValueError(f"pruned_widths has unknown groups {unknown}; groups are {sorted(widths)}")
        for g, w in given.items():
            if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or not 1 <= int(w) <= widths[g]:
                raise ValueError(f"pruned width of {g} must be an integer in 1..{widths[g]}, got {w!r}")
        self.widths = {**widths, **{g: int(w) for g, w in given.items()}}
        self._call = 0

    def _dims(self, role: str, cin: int, cout: int) -> tuple[int, int]:
        if self._call >= len(_PRUNED_CALLS) or _PRUNED_CALLS[self._call][0] != role:
            raise RuntimeError(f"pruned backbone: unexpected layer order at call {self._call} ({role})")
        _, gin, unit, gout = _PRUNED_CALLS[self._call]
        self._call += 1
        w_in = cin if gin is None else self.widths[gin] * unit
        w_out = cout if gout is None else self.widths[gout] * (4 if gout == "desc0" else 1)
        return w_in, w_out

    def stem(self, cin: int, cout: int) -> nn.Module:
        return super().stem(*self._dims("stem", cin, cout))

    def pool(self, cin: int, cout: int) -> nn.Module:
        return super().pool(*self._dims("pool", cin, cout))

    def residual(self, c: int) -> nn.Module:
        _, w = self._dims("residual", c, c)
        return Residual(self.encoder_branch(w, w))

    def expand(self, cin: int, cout: int) -> nn.Module:
        return super().expand(*self._dims("expand", cin, cout))

    def head(self, cin: int, cout: int, k: int = 3) -> nn.Module:
        return super().head(*self._dims("head", cin, cout), k)

    def head_out(self, cin: int, cout: int) -> nn.Module:
        return super().head_out(*self._dims("head_out", cin, cout))

    def desc_out(self, cin: int, cout: int) -> nn.Module:
        return super().desc_out(*self._dims("desc_out", cin, cout))


def _module(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path)


def _rows(idx: torch.Tensor, unit: int) -> torch.Tensor:
    """Group channel indices -> conv channel indices (each spans ``unit`` consecutive channels)."""
    return (idx.view(-1, 1) * unit + torch.arange(unit).view(1, -1)).flatten()


def group_norms(model: nn.Module) -> dict[str, torch.Tensor]:
    """Per-channel L2 norm (float [width], differentiable) of everything that writes each group's channels.

    A channel's norm covers its producers' conv filters and BatchNorm weight and bias, so a channel of
    norm 0 is exactly 0 everywhere (it can be removed without changing any output).
    """
    out = {}
    for g in prune_groups():
        sq = None
        for conv_path, bn_path, unit in g.producers:
            w = _module(model, conv_path).weight
            bn = _module(model, bn_path)
            per = w.pow(2).flatten(1).sum(1) + bn.weight.pow(2) + bn.bias.pow(2)
            per = per.view(-1, unit).sum(1)
            sq = per if sq is None else sq + per
        out[g.name] = torch.where(sq > 0, sq.clamp_min(1e-30).sqrt(), torch.zeros_like(sq))  # 0 stays exactly 0
    return out


@torch.no_grad()
def _zero_channels(model: nn.Module, group: PruneGroup, idx: torch.Tensor) -> None:
    for conv_path, bn_path, unit in group.producers:
        rows = _rows(idx, unit)
        c = _module(model, conv_path)
        c.weight[rows] = 0
        if c.bias is not None:
            c.bias[rows] = 0
        bn = _module(model, bn_path)
        bn.weight[rows] = 0
        bn.bias[rows] = 0


@torch.no_grad()
def soft_prune(model: nn.Module, rate: float) -> dict[str, int]:
    """Soft filter pruning (He et al., 2018): zero the ``rate`` weakest channels of every group.

    Returns:
        {group: number of channels zeroed}.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"rate must be in [0, 1), got {rate}")
    norms = group_norms(model)
    done = {}
    for g in prune_groups():
        n = norms[g.name]
        drop = math.floor(rate * n.numel())
        if drop:
            _zero_channels(model, g, torch.argsort(n)[:drop])
        done[g.name] = drop
    return done


def export_pruned(model: nn.Module, rate: float | None = None) -> nn.Module:
    """The physically smaller dense network: every channel whose producers are all zero is removed.

    Args:
        model: a "pruned" KeypointNet (any width). It is not modified unless ``rate`` is given.
        rate: first zero the ``rate`` weakest channels of each group (:func:`soft_prune`; e.g. after
            group-lasso training); None removes only channels that are already exactly zero.

    Returns:
        a "pruned" KeypointNet whose ``options["pruned_widths"]`` names every group's width (so it reloads
        with strict keys) and whose outputs equal the input model's (after the optional pruning) up to
        float summation order. At least one channel of each group is kept.
    """
    from zippy.models.net import KeypointNet

    if model.cfg.backbone != "pruned":
        raise ValueError(f"export_pruned needs a 'pruned' network, got {model.cfg.backbone!r}")
    if rate is not None:
        soft_prune(model, rate)
    keep: dict[str, torch.Tensor] = {}
    for name, n in group_norms(model).items():
        idx = (n > 0).nonzero().flatten()
        keep[name] = idx if idx.numel() else n.argmax().view(1)
    opts = {**dict(model.cfg.options), "pruned_widths": tuple(sorted((g, int(i.numel())) for g, i in keep.items()))}
    cfg = ModelConfig.from_dict({**model.cfg.to_dict(), "options": opts})
    small = KeypointNet(cfg)
    rows_of: dict[str, torch.Tensor] = {}
    cols_of: dict[str, torch.Tensor] = {}
    for g in prune_groups():
        for conv_path, bn_path, unit in g.producers:
            rows_of[conv_path] = rows_of[bn_path] = _rows(keep[g.name], unit)
        for conv_path, unit in g.consumers:
            cols_of[conv_path] = _rows(keep[g.name], unit)
    src = model.state_dict()
    new = {}
    for key, t in small.state_dict().items():
        path, _, leaf = key.rpartition(".")
        v = src[key]
        if path in rows_of and v.dim() >= 1 and leaf != "num_batches_tracked":
            v = v.index_select(0, rows_of[path])
        if path in cols_of and leaf == "weight" and v.dim() == 4:
            v = v.index_select(1, cols_of[path])
        if v.shape != t.shape:
            raise RuntimeError(f"export_pruned: {key} sliced to {list(v.shape)}, expected {list(t.shape)}")
        new[key] = v.clone()
    small.load_state_dict(new, strict=True)
    return small.train(model.training)


# ============================================================================== training hooks


def regularization(model: nn.Module) -> torch.Tensor:
    """Loss term of the backbone's training method (group lasso of "pruned"; 0 for every other backbone)."""
    cfg = getattr(model, "cfg", None)
    if cfg is None or cfg.backbone != "pruned" or cfg.option("prune_method", "sfp") != "group_lasso":
        return torch.zeros(())
    lam = float(cfg.option("prune_lambda", PrunedLayers.defaults["prune_lambda"]))
    return lam * sum(n.sum() for n in group_norms(model).values())


def after_step(model: nn.Module, step: int, total_steps: int) -> None:
    """Call after every optimizer step (``step`` counts steps done): annealing and soft filter pruning.

    * modules in ANA mode (zippy.quant.ste) get the noise of :func:`zippy.quant.ste.ana_noise`;
    * shift attention temperatures are annealed (:meth:`ShiftConv.anneal`);
    * "pruned" networks trained with soft filter pruning are pruned every ``prune_every`` steps and at
      the last step (so the final weights export exactly).
    """
    progress = step / max(int(total_steps), 1)
    if any(m.ste_mode == "ana" for m in ste_modules(model)):
        set_ste_noise(model, ana_noise(progress))
    for m in model.modules():
        if isinstance(m, ShiftConv):
            m.anneal(progress)
    cfg = getattr(model, "cfg", None)
    if cfg is not None and cfg.backbone == "pruned" and cfg.option("prune_method", "sfp") == "sfp":
        every = int(cfg.option("prune_every", PrunedLayers.defaults["prune_every"]))
        if step % max(every, 1) == 0 or step >= total_steps:
            soft_prune(model, float(cfg.option("prune_rate", PrunedLayers.defaults["prune_rate"])))
