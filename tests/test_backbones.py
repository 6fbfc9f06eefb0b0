"""Compression backbones (zippy.models.compression): build, train step, 64-ones descriptors, weights files,
a2q's overflow guarantee, BM against a direct formula, shift attention, pruning export, STE modes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import zippy.models.compression as C  # registers the compression backbones (until the registry imports it)
from zippy.extractor import Extractor
from zippy.models import KeypointNet, ModelConfig, available
from zippy.quant.layers import weight_fake_quant
from zippy.quant.ste import ana_noise, fake_quant, set_ste, smooth_floor, weight_quant
from zippy.weights import load_model, save_weights

COMPRESSION = ("int8", "int4", "int4w6a", "a2q", "bm", "shift", "pruned", "dsconv")
SMALL = {"widths": (8, 16, 16), "feat_dim": 32}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small_photo(photo) -> np.ndarray:
    return cv2.resize(photo, (96, 64), interpolation=cv2.INTER_AREA)


def test_compression_backbones_are_registered() -> None:
    assert set(COMPRESSION) <= set(available())


@pytest.mark.parametrize("name", sorted(set(available()) | set(COMPRESSION)))
def test_backbone_trains_describes_and_reloads(name: str, small_photo: np.ndarray, tmp_path) -> None:
    torch.manual_seed(0)
    model = KeypointNet(ModelConfig(backbone=name, **SMALL)).train()
    out = model(torch.rand(2, 3, 32, 48))
    assert out["desc"].shape == (2, 256, 8, 12)
    (out["score"].sum() + out["coords"].sum() + out["desc"].sum()).backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]

    model.eval()
    feats = Extractor(model, engine="fp32").extract(small_photo, max_keypoints=50)
    assert len(feats) > 0
    if model.binary_descriptors:
        assert feats.descriptors.dtype == np.uint8 and feats.descriptors.shape == (len(feats), 32)
        assert np.all(np.unpackbits(feats.descriptors, axis=1).sum(1) == 64)
    else:
        np.testing.assert_allclose(np.linalg.norm(feats.descriptors, axis=1), 1.0, atol=1e-5)

    path = save_weights(tmp_path / f"{name}.pt", model)
    loaded, _ = load_model(path)  # strict keys
    x = torch.rand(1, 3, 32, 40)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_unknown_option_raises() -> None:
    with pytest.raises(ValueError, match="does not take options"):
        KeypointNet(ModelConfig(backbone="int4", options=(("bits", 3),)))
    with pytest.raises(ValueError, match="weight_bits"):
        KeypointNet(ModelConfig(backbone="int8", options=(("weight_bits", 9),)))
    with pytest.raises(ValueError, match="bm_layers"):
        KeypointNet(ModelConfig(backbone="bm", options=(("bm_layers", (8,)),)))


@pytest.mark.parametrize(("name", "inner"), [("int8", (8, 8)), ("int4", (4, 4)), ("int4w6a", (4, 6))])
def test_integer_backbones_bits(name: str, inner: tuple[int, int]) -> None:
    m = KeypointNet(ModelConfig(backbone=name, **SMALL))
    bits = {n: (c.bits, c.input_quant.bits) for n, c in m.named_modules() if isinstance(c, C.QuantConv)}
    edges = {"stem.0", "score_head.1", "position_head.1", "desc_head.3"}
    assert edges <= set(bits)
    for n, b in bits.items():
        assert b == ((8, 8) if n in edges else inner), n
    assert m.stem[0].input_quant.fixed  # the image grid [0, 1]


def test_quantconv_8bit_equals_qconv_weights() -> None:
    torch.manual_seed(0)
    c = C.QuantConv(16, 8, 3, padding=1, bits=8)
    torch.testing.assert_close(c.quantized_weight(), weight_fake_quant(c.weight, 8), rtol=0, atol=0)


def test_quantconv_group_grid() -> None:
    w = torch.zeros(1, 4, 1, 1)
    w[0, :, 0, 0] = torch.tensor([0.01, 0.02, 1.0, -1.0])
    per_channel = C.QuantConv(4, 1, 1, bits=4)
    grouped = C.QuantConv(4, 1, 1, bits=4, group_size=2)
    assert grouped.group_size == 2
    with torch.no_grad():
        per_channel.weight.copy_(w)
        grouped.weight.copy_(w)
    # 4 bits: qmax 7. Per channel, scale 1/7: 0.01 and 0.02 round to 0. Per group of 2, the first group's
    # scale is 0.02/7: 0.01 -> 3.5 steps -> 4 (ties to even) -> 0.08/7.
    torch.testing.assert_close(per_channel.quantized_weight().flatten(), torch.tensor([0.0, 0.0, 1.0, -1.0]))
    torch.testing.assert_close(grouped.quantized_weight().flatten(), torch.tensor([0.08 / 7, 0.02, 1.0, -1.0]))


# ------------------------------------------------------------------------------------------------ STE / ANA


def test_smooth_floor_values_and_gradient() -> None:
    t = torch.tensor([0.2, 0.5, 0.9, 1.1], requires_grad=True)
    y = smooth_floor(t, 0.25)
    # t + u with u ~ U(-0.25, 0.25): 0.2 falls below 0 with probability 0.05 / 0.5 -> -0.1; 0.5 never crosses
    # an integer -> 0; 0.9 crosses 1 with probability 0.15 / 0.5 -> 0.3; 1.1 falls below 1 w.p. 0.15 / 0.5 -> 0.7
    torch.testing.assert_close(y.detach(), torch.tensor([-0.1, 0.0, 0.3, 0.7]))
    y.sum().backward()
    torch.testing.assert_close(t.grad, torch.tensor([2.0, 0.0, 2.0, 2.0]))  # 1 / (2 * 0.25) near a step
    with pytest.raises(ValueError, match="noise"):
        smooth_floor(t, 0.7)


def test_ana_round_toward_zero_expectation() -> None:
    t = torch.tensor([0.1, -0.1, 0.9, -1.1, 2.5])
    # E[trunc(|t| + u)], u ~ U(-0.25, 0.25): 0.1 never reaches 1 and never gives -1 -> 0; 0.9 -> 0.3; 1.1 -> 0.7
    got = fake_quant(t, 1.0, 0.0, -8, 8, mode="ana", noise=0.25, rounding="zero")
    torch.testing.assert_close(got, torch.tensor([0.0, 0.0, 0.3, -0.7, 2.0]))
    # noise 1/2: max(|t| - 1/2, 0) with the sign of t
    got = fake_quant(t, 1.0, 0.0, -8, 8, mode="ana", noise=0.5, rounding="zero")
    torch.testing.assert_close(got, torch.tensor([0.0, 0.0, 0.4, -0.6, 2.0]))


def test_ana_limits() -> None:
    x = torch.linspace(-1, 1, 101)
    # noise 1/2: the expectation of rounding is the identity (inside the clamp range)
    torch.testing.assert_close(fake_quant(x, 0.1, 0.0, -10, 10, mode="ana", noise=0.5), x, atol=1e-6, rtol=0)
    hard = fake_quant(x, 0.1, 0.0, -10, 10, mode="ste")
    torch.testing.assert_close(fake_quant(x, 0.1, 0.0, -10, 10, mode="ana", noise=0.0), hard)
    torch.testing.assert_close(fake_quant(x, 0.1, 0.0, -10, 10, mode="ana", noise=0.5, training=False), hard)
    assert ana_noise(0.0) == 0.5 and ana_noise(0.45) == pytest.approx(0.25) and ana_noise(0.95) == 0.0
    w = torch.randn(4, 8, 3, 3)
    torch.testing.assert_close(weight_quant(w, 8, mode="ana", noise=0.5), w, atol=1e-5, rtol=0)


def test_ste_modes_reach_layers_and_anneal() -> None:
    model = KeypointNet(ModelConfig(backbone="int4", **SMALL)).train()
    assert set_ste(model, "ana") > 0
    C.after_step(model, 45, 100)
    mods = [m for m in model.modules() if hasattr(m, "ste_mode")]
    assert all(m.ste_mode == "ana" and m.ste_noise == pytest.approx(0.25) for m in mods)
    out = model(torch.rand(1, 3, 32, 32))
    out["desc"].sum().backward()
    with pytest.raises(ValueError, match="STE mode"):
        set_ste(model, "lsq")


# ------------------------------------------------------------------------------------------------ a2q


def _integer_conv(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x.double(), q.double(), padding=q.shape[-1] // 2)


def test_a2q_accumulator_never_overflows_at_the_bound() -> None:
    torch.manual_seed(0)
    p, n = 16, 8
    layer = C.A2QConv2d(64, 8, 3, bits=8, accumulator_bits=p, input_quant=C.QuantAct(n)).train()
    with torch.no_grad():
        layer.weight.copy_(torch.randn_like(layer.weight) ** 3)  # heavy-tailed: a few large weights
    layer(torch.rand(1, 64, 6, 6))  # first forward initializes the norms and scales
    layer.eval()
    with torch.no_grad():
        q, _ = layer.integer_weight()
    assert torch.equal(q, q.round()) and q.abs().max() <= 127
    limit = (2 ** (p - 1) - 1) / (2**n - 1)  # 128.5
    l1 = q.abs().flatten(1).sum(1)
    assert l1.max() <= limit and l1.min() > 0
    with torch.no_grad():  # the bound is active: before truncation every channel's l1 norm sits at the limit
        t, _ = layer._normalized()
    torch.testing.assert_close(t.abs().flatten(1).sum(1), torch.full((8,), limit), rtol=1e-5, atol=0)
    acc_max = 2 ** (p - 1) - 1
    # adversarial inputs: 255 where a channel's weight is positive (largest positive sum), or negative
    for o in range(q.shape[0]):
        for sign in (1, -1):
            x = torch.zeros(1, 64, 3, 3)
            x[0] = (sign * q[o] > 0).float() * (2**n - 1)
            acc = _integer_conv(x, q)[0, o, 1, 1]
            assert abs(acc) == (sign * q[o]).clamp_min(0).sum() * (2**n - 1)
            assert -acc_max - 1 <= acc <= acc_max
    # random inputs on the grid, uniform and at the extremes
    gen = torch.Generator().manual_seed(1)
    for x in (
        torch.randint(0, 2**n, (8, 64, 5, 5), generator=gen).float(),
        torch.randint(0, 2, (8, 64, 5, 5), generator=gen).float() * (2**n - 1),
    ):
        acc = _integer_conv(x, q)
        assert acc.abs().max() <= acc_max
    report = C.accumulator_report(torch.nn.Sequential(layer))
    assert report[0]["fits"] and report[0]["worst_case"] == int(l1.max()) * 255 <= acc_max
    # the same weights on a plain 8-bit grid would need far more than 16 bits
    plain = C.QuantConv(64, 8, 3, padding=1, bits=8, input_quant=C.QuantAct(8))
    with torch.no_grad():
        plain.weight.copy_(layer.weight)
    assert C.accumulator_report(torch.nn.Sequential(plain))[0]["bits_needed"] > p


def test_a2q_network_report_and_sparsity() -> None:
    model = KeypointNet(ModelConfig(backbone="a2q", options=(("accumulator_bits", 20),), **SMALL)).train()
    model(torch.rand(1, 3, 32, 32))
    rows = C.accumulator_report(model)
    assert rows and all(r["fits"] and r["accumulator_bits"] == 20 for r in rows)
    s = C.weight_sparsity(model)
    assert 0.0 <= s["sparsity"] <= 1.0 and s["total"] == sum(
        m.weight.numel() for m in model.modules() if isinstance(m, C.A2QConv2d)
    )


def test_weight_sparsity_hand_computed() -> None:
    c = C.QuantConv(4, 1, 1, bits=8, input_quant=C.QuantAct(8))
    with torch.no_grad():
        c.weight.copy_(torch.tensor([1.0, 0.001, -1.0, 0.0]).view(1, 4, 1, 1))
    # scale 1/127: 0.001 -> 0.127 steps -> 0
    s = C.weight_sparsity(torch.nn.Sequential(c))
    assert s["zeros"] == 2 and s["total"] == 4 and s["sparsity"] == 0.5


# ------------------------------------------------------------------------------------------------ bm


def _bm_reference(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The four sign-sorted maxima of the products, written out directly."""
    b, _, h, wd = x.shape
    o, _, k, _ = w.shape
    cols = F.unfold(x, k, padding=k // 2)  # [B, C k k, L]
    prod = cols[:, None] * w.reshape(o, -1)[None, :, :, None]  # [B, O, C k k, L]
    xs = torch.sign(cols)[:, None].expand_as(prod)
    ws = torch.sign(w.reshape(o, -1))[None, :, :, None].expand_as(prod)
    out = torch.zeros(b, o, h * wd, dtype=x.dtype)
    for sx in (1, -1):
        for sw in (1, -1):
            sel = (xs == sx) & (ws == sw)
            out = out + sx * sw * torch.where(sel, prod.abs(), torch.zeros_like(prod)).amax(2)
    return out.view(b, o, h, wd)


def test_bm_matches_direct_formula_and_gradients() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 5, 7, 9, requires_grad=True)
    w = torch.randn(4, 5, 3, 3, requires_grad=True)
    y = C.bm_maxplus(x, w, 1)
    ref = _bm_reference(x, w)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    gx, gw = torch.autograd.grad((y * g).sum(), (x, w))
    rx, rw = torch.autograd.grad((ref * g).sum(), (x, w))
    torch.testing.assert_close(gx, rx, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gw, rw, rtol=1e-4, atol=1e-4)


def test_bm_is_exact_for_one_term_per_sign() -> None:
    # each output reads one input channel: the max of one product is the product, BM equals the conv
    x = torch.randn(1, 3, 4, 5)
    w = torch.zeros(3, 3, 1, 1)
    w[0, 1], w[1, 2], w[2, 0] = 0.5, -2.0, 3.0
    torch.testing.assert_close(C.bm_maxplus(x, w, 0), F.conv2d(x, w), rtol=1e-5, atol=1e-6)


def test_bm_conversion_approximates_the_conv(photo: np.ndarray) -> None:
    torch.manual_seed(0)
    img = torch.from_numpy(cv2.resize(photo, (96, 64))).permute(2, 0, 1)[None].float() / 255
    x = torch.cat([img, img.flip(-1)])
    layer = C.BMConv2d(8, 6, 3)
    with torch.no_grad():  # dominated sums (one strong tap per output): BM's regime
        w = 0.02 * torch.randn(6, 8, 3, 3)
        w[torch.arange(6), torch.arange(6), 1, 1] = torch.tensor([1.0, -1.5, 2.0, 1.2, -0.8, 1.0])
        layer.weight.copy_(w)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), layer).eval()
    net.cfg = ModelConfig()  # convert_to_bm only walks modules
    layer.bm_enabled.fill_(False)
    with torch.no_grad():
        target = net(x)
    scores = C.convert_to_bm(net, [x])
    assert bool(layer.bm_enabled) and scores["2"] > 0.9
    with torch.no_grad():
        approx = net(x)
    rel = (approx - target).norm() / (target - target.mean((0, 2, 3), keepdim=True)).norm()
    assert rel < 0.35


def test_bm_from_float_keeps_outputs_until_converted() -> None:
    torch.manual_seed(0)
    f = KeypointNet(ModelConfig(backbone="kp2d", **SMALL)).eval()
    bm = C.bm_from_float(f, bm_layers=(0, 7)).eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(bm(x)["desc"], f(x)["desc"])
    names = [n for n, m in bm.named_modules() if isinstance(m, C.BMConv2d)]
    assert names == ["stages.0.2.branch.0", "block8.1.branch.0"]


# ------------------------------------------------------------------------------------------------ shift


def test_shift_eval_is_a_pure_shift_and_training_ends_hard() -> None:
    torch.manual_seed(0)
    s = C.ShiftConv(12, 5, 3)
    with torch.no_grad():
        s.logits.normal_()
    x = torch.randn(2, 12, 6, 7)
    s.eval()
    onehot = F.one_hot(s.offsets(), 9).float().view(12, 1, 3, 3)
    expected = s.pw(F.conv2d(x, onehot, padding=1, groups=12))
    torch.testing.assert_close(s(x), expected)
    # channel 0's offset moves the image by (dy - 1, dx - 1): check one value by hand
    dy, dx = divmod(int(s.offsets()[0]), 3)
    shifted = s._hard_shift(x)
    assert shifted[0, 0, 2, 3] == x[0, 0, 2 + dy - 1, 3 + dx - 1]
    s.train()
    s.anneal(1.0)
    assert s.hard and s.temperature == pytest.approx(0.05)
    torch.testing.assert_close(s(x), expected)


# ------------------------------------------------------------------------------------------------ pruned


def _warm(model: KeypointNet) -> KeypointNet:
    model.train()
    with torch.no_grad():
        model(torch.rand(2, 3, 32, 32))
    return model.eval()


def test_pruned_export_is_smaller_identical_and_reloads(tmp_path) -> None:
    torch.manual_seed(0)
    model = _warm(KeypointNet(ModelConfig(backbone="pruned", **SMALL)))
    dropped = C.soft_prune(model, 0.5)
    assert dropped["stage0"] == 4 and dropped["desc0"] == 8 and dropped["feat"] == 16  # half of 8, 16, 32
    small = C.export_pruned(model).eval()
    widths = dict(dict(small.cfg.options)["pruned_widths"])
    assert widths == {"stem": 4, "stage0": 4, "stage1": 8, "stage2": 8, "feat": 16, "score": 16, "position": 16,
                      "desc0": 8, "desc1": 16}  # fmt: skip
    assert sum(p.numel() for p in small.parameters()) < 0.4 * sum(p.numel() for p in model.parameters())
    x = torch.rand(1, 3, 40, 56)
    with torch.no_grad():
        a, b = model(x), small(x)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-5)
    loaded, _ = load_model(save_weights(tmp_path / "p.pt", small))
    assert dict(loaded.cfg.options)["pruned_widths"] == dict(small.cfg.options)["pruned_widths"]


def test_pruning_hooks() -> None:
    torch.manual_seed(0)
    sfp = _warm(KeypointNet(ModelConfig(backbone="pruned", options=(("prune_every", 10),), **SMALL)))
    C.after_step(sfp, 5, 100)
    assert all(int((n == 0).sum()) == 0 for n in C.group_norms(sfp).values())
    C.after_step(sfp, 10, 100)
    norms = C.group_norms(sfp)
    assert int((norms["stage1"] == 0).sum()) == 4  # floor(0.3 * 16)
    assert float(C.regularization(sfp)) == 0.0
    lasso = KeypointNet(ModelConfig(backbone="pruned", options=(("prune_method", "group_lasso"),), **SMALL))
    reg = C.regularization(lasso)
    expected = 1e-4 * sum(float(n.detach().sum()) for n in C.group_norms(lasso).values())
    assert float(reg.detach()) == pytest.approx(expected, rel=1e-5)
    reg.backward()
    assert lasso.stem[0].weight.grad is not None
    assert float(C.regularization(KeypointNet(ModelConfig(backbone="int8", **SMALL)))) == 0.0


# ------------------------------------------------------------------------------------------------ comparison


def test_compare_backbones_writes_table_without_made_up_accuracy(tmp_path) -> None:
    import json

    from compare_backbones import CompareConfig, run

    from zippy.weights import shipped_weights

    conf = CompareConfig(backbones=("kp2d", "zippypoint", "int8"), latency=False)
    summary = run(conf, tmp_path / "out", tmp_path / "doc.md")
    rows = {r["backbone"]: r for r in json.loads(summary.read_text())["rows"]}
    kp2d, zp = rows["kp2d"], rows["zippypoint"]
    assert kp2d["packed_bytes"] == 4 * kp2d["params"]  # every tensor float32
    assert kp2d["gbops"] == pytest.approx(kp2d["gmacs"] * 32 * 32)
    assert zp["gmacs"] == pytest.approx(kp2d["gmacs"])  # same topology
    assert zp["packed_bytes"] < kp2d["packed_bytes"] / 4 and zp["gbops"] < kp2d["gbops"] / 10
    for name in ("kp2d", "zippypoint"):  # shipped weights are found; no dataset: no accuracy
        shipped = shipped_weights(name)
        assert rows[name]["weights"] == (None if shipped is None else str(shipped))
        assert rows[name]["accuracy"] is None
    assert rows["int8"]["weights"] is None and rows["int8"]["accuracy"] is None  # never shipped
    doc = (tmp_path / "doc.md").read_text()
    assert doc.count("not trained yet") >= 2 and (tmp_path / "out" / "size_vs_accuracy.png").is_file()
