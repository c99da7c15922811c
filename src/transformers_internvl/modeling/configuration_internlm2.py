"""InternLM2 / InternLM2.5 configuration.

The fields, their defaults and their serialised form are those of the original remote-code
``InternLM2Config`` (``internvl_chat/internvl/model/internlm2/configuration_internlm2.py``), so a
``config.json`` (or the ``llm_config`` of an InternVL checkpoint) loads verbatim and what this class saves
is still read by the original code. In particular RoPE is described by ``rope_theta`` plus the legacy
``rope_scaling = {"type": "linear" | "dynamic", "factor": float}``; transformers' ``rope_parameters``
standardisation is not used, because the original dynamic-NTK rule (driven by the key length, see
``modeling_internlm2.InternLM2RotaryEmbedding``) differs from transformers' own ``"dynamic"`` rope.
"""

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig
from transformers.utils import auto_docstring, is_flash_attn_2_available, logging

logger = logging.get_logger(__name__)

ROPE_SCALING_TYPES = ("linear", "dynamic")


def standardize_rope_scaling(rope_scaling: Any) -> dict[str, Any] | None:
    """Returns ``rope_scaling`` in the original ``{"type": ..., "factor": float}`` form, or ``None``.

    Accepts the original form and the transformers form (``"rope_type"`` instead of ``"type"``); a
    ``"rope_type"`` of ``"default"`` means no scaling.
    """
    if rope_scaling is None:
        return None
    if not isinstance(rope_scaling, dict):
        raise TypeError(
            "`rope_scaling` must be None or a dict {'type': 'linear'|'dynamic', 'factor': float}, "
            f"got {type(rope_scaling).__name__}: {rope_scaling!r}"
        )
    unknown_keys = set(rope_scaling) - {"type", "rope_type", "factor"}
    if unknown_keys:
        raise ValueError(
            f"`rope_scaling` accepts the keys 'type' (or 'rope_type') and 'factor', got unknown keys "
            f"{sorted(unknown_keys)} in {rope_scaling!r}"
        )
    scaling_type = rope_scaling.get("type", rope_scaling.get("rope_type"))
    if "type" in rope_scaling and "rope_type" in rope_scaling and rope_scaling["type"] != rope_scaling["rope_type"]:
        raise ValueError(f"`rope_scaling` has conflicting 'type' and 'rope_type': {rope_scaling!r}")
    if scaling_type == "default" and "factor" not in rope_scaling:
        return None
    if scaling_type not in ROPE_SCALING_TYPES:
        raise ValueError(f"`rope_scaling['type']` must be one of {list(ROPE_SCALING_TYPES)}, got {scaling_type!r}")
    factor = rope_scaling.get("factor")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor < 1.0:
        raise ValueError(f"`rope_scaling['factor']` must be a number >= 1, got {factor!r}")
    return {"type": scaling_type, "factor": float(factor)}


@auto_docstring(
    checkpoint="internlm/internlm2_5-7b-chat",
    custom_intro="""
    Configuration of an [`InternLM2Model`] / [`InternLM2ForCausalLM`] (InternLM2 and InternLM2.5, the language model
    of InternVL 2.5 2B/8B/26B). Fields, defaults and the saved form are those of the original remote-code
    `InternLM2Config`, so original `config.json` files (and the `llm_config` of InternVL checkpoints) load verbatim.
    """,
)
@strict
class InternLM2Config(PreTrainedConfig):
    r"""
    bias (`bool`, *optional*, defaults to `True`):
        Whether the fused `wqkv` projection and the output projection `wo` have biases. InternLM2.5 checkpoints
        use `False`.
    rope_theta (`float`, *optional*, defaults to 10000.0):
        The base period of the rotary position embeddings.
    rope_scaling (`dict`, *optional*):
        RoPE scaling in the original InternLM2 form, `{"type": "linear" | "dynamic", "factor": float >= 1}`
        (`"rope_type"` is accepted for `"type"`). `"linear"` divides positions by `factor`. `"dynamic"` (NTK) uses,
        for a forward pass whose key length `kv_len = past_len + new_len` exceeds `max_position_embeddings`, the
        base `rope_theta * (factor * kv_len / max_position_embeddings - (factor - 1)) ** (head_dim / (head_dim - 2))`.
        Saved in the original form. A transformers-style `rope_parameters` dict is accepted as input and converted.

    The attention head size is `hidden_size // num_attention_heads`. The fused `wqkv` weight has
    `(num_attention_heads + 2 * num_key_value_heads) * head_dim` rows grouped per key/value head.

    ```python
    >>> from transformers_internvl import InternLM2Config, InternLM2ForCausalLM

    >>> configuration = InternLM2Config(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2)
    >>> model = InternLM2ForCausalLM(configuration)
    ```
    """

    model_type = "internlm2"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]
    base_model_pp_plan = {
        "tok_embeddings": (["input_ids"], ["inputs_embeds"]),
        "layers": (["hidden_states", "attention_mask"], ["hidden_states"]),
        "norm": (["hidden_states"], ["hidden_states"]),
    }
    base_model_fsdp_plan = {
        "tok_embeddings": "free_full_weight",
        "layers.*": "free_full_weight",
        "norm": "keep_full_weight",
    }

    # Defaults are those of the original InternLM2Config.
    vocab_size: int = 103168
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    tie_word_embeddings: bool = False
    bias: bool = True
    rope_theta: float | int = 10000.0
    # Shadows the deprecated `PreTrainedConfig.rope_scaling` property: here it is a real, serialised field.
    rope_scaling: dict | None = None

    def __post_init__(self, **kwargs):
        if kwargs.get("attn_implementation") == "flash_attention_2" and not is_flash_attn_2_available():
            # Original InternVL/InternLM2 configs often store "flash_attention_2"; the original code then falls back
            # to eager attention when flash-attn is missing instead of failing. Let transformers pick (sdpa/eager).
            logger.warning_once(
                "InternLM2Config: the config asks for attn_implementation='flash_attention_2' but flash-attn is not "
                "available; using transformers' default attention (sdpa, else eager) instead. Pass "
                "`attn_implementation=...` to `from_pretrained` to choose explicitly."
            )
            kwargs["attn_implementation"] = None
        rope_parameters = kwargs.pop("rope_parameters", None)
        head_dim = kwargs.pop("head_dim", None)
        if rope_parameters is not None:
            self._set_from_rope_parameters(rope_parameters)
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        self.rope_scaling = standardize_rope_scaling(self.rope_scaling)
        # Cross-field checks raise plain `ValueError`s at construction; `validate_architecture` repeats them for
        # `config.validate()` (e.g. at save time after attributes were changed).
        self._check_attention_shapes()
        if head_dim is not None and head_dim != self.head_dim:
            raise ValueError(
                f"InternLM2 derives head_dim as hidden_size // num_attention_heads = {self.head_dim}, got "
                f"head_dim={head_dim}"
            )
        super().__post_init__(**kwargs)

    def _set_from_rope_parameters(self, rope_parameters: dict[str, Any]) -> None:
        """Converts a transformers-style `rope_parameters` dict into `rope_theta` / `rope_scaling`."""
        if not isinstance(rope_parameters, dict):
            raise TypeError(f"`rope_parameters` must be a dict, got {type(rope_parameters).__name__}")
        unknown_keys = set(rope_parameters) - {"rope_type", "type", "rope_theta", "factor"}
        if unknown_keys:
            raise ValueError(
                f"`rope_parameters` keys {sorted(unknown_keys)} have no InternLM2 equivalent; supported are "
                f"'rope_type', 'rope_theta' and 'factor' (rope types 'default', 'linear', 'dynamic')"
            )
        if self.rope_scaling is not None:
            raise ValueError("Pass either `rope_scaling` (original form) or `rope_parameters`, not both")
        if "rope_theta" in rope_parameters:
            self.rope_theta = rope_parameters["rope_theta"]
        scaling = {key: value for key, value in rope_parameters.items() if key != "rope_theta"}
        self.rope_scaling = standardize_rope_scaling(scaling or None)

    def _check_attention_shapes(self) -> None:
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"The hidden size ({self.hidden_size}) is not a multiple of the number of attention heads "
                f"({self.num_attention_heads})."
            )
        if self.num_key_value_heads <= 0 or self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"The number of attention heads ({self.num_attention_heads}) is not a multiple of the number of "
                f"key/value heads ({self.num_key_value_heads}); the fused `wqkv` layout groups "
                "num_attention_heads // num_key_value_heads query heads per key/value head."
            )

    @property
    def head_dim(self) -> int:
        """Size of one attention head, `hidden_size // num_attention_heads` (not a separate field in InternLM2)."""
        return self.hidden_size // self.num_attention_heads

    def validate_architecture(self) -> None:
        """Part of `@strict`-powered validation: head counts must be compatible with the fused `wqkv` layout."""
        self._check_attention_shapes()
        standardize_rope_scaling(self.rope_scaling)


__all__ = ["InternLM2Config"]
