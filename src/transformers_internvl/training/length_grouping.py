"""`group_by_length` for InternVL fine-tuning: per-row length estimates, as the original computes them, for
transformers' `LengthGroupedSampler`.

Source: `LazySupervisedDataset.__init__` in `internvl_chat/internvl/train/internvl_chat_finetune.py` (with
`--group_by_length True`, which the InternVL 2.5 fine-tuning scripts pass). A row's length is its `length` field when
it has one (precomputed by the user, as in the original; an integer in 0..2**63-1 or a whole-number float, any other
value is warned about and estimated), else the token count of its turns' texts joined by `"\\n"`
(`tokenizer(text)`, special tokens included) plus `num_image_token * (max_dynamic_patch + use_thumbnail)`, the
tokens of a full tile budget. The estimate is computed from the JSON text alone: no image or video is opened, so
start-up stays cheap on large datasets (transformers' own fallback would build every sample, decoding and tiling
every image, to measure its length).

Difference, on purpose: the original caches the token count by the joined text's CHARACTER count, so a row whose
character count was already seen gets the earlier row's token count, and the first row of each character count
gets no image term; here every row gets its own token count and the image term.

The original hands these lengths to its own LLaVA-style sampler (`internvl/patch/train_sampler_patch.py`); here they
go to transformers' `LengthGroupedSampler` (`InternVLTrainer`, `training.sft.sft_trainer`), which groups the same
way up to its random mega-batch split.
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)

_CHUNK = 1024  # texts per tokenizer call
_MAX_LENGTH = 2**63 - 1  # a precomputed length must fit a length column (int64; TRL's samplers read one)


def _row_texts(item: Any) -> list[str] | None:
    """The turn texts of a parsed row (`conversations` values, or the texts of `messages`), None when unusable."""
    from .labels import SampleError
    from .messages import messages_to_conversations

    if not isinstance(item, dict):
        return None
    if "messages" in item:
        try:
            conversations = messages_to_conversations(item["messages"])[0]
        except (SampleError, AttributeError, TypeError, KeyError):  # e.g. `messages` an object, not a list
            return None
    else:
        conversations = item.get("conversations")
    if not isinstance(conversations, list):
        return None
    texts = [turn.get("value") for turn in conversations if isinstance(turn, dict)]
    return texts if all(isinstance(text, str) for text in texts) else None


def _precomputed(item: Any, source: str) -> int | None:
    if not isinstance(item, dict) or "length" not in item:
        return None
    length = item["length"]
    if isinstance(length, float) and math.isfinite(length) and length.is_integer():
        length = int(length)  # a whole number written as a float (pandas does): the original uses it as is
    if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= _MAX_LENGTH:
        logger.warning_once(
            f"Row {source}: `length` must be an integer in 0..{_MAX_LENGTH} (a token count), got {length!r}; "
            "its length is estimated from the text instead."
        )
        return None
    return length


def has_estimates(dataset) -> bool:
    """Whether `estimated_lengths` applies: an `InternVLSupervisedDataset`, or a torch `ConcatDataset` of them (the
    original concatenates its datasets' lengths the same way)."""
    from .data import InternVLSupervisedDataset

    if isinstance(dataset, torch.utils.data.ConcatDataset):
        return all(has_estimates(part) for part in dataset.datasets)
    return isinstance(dataset, InternVLSupervisedDataset)


def estimated_lengths(dataset) -> list[int]:
    """Length estimate (tokens) of every row of an `InternVLSupervisedDataset` (or a `ConcatDataset` of them), in row
    order (see the module docstring). A row that is not valid JSON or has no usable texts gets 0 (it is skipped when
    read anyway).

    Each distinct row text is parsed and tokenized once (rows repeated by `repeat_time` share the work); the
    texts are tokenized in batched calls of `_CHUNK` texts."""
    if isinstance(dataset, torch.utils.data.ConcatDataset):
        return [length for part in dataset.datasets for length in estimated_lengths(part)]
    use_thumbnail = bool(getattr(dataset.image_processor, "use_thumbnail", True))
    estimates: dict[tuple[str, int], int | None] = {}  # (row text, max_dynamic_patch) -> precomputed length
    pending: dict[str, list[tuple[str, int]]] = {}  # joined text -> keys waiting for its token count
    keys = []
    for row in dataset.rows:
        text = row.text if isinstance(row.text, str) else json.dumps(row.text, sort_keys=True, default=str)
        key = (text, row.max_dynamic_patch)
        keys.append(key)
        if key in estimates:
            continue
        try:
            item = json.loads(row.text) if isinstance(row.text, str) else row.text
        except json.JSONDecodeError:
            item = None
        length = _precomputed(item, row.source)
        estimates[key] = length
        if length is None:
            texts = _row_texts(item)
            if texts is None:
                estimates[key] = 0
            else:
                pending.setdefault("\n".join(texts), []).append(key)
    joined = list(pending)
    for start in range(0, len(joined), _CHUNK):  # batched calls, in chunks to bound the memory of the ids
        chunk = joined[start : start + _CHUNK]
        for text, ids in zip(chunk, dataset.tokenizer(chunk)["input_ids"]):
            for key in pending[text]:
                estimates[key] = len(ids) + dataset.num_image_token * (key[1] + use_thumbnail)
    return [estimates[key] for key in keys]


def length_grouped_sampler(dataset, batch_size: int, generator=None):
    """transformers' `LengthGroupedSampler` over `dataset` with `estimated_lengths(dataset)`; `batch_size` = the
    per-device batch size times the gradient accumulation steps (what `Trainer` passes)."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    return LengthGroupedSampler(batch_size, lengths=estimated_lengths(dataset), generator=generator)
