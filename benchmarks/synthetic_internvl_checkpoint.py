"""Write a synthetic original-layout checkpoint at the InternVL2_5-2B shape (InternViT-300M + InternLM2-1.8B), bf16,
zeros, 1 GB shards (4.4 GB in all), to measure the converter's peak memory:

    python benchmarks/synthetic_internvl_checkpoint.py /tmp/big
    /usr/bin/time -v transformers-internvl convert /tmp/big /tmp/big-hf --to hf --quiet   # "Maximum resident set size"
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
V = dict(
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    qkv_bias=True,
    qk_normalization=False,
    norm_type="layer_norm",
    layer_norm_eps=1e-6,
    image_size=448,
    patch_size=14,
    architectures=["InternVisionModel"],
    model_type="intern_vit_6b",
    hidden_act="gelu",
    initializer_factor=0.1,
)
L = dict(
    architectures=["InternLM2ForCausalLM"],
    model_type="internlm2",
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=24,
    num_attention_heads=16,
    num_key_value_heads=8,
    vocab_size=92553,
    rms_norm_eps=1e-5,
    max_position_embeddings=32768,
    rope_theta=1000000,
    rope_scaling={"type": "dynamic", "factor": 2.0},
    bias=False,
    tie_word_embeddings=False,
    hidden_act="silu",
)
config = dict(
    model_type="internvl_chat",
    architectures=["InternVLChatModel"],
    vision_config=V,
    llm_config=L,
    select_layer=-1,
    downsample_ratio=0.5,
    ps_version="v2",
    template="internvl2_5",
    force_image_size=448,
    dynamic_image_size=True,
    use_thumbnail=True,
    min_dynamic_patch=1,
    max_dynamic_patch=12,
    image_token_id=92546,
    tie_word_embeddings=False,
    torch_dtype="bfloat16",
)
(out / "config.json").write_text(json.dumps(config))


def t(*shape):
    return torch.zeros(shape, dtype=torch.bfloat16)


tensors = {}
D = 1024
tensors["vision_model.embeddings.class_embedding"] = t(1, 1, D)
tensors["vision_model.embeddings.position_embedding"] = t(1, 1025, D)
tensors["vision_model.embeddings.patch_embedding.weight"] = t(D, 3, 14, 14)
tensors["vision_model.embeddings.patch_embedding.bias"] = t(D)
for i in range(24):
    p = f"vision_model.encoder.layers.{i}."
    tensors |= {
        p + "attn.qkv.weight": t(3 * D, D),
        p + "attn.qkv.bias": t(3 * D),
        p + "attn.proj.weight": t(D, D),
        p + "attn.proj.bias": t(D),
        p + "mlp.fc1.weight": t(4096, D),
        p + "mlp.fc1.bias": t(4096),
        p + "mlp.fc2.weight": t(D, 4096),
        p + "mlp.fc2.bias": t(D),
        p + "norm1.weight": t(D),
        p + "norm1.bias": t(D),
        p + "norm2.weight": t(D),
        p + "norm2.bias": t(D),
        p + "ls1": t(D),
        p + "ls2": t(D),
    }
H = 2048
tensors |= {
    "mlp1.0.weight": t(4 * D),
    "mlp1.0.bias": t(4 * D),
    "mlp1.1.weight": t(H, 4 * D),
    "mlp1.1.bias": t(H),
    "mlp1.3.weight": t(H, H),
    "mlp1.3.bias": t(H),
}
shards, current, size, n = [], {}, 0, 0
weight_map = {}


def flush():
    global current, size, n
    if current:
        name = f"model-{n:05d}.safetensors"
        save_file(current, str(out / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(current, name))
        n += 1
        current, size = {}, 0


def add(k, v):
    global size
    if size + v.numel() * 2 > 1_000_000_000:
        flush()
    current[k] = v
    size += v.numel() * 2


for k, v in tensors.items():
    add(k, v)
add("language_model.model.tok_embeddings.weight", t(92553, H))
for i in range(24):
    p = f"language_model.model.layers.{i}."
    add(p + "attention.wqkv.weight", t((16 + 16) * 128, H))
    add(p + "attention.wo.weight", t(H, H))
    add(p + "feed_forward.w1.weight", t(8192, H))
    add(p + "feed_forward.w3.weight", t(8192, H))
    add(p + "feed_forward.w2.weight", t(H, 8192))
    add(p + "attention_norm.weight", t(H))
    add(p + "ffn_norm.weight", t(H))
add("language_model.model.norm.weight", t(H))
add("language_model.output.weight", t(92553, H))
flush()
total = sum((out / f).stat().st_size for f in set(weight_map.values()))
(out / "model.safetensors.index.json").write_text(
    json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
)
print("bytes", total)
