"""Paths, token ids and folder builders shared by the tests (import with `from helpers import ...`).

Everything here reads the checked-in fixtures (`tests/fixtures/README.md` says how they were made); nothing downloads.
`conftest.py` wraps the costly ones in session-scoped fixtures.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
MODELS = FIXTURES / "models"
TOKENIZERS = FIXTURES / "tokenizers"

# The two tiny random InternVL checkpoints in the original layout (config.json, model.safetensors, meta.json with
# the token ids of their reference inputs, io.safetensors with the original implementation's outputs).
QWEN2_DIR = MODELS / "tiny-qwen2"
INTERNLM2_DIR = MODELS / "tiny-internlm2"
QWEN2_TOKENIZER = TOKENIZERS / "qwen2-tiny"

# Files of an original checkpoint folder that the tests copy (meta.json / io.safetensors are test data, not model).
CHECKPOINT_FILES = ("config.json", "generation_config.json", "model.safetensors")


def model_meta(model: str | Path) -> dict:
    """The `meta.json` of a fixture model: a name under `fixtures/models`, or a folder holding a copy of it."""
    folder = MODELS / model if isinstance(model, str) else Path(model)
    return json.loads((folder / "meta.json").read_text())


def image_token_id(model: str | Path) -> int:
    """The `<IMG_CONTEXT>` id of a fixture model's reference inputs (its `meta.json`)."""
    return model_meta(model)["token_ids"]["<IMG_CONTEXT>"]


# `<IMG_CONTEXT>` and pad of the tiny Qwen2 model: the ids of the `qwen2-tiny` tokenizer (its added_tokens.json).
QWEN2_IMAGE_TOKEN_ID = image_token_id("tiny-qwen2")
QWEN2_PAD_ID = model_meta("tiny-qwen2")["token_ids"]["pad"]


def copy_tokenizer(tokenizer: str, directory: Path) -> Path:
    """Copies the tokenizer files of `fixtures/tokenizers/<tokenizer>` (not its `expected.json`) into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    for file in (TOKENIZERS / tokenizer).iterdir():
        if file.name != "expected.json":
            shutil.copy(file, directory / file.name)
    return directory


def original_model_dir(directory: Path, model: str = "tiny-qwen2", tokenizer: str | None = "qwen2-tiny") -> Path:
    """An original-layout checkpoint folder: the fixture model's weights and configs, with a tokenizer next to them
    (`tokenizer=None`: weights only). `directory` is created if needed; returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in CHECKPOINT_FILES:
        shutil.copy(MODELS / model / name, directory / name)
    if tokenizer:
        copy_tokenizer(tokenizer, directory)
    return directory


def load_model(model: str | Path = "tiny-qwen2", **kwargs):
    """`AutoModelForImageTextToText` on a fixture model (a name under `fixtures/models`, or a folder with its
    `meta.json`), with the `<IMG_CONTEXT>` id of its reference inputs unless `image_token_id` is given; other keywords
    go to `from_pretrained`."""
    from transformers import AutoModelForImageTextToText

    folder = MODELS / model if isinstance(model, str) else Path(model)
    kwargs.setdefault("image_token_id", image_token_id(folder))
    return AutoModelForImageTextToText.from_pretrained(folder, **kwargs)


# Tiny random InternVL configs for the convention tests: 32-wide, 2-layer towers; each test adds its own keys.
LLM_ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "internlm2": "InternLM2ForCausalLM"}


def tiny_vision_config(image_size: int, **overrides) -> dict:
    """An InternViT `vision_config` dict with `image_size` px tiles of 14 px patches."""
    config = {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "image_size": image_size,
        "patch_size": 14,
    }
    return {**config, **overrides}


def tiny_text_config(llm: str = "qwen2", **overrides) -> dict:
    """An `llm_config` / `text_config` dict of a 2-layer LLM (`llm`: a key of `LLM_ARCHITECTURES`), vocabulary 99."""
    config = {
        "architectures": [LLM_ARCHITECTURES[llm]],
        "vocab_size": 99,
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
    }
    return {**config, **overrides}


# The preprocessor_config.json of the original OpenGVLab checkpoints: a CLIP image processor for a 448 px resize and
# crop, which the original code never used (it tiles with its own transform).
ORIGINAL_PREPROCESSOR_CONFIG = {
    "crop_size": 448,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "resample": 3,
    "size": 448,
}


def qwen2_processor(**image_processor_kwargs):
    """An InternVL processor on the tiny Qwen2 tokenizer, image and video processors with default settings except
    `image_processor_kwargs` (e.g. `max_dynamic_patch`)."""
    from transformers import AutoTokenizer

    from transformers_internvl.processing.image_processing_internvl import InternVLImageProcessor
    from transformers_internvl.processing.processing_internvl import InternVLProcessor
    from transformers_internvl.processing.video_processing_internvl import InternVLVideoProcessor

    return InternVLProcessor(
        image_processor=InternVLImageProcessor(**image_processor_kwargs),
        tokenizer=AutoTokenizer.from_pretrained(QWEN2_TOKENIZER),
        video_processor=InternVLVideoProcessor(),
    )


# Tile size of `small_tile_qwen2_model`: 64 patches, 16 image tokens per tile (a 448 px tile: 1024 patches, 256
# tokens). With 56 px tiles (4 tokens) a `select_layer` / `ps_version` edit between turns no longer changed answers.
SMALL_TILE_SIZE = 112


def small_tile_qwen2_model():
    """A random InternVL model with the tiny Qwen2 model's configuration (`fixtures/models/tiny-qwen2`: vocabulary,
    `<IMG_CONTEXT>` id, template, tower sizes) but `SMALL_TILE_SIZE` px tiles: for the multi-turn `chat()` tests,
    where the tile size does not matter and 448 px tiles cost most of the time. Seeded (`torch.manual_seed(0)`,
    the global generator is left as it was), float32, eval mode.

    Both towers are initialised with `initializer_range=0.1` (the fixture config says 0.02): with 0.02, or with the
    fixture's own weights on 56 px tiles, greedy answers ignored the image, a 1.5x `k_proj` change or a
    `ps_version` edit, so the cache-reuse comparisons (cached turn == fresh run) could not fail.
    `conftest.small_tile_qwen2` checks that greedy answers vary from token to token and with the image."""
    import torch

    from transformers_internvl import InternVLConfig, InternVLForConditionalGeneration

    raw = json.loads((QWEN2_DIR / "config.json").read_text())
    raw.pop("model_type", None)
    raw["force_image_size"] = SMALL_TILE_SIZE
    raw["vision_config"].update(image_size=SMALL_TILE_SIZE, initializer_range=0.1)
    raw["llm_config"]["initializer_range"] = 0.1
    config = InternVLConfig(**raw)
    config.image_token_id = QWEN2_IMAGE_TOKEN_ID
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = InternVLForConditionalGeneration(config)
    return model.float().eval()


def small_tiles(count: int, seed: int = 0):
    """`count` random `SMALL_TILE_SIZE` px tiles, shape (count, 3, SMALL_TILE_SIZE, SMALL_TILE_SIZE)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, SMALL_TILE_SIZE, SMALL_TILE_SIZE, generator=generator)


def tokenized_chat(processor, conversation, processor_kwargs: dict | None = None):
    """`processor.apply_chat_template` of `conversation` (one or a batch) with the generation prompt, tokenized into a
    dict of `"pt"` tensors; `processor_kwargs` go to the processor call."""
    return processor.apply_chat_template(
        conversation,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs=processor_kwargs,
    )


@contextlib.contextmanager
def transformers_warnings(caplog):
    """Inside the block, transformers' logger propagates to pytest's `caplog`, which records WARNING and above."""
    from transformers.utils import logging as hf_logging

    hf_logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            yield
    finally:
        hf_logging.disable_propagation()
