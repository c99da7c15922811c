"""`--verify`: run the same random image + prompt through the source and the converted checkpoint and compare.

The original-layout side is loaded with this package (`AutoModelForImageTextToText` after registration), the `-hf`
side with transformers' own `InternVLForConditionalGeneration`. Both use SDPA attention and the same dtype (the
conversion dtype, float32 when none was given), so the weights compared are bit-identical and the only differences
are the two implementations' operation order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)

# Largest max|Δlogits| accepted, by dtype. float32: the issue's bound. Measured on CPU (SDPA, tiny Qwen2 / InternLM2
# reference checkpoints, 4 random inputs each): 0.0 in float32, bfloat16 and float16 (both sides run the same
# operations in the same order); the half-precision bounds leave room for kernels that differ on other hardware.
TOLERANCES = {torch.float32: 1e-5, torch.bfloat16: 5e-2, torch.float16: 5e-2}
NUM_TEXT_TOKENS = 8
NUM_TILES = 1
NEW_TOKENS = 8


def _load_original(path: Path, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForImageTextToText

    from .. import registration

    registration.register_all()
    return AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, attn_implementation="sdpa").eval()


def _load_hf(path: Path, dtype: torch.dtype) -> Any:
    from transformers import InternVLForConditionalGeneration

    return InternVLForConditionalGeneration.from_pretrained(path, dtype=dtype, attn_implementation="sdpa").eval()


def random_inputs(config: Any, image_token_id: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """`pixel_values` `(NUM_TILES, 3, S, S)` of a random image and `input_ids` `(1, L)`: random text, the image's
    `<IMG_CONTEXT>` run, random text. Ids come from the text vocabulary minus the image token."""
    generator = torch.Generator().manual_seed(seed)
    vision = config.vision_config
    size = vision.image_size[0] if isinstance(vision.image_size, (list, tuple)) else vision.image_size
    image_tokens = getattr(config, "image_seq_length", None) or config.num_image_token
    vocab_size = config.text_config.vocab_size
    pixel_values = torch.randn(NUM_TILES, 3, size, size, generator=generator)

    def text(count: int) -> torch.Tensor:
        ids = torch.randint(0, vocab_size - 1, (count,), generator=generator)
        return ids + (ids >= image_token_id).long()  # skip the image token id

    input_ids = torch.cat([text(NUM_TEXT_TOKENS), torch.full((image_tokens * NUM_TILES,), image_token_id), text(4)])
    return {"pixel_values": pixel_values, "input_ids": input_ids[None]}


def compare_models(original: Any, hf: Any, seed: int = 0) -> dict[str, Any]:
    """max|Δlogits| of one forward and whether `NEW_TOKENS` greedy tokens agree, for the original-layout model
    `original` and the transformers-port model `hf` holding the same weights."""
    inputs = random_inputs(hf.config, hf.config.image_token_id, seed)
    dtype = next(hf.parameters()).dtype
    pixel_values = inputs["pixel_values"].to(dtype)
    with torch.no_grad():
        logits_original = original(input_ids=inputs["input_ids"], pixel_values=pixel_values).logits.float()
        logits_hf = hf(input_ids=inputs["input_ids"], pixel_values=pixel_values).logits.float()
        generation = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False}
        tokens_original = original.generate(**inputs | {"pixel_values": pixel_values}, **generation)
        tokens_hf = hf.generate(**inputs | {"pixel_values": pixel_values}, **generation)
    length = inputs["input_ids"].shape[1]
    return {
        "max_abs_logits_diff": (logits_original - logits_hf).abs().max().item(),
        "greedy_tokens_match": torch.equal(tokens_original[:, length:], tokens_hf[:, length:]),
        "dtype": str(dtype).removeprefix("torch."),
    }


def verify_conversion(
    source: Path, result: Path, to: str, dtype: torch.dtype | None = None, merge_lora: str | Path | None = None
) -> dict[str, Any]:
    """Load `source` and `result` (conversion direction `to`), compare them with `compare_models`. With
    `merge_lora`, the source runs with the adapter unmerged (`peft.PeftModel`).

    Returns the comparison plus `tolerance` and `passed`; raises `ConversionError` when max|Δlogits| exceeds the
    tolerance of the dtype (`TOLERANCES`). Needs memory for both models."""
    from .checkpoint_io import ConversionError

    dtype = dtype or torch.float32
    original_path, hf_path = (source, result) if to == "hf" else (result, source)
    original = _load_original(Path(original_path), dtype)
    hf = _load_hf(Path(hf_path), dtype)
    if merge_lora is not None:
        from peft import PeftModel

        if to == "hf":
            original = PeftModel.from_pretrained(original, str(merge_lora)).eval()
        else:
            hf = PeftModel.from_pretrained(hf, str(merge_lora)).eval()
    if original.config.image_token_id is None:
        original.config.image_token_id = hf.config.image_token_id
    report = compare_models(original, hf)
    # A merged adapter differs from the unmerged one by the rounding of W + s·B@A: the LoRA tolerance of the
    # drop-in checks (fp32 1e-4) instead of the pure-relayout one.
    report["tolerance"] = max(TOLERANCES[dtype], 1e-4) if merge_lora is not None else TOLERANCES[dtype]
    report["passed"] = report["max_abs_logits_diff"] <= report["tolerance"]
    if not report["passed"]:
        raise ConversionError(
            f"verification failed: max|Δlogits| {report['max_abs_logits_diff']:.3g} > {report['tolerance']:g} "
            f"({report['dtype']}); greedy tokens {'match' if report['greedy_tokens_match'] else 'differ'}"
        )
    return report


__all__ = ["TOLERANCES", "compare_models", "random_inputs", "verify_conversion"]
