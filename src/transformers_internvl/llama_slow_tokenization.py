"""transformers 4's slow `LlamaTokenizer`, which the original loads, on transformers 5's.

The original model cards and training code load the tokenizer with `use_fast=False`. For the sentencepiece Llama
tokenizers of InternVL checkpoints (Phi-3: InternVL2-4B, Mini-InternVL-Chat-4B-V1-5; Yi: InternVL-Chat-V1-2,
InternVL2-40B) that slow class (transformers 4.x `LlamaTokenizer.tokenize`) runs in one of two modes, chosen by
`legacy` (the `from_pretrained` argument, else tokenizer_config.json; a file without the key meant `legacy=True`,
with a warning). transformers 5's `LlamaTokenizer` (tokenizers-backed, Metaspace) reproduces neither exactly; the models
were trained on the slow ids.

* `legacy: false`: the slow class prefixes the *whole* text with "▁" before cutting it at the added tokens, and drops
  that "▁" only when the next token is one of `all_special_tokens`. So a prompt that starts with a chat token that is
  not in `all_special_tokens` (`<|system|>`, `<|user|>`, `<|im_start|>`, ...) gets a lone "▁" token after `<s>`, and
  a text that starts with a space gets one "▁" more. transformers 5 prepends "▁" only to a first piece that does not
  already start with one, as the 4.x fast class did.
* legacy (`legacy: true`, or no key): the slow class cuts the text at the added tokens (stripping the whitespace an
  `lstrip` / `rstrip` token eats) and hands every piece between them to sentencepiece on its own, which puts its dummy
  prefix "▁" before *each* piece: `</img> and` -> `</img>`, `▁▁`, `a`, `n`, `d`; `<|user|>\nhi` -> `<|user|>`, `▁`,
  `<0x0A>`, `hi`. transformers 5 prepends "▁" to no piece after an added token (`legacy: false` files) or only to
  pieces that do not already start with one (`legacy: true`).

* `original_llama_text` / `encode_as_original`: the text to hand to the transformers 5 tokenizer for the slow class's
  ids (non-legacy: "▁" + text with every "▁" of the text written as a space, the prefix left out when the text is
  empty or starts with one of `all_special_tokens`; legacy: the text cut at the added tokens, whitespace stripped as
  the slow class strips it, "▁" put before every piece between them).
* `decode_as_original`: the slow class's decoding (added tokens outside `all_special_tokens` kept and spaced,
  sentencepiece's reading of byte-fallback runs; legacy: a space before special tokens, sentencepiece's dummy prefix
  dropped from each run of text).

Other tokenizers are left to their own encoding and decoding; so is a legacy tokenizer whose sentencepiece model does
not add a dummy prefix or removes extra whitespace (sentencepiece's options that transformers 5 ignores), with a
warning.
"""

from __future__ import annotations

import json
import re
from typing import Any

from transformers.utils import logging

from .converted_llama_tokenizer import (
    SPIECE_UNDERLINE,
    conversion_record,
    converted_legacy_mode,
    converted_slow_mode,
    template_prompt_starts,
)

logger = logging.get_logger(__name__)

_NO_FILE = object()


def check_unicode(name: str, text: str | None) -> None:
    """Refuse a string the tokenizer cannot encode (a lone surrogate such as `"\\ud800"`, which has no UTF-8 form;
    the tokenizer failed with "TextEncodeInput must be Union[TextInputSequence, ...]"), naming the argument `name`.

    Raises:
        ValueError: naming `name`, the character and its position.
    """
    if not isinstance(text, str):
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"{name} is not valid Unicode: {error.object[error.start : error.end]!r} at position {error.start} "
            f"({error.reason}; lone surrogates cannot be tokenized)."
        ) from None


def _config_legacy(tokenizer: Any) -> Any:
    """The `legacy` value of the tokenizer_config.json the tokenizer came from: None when the file has no such key,
    `_NO_FILE` when there is no file (a tokenizer built in memory)."""
    from transformers.utils import cached_file

    path = cached_file(
        str(getattr(tokenizer, "name_or_path", "") or "."),
        "tokenizer_config.json",
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )
    if path is None:
        return _NO_FILE
    with open(path, encoding="utf-8") as handle:
        return json.load(handle).get("legacy")


def _sentencepiece_model_is_plain(tokenizer: Any) -> bool:
    """Whether the tokenizer's sentencepiece model adds a dummy prefix and keeps extra whitespace (Llama, Phi-3, Yi):
    the models whose legacy ids this module reproduces. True when there is no model file to read."""
    vocab_file = getattr(tokenizer, "vocab_file", None) or tokenizer.init_kwargs.get("vocab_file")
    if not vocab_file:
        return True
    try:
        from google.protobuf.message import DecodeError
        from sentencepiece import sentencepiece_model_pb2
    except ImportError:
        return True
    model = sentencepiece_model_pb2.ModelProto()
    try:
        with open(vocab_file, "rb") as handle:
            model.ParseFromString(handle.read())
    except (OSError, ValueError, DecodeError):  # a corrupt file (DecodeError is no ValueError): as if there were none
        return True
    spec = model.normalizer_spec
    return spec.add_dummy_prefix and not spec.remove_extra_whitespaces


def slow_llama_mode(tokenizer: Any) -> str | None:
    """How transformers 4's slow class would have run `tokenizer`: `"non_legacy"`, `"legacy"`, or None (not a
    sentencepiece `LlamaTokenizer`, or a case this module leaves to the tokenizer). Cached on the tokenizer.

    `legacy` as transformers 4 resolved it: `tokenizer.legacy` (the `from_pretrained` argument or the file's value)
    when it is truthy or None (the slow class tests its truth: `"legacy": 0` is non-legacy) or the file writes the
    key; a tokenizer_config.json without the key meant legacy (transformers 5
    defaults to non-legacy, so an explicit `legacy=False` argument on such a file cannot be told apart and is read as
    legacy too: write `"legacy": false` into the file instead), except in a converted `-hf` folder, whose config.json
    records the source's key (transformers 5 drops it whenever it saves the tokenizer); a tokenizer with no file (built
    in memory) is taken at its word."""
    from transformers import LlamaTokenizer

    if not isinstance(tokenizer, LlamaTokenizer):
        # a converted -hf folder of a legacy: false tokenizer: its tokenizer.json encodes as transformers 5's
        # non-legacy LlamaTokenizer, so it needs the same "▁" (its legacy twin encodes as the slow class already)
        return "non_legacy" if converted_slow_mode(tokenizer) == "non_legacy" else None
    cached = tokenizer.__dict__.get("_internvl_slow_mode", False)
    if cached is not False:
        return cached
    value = getattr(tokenizer, "legacy", True)
    legacy = value is None or bool(value)  # transformers 4: None -> legacy; else the slow class tests its truth
    if not legacy and _config_legacy(tokenizer) is None:  # a file without the key
        # ... unless it is the tokenizer of a converted -hf folder, which records the source's key
        recorded = conversion_record(tokenizer).get("tokenizer_legacy", True)
        legacy = recorded is None or bool(recorded)
    if legacy:
        mode = "legacy" if _sentencepiece_model_is_plain(tokenizer) else None
        if mode is None:
            logger.warning_once(
                "This LlamaTokenizer runs in legacy mode with a sentencepiece model that adds no dummy prefix or "
                "removes extra whitespace; transformers 5 does not reproduce the ids of transformers 4's slow class "
                "(which the original InternVL code loads) for it, and they are not corrected here."
            )
    else:
        mode = "non_legacy" if getattr(tokenizer, "add_prefix_space", True) is not False else None
    tokenizer.__dict__["_internvl_slow_mode"] = mode
    return mode


def _named_special_tokens(tokenizer: Any) -> set[str]:
    """The tokens `special_tokens_map` names under transformers 4's names (`bos_token`, `eos_token`, ...; its lists
    and transformers 5's `extra_special_tokens` names, e.g. a converted `-hf` folder's `start_image_token`, left
    out)."""
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    names = PreTrainedTokenizerBase.SPECIAL_TOKENS_ATTRIBUTES
    return {
        str(value) for key, value in tokenizer.special_tokens_map.items() if key in names and isinstance(value, str)
    }


def _slow_token_sets(tokenizer: Any) -> tuple[dict[str, Any], list[str]]:
    """The added tokens (content -> `AddedToken`) and `all_special_tokens` that transformers 4's slow class holds for
    `tokenizer`. transformers 5 differs on two kinds of token: it turns the sentencepiece model's user-defined pieces
    into special added tokens (the slow class leaves them to sentencepiece), and `add_tokens(..., special_tokens=True)`
    of a new token (as the original training script does for InternVL's tokens on a plain LLM tokenizer) no longer
    makes it one of `all_special_tokens`. Cached on the tokenizer, keyed by its number of added tokens."""
    decoder = tokenizer.added_tokens_decoder
    cached = tokenizer.__dict__.get("_internvl_slow_tokens")
    if cached is not None and cached[0] == len(decoder):
        return cached[1], cached[2]
    named = _named_special_tokens(tokenizer)
    from_file = {str(token) for token in (tokenizer.init_kwargs.get("added_tokens_decoder") or {}).values()}
    vocab_size = tokenizer.vocab_size
    added, runtime_special = {}, []
    for index, token in sorted(decoder.items()):
        content = str(token)
        if index < vocab_size and content not in named and content not in from_file:
            continue  # a user-defined piece of the sentencepiece model
        added[content] = token
        if index >= vocab_size and token.special and content not in from_file:
            runtime_special.append(content)
    special = [token for token in tokenizer.all_special_tokens if token in added or token in named]
    recorded = conversion_record(tokenizer).get("tokenizer_additional_special_tokens")
    if isinstance(recorded, list):  # a converted -hf folder: the source's list, which transformers 5 rewrote
        special = [token for token in special if token in named]
        special += [str(token) for token in recorded if str(token) in added and str(token) not in special]
    special += [token for token in runtime_special if token not in special]
    tokenizer.__dict__["_internvl_slow_tokens"] = (len(decoder), added, special)
    return added, special


def _added_token_pattern(tokenizer: Any) -> tuple[re.Pattern | None, dict[str, Any]]:
    """A regex matching the slow class's added tokens (longest first, as its trie) and their `AddedToken`s."""
    tokens, _ = _slow_token_sets(tokenizer)
    cached = tokenizer.__dict__.get("_internvl_added_pattern")
    if cached is None or cached[0] is not tokens:
        alternatives = sorted(tokens, key=len, reverse=True)
        pattern = re.compile("|".join(map(re.escape, alternatives))) if alternatives else None
        cached = tokenizer.__dict__["_internvl_added_pattern"] = (tokens, pattern)
    return cached[1], tokens


def _legacy_pieces(tokenizer: Any, text: str) -> list[tuple[int, int, bool]]:
    """transformers 4.x `PreTrainedTokenizer.tokenize`'s cut of `text` at the added tokens: `(start, end, is_added)`
    spans of `text`, the whitespace that `rstrip` / `lstrip` tokens eat left out, empty pieces dropped."""
    pattern, tokens = _added_token_pattern(tokenizer)
    spans, position = [], 0  # [start, end, is_added]
    for match in pattern.finditer(text) if pattern is not None else ():
        spans.append([position, match.start(), False])
        spans.append([match.start(), match.end(), True])
        position = match.end()
    spans.append([position, len(text), False])
    for index, (start, end, is_added) in enumerate(spans):
        if not is_added:
            continue
        token = tokens[text[start:end]]
        if token.rstrip and index + 1 < len(spans):
            right = spans[index + 1]
            piece = text[right[0] : right[1]]
            right[0] += len(piece) - len(piece.lstrip())
        if token.lstrip and index > 0:
            left = spans[index - 1]
            piece = text[left[0] : left[1]]
            left[1] -= len(piece) - len(piece.rstrip())
    return [(start, end, is_added) for start, end, is_added in spans if end > start]


def _legacy_text(tokenizer: Any, text: str) -> tuple[str, list[int], list[int]]:
    """The legacy slow class's ids as a text for the transformers 5 tokenizer: the added tokens, and "▁" + each piece
    between them (sentencepiece's dummy prefix, which transformers 5 then adds to no piece). Also, per character of
    the result, the offset in `text` where it starts and where it ends (the added "▁" covers no character)."""
    out, starts, ends = [], [], []
    for start, end, is_added in _legacy_pieces(tokenizer, text):
        if not is_added:
            out.append(SPIECE_UNDERLINE)
            starts.append(start)
            ends.append(start)
        out.append(text[start:end])
        starts.extend(range(start, end))
        ends.extend(range(start + 1, end + 1))
    return "".join(out), starts, ends


def original_llama_text(tokenizer: Any, text: str) -> str:
    """`text` as the transformers 5 tokenizer must see it to give transformers 4's slow `LlamaTokenizer` ids (see the
    module docstring); unchanged for every other tokenizer."""
    mode = slow_llama_mode(tokenizer) if text else None
    if mode == "legacy":
        return _legacy_text(tokenizer, text)[0]
    if mode != "non_legacy":
        return text
    added, special = _slow_token_sets(tokenizer)
    if text[:1] == SPIECE_UNDERLINE and any(
        text[1:].startswith(token) for token in template_prompt_starts(tokenizer, added)
    ):
        # a prompt of a converted -hf chat template: its "▁" is the prefix the slow class puts there, not text
        return SPIECE_UNDERLINE + text[1:].replace(SPIECE_UNDERLINE, " ")
    # The slow class writes a "▁" of the text as a space first (so that an `rstrip` chat token strips it).
    text = text.replace(SPIECE_UNDERLINE, " ")
    if any(text.startswith(token) for token in special):
        return text
    return SPIECE_UNDERLINE + text


def _encode_legacy(tokenizer: Any, texts: list[str], encode: Any, offsets_asked: bool) -> Any:
    """`encode_with_original_text` for a legacy tokenizer: offsets mapped back through `_legacy_text`'s character
    map."""
    prepared = [_legacy_text(tokenizer, text) if text else (text, [], []) for text in texts]
    encoding = encode([text for text, _, _ in prepared])
    if not offsets_asked or encoding.get("offset_mapping") is None:
        return encoding
    offsets = encoding["offset_mapping"]
    rows = [int(sample) for sample in encoding.get("overflow_to_sample_mapping", range(len(prepared)))]

    def mapped(row, sample):
        _, starts, ends = prepared[sample]
        spans = []
        for start, end in (map(int, span) for span in row):
            if end > start:
                spans.append((starts[start], ends[end - 1]))
            else:  # an empty span (a special token the tokenizer added): empty at the same place of `text`
                position = starts[min(start, len(starts) - 1)] if starts else 0
                spans.append((position, position))
        return spans

    if hasattr(offsets, "shape"):  # a torch / numpy array: padding positions stay (0, 0)
        new = offsets.clone() if hasattr(offsets, "clone") else offsets.copy()
        for index, sample in enumerate(rows):
            mask = encoding["attention_mask"][index] if "attention_mask" in encoding else None
            for position, span in enumerate(mapped(offsets[index].tolist(), sample)):
                if mask is None or int(mask[position]):
                    new[index][position][0], new[index][position][1] = span
        encoding["offset_mapping"] = new
    else:
        encoding["offset_mapping"] = [mapped(row, sample) for row, sample in zip(offsets, rows)]
    return encoding


def encode_as_original(tokenizer: Any, texts: list[str], **kwargs: Any) -> Any:
    """`tokenizer(texts, **kwargs)` with the ids of transformers 4's slow class (`original_llama_text`); an
    `offset_mapping`, when asked for, still refers to the characters of `texts` (an added "▁" covers no character:
    `(0, 0)` at the start of the text). A tokenizer that already encodes so (`llama_slow_tokenizer`, the class an
    InternVL folder's `AutoTokenizer` / `AutoProcessor` load gives) is called as it is."""
    if getattr(tokenizer, "encodes_as_original", False):
        return tokenizer(texts, **kwargs)
    return encode_with_original_text(
        tokenizer, texts, lambda prepared: tokenizer(prepared, **kwargs), bool(kwargs.get("return_offsets_mapping"))
    )


def encode_with_original_text(tokenizer: Any, texts: list[str], encode: Any, offsets_asked: bool) -> Any:
    """`encode(prepared)` (a batch encoding of the list of texts it is given) on `texts` as `original_llama_text`
    prepares them, the `offset_mapping` (when `offsets_asked`) mapped back to the characters of `texts`."""
    if texts and slow_llama_mode(tokenizer) == "legacy":
        return _encode_legacy(tokenizer, texts, encode, offsets_asked)
    prepared = [original_llama_text(tokenizer, text) for text in texts]
    encoding = encode(prepared)
    offsets = encoding.get("offset_mapping") if offsets_asked else None
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


def _sentencepiece_decode(pieces: list[str], dummy_prefix: bool = False, unknown: Any = None) -> str:
    """`SentencePieceProcessor.decode(pieces)` of the slow class's model: "▁" is a space, runs of `<0xNN>` byte pieces
    are read as UTF-8, a string that is no piece of the model (`unknown(piece)`; the slow class makes one when it cuts
    the first token's "▁") is written as it is. `dummy_prefix` (legacy mode, where the model adds one): one "▁" at the
    start of the first (non-empty) piece is dropped, as sentencepiece drops its dummy prefix."""
    out, pending = [], bytearray()
    for piece in pieces:
        match = _BYTE_PIECE.fullmatch(piece)
        if match:
            pending.append(int(match.group(1), 16))
            dummy_prefix = False
            continue
        if not piece:
            continue
        if pending:
            out.append(_decode_bytes(bytes(pending)))
            pending.clear()
        if unknown is not None and unknown(piece):
            out.append(piece)
        else:
            out.append((piece.removeprefix(SPIECE_UNDERLINE) if dummy_prefix else piece).replace(SPIECE_UNDERLINE, " "))
        dummy_prefix = False
    if pending:
        out.append(_decode_bytes(bytes(pending)))
    return "".join(out)


def _tokens_to_string(tokenizer: Any, tokens: list[str], special: set[str], legacy: bool = False) -> str:
    """transformers 4.x `LlamaTokenizer.convert_tokens_to_string` (`legacy: false`, or legacy: a space before each
    special token that follows text, sentencepiece's dummy prefix dropped from each run of text)."""
    # (a converted -hf folder's TokenizersBackend says `add_prefix_space` False; its pipeline prepends the "▁" itself)
    own_prefix_space = getattr(tokenizer, "add_prefix_space", True) is not False
    prefix_space = own_prefix_space or converted_legacy_mode(tokenizer) is not None if legacy else True
    unk_id, unk_token = tokenizer.unk_token_id, str(tokenizer.unk_token)

    def unknown(piece: str) -> bool:
        return piece != unk_token and tokenizer.convert_tokens_to_ids(piece) == unk_id

    if tokens[0].startswith(SPIECE_UNDERLINE) and prefix_space:
        tokens = [tokens[0][1:], *tokens[1:]]
    out, current, previous_special = "", [], False
    for index, token in enumerate(tokens):
        if token in special:
            if legacy and not previous_special and index != 0:
                out += " "
            out += _sentencepiece_decode(current, legacy, unknown) + token
            previous_special, current = True, []
        else:
            if previous_special and index == 1 and prefix_space and not token.startswith(SPIECE_UNDERLINE):
                out += " "
            current.append(token)
            previous_special = False
    return out + _sentencepiece_decode(current, legacy, unknown)


def _decode_token_sets(tokenizer: Any) -> tuple[set[str], set[int], set[str]]:
    """For `decode_as_original`: the slow class's `all_special_tokens`, their ids, and the tokens it decodes as added
    tokens (its added tokens outside `all_special_tokens`, and its `additional_special_tokens` past the vocabulary).
    Cached on the tokenizer with `_slow_token_sets` (and its named special tokens)."""
    added_tokens, special_list = _slow_token_sets(tokenizer)
    named = _named_special_tokens(tokenizer)
    cached = tokenizer.__dict__.get("_internvl_decode_sets")
    if cached is not None and cached[0] is added_tokens and cached[1] == named:
        return cached[2]
    special = set(special_list)
    special_ids = set(tokenizer.convert_tokens_to_ids(special_list))
    vocab_size = tokenizer.vocab_size
    added = set(added_tokens) - special
    additional = [token for token in special_list if token not in named]  # 4.x `additional_special_tokens`
    added |= {token for token in additional if tokenizer.convert_tokens_to_ids(token) >= vocab_size}
    tokenizer.__dict__["_internvl_decode_sets"] = (added_tokens, named, (special, special_ids, added))
    return special, special_ids, added


def decode_as_original(
    tokenizer: Any,
    token_ids: list[int],
    skip_special_tokens: bool = False,
    clean_up_tokenization_spaces: bool | None = None,
) -> str:
    """`tokenizer.decode(token_ids, skip_special_tokens=...)` as transformers 4's slow `LlamaTokenizer` decodes
    (`PreTrainedTokenizer._decode`, `convert_tokens_to_string`): added tokens outside `all_special_tokens` (Phi-3's chat tokens)
    are kept, even with `skip_special_tokens`, and joined to the text around them with single spaces; runs of
    byte-fallback pieces are read as sentencepiece reads them (one U+FFFD per invalid byte, where transformers 5
    writes U+FFFD for every byte of a run that is not valid UTF-8 as a whole). `clean_up_tokenization_spaces`: None
    for the tokenizer's own setting. Other tokenizers: their own `decode`.

    Raises:
        IndexError: an id outside the vocabulary (the slow class: sentencepiece's "piece id is out of range")."""
    mode = slow_llama_mode(tokenizer) or converted_legacy_mode(tokenizer)
    if mode is None:
        return tokenizer.decode(
            token_ids,
            skip_special_tokens=skip_special_tokens,
            clean_up_tokenization_spaces=clean_up_tokenization_spaces,
        )
    legacy = mode == "legacy"
    special, special_ids, added = _decode_token_sets(tokenizer)
    pieces, current = [], []
    for token_id in token_ids:
        if skip_special_tokens and token_id in special_ids:
            continue
        index = int(token_id)
        token = tokenizer.convert_ids_to_tokens(index) if index >= 0 else None
        if token is None:  # the slow class: sentencepiece's IndexError "piece id is out of range"
            raise IndexError(
                f"token id {index} is outside the vocabulary (ids 0..{len(tokenizer) - 1}). If a model generated "
                "it, the model's vocabulary (config vocab_size) is larger than this tokenizer's: use the tokenizer "
                "saved with the model."
            )
        if token in added:
            if current:
                text = _tokens_to_string(tokenizer, current, special, legacy)
                if text:
                    pieces.append(text)
                current = []
            pieces.append(token)
        else:
            current.append(token)
    if current:
        pieces.append(_tokens_to_string(tokenizer, current, special, legacy))
    text = " ".join(pieces)
    if clean_up_tokenization_spaces is None:
        clean_up_tokenization_spaces = tokenizer.clean_up_tokenization_spaces
    return tokenizer.clean_up_tokenization(text) if clean_up_tokenization_spaces else text
