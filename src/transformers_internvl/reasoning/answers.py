"""The final answer of a chain-of-thought response: the boxed answer, or the option letter a response chose.

Counterpart of the prompts in `reasoning.prompts`, which ask for `Answer: \\boxed{...}` (VLMEvalKit) or
`Final answer: ..` (the in-repo `--cot` template).
"""

from __future__ import annotations

import re

from .prompts import OPTION_LETTERS, OptionsType, lettered_options

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
        if not 1 <= options <= len(OPTION_LETTERS):
            raise ValueError(f"`options` as a count must be in 1..{len(OPTION_LETTERS)}, got {options}.")
        lettered = [(letter, "") for letter in OPTION_LETTERS[:options]]
    else:
        lettered = lettered_options(options)
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


__all__ = ["extract_choice_letter", "parse_boxed_answer"]
