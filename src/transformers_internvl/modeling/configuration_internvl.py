"""Configuration of the full InternVL chat model, read from and written to the original OpenGVLab `config.json`."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.utils import logging

from ..chat_templates import tokens_per_tile
from ..downsample_ratio import check_downsample_ratio
from .config_validation import (
    check_attn_implementation_argument,
    check_dtype_argument,
    check_layer_count,
    check_sub_configs_present,
    validate_config_values,
)
from .configuration_intern_vit import InternVisionConfig
from .llm_resolution import normalize_llm_config, original_llm_config, resolve_text_model_type
from .original_construction import config_keywords_from_positional

logger = logging.get_logger(__name__)

PIXEL_SHUFFLE_VERSIONS = ("v1", "v2")


class InternVLChatConfig(PreTrainedConfig):
    r"""
    Configuration of an InternVL 2.5 chat model (`model_type` `"internvl_chat"`).

    Reads an original OpenGVLab `config.json` verbatim: the LLM configuration arrives as `llm_config` and is exposed
    under the standard name `text_config`; `save_pretrained` writes it back as `llm_config` so that the original
    remote code (and servers that read OpenGVLab checkpoints) accept the file.

    Args:
        vision_config: InternViT configuration (dict or [`InternVisionConfig`]).
        text_config: LLM configuration (dict or config); alias `llm_config`. Its `architectures[0]` (or
            `model_type`) selects the LLM: any causal LM transformers knows (`Qwen2ForCausalLM`, `LlamaForCausalLM`,
            `Phi3ForCausalLM`, `Qwen3ForCausalLM`, `Qwen3MoeForCausalLM`, `GptOssForCausalLM`, ...) or this
            package's `InternLM2ForCausalLM`; an unknown name raises a `ValueError` naming it.
        select_layer: Vision layer whose output feeds the projector; -1 is the last layer, otherwise an index into
            `(embeddings, layer_1, ..., layer_N)`.
        downsample_ratio: Pixel-unshuffle ratio (0.5: 32x32 patches -> 16x16 = 256 tokens per tile).
        ps_version: Pixel-unshuffle ordering, `"v2"` (all InternVL 2.5 checkpoints) or `"v1"` (transposed grid).
        force_image_size: Tile size the model was trained with (448); `None` uses `vision_config.image_size`.
        template: Name of the conversation template (`"internvl2_5"`, `"internlm2-chat"`, ...), used by the processor.
        dynamic_image_size, use_thumbnail, min_dynamic_patch, max_dynamic_patch: Dynamic-tiling defaults, used by
            the processor (`max_dynamic_patch` is n_max, tiles per image without the thumbnail).
        image_token_id: Id of `<IMG_CONTEXT>`. When `None` it is resolved from tokenizer files next to the weights by
            `from_pretrained`, or can be passed as `from_pretrained(..., image_token_id=K)`.
        vision_batch_size: At most this many tiles go through the vision tower at once (`None`: all at once).
        tie_word_embeddings: Tie the LM head to the input embeddings. When unset it follows
            `text_config.tie_word_embeddings`; original checkpoints always say `false` (separate LM head).
    """

    model_type = "internvl_chat"
    sub_configs_defaults = {
        "vision_config": InternVisionConfig,
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    use_backbone_lora: int = 0
    use_llm_lora: int = 0
    select_layer: int = -1
    force_image_size: int | None = None
    downsample_ratio: float = 0.5
    template: str | None = None
    dynamic_image_size: bool = False
    use_thumbnail: bool = False
    ps_version: str = "v1"
    min_dynamic_patch: int = 1
    max_dynamic_patch: int = 6
    pad2square: bool = False
    image_token_id: int | None = None
    vision_batch_size: int | None = None
    tie_word_embeddings: bool | None = None

    def __post_init__(self, **kwargs):
        llm_config = kwargs.pop("llm_config", None)
        if llm_config is not None:
            if self.text_config is not None:
                raise ValueError("Pass the LLM configuration as `text_config` or as `llm_config`, not both.")
            self.text_config = llm_config

        if self.vision_config is None:
            self.vision_config = InternVisionConfig()
        elif isinstance(self.vision_config, dict):
            check_layer_count(self.vision_config, "vision_config")
            self.vision_config = InternVisionConfig(**self.vision_config)

        if self.text_config is not None and not isinstance(self.text_config, (dict, PreTrainedConfig)):
            raise TypeError(
                f"`llm_config` (`text_config`) must be a dict (the LLM's configuration) or a PreTrainedConfig, got "
                f"{self.text_config!r} ({type(self.text_config).__name__})."
            )
        if self.text_config is None:
            self.text_config = AutoConfig.for_model("qwen2")
        elif isinstance(self.text_config, dict):
            check_layer_count(self.text_config, "llm_config")
            model_type = resolve_text_model_type(self.text_config)
            text_config = normalize_llm_config(self.text_config, model_type)
            text_config.pop("model_type", None)
            self.text_config = AutoConfig.for_model(model_type, **text_config)
        elif isinstance(self.text_config, PreTrainedConfig):
            resolve_text_model_type(
                {"architectures": self.text_config.architectures, "model_type": self.text_config.model_type}
            )

        # An explicit top-level value wins (the original always writes `false` and keeps a separate LM head);
        # without one the LM head follows the LLM's own setting (the upstream port ties whenever it is unset).
        if self.tie_word_embeddings is None:
            self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))
        # The original's class name, which `config.json` always carries (vLLM / LMDeploy select their model by it).
        if self.architectures is None:
            self.architectures = ["InternVLChatModel"]
        # The original writes the LLM hidden size at the top level; keep it consistent.
        kwargs.pop("hidden_size", None)
        super().__post_init__(**kwargs)
        self.validate_architecture()

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs):
        """As `PreTrainedConfig.from_dict` (used by `from_pretrained`), but a dict without `llm_config` /
        `vision_config` is refused (`ValueError` naming the field) instead of building full-size defaults, and the
        values are checked again after the keyword overrides (`from_pretrained(..., vision_batch_size=-3)`); a `dtype`
        naming no torch dtype (`"float17"`) is refused by name (`check_dtype_argument`)."""
        check_sub_configs_present(config_dict, kwargs)
        check_dtype_argument(kwargs)
        check_dtype_argument(config_dict, " in config.json")
        for name in ("llm_config", "text_config", "vision_config"):
            if isinstance(config_dict.get(name), Mapping):
                check_dtype_argument(config_dict[name], f" of config.json's `{name}`")
        result = super().from_dict(config_dict, **kwargs)
        config = result[0] if isinstance(result, tuple) else result
        config.validate_architecture()
        return result

    def validate_architecture(self) -> None:
        """Check the values (`config_validation.validate_config_values`) and their consistency with the vision
        tower; raises `TypeError` / `ValueError` naming the field, the value and what is allowed."""
        validate_config_values(self)
        if self.ps_version not in PIXEL_SHUFFLE_VERSIONS:
            raise ValueError(f"`ps_version` must be one of {PIXEL_SHUFFLE_VERSIONS}, got {self.ps_version!r}.")
        check_downsample_ratio(self.vision_image_size, self.vision_config.patch_size, self.downsample_ratio)
        if self.vision_batch_size is not None and self.vision_batch_size < 1:
            raise ValueError(f"`vision_batch_size` must be a positive integer or None, got {self.vision_batch_size}.")
        num_layers = self.vision_config.num_hidden_layers
        if not -(num_layers + 1) <= self.select_layer <= num_layers:
            raise ValueError(
                f"`select_layer` ({self.select_layer}) is out of range for a vision tower with {num_layers} layers "
                f"(valid: {-(num_layers + 1)}..{num_layers})."
            )

    @property
    def llm_config(self) -> PreTrainedConfig:
        """The original's name for `text_config` (the same object)."""
        return self.text_config

    @llm_config.setter
    def llm_config(self, value: PreTrainedConfig) -> None:
        self.text_config = value

    @property
    def _attn_implementation(self) -> str | None:
        return PreTrainedConfig._attn_implementation.fget(self)

    @_attn_implementation.setter
    def _attn_implementation(self, value: str | dict | None) -> None:
        """transformers' setter (a dict goes to the sub-configs by key), with misspelt keys and non-str values refused
        (`config_validation.check_attn_implementation_argument`)."""
        check_attn_implementation_argument(value, list(self.sub_configs))
        PreTrainedConfig._attn_implementation.fset(self, value)

    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size

    @property
    def vision_image_size(self) -> int:
        """Tile side in pixels: `force_image_size`, else the vision tower's `image_size`."""
        return self.force_image_size or self.vision_config.image_size

    @property
    def num_image_token(self) -> int:
        """LLM tokens per tile: `(tile / patch)**2 * downsample_ratio**2` (256 for 448 px, 14 px, 0.5)."""
        return tokens_per_tile(self.vision_image_size, self.vision_config.patch_size, self.downsample_ratio)

    def to_original_dict(self) -> dict[str, Any]:
        """The original OpenGVLab layout of `to_dict()`, which `save_pretrained` / `to_json_file` / `to_json_string`
        write: the LLM config as `llm_config`, legacy RoPE keys, `InternVLChatModel` architecture, top-level
        `hidden_size`. (`to_dict()` itself is transformers' layout: the sub-configs under the names `sub_configs`
        declares, `vision_config` and `text_config`.)"""
        output = self.to_dict()
        text_config = output.pop("text_config")
        if isinstance(text_config, PreTrainedConfig):
            text_config = text_config.to_dict()
        # Legacy RoPE keys and aliased names, for older transformers and the original remote code.
        text_config = original_llm_config(text_config, type(self.text_config))
        output["llm_config"] = text_config
        output["architectures"] = ["InternVLChatModel"]
        output["hidden_size"] = self.text_config.hidden_size
        if output.get("dtype") is not None:
            output["torch_dtype"] = str(output["dtype"]).removeprefix("torch.")  # the key older readers use
        return output

    def to_diff_dict(self) -> dict[str, Any]:
        """Always the full dictionary: the original writes every field, and readers of OpenGVLab checkpoints
        expect them (a diff against this class's defaults would drop e.g. `ps_version`)."""
        return self.to_dict()

    def to_json_string(self, use_diff: bool = True) -> str:
        """JSON of `to_original_dict()` (every field, whatever `use_diff` says): the original `config.json`."""
        config_dict = self._encode_special_floats(self.to_original_dict())
        return json.dumps(config_dict, indent=2, sort_keys=True) + "\n"


def _accept_original_positional_arguments(init):
    """`InternVLChatConfig(vision_config, llm_config, **kwargs)`, as the original training scripts call it
    (transformers 5 configs are keyword-only); see `original_construction.config_keywords_from_positional`."""

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        return init(self, **config_keywords_from_positional(args, kwargs))

    return __init__


InternVLChatConfig.__init__ = _accept_original_positional_arguments(InternVLChatConfig.__init__)

# The name of this package before version 0.2 (equal to transformers' own, different `InternVLConfig`).
InternVLConfig = InternVLChatConfig

__all__ = ["InternVLChatConfig", "InternVLConfig"]
