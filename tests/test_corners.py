"""The corner detector (zippy.corners) and the extractor's detector="corners" (the loss: tests/test_train.py)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

import zippy
from tests.faults_helpers import textured
from zippy.config import ExtractorConfig, add_extractor_arguments
from zippy.corners import CornerConfig, detect_corners, rgb_to_grey


def _grey(h: int = 120, w: int = 160, seed: int = 0) -> np.ndarray:
    return rgb_to_grey(textured(h, w, seed).astype(np.float32) / 255)


def test_corners_are_sorted_apart_and_scored_relative_to_the_strongest() -> None:
    grey = _grey()
    kp, sc = detect_corners(grey, 200)
    assert kp.dtype == np.float32 and sc.dtype == np.float32 and kp.shape == (len(sc), 2) and 50 < len(sc) <= 200
    assert sc[0] == 1.0 and np.all(np.diff(sc) <= 0) and sc[-1] > 0
    d = np.linalg.norm(kp[:, None] - kp[None], axis=-1) + np.eye(len(kp)) * 1e9
    assert d.min() >= CornerConfig().min_distance
    assert len(detect_corners(grey, 10)[0]) == 10
    strong = detect_corners(grey, 200, threshold=0.5)[1]
    assert 0 < len(strong) < len(sc) and strong.min() >= 0.5
    # the intensity scale does not matter: the same corners on the image times 255 (uint8)
    kp8, _ = detect_corners(np.round(grey * 255).astype(np.uint8), 200)
    assert len(kp8) > 0.9 * len(kp)


def test_a_shift_of_the_image_moves_the_corners_with_it() -> None:
    grey = _grey(140, 180, seed=3)
    a, _ = detect_corners(grey[:, 8:168], 150)  # the same content, moved 4 px to the right in the second window
    b, _ = detect_corners(grey[:, 4:164], 150)
    a = a[(a[:, 0] > 12) & (a[:, 0] < 148)]  # away from the windows' edges
    d = np.linalg.norm((a + np.float32([4, 0]))[:, None] - b[None], axis=-1).min(1)
    assert (d < 0.5).mean() > 0.95


def test_corner_detector_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"one channel \[H, W\]"):
        detect_corners(np.zeros((8, 8, 3), np.float32), 10)
    with pytest.raises(ValueError, match="max_keypoints must be > 0"):
        detect_corners(np.zeros((8, 8), np.float32), 0)
    with pytest.raises(ValueError, match="block_size must be odd"):
        CornerConfig(block_size=4)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        CornerConfig(sigma=0)
    assert detect_corners(np.zeros((32, 32), np.float32), 10)[0].shape == (0, 2)  # a flat image has none


def test_detector_option_is_validated_named_in_the_tag_and_read_from_the_command_line() -> None:
    assert ExtractorConfig().detector is None and ExtractorConfig().tag() == "nms1"
    assert ExtractorConfig(detector="corners").tag() == "nms1-corners"
    with pytest.raises(ValueError, match=r"unknown detector 'sift'; choose one of \['network', 'corners'\]"):
        ExtractorConfig(detector="sift")
    p = argparse.ArgumentParser()
    add_extractor_arguments(p)
    assert ExtractorConfig.from_args(p.parse_args(["--detector", "corners"])).detector == "corners"
    assert ExtractorConfig.from_args(p.parse_args([])).detector is None


def test_extract_with_corners_describes_the_corners_as_describe_does() -> None:
    ex = zippy.load("zippyfast", detector="corners")
    assert ex.detector == "corners" and ex.config.detector == "corners"
    assert zippy.load("zippyfast").detector == "corners"  # the shipped weights file's choice
    assert zippy.load("zippyfast").config.detector is None and zippy.load("zippypoint_small").detector == "network"
    image = textured(96, 128, seed=1)
    f = ex.extract(image, 80)
    kp, sc = detect_corners(rgb_to_grey(image.astype(np.float32) / 255), 80)
    np.testing.assert_allclose(f.keypoints, kp, atol=1e-4)
    np.testing.assert_allclose(f.scores, sc, rtol=1e-5)
    # the keypoint head left out: the same descriptors as the full network's at those points
    ref = zippy.load("zippyfast", detector="network").describe(image, f.keypoints, f.scores)
    np.testing.assert_array_equal(f.descriptors, ref.descriptors)
    assert f.descriptors.shape == (len(kp), 32)
    # the cell head's keypoints are others
    cells = zippy.load("zippyfast", detector="network").extract(image, 80)
    assert not np.array_equal(cells.keypoints[: len(kp)], f.keypoints[: len(cells.keypoints)])


def test_the_corner_detector_works_with_the_other_engines() -> None:
    image = textured(96, 128, seed=2)
    ex = zippy.load("zippypoint_small", detector="corners")  # int8 or ONNX engine, whichever this CPU runs
    f = ex.extract(image, 60)
    kp, _ = detect_corners(rgb_to_grey(image.astype(np.float32) / 255), 60)
    np.testing.assert_allclose(f.keypoints, kp, atol=1e-4)
    np.testing.assert_array_equal(f.descriptors, ex.describe(image, f.keypoints, f.scores).descriptors)
    assert f.descriptors.shape == (len(kp), 32) and len(kp) > 20
