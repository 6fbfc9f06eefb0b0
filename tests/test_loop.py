"""zippy.loop.LoopDetector on a small synthetic sequence that goes out and comes back."""

from __future__ import annotations

import numpy as np
import pytest

from zippy.features import Features
from zippy.loop import LoopConfig, LoopDetector
from zippy.vocabulary import Vocabulary

K = np.array([[300.0, 0, 320], [0, 300.0, 240], [0, 0, 1]])


def _rot(rng: np.random.Generator, deg: float) -> np.ndarray:
    import cv2

    return cv2.Rodrigues(np.radians(deg) * rng.normal(size=3))[0]


class World:
    """Places, each a set of 3D points with fixed 64-of-256-bit descriptors; frames are noisy views of a place."""

    def __init__(self, n_places: int = 10, n_points: int = 150, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.points, self.desc = [], []
        for _ in range(n_places):
            p = self.rng.uniform([-2, -1.5, 4], [2, 1.5, 8], (n_points, 3))
            bits = np.zeros((n_points, 256), bool)
            np.put_along_axis(bits, np.argsort(self.rng.random((n_points, 256)), axis=1)[:, :64], True, axis=1)
            self.points.append(p)
            self.desc.append(bits)

    def frame(self, place: int, shuffle_keypoints: bool = False) -> Features:
        rng = self.rng
        R, t = _rot(rng, 3.0), rng.normal(0, 0.2, 3)
        cam = (self.points[place] @ R.T + t) @ K.T
        kp = (cam[:, :2] / cam[:, 2:]).astype(np.float32) + rng.normal(0, 0.3, (len(cam), 2)).astype(np.float32)
        keep = rng.random(len(kp)) < 0.8
        bits = self.desc[place].copy()
        for row in bits:  # move 4 of the 64 ones: descriptor noise that keeps the weight
            on, off = np.flatnonzero(row), np.flatnonzero(~row)
            row[rng.choice(on, 4, replace=False)] = False
            row[rng.choice(off, 4, replace=False)] = True
        kp, bits = kp[keep], bits[keep]
        if shuffle_keypoints:
            kp = kp[rng.permutation(len(kp))]
        scores = np.linspace(1, 0, len(kp), dtype=np.float32)
        return Features(kp, scores, np.packbits(bits, axis=1), (640, 480))


@pytest.fixture(scope="module")
def world_and_vocab():
    world = World()
    train = [world.frame(p).descriptors for p in range(10) for _ in range(2)]
    return world, Vocabulary.train(train, k=6, levels=3, seed=0)


def test_detects_the_revisits_only(world_and_vocab):
    world, voc = world_and_vocab
    route = [*range(10), *range(9, -1, -1)]  # out through places 0..9 and back
    det = LoopDetector(voc, LoopConfig(exclude_recent=4, consistency=2, min_inliers=20))
    results = [det.process(world.frame(p)) for p in route]
    loops = [r for r in results if r.detected]
    assert len(loops) >= 5
    for r in loops:
        assert route[r.frame] == route[r.match]  # the same place, never another one
        assert r.frame >= 10 and r.inliers >= 20
    assert not any(r.detected for r in results[:10])  # nothing while going out
    assert det.loops == loops
    # the first revisit cannot be consistent yet: it waits for a second frame agreeing
    first_possible = next(r for r in results if r.match >= 0 and r.reason.startswith("not yet consistent"))
    assert first_possible.consistent == 1


def test_geometric_check_rejects_scrambled_keypoints(world_and_vocab):
    world, voc = world_and_vocab
    det = LoopDetector(voc, LoopConfig(exclude_recent=1, consistency=1, min_inliers=20))
    det.process(world.frame(3))
    det.process(world.frame(5))
    r = det.process(world.frame(3, shuffle_keypoints=True))  # same descriptors, geometry destroyed
    assert not r.detected and r.match == 0 and "geometric check" in r.reason
    r = det.process(world.frame(3))
    assert r.detected and r.match in (0, 2) and r.inliers >= 20
    no_geo = LoopDetector(voc, LoopConfig(exclude_recent=1, consistency=1, geometric=False))
    no_geo.process(world.frame(3))
    no_geo.process(world.frame(5))
    assert no_geo.process(world.frame(3, shuffle_keypoints=True)).detected


def test_edge_cases(world_and_vocab):
    world, voc = world_and_vocab
    det = LoopDetector(voc, LoopConfig(exclude_recent=2))
    r = det.process(Features.empty((640, 480)))
    assert not r.detected and r.reason == "no features"
    assert det.process(world.frame(0)).reason == "too few earlier frames"
    assert len(det) == 2
    with pytest.raises(ValueError, match="binary"):
        det.process(
            Features(np.zeros((1, 2), np.float32), np.zeros(1, np.float32), np.zeros((1, 8), np.float32), (9, 9))
        )
    with pytest.raises(ValueError, match="consistency"):
        LoopConfig(consistency=0)


def test_stream_loop_callback(tmp_path, capsys):
    from types import SimpleNamespace

    from zippy_apps.cmd_stream import loop_callback

    world = World(n_places=20, seed=1)
    voc = Vocabulary.train([world.frame(p).descriptors for p in range(20)], k=6, levels=3, meta={"model": "toy"})
    path = voc.save(tmp_path / "voc.npz")
    extractor = SimpleNamespace(name="toy", weights_path=None, weights_sha256=None)
    on_result, loops = loop_callback(extractor, path)
    route = [*range(20), *range(19, -1, -1)]  # 40 frames: only the last few revisit beyond the 30 excluded
    for i, p in enumerate(route):
        on_result(SimpleNamespace(features=world.frame(p), source_index=i, new_keyframe=True))
        on_result(SimpleNamespace(features=world.frame(p), source_index=i, new_keyframe=False))  # not a keyframe
    assert len(loops) >= 2
    assert all(route[lp["frame"]] == route[lp["match"]] and lp["frame"] >= 35 for lp in loops)
    assert all(lp["source_index"] == lp["frame"] and lp["match_source_index"] == lp["match"] for lp in loops)
    assert capsys.readouterr().out.count("loop: frame") == len(loops)
