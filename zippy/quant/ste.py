"""Straight-through estimators (STE) for fake quantization, including additive noise annealing (ANA).

A uniform quantizer maps ``x`` to ``(clamp(R(x / s + zp), qmin, qmax) - zp) * s`` where ``R`` rounds
(to nearest, or toward zero for accumulator-aware layers). Its derivative is zero almost everywhere, so
training needs a surrogate. Two modes:

* ``"ste"``: hard rounding forward, identity gradient backward (inside the clamp range): the usual STE.
* ``"ana"``: additive noise annealing (Spallanzani et al., 2019). The rounding of ``t`` is replaced by
  its expectation under additive uniform noise ``u ~ U(-a, a)``, ``a <= 1/2`` steps::

      E[floor(t + u)] = floor(t) + relu(f + a - 1) / (2a) - relu(a - f) / (2a),   f = t - floor(t)

  a piecewise-linear staircase whose exact gradient (1 / (2a) near the steps, 0 elsewhere) is used.
  At ``a = 1/2`` the quantizer is the identity (the float network); as ``a -> 0`` it tends to hard
  rounding, and below ``a_min`` hard rounding with the STE gradient is used. Annealing ``a`` from
  1/2 to 0 during training moves continuously from the float network to the quantized one; STE is
  the limit that keeps the forward hard and the backward linear. With ``sample=True`` the forward
  draws ``floor(t + u)`` (a noisy quantizer) while the backward keeps the expectation's gradient.

Evaluation (``training=False``) always rounds hard: the deployed network is the quantized one.
Layers that support these modes carry the non-persistent attributes ``ste_mode``, ``ste_noise``,
``ste_sample`` (see :func:`set_ste`); they are not part of the state dict.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

__all__ = [
    "ANA_MIN_NOISE",
    "STE_MODES",
    "ana_noise",
    "fake_quant",
    "set_ste",
    "set_ste_noise",
    "smooth_floor",
    "ste_modules",
    "weight_quant",
]

STE_MODES = ("ste", "ana")
ANA_MIN_NOISE = 1e-3  # below this noise half-width (in steps) ANA falls back to hard rounding + STE


def _check_mode(mode: str) -> str:
    if mode not in STE_MODES:
        raise ValueError(f"unknown STE mode {mode!r}; choose one of {list(STE_MODES)}")
    return mode


def smooth_floor(t: torch.Tensor, noise: float, *, sample: bool = False) -> torch.Tensor:
    """E[floor(t + u)], u ~ U(-noise, noise), with its exact gradient (``sample``: a noisy forward instead).

    Args:
        t: float tensor (any shape).
        noise: half-width ``a`` of the uniform noise in (0, 0.5].

    Returns:
        float tensor shaped like ``t``.
    """
    if not 0.0 < noise <= 0.5:
        raise ValueError(f"ANA noise must be in (0, 0.5], got {noise}")
    n = torch.floor(t).detach()
    f = t - n
    expect = n + (torch.relu(f + noise - 1) - torch.relu(noise - f)) / (2 * noise)
    if not sample:
        return expect
    drawn = torch.floor(t.detach() + (torch.rand_like(t) * 2 - 1) * noise)
    return expect + (drawn - expect).detach()


def _round(t: torch.Tensor, rounding: str, mode: str, noise: float, sample: bool) -> torch.Tensor:
    """Round ``t`` ("nearest" or "zero") with the surrogate gradient of ``mode`` (training only)."""
    if mode == "ana" and noise > ANA_MIN_NOISE:
        if rounding == "nearest":  # round(t) = floor(t + 1/2)
            return smooth_floor(t + 0.5, noise, sample=sample)
        # trunc(t) = sign(t) floor(|t|) for |t| + u >= 0; where |t| + u < 0 (only if |t| < noise) trunc
        # gives 0, not floor's -1: add that probability back. (At noise 1/2 this is max(|t| - 1/2, 0).)
        m = t.abs()
        expect = smooth_floor(m, noise) + torch.relu(noise - m) / (2 * noise)
        if sample:
            drawn = torch.floor((m.detach() + (torch.rand_like(m) * 2 - 1) * noise).clamp_min(0))
            expect = expect + (drawn - expect).detach()
        return torch.sign(t.detach()) * expect
    hard = torch.round(t) if rounding == "nearest" else torch.trunc(t)
    return t + (hard - t).detach()


def fake_quant(
    x: torch.Tensor,
    scale: torch.Tensor | float,
    zero_point: torch.Tensor | float,
    qmin: int,
    qmax: int,
    *,
    mode: str = "ste",
    noise: float = 0.0,
    sample: bool = False,
    training: bool = True,
    rounding: str = "nearest",
) -> torch.Tensor:
    """Uniform fake quantization ``(clamp(R(x / s + zp), qmin, qmax) - zp) * s`` with an STE variant.

    Args:
        x: float tensor.
        scale, zero_point: scalars or tensors broadcastable to ``x`` (e.g. [O, 1, 1, 1] per channel).
            A scale that requires grad receives the quantizer's gradient (LSQ-style).
        qmin, qmax: integer range.
        mode: "ste" or "ana" (see the module docstring); noise: ANA half-width in steps (0..0.5).
        sample: ANA with a noisy forward; training: False rounds hard (evaluation).
        rounding: "nearest" or "zero" (toward zero, used where rounding must never grow |x|).

    Returns:
        float tensor shaped like ``x``.
    """
    _check_mode(mode)
    if rounding not in ("nearest", "zero"):
        raise ValueError(f"rounding must be 'nearest' or 'zero', got {rounding!r}")
    t = x / scale + zero_point
    if training:
        q = _round(t, rounding, mode, float(noise), sample)
    else:
        q = torch.round(t) if rounding == "nearest" else torch.trunc(t)
    q = torch.clamp(q, qmin, qmax)
    return (q - zero_point) * scale


def weight_quant(
    w: torch.Tensor,
    bits: int,
    *,
    group_size: int = 0,
    mode: str = "ste",
    noise: float = 0.0,
    sample: bool = False,
    training: bool = True,
) -> torch.Tensor:
    """Symmetric weight fake quantization per output channel, or per group of input channels.

    The scale of each channel (or group of ``group_size`` consecutive input channels of one output
    channel, all kernel taps included) is ``max|w| / (2^(bits-1) - 1)``. With ``group_size = 0`` and
    mode "ste" this equals :func:`zippy.quant.layers.weight_fake_quant` (same grid, same gradient).

    Args:
        w: float [O, I, kh, kw] conv weights.
        bits: 2..8.
        group_size: input channels per scale (0: one scale per output channel); must divide I.

    Returns:
        float [O, I, kh, kw] on the grid.
    """
    if not 2 <= bits <= 8:
        raise ValueError(f"weight bits must be in 2..8, got {bits}")
    qmax = 2 ** (bits - 1) - 1
    o, i = w.shape[:2]
    if group_size and (group_size < 0 or i % group_size):
        raise ValueError(f"group_size must divide the {i} input channels, got {group_size}")
    g = w.reshape(o, i // group_size, -1) if group_size else w.reshape(o, 1, -1)
    scale = g.detach().abs().amax(-1, keepdim=True).clamp_min(1e-8) / qmax
    q = fake_quant(g, scale, 0.0, -qmax, qmax, mode=mode, noise=noise, sample=sample, training=training)
    return q.reshape(w.shape)


def ana_noise(progress: float, start: float = 0.5, end_fraction: float = 0.9) -> float:
    """Annealing schedule: half-width ``start`` at progress 0, decreasing linearly to 0 at ``end_fraction``.

    The last ``1 - end_fraction`` of training runs the hard quantizer (with the STE gradient), so the
    network ends training exactly as it is deployed.
    """
    if not 0.0 < end_fraction <= 1.0:
        raise ValueError(f"end_fraction must be in (0, 1], got {end_fraction}")
    p = min(max(float(progress), 0.0), 1.0)
    return max(start * (1.0 - p / end_fraction), 0.0)


def ste_modules(model: nn.Module) -> list[nn.Module]:
    """Modules of ``model`` that support STE modes (they have a ``ste_mode`` attribute)."""
    return [m for m in model.modules() if hasattr(m, "ste_mode")]


def set_ste(model: nn.Module, mode: str, noise: float | None = None, *, sample: bool = False) -> int:
    """Set the STE mode of every supporting module; returns how many were set.

    Args:
        mode: "ste" or "ana". noise: initial ANA half-width (default 0.5 for "ana", 0 for "ste").
        sample: ANA with a noisy forward.
    """
    _check_mode(mode)
    a = (0.5 if mode == "ana" else 0.0) if noise is None else float(noise)
    mods = ste_modules(model)
    for m in mods:
        m.ste_mode, m.ste_noise, m.ste_sample = mode, a, sample
    if not mods:
        log.warning("set_ste(%r): the model has no quantizer that supports STE modes", mode)
    return len(mods)


def set_ste_noise(model: nn.Module, noise: float) -> None:
    """Set the ANA half-width of every supporting module in ANA mode."""
    for m in ste_modules(model):
        if m.ste_mode == "ana":
            m.ste_noise = float(noise)
