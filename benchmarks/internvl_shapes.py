"""Real InternVL 2.5 shapes (from the OpenGVLab `config.json` files) as `InternVLConfig`s with random weights."""

from __future__ import annotations

from typing import Any


def _vit(hidden, intermediate, heads, layers, six_b: bool):
    """InternViT-300M (LayerNorm, qkv bias) or InternViT-6B (RMSNorm, QK-norm, no qkv bias) at 448 px / 14 px."""
    return dict(
        image_size=448,
        patch_size=14,
        drop_path_rate=0.0,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_attention_heads=heads,
        num_hidden_layers=layers,
        qkv_bias=not six_b,
        norm_type="rms_norm" if six_b else "layer_norm",
        qk_normalization=six_b,
    )


VIT_300M = _vit(1024, 4096, 16, 24, six_b=False)
VIT_6B = _vit(3200, 12800, 25, 45, six_b=True)


def _llm(architecture, model_type, hidden, layers, heads, kv_heads, intermediate, vocab, rms_norm_eps, **extra):
    return dict(
        architectures=[architecture],
        model_type=model_type,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=intermediate,
        vocab_size=vocab,
        rms_norm_eps=rms_norm_eps,
        rope_theta=1000000.0,
        max_position_embeddings=32768,
        tie_word_embeddings=False,
        hidden_act="silu",
        **extra,
    )


def _qwen2(hidden, layers, heads, kv_heads, intermediate, vocab=151674):
    return _llm("Qwen2ForCausalLM", "qwen2", hidden, layers, heads, kv_heads, intermediate, vocab, 1e-6)


def _internlm2(hidden, layers, heads, kv_heads, intermediate, vocab=92553):
    return _llm(
        "InternLM2ForCausalLM", "internlm2", hidden, layers, heads, kv_heads, intermediate, vocab, 1e-5, bias=False
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
