"""Self-supervised losses after KP2D / UnsuperPoint, for a pair related by a known homography.

For every source cell keypoint p0 warped into the target (p0w = H p0) and visible there:
* location: distance from p0w to the nearest target keypoint, for pairs closer than ``match_px``;
* score: UnsuperPoint's repeatability loss ((s0 + s1) / 2 * (d - mean d)) plus score consistency;
  with ``score_desc_weight`` also a reliability term after KP2D's score loss, s0 * (m - mean m) with m
  the anchor's positive minus hardest negative descriptor distance, so the score prefers points whose
  descriptor stands out;
* descriptor: InfoNCE over the target keypoints farther than ``neg_px`` from p0w (a softmax over
  the positive and all those negatives, similarity = -distance / ``nce_temperature``; the default),
  or (``desc_loss="triplet"``) KP2D's triplet loss with the hardest of them, which collapsed the
  binary descriptors in our runs (docs/training.md). With ``desc_symmetric`` the loss is averaged
  with the same loss in the other direction (target keypoints as anchors, every source keypoint
  as a candidate negative), so source keypoints outside the target's view, which the one-way loss
  never sees, are pushed away from the target descriptors too. Binary descriptors go through
  BinNormTrain (soft top-k, sum = k) and use the Hamming-equivalent distance d = 1 - <y0, y1> / k
  (= Hamming / (2k) for hard bits); float ones are L2-normalized and use the Euclidean distance.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from zippy.binarize import BinNormTrain
from zippy.postprocess import sample_network_descriptors

__all__ = ["LossConfig", "pair_loss", "split_views", "view_corners", "warp_points_torch"]

DESCRIPTOR_MAPS = ("desc", "desc_fine")


def split_views(outs: dict[str, torch.Tensor], b: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The float32 outputs of the source views (the first ``b`` images of a [2B] batch) and of the target views.

    The descriptor maps become tuples of per-image maps [D, h, w] (one ``unbind``): the losses sample them once
    per pair and view, and indexing a batched map per pair would allocate the whole batch's gradient on each
    backward (about a third of a fast-topology step); the other outputs stay batched tensors.
    """
    halves: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
    for k, v in outs.items():
        v = v.float()
        if k in DESCRIPTOR_MAPS:
            images = v.unbind(0)
            halves[0][k], halves[1][k] = images[:b], images[b:]
        else:
            halves[0][k], halves[1][k] = v[:b], v[b:]
    return halves


@dataclass(frozen=True)
class LossConfig:
    """Loss weights and thresholds."""

    loc_weight: float = 1.0
    desc_weight: float = 2.0
    score_weight: float = 1.0
    match_px: float = 4.0
    neg_px: float = 8.0
    border_px: float = 8.0
    margin_binary: float = 0.25
    margin_float: float = 0.2
    desc_loss: str = "nce"  # "nce" (softmax over all negatives) or "triplet" (hardest negative)
    nce_temperature: float | None = None  # None: 0.05 for binary descriptors, 0.1 for float ones
    desc_symmetric: bool = False  # also target -> source (negatives include source points out of view)
    # descriptor reliability in the score (after KP2D's score loss): s * (m - mean m) over the anchors, m =
    # positive minus hardest negative distance (detached), so the top-k favours points whose descriptor
    # stands out, not only points that are found again; 0 = off
    score_desc_weight: float = 0.0
    # weight of the score consistency (s0 - s1)^2 over matched keypoints, inside the score part; a larger one asks
    # for cell scores that stay put when the view moves, so the top-k keeps the same points
    score_consistency_weight: float = 1.0
    # a second descriptor loss anchored at Shi-Tomasi corners of the views (zippy.corners, the detector of
    # ``detector="corners"``) instead of the cells' keypoints, its negatives the other view's corners farther than
    # ``corner_neg_px``: descriptors trained where, and against the neighbours that, the corner detector gives; 0 = off
    corner_desc_weight: float = 0.0
    corner_points: int = 400  # corners per view (the strongest)
    corner_neg_px: float = 4.0

    def __post_init__(self) -> None:
        if self.desc_loss not in ("nce", "triplet"):
            raise ValueError(f"desc_loss must be 'nce' or 'triplet', got {self.desc_loss!r}")


def warp_points_torch(points: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """points [B, N, 2], H [B, 3, 3] -> [B, N, 2]."""
    hom = torch.cat([points, torch.ones_like(points[..., :1])], -1) @ H.transpose(1, 2)
    z = hom[..., 2:]
    z = torch.where(z.abs() < 1e-8, torch.full_like(z, 1e-8), z)
    return hom[..., :2] / z


def _flat(out: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    s = out["score"].flatten(1)  # [B, N]
    p = out["coords"].flatten(2).transpose(1, 2)  # [B, N, 2]
    return s, p


def _inside(p: torch.Tensor, w: int, h: int, border: float) -> torch.Tensor:
    return (p[..., 0] >= border) & (p[..., 0] <= w - 1 - border) & (p[..., 1] >= border) & (p[..., 1] <= h - 1 - border)


def _valid_at(valid: torch.Tensor, p: torch.Tensor, w: int, h: int) -> torch.Tensor:
    """valid [B,1,H,W] sampled (nearest) at p [B,N,2] -> bool [B,N]."""
    grid = (2 * p + 1) / torch.tensor([w, h], dtype=p.dtype, device=p.device) - 1
    v = F.grid_sample(valid, grid[:, None], mode="nearest", align_corners=False)
    return v[:, 0, 0] > 0.5


def pair_loss(
    out0: dict[str, torch.Tensor],
    out1: dict[str, torch.Tensor],
    H: torch.Tensor,
    valid1: torch.Tensor,
    *,
    binary: bool,
    ones: int,
    temperature: float,
    cfg: LossConfig,
    corners: tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its parts (floats, for logging) of a batch of pairs.

    Args:
        out0, out1: network outputs (zippy.models.net) of the source and target images.
        H: float [B, 3, 3] source -> target pixels. valid1: float [B, 1, H, W] target validity.
        binary: binary (soft top-k) or float descriptors; ones: k; temperature: soft top-k temperature.
        corners: with ``cfg.corner_desc_weight``, the corners of the source and target views
            (:func:`view_corners`): each (points float [B, N, 2], present bool [B, N]).
    """
    _, _, himg, wimg = valid1.shape
    s0, p0 = _flat(out0)
    s1, p1 = _flat(out1)
    p0w = warp_points_torch(p0, H)
    ok0 = _inside(p0w, wimg, himg, cfg.border_px) & _inside(p0, wimg, himg, cfg.border_px)
    ok0 &= _valid_at(valid1, p0w.detach().clamp(0, max(wimg, himg)), wimg, himg)
    ok1 = _inside(p1, wimg, himg, cfg.border_px) & _valid_at(valid1, p1.detach(), wimg, himg)

    dist = torch.cdist(p0w, p1)  # [B, N, M]
    dist = dist.masked_fill(~ok1[:, None, :], float("inf"))
    min_d, nn_idx = dist.min(-1)
    matched = ok0 & (min_d < cfg.match_px)
    n_matched = int(matched.sum())

    zero = p0.sum() * 0.0
    loc = min_d[matched].mean() if n_matched else zero

    s1nn = torch.gather(s1, 1, nn_idx)
    if n_matched:
        d = min_d[matched].detach()
        pair_s = 0.5 * (s0[matched] + s1nn[matched])
        usp = (pair_s * (d - d.mean())).mean()
        consistency = (s0[matched] - s1nn[matched]).pow(2).mean()
        score = usp + cfg.score_consistency_weight * consistency
    else:
        score = zero

    all0 = _inside(p0, wimg, himg, cfg.border_px)
    desc_loss, correct, count, rel = _descriptor_loss_both_ways(
        out0, out1, H, p0, p0w, p1, ok0, ok1, all0, wimg, himg, binary, ones, temperature, cfg
    )
    precision = correct / max(count, 1)
    total = cfg.loc_weight * loc + cfg.score_weight * score + cfg.desc_weight * desc_loss
    total = total + cfg.score_desc_weight * rel
    corner_loss = zero
    if cfg.corner_desc_weight:
        if corners is None:
            raise ValueError("corner_desc_weight needs the views' corners (pair_loss(..., corners=view_corners(...)))")
        corner_loss = _corner_descriptor_loss(out0, out1, H, valid1, corners, binary, ones, temperature, cfg)
        total = total + cfg.corner_desc_weight * corner_loss
    parts = {
        "loss": float(total.detach()),
        "loc": float(loc.detach()),
        "score": float(score.detach()),
        "desc": float(desc_loss.detach()),
        "desc_precision": precision,
        "score_desc": float(rel.detach()),
        "corner_desc": float(corner_loss.detach()),
        "matched_frac": n_matched / max(int(ok0.sum()), 1),
    }
    return total, parts


def view_corners(images: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``n`` strongest corners (:func:`zippy.corners.detect_corners`) of each image float [B, 3, H, W] in [0, 1]:
    points float [B, n, 2] (x, y) px, zero-padded, and present bool [B, n]."""
    from zippy.corners import detect_corners, rgb_to_grey

    pts = torch.zeros(images.shape[0], n, 2)
    present = torch.zeros(images.shape[0], n, dtype=torch.bool)
    for i, img in enumerate(images.detach().float()):
        kp, _ = detect_corners(rgb_to_grey(img.permute(1, 2, 0).numpy()), n)
        pts[i, : len(kp)] = torch.from_numpy(kp)
        present[i, : len(kp)] = True
    return pts, present


def _corner_descriptor_loss(out0, out1, H, valid1, corners, binary, ones, temperature, cfg):
    """The descriptor loss (one or both directions, as ``cfg.desc_symmetric``) anchored at the views' corners."""
    _, _, himg, wimg = valid1.shape
    (c0, m0), (c1, m1) = corners
    c0w = warp_points_torch(c0, H)
    all0 = m0 & _inside(c0, wimg, himg, cfg.border_px)
    ok0 = all0 & _inside(c0w, wimg, himg, cfg.border_px) & _valid_at(valid1, c0w.clamp(0, max(wimg, himg)), wimg, himg)
    ok1 = m1 & _inside(c1, wimg, himg, cfg.border_px) & _valid_at(valid1, c1, wimg, himg)
    # no reliability term: it weighs the cells' scores, and corners have none of their own
    ccfg = replace(cfg, neg_px=cfg.corner_neg_px, score_desc_weight=0.0)
    args = (wimg, himg, binary, ones, temperature, ccfg)
    return _descriptor_loss_both_ways(out0, out1, H, c0, c0w, c1, ok0, ok1, all0, *args)[0]


def _descriptor_loss_both_ways(out0, out1, H, p0, p0w, p1, ok0, ok1, all0, wimg, himg, binary, ones, temperature, cfg):
    """:func:`_descriptor_loss` from the source anchors ``ok0`` and, with ``cfg.desc_symmetric``, from the target
    anchors seen in the source crop, every source point of ``all0`` (in view of the target or not) a negative; the
    mean of the directions that had anchors: (loss, anchors whose positive won, anchors used, reliability term)."""
    loss, correct, count, rel = _descriptor_loss(
        out0, out1, p0, p0w, p1, ok0, ok1, wimg, himg, binary, ones, temperature, cfg
    )
    if not cfg.desc_symmetric:
        return loss, correct, count, rel
    p1w = warp_points_torch(p1, torch.linalg.inv(H))
    ok1_back = ok1 & _inside(p1w, wimg, himg, cfg.border_px)
    back, back_correct, back_count, back_rel = _descriptor_loss(
        out1, out0, p1, p1w, p0, ok1_back, all0, wimg, himg, binary, ones, temperature, cfg
    )
    if count and back_count:
        loss, rel = 0.5 * (loss + back), 0.5 * (rel + back_rel)
    elif back_count:
        loss, rel = back, back_rel
    return loss, correct + back_correct, count + back_count, rel


def _descriptor_loss(out0, out1, p0, p0w, p1, ok0, ok1, wimg, himg, binary, ones, temperature, cfg):
    """(mean loss over the anchors ok0 of out0, anchors whose positive beats every negative, anchors used,
    reliability score term of those anchors: mean of s * (m - mean m), m = d_pos - d_hardest detached)."""
    b = p0.shape[0]
    losses, reliability, correct, count = [], [], 0, 0
    s0 = out0["score"].flatten(1)
    norm = BinNormTrain(ones, temperature)
    for i in range(b):
        sel = ok0[i]
        if int(sel.sum()) == 0 or int(ok1[i].sum()) == 0:
            continue
        a = sample_network_descriptors(out0, i, p0[i][sel].detach(), wimg, himg)
        pos = sample_network_descriptors(out1, i, p0w[i][sel].detach(), wimg, himg)
        cand = p1[i][ok1[i]].detach()
        neg = sample_network_descriptors(out1, i, cand, wimg, himg)
        if binary:
            ya, yp, yn = norm(a), norm(pos), norm(neg)
            d_pos = 1 - (ya * yp).sum(-1) / ones
            d_neg = 1 - ya @ yn.t() / ones
            margin = cfg.margin_binary
        else:
            ya, yp, yn = (F.normalize(t, dim=-1) for t in (a, pos, neg))
            d_pos = (2 - 2 * (ya * yp).sum(-1)).clamp_min(1e-8).sqrt()
            d_neg = (2 - 2 * ya @ yn.t()).clamp_min(1e-8).sqrt()
            margin = cfg.margin_float
        too_close = torch.cdist(p0w[i][sel].detach(), cand) < cfg.neg_px
        d_neg = d_neg.masked_fill(too_close, float("inf"))
        hardest = d_neg.min(-1).values
        finite = torch.isfinite(hardest)
        if int(finite.sum()) == 0:
            continue
        if cfg.desc_loss == "nce":
            # similarity = -distance; the positive competes with every negative (InfoNCE)
            temp = cfg.nce_temperature or (0.05 if binary else 0.1)  # Hamming-equivalent d in [0, 1], L2 in [0, 2]
            logits = torch.cat([-d_pos[:, None], -d_neg], 1)[finite] / temp
            losses.append(torch.logsumexp(logits, 1) - logits[:, 0])
        else:
            losses.append(F.relu(d_pos[finite] - hardest[finite] + margin))
        if cfg.score_desc_weight:
            m = (d_pos[finite] - hardest[finite]).detach().float()
            reliability.append(s0[i][sel][finite] * (m - m.mean()))
        correct += int((d_pos[finite] < hardest[finite]).sum())
        count += int(finite.sum())
    zero = p0.sum() * 0.0
    if not losses:
        return zero, 0, 0, zero
    rel = torch.cat(reliability).mean() if reliability else zero
    return torch.cat(losses).mean(), correct, count, rel
