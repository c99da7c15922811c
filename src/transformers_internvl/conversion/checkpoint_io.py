"""Checkpoint folders on disk: reading a safetensors checkpoint's tensor list and JSON files, and writing an output
folder atomically (a temporary folder beside the destination, renamed at the end, removed on any error).

`ConversionError` is the one error type of `conversion/` for bad sources and destinations.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from ..atomic_save import swap_in

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


class ConversionError(ValueError):
    """A source checkpoint that cannot be converted (the message says which file / tensor / field and why)."""


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as reader:
            value = json.load(reader)
    except FileNotFoundError:
        raise ConversionError(f"{what} not found: {path}") from None
    except json.JSONDecodeError as error:
        raise ConversionError(f"{what} {path} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise ConversionError(f"{what} {path} must hold a JSON object")
    return value


def tensor_files(folder: Path) -> dict[str, str]:
    """`{tensor name: shard file name}` of a safetensors checkpoint folder, checked against the shard headers.

    Raises:
        ConversionError: no weights, a `.bin`-only checkpoint, a missing shard, an unreadable / truncated shard
            header, an index naming a shard outside the folder, or one that does not match the shards' contents.
    """
    index_path, single_path = folder / INDEX_NAME, folder / SINGLE_NAME
    if index_path.is_file():
        index = read_json(index_path, "weight index")
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ConversionError(f"{index_path} has no weight_map")
        for key, shard in weight_map.items():
            # A shard is a file of this folder: a path elsewhere ("../x", "/abs") would copy outside tensors in.
            if not isinstance(shard, str) or shard in ("", ".", "..") or os.path.basename(shard) != shard:
                raise ConversionError(
                    f"{index_path} maps {key!r} to {shard!r}; shards must be file names inside {folder} (no folders, "
                    "no '..')"
                )
    elif single_path.is_file():
        weight_map = None
    else:
        if any(folder.glob("*.bin")):
            raise ConversionError(
                f"{folder} holds PyTorch .bin weights only; convert them to safetensors first (streaming needs them)"
            )
        raise ConversionError(f"no {SINGLE_NAME} or {INDEX_NAME} in {folder}")

    shard_names = sorted(set(weight_map.values())) if weight_map else [SINGLE_NAME]
    found: dict[str, str] = {}
    for shard in shard_names:
        path = folder / shard
        if not path.is_file():
            raise ConversionError(f"shard {shard} named in {INDEX_NAME} is missing from {folder}")
        for key in _shard_keys(path):
            found[key] = shard
    if weight_map:
        wrong = sorted(key for key, shard in weight_map.items() if found.get(key) != shard)
        extra = sorted(set(found) - set(weight_map))
        if wrong:
            key = wrong[0]
            where = f"it is in {found[key]}" if key in found else "no shard has it"
            raise ConversionError(
                f"{INDEX_NAME} does not match the shards: {key!r} is mapped to {weight_map[key]} but {where} "
                f"({len(wrong)} such tensor(s))"
            )
        if extra:
            raise ConversionError(
                f"{INDEX_NAME} does not match the shards: {extra[0]!r} is in {found[extra[0]]} but not in the index"
            )
    return found


def _shard_keys(path: Path) -> list[str]:
    try:
        with safe_open(str(path), framework="pt") as reader:
            return list(reader.keys())
    except (SafetensorError, OSError) as error:
        raise ConversionError(f"cannot read safetensors file {path}: {error}") from None


def temporary_folder_beside(dst: Path) -> Path:
    return dst.parent / f".{dst.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@contextmanager
def atomic_output_folder(dst: Path, force: bool) -> Iterator[Path]:
    """A fresh temporary folder beside `dst`, renamed to `dst` when the block ends without error and removed
    otherwise (an exception, Ctrl-C or a handled SIGTERM). An existing `dst` is refused unless `force`, in which
    case it is replaced only once the new folder is complete."""
    if dst.exists() and not force:
        raise ConversionError(f"destination {dst} already exists (pass --force / force=True to replace it)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_folder_beside(dst)
    try:
        tmp.mkdir()
    except OSError as error:  # a read-only folder or file system: say which folder, before any work is done
        raise ConversionError(
            f"cannot write the destination {dst}: creating a folder in {dst.parent} failed ({error.strerror or error})"
        ) from None
    try:
        yield tmp
        # One atomic exchange on Linux: an interruption never leaves `dst` missing or the old folder hidden aside.
        swap_in(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: Path, value: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as writer:
        json.dump(value, writer, indent=2, ensure_ascii=False, sort_keys=True)
        writer.write("\n")


def write_tokenizer_json(path: Path, tokenizer: dict[str, Any]) -> None:
    """Write an edited tokenizer.json (keys in their order, as the `tokenizers` library writes it) to a temporary
    file beside `path`, then rename it over `path`: a reader never sees a cut-off file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as writer:
        json.dump(tokenizer, writer, ensure_ascii=False, indent=2)
    os.replace(tmp, path)


__all__ = [
    "INDEX_NAME",
    "SINGLE_NAME",
    "ConversionError",
    "atomic_output_folder",
    "read_json",
    "tensor_files",
    "temporary_folder_beside",
    "write_json",
    "write_tokenizer_json",
]
