"""Session-11 newcomer pass: error messages a user of the original `chat` / `batch_chat` API, of a weights-only
folder or of a mismatched tokenizer meets, naming what they passed and what to do."""

import json
import shutil

import pytest
import torch
from transformers import AutoProcessor
from transformers.testing_utils import CaptureLogger

import transformers_internvl  # noqa: F401  (registers the Auto classes)
from helpers import QWEN2_DIR, QWEN2_TOKENIZER

GREEDY = {"max_new_tokens": 2, "do_sample": False}


def _tiles(count: int) -> torch.Tensor:
    return torch.zeros(count, 3, 448, 448)


def test_batch_chat_without_tile_counts_names_the_original_keyword(qwen2_model, qwen2_tokenizer):
    """`batch_chat(tokenizer, pixel_values, questions, generation_config)` without `num_patches_list`: the original
    fails (it iterates over `None`); the error names `num_patches_list`, the keyword of the signature the caller
    uses, not only the internal alias `num_tiles_list`."""
    with pytest.raises(ValueError, match=r"`num_patches_list`.*required"):
        qwen2_model.batch_chat(qwen2_tokenizer, _tiles(2), ["<image>\nA", "<image>\nB"], GREEDY)


def test_batch_chat_tile_count_length_error_names_num_patches_list(qwen2_model, qwen2_tokenizer):
    with pytest.raises(ValueError, match=r"`num_patches_list`.* must have one entry per question"):
        qwen2_model.batch_chat(qwen2_tokenizer, _tiles(2), ["A", "B"], GREEDY, num_patches_list=[2])


def test_chat_placeholder_count_warning_names_num_patches_list(qwen2_model, qwen2_tokenizer):
    """Two `<image>` placeholders and one image: the original replaces the first only; the warning names the tile
    counts by the keyword `chat` takes (`num_patches_list`)."""
    from transformers.utils import logging

    from transformers_internvl import chat_templates

    with CaptureLogger(logging.get_logger(chat_templates.__name__)) as captured:
        qwen2_model.chat(qwen2_tokenizer, _tiles(1), "<image> and <image>", GREEDY)
    assert "num_patches_list=[1]" in captured.out, captured.out
    assert "num_tiles_list" not in captured.out, captured.out


def test_negative_tile_count_names_num_patches_list(qwen2_model, qwen2_tokenizer):
    with pytest.raises(ValueError, match=r"num_patches_list"):
        qwen2_model.chat(qwen2_tokenizer, _tiles(1), "<image>\nQ", GREEDY, num_patches_list=[-1])


def test_weights_only_folder_error_says_to_add_the_tokenizer_files(tmp_path):
    """A folder with config.json and weights but no tokenizer files (as `tests/fixtures/models/tiny-qwen2`, or a
    download without them): the error does not refer to a tokenizer_config.json that is not there, and says which
    files to add."""
    folder = tmp_path / "weights-only"
    folder.mkdir()
    shutil.copy(QWEN2_DIR / "config.json", folder / "config.json")
    with pytest.raises(OSError, match=r"has no vocabulary for its tokenizer") as raised:
        AutoProcessor.from_pretrained(folder)
    message = str(raised.value)
    assert "next to tokenizer_config.json" not in message, message
    assert "tokenizer files" in message and "config.json" in message, message


def test_internlm2_decode_error_mentions_a_tokenizer_of_another_model(fixtures_dir):
    """A model whose vocabulary is larger than the tokenizer's (a tokenizer of another checkpoint) generates ids
    the tokenizer lacks; the decode error says to check that pairing, besides padding / -100 labels."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(fixtures_dir / "tokenizers" / "internlm2-dummy-prefix")
    with pytest.raises(ValueError, match=r"must be ids of this tokenizer") as raised:
        tokenizer.decode([5, len(tokenizer) + 10])
    assert "vocab_size" in str(raised.value), str(raised.value)


def test_readme_tiny_checkpoint_recipe_files_exist():
    """The README's no-hub recipe copies these files; they must stay where it says."""
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        assert (QWEN2_DIR / name).is_file(), name
    assert (QWEN2_TOKENIZER / "merges.txt").is_file()
    assert json.loads((QWEN2_TOKENIZER / "tokenizer_config.json").read_text())


def test_slow_llama_decode_error_mentions_a_tokenizer_of_another_model(fixtures_dir):
    """The same for the sentencepiece Llama tokenizers (Phi-3) that decode as the original's slow class (IndexError,
    as sentencepiece's "piece id is out of range")."""
    from transformers import LlamaTokenizer

    from transformers_internvl.llama_slow_tokenizer import as_original_tokenizer

    tokenizer = as_original_tokenizer(
        LlamaTokenizer.from_pretrained(fixtures_dir / "legacy_tokenizer_s9" / "phi3-rstrip-no-key")
    )
    with pytest.raises(IndexError, match=r"outside the vocabulary") as raised:
        tokenizer.decode([1, len(tokenizer) + 3])
    assert "vocab_size" in str(raised.value), str(raised.value)


def test_example_adapter_names_its_base_model_by_an_absolute_path(tmp_path, monkeypatch):
    """README: after `examples/finetune_lora.py --model tests/fixtures/models/tiny-qwen2 ...` (a path relative to the
    repository, as the README writes it), `AutoPeftModelForCausalLM.from_pretrained("out")` loads the base model
    from the adapter's `base_model_name_or_path`. A relative path there only resolved from the directory training
    ran in ("Repo id must be in the form 'repo_name' or 'namespace/repo_name'" anywhere else)."""
    import os
    import sys
    from pathlib import Path

    pytest.importorskip("peft")
    from peft import AutoPeftModelForCausalLM

    sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
    import finetune_lora

    monkeypatch.chdir(QWEN2_DIR.parents[1])  # tests/fixtures
    relative = os.path.relpath(QWEN2_DIR)  # models/tiny-qwen2
    out = tmp_path / "out"
    finetune_lora.main(
        ["--model", relative, "--tokenizer", str(QWEN2_TOKENIZER), "--output-dir", str(out), "--max-steps", "1",
         "--lora-rank", "2", "--batch-size", "1", "--max-dynamic-patch", "1", "--disable-tqdm"]
    )  # fmt: skip
    base = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(base).is_absolute() and Path(base) == QWEN2_DIR.resolve(), base
    monkeypatch.chdir(tmp_path)
    model = AutoPeftModelForCausalLM.from_pretrained(out)
    assert type(model.base_model.model).__name__ == "InternVLChatForConditionalGeneration"
