"""Plain `generate` on an original checkpoint uses the generation ids the original's `generate` uses.

The original `InternVLChatModel.generate` passes `generation_config=None` on to `self.language_model.generate`
(`internvl_chat/internvl/model/internvl_chat/modeling_internvl_chat.py`), so it stops at `llm_config.eos_token_id` and
pads finished rows with `llm_config.pad_token_id`; `chat()` passes the template's end token instead. This package
stops at both (the template's end token is read from the tokenizer files next to the weights).
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import original_model_dir
from transformers import AutoModelForImageTextToText

import transformers_internvl  # noqa: F401  (registers the classes)

# (fixture model, tokenizer copied next to it, expected eos, pad, bos); ids from the fixtures' `llm_config` and
# tokenizer files (`tests/fixtures/README.md`): Qwen2 `<|im_end|>` 992 is also its llm eos; InternLM2 `</s>` 2 and
# the dummy-prefix tokenizer's `<|im_end|>` 598.
CASES = [
    ("tiny-qwen2", None, 992, 990, 990),
    ("tiny-qwen2", "qwen2-tiny", 992, 990, 990),
    ("tiny-internlm2", None, 2, 2, 1),
    ("tiny-internlm2", "internlm2-dummy-prefix", [2, 598], 2, 1),
]


@pytest.mark.parametrize(("fixture", "tokenizer", "eos", "pad", "bos"), CASES)
def test_generation_ids_come_from_llm_config_plus_the_template_stop(tmp_path, fixture, tokenizer, eos, pad, bos):
    folder = original_model_dir(tmp_path / "model", fixture, tokenizer)
    config = AutoModelForImageTextToText.from_pretrained(folder, image_token_id=5).generation_config
    assert (config.eos_token_id, config.pad_token_id, config.bos_token_id) == (eos, pad, bos)


def test_ids_set_by_the_generation_config_file_are_kept(tmp_path):
    folder = original_model_dir(tmp_path / "model", "tiny-internlm2", "internlm2-dummy-prefix")
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": 7, "pad_token_id": 8}))
    config = AutoModelForImageTextToText.from_pretrained(folder, image_token_id=5).generation_config
    assert (config.eos_token_id, config.pad_token_id, config.bos_token_id) == ([7, 598], 8, 1)


def test_plain_generate_stops_at_the_llm_eos(tmp_path):
    """InternLM2: `</s>` (2, llm eos) ends generation although the template's end token is `<|im_end|>` (598)."""
    folder = original_model_dir(tmp_path / "model", "tiny-internlm2", "internlm2-dummy-prefix")
    model = AutoModelForImageTextToText.from_pretrained(folder, image_token_id=5).eval()
    input_ids = torch.tensor([[1, 40, 41, 42]])
    with torch.no_grad():
        free = model.generate(input_ids=input_ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)[:, 4:]
        first = free[0, 0].item()
        assert first not in (2, 598)
        head = model.get_output_embeddings().weight
        head[2] = head[first] * 50  # id 2 now wins wherever `first` did
    out = model.generate(input_ids=input_ids, max_new_tokens=4, do_sample=False)[:, 4:]
    assert out.tolist() == [[2]]  # stopped at the llm eos instead of running to max_new_tokens
