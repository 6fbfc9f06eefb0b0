"""`zippy make-hpatches-like`: HPatches-like sequences (v_ viewpoint, i_ illumination) from a folder of photos.

Example::

    zippy make-hpatches-like ../shared/data/train_images data/hpatches_like_dev \
        --n 100 --seed 0 --glob 'bsds500_test_*'

See :mod:`zippy_eval.hpatches.generate` for what the sequences are. Output folders that already
exist are kept unless ``--overwrite``.
"""

from __future__ import annotations

import argparse

HELP = "generate HPatches-like sequences (v_ perspective views, i_ illumination changes) from photos"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `zippy make-hpatches-like`."""
    parser.add_argument("src_dir", metavar="SRC_DIR", help="folder of photos")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="output folder (HPatches sequences layout)")
    parser.add_argument("--n", type=int, default=100, help="number of sequences (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--glob", default="*", help="photo file pattern in SRC_DIR (default '*')")
    parser.add_argument("--num-images", type=int, default=6, help="images per sequence (default 6)")
    parser.add_argument("--v-fraction", type=float, default=0.5, help="fraction of v_ sequences (default 0.5)")
    parser.add_argument("--max-side", type=int, default=1024, help="longest output side in px (default 1024)")
    parser.add_argument("--overwrite", action="store_true", help="regenerate existing sequences")
    parser.add_argument(
        "--wide",
        action="store_true",
        help="wide-viewpoint v_ sequences (independent views, rotation <= 45 deg, 20 %% corner moves, 40-95 %% crops)",
    )


def run(args: argparse.Namespace) -> int:
    """Generate the sequences and print where they are."""
    from zippy_eval.hpatches.generate import WIDE, GeneratorConfig, generate_sequences, list_photos

    cfg = GeneratorConfig(
        n=args.n,
        seed=args.seed,
        num_images=args.num_images,
        v_fraction=args.v_fraction,
        max_side=args.max_side,
        **(WIDE if args.wide else {}),
    )
    photos = list_photos(args.src_dir, args.glob)
    folders = generate_sequences(photos, args.out_dir, cfg, overwrite=args.overwrite)
    n_v = sum(f.name.startswith("v_") for f in folders)
    print(f"{len(folders)} sequences ({n_v} v_, {len(folders) - n_v} i_) from {len(photos)} photos in {args.out_dir}")
    return 0
