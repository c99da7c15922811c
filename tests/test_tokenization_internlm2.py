"""InternLM2 tokenizer: parity with the original remote-code `InternLM2Tokenizer` (tests/fixtures/tokenizers).

Every expectation comes from `expected.json`, written by running the original slow tokenizer (OpenGVLab/InternVL
@ 2410d1d, transformers 4.47.1) on the original-layout folders, or from the sentencepiece library itself.
"""

from __future__ import annotations

import builtins
import json
import random
import shutil
from functools import cache
from pathlib import Path

import pytest
import sentencepiece as spm
from helpers import INTERNLM2_DIR, TOKENIZERS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

import transformers_internvl
from transformers_internvl.processing.tokenization_internlm2 import InternLM2Tokenizer
from transformers_internvl.processing.tokenization_internlm2_fast import InternLM2TokenizerFast

FOLDERS = ["internlm2-dummy-prefix", "internlm2-no-dummy-prefix"]
ORIGINAL_FILES = ["tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"]
# "auto" is what users get: AutoTokenizer on the original folder (InternLM2TokenizerFast).
KINDS = ["auto", "sentencepiece"]


@cache
def expected(folder: str) -> dict:
    return json.loads((TOKENIZERS / folder / "expected.json").read_text(encoding="utf-8"))


@cache
def load(kind: str, folder: str):
    path = TOKENIZERS / folder
    if kind == "auto":
        return AutoTokenizer.from_pretrained(path)
    return InternLM2Tokenizer.from_pretrained(path)


def _case_params(key: str) -> list:
    return [
        pytest.param(kind, folder, index, id=f"{kind}-{folder}-{case['name']}")
        for kind in KINDS
        for folder in FOLDERS
        for index, case in enumerate(expected(folder)[key])
    ]


# ---------------------------------------------------------------------------------------------------------------
# cases: every test string of both folders


@pytest.mark.parametrize("kind, folder, index", _case_params("cases"))
def test_encode_matches_original(kind, folder, index):
    tokenizer, case = load(kind, folder), expected(folder)["cases"][index]
    assert tokenizer(case["text"]).input_ids == case["input_ids"]
    assert tokenizer(case["text"], add_special_tokens=False).input_ids == case["input_ids_no_special"]
    assert tokenizer.encode(case["text"]) == case["input_ids"]
    assert tokenizer.convert_ids_to_tokens(case["input_ids"]) == case["tokens"]
    assert tokenizer.tokenize(case["text"]) == case["tokenize"]


@pytest.mark.parametrize("kind, folder, index", _case_params("cases"))
def test_decode_matches_original(kind, folder, index):
    tokenizer, case = load(kind, folder), expected(folder)["cases"][index]
    assert tokenizer.decode(case["input_ids"], skip_special_tokens=True) == case["decode_skip_special"]
    assert (
        tokenizer.decode(case["input_ids_no_special"], skip_special_tokens=True)
        == (case["decode_no_special_skip_special"])
    )
    # With special tokens kept, the original's spacing quirks are reproduced too.
    assert tokenizer.decode(case["input_ids"]) == case["decode"]
    assert tokenizer.decode(case["input_ids_no_special"]) == case["decode_no_special"]


@pytest.mark.parametrize("kind, folder, index", _case_params("decode_cases"))
def test_decode_cases_match_original(kind, folder, index):
    tokenizer, case = load(kind, folder), expected(folder)["decode_cases"][index]
    assert tokenizer.convert_ids_to_tokens(case["ids"]) == case["tokens"]
    assert tokenizer.decode(case["ids"]) == case["decode"]
    assert tokenizer.decode(case["ids"], skip_special_tokens=True) == case["decode_skip_special"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("folder", FOLDERS)
def test_every_id_matches_original(kind, folder):
    tokenizer, reference = load(kind, folder), expected(folder)
    assert len(reference["id_to_token"]) == len(tokenizer)
    assert [tokenizer.convert_ids_to_tokens(i) for i in range(len(tokenizer))] == reference["id_to_token"]
    assert tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))) == reference["id_to_token"]
    assert [tokenizer.decode([i]) for i in range(len(tokenizer))] == reference["decode_single_ids"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("folder", FOLDERS)
def test_vocabulary_and_special_tokens_match_original(kind, folder):
    tokenizer, reference = load(kind, folder), expected(folder)["tokenizer"]
    assert len(tokenizer) == reference["len"]
    assert tokenizer.vocab_size == reference["vocab_size"]
    assert len(tokenizer.get_vocab()) == reference["get_vocab_size"]
    for name in ("bos", "eos", "pad", "unk"):
        assert getattr(tokenizer, f"{name}_token") == reference[f"{name}_token"]
        assert getattr(tokenizer, f"{name}_token_id") == reference[f"{name}_token_id"]
    assert tokenizer.padding_side == reference["padding_side"]
    assert tokenizer.truncation_side == reference["truncation_side"]
    assert tokenizer.model_max_length == reference["model_max_length"]
    assert tokenizer.extra_special_tokens == reference["additional_special_tokens"]
    assert tokenizer.extra_special_tokens_ids == reference["additional_special_tokens_ids"]
    assert tokenizer.all_special_tokens == reference["all_special_tokens"]
    assert tokenizer.all_special_ids == reference["all_special_ids"]
    assert tokenizer.get_added_vocab() == reference["added_token_ids"]
    decoder = [
        {
            "id": index,
            "content": token.content,
            **{
                flag: getattr(token, flag)
                for flag in reference["added_tokens_decoder"][0]
                if flag not in ("id", "content")
            },
        }
        for index, token in tokenizer.added_tokens_decoder.items()
    ]
    assert decoder == reference["added_tokens_decoder"]


# ---------------------------------------------------------------------------------------------------------------
# extra cases: batches, pairs, masks, truncation, chat template


def _extra(folder: str, name: str) -> dict:
    return next(case for case in expected(folder)["extra_cases"] if case["name"] == name)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("folder", FOLDERS)
@pytest.mark.parametrize("side", ["right", "left"])
def test_batch_padding(kind, folder, side):
    tokenizer, case = load(kind, folder), _extra(folder, f"batch_padding_{side}")
    encoded = tokenizer(case["texts"], padding=True, padding_side=side)
    assert encoded.input_ids == case["input_ids"]
    assert encoded.attention_mask == case["attention_mask"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("folder", FOLDERS)
def test_pair_gets_one_bos(kind, folder):
    tokenizer, case = load(kind, folder), _extra(folder, "pair")
    encoded = tokenizer(case["text"], case["text_pair"])
    assert encoded.input_ids == case["input_ids"]
    assert encoded.attention_mask == case["attention_mask"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("folder", FOLDERS)
def test_special_tokens_mask_has_the_length_of_the_ids(kind, folder):
    tokenizer, case = load(kind, folder), _extra(folder, "special_tokens_mask")
    encoded = tokenizer(case["text"], return_special_tokens_mask=True)
    assert encoded.input_ids == case["input_ids"]
    # The original's mask has one element too many (a trailing 1 for an EOS it never adds); ours drops it.
    assert len(case["special_tokens_mask"]) == len(case["input_ids"]) + 1
    assert encoded.special_tokens_mask == case["special_tokens_mask"][:-1]
    assert (
        tokenizer.get_special_tokens_mask(case["input_ids"], already_has_special_tokens=True)
        == (case["special_tokens_mask"][:-1])
    )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("folder", FOLDERS)
def test_truncation(kind, folder):
    tokenizer, case = load(kind, folder), _extra(folder, "truncation_max_length_8")
    assert tokenizer(case["text"], max_length=8, truncation=True).input_ids == case["input_ids"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("folder", FOLDERS)
def test_chat_template(kind, folder):
    tokenizer, case = load(kind, folder), _extra(folder, "chat_template")
    rendered = tokenizer.apply_chat_template(case["messages"], add_generation_prompt=True, tokenize=False)
    assert rendered == case["rendered"]
    ids = tokenizer.apply_chat_template(case["messages"], add_generation_prompt=True)
    ids = ids if isinstance(ids, list) else ids["input_ids"]
    assert ids == case["input_ids"]


# ---------------------------------------------------------------------------------------------------------------
# loading: AutoTokenizer without remote code, save/load round trip


@pytest.fixture
def no_remote_code(monkeypatch):
    """Fail the test if transformers prompts for, or imports, remote code."""

    def refuse(*args, **kwargs):
        raise AssertionError("remote code was requested")

    def no_prompt(*args, **kwargs):
        raise AssertionError("transformers prompted for trust_remote_code")

    from transformers import dynamic_module_utils
    from transformers.models.auto import configuration_auto, tokenization_auto

    for module in (dynamic_module_utils, configuration_auto, tokenization_auto):
        monkeypatch.setattr(module, "get_class_from_dynamic_module", refuse, raising=False)
    monkeypatch.setattr(builtins, "input", no_prompt)


@pytest.mark.parametrize("folder", FOLDERS)
def test_auto_tokenizer_loads_original_folder_without_remote_code(folder, no_remote_code):
    config = json.loads((TOKENIZERS / folder / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "InternLM2Tokenizer" and "auto_map" in config
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZERS / folder)
    assert type(tokenizer) is InternLM2TokenizerFast
    # transformers 5 ignores use_fast; both names resolve to the same local class.
    assert type(AutoTokenizer.from_pretrained(TOKENIZERS / folder, use_fast=False)) is InternLM2TokenizerFast
    assert tokenizer("<img><IMG_CONTEXT></img>").input_ids[:4] == [1, 600, 602, 601]


def _original_model_dir(tmp_path: Path, folder: str) -> Path:
    """An InternVL checkpoint folder as OpenGVLab publishes it (config with auto_map, minus the .py files)."""
    model_dir = tmp_path / "InternVL2_5-tiny"
    model_dir.mkdir()
    for name in ORIGINAL_FILES:
        shutil.copy(TOKENIZERS / folder / name, model_dir / name)
    config = json.loads((INTERNLM2_DIR / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
        "AutoModel": "modeling_internvl_chat.InternVLChatModel",
        "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel",
    }
    (model_dir / "config.json").write_text(json.dumps(config))
    return model_dir


@pytest.mark.parametrize("folder", FOLDERS)
def test_auto_tokenizer_loads_original_model_dir_without_remote_code(tmp_path, folder, no_remote_code):
    model_dir = _original_model_dir(tmp_path, folder)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert type(tokenizer) is InternLM2TokenizerFast
    for case in expected(folder)["cases"]:
        assert tokenizer(case["text"]).input_ids == case["input_ids"]


@pytest.mark.parametrize("cls", [InternLM2TokenizerFast, InternLM2Tokenizer])
@pytest.mark.parametrize("folder", FOLDERS)
def test_save_and_reload_round_trip(tmp_path, cls, folder):
    cases = expected(folder)["cases"]
    tokenizer = cls.from_pretrained(TOKENIZERS / folder)
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.model").is_file()
    for reloaded in (cls.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(tmp_path)):
        assert len(reloaded) == len(tokenizer) and reloaded.vocab_size == tokenizer.vocab_size
        for case in cases:
            assert reloaded(case["text"]).input_ids == case["input_ids"]
            assert reloaded.decode(case["input_ids"]) == case["decode"]


@pytest.mark.parametrize("cls", [InternLM2TokenizerFast, InternLM2Tokenizer])
def test_saved_bos_eos_flags_survive_reload(tmp_path, cls):
    folder = TOKENIZERS / FOLDERS[0]
    ids = cls.from_pretrained(folder)("Hello", add_special_tokens=False).input_ids
    for flags, wanted in (({"add_bos_token": False}, ids), ({"add_eos_token": True}, [1, *ids, 2])):
        saved = tmp_path / str(sorted(flags.items()))
        cls.from_pretrained(folder, **flags).save_pretrained(saved)
        for loader in (InternLM2TokenizerFast, InternLM2Tokenizer, AutoTokenizer):
            assert loader.from_pretrained(saved)("Hello").input_ids == wanted


def test_fast_tokenizer_loads_from_tokenizer_json_alone(tmp_path):
    folder = FOLDERS[1]
    InternLM2TokenizerFast.from_pretrained(TOKENIZERS / folder).save_pretrained(tmp_path)
    (tmp_path / "tokenizer.model").unlink()
    tokenizer = InternLM2TokenizerFast.from_pretrained(tmp_path)
    for case in expected(folder)["cases"]:
        assert tokenizer(case["text"]).input_ids == case["input_ids"]
        assert tokenizer.decode(case["input_ids"]) == case["decode"]
        assert tokenizer.decode(case["input_ids"], skip_special_tokens=True) == case["decode_skip_special"]


def test_missing_files_are_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="vocab_file"):
        InternLM2TokenizerFast(vocab_file=str(tmp_path / "tokenizer.model"))
    with pytest.raises(ValueError, match="vocab_file"):
        InternLM2Tokenizer(vocab_file=str(tmp_path / "tokenizer.model"))


@pytest.mark.parametrize("kind", KINDS)
def test_decoding_an_id_outside_the_vocabulary_is_a_clear_error(kind):
    tokenizer = load(kind, FOLDERS[0])
    for bad_id in (len(tokenizer), -100):
        with pytest.raises(ValueError, match=str(bad_id)):
            tokenizer.decode([1, bad_id])


def test_added_token_ids_with_a_gap_are_rejected():
    folder = TOKENIZERS / FOLDERS[0]
    with pytest.raises(ValueError, match="<box>"):
        # `<box>` would land on 600 (the next free id), not on 700.
        InternLM2TokenizerFast(vocab_file=str(folder / "tokenizer.model"), added_tokens_decoder={700: "<box>"})


# ---------------------------------------------------------------------------------------------------------------
# behaviour beyond the fixture strings: fast vs sentencepiece on generated text


def _alphabet(folder: str) -> list[str]:
    reference = expected(folder)
    atoms = [token["content"] for token in reference["tokenizer"]["added_tokens_decoder"]]
    atoms += [piece["piece"] for piece in reference["sentencepiece_model"]["user_defined_pieces"]]
    atoms += ["<0x41>", "<0x0A>", "<0xFF>", "<s", "0x41>", "——", "———", "▁", " ", "  ", "\n", "\t", "\r\n", "\x00"]
    atoms += ["\u3000", "\xa0", "\u200b", " .", " ,", " n't", " 's", " ' ", "é", "e\u0301", "😀", "👩\u200d💻", "𠀀"]
    return atoms + sorted({char for case in reference["cases"] for char in case["text"]})


@pytest.mark.parametrize("folder", FOLDERS)
def test_fast_matches_sentencepiece_on_generated_text(folder):
    fast, slow = load("auto", folder), load("sentencepiece", folder)
    alphabet = _alphabet(folder)

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.sampled_from(alphabet), max_size=24).map("".join))
    def check(text):
        ids = slow(text).input_ids
        assert fast(text).input_ids == ids
        assert fast(text, add_special_tokens=False).input_ids == ids[1:]
        assert fast.tokenize(text) == slow.tokenize(text)
        assert fast.decode(ids) == slow.decode(ids)
        assert fast.decode(ids, skip_special_tokens=True) == slow.decode(ids, skip_special_tokens=True)

    check()


@pytest.mark.parametrize("folder", FOLDERS)
def test_byte_and_control_piece_spellings_encode_as_text(folder):
    """A piece of text that spells a byte piece or `<s>` is text to sentencepiece, also right after a special token."""
    fast, slow = load("auto", folder), load("sentencepiece", folder)
    spellings = [f"<0x{byte:02X}>" for byte in range(256)] + ["<s", "</s", "<unk", "<0x4>"]
    neighbours = ["", "<|im_end|>", "<img>", "——", "[UNUSED_TOKEN_145]", " ", "\n"]
    for spelling in spellings:
        for left in neighbours:
            for right in neighbours:
                text = left + spelling + right
                assert fast(text).input_ids == slow(text).input_ids, text


@pytest.mark.parametrize("folder", FOLDERS)
def test_decoding_random_ids_matches_sentencepiece_class(folder):
    fast, slow = load("auto", folder), load("sentencepiece", folder)
    rng = random.Random(0)
    size = len(slow)
    for _ in range(300):
        ids = [rng.choice([rng.randrange(size), rng.randrange(3, 259), rng.randrange(259, 600)]) for _ in range(12)]
        for skip in (False, True):
            assert fast.decode(ids, skip_special_tokens=skip) == slow.decode(ids, skip_special_tokens=skip), ids


@pytest.mark.parametrize("folder", FOLDERS)
def test_piece_decoding_matches_sentencepiece_library(folder):
    """The Python decoder of the fast class returns what `SentencePieceProcessor.decode` returns."""
    processor = spm.SentencePieceProcessor(model_file=str(TOKENIZERS / folder / "tokenizer.model"))
    layout = load("auto", folder)._sentencepiece_layout
    rng = random.Random(1)
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    runs = [[piece] for piece in pieces] + [
        [rng.choice(pieces[3:]) for _ in range(rng.randint(1, 8))] for _ in range(2000)
    ]
    runs += [
        ["<0xE4>", "<0xB8>", "<0xAD>", "<0xE4>", "<0xB8>", "▁"],
        ["<0x20>", "▁▁"],
        ["▁", "▁"],
        ["<0xED>", "<0xA0>"],
    ]
    for run in runs:
        assert layout.decode_pieces(run) == processor.decode(run), run


# ---------------------------------------------------------------------------------------------------------------
# transformers' own Qwen2 tokenizer on the qwen2-tiny folder (InternVL 2.5 1B/4B/8B layout)


def test_qwen2_tiny_folder_is_transformers_qwen2_tokenizer():
    folder = TOKENIZERS / "qwen2-tiny"
    reference = json.loads((folder / "expected.json").read_text(encoding="utf-8"))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert type(tokenizer).__name__ == "Qwen2Tokenizer"
    assert len(tokenizer) == reference["tokenizer"]["len"]
    for case in reference["cases"]:
        assert tokenizer(case["text"]).input_ids == case["input_ids"], case["name"]
        assert tokenizer.decode(case["input_ids"]) == case["decode"], case["name"]
        assert tokenizer.decode(case["input_ids"], skip_special_tokens=True) == case["decode_skip_special"], case[
            "name"
        ]


def test_classes_are_exported_and_registered():
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    assert transformers_internvl.InternLM2Tokenizer is InternLM2Tokenizer
    assert transformers_internvl.InternLM2TokenizerFast is InternLM2TokenizerFast
    assert tokenizer_class_from_name("InternLM2Tokenizer") is InternLM2TokenizerFast
    assert tokenizer_class_from_name("InternLM2TokenizerFast") is InternLM2TokenizerFast
