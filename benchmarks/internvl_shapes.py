"""Real InternVL 2.5 shapes (from the OpenGVLab `config.json` files) as `InternVLConfig`s with random weights."""

from __future__ import annotations

from typing import Any

VIT_300M = dict(
    image_size=448,
    patch_size=14,
    drop_path_rate=0.0,
    hidden_size=1024,
    intermediate_size=4096,
    num_attention_heads=16,
    num_hidden_layers=24,
    qkv_bias=True,
    norm_type="layer_norm",
    qk_normalization=False,
)
VIT_6B = dict(
    image_size=448,
    patch_size=14,
    drop_path_rate=0.0,
    hidden_size=3200,
    intermediate_size=12800,
    num_attention_heads=25,
    num_hidden_layers=45,
    qkv_bias=False,
    norm_type="rms_norm",
    qk_normalization=True,
)


def _qwen2(hidden, layers, heads, kv_heads, intermediate, vocab=151674):
    return dict(
        architectures=["Qwen2ForCausalLM"],
        model_type="qwen2",
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=intermediate,
        vocab_size=vocab,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        max_position_embeddings=32768,
        tie_word_embeddings=False,
        hidden_act="silu",
    )


def _internlm2(hidden, layers, heads, kv_heads, intermediate, vocab=92553):
    return dict(
        architectures=["InternLM2ForCausalLM"],
        model_type="internlm2",
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=intermediate,
        vocab_size=vocab,
        rms_norm_eps=1e-5,
        rope_theta=1000000.0,
        max_position_embeddings=32768,
        tie_word_embeddings=False,
        hidden_act="silu",
        bias=False,
    )


SHAPES: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
    "1B": (VIT_300M, _qwen2(896, 24, 14, 2, 4864), "internvl2_5"),
    "2B": (VIT_300M, _internlm2(2048, 24, 16, 8, 8192), "internvl2_5"),
    "4B": (VIT_300M, _qwen2(2048, 36, 16, 2, 11008), "internvl2_5"),
    "8B": (VIT_300M, _internlm2(4096, 32, 32, 8, 14336), "internvl2_5"),
    "26B": (VIT_6B, _internlm2(6144, 48, 48, 8, 16384), "internvl2_5"),
    "38B": (VIT_6B, _qwen2(5120, 64, 40, 8, 27648), "internvl2_5"),
    "78B": (VIT_6B, _qwen2(8192, 80, 64, 8, 29568), "internvl2_5"),
}


def build_config(
    shape: str,
    layers: int | None = None,
    vocab_size: int | None = None,
    attn_implementation: str = "sdpa",
    image_token_id: int | None = None,
):
    """`InternVLConfig` of InternVL2.5-`shape`; `layers` truncates both towers (vision and LLM) to that many layers."""
    from transformers_internvl.modeling.configuration_internvl import InternVLConfig

    vision, llm, template = SHAPES[shape]
    vision, llm = dict(vision), dict(llm)
    if layers is not None:
        vision["num_hidden_layers"] = min(layers, vision["num_hidden_layers"])
        llm["num_hidden_layers"] = min(layers, llm["num_hidden_layers"])
    if vocab_size is not None:
        llm["vocab_size"] = vocab_size
    config = InternVLConfig(
        vision_config=vision,
        llm_config=llm,
        template=template,
        downsample_ratio=0.5,
        ps_version="v2",
        force_image_size=448,
        select_layer=-1,
        dynamic_image_size=True,
        use_thumbnail=True,
        max_dynamic_patch=12,
        image_token_id=image_token_id,
        tie_word_embeddings=False,
    )
    config._attn_implementation = attn_implementation
    config.vision_config._attn_implementation = attn_implementation
    config.text_config._attn_implementation = attn_implementation
    return config
