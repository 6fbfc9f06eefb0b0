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

from zippy.features import Features
from zippy.image import to_tensor
from zippy.models import KeypointNet, ModelConfig, available
from zippy.postprocess import finalize_descriptors, sample_descriptors, select_keypoints
from zippy.weights import build_model, file_sha256, load_weights, shipped_weights

log = logging.getLogger(__name__)

ENGINES = ("auto", "fp32", "int8", "onnx")

__all__ = ["ENGINES", "Extractor"]

NetFn = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def _check_max_keypoints(max_keypoints: int) -> int:
    if isinstance(max_keypoints, bool) or not isinstance(max_keypoints, (int, np.integer)) or max_keypoints <= 0:
        raise ValueError(f"max_keypoints must be a positive integer, got {max_keypoints!r}")
    return int(max_keypoints)


class Extractor:
    """Keypoints, scores and descriptors from images with a trained network.

    Attributes:
        name: backbone name; engine: the engine really used ("fp32", "int8", "onnx").
        binary: True when descriptors are packed bits uint8 [N, 32].
        trained: False when running untrained (random) weights.
        weights_path / weights_sha256: the weights file used, if any.
        nms_radius: px radius of the keypoint NMS (default 4).
    """

    def __init__(
        self,
        model: KeypointNet,
        *,
        engine: str = "fp32",
        weights_path: Path | None = None,
        meta: dict[str, Any] | None = None,
        nms_radius: float = 4.0,
    ):
        self.model = model.eval()
        self.cfg: ModelConfig = model.cfg
        self.name = self.cfg.backbone
        self.binary = model.binary_descriptors
        self.weights_path = weights_path
        self.weights_sha256 = file_sha256(weights_path) if weights_path is not None else None
        self.meta = dict(meta or {})
        self.trained = weights_path is not None and bool(self.meta.get("trained", True))
        self.nms_radius = nms_radius
        self.engine, self._net = self._make_engine(engine)

    @classmethod
    def from_name(cls, name: str = "zippypoint", *, weights: Any = None, engine: str = "auto") -> Extractor:
        """See :func:`zippy.load`."""
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
            return cls(KeypointNet(ModelConfig(backbone=name)), engine=engine)
        cfg, state, meta = load_weights(path)
        if cfg.backbone != name and weights is not None:
            log.info("weights %s hold backbone %r (asked for %r): using the file's", path, cfg.backbone, name)
        return cls(build_model(cfg, state), engine=engine, weights_path=path, meta=meta)

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
        if threshold is not None and not (0.0 <= float(threshold) <= 1.0):
            raise ValueError(f"threshold must be in [0, 1] or None, got {threshold!r}")
        _, _, h, w = x.shape
        cell = self.cfg.cell
        ph, pw = (-h) % cell, (-w) % cell
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        feats = []
        # One image per network call: oneDNN picks other kernels for other batch sizes, and float rounding
        # differences can flip fake-quantized values; per-image calls make a batch give exactly the
        # results of single calls, at little cost on CPU where one image already fills the GEMMs.
        # the int8 network computes its descriptors only at the selected keypoints (detect / describe)
        sparse = hasattr(self._net, "describe")
        for xi in x.split(1):
            t0 = time.perf_counter()
            out = self._net.detect(xi) if sparse else self._net(xi)
            t1 = time.perf_counter()
            kpts, scores = select_keypoints(
                out["score"][0, 0], out["coords"][0], w, h, max_keypoints, threshold, self.nms_radius
            )
            t2 = time.perf_counter()
            if sparse:
                desc = self._net.describe(out, kpts, w + pw, h + ph)
            else:
                desc = sample_descriptors(out["desc"][0], kpts, w + pw, h + ph)
            t3 = time.perf_counter()
            desc = finalize_descriptors(desc, self.binary, self.cfg.desc_ones)
            t4 = time.perf_counter()
            describe = t3 - t2 if sparse else 0.0  # network work; sampling a dense map is post-processing
            meta = {
                "time_network_ms": 1e3 * (t1 - t0 + describe),
                "time_post_ms": 1e3 * (t4 - t1 - describe),
                "engine": self.engine,
            }
            feats.append(Features(kpts.numpy(), scores.numpy(), desc.numpy(), (w, h), meta))
        return feats

    def __repr__(self) -> str:
        state = "trained" if self.trained else "UNTRAINED"
        src = os.fspath(self.weights_path) if self.weights_path else "random init"
        return f"Extractor({self.name!r}, engine={self.engine!r}, {state}, weights={src})"
