"""Routing of the keyword arguments of `InternVLProcessor.from_pretrained` (and of the Auto image / video processor
factories on original folders) by name: tiling options under their original names to the image processor, video
options to the video processor, loading and tokenizer options to `AutoTokenizer`; anything else raises, so that no
option is silently stored in the tokenizer (and written to its tokenizer_config.json)."""

from __future__ import annotations

import inspect
from typing import Any

from transformers.utils import logging

logger = logging.get_logger(__name__)

# `from_pretrained` keyword arguments that go to the image / video processor instead of the tokenizer: the original's
# option names (`dynamic_image_size`, `max_dynamic_patch`, `min_dynamic_patch`, `use_thumbnail`, and `max_num` /
# `min_num` of its `load_image` / `dynamic_preprocess`) and transformers' (`max_patches` / `min_patches`), each mapped
# to the image processor's parameter.
IMAGE_PROCESSOR_OPTIONS = {
    "dynamic_image_size": "dynamic_image_size",
    "max_dynamic_patch": "max_dynamic_patch",
    "max_num": "max_dynamic_patch",
    "max_patches": "max_dynamic_patch",
    "min_dynamic_patch": "min_dynamic_patch",
    "min_num": "min_dynamic_patch",
    "min_patches": "min_dynamic_patch",
    "use_thumbnail": "use_thumbnail",
    "max_total_tiles": "max_total_tiles",
}
VIDEO_PROCESSOR_OPTIONS = {"num_segments": "num_segments"}
HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")
# Keyword arguments of the loading machinery (AutoProcessor / AutoTokenizer), forwarded to the tokenizer.
_LOADING_KWARGS = frozenset(
    (*HUB_KWARGS, "trust_remote_code", "use_fast", "tokenizer_type", "gguf_file", "_from_auto", "_from_pipeline")
    + ("_commit_hash", "return_unused_kwargs", "use_auth_token", "code_revision")
)
# Options every transformers tokenizer takes (PreTrainedTokenizerBase and its special tokens).
_TOKENIZER_BASE_OPTIONS = frozenset(
    (
        "model_max_length",
        "padding_side",
        "truncation_side",
        "model_input_names",
        "clean_up_tokenization_spaces",
        "split_special_tokens",
        "extra_special_tokens",
        "additional_special_tokens",
        "bos_token",
        "eos_token",
        "unk_token",
        "sep_token",
        "pad_token",
        "cls_token",
        "mask_token",
        "add_bos_token",
        "add_eos_token",
        "add_prefix_space",
        "legacy",
    )
)


def canonical_options(kwargs: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """`{canonical name: value}` of the options in `kwargs` (popped); two names of one option must agree."""
    options: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for name in [key for key in kwargs if key in names]:
        value = kwargs.pop(name)
        canonical = names[name]
        if canonical in options and options[canonical] != value:
            raise ValueError(
                f"`{given_as[canonical]}={options[canonical]!r}` and `{name}={value!r}` set the same option "
                f"`{canonical}` to different values."
            )
        options[canonical] = value
        given_as[canonical] = name
    return options


def _tokenizer_parameter_names(pretrained_model_name_or_path, hub_kwargs: dict[str, Any]) -> set[str]:
    """Parameters named by the `__init__` of the tokenizer class the folder's tokenizer_config.json declares (and
    its bases); empty when the class cannot be resolved."""
    from transformers.models.auto.tokenization_auto import get_tokenizer_config, tokenizer_class_from_name

    tokenizer_config = get_tokenizer_config(pretrained_model_name_or_path, **hub_kwargs)
    class_name = tokenizer_config.get("tokenizer_class")
    if not class_name:
        return set()
    names: set[str] = set()
    for candidate in (class_name, class_name.removesuffix("Fast") + "Fast", class_name.removesuffix("Fast")):
        tokenizer_class = tokenizer_class_from_name(candidate)
        if tokenizer_class is None:
            continue
        for klass in tokenizer_class.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None:
                continue
            for parameter in inspect.signature(init).parameters.values():
                if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
                    names.add(parameter.name)
    names.discard("self")
    return names


def split_from_pretrained_kwargs(
    processor_class: type, pretrained_model_name_or_path, kwargs: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Route `InternVLProcessor.from_pretrained` keyword arguments.

    Returns `(tokenizer_kwargs, image_processor_options, video_processor_options)`:

    * tiling options under their original or transformers names (`dynamic_image_size`, `max_dynamic_patch` /
      `max_num` / `max_patches`, `min_dynamic_patch` / `min_num` / `min_patches`, `use_thumbnail`,
      `max_total_tiles`) become image-processor options under the image processor's names; `num_segments` a
      video-processor option;
    * processor init arguments (`template`, `video_frame_template`, ...) are left to the processor;
    * loading options (`cache_dir`, `revision`, `trust_remote_code`, ...), the options every tokenizer takes
      (`model_max_length`, `padding_side`, special tokens, ...) and the parameters the folder's tokenizer class names
      go to `AutoTokenizer.from_pretrained`.

    Any other keyword argument raises, except when `pipeline(...)` loads the processor (`_from_pipeline` set): the
    pipeline forwards the model's own arguments (`dtype`, `device_map`, ...) to every loader, so they are ignored.

    Raises:
        TypeError: any other keyword argument: it would otherwise end up, unused, in the tokenizer's
            `init_kwargs` and its saved tokenizer_config.json.
        ValueError: two names of one option given with different values.
    """
    kwargs = dict(kwargs)
    image_options = canonical_options(kwargs, IMAGE_PROCESSOR_OPTIONS)
    video_options = canonical_options(kwargs, VIDEO_PROCESSOR_OPTIONS)
    init = processor_class.__init__.__code__
    processor_names = set(init.co_varnames[1 : init.co_argcount])
    tokenizer_kwargs = {}
    unknown = []
    for key, value in kwargs.items():
        if key in processor_names:
            continue
        if key in _LOADING_KWARGS or key in _TOKENIZER_BASE_OPTIONS:
            tokenizer_kwargs[key] = value
        else:
            unknown.append(key)
    if unknown:
        hub_kwargs = {key: kwargs[key] for key in HUB_KWARGS if key in kwargs}
        tokenizer_names = _tokenizer_parameter_names(pretrained_model_name_or_path, hub_kwargs)
        for key in [key for key in unknown if key in tokenizer_names]:
            tokenizer_kwargs[key] = kwargs[key]
            unknown.remove(key)
    if unknown and kwargs.get("_from_pipeline"):
        # `pipeline(...)` forwards the model's keyword arguments (`dtype`, `device_map`, ...) to every loader.
        logger.info(f"InternVLProcessor ignores the pipeline's model arguments {sorted(unknown)}.")
        unknown = []
    if unknown:
        raise TypeError(
            f"InternVLProcessor.from_pretrained got unexpected keyword argument(s) {sorted(unknown)}: they are neither "
            f"tiling options ({sorted(IMAGE_PROCESSOR_OPTIONS)}), video options ({sorted(VIDEO_PROCESSOR_OPTIONS)}), "
            f"processor arguments ({sorted(processor_names)}) nor options of the tokenizer."
        )
    return tokenizer_kwargs, image_options, video_options


__all__ = [
    "HUB_KWARGS",
    "IMAGE_PROCESSOR_OPTIONS",
    "VIDEO_PROCESSOR_OPTIONS",
    "canonical_options",
    "split_from_pretrained_kwargs",
]
