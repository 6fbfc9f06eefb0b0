"""Training pairs made on the fly: a crop of a photo and a random homographic, photometrically changed view.

The target view is rendered from the whole photo (not only the crop), so content near its border is
real image content; only pixels that fall outside the photo are invalid (``valid`` mask = 0).
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, fields
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from zippy.geometry import random_homography
from zippy.image import read_image

__all__ = [
    "DEV_PREFIX",
    "TRAIN_GLOBS",
    "AugmentConfig",
    "HomographyPairs",
    "augment_config",
    "list_images",
    "photometric",
]

# the development split (bsds500_test_*) is never trained on
DEV_PREFIX = "bsds500_test_"
TRAIN_GLOBS = ("bsds500_train_*", "bsds500_val_*", "urban100_*")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp")


def list_images(folder: str | os.PathLike, globs: tuple[str, ...] = TRAIN_GLOBS) -> list[Path]:
    """Sorted image files in ``folder`` whose names match any of ``globs``.

    Raises:
        NotADirectoryError: ``folder`` is not a directory.
        ValueError: no image matches.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"training image folder not found: {folder}")
    files = sorted(
        p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and any(fnmatch.fnmatch(p.name, g) for g in globs)
    )
    if not files:
        raise ValueError(f"no images matching {list(globs)} in {folder}")
    return files


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random homography and photometric changes."""

    height: int = 240
    width: int = 320
    max_angle_deg: float = 45.0
    scale_range: tuple[float, float] = (0.7, 1.4)
    perspective: float = 0.12
    translation: float = 0.1
    brightness: float = 0.5
    contrast: float = 0.3
    saturation: float = 0.3
    hue_deg: float = 10.0
    blur_prob: float = 0.3
    noise_std: float = 0.02
    # illumination changes (0: off): gamma = exp(U(-g, g)); per-channel gains exp(U(-c, c)); a shading
    # field 1 + a*u (u a random linear ramp in [-1, 1], a ~ U(0, shade)) times, half of the time, a soft
    # round light or shadow of amplitude U(-shade, shade). On by default: against off, they raised the
    # development split's H@3 by 0.14 (docs/training.md)
    gamma: float = 0.9
    channel_gain: float = 0.3
    shade: float = 0.6
    # the photo is resized so its short side is uniform in this range (pixels) before cropping; None:
    # the crop covers 60-100 % of the short side. Eval-like scales (e.g. 240-480 for 240x320 and 480x640
    # evaluation) keep small training crops at the pixel scale the network is evaluated at.
    photo_short_side: tuple[int, int] | None = None


def augment_config(
    crop: tuple[int, int], photo_short_side: tuple[int, int] | None = None, overrides: dict | None = None
) -> AugmentConfig:
    """The AugmentConfig of a training crop (height, width) with JSON-style ``overrides`` of its other ranges.

    Raises:
        ValueError: an override names no AugmentConfig range (or names the crop size, set by ``crop``).
    """
    overrides = dict(overrides or {})
    allowed = sorted(f.name for f in fields(AugmentConfig) if f.name not in ("height", "width", "photo_short_side"))
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ValueError(f"unknown augmentation fields {unknown}; choose from {allowed} (the crop is set separately)")
    return AugmentConfig(height=crop[0], width=crop[1], photo_short_side=photo_short_side, **overrides)


def _shading(rng: np.random.Generator, h: int, w: int, amount: float) -> np.ndarray:
    """A random multiplicative shading field float32 [H, W] >= 0.05: a linear ramp and maybe a soft spot."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    u = (xx / max(w - 1, 1) - 0.5) * np.cos(angle) + (yy / max(h - 1, 1) - 0.5) * np.sin(angle)  # in [-0.71, 0.71]
    field = 1 + rng.uniform(0, amount) * 1.41 * u
    if rng.random() < 0.5:
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        sigma2 = (rng.uniform(0.15, 0.5) * np.hypot(h, w)) ** 2
        field = field * (1 + rng.uniform(-amount, amount) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma2)))
    return np.maximum(field, 0.05)


def photometric(img: np.ndarray, rng: np.random.Generator, aug: AugmentConfig, strength: float = 1.0) -> np.ndarray:
    """Random colour, illumination, contrast, brightness, blur and noise changes.

    RGB uint8 [H, W, 3] -> float32 [H, W, 3] in [0, 1]; ``strength`` scales every range.
    """
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV_FULL).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-1, 1) * aug.hue_deg * strength * 256 / 360) % 256
    hsv[..., 1] *= 1 + rng.uniform(-1, 1) * aug.saturation * strength
    rgb = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB_FULL).astype(np.float32) / 255
    if aug.gamma > 0:
        rgb = np.power(rgb, np.float32(np.exp(rng.uniform(-1, 1) * aug.gamma * strength)))
    if aug.channel_gain > 0:
        rgb = rgb * np.exp(rng.uniform(-1, 1, 3) * aug.channel_gain * strength).astype(np.float32)
    if aug.shade > 0:
        rgb = rgb * _shading(rng, rgb.shape[0], rgb.shape[1], aug.shade * strength)[:, :, None]
    mean = rgb.mean()
    rgb = (rgb - mean) * (1 + rng.uniform(-1, 1) * aug.contrast * strength) + mean
    rgb = rgb * (1 + rng.uniform(-1, 1) * aug.brightness * strength)
    if rng.random() < aug.blur_prob * strength:
        rgb = cv2.GaussianBlur(rgb, (0, 0), rng.uniform(0.3, 1.5))
    rgb = rgb + rng.normal(0, aug.noise_std * strength * rng.random(), rgb.shape).astype(np.float32)
    return np.clip(rgb, 0, 1).astype(np.float32)


class HomographyPairs(Dataset):
    """Pairs (source crop, warped target view) with the homography source -> target.

    Each item is a dict: ``image0``, ``image1`` float [3, H, W] in [0, 1]; ``H`` float [3, 3] mapping
    image0 pixels to image1 pixels; ``valid1`` float [1, H, W], 1 where image1 shows the photo;
    ``index`` (the photo's index in ``files``) and ``M0`` float [3, 3] (photo pixels -> image0 pixels),
    which cached teachers (zippy.train.distill) use to map their points into both views.
    Items are deterministic for (seed, epoch, index): call :meth:`set_epoch` each epoch.
    """

    def __init__(self, files: list[Path], aug: AugmentConfig | None = None, seed: int = 0):
        if not files:
            raise ValueError("HomographyPairs needs at least one image")
        self.files = list(files)
        self.aug = aug or AugmentConfig()
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        a = self.aug
        photo = read_image(self.files[index])
        short = min(photo.shape[:2])
        if a.photo_short_side is None:
            # random rescale so that the crop covers 60-100% of the photo's short side
            s = max(a.height, a.width * min(photo.shape[:2]) / max(photo.shape[:2])) / short
            s *= rng.uniform(1.0, 1.6)
        else:
            s = rng.uniform(*a.photo_short_side) / short
        s = max(s, a.height / photo.shape[0], a.width / photo.shape[1])
        photo = cv2.resize(photo, None, fx=s, fy=s, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        ph, pw = photo.shape[:2]
        ox = rng.integers(0, pw - a.width + 1)
        oy = rng.integers(0, ph - a.height + 1)
        src = photo[oy : oy + a.height, ox : ox + a.width]
        H = random_homography(
            rng,
            a.width,
            a.height,
            max_angle_deg=a.max_angle_deg,
            scale_range=a.scale_range,
            perspective=a.perspective,
            translation=a.translation,
        )
        # photo -> target = H o (photo -> crop)
        shift = np.array([[1, 0, -ox], [0, 1, -oy], [0, 0, 1]], np.float64)
        M = H @ shift
        tgt = cv2.warpPerspective(photo, M, (a.width, a.height), flags=cv2.INTER_LINEAR)
        valid = cv2.warpPerspective(np.ones((ph, pw), np.uint8), M, (a.width, a.height), flags=cv2.INTER_NEAREST)
        img0 = photometric(src, rng, a, strength=0.3)
        img1 = photometric(tgt, rng, a, strength=1.0) * valid[..., None]
        # photo pixels -> image0 pixels (resize with pixel centres at integers, then the crop offset)
        resize = np.array([[s, 0, 0.5 * s - 0.5], [0, s, 0.5 * s - 0.5], [0, 0, 1]], np.float64)
        return {
            "index": torch.tensor(index),
            "M0": torch.from_numpy((shift @ resize).astype(np.float32)),
            "image0": torch.from_numpy(img0).permute(2, 0, 1).contiguous(),
            "image1": torch.from_numpy(np.ascontiguousarray(img1)).permute(2, 0, 1).contiguous(),
            "H": torch.from_numpy(H.astype(np.float32)),
            "valid1": torch.from_numpy(valid.astype(np.float32))[None],
        }
