"""Fake-quantized and binary layers used while training (and as the fp32 reference at inference).

* :class:`ActQuant`: 8-bit (or b-bit) fake quantization of activations, asymmetric quint8-style grid
  [0, 2^b - 1] with a zero point, either a fixed range (e.g. the +-6 residual stream, the [0, 1]
  input image) or a range tracked by an exponential moving average of batch min / max in training.
* :class:`QConv2d`: convolution whose weights are fake-quantized per output channel, symmetric,
  scale = max|w| / (2^(b-1) - 1); optionally quantizes its input with an :class:`ActQuant`.
* :class:`BinaryConv2d`: sign() on inputs and weights with straight-through gradients
  (gradient passed where |value| <= 1), zero-free padding with +1, no bias.

These choices are the contract of the int8 engine (zippy.quant.int8): the same grids carry over.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ActQuant",
    "BinaryConv2d",
    "QConv2d",
    "fake_quant",
    "reset_activation_ranges",
    "set_fake_quant",
    "sign_ste",
    "version_key",
    "weight_fake_quant",
]


def fake_quant(x: torch.Tensor, scale: float | torch.Tensor, zero_point: int | torch.Tensor, qmin: int, qmax: int):
    """Round x to the grid scale * (q - zero_point), q integer in [qmin, qmax]; straight-through gradient.

    Same values as torch.fake_quantize_per_tensor_affine (round half to even) but about 1.5x faster on
    CPU here; ``scale`` / ``zero_point`` may be tensors broadcasting against x (per-channel use).
    The gradient is 1 inside the representable range and 0 outside (clamp).
    Computed in float32 (bf16 cannot hold the grid exactly), returned in x's dtype.
    """
    xf = x.float()
    lo = (qmin - zero_point) * scale
    hi = (qmax - zero_point) * scale
    xc = torch.clamp(xf, lo, hi) if not torch.is_tensor(lo) else torch.minimum(torch.maximum(xf, lo), hi)
    q = torch.round(xc / scale) * scale
    if xc.requires_grad:
        q = xc + (q - xc).detach()
    return q.to(x.dtype)


def version_key(*tensors: torch.Tensor | None) -> tuple | None:
    """A cache key that changes when any of ``tensors`` is replaced or modified in place (optimizer steps,
    loads): their identities, storages and version counters. None for tensors made under
    ``torch.inference_mode``, which have no version counter (such caches must not be used)."""
    try:
        return tuple(None if t is None else (id(t), t.data_ptr(), t._version) for t in tensors)
    except RuntimeError:
        return None


class _SignSTE(torch.autograd.Function):
    """sign(x) in {-1, +1} (0 maps to +1); gradient passed straight through where |x| <= 1."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """Binarize to {-1, +1} with a straight-through (hard-tanh) gradient."""
    return _SignSTE.apply(x)


class ActQuant(nn.Module):
    """Fake-quantize activations on a uniform b-bit grid.

    Args:
        bits: number of bits (grid 0 .. 2^bits - 1 with a zero point).
        fixed_range: (lo, hi) fixed range, or None to track the range by EMA during training.
        momentum: EMA momentum for the tracked range.

    The quantization parameters are ``scale = (hi - lo) / (2^bits - 1)`` and
    ``zero_point = round(-lo / scale)``; :meth:`qparams` returns them for the int8 engine.
    """

    def __init__(self, bits: int = 8, fixed_range: tuple[float, float] | None = None, momentum: float = 0.01):
        super().__init__()
        self.bits = bits
        self.fixed = fixed_range is not None
        self.momentum = momentum
        self.enabled = True
        lo, hi = fixed_range if fixed_range is not None else (0.0, 0.0)
        self.register_buffer("lo", torch.tensor(float(lo)))
        self.register_buffer("hi", torch.tensor(float(hi)))
        self.register_buffer("initialized", torch.tensor(self.fixed))

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1

    def qparams(self) -> tuple[float, int]:
        """(scale, zero_point) of the current range; the range always contains 0."""
        lo = min(float(self.lo), 0.0)
        hi = max(float(self.hi), 0.0)
        scale = max((hi - lo) / self.qmax, 1e-8)
        zp = int(min(max(round(-lo / scale), 0), self.qmax))
        return scale, zp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        if self.training and not self.fixed:
            with torch.no_grad():
                lo, hi = x.detach().min().float(), x.detach().max().float()
                if not bool(self.initialized):
                    self.lo.copy_(lo)
                    self.hi.copy_(hi)
                    self.initialized.fill_(True)
                else:
                    self.lo.lerp_(lo, self.momentum)
                    self.hi.lerp_(hi, self.momentum)
        if not bool(self.initialized):
            return x
        scale, zp = self.qparams()
        return fake_quant(x, scale, zp, 0, self.qmax)

    def extra_repr(self) -> str:
        kind = "fixed" if self.fixed else "ema"
        return f"bits={self.bits}, {kind} range=({float(self.lo):.3g}, {float(self.hi):.3g})"


def weight_fake_quant(w: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Per-output-channel symmetric fake quantization: scale_c = max|w_c| / (2^(bits-1) - 1)."""
    qmax = 2 ** (bits - 1) - 1
    scale = w.detach().float().abs().flatten(1).amax(1).clamp_min(1e-8) / qmax
    return fake_quant(w, scale.view(-1, *([1] * (w.ndim - 1))), 0, -qmax, qmax)


class QConv2d(nn.Conv2d):
    """Conv2d with per-channel symmetric fake-quantized weights and an optional input :class:`ActQuant`.

    Extra args:
        bits: weight bits (8 by default).
        input_quant: quantizer applied to the input (None: the input is already on a grid).
    """

    def __init__(self, *args, bits: int = 8, input_quant: ActQuant | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.bits = bits
        self.input_quant = input_quant if input_quant is not None else nn.Identity()
        self.quant_enabled = True
        self._cached: tuple[tuple, torch.Tensor] | None = None

    def quantized_weight(self) -> torch.Tensor:
        """The fake-quantized weight; cached while weights do not change and no gradient is needed."""
        if not self.quant_enabled:
            return self.weight
        if torch.is_grad_enabled():
            return weight_fake_quant(self.weight, self.bits)
        key = version_key(self.weight)
        if key is None:
            return weight_fake_quant(self.weight.detach(), self.bits)
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, weight_fake_quant(self.weight.detach(), self.bits))
        return self._cached[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.input_quant(x), self.quantized_weight(), self.bias)


class BinaryConv2d(nn.Conv2d):
    """Binary convolution: sign(x) * sign(w), padded with +1 so every input stays binary. No bias.

    The latent float weights should be kept in [-1, 1] (see :func:`zippy.models.clip_binary_weights`).
    Output values are integers in [-k*k*C_in, k*k*C_in].
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, bias=False)
        self.pad = kernel_size // 2
        self.binary_enabled = True  # False: a plain float conv (zero padding), for a float warm-up
        # latent weights keep nn.Conv2d's small default init (|w| <= 1 / sqrt(fan_in)): with Adam moving a
        # weight by ~lr per step, signs can flip from the first steps (a +-1 init would freeze them for
        # hundreds of steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.binary_enabled:
            return F.conv2d(x, self.weight, None, self.stride, self.pad)
        xb = sign_ste(x)
        if self.pad:
            xb = F.pad(xb, (self.pad,) * 4, value=1.0)
        wb = sign_ste(self.weight)
        return self._conv_forward(xb, wb, None)


def set_fake_quant(model: nn.Module, enabled: bool, *, binary: bool | None = None) -> nn.Module:
    """Switch every activation / weight fake-quantizer on or off.

    Binary layers stay binary unless ``binary`` is given: ``binary=False`` turns them into float convs
    too (the whole network in float, as in a float warm-up before quantization-aware training).
    """
    for m in model.modules():
        if isinstance(m, ActQuant):
            m.enabled = enabled
        elif isinstance(m, QConv2d):
            m.quant_enabled = enabled
        elif isinstance(m, BinaryConv2d) and binary is not None:
            m.binary_enabled = binary
    return model


def reset_activation_ranges(model: nn.Module) -> nn.Module:
    """Forget the EMA ranges of every tracked (non-fixed) :class:`ActQuant`; the next batch sets them anew."""
    for m in model.modules():
        if isinstance(m, ActQuant) and not m.fixed:
            m.initialized.fill_(False)
    return model
