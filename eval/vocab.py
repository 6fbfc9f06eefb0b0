"""Train a bag-of-words vocabulary on the descriptors of a folder of photos (`zippy vocab train`).

Images are read, downscaled so that their short side is at most ``short_side`` px (never enlarged), and
described with a method of :mod:`zippy_eval.methods` (a zippy model, or "orb"); descriptors are cached per
method in one ``.npz`` per image under ``cache_dir`` (re-training with another k / levels skips
extraction). The vocabulary records the method, its weights sha256 and the training set.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zippy.vocabulary import Vocabulary

__all__ = ["VocabTrainConf", "extract_descriptors", "list_training_images", "train_vocabulary"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff")


@dataclass(frozen=True)
class VocabTrainConf:
    """How a vocabulary is trained.

    Attributes:
        model: descriptor method ("zippypoint", another zippy model, or "orb").
        weights: weights file of a zippy model (None: shipped).
        engine: zippy engine.
        k: branching factor; levels: depth.
        max_images: at most this many images, an evenly spaced subset of the sorted list (None: all).
        max_keypoints: keypoints per image.
        short_side: images are downscaled to this short side in px when larger (0: never).
        max_descriptors: cluster at most this many descriptors (random subset; the idf uses all).
        exclude: file name patterns left out (e.g. a development split).
        seed: clustering seed.
    """

    model: str = "zippypoint"
    weights: str | None = None
    engine: str = "auto"
    k: int = 10
    levels: int = 5
    max_images: int | None = None
    max_keypoints: int = 1000
    short_side: int = 480
    max_descriptors: int | None = None
    exclude: tuple[str, ...] = ()
    seed: int = 0


def list_training_images(
    dirs: Sequence[str | os.PathLike], exclude: Sequence[str] = (), max_images: int | None = None
) -> list[Path]:
    """Image files of ``dirs`` (not recursive), sorted by name, without ``exclude`` patterns; with
    ``max_images``, an evenly spaced subset.

    Raises:
        NotADirectoryError: a folder does not exist.
        ValueError: no image found.
    """
    paths: list[Path] = []
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise NotADirectoryError(f"image folder not found: {d}")
        paths += [
            p
            for p in sorted(d.iterdir())
            if p.suffix.lower() in IMAGE_SUFFIXES and not any(fnmatch.fnmatch(p.name, e) for e in exclude)
        ]
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {[str(d) for d in dirs]}")
    if max_images is not None and len(paths) > max_images:
        if max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {max_images}")
        paths = [paths[int(i)] for i in np.linspace(0, len(paths) - 1, max_images).round().astype(int)]
    return paths


def _downscale(rgb: np.ndarray, short_side: int) -> np.ndarray:
    from zippy.image import resize_image

    h, w = rgb.shape[:2]
    if short_side <= 0 or min(h, w) <= short_side:
        return rgb
    s = short_side / min(h, w)
    return resize_image(rgb, max(16, round(w * s)), max(16, round(h * s)))


def extract_descriptors(
    paths: Sequence[Path],
    method: Any,
    max_keypoints: int,
    short_side: int,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> list[np.ndarray]:
    """Packed descriptors uint8 [N_i, 32] of each image (cached as ``cache_dir/<file name>.npz``)."""
    from tqdm import tqdm

    from zippy.image import read_image
    from zippy.vocabulary import _atomic_write_npz

    out = []
    for p in tqdm(paths, desc=f"describe ({method.name})", unit="img", disable=not progress):
        cached = cache_dir / f"{p.name}.npz" if cache_dir is not None else None
        if cached is not None and cached.is_file():
            with np.load(cached, allow_pickle=False) as z:
                out.append(z["descriptors"])
            continue
        feats = method.extract(_downscale(read_image(p), short_side), max_keypoints)
        if not feats.is_binary or feats.descriptors.shape[1] != 32:
            raise ValueError(f"{method.name} gives {feats.descriptors.dtype} {feats.descriptors.shape[1:]} "
                             "descriptors; a vocabulary needs packed 256-bit ones (uint8 [N,32])")  # fmt: skip
        if cached is not None:
            _atomic_write_npz(cached, {"descriptors": feats.descriptors})
        out.append(feats.descriptors)
    return out


def train_vocabulary(
    image_dirs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    conf: VocabTrainConf = VocabTrainConf(),
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> tuple[Path, Vocabulary]:
    """Describe the training images, train, and write the vocabulary atomically to ``out`` (.npz).

    Returns:
        the written path and the vocabulary.
    """
    from tqdm import tqdm

    import zippy
    from zippy.config import ExtractorConfig
    from zippy_eval.methods import get_method

    out = Path(out)
    if out.suffix != ".npz":
        raise ValueError(f"vocabulary file must end in .npz, got {out.name!r}")
    paths = list_training_images(image_dirs, conf.exclude, conf.max_images)
    method = get_method(conf.model, weights=conf.weights, extractor=ExtractorConfig(conf.model, engine=conf.engine))
    info = method.info()
    cache = Path(cache_dir) / conf.model / f"k{conf.max_keypoints}_s{conf.short_side}" if cache_dir else None
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    descs = extract_descriptors(paths, method, conf.max_keypoints, conf.short_side, cache, progress)
    extract_s, extract_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    total = int(sum(d.shape[0] for d in descs))
    logger.info("%d descriptors from %d images in %.0f s", total, len(paths), extract_s)
    n_cluster = min(total, conf.max_descriptors or total)
    with tqdm(total=n_cluster, desc="cluster", unit="desc", disable=not progress) as bar:
        voc = Vocabulary.train(
            descs,
            conf.k,
            conf.levels,
            max_descriptors=conf.max_descriptors,
            seed=conf.seed,
            progress=bar.update,
            meta={
                "model": Path(info["weights"]).stem if info.get("weights") not in (None, "shipped") else conf.model,
                "model_sha256": info.get("weights_sha256"),
                "descriptor_method": info,
                "train_conf": asdict(conf),
                "training_folders": [Path(d).name for d in image_dirs],
                "extraction_seconds": round(extract_s, 1),
                "extraction_cpu_seconds": round(extract_cpu, 1),
                "zippy_version": zippy.__version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )
    voc.save(out)
    logger.info("%r written to %s", voc, out)
    return out, voc
