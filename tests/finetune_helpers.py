"""Shared helpers of the fine-tuning tests: tiny tokenizer, image processor, JSONL data on disk."""

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
from helpers import QWEN2_TOKENIZER
from PIL import Image
from transformers import AutoTokenizer

import transformers_internvl  # noqa: F401
from transformers_internvl.processing.image_processing_internvl import InternVLImageProcessor
from transformers_internvl.training.data import InternVLSupervisedDataset


def load_inputs_module(path: Path) -> ModuleType:
    """The fixture folder's inputs module at `path`, loaded by path under its file's stem: other fixture folders hold
    input modules too, and a shared sys.path entry would mix them up."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tokenizer():
    return AutoTokenizer.from_pretrained(QWEN2_TOKENIZER)


def write_image(path: Path, size=(300, 200), seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_jsonl(path: Path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def dataset(rows_or_path, root="", **kwargs):
    kwargs.setdefault("num_image_token", 256)
    kwargs.setdefault("max_dynamic_patch", 2)
    args = (tokenizer(), InternVLImageProcessor(), "internvl2_5")
    if isinstance(rows_or_path, (str, Path)):
        return InternVLSupervisedDataset.from_jsonl(rows_or_path, *args, root=str(root), **kwargs)
    return InternVLSupervisedDataset(rows_or_path, *args, root=str(root), **kwargs)


def original_name(name: str, head: str) -> str:
    """This package's parameter / module name (PEFT-wrapped or not) -> the original's, without PEFT prefixes."""
    name = name.removeprefix("base_model.model.").replace(".modules_to_save.default", "")
    for ours, theirs in (
        ("model.language_model.", "language_model.model."),
        ("model.vision_model.", "vision_model."),
        ("model.mlp1.", "mlp1."),
        ("lm_head.", f"language_model.{head}."),
    ):
        if name.startswith(ours):
            return theirs + name[len(ours) :]
    raise AssertionError(f"unexpected name {name}")


HUMAN_TURN = {"from": "human", "value": "What is it?"}
GPT_TURN = {"from": "gpt", "value": "A picture."}


def write_small_dataset(directory: Path) -> Path:
    """`directory` with one 64x48 image `a.png` and `a.jsonl`: three one-image rows `[HUMAN_TURN, GPT_TURN]`."""
    write_image(directory / "a.png", (64, 48))
    write_jsonl(directory / "a.jsonl", [{"image": "a.png", "conversations": [HUMAN_TURN, GPT_TURN]}] * 3)
    return directory
