"""Session-8 held-out re-check of preprocessing and prompts against the ORIGINAL code's outputs (issues 4 and 10).

`tests/fixtures/processing_heldout_s8/original.json` holds what OpenGVLab/InternVL (2410d1d) gave on inputs the
earlier held-out sets did not cover (see its README; nothing there was computed by this package):

* videos read by the original `load_video` with decord (the reader it uses): frame count, average fps, the
  `get_index` frame indices, the SHA-256 of every decoded frame and of every normalised tile;
* image files of many formats through the original `load_image`, and PIL images of the modes `.convert('RGB')`
  takes that session 6 did not use, at 448 / 224 / 336 px tiles;
* the grid `dynamic_preprocess` picks for 3000 random sizes (aspect-ratio ties, slivers), tile sides and budgets;
* the `chat()` query (template + `<IMG_CONTEXT>` expansion) for multi-image, video and mixed prompts at five
  tile geometries (tile side x downsample ratio).
"""

import functools
import hashlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import QWEN2_TOKENIZER
from transformers import AutoTokenizer

from transformers_internvl.processing.image_processing_internvl import InternVLChatImageProcessor
from transformers_internvl.processing.processing_internvl import InternVLChatProcessor
from transformers_internvl.processing.tiling import plan_tiles
from transformers_internvl.processing.video_decoding import FrameIndexReader, read_video_frames
from transformers_internvl.processing.video_processing_internvl import InternVLChatVideoProcessor

FIXTURES = Path(__file__).parent / "fixtures" / "processing_heldout_s8"
sys.path.insert(0, str(FIXTURES))
from s8_inputs import (  # noqa: E402
    IMAGE_CONFIGS,
    IMAGE_FILES,
    PROMPT_CASES,
    VIDEO_CASES,
    VIDEOS,
    frame_number,
    mode_images,
    prompt_image,
    prompt_video_frames,
)

RECORD = json.loads((FIXTURES / "original.json").read_text(encoding="utf-8"))


def _sha(array) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:20]


def _tile_shas(pixel_values) -> list[str]:
    return [_sha(tile) for tile in np.asarray(pixel_values, dtype=np.float32)]


def test_fixture_covers_the_brief():
    assert set(RECORD["videos"]) == set(VIDEOS) and len(VIDEOS) == 15
    assert len(RECORD["images"]) == (len(IMAGE_FILES) + len(mode_images())) * len(IMAGE_CONFIGS)
    assert len(RECORD["grids"]) == 3000
    ties = [case for case in RECORD["grids"] if case[0] * case[6] == case[1] * case[5] and case[5] * case[6] > 1]
    assert len(ties) > 500  # the image's ratio equals the chosen grid's: where the original's area rule decides
    assert {entry["name"] for entry in RECORD["prompts"]} == {case["name"] for case in PROMPT_CASES}


# ---- videos: our PyAV reader against the original load_video's decord -------------------------------------------


@pytest.mark.parametrize("name", sorted(VIDEOS))
def test_video_frames_match_decord(name):
    """Frame count, fps and `get_index` indices equal decord's; the frames are the right ones (their number is drawn
    in them) and, for 8-bit even-sized video, byte-identical to decord's RGB frames."""
    spec, original = VIDEOS[name], RECORD["videos"][name]
    path = FIXTURES / "videos" / name
    with FrameIndexReader(str(path), "videos") as reader:
        assert reader.num_frames == original["num_frames"] == spec["frames"]
        assert reader.fps == original["fps"]
    for (num_segments, bound), case in zip(VIDEO_CASES, original["cases"]):
        assert case["num_segments"] == num_segments
        indices = case["indices"]
        if "error" in case or indices != sorted(indices):
            # The window starts after the video's last frame: the original reads outside the video (decord
            # IndexError) or returns descending indices; this package refuses it (session-6 decision).
            with pytest.raises(ValueError, match="selects no frame"):
                read_video_frames(str(path), num_segments, bound=bound)
            continue
        decoded = read_video_frames(str(path), num_segments, bound=bound)
        assert decoded.frame_indices == indices
        numbers = [index % 256 for index in indices]  # the frames carry their number's low 8 bits
        assert [frame_number(frame) for frame in decoded.frames] == numbers  # the i-th frame, from first principles
        if spec.get("decord_wrong_frames"):
            # decord 0.6.0 seeks this HEVC file to the wrong frames (README); ours are the requested ones.
            assert case["frame_numbers"] != numbers
        else:
            assert case["frame_numbers"] == numbers
        if spec.get("pixels", True):
            assert [_sha(np.asarray(frame)) for frame in decoded.frames] == case["frame_sha"], (name, num_segments)


@pytest.mark.parametrize("name", sorted(name for name, spec in VIDEOS.items() if spec.get("pixels", True)))
def test_video_processor_tiles_match_load_video(name):
    """`InternVLChatVideoProcessor` gives the original `load_video`'s tiles bit for bit (8 frames, and a window)."""
    processor = InternVLChatVideoProcessor()
    for case_index in (0, 3):
        (num_segments, bound), case = VIDEO_CASES[case_index], RECORD["videos"][name]["cases"][case_index]
        if "error" in case:
            continue
        out = processor(videos=str(FIXTURES / "videos" / name), num_segments=num_segments, bound=bound)
        assert out["num_frames"] == [len(case["num_patches"])] and set(case["num_patches"]) == {1}
        assert _tile_shas(out["pixel_values_videos"]) == case["tile_sha"], (name, num_segments, bound)


# ---- images: files and PIL modes against the original load_image ------------------------------------------------


@pytest.fixture(scope="module")
def image_processor():
    return InternVLChatImageProcessor()


@pytest.mark.parametrize("name", sorted(IMAGE_FILES))
def test_image_files_match_load_image(image_processor, name):
    for image_size, max_num in IMAGE_CONFIGS:
        expected = RECORD["images"][f"file:{name}:{image_size}:{max_num}"]
        out = image_processor(images=str(FIXTURES / "images" / name), image_size=image_size, max_dynamic_patch=max_num)
        assert out["num_tiles"] == [len(expected)]
        assert _tile_shas(out["pixel_values"]) == expected, (name, image_size, max_num)


def test_image_modes_match_convert_rgb(image_processor):
    mismatches = []
    for name, image in mode_images().items():
        for image_size, max_num in IMAGE_CONFIGS:
            expected = RECORD["images"][f"mode:{name}:{image_size}:{max_num}"]
            out = image_processor(images=image, image_size=image_size, max_dynamic_patch=max_num)
            if _tile_shas(out["pixel_values"]) != expected:
                mismatches.append((name, image_size, max_num))
    assert not mismatches


def test_grid_choice_matches_dynamic_preprocess():
    mismatches = [
        case
        for case in RECORD["grids"]
        if list(plan_tiles(case[0], case[1], case[4], case[3], case[2], True).grid) != case[5:]
    ]
    assert not mismatches, mismatches[:5]


# ---- prompts: processor expansion against the original chat() query ----------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(QWEN2_TOKENIZER)


_prompt_image = functools.lru_cache(prompt_image)
_prompt_video_frames = functools.lru_cache(prompt_video_frames)


def _expand(query: str) -> str:
    return re.sub(r"<IMG_CONTEXT\*(\d+)>", lambda m: "<IMG_CONTEXT>" * int(m.group(1)), query)


def _messages(items):
    content = []
    for item in items:
        content.append({"type": item} if item in ("image", "video") else {"type": "text", "text": item})
    return [{"role": "user", "content": content}]


@pytest.mark.parametrize(
    "entry", RECORD["prompts"], ids=lambda e: f"{e['name']}-{e['image_size']}-{e['downsample_ratio']}"
)
def test_prompt_expansion_matches_chat_query(tokenizer, entry):
    case = next(case for case in PROMPT_CASES if case["name"] == entry["name"])
    size, ratio = entry["image_size"], entry["downsample_ratio"]
    assert entry["num_image_token"] == int((size // 14) ** 2 * ratio**2)  # the original's arithmetic
    if int(1 / ratio) != 1 / ratio:
        # 0.75: the original expands the prompt (324 tokens per 336 px tile), but no model can take it (the original
        # fails in pixel_shuffle, this package's config refuses it), so the processor refuses it as the config does
        # (session 9, tests/test_gaps_s9.py).
        with pytest.raises(ValueError, match=r"`downsample_ratio` \(0.75\) must be 1/k"):
            InternVLChatProcessor(
                InternVLChatImageProcessor(image_size=size), tokenizer, image_size=size, downsample_ratio=ratio
            )
        return
    processor = InternVLChatProcessor(
        InternVLChatImageProcessor(image_size=size),
        tokenizer,
        InternVLChatVideoProcessor(image_size=size),
        template=case.get("template") or "internvl2_5",
        image_size=size,
        downsample_ratio=ratio,
        video_frame_template=case.get("frame_template", "Frame-{i}: "),
    )
    assert processor.num_image_token == entry["num_image_token"]
    if "messages" in case:
        text = processor.apply_chat_template(_messages(case["messages"]), add_generation_prompt=True, tokenize=False)
    else:
        text = case["text"]
    images = [_prompt_image(key) for key in case.get("images", [])] or None
    videos = [_prompt_video_frames()] if case.get("video") else None
    out = processor(text=text, images=images, videos=videos, return_tensors="pt", **case.get("kwargs", {}))
    expected = tokenizer(_expand(entry["query"]))["input_ids"]
    assert out["input_ids"][0].tolist() == expected
    assert out["num_tiles"].tolist() == entry["num_patches_list"]
    assert out["pixel_values"].shape == (sum(entry["num_patches_list"]), 3, size, size)
