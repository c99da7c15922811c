"""Unmerged LoRA checkpoints of the original fine-tuning code, for the streaming converter and for training.

`--use_llm_lora r` / `--use_backbone_lora r` checkpoints (see `modeling/original_lora_loading.py` for their layout and
the merge `from_pretrained` does while loading) are merged here key by key: `plan_original_lora_merge` tells which
tensors become which plain original keys, `merge_lora_pair` folds one layer. The PEFT target modules of the original's
`wrap_backbone_lora` / `wrap_llm_lora` are kept here for the training code that wraps a model the same way.
"""

from __future__ import annotations

import torch

from ..modeling.original_lora_loading import (  # the target tables: re-exported for the training code
    LORA_A_SUFFIX,
    LORA_B_SUFFIX,
    LORA_BASE_SUFFIX,
    ORIGINAL_BACKBONE_LORA_TARGET_MODULES,
    ORIGINAL_LLM_LORA_TARGET_MODULES,
    merge_lora_weight,
)

_PEFT_PREFIXES = (
    ("language_model.base_model.model.", "language_model."),
    ("vision_model.base_model.model.", "vision_model."),
)


def merge_lora_pair(base: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, name: str) -> torch.Tensor:
    """`W + 2 * B @ A` (the original's `lora_alpha = 2 r`), in float32, cast back to `base`'s dtype
    (`modeling.original_lora_loading.merge_lora_weight`, the merge the loader does).

    Raises:
        ValueError: `lora_A` / `lora_B` do not chain or do not fit `base`, or the merge gives NaN / inf where `base`
            is finite (naming `name`).
    """
    try:
        return merge_lora_weight(base, lora_a, lora_b)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None


def plan_original_lora_merge(keys) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """For streaming converters: how the keys of an unmerged original LoRA checkpoint become plain original keys.

    Returns:
        `(aliases, merges)`: `aliases[plain key] = checkpoint key` for every tensor that is not a LoRA factor
        (`language_model.base_model.model.X` -> `language_model.X`, `...base_layer.weight` -> `....weight`), and
        `merges[plain weight key] = (lora_A key, lora_B key)` for the wrapped layers (merge with `merge_lora_pair`).
        A checkpoint without PEFT keys gives `aliases` mapping each key to itself and no merges.

    Raises:
        ValueError: a wrapped layer without both factors, a factor without its base layer, or two keys naming the
            same plain tensor.
    """
    keys = set(keys)
    aliases: dict[str, str] = {}
    merges: dict[str, tuple[str, str]] = {}
    used_factors: set[str] = set()
    for key in sorted(keys):
        if ".lora_A." in key or ".lora_B." in key:
            continue
        plain = key
        for old, new in _PEFT_PREFIXES:
            if plain.startswith(old):
                plain = new + plain[len(old) :]
                break
        if key.endswith(f".{LORA_BASE_SUFFIX}"):
            stem = key[: -len(LORA_BASE_SUFFIX)]
            lora_a, lora_b = stem + LORA_A_SUFFIX, stem + LORA_B_SUFFIX
            missing = [factor for factor in (lora_a, lora_b) if factor not in keys]
            if missing:
                raise ValueError(f"the LoRA-wrapped layer {stem.rstrip('.')!r} has no {missing[0]!r} in the checkpoint")
            plain = plain[: -len(LORA_BASE_SUFFIX)] + "weight"
            merges[plain] = (lora_a, lora_b)
            used_factors.update((lora_a, lora_b))
        elif key.endswith(".base_layer.bias"):
            plain = plain[: -len("base_layer.bias")] + "bias"
        if plain in aliases:
            raise ValueError(f"checkpoint tensors {aliases[plain]!r} and {key!r} both give {plain!r}")
        aliases[plain] = key
    orphans = sorted(key for key in keys if (".lora_A." in key or ".lora_B." in key) and key not in used_factors)
    if orphans:
        raise ValueError(f"LoRA factor {orphans[0]!r} has no `base_layer.weight` beside it in the checkpoint")
    return aliases, merges


__all__ = [
    "ORIGINAL_BACKBONE_LORA_TARGET_MODULES",
    "ORIGINAL_LLM_LORA_TARGET_MODULES",
    "merge_lora_pair",
    "plan_original_lora_merge",
]
