"""`training.stages`: freezing per stage, drop path, gradient checkpointing in both towers, LoRA targets."""

import pytest
import torch
from helpers import INTERNLM2_DIR, QWEN2_DIR, load_model
from transformers import AutoModelForImageTextToText

from transformers_internvl.training.stages import (
    lora_target_modules,
    set_drop_path_rate,
    set_trainable,
    trainable_parameter_names,
)


@pytest.fixture()
def model():
    return load_model()


def _towers(names):
    return {n.split(".")[1] if n.startswith("model.") else n.split(".")[0] for n in names}


@pytest.mark.parametrize(
    ("stage", "towers"),
    [
        ("mlp", {"mlp1"}),
        ("vit_mlp", {"mlp1", "vision_model"}),
        ("full", {"mlp1", "vision_model", "language_model", "lm_head"}),
    ],
)
def test_stages_train_the_right_towers(model, stage, towers):
    model = set_trainable(model, stage)
    assert _towers(trainable_parameter_names(model)) == towers
    assert model.model.vision_model.training  # frozen or not, the ViT stays in train mode (drop path active)
    assert model.model.language_model.training == (stage == "full")
    assert model.config.use_cache is False and model.config.text_config.use_cache is False


def test_unfreeze_vit_layers(model):
    set_trainable(model, "mlp", unfreeze_vit_layers=1)
    names = trainable_parameter_names(model)
    assert any(n.startswith("model.vision_model.encoder.layers.1.") for n in names)
    assert not any(n.startswith("model.vision_model.encoder.layers.0.") for n in names)


def test_llm_lora_trains_only_lora_on_the_llm(model):
    pytest.importorskip("peft")
    peft_model = set_trainable(model, "llm_lora", lora_rank=4)
    names = trainable_parameter_names(peft_model)
    assert names and all("lora_" in n and ".language_model.layers." in n for n in names)
    wrapped = {n.rsplit(".lora_", 1)[0].split("layers.0.")[-1] for n in names if "layers.0." in n}
    assert wrapped == {f"self_attn.{p}_proj" for p in "qkvo"} | {f"mlp.{p}_proj" for p in ("gate", "up", "down")}
    assert peft_model.peft_config["default"].lora_alpha == 8


def test_vision_lora_targets(model):
    pytest.importorskip("peft")
    peft_model = set_trainable(model, "llm_lora", lora_rank=4, vision_lora_rank=2)
    vision = [n for n in trainable_parameter_names(peft_model) if "vision_model" in n]
    assert {n.split("layers.0.")[-1].rsplit(".lora_", 1)[0] for n in vision if "layers.0." in n} == {
        "attn.qkv",
        "attn.proj",
        "mlp.fc1",
        "mlp.fc2",
    }
    shapes = {p.shape for n, p in peft_model.named_parameters() if "vision_model" in n and "lora_A" in n}
    assert all(shape[0] == 2 for shape in shapes)


def test_internlm2_lora_targets():
    internlm2 = AutoModelForImageTextToText.from_pretrained(INTERNLM2_DIR)
    regex = lora_target_modules(internlm2)
    assert "attention\\.wqkv" in regex and "feed_forward\\.w3" in regex


def test_drop_path_active_in_training_only(model):
    set_drop_path_rate(model, 0.5)
    layers = model.model.vision_model.encoder.layers
    assert isinstance(layers[0].drop_path1, torch.nn.Identity) and layers[-1].drop_path1.drop_prob == 0.5
    pixel_values = torch.randn(2, 3, 448, 448)
    vision = model.model.vision_model
    torch.manual_seed(0)
    vision.train()
    a = vision(pixel_values=pixel_values).last_hidden_state
    b = vision(pixel_values=pixel_values).last_hidden_state
    assert not torch.equal(a, b)  # stochastic in training
    vision.eval()
    c = vision(pixel_values=pixel_values).last_hidden_state
    assert torch.equal(c, vision(pixel_values=pixel_values).last_hidden_state)
    with pytest.raises(ValueError, match="drop_path_rate"):
        set_drop_path_rate(model, 1.0)


def test_gradient_checkpointing_in_both_towers_same_gradients(model):
    from transformers.modeling_layers import GradientCheckpointingLayer

    io = __import__("safetensors.torch", fromlist=["load_file"]).load_file(QWEN2_DIR / "io.safetensors")
    labels = io["input_ids"].clone()
    labels[:, :280] = -100
    set_trainable(model, "full")

    def grads():
        model.zero_grad()
        model(input_ids=io["input_ids"], pixel_values=io["pixel_values"], labels=labels).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    reference = grads()
    set_trainable(model, "full", gradient_checkpointing=True)
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert {type(m).__name__ for m in layers} >= {"InternVLVisionLayer", "Qwen2DecoderLayer"}
    assert all(m.gradient_checkpointing for m in layers)
    checkpointed = grads()
    assert reference.keys() == checkpointed.keys() and any("vision_model" in n for n in reference)
    for name in reference:
        torch.testing.assert_close(checkpointed[name], reference[name], atol=1e-5, rtol=0)


def test_bad_arguments(model):
    with pytest.raises(ValueError, match="stage"):
        set_trainable(model, "lora")
    with pytest.raises(ValueError, match="unfreeze_vit_layers"):
        set_trainable(model, "mlp", unfreeze_vit_layers=-3)  # the tiny ViT has 2 layers
