"""The paper's repetition filter for training data in the InternVL JSONL format.

A sample is dropped when one of its assistant answers has `repetition_ratio > threshold` over whitespace n-grams
(original `check_conversations_repetition`, `internvl_chat/internvl/train/dataset.py`: 10-grams, 0.4); the statistic is
`reasoning.repetition.repetition_ratio`, the same function as the original `calculate_ngram_repetition`.
"""

from __future__ import annotations

import json
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


def _answers(row: dict) -> list[str]:
    if "conversations" in row:
        return [turn.get("value", "") for turn in row["conversations"] if turn.get("from") == "gpt"]
    answers = []
    for message in row.get("messages", []):
        if message.get("role") != "assistant":
            continue
        content = message.get("content", "")
        if isinstance(content, str):
            answers.append(content)
        else:
            answers.append("".join(part.get("text", "") for part in content if part.get("type") == "text"))
    return answers


def repetition_reason(row: dict, ngram: int = REPETITION_NGRAM_SIZE, threshold: float = REPETITION_THRESHOLD):
    """`None` when the row passes, else a reason naming the answer and its ratio."""
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
    the same folder, then renamed). Lines that are not JSON objects are dropped with reason `"invalid JSON"`.

    Raises `ValueError` when `source` and `destination` are the same file."""
    if os.path.abspath(source) == os.path.abspath(destination):
        raise ValueError(f"`destination` must differ from `source` ({source}).")
    report = FilterReport()
    folder = os.path.dirname(os.path.abspath(destination))
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".filter-", suffix=".jsonl")
    try:
        with open(source, encoding="utf-8") as reader, os.fdopen(handle, "w", encoding="utf-8") as writer:
            for number, line in enumerate(reader, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    reason = repetition_reason(row, ngram, threshold) if isinstance(row, dict) else "not an object"
                except json.JSONDecodeError:
                    reason = "invalid JSON"
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
    parser.add_argument("--ngram", type=int, default=REPETITION_NGRAM_SIZE)
    parser.add_argument("--threshold", type=float, default=REPETITION_THRESHOLD)
    parser.set_defaults(handler=_run_filter)


def _run_filter(args) -> int:
    report = filter_jsonl(args.input, args.output, args.ngram, args.threshold)
    for number, reason in report.dropped_lines:
        print(f"dropped {args.input}:{number}: {reason}")
    print(f"kept {report.kept}, dropped {report.dropped} -> {args.output}")
    return 0
