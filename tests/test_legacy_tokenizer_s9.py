"""Sentencepiece `LlamaTokenizer` folders whose tokenizer_config.json writes `legacy: true` or has no `legacy` key:
transformers 4.47.1's slow class, which the original loads (`use_fast=False`), ran them in legacy mode (sentencepiece's
dummy "▁" before every piece between added tokens). `chat()` / `batch_chat()`, the processor and the fine-tuning labels
give its ids and decoded answers (`llama_slow_tokenization`). Expected values: `tests/fixtures/legacy_tokenizer_s9/`
(its README), made by the original code."""

import gzip
import json
import shutil
from pathlib import Path

import pytest
import torch
from parity_helpers import assert_processor_feeds_original_ids, tiny_phi3_chat_setup
from transformers import AutoTokenizer, LlamaTokenizer

from transformers_internvl.llama_slow_tokenization import (
    decode_as_original,
    encode_as_original,
    original_llama_text,
    slow_llama_mode,
)
from transformers_internvl.modeling.chat_prompts import build_chat_prompt

FIXTURES = Path(__file__).parent / "fixtures"
HERE = FIXTURES / "legacy_tokenizer_s9"
EXPECTED = json.loads(gzip.decompress((HERE / "expected.json.gz").read_bytes()))
CHAT = json.loads((HERE / "chat.json").read_text(encoding="utf-8"))
FOLDERS = sorted(EXPECTED["folders"])
PHI3_MODEL = FIXTURES / "dropin_s9" / "mini-4b-phi3-v1"
IMAGE_TOKENS = ("<img>", "</img>", "<IMG_CONTEXT>")


@pytest.fixture(scope="module", params=FOLDERS)
def folder(request):
    return request.param, AutoTokenizer.from_pretrained(HERE / request.param)


def test_ids_equal_the_original_slow_legacy_tokenizer(folder):
    name, tokenizer = folder
    assert isinstance(tokenizer, LlamaTokenizer) and slow_llama_mode(tokenizer) == "legacy"
    texts, expected = EXPECTED["strings"], EXPECTED["folders"][name]
    assert len(texts) > 500
    ids = encode_as_original(tokenizer, texts)["input_ids"]
    plain = encode_as_original(tokenizer, texts, add_special_tokens=False)["input_ids"]
    assert [i for i, (row, record) in enumerate(zip(ids, expected)) if row != record["input_ids"]] == []
    assert [i for i, (row, record) in enumerate(zip(plain, expected)) if row != record["input_ids_no_special"]] == []
    # transformers 5's class alone gives other ids on hundreds of them (the reason for the legacy text)
    own = tokenizer(texts)["input_ids"]
    assert sum(row != record["input_ids"] for row, record in zip(own, expected)) > 200


# Pieces of transformers 4.47.1's slow `LlamaTokenizer` (`tokenize`) on the folder (transformers 5 alone: "▁and",
# "<0x0A>"... without the dummy "▁" after the added token).
@pytest.mark.parametrize(
    ("name", "text", "pieces"),
    [
        ("phi3-nostrip-no-key", "</img> and", ["</img>", "\u2581", "\u2581and"]),  # the finetune_heldout_s9 case
        ("phi3-nostrip-no-key", "<|user|>\nhi", ["<|user|>", "\u2581", "\n", "hi"]),
        ("phi3-rstrip-no-key", "<|user|>\nhi", ["<|user|>", "\u2581", "hi"]),  # `rstrip` eats the newline
        ("phi3-nostrip-no-key", " leading", ["\u2581", "\u2581leading"]),
        ("phi3-nostrip-no-key", "x", ["\u2581", "x"]),  # the same as transformers 5's
    ],
)
def test_each_piece_after_an_added_token_gets_the_dummy_prefix(name, text, pieces):
    tokenizer = AutoTokenizer.from_pretrained(HERE / name)
    ids = encode_as_original(tokenizer, [text], add_special_tokens=False)["input_ids"][0]
    assert ids == tokenizer.convert_tokens_to_ids(pieces)
    assert (tokenizer(text, add_special_tokens=False)["input_ids"] == ids) == (text == "x")


def test_decode_equals_the_original_slow_legacy_tokenizer(folder):
    """450 id lists per folder: encoded strings and slices of them, random ids with byte pieces and added tokens."""
    name, tokenizer = folder
    records = EXPECTED["decode"][name]
    for mode, skip in (("skip", True), ("keep", False)):
        decoded = [decode_as_original(tokenizer, ids, skip_special_tokens=skip) for ids in records["id_lists"]]
        assert [i for i, text in enumerate(decoded) if text != records[mode][i]] == []
    own = [tokenizer.decode(ids, skip_special_tokens=True) for ids in records["id_lists"]]
    assert sum(text != expected for text, expected in zip(own, records["skip"])) > 100


def test_offsets_still_refer_to_the_text():
    tokenizer = AutoTokenizer.from_pretrained(HERE / "phi3-rstrip-no-key")
    text = "<|user|>  \nhi</img> and x"  # `<|user|>` strips the whitespace on its right
    encoding = encode_as_original(tokenizer, [text], return_offsets_mapping=True, add_special_tokens=False)
    tokens = tokenizer.convert_ids_to_tokens(encoding["input_ids"][0])
    spans = [tuple(span) for span in encoding["offset_mapping"][0]]
    # the slow class's pieces (transformers 4.47.1); each dummy "▁" covers no character of the text
    assert tokens == ["<|user|>", "\u2581", "hi", "</img>", "\u2581", "\u2581and", "\u2581", "x"]
    assert spans == [(0, 8), (11, 11), (11, 13), (13, 19), (19, 19), (19, 23), (23, 24), (24, 25)]
    tensors = encode_as_original(
        tokenizer, [text, "x"], return_offsets_mapping=True, add_special_tokens=False, padding=True, return_tensors="pt"
    )
    assert tensors["offset_mapping"][0].tolist() == [list(span) for span in spans]
    assert tensors["offset_mapping"][1].tolist() == [[0, 0], [0, 1]] + [[0, 0]] * 6  # "▁", "x", padding


def test_processor_feeds_the_original_ids(folder, tmp_path):
    name, _ = folder
    directory = tmp_path / name
    shutil.copytree(HERE / name, directory)
    shutil.copy(PHI3_MODEL / "config.json", directory / "config.json")
    assert_processor_feeds_original_ids(directory, EXPECTED["strings"], EXPECTED["folders"][name])


@pytest.mark.parametrize("template", ["phi3-chat", "Hermes-2", "internvl2_5", "internlm2-chat", "internvl_zh"])
def test_chat_prompts_of_every_template(template):
    tokenizer = AutoTokenizer.from_pretrained(HERE / "hermes-no-key")
    texts, expected = EXPECTED["strings"], EXPECTED["folders"]["hermes-no-key"]
    prompt = build_chat_prompt(template, "Hello, who are you?")
    ids = tokenizer(original_llama_text(tokenizer, prompt))["input_ids"]
    assert ids == expected[texts.index(prompt)]["input_ids"]


PHI3_FOLDERS = [
    pytest.param(name, marks=[] if name == "phi3-rstrip-legacy-true" else [pytest.mark.slow]) for name in sorted(CHAT)
]


@pytest.mark.parametrize("name", PHI3_FOLDERS)
def test_chat_answers_and_prompts_equal_the_original(name, monkeypatch):
    """End to end on `mini-4b-phi3-v1` (`make_legacy_chat_s9.py`): every prompt id `chat` / `batch_chat` fed, and
    the decoded answers, equal the original's with the slow legacy tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(HERE / name)
    expected = CHAT[name]
    model, pixel_values, config, fed = tiny_phi3_chat_setup(PHI3_MODEL, tokenizer, monkeypatch)
    answer1, history = model.chat(
        tokenizer, pixel_values, "<image>\nWhat is in the picture?", dict(config), return_history=True
    )
    answer2 = model.chat(tokenizer, pixel_values, "And the colours?", dict(config), history=history)
    text = model.chat(tokenizer, None, "Hello, who are you?", dict(config))
    model.system_message = ""
    spaced = model.chat(tokenizer, None, "  spaced \u2581question\t\n ", dict(config))
    del model.system_message
    batch = model.batch_chat(
        tokenizer,
        torch.cat([pixel_values, pixel_values]),
        ["Describe this image.", " Is there a circle?"],
        dict(config),
        num_patches_list=[pixel_values.shape[0]] * 2,
    )
    pad = tokenizer.pad_token_id
    original_prompts = [[token for token in row if token != pad] for call in expected["prompt_ids"] for row in call]
    assert [[token for token in row if token != pad] for row in fed] == original_prompts
    runs = expected["runs"]
    assert [answer1, answer2] == runs["image_chat"]["answers"]
    assert [text] == runs["text_chat"]["answers"]
    assert [spaced] == runs["spaced_chat"]["answers"]
    assert batch == runs["batch_chat"]["answers"]


def test_explicit_legacy_false_in_the_file_keeps_the_non_legacy_ids(tmp_path):
    """`legacy: false` written into a legacy folder's tokenizer_config.json: the non-legacy text (one "▁" before the
    whole text), as transformers 4 then ran."""
    directory = tmp_path / "non-legacy"
    shutil.copytree(HERE / "phi3-nostrip-no-key", directory)
    path = directory / "tokenizer_config.json"
    path.write_text(json.dumps(dict(json.loads(path.read_text()), legacy=False)))
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert slow_llama_mode(tokenizer) == "non_legacy"
    assert original_llama_text(tokenizer, "<|user|>\nhi</img> and") == "\u2581<|user|>\nhi</img> and"


def test_a_runtime_special_token_counts_as_special_as_in_transformers_4():
    """transformers 4's `add_tokens(..., special_tokens=True)` of a new token (the original training script does it
    for InternVL's tokens on a plain LLM tokenizer) makes it one of `all_special_tokens`, so the non-legacy prefix is
    dropped before it; transformers 5 does not list it."""
    tokenizer = LlamaTokenizer.from_pretrained(HERE / "phi3-nostrip-no-key", legacy=False)
    tokenizer.__dict__["_internvl_slow_mode"] = "non_legacy"  # as a `legacy: false` file would give
    tokenizer.add_tokens(["<new_special>"], special_tokens=True)
    assert "<new_special>" not in tokenizer.all_special_tokens
    assert original_llama_text(tokenizer, "<new_special>hi") == "<new_special>hi"
    assert original_llama_text(tokenizer, "<|user|>hi") == "\u2581<|user|>hi"
