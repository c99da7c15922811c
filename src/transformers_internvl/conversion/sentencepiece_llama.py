"""`--to hf` of sentencepiece Llama tokenizers (Phi-3: InternVL2-4B, Mini-InternVL-Chat-4B-V1-5; Yi: InternVL-Chat-V1-2,
InternVL2-40B): the `-hf` tokenizer.json gets the ids of transformers 4's slow `LlamaTokenizer`, which the original
loads (`use_fast=False`; see `llama_slow_tokenization`).

* legacy mode (`legacy: true`, or no key): the slow class hands every piece of text between added tokens to
  sentencepiece on its own, which puts its dummy prefix "▁" before each. tokenizers does exactly that with a
  `Prepend("▁")` + `Replace(" ", "▁")` normalizer and no pre-tokenizer (normalizers run on each piece between added
  tokens; an empty piece stays empty), the pipeline transformers 4's `LlamaConverter` built for legacy tokenizers.
  transformers 5's `LlamaTokenizer` replaces a tokenizer.json's normalizer and pre-tokenizer by its own (Metaspace,
  no "▁" after an added token), so the folder names `TokenizersBackend`, which loads tokenizer.json as it is.
  Measured: equal to the slow class on the 564 strings x 5 tokenizer folders of
  `tests/fixtures/legacy_tokenizer_s9` (before: 413-437 strings per folder differed, or the conversion was refused).
* non-legacy mode (`legacy: false`): the slow class puts "▁" before the whole text unless it starts with one of
  `all_special_tokens`, even before an added chat token (`<|system|>`, `<|user|>`, `<|im_start|>`) or a text that
  starts with "▁" or a space; no tokenizers pipeline adds a "▁" to an empty piece or to one that starts with "▁", so
  those texts get one "▁" fewer. `check_ids` warns, naming a text that differs. The `-hf` folder gets the pipeline
  transformers 5's `LlamaTokenizer` builds for this mode (`write_non_legacy_pipeline`, same ids) and loads as
  `TokenizersBackend`, so that the slow class's decoder in tokenizer.json is used (`sentencepiece_decoding`).
  Every prompt of the chat templates starts with such a chat token, so `non_legacy_chat_template` writes that "▁"
  into the `-hf` chat template itself (what `llama_slow_tokenization.original_llama_text` does to the text): prompts
  rendered by it get the original's ids.

`tokenizer.model` is copied into the `-hf` folder, so that `--to original` gives it back: the original code's slow
tokenizer cannot load without it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from transformers.utils import logging

from ..converted_llama_tokenizer import SPIECE_UNDERLINE
from .checkpoint_io import ConversionError, read_json, write_json, write_tokenizer_json

logger = logging.get_logger(__name__)

LEGACY_NORMALIZER = {
    "type": "Sequence",
    "normalizers": [
        {"type": "Prepend", "prepend": SPIECE_UNDERLINE},
        {"type": "Replace", "pattern": {"String": " "}, "content": SPIECE_UNDERLINE},
    ],
}
SENTENCEPIECE_MODEL = "tokenizer.model"


def write_legacy_pipeline(folder: Path) -> None:
    """Give the saved `-hf` tokenizer in `folder` the slow legacy class's pipeline (module docstring) and make plain
    transformers load its tokenizer.json unchanged (`tokenizer_class: TokenizersBackend`)."""
    _set_pipeline(folder, LEGACY_NORMALIZER, None)


NON_LEGACY_PRE_TOKENIZER = {
    "type": "Metaspace",
    "replacement": SPIECE_UNDERLINE,
    "prepend_scheme": "first",
    "split": False,
}


def write_non_legacy_pipeline(folder: Path) -> None:
    """Give the saved `-hf` tokenizer in `folder` (of a `legacy: false` source) the pipeline transformers 5's
    `LlamaTokenizer` builds for it (no normalizer, a `Metaspace` pre-tokenizer that puts "▁" before the first piece
    only), and make plain transformers load its tokenizer.json unchanged (`tokenizer_class: TokenizersBackend`): the
    class would replace tokenizer.json's decoder by its own (`sentencepiece_decoding`). The ids do not change."""
    _set_pipeline(folder, None, NON_LEGACY_PRE_TOKENIZER, keep_legacy=True)


def _set_pipeline(folder: Path, normalizer: dict | None, pre_tokenizer: dict | None, keep_legacy: bool = False) -> None:
    path = folder / "tokenizer.json"
    tokenizer = read_json(path, "tokenizer file")
    tokenizer["normalizer"] = normalizer
    tokenizer["pre_tokenizer"] = pre_tokenizer
    write_tokenizer_json(path, tokenizer)
    config_path = folder / "tokenizer_config.json"
    config = read_json(config_path, "tokenizer config")
    config["tokenizer_class"] = "TokenizersBackend"
    for name in ("add_prefix_space", "sp_model_kwargs", "vocab_file") + (() if keep_legacy else ("legacy",)):
        config.pop(name, None)
    write_json(config_path, config)


def copy_sentencepiece_model(source: Path, folder: Path) -> None:
    """Keep the source's sentencepiece model beside the `-hf` tokenizer (transformers 5 saves tokenizer.json only)."""
    if (source / SENTENCEPIECE_MODEL).is_file() and not (folder / SENTENCEPIECE_MODEL).exists():
        shutil.copyfile(source / SENTENCEPIECE_MODEL, folder / SENTENCEPIECE_MODEL)


def check_ids(reference: Any, converted: Any, texts: tuple[str, ...], mode: str | None) -> None:
    """Compare the converted tokenizer's ids with the original's (`llama_slow_tokenization.encode_as_original` on the
    source tokenizer `reference`) for `texts`.

    Raises:
        ConversionError: a text encodes differently, except in the slow class's non-legacy mode, whose known
            difference (module docstring) is logged as a warning instead.
    """
    from ..llama_slow_tokenization import encode_as_original

    for text in texts:
        expected = encode_as_original(reference, [text])["input_ids"][0]
        got = converted(text)["input_ids"]
        if expected == got:
            continue
        if mode == "non_legacy":
            logger.warning(
                "The source tokenizer is a sentencepiece LlamaTokenizer with legacy: false, which the original loads "
                f"as transformers 4's slow class: it puts '{SPIECE_UNDERLINE}' before a text that starts with an "
                "added token outside its special tokens (e.g. a chat token) or with a space, which no tokenizer.json "
                f"can do; the -hf tokenizer encodes {text!r} as {got}, the original as {expected}. Prompts that "
                "start that way get one token fewer in the -hf folder."
            )
            return
        raise ConversionError(f"the converted tokenizer encodes {text!r} as {got}, the source tokenizer as {expected}")


def non_legacy_chat_template(reference: Any, converted: Any, chat_template: str) -> str:
    """`chat_template`, with "▁" put before it when the prompts it renders start with an added token outside the
    slow class's special tokens (module docstring): then `converted` gives the original's ids on them
    (`llama_slow_tokenization.encode_as_original` on the source tokenizer `reference`). Checked on probe
    conversations (with and without a system message, an image, two turns).

    Raises:
        ConversionError: the prompts differ from the original's ids in another way.
    """
    from ..chat_templates import IMAGE_CONTEXT_TOKEN
    from ..llama_slow_tokenization import encode_as_original

    image = [{"type": "image"}, {"type": "text", "text": "Describe  the image."}]
    conversations = (
        [{"role": "user", "content": image}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        [{"role": "system", "content": ""}, {"role": "user", "content": " spaced"}],
        [
            {"role": "user", "content": image},
            {"role": "assistant", "content": "A cat."},
            {"role": "user", "content": "And then?"},
        ],
    )
    chosen = None
    for messages in conversations:
        prompt = converted.apply_chat_template(
            messages, chat_template=chat_template, add_generation_prompt=True, tokenize=False
        )
        prompt = prompt.replace(IMAGE_CONTEXT_TOKEN, IMAGE_CONTEXT_TOKEN * 3)
        expected = encode_as_original(reference, [prompt])["input_ids"][0]
        candidates = {
            "": converted(prompt)["input_ids"],
            SPIECE_UNDERLINE: converted(SPIECE_UNDERLINE + prompt)["input_ids"],
        }
        matching = [prefix for prefix, ids in candidates.items() if ids == expected]
        if not matching or (chosen is not None and chosen not in matching):
            raise ConversionError(
                f"the converted tokenizer encodes the chat prompt {prompt!r} as {candidates['']}, the source "
                f"tokenizer as {expected}"
            )
        chosen = matching[0] if chosen is None else chosen
    return (chosen or "") + chat_template


__all__ = [
    "LEGACY_NORMALIZER",
    "check_ids",
    "copy_sentencepiece_model",
    "non_legacy_chat_template",
    "write_legacy_pipeline",
    "write_non_legacy_pipeline",
]
