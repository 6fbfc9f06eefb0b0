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

from zippy.config import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_NMS_RADIUS,
    ENGINES,
    ExtractorConfig,
    check_detector,
    check_max_pixels,
    check_nms_radius,
    check_scales,
    check_shifts,
)
from zippy.corners import detect_corners, rgb_to_grey
from zippy.features import Features
from zippy.image import resize_image, to_tensor
from zippy.models import KeypointNet, ModelConfig, available, build_network, default_config
from zippy.postprocess import finalize_descriptors, sample_network_descriptors, select_keypoints
from zippy.weights import build_model, file_sha256, load_weights, shipped_weights

log = logging.getLogger(__name__)

__all__ = ["ENGINES", "Extractor"]

NetFn = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def resize_tensor(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """float32 [1, C, H, W] -> [1, C, height, width] by :func:`zippy.image.resize_image` (OpenCV, as the
    evaluation's resizing); about 3x faster than ``F.interpolate`` here."""
    out = resize_image(x[0].permute(1, 2, 0).numpy(), width, height)
    return torch.from_numpy(out.reshape(height, width, -1)).permute(2, 0, 1)[None].contiguous()


MAX_KEYPOINTS_LIMIT = 2**31 - 1
"""Largest ``max_keypoints`` (the keypoint kernels count in int32/int64; larger values are meaningless)."""


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


class Extractor:
    """Keypoints, scores and descriptors from images with a trained network.

    Attributes:
        name: backbone name; engine: the engine really used ("fp32", "int8", "onnx").
        engine_path: how it runs: "int8-direct" (oneDNN int8 kernels exact on this CPU), "int8-split" (the
            kernels saturate here, so each 8-bit conv reads its inputs in two halves below 129; exact),
            "onnx-int8" / "onnx-fp32" (onnxruntime) or "fp32" (the fake-quantized torch network).
        engine_reason: why that path (the load-time kernel check's finding, or why int8 was not possible).
        binary: True when descriptors are packed bits uint8 [N, 32].
        trained: False when running untrained (random) weights.
        weights_path / weights_sha256: the weights file used, if any.
        nms_radius: px radius of the keypoint NMS between neighbouring cells (default ``DEFAULT_NMS_RADIUS``,
            1; 0: none).
        scales: image-pyramid scales (default (1.0,), one pass). With several, the image is resized by
            each factor, keypoints are detected and described at every scale, mapped back to the
            image's pixels and the ``max_keypoints`` best by score kept over all scales. On the
            development split, (1.41, 1.0) raises zippypoint_small's H@3 from 0.77 to 0.85 at about
            three times the network cost (docs/hpatches.md).
        shifts: grid shifts (default ((0, 0),), one pass per scale). The network sees the image through
            8x8 cells, so what it detects and how it describes a point depend on where the point falls in
            its cell: shifting an image by 4 px dropped the repeatability of earlier zippypoint weights
            to about 0.74 and their MMA@3 to about 0.84 (docs/hpatches.md, "Image pyramid and grid shifts").
            Each (dx, dy) adds a pass per scale on the image without its first dx columns and dy rows (the grid
            moved by (dx, dy)); the keypoints of all passes are mapped back and the ``max_keypoints`` best by
            score kept, as with ``scales``. ((0, 0), (4, 4)) doubles the cost.
        detector: where the keypoints come from: "network" (the keypoint head) or "corners" (Shi-Tomasi corners of
            the smoothed image, :func:`zippy.corners.detect_corners`, described by the network; a 4 px shift of
            the image keeps 0.99 of them). The model's own choice (its weights file's ``detector`` option, else
            "network") unless one is given.
        raw_descriptors: False (default) gives the final descriptors (packed bits, or L2-normalized floats).
            True gives float32 [N, D], the descriptor map sampled at the keypoints before binarization or
            normalization; a diagnostic (e.g. ``tools/binarization_gap.py``), not for matching as is.
        config: the :class:`~zippy.config.ExtractorConfig` of this extractor, with the engine really used.
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
        detector: str | None = None,
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
        self._detector_option = check_detector(detector)
        self.detector = check_detector(detector or self.cfg.option("detector", "network"))
        self.raw_descriptors = False
        self._config_name = self.name
        self.engine_path, self.engine_reason = "", ""
        self.engine, self._net = self._make_engine(engine)

    @property
    def config(self) -> ExtractorConfig:
        """The options of this extractor as an :class:`ExtractorConfig` (the engine really used, the weights file)."""
        return ExtractorConfig(
            name=self._config_name,
            weights=os.fspath(self.weights_path) if self.weights_path is not None else None,
            engine=self.engine,
            scales=self.scales,
            shifts=self.shifts,
            nms_radius=self.nms_radius,
            allow_untrained=not self.trained,
            max_pixels=self.max_pixels,
            detector=self._detector_option,
        )

    @classmethod
    def from_config(cls, config: ExtractorConfig) -> Extractor:
        """See :func:`zippy.load`."""
        from zippy.weights import shipped_models

        name = config.name
        shipped = shipped_weights(name)
        backbones = sorted(available())
        if name not in backbones and shipped is None:
            raise ValueError(
                f"unknown model {name!r}; choose one of {shipped_models()} (trained), or one of the backbones "
                f"{backbones} with allow_untrained=True"
            )
        opts = {"engine": config.engine, "scales": config.scales, "shifts": config.shifts}
        opts["nms_radius"] = config.nms_radius
        opts["max_pixels"] = config.max_pixels
        opts["detector"] = config.detector
        path = Path(config.weights) if config.weights is not None else shipped
        if path is None:
            if not config.allow_untrained:
                raise ValueError(
                    f"no trained weights ship for backbone {name!r}: pass weights=<file>, or allow_untrained=True "
                    f"for random weights (tests, speed); trained models: {shipped_models()}"
                )
            log.warning("no trained weights ship for %r: using UNTRAINED random weights", name)
            torch.manual_seed(0)
            ex = cls(build_network(default_config(name)), **opts)
        else:
            cfg, state, meta = load_weights(path)
            if cfg.backbone != name and config.weights is not None:
                log.info("weights %s hold backbone %r (asked for %r): using the file's", path, cfg.backbone, name)
            ex = cls(build_model(cfg, state), weights_path=path, meta=meta, **opts)
        ex._config_name = name
        return ex

    # --- engines -------------------------------------------------------------------------------
    def _make_engine(self, engine: str) -> tuple[str, NetFn]:
        """(engine, network) for the requested engine; sets ``engine_path`` and ``engine_reason``."""
        from zippy.quant import int8

        if engine in ("auto", "fp32") and self.cfg.topology == "fast":
            from zippy.models.fastnet import fold_for_inference

            self.engine_path = "fp32-folded"
            self.engine_reason = "float convs with BatchNorm folded; descriptors computed at the keypoints only"
            return "fp32", fold_for_inference(self.model)

        notes = []
        if engine in ("auto", "int8"):
            reason = int8.unsupported_reason(self.model)
            if reason is None:
                net = int8.convert(self.model)
                self.engine_path, self.engine_reason = f"int8-{net.kernel_path}", net.kernel_reason
                return "int8", net
            if engine == "int8":
                raise ValueError(f"engine 'int8' is not available for {self.name!r}: {reason}")
            notes.append(f"int8: {reason}")
            log.debug("int8 engine unavailable (%s)", reason)
        if engine == "auto" and int8.model_unsupported_reason(self.model) is None:
            # a trained zippypoint network but no exact oneDNN path here (ARM, or x86 kernels that failed the
            # check): the ONNX int8 graph, exact by construction on every CPU, checked against the model
            net, why = self._checked_onnx_int8()
            if net is not None:
                self.engine_path, self.engine_reason = "onnx-int8", "; ".join([*notes, why])
                return "onnx", net
            notes.append(why)
        if engine == "onnx":
            from zippy.quant import onnx_engine

            net = onnx_engine.OnnxNet(self.model)
            kind = "int8" if net.int8 else "fp32"
            self.engine_path, self.engine_reason = f"onnx-{kind}", f"onnxruntime, the {kind} graph (requested)"
            return "onnx", net
        self.engine_path = "fp32"
        self.engine_reason = "; ".join(notes) if notes else "requested"
        return "fp32", self.model

    def _checked_onnx_int8(self) -> tuple[NetFn | None, str]:
        """The onnxruntime int8 graph and why it is used, or (None, why not): it must reproduce the model's
        score and descriptor maps on a small test image (a saturating kernel would miss them by far)."""
        try:
            from zippy.quant import onnx_engine

            net = onnx_engine.OnnxNet(self.model, int8=True)
        except ImportError as e:
            return None, f"onnx: not available ({e})"
        gen = torch.Generator().manual_seed(0)
        x = F.interpolate(torch.rand(1, 3, 8, 12, generator=gen), size=(64, 96), mode="bilinear")
        with torch.inference_mode():
            ref, out = self.model(x), net(x)
        # fraction of values within a tolerance, and the fraction needed: the heads round a little differently
        # from the model's float convs, a saturating kernel would be off everywhere
        need = {"score": (1e-3, 0.99), "coords": (0.05, 0.99), "desc": (1e-2, 0.95)}
        close = {k: float(((out[k] - ref[k]).abs() <= tol).float().mean()) for k, (tol, _) in need.items()}
        if any(close[k] < frac for k, (_, frac) in need.items()):
            return None, f"onnx: the int8 graph missed the model on the load-time check ({close}, needed {need})"
        return net, "onnxruntime's int8 graph (exact integer convs), checked against the model at load"

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
        self._check_size(w, h)
        feats = []
        # One image per network call: oneDNN picks other kernels for other batch sizes, and float rounding
        # differences can flip fake-quantized values; per-image calls make a batch give exactly the
        # results of single calls, at little cost on CPU where one image already fills the GEMMs.
        for xi in x.split(1):
            passes = [(s, d) for s in self.scales for d in self.shifts]
            parts = [self._extract_pass(xi, s, d, max_keypoints, threshold) for s, d in passes]
            kpts, scores, desc = (torch.cat([p[i] for p in parts]) for i in range(3))
            # pyramid level of each keypoint: 0 for the largest scale (ORB's octave; one scale: all 0)
            rank = {sc: i for i, sc in enumerate(sorted(set(self.scales), reverse=True))}
            octave = np.concatenate([np.full(len(p[1]), rank[sc], np.int32) for p, (sc, _) in zip(parts, passes)])
            if len(parts) > 1:  # the best over all passes (stable: ties keep the pass order)
                order = np.argsort(-scores.numpy(), kind="stable")[:max_keypoints]
                octave = octave[order]
                order = torch.from_numpy(order)
                kpts, scores, desc = kpts[order], scores[order], desc[order]
            meta = {
                "time_network_ms": sum(p[3] for p in parts),
                "time_post_ms": sum(p[4] for p in parts),
                "engine": self.engine,
                "octave": octave,
                "octave_scales": sorted(set(self.scales), reverse=True),
                "engine_path": self.engine_path,
            }
            feats.append(Features(kpts.numpy(), scores.numpy(), desc.numpy(), (w, h), meta))
        return feats

    def _check_size(self, w: int, h: int) -> None:
        """ValueError when a pass over a w x h image (times the largest scale squared) exceeds max_pixels."""
        pixels = round(h * w * max(self.scales) ** 2)
        if self.max_pixels is not None and pixels > self.max_pixels:
            raise ValueError(
                f"image of {w}x{h} px is too large: {pixels} px per pass (x the largest scale squared) exceeds "
                f"max_pixels={self.max_pixels}; resize it (zippy.image.resize_image) or raise the limit "
                "with zippy.load(..., max_pixels=N) (command line: --max-pixels N)"
            )

    @torch.inference_mode()
    def describe(self, image: Any, keypoints: Any, scores: Any = None) -> Features:
        """Descriptors of this model at given keypoints, e.g. another detector's (as OpenCV's ``compute``).

        One network pass at scale 1; the descriptors are the ones :meth:`extract` gives at the same points.

        Args:
            image: as for :meth:`extract`.
            keypoints: float [N, 2] (x, y) in the image's pixels (centres at integers), inside the image.
            scores: float [N] kept as given (None: all 1).

        Returns:
            Features with the keypoints and scores as given (same order) and descriptors as :meth:`extract`'s.

        Raises:
            ValueError: keypoints not [N, 2], not finite or outside the image; scores of another length; an
                extractor with several scales or grid shifts (describe runs one pass).
        """
        if self.scales != (1.0,) or self.shifts != ((0, 0),):
            raise ValueError(
                f"describe runs one pass at scale 1; this extractor has scales {self.scales} and shifts {self.shifts}"
            )
        x = to_tensor(image)
        if x.shape[0] != 1:
            raise ValueError(f"describe takes one image, got a batch of {x.shape[0]}")
        _, _, h, w = x.shape
        self._check_size(w, h)
        kpts = torch.from_numpy(np.ascontiguousarray(keypoints, np.float32))
        if kpts.ndim != 2 or kpts.shape[1] != 2:
            raise ValueError(f"keypoints must be float [N, 2] (x, y), got shape {tuple(kpts.shape)}")
        inside = (kpts[:, 0] >= 0) & (kpts[:, 0] <= w - 1) & (kpts[:, 1] >= 0) & (kpts[:, 1] <= h - 1)
        if not bool(inside.all()):  # NaN fails the comparisons too
            bad = kpts[~inside][0].tolist()
            raise ValueError(
                f"{int((~inside).sum())} keypoint(s) outside the {w}x{h} image or not finite, e.g. (x, y) = {bad}"
            )
        n = kpts.shape[0]
        sc = torch.ones(n) if scores is None else torch.from_numpy(np.ascontiguousarray(scores, np.float32)).reshape(-1)
        if sc.shape[0] != n:
            raise ValueError(f"scores must have one value per keypoint ({n}), got {sc.shape[0]}")
        kpts, sc, desc, t_net, t_post = self._extract_pass(x, 1.0, (0, 0), max(n, 1), None, given=(kpts, sc))
        meta = {"time_network_ms": t_net, "time_post_ms": t_post, "engine": self.engine}
        meta["engine_path"] = self.engine_path
        return Features(kpts.numpy(), sc.numpy(), desc.numpy(), (w, h), meta)

    def _extract_pass(
        self,
        x: torch.Tensor,
        scale: float,
        shift: tuple[int, int],
        max_keypoints: int,
        threshold: float | None,
        given: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, float]:
        """Keypoints float32 [N, 2] (in x's pixels), scores [N], final descriptors [N, D] and the network and
        post-processing times (ms) of one image x [1, 3, H, W] resized by ``scale``, then without its first
        ``shift`` = (dx, dy) columns and rows. ``given`` (keypoints, scores) replaces the detection (scale 1
        and no shift only)."""
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
        corners = given is None and self.detector == "corners"
        if corners:  # Shi-Tomasi corners of the (resized, shifted) image, before the padding
            grey = rgb_to_grey(x[0, :, :h, :w].permute(1, 2, 0).numpy())
            pts, strength = detect_corners(grey, max_keypoints, threshold)
            given = torch.from_numpy(pts), torch.from_numpy(strength)
        # the int8 network computes its descriptors only at the selected keypoints (detect / describe)
        sparse = hasattr(self._net, "describe")
        t0 = time.perf_counter()
        if sparse and corners and self.cfg.topology == "fast":
            out = self._net.detect(x, keypoints=False)  # the keypoint head is not needed
        else:
            out = self._net.detect(x) if sparse else self._net(x)
        t1 = time.perf_counter()
        if given is None:
            score, coords = out["score"][0, 0], out["coords"][0]
            kpts, scores = select_keypoints(score, coords, w, h, max_keypoints, threshold, self.nms_radius)
        else:
            kpts, scores = given
        t2 = time.perf_counter()
        if sparse:
            desc = self._net.describe(out, kpts, w + pw, h + ph)
        else:
            desc = sample_network_descriptors(out, 0, kpts, w + pw, h + ph)
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
        pyramid += f", detector={self.detector!r}" if self.detector != "network" else ""
        return f"Extractor({self.name!r}, engine={self.engine!r} ({self.engine_path}), {state}, weights={src}{pyramid})"
