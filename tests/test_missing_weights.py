"""A checkpoint that leaves core weights missing fails to load, naming them in the original layout; loads that only
look incomplete (a tied head, a `state_dict=` load, the base model) still work."""

import re
import shutil
from pathlib import Path

import pytest
import torch
from helpers import INTERNLM2_DIR, QWEN2_DIR
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

import transformers_internvl  # noqa: F401  (registers the classes)
from transformers_internvl import InternVLConfig, InternVLForConditionalGeneration
from transformers_internvl.modeling.missing_weights import group_under_prefixes


def _checkpoint_without(source: Path, out: Path, drop) -> int:
    """Copy `source` to `out` without the keys `drop(key)` selects; return how many were dropped."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(source / "config.json", out / "config.json")
    state_dict = load_file(source / "model.safetensors")
    kept = {key: value for key, value in state_dict.items() if not drop(key)}
    save_file(kept, out / "model.safetensors", metadata={"format": "pt"})
    return len(state_dict) - len(kept)


def _missing_error(directory: Path, model_class=AutoModelForImageTextToText) -> str:
    with pytest.raises(ValueError, match="would be left randomly initialised") as error:
        model_class.from_pretrained(directory)
    return str(error.value)


@pytest.mark.parametrize(
    ("source", "prefix"),
    [
        (QWEN2_DIR, "mlp1."),  # the projector
        (QWEN2_DIR, "language_model.model.layers.1."),  # one LLM layer
        (QWEN2_DIR, "language_model.lm_head."),  # the (untied) head
        (QWEN2_DIR, "vision_model."),  # the whole vision tower
        (QWEN2_DIR, "vision_model.encoder.layers.0.attn."),  # part of a ViT layer
        (INTERNLM2_DIR, "language_model.output."),  # InternLM2's head
        (INTERNLM2_DIR, "language_model.model.layers.0."),
    ],
)
def test_missing_core_weights_are_named_by_their_original_prefix(tmp_path, source, prefix):
    count = _checkpoint_without(source, tmp_path, lambda key: key.startswith(prefix))
    assert count > 0
    message = _missing_error(tmp_path)
    plural = "s" if count != 1 else ""
    assert f"missing {count} tensor{plural} under `{prefix}`" in message
    assert len(re.findall(r"missing \d+ tensors? under", message)) == 1  # nothing else is reported


@pytest.mark.parametrize("source", [QWEN2_DIR, INTERNLM2_DIR])
def test_a_checkpoint_without_its_llm_names_the_whole_llm(tmp_path, source):
    count = _checkpoint_without(source, tmp_path, lambda key: key.startswith("language_model."))
    message = _missing_error(tmp_path)
    assert f"missing {count} tensors under `language_model.`" in message


def test_a_single_missing_tensor_is_named_in_full(tmp_path):
    _checkpoint_without(QWEN2_DIR, tmp_path, lambda key: key == "language_model.model.layers.0.self_attn.q_proj.bias")
    message = _missing_error(tmp_path)
    assert "`language_model.model.layers.0.self_attn.q_proj.bias`" in message


def test_the_base_model_also_refuses_missing_weights(tmp_path):
    _checkpoint_without(QWEN2_DIR, tmp_path, lambda key: key.startswith("mlp1."))
    assert "missing 6 tensors under `mlp1.`" in _missing_error(tmp_path, AutoModel)


def test_a_tied_head_is_not_missing(tmp_path):
    config = AutoConfig.from_pretrained(QWEN2_DIR)
    text = config.text_config.to_dict()
    text["tie_word_embeddings"] = True
    tied = InternVLConfig(vision_config=config.vision_config.to_dict(), llm_config=text)
    model = InternVLForConditionalGeneration(tied)
    model.save_pretrained(tmp_path)
    assert not any(key.startswith("language_model.lm_head.") for key in load_file(tmp_path / "model.safetensors"))
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert reloaded.lm_head.weight is reloaded.get_input_embeddings().weight
    assert torch.equal(reloaded.lm_head.weight, model.lm_head.weight)


def test_state_dict_loads_still_work_and_are_checked():
    model = AutoModelForImageTextToText.from_pretrained(QWEN2_DIR)
    state_dict = model.state_dict()
    loaded = InternVLForConditionalGeneration.from_pretrained(None, config=model.config, state_dict=state_dict)
    assert all(torch.equal(loaded.state_dict()[key], value) for key, value in state_dict.items())
    partial = {key: value for key, value in state_dict.items() if not key.startswith("model.mlp1.")}
    with pytest.raises(ValueError, match="missing 6 tensors under `mlp1.`"):
        InternVLForConditionalGeneration.from_pretrained(None, config=model.config, state_dict=partial)


def test_a_complete_checkpoint_with_a_mismatched_shape_still_reports_the_shape(tmp_path):
    shutil.copy(QWEN2_DIR / "config.json", tmp_path / "config.json")
    state_dict = load_file(QWEN2_DIR / "model.safetensors")
    state_dict["mlp1.1.bias"] = torch.zeros(3)
    save_file(state_dict, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"mlp1\.1\.bias has shape \(3,\)"):
        AutoModelForImageTextToText.from_pretrained(tmp_path)
    # Skipping it on purpose re-initialises it without an error, as the caller asked.
    AutoModelForImageTextToText.from_pretrained(tmp_path, ignore_mismatched_sizes=True)


def test_grouping_picks_the_largest_fully_missing_prefixes():
    all_keys = ["a.x.0.w", "a.x.0.b", "a.x.1.w", "a.y.w", "b.w"]
    assert group_under_prefixes(["a.x.0.w", "a.x.0.b"], all_keys) == [("a.x.0.", 2)]
    assert group_under_prefixes(["a.x.0.w", "a.x.0.b", "a.x.1.w"], all_keys) == [("a.x.", 3)]
    assert group_under_prefixes(["a.x.0.w"], all_keys) == [("a.x.0.w", 1)]
    assert group_under_prefixes(all_keys, all_keys) == [("a.", 4), ("b.", 1)]


def test_output_loading_info_hands_the_missing_keys_to_the_caller(tmp_path):
    _checkpoint_without(QWEN2_DIR, tmp_path, lambda key: key.startswith("mlp1."))
    model, loading_info = AutoModelForImageTextToText.from_pretrained(tmp_path, output_loading_info=True)
    assert {key for key in loading_info["missing_keys"]} == {
        f"model.mlp1.{index}.{name}" for index in (0, 1, 3) for name in ("weight", "bias")
    }
    # The policy is per call: the next plain load refuses again.
    _missing_error(tmp_path)


def test_an_empty_state_dict_asks_for_a_freshly_initialised_model():
    config = AutoConfig.from_pretrained(QWEN2_DIR)
    model = InternVLForConditionalGeneration.from_pretrained(None, config=config, state_dict={})
    assert all(torch.isfinite(parameter).all() for parameter in model.parameters())
