"""HPatches layout loader: formats, short sequences, sizes, broken sequences reported by name."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from zippy_eval.hpatches.dataset import load_hpatches, read_homography, sequence_kind

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write_image(path: Path, w: int = 40, h: int = 30, gray: bool = False) -> None:
    rng = np.random.default_rng(len(path.name))
    img = rng.integers(0, 255, (h, w) if gray else (h, w, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), img)


def make_seq(root: Path, name: str, n: int = 6, ext: str = ".png", sizes=None, skip_h=(), gray=False) -> Path:
    d = root / name
    d.mkdir(parents=True)
    for k in range(1, n + 1):
        w, h = sizes[k - 1] if sizes else (40, 30)
        write_image(d / f"{k}{ext}", w, h, gray)
        if k >= 2 and k not in skip_h:
            H = np.eye(3)
            H[0, 2] = k
            np.savetxt(d / f"H_1_{k}", H)
    return d


def test_formats_short_sequences_and_sizes(tmp_path):
    make_seq(tmp_path, "v_ppm", ext=".ppm")
    make_seq(tmp_path, "i_pgm", n=3, ext=".pgm", gray=True)
    make_seq(tmp_path, "v_jpg", n=2, ext=".jpg", sizes=[(64, 48), (50, 70)])
    ds = load_hpatches(tmp_path)
    assert [s.name for s in ds.sequences] == ["i_pgm", "v_jpg", "v_ppm"]
    assert [s.num_pairs for s in ds.sequences] == [2, 1, 5]
    assert ds.num_pairs == 8 and ds.num_images == 11 and ds.skipped == {}
    jpg = ds.sequences[1]
    assert jpg.sizes == ((64, 48), (50, 70)) and jpg.kind == "v"
    i, j, H = next(iter(jpg.pairs()))
    assert (i, j) == (0, 1) and H[0, 2] == 2.0
    assert ds.describe()["num_i"] == 1 and ds.describe()["num_v"] == 2


def test_broken_sequences_are_skipped_by_name_with_reason(tmp_path, caplog):
    make_seq(tmp_path, "v_good")
    make_seq(tmp_path, "v_missing_h", skip_h=(4,))
    bad = make_seq(tmp_path, "i_bad_image")
    (bad / "3.png").write_bytes(b"not an image")
    gap = make_seq(tmp_path, "v_gap")
    (gap / "3.png").unlink()
    malformed = make_seq(tmp_path, "v_malformed")
    (malformed / "H_1_2").write_text("1 2 3\n")
    only_one = make_seq(tmp_path, "v_single", n=1)
    assert only_one.exists()
    (tmp_path / "notes").mkdir()  # not a sequence: ignored
    ds = load_hpatches(tmp_path)
    assert [s.name for s in ds.sequences] == ["v_good"]
    assert set(ds.skipped) == {"v_missing_h", "i_bad_image", "v_gap", "v_malformed", "v_single"}
    assert "H_1_4" in ds.skipped["v_missing_h"]
    assert "3.png" in ds.skipped["i_bad_image"]
    assert "missing [3]" in ds.skipped["v_gap"]
    assert "9 finite numbers" in ds.skipped["v_malformed"]
    assert "v_missing_h" in caplog.text  # logged, not silent


def test_include_exclude_and_single_sequence_root(tmp_path):
    make_seq(tmp_path, "i_a")
    make_seq(tmp_path, "v_b")
    make_seq(tmp_path, "v_evd_c", n=2)
    assert [s.name for s in load_hpatches(tmp_path, exclude=["v_evd_*"]).sequences] == ["i_a", "v_b"]
    assert [s.name for s in load_hpatches(tmp_path, include=["v_*"], exclude=["v_evd_*"]).sequences] == ["v_b"]
    assert [s.name for s in load_hpatches(tmp_path / "v_b").sequences] == ["v_b"]


def test_missing_or_empty_dataset_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_hpatches(tmp_path / "nope")
    with pytest.raises(ValueError, match="no usable"):
        load_hpatches(tmp_path)
    make_seq(tmp_path, "v_x")
    with pytest.raises(ValueError, match="no usable"):
        load_hpatches(tmp_path, include=["i_*"])


def test_read_homography_normalises_and_rejects_degenerate(tmp_path):
    p = tmp_path / "H"
    p.write_text("2 0 4\n0 2 6\n0 0 2\n")
    np.testing.assert_allclose(read_homography(p), [[1, 0, 2], [0, 1, 3], [0, 0, 1]])
    p.write_text("1 0 0\n0 0 0\n0 0 1\n")
    with pytest.raises(ValueError, match="degenerate"):
        read_homography(p)
    assert sequence_kind("i_x") == "i" and sequence_kind("v_x") == "v" and sequence_kind("x") == "other"


@pytest.mark.shared
def test_shared_hpatches_subset_loads():
    root = SHARED / "hpatches_subset"
    if not root.is_dir():
        pytest.skip(f"shared data not found at {root}")
    ds = load_hpatches(root)
    assert ds.skipped == {}
    pairs = {s.name: s.num_pairs for s in ds.sequences}
    assert pairs["v_graffiti"] == 5 and pairs["i_iguazu_noise"] == 5
    assert sum(name.startswith("v_evd_") for name in pairs) == 7
    assert all(pairs[n] == 1 for n in pairs if n.startswith("v_evd_"))
    np.testing.assert_allclose(ds.sequences[0].homographies[0], np.eye(3))  # i_iguazu_noise: identity
