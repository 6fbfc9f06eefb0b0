"""HPatches-like sequences generated from photos.

Each sequence has ``num_images`` images (6 by default) rendered from one photo, and ``H_1_k`` text
files that map image 1 to image k exactly (the same projective maps render the images):

* ``v_`` (viewpoint): every image is a perspective view of the photo, the warp of a convex
  quadrilateral of the photo onto the output rectangle (``A_k``: photo -> image k). Image 1 is an
  axis-aligned crop of 55-70 % of the photo; views 2..N rotate (up to ``max_rotation_deg``), scale (up to
  ``max_scale`` either way), shift and perspective-distort it, more with increasing k. Every quad lies
  inside the photo, so no view sees outside it (no black borders), and at least ``min_overlap`` of
  image 1 is visible in image k. ``H_1_k = A_k A_1^-1``.
* ``i_`` (illumination): the same crop with a sub-pixel to 1 px jitter of the corners (exact H), and a
  strong photometric change per image: gamma, global and per-channel gain, a shading gradient and a
  spotlight, optional blur, Gaussian noise. Image 1 is the clean crop.

Pixel centres are at integer coordinates: ``cv2.warpPerspective(photo, A_k)`` samples output pixel
(x, y) at photo point A_k^-1 (x, y), and the quad corners are the photo points of output pixels
(0, 0), (W-1, 0), (W-1, H-1), (0, H-1).

Deterministic: the photo order is a permutation drawn from ``seed``; sequence j draws everything
else from ``np.random.default_rng([seed, j])``. The output folder gets ``generation.json`` with the
configuration and the source photo of every sequence.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "WIDE",
    "GeneratorConfig",
    "generate_sequences",
    "list_photos",
    "make_illumination_sequence",
    "make_viewpoint_sequence",
]

logger = logging.getLogger(__name__)

PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class GeneratorConfig:
    """Parameters of the generator (defaults give HPatches-like difficulty).

    Attributes:
        n: number of sequences.
        seed: random seed.
        num_images: images per sequence (>= 2).
        v_fraction: fraction of v_ sequences (the rest are i_).
        max_side: output images are the photo size, scaled down so that the longer side is at most this.
        max_rotation_deg: in-plane rotation of the hardest view.
        max_scale: scale change of the hardest view (factor, either direction).
        max_perspective: corner jitter of the hardest view, as a fraction of the crop size.
        max_shift: translation of the hardest view, as a fraction of the crop size.
        min_overlap: fraction of image 1 that must be visible in every view.
        illumination_jitter_px: corner jitter (px, output pixels) of i_ views.
        wide: the wide-viewpoint variant of the v_ sequences: every view, the first included, is drawn
            independently (a crop of ``wide_crop`` of the photo, rotated by up to ``max_rotation_deg``, each
            corner moved by up to ``max_perspective`` of the crop), kept when it sees ``min_overlap`` of
            image 1; :data:`WIDE` sets the usual wide ranges (45 degrees, 20 %, 40-95 %).
        wide_crop: crop size range of the wide views, as fractions of the photo.
    """

    n: int = 100
    seed: int = 0
    num_images: int = 6
    v_fraction: float = 0.5
    max_side: int = 1024
    max_rotation_deg: float = 30.0
    max_scale: float = 1.6
    max_perspective: float = 0.18
    max_shift: float = 0.15
    min_overlap: float = 0.4
    illumination_jitter_px: float = 1.0
    wide: bool = False
    wide_crop: tuple[float, float] = (0.40, 0.95)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.num_images < 2:
            raise ValueError(f"num_images must be >= 2, got {self.num_images}")
        if not 0.0 <= self.v_fraction <= 1.0:
            raise ValueError(f"v_fraction must be in [0, 1], got {self.v_fraction}")
        if self.max_side < 64:
            raise ValueError(f"max_side must be >= 64, got {self.max_side}")
        if self.max_scale < 1.0:
            raise ValueError(f"max_scale must be >= 1, got {self.max_scale}")
        if not 0.0 < self.min_overlap < 1.0:
            raise ValueError(f"min_overlap must be in (0, 1), got {self.min_overlap}")
        lo, hi = self.wide_crop
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"wide_crop must be 0 < lo <= hi <= 1, got {self.wide_crop}")


# the wide-viewpoint development split: independent views, rotation up to 45 degrees, corners moved by up to
# 20 % of the crop, crops of 40-95 % of the photo
WIDE = {"wide": True, "max_rotation_deg": 45.0, "max_perspective": 0.20, "wide_crop": (0.40, 0.95)}


# ----------------------------------------------------------------------------------------------- geometry


def _output_size(photo_w: int, photo_h: int, max_side: int) -> tuple[int, int]:
    s = min(1.0, max_side / max(photo_w, photo_h))
    return max(16, round(photo_w * s)), max(16, round(photo_h * s))


def _rect(w: int, h: int) -> np.ndarray:
    return np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)


def _homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    import cv2

    H = cv2.getPerspectiveTransform(src.astype(np.float32), dst.astype(np.float32)).astype(np.float64)
    return H / H[2, 2]


def _inside(quad: np.ndarray, w: int, h: int) -> bool:
    x, y = quad[:, 0], quad[:, 1]
    return bool((x >= 0).all() and (x <= w - 1).all() and (y >= 0).all() and (y <= h - 1).all())


def _convex(quad: np.ndarray, min_angle_sin: float = 0.2) -> bool:
    """Strictly convex, same orientation as the output rectangle, no corner flatter than asin(min_angle_sin)."""
    e = np.roll(quad, -1, axis=0) - quad
    cross = e[:, 0] * np.roll(e, -1, axis=0)[:, 1] - e[:, 1] * np.roll(e, -1, axis=0)[:, 0]
    norms = np.linalg.norm(e, axis=1) * np.linalg.norm(np.roll(e, -1, axis=0), axis=1)
    return bool((cross > 0).all() and (cross / np.maximum(norms, 1e-12) > min_angle_sin).all())


def _overlap(H_1k: np.ndarray, w: int, h: int, grid: int = 24) -> float:
    """Fraction of a grid over image 1 that H_1k maps inside image k (same size)."""
    from zippy.geometry import visible_mask, warp_points

    xs, ys = np.meshgrid(np.linspace(0, w - 1, grid), np.linspace(0, h - 1, grid))
    pts = np.stack([xs.ravel(), ys.ravel()], 1)
    return float(visible_mask(warp_points(pts, H_1k), w, h).mean())


def _reference_quad(rng: np.random.Generator, pw: int, ph: int) -> np.ndarray:
    """An axis-aligned crop of 55-70 % of the photo (same aspect), randomly placed inside it."""
    s = rng.uniform(0.55, 0.70)
    qw, qh = s * (pw - 1), s * (ph - 1)
    cx = (pw - 1) / 2 + rng.uniform(-1, 1) * (pw - 1 - qw) / 2 * 0.8
    cy = (ph - 1) / 2 + rng.uniform(-1, 1) * (ph - 1 - qh) / 2 * 0.8
    return np.array(
        [[cx - qw / 2, cy - qh / 2], [cx + qw / 2, cy - qh / 2], [cx + qw / 2, cy + qh / 2], [cx - qw / 2, cy + qh / 2]]
    )


def _view_quad(
    rng: np.random.Generator,
    ref: np.ndarray,
    difficulty: float,
    pw: int,
    ph: int,
    out_w: int,
    out_h: int,
    cfg: GeneratorConfig,
) -> np.ndarray:
    """A perspective view of ``ref`` inside the photo, harder with ``difficulty`` in (0, 1]."""
    c = ref.mean(axis=0)
    size = ref.max(axis=0) - ref.min(axis=0)
    A_ref = _homography(ref, _rect(out_w, out_h))
    for attempt in range(200):
        shrink = 0.97 ** (attempt // 4)
        a = np.deg2rad(rng.uniform(-1, 1) * cfg.max_rotation_deg * difficulty)
        s = np.exp(rng.uniform(-1, 1) * np.log(cfg.max_scale) * difficulty) * shrink
        rot = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        shift = rng.uniform(-1, 1, 2) * cfg.max_shift * difficulty * size * shrink
        jitter = rng.uniform(-1, 1, (4, 2)) * cfg.max_perspective * difficulty * size
        quad = c + shift + (ref - c) @ rot.T + jitter
        if not (_inside(quad, pw, ph) and _convex(quad)):
            continue
        A = _homography(quad, _rect(out_w, out_h))
        if _overlap(A @ np.linalg.inv(A_ref), out_w, out_h) >= cfg.min_overlap:
            return quad
    logger.warning("no valid view after 200 draws (difficulty %.2f); using a 10 %% zoom of image 1", difficulty)
    return c + (ref - c) * 0.9


def _render(photo: np.ndarray, A: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """warpPerspective with a Gaussian pre-blur where the view minifies the photo (anti-aliasing)."""
    import cv2

    quad = _warp(_rect(out_w, out_h), np.linalg.inv(A))
    area = 0.5 * abs(np.dot(quad[:, 0], np.roll(quad[:, 1], 1)) - np.dot(quad[:, 1], np.roll(quad[:, 0], 1)))
    minify = np.sqrt(area / float((out_w - 1) * (out_h - 1)))
    src = photo
    if minify > 1.2:
        sigma = 0.5 * np.sqrt(minify**2 - 1.0)
        src = cv2.GaussianBlur(photo, (0, 0), sigmaX=sigma, sigmaY=sigma)
    # constant black border: never sampled, since every quad lies inside the photo (tests check for black pixels)
    return cv2.warpPerspective(src, A, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def _warp(pts: np.ndarray, H: np.ndarray) -> np.ndarray:
    from zippy.geometry import warp_points

    return warp_points(pts, H)


# ----------------------------------------------------------------------------------------------- photometry


def _illumination(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """A strong random photometric change of an RGB uint8 image; returns the image and its parameters."""
    import cv2

    h, w = img.shape[:2]
    x = img.astype(np.float32) / 255.0
    p: dict[str, Any] = {
        "gamma": float(np.exp(rng.uniform(-1, 1) * np.log(2.5))),
        "gain": float(np.exp(rng.uniform(-1, 1) * np.log(2.0))),
        "channel_gain": np.exp(rng.uniform(-1, 1, 3) * np.log(1.35)).tolist(),
        "gradient": float(rng.uniform(0.0, 0.7)),
        "gradient_angle_deg": float(rng.uniform(0, 360)),
        "spotlight": float(rng.uniform(0.0, 1.0)) if rng.random() < 0.5 else 0.0,
        "blur_sigma": float(rng.uniform(0.5, 1.5)) if rng.random() < 0.4 else 0.0,
        "noise_sigma": float(rng.uniform(0.0, 0.03)),
    }
    x = np.power(x, p["gamma"]) * p["gain"] * np.asarray(p["channel_gain"], np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u = (xx / max(w - 1, 1) - 0.5) * np.cos(np.deg2rad(p["gradient_angle_deg"])) + (yy / max(h - 1, 1) - 0.5) * np.sin(
        np.deg2rad(p["gradient_angle_deg"])
    )
    shade = 1.0 + 2.0 * p["gradient"] * u
    if p["spotlight"] > 0:
        cx, cy = rng.uniform(0, w - 1), rng.uniform(0, h - 1)
        r2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / (0.25 * (w**2 + h**2))
        shade = shade * (1.0 + p["spotlight"] * np.exp(-r2 * 4.0))
    x = x * np.clip(shade, 0.05, None)[:, :, None]
    if p["blur_sigma"] > 0:
        x = cv2.GaussianBlur(x, (0, 0), sigmaX=p["blur_sigma"], sigmaY=p["blur_sigma"])
    if p["noise_sigma"] > 0:
        x = x + rng.normal(0.0, p["noise_sigma"], x.shape).astype(np.float32)
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), p


# ----------------------------------------------------------------------------------------------- sequences


def _wide_quad(rng: np.random.Generator, pw: int, ph: int, cfg: GeneratorConfig) -> np.ndarray:
    """An independent view for the wide split: a rotated, perspective crop of the photo, inside it."""
    lo, hi = cfg.wide_crop
    for _ in range(500):
        s = rng.uniform(lo, hi)
        qw, qh = s * (pw - 1), s * (ph - 1)
        a = np.deg2rad(rng.uniform(-1, 1) * cfg.max_rotation_deg)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        base = np.array([[-qw, -qh], [qw, -qh], [qw, qh], [-qw, qh]]) / 2 @ rot.T
        base = base + rng.uniform(-1, 1, (4, 2)) * cfg.max_perspective * np.array([qw, qh])
        span = base.max(axis=0) - base.min(axis=0)
        room = np.array([pw - 1, ph - 1]) - span
        if (room < 0).any():
            continue
        corner = rng.uniform(0, 1, 2) * room - base.min(axis=0)
        quad = base + corner
        if _inside(quad, pw, ph) and _convex(quad):
            return quad
    return _reference_quad(rng, pw, ph)


def _wide_views(
    rng: np.random.Generator, pw: int, ph: int, out_w: int, out_h: int, cfg: GeneratorConfig
) -> list[np.ndarray]:
    """The quads of a wide sequence: independent views that each see ``min_overlap`` of view 1."""
    ref = _wide_quad(rng, pw, ph, cfg)
    A_ref = _homography(ref, _rect(out_w, out_h))
    quads = [ref]
    for _ in range(2, cfg.num_images + 1):
        for _attempt in range(200):
            quad = _wide_quad(rng, pw, ph, cfg)
            A = _homography(quad, _rect(out_w, out_h))
            if _overlap(A @ np.linalg.inv(A_ref), out_w, out_h) >= cfg.min_overlap:
                break
        else:
            logger.warning("no wide view after 200 draws; using a 10 %% zoom of image 1")
            c = ref.mean(axis=0)
            quad = c + (ref - c) * 0.9
        quads.append(quad)
    return quads


def make_viewpoint_sequence(
    photo: np.ndarray, rng: np.random.Generator, cfg: GeneratorConfig
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Images [num_images] (RGB uint8 [H,W,3]) and homographies H_1_k (k = 2..N, float64 [3,3]) of a v_ sequence."""
    ph, pw = photo.shape[:2]
    out_w, out_h = _output_size(pw, ph, cfg.max_side)
    if cfg.wide:
        quads = _wide_views(rng, pw, ph, out_w, out_h, cfg)
        A = [_homography(q, _rect(out_w, out_h)) for q in quads]
        Hs = [a @ np.linalg.inv(A[0]) for a in A[1:]]
        return [_render(photo, a, out_w, out_h) for a in A], [H / H[2, 2] for H in Hs]
    ref = _reference_quad(rng, pw, ph)
    A1 = _homography(ref, _rect(out_w, out_h))
    images, Hs = [_render(photo, A1, out_w, out_h)], []
    n = cfg.num_images
    for k in range(2, n + 1):
        difficulty = 0.35 + 0.65 * (k - 2) / max(n - 2, 1)
        Ak = _homography(_view_quad(rng, ref, difficulty, pw, ph, out_w, out_h, cfg), _rect(out_w, out_h))
        images.append(_render(photo, Ak, out_w, out_h))
        H = Ak @ np.linalg.inv(A1)
        Hs.append(H / H[2, 2])
    return images, Hs


def make_illumination_sequence(
    photo: np.ndarray, rng: np.random.Generator, cfg: GeneratorConfig
) -> tuple[list[np.ndarray], list[np.ndarray], list[dict[str, Any]]]:
    """Images, homographies and photometric parameters of an i_ sequence (near-identity geometry)."""
    ph, pw = photo.shape[:2]
    out_w, out_h = _output_size(pw, ph, cfg.max_side)
    ref = _reference_quad(rng, pw, ph)
    A1 = _homography(ref, _rect(out_w, out_h))
    px = np.sqrt(((ref[1] - ref[0]) ** 2).sum()) / (out_w - 1)  # photo pixels per output pixel
    images, Hs, params = [_render(photo, A1, out_w, out_h)], [], []
    for _ in range(2, cfg.num_images + 1):
        quad = ref + rng.uniform(-1, 1, (4, 2)) * cfg.illumination_jitter_px * px
        c = ref.mean(axis=0)
        quad = c + (quad - c) * min(1.0, _fit_factor(quad, c, pw, ph))
        Ak = _homography(quad, _rect(out_w, out_h))
        img, p = _illumination(rng, _render(photo, Ak, out_w, out_h))
        images.append(img)
        params.append(p)
        H = Ak @ np.linalg.inv(A1)
        Hs.append(H / H[2, 2])
    return images, Hs, params


def _fit_factor(quad: np.ndarray, c: np.ndarray, pw: int, ph: int) -> float:
    """Largest factor <= 1 that keeps ``c + f (quad - c)`` inside the photo (the crop is inside, so this is ~1)."""
    f = 1.0
    for x, y in quad - c:
        for v, lo, hi in ((x, -c[0], pw - 1 - c[0]), (y, -c[1], ph - 1 - c[1])):
            if v < lo:
                f = min(f, lo / v)
            elif v > hi:
                f = min(f, hi / v)
    return f


def _write_sequence(folder: Path, images: Sequence[np.ndarray], Hs: Sequence[np.ndarray]) -> None:
    """Write 1.png..N.png and H_1_k into ``folder`` through a temporary sibling folder (atomic rename)."""
    import cv2

    from zippy.io import atomic_folder

    with atomic_folder(folder) as tmp:
        for k, img in enumerate(images, start=1):
            if not cv2.imwrite(str(tmp / f"{k}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
                raise OSError(f"cannot write {tmp / f'{k}.png'}")
        for k, H in enumerate(Hs, start=2):
            np.savetxt(tmp / f"H_1_{k}", H, fmt="%.17g")


def list_photos(src_dir: str | os.PathLike, glob: str = "*") -> list[Path]:
    """Image files in ``src_dir`` matching ``glob`` (sorted by name)."""
    src = Path(src_dir)
    if not src.is_dir():
        raise FileNotFoundError(f"source folder not found: {src}")
    photos = sorted(p for p in src.glob(glob) if p.is_file() and p.suffix.lower() in PHOTO_EXTENSIONS)
    if not photos:
        raise ValueError(f"no photos matching {glob!r} in {src} (extensions {PHOTO_EXTENSIONS})")
    return photos


def generate_sequences(
    photos: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    cfg: GeneratorConfig = GeneratorConfig(),
    *,
    overwrite: bool = False,
) -> list[Path]:
    """Generate ``cfg.n`` sequences from ``photos`` into ``out_dir``.

    Photos are taken in a seed-dependent order, each once before any repeats (repeats get a
    suffix ``_r1``...). The first round(n * v_fraction) sequences are v_, the rest i_. Existing
    sequence folders are kept (and logged) unless ``overwrite``.

    Args:
        photos: source image files.
        out_dir: output folder (created).
        cfg: generator parameters.
        overwrite: regenerate sequences that already exist.

    Returns:
        The sequence folders, in generation order.
    """
    from tqdm import tqdm

    from zippy.image import read_image

    photos = [Path(p) for p in photos]
    if not photos:
        raise ValueError("no source photos given")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(cfg.seed).permutation(len(photos))
    n_v = round(cfg.n * cfg.v_fraction)
    folders: list[Path] = []
    records: list[dict[str, Any]] = []
    for j in tqdm(range(cfg.n), desc="make-hpatches-like", unit="seq"):
        photo_path = photos[order[j % len(photos)]]
        kind = "v" if j < n_v else "i"
        name = f"{kind}_{photo_path.stem}" + (f"_r{j // len(photos)}" if j >= len(photos) else "")
        folder = out / name
        folders.append(folder)
        record: dict[str, Any] = {"name": name, "kind": kind, "source": str(photo_path), "index": j}
        records.append(record)
        if folder.is_dir() and not overwrite:
            logger.info("keeping existing %s (use overwrite to regenerate)", folder)
            record["kept_existing"] = True
            continue
        rng = np.random.default_rng([cfg.seed, j])
        photo = read_image(photo_path)
        if kind == "v":
            images, Hs = make_viewpoint_sequence(photo, rng, cfg)
        else:
            images, Hs, params = make_illumination_sequence(photo, rng, cfg)
            record["photometric"] = params
        _write_sequence(folder, images, Hs)
    from zippy_eval.results import write_json

    write_json(out / "generation.json", {"config": asdict(cfg), "sequences": records})
    return folders
