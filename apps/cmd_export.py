"""`zippy export`: a compact deployment file or an ONNX graph, checked against our own engines.

Examples::

    zippy export --format compact --weights weights/zippypoint.pt --out zippypoint_compact.pt
    zippy export --format onnx --weights weights/zippypoint.pt --out zippypoint_int8.onnx
    zippy export --format onnx --fp32 --weights weights/kp2d.pt --out kp2d.onnx

* compact: binary weights bit-packed, 8-bit weights int8 + scales (:mod:`zippy.quant.packing`); read
  by ``zippy.load(weights=...)`` like any weights file. Check: the packed file gives identical outputs.
* onnx: the int8 graph where the network has one (zippypoint; exact integer convs, see
  :mod:`zippy.quant.onnx_engine`), else (or with ``--fp32``) the fp32 graph of the fake-quantized network.
  Check: onnxruntime runs the file on real photos and its keypoints / descriptors are compared with the
  trained network (our fp32 engine, fake quantization on). The fp32 graph of a binary network does not
  pass it: its BatchNorm and quantize operators round differently from torch, and the binary layers
  spread every flipped sign.

The check prints its figures; when they miss the thresholds below, the written file is removed and the
command exits with 1.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from zippy.features import compare_features

HELP = "export a compact deployment file or an ONNX graph (fp32 / int8), checked with onnxruntime"

# check thresholds: fraction of the trained network's keypoints found within 0.05 px, fraction of those with
# identical descriptors (binary) or cosine >= 0.999 (float)
THRESHOLDS = {"compact": (1.0, 1.0), "onnx-fp32": (0.97, 0.95), "onnx-int8": (0.99, 0.99)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `zippy export`."""
    parser.add_argument("--format", required=True, choices=["onnx", "compact"], help="what to write")
    graph = parser.add_mutually_exclusive_group()
    graph.add_argument("--int8", action="store_true", help="onnx: the int8 graph (the default where there is one)")
    graph.add_argument("--fp32", action="store_true", help="onnx: the fp32 graph of the fake-quantized network")
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


def _report(kind: str, figures: dict[str, float]) -> int:
    need_kp, need_desc = THRESHOLDS[kind]
    ok = figures["keypoints_found"] >= need_kp and figures["descriptors_identical"] >= need_desc
    print(
        f"check ({kind}): keypoints matched {figures['keypoints_found']:.4f} (need {need_kp}), "
        f"identical descriptors {figures['descriptors_identical']:.4f} (need {need_desc}) "
        f"over {int(figures['n_reference'])} keypoints: {'OK' if ok else 'FAILED'}"
    )
    return 0 if ok else 1


@contextlib.contextmanager
def _removed_on_error(out: Path) -> Iterator[None]:
    """Remove ``out`` when its check raises (an unchecked file is not left behind), then re-raise."""
    try:
        yield
    except BaseException:
        out.unlink(missing_ok=True)
        raise


def _checked(out: Path, code: int) -> int:
    """Remove ``out`` when its check failed (code 1): a file that does not reproduce the network is not kept."""
    if code != 0 and out.exists():
        out.unlink()
        print(f"removed {out}: it failed its check")
    return code


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
    """Write the file, check it, print sizes and figures; exit code 1 (file removed) when the check fails."""
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
        with _removed_on_error(out):
            test = Extractor(build_model(cfg2, state2), engine="fp32")
            figures = compare_features([ref.extract(im, k) for im in images], [test.extract(im, k) for im in images])
        return _checked(out, _report("compact", figures))

    from zippy.quant import int8, onnx_engine

    no_int8 = int8.model_unsupported_reason(model)
    if args.int8 and no_int8 is not None:
        raise ValueError(f"--int8: this network has no int8 graph ({no_int8})")
    if no_int8 is None and not args.fp32:
        onnx_engine.export_int8(model, out)
        kind = "onnx-int8"
    else:
        onnx_engine.export_fp32(model, out)
        kind = "onnx-fp32"
    print(f"wrote {out}: {os.path.getsize(out) / 1e6:.2f} MB ({kind}, opset {onnx_engine.OPSET})")
    with _removed_on_error(out):
        ref, test = Extractor(model, engine="fp32"), Extractor(model, engine="fp32")
        # same post-processing, network replaced by onnxruntime running the written file (no public hook yet)
        test._net = onnx_engine.OnnxNet(out, threads=torch.get_num_threads())
        figures = compare_features([ref.extract(im, k) for im in images], [test.extract(im, k) for im in images])
    return _checked(out, _report(kind, figures))
