"""The int8 profiler: stages add up to the frame time and every file is written."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from profile_int8 import STAGES, run, stage_of


def test_stage_names() -> None:
    assert stage_of("stem.acc") == "stem"
    assert stage_of("stages.2.2.1.conv") == "stage 3 (1/8)"
    assert stage_of("block8.0.shortcut.1.acc") == "block 1/8"
    assert stage_of("heads.1") == "score + position heads"
    assert stage_of("desc_convs.0") == stage_of("fn:depth_to_space") == "descriptor head"
    assert stage_of("sparse_desc.patch") == "descriptors at keypoints"
    assert stage_of("post:binarize") == "post-processing"


def test_profile_stages_add_up_and_files_are_written(calibrated_zippypoint, tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        img = cv2.GaussianBlur(rng.integers(0, 255, (80, 120, 3), dtype=np.uint8), (5, 5), 1.5)
        cv2.imwrite(str(frames / f"{i}.png"), img)
    summary = run(
        None, tmp_path / "out", model=calibrated_zippypoint, sizes=[(64, 96)], frames_dir=frames, n_frames=2, repeats=1
    )
    doc = json.loads(summary.read_text())
    res = doc["results"]["64x96"]
    assert set(res["stages"]) == set(STAGES) and all(v >= 0 for v in res["stages"].values())
    assert sum(res["stages"].values()) == pytest.approx(res["total_ms"], rel=0.05, abs=0.5)
    assert res["stages"]["stem"] > 0 and res["stages"]["descriptors at keypoints"] > 0
    assert {r["name"] for r in res["layers"]} >= {"stem", "stem.acc", "heads.1", "sparse_desc.patch", "post:binarize"}
    assert (tmp_path / "out" / "summary.md").read_text().count("|") > 20
    assert (tmp_path / "out" / "stages.png").stat().st_size > 1000
