"""Arrays and tensors as images (session 8): what the processor takes, and that it equals `Image.fromarray`.

The original takes only files (`Image.open(f).convert("RGB")`); a user with an array would call `Image.fromarray`
first, so that is the expected result. Only uint8 is accepted (README "Image inputs").
"""

import numpy as np
import pytest
import torch
from PIL import Image

from transformers_internvl.processing.image_loading import to_rgb_image
from transformers_internvl.processing.image_processing_internvl import InternVLChatImageProcessor


def _pixels(width, height, channels, seed=0):
    y, x = np.mgrid[0:height, 0:width]
    planes = [(x * (7 + c) + y * (3 + 5 * c) + seed) % 256 for c in range(channels)]
    return np.stack(planes, -1).astype(np.uint8)


@pytest.mark.parametrize(
    ("array", "mode"),
    [
        (_pixels(37, 23, 3), "RGB"),
        (_pixels(37, 23, 4), "RGBA"),
        (_pixels(23, 37, 1)[..., 0], "L"),
        (_pixels(2000, 1, 3), "RGB"),  # one row: (1, 2000, 3) is channels last
        (_pixels(1, 2000, 3), "RGB"),
    ],
)
def test_uint8_arrays_and_tensors_equal_image_fromarray(array, mode):
    expected = np.asarray(Image.fromarray(array, mode).convert("RGB"))
    forms = [(array, None)]  # (input, input_data_format)
    if array.ndim == 2 or array.shape[0] not in (1, 3, 4):  # else an (H, W, C) tensor is read channels first (below)
        forms.append((torch.from_numpy(array), None))
    if array.ndim == 3:
        forms.append((torch.from_numpy(array).permute(2, 0, 1), None))  # (C, H, W) tensor
        forms.append((np.moveaxis(array, -1, 0), "channels_first"))  # (C, H, W) numpy, said explicitly
        forms.append((array[:, ::-1][:, ::-1], None))  # a non-contiguous view
    for index, (form, data_format) in enumerate(forms):
        assert np.array_equal(np.asarray(to_rgb_image(form, input_data_format=data_format)), expected), index


def test_single_channel_axis_is_dropped():
    gray = _pixels(30, 20, 1)
    expected = np.asarray(Image.fromarray(gray[..., 0], "L").convert("RGB"))
    assert np.array_equal(np.asarray(to_rgb_image(gray)), expected)  # (H, W, 1)
    assert np.array_equal(np.asarray(to_rgb_image(torch.from_numpy(gray).permute(2, 0, 1))), expected)  # (1, H, W)


def test_ambiguous_shapes_follow_the_documented_rule():
    array = _pixels(5, 3, 3)  # (3, 5, 3): a 5 x 3 RGB image, or a 3 x 5 one channels first
    assert to_rgb_image(array).size == (5, 3)  # numpy: channels last, as Image.fromarray
    assert to_rgb_image(torch.from_numpy(array)).size == (3, 5)  # torch: channels first
    assert to_rgb_image(array, input_data_format="channels_first").size == (3, 5)
    assert to_rgb_image(torch.from_numpy(array), input_data_format="channels_last").size == (5, 3)


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((8, 8, 3), np.float32),
        np.zeros((8, 8), np.uint16),
        np.zeros((8, 8), bool),
        torch.zeros(3, 8, 8),
        torch.zeros(3, 8, 8, dtype=torch.bfloat16),
    ],
    ids=["float32", "uint16", "bool", "tensor-float32", "tensor-bfloat16"],
)
def test_other_dtypes_are_refused_with_the_conversion(array):
    with pytest.raises(TypeError, match=r"uint8 pixels \(0-255\).*Convert it"):
        InternVLChatImageProcessor()(images=array)


def test_batch_array_is_one_sample_of_images():
    batch = np.stack([_pixels(60, 40, 3, seed) for seed in range(3)])  # (N, H, W, C)
    processor = InternVLChatImageProcessor()
    out = processor(images=batch, max_dynamic_patch=2, return_tensors="pt")
    each = processor(images=[Image.fromarray(image) for image in batch], max_dynamic_patch=2, return_tensors="pt")
    assert torch.equal(out["pixel_values"], each["pixel_values"])
    assert out["num_tiles"].tolist() == each["num_tiles"].tolist()
