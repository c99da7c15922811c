"""`convert --to hf` on an unmerged LoRA run of the original fine-tuning code (`use_llm_lora` / `use_backbone_lora`,
PEFT key names): each wrapped layer is merged while streaming, `W + 2 B@A` (the original's `lora_alpha = 2 r`), and
transformers' own port on the result gives the original's (PEFT-wrapped) logits."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from helpers import MODELS, copy_tokenizer
from safetensors.torch import load_file, save_file
from test_original_lora_checkpoints import write_original_lora_checkpoint

import transformers_internvl  # noqa: F401  (registers the classes)
from transformers_internvl.conversion.convert import ConversionError, convert_checkpoint
from transformers_internvl.conversion.original_lora import plan_original_lora_merge


@pytest.mark.parametrize(
    ("fixture", "tokenizer", "llm_rank", "vision_rank"),
    # The InternLM2 reference inputs use id 997 for <IMG_CONTEXT> (meta.json), not its tokenizer's: no tokenizer there.
    [("tiny-qwen2", "qwen2-tiny", 4, 8), ("tiny-internlm2", None, 8, 4)],
)
def test_unmerged_original_lora_converts_to_hf_with_the_original_logits(
    tmp_path, fixture, tokenizer, llm_rank, vision_rank
):
    source = tmp_path / "lora"
    reference, base_logits, io = write_original_lora_checkpoint(fixture, source, llm_rank, vision_rank)
    image_token_id = None
    if tokenizer:
        copy_tokenizer(tokenizer, source)
    else:
        image_token_id = json.loads((MODELS / fixture / "meta.json").read_text())["token_ids"]["<IMG_CONTEXT>"]
    convert_checkpoint(source, tmp_path / "hf", to="hf", image_token_id=image_token_id, progress=False)
    hf = transformers.InternVLForConditionalGeneration.from_pretrained(tmp_path / "hf", attn_implementation="eager")
    with torch.no_grad():
        logits = hf(
            input_ids=io["input_ids"], pixel_values=io["pixel_values"], attention_mask=io["attention_mask"]
        ).logits
    assert (reference - base_logits).abs().max() > 0.1  # the LoRA matters: a dropped adapter would fail below
    assert (logits - reference).abs().max() <= 1e-4, (logits - reference).abs().max()
    assert not any("lora" in key or "base_layer" in key for key in load_file(tmp_path / "hf" / "model.safetensors"))


def test_lora_factor_without_its_base_layer_is_refused(tmp_path):
    source = tmp_path / "lora"
    write_original_lora_checkpoint("tiny-qwen2", source, 4, 0, with_logits=False)
    state = load_file(source / "model.safetensors")
    base = next(key for key in state if key.endswith(".base_layer.weight"))
    del state[base]
    save_file(state, source / "model.safetensors", metadata={"format": "pt"})
    copy_tokenizer("qwen2-tiny", source)
    with pytest.raises(ConversionError, match="has no `base_layer.weight` beside it"):
        convert_checkpoint(source, tmp_path / "hf", to="hf", progress=False)
    assert not (tmp_path / "hf").exists()


def test_plan_maps_peft_names_to_plain_original_names():
    keys = [
        "language_model.base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight",
        "language_model.base_model.model.model.layers.0.self_attn.q_proj.base_layer.bias",
        "language_model.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight",
        "language_model.base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight",
        "language_model.base_model.model.lm_head.weight",
        "vision_model.base_model.model.encoder.layers.0.attn.qkv.base_layer.weight",
        "vision_model.base_model.model.encoder.layers.0.attn.qkv.lora_A.default.weight",
        "vision_model.base_model.model.encoder.layers.0.attn.qkv.lora_B.default.weight",
        "mlp1.0.weight",
    ]
    aliases, merges = plan_original_lora_merge(keys)
    assert sorted(aliases) == [
        "language_model.lm_head.weight",
        "language_model.model.layers.0.self_attn.q_proj.bias",
        "language_model.model.layers.0.self_attn.q_proj.weight",
        "mlp1.0.weight",
        "vision_model.encoder.layers.0.attn.qkv.weight",
    ]
    assert merges["vision_model.encoder.layers.0.attn.qkv.weight"] == (keys[6], keys[7])
    with pytest.raises(ValueError, match="has no"):
        plan_original_lora_merge(keys[:3])


def test_non_finite_lora_factor_is_refused_while_converting(tmp_path):
    source = tmp_path / "lora"
    write_original_lora_checkpoint("tiny-qwen2", source, 4, 0, with_logits=False)
    state = load_file(source / "model.safetensors")
    key = next(key for key in state if key.endswith("q_proj.lora_B.default.weight"))
    state[key][0, 0] = float("nan")
    save_file(state, source / "model.safetensors", metadata={"format": "pt"})
    copy_tokenizer("qwen2-tiny", source)
    with pytest.raises(ConversionError, match=r"q_proj\.weight: merging lora_A / lora_B gives \d+ non-finite"):
        convert_checkpoint(source, tmp_path / "hf", to="hf", progress=False)
    assert not (tmp_path / "hf").exists()
