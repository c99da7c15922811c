"""Fine-tuning paths: loss, gradient checkpointing, PEFT LoRA on the original target modules, merge and save."""

import pytest
import torch
from helpers import QWEN2_DIR, load_model
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

import transformers_internvl  # noqa: F401

# LoRA targets of the original fine-tuning code (original-behaviour.md §7): ViT and Qwen2 modules.
LORA_TARGETS = [
    "attn.qkv",
    "attn.proj",
    "mlp.fc1",
    "mlp.fc2",
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
]


@pytest.fixture()
def model():
    return load_model()


@pytest.fixture(scope="module")
def io():
    return load_file(QWEN2_DIR / "io.safetensors")


def _labels(input_ids: torch.Tensor, supervised_from: int) -> torch.Tensor:
    labels = input_ids.clone()
    labels[:, :supervised_from] = -100
    return labels


def test_loss_is_shifted_cross_entropy_over_supervised_tokens(model, io):
    labels = _labels(io["input_ids"], 280)
    outputs = model(input_ids=io["input_ids"], pixel_values=io["pixel_values"], labels=labels)
    logits = outputs.logits[0, :-1]
    targets = labels[0, 1:]
    expected = torch.nn.functional.cross_entropy(logits[targets != -100], targets[targets != -100])
    assert torch.allclose(outputs.loss, expected, atol=1e-6)


def test_gradient_checkpointing_gives_the_same_gradients(model, io):
    labels = _labels(io["input_ids"], 280)
    model.train()
    model(input_ids=io["input_ids"], pixel_values=io["pixel_values"], labels=labels).loss.backward()
    reference = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model(input_ids=io["input_ids"], pixel_values=io["pixel_values"], labels=labels).loss.backward()
    assert any("vision_model" in name for name in reference)
    for name, parameter in model.named_parameters():
        if name in reference:
            assert torch.allclose(parameter.grad, reference[name], atol=1e-6), name


def test_image_flags_drop_dummy_tiles(model, io):
    pixel_values = torch.cat([io["pixel_values"], torch.zeros_like(io["pixel_values"])])
    with torch.no_grad():
        flagged = model(input_ids=io["input_ids"], pixel_values=pixel_values, image_flags=torch.tensor([1, 0])).logits
        plain = model(input_ids=io["input_ids"], pixel_values=io["pixel_values"]).logits
    assert torch.allclose(flagged, plain, atol=1e-5)


def test_peft_lora_trains_merges_and_saves_the_original_layout(model, io, tmp_path):
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS, lora_dropout=0.0)
    peft_model = peft.get_peft_model(model, config)
    lora_names = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert any("vision_model" in name for name in lora_names)
    assert any("language_model" in name for name in lora_names)
    assert all("lora_" in name for name in lora_names)

    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.1)
    labels = _labels(io["input_ids"], 280)
    losses = []
    for _ in range(3):
        loss = peft_model(input_ids=io["input_ids"], pixel_values=io["pixel_values"], labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]

    merged = peft_model.merge_and_unload()
    merged.save_pretrained(tmp_path)
    assert set(load_file(tmp_path / "model.safetensors")) == set(load_file(QWEN2_DIR / "model.safetensors"))
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    merged.eval()
    with torch.no_grad():
        before = merged(input_ids=io["input_ids"], pixel_values=io["pixel_values"]).logits
        after = reloaded(input_ids=io["input_ids"], pixel_values=io["pixel_values"]).logits
    assert torch.equal(before, after)


def test_device_map_auto_loads_with_parity(io):
    pytest.importorskip("accelerate")
    model = load_model(device_map="auto")
    with torch.no_grad():
        logits = model(input_ids=io["input_ids"], pixel_values=io["pixel_values"]).logits
    assert (logits - io["logits"]).abs().max().item() <= 1e-5
