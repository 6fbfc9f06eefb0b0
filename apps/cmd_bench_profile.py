"""`zippy bench profile`: where the int8 engine spends its time, per layer and per stage (see
:mod:`zippy_eval.profile_int8`)."""

from __future__ import annotations

import argparse

HELP = "profile the int8 engine per layer and per stage on real frames (JSON + table + plot)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `zippy bench profile`."""
    from zippy_eval.profile_int8 import add_arguments as add

    add(parser)


def run(args: argparse.Namespace) -> int:
    """Profile and print the table."""
    from zippy_eval.profile_int8 import run_args

    return run_args(args)
