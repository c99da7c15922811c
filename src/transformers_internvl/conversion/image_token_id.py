"""The id of `<IMG_CONTEXT>` written into a converted `-hf` config (`convert --to hf`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers.utils import logging

from ..chat_templates import IMAGE_CONTEXT_TOKEN
from ..modeling.tokenizer_files import find_added_token_id
from .checkpoint_io import ConversionError

logger = logging.get_logger(__name__)

__all__ = ["source_image_token_id"]


def source_image_token_id(source: Path, original: Any, image_token_id: int | None) -> int:
    """The `<IMG_CONTEXT>` id: config.json's, else `image_token_id` (--image-token-id), else the tokenizer files'.

    A given `image_token_id` that differs from the id the source states is logged (a warning naming both and the one
    used); an id outside the LLM's vocabulary is refused (it would be written into the -hf config, and no prompt
    would ever place an image)."""
    from_tokenizer = find_added_token_id(source, IMAGE_CONTEXT_TOKEN)
    candidates = [
        (f"{source}/config.json", original.image_token_id),
        ("--image-token-id", image_token_id),
        (f"the tokenizer files of {source}", from_tokenizer),
    ]
    stated = [(where, int(value)) for where, value in candidates if value is not None]
    if not stated:
        raise ConversionError(
            f"cannot tell the id of {IMAGE_CONTEXT_TOKEN}: config.json has no image_token_id and {source} has no "
            "tokenizer files naming it; pass --image-token-id"
        )
    where, token_id = stated[0]
    for other, value in stated[1:]:
        if value != token_id:
            logger.warning(
                f"The id of {IMAGE_CONTEXT_TOKEN} from {where} ({token_id}) differs from the one in {other} ({value}); "
                f"the -hf config gets {token_id}."
            )
    vocab_size = getattr(original.text_config, "vocab_size", None)
    if isinstance(vocab_size, int) and not 0 <= token_id < vocab_size:
        raise ConversionError(
            f"the id of {IMAGE_CONTEXT_TOKEN} from {where} ({token_id}) is outside the LLM's vocabulary "
            f"(0..{vocab_size - 1}, llm_config.vocab_size)"
        )
    return token_id
