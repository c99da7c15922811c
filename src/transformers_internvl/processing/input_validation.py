"""Argument checks of the processors: the text given to `InternVLChatProcessor` (issue 12), refused early with the
index and position, and the ints, bools, per-channel triples and alias pairs of the image and video processors
(a `TypeError` / `ValueError` naming the argument and the value given)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .tiling import check_image_size, check_int

__all__ = ["check_bool", "check_image_size", "check_int", "check_texts", "check_triple", "pop_alias", "size_to_int"]


def check_texts(texts: Sequence[str]) -> None:
    """Raise a clear error for a batch the tokenizer cannot encode.

    Raises:
        ValueError: an empty batch (`text=[]`), or a string that is not valid Unicode text (a lone surrogate such as
            `"\\ud800"`, which cannot be encoded as UTF-8); the message gives the text's index and the position.
        TypeError: an element that is not a `str`.
    """
    if len(texts) == 0:
        raise ValueError("`text` is an empty list; expected at least one string (use [''] for an empty prompt).")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"`text[{index}]` must be a str, got {type(text).__name__}.")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(
                f"`text[{index}]` is not valid Unicode: {error.object[error.start : error.end]!r} at position "
                f"{error.start} ({error.reason}; lone surrogates cannot be tokenized)."
            ) from None


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"`{name}` must be a bool, got {type(value).__name__} ({value!r}).")
    return bool(value)


def _is_real(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool | np.bool_)


def check_triple(name: str, value: object) -> tuple[float, float, float]:
    """A float or 3 floats (one per channel), all finite; for `*_std`, also non-zero (it is a divisor)."""
    if _is_real(value):
        values = (float(value),) * 3
    elif isinstance(value, list | tuple) and len(value) == 3 and all(_is_real(v) for v in value):
        values = tuple(float(v) for v in value)
    else:
        raise TypeError(f"`{name}` must be a float or 3 floats (one per channel), got {value!r}.")
    if not all(np.isfinite(values)):
        raise ValueError(f"`{name}` must be finite, got {list(values)}.")
    if name.endswith("std") and any(v == 0 for v in values):
        raise ValueError(f"`{name}` divides the pixels and must be non-zero, got {list(values)}.")
    return values


def size_to_int(name: str, size: object) -> int:
    """`size` as transformers writes it (int, or {"height": s, "width": s}) -> the tile side (`check_image_size`)."""
    if isinstance(size, dict):
        height, width = size.get("height"), size.get("width")
        if height is None or height != width:
            raise ValueError(f"`{name}` must describe a square tile, e.g. {{'height': 448, 'width': 448}}; got {size}.")
        return check_image_size(name, height)
    return check_image_size(name, size)


def pop_alias(kwargs: dict[str, Any], canonical: str, value: Any, aliases: Sequence[str], none_value: Any) -> Any:
    for alias in aliases:
        if alias in kwargs:
            alias_value = kwargs.pop(alias)
            if alias_value is None:
                continue
            if value is not none_value and value != alias_value:
                raise ValueError(f"`{canonical}` ({value}) and its alias `{alias}` ({alias_value}) disagree.")
            value = alias_value
    return value
