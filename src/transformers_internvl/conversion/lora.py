"""`--merge-lora`: fold a PEFT LoRA adapter folder into the base weights while they stream through the converter.

The adapter (`adapter_config.json` + `adapter_model.safetensors`, as `PeftModel.save_pretrained` writes it) must have
been trained on the model that loads the source folder: this package's `InternVLChatForConditionalGeneration` for an
original-layout source (module names `model.vision_model.*`, `model.mlp1.*`, `model.language_model.*`, `lm_head`,
or the original's own `vision_model.*`, `mlp1.*`, `language_model.model.*`, `language_model.lm_head` / `.output` as
`training.adapters.save_adapter_original_layout` writes them), transformers' port for a `-hf` source (`model.vision_tower.*`, `model.multi_modal_projector.*`, ...). Each adapted
`Linear` weight becomes `W + scaling * B @ A` with `scaling = lora_alpha / r` (`/ sqrt(r)` with `use_rslora`),
computed in float32 and cast back to the weight's dtype, as PEFT's `merge_and_unload` does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..modeling.original_lora_loading import merge_lora_weight
from .checkpoint_io import ConversionError, read_json
from .hf_layout import normalize_hf_key

_LORA_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.(?:lora_(?P<part>[AB])|base_layer)\.weight$")
# This package's module names -> original checkpoint names (see modeling/checkpoint_mapping.py).
_ORIGINAL_PREFIXES = (
    ("model.vision_model.", "vision_model."),
    ("model.mlp1.", "mlp1."),
    ("model.language_model.", "language_model.model."),
)


def _checkpoint_name(module: str, layout: str, lm_head: str) -> str:
    if layout == "hf":
        # The name with `.weight` is normalized: the prefix table maps `lm_head.` (a bare `lm_head` matched nothing).
        return normalize_hf_key(module + ".weight")
    if module in ("lm_head", f"language_model.{lm_head}"):
        return f"language_model.{lm_head}.weight"
    for module_prefix, saved_prefix in _ORIGINAL_PREFIXES:
        if module.startswith(module_prefix):
            return saved_prefix + module[len(module_prefix) :] + ".weight"
        # Adapters saved with the original module names (`training.adapters.save_adapter_original_layout`, the
        # default of examples/finetune_lora.py) already name the checkpoint's tensors.
        if module.startswith(saved_prefix):
            return module + ".weight"
    raise ConversionError(
        f"LoRA module {module!r} is not part of an InternVL model in the original layout (expected this package's "
        f"names `model.vision_model.*`, `model.mlp1.*`, `model.language_model.*`, `lm_head`, or the original's "
        f"`vision_model.*`, `mlp1.*`, `language_model.model.*`, `language_model.{lm_head}`)"
    )


def lora_deltas(
    adapter: str | Path, layout: str, lm_head: str = "lm_head"
) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """`{source tensor name: function merging the adapter into that tensor}` for a PEFT LoRA adapter folder.

    Args:
        adapter: folder with `adapter_config.json` and `adapter_model.safetensors`.
        layout: layout of the source checkpoint the adapter applies to (`"original"` or `"hf"`).
        lm_head: name of the LM head in the original layout (`"output"` for InternLM2).

    Raises:
        ConversionError: not a LoRA adapter, an option whose merge this does not reproduce (DoRA, `fan_in_fan_out`,
            per-module rank / alpha patterns, `modules_to_save`), or an A without its B; when merging, a delta that
            does not fit its weight or that makes finite weights NaN / inf.
    """
    adapter = Path(adapter)
    config = read_json(adapter / "adapter_config.json", "adapter config")
    if config.get("peft_type") != "LORA":
        raise ConversionError(f"{adapter} is a {config.get('peft_type')!r} adapter; --merge-lora merges LORA ones")
    for option in ("use_dora", "fan_in_fan_out"):
        if config.get(option):
            raise ConversionError(f"adapter option {option}=true is not supported by --merge-lora")
    for option in ("rank_pattern", "alpha_pattern", "modules_to_save"):
        if config.get(option):
            raise ConversionError(f"adapter option {option} is not supported by --merge-lora")
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    weights_path = adapter / "adapter_model.safetensors"
    if not weights_path.is_file():
        raise ConversionError(f"{weights_path} not found (only safetensors adapters are supported)")
    weights = load_file(weights_path)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in weights.items():
        match = _LORA_KEY.match(key)
        if match is None:
            raise ConversionError(f"unexpected adapter tensor {key!r}")
        # `base_layer`: the weight PEFT saves with an adapter on `lm_head` / `embed_tokens` and loads over the base's.
        pairs.setdefault(match["module"], {})[match["part"] or "base"] = tensor
    deltas = {}
    for module, parts in pairs.items():
        if not {"A", "B"} <= set(parts):
            raise ConversionError(f"adapter module {module!r} has {sorted(parts)} but not both lora_A and lora_B")

        def merge(weight: torch.Tensor, a=parts["A"], b=parts["B"], module=module) -> torch.Tensor:
            base = parts.get("base")
            if base is not None and base.shape != weight.shape:
                raise ConversionError(f"adapter base_layer of {module!r} is {tuple(base.shape)}, the weight "
                                      f"{tuple(weight.shape)}")  # fmt: skip
            try:
                return merge_lora_weight(weight if base is None else base.to(weight.dtype), a, b, scaling)
            except ValueError as error:
                raise ConversionError(f"LoRA module {module!r}: {error}") from None

        deltas[_checkpoint_name(module, layout, lm_head)] = merge
    return deltas


__all__ = ["lora_deltas"]
