"""InternViT vision tower (InternViT-300M and InternViT-6B), with the original parameter names.

Module names follow the original checkpoints (`embeddings.{class_embedding, position_embedding, patch_embedding}`,
`encoder.layers.{i}.{norm1, attn.{qkv, q_norm, k_norm, proj}, ls1, norm2, mlp.{fc1, fc2}, ls2}`), so loading an
original checkpoint only strips the `vision_model.` prefix.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel
from transformers.activations import ACT2FN, GELUActivation
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, auto_docstring, logging
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .attention_kernels import contiguous_heads_on_cpu
from .intern_vit_parts import NORM2FN, DropPath, InternVLVisionEmbeddings, InternVLVisionRMSNorm
from .configuration_intern_vit import InternVisionConfig
from .inference_buffers import hooked, in_place_inference

logger = logging.get_logger(__name__)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Unpack[TransformersKwargs],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain attention as the original InternViT `_naive_attn`: `softmax((q * scale) @ k^T) @ v`, the softmax in the
    input dtype (no fp32 upcast: in bf16 an upcast would give other numbers than the original and keep an fp32 copy
    of the weights). `query/key/value`: `(batch, heads, seq, head_dim)`. Source: the original
    `internvl_chat/internvl/model/internvl_chat/modeling_intern_vit.py` (`InternAttention._naive_attn`)."""
    attn_weights = torch.matmul(query * scaling, key.transpose(2, 3))
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    if not in_place_inference(attn_weights.device.type):
        attn_weights = nn.functional.softmax(attn_weights, dim=-1)  # (autocast may run it in fp32)
    else:
        # Inference: the softmax overwrites the scores it reads (same kernel, bit-identical), so one
        # `(batch, heads, seq, seq)` tensor is alive instead of two (~470 MiB at 7 tiles of InternViT-300M in fp32).
        attn_weights = torch.softmax(attn_weights, dim=-1, out=attn_weights)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value)
    attn_output = attn_output.transpose(1, 2).contiguous()
    return attn_output, attn_weights


class InternVLVisionAttention(nn.Module):
    """Bidirectional attention with a fused `qkv` projection and optional QK-norm over all heads (InternViT-6B)."""

    def __init__(self, config: InternVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.attention_dropout = config.attention_dropout

        self.qkv = nn.Linear(self.embed_dim, 3 * self.embed_dim, bias=config.qkv_bias)
        # QK-norm normalises the concatenation of all heads (a `hidden_size` vector), not each head.
        self.q_norm = (
            InternVLVisionRMSNorm(self.embed_dim, eps=config.layer_norm_eps)
            if config.qk_normalization
            else nn.Identity()
        )
        self.k_norm = (
            InternVLVisionRMSNorm(self.embed_dim, eps=config.layer_norm_eps)
            if config.qk_normalization
            else nn.Identity()
        )
        self.proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.proj_drop = nn.Dropout(config.dropout)
        self.qk_normalization = config.qk_normalization  # (the original's attribute, as `scale` below)

    @property
    def scale(self) -> float:
        return self.scaling

    @property
    def use_flash_attn(self) -> bool:
        return (self.config._attn_implementation or "").startswith("flash_attention")

    def forward(
        self, hidden_states: torch.Tensor, **kwargs: Unpack[TransformersKwargs]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`(num_tiles, seq_len, hidden_size)` -> same shape, plus attention weights when the backend returns them."""
        batch_size, seq_len, _ = hidden_states.shape
        # qkv output is laid out as [3][heads][head_dim].
        query_states, key_states, value_states = (
            self.qkv(hidden_states).view(batch_size, seq_len, 3, self.embed_dim).unbind(2)
        )
        query_states = self.q_norm(query_states)
        key_states = self.k_norm(key_states)
        hidden_shape = (batch_size, seq_len, self.num_heads, self.head_dim)
        query_states = query_states.reshape(hidden_shape).transpose(1, 2)
        key_states = key_states.reshape(hidden_shape).transpose(1, 2)
        value_states = value_states.reshape(hidden_shape).transpose(1, 2)
        query_states, key_states, value_states = contiguous_heads_on_cpu(
            self.config._attn_implementation, query_states, key_states, value_states
        )

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            None,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            is_causal=False,
            **kwargs,
        )
        attn_output = attn_output.reshape(batch_size, seq_len, self.embed_dim)
        attn_output = self.proj_drop(self.proj(attn_output))
        return attn_output, attn_weights


def _add_residual(drop_path: nn.Module, branch: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """`residual + drop_path(branch)`, written into `drop_path`'s output when nothing else can hold it (`(x * ls).add_(h)`
    is `h + x * ls` element for element: addition commutes exactly; autograd needs neither the product nor the sum)."""
    if hooked(drop_path):  # a hook may keep drop_path's output, or wrap it in a view that may not be written
        return residual + drop_path(branch)
    return drop_path(branch).add_(residual)


class InternVLVisionMLP(nn.Module):
    def __init__(self, config: InternVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.act = ACT2FN[config.hidden_act]
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    @property
    def gelu_in_place(self) -> bool:
        """Whether inference may write the GELU over fc1's output: `act` is still transformers' exact GELU (not
        replaced by the user) and no hook on `fc1` (a wrapper's inner layers included, e.g. a PEFT `base_layer`) or
        `act` (or a global one) could see fc1's output or expect `act` to be called."""
        act = self.act
        return type(act) is GELUActivation and act.act is F.gelu and not hooked(*self.fc1.modules(), act)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`(num_tiles, seq_len, hidden_size)` -> same shape: `fc2(act(fc1(x)))`."""
        hidden_states = self.fc1(hidden_states)
        if in_place_inference(hidden_states.device.type) and self.gelu_in_place:
            # Inference: the exact GELU overwrites fc1's output (the same kernel, the same bits), so one
            # `(num_tiles, seq_len, intermediate_size)` tensor is alive instead of two (218 MiB at 13 tiles of
            # InternViT-300M in fp32).
            hidden_states = torch.ops.aten.gelu_(hidden_states)
        else:
            hidden_states = self.act(hidden_states)
        return self.fc2(hidden_states)


class InternVLVisionLayer(GradientCheckpointingLayer):
    """Pre-norm transformer block with layer scale and stochastic depth:
    `h += drop_path(attn(norm1(h)) * ls1); h += drop_path(mlp(norm2(h)) * ls2)`."""

    def __init__(self, config: InternVisionConfig, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.embed_dim, self.intermediate_size, self.norm_type = (  # the original's attributes
            config.hidden_size, config.intermediate_size, config.norm_type
        )
        norm_class = NORM2FN[config.norm_type]
        self.norm1 = norm_class(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = InternVLVisionAttention(config)
        self.ls1 = nn.Parameter(config.initializer_factor * torch.ones(config.hidden_size))
        self.norm2 = norm_class(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = InternVLVisionMLP(config)
        self.ls2 = nn.Parameter(config.initializer_factor * torch.ones(config.hidden_size))
        self.drop_path1 = DropPath(drop_path_rate) if drop_path_rate > 0.0 else nn.Identity()
        self.drop_path2 = DropPath(drop_path_rate) if drop_path_rate > 0.0 else nn.Identity()

    def forward(self, hidden_states: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> torch.Tensor:
        """`(num_tiles, seq_len, hidden_size)` -> same shape. The attention weights are returned by the attention
        module (where `output_attentions=True` records them) and released here, before the MLP and the next layer run
        (eager: `(num_tiles, heads, seq, seq)`, ~470 MiB for 7 tiles of InternViT-300M in fp32)."""
        attn_output = self.attn(self.norm1(hidden_states).to(hidden_states.dtype), **kwargs)[0]
        # The residual sums are written into the product this line has just made (`_add_residual`); the attention
        # output is released before the MLP runs.
        hidden_states = _add_residual(self.drop_path1, attn_output * self.ls1, hidden_states)
        del attn_output
        mlp_output = self.mlp(self.norm2(hidden_states).to(hidden_states.dtype))
        hidden_states = _add_residual(self.drop_path2, mlp_output * self.ls2, hidden_states)
        return hidden_states


class InternVLVisionEncoder(nn.Module):
    def __init__(self, config: InternVisionConfig) -> None:
        super().__init__()
        self.config = config
        # Computed on the CPU so that the model can be built under `torch.device("meta")` (a meta tensor has no
        # values to read back).
        drop_path_rates = torch.linspace(0, config.drop_path_rate, config.num_hidden_layers, device="cpu").tolist()
        self.layers = nn.ModuleList(
            [InternVLVisionLayer(config, drop_path_rate=drop_path_rates[i]) for i in range(config.num_hidden_layers)]
        )

    @property
    def gradient_checkpointing(self) -> bool:
        """Whether the layers run under activation checkpointing in training. Assignable, as the original's flag
        (its training scripts set `model.vision_model.encoder.gradient_checkpointing = True`): `True` turns it on
        for every layer (with the function `gradient_checkpointing_enable` gave them, else
        `torch.utils.checkpoint.checkpoint(use_reentrant=False)`, transformers' default), `False` off."""
        return any(layer.gradient_checkpointing for layer in self.layers)

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, value: bool) -> None:
        for layer in self.layers:
            if value and getattr(layer, "_gradient_checkpointing_func", None) is None:
                layer._gradient_checkpointing_func = functools.partial(checkpoint, use_reentrant=False)
            layer.gradient_checkpointing = bool(value)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutput | tuple[torch.Tensor, ...]:
        """`inputs_embeds (num_tiles, num_positions, hidden_size)` through every layer, as the original's
        `InternVisionEncoder.forward` (`modeling_intern_vit.py`): `last_hidden_state` and, with
        `output_hidden_states` (default `config.output_hidden_states`), `hidden_states` = (inputs_embeds, layer_1,
        ..., layer_N), each `(num_tiles, num_positions, hidden_size)`. `return_dict=False` (default: not
        `config.use_return_dict`) gives the original's tuple `(last_hidden_state[, hidden_states])`. Attention
        weights come from the tower, `InternVisionModel(..., output_attentions=True)` (the original's encoder has no
        such option); asking the encoder for them raises `ValueError`."""
        if kwargs.get("output_attentions"):
            raise ValueError(
                "`output_attentions=True` is not an option of the vision encoder (nor of the original's "
                "`InternVisionEncoder`); call the tower, `InternVisionModel(pixel_values, output_attentions=True)`."
            )
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if return_dict is None:
            return_dict = self.config.use_return_dict
        all_hidden_states = (inputs_embeds,) if output_hidden_states else None
        hidden_states = inputs_embeds
        for layer in self.layers:
            hidden_states = layer(hidden_states, **kwargs)
            if all_hidden_states is not None:
                all_hidden_states += (hidden_states,)
        if not return_dict:
            return tuple(value for value in (hidden_states, all_hidden_states) if value is not None)
        return BaseModelOutput(last_hidden_state=hidden_states, hidden_states=all_hidden_states)


class InternVisionPreTrainedModel(PreTrainedModel):
    config: InternVisionConfig
    config_class = InternVisionConfig
    base_model_prefix = "vision_model"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["InternVLVisionLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # `get_input_embeddings()` is the whole `embeddings` module (patches, class token, positions), as the original's
    _input_embed_layer = "embeddings"
    # `hidden_states` = (embeddings, layer_1, ..., layer_N), as the original indexes them for `select_layer`.
    _can_record_outputs = {"hidden_states": InternVLVisionLayer, "attentions": InternVLVisionAttention}

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, InternVLVisionRMSNorm):
            nn.init.ones_(module.weight)
        elif isinstance(module, InternVLVisionEmbeddings):
            nn.init.trunc_normal_(module.class_embedding, std=std)
            nn.init.trunc_normal_(module.position_embedding, std=std)
        elif isinstance(module, InternVLVisionLayer):
            nn.init.constant_(module.ls1, self.config.initializer_factor)
            nn.init.constant_(module.ls2, self.config.initializer_factor)


class InternVisionModel(InternVisionPreTrainedModel):
    """InternViT: `pixel_values (num_tiles, 3, 448, 448)` -> `last_hidden_state (num_tiles, 1025, hidden_size)` and
    `pooler_output (num_tiles, hidden_size)`, the class token's state `last_hidden_state[:, 0]`, as the original's
    `InternVisionModel` (`modeling_intern_vit.py`): no final norm, no pooling layer.
    """

    def __init__(self, config: InternVisionConfig) -> None:
        super().__init__(config)
        self.embeddings = InternVLVisionEmbeddings(config)
        self.encoder = InternVLVisionEncoder(config)
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    @auto_docstring
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        pixel_embeds: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        r"""
        pixel_values (`torch.Tensor` of shape `(num_tiles, num_channels, height, width)`):
            Normalised tiles; height and width must be multiples of `config.patch_size`.
        pixel_embeds (`torch.Tensor` of shape `(num_tiles, num_positions, hidden_size)`, *optional*):
            The original's option: embeddings already computed (`self.embeddings(pixel_values)`), used instead of
            `pixel_values`.

        Raises `ValueError` for another shape, or when neither input is given.
        """
        if pixel_embeds is not None:
            if pixel_embeds.ndim != 3 or pixel_embeds.shape[-1] != self.config.hidden_size:
                raise ValueError(
                    f"`pixel_embeds` must have shape (num_tiles, num_positions, {self.config.hidden_size}), got "
                    f"{tuple(pixel_embeds.shape)}."
                )
            hidden_states = pixel_embeds
        elif pixel_values is None:
            raise ValueError("Pass `pixel_values` or `pixel_embeds` (the original's two inputs); got neither.")
        else:
            self._check_pixel_values(pixel_values)
            hidden_states = self.embeddings(pixel_values)
        # The tower records hidden states and attentions itself (`_can_record_outputs`): the encoder collects none.
        kwargs = {key: value for key, value in kwargs.items() if key not in ("output_hidden_states", "output_attentions")}
        last_hidden_state = self.encoder(hidden_states, output_hidden_states=False, return_dict=True, **kwargs)[0]
        return BaseModelOutputWithPooling(last_hidden_state=last_hidden_state, pooler_output=last_hidden_state[:, 0])

    def resize_pos_embeddings(self, old_size: int, new_size: int, patch_size: int) -> None:
        """Resample the learned position embedding from `old_size` to `new_size` pixel tiles, as the original's
        fine-tuning does when `force_image_size` differs from the checkpoint's `image_size`: the patch part
        `(1, (old_size // patch_size)**2, dim)` is bicubically interpolated in fp32 (`align_corners=False`) to a
        `(new_size // patch_size)**2` grid and cast back, the class position is kept, and the result replaces
        `embeddings.position_embedding` as a new `nn.Parameter`. `embeddings.image_size` and `config.image_size`
        become `new_size` (the original sets the former here and its training scripts set
        `config.vision_config.image_size` right after; setting both keeps `save_pretrained` consistent).
        Source: the original `internvl_chat/internvl/model/internvl_chat/modeling_intern_vit.py`
        (`InternVisionModel.resize_pos_embeddings`).

        Raises:
            ValueError: `patch_size` is not the tower's, a size is not a positive multiple of it, or `old_size` is not
                the size the position embedding holds now.
        """
        embeddings = self.embeddings
        sizes = (("old_size", old_size), ("new_size", new_size), ("patch_size", patch_size))
        for name, value in sizes:  # numpy integers too (the original only divides them); stored as int
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"`{name}` must be a positive int (pixels), got {value!r}.")
        old_size, new_size, patch_size = (int(value) for _, value in sizes)
        if patch_size != embeddings.patch_size:
            raise ValueError(f"`patch_size` ({patch_size}) must be the vision tower's ({embeddings.patch_size}).")
        for name, value in (("old_size", old_size), ("new_size", new_size)):
            if value % patch_size:
                raise ValueError(f"`{name}` ({value}) must be a multiple of the patch size ({patch_size}).")
        if old_size // patch_size != embeddings.num_patches_per_side:
            raise ValueError(
                f"`old_size` ({old_size}) does not match the position embedding, which holds a "
                f"{embeddings.num_patches_per_side}x{embeddings.num_patches_per_side} patch grid "
                f"(image size {embeddings.image_size})."
            )
        # The same fp32 bicubic resampling as `forward` does for other tile sizes (`_patch_position_embedding`).
        position_embedding = embeddings.position_embedding
        side = new_size // patch_size
        grid = embeddings._patch_position_embedding(side, side, position_embedding.dtype)
        embeddings.position_embedding = nn.Parameter(torch.cat([position_embedding[:, :1, :], grid], dim=1))
        embeddings.image_size = new_size
        self.config.image_size = new_size
        logger.info(f"Resized position embeddings from {old_size} to {new_size}")

    def _check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"`pixel_values` must have shape (num_tiles, {self.config.num_channels}, height, width), "
                f"got {tuple(pixel_values.shape)}."
            )
        patch_size = self.config.patch_size
        if pixel_values.shape[-1] % patch_size or pixel_values.shape[-2] % patch_size:
            raise ValueError(
                f"`pixel_values` height and width must be multiples of the patch size {patch_size}, got "
                f"{tuple(pixel_values.shape[-2:])}."
            )

    def forward_in_tile_batches(
        self, pixel_values: torch.Tensor, batch_size: int | None = None, **kwargs: Unpack[TransformersKwargs]
    ) -> BaseModelOutputWithPooling:
        """`self(pixel_values, return_dict=True, **kwargs)` run on at most `batch_size` tiles at a time (`None`: all
        at once; the chat model's `config.vision_batch_size`), outputs concatenated along the tile dimension."""
        batch_size = batch_size or pixel_values.shape[0]
        chunks = [
            self(pixel_values=pixel_values[start : start + batch_size], return_dict=True, **kwargs)
            for start in range(0, pixel_values.shape[0], batch_size)
        ]
        if len(chunks) == 1:
            return chunks[0]
        return chunks[0].__class__(
            last_hidden_state=torch.cat([chunk.last_hidden_state for chunk in chunks]),
            pooler_output=torch.cat([chunk.pooler_output for chunk in chunks]),
            hidden_states=_cat_tuples([chunk.hidden_states for chunk in chunks]),
            attentions=_cat_tuples([chunk.attentions for chunk in chunks]),
        )


def _cat_tuples(per_chunk: list[tuple[torch.Tensor, ...] | None]) -> tuple[torch.Tensor, ...] | None:
    """Concatenate per-layer tuples of micro-batch outputs along the tile dimension."""
    if per_chunk[0] is None:
        return None
    return tuple(torch.cat(layer_outputs) for layer_outputs in zip(*per_chunk))


# The names of this package before version 0.2 (equal to transformers' own, different InternVL vision classes).
InternVLVisionPreTrainedModel = InternVisionPreTrainedModel
InternVLVisionModel = InternVisionModel

__all__ = [
    "InternVisionPreTrainedModel",
    "InternVisionModel",
    "InternVLVisionPreTrainedModel",
    "InternVLVisionModel",
]
