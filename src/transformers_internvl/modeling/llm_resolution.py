"""Which language model an original `llm_config` names, and what its causal-LM class says about itself.

The original InternVL code switches on `llm_config["architectures"][0]` over a hand-kept list of classes
(`internvl_chat/internvl/model/internvl_chat/configuration_internvl_chat.py`, and its InternVL3.5 / GPT-OSS twin
`internvl_chat_gpt_oss/.../configuration_internvl_chat.py`). Here the name is resolved through transformers' own
causal-LM registry instead (every causal LM transformers knows, plus those registered with `AutoModelForCausalLM`,
such as this package's InternLM2), and the facts the InternVL model needs about the LLM (the name of its LM head in
the original layout, its tied weights, its tensor-parallel style for the head) are read from the LLM class itself.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.utils import logging

logger = logging.get_logger(__name__)

# Model types that must never be the LLM of an InternVL model (the InternVL chat model registers itself as a causal LM).
_EXCLUDED_MODEL_TYPES = frozenset({"internvl_chat"})


def _registered_causal_lms() -> dict[str, list[str]]:
    """Causal-LM class name -> the model types whose `AutoModelForCausalLM` entry is that class."""
    by_class: dict[str, list[str]] = {}
    for model_type, class_name in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items():
        by_class.setdefault(class_name, []).append(model_type)
    # Classes registered at run time (`AutoModelForCausalLM.register`), e.g. this package's InternLM2ForCausalLM.
    extra = getattr(AutoModelForCausalLM._model_mapping, "_extra_content", {})
    for config_class, model_class in extra.items():
        model_type = getattr(config_class, "model_type", None)
        if model_type and model_type not in by_class.setdefault(model_class.__name__, []):
            by_class[model_class.__name__].append(model_type)
    return {
        name: [t for t in types if t not in _EXCLUDED_MODEL_TYPES]
        for name, types in by_class.items()
        if any(t not in _EXCLUDED_MODEL_TYPES for t in types)
    }


def _pick_model_type(architecture: str, candidates: list[str], declared_model_type: str | None) -> str:
    """One model type for an architecture several model types share (`LlamaForCausalLM`: llama, exaone, ...)."""
    if declared_model_type in candidates:
        return declared_model_type
    # The model type whose config class carries the architecture's own stem (`LlamaForCausalLM` -> `LlamaConfig`).
    stem = architecture.split("For", 1)[0]
    for model_type in candidates:
        if CONFIG_MAPPING_NAMES.get(model_type) == f"{stem}Config":
            return model_type
    return sorted(candidates)[0]


def resolve_text_model_type(llm_config: dict[str, Any]) -> str:
    """The transformers `model_type` of an original `llm_config` dict.

    `architectures[0]` is looked up among every causal-LM class transformers knows (its `AutoModelForCausalLM`
    table plus classes registered with it); without `architectures`, `model_type` must be a known model type.

    Raises:
        ValueError: naming `llm_config.architectures[0]` (or `llm_config.model_type`) and the value, when
            transformers knows no such causal LM.
        TypeError: `llm_config.architectures` is not a list of str (a bare `"Qwen2ForCausalLM"`, a number, ...).
    """
    architectures = llm_config.get("architectures") or []
    declared_model_type = llm_config.get("model_type")
    if not isinstance(architectures, (list, tuple)) or not all(isinstance(name, str) for name in architectures):
        # A bare string was read as its first letter ("Unsupported ...: 'Q'"), a number or a dict failed deep inside.
        raise TypeError(
            '`llm_config.architectures` must be a list of class names (e.g. ["Qwen2ForCausalLM"]), got '
            f"{architectures!r} ({type(architectures).__name__})."
        )
    if architectures:
        architecture = architectures[0]
        candidates = _registered_causal_lms().get(architecture)
        if not candidates:
            raise ValueError(
                f"Unsupported `llm_config.architectures[0]`: {architecture!r}. It must name a causal language model "
                "class that transformers knows (an `AutoModelForCausalLM` entry, e.g. 'Qwen2ForCausalLM', "
                "'LlamaForCausalLM', 'Phi3ForCausalLM', 'Qwen3MoeForCausalLM', 'GptOssForCausalLM') or "
                "'InternLM2ForCausalLM'."
            )
        return _pick_model_type(architecture, candidates, declared_model_type)
    known = {t for types in _registered_causal_lms().values() for t in types}
    if declared_model_type not in known:
        raise ValueError(
            f"Unsupported `llm_config.model_type`: {declared_model_type!r} (and no `llm_config.architectures`). It "
            "must be the model type of a causal language model that transformers knows (e.g. 'qwen2', 'llama', "
            "'internlm2')."
        )
    return declared_model_type


# Legacy RoPE type names that transformers' Phi-3 configuration maps to "longrope" (transformers
# `models/phi3/configuration_phi3.py`, `Phi3Config.convert_rope_params_to_dict`); the original InternVL Phi-3 code
# (`internvl_chat/internvl/model/phi3/configuration_phi3.py`) accepts exactly these two names.
_PHI3_LEGACY_ROPE_TYPES = ("su", "yarn")


def normalize_llm_config(llm_config: dict[str, Any], model_type: str) -> dict[str, Any]:
    """A copy of `llm_config` that transformers' config class for `model_type` accepts.

    Phi-3 (InternVL2-4B, Mini-InternVL-Chat-4B-V1-5): the legacy `rope_scaling = {"type": "su", "short_factor": [...],
    "long_factor": [...]}` becomes `{"rope_type": "longrope", ...}` before the config is built, as transformers' Phi-3
    configuration treats "su" / "yarn"; the LongRoPE `original_max_position_embeddings` is then the config's own field
    (what transformers' RoPE standardisation reads for Phi-3). transformers 5 otherwise rejects the "su" form.
    """
    llm_config = copy.deepcopy(llm_config)
    rope_scaling = llm_config.get("rope_scaling")
    if (
        isinstance(rope_scaling, dict)
        and "type" in rope_scaling
        and rope_scaling.get("rope_type") == rope_scaling["type"]
    ):
        # Both spellings (as InternVL3 configs and `original_rope_scaling` write them): keep transformers' one.
        rope_scaling = {key: value for key, value in rope_scaling.items() if key != "type"}
        llm_config["rope_scaling"] = rope_scaling
    if model_type == "phi3" and isinstance(rope_scaling, dict):
        rope_type = rope_scaling.get("rope_type", rope_scaling.get("type"))
        if rope_type in _PHI3_LEGACY_ROPE_TYPES:
            rope_scaling = {key: value for key, value in rope_scaling.items() if key not in ("type", "rope_type")}
            llm_config["rope_scaling"] = {"rope_type": "longrope", **rope_scaling}
    return llm_config


def original_rope_scaling(text_config: dict[str, Any]) -> dict[str, Any] | None:
    """The legacy `rope_scaling` to write back into `llm_config` (the form the original remote code reads).

    `text_config` is a `to_dict()` of the LLM config. Phi-3 LongRoPE is written as the original
    `{"type": "su", "short_factor", "long_factor"}` (the original Phi-3 config requires exactly these three keys)
    when nothing beyond them is set; every other RoPE as `{"type": rope_type, **parameters}`; default RoPE as `None`.
    """
    rope_parameters = text_config.get("rope_parameters")
    if not isinstance(rope_parameters, dict):
        return text_config.get("rope_scaling")
    rope_type = rope_parameters.get("rope_type", "default")
    if rope_type == "default":
        return None
    scaling = {
        key: value
        for key, value in rope_parameters.items()
        if key not in ("rope_theta", "rope_type", "partial_rotary_factor")
        or (key == "partial_rotary_factor" and value != 1.0)
    }
    if text_config.get("model_type") == "phi3" and rope_type == "longrope":
        extra = set(scaling) - {"short_factor", "long_factor", "original_max_position_embeddings"}
        derived = scaling.get("original_max_position_embeddings") == text_config.get("original_max_position_embeddings")
        if not extra and derived:
            return {"type": "su", "short_factor": scaling["short_factor"], "long_factor": scaling["long_factor"]}
    # Both spellings, as InternVL3 checkpoints write it: older readers take "type", transformers >= 4.45 "rope_type".
    return {**scaling, "rope_type": rope_type, "type": rope_type}


def original_llm_config(text_config: dict[str, Any], config_class: type) -> dict[str, Any]:
    """`text_config` (a `to_dict()` of the LLM config) with what older readers of `llm_config` look up.

    The RoPE scaling as the legacy `rope_theta` / `rope_scaling` ([`original_rope_scaling`]), and every name the
    config class aliases (`attribute_map`, e.g. Qwen3-MoE's `num_experts` for `num_local_experts`) written under the
    alias too: the original remote code and transformers 4.x read `num_experts`, and would otherwise fall back to the
    class default (128 experts).
    """
    text_config = copy.deepcopy(text_config)
    rope_parameters = text_config.get("rope_parameters")
    if isinstance(rope_parameters, dict):
        text_config.setdefault("rope_theta", rope_parameters.get("rope_theta"))
        if "rope_scaling" not in text_config:
            text_config["rope_scaling"] = original_rope_scaling(text_config)
    for alias, name in (getattr(config_class, "attribute_map", None) or {}).items():
        if name in text_config and alias not in text_config:
            text_config[alias] = text_config[name]
    return text_config


@dataclass(frozen=True)
class LanguageModelHead:
    """What the LLM's causal-LM class says about its head (read from an instance built on the meta device).

    Attributes:
        causal_lm_class: Name of the causal-LM class (`Qwen2ForCausalLM`, `InternLM2ForCausalLM`, ...).
        head_name: Module name of its output embeddings (`lm_head`, `output`): the original checkpoint stores the
            head as `language_model.<head_name>.*`.
        base_model_prefix: Attribute holding the base model (`model`): `language_model.<prefix>.*` in the checkpoint.
        tied_weights: `{head parameter suffix: input-embedding parameter name inside the base model}` as the class
            declares it (`{"weight": "embed_tokens.weight"}`), used when the config ties the embeddings.
        head_tp_style: The class's tensor-parallel style for the head (`colwise_gather_output`), or `None` when the
            class has no tensor-parallel plan for it.
    """

    causal_lm_class: str
    head_name: str
    base_model_prefix: str
    tied_weights: tuple[tuple[str, str], ...]
    head_tp_style: str | None


@lru_cache(maxsize=32)
def _language_model_head(config_class: type, config_json: str) -> LanguageModelHead:
    from transformers.initialization import no_init_weights

    text_config = config_class.from_dict(json.loads(config_json))
    # Meta device, no weight init: only the module tree and the class's declarations are read.
    with torch.device("meta"), no_init_weights():
        causal_lm = AutoModelForCausalLM.from_config(text_config)
    head = causal_lm.get_output_embeddings()
    head_name = next((name for name, module in causal_lm.named_modules() if module is head and name), None)
    if head_name is None:
        raise ValueError(f"{type(causal_lm).__name__} has no output embeddings module (LM head) to map.")
    prefix = causal_lm.base_model_prefix
    tied_weights = []
    for head_key, embedding_key in (getattr(type(causal_lm), "_tied_weights_keys", None) or {}).items():
        if head_key.startswith(f"{head_name}.") and embedding_key.startswith(f"{prefix}."):
            tied_weights.append((head_key.removeprefix(f"{head_name}."), embedding_key.removeprefix(f"{prefix}.")))
    tp_plan = getattr(causal_lm, "_tp_plan", None) or {}
    return LanguageModelHead(
        causal_lm_class=type(causal_lm).__name__,
        head_name=head_name,
        base_model_prefix=prefix,
        tied_weights=tuple(tied_weights),
        head_tp_style=tp_plan.get(head_name),
    )


def language_model_head(text_config: PreTrainedConfig) -> LanguageModelHead:
    """[`LanguageModelHead`] of the causal-LM class `AutoModelForCausalLM` builds for `text_config`."""
    return _language_model_head(type(text_config), text_config.to_json_string(use_diff=False))


__all__ = [
    "LanguageModelHead",
    "language_model_head",
    "normalize_llm_config",
    "original_llm_config",
    "original_rope_scaling",
    "resolve_text_model_type",
]
