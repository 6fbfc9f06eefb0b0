"""Post-processing of network outputs: cell NMS, threshold, top-k, descriptor sampling and binarization.

Everything works on one image at a time on small tensors (one candidate per 8x8 cell), so it costs
little next to the network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zippy.binarize import bits_to_packed, hard_topk

__all__ = ["cell_nms", "finalize_descriptors", "sample_descriptors", "select_keypoints"]


def cell_nms(score: torch.Tensor, coords: torch.Tensor, radius: float, reach: int = 2) -> torch.Tensor:
    """Non-maximum suppression between the keypoints of neighbouring cells.

    A cell's keypoint is suppressed when a keypoint of a cell at most ``reach`` cells away lies within
    ``radius`` px and has a higher score (equal scores: the lower flat index wins). With offsets of at
    most +-7 px (cell 8, cross ratio 2) reach = 2 covers every radius up to 10 px.

    Args:
        score: float [hc, wc] cell scores.
        coords: float [2, hc, wc] keypoint (x, y) per cell.
        radius: suppression radius in px (<= 0 disables NMS).

    Returns:
        bool [hc, wc], True where the keypoint survives.
    """
    hc, wc = score.shape
    keep = score > 0
    if radius <= 0:
        return keep
    k = 2 * reach + 1
    idx = torch.arange(hc * wc, dtype=score.dtype, device=score.device).reshape(1, 1, hc, wc)
    stack = torch.cat([coords[None], score[None, None], idx], 1)  # [1, 4, hc, wc]
    # pad with score -1 so padded neighbours never suppress
    pad_val = torch.tensor([0.0, 0.0, -1.0, 0.0], dtype=score.dtype).view(1, 4, 1, 1)
    padded = F.pad(stack - pad_val, (reach,) * 4) + pad_val
    nb = F.unfold(padded, k).view(4, k * k, hc * wc)  # [4, k*k, n]
    x, y, s, i = stack.view(4, 1, hc * wc).unbind(0)
    close = (nb[0] - x) ** 2 + (nb[1] - y) ** 2 <= radius**2
    better = (nb[2] > s) | ((nb[2] == s) & (nb[3] < i))
    suppressed = (close & better).any(0)
    return keep & ~suppressed.view(hc, wc)


def select_keypoints(
    score: torch.Tensor,
    coords: torch.Tensor,
    width: int,
    height: int,
    max_keypoints: int,
    threshold: float | None,
    nms_radius: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keypoints of one image: NMS, inside the original (unpadded) image, threshold, top-k by score.

    Args:
        score: float [hc, wc]; coords: float [2, hc, wc] in padded-input pixels.
        width, height: the original image size; keypoints outside it (padding) are dropped.

    Returns:
        keypoints float [N, 2] (x, y) and scores float [N], sorted by descending score (ties: lower cell index).
    """
    keep = cell_nms(score, coords, nms_radius)
    keep &= (coords[0] <= width - 1) & (coords[1] <= height - 1)
    if threshold is not None:
        keep &= score >= threshold
    flat = keep.flatten().nonzero().squeeze(1)
    s = score.flatten()[flat]
    order = torch.sort(s, descending=True, stable=True).indices[:max_keypoints]
    flat = flat[order]
    kpts = coords.flatten(1)[:, flat].t().contiguous()
    return kpts, s[order]


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


def finalize_descriptors(desc: torch.Tensor, binary: bool, ones: int) -> torch.Tensor:
    """Binary: hard top-k bits packed to uint8 [N, D/8]. Float: L2-normalized float32 [N, D]."""
    if binary:
        return bits_to_packed(hard_topk(desc, ones))
    return F.normalize(desc.float(), dim=-1)
