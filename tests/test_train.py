"""Trainer: data pairs, losses, a short run that lowers the loss, checkpoints, resume, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from zippy.binarize import BinNormTrain
from zippy.geometry import warp_points
from zippy.models import KeypointNet, ModelConfig
from zippy.postprocess import sample_descriptors
from zippy.train.data import AugmentConfig, HomographyPairs, list_images
from zippy.train.losses import LossConfig, pair_loss, warp_points_torch
from zippy.train.trainer import TrainConfig, train
from zippy.weights import load_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """Six small textured photos named like the training split (plus one dev photo)."""
    import skimage.data

    folder = tmp_path_factory.mktemp("imgs")
    sources = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()]
    for i, img in enumerate(sources * 2):
        small = cv2.resize(img, (128, 96), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / f"bsds500_train_{i}.png"), cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "bsds500_test_0.png"), cv2.resize(sources[0], (128, 96)))
    return folder


def test_list_images_split_and_errors(image_folder: Path, tmp_path: Path) -> None:
    files = list_images(image_folder)
    assert len(files) == 6 and not any("test" in f.name for f in files)
    with pytest.raises(NotADirectoryError):
        list_images(tmp_path / "nope")
    with pytest.raises(ValueError, match="no images matching"):
        list_images(tmp_path)


def test_pairs_are_consistent_with_their_homography(image_folder: Path) -> None:
    still = {"brightness": 0, "contrast": 0, "saturation": 0, "hue_deg": 0, "blur_prob": 0, "noise_std": 0}
    still |= {"gamma": 0, "channel_gain": 0, "shade": 0}
    aug = AugmentConfig(height=64, width=96, **still)
    ds = HomographyPairs(list_images(image_folder), aug, seed=3)
    item = ds[0]
    assert item["image0"].shape == (3, 64, 96) and item["image1"].shape == (3, 64, 96)
    again = ds[0]
    assert torch.equal(item["image1"], again["image1"])  # deterministic per (seed, epoch, index)
    # pixels of image0 land on equal pixels of image1 where valid
    H = item["H"].double().numpy()
    ys, xs = np.mgrid[8:56:4, 8:88:4]
    p0 = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)
    p1 = warp_points(p0, H)
    inside = (p1[:, 0] > 1) & (p1[:, 0] < 94) & (p1[:, 1] > 1) & (p1[:, 1] < 62)
    i1 = np.round(p1[inside]).astype(int)
    a = item["image0"][:, p0[inside, 1].astype(int), p0[inside, 0].astype(int)]
    b = item["image1"][:, i1[:, 1], i1[:, 0]]
    valid = item["valid1"][0, i1[:, 1], i1[:, 0]] > 0
    err = (a - b).abs().mean(0)[valid]
    assert float(err.median()) < 0.08


def test_warp_points_torch_matches_numpy() -> None:
    H = torch.tensor([[[1.1, 0.1, 3.0], [-0.05, 0.9, -2.0], [1e-3, 2e-4, 1.0]]])
    p = torch.rand(1, 20, 2) * 50
    np.testing.assert_allclose(
        warp_points_torch(p, H)[0].numpy(), warp_points(p[0].numpy(), H[0].double().numpy()), rtol=1e-5, atol=1e-4
    )


@pytest.mark.parametrize("backbone", ["zippypoint", "kp2d"])
def test_pair_loss_is_finite_and_zero_location_error_for_identity(backbone: str) -> None:
    model = KeypointNet(ModelConfig(backbone=backbone)).train()
    x = torch.rand(1, 3, 64, 96)
    out = model(torch.cat([x, x]))
    o0 = {k: v[:1] for k, v in out.items()}
    o1 = {k: v[1:] for k, v in out.items()}
    loss, parts = pair_loss(
        o0, o1, torch.eye(3)[None], torch.ones(1, 1, 64, 96), binary=model.binary_descriptors, ones=64,
        temperature=0.5, cfg=LossConfig(),
    )  # fmt: skip
    assert torch.isfinite(loss)
    assert parts["loc"] < 0.01  # identical images: every keypoint lands on itself (cdist rounding ~1e-3)
    assert parts["desc_precision"] > 0.5
    loss.backward()


def test_split_views_gives_the_loss_and_gradients_of_batched_outputs(image_folder: Path) -> None:
    from dataclasses import replace as dc_replace

    from zippy.models import build_network, default_config
    from zippy.train.losses import split_views

    opts = (("kp_head", "softmax"), ("local_desc", 8))
    torch.manual_seed(3)
    model = build_network(dc_replace(default_config("zippyfast"), options=opts)).train()
    torch.nn.init.normal_(model.local_desc[1].weight, std=0.1)  # the zero-started part takes part
    ds = HomographyPairs(list_images(image_folder), AugmentConfig(height=64, width=96), seed=5)
    items = [ds[i] for i in range(3)]
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
    x = torch.cat([batch["image0"], batch["image1"]])
    cfg = LossConfig(desc_symmetric=True)
    grads, losses = [], []

    def batched(o: dict) -> tuple[dict, dict]:
        return {k: v[:3] for k, v in o.items()}, {k: v[3:] for k, v in o.items()}

    for split in (batched, lambda o: split_views(o, 3)):
        model.zero_grad()
        o0, o1 = split(model(x))
        loss, _ = pair_loss(o0, o1, batch["H"], batch["valid1"], binary=True, ones=64, temperature=0.5, cfg=cfg)
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    o0, _ = split_views(model(x), 3)
    assert isinstance(o0["desc_fine"], tuple) and len(o0["desc_fine"]) == 3 and o0["score"].shape[0] == 3
    assert torch.allclose(losses[0], losses[1], rtol=1e-5)
    assert grads[0].abs().max() > 0 and torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_score_consistency_weight_scales_the_squared_score_difference_of_matched_points() -> None:
    torch.manual_seed(4)
    model = KeypointNet(ModelConfig(backbone="kp2d")).eval()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        o0 = model(x)
    o1 = dict(o0, score=o0["score"] * 0.5)  # the same keypoints (all matched), half the scores
    parts = {}
    for w in (0.0, 1.0, 3.0):
        cfg = LossConfig(score_consistency_weight=w)
        _, p = pair_loss(o0, o1, torch.eye(3)[None], torch.ones(1, 1, 64, 96), binary=True, ones=64,
                         temperature=0.5, cfg=cfg)  # fmt: skip
        parts[w] = p["score"]
    consistency = parts[1.0] - parts[0.0]
    assert consistency > 0
    assert parts[3.0] == pytest.approx(parts[0.0] + 3 * consistency, rel=1e-4, abs=1e-7)


def _run(image_folder: Path, out: Path, steps: int, resume: bool = False) -> Path:
    tc = TrainConfig(
        images=str(image_folder), out_dir=str(out), backbone="zippypoint", steps=steps, batch_size=3, lr=1e-3,
        warmup_steps=1, workers=0, threads=1, val_every=0, crop=(64, 96), ckpt_minutes=100, log_every=1,
    )  # fmt: skip
    return train(tc, resume=resume, progress=False)


def _fixed_batch_loss(model: KeypointNet, image_folder: Path) -> float:
    ds = HomographyPairs(list_images(image_folder), AugmentConfig(height=64, width=96), seed=99)
    items = [ds[i] for i in range(6)]
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
    model.train()
    with torch.no_grad():
        out = model(torch.cat([batch["image0"], batch["image1"]]))
    o0 = {k: v[:6] for k, v in out.items()}
    o1 = {k: v[6:] for k, v in out.items()}
    loss, _ = pair_loss(o0, o1, batch["H"], batch["valid1"], binary=True, ones=64, temperature=0.5, cfg=LossConfig())
    return float(loss)


def test_short_run_lowers_loss_writes_loadable_weights_and_resumes(image_folder: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    init = KeypointNet(ModelConfig(backbone="zippypoint"))
    before = _fixed_batch_loss(init, image_folder)  # the trainer starts from the same seeded init
    weights = _run(image_folder, tmp_path / "run", steps=8)
    model, meta = load_model(weights)
    assert meta["steps"] == 8 and meta["trained"]
    after = _fixed_batch_loss(model, image_folder)
    assert after < before
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 9))
    # resume continues the step count from the checkpoint
    _run(image_folder, tmp_path / "run", steps=10, resume=True)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r][-2:] == [9, 10]
    assert load_model(tmp_path / "run" / "weights.pt")[1]["steps"] == 10


def test_ddp_two_processes(image_folder: Path, tmp_path: Path) -> None:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29513",
        "-m", "zippy_apps.cli", "train", "--images", str(image_folder), "--out", str(tmp_path / "ddp"),
        "--steps", "2", "--batch-size", "1", "--workers", "0", "--threads", "1", "--val-every", "0",
        "--crop", "64x96", "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    log = [json.loads(line) for line in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    start = next(r for r in log if r.get("event") == "start")
    assert start["world"] == 2
    assert load_model(tmp_path / "ddp" / "weights.pt")[1]["steps"] == 2


def test_distillation_from_a_network_teacher_is_logged(image_folder: Path, tmp_path: Path) -> None:
    from zippy.weights import save_weights

    teacher = save_weights(tmp_path / "teacher.pt", KeypointNet(ModelConfig(backbone="kp2d")), {"trained": False})
    tc = TrainConfig(
        images=str(image_folder), out_dir=str(tmp_path / "d"), backbone="zippypoint", steps=2, batch_size=2,
        warmup_steps=1, workers=0, threads=1, val_every=0, crop=(64, 96), log_every=1, distill=str(teacher),
    )  # fmt: skip
    train(tc, progress=False)
    log = [json.loads(line) for line in (tmp_path / "d" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert len(steps) == 2 and all(np.isfinite(r["distill"]) and r["distill"] > 0 for r in steps)
    assert all(r["distill_desc"] > 0 for r in steps)
    # distill_options reach the teacher: without teacher points only the score part (all cells empty) is left
    train(replace(tc, out_dir=str(tmp_path / "none"), distill_options={"max_points": 0}), progress=False)
    log = [json.loads(line) for line in (tmp_path / "none" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert len(steps) == 2 and all(r["distill_desc"] == 0 and r["distill_coord"] == 0 for r in steps)
    with pytest.raises(ValueError, match="max_point"):
        train(replace(tc, out_dir=str(tmp_path / "bad"), distill_options={"max_point": 64}), progress=False)


def test_batchnorm_recalibration_matches_batch_statistics() -> None:
    from zippy.train.bn import recalibrate_batchnorm

    model = KeypointNet(ModelConfig(backbone="kp2d"))
    x = torch.rand(4, 3, 32, 32)
    n = recalibrate_batchnorm(model.eval(), [x[:2], x[2:]])
    assert n == 4 and not model.training
    bn = model.stem[1]
    with torch.no_grad():
        pre = model.stem[0](x)
    torch.testing.assert_close(bn.running_mean, pre.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.1  # restored


def test_float_warmup_switches_quantization_on_at_the_given_step(image_folder: Path, tmp_path: Path) -> None:
    from zippy.quant.layers import ActQuant, BinaryConv2d

    seen: list[bool] = []

    def spy(module: torch.nn.Module, args: tuple) -> None:
        if isinstance(module, BinaryConv2d):
            seen.append(module.binary_enabled)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(spy)
    try:
        tc = TrainConfig(
            images=str(image_folder), out_dir=str(tmp_path / "w"), backbone="zippypoint", steps=3, batch_size=2,
            warmup_steps=1, workers=0, threads=1, val_every=0, crop=(64, 96), log_every=1, float_warmup_steps=2,
            bn_recal_batches=0,
        )  # fmt: skip
        weights = train(tc, progress=False)
    finally:
        handle.remove()
    per_step = len(seen) // 3
    assert seen[: 3 * per_step] == [False] * (2 * per_step) + [True] * per_step  # 2 float steps, then binary
    model, _ = load_model(weights)
    assert all(m.binary_enabled for m in model.modules() if isinstance(m, BinaryConv2d))
    assert all(bool(m.initialized) for m in model.modules() if isinstance(m, ActQuant))


def test_binary_conv_float_mode_is_a_plain_conv() -> None:
    from zippy.quant.layers import BinaryConv2d, set_fake_quant

    conv = BinaryConv2d(4, 5, 3)
    x = torch.randn(2, 4, 9, 7)
    binary = conv(x)
    set_fake_quant(conv, False, binary=False)
    torch.testing.assert_close(conv(x), torch.nn.functional.conv2d(x, conv.weight, padding=1))
    set_fake_quant(conv, True, binary=True)
    torch.testing.assert_close(conv(x), binary)


def test_init_from_a_float_kp2d_network_by_structure(tmp_path: Path) -> None:
    from zippy.quant.layers import BinaryConv2d, QConv2d
    from zippy.train.init import init_from, transfer_by_structure
    from zippy.weights import save_weights

    torch.manual_seed(0)
    small = {"widths": (8, 16, 16), "feat_dim": 32}
    kp2d = KeypointNet(ModelConfig(backbone="kp2d", **small))
    for m in kp2d.modules():  # non-default BN statistics, so that copying them is visible
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
    path = save_weights(tmp_path / "kp2d.pt", kp2d, {"trained": True})
    zp = KeypointNet(ModelConfig(backbone="zippypoint", **small))
    n = init_from(zp, path)
    src_convs = [m for m in kp2d.modules() if isinstance(m, torch.nn.Conv2d)]
    dst_convs = [m for m in zp.modules() if isinstance(m, torch.nn.Conv2d)]
    assert n > len(dst_convs) and any(isinstance(m, BinaryConv2d) for m in dst_convs)
    for a, b in zip(src_convs, dst_convs):
        want = a.weight.clamp(-1, 1) if isinstance(b, BinaryConv2d) else a.weight
        torch.testing.assert_close(b.weight, want)
        assert isinstance(b, (BinaryConv2d, QConv2d)) or type(b) is torch.nn.Conv2d
    src_bn = [m for m in kp2d.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    dst_bn = [m for m in zp.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for a, b in zip(src_bn, dst_bn):
        torch.testing.assert_close(b.running_mean, a.running_mean)
    # a network of another shape is refused with the layer that differs
    with pytest.raises(ValueError, match="conv 0"):
        transfer_by_structure(KeypointNet(ModelConfig(backbone="kp2d", widths=(4, 16, 16), feat_dim=32)), zp)


def test_a_sigterm_while_the_run_writes_its_end_does_not_lose_the_weights(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop request that arrives as the run ends on its own lands in the final BN recalibration."""
    import signal

    from zippy.train import trainer

    original = trainer.recalibrate_batchnorm

    def recalibrate_and_get_stopped(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer, "recalibrate_batchnorm", recalibrate_and_get_stopped)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        weights = _run(image_folder, tmp_path / "run", steps=2)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert weights.is_file()
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert records[-1] == {"event": "stop", "step": 2}


def test_sigterm_to_the_process_group_still_writes_the_final_checkpoint(image_folder: Path, tmp_path: Path) -> None:
    """`pkill -f` / Ctrl-C reach the data workers too; the final checkpoint must still be written."""
    import signal
    import time

    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "zippy_apps.cli", "train", "--images", str(image_folder), "--out", str(out),
        "--steps", "100000", "--batch-size", "1", "--workers", "1", "--threads", "1", "--val-every", "0",
        "--crop", "64x96", "--no-progress",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stderr=subprocess.PIPE, text=True)
    log = out / "log.jsonl"
    deadline = time.time() + 240

    def trained() -> bool:  # a logged training step (the first record is the run's config)
        return log.is_file() and any(json.loads(x).get("step", 0) > 0 for x in log.read_text().splitlines())

    while time.time() < deadline and not trained():
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records[-1].get("event") == "stop", err[-2000:]
    ck = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert ck["step"] == records[-1]["step"] >= 10, [r for r in records if "config" not in r]


@pytest.mark.parametrize("kind", ["nce", "triplet"])
def test_descriptor_losses_rank_the_positive_first(kind: str) -> None:
    torch.manual_seed(0)
    model = KeypointNet(ModelConfig(backbone="zippypoint", widths=(8, 16, 16), feat_dim=32)).train()
    x = torch.rand(1, 3, 64, 96)
    out = model(x)
    H = torch.eye(3)[None]
    valid = torch.ones(1, 1, 64, 96)
    _, parts = pair_loss(out, out, H, valid, binary=True, ones=64, temperature=0.5, cfg=LossConfig(desc_loss=kind))
    assert np.isfinite(parts["desc"]) and parts["desc_precision"] > 0.5
    with pytest.raises(ValueError, match="desc_loss"):
        LossConfig(desc_loss="hardest")


def test_symmetric_descriptor_loss_reaches_source_points_out_of_the_targets_view() -> None:
    torch.manual_seed(0)
    model = KeypointNet(ModelConfig(backbone="zippypoint", widths=(8, 16, 16), feat_dim=32)).train()
    with torch.no_grad():
        out0, out1 = model(torch.rand(1, 3, 64, 96)), model(torch.rand(1, 3, 64, 96))
    H = torch.tensor([[[1.0, 0.0, -48.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])  # source x < 56 is out of view
    valid = torch.ones(1, 1, 64, 96)
    cfg = dict(loc_weight=0.0, score_weight=0.0)
    grads = {}
    for symmetric in (False, True):
        desc0 = out0["desc"].clone().requires_grad_(True)
        loss, _ = pair_loss({**out0, "desc": desc0}, out1, H, valid, binary=True, ones=64, temperature=0.5,
                            cfg=LossConfig(desc_symmetric=symmetric, **cfg))  # fmt: skip
        loss.backward()
        grads[symmetric] = desc0.grad[0].abs().sum(0)  # [16, 24] cells of 4 px
    # cells of source x < 48 hold only keypoints out of the target's view (anchors start at x = 56)
    assert float(grads[False][:, :12].sum()) == 0.0
    assert float(grads[True][:, :12].sum()) > 0.0
    assert float(grads[False][:, 14:].sum()) > 0.0


def test_score_desc_term_raises_the_score_where_the_descriptor_stands_out() -> None:
    torch.manual_seed(0)
    model = KeypointNet(ModelConfig(backbone="zippypoint", widths=(8, 16, 16), feat_dim=32)).train()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 96))
    H, valid = torch.eye(3)[None], torch.ones(1, 1, 64, 96)
    kw = dict(binary=True, ones=64, temperature=0.5)
    off = LossConfig(loc_weight=0.0, score_weight=0.0, desc_weight=0.0)
    on = LossConfig(loc_weight=0.0, score_weight=0.0, desc_weight=0.0, score_desc_weight=1.0)
    score = out["score"].clone().requires_grad_(True)
    loss, parts = pair_loss({**out, "score": score}, out, H, valid, **kw, cfg=off)
    assert float(loss.detach()) == 0.0 and parts["score_desc"] == 0.0
    loss, parts = pair_loss({**out, "score": score}, out, H, valid, **kw, cfg=on)
    loss.backward()
    # the same term by hand: anchors are the keypoints inside the border, negatives the others farther than 8 px
    pts = out["coords"][0].flatten(1).t()  # [N, 2]
    inside = ((pts >= 8) & (pts <= torch.tensor([95 - 8, 63 - 8]))).all(1)
    y = BinNormTrain(64, 0.5)(sample_descriptors(out["desc"][0], pts[inside], 96, 64))
    d = 1 - y @ y.t() / 64
    hardest = d.masked_fill(torch.cdist(pts[inside], pts[inside]) < 8, float("inf")).min(1).values
    m = d.diagonal() - hardest
    expected = torch.zeros(len(pts))
    expected[inside] = (m - m.mean()) / len(m)
    assert parts["score_desc"] == pytest.approx(
        float((out["score"].flatten()[inside] * (m - m.mean())).mean()), abs=1e-5
    )
    assert torch.allclose(score.grad.flatten(), expected, atol=1e-6)
    assert (expected > 0).any() and (expected < 0).any()


def test_bm_converts_from_init_and_pruned_ships_smaller(image_folder: Path, tmp_path: Path) -> None:
    from zippy.models.compression import BMConv2d
    from zippy.weights import save_weights

    torch.manual_seed(0)
    kp2d = save_weights(tmp_path / "kp2d.pt", KeypointNet(ModelConfig(backbone="kp2d")), {"trained": True})
    common = dict(images=str(image_folder), steps=2, batch_size=2, warmup_steps=1, workers=0, threads=1,
                  val_every=0, crop=(64, 96), ckpt_minutes=100, log_every=1, init=str(kp2d))  # fmt: skip
    # bm: the trained convs are converted to BM (a fitted R^2 per layer is logged) before fine-tuning
    train(TrainConfig(out_dir=str(tmp_path / "bm"), backbone="bm", **common), progress=False)
    log = [json.loads(line) for line in (tmp_path / "bm" / "log.jsonl").read_text().splitlines()]
    (conv,) = [r for r in log if r.get("event") == "bm_conversion"]
    assert len(conv["r2"]) == 4 and all(np.isfinite(v) for v in conv["r2"].values())
    model, _ = load_model(tmp_path / "bm" / "weights.pt")
    assert all(bool(m.bm_enabled) for m in model.modules() if isinstance(m, BMConv2d))
    # pruned: soft filter pruning at the last step, weights.pt is the physically smaller network
    opts = {"prune_rate": 0.5}
    train(TrainConfig(out_dir=str(tmp_path / "pr"), backbone="pruned", model_options=opts, **common), progress=False)
    model, _ = load_model(tmp_path / "pr" / "weights.pt")
    full = torch.load(tmp_path / "pr" / "last.pt", weights_only=True)["model"]
    assert sum(p.numel() for p in model.state_dict().values()) < sum(t.numel() for t in full.values())


def test_photo_short_side_sets_the_training_scale(image_folder: Path) -> None:
    files = list_images(image_folder)
    # photos are 96x128; M0 (photo pixels -> crop pixels) scales by the resize factor; a short side of 64
    # would make the photo narrower than the 96 px crop, so the crop's fit wins there (128 * 0.75 = 96)
    for short, scale in ((150, 150 / 96), (64, 0.75)):
        ds = HomographyPairs(files, AugmentConfig(height=64, width=96, photo_short_side=(short, short)), seed=1)
        assert ds[0]["M0"][0, 0].item() == pytest.approx(scale, rel=1e-5)


def test_time_budget_drives_the_schedule_and_the_end() -> None:
    from zippy.train.trainer import _lr_at, _progress

    tc = TrainConfig(images=".", out_dir=".", steps=1000, warmup_steps=10, lr=1e-3, min_lr=1e-5, minutes=2.0)
    assert _progress(tc, 100, 30.0) == pytest.approx(0.25)  # time is further along than steps (0.1)
    assert _progress(tc, 500, 30.0) == pytest.approx(0.5)
    assert _progress(tc, 100, 500.0) == 1.0
    assert _lr_at(tc, 100, 1.0) == pytest.approx(1e-5) and _lr_at(tc, 100, 0.0) == pytest.approx(1e-3)
    plain = TrainConfig(images=".", out_dir=".", steps=1000, warmup_steps=10)
    for step in (10, 400, 999):  # without a budget the schedule is the step-based one
        assert _lr_at(plain, step, _progress(plain, step, 1e9)) == pytest.approx(_lr_at(plain, step))


def test_model_config_sets_the_network_size(image_folder: Path, tmp_path: Path) -> None:
    from zippy.weights import load_weights

    common = dict(images=str(image_folder), steps=1, batch_size=2, warmup_steps=1, workers=0, threads=1,
                  val_every=0, crop=(64, 96), log_every=1)  # fmt: skip
    path = train(TrainConfig(out_dir=str(tmp_path / "s"), model_config={"feat_dim": 64}, **common), progress=False)
    cfg, state, _ = load_weights(path)
    assert cfg.feat_dim == 64 and state["score_head.0.0.weight"].shape[:2] == (64, 64)
    with pytest.raises(ValueError, match="backbone"):
        train(TrainConfig(out_dir=str(tmp_path / "x"), model_config={"backbone": "kp2d"}, **common), progress=False)


def test_illumination_changes_keep_the_image_order_and_range() -> None:
    from zippy.train.data import photometric

    rng = np.random.default_rng(0)
    img = np.repeat(np.linspace(0, 255, 96 * 64).reshape(64, 96, 1), 3, axis=2).astype(np.uint8)  # a ramp
    off = {"brightness": 0, "contrast": 0, "saturation": 0, "hue_deg": 0, "blur_prob": 0, "noise_std": 0}
    off |= {"gamma": 0, "channel_gain": 0, "shade": 0}
    plain = photometric(img, rng, AugmentConfig(**off))
    assert np.allclose(plain, img.astype(np.float32) / 255, atol=1.5 / 255)  # up to the HSV round trip
    changed = photometric(img, np.random.default_rng(1), AugmentConfig(**(off | {"gamma": 0.9, "channel_gain": 0.3})))
    assert changed.dtype == np.float32 and changed.min() >= 0 and changed.max() <= 1
    assert not np.allclose(changed, plain, atol=0.02)
    # gamma and channel gains are monotonic per channel: the ramp stays ordered (clipping may tie at 1)
    assert (np.diff(changed[..., 0].ravel()) >= 0).all()
    shade = AugmentConfig(**(off | {"shade": 0.6}))
    shaded = photometric(img, np.random.default_rng(2), shade)
    flat = photometric(np.full_like(img, 128), np.random.default_rng(2), shade)
    assert flat.std() > 0.01 and shaded.min() >= 0 and shaded.max() <= 1  # shading varies over a flat image


def test_augment_overrides_are_checked() -> None:
    from zippy.train.data import augment_config

    aug = augment_config((64, 96), None, {"gamma": 0.5})
    assert (aug.height, aug.width, aug.gamma) == (64, 96, 0.5)
    with pytest.raises(ValueError, match=r"unknown augmentation fields \['gama'\].*gamma"):
        augment_config((64, 96), None, {"gama": 0.5})
    with pytest.raises(ValueError, match="height"):
        augment_config((64, 96), None, {"height": 32})


def test_validation_pairs_do_not_follow_the_training_augmentation(image_folder: Path) -> None:
    from zippy.train.trainer import validation_set

    common = dict(images=str(image_folder), out_dir=".", crop=(64, 96), val_images=str(image_folder))
    plain = validation_set(TrainConfig(**common))
    strong = validation_set(TrainConfig(**common, augment={"gamma": 0.5, "shade": 0.2, "brightness": 0.1}))
    assert len(plain) == len(strong) == 7
    for (a0, a1, ha), (b0, b1, hb) in zip(plain.pairs, strong.pairs):
        assert np.array_equal(a0, b0) and np.array_equal(a1, b1) and np.array_equal(ha, hb)


def test_corner_descriptor_loss_trains_the_descriptors_at_the_corners(image_folder: Path) -> None:
    from dataclasses import replace

    from zippy.models import build_network, default_config
    from zippy.train.data import AugmentConfig, HomographyPairs, list_images
    from zippy.train.losses import LossConfig, pair_loss, split_views, view_corners

    torch.manual_seed(0)
    model = build_network(replace(default_config("zippyfast"), options=(("kp_head", "softmax"),))).train()
    ds = HomographyPairs(list_images(image_folder), AugmentConfig(height=64, width=96), seed=2)
    items = [ds[i] for i in range(2)]
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
    pts, present = view_corners(batch["image0"], 30)
    assert pts.shape == (2, 30, 2) and present.dtype == torch.bool and present.any()
    assert torch.all(pts[~present] == 0)
    o0, o1 = split_views(model(torch.cat([batch["image0"], batch["image1"]])), 2)
    corners = (pts, present), view_corners(batch["image1"], 30)
    args = dict(binary=True, ones=64, temperature=0.5)
    base, p0 = pair_loss(o0, o1, batch["H"], batch["valid1"], cfg=LossConfig(desc_symmetric=True), **args)
    cfg = LossConfig(desc_symmetric=True, corner_desc_weight=2.0)
    with_corners, p1 = pair_loss(o0, o1, batch["H"], batch["valid1"], cfg=cfg, corners=corners, **args)
    assert p0["corner_desc"] == 0.0 and p1["corner_desc"] > 0
    assert float(with_corners.detach()) == pytest.approx(float(base.detach()) + 2.0 * p1["corner_desc"], rel=1e-5)
    with_corners.backward()
    assert model.desc_head.weight.grad.abs().max() > 0
    with pytest.raises(ValueError, match="needs the views' corners"):
        pair_loss(o0, o1, batch["H"], batch["valid1"], cfg=cfg, **args)


def test_corner_descriptor_loss_leaves_the_cell_score_reliability_term_to_the_cells(image_folder: Path) -> None:
    """score_desc_weight weighs the cells' scores by their descriptors; corners have no cell score of their own, so
    the corner loss is the same with it on (and the pair loss does not index the cell scores with corner masks)."""
    from dataclasses import replace

    from zippy.models import build_network, default_config
    from zippy.train.data import AugmentConfig, HomographyPairs, list_images
    from zippy.train.losses import LossConfig, pair_loss, split_views, view_corners

    torch.manual_seed(1)
    model = build_network(replace(default_config("zippyfast"), options=(("kp_head", "softmax"),))).eval()
    ds = HomographyPairs(list_images(image_folder), AugmentConfig(height=64, width=96), seed=3)
    items = [ds[i] for i in range(2)]
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
    with torch.no_grad():
        o0, o1 = split_views(model(torch.cat([batch["image0"], batch["image1"]])), 2)
    corners = view_corners(batch["image0"], 30), view_corners(batch["image1"], 30)
    args = dict(binary=True, ones=64, temperature=0.5, corners=corners)
    parts = [
        pair_loss(
            o0, o1, batch["H"], batch["valid1"], cfg=LossConfig(corner_desc_weight=1.0, score_desc_weight=w), **args
        )[1]
        for w in (0.0, 0.5)
    ]
    assert parts[0]["corner_desc"] > 0 and parts[1]["corner_desc"] == pytest.approx(parts[0]["corner_desc"], rel=1e-6)
