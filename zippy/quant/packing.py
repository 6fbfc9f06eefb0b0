"""Compact storage of state dicts: binary weights bit-packed, 8-bit weights as int8 + per-channel scales.

:func:`pack_state_dict` turns a model's state dict into a compact one; :func:`unpack_state_dict`
restores the plain float state dict that ``KeypointNet.load_state_dict`` expects (plain entries pass
through, so :func:`zippy.weights.load_weights` reads packed and plain files alike).

A packed entry replaces ``<key>`` by suffixed keys:

=====================  ===========================================================================
``<key>.__bin``        uint8 [ceil(n/8)]: np.packbits of (w >= 0), MSB first, for BinaryConv2d weights
``<key>.__shape``      int64 [ndim]: the original shape of a bit-packed weight
``<key>.__int8``       int8 [O, I, kh, kw]: the trained integer weights of a QConv2d
``<key>.__absmax``     float32 [O]: max|w| per output channel (the scale is absmax / 127)
``<key>.__f16``        float16: a float32 tensor that float16 holds exactly (fixed ranges, 0, 1, ...)
=====================  ===========================================================================

What the packed weights reproduce: a binary conv only ever uses sign(w), restored as +-1.0; an 8-bit
conv only uses its fake-quantized weights, restored as int8 * scale with the entries at +-127 set to
+-absmax exactly, so that quantizing them again gives the same scale and integers bit for bit. So the
fp32 (fake-quant) and int8 engines compute exactly the same outputs from a packed file. The latent
float weights are not kept: a packed file is
for inference, not for resuming training. Float tensors are stored as float16 only where that is
lossless; the rest stays float32 (BatchNorm statistics in float16 would move the int8 grids).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from zippy.quant.layers import BinaryConv2d, QConv2d, weight_fake_quant

__all__ = ["PACKED_SUFFIXES", "is_packed", "pack_state_dict", "state_dict_nbytes", "unpack_state_dict"]

PACKED_SUFFIXES = (".__bin", ".__shape", ".__int8", ".__absmax", ".__f16")


def _weight_kinds(model: nn.Module) -> dict[str, str]:
    kinds = {}
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(m, BinaryConv2d):
            kinds[prefix + "weight"] = "binary"
        elif isinstance(m, QConv2d) and m.bits == 8 and not getattr(m, "group_size", 0):  # per-channel scales only
            kinds[prefix + "weight"] = "int8"
    return kinds


def pack_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Compact state dict of ``model`` (binary weights bit-packed, 8-bit weights int8 + scales).

    Args:
        model: a network built from zippy.quant layers (any other module's tensors are kept as they are,
            float32 tensors as float16 where that is exact).

    Returns:
        dict of CPU tensors; :func:`unpack_state_dict` restores a state dict ``model`` loads with strict keys.
    """
    kinds = _weight_kinds(model)
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        t = value.detach().cpu()
        kind = kinds.get(key)
        if kind == "binary":
            bits = (t >= 0).flatten().numpy()
            out[key + ".__bin"] = torch.from_numpy(np.packbits(bits))
            out[key + ".__shape"] = torch.tensor(list(t.shape), dtype=torch.int64)
        elif kind == "int8":
            w = t.float()
            absmax = w.abs().flatten(1).amax(1)
            scale = absmax.clamp_min(1e-8) / 127
            wq = weight_fake_quant(w, 8)  # the model's own weight quantizer: its rounding, ties included
            n = torch.round(wq / scale.view(-1, *([1] * (w.dim() - 1)))).clamp(-127, 127)
            out[key + ".__int8"] = n.to(torch.int8)
            out[key + ".__absmax"] = absmax
        elif t.dtype == torch.float32 and t.numel() and torch.equal(t.half().float(), t):
            out[key + ".__f16"] = t.half()
        else:
            out[key] = t.clone()
    return out


def is_packed(state: dict[str, torch.Tensor]) -> bool:
    """True when ``state`` holds packed entries."""
    return any(k.endswith(PACKED_SUFFIXES) for k in state)


def _take(state: dict[str, torch.Tensor], key: str, suffix: str) -> torch.Tensor:
    full = key + suffix
    if full not in state:
        raise ValueError(f"packed state dict: {key!r} has no {suffix!r} entry")
    return state[full]


def unpack_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return a float state dict (plain entries unchanged, packed entries restored).

    Raises:
        ValueError: a packed entry is incomplete or inconsistent (the message names the key).
    """
    out: dict[str, torch.Tensor] = {}
    for full, value in state.items():
        if full.endswith((".__shape", ".__absmax")):
            continue  # read together with their partner entry
        if full.endswith(".__bin"):
            key = full[: -len(".__bin")]
            shape = [int(s) for s in _take(state, key, ".__shape").tolist()]
            n = int(np.prod(shape)) if shape else 1
            packed = value.to(torch.uint8).numpy()
            if packed.size != (n + 7) // 8:
                raise ValueError(
                    f"packed state dict: {key!r} holds {packed.size} bytes, shape {shape} needs {(n + 7) // 8}"
                )
            bits = np.unpackbits(packed)[:n].astype(np.float32)
            out[key] = torch.from_numpy(2.0 * bits - 1.0).reshape(shape)
        elif full.endswith(".__int8"):
            key = full[: -len(".__int8")]
            absmax = _take(state, key, ".__absmax").float()
            if value.dim() < 1 or absmax.shape != (value.shape[0],):
                raise ValueError(
                    f"packed state dict: {key!r} absmax {list(absmax.shape)} does not fit weights {list(value.shape)}"
                )
            shape = (-1, *([1] * (value.dim() - 1)))
            n = value.float()
            w = n * (absmax.clamp_min(1e-8) / 127).view(shape)
            # the +-127 entries get +-absmax exactly: re-quantizing then finds the same scale, bit for bit
            out[key] = torch.where(n.abs() == 127, torch.sign(n) * absmax.view(shape), w)
        elif full.endswith(".__f16"):
            out[full[: -len(".__f16")]] = value.float()
        else:
            out[full] = value
    for full in state:
        for partner, suffix in ((".__bin", ".__shape"), (".__int8", ".__absmax")):
            if full.endswith(suffix) and full[: -len(suffix)] + partner not in state:
                raise ValueError(f"packed state dict: {full!r} has no {partner!r} entry")
    return out


def state_dict_nbytes(state: dict[str, torch.Tensor]) -> int:
    """Bytes of tensor data in a state dict (file overhead not included)."""
    return sum(t.numel() * t.element_size() for t in state.values())
