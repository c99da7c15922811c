"""The original `generate(..., visual_features=...)` argument: image features computed beforehand.

The original remote-code `InternVLChatModel.generate(pixel_values, input_ids, attention_mask, visual_features=None,
...)` (`internvl_chat/internvl/model/internvl_chat/modeling_internvl_chat.py`) places `visual_features` (what
`extract_feature(pixel_values)` returns, `(num_tiles, num_image_token, hidden)`) at the `<IMG_CONTEXT>` positions
instead of running the vision tower. Here they become transformers' pre-encoded `mm_encoder_outputs["image"]`, which
`generate` hands to the first forward step.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

__all__ = ["visual_features_to_encoder_outputs"]


def visual_features_to_encoder_outputs(kwargs: dict[str, Any], num_image_token: int, hidden_size: int) -> None:
    """Replace `kwargs["visual_features"]` (if given) by `kwargs["mm_encoder_outputs"] = {"image": ...}`, in place.

    Args:
        kwargs: `generate`'s keyword arguments. `pixel_values` and `num_tiles` are dropped when `visual_features` is
            given: the original does not run the tower on them then. (The original uses `visual_features` only when
            `pixel_values` is also passed, and otherwise silently embeds `<IMG_CONTEXT>` as text; here they are used
            either way.)
        num_image_token: tokens per tile (`config.num_image_token`).
        hidden_size: the LLM's hidden size.

    Raises:
        TypeError: `visual_features` is not a floating tensor (an integer tensor would be cast into the embeddings).
        ValueError: its last dimension is not `hidden_size`, or `mm_encoder_outputs["image"]` is given as well.
    """
    features = kwargs.pop("visual_features", None)
    if features is None:
        return
    if not isinstance(features, torch.Tensor):
        raise TypeError(
            "`visual_features` must be a tensor of image features `(num_tiles, num_image_token, hidden_size)` (what "
            f"`model.extract_feature(pixel_values)` returns), got {type(features).__name__}."
        )
    if not features.is_floating_point():
        raise TypeError(
            f"`visual_features` must be a floating tensor of image features (what `model.extract_feature` returns), got "
            f"dtype {features.dtype}."
        )
    if features.dim() < 2 or features.shape[-1] != hidden_size:
        raise ValueError(
            f"`visual_features` must have shape `(num_tiles, {num_image_token}, {hidden_size})` (the LLM's hidden "
            f"size last), got {tuple(features.shape)}."
        )
    encoder_outputs = dict(kwargs.get("mm_encoder_outputs") or {})
    if encoder_outputs.get("image") is not None:
        raise ValueError("Pass image features either as `visual_features` or as `mm_encoder_outputs`, not both.")
    flat = features.reshape(-1, hidden_size)
    # One row of `num_image_token` features per tile when they divide evenly (as `extract_feature` gives them);
    # otherwise one row holding all (the original only flattens them and fills the `<IMG_CONTEXT>` positions in order).
    rows = flat.shape[0] // num_image_token if flat.shape[0] % num_image_token == 0 else 1
    encoder_outputs["image"] = BaseModelOutputWithPooling(pooler_output=flat.reshape(rows, -1, hidden_size))
    kwargs["mm_encoder_outputs"] = encoder_outputs
    kwargs.pop("pixel_values", None)
    kwargs.pop("num_tiles", None)
