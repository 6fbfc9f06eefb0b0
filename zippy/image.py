"""Image input: reading files and checking arrays / tensors at the library boundary.

Accepted inputs (DESIGN.md contract):
    * numpy uint8 HxW (grayscale) or HxWx3 (RGB); HxWx4 (RGBA, alpha dropped); uint16 (scaled by
      1/65535); float32/float64 in [0, 1] (same layouts).
    * torch float tensor Bx1xHxW or Bx3xHxW in [0, 1] (1 channel is replicated to 3).
Every image must be at least 16 px on each side. Anything else raises ``ValueError`` that says what
was expected and what came.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

MIN_SIZE = 16

__all__ = ["MIN_SIZE", "read_image", "resize_image", "to_rgb_uint8", "to_tensor"]


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as RGB uint8 [H, W, 3].

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable image, or is smaller than 16 px.
    """
    import cv2

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise ValueError(f"cannot read {path} as an image (not an image file, or corrupt)")
    if img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    elif img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return to_rgb_uint8(img, name=str(path))


def resize_image(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """An [H, W(, C)] array resized to exactly ``width`` x ``height`` with OpenCV: INTER_AREA when the area
    shrinks, INTER_LINEAR otherwise (pixel centres aligned); returned as is when already that size."""
    import cv2

    if image.shape[:2] == (height, width):
        return image
    shrink = height * width < image.shape[0] * image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _shape_str(a: Any) -> str:
    if hasattr(a, "dtype") and hasattr(a, "shape"):
        return f"{str(a.dtype).replace('torch.', '')} {list(a.shape)}"
    return type(a).__name__


def to_rgb_uint8(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Convert an accepted numpy image (see module doc) to RGB uint8 [H, W, 3], validating it."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name} must be a numpy array HxW or HxWx3, got {type(image).__name__}")
    img = image
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (3, 4))):
        raise ValueError(f"{name} must be HxW (gray), HxWx3 (RGB) or HxWx4 (RGBA), got {_shape_str(image)}")
    h, w = img.shape[:2]
    if h < MIN_SIZE or w < MIN_SIZE:
        raise ValueError(f"{name} must be at least {MIN_SIZE}x{MIN_SIZE} px, got {w}x{h} ({_shape_str(image)})")
    if img.dtype == np.uint8:
        out = img
    elif img.dtype == np.uint16:
        out = (img.astype(np.float32) * (255.0 / 65535.0) + 0.5).astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        if not np.isfinite(img).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        lo, hi = float(img.min()), float(img.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"float {name} must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}]")
        out = (img * 255.0 + 0.5).astype(np.uint8)
    else:
        raise ValueError(f"{name} must be uint8, uint16 or float in [0,1], got {_shape_str(image)}")
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    elif out.shape[2] == 4:
        out = out[:, :, :3]
    return np.ascontiguousarray(out)


def to_tensor(image: Any) -> Any:
    """Turn an accepted image (numpy or tensor, see module doc) into a float32 tensor Bx3xHxW in [0, 1].

    Returns:
        torch.Tensor float32 [B, 3, H, W] (B = 1 for numpy input).
    """
    import torch

    if isinstance(image, np.ndarray):
        rgb = to_rgb_uint8(image)
        return torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div_(255.0)
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"image must be a numpy array or a torch tensor, got {type(image).__name__}")
    t = image
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or t.shape[1] not in (1, 3):
        raise ValueError(f"image tensor must be Bx1xHxW or Bx3xHxW, got {_shape_str(image)}")
    if not t.is_floating_point():
        raise ValueError(f"image tensor must be float in [0,1], got {_shape_str(image)}")
    if t.shape[0] == 0:
        raise ValueError(f"image tensor batch is empty, got {_shape_str(image)}")
    h, w = t.shape[-2:]
    if h < MIN_SIZE or w < MIN_SIZE:
        raise ValueError(f"image must be at least {MIN_SIZE}x{MIN_SIZE} px, got {w}x{h} ({_shape_str(image)})")
    if not torch.isfinite(t).all():
        raise ValueError("image tensor contains NaN or infinite values")
    if float(t.min()) < 0.0 or float(t.max()) > 1.0:
        raise ValueError(f"image tensor must be in [0, 1], got values in [{float(t.min()):.3g}, {float(t.max()):.3g}]")
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    return t.float().contiguous()
