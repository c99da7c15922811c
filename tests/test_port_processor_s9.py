"""Session 9: the processor against transformers' own InternVL port and `ProcessorMixin`'s contract.

transformers' `InternVLProcessor` has `video_token` / `video_token_id` and `_get_num_multimodal_tokens` (what vLLM,
TRL and transformers' `mm_token_type_ids` accounting read); this package's processor had neither. The counts must be
the ORIGINAL's: tiles from the original grid choice and thumbnail rule under the processor's own settings
(`max_dynamic_patch`, `use_thumbnail`, ...), `2 + num_image_token * tiles` tokens per image (`<img>`, context tokens,
`</img>`), one tile per video frame; each must equal what `__call__` inserts for that image or video.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import QWEN2_TOKENIZER, original_model_dir, tokenized_chat
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer

import transformers_internvl  # noqa: F401  (registers the classes)
from transformers_internvl.processing.image_processing_internvl import InternVLImageProcessor
from transformers_internvl.processing.processing_internvl import InternVLProcessor
from transformers_internvl.processing.video_processing_internvl import InternVLVideoProcessor

SMALL = 56  # 56 px tiles: (56 // 14) ** 2 * 0.5 ** 2 = 4 tokens per tile, so that many tiles stay cheap
SMALL_TOKENS = 4
SIZES = [(100, 100), (300, 100), (500, 30), (213, 167), (7, 500), (1080, 1920), (60, 1000)]  # (height, width)


def _processor(image_size: int = SMALL, tokenizer=None, **image_options) -> InternVLProcessor:
    return InternVLProcessor(
        image_processor=InternVLImageProcessor(image_size=image_size, **image_options),
        tokenizer=tokenizer or AutoTokenizer.from_pretrained(QWEN2_TOKENIZER),
        video_processor=InternVLVideoProcessor(image_size=image_size),
        image_size=image_size,
    )


@pytest.fixture(scope="module")
def small():
    return _processor()


def _image(height: int, width: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _frames(count: int, height: int = 40, width: int = 50) -> np.ndarray:
    return np.random.default_rng(count).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def _image_token_count(processor, ids) -> int:
    """Tokens of `ids` that are `<img>`, `<IMG_CONTEXT>` or `</img>` (what an image or frame inserts)."""
    return int(np.isin(np.asarray(ids), processor.image_token_ids).sum())


# ---- attribute names of transformers' port ------------------------------------------------------------------------


def test_video_token_is_the_video_placeholder(small):
    assert small.video_token == "<video>" == small.video_placeholder
    assert "<video>" not in small.tokenizer.get_vocab()  # the original tokenizers have no such token
    assert small.video_token_id is None
    assert small.all_special_multimodal_tokens == ["<IMG_CONTEXT>", "<video>"]


def test_video_token_id_when_the_tokenizer_has_the_token():
    tokenizer = AutoTokenizer.from_pretrained(QWEN2_TOKENIZER)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<video>"]})
    processor = _processor(tokenizer=tokenizer)
    assert processor.video_token_id == tokenizer.convert_tokens_to_ids("<video>") is not None
    assert processor.video_token_ids == [processor.video_token_id]


def test_video_token_follows_a_custom_placeholder_through_save_and_reload(tmp_path):
    processor = InternVLProcessor(
        tokenizer=AutoTokenizer.from_pretrained(QWEN2_TOKENIZER), video_placeholder="<clip>", image_size=SMALL
    )
    assert processor.video_token == "<clip>"
    processor.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert reloaded.video_token == "<clip>"
    assert "video_token" not in (tmp_path / "processor_config.json").read_text()  # derived, not stored twice


def test_port_image_attributes(small):
    tokenizer = small.tokenizer
    assert (small.start_image_token, small.end_image_token, small.image_token) == ("<img>", "</img>", "<IMG_CONTEXT>")
    assert small.start_image_token_id == tokenizer.convert_tokens_to_ids("<img>")
    assert small.end_image_token_id == tokenizer.convert_tokens_to_ids("</img>")
    assert small.image_token_id == tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert small.image_seq_length == SMALL_TOKENS


# ---- _get_num_multimodal_tokens: images ---------------------------------------------------------------------------


def test_default_448_image_counts_from_first_principles():
    """1920 x 1080 at n_max 12: the closest grid to 16:9 is 4 x 2 (ratio 2.0), plus the thumbnail: 9 tiles, 9 x 256 +
    2 tokens; 100 x 100 is one tile (no thumbnail); 30 x 500 (w x h) picks 1 x 12, plus the thumbnail."""
    processor = _processor(image_size=448)
    counts = processor._get_num_multimodal_tokens(image_sizes=[(1080, 1920), (100, 100), (500, 30)])
    assert counts["num_image_patches"] == [9, 1, 13]
    assert counts["num_image_tokens"] == [9 * 256 + 2, 258, 13 * 256 + 2]
    # vLLM's largest-image probe, `image_sizes=([10000, 10000],)`: 1x1, 2x2 and 3x3 tie on the ratio and the area
    # (1e8 > 0.5 * 448**2 * 9) moves the choice to the last, 3x3: 9 tiles and the thumbnail.
    assert processor._get_num_multimodal_tokens(image_sizes=([10000, 10000],))["num_image_tokens"] == [10 * 256 + 2]
    out = processor(text="<image>\nWhat?", images=[_image(1080, 1920)], return_mm_token_type_ids=True)
    assert out["num_tiles"] == [9]
    assert sum(out["mm_token_type_ids"][0]) == _image_token_count(processor, out["input_ids"][0]) == 2306


@pytest.mark.parametrize(
    ("init_options", "call_options"),
    [
        ({}, {}),
        ({"max_dynamic_patch": 6}, {}),
        ({}, {"max_num": 2}),
        ({}, {"use_thumbnail": False}),
        ({}, {"dynamic_image_size": False}),
        ({"min_dynamic_patch": 3, "max_dynamic_patch": 8}, {}),
        ({}, {"images_kwargs": {"max_dynamic_patch": 4, "use_thumbnail": False}}),
    ],
)
def test_image_counts_equal_what_the_processor_inserts(init_options, call_options):
    processor = _processor(**init_options)
    counts = processor._get_num_multimodal_tokens(image_sizes=SIZES, **call_options)
    images = [_image(h, w, seed) for seed, (h, w) in enumerate(SIZES)]
    out = processor(
        text=["An image <image> here"] * len(SIZES),
        images=[[image] for image in images],
        padding=True,
        return_mm_token_type_ids=True,
        **call_options,
    )
    assert counts["num_image_patches"] == out["num_tiles"]
    inserted = [_image_token_count(processor, ids) for ids in out["input_ids"]]
    assert counts["num_image_tokens"] == inserted == [sum(row) for row in out["mm_token_type_ids"]]
    assert counts["num_image_tokens"] == [2 + SMALL_TOKENS * tiles for tiles in out["num_tiles"]]


def test_settings_change_the_counts(small):
    """The processor's settings are the ones counted (a port processor would count with its own, not these)."""
    default = small._get_num_multimodal_tokens(image_sizes=[(1080, 1920)])["num_image_patches"]
    assert default == [9]
    assert small._get_num_multimodal_tokens(image_sizes=[(1080, 1920)], max_num=4)["num_image_patches"] == [3]
    assert _processor(use_thumbnail=False)._get_num_multimodal_tokens(image_sizes=[(1080, 1920)])[
        "num_image_patches"
    ] == [8]


def test_a_list_per_prompt_shares_the_prompt_tile_budget(small):
    """Seven 120 x 10 images in one prompt: budget max(1, min(12, 64 // 7)) = 9 each, so a 9 x 1 grid plus the
    thumbnail (10 tiles); alone, each would take 12 x 1 plus the thumbnail (13)."""
    sizes = [(10, 120)] * 7
    out = small(text="Look: " + "<image>" * 7, images=[_image(10, 120, seed) for seed in range(7)])
    assert out["num_tiles"] == [10] * 7
    shared = small._get_num_multimodal_tokens(image_sizes=[sizes])
    assert shared["num_image_patches"] == [10] * 7
    assert sum(shared["num_image_tokens"]) == _image_token_count(small, out["input_ids"][0])
    alone = small._get_num_multimodal_tokens(image_sizes=sizes)
    assert alone["num_image_patches"] == [13] * 7
    two_prompts = small._get_num_multimodal_tokens(image_sizes=[sizes, [(10, 120)]])
    assert two_prompts["num_image_patches"] == [10] * 7 + [13]
    assert small._get_num_multimodal_tokens(image_sizes=[sizes], max_total_tiles=None)["num_image_patches"] == [13] * 7


def test_sizes_as_arrays(small):
    import torch

    expected = small._get_num_multimodal_tokens(image_sizes=SIZES, video_sizes=[(6, 40, 50)])
    for convert in (np.array, torch.tensor):
        counts = small._get_num_multimodal_tokens(image_sizes=convert(SIZES), video_sizes=convert([(6, 40, 50)]))
        assert counts == expected


def test_two_images_per_prompt_total_matches(small):
    images = [_image(h, w, seed) for seed, (h, w) in enumerate(SIZES[:4])]
    out = small(
        text=["Two: <image><image>"] * 4,
        images=[[image, image] for image in images],
        padding=True,
        return_mm_token_type_ids=True,
        return_tensors="pt",
    )
    counts = small._get_num_multimodal_tokens(image_sizes=SIZES[:4] * 2)
    assert int(out["mm_token_type_ids"].sum()) == sum(counts["num_image_tokens"])


# ---- videos and mm_token_type_ids ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "frames_used"),
    [({}, 6), ({"num_segments": 3}, 3), ({"num_frames": 4}, 4), ({"num_frames": 3, "do_sample_frames": False}, 6)],
)
def test_video_counts_equal_the_frames_the_processor_uses(small, options, frames_used):
    videos = [_frames(6), _frames(6, 30, 70)]
    counts = small._get_num_multimodal_tokens(video_sizes=[(6, 40, 50), (6, 30, 70)], **options)
    assert counts["num_video_tokens"] == [frames_used * (2 + SMALL_TOKENS)] * 2
    out = small(
        text=["A video <video> here", "and <video>"],
        videos=[[videos[0]], [videos[1]]],
        padding=True,
        return_mm_token_type_ids=True,
        return_tensors="pt",
        **options,
    )
    types = out["mm_token_type_ids"]
    assert (types == 2).sum(-1).tolist() == counts["num_video_tokens"]
    assert (types == 1).sum().item() == 0  # frames are video tokens, not image tokens


def test_default_448_video_counts():
    processor = _processor(image_size=448)
    assert processor._get_num_multimodal_tokens(video_sizes=[(6, 40, 50)])["num_video_tokens"] == [6 * 258]
    assert processor._get_num_multimodal_tokens(video_sizes=[(100, 40, 50)], num_segments=8)["num_video_tokens"] == [
        8 * 258
    ]


def test_mm_token_type_ids_mark_images_and_frames_in_one_prompt(small):
    out = small(
        text=["<image> then <video> then <image>", "text only"],
        images=[[_image(10, 120), _image(30, 30)], []],
        videos=[[_frames(3)], []],
        padding=True,
        return_mm_token_type_ids=True,
        return_tensors="pt",
    )
    ids, types = out["input_ids"], out["mm_token_type_ids"]
    image_counts = small._get_num_multimodal_tokens(image_sizes=[[(10, 120), (30, 30)]])["num_image_tokens"]
    video_counts = small._get_num_multimodal_tokens(video_sizes=[(3, 40, 50)])["num_video_tokens"]
    assert (types[0] == 1).sum().item() == sum(image_counts)
    assert (types[0] == 2).sum().item() == sum(video_counts) == 3 * (2 + SMALL_TOKENS)
    # Typed positions are exactly the image-token ids; text, frame labels and left padding are 0.
    assert torch_equal((types != 0), np.isin(ids.numpy(), small.image_token_ids))
    assert (types[1] == 0).all()
    # In placeholder order: the first image, then the three frames (one `<img>` each), then the second image.
    assert types[0][ids[0] == small.start_image_token_id].tolist() == [1, 2, 2, 2, 1]


def torch_equal(left, right) -> bool:
    return bool((np.asarray(left) == np.asarray(right)).all())


def test_mm_token_type_ids_through_apply_chat_template_with_a_video_file(small, tmp_path):
    from test_processing_internvl import _write_video

    path = _write_video(tmp_path / "clip.mp4", num_frames=10)
    messages = [{"role": "user", "content": [{"type": "video", "path": str(path)}, {"type": "text", "text": "Hi"}]}]
    out = small.apply_chat_template(
        messages,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        processor_kwargs={"num_frames": 4, "return_mm_token_type_ids": True},
    )
    expected = small._get_num_multimodal_tokens(video_sizes=[(10, 48, 64)], num_frames=4)["num_video_tokens"]
    assert expected == [4 * (2 + SMALL_TOKENS)]
    assert [sum(1 for t in row if t == 2) for row in out["mm_token_type_ids"]] == expected


def test_mm_token_type_ids_of_a_batch_of_chats_with_a_video_and_an_image(small):
    chats = [
        [{"role": "user", "content": [{"type": "video", "video": _frames(5)}, {"type": "text", "text": "Video?"}]}],
        [
            {
                "role": "user",
                "content": [{"type": "image", "image": _image(10, 120)}, {"type": "text", "text": "Image?"}],
            }
        ],
    ]
    out = tokenized_chat(small, chats, {"padding": True, "return_mm_token_type_ids": True})
    types = out["mm_token_type_ids"]
    video = small._get_num_multimodal_tokens(video_sizes=[(5, 40, 50)])["num_video_tokens"]
    image = small._get_num_multimodal_tokens(image_sizes=[(10, 120)])["num_image_tokens"]
    assert (types == 2).sum(-1).tolist() == [video[0], 0]
    assert (types == 1).sum(-1).tolist() == [0, image[0]] == [0, 2 + 13 * SMALL_TOKENS]


# ---- text_replacement_offsets: the keys of transformers' get_text_with_replacements ---------------------------------


def _rebuild(given: str, entries: list[dict]) -> str:
    """`given` with each entry's `span` replaced by its `replacement` (insertions at 0 in order)."""
    pieces, last = [], 0
    for entry in entries:
        start, end = entry["span"]
        pieces += [given[last:start], entry["replacement"]]
        last = end
    return "".join(pieces) + given[last:]


def _check_offsets(processor, given: str, out, types: list[str]) -> list[dict]:
    entries = out["text_replacement_offsets"][0]
    assert [entry["type"] for entry in entries] == types
    expanded = _rebuild(given, entries)
    assert list(out["input_ids"][0]) == processor.tokenizer(expanded)["input_ids"]
    for entry in entries:
        assert expanded[slice(*entry["new_span"])] == entry["replacement"]
        assert given[slice(*entry["span"])] == entry["text"]
    return entries


def test_offsets_of_placeholders_in_the_text(small):
    given = "An <image> and a <video> end"
    out = small(text=given, images=[_image(10, 120)], videos=[_frames(2)], return_text_replacement_offsets=True)
    image, video = _check_offsets(small, given, out, ["image", "video"])
    assert image["replacement"] == small.image_tokens(13)
    assert video["replacement"] == f"Frame-1: {small.image_tokens(1)}\nFrame-2: {small.image_tokens(1)}"


def test_offsets_of_an_added_prefix_are_one_insertion_per_item(small):
    given = "Compare."
    out = small(text=given, images=[_image(30, 30), _image(10, 120)], return_text_replacement_offsets=True)
    first, second = _check_offsets(small, given, out, ["image", "image"])
    assert first["replacement"] == f"Image-1: {small.image_tokens(1)}\n"
    assert second["replacement"] == f"Image-2: {small.image_tokens(13)}\n"
    assert first["span"] == second["span"] == (0, 0) and first["text"] == ""

    out = small(text="What?", images=[_image(30, 30)], videos=[_frames(2)], return_text_replacement_offsets=True)
    image, video = _check_offsets(small, "What?", out, ["image", "video"])
    assert image["replacement"] == small.image_tokens(1) + "\n"
    assert video["replacement"] == f"Frame-1: {small.image_tokens(1)}\nFrame-2: {small.image_tokens(1)}\n"


def test_offsets_of_a_literal_placeholder_are_text(small):
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "Is <image> a tag?"}],
        }
    ]
    prompt = small.apply_chat_template(messages, add_generation_prompt=True)
    out = small(text=prompt, images=[_image(30, 30)], return_text_replacement_offsets=True)
    entries = _check_offsets(small, prompt, out, ["image", "text"])
    assert entries[1]["replacement"] == "" and len(entries[1]["text"]) == 1  # the escape, removed


# ---- loading and errors ---------------------------------------------------------------------------------------------


def test_counts_of_a_processor_loaded_from_an_original_folder(tmp_path):
    """`AutoProcessor` on an original folder takes `max_dynamic_patch` / `use_thumbnail` from its config.json."""
    folder = original_model_dir(tmp_path / "model")
    processor = AutoProcessor.from_pretrained(folder, max_dynamic_patch=4, use_thumbnail=False)
    assert processor._get_num_multimodal_tokens(image_sizes=[(1080, 1920)])["num_image_patches"] == [2]
    processor.save_pretrained(tmp_path / "saved")
    reloaded = AutoProcessor.from_pretrained(tmp_path / "saved")
    assert reloaded._get_num_multimodal_tokens(image_sizes=[(1080, 1920)])["num_image_tokens"] == [2 * 256 + 2]


def test_from_pretrained_takes_num_frames_as_transformers_names_num_segments(tmp_path):
    """The video processor takes `num_frames` as an alias of the original's `num_segments`; so does loading."""
    folder = original_model_dir(tmp_path / "model")
    assert AutoProcessor.from_pretrained(folder, num_frames=16).video_processor.num_segments == 16
    processor = AutoProcessor.from_pretrained(folder, num_segments=16)
    processor.save_pretrained(tmp_path / "saved")
    assert AutoProcessor.from_pretrained(tmp_path / "saved", num_frames=4).video_processor.num_segments == 4
    assert (
        AutoProcessor.from_pretrained(tmp_path / "saved", num_frames=16, num_segments=16).video_processor.num_segments
        == 16
    )
    with pytest.raises(ValueError, match="num_frames"):
        AutoProcessor.from_pretrained(folder, num_frames=4, num_segments=8)


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"image_sizes": [(0, 10)]}, ValueError, "image_sizes\\[0\\]"),
        ({"image_sizes": [(10.5, 3)]}, TypeError, "height must be an int"),
        ({"image_sizes": [(10, 10, 10)]}, ValueError, "image_sizes\\[0\\]"),
        ({"image_sizes": "10x10"}, TypeError, "image_sizes"),
        ({"image_sizes": [[(10, 10)], (10, 10)]}, ValueError, "image_sizes\\[1\\]"),
        ({"image_sizes": [(10, 10)], "image_size": 224}, ValueError, "224 px"),
        ({"video_sizes": [(0, 10, 10)]}, ValueError, "video_sizes\\[0\\]"),
        ({"video_sizes": [(4, 10)]}, ValueError, "frames, height, width"),
        ({"video_sizes": [(4, 10, 10)], "num_segments": 2, "num_frames": 3}, ValueError, "disagree"),
        ({"video_sizes": [(4, 10, 10)], "fps": 1}, ValueError, "fps"),
        ({"video_sizes": [(2000, 10, 10)]}, ValueError, "MAX_NUM_SEGMENTS"),
    ],
)
def test_bad_sizes_and_options_raise_by_name(small, kwargs, error, words):
    with pytest.raises(error, match=words):
        small._get_num_multimodal_tokens(**kwargs)
