"""`--to original` of `-hf` models whose LM head is tied to the embeddings (no `lm_head` tensor stored).

The original InternVL 2.5 code forces `tie_word_embeddings` false (`configuration_internvl_chat.py`: "By default, we
use tie_word_embeddings=False for models of all sizes"), so an original-layout folder without an LM head tensor
loads there with an uninitialised head (measured with the original code: logits of 1e38 / NaN for Qwen2, Llama,
Phi-3 and InternLM2; `fixtures/conversion_tied_s8/check_tied_with_original.py`). The converter writes the head as a
copy of the embeddings and says `tie_word_embeddings: false` at both levels; after the fix the original code gives
transformers' logits on the `-hf` source within 1e-6 (same script). A `-hf` folder made by `--to hf` from a tied
original keeps its layout on the way back (recorded), so the round trip stays byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

import transformers_internvl  # noqa: F401  (registers the classes)
from transformers_internvl.conversion.convert import convert_checkpoint

IMAGE_TOKEN_ID = 250
FAMILIES = ("qwen2", "llama", "phi3", "qwen3", "internlm2")


def tied_hf_folder(family: str, folder: Path) -> transformers.InternVLForConditionalGeneration:
    """A tiny `-hf` model saved by transformers with `tie_word_embeddings: true` (Llama recorded as InternLM2 for
    `internlm2`); returns the model."""
    from transformers import AutoConfig, InternVLConfig

    text = AutoConfig.for_model(
        {"internlm2": "llama"}.get(family, family), vocab_size=256, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2 if family != "phi3" else 4, intermediate_size=64,
        max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True,
    )  # fmt: skip
    vision = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
              "image_size": [56, 56], "patch_size": [14, 14]}  # fmt: skip
    config = InternVLConfig(
        vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN_ID, image_seq_length=4,
        tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.InternVLForConditionalGeneration(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    model.save_pretrained(folder)
    if family == "internlm2":
        raw = json.loads((folder / "config.json").read_text())
        raw["internvl_chat_original"] = {"llm_architectures": ["InternLM2ForCausalLM"]}
        (folder / "config.json").write_text(json.dumps(raw))
    return model


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[1, 2, 3] + [IMAGE_TOKEN_ID] * 4 + [4, 5, 6]])
    return ids, torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("family", FAMILIES)
def test_tied_hf_model_goes_to_original_with_its_head_written_out(family, tmp_path):
    model = tied_hf_folder(family, tmp_path / "hf")
    assert "language_model.lm_head.weight" not in load_file(tmp_path / "hf" / "model.safetensors")
    back = convert_checkpoint(tmp_path / "hf", tmp_path / "original", to="original", progress=False).path
    config = json.loads((back / "config.json").read_text())
    assert config["tie_word_embeddings"] is False and config["llm_config"]["tie_word_embeddings"] is False
    tensors = load_file(back / "model.safetensors")
    head, embed = ("output", "tok_embeddings") if family == "internlm2" else ("lm_head", "embed_tokens")
    assert torch.equal(tensors[f"language_model.{head}.weight"], tensors[f"language_model.model.{embed}.weight"])
    assert torch.equal(tensors[f"language_model.{head}.weight"], model.lm_head.weight)
    ours = transformers.AutoModelForImageTextToText.from_pretrained(back).eval()
    ids, pixel_values = _inputs()
    with torch.no_grad():
        expected = model(input_ids=ids, pixel_values=pixel_values).logits
        assert torch.equal(ours(input_ids=ids, pixel_values=pixel_values).logits, expected)


def test_hf_config_saying_tied_over_a_stored_head_keeps_that_head(tmp_path):
    """`tie_word_embeddings: true` with an `lm_head` tensor of other values: transformers 5 does not tie them (it
    warns and uses the stored head), so the original layout gets that head and `tie_word_embeddings: false`, as
    `--to hf` does in the other direction. It was refused ("a tensor the model does not use")."""
    from safetensors.torch import save_file

    tied_hf_folder("qwen2", tmp_path / "hf")
    tensors = load_file(tmp_path / "hf" / "model.safetensors")
    head = torch.randn(
        tensors["language_model.model.embed_tokens.weight"].shape, generator=torch.Generator().manual_seed(2)
    )
    tensors["language_model.lm_head.weight"] = head
    save_file(tensors, tmp_path / "hf" / "model.safetensors", metadata={"format": "pt"})
    model = transformers.InternVLForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    assert torch.equal(model.lm_head.weight, head)
    back = convert_checkpoint(tmp_path / "hf", tmp_path / "original", to="original", progress=False).path
    config = json.loads((back / "config.json").read_text())
    assert config["tie_word_embeddings"] is False and config["llm_config"]["tie_word_embeddings"] is False
    assert torch.equal(load_file(back / "model.safetensors")["language_model.lm_head.weight"], head)
    ours = transformers.AutoModelForImageTextToText.from_pretrained(back).eval()
    ids, pixel_values = _inputs()
    with torch.no_grad():
        expected = model(input_ids=ids, pixel_values=pixel_values).logits
        assert torch.equal(ours(input_ids=ids, pixel_values=pixel_values).logits, expected)


def test_tied_original_round_trip_stays_tied(tmp_path):
    """An original checkpoint with a tied head and no head tensor (the InternVL3.5 code follows
    `llm_config.tie_word_embeddings`) -> `-hf` -> original comes back as it was: no head tensor, still tied, every
    tensor equal."""
    from test_llm_families import IMAGE_TOKEN_ID as FAMILY_IMAGE_TOKEN_ID
    from test_llm_families import original_folder

    folder, _ = original_folder("qwen3_tied", tmp_path)
    hf = convert_checkpoint(folder, tmp_path / "hf", to="hf", image_token_id=FAMILY_IMAGE_TOKEN_ID, progress=False)
    back = convert_checkpoint(hf.path, tmp_path / "back", to="original", progress=False).path
    config = json.loads((back / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and config["llm_config"]["tie_word_embeddings"] is True
    source, result = load_file(folder / "model.safetensors"), load_file(back / "model.safetensors")
    assert "language_model.lm_head.weight" not in result and set(source) == set(result)
    assert all(torch.equal(source[key], result[key]) for key in source)
