"""`-hf` -> original: the original `config.json` of a `-hf` config, the expected tensors, and the tokenizer files.

The `-hf` config's record (`hf_layout.ORIGINAL_RECORD_KEY`, written by `--to hf`) gives back the original-only
fields; a folder without it gets them from its chat template and image processor config (`template_inference`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging

from .checkpoint_io import ConversionError, read_json, write_json
from .hf_layout import ORIGINAL_RECORD_KEY, vision_config_from_hf
from .layouts import TIED_RECORD, TOKENIZER_FILES, Prepared, _dtype_name, _heads, _meta_state_shapes
from .remote_code import AUTO_MAP_RECORD, restore_remote_code
from .tokenizer_io import ADDED_TOKENS_RECORD, restore_original_tokenizer_files

logger = logging.get_logger(__name__)


def original_config_for(
    hf: dict[str, Any],
    dtype: torch.dtype | None,
    head_stored: bool | None = None,
    source: Path | None = None,
    template: str | None = None,
) -> Any:
    """This package's `InternVLChatConfig` (original layout) of a `-hf` config dict; InternLM2 when the record says so.

    `template` (a name of `chat_templates.TEMPLATES`) replaces the recorded one. A config without a record of the
    original fields takes `template`, `system_message` and tiling from the chat template and image processor config
    of the folder `source` (`template_inference.infer_original_fields`; the original defaults without `source`).

    `head_stored`: whether the `-hf` checkpoint holds an `lm_head` tensor (`None`: not known, the config's
    `tie_word_embeddings` is kept). A stored head is kept, with `tie_word_embeddings: false` (transformers does not
    tie a stored head). A tied `-hf` model without one also gets false (its head is then written as a copy of the
    embeddings): the original InternVL 2.5 code forces false
    (`internvl_chat/internvl/model/internvl_chat/configuration_internvl_chat.py`) and would leave the head
    uninitialised. Only a `-hf` folder that `--to hf` made from a tied original stays tied (`TIED_RECORD`)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from ..modeling.configuration_internvl import InternVLChatConfig as OriginalConfig
    from .internlm2_llama import llama_config_to_internlm2

    record = dict(hf.get(ORIGINAL_RECORD_KEY) or {})
    text = dict(hf.get("text_config") or {})
    model_type = text.pop("model_type", "qwen2")
    if hf.get("vision_feature_select_strategy", "default") != "default":
        raise ConversionError("vision_feature_select_strategy must be 'default' (drop CLS) for the original layout")
    if hf.get("projector_hidden_act", "gelu") != "gelu":
        raise ConversionError(f"projector_hidden_act {hf.get('projector_hidden_act')!r}: the original uses gelu")
    layer = hf.get("vision_feature_layer", -1)
    if not isinstance(layer, int):
        raise ConversionError(f"vision_feature_layer {layer!r}: the original selects one layer")
    try:
        text_config = AutoConfig.for_model(model_type, **text)
    except ValueError as error:
        raise ConversionError(f"text_config: {error}") from None
    architectures = record.get("llm_architectures") or []
    if source is not None and "template" not in record:
        from .template_inference import infer_original_fields

        architecture = (architectures or [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)])[0]
        record.update(infer_original_fields(source, hf, architecture, template))
    elif template is not None:
        record["template"] = template
    if architectures[:1] == ["InternLM2ForCausalLM"]:
        text_config = llama_config_to_internlm2(text_config)
    else:
        # The causal-LM class transformers registers for the model type (what `llm_config.architectures[0]` names).
        architecture = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
        text_config.architectures = architectures or ([architecture] if architecture else None)
    tie = bool(hf.get("tie_word_embeddings", True))
    if tie and head_stored:
        logger.warning("config.json says tie_word_embeddings: true but the checkpoint has its own LM head, which "
                       "transformers uses (it does not tie a stored head); the original config says false and keeps "
                       "that head")  # fmt: skip
    if head_stored is not None:
        tie = tie and not head_stored and bool(record.get(TIED_RECORD))
    text_config.tie_word_embeddings = tie
    vision = vision_config_from_hf(hf.get("vision_config") or {})
    side = vision["image_size"] // vision["patch_size"]
    downsample = hf.get("downsample_ratio", 0.5)
    if hf.get("image_seq_length") not in (None, int(side * side * downsample**2)):
        # transformers' model never reads it (InternVLConfig defaults it to 256 whatever the tower); the original
        # layout has no such field, its token count follows from the tower.
        logger.warning(f"config.json says image_seq_length {hf['image_seq_length']}; the vision tower gives "
                       f"{int(side * side * downsample**2)} tokens per tile, which the original layout uses")  # fmt: skip
    fields = {
        "template": "internvl2_5",
        "force_image_size": vision["image_size"],
        "dynamic_image_size": True,
        "use_thumbnail": True,
        "min_dynamic_patch": 1,
        "max_dynamic_patch": 12,
        "pad2square": False,
        **{
            k: v
            for k, v in record.items()
            if k not in ("llm_architectures", TIED_RECORD, AUTO_MAP_RECORD) and not k.startswith("tokenizer_")
        },
        "ps_version": "v2",
        "select_layer": layer,
    }
    config = OriginalConfig(
        vision_config=vision,
        text_config=text_config,
        downsample_ratio=downsample,
        image_token_id=hf.get("image_token_id"),
        tie_word_embeddings=tie,
        **fields,
    )
    config.architectures = ["InternVLChatModel"]
    dtype_name = _dtype_name(dtype, hf.get("dtype") or hf.get("torch_dtype"))
    if dtype_name:
        config.dtype = dtype_name
    return config


def prepare_to_original(
    source: Path,
    config: dict[str, Any],
    dtype: torch.dtype | None,
    tensor_names: set[str] | None = None,
    template: str | None = None,
) -> Prepared:
    """`tensor_names`: the source's tensor names, normalized (`normalize_hf_key`); tells whether it stores an LM head.
    `template`: the conversation template to write (default: recorded or recognised; see `original_config_for`)."""
    from ..modeling.llm_resolution import language_model_head
    from ..modeling.modeling_internvl import InternVLChatForConditionalGeneration as OriginalModel

    head_stored = None if tensor_names is None else "language_model.lm_head.weight" in tensor_names
    try:
        original = original_config_for(config, dtype, head_stored, source, template)
    except (ValueError, TypeError) as error:
        raise ConversionError(str(error)) from None
    internlm2 = original.text_config.model_type == "internlm2"
    head = language_model_head(original.text_config).head_name  # `lm_head`, InternLM2 `output`, as the LLM class
    prefixes = (
        ("model.vision_model.", "vision_model."),
        ("model.mlp1.", "mlp1."),
        ("model.language_model.", "language_model.model."),
        ("lm_head.", f"language_model.{head}."),
    )
    shapes = {}
    for name, shape in _meta_state_shapes(OriginalModel, original).items():
        for module_prefix, saved_prefix in prefixes:
            if name.startswith(module_prefix):
                name = saved_prefix + name[len(module_prefix) :]
                break
        shapes[name] = shape
    if original.tie_word_embeddings:
        shapes.pop(f"language_model.{head}.weight", None)
    expected = set(shapes)

    def write(folder: Path) -> None:
        original.save_pretrained(folder)
        if (source / "generation_config.json").is_file():
            generation = read_json(source / "generation_config.json", "generation config")
            generation.pop("transformers_version", None)
            write_json(folder / "generation_config.json", generation)
        copy_tokenizer_to_original(source, folder, config.get(ORIGINAL_RECORD_KEY) or {})
        restore_remote_code(source, folder, config.get(ORIGINAL_RECORD_KEY) or {})

    untied = bool(config.get("tie_word_embeddings", True)) and head_stored is False and not original.tie_word_embeddings
    if untied:
        logger.info("the -hf model ties its LM head to the embeddings; the original layout stores a separate head "
                    "(the original code forces tie_word_embeddings false), written as a copy of the embeddings")  # fmt: skip
    heads = _heads(original.text_config) if internlm2 else None
    head_name = f"language_model.{head}.weight" if untied else None
    return Prepared(heads, expected, write, shapes, head_from_embeddings=head_name)


def copy_tokenizer_to_original(source: Path, folder: Path, record: dict[str, Any]) -> None:
    """Tokenizer files only (no chat template, processor or image processor config: the original layout takes
    those from `config.json`'s `template` and tiling fields); the original tokenizer class, `auto_map`,
    `additional_special_tokens`, `added_tokens_decoder` and `legacy` come back from the record when the `-hf` folder
    was made by `--to hf`. Without `added_tokens_decoder`, transformers 4's slow class (the original's) reads the added
    tokens of tokenizer.json, where transformers 5 lists a sentencepiece model's user-defined pieces: as added tokens
    they cut the text around them ("aｗb" -> `a`, `ｗ`, `▁b` in legacy mode instead of `a`, `ｗ`, `b`)."""
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, folder / name)
    config_path = folder / "tokenizer_config.json"
    if config_path.is_file():
        tokenizer_config = read_json(config_path, "tokenizer config")
        tokenizer_config.pop("chat_template", None)
        if record.get("tokenizer_class"):
            tokenizer_config["tokenizer_class"] = record["tokenizer_class"]
        if record.get("tokenizer_class") == "InternLM2Tokenizer" and not (source / "tokenizer.model").is_file():
            logger.warning(f"{source} has no tokenizer.model (a tokenizer re-saved by transformers keeps only "
                           "tokenizer.json): the original code's InternLM2Tokenizer cannot read the tokenizer of the "
                           "original-layout folder; this package reads its tokenizer.json")  # fmt: skip
        if record.get("tokenizer_auto_map"):
            tokenizer_config["auto_map"] = record["tokenizer_auto_map"]
        write_json(config_path, tokenizer_config)
    restore_original_tokenizer_files(folder, list(record.get(ADDED_TOKENS_RECORD) or []))
    if config_path.is_file() and record.get("tokenizer_class"):  # a -hf folder that --to hf made
        tokenizer_config = read_json(config_path, "tokenizer config")
        if "tokenizer_additional_special_tokens" in record:
            tokenizer_config["additional_special_tokens"] = record["tokenizer_additional_special_tokens"]
        if isinstance(record.get("tokenizer_added_tokens_decoder"), dict):
            tokenizer_config["added_tokens_decoder"] = record["tokenizer_added_tokens_decoder"]
        if "tokenizer_legacy" in record:
            tokenizer_config["legacy"] = record["tokenizer_legacy"]
        else:  # no key meant legacy mode for the original's slow LlamaTokenizer
            tokenizer_config.pop("legacy", None)
        write_json(config_path, tokenizer_config)


__all__ = ["copy_tokenizer_to_original", "original_config_for", "prepare_to_original"]
