"""Configurations beyond the two reference checkpoints (ps_version v1, select_layer != -1, batch 2 with left
padding), against outputs of the original OpenGVLab implementation (see fixtures/original-variants/README.md)."""

import json

import pytest
import torch
from helpers import FIXTURES, MODELS
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForImageTextToText

import transformers_internvl  # noqa: F401

ORIGINAL = load_file(FIXTURES / "original-variants" / "outputs.safetensors")
VARIANTS = {"plain": {}, "v1": {"ps_version": "v1"}, "sl-2": {"select_layer": -2}, "sl1": {"select_layer": 1}}
CASES = [(base, variant) for base in ("tiny-qwen2", "tiny-internlm2") for variant in VARIANTS]


@pytest.fixture(scope="module")
def inputs():
    return {base: load_file(MODELS / base / "io.safetensors") for base in ("tiny-qwen2", "tiny-internlm2")}


@pytest.mark.parametrize("base,variant", CASES, ids=[f"{b}-{v}" for b, v in CASES])
def test_matches_the_original_implementation(base, variant, inputs):
    directory = MODELS / base
    meta = json.loads((directory / "meta.json").read_text())
    config = AutoConfig.from_pretrained(
        directory, image_token_id=meta["token_ids"]["<IMG_CONTEXT>"], **VARIANTS[variant]
    )
    model = AutoModelForImageTextToText.from_pretrained(directory, config=config).eval()
    expected = {key.split(".", 1)[1]: value for key, value in ORIGINAL.items() if key.startswith(f"{base}-{variant}.")}
    io = inputs[base]
    pad = meta["token_ids"]["pad"]
    greedy = dict(max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=pad)

    with torch.no_grad():
        features = model.extract_feature(io["pixel_values"])
        logits = model(input_ids=io["input_ids"], pixel_values=io["pixel_values"]).logits
        generated = model.generate(input_ids=io["input_ids"], pixel_values=io["pixel_values"], **greedy)
    assert (features - expected["vit_embeds"]).abs().max().item() <= 1e-5
    assert (logits[:, -32:] - expected["logits_last32"]).abs().max().item() <= 1e-5
    assert torch.equal(generated[:, io["input_ids"].shape[1] :], expected["generated_ids"])

    batch_ids, batch_mask = expected["batch_input_ids"], expected["batch_attention_mask"]
    pixel_values = torch.cat([io["pixel_values"], io["pixel_values"]])
    with torch.no_grad():
        batch_logits = model(input_ids=batch_ids, attention_mask=batch_mask, pixel_values=pixel_values).logits
        batch_generated = model.generate(
            input_ids=batch_ids, attention_mask=batch_mask, pixel_values=pixel_values, **greedy
        )
    assert (batch_logits[:, -32:] - expected["batch_logits_last32"]).abs().max().item() <= 1e-5
    assert torch.equal(batch_generated[:, batch_ids.shape[1] :], expected["batch_generated_ids"])
