"""Binary normalization: exactly k ones, soft top-k -> hard top-k as T -> 0, implicit gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from zippy.binarize import BinNormInf, BinNormTrain, bits_to_packed, hard_topk, soft_topk


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 50), d=st.sampled_from([16, 64, 256]), seed=st.integers(0, 10_000), ties=st.booleans())
def test_hard_topk_exactly_k_ones(n: int, d: int, seed: int, ties: bool) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    if ties:
        x = x.round()  # many equal values
    k = d // 4
    bits = BinNormInf(k)(x)
    assert bits.shape == (n, d)
    assert torch.all(bits.sum(-1) == k)
    # every selected value is >= every unselected one
    if n:
        sel_min = torch.where(bits > 0, x, torch.inf).amin(-1)
        rest_max = torch.where(bits > 0, -torch.inf, x).amax(-1)
        assert torch.all(sel_min >= rest_max)


def test_hard_topk_ties_lowest_index_first() -> None:
    x = torch.zeros(1, 8)
    assert hard_topk(x, 2).tolist() == [[1, 1, 0, 0, 0, 0, 0, 0]]


def test_soft_topk_sums_to_k_and_approaches_hard() -> None:
    torch.manual_seed(0)
    x = torch.randn(7, 3, 256)  # any batch shape
    hard = hard_topk(x, 64)
    errs = []
    for t in (1.0, 0.3, 0.1, 0.01):
        y = soft_topk(x, 64, t)
        assert torch.allclose(y.sum(-1), torch.full((7, 3), 64.0), atol=1e-3)
        errs.append((y - hard).abs().mean().item())
    assert errs == sorted(errs, reverse=True)
    assert errs[-1] < 0.01


def test_soft_topk_solves_hard_rows() -> None:
    # heavy tails, ties, a constant row and wildly different scales: every row still sums to k
    torch.manual_seed(1)
    x = torch.cat(
        [torch.randn(50, 256) ** 5, torch.randn(50, 256).round(), torch.ones(1, 256), torch.randn(20, 256) * 1e4]
    )
    for t in (2.0, 0.5, 0.05, 0.005):
        y = soft_topk(x, 64, t)
        assert torch.isfinite(y).all()
        assert torch.allclose(y.sum(-1), torch.full((121,), 64.0), atol=1e-3), t


def test_soft_topk_gradient_matches_finite_differences() -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 16, dtype=torch.float64)

    def f(z: torch.Tensor) -> torch.Tensor:
        return (soft_topk(z, 4, 0.7).double() * w).sum()

    # soft_topk computes in float32 internally: compare with a float32-sized step
    f(x).backward()
    eps = 1e-2
    num = torch.zeros_like(x)
    for i in range(2):
        for j in range(16):
            e = torch.zeros_like(x)
            e[i, j] = eps
            num[i, j] = (f(x.detach() + e) - f(x.detach() - e)) / (2 * eps)
    assert torch.allclose(x.grad, num, atol=2e-3, rtol=2e-2)


def test_soft_topk_gradient_keeps_the_sum() -> None:
    # sum(y) = k for every x, so the gradient of sum(y) must vanish (implicit-function gradient)
    x = torch.randn(5, 256, requires_grad=True)
    y = soft_topk(x, 64, 0.5)
    y.backward(torch.ones_like(y))
    assert torch.allclose(x.grad, torch.zeros_like(x), atol=1e-5)
    # while a generic loss gives a non-zero gradient
    x.grad = None
    soft_topk(x, 64, 0.5).backward(torch.randn(5, 256))
    assert x.grad.abs().sum() > 0


def test_bin_norm_train_empty_and_bad_k() -> None:
    assert BinNormTrain(64)(torch.zeros(0, 256)).shape == (0, 256)
    with pytest.raises(ValueError, match="k must be"):
        soft_topk(torch.zeros(2, 8), 8)
    with pytest.raises(ValueError, match="k must be"):
        hard_topk(torch.zeros(2, 8), 0)


def test_bits_to_packed_matches_numpy() -> None:
    bits = (torch.rand(9, 256) > 0.5).float()
    ours = bits_to_packed(bits).numpy()
    ref = np.packbits(bits.numpy().astype(bool), axis=1)
    assert ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, ref)
