"""How the console commands report errors; shared by `cli/` and `python -m transformers_internvl.conversion`.

A handler takes the parsed arguments and returns the exit code. `run_handler` prints what it raises as one line,
`transformers-internvl: error: <message>`, and returns 1; with `args.traceback` the exception propagates instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

PROG = "transformers-internvl"


class CLIError(Exception):
    """A user-facing error: printed as `transformers-internvl: error: <message>`, exit code 1."""


def first_line(message: str, default: str = "") -> str:
    """The first line of `message` (stripped), or `default` when it is blank."""
    return message.strip().splitlines()[0] if message.strip() else default


def report_error(message: str) -> int:
    """Print `message`'s first line as the command's error; returns the exit code 1."""
    print(f"{PROG}: error: {first_line(message, 'unknown error')}", file=sys.stderr)
    return 1


def run_handler(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """`handler(args)`, with `CLIError`, `OSError`, `ValueError`, `TypeError` (and, naming its type, any other
    exception) reported as one line and exit code 1."""
    traceback = getattr(args, "traceback", False)
    try:
        return handler(args)
    except CLIError as error:
        return report_error(str(error))
    except (OSError, ValueError, TypeError) as error:
        if traceback:
            raise
        return report_error(str(error) or type(error).__name__)
    except Exception as error:
        if traceback:
            raise
        # The message's first non-blank line: transformers' backend errors start with a newline, which left only
        # "ImportError:" on the line.
        detail = first_line(str(error))
        name = f"{type(error).__name__}: {detail}" if detail else type(error).__name__
        return report_error(f"{name} (run with --traceback for details)")


__all__ = ["PROG", "CLIError", "first_line", "report_error", "run_handler"]
