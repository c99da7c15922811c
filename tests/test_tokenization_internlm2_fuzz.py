"""InternLM2 tokenizers against the original slow tokenizer on 1000 random strings per folder
(fixtures/original-variants/internlm2_tokenizer_fuzz.json)."""

import json

import pytest
from helpers import FIXTURES, TOKENIZERS
from transformers import AutoTokenizer

import transformers_internvl  # noqa: F401
from transformers_internvl import InternLM2Tokenizer, InternLM2TokenizerFast

FUZZ = json.loads((FIXTURES / "original-variants" / "internlm2_tokenizer_fuzz.json").read_text())


@pytest.mark.parametrize("folder", sorted(FUZZ["folders"]))
@pytest.mark.parametrize("loader", ["auto", "sentencepiece"])
def test_random_strings_match_the_original(folder, loader):
    directory = TOKENIZERS / folder
    if loader == "auto":
        tokenizer = AutoTokenizer.from_pretrained(directory)
        assert isinstance(tokenizer, InternLM2TokenizerFast)
    else:
        tokenizer = InternLM2Tokenizer.from_pretrained(directory)
    mismatches = []
    for text, expected in zip(FUZZ["strings"], FUZZ["folders"][folder]):
        got = {
            "input_ids": tokenizer(text).input_ids,
            "input_ids_no_special": tokenizer(text, add_special_tokens=False).input_ids,
            "decode": tokenizer.decode(expected["input_ids"]),
            "decode_skip_special": tokenizer.decode(expected["input_ids"], skip_special_tokens=True),
        }
        mismatches += [(text, key) for key in got if got[key] != expected[key]]
    assert not mismatches, mismatches[:5]
