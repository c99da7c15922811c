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


def test_vision_layer_keeps_no_attention_weights_and_the_model_records_them_when_asked():
    model = _tiny_vision()
    pixel_values = torch.randn(3, 3, 28, 28)
    hidden = model.embeddings(pixel_values)
    states = model.encoder.layers[0](hidden)
    assert isinstance(states, torch.Tensor)  # the layer releases the weights before its MLP runs
    full = model(pixel_values, output_attentions=True, output_hidden_states=True)
    assert full.attentions[0].shape == (3, 4, 5, 5)
    torch.testing.assert_close(full.attentions[0].sum(-1), torch.ones(3, 4, 5))
    # hidden_states = (embeddings, layer_1, layer_2), as the original indexes them for `select_layer`.
    assert len(full.hidden_states) == 3
    assert torch.equal(full.hidden_states[0], hidden) and torch.equal(full.hidden_states[1], states)
    assert torch.equal(model.encoder.layers[1](states), full.last_hidden_state)
    assert torch.equal(full.hidden_states[2], full.last_hidden_state)


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
