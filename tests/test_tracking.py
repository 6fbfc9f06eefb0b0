"""zippy.tracking: one pair's matching and geometry (match_and_fit) on a real photo under a known homography."""

from __future__ import annotations

import numpy as np
import pytest

import zippy
from zippy.geometry import camera_matrix, corner_error
from zippy.tracking import PairResult, match_and_fit


@pytest.fixture(scope="module")
def warped_pair(photo):
    import cv2

    img0 = cv2.resize(photo, (320, 240), interpolation=cv2.INTER_AREA)
    H = np.array([[0.95, 0.08, 12.0], [-0.06, 0.97, 8.0], [1e-4, -5e-5, 1.0]])
    img1 = cv2.warpPerspective(img0, H, (320, 240), flags=cv2.INTER_LINEAR)
    return img0, img1, H


def test_match_and_fit_recovers_a_known_homography(warped_pair) -> None:
    img0, img1, H = warped_pair
    ex = zippy.load("zippypoint_small", engine="fp32")
    f0, f1 = ex.extract(img0, 500), ex.extract(img1, 500)
    res = match_and_fit(f0, f1)
    assert isinstance(res, PairResult) and res.model == "homography"
    assert res.matches.dtype == np.int64 and res.matches.shape[1] == 2 and res.inliers.shape == (res.num_matches,)
    assert res.num_inliers >= 50, res.num_inliers
    assert corner_error(res.H, H, 320, 240) < 3.0
    pose = match_and_fit(f0, f1, K=camera_matrix((300.0, 300.0, 159.5, 119.5)))
    assert pose.model == "essential" and pose.H is None and pose.num_matches == res.num_matches
    assert pose.matrix is None or pose.matrix.shape == (3, 3)
    with pytest.raises(ValueError, match="unknown robust method"):
        match_and_fit(f0, f1, robust="lmeds")
