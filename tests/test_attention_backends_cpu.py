"""Every attention backend that runs on a CPU gives eager's logits in fp32 (<= 1e-5), in both towers, set for both at
once or per tower (issue 13, acceptance 1). The GPU kernels have their own `gpu`-marked tests
(`test_gpu_attention.py`)."""

from __future__ import annotations

import pytest
import torch
from helpers import MODELS, load_model
from safetensors.torch import load_file
from transformers.utils import is_torch_flex_attn_available

import transformers_internvl  # noqa: F401 - registers the Auto classes

MODEL_NAMES = ("tiny-qwen2", "tiny-internlm2")


def _logits(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def _inputs(name: str) -> dict[str, torch.Tensor]:
    io = load_file(str(MODELS / name / "io.safetensors"))
    return {key: io[key] for key in ("input_ids", "attention_mask", "pixel_values")}


@pytest.fixture(scope="module")
def eager_logits() -> dict[str, torch.Tensor]:
    return {name: _logits(load_model(name, attn_implementation="eager").eval(), _inputs(name)) for name in MODEL_NAMES}


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize(
    "attn_implementation",
    [
        "sdpa",
        {"vision_config": "sdpa", "text_config": "eager"},
        {"vision_config": "eager", "text_config": "sdpa"},
    ],
    ids=["sdpa", "sdpa-vision-only", "sdpa-text-only"],
)
def test_sdpa_in_either_tower_gives_eager_logits(name, attn_implementation, eager_logits):
    model = load_model(name, attn_implementation=attn_implementation).eval()
    expected = (
        {"vision_config": attn_implementation, "text_config": attn_implementation}
        if isinstance(attn_implementation, str)
        else attn_implementation
    )
    assert model.config.vision_config._attn_implementation == expected["vision_config"]
    assert model.config.text_config._attn_implementation == expected["text_config"]
    difference = (_logits(model, _inputs(name)) - eager_logits[name]).abs().max().item()
    assert difference <= 1e-5, difference


@pytest.mark.slow
@pytest.mark.skipif(not is_torch_flex_attn_available(), reason="this torch has no flex attention")
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_flex_attention_in_both_towers_gives_eager_logits(name, eager_logits):
    """`flex_attention` runs on a CPU through torch.compile (tens of seconds for the first call)."""
    model = load_model(name, attn_implementation="flex_attention").eval()
    assert model.config.vision_config._attn_implementation == "flex_attention"
    assert model.config.text_config._attn_implementation == "flex_attention"
    difference = (_logits(model, _inputs(name)) - eager_logits[name]).abs().max().item()
    assert difference <= 1e-5, difference


@pytest.mark.parametrize(
    ("attn_implementation", "where", "package"),
    [
        ("flash_attention_2", "both towers", "flash-attn"),
        ({"vision_config": "flash_attention_2", "text_config": "sdpa"}, "vision_config", "flash-attn"),
        ({"vision_config": "sdpa", "text_config": "flash_attention_3"}, "text_config", "flash-attn-3"),
        ("flash_attention_4", "both towers", "flash-attn-4"),
    ],
)
def test_a_missing_flash_kernel_is_named_with_its_package(attn_implementation, where, package):
    from transformers.utils import is_kernels_available

    from transformers_internvl.modeling.attention_kernels import FLASH_KERNELS

    names = [attn_implementation] if isinstance(attn_implementation, str) else list(attn_implementation.values())
    if any(name in FLASH_KERNELS and FLASH_KERNELS[name].available() for name in names):
        pytest.skip("the kernel is usable here")
    if is_kernels_available():
        pytest.skip("transformers falls back to the Hub kernel (the `kernels` package is installed)")
    with pytest.raises(ImportError) as raised:
        load_model("tiny-qwen2", attn_implementation=attn_implementation)
    message = str(raised.value)
    assert f"`{package}` package" in message and where in message and "'sdpa'" in message
    model = load_model("tiny-qwen2", attn_implementation="sdpa")
    with pytest.raises(ImportError, match=f"`{package}` package"):
        model.set_attn_implementation(attn_implementation)
    assert model.config.vision_config._attn_implementation == "sdpa"  # unchanged after the refusal


def test_an_installed_flash_package_without_cuda_says_so(monkeypatch):
    from transformers_internvl.modeling import attention_kernels

    monkeypatch.setattr(attention_kernels, "_module_installed", lambda module: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    kernel = attention_kernels.FLASH_KERNELS["flash_attention_2"]
    monkeypatch.setitem(attention_kernels.FLASH_KERNELS, "flash_attention_2", kernel._replace(available=lambda: False))
    with pytest.raises(ImportError, match="installed but no CUDA device is visible"):
        attention_kernels.check_attention_kernels({"text_config": "flash_attention_2"})
    attention_kernels.check_attention_kernels({"text_config": "sdpa", "vision_config": None})  # nothing to refuse


def test_a_model_built_from_a_config_asking_for_a_missing_flash_kernel_names_the_package():
    from helpers import tiny_text_config, tiny_vision_config
    from transformers.utils import is_flash_attn_2_available, is_kernels_available

    from transformers_internvl.modeling.configuration_internvl import InternVLChatConfig
    from transformers_internvl.modeling.modeling_internvl import InternVLForConditionalGeneration

    if is_flash_attn_2_available() or is_kernels_available():
        pytest.skip("flash_attention_2 (or transformers' Hub-kernel fallback) is usable here")
    config = InternVLChatConfig(
        vision_config=tiny_vision_config(28), llm_config=tiny_text_config(), attn_implementation="flash_attention_2"
    )
    with pytest.raises(ImportError, match="`flash-attn` package"):
        InternVLForConditionalGeneration(config)
    config = InternVLChatConfig(vision_config=tiny_vision_config(28), llm_config=tiny_text_config())
    assert InternVLForConditionalGeneration(config).config.text_config._attn_implementation in ("sdpa", "eager")
