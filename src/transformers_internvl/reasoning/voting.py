"""Majority voting over sampled chain-of-thought responses.

Majority voting is described in the InternVL 2.5 paper only (no code from that period; see
`shared/design/original-behaviour.md` §9). [`majority_vote`] and [`generate_with_votes`] implement it
deterministically: sampling is seeded, ties go to the answer seen first.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..answer_decoding import decode_answers, stop_token_ids
from ..modeling.input_checks import python_scalar
from .answers import parse_boxed_answer


def normalize_answer(answer: str) -> str:
    """Default voting key: surrounding whitespace stripped and inner whitespace runs collapsed to one space."""
    return " ".join(answer.split())


def majority_vote(
    answers: Iterable[str | None], normalize: Callable[[str], str] | None = normalize_answer
) -> tuple[str | None, dict[str, int]]:
    """The most frequent answer and the vote counts.

    Args:
        answers: parsed answers; `None` (unparseable response) casts no vote.
        normalize: maps an answer to its voting key (default [`normalize_answer`]; `None` uses answers verbatim).

    Returns:
        `(answer, counts)`: `counts` maps each key to its votes, in order of first appearance; `answer` is the key
        with most votes, a tie going to the key that appeared first; `(None, {})` when nothing could vote.
    """
    counts: dict[str, int] = {}
    for answer in answers:
        if answer is None:
            continue
        if not isinstance(answer, str):
            raise TypeError(f"`answers` must hold str or None, got {type(answer).__name__}.")
        key = normalize(answer) if normalize is not None else answer
        counts[key] = counts.get(key, 0) + 1
    if not counts:
        return None, {}
    # `max` returns the first maximal item, and dicts keep insertion order: ties go to the first-seen answer.
    winner = max(counts, key=counts.__getitem__)
    return winner, counts


@dataclass
class VoteResult:
    """Outcome of [`generate_with_votes`].

    Attributes:
        answer: the voted answer (a normalized key), or `None` when no response could be parsed.
        counts: votes per normalized answer, in order of first appearance.
        responses: the `num_votes` decoded responses (prompt excluded, special tokens skipped, stripped).
        parsed_answers: what the answer parser returned for each response (`None`: no vote).
    """

    answer: str | None
    counts: dict[str, int]
    responses: list[str] = field(default_factory=list)
    parsed_answers: list[str | None] = field(default_factory=list)


def _batch_size_of(inputs: Mapping[str, Any]) -> int:
    for key in ("input_ids", "inputs_embeds"):
        value = inputs.get(key)
        if isinstance(value, torch.Tensor):
            return value.shape[0]
    raise ValueError(
        "`inputs` must contain `input_ids` (or `inputs_embeds`) as a tensor of shape (1, sequence_length)."
    )


def _needs_manual_expansion(model: Any, inputs: Mapping[str, Any]) -> bool:
    """Whether `generate(num_return_sequences=N)` would mis-order some input.

    `generate` repeats each tensor input row-wise (`repeat_interleave`). That is right for tensors with one row per
    sequence, but a flat tile batch such as InternVL's `pixel_values` `(num_tiles, 3, 448, 448)` would become
    `t0 t0 t1 t1 ...` instead of `t0 t1 t0 t1`, unless the model pre-encodes images (`mm_encoder_outputs`).
    """
    supports_encoder_outputs = getattr(model, "_supports_mm_encoder_outputs", None)
    if callable(supports_encoder_outputs) and supports_encoder_outputs():
        return False
    return any(isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] != 1 for value in inputs.values())


def _checked_seed(seed: Any) -> int:
    """`seed` as the int `torch.manual_seed` takes unchanged: 1.5 and "1" were taken as seed 1 (silently), None and
    2**64 failed inside torch. Raises `TypeError` (not an integer; bools too) or `ValueError` (out of range)."""
    allowed = "`seed` must be an int in -2**63..2**64 - 1"
    seed = python_scalar(seed)  # a 0-d tensor / array, which `torch.manual_seed` takes too (its value)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{allowed}, got {type(seed).__name__} {seed!r}.")
    if not -(2**63) <= int(seed) < 2**64:
        raise ValueError(f"{allowed}, got {seed}.")
    return int(seed)


def generate_with_votes(
    model: Any,
    processor_or_tokenizer: Any,
    inputs: Mapping[str, Any],
    num_votes: int = 8,
    *,
    seed: int = 0,
    answer_parser: Callable[[str], str | None] = parse_boxed_answer,
    normalize: Callable[[str], str] | None = normalize_answer,
    **generate_kwargs: Any,
) -> VoteResult:
    """Sample `num_votes` responses to one prompt, parse each, and majority-vote the answers.

    Works with any transformers model that has `generate` (causal LMs and vision-language models alike).

    Args:
        model: a model with `generate`, e.g. `InternVLChatForConditionalGeneration` or any `*ForCausalLM`.
        processor_or_tokenizer: anything with `batch_decode` (a processor or a tokenizer).
        inputs: model inputs for ONE prompt (`input_ids` of shape `(1, sequence_length)`, plus `attention_mask`,
            `pixel_values`, ...), e.g. the output of `processor.apply_chat_template(..., return_dict=True)`.
        num_votes: number of sampled responses.
        seed: sampling seed, an int in -2**63..2**64 - 1 (`torch.manual_seed`'s range; `TypeError` / `ValueError`
            otherwise); the same seed gives the same responses and answer (on the same device and software). The
            global RNG state is restored afterwards.
        answer_parser: response -> answer or `None` (default [`parse_boxed_answer`]; for multiple choice e.g.
            `lambda text: extract_choice_letter(text, options)`).
        normalize: voting key, see [`majority_vote`].
        **generate_kwargs: passed to `generate` (`max_new_tokens`, `temperature`, `top_p`, `stopping_criteria`, ...).
            `do_sample=True` and `num_return_sequences=num_votes` are set here.

    When the model does not pre-encode images (`mm_encoder_outputs`) and an input is a flat batch of tiles
    (first dimension other than 1, e.g. `pixel_values` `(num_tiles, 3, 448, 448)`), `generate`'s row-wise repetition
    would mix up the tiles; the inputs are then repeated here, whole prompt after whole prompt, and `generate` runs
    with `num_return_sequences=1` on that batch: the same samples, in the same order.
    """
    if not isinstance(num_votes, int) or isinstance(num_votes, bool) or num_votes < 1:
        raise ValueError(f"`num_votes` must be a positive int, got {num_votes!r}.")
    seed = _checked_seed(seed)
    if generate_kwargs.pop("do_sample", True) is not True:
        raise ValueError("`generate_with_votes` samples: `do_sample` must be True (or left out).")
    if "num_return_sequences" in generate_kwargs:
        raise ValueError("Pass the number of samples as `num_votes`, not `num_return_sequences`.")
    if not hasattr(processor_or_tokenizer, "batch_decode"):
        raise TypeError(
            f"`processor_or_tokenizer` must have `batch_decode`, got {type(processor_or_tokenizer).__name__}."
        )
    batch_size = _batch_size_of(inputs)
    if batch_size != 1:
        raise ValueError(f"`inputs` must hold one prompt (batch size 1), got batch size {batch_size}.")

    if _needs_manual_expansion(model, inputs):
        # Sequence-major copies: equal to `repeat_interleave` for one-row tensors, correct for flat tile batches.
        inputs = {
            key: value.repeat((num_votes,) + (1,) * (value.ndim - 1))
            if isinstance(value, torch.Tensor) and value.ndim > 0
            else value
            for key, value in inputs.items()
        }
        num_return_sequences = 1
    else:
        num_return_sequences = num_votes

    device = getattr(model, "device", torch.device("cpu"))
    # `manual_seed` seeds every CUDA device; fork_rng restores them all (the model may span several).
    on_cuda = getattr(device, "type", "cpu") == "cuda"
    rng_devices = list(range(torch.cuda.device_count())) if on_cuda else []
    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(seed)
        sequences = model.generate(
            **inputs, do_sample=True, num_return_sequences=num_return_sequences, **generate_kwargs
        )
    if not isinstance(sequences, torch.Tensor):  # return_dict_in_generate=True
        sequences = sequences.sequences
    prompt_length = inputs["input_ids"].shape[1] if isinstance(inputs.get("input_ids"), torch.Tensor) else 0
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        prompt_length = 0
    stop_ids = stop_token_ids(model, processor_or_tokenizer)  # Phi-3 decodes as the original: `<|end|>` is kept
    responses = [
        response.strip() for response in decode_answers(processor_or_tokenizer, sequences[:, prompt_length:], stop_ids)
    ]
    parsed_answers = [answer_parser(response) for response in responses]
    answer, counts = majority_vote(parsed_answers, normalize=normalize)
    return VoteResult(answer=answer, counts=counts, responses=responses, parsed_answers=parsed_answers)


__all__ = ["VoteResult", "generate_with_votes", "majority_vote", "normalize_answer"]
