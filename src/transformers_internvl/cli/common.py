"""What every `transformers-internvl` command shares: the program name, `CLIError` and argument checks."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from ..command_errors import PROG, CLIError, first_line

MAX_VOTES = 64
"""Upper bound of `chat --votes` (InternVL 2.5's majority-voting evaluations sample far fewer answers)."""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def votes_int(text: str) -> int:
    """`--votes`: a positive integer up to `MAX_VOTES`. All votes are sampled in one batch (the prompt repeated N
    times), so a huge N failed only after the model load, with a raw allocation error."""
    value = positive_int(text)
    if value > MAX_VOTES:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_VOTES} votes (sampled in one batch), got {value}")
    return value


def seed_int(text: str) -> int:
    """A random seed torch takes (`torch.manual_seed`: -2**63 .. 2**64 - 1); a larger one failed after the model
    load with "Overflow when unpacking long long"."""
    expected = "an integer in -2**63..2**64 - 1"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not -(2**63) <= value < 2**64:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
    return value


def _float_in(text: str, expected: str, accept) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not accept(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (`--temperature`): `-1`, `0`, `nan` and `inf` are refused by argparse with the value."""
    return _float_in(text, "a positive finite number", lambda value: math.isfinite(value) and value > 0)


def probability(text: str) -> float:
    """A number in (0, 1] (`--top-p`): above 1 nucleus sampling keeps every token, 0 or less none."""
    return _float_in(text, "a number in (0, 1]", lambda value: 0 < value <= 1)


def existing_file(path: str, what: str) -> Path:
    file = Path(path)
    if not file.exists():
        raise CLIError(f"{what} not found: {path}")
    if not file.is_file():
        raise CLIError(f"{what} is not a file: {path}")
    return file


def open_image(path: str) -> Any:
    """The image at `path` as RGB PIL image, or a `CLIError` saying why it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    file = existing_file(path, "image file")
    try:
        with Image.open(file) as image:
            return image.convert("RGB")
    except UnidentifiedImageError:
        raise CLIError(f"cannot read image {path}: not an image format PIL can open") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:  # truncated, corrupt, too big
        raise CLIError(f"cannot read image {path}: {error}") from None


__all__ = ["PROG", "CLIError", "existing_file", "first_line", "open_image", "positive_int", "seed_int"]
