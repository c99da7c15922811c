"""bf16 numerics of every available attention backend against eager, in both towers (issue 13). CUDA only.

Criterion (first principles): against an fp32 eager reference, a backend's bf16 error may be at most twice eager's
own bf16 error (plus a small floor), i.e. a kernel may round differently but not be less accurate than eager.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available, is_torch_flex_attn_available

from transformers_internvl.modeling.configuration_intern_vit import InternVLVisionConfig
from transformers_internvl.modeling.configuration_internlm2 import InternLM2Config
from transformers_internvl.modeling.modeling_intern_vit import InternVLVisionModel
from transformers_internvl.modeling.modeling_internlm2 import InternLM2ForCausalLM

pytestmark = pytest.mark.gpu

BACKENDS = {
    "sdpa": lambda: True,
    "flash_attention_2": is_flash_attn_2_available,
    "flash_attention_3": is_flash_attn_3_available,
    "flex_attention": is_torch_flex_attn_available,
}


def _with_backend(model: torch.nn.Module, backend: str) -> torch.nn.Module:
    if not BACKENDS[backend]():
        pytest.skip(f"{backend} is not installed")
    model = copy.deepcopy(model)
    model.set_attn_implementation(backend)
    return model


def _error(output: torch.Tensor, reference: torch.Tensor) -> float:
    return (output.float() - reference.float()).abs().max().item()


def _check(reference_fp32, eager_bf16, backend_bf16) -> None:
    eager_error = _error(eager_bf16, reference_fp32)
    backend_error = _error(backend_bf16, reference_fp32)
    floor = 1e-2 * reference_fp32.abs().max().item()
    assert backend_error <= 2 * eager_error + floor, (backend_error, eager_error)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_vision_tower_backend_matches_eager_in_bf16(backend):
    config = InternVLVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_attention_heads=16,
        num_hidden_layers=2,
        image_size=448,
        patch_size=14,
        qkv_bias=True,
        norm_type="layer_norm",
        drop_path_rate=0.0,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    reference = InternVLVisionModel(config).cuda().eval()
    pixel_values = torch.randn(7, 3, 448, 448, device="cuda")
    with torch.inference_mode():
        expected = reference(pixel_values).last_hidden_state
        eager = copy.deepcopy(reference).to(torch.bfloat16)
        eager_out = eager(pixel_values.bfloat16()).last_hidden_state
        candidate = _with_backend(eager, backend)
        backend_out = candidate(pixel_values.bfloat16()).last_hidden_state
    _check(expected, eager_out, backend_out)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_internlm2_backend_matches_eager_in_bf16(backend):
    config = InternLM2Config(
        hidden_size=1024,
        intermediate_size=2816,
        num_attention_heads=16,
        num_key_value_heads=8,
        num_hidden_layers=2,
        vocab_size=1000,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    reference = InternLM2ForCausalLM(config).cuda().eval()
    input_ids = torch.randint(0, 1000, (2, 300), device="cuda")
    with torch.inference_mode():
        expected = reference(input_ids=input_ids).logits
        eager = copy.deepcopy(reference).to(torch.bfloat16)
        eager_out = eager(input_ids=input_ids).logits
        candidate = _with_backend(eager, backend)
        backend_out = candidate(input_ids=input_ids).logits
    _check(expected, eager_out, backend_out)
