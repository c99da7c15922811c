"""Everything but the tensors: config.json, tokenizer, processor and generation config of each layout.

`prepare_to_hf` / `original_layout.prepare_to_original` read the source configuration, refuse what the target layout
cannot express exactly, and return a `Prepared` object that checks the converted tensor names against the target
model and writes the non-weight files into the output folder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging

from ..chat_templates import (
    IMAGE_CONTEXT_TOKEN,
    IMAGE_END_TOKEN,
    IMAGE_START_TOKEN,
    VIDEO_PLACEHOLDER,
    get_jinja_chat_template,
)
from ..modeling.tokenizer_files import (
    llm_generation_ids,
    template_stop_token_id,
    with_stop_token,
)
from .checkpoint_io import ConversionError, read_json, write_json
from .hf_layout import (
    ORIGINAL_RECORD_KEY,
    LlmHeads,
    normalize_hf_key,
    recorded_fields,
    vision_config_to_hf,
)
from .image_token_id import source_image_token_id
from .remote_code import carry_remote_code, record_auto_map
from .tokenizer_io import ADDED_TOKENS_RECORD, load_source_tokenizers

logger = logging.get_logger(__name__)

# Record key (under `ORIGINAL_RECORD_KEY`): the original source of a `-hf` folder tied its LM head (no head tensor).
TIED_RECORD = "tie_word_embeddings"

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
)
# Strings whose ids the converted tokenizer must reproduce (special tokens, spaces, CJK, digits, bytes).
TOKENIZER_CHECK_STRINGS = (
    "Hello world! How are you?",
    "<|im_start|>user\n<img><IMG_CONTEXT><IMG_CONTEXT></img>\nDescribe the image.<|im_end|>\n",
    "  leading spaces,\ttabs and\n\nnewlines  ",
    "中文和English混合, 数字 12345 and émojis 🙂",
    "def f(x):\n    return x ** 2  # code",
    "<|user|>\n  two spaces</img> after<|end|>\n",  # text after added tokens (sentencepiece's legacy dummy prefix)
)


@dataclass
class Prepared:
    """Result of the configuration step: the LLM head layout for the InternLM2 transform (or `None`), the expected
    output tensor names, and a function writing config / tokenizer / processor files into a folder."""

    internlm2_heads: LlmHeads | None
    expected_tensors: set[str]
    write_side_files: Callable[[Path], None]
    expected_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # `--to original` of a tied `-hf` model: the original LM head tensor to write as a copy of the embeddings.
    head_from_embeddings: str | None = None

    def check_tensors(self, produced: set[str]) -> None:
        missing = sorted(self.expected_tensors - produced)
        unexpected = sorted(produced - self.expected_tensors)
        if missing:
            raise ConversionError(f"the checkpoint lacks {len(missing)} tensor(s) the model needs, e.g. {missing[0]!r}")
        if unexpected:
            raise ConversionError(
                f"the checkpoint has {len(unexpected)} tensor(s) the model does not use, e.g. {unexpected[0]!r}"
            )


def _heads(text_config: Any) -> LlmHeads:
    num_heads = text_config.num_attention_heads
    return LlmHeads(num_heads, text_config.num_key_value_heads or num_heads, text_config.hidden_size // num_heads)


def _dtype_name(dtype: torch.dtype | None, fallback: Any) -> str | None:
    if dtype is not None:
        return str(dtype).removeprefix("torch.")
    return str(fallback).removeprefix("torch.") if fallback is not None else None


def _meta_state_shapes(model_class: type, config: Any) -> dict[str, tuple[int, ...]]:
    """`{name: shape}` of the tensors `model_class(config).save_pretrained` writes: the module tree's names with the
    class's own save-time conversions applied (e.g. Qwen3-MoE's fused experts are saved per expert, as its
    checkpoints are)."""
    from transformers.core_model_loading import revert_weight_conversion

    with torch.device("meta"):
        model = model_class(config)
    return {name: tuple(tensor.shape) for name, tensor in revert_weight_conversion(model, model.state_dict()).items()}


# ---------------------------------------------------------------------------------------------------------------------
# original -> -hf
# ---------------------------------------------------------------------------------------------------------------------


def _load_original_config(source: Path) -> Any:
    from ..modeling.configuration_internvl import InternVLChatConfig as OriginalConfig

    try:
        return OriginalConfig.from_pretrained(source)
    except (ValueError, TypeError, KeyError) as error:
        raise ConversionError(f"cannot read {source / 'config.json'}: {error}") from None


def hf_config_for(
    original: Any,
    original_dict: dict[str, Any],
    image_token_id: int,
    dtype: torch.dtype | None,
    separate_head: bool = False,
) -> Any:
    """`transformers.InternVLConfig` (model_type "internvl") of an original config, with the original-only fields
    recorded under `ORIGINAL_RECORD_KEY`. `separate_head`: the checkpoint holds its own LM head tensor, which the
    model uses whatever `tie_word_embeddings` says (the original forces it to false; this package's loader, like
    transformers, does not tie a head stored with other values), so the `-hf` config says false.
    Raises `ConversionError` for what `-hf` cannot express exactly."""
    from transformers import AutoConfig
    from transformers import InternVLConfig as HfConfig
    from transformers import InternVLVisionConfig as HfVisionConfig

    from .internlm2_llama import internlm2_config_to_llama

    if original.ps_version != "v2":
        raise ConversionError(
            f"ps_version {original.ps_version!r} has no -hf equivalent: transformers' InternVL port implements only "
            "the v2 pixel shuffle, and v1 orders the image tokens differently (a reordering of the LLM sequence that "
            "no weight change can reproduce)"
        )
    vision = original_dict["vision_config"]
    if original.vision_image_size != vision["image_size"]:
        raise ConversionError(
            f"force_image_size {original.force_image_size} differs from vision_config.image_size {vision['image_size']}"
            "; converting checkpoints that resize the position embedding is not supported"
        )
    try:
        hf_vision = HfVisionConfig(**vision_config_to_hf(vision))
    except ValueError as error:
        raise ConversionError(str(error)) from None

    text = original.text_config
    if text.model_type == "internlm2":
        text_config = internlm2_config_to_llama(text)
    else:
        text_dict = text.to_dict()
        text_dict.pop("model_type", None)
        text_config = AutoConfig.for_model(text.model_type, **text_dict)
    tie = bool(original.tie_word_embeddings) and not separate_head
    if original.tie_word_embeddings and separate_head:
        logger.warning("config.json says tie_word_embeddings: true but the checkpoint has its own LM head, which the "
                       "original uses (it never ties); the -hf config says false and keeps that head")  # fmt: skip
    text_config.tie_word_embeddings = tie
    text_config.architectures = None
    side = original.vision_image_size // original.vision_config.patch_size
    config = HfConfig(
        vision_config=hf_vision,
        text_config=text_config,
        image_token_id=int(image_token_id),
        image_seq_length=int(side * side * original.downsample_ratio**2),
        downsample_ratio=original.downsample_ratio,
        projector_hidden_act="gelu",
        vision_feature_layer=original.select_layer,
        vision_feature_select_strategy="default",
        tie_word_embeddings=tie,  # transformers' port ties when this is unset
        architectures=["InternVLForConditionalGeneration"],
    )
    dtype_name = _dtype_name(dtype, original_dict.get("torch_dtype") or original_dict.get("dtype"))
    if dtype_name:
        config.dtype = dtype_name
    setattr(config, ORIGINAL_RECORD_KEY, recorded_fields(original_dict))
    return config


def _record_tokenizer_class(source: Path, hf_config: Any) -> None:
    """Keep the source tokenizer's class, `auto_map`, `additional_special_tokens`, `legacy` and `added_tokens_decoder`
    in the record, for `--to original` to restore (transformers 5 rewrites the special-token list and drops `legacy`
    and `added_tokens_decoder`)."""
    if not (source / "tokenizer_config.json").is_file():
        return
    tokenizer_config = read_json(source / "tokenizer_config.json", "tokenizer config")
    record = getattr(hf_config, ORIGINAL_RECORD_KEY)
    for name, recorded in (
        ("tokenizer_class", "tokenizer_class"),
        ("auto_map", "tokenizer_auto_map"),
        ("additional_special_tokens", "tokenizer_additional_special_tokens"),
        ("legacy", "tokenizer_legacy"),  # the slow LlamaTokenizer's mode (no key: legacy)
        # the added tokens the original's slow class reads (without the key it reads tokenizer.json's, which lists a
        # sentencepiece model's user-defined pieces once transformers 5 has written it: `tokenizer_io`)
        ("added_tokens_decoder", "tokenizer_added_tokens_decoder"),
    ):
        if tokenizer_config.get(name) is not None:
            record[recorded] = tokenizer_config[name]


def prepare_to_hf(
    source: Path,
    config: dict[str, Any],
    image_token_id: int | None,
    dtype: torch.dtype | None,
    tensor_names: set[str] | frozenset[str] = frozenset(),
):
    from transformers import InternVLForConditionalGeneration as HfModel

    from ..modeling.llm_resolution import language_model_head

    original = _load_original_config(source)
    token_id = source_image_token_id(source, original, image_token_id)
    head_key = f"language_model.{language_model_head(original.text_config).head_name}.weight"
    hf_config = hf_config_for(original, config, token_id, dtype, separate_head=head_key in tensor_names)
    _record_tokenizer_class(source, hf_config)
    record_auto_map(config, getattr(hf_config, ORIGINAL_RECORD_KEY))
    internlm2 = original.text_config.model_type == "internlm2"
    shapes = {normalize_hf_key(name): shape for name, shape in _meta_state_shapes(HfModel, hf_config).items()}
    if hf_config.tie_word_embeddings:
        shapes.pop("language_model.lm_head.weight", None)
    expected = set(shapes)
    # Loaded (and checked) before any tensor is written: a broken tokenizer file fails at once.
    has_tokenizer = any((source / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "vocab.json"))
    tokenizers = load_source_tokenizers(source) if has_tokenizer else None
    if tokenizers and tokenizers[2]:
        getattr(hf_config, ORIGINAL_RECORD_KEY)[ADDED_TOKENS_RECORD] = tokenizers[2]  # removed by --to original
    if hf_config.tie_word_embeddings:  # a tied source without a head tensor: --to original keeps it so
        getattr(hf_config, ORIGINAL_RECORD_KEY)[TIED_RECORD] = True

    def write(folder: Path) -> None:
        hf_config.save_pretrained(folder)
        write_hf_side_files(source, folder, original, config, hf_config, tokenizers)
        carry_remote_code(source, folder)  # for --to original (transformers' port never reads it)

    return Prepared(_heads(original.text_config) if internlm2 else None, expected, write, shapes)


def write_hf_side_files(
    source: Path, folder: Path, original: Any, original_dict: dict, hf_config: Any, tokenizers: tuple | None = None
) -> None:
    """Tokenizer (fast, checked id-for-id against the source tokenizer; `tokenizers`: what
    `tokenizer_io.load_source_tokenizers` gave, loaded here when not given), image / video processor, processor
    config, chat template and generation config of the `-hf` layout."""
    template = original_dict.get("template") or "internvl2_5"
    chat_template = get_jinja_chat_template(
        template,
        original_dict.get("system_message"),
        image_placeholder=IMAGE_CONTEXT_TOKEN,  # transformers' InternVLProcessor expands <IMG_CONTEXT> placeholders
        video_placeholder=VIDEO_PLACEHOLDER,
    )
    has_tokenizer = any((source / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "vocab.json"))
    if has_tokenizer:
        converted = write_hf_tokenizer(
            source,
            folder,
            chat_template,
            hf_config.text_config.vocab_size,
            tokenizers or load_source_tokenizers(source),
        )
        chat_template = converted.chat_template  # sentencepiece_llama may have put "▁" before it
    write_image_processor(folder, original, original_dict)
    if has_tokenizer:
        write_json(folder / "processor_config.json", {
            "processor_class": "InternVLProcessor",
            "image_seq_length": hf_config.image_seq_length,
        })  # fmt: skip
        (folder / "chat_template.jinja").write_text(chat_template, encoding="utf-8")
    else:
        logger.warning(f"{source} has no tokenizer files; the -hf folder gets no tokenizer and no processor config.")
    write_generation_config(source, folder, original.text_config, template_stop_token_id(source, template))


def write_image_processor(folder: Path, original: Any, original_dict: dict[str, Any]) -> None:
    """`preprocessor_config.json` for transformers' `GotOcr2ImageProcessor` with the original's tiling settings, and
    `video_preprocessor_config.json` (one 448 px tile per frame)."""
    dynamic = bool(original_dict.get("dynamic_image_size", True))
    if dynamic and not original_dict.get("use_thumbnail", True):
        raise ConversionError(
            "use_thumbnail is false with dynamic_image_size: transformers' GotOcr2ImageProcessor always adds a "
            "thumbnail to multi-tile images, so this tiling has no -hf equivalent"
        )
    size = {"height": original.vision_image_size, "width": original.vision_image_size}
    common = {
        "do_resize": True,
        "size": size,
        "resample": 3,  # bicubic, as the original's torchvision Resize on PIL images
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": IMAGENET_MEAN,
        "image_std": IMAGENET_STD,
        "do_convert_rgb": True,
    }
    write_json(folder / "preprocessor_config.json", {
        **common,
        "image_processor_type": "GotOcr2ImageProcessor",
        "crop_to_patches": dynamic,
        "min_patches": int(original_dict.get("min_dynamic_patch", 1)) if dynamic else 1,
        "max_patches": int(original_dict.get("max_dynamic_patch", 12)) if dynamic else 1,
        "processor_class": "InternVLProcessor",
    })  # fmt: skip
    write_json(folder / "video_preprocessor_config.json", {
        **common,
        "video_processor_type": "InternVLVideoProcessor",
        "do_sample_frames": False,
        "processor_class": "InternVLProcessor",
    })  # fmt: skip


def write_hf_tokenizer(source: Path, folder: Path, chat_template: str, vocab_size: int, tokenizers: tuple) -> Any:
    """Save the source tokenizer as a fast `tokenizer.json` readable by plain transformers, with the InternVL image
    tokens named in `extra_special_tokens`; check its ids against the source tokenizer's (for InternLM2 the
    sentencepiece `InternLM2Tokenizer`, which reproduces the original slow tokenizer). `tokenizers`: the source's,
    from `tokenizer_io.load_source_tokenizers`. Returns the converted tokenizer; its `chat_template` is the one to
    write (`sentencepiece_llama.non_legacy_chat_template`)."""
    from transformers import AutoTokenizer

    from ..llama_slow_tokenization import slow_llama_mode
    from ..processing.tokenization_internlm2_fast import InternLM2TokenizerFast
    from .sentencepiece_decoding import check_decoding, write_slow_decoding
    from .sentencepiece_llama import (
        check_ids,
        copy_sentencepiece_model,
        non_legacy_chat_template,
        write_legacy_pipeline,
        write_non_legacy_pipeline,
    )

    tokenizer, reference, _ = tokenizers
    internlm2 = isinstance(tokenizer, InternLM2TokenizerFast)
    for token in (IMAGE_START_TOKEN, IMAGE_END_TOKEN, IMAGE_CONTEXT_TOKEN):
        if tokenizer.convert_tokens_to_ids(token) in (None, tokenizer.unk_token_id):
            raise ConversionError(f"the tokenizer of {source} has no {token} token")
    if len(tokenizer) > vocab_size:
        logger.warning(
            f"{VIDEO_PLACEHOLDER} (added for transformers' processor) has id {len(tokenizer) - 1}, outside the "
            f"model's vocabulary ({vocab_size}); videos cannot be used with this -hf folder"
        )
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(folder)
    copy_sentencepiece_model(source, folder)  # for --to original: the original's slow tokenizer needs it
    config_path = folder / "tokenizer_config.json"
    tokenizer_config = read_json(config_path, "tokenizer config")
    tokenizer_config.pop("auto_map", None)
    # transformers 5 does not write `legacy` back; without it a sentencepiece LlamaTokenizer (Phi-3, Yi) reads as
    # legacy in transformers 4 (the original, after `--to original`) and as `legacy: false` in transformers 5
    source_file = source / "tokenizer_config.json"
    source_config = read_json(source_file, "tokenizer config") if source_file.is_file() else {}
    if "legacy" in source_config:
        tokenizer_config["legacy"] = source_config["legacy"]
    if internlm2:
        # Plain transformers has no InternLM2 tokenizer class; tokenizer.json carries the whole pipeline.
        tokenizer_config["tokenizer_class"] = "TokenizersBackend"
        for name in ("decode_with_prefix_space", "vocab_file"):
            tokenizer_config.pop(name, None)
    write_json(config_path, tokenizer_config)
    slow_mode = slow_llama_mode(reference)  # a sentencepiece LlamaTokenizer: the original's slow class's ids
    slow_decoding = False
    if slow_mode is not None:  # the slow class's pipeline (legacy) or transformers 5's (non-legacy), kept as written
        (write_legacy_pipeline if slow_mode == "legacy" else write_non_legacy_pipeline)(folder)
        slow_decoding = write_slow_decoding(folder, reference, tokenizers[2])  # and the slow class's decoding

    converted = AutoTokenizer.from_pretrained(folder)
    if type(converted).__module__.startswith("transformers_internvl"):
        raise ConversionError(f"the converted tokenizer loads as {type(converted).__name__}, a class of this package")
    check_ids(reference, converted, TOKENIZER_CHECK_STRINGS, slow_mode)
    if slow_decoding:
        check_decoding(reference, converted, TOKENIZER_CHECK_STRINGS)
    if slow_mode == "non_legacy":
        converted.chat_template = non_legacy_chat_template(reference, converted, chat_template)
    return converted


def write_generation_config(source: Path, folder: Path, text_config: Any, stop_token_id: int | None) -> None:
    """The source's generation config with the ids this package's loader gives plain `generate` on the source
    (`modeling.checkpoint_loading.llm_generation_defaults`, `modeling.tokenizer_files.apply_tokenizer_file_ids`):
    eos / pad / bos the file leaves unset come from `llm_config`, as the original's `generate` takes them, and the
    chat stop token (`<|im_end|>` for `internvl2_5`, what the original `chat()` passes as `eos_token_id`) is added to
    `eos_token_id`; the -hf model reads them from this file only."""
    generation = {}
    if (source / "generation_config.json").is_file():
        generation = read_json(source / "generation_config.json", "generation config")
    generation.pop("transformers_version", None)
    generation.update(llm_generation_ids(text_config, generation.get))
    eos_token_id = with_stop_token(generation.get("eos_token_id"), stop_token_id)
    if eos_token_id is not None:
        generation["eos_token_id"] = eos_token_id
    write_json(folder / "generation_config.json", generation)


__all__ = ["TOKENIZER_FILES", "Prepared", "hf_config_for", "prepare_to_hf"]
