"""`--to hf` of a sentencepiece Llama tokenizer (Phi-3: InternVL2-4B, Mini-InternVL-Chat-4B-V1-5; Yi:
InternVL-Chat-V1-2, InternVL2-40B), legacy or not: a tokenizer.json decoder that decodes as transformers 4's slow
`LlamaTokenizer`, which the original loads (`use_fast=False`), under plain transformers (the `-hf` folder loads as
`TokenizersBackend`, which keeps tokenizer.json's decoder; transformers 5's `LlamaTokenizer` would build its own).

The slow class (transformers 4.47.1, `PreTrainedTokenizer._decode` and `LlamaTokenizer.convert_tokens_to_string`;
this package's `llama_slow_tokenization.decode_as_original` does the same in Python):
- `skip_special_tokens` drops only `all_special_tokens` (bos / eos / unk / pad and `additional_special_tokens`); other
  added tokens (Phi-3's chat tokens) stay;
- the text is cut at its "added" tokens (added tokens outside `all_special_tokens`, and `additional_special_tokens`
  past the sentencepiece vocabulary: InternVL's `<img>` ...); the pieces and those tokens are joined with single
  spaces, an empty piece is left out (unless it ends the text);
- in each piece, the first token loses one "▁"; a special token (`<s>`, `</s>`, `<unk>`) that follows text gets a
  space put before that text (legacy mode); a token without "▁" right after a special token that starts the piece gets
  a space before it; each run of text between special tokens is decoded by sentencepiece, which drops one "▁" from
  its first piece (its dummy prefix; legacy mode) and reads runs of byte pieces as UTF-8.

A tokenizers decoder sees only the token strings (after `skip_special_tokens` removed the added tokens flagged
`special`), so `slow_llama_decoder` first tags each token with a private-use character by its kind (added, special,
byte, other; the token sets are fixed when converting), fuses them into one string and then applies the rules above
as regular-expression replacements on that string (`Replace` decoders; their patterns are Oniguruma's, with
look-behind), before it drops the tags. `write_slow_decoding` also sets the `special` flag of each added token of
tokenizer.json to the slow class's `all_special_tokens`, which is what `skip_special_tokens` drops.

Known difference: tokenizers' `ByteFallback` reads a run of byte pieces as UTF-8 only when the whole run is valid,
else writes U+FFFD for every byte of it; sentencepiece writes U+FFFD only for the bytes that are not part of a valid
character. ASCII byte pieces (`<0x0A>` ...) are decoded on their own, so the run ends there as in sentencepiece; a run
of non-ASCII bytes with a cut or invalid sequence and a valid character in it (an answer cut inside a character that
follows characters made of byte pieces) still differs. tokenizers' other byte decoder (`ByteLevel`) writes one U+FFFD
per invalid sequence, not per byte, and needs 256 replacements per token (about 60 times slower).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from transformers.utils import logging

from ..converted_llama_tokenizer import SPIECE_UNDERLINE
from .checkpoint_io import read_json, write_tokenizer_json

logger = logging.get_logger(__name__)

# Tags (private use plane 15, never in a vocabulary the conversion accepts: `tags_in`).
SPACE, ADDED, ADDED_END, SPECIAL, SPECIAL_END, TEXT, BYTE, JOIN, ASCII = (chr(0xF0000 + i) for i in range(9))
TAGS = SPACE + ADDED + ADDED_END + SPECIAL + SPECIAL_END + TEXT + BYTE + JOIN + ASCII
_BYTE_TOKEN = r"<0x[0-9A-F]{2}>"


def _literal(text: str) -> str:
    """`text` as an Oniguruma pattern (every ASCII character that is not a letter or digit escaped)."""
    return "".join(c if c.isalnum() or ord(c) > 127 or c == "_" else "\\" + c for c in text)


def _regex(pattern: str, content: str) -> dict[str, Any]:
    return {"type": "Replace", "pattern": {"Regex": pattern}, "content": content}


def _string(pattern: str, content: str) -> dict[str, Any]:
    return {"type": "Replace", "pattern": {"String": pattern}, "content": content}


def _alternatives(tokens: Iterable[str]) -> str:
    return "|".join(_literal(token.replace(SPIECE_UNDERLINE, SPACE)) for token in sorted(tokens, key=len, reverse=True))


def tags_in(texts: Iterable[str]) -> list[str]:
    """The texts among `texts` (vocabulary pieces, added tokens) that hold one of the decoder's tags."""
    return [text for text in texts if any(tag in text for tag in TAGS)]


def slow_llama_decoder(
    pieces: Iterable[str], special: set[str], added: set[str], legacy: bool = True
) -> dict[str, Any]:
    """The tokenizer.json `decoder` that decodes as transformers 4's slow `LlamaTokenizer` (module docstring).

    Args:
        pieces: the sentencepiece model's pieces (tokenizer.json's model vocabulary).
        special: the slow class's `all_special_tokens`.
        added: the tokens the slow class decodes as added tokens (`llama_slow_tokenization._decode_token_sets`).
        legacy: the slow class's `legacy` mode (a space before special tokens, sentencepiece's dummy prefix).
    """
    steps = [_string(SPIECE_UNDERLINE, SPACE)]
    inside = special - added
    for tokens, start, end in ((added, ADDED, ADDED_END), (inside, SPECIAL, SPECIAL_END)):
        if tokens:
            choices = _alternatives(tokens)
            steps.append(_regex(rf"\A(?=(?:{choices})\z)", start))
            steps.append(_regex(rf"(?<=\A{start}(?:{choices}))\z", end))
    # ASCII byte pieces are decoded after fusing, so that a run of byte pieces ends before them, as in sentencepiece
    steps.append(_regex(r"\A(?=<0x[0-7][0-9A-F]>\z)", ASCII))
    steps.append(_regex(rf"\A(?![{ADDED}{SPECIAL}{ASCII}]|{_BYTE_TOKEN}\z)", TEXT))
    steps.append({"type": "ByteFallback"})
    steps.append(_regex(rf"\A(?=[^{ADDED}{SPECIAL}{TEXT}{ASCII}])", BYTE))
    steps.append({"type": "Fuse"})
    steps += [_string(f"{ASCII}<0x{byte:02X}>", BYTE + chr(byte)) for byte in range(128)]
    piece_start = rf"(?:\A|(?<={ADDED_END}))"
    # the first token of a piece loses one "▁"; sentencepiece writes a token that is then no piece as it is
    vocabulary = set(pieces)
    token_end = rf"(?=[{ADDED}{SPECIAL}{TEXT}{BYTE}]|\z)"
    for piece in sorted(vocabulary, key=lambda piece: (-len(piece), piece)):
        rest = piece[1:]
        if piece.startswith(SPIECE_UNDERLINE) and SPIECE_UNDERLINE in rest and rest not in vocabulary:
            pattern = piece_start + TEXT + _literal(piece.replace(SPIECE_UNDERLINE, SPACE)) + token_end
            steps.append(_regex(pattern, TEXT + rest))
    steps.append(_regex(piece_start + TEXT + SPACE, TEXT))
    if inside:  # a space before a token without "▁" that follows a special token starting the piece
        behind = "|".join(
            f"{where}{SPECIAL}{_literal(token.replace(SPIECE_UNDERLINE, SPACE))}{SPECIAL_END}"
            for token in sorted(inside)
            for where in (r"\A", ADDED_END)
        )
        steps.append(_regex(rf"(?<={behind})(?={TEXT}(?!{SPACE})|{BYTE})", " "))
    if legacy:
        # sentencepiece's dummy prefix: one "▁" off the first non-empty piece of each run between special tokens
        first = "|".join(f"{where}{TEXT}{empty}" for where in (r"\A", ADDED_END, SPECIAL_END) for empty in ("", TEXT))
        steps.append(_regex(f"(?<={first}){SPACE}", ""))
        # a special token after text: the slow class puts a space before that run of text
        steps.append(_regex(rf"(?:\A|(?<=[{ADDED_END}{SPECIAL_END}]))(?=[^{SPECIAL}{ADDED}]+{SPECIAL})", " "))
    # added tokens and the pieces between them are joined with single spaces; empty pieces are left out
    steps.append(_regex(f"(?={ADDED})", JOIN))
    steps.append(_regex(rf"(?<={ADDED_END})(?!\z)", JOIN))
    steps.append(_regex(f"{JOIN}(?:{TEXT}*{JOIN})+", JOIN))
    steps.append(_regex(rf"\A{TEXT}*{JOIN}", ""))
    steps.append(_string(SPACE, " "))
    steps.append(_string(JOIN, " "))
    steps.append(_regex(f"[{TAGS}]", ""))
    return {"type": "Sequence", "decoders": steps}


def write_slow_decoding(folder: Path, reference: Any, new_tokens: Iterable[str] = ()) -> bool:
    """Give the saved `-hf` tokenizer.json in `folder` the slow class's decoding (module docstring): its `decoder`,
    and `special` on exactly the added tokens that the slow class's `skip_special_tokens` drops. `reference`: the
    source tokenizer (the slow class's token sets, `llama_slow_tokenization`); `new_tokens`: tokens the conversion
    added (`<video>`), decoded as added tokens. Returns False, leaving the file as it is with a warning, when a
    vocabulary piece or added token holds one of the decoder's tags (private-use characters U+F0000-U+F0008)."""
    from ..llama_slow_tokenization import _decode_token_sets, slow_llama_mode

    path = folder / "tokenizer.json"
    tokenizer = read_json(path, "tokenizer file")
    vocabulary = tokenizer.get("model", {}).get("vocab") or {}
    pieces = list(vocabulary) if isinstance(vocabulary, dict) else [entry[0] for entry in vocabulary]
    entries = tokenizer.get("added_tokens") or []
    clashes = tags_in(pieces + [entry.get("content", "") for entry in entries])
    if clashes:
        logger.warning(
            f"the tokenizer's vocabulary holds private-use characters that the slow-class decoder uses as tags "
            f"({clashes[0]!r}); the -hf tokenizer keeps transformers' decoding, which differs from the original's "
            "around special tokens"
        )
        return False
    special, _, added = _decode_token_sets(reference)
    added = set(added) | set(new_tokens)
    legacy = slow_llama_mode(reference) == "legacy"
    tokenizer["decoder"] = slow_llama_decoder(pieces, set(special), added, legacy=legacy)
    for entry in entries:
        entry["special"] = entry.get("content") in special
    write_tokenizer_json(path, tokenizer)
    return True


def check_decoding(reference: Any, converted: Any, texts: Iterable[str]) -> None:
    """Warn, naming the first one, when the converted tokenizer decodes the ids of `texts` (and every added token
    between two words) otherwise than the slow class (`llama_slow_tokenization.decode_as_original` on the source
    tokenizer `reference`), with and without `skip_special_tokens`."""
    from ..llama_slow_tokenization import decode_as_original, encode_as_original

    rows = encode_as_original(reference, list(texts))["input_ids"]
    words = encode_as_original(reference, ["a b"], add_special_tokens=False)["input_ids"][0]
    rows.append([index for token_id in sorted(reference.added_tokens_decoder) for index in (token_id, *words)])
    for ids in rows:
        for skip in (False, True):
            expected = decode_as_original(reference, ids, skip_special_tokens=skip)
            got = converted.decode(ids, skip_special_tokens=skip)
            if got != expected:
                logger.warning(
                    f"the -hf tokenizer decodes {ids} (skip_special_tokens={skip}) as {got!r}, the original's slow "
                    f"tokenizer as {expected!r}"
                )
                return


__all__ = ["TAGS", "check_decoding", "slow_llama_decoder", "tags_in", "write_slow_decoding"]
