"""`AutoImageProcessor` / `AutoVideoProcessor` on original OpenGVLab InternVL folders.

An original folder (config.json with `model_type: "internvl_chat"`) ships a `preprocessor_config.json` naming
`CLIPImageProcessor` (448 px resize + centre crop, ImageNet mean/std) that the original code never used: its
`load_image` tiles dynamically (`dynamic_preprocess` + `build_transform`). Read by transformers, that file yields an
untiled CLIP preprocessing, silently; a folder without it fails to load. The registries offer no hook for this
(transformers resolves the `image_processor_type` named in the file by name, before any registered mapping), so
`wrap_auto_processor_loaders` wraps the two factories' `from_pretrained`: for an InternVL folder whose
preprocessor files do not name this package's classes, it builds `InternVLChatImageProcessor` / `InternVLChatVideoProcessor`
with the tiling defaults of the folder (the processor config saved by `InternVLChatProcessor.save_pretrained` when
there is one, else config.json: `force_image_size`, `dynamic_image_size`, `max_dynamic_patch`, `min_dynamic_patch`,
`use_thumbnail`). A folder this package saved before the rename (`InternVLImageProcessor` /
`InternVLVideoProcessor` with this package's keys, see `legacy_folders`) loads from its saved settings, with or
without a config.json. Every other folder goes to transformers unchanged.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from transformers.utils import CONFIG_NAME, IMAGE_PROCESSOR_NAME, PROCESSOR_NAME, logging

from .legacy_folders import read_json_file
from .loading_options import HUB_KWARGS

logger = logging.get_logger(__name__)

ORIGINAL_MODEL_TYPE = "internvl_chat"
VIDEO_PROCESSOR_NAME = "video_preprocessor_config.json"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
# Keywords of the Auto factories themselves, not options of the processor.
_FACTORY_KWARGS = frozenset(
    ("use_fast", "backend", "trust_remote_code", "config", "_from_auto", "_from_pipeline", "code_revision")
)


def _build(kind: str, pretrained_model_name_or_path: Any, kwargs: dict[str, Any]) -> Any | None:
    """The InternVL image (`kind="image"`) or video processor of an InternVL folder, or None for other folders."""
    from .image_processing_internvl import InternVLChatImageProcessor
    from .legacy_folders import is_own_saved_config
    from .loading_options import (
        IMAGE_PROCESSOR_OPTIONS,
        VIDEO_PROCESSOR_OPTIONS,
        canonical_options,
        image_processor_kwargs_from_model_config,
        saved_type_names,
        video_processor_kwargs_from_model_config,
    )
    from .processing_internvl import _PROCESSOR_CLASS_NAMES
    from .video_processing_internvl import InternVLChatVideoProcessor

    if not isinstance(pretrained_model_name_or_path, (str, os.PathLike)):
        return None
    hub_kwargs = {key: kwargs[key] for key in HUB_KWARGS if kwargs.get(key) is not None}
    processor_class = InternVLChatImageProcessor if kind == "image" else InternVLChatVideoProcessor
    filename, type_key = (
        (IMAGE_PROCESSOR_NAME, "image_processor_type")
        if kind == "image"
        else (VIDEO_PROCESSOR_NAME, "video_processor_type")
    )
    saved = read_json_file(pretrained_model_name_or_path, filename, hub_kwargs) or {}
    if saved.get(type_key) == processor_class.__name__:
        return None  # saved by this package: transformers resolves the registered class
    model_config = read_json_file(pretrained_model_name_or_path, CONFIG_NAME, hub_kwargs)
    original_folder = bool(model_config) and model_config.get("model_type") == ORIGINAL_MODEL_TYPE
    # Saved by this package under the name before the rename (which transformers resolves to nothing, or to its own
    # InternVL video processor), with or without a config.json beside it: the saved settings, read here.
    legacy = is_own_saved_config(saved, type_key) or (
        original_folder and saved.get(type_key) in saved_type_names(processor_class)
    )
    if not original_folder and not legacy:
        return None
    if saved and not legacy:
        logger.info(
            f"{filename} of {pretrained_model_name_or_path} names {saved.get(type_key)!r}, which the original InternVL "
            f"code does not use; building {processor_class.__name__} from the folder's tiling settings instead."
        )
    processor_config = read_json_file(pretrained_model_name_or_path, PROCESSOR_NAME, hub_kwargs) or {}
    sub_config = processor_config.get(f"{kind}_processor")
    if legacy:
        init_kwargs = {key: value for key, value in saved.items() if key not in (type_key, "processor_class")}
    elif processor_config.get("processor_class") in _PROCESSOR_CLASS_NAMES and isinstance(sub_config, dict):
        init_kwargs = {key: value for key, value in sub_config.items() if key not in (type_key, "processor_class")}
    elif kind == "image":
        init_kwargs = image_processor_kwargs_from_model_config(model_config)
    else:
        init_kwargs = video_processor_kwargs_from_model_config(model_config)

    kwargs = {key: value for key, value in kwargs.items() if key not in HUB_KWARGS and key not in _FACTORY_KWARGS}
    return_unused_kwargs = kwargs.pop("return_unused_kwargs", False)
    options = canonical_options(kwargs, IMAGE_PROCESSOR_OPTIONS if kind == "image" else VIDEO_PROCESSOR_OPTIONS)
    init_kwargs.update(options)
    known = set(getattr(processor_class, "valid_kwargs", dict).__annotations__) | set(
        processor_class.__init__.__code__.co_varnames[1 : processor_class.__init__.__code__.co_argcount]
    )
    unknown = sorted(key for key in kwargs if key not in known)
    if unknown:
        raise TypeError(f"{processor_class.__name__} got unexpected keyword argument(s) {unknown}.")
    init_kwargs.update(kwargs)
    processor = processor_class(**init_kwargs)
    return (processor, {}) if return_unused_kwargs else processor


def _wrap(auto_class: type, kind: str) -> None:
    original = auto_class.__dict__["from_pretrained"].__func__
    if getattr(original, "_internvl_original_folders", False):
        return

    @functools.wraps(original)
    def from_pretrained(cls, pretrained_model_name_or_path, *inputs, **kwargs):
        processor = _build(kind, pretrained_model_name_or_path, kwargs)
        if processor is not None:
            return processor
        return original(cls, pretrained_model_name_or_path, *inputs, **kwargs)

    from_pretrained._internvl_original_folders = True
    auto_class.from_pretrained = classmethod(from_pretrained)


_OWN_TOKENIZER_CLASSES = frozenset(("InternLM2Tokenizer", "InternLM2TokenizerFast"))


def _names_own_tokenizer_class(pretrained_model_name_or_path: Any, kwargs: dict[str, Any]) -> bool:
    """Whether the folder's tokenizer_config.json names one of this package's tokenizer classes."""
    if not isinstance(pretrained_model_name_or_path, (str, os.PathLike)):
        return False
    hub_kwargs = {key: kwargs[key] for key in HUB_KWARGS if kwargs.get(key) is not None}
    config = read_json_file(pretrained_model_name_or_path, TOKENIZER_CONFIG_NAME, hub_kwargs, lenient=True)
    return bool(config) and config.get("tokenizer_class") in _OWN_TOKENIZER_CLASSES


def wrap_auto_tokenizer() -> None:
    """Make `AutoTokenizer.from_pretrained` on an original InternVL folder (config.json `model_type:
    "internvl_chat"`) return a sentencepiece `LlamaTokenizer` that encodes and decodes as the original's slow class
    (`llama_slow_tokenizer.as_original_tokenizer`), and with `trust_remote_code=True` this package's InternLM2
    tokenizer for a folder whose tokenizer_config.json names it (never its remote code); idempotent. Every other result
    is returned unchanged."""
    from transformers.models.auto.tokenization_auto import AutoTokenizer

    original = AutoTokenizer.__dict__["from_pretrained"].__func__
    if getattr(original, "_internvl_original_llama", False):
        return

    @functools.wraps(original)
    def from_pretrained(cls, pretrained_model_name_or_path, *inputs, **kwargs):
        if kwargs.get("trust_remote_code") and _names_own_tokenizer_class(pretrained_model_name_or_path, kwargs):
            # A standalone InternLM2 folder (config.json `model_type: "internlm2"`, as the internlm2-chat repos) whose
            # tokenizer_config.json names InternLM2Tokenizer and `auto_map`s its remote code: transformers would run
            # that code, because InternLM2Config is in its tokenizer mapping; this package's class is used instead,
            # as for every other factory (and for InternVL folders) with `trust_remote_code=True`.
            kwargs["trust_remote_code"] = False
        tokenizer = original(cls, pretrained_model_name_or_path, *inputs, **kwargs)
        if type(tokenizer).__name__ != "LlamaTokenizer" or not isinstance(
            pretrained_model_name_or_path, (str, os.PathLike)
        ):
            return tokenizer
        hub_kwargs = {key: kwargs[key] for key in HUB_KWARGS if kwargs.get(key) is not None}
        config = read_json_file(pretrained_model_name_or_path, CONFIG_NAME, hub_kwargs, lenient=True)
        if not config or config.get("model_type") != ORIGINAL_MODEL_TYPE:
            return tokenizer
        from ..llama_slow_tokenizer import as_original_tokenizer

        return as_original_tokenizer(tokenizer)

    from_pretrained._internvl_original_llama = True
    AutoTokenizer.from_pretrained = classmethod(from_pretrained)


def wrap_auto_processor_loaders() -> None:
    """Make `AutoImageProcessor.from_pretrained` / `AutoVideoProcessor.from_pretrained` build this package's
    processors for original InternVL folders (see the module docstring); idempotent.

    On such a folder, keyword arguments are the processor's options (tiling options also under the original names
    `max_num` / `min_num`); an unknown one raises `TypeError` instead of being stored on the processor.
    """
    from transformers.models.auto.image_processing_auto import AutoImageProcessor
    from transformers.models.auto.video_processing_auto import AutoVideoProcessor

    _wrap(AutoImageProcessor, "image")
    _wrap(AutoVideoProcessor, "video")
    wrap_auto_tokenizer()  # Phi-3 / Yi sentencepiece tokenizers of InternVL folders: the original's ids
    # `AutoProcessor` on an InternVL folder without a usable config raises instead of returning a bare tokenizer.
    from .auto_processor_checks import wrap_auto_processor

    wrap_auto_processor()


__all__ = ["wrap_auto_processor_loaders"]
