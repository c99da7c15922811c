"""Held-out tokenizer parity: InternLM2 (fast and sentencepiece classes) and Qwen2 against the ORIGINAL tokenizers.

Expectations are in `fixtures/tokenizer_heldout_s6/expected.json`, written by `make_expected.py` there, which ran the
original remote-code `InternLM2Tokenizer` (OpenGVLab/InternVL @ 2410d1d) and transformers 4.47.1's `Qwen2Tokenizer`
on strings that no other test uses: random unicode (CJK, emoji, combining marks, RTL, control characters, NUL),
whitespace runs, special tokens glued to text, chat prompts of four original templates with the `<image>`
expansion of the original `chat()`, byte-fallback characters and long strings. Also: random id lists for decoding,
padded/truncated batches, and a folder saved by the original after `add_tokens`.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import shutil
from functools import cache
from pathlib import Path

import pytest
from helpers import FIXTURES, INTERNLM2_DIR, TOKENIZERS
from PIL import Image
from transformers import AutoTokenizer

import transformers_internvl  # noqa: F401  (registers the Auto classes)
from transformers_internvl import InternLM2Tokenizer, InternLM2TokenizerFast
from transformers_internvl.processing.processing_internvl import InternVLProcessor
from transformers_internvl.processing.tokenization_internlm2 import clean_up_tokenization

HERE = FIXTURES / "tokenizer_heldout_s6"
EXPECTED = json.loads((HERE / "expected.json").read_text(encoding="utf-8"))
INTERNLM2 = ["internlm2-dummy-prefix", "internlm2-no-dummy-prefix"]
# (folder, class to load): "auto" is AutoTokenizer on the original-layout folder (what users get).
LOADERS = [(folder, kind) for folder in INTERNLM2 for kind in ("auto", "sentencepiece")] + [("qwen2-tiny", "auto")]
DECODE_KEYS = ("decode", "decode_skip_special", "decode_clean_up", "decode_no_spaces_between_special")


@cache
def load(folder: str, kind: str):
    if kind == "sentencepiece":
        return InternLM2Tokenizer.from_pretrained(TOKENIZERS / folder)
    return AutoTokenizer.from_pretrained(TOKENIZERS / folder)


def _decodes(tokenizer, ids: list[int]) -> dict:
    return {
        "decode": tokenizer.decode(ids),
        "decode_skip_special": tokenizer.decode(ids, skip_special_tokens=True),
        "decode_clean_up": tokenizer.decode(ids, clean_up_tokenization_spaces=True),
        "decode_no_spaces_between_special": tokenizer.decode(ids, spaces_between_special_tokens=False),
    }


def describe(tokenizer, text: str) -> dict:
    """The same fields, computed the same way, as `make_expected.describe` (run on the original)."""
    ids = tokenizer(text).input_ids
    return {
        "input_ids": ids,
        "input_ids_no_special": tokenizer(text, add_special_tokens=False).input_ids,
        "tokens": tokenizer.convert_ids_to_tokens(ids),
        **_decodes(tokenizer, ids),
    }


def _qwen2_kept_difference(folder: str, expected: dict) -> dict:
    """transformers 5 ignores `clean_up_tokenization_spaces=True` for BPE tokenizers such as Qwen2 (it warns and
    decodes as with False); transformers 4.47.1, which the original ran under, applied the clean-up. Only an explicit
    `True` is affected (Qwen2 checkpoints store False), so the expected value is the original's plain decode and
    the original's clean-up output is checked to be exactly `clean_up_tokenization` of it."""
    if folder != "qwen2-tiny":
        return expected
    assert expected["decode_clean_up"] == clean_up_tokenization(expected["decode"])
    return {**expected, "decode_clean_up": expected["decode"]}


def _mismatches(got: dict, expected: dict, name: str) -> list:
    return [(name, key, expected[key], got[key]) for key in expected if got[key] != expected[key]]


@pytest.mark.parametrize("folder, kind", LOADERS)
def test_held_out_strings_match_the_original(folder, kind):
    tokenizer, record = load(folder, kind), EXPECTED["folders"][folder]
    assert len(EXPECTED["strings"]) == len(record["strings"]) >= 240
    mismatches = []
    for case, expected in zip(EXPECTED["strings"], record["strings"]):
        expected = _qwen2_kept_difference(folder, expected)
        mismatches += _mismatches(describe(tokenizer, case["text"]), expected, case["name"])
    assert not mismatches, mismatches[:5]


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, ensure_ascii=False).encode("utf-8")).hexdigest()


@pytest.mark.parametrize("folder, kind", LOADERS)
def test_long_strings_match_the_original(folder, kind):
    tokenizer, record = load(folder, kind), EXPECTED["folders"][folder]
    for case, expected in zip(EXPECTED["long_strings"], record["long_strings"]):
        got = describe(tokenizer, case["text"])
        if folder == "qwen2-tiny":  # see _qwen2_kept_difference; compare the clean-up against the plain decode
            got["decode_clean_up"] = clean_up_tokenization(got["decode"])
        summary = {key: {"len": len(value), "sha256": _digest(value)} for key, value in got.items()}
        assert summary == expected, case["name"]


@pytest.mark.parametrize("folder, kind", LOADERS)
def test_random_id_lists_decode_like_the_original(folder, kind):
    tokenizer, record = load(folder, kind), EXPECTED["folders"][folder]
    mismatches = []
    for expected in record["decode_id_lists"]:
        expected = _qwen2_kept_difference(folder, expected)
        got = {"ids": expected["ids"], "tokens": tokenizer.convert_ids_to_tokens(expected["ids"])}
        mismatches += _mismatches({**got, **_decodes(tokenizer, expected["ids"])}, expected, str(expected["ids"]))
    assert not mismatches, mismatches[:5]
    singles = [tokenizer.convert_ids_to_tokens(i) for i in (0, 1, 2, len(tokenizer) - 1)]
    assert singles == record["convert_ids_to_tokens_int"]


@pytest.mark.parametrize("folder, kind", LOADERS)
def test_padded_and_truncated_batches_match_the_original(folder, kind):
    tokenizer = load(folder, kind)
    texts = [
        ["", "<|im_start|>user\n你好<|im_end|>", " a  b\tc"],
        ["<img><IMG_CONTEXT><IMG_CONTEXT></img>\nWhat?", "x", "Hello , world ."],
    ]
    for expected in EXPECTED["folders"][folder]["batches"]:
        saved_side = tokenizer.truncation_side
        tokenizer.truncation_side = expected["side"]
        try:
            encoded = tokenizer(texts[expected["group"]], padding_side=expected["side"], **expected["options"])
        finally:
            tokenizer.truncation_side = saved_side
        assert encoded.input_ids == expected["input_ids"], expected
        assert encoded.attention_mask == expected["attention_mask"], expected
        assert tokenizer.batch_decode(encoded.input_ids) == expected["batch_decode"]
        assert (
            tokenizer.batch_decode(encoded.input_ids, skip_special_tokens=True)
            == (expected["batch_decode_skip_special"])
        )


# ---------------------------------------------------------------------------------------------------------------
# chat prompts: the tokenizer on the original's expanded prompt, and the processor's own expansion


def _expand(prompt: str, num_tiles: list[int]) -> str:
    """The original `chat()`: each `<image>` in turn becomes `<img>` + `<IMG_CONTEXT>` x 256 x tiles + `</img>`."""
    for tiles in num_tiles:
        image_tokens = "<img>" + "<IMG_CONTEXT>" * EXPECTED["num_image_token"] * tiles + "</img>"
        prompt = prompt.replace("<image>", image_tokens, 1)
    return prompt


def _run_length(ids: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for token_id in ids:
        if runs and runs[-1][0] == token_id:
            runs[-1][1] += 1
        else:
            runs.append([token_id, 1])
    return runs


def _chat_params() -> list:
    return [
        pytest.param(folder, kind, index, id=f"{folder}-{kind}-{case['name']}")
        for folder, kind in LOADERS
        for index, case in enumerate(EXPECTED["chat_prompts"])
    ]


@pytest.mark.parametrize("folder, kind, index", _chat_params())
def test_expanded_chat_prompt_ids_match_the_original(folder, kind, index):
    tokenizer, case = load(folder, kind), EXPECTED["chat_prompts"][index]
    expected = EXPECTED["folders"][folder]["chat_prompts"][index]["input_ids_rle"]
    assert _run_length(tokenizer(_expand(case["prompt"], case["num_tiles"])).input_ids) == expected


# Images whose tile count follows from the tiling rule alone: a square image is one 1x1 tile (no thumbnail for a
# single tile); a 2:1 image is a 2x1 grid, plus the thumbnail when `use_thumbnail`.
IMAGES_FOR_TILES = {1: ((448, 448), True), 2: ((896, 448), False), 3: ((896, 448), True)}


@pytest.mark.parametrize("folder, kind, index", _chat_params())
def test_processor_expansion_gives_the_original_ids(folder, kind, index):
    case = EXPECTED["chat_prompts"][index]
    expected = EXPECTED["folders"][folder]["chat_prompts"][index]["input_ids_rle"]
    thumbnails = {IMAGES_FOR_TILES[tiles][1] for tiles in case["num_tiles"]}
    processor = InternVLProcessor(tokenizer=load(folder, kind))
    images = [Image.new("RGB", IMAGES_FOR_TILES[tiles][0], "gray") for tiles in case["num_tiles"]]
    outputs = processor(
        text=case["prompt"],
        images=images or None,
        use_thumbnail=thumbnails.pop() if thumbnails else True,
        max_dynamic_patch=12,
    )
    assert outputs.get("num_tiles", []) == case["num_tiles"]
    assert _run_length(outputs["input_ids"][0]) == expected


# ---------------------------------------------------------------------------------------------------------------
# folders: saved by the original after add_tokens, save/load round trips, original-layout checkpoint folders


@pytest.fixture
def no_remote_code(monkeypatch):
    """Fail the test if transformers asks whether to trust remote code, or tries to import it."""

    def refuse(*args, **kwargs):
        raise AssertionError("remote code was requested")

    from transformers import dynamic_module_utils
    from transformers.models.auto import tokenization_auto

    for module in (dynamic_module_utils, tokenization_auto):
        monkeypatch.setattr(module, "get_class_from_dynamic_module", refuse, raising=False)
    monkeypatch.setattr(builtins, "input", refuse)


def _saved_by_original(tmp_path: Path, folder: str) -> Path:
    """The folder the original `save_pretrained` wrote (its `tokenizer.model` is the source folder's)."""
    target = tmp_path / f"saved-{folder}"
    shutil.copytree(HERE / EXPECTED["folders"][folder]["saved_by_original"]["folder"], target)
    shutil.copy(TOKENIZERS / folder / "tokenizer.model", target / "tokenizer.model")
    return target


@pytest.mark.parametrize("folder", INTERNLM2)
@pytest.mark.parametrize("loader", [AutoTokenizer, InternLM2Tokenizer])
def test_folder_saved_by_the_original_after_add_tokens(tmp_path, folder, loader, no_remote_code):
    record = EXPECTED["folders"][folder]["saved_by_original"]
    directory = _saved_by_original(tmp_path, folder)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    assert config["auto_map"]["AutoTokenizer"][0] == "tokenization_internlm2.InternLM2Tokenizer"
    tokenizer = loader.from_pretrained(directory)
    assert len(tokenizer) == record["len"]
    assert {token: tokenizer.convert_tokens_to_ids(token) for token in record["added_tokens"]} == (
        record["added_tokens"]
    )
    for case in record["cases"]:
        expected = {key: value for key, value in case.items() if key != "text"}
        assert not _mismatches(describe(tokenizer, case["text"]), expected, case["text"])


def _check_against_original(tokenizer, folder: str) -> None:
    for case, expected in zip(EXPECTED["strings"], EXPECTED["folders"][folder]["strings"]):
        assert not _mismatches(describe(tokenizer, case["text"]), expected, case["name"])


@pytest.mark.parametrize("folder", INTERNLM2)
@pytest.mark.parametrize(
    "saver, loader",
    [
        (InternLM2Tokenizer, AutoTokenizer),  # sentencepiece class saved, fast class built from it
        (InternLM2Tokenizer, InternLM2TokenizerFast),
        (InternLM2TokenizerFast, InternLM2Tokenizer),
        (InternLM2TokenizerFast, AutoTokenizer),
    ],
)
def test_save_and_reload_keeps_original_behaviour(tmp_path, folder, saver, loader):
    saver.from_pretrained(TOKENIZERS / folder).save_pretrained(tmp_path)
    reloaded = loader.from_pretrained(tmp_path)
    if loader is AutoTokenizer:
        assert type(reloaded) is InternLM2TokenizerFast
    _check_against_original(reloaded, folder)


@pytest.mark.parametrize("folder", INTERNLM2)
def test_saved_by_the_original_then_saved_again_round_trips(tmp_path, folder):
    record = EXPECTED["folders"][folder]["saved_by_original"]
    AutoTokenizer.from_pretrained(_saved_by_original(tmp_path, folder)).save_pretrained(tmp_path / "again")
    for loader in (AutoTokenizer, InternLM2Tokenizer):
        tokenizer = loader.from_pretrained(tmp_path / "again")
        assert len(tokenizer) == record["len"]
        for case in record["cases"]:
            expected = {key: value for key, value in case.items() if key != "text"}
            assert not _mismatches(describe(tokenizer, case["text"]), expected, case["text"])


@pytest.mark.parametrize("folder", INTERNLM2)
def test_auto_tokenizer_on_an_original_checkpoint_folder(tmp_path, folder, no_remote_code):
    """A downloaded InternVL2.5 folder (config.json and tokenizer_config.json with auto_map, no .py files)."""
    for file in (TOKENIZERS / folder).iterdir():
        if file.name != "expected.json":
            shutil.copy(file, tmp_path / file.name)
    config = json.loads((INTERNLM2_DIR / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_internvl_chat.InternVLChatConfig"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert type(tokenizer) is InternLM2TokenizerFast
    _check_against_original(tokenizer, folder)


def test_the_original_fast_qwen2_class_agreed_with_the_slow_one():
    """The fixture's Qwen2 expectations are the slow class's; the 4.47.1 fast class gave the same on every string."""
    record = EXPECTED["folders"]["qwen2-tiny"]
    assert record["class"] == "Qwen2Tokenizer" and record["fast_disagreements"] == []


@pytest.mark.parametrize("folder", INTERNLM2)
@pytest.mark.parametrize("loader", [AutoTokenizer, InternLM2Tokenizer])
def test_add_tokens_at_run_time_matches_the_original(folder, loader):
    """The same `add_tokens` calls as the original got before it saved (`make_expected.saved_by_original`): a plain
    added token is matched on the raw text, and the text after it gets its own dummy prefix, as in the original."""
    record = EXPECTED["folders"][folder]["saved_by_original"]
    tokenizer = loader.from_pretrained(TOKENIZERS / folder)
    tokenizer.add_tokens(["<new_plain>"])
    tokenizer.add_tokens(["<new_special>"], special_tokens=True)
    assert len(tokenizer) == record["len"]
    for case in record["cases"]:
        expected = {key: value for key, value in case.items() if key != "text"}
        assert not _mismatches(describe(tokenizer, case["text"]), expected, case["text"])


@pytest.mark.parametrize("folder", INTERNLM2)
@pytest.mark.parametrize("cls", [InternLM2TokenizerFast, InternLM2Tokenizer])
def test_saved_tokenizer_config_has_the_keys_the_original_reads(tmp_path, folder, cls):
    """The original (remote code under transformers 4.x, as vLLM/LMDeploy load it) reads the renamed chat tokens from
    `added_tokens_decoder` and the extra tokens from `additional_special_tokens`; a list under `extra_special_tokens`
    makes transformers 4.x fail (it expects a dict there). Expected keys: the folder the original itself saved."""
    original = json.loads((HERE / f"saved-by-original-{folder}" / "tokenizer_config.json").read_text())
    tokenizer = cls.from_pretrained(TOKENIZERS / folder)
    tokenizer.add_tokens(["<new_plain>"])
    tokenizer.add_tokens(["<new_special>"], special_tokens=True)
    tokenizer.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert not isinstance(saved.get("extra_special_tokens"), list)
    assert saved["additional_special_tokens"] == original["additional_special_tokens"]

    def ids_and_names(decoder: dict) -> dict:
        return {index: (token["content"], token["special"]) for index, token in decoder.items()}

    assert ids_and_names(saved["added_tokens_decoder"]) == ids_and_names(original["added_tokens_decoder"])
    # and the saved folder still loads here with the original's behaviour
    record = EXPECTED["folders"][folder]["saved_by_original"]
    for loader in (AutoTokenizer, InternLM2Tokenizer):
        reloaded = loader.from_pretrained(tmp_path)
        assert len(reloaded) == record["len"]
        for case in record["cases"]:
            expected = {key: value for key, value in case.items() if key != "text"}
            assert not _mismatches(describe(reloaded, case["text"]), expected, case["text"])


@pytest.mark.parametrize("folder, kind", LOADERS)
def test_processor_batch_is_left_padded_original_ids(folder, kind):
    """Two prompts in one call: each row is the original's ids, left-padded with the pad id (as `batch_chat` does)."""
    cases = [EXPECTED["chat_prompts"][index] for index in (0, 5)]  # one image of one tile; text only
    expected = [_expand_runs(EXPECTED["folders"][folder]["chat_prompts"][index]["input_ids_rle"]) for index in (0, 5)]
    tokenizer = load(folder, kind)
    processor = InternVLProcessor(tokenizer=tokenizer)
    outputs = processor(
        text=[case["prompt"] for case in cases], images=[[Image.new("RGB", (448, 448))], []], padding=True
    )
    width = max(len(ids) for ids in expected)
    assert outputs["input_ids"] == [[tokenizer.pad_token_id] * (width - len(ids)) + ids for ids in expected]
    assert outputs["attention_mask"] == [[0] * (width - len(ids)) + [1] * len(ids) for ids in expected]


def _expand_runs(runs: list[list[int]]) -> list[int]:
    return [token_id for token_id, count in runs for _ in range(count)]
