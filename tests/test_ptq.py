"""Post-training group-wise quantization (zippy.quant.ptq)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

import zippy.models.compression as C  # registers the integer backbones
from zippy.extractor import Extractor
from zippy.models import KeypointNet, ModelConfig
from zippy.quant.layers import ActQuant
from zippy.quant.ptq import PTQConfig, calibration_batches, clip_weights, quantize_post_training
from zippy.weights import load_model, save_weights

SMALL = {"widths": (8, 16, 16), "feat_dim": 32}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def photo_files(photo, tmp_path_factory) -> list:
    """Eight crops of the test photo written as PNG files."""
    folder = tmp_path_factory.mktemp("calib")
    files = []
    for i in range(8):
        y, x = 40 * (i % 4), 60 * (i // 4)
        path = folder / f"p{i}.png"
        cv2.imwrite(str(path), cv2.cvtColor(photo[y : y + 300, x : x + 400], cv2.COLOR_RGB2BGR))
        files.append(path)
    return files


def _trained_like_float() -> KeypointNet:
    """A float network (random weights: nothing checked here depends on training)."""
    torch.manual_seed(0)
    return KeypointNet(ModelConfig(backbone="kp2d", **SMALL)).eval()


def test_clip_weights_cuts_an_outlier_and_keeps_a_uniform_group() -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.zeros(2, 1, 1, 512)
    w[0, 0, 0] = 0.1 * torch.randn(512, generator=gen)
    w[0, 0, 0, 7] = 1.0  # one outlier among 512 small weights: a finer grid for the rest pays off
    w[1, 0, 0] = torch.arange(512).remainder(15).float() - 7  # exactly on the 4-bit grid (-7 .. 7)
    c = clip_weights(w, bits=4, group_size=0, grid=20, min_clip=0.5)
    assert c[0].abs().max() < 1.0  # the outlier is clipped
    torch.testing.assert_close(c[1], w[1])  # nothing to gain: ratio 1 (the first candidate) is kept

    def err(x: torch.Tensor) -> float:
        s = x.abs().max() / 7
        return float(((torch.clamp(torch.round(x / s), -7, 7) * s - w[0]) ** 2).sum())

    assert err(c[0]) < 0.8 * err(w[0])


def test_ptq_config_validation() -> None:
    with pytest.raises(ValueError, match="weight_bits"):
        PTQConfig(weight_bits=9)
    with pytest.raises(ValueError, match="act_quantile"):
        PTQConfig(act_quantile=0.3)
    assert PTQConfig(weight_bits=8).backbone()[0] == "int8"
    assert PTQConfig().backbone() == ("int4", {"weight_bits": 4, "act_bits": 8, "edge_bits": 8, "group_size": 32})


def test_calibration_batches(photo_files) -> None:
    batches = list(calibration_batches(photo_files, n=5, size=(48, 64), batch_size=2))
    assert [b.shape[0] for b in batches] == [2, 2, 1]
    assert batches[0].shape[1:] == (3, 48, 64) and 0.0 <= float(batches[0].min()) and float(batches[0].max()) <= 1.0
    with pytest.raises(ValueError, match="multiples of 8"):
        next(calibration_batches(photo_files, size=(50, 64)))
    with pytest.raises(ValueError, match="at least one"):
        next(calibration_batches([]))


def test_ptq_groupwise_network(photo_files, tmp_path) -> None:
    fnet = _trained_like_float()
    cfg = PTQConfig(weight_bits=4, group_size=8)
    qnet, report = quantize_post_training(fnet, calibration_batches(photo_files, 8, (64, 96), 4), cfg)
    assert qnet.cfg.backbone == "int4" and dict(qnet.cfg.options)["group_size"] == 8
    assert all(bool(m.initialized) for m in qnet.modules() if isinstance(m, ActQuant))
    for name, m in qnet.named_modules():
        if not isinstance(m, C.QuantConv):
            continue
        # every group of 8 input channels holds integer multiples of its own scale max|w| / qmax
        w = m.quantized_weight().detach()
        o, i = w.shape[:2]
        gs = m.group_size or i
        assert m.group_size in (0, 8), name
        g = w.reshape(o, i // gs, -1)
        qmax = 2 ** (m.bits - 1) - 1
        steps = g / (g.abs().amax(-1, keepdim=True).clamp_min(1e-12) / qmax)
        torch.testing.assert_close(steps, steps.round(), atol=1e-3, rtol=0)
    assert report["weight_rel_error"]["stages.1.2.branch.0"] < 0.2
    x = torch.from_numpy(cv2.resize(cv2.imread(str(photo_files[0]))[..., ::-1], (96, 64))).permute(2, 0, 1)
    x = x[None].float() / 255
    with torch.no_grad():
        ref, out = fnet(x)["desc"], qnet(x)["desc"]
    assert torch.nn.functional.cosine_similarity(ref.flatten(), out.flatten(), dim=0) > 0.95
    feats = Extractor(qnet, engine="fp32").extract(x, max_keypoints=30)
    assert np.all(np.unpackbits(feats.descriptors, axis=1).sum(1) == 64)
    loaded, _ = load_model(save_weights(tmp_path / "ptq.pt", qnet))  # strict keys
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["desc"], out, rtol=0, atol=0)


def test_ptq_rejects_other_layouts() -> None:
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="do not fit"):
        quantize_post_training(KeypointNet(ModelConfig(backbone="dsconv", **SMALL)), [torch.rand(1, 3, 32, 32)])
