"""Binary normalization: descriptors with exactly k ones.

* :class:`BinNormTrain` (training): y = sigmoid((x + nu) / T) with a per-descriptor shift nu found by
  bracketing (bisection) such that sum(y) = k. The backward pass uses the implicit-function gradient
  dx = (h / T) * (dy - <h, dy> / sum(h)),  h = y (1 - y),
  so the constraint sum(y) = k holds to first order. As T -> 0, y tends to the hard top-k indicator.
* :class:`BinNormInf` (inference): hard top-k, exactly k ones of D.

Both work on any leading shape [..., D] (any batch size, any number of keypoints, including 0).
Inputs are standardized per descriptor first (zero mean, unit variance), which does not change the
hard top-k and gives the temperature a fixed meaning.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["BinNormInf", "BinNormTrain", "bits_to_packed", "hard_topk", "soft_topk"]


def _standardize(x: torch.Tensor) -> torch.Tensor:
    # x / std(x) with the (unbiased) variance written out: forward + backward 2x faster than torch.std on CPU
    x = x - x.mean(-1, keepdim=True)
    var = (x * x).sum(-1, keepdim=True) / max(x.shape[-1] - 1, 1)
    return x * torch.rsqrt(var).clamp_max(1e6)


def _solve_shift(z: torch.Tensor, k: int, tol: float = 1e-4, max_iter: int = 100) -> torch.Tensor:
    """nu [..., 1] with sum(sigmoid(z + nu)) = k (to ``tol``) for each row of z [..., D] (no gradient needed).

    Safeguarded Newton on all rows at once, from nu = logit(k / D) - mean(z), inside the bracket
    [logit(k / D) - max z, logit(k / D) - min z] that always holds the solution (a step leaving it is replaced
    by the bracket's midpoint). Vectorized, 3-5 passes over the rows at temperatures 0.05-0.5: 2.5-4x faster
    than a compiled per-row loop, whose exponentials are scalar.
    """
    d = z.shape[-1]
    z = z.detach().float()
    t = math.log(k / (d - k))
    lo = t - z.amax(-1, keepdim=True)
    hi = t - z.amin(-1, keepdim=True)
    nu = t - z.mean(-1, keepdim=True)
    for _ in range(max_iter):
        y = torch.sigmoid(z + nu)
        excess = (y.sum(-1, keepdim=True, dtype=torch.float64) - k).float()
        if bool((excess.abs() <= tol).all()):
            break
        g = (y * (1 - y)).sum(-1, keepdim=True)
        hi = torch.where(excess > 0, nu, hi)
        lo = torch.where(excess < 0, nu, lo)
        step = nu - excess / g.clamp_min(1e-12)
        nu = torch.where((step <= lo) | (step >= hi), 0.5 * (lo + hi), step)
    return nu


class _SoftTopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, k: int, temperature: float) -> torch.Tensor:  # type: ignore[override]
        z = x.float() / temperature
        nu = _solve_shift(z, k)
        y = torch.sigmoid(z + nu)
        ctx.save_for_backward(y)
        ctx.temperature = temperature
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):  # type: ignore[override]
        (y,) = ctx.saved_tensors
        h = y * (1 - y)
        dy = dy.float()
        proj = (h * dy).sum(-1, keepdim=True) / h.sum(-1, keepdim=True).clamp_min(1e-12)
        dx = h * (dy - proj) / ctx.temperature
        return dx, None, None


def soft_topk(x: torch.Tensor, k: int = 64, temperature: float = 1.0) -> torch.Tensor:
    """Soft top-k of raw values x [..., D] (no standardization): values in (0, 1) summing to k."""
    d = x.shape[-1]
    if not 0 < k < d:
        raise ValueError(f"k must be in (0, {d}), got {k}")
    if x.numel() == 0:
        return x.float()
    return _SoftTopK.apply(x, k, float(temperature))


def hard_topk(x: torch.Tensor, k: int = 64) -> torch.Tensor:
    """0/1 float tensor [..., D] with ones at the k largest entries (ties: lowest index first)."""
    d = x.shape[-1]
    if not 0 < k < d:
        raise ValueError(f"k must be in (0, {d}), got {k}")
    out = torch.zeros_like(x, dtype=torch.float32)
    if x.numel() == 0:
        return out
    # stable sort makes ties deterministic (lowest index wins) whatever the thread count
    idx = torch.sort(x.float(), dim=-1, descending=True, stable=True).indices[..., :k]
    return out.scatter_(-1, idx, 1.0)


class BinNormTrain(nn.Module):
    """Soft top-k with temperature; output float [..., D] in (0, 1), each row summing to k."""

    def __init__(self, k: int = 64, temperature: float = 0.5):
        super().__init__()
        self.k = k
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == 0:
            return soft_topk(x.float(), self.k, self.temperature)
        return soft_topk(_standardize(x.float()), self.k, self.temperature)


class BinNormInf(nn.Module):
    """Hard top-k; output float 0/1 [..., D] with exactly k ones per row."""

    def __init__(self, k: int = 64):
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return hard_topk(x, self.k)


def bits_to_packed(bits: torch.Tensor) -> torch.Tensor:
    """Pack 0/1 [N, D] (D multiple of 8) into uint8 [N, D/8], MSB first (same as np.packbits)."""
    n, d = bits.shape
    if d % 8:
        raise ValueError(f"bit count must be a multiple of 8, got {d}")
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.int32, device=bits.device)
    return (bits.reshape(n, d // 8, 8).to(torch.int32) * weights).sum(-1).to(torch.uint8)
