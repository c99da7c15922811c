"""InternLM2 <-> Llama weight layout, bit-exact in both directions.

InternLM2 is a Llama architecture with other parameter names and a fused, per-key/value-head grouped ``wqkv``:

==============================================  ==============================================
InternLM2                                       Llama
==============================================  ==============================================
``model.tok_embeddings.weight``                 ``model.embed_tokens.weight``
``model.layers.{i}.attention.wqkv.{weight,bias}``  ``model.layers.{i}.self_attn.{q,k,v}_proj.*``
``model.layers.{i}.attention.wo.{weight,bias}``    ``model.layers.{i}.self_attn.o_proj.*``
``model.layers.{i}.feed_forward.w1.weight``     ``model.layers.{i}.mlp.gate_proj.weight``
``model.layers.{i}.feed_forward.w3.weight``     ``model.layers.{i}.mlp.up_proj.weight``
``model.layers.{i}.feed_forward.w2.weight``     ``model.layers.{i}.mlp.down_proj.weight``
``model.layers.{i}.attention_norm.weight``      ``model.layers.{i}.input_layernorm.weight``
``model.layers.{i}.ffn_norm.weight``            ``model.layers.{i}.post_attention_layernorm.weight``
``model.norm.weight``                           ``model.norm.weight``
``output.weight``                               ``lm_head.weight``
==============================================  ==============================================

``wqkv`` rows are ``[KV][G + 2][head_dim]`` (``G = heads // kv_heads``): for key/value head ``g``, query heads
``g*G .. g*G + G-1``, then key head ``g``, then value head ``g``. Splitting it gives Llama's head order (query head
``h`` uses key/value head ``h // G`` in both). The leading ``model.`` may be absent (base-model state dicts).

RoPE: ``rope_scaling`` ``linear`` and ``dynamic`` map to Llama's rope types of the same name. Llama divides
``inv_freq`` by the linear factor (InternLM2 divides positions): identical when the factor is a power of two,
otherwise equal to float32 rounding. Llama's ``dynamic`` rope (transformers 5.x) takes the sequence length from
``max(position_ids) + 1`` and keeps state across calls (its frequencies only change when that length exceeds the
largest seen so far, or drops back below ``max_position_embeddings``), while InternLM2 uses the key length of each
forward pass (cached + new tokens, padding included) with no state. They agree on a fresh model for a full forward
pass or a generation whose longest row has no padding (then ``max(position_ids) + 1`` equals the key length), up
to float32 rounding of the new base (Llama computes it in float32, InternLM2 in float64). They differ for
right padding, packed sequences / restarting ``position_ids``, rows shifted by explicit ``position_ids``, and
for reuse of a Llama model after a longer sequence.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from transformers import LlamaConfig
from transformers.utils import logging

from ..modeling.configuration_internlm2 import InternLM2Config, standardize_rope_scaling
from ..modeling.modeling_internlm2 import check_wqkv_shape

logger = logging.get_logger(__name__)

__all__ = [
    "fuse_wqkv",
    "internlm2_config_to_llama",
    "internlm2_state_dict_to_llama",
    "llama_config_to_internlm2",
    "llama_state_dict_to_internlm2",
    "split_wqkv",
]

# Per-layer renames that are one tensor to one tensor (InternLM2 name -> Llama name), after `layers.{i}.`.
_LAYER_RENAMES: dict[str, str] = {
    "attention.wo.weight": "self_attn.o_proj.weight",
    "attention.wo.bias": "self_attn.o_proj.bias",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
# Top-level renames, relative to the optional `model.` of the base model (None = outside the base model).
_BASE_RENAMES: dict[str, str] = {"tok_embeddings.weight": "embed_tokens.weight", "norm.weight": "norm.weight"}
_HEAD_RENAMES: dict[str, str] = {"output.weight": "lm_head.weight"}

_LAYER_KEY = re.compile(r"^(?P<base>(?:model\.)?)layers\.(?P<index>\d+)\.(?P<name>.+)$")
_PROJECTION_KEY = re.compile(r"^(?:model\.)?layers\.\d+\.self_attn\.(?P<projection>[qkv]_proj)\.(?P<kind>weight|bias)$")
_TOP_KEY = re.compile(r"^(?P<base>(?:model\.)?)(?P<name>[^.]+\.(?:weight|bias))$")

_ROPE_TYPES = ("default", "linear", "dynamic")

# The one-to-one renames as `(layer, base, head)` tables, in each direction.
_TO_LLAMA = (_LAYER_RENAMES, _BASE_RENAMES, _HEAD_RENAMES)
_TO_INTERNLM2 = tuple({new: old for old, new in table.items()} for table in _TO_LLAMA)


def _renamed(key: str, renames: tuple[dict[str, str], dict[str, str], dict[str, str]]) -> str:
    """The other layout's name of a one-to-one parameter `key` (not an attention projection): a per-layer name keeps
    its `[model.]layers.{i}.`, a top-level one its optional `model.`, the head is renamed whole."""
    layer_renames, base_renames, head_renames = renames
    if match := _LAYER_KEY.match(key):
        return f"{match['base']}layers.{match['index']}.{layer_renames[match['name']]}"
    if key in head_renames:
        return head_renames[key]
    match = _TOP_KEY.match(key)
    return f"{match['base']}{base_renames[match['name']]}"


def _head_layout(config: InternLM2Config | LlamaConfig) -> tuple[int, int, int, int]:
    """`(hidden_size, num_heads, num_kv_heads, head_dim)`, checked to be expressible as an InternLM2 `wqkv`."""
    hidden_size = config.hidden_size
    num_heads = config.num_attention_heads
    num_kv_heads = config.num_key_value_heads or num_heads
    check_wqkv_shape(
        ((num_heads + 2 * num_kv_heads) * (hidden_size // max(num_heads, 1)), hidden_size),
        hidden_size,
        num_heads,
        num_kv_heads,
    )
    head_dim = hidden_size // num_heads
    config_head_dim = getattr(config, "head_dim", None)
    if config_head_dim is not None and config_head_dim != head_dim:
        raise ValueError(
            f"InternLM2 requires head_dim = hidden_size // num_attention_heads = {head_dim}, the config has "
            f"head_dim={config_head_dim}"
        )
    return hidden_size, num_heads, num_kv_heads, head_dim


# Config fields with the same name and meaning in InternLM2Config and LlamaConfig.
_SHARED_CONFIG_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "hidden_act",
    "max_position_embeddings",
    "initializer_range",
    "rms_norm_eps",
    "use_cache",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "tie_word_embeddings",
)


def _shared_fields(config) -> dict[str, object]:
    return {name: getattr(config, name) for name in _SHARED_CONFIG_FIELDS}


def internlm2_config_to_llama(config: InternLM2Config) -> LlamaConfig:
    """The `LlamaConfig` of the same model (`attention_bias = bias`, `mlp_bias = False`, rope mapped by type).

    Logs a warning for `dynamic` rope scaling: Llama's dynamic rope matches InternLM2's only on a freshly loaded model
    (see the module docstring)."""
    if not isinstance(config, InternLM2Config):
        raise TypeError(f"`config` must be an InternLM2Config, got {type(config).__name__}")
    _, _, num_kv_heads, head_dim = _head_layout(config)
    rope_parameters: dict[str, object] = {"rope_type": "default", "rope_theta": config.rope_theta}
    if config.rope_scaling is not None:
        rope_parameters["rope_type"] = config.rope_scaling["type"]
        rope_parameters["factor"] = config.rope_scaling["factor"]
    if rope_parameters["rope_type"] == "dynamic":
        logger.warning(
            "InternLM2's dynamic NTK RoPE becomes Llama's 'dynamic' rope, which gives the original's numbers on a "
            "freshly loaded model only: transformers keeps the largest base it has used (a model object reused after "
            f"a longer sequence than the next one, beyond max_position_embeddings {config.max_position_embeddings}, "
            "gives other logits) and takes the length from position_ids (right padding and packed sequences differ)"
        )
    llama_config = LlamaConfig(
        **_shared_fields(config),
        num_key_value_heads=num_kv_heads,
        head_dim=head_dim,
        rope_parameters=rope_parameters,
        attention_bias=config.bias,
        mlp_bias=False,
        attention_dropout=0.0,
        architectures=["LlamaForCausalLM"],
        dtype=config.dtype,
    )
    return llama_config


def llama_config_to_internlm2(config: LlamaConfig) -> InternLM2Config:
    """The `InternLM2Config` of a Llama model that InternLM2 can express (no MLP bias, `head_dim = hidden / heads`,
    rope type `default`, `linear` or `dynamic`)."""
    if not isinstance(config, LlamaConfig):
        raise TypeError(f"`config` must be a LlamaConfig, got {type(config).__name__}")
    _, _, num_kv_heads, _ = _head_layout(config)
    if config.mlp_bias:
        raise ValueError("InternLM2 has no MLP biases, the LlamaConfig has mlp_bias=True")
    rope_parameters = dict(config.rope_parameters or {})
    rope_type = rope_parameters.get("rope_type", "default")
    if rope_type not in _ROPE_TYPES:
        raise ValueError(f"InternLM2 supports the rope types {list(_ROPE_TYPES)}, the LlamaConfig has {rope_type!r}")
    rope_scaling = None
    if rope_type != "default":
        rope_scaling = standardize_rope_scaling({"type": rope_type, "factor": rope_parameters.get("factor")})
    return InternLM2Config(
        **_shared_fields(config),
        num_key_value_heads=num_kv_heads,
        bias=config.attention_bias,
        rope_theta=rope_parameters.get("rope_theta", LlamaConfig.default_theta),
        rope_scaling=rope_scaling,
        architectures=["InternLM2ForCausalLM"],
        dtype=config.dtype,
    )


def _split_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> tuple[dict, dict]:
    """`(inside, outside)`: keys under `prefix` (with it removed) and all other keys (unchanged)."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"`state_dict` must be a mapping of names to tensors, got {type(state_dict).__name__}")
    inside, outside = {}, {}
    for key, tensor in state_dict.items():
        if key.startswith(prefix):
            inside[key[len(prefix) :]] = tensor
        else:
            outside[key] = tensor
    if not inside:
        raise ValueError(f"No key of the state dict starts with prefix {prefix!r}")
    return inside, outside


def _check_keys(found: set[str], expected: set[str], prefix: str, layout: str) -> None:
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        raise ValueError(
            f"The state dict under prefix {prefix!r} is not a complete {layout} state dict for this config: "
            f"missing keys {[prefix + key for key in missing]}, unexpected keys {[prefix + key for key in unexpected]}"
        )


def _attention_bias(config: InternLM2Config | LlamaConfig) -> bool:
    return bool(config.bias if isinstance(config, InternLM2Config) else config.attention_bias)


def _expected_internlm2_keys(num_hidden_layers: int, bias: bool, base: str, with_head: bool) -> set[str]:
    parameter_names = ["attention.wqkv.weight", *[name for name in _LAYER_RENAMES if name.endswith("weight")]]
    if bias:
        parameter_names += ["attention.wqkv.bias", "attention.wo.bias"]
    keys = {f"{base}layers.{index}.{name}" for index in range(num_hidden_layers) for name in parameter_names}
    keys |= {base + name for name in _BASE_RENAMES}
    if with_head:
        keys |= set(_HEAD_RENAMES)
    return keys


def _detect_base(keys: set[str]) -> str:
    """`"model."` for causal-LM state dicts, `""` for base-model ones."""
    return "model." if any(key.startswith("model.") for key in keys) else ""


def internlm2_state_dict_to_llama(
    state_dict: Mapping[str, torch.Tensor], config: InternLM2Config | LlamaConfig, prefix: str = ""
) -> dict[str, torch.Tensor]:
    """Renames InternLM2 parameters to Llama names and splits each fused `wqkv` into `q_proj`/`k_proj`/`v_proj`.

    Args:
        state_dict: InternLM2 parameters (`InternLM2ForCausalLM` or `InternLM2Model` names) under `prefix`; keys
            outside `prefix` are returned unchanged (e.g. the vision tower of an InternVL checkpoint with
            `prefix="language_model."`).
        config: gives the head layout (`hidden_size`, `num_attention_heads`, `num_key_value_heads`, `bias`).
        prefix: key prefix of the language model, kept on the returned keys.

    Returns:
        A new dict; renamed tensors are the same tensors, `q/k/v_proj` are slices of the `wqkv` views (made
        contiguous). Raises `ValueError` on missing / unexpected keys and on a `wqkv` of the wrong shape.
    """
    hidden_size, num_heads, num_kv_heads, head_dim = _head_layout(config)
    inside, converted = _split_prefix(state_dict, prefix)
    base = _detect_base(set(inside))
    with_head = bool(base) and not (config.tie_word_embeddings and "output.weight" not in inside)
    expected = _expected_internlm2_keys(config.num_hidden_layers, _attention_bias(config), base, with_head)
    _check_keys(set(inside), expected, prefix, "InternLM2")

    for key, tensor in inside.items():
        match = _LAYER_KEY.match(key)
        if match is None or match["name"] not in ("attention.wqkv.weight", "attention.wqkv.bias"):
            converted[prefix + _renamed(key, _TO_LLAMA)] = tensor
            continue
        layer = f"{match['base']}layers.{match['index']}."
        kind = match["name"].rsplit(".", 1)[1]
        if kind == "weight":
            check_wqkv_shape(tensor.shape, hidden_size, num_heads, num_kv_heads, name=prefix + key)
        else:
            expected_shape = ((num_heads + 2 * num_kv_heads) * head_dim,)
            if tuple(tensor.shape) != expected_shape:
                raise ValueError(f"{prefix + key} has shape {tuple(tensor.shape)}, expected {expected_shape}")
        query, key_proj, value = split_wqkv(tensor, num_heads, num_kv_heads, head_dim)
        converted[f"{prefix}{layer}self_attn.q_proj.{kind}"] = query
        converted[f"{prefix}{layer}self_attn.k_proj.{kind}"] = key_proj
        converted[f"{prefix}{layer}self_attn.v_proj.{kind}"] = value
    return converted


def llama_state_dict_to_internlm2(
    state_dict: Mapping[str, torch.Tensor], config: InternLM2Config | LlamaConfig, prefix: str = ""
) -> dict[str, torch.Tensor]:
    """Inverse of `internlm2_state_dict_to_llama`: renames Llama parameters and fuses `q/k/v_proj` into `wqkv`
    (per key/value head: its query heads, then its key head, then its value head). Bit-exact round trip."""
    hidden_size, num_heads, num_kv_heads, head_dim = _head_layout(config)
    inside, converted = _split_prefix(state_dict, prefix)
    base = _detect_base(set(inside))
    with_head = bool(base) and not (config.tie_word_embeddings and "lm_head.weight" not in inside)
    expected = _expected_internlm2_keys(config.num_hidden_layers, _attention_bias(config), base, with_head)
    _check_keys(set(inside), set(_internlm2_names_to_llama(expected)), prefix, "Llama")

    projection_shapes = {
        "q_proj": (num_heads * head_dim, hidden_size),
        "k_proj": (num_kv_heads * head_dim, hidden_size),
        "v_proj": (num_kv_heads * head_dim, hidden_size),
    }
    # Check every projection before fusing any (a fused q_proj reads its layer's k_proj and v_proj).
    for key, tensor in inside.items():
        projection_match = _PROJECTION_KEY.match(key)
        if projection_match is None:
            continue
        kind = projection_match["kind"]
        expected_shape = projection_shapes[projection_match["projection"]][: 2 if kind == "weight" else 1]
        if tuple(tensor.shape) != expected_shape:
            raise ValueError(
                f"{prefix + key} has shape {tuple(tensor.shape)}, expected {expected_shape} for "
                f"num_attention_heads {num_heads}, num_key_value_heads {num_kv_heads}, head_dim {head_dim}"
            )

    for key, tensor in inside.items():
        projection_match = _PROJECTION_KEY.match(key)
        if projection_match is None:
            converted[prefix + _renamed(key, _TO_INTERNLM2)] = tensor
            continue
        if projection_match["projection"] != "q_proj":
            continue  # fused together with q_proj below
        match = _LAYER_KEY.match(key)
        layer = f"{match['base']}layers.{match['index']}."
        kind = projection_match["kind"]
        key_proj = inside[f"{layer}self_attn.k_proj.{kind}"]
        value = inside[f"{layer}self_attn.v_proj.{kind}"]
        fused = fuse_wqkv(tensor, key_proj, value, num_heads, num_kv_heads, head_dim)
        converted[f"{prefix}{layer}attention.wqkv.{kind}"] = fused
    return converted


def _internlm2_names_to_llama(keys: set[str]) -> list[str]:
    """Llama names of InternLM2 parameter names (a `wqkv` name gives its three projection names)."""
    names = []
    for key in keys:
        match = _LAYER_KEY.match(key)
        if match is not None and match["name"].startswith("attention.wqkv."):
            layer = f"{match['base']}layers.{match['index']}."
            kind = match["name"].rsplit(".", 1)[1]
            names += [f"{layer}self_attn.{projection}.{kind}" for projection in ("q_proj", "k_proj", "v_proj")]
        else:
            names.append(_renamed(key, _TO_LLAMA))
    return names


def split_wqkv(
    tensor: torch.Tensor, num_heads: int, num_kv_heads: int, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split one fused InternLM2 `wqkv` weight `((heads + 2 * kv_heads) * head_dim, hidden)` or bias
    `((heads + 2 * kv_heads) * head_dim,)` into contiguous Llama `(q_proj, k_proj, v_proj)` tensors (rows
    `heads * head_dim`, `kv_heads * head_dim`, `kv_heads * head_dim`). Bit-exact (a reordering of rows)."""
    groups = num_heads // num_kv_heads
    trailing = tensor.shape[1:]
    grouped = tensor.reshape(num_kv_heads, groups + 2, head_dim, *trailing)
    query = grouped[:, :groups].reshape(num_heads * head_dim, *trailing)
    key_proj = grouped[:, groups].reshape(num_kv_heads * head_dim, *trailing)
    value = grouped[:, groups + 1].reshape(num_kv_heads * head_dim, *trailing)
    return query.contiguous(), key_proj.contiguous(), value.contiguous()


def fuse_wqkv(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, num_heads: int, num_kv_heads: int, head_dim: int
) -> torch.Tensor:
    """Inverse of `split_wqkv`: per key/value head, its query heads, then its key head, then its value head."""
    groups = num_heads // num_kv_heads
    trailing = query.shape[1:]
    query = query.reshape(num_kv_heads, groups, head_dim, *trailing)
    key = key.reshape(num_kv_heads, 1, head_dim, *trailing)
    value = value.reshape(num_kv_heads, 1, head_dim, *trailing)
    return torch.cat([query, key, value], dim=1).reshape(-1, *trailing)
