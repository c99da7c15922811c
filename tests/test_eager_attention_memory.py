"""Eager attention keeps no attention weights alive unless asked, with unchanged numbers (issue 13)."""

from __future__ import annotations

import torch
from torch import nn

from transformers_internvl.modeling.configuration_intern_vit import InternVLVisionConfig
from transformers_internvl.modeling.modeling_intern_vit import InternVLVisionModel
from transformers_internvl.modeling.modeling_internlm2 import eager_attention_forward


def _tiny_vision(layers: int = 2) -> InternVLVisionModel:
    config = InternVLVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_hidden_layers=layers,
        image_size=28,
        patch_size=14,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    return InternVLVisionModel(config).eval()


def test_vision_layer_returns_weights_only_when_asked():
    model = _tiny_vision()
    hidden = model.embeddings(torch.randn(3, 3, 28, 28))
    layer = model.encoder.layers[0]
    states, weights = layer(hidden)
    assert weights is None
    states_with, weights_with = layer(hidden, output_attentions=True)
    assert weights_with.shape == (3, 4, 5, 5)
    torch.testing.assert_close(weights_with.sum(-1), torch.ones(3, 4, 5))
    assert torch.equal(states, states_with)


def test_vision_model_attentions_still_reported():
    model = _tiny_vision(layers=3)
    pixel_values = torch.randn(2, 3, 28, 28)
    plain = model(pixel_values)
    full = model(pixel_values, output_attentions=True)
    assert plain.attentions is None
    assert len(full.attentions) == 3
    assert torch.equal(plain.last_hidden_state, full.last_hidden_state)


class _Module(nn.Module):
    num_key_value_groups = 2


def test_internlm2_eager_in_place_scaling_and_mask_give_the_reference_values():
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        query = torch.randn(2, 4, 6, 8, dtype=dtype)
        key, value = torch.randn(2, 2, 6, 8, dtype=dtype), torch.randn(2, 2, 6, 8, dtype=dtype)
        mask = torch.triu(torch.full((6, 6), torch.finfo(dtype).min, dtype=dtype), 1).expand(2, 1, 6, 6)
        module = _Module().eval()
        output, weights = eager_attention_forward(module, query, key, value, mask, scaling=8**-0.5)
        # Reference: out-of-place ops in the original order (scores * scale + mask, fp32 softmax, cast back).
        key_rep, value_rep = key.repeat_interleave(2, dim=1), value.repeat_interleave(2, dim=1)
        scores = torch.matmul(query, key_rep.transpose(2, 3)) * 8**-0.5 + mask
        expected_weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(dtype)
        assert torch.equal(weights, expected_weights)
        assert torch.equal(output, torch.matmul(expected_weights, value_rep).transpose(1, 2))


def test_vision_eager_attention_is_the_original_naive_attention_in_bf16():
    """The original InternViT `_naive_attn`: `((q * scale) @ k^T).softmax(-1) @ v` in the input dtype (no fp32
    upcast), so bf16 numbers are the original's bit for bit."""
    from transformers_internvl.modeling.modeling_intern_vit import eager_attention_forward as vision_eager

    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        query, key, value = (torch.randn(2, 4, 9, 8, dtype=dtype) for _ in range(3))
        output, weights = vision_eager(nn.Module().eval(), query, key, value, None, scaling=8**-0.5)
        expected_weights = ((query * 8**-0.5) @ key.transpose(-2, -1)).softmax(dim=-1)
        assert torch.equal(weights, expected_weights)
        assert torch.equal(output, (expected_weights @ value).transpose(1, 2))
