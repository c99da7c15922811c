"""Building the chat model and its config the way the original training scripts do.

The original pretraining / fine-tuning scripts (internvl_chat/internvl/train/internvl_chat_pretrain.py,
internvl_chat_finetune.py) assemble a model from a separately loaded vision tower and LLM:

    internvl_chat_config = InternVLChatConfig(vision_config.to_dict(), llm_config.to_dict(), downsample_ratio=...)
    model = InternVLChatModel(internvl_chat_config, vision_model, llm)

and the original constructor also takes `use_flash_attn` (internvl_chat/internvl/model/internvl_chat/
modeling_internvl_chat.py). Here the given towers become the model's own modules (the LLM's decoder as
`model.model.language_model`, its head as `model.lm_head`), without building random ones first, and they are not
re-initialised by `post_init`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

__all__ = [
    "ORIGINAL_CONFIG_POSITIONAL",
    "attention_for_use_flash_attn",
    "config_keywords_from_positional",
    "keep_initialized",
    "positional_as_keywords",
    "split_causal_lm",
]

ORIGINAL_CONFIG_POSITIONAL = ("vision_config", "llm_config")
"""The positional parameters of the original `InternVLChatConfig.__init__` (both OpenGVLab versions start with
these two; the order of the others differs between them, so they are keyword-only here)."""


def positional_as_keywords(
    function: str,
    names: Sequence[str],
    args: tuple,
    kwargs: Mapping[str, Any],
    aliases: Mapping[str, str] | None = None,
    hint: str = "",
) -> dict[str, Any]:
    """A copy of `kwargs` with the positional `args` added under `names` (the original's positional order); shared
    by `InternVLChatConfig(...)`, `forward(...)` and `generate(...)` called as the original is.

    Args:
        function: The callable's name, for the messages (`"generate"`).
        names: The keywords the positional arguments are passed on as, in the original's order.
        aliases: `{keyword: the original's name for it}` (`{"cache": "past_key_values"}`): the name shown in the
            messages, and refused as a second value too.
        hint: Appended to the message about too many arguments.

    Raises:
        TypeError: more positional arguments than `names`, or one also given by keyword (under its name or alias).
    """
    aliases = aliases or {}
    if len(args) > len(names):
        shown = ", ".join(aliases.get(name, name) for name in names)
        raise TypeError(
            f"{function}() takes at most {len(names)} positional arguments in the original's order ({shown}), got "
            f"{len(args)}.{hint}"
        )
    kwargs = dict(kwargs)
    for name, value in zip(names, args):
        if name in kwargs or aliases.get(name) in kwargs:
            shown = aliases.get(name, name)
            raise TypeError(f"{function}() got multiple values for argument {shown!r} (positionally and by keyword).")
        kwargs[name] = value
    return kwargs


def config_keywords_from_positional(args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """`kwargs` with `InternVLChatConfig(vision_config, llm_config, **kwargs)`'s positional arguments added by name
    (`llm_config` as its standard name, `text_config`).

    Raises:
        TypeError: more than two positional arguments, or one also given by keyword (`text_config` or `llm_config`).
    """
    keywords = ("vision_config", "text_config")  # ORIGINAL_CONFIG_POSITIONAL, `llm_config` under its standard name
    aliases = dict(zip(keywords, ORIGINAL_CONFIG_POSITIONAL))
    return positional_as_keywords(
        "InternVLChatConfig", keywords, args, kwargs, aliases, hint=" Pass the others by keyword."
    )


def attention_for_use_flash_attn(use_flash_attn: bool) -> str:
    """The attention implementation the original constructor's `use_flash_attn` selects (see
    `original_api.resolve_attention_options`: flash-attn 2 when usable, else `"eager"`, the original's fallback)."""
    from .original_api import resolve_attention_options

    options: dict[str, Any] = {"use_flash_attn": use_flash_attn}
    resolve_attention_options(options)
    return options["attn_implementation"]


def split_causal_lm(language_model: nn.Module | None, text_config: Any) -> tuple[nn.Module | None, nn.Module | None]:
    """`(decoder, head)` of a causal LM passed to the constructor (`Qwen2ForCausalLM`, `InternLM2ForCausalLM`, ...:
    its `base_model_prefix` module and `get_output_embeddings()`), or `(None, None)` for `None`. Both are marked
    initialised (`keep_initialized`): the model's `post_init` keeps their weights.

    Raises:
        TypeError: the module is not a causal LM with a decoder and an output head.
        ValueError: its hidden size or vocabulary size differ from `text_config`'s (`llm_config`).
    """
    if language_model is None:
        return None, None
    prefix = getattr(language_model, "base_model_prefix", None)
    decoder = getattr(language_model, prefix, None) if prefix else None
    head = language_model.get_output_embeddings() if hasattr(language_model, "get_output_embeddings") else None
    if not isinstance(decoder, nn.Module) or not isinstance(head, nn.Module):
        raise TypeError(
            "`language_model` must be a causal LM with a decoder and an LM head (e.g. the `AutoModelForCausalLM` of "
            f"`llm_config`, as the original's training scripts pass it), got {type(language_model).__name__}."
        )
    for name in ("hidden_size", "vocab_size"):
        given, expected = getattr(language_model.config, name, None), getattr(text_config, name, None)
        if given != expected:
            raise ValueError(
                f"`language_model` has {name} {given}, but the config's `llm_config` says {expected}: build the config "
                "from the LLM's own configuration (`llm_config=llm.config.to_dict()`)."
            )
    keep_initialized(decoder, head)
    return decoder, head


def keep_initialized(*modules: nn.Module | None, **named_modules: nn.Module | None) -> None:
    """Mark every submodule of the given (already built or loaded) modules as initialised, so that the model's
    `post_init` does not draw new weights for them. `named_modules`: constructor arguments, checked by name.

    Raises:
        TypeError: a named argument is neither None nor a `torch.nn.Module` (`InternVLChatModel(config, "vit")`).
    """
    for name, module in named_modules.items():
        if module is not None and not isinstance(module, nn.Module):
            raise TypeError(
                f"`{name}` must be a torch.nn.Module (a built or loaded model) or None, got {type(module).__name__}."
            )
    for module in (*modules, *named_modules.values()):
        if module is not None:
            for submodule in module.modules():
                submodule._is_hf_initialized = True
