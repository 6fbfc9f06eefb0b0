"""The CPU-first "fast" topology: output contract, cost, folding for inference, sparse descriptors, training."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from zippy.models import ModelConfig, build_network, default_config
from zippy.models.fastnet import FastKeypointNet, fast_macs, fold_for_inference
from zippy.postprocess import sample_descriptors


def _trained_like(seed: int = 0) -> FastKeypointNet:
    """An untrained zippyfast network with non-trivial BatchNorm statistics (so folding is tested)."""
    torch.manual_seed(seed)
    net = build_network(default_config("zippyfast")).eval()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net


def test_default_config_and_output_contract() -> None:
    cfg = default_config("zippyfast")
    assert cfg.topology == "fast" and cfg.backbone == "zippyfast"
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert ModelConfig.from_dict({"backbone": "zippypoint"}).topology == "kp2d"  # files written before "fast"
    with pytest.raises(ValueError, match="topology"):
        ModelConfig(topology="nope")
    net = _trained_like()
    x = torch.rand(2, 3, 72, 104)  # multiples of 8 but not of 32: padded inside, cropped back
    with torch.no_grad():
        out = net(x)
    assert out["score"].shape == (2, 1, 9, 13) and out["coords"].shape == (2, 2, 9, 13)
    assert out["desc"].shape == (2, 256, 9, 13)
    s = out["score"]
    assert (s[..., 0, :] == 0).all() and (s[..., -1] == 0).all()  # masked border cells
    # the keypoint of a cell lies inside that cell (soft-argmax over its 64 pixels)
    c = out["coords"][0]
    gx = torch.arange(13).view(1, -1) * 8.0
    gy = torch.arange(9).view(-1, 1) * 8.0
    assert ((c[0] >= gx) & (c[0] <= gx + 7)).all() and ((c[1] >= gy) & (c[1] <= gy + 7)).all()
    with pytest.raises(ValueError, match="multiple of 8"):
        net(torch.rand(1, 3, 70, 104))


def test_cost_is_within_the_cpu_budget() -> None:
    macs = fast_macs(build_network(default_config("zippyfast")), 480, 640)
    total = sum(macs.values())
    assert 0.5e9 < total < 2.0e9, total  # the budget: about 2 GMAC or less at 480x640
    assert all(v > 0 for v in macs.values())


def test_grey_normalization_cancels_brightness_and_contrast() -> None:
    net = _trained_like()
    x = torch.rand(1, 3, 64, 96) * 0.5 + 0.2
    with torch.no_grad():
        a, b = net(x), net(0.5 * x + 0.1)
    # nearly: the std in the normalization has a small floor (0.02) against noise in flat images
    assert torch.allclose(a["coords"], b["coords"], atol=0.05)
    cos = torch.nn.functional.cosine_similarity(a["desc"].flatten(2), b["desc"].flatten(2), dim=1)
    assert cos.min() > 0.99


def test_folded_network_and_sparse_descriptors_match_the_trained_network() -> None:
    net = _trained_like(1)
    folded = fold_for_inference(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        ref = net(x)
        out = folded.detect(x)
        kp = torch.rand(50, 2) * torch.tensor([110.0, 78.0]) + 9.0
        dense = sample_descriptors(ref["desc"][0], kp, 128, 96)
        sparse = folded.describe(out, kp, 128, 96)
    assert torch.allclose(out["score"], ref["score"], atol=1e-5)
    assert torch.allclose(out["coords"], ref["coords"], atol=1e-3)
    assert torch.allclose(sparse, dense, atol=1e-4)


def test_extractor_runs_the_folded_network(tmp_path: Path) -> None:
    import zippy
    from zippy.weights import save_weights

    path = save_weights(tmp_path / "fast.pt", _trained_like(2), {"trained": True})
    ex = zippy.load("zippyfast", weights=path)
    assert ex.engine == "fp32" and isinstance(ex.model, FastKeypointNet)
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur((rng.random((100, 140, 3)) * 255).astype(np.uint8), (0, 0), 1.5)
    f = ex.extract(img, max_keypoints=50)
    assert f.keypoints.shape == (50, 2) and f.descriptors.shape == (50, 32)
    assert (np.unpackbits(f.descriptors, axis=1).sum(1) == 64).all()
    assert (f.keypoints[:, 0] <= 139).all() and (f.keypoints[:, 1] <= 99).all()
    with pytest.raises(ValueError, match="int8"):
        zippy.load("zippyfast", weights=path, engine="int8")


def test_trains_and_saves_a_loadable_file(tmp_path: Path) -> None:
    import skimage.data

    from zippy.train.trainer import TrainConfig, train
    from zippy.weights import load_model

    main, extra = tmp_path / "main", tmp_path / "extra"
    main.mkdir()
    extra.mkdir()
    for i, img in enumerate([skimage.data.astronaut(), skimage.data.coffee()]):
        small = cv2.cvtColor(cv2.resize(img, (128, 96), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(main / f"bsds500_train_{i}.png"), small)
        cv2.imwrite(str(extra / f"street_{i}.png"), small)
        cv2.imwrite(str(extra / f"bsds500_test_{i}.png"), small)  # never trained on, whatever the folder
    tc = TrainConfig(images=str(main), extra_images=(str(extra),), out_dir=str(tmp_path / "run"), backbone="zippyfast",
                     steps=2, batch_size=2, warmup_steps=1, workers=0, threads=1, val_every=0, crop=(64, 96),
                     log_every=1)  # fmt: skip
    path = train(tc, progress=False)
    model, _ = load_model(path)
    assert isinstance(model, FastKeypointNet) and model.cfg.topology == "fast"


def _softmax_config() -> ModelConfig:
    import dataclasses

    return dataclasses.replace(default_config("zippyfast"), options=(("kp_head", "softmax"),))


def test_softmax_keypoint_head_scores_cells_by_one_minus_no_keypoint() -> None:
    torch.manual_seed(3)
    net = build_network(_softmax_config()).eval()
    x = torch.rand(1, 3, 72, 104)
    with torch.no_grad():
        out = net(x)
        folded = fold_for_inference(net).detect(x)
    logits = out["kp_logits"]
    assert logits.shape == (1, 65, 9, 13)
    p = torch.softmax(logits, 1)
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    assert torch.allclose(out["score"][inner], 1 - p[:, 64:65][inner], atol=1e-6)
    assert (out["score"][..., 0, :] == 0).all() and (out["score"][..., -1] == 0).all()  # masked border cells
    # the keypoint: soft-argmax of the 64 pixel logits, as with the sigmoid head
    q = torch.softmax(logits[:, :64], 1)[0, :, 4, 5]
    d = torch.arange(8.0)
    expected = torch.stack([(q.view(8, 8) * d).sum() + 40, (q.view(8, 8) * d[:, None]).sum() + 32])
    assert torch.allclose(out["coords"][0, :, 4, 5], expected, atol=1e-4)
    assert torch.allclose(folded["score"], out["score"], atol=1e-5)
    with pytest.raises(ValueError, match="kp_head"):
        build_network(ModelConfig(backbone="zippyfast", topology="fast", options=(("kp_head", "x"),)))


def test_sigmoid_head_weights_initialise_a_softmax_head(tmp_path: Path) -> None:
    from zippy.train.init import init_from
    from zippy.weights import save_weights

    src = _trained_like(4)
    path = save_weights(tmp_path / "sigmoid.pt", src, {"trained": True})
    net = build_network(_softmax_config())
    assert init_from(net, path) == len(net.state_dict())
    # the sigmoid score logit (high: a keypoint) becomes the no-keypoint logit (high: none)
    w_src, w_dst = src.kp_head[-1].weight, net.kp_head[-1].weight
    assert torch.equal(w_dst[64], -w_src[64]) and torch.equal(w_dst[:64], w_src[:64])
    back = _trained_like(5)  # and back: a softmax file into a sigmoid head
    path = save_weights(tmp_path / "softmax.pt", net, {"trained": True})
    assert init_from(back, path) == len(back.state_dict())
    assert torch.equal(back.kp_head[-1].weight[64], w_src[64])


def _local_config(rank: int = 16) -> ModelConfig:
    import dataclasses

    return dataclasses.replace(default_config("zippyfast"), options=(("kp_head", "softmax"), ("local_desc", rank)))


def test_local_descriptor_starts_as_the_network_without_it_and_trains(tmp_path: Path) -> None:
    from zippy.postprocess import sample_network_descriptors
    from zippy.train.init import init_from
    from zippy.weights import save_weights

    src = build_network(_softmax_config()).eval()
    path = save_weights(tmp_path / "plain.pt", src, {"trained": True})
    net = build_network(_local_config())
    assert init_from(net, path) == len(src.state_dict())  # every tensor but the new branch's
    net.eval()
    x = torch.rand(2, 3, 72, 104)
    kp = torch.rand(40, 2) * torch.tensor([100.0, 68.0]) + 2.0
    with torch.no_grad():
        a, b = src(x), net(x)
    assert b["desc_fine"].shape == (2, 256, 18, 26) and b["desc"].shape == (2, 256, 9, 13)
    assert torch.equal(sample_network_descriptors(a, 1, kp, 104, 72), sample_network_descriptors(b, 1, kp, 104, 72))
    net.train()
    sample_network_descriptors(net(x), 0, kp, 104, 72).pow(2).sum().backward()
    assert net.local_desc[1].weight.grad.abs().sum() > 0  # the zero-started branch gets a gradient
    with pytest.raises(ValueError, match="local_desc"):
        build_network(_local_config(-1))


def test_local_descriptor_folded_and_sparse_match_the_dense_maps() -> None:
    from zippy.postprocess import sample_network_descriptors

    torch.manual_seed(6)
    net = build_network(_local_config(24)).eval()
    for m in net.local_desc.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.weight, std=0.1)
            torch.nn.init.normal_(m.bias, std=0.1)
    x = torch.rand(1, 3, 96, 128)
    kp = torch.rand(60, 2) * torch.tensor([110.0, 78.0]) + 9.0  # inside, beyond the 4 px zero-padded rim
    with torch.no_grad():
        dense = sample_network_descriptors(net(x), 0, kp, 128, 96)
        folded = fold_for_inference(net)
        sparse = folded.describe(folded.detect(x), kp, 128, 96)
        plain = net.describe(net.detect(x), kp, 128, 96)
    assert dense.abs().mean() > 0.1
    assert torch.allclose(plain, dense, atol=1e-4) and torch.allclose(sparse, dense, atol=1e-4)


def test_tap_patches_are_bilinear_samples_with_zeros_outside_up_to_the_border() -> None:
    from zippy.models.fastnet import _tap_patches

    torch.manual_seed(8)
    fmap = torch.randn(5, 24, 32)  # the 1/4 map of a 128x96 image
    kp = torch.cat([torch.rand(50, 2) * torch.tensor([127.0, 95.0]), torch.tensor([[0.0, 0.0], [127.0, 95.0]])])
    r = torch.arange(3, dtype=torch.float32) - 1
    ty, tx = torch.meshgrid(r, r, indexing="ij")
    offsets = 4.0 * torch.stack([tx.flatten(), ty.flatten()], 1)  # the taps in image px, (dy, dx) order
    ref = sample_descriptors(fmap, (kp[:, None] + offsets).reshape(-1, 2), 128, 96).view(-1, 3, 3, 5)
    assert torch.allclose(_tap_patches(fmap, kp, 128, 96), ref, atol=1e-5)


def _margin_config(margin: int = 4) -> ModelConfig:
    import dataclasses

    opts = (("kp_head", "softmax"), ("kp_margin", margin), ("local_desc", 16))
    return dataclasses.replace(default_config("zippyfast"), options=opts)


@pytest.mark.parametrize("margin", [0, 2, 4, 8])
def test_folded_cell_windows_read_the_space_to_depth_image_when_the_margin_allows(margin: int) -> None:
    torch.manual_seed(8)
    net = build_network(_margin_config(margin) if margin else _local_config()).eval()
    with torch.no_grad():
        if net.kp_window is not None:
            torch.nn.init.normal_(net.kp_window.weight, std=0.05)
        x = torch.rand(1, 3, 72, 104)
        dense = net(x)
        folded_net = fold_for_inference(net)
        folded = folded_net.detect(x)
    # margins of 0, 4, 8 px: a stride-2 conv on pixel_unshuffle(g, 4); 2 px: the stride-8 conv on g
    assert folded_net.kp_head[0].reads_g4 == (margin % 4 == 0)
    assert folded_net.kp_head[0].cells.in_channels == (1 if margin % 4 else 16)
    assert torch.allclose(folded["kp_logits"], dense["kp_logits"], atol=1e-4)


def test_keypoint_window_starts_as_the_network_without_it_and_folds_exactly(tmp_path: Path) -> None:
    from zippy.train.init import init_from
    from zippy.weights import save_weights

    torch.manual_seed(7)
    src = build_network(_local_config()).eval()
    path = save_weights(tmp_path / "plain.pt", src, {"trained": True})
    net = build_network(_margin_config())
    assert init_from(net, path) == len(src.state_dict())  # every tensor but the window's
    net.eval()
    x = torch.rand(2, 3, 72, 104)
    with torch.no_grad():
        a, b = src(x), net(x)
    for key in ("score", "coords", "kp_logits"):
        assert torch.equal(a[key], b[key]), key
    net.train()
    net(x)["kp_logits"].pow(2).mean().backward()
    assert net.kp_window.weight.grad.abs().sum() > 0  # the zero-started window gets a gradient
    # trained-like window and BatchNorm: the folded network's one window conv gives the same logits
    net.eval()
    with torch.no_grad():
        torch.nn.init.normal_(net.kp_window.weight, std=0.05)
        torch.nn.init.normal_(net.kp_window.bias, std=0.1)
        bn = net.kp_head[0][1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        dense = net(x)
        folded = fold_for_inference(net).detect(x)
    assert (dense["kp_logits"] - a["kp_logits"]).abs().max() > 0.1  # the window changed the logits
    assert torch.allclose(folded["kp_logits"], dense["kp_logits"], atol=1e-4)
    assert torch.allclose(folded["coords"], dense["coords"], atol=1e-3)
    for bad in (-1, 9, 2.5, True):
        with pytest.raises(ValueError, match="kp_margin"):
            build_network(_margin_config(bad))
