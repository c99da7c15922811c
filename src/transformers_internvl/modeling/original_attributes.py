"""The original `InternVLChatModel`'s plain attributes and training methods, on this package's chat model.

The original (internvl_chat/internvl/model/internvl_chat/modeling_internvl_chat.py) sets `select_layer`,
`ps_version`, `downsample_ratio`, `patch_size`, `llm_arch_name` and `num_samples` in its constructor from the config
and reads the first two at call time (`extract_feature`, `pixel_shuffle`), so training scripts and demos assign them.
It also offers `wrap_llm_lora` / `wrap_backbone_lora`, which the original fine-tuning script calls.

Here:

* `select_layer` and `ps_version` are read by every image path from the config, so an assignment is written to the
  config (checked as at load) and takes effect at the next call, as in the original; unlike the original, a later
  `save_pretrained` keeps the new value.
* `downsample_ratio`, `patch_size` and `llm_arch_name` are fixed by the weights' shapes (`mlp1`'s input is
  `C / downsample_ratio**2` wide; the patch embedding is `patch_size` wide) and by the LLM class. The original accepts
  a new value and then fails at the next image (`downsample_ratio` 0.25 on a 0.5 model: `mlp1`'s LayerNorm gets the
  wrong width) or ignores it (`patch_size`); here assigning a different value raises `ValueError` at once, and
  assigning the current value is allowed.
* `num_samples` is the original's sample counter (0, only incremented by the original's distributed `forward`
  logging); it is a plain attribute here too.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.utils import logging

from .language_model_view import unwrap_language_model
from .original_lora_loading import ORIGINAL_BACKBONE_LORA_TARGET_MODULES, ORIGINAL_LLM_LORA_TARGET_MODULES
from .pixel_unshuffle import pixel_unshuffle

logger = logging.get_logger(__name__)

__all__ = ["INNER_MODULES", "OriginalAttributesMixin", "check_towers_not_wrapped"]


def _refuse_change(name: str, current: Any, value: Any, reason: str) -> None:
    if value != current:
        raise ValueError(f"`{name}` cannot be changed on a built model (it is {current!r}, got {value!r}): {reason}")


def _trainable_summary(model) -> str:
    """PEFT's own count (`PeftModel.get_nb_trainable_parameters`), worded as its `print_trainable_parameters`."""
    trainable, total = model.get_nb_trainable_parameters()
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"


# The original's top-level modules, which live in the inner `model` here (`InternVLChatBaseModel`).
INNER_MODULES = ("vision_model", "mlp1", "language_model")


def check_towers_not_wrapped(model: nn.Module) -> None:
    """Raise `ValueError` when `wrap_llm_lora` / `wrap_backbone_lora` left a tower wrapped in a `peft.PeftModel`:
    its PEFT key names (`base_layer`, `lora_A`) are no layout this package or the original reloads without
    `use_*_lora` in the config."""
    inner = getattr(model, "model", None)
    for name, method in (("language_model", "wrap_llm_lora"), ("vision_model", "wrap_backbone_lora")):
        tower = getattr(inner, name, None)
        if tower is not None and hasattr(tower, "peft_config"):
            raise ValueError(
                f"`{name}` is wrapped with LoRA (`{method}`); merge it before saving, as the original's "
                f"tools/merge_lora.py does: `model.{name} = model.{name}.merge_and_unload()` (or save the adapter "
                f"alone with `model.{name}.save_pretrained(adapter_dir)`)."
            )


class OriginalAttributesMixin:
    """Attributes and LoRA wrapping of the original `InternVLChatModel` (see the module docstring)."""

    #: The original's sample counter (`self.num_samples = 0` in its constructor).
    num_samples: int = 0

    def __setattr__(self, name: str, value: Any) -> None:
        """`model.vision_model = ...`, `model.mlp1 = ...`, `model.language_model = ...` replace the module inside
        `model.model`, where this package keeps them (the original's `tools/merge_lora.py` assigns
        `model.language_model = model.language_model.model`); `nn.Module.__setattr__` would otherwise register a
        second copy at the top level, which the read-only attributes then hide."""
        if name in INNER_MODULES and "model" in self.__dict__.get("_modules", {}):
            if name == "language_model":  # the causal-LM view (`language_model_view.py`): its decoder goes back
                value = unwrap_language_model(self, value)
            setattr(self._modules["model"], name, value)
            return
        super().__setattr__(name, value)

    @property
    def select_layer(self) -> int:
        """Vision layer whose states are projected (`config.select_layer`; -1: the last). Assignable, as in the
        original: the next image uses it (`ValueError` / `TypeError` for a layer the tower does not have)."""
        return self.config.select_layer

    @select_layer.setter
    def select_layer(self, value: int) -> None:
        self._set_config_value("select_layer", value)

    @property
    def ps_version(self) -> str:
        """Pixel-shuffle version, `"v1"` or `"v2"` (`config.ps_version`). Assignable, as in the original."""
        return self.config.ps_version

    @ps_version.setter
    def ps_version(self, value: str) -> None:
        self._set_config_value("ps_version", value)

    def _set_config_value(self, name: str, value: Any) -> None:
        """Write `config.<name>` and run the load-time checks; the old value is restored when they fail."""
        old = getattr(self.config, name)
        setattr(self.config, name, value)
        try:
            self.config.validate_architecture()
        except (TypeError, ValueError):
            setattr(self.config, name, old)
            raise

    @property
    def downsample_ratio(self) -> float:
        return self.config.downsample_ratio

    @downsample_ratio.setter
    def downsample_ratio(self, value: float) -> None:
        _refuse_change(
            "downsample_ratio",
            self.config.downsample_ratio,
            value,
            f"the projector `mlp1` takes {self.mlp1[0].normalized_shape[0]}-wide pixel-unshuffled features (the "
            "original fails at the next image). Build the model from a config with the new ratio instead.",
        )

    @property
    def patch_size(self) -> int:
        return self.config.vision_config.patch_size

    @patch_size.setter
    def patch_size(self, value: int) -> None:
        _refuse_change(
            "patch_size",
            self.config.vision_config.patch_size,
            value,
            "the vision tower's patch embedding has that kernel size (the original ignores the assignment).",
        )

    @property
    def llm_arch_name(self) -> str | None:
        """`llm_config.architectures[0]`, as the original's attribute."""
        architectures = self.config.text_config.architectures
        return architectures[0] if architectures else None

    @llm_arch_name.setter
    def llm_arch_name(self, value: str) -> None:
        _refuse_change("llm_arch_name", self.llm_arch_name, value, "it names the class of the loaded LLM.")

    def pixel_shuffle(self, x: torch.Tensor, scale_factor: float = 0.5) -> torch.Tensor:
        """The original's method: `(N, W, H, C)` -> `(N, H*s, W*s, C/s**2)` in `config.ps_version`'s order."""
        if self.config.ps_version == "v1":
            logger.warning_once("ps_version 'v1' leaves the pixel-shuffled grid transposed, as the original warns.")
        return pixel_unshuffle(x, scale_factor, self.config.ps_version)

    # ---- LoRA, as the original's methods -----------------------------------------------------------------------

    def wrap_backbone_lora(self, r: int = 128, lora_alpha: int = 256, lora_dropout: float = 0.05) -> None:
        """Wrap the vision tower in a PEFT LoRA model, as the original `wrap_backbone_lora`: rank `r`, scaling
        `lora_alpha / r`, targets `attn.qkv`, `attn.proj`, `mlp.fc1`, `mlp.fc2` of every InternViT layer. PEFT freezes
        the tower's other weights; the projector and the LLM are left as they are. `vision_model` is then the
        `peft.PeftModel`, as in the original.

        Raises:
            ImportError: `peft` is not installed.
            ValueError: the tower is already wrapped.
        """
        import peft

        inner = self.model
        if isinstance(inner.vision_model, peft.PeftModel):
            raise ValueError("The vision tower is already wrapped with LoRA (`wrap_backbone_lora` was called before).")
        config = peft.LoraConfig(
            r=r,
            target_modules=list(ORIGINAL_BACKBONE_LORA_TARGET_MODULES),
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
        )
        inner.vision_model = peft.get_peft_model(inner.vision_model, config)
        logger.info(f"vision_model LoRA: {_trainable_summary(inner.vision_model)}")

    def wrap_llm_lora(self, r: int = 128, lora_alpha: int = 256, lora_dropout: float = 0.05) -> None:
        """Wrap the LLM in a PEFT LoRA model, as the original `wrap_llm_lora`: rank `r`, scaling `lora_alpha / r`,
        the original's targets for `llm_arch_name` (`original_lora_loading.ORIGINAL_LLM_LORA_TARGET_MODULES`:
        Qwen2 / Llama `self_attn.{q,k,v,o}_proj`, `mlp.{gate,up,down}_proj`; InternLM2 `attention.wqkv`,
        `attention.wo`, `feed_forward.w1/w2/w3`; Phi-3 `self_attn.qkv_proj`, `self_attn.o_proj`, `mlp.gate_up_proj`,
        `mlp.down_proj`). Every other LLM weight is frozen, the LM head included (it is inside the original's wrapped
        LLM), and the input embeddings' output requires grad (`enable_input_require_grads`), as in the original.
        `language_model` is then the `peft.PeftModel` around the LLM's decoder.

        Raises:
            NotImplementedError: an LLM architecture the original has no targets for (the original raises there too).
            ImportError: `peft` is not installed.
            ValueError: the LLM is already wrapped.
        """
        import peft

        architecture = self.llm_arch_name
        if architecture not in ORIGINAL_LLM_LORA_TARGET_MODULES:
            raise NotImplementedError(
                f"wrap_llm_lora: the original has no LoRA targets for `llm_config.architectures[0]` = "
                f"{architecture!r} (it knows {sorted(ORIGINAL_LLM_LORA_TARGET_MODULES)}). Use "
                "`training.stages.set_trainable` or a `peft.LoraConfig` with your own `target_modules`."
            )
        inner = self.model
        if isinstance(inner.language_model, peft.PeftModel):
            raise ValueError("The LLM is already wrapped with LoRA (`wrap_llm_lora` was called before).")
        config = peft.LoraConfig(
            r=r,
            target_modules=list(ORIGINAL_LLM_LORA_TARGET_MODULES[architecture]),
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
        )
        inner.language_model = peft.get_peft_model(inner.language_model, config)
        self.lm_head.requires_grad_(False)
        inner.language_model.enable_input_require_grads()
        logger.info(f"language_model LoRA: {_trainable_summary(inner.language_model)}")
