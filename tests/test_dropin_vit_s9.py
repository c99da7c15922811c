"""Vision-only InternViT checkpoints (OpenGVLab/InternViT-300M-448px, InternViT-6B-448px-V1-5 / V2_5 layout) used as
their model cards do (`AutoModel.from_pretrained(dir, torch_dtype=..., low_cpu_mem_usage=True)`, then
`outputs = model(pixel_values)`), against what the ORIGINAL `InternVisionModel` returned
(`tests/fixtures/dropin_s9/vit/`, made by `tests/fixtures/dropin_s9/make_vit_s9.py`)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

import transformers_internvl  # noqa: F401

VIT = Path(__file__).parent / "fixtures" / "dropin_s9" / "vit"
TOLERANCE = 1e-5


@pytest.fixture(scope="module", params=["vit-300m", "vit-6b"])
def vit(request):
    folder = VIT / request.param
    expected = load_file(folder / "io.safetensors")
    pixel_values = torch.randn(2, 3, 448, 448, generator=torch.Generator().manual_seed(9202))
    assert torch.equal(pixel_values[:, :, ::97, ::89], expected["pixel_values_sample"])
    model = AutoModel.from_pretrained(folder, torch_dtype=torch.float32, low_cpu_mem_usage=True).eval()
    return model, pixel_values, expected


def test_model_card_call_gives_the_original_outputs_with_the_pooler_output(vit):
    """`pooler_output` is the class token's final state, as the original's (it was missing)."""
    model, pixel_values, expected = vit
    with torch.no_grad():
        outputs = model(pixel_values)
    assert (outputs.last_hidden_state[:, :8] - expected["last_hidden_state"]).abs().max().item() <= TOLERANCE
    assert (outputs.pooler_output - expected["pooler_output"]).abs().max().item() <= TOLERANCE
    assert torch.equal(outputs.pooler_output, outputs.last_hidden_state[:, 0])


def test_hidden_states_match_the_original(vit):
    model, pixel_values, expected = vit
    with torch.no_grad():
        outputs = model(pixel_values=pixel_values, output_hidden_states=True)
    assert len(outputs.hidden_states) == int(expected["hidden_count"])
    assert (outputs.hidden_states[1][:, :8] - expected["hidden_1"]).abs().max().item() <= TOLERANCE
    assert outputs.pooler_output.shape == (2, model.config.hidden_size)


def test_pixel_embeds_keyword_matches_the_original(vit):
    """The original's `forward(pixel_embeds=...)` (the embeddings computed outside) was a TypeError."""
    model, pixel_values, expected = vit
    with torch.no_grad():
        outputs = model(pixel_embeds=model.embeddings(pixel_values))
    assert (outputs.last_hidden_state[:, :8] - expected["from_embeds"]).abs().max().item() <= TOLERANCE


def test_neither_pixel_values_nor_pixel_embeds_raises(vit):
    model = vit[0]
    with pytest.raises(ValueError, match="pixel_values.*pixel_embeds"):
        model()
    with pytest.raises(ValueError, match="pixel_embeds"):
        model(pixel_embeds=torch.zeros(2, 5, model.config.hidden_size + 1))


def test_tile_batches_keep_the_pooler_output(vit):
    model, pixel_values, expected = vit
    with torch.no_grad():
        outputs = model.forward_in_tile_batches(pixel_values, batch_size=1)
    assert (outputs.pooler_output - expected["pooler_output"]).abs().max().item() <= TOLERANCE
