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

The Rust pipeline is assembled so that it encodes exactly like `SentencePieceProcessor.encode` applied to each piece
of text between two added tokens (what the original slow tokenizer does):

* added tokens (`<s>`, chat and InternVL tokens) are matched on the raw text, never absorbing spaces;
* normalizer: " " -> "▁", then one "▁" in front of every piece of text between added tokens when the model has
  `add_dummy_prefix` (a piece that already starts with a space gets a second one, as in sentencepiece), then the
  renamed placeholder pieces (`[UNUSED_TOKEN_145]` -> `<|im_end|>`) so their literal text keeps its id;
* pre-tokenizer: the sentencepiece user-defined pieces are isolated (sentencepiece never merges them), and a word
  that spells a byte or control piece (`<0x41>`, `<s>`) is cut into the pieces sentencepiece makes of it;
* model: BPE over the sentencepiece vocabulary, merges ranked by piece score, byte fallback, whole-word lookup (so
  the isolated user-defined pieces come out whole);
* post-processor: `<s>` in front (one for a pair too).

Decoding is done in Python and reproduces the original's, quirks included (see `InternLM2TokenizerMixin`); the Rust
decoder stored in `tokenizer.json` only serves other libraries that read that file.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE
from transformers.convert_slow_tokenizer import import_protobuf
from transformers.tokenization_utils_base import AddedToken
from transformers.tokenization_utils_tokenizers import TokenizersBackend
from transformers.utils import logging

from .tokenization_internlm2 import InternLM2Tokenizer, InternLM2TokenizerMixin

logger = logging.get_logger(__name__)

VOCAB_FILES_NAMES = {"vocab_file": "tokenizer.model", "tokenizer_file": "tokenizer.json"}

SPIECE_UNDERLINE = "▁"

# sentencepiece ModelProto.SentencePiece.Type and TrainerSpec.ModelType values
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _BYTE = 1, 2, 3, 4, 6
_MODEL_TYPE_BPE = 2
_BYTE_PIECE = re.compile(r"<0x([0-9A-F]{2})>")


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
            index: int(_BYTE_PIECE.fullmatch(piece.piece).group(1), 16)
            for index, piece in enumerate(proto.pieces)
            if piece.type == _BYTE
        }
        unk_ids = [index for index, piece in enumerate(proto.pieces) if piece.type == _UNKNOWN]
        trainer_spec = proto.trainer_spec
        return cls(
            pieces=pieces,
            byte_values=byte_values,
            control_ids=frozenset(index for index, piece in enumerate(proto.pieces) if piece.type == _CONTROL),
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


def _load_sentencepiece_proto(vocab_file: str) -> Any:
    model_pb2 = import_protobuf("InternLM2TokenizerFast reads tokenizer.model with protobuf.")
    proto = model_pb2.ModelProto()
    with open(vocab_file, "rb") as handle:
        proto.ParseFromString(handle.read())
    return proto


def _renamed_pieces(proto: Any, added_tokens_decoder: dict[int, Any]) -> dict[int, str]:
    """Pieces of `tokenizer.model` that `added_tokens_decoder` gives another name (`{598: "<|im_end|>"}`)."""
    pieces = {piece.piece for piece in proto.pieces}
    renamed = {}
    for index, token in added_tokens_decoder.items():
        index, content = int(index), str(token)
        if index < len(proto.pieces) and proto.pieces[index].piece != content:
            if content in pieces:
                raise ValueError(
                    f"`added_tokens_decoder` names id {index} {content!r}, but {content!r} is already piece "
                    f"{[p.piece for p in proto.pieces].index(content)} of the sentencepiece model."
                )
            renamed[index] = content
    return renamed


def _regex_alternation(strings: list[str]) -> str:
    escaped = [re.escape(string) for string in sorted(strings)]
    return escaped[0] if len(escaped) == 1 else f"(?:{'|'.join(escaped)})"


def _whole_word_hazard_pattern(
    proto: Any, vocab: dict[str, int], merges: list[tuple[str, str]], renamed: dict[int, str]
) -> str:
    """Regex that cuts a word which is exactly a "hazard" piece into the pieces sentencepiece would make of it.

    With `ignore_merges` (needed to emit the isolated user-defined pieces whole), `tokenizers`' BPE returns a word
    that is itself in the vocabulary as that one token. For normal pieces sentencepiece's merges reach the same
    token, but not for byte pieces (`<0x41>`), control pieces (`<s>`) or pieces its merges never build: sentencepiece
    encodes a text spelling one of those with its merges, like any other text. For each such hazard, the pattern
    matches every other piece of that merge-only encoding, only when the whole word is the hazard; splitting
    `isolated` on it hands BPE those pieces one by one.
    """
    merge_only = BPE(
        vocab=vocab,
        merges=merges,
        unk_token=proto.trainer_spec.unk_piece or "<unk>",
        fuse_unk=True,
        byte_fallback=proto.trainer_spec.byte_fallback,
        dropout=None,
    )
    # (start, piece) -> text before it -> texts after it, for the pieces to isolate
    cuts_by_piece: dict[tuple[int, str], dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    longest = 0
    for index, piece in enumerate(proto.pieces):
        if piece.type == _USER_DEFINED:
            continue
        word = renamed.get(index, piece.piece)
        tokens = merge_only.tokenize(word)
        if [token.id for token in tokens] == [index]:
            continue
        # Cut points between tokens (the byte-fallback tokens of one character share its offsets).
        cuts = sorted({0, len(word)} | {token.offsets[0] for token in tokens})
        segments = [word[start:end] for start, end in itertools.pairwise(cuts)]
        if len(segments) < 2:
            continue
        longest = max(longest, len(word))
        # Isolating every other piece puts a boundary between every two pieces.
        for position in range(0, len(segments), 2):
            before, after = "".join(segments[:position]), "".join(segments[position + 1 :])
            cuts_by_piece[(len(before), segments[position])][before].add(after)
    alternatives = []
    for (start, segment), afters_by_before in sorted(cuts_by_piece.items()):
        # Befores that share the same set of afters form one alternative (their cross product is exact).
        befores_by_afters: dict[frozenset[str], list[str]] = defaultdict(list)
        for before, afters in afters_by_before.items():
            befores_by_afters[frozenset(afters)].append(before)
        for afters, befores in sorted(befores_by_afters.items(), key=lambda item: sorted(item[1])):
            behind = f"(?<=\\A{_regex_alternation(befores)})" if start else "\\A"
            ahead = "\\z" if afters == {""} else f"(?={_regex_alternation(list(afters))}\\z)"
            alternatives.append(f"{behind}{re.escape(segment)}{ahead}")
    if not alternatives:
        return ""
    # Matches start within the first few characters of a word: fail fast everywhere else.
    return f"(?<![\\s\\S]{{{longest}}})(?:{'|'.join(alternatives)})"


def build_internlm2_backend(proto: Any, added_tokens_decoder: dict[int, Any] | None = None) -> Tokenizer:
    """The Rust tokenizer that encodes like the original InternLM2 tokenizer (without its added tokens).

    Args:
        proto: the parsed sentencepiece `ModelProto` of `tokenizer.model` (a BPE model).
        added_tokens_decoder: `{id: token}` from `tokenizer_config.json`; ids inside the sentencepiece vocabulary
            whose token differs from the piece rename that piece.
    """
    if proto.trainer_spec.model_type != _MODEL_TYPE_BPE:
        raise ValueError(
            "InternLM2TokenizerFast needs a sentencepiece BPE model (trainer_spec.model_type 2), got model_type "
            f"{proto.trainer_spec.model_type}; use InternLM2Tokenizer for other sentencepiece models."
        )
    normalizer_spec = proto.normalizer_spec
    renamed = _renamed_pieces(proto, added_tokens_decoder or {})
    vocab = {renamed.get(index, piece.piece): index for index, piece in enumerate(proto.pieces)}

    # sentencepiece BPE merges the adjacent pair whose concatenation is the highest-scoring normal piece
    # (leftmost first on ties); listing every split of every normal piece into two normal pieces, ranked by
    # the score of the result, makes `tokenizers`' BPE take the same steps.
    normal = {
        piece.piece: (piece.score, index)
        for index, piece in enumerate(proto.pieces)
        if piece.type == _NORMAL and index not in renamed
    }
    ranked = []
    for merged, (score, index) in normal.items():
        for split in range(1, len(merged)):
            left, right = merged[:split], merged[split:]
            if left in normal and right in normal:
                ranked.append((-score, index, split, left, right))
    merges = [(left, right) for *_, left, right in sorted(ranked)]

    user_defined = [
        renamed.get(index, piece.piece) for index, piece in enumerate(proto.pieces) if piece.type == _USER_DEFINED
    ]
    tokenizer = Tokenizer(
        BPE(
            vocab=vocab,
            merges=merges,
            unk_token=proto.trainer_spec.unk_piece or "<unk>",
            fuse_unk=True,
            byte_fallback=proto.trainer_spec.byte_fallback,
            dropout=None,
            # Emits the isolated user-defined pieces whole. A word that is a normal piece is what sentencepiece's
            # merges make of it anyway; the other pieces (bytes, controls) are cut up by the hazard pre-tokenizer.
            ignore_merges=bool(user_defined),
        )
    )

    steps: list[normalizers.Normalizer] = []
    if normalizer_spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(normalizer_spec.precompiled_charsmap))
    if normalizer_spec.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if normalizer_spec.escape_whitespaces:
        steps.append(normalizers.Replace(" ", SPIECE_UNDERLINE))
    if normalizer_spec.add_dummy_prefix:
        # Runs once per piece of text between added tokens, like the original's per-piece sentencepiece call.
        steps.append(normalizers.Prepend(SPIECE_UNDERLINE))
    for index, name in sorted(renamed.items()):
        # The literal placeholder text still encodes to its id; `tokenize` shows the new name for it.
        steps.append(normalizers.Replace(proto.pieces[index].piece, name))
    tokenizer.normalizer = normalizers.Sequence(steps)

    if user_defined:
        pattern = "|".join(re.escape(piece) for piece in sorted(user_defined, key=len, reverse=True))
        steps_pre = [pre_tokenizers.Split(Regex(pattern), behavior="isolated")]
        hazard_pattern = _whole_word_hazard_pattern(proto, vocab, merges, renamed)
        if hazard_pattern:
            steps_pre.append(pre_tokenizers.Split(Regex(hazard_pattern), behavior="isolated"))
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(steps_pre)

    steps_out: list[decoders.Decoder] = [decoders.Replace(SPIECE_UNDERLINE, " ")]
    if proto.trainer_spec.byte_fallback:
        steps_out.append(decoders.ByteFallback())
    steps_out.append(decoders.Fuse())
    if normalizer_spec.add_dummy_prefix:
        steps_out.append(decoders.Strip(content=" ", left=1, right=0))
    tokenizer.decoder = decoders.Sequence(steps_out)
    return tokenizer


def _layout_from_backend(tokenizer: Tokenizer) -> SentencePieceLayout:
    """Decoding tables when only `tokenizer.json` is available (no `tokenizer.model`)."""
    state = json.loads(tokenizer.to_str())
    vocab = state["model"]["vocab"]
    pieces = [""] * (max(vocab.values()) + 1 if vocab else 0)
    for piece, index in vocab.items():
        pieces[index] = piece
    byte_values = {
        index: int(match.group(1), 16) for index, piece in enumerate(pieces) if (match := _BYTE_PIECE.fullmatch(piece))
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
    model_input_names = ["input_ids", "attention_mask"]
    padding_side = "right"
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
        added_tokens_decoder = kwargs.get("added_tokens_decoder") or {}
        if vocab_file is not None and os.path.isfile(vocab_file):
            proto = _load_sentencepiece_proto(vocab_file)
            backend = build_internlm2_backend(proto, added_tokens_decoder)
            self._sentencepiece_layout = SentencePieceLayout.from_proto(proto)
            self._renamed_pieces = {
                index: proto.pieces[index].piece for index in _renamed_pieces(proto, added_tokens_decoder)
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

    def _save_pretrained(
        self,
        save_directory: str | os.PathLike,
        file_names: tuple[str, ...],
        legacy_format: bool | None = None,
        filename_prefix: str | None = None,
    ) -> tuple[str, ...]:
        """Write `tokenizer.json` and, when this tokenizer was built from one, a copy of `tokenizer.model`.

        The copy keeps the saved folder loadable by `InternLM2Tokenizer` and by the original remote code.
        """
        file_names = super()._save_pretrained(
            save_directory, file_names, legacy_format=legacy_format, filename_prefix=filename_prefix
        )
        if getattr(self, "vocab_file", None) and os.path.isfile(self.vocab_file):
            file_names = file_names + tuple(self.save_vocabulary(str(save_directory), filename_prefix=filename_prefix))
        return file_names

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
