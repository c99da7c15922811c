"""Phi-3 sentencepiece tokenizers (InternVL2-4B, Mini-InternVL-Chat-4B-V1-5): `chat()` / `batch_chat()` and the
processor give the ids of the tokenizer the ORIGINAL loads (`use_fast=False`: transformers 4's slow
`LlamaTokenizer`, `legacy: false`), which prefixes the whole text with "▁" (`llama_slow_tokenization`). Expected ids:
`tests/fixtures/dropin_s9/phi3_tokenizer/expected.json`, made by the original with `make_phi3_tokenizer_s9.py`."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from parity_helpers import assert_processor_feeds_original_ids, tiny_phi3_chat_setup
from transformers import AutoModel, AutoTokenizer, LlamaTokenizer

import transformers_internvl.modeling.chat as chat_module
from transformers_internvl.llama_slow_tokenization import encode_as_original, original_llama_text
from transformers_internvl.modeling.chat_prompts import build_batch_chat_prompts, build_chat_prompt

HERE = Path(__file__).parent / "fixtures" / "dropin_s9"
EXPECTED = json.loads((HERE / "phi3_tokenizer" / "expected.json").read_text(encoding="utf-8"))
FOLDERS = sorted(EXPECTED["folders"])
IMAGE_TOKENS = ("<img>", "</img>", "<IMG_CONTEXT>")


@pytest.fixture(scope="module", params=FOLDERS)
def folder(request):
    return request.param, AutoTokenizer.from_pretrained(HERE / "phi3_tokenizer" / request.param)


def test_ids_match_the_original_slow_tokenizer(folder):
    name, tokenizer = folder
    assert isinstance(tokenizer, LlamaTokenizer) and tokenizer.legacy is False
    texts, expected = EXPECTED["strings"], EXPECTED["folders"][name]
    ids = encode_as_original(tokenizer, texts)["input_ids"]
    plain = encode_as_original(tokenizer, texts, add_special_tokens=False)["input_ids"]
    assert [i for i, (a, b) in enumerate(zip(ids, expected)) if a != b["input_ids"]] == []
    assert [i for i, (a, b) in enumerate(zip(plain, expected)) if a != b["input_ids_no_special"]] == []
    # transformers 5's own class alone differs at the start of the text (the reason for the prefix).
    phi3_prompt = texts.index(build_chat_prompt("phi3-chat", "Hello, who are you?"))
    assert tokenizer(texts[phi3_prompt]).input_ids != expected[phi3_prompt]["input_ids"]


def test_offsets_still_refer_to_the_text(folder):
    _, tokenizer = folder
    text = "<|user|>\nhi there"
    encoding = encode_as_original(tokenizer, [text], return_offsets_mapping=True, add_special_tokens=False)
    tokens, spans = tokenizer.convert_ids_to_tokens(encoding["input_ids"][0]), encoding["offset_mapping"][0]
    assert tokens[0] == "\u2581" and spans[0] == (0, 0)  # the added "▁" covers no character of the text
    assert spans[-1][1] == len(text) and "hi" in [text[start:end] for start, end in spans]
    tensors = encode_as_original(
        tokenizer, [text, "x"], return_offsets_mapping=True, add_special_tokens=False, padding=True, return_tensors="pt"
    )
    assert tensors["offset_mapping"][0].tolist() == [list(span) for span in spans]


def test_other_tokenizers_get_the_text_unchanged():
    qwen2 = AutoTokenizer.from_pretrained(Path(__file__).parent / "fixtures" / "tokenizers" / "qwen2-tiny")
    assert original_llama_text(qwen2, "<|im_start|>hi") == "<|im_start|>hi"


@pytest.fixture(scope="module")
def phi3_model():
    model_dir = HERE / "mini-4b-phi3-v1"
    return model_dir


def test_chat_and_batch_chat_feed_the_original_ids(folder, phi3_model, monkeypatch):
    name, tokenizer = folder
    model = AutoModel.from_pretrained(
        phi3_model, dtype=torch.float32, image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    )
    fed = []

    def no_generation(model, input_ids, *args, **kwargs):
        fed.append(input_ids)
        return input_ids

    monkeypatch.setattr(chat_module, "generate_turn", no_generation)
    texts, expected = EXPECTED["strings"], EXPECTED["folders"][name]
    model.chat(tokenizer, None, "Hello, who are you?", dict(max_new_tokens=1))
    index = texts.index(build_chat_prompt("phi3-chat", "Hello, who are you?"))
    assert fed[-1][0].tolist() == expected[index]["input_ids"]
    model.system_message = ""
    model.chat(tokenizer, None, "  spaced   question\t\n", dict(max_new_tokens=1))
    index = texts.index(build_chat_prompt("phi3-chat", "  spaced   question\t\n", system_message=""))
    assert fed[-1][0].tolist() == expected[index]["input_ids"]
    del model.system_message
    prompts = build_batch_chat_prompts("phi3-chat", ["Hello, who are you?"], num_tiles_list=None)
    model.batch_chat(tokenizer, None, ["Hello, who are you?"], dict(max_new_tokens=1))
    assert fed[-1][0].tolist() == expected[texts.index(prompts[0])]["input_ids"]


def test_processor_feeds_the_original_ids(folder, tmp_path):
    name, _ = folder
    directory = tmp_path / name
    shutil.copytree(HERE / "phi3_tokenizer" / name, directory)
    shutil.copy(HERE / "mini-4b-phi3-v1" / "config.json", directory / "config.json")
    assert_processor_feeds_original_ids(directory, EXPECTED["strings"], EXPECTED["folders"][name])


LABELS = json.loads((HERE / "phi3_tokenizer" / "labels.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("case", sorted(LABELS["cases"]))
def test_finetuning_labels_equal_the_original_preprocess_phi3(folder, case):
    """`training.labels.tokenize_conversation` with the Phi-3 tokenizer: the ids and labels of the original's
    `preprocess_phi3` run with the slow tokenizer the original training script loads."""
    from transformers_internvl.training.labels import tokenize_conversation

    name, tokenizer = folder
    record = LABELS["cases"][case]
    expected = record[name]
    sample = tokenize_conversation(record["conversations"], tokenizer, "phi3-chat", record["num_image_tokens"])
    assert sample.input_ids == expected["input_ids"]
    assert sample.labels == expected["labels"]


CHAT = json.loads((HERE / "phi3_tokenizer" / "chat.json").read_text(encoding="utf-8"))


def test_chat_answers_equal_the_original_with_the_slow_tokenizer(folder, monkeypatch):
    """End to end on `mini-4b-phi3-v1` with these tokenizers: prompt ids and answers of the original's `chat` /
    `batch_chat` (`make_phi3_chat_s9.py`)."""
    name, tokenizer = folder
    expected = CHAT[name]
    model, pixel_values, config, fed = tiny_phi3_chat_setup(HERE / "mini-4b-phi3-v1", tokenizer, monkeypatch)
    answer1, history = model.chat(
        tokenizer, pixel_values, "<image>\nWhat is in the picture?", dict(config), return_history=True
    )
    answer2 = model.chat(tokenizer, pixel_values, "And the colours?", dict(config), history=history)
    text = model.chat(tokenizer, None, "Hello, who are you?", dict(config))
    batch = model.batch_chat(
        tokenizer,
        torch.cat([pixel_values, pixel_values]),
        ["Describe this image.", "Is there a circle?"],
        dict(config),
        num_patches_list=[pixel_values.shape[0]] * 2,
    )
    original_prompts = [row for call in expected["prompt_ids"] for row in call]
    unpadded = [[token for token in row if token != tokenizer.pad_token_id] for row in fed]
    assert unpadded == [[token for token in row if token != tokenizer.pad_token_id] for row in original_prompts]
    runs = expected["runs"]
    assert [answer1, answer2] == runs["image_chat"]["answers"]
    assert [text] == runs["text_chat"]["answers"]
    assert batch == runs["batch_chat"]["answers"]


DECODE = json.loads((HERE / "phi3_tokenizer" / "decode.json").read_text(encoding="utf-8"))


def test_decode_equals_the_original_slow_tokenizer(folder):
    """560 id lists (`make_phi3_decode_s9.py`): byte-fallback runs cut anywhere, chat / image / special tokens."""
    from transformers_internvl.llama_slow_tokenization import decode_as_original

    name, tokenizer = folder
    for mode, skip in (("skip", True), ("keep", False)):
        decoded = [decode_as_original(tokenizer, ids, skip_special_tokens=skip) for ids in DECODE["id_lists"]]
        assert [i for i, text in enumerate(decoded) if text != DECODE[name][mode][i]] == []
    # transformers 5's own decode differs on most of them (the reason for `decode_as_original`)
    own = [tokenizer.decode(ids, skip_special_tokens=True) for ids in DECODE["id_lists"]]
    assert sum(text != expected for text, expected in zip(own, DECODE[name]["skip"])) > 100


def test_a_config_without_legacy_gets_the_legacy_ids(tmp_path):
    """Without `legacy` in tokenizer_config.json transformers 4's slow class ran in legacy mode (sentencepiece's "▁"
    before every piece between added tokens): such tokenizers get the legacy text, not the non-legacy prefix
    (`tests/test_legacy_tokenizer_s9.py` checks the ids against the original)."""
    directory = tmp_path / "no-legacy"
    shutil.copytree(HERE / "phi3_tokenizer" / "phi3-nostrip", directory)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    del config["legacy"]
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert original_llama_text(tokenizer, "<|user|>\nhi") == "<|user|>\u2581\nhi"
