"""Repetition penalty and `no_repeat_ngram_size` in `chat()` / `batch_chat()` see the generated tokens only.

The original `InternVLChatModel.generate` (internvl_chat/internvl/model/internvl_chat/modeling_internvl_chat.py) calls
`language_model.generate(inputs_embeds=...)` without `input_ids`, so transformers' logits processors receive only the
tokens generated so far: `repetition_penalty` never penalises a token of the prompt (the system message, the question,
earlier answers of the history) and `no_repeat_ngram_size` never bans an n-gram seen in the prompt. Here `generate`
runs on `input_ids`; without this module both settings also act on the prompt and change answers (already the second
turn of a conversation, whose prompt holds the first answer). Length settings (`min_length`, `max_length`,
`exponential_decay_length_penalty`, `begin_suppress_tokens`) are relative to the prompt in both and need nothing.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessorList
from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor


class GeneratedRepetitionPenaltyLogitsProcessor(RepetitionPenaltyLogitsProcessor):
    """`RepetitionPenaltyLogitsProcessor` with `prompt_ignore_length`, under its own type (`generate` would replace its
    own processor by one of the same type, with a warning)."""


class GeneratedNoRepeatNGramLogitsProcessor(NoRepeatNGramLogitsProcessor):
    """`NoRepeatNGramLogitsProcessor` over the tokens after the first `prompt_length` columns of `input_ids`."""

    def __init__(self, ngram_size: int, prompt_length: int):
        super().__init__(ngram_size)
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return super().__call__(input_ids[:, self.prompt_length :], scores)


def generated_only_penalties(
    kwargs: dict[str, Any], prompt_length: int, config: GenerationConfig | None
) -> dict[str, Any]:
    """`generate` kwargs for one chat call whose `repetition_penalty` / `no_repeat_ngram_size` (from `kwargs` or
    `config`, the effective generation config; None: `kwargs` are left to `generate` as they are) act on the
    tokens after `prompt_length` only, as in the original. Returns a new dict; the caller's `logits_processor` list
    is not modified."""
    if config is None:
        return kwargs
    penalty = config.repetition_penalty
    ngram_size = config.no_repeat_ngram_size
    extra = []
    if penalty is not None and penalty != 1.0:
        # Applied after `generate`'s own processors (masks, before the sampling warpers): same scores, since a
        # multiplicative penalty commutes with them.
        extra.append(GeneratedRepetitionPenaltyLogitsProcessor(penalty, prompt_ignore_length=prompt_length))
        kwargs = {**kwargs, "repetition_penalty": 1.0}
    if ngram_size is not None and ngram_size > 0:
        extra.append(GeneratedNoRepeatNGramLogitsProcessor(ngram_size, prompt_length))
        kwargs = {**kwargs, "no_repeat_ngram_size": 0}
    if not extra:
        return kwargs
    processors = LogitsProcessorList(kwargs.get("logits_processor") or [])
    processors.extend(extra)
    return {**kwargs, "logits_processor": processors}


__all__ = [
    "GeneratedNoRepeatNGramLogitsProcessor",
    "GeneratedRepetitionPenaltyLogitsProcessor",
    "generated_only_penalties",
]
