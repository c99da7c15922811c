"""Session 8: `pipeline("image-text-to-text")(images=..., text=...)` gives the original's pixels.

transformers' pipeline loaded `images=` with its own `load_images`, which applies the EXIF orientation; the original
(`Image.open(f).convert('RGB')`) never does. A JPEG with EXIF orientation 6 (a phone photo held upright) therefore got
other tiles through `images=` than through the original and than through a chat message of the same pipeline. The
expected tiles are the original `load_image`'s (`fixtures/processing_heldout_s8/original.json`).
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers import pipeline

from transformers_internvl.processing.pipeline_images import load_pipeline_images, wrap_image_text_to_text_pipeline

FIXTURES = Path(__file__).parent / "fixtures" / "processing_heldout_s8"
EXIF_JPEG = FIXTURES / "images" / "exif_rotate90.jpg"
ORIGINAL = json.loads((FIXTURES / "original.json").read_text(encoding="utf-8"))["images"]


def _tile_shas(pixel_values) -> list[str]:
    return [hashlib.sha256(np.ascontiguousarray(t).tobytes()).hexdigest()[:20] for t in pixel_values.float().numpy()]


@pytest.fixture(scope="module")
def pipe(qwen2_model_dir):
    return pipeline("image-text-to-text", model=str(qwen2_model_dir))


def test_the_fixture_photo_has_an_exif_rotation():
    with Image.open(EXIF_JPEG) as image:
        assert image.getexif().get(0x0112) == 6 and image.size == (160, 50)


@pytest.mark.parametrize(
    "images", [str(EXIF_JPEG), EXIF_JPEG.read_bytes(), Image.open(EXIF_JPEG)], ids=["path", "bytes", "PIL"]
)
def test_pipeline_images_argument_gives_the_original_tiles(pipe, images):
    if isinstance(images, bytes):
        import base64

        images = base64.b64encode(images).decode()  # transformers' pipeline takes base64 strings, not bytes
    inputs = pipe.preprocess({"images": images, "text": "<image>\nDescribe."}, max_dynamic_patch=6)
    assert _tile_shas(inputs["pixel_values"]) == ORIGINAL["file:exif_rotate90.jpg:448:6"]


def test_pipeline_images_argument_equals_the_chat_message_form(pipe):
    message = [{"role": "user", "content": [{"type": "image", "path": str(EXIF_JPEG)}, {"type": "text", "text": "x"}]}]
    from transformers.pipelines.base import Chat  # what the pipeline's __call__ wraps a message list in

    chat_inputs = pipe.preprocess(Chat(message), processor_kwargs={"max_dynamic_patch": 6})
    plain_inputs = pipe.preprocess({"images": [str(EXIF_JPEG)], "text": "<image>\nx"}, max_dynamic_patch=6)
    assert _tile_shas(chat_inputs["pixel_values"]) == _tile_shas(plain_inputs["pixel_values"])
    assert chat_inputs["num_tiles"].tolist() == plain_inputs["num_tiles"].tolist() == [4]


def test_load_pipeline_images_keeps_nesting_and_drops_metadata():
    with Image.open(EXIF_JPEG) as opened:
        loaded = load_pipeline_images([[str(EXIF_JPEG)], [opened]])
        assert [[image.size for image in group] for group in loaded] == [[(160, 50)], [(160, 50)]]
        assert all(image.mode == "RGB" and image.info == {} for group in loaded for image in group)
        assert opened.getexif().get(0x0112) == 6  # the caller's image is not modified
    assert np.array_equal(np.asarray(loaded[0][0]), np.asarray(Image.open(EXIF_JPEG).convert("RGB")))


def test_wrapping_is_idempotent():
    from transformers.pipelines.image_text_to_text import ImageTextToTextPipeline

    wrapped = ImageTextToTextPipeline.preprocess
    wrap_image_text_to_text_pipeline()
    assert ImageTextToTextPipeline.preprocess is wrapped and wrapped._internvl_images
