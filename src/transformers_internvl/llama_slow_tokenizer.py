"""The tokenizer of an InternVL folder with a sentencepiece `LlamaTokenizer`, encoding and decoding as the original.

The original model cards load the tokenizer of Phi-3 (InternVL2-4B, Mini-InternVL-Chat-4B-V1-5) and Yi (InternVL-Chat-V1-2,
InternVL2-40B) checkpoints with `AutoTokenizer.from_pretrained(path, trust_remote_code=True, use_fast=False)`:
transformers 4's slow `LlamaTokenizer`, whose ids and decoded texts transformers 5's `LlamaTokenizer` does not give
(`llama_slow_tokenization` says where and how). `chat()`, `batch_chat()`, the processor's call and the fine-tuning
labels already encode through `encode_as_original`; users also call the tokenizer itself (prompts built from
`model.conv_template`, `tokenizer.batch_decode` of `generate`'s output, `processor.batch_decode`).

`OriginalLlamaTokenizer` is transformers 5's `LlamaTokenizer` whose `_encode_plus` (behind `__call__`, `encode`,
`tokenize`) hands the text to the backend as `llama_slow_tokenization.original_llama_text` prepares it, and whose
`_decode` (behind `decode` / `batch_decode`) is `decode_as_original`. Pairs get each text prepared (the slow class
encodes each on its own; with `return_offsets_mapping` they go to transformers unchanged, and an empty second text
gets no BOS where the slow class gives one); pre-split words (`is_split_into_words=True`) are encoded word by word
as the slow class does (`llama_slow_split_words`); `split_special_tokens=True` goes to transformers unchanged. It saves as `LlamaTokenizer` (the class the original folder
names), so a saved folder reloads everywhere.

`as_original_tokenizer` turns a loaded `LlamaTokenizer` into one (in place) when `llama_slow_tokenization` corrects
it (`slow_llama_mode` is not None). It is applied by the processor's tokenizer loading and by
`AutoTokenizer.from_pretrained` on an original InternVL folder (config.json `model_type: "internvl_chat"`,
`processing.auto_loading.wrap_auto_tokenizer`); a tokenizer-only folder keeps transformers' own class and ids.
"""

from __future__ import annotations

from typing import Any

from transformers import LlamaTokenizer
from transformers.tokenization_utils_base import BatchEncoding
from transformers.utils import to_py_obj

from .atomic_save import save_folder_atomically
from .llama_slow_split_words import encode_split_words
from .llama_slow_tokenization import (
    check_unicode,
    decode_as_original,
    encode_with_original_text,
    original_llama_text,
    slow_llama_mode,
)

__all__ = ["OriginalLlamaTokenizer", "as_original_tokenizer", "as_transformers_tokenizer"]


def _plain_texts(text: Any) -> bool:
    return isinstance(text, str) or (
        isinstance(text, (list, tuple)) and len(text) > 0 and all(isinstance(item, str) for item in text)
    )


def _check_unicode(text: str | list[str], name: str) -> None:
    """`check_unicode` for a text or each text of a batch, named `name` / `name[index]`."""
    if isinstance(text, str):
        check_unicode(f"`{name}`", text)
        return
    for index, item in enumerate(text):
        check_unicode(f"`{name}[{index}]`", item)


def _original_texts(tokenizer: Any, text: str | list[str]) -> str | list[str]:
    if isinstance(text, str):
        return original_llama_text(tokenizer, text)
    return [original_llama_text(tokenizer, item) for item in text]


class OriginalLlamaTokenizer(LlamaTokenizer):
    """transformers' `LlamaTokenizer` giving the ids and decoded texts of transformers 4's slow `LlamaTokenizer`
    (which the original InternVL code loads); see the module docstring. Built by `as_original_tokenizer`.

    Raises `ValueError` for a text with a lone surrogate (no UTF-8 form) and `IndexError` when decoding an id outside
    the vocabulary (the slow class's errors there were a pybind11 cast error and sentencepiece's IndexError)."""

    encodes_as_original = True

    def _encode_plus(self, text, text_pair=None, **kwargs):
        if kwargs.get("is_split_into_words") and not kwargs.get("split_special_tokens"):
            parent = super()._encode_plus
            return encode_split_words(
                self, text, text_pair, lambda prepared: parent(prepared, add_special_tokens=False), **kwargs
            )
        plain = not kwargs.get("is_split_into_words") and not kwargs.get("split_special_tokens") and _plain_texts(text)
        if plain and text_pair is not None and _plain_texts(text_pair) and not kwargs.get("return_offsets_mapping"):
            if isinstance(text, str) == isinstance(text_pair, str):  # the slow class encodes each text on its own
                _check_unicode(text, "text")
                _check_unicode(text_pair, "text_pair")
                return super()._encode_plus(
                    _original_texts(self, text), text_pair=_original_texts(self, text_pair), **kwargs
                )
        if text_pair is not None or not plain:
            return super()._encode_plus(text, text_pair=text_pair, **kwargs)
        batched = not isinstance(text, str)
        _check_unicode(text, "text")
        parent = super()._encode_plus
        encoding = encode_with_original_text(
            self,
            list(text) if batched else [text],
            lambda prepared: parent(prepared, **kwargs),
            bool(kwargs.get("return_offsets_mapping")),
        )
        if batched or kwargs.get("return_tensors") is not None or kwargs.get("return_overflowing_tokens"):
            return encoding
        # one text: without the batch dimension, as transformers returns it
        return BatchEncoding(
            {
                key: (value[0] if len(value) > 0 and isinstance(value[0], list) else value)
                for key, value in encoding.items()
            },
            encoding.encodings,
        )

    def _decode(self, token_ids, skip_special_tokens=False, clean_up_tokenization_spaces=None, **kwargs):
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        if isinstance(token_ids, dict):
            token_ids = token_ids["input_ids"]
        return decode_as_original(self, list(token_ids), skip_special_tokens, clean_up_tokenization_spaces)

    def decode_as_transformers(self, token_ids, skip_special_tokens=False, **kwargs):
        """transformers 5's own `LlamaTokenizer.decode` (one sequence or a batch of them), for the pipeline
        (`processing.port_attributes.post_process_generated`)."""
        token_ids = to_py_obj(token_ids)
        if isinstance(token_ids, (list, tuple)) and token_ids and isinstance(token_ids[0], (list, tuple)):
            return [LlamaTokenizer._decode(self, row, skip_special_tokens, **kwargs) for row in token_ids]
        return LlamaTokenizer._decode(self, token_ids, skip_special_tokens, **kwargs)

    def save_pretrained(self, *args, **kwargs):
        """`LlamaTokenizer.save_pretrained`, naming `LlamaTokenizer` in tokenizer_config.json (the folder's class)
        and writing the `legacy` mode it runs in (transformers 5 drops the key, and a file without it is read as
        legacy, by transformers 4 too: a `legacy: false` Phi-3 tokenizer would come back with other ids).

        The save runs on a shallow clone of class `LlamaTokenizer` (same backend, vocabulary and special tokens, its
        own `init_kwargs`), so this tokenizer is never changed: other threads can encode with it meanwhile. Atomic
        (`atomic_save.save_folder_atomically`): a failed save (disk full) leaves the old folder as it was."""
        legacy = slow_llama_mode(self) == "legacy"
        clone = object.__new__(LlamaTokenizer)
        clone.__dict__.update(self.__dict__)
        clone.init_kwargs = {**self.init_kwargs, "legacy": legacy}
        clone.legacy = legacy
        return save_folder_atomically(clone.save_pretrained, *args, **kwargs)


def as_original_tokenizer(tokenizer: Any) -> Any:
    """`tokenizer`, made an `OriginalLlamaTokenizer` in place when it is exactly transformers' `LlamaTokenizer` and
    `llama_slow_tokenization.slow_llama_mode` corrects it; any other tokenizer is returned as it is. A folder (or
    `from_pretrained` call) that sets no `padding_side` gets the slow class's `"right"`."""
    if type(tokenizer) is LlamaTokenizer and slow_llama_mode(tokenizer) is not None:
        tokenizer.__class__ = OriginalLlamaTokenizer
        if "padding_side" not in tokenizer.init_kwargs:
            # the original's slow class pads on the right unless the folder says otherwise (transformers 5's
            # `LlamaTokenizer`, the former fast class, pads on the left)
            tokenizer.padding_side = "right"
    return tokenizer


def as_transformers_tokenizer(tokenizer: Any) -> Any:
    """`tokenizer`, made transformers' own `LlamaTokenizer` again in place when it is an `OriginalLlamaTokenizer`
    (the conversion to transformers' layout, whose port reads the files with transformers' class); any other
    tokenizer is returned as it is."""
    if isinstance(tokenizer, OriginalLlamaTokenizer):
        tokenizer.__class__ = LlamaTokenizer
    return tokenizer
