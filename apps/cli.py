"""The `zippy` console script.

Each command lives in its own module exposing ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. Commands that take a sub-command ("eval hpatches", "bench extract") are groups
of such modules.

Errors (:func:`main` is the one boundary): an expected failure -- bad input or options (ValueError,
which the library also raises for unreadable weights / feature files and out-of-range numbers), a
file or folder that is missing, not writable, already there or in the way, a full disk (any OSError)
-- ends with one line ``zippy <command>: error: <message>`` on stderr and exit code 2. Anything else
is a bug: one line naming the exception and exit code 1; ``--debug`` shows the full traceback of
either kind. Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# command name -> module (relative to this package)
COMMANDS: dict[str, str] = {
    "demo": "cmd_demo",
    "info": "cmd_info",
    "detect": "cmd_detect",
    "match": "cmd_match",
    "train": "cmd_train",
    "export": "cmd_export",
    "stream": "cmd_stream",
    "make-hpatches-like": "cmd_make_hpatches_like",
}
# group name -> {sub-command name -> module}
GROUPS: dict[str, dict[str, str]] = {
    "eval": {"hpatches": "cmd_eval_hpatches", "localization": "cmd_eval_localization", "relpose": "cmd_eval_relpose"},
    "bench": {
        "matcher": "cmd_bench_matcher",
        "extract": "cmd_bench_extract",
        "stream": "cmd_bench_stream",
    },
    "vocab": {"train": "cmd_vocab_train"},
}


def _add(sub: argparse._SubParsersAction, name: str, module_name: str) -> None:
    module = importlib.import_module(f"{__package__}.{module_name}")
    parser = sub.add_parser(name, help=module.HELP, description=module.HELP)
    module.add_arguments(parser)
    parser.set_defaults(_run=module.run)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of the `zippy` command.

    Args:
        only: build the full parser of this command only (its module alone is imported); the other
            commands are listed by name. None builds every command (for --help).
    """
    parser = argparse.ArgumentParser(prog="zippy", description="Fast binary keypoints on CPUs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module_name in COMMANDS.items():
        if only is None or only == name:
            _add(sub, name, module_name)
        else:
            sub.add_parser(name)
    for group, members in GROUPS.items():
        gp = sub.add_parser(group, help=f"{group}: {', '.join(members)}")
        if only is not None and only != group:
            continue
        gsub = gp.add_subparsers(dest=f"{group}_command", metavar="NAME")
        gsub.required = True
        for name, module_name in members.items():
            _add(gsub, name, module_name)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    for a in argv:
        if a in COMMANDS or a in GROUPS:
            return a
        if not a.startswith("-"):
            return None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(_command_of(argv)).parse_args(argv)
    setup_logging(args.verbose)
    name = " ".join(str(v) for v in (args.command, getattr(args, f"{args.command}_command", None)) if v)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print(f"zippy {name}: interrupted", file=sys.stderr)
        return 130
    except EXPECTED_ERRORS as e:
        if args.debug:
            raise
        print(f"zippy {name}: error: {error_message(e)}", file=sys.stderr)
        return 2
    except Exception as e:
        if args.debug:
            raise
        print(
            f"zippy {name}: internal error: {type(e).__name__}: {error_message(e)} "
            "(run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)
"""What ends with a one-line message and exit 2: bad input (ValueError) and file-system failures
(OSError: FileNotFoundError, PermissionError, FileExistsError, IsADirectoryError, a full disk, ...)."""

OUR_LOGGERS = ("zippy", "zippy_eval", "zippy_apps", "__main__")


def setup_logging(verbose: bool) -> None:
    """Our loggers at INFO (DEBUG with -v); other libraries' (matplotlib, PIL, ...) at WARNING."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)


def error_message(e: BaseException) -> str:
    """One line: the exception's message (an OSError without one names its path and errno text)."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        text = f"{e.strerror}: {e.filename}" + (f" -> {e.filename2}" if e.filename2 else "")
    else:
        text = str(e) or type(e).__name__
    if isinstance(e, KeyError):
        text = f"missing key {text}"
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
