"""Shared pieces of the fault suite (tests/test_faults_*.py): tiny inputs, the CLI in a subprocess, leftovers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = ["--model", "zippypoint_small", "--engine", "fp32"]
"""The shipped small network on the fp32 engine: no int8 conversion at load (fast start-up)."""


def textured(h: int, w: int, seed: int) -> np.ndarray:
    """RGB uint8 [h, w, 3]: random rectangles and discs on a gradient (many corners)."""
    rng = np.random.default_rng(seed)
    img = np.dstack([np.tile(np.linspace(60, 200, w), (h, 1))] * 3).astype(np.uint8)
    for _ in range(max(8, h * w // 800)):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        if rng.random() < 0.5:
            cv2.rectangle(img, (x0, y0), (x0 + int(rng.integers(3, 20)), y0 + int(rng.integers(3, 20))), color, -1)
        else:
            cv2.circle(img, (x0, y0), int(rng.integers(2, 10)), color, -1)
    return img


def write_image(path: Path, h: int = 64, w: int = 64, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(textured(h, w, seed), cv2.COLOR_RGB2BGR))
    return path


def image_folder(folder: Path, n: int, h: int = 64, w: int = 64) -> Path:
    for i in range(n):
        write_image(folder / f"{i:03d}.png", h, w, seed=i)
    return folder


def zippy_cmd(*argv: str) -> list[str]:
    return [sys.executable, "-m", "zippy_apps.cli", *argv]


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_zippy(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        zippy_cmd(*argv), capture_output=True, text=True, timeout=timeout, env=subprocess_env(), cwd=REPO
    )


def leftovers(folder: Path) -> list[Path]:
    """Temporary / partial files under ``folder``: what an interrupted write may leave."""
    marks = (".tmp", ".partial")
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and any(m in p.name for m in marks))
