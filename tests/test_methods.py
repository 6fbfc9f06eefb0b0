"""The method registry used by every evaluation: OpenCV baselines, ALIKED, zippy backbones."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from zippy.features import Features
from zippy_eval.methods import (
    OPENCV_METHODS,
    MethodUnavailableError,
    available_methods,
    default_aliked_weights,
    get_method,
    methods_for_run,
)

DIMS = {"orb": 32, "sift": 128, "akaze": 61, "brisk": 64, "orb_teblid": 32}


def textured_image(h: int = 240, w: int = 320, seed: int = 0) -> np.ndarray:
    """Random rectangles and circles: plenty of corners for every detector. RGB uint8 [h,w,3]."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 128, np.uint8)
    for _ in range(60):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        if rng.random() < 0.5:
            cv2.rectangle(img, (x0, y0), (x0 + int(rng.integers(8, 60)), y0 + int(rng.integers(8, 60))), color, -1)
        else:
            cv2.circle(img, (x0, y0), int(rng.integers(4, 30)), color, -1)
    return img


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return textured_image()


def check_features(f: Features, budget: int, binary: bool, dim: int | None, size: tuple[int, int]) -> None:
    assert 0 < len(f) <= budget
    assert f.keypoints.dtype == np.float32 and f.keypoints.shape == (len(f), 2)
    assert np.all(np.diff(f.scores) <= 0), "scores must be sorted descending"
    assert f.is_binary == binary
    if dim is not None:
        assert f.descriptors.shape[1] == dim
    assert f.image_size == size
    w, h = size
    assert (f.keypoints >= -0.5).all() and (f.keypoints[:, 0] <= w - 0.5).all() and (f.keypoints[:, 1] <= h - 0.5).all()


@pytest.mark.parametrize("name", OPENCV_METHODS)
def test_opencv_methods(name, image):
    m = get_method(name)
    assert m.name == name and m.binary == (name != "sift")
    f = m.extract(image, 100)
    check_features(f, 100, m.binary, DIMS[name], (320, 240))
    if name not in ("orb", "orb_teblid"):  # ORB's own budget spreads keypoints over its pyramid levels
        full = m.extract(image, 5000)
        # the budget keeps the strongest responses
        assert f.scores[-1] >= np.sort(full.scores)[::-1][min(len(full), 100) - 1] - 1e-6
    info = m.info()
    assert info["name"] == name and info["version"].startswith("opencv") and info["weights_sha256"] is None


def test_orb_teblid_uses_orb_keypoints(image):
    orb, teblid = get_method("orb").extract(image, 200), get_method("orb_teblid").extract(image, 200)
    np.testing.assert_allclose(orb.keypoints, teblid.keypoints)
    assert not np.array_equal(orb.descriptors, teblid.descriptors)


def test_gray_and_flat_images(image):
    m = get_method("orb")
    f = m.extract(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), 50)
    assert len(f) > 0
    flat = m.extract(np.full((64, 64, 3), 7, np.uint8), 50)
    assert len(flat) == 0 and flat.descriptors.shape == (0, 32) and flat.is_binary


def test_registry_errors(image):
    with pytest.raises(ValueError, match=r"unknown method 'nope'.*orb"):
        get_method("nope")
    with pytest.raises(ValueError, match="max_keypoints"):
        get_method("orb").extract(image, 0)
    with pytest.raises(ValueError, match="options"):
        get_method("orb", foo=1)
    with pytest.raises(MethodUnavailableError, match="not found"):
        get_method("aliked", weights="/nonexistent/aliked.pth")
    names = available_methods()
    assert set(OPENCV_METHODS) <= set(names) and "aliked" in names


def test_methods_for_run_skips_unavailable_methods():
    from zippy_eval.hpatches.pipeline import HPatchesConfig

    missing = "/nonexistent/aliked.pth"
    methods, skipped = methods_for_run(HPatchesConfig(methods=("orb", "aliked"), weights={"aliked": missing}))
    assert [m.name for m in methods] == ["orb"]
    assert list(skipped) == ["aliked"] and "not found" in skipped["aliked"]
    with pytest.raises(ValueError, match="no method can run"):
        methods_for_run(HPatchesConfig(methods=("aliked",), weights={"aliked": missing}))


def test_aliked(image):
    path = default_aliked_weights()
    if not path.is_file():
        pytest.skip(f"ALIKED weights not found at {path}")
    m = get_method("aliked")
    f = m.extract(image[:128, :160], 64)
    check_features(f, 64, False, 64, (160, 128))
    assert len(f) == 64
    np.testing.assert_allclose(np.linalg.norm(f.descriptors, axis=1), 1.0, atol=1e-4)
    info = m.info()
    assert info["weights_sha256"] == "56782336919db220144a884e710e2b6af13b3b8f8da15b915a239078ab471085"
    assert Path(info["weights"]) == path


def test_zippy_backbones(image):
    zippy = pytest.importorskip("zippy")
    try:
        names = zippy.available_models()
    except ImportError as e:
        pytest.skip(f"zippy backbones not available: {e}")
    assert set(names) <= set(available_methods())
    for name in names:
        m = get_method(name)
        f = m.extract(image[:96, :128], 50)
        assert len(f) <= 50 and f.image_size == (128, 96) and f.is_binary == m.binary
        assert np.all(np.diff(f.scores) <= 0)
        info = m.info()
        assert info["version"].startswith("zippy") and "trained" in info["params"]


def test_zippy_pyramid_scales_reach_the_extractor_and_the_cache_name(image):
    from zippy.config import ExtractorConfig
    from zippy_eval.hpatches.pipeline import _method_tag

    pyramid = ExtractorConfig(scales=(1.41, 1.0))
    one, two = get_method("zippypoint_small"), get_method("zippypoint_small", extractor=pyramid)
    assert one.info()["params"]["scales"] == [1.0] and two.info()["params"]["scales"] == [1.41, 1.0]
    assert two.config.name == "zippypoint_small" and two.config.scales == (1.41, 1.0)  # the name is the method's
    assert one.config.tag() == "nms1" and two.config.tag() == "x1.41+1-nms1"
    assert _method_tag(two).replace("-x1.41+1", "") == _method_tag(one)
    three = get_method("zippypoint_small", extractor=pyramid.replace(nms_radius=4))
    assert three.info()["params"]["nms_radius"] == 4.0 and _method_tag(three) == _method_tag(two).replace(
        "nms1", "nms4"
    )
    four = get_method("zippypoint_small", extractor=pyramid.replace(shifts=((0, 0), (4, 4))))
    assert four.info()["params"]["shifts"] == [[0, 0], [4, 4]]
    assert four.config.tag() == "x1.41+1-g0-0+4-4-nms1" and four.cache_key().endswith("-x1.41+1-g0-0+4-4-nms1")
    assert "nms" not in get_method("orb").cache_key()
    f1, f2 = one.extract(image[:96, :128], 50), two.extract(image[:96, :128], 50)
    assert len(f2) == 50 and not np.array_equal(f1.keypoints, f2.keypoints)
    assert get_method("orb", extractor=pyramid).info()["name"] == "orb"  # non-zippy methods ignore the pyramid


def test_zippy_match_dispatches_on_the_descriptor_kind(image):
    from zippy import match as match_features

    for name in ("orb", "sift"):
        f = get_method(name).extract(image, 100)
        pairs, dist = match_features(f, f)
        # matching a set with itself: every feature with a unique descriptor matches itself
        assert pairs.dtype == np.int64 and pairs.shape[1] == 2 and len(pairs) >= 0.9 * len(f)
        assert (pairs[:, 0] == pairs[:, 1]).mean() >= 0.9
        if name == "orb":  # Hamming distances are exact; L2 ones carry float rounding
            assert (np.asarray(dist)[pairs[:, 0] == pairs[:, 1]] == 0).all()
    orb, sift = get_method("orb").extract(image, 10), get_method("sift").extract(image, 10)
    orb100, flipped = (get_method("orb").extract(im, 100) for im in (image, image[:, ::-1].copy()))
    plain, _ = match_features(orb100, flipped, mutual=False)
    strict, _ = match_features(orb100, flipped, mutual=False, ratio=0.7)
    assert len(strict) < len(plain) and {tuple(p) for p in strict} <= {tuple(p) for p in plain}
    with pytest.raises(ValueError, match="one kind and width"):
        match_features(orb, sift)


@pytest.mark.parametrize("detector", ["gftt", "orb"])
def test_detector_plus_zippy_describes_the_detectors_keypoints(detector, image):
    m = get_method(f"{detector}+zippyfast")
    assert m.name == f"{detector}+zippyfast" and m.binary
    f = m.extract(image, 300)
    check_features(f, 300, True, 32, (320, 240))
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    pts, _ = m._detect(gray, 300)
    assert {tuple(p) for p in f.keypoints.tolist()} <= {tuple(p) for p in pts.tolist()}
    plain = get_method("zippyfast")
    assert m.info()["params"]["detector"] == detector and m.cache_key() != plain.cache_key()
    same = plain._extractor.describe(image, f.keypoints)
    assert np.array_equal(same.descriptors, f.descriptors)


def test_detector_plus_errors():
    with pytest.raises(ValueError, match="must be a zippy model"):
        get_method("gftt+orb")
    with pytest.raises(ValueError, match=r"DETECTOR\+MODEL"):
        get_method("harris+zippyfast")
