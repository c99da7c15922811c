"""Atomic `save_pretrained` (issue 12): a reader, or a save killed at any point, sees the old checkpoint or the new
one, never the new `config.json` with the old weights; extra files are kept, stale weights are not; modes follow
the umask."""

from __future__ import annotations

import multiprocessing
import os
import random
import shutil
import stat
import time
from pathlib import Path

import pytest
import torch
from helpers import QWEN2_TOKENIZER
from safetensors.torch import save_file
from transformers import AutoTokenizer

import transformers_internvl  # noqa: F401  (registers the classes)
from transformers_internvl import InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor
from transformers_internvl.atomic_save import atomic_save_directory, is_weight_file

VISION = {
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "image_size": 56,
    "patch_size": 14,
}
TEXT = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "vocab_size": 64,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 64,
}


def _model(version: int) -> InternVLForConditionalGeneration:
    """A tiny model whose config (`vision_batch_size`) and weights (`lm_head`) both carry `version`."""
    config = InternVLConfig(vision_config=VISION, text_config=TEXT, template="internvl2_5", vision_batch_size=version)
    model = InternVLForConditionalGeneration(config)
    with torch.no_grad():
        model.lm_head.weight.fill_(float(version))
    return model


def _version(folder: Path) -> int:
    """The version of the checkpoint in `folder`; fails unless config and weights agree."""
    model = InternVLForConditionalGeneration.from_pretrained(folder)
    version = model.config.vision_batch_size
    weights = torch.unique(model.lm_head.weight).tolist()
    assert weights == [float(version)], f"config says version {version}, weights say {weights}"
    return version


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.parent.iterdir() if path.name.startswith(f".{folder.name}.tmp-"))


def test_save_keeps_extra_files_and_drops_stale_weights(tmp_path):
    target = tmp_path / "ckpt"
    _model(1).save_pretrained(target)
    (target / "README.md").write_text("mine")
    (target / "notes").mkdir()
    (target / "notes" / "a.txt").write_text("a")
    stale = "model-00001-of-00002.safetensors"
    save_file({"x": torch.zeros(1)}, target / stale)
    _model(2).save_pretrained(target)
    assert _version(target) == 2
    assert (target / "README.md").read_text() == "mine" and (target / "notes" / "a.txt").read_text() == "a"
    assert not (target / stale).exists()
    assert _leftovers(target) == []


def test_processor_and_model_saves_keep_each_other(tmp_path):
    target = tmp_path / "ckpt"
    processor = InternVLProcessor(tokenizer=AutoTokenizer.from_pretrained(QWEN2_TOKENIZER))
    processor.save_pretrained(target)
    _model(3).save_pretrained(target)
    assert (target / "tokenizer_config.json").exists() and (target / "processor_config.json").exists()
    files = processor.save_pretrained(target)
    assert _version(target) == 3  # the processor save kept the weights and config
    assert all(str(path).startswith(str(target)) and Path(path).exists() for path in files)
    assert _leftovers(target) == []


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_modes_follow_the_umask(tmp_path, mask):
    previous = os.umask(mask)
    try:
        target = tmp_path / "ckpt"
        _model(1).save_pretrained(target)
        assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~mask
        for path in target.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path.name
    finally:
        os.umask(previous)


def test_replaced_folder_keeps_its_mode(tmp_path):
    target = tmp_path / "ckpt"
    _model(1).save_pretrained(target)
    os.chmod(target, 0o750)
    _model(2).save_pretrained(target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o750


def test_a_failed_save_leaves_the_old_checkpoint(tmp_path):
    target = tmp_path / "ckpt"
    _model(1).save_pretrained(target)
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_save_directory(target) as staging:
            (Path(staging) / "config.json").write_text("{}")
            raise RuntimeError("boom")
    assert _version(target) == 1 and _leftovers(target) == []


def test_a_file_in_the_way_is_refused(tmp_path):
    target = tmp_path / "ckpt"
    target.write_text("not a folder")
    with pytest.raises(OSError, match="exists and is not a folder"):
        with atomic_save_directory(target):
            pass


def test_weight_file_names():
    for name in ("model.safetensors", "model-00001-of-00003.safetensors", "model.safetensors.index.json"):
        assert is_weight_file(name)
    for name in ("pytorch_model.bin", "pytorch_model-00002-of-00002.bin", "pytorch_model.bin.index.json"):
        assert is_weight_file(name)
    for name in ("io.safetensors", "adapter_model.safetensors", "config.json", "tokenizer.json", "model.py"):
        assert not is_weight_file(name)


# ---- kill test --------------------------------------------------------------------------------------------------------


def _save_child(target: str, version: int, started) -> None:
    model = _model(version)
    started.set()
    model.save_pretrained(target)


@pytest.mark.slow
def test_killed_saves_leave_the_old_or_the_new_checkpoint(tmp_path):
    """SIGKILL 20 saves at random points: the folder always loads as the previous or the new checkpoint."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "transformers_internvl", __name__])
    target = tmp_path / "ckpt"
    _model(1).save_pretrained(target)
    current = 1

    # One unkilled save to time a save.
    started = context.Event()
    child = context.Process(target=_save_child, args=(str(target), 2, started))
    child.start()
    started.wait(60)
    begin = time.monotonic()
    child.join(60)
    duration = time.monotonic() - begin
    assert child.exitcode == 0 and _version(target) == 2
    current = 2

    generator = random.Random(12)
    outcomes = {"old": 0, "new": 0}
    for _ in range(20):
        new = current + 1
        started = context.Event()
        child = context.Process(target=_save_child, args=(str(target), new, started))
        child.start()
        assert started.wait(60)
        time.sleep(generator.uniform(0, duration * 1.1))
        child.kill()  # SIGKILL (nothing if the save already finished)
        child.join(30)
        version = _version(target)
        assert version in (current, new), (version, current, new)
        outcomes["new" if version == new else "old"] += 1
        current = version
        # Killed saves leave at most their temporary folder beside the target, never files inside it.
        assert not [name for name in os.listdir(target) if name.endswith(".tmp") or name.startswith(".")]
    for leftover in _leftovers(target):
        shutil.rmtree(target.parent / leftover)
    assert outcomes["old"] > 0  # some kills landed mid-save


def test_relative_and_trailing_slash_targets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _model(1).save_pretrained("ckpt/")
    _model(2).save_pretrained("ckpt")
    assert _version(tmp_path / "ckpt") == 2 and _leftovers(tmp_path / "ckpt") == []
