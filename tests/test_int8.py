"""Int8 engine (zippy.quant.int8), compact weights (zippy.quant.packing) and the post-processing they feed.

The central check: the int8 network gives the same keypoints and descriptors as the fake-quantized
fp32 network (identical descriptors for >= 99% of keypoints) on real photos.
"""

from __future__ import annotations

import copy
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zippy.cpu import cpu_info
from zippy.extractor import Extractor
from zippy.features import compare_features
from zippy.models import KeypointNet, ModelConfig
from zippy.postprocess import packed_topk, select_keypoints
from zippy.quant import int8, set_fake_quant
from zippy.quant.layers import ActQuant, BinaryConv2d, QConv2d
from zippy.quant.packing import is_packed, pack_state_dict, state_dict_nbytes, unpack_state_dict
from zippy.weights import atomic_torch_save, build_model, load_weights, save_weights

X86 = platform.machine().lower() in ("x86_64", "amd64", "x86", "i686")
# on x86 nothing skips: a machine without an exact int8 path fails here, with the kernel check's reason
pytestmark = pytest.mark.skipif(
    not X86 and int8.kernel_check().path is None, reason=f"no int8 kernels: {int8.kernel_check().reason}"
)


@pytest.fixture(scope="module")
def net(calibrated_zippypoint):
    return int8.convert(calibrated_zippypoint)  # the path the kernel check chose on this machine


# --------------------------------------------------------------------------------------------- kernels


def test_kernel_check_finds_an_exact_path_here():
    check = int8.kernel_check()
    assert check.path in int8.PATHS, check.reason
    assert check.reason == int8.PATHS[check.path]
    assert int8.kernel_check() is check  # once per process
    # the chosen form reproduces the crafted convs (inputs 255 against weights +-127) exactly
    assert int8._probe_exact(split=check.path == "split")
    assert check.direct_exact is (check.path == "direct")


def test_split_inputs_exact_where_direct_saturates():
    """inputs 255 x weights 127: the direct form is exact here only if the kernel check said so; the split
    form always is (every int16 pair sum <= 2 * 128 * 127)."""
    w = torch.full((2, 64, 1, 1), 127, dtype=torch.int8)
    w[1] = -127
    x = torch.full((1, 64, 2, 3), 255, dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    ones = torch.ones(2, dtype=torch.float64)
    for zp in (0, 7, 128):
        want = torch.tensor([64 * 127 * (255 - zp), -64 * 127 * (255 - zp)], dtype=torch.float32)
        for split in (False, True):
            conv = int8.Int8Conv(w, ones, None, padding=0, grid_in=int8.Grid(1.0, zp), grid_out=None, split=split)
            y = conv(x)[0, :, 0, 0]
            exact = torch.equal(y, want)
            if split or int8.kernel_check().path == "direct":
                assert exact, (zp, split, y.tolist(), want.tolist())
    halves = int8.split_halves(x, 1)
    assert halves.shape == (1, 128, 2, 3) and int(halves.max()) == 128
    assert torch.equal(halves[:, :64].int() + halves[:, 64:].int(), x.int() + 1)


@pytest.mark.skipif(
    not X86 or cpu_info()["flags"]["avx2"] is False, reason="ONEDNN_MAX_CPU_ISA=AVX2 needs an x86 CPU with AVX2"
)
def test_kernel_check_sees_an_avx2_limit():
    """With oneDNN held to AVX2 (no VNNI: vpmaddubsw), the direct form saturates and the split form runs."""
    code = "from zippy.quant import int8; c = int8.kernel_check(); print(c.path, c.direct_exact, c.onednn_max_cpu_isa)"
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["split", "False", "AVX2"]


def _accumulator_twin(conv: int8.Int8Conv) -> int8.Int8Conv:
    """The same integer weights, zero point, padding and split form, with scale 1, no bias, float output."""
    ones = torch.ones(conv.out_channels, dtype=torch.float64)
    g = int8.Grid(1.0, conv.grid_in.zero_point)
    return int8.Int8Conv(
        conv.weight_int8, ones, None, padding=conv.padding[0], grid_in=g, grid_out=None,
        input_max=conv.input_max, split=conv.split,
    )  # fmt: skip


def test_every_layer_gives_exact_integers_on_extreme_inputs(net):
    """Each conv of the converted network (on this machine's path), fed inputs of 255 or random values up to its
    input_max: the accumulators equal the float64 integer conv."""
    torch.manual_seed(0)
    convs = {id(m): m for m in net.modules() if isinstance(m, int8.Int8Conv)}.values()
    assert len(convs) > 10
    for conv in convs:
        twin = _accumulator_twin(conv)
        zp, hi = conv.grid_in.zero_point, conv.input_max
        for x in (torch.full((1, conv.in_channels, 4, 5), hi), torch.randint(0, hi + 1, (1, conv.in_channels, 4, 5))):
            x = x.to(torch.uint8).contiguous(memory_format=torch.channels_last)
            p = conv.padding[0]
            want = F.conv2d(F.pad(x.double() - zp, [p] * 4), conv.weight_int8.double())
            assert torch.equal(twin(x).double(), want), conv


# --------------------------------------------------------------------------------------------- layers


def test_space_to_depth_is_pixel_unshuffle_with_permuted_channels():
    x = torch.randint(0, 256, (2, 3, 4, 6), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    order = int8._s2d_weight_order(3)
    assert order.tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]  # (dy, dx, c) <- (c, dy, dx)
    y = int8.space_to_depth(x)
    assert y.shape == (2, 12, 2, 3) and y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, F.pixel_unshuffle(x.contiguous(), 2)[:, order])
    assert torch.equal(int8.depth_to_space(y), x)


def test_binary_conv_hand_computed_with_plus_one_padding():
    conv = BinaryConv2d(1, 1, 3)
    with torch.no_grad():
        conv.weight.fill_(0.3)  # sign +1 everywhere
    x = torch.ones(1, 1, 3, 3)
    x[0, 0, 0, 0] = -1.0
    # every window sums 9 values of +-1 (padding +1): 9 where it misses the -1 at (0, 0), else 8 - 1 = 7
    expected = torch.tensor([[7.0, 7.0, 9.0], [7.0, 7.0, 9.0], [9.0, 9.0, 9.0]])
    neg = (x < 0).to(torch.uint8).contiguous(memory_format=torch.channels_last)
    y = int8.binary_conv(conv, "t", clamp_uint8=False)(neg)
    assert torch.equal(y[0, 0], expected)
    assert torch.equal(y, conv(x))
    y8 = int8.binary_conv(conv, "t", clamp_uint8=True)(neg)
    assert y8.dtype == torch.uint8 and torch.equal(y8[0, 0].float(), expected)


def test_binary_conv_exact_on_random_signs():
    torch.manual_seed(1)
    conv = BinaryConv2d(16, 24, 3)
    x = torch.randn(2, 16, 9, 11)
    neg = (x < 0).to(torch.uint8).contiguous(memory_format=torch.channels_last)
    y = int8.binary_conv(conv, "t", clamp_uint8=False)(neg)
    assert torch.equal(y, conv(x))
    assert torch.equal(int8.binary_conv(conv, "t", clamp_uint8=True)(neg).float(), conv(x).clamp(0, 255))


def test_qconv_bn_folding_matches_float64_reference():
    torch.manual_seed(2)
    conv = QConv2d(8, 16, 3, padding=1, bias=False, input_quant=ActQuant(8, (-1.0, 2.0)))
    bn = torch.nn.BatchNorm2d(16).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.randn(16))  # negative gammas flip the integer weights
        bn.bias.copy_(torch.randn(16))
        bn.running_mean.copy_(torch.randn(16))
        bn.running_var.copy_(torch.rand(16) + 0.1)
    x = torch.rand(1, 8, 7, 9) * 3 - 1
    ref = bn.double()(F.conv2d(conv.input_quant(x).double(), conv.quantized_weight().double(), padding=1))
    q = int8.qconv_bn(conv, bn.float(), None, "none", "t")
    g = q.grid_in
    xq = (torch.round(x / g.scale) + g.zero_point).clamp(0, 255).to(torch.uint8)
    y = q(xq.contiguous(memory_format=torch.channels_last))
    assert q.pad_zero_point  # zero point 85 with padding: padded in, folded into the bias
    assert (y.double() - ref).abs().max() < 1e-4


def test_unsupported_reasons():
    assert "KeypointNet" in int8.unsupported_reason(torch.nn.Conv2d(3, 3, 1))
    assert "QConv2d" in int8.unsupported_reason(KeypointNet(ModelConfig(backbone="kp2d")))
    assert "never trained" in int8.unsupported_reason(KeypointNet(ModelConfig(backbone="zippypoint")))
    with pytest.raises(ValueError, match="cannot convert"):
        int8.convert(KeypointNet(ModelConfig(backbone="kp2d")))
    with pytest.raises(ValueError, match="int8"):
        Extractor(KeypointNet(ModelConfig(backbone="kp2d")), engine="int8")
    assert Extractor(KeypointNet(ModelConfig(backbone="kp2d")), engine="auto").engine == "fp32"


def test_auto_without_an_exact_int8_path_takes_the_checked_onnx_graph(calibrated_zippypoint, monkeypatch):
    """Where the oneDNN kernels fail the check (or are missing: ARM), auto runs the ONNX int8 graph, checked
    against the model at load, and says why; int8 asked for explicitly fails loudly."""
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(int8, "kernel_check", lambda: int8.KernelCheck(None, "crafted conv gave wrong integers"))
    ex = Extractor(calibrated_zippypoint, engine="auto")
    assert (ex.engine, ex.engine_path) == ("onnx", "onnx-int8")
    assert "crafted conv gave wrong integers" in ex.engine_reason and "checked against the model" in ex.engine_reason
    with pytest.raises(ValueError, match="crafted conv gave wrong integers"):
        Extractor(calibrated_zippypoint, engine="int8")


def test_info_shows_the_cpu_and_the_engine_path(capsys):
    from zippy_apps.cli import main

    assert main(["info", "zippypoint"]) == 0
    out = capsys.readouterr().out
    assert "cpu: " in out and f"engine (auto): int8-{int8.kernel_check().path}: {int8.kernel_check().reason}" in out


def test_calibrated_network_is_supported(calibrated_zippypoint):
    assert int8.unsupported_reason(calibrated_zippypoint) is None


def test_bad_input(net):
    with pytest.raises(ValueError, match="multiple of 8"):
        net(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"float \[B, 3, H, W\]"):
        net(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"float \[B, 3, H, W\]"):
        net(torch.zeros(1, 2, 32, 32))


# --------------------------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize("act", ["none", "relu", "hardswish"])
def test_tail_kernel_rounds_as_the_fake_quantizer_at_exact_ties(act):
    from zippy.quant.exact import quantize_tail, tail_reference

    quant = ActQuant(8, (-2.3, 4.9)).eval()
    s, zp = quant.qparams()
    acc = torch.arange(-700, 700, dtype=torch.float32).view(1, 1, 1, -1).repeat(1, 6, 1, 1)
    # m = s / 2 puts every odd accumulator on a half step of the grid; tiny offsets move it just off
    m = torch.tensor([0.5, 0.5, 0.5000001, 0.4999999, 0.5, 0.37], dtype=torch.float64) * s
    b = torch.tensor([0.0, 1e-12, 0.0, 0.0, s / 4, 1.0], dtype=torch.float64)
    want = torch.round(quant(tail_reference(acc, m, b, act)).double() / s).long() + zp
    out, neg = quantize_tail(acc.permute(0, 2, 3, 1).reshape(-1, 6).numpy(), m.numpy(), b.numpy(), act, quant, zp)
    want = want.permute(0, 2, 3, 1).reshape(-1, 6).numpy()
    assert np.array_equal(out, want) and np.array_equal(neg, (want < zp).astype(np.uint8))


def test_integer_chain_eval_matches_the_float_chain_and_the_engine(calibrated_zippypoint, net):
    model = calibrated_zippypoint
    torch.manual_seed(5)
    x = torch.rand(2, 3, 48, 64)
    pool_quant = model.stages[0][1][0][0].input_quant
    s, zp = pool_quant.qparams()
    with torch.no_grad():
        exact = pool_quant(model.stem(x))
        float_chain = pool_quant(torch.nn.Sequential.forward(model.stem, x))  # conv, BN, hardswish one by one
        engine = net.stem(net.quantize_image(x))  # written in space-to-depth layout
    steps = (exact - float_chain).abs() / s
    assert steps.max() <= 1.0 + 1e-4 and (steps > 0.5).float().mean() < 1e-3  # the same up to rounding
    want = (torch.round(exact / s) + zp).to(torch.uint8).contiguous(memory_format=torch.channels_last)
    assert torch.equal(int8.space_to_depth(want), engine)  # the engine: bit for bit


def test_stem_quantizes_float_images_as_quantize_image(net):
    """The stem's fused quantize-and-gather pass = quantize_image then the stem, exact ties and clipping included."""
    torch.manual_seed(5)
    x = torch.rand(2, 3, 16, 24)
    x[:, 0, :2] = (torch.arange(24) % 256 + 0.5) / 255  # halfway between two levels: round half to even
    x[:, 1, :1] = torch.linspace(-0.2, 1.2, 24)  # outside [0, 1]: clamped
    assert torch.equal(net.stem(x), net.stem(net.quantize_image(x)))


def test_float_conv3x3_equals_conv2d():
    torch.manual_seed(5)
    conv = torch.nn.Conv2d(16, 3, 3, padding=1)
    fc = int8.FloatConv3x3(conv)
    for shape in [(2, 16, 5, 7), (1, 16, 1, 1), (1, 16, 3, 12)]:
        x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
        out = fc(x)
        assert out.shape == (shape[0], 3, *shape[2:]) and out.dtype == torch.float32
        torch.testing.assert_close(out, conv(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("input_range", "in_channels"), [((0.0, 1.0), 3), ((-1.0, 1.5), 3), ((0.0, 1.0), 1)])
def test_stem_in_space_to_depth_layout_equals_the_dense_exact_chain(input_range, in_channels):
    """ExactStem (4x4 windows as one 1x1 conv) = space_to_depth(ExactConv), padding included (zero point != 0),
    in one band and in bands of 3 block rows."""
    torch.manual_seed(11)
    conv = QConv2d(in_channels, 8, 3, padding=1, input_quant=ActQuant(8, input_range))
    bn = torch.nn.BatchNorm2d(8)
    with torch.no_grad():
        bn.running_mean.normal_(0, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_(1.0, 0.5)  # some negative scales
        bn.bias.normal_(0, 0.3)
    out_quant = ActQuant(8, (-0.5, 3.0)).eval()
    conv.eval(), bn.eval()
    stem = int8.ExactStem(conv, bn, "hardswish", out_quant, "stem")
    dense = int8.ExactConv(conv, bn, "hardswish", out_quant, "stem")
    x = torch.randint(0, 256, (2, in_channels, 16, 24), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    want = int8.space_to_depth(dense(x)[0])
    assert torch.equal(stem(x), want)
    stem.BAND_ELEMENTS = 3 * 12 * 32  # 3 of the 8 block rows (12 blocks of 32 channels each) per band
    assert torch.equal(stem(x), want)


def test_outputs_match_fake_quant(calibrated_zippypoint, net):
    torch.manual_seed(3)
    x = torch.rand(2, 3, 64, 96)
    with torch.inference_mode():
        ref, out = calibrated_zippypoint(x), net(x)
    for k in ("score", "coords", "desc"):
        assert out[k].shape == ref[k].shape and out[k].dtype == torch.float32
    assert ((out["score"] - ref["score"]).abs() < 1e-4).float().mean() > 0.99
    assert ((out["coords"] - ref["coords"]).abs() < 1e-2).float().mean() > 0.99
    assert ((out["desc"] - ref["desc"]).abs() < 1e-3).float().mean() > 0.99


def test_narrow_network_converts_and_matches_fake_quant(make_calibrated_zippypoint):
    """Widths below 29 channels: the binary convs' outputs (|y| <= 9 C_in) never reach 255; the 64-channel
    blocks' ranges go beyond 255 (``unsaturated``), so both forms of the binary tail run."""
    model = make_calibrated_zippypoint(seed=4, unsaturated=True, widths=(16, 32, 64), feat_dim=64)
    net = int8.convert(model)
    assert {b.clamp_uint8 for b in net.modules() if isinstance(b, int8.BinaryResidual)} == {True, False}
    x = torch.rand(1, 3, 64, 96)
    with torch.inference_mode():
        ref, out = model(x), net(x)
    assert ((out["score"] - ref["score"]).abs() < 1e-4).float().mean() > 0.99
    assert ((out["desc"] - ref["desc"]).abs() < 1e-3).float().mean() > 0.99


def test_fake_quant_switch_and_model_untouched(calibrated_zippypoint, net):
    model = copy.deepcopy(calibrated_zippypoint)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    set_fake_quant(model, False)
    other = int8.convert(model)  # the trained grids count, not the switch
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    x = torch.rand(1, 3, 32, 48)
    with torch.inference_mode():
        a, b = net(x), other(x)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.shared
def test_int8_same_keypoints_and_descriptors_on_real_photos(shared_data, trained_zippypoint, one_thread):
    """The shipped network on real photos (TUM office frames at 640x480, development photos at 320x240,
    top 1000): the default engine is int8 on x86, on the path this CPU runs, and gives the fake-quantized
    model's keypoints and its descriptors; the split path (forced: every CPU can run it) gives the same bits.

    Descriptors: >= 99.8 % identical. The int8 engine gives the same bits on every path and ISA (checked here
    and measured under ONEDNN_MAX_CPU_ISA=AVX2); the reference is what moves: the fake-quantized model's
    float heads round in an order that depends on oneDNN's fp32 kernels, and with AVX2 kernels 0.15 % of
    its descriptors differ from its own AVX-512 ones (identical to int8 for 99.97 % with AVX-512, 99.82 %
    with AVX2 on these four images).
    """
    import cv2

    from zippy.image import read_image

    tum = sorted((shared_data / "localization" / "tum_freiburg_sequence").glob("*.png"))[:2]
    dev = sorted((shared_data / "train_images").glob("bsds500_test_*.jpg"))[:2]  # development split
    if not tum or not dev:
        pytest.skip(f"TUM frames or development photos missing under {shared_data}")
    images = [read_image(p) for p in tum]
    images += [cv2.resize(read_image(p), (320, 240), interpolation=cv2.INTER_AREA) for p in dev]
    ref = [Extractor(trained_zippypoint, engine="fp32").extract(im, 1000) for im in images]
    auto = Extractor(trained_zippypoint, engine="auto")
    assert auto.engine == "int8" and auto.engine_path == f"int8-{int8.kernel_check().path}", auto.engine_reason
    got = [auto.extract(im, 1000) for im in images]
    agree = compare_features(ref, got)
    kp, desc = agree["keypoints_found"], agree["descriptors_identical"]
    assert kp >= 0.999, f"only {kp:.4f} of the keypoints found within 0.05 px"
    assert desc >= 0.998, f"only {desc:.4f} of the descriptors identical"
    auto._net.set_path("split")
    for a, b in zip(got, (auto.extract(im, 1000) for im in images)):
        assert np.array_equal(a.keypoints, b.keypoints) and np.array_equal(a.descriptors, b.descriptors)


# --------------------------------------------------------------------------------------------- packing


def test_pack_roundtrip_gives_identical_outputs(calibrated_zippypoint, net, tmp_path):
    model = calibrated_zippypoint
    packed = pack_state_dict(model)
    assert is_packed(packed) and not is_packed(model.state_dict())
    restored = build_model(model.cfg, unpack_state_dict(packed)).eval()
    for m in restored.modules():
        if isinstance(m, BinaryConv2d):
            assert set(m.weight.unique().tolist()) <= {-1.0, 1.0}
    x = torch.rand(1, 3, 32, 48)
    with torch.inference_mode():
        a, b = model(x), restored(x)
        c, d = net(x), int8.convert(restored)(x)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(c[k], d[k]) for k in c)
    # through a file: load_weights reads packed files like plain ones
    path = atomic_torch_save(
        {"config": model.cfg.to_dict(), "state_dict": packed, "meta": {"packed": True}}, tmp_path / "p.pt"
    )
    cfg, state, meta = load_weights(path)
    assert meta["packed"] and cfg == model.cfg
    build_model(cfg, state)  # strict keys


def test_packed_size(calibrated_zippypoint, tmp_path):
    model = calibrated_zippypoint
    fp32 = state_dict_nbytes(model.state_dict())
    packed = state_dict_nbytes(pack_state_dict(model))
    assert packed < fp32 / 4  # 8-bit weights dominate; binary ones take 1 bit
    plain = save_weights(tmp_path / "plain.pt", model)
    compact = atomic_torch_save(
        {"config": model.cfg.to_dict(), "state_dict": pack_state_dict(model)}, tmp_path / "c.pt"
    )
    assert Path(compact).stat().st_size < 5e6 < Path(plain).stat().st_size


def test_unpack_rejects_broken_entries():
    assert unpack_state_dict({"a": torch.ones(2)})["a"].tolist() == [1.0, 1.0]
    bits = torch.tensor([0b10100000], dtype=torch.uint8)
    out = unpack_state_dict({"w.__bin": bits, "w.__shape": torch.tensor([3])})
    assert out["w"].tolist() == [1.0, -1.0, 1.0]
    with pytest.raises(ValueError, match="__shape"):
        unpack_state_dict({"w.__bin": bits})
    with pytest.raises(ValueError, match="bytes"):
        unpack_state_dict({"w.__bin": bits, "w.__shape": torch.tensor([3, 4])})
    with pytest.raises(ValueError, match="__absmax"):
        unpack_state_dict({"w.__int8": torch.zeros(2, 1, dtype=torch.int8)})
    with pytest.raises(ValueError, match="does not fit"):
        unpack_state_dict({"w.__int8": torch.zeros(2, 1, dtype=torch.int8), "w.__absmax": torch.ones(3)})
    with pytest.raises(ValueError, match="__int8"):
        unpack_state_dict({"w.__absmax": torch.ones(3)})


# --------------------------------------------------------------------------------------------- post-processing


def _nms_brute(score, coords, radius, reach=2):
    hc, wc = score.shape
    keep = np.zeros((hc, wc), bool)
    for i in range(hc):
        for j in range(wc):
            if score[i, j] <= 0:
                continue
            keep[i, j] = True
            for di in range(-reach, reach + 1):
                for dj in range(-reach, reach + 1):
                    a, b = i + di, j + dj
                    if (di, dj) == (0, 0) or not (0 <= a < hc and 0 <= b < wc):
                        continue
                    close = ((coords[:, i, j] - coords[:, a, b]) ** 2).sum() <= radius**2
                    better = score[a, b] > score[i, j] or (score[a, b] == score[i, j] and a * wc + b < i * wc + j)
                    keep[i, j] &= not (close and better)
    return keep


def _select_brute(score, coords, radius, width=1000, height=1000, max_keypoints=10_000, threshold=None):
    """The definition of select_keypoints: brute-force NMS, inside the image, threshold, stable sort."""
    keep = _nms_brute(score, coords, radius) if radius > 0 else score > 0
    keep &= (coords[0] <= width - 1) & (coords[1] <= height - 1)
    if threshold is not None:
        keep &= score >= threshold
    flat = np.flatnonzero(keep)
    flat = flat[np.argsort(-score.ravel()[flat], kind="stable")][:max_keypoints]
    return coords.reshape(2, -1)[:, flat].T, score.ravel()[flat]


def _select(s, c, radius, width=1000, height=1000, max_keypoints=10_000, threshold=None):
    kp, sc = select_keypoints(torch.tensor(s), torch.tensor(c), width, height, max_keypoints, threshold, radius)
    assert kp.dtype == sc.dtype == torch.float32
    return kp.numpy(), sc.numpy()


def test_select_keypoints_hand_case_and_brute_force():
    score = np.array([[0.9, 0.8, 0.5], [0.5, 0.5, 0.0]], np.float32)
    coords = np.array([[[7.0, 10.0, 30.0], [10.5, 12.0, 20.0]], [[3.5, 4.0, 3.0], [12.0, 13.5, 11.0]]], np.float32)
    # (0,1) is 3.04 px from the better (0,0): suppressed; (1,1) is 2.12 px from (1,0), equal score, higher
    # flat index: suppressed; (1,2) has score 0: never kept; all other pairs are > 4 px apart
    kp, sc = _select(score, coords, 4.0)
    assert sc.tolist() == pytest.approx([0.9, 0.5, 0.5])  # (0,0), then the tie (0,2) before (1,0)
    assert kp.tolist() == [[7.0, 3.5], [30.0, 3.0], [10.5, 12.0]]
    assert len(_select(score, coords, 0.0)[1]) == 5  # no NMS: every positive score
    rng = np.random.default_rng(0)
    for trial in range(4):
        hc, wc = 6 + trial, 9
        s = (np.round(rng.random((hc, wc)) * 4) / 4).astype(np.float32)  # many ties
        base = np.stack(np.meshgrid(np.arange(wc) * 8 + 3.5, np.arange(hc) * 8 + 3.5))
        c = (base + rng.uniform(-7, 7, (2, hc, wc))).astype(np.float32)
        for args in [(4.0,), (6.5, 60, 40, 7), (3.0, 1000, 1000, 10_000, 0.5), (0.0, 50, 50, 3)]:
            got, want = _select(s, c, *args), _select_brute(s, c, *args)
            assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]), (trial, args)
    empty = _select(np.zeros((3, 4), np.float32), np.zeros((2, 3, 4), np.float32), 4.0)
    assert empty[0].shape == (0, 2) and empty[1].shape == (0,)
    with pytest.raises(ValueError, match="expected score"):
        select_keypoints(torch.zeros(3, 4), torch.zeros(2, 4, 3), 10, 10, 5, None, 4.0)


def test_packed_topk_ties_lowest_index_first():
    x = torch.zeros(2, 16)
    x[0, [3, 5]] = 2.0  # 2 clear winners, then 2 of the 14 zeros: indices 0 and 1
    x[1] = torch.arange(16, dtype=torch.float32)
    out = packed_topk(x, 4)
    assert out.tolist() == [[0b11010100, 0b00000000], [0b00000000, 0b00001111]]
    rng = np.random.default_rng(1)
    d = torch.tensor(np.round(rng.normal(size=(50, 256)) * 2) / 2, dtype=torch.float32)
    for k in (1, 64, 200, 255):
        order = torch.sort(d, dim=-1, descending=True, stable=True).indices[:, :k]
        bits = torch.zeros_like(d, dtype=torch.bool).scatter_(1, order, True)
        assert torch.equal(packed_topk(d, k), torch.from_numpy(np.packbits(bits.numpy(), axis=-1))), k
    assert packed_topk(torch.zeros(0, 256), 64).shape == (0, 32)
    with pytest.raises(ValueError, match="k must be"):
        packed_topk(x, 16)


def test_sparse_descriptors_equal_the_dense_map_sampled(net):
    """describe() (the descriptor head's last convs only where samples need them) = sampling forward()'s map,
    at the image border too (corners outside the map weigh zero, as grid_sample's zero padding)."""
    from zippy.postprocess import sample_descriptors

    torch.manual_seed(4)
    h, w = 64, 96
    x = torch.rand(1, 3, h, w)
    border = torch.tensor([[0.0, 0.0], [w - 1, h - 1], [0.0, h - 1], [w - 1, 0.0], [0.4, 31.7], [95.0, 2.2]])
    kpts = torch.cat([border, torch.rand(40, 2) * torch.tensor([w - 1, h - 1]), border[:2]])  # with duplicates
    with torch.inference_mode():
        dense = sample_descriptors(net(x)["desc"][0], kpts, w, h)
        sparse = net.describe(net.detect(x), kpts, w, h)
        empty = net.describe(net.detect(x), torch.zeros(0, 2), w, h)
    assert sparse.shape == dense.shape and sparse.dtype == torch.float32
    assert torch.allclose(sparse, dense, atol=1e-4, rtol=1e-5)
    assert empty.shape == (0, dense.shape[1])


def test_integer_chain_cache_follows_in_place_changes(calibrated_zippypoint):
    """The chain's integer weights are cached in eval mode and recomputed when a weight or statistic changes."""
    model = copy.deepcopy(calibrated_zippypoint).eval()
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        a = model.stem(x)
        assert torch.equal(model.stem(x), a)  # cached: the same result
        model.stem[1].running_mean.add_(0.5)  # in place, as a load or a BN recalibration does
        b = model.stem(x)
        fresh = copy.deepcopy(model.stem)
        fresh._chain_cache = None
        assert not torch.equal(a, b) and torch.equal(b, fresh(x))


def test_integer_chain_built_under_inference_mode_runs_without_the_cache():
    """Tensors created in torch.inference_mode have no version counter: the chain then recomputes each call."""
    with torch.inference_mode():
        model = KeypointNet(ModelConfig(backbone="zippypoint")).train()
        model(torch.rand(1, 3, 32, 48))  # calibrates the EMA ranges
        model.eval()
        a = model.stem(torch.ones(1, 3, 16, 16) * 0.5)
        b = model.stem(torch.ones(1, 3, 16, 16) * 0.5)
    assert torch.equal(a, b)
