"""Non-finite and out-of-range LoRA merges (session-5 attack): NaN / inf in either factor of the vision tower or the LLM
(InternLM2 and Qwen2), a base weight that is already NaN (passed through, not blamed on the LoRA), and a merge that is
finite in float32 but beyond float16: refused by from_pretrained in float16 and, before the fix, written as inf by
`convert --dtype float16` (the cast came after the merge's check). No output folder is left behind by a refusal."""

from __future__ import annotations

import pytest
import torch
from helpers import copy_tokenizer, image_token_id
from safetensors.torch import load_file, save_file
from test_original_lora_checkpoints import write_original_lora_checkpoint
from transformers import AutoModelForImageTextToText

import transformers_internvl  # noqa: F401  (registers the classes)
from transformers_internvl.conversion.convert import ConversionError, convert_checkpoint


def _edit(folder, edit) -> None:
    state = load_file(folder / "model.safetensors")
    edit(state)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


def _set(suffix: str, value: float):
    def edit(state: dict) -> None:
        state[next(key for key in state if key.endswith(suffix))][0, 1] = value

    return edit


def _no_output(dst) -> None:
    assert not dst.exists()
    assert [path.name for path in dst.parent.iterdir() if path.name.startswith(f".{dst.name}")] == []


@pytest.mark.parametrize(
    ("fixture", "llm_rank", "vision_rank", "suffix", "value", "named"),
    [
        (
            "tiny-internlm2",
            4,
            4,
            "attn.qkv.lora_B.default.weight",
            float("nan"),
            r"vision_model\.encoder\.layers\.0\.attn\.qkv",
        ),
        ("tiny-internlm2", 4, 0, "wqkv.lora_A.default.weight", float("-inf"), r"layers\.0\.attention\.wqkv"),
        (
            "tiny-qwen2",
            0,
            4,
            "mlp.fc1.lora_A.default.weight",
            float("inf"),
            r"vision_model\.encoder\.layers\.0\.mlp\.fc1",
        ),
    ],
    ids=["internlm2-vision-B-nan", "internlm2-llm-A-neg-inf", "qwen2-vision-A-inf"],
)
def test_non_finite_factors_are_refused_by_load_and_converter(
    tmp_path, fixture, llm_rank, vision_rank, suffix, value, named
):
    source = tmp_path / "lora"
    write_original_lora_checkpoint(fixture, source, llm_rank, vision_rank, with_logits=False)
    _edit(source, _set(suffix, value))
    with pytest.raises(ValueError, match=named + r"\.weight: merging lora_A / lora_B gives \d+ non-finite"):
        AutoModelForImageTextToText.from_pretrained(source)
    with pytest.raises(ConversionError, match=named + r"\.weight: merging lora_A / lora_B gives \d+ non-finite"):
        convert_checkpoint(source, tmp_path / "hf", to="hf", progress=False, image_token_id=image_token_id(fixture))
    _no_output(tmp_path / "hf")


def test_a_non_finite_base_weight_passes_through_the_merge(tmp_path):
    source = tmp_path / "lora"
    write_original_lora_checkpoint("tiny-qwen2", source, 4, 4, with_logits=False)
    _edit(source, _set("q_proj.base_layer.weight", float("nan")))
    model = AutoModelForImageTextToText.from_pretrained(source)
    weight = model.model.language_model.layers[0].self_attn.q_proj.weight
    assert torch.isnan(weight[0, 1]) and int((~torch.isfinite(weight)).sum()) == 1


def _beyond_float16(state: dict) -> None:
    """W + 2 B @ A = W[0, 0] + 2 * 300 * 200 (about 1.2e5): finite in float32, beyond float16's 65504."""
    key_b = next(key for key in state if key.endswith("q_proj.lora_B.default.weight"))
    key_a = key_b.replace("lora_B", "lora_A")
    state[key_b].zero_()
    state[key_a].zero_()
    state[key_b][0, 0], state[key_a][0, 0] = 300.0, 200.0


def test_a_merge_beyond_float16_is_refused_by_a_float16_conversion(tmp_path):
    source = tmp_path / "lora"
    write_original_lora_checkpoint("tiny-qwen2", source, 4, 0, with_logits=False)
    _edit(source, _beyond_float16)
    copy_tokenizer("qwen2-tiny", source)
    with pytest.raises(ValueError, match=r"q_proj\.weight: merging lora_A / lora_B gives 1 non-finite"):
        AutoModelForImageTextToText.from_pretrained(source, dtype=torch.float16)
    with pytest.raises(ConversionError, match=r"q_proj\.weight: casting to float16 \(--dtype\) turns 1 finite value"):
        convert_checkpoint(source, tmp_path / "hf16", to="hf", dtype=torch.float16, progress=False)
    _no_output(tmp_path / "hf16")
    # bfloat16 has float32's range: the same merge converts, finite.
    convert_checkpoint(source, tmp_path / "hf-bf16", to="hf", dtype=torch.bfloat16, progress=False)
    written = load_file(tmp_path / "hf-bf16" / "model.safetensors")
    assert all(torch.isfinite(tensor).all() for tensor in written.values() if tensor.is_floating_point())
