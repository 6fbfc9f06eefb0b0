"""One registry of the feature methods that every evaluation uses (HPatches, localization, relpose, benchmarks).

A method turns an RGB uint8 image into a :class:`zippy.features.Features` record with at most
``max_keypoints`` keypoints, sorted by score (detector response) descending, and says whether its
descriptors are binary (packed uint8, matched by Hamming distance) or float (matched by L2).

Methods:
    * "orb", "sift", "akaze", "brisk": OpenCV detectors + descriptors, OpenCV default parameters
      except the keypoint budget (OpenCV 5 keeps AKAZE / BRISK in ``cv2.xfeatures2d``).
    * "orb_teblid": ORB keypoints described by TEBLID (256 bits, scale factor 1.0 as OpenCV recommends
      for ORB keypoints).
    * "aliked": ``kornia.feature.ALIKED`` ("aliked-t16" by default, or ``model_name="aliked-n16"``) with
      local weights (default ``../shared/teachers/aliked-t16.pth`` beside the repository), top-k mode.
    * any zippy model with trained weights (``zippy.available_models()``: "zippypoint", "zippypoint_small",
      "kp2d"), or a backbone of ``zippy.available_backbones()`` given ``weights=``, via ``zippy.load`` with the
      run's :class:`zippy.ExtractorConfig` options.
    * "DETECTOR+MODEL" ("gftt+zippyfast", "orb+zippypoint"): a classical detector's keypoints described by a
      zippy model (:class:`DetectorPlusZippy`), to see how much of a result is the detector's.

Budget rule: keypoints are ranked by their response / score and the best ``max_keypoints`` kept
(OpenCV methods detect, describe, then keep the top ones, so keypoints dropped by the descriptor near
the border do not shrink the budget). ORB (and ORB+TEBLID) use ORB's own budget ``nfeatures =
max_keypoints``, the standard way to run ORB: it splits the budget over the 8 pyramid levels and
ranks by Harris response within each level; the result is then sorted by response. SIFT also gets
``nfeatures = max_keypoints`` (a global ranking by response, as the top-k rule).

A method that cannot run here (no opencv-contrib, no weights file) raises
:class:`MethodUnavailableError` from :func:`get_method` with the reason; pipelines record the reason
and skip the method, never silently.
"""

from __future__ import annotations

import hashlib
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from zippy.config import ExtractorConfig
from zippy.features import Features

__all__ = [
    "DETECTORS",
    "OPENCV_METHODS",
    "DetectorPlusZippy",
    "Method",
    "MethodUnavailableError",
    "available_methods",
    "default_aliked_weights",
    "get_method",
    "method_for_run",
    "methods_for_run",
    "sha256_file",
]

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
OPENCV_METHODS = ("orb", "sift", "akaze", "brisk", "orb_teblid")
ALIKED_MODELS = ("aliked-t16", "aliked-n16")


class MethodUnavailableError(RuntimeError):
    """The method exists but cannot run in this environment (missing weights, missing opencv-contrib)."""


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_aliked_weights(model_name: str = "aliked-t16") -> Path:
    """``../shared/teachers/<model_name>.pth`` relative to the repository root."""
    return REPO_ROOT.parent / "shared" / "teachers" / f"{model_name}.pth"


class Method(ABC):
    """A keypoint detector + descriptor.

    Attributes:
        name: registry name ("orb", "aliked", "zippypoint", ...).
        binary: True for packed uint8 descriptors (Hamming matching), False for float32 (L2 matching).
    """

    name: str
    binary: bool

    @abstractmethod
    def _extract(self, rgb: np.ndarray, max_keypoints: int) -> Features:
        """Method-specific extraction on a validated RGB uint8 [H,W,3] image."""

    @abstractmethod
    def info(self) -> dict[str, Any]:
        """Provenance: ``{"name", "binary", "version", "weights", "weights_sha256", "params"}``."""

    def extract(self, image_rgb_uint8: np.ndarray, max_keypoints: int) -> Features:
        """Detect and describe.

        Args:
            image_rgb_uint8: uint8 [H,W,3] RGB (gray [H,W] is accepted and replicated).
            max_keypoints: keypoint budget (> 0); the highest-scoring keypoints are kept.

        Returns:
            Features with keypoints float32 [N,2] (x, y), scores float32 [N] sorted descending,
            N <= max_keypoints, descriptors uint8 [N,B] (binary) or float32 [N,D].
        """
        from zippy.image import to_rgb_uint8

        if int(max_keypoints) <= 0:
            raise ValueError(f"max_keypoints must be a positive integer, got {max_keypoints!r}")
        rgb = to_rgb_uint8(image_rgb_uint8)
        feats = self._extract(rgb, int(max_keypoints))
        return _top_k(feats, int(max_keypoints))

    def cache_key(self) -> str:
        """Name of the method's feature caches: name, version, weights hash and the options that change the
        features (so a stale cache is never reused)."""
        info = self.info()
        parts = [self.name, str(info.get("version", ""))]
        if info.get("weights_sha256"):
            parts.append(str(info["weights_sha256"])[:12])
        params = info.get("params") or {}
        for key in ("model_name", "engine"):
            if params.get(key):
                parts.append(str(params[key]))
        return "-".join(parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, binary={self.binary})"


def _top_k(feats: Features, k: int) -> Features:
    """Sort by score descending (stable) and keep the first ``k``."""
    order = np.argsort(-feats.scores, kind="stable")[:k]
    if len(order) == len(feats) and np.array_equal(order, np.arange(len(feats))):
        return feats
    return feats.subset(order)


# ----------------------------------------------------------------------------------------------- OpenCV


class OpenCVMethod(Method):
    """OpenCV detector + descriptor; budget applied by keypoint response after description."""

    def __init__(self, name: str) -> None:
        import cv2

        if name not in OPENCV_METHODS:
            raise ValueError(f"unknown OpenCV method {name!r}; choose from {list(OPENCV_METHODS)}")
        self.name = name
        self.binary = name != "sift"
        self._cv2 = cv2
        needs_contrib = name in ("akaze", "brisk", "orb_teblid")
        if needs_contrib:
            self._contrib_factory()  # fail early with a clear reason

    def _contrib_factory(self) -> Callable[..., Any]:
        cv2 = self._cv2
        attr = {"akaze": "AKAZE_create", "brisk": "BRISK_create", "orb_teblid": "TEBLID_create"}[self.name]
        for module in (getattr(cv2, "xfeatures2d", None), cv2):
            if module is not None and hasattr(module, attr):
                return getattr(module, attr)
        raise MethodUnavailableError(
            f"{self.name}: cv2.xfeatures2d.{attr} not found in OpenCV {cv2.__version__}; "
            "install opencv-contrib-python(-headless)"
        )

    def _params(self, max_keypoints: int | None = None) -> dict[str, Any]:
        if self.name in ("orb", "orb_teblid"):
            p: dict[str, Any] = {"detector": "ORB", "nfeatures": max_keypoints}
            if self.name == "orb_teblid":
                p.update(descriptor="TEBLID", scale_factor=1.0, n_bits=256)
            return p
        if self.name == "sift":
            return {"detector": "SIFT", "nfeatures": max_keypoints}
        return {"detector": self.name.upper(), "defaults": True}

    def _extract(self, rgb: np.ndarray, max_keypoints: int) -> Features:
        cv2 = self._cv2
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        h, w = gray.shape
        if self.name == "orb":
            kps, desc = cv2.ORB_create(nfeatures=max_keypoints).detectAndCompute(gray, None)
        elif self.name == "sift":
            kps, desc = cv2.SIFT_create(nfeatures=max_keypoints).detectAndCompute(gray, None)
        elif self.name == "orb_teblid":
            kps = cv2.ORB_create(nfeatures=max_keypoints).detect(gray, None)
            teblid = self._contrib_factory()(1.0, cv2.xfeatures2d.TEBLID_SIZE_256_BITS)
            kps, desc = teblid.compute(gray, kps)
        else:
            kps, desc = self._contrib_factory()().detectAndCompute(gray, None)
        dim = {"sift": 128, "akaze": 61, "brisk": 64}.get(self.name, 32)
        if not kps or desc is None:
            return Features.empty((w, h), dim=dim, binary=self.binary)
        pts, resp = _keypoint_arrays(kps)
        desc = np.asarray(desc, np.uint8 if self.binary else np.float32)
        return Features(pts, resp, desc, (w, h), {"method": self.name})

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "binary": self.binary,
            "version": f"opencv {self._cv2.__version__}",
            "weights": None,
            "weights_sha256": None,
            "params": self._params(),
        }


def _keypoint_arrays(kps: Any) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV keypoints -> positions float32 [N, 2] (x, y) and responses float32 [N]."""
    pts = np.array([k.pt for k in kps], np.float32).reshape(-1, 2)
    return pts, np.array([k.response for k in kps], np.float32)


# ----------------------------------------------------------------------------------------------- ALIKED


class AlikedMethod(Method):
    """kornia.feature.ALIKED with local weights, top-k mode (the ``max_keypoints`` strongest local maxima)."""

    binary = False

    def __init__(self, weights: str | os.PathLike | None = None, model_name: str = "aliked-t16") -> None:
        if model_name not in ALIKED_MODELS:
            raise ValueError(f"ALIKED model_name must be one of {list(ALIKED_MODELS)}, got {model_name!r}")
        path = Path(weights) if weights is not None else default_aliked_weights(model_name)
        if not path.is_file():
            raise MethodUnavailableError(f"aliked: weights file not found: {path}")
        import kornia
        import torch
        from kornia.feature import ALIKED

        self.name = "aliked"
        self.model_name = model_name
        self.weights = path
        self.weights_sha256 = sha256_file(path)
        self._torch = torch
        self._kornia_version = kornia.__version__
        # top-k mode (threshold <= 0); the budget is set per call on the DKD head
        model = ALIKED(model_name=model_name, max_num_keypoints=1000, detection_threshold=-1.0)
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing, unexpected = model.load_state_dict(state, strict=False)
        bad_missing = [k for k in missing if not k.endswith("hw_grid")]
        if bad_missing or unexpected:
            raise ValueError(
                f"aliked: {path} does not fit {model_name}: "
                f"missing {bad_missing[:5]}, unexpected {list(unexpected)[:5]}"
            )
        self._model = model.eval()

    def _extract(self, rgb: np.ndarray, max_keypoints: int) -> Features:
        torch = self._torch
        h, w = rgb.shape[:2]
        self._model.dkd.top_k = max_keypoints
        self._model.dkd.n_limit = max_keypoints
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div_(255.0)
        with torch.inference_mode():
            out = self._model(x)[0]
        return Features(
            out.keypoints.numpy().astype(np.float32).reshape(-1, 2),
            out.keypoint_scores.numpy().astype(np.float32).reshape(-1),
            out.descriptors.numpy().astype(np.float32).reshape(len(out.keypoints), -1),
            (w, h),
            {"method": self.name},
        )

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "binary": False,
            "version": f"kornia {self._kornia_version}",
            "weights": str(self.weights),
            "weights_sha256": self.weights_sha256,
            "params": {"model_name": self.model_name, "mode": "top-k", "nms_radius": self._model.nms_radius},
        }


# ----------------------------------------------------------------------------------------------- zippy


class ZippyMethod(Method):
    """A zippy model through ``zippy.load(config)``."""

    def __init__(self, config: ExtractorConfig) -> None:
        import zippy

        self.name = config.name
        self._extractor = zippy.load(config)
        self.binary = bool(self._extractor.binary)
        self._weights = config.weights
        self._version = zippy.__version__

    @property
    def config(self) -> ExtractorConfig:
        """The extractor's config (with the engine really used)."""
        return self._extractor.config

    def _extract(self, rgb: np.ndarray, max_keypoints: int) -> Features:
        feats = self._extractor.extract(rgb, max_keypoints=max_keypoints)
        feats.meta.setdefault("method", self.name)
        return feats

    def info(self) -> dict[str, Any]:
        ex = self._extractor
        return {
            "name": self.name,
            "binary": self.binary,
            "version": f"zippy {self._version}",
            "weights": str(self._weights) if self._weights is not None else "shipped",
            "weights_sha256": getattr(ex, "weights_sha256", None),
            "params": {"trained": ex.trained, **ex.config.options(), "detector": ex.detector},
        }

    def cache_key(self) -> str:
        """The common key (name, version, weights hash, engine) and the config's tag (pyramid, grids, NMS)."""
        return f"{super().cache_key()}-{self.config.tag()}"


# ------------------------------------------------------------------------------------------ detector swap

DETECTORS = ("gftt", "orb")


class DetectorPlusZippy(Method):
    """A classical detector's keypoints described by a zippy model (``Extractor.describe``): "gftt+zippyfast".

    A diagnostic that separates the two halves of a method: with the same descriptors, how much does the
    detector decide? ``gftt``: Shi-Tomasi corners (``cv2.goodFeaturesToTrack``, quality 0.001, at least 4 px
    apart, 3x3 blocks), scored by the smallest eigenvalue; ``orb``: ORB's keypoints (8 levels, Harris score,
    ``nfeatures = max_keypoints``) at their positions in the image (the descriptor stays one pass at scale 1).
    """

    def __init__(self, detector: str, model: ZippyMethod) -> None:
        import cv2

        if detector not in DETECTORS:
            raise ValueError(f"unknown detector {detector!r}; choose from {list(DETECTORS)}")
        self.detector, self.model = detector, model
        self.name = f"{detector}+{model.name}"
        self.binary = model.binary
        self._cv2 = cv2

    def _detect(self, gray: np.ndarray, max_keypoints: int) -> tuple[np.ndarray, np.ndarray]:
        cv2 = self._cv2
        if self.detector == "orb":
            return _keypoint_arrays(cv2.ORB_create(nfeatures=max_keypoints).detect(gray, None))
        corners = cv2.goodFeaturesToTrack(gray, max_keypoints, 0.001, 4, blockSize=3)
        pts = np.zeros((0, 2), np.float32) if corners is None else corners.reshape(-1, 2).astype(np.float32)
        eig = cv2.cornerMinEigenVal(gray, 3, 3)
        return pts, eig[pts[:, 1].astype(int), pts[:, 0].astype(int)].astype(np.float32)

    def _extract(self, rgb: np.ndarray, max_keypoints: int) -> Features:
        pts, scores = self._detect(self._cv2.cvtColor(rgb, self._cv2.COLOR_RGB2GRAY), max_keypoints)
        feats = self.model._extractor.describe(rgb, pts, scores)
        feats.meta["method"] = self.name
        return feats

    def info(self) -> dict[str, Any]:
        info = self.model.info()
        params = {**info["params"], "detector": self.detector, "opencv": self._cv2.__version__}
        return {**info, "name": self.name, "params": params}

    def cache_key(self) -> str:
        return f"{self.detector}-{self.model.cache_key()}"


# ----------------------------------------------------------------------------------------------- registry


def _zippy_models() -> list[str]:
    """zippy models with trained weights, or [] while zippy's registry does not exist yet (logged)."""
    try:
        import zippy

        return list(zippy.available_models())
    except (ImportError, AttributeError) as e:
        logger.debug("zippy backbones not available yet: %s", e)
        return []


def _zippy_backbones() -> list[str]:
    """zippy backbones that load from a weights file given with ``weights=``."""
    import zippy

    return zippy.available_backbones()


def available_methods() -> list[str]:
    """All method names known to the registry (a name may still be unavailable here: see get_method)."""
    return [*OPENCV_METHODS, "aliked", *_zippy_models()]


def get_method(
    name: str,
    *,
    weights: str | os.PathLike | None = None,
    extractor: ExtractorConfig | None = None,
    **kw: Any,
) -> Method:
    """Build a method by name.

    Args:
        name: one of :func:`available_methods`.
        weights: weights file (ALIKED, zippy models); None takes the default.
        extractor: options of the zippy models (engine, scales, shifts, nms_radius; its name and weights are
            replaced by ``name`` and ``weights``); ignored by the other methods. None: the defaults.
        **kw: method options; ALIKED takes ``model_name`` ("aliked-t16" or "aliked-n16").

    Raises:
        ValueError: unknown name (the message lists the choices) or unknown option.
        MethodUnavailableError: the method cannot run here (the message says why).
    """
    key = name.strip().lower()
    if key in OPENCV_METHODS:
        if kw:
            raise ValueError(f"{key} takes no options, got {sorted(kw)}")
        return OpenCVMethod(key)
    if key in ("aliked", *ALIKED_MODELS):
        opts = dict(kw)
        model_name = opts.pop("model_name", key if key in ALIKED_MODELS else "aliked-t16")
        if opts:
            raise ValueError(f"aliked options are ['model_name'], got {sorted(opts)}")
        return AlikedMethod(weights=weights, model_name=model_name)
    if key in _zippy_models() or (weights is not None and key in _zippy_backbones()):
        if kw:
            raise ValueError(f"zippy model {key} takes weights and extractor only, got {sorted(kw)}")
        return ZippyMethod((extractor or ExtractorConfig()).replace(name=key, weights=weights))
    det, plus, model = key.partition("+")
    if plus and det in DETECTORS:  # "gftt+zippyfast": a classical detector, a zippy model's descriptors
        inner = get_method(model, weights=weights, extractor=extractor, **kw)
        if not isinstance(inner, ZippyMethod):
            raise ValueError(f"{name!r}: the part after '+' must be a zippy model, got {model!r}")
        return DetectorPlusZippy(det, inner)
    raise ValueError(
        f"unknown method {name!r}; choose from {available_methods()} (or DETECTOR+MODEL, DETECTOR in {list(DETECTORS)})"
    )


def method_for_run(name: str, conf: Any) -> Method:
    """:func:`get_method` with an evaluation config's ``weights`` (a {method: file} dict) and ``extractor`` options
    (the HPatches, localization and relative-pose configs all carry them)."""
    return get_method(name, weights=conf.weights.get(name), extractor=conf.extractor)


def methods_for_run(conf: Any) -> tuple[list[Method], dict[str, str]]:
    """The methods of ``conf.methods`` that can run here (:func:`method_for_run`), and {name: reason} of the rest.

    Raises:
        ValueError: none of them can run.
    """
    methods: list[Method] = []
    skipped: dict[str, str] = {}
    for name in conf.methods:
        try:
            methods.append(method_for_run(name, conf))
        except MethodUnavailableError as e:
            logger.warning("skipping method %s: %s", name, e)
            skipped[name] = str(e)
    if not methods:
        raise ValueError(f"no method can run: {skipped}")
    return methods, skipped
