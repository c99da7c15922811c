"""Configuration of the InternViT vision tower (InternViT-300M and InternViT-6B)."""

from __future__ import annotations

import math

from transformers import PreTrainedConfig
from transformers.utils import logging

logger = logging.get_logger(__name__)

NORM_TYPES = ("layer_norm", "rms_norm")
# Sizes and counts of the tower (`validate_architecture`): a 0 or a str would fail deep in the model's construction.
_POSITIVE_INTS = (
    "num_channels",
    "patch_size",
    "image_size",
    "hidden_size",
    "num_attention_heads",
    "intermediate_size",
    "num_hidden_layers",
)


class InternVisionConfig(PreTrainedConfig):
    r"""
    Configuration of an InternViT vision tower, read verbatim from the `vision_config` of an original OpenGVLab
    checkpoint (`model_type` `"intern_vit_6b"`, as the original writes it for both sizes).

    The two published variants:

    | | InternViT-300M-448px-V2_5 | InternViT-6B-448px-V2_5 |
    |---|---|---|
    | `hidden_size` / `num_hidden_layers` / `num_attention_heads` / `intermediate_size` | 1024 / 24 / 16 / 4096 | 3200 / 45 / 25 / 12800 |
    | `norm_type` | `"layer_norm"` | `"rms_norm"` |
    | `qk_normalization` | `False` | `True` (RMSNorm over all heads) |
    | `qkv_bias` | `True` | `False` |

    Args:
        num_channels: Input image channels.
        patch_size: Side of a square ViT patch in pixels (14).
        image_size: Side of a square tile in pixels (448); the position embedding covers `(image_size/patch_size)**2`
            patches plus the CLS token.
        qkv_bias: Whether the fused `qkv` projection has a bias.
        hidden_size: Width of the tower.
        num_attention_heads: Attention heads per layer.
        intermediate_size: Hidden width of the MLP.
        qk_normalization: RMSNorm over the concatenated heads of queries and keys (InternViT-6B).
        num_hidden_layers: Number of encoder layers.
        hidden_act: MLP activation (`"gelu"`: exact GELU).
        norm_type: `"layer_norm"` or `"rms_norm"`.
        layer_norm_eps: Epsilon of every norm in the tower, the QK-norm included.
        dropout: Dropout of the attention projection and the MLP output (0 in all released models).
        drop_path_rate: Stochastic-depth rate of the last layer; layer `i` uses `linspace(0, rate, depth)[i]`.
        attention_dropout: Dropout on attention probabilities.
        initializer_range: Std of the normal initialisation of linear layers.
        initializer_factor: Initial value of the layer-scale vectors `ls1`/`ls2`.
    """

    model_type = "intern_vit_6b"
    base_config_key = "vision_config"

    num_channels: int = 3
    patch_size: int = 14
    image_size: int = 224
    qkv_bias: bool = False
    hidden_size: int = 3200
    num_attention_heads: int = 25
    intermediate_size: int = 12800
    qk_normalization: bool = True
    num_hidden_layers: int = 48
    use_flash_attn: bool = True
    hidden_act: str = "gelu"
    norm_type: str = "rms_norm"
    layer_norm_eps: float = 1e-6
    dropout: float = 0.0
    drop_path_rate: float = 0.0
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    initializer_factor: float = 0.1

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.validate_architecture()

    def validate_architecture(self) -> None:
        """Raises `TypeError` / `ValueError` naming the field: a size or count that is not a positive integer,
        `qkv_bias` / `qk_normalization` that are not booleans (the string "false" would build the layers), a
        `layer_norm_eps` that is not a finite number >= 0, an unknown `hidden_act` or `norm_type`, sizes that do not
        divide."""
        for name in _POSITIVE_INTS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                error = ValueError if isinstance(value, int) and not isinstance(value, bool) else TypeError
                raise error(
                    f"`vision_config.{name}` must be a positive integer, got {value!r} ({type(value).__name__})."
                )
        for name in ("qkv_bias", "qk_normalization"):  # a string "false" is truthy and would build other layers
            value = getattr(self, name)
            if not isinstance(value, (bool, int)) or value not in (0, 1):
                raise TypeError(f"`vision_config.{name}` must be a boolean, got {value!r} ({type(value).__name__}).")
        eps = self.layer_norm_eps
        wrong_type = isinstance(eps, bool) or not isinstance(eps, (int, float))
        # Any finite eps >= 0 is kept (transformers' own tests use 1.0); NaN / -inf give NaN features, also in a
        # tower loaded alone (`InternVisionModel.from_pretrained(vision_path)`, the original training scripts' way).
        if wrong_type or not math.isfinite(eps) or eps < 0:
            error = TypeError if wrong_type else ValueError
            raise error(
                f"`vision_config.layer_norm_eps` must be finite and >= 0, got {eps!r} ({type(eps).__name__})."
            )
        from transformers.activations import ACT2FN

        if not isinstance(self.hidden_act, str) or self.hidden_act not in ACT2FN:
            raise ValueError(
                f"`vision_config.hidden_act` must be an activation name of transformers' ACT2FN (InternViT: 'gelu'), "
                f"got {self.hidden_act!r}."
            )
        if self.norm_type not in NORM_TYPES:
            raise ValueError(f"`norm_type` must be one of {NORM_TYPES}, got {self.norm_type!r}.")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"The hidden size ({self.hidden_size}) is not a multiple of the number of attention heads "
                f"({self.num_attention_heads})."
            )
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"`image_size` ({self.image_size}) must be a multiple of `patch_size` ({self.patch_size})."
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_patches_per_side(self) -> int:
        """Patches along one side of a tile (32 for 448 px tiles and 14 px patches)."""
        return self.image_size // self.patch_size


# The name of this package before version 0.2 (equal to transformers' own, different `InternVLVisionConfig`).
InternVLVisionConfig = InternVisionConfig

__all__ = ["InternVisionConfig", "InternVLVisionConfig"]
