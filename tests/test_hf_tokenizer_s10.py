"""Session-10 re-check: this package's processor / `model.chat` / training labels on the tokenizer of a converted `-hf`
folder of a Phi-3 sentencepiece tokenizer (InternVL2-4B, Mini-InternVL-Chat-4B-V1-5), and transformers' own processor
steps on the same folder.

`convert --to hf` writes the source's `legacy` into the `-hf` tokenizer_config.json, but transformers 5 drops the key
whenever the tokenizer is saved again (a model fine-tuned with transformers' port and saved with its processor, the
round trip the conversion is for). This package then read the non-legacy (`legacy: false`) Phi-3 tokenizer as legacy
(no key: transformers 4's default) and `encode_as_original` gave other ids than the original on 242 of the 329
strings. Even on the fresh `-hf` folder 8 strings differed: transformers 5 rewrites `additional_special_tokens`
(`<ref>`, `<box>`, `<quad>` ... are no longer in `all_special_tokens`), so a text starting with `<ref>` got the
non-legacy "▁" the original does not put there. And a prompt rendered by the `-hf` chat template, which starts with
the "▁" the slow class puts before a chat token, got that "▁" twice from `encode_as_original`. Decoding
(`decode_as_original`: `chat`'s answers, and so its next prompt) differed too: 42 of 560 id lists (`legacy: false`),
255 / 314 of 450 (legacy folders, whose `-hf` tokenizer loads as `TokenizersBackend`).

Expected ids: the ORIGINAL's (transformers 4.47.1 slow `LlamaTokenizer`, original `chat`), recorded in
`fixtures/dropin_s9/phi3_tokenizer/` (`legacy: false` folders) and `fixtures/legacy_tokenizer_s9/` (legacy folders);
their READMEs say how they were made.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
from parity_helpers import tiny_phi3_chat_setup
from transformers import AutoConfig, AutoTokenizer

import transformers_internvl  # noqa: F401  (registers the classes)
from transformers_internvl.conversion.convert import convert_checkpoint
from transformers_internvl.llama_slow_tokenization import encode_as_original, slow_llama_mode

FIXTURES = Path(__file__).parent / "fixtures"
PHI3 = FIXTURES / "dropin_s9" / "phi3_tokenizer"
LEGACY = FIXTURES / "legacy_tokenizer_s9"
PHI3_MODEL = FIXTURES / "dropin_s9" / "mini-4b-phi3-v1"
PHI3_EXPECTED = json.loads((PHI3 / "expected.json").read_text(encoding="utf-8"))
LEGACY_EXPECTED = json.loads(gzip.decompress((LEGACY / "expected.json.gz").read_bytes()))
# tokenizer folder -> (its folder, the original's strings and ids, the original's chat records)
CASES = {
    "phi3-rstrip": (PHI3, PHI3_EXPECTED, PHI3 / "chat.json"),  # legacy: false
    "phi3-nostrip": (PHI3, PHI3_EXPECTED, PHI3 / "chat.json"),  # legacy: false
    "phi3-rstrip-legacy-true": (LEGACY, LEGACY_EXPECTED, LEGACY / "chat.json"),
    "phi3-rstrip-no-key": (LEGACY, LEGACY_EXPECTED, LEGACY / "chat.json"),
}
NON_LEGACY = ("phi3-rstrip", "phi3-nostrip")


def _source(name: str, folder: Path) -> Path:
    """Mini-InternVL-Chat-4B-V1-5's tiny original folder (`ps_version` v2, as InternVL2-4B) with tokenizer `name`."""
    shutil.copytree(PHI3_MODEL, folder)
    for stale in ("tokenizer.json", "vocab.json", "merges.txt", "added_tokens.json", "special_tokens_map.json"):
        (folder / stale).unlink()
    for item in (CASES[name][0] / name).iterdir():
        shutil.copy(item, folder / item.name)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["ps_version"] = "v2"
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def _resaved(hf: Path, folder: Path) -> Path:
    """The `-hf` folder as transformers saves it again (config and tokenizer; e.g. after fine-tuning with its port)."""
    AutoConfig.from_pretrained(hf).save_pretrained(folder)
    AutoTokenizer.from_pretrained(hf).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=sorted(CASES))
def converted(request, tmp_path_factory):
    """(name, source folder, fresh `-hf` folder, `-hf` folder re-saved by transformers)."""
    root = tmp_path_factory.mktemp("hf_tokenizer_s10")
    source = _source(request.param, root / "source")
    hf = convert_checkpoint(source, root / "hf", to="hf", progress=False).path
    return request.param, source, hf, _resaved(hf, root / "resaved")


def _expected(name: str) -> tuple[list[str], list[list[int]]]:
    records = CASES[name][1]
    return records["strings"], [record["input_ids"] for record in records["folders"][name]]


@pytest.mark.parametrize("which", ["fresh", "resaved"])
def test_this_packages_encoding_of_the_hf_tokenizer_gives_the_original_ids(converted, which):
    name, _, hf, resaved = converted
    tokenizer = AutoTokenizer.from_pretrained(hf if which == "fresh" else resaved)
    strings, expected = _expected(name)
    got = encode_as_original(tokenizer, strings)["input_ids"]
    assert [text for text, row, ids in zip(strings, got, expected, strict=True) if row != ids] == []
    if name in NON_LEGACY:
        assert slow_llama_mode(tokenizer) == "non_legacy"


@pytest.mark.parametrize("which", ["fresh", "resaved"])
def test_this_packages_processor_with_the_hf_tokenizer_gives_the_original_prompt(converted, which):
    """`InternVLChatProcessor` (template `phi3-chat`) with the `-hf` tokenizer: the ids of the original `chat()`'s
    first prompt (an image, "<image>\\nWhat is in the picture?")."""
    import sys

    from transformers import AutoProcessor

    sys.path.insert(0, str(FIXTURES / "heldout_s6"))
    from heldout_inputs import make_image

    from transformers_internvl import InternVLChatProcessor

    name, source, hf, resaved = converted
    original = AutoProcessor.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(hf if which == "fresh" else resaved)
    image_processor = original.image_processor
    processor = InternVLChatProcessor(image_processor=image_processor, tokenizer=tokenizer, template="phi3-chat")
    image = make_image(700, 1000, 95)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    ids = processor(text=prompt, images=image, max_dynamic_patch=6)["input_ids"][0]
    chat = json.loads(CASES[name][2].read_text(encoding="utf-8"))[name]
    assert list(ids) == chat["prompt_ids"][0][0]


@pytest.mark.parametrize("which", ["fresh", "resaved"])
def test_chat_with_the_hf_tokenizer_feeds_the_original_prompt(converted, which, monkeypatch):
    """`model.chat` (the original's API, this package's model) given the `-hf` folder's tokenizer."""
    name, _, hf, resaved = converted
    tokenizer = AutoTokenizer.from_pretrained(hf if which == "fresh" else resaved)
    model, pixel_values, config, fed = tiny_phi3_chat_setup(PHI3_MODEL, tokenizer, monkeypatch)
    answer1, history = model.chat(
        tokenizer, pixel_values, "<image>\nWhat is in the picture?", dict(config), return_history=True
    )
    chat = json.loads(CASES[name][2].read_text(encoding="utf-8"))[name]
    assert fed[0] == chat["prompt_ids"][0][0]
    answer2 = model.chat(tokenizer, pixel_values, "And the colours?", dict(config), history=history)
    assert fed[1] == chat["prompt_ids"][1][0]
    assert [answer1, answer2] == chat["runs"]["image_chat"]["answers"]


def test_a_prompt_of_the_hf_chat_template_gets_one_prefix(converted):
    """The `-hf` chat template of a `legacy: false` tokenizer starts with the "▁" that the slow class puts before the
    prompt; `encode_as_original` on its prompt must not put a second one there. Transformers' own tokenizer on the
    same prompt (its processor's path) gives the original's ids too."""
    name, source, hf, _ = converted
    if name not in NON_LEGACY:
        pytest.skip("legacy -hf folders carry no '▁' in their chat template")
    tokenizer = AutoTokenizer.from_pretrained(hf)
    reference = AutoTokenizer.from_pretrained(source)
    messages = [{"role": "user", "content": "hi"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt.startswith("\u2581<|system|>")
    expected = encode_as_original(reference, [prompt[1:]])["input_ids"][0]
    assert expected[:3] == [1, reference.convert_tokens_to_ids("\u2581"), reference.convert_tokens_to_ids("<|system|>")]
    assert tokenizer(prompt)["input_ids"] == expected  # transformers' own path
    assert encode_as_original(tokenizer, [prompt])["input_ids"][0] == expected  # this package's path


@pytest.mark.parametrize("name", NON_LEGACY)
def test_transformers_processor_steps_on_the_hf_folder_give_the_original_ids(name, tmp_path):
    """transformers' `InternVLProcessor` steps (replayed: it needs torchvision to load) on the `-hf` folder give the
    ids of this package's processor on the original folder."""
    from test_conversion_s10 import assert_hf_processor_steps_match

    source = _source(name, tmp_path / "source")
    hf = convert_checkpoint(source, tmp_path / "hf", to="hf", progress=False).path
    assert_hf_processor_steps_match(source, hf)


def test_transformers_tokenizer_on_the_hf_folder_gives_the_original_chat_prompt(converted):
    """transformers' own path on the `-hf` folder (its chat template, `<IMG_CONTEXT>` expanded as its
    `InternVLProcessor` does, its tokenizer) gives the ids of the original `chat()`'s first prompt, before and after
    transformers re-saves the folder."""
    name, _, hf, resaved = converted
    chat = json.loads(CASES[name][2].read_text(encoding="utf-8"))[name]
    expected = chat["prompt_ids"][0][0]
    image_seq_length = json.loads((hf / "processor_config.json").read_text(encoding="utf-8"))["image_seq_length"]
    for folder in (hf, resaved):
        tokenizer = AutoTokenizer.from_pretrained(folder)
        assert not type(tokenizer).__module__.startswith("transformers_internvl")
        tiles = expected.count(tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")) // image_seq_length
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]}
        ]
        assert tokenizer.chat_template == (hf / "chat_template.jinja").read_text(encoding="utf-8")
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        expansion = "<img>" + "<IMG_CONTEXT>" * image_seq_length * tiles + "</img>"
        prompt = prompt.replace("<IMG_CONTEXT>", expansion, 1)
        assert tokenizer(prompt)["input_ids"] == expected


@pytest.mark.parametrize("which", ["fresh", "resaved"])
def test_this_packages_decoding_of_the_hf_tokenizer_equals_the_original(converted, which):
    """`decode_as_original` (what `model.chat` answers with, and what its next prompt holds) on the `-hf` tokenizer:
    the original's `decode` (`legacy: false`: `fixtures/dropin_s9/phi3_tokenizer/decode.json`; legacy:
    `fixtures/legacy_tokenizer_s9/expected.json.gz`). `legacy: false`: transformers 5 names the image tokens in
    `extra_special_tokens` (`start_image_token`...), which were read as the slow class's named special tokens, so
    `<img>` / `</img>` / `<IMG_CONTEXT>` were decoded without the spaces the slow class puts around them (42 of 560).
    Legacy (`TokenizersBackend`): transformers 5's own decoding was used."""
    from transformers_internvl.llama_slow_tokenization import decode_as_original

    name, _, hf, resaved = converted
    tokenizer = AutoTokenizer.from_pretrained(hf if which == "fresh" else resaved)
    if name in NON_LEGACY:
        records = json.loads((PHI3 / "decode.json").read_text(encoding="utf-8"))
        id_lists, expected = records["id_lists"], records[name]
    else:
        id_lists, expected = LEGACY_EXPECTED["decode"][name]["id_lists"], LEGACY_EXPECTED["decode"][name]
    for mode, skip in (("skip", True), ("keep", False)):
        got = [decode_as_original(tokenizer, ids, skip_special_tokens=skip) for ids in id_lists]
        assert [index for index, text in enumerate(got) if text != expected[mode][index]] == []
