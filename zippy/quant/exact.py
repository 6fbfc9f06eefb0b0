"""Integer-exact evaluation of 8-bit conv chains, shared by the fake-quantized model and the int8 engine.

A chain is ``QConv2d -> BatchNorm -> activation`` (ReLU, hard-swish or none) whose output is then
fake-quantized by some :class:`~zippy.quant.layers.ActQuant`. With 8-bit inputs and weights the conv is
an integer accumulator ``acc = sum((q_in - zp_in) * n)`` times per-channel scales, so the chain is

    v = act(acc * m[c] + b[c])        (float32; m = s_in * s_w * bn_alpha, b = bn_alpha * bias + bn_beta)

followed by the consumer's quantizer on ``float32(v)``. Computed this way, the result depends only on
the integer ``acc`` and the channel: the fake-quantized model in eval mode (:class:`IntegerConvChain`)
and the int8 engine (:func:`quantize_tail`, after oneDNN's exact integer accumulator) evaluate the same
float32 formula operation by operation and round to the same grid, so they agree bit for bit. A float
conv of dequantized values instead rounds its partial sums in an order that depends on the kernel; on
this network one such difference in the stem flipped descriptor bits of ~3 % of the keypoints.

Exactness needs ``|acc| < 2^24`` (the accumulator is computed and stored in float32):
:func:`accumulator_bound` checks it for every chain it is used on.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zippy.quant.layers import ActQuant, QConv2d, version_key, weight_fake_quant

__all__ = [
    "ACTIVATIONS",
    "EXACT_LIMIT",
    "IntegerConvChain",
    "accumulator_bound",
    "bn_affine",
    "chain_params",
    "integer_weights",
    "quantize_tail",
    "tail_reference",
]

ACTIVATIONS = {"none": 0, "relu": 1, "hardswish": 2}
EXACT_LIMIT = 2**24  # float32 holds every integer below this exactly


def integer_weights(conv: QConv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The trained integer weights int8 [O, I, k, k] and per-channel scales float64 [O] of a QConv2d.

    The integers come from the model's own weight quantizer (``weight_fake_quant``), so they round as
    the fake-quantized model does, ties included.
    """
    if conv.bits != 8:
        raise ValueError(f"integer weights need an 8-bit conv, got {conv.bits}-bit")
    w = conv.weight.detach().float()
    qmax = 2 ** (conv.bits - 1) - 1
    scale = w.abs().flatten(1).amax(1).clamp_min(1e-8) / qmax
    n = torch.round(weight_fake_quant(w, conv.bits) / scale.view(-1, 1, 1, 1)).clamp(-qmax, qmax)
    return n.to(torch.int8), scale.double()


def _act_name(act: nn.Module | None) -> str:
    if act is None:
        return "none"
    if isinstance(act, nn.ReLU):
        return "relu"
    if isinstance(act, nn.Hardswish):
        return "hardswish"
    raise ValueError(f"unsupported activation {type(act).__name__} (expected ReLU or Hardswish)")


def bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (alpha, beta) float64 [C] of an eval-mode BatchNorm: y = alpha * x + beta."""
    alpha = bn.weight.detach().double() / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    beta = bn.bias.detach().double() - alpha * bn.running_mean.detach().double()
    return alpha, beta


def chain_params(conv: QConv2d, bn: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(n int8 [O, I, k, k], m float64 [O], b float64 [O]) of ``v = acc * m + b`` (see the module doc)."""
    quant = conv.input_quant
    if not isinstance(quant, ActQuant):
        raise ValueError(f"the conv has no input quantizer (found {type(quant).__name__})")
    n, s_w = integer_weights(conv)
    s_in, _ = quant.qparams()
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros(n.shape[0], dtype=torch.float64)
    alpha, beta = (torch.ones_like(bias), torch.zeros_like(bias)) if bn is None else bn_affine(bn)
    return n, s_in * s_w * alpha, alpha * bias + beta


def accumulator_bound(n: torch.Tensor, zero_point: int) -> int:
    """Largest |acc| the integer weights ``n`` can produce from uint8 inputs with ``zero_point``."""
    pos = n.clamp_min(0).flatten(1).sum(1).long()
    neg = (-n.clamp_max(0)).flatten(1).sum(1).long()
    hi, lo = 255 - zero_point, zero_point  # input range q - zp in [-lo, hi]
    return int(torch.maximum(pos * hi + neg * lo, pos * lo + neg * hi).max())


def tail_reference(acc: torch.Tensor, m: torch.Tensor, b: torch.Tensor, act: str) -> torch.Tensor:
    """``act(acc * m + b)`` in float32 for acc float32 [B, C, H, W] (exact integers), m / b [C].

    The reference formula: :func:`quantize_tail` performs the same float32 operations in the same order
    (m and b rounded to float32 first; a multiply then an add, never fused).
    """
    v = acc.float() * m.float().view(1, -1, 1, 1) + b.float().view(1, -1, 1, 1)
    if act == "relu":
        v = torch.clamp(v, min=0.0)
    elif act == "hardswish":
        v = v * torch.clamp(v + 3.0, 0.0, 6.0) / 6.0
    elif act != "none":
        raise ValueError(f"act must be one of {list(ACTIVATIONS)}, got {act!r}")
    return v


@functools.lru_cache(maxsize=1)
def _tail_kernel():
    """numba kernel of :func:`quantize_tail`; one loop per activation so that each inner loop is branch-free."""
    import numba

    @numba.njit(cache=True, nogil=True, inline="always")
    def quant(v, lo, hi, scale, fzp):  # pragma: no cover - compiled
        # the consumer's fake quantizer, as zippy.quant.layers.fake_quant computes it
        return np.rint(min(max(v, lo), hi) / scale) + fzp

    @numba.njit(cache=True, nogil=True)
    def tail(acc, m, b, act, lo, hi, scale, zp, neg_zp, out, neg):  # pragma: no cover - compiled
        n, c = acc.shape
        fzp, fneg = np.float32(zp), np.float32(neg_zp)
        zero, three, six = np.float32(0.0), np.float32(3.0), np.float32(6.0)
        if act == 0:
            for i in range(n):
                for j in range(c):
                    q = quant(acc[i, j] * m[j] + b[j], lo, hi, scale, fzp)
                    out[i, j] = np.uint8(q)
                    if neg is not None:
                        neg[i, j] = np.uint8(q < fneg)
        elif act == 1:
            for i in range(n):
                for j in range(c):
                    q = quant(max(acc[i, j] * m[j] + b[j], zero), lo, hi, scale, fzp)
                    out[i, j] = np.uint8(q)
                    if neg is not None:
                        neg[i, j] = np.uint8(q < fneg)
        else:
            for i in range(n):
                for j in range(c):
                    v = acc[i, j] * m[j] + b[j]
                    q = quant(v * min(max(v + three, zero), six) / six, lo, hi, scale, fzp)
                    out[i, j] = np.uint8(q)
                    if neg is not None:
                        neg[i, j] = np.uint8(q < fneg)

    return tail


def quantize_tail(
    acc: np.ndarray,
    m: np.ndarray,
    b: np.ndarray,
    act: str,
    quant: ActQuant,
    neg_zp: int,
    out: np.ndarray | None = None,
    neg: np.ndarray | bool | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The chain's tail and its consumer's quantizer on exact accumulators: float32 [N, C] -> uint8 [N, C].

    Returns ``(q, neg)``: q the uint8 value on ``quant``'s grid, exactly what ``quant`` makes of
    :func:`tail_reference`'s output, and ``neg = (q < neg_zp)`` (the next binary conv's input when
    ``neg_zp`` is the grid's zero point). ``out`` / ``neg``: C-contiguous uint8 [N, C] to write into;
    ``neg=False`` skips it (returned as None) when no binary conv reads the output.
    """
    scale, zp = quant.qparams()
    qmax = quant.qmax
    # fake_quant clamps to [(0 - zp) * scale, (qmax - zp) * scale] (float64 bounds cast to float32 by
    # torch.clamp) and divides by the float32 scale
    lo, hi = np.float32((0 - zp) * scale), np.float32((qmax - zp) * scale)
    out = np.empty(acc.shape, np.uint8) if out is None else out
    if neg is False:
        neg = None
    elif neg is None:
        neg = np.empty(acc.shape, np.uint8)
    m32, b32 = np.asarray(m, np.float32), np.asarray(b, np.float32)
    _tail_kernel()(acc, m32, b32, ACTIVATIONS[act], lo, hi, np.float32(scale), zp, neg_zp, out, neg)
    return out, neg


class IntegerConvChain(nn.Sequential):
    """``QConv2d -> BatchNorm -> [activation] -> ...``; in eval mode the first steps run integer-exactly.

    Training (and eval with fake quantization off or untrained ranges) runs the children one by one as
    an ``nn.Sequential``. In eval mode with quantization on, the conv, the BatchNorm and a ReLU /
    hard-swish right after them are computed as ``tail_reference(conv(q_in - zp, n), m, b, act)``
    (exact float32 integer conv, then the tail formula; same values up to rounding, see the module doc); any
    later children (e.g. a quantizer) then run as usual. Children and parameter names are those of an
    ``nn.Sequential`` of the same modules, so weights load either way.
    """

    def _params(
        self, conv: QConv2d, bn: nn.BatchNorm2d, quant: ActQuant
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:func:`chain_params` (n as float32), cached until a weight, BatchNorm statistic or range changes
        (keyed on the tensors' in-place version counters, which optimizer steps and loads advance)."""
        key = version_key(
            conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var, quant.lo, quant.hi
        )
        cached = getattr(self, "_chain_cache", None)
        if key is not None and cached is not None and cached[0] == key:
            return cached[1]
        n, m, b = chain_params(conv, bn)
        if accumulator_bound(n, quant.qparams()[1]) >= EXACT_LIMIT:
            raise ValueError("integer chain: the accumulator could exceed 2^24 (float32 would round it)")
        params = (n.float(), m, b)
        self._chain_cache = (key, params)
        return params

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, bn = self[0], self[1]
        quant = getattr(conv, "input_quant", None)
        exact = (
            not self.training
            and isinstance(conv, QConv2d)
            and conv.quant_enabled
            and conv.bits == 8
            and isinstance(quant, ActQuant)
            and quant.enabled
            and quant.bits == 8
            and bool(quant.initialized)
            and isinstance(bn, nn.BatchNorm2d)
        )
        if not exact:
            return super().forward(x)
        rest = list(self)[2:]
        act = "none"
        if rest and isinstance(rest[0], (nn.ReLU, nn.Hardswish)):
            act, rest = _act_name(rest[0]), rest[1:]
        with torch.autocast(x.device.type, enabled=False):
            xq = quant(x.float())
            s_in, _ = quant.qparams()
            n, m, b = self._params(conv, bn, quant)
            k = torch.round(xq / s_in)  # q - zp, exact integers
            acc = F.conv2d(k, n, None, conv.stride, conv.padding, conv.dilation, conv.groups)
            if torch.jit.is_tracing():
                # exported graphs: a no-op on the exact integers that stops ONNX Runtime from folding the tail's
                # multiply and add into the conv weights (which would round them differently)
                acc = torch.round(acc)
            y = tail_reference(acc, m, b, act)
        for module in rest:
            y = module(y)
        return y
