"""Real int8 inference of the zippypoint network on x86 CPUs.

:func:`convert` turns a trained (fake-quantized) zippypoint :class:`~zippy.models.KeypointNet` into
:class:`Int8KeypointNet`, which computes the same outputs with integer convolutions:

* 8-bit convs (:class:`~zippy.quant.layers.QConv2d`): the trained per-channel symmetric int8 weights
  (from the model's own weight quantizer), with the following BatchNorm folded in. Folding is exact:
  it multiplies each output channel's scale by ``gamma / sqrt(var + eps)`` and flips the integer
  weights where that factor is negative.
* binary convs (:class:`~zippy.quant.layers.BinaryConv2d`): int8 convs with +-1 weights. The input
  is not the +-1 tensor itself but ``b = (x < 0)`` in {0, 1}: with ``sign(x) = 1 - 2b`` and the +1
  padding of training (``b = 0`` there, which is exactly the kernel's zero padding),
  ``conv(sign(x), s) = sum(s) - 2 conv(b, s)``, i.e. int8 weights ``-s`` with scale 2 and the
  per-channel bias ``sum(s)``. The integer result y is exact; it leaves the kernel as uint8
  ``clamp(y, 0, 255)`` when the next quantizer saturates by 255 (else as float32).
* activations stay uint8 on the grids learnt in training (:meth:`ActQuant.qparams`): the fixed
  [0, 1] image grid, the fixed +-residual_range stream, the EMA ranges. Nothing is recalibrated.
* every step whose input takes few values is a lookup table computed by the trained model's own
  modules at conversion time, so it rounds exactly as the fake-quantized model does, exact ties
  included: the binary branch (integer y -> ReLU -> ActQuant -> BatchNorm -> residual grid; y is an
  integer and EMA ranges often are too, so exact ties are systematic there) and every move of a
  tensor between two grids. One fused numba pass per binary block applies the tables, adds the
  residual (saturating) and writes the next block's binary input.
* the chains that feed the binary layers, i.e. the stem (conv, BN, hard-swish onto the first pool's
  grid), the 1x1 pools and the expand shortcut, are computed as the fake-quantized model computes them
  in eval mode (:mod:`zippy.quant.exact`): oneDNN gives the exact integer accumulator and one numba pass
  applies the same float32 tail formula and the consumer's quantizer, so they agree bit for bit. The
  heads' 8-bit convs requantize inside oneDNN (float32); a rare one-step difference there only moves a
  descriptor value slightly before the top-k.
* the stem is evaluated one 2x2 block of output pixels at a time (:class:`ExactStem`: a 1x1 conv of
  each block's 4x4 input window), which writes the first stage's space-to-depth input directly.
* :meth:`Int8KeypointNet.detect` / :meth:`~Int8KeypointNet.describe` split the network so that the
  descriptor head's last two convs run only where the selected keypoints sample them
  (:class:`SparseDescriptorTail`); :meth:`~Int8KeypointNet.forward` still returns the dense map.
* the tensors that have no grid in training never exist in 8 bits: the stem's pre-activation, the
  heads' ReLU outputs (float output, fed to the float score / position convs) and the descriptor map
  (float output).

Kernels (torch's private ops, tested with torch 2.13, see ``KERNELS``): ``torch.ops.onednn.qconv_prepack``
and ``qconv2d_pointwise`` on plain uint8 tensors in channels-last layout, the operators that torch's PT2E
x86 lowering emits (AMX / VNNI int8 kernels where present). They are used only after :func:`kernel_check`
has run them on crafted convs with a known exact result, once per process: on CPUs whose int8 kernels are
exact (VNNI / AMX) the convs read their inputs as they are ("direct"); on x86 without VNNI (AVX2, e.g.
AMD Zen 3, or oneDNN held back by ONEDNN_MAX_CPU_ISA) the u8 x s8 kernel adds products in pairs with
int16 saturation, so every 8-bit conv reads its inputs as two halves <= 128 instead ("split",
:class:`Int8Conv`: the same integers at twice the multiplies); without an exact path (or without the
ops) :func:`unsupported_reason` says why and ``zippy.load`` takes another engine. They avoid ``torch.ao.quantization``
and the quantized tensor types that torch 2.13 deprecates, so no deprecation warning is raised.
``onednn.qadd.tensor`` is not used: in torch 2.13 its uint8 output wraps around instead of
saturating. Re-gridding uses OpenCV's LUT kernel; the fused element-wise passes use numba.

Equivalence: integer products and sums are exact, the binary branches round exactly as the model
does (tables) and so do the chains that feed them (same formula); only the heads' oneDNN
requantization rounds like the fake-quantized model up to float32 noise (more of it where the input
zero point is folded into the bias, see :class:`Int8Conv`). Measured on the trained network: identical
descriptors for >= 99.9 % of the keypoints (96 % when the stem, the pools and the
shortcut still requantized in oneDNN, because one different activation there spreads through the
binary layers). tests/test_int8.py checks keypoints and descriptors on real photos against the
fake-quantized fp32 model.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import platform
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zippy.models.layers import ConvBNAct, Residual
from zippy.models.net import KeypointNet, SpaceToDepth, _cell_coords, _mask_border
from zippy.quant.exact import EXACT_LIMIT, accumulator_bound, bn_affine, chain_params, integer_weights, quantize_tail
from zippy.quant.layers import ActQuant, BinaryConv2d, QConv2d

log = logging.getLogger(__name__)

__all__ = [
    "KERNELS",
    "PATHS",
    "Grid",
    "Int8KeypointNet",
    "KernelCheck",
    "convert",
    "kernel_check",
    "model_unsupported_reason",
    "unsupported_reason",
]

KERNELS = ("onednn::qconv_prepack", "onednn::qconv2d_pointwise")

_UINT8_MAX = 255
_HALF = 128  # uint8 inputs below this are exact in every x86 int8 kernel (see Int8Conv, split inputs)


@dataclass(frozen=True)
class Grid:
    """A uint8 quantization grid: real = (q - zero_point) * scale, q in [0, 255]."""

    scale: float
    zero_point: int

    @classmethod
    def of(cls, quant: ActQuant) -> Grid:
        if quant.bits != 8:
            raise ValueError(f"int8 engine needs 8-bit activations, got {quant.bits}-bit {quant}")
        scale, zp = quant.qparams()
        return cls(float(scale), int(zp))


class _Quantizer:
    """A trained ActQuant as a function float values -> uint8 q, evaluated with the module itself.

    Tables built with it round exactly as the fake-quantized model does (ties included), whatever
    float formula the quantizer uses. The module is run in eval mode with fake quantization on.
    """

    def __init__(self, module: ActQuant):
        self.module = module
        self.grid = Grid.of(module)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        out = _run_eval(self.module, v.float())
        q = torch.round(out.double() / self.grid.scale) + self.grid.zero_point
        return q.clamp(0, _UINT8_MAX).to(torch.uint8)

    def values(self) -> torch.Tensor:
        """float32 [256]: the value the model's quantizer holds for each q."""
        q = torch.arange(_UINT8_MAX + 1, dtype=torch.float64)
        return _run_eval(self.module, ((q - self.grid.zero_point) * self.grid.scale).float())


def _run_eval(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """module(x) in eval mode with its fake quantization enabled (state restored afterwards)."""
    training = module.training
    enabled = getattr(module, "enabled", None)
    try:
        module.train(False)
        if enabled is not None:
            module.enabled = True
        with torch.no_grad():
            return module(x)
    finally:
        module.train(training)
        if enabled is not None:
            module.enabled = enabled


# ------------------------------------------------------------------------------------------------ checks


def _kernels_missing() -> str | None:
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64", "x86", "i686"):
        return f"the int8 kernels need an x86 CPU, this is {machine!r}"
    if not torch.backends.mkldnn.is_available():
        return "torch was built without oneDNN (mkldnn)"
    for name in ("qconv_prepack", "qconv2d_pointwise"):
        if not hasattr(torch.ops.onednn, name):
            return f"torch {torch.__version__} has no torch.ops.onednn.{name}"
    try:
        import cv2  # noqa: F401
        import numba  # noqa: F401
    except ImportError as e:
        return f"a dependency is missing ({e})"
    return None


def _uninitialized(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, ActQuant) and not bool(m.initialized)]


def unsupported_reason(model: nn.Module) -> str | None:
    """Why the int8 engine cannot run ``model`` here, or None when it can.

    Reasons: not a zippypoint-topology network (float backbones have no trained grids), activation
    ranges never trained (EMA not initialized), no x86 oneDNN int8 kernels in this torch build, or
    kernels that fail :func:`kernel_check` (no exact path on this CPU).
    """
    reason = model_unsupported_reason(model)
    if reason is not None:
        return reason
    check = kernel_check()
    return None if check.path is not None else check.reason


def model_unsupported_reason(model: nn.Module) -> str | None:
    """Why ``model`` has no int8 form (whatever the CPU), or None: the network part of :func:`unsupported_reason`."""
    if not isinstance(model, KeypointNet):
        return f"expected a KeypointNet, got {type(model).__name__}"
    try:
        _Plan(model)
    except _Unsupported as e:
        return str(e)
    missing = _uninitialized(model)
    if missing:
        shown = ", ".join(missing[:4]) + (f" (+{len(missing) - 4} more)" if len(missing) > 4 else "")
        return f"activation ranges were never trained/calibrated: {shown}"
    return None


PATHS = {
    "direct": "oneDNN's u8 x s8 int8 kernels are exact on this CPU (VNNI / AMX class)",
    "split": (
        "oneDNN's u8 x s8 int8 kernel saturates its int16 pair sums on this CPU (AVX2 without VNNI / AMX, "
        "or ONEDNN_MAX_CPU_ISA): each 8-bit conv reads its inputs as two halves <= 128, exact at twice the multiplies"
    ),
}


@dataclass(frozen=True)
class KernelCheck:
    """Outcome of :func:`kernel_check`.

    Attributes:
        path: "direct" (inputs as they are), "split" (inputs in two halves <= 128, see :class:`Int8Conv`)
            or None (no exact int8 path here; ``reason`` says why).
        reason: a sentence for people: what was found and what runs.
        direct_exact / split_exact: whether each form gave the exact integers (None: not run).
        onednn_max_cpu_isa: the ONEDNN_MAX_CPU_ISA setting oneDNN saw (None: unset).
    """

    path: str | None
    reason: str
    direct_exact: bool | None = None
    split_exact: bool | None = None
    onednn_max_cpu_isa: str | None = None


def _probe_cases() -> list[tuple[torch.Tensor, torch.Tensor, int, int]]:
    """Crafted convs (weights int8 [O, I, k, k], input uint8 [1, I, H, W], padding, zero point) whose exact
    result is known: inputs 255 against weights +-127 (every int16 pair sum of a ``vpmaddubsw`` kernel
    overflows), a zero point, a padded 3x3 and random values."""
    gen = torch.Generator().manual_seed(0)
    cases = []
    for cin, k, pad, zp, random_x in ((64, 1, 0, 0, False), (16, 3, 1, 0, False), (32, 1, 0, 131, False),
                                      (48, 3, 1, 0, True)):  # fmt: skip
        w = torch.where(torch.rand(8, cin, k, k, generator=gen) < 0.5, -127, 127).to(torch.int8)
        w[0], w[1] = 127, -127
        w[2, ::2] = 127
        if random_x:
            x = torch.randint(0, 256, (1, cin, 5, 6), generator=gen, dtype=torch.uint8)
        else:
            x = torch.full((1, cin, 5, 6), _UINT8_MAX, dtype=torch.uint8)
            x[..., 0, 0] = 0  # one pixel at the real zero - zp
        cases.append((w, x.contiguous(memory_format=torch.channels_last), pad, zp))
    return cases


def _probe_exact(split: bool) -> bool:
    """Whether Int8Conv (``split`` or not) gives the exact integers on every :func:`_probe_cases` conv."""
    for w, x, pad, zp in _probe_cases():
        conv = Int8Conv(w, torch.ones(w.shape[0], dtype=torch.float64), None, padding=pad,
                        grid_in=Grid(1.0, zp), grid_out=None, split=split)  # fmt: skip
        want = F.conv2d(F.pad(x.double() - zp, [pad] * 4), w.double())  # zero padding = the real zero
        if not torch.equal(conv(x).double(), want):
            return False
    return True


@functools.lru_cache(maxsize=1)
def kernel_check() -> KernelCheck:
    """Which int8 path is exact on this CPU, decided once per process by running the kernels.

    A few crafted convs with a known exact result (:func:`_probe_cases`) run through :class:`Int8Conv`
    as they are ("direct") and with split inputs ("split"). Running the kernels, rather than reading CPU
    flags, also catches ONEDNN_MAX_CPU_ISA and torch builds whose private oneDNN ops changed.
    """
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    missing = _kernels_missing()
    if missing is not None:
        return KernelCheck(None, missing, onednn_max_cpu_isa=isa)
    try:
        direct = _probe_exact(split=False)
        split = None if direct else _probe_exact(split=True)
    except (RuntimeError, TypeError) as e:  # a torch whose private oneDNN ops take other arguments
        failed = f"torch {torch.__version__}'s oneDNN int8 ops failed the load-time check ({e})"
        return KernelCheck(None, failed, onednn_max_cpu_isa=isa)
    if direct:
        return KernelCheck("direct", PATHS["direct"], True, None, isa)
    if split:
        return KernelCheck("split", PATHS["split"], False, True, isa)
    return KernelCheck(
        None, "oneDNN's int8 convs gave wrong integers on this CPU, even with inputs below 128", False, False, isa
    )


# ------------------------------------------------------------------------------------------------ layers


class _Unsupported(ValueError):
    pass


def _expect(module: nn.Module, kind: type | tuple[type, ...], where: str) -> nn.Module:
    if not isinstance(module, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise _Unsupported(f"{where}: expected {names}, found {type(module).__name__} (not a zippypoint network?)")
    return module


def _int8_weights(conv: QConv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The trained integer weights int8 [O, I, k, k] and per-channel scales float64 [O] of a QConv2d."""
    if conv.bits != 8:
        raise _Unsupported(f"int8 engine needs 8-bit weights, got {conv.bits}-bit")
    return integer_weights(conv)


def _pad_with(x: torch.Tensor, pad: int, value: int) -> torch.Tensor:
    """uint8 [B, C, H, W] channels-last -> [B, C, H + 2 pad, W + 2 pad] channels-last, the border = value."""
    b, c, h, w = x.shape
    out = torch.full((b, h + 2 * pad, w + 2 * pad, c), value, dtype=x.dtype).permute(0, 3, 1, 2)
    out[:, :, pad : h + pad, pad : w + pad] = x
    return out


class Int8Conv(nn.Module):
    """One fused oneDNN int8 convolution on a uint8 channels-last tensor.

    ``y = act(scale_in * w_scale[o] * sum(q_in - zp_in) * w_int8 + bias[o])``, then requantized to
    ``out`` (uint8) or returned as float32 when ``out`` is None.

    A padded conv whose input grid has a nonzero zero point runs without oneDNN's zero-point attribute,
    which makes its 3x3 kernels 1.5-1.7x slower here (256 -> 512 channels at 60x80: 20 vs 12 ms): the
    input is padded with the zero point (a real zero) and ``zp_in * sum(w_int8)`` moves into the bias.
    The integer products are the same; the float32 epilogue then rounds
    ``scale * (acc + zp * sum(w)) + (bias - scale * zp * sum(w))`` instead of ``scale * acc + bias``,
    so an output on a rounding boundary may move by one step (the heads' convs, where that is allowed).

    Split inputs (``split=True``, :data:`PATHS` "split"): x86 CPUs without VNNI / AMX multiply uint8 by
    int8 with ``vpmaddubsw``, which adds adjacent products in int16 with saturation: 255 * 127 * 2 does
    not fit, so oneDNN's result is wrong for inputs >= 128. The conv then reads each input channel twice,
    as ``a = s >> 1`` and ``b = s - a`` (s = x, or x + 1 for an odd zero point), both <= 128, with the
    weights repeated: every pair of products stays within 2 * 128 * 127 = 32512, and
    ``sum((a - z) + (b - z)) * w = sum(x - zp) * w`` with the kernel zero point ``z = (zp + 1) // 2``.
    The same integers at twice the multiplies. ``input_max`` < 128 (the binary convs' {0, 1}) never splits;
    ``split=None`` (default) splits where :func:`kernel_check` says this CPU needs it.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        w_scale: torch.Tensor,
        bias: torch.Tensor | None,
        *,
        padding: int,
        grid_in: Grid,
        grid_out: Grid | None,
        act: str = "none",
        input_max: int = _UINT8_MAX,
        split: bool | None = None,
    ):
        super().__init__()
        if act not in ("none", "relu", "hardswish"):
            raise ValueError(f"act must be none, relu or hardswish, got {act!r}")
        self.in_channels, self.out_channels = int(weight.shape[1]), int(weight.shape[0])
        self.kernel_size = int(weight.shape[-1])
        self.padding = [padding, padding]
        self.grid_in, self.grid_out, self.act = grid_in, grid_out, act
        self.input_max = int(input_max)
        # scales below float32's normal range would underflow in the kernel: such channels have zero weights
        self.w_scale64 = w_scale.double().clone()
        self.w_scale = w_scale.clamp_min(1e-30).float().contiguous()
        self.w_zp = torch.zeros(self.out_channels, dtype=torch.int32)
        self.bias64 = None if bias is None else bias.double().clone()
        self.bias = None if bias is None else bias.float().contiguous()
        self.weight_int8 = weight.to(torch.int8).contiguous()
        self._packed: dict[tuple[int, ...], torch.Tensor] = {}
        # what the kernel sees: the zero point padded in by forward() and folded into the bias (see above)
        self.pad_zero_point = padding > 0 and grid_in.zero_point != 0
        self._kernel_zp, self._kernel_pad, self._kernel_bias = grid_in.zero_point, self.padding, self.bias
        if self.pad_zero_point:
            shift = grid_in.zero_point * grid_in.scale * self.w_scale64 * self.weight_int8.double().sum((1, 2, 3))
            bias64 = -shift if self.bias64 is None else self.bias64 - shift
            self._kernel_zp, self._kernel_pad, self._kernel_bias = 0, [0, 0], bias64.float().contiguous()
        self.split = False
        self._kernel_weight, self._split_odd = self.weight_int8, 0
        self.set_split(split)

        # inputs of a new shape every call (sparse positions) share one shape-free packing
        self.pack_by_shape = True

    def set_split(self, split: bool | None) -> None:
        """Read the inputs as two halves <= 128 (see the class doc), or not; None: as :func:`kernel_check` found
        exact on this CPU. Always False when ``input_max`` < 128."""
        if split is None:
            split = kernel_check().path == "split"
        split = bool(split) and self.input_max >= _HALF
        if split == self.split:
            return
        self.split, self._packed = split, {}
        zp = 0 if self.pad_zero_point else self.grid_in.zero_point
        if split:
            self._split_odd = zp % 2
            self._kernel_zp = (zp + self._split_odd) // 2
            self._kernel_weight = torch.cat([self.weight_int8, self.weight_int8], 1).contiguous()
        else:
            self._split_odd, self._kernel_zp, self._kernel_weight = 0, zp, self.weight_int8

    PACKED_SHAPES = 8  # input shapes whose packed weights are kept (bands, image sizes)

    def packed(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The weights packed for inputs of ``shape``: oneDNN then picks its kernel and weight layout once,
        instead of reordering the weights on every call as it does for weights packed without a shape."""
        key = shape if self.pack_by_shape else None
        p = self._packed.get(key)
        if p is None:
            if len(self._packed) >= self.PACKED_SHAPES:
                self._packed.pop(next(iter(self._packed)))
            g = self.grid_in
            p = torch.ops.onednn.qconv_prepack(
                self._kernel_weight, self.w_scale, g.scale, self._kernel_zp, [1, 1], self._kernel_pad, [1, 1], 1,
                None if key is None else list(key),
            )  # fmt: skip
            self._packed[key] = p
        return p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_scale, out_zp, out_dtype = (
            (1.0, 0, torch.float32)
            if self.grid_out is None
            else (self.grid_out.scale, self.grid_out.zero_point, torch.uint8)
        )
        if self.pad_zero_point:
            x = _pad_with(x, self.padding[0], self.grid_in.zero_point)
        if self.split:
            x = split_halves(x, self._split_odd)
        return torch.ops.onednn.qconv2d_pointwise(
            x,
            self.grid_in.scale,
            self._kernel_zp,
            self.packed(tuple(x.shape)),
            self.w_scale,
            self.w_zp,
            self._kernel_bias,
            [1, 1],
            self._kernel_pad,
            [1, 1],
            1,
            out_scale,
            out_zp,
            out_dtype,
            self.act,
            [],
            "",
        )

    def extra_repr(self) -> str:
        out = "float32" if self.grid_out is None else f"{self.grid_out}"
        return (
            f"{self.in_channels}, {self.out_channels}, k={self.kernel_size}, in={self.grid_in}, out={out}, "
            f"act={self.act}" + (", split inputs" if self.split else "")
        )


def split_halves(x: torch.Tensor, odd: int) -> torch.Tensor:
    """uint8 [B, C, H, W] channels-last -> [B, 2C, H, W] channels-last: channels ``a = s >> 1`` then
    ``b = s - a`` with ``s = x + odd`` (``odd`` 0 or 1), so that a + b = x + odd and a, b <= 128."""
    b, c, h, w = x.shape
    out = np.empty((b * h * w, 2 * c), np.uint8)
    _split_kernel()(_nhwc(x), np.int32(odd), out)
    return _from_nhwc(out, x)


@functools.lru_cache(maxsize=1)
def _split_kernel():
    """numba kernel ``split(x, odd, out)`` of :func:`split_halves` on [N, C] -> [N, 2C]."""
    import numba

    @numba.njit(cache=True, nogil=True)
    def split(x, odd, out):  # pragma: no cover - compiled
        n, c = x.shape
        for i in range(n):
            for j in range(c):
                s = np.int32(x[i, j]) + odd
                a = s >> 1
                out[i, j] = a
                out[i, c + j] = s - a

    return split


def qconv_bn(
    conv: QConv2d,
    bn: nn.BatchNorm2d | None,
    grid_out: Grid | None,
    act: str,
    where: str,
    *,
    in_order: torch.Tensor | None = None,
    out_order: torch.Tensor | None = None,
) -> Int8Conv:
    """Int8Conv of an 8-bit QConv2d (its input quantizer gives the input grid) with ``bn`` folded in.

    ``in_order`` / ``out_order`` permute the input / output channels (new channel i = old channel order[i]).
    """
    _expect(conv, QConv2d, where)
    quant = _expect(conv.input_quant, ActQuant, f"{where}.input_quant")
    if conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1:
        raise _Unsupported(f"{where}: only stride 1, dilation 1, groups 1 convolutions are supported")
    n, scale = _int8_weights(conv)
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros(n.shape[0], dtype=torch.float64)
    if bn is not None:
        alpha, beta = bn_affine(bn)
        n = torch.where((alpha < 0).view(-1, 1, 1, 1), -n.to(torch.int16), n.to(torch.int16)).to(torch.int8)
        scale = scale * alpha.abs()
        bias = alpha * bias + beta
    if in_order is not None:
        n = n[:, in_order]
    if out_order is not None:
        n, scale, bias = n[out_order], scale[out_order], bias[out_order]
    return Int8Conv(n, scale, bias, padding=conv.padding[0], grid_in=Grid.of(quant), grid_out=grid_out, act=act)


def binary_conv(conv: BinaryConv2d, where: str, *, clamp_uint8: bool) -> Int8Conv:
    """Int8Conv of a BinaryConv2d taking b = (x < 0) in {0, 1} (see the module doc).

    Output: the exact integer y = ``conv(sign(x), sign(w))`` (+1 padding), as float32, or with
    ``clamp_uint8`` as uint8 ``clamp(y, 0, 255)`` (ReLU fused, exact: y is an integer, the scale 1).
    """
    _expect(conv, BinaryConv2d, where)
    s = torch.where(conv.weight.detach() >= 0, 1.0, -1.0)
    if conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1:
        raise _Unsupported(f"{where}: only stride 1, dilation 1, groups 1 binary convolutions are supported")
    scale = torch.full((s.shape[0],), 2.0, dtype=torch.float64)
    grid_out, act = (Grid(1.0, 0), "relu") if clamp_uint8 else (None, "none")
    return Int8Conv(
        -s, scale, s.sum((1, 2, 3)), padding=conv.pad, grid_in=Grid(1.0, 0), grid_out=grid_out, act=act, input_max=1
    )


def _nhwc(x: torch.Tensor) -> np.ndarray:
    """uint8 [B, C, H, W] channels-last tensor -> numpy view [B*H*W, C] (no copy)."""
    x = x.contiguous(memory_format=torch.channels_last)
    return x.permute(0, 2, 3, 1).numpy().reshape(-1, x.shape[1])


def _from_nhwc(a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """numpy [B*H*W, C] -> uint8 [B, C, H, W] channels-last tensor (no copy); B, H, W from ``like``."""
    b, _, h, w = like.shape
    return torch.from_numpy(a).view(b, h, w, a.shape[-1]).permute(0, 3, 1, 2)


def space_to_depth(x: torch.Tensor) -> torch.Tensor:
    """uint8 [B, C, H, W] channels-last -> [B, 4C, H/2, W/2] channels-last, channel order (dy, dx, c).

    The same values as ``F.pixel_unshuffle(x, 2)`` (channel order (c, dy, dx)) in another channel
    order, chosen so that the copy moves whole pixels; the next conv's weights are permuted to match
    (:func:`_s2d_weight_order`).
    """
    b, c, h, w = x.shape
    t = x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
    t = t.reshape(b, h // 2, 2, w // 2, 2 * c).permute(0, 1, 3, 2, 4).contiguous()
    return t.view(b, h // 2, w // 2, 4 * c).permute(0, 3, 1, 2)


def depth_to_space(x: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 4C, H, W] channels-last with channel order (dy, dx, c) -> [B, C, 2H, 2W] channels-last.

    Equals ``F.pixel_shuffle(x', 2)`` where x' holds the channels in pixel_shuffle's order (c, dy, dx);
    the producing conv's output channels are permuted to match (:func:`_s2d_weight_order`).
    """
    b, c4, h, w = x.shape
    c = c4 // 4
    t = x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
    t = t.reshape(b, h, w, 2, 2 * c).permute(0, 1, 3, 2, 4).contiguous()
    return t.view(b, 2 * h, 2 * w, c).permute(0, 3, 1, 2)


def _s2d_weight_order(c: int) -> torch.Tensor:
    """int64 [4C]: entry (dy * 2 + dx) * C + ci holds pixel_(un)shuffle's channel ci * 4 + dy * 2 + dx."""
    return torch.arange(4 * c).view(c, 4).t().reshape(-1)


class FloatConv3x3(nn.Module):
    """A float 3x3 'same' conv with very few output channels (the score / position outputs) as one GEMM.

    oneDNN's direct conv is slow for 1-2 output channels; here the input [B, C, H, W] (channels-last)
    is multiplied by all 9 taps at once ([B*H*W, C] @ [C, 9*O]) and one numba pass sums the shifted
    taps. Same result as ``F.conv2d(x, weight, bias, padding=1)`` up to float32 summation order.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if conv.kernel_size != (3, 3) or conv.padding != (1, 1) or conv.stride != (1, 1) or conv.groups != 1:
            raise _Unsupported(f"expected a 3x3 stride-1 'same' conv, got {conv}")
        w = conv.weight.detach().float()
        self.out_channels = int(w.shape[0])
        self.taps = w.permute(1, 2, 3, 0).reshape(w.shape[1], 9 * self.out_channels).contiguous()
        b = conv.bias.detach().float() if conv.bias is not None else torch.zeros(self.out_channels)
        self.bias = b.numpy().copy()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x float [B, C, H, W] (channels-last is fastest) -> float32 [B, O, H, W] contiguous."""
        bsz, c, h, w = x.shape
        y = x.permute(0, 2, 3, 1).reshape(-1, c) @ self.taps  # [B*H*W, 9*O]
        y = y.view(bsz, h, w, 3, 3, self.out_channels).numpy()
        return torch.from_numpy(_tap_sum_kernel()(y, self.bias))


@functools.lru_cache(maxsize=1)
def _tap_sum_kernel():
    """numba kernel ``tap_sum(y, bias)`` of :class:`FloatConv3x3`: y float32 [B, H, W, 3, 3, O] (tap (i, j) of
    each input pixel) -> out float32 [B, O, H, W], ``out[b, o, r, c] = bias[o] + sum y[b, r + i - 1, c + j - 1,
    i, j, o]`` over the taps inside the image, added in tap order (i, j) = (0, 0), (0, 1), ..., (2, 2)."""
    import numba

    @numba.njit(cache=True, nogil=True)
    def tap_sum(y, bias):  # pragma: no cover - compiled
        bsz, h, w, _, _, o = y.shape
        out = np.empty((bsz, o, h, w), np.float32)
        for b in range(bsz):
            for k in range(o):
                for r in range(h):
                    for c in range(w):
                        v = bias[k]
                        for i in range(3):
                            rr = r + i - 1
                            if 0 <= rr < h:
                                for j in range(3):
                                    cc = c + j - 1
                                    if 0 <= cc < w:
                                        v += y[b, rr, cc, i, j, k]
                        out[b, k, r, c] = v
        return out

    return tap_sum


class Regrid(nn.Module):
    """Move a uint8 tensor from one grid to another exactly as the model's quantizers do (a 256-entry LUT).

    Args:
        source: the quantizer that wrote the tensor; target: the quantizer that reads it.
    """

    def __init__(self, source: ActQuant, target: ActQuant):
        super().__init__()
        src, dst = _Quantizer(source), _Quantizer(target)
        self.grid_in, self.grid_out = src.grid, dst.grid
        self.lut = dst(src.values()).numpy().reshape(1, -1)
        self.identity = bool(np.array_equal(self.lut[0], np.arange(_UINT8_MAX + 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return x
        import cv2

        return _from_nhwc(cv2.LUT(_nhwc(x), self.lut), x)

    def extra_repr(self) -> str:
        return f"{self.grid_in} -> {self.grid_out}" + (" (identity)" if self.identity else "")


@functools.lru_cache(maxsize=1)
def _binary_tail_kernels():
    """numba kernels of the binary blocks' tail over [N, C], row by row: the table lookups first (a gather
    into a row buffer), then the saturating add as plain arithmetic, which vectorizes.

    ``tail_u8(y, s, h, zp, out, neg)``: y uint8 = clamp(conv, 0, 255), h [C, 256] = G[c, F[y]];
    ``tail_f32(y, s, h, zp, out, neg)``: y float32 exact integers, h [C, K] = G[c, F[y]] over y in [0, K)
    (y clamped to that range: below 0 the ReLU gives F(0)).
    Both: t = s + table value, out = clamp(t - zp, 0, 255), neg = (out < zp).
    """
    import numba

    @numba.njit(cache=True, nogil=True, inline="always")
    def saturate(s, buf, zp, out, neg, i):  # pragma: no cover - compiled
        for j in range(buf.shape[0]):
            v = min(max(np.int32(s[i, j]) + buf[j] - zp, 0), 255)
            out[i, j] = v
            neg[i, j] = v < zp

    @numba.njit(cache=True, nogil=True)
    def tail_u8(y, s, h, zp, out, neg):  # pragma: no cover - compiled
        n, c = y.shape
        buf = np.empty(c, np.int32)
        for i in range(n):
            for j in range(c):
                buf[j] = h[j, y[i, j]]
            saturate(s, buf, np.int32(zp), out, neg, i)

    @numba.njit(cache=True, nogil=True)
    def tail_f32(y, s, h, zp, out, neg):  # pragma: no cover - compiled
        n, c = y.shape
        kmax = np.float32(h.shape[1] - 1)
        zero = np.float32(0.0)
        buf = np.empty(c, np.int32)
        for i in range(n):
            for j in range(c):
                buf[j] = h[j, np.int32(min(max(y[i, j], zero), kmax))]
            saturate(s, buf, np.int32(zp), out, neg, i)

    return tail_u8, tail_f32


def _exact_chain(
    conv: QConv2d, bn: nn.BatchNorm2d | None, where: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Grid]:
    """:func:`~zippy.quant.exact.chain_params` of an 8-bit conv chain and its input grid, checked for exactness."""
    quant = _expect(conv.input_quant, ActQuant, f"{where}.input_quant")
    if conv.bits != 8:
        raise _Unsupported(f"{where}: int8 engine needs 8-bit weights, got {conv.bits}-bit")
    n, m, b = chain_params(conv, bn)
    grid = Grid.of(quant)
    if accumulator_bound(n, grid.zero_point) >= EXACT_LIMIT:
        raise _Unsupported(f"{where}: the integer accumulator could exceed 2^24 (float32 would round it)")
    return n, m, b, grid


class ExactConv(nn.Module):
    """An 8-bit conv -> BatchNorm -> activation chain computed as the fake-quantized model computes it in
    eval mode (:mod:`zippy.quant.exact`): oneDNN gives the exact integer accumulator (float32, exact below
    2^24), then one numba pass applies the float32 tail formula and the consumer's quantizer ``out_quant``.

    Used where the chain feeds the binary layers (the stem, the pools, the expand shortcut): one
    activation rounded differently there flips signs that the binary layers spread. Returns the uint8
    output on ``out_quant``'s grid and ``neg = (out < 0)``.
    """

    BAND_ELEMENTS = 2**20  # float32 accumulator values per band (4 MB)

    def __init__(
        self,
        conv: QConv2d,
        bn: nn.BatchNorm2d | None,
        act: str,
        out_quant: ActQuant,
        where: str,
        *,
        in_order: torch.Tensor | None = None,
    ):
        super().__init__()
        _expect(conv, QConv2d, where)
        if conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1:
            raise _Unsupported(f"{where}: only stride 1, dilation 1, groups 1 convolutions are supported")
        n, m, b, self.grid_in = _exact_chain(conv, bn, where)
        if in_order is not None:
            n = n[:, in_order]
        ones = torch.ones(n.shape[0], dtype=torch.float64)
        self.acc = Int8Conv(
            n, ones, None, padding=conv.padding[0], grid_in=Grid(1.0, self.grid_in.zero_point), grid_out=None
        )
        self.m, self.b = m.numpy().copy(), b.numpy().copy()
        self.act, self.out_quant, self.grid_out = act, out_quant, Grid.of(out_quant)
        self.in_channels, self.out_channels = int(n.shape[1]), int(n.shape[0])
        # the same chain as one folded oneDNN conv (requantized in float32): what the ONNX exporter writes
        self.conv = qconv_bn(conv, bn, self.grid_out, act, where, in_order=in_order)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: uint8 [B, C_in, H, W] channels-last -> (out, neg) uint8 [B, C_out, H, W] channels-last.

        Runs in bands of rows (with the kernel's halo) so that each float32 accumulator band stays in
        cache: one full-size float32 accumulator costs more in memory traffic and page faults than the
        convolution itself at 480x640.
        """
        bsz, _, h, w = x.shape
        c = self.out_channels
        out = np.empty((bsz, h, w, c), np.uint8)
        neg = np.empty((bsz, h, w, c), np.uint8)
        rows = max(1, self.BAND_ELEMENTS // (w * c))
        halo = self.acc.padding[0]
        for i in range(bsz):
            for r in range(0, h, rows):
                n = min(rows, h - r)
                r0, r1 = max(r - halo, 0), min(r + n + halo, h)
                band = x[i : i + 1, :, r0:r1].contiguous(memory_format=torch.channels_last)
                acc = self.acc(band)[:, :, r - r0 : r - r0 + n].permute(0, 2, 3, 1)
                a = np.ascontiguousarray(acc.numpy()).reshape(-1, c)
                quantize_tail(
                    a, self.m, self.b, self.act, self.out_quant, self.grid_out.zero_point,
                    out=out[i, r : r + n].reshape(-1, c), neg=neg[i, r : r + n].reshape(-1, c),
                )  # fmt: skip
        return _from_nhwc(out.reshape(-1, c), x), _from_nhwc(neg.reshape(-1, c), x)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, in={self.grid_in}, out={self.grid_out}, act={self.act}"


STEM_PIXEL_BYTES = 4  # the stem's windows store each input pixel in 4 bytes (RGB + one unused byte)


def _s2d_window_weights(n: torch.Tensor) -> torch.Tensor:
    """3x3 weights int8 [C, I, 3, 3] (I <= 4) -> 1x1 weights int8 [4C, 64, 1, 1] acting on 4x4 windows.

    Output channel ``(dy * 2 + dx) * C + c`` is output pixel (dy, dx) of a 2x2 block; input channel
    ``(wy * 4 + wx) * 4 + i`` is window pixel (wy, wx), input channel i (row-major, 4 bytes per pixel,
    the order :meth:`ExactStem.windows` gathers them in); channels i >= I have weight 0.
    """
    c, cin = int(n.shape[0]), int(n.shape[1])
    px = STEM_PIXEL_BYTES
    w = torch.zeros(4 * c, 4, 4, px, dtype=torch.int8)  # [out, wy, wx, i]
    for dy in range(2):
        for dx in range(2):
            o = slice((dy * 2 + dx) * c, (dy * 2 + dx + 1) * c)
            for ky in range(3):
                for kx in range(3):
                    w[o, dy + ky, dx + kx, :cin] = n[:, :, ky, kx]
    return w.reshape(4 * c, 16 * px, 1, 1)


class ExactStem(nn.Module):
    """The stem chain (3x3 conv -> BatchNorm -> activation onto ``out_quant``'s grid) computed exactly
    (as :class:`ExactConv`) and written directly in space-to-depth layout.

    The stem reads 3 channels, where oneDNN's direct 3x3 conv is slow, and its full-resolution output
    was only ever read through :func:`space_to_depth`. Here every 2x2 block of output pixels is one
    1x1 conv (64 -> 4*C_out, :func:`_s2d_window_weights`) of the block's 4x4 input window, 4 bytes per
    pixel: the same integer products, so the same exact accumulators, in 2.4x the multiplies of a dense
    layout (many of them by zero weights) that oneDNN runs several times faster; the float32 tail then
    writes the space-to-depth tensor directly.
    """

    # float32 accumulator values per band (32 MB): one band up to 480x640. Unlike ExactConv's, larger bands
    # measured faster here (480x640: 11.6 ms median with one band, 13.3 with 4 MB bands; 240x320: 2.6 / 2.9)
    BAND_ELEMENTS = 2**23

    def __init__(self, conv: QConv2d, bn: nn.BatchNorm2d | None, act: str, out_quant: ActQuant, where: str):
        super().__init__()
        _expect(conv, QConv2d, where)
        if conv.kernel_size != (3, 3) or conv.padding != (1, 1) or conv.stride != (1, 1) or conv.groups != 1:
            raise _Unsupported(f"{where}: the stem must be a 3x3 stride-1 'same' convolution, got {conv}")
        n, m, b, self.grid_in = _exact_chain(conv, bn, where)
        self.in_channels, self.out_channels = int(n.shape[1]), int(n.shape[0])
        if self.in_channels > STEM_PIXEL_BYTES:
            raise _Unsupported(f"{where}: the stem reads at most {STEM_PIXEL_BYTES} channels, got {self.in_channels}")
        if sys.byteorder != "little":  # the windows kernel packs channel ch into byte ch of a uint32
            raise _Unsupported(f"{where}: the stem's window layout needs a little-endian CPU")
        ones = torch.ones(4 * self.out_channels, dtype=torch.float64)
        w = _s2d_window_weights(n)
        self.acc = Int8Conv(w, ones, None, padding=0, grid_in=Grid(1.0, self.grid_in.zero_point), grid_out=None)
        self.m, self.b = np.tile(m.numpy(), 4), np.tile(b.numpy(), 4)
        self.n = n  # the dense 3x3 integer weights int8 [C_out, C_in, 3, 3] (the ONNX exporter's)
        self.act, self.out_quant, self.grid_out = act, out_quant, Grid.of(out_quant)
        # the same chain as one folded full-resolution oneDNN conv: what the ONNX exporter writes
        self.conv = qconv_bn(conv, bn, self.grid_out, act, where)

    def windows(self, x: torch.Tensor) -> np.ndarray:
        """One image [C, H, W] -> uint8 [H/2, W/2, 64]: the 4x4 window of each 2x2 block (row-major, 4 bytes
        per pixel: the C channels, then unused bytes), padded by one pixel of the input zero point (a real
        zero, as the conv's zero padding).

        x is uint8 on the input grid, or float32 in [0, 1], which is quantized on the way exactly as
        :meth:`Int8KeypointNet.quantize_image` does (one pass instead of two).
        """
        g = self.grid_in
        if x.dtype == torch.uint8:  # already on the grid: the kernel's rounding is the identity
            src, inv_scale, offset = x.numpy(), 1.0, 0.0
        else:
            src, inv_scale, offset = x.detach().float().numpy(), 1.0 / g.scale, float(g.zero_point)
        return _stem_windows_kernel()(src, np.float32(inv_scale), np.float32(offset), g.zero_point)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: uint8 [B, C_in, H, W] on the input grid, or the float image in [0, 1] (see :meth:`windows`)
        -> uint8 [B, 4*C_out, H/2, W/2] channels-last, channel order (dy, dx, c)."""
        bsz, _, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"the stem needs an even input size, got {w}x{h}")
        c = 4 * self.out_channels
        out = np.empty((bsz, h // 2, w // 2, c), np.uint8)
        rows = max(1, self.BAND_ELEMENTS // (w // 2 * c))
        for i in range(bsz):
            win = self.windows(x[i])
            for r in range(0, h // 2, rows):
                band = torch.from_numpy(win[r : r + rows]).permute(2, 0, 1)[None]  # channels-last view
                a = self.acc(band).permute(0, 2, 3, 1).numpy().reshape(-1, c)
                quantize_tail(
                    a, self.m, self.b, self.act, self.out_quant, self.grid_out.zero_point,
                    out=out[i, r : r + rows].reshape(-1, c), neg=False,
                )  # fmt: skip
        return torch.from_numpy(out).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, in={self.grid_in}, out={self.grid_out}, act={self.act}"


class BinaryResidual(nn.Module):
    """``out = Q_res(shortcut(x) + Q_res(BN(Q_a(relu(binconv(x))))))`` on the uint8 residual stream.

    The binary conv runs in oneDNN (exact integers); everything after it is two tables computed from
    the model's own modules: F (integer conv output -> ReLU -> Q_a) and G (per channel: Q_a value ->
    BN -> Q_res), composed into one table per channel (H = G[c, F[y]]) and applied with the residual
    add in one fused pass that also writes the next binary block's input ``neg = (out < 0)``.
    """

    def __init__(self, block: Residual, res_quant: ActQuant, where: str):
        super().__init__()
        branch = _expect(block.branch, nn.Sequential, f"{where}.branch")
        kinds = (BinaryConv2d, nn.ReLU, ActQuant, nn.BatchNorm2d, ActQuant)
        if len(branch) != len(kinds):
            raise _Unsupported(f"{where}.branch: expected binary conv, ReLU, ActQuant, BatchNorm, ActQuant")
        for i, kind in enumerate(kinds):
            _expect(branch[i], kind, f"{where}.branch.{i}")
        grid_res = Grid.of(res_quant)
        for name, quant in (("branch.4", branch[4]), ("out_quant", block.out_quant)):
            if Grid.of(_expect(quant, ActQuant, f"{where}.{name}")) != grid_res:
                raise _Unsupported(f"{where}.{name}: expected the residual grid {grid_res}")
        self.grid_res = grid_res
        cin = _expect(branch[0], BinaryConv2d, f"{where}.branch.0").in_channels
        cout = branch[0].out_channels
        # F: every possible integer conv output (|y| <= 9 * C_in) -> ReLU -> Q_a, by the model's modules
        quant_a = _Quantizer(branch[2])
        f_lut = quant_a(_run_eval(branch[1], torch.arange(9 * cin + 1, dtype=torch.float32))).numpy()
        # G: per channel, each Q_a value -> BatchNorm -> Q_res (branch.4), by the model's modules
        va = quant_a.values().view(1, 1, -1, 1).expand(1, cout, -1, 1).contiguous()
        g_lut = _Quantizer(branch[4])(_run_eval(branch[3], va)).view(cout, -1).numpy().copy()
        if len(f_lut) <= _UINT8_MAX:  # 9 * C_in < 255: every y fits uint8 (the entries above never occur)
            f_lut = np.concatenate([f_lut, np.repeat(f_lut[-1:], _UINT8_MAX + 1 - len(f_lut))])
        # y >= 255 all map to F(255) when Q_a saturates by then (range <= 255): y fits uint8 exactly
        self.clamp_uint8 = bool((f_lut[_UINT8_MAX:] == f_lut[_UINT8_MAX]).all())
        self.conv = binary_conv(branch[0], f"{where}.branch.0", clamp_uint8=self.clamp_uint8)
        # H = G[c, F[y]]: one table per channel over y = 0..255 (uint8 y) or 0..9 * C_in (float32 y)
        h_lut = g_lut[:, f_lut[: _UINT8_MAX + 1] if self.clamp_uint8 else f_lut]
        self.h_lut = np.ascontiguousarray(h_lut)
        self.shortcut: nn.Module | None = None
        if not isinstance(block.shortcut, nn.Identity):
            sc = _expect(block.shortcut, nn.Sequential, f"{where}.shortcut")
            if len(sc) != 3:
                raise _Unsupported(f"{where}.shortcut: expected QConv2d, BatchNorm, ActQuant")
            if Grid.of(_expect(sc[2], ActQuant, f"{where}.shortcut.2")) != grid_res:
                raise _Unsupported(f"{where}.shortcut.2: expected the residual grid {grid_res}")
            bn = _expect(sc[1], nn.BatchNorm2d, f"{where}.shortcut.1")
            self.shortcut = nn.Sequential(
                Regrid(res_quant, sc[0].input_quant), ExactConv(sc[0], bn, "none", sc[2], where)
            )

    def forward(self, x: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: uint8 residual stream; neg: (x < 0) in {0, 1}. Returns the block output and its ``neg``."""
        y = self.conv(neg).contiguous(memory_format=torch.channels_last)
        s = x if self.shortcut is None else self.shortcut(x)[0]
        ys = y.permute(0, 2, 3, 1).numpy().reshape(-1, y.shape[1])
        ss = _nhwc(s)
        out = np.empty_like(ss)
        out_neg = np.empty_like(ss)
        tail_u8, tail_f32 = _binary_tail_kernels()
        tail = tail_u8 if self.clamp_uint8 else tail_f32
        tail(ys, ss, self.h_lut, self.grid_res.zero_point, out, out_neg)
        return _from_nhwc(out, s), _from_nhwc(out_neg, s)


@functools.lru_cache(maxsize=1)
def _stem_windows_kernel():
    """numba kernel ``windows(src, inv_scale, zp, pad)`` of :meth:`ExactStem.windows`: src [C, H, W] (C <= 4,
    uint8 or float32, any strides) -> uint8 [H/2, W/2, 64], each value ``clamp(rint(v * inv_scale) + zp,
    0, 255)`` in float32 (uint8 input: inv_scale 1, zp 0), the one-pixel border ``pad``.

    First the padded image as one uint32 per pixel, then each window row (4 pixels, 16 bytes) is copied as
    four words. Unused bytes are 0 inside the image and ``pad`` on the border (their weights are 0).
    """
    import numba

    @numba.njit(cache=True, nogil=True)
    def windows(src, inv_scale, zp, pad):  # pragma: no cover - compiled
        c, h, w = src.shape
        zero, top = np.float32(0.0), np.float32(255.0)
        p = np.full((h + 2, w + 2), np.uint32(pad) * np.uint32(0x01010101), np.uint32)  # pixel = 4 bytes
        for y in range(h):
            row = p[y + 1]
            row[1 : w + 1] = 0
            for ch in range(c):  # one contiguous pass per channel plane (vectorizes)
                shift = np.uint32(8 * ch)
                for x in range(w):
                    v = min(max(np.rint(np.float32(src[ch, y, x]) * inv_scale) + zp, zero), top)
                    row[x + 1] |= np.uint32(v) << shift  # little endian: channel ch is byte ch
        out = np.empty((h // 2, w // 2, 16), np.uint32)
        for i in range(h // 2):
            for wy in range(4):
                row = p[2 * i + wy]
                for j in range(w // 2):
                    for wx in range(4):
                        out[i, j, wy * 4 + wx] = row[2 * j + wx]
        return out.view(np.uint8)

    return windows


@functools.lru_cache(maxsize=1)
def _sparse_plan_kernel():
    """numba kernel ``plan(kpts, width, height, w, h) -> (corner, wts, pos)`` of :class:`SparseDescriptorTail`.

    kpts float32 [N, 2] (x, y) in input pixels of a ``width`` x ``height`` input, sampled bilinearly on
    a w x h map as ``grid_sample`` (align_corners=False, zeros outside) samples it: wts float32 [N, 4] the
    weights of corners (x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1) (0 outside the map),
    corner int64 [N, 4] the index of each corner's (clamped) map position in pos, pos int64 [P] the
    distinct positions ``y * w + x`` in ascending order.
    """
    import numba

    @numba.njit(cache=True, nogil=True)
    def plan(kpts, width, height, w, h):  # pragma: no cover - compiled
        n = kpts.shape[0]
        one, two = np.float32(1.0), np.float32(2.0)
        fw, fh = np.float32(w), np.float32(h)
        wts = np.empty((n, 4), np.float32)
        flat = np.empty((n, 4), np.int64)
        used = np.zeros(h * w, np.int64)
        for i in range(n):
            # the normalized grid coordinate, then grid_sample's source coordinate (same float32 steps)
            ux = ((two * kpts[i, 0] + one) / width - one + one) * fw - one
            uy = ((two * kpts[i, 1] + one) / height - one + one) * fh - one
            ux, uy = ux / two, uy / two
            x0, y0 = np.floor(ux), np.floor(uy)
            fx, fy = ux - x0, uy - y0
            wk = ((one - fx) * (one - fy), fx * (one - fy), (one - fx) * fy, fx * fy)
            for k in range(4):
                cx, cy = int(x0) + k % 2, int(y0) + k // 2
                inside = cx >= 0 and cx < w and cy >= 0 and cy < h
                wts[i, k] = wk[k] if inside else np.float32(0.0)
                f = min(max(cy, 0), h - 1) * w + min(max(cx, 0), w - 1)
                flat[i, k] = f
                used[f] = 1
        pos = np.flatnonzero(used)
        for k in range(pos.shape[0]):
            used[pos[k]] = k
        corner = np.empty((n, 4), np.int64)
        for i in range(n):
            for k in range(4):
                corner[i, k] = used[flat[i, k]]
        return corner, wts, pos

    return plan


@functools.lru_cache(maxsize=1)
def _gather_patches_kernel():
    """numba kernel ``gather(d, pos, zp) -> uint8 [P, 9C]``: the 3x3 patch of each position of d uint8
    [h, w, C] (``pos`` int64 [P] = y * w + x), taps in (ky, kx, c) order, taps outside the map = zp."""
    import numba

    @numba.njit(cache=True, nogil=True)
    def gather(d, pos, zp):  # pragma: no cover - compiled
        h, w, c = d.shape
        out = np.empty((pos.shape[0], 9 * c), np.uint8)
        for p in range(pos.shape[0]):
            y, x = pos[p] // w, pos[p] % w
            for t in range(9):
                ty, tx = y + t // 3 - 1, x + t % 3 - 1
                inside = ty >= 0 and ty < h and tx >= 0 and tx < w
                for k in range(c):
                    out[p, t * c + k] = d[ty, tx, k] if inside else zp
        return out

    return gather


@functools.lru_cache(maxsize=1)
def _blend_kernel():
    """numba kernel ``blend(y, corner, wts, out)``: out[i] = sum_k wts[i, k] * y[corner[i, k]] (float32)."""
    import numba

    @numba.njit(cache=True, nogil=True)
    def blend(y, corner, wts, out):  # pragma: no cover - compiled
        n, d = out.shape
        for i in range(n):
            for j in range(d):
                out[i, j] = np.float32(0.0)
            for k in range(corner.shape[1]):
                wk = wts[i, k]
                if wk != 0:
                    r = corner[i, k]
                    for j in range(d):
                        out[i, j] += wk * y[r, j]

    return blend


class SparseDescriptorTail(nn.Module):
    """The descriptor head's last two convs evaluated only where keypoints sample them.

    The dense head computes a 3x3 conv (c1, uint8 out) and a 1x1 conv (c2, float out) over the whole
    1/4-resolution map, then samples the result bilinearly at a few hundred keypoints. Here both run
    only at the map positions those samples touch: each position's 3x3 input patch is gathered and c1
    becomes one 1x1 oneDNN conv over the patches (the same integer products and requantization), c2
    runs on its output as before, and the four corners of each keypoint are blended with
    ``grid_sample``'s weights (align_corners=False, zero outside the map). At 480x640 with 1000
    keypoints that is about a fifth of the positions, and no 20 MB float map.
    """

    def __init__(self, c1: Int8Conv, c2: Int8Conv):
        super().__init__()
        if c1.kernel_size != 3 or c1.grid_out is None or c2.kernel_size != 1 or c2.grid_out is not None:
            raise _Unsupported("descriptor head: expected a 3x3 conv with uint8 output, then a 1x1 float conv")
        w1 = c1.weight_int8.permute(0, 2, 3, 1).reshape(c1.out_channels, -1, 1, 1)  # inputs in (ky, kx, c) order
        self.patch = Int8Conv(
            w1, c1.w_scale64, c1.bias64, padding=0, grid_in=c1.grid_in, grid_out=c1.grid_out, act=c1.act
        )
        self.c2 = copy.copy(c2)  # the dense head keeps its own packing cache
        self.c2._packed = {}
        self.patch.pack_by_shape = self.c2.pack_by_shape = False
        self.zp_in = c1.grid_in.zero_point

    def forward(self, d: torch.Tensor, keypoints: torch.Tensor, width: int, height: int) -> torch.Tensor:
        """d: c1's input, uint8 [1, C, h, w] channels-last; keypoints: float [N, 2] (x, y) in the input's
        ``width`` x ``height`` pixels -> float32 [N, D], the dense head's map sampled as
        :func:`zippy.postprocess.sample_descriptors` samples it.
        """
        _, c, h, w = d.shape
        n = keypoints.shape[0]
        if n == 0:
            return torch.zeros(0, self.c2.out_channels)
        plan = _sparse_plan_kernel()
        corner, wts, pos = plan(keypoints.detach().float().numpy(), np.float32(width), np.float32(height), w, h)
        d_hwc = d[0].permute(1, 2, 0).numpy()  # channels-last storage: a view
        patches = torch.from_numpy(_gather_patches_kernel()(d_hwc, pos, self.zp_in))  # uint8 [P, 9C]
        p = pos.shape[0]
        q = self.patch(patches.view(1, p, 1, 9 * c).permute(0, 3, 1, 2))  # uint8 [1, D1, P, 1] channels-last
        y = self.c2(q).permute(0, 2, 3, 1).reshape(p, -1)  # float32 [P, D]
        out = np.empty((n, y.shape[1]), np.float32)
        _blend_kernel()(y.numpy(), corner, wts, out)
        return torch.from_numpy(out)


def _merged_heads(score: tuple, position: tuple, model: KeypointNet) -> nn.ModuleList:
    """(regrid, one Int8Conv with the score then the position channels, one FloatConv3x3 with 3 outputs)."""
    (regrid, sc, _), (_, pc, _) = score, position
    cat = lambda a, b: None if a is None else torch.cat([a, b])  # noqa: E731
    conv = Int8Conv(
        torch.cat([sc.weight_int8, pc.weight_int8]),
        torch.cat([sc.w_scale64, pc.w_scale64]),
        cat(sc.bias64, pc.bias64),
        padding=sc.padding[0],
        grid_in=sc.grid_in,
        grid_out=None,
        act="relu",
    )
    s_out, p_out = model.score_head[1], model.position_head[1]
    c = sc.out_channels
    both = nn.Conv2d(2 * c, s_out.out_channels + p_out.out_channels, 3, padding=1)
    with torch.no_grad():
        both.weight.zero_()
        both.weight[: s_out.out_channels, :c] = s_out.weight
        both.weight[s_out.out_channels :, c:] = p_out.weight
        both.bias.copy_(torch.cat([s_out.bias, p_out.bias]))
    return nn.ModuleList([regrid, conv, FloatConv3x3(both)])


class Int8KeypointNet(nn.Module):
    """The int8 zippypoint network: float [B, 3, H, W] in [0, 1] -> the KeypointNet output dict.

    Built by :func:`convert`; see the module docstring for how each layer maps to integer kernels.
    """

    def __init__(self, model: KeypointNet):
        super().__init__()
        plan = _Plan(model)
        self.cfg = model.cfg
        self.binary_descriptors = model.binary_descriptors
        self.grid_image = plan.grid_image
        self.stem = plan.stem
        self.stages = plan.stages
        self.block8 = plan.block8
        self.score_in, self.score_conv, self.score_out = plan.score
        self.position_in, self.position_conv, self.position_out = plan.position
        self.desc_in, self.desc_convs = plan.desc
        # both heads read the same tensor; with equal input grids one conv (twice as wide) serves both
        self.heads = _merged_heads(plan.score, plan.position, model) if plan.heads_share_grid else None
        self.sparse_desc = SparseDescriptorTail(self.desc_convs[1], self.desc_convs[2])
        self.kernel_path, self.kernel_reason = "direct", ""

    def set_path(self, path: str, reason: str = "") -> None:
        """Run every 8-bit conv "direct" or with "split" inputs (:class:`Int8Conv`); binary convs never split."""
        if path not in PATHS:
            raise ValueError(f"path must be one of {list(PATHS)}, got {path!r}")
        for m in self.modules():
            if isinstance(m, Int8Conv):
                m.set_split(path == "split")
        self.kernel_path, self.kernel_reason = path, reason

    def quantize_image(self, x: torch.Tensor) -> torch.Tensor:
        """float [B, 3, H, W] in [0, 1] -> uint8 channels-last on the image grid (round(255 x), clamped)."""
        g = self.grid_image
        q = torch.round(x.float() * (1.0 / g.scale)).add_(g.zero_point).clamp_(0, _UINT8_MAX)
        return q.to(torch.uint8, memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """float [B, 3, H, W] -> score, coords and the dense descriptor map (see :func:`convert`)."""
        out = self.detect(x)
        _, c1, c2 = self.desc_convs
        out["desc"] = c2(c1(out.pop("desc_input")))
        return out

    def detect(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything but the descriptor head's last two convs, for :meth:`describe`.

        Returns ``score`` float [B, 1, H/8, W/8], ``coords`` float [B, 2, H/8, W/8] and ``desc_input``
        uint8 [B, C, H/4, W/4] channels-last (the input of the descriptor head's 1/4-resolution conv).
        """
        if x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise ValueError(f"expected float [B, 3, H, W], got {x.dtype} {list(x.shape)}")
        _, _, h, w = x.shape
        cell = self.cfg.cell
        if h % cell or w % cell:
            raise ValueError(f"input size must be a multiple of {cell}, got {w}x{h}")
        q = self.stem(x)  # quantizes the image on the way; already in space-to-depth layout (ExactStem)
        for i, (regrid, pool, blocks) in enumerate(self.stages):
            q, neg = pool(regrid(q if i == 0 else space_to_depth(q)))
            for block in blocks:
                q, neg = block(q, neg)
        for block in self.block8:
            q, neg = block(q, neg)
        if self.heads is not None:
            regrid, conv, out = self.heads
            y = out(conv(regrid(q)))
            logits, offset = y[:, :1], y[:, 1:]
        else:
            logits = self.score_out(self.score_conv(self.score_in(q)))
            offset = self.position_out(self.position_conv(self.position_in(q)))
        score = _mask_border(torch.sigmoid(logits))
        offset = torch.tanh(offset)
        coords = _cell_coords(offset, cell, self.cfg.cross_ratio, w, h)
        d = depth_to_space(self.desc_convs[0](self.desc_in(q)))
        return {"score": score, "coords": coords, "desc_input": d}

    def describe(self, out: dict[str, torch.Tensor], keypoints: torch.Tensor, width: int, height: int) -> torch.Tensor:
        """Raw descriptors float32 [N, D] of image 0 of :meth:`detect`'s ``out`` at ``keypoints`` float [N, 2]
        (input pixels of a ``width`` x ``height`` input): the dense map of :meth:`forward` sampled by
        :func:`zippy.postprocess.sample_descriptors`, computed only where the samples need it."""
        return self.sparse_desc(out["desc_input"][:1], keypoints, width, height)


class _Plan:
    """Walks a zippypoint KeypointNet and builds the int8 modules (raises _Unsupported on any mismatch)."""

    def __init__(self, model: KeypointNet):
        stem = _expect(model.stem, ConvBNAct, "stem")
        _expect(stem[2], nn.Hardswish, "stem.2")
        self.grid_image = Grid.of(_expect(_expect(stem[0], QConv2d, "stem.0").input_quant, ActQuant, "stem.0.iq"))
        stages = []
        res_quant: ActQuant | None = None
        for i, stage in enumerate(_expect(model.stages, nn.Sequential, "stages")):
            where = f"stages.{i}"
            if len(stage) != 4:
                raise _Unsupported(f"{where}: expected space-to-depth, pool, 2 residual blocks")
            _expect(stage[0], SpaceToDepth, f"{where}.0")
            pool = _expect(stage[1], nn.Sequential, f"{where}.1")
            cba = _expect(pool[0], ConvBNAct, f"{where}.1.0")
            _expect(cba[2], nn.ReLU, f"{where}.1.0.2")
            if len(pool) != 2:
                raise _Unsupported(f"{where}.1: expected conv-BN-ReLU then the residual quantizer")
            quant = _expect(pool[1], ActQuant, f"{where}.1.1")
            if res_quant is None:
                res_quant = quant  # every residual quantizer has the same fixed range (checked below)
            elif Grid.of(quant) != Grid.of(res_quant):
                raise _Unsupported(f"{where}.1.1: expected the residual grid {Grid.of(res_quant)}")
            order = _s2d_weight_order(cba[0].in_channels // 4)
            pool_conv = ExactConv(cba[0], cba[1], "relu", quant, f"{where}.1.0.0", in_order=order)
            iq = cba[0].input_quant
            # the first pool reads the stem, which writes its grid directly; the others read the residual stream
            regrid = Regrid(iq, iq) if i == 0 else Regrid(res_quant, iq)
            blocks = nn.ModuleList(
                BinaryResidual(_expect(stage[j], Residual, f"{where}.{j}"), res_quant, f"{where}.{j}") for j in (2, 3)
            )
            stages.append(nn.ModuleList([regrid, pool_conv, blocks]))
        if res_quant is None:
            raise _Unsupported("stages: none found")
        self.res_quant = res_quant
        self.stages = nn.ModuleList(stages)
        first_pool_quant = model.stages[0][1][0][0].input_quant
        self.stem = ExactStem(stem[0], stem[1], "hardswish", first_pool_quant, "stem.0")
        self.block8 = nn.ModuleList(
            BinaryResidual(_expect(m, Residual, f"block8.{i}"), res_quant, f"block8.{i}")
            for i, m in enumerate(_expect(model.block8, nn.Sequential, "block8"))
        )
        self.score = self._head(model.score_head, "score_head")
        self.position = self._head(model.position_head, "position_head")
        self.heads_share_grid = bool(np.array_equal(self.score[0].lut, self.position[0].lut))
        self.desc = self._desc(model.desc_head)

    def _head(self, head: nn.Module, where: str) -> tuple[nn.Module, Int8Conv, FloatConv3x3]:
        head = _expect(head, nn.Sequential, where)
        cba = _expect(head[0], ConvBNAct, f"{where}.0")
        _expect(cba[2], nn.ReLU, f"{where}.0.2")
        conv = qconv_bn(cba[0], cba[1], None, "relu", f"{where}.0.0")
        out = _expect(head[1], nn.Conv2d, f"{where}.1")
        if isinstance(out, (QConv2d, BinaryConv2d)):
            raise _Unsupported(f"{where}.1: expected a float output conv")
        return Regrid(self.res_quant, cba[0].input_quant), conv, FloatConv3x3(out)

    def _desc(self, head: nn.Module) -> tuple[nn.Module, nn.ModuleList]:
        head = _expect(head, nn.Sequential, "desc_head")
        if len(head) != 4:
            raise _Unsupported("desc_head: expected conv-BN-ReLU, pixel shuffle, conv-BN-ReLU, conv")
        cba0 = _expect(head[0], ConvBNAct, "desc_head.0")
        _expect(head[1], nn.PixelShuffle, "desc_head.1")
        cba2 = _expect(head[2], ConvBNAct, "desc_head.2")
        last = _expect(head[3], QConv2d, "desc_head.3")
        for where, cba in (("desc_head.0.2", cba0[2]), ("desc_head.2.2", cba2[2])):
            _expect(cba, nn.ReLU, where)
        g2 = Grid.of(_expect(cba2[0], QConv2d, "desc_head.2.0").input_quant)
        g3 = Grid.of(_expect(last.input_quant, ActQuant, "desc_head.3.iq"))
        # pixel shuffle commutes with quantization: c0 writes c1's input grid, channels in depth_to_space order
        order = _s2d_weight_order(cba0[0].out_channels // 4)
        c0 = qconv_bn(cba0[0], cba0[1], g2, "relu", "desc_head.0.0", out_order=order)
        c1 = qconv_bn(cba2[0], cba2[1], g3, "relu", "desc_head.2.0")
        c2 = qconv_bn(last, None, None, "none", "desc_head.3")
        return Regrid(self.res_quant, cba0[0].input_quant), nn.ModuleList([c0, c1, c2])


def convert(model: nn.Module, path: str | None = None) -> Int8KeypointNet:
    """Convert a trained fake-quantized zippypoint network into a real int8 one.

    The original model is not modified. The quantization grids are the trained ones (see the module
    docstring); fake quantization switched off with ``set_fake_quant`` does not change the result.

    Args:
        model: a zippypoint :class:`~zippy.models.KeypointNet` whose activation ranges were trained.
        path: None (default) takes the path :func:`kernel_check` found exact on this CPU and raises when there
            is none; "direct" or "split" forces one (tests, and the ONNX exporter, which runs no kernel).

    Returns:
        An :class:`Int8KeypointNet` (eval mode): float [B, 3, H, W] in [0, 1], H and W multiples of 8
        -> ``{"score": [B, 1, H/8, W/8], "coords": [B, 2, H/8, W/8], "desc": [B, D, H/4, W/4]}`` float32.
        Its ``kernel_path`` / ``kernel_reason`` say which path runs and why.

    Raises:
        ValueError: the model or this machine is not supported (the message says why).
    """
    if path is None:
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"cannot convert to int8: {reason}")
        check = kernel_check()
        path, why = check.path, check.reason
    elif path in PATHS:
        reason = model_unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"cannot convert to int8: {reason}")
        why = f"{path} path requested"
    else:
        raise ValueError(f"path must be None or one of {list(PATHS)}, got {path!r}")
    with torch.no_grad():
        net = Int8KeypointNet(model).eval()
    net.set_path(path, why)
    log.debug("int8 network built with %s, %s inputs (%s)", ", ".join(KERNELS), path, why)
    return net
