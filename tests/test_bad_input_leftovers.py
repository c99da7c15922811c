"""Inputs an adversarial review found accepted silently or failing unclearly: each now raises a specific `TypeError` /
`ValueError` naming the argument, and the valid neighbours of each case keep working."""

import math

import numpy as np
import pytest
import torch

from transformers_internvl.processing.image_processing_internvl import InternVLChatImageProcessor
from transformers_internvl.processing.tiling import MAX_IMAGE_SIZE, plan_tiles
from transformers_internvl.processing.video_processing_internvl import InternVLChatVideoProcessor

GREEDY = {"max_new_tokens": 1, "do_sample": False}


# ---- 1. chat() / batch_chat(): `num_patches_list` and its aliases ------------------------------------------------


def test_chat_refuses_conflicting_tile_count_aliases(qwen2_model, qwen2_tokenizer):
    pixel_values = torch.zeros(2, 3, 448, 448)
    question = "<image>\n<image>\nhi"
    with pytest.raises(
        ValueError, match=r"`num_patches_list` \(\[1, 1\]\) and its alias `num_tiles_list` \(\[2, 0\]\)"
    ):
        qwen2_model.chat(
            qwen2_tokenizer, pixel_values, question, GREEDY, num_patches_list=[1, 1], num_tiles_list=[2, 0]
        )


def test_chat_accepts_equal_tile_count_aliases(qwen2_model, qwen2_tokenizer):
    pixel_values = torch.zeros(2, 3, 448, 448)
    question = "<image>\n<image>\nhi"
    alone = qwen2_model.chat(qwen2_tokenizer, pixel_values, question, GREEDY, num_patches_list=[1, 1])
    both = qwen2_model.chat(
        qwen2_tokenizer, pixel_values, question, GREEDY, num_patches_list=[1, 1], num_tiles_list=torch.tensor([1, 1])
    )
    by_alias = qwen2_model.chat(qwen2_tokenizer, pixel_values, question, GREEDY, num_tiles_list=[1, 1])
    assert both == alone == by_alias


@pytest.mark.parametrize("alias", ["num_tiles_list", "image_counts"])
def test_batch_chat_refuses_conflicting_tile_count_aliases(qwen2_model, qwen2_tokenizer, alias):
    pixel_values = torch.zeros(2, 3, 448, 448)
    with pytest.raises(ValueError, match=rf"`num_patches_list` \(\[1, 1\]\) and its alias `{alias}` \(\[2, 0\]\)"):
        qwen2_model.batch_chat(
            qwen2_tokenizer, pixel_values, ["a", "b"], GREEDY, num_patches_list=[1, 1], **{alias: [2, 0]}
        )
    with pytest.raises(ValueError, match=r"`num_tiles_list` \(\[1, 1\]\) and its alias `image_counts` \(\[2, 0\]\)"):
        qwen2_model.batch_chat(
            qwen2_tokenizer, pixel_values, ["a", "b"], GREEDY, num_tiles_list=[1, 1], image_counts=[2, 0]
        )


def test_batch_chat_accepts_equal_tile_count_aliases(qwen2_model, qwen2_tokenizer):
    pixel_values = torch.zeros(2, 3, 448, 448)
    alone = qwen2_model.batch_chat(qwen2_tokenizer, pixel_values, ["a", "b"], GREEDY, num_patches_list=[1, 1])
    both = qwen2_model.batch_chat(
        qwen2_tokenizer, pixel_values, ["a", "b"], GREEDY, num_patches_list=[1, 1], image_counts=[1, 1]
    )
    assert both == alone


def test_chat_refuses_a_tile_count_list_that_is_not_a_list(qwen2_model, qwen2_tokenizer):
    with pytest.raises(TypeError, match="`num_tiles_list` must be a list of tile counts"):
        qwen2_model.chat(
            qwen2_tokenizer, torch.zeros(2, 3, 448, 448), "hi", GREEDY, num_patches_list=[2], num_tiles_list=2
        )


# ---- 2. video processor: `num_segments` / `num_frames` and the tile-size aliases at construction -----------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_segments": 4, "num_frames": 8}, r"`num_segments` \(4\) and its alias `num_frames` \(8\) disagree"),
        ({"image_size": 224, "force_image_size": 448}, r"`image_size` \(224\) and its alias `force_image_size`"),
        ({"image_size": 224, "size": 448}, r"`image_size` \(224\) and `size` \(448\) disagree"),
        ({"force_image_size": 224, "size": {"height": 448, "width": 448}}, r"`image_size` \(224\) and `size`"),
    ],
)
def test_video_processor_refuses_conflicting_aliases(kwargs, match):
    with pytest.raises(ValueError, match=match):
        InternVLChatVideoProcessor(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "num_segments", "image_size"),
    [
        ({}, 8, 448),
        ({"num_frames": 6}, 6, 448),
        ({"num_segments": 4, "num_frames": 4}, 4, 448),
        ({"num_segments": 4, "num_frames": None}, 4, 448),
        ({"image_size": 224, "size": 224, "force_image_size": 224}, 8, 224),
        ({"size": {"height": 224, "width": 224}}, 8, 224),
        ({"force_image_size": 224}, 8, 224),
    ],
)
def test_video_processor_accepts_agreeing_aliases(kwargs, num_segments, image_size):
    processor = InternVLChatVideoProcessor(**kwargs)
    assert (processor.num_segments, processor.image_size) == (num_segments, image_size)


# ---- 5. video: the frame rate of decoded frames ------------------------------------------------------------------


@pytest.mark.parametrize("fps", [0, 0.0, -1, -25.0, float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize(
    "call_kwargs", [{"num_segments": 4}, {"num_segments": 4, "bound": (0, 1)}, {"return_metadata": True}, {}]
)
def test_video_metadata_fps_out_of_range(fps, call_kwargs):
    frames = np.zeros((10, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match=r"`video_metadata\['fps'\]` must be a positive finite number.*got"):
        InternVLChatVideoProcessor()(frames, video_metadata={"fps": fps}, **call_kwargs)


def test_video_metadata_fps_names_the_video_and_is_checked_before_decoding():
    frames = np.zeros((10, 8, 8, 3), np.uint8)
    # The second video's metadata is bad; the first video is not even a decodable file: the fps check comes first.
    with pytest.raises(ValueError, match=r"`video_metadata\[1\]\['fps'\]`.*got 0"):
        InternVLChatVideoProcessor()([b"not a video", frames], video_metadata=[None, {"fps": 0}])


@pytest.mark.parametrize(
    ("metadata", "match"),
    [
        ({"fps": "25"}, r"`video_metadata\['fps'\]` must be a number"),
        ({"fps": True}, r"`video_metadata\['fps'\]` must be a number"),
        (["fps", 25], r"`video_metadata` must be a dict or a VideoMetadata"),
    ],
)
def test_video_metadata_of_the_wrong_type(metadata, match):
    frames = np.zeros((10, 8, 8, 3), np.uint8)
    with pytest.raises(TypeError, match=match):
        InternVLChatVideoProcessor()(frames, num_segments=2, video_metadata=[metadata])


def test_valid_video_metadata_fps_still_gives_timestamps():
    frames = np.zeros((10, 8, 8, 3), np.uint8)
    out = InternVLChatVideoProcessor()(
        frames, num_segments=2, video_metadata={"fps": np.float32(2.0)}, return_metadata=True, image_size=14
    )
    # The original `get_index` on 10 frames, 2 segments: seg = 9 / 2, frames int(2.25 + round(4.5 * k)) = 2 and 6 (4.5
    # rounds half to even), at 2 fps 1.0 s and 3.0 s.
    assert out["frame_indices"] == [[2, 6]] and out["timestamps"] == [[1.0, 3.0]]


# ---- 6. tile side bound ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("image_size", [MAX_IMAGE_SIZE + 1, 10**6, 10**18])
def test_image_size_above_the_bound_is_refused_before_any_allocation(image_size):
    from PIL import Image

    image = Image.new("RGB", (8, 8))
    match = rf"`image_size` is a tile side in pixels and must be <= {MAX_IMAGE_SIZE}.*got {image_size}"
    with pytest.raises(ValueError, match=match):
        InternVLChatImageProcessor(image_size=image_size)
    with pytest.raises(ValueError, match=match):
        InternVLChatImageProcessor()(image, image_size=image_size)
    with pytest.raises(ValueError, match=match):
        InternVLChatVideoProcessor(image_size=image_size)
    with pytest.raises(ValueError, match=match):
        InternVLChatVideoProcessor()(np.zeros((2, 8, 8, 3), np.uint8), image_size=image_size)
    with pytest.raises(ValueError, match=match):
        plan_tiles(8, 8, image_size=image_size)
    with pytest.raises(ValueError, match=rf"`size` is a tile side.*got {image_size}"):
        InternVLChatImageProcessor(size={"height": image_size, "width": image_size})
    with pytest.raises(ValueError, match=match):  # an alias is checked under the canonical name
        InternVLChatImageProcessor()(image, force_image_size=image_size)


def test_image_size_at_the_bound_and_non_default_sides_still_work():
    assert InternVLChatImageProcessor(image_size=MAX_IMAGE_SIZE).image_size == MAX_IMAGE_SIZE
    assert plan_tiles(8000, 4000, image_size=MAX_IMAGE_SIZE).target_size == (2 * MAX_IMAGE_SIZE, MAX_IMAGE_SIZE)
    # A side that is no multiple of 14 is the model's concern (config / processor check it against the patch size).
    out = InternVLChatImageProcessor(image_size=30)(np.zeros((30, 30, 3), np.uint8), return_tensors="pt")
    assert tuple(out["pixel_values"].shape) == (1, 3, 30, 30)
    assert math.isclose(float(out["pixel_values"][0, 0, 0, 0]), -0.485 / 0.229, rel_tol=1e-6)


# ---- 4. tokens_per_tile ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((0, 14, 0.5), ValueError, r"`image_size` must be an int >= 1, got 0"),
        ((-448, 14, 0.5), ValueError, r"`image_size` must be an int >= 1, got -448"),
        ((448, 0, 0.5), ValueError, r"`patch_size` must be an int >= 1, got 0"),
        ((448, -14, 0.5), ValueError, r"`patch_size` must be an int >= 1, got -14"),
        ((448, 14, 0), ValueError, r"`downsample_ratio` must be a number in \(0, 1\], got 0"),
        ((448, 14, -0.5), ValueError, r"`downsample_ratio` must be a number in \(0, 1\], got -0.5"),
        ((448, 14, 2.0), ValueError, r"`downsample_ratio` must be a number in \(0, 1\], got 2.0"),
        ((448, 14, float("nan")), ValueError, r"`downsample_ratio` must be a number in \(0, 1\], got nan"),
        ((448, 14, float("inf")), ValueError, r"`downsample_ratio` must be a number in \(0, 1\], got inf"),
        ((448.0, 14, 0.5), TypeError, r"`image_size` must be an int >= 1, got float \(448.0\)"),
        (("448", 14, 0.5), TypeError, r"`image_size` must be an int >= 1, got str"),
        ((True, 14, 0.5), TypeError, r"`image_size` must be an int >= 1, got bool"),
        ((448, 14.0, 0.5), TypeError, r"`patch_size` must be an int >= 1, got float"),
        ((448, None, 0.5), TypeError, r"`patch_size` must be an int >= 1, got NoneType"),
        ((448, 14, "0.5"), TypeError, r"`downsample_ratio` must be a number in \(0, 1\], got str"),
        ((448, 14, True), TypeError, r"`downsample_ratio` must be a number in \(0, 1\], got bool"),
        ((10, 14, 0.5), ValueError, r"`image_size` 10 gives no token per tile"),
        ((14, 14, 0.5), ValueError, r"`image_size` 14 gives no token per tile"),
    ],
)
def test_tokens_per_tile_refuses_bad_geometry(args, error, match):
    from transformers_internvl.chat_templates import tokens_per_tile

    with pytest.raises(error, match=match):
        tokens_per_tile(*args)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((448, 14, 0.5), 256),  # InternVL 2.5
        ((224, 14, 0.5), 64),
        ((448, 14, 1), 1024),  # no pixel unshuffle
        ((28, 14, 0.5), 1),  # the tiny test towers
        ((np.int64(448), np.int32(14), np.float32(0.5)), 256),
        ((450, 14, 0.5), 256),  # the original's floor division: 450 // 14 == 32
    ],
)
def test_tokens_per_tile_of_valid_geometry(args, expected):
    from transformers_internvl.chat_templates import tokens_per_tile

    assert tokens_per_tile(*args) == expected


# ---- 3. apply_chat_template: malformed content items ----------------------------------------------------------------


@pytest.fixture(scope="module")
def processor():
    from helpers import qwen2_processor

    return qwen2_processor()


def _user(*content):
    return [{"role": "user", "content": list(content)}]


@pytest.mark.parametrize("tokenize", [False, True])
@pytest.mark.parametrize(
    ("conversation", "error", "match"),
    [
        (_user("hello"), TypeError, r"conversation\[0\]\['content'\]\[0\] must be a dict .* got str \('hello'\)"),
        (_user({"type": "text", "text": "a"}, 5), TypeError, r"conversation\[0\]\['content'\]\[1\] must be a dict"),
        (_user({"text": "hello"}), ValueError, r"conversation\[0\]\['content'\]\[0\] has no 'type'.*keys \['text'\]"),
        (
            _user({"type": "picture", "image": "x.png"}, {"type": "text", "text": "hi"}),
            ValueError,
            r"conversation\[0\]\['content'\]\[0\] has the unknown type 'picture'",
        ),
        (_user({"type": "audio", "url": "a.wav"}), ValueError, r"\[0\] has the unknown type 'audio'"),
        (
            _user({"type": "text"}),
            TypeError,
            r"\['content'\]\[0\] is a text item and needs a str 'text', got no 'text'",
        ),
        (_user({"type": "text", "text": 5}), TypeError, r"needs a str 'text', got 'text' of type int"),
        (
            [{"role": "system", "content": [{"type": "image", "url": "x.png"}]}, *_user({"type": "text", "text": "a"})],
            ValueError,
            r"conversation\[0\]\['content'\]\[0\] is an image item in the system message",
        ),
        (
            [*_user({"type": "text", "text": "a"}), {"role": "assistant", "content": 7}],
            TypeError,
            r"conversation\[1\]\['content'\] must be a str or a list of content items, got int",
        ),
    ],
)
def test_apply_chat_template_refuses_malformed_content(processor, conversation, error, match, tokenize):
    with pytest.raises(error, match=match):
        processor.apply_chat_template(conversation, tokenize=tokenize)


def test_apply_chat_template_names_the_conversation_of_a_batch(processor):
    good = _user({"type": "text", "text": "fine"})
    with pytest.raises(ValueError, match=r"conversation\[1\]\[0\]\['content'\]\[0\] has no 'type'"):
        processor.apply_chat_template([good, _user({"text": "lost"})])


@pytest.mark.parametrize(
    ("item", "match"),
    [
        ({"type": "image"}, r"\[0\] is an image item without its image: give one of the keys \['image', 'url'"),
        ({"type": "image", "image": None}, r"\[0\] is an image item without its image"),
        (
            {"type": "video"},
            r"\[0\] is a video item without its video: give one of the keys \['video', 'url', 'path'\]",
        ),
    ],
)
def test_apply_chat_template_refuses_media_items_without_media_when_tokenizing(processor, item, match):
    conversation = _user(item, {"type": "text", "text": "What is it?"})
    with pytest.raises(ValueError, match=match):
        processor.apply_chat_template(conversation, tokenize=True, return_dict=True)


def test_apply_chat_template_keeps_valid_messages(processor):
    from PIL import Image

    image = Image.new("RGB", (32, 32), (10, 20, 30))
    question = {"type": "text", "text": "What is it?"}
    # A media item without media renders its placeholder (for a later processor call), as in transformers.
    rendered = processor.apply_chat_template(_user({"type": "image"}, question), add_generation_prompt=True)
    assert rendered.endswith("<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n<|im_start|>assistant\n")
    # OpenAI-style image_url items are converted by transformers and render the same.
    openai = _user({"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}, question)
    assert processor.apply_chat_template(openai, add_generation_prompt=True) == rendered
    # Strings, None content and extra keys stay valid.
    plain = [{"role": "user", "content": "<image>\nWhat is it?"}, {"role": "assistant", "content": None}]
    assert "<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n" in processor.apply_chat_template(plain)
    # Tokenizing with the image in the item, or passed as `images=` for a source-less item, gives the same ids.
    by_item = processor.apply_chat_template(
        _user({"type": "image", "image": image}, question), tokenize=True, return_dict=True, return_tensors="pt"
    )
    by_argument = processor.apply_chat_template(
        _user({"type": "image"}, question),
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"images": [image]},
    )
    assert torch.equal(by_item["input_ids"], by_argument["input_ids"])
    assert torch.equal(by_item["pixel_values"], by_argument["pixel_values"])


# ---- 7. processor construction: placeholders, image token strings, frame template ---------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    from helpers import QWEN2_TOKENIZER
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(QWEN2_TOKENIZER)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"image_placeholder": ""}, ValueError, r"`image_placeholder` must be a non-empty string.*got ''"),
        ({"video_placeholder": "  "}, ValueError, r"`video_placeholder` must be a non-empty string.*got '  '"),
        ({"image_placeholder": 5}, TypeError, r"`image_placeholder` must be a str, got int \(5\)"),
        ({"video_placeholder": None}, TypeError, r"`video_placeholder` must be a str, got NoneType"),
        ({"image_placeholder": "<x>", "video_placeholder": "<x>"}, ValueError, r"`image_placeholder` \('<x>'\) and"),
        ({"video_placeholder": "<image>s"}, ValueError, r"`image_placeholder`.*`video_placeholder`.*contain"),
        ({"image_placeholder": "<img>"}, ValueError, r"`image_placeholder` \('<img>'\) and `image_start_token`"),
        ({"image_start_token": ""}, ValueError, r"`image_start_token` must be a non-empty string"),
        ({"image_end_token": 5}, TypeError, r"`image_end_token` must be a str, got int"),
        ({"image_start_token": "<IMG_CONTEXT>"}, ValueError, r"`image_start_token`.*`image_context_token`.*differ"),
        ({"video_frame_template": ""}, ValueError, r"`video_frame_template` must be a non-empty string"),
        ({"video_frame_template": 5}, TypeError, r"`video_frame_template` must be a str, got int"),
        ({"video_frame_template": "Frame: "}, ValueError, r"`video_frame_template` must contain '\{i\}'"),
        ({"video_frame_template": "F{i}{j}: "}, ValueError, r"`video_frame_template` must be formatted with `i` alone"),
        ({"video_frame_template": "F{0}{i}: "}, ValueError, r"`video_frame_template` must be formatted with `i` alone"),
        ({"video_frame_template": "F{i:q}{i}: "}, ValueError, r"`video_frame_template` must be formatted with `i`"),
        ({"system_message": 5}, TypeError, r"`system_message` must be a str or None, got int"),
        ({"patch_size": None}, TypeError, r"`patch_size` must be an int >= 1, got NoneType"),
        ({"downsample_ratio": "0.5"}, TypeError, r"`downsample_ratio` must be a number in \(0, 1\], got str"),
        ({"downsample_ratio": float("nan")}, ValueError, r"`downsample_ratio` must be a number in \(0, 1\], got nan"),
        ({"image_size": 450}, ValueError, r"`image_size` \(450\) must be a multiple of `patch_size` \(14\)"),
        ({"image_size": 14}, ValueError, r"`image_size` 14 gives no token per tile"),
        ({"image_size": 10**6}, ValueError, r"`image_size` is a tile side in pixels and must be <= 4096"),
        ({"image_size": 448.0}, TypeError, r"`image_size` must be an int, got float"),
    ],
)
def test_processor_refuses_bad_construction_arguments(tokenizer, kwargs, error, match):
    from transformers_internvl.processing.processing_internvl import InternVLChatProcessor

    with pytest.raises(error, match=match):
        InternVLChatProcessor(tokenizer=tokenizer, **kwargs)


def test_processor_keeps_valid_construction_arguments(tokenizer):
    from PIL import Image

    from transformers_internvl.processing.processing_internvl import InternVLChatProcessor

    processor = InternVLChatProcessor(
        tokenizer=tokenizer,
        video_frame_template="Frame{i} {{t}}: ",
        image_placeholder="<pic>",
        video_placeholder="<clip>",
        system_message="",
        image_size=28,
    )
    assert (processor.image_start_token, processor.image_end_token) == ("<img>", "</img>")
    assert processor.video_prompt(2) == "Frame1 {t}: <pic>\nFrame2 {t}: <pic>"
    out = processor(text="<pic> and <clip>", images=Image.new("RGB", (8, 8)), videos=np.zeros((2, 8, 8, 3), np.uint8))
    expanded = processor.tokenizer.decode(out["input_ids"][0])
    # One 28 px tile is one token (2 x 2 patches, pixel unshuffle 0.5); each video frame one tile.
    assert expanded.count("<IMG_CONTEXT>") == 3 and "Frame2 {t}: <img><IMG_CONTEXT></img>" in expanded


def test_from_pretrained_keywords_replace_saved_values_under_any_spelling(tmp_path):
    """A keyword given to `from_pretrained` replaces what the folder saved, whichever name either uses
    (`max_num` for a saved `max_dynamic_patch`, `num_frames` for a saved `num_segments`, `size` for `image_size`);
    two names given at once in one call must still agree."""
    from helpers import qwen2_processor
    from transformers import AutoImageProcessor, AutoProcessor

    from transformers_internvl import InternVLImageProcessor
    from transformers_internvl.processing.video_processing_internvl import InternVLVideoProcessor

    images, videos, full = tmp_path / "image", tmp_path / "video", tmp_path / "processor"
    InternVLImageProcessor(max_num=8).save_pretrained(images)
    for keywords, expected in (
        ({}, (8, 448)),
        ({"max_num": 6}, (6, 448)),
        ({"max_tiles": 5}, (5, 448)),
        ({"max_dynamic_patch": 4}, (4, 448)),
        ({"size": 224}, (8, 224)),
        ({"force_image_size": 336}, (8, 336)),
    ):
        loaded = AutoImageProcessor.from_pretrained(images, **keywords)
        assert (loaded.max_dynamic_patch, loaded.image_size) == expected, keywords
    with pytest.raises(ValueError, match="disagree"):
        AutoImageProcessor.from_pretrained(images, size=224, image_size=336)
    with pytest.raises(ValueError, match="disagree"):
        InternVLImageProcessor(size=224, image_size=336)  # silently 336 before

    InternVLVideoProcessor(num_frames=12).save_pretrained(videos)
    for keywords, expected in (({}, (12, 448)), ({"num_frames": 16}, (16, 448)), ({"size": 224}, (12, 224))):
        loaded = InternVLVideoProcessor.from_pretrained(videos, **keywords)
        assert (loaded.num_segments, loaded.image_size) == expected, keywords

    qwen2_processor(max_dynamic_patch=3).save_pretrained(full)
    assert AutoProcessor.from_pretrained(full, max_num=2).image_processor.max_dynamic_patch == 2
