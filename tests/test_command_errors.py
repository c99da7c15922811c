"""One-line error reports of the console commands (`command_errors.run_handler`)."""

from __future__ import annotations

import argparse

import pytest

from transformers_internvl.command_errors import run_handler


def _raiser(error: Exception):
    def handler(args: argparse.Namespace) -> int:
        raise error

    return handler


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        # transformers' `requires_backends` message starts with a newline (e.g. a -hf folder's video processor
        # without torchvision); the report was "transformers-internvl: error: ImportError:" and nothing else.
        (
            ImportError("\nInternVLVideoProcessor requires the Torchvision library but it was not found.\nMore."),
            "ImportError: InternVLVideoProcessor requires the Torchvision library but it was not found. "
            "(run with --traceback for details)",
        ),
        (RuntimeError(""), "RuntimeError (run with --traceback for details)"),
        (RuntimeError("boom\nsecond line"), "RuntimeError: boom (run with --traceback for details)"),
        (ValueError("\n  bad value\nmore"), "bad value"),
        (OSError(), "OSError"),
    ],
)
def test_error_is_reported_on_one_line_with_its_message(error, expected, capsys):
    assert run_handler(_raiser(error), argparse.Namespace(traceback=False)) == 1
    err = capsys.readouterr().err
    assert err == f"transformers-internvl: error: {expected}\n"


def test_traceback_option_reraises(capsys):
    with pytest.raises(ImportError):
        run_handler(_raiser(ImportError("\nx")), argparse.Namespace(traceback=True))
