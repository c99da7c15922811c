"""Streaming conversion between the original OpenGVLab layout and transformers' built-in InternVL port (`-hf`).

`convert_checkpoint(src, dst, to="hf" | "original")` reads the source tensors memory-mapped
(`safetensors.safe_open`), converts them one at a time (`hf_layout` tables) and writes the output shard by shard, so
the memory it needs is about one output shard plus the largest tensor, whatever the model size. Everything is
written to a temporary folder beside `dst` that is renamed to `dst` at the end; an error or an interruption removes
it, so `dst` either is complete or does not exist.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from transformers.utils import logging

from .hf_layout import (
    TensorStep,
    hf_to_original_plan,
    normalize_hf_key,
    original_to_hf_plan,
)

logger = logging.get_logger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DEFAULT_MAX_SHARD_SIZE = "5GB"
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


class ConversionError(ValueError):
    """A source checkpoint that cannot be converted (the message says which file / tensor / field and why)."""


@dataclass
class ConversionResult:
    """What `convert_checkpoint` wrote: the folder, the tensor count, total bytes and the shard files."""

    path: Path
    num_tensors: int
    total_bytes: int
    shards: list[str] = field(default_factory=list)
    verification: dict[str, Any] | None = None


def parse_size(text: str | int) -> int:
    """Bytes of a size such as `"5GB"`, `"500MB"`, `"2GiB"` or an int. Raises `ValueError` on anything else."""
    if isinstance(text, int):
        size = text
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)?\s*", str(text).upper())
        if not match:
            raise ValueError(f"max shard size must look like 5GB, 500MB or 2GiB, got {text!r}")
        size = int(float(match[1]) * _SIZE_UNITS[match[2] or ""])
    if size <= 0:
        raise ValueError(f"max shard size must be positive, got {text!r}")
    return size


# ---------------------------------------------------------------------------------------------------------------------
# Reading a checkpoint
# ---------------------------------------------------------------------------------------------------------------------


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
            header, or an index that does not match the shards' contents.
    """
    index_path, single_path = folder / INDEX_NAME, folder / SINGLE_NAME
    if index_path.is_file():
        index = read_json(index_path, "weight index")
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ConversionError(f"{index_path} has no weight_map")
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


# ---------------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------------


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
    tmp.mkdir()
    try:
        yield tmp
        if dst.exists():
            old = dst.parent / f".{dst.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.replace(dst, old)
            os.replace(tmp, dst)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_TORCH_DTYPES = {name: dtype for dtype, name in _SAFETENSORS_DTYPES.items()}


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


@dataclass
class _Planned:
    step: TensorStep
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        numel = 1
        for dim in self.shape:
            numel *= dim
        return numel * _element_size(self.dtype)


class SourceReader:
    """Reads source tensors one at a time, memory-mapped (`safe_open`): a tensor's pages are mapped only while the
    tensor is alive, so no page of the source stays resident after its tensor was written."""

    def __init__(
        self,
        folder: Path,
        locations: dict[str, str],
        adjust: dict[str, Any] | None = None,
        aliases: dict[str, str] | None = None,
        lora_factors: dict[str, tuple[str, str]] | None = None,
        raw_locations: dict[str, str] | None = None,
    ):
        self.folder = folder
        self.locations = locations
        self.adjust = adjust or {}  # {name: function applied to the tensor when read} (LoRA merge)
        # Unmerged original LoRA checkpoints: {plain name: name in the file} and {plain name: (lora_A, lora_B)}.
        self.aliases = aliases or {}
        self.lora_factors = lora_factors or {}
        self.raw_locations = raw_locations or locations  # {name in the file: shard}
        unknown = sorted(set(self.adjust) - set(locations))
        if unknown:
            raise ConversionError(f"the LoRA adapter adapts {unknown[0]!r}, which the checkpoint does not have")
        self.shapes: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        for shard in sorted(set(locations.values())):
            with safe_open(str(folder / shard), framework="pt") as reader:
                for key in reader.keys():
                    sliced = reader.get_slice(key)
                    dtype_name = sliced.get_dtype()
                    if dtype_name not in _TORCH_DTYPES:
                        raise ConversionError(f"tensor {key!r} in {shard} has unsupported dtype {dtype_name}")
                    self.shapes[key] = (tuple(sliced.get_shape()), _TORCH_DTYPES[dtype_name])
        for plain, key in self.aliases.items():
            self.shapes[plain] = self.shapes[key]

    def meta(self, key: str) -> torch.Tensor:
        shape, dtype = self.shapes[key]
        return torch.empty(shape, dtype=dtype, device="meta")

    def nbytes(self, key: str) -> int:
        shape, dtype = self.shapes[key]
        numel = 1
        for dim in shape:
            numel *= dim
        return numel * _element_size(dtype)

    def read(self, key: str) -> torch.Tensor:
        with safe_open(str(self.folder / self.locations[key]), framework="pt") as reader:
            # backed by its own mapping of the file, released with the tensor
            tensor = reader.get_tensor(self.aliases.get(key, key))
        if key in self.lora_factors:
            from .original_lora import merge_lora_pair

            lora_a, lora_b = (self._read_raw(name) for name in self.lora_factors[key])
            try:
                tensor = merge_lora_pair(tensor, lora_a, lora_b, key)
            except ValueError as error:
                raise ConversionError(str(error)) from None
        return self.adjust[key](tensor) if key in self.adjust else tensor

    def _read_raw(self, name: str) -> torch.Tensor:
        with safe_open(str(self.folder / self.raw_locations[name]), framework="pt") as reader:
            return reader.get_tensor(name)


def plan_shards(planned: list[_Planned], max_shard_size: int) -> list[list[_Planned]]:
    """Consecutive groups of at most `max_shard_size` bytes (a larger tensor gets a shard of its own)."""
    shards: list[list[_Planned]] = []
    size = 0
    for item in planned:
        if not shards or (shards[-1] and size + item.nbytes > max_shard_size):
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += item.nbytes
    return shards


def _safetensors_header(items: list[_Planned]) -> bytes:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for item in items:
        header[item.step.name] = {
            "dtype": _SAFETENSORS_DTYPES[item.dtype],
            "shape": list(item.shape),
            "data_offsets": [offset, offset + item.nbytes],
        }
        offset += item.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # safetensors pads the header to a multiple of 8 bytes
    return len(encoded).to_bytes(8, "little") + encoded


def write_json(path: Path, value: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as writer:
        json.dump(value, writer, indent=2, ensure_ascii=False, sort_keys=True)
        writer.write("\n")


def stream_tensors(
    src: Path,
    locations: dict[str, str],
    steps: list[TensorStep],
    folder: Path,
    dtype: torch.dtype | None,
    max_shard_size: int,
    progress: bool,
    adjust: dict[str, Any] | None = None,
    original_lora: tuple[dict[str, str], dict[str, tuple[str, str]], dict[str, str]] | None = None,
    expected_shapes: dict[str, tuple[int, ...]] | None = None,
) -> tuple[list[str], int]:
    """Run the plan and write safetensors shards into `folder`; returns `(shard file names, total bytes)`.

    Output shapes are worked out first on the meta device, so each shard's header is written before its data and
    every tensor goes to disk as soon as it is made: memory holds one output tensor and its sources at a time,
    whatever `max_shard_size` is. Steps run in source order (shard, then name); the sources of the last step are
    kept for the next one (one fused tensor feeds three consecutive steps)."""
    from tqdm.auto import tqdm

    aliases, lora_factors, raw_locations = original_lora or (None, None, None)
    reader = SourceReader(src, locations, adjust, aliases, lora_factors, raw_locations)
    names = [step.name for step in steps]
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        raise ConversionError(f"two source tensors map to the same output tensor {duplicates[0]!r}")
    uses = Counter(source for step in steps for source in step.sources)
    order = {key: index for index, key in enumerate(sorted(locations, key=lambda k: (locations[k], k)))}
    steps = sorted(steps, key=lambda step: (min(order[s] for s in step.sources), step.name))
    planned = []
    for step in steps:
        out = step.apply([reader.meta(key) for key in step.sources])
        out_dtype = dtype if dtype is not None and out.is_floating_point() else out.dtype
        planned.append(_Planned(step, tuple(out.shape), out_dtype))
    # Shapes the config implies (the target model on the meta device): a checkpoint whose tensors do not fit its own
    # config is refused before anything is written, instead of giving a folder that fails to load.
    for item in planned:
        expected = (expected_shapes or {}).get(item.step.name)
        if expected is not None and tuple(expected) != item.shape:
            raise ConversionError(
                f"{item.step.name}: the checkpoint gives shape {item.shape}, the config implies {tuple(expected)}"
            )
    shards = plan_shards(planned, max_shard_size)
    count = len(shards)
    file_names = (
        [SINGLE_NAME] if count == 1 else [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
    )

    total = sum(reader.nbytes(key) for key in locations)
    cache: dict[str, torch.Tensor] = {}
    with tqdm(total=total, unit="B", unit_scale=True, desc="converting", disable=not progress) as bar:
        for items, file_name in zip(shards, file_names, strict=True):
            with open(folder / file_name, "wb") as writer:
                writer.write(_safetensors_header(items))
                for item in items:
                    step = item.step
                    cache = {key: cache[key] for key in step.sources if key in cache}  # drop the others first
                    cache |= {key: reader.read(key) for key in step.sources if key not in cache}
                    tensor = step.apply([cache[key] for key in step.sources]).to(item.dtype).contiguous()
                    if tuple(tensor.shape) != item.shape:  # the meta run and the real run must agree
                        raise ConversionError(f"{step.name}: shape {tuple(tensor.shape)} != planned {item.shape}")
                    writer.write(tensor.reshape(-1).view(torch.uint8).numpy().data)  # no copy
                    del tensor
                    bar.update(sum(reader.nbytes(key) / uses[key] for key in step.sources))
    weight_map = {item.step.name: file_name for items, file_name in zip(shards, file_names) for item in items}
    total_bytes = sum(item.nbytes for item in planned)
    if count > 1:
        index = {"metadata": {"total_size": total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        write_json(folder / INDEX_NAME, index)
    return file_names, total_bytes


# ---------------------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------------------


def resolve_source(src: str | os.PathLike) -> Path:
    """A local folder, or a hub repository id downloaded with `huggingface_hub.snapshot_download`."""
    path = Path(src)
    if path.is_dir():
        return path
    if path.exists():
        raise ConversionError(f"source {src} is a file; pass the checkpoint folder")
    text = str(src)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", text):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(text))
        except Exception as error:  # noqa: BLE001  (any hub failure becomes one clear message)
            raise ConversionError(f"source {text} is not a local folder and could not be downloaded: {error}") from None
    raise ConversionError(f"source folder {src} does not exist")


def detect_layout(config: dict[str, Any], path: Path) -> str:
    model_type = config.get("model_type")
    if model_type == "internvl_chat":
        return "original"
    if model_type == "internvl":
        return "hf"
    raise ConversionError(
        f"{path / 'config.json'} has model_type {model_type!r}: unknown architecture (expected 'internvl_chat' for "
        "the original OpenGVLab layout or 'internvl' for transformers' -hf layout)"
    )


def convert_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    to: str,
    *,
    dtype: str | torch.dtype | None = None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    force: bool = False,
    verify: bool = False,
    image_token_id: int | None = None,
    merge_lora: str | os.PathLike | None = None,
    progress: bool = True,
) -> ConversionResult:
    """Convert an InternVL checkpoint folder between the original OpenGVLab layout and transformers' `-hf` layout.

    Args:
        src: checkpoint folder (or a hub id, downloaded when online). Its `config.json` `model_type` tells the
            layout (`internvl_chat`: original, `internvl`: `-hf`).
        dst: output folder; must not exist unless `force`.
        to: `"hf"` (original -> transformers' `InternVLForConditionalGeneration` layout, with processor, tokenizer
            and generation config) or `"original"` (`-hf` -> original layout; InternLM2 comes back with fused `wqkv`
            when the `-hf` config records that it was InternLM2).
        dtype: `"bf16"`, `"fp16"`, `"fp32"` (or a torch dtype) for floating tensors; `None` keeps each tensor's.
        max_shard_size: largest output shard (`"5GB"`, `"500MB"`, bytes); a tensor larger than it gets a shard alone.
        force: replace an existing `dst` (only once the new folder is complete).
        verify: load source and result and compare logits and greedy tokens on a random image + prompt
            (`verify.verify_conversion`); raises `ConversionError` above tolerance, after `dst` was written.
        image_token_id: id of `<IMG_CONTEXT>` when neither the config nor the tokenizer of `src` gives it.
        merge_lora: a PEFT LoRA adapter folder trained on the model of `src`, merged into the weights on the way
            (`lora.lora_deltas`); `verify` then compares against the unmerged source.
        progress: show a progress bar (bytes of the source tensors).

    Returns:
        `ConversionResult`.

    Raises:
        ConversionError: bad source (missing / truncated shard, index mismatch, unknown architecture or tensor,
            `ps_version: v1`, ...), existing `dst`, wrong direction, or a failed verification.
    """
    from .layouts import prepare_to_hf, prepare_to_original  # the config / tokenizer side

    if to not in ("hf", "original"):
        raise ConversionError(f"`to` must be 'hf' or 'original', got {to!r}")
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ConversionError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    shard_bytes = parse_size(max_shard_size)
    dst = Path(dst)
    if dst.is_symlink() or (dst.exists() and not dst.is_dir()):
        raise ConversionError(f"destination {dst} exists and is not a folder (a file or a link): remove it first")
    if dst.exists() and not force:
        raise ConversionError(f"destination {dst} already exists (pass --force to replace it)")
    if not dst.absolute().parent.is_dir():
        raise ConversionError(f"the folder {dst.absolute().parent} that should hold the destination does not exist")
    source = resolve_source(src)
    resolved_source, resolved_dst = source.resolve(), dst.resolve()
    if resolved_dst == resolved_source or resolved_dst in resolved_source.parents:
        # Replacing DST (--force) would delete the source checkpoint with it.
        raise ConversionError(f"destination {dst} is the source folder {source} or contains it; choose another one")
    config = read_json(source / "config.json", "config")
    layout = detect_layout(config, source)
    wanted = "original" if to == "hf" else "hf"
    if layout != wanted:
        raise ConversionError(
            f"{source} is already in the {layout!r} layout; --to {to} converts from the {wanted!r} one"
        )
    locations = tensor_files(source)
    original_lora = None
    if layout == "original":
        # An unmerged LoRA run of the original fine-tuning code (`use_llm_lora` / `use_backbone_lora`, PEFT key
        # names): each wrapped layer is merged on the way (`W + 2 B@A`, the original's `lora_alpha = 2 r`).
        from .original_lora import plan_original_lora_merge

        try:
            aliases, lora_factors = plan_original_lora_merge(locations)
        except ValueError as error:
            raise ConversionError(str(error)) from None
        if lora_factors or any(alias != key for alias, key in aliases.items()):
            original_lora = (aliases, lora_factors, locations)
            locations = {plain: locations[key] for plain, key in aliases.items()}
            config = {**config, "use_llm_lora": 0, "use_backbone_lora": 0}
    adjust = None
    if merge_lora is not None:
        from .lora import lora_deltas

        llm = (config.get("llm_config") or {}).get("architectures") or []
        adjust = lora_deltas(merge_lora, layout, "output" if llm[:1] == ["InternLM2ForCausalLM"] else "lm_head")

    if to == "hf":
        prepared = prepare_to_hf(source, config, image_token_id=image_token_id, dtype=dtype)
        steps = original_to_hf_plan(list(locations), prepared.internlm2_heads)
    else:
        prepared = prepare_to_original(source, config, dtype=dtype)
        normalized = {}
        for key in locations:
            name = normalize_hf_key(key)
            if name in normalized:
                raise ConversionError(f"tensors {normalized[name]!r} and {key!r} name the same parameter")
            normalized[name] = key
        steps = hf_to_original_plan(normalized, prepared.internlm2_heads)
    prepared.check_tensors({step.name for step in steps})

    with atomic_output_folder(dst, force) as tmp:
        shards, total_bytes = stream_tensors(
            source, locations, steps, tmp, dtype, shard_bytes, progress, adjust, original_lora, prepared.expected_shapes
        )
        prepared.write_side_files(tmp)
        result = ConversionResult(path=dst, num_tensors=len(steps), total_bytes=total_bytes, shards=shards)
    if verify:
        from .verify import verify_conversion

        result.verification = verify_conversion(source, dst, to, dtype=dtype, merge_lora=merge_lora)
    return result


__all__ = ["ConversionError", "ConversionResult", "convert_checkpoint", "parse_size", "tensor_files"]
