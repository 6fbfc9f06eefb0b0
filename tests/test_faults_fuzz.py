"""Fault suite: property-based fuzzing (hypothesis, fixed small budget) of extract, the matchers, feature
files and the command-line parsers, plus the input checks a fault probe found missing (defects 8, 9)."""

from __future__ import annotations

import io as _io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zippy.features import Features, load_features, save_features
from zippy.matching import match_guided, match_hamming

FUZZ = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def tiny_extractor():
    """An untrained, narrow zippypoint network on the fp32 engine: fast on 16..48 px images."""
    import torch

    from zippy.extractor import Extractor
    from zippy.models import KeypointNet, ModelConfig

    torch.manual_seed(0)
    return Extractor(KeypointNet(ModelConfig(backbone="zippypoint", widths=(8, 16, 16), feat_dim=32)), engine="fp32")


# ------------------------------------------------------------------------------------------ extract

images = st.builds(
    lambda h, w, c, dtype, seed: _image(h, w, c, dtype, seed),
    st.integers(16, 48),
    st.integers(16, 48),
    st.sampled_from([0, 1, 3, 4]),
    st.sampled_from(["uint8", "uint16", "float32", "float64"]),
    st.integers(0, 2**16),
)


def _image(h: int, w: int, c: int, dtype: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (h, w) if c == 0 else (h, w, c)
    if dtype == "uint8":
        return rng.integers(0, 256, shape, dtype=np.uint8)
    if dtype == "uint16":
        return rng.integers(0, 65536, shape, dtype=np.uint16)
    return rng.random(shape).astype(dtype)


@FUZZ
@given(image=images, k=st.integers(1, 200), threshold=st.one_of(st.none(), st.floats(0, 1)))
def test_extract_keeps_the_feature_contract(tiny_extractor, image: np.ndarray, k: int, threshold) -> None:
    f = tiny_extractor.extract(image, k, threshold)
    h, w = image.shape[:2]
    n = len(f)
    assert n <= k and f.image_size == (w, h)
    assert f.keypoints.dtype == np.float32 and f.keypoints.shape == (n, 2)
    assert f.scores.dtype == np.float32 and f.scores.shape == (n,)
    assert f.descriptors.dtype == np.uint8 and f.descriptors.shape == (n, 32)
    assert np.isfinite(f.keypoints).all() and np.isfinite(f.scores).all()
    assert ((f.keypoints >= -0.5) & (f.keypoints <= np.array([w, h]) - 0.5)).all()
    assert (np.unpackbits(f.descriptors, axis=1).sum(1) == 64).all()
    if threshold is not None:
        assert (f.scores >= threshold).all()


bad_k = st.one_of(
    st.integers(max_value=0),
    st.integers(min_value=2**31, max_value=2**70),
    st.floats(allow_nan=True),
    st.booleans(),
    st.text(max_size=3),
    st.none(),
)
bad_threshold = st.one_of(
    st.floats(max_value=-1e-9),
    st.floats(min_value=1.0 + 1e-9),
    st.just(float("nan")),
    st.text(max_size=4),
    st.booleans(),
)


@FUZZ
@given(k=bad_k)
def test_extract_refuses_bad_max_keypoints_with_a_value_error(tiny_extractor, k) -> None:
    """Defect 4: max_keypoints = 2**64 reached numba and failed there with a typing error."""
    with pytest.raises(ValueError, match="max_keypoints"):
        tiny_extractor.extract(np.zeros((16, 16), np.uint8), k)


@FUZZ
@given(threshold=bad_threshold)
def test_extract_refuses_bad_thresholds_with_a_value_error(tiny_extractor, threshold) -> None:
    """Defect 9: threshold="0.5" (a string) was accepted."""
    with pytest.raises(ValueError, match="threshold"):
        tiny_extractor.extract(np.zeros((16, 16), np.uint8), 10, threshold)


def test_threshold_string_is_refused(tiny_extractor) -> None:
    with pytest.raises(ValueError, match="threshold must be a number"):
        tiny_extractor.extract(np.zeros((16, 16), np.uint8), 10, "0.5")


def test_image_size_limit(tiny_extractor) -> None:
    """Defect 8: no bound on image size (6000x8000: 59 s, 3.5 GB); now refused above max_pixels."""
    import zippy
    from zippy.extractor import DEFAULT_MAX_PIXELS, Extractor

    assert tiny_extractor.max_pixels == DEFAULT_MAX_PIXELS == 4096 * 4096
    big = np.zeros((4096, 4097), np.uint8)  # one column over: refused before any network work
    with pytest.raises(ValueError, match=r"max_pixels=16777216.*resize.*max_pixels=N"):
        tiny_extractor.extract(big)
    small = Extractor(tiny_extractor.model, engine="fp32", max_pixels=32 * 32)
    assert len(small.extract(np.zeros((32, 32), np.uint8))) >= 0
    with pytest.raises(ValueError, match="too large"):
        small.extract(np.zeros((32, 33), np.uint8))
    pyramid = Extractor(tiny_extractor.model, engine="fp32", scales=(2.0, 1.0), max_pixels=64 * 64)
    with pytest.raises(ValueError, match="largest scale"):  # 40x40 at scale 2 is 6400 px per pass
        pyramid.extract(np.zeros((40, 40), np.uint8))
    ex = zippy.load("zippypoint", engine="fp32", max_pixels=None)
    assert ex.max_pixels is None
    with pytest.raises(ValueError, match="max_pixels"):
        zippy.load("zippypoint", engine="fp32", max_pixels=0)


def test_load_names_its_argument() -> None:
    """Defect 9: zippy.load(3) raised TypeError without naming the argument."""
    import zippy

    with pytest.raises(TypeError, match="name must be a model name"):
        zippy.load(3)
    with pytest.raises(TypeError, match="weights must be a path"):
        zippy.load("zippypoint", weights=3)


# ------------------------------------------------------------------------------------------ matchers

descriptors = st.builds(
    lambda n, seed: np.random.default_rng(seed).integers(0, 256, (n, 32), dtype=np.uint8),
    st.integers(0, 40),
    st.integers(0, 2**16),
)


def _popcount_distances(d0: np.ndarray, d1: np.ndarray) -> np.ndarray:
    return np.unpackbits(d0[:, None] ^ d1[None], axis=2).sum(2).astype(np.int64)


@FUZZ
@given(d0=descriptors, d1=descriptors, mutual=st.booleans())
def test_match_hamming_agrees_with_brute_force(d0: np.ndarray, d1: np.ndarray, mutual: bool) -> None:
    pairs, dist = match_hamming(d0, d1, mutual=mutual)
    assert pairs.dtype == np.int64 and pairs.ndim == 2 and pairs.shape[1] == 2 and len(dist) == len(pairs)
    if len(d0) == 0 or len(d1) == 0:
        assert len(pairs) == 0
        return
    D = _popcount_distances(d0, d1)
    nn01, nn10 = D.argmin(1), D.argmin(0)  # argmin: first index wins ties
    want = [(i, j) for i, j in enumerate(nn01) if not mutual or nn10[j] == i]
    assert [tuple(p) for p in pairs.tolist()] == want
    assert (dist == D[pairs[:, 0], pairs[:, 1]]).all()


coords = st.floats(allow_nan=True, allow_infinity=True, width=64)


@FUZZ
@given(
    n0=st.integers(0, 12),
    n1=st.integers(0, 12),
    seed=st.integers(0, 2**16),
    scale=st.sampled_from([1.0, 1e3, 1e9, 1e10, 1e200, 1e308]),
    radius=st.floats(0, 1e300),
)
def test_match_guided_is_exact_or_refuses(n0: int, n1: int, seed: int, scale: float, radius: float) -> None:
    """Defect 9: coordinates near 1e200 overflowed (false matches), near 1e308 a cryptic error."""
    rng = np.random.default_rng(seed)
    d0 = rng.integers(0, 256, (n0, 32), dtype=np.uint8)
    d1 = rng.integers(0, 256, (n1, 32), dtype=np.uint8)
    pred = rng.uniform(-1, 1, (n0, 2)) * scale
    kpts = rng.uniform(-1, 1, (n1, 2)) * scale
    if max(np.abs(pred).max(initial=0), np.abs(kpts).max(initial=0)) > 1e9:
        with pytest.raises(ValueError, match="within"):
            match_guided(d0, d1, pred, kpts, radius)
        return
    pairs, _ = match_guided(d0, d1, pred, kpts, radius, mutual=False)
    # the definition: the nearest descriptor among the keypoints within the radius (exact float64 distances)
    D = _popcount_distances(d0, d1)
    for i in range(n0):
        near = np.flatnonzero(((kpts - pred[i]) ** 2).sum(1) <= radius * radius)
        got = pairs[pairs[:, 0] == i, 1].tolist()
        assert got == ([int(near[D[i, near].argmin()])] if near.size else []), (i, near, got)


def test_match_guided_false_match_far_away() -> None:
    d = np.zeros((1, 32), np.uint8)
    with pytest.raises(ValueError, match="kpts1 must be within"):
        match_guided(d, d, np.array([[0.0, 0.0]]), np.array([[1e200, 1e200]]), 5.0)
    with pytest.raises(ValueError, match="pred0 must be within"):
        match_guided(d, d, np.array([[1e308, 0.0]]), np.array([[0.0, 0.0]]), 5.0)
    pairs, _ = match_guided(d, d, np.array([[np.nan, 0.0]]), np.array([[0.0, 0.0]]), 5.0)  # NaN: no match
    assert len(pairs) == 0


# ------------------------------------------------------------------------------------------ feature files

features = st.builds(
    lambda n, seed, w, h: Features(
        np.random.default_rng(seed).uniform(0, 100, (n, 2)).astype(np.float32),
        np.random.default_rng(seed + 1).random(n).astype(np.float32),
        np.random.default_rng(seed + 2).integers(0, 256, (n, 32), dtype=np.uint8),
        (w, h),
    ),
    st.integers(0, 50),
    st.integers(0, 2**16),
    st.integers(0, 5000),
    st.integers(0, 5000),
)


@FUZZ
@given(f=features, suffix=st.sampled_from([".npz", ".h5"]))
def test_feature_files_round_trip(tmp_path_factory, f: Features, suffix: str) -> None:
    if suffix == ".h5":
        pytest.importorskip("h5py")
    path = save_features(f, tmp_path_factory.mktemp("rt") / f"f{suffix}")
    g = load_features(path)
    assert g.image_size == f.image_size
    for a, b in ((f.keypoints, g.keypoints), (f.scores, g.scores), (f.descriptors, g.descriptors)):
        assert a.dtype == b.dtype and np.array_equal(a, b)


@FUZZ
@given(f=features, cut=st.floats(0, 1), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), max_size=4))
def test_damaged_feature_files_load_equal_or_raise_value_error(tmp_path_factory, f, cut, flips) -> None:
    path = save_features(f, tmp_path_factory.mktemp("bad") / "f.npz")
    data = bytearray(path.read_bytes())
    for where, mask in flips:
        data[int(where * (len(data) - 1))] ^= mask
    data = data[: max(1, int(cut * len(data)))] if cut < 1 else data
    path.write_bytes(bytes(data))
    try:
        g = load_features(path)
    except ValueError as e:
        assert str(path) in str(e)
        return
    assert g.keypoints.shape[1] == 2 and len(g.scores) == len(g)  # what loads is a valid record


def test_feature_file_with_missing_arrays(tmp_path: Path) -> None:
    buf = _io.BytesIO()
    np.savez(buf, keypoints=np.zeros((1, 2), np.float32))
    (tmp_path / "f.npz").write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match="missing arrays"):
        load_features(tmp_path / "f.npz")
    with zipfile.ZipFile(tmp_path / "g.npz", "w") as z:
        z.writestr("keypoints.npy", b"garbage")
    with pytest.raises(ValueError, match="not a readable feature file"):
        load_features(tmp_path / "g.npz")


# ------------------------------------------------------------------------------------------ command-line parsers

TOKENS = [
    "detect", "match", "stream", "export", "train", "eval", "hpatches", "bench", "--out", "--max-keypoints",
    "--threshold", "--fps", "--format", "onnx", "npz", "-1", "0", "1e999", "nan", "2" * 25, "", "x.png",
    "--scales", "1.41,1", "--shifts", "4:4", "--size", "0x0", "--weights", "--model", "--engine", "bogus",
    "--max-pixels", "-v", "--help-not", "\u00e9", "--nms-radius",
]  # fmt: skip


@FUZZ
@given(argv=st.lists(st.sampled_from(TOKENS), max_size=8))
def test_parsers_reject_or_accept_cleanly(argv: list[str]) -> None:
    """Any argument list: the parser accepts it or exits with argparse's usage error (code 2), nothing else."""
    from zippy_apps.cli import _command_of, build_parser

    parser = build_parser(_command_of(argv))
    try:
        parser.parse_args(argv)
    except SystemExit as e:
        assert e.code in (0, 2)


@FUZZ
@given(
    k=st.sampled_from(["0", "-3", str(2**64), "nan", "1.5"]),
    threshold=st.sampled_from(["nan", "-1", "2", "inf", "0.5"]),
    pixels=st.sampled_from(["0", "-1", "100", "16777216"]),
)
def test_detect_options_end_in_a_clean_exit(tmp_path_factory, capsys, k: str, threshold: str, pixels: str) -> None:
    """Bad numbers on the command line: exit 2 with one line (argparse or the boundary), never a traceback."""
    from faults_helpers import write_image

    from zippy_apps.cli import main

    folder = tmp_path_factory.mktemp("cli")
    img = write_image(folder / "a.png", 32, 32)
    argv = ["detect", str(img), "--out", str(folder / "o"), "--model", "zippypoint", "--engine", "fp32"]
    argv += ["--max-keypoints", k, "--threshold", threshold, "--max-pixels", pixels]
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse: not a number
        rc = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    valid = k not in ("0", "-3", str(2**64), "nan", "1.5") and threshold == "0.5" and int(pixels) >= 32 * 32
    assert rc == (0 if valid else 2), err
