"""Localization pipeline: poses, caches, pairs, synthetic scene, datasets, end-to-end on a tiny synthetic scene."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from zippy.features import Features
from zippy_eval.localization import features_h5
from zippy_eval.localization.cameras import CameraSpec, parse_intrinsics_line
from zippy_eval.localization.pairs import (
    pairs_exhaustive,
    pairs_from_match_count,
    pairs_from_poses,
    pairs_to,
    read_pairs,
    write_pairs,
)
from zippy_eval.localization.poses import (
    Pose,
    pose_error,
    qvec_to_rotmat,
    read_poses,
    recall_at,
    rotmat_to_qvec,
    write_poses,
)


def _rot_z(deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


# ----------------------------------------------------------------------------------------------- poses


def test_quaternion_matches_pycolmap_and_round_trips():
    import pycolmap

    rng = np.random.default_rng(0)
    for axis_angle in [*rng.normal(size=(20, 3)), [np.pi, 0, 0], [0, 0, 0]]:
        R = pycolmap.Rotation3d(np.asarray(axis_angle, np.float64)).matrix()
        q = rotmat_to_qvec(R)
        x, y, z, w = pycolmap.Rotation3d(R).quat
        ref = np.array([w, x, y, z]) * (1 if w >= 0 else -1)
        assert q[0] >= 0
        assert np.allclose(qvec_to_rotmat(q), R, atol=1e-9)
        if ref[0] > 1e-6:  # sign is ambiguous only at w = 0
            assert np.allclose(q, ref, atol=1e-9)


def test_quaternion_of_90_deg_about_z():
    q = rotmat_to_qvec(_rot_z(90))
    assert np.allclose(q, [np.sqrt(0.5), 0, 0, np.sqrt(0.5)])


def test_pose_error_hand_computed():
    gt = Pose(np.eye(3), np.zeros(3))
    est = Pose(_rot_z(90), np.zeros(3))  # same centre, rotated 90 deg
    assert pose_error(est, gt) == pytest.approx((0.0, 90.0))
    moved = Pose(np.eye(3), np.array([0.0, 0.0, -2.0]))  # centre at z = +2
    assert pose_error(moved, gt) == pytest.approx((2.0, 0.0))


def test_recall_counts_failures_as_misses():
    errors = [(0.1, 1.0), (0.3, 1.0), (1.0, 20.0)]  # 4 queries, one failed (absent)
    assert recall_at(errors, 4, [(0.25, 2.0), (0.5, 5.0), (5.0, 10.0)]) == [0.25, 0.5, 0.5]
    assert recall_at([], 0, [(0.25, 2.0)]) == [0.0]


def test_poses_file_round_trip_and_errors(tmp_path):
    poses = {"query/a.png": Pose(_rot_z(30), np.array([1.0, 2.0, 3.0])), "b.jpg": Pose(np.eye(3), np.zeros(3))}
    path = write_poses(poses, tmp_path / "poses.txt")
    lines = path.read_text().splitlines()
    assert lines[0].split()[0] == "b.jpg" and len(lines[1].split()) == 8
    back = read_poses(path)
    assert set(back) == set(poses)
    for k in poses:
        assert np.allclose(back[k].R, poses[k].R) and np.allclose(back[k].t, poses[k].t)
    (tmp_path / "bad.txt").write_text("a 1 0 0 0 1 2\n")
    with pytest.raises(ValueError, match=r"bad.txt:1"):
        read_poses(tmp_path / "bad.txt")
    with pytest.raises(FileNotFoundError):
        read_poses(tmp_path / "missing.txt")


# ----------------------------------------------------------------------------------------------- cameras


def test_parse_intrinsics_line():
    name, spec = parse_intrinsics_line("query/q1.jpg SIMPLE_RADIAL 1600 1200 1469.2 800 600 -0.0353")
    assert name == "query/q1.jpg"
    assert spec == CameraSpec("SIMPLE_RADIAL", 1600, 1200, (1469.2, 800.0, 600.0, -0.0353))
    cam = spec.to_pycolmap()
    assert CameraSpec.from_pycolmap(cam) == spec
    with pytest.raises(ValueError, match="takes 4 parameters"):
        parse_intrinsics_line("q.jpg SIMPLE_RADIAL 10 10 5 5 5")
    with pytest.raises(ValueError, match="camera model"):
        parse_intrinsics_line("q.jpg FISHEYE_WEIRD 10 10 5 5 5")
    with pytest.raises(ValueError, match="non-numeric"):
        parse_intrinsics_line("q.jpg PINHOLE 10 10 a 5 5 5")


# ----------------------------------------------------------------------------------------------- h5 caches


def test_features_and_matches_h5(tmp_path):
    path = tmp_path / "f.h5"
    f = Features(
        np.array([[1, 2], [3, 4]], np.float32), np.array([0.9, 0.5], np.float32), np.zeros((2, 32), np.uint8), (8, 6)
    )
    features_h5.write_features(path, "db/a%1.png", f)
    assert features_h5.has_features(path, "db/a%1.png") and not features_h5.has_features(path, "db")
    assert features_h5.list_features(path) == ["db/a%1.png"]
    g = features_h5.read_features(path, "db/a%1.png")
    assert np.array_equal(g.keypoints, f.keypoints) and g.image_size == (8, 6) and g.is_binary
    with pytest.raises(KeyError, match="no features"):
        features_h5.read_features(path, "other.png")

    mpath = tmp_path / "m.h5"
    features_h5.write_matches(mpath, "db/a.png", "q/b.png", np.array([[0, 5], [2, 7]]), np.array([3, 4]), 3)
    m, d = features_h5.read_matches(mpath, "q/b.png", "db/a.png")  # stored the other way round
    assert m.tolist() == [[5, 0], [7, 2]] and d.tolist() == [3, 4]
    m, d = features_h5.read_matches(mpath, "db/a.png", "q/b.png")
    assert m.tolist() == [[0, 5], [2, 7]] and m.dtype == np.int64
    with pytest.raises(ValueError, match=r"\[K,2\]"):
        features_h5.write_matches(mpath, "a", "b", np.zeros((3,)), np.zeros(3), 3)
    with pytest.raises(ValueError, match=r"must be in \[0, 2\)"):
        features_h5.write_matches(mpath, "a", "b", np.array([[2, 0]]), np.zeros(1), 2)


# hloc's readers, verbatim from cvg/Hierarchical-Localization (hloc/utils/io.py get_keypoints / find_pair /
# get_matches, hloc/utils/parsers.py names_to_pair, and the h5 part of hloc/match_features.py FeaturePairsDataset),
# without the old pair-name fallback; hloc itself is not a dependency.
def _hloc_names_to_pair(name0, name1, separator="/"):
    return separator.join((name0.replace("/", "-"), name1.replace("/", "-")))


def _hloc_get_keypoints(path, name):
    import h5py

    with h5py.File(str(path), "r", libver="latest") as hfile:
        dset = hfile[name]["keypoints"]
        p = dset.__array__()
    return p


def _hloc_get_matches(path, name0, name1):
    import h5py

    with h5py.File(str(path), "r", libver="latest") as hfile:
        pair, reverse = _hloc_names_to_pair(name0, name1), False
        if pair not in hfile:
            pair, reverse = _hloc_names_to_pair(name1, name0), True
        matches = hfile[pair]["matches0"].__array__()
        scores = hfile[pair]["matching_scores0"].__array__()
    idx = np.where(matches != -1)[0]
    matches = np.stack([idx, matches[idx]], -1)
    if reverse:
        matches = np.flip(matches, -1)
    scores = scores[idx]
    return matches, scores


def _hloc_pair_data(feature_path, name0):
    import h5py
    import torch

    data = {}
    with h5py.File(feature_path, "r") as fd:
        grp = fd[name0]
        for k, v in grp.items():
            data[k + "0"] = torch.from_numpy(v.__array__()).float()
        data["image0"] = torch.empty((1,) + tuple(grp["image_size"])[::-1])  # noqa: RUF005 (verbatim)
    return data


def test_caches_open_with_hlocs_readers(tmp_path, photo):
    import zippy

    ex = zippy.load("zippypoint_small", engine="fp32")
    f0, f1 = ex.extract(photo[:240, :320], 200), ex.extract(photo[10:250, 8:328], 200)
    fpath, mpath = tmp_path / "features.h5", tmp_path / "matches.h5"
    features_h5.write_features(fpath, "db/0001.png", f0)
    features_h5.write_features(fpath, "query/q.png", f1)
    pairs, dist = zippy.match(f0, f1)
    features_h5.write_matches(mpath, "db/0001.png", "query/q.png", pairs, dist, len(f0))

    np.testing.assert_array_equal(_hloc_get_keypoints(fpath, "db/0001.png"), f0.keypoints)
    m, scores = _hloc_get_matches(mpath, "query/q.png", "db/0001.png")  # hloc swaps a reversed pair itself
    assert {tuple(p) for p in m.tolist()} == {(j, i) for i, j in pairs.tolist()}
    assert scores.shape == (len(pairs),) and (scores > 0).all()
    data = _hloc_pair_data(fpath, "db/0001.png")
    assert data["keypoints0"].shape == (len(f0), 2) and data["scores0"].shape == (len(f0),)
    assert data["descriptors0"].shape == (32, len(f0))  # hloc's [D, N]; packed bits stay 32 bytes
    assert data["image0"].shape == (1, 240, 320)
    back = features_h5.read_features(fpath, "db/0001.png")
    np.testing.assert_array_equal(back.descriptors, f0.descriptors)
    assert features_h5.list_features(fpath) == ["db/0001.png", "query/q.png"]


# ----------------------------------------------------------------------------------------------- pairs


def test_pairs(tmp_path):
    assert pairs_exhaustive(["a", "b", "c"]) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert pairs_to(["q"], ["a", "b"]) == [("q", "a"), ("q", "b")]
    # three cameras on the x axis looking along +z: a-b 1 m apart, c 10 m away
    poses = {n: Pose(np.eye(3), -np.array([x, 0.0, 0.0])) for n, x in [("a", 0.0), ("b", 1.0), ("c", 10.0)]}
    assert pairs_from_poses(poses, num_neighbors=1) == [("a", "b"), ("b", "c")]
    counts = {("q", "a"): 5, ("q", "b"): 0, ("q", "c"): 9}
    assert pairs_from_match_count(["q"], ["a", "b", "c"], lambda q, d: counts[q, d], 2) == [("q", "c"), ("q", "a")]
    assert pairs_from_match_count(["q"], ["a", "b", "c"], lambda q, d: counts[q, d], 5) == [("q", "c"), ("q", "a")]
    path = write_pairs([("a", "b")], tmp_path / "p.txt")
    assert read_pairs(path) == [("a", "b")]
    (tmp_path / "bad.txt").write_text("a b c\n")
    with pytest.raises(ValueError, match="expected 'name0 name1'"):
        read_pairs(tmp_path / "bad.txt")


# ----------------------------------------------------------------------------------------------- synthetic scene


def test_synthetic_render_is_exact_projection():
    from zippy_eval.localization.synthetic import SyntheticCamera, _plane, intrinsics, look_at, render

    plane = _plane("astronaut", (0.0, 0.0, 4.0), (1, 0, 0), (0, 1, 0), 2.0)
    cam = SyntheticCamera(intrinsics((160, 120), 100.0), look_at((0, 0, 0), (0, 0, 4)), (160, 120))
    # texel (a, b) -> world point -> pixel, and the homography agrees
    a, b = 100.0, 300.0
    X = plane.origin + plane.ex * plane.texel * a + plane.ey * plane.texel * b
    x = cam.K @ (cam.pose.R @ X + cam.pose.t)
    h = plane.homography(cam.K, cam.pose) @ np.array([a, b, 1.0])
    assert np.allclose(x[:2] / x[2], h[:2] / h[2])
    image = render([plane], cam, supersample=1)
    u, v = np.round(x[:2] / x[2]).astype(int)
    assert image.shape == (120, 160, 3) and image.dtype == np.uint8
    tex = plane.texture[int(b), int(a)].astype(int)  # 2 m wide plane at 4 m: ~ 1 texel per 2.5 pixels
    assert np.abs(image[v, u].astype(int) - tex).max() < 40
    # a camera looking away sees only background
    away = SyntheticCamera(cam.K, look_at((0, 0, 0), (0, 0, -4)), (160, 120))
    assert (render([plane], away) == 127).all()


def test_align_pose_inverts_a_similarity():
    import pycolmap

    from zippy_eval.localization.pipeline import align_pose

    gt = Pose(_rot_z(20) @ qvec_to_rotmat([0.9, 0.1, -0.2, 0.3]), np.array([0.5, -1.0, 2.0]))
    sim = pycolmap.Sim3d(2.5, pycolmap.Rotation3d(np.array([0.1, 0.2, -0.3])), np.array([1.0, 2.0, 3.0]))
    # the same camera in a map frame where X_ref = sim(X_map)
    m = np.asarray(sim.matrix())
    s, Ra, ta = sim.scale, m[:, :3] / sim.scale, m[:, 3]
    in_map = Pose(gt.R @ Ra, (gt.t + gt.R @ ta) / s)
    back = align_pose(in_map, sim)
    assert np.allclose(back.R, gt.R) and np.allclose(back.t, gt.t)


# ----------------------------------------------------------------------------------------------- datasets


@pytest.fixture(scope="session")
def tiny_scene(tmp_path_factory) -> Path:
    """A small synthetic scene in the hloc / Aachen layout: 6 database + 5 query images of 320x240."""
    from zippy_eval.localization.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("scene"), num_db=6, num_query=5, size=(320, 240), seed=3)


def test_hloc_layout_loader(tiny_scene):
    from zippy_eval.localization.datasets import load_hloc

    d = load_hloc(tiny_scene)
    assert len(d.db_names) == 6 and len(d.query_names) == 5 and d.problems == []
    assert d.db_poses is not None and d.query_gt is not None and set(d.query_gt) == set(d.query_names)
    q = d.cameras[d.query_names[0]]
    assert q.model == "SIMPLE_RADIAL" and q.params[1:3] == (160.0, 120.0)


def test_wrong_layout_is_a_clear_error(tmp_path):
    from zippy_apps.cli import main
    from zippy_eval.localization.datasets import load_dataset, load_hloc

    (tmp_path / "stuff").mkdir()
    with pytest.raises(ValueError, match="hloc / Aachen layout"):
        load_hloc(tmp_path)
    with pytest.raises(ValueError, match="unknown dataset layout"):
        load_dataset(tmp_path, tmp_path / "cache")
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "missing", tmp_path / "cache")
    assert main(["eval", "localization", str(tmp_path), "--methods", "orb", "--out", str(tmp_path / "o")]) == 2


def _localize(scene: Path, method: str, out: Path) -> dict:
    from zippy_eval.localization.datasets import load_hloc
    from zippy_eval.localization.pipeline import LocalizationConf, run

    conf = LocalizationConf(methods=(method,), max_keypoints=600, resize_max=0)
    summary = run(conf, load_hloc(scene), out)
    return json.loads(summary.read_text())


@pytest.mark.parametrize(
    "method",
    [
        "orb",
        "sift",
        pytest.param("zippypoint", marks=pytest.mark.slow),
    ],
)
def test_synthetic_scene_localization(tiny_scene, tmp_path, method):
    """Acceptance: >= 90% of queries within (0.25 m, 2 deg) on the synthetic scene."""
    if method == "zippypoint":
        from zippy_eval.methods import get_method

        if not get_method("zippypoint").info()["params"].get("trained"):
            pytest.skip("untrained weights")
    s = _localize(tiny_scene, method, tmp_path)
    agg = s["aggregates"][method]
    assert agg["num_queries"] == 5
    assert agg["recall"]["0.25m_2deg"] >= 0.9, agg
    assert (tmp_path / "table.md").is_file() and (tmp_path / "errors.png").is_file()
    poses = read_poses(tmp_path / s["poses"][method])
    assert len(poses) == agg["num_localized"]
    expected_bytes = 32 if method != "sift" else 512
    assert agg["descriptor_bytes_per_point"] == expected_bytes
    assert s["protocol"]["thresholds"] == [[0.25, 2.0], [0.5, 5.0], [5.0, 10.0]]


def test_bad_queries_fail_and_the_run_continues(tiny_scene, tmp_path):
    """A query without intrinsics and a query that matches nothing fail with reasons; the others localize."""
    import shutil

    import cv2

    scene = tmp_path / "scene"
    shutil.copytree(tiny_scene, scene)
    cv2.imwrite(str(scene / "images" / "query" / "flat.png"), np.full((240, 320, 3), 127, np.uint8))
    cv2.imwrite(str(scene / "images" / "query" / "noK.png"), np.full((240, 320, 3), 90, np.uint8))
    qlist = scene / "queries" / "synthetic_queries_with_intrinsics.txt"
    qlist.write_text(
        qlist.read_text() + "query/flat.png SIMPLE_RADIAL 320 240 288 160 120 0\nquery/noK.png SIMPLE_RADIAL 320 240\n"
    )
    s = _localize(scene, "orb", tmp_path / "out")
    rows = {r["query"]: r for r in s["rows"]}
    assert not rows["query/flat.png"]["localized"] and "2D-3D" in rows["query/flat.png"]["reason"]
    assert rows["query/noK.png"]["reason"] == "no intrinsics"
    assert any("noK.png" in p for p in s["dataset"]["problems"])
    agg = s["aggregates"]["orb"]
    assert agg["num_queries"] == 7 and agg["num_localized"] == 5
    assert agg["recall"]["0.25m_2deg"] == pytest.approx(5 / 7)


@pytest.mark.shared
def test_sceaux_layout_reads_intrinsics(shared_data):
    """K.txt of the Sceaux castle (no SfM here: that is the slow benchmark)."""
    from zippy_eval.localization.datasets import _read_K

    K = _read_K(shared_data / "localization" / "sceaux_castle" / "images" / "K.txt")
    assert K[0, 0] == pytest.approx(2905.88) and K[0, 2] == pytest.approx(1416)


def test_pairs_from_retrieval_with_a_vocabulary():
    from zippy.vocabulary import Vocabulary
    from zippy_eval.localization.pairs import pairs_from_retrieval, unordered_pairs

    rng = np.random.default_rng(0)
    desc = {f"db{i}.jpg": rng.integers(0, 256, (200, 32), dtype=np.uint8) for i in range(6)}
    voc = Vocabulary.train(list(desc.values()), k=4, levels=3, centre_ones=None)
    q = desc["db2.jpg"].copy()
    q[:, 0] ^= 1  # one bit off in every descriptor: the same place
    desc["q.jpg"] = q
    pairs = pairs_from_retrieval(["q.jpg", "db4.jpg"], [f"db{i}.jpg" for i in range(6)], desc.__getitem__, voc, 2)
    assert pairs[0] == ("q.jpg", "db2.jpg") and len(pairs) == 4
    assert all(a != b for a, b in pairs)  # db4 is never its own pair
    assert unordered_pairs([("b", "a"), ("a", "b"), ("a", "a")]) == [("a", "b")]
    with pytest.raises(ValueError, match="num_neighbors"):
        pairs_from_retrieval(["q.jpg"], ["db0.jpg"], desc.__getitem__, voc, 0)


def test_pairs_kind_falls_back_for_other_descriptors():
    from types import SimpleNamespace

    from zippy.vocabulary import Vocabulary
    from zippy_eval.localization.pipeline import LocalizationConf, _pairs_kind

    try:
        voc = Vocabulary.load()
    except FileNotFoundError:
        pytest.skip("no shipped vocabulary")

    def method(name, binary=True, sha=None):
        return SimpleNamespace(info=lambda: {"name": name, "binary": binary, "weights_sha256": sha})

    conf = LocalizationConf()
    assert conf.pairs == "retrieval"
    assert _pairs_kind(method("zippypoint", sha=voc.meta["model_sha256"]), conf) == "retrieval"
    assert _pairs_kind(method("zippypoint", sha="0" * 64), conf) == "match-count"  # other weights
    assert _pairs_kind(method("orb"), conf) == "match-count"
    assert _pairs_kind(method("sift", binary=False), conf) == "match-count"
    assert _pairs_kind(method("orb"), LocalizationConf(pairs="exhaustive")) == "exhaustive"
    with pytest.raises(ValueError, match="pairs must be one of"):
        LocalizationConf(pairs="nearest")
