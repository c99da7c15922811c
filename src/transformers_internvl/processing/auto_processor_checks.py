"""`AutoProcessor.from_pretrained` on InternVL folders that cannot give an InternVL processor (issue 12).

transformers' `AutoProcessor` falls back to `AutoTokenizer` when it finds no processor config and cannot load the
model config (a missing `config.json`, one without `model_type`, or one `AutoConfig` refuses, e.g. without
`llm_config`): on an InternVL folder that returns a bare tokenizer, which drops every image without a word.
`wrap_auto_processor` makes that an error naming the cause; folders of other models are untouched.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

from transformers.utils import CONFIG_NAME, cached_file

from ..chat_templates import IMAGE_CONTEXT_TOKEN
from .legacy_folders import is_legacy_processor_folder
from .loading_options import HUB_KWARGS

__all__ = ["check_auto_processor_result", "wrap_auto_processor"]

ORIGINAL_MODEL_TYPE = "internvl_chat"


def _model_config(pretrained_model_name_or_path: Any, hub_kwargs: dict[str, Any]) -> tuple[bool, Any]:
    """(whether config.json exists, its parsed content or None when it is not valid JSON)."""
    path = cached_file(
        pretrained_model_name_or_path,
        CONFIG_NAME,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
        **hub_kwargs,
    )
    if path is None:
        return False, None
    try:
        with open(path, encoding="utf-8") as reader:
            return True, json.load(reader)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return True, None


def _has_image_tokens(tokenizer: Any) -> bool:
    convert = getattr(tokenizer, "convert_tokens_to_ids", None)
    if convert is None:
        return False
    token_id = convert(IMAGE_CONTEXT_TOKEN)
    return token_id is not None and token_id != getattr(tokenizer, "unk_token_id", None)


def check_auto_processor_result(pretrained_model_name_or_path: Any, result: Any, kwargs: dict[str, Any]) -> None:
    """Raise when `AutoProcessor` returned something other than a processor for an InternVL folder.

    An InternVL folder is one whose config.json says `model_type: "internvl_chat"`, or whose tokenizer knows
    `<IMG_CONTEXT>` while config.json is missing, not JSON, or has no `model_type`.

    Raises:
        ValueError: config.json is an InternVL config that `AutoConfig` refuses (the cause is chained and quoted).
        OSError: config.json is missing, unreadable or has no `model_type`.
    """
    from transformers import AutoConfig
    from transformers.processing_utils import ProcessorMixin

    if isinstance(result, ProcessorMixin) or not isinstance(pretrained_model_name_or_path, (str, os.PathLike)):
        return
    hub_kwargs = {key: kwargs[key] for key in HUB_KWARGS if kwargs.get(key) is not None}
    exists, config = _model_config(pretrained_model_name_or_path, hub_kwargs)
    model_type = config.get("model_type") if isinstance(config, dict) else None
    what = type(result).__name__
    if model_type == ORIGINAL_MODEL_TYPE:
        try:
            AutoConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        except (ValueError, TypeError, OSError, KeyError) as error:
            raise ValueError(
                f"{pretrained_model_name_or_path}: its {CONFIG_NAME} is an InternVL config that cannot be loaded "
                f"({error}); AutoProcessor would have returned a bare {what} that drops images."
            ) from error
        raise OSError(
            f"{pretrained_model_name_or_path}: AutoProcessor built a {what} instead of the InternVL processor for an "
            f"InternVL folder; images would be dropped."
        )
    if model_type is not None or not _has_image_tokens(result):
        return  # another model's folder, or no InternVL tokenizer: transformers' result stands
    if not exists:
        cause = f"has no {CONFIG_NAME} (nor processor_config.json)"
    elif config is None:
        cause = f"has a {CONFIG_NAME} that is not valid JSON"
    else:
        cause = f"has a {CONFIG_NAME} without `model_type` (expected {ORIGINAL_MODEL_TYPE!r})"
    raise OSError(
        f"{pretrained_model_name_or_path} holds an InternVL tokenizer (it knows {IMAGE_CONTEXT_TOKEN}) but {cause}, so "
        f"AutoProcessor can only build a bare {what}, which drops images. Add the checkpoint's original "
        f"{CONFIG_NAME}, or load the tokenizer with AutoTokenizer if only text is intended."
    )


# Files AutoProcessor reads as JSON objects; a damaged one surfaced as a bare `JSONDecodeError` or "'list' object
# has no attribute 'get'".
TOKENIZER_JSON_FILES = ("tokenizer_config.json", "tokenizer.json", "special_tokens_map.json", "added_tokens.json")
PROCESSOR_JSON_FILES = (
    "processor_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "chat_template.json",
)


def damaged_tokenizer_file(pretrained_model_name_or_path: Any, subfolder: str = "") -> str | None:
    """A sentence naming the first tokenizer or processor JSON file of a local folder that is not a JSON object, else
    None (only asked after a load failed, so that good folders are not parsed twice)."""
    if not isinstance(pretrained_model_name_or_path, (str, os.PathLike)):
        return None
    folder = os.path.join(pretrained_model_name_or_path, subfolder)
    for name in TOKENIZER_JSON_FILES + PROCESSOR_JSON_FILES:
        kind = "tokenizer" if name in TOKENIZER_JSON_FILES else "processor"
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        try:
            with open(path, encoding="utf-8") as reader:
                data = json.load(reader)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            return f"The {kind} file {path} is not valid JSON ({error})"
        if not isinstance(data, dict):
            return f"The {kind} file {path} must hold a JSON object, got a {type(data).__name__}"
    return None


def checked_processor_dict(owner: Any, pretrained_model_name_or_path: Any, kwargs: dict) -> tuple[dict, dict]:
    """`owner.get_processor_dict(pretrained_model_name_or_path, **kwargs)` (`ProcessorMixin`'s, through `super()`),
    with a damaged processor JSON file of a local folder (`chat_template.json`, `processor_config.json`, ...) named in
    an `OSError` instead of a bare `JSONDecodeError` / "list indices must be integers"."""
    try:
        return owner.get_processor_dict(pretrained_model_name_or_path, **kwargs)
    except (ValueError, AttributeError, TypeError) as error:
        raise_if_damaged(error, pretrained_model_name_or_path, kwargs, "the processor")
        raise


def raise_if_damaged(error: Exception, pretrained_model_name_or_path: Any, kwargs: dict, loader: str) -> None:
    """Raise `OSError` naming the damaged JSON file (`damaged_tokenizer_file`) that made `loader` fail with `error`;
    return when the folder has none, for the caller to re-raise `error`."""
    damaged = damaged_tokenizer_file(pretrained_model_name_or_path, kwargs.get("subfolder") or "")
    if damaged is not None:
        raise OSError(f"{damaged}; {loader} cannot load it ({type(error).__name__}).") from error


def wrap_auto_processor() -> None:
    """Wrap `AutoProcessor.from_pretrained` with `check_auto_processor_result`, and make it load folders this package
    saved as `processor_class: "InternVLProcessor"` (see `legacy_folders`) with `InternVLChatProcessor`; idempotent."""
    from transformers import AutoProcessor

    original = AutoProcessor.__dict__["from_pretrained"].__func__
    if getattr(original, "_internvl_checked", False):
        return

    @functools.wraps(original)
    def from_pretrained(cls, pretrained_model_name_or_path, *inputs, **kwargs):
        hub_kwargs = {key: kwargs[key] for key in HUB_KWARGS if kwargs.get(key) is not None}
        if is_legacy_processor_folder(pretrained_model_name_or_path, hub_kwargs):
            # Saved by this package as "InternVLProcessor", a name transformers gives its own processor.
            from .processing_internvl import InternVLChatProcessor

            kwargs.pop("config", None)
            return InternVLChatProcessor.from_pretrained(pretrained_model_name_or_path, *inputs, **kwargs)
        try:
            result = original(cls, pretrained_model_name_or_path, *inputs, **kwargs)
        except (ValueError, AttributeError, TypeError) as error:
            raise_if_damaged(error, pretrained_model_name_or_path, kwargs, "AutoProcessor")
            raise
        check_auto_processor_result(pretrained_model_name_or_path, result, kwargs)
        return result

    from_pretrained._internvl_checked = True
    AutoProcessor.from_pretrained = classmethod(from_pretrained)
