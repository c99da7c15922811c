"""Logits processors and stopping criteria in `chat()` / `batch_chat()` see the generated tokens only.

The original `InternVLChatModel.generate` (internvl_chat/internvl/model/internvl_chat/modeling_internvl_chat.py) calls
`language_model.generate(inputs_embeds=...)` without `input_ids`, so transformers' logits processors and stopping
criteria receive only the tokens generated so far: `repetition_penalty` never penalises a token of the prompt (the
system message, the question, earlier answers of the history), `no_repeat_ngram_size` never bans an n-gram seen in
the prompt, a multi-token `bad_words_ids` / `sequence_bias` entry never matches across the end of the prompt,
`forced_bos_token_id` forces the second generated token (the first step where the sequence has length 1),
`encoder_repetition_penalty` / `encoder_no_repeat_ngram_size` are ignored (no `input_ids`; transformers warns), and
the caller's own `logits_processor`, `stopping_criteria` and `prefix_allowed_tokens_fn` are given the generated tokens,
and a `streamer` receives an empty prompt (with `skip_prompt=False` it streams the answer only, not the prompt).
Here `generate` runs on `input_ids`; without this module these settings also act on the prompt and change answers.
Length settings (`min_length`, `max_length`, `min_new_tokens`, `exponential_decay_length_penalty`,
`begin_suppress_tokens`, `forced_eos_token_id`) are relative to the prompt in both and need nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.logits_process import (
    ForcedBOSTokenLogitsProcessor,
    NoBadWordsLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SequenceBiasLogitsProcessor,
)
from transformers.generation.streamers import BaseStreamer


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


class GeneratedTokensLogitsProcessor(LogitsProcessor):
    """Runs `processor` on the tokens after the first `prompt_length` columns of `input_ids`."""

    def __init__(self, processor: Callable, prompt_length: int):
        self.processor = processor
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return self.processor(input_ids[:, self.prompt_length :], scores)


class GeneratedTokensStoppingCriteria(StoppingCriteria):
    """Runs the stopping criterion `criteria` on the tokens after the first `prompt_length` columns."""

    def __init__(self, criteria: Callable, prompt_length: int):
        self.criteria = criteria
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return self.criteria(input_ids[:, self.prompt_length :], scores, **kwargs)


class _GeneratedTokensPrefixFunction:
    """`prefix_allowed_tokens_fn(batch_id, tokens)` called with the generated tokens of the row only."""

    def __init__(self, function: Callable, prompt_length: int):
        self.function = function
        self.prompt_length = prompt_length

    def __call__(self, batch_id: int, tokens: torch.Tensor):
        return self.function(batch_id, tokens[self.prompt_length :])


class GeneratedTokensStreamer(BaseStreamer):
    """Forwards to `streamer`, with the prompt (`generate`'s first `put`) replaced by an empty `(batch, 0)` tensor, as
    the original's `generate` from embeddings puts it."""

    def __init__(self, streamer: BaseStreamer):
        self.streamer = streamer
        self.prompt_done = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_done:
            self.prompt_done = True
            value = value[..., :0]
        self.streamer.put(value)

    def end(self) -> None:
        self.streamer.end()


def generated_only_penalties(
    kwargs: dict[str, Any], prompt_length: int, config: GenerationConfig | None
) -> dict[str, Any]:
    """`generate` kwargs for one chat call whose prompt-reading settings (from `kwargs` or `config`, the effective
    generation config; None: `kwargs` are left to `generate` as they are) act on the tokens after `prompt_length`
    only, as in the original (see the module docstring). Returns a new dict (the same one when nothing applies); the
    caller's `logits_processor` / `stopping_criteria` lists are not modified."""
    if config is None:
        return kwargs
    changes: dict[str, Any] = {}
    extra: list[LogitsProcessor] = []
    # In the order `generate` builds its own processors; they run after `generate`'s remaining ones (masks, before
    # the sampling warpers), which give the same scores: the masks set -inf, which the penalty, the bias and the
    # bans keep.
    if config.sequence_bias is not None:
        extra.append(GeneratedTokensLogitsProcessor(SequenceBiasLogitsProcessor(config.sequence_bias), prompt_length))
        changes["sequence_bias"] = None
    if config.encoder_repetition_penalty is not None and config.encoder_repetition_penalty != 1.0:
        changes["encoder_repetition_penalty"] = 1.0  # the original has no input ids: transformers ignores it
    if config.repetition_penalty is not None and config.repetition_penalty != 1.0:
        extra.append(
            GeneratedRepetitionPenaltyLogitsProcessor(config.repetition_penalty, prompt_ignore_length=prompt_length)
        )
        changes["repetition_penalty"] = 1.0
    if config.no_repeat_ngram_size is not None and config.no_repeat_ngram_size > 0:
        extra.append(GeneratedNoRepeatNGramLogitsProcessor(config.no_repeat_ngram_size, prompt_length))
        changes["no_repeat_ngram_size"] = 0
    if config.encoder_no_repeat_ngram_size is not None and config.encoder_no_repeat_ngram_size > 0:
        changes["encoder_no_repeat_ngram_size"] = 0  # ignored by the original's generate as well
    if config.bad_words_ids is not None:
        banned = NoBadWordsLogitsProcessor(config.bad_words_ids, config.eos_token_id)
        extra.append(GeneratedTokensLogitsProcessor(banned, prompt_length))
        changes["bad_words_ids"] = None
    if config.forced_bos_token_id is not None:
        extra.append(
            GeneratedTokensLogitsProcessor(ForcedBOSTokenLogitsProcessor(config.forced_bos_token_id), prompt_length)
        )
        changes["forced_bos_token_id"] = None
    if kwargs.get("logits_processor"):
        extra += [GeneratedTokensLogitsProcessor(processor, prompt_length) for processor in kwargs["logits_processor"]]
    if extra:
        changes["logits_processor"] = LogitsProcessorList(extra)
    if kwargs.get("stopping_criteria"):
        changes["stopping_criteria"] = StoppingCriteriaList(
            GeneratedTokensStoppingCriteria(criteria, prompt_length) for criteria in kwargs["stopping_criteria"]
        )
    if kwargs.get("streamer") is not None:
        changes["streamer"] = GeneratedTokensStreamer(kwargs["streamer"])
    if kwargs.get("prefix_allowed_tokens_fn") is not None:
        changes["prefix_allowed_tokens_fn"] = _GeneratedTokensPrefixFunction(
            kwargs["prefix_allowed_tokens_fn"], prompt_length
        )
    return {**kwargs, **changes} if changes else kwargs


__all__ = [
    "GeneratedNoRepeatNGramLogitsProcessor",
    "GeneratedTokensLogitsProcessor",
    "GeneratedTokensStoppingCriteria",
    "GeneratedTokensStreamer",
    "GeneratedRepetitionPenaltyLogitsProcessor",
    "generated_only_penalties",
]
