"""How an InternVL model loads and saves the original OpenGVLab checkpoint layout (`from_pretrained` /
`save_pretrained` of `InternVLPreTrainedModel`), kept apart from the architecture in `modeling_internvl.py`.

On load: the key table (`checkpoint_mapping.py`, plus the model's own head renaming), the merge of unmerged original
LoRA checkpoints (`original_lora_loading.py`), the missing-weight check (`missing_weights.py`), errors that name
mismatched shapes (`load_errors.py`), the ids the original leaves to the tokenizer files (`tokenizer_files.py`) and
the original remote code's loading options (`original_api.py`). On save: the original layout, atomically, with the
source folder's remote-code files.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
from collections.abc import Mapping

from transformers.utils import logging

from ..atomic_save import atomic_save_directory
from .checkpoint_mapping import head_renaming
from .checkpoint_precheck import check_config_against_checkpoint
from .config_validation import check_dtype_argument
from .generation_file_checks import check_generation_config_file, check_generation_fields
from .load_errors import describe_internvl_mismatches, naming_shape_mismatches, record_shape_mismatches
from .missing_weights import (
    allow_missing_weights,
    check_no_dropped_weights,
    check_no_missing_weights,
    missing_weights_allowed,
    original_key_namer,
)
from .original_api import (
    copy_remote_code_files,
    module_names,
    remote_code_files,
    resolve_attention_options,
    translate_device_map,
)
from .original_attributes import check_towers_not_wrapped
from .original_lora_loading import (
    checkpoint_holds_original_lora,
    finish_original_lora_load,
    original_lora_converters,
    original_lora_renamings,
)
from .quantization_options import resolve_bitsandbytes_options
from .tokenizer_files import LLM_GENERATION_IDS, apply_tokenizer_file_ids, llm_generation_ids, local_directory

logger = logging.get_logger(__name__)


def _is_token_id(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_generation_token_ids(generation_config) -> None:
    """Refuse token ids of the loaded generation config (`generation_config.json`, or the `generation_config=` argument
    of `from_pretrained`) that `generate` would fail on deep inside or read as another token (`true` as id 1).

    `eos_token_id`: an integer or a list of integers; `pad_token_id` / `bos_token_id`: an integer; each may be None.

    Raises:
        TypeError: naming the field and the value given.
    """
    for name in LLM_GENERATION_IDS:
        value = getattr(generation_config, name, None)
        if value is None or _is_token_id(value):
            continue
        if name == "eos_token_id" and isinstance(value, (list, tuple)) and all(map(_is_token_id, value)):
            continue
        allowed = "an integer token id or a list of them" if name == "eos_token_id" else "an integer token id"
        raise TypeError(
            f"`generation_config.{name}` (from generation_config.json or the `generation_config=` argument) must be "
            f"{allowed} or None, got {value!r} ({type(value).__name__})."
        )


def llm_generation_defaults(model) -> None:
    """Fill `model.generation_config`'s unset `eos_token_id` / `pad_token_id` / `bos_token_id` from `llm_config`.

    The original `InternVLChatModel.generate` (`internvl_chat/internvl/model/internvl_chat/modeling_internvl_chat.py`)
    hands `generation_config=None` on to `self.language_model.generate`, which then uses the language model's own
    generation config, built from `llm_config`: plain `generate` stops at `llm_config.eos_token_id` (`</s>` = 2 for
    InternLM2.5, `<|im_end|>` for Qwen2.5) and pads finished rows with `llm_config.pad_token_id`. The checkpoint's
    top-level `generation_config.json` (`{"_from_model_config": true}`) sets none of them. Values the file or the caller
    set are kept; the template's stop token is added afterwards (`tokenizer_files.apply_tokenizer_file_ids`).

    Raises:
        TypeError: an id of the loaded generation config of the wrong type (`check_generation_token_ids`).
    """
    generation_config = getattr(model, "generation_config", None)
    text_config = getattr(model.config, "text_config", None)
    if generation_config is None or text_config is None:
        return
    check_generation_token_ids(generation_config)
    check_generation_fields(generation_config)
    for name, value in llm_generation_ids(text_config, lambda name: getattr(generation_config, name, None)).items():
        setattr(generation_config, name, value)


class OriginalCheckpointMixin:
    """`from_pretrained` / `save_pretrained` in the original layout; mixed into `InternVLPreTrainedModel`."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """As `PreTrainedModel.from_pretrained`, plus what original checkpoints leave to the tokenizer files next to
        the weights: `image_token_id` (`<IMG_CONTEXT>`) when neither `config.json` nor the `image_token_id=` keyword
        gives it, and the template's end token (`<|im_end|>`, Phi-3's `<|end|>`, ...: what the original `chat()` passes
        as `eos_token_id`) added to the generation config's `eos_token_id` when it is not there yet, so that plain
        `generate` stops where `chat()` does (see `tokenizer_files.py`); unset eos / pad / bos ids of the generation
        config come from `llm_config`, as the original's `generate` takes them (`llm_generation_defaults`).

        The original remote code's options are accepted too (see `modeling/original_api.py`): `use_flash_attn=True`
        (flash_attention_2, or eager with a warning when flash-attn is not usable) / `False` (eager),
        `low_cpu_mem_usage` (ignored), `load_in_8bit` / `load_in_4bit` (transformers 4's options, which the original
        evaluation scripts pass: `True` becomes `quantization_config=BitsAndBytesConfig(...)`, `False` is dropped;
        `quantization_options.py`), and a `device_map` written with the original module names (`vision_model`,
        `mlp1`, `language_model.model.layers.N`, `language_model.lm_head`, ... as the model cards' `split_model()`),
        translated to this module tree; a key naming no module (original or here) raises `ValueError` (transformers
        ignores it). The source folder is recorded so
        that `save_pretrained` copies its remote-code files.

        Raises:
            ValueError: a `dtype` naming no torch dtype (`"float17"`), a checkpoint tensor whose shape does not fit the
                config (naming both shapes), weights the
                checkpoint lacks (see `missing_weights.py`), or an unmerged LoRA that does not fit.
            TypeError: an eos / pad / bos id of `generation_config.json` or of the `generation_config=` argument that is
                not an integer (eos: or a list of them), e.g. `"2"`, `2.0`, `true` (`check_generation_token_ids`), or
                a sampling / length field of the wrong type (`do_sample: "false"`; `check_generation_fields`).
            TypeError / ValueError (also): `load_in_8bit` / `load_in_4bit` not a bool, both `True`, or one `True`
                together with `quantization_config` (`resolve_bitsandbytes_options`).
            ValueError (also): a `generation_config.json` that is not a JSON object (`check_generation_config_file`),
                a sampling / length field out of range (`num_beams: 0`, `top_p: 5`); before the model is built, a
                config the local safetensors weights cannot fill (layer counts far above the checkpoint's, embedding
                sizes), weights stored as integers, or a damaged safetensors header (`checkpoint_precheck.py`).
        """
        check_dtype_argument(kwargs)
        resolve_bitsandbytes_options(kwargs)
        if pretrained_model_name_or_path is not None:
            check_generation_config_file(
                local_directory(pretrained_model_name_or_path, kwargs), kwargs.get("subfolder", "")
            )
        use_flash_attn = resolve_attention_options(kwargs)
        cls._check_checkpoint_before_building(pretrained_model_name_or_path, kwargs)
        device_map = kwargs.get("device_map")
        if (
            isinstance(device_map, Mapping)
            and any(key != "" for key in device_map)  # all keys are checked: transformers ignores unknown ones
            and (pretrained_model_name_or_path is not None or kwargs.get("config") is not None)
        ):
            config = cls._config_for(pretrained_model_name_or_path, kwargs)
            if config is not None:
                kwargs["device_map"] = translate_device_map(device_map, module_names(cls, config))
        missing_policy = allow_missing_weights.set(missing_weights_allowed(kwargs))
        try:
            with naming_shape_mismatches(describe_internvl_mismatches):
                loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        finally:
            allow_missing_weights.reset(missing_policy)
        # `output_loading_info=True` returns `(model, loading_info)`; a `state_dict=` load may have no path at all.
        model = loaded[0] if kwargs.get("output_loading_info") else loaded
        if use_flash_attn is not None:
            model.config.vision_config.use_flash_attn = use_flash_attn  # recorded as the original does
        llm_generation_defaults(model)
        if pretrained_model_name_or_path is None:
            return loaded
        directory = local_directory(pretrained_model_name_or_path, kwargs)
        if directory is None:
            return loaded
        model._remote_code_source = directory
        apply_tokenizer_file_ids(model, directory)
        return loaded

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained` in the original layout (`architectures: ["InternVLChatModel"]`,
        `llm_config`, original key names, the source's `auto_map`), plus the original remote-code files
        (`configuration_*.py`, `modeling_*.py`, `tokenization_*.py`, `conversation.py`) of the folder the model was
        loaded from, so that servers reading this layout with `trust_remote_code` (vLLM, LMDeploy) serve it.

        Atomic (`atomic_save.atomic_save_directory`): the checkpoint is written to a temporary folder beside
        `save_directory` and swapped in, so that readers see the old checkpoint or the new one; files of the old
        folder that this save does not write (tokenizer, processor, README, ...) are kept, old weight files are not."""
        check_towers_not_wrapped(self)  # after wrap_llm_lora / wrap_backbone_lora: merge first
        is_main_process = args[0] if args else kwargs.get("is_main_process", True)
        if kwargs.get("push_to_hub"):
            kwargs.setdefault("repo_id", os.path.basename(os.path.normpath(save_directory)))
        with atomic_save_directory(save_directory, enabled=is_main_process) as staging:
            result = super().save_pretrained(staging, *args, **kwargs)
            source = getattr(self, "_remote_code_source", None)
            if source is not None and is_main_process:
                if kwargs.get("push_to_hub") and remote_code_files(source):
                    logger.warning_once(
                        "save_pretrained(push_to_hub=True) uploads before the original remote-code files are copied; "
                        "upload them from the saved folder (e.g. `huggingface_hub.upload_folder`)."
                    )
                copy_remote_code_files(source, staging)
        return result

    @classmethod
    def _check_checkpoint_before_building(cls, pretrained_model_name_or_path, kwargs) -> None:
        """`checkpoint_precheck.check_config_against_checkpoint` on a local checkpoint folder, so that layer counts
        and embedding sizes the weights cannot fill fail before the model is built (in bounded time and memory)."""
        if pretrained_model_name_or_path is None or missing_weights_allowed(kwargs):
            return
        directory = local_directory(pretrained_model_name_or_path, kwargs)
        config = cls._config_for(pretrained_model_name_or_path, kwargs) if directory is not None else None
        if config is not None:
            check_config_against_checkpoint(config, directory, kwargs)

    @classmethod
    def _config_for(cls, pretrained_model_name_or_path, kwargs):
        config_class = cls.config_class
        config = kwargs.get("config")
        if isinstance(config, config_class):
            return config
        try:
            return config_class.from_pretrained(pretrained_model_name_or_path)
        except (OSError, ValueError):
            return None

    @classmethod
    def _load_pretrained_model(cls, model, state_dict, checkpoint_files, load_config, *args, **kwargs):
        """Adds the model's head renaming (`language_model.<head>.*` -> `lm_head.*`, the head's name from the LLM
        class) to the load mapping: the registry holds only the renamings every InternVL model shares. transformers
        keeps the renamings a load used as the model's `_weight_conversions`, which `save_pretrained` reverses."""
        head = getattr(model, "_language_model_head", None)
        mapping = list(load_config.weight_mapping or [])
        if head is not None:
            mapping.insert(0, head_renaming(head.head_name))
        # Unmerged LoRA checkpoints of the original fine-tuning code: PEFT-prefix renamings first (renamings chain in
        # order), the merge converter after them; only for checkpoints that hold such keys, so that no pattern of a
        # plain model's mapping matches nothing.
        if checkpoint_holds_original_lora(checkpoint_files, state_dict):
            mapping = original_lora_renamings() + mapping + original_lora_converters()
        load_config = dataclasses.replace(load_config, weight_mapping=mapping or None)
        result = super()._load_pretrained_model(model, state_dict, checkpoint_files, load_config, *args, **kwargs)
        loading_info = result[0]
        if loading_info.mismatched_keys and not load_config.ignore_mismatched_sizes:
            # Raised here, before transformers allocates and randomly initialises every mismatched tensor at the
            # config's size (gigabytes for `vocab_size: 10**8`) only to raise afterwards.
            raise ValueError(describe_internvl_mismatches(sorted(loading_info.mismatched_keys), model.config))
        return result

    def _adjust_missing_and_unexpected_keys(self, loading_info) -> None:
        super()._adjust_missing_and_unexpected_keys(loading_info)
        record_shape_mismatches(loading_info, self.config)
        # Original unmerged LoRA checkpoints are merged while loading; then no weight may be left random.
        finish_original_lora_load(self, original_key_namer(self))
        check_no_missing_weights(self, loading_info)
        check_no_dropped_weights(self, loading_info)


__all__ = ["OriginalCheckpointMixin"]
