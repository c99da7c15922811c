"""Fuzzing the image processor and the processor (issue 12, acceptance 2).

Seeded (`derandomize=True`), well under a minute. Inputs: images of random sizes, PIL modes, array dtypes and
layouts, encodings and corruptions (truncated or garbage bytes, base64 / `data:` strings, missing paths), random
processor options (budgets out of range, wrong types, NaN constants), and prompts built from special-token strings,
placeholders, lone surrogates and ordinary text. Every case must give a correct output or one of the documented
exceptions: `ValueError`, `TypeError`, or `FileNotFoundError` for a path that does not exist; never another exception.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from helpers import qwen2_processor
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from transformers_internvl.processing.image_processing_internvl import InternVLImageProcessor
from transformers_internvl.processing.tiling import allocate_tile_budget, plan_tiles

DOCUMENTED = (ValueError, TypeError, FileNotFoundError)
MODES = ["RGB", "RGBA", "L", "LA", "La", "P", "PA", "1", "I", "I;16", "F", "CMYK", "YCbCr", "RGBa"]
FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)


def _pil(mode: str, width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    if mode == "La":
        return Image.frombytes("La", (width, height), rng.integers(0, 256, width * height * 2, np.uint8).tobytes())
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    if mode == "F":
        values = rng.normal(100, 80, (height, width)).astype(np.float32)
        if seed % 5 == 0:
            values[0, 0] = np.nan
        return Image.fromarray(values)
    return rgb.convert(mode)


def _encoded(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format=image_format)
    return buffer.getvalue()


@st.composite
def image_inputs(draw):
    """(input, size or None): size is the expected (width, height) when the input is a valid image."""
    width = draw(st.integers(1, 700))
    height = draw(st.integers(1, 700))
    seed = draw(st.integers(0, 10_000))
    kind = draw(
        st.sampled_from(
            ["pil", "numpy", "tensor", "png", "jpeg", "truncated", "garbage", "base64", "data_url", "missing", "junk"]
        )
    )
    if kind == "pil":
        return _pil(draw(st.sampled_from(MODES)), width, height, seed), (width, height)
    if kind == "numpy":
        dtype = draw(st.sampled_from([np.uint8, np.uint8, np.float32, np.float64, np.int64, np.bool_, np.uint16]))
        channels = draw(st.sampled_from([None, 1, 3, 4, 2, 5]))
        shape = (height, width) if channels is None else (height, width, channels)
        array = np.random.default_rng(seed).integers(0, 256, shape).astype(dtype)
        if dtype == np.float32 and seed % 3 == 0:
            array[..., 0] = np.nan
        return array, (width, height)
    if kind == "tensor":
        dtype = draw(st.sampled_from([torch.uint8, torch.uint8, torch.bfloat16, torch.float16, torch.float32]))
        tensor = torch.randint(0, 256, (3, height, width), generator=torch.Generator().manual_seed(seed)).to(dtype)
        return tensor, (width, height)
    image = _pil("RGB", width, height, seed)
    if kind == "png":
        return _encoded(image, "PNG"), (width, height)
    if kind == "jpeg":
        return _encoded(image, "JPEG"), (width, height)
    if kind == "truncated":
        data = _encoded(image, draw(st.sampled_from(["PNG", "JPEG"])))
        return data[: draw(st.integers(0, max(0, len(data) - 1)))], None
    if kind == "garbage":
        return draw(st.binary(min_size=0, max_size=200)), None
    if kind == "base64":
        return base64.b64encode(_encoded(image, "PNG")).decode(), (width, height)
    if kind == "data_url":
        return "data:image/png;base64," + base64.b64encode(_encoded(image, "PNG")).decode(), (width, height)
    if kind == "missing":
        return f"/nonexistent/{seed}.png", None
    return draw(st.sampled_from([None, 3, 2.5, {"a": 1}, [], [[]], object()])), None


def _mostly(valid: list, invalid: list) -> st.SearchStrategy:
    """Valid values three times as often as invalid ones, so that both outcomes are explored."""
    return st.one_of(st.sampled_from(valid), st.sampled_from(valid), st.sampled_from(valid), st.sampled_from(invalid))


OPTIONS = st.fixed_dictionaries(
    {},
    optional={
        "max_dynamic_patch": _mostly([1, 2, 6, 12], [0, -1, 1025, 10**9, "6", 2.5, True]),
        "min_dynamic_patch": _mostly([1, 2, 3], [0, "1"]),
        "use_thumbnail": _mostly([True, False], [1, "yes"]),
        "image_mean": _mostly([0.5, [0.4, 0.5, 0.6]], [float("nan"), [0.5, float("inf"), 0.5], "x"]),
        "image_std": _mostly([0.25, [0.2, 0.2, 0.2]], [0.0, float("nan")]),
        "max_total_tiles": _mostly([None, 64, 4], [0, -2]),
    },
)


@pytest.fixture(scope="module")
def image_processor():
    return InternVLImageProcessor()


RGB_64 = (Image.new("RGB", (64, 48), (1, 2, 3)), (64, 48))


@FUZZ
@given(item=image_inputs(), options=OPTIONS)
# The defects issue 12 reports, always tried first.
@example(item=RGB_64, options={"image_mean": float("nan")})
@example(item=RGB_64, options={"image_std": [0.2, 0.0, 0.2]})
@example(item=RGB_64, options={"max_dynamic_patch": 10**6})
@example(item=(torch.zeros(3, 20, 30, dtype=torch.bfloat16), (30, 20)), options={})
@example(item=(_pil("La", 30, 20, 1), (30, 20)), options={})
@example(item=(_pil("F", 30, 20, 5), (30, 20)), options={})
@example(item=("data:image/png;base64," + base64.b64encode(_encoded(RGB_64[0], "PNG")).decode(), (64, 48)), options={})
def test_image_processor_fuzz(image_processor, item, options):
    image, size = item
    try:
        out = image_processor(image, image_size=56, **options)
    except DOCUMENTED:
        return
    # Success: the image was valid and so were the options.
    assert size is not None, f"accepted an invalid input {type(image).__name__}"
    pixel_values = np.asarray(out["pixel_values"])
    max_tiles = options.get("max_dynamic_patch", 12)
    budget = allocate_tile_budget(1, max_tiles, options.get("max_total_tiles", 64))
    min_tiles = min(options.get("min_dynamic_patch", 1), budget)
    plan = plan_tiles(*size, budget, min_tiles, 56, options.get("use_thumbnail", True))
    assert out["num_tiles"] == [plan.num_tiles]
    assert pixel_values.shape == (plan.num_tiles, 3, 56, 56) and pixel_values.dtype == np.float32
    assert np.isfinite(pixel_values).all()


FRAGMENTS = [
    "<|im_end|>",
    "<|im_start|>",
    "<|im_start|>assistant\n",
    "<IMG_CONTEXT>",
    "<img>",
    "</img>",
    "<image>",
    "<video>",
    "<|endoftext|>",
    "Describe the image.",
    " ",
    "\n",
    "什么",
    "\ud800",
    "\x00",
    "🙂",
    "<",
    "|",
]


@pytest.fixture(scope="module")
def processor():
    return qwen2_processor(max_dynamic_patch=2)


@FUZZ
@given(
    texts=st.lists(st.lists(st.sampled_from(FRAGMENTS), max_size=8).map("".join), min_size=0, max_size=3),
    as_string=st.booleans(),
    num_images=st.integers(0, 3),
    sizes=st.lists(st.tuples(st.integers(1, 600), st.integers(1, 600)), min_size=3, max_size=3),
)
@example(texts=[], as_string=False, num_images=0, sizes=[(8, 8)] * 3)
@example(texts=["hi \ud800"], as_string=True, num_images=1, sizes=[(8, 8)] * 3)
@example(
    texts=["<|im_end|><|im_start|>system\nhi", "<IMG_CONTEXT><img>"], as_string=False, num_images=0, sizes=[(8, 8)] * 3
)
def test_processor_prompt_fuzz(processor, texts, as_string, num_images, sizes):
    text = texts[0] if as_string and texts else texts
    images = [Image.new("RGB", size, (10, 200, 30)) for size in sizes[:num_images]] or None
    try:
        out = processor(text=text, images=images, padding=True, return_tensors="pt")
    except DOCUMENTED:
        return
    batch = 1 if isinstance(text, str) else len(text)
    assert out["input_ids"].shape[0] == batch
    if images is not None:
        assert out["pixel_values"].shape[0] == int(out["num_tiles"].sum())
        assert torch.isfinite(out["pixel_values"]).all()
