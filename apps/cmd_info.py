"""`zippy info NAME`: parameters and per-layer precision of a backbone, the CPU and the engine that runs here."""

from __future__ import annotations

import argparse

HELP = "parameter count and per-layer precision (binary / 8-bit / float) of a backbone"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", default="zippypoint", help="backbone name (default zippypoint)")
    p.add_argument("--weights", default=None, help="weights file (shows its metadata)")
    p.add_argument("--layers", action="store_true", help="list every conv layer")
    p.add_argument("--no-engine", action="store_true", help="skip loading the network to show the engine it gets")


def layer_table(model) -> list[tuple[str, str, str, int]]:
    """(name, kind, precision, parameters) per conv layer."""
    from torch import nn

    from zippy.quant.layers import BinaryConv2d, QConv2d

    rows = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            prec = "binary" if isinstance(m, BinaryConv2d) else f"{m.bits}-bit" if isinstance(m, QConv2d) else "float"
            shape = f"{m.in_channels}->{m.out_channels} k{m.kernel_size[0]}"
            rows.append((name, shape, prec, sum(p.numel() for p in m.parameters(recurse=False))))
    return rows


def run(args: argparse.Namespace) -> int:
    import zippy
    from zippy.models import build_network, count_parameters, default_config
    from zippy.weights import load_weights, shipped_weights

    names = zippy.available_models()
    if args.name not in names:
        raise ValueError(f"unknown model {args.name!r}; choose one of {names}")
    meta = {}
    weights = args.weights or shipped_weights(args.name)
    if weights:
        cfg, _, meta = load_weights(weights)
    else:
        cfg = default_config(args.name)
    model = build_network(cfg)
    counts = count_parameters(model)
    backbone = "" if args.name == cfg.backbone else f" (backbone {cfg.backbone}, widths {list(cfg.widths)})"
    print(f"{args.name}{backbone}: {counts['total'] / 1e6:.2f} M parameters")
    for k in ("binary", "8bit", "float"):
        print(f"  {k:>6}: {counts[k] / 1e6:.3f} M ({100 * counts[k] / counts['total']:.1f} %)")
    kind = f"binary {cfg.desc_dim} bits, {cfg.desc_ones} ones" if model.binary_descriptors else f"float {cfg.desc_dim}"
    local = cfg.option("local_desc", 0) if cfg.topology == "fast" else 0
    fine = f", with a 1/4-resolution part of rank {local}" if local else ""
    print(f"  descriptors: {kind}{fine}")
    head = getattr(model, "kp_head_kind", None)
    score = f", scored by a {head} head" if head else ""
    margin = getattr(model, "kp_margin", 0)
    score += f" that sees {cfg.cell + 2 * margin}x{cfg.cell + 2 * margin} px windows" if margin else ""
    print(f"  topology: {cfg.topology}, keypoints: one per {cfg.cell}x{cfg.cell} cell{score}")
    rows = layer_table(model)
    by_prec: dict[str, int] = {}
    for _, _, prec, _ in rows:
        by_prec[prec] = by_prec.get(prec, 0) + 1
    print("  conv layers by precision: " + ", ".join(f"{k} {v}" for k, v in sorted(by_prec.items())))
    if args.layers:
        for name, shape, prec, n in rows:
            print(f"    {name:<40} {shape:<18} {prec:<7} {n:>9}")
    if meta:
        print("  weights meta: " + ", ".join(f"{k}={v}" for k, v in meta.items() if not isinstance(v, dict)))
    from zippy.cpu import cpu_summary

    print(f"  cpu: {cpu_summary()}")
    if not args.no_engine:
        ex = zippy.load(args.name, weights=args.weights)  # engine="auto", as every command
        print(f"  engine (auto): {ex.engine_path}: {ex.engine_reason}")
    return 0
