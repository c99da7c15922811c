"""Checks on `InternVLChatConfig` values (issue 12), run at construction and again after `from_pretrained(..., key=value)`
overrides: each error names the field, the value and what is allowed.

Ranges follow how the original model uses the values (`internvl_chat/internvl/model/internvl_chat/
modeling_internvl_chat.py`: `num_image_token = int((image_size // patch_size) ** 2 * downsample_ratio ** 2)`,
`pixel_shuffle(x, scale_factor=downsample_ratio)`, `hidden_states[select_layer]`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

__all__ = [
    "MAX_NUM_HIDDEN_LAYERS",
    "check_attn_implementation_argument",
    "check_dtype_argument",
    "check_layer_count",
    "check_sub_configs_present",
    "validate_config_values",
]

# The fields an original `config.json` always has; without them `InternVLChatConfig` would build full-size default
# sub-models (a 300M-parameter vision tower and a default Qwen2 LLM) instead of the checkpoint's.
_REQUIRED_SUB_CONFIGS = {"llm_config": ("llm_config", "text_config"), "vision_config": ("vision_config",)}


def check_sub_configs_present(config_dict: Mapping[str, Any], overrides: Mapping[str, Any]) -> None:
    """Refuse a loaded `config.json` (or dict) that lacks the LLM or the vision configuration.

    `InternVLChatConfig()` without arguments (transformers' own machinery and tests) still builds the defaults; only
    loading from a file / dict (`from_dict`, hence `from_pretrained`) requires them.

    Raises:
        ValueError: naming the missing (or null) field.
    """
    for field, names in _REQUIRED_SUB_CONFIGS.items():
        present = any(config_dict.get(name) is not None or overrides.get(name) is not None for name in names)
        if not present:
            state = "null" if any(name in config_dict for name in names) else "missing"
            raise ValueError(
                f"The InternVL config is missing `{field}` ({state}): an InternVL config.json must contain the "
                f"{'LLM' if field == 'llm_config' else 'vision tower'} configuration as a dict (the original "
                f"OpenGVLab layout); without it a full-size default model would be built."
            )


def check_dtype_argument(kwargs: Mapping[str, Any], source: str = "") -> None:
    """Refuses a `dtype=` / `torch_dtype=` string (or dict value) of `kwargs` (`from_pretrained`'s keywords, or a
    `config.json` dict: `source` then says so) that names no torch dtype, such as `"float17"`: transformers raises
    `AttributeError: module 'torch' has no attribute 'float17'` from inside the config for it, and takes a name such
    as `"Tensor"` for a dtype.

    A value of another type (`7`, `["bfloat16"]`; transformers: "'int' object has no attribute
    'is_floating_point'") and, in a `config.json`, `"auto"` (a `from_pretrained` argument only; transformers: "module
    'torch' has no attribute 'auto'") are refused too.

    Raises:
        ValueError: naming the argument (and the dict key), what it accepts and the value given.
        TypeError: a value that is neither a torch.dtype, a str nor None.
    """
    allowed = "a torch.dtype, 'auto' or the name of a torch dtype"
    for name in ("dtype", "torch_dtype"):
        value = kwargs.get(name)
        entries = value.items() if isinstance(value, Mapping) else [(None, value)]
        for key, entry in entries:
            where = (f"`{name}`" if key is None else f"`{name}[{key!r}]`") + source
            if entry is not None and not isinstance(entry, str) and not _is_torch_dtype(entry):
                raise TypeError(
                    f"{where} must be {allowed} ('float32', 'bfloat16', 'float16', ...), got {entry!r} "
                    f"({type(entry).__name__})."
                )
            if entry == "auto" and source:
                raise ValueError(f"{where} must name a torch dtype ('float32', 'bfloat16', ...), got 'auto' (a "
                                 "`from_pretrained(dtype='auto')` argument, not a config value).")
            if isinstance(entry, str) and entry != "auto" and not _names_a_torch_dtype(entry):
                raise ValueError(f"{where} must be {allowed} ('float32', 'bfloat16', 'float16', ...), got {entry!r}.")


def _names_a_torch_dtype(name: str) -> bool:
    import torch

    return isinstance(getattr(torch, name, None), torch.dtype)


def _is_torch_dtype(value: Any) -> bool:
    import torch

    return isinstance(value, torch.dtype)


# Far above any InternVL LLM (InternVL2.5-78B's Qwen2.5-72B has 80 layers, InternViT-6B 45). transformers' LLM configs
# build per-layer lists (`layer_types`) when they are constructed, before any weight is read: `num_hidden_layers:
# 10**9` in a hostile config.json spends tens of gigabytes and hours there (10**7: about a minute, 10**5: 0.5 s).
MAX_NUM_HIDDEN_LAYERS = 100_000


def check_layer_count(sub_config: Any, name: str) -> None:
    """Refuse a `num_hidden_layers` above `MAX_NUM_HIDDEN_LAYERS` in the dict of `llm_config` / `vision_config`
    (`name`) before the sub-config is built from it. Types and signs are checked afterwards (`validate_config_values`,
    transformers' own field checks).

    Raises:
        ValueError: naming the field, the value and the maximum.
    """
    value = sub_config.get("num_hidden_layers") if isinstance(sub_config, Mapping) else None
    if _is_int(value) and value > MAX_NUM_HIDDEN_LAYERS:
        raise ValueError(
            f"`{name}.num_hidden_layers` must be at most {MAX_NUM_HIDDEN_LAYERS} (MAX_NUM_HIDDEN_LAYERS; the largest "
            f"InternVL models have 80 LLM and 45 vision layers), got {value}."
        )


# Sizes every LLM config of InternVL has; 0 or negative values fail deep inside torch ("negative dimension",
# "Padding_idx must be within num_embeddings") or build empty layers.
_LLM_SIZE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _fail(name: str, value: Any, allowed: str, integer: bool = False) -> None:
    """TypeError for a value of the wrong type (a str, a bool, a fractional number where an integer is needed),
    ValueError for one out of range."""
    right_type = _is_int(value) if integer else _is_real(value)
    if integer and _is_real(value) and not _is_int(value) and math.isfinite(value) and value == int(value):
        right_type = False  # 448.0 where an integer is expected
    error = ValueError if right_type else TypeError
    raise error(f"`{name}` must be {allowed}, got {value!r} ({type(value).__name__}).")


def _non_finite(value: Any, path: str, seen: set[int]) -> str | None:
    """The path of the first NaN / infinite float inside `value` (dicts, lists and config objects), else None."""
    if isinstance(value, float):
        return path if not math.isfinite(value) else None
    if id(value) in seen:
        return None
    seen.add(id(value))
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    elif hasattr(value, "to_dict") and hasattr(value, "model_type"):  # a nested PreTrainedConfig
        items = ((key, item) for key, item in vars(value).items() if not key.startswith("_"))
    else:
        return None
    for key, item in items:
        found = _non_finite(item, f"{path}.{key}" if path else str(key), seen)
        if found is not None:
            return found
    return None


def validate_config_values(config: Any) -> None:
    """Check the top-level values of an `InternVLChatConfig` (types, ranges, finiteness).

    Raises:
        TypeError: a value of the wrong type (`select_layer=1.5`, `downsample_ratio="0.5"`, `image_token_id="x"`,
            `llm_config=[]`, ...).
        ValueError: a value out of range (`downsample_ratio` 0 or -0.5, `force_image_size=-448`, `image_token_id` not
            below `llm_config.vocab_size`,
            `vision_batch_size=-3`, `llm_config.hidden_size: -64` or another LLM size below 1, NaN anywhere in the
            config, ...).
    """
    ratio = config.downsample_ratio
    if not _is_real(ratio):
        _fail("downsample_ratio", ratio, "a number in (0, 1] of the form 1/k (0.5 for InternVL 2.5)")
    if not math.isfinite(ratio) or not 0 < ratio <= 1:
        _fail("downsample_ratio", ratio, "a finite number in (0, 1] of the form 1/k (0.5 for InternVL 2.5)")
    if not _is_int(config.select_layer):
        _fail("select_layer", config.select_layer, "an integer vision layer index (-1: the last layer)", True)
    size = config.force_image_size
    if size is not None and (not _is_int(size) or size <= 0):
        _fail("force_image_size", size, "a positive integer tile size in pixels (448) or None", True)
    patch_size = getattr(config.vision_config, "patch_size", None)
    if size is not None and _is_int(patch_size) and patch_size > 0 and size % patch_size:
        raise ValueError(f"`force_image_size` ({size}) must be a multiple of the vision patch size ({patch_size}).")
    batch = config.vision_batch_size
    if batch is not None and (not _is_int(batch) or batch < 1):
        _fail("vision_batch_size", batch, "a positive integer (tiles per vision-tower pass) or None", True)
    token_id = config.image_token_id
    if token_id is not None and (not _is_int(token_id) or token_id < 0):
        _fail("image_token_id", token_id, "a non-negative integer token id (of <IMG_CONTEXT>) or None", True)
    vocab_size = getattr(config.text_config, "vocab_size", None)
    if token_id is not None and _is_int(vocab_size) and token_id >= vocab_size:
        raise ValueError(  # it would fail only at the first chat / forward with an image
            f"`image_token_id` ({token_id}) must be a token id below `llm_config.vocab_size` ({vocab_size}): the "
            "LLM has no embedding row for it. Use the id of <IMG_CONTEXT> in the tokenizer."
        )
    for name in ("min_dynamic_patch", "max_dynamic_patch"):
        value = getattr(config, name)
        if not _is_int(value) or value < 1:
            _fail(name, value, "a positive integer number of tiles", True)
    for name in ("use_backbone_lora", "use_llm_lora"):
        value = getattr(config, name)
        if not _is_int(value) or value < 0:
            _fail(name, value, "a non-negative integer LoRA rank (0: no LoRA)", True)
    for name in ("dynamic_image_size", "use_thumbnail", "pad2square"):
        value = getattr(config, name)
        if not isinstance(value, (bool, numbers.Integral)) or value not in (0, 1):
            raise TypeError(f"`{name}` must be a boolean, got {value!r} ({type(value).__name__}).")
    if config.template is not None and not isinstance(config.template, str):
        _fail("template", config.template, "a conversation template name (str) or None")
    for name in _LLM_SIZE_FIELDS:  # transformers checks the types of most of them, not their signs
        value = getattr(config.text_config, name, None)
        if value is not None and (not _is_int(value) or value < 1):
            _fail(f"llm_config.{name}", value, "a positive integer", True)
    _check_llm_fields(config.text_config)
    for name in ("vision_config", "text_config"):
        found = _non_finite(getattr(config, name), name, set())
        if found is not None:
            raise ValueError(f"`{found}` is NaN or infinite; config values must be finite numbers.")
    top_level = {key: value for key, value in vars(config).items() if isinstance(value, float)}
    found = _non_finite(top_level, "", set())
    if found is not None:
        raise ValueError(f"`{found}` is {top_level[found]!r}; config values must be finite numbers.")


def _check_llm_fields(text_config: Any) -> None:
    """`llm_config` fields that the LLM's constructor would trip over without naming them: a `pad_token_id` outside
    the vocabulary (torch: "Padding_idx must be within num_embeddings"), an unknown `hidden_act` or RoPE scaling type
    (a bare `KeyError` from `ACT2FN` / `ROPE_INIT_FUNCTIONS`). InternLM2's own config checks its `rope_scaling`."""
    vocab, pad = getattr(text_config, "vocab_size", None), getattr(text_config, "pad_token_id", None)
    if _is_int(vocab) and _is_int(pad) and not -vocab <= pad < vocab:  # torch counts a negative index from the end
        raise ValueError(
            f"`llm_config.pad_token_id` must be a token id below `llm_config.vocab_size` ({vocab}) or null, got {pad} "
            "(the LLM's embedding keeps that row for padding)."
        )
    act = getattr(text_config, "hidden_act", None)
    if act is not None and not callable(act):
        from transformers.activations import ACT2FN

        if not isinstance(act, str) or act not in ACT2FN:
            error = ValueError if isinstance(act, str) else TypeError
            raise error(
                f"`llm_config.hidden_act` must be an activation name of transformers' ACT2FN ('silu', 'gelu', ...), "
                f"got {act!r}."
            )
    rope = getattr(text_config, "rope_parameters", None)
    if isinstance(rope, Mapping):
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        known = ("default", *ROPE_INIT_FUNCTIONS)
        # One dict, or one per attention type ({"full_attention": {...}, "sliding_attention": {...}}).
        groups = (
            [rope] if "rope_type" in rope or "type" in rope else [v for v in rope.values() if isinstance(v, Mapping)]
        )
        for group in groups:
            kind = group.get("rope_type", group.get("type", "default"))
            if kind not in known:
                raise ValueError(
                    f"`llm_config.rope_scaling` (`rope_parameters`) names the RoPE type {kind!r}, which transformers "
                    f"does not know; known types: {', '.join(repr(k) for k in known)}."
                )


def check_attn_implementation_argument(
    value: Any, sub_config_keys: Any = ("vision_config", "text_config"), name: str = "attn_implementation"
) -> None:
    """Refuse an `attn_implementation` transformers would silently ignore or fail on deep inside.

    Allowed: None, a name (str, both towers), or a mapping whose keys are `""` (the model itself) or sub-config names
    (`"vision_config"`, `"text_config"`) and whose values are names, None or such mappings. A misspelt key
    (`{"vision": "sdpa"}`) would otherwise leave that tower unchanged without a word. Names themselves are checked by
    transformers.

    Raises:
        TypeError: the value or one of its entries is neither a str nor None (nor a mapping).
        ValueError: a mapping key that is not a sub-config of the model, naming the allowed keys.
    """
    if value is None or isinstance(value, str):
        return
    if not isinstance(value, Mapping):
        raise TypeError(
            f"`{name}` must be an attention implementation name (str, e.g. 'sdpa', for both towers), a dict "
            f"{{'vision_config': ..., 'text_config': ...}} or None, got {value!r} ({type(value).__name__})."
        )
    allowed = ["", *sub_config_keys]
    for key, item in value.items():
        if key not in allowed:
            raise ValueError(
                f"`{name}` has the key {key!r}, which is no part of this model; the keys are "
                f"{', '.join(repr(k) for k in allowed)} ('' is the model itself)."
            )
        if isinstance(item, Mapping):
            check_attn_implementation_argument(item, (), f"{name}[{key!r}]")
        elif item is not None and not isinstance(item, str):
            raise TypeError(
                f"`{name}[{key!r}]` must be an attention implementation name (str, e.g. 'sdpa') or None, got "
                f"{item!r} ({type(item).__name__})."
            )
