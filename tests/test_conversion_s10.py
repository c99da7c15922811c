"""Held-out re-check of the conversion (issue 9), session 10: sentencepiece Llama tokenizers (Phi-3: InternVL2-4B,
Mini-InternVL-Chat-4B-V1-5; Yi: InternVL-Chat-V1-2, InternVL2-40B) through `--to hf` and back.

The original loads these tokenizers with transformers 4's slow `LlamaTokenizer` (`use_fast=False`); with `legacy: true`
or without the key it runs in legacy mode (sentencepiece's dummy "▁" before every piece between added tokens).
Expected ids: `fixtures/legacy_tokenizer_s9/expected.json.gz`, made by that slow class (see its README).

- `--to hf`: transformers 5's `LlamaTokenizer` rebuilds its own pre-tokenizer (no dummy "▁" after added tokens), so
  the `-hf` folder gave other ids than the original on 434 of 564 strings (prompts with text after an added token).
  The `-hf` tokenizer.json now carries the legacy pipeline itself (a per-piece `Prepend("▁")` normalizer) and loads
  as `TokenizersBackend`, which keeps it.
- `--to original` of such a `-hf` folder: tokenizer.model was dropped on the way (the `-hf` folder kept only
  tokenizer.json), so the original code could not load the tokenizer at all ("Either model_file or model_proto must
  be specified"); and `additional_special_tokens` came back as transformers 5's guess (`<s>`, `</s>`, user-defined
  sentencepiece pieces) instead of the source's InternVL tokens. Both come back now.
  `fixtures/conversion_s10/check_tokenizer_with_original.py` loads the results with the original's transformers.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
from helpers import transformers_warnings
from transformers import AutoTokenizer

import transformers_internvl  # noqa: F401  (registers the classes)
from transformers_internvl.conversion.convert import convert_checkpoint
from transformers_internvl.llama_slow_tokenization import encode_as_original

FIXTURES = Path(__file__).parent / "fixtures"
LEGACY = FIXTURES / "legacy_tokenizer_s9"
EXPECTED = json.loads(gzip.decompress((LEGACY / "expected.json.gz").read_bytes()))
# Tokenizer folder -> the held-out original checkpoint (weights + config) it is paired with: Phi-3 tokenizers with the
# Phi-3 `su` checkpoint (template phi3-chat), the Yi-style Hermes ones with the Llama checkpoint (template Hermes-2).
WEIGHTS = {
    "phi3-rstrip-legacy-true": "phi3-su",
    "phi3-rstrip-no-key": "phi3-su",
    "phi3-nostrip-no-key": "phi3-su",
    "hermes-no-key": "llama3-hermes",
    "hermes-legacy-true": "llama3-hermes",
}


def original_folder(tokenizer: str, folder: Path, legacy: bool | None = None) -> Path:
    """An original-layout checkpoint: the weights and config of `heldout_s6/<case>` with the sentencepiece tokenizer
    files of `legacy_tokenizer_s9/<tokenizer>` (`legacy` written into tokenizer_config.json when given)."""
    folder.mkdir(parents=True)
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copyfile(FIXTURES / "heldout_s6" / WEIGHTS[tokenizer] / name, folder / name)
    for path in (LEGACY / tokenizer).iterdir():
        shutil.copyfile(path, folder / path.name)
    if legacy is not None:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        config["legacy"] = legacy
        (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def _mismatches(ids: list[list[int]], key: str, tokenizer: str) -> list[str]:
    expected = EXPECTED["folders"][tokenizer]
    return [text for text, row, record in zip(EXPECTED["strings"], ids, expected, strict=True) if row != record[key]]


@pytest.mark.parametrize("tokenizer", sorted(WEIGHTS))
def test_hf_tokenizer_gives_the_original_slow_legacy_ids(tokenizer, tmp_path):
    source = original_folder(tokenizer, tmp_path / "original")
    hf = convert_checkpoint(source, tmp_path / "hf", to="hf", progress=False).path
    converted = AutoTokenizer.from_pretrained(hf)
    assert not type(converted).__module__.startswith("transformers_internvl")
    texts = EXPECTED["strings"]
    assert _mismatches(converted(texts)["input_ids"], "input_ids", tokenizer) == []
    plain = converted(texts, add_special_tokens=False)["input_ids"]
    assert _mismatches(plain, "input_ids_no_special", tokenizer) == []
    # the InternVL tokens stay named for transformers' InternVLProcessor
    assert (converted.start_image_token, converted.end_image_token) == ("<img>", "</img>")
    assert converted.context_image_token == "<IMG_CONTEXT>"


@pytest.mark.parametrize("tokenizer", ["phi3-rstrip-no-key", "hermes-legacy-true"])
def test_round_trip_gives_back_the_sentencepiece_model_and_special_tokens(tokenizer, tmp_path):
    source = original_folder(tokenizer, tmp_path / "original")
    hf = convert_checkpoint(source, tmp_path / "hf", to="hf", progress=False).path
    back = convert_checkpoint(hf, tmp_path / "back", to="original", progress=False).path
    assert (back / "tokenizer.model").read_bytes() == (source / "tokenizer.model").read_bytes()
    source_config = json.loads((source / "tokenizer_config.json").read_text(encoding="utf-8"))
    config = json.loads((back / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] == "LlamaTokenizer"
    assert config["additional_special_tokens"] == source_config["additional_special_tokens"]
    assert config.get("legacy") == source_config.get("legacy")
    # this package reads it back with the original's ids
    reloaded = AutoTokenizer.from_pretrained(back)
    texts = EXPECTED["strings"]
    assert _mismatches(encode_as_original(reloaded, texts)["input_ids"], "input_ids", tokenizer) == []


def test_non_legacy_difference_is_warned(tmp_path, caplog):
    """`legacy: false`: the slow class puts "▁" before a text that starts with an added token outside
    `all_special_tokens` (`<|user|>\\nhi`) or with a space; no tokenizer.json pipeline does that, so the `-hf`
    tokenizer gives one "▁" fewer there. The conversion says so instead of writing it silently, and the `-hf` chat
    template (whose prompts all start with such a token) starts with that "▁"."""

    source = original_folder("phi3-nostrip-no-key", tmp_path / "original", legacy=False)
    with transformers_warnings(caplog):
        hf = convert_checkpoint(source, tmp_path / "hf", to="hf", progress=False).path
    assert "legacy: false" in caplog.text and "▁" in caplog.text
    reference = AutoTokenizer.from_pretrained(source)
    converted = AutoTokenizer.from_pretrained(hf)
    text = "<|user|>\nhi<|end|>\n<|assistant|>\n"
    original_ids = encode_as_original(reference, [text])["input_ids"][0]
    assert converted(text)["input_ids"] != original_ids  # the documented difference itself
    assert converted("Hello world")["input_ids"] == encode_as_original(reference, ["Hello world"])["input_ids"][0]
    # prompts of the -hf chat template start with the "▁" the slow class puts before them
    assert (hf / "chat_template.jinja").read_text(encoding="utf-8").startswith("\u2581")
    messages = [{"role": "user", "content": "hi"}]
    prompt = converted.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt.startswith("\u2581<|system|>")
    unprefixed = prompt[1:]
    assert converted(prompt)["input_ids"] == encode_as_original(reference, [unprefixed])["input_ids"][0]


@pytest.mark.parametrize(
    ("tokenizer", "legacy"),
    [
        ("phi3-rstrip-no-key", None),
        ("hermes-legacy-true", None),
        ("phi3-nostrip-no-key", False),
        ("hermes-no-key", False),
    ],
)
def test_converted_processor_gives_this_packages_input_ids(tokenizer, legacy, tmp_path):
    """Issue 9, acceptance 1 on sentencepiece tokenizers: transformers' processor steps on the `-hf` files give the
    `input_ids` and tile count of this package's processor on the original folder (the original's ids), in legacy
    mode and, through the "▁" the `-hf` chat template starts with, in non-legacy mode."""
    source = original_folder(tokenizer, tmp_path / "original", legacy=legacy)
    hf = convert_checkpoint(source, tmp_path / "hf", to="hf", progress=False).path
    assert_hf_processor_steps_match(source, hf)


AUTO_MAP = {
    "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
    "AutoModel": "modeling_internvl_chat.InternVLChatModel",
    "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel",
}
REMOTE_CODE = ("configuration_internvl_chat.py", "modeling_internvl_chat.py", "conversation.py")


def _with_remote_code(folder: Path) -> Path:
    """An OpenGVLab-style folder: `auto_map` in config.json and the files it names (placeholders: only their bytes
    are compared)."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["auto_map"] = AUTO_MAP
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    for name in REMOTE_CODE:
        (folder / name).write_text(f"# remote code placeholder: {name}\n", encoding="utf-8")
    return folder


def test_round_trip_gives_back_the_remote_code_and_auto_map(tmp_path):
    """The original's `AutoModel.from_pretrained(path, trust_remote_code=True)`, and serving tools that read the config
    through it, need `auto_map` and its files; a round trip dropped both."""
    import transformers

    source = _with_remote_code(original_folder("hermes-no-key", tmp_path / "original"))
    hf = convert_checkpoint(source, tmp_path / "hf", to="hf", progress=False).path
    hf_config = json.loads((hf / "config.json").read_text(encoding="utf-8"))
    assert "auto_map" not in hf_config  # transformers' port must not be sent to the remote code
    transformers.InternVLForConditionalGeneration.from_pretrained(hf)  # still loads as transformers' port
    back = convert_checkpoint(hf, tmp_path / "back", to="original", progress=False).path
    assert json.loads((back / "config.json").read_text(encoding="utf-8"))["auto_map"] == AUTO_MAP
    for name in REMOTE_CODE:
        assert (back / name).read_bytes() == (source / name).read_bytes()


def test_recorded_auto_map_without_its_files_is_left_out(tmp_path, caplog):
    source = _with_remote_code(original_folder("hermes-no-key", tmp_path / "original"))
    hf = convert_checkpoint(source, tmp_path / "hf", to="hf", progress=False).path
    (hf / "modeling_internvl_chat.py").unlink()  # e.g. a -hf folder re-saved by transformers
    with transformers_warnings(caplog):
        back = convert_checkpoint(hf, tmp_path / "back", to="original", progress=False).path
    assert "auto_map" not in json.loads((back / "config.json").read_text(encoding="utf-8"))
    assert "modeling_internvl_chat.py" in caplog.text


def assert_hf_processor_steps_match(source, hf) -> None:
    """transformers' processor steps on the `-hf` folder `hf` give the `input_ids` and tile count of this package's
    processor on the original folder `source` (one image, one chat turn)."""
    from PIL import Image
    from test_conversion import _hf_processor_input_ids
    from transformers import AutoProcessor

    image = Image.new("RGB", (900, 500), (10, 200, 30))
    text = "Describe  the image,\n then list it."
    processor = AutoProcessor.from_pretrained(source)
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]
    ours = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    input_ids, tiles = _hf_processor_input_ids(hf, image, text)
    assert tiles == ours["pixel_values"].shape[0]
    assert input_ids == ours["input_ids"][0].tolist()
