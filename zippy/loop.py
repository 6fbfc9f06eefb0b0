"""Loop-closure detection over a stream of frames: bag-of-words query, temporal consistency, geometric check.

After DBoW2's loop detector (Galvez-Lopez & Tardos, 2012) and ORB-SLAM's loop candidates, on zippy's
binary descriptors and :mod:`zippy.vocabulary`:

1. The frame's BoW vector queries the database of earlier frames, leaving out the ``exclude_recent``
   latest (they look alike without closing a loop). Scores are normalized by the score between the frame
   and the frame before it (how alike consecutive views are here): candidates need ``score >= min_score``
   and ``score / prev_score >= min_normalized``.
2. Candidates are grouped into islands of consecutive frame ids (at most ``island_gap`` apart); the island
   with the highest score sum wins, represented by its best frame.
3. Temporal consistency: a loop is only reported once ``consistency`` consecutive frames chose islands that
   overlap (within ``island_gap``) the previous ones.
4. Geometric check: mutual nearest-neighbour Hamming matches (:func:`zippy.matching.match_hamming`, with an
   optional distance cap) between the frame and the candidate, then a RANSAC fundamental matrix
   (OpenCV); the loop is accepted with at least ``min_inliers`` inliers.

Every frame is added to the database after its query. numpy + numba + OpenCV, no torch.

Example::

    detector = LoopDetector(Vocabulary.load())
    for image in frames:
        loop = detector.process(extractor.extract(image))
        if loop.detected:
            print(f"frame {loop.frame} closes a loop with frame {loop.match} ({loop.inliers} inliers)")
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from zippy.features import Features
from zippy.vocabulary import BowVector, Database, Vocabulary

__all__ = ["LoopConfig", "LoopDetector", "LoopResult"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopConfig:
    """Parameters of :class:`LoopDetector` (module docstring for what each step does).

    Attributes:
        exclude_recent: the latest frames never considered as loop candidates.
        min_score: raw L1 score a candidate needs.
        min_normalized: score / (score between the frame and its predecessor) a candidate needs (DBoW2's alpha).
        max_candidates: database results looked at per query.
        island_gap: frame ids at most this far apart form one island; also the overlap tolerance of step 3.
        consistency: consecutive frames whose islands must agree (1: no temporal check).
        min_inliers: RANSAC inliers of the geometric check (50: on the TUM loop benchmark, docs/vocabulary.md, the
            false candidates that passed 30 had 33-35 inliers, the true loops 269-571).
        ransac_px: epipolar RANSAC threshold in pixels.
        max_distance: Hamming distance cap of the geometric check's matches (None: none).
        geometric: run the geometric check (False: accept temporally consistent candidates as they are).
    """

    exclude_recent: int = 30
    min_score: float = 0.01
    min_normalized: float = 0.3
    max_candidates: int = 20
    island_gap: int = 3
    consistency: int = 3
    min_inliers: int = 50
    ransac_px: float = 3.0
    max_distance: int | None = None
    geometric: bool = True

    def __post_init__(self) -> None:
        ints = ("exclude_recent", "max_candidates", "island_gap", "consistency", "min_inliers")
        for name in ints:
            v = getattr(self, name)
            if not (isinstance(v, (int, np.integer)) and v >= (0 if name in ("exclude_recent", "island_gap") else 1)):
                raise ValueError(f"{name} must be a non-negative int (>= 1 for counts), got {v!r}")
        if not (self.min_score >= 0 and self.min_normalized >= 0 and self.ransac_px > 0):
            raise ValueError("min_score and min_normalized must be >= 0 and ransac_px > 0")


@dataclass
class LoopResult:
    """What one frame gave.

    Attributes:
        frame: id of the frame (0, 1, ... in the order processed).
        detected: a loop was accepted.
        match: id of the earlier frame it closes the loop with (the best candidate even when rejected; -1: none).
        score: the candidate's L1 score; normalized: divided by the score with the previous frame.
        consistent: how many consecutive frames agreed on this place (step 3).
        inliers: RANSAC inliers of the geometric check (0 when not run).
        reason: why no loop was accepted ("" when one was).
    """

    frame: int
    detected: bool = False
    match: int = -1
    score: float = 0.0
    normalized: float = 0.0
    consistent: int = 0
    inliers: int = 0
    reason: str = ""

    def to_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class _Frame:
    keypoints: np.ndarray
    descriptors: np.ndarray
    bow: BowVector


@dataclass
class _Island:
    first: int
    last: int
    best: int
    score: float
    normalized: float


@dataclass
class LoopDetector:
    """Loop-closure detector over frames given one at a time (:meth:`process`).

    Args:
        vocabulary: a vocabulary of the descriptors' kind (:meth:`Vocabulary.load` for zippy's).
        config: thresholds (:class:`LoopConfig`).
    """

    vocabulary: Vocabulary
    config: LoopConfig = field(default_factory=LoopConfig)

    def __post_init__(self) -> None:
        self.database = Database(self.vocabulary)
        self._frames: list[_Frame] = []
        self._last_islands: list[_Island] = []
        self._streak = 0
        self.loops: list[LoopResult] = []

    def __len__(self) -> int:
        return len(self._frames)

    def process(self, features: Features) -> LoopResult:
        """Query with one frame's features (binary, uint8 [N, 32]), then add it; returns what was found."""
        if not isinstance(features, Features) or not features.is_binary:
            raise ValueError("features must be a Features record with binary descriptors uint8 [N,32]")
        fid = len(self._frames)
        bow = self.vocabulary.transform(features.descriptors)
        result = self._query(fid, bow, features)
        self._frames.append(_Frame(features.keypoints, features.descriptors, bow))
        self.database.add(bow)
        if result.detected:
            self.loops.append(result)
            logger.info(
                "loop: frame %d -> frame %d (score %.3f, normalized %.2f, %d inliers)",
                result.frame, result.match, result.score, result.normalized, result.inliers,
            )  # fmt: skip
        return result

    # ------------------------------------------------------------------------------------------- steps
    def _query(self, fid: int, bow: BowVector, features: Features) -> LoopResult:
        cfg = self.config
        max_id = fid - cfg.exclude_recent - 1
        if len(bow) == 0 or max_id < 0:
            self._reset()
            return LoopResult(fid, reason="no features" if len(bow) == 0 else "too few earlier frames")
        prev = bow.score(self._frames[-1].bow) if self._frames else 0.0
        res = self.database.query(bow, cfg.max_candidates, max_id=max_id)
        norm = res.scores / prev if prev > 0 else res.scores
        keep = (res.scores >= cfg.min_score) & (norm >= cfg.min_normalized)
        if not keep.any():
            self._reset()
            best = (int(res.ids[0]), float(res.scores[0]), float(norm[0])) if len(res) else (-1, 0.0, 0.0)
            reason = "no candidate above the scores"
            return LoopResult(fid, match=best[0], score=best[1], normalized=best[2], reason=reason)
        islands = self._islands(res.ids[keep], res.scores[keep], norm[keep])
        island = max(islands, key=lambda i: i.score)
        agree = any(
            island.first - cfg.island_gap <= o.last and o.first <= island.last + cfg.island_gap
            for o in self._last_islands
        )
        self._streak = self._streak + 1 if agree or cfg.consistency == 1 else 1
        self._last_islands = islands
        result = LoopResult(
            fid, match=island.best, score=float(np.max(res.scores[keep][res.ids[keep] == island.best])),
            normalized=island.normalized, consistent=self._streak,
        )  # fmt: skip
        if self._streak < cfg.consistency:
            result.reason = f"not yet consistent ({self._streak} of {cfg.consistency} frames)"
            return result
        if cfg.geometric:
            result.inliers = self._inliers(features, self._frames[island.best])
            if result.inliers < cfg.min_inliers:
                result.reason = f"geometric check: {result.inliers} inliers < {cfg.min_inliers}"
                return result
        result.detected = True
        return result

    def _reset(self) -> None:
        self._streak = 0
        self._last_islands = []

    def _islands(self, ids: np.ndarray, scores: np.ndarray, norm: np.ndarray) -> list[_Island]:
        order = np.argsort(ids)
        ids, scores, norm = ids[order], scores[order], norm[order]
        out: list[_Island] = []
        start = 0
        for i in range(1, len(ids) + 1):
            if i == len(ids) or ids[i] - ids[i - 1] > self.config.island_gap:
                sl = slice(start, i)
                b = start + int(np.argmax(scores[sl]))
                total = float(scores[sl].sum())
                out.append(_Island(int(ids[start]), int(ids[i - 1]), int(ids[b]), total, float(norm[b])))
                start = i
        return out

    def _inliers(self, f: Features, other: _Frame) -> int:
        import cv2

        from zippy.matching import match_hamming

        pairs, _ = match_hamming(f.descriptors, other.descriptors, mutual=True, max_distance=self.config.max_distance)
        if len(pairs) < 8:
            return 0
        p0 = f.keypoints[pairs[:, 0]].astype(np.float64)
        p1 = other.keypoints[pairs[:, 1]].astype(np.float64)
        try:
            F, mask = cv2.findFundamentalMat(p0, p1, cv2.USAC_MAGSAC, self.config.ransac_px, 0.999, 2000)
        except cv2.error as e:  # degenerate point sets: no geometry, no loop
            logger.debug("fundamental matrix failed: %s", e)
            return 0
        return 0 if F is None or mask is None else int(mask.sum())
