"""Processor-level validation (issue 12): empty batches, lone surrogates, NaN/inf normalisation constants, unusual
dtypes and PIL modes, NaN pixels. Each gives a clear error or the original's result (`.convert('RGB')`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import qwen2_processor
from PIL import Image

from transformers_internvl.processing.image_processing_internvl import InternVLImageProcessor
from transformers_internvl.processing.video_processing_internvl import InternVLVideoProcessor


@pytest.fixture(scope="module")
def processor():
    return qwen2_processor(max_dynamic_patch=2)


def test_empty_text_list(processor):
    with pytest.raises(ValueError, match=r"`text` is an empty list"):
        processor(text=[])
    with pytest.raises(ValueError, match=r"`text` is an empty list"):
        processor(text=[], images=Image.new("RGB", (32, 32)))
    assert len(processor(text=[""])["input_ids"]) == 1


@pytest.mark.parametrize("bad", ["\ud800", "abc\udfffdef", "\udc80"])
def test_lone_surrogates(processor, bad):
    with pytest.raises(ValueError, match=r"`text\[1\]` is not valid Unicode.*position"):
        processor(text=["fine", bad])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"image_mean": float("nan")}, ValueError, "image_mean.*finite"),
        ({"image_mean": [0.5, float("inf"), 0.5]}, ValueError, "image_mean.*finite"),
        ({"image_std": [0.2, 0.2, float("nan")]}, ValueError, "image_std.*finite"),
        ({"image_std": 0.0}, ValueError, "image_std.*non-zero"),
        ({"image_std": [0.2, 0.0, 0.2]}, ValueError, "image_std.*non-zero"),
        ({"image_mean": "0.5"}, TypeError, "image_mean"),
        ({"image_mean": [True, 0.5, 0.5]}, TypeError, "image_mean"),
    ],
)
def test_normalisation_constants(kwargs, error, match):
    with pytest.raises(error, match=match):
        InternVLImageProcessor(**kwargs)
    with pytest.raises(error, match=match):
        InternVLImageProcessor()(Image.new("RGB", (16, 16)), **kwargs)
    with pytest.raises(error, match=match):
        InternVLVideoProcessor(**kwargs)
    with pytest.raises(error, match=match):
        InternVLVideoProcessor()(np.zeros((2, 8, 8, 3), np.uint8), **kwargs)


def test_numpy_float_constants_are_accepted():
    processor = InternVLImageProcessor(image_mean=np.float32(0.5), image_std=[np.float64(0.25)] * 3)
    values = processor(Image.new("RGB", (8, 8), (255, 0, 128)), image_size=8)["pixel_values"]
    assert np.isfinite(values).all()
    assert values[0, 0, 0, 0] == pytest.approx(2.0) and values[0, 1, 0, 0] == pytest.approx(-2.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.int64, torch.bool])
def test_non_uint8_tensors_are_refused_clearly(dtype):
    with pytest.raises(TypeError, match=rf"uint8 pixels.*{dtype}"):
        InternVLImageProcessor()(torch.zeros(3, 16, 16, dtype=dtype))


def test_float_arrays_with_nan_are_refused():
    pixels = np.full((16, 16, 3), np.nan, np.float32)
    with pytest.raises(TypeError, match="uint8"):
        InternVLImageProcessor()(pixels)
    float_image = Image.fromarray(np.array([[np.nan, 1.0], [2.0, 3.0]], np.float32))
    with pytest.raises(ValueError, match="NaN or infinite"):
        InternVLImageProcessor()(float_image)


def _image(mode: str) -> Image.Image:
    rng = np.random.default_rng(7)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (20, 30), dtype=np.uint16))
    if mode == "La":
        return Image.frombytes("La", (30, 20), rng.integers(0, 256, 30 * 20 * 2, dtype=np.uint8).tobytes())
    base = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    if mode == "P":
        return base.convert("P", palette=Image.Palette.ADAPTIVE)
    return base.convert(mode)


@pytest.mark.parametrize("mode", ["P", "PA", "L", "LA", "1", "I", "I;16", "F", "RGBA", "RGBa", "CMYK", "YCbCr"])
def test_pil_modes_convert_as_the_original(mode):
    image = _image(mode) if mode in ("I;16", "P") else _image("RGB").convert(mode)
    processor = InternVLImageProcessor(max_dynamic_patch=1)
    expected = processor(image.convert("RGB"), image_size=28)["pixel_values"]  # the original: .convert('RGB')
    assert np.array_equal(processor(image, image_size=28)["pixel_values"], expected)


def test_premultiplied_gray_alpha_goes_through_la():
    image = _image("La")
    with pytest.raises(ValueError):
        image.convert("RGB")  # Pillow (and so the original) cannot convert it directly
    processor = InternVLImageProcessor(max_dynamic_patch=1)
    expected = processor(image.convert("LA").convert("RGB"), image_size=28)["pixel_values"]
    assert np.array_equal(processor(image, image_size=28)["pixel_values"], expected)
