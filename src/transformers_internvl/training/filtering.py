"""The paper's repetition filter for training data in the InternVL JSONL format.

A sample is dropped when one of its assistant answers has `repetition_ratio > threshold` over whitespace n-grams
(original `check_conversations_repetition`, `internvl_chat/internvl/train/dataset.py`: 10-grams, 0.4); the statistic is
`reasoning.repetition.repetition_ratio`, the same function as the original `calculate_ngram_repetition`.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field

# The original data filter's settings (10-grams, ratio 0.4). `reasoning.repetition` imports neither torch nor
# transformers, so building the CLI parser (which reads these defaults) stays light.
from ..reasoning.repetition import REPETITION_NGRAM_SIZE, REPETITION_THRESHOLD, repetition_ratio


@dataclass
class FilterReport:
    """`kept` / `dropped` counts; `dropped_lines` holds `(line number, reason)` of every dropped line."""

    kept: int = 0
    dropped_lines: list[tuple[int, str]] = field(default_factory=list)

    @property
    def dropped(self) -> int:
        return len(self.dropped_lines)


class MalformedRow(ValueError):
    """A JSONL row whose `conversations` / `messages` do not have the InternVL or transformers shape."""


def _text(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise MalformedRow(f"{where} is {type(value).__name__}, expected a string")
    return value


def _turns(row: dict, key: str) -> list[dict]:
    turns = row[key]
    if not isinstance(turns, list) or not all(isinstance(turn, dict) for turn in turns):
        raise MalformedRow(f"`{key}` must be a list of objects")
    return turns


def _answers(row: dict) -> list[str]:
    """The assistant answers of a row; raises `MalformedRow` when it has no turns (neither key, as
    `InternVLSupervisedDataset` skips it) or its turns are not objects with string texts."""
    if "conversations" not in row and "messages" not in row:
        raise MalformedRow("the row has neither `conversations` nor `messages`")
    if "conversations" in row:
        return [
            _text(turn.get("value", ""), f"`conversations[{index}].value`")
            for index, turn in enumerate(_turns(row, "conversations"))
            if turn.get("from") == "gpt"
        ]
    answers = []
    for index, message in enumerate(_turns(row, "messages")):
        if message.get("role") != "assistant":
            continue
        content = message.get("content", "")
        if isinstance(content, str):
            answers.append(content)
            continue
        if not isinstance(content, list) or not all(isinstance(part, dict) for part in content):
            raise MalformedRow(f"`messages[{index}].content` must be a string or a list of objects")
        answers.append(
            "".join(
                _text(part.get("text", ""), f"`messages[{index}].content` text")
                for part in content
                if part.get("type") == "text"
            )
        )
    return answers


def _check_settings(ngram: object, threshold: object) -> None:
    if not isinstance(ngram, int) or isinstance(ngram, bool) or ngram < 1:
        raise ValueError(f"`ngram` must be a positive int, got {ngram!r}.")
    if (
        not isinstance(threshold, (int, float))
        or isinstance(threshold, bool)
        or not math.isfinite(threshold)
        or not 0 <= threshold <= 1
    ):
        raise ValueError(f"`threshold` must be a number in [0, 1] (a ratio of n-grams), got {threshold!r}.")


def repetition_reason(row: dict, ngram: int = REPETITION_NGRAM_SIZE, threshold: float = REPETITION_THRESHOLD):
    """`None` when the row passes, else a reason naming the answer and its ratio.

    Raises `ValueError` for an `ngram` that is not a positive int or a `threshold` outside [0, 1], and
    `MalformedRow` (a `ValueError`) when the row's turns are not shaped as InternVL `conversations` or `messages`."""
    _check_settings(ngram, threshold)
    for index, answer in enumerate(_answers(row)):
        ratio = repetition_ratio(answer, ngram)
        if ratio > threshold:
            return f"answer {index}: {ratio:.3f} of its {ngram}-grams repeated (> {threshold})"
    return None


def filter_jsonl(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    ngram: int = REPETITION_NGRAM_SIZE,
    threshold: float = REPETITION_THRESHOLD,
) -> FilterReport:
    """Copy the lines of `source` that pass the repetition filter to `destination` (written to a temporary file in
    the same folder, then renamed). Lines that are not JSON objects are dropped with reason `"invalid JSON"`, rows
    whose turns are malformed with a reason naming the field.

    Lines that are not UTF-8 text are dropped with reason `"not UTF-8 text"`.

    Raises `ValueError` when `source` and `destination` are the same file or `destination` is a folder, `ngram` is
    not a positive int or `threshold` is not a number in [0, 1]; `FileNotFoundError` naming the missing `source` or
    the missing folder of `destination`."""
    _check_settings(ngram, threshold)
    if os.path.abspath(source) == os.path.abspath(destination):
        raise ValueError(f"`destination` must differ from `source` ({source}).")
    folder = os.path.dirname(os.path.abspath(destination))
    if os.path.isdir(destination):  # the rename failed with "Device or resource busy: '.filter-....jsonl' -> '.'"
        raise ValueError(f"`destination` {destination} is a folder; name the JSONL file to write.")
    if not os.path.isdir(folder):  # mkstemp named its own temporary file, not the folder that is missing
        raise FileNotFoundError(f"The folder of `destination` ({folder}) does not exist.")
    report = FilterReport()
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".filter-", suffix=".jsonl")
    try:
        # `surrogateescape`: a line that is not UTF-8 is dropped like invalid JSON, not a bare UnicodeDecodeError.
        with (
            open(source, encoding="utf-8", errors="surrogateescape") as reader,
            os.fdopen(handle, "w", encoding="utf-8") as writer,
        ):
            for number, line in enumerate(reader, start=1):
                if not line.strip():
                    continue
                if not line.isascii() and any("\udc80" <= char <= "\udcff" for char in line):
                    report.dropped_lines.append((number, "not UTF-8 text"))
                    continue
                try:
                    row = json.loads(line)
                    reason = repetition_reason(row, ngram, threshold) if isinstance(row, dict) else "not an object"
                except json.JSONDecodeError:
                    reason = "invalid JSON"
                except MalformedRow as error:
                    reason = f"malformed row: {error}"
                if reason is None:
                    writer.write(line if line.endswith("\n") else line + "\n")
                    report.kept += 1
                else:
                    report.dropped_lines.append((number, reason))
        os.replace(temporary, destination)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return report


def add_filter_command(subparsers) -> None:
    """The `transformers-internvl filter` subcommand."""
    parser = subparsers.add_parser(
        "filter",
        help="drop JSONL training samples whose answers repeat themselves (the paper's n-gram filter)",
        description="Copy INPUT to --output without the samples with an assistant answer whose repetition ratio "
        "exceeds THRESHOLD: (distinct whitespace N-grams that occur more than once) / (all N-grams of the answer), "
        "the original's calculate_ngram_repetition (10-grams, 0.4). A long loop of one phrase has FEW distinct "
        "repeated N-grams and may pass; answers that are largely doubled are caught. Prints each dropped line.",
    )
    parser.add_argument("input", help="JSONL file (rows with `conversations` or `messages`)")
    parser.add_argument("-o", "--output", required=True, help="filtered JSONL file to write")
    parser.add_argument(
        "--ngram", type=int, default=REPETITION_NGRAM_SIZE, help=f"N of the N-grams (default: {REPETITION_NGRAM_SIZE})"
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=REPETITION_THRESHOLD,
        help=f"largest repetition ratio kept, in [0, 1] (default: {REPETITION_THRESHOLD})",
    )
    parser.set_defaults(handler=_run_filter)


def _run_filter(args) -> int:
    report = filter_jsonl(args.input, args.output, args.ngram, args.threshold)
    for number, reason in report.dropped_lines:
        print(f"dropped {args.input}:{number}: {reason}")
    print(f"kept {report.kept}, dropped {report.dropped} -> {args.output}")
    return 0
