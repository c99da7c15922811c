"""The original fine-tuning meta file and its JSONL annotation files, read into rows for `InternVLSupervisedDataset`.

Source: `build_datasets` in `internvl_chat/internvl/train/internvl_chat_finetune.py`: a meta file is
`{name: {"root", "annotation", "repeat_time", "max_dynamic_patch", "data_augment", ...}}`; each annotation file's
non-empty lines are used `repeat_time` times (an integer > 1), or only those among its first `int(lines *
repeat_time)` lines (`repeat_time` < 1; `lines` counts blank lines too, as the original's `readlines()` does).

Every value is checked when the meta file is read (`load_meta`: a `ValueError` naming the file, the dataset and the
key), and repeats are not copied: `RowSequence` keeps each file's lines once and builds the row of a repeat when it
is read, so memory and start-up time follow the file sizes, not `lines x repeat_time`.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["RowSequence", "load_meta", "read_jsonl"]


@dataclass
class _Row:
    source: str  # "annotation.jsonl:LINE" (+ "#COPY" for a repeat) or "records[INDEX]"
    text: str | dict
    root: str
    max_dynamic_patch: int
    data_augment: bool


def _check_entry(meta_path: Any, name: str, entry: Any) -> None:
    where = f"meta file {meta_path}: dataset {name!r}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be an object {{'root': ..., 'annotation': ...}}, got {type(entry).__name__}.")
    for key in ("root", "annotation"):
        if key not in entry:
            raise ValueError(f"{where} has no {key!r}.")
        if not isinstance(entry[key], str):
            raise ValueError(f"{where} {key} must be a string (a path), got {entry[key]!r}.")
    repeat = entry.get("repeat_time", 1)
    if (
        isinstance(repeat, bool)
        or not isinstance(repeat, (int, float))
        or not math.isfinite(repeat)
        or repeat <= 0
        or (repeat > 1 and int(repeat) != repeat)
    ):
        raise ValueError(f"{where} repeat_time must be > 0 and an integer when > 1, got {repeat!r}.")
    patches = entry.get("max_dynamic_patch")
    if patches is not None and (isinstance(patches, bool) or not isinstance(patches, int) or patches < 1):
        raise ValueError(f"{where} max_dynamic_patch must be a positive integer number of tiles, got {patches!r}.")
    augment = entry.get("data_augment")
    if augment is not None and not isinstance(augment, bool):
        raise ValueError(f"{where} data_augment must be true or false, got {augment!r}.")


def load_meta(meta_path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Read an original meta file `{name: {"root", "annotation", "repeat_time", "data_augment", ...}}`.

    Raises:
        ValueError: not valid JSON, not a non-empty JSON object of objects, or an entry without a string `root` / `annotation`, with
            a `repeat_time` that is not a finite number > 0 (an integer when > 1), a `max_dynamic_patch` that is not a
            positive integer, or a `data_augment` that is not a boolean; the message names the dataset and the key.
    """
    try:
        with open(meta_path, encoding="utf-8") as handle:
            meta = json.load(handle)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"meta file {meta_path} is not valid JSON ({error}).") from error
    if not isinstance(meta, dict) or not meta:
        raise ValueError(f"meta file {meta_path} must hold a non-empty JSON object {{name: {{...}}}}.")
    for name, entry in meta.items():
        _check_entry(meta_path, name, entry)
    return meta


class RowSequence(Sequence):
    """Rows of annotation files, each file's lines held once; row `i` of a repeat is built when read."""

    def __init__(self) -> None:
        self._parts: list[tuple[list[tuple[str, str]], int, str, int, bool]] = []
        self._ends: list[int] = []

    def add(self, lines: list[tuple[str, str]], copies: int, root: str, max_dynamic_patch: int, augment: bool) -> None:
        """Append `lines` (`(source, text)` pairs) repeated `copies` times."""
        if lines and copies > 0:
            self._parts.append((lines, copies, root, max_dynamic_patch, augment))
            self._ends.append(len(self) + len(lines) * copies)

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    @property
    def distinct_rows(self) -> int:
        """Rows before repeats (each annotation line once)."""
        return sum(len(lines) for lines, *_ in self._parts)

    def __getitem__(self, index: int) -> _Row:  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} is outside 0..{len(self) - 1}")
        part = bisect.bisect_right(self._ends, index)
        lines, copies, root, max_dynamic_patch, augment = self._parts[part]
        offset = index - (self._ends[part - 1] if part else 0)
        source, text = lines[offset % len(lines)]
        if copies > 1:  # copy-major order, as the original's `[...] * repeat_time`
            source = f"{source}#{offset // len(lines)}"
        return _Row(source, text, root, max_dynamic_patch, augment)


def read_jsonl(
    path: str,
    root: str,
    max_dynamic_patch: int,
    data_augment: bool,
    repeat_time: float,
    rows: RowSequence,
    where: str | None = None,
) -> RowSequence:
    """Add the non-empty lines of the JSONL file `path` to `rows`, `repeat_time` times (see the module docstring).

    `where` names the file's place in error messages (e.g. "meta file M: dataset 'name'").

    Raises:
        FileNotFoundError: `path` does not exist. ValueError: `path` is not UTF-8 text (naming the line), or the
            repeats give more rows than a Python sequence can index (`sys.maxsize`).
    """
    where = f"{where}: " if where else ""
    try:
        with open(path, encoding="utf-8") as handle:
            every_line = list(handle)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{where}annotation file {path} does not exist.") from error
    except UnicodeDecodeError as error:
        with open(path, "rb") as handle:
            data = handle.read()
        try:
            data.decode("utf-8")
            line = "?"
        except UnicodeDecodeError as located:
            line = str(data.count(b"\n", 0, located.start) + 1)
        raise ValueError(f"{where}annotation file {path} is not UTF-8 text (line {line}: {error.reason}).") from error
    if repeat_time < 1:  # the original's cut counts blank lines (`readlines()`); they are bad rows there
        every_line = every_line[: int(len(every_line) * repeat_time)]
    lines = [(f"{path}:{number}", line) for number, line in enumerate(every_line, start=1) if line.strip()]
    copies = 1
    if repeat_time > 1:
        copies = int(repeat_time)
    if len(rows) + len(lines) * copies > sys.maxsize:  # `len()` of the dataset would raise OverflowError
        raise ValueError(
            f"{where}annotation file {path} with repeat_time {repeat_time!r} gives {len(lines)} x {copies} rows, "
            f"more than a Python sequence can index (sys.maxsize = {sys.maxsize})."
        )
    rows.add(lines, copies, root, max_dynamic_patch, data_augment)
    return rows
