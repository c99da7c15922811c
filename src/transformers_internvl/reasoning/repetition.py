"""The original training-data repetition filter's statistic (importable without torch or transformers).

The only repetition code in the InternVL repository is the (disabled) training-data filter
(`internvl_chat/internvl/train/dataset.py`, `calculate_ngram_repetition` / `check_conversations_repetition`): the
share of distinct whitespace 10-grams that occur more than once, samples above 0.4 rejected. [`repetition_ratio`] and
[`is_repetitive`] reproduce it; `reasoning.stopping.RepetitionStoppingCriteria` applies the same statistic to token
ids during `generate`.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

REPETITION_NGRAM_SIZE = 10
REPETITION_THRESHOLD = 0.4


def repetition_ratio(text_or_tokens: str | Sequence[Any] | torch.Tensor, n: int = REPETITION_NGRAM_SIZE) -> float:
    """The original data filter's statistic (`calculate_ngram_repetition`, dataset.py L43-58).

    A string is split on whitespace; a sequence (or 1-D tensor) of tokens is used as is. Over its n-grams:
    `(number of distinct n-grams that occur more than once) / (total number of n-grams)`; 0.0 when there are fewer
    than `n` tokens.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"`n` must be a positive int, got {n!r}.")
    if isinstance(text_or_tokens, str):
        tokens: Sequence[Any] = text_or_tokens.split()
    elif (torch := sys.modules.get("torch")) is not None and isinstance(text_or_tokens, torch.Tensor):
        # A tensor exists only once torch is imported: a string or list never imports torch here.
        if text_or_tokens.ndim != 1:
            raise ValueError(f"`text_or_tokens` as a tensor must be 1-D, got shape {tuple(text_or_tokens.shape)}.")
        tokens = text_or_tokens.tolist()
    else:
        tokens = list(text_or_tokens)
    ngrams = [tuple(tokens[index : index + n]) for index in range(len(tokens) - n + 1)]
    if not ngrams:
        return 0.0
    repeated = sum(1 for count in Counter(ngrams).values() if count > 1)
    return repeated / len(ngrams)


def is_repetitive(
    text_or_tokens: str | Sequence[Any] | torch.Tensor,
    n: int = REPETITION_NGRAM_SIZE,
    threshold: float = REPETITION_THRESHOLD,
) -> bool:
    """The original filter's decision: `repetition_ratio(text_or_tokens, n) > threshold` (10-grams, 0.4)."""
    return repetition_ratio(text_or_tokens, n) > threshold


__all__ = ["REPETITION_NGRAM_SIZE", "REPETITION_THRESHOLD", "is_repetitive", "repetition_ratio"]
