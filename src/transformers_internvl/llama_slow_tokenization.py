"""transformers 4's slow `LlamaTokenizer` (`legacy: false`), which the original loads, on transformers 5's.

The original model cards and training code load the tokenizer with `use_fast=False`. For the sentencepiece Llama
tokenizers of InternVL checkpoints with `legacy: false` (Phi-3: InternVL2-4B, Mini-InternVL-Chat-4B-V1-5) that slow
class (transformers 4.x `LlamaTokenizer.tokenize`) prefixes the *whole* text with "▁" before cutting it at the added
tokens, and drops that "▁" only when the next token is one of `all_special_tokens`. So a prompt that starts with a chat
token that is not in `all_special_tokens` (`<|system|>`, `<|user|>`, `<|im_start|>`, ...) gets a lone "▁" token after
`<s>`, and a text that starts with a space gets one "▁" more. transformers 5's `LlamaTokenizer` (tokenizers-backed,
Metaspace with `prepend_scheme="first"`) prepends "▁" only to a first piece that does not already start with one, as
the 4.x fast class did; the models were trained on the slow ids.

* `original_llama_text` / `encode_as_original`: the text to hand to the transformers 5 tokenizer for the slow class's
  ids: "▁" + text with every "▁" of the text written as a space (as the slow class does first), the prefix left out
  when the text is empty or starts with one of `all_special_tokens`.
* `decode_as_original`: the slow class's decoding (added tokens outside `all_special_tokens` kept and spaced,
  sentencepiece's reading of byte-fallback runs).

Other tokenizers are left to their own encoding and decoding.
"""

from __future__ import annotations

import json
import re
from typing import Any

SPIECE_UNDERLINE = "\u2581"


def _config_says_not_legacy(tokenizer: Any) -> bool:
    """Whether the tokenizer_config.json the tokenizer came from writes `legacy: false` (cached on the tokenizer). A
    file without the key made transformers 4's slow class run in legacy mode (transformers 5 defaults to non-legacy);
    a tokenizer with no file to read (built in memory) is taken at its word (`tokenizer.legacy`)."""
    cached = tokenizer.__dict__.get("_internvl_config_legacy")
    if cached is None:
        from transformers.utils import cached_file

        path = cached_file(
            str(getattr(tokenizer, "name_or_path", "") or "."),
            "tokenizer_config.json",
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
        legacy = tokenizer.legacy
        if path is not None:
            with open(path, encoding="utf-8") as handle:
                legacy = json.load(handle).get("legacy", True)
        cached = tokenizer.__dict__["_internvl_config_legacy"] = legacy
    return cached is False


def needs_slow_llama_prefix(tokenizer: Any) -> bool:
    """Whether `tokenizer` is transformers' sentencepiece `LlamaTokenizer` whose tokenizer_config.json says
    `legacy: false` (the Phi-3 checkpoints), with a prefix space: its ids differ from the 4.x slow class at the text
    start. (Without the key the 4.x slow class ran in legacy mode, which this module does not reproduce.)"""
    from transformers import LlamaTokenizer

    return (
        isinstance(tokenizer, LlamaTokenizer)
        and getattr(tokenizer, "legacy", True) is False
        and getattr(tokenizer, "add_prefix_space", True) is not False
        and _config_says_not_legacy(tokenizer)
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


_BYTE_PIECE = re.compile(r"<0x([0-9A-F]{2})>")


def _utf8_length(lead: int) -> int:
    return 1 if lead < 0x80 else 2 if 0xC2 <= lead <= 0xDF else 3 if 0xE0 <= lead <= 0xEF else 4 if lead <= 0xF4 else 0


def _decode_bytes(data: bytes) -> str:
    """sentencepiece's reading of a run of byte pieces: each valid UTF-8 character, else U+FFFD for one byte."""
    out, offset = [], 0
    while offset < len(data):
        length = _utf8_length(data[offset]) if data[offset] >= 0x80 else 1
        try:
            out.append(data[offset : offset + length].decode("utf-8") if length else "\ufffd")
            offset += length if length else 1
        except UnicodeDecodeError:
            out.append("\ufffd")
            offset += 1
    return "".join(out)


def _sentencepiece_decode(pieces: list[str]) -> str:
    """`SentencePieceProcessor.decode(pieces)` of the slow class's model (no dummy prefix): "▁" is a space, runs of
    `<0xNN>` byte pieces are read as UTF-8."""
    out, pending = [], bytearray()
    for piece in pieces:
        match = _BYTE_PIECE.fullmatch(piece)
        if match:
            pending.append(int(match.group(1), 16))
            continue
        if pending:
            out.append(_decode_bytes(bytes(pending)))
            pending.clear()
        out.append(piece.replace(SPIECE_UNDERLINE, " "))
    if pending:
        out.append(_decode_bytes(bytes(pending)))
    return "".join(out)


def _tokens_to_string(tokenizer: Any, tokens: list[str], special: set[str]) -> str:
    """transformers 4.x `LlamaTokenizer.convert_tokens_to_string` (`legacy: false`)."""
    if tokens[0].startswith(SPIECE_UNDERLINE):
        tokens = [tokens[0][1:], *tokens[1:]]
    out, current, previous_special = "", [], False
    for index, token in enumerate(tokens):
        if token in special:
            out += _sentencepiece_decode(current) + token
            previous_special, current = True, []
        else:
            if previous_special and index == 1 and not token.startswith(SPIECE_UNDERLINE):
                out += " "
            current.append(token)
            previous_special = False
    return out + _sentencepiece_decode(current)


def decode_as_original(tokenizer: Any, token_ids: list[int], skip_special_tokens: bool = False) -> str:
    """`tokenizer.decode(token_ids, skip_special_tokens=...)` as transformers 4's slow `LlamaTokenizer` decodes
    (`legacy: false`; `PreTrainedTokenizer._decode`): added tokens outside `all_special_tokens` (Phi-3's chat tokens)
    are kept, even with `skip_special_tokens`, and joined to the text around them with single spaces; runs of
    byte-fallback pieces are read as sentencepiece reads them (one U+FFFD per invalid byte, where transformers 5
    writes U+FFFD for every byte of a run that is not valid UTF-8 as a whole). Other tokenizers: their own `decode`."""
    if not needs_slow_llama_prefix(tokenizer):
        return tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)
    special = set(tokenizer.all_special_tokens)
    special_ids = set(tokenizer.all_special_ids)
    vocab_size = tokenizer.vocab_size
    added = set(tokenizer.get_added_vocab()) - special
    named = {
        str(getattr(tokenizer, f"{name}_token", None)) for name in ("bos", "eos", "unk", "pad", "sep", "cls", "mask")
    }
    additional = [
        token for token in tokenizer.all_special_tokens if token not in named
    ]  # 4.x `additional_special_tokens`
    added |= {token for token in additional if tokenizer.convert_tokens_to_ids(token) >= vocab_size}
    pieces, current = [], []
    for token_id in token_ids:
        if skip_special_tokens and token_id in special_ids:
            continue
        token = tokenizer.convert_ids_to_tokens(int(token_id))
        if token in added:
            if current:
                text = _tokens_to_string(tokenizer, current, special)
                if text:
                    pieces.append(text)
                current = []
            pieces.append(token)
        else:
            current.append(token)
    if current:
        pieces.append(_tokens_to_string(tokenizer, current, special))
    text = " ".join(pieces)
    return tokenizer.clean_up_tokenization(text) if tokenizer.clean_up_tokenization_spaces else text
