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
"""The `tokenizers` pipeline that encodes like the original InternLM2 tokenizer, built from its sentencepiece model.

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
* post-processor: `<s>` in front (one for a pair too), set by `InternLM2TokenizerFast.update_post_processor`.

The Rust decoder built here only serves other libraries that read `tokenizer.json`; `InternLM2TokenizerFast` decodes
in Python (`tokenization_internlm2_fast.SentencePieceLayout`).
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from transformers.convert_slow_tokenizer import import_protobuf

SPIECE_UNDERLINE = "▁"

# sentencepiece ModelProto.SentencePiece.Type and TrainerSpec.ModelType values
PIECE_NORMAL, PIECE_UNKNOWN, PIECE_CONTROL, PIECE_USER_DEFINED, PIECE_BYTE = 1, 2, 3, 4, 6
MODEL_TYPE_BPE = 2
BYTE_PIECE = re.compile(r"<0x([0-9A-F]{2})>")


def load_sentencepiece_proto(vocab_file: str) -> Any:
    """The parsed sentencepiece `ModelProto` of `vocab_file` (`tokenizer.model`); needs protobuf.

    Raises:
        ValueError: naming the file, when it is not a sentencepiece model or holds no pieces (a truncated or empty
            file: protobuf's own error names neither the file nor the cause, and an empty file parses as an empty
            model of another type).
    """
    from google.protobuf.message import DecodeError

    model_pb2 = import_protobuf("InternLM2TokenizerFast reads tokenizer.model with protobuf.")
    proto = model_pb2.ModelProto()
    with open(vocab_file, "rb") as handle:
        data = handle.read()
    try:
        proto.ParseFromString(data)
    except DecodeError as error:
        raise ValueError(
            f"{vocab_file} ({len(data)} bytes) is not a valid sentencepiece model (tokenizer.model): {error}; the file "
            f"is damaged or truncated."
        ) from error
    if not proto.pieces:
        raise ValueError(
            f"{vocab_file} ({len(data)} bytes) holds no sentencepiece pieces; expected the sentencepiece model "
            f"(tokenizer.model) of the checkpoint, the file is empty or damaged."
        )
    return proto


def renamed_pieces(proto: Any, added_tokens_decoder: dict[int, Any]) -> dict[int, str]:
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


def _sentencepiece_bpe(proto: Any, vocab: dict[str, int], merges: list[tuple[str, str]], ignore_merges: bool) -> BPE:
    """`tokenizers`' BPE over the sentencepiece vocabulary and merges, with its unknown piece and byte fallback."""
    return BPE(
        vocab=vocab,
        merges=merges,
        unk_token=proto.trainer_spec.unk_piece or "<unk>",
        fuse_unk=True,
        byte_fallback=proto.trainer_spec.byte_fallback,
        dropout=None,
        ignore_merges=ignore_merges,
    )


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
    merge_only = _sentencepiece_bpe(proto, vocab, merges, ignore_merges=False)
    # (start, piece) -> text before it -> texts after it, for the pieces to isolate
    cuts_by_piece: dict[tuple[int, str], dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    longest = 0
    for index, piece in enumerate(proto.pieces):
        if piece.type == PIECE_USER_DEFINED:
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
    if proto.trainer_spec.model_type != MODEL_TYPE_BPE:
        raise ValueError(
            "InternLM2TokenizerFast needs a sentencepiece BPE model (trainer_spec.model_type 2), got model_type "
            f"{proto.trainer_spec.model_type}; use InternLM2Tokenizer for other sentencepiece models."
        )
    normalizer_spec = proto.normalizer_spec
    renamed = renamed_pieces(proto, added_tokens_decoder or {})
    vocab = {renamed.get(index, piece.piece): index for index, piece in enumerate(proto.pieces)}

    # sentencepiece BPE merges the adjacent pair whose concatenation is the highest-scoring normal piece
    # (leftmost first on ties); listing every split of every normal piece into two normal pieces, ranked by
    # the score of the result, makes `tokenizers`' BPE take the same steps.
    normal = {
        piece.piece: (piece.score, index)
        for index, piece in enumerate(proto.pieces)
        if piece.type == PIECE_NORMAL and index not in renamed
    }
    ranked = []
    for merged, (score, index) in normal.items():
        for split in range(1, len(merged)):
            left, right = merged[:split], merged[split:]
            if left in normal and right in normal:
                ranked.append((-score, index, split, left, right))
    merges = [(left, right) for *_, left, right in sorted(ranked)]

    user_defined = [
        renamed.get(index, piece.piece) for index, piece in enumerate(proto.pieces) if piece.type == PIECE_USER_DEFINED
    ]
    # Emits the isolated user-defined pieces whole. A word that is a normal piece is what sentencepiece's merges make
    # of it anyway; the other pieces (bytes, controls) are cut up by the hazard pre-tokenizer.
    tokenizer = Tokenizer(_sentencepiece_bpe(proto, vocab, merges, ignore_merges=bool(user_defined)))

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


__all__ = [
    "BYTE_PIECE",
    "MODEL_TYPE_BPE",
    "PIECE_BYTE",
    "PIECE_CONTROL",
    "PIECE_NORMAL",
    "PIECE_UNKNOWN",
    "PIECE_USER_DEFINED",
    "SPIECE_UNDERLINE",
    "build_internlm2_backend",
    "load_sentencepiece_proto",
    "renamed_pieces",
]
