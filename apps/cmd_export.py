"""`zippy export`: a compact deployment file or an ONNX graph, checked against our own engines.

Examples::

    zippy export --format compact --weights weights/zippypoint.pt --out zippypoint_compact.pt
    zippy export --format onnx --int8 --weights weights/zippypoint.pt --out zippypoint_int8.onnx
    zippy export --format onnx --weights weights/zippypoint.pt --out zippypoint_fp32.onnx

* compact: binary weights bit-packed, 8-bit weights int8 + scales (:mod:`zippy.quant.packing`); read
  by ``zippy.load(weights=...)`` like any weights file. Check: the packed file gives identical outputs.
* onnx: fp32 (the fake-quantized network) or ``--int8`` (onnxruntime integer operators, zippypoint
  only; see :mod:`zippy.quant.onnx_engine`). Check: onnxruntime runs the file on real photos and its
  keypoints / descriptors are compared with our fp32 engine (fp32 graph) or int8 engine (int8 graph).

The check prints its figures; the command exits with 1 when they miss the thresholds below.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

HELP = "export a compact deployment file or an ONNX graph (fp32 / int8), checked with onnxruntime"

# check thresholds: fraction of our keypoints found within 0.05 px, fraction of those with identical
# descriptors (binary) or cosine >= 0.999 (float)
# (the int8 graph is approximate: QLinearConv rounds the folded BatchNorm biases to int32 steps)
THRESHOLDS = {"compact": (1.0, 1.0), "onnx-fp32": (0.97, 0.95), "onnx-int8": (0.85, 0.60)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `zippy export`."""
    parser.add_argument("--format", required=True, choices=["onnx", "compact"], help="what to write")
    parser.add_argument("--int8", action="store_true", help="onnx: the int8 graph (zippypoint) instead of fp32")
    parser.add_argument("--weights", required=True, help="weights file to export (plain or compact)")
    parser.add_argument("--out", required=True, help="output file")
    parser.add_argument(
        "--check-images",
        nargs="*",
        default=None,
        help="images for the check (default: two photos shipped with scikit-image), resized to --check-size",
    )
    parser.add_argument("--check-size", default="240x320", help="HxW of the check images (default 240x320)")
    parser.add_argument("--max-keypoints", type=int, default=1000, help="keypoint budget of the check")


def _check_images(paths: list[str] | None, size: str) -> list[Any]:
    import cv2

    from zippy.image import read_image

    try:
        h, w = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise ValueError(f"--check-size must be HxW like 240x320, got {size!r}") from None
    if paths:
        images = [read_image(p) for p in paths]
    else:
        import skimage.data

        images = [skimage.data.astronaut(), skimage.data.coffee()]
    return [cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA) for im in images]


def compare_features(ref: list[Any], test: list[Any]) -> dict[str, float]:
    """Keypoints of ``ref`` found in ``test`` within 0.05 px, and how many of those have the same descriptor.

    Returns:
        {"keypoints_matched": fraction of ref keypoints, "descriptors_identical": fraction of matched ones
        (binary: equal bytes; float: cosine >= 0.999), "n_ref": total ref keypoints}.
    """
    import numpy as np

    n_ref = matched = same = 0
    for a, b in zip(ref, test):
        n_ref += len(a)
        if len(a) == 0 or len(b) == 0:
            continue
        d = np.linalg.norm(a.keypoints[:, None] - b.keypoints[None], axis=-1)
        j = d.argmin(1)
        ok = d[np.arange(len(a)), j] < 0.05
        matched += int(ok.sum())
        da, db = a.descriptors[ok], b.descriptors[j[ok]]
        if a.is_binary:
            same += int(np.all(da == db, axis=1).sum())
        else:
            cos = (da * db).sum(1) / np.maximum(np.linalg.norm(da, axis=1) * np.linalg.norm(db, axis=1), 1e-12)
            same += int((cos >= 0.999).sum())
    return {
        "keypoints_matched": matched / max(n_ref, 1),
        "descriptors_identical": same / max(matched, 1),
        "n_ref": float(n_ref),
    }


def _report(kind: str, figures: dict[str, float]) -> int:
    need_kp, need_desc = THRESHOLDS[kind]
    ok = figures["keypoints_matched"] >= need_kp and figures["descriptors_identical"] >= need_desc
    print(
        f"check ({kind}): keypoints matched {figures['keypoints_matched']:.4f} (need {need_kp}), "
        f"identical descriptors {figures['descriptors_identical']:.4f} (need {need_desc}) "
        f"over {int(figures['n_ref'])} keypoints: {'OK' if ok else 'FAILED'}"
    )
    return 0 if ok else 1


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse, before anything is written, the options that cannot work.

    Raises:
        ValueError: --out is the --weights file itself, --int8 without --format onnx, --max-keypoints <= 0.
        FileNotFoundError: --weights or a check image does not exist.
        IsADirectoryError: --out is a folder.
    """
    import os

    src, out = Path(args.weights), Path(args.out)
    if not src.is_file():
        raise FileNotFoundError(f"weights file not found: {src}")
    if out.is_dir():
        raise IsADirectoryError(f"--out must be a file name, got the folder {out}")
    if out.resolve() == src.resolve() or (out.exists() and os.path.samefile(out, src)):
        raise ValueError(f"--out {out} is the --weights file: writing it would destroy the source; choose another name")
    if args.int8 and args.format != "onnx":
        raise ValueError(f"--int8 applies to --format onnx only, got --format {args.format}")
    if args.max_keypoints <= 0:
        raise ValueError(f"--max-keypoints must be positive, got {args.max_keypoints}")
    for p in args.check_images or []:
        if not Path(p).is_file():
            raise FileNotFoundError(f"check image not found: {p}")


def run(args: argparse.Namespace) -> int:
    """Write the file, check it, print sizes and figures; exit code 1 when the check fails."""
    import os

    import torch

    from zippy.extractor import Extractor
    from zippy.weights import atomic_torch_save, build_model, file_sha256, load_weights

    src, out = Path(args.weights), Path(args.out)
    check_arguments(args)
    images = _check_images(args.check_images, args.check_size)
    cfg, state, meta = load_weights(src)
    model = build_model(cfg, state).eval()
    if args.int8:
        from zippy.quant import int8

        reason = int8.unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"--int8 is not available for {cfg.backbone!r}: {reason}")
    k = int(args.max_keypoints)
    if args.format == "compact":
        from zippy.quant.packing import pack_state_dict, state_dict_nbytes

        packed = pack_state_dict(model)
        new_meta = dict(meta, packed=True, packed_from_sha256=file_sha256(src))
        atomic_torch_save({"config": cfg.to_dict(), "state_dict": packed, "meta": new_meta}, out)
        fp32_bytes = state_dict_nbytes({k_: v.float() for k_, v in model.state_dict().items() if v.is_floating_point()})
        print(
            f"wrote {out}: {os.path.getsize(out) / 1e6:.2f} MB (tensor data {state_dict_nbytes(packed) / 1e6:.2f} MB); "
            f"source {src.name}: {src.stat().st_size / 1e6:.2f} MB; fp32 state dict {fp32_bytes / 1e6:.2f} MB "
            f"({fp32_bytes / max(os.path.getsize(out), 1):.1f}x)"
        )
        ref = Extractor(model, engine="fp32")
        cfg2, state2, _ = load_weights(out)
        test = Extractor(build_model(cfg2, state2), engine="fp32")
        return _report(
            "compact", compare_features([ref.extract(im, k) for im in images], [test.extract(im, k) for im in images])
        )

    from zippy.quant import onnx_engine

    if args.int8:
        onnx_engine.export_int8(model, out, calibration=images)
        kind, ref = "onnx-int8", Extractor(model, engine="int8")
    else:
        onnx_engine.export_fp32(model, out)
        kind, ref = "onnx-fp32", Extractor(model, engine="fp32")
    print(f"wrote {out}: {os.path.getsize(out) / 1e6:.2f} MB ({kind}, opset {onnx_engine.OPSET})")
    test = Extractor(model, engine="fp32")
    # same post-processing, network replaced by onnxruntime running the written file (no public hook yet)
    test._net = onnx_engine.OnnxNet(out, threads=torch.get_num_threads())
    return _report(
        kind, compare_features([ref.extract(im, k) for im in images], [test.extract(im, k) for im in images])
    )
