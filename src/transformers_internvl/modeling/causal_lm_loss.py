"""The causal-LM loss of both LLM heads (`InternVLChatForConditionalGeneration`, `InternLM2ForCausalLM`), with one
check: `labels` need the logits of every position, which `logits_to_keep` may have cut (issue 13's prefill fast
path keeps only the last position's logits in `generate`); and the original chat model's per-token weighted loss
(`forward(..., loss_weight=...)`, `weighted_lm_loss`)."""

from __future__ import annotations

from typing import Any

import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = [
    "IGNORE_INDEX",
    "causal_lm_loss",
    "check_logits_for_labels",
    "pop_original_loss_options",
    "weighted_lm_loss",
]

IGNORE_INDEX = -100
"""Label of positions without a loss (the original's `IGNORE_TOKEN_ID`, PyTorch's `ignore_index` default)."""

ORIGINAL_LOSS_OPTIONS = ("loss_weight", "loss_reduction_all_gather", "statistics")
"""Keyword arguments of the original `InternVLChatModel.forward` that only its loss reads (`statistics`: counts the
original prints under `torch.distributed`)."""


def check_logits_for_labels(labels: torch.Tensor, logits_to_keep: int | torch.Tensor) -> None:
    """Refuse `labels` with a `logits_to_keep` that keeps fewer positions than the labels cover (transformers' loss
    fails then with "Expected input batch_size (1) to match target batch_size (290)", naming neither argument).

    Args:
        labels: `(batch, seq)` token ids (-100: ignored).
        logits_to_keep: `forward`'s argument: 0 (all positions), an int `k` (the last `k`), a tensor of positions
            (`(n,)` or `(batch, n)`), or a boolean `(batch, seq)` mask.

    Raises:
        ValueError: a negative int, an int `k` with `0 < k < seq`, a tensor of other than `seq` positions, or a mask that drops a
            position.
    """
    length = labels.shape[-1]
    if isinstance(logits_to_keep, torch.Tensor) and logits_to_keep.dtype == torch.bool:
        # A `(batch, seq)` mask (transformers' packed-training form) keeps its True positions, flattened.
        all_kept = bool(logits_to_keep.all())
        kept = logits_to_keep.shape[-1] if all_kept else int(logits_to_keep.sum(-1).min())
    elif isinstance(logits_to_keep, torch.Tensor):
        kept = logits_to_keep.shape[-1] if logits_to_keep.dim() else 1
    elif int(logits_to_keep) < 0:
        raise ValueError(f"`logits_to_keep` must be >= 0 (0: every position), got {logits_to_keep}.")
    else:
        kept = length if logits_to_keep == 0 else min(int(logits_to_keep), length)
    if kept != length:
        shown = (
            f"a {str(logits_to_keep.dtype).removeprefix('torch.')} tensor of shape {tuple(logits_to_keep.shape)}"
            if isinstance(logits_to_keep, torch.Tensor)
            else repr(logits_to_keep)
        )
        raise ValueError(
            f"`labels` cover {length} positions, but `logits_to_keep` ({shown}) keeps the logits of "
            f"{kept}: the loss needs every position. Pass `logits_to_keep=0` (the default) with `labels`, or compute "
            "the loss yourself from the kept logits."
        )


def pop_original_loss_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Remove the original forward's loss options (`ORIGINAL_LOSS_OPTIONS`) from `kwargs` (in place) and return
    `loss_weight` / `loss_reduction_all_gather` for `causal_lm_loss` (`statistics` is dropped: only printed there)."""
    options = {name: kwargs.pop(name) for name in ORIGINAL_LOSS_OPTIONS if name in kwargs}
    options.pop("statistics", None)
    return options


def weighted_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, loss_weight: torch.Tensor, all_gather: bool = False
) -> torch.Tensor:
    """`Σ CE·w / Σ w` over shifted targets, the original `InternVLChatModel.forward` with `loss_weight`
    (internvl_chat/internvl/model/internvl_chat/modeling_internvl_chat.py).

    Args:
        logits: `(batch, seq, vocab)`.
        labels: `(batch, seq)`, -100 = ignored.
        loss_weight: `(batch, seq)` per-token weights of the UNSHIFTED positions, as the collators return them.
        all_gather: the original's `loss_reduction_all_gather`: under `torch.distributed`, `Σ w` is averaged over
            the processes (the original's `all_reduce(AVG)`, done as a sum / world size so that gloo runs it too), so
            that DDP's gradient average gives the weighted mean over the global batch. No effect in one process.
    """
    shift_logits = logits[..., :-1, :].float().reshape(-1, logits.shape[-1])
    shift_labels = labels[..., 1:].reshape(-1).to(shift_logits.device)
    shift_weights = loss_weight[..., 1:].reshape(-1).to(shift_logits.device)
    losses = torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="none")
    total = shift_weights.sum()
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if all_gather and distributed and torch.distributed.get_world_size() > 1:
        total = total.detach().clone()
        torch.distributed.all_reduce(total)
        total = total / torch.distributed.get_world_size()
    return (losses * shift_weights).sum() / total


def causal_lm_loss(
    model: Any,
    logits: torch.Tensor,
    labels: torch.Tensor | None,
    logits_to_keep: int | torch.Tensor,
    vocab_size: int,
    loss_weight: torch.Tensor | list | None = None,
    loss_reduction_all_gather: bool = False,
    **kwargs: Any,
) -> torch.Tensor | None:
    """`model.loss_function(logits=..., labels=..., vocab_size=...)` (transformers' shifted cross-entropy) after
    `check_logits_for_labels`; None without labels. With `loss_weight` (a `(batch, seq)` tensor or nested list of
    per-token weights, as the original's collator passes it), the original's weighted loss instead
    (`weighted_lm_loss`); without `labels` it is ignored, as in the original. That loss is the micro-batch's weighted
    mean: a transformers `Trainer` that passes `num_items_in_batch` takes the loss for already scaled to the gradient
    accumulation and does not divide it by the accumulation steps (the original's Trainer did), which is warned about
    once (`training.trainer.InternVLTrainer` divides it).

    Raises:
        ValueError: `loss_weight` does not have the shape of `labels`.
    """
    if labels is None:
        return None
    check_logits_for_labels(labels, logits_to_keep)
    if loss_weight is not None:
        loss_weight = torch.as_tensor(loss_weight, dtype=torch.float32, device=labels.device)
        if loss_weight.shape != labels.shape:
            raise ValueError(
                f"`loss_weight` must have the shape of `labels` {tuple(labels.shape)} (one weight per token), got "
                f"{tuple(loss_weight.shape)}."
            )
        if kwargs.get("num_items_in_batch") is not None:
            logger.warning_once(
                "forward(loss_weight=...) gives each micro-batch's weighted mean loss, as the original; a transformers "
                "Trainer that passes `num_items_in_batch` does not divide it by the gradient-accumulation steps (the "
                "original's Trainer did), so with gradient_accumulation_steps > 1 the loss and gradients are that many "
                "times the original's: train with transformers_internvl.training.trainer.InternVLTrainer, which "
                "divides it."
            )
        return weighted_lm_loss(logits, labels, loss_weight, all_gather=loss_reduction_all_gather)
    return model.loss_function(logits=logits, labels=labels, vocab_size=vocab_size, **kwargs)
