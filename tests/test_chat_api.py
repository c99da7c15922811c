"""`model.chat()` / `batch_chat()`: same prompts (token ids) as the original for the reference prompt cases, and the
same greedy tokens as calling `generate` directly."""

import json
import re

import pytest
import torch
from helpers import FIXTURES, INTERNLM2_DIR, QWEN2_DIR, TOKENIZERS
from transformers import AutoModelForImageTextToText, AutoTokenizer

import transformers_internvl  # noqa: F401

PROMPTS = json.loads((FIXTURES / "prompts" / "prompts.json").read_text())
COMPACT = re.compile(r"\[\[IMG_CONTEXT\*(\d+)\]\]")


def _expand(compact: str) -> str:
    return COMPACT.sub(lambda match: "<IMG_CONTEXT>" * int(match.group(1)), compact)


@pytest.fixture(scope="module")
def model():
    return AutoModelForImageTextToText.from_pretrained(QWEN2_DIR).eval()


@pytest.fixture(scope="module")
def tokenizer(qwen2_tokenizer):
    return qwen2_tokenizer


@pytest.fixture(scope="module")
def internlm2_model():
    return AutoModelForImageTextToText.from_pretrained(INTERNLM2_DIR).eval()


@pytest.fixture(scope="module")
def internlm2_tokenizer():
    return AutoTokenizer.from_pretrained(TOKENIZERS / "internlm2-dummy-prefix")


class _RecordingGenerate:
    """Wraps `model.generate` to record the prompt ids chat() hands to it."""

    def __init__(self, model):
        self.model = model
        self.original = model.generate
        self.calls = []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        return self.original(**kwargs)


def _cases(method, template="internvl2_5"):
    # chat() always uses the model's system message: the system-override cases belong to the processor tests.
    return [
        case
        for case in PROMPTS["cases"]
        if case["template"] == template and case["method"] == method and case.get("system_message_override") is None
    ]


@pytest.mark.parametrize("case", _cases("chat"), ids=lambda case: case["id"])
def test_chat_prompt_ids_and_tokens_match_the_original(case, model, tokenizer, monkeypatch):
    torch.manual_seed(0)
    num_tiles = sum(case["num_patches_list"])
    pixel_values = torch.randn(num_tiles, 3, 448, 448) if case["pixel_values_passed"] else None
    recorder = _RecordingGenerate(model)
    monkeypatch.setattr(model, "generate", recorder)
    history = [tuple(turn) for turn in case["history"]] if case["history"] is not None else None
    if pixel_values is not None and "<image>" not in case["prompt_before_expansion"]:
        # history=[] disables the automatic "<image>\n" prefix, so the prompt has no image tokens: the original
        # then fails in generate with a shape error; here the mismatch is a clear ValueError.
        with pytest.raises(ValueError, match="0 image tokens"):
            model.chat(tokenizer, pixel_values, case["question"], dict(max_new_tokens=1), history=history)
        return
    earlier = list(history or [])
    response, new_history = model.chat(
        tokenizer,
        pixel_values,
        case["question"],
        dict(max_new_tokens=4, do_sample=False),
        history=history,
        return_history=True,
        num_patches_list=case["num_patches_list"] or None,
    )
    expected_ids = tokenizer(_expand(case["prompt_expanded_compact"]), return_tensors="pt").input_ids
    sent = recorder.calls[0]
    assert torch.equal(sent["input_ids"], expected_ids)
    assert sent["eos_token_id"] == tokenizer.convert_tokens_to_ids(case["eos_token_string"])

    direct = recorder.original(
        input_ids=expected_ids,
        pixel_values=pixel_values,
        max_new_tokens=4,
        do_sample=False,
        eos_token_id=sent["eos_token_id"],
        pad_token_id=tokenizer.pad_token_id,
    )
    direct_text = tokenizer.decode(direct[0, expected_ids.shape[1] :], skip_special_tokens=True)
    assert response == direct_text.split("<|im_end|>")[0].strip()
    assert new_history[-1][1] == response
    assert new_history[:-1] == earlier
    if history is not None:  # the original's `history.append`: the caller's list grows and is the one returned
        assert new_history is history


@pytest.mark.parametrize("case", _cases("batch_chat"), ids=lambda case: case["id"])
def test_batch_chat_prompts_are_left_padded_originals(case, model, tokenizer, monkeypatch):
    torch.manual_seed(0)
    pixel_values = torch.randn(sum(case["num_patches_list"]), 3, 448, 448)
    recorder = _RecordingGenerate(model)
    monkeypatch.setattr(model, "generate", recorder)
    responses = model.batch_chat(
        tokenizer,
        pixel_values,
        case["questions"],
        dict(max_new_tokens=3, do_sample=False),
        num_patches_list=case["num_patches_list"],
    )
    prompts = [_expand(compact) for compact in case["prompts_expanded_compact"]]
    expected = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    sent = recorder.calls[0]
    assert torch.equal(sent["input_ids"], expected.input_ids)
    assert torch.equal(sent["attention_mask"], expected.attention_mask)
    assert len(responses) == len(case["questions"])

    # Each answer equals the sample run alone (left padding does not change greedy tokens).
    offset = 0
    for question, tiles, answer in zip(case["questions"], case["num_patches_list"], responses):
        alone = model.chat(
            tokenizer, pixel_values[offset : offset + tiles], question, dict(max_new_tokens=3, do_sample=False)
        )
        offset += tiles
        assert alone == answer


def test_chat_rejects_tile_count_mismatch(model, tokenizer):
    with pytest.raises(ValueError, match="num_patches_list"):
        model.chat(tokenizer, torch.zeros(2, 3, 448, 448), "hi", dict(max_new_tokens=1), num_patches_list=[1])


def test_chat_does_not_modify_the_callers_generation_config(model, tokenizer):
    config = dict(max_new_tokens=2, do_sample=False)
    model.chat(tokenizer, None, "Hello", config)
    assert config == dict(max_new_tokens=2, do_sample=False)


@pytest.mark.parametrize(
    "case",
    [
        c
        for c in _cases("chat", "internlm2-chat")
        if not c["pixel_values_passed"] or "<image>" in c["prompt_before_expansion"]
    ],
    ids=lambda case: case["id"],
)
def test_internlm2_chat_prompt_ids_match_the_original(case, internlm2_model, internlm2_tokenizer, monkeypatch):
    """The tiny InternLM2 checkpoint's template is `internlm2-chat`; its prompts go through the InternLM2 tokenizer
    (BOS first) exactly as the original tokenizes the reference prompt strings."""
    assert internlm2_model.config.template == "internlm2-chat"
    torch.manual_seed(0)
    pixel_values = torch.randn(sum(case["num_patches_list"]), 3, 448, 448) if case["pixel_values_passed"] else None
    recorder = _RecordingGenerate(internlm2_model)
    monkeypatch.setattr(internlm2_model, "generate", recorder)
    # The tiny model's vocabulary (1000) is larger than this tokenizer's (609): keep generation inside the tokenizer.
    generation_config = dict(max_new_tokens=3, do_sample=False, suppress_tokens=list(range(609, 1000)))
    history = [tuple(turn) for turn in case["history"]] if case["history"] is not None else None
    internlm2_model.chat(
        internlm2_tokenizer,
        pixel_values,
        case["question"],
        generation_config,
        history=history,
        num_patches_list=case["num_patches_list"] or None,
    )
    expected_ids = internlm2_tokenizer(_expand(case["prompt_expanded_compact"]), return_tensors="pt").input_ids
    assert expected_ids[0, 0].item() == internlm2_tokenizer.bos_token_id
    assert torch.equal(recorder.calls[0]["input_ids"], expected_ids)
    assert recorder.calls[0]["eos_token_id"] == internlm2_tokenizer.convert_tokens_to_ids("<|im_end|>")
