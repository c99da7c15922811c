"""Adversarial checks of the session-3 in-place inference buffers (issue 13): what a caller can observe (hooks, a
replaced activation, a mask of another dtype) is the same as with the out-of-place computation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from transformers_internvl.modeling.configuration_intern_vit import InternVLVisionConfig
from transformers_internvl.modeling.modeling_intern_vit import InternVLVisionModel
from transformers_internvl.modeling.modeling_internlm2 import eager_attention_forward


def _tiny_vision() -> InternVLVisionModel:
    config = InternVLVisionConfig(
        hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, image_size=28, patch_size=14
    )
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    return InternVLVisionModel(config).eval()


def _pixels() -> torch.Tensor:
    return torch.randn(3, 3, 28, 28, generator=torch.Generator().manual_seed(1))


def test_forward_hook_on_fc1_sees_fc1_output_not_its_gelu_under_no_grad():
    model = _tiny_vision()
    pixels = _pixels()
    for context in (torch.no_grad, torch.inference_mode):
        seen = []
        fc1 = model.encoder.layers[0].mlp.fc1
        handle = fc1.register_forward_hook(lambda module, args, output: seen.append((args[0].clone(), output)))
        with context():
            model(pixels)
        handle.remove()
        (inputs, output), *_ = seen
        with context():
            assert torch.equal(output, nn.functional.linear(inputs, fc1.weight, fc1.bias))
        assert output.min() < 0  # a GELU output would be >= -0.17


def test_global_forward_hook_sees_fc1_output_under_no_grad():
    model = _tiny_vision()
    fc1 = model.encoder.layers[0].mlp.fc1
    seen = []

    def hook(module, args, output):
        if module is fc1:
            seen.append((args[0].clone(), output))

    handle = nn.modules.module.register_module_forward_hook(hook)
    try:
        with torch.no_grad():
            model(_pixels())
    finally:
        handle.remove()
    (inputs, output), *_ = seen
    with torch.no_grad():
        assert torch.equal(output, nn.functional.linear(inputs, fc1.weight, fc1.bias))


def test_hooks_on_the_activation_module_still_fire_under_no_grad():
    model = _tiny_vision()
    calls = []
    for layer in model.encoder.layers:
        layer.mlp.act.register_forward_hook(lambda module, args, output: calls.append(output.shape))
    with torch.no_grad():
        model(_pixels())
    assert calls == [(3, 5, 64)] * 2


def test_a_replaced_activation_is_used_in_inference():
    model = _tiny_vision()
    pixels = _pixels()
    with torch.no_grad():
        gelu = model(pixels).last_hidden_state
    for layer in model.encoder.layers:
        layer.mlp.act = nn.ReLU()
    with torch.no_grad():
        relu = model(pixels).last_hidden_state
    with torch.enable_grad():
        relu_with_grad = model(pixels).last_hidden_state.detach()
    assert torch.equal(relu, relu_with_grad)
    assert not torch.equal(relu, gelu)


def test_in_place_gelu_still_taken_without_hooks():
    mlp = _tiny_vision().encoder.layers[0].mlp
    assert mlp.gelu_in_place
    handle = mlp.fc1.register_forward_hook(lambda *args: None)
    assert not mlp.gelu_in_place
    handle.remove()
    assert mlp.gelu_in_place


class _Module(nn.Module):
    num_key_value_groups = 1


def test_internlm2_eager_bf16_query_with_an_fp32_mask_under_no_grad():
    """A float32 4-D mask promotes bf16 scores to float32; the result must be the autograd path's (bf16 weights),
    not a float32 buffer that the bf16 value matmul refuses."""
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(1, 2, 5, 8, generator=generator).to(torch.bfloat16) for _ in range(3))
    mask = torch.triu(torch.full((5, 5), torch.finfo(torch.float32).min), 1)[None, None]
    with torch.enable_grad():
        expected_output, expected_weights = eager_attention_forward(_Module().eval(), query, key, value, mask, 8**-0.5)
    for context in (torch.no_grad, torch.inference_mode):
        with context():
            output, weights = eager_attention_forward(_Module().eval(), query, key, value, mask, 8**-0.5)
        assert weights.dtype == output.dtype == torch.bfloat16
        assert torch.equal(weights, expected_weights) and torch.equal(output, expected_output)


def test_full_backward_hooks_on_every_module_train_as_before():
    """A full backward hook wraps a module's output in a view that may not be written in place (drop_path is an
    `nn.Identity` at rate 0): the residual sum must then be out of place. The outputs are the same bits; the hooks'
    views change the order in which autograd sums gradients, so those agree to rounding (as before the change)."""
    for rate in (0.0, 0.3):
        config = InternVLVisionConfig(
            hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, drop_path_rate=rate
        )
        config._attn_implementation = "eager"
        grads, outputs = [], []
        for hooked in (False, True):
            torch.manual_seed(0)
            model = InternVLVisionModel(config).train()
            if hooked:
                for module in model.modules():
                    if module is not model:
                        module.register_full_backward_hook(lambda module, grad_input, grad_output: None)
            torch.manual_seed(3)
            output = model(_pixels()).last_hidden_state
            output.square().sum().backward()
            outputs.append(output.detach())
            grads.append([parameter.grad for parameter in model.parameters()])
        assert torch.equal(*outputs)
        for plain, hooked in zip(*grads):
            torch.testing.assert_close(hooked, plain)


def test_forward_hook_on_drop_path_keeps_the_scaled_branch_output():
    model = _tiny_vision()
    layer = model.encoder.layers[0]
    seen = []
    layer.drop_path1.register_forward_hook(lambda module, args, output: seen.append(output))
    pixels = _pixels()
    with torch.no_grad():
        model(pixels)
        embeddings = model.embeddings(pixels)
        expected = layer.attn(layer.norm1(embeddings))[0] * layer.ls1
    assert torch.equal(seen[0], expected)


def test_meta_device_forward_under_no_grad():
    """Shape-only forwards on `meta` tensors (no autocast exists for them) run as before the in-place buffers."""
    config = InternVLVisionConfig(
        hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, image_size=28, patch_size=14
    )
    config._attn_implementation = "eager"
    with torch.device("meta"):
        model = InternVLVisionModel(config).eval()
    query = torch.empty(1, 2, 5, 8, device="meta")
    with torch.no_grad():
        assert model(torch.empty(2, 3, 28, 28, device="meta")).last_hidden_state.shape == (2, 5, 32)
        output, weights = eager_attention_forward(_Module().eval(), query, query, query, None, 8**-0.5)
    assert output.shape == (1, 5, 2, 8) and weights.shape == (1, 2, 5, 5)


def test_torch_func_vmap_and_jvp_under_no_grad():
    """`out=` softmax has neither a vmap batching rule nor forward AD: under `torch.func` transforms (and forward AD)
    the out-of-place ops run, giving the values they give with autograd on."""
    from torch.func import jvp, vmap

    model = _tiny_vision()
    pixels = torch.randn(3, 2, 3, 28, 28, generator=torch.Generator().manual_seed(4))

    def vision(x: torch.Tensor) -> torch.Tensor:
        return model(x).last_hidden_state

    generator = torch.Generator().manual_seed(5)
    query, key, value = (torch.randn(3, 1, 2, 5, 8, generator=generator) for _ in range(3))

    def text(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return eager_attention_forward(_Module().eval(), q, k, v, None, 8**-0.5)[0]

    results = {}
    for context in (torch.enable_grad, torch.no_grad):
        with context():
            results[context] = (
                vmap(vision)(pixels).detach(),
                *(t.detach() for t in jvp(vision, (pixels[0],), (torch.ones_like(pixels[0]),))),
                vmap(text)(query, key, value).detach(),
                *(t.detach() for t in jvp(text, (query[0], key[0], value[0]), (query[1], key[1], value[1]))),
            )
    for with_grad, without in zip(results[torch.enable_grad], results[torch.no_grad]):
        assert torch.equal(with_grad, without)
    with torch.no_grad(), torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(pixels[0], torch.ones_like(pixels[0]))
        tangent = torch.autograd.forward_ad.unpack_dual(vision(dual)).tangent
    assert torch.equal(tangent, results[torch.no_grad][2])


def test_missing_flash_attn_is_left_to_transformers_hub_kernel_fallback_when_kernels_is_installed(monkeypatch):
    """transformers loads `kernels-community/flash-attn2` (...) when flash-attn is missing but the `kernels` package
    is installed (`_check_and_adjust_attn_implementation`); the early ImportError must not forbid that."""
    from transformers_internvl.modeling import attention_kernels

    for name in ("flash_attention_2", "flash_attention_3", "flash_attention_4"):
        kernel = attention_kernels.FLASH_KERNELS[name]
        monkeypatch.setitem(attention_kernels.FLASH_KERNELS, name, kernel._replace(available=lambda: False))
    monkeypatch.setattr(attention_kernels, "is_torch_npu_available", lambda: False)
    monkeypatch.setattr(attention_kernels, "is_kernels_available", lambda: False)
    with pytest.raises(ImportError, match="`flash-attn` package"):
        attention_kernels.check_attention_kernels("flash_attention_2")
    monkeypatch.setattr(attention_kernels, "is_kernels_available", lambda: True)
    for name in ("flash_attention_2", "flash_attention_3", "flash_attention_4"):
        attention_kernels.check_attention_kernels(name)
        attention_kernels.check_attention_kernels({"vision_config": name, "text_config": "sdpa"})


def test_hook_inside_a_wrapped_fc1_sees_its_output():
    """A wrapper that returns its inner layer's output as is (a PEFT layer with merged or disabled adapters): a hook
    on the inner layer keeps fc1's output, which must not be overwritten by the GELU."""
    model = _tiny_vision()
    mlp = model.encoder.layers[0].mlp
    mlp.fc1 = nn.Sequential(mlp.fc1)
    seen = []
    mlp.fc1[0].register_forward_hook(lambda module, args, output: seen.append((args[0].clone(), output)))
    with torch.no_grad():
        model(_pixels())
        (inputs, output), *_ = seen
        assert torch.equal(output, mlp.fc1(inputs))
