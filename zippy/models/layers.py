"""Building blocks of the KP2D-style topology and the :class:`LayerFactory` that backbones override.

The topology (zippy.models.net) asks the factory for each role:

=========  ====================================================================
role       what it is
=========  ====================================================================
stem       3x3 conv 3 -> 32 at full resolution, BN, hard-swish
pool       1x1 conv after space-to-depth(2) (replaces pooling), BN, ReLU
residual   3x3 residual block at constant width
expand     3x3 conv C -> C' with a 1x1 projection shortcut
head       3x3 (or 1x1) conv, BN, ReLU in the heads
head_out   final float conv of the score / position heads (with bias)
desc_out   final descriptor conv (with bias)
=========  ====================================================================

A new compression backbone subclasses :class:`LayerFactory`, overrides the roles it changes and
registers itself with ``@register("name")`` in zippy.models.backbones.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from zippy.models.config import ModelConfig

__all__ = ["ConvBNAct", "LayerFactory", "Residual"]


class ConvBNAct(nn.Sequential):
    """conv -> BatchNorm -> activation (activation may be nn.Identity)."""

    def __init__(self, conv: nn.Module, out_channels: int, act: nn.Module | None = None):
        super().__init__(conv, nn.BatchNorm2d(out_channels), act if act is not None else nn.ReLU(inplace=True))


class Residual(nn.Module):
    """out = out_quant(shortcut(x) + branch(x)); shortcut defaults to identity."""

    def __init__(self, branch: nn.Module, shortcut: nn.Module | None = None, out_quant: nn.Module | None = None):
        super().__init__()
        self.branch = branch
        self.shortcut = shortcut if shortcut is not None else nn.Identity()
        self.out_quant = out_quant if out_quant is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_quant(self.shortcut(x) + self.branch(x))


def conv(cin: int, cout: int, k: int, *, bias: bool = False) -> nn.Conv2d:
    """Plain float conv with 'same' padding."""
    return nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias)


class LayerFactory:
    """Float layers for every role (the 'kp2d' baseline). Subclasses change roles to compress them.

    Attributes:
        name: registered name (set by the registry).
        binary_descriptors: True for 256-bit descriptors with k ones, False for L2-normalized floats.
        config_defaults: ModelConfig fields of the backbone's default network (e.g. its topology and widths).
    """

    name: ClassVar[str] = ""
    binary_descriptors: ClassVar[bool] = True
    # ModelConfig fields of this backbone's default network (see zippy.models.default_config)
    config_defaults: ClassVar[dict] = {}

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg

    def stem(self, cin: int, cout: int) -> nn.Module:
        return ConvBNAct(conv(cin, cout, 3), cout, nn.Hardswish(inplace=True))

    def pool(self, cin: int, cout: int) -> nn.Module:
        return ConvBNAct(conv(cin, cout, 1), cout)

    def encoder_branch(self, cin: int, cout: int) -> nn.Module:
        """The 3x3 body of residual / expand blocks: conv, ReLU, BN (ZippyPoint's order)."""
        return nn.Sequential(conv(cin, cout, 3), nn.ReLU(inplace=True), nn.BatchNorm2d(cout))

    def residual(self, c: int) -> nn.Module:
        return Residual(self.encoder_branch(c, c))

    def expand(self, cin: int, cout: int) -> nn.Module:
        shortcut = nn.Sequential(conv(cin, cout, 1), nn.BatchNorm2d(cout))
        return Residual(self.encoder_branch(cin, cout), shortcut)

    def head(self, cin: int, cout: int, k: int = 3) -> nn.Module:
        return ConvBNAct(conv(cin, cout, k), cout)

    def head_out(self, cin: int, cout: int) -> nn.Module:
        return conv(cin, cout, 3, bias=True)

    def desc_out(self, cin: int, cout: int) -> nn.Module:
        return conv(cin, cout, 1, bias=True)
