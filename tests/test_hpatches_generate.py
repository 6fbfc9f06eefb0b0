"""HPatches-like generator: determinism, exact homographies, no view outside the photo, i_ / v_ character."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from zippy.geometry import image_corners, visible_mask, warp_points
from zippy_eval.hpatches.dataset import load_hpatches
from zippy_eval.hpatches.generate import GeneratorConfig, generate_sequences, list_photos


def smooth_photo(path: Path, w: int = 200, h: int = 150, seed: int = 0) -> Path:
    """A smooth random texture with values in [40, 215] (never black)."""
    rng = np.random.default_rng(seed)
    img = rng.uniform(0, 1, (h, w, 3)).astype(np.float32)
    img = cv2.GaussianBlur(img, (0, 0), 2.0)
    img = (img - img.min()) / (img.max() - img.min())
    assert cv2.imwrite(str(path), (40 + 175 * img).astype(np.uint8))
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("photos")
    return [smooth_photo(d / f"p{i}.png", seed=i) for i in range(2)]


@pytest.fixture(scope="module")
def generated(photos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gen")
    generate_sequences(photos, out, GeneratorConfig(n=2, seed=0, num_images=4))
    return out


def read(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def sample(img: np.ndarray, pts: np.ndarray) -> np.ndarray:
    mx, my = pts[:, 0].astype(np.float32)[None], pts[:, 1].astype(np.float32)[None]
    return cv2.remap(img.astype(np.float32), mx, my, cv2.INTER_LINEAR)[0]


def test_layout_split_and_manifest(generated, photos):
    ds = load_hpatches(generated)
    assert ds.skipped == {}
    assert sorted(s.kind for s in ds.sequences) == ["i", "v"]
    assert all(len(s.images) == 4 and s.num_pairs == 3 for s in ds.sequences)
    assert all(s.sizes[0] == (200, 150) for s in ds.sequences)
    manifest = json.loads((generated / "generation.json").read_text())
    assert manifest["config"]["seed"] == 0 and len(manifest["sequences"]) == 2
    assert {Path(r["source"]).name for r in manifest["sequences"]} == {p.name for p in photos}


def test_deterministic_for_a_seed(generated, photos, tmp_path):
    generate_sequences(photos, tmp_path / "same", GeneratorConfig(n=2, seed=0, num_images=4))
    generate_sequences(photos, tmp_path / "other", GeneratorConfig(n=2, seed=1, num_images=4))
    for seq in load_hpatches(generated).sequences:
        for f in seq.path.iterdir():
            assert f.read_bytes() == (tmp_path / "same" / seq.name / f.name).read_bytes(), f
    other = {s.name: s for s in load_hpatches(tmp_path / "other").sequences}
    v_here = next(s for s in load_hpatches(generated).sequences if s.kind == "v")
    v_other = next(s for s in other.values() if s.kind == "v")
    assert not np.allclose(v_here.homographies[0], v_other.homographies[0])


def test_viewpoint_homographies_are_exact_and_views_stay_inside(generated):
    seq = next(s for s in load_hpatches(generated).sequences if s.kind == "v")
    img1 = read(seq.images[0])
    w, h = seq.sizes[0]
    xs, ys = np.meshgrid(np.arange(2, w - 2, 3), np.arange(2, h - 2, 3))
    pts = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)
    for k, H in enumerate(seq.homographies, start=2):
        imgk = read(seq.images[k - 1])
        assert imgk.min() >= 20, "a view sampled outside the photo (black border)"
        corners_moved = np.linalg.norm(warp_points(image_corners(w, h), H) - image_corners(w, h), axis=1).mean()
        assert corners_moved > 5.0, "a v_ view should change the viewpoint"
        to = warp_points(pts, H)
        vis = visible_mask(to, w, h, border=1)
        assert vis.mean() >= 0.4  # min_overlap (grid approximation)
        ref = img1[pts[vis, 1].astype(int), pts[vis, 0].astype(int)].astype(np.float32)
        err = np.abs(sample(imgk, to[vis]) - ref).mean()
        off = warp_points(pts[vis], H) + np.array([3.0, 0.0])
        err_off = np.abs(sample(imgk, off) - ref).mean()
        assert err < 3.0 and err < 0.5 * err_off, (k, err, err_off)


def test_illumination_sequences_change_light_not_geometry(generated):
    seq = next(s for s in load_hpatches(generated).sequences if s.kind == "i")
    img1 = read(seq.images[0]).astype(np.float32)
    w, h = seq.sizes[0]
    for k, H in enumerate(seq.homographies, start=2):
        moved = np.linalg.norm(warp_points(image_corners(w, h), H) - image_corners(w, h), axis=1)
        assert moved.max() <= 2.0
        imgk = read(seq.images[k - 1]).astype(np.float32)
        assert np.abs(imgk - img1).mean() > 8.0, "an i_ image should differ photometrically"


def test_existing_sequences_kept_unless_overwrite(photos, tmp_path):
    cfg = GeneratorConfig(n=1, seed=0, num_images=2, v_fraction=1.0)
    (folder,) = generate_sequences(photos, tmp_path, cfg)
    marker = folder / "2.png"
    marker.write_bytes(b"x")
    generate_sequences(photos, tmp_path, cfg)
    assert marker.read_bytes() == b"x"
    generate_sequences(photos, tmp_path, cfg, overwrite=True)
    assert marker.read_bytes() != b"x"


def test_bad_config_and_sources(tmp_path):
    with pytest.raises(ValueError, match="num_images"):
        GeneratorConfig(num_images=1)
    with pytest.raises(ValueError, match="v_fraction"):
        GeneratorConfig(v_fraction=2.0)
    with pytest.raises(FileNotFoundError):
        list_photos(tmp_path / "missing")
    with pytest.raises(ValueError, match="no photos"):
        list_photos(tmp_path, "bsds500_test_*")
