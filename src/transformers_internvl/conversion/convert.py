"""Streaming conversion between the original OpenGVLab layout and transformers' built-in InternVL port (`-hf`).

`convert_checkpoint(src, dst, to="hf" | "original")` reads the source tensors memory-mapped
(`safetensors.safe_open`), converts them one at a time (`hf_layout` tables) and writes the output shard by shard
(`streaming`), so the memory it needs is about one output shard plus the largest tensor, whatever the model size.
Everything is written to a temporary folder beside `dst` that is renamed to `dst` at the end
(`checkpoint_io.atomic_output_folder`); an error or an interruption removes it, so `dst` either is complete or does
not exist. The config / tokenizer side of each layout is `layouts`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint_io import ConversionError, atomic_output_folder, read_json, tensor_files
from .hf_layout import TensorStep, hf_to_original_plan, normalize_hf_key, original_to_hf_plan
from .streaming import stream_tensors

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DEFAULT_MAX_SHARD_SIZE = "5GB"
_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


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
    template: str | None = None,
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
        template: `--to original` only: the conversation template the original `config.json` names (a name of
            `chat_templates.TEMPLATES`). Default: the one `--to hf` recorded, else the one the source's chat
            template renders as (`template_inference`), else from the LLM architecture, with a warning.

    Returns:
        `ConversionResult`.

    Raises:
        ConversionError: bad source (missing / truncated shard, index mismatch, unknown architecture or tensor,
            `ps_version: v1`, ...), existing `dst`, wrong direction, or a failed verification.
    """
    from .layouts import prepare_to_hf  # the config / tokenizer side
    from .original_layout import prepare_to_original

    if to not in ("hf", "original"):
        raise ConversionError(f"`to` must be 'hf' or 'original', got {to!r}")
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ConversionError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    shard_bytes = parse_size(max_shard_size)
    if template is not None:
        from ..chat_templates import TEMPLATES

        if to != "original":
            raise ConversionError("template applies to --to original (an original config.json names its template)")
        if template not in TEMPLATES:
            raise ConversionError(f"unknown template {template!r}; known templates: {', '.join(sorted(TEMPLATES))}")
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
        prepared = prepare_to_hf(
            source, config, image_token_id=image_token_id, dtype=dtype, tensor_names=set(locations)
        )
        steps = original_to_hf_plan(list(locations), prepared.internlm2_heads)
    else:
        normalized = {}
        for key in locations:
            name = normalize_hf_key(key)
            if name in normalized:
                raise ConversionError(f"tensors {normalized[name]!r} and {key!r} name the same parameter")
            normalized[name] = key
        prepared = prepare_to_original(source, config, dtype=dtype, tensor_names=set(normalized), template=template)
        if adjust:  # the adapter names the saved -hf names; the files may use the module-tree ones
            adjust = {normalized.get(name, name): merge for name, merge in adjust.items()}
        steps = hf_to_original_plan(normalized, prepared.internlm2_heads)
        embeddings = normalized.get("language_model.model.embed_tokens.weight")
        if prepared.head_from_embeddings and embeddings:  # a tied -hf model: the original needs its head stored
            steps.append(TensorStep(prepared.head_from_embeddings, (embeddings,)))
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
