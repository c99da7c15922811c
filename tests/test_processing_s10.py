"""Session-10 held-out defects of the processing side (issues 4 and 10).

1. Already-decoded video frames: a `bound=(start_s, end_s)` window was silently ignored unless `num_segments` was
   also passed (every frame given was used), and `do_sample_frames=True` without `num_segments` used every frame
   instead of sampling the processor's `num_segments`. A video FILE samples `num_segments` frames inside the window in
   both cases, and refuses `bound` with `do_sample_frames=False`; decoded frames now follow the same rules. Expected
   indices: the ORIGINAL `get_index` (`fixtures/processing_s10/`, README there).
2. `AutoProcessor.from_pretrained(folder, image_size=224)` set the processor's tile side (and its tokens per tile)
   but left the image and video processors at the folder's 448 px, so every image was refused with a message about a
   "per-call" `image_size`. The tile side now reaches the sub-processors, as `InternVLChatProcessor(image_size=224)`
   already did for its default sub-processors.
3. An image or frame of zero width or height was refused with the tile planner's "`width` must be >= 1" instead of a
   message naming the argument.
4. A text already rendered by the chat template, given with images but no `<image>` placeholder, got the prefix
   before its system block (`<img>...</img>\n<|im_start|>system...`); the original puts `<image>\n` at the start of
   the question. Such a text is refused now.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

sys.path.insert(0, str(Path(__file__).parent))

from helpers import original_model_dir, qwen2_processor, tokenized_chat  # noqa: E402

from transformers_internvl.processing.image_processing_internvl import InternVLChatImageProcessor  # noqa: E402
from transformers_internvl.processing.processing_internvl import InternVLChatProcessor  # noqa: E402
from transformers_internvl.processing.video_processing_internvl import InternVLChatVideoProcessor  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "processing_s10"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8"))


def _numbered_frames(count: int) -> np.ndarray:
    """`(count, 12, 16, 3)` uint8 frames; frame `i` is filled with the value `6 * i` (its number, read back below)."""
    return (np.arange(count, dtype=np.uint8)[:, None, None, None] * 6).repeat(12, 1).repeat(16, 2).repeat(3, 3)


def _frame_numbers(pixel_values: torch.Tensor) -> list[int]:
    """The numbers of the frames a video processor output holds (undoing ImageNet normalisation of channel 0)."""
    level = pixel_values[:, 0, 5, 5] * 0.229 + 0.485
    return [round(float(value) * 255 / 6) for value in level]


# ---- 1. decoded frames: `bound` and `do_sample_frames` ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["window_default_segments", "window_ntsc"])
def test_bound_on_decoded_frames_samples_the_window_like_a_file(name):
    case = EXPECTED[name]
    processor = InternVLChatVideoProcessor(image_size=28)
    out = processor(
        _numbered_frames(case["num_frames"]),
        bound=tuple(case["bound"]),
        video_metadata={"fps": case["fps"]},
        return_metadata=True,
        return_tensors="pt",
    )
    assert out["frame_indices"] == [case["indices"]]
    assert out["num_frames"].tolist() == [case["num_segments"]]
    assert _frame_numbers(out["pixel_values_videos"]) == case["indices"]


def test_bound_on_decoded_frames_with_the_processors_own_num_segments():
    case = EXPECTED["window_five_segments"]
    processor = InternVLChatVideoProcessor(num_segments=case["num_segments"], image_size=28)
    out = processor(
        list(_numbered_frames(case["num_frames"])),  # a list of frames as well as a (T, H, W, C) array
        bound=tuple(case["bound"]),
        video_metadata={"fps": case["fps"]},
        return_metadata=True,
    )
    assert out["frame_indices"] == [case["indices"]]


@pytest.mark.parametrize("name", ["all_default_segments", "all_five_segments"])
def test_do_sample_frames_true_samples_num_segments(name):
    case = EXPECTED[name]
    processor = InternVLChatVideoProcessor(num_segments=case["num_segments"], image_size=28)
    out = processor(_numbered_frames(case["num_frames"]), do_sample_frames=True, return_metadata=True)
    assert out["frame_indices"] == [case["indices"]]
    assert _frame_numbers(torch.as_tensor(out["pixel_values_videos"])) == case["indices"]


def test_decoded_frames_without_sampling_options_are_all_used():
    out = InternVLChatVideoProcessor(image_size=28)(_numbered_frames(10), return_metadata=True)
    assert out["frame_indices"] == [list(range(10))]


def test_bound_without_a_frame_rate_is_refused_for_decoded_frames():
    processor = InternVLChatVideoProcessor(image_size=28)
    with pytest.raises(ValueError, match=r"frame rate.*video_metadata"):
        processor(_numbered_frames(10), bound=(2, 5))


@pytest.mark.parametrize("num_segments", [None, 3])
def test_bound_with_do_sample_frames_false_is_refused_for_decoded_frames(num_segments):
    processor = InternVLChatVideoProcessor(image_size=28)
    with pytest.raises(ValueError, match="do_sample_frames=False"):
        processor(
            _numbered_frames(10),
            bound=(2, 5),
            num_segments=num_segments,
            video_metadata={"fps": 1.0},
            do_sample_frames=False,
        )


def test_processor_passes_bound_to_decoded_frames():
    case = EXPECTED["window_default_segments"]
    processor = qwen2_processor()
    out = processor(
        text="<video>\nWhat happens?",
        videos=_numbered_frames(case["num_frames"]),
        bound=tuple(case["bound"]),
        video_metadata={"fps": case["fps"]},
        return_tensors="pt",
    )
    assert out["num_tiles"].tolist() == [1] * case["num_segments"]
    assert _frame_numbers(out["pixel_values"]) == case["indices"]


def test_apply_chat_template_with_decoded_frames_and_do_sample_frames():
    case = EXPECTED["all_default_segments"]
    processor = qwen2_processor()
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "video", "video": list(_numbered_frames(case["num_frames"]))},
                {"type": "text", "text": "What happens?"},
            ],
        }
    ]
    out = tokenized_chat(processor, messages, {"do_sample_frames": True})
    assert _frame_numbers(out["pixel_values"]) == case["indices"]


# ---- 2. `from_pretrained(..., image_size=...)` reaches the image and video processors --------------------------------


def _image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(10).integers(0, 256, (300, 500, 3), dtype=np.uint8))


@pytest.mark.parametrize("saved", [False, True], ids=["original-folder", "saved-processor"])
def test_from_pretrained_image_size_sets_every_tile_side(tmp_path, saved):
    folder = original_model_dir(tmp_path / "model")
    if saved:
        AutoProcessor.from_pretrained(folder).save_pretrained(tmp_path / "saved")
        folder = tmp_path / "saved"
    processor = AutoProcessor.from_pretrained(folder, image_size=224)
    assert processor.image_size == processor.image_processor.image_size == processor.video_processor.image_size == 224
    assert processor.num_image_token == 64  # (224 // 14) ** 2 * 0.5 ** 2

    out = processor(text="<image>\nWhat?", images=_image(), videos=None, return_tensors="pt")
    expected = InternVLChatImageProcessor(image_size=224)(_image(), return_tensors="pt")
    assert torch.equal(out["pixel_values"], expected["pixel_values"])
    assert out["num_tiles"].tolist() == expected["num_tiles"].tolist()
    assert int((out["input_ids"] == processor.image_token_id).sum()) == 64 * int(expected["num_tiles"].sum())

    video = processor(text="<video>\nWhat?", videos=_numbered_frames(3), return_tensors="pt")
    assert video["pixel_values"].shape == (3, 3, 224, 224)


def test_from_pretrained_image_size_and_tiling_options_together(tmp_path):
    folder = original_model_dir(tmp_path / "model")
    processor = AutoProcessor.from_pretrained(folder, image_size=224, max_num=4, num_segments=3)
    assert (processor.image_processor.image_size, processor.image_processor.max_dynamic_patch) == (224, 4)
    assert (processor.video_processor.image_size, processor.video_processor.num_segments) == (224, 3)


@pytest.mark.parametrize(
    ("options", "frames_used"),
    [
        ({"do_sample_frames": True}, 5),
        ({"do_sample_frames": True, "num_segments": 3}, 3),
        ({"bound": (0.0, 2.0), "video_metadata": {"fps": 4.0}}, 5),
        ({}, 23),
    ],
    ids=["do_sample_frames", "do_sample_frames-num_segments", "bound", "no-sampling"],
)
def test_token_counts_follow_the_sampling_of_decoded_frames(options, frames_used):
    # `_get_num_multimodal_tokens` (vLLM / TRL) must count the frames `__call__` really inserts.
    processor = qwen2_processor()
    processor.video_processor = InternVLChatVideoProcessor(num_segments=5)
    count_options = {key: value for key, value in options.items() if key != "video_metadata"}
    counts = processor._get_num_multimodal_tokens(video_sizes=[(23, 12, 16)], **count_options)
    out = processor(text="<video>\nWhat?", videos=_numbered_frames(23), return_mm_token_type_ids=True, **options)
    assert counts["num_video_tokens"] == [sum(1 for kind in out["mm_token_type_ids"][0] if kind == 2)]
    assert counts["num_video_tokens"] == [frames_used * (2 + processor.num_image_token)]


# ---- 3. an image without pixels names the argument ------------------------------------------------------------------
# The original divides by the height (`dynamic_preprocess`: ZeroDivisionError); here the error named `width` /
# `height` of the tile planner, not the image the caller gave.


@pytest.mark.parametrize(
    ("call", "where"),
    [
        (lambda: InternVLChatImageProcessor()(Image.new("RGB", (0, 0))), r"`images\[0\]`.*0 x 0"),
        (lambda: InternVLChatImageProcessor()(Image.new("RGB", (0, 5))), r"`images\[0\]`.*0 x 5"),
        (
            lambda: InternVLChatImageProcessor()([np.zeros((4, 4, 3), np.uint8), np.zeros((0, 8, 3), np.uint8)]),
            r"`images\[1\]`.*8 x 0",
        ),
        (lambda: InternVLChatImageProcessor()(torch.zeros((3, 0, 8), dtype=torch.uint8)), r"`images\[0\]`.*8 x 0"),
        (lambda: InternVLChatVideoProcessor()(np.zeros((3, 0, 8, 3), np.uint8)), r"`videos`.*8 x 0"),
        (lambda: qwen2_processor()(text="<image>", images=Image.new("L", (7, 0))), r"`images\[0\]`.*7 x 0"),
    ],
    ids=["pil-0x0", "pil-0x5", "numpy-second-image", "torch", "video-frames", "processor"],
)
def test_an_image_without_pixels_names_the_argument(call, where):
    with pytest.raises(ValueError, match=where + r".*no pixels"):
        call()


# ---- 4. a rendered chat prompt without placeholders -----------------------------------------------------------------
# The original chat() puts `<image>\n` at the start of the QUESTION (inside the user turn). A text already rendered by
# the chat template (it starts with the template's system block) got the prefix before the system block instead:
# `<img>...</img>\n<|im_start|>system\n...`, a prompt the model never saw. It is refused now; plain questions keep
# getting the prefix.


@pytest.mark.parametrize("template", ["internvl2_5", "Hermes-2", "internlm2-chat", "phi3-chat"])
@pytest.mark.parametrize("media", ["image", "two-images", "video"])
def test_a_rendered_chat_prompt_without_placeholders_is_refused(template, media):
    processor = InternVLChatProcessor(tokenizer=qwen2_processor().tokenizer, template=template)
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "What is shown?"}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    inputs = {
        "image": {"images": _image()},
        "two-images": {"images": [_image(), _image()]},
        "video": {"videos": _numbered_frames(3)},
    }[media]
    placeholder = "<video>" if media == "video" else "<image>"
    with pytest.raises(ValueError, match=rf"Text 0 is a rendered chat prompt.*no {placeholder} placeholder"):
        processor(text=prompt, **inputs)


def test_a_plain_question_without_placeholders_still_gets_the_prefix():
    processor = qwen2_processor(max_dynamic_patch=1)
    out = processor(text="What is shown?", images=[_image(), _image()])
    text = processor.tokenizer.decode(out["input_ids"][0])
    assert text.startswith("Image-1: <img><IMG_CONTEXT>") and text.endswith("</img>\nWhat is shown?")
