"""Batch-norm recalibration.

The latent weights of binary layers flip sign often while training, so the running BN statistics
(an exponential average over the last few steps) go stale and the eval-mode network is much worse
than the train-mode one (measured: repeatability 0.12 vs 0.37 after 750 steps). Recomputing the
statistics as plain averages over a few batches with the final weights fixes it; the trainer does this
before every validation and before writing a weights file.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from zippy.quant.layers import ActQuant

__all__ = ["recalibrate_batchnorm"]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Recompute every BatchNorm's running mean / var as the average over ``batches``.

    Args:
        model: the network (its mode is restored afterwards).
        batches: float image tensors [B, 3, H, W] in [0, 1].

    Quantizer ranges (ActQuant) are left untouched. Returns the number of images used.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    quants = [m for m in model.modules() if isinstance(m, ActQuant)]
    saved_bn = [m.momentum for m in bns]
    saved_q = [m.momentum for m in quants]
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    for q in quants:
        q.momentum = 0.0
    model.train()
    n = 0
    try:
        for x in batches:
            model(x)
            n += x.shape[0]
    finally:
        for m, mom in zip(bns, saved_bn):
            m.momentum = mom
        for q, mom in zip(quants, saved_q):
            q.momentum = mom
        model.train(was_training)
    return n
