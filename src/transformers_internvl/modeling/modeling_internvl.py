"""InternVL 2.5: InternViT -> drop CLS -> pixel unshuffle -> `mlp1` projector -> LLM.

The LLM is transformers' own class for the `llm_config` architecture (any causal LM transformers knows) or this
package's InternLM2; its head name, tied weights and tensor-parallel style come from that class (`llm_resolution.py`).
Original checkpoint keys are mapped onto this module tree by `checkpoint_mapping.py`; loading and saving the original
layout (remote-code options, LoRA merge, missing weights, tokenizer-file ids) is `checkpoint_loading.py`.
"""

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.modeling_utils import slice_logits_to_keep
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, auto_docstring, can_return_tuple, logging
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.import_utils import torch_compilable_check

from .attention_kernels import check_attention_kernels, configured_attention
from .causal_lm_loss import causal_lm_loss, pop_original_loss_options
from .chat import InternVLChatMixin
from .checkpoint_loading import OriginalCheckpointMixin
from .checkpoint_mapping import original_layout_conversions, original_layout_renamings
from .configuration_internvl import InternVLChatConfig
from .input_checks import (
    cached_length,
    check_attention_mask,
    check_generate_prompt,
    check_image_flags,
    check_input_ids,
    check_no_unfilled_image_tokens,
    check_num_tiles,
    check_pixel_values,
    merge_tile_count_aliases,
    vision_feature_layer_index,
)
from .llm_resolution import language_model_head
from .model_outputs import InternVLCausalLMOutputWithPast, InternVLModelOutputWithPast
from .modeling_intern_vit import InternVisionModel
from .original_api import original_forward_order, original_generate_arguments
from .original_construction import attention_for_use_flash_attn, keep_initialized, split_causal_lm
from .pixel_unshuffle import pixel_unshuffle
from .visual_features import visual_features_to_encoder_outputs

logger = logging.get_logger(__name__)


class InternVLMultiModalProjector(nn.Sequential):
    """`mlp1`: LayerNorm(4C) -> Linear(4C, H) -> GELU -> Linear(H, H); indices 0, 1, 3 as in the checkpoints."""

    def __init__(self, config: InternVLChatConfig) -> None:
        input_dim = config.vision_config.hidden_size * int(1 / config.downsample_ratio) ** 2
        text_hidden_size = config.text_config.hidden_size
        super().__init__(
            nn.LayerNorm(input_dim),
            nn.Linear(input_dim, text_hidden_size),
            ACT2FN["gelu"],
            nn.Linear(text_hidden_size, text_hidden_size),
        )


# The image inputs of both `forward`s (transformers' `auto_docstring` documents the standard ones).
_IMAGE_INPUT_ARGS = r"""
    pixel_values (`torch.Tensor` of shape `(num_tiles, 3, 448, 448)`, *optional*):
        Tiles of all images of the batch, in placeholder order; `input_ids` holds `<IMG_CONTEXT>` x 256 per tile
        where their features go.
    image_flags (`torch.Tensor` of shape `(num_tiles,)`, *optional*):
        Training flag; tiles with flag 0 (dummy images of text-only samples) are dropped.
    num_tiles (`torch.Tensor` or `list[int]`, *optional*):
        Tiles per image (alias `num_patches`), only checked against `pixel_values`.
"""


@auto_docstring(
    custom_intro="""
    Base class of the InternVL chat models: config class, supported attention backends, and the original checkpoint
    layout on load and save (`checkpoint_loading.OriginalCheckpointMixin`).
    """
)
class InternVLChatPreTrainedModel(OriginalCheckpointMixin, PreTrainedModel):
    config: InternVLChatConfig
    config_class = InternVLChatConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    # `post_init` adds the sub-models' own lists (InternVLVisionLayer, the LLM's decoder layer).
    _no_split_modules = []
    _skip_keys_device_placement = ["cache"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True

    def set_attn_implementation(self, attn_implementation: str | dict, *args, **kwargs):
        """As transformers', with a missing flash-attention package named first (`attention_kernels.py`)."""
        check_attention_kernels(attn_implementation)
        return super().set_attn_implementation(attn_implementation, *args, **kwargs)

    def _check_and_adjust_attn_implementation(
        self, attn_implementation: str | None, is_init_check: bool = False, *args, **kwargs
    ) -> str:
        """As transformers', a missing flash package named first at build time (set_attn_implementation checks its own)."""
        if is_init_check:
            check_attention_kernels(configured_attention(self.config))
        return super()._check_and_adjust_attn_implementation(attn_implementation, is_init_check, *args, **kwargs)


@auto_docstring(custom_intro="Vision tower + `mlp1` projector + base LLM, without the LM head.")
class InternVLChatBaseModel(InternVLChatPreTrainedModel):
    def __init__(self, config: InternVLChatConfig, vision_model=None, language_model=None) -> None:
        r"""
        vision_model (`InternVisionModel`, *optional*):
            A vision tower to use instead of a new random one (kept as it is, not re-initialised).
        language_model (`nn.Module`, *optional*):
            The LLM's decoder to use instead of a new random one (kept as it is, not re-initialised).
        """
        super().__init__(config)
        keep_initialized(vision_model=vision_model, language_model=language_model)  # (TypeError naming it)
        if vision_model is None:
            vision_model = InternVisionModel._from_config(config.vision_config)
        self.vision_model = vision_model
        self.mlp1 = InternVLMultiModalProjector(config)
        self.language_model = AutoModel.from_config(config.text_config) if language_model is None else language_model
        self.post_init()

    def _check_pixel_values(self, pixel_values: torch.Tensor, finite: bool = True) -> None:
        check_pixel_values(pixel_values, self.config.vision_config.num_channels, self.config.vision_image_size, finite)

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        vision_feature_layer: int | None = None,
        vision_feature_select_strategy: str | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling | tuple:
        """Vision tower -> drop CLS -> pixel unshuffle -> `mlp1`.

        Args:
            pixel_values: `(num_tiles, 3, 448, 448)` normalised tiles.
            vision_feature_layer, vision_feature_select_strategy: per-call `select_layer` and `"default"` (drop CLS),
                as transformers' InternVL port takes them; bad values raise (`input_checks.vision_feature_layer_index`).
            output_hidden_states, output_attentions (keyword): the vision tower's per-layer states / attention weights
                (default: `config.vision_config`'s). Not named: `generate` would withhold them from the LLM.

        Returns:
            `BaseModelOutputWithPooling` with `last_hidden_state` the vision states at `select_layer`
            `(num_tiles, 1025, C)` (CLS first) and `pooler_output` the projected features `(num_tiles, 256, H)`;
            its `to_tuple()` with `return_dict=False` (or `config.return_dict=False`).
            Tiles go through the vision tower in micro-batches of `config.vision_batch_size`.
        """
        self._check_pixel_values(pixel_values)
        select_layer = vision_feature_layer_index(self.config, vision_feature_layer, vision_feature_select_strategy)
        if pixel_values.shape[0] == 0:
            return self._empty_image_features(pixel_values)
        output_hidden_states = kwargs.pop("output_hidden_states", None)
        output_attentions = kwargs.pop("output_attentions", None)
        if output_hidden_states is None:
            output_hidden_states = self.config.vision_config.output_hidden_states
        if output_attentions is None:
            output_attentions = self.config.vision_config.output_attentions
        pixel_values = pixel_values.to(dtype=self.vision_model.embeddings.patch_embedding.weight.dtype)
        vision_outputs = self.vision_model.forward_in_tile_batches(
            pixel_values,
            self.config.vision_batch_size,
            output_hidden_states=bool(output_hidden_states) or select_layer != -1,
            output_attentions=output_attentions,
            **kwargs,
        )

        if select_layer == -1:
            selected = vision_outputs.last_hidden_state
        else:
            # hidden_states = (embeddings, layer_1, ..., layer_N), as the original indexes it.
            selected = vision_outputs.hidden_states[select_layer]

        image_features = selected[:, 1:, :]
        num_tiles, num_patches, channels = image_features.shape
        side = int(num_patches**0.5)
        image_features = image_features.reshape(num_tiles, side, side, channels)
        image_features = pixel_unshuffle(image_features, self.config.downsample_ratio, self.config.ps_version)
        image_features = image_features.reshape(num_tiles, -1, image_features.shape[-1])
        image_features = self.mlp1(image_features)

        return BaseModelOutputWithPooling(
            last_hidden_state=selected,
            pooler_output=image_features,
            hidden_states=vision_outputs.hidden_states if output_hidden_states else None,
            attentions=vision_outputs.attentions,
        )

    def _empty_image_features(self, pixel_values: torch.Tensor) -> BaseModelOutputWithPooling:
        """Outputs for zero tiles (a text-only batch collated with image batches), without running the tower."""
        vision_config = self.config.vision_config
        num_positions = (pixel_values.shape[-1] // vision_config.patch_size) ** 2 + 1
        return BaseModelOutputWithPooling(
            last_hidden_state=pixel_values.new_zeros((0, num_positions, vision_config.hidden_size)),
            pooler_output=pixel_values.new_zeros((0, self.config.num_image_token, self.config.text_config.hidden_size)),
        )

    def get_placeholder_mask(
        self,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.Tensor | None,
        image_features: torch.Tensor,
    ) -> torch.Tensor:
        """Boolean mask `(batch, seq)` of `<IMG_CONTEXT>` positions, checked against the number of features.

        From `input_ids` when given; otherwise the positions whose embedding equals the embedding of
        `image_token_id` (as transformers' own vision-language models do for `inputs_embeds`-only calls).
        Raises `ValueError` when `image_token_id` is unset or the count differs from `num_tiles * 256`.
        """
        image_token_id = self.config.image_token_id
        if image_token_id is None:
            raise ValueError(
                "`image_token_id` is not set, so image features cannot be placed. Set it in config.json, pass "
                "`from_pretrained(..., image_token_id=<id of <IMG_CONTEXT>>)`, keep the tokenizer files next to the "
                "weights, or set `model.config.image_token_id`."
            )
        if input_ids is not None:
            special_image_mask = input_ids == image_token_id
        else:
            image_token_embedding = self.get_input_embeddings()(
                torch.tensor(image_token_id, dtype=torch.long, device=inputs_embeds.device)
            )
            special_image_mask = (inputs_embeds == image_token_embedding.to(inputs_embeds.dtype)).all(-1)
        num_image_tokens = special_image_mask.sum()
        num_tiles, tokens_per_tile = image_features.shape[:2]
        # A compile-friendly check (no graph break under torch.compile); eager raises the ValueError below.
        torch_compilable_check(
            num_image_tokens == num_tiles * tokens_per_tile,
            lambda: (
                f"Image features and image tokens do not match: the input has {int(num_image_tokens)} image tokens "
                f"(id {image_token_id}) but pixel_values give {num_tiles} tiles x {tokens_per_tile} = "
                f"{num_tiles * tokens_per_tile} features."
            ),
        )
        return special_image_mask

    @can_return_tuple
    @auto_docstring(custom_args=_IMAGE_INPUT_ARGS)
    @deprecate_kwarg("past_key_values", "6.0.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        image_flags: torch.Tensor | None = None,
        num_tiles: torch.Tensor | list[int] | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        use_cache: bool | None = None,
        vision_feature_layer: int | None = None,
        vision_feature_select_strategy: str | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> InternVLModelOutputWithPast | tuple:
        r"""
        Raises `ValueError` when `num_tiles` or `image_flags` do not match the tiles, or when the prompt holds
        `<IMG_CONTEXT>` tokens but no tiles are given (decoding steps with a filled cache are exempt); `TypeError` /
        `ValueError` for `pixel_values` or `vision_feature_layer` / `vision_feature_select_strategy` that cannot apply
        (`input_checks.check_pixel_values`, `input_checks.vision_feature_layer_index`).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Specify exactly one of `input_ids` or `inputs_embeds`.")
        past_length = cached_length(cache)
        check_input_ids(input_ids, self.get_input_embeddings().num_embeddings, past_length)
        check_attention_mask(attention_mask, input_ids if input_ids is not None else inputs_embeds, past_length)
        num_tiles = merge_tile_count_aliases(num_tiles=num_tiles, num_patches=kwargs.pop("num_patches", None))
        check_num_tiles(num_tiles, pixel_values)

        image_outputs = (mm_encoder_outputs or {}).get("image")
        if image_outputs is None and pixel_values is not None:
            # The output flags apply to the vision tower too: its states / attentions land in `image_outputs`.
            image_outputs = self.get_image_features(
                pixel_values,
                vision_feature_layer,
                vision_feature_select_strategy,
                output_hidden_states=kwargs.get("output_hidden_states"),
                output_attentions=kwargs.get("output_attentions"),
                return_dict=True,
            )

        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        # Zero tiles (text-only samples collated with image batches) place nothing.
        if image_outputs is not None and image_outputs.pooler_output.shape[0] > 0:
            image_features = image_outputs.pooler_output
            if image_flags is not None:
                check_image_flags(image_flags, image_features.shape[0])
                image_features = image_features[image_flags.reshape(-1) == 1]
            image_features = image_features.to(inputs_embeds.device, inputs_embeds.dtype)
            special_image_mask = self.get_placeholder_mask(input_ids, inputs_embeds, image_features)
            inputs_embeds = inputs_embeds.masked_scatter(
                special_image_mask.unsqueeze(-1).to(inputs_embeds.device), image_features
            )
        else:
            reason = "no pixel_values" if image_outputs is None else "pixel_values with zero tiles"
            check_no_unfilled_image_tokens(input_ids, self.config.image_token_id, 0, reason, past_length)

        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        return InternVLModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=image_outputs,
        )


@auto_docstring(
    custom_intro="""
    The InternVL chat model (the original's `InternVLChatModel`): [`InternVLChatBaseModel`] + LM head. Loads and saves the
    original OpenGVLab layout, and offers the original remote-code API, `chat()` and `batch_chat()` (`chat.py`).
    """
)
class InternVLChatForConditionalGeneration(InternVLChatMixin, InternVLChatPreTrainedModel, GenerationMixin):
    def __init__(self, config: InternVLChatConfig, vision_model=None, language_model=None, use_flash_attn=None) -> None:
        r"""
        vision_model (`InternVisionModel`, *optional*):
            The original constructor's argument: a vision tower to use instead of a new random one.
        language_model (`PreTrainedModel`, *optional*):
            The original constructor's argument: a causal LM (`AutoModelForCausalLM` of `llm_config`) whose decoder
            and head are used as they are (`original_construction.split_causal_lm` says what it raises).
        use_flash_attn (`bool`, *optional*):
            The original constructor's argument: flash-attn 2 when usable, else eager attention (unset: the config's).
        """
        if use_flash_attn is not None:
            config._attn_implementation = attention_for_use_flash_attn(use_flash_attn)
        super().__init__(config)
        decoder, head = split_causal_lm(language_model, config.text_config)
        self.model = InternVLChatBaseModel(config, vision_model=vision_model, language_model=decoder)
        text_config = config.text_config
        self.lm_head = nn.Linear(text_config.hidden_size, text_config.vocab_size, bias=False) if head is None else head
        # Head name, tying and TP style as the LLM's own causal-LM class declares them.
        self._language_model_head = language_model_head(config.text_config)
        self._tied_weights_keys = {
            f"lm_head.{head_key}": f"model.language_model.{embedding_key}"
            for head_key, embedding_key in self._language_model_head.tied_weights
        }
        self.post_init()
        # Save in the original layout even when the model was not loaded with `from_pretrained` (with it,
        # transformers replaces this with the conversions the load used).
        self._weight_conversions = original_layout_conversions(
            self._language_model_head.head_name, self.model.language_model
        )

    def init_parallel_plans(self) -> None:
        super().init_parallel_plans()
        # The head is sharded as the LLM class shards its own; an LLM without a plan for it (InternLM2) keeps its
        # embeddings whole, so the (possibly tied) head stays whole too.
        head = getattr(self, "_language_model_head", None)
        head_tp_style = head.head_tp_style if head is not None and self.model.language_model.tp_plan else None
        if head_tp_style is None:
            self._tp_plan.pop("lm_head", None)
        else:
            self._tp_plan["lm_head"] = head_tp_style

    @property
    def _checkpoint_conversion_mapping(self) -> dict[str, str]:
        """`{regex: replacement}` from the original module names to this module tree (head first), which PEFT's
        `PeftModel.from_pretrained` uses as its default `key_mapping`: adapters saved with the original names
        (`training.adapters.save_adapter_original_layout`, vLLM's) load as they are. transformers 5 itself reads
        the conversion-mapping registry instead."""
        renamings = original_layout_renamings(head_name=self._language_model_head.head_name)
        return {renaming.source_patterns[0]: renaming.target_patterns[0] for renaming in renamings}

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        """See [`InternVLChatBaseModel.get_image_features`]; `pooler_output` is `(num_tiles, 256, H)`."""
        return self.model.get_image_features(pixel_values, **kwargs)

    def generate(self, *args, **kwargs):
        """`GenerationMixin.generate` (output: the prompt and the new tokens, as transformers'); `pixel_values=None` or
        zero tiles is the same as not passing them. Also takes the original's `visual_features=` (`(num_tiles,
        num_image_token, hidden)`, used instead of the tower's) and positional order (`original_generate_arguments`).

        Raises:
            ValueError / TypeError (`input_checks`): `num_tiles` does not sum to the tiles of `pixel_values`, the
                prompt holds `<IMG_CONTEXT>` tokens without tiles (or `inputs_embeds`) for them, `pixel_values` is not
                a floating tensor of tiles, `visual_features` has the wrong hidden size, `input_ids` is not `(batch,
                seq)` vocabulary ids, or a 2-D `attention_mask` is not of their shape or holds values other than 0 / 1.
        """
        args, kwargs = original_generate_arguments(args, kwargs)
        kwargs.pop("mm_token_type_ids", None)  # the processor's media-token marks: nothing in this model reads them
        ids = args[0] if args else kwargs.get("input_ids", kwargs.get("inputs"))
        check_generate_prompt(kwargs, ids)  # ids' shape and type, the mask's shape and 0 / 1 values
        visual_features_to_encoder_outputs(kwargs, self.config.num_image_token, self.config.text_config.hidden_size)
        if "num_patches" in kwargs:  # GotOcr2's name, as `forward` takes it
            aliases = {"num_tiles": kwargs.get("num_tiles"), "num_patches": kwargs.pop("num_patches")}
            kwargs["num_tiles"] = merge_tile_count_aliases(**aliases)
        pixel_values = kwargs.get("pixel_values")
        if pixel_values is not None:  # shape and dtype before the tile counts (values: in `get_image_features`)
            self.model._check_pixel_values(pixel_values, finite=False)
        check_num_tiles(kwargs.get("num_tiles"), pixel_values if isinstance(pixel_values, torch.Tensor) else None)
        if pixel_values is None or (isinstance(pixel_values, torch.Tensor) and pixel_values.shape[0] == 0):
            # Given `inputs_embeds` (image features placed) run the prefill; `input_ids` are only the prompt returned.
            if not kwargs.get("mm_encoder_outputs") and kwargs.get("inputs_embeds") is None:
                input_ids = args[0] if args else kwargs.get("input_ids", kwargs.get("inputs"))
                # With a filled cache only the tokens after it are new: image tokens inside the cached prefix were
                # placed when the cache was made (chat-cache reuse, `chat_cache.py`).
                cached = int(cached_length(kwargs.get("cache", kwargs.get("past_key_values"))))
                if isinstance(input_ids, torch.Tensor) and cached:
                    input_ids = input_ids[:, cached:]
                reason = "no pixel_values" if pixel_values is None else "pixel_values with zero tiles"
                check_no_unfilled_image_tokens(input_ids, self.config.image_token_id, 0, reason)
            kwargs.pop("pixel_values", None)
            kwargs.pop("num_tiles", None)
        return super().generate(*args, **kwargs)

    @original_forward_order  # also `model(pixel_values, input_ids, attention_mask, ...)`, the original's order
    @can_return_tuple
    @auto_docstring(custom_args=_IMAGE_INPUT_ARGS)
    @deprecate_kwarg("past_key_values", "6.0.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        image_flags: torch.Tensor | None = None,
        num_tiles: torch.Tensor | list[int] | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        vision_feature_layer: int | None = None,
        vision_feature_select_strategy: str | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> InternVLCausalLMOutputWithPast | tuple:
        r"""
        Returns logits `(batch_size, kept positions, vocab_size)`; raises as [`InternVLChatBaseModel.forward`]. Takes
        the original's positional order too (`original_api.original_forward_order`: tiles first), and its `loss_weight`
        / `loss_reduction_all_gather` (the weighted loss, `causal_lm_loss`) and `statistics` keywords.
        """
        original_loss_options = pop_original_loss_options(kwargs)  # the original's `loss_weight`, ...
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            image_flags=image_flags,
            num_tiles=num_tiles,
            mm_encoder_outputs=mm_encoder_outputs,
            use_cache=use_cache,
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy,
            return_dict=True,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        logits = self.lm_head(slice_logits_to_keep(hidden_states, logits_to_keep))
        vocab_size = self.config.text_config.vocab_size
        loss = causal_lm_loss(self, logits, labels, logits_to_keep, vocab_size, **original_loss_options, **kwargs)
        return InternVLCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=outputs.image_outputs,
        )


# The original's name for the full chat model (`architectures: ["InternVLChatModel"]` in its config.json), and the
# names of this package before version 0.2 (they equal transformers' own, different InternVL classes).
InternVLChatModel = InternVLChatForConditionalGeneration
InternVLPreTrainedModel = InternVLChatPreTrainedModel
InternVLModel = InternVLChatBaseModel
InternVLForConditionalGeneration = InternVLChatForConditionalGeneration

__all__ = [
    "InternVLChatPreTrainedModel",
    "InternVLChatBaseModel",
    "InternVLChatForConditionalGeneration",
    "InternVLChatModel",
    "InternVLPreTrainedModel",
    "InternVLModel",
    "InternVLForConditionalGeneration",
    "pixel_unshuffle",
]
