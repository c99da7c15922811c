"""The tokenizer of a converted `-hf` folder (`convert --to hf` of a sentencepiece Llama tokenizer: Phi-3, Yi), as
`llama_slow_tokenization` reads it: what the conversion recorded of the source tokenizer in the folder's config.json,
which transformers 5 keeps when it saves the folder again (it drops `legacy` from tokenizer_config.json and rewrites
`additional_special_tokens`), and the "▁" the `-hf` chat template of a `legacy: false` tokenizer starts with
(`conversion.sentencepiece_llama`)."""

from __future__ import annotations

import json
from typing import Any

from transformers.utils import logging

logger = logging.get_logger(__name__)

SPIECE_UNDERLINE = "\u2581"
# The key of the record `convert --to hf` writes into the `-hf` config.json (`conversion.hf_layout` imports it from
# here: this module stays free of torch).
ORIGINAL_RECORD_KEY = "internvl_chat_original"


def conversion_record(tokenizer: Any) -> dict[str, Any]:
    """What `convert --to hf` recorded of the source tokenizer in the config.json beside the tokenizer's files (a
    converted `-hf` folder: `model_type "internvl"`, record `conversion.hf_layout.ORIGINAL_RECORD_KEY`), or {} for
    any other tokenizer. It keeps the source's `legacy` (`tokenizer_legacy`, absent when the source had no key) and
    `additional_special_tokens`, which transformers 5 drops / rewrites whenever it saves the tokenizer. Cached on the
    tokenizer."""
    cached = tokenizer.__dict__.get("_internvl_conversion_record")
    if cached is not None:
        return cached
    from transformers.utils import cached_file

    record: dict[str, Any] = {}
    path = cached_file(
        str(getattr(tokenizer, "name_or_path", "") or "."),
        "config.json",
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )
    if path is not None:
        try:
            with open(path, encoding="utf-8") as handle:
                config = json.load(handle)
        except (OSError, ValueError):  # not this module's to report: the model's loading does
            config = None
        if isinstance(config, dict) and config.get("model_type") == "internvl":
            found = config.get(ORIGINAL_RECORD_KEY)
            if isinstance(found, dict) and found.get("tokenizer_class"):
                record = found
    tokenizer.__dict__["_internvl_conversion_record"] = record
    return record


def converted_slow_mode(tokenizer: Any) -> str | None:
    """The slow class's mode (`"legacy"` or `"non_legacy"`, the source's `legacy`) for the tokenizer of a converted
    `-hf` folder of a sentencepiece Llama tokenizer, which loads as `TokenizersBackend` (its tokenizer.json carries the
    slow class's pipeline: `conversion.sentencepiece_llama`, `conversion.sentencepiece_decoding`); else None."""
    if type(tokenizer).__name__ != "TokenizersBackend":
        return None
    record = conversion_record(tokenizer)
    if record.get("tokenizer_class") not in ("LlamaTokenizer", "LlamaTokenizerFast"):
        return None
    recorded = record.get("tokenizer_legacy", True)
    return "legacy" if recorded is None or bool(recorded) else "non_legacy"


def converted_legacy_mode(tokenizer: Any) -> str | None:
    """`"legacy"` for the tokenizer of a converted `-hf` folder of a legacy sentencepiece Llama tokenizer
    (`converted_slow_mode`); else None."""
    return "legacy" if converted_slow_mode(tokenizer) == "legacy" else None


_PROBE_CONVERSATIONS = (
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": ""}, {"role": "user", "content": "hi"}],
)


def template_prompt_starts(tokenizer: Any, added_tokens: Any) -> tuple[str, ...]:
    """The chat tokens that follow the leading "▁" of the prompts the tokenizer's chat template renders, when that
    template starts with "▁": the chat template of a converted `-hf` folder of a `legacy: false` tokenizer
    (`conversion.sentencepiece_llama.non_legacy_chat_template`), which writes there the "▁" the slow class puts before
    a prompt that starts with a chat token (`<|system|>` for phi3-chat, `<|im_start|>` for Hermes-2). Such a prompt
    must not get a second "▁" from `llama_slow_tokenization.original_llama_text`; a text of the user that starts with
    "▁" and one of these tokens cannot be told apart from it and is read the same way. Empty for every other
    tokenizer. Cached on the tokenizer, keyed by its chat template. `added_tokens`: the slow class's added tokens."""
    template = getattr(tokenizer, "chat_template", None)
    cached = tokenizer.__dict__.get("_internvl_template_starts")
    if cached is not None and cached[0] == template:
        return cached[1]
    from jinja2 import TemplateError

    starts: set[str] = set()
    if isinstance(template, str) and template.startswith(SPIECE_UNDERLINE):
        for messages in _PROBE_CONVERSATIONS:
            try:
                prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            except (TemplateError, ValueError, TypeError, KeyError) as error:  # a template that refuses the probe
                logger.debug(f"chat template probe failed: {error}")
                continue
            if isinstance(prompt, str) and prompt.startswith(SPIECE_UNDERLINE):
                starts.update(token for token in added_tokens if token and prompt[1:].startswith(token))
    result = tuple(sorted(starts))
    tokenizer.__dict__["_internvl_template_starts"] = (template, result)
    return result


__all__ = [
    "ORIGINAL_RECORD_KEY",
    "conversion_record",
    "converted_legacy_mode",
    "converted_slow_mode",
    "template_prompt_starts",
]
