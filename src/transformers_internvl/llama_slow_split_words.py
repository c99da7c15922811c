"""Pre-split words (`is_split_into_words=True`) for `llama_slow_tokenizer.OriginalLlamaTokenizer`, as the slow
`LlamaTokenizer` of transformers 4 (the class the original InternVL code loads for Phi-3 and Yi folders) encodes them.

The slow class (`tokenization_utils.PreTrainedTokenizer._encode_plus` / `_batch_encode_plus`, transformers 4.47)
tokenizes each word on its own, as a text of its own (sentencepiece's "▁" prefix in front of every word, a word that
starts with a space keeps it, a whitespace word is a token of its own), concatenates the ids of a sequence's words,
then `prepare_for_model`: truncation (`truncate_sequences`), the special tokens of `build_inputs_with_special_tokens`
(`<s>` A [`</s>`] [`<s>` B [`</s>`]], per `add_bos_token` / `add_eos_token`), padding and tensors (`pad`).
transformers 5's backend instead runs its pre-tokenizer over the words as one sequence and gives other ids.

Each word is encoded here by the tokenizer's own text path (`encode_with_original_text`, the ids of the slow class for
one text), the rest by transformers' own helpers (`PythonBackend.truncate_sequences`, `pad`, `BatchEncoding`).
"""

from __future__ import annotations

from typing import Any

from transformers.tokenization_python import PythonBackend
from transformers.tokenization_utils_base import BatchEncoding, PaddingStrategy, TruncationStrategy
from transformers.utils import logging

from .llama_slow_tokenization import check_unicode, encode_with_original_text

logger = logging.get_logger(__name__)

__all__ = ["encode_split_words", "is_word_batch"]


def _is_words(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(word, str) for word in value)


def is_word_batch(value: Any) -> bool:
    """Whether `value` is a batch of pre-split sequences (a list whose first item is a list of words), as
    transformers tells one."""
    return isinstance(value, (list, tuple)) and len(value) > 0 and isinstance(value[0], (list, tuple))


def _sequences(value: Any, name: str, batched: bool) -> list[list[str]]:
    """`value` as a list of word lists; `TypeError` naming `name` for anything else."""
    sequences = list(value) if batched else [value]
    for index, words in enumerate(sequences):
        if not _is_words(words):
            where = f"`{name}[{index}]`" if batched else f"`{name}`"
            raise TypeError(
                f"With `is_split_into_words=True`, {where} must be a list of words (strings), got "
                f"{type(words).__name__}: {words!r:.80}."
            )
    return [list(words) for words in sequences]


def _truncate(tokenizer: Any, ids: list[int], pair_ids: list[int] | None, remove: int, strategy: Any, stride: int):
    """transformers' `truncate_sequences`, except that a sequence too short to lose `remove` tokens is kept as it is
    (with an error logged), as transformers 4's slow class does."""
    strategy = TruncationStrategy(strategy)
    single = strategy == TruncationStrategy.ONLY_FIRST or (strategy == TruncationStrategy.LONGEST_FIRST and not pair_ids)
    if single and len(ids) <= remove or strategy == TruncationStrategy.ONLY_SECOND and len(pair_ids or []) <= remove:
        logger.error(f"We need to remove {remove} tokens to truncate the input but the sequence is too short.")
        return ids, pair_ids
    ids, pair_ids, _ = PythonBackend.truncate_sequences(tokenizer, ids, pair_ids, remove, strategy, stride)
    return ids, pair_ids


def _with_special_tokens(tokenizer: Any, ids: list[int], pair_ids: list[int] | None) -> tuple[list[int], ...]:
    """The slow class's `build_inputs_with_special_tokens`, `create_token_type_ids_from_sequences` and
    `get_special_tokens_mask` for one sequence (or pair)."""
    bos = [tokenizer.bos_token_id] if tokenizer.add_bos_token else []
    eos = [tokenizer.eos_token_id] if tokenizer.add_eos_token else []
    first = bos + ids + eos
    second = bos + pair_ids + eos if pair_ids is not None else []
    mask = [1] * len(bos) + [0] * len(ids) + [1] * len(eos)
    if pair_ids is not None:
        mask += [1] * len(bos) + [0] * len(pair_ids) + [1] * len(eos)
    return first + second, [0] * len(first) + [1] * len(second), mask


def encode_split_words(tokenizer: Any, text: Any, text_pair: Any, encode_texts: Any, **kwargs: Any) -> BatchEncoding:
    """`tokenizer(text[, text_pair], is_split_into_words=True, **kwargs)` with the slow class's ids (module
    docstring). `text`: a list of words or a batch of them; `text_pair` the same (or None). `encode_texts(texts)`
    encodes a list of plain texts without special tokens (the tokenizer's parent `_encode_plus`). `kwargs` are those
    transformers hands to `_encode_plus` (`padding_strategy`, `truncation_strategy`, `max_length`, `return_tensors`,
    ...).

    Raises `NotImplementedError` for `return_offsets_mapping=True` (the slow class has no offsets either),
    `ValueError` for `return_overflowing_tokens=True`, `TypeError` for a sequence that is not a list of words, and
    `ValueError` for a pair batch of another length or a lone surrogate in a word."""
    if kwargs.get("return_offsets_mapping"):
        raise NotImplementedError(
            "`return_offsets_mapping=True` is not available with `is_split_into_words=True` on this tokenizer: it "
            "encodes the words as transformers 4's slow `LlamaTokenizer` (which the original InternVL code loads), "
            "and that class has no offsets either. Use `word_ids()` of transformers' own `LlamaTokenizer` instead."
        )
    if kwargs.get("return_overflowing_tokens"):
        raise ValueError(
            "`return_overflowing_tokens=True` is not supported with `is_split_into_words=True` on this tokenizer "
            "(the slow class the original loads returns no overflow windows for pre-split words either)."
        )
    batched = is_word_batch(text)
    sequences = _sequences(text, "text", batched)
    pairs = _sequences(text_pair, "text_pair", batched) if text_pair is not None else None
    if pairs is not None and len(pairs) != len(sequences):
        raise ValueError(
            f"`text_pair` must hold as many sequences as `text` ({len(sequences)}), got {len(pairs)}."
        )
    words = [word for group in sequences + (pairs or []) for word in group]
    for index, word in enumerate(words):
        check_unicode(f"word {index} of `text` / `text_pair`", word)
    word_ids = iter(encode_with_original_text(tokenizer, words, encode_texts, False)["input_ids"] if words else [])

    def ids_of(group: list[str]) -> list[int]:
        return [token for _ in group for token in next(word_ids)]

    first_ids = [ids_of(group) for group in sequences]
    pair_ids = [ids_of(group) for group in pairs] if pairs is not None else [None] * len(sequences)

    add_special = kwargs.get("add_special_tokens", True)
    strategy = kwargs.get("truncation_strategy", TruncationStrategy.DO_NOT_TRUNCATE)
    max_length = kwargs.get("max_length")
    token_types = kwargs.get("return_token_type_ids")
    if token_types is None:
        token_types = "token_type_ids" in tokenizer.model_input_names
    # every row is a pair or none is: the count of special tokens is the same for all
    special_count = tokenizer.num_special_tokens_to_add(pairs is not None) if add_special else 0
    rows: dict[str, list] = {"input_ids": [], "token_type_ids": [], "special_tokens_mask": []}
    for ids, pair in zip(first_ids, pair_ids):
        total = len(ids) + len(pair or []) + special_count
        if strategy != TruncationStrategy.DO_NOT_TRUNCATE and max_length and total > max_length:
            ids, pair = _truncate(tokenizer, ids, pair, total - max_length, strategy, kwargs.get("stride", 0))
        if add_special:
            sequence, types, mask = _with_special_tokens(tokenizer, ids, pair)
        else:
            sequence = ids + (pair or [])
            types, mask = [0] * len(sequence), [0] * len(sequence)
        rows["input_ids"].append(sequence)
        rows["token_type_ids"].append(types)
        rows["special_tokens_mask"].append(mask)
    if not token_types:
        del rows["token_type_ids"]
    if not kwargs.get("return_special_tokens_mask"):
        del rows["special_tokens_mask"]
    return_attention_mask = kwargs.get("return_attention_mask")
    if return_attention_mask is None:
        return_attention_mask = "attention_mask" in tokenizer.model_input_names
    padding = kwargs.get("padding_strategy", PaddingStrategy.DO_NOT_PAD)
    encoding = tokenizer.pad(
        rows,
        padding=PaddingStrategy(padding).value,
        max_length=max_length,
        pad_to_multiple_of=kwargs.get("pad_to_multiple_of"),
        padding_side=kwargs.get("padding_side"),
        return_attention_mask=return_attention_mask,
    )
    if kwargs.get("return_length"):
        encoding["length"] = [len(row) for row in encoding["input_ids"]]
    data = dict(encoding) if batched else {key: value[0] for key, value in encoding.items()}
    return BatchEncoding(data, tensor_type=kwargs.get("return_tensors"), prepend_batch_axis=not batched)
