"""Bookkeeping of `InternVLChatProcessor.__call__`: which images / videos belong to which text, and where each
placeholder of a text ended up after expansion (for transformers' assistant masks).

`split_per_sample` groups `images` (`videos`) by text: `None`; one item; a flat list (one sample, or distributed over
the texts by their placeholder counts, or one per text when no text has placeholders); one list per text.
`expansion_offsets` builds the expanded text from `(given, produced, is a placeholder)` segments and records every
change as `{"span": (start, end) in the text as given, "new_span": (start, end) in the produced text}`, which is
what `ProcessorMixin._adjust_assistant_masks_indices` reads.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..chat_templates import multi_image_prefix, template_data
from .control_tokens import PLACEHOLDER_ESCAPE, count_placeholders

__all__ = [
    "check_tile_side",
    "add_missing_placeholders",
    "expansion_offsets",
    "is_image",
    "is_video",
    "shift_for_inserted_prefix",
    "split_per_sample",
]


def _is_array(value: Any) -> bool:
    return isinstance(value, (np.ndarray, torch.Tensor))


def _is_file_like(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike, bytes, bytearray)) or hasattr(value, "read")


def is_image(value: Any) -> bool:
    """One image: PIL image, path / URL, encoded bytes / binary file, or a (H, W[, C]) / (C, H, W) array."""
    return isinstance(value, Image.Image) or _is_file_like(value) or (_is_array(value) and value.ndim in (2, 3))


def _is_frame(value: Any) -> bool:
    return isinstance(value, Image.Image) or (_is_array(value) and value.ndim in (2, 3))


def is_video(value: Any) -> bool:
    """One video: a file (path / URL / encoded bytes / binary file object), a (T, ...) 4-D array, or a non-empty list
    of frames (PIL images or 2-D / 3-D arrays)."""
    if _is_file_like(value):
        return True
    if _is_array(value):
        return value.ndim == 4
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(_is_frame(frame) for frame in value)


def split_per_sample(items: Any, texts: list[str], placeholder: str, is_item, name: str) -> list[list[Any]]:
    """Group images (or videos) by sample.

    Accepted: `None`; one item; a flat list (one sample, or distributed over the samples by their placeholder counts,
    or one per sample when no text has placeholders); a list with one list per sample.
    """
    batch_size = len(texts)
    if items is None:
        return [[] for _ in texts]
    if is_item(items):
        items = [items]
    elif _is_array(items) and items.ndim == (4 if name == "images" else 5):
        items = list(items)  # a stacked batch of images (N, H, W, C) or of videos (B, T, ...)
    if not isinstance(items, (list, tuple)):
        raise TypeError(f"`{name}` must be an item or a (nested) list of items, got {type(items).__name__}.")
    items = list(items)
    if not items:
        return [[] for _ in texts]
    if all(is_item(item) for item in items):
        if batch_size == 1:
            return [items]
        counts = [count_placeholders(text, placeholder) for text in texts]
        if sum(counts) == len(items):
            grouped, start = [], 0
            for count in counts:
                grouped.append(items[start : start + count])
                start += count
            return grouped
        if sum(counts) == 0 and len(items) == batch_size:
            return [[item] for item in items]
        raise ValueError(
            f"Cannot assign {len(items)} {name} to {batch_size} texts with {counts} {placeholder} placeholder(s); "
            f"pass one list of {name} per text."
        )
    if all(isinstance(sample, (list, tuple)) and all(is_item(item) for item in sample) for sample in items):
        if len(items) != batch_size:
            raise ValueError(f"Got {len(items)} lists of {name} for {batch_size} texts; expected one list per text.")
        return [list(sample) for sample in items]
    raise TypeError(
        f"`{name}` must be an item, a flat list of items or a list of lists (one per text); got an unsupported "
        f"structure."
    )


def _change(kind: str, start: int, given: str, new_start: int, output: str) -> dict[str, Any]:
    """One entry of `text_replacement_offsets`, with the keys of transformers' `get_text_with_replacements`."""
    return {
        "type": kind,
        "span": (start, start + len(given)),
        "new_span": (new_start, new_start + len(output)),
        "text": given,
        "replacement": output,
    }


def _split_at(segments: list[tuple[str, str, str | None]], cut: int) -> list[tuple[str, str, str | None]]:
    """`segments` with the text piece that runs over character `cut` of the given text split there."""
    out, position = [], 0
    for given, output, kind in segments:
        if kind is None and position < cut < position + len(given):
            head, tail = given[: cut - position], given[cut - position :]
            out += [(head, head, None), (tail, tail, None)]
        else:
            out.append((given, output, kind))
        position += len(given)
    return out


def _prefix_entries(prefix: str, items: list[tuple[str, int, int]]) -> list[dict[str, Any]]:
    """Entries of an added prefix (`Image-1: <image>\n...`, produced as `prefix`): one insertion at 0 per item, from
    its label through the line break after its expansion (`items`: kind, start, end of each expansion)."""
    if not items:
        return [_change("text", 0, "", 0, prefix)] if prefix else []
    entries, start = [], 0
    for index, (kind, _, end) in enumerate(items):
        bound = items[index + 1][1] if index + 1 < len(items) else len(prefix)
        line_break = prefix.find("\n", end, bound)
        stop = len(prefix) if index + 1 == len(items) else (line_break + 1 if line_break != -1 else bound)
        entries.append(_change(kind, 0, "", start, prefix[start:stop]))
        start = stop
    return entries


def expansion_offsets(
    segments: list[tuple[str, str, str | None]], prefix_length: int
) -> tuple[str, list[dict[str, Any]]]:
    """The text the tokenizer gets, and where each change to the text as given ended up.

    `segments` are `(given piece, produced piece, "image" / "video" for a placeholder or None for text)` in order over
    the text with its added prefix (the first `prefix_length` characters). Placeholders become their expansions and
    placeholder escapes (`control_tokens.PLACEHOLDER_ESCAPE`) are removed. Each change is an entry with transformers'
    `get_text_with_replacements` keys: `"type"` (`"image"`, `"video"`; `"text"` for a removed escape), `"span"`
    (start, end) in the text as given, `"new_span"` (start, end) in the produced text, `"text"` (the given piece) and
    `"replacement"` (the produced piece). Each item of the prefix is an insertion at 0 (`span` (0, 0), `text` "")
    whose `replacement` runs from its label through its line break. `ProcessorMixin._adjust_assistant_masks_indices`
    reads `span` / `new_span`.
    """
    offsets: list[dict[str, Any]] = []
    produced: list[str] = []
    items: list[tuple[str, int, int]] = []
    position = new_position = prefix_end = 0
    for given, output, kind in _split_at(segments, prefix_length):
        if position < prefix_length:  # the added prefix: entries per item, below
            if kind is not None:
                items.append((kind, new_position, new_position + len(output)))
            produced.append(output)
            position, new_position = position + len(given), new_position + len(output)
            prefix_end = new_position
            continue
        if kind is not None:
            offsets.append(_change(kind, position - prefix_length, given, new_position, output))
            produced.append(output)
            position, new_position = position + len(given), new_position + len(output)
            continue
        for part_index, part in enumerate(given.split(PLACEHOLDER_ESCAPE)):
            if part_index:  # an escape character, removed
                offsets.append(_change("text", position - prefix_length, PLACEHOLDER_ESCAPE, new_position, ""))
                position += len(PLACEHOLDER_ESCAPE)
            produced.append(part)
            position, new_position = position + len(part), new_position + len(part)
    text = "".join(produced)
    return text, _prefix_entries(text[:prefix_end], items) + offsets


def shift_for_inserted_prefix(offsets: list[dict[str, Any]], before: str) -> list[dict[str, Any]]:
    """`offsets` after `before` (special tokens) was put before the produced text: an insertion at 0 of type
    `"text"`, first."""
    if not before:
        return offsets
    length = len(before)
    shifted = [
        {**entry, "new_span": (entry["new_span"][0] + length, entry["new_span"][1] + length)} for entry in offsets
    ]
    return [_change("text", 0, "", 0, before), *shifted]


def _system_block_start(template: str | None) -> str:
    """The text a prompt rendered by conversation `template` starts with (its system template up to the message,
    e.g. `<|im_start|>system\n`); empty when `template` is None, unknown, or its prompts start with free text."""
    if template is None:
        return ""
    try:
        data = template_data(template)
    except (TypeError, ValueError):
        return ""
    start = str(data.get("system_template", "")).split("{system_message}")[0]
    return start if start.strip() else ""


def add_missing_placeholders(
    texts: list[str],
    images_per_sample: list[list[Any]],
    videos_per_sample: list[list[Any]],
    image_placeholder: str,
    video_placeholder: str,
    template: str | None = None,
) -> list[int]:
    """Prefix, in place, each text that has images (videos) but no placeholder with the official examples' prefix
    (`<image>\n` for one image, `Image-1: <image>\nImage-2: <image>\n...` for several; `<video>\n` per video),
    then check that every text has as many placeholders as items. Returns the prefix length of each text.

    The prefix goes where the original `chat()` puts `<image>\n`: before the question. A text already rendered by the
    conversation `template` (it starts with the template's system block, e.g. `<|im_start|>system\n`) has no such
    place at its start, so it must carry its placeholders.

    Raises:
        ValueError: a text whose placeholder count differs from the number of images (videos) given for it, or a
            rendered chat prompt of `template` with images (videos) but no placeholder.
    """
    system_block = _system_block_start(template)
    prefix_lengths = []
    for index, (sample_images, sample_videos) in enumerate(zip(images_per_sample, videos_per_sample)):
        prefix = ""
        for placeholder, items, name in (
            (image_placeholder, sample_images, "image"),
            (video_placeholder, sample_videos, "video"),
        ):
            if items and system_block and texts[index].startswith(system_block):
                if not count_placeholders(texts[index], placeholder):
                    raise ValueError(
                        f"Text {index} is a rendered chat prompt (it starts with {system_block!r}) but has no "
                        f"{placeholder} placeholder for its {len(items)} {name}(s): a prefix would land before the "
                        f"system message, not in the question. Put {{'type': '{name}'}} items in the message content "
                        f"(apply_chat_template) or {placeholder} in the question."
                    )
        if sample_images and not count_placeholders(texts[index], image_placeholder):
            prefix += multi_image_prefix(len(sample_images), image_placeholder)
        if sample_videos and not count_placeholders(texts[index], video_placeholder):
            prefix += (video_placeholder + "\n") * len(sample_videos)
        texts[index] = prefix + texts[index]
        prefix_lengths.append(len(prefix))
        for placeholder, items, name in (
            (image_placeholder, sample_images, "image"),
            (video_placeholder, sample_videos, "video"),
        ):
            count = count_placeholders(texts[index], placeholder)
            if count != len(items):
                raise ValueError(
                    f"Text {index} has {count} {placeholder} placeholder(s) but {len(items)} {name}(s) were given for "
                    f"it."
                )
    return prefix_lengths


def check_tile_side(side: int, image_size: int, num_image_token: int, name: str) -> None:
    """Refuse tiles of `side` px (`pixel_values.shape[-1]`) unless it is the processor's `image_size`: the text gets
    `num_image_token` tokens per `image_size` px tile (the model's `num_image_token`), so other tiles would not match
    their tokens.

    Raises:
        ValueError: names the tile side, the processor's `image_size` and how to change both together.
    """
    side = int(side)
    if side != image_size:
        raise ValueError(
            f"The {name} are {side} px but this processor writes {num_image_token} tokens per {image_size} px tile "
            f"(the model's num_image_token): a per-call `image_size` / `size` cannot change the tile size. Build the "
            f"processor (and the model config's `force_image_size`) for {side} px tiles instead."
        )
