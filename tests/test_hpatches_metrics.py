"""HPatches metrics on synthetic cases with hand-computed answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from zippy_eval.hpatches.metrics import (
    evaluate_pair,
    homography_accuracy,
    matching_score,
    mean_matching_accuracy,
    repeatability,
    reprojection_errors,
    wrong_matches,
)

SIZE = (320, 240)  # (width, height)
I3 = np.eye(3)


def shift(dx: float, dy: float) -> np.ndarray:
    return np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1]], np.float64)


def grid_points(n: int = 6) -> np.ndarray:
    """Well-spread points inside a 320x240 image, float [n*n, 2]."""
    xs, ys = np.meshgrid(np.linspace(20, 300, n), np.linspace(20, 220, n))
    return np.stack([xs.ravel(), ys.ravel()], 1)


def diag(n: int) -> np.ndarray:
    return np.stack([np.arange(n), np.arange(n)], 1).astype(np.int64)


# ------------------------------------------------------------------------------------------- repeatability


def test_identity_gives_repeatability_one_and_zero_error():
    kp = grid_points()
    r = repeatability(kp, kp, I3, SIZE, SIZE)
    assert r.repeatability == 1.0
    assert r.localization_error == 0.0
    assert (r.n_shared0, r.n_shared1, r.n_repeated) == (36, 36, 72)


def test_known_shift_of_keypoints():
    kp0 = grid_points()
    kp1 = kp0 + np.array([2.0, 0.0])  # detections 2 px off the truth (H = identity)
    r3 = repeatability(kp0, kp1, I3, SIZE, SIZE, threshold=3.0)
    assert r3.repeatability == 1.0
    assert r3.localization_error == pytest.approx(2.0)
    r1 = repeatability(kp0, kp1, I3, SIZE, SIZE, threshold=1.0)
    assert r1.repeatability == 0.0
    assert math.isnan(r1.localization_error)


def test_repeatability_counts_only_the_shared_view():
    H = shift(100, 0)
    kp0 = np.array([[10.0, 10.0], [250.0, 10.0]])  # warps to (110,10) visible and (350,10) outside
    kp1 = np.array([[110.0, 10.0], [5.0, 5.0], [200.0, 100.0]])  # back-warps: (10,10) in, (-95,5) out, (100,100) in
    r = repeatability(kp0, kp1, H, SIZE, SIZE)
    assert (r.n_shared0, r.n_shared1) == (1, 2)
    # c0 = 1 (the warped (110,10) has kp1 (110,10) at 0 px), c1 = 1 (only (110,10) has a neighbour)
    assert r.repeatability == pytest.approx(2 / 3)
    assert r.localization_error == 0.0


def test_repeatability_without_keypoints_is_zero_not_a_crash():
    empty = np.zeros((0, 2))
    r = repeatability(empty, grid_points(), I3, SIZE, SIZE)
    assert r.repeatability == 0.0 and math.isnan(r.localization_error)
    r = repeatability(empty, empty, I3, SIZE, SIZE)
    assert r.repeatability == 0.0


# ------------------------------------------------------------------------------------------- MMA


def test_mma_identity_and_known_shift():
    kp = grid_points()
    np.testing.assert_array_equal(mean_matching_accuracy(kp, kp, diag(36), I3), np.ones(10))
    # 2.5 px error on every match: wrong at 1 and 2 px, right from 3 px on
    mma = mean_matching_accuracy(kp, kp + np.array([1.5, 2.0]), diag(36), I3)
    np.testing.assert_array_equal(mma, [0, 0, 1, 1, 1, 1, 1, 1, 1, 1])


def test_mma_fraction_of_correct_matches():
    kp0 = grid_points(2)  # 4 points
    kp1 = kp0.copy()
    kp1[0] += [0.0, 4.0]  # one match 4 px off
    mma = mean_matching_accuracy(kp0, kp1, diag(4), I3, thresholds=(1, 4, 5))
    np.testing.assert_allclose(mma, [0.75, 1.0, 1.0])


def test_mma_without_matches_is_zero():
    kp = grid_points()
    np.testing.assert_array_equal(mean_matching_accuracy(kp, kp, np.zeros((0, 2), np.int64), I3), np.zeros(10))


def test_reprojection_errors_follow_the_homography():
    kp0 = np.array([[10.0, 20.0]])
    kp1 = np.array([[13.0, 24.0]])
    np.testing.assert_allclose(reprojection_errors(kp0, kp1, diag(1), shift(3, 4)), [0.0])
    np.testing.assert_allclose(reprojection_errors(kp0, kp1, diag(1), I3), [5.0])


# ------------------------------------------------------------------------------------------- homography


def test_homography_identity_gives_zero_corner_error():
    kp = grid_points()
    res = homography_accuracy(kp, kp, diag(36), I3, SIZE)
    assert res.corner_error == pytest.approx(0.0, abs=1e-6)
    assert res.correct == {1: True, 3: True, 5: True}
    assert res.n_inliers == 36


def test_homography_known_shift_gives_known_corner_error():
    kp0 = grid_points()
    res = homography_accuracy(
        kp0, kp0 + np.array([2.0, 0.0]), diag(36), I3, SIZE
    )  # estimate = 2 px shift, truth = identity
    assert res.corner_error == pytest.approx(2.0, abs=1e-6)
    assert res.correct == {1: False, 3: True, 5: True}


def test_no_matches_gives_accuracy_zero_not_a_crash():
    kp = grid_points()
    for pairs in (np.zeros((0, 2), np.int64), diag(3)):  # none, or fewer than 4
        res = homography_accuracy(kp, kp, pairs, I3, SIZE)
        assert res.H is None and math.isinf(res.corner_error)
        assert res.correct == {1: False, 3: False, 5: False}


# ------------------------------------------------------------------------------------------- matching score


def test_matching_score_hand_computed():
    H = shift(10, 0)
    kp0 = np.array([[50.0, 50.0], [100.0, 100.0], [200.0, 150.0], [5.0, 5.0]])
    kp1 = kp0 + np.array([10.0, 0.0])  # the true positions in image 1
    # image 0 -> 1: three right, one wrong (0 -> 1); all partners back-warp inside image 0
    nn01 = np.array([[0, 1], [1, 1], [2, 2], [3, 3]])
    # image 1 -> 0: partner of kp1[3] = kp0[3] is right; kp1[0] -> kp0[0] right; kp1[1] -> kp0[2] wrong;
    # kp1[2] -> kp0[2] right
    nn10 = np.array([[0, 0], [1, 2], [2, 2], [3, 3]])
    assert matching_score(kp0, kp1, nn01, nn10, H, SIZE, SIZE) == pytest.approx((3 / 4 + 3 / 4) / 2)


def test_matching_score_ignores_partners_outside_the_view():
    H = shift(-100, 0)
    kp0 = np.array([[150.0, 50.0]])
    kp1 = np.array([[50.0, 50.0], [300.0, 50.0]])  # kp1[1] back-warps to (400, 50): outside image 0
    nn01 = np.array([[0, 1]])  # the only match of image 0 has an invisible partner -> score01 = 0 (no visible)
    nn10 = np.array([[0, 0], [1, 0]])  # kp0[0] warps to (50,50): visible in image 1 for both; one right
    ms = matching_score(kp0, kp1, nn01, nn10, H, SIZE, SIZE)
    assert ms == pytest.approx((0.0 + 1 / 2) / 2)


def test_matching_score_without_matches_is_zero():
    kp = grid_points()
    e = np.zeros((0, 2), np.int64)
    assert matching_score(kp, kp, e, e, I3, SIZE, SIZE) == 0.0


# ------------------------------------------------------------------------------------------- wrong matches


def test_wrong_matches_are_counted_by_cause():
    # H shifts by +100 px in x: kp0 at x = 250 warps to 350, outside the 320 px wide image 1
    kp0 = np.array([[10.0, 10.0], [20.0, 50.0], [30.0, 100.0], [40.0, 150.0], [250.0, 60.0]])
    kp1 = np.array(
        [
            [110.0, 10.0],  # kp0[0]'s true position: match 0 -> 0 is right
            [120.0, 50.0],  # kp0[1]'s partner, but kp0[1] is matched to kp1[2]: partner elsewhere
            [300.0, 200.0],  # far from everything
            [141.0, 190.0],  # 40 px from kp0[3]'s true position (140, 150), which has no keypoint
            [10.0, 10.0],
        ]
    )
    pairs = np.array([[0, 0], [1, 2], [3, 3], [4, 4]])
    counts = wrong_matches(kp0, kp1, pairs, shift(100, 0), SIZE)
    assert counts == {
        "wrong_out_of_view": 1,  # kp0[4]
        "wrong_no_partner": 1,  # kp0[3]
        "wrong_partner_elsewhere": 1,  # kp0[1]
        "wrong_far": 3,  # errors 234, 40 and 344 px
    }
    assert sum(counts.values()) - counts["wrong_far"] == len(pairs) - 1  # every wrong match has one cause
    assert set(wrong_matches(kp0, kp1, pairs[:1], shift(100, 0), SIZE).values()) == {0}


# ------------------------------------------------------------------------------------------- evaluate_pair


def test_evaluate_pair_identity_row():
    kp = grid_points()
    row = evaluate_pair(kp, kp, I3, SIZE, SIZE, diag(36), diag(36), diag(36))
    assert row["repeatability"] == 1.0 and row["localization_error"] == 0.0
    assert row["h_acc@1"] and row["h_acc@3"] and row["h_acc@5"]
    assert row["corner_error"] == pytest.approx(0.0, abs=1e-6)
    assert row["matching_score"] == 1.0
    assert row["mma"] == [1.0] * 10
    assert (row["n_kp0"], row["n_matches"], row["n_correct@3"], row["n_inliers"]) == (36, 36, 36, 36)
    assert row["wrong_out_of_view"] == row["wrong_no_partner"] == row["wrong_partner_elsewhere"] == 0


def test_evaluate_pair_with_empty_features():
    e2, ep = np.zeros((0, 2)), np.zeros((0, 2), np.int64)
    row = evaluate_pair(e2, e2, I3, SIZE, SIZE, ep, ep, ep)
    assert row["repeatability"] == 0.0 and row["n_matches"] == 0
    assert not row["h_acc@5"] and math.isinf(row["corner_error"])
    assert row["matching_score"] == 0.0 and row["mma"] == [0.0] * 10


def test_bad_input_raises_value_error():
    kp = grid_points()
    with pytest.raises(ValueError, match=r"\[N,2\]"):
        repeatability(kp[:, :1], kp, I3, SIZE, SIZE)
    with pytest.raises(ValueError, match="homography"):
        repeatability(kp, kp, np.eye(2), SIZE, SIZE)
    with pytest.raises(ValueError, match="out of range"):
        mean_matching_accuracy(kp, kp, np.array([[0, 99]]), I3)
    with pytest.raises(ValueError, match="int"):
        mean_matching_accuracy(kp, kp, np.array([[0.0, 1.0]]), I3)


def test_local_rotation_scale():
    from zippy_eval.hpatches.metrics import local_rotation_scale

    a, s = np.radians(-30.0), 1.5
    similarity = np.array([[s * np.cos(a), -s * np.sin(a), 10.0], [s * np.sin(a), s * np.cos(a), 5.0], [0, 0, 1]])
    assert local_rotation_scale(similarity, (100.0, 50.0)) == pytest.approx((30.0, 1.5))
    assert local_rotation_scale(np.linalg.inv(similarity), (3.0, 7.0)) == pytest.approx((30.0, 1.5))
    # with perspective: the analytic Jacobian agrees with finite differences of the warp
    H = np.array([[0.9, 0.2, 12.0], [-0.15, 1.1, -4.0], [2e-4, -3e-4, 1.0]])
    p, e = np.array([160.0, 120.0]), 1e-4
    dx, dy = np.array([e, 0.0]), np.array([0.0, e])

    def warp(x: np.ndarray) -> np.ndarray:
        q = H @ np.array([x[0], x[1], 1.0])
        return q[:2] / q[2]

    J = np.stack([(warp(p + dx) - warp(p - dx)) / (2 * e), (warp(p + dy) - warp(p - dy)) / (2 * e)], 1)
    rot = abs(np.degrees(np.arctan2(J[1, 0] - J[0, 1], J[0, 0] + J[1, 1])))
    scale = np.sqrt(abs(np.linalg.det(J)))
    assert local_rotation_scale(H, tuple(p)) == pytest.approx((rot, max(scale, 1 / scale)), rel=1e-6)
    with pytest.raises(ValueError, match="infinity"):
        local_rotation_scale(np.array([[1.0, 0, 0], [0, 1, 0], [1, 0, 0]]), (0.0, 5.0))
