"""Reasoning at inference time for InternVL 2.5: chain-of-thought prompts, answer parsing, majority voting, loops.

One module per job (see `shared/design/original-behaviour.md` §8-§9 for what the original does):

- `prompts`: the chain-of-thought and direct-answer prompts of the InternVL 2.5 evaluations (VLMEvalKit, MMMU-Pro,
  the in-repo `--cot` template), byte for byte;
- `answers`: the final answer of a response (`parse_boxed_answer`) and the option letter it chose
  (`extract_choice_letter`);
- `voting`: seeded sampling of several responses and their majority vote (`generate_with_votes`, `majority_vote`);
- `repetition`: the original training-data filter's n-gram repetition statistic (`repetition_ratio`);
- `stopping`: `RepetitionStoppingCriteria`, which applies that statistic and a periodic-loop check during `generate`.

The main names are also attributes of `transformers_internvl` (`build_cot_prompt`, `parse_boxed_answer`,
`generate_with_votes`, `RepetitionStoppingCriteria`, ...). `prompts`, `answers` and `repetition` import neither torch
nor transformers; `voting` and `stopping` do.
"""
