# Copyright 2025 The transformers-internvl authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""`tokenizers`-backed InternLM2 tokenizer, built from the sentencepiece `tokenizer.model` of original checkpoints.

The Rust pipeline that encodes exactly like the original (sentencepiece applied to each piece of text between two
added tokens) is built by `internlm2_backend.build_internlm2_backend`. Decoding is done in Python and reproduces the
original's, quirks included (`SentencePieceLayout` here, `InternLM2TokenizerMixin`); the Rust decoder stored in
`tokenizer.json` only serves other libraries that read that file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from tokenizers import Tokenizer, processors
from tokenizers.models import BPE
from transformers.tokenization_utils_base import AddedToken
from transformers.tokenization_utils_tokenizers import TokenizersBackend
from transformers.utils import logging

from .internlm2_backend import (
    BYTE_PIECE,
    PIECE_BYTE,
    PIECE_CONTROL,
    PIECE_UNKNOWN,
    SPIECE_UNDERLINE,
    build_internlm2_backend,
    load_sentencepiece_proto,
    renamed_pieces,
)
from .tokenization_internlm2 import InternLM2Tokenizer, InternLM2TokenizerMixin, check_special_token_flags

logger = logging.get_logger(__name__)

VOCAB_FILES_NAMES = {"vocab_file": "tokenizer.model", "tokenizer_file": "tokenizer.json"}


@dataclass
class SentencePieceLayout:
    """What decoding needs to know about a sentencepiece model: piece strings and types, and the normalizer flags.

    `pieces[i]` is the piece of id `i` as stored in `tokenizer.model` (before any renaming).
    """

    pieces: list[str]
    byte_values: dict[int, int] = field(default_factory=dict)
    control_ids: frozenset[int] = frozenset()
    unk_id: int = 0
    unk_surface: str = " \u2047 "
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = False

    def __post_init__(self) -> None:
        self.piece_to_id = {piece: index for index, piece in enumerate(self.pieces)}

    @classmethod
    def from_proto(cls, proto: Any) -> SentencePieceLayout:
        pieces = [piece.piece for piece in proto.pieces]
        byte_values = {
            index: int(BYTE_PIECE.fullmatch(piece.piece).group(1), 16)
            for index, piece in enumerate(proto.pieces)
            if piece.type == PIECE_BYTE
        }
        unk_ids = [index for index, piece in enumerate(proto.pieces) if piece.type == PIECE_UNKNOWN]
        trainer_spec = proto.trainer_spec
        return cls(
            pieces=pieces,
            byte_values=byte_values,
            control_ids=frozenset(index for index, piece in enumerate(proto.pieces) if piece.type == PIECE_CONTROL),
            unk_id=unk_ids[0] if unk_ids else trainer_spec.unk_id,
            unk_surface=trainer_spec.unk_surface if trainer_spec.HasField("unk_surface") else " \u2047 ",
            add_dummy_prefix=proto.normalizer_spec.add_dummy_prefix,
            remove_extra_whitespaces=proto.normalizer_spec.remove_extra_whitespaces,
        )

    def decode_pieces(self, pieces: list[str]) -> str:
        """Same string as `SentencePieceProcessor.decode(pieces)` (sentencepiece 0.2).

        Byte pieces are joined into UTF-8 one character at a time, a byte that starts no valid character becomes one
        U+FFFD. The "▁" of the first piece is dropped when the model adds a dummy prefix (it is the prefix), unless
        something non-empty was decoded before it.
        """
        out: list[str] = []
        text_is_empty = True
        strip_leading_space = self.add_dummy_prefix or self.remove_extra_whitespaces
        is_bos_ws, bos_ws_seen = True, False
        pending = bytearray()
        for piece in pieces:
            piece_id = self.piece_to_id.get(piece, self.unk_id)
            byte = self.byte_values.get(piece_id)
            if byte is not None:
                pending.append(byte)
                continue
            if pending:
                surface = _decode_utf8_like_sentencepiece(bytes(pending))
                out.append(surface)
                text_is_empty = text_is_empty and not surface
                pending = bytearray()
            if bos_ws_seen or not text_is_empty:
                is_bos_ws = False
            bos_ws_seen = False
            if piece_id in self.control_ids:
                surface = ""
            elif piece_id == self.unk_id:
                # A string that is no piece of the model is written as it is.
                surface = self.unk_surface if piece == self.pieces[self.unk_id] else piece
            else:
                if is_bos_ws and strip_leading_space and piece.startswith(SPIECE_UNDERLINE):
                    piece = piece[1:]
                    bos_ws_seen = not self.remove_extra_whitespaces
                surface = piece.replace(SPIECE_UNDERLINE, " ")
            out.append(surface)
            text_is_empty = text_is_empty and not surface
        if pending:
            out.append(_decode_utf8_like_sentencepiece(bytes(pending)))
        return "".join(out)


def _decode_utf8_like_sentencepiece(data: bytes) -> str:
    """UTF-8 decoding with one U+FFFD per byte that does not start a valid character (sentencepiece's rule).

    Python's `errors="replace"` differs: it replaces a truncated multi-byte sequence by a single U+FFFD.
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    chars: list[str] = []
    offset = 0
    while offset < len(data):
        lead = data[offset]
        if lead < 0x80:
            length = 1
        elif lead & 0xE0 == 0xC0:
            length = 2
        elif lead & 0xF0 == 0xE0:
            length = 3
        elif lead & 0xF8 == 0xF0:
            length = 4
        else:
            length = 0
        if length and offset + length <= len(data):
            try:
                chars.append(data[offset : offset + length].decode("utf-8"))
                offset += length
                continue
            except UnicodeDecodeError:
                pass
        chars.append("\ufffd")
        offset += 1
    return "".join(chars)


def _layout_from_backend(tokenizer: Tokenizer) -> SentencePieceLayout:
    """Decoding tables when only `tokenizer.json` is available (no `tokenizer.model`)."""
    state = json.loads(tokenizer.to_str())
    vocab = state["model"]["vocab"]
    pieces = [""] * (max(vocab.values()) + 1 if vocab else 0)
    for piece, index in vocab.items():
        pieces[index] = piece
    byte_values = {
        index: int(match.group(1), 16) for index, piece in enumerate(pieces) if (match := BYTE_PIECE.fullmatch(piece))
    }
    unk_piece = state["model"].get("unk_token") or "<unk>"
    normalizer = json.dumps(state.get("normalizer"))
    return SentencePieceLayout(
        pieces=pieces,
        byte_values=byte_values,
        control_ids=frozenset(index for index, piece in enumerate(pieces) if piece in ("<s>", "</s>")),
        unk_id=vocab.get(unk_piece, 0),
        add_dummy_prefix='"Prepend"' in normalizer,
    )


class InternLM2TokenizerFast(InternLM2TokenizerMixin, TokenizersBackend):
    """InternLM2 tokenizer backed by the `tokenizers` library, built from the sentencepiece `tokenizer.model`.

    Same ids and same decoded strings as the original `InternLM2Tokenizer` (OpenGVLab/InternLM remote code, which
    InternVL loads with `use_fast=False`): `<s>` first, each piece of text between added tokens encoded on its own
    (dummy prefix per piece), user-defined pieces kept whole, renamed placeholder pieces, and the original's decoding
    (clean-up, spaces around special tokens, byte fallback). This is the class `AutoTokenizer` returns for
    `tokenizer_class: "InternLM2Tokenizer"`.

    Differences from the original, outside what it returns by default: with `split_special_tokens=True` the text of a
    renamed chat token (`<|im_end|>`) still encodes to its id (a warning says so), and the offsets of a literal
    placeholder (`[UNUSED_TOKEN_145]`) in the text point at its last character. `sp_model_kwargs` (sampling) is not
    supported. `use_fast=False` does not select the sentencepiece class (`AutoTokenizer` ignores it in
    transformers 5): instantiate `InternLM2Tokenizer` directly.

    Args:
        vocab_file (`str`, *optional*):
            The sentencepiece model (`tokenizer.model`). Preferred source of the pipeline when present.
        tokenizer_file (`str`, *optional*):
            A `tokenizer.json` written by this class; used when there is no `tokenizer.model`.
        unk_token, bos_token, eos_token, pad_token (`str` or `AddedToken`):
            Special tokens; the original uses `<unk>`, `<s>`, `</s>` and `</s>`.
        add_bos_token (`bool`, defaults to `True`):
            Put `<s>` in front of encoded texts (once for a pair).
        add_eos_token (`bool`, defaults to `False`):
            Put `</s>` after encoded texts.
        decode_with_prefix_space (`bool`, defaults to `False`):
            Kept for compatibility with original configs; unused, as in the original.
        clean_up_tokenization_spaces (`bool`, defaults to `False`):
            Apply the clean-up once more to the joined output of `decode` (each decoded run is cleaned up anyway,
            as in the original).
    """

    vocab_files_names = VOCAB_FILES_NAMES
    slow_tokenizer_class = InternLM2Tokenizer
    model = BPE

    def __init__(
        self,
        vocab_file: str | None = None,
        tokenizer_file: str | None = None,
        unk_token: str | AddedToken = "<unk>",
        bos_token: str | AddedToken = "<s>",
        eos_token: str | AddedToken = "</s>",
        pad_token: str | AddedToken = "</s>",
        add_bos_token: bool = True,
        add_eos_token: bool = False,
        decode_with_prefix_space: bool = False,
        clean_up_tokenization_spaces: bool = False,
        sp_model_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        for key in ("vocab", "merges", "tokenizer_object", "post_processor", "legacy"):
            kwargs.pop(key, None)
        check_special_token_flags(add_bos_token, add_eos_token, kwargs)
        added_tokens_decoder = kwargs.get("added_tokens_decoder") or {}
        if vocab_file is not None and os.path.isfile(vocab_file):
            proto = load_sentencepiece_proto(vocab_file)
            backend = build_internlm2_backend(proto, added_tokens_decoder)
            self._sentencepiece_layout = SentencePieceLayout.from_proto(proto)
            self._renamed_pieces = {
                index: proto.pieces[index].piece for index in renamed_pieces(proto, added_tokens_decoder)
            }
        elif tokenizer_file is not None and os.path.isfile(tokenizer_file):
            backend = Tokenizer.from_file(tokenizer_file)
            backend.post_processor = None
            self._sentencepiece_layout = _layout_from_backend(backend)
            self._renamed_pieces = {}
        else:
            raise ValueError(
                "InternLM2TokenizerFast needs `vocab_file` (the sentencepiece tokenizer.model) or `tokenizer_file` "
                f"(a tokenizer.json written by this class), got vocab_file={vocab_file!r}, "
                f"tokenizer_file={tokenizer_file!r}."
            )
        self.decode_with_prefix_space = decode_with_prefix_space
        if sp_model_kwargs:
            logger.warning_once(
                f"InternLM2TokenizerFast ignores sp_model_kwargs={sp_model_kwargs!r} (sentencepiece sampling options); "
                "use InternLM2Tokenizer for sampled segmentation."
            )
        super().__init__(
            vocab_file=vocab_file,
            tokenizer_object=backend,
            unk_token=unk_token,
            bos_token=bos_token,
            eos_token=eos_token,
            pad_token=pad_token,
            add_bos_token=add_bos_token,
            add_eos_token=add_eos_token,
            decode_with_prefix_space=decode_with_prefix_space,
            clean_up_tokenization_spaces=clean_up_tokenization_spaces,
            **kwargs,
        )
        for index, token in added_tokens_decoder.items():
            got = self._tokenizer.token_to_id(str(token))
            if got != int(index):
                raise ValueError(
                    f"`added_tokens_decoder` puts {str(token)!r} at id {index}, but the tokenizer gave it id {got} "
                    "(added tokens outside the sentencepiece vocabulary must have consecutive ids after it)."
                )
        self.update_post_processor()
        self._loaded = True

    def _add_tokens(self, new_tokens: list[str | AddedToken], special_tokens: bool = False) -> int:
        """Add tokens as the original's `add_tokens` does (transformers 4.x slow tokenizer).

        Every added token is matched on the raw text (`normalized=False` in the Rust pipeline), as the original's
        trie matches it, so the normalizer (" " -> "▁", dummy prefix) runs on each piece of text between added tokens;
        a normalized added token would be looked for with a "▁" in front and never match inside text. A token added as
        special after loading also joins `extra_special_tokens` (the original's `additional_special_tokens`), so
        `decode(..., skip_special_tokens=True)` drops it like the original, once. As there, a str that is already an
        added token is left as it is (`add_tokens(["<x>"], special_tokens=True)` after `add_tokens(["<x>"])` does not
        make it special), and the count returned is that of new ids. Not reproduced: `single_word=True`, which the
        Rust matcher applies at word boundaries while the original's trie glues the token to the text beside it (use
        `InternLM2Tokenizer` for such tokens).
        """
        loaded = getattr(self, "_loaded", False)
        named = set(self.all_special_tokens)
        already_added = set(self.added_tokens_encoder) if loaded else set()
        tokens = [
            AddedToken(token, special=special_tokens or token in named, normalized=False)
            if isinstance(token, str)
            else AddedToken(**{**token.__getstate__(), "special": special_tokens or token.special, "normalized": False})
            for token in new_tokens
            if not (isinstance(token, str) and token in already_added)
        ]
        size = len(self)
        super()._add_tokens(tokens, special_tokens=special_tokens)
        added = len(self) - size  # new ids only: the Rust count includes tokens whose flags were updated
        if loaded:
            for token in tokens:
                if token.special and str(token) not in named:
                    self._extra_special_tokens.append(token)
                    named.add(str(token))
        return added

    def update_post_processor(self) -> None:
        """`<s> $A` for one text and `<s> $A $B` for a pair (the original adds a single BOS), `</s>` last if asked."""
        if getattr(self, "_tokenizer", None) is None:
            return
        bos, eos = self.bos_token, self.eos_token
        add_bos = self.add_bos_token and bos is not None
        add_eos = self.add_eos_token and eos is not None
        prefix = f"{bos}:0 " if add_bos else ""
        suffix = f" {eos}:0" if add_eos else ""
        special_tokens = []
        if add_bos:
            special_tokens.append((bos, self.bos_token_id))
        if add_eos and eos != bos:
            special_tokens.append((eos, self.eos_token_id))
        self._tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{prefix}$A:0{suffix}", pair=f"{prefix}$A:0 $B:0{suffix}", special_tokens=special_tokens
        )

    def _decode_sentencepiece(self, pieces: list[str]) -> str:
        return self._sentencepiece_layout.decode_pieces(pieces)

    def _encode_plus(self, *args: Any, split_special_tokens: bool | None = None, **kwargs: Any) -> Any:
        if self._renamed_pieces and (
            self.split_special_tokens if split_special_tokens is None else split_special_tokens
        ):
            logger.warning_once(
                "InternLM2TokenizerFast with split_special_tokens=True still encodes the text of renamed placeholder "
                f"tokens ({', '.join(repr(str(self.convert_ids_to_tokens(i))) for i in sorted(self._renamed_pieces))}) "
                "to their ids; the original encodes it as plain text. Use InternLM2Tokenizer for that."
            )
        return super()._encode_plus(*args, split_special_tokens=split_special_tokens, **kwargs)

    def tokenize(
        self, text: str, pair: str | None = None, add_special_tokens: bool = False, **kwargs: Any
    ) -> list[str]:
        """Token strings of `text`; a literal placeholder piece in the text (`[UNUSED_TOKEN_145]`) is shown as such."""
        encoding = self._encode_plus(text=text, text_pair=pair, add_special_tokens=add_special_tokens, **kwargs)
        tokens = encoding.tokens()
        if not self._renamed_pieces or not encoding.encodings:
            return tokens
        rust_encoding = encoding.encodings[0]
        for position, (token_id, sequence_id, (start, end)) in enumerate(
            zip(rust_encoding.ids, rust_encoding.sequence_ids, rust_encoding.offsets)
        ):
            piece = self._renamed_pieces.get(token_id)
            source = pair if sequence_id == 1 else text
            # An added token matched in the text spans its own name; the placeholder text does not.
            if piece is not None and source is not None and source[start:end] != tokens[position]:
                tokens[position] = piece
        return tokens


__all__ = ["InternLM2TokenizerFast", "SentencePieceLayout", "build_internlm2_backend"]
