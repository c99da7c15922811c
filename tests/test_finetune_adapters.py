"""PEFT adapters with the original InternVL module names: save, reload here (plain PEFT calls), merge, save."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import MODELS, copy_tokenizer, load_model
from safetensors import safe_open
from transformers import AutoModelForImageTextToText

import transformers_internvl  # noqa: F401
from transformers_internvl.training.adapters import (
    load_adapter_original_layout,
    original_adapter_key_mapping,
    save_adapter_original_layout,
    to_original_adapter_keys,
)
from transformers_internvl.training.stages import set_trainable

peft = pytest.importorskip("peft")

FIXTURE_MODELS = {name: MODELS / name for name in ("tiny-qwen2", "tiny-internlm2")}


def _inputs(directory: Path) -> dict:
    with safe_open(directory / "io.safetensors", framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in ("input_ids", "pixel_values")}


def _keys(path: Path) -> set[str]:
    with safe_open(path, framework="pt") as handle:
        return set(handle.keys())


def _logits(model, inputs) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**inputs).logits


def _load(directory: Path):
    return load_model(directory)


def _trained_adapter(directory: Path, vision: bool = True):
    """A LoRA model (LLM + InternViT) whose B matrices are non-zero, so the adapter changes the logits."""
    model = set_trainable(_load(directory), "llm_lora", lora_rank=4, vision_lora_rank=2 if vision else 0)
    generator = torch.Generator().manual_seed(0)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            parameter.data = torch.randn(parameter.shape, generator=generator) * 0.05
    return model


@pytest.fixture(scope="module", params=sorted(FIXTURE_MODELS))
def saved(request, tmp_path_factory):
    directory = FIXTURE_MODELS[request.param]
    model = _trained_adapter(directory)
    out = tmp_path_factory.mktemp(request.param) / "adapter"
    written = save_adapter_original_layout(model, out)
    return directory, model, out, written


def test_adapter_keys_are_original_module_names(saved):
    directory, model, out, written = saved
    assert written == [out / "adapter_model.safetensors"]
    keys = _keys(written[0])
    original_weights = _keys(directory / "model.safetensors")  # the original checkpoint's key set
    wrapped = [
        name for name, module in model.named_modules() if hasattr(module, "lora_A") and "default" in module.lora_A
    ]
    assert len(keys) == 2 * len(wrapped) > 0
    for key in keys:
        assert key.startswith("base_model.model.") and key.endswith((".lora_A.weight", ".lora_B.weight")), key
        module = key.removeprefix("base_model.model.").rsplit(".", 2)[0]
        # every wrapped module is a linear layer of the original checkpoint, under its original name
        assert f"{module}.weight" in original_weights, key
        assert module.startswith(("language_model.model.layers.", "vision_model.encoder.layers.")), key
    llm = {k for k in keys if k.startswith("base_model.model.language_model.model.layers.")}
    vision = {k for k in keys if k.startswith("base_model.model.vision_model.encoder.layers.")}
    assert llm and vision and llm | vision == keys


def test_original_named_adapter_reloads_with_identical_logits(saved):
    directory, model, out, _ = saved
    inputs = _inputs(directory)
    expected = _logits(model, inputs)
    assert not torch.equal(expected, _logits(_load(directory), inputs))  # the adapter does change the logits
    plain = peft.PeftModel.from_pretrained(_load(directory), out)  # no key_mapping: the installed hook
    assert torch.equal(_logits(plain, inputs), expected)
    explicit = load_adapter_original_layout(_load(directory), out)
    assert torch.equal(_logits(explicit, inputs), expected)


def test_adapter_in_this_packages_layout_still_loads(tmp_path):
    directory = FIXTURE_MODELS["tiny-qwen2"]
    model = _trained_adapter(directory)
    model.save_pretrained(tmp_path)  # PEFT's own save: keys `base_model.model.model.language_model...`
    assert any(
        k.startswith("base_model.model.model.vision_model.") for k in _keys(tmp_path / "adapter_model.safetensors")
    )
    inputs = _inputs(directory)
    reloaded = peft.PeftModel.from_pretrained(_load(directory), tmp_path)
    assert torch.equal(_logits(reloaded, inputs), _logits(model, inputs))


def test_auto_peft_model_merge_and_save_write_the_original_layout(tmp_path):
    # An original-style folder: weights, config and the tokenizer (so `<IMG_CONTEXT>` resolves without arguments).
    base = tmp_path / "InternVL-tiny"
    shutil.copytree(FIXTURE_MODELS["tiny-qwen2"], base)
    copy_tokenizer("qwen2-tiny", base)
    model = set_trainable(AutoModelForImageTextToText.from_pretrained(base), "llm_lora", lora_rank=4)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.05)
    save_adapter_original_layout(model, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base) and config["task_type"] == "CAUSAL_LM"

    inputs = _inputs(base)
    expected = _logits(model, inputs)
    auto = peft.AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter")
    assert torch.equal(_logits(auto, inputs), expected)

    merged = auto.merge_and_unload()
    merged_logits = _logits(merged, inputs)
    # W + s B A instead of x W^T + s (x A^T) B^T: equal up to float32 rounding
    torch.testing.assert_close(merged_logits, expected, rtol=0, atol=2e-5)
    merged.save_pretrained(tmp_path / "merged")
    assert _keys(tmp_path / "merged" / "model.safetensors") == _keys(base / "model.safetensors")
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged")
    assert torch.equal(_logits(reloaded, inputs), merged_logits)


@pytest.mark.parametrize(("name", "head"), [("tiny-qwen2", "lm_head"), ("tiny-internlm2", "output")])
def test_key_table_round_trip_with_the_llm_head_name(name, head):
    model = _load(FIXTURE_MODELS[name])
    ours = {
        "base_model.model.lm_head.lora_A.weight": 0,
        "base_model.model.model.mlp1.1.lora_B.weight": 1,
        "model.language_model.layers.3.x.lora_A.weight": 2,
    }
    original = to_original_adapter_keys(ours, model)
    assert original == {
        f"base_model.model.language_model.{head}.lora_A.weight": 0,
        "base_model.model.mlp1.1.lora_B.weight": 1,
        "language_model.model.layers.3.x.lora_A.weight": 2,
    }
    import re

    mapping = original_adapter_key_mapping(model)
    for theirs, value in original.items():
        inner = theirs.removeprefix("base_model.model.")
        pattern = next(p for p in mapping if re.search(p, inner))
        back = re.sub(pattern, mapping[pattern], inner)
        assert back == next(k for k, v in ours.items() if v == value).removeprefix("base_model.model."), theirs


def test_bad_arguments_are_refused(tmp_path):
    model = _load(FIXTURE_MODELS["tiny-qwen2"])
    with pytest.raises(ValueError, match="outside the InternVL module tree"):
        to_original_adapter_keys({"base_model.model.encoder.lora_A.weight": 0}, model)
    with pytest.raises(TypeError, match="peft.PeftModel"):
        save_adapter_original_layout(model, tmp_path / "a")
    with pytest.raises(TypeError, match="must be an InternVLChatForConditionalGeneration"):
        original_adapter_key_mapping(torch.nn.Linear(2, 2))
    peft_model = set_trainable(model, "llm_lora", lora_rank=2)
    with pytest.raises(ValueError, match="safe_serialization"):
        save_adapter_original_layout(peft_model, tmp_path / "b", safe_serialization=False)
