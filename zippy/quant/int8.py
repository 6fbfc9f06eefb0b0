"""Real int8 inference (placeholder until the torch.ao conversion lands)."""

from __future__ import annotations

from torch import nn

__all__ = ["convert", "unsupported_reason"]


def unsupported_reason(model: nn.Module) -> str | None:
    """Why the int8 engine cannot run ``model`` here, or None when it can."""
    return "int8 conversion is not implemented yet"


def convert(model: nn.Module) -> nn.Module:
    """Convert a fake-quantized model into a real int8 one."""
    raise NotImplementedError(unsupported_reason(model))
