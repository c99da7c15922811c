"""`convert --to hf` / `--to original` for every LLM family the loader supports (Phi-3, Llama, Qwen3, Qwen3-MoE,
GPT-OSS, InternLM2 holding InternLM3 weights): transformers' own `InternVLForConditionalGeneration` on the converted
folder gives this package's logits on the original folder (image + text), and the round trip is bit-identical."""

from __future__ import annotations

import pytest
import torch
import transformers
from test_llm_families import FAMILIES, IMAGE_TOKEN_ID, load, original_folder, text_ids

import transformers_internvl  # noqa: F401  (registers the classes)
from transformers_internvl.conversion.convert import convert_checkpoint


def assert_port_and_ours_agree(ours, folder, tmp_path) -> None:
    """Converts the original `folder` to `tmp_path / "hf"` and checks transformers' own InternVL on it gives `ours`'
    logits (fp32, 1e-5) on an image + text prompt of two tiles."""
    config = ours.config
    vocab = config.text_config.vocab_size
    image_tokens = torch.full((2, config.num_image_token), IMAGE_TOKEN_ID)
    input_ids = torch.cat([text_ids(vocab)[:, :3], image_tokens, text_ids(vocab, seed=1)[:, :4]], dim=1)
    pixel_values = torch.randn(2, 3, config.vision_image_size, config.vision_image_size)
    with torch.no_grad():
        reference = ours(input_ids=input_ids, pixel_values=pixel_values).logits
    convert_checkpoint(folder, tmp_path / "hf", to="hf", image_token_id=IMAGE_TOKEN_ID, progress=False)
    upstream = transformers.InternVLForConditionalGeneration.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    with torch.no_grad():
        logits = upstream.eval()(input_ids=input_ids, pixel_values=pixel_values).logits
    assert (logits - reference).abs().max() <= 1e-5


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_converts_both_ways(family, tmp_path):
    folder, _ = original_folder(family, tmp_path)
    ours = load(folder)
    assert_port_and_ours_agree(ours, folder, tmp_path)

    convert_checkpoint(tmp_path / "hf", tmp_path / "back", to="original", progress=False)
    back = load(tmp_path / "back")
    for (name, tensor), (_, expected) in zip(back.state_dict().items(), ours.state_dict().items(), strict=True):
        assert torch.equal(tensor, expected), name
