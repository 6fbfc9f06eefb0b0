"""The extraction API: ``zippy.load(...) -> Extractor``, ``Extractor.extract(image) -> Features``."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from zippy import DEFAULT_NMS_RADIUS
from zippy.features import Features
from zippy.image import resize_image, to_tensor
from zippy.models import KeypointNet, ModelConfig, available
from zippy.postprocess import finalize_descriptors, sample_descriptors, select_keypoints
from zippy.weights import build_model, file_sha256, load_weights, shipped_weights

log = logging.getLogger(__name__)

ENGINES = ("auto", "fp32", "int8", "onnx")

__all__ = ["ENGINES", "Extractor"]

NetFn = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    """Validated image-pyramid scales: a non-empty sequence of distinct numbers in [0.25, 4]."""
    try:
        out = tuple(float(s) for s in scales)
    except (TypeError, ValueError):
        raise ValueError(f"scales must be a sequence of numbers, got {scales!r}") from None
    if not out or len(set(out)) != len(out) or not all(0.25 <= s <= 4.0 for s in out):
        raise ValueError(f"scales must be distinct numbers in [0.25, 4], at least one, got {scales!r}")
    return out


def check_shifts(shifts: Sequence[Sequence[int]], cell: int = 8) -> tuple[tuple[int, int], ...]:
    """Validated grid shifts: a non-empty sequence of distinct (dx, dy) integer pairs, each in [0, cell)."""
    try:
        out = tuple((int(dx), int(dy)) for dx, dy in shifts)
        exact = all(float(a) == int(a) for pair in shifts for a in pair)
    except (TypeError, ValueError):
        raise ValueError(f"shifts must be a sequence of (dx, dy) integer pairs, got {shifts!r}") from None
    if not out or not exact or len(set(out)) != len(out) or not all(0 <= a < cell for pair in out for a in pair):
        raise ValueError(f"shifts must be distinct (dx, dy) integer pairs in [0, {cell}), at least one, got {shifts!r}")
    return out


def resize_tensor(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """float32 [1, C, H, W] -> [1, C, height, width] by :func:`zippy.image.resize_image` (OpenCV, as the
    evaluation's resizing); about 3x faster than ``F.interpolate`` here."""
    out = resize_image(x[0].permute(1, 2, 0).numpy(), width, height)
    return torch.from_numpy(out.reshape(height, width, -1)).permute(2, 0, 1)[None].contiguous()


def check_nms_radius(nms_radius: float) -> float:
    """Validated keypoint NMS radius in px (>= 0; 0 keeps the best keypoint of every cell)."""
    if isinstance(nms_radius, bool) or not isinstance(nms_radius, (int, float, np.number)) or not nms_radius >= 0:
        raise ValueError(f"nms_radius must be a number >= 0 (px), got {nms_radius!r}")
    return float(nms_radius)


MAX_KEYPOINTS_LIMIT = 2**31 - 1
"""Largest ``max_keypoints`` (the keypoint kernels count in int32/int64; larger values are meaningless)."""

DEFAULT_MAX_PIXELS = 4096 * 4096
"""Largest image :meth:`Extractor.extract` takes by default, in pixels per pass (height x width x the largest
pyramid scale squared): 16.8 MP, about 1.2 GB of memory and 20 s with the shipped network on one core of a
2-core machine (a 6000x8000 photo takes 3.5 GB and 59 s). Resize larger images (``zippy.image.resize_image``)
or raise the limit with ``zippy.load(..., max_pixels=...)`` / ``--max-pixels``."""


def _check_max_keypoints(max_keypoints: int) -> int:
    if (
        isinstance(max_keypoints, bool)
        or not isinstance(max_keypoints, (int, np.integer))
        or not 0 < max_keypoints <= MAX_KEYPOINTS_LIMIT
    ):
        raise ValueError(f"max_keypoints must be a positive integer <= {MAX_KEYPOINTS_LIMIT}, got {max_keypoints!r}")
    return int(max_keypoints)


def _check_threshold(threshold: float | None) -> float | None:
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)):
        raise ValueError(f"threshold must be a number in [0, 1] or None, got {type(threshold).__name__} {threshold!r}")
    if not 0.0 <= float(threshold) <= 1.0:  # NaN fails too
        raise ValueError(f"threshold must be in [0, 1] or None, got {threshold!r}")
    return float(threshold)


def check_max_pixels(max_pixels: int | None) -> int | None:
    """Validate the image size limit: a positive integer, or None for no limit."""
    if max_pixels is None:
        return None
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels <= 0:
        raise ValueError(f"max_pixels must be a positive integer or None (no limit), got {max_pixels!r}")
    return int(max_pixels)


class Extractor:
    """Keypoints, scores and descriptors from images with a trained network.

    Attributes:
        name: backbone name; engine: the engine really used ("fp32", "int8", "onnx").
        binary: True when descriptors are packed bits uint8 [N, 32].
        trained: False when running untrained (random) weights.
        weights_path / weights_sha256: the weights file used, if any.
        nms_radius: px radius of the keypoint NMS between neighbouring cells (default ``DEFAULT_NMS_RADIUS``,
            1; 0: none).
        scales: image-pyramid scales (default (1.0,), one pass). With several, the image is resized by
            each factor, keypoints are detected and described at every scale, mapped back to the
            image's pixels and the ``max_keypoints`` best by score kept over all scales. On the
            development split, (1.41, 1.0) raised zippypoint_small's H@3 from 0.77 to 0.85 at about
            three times the network cost (docs/hpatches.md, "Session 8").
        shifts: grid shifts (default ((0, 0),), one pass per scale). The network sees the image through
            8x8 cells, so what it detects and how it describes a point depend on where the point falls in
            its cell: shifting an image by 4 px drops zippypoint's repeatability to about 0.74 and its MMA@3
            to about 0.84 (docs/hpatches.md, "Session 12"). Each (dx, dy) adds a pass per scale on the image
            without its first dx columns and dy rows (the grid moved by (dx, dy)); the keypoints of all
            passes are mapped back and the ``max_keypoints`` best by score kept, as with ``scales``.
            ((0, 0), (4, 4)) doubles the cost.
        raw_descriptors: False (default) gives the final descriptors (packed bits, or L2-normalized floats).
            True gives float32 [N, D], the descriptor map sampled at the keypoints before binarization or
            normalization; a diagnostic (e.g. ``zippy_eval.binarization_gap``), not for matching as is.
    """

    def __init__(
        self,
        model: KeypointNet,
        *,
        engine: str = "fp32",
        weights_path: Path | None = None,
        meta: dict[str, Any] | None = None,
        nms_radius: float = DEFAULT_NMS_RADIUS,
        scales: Sequence[float] = (1.0,),
        shifts: Sequence[Sequence[int]] = ((0, 0),),
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        self.model = model.eval()
        self.cfg: ModelConfig = model.cfg
        self.name = self.cfg.backbone
        self.binary = model.binary_descriptors
        self.weights_path = weights_path
        self.weights_sha256 = file_sha256(weights_path) if weights_path is not None else None
        self.meta = dict(meta or {})
        self.trained = weights_path is not None and bool(self.meta.get("trained", True))
        self.nms_radius = check_nms_radius(nms_radius)
        self.scales = check_scales(scales)
        self.shifts = check_shifts(shifts, self.cfg.cell)
        self.max_pixels = check_max_pixels(max_pixels)
        self.raw_descriptors = False
        self.engine, self._net = self._make_engine(engine)

    @classmethod
    def from_name(
        cls,
        name: str = "zippypoint",
        *,
        weights: Any = None,
        engine: str = "auto",
        scales: Sequence[float] = (1.0,),
        shifts: Sequence[Sequence[int]] = ((0, 0),),
        nms_radius: float = DEFAULT_NMS_RADIUS,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> Extractor:
        """See :func:`zippy.load`."""
        if not isinstance(name, str):
            raise TypeError(f"name must be a model name (str), got {type(name).__name__} {name!r}")
        if weights is not None and not isinstance(weights, (str, os.PathLike)):
            raise TypeError(f"weights must be a path (str or os.PathLike) or None, got {type(weights).__name__}")
        backbones = available()
        shipped = shipped_weights(name)
        if name not in backbones and shipped is None:
            from zippy import available_models

            raise ValueError(f"unknown model {name!r}; choose one of {available_models()}")
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; choose one of {list(ENGINES)}")
        path = Path(weights) if weights is not None else shipped
        if path is None:
            log.warning("no trained weights ship for %r: using UNTRAINED random weights", name)
            torch.manual_seed(0)
            net = KeypointNet(ModelConfig(backbone=name))
            return cls(net, engine=engine, scales=scales, shifts=shifts, nms_radius=nms_radius, max_pixels=max_pixels)
        cfg, state, meta = load_weights(path)
        if cfg.backbone != name and weights is not None:
            log.info("weights %s hold backbone %r (asked for %r): using the file's", path, cfg.backbone, name)
        model = build_model(cfg, state)
        return cls(
            model,
            engine=engine,
            weights_path=path,
            meta=meta,
            scales=scales,
            shifts=shifts,
            nms_radius=nms_radius,
            max_pixels=max_pixels,
        )

    # --- engines -------------------------------------------------------------------------------
    def _make_engine(self, engine: str) -> tuple[str, NetFn]:
        if engine in ("auto", "int8"):
            from zippy.quant import int8

            reason = int8.unsupported_reason(self.model)
            if reason is None:
                return "int8", int8.convert(self.model)
            if engine == "int8":
                raise ValueError(f"engine 'int8' is not available for {self.name!r}: {reason}")
            log.debug("int8 engine unavailable (%s): using fp32", reason)
        if engine == "onnx":
            from zippy.quant import onnx_engine

            return "onnx", onnx_engine.OnnxNet(self.model)
        return "fp32", self.model

    # --- extraction ----------------------------------------------------------------------------
    @torch.inference_mode()
    def extract(self, image: Any, max_keypoints: int = 1000, threshold: float | None = None) -> Features:
        """Detect and describe one image.

        Args:
            image: numpy uint8 [H, W] / [H, W, 3] RGB (also RGBA, uint16, float in [0, 1]) or a float tensor
                [3, H, W] / [1, {1,3}, H, W] in [0, 1]; at least 16x16 px.
            max_keypoints: keep at most this many keypoints (highest scores first).
            threshold: minimum score in [0, 1] (None keeps all).

        Returns:
            Features with keypoints float32 [N, 2] in the image's pixels, scores float32 [N], descriptors
            uint8 [N, 32] (binary backbones, exactly 64 ones each) or float32 [N, 256] (float backbones).
        """
        x = to_tensor(image)
        if x.shape[0] != 1:
            raise ValueError(f"extract takes one image, got a batch of {x.shape[0]}: use extract_batch")
        return self._extract_tensor(x, max_keypoints, threshold)[0]

    @torch.inference_mode()
    def extract_batch(
        self, images: Sequence[Any] | torch.Tensor, max_keypoints: int = 1000, threshold: float | None = None
    ) -> list[Features]:
        """Detect and describe a batch: a float tensor [B, {1,3}, H, W] or a list of same-size images."""
        if isinstance(images, torch.Tensor):
            x = to_tensor(images)
        else:
            tensors = [to_tensor(im) for im in images]
            if not tensors:
                return []
            sizes = {tuple(t.shape[-2:]) for t in tensors}
            if len(sizes) != 1:
                raise ValueError(f"extract_batch needs images of one size, got sizes {sorted(sizes)}")
            x = torch.cat(tensors, 0)
        return self._extract_tensor(x, max_keypoints, threshold)

    def _extract_tensor(self, x: torch.Tensor, max_keypoints: int, threshold: float | None) -> list[Features]:
        max_keypoints = _check_max_keypoints(max_keypoints)
        threshold = _check_threshold(threshold)
        _, _, h, w = x.shape
        pixels = round(h * w * max(self.scales) ** 2)
        if self.max_pixels is not None and pixels > self.max_pixels:
            raise ValueError(
                f"image of {w}x{h} px is too large: {pixels} px per pass (x the largest scale squared) exceeds "
                f"max_pixels={self.max_pixels}; resize it (zippy.image.resize_image) or raise the limit "
                "with zippy.load(..., max_pixels=N) (command line: --max-pixels N)"
            )
        feats = []
        # One image per network call: oneDNN picks other kernels for other batch sizes, and float rounding
        # differences can flip fake-quantized values; per-image calls make a batch give exactly the
        # results of single calls, at little cost on CPU where one image already fills the GEMMs.
        for xi in x.split(1):
            passes = [(s, d) for s in self.scales for d in self.shifts]
            parts = [self._extract_pass(xi, s, d, max_keypoints, threshold) for s, d in passes]
            kpts, scores, desc = (torch.cat([p[i] for p in parts]) for i in range(3))
            if len(parts) > 1:  # the best over all passes (stable: ties keep the pass order)
                order = torch.from_numpy(np.argsort(-scores.numpy(), kind="stable")[:max_keypoints])
                kpts, scores, desc = kpts[order], scores[order], desc[order]
            meta = {
                "time_network_ms": sum(p[3] for p in parts),
                "time_post_ms": sum(p[4] for p in parts),
                "engine": self.engine,
            }
            feats.append(Features(kpts.numpy(), scores.numpy(), desc.numpy(), (w, h), meta))
        return feats

    def _extract_pass(
        self, x: torch.Tensor, scale: float, shift: tuple[int, int], max_keypoints: int, threshold: float | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, float]:
        """Keypoints float32 [N, 2] (in x's pixels), scores [N], final descriptors [N, D] and the network and
        post-processing times (ms) of one image x [1, 3, H, W] resized by ``scale``, then without its first
        ``shift`` = (dx, dy) columns and rows."""
        _, _, h0, w0 = x.shape
        rh, rw = (round(h0 * scale), round(w0 * scale)) if scale != 1.0 else (h0, w0)
        dx, dy = shift
        h, w = rh - dy, rw - dx
        if min(h, w) < 16:
            raise ValueError(
                f"scale {scale} and shift {shift} make the {w0}x{h0} image {w}x{h}, below the 16x16 minimum"
            )
        t_resize = time.perf_counter()
        if scale != 1.0:
            x = resize_tensor(x, rh, rw)
        if dx or dy:
            x = x[:, :, dy:, dx:].contiguous()
        cell = self.cfg.cell
        ph, pw = (-h) % cell, (-w) % cell
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        # the int8 network computes its descriptors only at the selected keypoints (detect / describe)
        sparse = hasattr(self._net, "describe")
        t0 = time.perf_counter()
        out = self._net.detect(x) if sparse else self._net(x)
        t1 = time.perf_counter()
        score, coords = out["score"][0, 0], out["coords"][0]
        kpts, scores = select_keypoints(score, coords, w, h, max_keypoints, threshold, self.nms_radius)
        t2 = time.perf_counter()
        if sparse:
            desc = self._net.describe(out, kpts, w + pw, h + ph)
        else:
            desc = sample_descriptors(out["desc"][0], kpts, w + pw, h + ph)
        t3 = time.perf_counter()
        desc = desc.float() if self.raw_descriptors else finalize_descriptors(desc, self.binary, self.cfg.desc_ones)
        if dx or dy:  # back to the resized image's pixels
            kpts = kpts + torch.tensor([dx, dy], dtype=torch.float32)
        if scale != 1.0:  # back to the image's pixels, pixel centres at integers in both
            kpts = (kpts + 0.5) * torch.tensor([w0 / rw, h0 / rh], dtype=torch.float32) - 0.5
        t4 = time.perf_counter()
        describe = t3 - t2 if sparse else 0.0  # network work; sampling a dense map is post-processing
        post = t4 - t1 - describe + t0 - t_resize  # with the resizing and padding
        return kpts, scores, desc, 1e3 * (t1 - t0 + describe), 1e3 * post

    def __repr__(self) -> str:
        state = "trained" if self.trained else "UNTRAINED"
        src = os.fspath(self.weights_path) if self.weights_path else "random init"
        pyramid = f", scales={self.scales}" if self.scales != (1.0,) else ""
        pyramid += f", shifts={self.shifts}" if self.shifts != ((0, 0),) else ""
        return f"Extractor({self.name!r}, engine={self.engine!r}, {state}, weights={src}{pyramid})"
