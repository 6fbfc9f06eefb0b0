"""The one feature record used everywhere, bit packing, and feature files (npz / h5).

Binary descriptors are 256 bits packed MSB-first into uint8 [N, 32] (``np.packbits``), each with
exactly 64 ones for ZippyPoint. Float descriptors (the kp2d baseline, ALIKED, SIFT) are float32
[N, D]. Keypoints are (x, y) float32 with pixel centres at integer coordinates, in the pixels of
the image as it was given to the extractor.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zippy.io import atomic_path

__all__ = [
    "Features",
    "compare_features",
    "h5_names",
    "load_features",
    "pack_bits",
    "read_h5",
    "save_features",
    "unpack_bits",
    "write_h5",
]


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
        """Features at ``index`` (boolean mask or integer indices). Per-keypoint extras in ``meta`` (numpy arrays
        of length N, such as the extractor's ``octave``) are indexed as well."""
        n = len(self)
        meta = {
            k: v[index] if isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[0] == n else v
            for k, v in self.meta.items()
        }
        return Features(self.keypoints[index], self.scores[index], self.descriptors[index], self.image_size, meta)

    def to_cv_keypoints(self, size: float = 31.0) -> list[Any]:
        """The keypoints as OpenCV ``cv2.KeyPoint`` objects, in the fields ORB-SLAM and OpenCV matchers read.

        * ``pt``: (x, y), pixel centres at integers (OpenCV's convention too).
        * ``response``: the detection score.
        * ``octave``: the pyramid level, 0 for the largest scale of ``zippy.load(..., scales=...)`` (with one
          scale, 0 for all); from ``meta["octave"]`` when the extractor recorded it, else 0.
        * ``size``: ``size`` (default 31, ORB's patch diameter) divided by the level's scale relative to the
          largest one (``meta["octave_scales"]``), as ORB's size grows by its scale factor per level.
        * ``angle``: -1, documented "not computed": the network gives no orientation (its descriptors are not
          rotation-normalized), so SLAM code's rotation-consistency check should be switched off.
        * ``class_id``: the keypoint's index in this record.

        The descriptors (``self.descriptors``, uint8 [N, 32]) go with them unchanged into
        ``cv2.BFMatcher(cv2.NORM_HAMMING)`` or ``cv2.drawKeypoints``.
        """
        import cv2

        n = len(self)
        octave = self.meta.get("octave")
        if not (isinstance(octave, np.ndarray) and octave.shape == (n,)):
            octave = np.zeros(n, np.int32)
        scales = [float(v) for v in self.meta.get("octave_scales", [1.0])]
        if len(scales) <= int(octave.max(initial=0)):
            raise ValueError(f"meta['octave'] goes up to {int(octave.max())} but meta['octave_scales'] has {scales}")
        rel = np.asarray(scales, np.float64) / scales[0]
        return [
            cv2.KeyPoint(float(x), float(y), float(size / rel[o]), -1.0, float(r), int(o), int(i))
            for i, ((x, y), r, o) in enumerate(zip(self.keypoints.tolist(), self.scores.tolist(), octave.tolist()))
        ]

    def to_dict(self, layout: str = "zippy") -> dict[str, Any]:
        """The arrays in the layout a consumer expects (``meta`` is not included).

        Args:
            layout: "zippy" (default): numpy keypoints float32 [N, 2], scores float32 [N], descriptors [N, B] or
                [N, D], image_size int64 [2] (w, h), as saved by :func:`save_features`.
                "hloc": the same with descriptors transposed to [D, N] (packed bits stay uint8 [B, N]), as
                hloc's feature files hold them (see :func:`write_h5`).
                "lightglue": batched torch tensors as LightGlue takes them: keypoints float32 [1, N, 2],
                keypoint_scores [1, N], descriptors float32 [1, N, D], image_size float32 [1, 2] (w, h). Packed
                bits are unpacked to D = 8B values +-1/sqrt(D): unit vectors whose dot product is 1 - 2 h / D for
                Hamming distance h, so L2 / cosine matching ranks as Hamming does.

        Raises:
            ValueError: an unknown layout.
        """
        if layout == "zippy":
            return {
                "keypoints": self.keypoints,
                "scores": self.scores,
                "descriptors": self.descriptors,
                "image_size": np.asarray(self.image_size, np.int64),
            }
        if layout == "hloc":
            return {**self.to_dict(), "descriptors": np.ascontiguousarray(self.descriptors.T)}
        if layout == "lightglue":
            import torch

            desc = self.descriptors
            if self.is_binary:
                bits = np.unpackbits(desc, axis=1).astype(np.float32)
                desc = (2.0 * bits - 1.0) / np.sqrt(max(bits.shape[1], 1))
            return {
                "keypoints": torch.from_numpy(self.keypoints.copy())[None],
                "keypoint_scores": torch.from_numpy(self.scores.copy())[None],
                "descriptors": torch.from_numpy(np.ascontiguousarray(desc, np.float32))[None],
                "image_size": torch.tensor([self.image_size], dtype=torch.float32),
            }
        raise ValueError(f"unknown layout {layout!r}; choose one of ['zippy', 'hloc', 'lightglue']")


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


# ----------------------------------------------------------------------------------------------- hloc-style h5


def _h5_group_name(name: str) -> str:
    if not isinstance(name, str) or not name or name.startswith("/") or name.endswith("/"):
        raise ValueError(f"image name must be a non-empty relative name such as 'db/0001.png', got {name!r}")
    return name


def write_h5(h5file: Any, name: str, features: Features) -> None:
    """Store ``features`` in an open h5py file under the group ``name`` (the image name; "/" makes nested groups),
    replacing an existing entry, in hloc's layout: keypoints float32 [N, 2], scores [N], descriptors [D, N]
    (packed bits: uint8 [B, N]), image_size [2] (w, h). hloc's readers (``hloc.utils.io.get_keypoints``, its
    matchers' datasets) open such files; :func:`read_h5` reads them back."""
    key = _h5_group_name(name)
    if key in h5file:
        del h5file[key]
    group = h5file.create_group(key)
    for k, v in features.to_dict(layout="hloc").items():
        group.create_dataset(k, data=v)


def read_h5(h5file: Any, name: str) -> Features:
    """Features of image ``name`` from an open h5py file in the layout of :func:`write_h5` (also hloc's own files
    of float descriptors [D, N]).

    Raises:
        KeyError: the file has no features of ``name``.
    """
    key = _h5_group_name(name)
    group = h5file.get(key)
    if group is None or not hasattr(group, "keys") or "keypoints" not in group:
        raise KeyError(f"no features of image {name!r} in {h5file.filename}")
    kp = group["keypoints"][()]
    desc = group["descriptors"][()].T
    scores = group["scores"][()] if "scores" in group else np.ones(len(kp), np.float32)
    w, h = (int(v) for v in group["image_size"][()])
    if desc.dtype != np.uint8:
        desc = desc.astype(np.float32)
    return Features(kp.astype(np.float32), scores.astype(np.float32), desc, (w, h))


def h5_names(h5file: Any) -> list[str]:
    """Image names held by an open h5py file of :func:`write_h5` (the groups with keypoints), sorted."""
    names: list[str] = []

    def visit(path: str, obj: Any) -> None:
        if path.endswith("/keypoints") or path == "keypoints":
            names.append(path.rpartition("/")[0])

    h5file.visititems(visit)
    return sorted(n for n in names if n)


def compare_features(ref: Sequence[Features], test: Sequence[Features], tol_px: float = 0.05) -> dict[str, float]:
    """Agreement of two extractors (e.g. two engines of one network) on the same images.

    Args:
        ref, test: features of the same images, in the same order.
        tol_px: a reference keypoint is found when a test keypoint lies within this distance.

    Returns:
        ``keypoints_found``: fraction of reference keypoints with a test keypoint within ``tol_px``;
        ``descriptors_identical``: fraction of those found whose descriptors are identical (binary: equal bytes;
        float: cosine >= 0.999); ``n_reference``: reference keypoints in total.
    """
    if len(ref) != len(test):
        raise ValueError(f"compare_features needs features of the same images, got {len(ref)} and {len(test)}")
    n = matched = same = 0
    for a, b in zip(ref, test):
        n += len(a)
        if not len(a) or not len(b):
            continue
        d = np.linalg.norm(a.keypoints[:, None] - b.keypoints[None], axis=-1)
        j = d.argmin(1)
        ok = d[np.arange(len(a)), j] < tol_px
        matched += int(ok.sum())
        da, db = a.descriptors[ok], b.descriptors[j[ok]]
        if a.is_binary:
            same += int(np.all(da == db, axis=1).sum())
        else:
            cos = (da * db).sum(1) / np.maximum(np.linalg.norm(da, axis=1) * np.linalg.norm(db, axis=1), 1e-12)
            same += int((cos >= 0.999).sum())
    return {
        "keypoints_found": matched / max(n, 1),
        "descriptors_identical": same / max(matched, 1),
        "n_reference": float(n),
    }
