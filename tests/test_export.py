"""ONNX export (zippy.quant.onnx_engine) and `zippy export`: onnxruntime reproduces our outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zippy.extractor import Extractor
from zippy.models import KeypointNet, ModelConfig
from zippy.quant import onnx_engine
from zippy.weights import save_weights

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def images(photo):
    import cv2

    return [cv2.resize(photo, (96, 64), interpolation=cv2.INTER_AREA), cv2.resize(photo[100:400, 50:450], (128, 96))]


def _agreement(ref: Extractor, test: Extractor, images) -> tuple[float, float]:
    from zippy.features import compare_features

    f = compare_features([ref.extract(im) for im in images], [test.extract(im) for im in images])
    return f["keypoints_found"], f["descriptors_identical"]


def _onnx_extractor(model, net) -> Extractor:
    ex = Extractor(model, engine="fp32")
    ex._net = net
    return ex


def test_fp32_graph_reproduces_the_model(calibrated_zippypoint, images):
    net = onnx_engine.OnnxNet(calibrated_zippypoint, int8=False, threads=1)
    assert net.int8 is False
    x = torch.rand(1, 3, 48, 80)  # another size than the export's example input: dynamic axes
    with torch.inference_mode():
        ref = calibrated_zippypoint(x)
    out = net(x)
    for k in ref:
        assert out[k].shape == ref[k].shape
    assert ((out["score"] - ref["score"]).abs() < 1e-4).float().mean() > 0.99
    assert ((out["desc"] - ref["desc"]).abs() < 1e-3).float().mean() > 0.95  # binary layers amplify rare ties
    ref_ex = Extractor(calibrated_zippypoint, engine="fp32")
    kp, desc = _agreement(ref_ex, _onnx_extractor(calibrated_zippypoint, net), images)
    assert kp >= 0.97 and desc >= 0.95


@pytest.mark.slow
def test_int8_graph_reproduces_the_model(calibrated_zippypoint, images):
    net = onnx_engine.OnnxNet(calibrated_zippypoint, threads=1)  # auto: int8 when trained
    assert net.int8 is True
    ref_ex = Extractor(calibrated_zippypoint, engine="fp32")
    kp, desc = _agreement(ref_ex, _onnx_extractor(calibrated_zippypoint, net), images)
    assert kp >= 0.99 and desc >= 0.99, (kp, desc)


def test_int8_graph_of_a_narrow_network(make_calibrated_zippypoint, images):
    """The int8 graph in the default run, on a narrow network (quick), with both binary-table forms (uint8
    conv outputs in the 16- and 32-channel stages, exact integers beyond 255 in the 64-channel 1/8 blocks):
    the fake-quantized model's keypoints and descriptors."""
    from zippy.quant import int8

    model = make_calibrated_zippypoint(seed=4, unsaturated=True, widths=(16, 32, 64), feat_dim=64)
    tails = {b.clamp_uint8 for b in int8.convert(model, "split").modules() if isinstance(b, int8.BinaryResidual)}
    assert tails == {True, False}
    net = onnx_engine.OnnxNet(model, threads=1)
    assert net.int8 is True
    kp, desc = _agreement(Extractor(model, engine="fp32"), _onnx_extractor(model, net), images)
    assert kp >= 0.99 and desc >= 0.99, (kp, desc)


@pytest.mark.shared
def test_int8_graph_reproduces_the_trained_network_on_real_photos(shared_data, trained_zippypoint):
    """The shipped network's int8 ONNX graph in onnxruntime (the engine auto takes where no exact oneDNN path
    exists, e.g. on ARM) on real photos (a TUM office frame at 640x480, two development photos at 320x240,
    top 1000): the trained network's keypoints and >= 99 % of its descriptors."""
    import cv2

    from zippy.features import compare_features
    from zippy.image import read_image

    tum = sorted((shared_data / "localization" / "tum_freiburg_sequence").glob("*.png"))[:1]
    dev = sorted((shared_data / "train_images").glob("bsds500_test_*.jpg"))[:2]
    if not tum or not dev:
        pytest.skip(f"TUM frames or development photos missing under {shared_data}")
    ims = [read_image(p) for p in tum] + [cv2.resize(read_image(p), (320, 240), cv2.INTER_AREA) for p in dev]
    ref = Extractor(trained_zippypoint, engine="fp32")
    test = Extractor(trained_zippypoint, engine="onnx")
    assert test.engine_path == "onnx-int8"
    agree = compare_features([ref.extract(im, 1000) for im in ims], [test.extract(im, 1000) for im in ims])
    assert agree["keypoints_found"] >= 0.999 and agree["descriptors_identical"] >= 0.99, agree


def test_float_backbone_gets_the_fp32_graph():
    model = KeypointNet(ModelConfig(backbone="kp2d")).eval()
    net = onnx_engine.OnnxNet(model, threads=1)
    assert net.int8 is False
    x = torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        ref = model(x)
    assert np.allclose(net(x)["desc"].numpy(), ref["desc"].numpy(), atol=1e-4)


def test_onnx_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.onnx"):
        onnx_engine.OnnxNet(tmp_path / "missing.onnx")
    net = onnx_engine.OnnxNet(onnx_engine.onnx_bytes(KeypointNet(ModelConfig(backbone="kp2d")).eval(), int8=False))
    with pytest.raises(ValueError, match="multiple of 8"):
        net(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        net(torch.zeros(3, 32, 32))


def test_export_cli_compact(calibrated_zippypoint, tmp_path, capsys):
    import zippy
    from zippy_apps.cli import main

    src = save_weights(tmp_path / "zp.pt", calibrated_zippypoint, meta={"trained": False})
    out = tmp_path / "zp_compact.pt"
    args = ["export", "--format", "compact", "--weights", str(src), "--out", str(out), "--check-size", "64x96"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "check (compact): keypoints matched 1.0000" in printed and "OK" in printed
    assert out.stat().st_size < src.stat().st_size / 4
    assert zippy.load("zippypoint", weights=out, engine="fp32").extract(np.zeros((64, 64), np.uint8)) is not None
    missing = ["export", "--format", "onnx", "--weights", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "x")]
    assert main(missing) == 2


def test_export_cli_onnx_of_the_shipped_weights_passes_its_check(trained_zippypoint, tmp_path, capsys):
    """`zippy export --format onnx` on the shipped weights: the int8 graph by default, checked on two photos
    against the trained network."""
    from zippy.weights import shipped_weights
    from zippy_apps.cli import main

    onnx_file = tmp_path / "zp.onnx"
    args = ["export", "--format", "onnx", "--weights", str(shipped_weights("zippypoint")), "--out", str(onnx_file)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "check (onnx-int8)" in printed and "OK" in printed and onnx_file.stat().st_size > 0


def test_export_cli_removes_a_file_that_fails_its_check(calibrated_zippypoint, tmp_path, capsys, monkeypatch):
    from zippy_apps import cmd_export
    from zippy_apps.cli import main

    src = save_weights(tmp_path / "zp.pt", calibrated_zippypoint, meta={"trained": False})
    out = tmp_path / "zp_compact.pt"
    args = ["export", "--format", "compact", "--weights", str(src), "--out", str(out), "--check-size", "64x96"]
    monkeypatch.setitem(cmd_export.THRESHOLDS, "compact", (1.01, 1.0))  # unreachable: the check fails
    assert main(args) == 1
    assert "FAILED" in capsys.readouterr().out and not out.exists()
