"""A synthetic scene with exact ground truth: photos shipped with scikit-image as textures on planes.

The world (metres, y down, z forward) is an open box seen from its open side: a back wall made of two
panels, a left and a right wall and a floor, each carrying a photo from ``skimage.data``. Cameras
stand in front of the box and look into it. Images are rendered with ``cv2.warpPerspective`` (one
homography per plane, texel -> pixel), composited with a per-pixel depth test and supersampled 2x
for anti-aliasing, so every pixel is an exact projection of a known 3D point.

:func:`write_dataset` writes the scene in the hloc / Aachen layout read by
:mod:`zippy_eval.localization.datasets` (database images with known poses as a COLMAP model, query
lists with intrinsics, ground-truth query poses), which is also the test fixture of that layout.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zippy_eval.localization.poses import Pose, write_poses

__all__ = [
    "Plane",
    "SyntheticCamera",
    "default_scene",
    "look_at",
    "render",
    "sample_cameras",
    "write_dataset",
]

logger = logging.getLogger(__name__)

BACKGROUND = 127  # flat grey: no keypoints outside the planes


@dataclass(frozen=True)
class Plane:
    """A textured rectangle in the world.

    Attributes:
        texture: uint8 [h,w,3] RGB.
        origin: float64 [3], world position of texel (0, 0) (pixel centres at integers).
        ex: float64 [3], unit world direction of increasing texel x.
        ey: float64 [3], unit world direction of increasing texel y (orthogonal to ``ex``).
        texel: size of one texel in metres.
    """

    texture: np.ndarray
    origin: np.ndarray
    ex: np.ndarray
    ey: np.ndarray
    texel: float

    @property
    def normal(self) -> np.ndarray:
        """Unit normal float64 [3] (ex x ey)."""
        return np.cross(self.ex, self.ey)

    def homography(self, K: np.ndarray, pose: Pose) -> np.ndarray:
        """float64 [3,3] mapping homogeneous texel coordinates to image pixels."""
        cols = [pose.R @ self.ex * self.texel, pose.R @ self.ey * self.texel, pose.R @ self.origin + pose.t]
        return K @ np.stack(cols, axis=1)


@dataclass(frozen=True)
class SyntheticCamera:
    """A pinhole camera of the synthetic scene.

    Attributes:
        K: float64 [3,3] intrinsics for pixel centres at integers.
        pose: cam_from_world.
        size: (width, height).
    """

    K: np.ndarray
    pose: Pose
    size: tuple[int, int]


def _texture(name: str) -> np.ndarray:
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)())
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3].astype(np.uint8))


def _plane(name: str, center: Sequence[float], ex: Sequence[float], ey: Sequence[float], width_m: float) -> Plane:
    tex = _texture(name)
    h, w = tex.shape[:2]
    ex_, ey_ = np.asarray(ex, np.float64), np.asarray(ey, np.float64)
    ex_, ey_ = ex_ / np.linalg.norm(ex_), ey_ / np.linalg.norm(ey_)
    texel = width_m / w
    origin = np.asarray(center, np.float64) - ex_ * texel * (w - 1) / 2 - ey_ * texel * (h - 1) / 2
    return Plane(tex, origin, ex_, ey_, texel)


def default_scene() -> list[Plane]:
    """The open box: back wall (astronaut, coffee) at z = 8, left (rocket) and right (chelsea) walls, floor.

    Returns:
        Planes in world coordinates (metres; x right, y down, z forward).
    """
    s = np.sin(np.radians(20.0))
    c = np.cos(np.radians(20.0))
    return [
        _plane("astronaut", (-1.6, -0.3, 8.0), (1, 0, 0), (0, 1, 0), 3.0),
        _plane("coffee", (1.7, -0.2, 7.6), (c, 0, -s), (0, 1, 0), 3.4),
        _plane("rocket", (-3.2, -0.4, 5.5), (0.2, 0, -1), (0, 1, 0), 4.0),
        _plane("chelsea", (3.3, -0.4, 5.0), (-0.15, 0, 1), (0, 1, 0), 3.6),
        _plane("immunohistochemistry", (0.0, 1.6, 5.5), (1, 0, 0), (0, 0, -1), 4.0),
    ]


def look_at(center: Sequence[float], target: Sequence[float], up: Sequence[float] = (0.0, -1.0, 0.0)) -> Pose:
    """The cam_from_world pose of a camera at ``center`` looking at ``target`` (camera y points down)."""
    c = np.asarray(center, np.float64)
    z = np.asarray(target, np.float64) - c
    z /= np.linalg.norm(z)
    x = np.cross(-np.asarray(up, np.float64), z)
    if np.linalg.norm(x) < 1e-9:
        raise ValueError("viewing direction is parallel to the up vector")
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    return Pose(R, -R @ c)


def intrinsics(size: tuple[int, int], focal: float) -> np.ndarray:
    """float64 [3,3] pinhole matrix with the principal point at the image centre (pixel centres at integers)."""
    w, h = size
    return np.array([[focal, 0, (w - 1) / 2], [0, focal, (h - 1) / 2], [0, 0, 1]], np.float64)


def sample_cameras(
    rng: np.random.Generator, num: int, size: tuple[int, int] = (480, 360), focal: float | None = None
) -> list[SyntheticCamera]:
    """Random cameras in front of the box looking into it.

    Centres uniform in x [-1.2, 1.2], y [-0.6, 0.3], z [-1.5, 1.0]; targets around (0, 0, 6.5).
    """
    f = float(focal) if focal is not None else 0.9 * size[0]
    K = intrinsics(size, f)
    cams = []
    for _ in range(num):
        center = rng.uniform([-1.2, -0.6, -1.5], [1.2, 0.3, 1.0])
        target = np.array([0.0, 0.0, 6.5]) + rng.uniform([-1.0, -0.5, -0.5], [1.0, 0.5, 0.5])
        cams.append(SyntheticCamera(K, look_at(center, target), size))
    return cams


def render(planes: Sequence[Plane], camera: SyntheticCamera, supersample: int = 2) -> np.ndarray:
    """Render the planes seen by ``camera``.

    Args:
        planes: scene planes.
        camera: intrinsics, pose and image size.
        supersample: render at this factor then area-downsample (anti-aliasing); 1 disables it.

    Returns:
        uint8 [h,w,3] RGB; pixels that see no plane are flat grey.
    """
    import cv2

    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    w, h = camera.size
    s = int(supersample)
    W, H = w * s, h * s
    # pixel centre i at scale 1 covers centres s*i .. s*i + s-1 at scale s: x_s = s*x + (s-1)/2
    S = np.array([[s, 0, (s - 1) / 2], [0, s, (s - 1) / 2], [0, 0, 1]], np.float64)
    K = S @ camera.K
    Kinv = np.linalg.inv(K)
    u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    rays = np.stack([u, v, np.ones_like(u)], axis=-1) @ Kinv.T  # [H,W,3], z = 1
    depth = np.full((H, W), np.inf)
    out = np.full((H, W, 3), BACKGROUND, np.uint8)
    for plane in planes:
        Hm = plane.homography(K, camera.pose)
        n_c = camera.pose.R @ plane.normal
        d_c = float(n_c @ (camera.pose.R @ plane.origin + camera.pose.t))
        denom = rays @ n_c
        with np.errstate(divide="ignore", invalid="ignore"):
            z = d_c / denom
        th, tw = plane.texture.shape[:2]
        inside = cv2.warpPerspective(
            np.ones((th, tw), np.uint8), Hm, (W, H), flags=cv2.INTER_NEAREST, borderValue=0
        ).astype(bool)
        visible = inside & np.isfinite(z) & (z > 0) & (z < depth)
        if not visible.any():
            continue
        color = cv2.warpPerspective(plane.texture, Hm, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        out[visible] = color[visible]
        depth[visible] = z[visible]
    if s > 1:
        out = cv2.resize(out, (w, h), interpolation=cv2.INTER_AREA)
    return out


def write_dataset(
    root: str | os.PathLike,
    num_db: int = 10,
    num_query: int = 6,
    *,
    size: tuple[int, int] = (480, 360),
    seed: int = 0,
    planes: Sequence[Plane] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Render the scene and write it in the hloc / Aachen layout.

    Layout written::

        root/images/db/db_000.png ...          database images
        root/images/query/query_000.png ...    query images
        root/queries/synthetic_queries_with_intrinsics.txt   name SIMPLE_RADIAL w h f cx cy 0
        root/queries/synthetic_queries_poses.txt             ground truth, name qw qx qy qz tx ty tz
        root/3D-models/reference/{cameras,images,points3D}.txt   database poses (no points)

    Intrinsics in the files follow COLMAP (pixel centres at +0.5): cx = (w-1)/2 + 0.5 = w/2.

    Args:
        root: output folder (created).
        num_db: database images (>= 2).
        num_query: query images (>= 1).
        size: (width, height) of every image.
        seed: random seed of the camera poses.
        planes: scene; default :func:`default_scene`.
        progress: called with 1 after each rendered image (e.g. ``tqdm.update``).

    Returns:
        ``root``.
    """
    import cv2
    import pycolmap

    if num_db < 2 or num_query < 1:
        raise ValueError(f"need num_db >= 2 and num_query >= 1, got {num_db} and {num_query}")
    root = Path(root)
    planes = list(planes) if planes is not None else default_scene()
    rng = np.random.default_rng(seed)
    cams = sample_cameras(rng, num_db + num_query, size)
    names = [f"db/db_{i:03d}.png" for i in range(num_db)] + [f"query/query_{i:03d}.png" for i in range(num_query)]
    for name, cam in zip(names, cams):
        path = root / "images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        rgb = render(planes, cam)
        if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {path}")
        if progress is not None:
            progress(1)

    w, h = size
    f = float(cams[0].K[0, 0])
    queries = root / "queries"
    queries.mkdir(parents=True, exist_ok=True)
    lines = [f"{n} SIMPLE_RADIAL {w} {h} {f:.6f} {w / 2:.6f} {h / 2:.6f} 0" for n in names[num_db:]]
    (queries / "synthetic_queries_with_intrinsics.txt").write_text("\n".join(lines) + "\n")
    write_poses({n: c.pose for n, c in zip(names[num_db:], cams[num_db:])}, queries / "synthetic_queries_poses.txt")

    rec = pycolmap.Reconstruction()
    camera = pycolmap.Camera.create_from_model_name(1, "SIMPLE_RADIAL", f, w, h)
    camera.params = [f, w / 2, h / 2, 0.0]
    rec.add_camera_with_trivial_rig(camera)
    for i, (name, cam) in enumerate(zip(names[:num_db], cams[:num_db]), 1):
        image = pycolmap.Image(name=name, camera_id=1, image_id=i)
        rec.add_image_with_trivial_frame(image, cam.pose.to_rigid3d())
    model = root / "3D-models" / "reference"
    model.mkdir(parents=True, exist_ok=True)
    rec.write_text(str(model))
    logger.info("synthetic scene: %d database + %d query images in %s", num_db, num_query, root)
    return root
