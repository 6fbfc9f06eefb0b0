"""h5 caches of features (one group per image name) and matches (one group per image pair).

Image names may contain "/" (``db/0001.png``); h5 would read that as nested groups, so keys are the
names with "/" percent-encoded. A pair key is the two encoded names joined by a space. Writes go
to the file in place (append mode) one image or pair at a time, so an interrupted run keeps what
it finished; readers check that a key exists and say which file and name are missing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import quote

import numpy as np

from zippy.features import Features

__all__ = [
    "feature_key",
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


def feature_key(name: str) -> str:
    """The h5 group name of an image name ("/" and "%" percent-encoded)."""
    if not name:
        raise ValueError("image name must be a non-empty string")
    return quote(name, safe="")


def pair_key(name0: str, name1: str) -> str:
    """The h5 group name of an ordered image pair."""
    return f"{feature_key(name0)} {feature_key(name1)}"


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
    key = feature_key(name)
    with _open(path, "a") as f:
        if key in f:
            del f[key]
        g = f.create_group(key)
        for k, v in features.to_dict().items():
            g.create_dataset(k, data=v)
        g.attrs["name"] = name


def has_features(path: str | os.PathLike, name: str) -> bool:
    """True when ``path`` exists and holds features of ``name``."""
    if not Path(path).is_file():
        return False
    with _open(path, "r") as f:
        return feature_key(name) in f


def list_features(path: str | os.PathLike) -> list[str]:
    """Image names stored in a features file ([] when the file does not exist)."""
    if not Path(path).is_file():
        return []
    with _open(path, "r") as f:
        return sorted(str(f[k].attrs["name"]) for k in f)


def read_features(path: str | os.PathLike, name: str) -> Features:
    """Features of image ``name``.

    Raises:
        FileNotFoundError: no such file.
        KeyError: the file has no features for ``name``.
    """
    with _open(path, "r") as f:
        key = feature_key(name)
        if key not in f:
            raise KeyError(f"no features for image {name!r} in {path}")
        g = f[key]
        return Features(
            g["keypoints"][()],
            g["scores"][()],
            g["descriptors"][()],
            tuple(int(v) for v in g["image_size"][()]),  # type: ignore[arg-type]
        )


def write_matches(path: str | os.PathLike, name0: str, name1: str, pairs: np.ndarray, distances: np.ndarray) -> None:
    """Store matches of (name0, name1): ``pairs`` int [K,2] (index in name0, index in name1), ``distances`` [K]."""
    pairs = np.asarray(pairs)
    distances = np.asarray(distances)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or distances.shape != (pairs.shape[0],):
        raise ValueError(
            f"matches must be [K,2] with distances [K], got {list(pairs.shape)} and {list(distances.shape)}"
        )
    key = pair_key(name0, name1)
    with _open(path, "a") as f:
        if key in f:
            del f[key]
        g = f.create_group(key)
        g.create_dataset("matches", data=pairs.astype(np.int64))
        g.create_dataset("distances", data=distances.astype(np.float32))
        g.attrs["name0"], g.attrs["name1"] = name0, name1


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
        m = f[key]["matches"][()].astype(np.int64).reshape(-1, 2)
        d = f[key]["distances"][()].astype(np.float32).reshape(-1)
    return (m[:, ::-1].copy() if swap else m), d
