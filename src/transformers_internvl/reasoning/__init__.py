"""Reasoning at inference time for InternVL 2.5: chain-of-thought prompts, answer parsing, majority voting, loops.

One module per job (see `shared/design/original-behaviour.md` §8-§9 for what the original does):

- `prompts`: the chain-of-thought and direct-answer prompts of the InternVL 2.5 evaluations (VLMEvalKit, MMMU-Pro,
  the in-repo `--cot` template), byte for byte;
- `answers`: the final answer of a response (`parse_boxed_answer`) and the option letter it chose
  (`extract_choice_letter`);
- `voting`: seeded sampling of several responses and their majority vote (`generate_with_votes`, `majority_vote`);
- `repetition`: the original training-data filter's n-gram repetition statistic (`repetition_ratio`);
- `stopping`: `RepetitionStoppingCriteria`, which applies that statistic and a periodic-loop check during `generate`.

Every public name of these modules is also an attribute of this package, imported on first access:
`prompts`, `answers` and `repetition` import neither torch nor transformers; `voting` and `stopping` do.
"""

from __future__ import annotations

from .._lazy_registry import lazy_exports

# Public name -> submodule that defines it.
_LAZY_ATTRIBUTES: dict[str, str] = {
    **dict.fromkeys(
        (
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
        ),
        ".prompts",
    ),
    **dict.fromkeys(("extract_choice_letter", "parse_boxed_answer"), ".answers"),
    **dict.fromkeys(("VoteResult", "generate_with_votes", "majority_vote", "normalize_answer"), ".voting"),
    **dict.fromkeys(
        ("REPETITION_NGRAM_SIZE", "REPETITION_THRESHOLD", "is_repetitive", "repetition_ratio"), ".repetition"
    ),
    "RepetitionStoppingCriteria": ".stopping",
}

__all__ = sorted(_LAZY_ATTRIBUTES)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY_ATTRIBUTES, globals())
