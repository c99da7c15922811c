"""Building blocks of the InternViT tower that hold no attention: the RMSNorm, `DropPath` and the patch / class /
position embeddings (the original's `InternRMSNorm`, `DropPath` from timm, `InternVisionEmbeddings`, in
`modeling_intern_vit.py`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from .configuration_intern_vit import InternVisionConfig


class InternVLVisionRMSNorm(LlamaRMSNorm):
    """RMSNorm computed in fp32 and cast back before the weight, as the original `InternRMSNorm` (same maths as
    transformers' `LlamaRMSNorm`)."""


NORM2FN: dict[str, type[nn.Module]] = {"rms_norm": InternVLVisionRMSNorm, "layer_norm": nn.LayerNorm}


class DropPath(nn.Module):
    """Stochastic depth per sample (timm semantics: surviving rows are scaled by 1/keep_prob)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return hidden_states
        keep_prob = 1.0 - self.drop_prob
        shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
        mask = hidden_states.new_empty(shape).bernoulli_(keep_prob)
        if keep_prob > 0.0:  # drop_prob 1 drops every row (timm's drop_path; not 0 / 0 = NaN)
            mask.div_(keep_prob)
        return hidden_states * mask

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class InternVLVisionEmbeddings(nn.Module):
    """Patch embedding + CLS token + learned position embedding (bicubically resized to the actual patch grid)."""

    def __init__(self, config: InternVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.class_embedding = nn.Parameter(torch.randn(1, 1, self.embed_dim))
        self.patch_embedding = nn.Conv2d(
            config.num_channels, self.embed_dim, kernel_size=config.patch_size, stride=config.patch_size
        )
        # `image_size`, `patch_size`, `num_patches`, `num_positions`: the original `InternVisionEmbeddings` attributes.
        self.image_size = config.image_size
        self.patch_size = config.patch_size
        self.position_embedding = nn.Parameter(torch.randn(1, self.num_positions, self.embed_dim))

    @property
    def num_patches_per_side(self) -> int:
        """Side of the patch grid the position embedding holds (`image_size // patch_size`)."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.num_patches_per_side**2

    @property
    def num_positions(self) -> int:
        return self.num_patches + 1

    def _patch_position_embedding(self, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        """Patch part of the position embedding for a `(height, width)` patch grid: `(1, height * width, dim)`."""
        pos_embed = self.position_embedding[:, 1:, :]
        if height == self.num_patches_per_side and width == self.num_patches_per_side:
            # Bicubic resampling to the same size is the identity (weights 0, 1, 0, 0), so skip it.
            return pos_embed.to(dtype)
        side = self.num_patches_per_side
        grid = pos_embed.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False)
        return grid.reshape(1, -1, height * width).permute(0, 2, 1).to(dtype)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`(num_tiles, 3, H, W)` -> `(num_tiles, 1 + (H/14)*(W/14), hidden_size)`, CLS first."""
        target_dtype = self.patch_embedding.weight.dtype
        patch_embeds = self.patch_embedding(pixel_values.to(dtype=target_dtype))
        batch_size, _, height, width = patch_embeds.shape
        patch_embeds = patch_embeds.flatten(2).transpose(1, 2)
        # Positions are added before the concatenation: the same element-wise sums as adding the concatenated position
        # embedding to the concatenated tokens (bit-identical), without two full-size temporaries per call.
        patch_embeds = patch_embeds + self._patch_position_embedding(height, width, target_dtype)
        class_embeds = self.class_embedding.to(target_dtype) + self.position_embedding[:, :1, :].to(target_dtype)
        return torch.cat([class_embeds.expand(batch_size, 1, -1), patch_embeds], dim=1)
