"""Key/value-cache reuse across `model.chat()` turns.

The original `chat()` re-encodes the images and the whole history every turn. Here the cache of the previous turn
(prompt + answer) is kept on the model; the next turn's prompt is compared token by token with the tokens that cache
holds, the cache is cut back to the longest common prefix, and `generate` runs only on the rest. The vision tower is
skipped when every image token of the new prompt lies in that prefix and `pixel_values` equal those of the cached
turn. Anything else (another history, other images, a new image, another system message or template) shortens the
common prefix or discards the cache, and so do other weights, dtype, device or config (`model_state_key`): the
answer is the one a fresh run gives. Greedy text is the same up to floating-point rounding: the cached keys were
computed in other shapes (one token per decode step, or a shorter prefill) than a fresh prefill computes them. In
float32 the tests see identical tokens; in bfloat16 a near-tie can flip a later token (1 of 8 four-turn
conversations of the tiny Qwen2 test model with SDPA); `reuse_chat_cache = False` re-runs everything as the
original does.

Used for single-sequence greedy or sampling `chat()` with a dynamic cache only: beam search, assisted generation
(`prompt_lookup_num_tokens`, an assistant model), DoLa, contrastive search, several return sequences, a caller's own
cache or `cache_implementation` (even "dynamic"), `use_cache=False` and caches with non-plain layers (sliding window,
linear attention) run without reuse. PEFT adapters switched, disabled or rescaled, forward hooks added or removed and
optimizer steps (fused ones too) between turns also discard the cache (`model_state_key`). With
rotary embeddings whose frequencies depend on the sequence length (`dynamic` NTK, `longrope`), a cache is reused only
while both it and the new prompt stay within the length where that scaling starts: beyond it a fresh run rotates
every key with the frequencies of the new length, which cached keys do not have.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from transformers import GenerationConfig
from transformers.cache_utils import DynamicCache, DynamicLayer
from transformers.generation.configuration_utils import GenerationMode
from transformers.utils import logging

logger = logging.get_logger(__name__)

_STATE_ATTRIBUTE = "_chat_cache_state"


@dataclass
class ChatCacheState:
    """What the kept cache holds: the K/V of `token_ids` (1-D), built with `pixel_values` for its image tokens by
    the model whose `model_state_key` was `model_state`."""

    token_ids: torch.Tensor
    cache: DynamicCache
    pixel_values: torch.Tensor | None
    model_state: tuple = ()


def effective_generation_config(model: Any, kwargs: dict[str, Any]) -> GenerationConfig | None:
    """The generation config `generate(**kwargs)` will run with (kwargs over the passed config over the model's), from
    transformers' private `GenerationMixin._prepare_generation_config` (5.24: `(config, **kwargs) -> (config,
    model_kwargs)`). None when it rejects the settings (`generate` reports them), and, with a warning, when that method
    is missing or answers otherwise (another transformers release): the chat then runs without cache reuse."""
    settings = {name: value for name, value in kwargs.items() if name != "generation_config"}
    try:
        config, _ = model._prepare_generation_config(kwargs.get("generation_config"), **settings)
    except ValueError:  # settings `generate` itself refuses, with its own message
        return None
    except (AttributeError, TypeError) as error:
        config, reason = None, repr(error)
    else:
        reason = f"it returned {type(config).__name__}"
    if isinstance(config, GenerationConfig):
        return config
    logger.warning_once(
        "chat(): the effective generation config could not be read through transformers' "
        f"`_prepare_generation_config` ({reason}); the key/value cache is not reused between turns."
    )
    return None


def can_reuse(model: Any, input_ids: torch.Tensor, kwargs: dict[str, Any]) -> bool:
    """Whether this `generate` call may use (and keep) a chat cache: one sequence, greedy or sampling, a dynamic
    cache of our own (assisted generation, beam search, DoLa, contrastive search and custom decoding loops reshape
    or re-run the cache and run without reuse)."""
    if not getattr(model, "reuse_chat_cache", False) or input_ids.shape[0] != 1:
        return False
    if any(name in kwargs for name in ("cache", "past_key_values", "assistant_model", "custom_generate")):
        return False
    config = effective_generation_config(model, kwargs)
    if config is None or config.use_cache is False or (config.num_return_sequences or 1) > 1:
        return False
    if config.cache_implementation is not None:  # `generate` refuses any, "dynamic" included, next to a cache object
        return False
    return config.get_generation_mode() in (GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE)


_PLAIN_SCALARS = (bool, int, float, str, type(None))
_NOT_PLAIN = object()


def _plain_value(value: Any, depth: int = 0) -> Any:
    """`value` as a comparable tuple when it is built of scalars (nested lists, tuples, sets, dicts), else `_NOT_PLAIN`."""
    if isinstance(value, _PLAIN_SCALARS):
        return value
    if depth < 3 and isinstance(value, (list, tuple, set, frozenset)):
        items = [_plain_value(item, depth + 1) for item in value]
        if any(item is _NOT_PLAIN for item in items):
            return _NOT_PLAIN
        return (type(value).__name__, tuple(sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items))
    if depth < 3 and isinstance(value, dict):
        items = [(repr(key), _plain_value(item, depth + 1)) for key, item in value.items()]
        return ("dict", tuple(item for item in items if item[1] is not _NOT_PLAIN))
    return _NOT_PLAIN


_MODULE_INTERNALS = frozenset(vars(torch.nn.Module())) - {"training"}


def _module_switches(model: Any) -> tuple:
    """Per module, its plain attributes (`training`, PEFT's `_active_adapter`, `_disable_adapters`, `scaling`,
    `merged_adapters`, ...), the functions set on the instance (a patched `forward`; compared by identity) and the
    ids of its forward hooks: state that changes the outputs with the same weights (`with
    peft_model.disable_adapter():`, `set_adapter`, a hook or patch that edits activations)."""
    switches = []
    for name, module in model.named_modules():
        attributes, functions = [], []
        for key, value in vars(module).items():
            if key in _MODULE_INTERNALS:  # parameters, buffers, submodules, hook tables: read elsewhere
                continue
            if (plain := _plain_value(value)) is not _NOT_PLAIN:
                attributes.append((key, plain))
            elif callable(value) and not isinstance(value, (torch.nn.Module, torch.Tensor, type)):
                functions.append((key, value))
        hooks = (tuple(module._forward_pre_hooks), tuple(module._forward_hooks))
        switches.append((name, type(module), tuple(attributes), tuple(functions), hooks))
    return tuple(switches)


def model_state_key(model: Any) -> tuple:
    """What the model's key/value states depend on besides the tokens: every parameter's and buffer's storage,
    dtype, device and in-place version counter, the configuration (`select_layer`, `ps_version`, rope, ...),
    every module's plain attributes and forward hooks (`_module_switches`: PEFT adapters switched, disabled or
    rescaled, train/eval mode), and the number of optimizer steps run (`_optimizer_steps`). `model.to(...)`,
    `load_state_dict`, in-place updates, training steps, added modules (adapters), adapter switches and config
    edits all change it. (Other in-place writes through `.data`, and to inference tensors, which keep no version
    counter, go unseen.)"""
    weights = tuple(
        (tensor.data_ptr(), tensor.dtype, tensor.device, -1 if tensor.is_inference() else tensor._version)
        for tensor in itertools.chain(model.parameters(), model.buffers())
    )
    return weights, model.config.to_dict(), _module_switches(model), _optimizer_steps()


_OPTIMIZER_STEPS = [0, None]  # steps counted, the hook's handle


def _count_step(*_: Any) -> None:
    _OPTIMIZER_STEPS[0] += 1


def _optimizer_steps() -> int:
    """How many `torch.optim` steps ran since the first chat turn (any optimizer, any model). Fused optimizers
    (`AdamW(fused=True)`, transformers' default `adamw_torch_fused`) update the weights in place without bumping
    their version counter, so a step between two turns would otherwise go unseen."""
    if _OPTIMIZER_STEPS[1] is None:
        _OPTIMIZER_STEPS[1] = register_optimizer_step_post_hook(_count_step)
    return _OPTIMIZER_STEPS[0]


def length_dependent_rope_limit(text_config: Any) -> int | None:
    """The sequence length above which the LLM's rotary frequencies change with the length (`dynamic` NTK scaling,
    `longrope`), or None when they do not. Reads `rope_parameters` / `rope_scaling` (transformers' and the original
    InternLM2's spelling); the smaller of `max_position_embeddings` and `original_max_position_embeddings` (0 when the
    config gives neither)."""
    for name in ("rope_parameters", "rope_scaling"):
        parameters = getattr(text_config, name, None)
        if not isinstance(parameters, dict):
            continue
        nested = [value for value in parameters.values() if isinstance(value, dict)]  # per layer type
        for entry in [parameters, *nested]:
            if entry.get("rope_type", entry.get("type")) in ("dynamic", "longrope"):
                limits = [
                    entry.get("original_max_position_embeddings"),
                    getattr(text_config, "original_max_position_embeddings", None),
                    getattr(text_config, "max_position_embeddings", None),
                ]
                # No known length: 0, i.e. never reuse (rather than guess where the scaling starts).
                return min((int(limit) for limit in limits if limit), default=0)
    return None


def reusable_prefix_length(
    state: ChatCacheState | None,
    input_ids: torch.Tensor,
    pixel_values: torch.Tensor | None,
    image_token_id: int | None,
    max_length: int | None = None,
    tokens_per_tile: int | None = None,
) -> int:
    """How many leading tokens of `input_ids` (`(1, seq)`) the kept cache can serve (0: none).

    At least one token is always left to run. Image tokens past the prefix, or pixel values other than the cached
    ones for image tokens inside it, give 0; so do pixel values without image tokens and image tokens without pixel
    values, and (with `tokens_per_tile`, the model's `num_image_token`) a number of image tokens other than
    `tiles * tokens_per_tile`: a fresh run reports those mismatches, which a served prefix would skip (the vision
    tower does not run). Also 0: a cache or prompt longer than `max_length` (the `length_dependent_rope_limit` of
    the LLM, None: no limit).
    """
    if state is None:
        return 0
    if max_length is not None and max(state.token_ids.shape[0], input_ids.shape[1]) > max_length:
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
        if tokens_per_tile is not None and image_positions.shape[0] != pixel_values.shape[0] * tokens_per_tile:
            return 0  # e.g. another `num_patches_list` over the same tiles: the fresh run's placeholder check raises
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
    model_state = model_state_key(model)
    if state is not None and state.model_state != model_state:
        state = None  # other weights, dtype, device or config since the cache was built
    text_config = model.config.get_text_config(decoder=True)
    prefix = reusable_prefix_length(
        state,
        input_ids,
        pixel_values,
        model.config.image_token_id,
        length_dependent_rope_limit(text_config),
        tokens_per_tile=getattr(model.config, "num_image_token", None),
    )
    if prefix > 0:
        cache = state.cache
        cache.crop(prefix - cache.get_seq_length())
        kept_pixel_values = state.pixel_values
        generate_pixel_values = None  # every image token is in the cached prefix
    else:
        cache = DynamicCache(config=text_config)
        kept_pixel_values = pixel_values.detach().clone() if pixel_values is not None else None
        generate_pixel_values = pixel_values
    output_ids = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, pixel_values=generate_pixel_values, cache=cache, **kwargs
    )
    if _is_plain_dynamic(cache):
        length = cache.get_seq_length()
        model.__dict__[_STATE_ATTRIBUTE] = ChatCacheState(
            output_ids[0, :length].clone(), cache, kept_pixel_values, model_state
        )
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
    "length_dependent_rope_limit",
    "reusable_prefix_length",
    "model_state_key",
]
