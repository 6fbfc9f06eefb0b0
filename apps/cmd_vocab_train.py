"""`zippy vocab train`: a bag-of-words vocabulary for place recognition and loop closure.

Example (the shipped vocabulary; weights/MODEL_CARD.md)::

    zippy vocab train --images ../shared/data/train_images ../shared/data/train_images_extra \
        --exclude 'bsds500_test_*' --out weights/zippypoint_vocab.npz --k 10 --levels 5

See :mod:`zippy.vocabulary` for the vocabulary and :mod:`zippy_eval.vocab` for the training steps.
"""

from __future__ import annotations

import argparse

HELP = "train a bag-of-words vocabulary (DBoW2-style) on the descriptors of a folder of photos"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `zippy vocab train`."""
    parser.add_argument("--images", nargs="+", required=True, metavar="DIR", help="folders of training photos")
    parser.add_argument("--out", required=True, help="vocabulary file to write (.npz)")
    parser.add_argument("--k", type=int, default=10, help="branching factor (default 10)")
    parser.add_argument("--levels", type=int, default=5, help="tree depth (default 5)")
    parser.add_argument("--max-images", type=int, default=None, help="evenly spaced subset of the images")
    parser.add_argument("--model", default="zippypoint", help="descriptor method: a zippy model or orb")
    parser.add_argument("--weights", default=None, help="weights file of --model (default: shipped)")
    parser.add_argument("--engine", default="auto", help="zippy engine (default auto)")
    parser.add_argument("--max-keypoints", type=int, default=1000, help="keypoints per image (default 1000)")
    parser.add_argument("--short-side", type=int, default=480, help="downscale to this short side (default 480)")
    parser.add_argument("--max-descriptors", type=int, default=None, help="cluster a random subset of this size")
    parser.add_argument("--exclude", nargs="*", default=[], metavar="GLOB", help="file name patterns to leave out")
    parser.add_argument("--cache", default=None, help="folder caching the descriptors per image")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    """Train and write the vocabulary; print what it is."""
    from zippy_eval.vocab import VocabTrainConf, train_vocabulary

    conf = VocabTrainConf(
        model=args.model, weights=args.weights, engine=args.engine, k=args.k, levels=args.levels,
        max_images=args.max_images, max_keypoints=args.max_keypoints, short_side=args.short_side,
        max_descriptors=args.max_descriptors, exclude=tuple(args.exclude), seed=args.seed,
    )  # fmt: skip
    path, voc = train_vocabulary(args.images, args.out, conf, cache_dir=args.cache)
    m = voc.meta
    print(f"{voc!r}: {m['training_images']} images, {m['training_descriptors']} descriptors, "
          f"extraction {m['extraction_seconds']} s, clustering {m['clustering_seconds']} s -> {path}")  # fmt: skip
    return 0
