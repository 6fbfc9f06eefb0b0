"""Camera poses: quaternions, the ``name qw qx qy qz tx ty tz`` file format, pose errors and recall.

A pose is ``cam_from_world``: a world point X maps to camera coordinates R @ X + t (COLMAP's
convention). Quaternions are (w, x, y, z), Hamilton, with w >= 0 when written.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "Pose",
    "pose_error",
    "qvec_to_rotmat",
    "read_poses",
    "recall_at",
    "rotmat_to_qvec",
    "write_poses",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pose:
    """A rigid ``cam_from_world`` transform.

    Attributes:
        R: float64 [3,3] rotation.
        t: float64 [3] translation.
    """

    R: np.ndarray
    t: np.ndarray

    @property
    def center(self) -> np.ndarray:
        """Camera centre in world coordinates, float64 [3] (= -R^T t)."""
        return -self.R.T @ self.t

    @property
    def qvec(self) -> np.ndarray:
        """Rotation as a unit quaternion (w, x, y, z), float64 [4]."""
        return rotmat_to_qvec(self.R)

    @classmethod
    def from_qt(cls, qvec: Sequence[float], tvec: Sequence[float]) -> Pose:
        """Build from a quaternion (w, x, y, z) and a translation."""
        return cls(qvec_to_rotmat(qvec), np.asarray(tvec, np.float64).reshape(3))

    @classmethod
    def from_rigid3d(cls, rigid: object) -> Pose:
        """Build from a ``pycolmap.Rigid3d``."""
        m = np.asarray(rigid.matrix(), np.float64)  # type: ignore[attr-defined]
        return cls(m[:, :3].copy(), m[:, 3].copy())

    def to_rigid3d(self) -> object:
        """As a ``pycolmap.Rigid3d``."""
        import pycolmap

        return pycolmap.Rigid3d(np.concatenate([self.R, self.t[:, None]], axis=1))


def qvec_to_rotmat(qvec: Sequence[float]) -> np.ndarray:
    """Rotation matrix float64 [3,3] of a quaternion (w, x, y, z) (normalised first)."""
    q = np.asarray(qvec, np.float64).reshape(-1)
    if q.shape != (4,) or not np.all(np.isfinite(q)) or np.linalg.norm(q) == 0:
        raise ValueError(f"quaternion must be 4 finite numbers (w, x, y, z), not all zero, got {qvec!r}")
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def rotmat_to_qvec(R: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) with w >= 0 of a rotation matrix float [3,3]."""
    R = np.asarray(R, np.float64)
    if R.shape != (3, 3):
        raise ValueError(f"rotation must be [3,3], got {list(R.shape)}")
    # eigenvector of the symmetric 4x4 matrix K (Bar-Itzhack), robust for every rotation
    K = (
        np.array(
            [
                [R[0, 0] - R[1, 1] - R[2, 2], 0, 0, 0],
                [R[1, 0] + R[0, 1], R[1, 1] - R[0, 0] - R[2, 2], 0, 0],
                [R[2, 0] + R[0, 2], R[2, 1] + R[1, 2], R[2, 2] - R[0, 0] - R[1, 1], 0],
                [R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1], R[0, 0] + R[1, 1] + R[2, 2]],
            ]
        )
        / 3.0
    )
    vals, vecs = np.linalg.eigh(K)
    x, y, z, w = vecs[:, np.argmax(vals)]
    q = np.array([w, x, y, z])
    return -q if q[0] < 0 else q


def pose_error(est: Pose, gt: Pose) -> tuple[float, float]:
    """Position error (distance of camera centres, world units) and rotation error (degrees)."""
    dt = float(np.linalg.norm(est.center - gt.center))
    cos = (np.trace(est.R @ gt.R.T) - 1.0) / 2.0
    dr = float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
    return dt, dr


def recall_at(
    errors: Sequence[tuple[float, float]], num_total: int, thresholds: Sequence[tuple[float, float]]
) -> list[float]:
    """Fraction of all ``num_total`` queries within each (metres, degrees) threshold.

    Args:
        errors: (position error, rotation error) of the localized queries; failed queries are absent
            (or carry inf) and count as misses.
        num_total: number of queries, localized or not.
        thresholds: (max position error, max rotation error) pairs.

    Returns:
        One recall in [0, 1] per threshold (0 when ``num_total`` is 0).
    """
    if num_total <= 0:
        return [0.0 for _ in thresholds]
    e = np.asarray(errors, np.float64).reshape(-1, 2)
    return [float(np.sum((e[:, 0] <= dt) & (e[:, 1] <= dr)) / num_total) for dt, dr in thresholds]


def write_poses(poses: Mapping[str, Pose], path: str | os.PathLike) -> Path:
    """Write ``name qw qx qy qz tx ty tz`` lines (sorted by name) atomically. Returns the path."""
    path = Path(path)
    lines = []
    for name in sorted(poses):
        if any(c.isspace() for c in name):
            raise ValueError(f"image names must not contain whitespace, got {name!r}")
        p = poses[name]
        values = [*p.qvec, *p.t]
        lines.append(name + " " + " ".join(f"{v:.10g}" for v in values))
    from zippy.io import write_text

    write_text(path, "\n".join(lines) + ("\n" if lines else ""))
    return path


def read_poses(path: str | os.PathLike) -> dict[str, Pose]:
    """Read a ``name qw qx qy qz tx ty tz`` file (blank lines and ``#`` comments skipped).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line without exactly 8 fields or with non-numbers (the message gives the line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"poses file not found: {path}")
    poses: dict[str, Pose] = {}
    for i, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 8:
            raise ValueError(f"{path}:{i}: expected 'name qw qx qy qz tx ty tz', got {line!r}")
        try:
            values = [float(v) for v in fields[1:]]
        except ValueError as e:
            raise ValueError(f"{path}:{i}: non-numeric pose in {line!r}") from e
        poses[fields[0]] = Pose.from_qt(values[:4], values[4:])
    return poses
