"""The one table that maps original OpenGVLab checkpoint keys to this package's module tree, and back.

Original checkpoints are flat::

    vision_model.*                 -> model.vision_model.*      (InternViT, names unchanged)
    mlp1.*                         -> model.mlp1.*              (projector, names unchanged)
    language_model.model.*         -> model.language_model.*    (base LLM, names unchanged)
    language_model.lm_head.*       -> lm_head.*                 (Qwen2 / Llama head)
    language_model.output.*        -> lm_head.*                 (InternLM2 head)

Only prefixes change; fused tensors (InternViT `attn.qkv`, InternLM2 `attention.wqkv`) stay fused. The table is
registered with transformers' conversion-mapping registry, so `from_pretrained` applies it and `save_pretrained`
reverses it (writing the original key set).
"""

from __future__ import annotations

from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming

from .original_lora import original_lora_converters, original_lora_renamings

# LLM `model_type` -> name of its LM head inside the original `language_model`.
LM_HEAD_NAMES: dict[str, str] = {"qwen2": "lm_head", "llama": "lm_head", "internlm2": "output"}


def original_layout_renamings(text_model_type: str | None = None) -> list[WeightRenaming]:
    """Renamings from the original layout to `InternVLForConditionalGeneration`.

    With `text_model_type` the list holds only that LLM's head renaming, so that reversing it (on save) is
    unambiguous; without it, both head spellings are accepted (loading).
    """
    if text_model_type is None:
        head_names = sorted(set(LM_HEAD_NAMES.values()))
    elif text_model_type in LM_HEAD_NAMES:
        head_names = [LM_HEAD_NAMES[text_model_type]]
    else:
        raise ValueError(
            f"No checkpoint mapping for LLM model_type {text_model_type!r}; supported: {sorted(LM_HEAD_NAMES)}."
        )
    renamings = [WeightRenaming(rf"^language_model\.{name}\.", "lm_head.") for name in head_names]
    renamings += [
        WeightRenaming(r"^language_model\.model\.", "model.language_model."),
        WeightRenaming(r"^vision_model\.", "model.vision_model."),
        WeightRenaming(r"^mlp1\.", "model.mlp1."),
    ]
    return renamings


_REGISTERED = False


def register_checkpoint_mappings() -> None:
    """Register the tables with transformers (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    # Registered by model_type, not class name: transformers has classes of the same names for its own port.
    # The PEFT-prefix renamings of original LoRA checkpoints run before the layout renamings, the merge after them.
    mapping = original_lora_renamings() + original_layout_renamings() + original_lora_converters()
    register_checkpoint_conversion_mapping("internvl_chat", mapping, overwrite=True)
    _REGISTERED = True


__all__ = ["LM_HEAD_NAMES", "original_layout_renamings", "register_checkpoint_mappings"]
