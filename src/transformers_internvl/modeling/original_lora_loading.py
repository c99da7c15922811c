"""Unmerged LoRA checkpoints written by the original fine-tuning code, merged into plain weights while loading.

The streaming converter's merge of the same checkpoints (`plan_original_lora_merge`, `merge_lora_pair`) and the
original's LoRA target modules live in `conversion/original_lora.py`.

With `--use_llm_lora r` / `--use_backbone_lora r` the original `internvl_chat_finetune.py` wraps the LLM and/or the
vision tower with PEFT (`InternVLChatModel.wrap_llm_lora` / `wrap_backbone_lora` in the original
`internvl/model/internvl_chat/modeling_internvl_chat.py`), writes `use_llm_lora: r` / `use_backbone_lora: r` into
`config.json` and saves the wrapped modules' state dict as is. Every key of a wrapped module then carries PEFT's
`base_model.model.` prefix, and each LoRA-wrapped linear layer is stored as three tensors::

    language_model.base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight     W  (out, in)
    language_model.base_model.model.model.layers.0.self_attn.q_proj.base_layer.bias       (when the layer has one)
    language_model.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight A  (r, in)
    language_model.base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight B  (out, r)
    language_model.base_model.model.lm_head.weight                                       (not wrapped, prefixed)
    vision_model.base_model.model.encoder.layers.0.attn.qkv.base_layer.weight            (the same for the ViT)

The original rebuilds the wrappers from the config at load time with `lora_alpha = 2 * r` (dropout 0.05, inactive in
eval), so each wrapped layer computes `x @ W.T + (alpha / r) * x @ A.T @ B.T` with `alpha / r = 2` whatever `r` is.
Here that sum is folded into the weight while loading, `W' = W + 2 * B @ A` (in fp32, then cast to the weight's
dtype), the same merge as the original's `tools/merge_lora.py` (`merge_and_unload`). The loaded model is a plain
model; `config.use_llm_lora` / `config.use_backbone_lora` are set to 0, as the original merge script does, so that a
save writes plain keys under a config that says so and a reload does not merge twice.

The merge runs inside transformers' loader as a `WeightConverter` (many-to-one: base, A, B -> weight), one layer at a
time: no second copy of the model is materialised, the peak extra memory is one layer's fp32 temporaries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from safetensors import safe_open
from transformers.core_model_loading import ConversionOps, WeightConverter, WeightRenaming
from transformers.utils import logging

logger = logging.get_logger(__name__)

# `lora_alpha / r` of the original's wrappers (`lora_alpha = 2 * r` in `InternVLChatModel.__init__` and the script).
ORIGINAL_LORA_SCALING = 2.0
ORIGINAL_LORA_DROPOUT = 0.05

# Key suffixes of one PEFT-wrapped linear layer in an original LoRA checkpoint (adapter name "default").
LORA_BASE_SUFFIX = "base_layer.weight"
LORA_A_SUFFIX = "lora_A.default.weight"
LORA_B_SUFFIX = "lora_B.default.weight"
# Which config field declares the LoRA of each tower (keys of `LoraLoadRecord.ranks`).
_TOWER_FIELDS = {"vision": "use_backbone_lora", "llm": "use_llm_lora"}


@dataclass
class LoraLoadRecord:
    """What the merge saw during one load; kept on the model until the load finishes."""

    ranks: dict[str, set[int]] = field(default_factory=lambda: {"vision": set(), "llm": set()})
    merged: dict[str, int] = field(default_factory=lambda: {"vision": 0, "llm": 0})
    # (key of this model or None, what is wrong)
    problems: list[tuple[str | None, str]] = field(default_factory=list)


# PEFT `target_modules` of the original `wrap_backbone_lora` (InternViT) and `wrap_llm_lora` (per LLM architecture).
ORIGINAL_BACKBONE_LORA_TARGET_MODULES = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
ORIGINAL_LLM_LORA_TARGET_MODULES: dict[str, tuple[str, ...]] = {
    "InternLM2ForCausalLM": (
        "attention.wqkv",
        "attention.wo",
        "feed_forward.w1",
        "feed_forward.w2",
        "feed_forward.w3",
    ),
    "Phi3ForCausalLM": ("mlp.down_proj", "mlp.gate_up_proj", "self_attn.o_proj", "self_attn.qkv_proj"),
    "Qwen2ForCausalLM": (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.down_proj",
        "mlp.up_proj",
    ),
}
ORIGINAL_LLM_LORA_TARGET_MODULES["LlamaForCausalLM"] = ORIGINAL_LLM_LORA_TARGET_MODULES["Qwen2ForCausalLM"]


def _tower(layer_name: str) -> str:
    return "vision" if ".vision_model." in f".{layer_name}" else "llm"


def _record(model) -> LoraLoadRecord:
    record = model.__dict__.get("_original_lora_record")
    if record is None:
        record = LoraLoadRecord()
        model.__dict__["_original_lora_record"] = record
    return record


def nonfinite_merge_problem(base: torch.Tensor, merged: torch.Tensor) -> str | None:
    """Why a LoRA merge result is unusable, or `None`: it holds NaN / inf where the base weight is finite.

    The original would compute with those values in every forward (silently NaN outputs); a merge refuses them. A base
    weight that is itself non-finite is the checkpoint's own content and is passed through unchanged.
    """
    finite_base = torch.isfinite(base)
    bad = int((~torch.isfinite(merged) & finite_base.to(merged.device)).sum())
    if bad == 0:
        return None
    return (
        f"merging lora_A / lora_B gives {bad} non-finite value(s) (NaN or inf) where the base weight is finite "
        f"(non-finite LoRA factors, or a sum beyond the range of {str(merged.dtype).removeprefix('torch.')})"
    )


def merge_lora_weight(
    base: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float = ORIGINAL_LORA_SCALING
) -> torch.Tensor:
    """`base + scaling * lora_b @ lora_a` in float32, cast back to `base`'s dtype, on `base`'s device: the one merge
    of a LoRA layer, used at load (`MergeOriginalLora`), by the streaming converter (`conversion.original_lora`) and by
    `--merge-lora` (`conversion.lora`, with the adapter's own scaling).

    Raises:
        ValueError: the factors do not chain or do not fit `base`, or the merge holds NaN / inf where `base` is finite
            (`nonfinite_merge_problem`); the message names no layer (the callers add it).
    """
    if lora_a.ndim != 2 or lora_b.ndim != 2 or lora_b.shape[1] != lora_a.shape[0]:
        raise ValueError(f"lora_A {tuple(lora_a.shape)} and lora_B {tuple(lora_b.shape)} do not chain")
    if (lora_b.shape[0], lora_a.shape[1]) != tuple(base.shape):
        raise ValueError(
            f"lora_B @ lora_A is {(lora_b.shape[0], lora_a.shape[1])}, the base weight {tuple(base.shape)}"
        )
    delta = lora_b.to(torch.float32) @ lora_a.to(device=lora_b.device, dtype=torch.float32)
    merged = (base.to(torch.float32) + scaling * delta.to(base.device)).to(base.dtype)
    problem = nonfinite_merge_problem(base, merged)
    if problem is not None:
        raise ValueError(problem)
    return merged


class MergeOriginalLora(ConversionOps):
    """`{base_layer.weight: W, lora_A: A, lora_B: B}` -> `{weight: W + 2 * B @ A}` (see the module docstring).

    A layer whose tensors do not fit together (a missing part, shapes that do not chain) is recorded and left with its
    base weight; the load then fails with all such layers listed (`finish_original_lora_load`).
    """

    def convert(
        self,
        input_dict: dict[str, list[torch.Tensor]],
        source_patterns: list[str],
        target_patterns: list[str],
        full_layer_name: str | None = None,
        model=None,
        **kwargs,
    ) -> dict[str, torch.Tensor]:
        tensors = {name: values[0] for name, values in input_dict.items() if values}
        record = _record(model) if model is not None else LoraLoadRecord()
        tower = _tower(full_layer_name)
        base, lora_a, lora_b = tensors.get(LORA_BASE_SUFFIX), tensors.get(LORA_A_SUFFIX), tensors.get(LORA_B_SUFFIX)
        missing = [
            name
            for name, tensor in ((LORA_BASE_SUFFIX, base), (LORA_A_SUFFIX, lora_a), (LORA_B_SUFFIX, lora_b))
            if tensor is None
        ]
        if missing:
            record.problems.append((full_layer_name, f"the checkpoint has no {' / '.join(missing)} for this layer"))
            if base is None:
                return {}
            return {full_layer_name: base}
        try:
            merged = merge_lora_weight(base, lora_a, lora_b)
        except ValueError as error:
            record.problems.append((full_layer_name, str(error)))
            return {full_layer_name: base}
        record.ranks[tower].add(int(lora_a.shape[0]))
        record.merged[tower] += 1
        return {full_layer_name: merged}


class _PeftWrapperRenaming(WeightRenaming):
    """Strips PEFT's wrapper names (`base_model.model.`, `base_layer.bias`); never reversed on save."""

    __slots__ = ()


class _LoraMergeConverter(WeightConverter):
    """Merges `base_layer` + `lora_A` + `lora_B` into `weight`; never reversed on save."""

    __slots__ = ()


def original_lora_renamings() -> list[WeightRenaming]:
    """Renamings to apply before the layout renamings: the PEFT wrapper prefixes and the wrapped layers' biases."""
    return [
        _PeftWrapperRenaming(r"^language_model\.base_model\.model\.", "language_model."),
        _PeftWrapperRenaming(r"^vision_model\.base_model\.model\.", "vision_model."),
        _PeftWrapperRenaming(r"\.base_layer\.bias$", ".bias"),
    ]


def original_lora_converters() -> list[WeightConverter]:
    """The merge of each LoRA-wrapped layer's three tensors into its weight."""
    return [
        _LoraMergeConverter(
            [LORA_BASE_SUFFIX, LORA_A_SUFFIX, LORA_B_SUFFIX], "weight", operations=[MergeOriginalLora()]
        )
    ]


def checkpoint_holds_original_lora(checkpoint_files: list[str] | None, state_dict: dict | None) -> bool:
    """Whether the checkpoint holds keys of a PEFT-wrapped (unmerged LoRA) original model.

    Reads only the safetensors headers (key names), never tensor data. `.bin` files (which cannot be listed
    without loading them) count as LoRA-holding, so their keys still get the LoRA renamings.
    """
    markers = (".base_layer.", ".lora_A.", ".lora_B.", "language_model.base_model.model.", "vision_model.base_model.")

    def holds(keys) -> bool:
        return any(marker in key for key in keys for marker in markers)

    if state_dict is not None and holds(state_dict):
        return True
    for checkpoint_file in checkpoint_files or []:
        if not str(checkpoint_file).endswith(".safetensors"):
            return True
        with safe_open(checkpoint_file, framework="pt") as handle:
            if holds(handle.keys()):
                return True
    return False


def is_original_lora_transform(transform) -> bool:
    """Whether `transform` is one of this module's (they only apply on load and must not be reversed on save)."""
    return isinstance(transform, (_PeftWrapperRenaming, _LoraMergeConverter))


def finish_original_lora_load(model, describe_key: Callable[[str], str]) -> None:
    """After the weights are in: check the merged LoRA against the config and make the config describe the result.

    Drops the LoRA transforms from the conversions kept for saving (a merged model saves plain keys), and sets
    `use_llm_lora` / `use_backbone_lora` to 0.

    Args:
        model: the model being loaded (`InternVLPreTrainedModel`).
        describe_key: maps a key of this model to its name in the original layout, for messages.

    Raises:
        ValueError: a LoRA layer whose tensors are incomplete, do not fit or merge to NaN / inf, or LoRA of another
            rank than the config's `use_llm_lora` / `use_backbone_lora` (the original would not load it either).
    """
    record: LoraLoadRecord | None = model.__dict__.pop("_original_lora_record", None)
    conversions = getattr(model, "_weight_conversions", None)
    if conversions is not None:
        model._weight_conversions = [t for t in conversions if not is_original_lora_transform(t)]
    config = model.config
    problems = list(record.problems) if record is not None else []
    for tower, field_name in _TOWER_FIELDS.items():
        declared = int(getattr(config, field_name, 0) or 0)
        ranks = record.ranks[tower] if record is not None else set()
        merged = record.merged[tower] if record is not None else 0
        if declared and ranks and ranks != {declared}:
            problems.append(
                (
                    None,
                    f"`{field_name}` is {declared} in the config but the checkpoint's LoRA tensors have rank "
                    f"{sorted(ranks)}",
                )
            )
        elif merged and not declared:
            logger.warning(
                f"The checkpoint holds unmerged LoRA tensors (rank {sorted(ranks)}) for the "
                f"{'vision tower' if tower == 'vision' else 'language model'} but the config's `{field_name}` is 0; "
                f"they were merged with the original fine-tuning code's scaling lora_alpha / r = "
                f"{ORIGINAL_LORA_SCALING:g}."
            )
        elif declared and not merged:
            logger.warning(
                f"The config's `{field_name}` is {declared} but the checkpoint holds no unmerged LoRA tensors for the "
                f"{'vision tower' if tower == 'vision' else 'language model'}; loaded its weights as plain weights."
            )
        if merged:
            logger.info(f"Merged {merged} LoRA layers (rank {sorted(ranks)}, scaling {ORIGINAL_LORA_SCALING:g}).")
    if problems:
        lines = [message if key is None else f"{describe_key(key)}: {message}" for key, message in problems]
        raise ValueError(
            "The checkpoint's unmerged LoRA (saved by the original fine-tuning code) cannot be loaded:\n  "
            + "\n  ".join(lines)
        )
    for field_name in _TOWER_FIELDS.values():
        if getattr(config, field_name, 0):
            setattr(config, field_name, 0)


__all__ = [
    "LORA_A_SUFFIX",
    "LORA_BASE_SUFFIX",
    "LORA_B_SUFFIX",
    "ORIGINAL_BACKBONE_LORA_TARGET_MODULES",
    "ORIGINAL_LLM_LORA_TARGET_MODULES",
    "ORIGINAL_LORA_DROPOUT",
    "ORIGINAL_LORA_SCALING",
    "MergeOriginalLora",
    "checkpoint_holds_original_lora",
    "finish_original_lora_load",
    "is_original_lora_transform",
    "merge_lora_weight",
    "nonfinite_merge_problem",
    "original_lora_converters",
    "original_lora_renamings",
]
