"""The token ids a model reads from the tokenizer files next to its weights when it is loaded (the one place).

Original OpenGVLab checkpoints leave two ids to the tokenizer: the id of `<IMG_CONTEXT>` (`config.image_token_id`;
the original's `chat()` sets `img_context_token_id` from the tokenizer) and the id of the conversation template's end
token (`<|im_end|>`, Phi-3's `<|end|>`, ...), which the original `chat()` passes as `eos_token_id`. Both are read
from the JSON files only (`added_tokens.json`, `tokenizer_config.json`, `tokenizer.json`): no tokenizer is loaded,
so loading a model does not depend on the processing code. The generation ids the original's plain `generate` takes
from `llm_config` (`llm_generation_ids`) are here too, so that the loader and the converter fill them alike.
"""

from __future__ import annotations

import json
import numbers
import os

from transformers.utils import logging

from ..chat_templates import IMAGE_CONTEXT_TOKEN, TEMPLATES, template_eos_token

logger = logging.get_logger(__name__)


def _checked_token_id(value, path: str, token: str) -> int:
    """`value` as a token id: a non-negative int, or its decimal string (the keys of `added_tokens_decoder`)."""
    if isinstance(value, str) and value.isdecimal():
        return int(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0:
        return int(value)
    raise ValueError(
        f"{path} gives {token!r} the id {value!r} ({type(value).__name__}); expected a non-negative integer."
    )


# The part of each tokenizer file that `find_added_token_id` reads, and the JSON type it must have.
_READ_FIELDS = {"tokenizer_config.json": ("added_tokens_decoder", dict), "tokenizer.json": ("added_tokens", list)}


def _read_json_object(path: str, filename: str) -> dict:
    """The JSON object in the tokenizer file `path`; a damaged file raises `ValueError` naming it (a bare
    `JSONDecodeError` / `AttributeError` came out of model loading before)."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"The tokenizer file {path} is not valid JSON ({error}).") from None
    if not isinstance(data, dict):
        raise ValueError(f"The tokenizer file {path} must hold a JSON object, got a {type(data).__name__}.")
    field, kind = _READ_FIELDS.get(filename, (None, None))
    if field is not None and data.get(field) is not None and not isinstance(data[field], kind):
        raise ValueError(
            f"`{field}` in the tokenizer file {path} must be a JSON {'object' if kind is dict else 'list'}, got "
            f"{type(data[field]).__name__}."
        )
    return data


def find_added_token_id(directory: str | os.PathLike, token: str) -> int | None:
    """Id of the added token `token` from the tokenizer files in `directory`, or `None` when no file names it.

    Raises:
        ValueError: a file names `token` with an id that is not a non-negative integer (`true`, `"abc"`, `598.7`, -3),
            or a file read is damaged (not JSON, not an object, `added_tokens_decoder` / `added_tokens` of the wrong
            JSON type), naming the file.
    """
    directory = os.fspath(directory)
    candidates = (
        ("added_tokens.json", lambda data: data.get(token)),
        (
            "tokenizer_config.json",
            lambda data: next(
                (
                    token_id
                    for token_id, entry in (data.get("added_tokens_decoder") or {}).items()
                    if isinstance(entry, dict) and entry.get("content") == token
                ),
                None,
            ),
        ),
        (
            "tokenizer.json",
            lambda data: next(
                (
                    entry.get("id")
                    for entry in data.get("added_tokens") or []
                    if isinstance(entry, dict) and entry.get("content") == token
                ),
                None,
            ),
        ),
    )
    for filename, lookup in candidates:
        path = os.path.join(directory, filename)
        if not os.path.isfile(path):
            continue
        token_id = lookup(_read_json_object(path, filename))
        if token_id is not None:
            return _checked_token_id(token_id, path, token)
    return None


def with_stop_token(eos_token_id: int | list[int] | None, stop_token_id: int | None) -> int | list[int] | None:
    """`eos_token_id` with `stop_token_id` appended when it is not in it yet (an int when it is the only id)."""
    if stop_token_id is None:
        return eos_token_id
    if eos_token_id is None:
        return stop_token_id
    eos_token_ids = [eos_token_id] if isinstance(eos_token_id, numbers.Integral) else list(eos_token_id)
    return eos_token_id if stop_token_id in eos_token_ids else [*eos_token_ids, stop_token_id]


# The generation ids the original's `generate` takes from `llm_config` (it hands `generation_config=None` to its
# language model, whose generation config is built from `llm_config`).
LLM_GENERATION_IDS = ("eos_token_id", "pad_token_id", "bos_token_id")


def llm_generation_ids(text_config, given) -> dict[str, int | list[int]]:
    """`{name: llm_config value}` for the `LLM_GENERATION_IDS` that `given(name)` leaves unset (None) and the LLM
    config sets: what the loader (`checkpoint_loading.llm_generation_defaults`) and the converter
    (`conversion.layouts.write_generation_config`) fill in."""
    return {
        name: getattr(text_config, name)
        for name in LLM_GENERATION_IDS
        if given(name) is None and getattr(text_config, name, None) is not None
    }


def add_template_stop_token(generation_config, stop_token_id: int | None) -> None:
    """Make `generation_config.eos_token_id` include `stop_token_id` (kept as an int when it is the only one)."""
    generation_config.eos_token_id = with_stop_token(generation_config.eos_token_id, stop_token_id)


def template_stop_token_id(directory: str | os.PathLike, template: str | None) -> int | None:
    """Id of the end token of conversation template `template` (`chat_templates.template_eos_token`) from the
    tokenizer files in `directory`; `None` when the files do not name it, or when the template is unknown (as the
    original, which needs the template only in `chat()`: a warning, and plain `generate` stops at the LLM's eos)."""
    if not template:
        return None
    if isinstance(template, str) and template not in TEMPLATES:
        logger.warning_once(
            f"Unknown conversation template {template!r} (known: {sorted(TEMPLATES)}); its end token is not added to "
            "the generation config's eos_token_id, so plain `generate` stops at the LLM's eos only."
        )
        return None
    return find_added_token_id(directory, template_eos_token(template))


def apply_tokenizer_file_ids(model, directory: str | os.PathLike) -> None:
    """Fill what the original leaves to the tokenizer files in `directory`, without overriding explicit values.

    `model.config.image_token_id` is set from `<IMG_CONTEXT>` when neither `config.json` nor the caller gave it, and
    the template's end token (`template_stop_token_id`) is added to `model.generation_config.eos_token_id`, so that
    plain `generate` stops where the original `chat()` does.
    """
    if getattr(model.config, "image_token_id", None) is None:
        model.config.image_token_id = find_added_token_id(directory, IMAGE_CONTEXT_TOKEN)
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        add_template_stop_token(generation_config, template_stop_token_id(directory, model.config.template))


def local_directory(name_or_path: str | os.PathLike, kwargs: dict) -> str | None:
    """The local folder holding a checkpoint: the path itself, or the hub-cache snapshot of a repo id (not
    downloaded: `None` when it is not cached)."""
    if os.path.isdir(name_or_path):
        return os.fspath(name_or_path)
    try:
        from transformers.utils import cached_file

        config_file = cached_file(
            name_or_path,
            "config.json",
            cache_dir=kwargs.get("cache_dir"),
            revision=kwargs.get("revision"),
            local_files_only=True,
            _raise_exceptions_for_missing_entries=False,
        )
    except OSError:
        return None
    return os.path.dirname(config_file) if config_file else None


__all__ = [
    "add_template_stop_token",
    "apply_tokenizer_file_ids",
    "LLM_GENERATION_IDS",
    "find_added_token_id",
    "llm_generation_ids",
    "local_directory",
    "template_stop_token_id",
    "with_stop_token",
]
