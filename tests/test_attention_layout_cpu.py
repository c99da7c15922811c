"""InternViT attention hands per-head contiguous q/k/v to the CPU kernels (issue 13): faster
(`attention_kernels.contiguous_heads_on_cpu`, `benchmarks/RESULTS.md`) and bit-identical to running them on views of
the fused `qkv` output."""

from __future__ import annotations

import pytest
import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from transformers_internvl.modeling.attention_kernels import contiguous_heads_on_cpu
from transformers_internvl.modeling.configuration_intern_vit import InternVLVisionConfig
from transformers_internvl.modeling.modeling_intern_vit import InternVLVisionAttention, eager_attention_forward


def _reference(module: InternVLVisionAttention, hidden_states: torch.Tensor, implementation: str) -> torch.Tensor:
    """The attention on strided views of the fused projection (the layout before this change)."""
    batch, length, _ = hidden_states.shape
    query, key, value = module.qkv(hidden_states).view(batch, length, 3, module.embed_dim).unbind(2)
    shape = (batch, length, module.num_heads, module.head_dim)
    query = module.q_norm(query).reshape(shape).transpose(1, 2)
    key = module.k_norm(key).reshape(shape).transpose(1, 2)
    value = value.reshape(shape).transpose(1, 2)
    assert not query.is_contiguous()
    function = eager_attention_forward if implementation == "eager" else ALL_ATTENTION_FUNCTIONS[implementation]
    output, _ = function(module, query, key, value, None, dropout=0.0, scaling=module.scaling, is_causal=False)
    return module.proj(output.reshape(batch, length, module.embed_dim))


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("qk_normalization", [False, True])
def test_contiguous_heads_give_the_bytes_of_the_strided_views(implementation, dtype, qk_normalization):
    config = InternVLVisionConfig(
        hidden_size=256,
        intermediate_size=512,
        num_attention_heads=4,
        num_hidden_layers=1,
        image_size=28,
        patch_size=14,
        qk_normalization=qk_normalization,
        qkv_bias=not qk_normalization,
    )
    config._attn_implementation = implementation
    torch.manual_seed(0)
    module = InternVLVisionAttention(config).to(dtype).eval()
    hidden_states = torch.randn(3, 257, 256, dtype=dtype)
    with torch.inference_mode():
        output, _ = module(hidden_states)
        assert torch.equal(output, _reference(module, hidden_states, implementation))
    with torch.no_grad():  # and outside inference mode
        assert torch.equal(module(hidden_states)[0], _reference(module, hidden_states, implementation))


def test_only_cpu_sdpa_and_eager_get_copies():
    views = torch.randn(2, 5, 3, 4).transpose(1, 2), torch.randn(2, 5, 3, 4).transpose(1, 2)
    assert all(state.is_contiguous() for state in contiguous_heads_on_cpu("sdpa", *views))
    assert all(state.is_contiguous() for state in contiguous_heads_on_cpu("eager", *views))
    for implementation in ("flash_attention_2", "flex_attention", None):
        assert all(a is b for a, b in zip(contiguous_heads_on_cpu(implementation, *views), views))
    meta = tuple(view.to("meta") for view in views)
    assert all(a is b for a, b in zip(contiguous_heads_on_cpu("sdpa", *meta), meta))


def test_float16_keeps_the_strided_views():
    """CPU float16 kernels round differently on contiguous copies (1 float16 step per InternViT layer against the
    original, `test_original_parity_s7.py::test_float16_vision_tower_matches_original`): float16 gets no copies."""
    views = tuple(torch.randn(2, 5, 3, 4, dtype=torch.float16).transpose(1, 2) for _ in range(3))
    assert all(a is b for a, b in zip(contiguous_heads_on_cpu("eager", *views), views))
    assert all(a is b for a, b in zip(contiguous_heads_on_cpu("sdpa", *views), views))
