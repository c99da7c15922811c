"""The leading "▁" that transformers 4's slow `LlamaTokenizer` (`legacy: false`) put in front of every text.

The original model cards and training code load the tokenizer with `use_fast=False`. For the sentencepiece Llama
tokenizers of InternVL checkpoints with `legacy: false` (Phi-3: InternVL2-4B, Mini-InternVL-Chat-4B-V1-5) that slow
class (transformers 4.x `LlamaTokenizer.tokenize`) prefixes the *whole* text with "▁" before cutting it at the added
tokens, and drops that "▁" only when the next token is one of `all_special_tokens`. So a prompt that starts with a chat
token that is not in `all_special_tokens` (`<|system|>`, `<|user|>`, `<|im_start|>`, ...) gets a lone "▁" token after
`<s>`, and a text that starts with a space gets one "▁" more. transformers 5's `LlamaTokenizer` (tokenizers-backed,
Metaspace with `prepend_scheme="first"`) prepends "▁" only to a first piece that does not already start with one, as
the 4.x fast class did; the models were trained on the slow ids.

`original_llama_text` gives the text to hand to the transformers 5 tokenizer for the slow class's ids: "▁" + text
with every "▁" of the text written as a space (as the slow class does first), the prefix left out when the text is
empty or starts with one of `all_special_tokens`. Other tokenizers get the text unchanged.
"""

from __future__ import annotations

from typing import Any

SPIECE_UNDERLINE = "\u2581"


def needs_slow_llama_prefix(tokenizer: Any) -> bool:
    """Whether `tokenizer` is transformers' sentencepiece `LlamaTokenizer` in the non-legacy mode with a prefix space
    (`legacy: false`, the Phi-3 / Yi tokenizer configs), whose ids differ from the 4.x slow class at the text start."""
    from transformers import LlamaTokenizer

    return (
        isinstance(tokenizer, LlamaTokenizer)
        and getattr(tokenizer, "legacy", True) is False
        and getattr(tokenizer, "add_prefix_space", True) is not False
    )


def original_llama_text(tokenizer: Any, text: str) -> str:
    """`text` as the transformers 5 tokenizer must see it to give transformers 4's slow `LlamaTokenizer` ids (see the
    module docstring); unchanged for every other tokenizer."""
    if not text or not needs_slow_llama_prefix(tokenizer):
        return text
    # The slow class writes a "▁" of the text as a space first (so that an `rstrip` chat token strips it).
    text = text.replace(SPIECE_UNDERLINE, " ")
    if any(text.startswith(token) for token in tokenizer.all_special_tokens):
        return text
    return SPIECE_UNDERLINE + text


def encode_as_original(tokenizer: Any, texts: list[str], **kwargs: Any) -> Any:
    """`tokenizer(texts, **kwargs)` with the ids of transformers 4's slow class (`original_llama_text`); an
    `offset_mapping`, when asked for, still refers to the characters of `texts` (the added "▁" maps to `(0, 0)`)."""
    prepared = [original_llama_text(tokenizer, text) for text in texts]
    encoding = tokenizer(prepared, **kwargs)
    offsets = encoding.get("offset_mapping") if kwargs.get("return_offsets_mapping") else None
    if offsets is None or all(len(new) == len(old) for new, old in zip(prepared, texts)):
        return encoding
    rows = [int(sample) for sample in encoding.get("overflow_to_sample_mapping", range(len(prepared)))]
    if hasattr(offsets, "shape"):  # a torch / numpy array (padding positions stay (0, 0))
        offsets = offsets.clone() if hasattr(offsets, "clone") else offsets.copy()
        for index, sample in enumerate(rows):
            if len(prepared[sample]) != len(texts[sample]):
                offsets[index] = (offsets[index] - 1) * (offsets[index] > 0)
    else:
        offsets = [
            [(max(start - 1, 0), max(end - 1, 0)) for start, end in row]
            if len(prepared[sample]) != len(texts[sample])
            else row
            for row, sample in zip(offsets, rows)
        ]
    encoding["offset_mapping"] = offsets
    return encoding
