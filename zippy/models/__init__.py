"""Networks: the topologies (KP2D-style, fast), their building blocks and the backbone registry."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zippy.models.config import ModelConfig
from zippy.models.layers import LayerFactory
from zippy.models.net import KeypointNet, clip_binary_weights, count_parameters
from zippy.models.registry import available, get_factory, register

if TYPE_CHECKING:
    from torch import nn


def default_config(backbone: str, **overrides: Any) -> ModelConfig:
    """The default :class:`ModelConfig` of a registered backbone (its factory's ``config_defaults``), with overrides."""
    d = {**get_factory(backbone).config_defaults, **overrides, "backbone": backbone}
    return ModelConfig.from_dict(d)


def build_network(cfg: ModelConfig) -> nn.Module:
    """The untrained network of ``cfg``: its topology built with its backbone's layers."""
    if cfg.topology == "fast":
        from zippy.models.fastnet import FastKeypointNet

        return FastKeypointNet(cfg)
    return KeypointNet(cfg)


__all__ = [
    "KeypointNet",
    "LayerFactory",
    "ModelConfig",
    "available",
    "build_network",
    "clip_binary_weights",
    "count_parameters",
    "default_config",
    "get_factory",
    "register",
]
