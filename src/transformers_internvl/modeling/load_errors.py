"""Load errors that name shapes: a checkpoint tensor whose shape does not fit the config raises a `ValueError` that
says which tensor, which shape it has and which the config implies (for InternLM2's fused `wqkv`, with the head maths).

transformers raises a generic `RuntimeError` ("size mismatch") in that case; `from_pretrained` of the InternVL and
InternLM2 models runs inside `naming_shape_mismatches`, and their `_adjust_missing_and_unexpected_keys` hands the
mismatched keys to `record_shape_mismatches`, so that the error is re-raised with the shapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch

# What the running `from_pretrained` saw (None outside one): the mismatched keys `(name, checkpoint_shape,
# model_shape)` and the config of the model being loaded.
_SHAPE_MISMATCHES: ContextVar[dict | None] = ContextVar("_SHAPE_MISMATCHES", default=None)


def check_wqkv_shape(
    weight_shape: tuple[int, ...] | torch.Size,
    hidden_size: int,
    num_attention_heads: int,
    num_key_value_heads: int,
    name: str = "wqkv.weight",
) -> None:
    """Raises a `ValueError` naming the shapes if a fused `wqkv` weight of shape `weight_shape` does not fit the heads.

    The expected shape is `((num_attention_heads + 2 * num_key_value_heads) * head_dim, hidden_size)` with
    `head_dim = hidden_size // num_attention_heads`, and `num_attention_heads` must be a multiple of
    `num_key_value_heads`.
    """
    if num_attention_heads <= 0 or hidden_size % num_attention_heads != 0:
        raise ValueError(
            f"hidden_size ({hidden_size}) must be a positive multiple of num_attention_heads ({num_attention_heads})"
        )
    if num_key_value_heads <= 0 or num_attention_heads % num_key_value_heads != 0:
        raise ValueError(
            f"{name}: num_attention_heads ({num_attention_heads}) is not a multiple of num_key_value_heads "
            f"({num_key_value_heads}), so the grouped [kv_heads][heads/kv_heads + 2][head_dim] layout is undefined"
        )
    head_dim = hidden_size // num_attention_heads
    expected = ((num_attention_heads + 2 * num_key_value_heads) * head_dim, hidden_size)
    if tuple(weight_shape) != expected:
        raise ValueError(
            f"{name} has shape {tuple(weight_shape)}, expected {expected} = ((num_attention_heads "
            f"{num_attention_heads} + 2 * num_key_value_heads {num_key_value_heads}) * head_dim {head_dim}, "
            f"hidden_size {hidden_size})"
        )


def describe_wqkv_mismatch(name: str, checkpoint_shape: tuple[int, ...], config) -> str:
    """One line naming a checkpoint `wqkv` shape, the shape the config implies, and the heads the rows would fit."""
    head_dim = config.hidden_size // config.num_attention_heads
    expected_rows = (config.num_attention_heads + 2 * config.num_key_value_heads) * head_dim
    message = (
        f"{name} has shape {tuple(checkpoint_shape)} in the checkpoint, expected ({expected_rows}, "
        f"{config.hidden_size}) = ((num_attention_heads {config.num_attention_heads} + 2 * num_key_value_heads "
        f"{config.num_key_value_heads}) * head_dim {head_dim}, hidden_size {config.hidden_size})"
    )
    rows = checkpoint_shape[0] if checkpoint_shape else 0
    kv_rows = rows - config.num_attention_heads * head_dim
    if rows % head_dim == 0 and kv_rows > 0 and kv_rows % (2 * head_dim) == 0:
        message += f"; its rows would fit num_key_value_heads={kv_rows // (2 * head_dim)}"
    return message


def record_shape_mismatches(loading_info, config) -> None:
    """Keep the mismatched keys of a load (transformers' `LoadStateDictInfo`) and the model's config for
    `naming_shape_mismatches`."""
    collected = _SHAPE_MISMATCHES.get()
    if collected is not None:
        collected["mismatches"].extend(sorted(loading_info.mismatched_keys))
        collected["config"] = config


@contextmanager
def naming_shape_mismatches(describe: Callable[[Sequence[tuple], object], str | None]) -> Iterator[None]:
    """Turn transformers' size-mismatch `RuntimeError` into a `ValueError` with `describe(mismatched_keys, config)`.

    `describe` gets the `(name, checkpoint_shape, model_shape)` triples recorded during the load and the config of
    the model, and returns the message, or `None` to let the original error through.
    """
    token = _SHAPE_MISMATCHES.set({"mismatches": [], "config": None})
    try:
        yield
    except RuntimeError as error:
        collected = _SHAPE_MISMATCHES.get()
        mismatches = collected["mismatches"]
        message = describe(mismatches, collected["config"]) if mismatches else None
        if message:
            raise ValueError(message) from error
        raise
    finally:
        _SHAPE_MISMATCHES.reset(token)


def describe_internlm2_mismatches(mismatches: Sequence[tuple], config) -> str | None:
    """The message of an InternLM2 load: one line per fused `wqkv` that does not fit the heads."""
    lines = [
        describe_wqkv_mismatch(name, tuple(checkpoint_shape), config)
        for name, checkpoint_shape, _ in mismatches
        if name.endswith("attention.wqkv.weight")
    ]
    if not lines:
        return None
    return "The checkpoint's fused attention weights do not match the config's head layout:\n  " + "\n  ".join(lines)


def describe_internvl_mismatches(mismatches: Sequence[tuple], config) -> str:
    """The message of an InternVL load: one line per tensor (an InternLM2 `wqkv` with the head maths)."""
    lines = []
    for name, checkpoint_shape, model_shape in mismatches:
        if (
            config is not None
            and config.text_config.model_type == "internlm2"
            and name.endswith("attention.wqkv.weight")
        ):
            lines.append(describe_wqkv_mismatch(name, tuple(checkpoint_shape), config.text_config))
        else:
            lines.append(
                f"{name} has shape {tuple(checkpoint_shape)} in the checkpoint, the config implies {tuple(model_shape)}"
            )
    return "The checkpoint's tensors do not match the config's shapes:\n  " + "\n  ".join(lines)


__all__ = [
    "check_wqkv_shape",
    "describe_internlm2_mismatches",
    "describe_internvl_mismatches",
    "describe_wqkv_mismatch",
    "naming_shape_mismatches",
    "record_shape_mismatches",
]
