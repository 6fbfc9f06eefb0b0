"""Post-processing of network outputs: cell NMS, threshold, top-k, descriptor sampling and binarization.

Everything works on one image at a time on small tensors (one candidate per 8x8 cell), so it costs
little next to the network; the cell NMS and selection run in one numba pass (:mod:`zippy._post_kernels`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from zippy._post_kernels import select_cells
from zippy.binarize import bits_to_packed, hard_topk

__all__ = ["finalize_descriptors", "sample_descriptors", "sample_network_descriptors", "select_keypoints"]


def select_keypoints(
    score: torch.Tensor,
    coords: torch.Tensor,
    width: int,
    height: int,
    max_keypoints: int,
    threshold: float | None,
    nms_radius: float,
    reach: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keypoints of one image: cell NMS, inside the original (unpadded) image, threshold, top-k by score.

    NMS between the keypoints of neighbouring cells: a cell's keypoint is suppressed when a keypoint of a
    cell at most ``reach`` cells away lies within ``nms_radius`` px and has a higher score (equal scores:
    the lower flat index wins). With offsets of at most +-7 px (cell 8, cross ratio 2), reach 2 covers
    every radius up to 10 px. One pass: a suppressed keypoint still suppresses others. Cells with score
    <= 0 (the masked border) are never kept; ``nms_radius`` <= 0 disables NMS.

    Args:
        score: float [hc, wc] cell scores.
        coords: float [2, hc, wc] keypoint (x, y) per cell, in padded-input pixels.
        width, height: the original image size; keypoints outside it (padding) are dropped.
        max_keypoints: at most this many (the best).
        threshold: minimum score, or None.

    Returns:
        keypoints float32 [N, 2] (x, y) and scores float32 [N], sorted by descending score (ties: lower
        cell index).
    """
    if score.ndim != 2 or coords.shape != (2, *score.shape):
        got = f"{tuple(score.shape)} and {tuple(coords.shape)}"
        raise ValueError(f"expected score [hc, wc] and coords [2, hc, wc], got {got}")
    s = score.detach().float().numpy()
    c = coords.detach().float().numpy()
    r2 = np.float32(float(nms_radius) ** 2) if nms_radius > 0 else np.float32(-1.0)
    thr = np.float32(-np.inf if threshold is None else threshold)
    flat = select_cells(s, c, r2, int(reach), np.float32(width - 1), np.float32(height - 1), thr, int(max_keypoints))
    rows, cols = np.divmod(flat, s.shape[1])
    kpts = np.ascontiguousarray(c[:, rows, cols].T)
    return torch.from_numpy(kpts), torch.from_numpy(s[rows, cols])


def sample_descriptors(desc: torch.Tensor, keypoints: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Bilinearly sample a descriptor map at keypoints.

    Args:
        desc: float [D, h, w] map covering an input of ``width`` x ``height`` px (padded size).
        keypoints: float [N, 2] (x, y) input pixels (centres at integers).

    Returns:
        float [N, D].
    """
    if keypoints.shape[0] == 0:
        return desc.new_zeros((0, desc.shape[0]))
    size = torch.tensor([width, height], dtype=keypoints.dtype, device=keypoints.device)
    grid = (2 * keypoints + 1) / size - 1  # align_corners=False convention: resolution independent
    out = F.grid_sample(desc[None], grid.view(1, 1, -1, 2), mode="bilinear", align_corners=False)
    return out[0, :, 0].t().contiguous()


def sample_network_descriptors(
    out: Mapping[str, Any], index: int, keypoints: torch.Tensor, width: int, height: int
) -> torch.Tensor:
    """Raw descriptors float [N, D] of image ``index`` of a network's dense outputs at keypoints [N, 2].

    The ``desc`` map sampled bilinearly, plus the samples of the finer ``desc_fine`` map when the network has
    one (the fast topology's ``local_desc`` option). Each map is a batched tensor [B, D, h, w] or a sequence
    of per-image maps [D, h, w] (as :func:`zippy.train.losses.split_views` gives them).
    """
    d = sample_descriptors(out["desc"][index], keypoints, width, height)
    if "desc_fine" in out:
        d = d + sample_descriptors(out["desc_fine"][index], keypoints, width, height)
    return d


def finalize_descriptors(desc: torch.Tensor, binary: bool, ones: int) -> torch.Tensor:
    """Binary: hard top-k bits packed to uint8 [N, D/8]. Float: L2-normalized float32 [N, D]."""
    if binary:
        return packed_topk(desc, ones)
    return F.normalize(desc.float(), dim=-1)


def packed_topk(desc: torch.Tensor, k: int) -> torch.Tensor:
    """Bits of the k largest entries of each row, packed MSB first: uint8 [N, D/8].

    The same bits as ``bits_to_packed(hard_topk(desc, k))`` (ties: lowest index first) without a full
    sort: the k-th largest value t is found by partitioning, every entry > t is set, then the first entries
    equal to t fill the row up to k.

    Args:
        desc: float [N, D], D a multiple of 8.
        k: ones per row, 0 < k < D.
    """
    n, d = desc.shape
    if not 0 < k < d:
        raise ValueError(f"k must be in (0, {d}), got {k}")
    if d % 8:
        raise ValueError(f"bit count must be a multiple of 8, got {d}")
    if n == 0:
        return torch.zeros((0, d // 8), dtype=torch.uint8)
    x = desc.detach().float().cpu().numpy()
    t = np.partition(x, d - k, axis=-1)[:, d - k : d - k + 1]  # the k-th largest value of each row
    if not np.isfinite(t).all():
        return bits_to_packed(hard_topk(desc, k))  # NaN / inf rows: the sorting definition decides
    bits = x >= t
    extra = bits.sum(-1) - k  # > 0 only where several entries tie at t
    for i in np.flatnonzero(extra > 0):
        ties = np.flatnonzero(x[i] == t[i, 0])
        bits[i, ties[len(ties) - extra[i] :]] = False  # the highest-index ties lose
    return torch.from_numpy(np.packbits(bits, axis=-1))
