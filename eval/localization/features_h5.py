"""h5 caches of features (one group per image name) and matches (one group per image pair), in hloc's layout.

Features: the group is the image name ("db/0001.png" is group "0001.png" inside group "db", as hloc stores it)
holding keypoints [N, 2], scores [N], descriptors [D, N] and image_size (:func:`zippy.features.write_h5`).
Matches: the group is hloc's ``names_to_pair(name0, name1)`` ("/" in a name becomes "-", the two joined by "/")
holding ``matches0`` int32 [N0] (-1: unmatched) and ``matching_scores0`` float32 [N0] (1 / (1 + distance)), plus
``distances0`` [N0] (the matcher's distances). So hloc's ``get_keypoints`` / ``get_matches`` and its matchers open
these files. Writes go to the file in place (append mode) one image or pair at a time, so an interrupted run keeps
what it finished; readers check that a key exists and say which file and name are missing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from zippy.features import Features, h5_names, read_h5, write_h5

__all__ = [
    "has_features",
    "has_matches",
    "list_features",
    "pair_key",
    "read_features",
    "read_matches",
    "write_features",
    "write_matches",
]

logger = logging.getLogger(__name__)


def pair_key(name0: str, name1: str) -> str:
    """The h5 group of an ordered image pair: hloc's ``names_to_pair`` ("a/b.png", "c.png" -> "a-b.png/c.png")."""
    if not name0 or not name1:
        raise ValueError(f"image names must be non-empty strings, got {name0!r} and {name1!r}")
    return f"{name0.replace('/', '-')}/{name1.replace('/', '-')}"


def _open(path: str | os.PathLike, mode: str):  # -> h5py.File
    import h5py

    path = Path(path)
    if mode == "r" and not path.is_file():
        raise FileNotFoundError(f"h5 file not found: {path}")
    if mode != "r":
        path.parent.mkdir(parents=True, exist_ok=True)
    return h5py.File(path, mode)


def write_features(path: str | os.PathLike, name: str, features: Features) -> None:
    """Store ``features`` under image ``name`` (replacing an existing entry)."""
    with _open(path, "a") as f:
        write_h5(f, name, features)


def has_features(path: str | os.PathLike, name: str) -> bool:
    """True when ``path`` exists and holds features of ``name``."""
    if not Path(path).is_file():
        return False
    with _open(path, "r") as f:
        g = f.get(name)
        return g is not None and hasattr(g, "keys") and "keypoints" in g


def list_features(path: str | os.PathLike) -> list[str]:
    """Image names stored in a features file ([] when the file does not exist)."""
    if not Path(path).is_file():
        return []
    with _open(path, "r") as f:
        return h5_names(f)


def read_features(path: str | os.PathLike, name: str) -> Features:
    """Features of image ``name``.

    Raises:
        FileNotFoundError: no such file.
        KeyError: the file has no features for ``name``.
    """
    with _open(path, "r") as f:
        return read_h5(f, name)


def write_matches(
    path: str | os.PathLike, name0: str, name1: str, pairs: np.ndarray, distances: np.ndarray, num0: int
) -> None:
    """Store matches of (name0, name1): ``pairs`` int [K,2] (index in name0, index in name1), ``distances`` [K],
    ``num0`` the number of keypoints of name0 (the length of hloc's ``matches0``)."""
    pairs = np.asarray(pairs)
    distances = np.asarray(distances)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or distances.shape != (pairs.shape[0],):
        raise ValueError(
            f"matches must be [K,2] with distances [K], got {list(pairs.shape)} and {list(distances.shape)}"
        )
    if len(pairs) and not (0 <= pairs[:, 0].min() and pairs[:, 0].max() < num0):
        raise ValueError(
            f"match indices of {name0!r} must be in [0, {num0}), got {pairs[:, 0].min()}..{pairs[:, 0].max()}"
        )
    matches0 = np.full(num0, -1, np.int32)
    dist0 = np.full(num0, np.nan, np.float32)
    matches0[pairs[:, 0]] = pairs[:, 1]
    dist0[pairs[:, 0]] = distances
    key = pair_key(name0, name1)
    with _open(path, "a") as f:
        if key in f:
            del f[key]
        g = f.create_group(key)
        g.create_dataset("matches0", data=matches0)
        g.create_dataset("matching_scores0", data=np.where(matches0 >= 0, 1.0 / (1.0 + dist0), 0.0).astype(np.float32))
        g.create_dataset("distances0", data=dist0)


def has_matches(path: str | os.PathLike, name0: str, name1: str) -> bool:
    """True when ``path`` holds matches of (name0, name1) in either order."""
    if not Path(path).is_file():
        return False
    with _open(path, "r") as f:
        return pair_key(name0, name1) in f or pair_key(name1, name0) in f


def read_matches(path: str | os.PathLike, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray]:
    """Matches of (name0, name1) as int64 [K,2] (index in name0, index in name1) and float32 distances [K].

    Pairs stored in the other order are swapped.

    Raises:
        FileNotFoundError: no such file.
        KeyError: the pair is not in the file.
    """
    with _open(path, "r") as f:
        key, swap = pair_key(name0, name1), False
        if key not in f:
            key, swap = pair_key(name1, name0), True
            if key not in f:
                raise KeyError(f"no matches for pair ({name0!r}, {name1!r}) in {path}")
        matches0 = f[key]["matches0"][()].astype(np.int64).reshape(-1)
        dist0 = f[key]["distances0"][()].astype(np.float32).reshape(-1)
    idx = np.flatnonzero(matches0 >= 0)
    m = np.stack([idx, matches0[idx]], 1).astype(np.int64).reshape(-1, 2)
    d = dist0[idx]
    if swap:  # sorted by the first index of the asked order, as matchers return them
        m = m[:, ::-1]
        order = np.argsort(m[:, 0], kind="stable")
        m, d = m[order], d[order]
    return np.ascontiguousarray(m), d
