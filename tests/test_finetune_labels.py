"""Labels of `training.labels.tokenize_conversation` against the original preprocess functions (fixture)."""

import json

import pytest
from helpers import FIXTURES, TOKENIZERS
from transformers import AutoTokenizer

import transformers_internvl  # noqa: F401
from transformers_internvl.training.labels import (
    IGNORE_INDEX,
    SampleError,
    tokenize_conversation,
    video_frame_tags,
)

DATA = json.loads((FIXTURES / "finetune" / "labels.json").read_text())
# More outputs of the original preprocess functions, on template / tokenizer pairs labels.json does not hold (its
# README in fixtures/finetune says how both were made); same added special tokens.
HELDOUT = json.loads((FIXTURES / "finetune" / "labels_heldout.json").read_text())
assert HELDOUT["added_special_tokens_for_+specials"] == DATA["added_special_tokens_for_+specials"]
_TOKENIZERS = {}


def _tokenizer(name):
    if name not in _TOKENIZERS:
        tokenizer = AutoTokenizer.from_pretrained(TOKENIZERS / name.replace("+specials", ""))
        if name.endswith("+specials"):
            tokenizer.add_special_tokens({"additional_special_tokens": DATA["added_special_tokens_for_+specials"]})
        _TOKENIZERS[name] = tokenizer
    return _TOKENIZERS[name]


def _id(case):
    return f"{case['template']}-{case['tokenizer']}-{case['case']}"


@pytest.mark.parametrize("case", DATA["cases"] + HELDOUT["cases"], ids=_id)
def test_labels_equal_the_original(case):
    tokenizer = _tokenizer(case["tokenizer"])
    call = dict(
        tokenizer=tokenizer,
        template=case["template"],
        num_image_tokens=case["num_image_tokens"],
        max_length=case["max_length"],
    )
    if "error" in case:  # the original rejects the sample (and resamples another one)
        with pytest.raises(SampleError):
            tokenize_conversation(case["conversations"], **call)
        return
    sample = tokenize_conversation(case["conversations"], **call)
    assert sample.input_ids == case["input_ids"]
    assert sample.labels == case["labels"]


def test_fixture_covers_every_template_and_case():
    covered = {(c["template"], c["case"]) for c in DATA["cases"] if c.get("labels") and set(c["labels"]) != {-100}}
    for template in ("internvl2_5", "internlm2-chat", "phi3-chat", "Hermes-2"):
        assert {case for t, case in covered if t == template} >= {"single_image", "video"}
    assert {case for t, case in covered if t == "internvl2_5"} >= {
        "multi_turn",
        "system_message",
        "multi_image",
        "video",
        "text_only",
    }


def test_internvl2_5_trains_only_answers_and_im_end():
    tokenizer = _tokenizer("qwen2-tiny")
    conv = [{"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "ok there"}]
    sample = tokenize_conversation(conv, tokenizer, "internvl2_5", num_image_tokens=[3])
    trained = [t for t, label in zip(sample.input_ids, sample.labels) if label != IGNORE_INDEX]
    assert tokenizer.decode(trained) == "ok there<|im_end|>"
    assert tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>") not in trained


@pytest.mark.parametrize(
    ("conversations", "images", "reason"),
    [
        ([], [], "empty conversation"),
        ([{"from": "human", "value": "<image><image>x"}, {"from": "gpt", "value": "y"}], [4], "2 '<image>' tags"),
        ([{"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}], [4], "0 '<image>' tags"),
        ([{"from": "human", "value": "x"}], [], "no assistant"),
        ([{"from": "robot", "value": "x"}], [], "role 'robot'"),
    ],
)
def test_bad_conversations_raise_sample_error(conversations, images, reason):
    with pytest.raises(SampleError, match=reason):
        tokenize_conversation(conversations, _tokenizer("qwen2-tiny"), "internvl2_5", num_image_tokens=images)


def test_truncation_inside_an_image_is_rejected():
    conv = [{"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "ok"}]
    with pytest.raises(SampleError, match="cut an image"):
        tokenize_conversation(conv, _tokenizer("qwen2-tiny"), "internvl2_5", num_image_tokens=[64], max_length=20)


def test_unknown_template_raises():
    with pytest.raises(ValueError, match="internvl_zh"):
        tokenize_conversation([{"from": "gpt", "value": "x"}], _tokenizer("qwen2-tiny"), "internvl_zh")


def test_video_frame_tags():
    assert video_frame_tags(2) == "Frame-1: <image>\nFrame-2: <image>"


def test_processor_assistant_mask_with_an_image_equals_the_labels():
    import numpy as np
    from PIL import Image

    from transformers_internvl.processing.image_processing_internvl import InternVLImageProcessor
    from transformers_internvl.processing.processing_internvl import InternVLProcessor

    tokenizer = _tokenizer("qwen2-tiny")
    processor = InternVLProcessor(tokenizer=tokenizer, image_processor=InternVLImageProcessor(max_dynamic_patch=1))
    image = Image.fromarray(np.zeros((64, 64, 3), np.uint8))
    messages = [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Name it."}]},
        {"role": "assistant", "content": "red"},
    ]
    out = processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    expected = tokenize_conversation(
        [{"from": "human", "value": "<image>\nName it."}, {"from": "gpt", "value": "red"}],
        tokenizer,
        "internvl2_5",
        num_image_tokens=[256],
    )
    assert list(out["input_ids"][0]) == expected.input_ids
    assert [int(m) for m in out["assistant_masks"][0]] == [int(label != IGNORE_INDEX) for label in expected.labels]


def _tiny_processor():
    from transformers_internvl.processing.image_processing_internvl import InternVLImageProcessor
    from transformers_internvl.processing.processing_internvl import InternVLProcessor

    tokenizer = _tokenizer("qwen2-tiny")
    return tokenizer, InternVLProcessor(
        tokenizer=tokenizer, image_processor=InternVLImageProcessor(max_dynamic_patch=1)
    )


def test_processor_assistant_mask_multi_turn_with_images_in_two_turns_equals_the_labels():
    import numpy as np
    from PIL import Image

    tokenizer, processor = _tiny_processor()
    image = Image.fromarray(np.zeros((64, 64, 3), np.uint8))
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Name it."}]},
        {"role": "assistant", "content": "red square"},
        {"role": "user", "content": [{"type": "text", "text": "And this?"}, {"type": "image", "image": image}]},
        {"role": "assistant", "content": "the same"},
    ]
    out = processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    expected = tokenize_conversation(
        [
            {"from": "system", "value": "Be brief."},
            # The chat template numbers the images of a conversation and puts each before its turn's text.
            {"from": "human", "value": "Image-1: <image>\nName it."},
            {"from": "gpt", "value": "red square"},
            {"from": "human", "value": "Image-2: <image>\nAnd this?"},
            {"from": "gpt", "value": "the same"},
        ],
        tokenizer,
        "internvl2_5",
        num_image_tokens=[256, 256],
    )
    assert list(out["input_ids"][0]) == expected.input_ids
    assert [int(m) for m in out["assistant_masks"][0]] == [int(label != IGNORE_INDEX) for label in expected.labels]


def test_text_replacement_offsets_from_first_principles():
    """`span` in the text as given, `new_span` in the expanded text; an added `Image-i:` prefix is one insertion at
    0 (what transformers' `_adjust_assistant_masks_indices` reads)."""
    import numpy as np
    from PIL import Image

    _, processor = _tiny_processor()
    image = Image.fromarray(np.zeros((64, 64, 3), np.uint8))
    tokens = len(processor.image_tokens(1))
    out = processor(text="<image> and <image>", images=[image, image], return_text_replacement_offsets=True)
    spans = [(entry["span"], entry["new_span"]) for entry in out["text_replacement_offsets"][0]]
    assert spans == [((0, 7), (0, tokens)), ((12, 19), (tokens + 5, 2 * tokens + 5))]
    out = processor(text="Compare.", images=[image, image], return_text_replacement_offsets=True)
    # The added "Image-1: <image>\nImage-2: <image>\n": one insertion at 0 per image, label through line break.
    item = len("Image-1: \n") + tokens
    spans = [(entry["span"], entry["new_span"]) for entry in out["text_replacement_offsets"][0]]
    assert spans == [((0, 0), (0, item)), ((0, 0), (item, 2 * item))]
    plain = processor(text="Compare.", images=[image, image], return_tensors="pt")
    assert "text_replacement_offsets" not in plain


@pytest.mark.parametrize("tokenizer_name", ["qwen2-tiny", "internlm2-dummy-prefix"])
def test_assistant_mask_with_literal_placeholder_text_and_an_image(tokenizer_name):
    """Escaped literal `<image>` / `<video>` text, an added BOS and an expanded image all shift the text: the mask
    still covers exactly each answer and its end token. (transformers refuses `sanitize_control_tokens=True` with
    `return_assistant_tokens_mask=True`.)"""
    import numpy as np
    from PIL import Image

    from transformers_internvl.processing.image_processing_internvl import InternVLImageProcessor
    from transformers_internvl.processing.processing_internvl import InternVLProcessor

    tokenizer = _tokenizer(tokenizer_name)
    processor = InternVLProcessor(tokenizer=tokenizer, image_processor=InternVLImageProcessor(max_dynamic_patch=1))
    image = Image.fromarray(np.zeros((64, 64, 3), np.uint8))
    messages = [
        {
            "role": "user",
            "content": [{"type": "image", "image": image}, {"type": "text", "text": "What is the <image> tag?"}],
        },
        {"role": "assistant", "content": "An HTML tag."},
        {"role": "user", "content": [{"type": "text", "text": "And <video>?"}]},
        {"role": "assistant", "content": "Another one."},
    ]
    out = processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert len(out["pixel_values"]) == 1
    ids, mask = list(out["input_ids"][0]), [int(m) for m in out["assistant_masks"][0]]
    runs, current = [], []
    for token_id, flag in zip(ids, mask):
        if flag:
            current.append(token_id)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    # (sentencepiece decodes a run that starts mid-text with a leading space)
    assert [tokenizer.decode(run).strip() for run in runs] == ["An HTML tag.<|im_end|>", "Another one.<|im_end|>"]
