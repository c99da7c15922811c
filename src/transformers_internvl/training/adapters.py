"""PEFT adapters with the ORIGINAL InternVL module names, for tools that read original checkpoints.

This package's module tree is `model.language_model.layers.N...`, `model.vision_model...`, `model.mlp1...`,
`lm_head`; the original `InternVLChatModel` (and every tool built on it) names the same modules
`language_model.model.layers.N...`, `vision_model...`, `mlp1...`, `language_model.<head>` (`lm_head`, InternLM2
`output`). The key table is `modeling.checkpoint_mapping.original_layout_renamings`; here it is applied to the keys
of PEFT adapter files, which carry PEFT's `base_model.model.` prefix and no adapter name::

    base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight     (PEFT's default save here)
    base_model.model.language_model.model.layers.0.self_attn.q_proj.lora_A.weight     (original names, written here)

vLLM's `InternVLChatModel` (`vllm/model_executor/models/internvl.py`) has no `hf_to_vllm_mapper`: its module tree is
the original one (`language_model` / `vision_model` / `mlp1`, `get_mm_mapping`), and its LoRA loader
(`parse_fine_tuned_lora_name`) strips `base_model.model.` and looks the rest up in that tree. Unfused names are what
it expects: it packs `q_proj`/`k_proj`/`v_proj` into `qkv_proj` and `gate_proj`/`up_proj` into `gate_up_proj` (Qwen2,
Llama), InternLM2 `w1`/`w3` into `gate_up_proj` (`wqkv`, `wo`, `w2` as is), itself. The adapters written by
`save_adapter_original_layout` have exactly those keys.

Loading: `PeftModel.from_pretrained` / `AutoPeftModelForCausalLM.from_pretrained` rename adapter keys with the base
model's `_checkpoint_conversion_mapping` (a `{regex: replacement}` dict, PEFT's `key_mapping`);
`InternVLChatForConditionalGeneration` has that attribute (a property mapping original names to this tree), so both load
original-named adapters without extra arguments. Keys
already in this package's layout match none of the patterns and load unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers.utils import logging

from ..atomic_save import atomic_save_directory
from ..modeling.checkpoint_mapping import original_layout_renamings
from ..modeling.llm_resolution import language_model_head

logger = logging.get_logger(__name__)

PEFT_PREFIX = "base_model.model."
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"


def _base_model(model: nn.Module) -> nn.Module:
    """The `InternVLChatForConditionalGeneration` inside a `PeftModel` (or the model itself)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if config is None or getattr(config, "text_config", None) is None or not hasattr(base, "lm_head"):
        raise TypeError(
            f"`model` must be an InternVLChatForConditionalGeneration or a PeftModel wrapping one, got {type(base).__name__}."
        )
    return base


def _renamings(model: nn.Module):
    head_name = language_model_head(_base_model(model).config.text_config).head_name
    return original_layout_renamings(head_name=head_name)


def original_adapter_key_mapping(model: nn.Module) -> dict[str, str]:
    """`{regex: replacement}` from original module names to this package's, for PEFT's `key_mapping`.

    Keys are matched without PEFT's `base_model.model.` prefix (PEFT strips it first); the first matching pattern
    wins. Example for a Qwen2 LLM: `{"^language_model\\.lm_head\\.": "lm_head.", "^language_model\\.model\\.":
    "model.language_model.", "^vision_model\\.": "model.vision_model.", "^mlp1\\.": "model.mlp1."}`.

    Raises:
        TypeError: `model` is not an InternVL model (or a PeftModel wrapping one).
    """
    return _base_model(model)._checkpoint_conversion_mapping


def to_original_adapter_keys(state_dict: dict, model: nn.Module) -> dict:
    """Rename PEFT adapter keys from this package's module tree to the original names (the inverse of
    `original_adapter_key_mapping`, through transformers' `WeightRenaming.reverse_transform`).

    Keys with or without the `base_model.model.` prefix are accepted; the prefix is kept as given. Tensors are not
    copied.

    Raises:
        ValueError: a key lies outside the InternVL module tree (not under `model.language_model`,
            `model.vision_model`, `model.mlp1` or `lm_head`), or two keys map to the same original name.
        TypeError: `model` is not an InternVL model.
    """
    reverse = [renaming.reverse_transform() for renaming in _renamings(model)]
    renamed: dict = {}
    for key, value in state_dict.items():
        prefix = PEFT_PREFIX if key.startswith(PEFT_PREFIX) else ""
        inner = key[len(prefix) :]
        for renaming in reverse:
            new_inner, pattern = renaming.rename_source_key(inner)
            if pattern is not None:
                break
        else:
            raise ValueError(
                f"Adapter key {key!r} is outside the InternVL module tree; cannot give it an original name."
            )
        new_key = prefix + new_inner
        if new_key in renamed:
            raise ValueError(f"Adapter keys collide on the original name {new_key!r}.")
        renamed[new_key] = value
    return renamed


def save_adapter_original_layout(model: nn.Module, save_directory: str | os.PathLike, **save_kwargs) -> list[Path]:
    """`model.save_pretrained(save_directory)` for a `PeftModel` on InternVL, with the adapter keys renamed to the
    original module names (`language_model.model.layers.N...`, `vision_model...`, `mlp1...`).

    Everything PEFT writes (`adapter_config.json`, a README) is kept; `adapter_config.json`'s `target_modules` still
    describes this package's tree (PEFT matches it when the adapter is loaded here) and
    `base_model_name_or_path` is the folder the base model was loaded from (an original checkpoint folder when it was
    one). The adapter folder is written to a temporary folder next to `save_directory` and swapped in whole
    (`atomic_save.atomic_save_directory`): a reader sees the old adapter or the new one, never a mix; files of the old
    folder this save does not write are kept.

    Args:
        model: a `peft.PeftModel` wrapping an `InternVLChatForConditionalGeneration`.
        save_directory: output folder (created if missing).
        **save_kwargs: passed to `PeftModel.save_pretrained` (`selected_adapters`, `is_main_process`, ...);
            `safe_serialization=False` is refused (the renaming rewrites safetensors files).

    Returns:
        The adapter weight files written (one per saved adapter).

    Raises:
        TypeError: `model` is not a `PeftModel` on an InternVL model.
        ValueError: `safe_serialization=False`, or a key outside the InternVL module tree.
    """
    if not hasattr(model, "peft_config") or not hasattr(model, "get_base_model"):
        raise TypeError(f"`model` must be a peft.PeftModel, got {type(model).__name__}.")
    _base_model(model)
    if save_kwargs.get("safe_serialization", True) is False:
        raise ValueError("`safe_serialization=False` is not supported: original-layout adapters are safetensors.")
    if save_kwargs.get("is_main_process", True) is False:
        return []
    written: list[Path] = []
    # One folder swap (as model saves): a save interrupted between files used to leave the new adapter_config.json
    # (a new rank) beside the old weights. Files of the old folder this save does not write are kept.
    with atomic_save_directory(save_directory, keep_old_weights=True) as staging:
        model.save_pretrained(staging, **save_kwargs)
        for weights in sorted(Path(staging).rglob(ADAPTER_WEIGHTS_NAME)):
            with safe_open(weights, framework="pt") as handle:
                metadata = handle.metadata()
                state_dict = {key: handle.get_tensor(key) for key in handle.keys()}
            save_file(to_original_adapter_keys(state_dict, model), weights, metadata=metadata)
            written.append(Path(save_directory) / weights.relative_to(staging))
    return written


def load_adapter_original_layout(model: nn.Module, adapter_directory: str | os.PathLike, **kwargs):
    """`peft.PeftModel.from_pretrained(model, adapter_directory)` for an adapter with original module names.

    Equivalent to the plain call (the model's `_checkpoint_conversion_mapping` is PEFT's default); this passes the
    mapping explicitly as PEFT's `key_mapping`. Adapters in this package's layout load too.

    Raises:
        TypeError: `model` is not an `InternVLChatForConditionalGeneration`.
        ImportError: `peft` is not installed.
    """
    import peft

    kwargs.setdefault("key_mapping", original_adapter_key_mapping(model))
    return peft.PeftModel.from_pretrained(model, str(adapter_directory), **kwargs)


__all__ = [
    "load_adapter_original_layout",
    "original_adapter_key_mapping",
    "save_adapter_original_layout",
    "to_original_adapter_keys",
]
