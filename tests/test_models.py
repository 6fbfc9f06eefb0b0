"""Network topology, registry, config, parameter counts, weights files."""

from __future__ import annotations

import pytest
import torch

from zippy.models import KeypointNet, ModelConfig, available, count_parameters, get_factory
from zippy.quant import set_fake_quant
from zippy.weights import build_model, load_weights, save_weights


def test_registry_lists_and_rejects() -> None:
    assert {"zippypoint", "kp2d"} <= set(available())
    with pytest.raises(ValueError, match="choose one of"):
        get_factory("nope")


@pytest.mark.parametrize("backbone", ["zippypoint", "kp2d"])
def test_output_shapes(backbone: str) -> None:
    model = KeypointNet(ModelConfig(backbone=backbone)).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 88))
    assert out["score"].shape == (2, 1, 8, 11)
    assert out["coords"].shape == (2, 2, 8, 11)
    assert out["desc"].shape == (2, 256, 16, 22)
    s = out["score"]
    assert torch.all(s[..., 0, :] == 0) and torch.all(s[..., :, -1] == 0)  # 1-cell border masked
    c = out["coords"]
    assert c[:, 0].min() >= 0 and c[:, 0].max() <= 87 and c[:, 1].min() >= 0 and c[:, 1].max() <= 63


def test_input_must_be_multiple_of_cell() -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        KeypointNet(ModelConfig()).eval()(torch.rand(1, 3, 60, 64))


def test_parameter_counts_by_precision() -> None:
    counts = count_parameters(KeypointNet(ModelConfig(backbone="zippypoint")))
    assert 1.2e6 < counts["binary"] < 1.4e6  # about 1.3 M binary weights
    assert 3.5e6 < counts["total"] < 5.5e6
    assert counts["float"] < 0.05e6
    assert count_parameters(KeypointNet(ModelConfig(backbone="kp2d")))["binary"] == 0


def test_backward_reaches_every_parameter() -> None:
    model = KeypointNet(ModelConfig(backbone="zippypoint")).train()
    out = model(torch.rand(2, 3, 64, 64))
    (out["score"].sum() + out["coords"].sum() + out["desc"].sum()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_fake_quant_switch_changes_outputs(calibrated_zippypoint) -> None:
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        on = calibrated_zippypoint(x)["desc"]
        set_fake_quant(calibrated_zippypoint, False)
        off = calibrated_zippypoint(x)["desc"]
        set_fake_quant(calibrated_zippypoint, True)
    assert not torch.equal(on, off)


def test_config_round_trip_and_unknown_keys() -> None:
    cfg = ModelConfig(backbone="kp2d", options=(("bits", 4),))
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({"backbone": "kp2d", "colour": "red"})


def test_weights_file_round_trip(tmp_path, calibrated_zippypoint) -> None:
    path = save_weights(tmp_path / "w.pt", calibrated_zippypoint, {"trained": False})
    cfg, sd, meta = load_weights(path)
    model = build_model(cfg, sd).eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x)["desc"], calibrated_zippypoint(x)["desc"])
    assert meta == {"trained": False}
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        load_weights(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable weights file"):
        load_weights(tmp_path / "junk.pt")
    bad = dict(sd)
    bad.pop(next(iter(bad)))
    with pytest.raises(ValueError, match="Missing key"):
        build_model(cfg, bad)


def test_fake_quant_equals_torch_reference() -> None:
    from zippy.quant.layers import fake_quant, weight_fake_quant

    x = torch.randn(4096) * 5
    ref = torch.fake_quantize_per_tensor_affine(x, 12 / 255, 128, 0, 255)
    assert torch.equal(fake_quant(x, 12 / 255, 128, 0, 255), ref)
    w = torch.randn(16, 8, 3, 3)
    scale = w.abs().flatten(1).amax(1) / 127
    ref_w = torch.fake_quantize_per_channel_affine(w, scale, torch.zeros(16, dtype=torch.int32), 0, -127, 127)
    assert torch.allclose(weight_fake_quant(w), ref_w, atol=1e-6)
    xr = (torch.randn(256) * 10).requires_grad_()
    fake_quant(xr, 12 / 255, 128, 0, 255).sum().backward()
    inside = (xr.detach() >= -128 * 12 / 255) & (xr.detach() <= 127 * 12 / 255)
    assert torch.equal(xr.grad, inside.float())  # straight-through inside the range, 0 outside


def test_space_to_depth_matches_pixel_unshuffle() -> None:
    from zippy.models.net import SpaceToDepth

    x = torch.randn(2, 5, 8, 12)
    assert torch.equal(SpaceToDepth()(x), torch.nn.functional.pixel_unshuffle(x, 2))


def test_info_names_the_model_and_its_backbone(capsys) -> None:
    from zippy_apps.cli import main

    assert main(["info", "zippypoint_small"]) == 0
    head = capsys.readouterr().out.splitlines()[0]
    assert head.startswith("zippypoint_small (backbone zippypoint, widths [16, 32, 64]): ")
    assert main(["info", "kp2d"]) == 0
    assert capsys.readouterr().out.startswith("kp2d: ")
    assert main(["info", "zippyfast"]) == 0
    out = capsys.readouterr().out
    assert "topology: fast, keypoints: one per 8x8 cell, scored by a softmax head" in out
    assert "descriptors: binary 256 bits, 64 ones" in out


def test_info_names_the_local_descriptor_part_and_the_keypoint_window(tmp_path, capsys) -> None:
    import dataclasses

    from zippy.models import build_network, default_config
    from zippy.weights import save_weights
    from zippy_apps.cli import main

    opts = (("kp_head", "softmax"), ("kp_margin", 4), ("local_desc", 32))
    cfg = dataclasses.replace(default_config("zippyfast"), options=opts)
    path = save_weights(tmp_path / "loc.pt", build_network(cfg), {"trained": True})
    assert main(["info", "zippyfast", "--weights", str(path), "--no-engine"]) == 0
    out = capsys.readouterr().out
    assert "descriptors: binary 256 bits, 64 ones, with a 1/4-resolution part of rank 32" in out
    assert "one per 8x8 cell, scored by a softmax head that sees 16x16 px windows" in out
