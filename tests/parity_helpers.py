"""Shared pieces of the held-out parity tests (`test_original_parity_s6/_s7`, `test_dropin_s9`,
`test_generation_s10/_s11`): each fixture folder holds a tiny original-layout checkpoint, `outputs.json` (the case and
the original's answers/prompts) and `io.safetensors` (the original's tensors), made by the generator scripts next to
them."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer


def compact_prompt(prompt: str) -> str:
    """`prompt` with each run of `<IMG_CONTEXT>` written `<IMG_CONTEXT*n>` (as the fixtures record prompts)."""
    return re.sub(r"(?:<IMG_CONTEXT>)+", lambda run: f"<IMG_CONTEXT*{len(run.group(0)) // 13}>", prompt)


def load_heldout_case(folder: Path, make_image: Callable) -> dict:
    """The fixture folder's metadata, tensors, tokenizer and the tiles of its `case["images"]` (`(w, h, seed,
    max_num)` each, drawn by `make_image`), as this package's processor makes them."""
    meta = json.loads((folder / "outputs.json").read_text(encoding="utf-8"))
    processor = AutoImageProcessor.from_pretrained(folder)
    pixel_list = [
        processor(images=make_image(w, h, seed), max_dynamic_patch=max_num, return_tensors="pt")["pixel_values"]
        for w, h, seed, max_num in meta["case"]["images"]
    ]
    return {
        "folder": folder,
        "meta": meta,
        "io": load_file(folder / "io.safetensors"),
        "tokenizer": AutoTokenizer.from_pretrained(folder),
        "pixel_list": pixel_list,
        "num_patches": [p.shape[0] for p in pixel_list],
    }


def load_chat_checkpoint(folder: Path, tile_size: Callable[[dict], int], **attributes) -> tuple[Any, Any, int]:
    """(model in eval mode, tokenizer, tile size) of the held-out chat checkpoint in `folder`, on one torch thread;
    `tile_size` reads the tile side in pixels from the folder's `config.json`, and `attributes` (e.g.
    `reuse_chat_cache=False`) are set on the model."""
    torch.set_num_threads(1)
    config = json.loads((folder / "config.json").read_text())
    model = AutoModel.from_pretrained(folder).eval()
    for name, value in attributes.items():
        setattr(model, name, value)
    return model, AutoTokenizer.from_pretrained(folder), tile_size(config)


def spy_prompts(model, monkeypatch) -> list[list[str]]:
    """A list that receives the compacted prompts of every `chat` / `batch_chat` generation of `model`."""
    prompts: list[list[str]] = []
    original = model._generate_text

    def spy(tokenizer, texts, *args, **kwargs):
        prompts.append([compact_prompt(text) for text in texts])
        return original(tokenizer, texts, *args, **kwargs)

    monkeypatch.setattr(model, "_generate_text", spy)
    return prompts


def tiny_phi3_chat_setup(model_folder: Path, tokenizer, monkeypatch) -> tuple[Any, torch.Tensor, dict, list]:
    """What the Phi-3 tokenizer chat fixtures (`make_phi3_chat_s9.py`, `make_legacy_chat_s9.py`) ran: the tiny model
    of `model_folder` with `tokenizer`'s `<IMG_CONTEXT>` id, the tiles of `make_image(700, 1000, 95)` (6 at most),
    the greedy 12-token config (ids beyond the tokenizer suppressed), and a list that receives the ids of every
    prompt `chat` / `batch_chat` feed to generation."""
    import sys

    from transformers import AutoModel, AutoProcessor

    from transformers_internvl.modeling import chat as chat_module

    sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "heldout_s6"))
    from heldout_inputs import make_image

    model = AutoModel.from_pretrained(
        model_folder, dtype=torch.float32, image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    ).eval()
    processor = AutoProcessor.from_pretrained(model_folder)
    pixel_values = processor.image_processor(
        images=make_image(700, 1000, 95), max_dynamic_patch=6, return_tensors="pt"
    )["pixel_values"]
    config = dict(max_new_tokens=12, do_sample=False, suppress_tokens=list(range(len(tokenizer), 1004)))
    fed: list = []
    original = chat_module.generate_turn

    def spy(model, input_ids, *args, **kwargs):
        fed.extend(input_ids.tolist())
        return original(model, input_ids, *args, **kwargs)

    monkeypatch.setattr(chat_module, "generate_turn", spy)
    return model, pixel_values, config, fed


def assert_processor_feeds_original_ids(directory: Path, strings: list[str], expected: list[dict]) -> None:
    """`AutoProcessor` on `directory` (a tokenizer folder with an InternVL config.json) encodes the strings of
    `strings` that hold no image token as the original did (`expected[i]["input_ids"]`, from the original's
    fixtures); more than 100 strings are checked."""
    from transformers import AutoProcessor

    image_tokens = ("<img>", "</img>", "<IMG_CONTEXT>")
    processor = AutoProcessor.from_pretrained(directory)
    chosen = [i for i, text in enumerate(strings) if text and not any(token in text for token in image_tokens)]
    assert len(chosen) > 100
    ids = processor(text=[strings[i] for i in chosen])["input_ids"]
    assert [i for i, row in zip(chosen, ids) if row != expected[i]["input_ids"]] == []
