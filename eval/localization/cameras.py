"""Camera intrinsics as plain data: parsing query-list lines, rescaling, conversion to pycolmap.

Intrinsics follow COLMAP's convention (pixel centres at +0.5, so the centre of a w-pixel-wide image
is at x = w / 2), as in hloc / Aachen query lists. Keypoints of :class:`zippy.features.Features`
have pixel centres at integers: add 0.5 before handing them to COLMAP.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["COLMAP_OFFSET", "MODELS", "CameraSpec", "parse_intrinsics_line"]

COLMAP_OFFSET = 0.5  # our pixel centres are at integers, COLMAP's at +0.5

# model name -> number of parameters (the COLMAP models that query lists use)
MODELS = {
    "SIMPLE_PINHOLE": 3,
    "PINHOLE": 4,
    "SIMPLE_RADIAL": 4,
    "RADIAL": 5,
    "OPENCV": 8,
    "FULL_OPENCV": 12,
}


@dataclass(frozen=True)
class CameraSpec:
    """Intrinsics of one image.

    Attributes:
        model: COLMAP model name (a key of :data:`MODELS`).
        width, height: image size in pixels.
        params: COLMAP parameters (focal lengths, principal point, distortion), COLMAP pixel convention.
    """

    model: str
    width: int
    height: int
    params: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"camera model must be one of {sorted(MODELS)}, got {self.model!r}")
        if len(self.params) != MODELS[self.model]:
            raise ValueError(f"{self.model} takes {MODELS[self.model]} parameters, got {len(self.params)}")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")
        if not all(np.isfinite(self.params)) or self.params[0] <= 0:
            raise ValueError(f"camera parameters must be finite with a positive focal length, got {self.params}")

    @classmethod
    def pinhole(cls, K: np.ndarray, width: int, height: int) -> CameraSpec:
        """From a 3x3 matrix K already in COLMAP's pixel convention."""
        K = np.asarray(K, np.float64)
        if K.shape != (3, 3):
            raise ValueError(f"K must be [3,3], got {list(K.shape)}")
        return cls("PINHOLE", int(width), int(height), (K[0, 0], K[1, 1], K[0, 2], K[1, 2]))

    def to_pycolmap(self, camera_id: int | None = None) -> object:
        """A ``pycolmap.Camera`` (with ``camera_id`` when given)."""
        import pycolmap

        kw = {"camera_id": int(camera_id)} if camera_id is not None else {}
        return pycolmap.Camera(model=self.model, width=self.width, height=self.height, params=list(self.params), **kw)

    @classmethod
    def from_pycolmap(cls, camera: object) -> CameraSpec:
        """From a ``pycolmap.Camera``."""
        return cls(
            camera.model.name,  # type: ignore[attr-defined]
            int(camera.width),  # type: ignore[attr-defined]
            int(camera.height),  # type: ignore[attr-defined]
            tuple(float(v) for v in camera.params),  # type: ignore[attr-defined]
        )


def parse_intrinsics_line(line: str) -> tuple[str, CameraSpec]:
    """Parse ``name MODEL width height params...`` (hloc / Aachen query lists).

    Raises:
        ValueError: unknown model, wrong number of parameters or non-numeric fields.
    """
    fields = line.split()
    if len(fields) < 5:
        raise ValueError(f"expected 'name MODEL width height params...', got {line.strip()!r}")
    name, model = fields[0], fields[1].upper()
    try:
        width, height = int(fields[2]), int(fields[3])
        params: Sequence[float] = tuple(float(v) for v in fields[4:])
    except ValueError as e:
        raise ValueError(f"non-numeric intrinsics in {line.strip()!r}") from e
    return name, CameraSpec(model, width, height, tuple(params))
