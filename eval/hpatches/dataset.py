"""Loader of the HPatches sequences layout.

Layout: one folder per sequence (name prefix ``i_`` = illumination, ``v_`` = viewpoint); images
``1.<ext>`` .. ``N.<ext>`` (.ppm, .pgm, .png, .jpg, .jpeg), N >= 2; text files ``H_1_k`` (3x3,
whitespace separated, row-major) mapping pixel coordinates of image 1 to image k. Images may differ in
size; sequences may have fewer than 6 images. Pairs are (1, k) for every k >= 2 present.

A folder is a sequence when it holds an image named ``1.<ext>``. A sequence that cannot be used (no
image 2, missing or malformed ``H_1_k``, unreadable image header, two files for the same index, a gap
in the numbering) is *skipped*: it is listed with the reason in :attr:`HPatchesDataset.skipped`
and logged as a warning, never dropped silently.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["IMAGE_EXTENSIONS", "HPatchesDataset", "HSequence", "load_hpatches", "read_homography", "sequence_kind"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".ppm", ".pgm", ".png", ".jpg", ".jpeg")
_IMAGE_RE = re.compile(r"^(\d+)\.(ppm|pgm|png|jpe?g)$", re.IGNORECASE)


def sequence_kind(name: str) -> str:
    """ "i" (illumination), "v" (viewpoint) or "other" from the HPatches name prefix."""
    if name.startswith("i_"):
        return "i"
    if name.startswith("v_"):
        return "v"
    return "other"


def read_homography(path: str | os.PathLike) -> np.ndarray:
    """Read a 3x3 homography text file; returns float64 [3,3] normalised so that H[2,2] = 1.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not 9 finite numbers, or a singular matrix.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"homography file not found: {path}")
    try:
        values = np.array(path.read_text(encoding="utf-8", errors="strict").split(), dtype=np.float64)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a text file of 9 numbers: {e}") from e
    if values.size != 9 or not np.isfinite(values).all():
        raise ValueError(f"{path} must hold 9 finite numbers (3x3 homography), got {values.size} values")
    H = values.reshape(3, 3)
    if abs(H[2, 2]) < 1e-12 or abs(np.linalg.det(H)) < 1e-12 * max(1.0, float(np.abs(H).max()) ** 3):
        raise ValueError(f"{path} holds a degenerate homography (H[2,2] = 0 or singular)")
    return H / H[2, 2]


@dataclass(frozen=True)
class HSequence:
    """One sequence: ``images[0]`` is image 1, ``homographies[j]`` maps image 1 to ``images[j + 1]``.

    Attributes:
        name: folder name, e.g. "v_graffiti".
        path: the folder.
        images: image files in index order (1..N).
        homographies: float64 [3,3] each, H_1_k for k = 2..N.
        sizes: (width, height) of each image as read from its header.
    """

    name: str
    path: Path
    images: tuple[Path, ...]
    homographies: tuple[np.ndarray, ...]
    sizes: tuple[tuple[int, int], ...]

    @property
    def kind(self) -> str:
        """ "i", "v" or "other"."""
        return sequence_kind(self.name)

    @property
    def num_pairs(self) -> int:
        return len(self.homographies)

    def pairs(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """(0, j, H_1_{j+1}) for every pair: image indices into :attr:`images` and the ground truth."""
        for j, H in enumerate(self.homographies, start=1):
            yield 0, j, H


@dataclass
class HPatchesDataset:
    """Usable sequences of one dataset folder and the skipped ones with their reasons."""

    root: Path
    sequences: list[HSequence]
    skipped: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def num_pairs(self) -> int:
        return sum(s.num_pairs for s in self.sequences)

    @property
    def num_images(self) -> int:
        return sum(len(s.images) for s in self.sequences)

    def describe(self) -> dict[str, object]:
        """JSON-able description: root, sequence names by kind, counts, skipped with reasons."""
        return {
            "root": str(self.root),
            "num_sequences": len(self.sequences),
            "num_pairs": self.num_pairs,
            "num_images": self.num_images,
            "sequences": [s.name for s in self.sequences],
            "num_i": sum(s.kind == "i" for s in self.sequences),
            "num_v": sum(s.kind == "v" for s in self.sequences),
            "skipped": dict(self.skipped),
        }


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header (PIL, lazy: pixel data is not decoded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"unreadable image {path.name}: {e}") from e
    if w < 16 or h < 16:
        raise ValueError(f"image {path.name} is {w}x{h}, smaller than 16 px")
    return int(w), int(h)


def load_sequence(path: str | os.PathLike) -> HSequence:
    """Read one sequence folder (see the module doc).

    Raises:
        ValueError: the folder is not a usable sequence (the message says why).
    """
    path = Path(path)
    by_index: dict[int, Path] = {}
    for f in sorted(path.iterdir()):
        m = _IMAGE_RE.match(f.name)
        if m is None or not f.is_file():
            continue
        idx = int(m.group(1))
        if idx in by_index:
            raise ValueError(f"two images with index {idx}: {by_index[idx].name}, {f.name}")
        by_index[idx] = f
    if 1 not in by_index:
        raise ValueError("no image 1")
    n = max(by_index)
    missing = [k for k in range(1, n + 1) if k not in by_index]
    if missing:
        raise ValueError(f"image numbering has gaps: missing {missing}")
    if n < 2:
        raise ValueError("only image 1, no pair")
    images = tuple(by_index[k] for k in range(1, n + 1))
    homographies = []
    for k in range(2, n + 1):
        try:
            homographies.append(read_homography(path / f"H_1_{k}"))
        except FileNotFoundError as e:
            raise ValueError(f"missing H_1_{k}") from e
    sizes = tuple(_image_size(p) for p in images)
    return HSequence(path.name, path, images, tuple(homographies), sizes)


def _is_sequence_dir(path: Path) -> bool:
    return path.is_dir() and any(_IMAGE_RE.match(f.name) and int(f.name.split(".")[0]) == 1 for f in path.iterdir())


def load_hpatches(
    root: str | os.PathLike,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
) -> HPatchesDataset:
    """Load every sequence folder under ``root`` (sorted by name).

    Args:
        root: folder holding sequence folders (e.g. hpatches-sequences-release), or one sequence folder.
        include: glob patterns on sequence names; when given, only matching sequences are used.
        exclude: glob patterns on sequence names to leave out (applied after ``include``).

    Returns:
        The dataset; broken sequences are in ``skipped`` (name -> reason) and logged.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        NotADirectoryError: ``root`` is a file.
        ValueError: ``root`` holds no sequence folder at all (after filtering).
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"dataset must be a folder of sequences, got a file: {root}")
    candidates = [root] if _is_sequence_dir(root) else sorted(p for p in root.iterdir() if p.is_dir())

    def wanted(name: str) -> bool:
        if include and not any(fnmatch.fnmatchcase(name, g) for g in include):
            return False
        return not any(fnmatch.fnmatchcase(name, g) for g in exclude)

    sequences: list[HSequence] = []
    skipped: dict[str, str] = {}
    for folder in candidates:
        if not wanted(folder.name):
            continue
        if not _is_sequence_dir(folder):
            if any(f.is_file() and f.name.startswith("H_1_") for f in folder.iterdir()):
                skipped[folder.name] = "no image 1"
            else:
                logger.debug("not a sequence folder: %s", folder)
            continue
        try:
            sequences.append(load_sequence(folder))
        except ValueError as e:
            skipped[folder.name] = str(e)
    for name, reason in skipped.items():
        logger.warning("skipping sequence %s: %s", name, reason)
    if not sequences:
        detail = f"; skipped: {skipped}" if skipped else ""
        raise ValueError(
            f"no usable HPatches sequence under {root} (include={include}, exclude={list(exclude)}){detail}"
        )
    return HPatchesDataset(root, sequences, skipped)
