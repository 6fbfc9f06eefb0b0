"""Relative pose evaluation: AUC, angle errors, estimators on exact correspondences, ScanNet layout, run()."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from zippy_eval.relpose import (
    PAIRS_FILE,
    RelPoseConf,
    angle_error_rotation,
    angle_error_translation,
    estimate_pose,
    load_pairs,
    pose_auc,
)


def _rot(axis: str, deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def test_pose_auc_hand_computed():
    # one error of 5 deg: curve (0,0) -> (5,1) -> (10,1): area 2.5 + 5 = 7.5 over 10
    assert pose_auc([5.0], [10.0]) == pytest.approx([0.75])
    # errors 1, 2, 3 and a failure: (0,0),(1,.25),(2,.5),(3,.75),(5,.75): 0.125+0.375+0.625+1.5 = 2.625 / 5
    assert pose_auc([1.0, 2.0, 3.0, np.inf], [5.0]) == pytest.approx([0.525])
    assert pose_auc([np.inf, 30.0], [5.0, 10.0, 20.0]) == [0.0, 0.0, 0.0]
    assert pose_auc([], [5.0]) == [0.0]


def test_angle_errors():
    assert angle_error_rotation(_rot("z", 30), np.eye(3)) == pytest.approx(30.0)
    assert angle_error_translation(np.array([1.0, 0, 0]), np.array([0, 1.0, 0])) == pytest.approx(90.0)
    # the sign of t is not observable from E: -t is a perfect estimate
    assert angle_error_translation(np.array([-2.0, 0, 0]), np.array([1.0, 0, 0])) == pytest.approx(0.0)
    assert angle_error_translation(np.zeros(3), np.array([1.0, 0, 0])) == np.inf


def _two_view(rng: np.random.Generator, n: int = 200):
    K = np.array([[500.0, 0, 319.5], [0, 500.0, 239.5], [0, 0, 1]])
    X = rng.uniform([-3, -2, 4], [3, 2, 10], size=(n, 3))
    R = _rot("y", 15) @ _rot("z", 5)
    t = np.array([-1.0, 0.1, 0.2])
    x0 = X @ K.T
    x1 = (X @ R.T + t) @ K.T
    return K, R, t, x0[:, :2] / x0[:, 2:], x1[:, :2] / x1[:, 2:]


@pytest.mark.parametrize("estimator", ["pycolmap", "opencv"])
def test_estimators_recover_exact_pose_with_outliers(estimator):
    rng = np.random.default_rng(0)
    K, R, t, p0, p1 = _two_view(rng)
    p1 = p1.copy()
    p1[:40] = rng.uniform([0, 0], [640, 480], size=(40, 2))  # 20% outliers
    est = estimate_pose(p0, p1, K, K, (640, 480), (640, 480), 1.0, estimator)
    assert est is not None
    R_est, t_est, n_in = est
    assert angle_error_rotation(R_est, R) < 0.1
    assert angle_error_translation(t_est, t) < 0.1
    assert 155 <= n_in <= 200
    assert estimate_pose(p0[:4], p1[:4], K, K, (640, 480), (640, 480), 1.0, estimator) is None


def _pair_line(name0: str, name1: str, K: np.ndarray, T: np.ndarray) -> str:
    values = [0, 0, *K.ravel(), *K.ravel(), *T.ravel()]
    return " ".join([name0, name1, *(f"{v:.9g}" for v in values)])


def test_load_pairs_reports_bad_lines(tmp_path):
    (tmp_path / "images").mkdir()
    for n in ("a.jpg", "b.jpg"):
        (tmp_path / "images" / n).write_bytes(b"")
    good = _pair_line("a.jpg", "b.jpg", np.eye(3), np.eye(4))
    (tmp_path / PAIRS_FILE).write_text(f"{good}\na.jpg b.jpg 0 0 1 2\n{good.replace('b.jpg', 'c.jpg', 1)}\n")
    image_dir, pairs, problems = load_pairs(tmp_path)
    assert image_dir == tmp_path / "images" and len(pairs) == 1 and len(problems) == 2
    assert "expected 38 fields" in problems[0] and "not found" in problems[1]
    with pytest.raises(ValueError, match="SuperGlue's ScanNet sample layout"):
        load_pairs(tmp_path / "images")


@pytest.fixture(scope="module")
def synthetic_pairs(tmp_path_factory) -> Path:
    """Three pairs of the synthetic scene in the ScanNet sample layout."""
    import cv2

    from zippy_eval.localization.synthetic import SyntheticCamera, default_scene, intrinsics, look_at, render

    root = tmp_path_factory.mktemp("relpose")
    (root / "images").mkdir()
    planes = default_scene()
    K = intrinsics((320, 240), 288.0)
    # lateral baselines of 1.6 to 2.2 m, 5 to 8 m from the walls
    centers = [((-1.0, 0.0, 0.0), (1.0, -0.3, 0.5)), ((0.8, -0.4, -1.0), (-0.8, 0.2, 0.0)), ((-1.2, 0, 1), (0.6, 0, 0))]
    lines = []
    for i, (a, b) in enumerate(centers):
        c0 = SyntheticCamera(K, look_at(a, (0.3, 0.0, 6.5)), (320, 240))
        c1 = SyntheticCamera(K, look_at(b, (-0.3, 0.2, 6.5)), (320, 240))
        for j, c in ((0, c0), (1, c1)):
            cv2.imwrite(str(root / "images" / f"p{i}_{j}.png"), cv2.cvtColor(render(planes, c), cv2.COLOR_RGB2BGR))
        T = np.eye(4)
        T[:3, :3] = c1.pose.R @ c0.pose.R.T
        T[:3, 3] = c1.pose.t - T[:3, :3] @ c0.pose.t
        lines.append(_pair_line(f"p{i}_0.png", f"p{i}_1.png", c0.K, T))
    (root / PAIRS_FILE).write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("method", ["orb", "sift"])
def test_run_on_synthetic_pairs(synthetic_pairs, tmp_path, method):
    from zippy_eval.relpose import run

    conf = RelPoseConf(methods=(method,), max_keypoints=500, resize_max=0)
    s = json.loads(run(conf, synthetic_pairs, tmp_path).read_text())
    agg = s["aggregates"][method]
    assert agg["num_pairs"] == 3 and agg["num_estimated"] == 3
    if method == "sift":  # precise keypoints: every pair within ~1 deg (ORB's pyramid keypoints are not)
        assert agg["auc"]["10deg"] > 0.8, agg
    assert (tmp_path / "table.md").is_file() and (tmp_path / "pose_error.png").is_file()
    assert s["protocol"]["estimator"] == "pycolmap"


def test_conf_validation():
    with pytest.raises(ValueError, match="estimator"):
        RelPoseConf(estimator="magic")
    with pytest.raises(ValueError, match="sequence of names"):
        RelPoseConf(methods="orb")


@pytest.mark.shared
def test_scannet_pairs_parse(shared_data):
    _, pairs, problems = load_pairs(shared_data / "localization" / "scannet_pairs")
    assert len(pairs) == 15 and problems == []
    for p in pairs:
        R = p.T_0to1[:3, :3]
        assert np.allclose(R @ R.T, np.eye(3), atol=1e-3) and np.allclose(p.T_0to1[3], [0, 0, 0, 1])
