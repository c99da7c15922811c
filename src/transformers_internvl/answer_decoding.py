"""Answers decoded from `generate`'s new tokens without the stop token it ended at (the CLI chat, test-time voting).

The original `chat()` decodes the new tokens with `skip_special_tokens=True` and cuts the text at the template's stop
token (`response.split(template.sep.strip())[0]`), because transformers 4's slow `LlamaTokenizer` (Phi-3: InternVL2-4B,
Mini-InternVL-Chat-4B-V1-5) keeps Phi-3's `<|end|>` even then: it is not one of its `all_special_tokens`. This
package's Phi-3 tokenizers decode as that class (`llama_slow_tokenizer`), so code that decodes `generate`'s output
itself leaves out the stop tokens `generate` stopped at first. Ids: `generation_config.eos_token_id` of the model and
the processor's `chat_eos_token_id`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["decode_answers", "stop_token_ids"]


def stop_token_ids(model: Any, processor_or_tokenizer: Any) -> set[int]:
    """The ids `generate` stops at for `model` (its generation config's `eos_token_id`, an int or a list) and the
    template's stop token of a processor (`chat_eos_token_id`), when known."""
    ids: set[int] = set()
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in eos if isinstance(eos, (list, tuple)) else [eos]:
        if value is not None:
            ids.add(int(value))
    chat_eos = getattr(processor_or_tokenizer, "chat_eos_token_id", None)
    if chat_eos is not None:
        ids.add(int(chat_eos))
    return ids


def decode_answers(processor_or_tokenizer: Any, sequences: Any, stop_ids: set[int]) -> list[str]:
    """`batch_decode(sequences, skip_special_tokens=True)` (`sequences`: the new tokens, `(batch, length)`) with the
    run of `stop_ids` and special tokens (padding) at the end of each row left out first."""
    from transformers.utils import to_py_obj

    tokenizer = getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)
    dropped = set(stop_ids) | set(getattr(tokenizer, "all_special_ids", ()))
    rows = [list(row) for row in to_py_obj(sequences)]
    for row in rows:
        while row and row[-1] in dropped:
            row.pop()
    return processor_or_tokenizer.batch_decode(rows, skip_special_tokens=True)
