"""Test-time scaling for InternVL 2.5: chain-of-thought prompts, answer parsing, majority voting, loop stopping.

What the original does (see `shared/design/original-behaviour.md` §8-§9):

- **CoT prompts.** The InternVL 2.5 evaluations build their chain-of-thought prompts in VLMEvalKit
  (`vlmeval/vlm/internvl/utils.py` at commit `e7ddd4d6`, enabled with `USE_COT=1`): a multiple-choice prompt loses
  its "answer with the letter directly" sentence and gets a boxed-answer instruction appended; an open question just
  gets the instruction appended. MMMU-Pro uses its own prompts (`eval/mmmu_pro/prompts.yaml`), and the in-repo
  `--cot` evaluations wrap the question in a "Final answer: .." template. The strings are reproduced byte for byte.
- **Majority voting** is described in the paper only (no code from that period). [`majority_vote`] and
  [`generate_with_votes`] implement it deterministically: sampling is seeded, ties go to the answer seen first.
- **Repetition.** The only repetition code in the repository is the (disabled) training-data filter: the share of
  distinct whitespace 10-grams that occur more than once, samples above 0.4 rejected. [`repetition_ratio`] and
  [`is_repetitive`] reproduce it; [`RepetitionStoppingCriteria`] applies the same statistic to token ids during
  `generate`, together with a cheap periodic-loop check, to stop sequences that fell into a loop.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers import StoppingCriteria

# ---------------------------------------------------------------------------------------------------------------
# Prompt strings (byte-identical to the originals)
# ---------------------------------------------------------------------------------------------------------------

# VLMEvalKit `build_mcq_cot_prompt` (e7ddd4d6).
MULTIPLE_CHOICE_COT_PROMPT = (
    "Answer the preceding multiple choice question. The last line of your response should follow "
    "this format: 'Answer: \\boxed{$LETTER}' (without quotes), where LETTER is one of the options. "
    "If you are uncertain or the problem is too complex, make a reasoned guess based on the "
    "information provided. Avoid repeating steps indefinitely\u2014provide your best guess even if "
    "unsure. Think step by step logically, considering all relevant information before answering."
)

# VLMEvalKit `build_qa_cot_prompt` (e7ddd4d6): MathVista, MathVerse, MathVision, OlympiadBench, DynaMath, ...
OPEN_QUESTION_COT_PROMPT = (
    "Answer the preceding question. The last line of your response should follow this format: "
    "'Answer: \\boxed{$FINAL_ANSWER}' (without quotes), where 'FINAL_ANSWER' is your conclusion "
    "based on the reasoning provided. If you are uncertain or the problem is too complex, make "
    "a reasoned guess based on the information provided. Avoid repeating steps indefinitely\u2014"
    "provide your best guess even if unsure. Think step by step logically, considering all "
    "relevant information before answering."
)

# Direct-answer suffixes. The first two are VLMEvalKit's `build_multi_choice_prompt` (English; the Chinese variants
# are used when the prompt contains a CJK character) and also the in-repo direct MMMU prompts.
MULTIPLE_CHOICE_DIRECT_SUFFIX = "Answer with the option's letter from the given choices directly."
MULTIPLE_CHOICE_DIRECT_SUFFIX_ZH = "请直接回答选项字母。"
NO_OPTIONS_DIRECT_SUFFIX = "Answer the question directly."
NO_OPTIONS_DIRECT_SUFFIX_ZH = "请直接回答问题。"
SHORT_ANSWER_DIRECT_SUFFIX = "Answer the question using a single word or phrase."

# OpenGVLab/InternVL `internvl_chat/eval/mmmu_pro/prompts.yaml`.
MMMU_PRO_COT_STANDARD_PROMPT = (
    "Answer the preceding multiple choice question. The last line of your response should be of the following "
    "format: 'Answer: $LETTER' (without quotes) where LETTER is one of options. Think step by step before answering."
)
MMMU_PRO_COT_VISION_PROMPT = (
    "Write out the multiple-choice question in the image and then solve it. The last line of your response should "
    "be of the following format: 'Answer: $LETTER' (without quotes) where LETTER is one of options. Think step by "
    "step before answering."
)
MMMU_PRO_DIRECT_STANDARD_PROMPT = "Answer with the option letter from the given choices directly."
MMMU_PRO_DIRECT_VISION_PROMPT = (
    "Answer with the option letter from the given choices directly. The last line of your response should be of the "
    "following format: 'Answer: $LETTER' (without quotes) where LETTER is one of options."
)

# OpenGVLab/InternVL in-repo `--cot` template (eval/mathvista/evaluate_mathvista.py; also ScienceQA and POPE).
INTERNVL_COT_TEMPLATE = (
    "Your task is to answer the question below. "
    "Give step by step reasoning before you answer, and when you're ready to answer, "
    'please use the format "Final answer: .."'
    "\n\n"
    "Question:"
    "\n\n"
    "{question}"
)

_CJK_PATTERN = re.compile("[\u4e00-\u9fff]")
_OPTION_LETTERS = string.ascii_uppercase
_MMMU_PRO_MAX_IMAGES = 7

OptionsType = Sequence[str] | Mapping[str, str | None]


def _contains_cjk(text: str) -> bool:
    """VLMEvalKit's `cn_string`: any character in U+4E00..U+9FFF."""
    return _CJK_PATTERN.search(text) is not None


def _lettered_options(options: OptionsType | None, argument: str = "options") -> list[tuple[str, str]]:
    """`[(letter, text), ...]` in letter order.

    A sequence gets the letters A, B, C, ... in order; a mapping is keyed by single upper-case letters and is read in
    alphabetical order, skipping `None` values (VLMEvalKit iterates `string.ascii_uppercase` and skips NaN columns).
    """
    if options is None:
        return []
    if isinstance(options, str):
        raise TypeError(f"`{argument}` must be a sequence of option texts or a letter->text mapping, got a str.")
    if isinstance(options, Mapping):
        for key in options:
            if not (isinstance(key, str) and len(key) == 1 and key in _OPTION_LETTERS):
                raise ValueError(f"`{argument}` keys must be single letters 'A'..'Z', got {key!r}.")
        return [(letter, str(options[letter])) for letter in _OPTION_LETTERS if options.get(letter) is not None]
    options = list(options)
    if len(options) > len(_OPTION_LETTERS):
        raise ValueError(f"`{argument}` can hold at most {len(_OPTION_LETTERS)} options, got {len(options)}.")
    return [(letter, str(text)) for letter, text in zip(_OPTION_LETTERS, options, strict=False)]


def build_multiple_choice_prompt(question: str, options: OptionsType | None = None, hint: str | None = None) -> str:
    """The direct-answer prompt of VLMEvalKit's `build_multi_choice_prompt`.

    `hint + "\\n" + question`, then `"\\nA. text"` per option, then `"\\n" + MULTIPLE_CHOICE_DIRECT_SUFFIX` (or,
    with no options, `"\\n" + NO_OPTIONS_DIRECT_SUFFIX`); the Chinese suffixes replace them when the text contains a
    CJK character.
    """
    if not isinstance(question, str):
        raise TypeError(f"`question` must be a str, got {type(question).__name__}.")
    prompt = question if hint is None else f"{hint}\n{question}"
    lettered = _lettered_options(options)
    for letter, text in lettered:
        prompt += f"\n{letter}. {text}"
    if lettered:
        suffix = MULTIPLE_CHOICE_DIRECT_SUFFIX_ZH if _contains_cjk(prompt) else MULTIPLE_CHOICE_DIRECT_SUFFIX
    else:
        suffix = NO_OPTIONS_DIRECT_SUFFIX_ZH if _contains_cjk(prompt) else NO_OPTIONS_DIRECT_SUFFIX
    return f"{prompt}\n{suffix}"


def build_cot_prompt(
    question: str,
    options: OptionsType | None = None,
    hint: str | None = None,
    kind: Literal["auto", "multiple_choice", "open"] = "auto",
) -> str:
    """The chain-of-thought prompt InternVL 2.5 was evaluated with (VLMEvalKit, `USE_COT=1`).

    Args:
        question: the question text (without image placeholders; the chat template adds those).
        options: option texts (lettered A, B, ... in order) or a `{"A": text, ...}` mapping.
        hint: optional context placed on the line before the question, as VLMEvalKit does for MMBench-style data.
        kind: `"multiple_choice"` (VLMEvalKit `build_mcq_cot_prompt`), `"open"` (`build_qa_cot_prompt`) or
            `"auto"`: multiple choice when options are given, open otherwise.

    Multiple choice: the direct prompt of [`build_multiple_choice_prompt`] with its English "answer with the option's
    letter" sentence removed, stripped, then `"\\n" + MULTIPLE_CHOICE_COT_PROMPT`. As in the original only the English
    sentence is removed, so a Chinese question keeps `请直接回答选项字母。`. Open question: `question + "\\n" +
    OPEN_QUESTION_COT_PROMPT` (VLMEvalKit's open-QA datasets carry no hint; a hint given here is put on the line
    before the question, as for multiple choice).
    """
    if kind == "auto":
        kind = "multiple_choice" if _lettered_options(options) else "open"
    if kind == "multiple_choice":
        prompt = build_multiple_choice_prompt(question, options, hint)
        prompt = prompt.replace(MULTIPLE_CHOICE_DIRECT_SUFFIX, "").strip()
        return f"{prompt}\n{MULTIPLE_CHOICE_COT_PROMPT}"
    if kind == "open":
        if not isinstance(question, str):
            raise TypeError(f"`question` must be a str, got {type(question).__name__}.")
        if _lettered_options(options):
            raise ValueError("`kind='open'` takes no `options`; use kind='multiple_choice' or kind='auto'.")
        prompt = question if hint is None else f"{hint}\n{question}"
        return f"{prompt}\n{OPEN_QUESTION_COT_PROMPT}"
    raise ValueError(f"`kind` must be one of 'auto', 'multiple_choice', 'open', got {kind!r}.")


def build_internvl_cot_prompt(question: str) -> str:
    """The in-repo `--cot` prompt (MathVista, ScienceQA, POPE evaluations): [`INTERNVL_COT_TEMPLATE`] filled in."""
    if not isinstance(question, str):
        raise TypeError(f"`question` must be a str, got {type(question).__name__}.")
    return INTERNVL_COT_TEMPLATE.format(question=question)


def build_mmmu_pro_prompt(
    question: str | None,
    options: OptionsType | None = None,
    mode: Literal["cot", "direct"] = "cot",
    setting: Literal["standard", "vision"] = "standard",
) -> str:
    """The MMMU-Pro prompt of `eval/mmmu_pro/evaluate_mmmu_pro.py`.

    `standard`: `f"{question}\\n{A. ...\\nB. ...}\\n{instruction}"` with `<image 1>` .. `<image 7>` replaced by
    `<image>`. `vision` (the question is inside the image): the instruction alone; `question`/`options` are ignored.
    """
    instructions = {
        ("cot", "standard"): MMMU_PRO_COT_STANDARD_PROMPT,
        ("cot", "vision"): MMMU_PRO_COT_VISION_PROMPT,
        ("direct", "standard"): MMMU_PRO_DIRECT_STANDARD_PROMPT,
        ("direct", "vision"): MMMU_PRO_DIRECT_VISION_PROMPT,
    }
    if (mode, setting) not in instructions:
        raise ValueError(
            f"`mode` must be 'cot' or 'direct' and `setting` 'standard' or 'vision', got mode={mode!r}, "
            f"setting={setting!r}."
        )
    instruction = instructions[(mode, setting)]
    if setting == "vision":
        return instruction
    if not isinstance(question, str):
        raise TypeError(f"`question` must be a str for the standard setting, got {type(question).__name__}.")
    choices = "\n".join(f"{letter}. {text}" for letter, text in _lettered_options(options))
    prompt = f"{question}\n{choices}\n{instruction}"
    for index in range(1, _MMMU_PRO_MAX_IMAGES + 1):
        prompt = prompt.replace(f"<image {index}>", "<image>")
    return prompt


# ---------------------------------------------------------------------------------------------------------------
# Answer parsing
# ---------------------------------------------------------------------------------------------------------------

_BOXED_START = re.compile(r"\\boxed\s*\{")
_ANSWER_LINE = re.compile(r"(?:final\s+)?answer\s*\**\s*[:：]\s*\**\s*(.*)", re.IGNORECASE)


def _boxed_contents(text: str) -> list[str]:
    """Contents of every complete outermost `\\boxed{...}`, in order. Braces nest; `\\{` and `\\}` do not count."""
    contents = []
    position = 0
    while (match := _BOXED_START.search(text, position)) is not None:
        depth, index = 1, match.end()
        while index < len(text) and depth:
            character = text[index]
            if character == "\\":
                index += 2
                continue
            if character == "{":
                depth += 1
            elif character == "}":
                depth -= 1
            index += 1
        if depth:  # unbalanced (e.g. generation cut off): not an answer
            break
        contents.append(text[match.end() : index - 1])
        position = index
    return contents


def _clean_answer(answer: str) -> str:
    answer = answer.strip()
    if answer.endswith(".") and not answer.endswith(".."):
        answer = answer[:-1].rstrip()
    if len(answer) > 4 and answer.startswith("**") and answer.endswith("**"):
        answer = answer[2:-2].strip()
    if len(answer) > 2 and answer.startswith("$") and answer.endswith("$"):
        answer = answer.strip("$").strip()
    return answer


def parse_boxed_answer(text: str) -> str | None:
    """The final answer of a chain-of-thought response, or `None`.

    Precedence:
        1. the content of the last complete `\\boxed{...}` (nested braces allowed, e.g. `\\boxed{\\frac{1}{2}}` gives
           `\\frac{1}{2}`; a `\\boxed{` left open by a truncated generation is ignored), stripped;
        2. otherwise the text after the last `Final answer:` / `Answer:` (case-insensitive, `**bold**` markers
           tolerated), up to the end of its line;
        3. otherwise `None`.
    Rule 2 answers are stripped of surrounding whitespace, one trailing period, `**...**` and `$...$`. An empty answer
    is `None`.
    """
    if not isinstance(text, str):
        raise TypeError(f"`text` must be a str, got {type(text).__name__}.")
    boxed = _boxed_contents(text)
    if boxed:
        answer = boxed[-1].strip()
        return answer or None
    matches = list(_ANSWER_LINE.finditer(text))
    if not matches:
        return None
    answer = _clean_answer(matches[-1].group(1))
    return answer or None


# A parsed answer that starts with a letter: "B", "(B)", "B.", "B: text", "B text".
_LEADING_LETTER = re.compile(r"^\(?([A-Z])\)?(?:[.:)\]]|\s|$)")
# A whole response that starts with a letter needs punctuation or nothing after it ("A dog ..." is not an answer).
_LEADING_LETTER_STRICT = re.compile(r"^\(?([A-Z])\)?(?:[.:)\]]|$)")


def extract_choice_letter(text: str, options: OptionsType | int) -> str | None:
    """The option letter a response chose, or `None` when it cannot be told.

    Args:
        text: the model response.
        options: the option texts / letter->text mapping the prompt was built from, or the number of options.

    Order: the parsed answer ([`parse_boxed_answer`]) when there is one, otherwise the whole response, is searched
    for (1) a leading option letter (`B`, `(B)`, `B.`, `B: text`; a whole response needs the punctuation, so "A dog"
    is not read as A), (2) exactly one distinct option letter standing alone as a word (an article "A" counts here),
    (3) exactly one option text contained in it (case-insensitive). Ambiguity gives `None`.
    """
    if not isinstance(text, str):
        raise TypeError(f"`text` must be a str, got {type(text).__name__}.")
    if isinstance(options, int) and not isinstance(options, bool):
        if not 1 <= options <= len(_OPTION_LETTERS):
            raise ValueError(f"`options` as a count must be in 1..{len(_OPTION_LETTERS)}, got {options}.")
        lettered = [(letter, "") for letter in _OPTION_LETTERS[:options]]
    else:
        lettered = _lettered_options(options)
    if not lettered:
        raise ValueError("`options` must hold at least one option.")
    letters = {letter for letter, _ in lettered}

    parsed = parse_boxed_answer(text)
    candidate = (parsed if parsed is not None else text).strip()

    match = (_LEADING_LETTER if parsed is not None else _LEADING_LETTER_STRICT).match(candidate)
    if match and match.group(1) in letters:
        return match.group(1)

    words = re.sub(r"[^\w\s]", " ", candidate).split()
    standalone = [word for word in words if word in letters]
    if len(set(standalone)) == 1:
        return standalone[0]

    lowered = candidate.lower()
    contained = [letter for letter, option_text in lettered if option_text and option_text.lower() in lowered]
    if len(contained) == 1:
        return contained[0]
    return None


# ---------------------------------------------------------------------------------------------------------------
# Majority voting
# ---------------------------------------------------------------------------------------------------------------


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
        model: a model with `generate`, e.g. `InternVLForConditionalGeneration` or any `*ForCausalLM`.
        processor_or_tokenizer: anything with `batch_decode` (a processor or a tokenizer).
        inputs: model inputs for ONE prompt (`input_ids` of shape `(1, sequence_length)`, plus `attention_mask`,
            `pixel_values`, ...), e.g. the output of `processor.apply_chat_template(..., return_dict=True)`.
        num_votes: number of sampled responses.
        seed: sampling seed; the same seed gives the same responses and answer (on the same device and software).
            The global RNG state is restored afterwards.
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
    responses = [
        response.strip()
        for response in processor_or_tokenizer.batch_decode(sequences[:, prompt_length:], skip_special_tokens=True)
    ]
    parsed_answers = [answer_parser(response) for response in responses]
    answer, counts = majority_vote(parsed_answers, normalize=normalize)
    return VoteResult(answer=answer, counts=counts, responses=responses, parsed_answers=parsed_answers)


# ---------------------------------------------------------------------------------------------------------------
# Repetition: the original data filter and a stopping criterion
# ---------------------------------------------------------------------------------------------------------------

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
    elif isinstance(text_or_tokens, torch.Tensor):
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


# Two polynomial hashes modulo Mersenne-like primes: exact products stay below 2**62 in int64 (token ids < 2**31).
_HASH_MODULI = (2_147_483_647, 2_147_483_629)
_HASH_BASES = (1_000_003, 916_132_831)


class RepetitionStoppingCriteria(StoppingCriteria):
    """Stop a sequence whose generated tokens fell into a repetition loop.

    Two token-id checks, vectorised over the batch (no decoding), updated incrementally with each new token:

    - **periodic loop**: the last `max(min_repeats * p, min_loop_length)` generated tokens repeat with some period
      `p` in `1..max_period` (e.g. `5 6 7 5 6 7 ...`). Kept as one run-length counter per `(sequence, period)`:
      `O(batch_size * max_period)` work per token.
    - **n-gram ratio** (the original data filter applied to token ids): once `window_size` tokens were generated, over
      the last `window_size` of them, `(distinct ngram_size-grams occurring more than once) / (total n-grams) >
      threshold`. Each new n-gram is hashed once (two 31-bit polynomial hashes; a collision, probability ~2**-62 per
      pair, could only raise the ratio) and the window's keys are sorted per step (`O(window_size log window_size)`).
      Like the filter, this fires when a long block has been written about twice; loops with a short period keep the
      ratio low and are caught by the periodic check. `window_size=None` disables it.

    Only generated tokens are looked at: the prompt length is `prompt_length` if given, otherwise learned at the first
    call of a `generate` run (sequence length minus one). A new run is recognised when the batch size changes, the
    sequence does not grow, or the last tokens seen at the previous call changed; [`reset`] forces it. Sequences that
    were stopped are recorded in `stopped` (boolean, `(batch_size,)`). Finished sequences are only padded (and their
    stop visible in the output) when `generate` also has an EOS token, as for every stopping criterion.

    Args:
        max_period: longest loop period (in tokens) the periodic check looks for; 0 disables it.
        min_repeats: how many back-to-back copies of the period make a loop.
        min_loop_length: and how many tokens the looping span must cover at least (so short legitimate runs such as
            a line of `=` or a few repeated digits do not stop generation).
        ngram_size: n of the n-gram ratio (10 as in the original filter).
        window_size: trailing window of generated tokens for the n-gram ratio; `None` disables it.
        threshold: the n-gram ratio above which a sequence stops (0.4 as in the original filter).
        prompt_length: number of prompt tokens (columns) in `input_ids`; learned automatically when `None`.
    """

    def __init__(
        self,
        max_period: int = 128,
        min_repeats: int = 3,
        min_loop_length: int = 48,
        ngram_size: int = REPETITION_NGRAM_SIZE,
        window_size: int | None = 256,
        threshold: float = REPETITION_THRESHOLD,
        prompt_length: int | None = None,
    ):
        for name, value, minimum in (
            ("max_period", max_period, 0),
            ("min_repeats", min_repeats, 2),
            ("min_loop_length", min_loop_length, 1),
            ("ngram_size", ngram_size, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")
        if window_size is not None and (not isinstance(window_size, int) or window_size < ngram_size):
            raise ValueError(f"`window_size` must be None or an int >= ngram_size ({ngram_size}), got {window_size!r}.")
        if not 0.0 <= float(threshold) < 1.0:
            raise ValueError(f"`threshold` must be in [0, 1), got {threshold!r}.")
        if prompt_length is not None and (not isinstance(prompt_length, int) or prompt_length < 0):
            raise ValueError(f"`prompt_length` must be None or a non-negative int, got {prompt_length!r}.")
        self.max_period = max_period
        self.min_repeats = min_repeats
        self.min_loop_length = min_loop_length
        self.ngram_size = ngram_size
        self.window_size = window_size
        self.threshold = float(threshold)
        self.prompt_length = prompt_length
        # Period p is a loop once its run of "token equals the one p back" reaches span(p) - p.
        self._required_runs = [
            max(min_repeats * period, min_loop_length) - period for period in range(1, max_period + 1)
        ]
        self._device_constants: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self.reset()

    def reset(self) -> None:
        """Forget the current `generate` run (learned prompt length, counters, `stopped`)."""
        self._run_prompt_length: int | None = None
        self._processed_length = 0
        self._last_tail: torch.Tensor | None = None
        self._period_runs: torch.Tensor | None = None  # (batch, max_period) run lengths
        self._ngram_ring: torch.Tensor | None = None  # (batch, window_size - ngram_size + 1) keys of the last n-grams
        self._num_ngrams = 0
        self.stopped: torch.Tensor | None = None

    # -- helpers ----------------------------------------------------------------------------------------------------

    def _constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-device `(required_runs (max_period,), hash_powers (2, ngram_size))`."""
        constants = self._device_constants.get(device)
        if constants is None:
            required_runs = torch.tensor(self._required_runs, dtype=torch.long, device=device)
            powers = [
                [pow(base, self.ngram_size - 1 - k, modulus) for k in range(self.ngram_size)]
                for modulus, base in zip(_HASH_MODULI, _HASH_BASES, strict=True)
            ]
            constants = (required_runs, torch.tensor(powers, dtype=torch.int64, device=device))
            self._device_constants[device] = constants
        return constants

    def _ngram_keys(self, tokens: torch.Tensor) -> torch.Tensor:
        """`(batch, length - ngram_size + 1)` int64 keys of the n-grams of `tokens` `(batch, length)`."""
        _, powers = self._constants(tokens.device)
        ngrams = tokens.to(torch.int64).unfold(1, self.ngram_size, 1)  # (batch, num_ngrams, ngram_size)
        keys = []
        for index, modulus in enumerate(_HASH_MODULI):
            terms = (ngrams % modulus) * powers[index] % modulus  # factors < 2**31: products < 2**62 fit in int64
            keys.append(terms.sum(dim=-1) % modulus)
        return keys[0] * _HASH_MODULI[1] + keys[1]

    @staticmethod
    def _ratio_from_keys(keys: torch.Tensor) -> torch.Tensor:
        """`(batch,)` float: share of distinct keys occurring more than once, over the keys `(batch, num_ngrams)`."""
        keys, _ = torch.sort(keys, dim=-1)
        same_as_next = keys[:, 1:] == keys[:, :-1]  # (batch, num_ngrams - 1)
        # A distinct n-gram occurring more than once is a run of >= 2 equal sorted keys: count where such runs start.
        run_starts = same_as_next.clone()
        run_starts[:, 1:] &= ~same_as_next[:, :-1]
        return run_starts.sum(dim=-1).to(torch.float32) / keys.shape[1]

    def _ngram_ratio(self, window: torch.Tensor) -> torch.Tensor:
        """`(batch,)` float: the original filter's ratio over each row of `window` `(batch, length)`."""
        return self._ratio_from_keys(self._ngram_keys(window))

    def _is_new_run(self, input_ids: torch.LongTensor) -> bool:
        length = input_ids.shape[1]
        if self._last_tail is None or length <= self._processed_length:
            return True
        if input_ids.shape[0] != self._last_tail.shape[0]:
            return True
        previous = input_ids[:, self._processed_length - self._last_tail.shape[1] : self._processed_length]
        return not torch.equal(previous, self._last_tail)

    def _start_run(self, input_ids: torch.LongTensor) -> None:
        batch_size, length = input_ids.shape
        if self.prompt_length is not None:
            prompt_length = min(self.prompt_length, length)
        else:
            prompt_length = max(length - 1, 0)
        self._run_prompt_length = prompt_length
        self._processed_length = prompt_length
        self._period_runs = torch.zeros(batch_size, self.max_period, dtype=torch.long, device=input_ids.device)
        if self.window_size is not None:
            ring_size = self.window_size - self.ngram_size + 1
            self._ngram_ring = torch.zeros(batch_size, ring_size, dtype=torch.int64, device=input_ids.device)
        self._num_ngrams = 0
        self.stopped = None

    def _advance(self, input_ids: torch.LongTensor, position: int) -> None:
        """Update the counters with the token at `position` (a generated token)."""
        num_before = position - self._run_prompt_length  # generated tokens before this one
        if self.max_period:
            num_periods = min(self.max_period, num_before)  # only compare with generated tokens
            if num_periods:
                current = input_ids[:, position : position + 1]
                previous = input_ids[:, position - num_periods : position].flip(-1)  # [:, p - 1] is p tokens back
                runs = self._period_runs[:, :num_periods]
                self._period_runs[:, :num_periods] = (runs + 1) * (previous == current)
        if self._ngram_ring is not None and num_before + 1 >= self.ngram_size:
            key = self._ngram_keys(input_ids[:, position + 1 - self.ngram_size : position + 1])[:, 0]
            self._ngram_ring[:, self._num_ngrams % self._ngram_ring.shape[1]] = key
            self._num_ngrams += 1

    # -- StoppingCriteria -------------------------------------------------------------------------------------------

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor | None = None, **kwargs
    ) -> torch.BoolTensor:
        """`(batch_size,)` booleans: `True` for sequences that are looping."""
        length = input_ids.shape[1]
        if self._is_new_run(input_ids):
            self._start_run(input_ids)
        for position in range(self._processed_length, length):  # one new token per step in plain decoding
            self._advance(input_ids, position)
        self._processed_length = length
        self._last_tail = input_ids[:, -min(4, length) :].clone()

        required_runs, _ = self._constants(input_ids.device)
        is_done = (self._period_runs >= required_runs).any(dim=-1)
        if self._ngram_ring is not None and self._num_ngrams >= self._ngram_ring.shape[1]:
            is_done |= self._ratio_from_keys(self._ngram_ring) > self.threshold
        # No host read of `is_done` here (that would add a device sync per step); `stopped` keeps the record.
        self.stopped = is_done.clone() if self.stopped is None else (self.stopped | is_done)
        return is_done


__all__ = [
    "INTERNVL_COT_TEMPLATE",
    "MMMU_PRO_COT_STANDARD_PROMPT",
    "MMMU_PRO_COT_VISION_PROMPT",
    "MMMU_PRO_DIRECT_STANDARD_PROMPT",
    "MMMU_PRO_DIRECT_VISION_PROMPT",
    "MULTIPLE_CHOICE_COT_PROMPT",
    "MULTIPLE_CHOICE_DIRECT_SUFFIX",
    "MULTIPLE_CHOICE_DIRECT_SUFFIX_ZH",
    "NO_OPTIONS_DIRECT_SUFFIX",
    "NO_OPTIONS_DIRECT_SUFFIX_ZH",
    "OPEN_QUESTION_COT_PROMPT",
    "SHORT_ANSWER_DIRECT_SUFFIX",
    "RepetitionStoppingCriteria",
    "VoteResult",
    "build_cot_prompt",
    "build_internvl_cot_prompt",
    "build_mmmu_pro_prompt",
    "build_multiple_choice_prompt",
    "extract_choice_letter",
    "generate_with_votes",
    "is_repetitive",
    "majority_vote",
    "normalize_answer",
    "parse_boxed_answer",
    "repetition_ratio",
]
