"""Loading of `InternVLChatProcessor`: its settings derived from an original `config.json`, and the routing of the
keyword arguments of `InternVLChatProcessor.from_pretrained` (and of the Auto image / video processor
factories on original folders) by name: tiling options under their original names to the image processor, video
options to the video processor, loading and tokenizer options to `AutoTokenizer`; anything else raises, so that no
option is silently stored in the tokenizer (and written to its tokenizer_config.json)."""

from __future__ import annotations

import inspect
import json
from typing import Any

from transformers.utils import CONFIG_NAME, PROCESSOR_NAME, cached_file, logging

from ..chat_templates import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER, get_jinja_chat_template

logger = logging.get_logger(__name__)

# `from_pretrained` keyword arguments that go to the image / video processor instead of the tokenizer: the original's
# option names (`dynamic_image_size`, `max_dynamic_patch`, `min_dynamic_patch`, `use_thumbnail`, and `max_num` /
# `min_num` of its `load_image` / `dynamic_preprocess`) and transformers' (`max_patches` / `min_patches` /
# `crop_to_patches`), each mapped
# to the image processor's parameter; `max_tiles` / `min_tiles` are `plan_tiles`' names.
IMAGE_PROCESSOR_OPTIONS = {
    "dynamic_image_size": "dynamic_image_size",
    "crop_to_patches": "dynamic_image_size",
    "max_dynamic_patch": "max_dynamic_patch",
    "max_num": "max_dynamic_patch",
    "max_patches": "max_dynamic_patch",
    "max_tiles": "max_dynamic_patch",
    "min_dynamic_patch": "min_dynamic_patch",
    "min_num": "min_dynamic_patch",
    "min_patches": "min_dynamic_patch",
    "min_tiles": "min_dynamic_patch",
    "use_thumbnail": "use_thumbnail",
    "max_total_tiles": "max_total_tiles",
}
VIDEO_PROCESSOR_OPTIONS = {"num_segments": "num_segments", "num_frames": "num_segments"}  # transformers' name
# Every name a saved image / video processor config may give the tile side under (`IMAGE_SIZE_ALIASES`, `size`).
_TILE_SIDE_NAMES = {name: "image_size" for name in ("image_size", "force_image_size", "input_size", "size")}
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
    """Route `InternVLChatProcessor.from_pretrained` keyword arguments.

    Returns `(tokenizer_kwargs, image_processor_options, video_processor_options)`:

    * tiling options under their original or transformers names (`dynamic_image_size`, `max_dynamic_patch` /
      `max_num` / `max_patches`, `min_dynamic_patch` / `min_num` / `min_patches`, `use_thumbnail`,
      `max_total_tiles`) become image-processor options under the image processor's names; `num_segments` (alias
      `num_frames`, transformers' name) a video-processor option;
    * processor init arguments (`template`, `video_frame_template`, ...) are left to the processor (`image_size` is
      also the image and video processors' tile side: `load_processor_parts`);
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
        logger.info(f"{processor_class.__name__} ignores the pipeline's model arguments {sorted(unknown)}.")
        unknown = []
    if unknown:
        raise TypeError(
            f"{processor_class.__name__}.from_pretrained got unexpected keyword argument(s) {sorted(unknown)}: they are neither "
            f"tiling options ({sorted(IMAGE_PROCESSOR_OPTIONS)}), video options ({sorted(VIDEO_PROCESSOR_OPTIONS)}), "
            f"processor arguments ({sorted(processor_names)}) nor options of the tokenizer."
        )
    return tokenizer_kwargs, image_options, video_options


__all__ = [
    "HUB_KWARGS",
    "IMAGE_PROCESSOR_OPTIONS",
    "VIDEO_PROCESSOR_OPTIONS",
    "canonical_options",
    "chat_template_for_load_options",
    "split_from_pretrained_kwargs",
]


# `InternVLChatProcessor.__init__` arguments its chat template is built from, with their defaults.
_CHAT_TEMPLATE_OPTIONS = {
    "template": "internvl2_5",
    "system_message": None,
    "image_placeholder": IMAGE_PLACEHOLDER,
    "video_placeholder": VIDEO_PLACEHOLDER,
}


def chat_template_for_load_options(processor_dict: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """`processor_dict` (a saved processor's, chat template read from its folder) for `from_pretrained(...,
    **kwargs)`: when `kwargs` set `template`, `system_message`, `image_placeholder` or `video_placeholder` (and no
    `chat_template`), the saved chat template is dropped, so that `InternVLChatProcessor.__init__` builds the one of
    the merged options, as on an original folder. A saved chat template that is not the one this package builds from
    the saved options (a custom one) is kept, with a warning that the options do not change it."""
    changed = [name for name in _CHAT_TEMPLATE_OPTIONS if name in kwargs]
    if not changed or "chat_template" in kwargs or processor_dict.get("chat_template") is None:
        return processor_dict
    saved = {name: processor_dict.get(name, default) for name, default in _CHAT_TEMPLATE_OPTIONS.items()}
    built = get_jinja_chat_template(
        saved["template"],
        saved["system_message"],
        image_placeholder=saved["image_placeholder"],
        video_placeholder=saved["video_placeholder"],
    )
    if processor_dict["chat_template"] != built:
        logger.warning(
            f"The processor folder has a custom chat template; the load-time option(s) {changed} do not change it "
            "(pass `chat_template=None` to build the template's own)."
        )
        return processor_dict
    return {**processor_dict, "chat_template": None}


def read_json(path: str | None) -> dict[str, Any] | None:
    if path is None:
        return None
    with open(path, encoding="utf-8") as reader:
        return json.load(reader)


def processor_kwargs_from_model_config(model_config: dict[str, Any]) -> dict[str, Any]:
    """`InternVLChatProcessor` init arguments from an original `config.json` dict (`model_type` `internvl_chat`)."""
    vision_config = model_config.get("vision_config") or {}
    image_size = model_config.get("force_image_size") or vision_config.get("image_size") or 448
    kwargs = {
        "template": model_config.get("template") or "internvl2_5",
        "image_size": int(image_size),
        "patch_size": int(vision_config.get("patch_size", 14)),
        "downsample_ratio": float(model_config.get("downsample_ratio", 0.5)),
    }
    if model_config.get("system_message") is not None:
        kwargs["system_message"] = model_config["system_message"]
    return kwargs


def image_processor_kwargs_from_model_config(model_config: dict[str, Any]) -> dict[str, Any]:
    """`InternVLChatImageProcessor` init arguments from an original `config.json` dict: `force_image_size` (or the
    vision config's `image_size`), `dynamic_image_size`, `max_dynamic_patch`, `min_dynamic_patch`, `use_thumbnail`
    (defaults: 448, True, 12, 1, True — the original chat examples' `load_image`)."""
    vision_config = model_config.get("vision_config") or {}
    image_size = int(model_config.get("force_image_size") or vision_config.get("image_size") or 448)

    def get(name: str, default: Any) -> Any:
        value = model_config.get(name)
        return default if value is None else value

    return {
        "image_size": image_size,
        "dynamic_image_size": bool(get("dynamic_image_size", True)),
        "min_dynamic_patch": int(get("min_dynamic_patch", 1)),
        "max_dynamic_patch": int(get("max_dynamic_patch", 12)),
        "use_thumbnail": bool(get("use_thumbnail", True)),
    }


def video_processor_kwargs_from_model_config(model_config: dict[str, Any]) -> dict[str, Any]:
    """`InternVLChatVideoProcessor` init arguments from an original `config.json` dict."""
    vision_config = model_config.get("vision_config") or {}
    image_size = int(model_config.get("force_image_size") or vision_config.get("image_size") or 448)
    return {"image_size": image_size}


def _construct(cls: type, kwargs: dict[str, Any]) -> Any:
    """Instantiate `cls` with the subset of `kwargs` its `__init__` names (all of them if it takes **kwargs)."""
    parameters = inspect.signature(cls.__init__).parameters
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()):
        accepted = kwargs
    else:
        accepted = {key: value for key, value in kwargs.items() if key in parameters}
    ignored = sorted(set(kwargs) - set(accepted))
    if ignored:
        logger.info(f"{cls.__name__} does not take {ignored}; using its defaults for them.")
    return cls(**accepted)


def saved_type_names(processor_class: type) -> tuple[str, str]:
    """The `image_processor_type` / `video_processor_type` values that name `processor_class` in a saved config: its
    name (`InternVLChatImageProcessor`, `InternVLChatVideoProcessor`) and the name before the rename (without `Chat`)."""
    return processor_class.__name__, processor_class.__name__.replace("InternVLChat", "InternVL", 1)


def image_processor_class() -> type:
    from .image_processing_internvl import InternVLChatImageProcessor

    return InternVLChatImageProcessor


def video_processor_class() -> type:
    from .video_processing_internvl import InternVLChatVideoProcessor

    return InternVLChatVideoProcessor


def load_model_config(pretrained_model_name_or_path, **hub_kwargs) -> dict[str, Any] | None:
    config_file = cached_file(
        pretrained_model_name_or_path,
        CONFIG_NAME,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
        **hub_kwargs,
    )
    return read_json(config_file)


def load_processor_parts(
    cls: type, pretrained_model_name_or_path: Any, processor_dict: dict[str, Any], kwargs: dict[str, Any]
) -> list[Any]:
    """`[image_processor, tokenizer, video_processor]` of `InternVLChatProcessor.from_pretrained` (see its
    `_get_arguments_from_pretrained`): the tokenizer tokenizer_config.json names, and this package's image and video
    processors from the saved processor config, with the `from_pretrained` options routed by name."""
    from .tokenizer_loading import load_tokenizer

    tokenizer_kwargs, image_options, video_options = split_from_pretrained_kwargs(
        cls, pretrained_model_name_or_path, kwargs
    )
    tokenizer_kwargs.setdefault("padding_side", "left")
    # Left padding: InternVL generates (the original batch_chat sets it too), and pipelines collate batches with
    # the tokenizer's own padding side.
    # The class tokenizer_config.json names, with its vocabulary (Phi-3 folders: LlamaTokenizer + tokenizer.model);
    # `load_tokenizer` raises rather than fall back to another class or an empty vocabulary.
    tokenizer = load_tokenizer(pretrained_model_name_or_path, **tokenizer_kwargs)

    if kwargs.get("image_size") is not None:
        # The processor's tile side (`from_pretrained(..., image_size=224)`) is its image and video processors' too,
        # as for the default sub-processors of `InternVLChatProcessor(image_size=224)`: tiles of another side would be
        # refused at every call.
        image_options["image_size"] = video_options["image_size"] = kwargs["image_size"]
    sub_processors = []
    for name, factory, options in (
        ("image_processor", image_processor_class, image_options),
        ("video_processor", video_processor_class, video_options),
    ):
        sub_processor_class = factory()
        config = dict(processor_dict.get(name) or {})
        # `from_pretrained(..., max_dynamic_patch=6)` and the like set the sub-processor's default; an option
        # given under another name replaces the saved value under every name.
        for key, value in options.items():
            for alias, canonical in {**IMAGE_PROCESSOR_OPTIONS, **VIDEO_PROCESSOR_OPTIONS, **_TILE_SIDE_NAMES}.items():
                if canonical == key:
                    config.pop(alias, None)
            config[key] = value
        type_key = f"{name}_type"
        saved_type = config.pop(type_key, None)
        if saved_type is not None and saved_type not in saved_type_names(sub_processor_class):
            raise ValueError(
                f"The saved {name} is a {saved_type}; InternVLChatProcessor needs {sub_processor_class.__name__}."
            )
        config.pop("processor_class", None)
        if saved_type is not None and hasattr(sub_processor_class, "from_dict"):
            sub_processors.append(sub_processor_class.from_dict(config))
        else:
            sub_processors.append(_construct(sub_processor_class, config))
    image_processor, video_processor = sub_processors
    return [image_processor, tokenizer, video_processor]


def processor_dict_from_model_config(
    pretrained_model_name_or_path: Any, processor_dict: dict[str, Any], hub_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The processor settings of an original OpenGVLab folder (no InternVL processor_config.json), from its
    `config.json`: template, system message, tile size, tiling settings. Raises `OSError` without a config.json."""
    model_config = load_model_config(pretrained_model_name_or_path, **hub_kwargs)
    if model_config is None:
        raise OSError(
            f"{pretrained_model_name_or_path} has neither an InternVL {PROCESSOR_NAME} nor a {CONFIG_NAME}: "
            f"cannot derive the processor settings."
        )
    if "chat_template" in processor_dict:
        logger.info(
            "Ignoring the chat template files of an original-layout checkpoint; the template is built from the "
            "config's conversation template."
        )
    processor_dict = dict(processor_kwargs_from_model_config(model_config))
    processor_dict["image_processor"] = image_processor_kwargs_from_model_config(model_config)
    processor_dict["video_processor"] = video_processor_kwargs_from_model_config(model_config)
    return processor_dict
