"""Saving an `OriginalLlamaTokenizer` (the Phi-3 / Yi tokenizer of an InternVL folder) leaves the live tokenizer as
it is: the save used to swap the object's class to transformers' `LlamaTokenizer` and rewrite its `legacy` state for
the duration of the save, so another thread encoding meanwhile got transformers 5's ids (not the original's)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer, LlamaTokenizer

import transformers_internvl  # noqa: F401  (registers the InternVL loaders)
from transformers_internvl.llama_slow_tokenizer import OriginalLlamaTokenizer

FIXTURES = Path(__file__).parent / "fixtures"
PHI3 = FIXTURES / "dropin_s9" / "phi3_tokenizer"
LEGACY = FIXTURES / "legacy_tokenizer_s9"
PHI3_MODEL = FIXTURES / "dropin_s9" / "mini-4b-phi3-v1"
PHI3_EXPECTED = json.loads((PHI3 / "expected.json").read_text(encoding="utf-8"))


def _folder(tmp_path, name):
    directory = tmp_path / name
    shutil.copytree(PHI3 / name, directory, ignore=shutil.ignore_patterns("*.py", "*.json.gz"))
    shutil.copy(PHI3_MODEL / "config.json", directory / "config.json")
    return directory


@pytest.mark.parametrize("name", sorted(PHI3_EXPECTED["folders"]))
def test_saving_never_changes_the_live_tokenizer(name, tmp_path, monkeypatch):
    tokenizer = AutoTokenizer.from_pretrained(_folder(tmp_path, name))
    assert type(tokenizer) is OriginalLlamaTokenizer
    strings = PHI3_EXPECTED["strings"][:40]
    expected = [record["input_ids"] for record in PHI3_EXPECTED["folders"][name][:40]]
    state_before = (dict(tokenizer.init_kwargs), "legacy" in tokenizer.__dict__, tokenizer.__dict__.get("legacy"))
    seen = []
    real_save = LlamaTokenizer._save_pretrained

    def save_and_look(self, *args, **kwargs):
        # what another thread would see of the live tokenizer in the middle of the save
        seen.append((type(tokenizer), tokenizer(strings)["input_ids"]))
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(LlamaTokenizer, "_save_pretrained", save_and_look)
    tokenizer.save_pretrained(tmp_path / "saved")
    assert seen and seen[0][0] is OriginalLlamaTokenizer
    assert seen[0][1] == expected
    assert (dict(tokenizer.init_kwargs), "legacy" in tokenizer.__dict__, tokenizer.__dict__.get("legacy")) == (
        state_before
    )
    config = json.loads((tmp_path / "saved" / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] == "LlamaTokenizer" and config["legacy"] is False
    monkeypatch.undo()
    # beside the InternVL config.json (a tokenizer-only folder stays transformers' own class, by design)
    shutil.copy(PHI3_MODEL / "config.json", tmp_path / "saved" / "config.json")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert reloaded(strings)["input_ids"] == expected


LEGACY_FOLDERS = ["hermes-no-key", "hermes-legacy-true"]


def _legacy_folder(tmp_path, name):
    directory = tmp_path / name
    shutil.copytree(LEGACY / name, directory, ignore=shutil.ignore_patterns("*.py", "*.json.gz"))
    shutil.copy(PHI3_MODEL / "config.json", directory / "config.json")
    return directory


# The original's slow `LlamaTokenizer` (transformers 4.47.1, `use_fast=False` as InternVL's code loads it) on these
# folders, which set no `padding_side`: `tokenizer(["a", "a b c d"], padding=True)` (checked with /tmp/origvenv).
ORIGINAL_PADDED = {"input_ids": [[1, 270, 0, 0, 0], [1, 270, 290, 275, 323]], "attention_mask": [[1, 1, 0, 0, 0], [1] * 5]}


@pytest.mark.parametrize("name", LEGACY_FOLDERS)
def test_a_folder_without_padding_side_pads_right_as_the_original(name, tmp_path):
    directory = _legacy_folder(tmp_path, name)
    assert "padding_side" not in json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert type(tokenizer) is OriginalLlamaTokenizer and tokenizer.padding_side == "right"
    padded = tokenizer(["a", "a b c d"], padding=True)
    assert {key: padded[key] for key in ORIGINAL_PADDED} == ORIGINAL_PADDED
    # an explicit choice is kept
    assert AutoTokenizer.from_pretrained(directory, padding_side="left").padding_side == "left"
