"""The extraction API: shapes, dtypes, 64 ones, coordinates, batching, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import zippy
from zippy.extractor import Extractor
from zippy.features import Features


@pytest.fixture(scope="module")
def zp(calibrated_zippypoint) -> Extractor:
    return Extractor(calibrated_zippypoint, engine="fp32")


@pytest.fixture(scope="module")
def rng_image() -> np.ndarray:
    return (np.random.default_rng(0).random((75, 101, 3)) * 255).astype(np.uint8)


def test_load_unknown_name_and_missing_weights(tmp_path) -> None:
    with pytest.raises(ValueError, match="choose one of"):
        zippy.load("superglue")
    with pytest.raises(ValueError, match="unknown engine"):
        zippy.load("kp2d", engine="gpu")
    with pytest.raises(FileNotFoundError, match=r"nothere\.pt"):
        zippy.load("zippypoint", weights=tmp_path / "nothere.pt")


def test_shipped_variant_loads_by_name(tmp_path, monkeypatch) -> None:
    """A weights/<name>.pt file is a model name: its config (backbone, widths) comes from the file."""
    from zippy.models import KeypointNet, ModelConfig
    from zippy.weights import save_weights

    torch.manual_seed(0)
    cfg = ModelConfig(backbone="kp2d", widths=(8, 16, 32), feat_dim=32)
    save_weights(tmp_path / "kp2d_tiny.pt", KeypointNet(cfg))
    monkeypatch.setenv("ZIPPY_WEIGHTS_DIR", str(tmp_path))
    assert zippy.available_models() == ["kp2d_tiny"]  # the trained files only, not the registry's backbones
    assert "zippypoint" in zippy.available_backbones()
    ex = zippy.load("kp2d_tiny")
    assert ex.trained and ex.model.cfg == cfg and ex.weights_path == tmp_path / "kp2d_tiny.pt"
    assert len(ex.extract(np.zeros((64, 64, 3), np.uint8) + 100, max_keypoints=10)) <= 10
    with pytest.raises(ValueError, match="kp2d_tiny"):  # the message lists the shipped names
        zippy.load("kp2d_huge")
    (tmp_path / "sub").mkdir()
    save_weights(tmp_path / "sub" / "x.pt", KeypointNet(cfg))
    with pytest.raises(ValueError, match="unknown model"):  # names are file stems, never paths
        zippy.load("sub/x")


def test_features_shapes_and_dtypes(zp: Extractor, rng_image: np.ndarray) -> None:
    f = zp.extract(rng_image, max_keypoints=50)
    assert isinstance(f, Features)
    assert f.keypoints.dtype == np.float32 and f.keypoints.shape == (len(f), 2)
    assert f.scores.dtype == np.float32 and f.scores.shape == (len(f),)
    assert f.descriptors.dtype == np.uint8 and f.descriptors.shape == (len(f), 32)
    assert 0 < len(f) <= 50
    assert f.image_size == (101, 75)
    assert np.all(np.diff(f.scores) <= 0)  # sorted by score
    assert np.all(np.unpackbits(f.descriptors, axis=1).sum(1) == 64)


def test_float_backbone_descriptors() -> None:
    ex = Extractor(zippy.models.KeypointNet(zippy.models.ModelConfig(backbone="kp2d")), engine="fp32")
    f = ex.extract(np.full((64, 64), 128, np.uint8) + np.arange(64, dtype=np.uint8)[None], max_keypoints=10)
    assert f.descriptors.dtype == np.float32 and f.descriptors.shape[1] == 256
    np.testing.assert_allclose(np.linalg.norm(f.descriptors, axis=1), 1.0, rtol=1e-5)


@settings(max_examples=12, deadline=None)
@given(h=st.integers(16, 90), w=st.integers(16, 90), seed=st.integers(0, 1000))
def test_keypoints_inside_odd_sizes_and_64_ones(zp: Extractor, h: int, w: int, seed: int) -> None:
    img = (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)
    f = zp.extract(img, max_keypoints=1000)
    assert f.image_size == (w, h)
    if len(f):
        assert f.keypoints[:, 0].min() >= 0 and f.keypoints[:, 0].max() <= w - 1
        assert f.keypoints[:, 1].min() >= 0 and f.keypoints[:, 1].max() <= h - 1
    assert np.all(np.unpackbits(f.descriptors, axis=1).sum(1) == 64)


def test_batch_of_three_equals_single_calls(zp: Extractor) -> None:
    x = torch.rand(3, 3, 48, 72)
    batch = zp.extract_batch(x, max_keypoints=30)
    listed = zp.extract_batch([x[i].permute(1, 2, 0).numpy() for i in range(3)], max_keypoints=30)
    assert len(batch) == len(listed) == 3
    for i in range(3):
        single = zp.extract(x[i], max_keypoints=30)
        np.testing.assert_array_equal(batch[i].keypoints, single.keypoints)
        np.testing.assert_array_equal(batch[i].scores, single.scores)
        np.testing.assert_array_equal(batch[i].descriptors, single.descriptors)
        assert len(listed[i]) > 0
    with pytest.raises(ValueError, match="extract_batch"):
        zp.extract(x)
    with pytest.raises(ValueError, match="one size"):
        zp.extract_batch([np.zeros((32, 32), np.uint8), np.zeros((32, 40), np.uint8)])


def test_threshold_and_max_keypoints(zp: Extractor, rng_image: np.ndarray) -> None:
    all_kp = zp.extract(rng_image, max_keypoints=1000)
    assert len(zp.extract(rng_image, max_keypoints=3)) == min(3, len(all_kp))
    t = float(np.median(all_kp.scores))
    thr = zp.extract(rng_image, threshold=t)
    assert len(thr) == int((all_kp.scores >= t).sum())
    assert len(zp.extract(rng_image, threshold=1.0)) == 0  # scores are < 1: empty, correctly shaped
    assert zp.extract(rng_image, threshold=1.0).descriptors.shape == (0, 32)


def test_gray_rgba_uint16_float_inputs(zp: Extractor, rng_image: np.ndarray) -> None:
    gray = rng_image[..., 0]
    f_gray = zp.extract(gray)
    f_rgb = zp.extract(np.repeat(gray[..., None], 3, 2))
    np.testing.assert_array_equal(f_gray.descriptors, f_rgb.descriptors)
    rgba = np.concatenate([rng_image, np.full((*rng_image.shape[:2], 1), 7, np.uint8)], 2)
    np.testing.assert_array_equal(zp.extract(rgba).descriptors, zp.extract(rng_image).descriptors)
    assert len(zp.extract(rng_image.astype(np.uint16) * 257)) > 0
    assert len(zp.extract(rng_image.astype(np.float32) / 255)) > 0


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((1, 1, 3), np.uint8), "at least 16x16"),
        (np.zeros((0, 0), np.uint8), "at least 16x16"),
        (np.zeros((32, 32, 2), np.uint8), "HxWx3"),
        (np.zeros((32, 32, 3), np.int32), "uint8, uint16 or float"),
        (np.full((32, 32), np.nan, np.float32), "NaN"),
        (np.full((32, 32), 2.0, np.float32), r"\[0, 1\]"),
        (torch.full((1, 3, 32, 32), float("nan")), "NaN"),
        (torch.zeros(1, 2, 32, 32), "Bx1xHxW or Bx3xHxW"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "float"),
        ("image.png", "numpy array or a torch tensor"),
    ],
)
def test_bad_images_raise_clear_errors(zp: Extractor, image, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        zp.extract(image)


@pytest.mark.parametrize("k", [0, -5, 2.5, True])
def test_bad_max_keypoints(zp: Extractor, rng_image: np.ndarray, k) -> None:
    with pytest.raises(ValueError, match="max_keypoints must be a positive integer"):
        zp.extract(rng_image, max_keypoints=k)


def test_resize_image_uses_area_when_shrinking_linear_when_enlarging() -> None:
    import cv2

    from zippy.image import resize_image

    img = np.random.default_rng(0).random((30, 40, 3), dtype=np.float32)
    assert resize_image(img, 40, 30) is img
    for (w, h), interp in (((20, 15), cv2.INTER_AREA), ((80, 60), cv2.INTER_LINEAR), ((60, 10), cv2.INTER_AREA)):
        out = resize_image(img, w, h)
        assert out.shape == (h, w, 3) and np.array_equal(out, cv2.resize(img, (w, h), interpolation=interp))


def test_scale_two_equals_extracting_the_upscaled_image(calibrated_zippypoint, rng_image: np.ndarray) -> None:
    """One pass at scale 2 is extraction on the bilinearly doubled image, keypoints mapped back."""
    import cv2

    from zippy.image import to_tensor

    x = to_tensor(rng_image)
    up = cv2.resize(x[0].permute(1, 2, 0).numpy(), (202, 150), interpolation=cv2.INTER_LINEAR)
    up = torch.from_numpy(up).permute(2, 0, 1)[None]
    ref = Extractor(calibrated_zippypoint, engine="fp32").extract(up, max_keypoints=60)
    f = Extractor(calibrated_zippypoint, engine="fp32", scales=(2.0,)).extract(x, max_keypoints=60)
    assert len(f) == len(ref) > 0
    np.testing.assert_allclose(f.keypoints, (ref.keypoints + 0.5) / 2 - 0.5, atol=1e-5)
    np.testing.assert_array_equal(f.descriptors, ref.descriptors)
    assert f.image_size == (101, 75)


def test_pyramid_keeps_the_best_over_all_scales(calibrated_zippypoint, rng_image: np.ndarray) -> None:
    scales = (1.41, 1.0, 0.7)
    per_scale = [Extractor(calibrated_zippypoint, engine="fp32", scales=(s,)).extract(rng_image, 40) for s in scales]
    pyr = Extractor(calibrated_zippypoint, engine="fp32", scales=scales)
    f = pyr.extract(rng_image, max_keypoints=40)
    pooled = np.concatenate([p.scores for p in per_scale])
    assert len(f) == 40 and np.all(np.diff(f.scores) <= 0)
    np.testing.assert_array_equal(f.scores, np.sort(pooled)[::-1][:40])
    assert (f.keypoints >= -0.5).all() and (f.keypoints <= [100.5, 74.5]).all()
    assert (np.unpackbits(f.descriptors, axis=1).sum(1) == 64).all()
    # every kept keypoint is one of a single-scale extraction's, with its descriptor
    for kp, d in zip(f.keypoints, f.descriptors):
        assert any(np.any((np.abs(p.keypoints - kp).max(1) < 1e-5) & (p.descriptors == d).all(1)) for p in per_scale)
    assert "scales=(1.41, 1.0, 0.7)" in repr(pyr)


@pytest.mark.parametrize(
    ("scales", "message"),
    [((), "at least one"), ((1.0, 1.0), "distinct"), ((0.1,), r"\[0.25, 4\]"), ("ab", "numbers"), ((None,), "numbers")],
)
def test_bad_scales(calibrated_zippypoint, scales, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Extractor(calibrated_zippypoint, engine="fp32", scales=scales)


def test_scale_too_small_for_the_image(calibrated_zippypoint) -> None:
    ex = Extractor(calibrated_zippypoint, engine="fp32", scales=(1.0, 0.5))
    with pytest.raises(ValueError, match="below the 16x16 minimum"):
        ex.extract(np.zeros((20, 40, 3), np.uint8))


@pytest.mark.parametrize("scale", [1.0, 1.41])
def test_a_shift_is_extraction_on_the_image_without_its_first_columns_and_rows(
    calibrated_zippypoint, rng_image: np.ndarray, scale: float
) -> None:
    """One pass at shift (dx, dy): extraction on the (resized) image without its first dx columns and dy
    rows, keypoints moved back by (dx, dy) and then to the image's pixels."""
    from zippy.image import resize_image

    h0, w0 = rng_image.shape[:2]
    rh, rw = (round(h0 * scale), round(w0 * scale)) if scale != 1.0 else (h0, w0)
    resized = torch.from_numpy(resize_image(rng_image.astype(np.float32) / 255, rw, rh)).permute(2, 0, 1)[None]
    # a float tensor goes in as is (a float numpy image would be rounded to the uint8 grid first)
    ref = Extractor(calibrated_zippypoint, engine="fp32").extract(resized[..., 3:, 5:], max_keypoints=60)
    ex = Extractor(calibrated_zippypoint, engine="fp32", scales=(scale,), shifts=((5, 3),))
    f = ex.extract(rng_image.astype(np.float32) / 255, max_keypoints=60)
    assert len(f) == len(ref) > 0 and f.image_size == (w0, h0)
    expected = (ref.keypoints + [5, 3] + 0.5) * [w0 / rw, h0 / rh] - 0.5
    np.testing.assert_allclose(f.keypoints, expected, atol=1e-4)
    np.testing.assert_array_equal(f.descriptors, ref.descriptors)
    assert "shifts=((5, 3),)" in repr(ex)


def test_shifts_and_scales_keep_the_best_over_all_passes(calibrated_zippypoint, rng_image: np.ndarray) -> None:
    scales, shifts = (1.41, 1.0), ((0, 0), (4, 4))
    passes = [
        Extractor(calibrated_zippypoint, engine="fp32", scales=(s,), shifts=(d,)).extract(rng_image, 50)
        for s in scales
        for d in shifts
    ]
    f = Extractor(calibrated_zippypoint, engine="fp32", scales=scales, shifts=shifts).extract(rng_image, 50)
    pooled = np.concatenate([p.scores for p in passes])
    assert len(f) == 50 and np.all(np.diff(f.scores) <= 0)
    np.testing.assert_array_equal(f.scores, np.sort(pooled)[::-1][:50])
    assert (f.keypoints >= -0.5).all() and (f.keypoints <= [100.5, 74.5]).all()
    for kp, d in zip(f.keypoints, f.descriptors):
        assert any(np.any((np.abs(p.keypoints - kp).max(1) < 1e-5) & (p.descriptors == d).all(1)) for p in passes)
    # the default grid alone is the plain extraction
    one = Extractor(calibrated_zippypoint, engine="fp32", shifts=((0, 0),)).extract(rng_image, 50)
    plain = Extractor(calibrated_zippypoint, engine="fp32").extract(rng_image, 50)
    np.testing.assert_array_equal(one.keypoints, plain.keypoints)


@pytest.mark.parametrize(
    ("shifts", "message"),
    [
        ((), "at least one"),
        (((0, 0), (0, 0)), "distinct"),
        (((8, 0),), r"\[0, 8\)"),
        (((-1, 0),), r"\[0, 8\)"),
        (((1.5, 0),), "integer"),
        ((4, 4), "pairs"),
        (((1, 2, 3),), "pairs"),
    ],
)
def test_bad_shifts(calibrated_zippypoint, shifts, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Extractor(calibrated_zippypoint, engine="fp32", shifts=shifts)


def test_shift_too_large_for_the_image(calibrated_zippypoint) -> None:
    ex = Extractor(calibrated_zippypoint, engine="fp32", shifts=((0, 0), (0, 6)))
    with pytest.raises(ValueError, match="below the 16x16 minimum"):
        ex.extract(np.zeros((20, 40, 3), np.uint8))


def test_nms_radius(calibrated_zippypoint, rng_image: np.ndarray) -> None:
    """A smaller radius suppresses fewer keypoints; bad radii are refused."""
    counts = [len(Extractor(calibrated_zippypoint, nms_radius=r).extract(rng_image, 1000)) for r in (8, 4, 0)]
    assert counts[0] <= counts[1] <= counts[2] and counts[0] < counts[2]
    assert zippy.load("zippypoint_small", nms_radius=1).nms_radius == 1.0
    for bad in (-1, "2", None, True):
        with pytest.raises(ValueError, match="nms_radius must be a number >= 0"):
            Extractor(calibrated_zippypoint, nms_radius=bad)


@pytest.mark.parametrize("name", ["zippyfast", "zippypoint_small"])
def test_describe_at_the_extractors_own_keypoints_gives_its_descriptors(name: str, photo: np.ndarray) -> None:
    ex = zippy.load(name)  # shipped weights: fp32-folded (fast topology) and the int8 engine's describe path
    img = photo[:240, :320]
    f = ex.extract(img, max_keypoints=200)
    d = ex.describe(img, f.keypoints[::-1], f.scores[::-1])  # any order is kept
    assert np.array_equal(d.keypoints, f.keypoints[::-1]) and np.array_equal(d.scores, f.scores[::-1])
    assert np.array_equal(d.descriptors, f.descriptors[::-1])
    assert len(ex.describe(img, np.zeros((0, 2), np.float32))) == 0
    assert np.all(ex.describe(img, [[0.0, 0.0], [319.0, 239.0]]).scores == 1.0)


@pytest.mark.parametrize(
    ("keypoints", "scores", "message"),
    [
        (np.zeros((3, 3)), None, r"float \[N, 2\]"),
        ([[10.0, 10.0], [101.0, 5.0]], None, "outside the 101x75 image"),
        ([[np.nan, 10.0]], None, "not finite"),
        ([[10.0, 10.0]], [1.0, 2.0], "one value per keypoint"),
    ],
)
def test_describe_bad_keypoints(zp: Extractor, rng_image: np.ndarray, keypoints, scores, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        zp.describe(rng_image, keypoints, scores)


def test_describe_needs_one_pass_and_a_size_within_the_limit(calibrated_zippypoint, rng_image: np.ndarray) -> None:
    ex = Extractor(calibrated_zippypoint, engine="fp32", scales=(1.41, 1.0))
    with pytest.raises(ValueError, match="one pass at scale 1"):
        ex.describe(rng_image, [[10.0, 10.0]])
    small = Extractor(calibrated_zippypoint, engine="fp32", max_pixels=1000)
    with pytest.raises(ValueError, match="too large"):
        small.describe(rng_image, [[10.0, 10.0]])
