"""`load_in_8bit` / `load_in_4bit`: the bitsandbytes options of transformers 4, which the original code passes.

The original evaluation scripts load every model with `InternVLChatModel.from_pretrained(..., load_in_8bit=
args.load_in_8bit, load_in_4bit=args.load_in_4bit)` (`internvl_chat/internvl/model/__init__.py`,
`load_model_and_tokenizer`; `False` unless `--load-in-8bit` / `--load-in-4bit`), and the model cards' 8-bit example
passes `load_in_8bit=True`. transformers 4 turned them into `quantization_config=BitsAndBytesConfig(...)`
(with a deprecation warning); transformers 5 removed them, so they reach the model's `__init__` and fail there.
"""

from __future__ import annotations

from typing import Any

from transformers.utils import logging

logger = logging.get_logger(__name__)

BITSANDBYTES_OPTIONS = ("load_in_8bit", "load_in_4bit")


def resolve_bitsandbytes_options(kwargs: dict[str, Any]) -> None:
    """Turn `load_in_8bit` / `load_in_4bit` in `from_pretrained`'s `kwargs` (modified in place) into transformers 5's
    `quantization_config`, as transformers 4 did.

    * `False` (the original evaluation scripts' default) is removed;
    * `True` becomes `quantization_config=transformers.BitsAndBytesConfig(load_in_8bit=True)` (or `load_in_4bit`),
      with a one-time warning naming that spelling. bitsandbytes and its device requirements are then transformers'
      business (its `ImportError` when bitsandbytes is missing, as under the original).

    Raises:
        TypeError: an option that is not a bool (`load_in_8bit="yes"`).
        ValueError: both options are `True`, or one of them is `True` and `quantization_config` is given too.
    """
    requested = {}
    for name in BITSANDBYTES_OPTIONS:
        if name not in kwargs:
            continue
        value = kwargs.pop(name)
        if not isinstance(value, bool):
            raise TypeError(f"`{name}` must be True or False, got {value!r}.")
        if value:
            requested[name] = True
    if not requested:
        return
    if len(requested) > 1:
        raise ValueError("Pass `load_in_8bit=True` or `load_in_4bit=True`, not both.")
    (name,) = requested
    if kwargs.get("quantization_config") is not None:
        raise ValueError(
            f"Pass either `{name}=True` or `quantization_config`, not both: got {name}=True and "
            f"quantization_config={kwargs['quantization_config']!r}."
        )
    from transformers import BitsAndBytesConfig

    logger.warning_once(
        f"`{name}=True` is transformers 4's option (removed in transformers 5); loading with "
        f"`quantization_config=BitsAndBytesConfig({name}=True)`, which is what it meant. Pass that instead."
    )
    kwargs["quantization_config"] = BitsAndBytesConfig(**requested)
