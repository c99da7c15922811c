"""Eager attention keeps no attention weights alive unless asked, with unchanged numbers (issue 13)."""

from __future__ import annotations

import math

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
        # Reference: out-of-place ops in the original order (scores / sqrt(head_dim) + mask, fp32 softmax, cast
        # back; the original divides, `* head_dim**-0.5` rounds differently).
        key_rep, value_rep = key.repeat_interleave(2, dim=1), value.repeat_interleave(2, dim=1)
        scores = torch.matmul(query, key_rep.transpose(2, 3)) / math.sqrt(8) + mask
        expected_weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(dtype)
        # With autograd on, and in inference where the softmax writes into the score buffer.
        counts = {}
        for context in (torch.enable_grad, torch.no_grad, torch.inference_mode):
            with context():
                output, weights = eager_attention_forward(module, query, key, value, mask, scaling=8**-0.5)
                buffers = _score_buffers(
                    lambda: eager_attention_forward(module, query, key, value, mask, scaling=8**-0.5), (2, 4, 6, 6)
                )
            assert torch.equal(weights, expected_weights)
            assert torch.equal(output, torch.matmul(expected_weights, value_rep).transpose(1, 2))
            counts[context] = buffers
        # Inference writes the probabilities into the score buffer: one score-sized buffer fewer than with autograd
        # (in fp32 the scores are then the only one).
        assert max(counts[torch.no_grad], counts[torch.inference_mode]) <= counts[torch.enable_grad] - 1, (
            dtype,
            counts,
        )
        assert dtype != torch.float32 or counts[torch.no_grad] == 1


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


def _score_buffers(function, scores_shape) -> int:
    """How many distinct storages of shape `scores_shape` the ops run by `function` write (outputs and `out=`)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    storages: set[int] = set()
    kept: list[torch.Tensor] = []  # held so that a freed buffer's address is not handed out again and miscounted

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            for tensor in result if isinstance(result, (tuple, list)) else (result,):
                if isinstance(tensor, torch.Tensor) and tuple(tensor.shape) == tuple(scores_shape):
                    storages.add(tensor.untyped_storage().data_ptr())
                    kept.append(tensor)
            return result

    with Record():
        function()
    return len(storages)


def test_vision_eager_inference_softmax_reuses_the_score_buffer_with_the_same_values():
    """Under `no_grad` / `inference_mode` the softmax overwrites the scores (one `(batch, heads, seq, seq)` buffer, not
    two) and gives the bits of the out-of-place softmax; with autograd on, the out-of-place path is kept."""
    from transformers_internvl.modeling.modeling_intern_vit import eager_attention_forward as vision_eager

    torch.manual_seed(0)
    module = nn.Module().eval()
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for seq in (9, 257):  # a short row and one long enough for the vectorised kernels
            query, key, value = (torch.randn(2, 4, seq, 16, dtype=dtype) * 3 for _ in range(3))
            expected_weights = ((query * 16**-0.5) @ key.transpose(-2, -1)).softmax(dim=-1)
            expected_output = (expected_weights @ value).transpose(1, 2)
            for context in (torch.no_grad, torch.inference_mode):
                with context():
                    output, weights = vision_eager(module, query, key, value, None, scaling=16**-0.5)
                    buffers = _score_buffers(
                        lambda: vision_eager(module, query, key, value, None, scaling=16**-0.5), (2, 4, seq, seq)
                    )
                assert torch.equal(weights, expected_weights) and torch.equal(output, expected_output)
                assert buffers == 1, (dtype, seq, context, buffers)
            with torch.enable_grad():
                buffers = _score_buffers(
                    lambda: vision_eager(module, query, key, value, None, scaling=16**-0.5), (2, 4, seq, seq)
                )
            assert buffers == 2


def test_vision_layer_residuals_are_the_out_of_place_sums_and_train():
    """`(x * ls).add_(h)` in the layer gives the bits of `h + x * ls`, with and without autograd, and backward works
    (layer scale, weights and input all get gradients), with stochastic depth too."""
    model = _tiny_vision(layers=1)
    layer = model.encoder.layers[0]
    torch.manual_seed(1)
    with torch.no_grad():
        layer.ls1.copy_(torch.randn(32))
        layer.ls2.copy_(torch.randn(32))
    hidden = torch.randn(3, 5, 32)

    def reference(h: torch.Tensor) -> torch.Tensor:
        attn_output, _ = layer.attn(layer.norm1(h))
        h = h + attn_output * layer.ls1
        return h + layer.mlp(layer.norm2(h)) * layer.ls2

    with torch.no_grad():
        assert torch.equal(layer(hidden), reference(hidden))
    source = hidden.clone().requires_grad_(True)
    out = layer(source)
    assert torch.equal(out.detach(), reference(hidden).detach())
    out.square().sum().backward()
    assert source.grad is not None and layer.ls1.grad is not None and layer.ls2.grad is not None
    assert layer.attn.qkv.weight.grad is not None and torch.isfinite(source.grad).all()
    # Stochastic depth in training: the in-place sum on the dropped branch's output still backpropagates.
    from transformers_internvl.modeling.modeling_intern_vit import InternVLVisionLayer

    config = model.config
    config.drop_path_rate = 0.5
    dropping = InternVLVisionLayer(config, drop_path_rate=0.5).train()
    dropped = dropping(hidden.clone().requires_grad_(True))
    dropped.sum().backward()
    assert dropping.ls1.grad is not None and torch.isfinite(dropping.ls1.grad).all()


def test_vision_mlp_inference_gelu_overwrites_fc1_output_with_the_same_values():
    """Exact GELU (`hidden_act="gelu"`): in inference it is applied over fc1's output (one intermediate-sized buffer,
    not two), giving the bits of `fc2(gelu(fc1(x)))`; with autograd on the out-of-place path is kept and trains."""
    model = _tiny_vision(layers=1)
    mlp = model.encoder.layers[0].mlp
    assert mlp.gelu_in_place
    torch.manual_seed(2)
    for dtype in (torch.float32, torch.bfloat16):
        mlp = mlp.to(dtype)
        hidden = torch.randn(3, 5, 32, dtype=dtype)
        expected = mlp.fc2(nn.functional.gelu(mlp.fc1(hidden)))
        counts = {}
        for context in (torch.enable_grad, torch.no_grad, torch.inference_mode):
            with context():
                assert torch.equal(mlp(hidden), expected)
                counts[context] = _score_buffers(lambda: mlp(hidden), (3, 5, 64))
        assert counts == {torch.enable_grad: 2, torch.no_grad: 1, torch.inference_mode: 1}, (dtype, counts)
    source = torch.randn(3, 5, 32, dtype=torch.bfloat16, requires_grad=True)
    mlp(source).sum().backward()
    assert source.grad is not None and mlp.fc1.weight.grad is not None
    # Another activation keeps the module's own function.
    config = InternVLVisionConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, hidden_act="gelu_new")
    other = InternVLVisionModel(config).encoder.layers[0].mlp.eval()
    assert not other.gelu_in_place
    with torch.no_grad():
        assert torch.equal(other(hidden.float()), other.fc2(other.act(other.fc1(hidden.float()))))


def test_vision_eager_under_autocast_keeps_the_out_of_place_softmax():
    """Under autocast the softmax may be run in fp32 by autocast (CUDA's policy); writing it into the low-precision
    scores would skip that, so inference under autocast keeps the out-of-place softmax (same values as with grad)."""
    from transformers_internvl.modeling.modeling_intern_vit import eager_attention_forward as vision_eager

    torch.manual_seed(0)
    query, key, value = (torch.randn(2, 4, 9, 8) for _ in range(3))
    module = nn.Module().eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = vision_eager(module, query, key, value, None, scaling=8**-0.5)
        with torch.no_grad():
            got = vision_eager(module, query, key, value, None, scaling=8**-0.5)
            buffers = _score_buffers(
                lambda: vision_eager(module, query, key, value, None, scaling=8**-0.5), (2, 4, 9, 9)
            )
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))
    assert buffers == 2
