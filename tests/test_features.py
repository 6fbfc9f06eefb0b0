"""The Features record and feature files."""

from __future__ import annotations

import numpy as np
import pytest

from zippy.features import Features, load_features, pack_bits, save_features, unpack_bits


def make(n: int = 5) -> Features:
    rng = np.random.default_rng(0)
    return Features(
        rng.random((n, 2)).astype(np.float32) * 10,
        rng.random(n).astype(np.float32),
        rng.integers(0, 256, (n, 32), dtype=np.uint8),
        (20, 10),
    )


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_save_load_round_trip(tmp_path, suffix: str) -> None:
    f = make()
    g = load_features(save_features(f, tmp_path / f"a{suffix}"))
    np.testing.assert_array_equal(f.keypoints, g.keypoints)
    np.testing.assert_array_equal(f.descriptors, g.descriptors)
    assert g.image_size == (20, 10)
    assert not list(tmp_path.glob("*.tmp"))


def test_empty_and_subset() -> None:
    e = Features.empty((5, 5))
    assert len(e) == 0 and e.descriptors.shape == (0, 32) and e.keypoints.shape == (0, 2)
    f = make()
    assert len(f.subset(np.array([0, 2]))) == 2


def test_validation_messages(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"keypoints must be float32 \[N,2\], got float64 \[3\]"):
        Features(np.zeros(3), np.zeros(3, np.float32), np.zeros((3, 32), np.uint8), (1, 1))
    with pytest.raises(ValueError, match="descriptors must be uint8"):
        Features(np.zeros((3, 2)), np.zeros(3), np.zeros((3, 32), np.int64), (1, 1))
    with pytest.raises(ValueError, match=r"\.npz or \.h5"):
        save_features(make(), tmp_path / "a.txt")
    with pytest.raises(FileNotFoundError):
        load_features(tmp_path / "none.npz")


def test_pack_unpack_msb_first() -> None:
    bits = np.zeros((1, 16), np.uint8)
    bits[0, 0] = 1  # MSB of the first byte
    bits[0, 15] = 1
    packed = pack_bits(bits)
    assert packed.tolist() == [[128, 1]]
    np.testing.assert_array_equal(unpack_bits(packed), bits)
    with pytest.raises(ValueError, match="multiple of 8"):
        pack_bits(np.zeros((1, 7)))


def test_to_dict_layouts_for_lightglue_and_hloc() -> None:
    import torch

    rng = np.random.default_rng(0)
    bits = np.zeros((3, 256), np.uint8)
    for row in bits:
        row[rng.choice(256, 64, replace=False)] = 1
    f = Features(rng.random((3, 2), np.float32) * 50, np.array([0.9, 0.5, 0.1], np.float32), pack_bits(bits), (64, 48))
    lg = f.to_dict(layout="lightglue")
    assert lg["keypoints"].shape == (1, 3, 2) and lg["keypoints"].dtype == torch.float32
    assert lg["keypoint_scores"].shape == (1, 3) and lg["image_size"].tolist() == [[64.0, 48.0]]
    d = lg["descriptors"][0].numpy()
    assert d.shape == (3, 256) and d.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, rtol=1e-6)
    hamming = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    np.testing.assert_allclose(d @ d.T, 1 - 2 * hamming / 256, atol=1e-6)  # L2 / cosine rank as Hamming does
    floats = Features(f.keypoints, f.scores, rng.standard_normal((3, 8)).astype(np.float32), (64, 48))
    np.testing.assert_array_equal(floats.to_dict(layout="lightglue")["descriptors"][0].numpy(), floats.descriptors)
    hl = f.to_dict(layout="hloc")
    assert hl["descriptors"].shape == (32, 3) and hl["descriptors"].dtype == np.uint8
    np.testing.assert_array_equal(hl["descriptors"].T, f.descriptors)
    with pytest.raises(ValueError, match="unknown layout 'kornia'"):
        f.to_dict(layout="kornia")
