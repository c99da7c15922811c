"""The original's `pixel_shuffle` (space-to-depth of the vision tower's patch grid before the projector)."""

from __future__ import annotations

import torch

__all__ = ["pixel_unshuffle"]


def pixel_unshuffle(vision_features: torch.Tensor, downsample_ratio: float, ps_version: str) -> torch.Tensor:
    """Trade spatial resolution for channels, as the original `pixel_shuffle`.

    `(num_tiles, rows, cols, C)` -> `(num_tiles, rows*r, cols*r, C/r**2)` for `r = downsample_ratio`. With `"v2"`
    token `(i, j)` (row-major) is `concat(x[2i, 2j], x[2i, 2j+1], x[2i+1, 2j], x[2i+1, 2j+1])` for r = 0.5; `"v1"`
    leaves the output grid transposed (column-major), as the first InternVL releases did. `rows * r`, `cols * r` and
    `C / r**2` are truncated to integers, as in the original: sizes that do not divide raise torch's reshape error.
    Source: `InternVLChatModel.pixel_shuffle` in the original's
    internvl_chat/internvl/model/internvl_chat/modeling_internvl_chat.py.
    """
    num_tiles, rows, cols, channels = vision_features.shape
    scale = downsample_ratio
    # Merge pairs of neighbouring columns into channels, then pairs of rows (via the transposed view).
    vision_features = vision_features.reshape(num_tiles, rows, int(cols * scale), int(channels / scale))
    vision_features = vision_features.permute(0, 2, 1, 3).contiguous()
    vision_features = vision_features.reshape(
        num_tiles, int(cols * scale), int(rows * scale), int(channels / (scale * scale))
    )
    if ps_version == "v2":
        vision_features = vision_features.permute(0, 2, 1, 3).contiguous()
    return vision_features
