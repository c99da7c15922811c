"""Argument checks of the processors: the text given to `InternVLChatProcessor` (issue 12), refused early with the
index and position, the ints, bools, per-channel triples and alias pairs of the image and video processors, and the
tile geometry and strings of `InternVLChatProcessor.__init__` (a `TypeError` / `ValueError` naming the argument and
the value given)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..chat_templates import (
    IMAGE_CONTEXT_TOKEN,
    IMAGE_END_TOKEN,
    IMAGE_START_TOKEN,
    tokens_per_tile,
)
from ..downsample_ratio import check_downsample_ratio
from .tiling import check_image_size, check_int

__all__ = [
    "check_bool",
    "check_frame_template",
    "check_image_size",
    "check_int",
    "check_processor_args",
    "check_text_options",
    "check_texts",
    "check_triple",
    "pop_alias",
    "size_to_int",
]

# Image token strings of `InternVLChatProcessor`: the tokenizer attribute read when the argument is None, the default.
_IMAGE_TOKENS = {
    "image_start_token": ("start_image_token", IMAGE_START_TOKEN),
    "image_end_token": ("end_image_token", IMAGE_END_TOKEN),
    "image_context_token": ("context_image_token", IMAGE_CONTEXT_TOKEN),
}


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


# Tokenizer options whose text the processor would hand to the tokenizer unexpanded, or not as whole prompts: the
# `<image>` / `<video>` placeholders (and the `Image-1: <image>\n` prefix) are expanded in each sample's one string.
_UNEXPANDED_TEXT_OPTIONS = {
    "is_split_into_words": "pass each sample as one string (join the words)",
    "text_pair": "put the second text in `text` (one string per sample)",
    "text_target": "tokenize labels with `processor.tokenizer`, or build them from the chat template",
    "text_pair_target": "tokenize labels with `processor.tokenizer`, or build them from the chat template",
}


def check_text_options(text_kwargs: Mapping[str, Any], has_media: bool | None = None) -> None:
    """Refuse tokenizer options `InternVLChatProcessor.__call__` cannot honour (transformers' `TextKwargs`).

    Raises:
        ValueError: `is_split_into_words`, `text_pair`, `text_target` or `text_pair_target` is set (their text would
            not get its placeholders expanded); `return_overflowing_tokens=True` when `has_media` (the windows would
            cut image token runs; a text-only batch is windowed as the tokenizer does).
    """
    for name, advice in _UNEXPANDED_TEXT_OPTIONS.items():
        if text_kwargs.get(name) not in (None, False):
            raise ValueError(
                f"InternVLChatProcessor does not support `{name}` (got {text_kwargs[name]!r}): it expands the "
                f"`<image>` / `<video>` placeholders in one string per sample before tokenizing; {advice}."
            )
    if has_media and text_kwargs.get("return_overflowing_tokens"):
        raise ValueError(
            "InternVLChatProcessor does not support `return_overflowing_tokens=True` with images or videos: the "
            "windows would cut the `<img>...</img>` token runs the model fills with tiles (it works on text only)."
        )


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


def drop_saved_aliases(
    saved: Mapping[str, Any], given: Mapping[str, Any], groups: Sequence[Sequence[str]]
) -> dict[str, Any]:
    """`saved` (a processor dict read from a folder) without the names of every option group the caller gives a value
    for under any of its names, so that `from_pretrained(folder, max_num=6)` replaces the saved `max_dynamic_patch`
    (keywords override what a folder saved, whichever spelling either uses) instead of disagreeing with it."""
    kept = dict(saved)
    for group in groups:
        if any(given.get(name) is not None for name in group):
            for name in group:
                if name not in given:
                    kept.pop(name, None)
    return kept


def _check_text_option(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"`{name}` must be a str, got {type(value).__name__} ({value!r}).")
    if not value.strip():
        raise ValueError(f"`{name}` must be a non-empty string (not only whitespace), got {value!r}.")
    return value


def check_frame_template(name: str, template: object) -> str:
    """`template` (the label before each video frame) as a str formatted with only `i`, the 1-based frame number.

    Raises:
        TypeError: not a str.
        ValueError: empty, without `{i}`, or with another field (`{j}`, `{0}`) or a bad format spec.
    """
    template = _check_text_option(name, template)
    if "{i}" not in template:
        raise ValueError(f"`{name}` must contain '{{i}}' (the 1-based frame number), got {template!r}.")
    try:
        template.format(i=1)
    except (IndexError, KeyError, ValueError) as error:
        raise ValueError(
            f"`{name}` must be formatted with `i` alone (the 1-based frame number), got {template!r} "
            f"({type(error).__name__}: {error}); write a literal brace as '{{{{' / '}}}}'."
        ) from None
    return template


def check_processor_args(
    tokenizer: Any,
    image_size: object,
    patch_size: object,
    downsample_ratio: object,
    video_frame_template: object,
    system_message: object,
    **strings: Any,
) -> dict[str, str]:
    """The checks of `InternVLChatProcessor.__init__`; returns the placeholders and image token strings (`strings`,
    by argument name) with each image token given as None replaced by the tokenizer's (`start_image_token`, ...) or
    the default (`<img>`, `</img>`, `<IMG_CONTEXT>`).

    Raises:
        TypeError: a size that is not an int, a ratio that is not a number, a placeholder / token / template that is
            not a str (an image token may be None), a `system_message` neither a str nor None.
        ValueError: no tokenizer, `image_size` outside `1..MAX_IMAGE_SIZE` or no multiple of `patch_size`, a ratio
            outside (0, 1], an empty placeholder / token string, a frame template without `{i}`
            (`check_frame_template`), two equal strings, or a placeholder inside another string or containing one.
    """
    if tokenizer is None:
        raise ValueError("`tokenizer` is required.")
    check_image_size("image_size", image_size)
    tokens_per_tile(image_size, patch_size, downsample_ratio)  # type and range of each, at least one token per tile
    if image_size % patch_size:
        raise ValueError(f"`image_size` ({image_size}) must be a multiple of `patch_size` ({patch_size}).")
    check_downsample_ratio(image_size, patch_size, downsample_ratio)  # as the model config (0.3: no pixel unshuffle)
    check_frame_template("video_frame_template", video_frame_template)
    if system_message is not None and not isinstance(system_message, str):
        raise TypeError(f"`system_message` must be a str or None, got {type(system_message).__name__}.")
    resolved = {}
    for name, value in strings.items():
        if value is None and name in _IMAGE_TOKENS:
            attribute, default = _IMAGE_TOKENS[name]
            value = getattr(tokenizer, attribute, None) or default
        resolved[name] = _check_text_option(name, value)
    names = list(resolved)
    for index, first in enumerate(names):
        for second in names[index + 1 :]:
            a, b = resolved[first], resolved[second]
            # Placeholders are found in the text by their string, image tokens refused in it: none may hide another.
            # Image tokens only need to differ (the tokenizer matches the longest special token).
            if a == b or ("placeholder" in first + second and (a in b or b in a)):
                raise ValueError(
                    f"`{first}` ({a!r}) and `{second}` ({b!r}) must differ"
                    + (" and neither may contain the other." if "placeholder" in first + second else ".")
                )
    return resolved
