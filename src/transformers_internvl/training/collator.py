"""Batch collators for InternVL fine-tuning: padded batches and packed rows, and the original loss weighting.

Packing follows the original's packed training (`internvl_chat/internvl/train/dataset_packed.py`): several samples
share a row, position ids restart at 0 for every sample and attention stays inside each sample. Here the last point
uses transformers' own packed-sequence support: the collator returns `position_ids` and NO `attention_mask`;
`transformers.masking_utils.find_packed_sequence_indices` then detects the restarts and builds a block-diagonal
causal mask (eager / sdpa), and the flash-attention paths use the same position ids as varlen boundaries. This needs
the model to run without a KV cache during training (`use_cache = False` in `model.config` AND
`model.config.text_config`, which `training.stages.set_trainable` does): transformers skips the packed detection
when a cache object exists, and the language model creates one when its own config says `use_cache=True`.

Packed and unpacked losses are equal (up to float rounding) except with InternLM2's dynamic NTK RoPE
(`rope_scaling.type "dynamic"`) on rows longer than `max_position_embeddings`: its RoPE base follows the key length
of the forward pass, which for a packed row is the row's length, as in the original's packed training
(`internvl_chat/internvl/model/internlm2/modeling_internlm2.py`, `rotary_emb(value_states, seq_len=kv_seq_len)`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..modeling.causal_lm_loss import weighted_lm_loss  # noqa: F401  (defined with the model's loss; kept here)
from .labels import IGNORE_INDEX

LOSS_REDUCTIONS = ("token", "sample", "square")


def len2weight(num_supervised: int, loss_reduction: str) -> float:
    """Weight of each supervised token of a sample with `num_supervised` of them (original `len2weight`,
    `internvl_chat_finetune.py`): `token` -> 1, `sample` -> 1/x, `square` -> 1/sqrt(x); 0 when x == 0.

    Raises `ValueError` for another `loss_reduction`."""
    if loss_reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"`loss_reduction` must be one of {LOSS_REDUCTIONS}, got {loss_reduction!r}.")
    if num_supervised == 0:
        return 0.0
    if loss_reduction == "token":
        return 1.0
    if loss_reduction == "sample":
        return 1.0 / num_supervised
    return 1.0 / num_supervised**0.5


def _check_samples(samples: Sequence[dict]) -> None:
    if not samples:
        raise ValueError("The collator got an empty list of samples.")
    for index, sample in enumerate(samples):
        for key in ("input_ids", "labels", "pixel_values", "image_flags"):
            if key not in sample:
                raise ValueError(f"sample {index} has no {key!r} (keys: {sorted(sample)}).")
        if sample["input_ids"].shape != sample["labels"].shape:
            raise ValueError(
                f"sample {index}: input_ids {tuple(sample['input_ids'].shape)} and labels "
                f"{tuple(sample['labels'].shape)} differ in shape."
            )


def _sample_weights(labels: torch.Tensor, loss_reduction: str) -> torch.Tensor:
    weight = len2weight(int((labels != IGNORE_INDEX).sum()), loss_reduction)
    return torch.where(labels == IGNORE_INDEX, 0.0, weight).to(torch.float32)


class InternVLDataCollator:
    """Right-padded batches of `InternVLSupervisedDataset` samples.

    Returns `input_ids`, `labels` (-100 on padding), `attention_mask` `(batch, seq)`, `pixel_values`
    `(total_tiles, 3, S, S)` (tiles of all samples in batch order), `image_flags` `(total_tiles,)`, and with
    `loss_reduction` other than `"token"` a `loss_weight` `(batch, seq)` float tensor (see `weighted_lm_loss`).

    Args:
        pad_token_id: the tokenizer's `pad_token_id`.
        pad_to_multiple_of: round the padded length up to a multiple of this.
        loss_reduction: `"token"` (default; the model's own mean loss), `"sample"` or `"square"`.

    Differs from the original's `concat_pad_data_collator` (`internvl/patch/pad_data_collator.py`) on purpose: its
    `attention_mask` is `input_ids != pad_id` with `pad_id=0` as the fine-tuning script calls it, so with Qwen2
    tokenizers every `!` (id 0) in a prompt or answer is masked out of attention; here the mask covers padding only.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None, loss_reduction: str = "token"):
        if pad_token_id is None:
            raise ValueError("`pad_token_id` is None: set the tokenizer's pad token first.")
        len2weight(1, loss_reduction)
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.loss_reduction = loss_reduction

    def _length(self, longest: int) -> int:
        multiple = self.pad_to_multiple_of
        return longest if not multiple else -(-longest // multiple) * multiple

    def __call__(self, samples: Sequence[dict]) -> dict[str, torch.Tensor]:
        _check_samples(samples)
        length = self._length(max(len(s["input_ids"]) for s in samples))
        input_ids = torch.full((len(samples), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(samples), length), dtype=torch.long)
        for row, sample in enumerate(samples):
            n = len(sample["input_ids"])
            input_ids[row, :n] = sample["input_ids"]
            labels[row, :n] = sample["labels"]
            attention_mask[row, :n] = 1
        batch = {
            "input_ids": input_ids,
            "labels": labels,
            "attention_mask": attention_mask,
            "pixel_values": torch.cat([s["pixel_values"] for s in samples]),
            "image_flags": torch.cat([s["image_flags"] for s in samples]),
        }
        if self.loss_reduction != "token":
            batch["loss_weight"] = torch.stack([_sample_weights(row, self.loss_reduction) for row in labels])
        return batch


class InternVLPackingCollator(InternVLDataCollator):
    """Packs the samples of a batch into as few rows of at most `max_tokens` tokens as first-fit allows.

    Samples keep their order inside each row; the tiles of all samples are concatenated in row order, then sample
    order, matching the order of their images in `input_ids`. Returns `input_ids`, `labels` (-100 on padding),
    `position_ids` (restarting at 0 for every sample and for the row's padding tail), `pixel_values`,
    `image_flags`, and with `loss_reduction` other than `"token"` a per-token `loss_weight` (the original
    `get_cu_seqlens_and_indexes`: every supervised token of a sample weighs `len2weight(its supervised count)`).
    No `attention_mask` is returned: transformers builds the per-sample causal mask from `position_ids` (module
    docstring).

    Args:
        pad_token_id: the tokenizer's `pad_token_id`.
        max_tokens: token budget of a row (the original's `max_packed_tokens`, 16384 for InternVL 2.5).
        max_tiles: optional tile budget of a row (the original's `num_images_expected`, 48).
        loss_reduction: `"token"`, `"sample"` or `"square"` (InternVL 2.5 uses `square`).

    Raises `ValueError` when one sample alone exceeds `max_tokens` or `max_tiles`.
    """

    def __init__(
        self,
        pad_token_id: int,
        max_tokens: int,
        max_tiles: int | None = None,
        loss_reduction: str = "token",
        pad_to_multiple_of: int | None = None,
    ):
        super().__init__(pad_token_id, pad_to_multiple_of, loss_reduction)
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"`max_tokens` must be a positive int, got {max_tokens!r}.")
        self.max_tokens = max_tokens
        self.max_tiles = max_tiles

    def pack(self, samples: Sequence[dict]) -> list[list[int]]:
        """Indices of the samples of each row (first fit, in order)."""
        rows: list[list[int]] = []
        used: list[tuple[int, int]] = []
        for index, sample in enumerate(samples):
            tokens, tiles = len(sample["input_ids"]), len(sample["image_flags"])
            if tokens > self.max_tokens or (self.max_tiles is not None and tiles > self.max_tiles):
                raise ValueError(
                    f"sample {index} has {tokens} tokens and {tiles} tiles; a row holds at most "
                    f"max_tokens={self.max_tokens} tokens and max_tiles={self.max_tiles} tiles. Give the dataset a "
                    f"`max_length` of at most max_tokens (it then skips longer samples, as the original clamps its "
                    f"datasets' `max_tokens` to `max_packed_tokens`)."
                )
            for row, (row_tokens, row_tiles) in enumerate(used):
                fits_tiles = self.max_tiles is None or row_tiles + tiles <= self.max_tiles
                if row_tokens + tokens <= self.max_tokens and fits_tiles:
                    rows[row].append(index)
                    used[row] = (row_tokens + tokens, row_tiles + tiles)
                    break
            else:
                rows.append([index])
                used.append((tokens, tiles))
        return rows

    def __call__(self, samples: Sequence[dict]) -> dict[str, torch.Tensor]:
        _check_samples(samples)
        rows = self.pack(samples)
        length = self._length(max(sum(len(samples[i]["input_ids"]) for i in row) for row in rows))
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros((len(rows), length), dtype=torch.long)
        loss_weight = torch.zeros((len(rows), length), dtype=torch.float32)
        pixel_values, image_flags = [], []
        for r, row in enumerate(rows):
            start = 0
            for i in row:
                sample = samples[i]
                n = len(sample["input_ids"])
                input_ids[r, start : start + n] = sample["input_ids"]
                labels[r, start : start + n] = sample["labels"]
                position_ids[r, start : start + n] = torch.arange(n)
                loss_weight[r, start : start + n] = _sample_weights(sample["labels"], self.loss_reduction)
                pixel_values.append(sample["pixel_values"])
                image_flags.append(sample["image_flags"])
                start += n
            position_ids[r, start:] = torch.arange(length - start)
        batch = {
            "input_ids": input_ids,
            "labels": labels,
            "position_ids": position_ids,
            "pixel_values": torch.cat(pixel_values),
            "image_flags": torch.cat(image_flags),
        }
        if self.loss_reduction != "token":
            batch["loss_weight"] = loss_weight
        return batch
