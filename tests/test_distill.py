"""Distillation (zippy.train.distill): hand-computed loss parts, network and ALIKED teachers, the cache."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import zippy.models.compression  # noqa: F401  (registers the compression backbones)
from zippy.models import KeypointNet, ModelConfig
from zippy.train.distill import (
    AlikedTeacher,
    DistillConfig,
    Distiller,
    NetworkTeacher,
    TeacherPoints,
    _atomic_savez,
    distill_loss,
    make_teacher,
)

SMALL = {"widths": (8, 16, 16), "feat_dim": 32}


pytestmark = pytest.mark.usefixtures("one_thread")


def _outputs(score: float = 0.5) -> dict[str, torch.Tensor]:
    """Student outputs of one 32x32 view: 4x4 cells, every keypoint at its cell centre."""
    ys, xs = torch.meshgrid(torch.arange(4) * 8 + 3.5, torch.arange(4) * 8 + 3.5, indexing="ij")
    coords = torch.stack([xs, ys])[None].float()
    desc = torch.randn(1, 256, 8, 8, generator=torch.Generator().manual_seed(0))
    return {"score": torch.full((1, 1, 4, 4), score), "coords": coords, "desc": desc}


def test_loss_parts_by_hand() -> None:
    out = _outputs()
    d = torch.nn.functional.normalize(torch.randn(2, 16), dim=-1)
    # teacher keypoints: (12, 20) lies in cell (x 1, y 2) whose student keypoint is (11.5, 19.5); a weaker
    # one in the same cell is ignored for the position
    pts = TeacherPoints(torch.tensor([[12.0, 20.0], [14.0, 22.0]]), torch.tensor([0.9, 0.1]), d)
    loss, parts = distill_loss(
        out, out, [(pts, pts)], binary=False, ones=64, temperature=0.5, cfg=DistillConfig(desc_weight=0.0)
    )
    assert parts["distill_score"] == pytest.approx(math.log(2), rel=1e-6)  # 0.5 vs any target
    assert parts["distill_coord"] == pytest.approx((0.5 + 0.5) / 8, rel=1e-6)  # L1 in cells
    assert float(loss) == pytest.approx(math.log(2) + 0.5 * 0.125, rel=1e-6)


def test_softmax_keypoint_head_parts_by_hand() -> None:
    out = _outputs()
    logits = torch.zeros(1, 65, 4, 4)
    logits[0, 64] = math.log(63.0)  # p(no keypoint) = 63 / 127, each pixel 1 / 127
    out["kp_logits"] = logits
    d = torch.nn.functional.normalize(torch.randn(2, 16), dim=-1)
    # (12, 20) is pixel (4, 4) of cell (x 1, y 2): class 36; the weaker (14, 22) in the same cell loses;
    # the three other inner cells have no teacher keypoint
    pts = TeacherPoints(torch.tensor([[12.0, 20.0], [14.0, 22.0]]), torch.tensor([0.9, 0.1]), d)
    _, parts = distill_loss(out, out, [(pts, pts)], binary=False, ones=64, temperature=0.5,
                            cfg=DistillConfig(desc_weight=0.0))  # fmt: skip
    expected = (math.log(127.0) + 3 * math.log(127.0 / 63.0)) / 4
    assert parts["distill_score"] == pytest.approx(expected, rel=1e-6)
    assert parts["distill_coord"] == 0.0  # the cross-entropy places the keypoint


def test_descriptor_part_is_zero_for_a_float_copy_of_the_teacher() -> None:
    torch.manual_seed(0)
    net = KeypointNet(ModelConfig(backbone="kp2d", **SMALL)).eval()
    batch = {"image0": torch.rand(2, 3, 48, 64), "image1": torch.rand(2, 3, 48, 64)}
    with torch.no_grad():
        out0, out1 = net(batch["image0"]), net(batch["image1"])
    _, parts = Distiller(NetworkTeacher(net)).loss(out0, out1, batch, net)
    assert parts["distill_desc"] == pytest.approx(0.0, abs=1e-10)
    assert parts["distill_score"] > 0


def test_binary_student_similarity_scale() -> None:
    # identical student descriptors give similarity 1 between the two views' copies of one point
    out = _outputs()
    pts = TeacherPoints(torch.tensor([[12.0, 20.0]]), torch.tensor([1.0]), torch.ones(1, 8) / math.sqrt(8))
    _, parts = distill_loss(out, out, [(pts, pts)], binary=True, ones=64, temperature=0.01)
    assert parts["distill_desc"] == pytest.approx(0.0, abs=1e-3)


def test_network_teacher_trains_the_student_only() -> None:
    torch.manual_seed(0)
    teacher = KeypointNet(ModelConfig(backbone="kp2d", **SMALL))
    student = KeypointNet(ModelConfig(backbone="int8", **SMALL)).train()
    batch = {"image0": torch.rand(2, 3, 48, 64), "image1": torch.rand(2, 3, 48, 64)}
    distiller = Distiller(NetworkTeacher(teacher, DistillConfig(max_points=20)))
    loss, parts = distiller.loss(student(batch["image0"]), student(batch["image1"]), batch, student)
    loss.backward()
    assert set(parts) == {"distill", "distill_score", "distill_coord", "distill_desc"}
    assert all(p.grad is None for p in teacher.parameters())
    assert student.stem[0].weight.grad is not None and student.desc_head[3].weight.grad is not None
    pts = distiller.teacher.points(batch)
    assert len(pts) == 2 and pts[0][0].keypoints.shape[0] <= 20


def _fake_aliked(tmp_path, files):
    weights = tmp_path / "aliked-t16.pth"
    weights.write_bytes(b"not used: the cache is filled by hand")
    return AlikedTeacher(files, weights, tmp_path / "cache", cfg=DistillConfig(border_px=2.0))


def test_aliked_teacher_maps_cached_photo_points(tmp_path) -> None:
    photo = tmp_path / "a.png"
    photo.write_bytes(b"x")
    teacher = _fake_aliked(tmp_path, [photo])
    d = np.eye(5, 64, dtype=np.float16)
    kps = np.array([[10, 10], [30, 12], [60, 40], [5, 5], [35, 14]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5], np.float32)
    _atomic_savez(teacher.cache_path(0), keypoints=kps, scores=scores, descriptors=d)
    teacher._run = None  # the cache must be used
    M0 = torch.tensor([[1.0, 0, -8], [0, 1, -4], [0, 0, 1]])  # photo -> image0: crop at (8, 4)
    H = torch.tensor([[1.0, 0, 5], [0, 1, 0], [0, 0, 1]])  # image0 -> image1: 5 px right
    valid1 = torch.ones(1, 1, 32, 48)
    valid1[..., 30:] = 0  # image1 x >= 30 is outside the photo
    batch = {
        "index": torch.tensor([0]),
        "M0": M0[None],
        "H": H[None],
        "valid1": valid1,
        "image0": torch.zeros(1, 3, 32, 48),
    }
    ((v0, v1),) = teacher.points(batch)
    # image0: (2, 6), (22, 8), (27, 10); (52, 36) and (-3, 1) are outside
    torch.testing.assert_close(v0.keypoints, torch.tensor([[2.0, 6.0], [22.0, 8.0], [27.0, 10.0]]))
    # image1: (7, 6), (27, 8); (32, 10) falls where image1 does not show the photo
    torch.testing.assert_close(v1.keypoints, torch.tensor([[7.0, 6.0], [27.0, 8.0]]))
    torch.testing.assert_close(v0.descriptors[:2], v1.descriptors)  # same photo point, same descriptor
    with pytest.raises(ValueError, match="'index'"):
        teacher.points({"image0": torch.zeros(1, 3, 32, 48)})


def test_make_teacher_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown teacher"):
        make_teacher("nothing-like-this")
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        make_teacher(str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="photo list"):
        make_teacher("aliked")


def test_make_teacher_from_weights_file(tmp_path) -> None:
    from zippy.weights import save_weights

    torch.manual_seed(0)
    path = save_weights(tmp_path / "kp2d.pt", KeypointNet(ModelConfig(backbone="kp2d", **SMALL)))
    t = make_teacher(str(path))
    assert isinstance(t, NetworkTeacher) and t.info()["source"] == str(path)


@pytest.mark.shared
def test_real_aliked_cache(tmp_path, photo) -> None:
    import cv2

    weights = Path(__file__).resolve().parents[1].parent / "shared" / "teachers" / "aliked-t16.pth"
    if not weights.is_file():
        pytest.skip(f"ALIKED weights not found at {weights}")
    path = tmp_path / "small.png"
    cv2.imwrite(str(path), cv2.resize(photo, (128, 96))[..., ::-1])
    cfg = DistillConfig(photo_keypoints=64)
    teacher = make_teacher("aliked", files=[path], cache_dir=tmp_path / "c", aliked_weights=weights, cfg=cfg)
    assert teacher.build_cache(progress=False) == 1
    pts = teacher.photo_points(0)
    assert pts.keypoints.shape == (64, 2) and pts.descriptors.shape == (64, 64)
    torch.testing.assert_close(pts.descriptors.norm(dim=1), torch.ones(64), atol=1e-2, rtol=0)
    again = make_teacher(str(weights), files=[path], cache_dir=tmp_path / "c", cfg=cfg)
    again._run = None  # served from the cache file
    torch.testing.assert_close(again.photo_points(0).keypoints, pts.keypoints)
    assert again.build_cache(progress=False) == 0


def test_teacher_cache_is_keyed_by_the_photo_bytes(tmp_path) -> None:
    a, b = tmp_path / "one" / "p.png", tmp_path / "two" / "p.png"
    for p, data in ((a, b"same"), (b, b"same")):
        p.parent.mkdir()
        p.write_bytes(data)
    os.utime(b, (1, 1))  # another folder and another mtime: the same cache entry
    assert _fake_aliked(tmp_path, [a]).cache_path(0).name == _fake_aliked(tmp_path, [b]).cache_path(0).name
    b.write_bytes(b"edited")  # other bytes: another entry
    assert _fake_aliked(tmp_path, [a]).cache_path(0).name != _fake_aliked(tmp_path, [b]).cache_path(0).name
