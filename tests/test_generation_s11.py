"""Session-11 held-out checks of generation (issue 5) and the multi-turn chat cache (issue 13).

Against the ORIGINAL implementation (`fixtures/generation_s11/`, see its README; the cases are in
`generation_s11_cases.py`, shared by the generator and this test): multi-turn `chat` whose history is edited, whose
pixel values or tile counts change, whose system message changes between turns, beam search / sampling / length
limits / eos lists / penalties over several turns, per-family single-turn settings and `batch_chat` settings, on
Qwen2, Llama, Phi-3 and InternLM2 checkpoints. The original re-ran every turn on a fresh model; here ONE model per
checkpoint serves every turn and case, so the chat key/value cache is reused wherever it may be. Answers, histories
and the generated token ids must be identical.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

import transformers_internvl  # noqa: F401
from transformers_internvl.modeling import chat_cache

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "generation_s11"))
from generation_s11_cases import CHECKPOINTS, FIXTURES, cases, load_expected, run_case, tile_size  # noqa: E402

EXPECTED = load_expected()
_MODELS: dict[str, tuple] = {}


def _checkpoint(name: str):
    if name not in _MODELS:
        torch.set_num_threads(1)
        folder = FIXTURES / CHECKPOINTS[name][0]
        config = json.loads((folder / "config.json").read_text())
        model = AutoModel.from_pretrained(folder).eval()
        _MODELS[name] = (model, AutoTokenizer.from_pretrained(folder), tile_size(config))
    return _MODELS[name]


def _set_system(model, value):
    if value is None:
        del model.system_message
    else:
        model.system_message = value


def _run(name: str, case: dict) -> tuple[dict, list]:
    model, tokenizer, size = _checkpoint(name)
    captured: list = []
    reused: list = []
    generate = type(model).generate
    reusing = chat_cache.generate_reusing_cache

    def recording_generate(*args, **kwargs):  # new tokens only, as the original's generate returns them
        output = generate(model, *args, **kwargs)
        captured.append(output[:, kwargs["input_ids"].shape[1] :].tolist())
        return output

    def counting_reuse(*args, **kwargs):
        state = model.__dict__.get(chat_cache._STATE_ATTRIBUTE)
        reused.append(state is not None)
        return reusing(*args, **kwargs)

    model.generate = recording_generate
    chat_cache.generate_reusing_cache = counting_reuse
    try:
        result = run_case(torch, model, tokenizer, case, size, lambda: model, _set_system)
    finally:
        del model.generate
        del model.system_message
        chat_cache.generate_reusing_cache = reusing
    result["generate_calls"] = captured
    return result, reused


PARAMS = [pytest.param(name, case, id=f"{name}-{case['name']}") for name in CHECKPOINTS for case in cases()]


@pytest.mark.parametrize("name, case", PARAMS)
def test_answers_and_ids_match_the_original(name, case):
    expected = EXPECTED[name]["cases"][case["name"]]
    result, reused = _run(name, case)
    assert result == expected
    if case["kind"] == "conversation" and len(case["turns"]) > 1 and case["name"] != "conv_beams_turns":
        assert any(reused[1:])  # later turns went through the kept cache (beam search never does)
