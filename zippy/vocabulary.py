"""Binary bag-of-words vocabulary and inverted-file database, after DBoW2 (Galvez-Lopez & Tardos, 2012).

For place recognition, image retrieval and loop closure with packed binary descriptors (uint8 [N, 32],
256 bits; zippy's have exactly 64 ones, ORB's any number). numpy + numba, never torch.

* :meth:`Vocabulary.train`: hierarchical k-majority clustering (k-medians in Hamming space): k-means++
  seeding, assignment by Hamming distance (first centre on ties), each centre bit updated by majority vote
  of its members (a bit is set when at least half of them have it, DBoW2's rule), repeated until the
  assignment stops changing; then each cluster is split the same way, down to ``levels`` levels, so at most
  ``k ** levels`` leaves (the words). A node whose descriptors are all equal is a leaf.
* Weights: TF-IDF, ``idf_w = log(N_images / n_w)`` with ``n_w`` the training images holding word w
  (``n_w = 0`` counts as 1). A BoW vector holds ``tf_w * idf_w`` per word, L1-normalized.
* Score: DBoW2's L1 score ``s = 1 - 0.5 * |v1 - v2|_1`` in [0, 1], equal to the sum over shared words of
  ``min(v1_w, v2_w)`` for L1-normalized vectors (how :class:`Database` computes it).
* Direct index: for each feature, its node at a chosen depth of the tree (DBoW2's FeatureVector):
  features of two images are matched only within equal nodes (:func:`match_direct`), as ORB-SLAM does.
* :class:`Database`: inverted file (word -> images and their values) with add / query / save / load.

File format (``.npz``, read with ``allow_pickle=False``): ``format`` (the string ``zippy-vocabulary``),
``version`` (int, 1), ``centres`` uint8 [M, 32] (node 0 is the root, its row unused), ``parents`` int32 [M]
(-1 for the root; nodes in breadth-first order, so every node's children are contiguous and ``parents`` is
non-decreasing), ``weights`` float32 [W] (idf of each word; words are the leaves in node order), ``meta``
(a JSON string: k, levels, the descriptor model it was trained for and its weights sha256, training data).

Example::

    from zippy.vocabulary import Vocabulary, Database
    voc = Vocabulary.load()                      # the shipped one (weights/zippypoint_vocab.npz)
    db = Database(voc)
    for f in frames:
        db.add(f.descriptors)
    result = db.query(query.descriptors, n=5)    # result.ids int64 [5], result.scores float32 [5]
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import tempfile
import time
import warnings
import zipfile
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zippy import _vocab_kernels as K

__all__ = [
    "DEFAULT_VOCABULARY",
    "BowVector",
    "Database",
    "QueryResult",
    "Vocabulary",
    "match_direct",
]

logger = logging.getLogger(__name__)

FORMAT = "zippy-vocabulary"
DB_FORMAT = "zippy-bow-database"
VERSION = 1
DEFAULT_VOCABULARY = "zippypoint_vocab.npz"  # in the shipped weights folder (zippy.weights.weights_dir)
_BYTES = 32  # 256-bit descriptors
_PENDING = 64  # database entries scored directly before they are merged into the inverted file


# ------------------------------------------------------------------------------------------- input checks
def _describe(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return f"{x.dtype} {list(x.shape)}"
    return type(x).__name__


def _check_descriptors(d: Any, name: str = "descriptors") -> np.ndarray:
    if not (isinstance(d, np.ndarray) and d.dtype == np.uint8 and d.ndim == 2 and d.shape[1] == _BYTES):
        raise ValueError(f"{name} must be packed binary descriptors uint8 [N,{_BYTES}], got {_describe(d)}")
    return np.ascontiguousarray(d)


def _words_view(d: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(d).view(np.uint64)


def _atomic_write_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _read_npz(path: Path, kind: str, keys: set[str]) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"{kind} file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path} is not a readable {kind} file (corrupt or not .npz): {e}") from e
    missing = keys - set(data)
    if missing:
        raise ValueError(f"{path} is not a {kind} file: missing {sorted(missing)}")
    return data


def _json_array(obj: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(json.dumps(obj, sort_keys=True).encode(), dtype=np.uint8)


def _json_from(a: np.ndarray, path: Path) -> dict[str, Any]:
    try:
        return json.loads(a.tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable meta: {e}") from e


# ------------------------------------------------------------------------------------------- BoW vectors
@dataclass(frozen=True)
class BowVector:
    """A sparse bag-of-words vector.

    Attributes:
        words: int32 [n] word ids, sorted, unique.
        values: float32 [n] TF-IDF values, summing to 1 (L1-normalized); empty for an image without words.
    """

    words: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return int(self.words.shape[0])

    def score(self, other: BowVector) -> float:
        """DBoW2's L1 score ``1 - 0.5 * |v1 - v2|_1`` (0: no shared word, 1: equal vectors)."""
        _, ia, ib = np.intersect1d(self.words, other.words, assume_unique=True, return_indices=True)
        return float(np.minimum(self.values[ia], other.values[ib]).astype(np.float64).sum())

    def dense(self, num_words: int) -> np.ndarray:
        """The dense float32 [num_words] vector."""
        out = np.zeros(num_words, np.float32)
        out[self.words] = self.values
        return out


def _bow(words: np.ndarray, weights: np.ndarray) -> BowVector:
    """TF-IDF BoW vector of a list of word ids (one per feature), L1-normalized."""
    if words.size == 0:
        return BowVector(np.zeros(0, np.int32), np.zeros(0, np.float32))
    uniq, counts = np.unique(words, return_counts=True)
    v = counts.astype(np.float64) * weights[uniq].astype(np.float64)
    keep = v > 0
    uniq, v = uniq[keep], v[keep]
    total = v.sum()
    if total <= 0:
        return BowVector(np.zeros(0, np.int32), np.zeros(0, np.float32))
    return BowVector(uniq.astype(np.int32), (v / total).astype(np.float32))


# ------------------------------------------------------------------------------------------- clustering
def centre_bits(counts: np.ndarray, sizes: np.ndarray, ones: int | None = None) -> np.ndarray:
    """New centres from member bit counts: uint8 [C, B] packed.

    Args:
        counts: int [C, 8B] members having each bit; sizes: int [C] members (> 0).
        ones: None: majority vote (a bit is set when ``2 * count >= size``, DBoW2's rule). An int: the
            ``ones`` most frequent bits (ties: the lower bit index), for descriptors of constant weight such
            as zippy's 64 of 256: the centre stays in the descriptors' space.
    """
    if ones is None:
        bits = 2 * counts >= sizes[:, None]
    else:
        top = np.argsort(-counts, axis=1, kind="stable")[:, :ones]
        bits = np.zeros(counts.shape, bool)
        np.put_along_axis(bits, top, True, axis=1)
    return np.packbits(bits, axis=1)


def _centre_ones(allx: np.ndarray, centre_ones: int | str | None) -> int | None:
    if centre_ones is None:
        return None
    if centre_ones == "auto":
        pop = np.unpackbits(allx[: 1 << 16], axis=1).sum(1)
        return int(pop[0]) if np.all(pop == pop[0]) and 0 < pop[0] < 8 * _BYTES else None
    if isinstance(centre_ones, (int, np.integer)) and 0 < centre_ones < 8 * _BYTES:
        return int(centre_ones)
    raise ValueError(f"centre_ones must be None, 'auto' or an int in (0, {8 * _BYTES}), got {centre_ones!r}")


def kmajority(
    packed: np.ndarray, k: int, rng: np.random.Generator, max_iters: int = 50, ones: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One level of k-majority clustering (k-medians in Hamming space).

    k-means++ seeding (the first centre uniformly at random, each next one with probability proportional
    to the squared distance to the nearest chosen centre; fewer than k when fewer distinct descriptors),
    then assignment (nearest centre, the first on ties) and majority-vote update (:func:`centre_bits`)
    until the assignment stops changing or ``max_iters``. Clusters left empty are dropped.

    Args:
        packed: uint8 [N, B] descriptors, N >= 1.
        k: clusters wanted (>= 2).
        rng: random generator (seeding).
        max_iters: assignment / update rounds at most.
        ones: centre rule of :func:`centre_bits` (None: majority).

    Returns:
        centres uint8 [C, B] (C <= k) and labels int32 [N] in 0..C-1.
    """
    n = packed.shape[0]
    words = _words_view(packed)
    first = int(rng.integers(n))
    chosen = [first]
    mind = np.full(n, 1 << 30, np.int32)
    K.distances_to(words, words, first, mind)
    while len(chosen) < k:
        p = mind.astype(np.float64) ** 2
        total = p.sum()
        if total <= 0:
            break  # every descriptor equals a chosen centre
        nxt = int(rng.choice(n, p=p / total))
        chosen.append(nxt)
        K.distances_to(words, words, nxt, mind)
    centres = packed[chosen].copy()
    labels = None
    for _ in range(max_iters):
        new, _ = K.assign(words, _words_view(centres))
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        counts, sizes = K.bit_counts(packed, labels, centres.shape[0])
        alive = sizes > 0
        centres = centre_bits(counts[alive], sizes[alive], ones)
        if not alive.all():  # relabel without the empty clusters
            labels = None
    if labels is None:
        labels, _ = K.assign(words, _words_view(centres))
    return centres, labels


@dataclass(frozen=True)
class QueryResult:
    """Top database entries of a query, best first.

    Attributes:
        ids: int64 [n] entry ids (the return values of :meth:`Database.add`).
        scores: float32 [n] L1 scores in [0, 1].
    """

    ids: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return int(self.ids.shape[0])


# ------------------------------------------------------------------------------------------- vocabulary
class Vocabulary:
    """A vocabulary tree of binary words with TF-IDF weights.

    Build with :meth:`train` or :meth:`load`. Nodes are in breadth-first order, node 0 the root.

    Attributes:
        centres: uint8 [M, 32] node centres (row 0, the root, unused).
        parents: int32 [M] parent node (-1 for the root).
        weights: float32 [W] idf of each word (words are the leaves in node order).
        meta: k, levels, the descriptor model it was trained for, training data and time.
    """

    def __init__(self, centres: np.ndarray, parents: np.ndarray, weights: np.ndarray, meta: dict[str, Any]):
        centres = np.ascontiguousarray(centres)
        parents = np.asarray(parents)
        weights = np.asarray(weights)
        m = centres.shape[0] if centres.ndim == 2 else -1
        if not (centres.dtype == np.uint8 and centres.ndim == 2 and centres.shape[1] == _BYTES and m >= 1):
            raise ValueError(f"centres must be uint8 [M,{_BYTES}] with M >= 1, got {_describe(centres)}")
        if not (parents.shape == (m,) and np.issubdtype(parents.dtype, np.integer)):
            raise ValueError(f"parents must be integer [{m}], got {_describe(parents)}")
        parents = parents.astype(np.int32)
        if parents[0] != -1 or (m > 1 and (np.any(parents[1:] < 0) or np.any(parents[1:] >= np.arange(1, m)))):
            raise ValueError("parents must be -1 for node 0 and point to an earlier node for every other node")
        if m > 1 and np.any(np.diff(parents[1:]) < 0):
            raise ValueError("parents must be non-decreasing (nodes in breadth-first order)")
        n_children = np.bincount(parents[1:], minlength=m).astype(np.int32)
        first_child = np.zeros(m, np.int32)
        if m > 1:
            starts = np.searchsorted(parents[1:], np.arange(m), side="left").astype(np.int32) + 1
            first_child = np.where(n_children > 0, starts, 0).astype(np.int32)
        leaves = np.flatnonzero(n_children == 0)
        if m == 1:
            raise ValueError("a vocabulary needs at least one word below the root")
        if not (weights.shape == (leaves.size,) and weights.dtype.kind == "f"):
            raise ValueError(f"weights must be float [{leaves.size}] (one per word), got {_describe(weights)}")
        if not np.all(np.isfinite(weights)) or np.any(weights < 0):
            raise ValueError("weights must be finite and >= 0")
        depth = np.zeros(m, np.int32)
        while True:  # one vectorized pass per level (parents[i] < i, so this ends)
            new = depth.copy()
            new[1:] = depth[parents[1:]] + 1
            if np.array_equal(new, depth):
                break
            depth = new
        word_of_node = np.full(m, -1, np.int32)
        word_of_node[leaves] = np.arange(leaves.size, dtype=np.int32)
        self.centres = centres
        self.parents = parents
        self.weights = weights.astype(np.float32)
        self.meta = dict(meta)
        self._words = _words_view(centres)
        self._first_child = first_child
        self._n_children = n_children
        self._depth = depth
        self._word_of_node = word_of_node
        self._leaves = leaves.astype(np.int32)

    # ------------------------------------------------------------------------------------ properties
    @property
    def num_words(self) -> int:
        """Number of words (leaves)."""
        return int(self._leaves.size)

    @property
    def num_nodes(self) -> int:
        """Number of nodes, root included."""
        return int(self.centres.shape[0])

    @property
    def k(self) -> int:
        """Branching factor it was trained with."""
        return int(self.meta.get("k", self._n_children.max()))

    @property
    def levels(self) -> int:
        """Depth it was trained with (the deepest leaf is at most this deep)."""
        return int(self.meta.get("levels", self._depth.max()))

    @property
    def fingerprint(self) -> str:
        """sha256 (16 hex digits) of the tree and weights: equal fingerprints quantize identically."""
        h = hashlib.sha256()
        for a in (self.centres, self.parents, self.weights):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]

    def depth_of(self, nodes: np.ndarray) -> np.ndarray:
        """Depth of node ids (root 0): int32 like ``nodes``."""
        return self._depth[np.asarray(nodes)]

    def __repr__(self) -> str:
        model = self.meta.get("model", "?")
        return f"Vocabulary(k={self.k}, levels={self.levels}, words={self.num_words}, model={model!r})"

    # ------------------------------------------------------------------------------------ transform
    def quantize(self, descriptors: np.ndarray, direct_level: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Word of every descriptor and its node at depth ``direct_level`` (the direct index).

        Args:
            descriptors: uint8 [N, 32].
            direct_level: depth from the root (1 = the first split) of the direct-index nodes; 0 gives
                the root for every feature. A leaf shallower than it is its own node.

        Returns:
            words int32 [N] in [0, num_words), nodes int32 [N].
        """
        d = _check_descriptors(descriptors)
        if not (isinstance(direct_level, (int, np.integer)) and direct_level >= 0):
            raise ValueError(f"direct_level must be an int >= 0, got {direct_level!r}")
        if d.shape[0] == 0:
            return np.zeros(0, np.int32), np.zeros(0, np.int32)
        return K.descend(
            _words_view(d), self._words, self._first_child, self._n_children, self._word_of_node,
            self._depth, int(direct_level),
        )  # fmt: skip

    def transform(self, descriptors: np.ndarray) -> BowVector:
        """The L1-normalized TF-IDF BoW vector of an image's descriptors (uint8 [N, 32]; N = 0: empty)."""
        words, _ = self.quantize(descriptors)
        return _bow(words, self.weights)

    def transform_direct(self, descriptors: np.ndarray, direct_level: int = 2) -> tuple[BowVector, np.ndarray]:
        """BoW vector and direct-index nodes (int32 [N], see :meth:`quantize`) in one descent."""
        words, nodes = self.quantize(descriptors, direct_level)
        return _bow(words, self.weights), nodes

    def score(self, a: BowVector, b: BowVector) -> float:
        """DBoW2's L1 score of two BoW vectors (see :meth:`BowVector.score`)."""
        return a.score(b)

    # ------------------------------------------------------------------------------------ model check
    def check_model(self, model: str | None, sha256: str | None = None) -> bool:
        """Warn (UserWarning) when descriptors of ``model`` / weights ``sha256`` differ from the training ones.

        Returns:
            True when they match (or the vocabulary records no model), False after warning.
        """
        want, want_sha = self.meta.get("model"), self.meta.get("model_sha256")
        if want is None:
            return True
        if model != want or (sha256 is not None and want_sha is not None and sha256 != want_sha):
            warnings.warn(
                f"this vocabulary was trained for {want!r} descriptors (weights sha256 {str(want_sha)[:12]}), "
                f"used with {model!r} (sha256 {str(sha256)[:12]}): retrieval quality may drop; "
                "train one for these descriptors with `zippy vocab train`",
                UserWarning,
                stacklevel=2,
            )
            return False
        return True

    def check_extractor(self, extractor: Any) -> bool:
        """:meth:`check_model` for a :class:`zippy.extractor.Extractor` (its weights file's name and sha256)."""
        path = getattr(extractor, "weights_path", None)
        name = Path(path).stem if path is not None else getattr(extractor, "name", None)
        return self.check_model(name, getattr(extractor, "weights_sha256", None))

    # ------------------------------------------------------------------------------------ training
    @classmethod
    def train(
        cls,
        descriptors: Sequence[np.ndarray],
        k: int = 10,
        levels: int = 5,
        *,
        max_iters: int = 50,
        max_descriptors: int | None = None,
        seed: int = 0,
        centre_ones: int | str | None = "auto",
        meta: dict[str, Any] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Vocabulary:
        """Train a vocabulary: hierarchical k-majority clustering, then idf weights.

        Args:
            descriptors: one uint8 [N_i, 32] array per training image (the images give the idf).
            k: branching factor (>= 2).
            levels: depth of the tree (>= 1); at most ``k ** levels`` words.
            max_iters: k-majority rounds per node at most.
            max_descriptors: cluster a random subset of at most this many descriptors (the idf still uses
                all of them); None: all.
            seed: random seed (seeding and subsampling); the same inputs and seed give the same vocabulary.
            centre_ones: the centre update (:func:`centre_bits`): None, plain majority vote; an int, centres
                with that many ones; "auto": the descriptors' popcount when all have the same one (zippy: 64;
                the majority of 64-of-256 codes drifts toward the empty word, which then attracts every
                descriptor), else majority (ORB).
            meta: extras recorded in the file (e.g. ``model``, ``model_sha256``, training data).
            progress: called with the number of descriptors that reached a final node, as they do.

        Raises:
            ValueError: bad k / levels, no images, an array that is not uint8 [N, 32], no descriptors at all.
        """
        if not (isinstance(k, (int, np.integer)) and k >= 2):
            raise ValueError(f"k must be an int >= 2, got {k!r}")
        if not (isinstance(levels, (int, np.integer)) and levels >= 1):
            raise ValueError(f"levels must be an int >= 1, got {levels!r}")
        if len(descriptors) == 0:
            raise ValueError("training needs descriptors of at least one image, got none")
        per_image = [_check_descriptors(d, f"descriptors[{i}]") for i, d in enumerate(descriptors)]
        allx = np.concatenate(per_image, axis=0)
        if allx.shape[0] == 0:
            raise ValueError(f"training needs at least one descriptor, got {len(per_image)} images with none")
        ones = _centre_ones(allx, centre_ones)
        t0 = time.perf_counter()
        rng = np.random.default_rng(seed)
        data = allx
        if max_descriptors is not None and allx.shape[0] > max_descriptors:
            data = allx[np.sort(rng.choice(allx.shape[0], int(max_descriptors), replace=False))]
        centres: list[np.ndarray] = [np.zeros(_BYTES, np.uint8)]
        parents: list[int] = [-1]
        queue: deque[tuple[int, int, np.ndarray]] = deque([(0, 0, np.arange(data.shape[0]))])
        while queue:
            node, depth, idx = queue.popleft()
            sub = data[idx]
            if idx.size <= k:
                uniq, inv = np.unique(sub, axis=0, return_inverse=True)
                cent, labels = uniq, inv.reshape(-1).astype(np.int32)
            else:
                cent, labels = kmajority(sub, k, rng, max_iters, ones)
            if cent.shape[0] < 2:  # all equal: this node is a word
                if progress is not None:
                    progress(int(idx.size))
                continue
            order = np.argsort(labels, kind="stable")
            bounds = np.searchsorted(labels[order], np.arange(cent.shape[0] + 1))
            for c in range(cent.shape[0]):
                child = len(parents)
                centres.append(cent[c])
                parents.append(node)
                members = idx[order[bounds[c] : bounds[c + 1]]]
                if depth + 1 < levels and members.size > 1:
                    queue.append((child, depth + 1, members))
                elif progress is not None:
                    progress(int(members.size))
        cluster_s = time.perf_counter() - t0
        parents_a = np.asarray(parents, np.int32)
        n_words = int(np.sum(np.bincount(parents_a[1:], minlength=len(parents)) == 0))
        if n_words < 2:
            raise ValueError(f"training needs at least 2 distinct descriptors, got {allx.shape[0]} all equal")
        tree = cls(np.stack(centres), parents_a, np.ones(n_words, np.float32), {})
        holders = np.zeros(n_words, np.int64)  # training images holding each word
        for d in per_image:
            holders[np.unique(tree.quantize(d)[0])] += 1
        n_img = len(per_image)
        idf = np.log(n_img / np.maximum(holders, 1)).astype(np.float32)
        info = {
            "format": FORMAT,
            "k": int(k),
            "levels": int(levels),
            "weighting": "tf-idf",
            "scoring": "l1",
            "descriptor_bytes": _BYTES,
            "seed": int(seed),
            "max_iters": int(max_iters),
            "centre_rule": "majority" if ones is None else f"top-{ones}",
            "training_images": n_img,
            "training_descriptors": int(allx.shape[0]),
            "clustered_descriptors": int(data.shape[0]),
            "words_unseen_in_training": int(np.sum(holders == 0)),
            "clustering_seconds": round(cluster_s, 2),
            "training_seconds": round(time.perf_counter() - t0, 2),
        }
        info.update(meta or {})
        return cls(tree.centres, tree.parents, idf, info)

    # ------------------------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write the vocabulary to ``path`` (.npz, atomically). Returns the path."""
        path = Path(path)
        if path.suffix != ".npz":
            raise ValueError(f"vocabulary file must end in .npz, got {path.name!r}")
        meta = dict(self.meta) | {"fingerprint": self.fingerprint}
        return _atomic_write_npz(
            path,
            {
                "format": np.array(FORMAT),
                "version": np.array(VERSION, np.int64),
                "centres": self.centres,
                "parents": self.parents,
                "weights": self.weights,
                "meta": _json_array(meta),
            },
        )

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> Vocabulary:
        """Read a vocabulary file; None loads the shipped one (``weights/zippypoint_vocab.npz``).

        Raises:
            FileNotFoundError: no such file (or no shipped vocabulary).
            ValueError: not a vocabulary file, another version, or corrupt (the fingerprint recorded at
                save time does not match the arrays).
        """
        if path is None:
            path = default_vocabulary_path()
        path = Path(path)
        d = _read_npz(path, "vocabulary", {"format", "version", "centres", "parents", "weights", "meta"})
        if str(d["format"]) != FORMAT:
            raise ValueError(f"{path} is not a zippy vocabulary (format {str(d['format'])!r})")
        if int(d["version"]) != VERSION:
            raise ValueError(f"{path}: vocabulary format version {int(d['version'])}, this zippy reads {VERSION}")
        meta = _json_from(d["meta"], path)
        try:
            voc = cls(d["centres"], d["parents"], d["weights"], meta)
        except ValueError as e:
            raise ValueError(f"{path}: inconsistent vocabulary: {e}") from e
        if meta.get("fingerprint") not in (None, voc.fingerprint):
            raise ValueError(f"{path}: corrupt vocabulary (fingerprint {voc.fingerprint} != {meta['fingerprint']})")
        voc.meta.pop("fingerprint", None)
        return voc


def default_vocabulary_path() -> Path:
    """Path of the shipped vocabulary: :func:`zippy.weights.weights_dir`'s rule, repeated here because
    zippy.weights imports torch ($ZIPPY_WEIGHTS_DIR, else the installed zippy_weights package).

    Raises:
        FileNotFoundError: it is not there.
    """
    env = os.environ.get("ZIPPY_WEIGHTS_DIR")
    if env:
        folder = Path(env)
    else:
        try:
            import zippy_weights

            folder = Path(zippy_weights.__file__).parent
        except ImportError:
            folder = Path(__file__).resolve().parents[1] / "weights"
    path = folder / DEFAULT_VOCABULARY
    if not path.is_file():
        raise FileNotFoundError(f"shipped vocabulary not found: {path} (train one with `zippy vocab train`)")
    return path


# ------------------------------------------------------------------------------------------- database
def _as_bow(voc: Vocabulary, x: BowVector | np.ndarray) -> BowVector:
    if isinstance(x, BowVector):
        if x.words.size and (x.words.min() < 0 or x.words.max() >= voc.num_words):
            raise ValueError(f"BoW vector has word ids outside [0, {voc.num_words})")
        return x
    return voc.transform(x)


class Database:
    """Inverted-file database of BoW vectors for image retrieval and loop closure (DBoW2's Database).

    Entries get consecutive ids from 0 in the order they are added. Scores are DBoW2's L1 score. A query
    costs the length of the inverted lists of its words: about 1 ms for 10,000 images
    (docs/vocabulary.md). Recently added entries (up to 64) wait in a buffer scored directly and are merged
    into the inverted file in batches, so adding one frame at a time stays cheap.

    Args:
        vocabulary: the vocabulary every entry was (or will be) quantized with.
    """

    def __init__(self, vocabulary: Vocabulary) -> None:
        if not isinstance(vocabulary, Vocabulary):
            raise ValueError(f"vocabulary must be a Vocabulary, got {type(vocabulary).__name__}")
        self.vocabulary = vocabulary
        self._vectors: list[BowVector] = []
        # inverted file of the merged entries: CSR by word
        self._indptr = np.zeros(vocabulary.num_words + 1, np.int64)
        self._entry_image = np.zeros(0, np.int32)
        self._entry_value = np.zeros(0, np.float32)
        self._merged = 0  # entries 0 .. _merged-1 are in the inverted file

    def __len__(self) -> int:
        return len(self._vectors)

    def __repr__(self) -> str:
        return f"Database({len(self)} entries, {self.vocabulary!r})"

    def add(self, x: BowVector | np.ndarray) -> int:
        """Add an image (its descriptors uint8 [N, 32], or its BoW vector); returns its entry id."""
        self._vectors.append(_as_bow(self.vocabulary, x))
        if len(self) - self._merged >= _PENDING:
            self._merge()
        return len(self) - 1

    def vector(self, entry: int) -> BowVector:
        """The BoW vector of entry ``entry``."""
        return self._vectors[entry]

    def _merge(self) -> None:
        """Move the pending entries into the inverted file: each goes to the end of its word's list (image ids
        grow, so every list stays in image order); one O(entries) copy, no sort of the whole file."""
        new = self._vectors[self._merged :]
        if not new:
            return
        w = np.concatenate([v.words for v in new]).astype(np.int64)
        val = np.concatenate([v.values for v in new])
        img = np.repeat(np.arange(self._merged, len(self), dtype=np.int32), [len(v) for v in new])
        order = np.argsort(w, kind="stable")  # by word, image order kept within a word
        w, val, img = w[order], val[order], img[order]
        pos = self._indptr[w + 1]  # the end of each word's list; equal positions keep their order
        self._entry_image = np.insert(self._entry_image, pos, img)
        self._entry_value = np.insert(self._entry_value, pos, val)
        added = np.bincount(w, minlength=self.vocabulary.num_words)
        self._indptr = self._indptr + np.concatenate([[0], np.cumsum(added)])
        self._merged = len(self)

    def scores(self, x: BowVector | np.ndarray) -> np.ndarray:
        """L1 score of the query against every entry: float32 [len(self)]."""
        q = _as_bow(self.vocabulary, x)
        out = np.zeros(len(self), np.float32)
        if len(q) == 0 or len(self) == 0:
            return out
        K.score_inverted(q.words, q.values, self._indptr, self._entry_image, self._entry_value, out)
        pending = self._vectors[self._merged :]
        if pending:
            indptr = np.concatenate([[0], np.cumsum([len(v) for v in pending])]).astype(np.int64)
            words = np.concatenate([v.words for v in pending])
            values = np.concatenate([v.values for v in pending])
            images = np.arange(self._merged, len(self), dtype=np.int64)
            K.score_direct(q.words, q.values, indptr, words, values, images, out)
        return out

    def query(self, x: BowVector | np.ndarray, n: int = 10, *, max_id: int | None = None) -> QueryResult:
        """The ``n`` best entries for a query (descriptors uint8 [N, 32] or a BoW vector).

        Args:
            x: the query.
            n: results wanted (fewer when the database is smaller); entries sharing no word score 0 and
                are left out.
            max_id: only entries with id <= max_id (e.g. to skip the latest frames in loop closure).

        Returns:
            ids int64 [<= n] and scores float32, best first (ties: lower id first).
        """
        if not (isinstance(n, (int, np.integer)) and n >= 1):
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        s = self.scores(x)
        if max_id is not None:
            s = s[: max(0, int(max_id) + 1)]
        ids = np.flatnonzero(s > 0)
        if ids.size > n:
            part = ids[np.argpartition(-s[ids], n - 1)[:n]]
            cut = s[part].min()
            ids = ids[s[ids] >= cut]  # every entry tied with the n-th, then the lowest ids
        ids = ids[np.lexsort((ids, -s[ids]))][:n]
        return QueryResult(ids.astype(np.int64), s[ids].astype(np.float32))

    # ------------------------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write the entries' BoW vectors (.npz, atomically) with the vocabulary's fingerprint."""
        path = Path(path)
        if path.suffix != ".npz":
            raise ValueError(f"database file must end in .npz, got {path.name!r}")
        lens = np.array([len(v) for v in self._vectors], np.int64)
        words = np.concatenate([v.words for v in self._vectors]) if self._vectors else np.zeros(0, np.int32)
        values = np.concatenate([v.values for v in self._vectors]) if self._vectors else np.zeros(0, np.float32)
        return _atomic_write_npz(
            path,
            {
                "format": np.array(DB_FORMAT),
                "version": np.array(VERSION, np.int64),
                "vocabulary": np.array(self.vocabulary.fingerprint),
                "indptr": np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
                "words": words.astype(np.int32),
                "values": values.astype(np.float32),
            },
        )

    @classmethod
    def load(cls, path: str | os.PathLike, vocabulary: Vocabulary | None = None) -> Database:
        """Read a database written by :meth:`save`; ``vocabulary`` None takes the shipped one.

        Raises:
            FileNotFoundError: no such file.
            ValueError: not a database file, corrupt, or saved with another vocabulary.
        """
        path = Path(path)
        d = _read_npz(path, "database", {"format", "version", "vocabulary", "indptr", "words", "values"})
        if str(d["format"]) != DB_FORMAT or int(d["version"]) != VERSION:
            raise ValueError(f"{path} is not a zippy BoW database of version {VERSION}")
        voc = Vocabulary.load() if vocabulary is None else vocabulary
        if str(d["vocabulary"]) != voc.fingerprint:
            raise ValueError(
                f"{path} was built with vocabulary {d['vocabulary']!s}, not with this one ({voc.fingerprint})"
            )
        indptr, words, values = d["indptr"], d["words"], d["values"]
        if indptr.ndim != 1 or indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] != words.size:
            raise ValueError(f"{path}: corrupt database (bad indptr)")
        if words.shape != values.shape or (words.size and (words.min() < 0 or words.max() >= voc.num_words)):
            raise ValueError(f"{path}: corrupt database (word ids / values)")
        db = cls(voc)
        for a, b in itertools.pairwise(indptr.tolist()):
            db._vectors.append(BowVector(words[a:b].astype(np.int32), values[a:b].astype(np.float32)))
        db._merge()
        return db


# ------------------------------------------------------------------------------------------- direct index
def match_direct(
    d0: np.ndarray, nodes0: np.ndarray, d1: np.ndarray, nodes1: np.ndarray, **kwargs: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Match two images' descriptors only within equal direct-index nodes (ORB-SLAM's SearchByBoW).

    Args:
        d0, d1: uint8 [N0, 32], [N1, 32].
        nodes0, nodes1: int [N0], [N1] nodes from :meth:`Vocabulary.quantize` / :meth:`Vocabulary.transform_direct`
            with the same ``direct_level``.
        **kwargs: options of :func:`zippy.matching.match_hamming` (mutual, ratio, max_distance).

    Returns:
        pairs int64 [K, 2] (sorted by the first index) and distances int64 [K], as ``match_hamming``.
    """
    from zippy.matching import match_hamming

    d0, d1 = _check_descriptors(d0, "d0"), _check_descriptors(d1, "d1")
    nodes0, nodes1 = np.asarray(nodes0), np.asarray(nodes1)
    if nodes0.shape != (d0.shape[0],) or nodes1.shape != (d1.shape[0],):
        raise ValueError(f"nodes must be [N0], [N1] = [{d0.shape[0]}], [{d1.shape[0]}], got {_describe(nodes0)}, "
                         f"{_describe(nodes1)}")  # fmt: skip
    pairs, dists = [], []
    for node in np.intersect1d(nodes0, nodes1):
        i = np.flatnonzero(nodes0 == node)
        j = np.flatnonzero(nodes1 == node)
        p, dist = match_hamming(d0[i], d1[j], **kwargs)
        pairs.append(np.stack([i[p[:, 0]], j[p[:, 1]]], axis=1))
        dists.append(np.asarray(dist, np.int64))
    if not pairs:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
    p = np.concatenate(pairs).astype(np.int64)
    dist = np.concatenate(dists)
    order = np.argsort(p[:, 0], kind="stable")
    return p[order], dist[order]
