"""Loading the tokenizer of an InternVL folder with `AutoTokenizer`, refusing the silent fallbacks it allows.

Original checkpoints name their tokenizer class in tokenizer_config.json: `Qwen2Tokenizer` (InternVL2.5 on Qwen2.5),
`InternLM2Tokenizer` (InternLM2 checkpoints, served by this package), `LlamaTokenizer` with a sentencepiece
`tokenizer.model` (the Phi-3 checkpoints Mini-InternVL-Chat-4B-V1-5 and InternVL2-4B, and Llama/Yi ones), and so on.
In transformers 5 `AutoTokenizer` can return a tokenizer that is not that class, or that class with an empty
vocabulary when its vocabulary files are absent (a sentencepiece `LlamaTokenizer` without `tokenizer.model` encodes
every text to `[<s>]`). `load_tokenizer` checks both and raises instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from transformers.utils import cached_file, logging

from .loading_options import HUB_KWARGS

logger = logging.get_logger(__name__)


def _has_file(pretrained_model_name_or_path: Any, filename: str, hub_kwargs: dict[str, Any]) -> bool:
    return (
        cached_file(
            pretrained_model_name_or_path,
            filename,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            **hub_kwargs,
        )
        is not None
    )


def check_tokenizer(pretrained_model_name_or_path: Any, tokenizer: Any, hub_kwargs: dict[str, Any]) -> None:
    """Raise when `tokenizer` is not the class the folder's tokenizer_config.json names, or has no vocabulary file.

    Raises:
        ValueError: the loaded class is not (a subclass of) the declared `tokenizer_class` (names resolved as
            `AutoTokenizer` resolves them, registered aliases included: `InternLM2Tokenizer` loads
            `InternLM2TokenizerFast`, `LlamaTokenizerFast` is `LlamaTokenizer` in transformers 5).
        OSError: neither `tokenizer.json` nor all of the class's other vocabulary files (e.g. `tokenizer.model`)
            are in the folder.
    """
    from transformers.models.auto.tokenization_auto import get_tokenizer_config, tokenizer_class_from_name

    tokenizer_config = get_tokenizer_config(pretrained_model_name_or_path, **hub_kwargs)
    declared = tokenizer_config.get("tokenizer_class")
    if declared:
        declared_class = tokenizer_class_from_name(declared)
        if declared_class is None and not declared.endswith("Fast"):
            declared_class = tokenizer_class_from_name(declared + "Fast")
        if declared_class is None:
            raise ValueError(
                f"tokenizer_config.json of {pretrained_model_name_or_path} names tokenizer_class {declared!r}, which "
                f"neither transformers nor transformers_internvl provides."
            )
        if not isinstance(tokenizer, declared_class):
            raise ValueError(
                f"tokenizer_config.json of {pretrained_model_name_or_path} names tokenizer_class {declared!r} "
                f"({declared_class.__name__}), but AutoTokenizer built a {type(tokenizer).__name__}."
            )
    vocab_files = dict(getattr(type(tokenizer), "vocab_files_names", None) or {})
    tokenizer_file = vocab_files.pop("tokenizer_file", None)
    if tokenizer_file is not None and _has_file(pretrained_model_name_or_path, tokenizer_file, hub_kwargs):
        return
    missing = [name for name in vocab_files.values() if not _has_file(pretrained_model_name_or_path, name, hub_kwargs)]
    if missing or (not vocab_files and tokenizer_file is not None):
        alternatives = [repr(tokenizer_file)] if tokenizer_file else []
        if vocab_files:
            alternatives.append(" and ".join(repr(name) for name in vocab_files.values()))
        raise OSError(
            f"{pretrained_model_name_or_path} has no vocabulary for its {type(tokenizer).__name__}: expected "
            f"{', or '.join(alternatives)}; missing {missing or [tokenizer_file]}."
        )


# Vocabulary files of the tokenizer classes InternVL checkpoints use (Qwen2 / Llama / Phi-3 / InternLM2 / GPT-OSS).
VOCABULARY_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def load_tokenizer(pretrained_model_name_or_path: Any, **kwargs: Any) -> Any:
    """`AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **kwargs)`, checked by `check_tokenizer`.

    Raises:
        OSError: the folder holds none of `VOCABULARY_FILES` (checked before `AutoTokenizer`, whose error for an
            empty folder depends on the model type), or lacks the files of the class it names.
        ValueError: see `check_tokenizer`.
    """
    from transformers import AutoTokenizer

    hub_kwargs = {key: kwargs[key] for key in HUB_KWARGS if kwargs.get(key) is not None}
    if not any(_has_file(pretrained_model_name_or_path, name, hub_kwargs) for name in VOCABULARY_FILES):
        raise OSError(
            f"{pretrained_model_name_or_path} has no vocabulary for its tokenizer: none of "
            f"{list(VOCABULARY_FILES)} is there. Copy the checkpoint's tokenizer files (tokenizer_config.json with "
            "its vocabulary, e.g. tokenizer.json or vocab.json + merges.txt, or tokenizer.model) next to config.json."
        )
    tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **kwargs)
    check_tokenizer(pretrained_model_name_or_path, tokenizer, hub_kwargs)
    from ..llama_slow_tokenizer import as_original_tokenizer

    return as_original_tokenizer(tokenizer)  # Phi-3 / Yi: encodes and decodes as the original's slow class


__all__ = ["check_tokenizer", "load_tokenizer", "without_call_truncation_or_padding"]


@contextmanager
def without_call_truncation_or_padding(tokenizer: Any) -> Iterator[None]:
    """While saving: the fast tokenizer's backend without the truncation and padding its last call set (restored
    after).

    transformers' fast tokenizers keep a call's `truncation=True, max_length=N` and `padding="max_length",
    max_length=N` / `pad_to_multiple_of=M` in their `tokenizers` backend, and `save_pretrained` writes them into
    tokenizer.json; `from_pretrained` then makes N the tokenizer's `max_length` (and M its `pad_to_multiple_of`), which
    processors take as call defaults, so the reloaded processor would cut every prompt to N tokens. A truncation or
    padding length the tokenizer was loaded with (`init_kwargs["max_length"]` / `["pad_to_multiple_of"]`) is kept.
    """
    backend = getattr(tokenizer, "_tokenizer", None)
    truncation, padding = getattr(backend, "truncation", None), getattr(backend, "padding", None)
    loaded_with = [tokenizer.init_kwargs.get(name) for name in ("max_length", "pad_to_multiple_of")]
    if (truncation is None and padding is None) or any(value is not None for value in loaded_with):
        yield
        return
    backend.no_truncation()
    backend.no_padding()
    try:
        yield
    finally:
        if truncation is not None:
            backend.enable_truncation(**truncation)
        if padding is not None:
            backend.enable_padding(**padding)
