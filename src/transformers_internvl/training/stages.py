"""Training stages of InternVL 2.5 (paper Table 3) in one call, LoRA targets, drop path and gradient checkpointing.

Freezing follows `internvl_chat/internvl/train/internvl_chat_finetune.py` (`freeze_backbone`, `freeze_llm`,
`freeze_mlp`, `unfreeze_vit_layers`, `use_llm_lora`, `use_backbone_lora`); LoRA targets and `lora_alpha = 2 r`,
`lora_dropout = 0.05` follow `InternVLChatModel.wrap_llm_lora` / `wrap_backbone_lora`
(`internvl/model/internvl_chat/modeling_internvl_chat.py`).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.utils import logging

from ..conversion.original_lora import ORIGINAL_BACKBONE_LORA_TARGET_MODULES, ORIGINAL_LLM_LORA_TARGET_MODULES

logger = logging.get_logger(__name__)

STAGES = ("mlp", "vit_mlp", "full", "llm_mlp", "llm_lora")

# Module-name suffixes the original wraps with LoRA, per LLM architecture, and for InternViT (one table, shared with
# the loader of the original's unmerged LoRA checkpoints).
LLM_LORA_TARGETS: dict[str, tuple[str, ...]] = ORIGINAL_LLM_LORA_TARGET_MODULES
VISION_LORA_TARGETS: tuple[str, ...] = ORIGINAL_BACKBONE_LORA_TARGET_MODULES


def _parts(model: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module | None]:
    inner = getattr(model, "model", model)
    try:
        return inner.vision_model, inner.mlp1, inner.language_model, getattr(model, "lm_head", None)
    except AttributeError as error:
        raise TypeError(
            f"`model` must be an InternVL model (with vision_model, mlp1, language_model), got {type(model).__name__}."
        ) from error


def _llm_architecture(model: nn.Module) -> str:
    config = model.config
    text_config = getattr(config, "text_config", None) or getattr(config, "llm_config", None)
    architectures = list(getattr(text_config, "architectures", None) or [])
    if architectures:
        return architectures[0]
    model_type = getattr(text_config, "model_type", "")
    return {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM", "internlm2": "InternLM2ForCausalLM"}.get(
        model_type, model_type
    )


def lora_target_modules(model: nn.Module, llm: bool = True, vision: bool = False) -> str:
    """A PEFT `target_modules` regex selecting the original's LoRA targets in this model's LLM and/or InternViT.

    The regex is anchored to `language_model.layers.N.` / `vision_model.encoder.layers.N.` so that names shared by
    both towers (e.g. `mlp.*`) are never matched in the wrong one. Raises `ValueError` for an LLM architecture the
    original has no targets for (see `LLM_LORA_TARGETS`) or when neither tower is selected.
    """
    patterns = []
    if llm:
        arch = _llm_architecture(model)
        if arch not in LLM_LORA_TARGETS:
            raise ValueError(f"No LoRA targets for LLM architecture {arch!r}; known: {sorted(LLM_LORA_TARGETS)}.")
        names = "|".join(t.replace(".", r"\.") for t in LLM_LORA_TARGETS[arch])
        patterns.append(rf"language_model\.layers\.\d+\.({names})")
    if vision:
        names = "|".join(t.replace(".", r"\.") for t in VISION_LORA_TARGETS)
        patterns.append(rf"vision_model\.encoder\.layers\.\d+\.({names})")
    if not patterns:
        raise ValueError("Select at least one tower (`llm` or `vision`).")
    return rf".*({'|'.join(patterns)})"


def set_drop_path_rate(model: nn.Module, drop_path_rate: float) -> None:
    """Stochastic depth in InternViT: layer i drops its residual branches with probability
    `drop_path_rate * i / (L - 1)` (linear from 0, original `InternVisionEncoder`), active in training mode only.

    Replaces the layers' `drop_path1` / `drop_path2` modules and records the rate in the vision config."""
    from ..modeling.modeling_intern_vit import DropPath

    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"`drop_path_rate` must be in [0, 1), got {drop_path_rate!r}.")
    vision_model, _, _, _ = _parts(model)
    layers = vision_model.encoder.layers
    rates = torch.linspace(0, drop_path_rate, len(layers), device="cpu").tolist()
    for layer, rate in zip(layers, rates):
        layer.drop_path1 = DropPath(rate) if rate > 0.0 else nn.Identity()
        layer.drop_path2 = DropPath(rate) if rate > 0.0 else nn.Identity()
    vision_model.config.drop_path_rate = drop_path_rate


def set_trainable(
    model: nn.Module,
    stage: str,
    *,
    unfreeze_vit_layers: int = 0,
    drop_path_rate: float | None = None,
    lora_rank: int = 16,
    vision_lora_rank: int = 0,
    gradient_checkpointing: bool = False,
    lora_dropout: float = 0.05,
):
    """Make the parameters of one InternVL 2.5 training stage trainable and prepare the model for training.

    Stages (original shell scripts `shell/internvl2.5/`, freezing as `internvl_chat_finetune.py`):

    * `"mlp"` (stage 1): only the projector `mlp1` trains; ViT frozen (kept in train mode, so drop path stays active,
      as `freeze_backbone`); LLM frozen and put in eval mode (`freeze_llm`).
    * `"vit_mlp"` (stage 1.5): ViT and `mlp1` train; LLM frozen (eval mode).
    * `"full"` (stage 2): everything trains.
    * `"llm_mlp"` (the original's full fine-tuning scripts, `shell/internvl2.5/2nd_finetune/*_full.sh`:
      `--freeze_backbone True --freeze_llm False --freeze_mlp False`): `mlp1` and the LLM train; ViT frozen (kept in
      train mode, so its drop path, 0.1 in those scripts, stays active).
    * `"llm_lora"` (the LoRA fine-tuning scripts): ViT, `mlp1` and LLM frozen; PEFT LoRA of rank `lora_rank`
      (`lora_alpha = 2 r`, dropout 0.05) on the LLM's original targets, and on InternViT when `vision_lora_rank`>0.

    Note: `Trainer` calls `model.train()` every step, which puts a frozen LLM back into train mode; the original
    (also on `Trainer`) behaves the same way.

    Args:
        model: an `InternVLChatForConditionalGeneration`.
        stage: one of `STAGES`.
        unfreeze_vit_layers: with a frozen ViT, make `encoder.layers[k:]` trainable (the original's Python slice:
            `-n` = the last n layers, `k > 0` = all but the first k; 0 = none). For `"llm_lora"` these layers are
            PEFT `modules_to_save` (the original unfreezes them after its LoRA wrap), so the adapter saves them.
        drop_path_rate: set InternViT's drop path (`set_drop_path_rate`); `None` keeps the model's. The original
            uses 0 in stage 1, 0.1 (300M ViT) / 0.4 (6B ViT) in stages 1.5 and 2.
        lora_rank, vision_lora_rank: LoRA ranks for `"llm_lora"`.
        lora_dropout: LoRA dropout (the original's 0.05; 0 makes training deterministic, e.g. to compare runs).
        gradient_checkpointing: enable non-reentrant gradient checkpointing in both towers.

    Returns:
        The model to train: the same object, or the `PeftModel` wrapping it for `"llm_lora"`.

    Also sets `use_cache = False` in the model and text configs (needed by the packing collator).

    Raises:
        ValueError: unknown stage, `unfreeze_vit_layers` outside `-L..L-1` (L = ViT layers), `unfreeze_vit_layers`
            together with `vision_lora_rank`, bad `drop_path_rate`, no LoRA targets.
        ImportError: `"llm_lora"` without `peft` installed.
    """
    if stage not in STAGES:
        raise ValueError(f"`stage` must be one of {STAGES}, got {stage!r}.")
    vision_model, mlp1, language_model, lm_head = _parts(model)
    num_layers = len(vision_model.encoder.layers)
    if (
        isinstance(unfreeze_vit_layers, bool)
        or not isinstance(unfreeze_vit_layers, int)
        or not -num_layers <= unfreeze_vit_layers < num_layers
    ):
        raise ValueError(
            f"`unfreeze_vit_layers` must be an int in {-num_layers}..{num_layers - 1} (a slice start over the "
            f"{num_layers} ViT layers: -n = the last n; 0 = none), got {unfreeze_vit_layers!r}."
        )
    if unfreeze_vit_layers and stage == "llm_lora" and vision_lora_rank:
        raise ValueError(
            "`unfreeze_vit_layers` with `vision_lora_rank` is not supported: the unfrozen layers would hold LoRA "
            "adapters and full weights at once."
        )
    if drop_path_rate is not None:
        set_drop_path_rate(model, drop_path_rate)
    model.config.use_cache = False
    text_config = getattr(model.config, "text_config", None)
    if text_config is not None:
        text_config.use_cache = False
    llm_modules = [language_model] + ([lm_head] if lm_head is not None else [])

    model.train()
    for parameter in model.parameters():
        parameter.requires_grad_(stage == "full")
    if stage in ("mlp", "vit_mlp"):
        mlp1.requires_grad_(True)
    if stage == "vit_mlp":
        vision_model.requires_grad_(True)
    if stage == "llm_mlp":
        mlp1.requires_grad_(True)
        for module in llm_modules:
            module.requires_grad_(True)
    if stage not in ("full", "llm_mlp"):
        for module in llm_modules:
            module.eval()
    if unfreeze_vit_layers and stage not in ("full", "llm_lora"):
        vision_model.encoder.layers[unfreeze_vit_layers:].requires_grad_(True)
    if gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # the name since transformers 5.x
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if stage != "llm_lora":
        return model

    import peft

    vision = bool(vision_lora_rank)
    patterns = {r"vision_model\..*": vision_lora_rank} if vision else {}
    # PEFT freezes every non-adapter weight; the original unfreezes its ViT layers after the LoRA wrap.
    prefix = next(name for name, module in model.named_modules() if module is vision_model.encoder.layers)
    unfrozen = [f"{prefix}.{i}" for i in range(num_layers)[unfreeze_vit_layers:]] if unfreeze_vit_layers else None
    config = peft.LoraConfig(
        r=lora_rank,
        lora_alpha=2 * lora_rank,
        lora_dropout=lora_dropout,
        target_modules=lora_target_modules(model, llm=True, vision=vision),
        rank_pattern=patterns,
        alpha_pattern={key: 2 * rank for key, rank in patterns.items()},
        task_type="CAUSAL_LM",  # `AutoPeftModelForCausalLM.from_pretrained(adapter_dir)` rebuilds it
        modules_to_save=unfrozen,
    )
    peft_model = peft.get_peft_model(model, config)
    return peft_model


def trainable_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters with `requires_grad=True`, in `named_parameters` order."""
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad]
