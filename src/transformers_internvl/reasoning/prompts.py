"""Chain-of-thought and direct-answer prompts InternVL 2.5 was evaluated with, byte for byte.

The InternVL 2.5 evaluations build their chain-of-thought prompts in VLMEvalKit (`vlmeval/vlm/internvl/utils.py` at
commit `e7ddd4d6`, enabled with `USE_COT=1`; see `shared/design/original-behaviour.md` §8): a multiple-choice prompt
loses its "answer with the letter directly" sentence and gets a boxed-answer instruction appended; an open question
just gets the instruction appended. MMMU-Pro uses its own prompts (`eval/mmmu_pro/prompts.yaml`), and the in-repo
`--cot` evaluations wrap the question in a "Final answer: .." template.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from typing import Literal

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
OPTION_LETTERS = string.ascii_uppercase
_MMMU_PRO_MAX_IMAGES = 7

OptionsType = Sequence[str] | Mapping[str, str | None]


def _contains_cjk(text: str) -> bool:
    """VLMEvalKit's `cn_string`: any character in U+4E00..U+9FFF."""
    return _CJK_PATTERN.search(text) is not None


def lettered_options(options: OptionsType | None, argument: str = "options") -> list[tuple[str, str]]:
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
            if not (isinstance(key, str) and len(key) == 1 and key in OPTION_LETTERS):
                raise ValueError(f"`{argument}` keys must be single letters 'A'..'Z', got {key!r}.")
        return [(letter, str(options[letter])) for letter in OPTION_LETTERS if options.get(letter) is not None]
    options = list(options)
    if len(options) > len(OPTION_LETTERS):
        raise ValueError(f"`{argument}` can hold at most {len(OPTION_LETTERS)} options, got {len(options)}.")
    return [(letter, str(text)) for letter, text in zip(OPTION_LETTERS, options, strict=False)]


def build_multiple_choice_prompt(question: str, options: OptionsType | None = None, hint: str | None = None) -> str:
    """The direct-answer prompt of VLMEvalKit's `build_multi_choice_prompt`.

    `hint + "\\n" + question`, then `"\\nA. text"` per option, then `"\\n" + MULTIPLE_CHOICE_DIRECT_SUFFIX` (or,
    with no options, `"\\n" + NO_OPTIONS_DIRECT_SUFFIX`); the Chinese suffixes replace them when the text contains a
    CJK character.
    """
    if not isinstance(question, str):
        raise TypeError(f"`question` must be a str, got {type(question).__name__}.")
    prompt = question if hint is None else f"{hint}\n{question}"
    lettered = lettered_options(options)
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
        kind = "multiple_choice" if lettered_options(options) else "open"
    if kind == "multiple_choice":
        prompt = build_multiple_choice_prompt(question, options, hint)
        prompt = prompt.replace(MULTIPLE_CHOICE_DIRECT_SUFFIX, "").strip()
        return f"{prompt}\n{MULTIPLE_CHOICE_COT_PROMPT}"
    if kind == "open":
        if not isinstance(question, str):
            raise TypeError(f"`question` must be a str, got {type(question).__name__}.")
        if lettered_options(options):
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
    choices = "\n".join(f"{letter}. {text}" for letter, text in lettered_options(options))
    prompt = f"{question}\n{choices}\n{instruction}"
    for index in range(1, _MMMU_PRO_MAX_IMAGES + 1):
        prompt = prompt.replace(f"<image {index}>", "<image>")
    return prompt


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
    "OptionsType",
    "build_cot_prompt",
    "build_internvl_cot_prompt",
    "build_mmmu_pro_prompt",
    "build_multiple_choice_prompt",
]
