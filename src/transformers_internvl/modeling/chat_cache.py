"""Key/value-cache reuse across `model.chat()` turns.

The original `chat()` re-encodes the images and the whole history every turn. Here the cache of the previous turn
(prompt + answer) is kept on the model; the next turn's prompt is compared token by token with the tokens that cache
holds, the cache is cut back to the longest common prefix, and `generate` runs only on the rest. The vision tower is
skipped when every image token of the new prompt lies in that prefix and `pixel_values` equal those of the cached
turn. Anything else (another history, other images, a new image, another system message or template) shortens the
common prefix or discards the cache: the answer is the one a fresh run gives (greedy decoding gives the same text).

Used for single-sequence `chat()` with a dynamic cache only: beam search, several return sequences, a caller's own
cache, `use_cache=False` and caches with non-plain layers (sliding window, linear attention) run without reuse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig
from transformers.cache_utils import DynamicCache, DynamicLayer

_STATE_ATTRIBUTE = "_chat_cache_state"


@dataclass
class ChatCacheState:
    """What the kept cache holds: the K/V of `token_ids` (1-D), built with `pixel_values` for its image tokens."""

    token_ids: torch.Tensor
    cache: DynamicCache
    pixel_values: torch.Tensor | None


def _setting(kwargs: dict[str, Any], model: Any, name: str) -> Any:
    if name in kwargs:
        return kwargs[name]
    config = kwargs.get("generation_config")
    if isinstance(config, GenerationConfig):
        return getattr(config, name, None)
    return getattr(getattr(model, "generation_config", None), name, None)


def can_reuse(model: Any, input_ids: torch.Tensor, kwargs: dict[str, Any]) -> bool:
    """Whether this `generate` call may use (and keep) a chat cache."""
    if not getattr(model, "reuse_chat_cache", False) or input_ids.shape[0] != 1:
        return False
    if any(name in kwargs for name in ("cache", "past_key_values", "cache_implementation")):
        return False
    if _setting(kwargs, model, "use_cache") is False:
        return False
    if (_setting(kwargs, model, "num_beams") or 1) > 1 or (_setting(kwargs, model, "num_return_sequences") or 1) > 1:
        return False
    if _setting(kwargs, model, "cache_implementation") not in (None, "dynamic"):
        return False
    return True


def reusable_prefix_length(
    state: ChatCacheState | None, input_ids: torch.Tensor, pixel_values: torch.Tensor | None, image_token_id: int | None
) -> int:
    """How many leading tokens of `input_ids` (`(1, seq)`) the kept cache can serve (0: none).

    At least one token is always left to run. Image tokens past the prefix, or pixel values other than the cached
    ones for image tokens inside it, give 0; so do pixel values without image tokens and image tokens without pixel
    values (a fresh run reports that mismatch).
    """
    if state is None:
        return 0
    tokens = input_ids[0]
    limit = min(state.token_ids.shape[0], tokens.shape[0] - 1)
    if limit <= 0:
        return 0
    cached = state.token_ids[:limit].to(tokens.device)
    mismatch = (cached != tokens[:limit]).nonzero()
    prefix = int(mismatch[0, 0]) if mismatch.numel() else limit
    if image_token_id is None:
        return prefix
    image_positions = (tokens == image_token_id).nonzero()
    if (pixel_values is None) != (image_positions.numel() == 0):
        return 0  # images without image tokens or the reverse: a fresh run raises the model's error
    if image_positions.numel():
        if int(image_positions[-1, 0]) >= prefix:
            return 0
        same_pixels = (
            pixel_values is not None
            and state.pixel_values is not None
            and pixel_values.shape == state.pixel_values.shape
            and torch.equal(pixel_values.to(state.pixel_values.device, state.pixel_values.dtype), state.pixel_values)
        )
        if not same_pixels:
            return 0
    return prefix


def _is_plain_dynamic(cache: DynamicCache) -> bool:
    return all(type(layer) is DynamicLayer for layer in cache.layers)


def generate_reusing_cache(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pixel_values: torch.Tensor | None,
    kwargs: dict[str, Any],
) -> torch.Tensor:
    """`model.generate(...)` for one chat turn, reusing and then keeping the chat cache; returns the output ids."""
    state: ChatCacheState | None = model.__dict__.pop(_STATE_ATTRIBUTE, None)  # invalid while generate mutates it
    prefix = reusable_prefix_length(state, input_ids, pixel_values, model.config.image_token_id)
    if prefix > 0:
        cache = state.cache
        cache.crop(prefix - cache.get_seq_length())
        kept_pixel_values = state.pixel_values
        generate_pixel_values = None  # every image token is in the cached prefix
    else:
        cache = DynamicCache(config=model.config.get_text_config(decoder=True))
        kept_pixel_values = pixel_values.detach().clone() if pixel_values is not None else None
        generate_pixel_values = pixel_values
    output_ids = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, pixel_values=generate_pixel_values, cache=cache, **kwargs
    )
    if _is_plain_dynamic(cache):
        length = cache.get_seq_length()
        model.__dict__[_STATE_ATTRIBUTE] = ChatCacheState(output_ids[0, :length].clone(), cache, kept_pixel_values)
    return output_ids


def generate_turn(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pixel_values: torch.Tensor | None,
    kwargs: dict[str, Any],
    reuse_cache: bool = True,
) -> torch.Tensor:
    """One chat turn's `generate`: through the kept cache (`generate_reusing_cache`) when `reuse_cache` and
    `can_reuse` allow it, else a plain `model.generate`. Used by `model.chat()` and the interactive CLI."""
    if reuse_cache and can_reuse(model, input_ids, kwargs):
        return generate_reusing_cache(model, input_ids, attention_mask, pixel_values, kwargs)
    return model.generate(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, **kwargs)


def clear_chat_cache(model: Any) -> None:
    """Drop the kept chat cache (frees its memory; the next `chat()` turn runs from scratch)."""
    model.__dict__.pop(_STATE_ATTRIBUTE, None)


__all__ = [
    "ChatCacheState",
    "can_reuse",
    "clear_chat_cache",
    "generate_reusing_cache",
    "generate_turn",
    "reusable_prefix_length",
]
