"""InternVL 2.5: InternViT -> drop CLS -> pixel unshuffle -> `mlp1` projector -> LLM.

The LLM is transformers' own class for the `llm_config` architecture (any causal LM transformers knows) or this
package's InternLM2; its head name, tied weights and tensor-parallel style come from that class
(`modeling/llm_resolution.py`).
Original checkpoint keys are mapped onto this module tree by `transformers_internvl.conversion.checkpoint_mapping`.
"""

import dataclasses
import json
import os
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPooling, ModelOutput
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple, logging
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.import_utils import torch_compilable_check

from ..atomic_save import atomic_save_directory
from ..conversion.checkpoint_mapping import head_renaming, original_layout_conversions, original_layout_renamings
from ..conversion.missing_weights import (
    allow_missing_weights,
    check_no_missing_weights,
    missing_weights_allowed,
    original_key_namer,
)
from ..conversion.original_lora import (
    checkpoint_holds_original_lora,
    finish_original_lora_load,
    original_lora_converters,
    original_lora_renamings,
)
from ..chat_templates import IMAGE_CONTEXT_TOKEN
from ..chat_templates import template_eos_token as get_eos_token
from .chat import InternVLChatMixin
from .configuration_internvl import InternVLConfig
from .input_checks import cached_length, check_image_flags, check_no_unfilled_image_tokens, check_num_tiles
from .llm_resolution import language_model_head
from .modeling_intern_vit import InternVLVisionModel
from .modeling_internlm2 import describe_wqkv_mismatch
from .original_api import (
    ORIGINAL_ROOTS,
    copy_remote_code_files,
    module_names,
    remote_code_files,
    resolve_attention_options,
    translate_device_map,
)

logger = logging.get_logger(__name__)


def pixel_unshuffle(vision_features: torch.Tensor, downsample_ratio: float, ps_version: str) -> torch.Tensor:
    """Trade spatial resolution for channels, as the original `pixel_shuffle`.

    `(num_tiles, rows, cols, C)` -> `(num_tiles, rows*r, cols*r, C/r**2)` for `r = downsample_ratio`. With `"v2"`
    token `(i, j)` (row-major) is `concat(x[2i, 2j], x[2i, 2j+1], x[2i+1, 2j], x[2i+1, 2j+1])` for r = 0.5; `"v1"`
    leaves the output grid transposed (column-major), as the first InternVL releases did.
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


class InternVLMultiModalProjector(nn.Sequential):
    """`mlp1`: LayerNorm(4C) -> Linear(4C, H) -> GELU -> Linear(H, H); indices 0, 1, 3 as in the checkpoints."""

    def __init__(self, config: InternVLConfig) -> None:
        input_dim = config.vision_config.hidden_size * int(1 / config.downsample_ratio) ** 2
        text_hidden_size = config.text_config.hidden_size
        super().__init__(
            nn.LayerNorm(input_dim),
            nn.Linear(input_dim, text_hidden_size),
            ACT2FN["gelu"],
            nn.Linear(text_hidden_size, text_hidden_size),
        )


@dataclass
class InternVLModelOutputWithPast(ModelOutput):
    """Base model output; `image_outputs.pooler_output` holds the projected image features `(num_tiles, 256, H)`."""

    last_hidden_state: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    image_outputs: BaseModelOutputWithPooling | None = None


@dataclass
class InternVLCausalLMOutputWithPast(ModelOutput):
    """Causal LM output; `image_outputs.pooler_output` holds the projected image features `(num_tiles, 256, H)`."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    image_outputs: BaseModelOutputWithPooling | None = None


def find_added_token_id(directory: str | os.PathLike, token: str) -> int | None:
    """Id of the added token `token` from the tokenizer files in `directory` (JSON only: no tokenizer is loaded)."""
    directory = os.fspath(directory)
    candidates = (
        ("added_tokens.json", lambda data: data.get(token)),
        (
            "tokenizer_config.json",
            lambda data: next(
                (
                    int(token_id)
                    for token_id, entry in (data.get("added_tokens_decoder") or {}).items()
                    if isinstance(entry, dict) and entry.get("content") == token
                ),
                None,
            ),
        ),
        (
            "tokenizer.json",
            lambda data: next(
                (entry["id"] for entry in data.get("added_tokens") or [] if entry.get("content") == token),
                None,
            ),
        ),
    )
    for filename, lookup in candidates:
        path = os.path.join(directory, filename)
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as handle:
            token_id = lookup(json.load(handle))
        if token_id is not None:
            return int(token_id)
    return None


class InternVLPreTrainedModel(PreTrainedModel):
    config: InternVLConfig
    config_class = InternVLConfig
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

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """As `PreTrainedModel.from_pretrained`, plus what original checkpoints leave to the tokenizer files next to
        the weights: `image_token_id` (`<IMG_CONTEXT>`) when neither `config.json` nor the `image_token_id=` keyword
        gives it, and the template's end token (`<|im_end|>`, Phi-3's `<|end|>`, ...: what the original `chat()` passes
        as `eos_token_id`) added to the generation config's `eos_token_id` when it is not there yet, so that plain
        `generate` stops where `chat()` does.

        The original remote code's options are accepted too (see `modeling/original_api.py`): `use_flash_attn=True`
        (flash_attention_2, or eager with a warning when flash-attn is not usable) / `False` (eager),
        `low_cpu_mem_usage` (ignored), and a `device_map` written with the original module names (`vision_model`,
        `mlp1`, `language_model.model.layers.N`, `language_model.lm_head`, ... as the model cards' `split_model()`),
        translated to this module tree; an unknown module name raises `ValueError`. The source folder is recorded so
        that `save_pretrained` copies its remote-code files."""
        use_flash_attn = resolve_attention_options(kwargs)
        device_map = kwargs.get("device_map")
        if (
            isinstance(device_map, Mapping)
            and any(key.split(".")[0] in ORIGINAL_ROOTS for key in device_map)
            and (pretrained_model_name_or_path is not None or kwargs.get("config") is not None)
        ):
            config = cls._config_for(pretrained_model_name_or_path, kwargs)
            if config is not None:
                kwargs["device_map"] = translate_device_map(device_map, module_names(cls, config))
        token = _SHAPE_MISMATCHES.set([])
        missing_policy = allow_missing_weights.set(missing_weights_allowed(kwargs))
        try:
            loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        except RuntimeError as error:
            mismatches = _SHAPE_MISMATCHES.get()
            if mismatches:
                config = cls._config_for(pretrained_model_name_or_path, kwargs)
                raise ValueError(_describe_shape_mismatches(mismatches, config)) from error
            raise
        finally:
            _SHAPE_MISMATCHES.reset(token)
            allow_missing_weights.reset(missing_policy)
        # `output_loading_info=True` returns `(model, loading_info)`; a `state_dict=` load may have no path at all.
        model = loaded[0] if kwargs.get("output_loading_info") else loaded
        if use_flash_attn is not None:
            model.config.vision_config.use_flash_attn = use_flash_attn  # recorded as the original does
        if pretrained_model_name_or_path is None:
            return loaded
        directory = _local_directory(pretrained_model_name_or_path, kwargs)
        if directory is None:
            return loaded
        model._remote_code_source = directory
        if getattr(model.config, "image_token_id", None) is None:
            model.config.image_token_id = find_added_token_id(directory, IMAGE_CONTEXT_TOKEN)
        generation_config = getattr(model, "generation_config", None)
        if generation_config is not None and model.config.template:
            add_template_stop_token(
                generation_config, find_added_token_id(directory, get_eos_token(model.config.template))
            )
        return loaded

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained` in the original layout (`architectures: ["InternVLChatModel"]`,
        `llm_config`, original key names, the source's `auto_map`), plus the original remote-code files
        (`configuration_*.py`, `modeling_*.py`, `tokenization_*.py`, `conversation.py`) of the folder the model was
        loaded from, so that servers reading this layout with `trust_remote_code` (vLLM, LMDeploy) serve it.

        Atomic (`atomic_save.atomic_save_directory`): the checkpoint is written to a temporary folder beside
        `save_directory` and swapped in, so that readers see the old checkpoint or the new one; files of the old
        folder that this save does not write (tokenizer, processor, README, ...) are kept, old weight files are not."""
        is_main_process = args[0] if args else kwargs.get("is_main_process", True)
        if kwargs.get("push_to_hub"):
            kwargs.setdefault("repo_id", os.path.basename(os.path.normpath(save_directory)))
        with atomic_save_directory(save_directory, enabled=is_main_process) as staging:
            result = super().save_pretrained(staging, *args, **kwargs)
            source = getattr(self, "_remote_code_source", None)
            if source is not None and is_main_process:
                if kwargs.get("push_to_hub") and remote_code_files(source):
                    logger.warning_once(
                        "save_pretrained(push_to_hub=True) uploads before the original remote-code files are copied; "
                        "upload them from the saved folder (e.g. `huggingface_hub.upload_folder`)."
                    )
                copy_remote_code_files(source, staging)
        return result

    @staticmethod
    def _config_for(pretrained_model_name_or_path, kwargs) -> InternVLConfig | None:
        config = kwargs.get("config")
        if isinstance(config, InternVLConfig):
            return config
        try:
            return InternVLConfig.from_pretrained(pretrained_model_name_or_path)
        except (OSError, ValueError):
            return None

    def _adjust_missing_and_unexpected_keys(self, loading_info) -> None:
        super()._adjust_missing_and_unexpected_keys(loading_info)
        collected = _SHAPE_MISMATCHES.get()
        if collected is not None:
            collected.extend(sorted(loading_info.mismatched_keys))
        # Original unmerged LoRA checkpoints are merged while loading; then no weight may be left random.
        finish_original_lora_load(self, original_key_namer(self))
        check_no_missing_weights(self, loading_info)


_SHAPE_MISMATCHES: ContextVar[list | None] = ContextVar("_SHAPE_MISMATCHES", default=None)


def _describe_shape_mismatches(mismatches: list, config: InternVLConfig | None) -> str:
    """One line per checkpoint tensor whose shape does not fit the config (InternLM2 `wqkv`: with the head maths)."""
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


def add_template_stop_token(generation_config, stop_token_id: int | None) -> None:
    """Make `generation_config.eos_token_id` include `stop_token_id` (kept as an int when it is the only one)."""
    if stop_token_id is None:
        return
    eos_token_id = generation_config.eos_token_id
    if eos_token_id is None:
        generation_config.eos_token_id = stop_token_id
        return
    eos_token_ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    if stop_token_id not in eos_token_ids:
        generation_config.eos_token_id = [*eos_token_ids, stop_token_id]


def _local_directory(name_or_path, kwargs) -> str | None:
    """The local folder holding a checkpoint: the path itself, or the hub-cache snapshot of a repo id."""
    if os.path.isdir(name_or_path):
        return os.fspath(name_or_path)
    try:
        from transformers.utils import cached_file

        config_file = cached_file(
            name_or_path,
            "config.json",
            cache_dir=kwargs.get("cache_dir"),
            revision=kwargs.get("revision"),
            local_files_only=True,
            _raise_exceptions_for_missing_entries=False,
        )
    except OSError:
        return None
    return os.path.dirname(config_file) if config_file else None


class InternVLModel(InternVLPreTrainedModel):
    """Vision tower + projector + base LLM (no LM head)."""

    def __init__(self, config: InternVLConfig) -> None:
        super().__init__(config)
        self.vision_model = InternVLVisionModel._from_config(config.vision_config)
        self.mlp1 = InternVLMultiModalProjector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def _check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        size = self.config.vision_image_size
        channels = self.config.vision_config.num_channels
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"`pixel_values` must be a torch.Tensor, got {type(pixel_values).__name__}.")
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (channels, size, size):
            raise ValueError(
                f"`pixel_values` must have shape (num_tiles, {channels}, {size}, {size}), got "
                f"{tuple(pixel_values.shape)}."
            )

    @can_return_tuple
    def get_image_features(
        self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]
    ) -> BaseModelOutputWithPooling | tuple:
        """Vision tower -> drop CLS -> pixel unshuffle -> `mlp1`.

        Args:
            pixel_values: `(num_tiles, 3, 448, 448)` normalised tiles.
            output_hidden_states, output_attentions (keyword): return the vision tower's per-layer states /
                attention weights (default: `config.vision_config.output_hidden_states` / `output_attentions`).
                They are not named parameters because `generate` hands an encoder every model kwarg its signature
                names, and would then withhold them from the language model.

        Returns:
            `BaseModelOutputWithPooling` with `last_hidden_state` the vision states at `select_layer`
            `(num_tiles, 1025, C)` (CLS first) and `pooler_output` the projected features `(num_tiles, 256, H)`;
            its `to_tuple()` with `return_dict=False` (or `config.return_dict=False`).
            Tiles go through the vision tower in micro-batches of `config.vision_batch_size`.
        """
        self._check_pixel_values(pixel_values)
        if pixel_values.shape[0] == 0:
            return self._empty_image_features(pixel_values)
        output_hidden_states = kwargs.pop("output_hidden_states", None)
        output_attentions = kwargs.pop("output_attentions", None)
        if output_hidden_states is None:
            output_hidden_states = self.config.vision_config.output_hidden_states
        pixel_values = pixel_values.to(dtype=self.vision_model.embeddings.patch_embedding.weight.dtype)
        select_layer = self.config.select_layer
        need_hidden_states = bool(output_hidden_states) or select_layer != -1
        batch_size = self.config.vision_batch_size or pixel_values.shape[0]

        chunks = []
        for start in range(0, pixel_values.shape[0], batch_size):
            chunks.append(
                self.vision_model(
                    pixel_values=pixel_values[start : start + batch_size],
                    output_hidden_states=need_hidden_states,
                    output_attentions=output_attentions,
                    return_dict=True,
                    **kwargs,
                )
            )
        if len(chunks) == 1:
            vision_outputs = chunks[0]
        else:
            vision_outputs = chunks[0].__class__(
                last_hidden_state=torch.cat([chunk.last_hidden_state for chunk in chunks]),
                hidden_states=_cat_tuples([chunk.hidden_states for chunk in chunks]),
                attentions=_cat_tuples([chunk.attentions for chunk in chunks]),
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
        **kwargs: Unpack[TransformersKwargs],
    ) -> InternVLModelOutputWithPast | tuple:
        r"""
        input_ids: `(batch, seq)`, with `<IMG_CONTEXT>` x 256 per tile where image features go.
        pixel_values: `(num_tiles, 3, 448, 448)`, tiles of all images of the batch in placeholder order.
        image_flags: `(num_tiles,)` training flag; tiles with flag 0 (dummy images of text-only samples) are dropped.
        num_tiles: tiles per image (alias `num_patches`), only checked against `pixel_values`.

        Raises `ValueError` when `num_tiles` or `image_flags` do not match the tiles, or when the prompt holds
        `<IMG_CONTEXT>` tokens but no tiles are given (decoding steps with a filled cache are exempt).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Specify exactly one of `input_ids` or `inputs_embeds`.")
        kwargs.pop("num_patches", None)
        check_num_tiles(num_tiles, pixel_values)

        image_outputs = (mm_encoder_outputs or {}).get("image")
        if image_outputs is None and pixel_values is not None:
            # The output flags apply to the vision tower too: its states / attentions land in `image_outputs`.
            image_outputs = self.get_image_features(
                pixel_values,
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
            check_no_unfilled_image_tokens(input_ids, self.config.image_token_id, 0, reason, cached_length(cache))

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


def _cat_tuples(per_chunk: list[tuple[torch.Tensor, ...] | None]) -> tuple[torch.Tensor, ...] | None:
    """Concatenate per-layer tuples of micro-batch outputs along the tile dimension."""
    if per_chunk[0] is None:
        return None
    return tuple(torch.cat(layer_outputs) for layer_outputs in zip(*per_chunk))


class InternVLForConditionalGeneration(InternVLChatMixin, InternVLPreTrainedModel, GenerationMixin):
    """InternVL chat model: [`InternVLModel`] + LM head. Loads and saves the original OpenGVLab layout.

    Also offers the original remote-code API, `chat()` and `batch_chat()` (see `modeling/chat.py`).
    """

    def __init__(self, config: InternVLConfig) -> None:
        super().__init__(config)
        self.model = InternVLModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
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

    @classmethod
    def _load_pretrained_model(cls, model, state_dict, checkpoint_files, load_config, *args, **kwargs):
        """Adds this model's head renaming (`language_model.<head>.*` -> `lm_head.*`, the head's name from the LLM
        class) to the load mapping: the registry holds only the renamings every InternVL model shares. transformers
        keeps the renamings a load used as the model's `_weight_conversions`, which `save_pretrained` reverses."""
        head = getattr(model, "_language_model_head", None)
        mapping = list(load_config.weight_mapping or [])
        if head is not None:
            mapping.insert(0, head_renaming(head.head_name))
        # Unmerged LoRA checkpoints of the original fine-tuning code: PEFT-prefix renamings first (renamings chain in
        # order), the merge converter after them; only for checkpoints that hold such keys, so that no pattern of a
        # plain model's mapping matches nothing.
        if checkpoint_holds_original_lora(checkpoint_files, state_dict):
            mapping = original_lora_renamings() + mapping + original_lora_converters()
        load_config = dataclasses.replace(load_config, weight_mapping=mapping or None)
        return super()._load_pretrained_model(model, state_dict, checkpoint_files, load_config, *args, **kwargs)

    @property
    def _checkpoint_conversion_mapping(self) -> dict[str, str]:
        """`{regex: replacement}` from the original module names to this module tree (head first), which PEFT's
        `PeftModel.from_pretrained` uses as its default `key_mapping`: adapters saved with the original names
        (`training.adapters.save_adapter_original_layout`, vLLM's) load as they are. transformers 5 itself reads
        the conversion-mapping registry instead."""
        renamings = original_layout_renamings(head_name=self._language_model_head.head_name)
        return {renaming.source_patterns[0]: renaming.target_patterns[0] for renaming in renamings}

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.lm_head = new_embeddings

    @property
    def language_model(self) -> nn.Module:
        return self.model.language_model

    @property
    def vision_model(self) -> nn.Module:
        return self.model.vision_model

    @property
    def mlp1(self) -> nn.Module:
        return self.model.mlp1

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        """See [`InternVLModel.get_image_features`]; `pooler_output` is `(num_tiles, 256, H)`."""
        return self.model.get_image_features(pixel_values, **kwargs)

    def generate(self, *args, **kwargs):
        """`GenerationMixin.generate`; `pixel_values=None` or zero tiles is the same as not passing them.

        Raises:
            ValueError: `num_tiles` does not sum to the tiles of `pixel_values`, or the prompt holds `<IMG_CONTEXT>`
                tokens without tiles for them (see `input_checks`).
        """
        pixel_values = kwargs.get("pixel_values")
        check_num_tiles(kwargs.get("num_tiles"), pixel_values if isinstance(pixel_values, torch.Tensor) else None)
        if pixel_values is None or (isinstance(pixel_values, torch.Tensor) and pixel_values.shape[0] == 0):
            if not kwargs.get("mm_encoder_outputs"):
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

    @can_return_tuple
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
        **kwargs: Unpack[TransformersKwargs],
    ) -> InternVLCausalLMOutputWithPast | tuple:
        r"""
        Same inputs as [`InternVLModel.forward`], plus `labels` `(batch, seq)` (-100 = ignored) and
        `logits_to_keep` (int: last N positions; tensor: those positions). Returns logits `(batch, kept, vocab)`.
        """
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
            return_dict=True,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :])

        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return InternVLCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=outputs.image_outputs,
        )


__all__ = [
    "InternVLPreTrainedModel",
    "InternVLModel",
    "InternVLForConditionalGeneration",
    "pixel_unshuffle",
    "find_added_token_id",
]
