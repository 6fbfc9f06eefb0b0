"""The one feature record used everywhere, bit packing, and feature files (npz / h5).

Binary descriptors are 256 bits packed MSB-first into uint8 [N, 32] (``np.packbits``), each with
exactly 64 ones for ZippyPoint. Float descriptors (the kp2d baseline, ALIKED, SIFT) are float32
[N, D]. Keypoints are (x, y) float32 with pixel centres at integer coordinates, in the pixels of
the image as it was given to the extractor.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zippy.io import atomic_path

__all__ = ["Features", "load_features", "pack_bits", "save_features", "unpack_bits"]


@dataclass
class Features:
    """Keypoints, scores and descriptors of one image.

    Attributes:
        keypoints: float32 [N, 2], (x, y) in original image pixels, pixel centres at integers.
        scores: float32 [N], detection confidence (higher is better), sorted descending by extractors.
        descriptors: uint8 [N, B] packed bits (B = 32 for 256-bit) or float32 [N, D].
        image_size: (width, height) of the image the keypoints refer to.
        meta: free-form extras (timings, method name); not validated.
    """

    keypoints: np.ndarray
    scores: np.ndarray
    descriptors: np.ndarray
    image_size: tuple[int, int]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        kp, sc, de = self.keypoints, self.scores, self.descriptors
        if not (isinstance(kp, np.ndarray) and kp.ndim == 2 and kp.shape[1] == 2):
            raise ValueError(f"keypoints must be float32 [N,2], got {_describe(kp)}")
        n = kp.shape[0]
        if not (isinstance(sc, np.ndarray) and sc.shape == (n,)):
            raise ValueError(f"scores must be float32 [{n}], got {_describe(sc)}")
        if not (isinstance(de, np.ndarray) and de.ndim == 2 and de.shape[0] == n):
            raise ValueError(f"descriptors must be [{n},D], got {_describe(de)}")
        if de.dtype != np.uint8 and de.dtype != np.float32:
            raise ValueError(f"descriptors must be uint8 (packed bits) or float32, got {_describe(de)}")
        self.keypoints = np.ascontiguousarray(kp, dtype=np.float32)
        self.scores = np.ascontiguousarray(sc, dtype=np.float32)
        self.descriptors = np.ascontiguousarray(de)
        w, h = (int(v) for v in self.image_size)
        self.image_size = (w, h)

    def __len__(self) -> int:
        return int(self.keypoints.shape[0])

    @property
    def is_binary(self) -> bool:
        """True when descriptors are packed bits (uint8)."""
        return self.descriptors.dtype == np.uint8

    @classmethod
    def empty(cls, image_size: tuple[int, int], dim: int = 32, binary: bool = True) -> Features:
        """A record with N = 0 and correctly shaped arrays."""
        dtype = np.uint8 if binary else np.float32
        return cls(np.zeros((0, 2), np.float32), np.zeros((0,), np.float32), np.zeros((0, dim), dtype), image_size)

    def subset(self, index: np.ndarray) -> Features:
        """Features at ``index`` (boolean mask or integer indices)."""
        return Features(
            self.keypoints[index], self.scores[index], self.descriptors[index], self.image_size, dict(self.meta)
        )

    def to_dict(self) -> dict[str, np.ndarray]:
        """Arrays for saving (meta is not included)."""
        return {
            "keypoints": self.keypoints,
            "scores": self.scores,
            "descriptors": self.descriptors,
            "image_size": np.asarray(self.image_size, np.int64),
        }


def _describe(a: Any) -> str:
    if isinstance(a, np.ndarray):
        return f"{a.dtype} {list(a.shape)}"
    return type(a).__name__


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Pack 0/1 bits [N, D] (any integer or bool dtype, D multiple of 8) into uint8 [N, D/8], MSB first."""
    bits = np.asarray(bits)
    if bits.ndim != 2 or bits.shape[1] % 8:
        raise ValueError(f"bits must be [N,D] with D a multiple of 8, got {_describe(bits)}")
    return np.packbits(bits.astype(bool), axis=1)


def unpack_bits(packed: np.ndarray) -> np.ndarray:
    """Unpack uint8 [N, B] into uint8 0/1 bits [N, 8B], MSB first."""
    if not (isinstance(packed, np.ndarray) and packed.dtype == np.uint8 and packed.ndim == 2):
        raise ValueError(f"packed descriptors must be uint8 [N,B], got {_describe(packed)}")
    return np.unpackbits(packed, axis=1)


def save_features(features: Features, path: str | os.PathLike) -> Path:
    """Write features to ``.npz`` or ``.h5`` atomically (temp file, then rename). Returns the path."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".h5", ".hdf5"):
        raise ValueError(f"feature file must end in .npz or .h5, got {path.name!r}")
    with atomic_path(path) as tmp:
        if suffix == ".npz":
            with open(tmp, "wb") as f:
                np.savez(f, **features.to_dict())
        else:
            import h5py

            with h5py.File(tmp, "w") as f:
                for k, v in features.to_dict().items():
                    f.create_dataset(k, data=v)
    return path


def load_features(path: str | os.PathLike) -> Features:
    """Read features written by :func:`save_features`.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a readable feature file (truncated, corrupt, missing arrays, or arrays
            that fail the :class:`Features` checks); the message names the path and the reason.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".h5", ".hdf5"):
        raise ValueError(f"feature file must end in .npz or .h5, got {path.name!r}")
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                d = {k: z[k] for k in z.files}
        else:
            import h5py

            with h5py.File(path, "r") as f:
                d = {k: f[k][()] for k in f.keys()}
        missing = sorted({"keypoints", "scores", "descriptors", "image_size"} - set(d))
        if missing:
            raise ValueError(f"missing arrays {missing}")
        size = np.asarray(d["image_size"]).reshape(-1)
        if size.shape != (2,) or not np.issubdtype(size.dtype, np.integer) or (size < 0).any():
            raise ValueError(f"image_size must be two integers >= 0, got {_describe(size)}")
        return Features(d["keypoints"], d["scores"], d["descriptors"], (int(size[0]), int(size[1])))
    except FileNotFoundError:
        raise
    except Exception as e:  # zipfile / h5py / numpy raise many types for a damaged file
        raise ValueError(f"{path} is not a readable feature file: {type(e).__name__}: {e}") from e
