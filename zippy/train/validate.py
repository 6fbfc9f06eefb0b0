"""Quick validation during training: homography accuracy and MMA at 3 px on fixed development pairs.

The pairs come from held-out photos (the development split, never trained on) warped by fixed random
homographies, so the numbers are comparable across steps and runs with the same seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from zippy.geometry import corner_error, estimate_homography, warp_points
from zippy.train.data import AugmentConfig, HomographyPairs

__all__ = ["VALIDATION_PHOTOMETRY", "ValidationSet", "validate"]

# the validation pairs' photometric ranges: the first training recipe's defaults, kept so that the
# quick validation of every run is made on the same pairs
VALIDATION_PHOTOMETRY = {"brightness": 0.3, "gamma": 0.0, "channel_gain": 0.0, "shade": 0.0}


class ValidationSet:
    """Fixed pairs (uint8 RGB images, homography) from ``files``."""

    def __init__(self, files: list[Path], seed: int = 12345, aug: AugmentConfig | None = None):
        ds = HomographyPairs(files, aug or AugmentConfig(**VALIDATION_PHOTOMETRY), seed=seed)
        self.pairs = []
        for i in range(len(ds)):
            item = ds[i]
            to_u8 = lambda t: (t.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)  # noqa: E731
            self.pairs.append((to_u8(item["image0"]), to_u8(item["image1"]), item["H"].numpy().astype(np.float64)))

    def __len__(self) -> int:
        return len(self.pairs)


@torch.inference_mode()
def validate(
    model: torch.nn.Module, vset: ValidationSet, max_keypoints: int = 300, px: float = 3.0
) -> dict[str, float]:
    """H@px (mean corner error <= px) and MMA@px (matches within px of the truth) over the set.

    The model is used in eval mode and restored to its previous mode afterwards.
    """
    import zippy
    from zippy.extractor import Extractor

    was_training = model.training
    ex = Extractor(model, engine="fp32")
    h_ok, mma, nmatch = [], [], []
    try:
        for img0, img1, H in vset.pairs:
            f0 = ex.extract(img0, max_keypoints)
            f1 = ex.extract(img1, max_keypoints)
            pairs, _ = zippy.match(f0, f1, mutual=True)
            k0, k1 = f0.keypoints[pairs[:, 0]], f1.keypoints[pairs[:, 1]]
            err = np.linalg.norm(warp_points(k0, H) - k1, axis=1) if len(pairs) else np.zeros(0)
            mma.append(float((err <= px).mean()) if len(pairs) else 0.0)
            nmatch.append(len(pairs))
            H_est, _ = estimate_homography(k0, k1, threshold=3.0)
            h, w = img0.shape[:2]
            h_ok.append(corner_error(H_est, H, w, h) <= px)
    finally:
        model.train(was_training)
    return {"val_h3": float(np.mean(h_ok)), "val_mma3": float(np.mean(mma)), "val_matches": float(np.mean(nmatch))}
