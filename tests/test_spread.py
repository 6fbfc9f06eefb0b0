"""zippy.spread: evenly spread keypoint selection with a fixed count; Features.to_cv_keypoints."""

from __future__ import annotations

import numpy as np
import pytest

from zippy.features import Features
from zippy.spread import spread_indices, spread_keypoints


def clustered(seed: int = 0) -> Features:
    """3000 strong keypoints in the top-left 160x160 px, 1000 weaker ones over the 640x480 image."""
    rng = np.random.default_rng(seed)
    kp = np.concatenate([rng.uniform(0, 160, (3000, 2)), rng.uniform(0, [640, 480], (1000, 2))]).astype(np.float32)
    sc = np.concatenate([rng.uniform(0.5, 1, 3000), rng.uniform(0, 0.5, 1000)]).astype(np.float32)
    desc = rng.integers(0, 256, (4000, 32), dtype=np.uint8)
    return Features(kp, sc, desc, (640, 480), {"octave": np.arange(4000) % 2})


@pytest.mark.parametrize("method", ["grid", "ssc"])
def test_fixed_count_spread_and_order(method):
    f = clustered()
    g = spread_keypoints(f, 500, method)
    assert len(g) == 500
    assert np.all(np.diff(g.scores) <= 0)  # descending score
    corner = (g.keypoints[:, 0] < 160) & (g.keypoints[:, 1] < 160)
    assert corner.mean() < 0.35  # top-k by score would put all 500 there
    idx = spread_indices(f.keypoints, f.scores, f.image_size, 500, method)
    assert len(np.unique(idx)) == 500
    np.testing.assert_array_equal(g.descriptors, f.descriptors[idx])  # descriptors follow their keypoints
    np.testing.assert_array_equal(g.meta["octave"], f.meta["octave"][idx])  # and the per-keypoint meta
    # nearest-neighbour spacing: spread selections leave no two keypoints on top of each other as often
    d = np.linalg.norm(g.keypoints[:, None] - g.keypoints[None], axis=-1) + np.eye(500) * 1e9
    top = f.keypoints[:500]
    dt = np.linalg.norm(top[:, None] - top[None], axis=-1) + np.eye(500) * 1e9
    assert np.median(d.min(1)) > 2 * np.median(dt.min(1))


def test_grid_takes_every_cells_best_first():
    # 4 cells (n = 4 on a 20x20 image: 10 px cells); cell (0, 0) has the 3 best points
    kp = np.array([[1, 1], [2, 2], [3, 3], [15, 2], [2, 15], [15, 15]], np.float32)
    sc = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1], np.float32)
    np.testing.assert_array_equal(spread_indices(kp, sc, (20, 20), 4, "grid"), [0, 3, 4, 5])
    np.testing.assert_array_equal(spread_indices(kp, sc, (20, 20), 5, "grid"), [0, 1, 3, 4, 5])


def test_ssc_suppresses_neighbours():
    kp = np.array([[10, 10], [11, 10], [90, 90], [50, 50]], np.float32)
    sc = np.array([1.0, 0.9, 0.8, 0.7], np.float32)
    np.testing.assert_array_equal(spread_indices(kp, sc, (100, 100), 3, "ssc"), [0, 2, 3])


def test_few_and_empty_and_errors():
    f = clustered()
    small = f.subset(np.arange(10))
    assert len(spread_keypoints(small, 50)) == 10
    empty = Features.empty((64, 48))
    assert len(spread_keypoints(empty, 5, "ssc")) == 0
    with pytest.raises(ValueError, match="method"):
        spread_keypoints(f, 5, "random")
    with pytest.raises(ValueError, match="n must be"):
        spread_keypoints(f, 0)


def test_cv_keypoints_fields_and_bfmatcher():
    cv2 = pytest.importorskip("cv2")
    f = clustered().subset(np.arange(200))
    f.meta["octave_scales"] = [1.41, 1.0]
    kps = f.to_cv_keypoints()
    assert len(kps) == 200
    k0, k1 = kps[0], kps[1]
    assert k0.pt == pytest.approx(tuple(f.keypoints[0].tolist()))
    assert k0.response == pytest.approx(float(f.scores[0]))
    assert (k0.octave, k1.octave) == (0, 1)
    assert k0.angle == -1 and k0.class_id == 0
    assert k0.size == pytest.approx(31.0) and k1.size == pytest.approx(31.0 * 1.41)
    one = Features(f.keypoints, f.scores, f.descriptors, f.image_size)  # no pyramid recorded: octave 0
    assert {k.octave for k in one.to_cv_keypoints()} == {0}
    # the descriptors go into OpenCV's Hamming matcher as they are, with the same answer as ours
    from zippy.matching import match_hamming

    other = f.descriptors.copy()
    other[:, 0] ^= 1
    bf = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True)
    cv = sorted((m.queryIdx, m.trainIdx, int(m.distance)) for m in bf.match(f.descriptors, other))
    pairs, dist = match_hamming(f.descriptors, other, mutual=True)
    assert cv == sorted(zip(pairs[:, 0].tolist(), pairs[:, 1].tolist(), dist.tolist()))
    out = cv2.drawKeypoints(np.zeros((480, 640, 3), np.uint8), kps, None)
    assert out.shape == (480, 640, 3)


def test_extractor_records_octaves():
    import zippy

    rng = np.random.default_rng(0)
    image = (rng.random((96, 128)) * 255).astype(np.uint8)
    ex = zippy.load("zippypoint_small", scales=(1.41, 1.0), engine="fp32")
    f = ex.extract(image, max_keypoints=300)
    assert f.meta["octave"].shape == (len(f),) and set(np.unique(f.meta["octave"])) <= {0, 1}
    assert f.meta["octave_scales"] == [1.41, 1.0]
    kps = f.to_cv_keypoints()
    assert [k.octave for k in kps] == f.meta["octave"].tolist()
    top = f.subset(np.arange(10))
    assert top.meta["octave"].shape == (10,)
