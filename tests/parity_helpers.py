"""Shared pieces of the held-out parity tests (`test_original_parity_s6/_s7`, `test_dropin_s9`): each fixture folder
holds a tiny original-layout checkpoint, `outputs.json` (the case and the original's answers/prompts) and
`io.safetensors` (the original's tensors), made by the generator scripts next to them."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoTokenizer


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


def spy_prompts(model, monkeypatch) -> list[list[str]]:
    """A list that receives the compacted prompts of every `chat` / `batch_chat` generation of `model`."""
    prompts: list[list[str]] = []
    original = model._generate_text

    def spy(tokenizer, texts, *args, **kwargs):
        prompts.append([compact_prompt(text) for text in texts])
        return original(tokenizer, texts, *args, **kwargs)

    monkeypatch.setattr(model, "_generate_text", spy)
    return prompts
