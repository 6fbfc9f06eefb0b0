"""Image pairs to match: exhaustive, from known poses, by bag-of-words retrieval (the vocabulary of
:mod:`zippy.vocabulary`), or by a match-count retrieval.

Pairs files hold one ``name0 name1`` per line (hloc's format).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zippy_eval.localization.poses import Pose

__all__ = [
    "pairs_exhaustive",
    "pairs_from_match_count",
    "pairs_from_poses",
    "pairs_from_retrieval",
    "pairs_to",
    "read_pairs",
    "unordered_pairs",
    "write_pairs",
]

logger = logging.getLogger(__name__)


def pairs_exhaustive(names: Sequence[str]) -> list[tuple[str, str]]:
    """All unordered pairs (i < j) of ``names``, in order."""
    names = list(names)
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]


def pairs_to(queries: Sequence[str], db: Sequence[str]) -> list[tuple[str, str]]:
    """Every query with every database image (query first)."""
    return [(q, d) for q in queries for d in db if q != d]


def pairs_from_poses(
    poses: Mapping[str, Pose], num_neighbors: int = 10, max_angle_deg: float = 90.0
) -> list[tuple[str, str]]:
    """For each image, its ``num_neighbors`` closest cameras among those viewing within ``max_angle_deg``.

    Args:
        poses: known cam_from_world poses by image name.
        num_neighbors: neighbours per image.
        max_angle_deg: maximum angle between optical axes.

    Returns:
        Unordered pairs without duplicates, each as (earlier name, later name) in sorted order.
    """
    if num_neighbors < 1:
        raise ValueError(f"num_neighbors must be >= 1, got {num_neighbors}")
    names = sorted(poses)
    if len(names) < 2:
        return []
    centers = np.stack([poses[n].center for n in names])
    axes = np.stack([poses[n].R[2] for n in names])  # optical axis in world
    dist = np.linalg.norm(centers[:, None] - centers[None], axis=-1)
    cos = np.clip(axes @ axes.T, -1.0, 1.0)
    dist[np.degrees(np.arccos(cos)) > max_angle_deg] = np.inf
    np.fill_diagonal(dist, np.inf)
    out: set[tuple[str, str]] = set()
    for i in range(len(names)):
        for j in np.argsort(dist[i], kind="stable")[:num_neighbors]:
            if np.isfinite(dist[i, j]):
                a, b = sorted((names[i], names[int(j)]))
                out.add((a, b))
    return sorted(out)


def pairs_from_retrieval(
    queries: Sequence[str],
    db: Sequence[str],
    descriptors: Callable[[str], np.ndarray],
    vocabulary: Any = None,
    num_neighbors: int = 10,
) -> list[tuple[str, str]]:
    """For each query, the ``num_neighbors`` database images with the best bag-of-words scores (hloc's
    ``pairs_from_retrieval`` with a DBoW2-style vocabulary instead of a global descriptor).

    Args:
        queries: query image names.
        db: database image names (a query in it is never its own pair).
        descriptors: name -> packed binary descriptors uint8 [N, 32] of that image.
        vocabulary: a :class:`zippy.vocabulary.Vocabulary` (None: the shipped one).
        num_neighbors: pairs per query (fewer when fewer database images share a word with it).

    Returns:
        (query, database image) pairs, per query best first.
    """
    from zippy.vocabulary import Database, Vocabulary

    if num_neighbors < 1:
        raise ValueError(f"num_neighbors must be >= 1, got {num_neighbors}")
    voc = Vocabulary.load() if vocabulary is None else vocabulary
    database = Database(voc)
    db = list(db)
    for name in db:
        database.add(descriptors(name))
    out = []
    for q in queries:
        res = database.query(descriptors(q), num_neighbors + 1)
        found = [db[int(i)] for i in res.ids if db[int(i)] != q]
        out += [(q, d) for d in found[:num_neighbors]]
    return out


def unordered_pairs(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Each unordered pair once, as (smaller name, larger name), sorted; self pairs dropped."""
    return sorted({(min(a, b), max(a, b)) for a, b in pairs if a != b})


def pairs_from_match_count(
    queries: Sequence[str],
    db: Sequence[str],
    count_matches: Callable[[str, str], int],
    num_neighbors: int = 10,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[str, str]]:
    """For each query, the ``num_neighbors`` database images with the most matches.

    ``count_matches(query, db_name)`` should be cheap (e.g. mutual nearest neighbours of the few hundred
    strongest keypoints); with bitwise matching this is a usable retrieval for a few thousand images.
    """
    if num_neighbors < 1:
        raise ValueError(f"num_neighbors must be >= 1, got {num_neighbors}")
    out = []
    for q in queries:
        candidates = [d for d in db if d != q]
        counts = np.array([count_matches(q, d) for d in candidates])
        for j in np.argsort(-counts, kind="stable")[:num_neighbors]:
            if counts[j] > 0:
                out.append((q, candidates[int(j)]))
        if progress is not None:
            progress(1)
    return out


def write_pairs(pairs: Sequence[tuple[str, str]], path: str | os.PathLike) -> Path:
    """Write ``name0 name1`` lines atomically. Returns the path."""
    from zippy_eval.results import write_text

    for a, b in pairs:
        if any(c.isspace() for c in a + b):
            raise ValueError(f"image names must not contain whitespace, got {a!r}, {b!r}")
    return write_text(path, "".join(f"{a} {b}\n" for a, b in pairs))


def read_pairs(path: str | os.PathLike) -> list[tuple[str, str]]:
    """Read a pairs file (blank lines and ``#`` comments skipped).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line without exactly two names.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pairs file not found: {path}")
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 2:
            raise ValueError(f"{path}:{i}: expected 'name0 name1', got {line!r}")
        out.append((fields[0], fields[1]))
    return out
