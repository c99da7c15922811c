"""Checks on the multimodal inputs of `InternVLChatBaseModel.forward` and `InternVLChatForConditionalGeneration.generate`
(issue 12): nothing generates from unfilled `<IMG_CONTEXT>` slots, `num_tiles` and `image_flags` match the tiles."""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers.utils.import_utils import torch_compilable_check

__all__ = [
    "PromptMaskCheckMixin",
    "check_attention_mask",
    "check_generate_prompt",
    "check_chat_inputs",
    "cached_length",
    "check_image_flags",
    "check_input_ids",
    "check_no_unfilled_image_tokens",
    "check_num_tiles",
    "check_pixel_values",
    "merge_tile_count_aliases",
    "question_list",
    "vision_feature_layer_index",
    "python_scalar",
]


def cached_length(cache: Any) -> int | torch.Tensor:
    """Tokens already in `cache` (0 without one; a tensor for static caches). Decoding steps see only new tokens,
    which may legitimately include a generated `<IMG_CONTEXT>` id: only the prompt (nothing cached) is checked for
    unfilled slots."""
    get_seq_length = getattr(cache, "get_seq_length", None)
    return 0 if get_seq_length is None else get_seq_length()


def check_input_ids(input_ids: Any, vocab_size: int | None = None, past_length: int | torch.Tensor = 0) -> None:
    """Refuse `input_ids` the embedding cannot look up: not a `(batch, seq)` integer tensor with at least one token,
    or an id outside `0..vocab_size - 1` (torch: "index out of range in self" on a CPU, a device-side assert that
    spoils the CUDA context on a GPU). A tokenizer with tokens added after the model was saved gives such ids (a
    converted -hf folder's `<video>`, `convert` warns about it). The id range is checked on the prompt only (nothing
    cached), not on every decoding step, not inside a compiled call, and not when `vocab_size` is None (shape only).

    Raises:
        TypeError: not an integer tensor. ValueError: not 2-D, no tokens, or an id out of range (named with the
            vocabulary size).
    """
    if input_ids is None:
        return
    if not isinstance(input_ids, torch.Tensor) or input_ids.is_floating_point() or input_ids.is_complex():
        kind = input_ids.dtype if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise TypeError(f"`input_ids` must be an integer tensor of token ids (batch, seq), got {kind}.")
    if input_ids.ndim != 2:
        raise ValueError(f"`input_ids` must have shape (batch, seq), got {tuple(input_ids.shape)}.")
    if input_ids.shape[1] == 0:
        raise ValueError(f"`input_ids` holds no token (shape {tuple(input_ids.shape)}).")
    if (
        vocab_size is None
        or not isinstance(past_length, int)
        or past_length > 0
        or input_ids.device.type == "meta"  # shape-only runs have no values
        or torch.compiler.is_compiling()
    ):
        return
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(
            f"`input_ids` holds the token id {bad}, outside the model's vocabulary (0..{vocab_size - 1}); was the "
            "tokenizer given tokens the model's embedding does not have?"
        )


def check_attention_mask(
    attention_mask: Any, inputs: Any, past_length: int | torch.Tensor = 0, check_values: bool = False
) -> None:
    """Refuse a 2-D `attention_mask` that does not fit the prompt it masks (issue 12: never a silently wrong result).

    The LLM takes a mask of another length without a word: a shorter or longer one gives other logits than the
    same prompt without a mask (and eager and sdpa attention then disagree), a mask of another batch size fails
    deep inside `generate` ("mat1 and mat2 shapes cannot be multiplied"). `generate` also derives the position ids
    from the mask (`cumsum`), so values other than 0 and 1 (`2`, `-1`, `0.5`) silently shift the positions and change
    the answer; `check_values=True` (in `generate`) refuses them. Checked on the prompt only (nothing cached, not
    inside a compiled call): decoding steps pass the mask of the prompt and the tokens so far. 4-D masks and dicts of
    precomputed masks (transformers' own) are left to transformers.

    Args:
        attention_mask: `(batch, seq)` 1 = attend, 0 = padding (bool, integer or floating), or None.
        inputs: The `(batch, seq)` `input_ids` or `(batch, seq, hidden)` `inputs_embeds` it masks.
        past_length: Tokens already cached (`cached_length`).
        check_values: Also require every value to be 0 or 1.

    Raises:
        ValueError: its shape is not `inputs.shape[:2]`, or (`check_values`) it holds a value other than 0 and 1.
    """
    if attention_mask is None or not isinstance(inputs, torch.Tensor) or inputs.ndim < 2:
        return
    if not isinstance(past_length, int) or past_length > 0 or torch.compiler.is_compiling():
        return
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.ndim != 2:
        return  # 4-D custom masks and the per-attention-type dicts of precomputed masks are transformers'
    expected = tuple(inputs.shape[:2])
    if tuple(attention_mask.shape) != expected:
        raise ValueError(
            f"`attention_mask` must have the shape (batch, seq) of the prompt, {expected}, got "
            f"{tuple(attention_mask.shape)}: a mask of another length or batch size masks other positions."
        )
    if check_values and attention_mask.device.type != "meta" and attention_mask.numel():
        outside = (attention_mask != 0) & (attention_mask != 1)
        if bool(outside.any()):
            raise ValueError(
                f"`attention_mask` must hold only 1 (attend) and 0 (padding), got the value "
                f"{attention_mask[outside][0].item()!r}: `generate` counts positions from the mask."
            )


class PromptMaskCheckMixin:
    """`generate` that first runs `check_generate_prompt` (shape only for the mask: the original InternLM2 gives the
    same result as this package for other mask values), for a causal LM whose `forward` checks the mask on the prompt
    too: transformers' `generate` derives positions and the cache layout from the mask before the first `forward`,
    where a mask of another length either fails deep inside ("mat1 and mat2 shapes cannot be multiplied") or
    generates other tokens without a word.

    Raises:
        ValueError / TypeError: as `check_generate_prompt`.
    """

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        ids = args[0] if args else kwargs.get("input_ids", kwargs.get("inputs"))
        check_generate_prompt(kwargs, ids, check_values=False)
        return super().generate(*args, **kwargs)


def check_generate_prompt(kwargs: Mapping[str, Any], ids: Any, check_values: bool = True) -> None:
    """`generate`'s prompt checks: `check_input_ids` on its `input_ids` (`ids`; shape and type: transformers'
    `generate` fails on 1-D ids without a word; the id range is checked in `forward`), and `check_attention_mask(...,
    check_values)` against those ids, or without them against `inputs_embeds` (a mask of another length or with
    values other than 0 / 1 shifts the positions `generate` counts from it just the same; not checked against
    embeddings after a filled cache).

    Raises:
        ValueError / TypeError: as `check_input_ids` and `check_attention_mask`.
    """
    if isinstance(ids, torch.Tensor):
        check_input_ids(ids)
    prompt = ids if isinstance(ids, torch.Tensor) else kwargs.get("inputs_embeds")
    if not isinstance(ids, torch.Tensor) and cached_length(kwargs.get("cache", kwargs.get("past_key_values"))):
        return
    check_attention_mask(kwargs.get("attention_mask"), prompt, check_values=check_values)


def check_no_unfilled_image_tokens(
    input_ids: torch.Tensor | None,
    image_token_id: int | None,
    num_tiles: int,
    reason: str,
    past_length: int | torch.Tensor = 0,
) -> None:
    """Refuse a prompt with `<IMG_CONTEXT>` tokens but no image features for them.

    Without features the model would run those positions from the raw embedding of `<IMG_CONTEXT>` and answer
    about no image. Compile-friendly (`torch_compilable_check`).

    Args:
        input_ids: `(batch, seq)` token ids (nothing is checked when `None`, i.e. for `inputs_embeds`-only calls).
        image_token_id: The id of `<IMG_CONTEXT>` (nothing is checked when `None`).
        num_tiles: Tiles given (0 here).
        reason: What was given instead of pixels (`"no pixel_values"`, `"pixel_values with zero tiles"`).
        past_length: Tokens already cached (`cached_length`); decoding steps (> 0) are not checked, nor is a
            compiled call with a static cache (a tensor `past_length`), which `generate` makes only for decoding steps.

    Raises:
        ValueError: `input_ids` holds image tokens; the message gives their number and the tiles given.
    """
    if input_ids is None or image_token_id is None or not isinstance(input_ids, torch.Tensor):
        return
    if isinstance(past_length, int) and past_length > 0:
        return
    if isinstance(past_length, torch.Tensor) and torch.compiler.is_compiling():
        # A compiled step with a static cache is a decoding step (transformers' `generate` compiles only those; the
        # prefill runs eagerly and is checked), which is exempt; the data-dependent check would cost every compiled
        # token a check kernel and assertion (H200, 1B bf16, b8 static decode: 2,076 -> ~2,480 tokens/s without it).
        return
    count = (input_ids == image_token_id).sum()
    condition = count == 0
    if isinstance(past_length, torch.Tensor):  # static caches, uncompiled: one branch-free condition
        condition = condition | (past_length > 0)
    torch_compilable_check(
        condition,
        lambda: (
            f"`input_ids` holds {int(count)} image tokens (<IMG_CONTEXT>, id {image_token_id}) but {reason} were "
            f"given ({num_tiles} tiles): the image slots would be filled with nothing. Pass the `pixel_values` "
            f"(and `num_tiles`) the processor returned with these ids."
        ),
    )


def check_num_tiles(num_tiles: Sequence[int] | torch.Tensor | None, pixel_values: torch.Tensor | None) -> None:
    """`num_tiles` (tiles per image) must be non-negative integers summing to `pixel_values.shape[0]`.

    Raises:
        ValueError: a negative count, or a sum different from the number of tiles.
        TypeError: `num_tiles` is not a sequence / tensor of integers.
    """
    if num_tiles is None or pixel_values is None:
        return
    if isinstance(num_tiles, torch.Tensor):
        num_tiles = num_tiles.reshape(-1).tolist()
    if isinstance(num_tiles, (str, bytes)) or not hasattr(num_tiles, "__iter__"):
        raise TypeError(f"`num_tiles` must be a list or tensor of tile counts, got {type(num_tiles).__name__}.")
    values = [value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value for value in num_tiles]
    try:
        if any(isinstance(value, bool) for value in values):
            raise TypeError
        values = [operator.index(value) for value in values]
    except TypeError:
        raise TypeError(f"`num_tiles` must hold integers, got {values}.") from None
    if any(value < 0 for value in values):
        raise ValueError(f"`num_tiles` must hold non-negative tile counts, got {values}.")
    total = sum(values)
    if total != pixel_values.shape[0]:
        raise ValueError(f"`num_tiles` sums to {total} but `pixel_values` holds {pixel_values.shape[0]} tiles.")


def check_pixel_values(pixel_values: Any, channels: int, size: int, finite: bool = True) -> None:
    """`pixel_values` of `forward` / `generate` / `get_image_features`: a floating tensor `(num_tiles, channels, size,
    size)` of normalised tiles, finite (`finite=False` skips the one pass over the values).

    An integer or bool tensor (raw uint8 pixels, a mask) would be cast to float and answered from unnormalised values,
    NaN / inf tiles give NaN features and an answer from garbage: both are refused, as `chat()` refuses them.

    Raises:
        TypeError: not a torch.Tensor, or not of a floating dtype.
        ValueError: another shape, or NaN / infinite values.
    """
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"`pixel_values` must be a torch.Tensor, got {type(pixel_values).__name__}.")
    if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (channels, size, size):
        raise ValueError(
            f"`pixel_values` must have shape (num_tiles, {channels}, {size}, {size}), got {tuple(pixel_values.shape)}."
        )
    if not pixel_values.is_floating_point():
        raise TypeError(
            f"`pixel_values` must be a floating tensor of normalised tiles (the processor's output), got dtype "
            f"{pixel_values.dtype}."
        )
    if finite and pixel_values.numel() and pixel_values.device.type != "meta":
        torch_compilable_check(
            torch.isfinite(pixel_values).all(), "`pixel_values` holds NaN or infinite values.", ValueError
        )


def vision_feature_layer_index(
    config: Any, vision_feature_layer: Any = None, vision_feature_select_strategy: str | None = None
) -> int:
    """The vision layer whose states feed the projector: a per-call `vision_feature_layer` (transformers' name, which
    its own InternVL port takes in `forward`, `get_image_features` and `generate`), else `config.select_layer` (the
    original's name for the same index: -1 the last layer, otherwise `hidden_states[k]` of
    `(embeddings, layer_1, ..., layer_N)`, `internvl_chat_model.py` `extract_feature`).

    Raises:
        TypeError: `vision_feature_layer` is not one integer (InternVL projects a single layer).
        ValueError: it is out of range for the vision tower, or `vision_feature_select_strategy` is not `"default"`
            (InternVL always drops the CLS token: the 32x32 patch grid is what pixel unshuffle needs).
    """
    if vision_feature_select_strategy not in (None, "default"):
        raise ValueError(
            f"`vision_feature_select_strategy` must be 'default' (drop the CLS token, as InternVL does before pixel "
            f"unshuffle), got {vision_feature_select_strategy!r}."
        )
    if vision_feature_layer is None:
        return config.select_layer
    try:
        if isinstance(vision_feature_layer, bool):
            raise TypeError
        layer = operator.index(vision_feature_layer)
    except TypeError:
        raise TypeError(
            f"`vision_feature_layer` must be one integer layer index, got {type(vision_feature_layer).__name__} "
            f"{vision_feature_layer!r}."
        ) from None
    num_layers = config.vision_config.num_hidden_layers
    if not -(num_layers + 1) <= layer <= num_layers:
        raise ValueError(
            f"`vision_feature_layer` {layer} is out of range for a vision tower with {num_layers} layers (allowed "
            f"{-(num_layers + 1)} to {num_layers}: indices of (embeddings, layer_1, ..., layer_{num_layers}))."
        )
    return layer


def check_image_flags(image_flags: torch.Tensor | None, num_tiles: int) -> None:
    """`image_flags` needs one 0/1 flag per tile.

    Raises:
        ValueError: its length differs from the number of tiles, or a flag is neither 0 nor 1.
        TypeError: it is not a tensor.
    """
    if image_flags is None:
        return
    if not isinstance(image_flags, torch.Tensor):
        raise TypeError(f"`image_flags` must be a tensor of 0/1 flags, got {type(image_flags).__name__}.")
    if image_flags.numel() != num_tiles:
        raise ValueError(
            f"`image_flags` must hold one flag per tile: got {image_flags.numel()} flags (shape "
            f"{tuple(image_flags.shape)}) for {num_tiles} tiles."
        )
    invalid = (image_flags != 0) & (image_flags != 1)
    if bool(invalid.any()):
        # The original keeps the tiles whose flag == 1: any other value (7, -1, 0.5, True from a mask) silently
        # dropped a tile, and the mismatch surfaced as an unrelated token-count error.
        raise ValueError(
            f"`image_flags` must hold 0 (padding tile, dropped) or 1 (real tile) per tile, got "
            f"{sorted(set(image_flags[invalid].reshape(-1).tolist()))[:5]} among {image_flags.reshape(-1).tolist()[:8]}."
        )


def check_chat_inputs(tokenizer: Any, pixel_values: Any) -> None:
    """`chat()` / `batch_chat()` arguments: a tokenizer, and `pixel_values` None or a finite floating tensor
    `(num_tiles, 3, H, W)` (the processor's normalised tiles; NaN pixels would answer from garbage).

    Raises:
        TypeError: `tokenizer` is not a tokenizer, or `pixel_values` is not a floating torch.Tensor.
        ValueError: `pixel_values` holds NaN or infinite values.
    """
    if not callable(getattr(tokenizer, "convert_tokens_to_ids", None)):
        raise TypeError(f"`tokenizer` must be the model's tokenizer, got {type(tokenizer).__name__}.")
    if pixel_values is None:
        return
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(
            f"`pixel_values` must be a torch.Tensor of tiles (num_tiles, 3, H, W) or None, got "
            f"{type(pixel_values).__name__}; make it with the processor (or the model card's load_image)."
        )
    if not pixel_values.is_floating_point():
        raise TypeError(
            f"`pixel_values` must be a floating tensor of normalised tiles, got dtype {pixel_values.dtype}."
        )
    if not bool(torch.isfinite(pixel_values).all()):
        raise ValueError("`pixel_values` holds NaN or infinite values.")


def python_scalar(value: Any) -> Any:
    """A 0-d tensor / array or numpy scalar as its Python number (`tensor(2)` -> 2); anything else unchanged. Chat
    arguments (tile counts, token ids, the voting seed) accept these as the original and `generate` do."""
    return value.tolist() if getattr(value, "ndim", None) == 0 else value


def _tile_counts(name: str, value: Any) -> list[Any]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"`{name}` must be a list of tile counts (one per image), got {type(value).__name__}.")
    return list(value.tolist() if hasattr(value, "tolist") else value)


def merge_tile_count_aliases(**given: Any) -> Any:
    """The tiles-per-image list of `chat()` / `batch_chat()` passed under `num_patches_list` (the original's name) or
    an alias (`num_tiles_list`; `batch_chat`'s deprecated `image_counts`, which the original lets override
    `num_patches_list` silently): the one given, or None. Aliases given with equal values agree.

    Raises:
        ValueError: two of them are given with different values; the message names both and their values.
        TypeError: one of them is not a list / tuple / tensor.
    """
    chosen_name, chosen = None, None
    for name, value in given.items():
        if value is None:
            continue
        if chosen_name is None:
            chosen_name, chosen = name, value
        elif _tile_counts(name, value) != _tile_counts(chosen_name, chosen):
            raise ValueError(
                f"`{chosen_name}` ({_tile_counts(chosen_name, chosen)}) and its alias `{name}` "
                f"({_tile_counts(name, value)}) disagree; pass the tiles per image once."
            )
    return chosen


def question_list(questions: Any) -> list[str]:
    """The questions of `batch_chat` as a list, refusing a single string (which `list()` would split into
    characters, answering 'a', 'b', 'c' for "abc").

    Raises:
        TypeError: `questions` is a str / bytes or not a sequence, or an element is not a str.
        ValueError: `questions` is empty.
    """
    if isinstance(questions, (str, bytes)) or not isinstance(questions, Sequence):
        raise TypeError(
            f"`questions` must be a list of str (one per image), got {type(questions).__name__}"
            + (
                f" {questions!r}; use [{questions!r}] or chat() for one question."
                if isinstance(questions, str)
                else "."
            )
        )
    questions = list(questions)
    if not questions:
        raise ValueError("`questions` is empty; expected at least one question.")
    for index, question in enumerate(questions):
        if not isinstance(question, str):
            raise TypeError(f"`questions[{index}]` must be a str, got {type(question).__name__}.")
    return questions
