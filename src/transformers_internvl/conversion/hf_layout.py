"""Key and config tables between the original OpenGVLab layout and transformers' built-in InternVL port (`-hf`).

transformers' port (`transformers.InternVLForConditionalGeneration`, `model_type "internvl"`) saves its weights with
these names (what `save_pretrained` of transformers 5.24 writes, the names of the published `-hf` repositories)::

    original                                        -hf
    vision_model.embeddings.class_embedding         vision_tower.embeddings.cls_token
    vision_model.embeddings.position_embedding      vision_tower.embeddings.position_embeddings
    vision_model.embeddings.patch_embedding.*       vision_tower.embeddings.patch_embeddings.projection.*
    vision_model.encoder.layers.{i}.attn.qkv.*      vision_tower.encoder.layer.{i}.attention.{q,k,v}_proj.*  (split)
    vision_model.encoder.layers.{i}.attn.proj.*     vision_tower.encoder.layer.{i}.attention.projection_layer.*
    vision_model.encoder.layers.{i}.attn.{q,k}_norm.*   vision_tower.encoder.layer.{i}.attention.{q,k}_norm.*
    vision_model.encoder.layers.{i}.mlp.fc{1,2}.*   vision_tower.encoder.layer.{i}.mlp.fc{1,2}.*
    vision_model.encoder.layers.{i}.norm{1,2}.*     vision_tower.encoder.layer.{i}.layernorm_{before,after}.*
    vision_model.encoder.layers.{i}.ls{1,2}         vision_tower.encoder.layer.{i}.lambda_{1,2}
    mlp1.{0,1,3}.*                                  multi_modal_projector.{layer_norm,linear_1,linear_2}.*
    language_model.model.*                          language_model.model.*      (Qwen2 / Llama: unchanged)
    language_model.lm_head.weight                   language_model.lm_head.weight

An InternLM2 LLM becomes a Llama one (`conversion/internlm2_llama.py`: renames, `wqkv` split into q/k/v). Reading a
`-hf` folder also accepts the names of the in-memory module tree (`model.vision_tower.*`, `model.language_model.*`,
`lm_head.*`), which some fine-tuning tools save.

The fused InternViT `qkv` rows are `[q; k; v]` (each `hidden_size` rows), see the original
`internvl_chat/internvl/model/internvl_chat/modeling_intern_vit.py` (`InternAttention._naive_attn`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..converted_llama_tokenizer import ORIGINAL_RECORD_KEY
from .internlm2_llama import _BASE_RENAMES, _LAYER_RENAMES, fuse_wqkv, split_wqkv

# The record written into the `-hf` config.json so that `--to original` restores what the `-hf` layout cannot say
# (`ORIGINAL_RECORD_KEY`, defined beside its torch-free reader `converted_llama_tokenizer.conversion_record`).

# Per-layer vision renames (original name after `encoder.layers.{i}.` -> `-hf` name after `encoder.layer.{i}.`).
_VISION_LAYER_RENAMES: dict[str, str] = {
    "attn.proj.weight": "attention.projection_layer.weight",
    "attn.proj.bias": "attention.projection_layer.bias",
    "attn.q_norm.weight": "attention.q_norm.weight",
    "attn.k_norm.weight": "attention.k_norm.weight",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
    "norm1.weight": "layernorm_before.weight",
    "norm1.bias": "layernorm_before.bias",
    "norm2.weight": "layernorm_after.weight",
    "norm2.bias": "layernorm_after.bias",
    "ls1": "lambda_1",
    "ls2": "lambda_2",
}
_VISION_TOP_RENAMES: dict[str, str] = {
    "embeddings.class_embedding": "embeddings.cls_token",
    "embeddings.position_embedding": "embeddings.position_embeddings",
    "embeddings.patch_embedding.weight": "embeddings.patch_embeddings.projection.weight",
    "embeddings.patch_embedding.bias": "embeddings.patch_embeddings.projection.bias",
}
_PROJECTOR_RENAMES: dict[str, str] = {
    "0.weight": "layer_norm.weight",
    "0.bias": "layer_norm.bias",
    "1.weight": "linear_1.weight",
    "1.bias": "linear_1.bias",
    "3.weight": "linear_2.weight",
    "3.bias": "linear_2.bias",
}

_ORIGINAL_VISION_LAYER = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.(.+)$")
_HF_VISION_LAYER = re.compile(r"^vision_tower\.encoder\.layer\.(\d+)\.(.+)$")
_LLM_LAYER = re.compile(r"^language_model\.model\.layers\.(\d+)\.(.+)$")

# Names of the in-memory module tree of transformers' port -> the names it saves (legacy `-hf` names).
_HF_MODULE_PREFIXES = (
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
)


@dataclass(frozen=True)
class TensorStep:
    """One output tensor: `name`, made by `combine` from the source tensors named `sources` (in that order)."""

    name: str
    sources: tuple[str, ...]
    combine: Callable[..., torch.Tensor] | None = None  # None: the one source tensor unchanged

    def apply(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        return tensors[0] if self.combine is None else self.combine(*tensors)


@dataclass(frozen=True)
class LlmHeads:
    """Head layout of the LLM for the InternLM2 <-> Llama `wqkv` transform."""

    num_heads: int
    num_kv_heads: int
    head_dim: int


def _part(index: int, parts: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def take(tensor: torch.Tensor) -> torch.Tensor:
        size = tensor.shape[0] // parts
        return tensor[index * size : (index + 1) * size].contiguous()

    return take


def _split_wqkv_part(index: int, heads: LlmHeads) -> Callable[[torch.Tensor], torch.Tensor]:
    def take(tensor: torch.Tensor) -> torch.Tensor:
        return split_wqkv(tensor, heads.num_heads, heads.num_kv_heads, heads.head_dim)[index]

    return take


def _concat(*tensors: torch.Tensor) -> torch.Tensor:
    return torch.cat(tensors, dim=0)


class UnknownKeyError(ValueError):
    """A checkpoint tensor name the conversion table does not know."""


def original_to_hf_plan(keys: list[str], internlm2_heads: LlmHeads | None) -> list[TensorStep]:
    """The output tensors of the `-hf` layout for the original tensor names `keys`.

    Args:
        keys: tensor names of an original checkpoint.
        internlm2_heads: the LLM's head layout when it is InternLM2 (its keys are renamed to Llama's and `wqkv` is
            split); `None` for Qwen2 / Llama / other LLMs, whose keys pass through unchanged.

    Raises:
        UnknownKeyError: a key outside `vision_model.`, `mlp1.`, `language_model.`, or an unknown vision / projector /
            InternLM2 name.
    """
    steps: list[TensorStep] = []
    for key in keys:
        if key.startswith("vision_model."):
            steps += _vision_to_hf(key)
        elif key.startswith("mlp1."):
            name = key[len("mlp1.") :]
            if name not in _PROJECTOR_RENAMES:
                raise UnknownKeyError(f"unknown projector tensor {key!r} (expected mlp1.{{0,1,3}}.{{weight,bias}})")
            steps.append(TensorStep(f"multi_modal_projector.{_PROJECTOR_RENAMES[name]}", (key,)))
        elif key.startswith("language_model."):
            steps += _llm_to_hf(key, internlm2_heads) if internlm2_heads else [TensorStep(key, (key,))]
        else:
            raise UnknownKeyError(f"unknown tensor {key!r}: not under vision_model., mlp1. or language_model.")
    return steps


def _vision_to_hf(key: str) -> list[TensorStep]:
    if match := _ORIGINAL_VISION_LAYER.match(key):
        layer, name = match.groups()
        prefix = f"vision_tower.encoder.layer.{layer}."
        if name in ("attn.qkv.weight", "attn.qkv.bias"):
            kind = name.rsplit(".", 1)[1]
            return [
                TensorStep(f"{prefix}attention.{projection}_proj.{kind}", (key,), _part(index, 3))
                for index, projection in enumerate("qkv")
            ]
        if name in _VISION_LAYER_RENAMES:
            return [TensorStep(prefix + _VISION_LAYER_RENAMES[name], (key,))]
    else:
        name = key[len("vision_model.") :]
        if name in _VISION_TOP_RENAMES:
            return [TensorStep("vision_tower." + _VISION_TOP_RENAMES[name], (key,))]
    raise UnknownKeyError(f"unknown vision tensor {key!r}")


def _llm_to_hf(key: str, heads: LlmHeads) -> list[TensorStep]:
    if key == "language_model.output.weight":
        return [TensorStep("language_model.lm_head.weight", (key,))]
    if match := _LLM_LAYER.match(key):
        layer, name = match.groups()
        prefix = f"language_model.model.layers.{layer}."
        if name in ("attention.wqkv.weight", "attention.wqkv.bias"):
            kind = name.rsplit(".", 1)[1]
            return [
                TensorStep(f"{prefix}self_attn.{projection}_proj.{kind}", (key,), _split_wqkv_part(index, heads))
                for index, projection in enumerate("qkv")
            ]
        if name in _LAYER_RENAMES:
            return [TensorStep(prefix + _LAYER_RENAMES[name], (key,))]
    else:
        name = key[len("language_model.model.") :] if key.startswith("language_model.model.") else None
        if name in _BASE_RENAMES:
            return [TensorStep("language_model.model." + _BASE_RENAMES[name], (key,))]
    raise UnknownKeyError(f"unknown InternLM2 tensor {key!r}")


def normalize_hf_key(key: str) -> str:
    """The saved `-hf` name of `key` (module-tree names such as `model.vision_tower.*` are mapped back)."""
    for module_prefix, saved_prefix in _HF_MODULE_PREFIXES:
        if key.startswith(module_prefix):
            return saved_prefix + key[len(module_prefix) :]
    return key


def hf_to_original_plan(keys: dict[str, str], internlm2_heads: LlmHeads | None) -> list[TensorStep]:
    """The output tensors of the original layout for `-hf` tensors.

    Args:
        keys: `{normalized -hf name: name in the files}` (see `normalize_hf_key`).
        internlm2_heads: set when the LLM goes back to InternLM2 (Llama names renamed, q/k/v fused into `wqkv`).

    Raises:
        UnknownKeyError: an unknown name, or a q/k/v projection without its siblings.
    """
    vision_layer = {new: old for old, new in _VISION_LAYER_RENAMES.items()}
    vision_top = {new: old for old, new in _VISION_TOP_RENAMES.items()}
    projector = {new: old for old, new in _PROJECTOR_RENAMES.items()}
    llm_layer = {new: old for old, new in _LAYER_RENAMES.items()}
    llm_base = {new: old for old, new in _BASE_RENAMES.items()}
    steps: list[TensorStep] = []

    def siblings(prefix: str, kind: str) -> tuple[str, ...]:
        names = [f"{prefix}{projection}_proj.{kind}" for projection in "qkv"]
        missing = [name for name in names if name not in keys]
        if missing:
            raise UnknownKeyError(f"{missing[0]!r} is missing (needed with {names[0]!r} to fuse q/k/v)")
        return tuple(keys[name] for name in names)

    for key, stored in keys.items():
        if match := _HF_VISION_LAYER.match(key):
            layer, name = match.groups()
            prefix = f"vision_model.encoder.layers.{layer}."
            if projection := re.fullmatch(r"attention\.([qkv])_proj\.(weight|bias)", name):
                if projection[1] == "q":
                    sources = siblings(f"vision_tower.encoder.layer.{layer}.attention.", projection[2])
                    steps.append(TensorStep(f"{prefix}attn.qkv.{projection[2]}", sources, _concat))
                continue
            if name in vision_layer:
                steps.append(TensorStep(prefix + vision_layer[name], (stored,)))
                continue
        elif key.startswith("vision_tower."):
            name = key[len("vision_tower.") :]
            if name in vision_top:
                steps.append(TensorStep("vision_model." + vision_top[name], (stored,)))
                continue
        elif key.startswith("multi_modal_projector."):
            name = key[len("multi_modal_projector.") :]
            if name in projector:
                steps.append(TensorStep("mlp1." + projector[name], (stored,)))
                continue
        elif key.startswith("language_model.") and internlm2_heads is None:
            steps.append(TensorStep(key, (stored,)))
            continue
        elif key.startswith("language_model."):
            if key == "language_model.lm_head.weight":
                steps.append(TensorStep("language_model.output.weight", (stored,)))
                continue
            if match := _LLM_LAYER.match(key):
                layer, name = match.groups()
                prefix = f"language_model.model.layers.{layer}."
                if projection := re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", name):
                    if projection[1] == "q":
                        sources = siblings(f"{prefix}self_attn.", projection[2])
                        heads = internlm2_heads

                        def fuse(query, key_proj, value, heads=heads):
                            return fuse_wqkv(
                                query, key_proj, value, heads.num_heads, heads.num_kv_heads, heads.head_dim
                            )

                        steps.append(TensorStep(f"{prefix}attention.wqkv.{projection[2]}", sources, fuse))
                    continue
                if name in llm_layer:
                    steps.append(TensorStep(prefix + llm_layer[name], (stored,)))
                    continue
            elif key.startswith("language_model.model.") and key[len("language_model.model.") :] in llm_base:
                steps.append(
                    TensorStep("language_model.model." + llm_base[key[len("language_model.model.") :]], (stored,))
                )
                continue
        raise UnknownKeyError(f"unknown tensor {stored!r} for the transformers InternVL (-hf) layout")
    return steps


# ---------------------------------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------------------------------

# Top-level fields of the original config that the `-hf` layout has no place for; kept in the record.
_RECORDED_FIELDS = (
    "template",
    "system_message",
    "ps_version",
    "select_layer",
    "force_image_size",
    "dynamic_image_size",
    "use_thumbnail",
    "min_dynamic_patch",
    "max_dynamic_patch",
    "pad2square",
)


def vision_config_to_hf(vision: dict[str, Any]) -> dict[str, Any]:
    """transformers `InternVLVisionConfig` kwargs for an original `vision_config` dict (InternViT-300M / 6B)."""
    norm_type = vision.get("norm_type", "rms_norm")
    qk_norm = bool(vision.get("qk_normalization", False))
    eps = float(vision.get("layer_norm_eps", 1e-6))
    if qk_norm and eps != 1e-6:
        # transformers' vision q/k RMSNorm always uses eps 1e-6; the original uses layer_norm_eps.
        raise ValueError(
            f"vision_config.layer_norm_eps is {eps}; transformers' InternVL port fixes the QK-norm epsilon at 1e-6, "
            "so a vision tower with qk_normalization and another epsilon has no exact -hf equivalent"
        )
    return {
        "hidden_size": vision["hidden_size"],
        "num_hidden_layers": vision["num_hidden_layers"],
        "num_attention_heads": vision["num_attention_heads"],
        "intermediate_size": vision["intermediate_size"],
        "attention_bias": bool(vision.get("qkv_bias", False)),
        "use_qk_norm": qk_norm,
        "norm_type": norm_type,
        "layer_norm_eps": eps,
        "hidden_act": vision.get("hidden_act", "gelu"),
        "image_size": vision["image_size"],
        "patch_size": vision["patch_size"],
        "num_channels": vision.get("num_channels", 3),
        "attention_dropout": vision.get("attention_dropout", 0.0),
        "projection_dropout": vision.get("dropout", 0.0),
        "hidden_dropout_prob": 0.0,
        "initializer_range": vision.get("initializer_range", 0.02),
        "layer_scale_init_value": vision.get("initializer_factor", 0.1),
        "use_absolute_position_embeddings": True,
        "use_mean_pooling": True,  # no final norm after the encoder, as in InternViT
        "use_mask_token": False,
    }


def vision_config_from_hf(vision: dict[str, Any]) -> dict[str, Any]:
    """An original `vision_config` dict (`model_type intern_vit_6b`) for a transformers `InternVLVisionConfig` dict."""
    if not vision.get("use_mean_pooling", True):
        raise ValueError("vision_config.use_mean_pooling is false (a final LayerNorm); InternViT has none")
    if vision.get("use_mask_token"):
        raise ValueError("vision_config.use_mask_token is true; InternViT has no mask token")

    def side(value: Any, name: str) -> int:
        if isinstance(value, (list, tuple)):
            if len(set(value)) != 1:
                raise ValueError(f"vision_config.{name} must be square for InternViT, got {value}")
            value = value[0]
        return int(value)

    return {
        "architectures": ["InternVisionModel"],
        "model_type": "intern_vit_6b",
        "hidden_size": vision["hidden_size"],
        "num_hidden_layers": vision["num_hidden_layers"],
        "num_attention_heads": vision["num_attention_heads"],
        "intermediate_size": vision["intermediate_size"],
        "qkv_bias": bool(vision.get("attention_bias", False)),
        "qk_normalization": bool(vision.get("use_qk_norm", False)),
        "norm_type": vision.get("norm_type", "layer_norm"),
        "layer_norm_eps": vision.get("layer_norm_eps", 1e-6),
        "hidden_act": vision.get("hidden_act", "gelu"),
        "image_size": side(vision.get("image_size", 448), "image_size"),
        "patch_size": side(vision.get("patch_size", 14), "patch_size"),
        "num_channels": vision.get("num_channels", 3),
        "attention_dropout": vision.get("attention_dropout", 0.0),
        "dropout": vision.get("projection_dropout", 0.0),
        "drop_path_rate": 0.0,
        "initializer_range": vision.get("initializer_range", 0.02),
        "initializer_factor": vision.get("layer_scale_init_value", 0.1),
        "use_flash_attn": False,
    }


def recorded_fields(original: dict[str, Any]) -> dict[str, Any]:
    """What the `-hf` config keeps of an original config under `ORIGINAL_RECORD_KEY`."""
    llm = original.get("llm_config") or {}
    record = {name: original[name] for name in _RECORDED_FIELDS if name in original}
    record["llm_architectures"] = list(llm.get("architectures") or [])
    return record


__all__ = [
    "ORIGINAL_RECORD_KEY",
    "LlmHeads",
    "TensorStep",
    "UnknownKeyError",
    "hf_to_original_plan",
    "normalize_hf_key",
    "original_to_hf_plan",
    "recorded_fields",
    "vision_config_from_hf",
    "vision_config_to_hf",
]
