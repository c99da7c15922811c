"""`AutoProcessor` on InternVL folders that cannot give an InternVL processor (issue 12): a clear error instead of a
bare tokenizer that drops images, or a tokenizer without vocabulary."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import QWEN2_DIR, QWEN2_TOKENIZER
from transformers import AutoProcessor

import transformers_internvl  # noqa: F401  (registers the classes)
from transformers_internvl import InternVLProcessor

CONFIG = json.loads((QWEN2_DIR / "config.json").read_text())


def _folder(tmp_path: Path, config: str | None, tokenizer_files: bool = True) -> Path:
    if tokenizer_files:
        shutil.copytree(QWEN2_TOKENIZER, tmp_path, dirs_exist_ok=True)
    if config is not None:
        (tmp_path / "config.json").write_text(config)
    return tmp_path


def test_complete_folder_gives_the_processor(tmp_path):
    assert isinstance(AutoProcessor.from_pretrained(_folder(tmp_path, json.dumps(CONFIG))), InternVLProcessor)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        (None, r"holds an InternVL tokenizer .* but has no config.json .* bare Qwen2Tokenizer, which drops images"),
        ("{}", r"has a config.json without `model_type`"),
        ('{"hidden_size": 64}', r"has a config.json without `model_type`"),
    ],
)
def test_internvl_tokenizer_without_usable_config(tmp_path, config, match):
    with pytest.raises(OSError, match=match):
        AutoProcessor.from_pretrained(_folder(tmp_path, config))


@pytest.mark.parametrize("missing", ["llm_config", "vision_config"])
def test_internvl_config_that_cannot_load(tmp_path, missing):
    config = {key: value for key, value in CONFIG.items() if key != missing}
    with pytest.raises(ValueError, match=rf"InternVL config that cannot be loaded .*missing `{missing}`"):
        AutoProcessor.from_pretrained(_folder(tmp_path, json.dumps(config)))


def test_broken_json_is_an_error(tmp_path):
    with pytest.raises(OSError, match=r"not a valid JSON file"):
        AutoProcessor.from_pretrained(_folder(tmp_path, "{not json"))


def test_folder_without_tokenizer_files(tmp_path):
    with pytest.raises(OSError, match=r"has no vocabulary for its tokenizer"):
        AutoProcessor.from_pretrained(_folder(tmp_path, json.dumps(CONFIG), tokenizer_files=False))
    # Only tokenizer_config.json: no one-entry tokenizer either.
    shutil.copy(QWEN2_TOKENIZER / "tokenizer_config.json", tmp_path)
    with pytest.raises(OSError, match=r"has no vocabulary"):
        AutoProcessor.from_pretrained(tmp_path)


def test_other_models_are_untouched(tmp_path):
    other = _folder(tmp_path / "other", json.dumps({"model_type": "bert"}))
    result = AutoProcessor.from_pretrained(other)  # another model's folder: transformers' answer stands
    assert not isinstance(result, InternVLProcessor)
