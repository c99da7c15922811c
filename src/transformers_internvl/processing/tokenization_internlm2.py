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
"""SentencePiece-backed tokenizer for InternLM2, the language model of InternVL 2.5-26B/38B/78B (and -8B/-2B).

Original InternLM2 checkpoints ship a sentencepiece `tokenizer.model` and a `tokenizer_config.json` that names
`InternLM2Tokenizer` through remote code. This module reproduces that tokenizer natively, quirks included:

* `<s>` is put in front of every encoded text (also of an empty one and of a text pair), never `</s>`;
* the text is cut at every added token (`<s>`, `<|im_end|>`, `<img>`, ...) and each piece in between is encoded by
  sentencepiece on its own, so with `add_dummy_prefix` every such piece gets its own leading "▁";
* sentencepiece user-defined pieces (`——`, `[UNUSED_TOKEN_145]`, ...) are single tokens wherever they occur, and the
  chat tokens are placeholder pieces renamed through `added_tokens_decoder` (`[UNUSED_TOKEN_145]` is `<|im_end|>`);
* decoding applies transformers' `clean_up_tokenization` (" ." -> "."), always, and with special tokens kept writes
  a space before the first of every run of `<s>`/`</s>`/`<unk>`/chat tokens and joins around the other added tokens
  (`<img>`, `<IMG_CONTEXT>`, ...) with single spaces.

The `tokenizers`-backed twin is `InternLM2TokenizerFast` (`tokenization_internlm2_fast.py`); both give identical ids
and identical decoded strings.
"""

from __future__ import annotations

import json
import os
from typing import Any

from transformers.tokenization_utils_base import AddedToken
from transformers.tokenization_utils_sentencepiece import SentencePieceBackend
from transformers.utils import logging

from ..atomic_save import save_folder_atomically

logger = logging.get_logger(__name__)

VOCAB_FILES_NAMES = {"vocab_file": "tokenizer.model"}


def clean_up_tokenization(text: str) -> str:
    """The English clean-up the original InternLM2 tokenizer applies to every decoded string (" ." -> ".", " n't"...).

    Same replacements, in the same order, as transformers' `PreTrainedTokenizerBase.clean_up_tokenization`; kept here
    so the decoded text does not depend on that helper staying unchanged.
    """
    return (
        text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
    )


def _bos_eos_from_tokenizer_file(tokenizer_file: str) -> tuple[bool, bool] | None:
    """`(add_bos_token, add_eos_token)` as written in the template post-processor of a saved `tokenizer.json`."""
    with open(tokenizer_file, encoding="utf-8") as handle:
        post_processor = json.load(handle).get("post_processor") or {}
    if post_processor.get("type") != "TemplateProcessing":
        return None
    single = post_processor.get("single") or []
    is_special = ["SpecialToken" in item for item in single]
    if not any("Sequence" in item for item in single):
        return None
    sequence_at = next(i for i, item in enumerate(single) if "Sequence" in item)
    return any(is_special[:sequence_at]), any(is_special[sequence_at + 1 :])


def _write_original_token_keys(tokenizer_config: dict[str, Any], added_tokens_decoder: dict[int, Any]) -> None:
    """Store the added tokens under the keys the original remote code reads (transformers 4.x), in place.

    `added_tokens_decoder` (`{"598": {"content": "<|im_end|>", ...}}`) renames the placeholder pieces; without it the
    original would add the chat tokens as new ids. The extra special tokens go to `additional_special_tokens`:
    transformers 4.x reads `extra_special_tokens` as a dict of named tokens and fails on the list transformers 5
    writes there; transformers 5 reads either key.
    """
    tokenizer_config["added_tokens_decoder"] = {
        str(index): token.__getstate__() for index, token in sorted(added_tokens_decoder.items())
    }
    extra = tokenizer_config.get("extra_special_tokens")
    if isinstance(extra, list):
        tokenizer_config["additional_special_tokens"] = tokenizer_config.pop("extra_special_tokens")


def check_special_token_flags(add_bos_token: object, add_eos_token: object, kwargs: dict[str, Any]) -> None:
    """Refuse an `add_bos_token` / `add_eos_token` (tokenizer_config.json or keyword) that is not a bool (0 and 1 pass:
    the original reads the flags by truth value). transformers
    takes a string value (`"add_bos_token": "false"`) for a special token of that name
    (`model_specific_special_tokens`) and the flag kept its default, so a BOS was added to every text that the file
    asks to leave without one.

    Raises:
        TypeError: naming the option and the value given.
    """
    taken_for_tokens = kwargs.get("model_specific_special_tokens") or {}
    for name, value in (("add_bos_token", add_bos_token), ("add_eos_token", add_eos_token)):
        value = taken_for_tokens.get(name, value)
        if not isinstance(value, bool) and not (type(value) is int and value in (0, 1)):
            raise TypeError(
                f"`{name}` (tokenizer_config.json or keyword) must be true or false, got {value!r} "
                f"({type(value).__name__})."
            )


class InternLM2TokenizerMixin:
    """Special-token layout and decoding of the original InternLM2 tokenizer, shared by the slow and the fast class.

    The host class provides `_decode_sentencepiece(pieces)`: what `SentencePieceProcessor.decode(pieces)` returns for
    a list of sentencepiece piece strings.
    """

    add_bos_token: bool
    add_eos_token: bool
    model_input_names = ["input_ids", "attention_mask"]
    padding_side = "right"

    def _decode_sentencepiece(self, pieces: list[str]) -> str:
        raise NotImplementedError

    @classmethod
    def convert_to_native_format(cls, trust_remote_code: bool = False, **kwargs: Any) -> dict[str, Any]:
        """Recover `add_bos_token`/`add_eos_token` when loading a folder that has a `tokenizer.json`.

        `from_pretrained` drops both from `tokenizer_config.json` when a `tokenizer.json` exists; its template
        post-processor has them.
        """
        tokenizer_file = kwargs.get("tokenizer_file")
        if tokenizer_file and os.path.isfile(tokenizer_file) and "add_bos_token" not in kwargs:
            flags = _bos_eos_from_tokenizer_file(tokenizer_file)
            if flags is not None:
                kwargs.setdefault("add_bos_token", flags[0])
                kwargs.setdefault("add_eos_token", flags[1])
        return kwargs

    # ---- special tokens around sequences ----

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """`[<s>] + ids_0 (+ ids_1) (+ [</s>])`: one BOS in front, also for a pair, and an EOS only if `add_eos_token`."""
        bos = [self.bos_token_id] if self.add_bos_token else []
        eos = [self.eos_token_id] if self.add_eos_token else []
        return bos + token_ids_0 + (token_ids_1 or []) + eos

    def get_special_tokens_mask(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None, already_has_special_tokens: bool = False
    ) -> list[int]:
        """1 for the BOS/EOS that `build_inputs_with_special_tokens` adds, 0 for the sequence tokens.

        The original returns one element more than there are ids (it counts an EOS it never adds); this mask has the
        length of the ids.
        """
        if already_has_special_tokens:
            return super().get_special_tokens_mask(
                token_ids_0=token_ids_0, token_ids_1=token_ids_1, already_has_special_tokens=True
            )
        bos = [1] if self.add_bos_token else []
        eos = [1] if self.add_eos_token else []
        return bos + [0] * (len(token_ids_0) + len(token_ids_1 or [])) + eos

    def create_token_type_ids_from_sequences(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """All zeros (InternLM2 has no token types), one per id of `build_inputs_with_special_tokens`."""
        return [0] * len(self.build_inputs_with_special_tokens(token_ids_0, token_ids_1))

    # ---- saving ----

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> tuple[str, ...]:
        """`save_pretrained` of transformers, atomic (`atomic_save.save_folder_atomically`): written to a temporary
        folder beside `save_directory` and swapped in, so a failed or interrupted save (disk full, Ctrl-C) leaves the
        old folder as it was; the folder's other files (a model's weights and config) are kept.

        Raises:
            OSError: `save_directory` is a file, or writing fails (the old folder is left untouched).
        """
        return save_folder_atomically(super().save_pretrained, save_directory, *args, **kwargs)

    def _save_pretrained(
        self,
        save_directory: str | os.PathLike,
        file_names: tuple[str, ...],
        legacy_format: bool | None = None,
        filename_prefix: str | None = None,
    ) -> tuple[str, ...]:
        """Save the vocabulary files, and put `add_bos_token`/`add_eos_token` back into `tokenizer_config.json`.

        transformers 5 leaves both out of `tokenizer_config.json` (it expects them in the post-processor of a
        `tokenizer.json`); original checkpoints have them there, and the sentencepiece class reads them only there.
        The added tokens are written the way the original reads them too (`_write_original_token_keys`).
        A `tokenizer.json`-backed tokenizer built from a `tokenizer.model` also writes a copy of that file, which keeps
        the saved folder loadable by `InternLM2Tokenizer` and by the original remote code.
        """
        file_names = super()._save_pretrained(
            save_directory, file_names, legacy_format=legacy_format, filename_prefix=filename_prefix
        )
        vocab_file = getattr(self, "vocab_file", None)
        vocab_saved = any(os.path.basename(name).endswith(VOCAB_FILES_NAMES["vocab_file"]) for name in file_names)
        if vocab_file and os.path.isfile(vocab_file) and not vocab_saved:
            file_names = file_names + tuple(self.save_vocabulary(str(save_directory), filename_prefix=filename_prefix))
        config_file = os.path.join(
            str(save_directory), (filename_prefix + "-" if filename_prefix else "") + "tokenizer_config.json"
        )
        if os.path.isfile(config_file):
            with open(config_file, encoding="utf-8") as handle:
                tokenizer_config = json.load(handle)
            tokenizer_config["add_bos_token"] = bool(self.add_bos_token)
            tokenizer_config["add_eos_token"] = bool(self.add_eos_token)
            _write_original_token_keys(tokenizer_config, self.added_tokens_decoder)
            temporary_file = f"{config_file}.tmp-{os.getpid()}"
            with open(temporary_file, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(tokenizer_config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
            os.replace(temporary_file, config_file)
        return file_names

    # ---- decoding ----

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Decode tokens the way the original `InternLM2Tokenizer.convert_tokens_to_string` does.

        Runs of ordinary tokens are decoded by sentencepiece (each run on its own: with `add_dummy_prefix` the "▁" of
        the first piece of every run is dropped). A special token (`<s>`, `</s>`, `<unk>`, chat tokens, ...) is
        written verbatim, preceded by a space when the token before it was not special. The result goes through
        `clean_up_tokenization`.
        """
        special_tokens = set(self.all_special_tokens)
        out_string = ""
        run: list[str] = []
        prev_is_special = False
        for token in tokens:
            if token in special_tokens:
                if not prev_is_special:
                    out_string += " "
                out_string += self._decode_sentencepiece(run) + token
                prev_is_special = True
                run = []
            else:
                run.append(token)
                prev_is_special = False
        out_string += self._decode_sentencepiece(run)
        # The original then prepends a space and drops the first character again: a no-op.
        return clean_up_tokenization(out_string)

    def _decode(
        self,
        token_ids: int | list[int],
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
        spaces_between_special_tokens: bool = True,
        **kwargs: Any,
    ) -> str:
        """`decode` of the original (transformers 4.x slow-tokenizer `_decode` + `convert_tokens_to_string`).

        Added tokens that are not special, and special tokens whose id is at or above the sentencepiece vocabulary
        size (the InternVL tokens `<img>`, `<IMG_CONTEXT>`, ...), split the text: the parts around them are decoded
        separately and everything is joined with single spaces (`spaces_between_special_tokens=True`).
        """
        kwargs.pop("use_source_tokenizer", None)
        token_ids = [int(token_ids)] if isinstance(token_ids, int) else [int(token_id) for token_id in token_ids]
        size = len(self)
        for token_id in token_ids:
            if not 0 <= token_id < size:
                raise ValueError(
                    f"`token_ids` must be ids of this tokenizer (0 to {size - 1}), got {token_id}; drop padding or "
                    "label values such as -100 before decoding. If a model generated it, the model's vocabulary "
                    "(config vocab_size) is larger than this tokenizer's: use the tokenizer saved with the model."
                )
        tokens = self.convert_ids_to_tokens(token_ids, skip_special_tokens=skip_special_tokens)

        special_tokens = set(self.all_special_tokens)
        added_tokens = self.added_tokens_encoder
        vocab_size = self.vocab_size
        split_tokens = {token for token in added_tokens if token not in special_tokens} | {
            token for token in self.extra_special_tokens if added_tokens.get(token, -1) >= vocab_size
        }

        sub_texts: list[str] = []
        run: list[str] = []
        for token in tokens:
            if skip_special_tokens and token in special_tokens:
                continue
            if token in split_tokens:
                if run:
                    string = self.convert_tokens_to_string(run)
                    if string:
                        sub_texts.append(string)
                    run = []
                sub_texts.append(token)
            else:
                run.append(token)
        if run:
            sub_texts.append(self.convert_tokens_to_string(run))

        text = (" " if spaces_between_special_tokens else "").join(sub_texts)
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        if clean_up_tokenization_spaces:
            text = clean_up_tokenization(text)
        return text


class InternLM2Tokenizer(InternLM2TokenizerMixin, SentencePieceBackend):
    """InternLM2 tokenizer backed by the `sentencepiece` library: the original's behaviour, by construction.

    Encoding: the text is split at the added tokens and every piece in between is encoded with
    `SentencePieceProcessor.encode` (the model's own `add_dummy_prefix`, user-defined pieces and byte fallback);
    `<s>` is prepended. Decoding follows the original, see `InternLM2TokenizerMixin`.

    `AutoTokenizer` returns the `tokenizers`-backed `InternLM2TokenizerFast`, which gives the same ids and strings
    faster; use this class where the sentencepiece library itself must do the encoding.

    Args:
        vocab_file (`str`):
            Path to the sentencepiece model (`tokenizer.model`).
        unk_token, bos_token, eos_token, pad_token (`str` or `AddedToken`):
            Special tokens; the original uses `<unk>`, `<s>`, `</s>` and `</s>` (padding with EOS).
        sp_model_kwargs (`dict`, *optional*):
            Passed to `SentencePieceProcessor` (sampling options). `None` (as in original configs) means none.
        add_bos_token (`bool`, defaults to `True`):
            Put `<s>` in front of encoded texts.
        add_eos_token (`bool`, defaults to `False`):
            Put `</s>` after encoded texts.
        decode_with_prefix_space (`bool`, defaults to `False`):
            Kept for compatibility with original configs; the original does not use it and neither does this class.
        clean_up_tokenization_spaces (`bool`, defaults to `False`):
            Apply the clean-up once more to the joined output of `decode`. Each decoded run is cleaned up anyway,
            as in the original.
    """

    vocab_files_names = VOCAB_FILES_NAMES

    def __init__(
        self,
        vocab_file: str,
        unk_token: str | AddedToken = "<unk>",
        bos_token: str | AddedToken = "<s>",
        eos_token: str | AddedToken = "</s>",
        pad_token: str | AddedToken = "</s>",
        sp_model_kwargs: dict[str, Any] | None = None,
        add_bos_token: bool = True,
        add_eos_token: bool = False,
        decode_with_prefix_space: bool = False,
        clean_up_tokenization_spaces: bool = False,
        **kwargs: Any,
    ) -> None:
        if vocab_file is None or not os.path.isfile(vocab_file):
            raise ValueError(
                f"`vocab_file` must be the path of a sentencepiece model (tokenizer.model), got {vocab_file!r}."
            )
        check_special_token_flags(add_bos_token, add_eos_token, kwargs)
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        self.decode_with_prefix_space = decode_with_prefix_space
        # The model's own normalizer settings (add_dummy_prefix included) are used as they are.
        kwargs["legacy"] = True
        super().__init__(
            vocab_file=vocab_file,
            unk_token=unk_token,
            bos_token=bos_token,
            eos_token=eos_token,
            pad_token=pad_token,
            sp_model_kwargs=sp_model_kwargs or {},
            add_bos_token=add_bos_token,
            add_eos_token=add_eos_token,
            decode_with_prefix_space=decode_with_prefix_space,
            clean_up_tokenization_spaces=clean_up_tokenization_spaces,
            **kwargs,
        )
        self._loaded = True

    def _add_tokens(self, new_tokens: list[str | AddedToken], special_tokens: bool = False) -> int:
        """Add tokens as the original's `add_tokens` does (transformers 4.x `PreTrainedTokenizer._add_tokens`).

        transformers 5's `SentencePieceBackend` looks an `AddedToken` up among the sentencepiece pieces only, so one
        whose content is already an added token (a chat token such as `<img>`, or one added before) got a second id,
        past `len(tokenizer)`. The original keeps the token's id and takes the new flags; so does this, after loading.
        """
        if not getattr(self, "_loaded", False):
            return super()._add_tokens(new_tokens, special_tokens=special_tokens)
        added, pending = 0, []
        for token in new_tokens:
            index = self._added_tokens_encoder.get(str(token)) if isinstance(token, AddedToken) else None
            if index is None:
                pending.append(token)
                continue
            added += super()._add_tokens(pending, special_tokens=special_tokens)
            pending = []
            state = token.__getstate__()
            token = AddedToken(**{**state, "special": special_tokens or state["special"]})
            if token.special and str(token) not in self.all_special_tokens:
                self._extra_special_tokens.append(token)
            self._added_tokens_decoder[index] = token
        added += super()._add_tokens(pending, special_tokens=special_tokens)
        self._update_trie()
        self._update_total_vocab_size()
        return added

    def _tokenize(self, text: str, **kwargs: Any) -> list[str]:
        """Sentencepiece pieces of one piece of text that contains no added token."""
        return self.sp_model.encode(text, out_type=str)

    def _convert_token_to_id(self, token: str) -> int:
        return self.sp_model.piece_to_id(token)

    def _convert_id_to_token(self, index: int) -> str:
        return self.sp_model.IdToPiece(index)

    def _decode_sentencepiece(self, pieces: list[str]) -> str:
        return self.sp_model.decode(pieces)


__all__ = ["InternLM2Tokenizer", "InternLM2TokenizerMixin", "clean_up_tokenization"]
