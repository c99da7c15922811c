"""The `transformers-internvl` entry point: the parser of every subcommand, `main`, and how errors are shown.

Adding a subcommand is one function: write `add_<name>_command(subparsers)` (in the command's own module) that
creates its parser and sets `handler`, then list it in `_COMMANDS`. A handler takes the parsed arguments and returns
the exit code; it reports user errors by raising `CLIError` (or letting `OSError` / `ValueError` through), which
`main` prints as one line.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from ..command_errors import run_handler
from .bench import add_bench_command, bench_handler
from .chat import add_chat_command
from .common import PROG
from .tiles import add_tiles_command


def _add_convert_command(subparsers: Any) -> None:
    from ..conversion.command import add_convert_command

    add_convert_command(subparsers)


def _add_filter_command(subparsers: Any) -> None:
    from ..training.filtering import add_filter_command

    add_filter_command(subparsers)


_COMMANDS: list[Callable[[Any], None]] = [
    add_tiles_command,
    add_chat_command,
    _add_convert_command,
    _add_filter_command,
    add_bench_command,
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog=PROG, description="Tools for InternVL 2.5 models in Hugging Face Transformers."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--traceback", action="store_true", help="show the full traceback of an error instead of one line"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_command in _COMMANDS:
        add_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the console script; returns the exit code (0 on success, 1 on errors, 2 on usage errors)."""
    from .._startup import _exit_quietly

    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is _exit_quietly:
        # Ctrl-C raises KeyboardInterrupt from here on, caught below (start-up installed a quiet exit handler).
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        parser = build_parser()
        arguments = sys.argv[1:] if argv is None else list(argv)
        if arguments[:1] == ["bench"]:  # every further argument (--help too) belongs to the benchmark's own parser
            return _run(
                argparse.Namespace(command="bench", traceback=False, bench_args=arguments[1:], handler=bench_handler)
            )
        try:
            args = parser.parse_args(argv)
        except SystemExit as exit_request:  # --help, --version and usage errors (argparse prints them)
            return exit_request.code if isinstance(exit_request.code, int) else 1
        return _run(args)
    except KeyboardInterrupt:  # during start-up (imports, model loading) or a one-shot answer: no traceback
        print(file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    return run_handler(args.handler, args)


__all__ = ["build_parser", "main"]
