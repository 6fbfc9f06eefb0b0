"""Networks: the shared KP2D-style topology, its building blocks and the backbone registry."""

from zippy.models.config import ModelConfig
from zippy.models.layers import LayerFactory
from zippy.models.net import KeypointNet, clip_binary_weights, count_parameters
from zippy.models.registry import available, get_factory, register

__all__ = [
    "KeypointNet",
    "LayerFactory",
    "ModelConfig",
    "available",
    "clip_binary_weights",
    "count_parameters",
    "get_factory",
    "register",
]
