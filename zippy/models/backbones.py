"""Registered backbones. Each is a small LayerFactory subclass: adding one is a local change here."""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from zippy.models.layers import ConvBNAct, LayerFactory, Residual
from zippy.models.registry import register
from zippy.quant.exact import IntegerConvChain
from zippy.quant.layers import ActQuant, BinaryConv2d, QConv2d

__all__ = ["IntegerConvBNAct", "KP2DLayers", "ZippyFastLayers", "ZippyPointLayers"]


class IntegerConvBNAct(IntegerConvChain, ConvBNAct):
    """A ConvBNAct whose eval-mode forward is integer-exact (:class:`~zippy.quant.exact.IntegerConvChain`)."""


@register("kp2d")
class KP2DLayers(LayerFactory):
    """Float baseline: the same topology without quantization, L2-normalized float descriptors."""

    binary_descriptors = False


@register("zippypoint")
class ZippyPointLayers(LayerFactory):
    """ZippyPoint: binary 3x3 encoder convs, 8-bit everything else but the two tiny float head outputs.

    * 8-bit convs: per-channel symmetric weights, inputs fake-quantized (EMA range; the stem's input
      is the image on the fixed [0, 1] grid, i.e. exactly its uint8 values).
    * binary convs: sign() of inputs and weights, +1 padding; conv -> ReLU -> 8-bit -> BN.
    * the residual stream is fake-quantized to 8 bits on the fixed range +-residual_range.
    """

    binary_descriptors = True

    def qconv(self, cin: int, cout: int, k: int, *, bias: bool = False, input_range=None) -> QConv2d:
        return QConv2d(cin, cout, k, padding=k // 2, bias=bias, input_quant=ActQuant(8, input_range))

    def res_quant(self) -> ActQuant:
        r = self.cfg.residual_range
        return ActQuant(8, (-r, r))

    # the stem, the pools and the expand shortcut feed the binary layers: in eval mode they run
    # integer-exactly, as the int8 engine computes them (IntegerConvChain)
    def stem(self, cin: int, cout: int) -> nn.Module:
        conv = self.qconv(cin, cout, 3, input_range=(0.0, 1.0))
        return IntegerConvBNAct(conv, cout, nn.Hardswish(inplace=True))

    def pool(self, cin: int, cout: int) -> nn.Module:
        return nn.Sequential(IntegerConvBNAct(self.qconv(cin, cout, 1), cout), self.res_quant())

    def encoder_branch(self, cin: int, cout: int) -> nn.Module:
        return nn.Sequential(
            BinaryConv2d(cin, cout, 3),
            nn.ReLU(inplace=True),
            ActQuant(8),
            nn.BatchNorm2d(cout),
            self.res_quant(),
        )

    def residual(self, c: int) -> nn.Module:
        return Residual(self.encoder_branch(c, c), out_quant=self.res_quant())

    def expand(self, cin: int, cout: int) -> nn.Module:
        shortcut = IntegerConvChain(self.qconv(cin, cout, 1), nn.BatchNorm2d(cout), self.res_quant())
        return Residual(self.encoder_branch(cin, cout), shortcut, out_quant=self.res_quant())

    def head(self, cin: int, cout: int, k: int = 3) -> nn.Module:
        return ConvBNAct(self.qconv(cin, cout, k), cout)

    def desc_out(self, cin: int, cout: int) -> nn.Module:
        return self.qconv(cin, cout, 1, bias=True)


@register("zippyfast")
class ZippyFastLayers(LayerFactory):
    """The CPU-first network (topology "fast", :mod:`zippy.models.fastnet`): 8-bit weights, binary descriptors.

    Every conv has per-channel symmetric 8-bit weights (fake-quantized in training, stored as int8 in the
    shipped file); activations stay float, because on AVX2 CPUs without VNNI the int8 kernels are not
    faster than float ones for these narrow layers (docs/bench_extract.md). Descriptors: 256 bits with
    exactly 64 ones (BinNorm), as zippypoint.
    """

    binary_descriptors = True
    config_defaults: ClassVar[dict] = {"topology": "fast", "widths": (24, 64, 96), "feat_dim": 128}

    def qconv(self, cin: int, cout: int, k: int, *, bias: bool = False) -> QConv2d:
        return QConv2d(cin, cout, k, padding=k // 2, bias=bias)

    def pool(self, cin: int, cout: int) -> nn.Module:
        return ConvBNAct(self.qconv(cin, cout, 1), cout)

    def head(self, cin: int, cout: int, k: int = 3) -> nn.Module:
        return ConvBNAct(self.qconv(cin, cout, k), cout)

    def head_out(self, cin: int, cout: int) -> nn.Module:
        return self.qconv(cin, cout, 3, bias=True)

    def desc_out(self, cin: int, cout: int) -> nn.Module:
        return self.qconv(cin, cout, 1, bias=True)
