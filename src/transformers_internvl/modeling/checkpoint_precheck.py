"""Checks of a local safetensors checkpoint against its config before `from_pretrained` builds the model.

transformers builds the whole model from `config.json` first and compares it with the weights afterwards, so a hostile
or mistaken config costs time and memory before any error: `llm_config.num_hidden_layers: 100000` spends minutes
building layers that the checkpoint lacks, `vision_config.hidden_size: 10**9` overflows torch's size arithmetic, and a
mismatched tensor (`llm_config.vocab_size: 10**8`) is allocated and randomly initialised at the config's size before
the mismatch is reported. Reading the safetensors headers (a few kB, no tensor data) answers these questions first:

- the LLM and vision layer counts of the config against the layers the checkpoint holds (more than twice as many,
  beyond a few: smaller gaps are left to the missing-weights check, which names the missing tensors);
- `llm_config.vocab_size` / `hidden_size` against the token-embedding tensor, and `vision_config.hidden_size`,
  `num_channels`, `patch_size` against the patch-embedding tensor;
- weights stored as integers or booleans (a quantized checkpoint without its `quantization_config`, or a damaged
  one), which would be cast into the float parameters without a word;
- a header that is not valid safetensors (its length beyond the file, not a JSON object, offsets that do not fit the
  shapes or the file), named by file instead of safetensors' bare "Error while deserializing header";
- a weight index (`model.safetensors.index.json`) that is not JSON, lacks `weight_map` / `metadata`, or names shards
  outside the folder (an absolute path, `..`): transformers fails on the first with a bare `KeyError` and loads the
  last from wherever they point.

Key names are those of the original OpenGVLab layout (`language_model.model.layers.N.`, `vision_model.encoder.layers.
N.`, `vision_model.embeddings.patch_embedding.weight`, ...). A checkpoint in another layout, a `.bin` checkpoint, a
remote one, or a load that asks for missing / mismatched weights (`output_loading_info`, `state_dict`,
`ignore_mismatched_sizes`) is left to transformers' own checks.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Mapping
from typing import Any

__all__ = ["check_config_against_checkpoint", "read_safetensors_header"]

# Largest header read: safetensors itself refuses headers above 100 MB.
_MAX_HEADER_BYTES = 100_000_000
_ITEM_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
_INTEGER_DTYPES = {"BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64"}
# Parameter names of the original layout (weights, biases, InternViT's class / position embeddings and layer scales).
_PARAMETER_SUFFIXES = (".weight", ".bias", "class_embedding", "position_embedding", ".ls1", ".ls2")
# Layer counts above `factor * held + slack` are refused before building; smaller gaps (a checkpoint that lacks its
# last layers) cost little to build and are reported by the missing-weights check, which names the missing tensors.
_MAX_LAYER_FACTOR, _LAYER_SLACK = 2, 8
_LLM_LAYER = re.compile(r"^language_model\.(?:[\w.]+\.)?layers\.(\d+)\.")
_VISION_LAYER = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.")
_LLM_EMBEDDING = re.compile(r"^language_model\.(?:[\w.]+\.)?(?:embed_tokens|tok_embeddings)\.weight$")
_PATCH_EMBEDDING = "vision_model.embeddings.patch_embedding.weight"


def read_safetensors_header(path: str) -> dict[str, Any]:
    """The tensor entries `{name: {"dtype", "shape", "data_offsets"}}` of the safetensors file at `path`, reading
    only its header.

    Raises:
        ValueError: naming the file, when the header is not valid safetensors (length beyond the file, not a JSON
            object, an entry whose shape, dtype and offsets do not fit each other or the file).
    """
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ValueError(
                f"{path} is not a safetensors file: it has {size} bytes, fewer than the 8-byte header size."
            )
        (length,) = struct.unpack("<Q", prefix)
        if length > min(_MAX_HEADER_BYTES, size - 8):
            raise ValueError(
                f"{path} is not a valid safetensors file: its header claims {length} bytes but the file has "
                f"{size - 8} after the size field (truncated or not safetensors)."
            )
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not a valid safetensors file: its header is not JSON ({error}).") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path} is not a valid safetensors file: its header is a {type(header).__name__}, not a map.")
    data_bytes = size - 8 - length
    entries = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        entries[name] = entry
        problem = _entry_problem(entry, data_bytes)
        if problem:
            raise ValueError(f"{path} is not a valid safetensors file: tensor {name!r} {problem}.")
    return entries


def _entry_problem(entry: Any, data_bytes: int) -> str | None:
    if not isinstance(entry, dict):
        return f"has the entry {entry!r} instead of a dtype, shape and data_offsets"
    shape, offsets, dtype = entry.get("shape"), entry.get("data_offsets"), entry.get("dtype")
    if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        return f"has the shape {shape!r}; expected a list of non-negative integers"
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(n, int) and not isinstance(n, bool) for n in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        return f"has the data_offsets {offsets!r}; expected [begin, end] with 0 <= begin <= end"
    if offsets[1] > data_bytes:
        return f"ends at byte {offsets[1]} of the data, but the file holds {data_bytes} data bytes (truncated?)"
    item_size = _ITEM_SIZES.get(dtype)
    if item_size is not None and offsets[1] - offsets[0] != math.prod(shape) * item_size:
        return (
            f"has shape {shape} of {dtype} ({math.prod(shape) * item_size} bytes) but its data_offsets {offsets} span "
            f"{offsets[1] - offsets[0]} bytes"
        )
    return None


def _checkpoint_files(directory: str, kwargs: Mapping[str, Any]) -> list[str] | None:
    """The safetensors files of the checkpoint in `directory` (+ `subfolder`), or None when it is not a plain local
    safetensors checkpoint (a variant, `.bin` weights, ...)."""
    if kwargs.get("variant") or kwargs.get("gguf_file") or kwargs.get("use_safetensors") is False:
        return None
    folder = os.path.join(directory, kwargs.get("subfolder") or "")
    index = os.path.join(folder, "model.safetensors.index.json")
    single = os.path.join(folder, "model.safetensors")
    if os.path.isfile(index):
        files = [os.path.join(folder, name) for name in _shard_names(index, folder)]
        return files if all(os.path.isfile(file) for file in files) else None  # transformers names a missing shard
    return [single] if os.path.isfile(single) else None


def _shard_names(index: str, folder: str) -> list[str]:
    """The shard file names of the weight index `index`, checked: transformers reads a damaged index with a bare
    `KeyError` / `JSONDecodeError`, and loads shards that an index names by an absolute path or through `..` from
    outside the folder without a word (the converter refuses those too).

    Raises:
        ValueError: naming the index file: not JSON, not an object, no `weight_map` or `metadata` object, or a shard
            name that is not a relative path inside the folder.
    """
    try:
        with open(index, encoding="utf-8") as handle:
            data = json.load(handle)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(
            f"{index} is not valid JSON ({error}); the weight index of the checkpoint is damaged."
        ) from error
    if not isinstance(data, dict):
        raise ValueError(f"{index} must hold a JSON object, got {type(data).__name__}.")
    weight_map = data.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index} has no `weight_map` object {{tensor name: shard file name}}.")
    if not isinstance(data.get("metadata"), dict):
        raise ValueError(f'{index} has no `metadata` object (transformers needs it, e.g. {{"total_size": ...}}).')
    for name, shard in weight_map.items():
        if (
            not isinstance(shard, str)
            or not shard
            or os.path.isabs(shard)
            or os.path.normpath(shard).split(os.sep)[0] == os.pardir
        ):
            raise ValueError(
                f"{index} maps {name!r} to {shard!r}; shards must be file names inside {folder} (no absolute paths, "
                "no '..')."
            )
    return sorted(set(weight_map.values()))


def _layer_count(names, pattern: re.Pattern) -> int:
    indices = [int(match.group(1)) for match in map(pattern.match, names) if match]
    return max(indices) + 1 if indices else 0


def check_config_against_checkpoint(config: Any, directory: str, kwargs: Mapping[str, Any]) -> None:
    """Refuse, before the model is built, a `config` that the safetensors checkpoint in `directory` cannot fill (see
    the module docstring). Checkpoints this cannot read are left to transformers.

    Raises:
        ValueError: naming the config field, its value and what the checkpoint holds (tensor name and shape); or a
            weight stored as integers / booleans; or a damaged safetensors header or weight index (naming the file).
    """
    files = _checkpoint_files(directory, kwargs)  # a damaged or escaping index is refused for every load
    if (
        not files
        or kwargs.get("state_dict") is not None
        or kwargs.get("output_loading_info")
        or kwargs.get("ignore_mismatched_sizes")
        or kwargs.get("quantization_config") is not None
        or getattr(config, "quantization_config", None) is not None
    ):
        return
    entries: dict[str, dict] = {}
    sources: dict[str, str] = {}
    for file in files:
        for name, entry in read_safetensors_header(file).items():
            entries[name] = entry
            sources[name] = os.path.basename(file)
    for name, entry in entries.items():
        if entry.get("dtype") in _INTEGER_DTYPES and name.endswith(_PARAMETER_SUFFIXES):
            raise ValueError(
                f"{sources[name]} stores the weight {name!r} as {entry['dtype']}; InternVL weights are floating point "
                "and would be cast without a word. A quantized checkpoint needs its `quantization_config` in "
                "config.json; otherwise the file is damaged."
            )
    text_config, vision_config = config.text_config, config.vision_config
    for label, sub_config, pattern, where in (
        ("llm_config", text_config, _LLM_LAYER, "language_model.*layers."),
        ("vision_config", vision_config, _VISION_LAYER, "vision_model.encoder.layers."),
    ):
        held = _layer_count(entries, pattern)
        wanted = getattr(sub_config, "num_hidden_layers", None)
        if held and isinstance(wanted, int) and wanted > _MAX_LAYER_FACTOR * held + _LAYER_SLACK:
            raise ValueError(
                f"`{label}.num_hidden_layers` is {wanted} but the checkpoint holds {held} layers (`{where}0` to "
                f"`{where}{held - 1}`); a config.json that does not match its weights."
            )
    embedding = next((name for name in entries if _LLM_EMBEDDING.match(name)), None)
    if embedding is not None:
        _check_sizes(
            entries[embedding]["shape"], embedding, "llm_config", text_config, {0: "vocab_size", 1: "hidden_size"}
        )
    if _PATCH_EMBEDDING in entries:
        _check_sizes(
            entries[_PATCH_EMBEDDING]["shape"],
            _PATCH_EMBEDDING,
            "vision_config",
            vision_config,
            {0: "hidden_size", 1: "num_channels", 2: "patch_size", 3: "patch_size"},
        )


def _check_sizes(shape: list[int], name: str, label: str, sub_config: Any, fields: dict[int, str]) -> None:
    if len(shape) != len(fields):
        return  # another layout: transformers names the mismatch after the load
    for axis, field in fields.items():
        value = getattr(sub_config, field, None)
        if isinstance(value, int) and value != shape[axis]:
            raise ValueError(
                f"`{label}.{field}` is {value} but the checkpoint's {name!r} has shape {tuple(shape)} (axis {axis}: "
                f"{shape[axis]}); a config.json that does not match its weights."
            )
