"""Checks of a checkpoint's `generation_config.json` and of the loaded generation config's sampling fields.

transformers reads `generation_config.json` leniently: a file that is not valid JSON (a half-written save) is skipped
with an info-level log, so that the model silently generates with other stop tokens and sampling settings than the
file asks for; a file holding a list or `null` fails with "'list' object is not a mapping"; and field values of the
wrong type pass the load and then crash deep inside `generate` (`max_new_tokens: "5"`, `num_beams: 0`) or change its
behaviour silently (`do_sample: "false"` samples, `top_p: 5` filters nothing). Token ids are checked in
`checkpoint_loading.check_generation_token_ids`.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from types import SimpleNamespace
from typing import Any

__all__ = ["check_generation_config_file", "check_generation_fields"]

# Field -> (kind, smallest value). Kinds: "bool", "int", "number" (finite real).
_FIELDS: dict[str, tuple[str, float | None]] = {
    "do_sample": ("bool", None),
    "use_cache": ("bool", None),
    "max_new_tokens": ("int", 1),
    "max_length": ("int", 1),
    "min_new_tokens": ("int", 0),
    "min_length": ("int", 0),
    "num_beams": ("int", 1),
    "num_beam_groups": ("int", 1),
    "num_return_sequences": ("int", 1),
    "top_k": ("int", 0),
    "no_repeat_ngram_size": ("int", 0),
    "temperature": ("number", None),
    "top_p": ("number", None),
    "repetition_penalty": ("number", None),
    "length_penalty": ("number", None),
}


def check_generation_config_file(directory: str | os.PathLike | None, subfolder: str = "") -> None:
    """Refuse a `generation_config.json` in `directory` (`subfolder`) that is not a JSON object, or whose sampling /
    length fields are wrong (`check_generation_fields`; checked here because transformers fails on some of them
    while loading the file, before the loaded config can be checked).

    Raises:
        ValueError: naming the file and what is wrong (the JSON error and its position, or the type found).
        TypeError / ValueError: a field of the wrong type or range (`check_generation_fields`).
    """
    if directory is None:
        return
    path = os.path.join(os.fspath(directory), subfolder or "", "generation_config.json")
    if not os.path.isfile(path):
        return
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{path} is not valid JSON ({error}); expected a JSON object of generation settings (a damaged or "
            f"half-written file would otherwise be skipped and the model would generate with other settings)."
        ) from error
    if not isinstance(content, dict):
        raise ValueError(
            f"{path} must hold a JSON object of generation settings, got {type(content).__name__} "
            f"({json.dumps(content)[:60]})."
        )
    check_generation_fields(SimpleNamespace(**{name: content[name] for name in _FIELDS if name in content}))


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return kind != "int" or isinstance(value, numbers.Integral)


def check_generation_fields(generation_config: Any) -> None:
    """Refuse sampling / length fields of the loaded generation config of the wrong type or range (see the module
    docstring); `top_p` must lie in (0, 1]. `None` is allowed everywhere.

    Raises:
        TypeError: a value of the wrong type (a string, a float where an int is needed, a bool where a number is).
        ValueError: a value out of range (`num_beams: 0`, `max_new_tokens: -1`, `top_p: 5`, NaN).
    """
    for name, (kind, minimum) in _FIELDS.items():
        value = getattr(generation_config, name, None)
        if value is None:
            continue
        allowed = {"bool": "a bool", "int": "an integer", "number": "a finite number"}[kind]
        if minimum is not None:
            allowed += f" >= {minimum}"
        if name == "top_p":
            allowed += " in (0, 1]"
        where = f"`generation_config.{name}` (from generation_config.json or the `generation_config=` argument)"
        if not _type_ok(kind, value):
            raise TypeError(f"{where} must be {allowed} or None, got {value!r} ({type(value).__name__}).")
        in_range = kind == "bool" or (math.isfinite(value) and (minimum is None or value >= minimum))
        if not in_range or (name == "top_p" and not 0 < value <= 1):
            raise ValueError(f"{where} must be {allowed} or None, got {value!r}.")
