"""Knowledge distillation: a loss that pulls the student towards a teacher's keypoints and descriptors.

Teachers (:func:`make_teacher`):

* a zippy network (the float "kp2d" one, or any weights file): run on the training images themselves
  (it costs one extra forward pass, no cache needed); its points are its best cells' keypoints.
* ALIKED (``kornia.feature.ALIKED`` with local weights, e.g. ``aliked-t16.pth``): about 1 s per image
  here, far too slow per step, so it runs once per training photo and its keypoints, scores and
  descriptors are cached (``<cache>/<model>_<n>_<side>/<photo>-<hash of its bytes>.npz``: the cache
  survives moving the photos). Each training pair then maps the photo's points into both views with
  the pair's transforms: the batch must carry ``index`` (the photo's index in the file list) and ``M0``
  (float [B, 3, 3], photo pixels -> image0 pixels); image1 points follow from ``H @ M0``. The same
  photo point gets the same teacher descriptor in both views.

Loss per pair (:func:`distill_loss`), with the teacher's top ``max_points`` points of each view:

* score: binary cross-entropy between the student's cell scores and the teacher's cell occupancy
  (1 where a teacher keypoint falls in the cell), over the cells the network does not mask;
* position: L1 distance, in cells, between the student's keypoint of an occupied cell and the
  teacher's best keypoint in it;
* for a softmax keypoint head (outputs ``kp_logits``, :mod:`zippy.models.fastnet`) the score and position
  parts are one cross-entropy of each cell's 65-way softmax against the pixel of the teacher's best
  keypoint in the cell, or "no keypoint" (weighted by ``score_weight``; the position part is 0);
* descriptor (relational, so any teacher dimension works): the student's similarities between all
  sampled points of both views match the teacher's cosine similarities (mean squared error over
  pairs). Binary students use soft top-k bits (BinNormTrain) with the similarity
  ``(<y_i, y_j> / k - k / D) / (1 - k / D)`` (1 for equal bits, 0 in expectation for random ones).
"""

from __future__ import annotations

import hashlib
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from zippy.binarize import BinNormTrain
from zippy.postprocess import sample_network_descriptors

log = logging.getLogger(__name__)

__all__ = [
    "ALIKED_MODELS",
    "AlikedTeacher",
    "DistillConfig",
    "Distiller",
    "NetworkTeacher",
    "Teacher",
    "TeacherPoints",
    "distill_loss",
    "make_teacher",
]

ALIKED_MODELS = ("aliked-t16", "aliked-n16")


@dataclass(frozen=True)
class DistillConfig:
    """Weights of the loss parts and the teacher's point budget.

    Attributes:
        score_weight, coord_weight, desc_weight: weights of the three parts.
        max_points: teacher points used per view (highest scores first).
        photo_keypoints: ALIKED keypoints cached per photo.
        photo_max_side: photos are shrunk to this longest side before ALIKED (keypoints mapped back).
        border_px: teacher points closer than this to a view's border are not used.
    """

    score_weight: float = 1.0
    coord_weight: float = 0.5
    desc_weight: float = 1.0
    max_points: int = 256
    photo_keypoints: int = 2048
    photo_max_side: int = 640
    border_px: float = 4.0


@dataclass
class TeacherPoints:
    """A teacher's points in one view: keypoints float [N, 2] (x, y) px, scores float [N], descriptors float [N, D]."""

    keypoints: torch.Tensor
    scores: torch.Tensor
    descriptors: torch.Tensor

    def top(self, k: int) -> TeacherPoints:
        order = torch.argsort(self.scores, descending=True)[:k]
        return TeacherPoints(self.keypoints[order], self.scores[order], self.descriptors[order])


class Teacher(ABC):
    """Gives teacher points for the two views of every pair of a batch."""

    name: str

    @abstractmethod
    def points(self, batch: dict[str, torch.Tensor]) -> list[tuple[TeacherPoints, TeacherPoints]]:
        """One (view 0, view 1) pair of :class:`TeacherPoints` per batch item."""

    @abstractmethod
    def info(self) -> dict[str, Any]:
        """Provenance (name, weights, sha256, settings) for logs."""


def _inside(kp: torch.Tensor, w: int, h: int, border: float) -> torch.Tensor:
    return (kp[:, 0] >= border) & (kp[:, 0] <= w - 1 - border) & (kp[:, 1] >= border) & (kp[:, 1] <= h - 1 - border)


class NetworkTeacher(Teacher):
    """A zippy KeypointNet as the teacher, run (eval mode, no gradient) on the batch's images."""

    def __init__(self, model: torch.nn.Module, cfg: DistillConfig | None = None, *, source: str = "model"):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.cfg = cfg or DistillConfig()
        self.name = f"zippy:{model.cfg.backbone}"
        self.source = source

    @torch.no_grad()
    def _view(self, images: torch.Tensor) -> list[TeacherPoints]:
        out = self.model(images)
        _, _, h, w = images.shape
        res = []
        for i in range(images.shape[0]):
            s = out["score"][i, 0].flatten()
            kp = out["coords"][i].flatten(1).t()
            keep = (s > 0) & _inside(kp, w, h, self.cfg.border_px)
            kp, s = kp[keep], s[keep]
            d = F.normalize(sample_network_descriptors(out, i, kp, w, h), dim=-1)
            res.append(TeacherPoints(kp, s, d).top(self.cfg.max_points))
        return res

    def points(self, batch: dict[str, torch.Tensor]) -> list[tuple[TeacherPoints, TeacherPoints]]:
        return list(zip(self._view(batch["image0"]), self._view(batch["image1"])))

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "config": asdict(self.cfg)}


def _file_key(path: Path, *parts: Any) -> str:
    """A key of the file's bytes (and ``parts``), so a cache survives moving or copying the photos."""
    h = hashlib.sha1(path.read_bytes())
    h.update("|".join(map(str, parts)).encode())
    return h.hexdigest()[:12]


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    from zippy.io import AtomicFile

    with AtomicFile(path, "wb") as f:
        np.savez(f.file, **arrays)


def _warp(kp: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    hom = torch.cat([kp, torch.ones_like(kp[:, :1])], 1) @ M.t()
    return hom[:, :2] / hom[:, 2:].clamp_min(1e-8)


class AlikedTeacher(Teacher):
    """ALIKED keypoints and descriptors per training photo, cached, mapped into each pair's views.

    Args:
        files: the training photos, in the order of the dataset (batch ``index`` refers to them).
        weights: ALIKED weights file (``kornia.feature.ALIKED`` state dict).
        cache_dir: folder of the per-photo cache files.
        model_name: "aliked-t16" or "aliked-n16".
    """

    def __init__(
        self,
        files: Sequence[str | os.PathLike],
        weights: str | os.PathLike,
        cache_dir: str | os.PathLike,
        model_name: str = "aliked-t16",
        cfg: DistillConfig | None = None,
    ):
        if model_name not in ALIKED_MODELS:
            raise ValueError(f"ALIKED model_name must be one of {list(ALIKED_MODELS)}, got {model_name!r}")
        self.weights = Path(weights)
        if not self.weights.is_file():
            raise FileNotFoundError(f"ALIKED weights file not found: {self.weights}")
        self.files = [Path(f) for f in files]
        if not self.files:
            raise ValueError("AlikedTeacher needs the list of training photos")
        self.cfg = cfg or DistillConfig()
        self.model_name = model_name
        self.name = model_name
        self.cache_dir = Path(cache_dir) / f"{model_name}_{self.cfg.photo_keypoints}_{self.cfg.photo_max_side}"
        self._model = None
        self._mem: dict[int, TeacherPoints] = {}

    def _net(self):
        if self._model is None:
            from kornia.feature import ALIKED

            net = ALIKED(model_name=self.model_name, max_num_keypoints=self.cfg.photo_keypoints, detection_threshold=-1)
            state = torch.load(self.weights, map_location="cpu", weights_only=True)
            missing, unexpected = net.load_state_dict(state, strict=False)
            bad = [k for k in missing if not k.endswith("hw_grid")]
            if bad or unexpected:
                raise ValueError(
                    f"{self.weights} does not fit {self.model_name}: missing {bad[:4]}, extra {unexpected[:4]}"
                )
            self._model = net.eval()
        return self._model

    def cache_path(self, index: int) -> Path:
        f = self.files[index]
        return self.cache_dir / f"{f.stem}-{_file_key(f, self.model_name)}.npz"

    @torch.inference_mode()
    def _run(self, index: int) -> dict[str, np.ndarray]:
        import cv2

        from zippy.image import read_image

        img = read_image(self.files[index])
        h, w = img.shape[:2]
        s = min(1.0, self.cfg.photo_max_side / max(h, w))
        if s < 1.0:
            img = cv2.resize(img, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0
        out = self._net()(x)[0]
        kp = out.keypoints.numpy().astype(np.float32)
        if s < 1.0:  # back to the photo's pixels (pixel centres at integers)
            kp = (kp + 0.5) * np.float32([w / img.shape[1], h / img.shape[0]]) - 0.5
        return {
            "keypoints": kp,
            "scores": out.keypoint_scores.numpy().astype(np.float32),
            "descriptors": out.descriptors.numpy().astype(np.float16),
        }

    def photo_points(self, index: int) -> TeacherPoints:
        """The teacher points of photo ``index`` in the photo's pixels (from the cache, else computed)."""
        if index in self._mem:
            return self._mem[index]
        path = self.cache_path(index)
        if path.is_file():
            with np.load(path) as z:
                arrays = {k: z[k] for k in ("keypoints", "scores", "descriptors")}
        else:
            arrays = self._run(index)
            _atomic_savez(path, **arrays)
        pts = TeacherPoints(
            torch.from_numpy(arrays["keypoints"]).float(),
            torch.from_numpy(arrays["scores"]).float(),
            F.normalize(torch.from_numpy(arrays["descriptors"]).float(), dim=-1),
        )
        self._mem[index] = pts
        return pts

    def build_cache(self, progress: bool = True) -> int:
        """Compute every photo's teacher points not cached yet; returns how many were computed."""
        from tqdm import tqdm

        todo = [i for i in range(len(self.files)) if not self.cache_path(i).is_file()]
        for i in tqdm(todo, desc=f"{self.model_name} teacher cache", disable=not progress):
            self.photo_points(i)
        return len(todo)

    def points(self, batch: dict[str, torch.Tensor]) -> list[tuple[TeacherPoints, TeacherPoints]]:
        missing = [k for k in ("index", "M0", "H", "valid1", "image0") if k not in batch]
        if missing:
            raise ValueError(
                f"the ALIKED teacher needs batch keys {missing}: 'index' (photo index) and 'M0' (photo -> image0 "
                "pixels, float [B, 3, 3]) from the training dataset"
            )
        _, _, h, w = batch["image0"].shape
        res = []
        for b in range(batch["image0"].shape[0]):
            p = self.photo_points(int(batch["index"][b]))
            M0 = batch["M0"][b].double()
            M1 = batch["H"][b].double() @ M0
            views = []
            for M, valid in ((M0, None), (M1, batch["valid1"][b, 0])):
                kp = _warp(p.keypoints.double(), M).float()
                keep = _inside(kp, w, h, self.cfg.border_px)
                if valid is not None:
                    ij = kp.round().long()
                    ij[:, 0].clamp_(0, w - 1)
                    ij[:, 1].clamp_(0, h - 1)
                    keep &= valid[ij[:, 1], ij[:, 0]] > 0.5
                views.append(TeacherPoints(kp[keep], p.scores[keep], p.descriptors[keep]).top(self.cfg.max_points))
            res.append((views[0], views[1]))
        return res

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "weights": str(self.weights),
            "cache_dir": str(self.cache_dir),
            "config": asdict(self.cfg),
        }


def _aliked_weights(name: str, weights: str | os.PathLike | None) -> Path:
    if weights is not None:
        return Path(weights)
    env = os.environ.get("ZIPPY_TEACHERS_DIR")
    if env:
        return Path(env) / f"{name}.pth"
    # the workspace layout: ../shared/teachers beside the repository
    return Path(__file__).resolve().parents[2].parent / "shared" / "teachers" / f"{name}.pth"


def make_teacher(
    spec: str,
    *,
    files: Sequence[str | os.PathLike] | None = None,
    cache_dir: str | os.PathLike | None = None,
    aliked_weights: str | os.PathLike | None = None,
    cfg: DistillConfig | None = None,
) -> Teacher:
    """A teacher from a name or a path.

    Args:
        spec: "aliked" / "aliked-t16" / "aliked-n16" (weights from ``aliked_weights``, else
            $ZIPPY_TEACHERS_DIR/<name>.pth, else ../shared/teachers/<name>.pth beside the repository);
            a path to an ALIKED ``.pth`` file (n16 when its name says so, else t16); a path to a zippy
            weights file; or a zippy backbone name whose trained weights ship (e.g. "kp2d").
        files: the training photos (ALIKED teachers).
        cache_dir: the teacher cache folder (ALIKED teachers).

    Raises:
        ValueError: unknown spec, or an ALIKED teacher without files / cache_dir.
        FileNotFoundError: a weights file that does not exist (the message names it).
    """
    key = spec.strip()
    path = Path(key)
    is_aliked = key.lower() in ("aliked", *ALIKED_MODELS) or (path.suffix == ".pth")
    if is_aliked:
        name = key.lower() if key.lower() in ALIKED_MODELS else "aliked-t16"
        if path.suffix == ".pth":
            name = "aliked-n16" if "n16" in path.name else "aliked-t16"
            aliked_weights = path
        if files is None or cache_dir is None:
            raise ValueError("an ALIKED teacher needs the training photo list and a cache folder")
        return AlikedTeacher(files, _aliked_weights(name, aliked_weights), cache_dir, name, cfg)
    from zippy.weights import load_model, shipped_weights

    if path.suffix == ".pt" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"teacher weights file not found: {path}")
        model, _ = load_model(path)
        return NetworkTeacher(model, cfg, source=str(path))
    from zippy.models import available

    if key in available():
        shipped = shipped_weights(key)
        if shipped is None:
            raise FileNotFoundError(f"no trained weights ship for {key!r}: pass the teacher's weights file instead")
        model, _ = load_model(shipped)
        return NetworkTeacher(model, cfg, source=str(shipped))
    raise ValueError(
        f"unknown teacher {spec!r}: expected 'aliked', {list(ALIKED_MODELS)}, a .pth / .pt path or a backbone"
    )


def _first_per_cell(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(distinct cells [M], index of each one's first occurrence in ``flat`` [M]) for cell indices long [N];
    with keypoints in descending score order, the first occurrence is the cell's best keypoint."""
    uniq, inv = torch.unique(flat, return_inverse=True)
    first = torch.full((uniq.numel(),), flat.numel(), dtype=torch.long).scatter_reduce(
        0, inv, torch.arange(flat.numel()), reduce="amin"
    )
    return uniq, first


def _cell_targets(pts: TeacherPoints, hc: int, wc: int, cell: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(occupancy float [hc, wc], flat indices of occupied cells [M], best teacher keypoint per such cell [M, 2])."""
    occ = torch.zeros(hc * wc)
    if pts.keypoints.shape[0] == 0:
        return occ.view(hc, wc), torch.zeros(0, dtype=torch.long), torch.zeros(0, 2)
    order = torch.argsort(pts.scores, descending=True)
    kp = pts.keypoints[order]
    cx = (kp[:, 0] / cell).floor().long().clamp(0, wc - 1)
    cy = (kp[:, 1] / cell).floor().long().clamp(0, hc - 1)
    flat = cy * wc + cx
    uniq, first = _first_per_cell(flat)
    occ[uniq] = 1.0
    return occ.view(hc, wc), uniq, kp[first]


def _pixel_targets(pts: TeacherPoints, hc: int, wc: int, cell: int) -> torch.Tensor:
    """Class per cell for a (cell * cell + 1)-way keypoint softmax, long [hc * wc]: the pixel (dy * cell + dx)
    of the cell's best teacher keypoint, or cell * cell ("no keypoint") where the teacher has none."""
    target = torch.full((hc * wc,), cell * cell, dtype=torch.long)
    if pts.keypoints.shape[0] == 0:
        return target
    pix = pts.keypoints[torch.argsort(pts.scores, descending=True)].round().long()
    pix[:, 0].clamp_(0, wc * cell - 1)
    pix[:, 1].clamp_(0, hc * cell - 1)
    flat = (pix[:, 1] // cell) * wc + pix[:, 0] // cell
    cls = (pix[:, 1] % cell) * cell + pix[:, 0] % cell
    uniq, first = _first_per_cell(flat)
    target[uniq] = cls[first]
    return target


def distill_loss(
    out0: dict[str, torch.Tensor],
    out1: dict[str, torch.Tensor],
    points: list[tuple[TeacherPoints, TeacherPoints]],
    *,
    binary: bool,
    ones: int,
    temperature: float,
    cell: int = 8,
    cfg: DistillConfig | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Distillation loss of a batch of pairs (see the module docstring).

    Args:
        out0, out1: student outputs (zippy.models.net) of the B source / target views.
        points: teacher points per pair (:meth:`Teacher.points`).
        binary: binary (soft top-k) or float student descriptors; ones: k; temperature: soft top-k temperature.

    Returns:
        (loss, parts) with parts ``distill``, ``distill_score``, ``distill_coord``, ``distill_desc`` (floats).
    """
    cfg = cfg or DistillConfig()
    if len(points) != out0["score"].shape[0]:
        raise ValueError(f"teacher points for {len(points)} pairs, student outputs for {out0['score'].shape[0]}")
    norm = BinNormTrain(ones, temperature) if binary else None
    zero = out0["score"].sum() * 0.0
    score_l, coord_l, desc_l = [], [], []
    for b, (t0, t1) in enumerate(points):
        sampled, teach = [], []
        for out, pts in ((out0, t0), (out1, t1)):
            s = out["score"][b, 0]
            hc, wc = s.shape
            himg, wimg = hc * cell, wc * cell
            interior = torch.zeros_like(s, dtype=torch.bool)
            interior[1:-1, 1:-1] = True
            if "kp_logits" in out:  # a softmax keypoint head: the teacher's pixel (or none) per cell, cross-entropy
                target = _pixel_targets(pts, hc, wc, cell)
                logits = out["kp_logits"][b].flatten(1).t()  # [hc * wc, 65]
                flat = interior.flatten()
                score_l.append(F.cross_entropy(logits[flat], target[flat]))
                cells = torch.zeros(0, dtype=torch.long)
            else:
                occ, cells, kp = _cell_targets(pts, hc, wc, cell)
                score_l.append(F.binary_cross_entropy(s[interior].clamp(1e-6, 1 - 1e-6), occ[interior]))
            if cells.numel():
                c = out["coords"][b].flatten(1)[:, cells].t()
                coord_l.append((c - kp).abs().sum(1).mean() / cell)
            if pts.keypoints.shape[0]:
                sampled.append(sample_network_descriptors(out, b, pts.keypoints, wimg, himg))
                teach.append(pts.descriptors)
        if not sampled or sum(t.shape[0] for t in teach) < 2:
            continue
        d_s = torch.cat(sampled)
        d_t = torch.cat(teach)
        if binary:
            y = norm(d_s)
            base = ones / d_s.shape[1]
            sim_s = (y @ y.t() / ones - base) / (1 - base)
        else:
            y = F.normalize(d_s, dim=-1)
            sim_s = y @ y.t()
        sim_t = d_t @ d_t.t()
        off = ~torch.eye(sim_s.shape[0], dtype=torch.bool)
        desc_l.append(((sim_s - sim_t) ** 2)[off].mean())

    def mean(xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(xs).mean() if xs else zero

    score, coord, desc = mean(score_l), mean(coord_l), mean(desc_l)
    total = cfg.score_weight * score + cfg.coord_weight * coord + cfg.desc_weight * desc
    parts = {
        "distill": float(total.detach()),
        "distill_score": float(score.detach()),
        "distill_coord": float(coord.detach()),
        "distill_desc": float(desc.detach()),
    }
    return total, parts


class Distiller:
    """Teacher + loss settings, called by the trainer once per step.

    Example (trainer)::

        distiller = Distiller(make_teacher(tc.distill, files=dataset.files, cache_dir=out / "teacher_cache"))
        ...
        d_loss, d_parts = distiller.loss(out0, out1, batch, model)
        loss = loss + tc.distill_weight * d_loss
    """

    def __init__(self, teacher: Teacher, cfg: DistillConfig | None = None):
        self.teacher = teacher
        self.cfg = cfg or getattr(teacher, "cfg", None) or DistillConfig()

    def loss(
        self,
        out0: dict[str, torch.Tensor],
        out1: dict[str, torch.Tensor],
        batch: dict[str, torch.Tensor],
        model: torch.nn.Module,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Distillation loss of the student ``model``'s outputs on ``batch``."""
        pts = self.teacher.points(batch)
        return distill_loss(
            out0,
            out1,
            pts,
            binary=bool(model.binary_descriptors),
            ones=model.cfg.desc_ones,
            temperature=model.cfg.temperature,
            cell=model.cfg.cell,
            cfg=self.cfg,
        )
