"""The one table that maps original OpenGVLab checkpoint keys to this package's module tree, and back.

Original checkpoints are flat::

    vision_model.*                 -> model.vision_model.*      (InternViT, names unchanged)
    mlp1.*                         -> model.mlp1.*              (projector, names unchanged)
    language_model.model.*         -> model.language_model.*    (base LLM, names unchanged)
    language_model.<head>.*        -> lm_head.*                 (<head>: the LLM class's output embeddings,
                                                                 `lm_head` for Qwen2 / Llama / Phi-3 / ...,
                                                                 `output` for InternLM2)

Only prefixes change; fused tensors (InternViT `attn.qkv`, InternLM2 `attention.wqkv`) stay fused. The table is
registered with transformers' conversion-mapping registry (the head renaming per model, since it depends on the LLM),
so `from_pretrained` applies it and `save_pretrained` reverses it (writing the original key set).
"""

from __future__ import annotations

import re

from transformers import PreTrainedModel
from transformers.conversion_mapping import get_model_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.core_model_loading import PrefixChange, WeightRenaming, WeightTransform


def original_layout_renamings(*, head_name: str | None = None) -> list[WeightRenaming]:
    """Renamings from the original layout to `InternVLChatForConditionalGeneration`.

    Without `head_name` the list holds the renamings every InternVL model shares (vision tower, projector, base
    LLM): that is what is registered for the `internvl_chat` model type. With it (the module name of the LLM's
    head in its causal-LM class, `lm_head` or `output`, see `modeling.llm_resolution.language_model_head`) the
    head renaming `language_model.<head_name>.* -> lm_head.*` comes first; a model adds it for its own LLM only.
    """
    renamings = [] if head_name is None else [head_renaming(head_name)]
    renamings += [
        WeightRenaming(r"^language_model\.model\.", "model.language_model."),
        WeightRenaming(r"^vision_model\.", "model.vision_model."),
        WeightRenaming(r"^mlp1\.", "model.mlp1."),
    ]
    return renamings


def original_layout_conversions(head_name: str, language_model: PreTrainedModel) -> list[WeightTransform]:
    """Everything `save_pretrained` reverses to write a model in the original layout.

    This model's renamings (`original_layout_renamings(head_name)`), then what transformers registers for the LLM's
    own class or model type (e.g. Qwen3-MoE's per-expert `mlp.experts.N.gate_proj` <-> fused `gate_up_proj`), scoped
    to `model.language_model` as transformers scopes a sub-model's conversions. Entries transformers registers for
    its own, different InternVL classes are not included.
    """
    conversions: list[WeightTransform] = original_layout_renamings(head_name=head_name)
    for conversion in get_model_conversion_mapping(language_model, add_legacy=False):
        if isinstance(conversion, PrefixChange):
            continue
        scope = "language_model" if not conversion.scope_prefix else f"language_model.{conversion.scope_prefix}"
        conversion.scope_prefix, conversion.base_model_prefix = scope, "model"
        conversions.append(conversion)
    return conversions


def head_renaming(head_name: str) -> WeightRenaming:
    """`language_model.<head_name>.*` (original layout) -> `lm_head.*` (this package's module tree)."""
    return WeightRenaming(rf"^language_model\.{re.escape(head_name)}\.", "lm_head.")


_REGISTERED = False


def register_checkpoint_mappings() -> None:
    """Register the tables with transformers (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    # Registered by model_type, not class name: transformers has classes of the same names for its own port. Only the
    # renamings that apply to every InternVL model: the head's name depends on the LLM, and each model adds its own
    # (`InternVLChatForConditionalGeneration._load_pretrained_model`, which also adds the LoRA transforms of
    # `modeling/original_lora_loading.py` for checkpoints that hold unmerged LoRA), so no pattern here matches nothing.
    register_checkpoint_conversion_mapping("internvl_chat", original_layout_renamings(), overwrite=True)
    _REGISTERED = True


__all__ = [
    "head_renaming",
    "original_layout_conversions",
    "original_layout_renamings",
    "register_checkpoint_mappings",
]
