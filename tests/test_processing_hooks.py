"""The processor on transformers' placeholder hooks, and the video processor composing the image processor (issue 10).

Expected strings come from first principles: an image of n tiles is `<img>` + `<IMG_CONTEXT>` x (256 n) + `</img>`
(448 px tiles, 14 px patches, ratio 0.5); a video of k frames is k lines `Frame-i: ` + a one-tile image.
"""

import numpy as np
import pytest
import torch
from helpers import QWEN2_TOKENIZER
from PIL import Image
from transformers import AutoTokenizer

from transformers_internvl.processing.control_tokens import PLACEHOLDER_ESCAPE
from transformers_internvl.processing.image_processing_internvl import (
    InternVLChatImageProcessor,
    InternVLImageProcessor,
    plan_tiles,
)
from transformers_internvl.processing.processing_internvl import InternVLChatProcessor
from transformers_internvl.processing.video_processing_internvl import (
    InternVLChatVideoProcessor,
    InternVLVideoProcessor,
)

ONE_TILE = "<img>" + "<IMG_CONTEXT>" * 256 + "</img>"


@pytest.fixture(scope="module")
def processor():
    tokenizer = AutoTokenizer.from_pretrained(QWEN2_TOKENIZER)
    return InternVLChatProcessor(image_processor=InternVLChatImageProcessor(max_dynamic_patch=6), tokenizer=tokenizer)


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_old_class_names_are_aliases_of_the_chat_names():
    assert InternVLImageProcessor is InternVLChatImageProcessor
    assert InternVLVideoProcessor is InternVLChatVideoProcessor
    assert InternVLChatImageProcessor.__name__ == "InternVLChatImageProcessor"


def test_replace_image_token_gives_each_image_its_tile_count(processor):
    image_inputs = {"num_tiles": [1, 3]}
    assert processor.replace_image_token(image_inputs, 0) == ONE_TILE
    assert processor.replace_image_token(image_inputs, 1) == "<img>" + "<IMG_CONTEXT>" * 768 + "</img>"


def test_replace_video_token_gives_one_tile_frame_lines(processor):
    assert processor.replace_video_token({"num_frames": [2]}, 0) == f"Frame-1: {ONE_TILE}\nFrame-2: {ONE_TILE}"


def test_get_text_with_replacements_keeps_escaped_placeholders_as_text(processor):
    escaped = PLACEHOLDER_ESCAPE + "<image>"
    texts, offsets = processor.get_text_with_replacements([f"a<image>b{escaped}c<video>"], ["I"], ["V"])
    assert texts == ["aIb<image>cV"]
    # `<image>` at 1..8 -> "I" at 1..2; the escape at 9 is removed; `<video>` at 18..25 -> "V" at 11..12.
    assert offsets == [
        [
            {"type": "image", "span": (1, 8), "new_span": (1, 2), "text": "<image>", "replacement": "I"},
            {"type": "text", "span": (9, 10), "new_span": (3, 3), "text": PLACEHOLDER_ESCAPE, "replacement": ""},
            {"type": "video", "span": (18, 25), "new_span": (11, 12), "text": "<video>", "replacement": "V"},
        ]
    ]


def test_processor_text_is_the_hooks_output(processor):
    wide = _noise(900, 300)  # 3x1 grid at max 6 -> 3 tiles + thumbnail = 4
    assert plan_tiles(900, 300, 6).num_tiles == 4
    out = processor(text="<image>\nWhat?", images=wide)
    expected = processor.tokenizer("<img>" + "<IMG_CONTEXT>" * (256 * 4) + "</img>\nWhat?")["input_ids"]
    assert out["input_ids"] == [expected]
    assert out["num_tiles"] == [4]


def test_max_tiles_is_an_alias_of_max_dynamic_patch():
    image = _noise(1200, 300)
    reference = InternVLChatImageProcessor()(image, max_dynamic_patch=2)
    for alias in ("max_tiles", "max_num", "max_patches"):
        out = InternVLChatImageProcessor()(image, **{alias: 2})
        assert out["num_tiles"] == reference["num_tiles"] == [3]
        assert np.array_equal(out["pixel_values"], reference["pixel_values"])
    assert InternVLChatImageProcessor(max_tiles=3).max_dynamic_patch == 3
    with pytest.raises(ValueError, match="max_tiles"):
        InternVLChatImageProcessor()(image, max_dynamic_patch=2, max_tiles=3)


def test_video_frames_are_the_image_processors_one_tile_pixels():
    """Each frame is the image processor's `dynamic_image_size=False` tile (the original's `max_num=1`)."""
    frames = [_noise(80, 64, seed) for seed in range(3)]
    video = InternVLChatVideoProcessor()(videos=frames, return_tensors="pt")["pixel_values_videos"]
    images = InternVLChatImageProcessor(dynamic_image_size=False)([[frame] for frame in frames], return_tensors="pt")
    assert torch.equal(video, images["pixel_values"])


@pytest.mark.parametrize("kwargs", [{"image_size": 224}, {"size": 224}, {"images_kwargs": {"image_size": 224}}])
def test_per_call_tile_size_that_does_not_fit_the_token_count_is_refused(processor, kwargs):
    """Tokens per tile are the model's `num_image_token` (256 for 448 px): 224 px tiles with 256 tokens each would
    be a silently wrong prompt, so the processor refuses them (image tiles and video frames alike)."""
    with pytest.raises(ValueError, match=r"image tiles are 224 px .* 256 tokens per 448 px tile"):
        processor(text="<image>", images=_noise(300, 200), return_tensors="pt", **kwargs)
    frames = [_noise(80, 64, seed) for seed in range(2)]
    with pytest.raises(ValueError, match=r"video frames are 224 px"):
        processor(text="<video>", videos=[frames], return_tensors="pt", **{"image_size": 224})


def test_processor_image_size_sets_its_default_sub_processors():
    tokenizer = AutoTokenizer.from_pretrained(QWEN2_TOKENIZER)
    processor = InternVLChatProcessor(tokenizer=tokenizer, image_size=224)
    out = processor(text="<image>", images=_noise(500, 300), return_tensors="pt")
    assert out["pixel_values"].shape[-2:] == (224, 224)
    image_tokens = int((out["input_ids"] == tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")).sum())
    assert processor.num_image_token == 64
    assert image_tokens == 64 * out["pixel_values"].shape[0]
