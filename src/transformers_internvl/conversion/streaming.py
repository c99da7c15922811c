"""Streaming the converted tensors into safetensors shards: the shard plan, the source reader, the writer.

`stream_tensors` reads the source tensors memory-mapped (`safetensors.safe_open`), one at a time, works out every
output shape on the meta device first (so each shard's header is written before its data), groups the outputs into
shards of at most `max_shard_size` bytes (`plan_shards`) and writes each tensor as soon as it is made: the memory it
needs is about one output tensor and its sources, whatever the model size.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from .checkpoint_io import INDEX_NAME, SINGLE_NAME, ConversionError, write_json
from .hf_layout import TensorStep

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


def _check_cast(before: torch.Tensor, after: torch.Tensor, name: str) -> None:
    """`--dtype` must not turn finite values into inf (beyond the target dtype's range: silently broken weights).

    Raises:
        ConversionError: naming the tensor, the dtypes and how many values overflowed.
    """
    if not after.is_floating_point() or not before.is_floating_point():
        return
    overflowed = int((torch.isfinite(before) & ~torch.isfinite(after)).sum())
    if overflowed:
        target = str(after.dtype).removeprefix("torch.")
        raise ConversionError(
            f"{name}: casting to {target} (--dtype) turns {overflowed} finite value(s) into inf (beyond the range of "
            f"{target}); keep the source dtype or use bfloat16"
        )


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
                    computed = step.apply([cache[key] for key in step.sources])
                    tensor = computed.to(item.dtype).contiguous()
                    if tensor.dtype != computed.dtype:
                        _check_cast(computed, tensor, step.name)
                    del computed
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


__all__ = ["SourceReader", "plan_shards", "stream_tensors"]
