"""Adversarial checks of the generation ids plain `generate` gets on original checkpoints (session 5).

The original `InternVLChatModel.generate` hands `generation_config=None` to its language model, whose generation
config comes from `llm_config` (`internvl_chat/internvl/model/internvl_chat/modeling_internvl_chat.py`): eos / pad /
bos are `llm_config`'s; this package adds the template's end token (what the original `chat()` passes as
`eos_token_id`) when the tokenizer files next to the weights name it. Expected ids below are read off the fixtures'
`llm_config` and tokenizer files (`tests/fixtures/README.md`, `tests/fixtures/llm_families/README.md`).
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from helpers import image_token_id, original_model_dir
from test_llm_families import original_folder
from transformers import AutoModelForImageTextToText, GenerationConfig, InternVLForConditionalGeneration

import transformers_internvl  # noqa: F401  (registers the classes)
from transformers_internvl.conversion.convert import convert_checkpoint


def _ids(generation_config) -> tuple:
    return generation_config.eos_token_id, generation_config.pad_token_id, generation_config.bos_token_id


def _load(folder, **kwargs):
    return AutoModelForImageTextToText.from_pretrained(folder, **kwargs)


# ---- `convert --to hf`: transformers' own class gets the ids this package gives the original layout -----------------

# (fixture, tokenizer next to it, ids ours gives the original folder): Qwen2 `<|im_end|>` 992 is its llm eos, pad and
# bos 990; InternLM2 llm eos `</s>` 2, pad 2, bos 1, and the dummy-prefix tokenizer's `<|im_end|>` 598.
CONVERTED = [
    ("tiny-qwen2", "qwen2-tiny", (992, 990, 990)),
    ("tiny-internlm2", "internlm2-dummy-prefix", ([2, 598], 2, 1)),
    ("tiny-internlm2", None, (2, 2, 1)),
]


@pytest.mark.parametrize(("fixture", "tokenizer", "expected"), CONVERTED)
def test_converted_hf_folder_keeps_the_llm_ids_and_the_template_stop(tmp_path, fixture, tokenizer, expected):
    """Before: the -hf `generation_config.json` held only the stop token (`eos_token_id: 598`, no pad / bos), so
    transformers' InternVL stopped only at `<|im_end|>` and padded finished rows with it instead of llm pad."""
    source = original_model_dir(tmp_path / "original", fixture, tokenizer)
    token_id = image_token_id(fixture)
    assert _ids(_load(source, image_token_id=token_id).generation_config) == expected
    hf = convert_checkpoint(source, tmp_path / "hf", to="hf", image_token_id=token_id, progress=False).path
    assert _ids(InternVLForConditionalGeneration.from_pretrained(hf).generation_config) == expected
    back = convert_checkpoint(hf, tmp_path / "back", to="original", progress=False).path
    assert _ids(_load(back, image_token_id=token_id).generation_config) == expected


def test_converted_gpt_oss_folder_stops_at_return_as_the_loader(tmp_path):
    """InternVL3.5 GPT-OSS: the chat stop token is `sep2` (`<|return|>`, 111 here), not `sep` (`<|end|>`, 110); the
    converter now reads it as the loader does, from the tokenizer files (here `added_tokens.json` alone)."""
    folder, _ = original_folder("gpt_oss", tmp_path)
    (folder / "added_tokens.json").write_text(json.dumps({"<|end|>": 110, "<|return|>": 111, "<IMG_CONTEXT>": 5}))
    assert _ids(_load(folder).generation_config) == ([101, 111], 102, None)  # llm eos 101, pad 102, no bos
    hf = convert_checkpoint(folder, tmp_path / "hf", to="hf", progress=False).path
    generation = json.loads((hf / "generation_config.json").read_text())
    assert (generation["eos_token_id"], generation["pad_token_id"], generation.get("bos_token_id")) == (
        [101, 111],
        102,
        None,
    )


# ---- hostile generation_config.json / `generation_config=` values: a clear error at load ----------------------------

HOSTILE = [
    ("eos_token_id", "2"),
    ("eos_token_id", 2.0),
    ("eos_token_id", float("nan")),
    ("eos_token_id", True),
    ("eos_token_id", [[2, 3]]),
    ("eos_token_id", [2, "x"]),
    ("eos_token_id", {"a": 2}),
    ("pad_token_id", True),
    ("pad_token_id", 2.0),
    ("bos_token_id", "x"),
    ("bos_token_id", [1, 2]),
]


@pytest.mark.parametrize(("name", "value"), HOSTILE)
def test_hostile_generation_config_file_ids_are_refused_at_load(tmp_path, name, value):
    """Before: eos "2" / [[2, 3]] / {"a": 2} failed deep inside `generate`, eos 2.0 / NaN with "'float' object is not
    iterable" at load, eos / pad `true` silently stopped at / padded with token 1."""
    folder = original_model_dir(tmp_path / "model", "tiny-internlm2", "internlm2-dummy-prefix")
    (folder / "generation_config.json").write_text(json.dumps({name: value}))
    with pytest.raises(TypeError, match=rf"`generation_config\.{name}` .*must be an integer token id.*got"):
        _load(folder, image_token_id=5)


def test_hostile_generation_config_argument_is_refused(tmp_path):
    folder = original_model_dir(tmp_path / "model", "tiny-internlm2", "internlm2-dummy-prefix")
    with pytest.raises(TypeError, match=r"`generation_config\.eos_token_id` .*got '2' \(str\)"):
        _load(folder, image_token_id=5, generation_config=GenerationConfig(eos_token_id="2"))


@pytest.mark.parametrize("value", [True, 598.7, -3, "abc", [598]])
def test_hostile_stop_token_id_in_tokenizer_files_is_refused(tmp_path, value):
    """Before: `true` in added_tokens.json made plain `generate` stop at token 1, 598.7 at 598, -3 was added as is;
    "abc" / [598] failed in `int()` with no file named."""
    folder = original_model_dir(tmp_path / "model", "tiny-internlm2", None)
    (folder / "added_tokens.json").write_text(json.dumps({"<|im_end|>": value, "<IMG_CONTEXT>": 5}))
    with pytest.raises(ValueError, match=r"added_tokens\.json gives '<\|im_end\|>' the id .*expected a non-negative"):
        _load(folder)


def test_stop_token_id_from_each_tokenizer_file(tmp_path):
    """The decimal-string keys of `added_tokens_decoder` and the ints of tokenizer.json are read as ids."""
    folder = original_model_dir(tmp_path / "config", "tiny-internlm2", None)
    decoder = {"5": {"content": "<IMG_CONTEXT>"}, "598": {"content": "<|im_end|>"}}
    (folder / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": decoder}))
    assert _ids(_load(folder).generation_config) == ([2, 598], 2, 1)
    folder = original_model_dir(tmp_path / "fast", "tiny-internlm2", None)
    added = [{"id": 5, "content": "<IMG_CONTEXT>"}, {"id": 598, "content": "<|im_end|>"}]
    (folder / "tokenizer.json").write_text(json.dumps({"added_tokens": added}))
    assert _ids(_load(folder).generation_config) == ([2, 598], 2, 1)


# ---- a template this package does not know: loads as the original does --------------------------------------------


def test_unknown_template_with_tokenizer_files_loads_and_stops_at_the_llm_eos(tmp_path, caplog):
    """Before: `ValueError: Unknown conversation template` from `from_pretrained` whenever tokenizer files lay next to
    the weights; the original needs the template only in `chat()`, its plain `generate` stops at llm eos."""
    folder = original_model_dir(tmp_path / "model", "tiny-internlm2", "internlm2-dummy-prefix")
    config = json.loads((folder / "config.json").read_text())
    config["template"] = "my-finetune-template"
    (folder / "config.json").write_text(json.dumps(config))
    logger = logging.getLogger("transformers_internvl.modeling.tokenizer_files")
    logger.addHandler(caplog.handler)
    try:
        model = _load(folder, image_token_id=5)
    finally:
        logger.removeHandler(caplog.handler)
    assert _ids(model.generation_config) == (2, 2, 1)
    assert "my-finetune-template" in caplog.text


# ---- what held: the LLM families, caller values, save / reload, batched stops ----------------------------------------

# family -> (tokenizer-file tokens, llm_config overrides, expected eos, pad, bos). Stop-token ids are free ids of the
# tiny vocabularies; `<IMG_CONTEXT>` is 5 as in `test_llm_families.py`.
FAMILY_CASES = {
    "phi3": ({"<|end|>": 32007}, {}, ([32000, 32007], 32000, 1)),
    "llama_yi": ({"<|im_end|>": 7}, {}, (7, 0, 1)),  # Hermes-2: `<|im_end|>` is the llm eos, not added twice
    "llama3": ({"<|im_end|>": 110}, {"eos_token_id": [101, 108, 109]}, ([101, 108, 109, 110], None, 100)),
    "qwen3": ({"<|im_end|>": 110}, {"eos_token_id": None}, (110, None, 100)),
    "qwen3_tied": ({}, {"pad_token_id": 103}, (101, 103, 100)),
    "qwen3_moe": ({"<|im_end|>": 101}, {}, (101, None, 100)),
    "internlm3_in_internlm2": ({"<|im_end|>": 110}, {}, ([2, 110], 2, 1)),
}


@pytest.mark.parametrize("family", sorted(FAMILY_CASES))
def test_family_generation_ids(tmp_path, family):
    tokens, overrides, expected = FAMILY_CASES[family]
    folder, _ = original_folder(family, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["llm_config"].update(overrides)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "added_tokens.json").write_text(json.dumps({**tokens, "<IMG_CONTEXT>": 5}))
    model = _load(folder)
    assert _ids(model.generation_config) == expected
    model.save_pretrained(tmp_path / "saved")
    assert _ids(_load(tmp_path / "saved", image_token_id=5).generation_config) == expected


def test_caller_generation_config_values_win_and_unset_ones_come_from_llm_config(tmp_path):
    folder = original_model_dir(tmp_path / "model", "tiny-internlm2", "internlm2-dummy-prefix")
    passed = GenerationConfig(eos_token_id=[7, 8], pad_token_id=9, max_new_tokens=3)
    assert _ids(_load(folder, image_token_id=5, generation_config=passed).generation_config) == ([7, 8, 598], 9, 1)
    passed = GenerationConfig(max_new_tokens=3)
    assert _ids(_load(folder, image_token_id=5, generation_config=passed).generation_config) == ([2, 598], 2, 1)


def test_batched_left_padded_generate_pads_finished_rows_with_the_llm_pad(tmp_path):
    """Row 0 stops at llm eos `</s>` (2) at its first step; its later position holds the generation config's pad (llm
    pad, 2; set to 3 here to tell it from eos), as the original's language model pads; row 1 (left-padded) runs on."""
    folder = original_model_dir(tmp_path / "model", "tiny-internlm2", "internlm2-dummy-prefix")
    model = _load(folder, image_token_id=5).eval()
    model.generation_config.pad_token_id = 3  # tell llm pad apart from eos in the output
    input_ids = torch.tensor([[1, 40, 41, 42], [0, 1, 50, 51]])
    attention_mask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]])
    with torch.no_grad():
        free = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=3, do_sample=False)
        first = free[0, 4].item()
        assert first not in (2, 598) and free[1, 4].item() != first
        head = model.get_output_embeddings().weight
        head[2] = head[first] * 50  # id 2 wins where `first` did
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=3, do_sample=False)
    assert out[0, 4:].tolist() == [2, 3]  # stopped, then padded while row 1 ran on
    assert out[1, 4].item() not in (2, 3, 598) and out[1, -1].item() == 2  # row 1 ended at the llm eos one step later
