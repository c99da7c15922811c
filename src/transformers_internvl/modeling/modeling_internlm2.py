"""InternLM2 / InternLM2.5 language model, written on transformers' building blocks.

Parameter names are those of the original remote code (``tok_embeddings``, ``attention.wqkv``, ``attention.wo``,
``feed_forward.{w1,w2,w3}``, ``attention_norm``, ``ffn_norm``, ``norm``, ``output``), so original checkpoints load
without renaming, and the numerics follow the original (``internvl_chat/internvl/model/internlm2/modeling_internlm2.py``):

- the fused ``wqkv`` projection stays one GEMM; its rows are grouped per key/value head, ``[KV][G + 2][head_dim]``
  with ``G = num_attention_heads // num_key_value_heads``: ``G`` query heads, then the key head, then the value head;
- RMSNorm in float32, cast back, times the weight; MLP ``w2(silu(w1 x) * w3 x)``;
- RoPE with ``rotate_half``; ``rope_scaling`` ``linear`` divides positions by ``factor``; ``dynamic`` (NTK) picks its
  base from the key length of the forward pass (see `InternLM2RotaryEmbedding`), without the original's hidden state.
"""

import math
from collections.abc import Callable

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel, slice_logits_to_keep
from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb, repeat_kv
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, auto_docstring, can_return_tuple, logging
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .causal_lm_loss import causal_lm_loss
from .configuration_internlm2 import InternLM2Config, standardize_rope_scaling
from .inference_buffers import in_place_inference
from .input_checks import PromptMaskCheckMixin, check_attention_mask
from .internlm2_chat import InternLM2ChatMixin
from .load_errors import (  # noqa: F401  (check_wqkv_shape, describe_wqkv_mismatch: re-exported)
    check_wqkv_shape,
    describe_internlm2_mismatches,
    describe_wqkv_mismatch,
    naming_shape_mismatches,
    record_shape_mismatches,
)

logger = logging.get_logger(__name__)


class InternLM2RMSNorm(LlamaRMSNorm):
    """RMSNorm computed in float32, cast back to the input dtype, then scaled by `weight`, as the original (same
    maths as transformers' `LlamaRMSNorm`)."""


class InternLM2RotaryEmbedding(nn.Module):
    """Rotary embeddings of InternLM2, stateless.

    `inv_freq = 1 / base ** (arange(0, head_dim, 2) / head_dim)`, angles `position * inv_freq` in float32.

    - `rope_scaling = None`: `base = rope_theta`.
    - `linear`: positions are divided by `factor` before the product.
    - `dynamic` (NTK): for a forward pass whose key length `kv_length = past_length + new_length` (padding included)
      exceeds `max_position_embeddings`, `base = rope_theta * (factor * kv_length / max_position_embeddings -
      (factor - 1)) ** (head_dim / (head_dim - 2))`, applied to the new queries and keys; cached keys keep the
      rotation they were stored with. This is what the original computes on a freshly loaded model (its rotary cache
      only grows, so reusing a model object after a longer sequence changes its numbers; this port never does).
      Note that the trigger is the key length, not `max(position_ids) + 1` as in transformers' own dynamic rope.

    Nothing is stored in buffers: `inv_freq` is recomputed per forward from the config (`head_dim / 2` values), so
    loading on the meta device needs no re-initialisation.
    """

    def __init__(self, config: InternLM2Config):
        super().__init__()
        self.config = config
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.rope_theta = config.rope_theta
        self.max_position_embeddings = config.max_position_embeddings
        # Normalised again in case `config.rope_scaling` was assigned after the config was built.
        rope_scaling = standardize_rope_scaling(config.rope_scaling) or {}
        self.rope_type = rope_scaling.get("type", "default")
        self.scaling_factor = rope_scaling.get("factor", 1.0)

    def _exponents(self, device: torch.device) -> torch.Tensor:
        return torch.arange(0, self.head_dim, 2, device=device).float() / self.head_dim

    def compute_inv_freq(self, kv_length: int | torch.Tensor, device: torch.device) -> torch.Tensor:
        """Inverse frequencies `(head_dim // 2,)` in float32 for a forward pass with `kv_length` keys."""
        exponents = self._exponents(device)
        if self.rope_type != "dynamic":
            return 1.0 / (self.rope_theta**exponents)
        head_dim, factor, max_positions = self.head_dim, self.scaling_factor, self.max_position_embeddings
        if not isinstance(kv_length, torch.Tensor):
            # Python floats (double), exactly as the original computes the new base.
            if kv_length <= max_positions:
                return 1.0 / (self.rope_theta**exponents)
            base = self.rope_theta * (factor * kv_length / max_positions - (factor - 1)) ** (head_dim / (head_dim - 2))
            return 1.0 / (base**exponents)
        # Tensor key length (static cache): same maths in float64, branch-free so it compiles without graph breaks.
        compute_dtype = torch.float32 if device.type == "mps" else torch.float64
        kv_length = kv_length.to(device=device, dtype=compute_dtype)
        scaled_base = self.rope_theta * (factor * kv_length / max_positions - (factor - 1)) ** (
            head_dim / (head_dim - 2)
        )
        base = torch.where(kv_length > max_positions, scaled_base, torch.full_like(scaled_base, self.rope_theta))
        return 1.0 / (base.to(torch.float32) ** exponents)

    @torch.no_grad()
    def forward(
        self, x: torch.Tensor, position_ids: torch.Tensor, kv_length: int | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns `cos, sin` of shape `(batch_size, seq_len, head_dim)` in `x.dtype`."""
        inv_freq = self.compute_inv_freq(kv_length, x.device)
        positions = position_ids[..., None].float()
        if self.rope_type == "linear":
            positions = positions / self.scaling_factor
        freqs = positions * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype=x.dtype), emb.sin().to(dtype=x.dtype)


class InternLM2MLP(nn.Module):
    """`w2(act(w1 x) * w3 x)`, no biases."""

    def __init__(self, config: InternLM2Config):
        super().__init__()
        self.config = config
        self.hidden_size = config.hidden_size
        self.intermediate_size = config.intermediate_size
        self.w1 = nn.Linear(self.hidden_size, self.intermediate_size, bias=False)
        self.w3 = nn.Linear(self.hidden_size, self.intermediate_size, bias=False)
        self.w2 = nn.Linear(self.intermediate_size, self.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.act_fn(self.w1(x)) * self.w3(x))


def _add_mask(scores: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """`scores + attention_mask`, in place when that gives the same tensor (same dtype, mask broadcasts to scores)."""
    if (
        attention_mask.dtype == scores.dtype
        and torch.broadcast_shapes(scores.shape, attention_mask.shape) == scores.shape
    ):
        return scores.add_(attention_mask)
    return scores + attention_mask


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
    """Reference attention: scores in the input dtype, softmax upcast to float32 (as the original)."""
    key_states = repeat_kv(key, module.num_key_value_groups)
    value_states = repeat_kv(value, module.num_key_value_groups)

    # Scaling and the mask are applied in place (the same values as `/ sqrt(head_dim)` / `+ mask`, one score-sized
    # buffer instead of three); the fp32 softmax buffer lives only until its cast back to the input dtype. The original
    # divides by `math.sqrt(head_dim)`; `* head_dim**-0.5` rounds differently (1e-6 in fp32, a float16 step in fp16).
    attn_weights = torch.matmul(query, key_states.transpose(2, 3))
    head_dim = query.shape[-1]
    if scaling == head_dim**-0.5:
        attn_weights = attn_weights.div_(math.sqrt(head_dim))
    else:  # a caller's own scaling
        attn_weights = attn_weights.mul_(scaling)
    if attention_mask is not None:
        attn_weights = _add_mask(attn_weights, attention_mask)

    if (
        not in_place_inference(attn_weights.device.type)
        or attn_weights.dtype != query.dtype  # a mask of another dtype promoted the scores (e.g. fp32 over bf16)
    ):
        attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    elif attn_weights.dtype == torch.float32:  # inference: the softmax overwrites the scores (same kernel, same bits)
        attn_weights = torch.softmax(attn_weights, dim=-1, out=attn_weights)
    else:  # inference: the fp32 probabilities are cast back into the score buffer (the same rounding as `.to`)
        attn_weights = attn_weights.copy_(nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32))
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value_states)
    attn_output = attn_output.transpose(1, 2).contiguous()
    return attn_output, attn_weights


class InternLM2Attention(nn.Module):
    """Grouped-query attention with the fused, per-key/value-head grouped `wqkv` projection of InternLM2."""

    def __init__(self, config: InternLM2Config, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        # Raises a ValueError if the heads cannot be grouped (a config changed after its validation).
        check_wqkv_shape(
            ((self.num_heads + 2 * self.num_key_value_heads) * self.head_dim, config.hidden_size),
            config.hidden_size,
            self.num_heads,
            self.num_key_value_heads,
        )
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = 0.0
        self.is_causal = True

        self.wqkv = nn.Linear(
            config.hidden_size, (self.num_heads + 2 * self.num_key_value_heads) * self.head_dim, bias=config.bias
        )
        self.wo = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=config.bias)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]

        # (batch_size, seq_len, kv_heads, groups + 2, head_dim): per kv head, `groups` query heads, then k, then v.
        # The kv-head axis is -1 so a row-sharded `wqkv` (whole groups per shard) also works.
        qkv_states = self.wqkv(hidden_states)
        qkv_states = qkv_states.view(*input_shape, -1, self.num_key_value_groups + 2, self.head_dim)
        query_states = qkv_states[..., : self.num_key_value_groups, :].reshape(*input_shape, -1, self.head_dim)
        query_states = query_states.transpose(1, 2)
        key_states = qkv_states[..., self.num_key_value_groups, :].transpose(1, 2)
        value_states = qkv_states[..., self.num_key_value_groups + 1, :].transpose(1, 2)

        cos, sin = position_embeddings
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)

        if cache is not None:
            key_states, value_states = cache.update(key_states, value_states, self.layer_idx, kwargs=kwargs)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            **kwargs,
        )

        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        attn_output = self.wo(attn_output)
        return attn_output, attn_weights


class InternLM2DecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block: `h += attention(attention_norm(h))`, then `h += feed_forward(ffn_norm(h))`."""

    def __init__(self, config: InternLM2Config, layer_idx: int):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.attention = InternLM2Attention(config=config, layer_idx=layer_idx)
        self.feed_forward = InternLM2MLP(config)
        self.attention_norm = InternLM2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.ffn_norm = InternLM2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        residual = hidden_states
        hidden_states = self.attention_norm(hidden_states)
        hidden_states, _ = self.attention(
            hidden_states=hidden_states,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            position_embeddings=position_embeddings,
            **kwargs,
        )
        hidden_states = residual + hidden_states

        residual = hidden_states
        hidden_states = self.ffn_norm(hidden_states)
        hidden_states = self.feed_forward(hidden_states)
        hidden_states = residual + hidden_states
        return hidden_states


@auto_docstring(
    custom_intro="Base class of the InternLM2 models: config class, weight init, supported attention backends."
)
class InternLM2PreTrainedModel(PreTrainedModel):
    config: InternLM2Config
    config_class = InternLM2Config
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["InternLM2DecoderLayer"]
    _input_embed_layer = "tok_embeddings"
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True

    _can_compile_fullgraph = True
    _supports_attention_backend = True
    _can_record_outputs = {
        "hidden_states": InternLM2DecoderLayer,
        "attentions": InternLM2Attention,
    }

    def _adjust_missing_and_unexpected_keys(self, loading_info) -> None:
        super()._adjust_missing_and_unexpected_keys(loading_info)
        record_shape_mismatches(loading_info, self.config)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`; a checkpoint whose fused `wqkv` does not fit the config's heads raises a
        `ValueError` naming the shapes (unless `ignore_mismatched_sizes=True`)."""
        with naming_shape_mismatches(describe_internlm2_mismatches):
            return super().from_pretrained(*args, **kwargs)


@auto_docstring(
    custom_intro="""
    The InternLM2 decoder (`tok_embeddings`, `layers`, `norm`) without a language-modeling head; returns
    `last_hidden_state` of shape `(batch_size, sequence_length, hidden_size)`. Accepts `inputs_embeds`, e.g. text
    embeddings with image features merged in.
    """
)
class InternLM2Model(InternLM2PreTrainedModel):
    def __init__(self, config: InternLM2Config):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size

        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [InternLM2DecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = InternLM2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = InternLM2RotaryEmbedding(config=config)
        self.gradient_checkpointing = False

        self.post_init()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @merge_with_config_defaults
    @capture_outputs
    @auto_docstring
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")

        if inputs_embeds is None:
            inputs_embeds: torch.Tensor = self.tok_embeddings(input_ids)

        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)

        # An int for dynamic caches, a 0-d tensor for static ones (whose key tensors are longer than what is filled).
        past_seen_tokens = cache.get_seq_length() if cache is not None else 0
        check_attention_mask(attention_mask, inputs_embeds, past_seen_tokens)  # the prompt's (the original raised)
        if position_ids is None:
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen_tokens
            position_ids = position_ids.unsqueeze(0)

        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=position_ids,
        )

        hidden_states = inputs_embeds
        # Dynamic NTK depends on the key length of this forward pass (cached + new tokens, padding included).
        kv_length = past_seen_tokens + inputs_embeds.shape[1]
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids, kv_length=kv_length)

        for decoder_layer in self.layers[: self.config.num_hidden_layers]:
            hidden_states = decoder_layer(
                hidden_states,
                attention_mask=causal_mask,
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                cache=cache,
                use_cache=use_cache,
                **kwargs,
            )

        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            cache=cache,
        )


@auto_docstring(
    custom_intro="InternLM2 with its language-modeling head `output` (never tied to `tok_embeddings` in checkpoints)."
)
class InternLM2ForCausalLM(InternLM2ChatMixin, PromptMaskCheckMixin, InternLM2PreTrainedModel, GenerationMixin):
    # Only applied when `config.tie_word_embeddings` is true (never the case for InternLM2 checkpoints).
    _tied_weights_keys = {"output.weight": "model.tok_embeddings.weight"}
    _pp_plan = {"output": (["hidden_states"], ["logits"])}
    _fsdp_plan = {"output": "keep_full_weight"}

    def __init__(self, config: InternLM2Config):
        super().__init__(config)
        self.model = InternLM2Model(config)
        self.vocab_size = config.vocab_size
        self.output = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.output

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.output = new_embeddings

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    @auto_docstring
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CausalLMOutputWithPast:
        r"""
        Example:

        ```python
        >>> from transformers import AutoTokenizer
        >>> from transformers_internvl import InternLM2ForCausalLM

        >>> model = InternLM2ForCausalLM.from_pretrained("internlm/internlm2_5-7b-chat")
        >>> tokenizer = AutoTokenizer.from_pretrained("internlm/internlm2_5-7b-chat")
        >>> inputs = tokenizer("Hello", return_tensors="pt")
        >>> generated_ids = model.generate(**inputs, max_new_tokens=20)
        ```"""
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )

        hidden_states = outputs.last_hidden_state
        hidden_states = slice_logits_to_keep(hidden_states, logits_to_keep)
        logits = self.output(hidden_states)
        loss = causal_lm_loss(self, logits, labels, logits_to_keep, self.config.vocab_size, **kwargs)

        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


__all__ = [
    "InternLM2ForCausalLM",
    "InternLM2Model",
    "InternLM2PreTrainedModel",
    "check_wqkv_shape",
    "describe_wqkv_mismatch",
]
