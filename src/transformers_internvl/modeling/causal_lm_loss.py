"""The causal-LM loss of both LLM heads (`InternVLChatForConditionalGeneration`, `InternLM2ForCausalLM`), with one
check: `labels` need the logits of every position, which `logits_to_keep` may have cut (issue 13's prefill fast
path keeps only the last position's logits in `generate`)."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["causal_lm_loss", "check_logits_for_labels"]


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


def causal_lm_loss(
    model: Any,
    logits: torch.Tensor,
    labels: torch.Tensor | None,
    logits_to_keep: int | torch.Tensor,
    vocab_size: int,
    **kwargs: Any,
) -> torch.Tensor | None:
    """`model.loss_function(logits=..., labels=..., vocab_size=...)` (transformers' shifted cross-entropy) after
    `check_logits_for_labels`; None without labels."""
    if labels is None:
        return None
    check_logits_for_labels(labels, logits_to_keep)
    return model.loss_function(logits=logits, labels=labels, vocab_size=vocab_size, **kwargs)
