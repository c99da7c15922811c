"""Session-11 held-out checks of the processor against the ORIGINAL chat code (issues 4 and 10).

`fixtures/processing_s11/expected.json` holds what the ORIGINAL `chat()` / `batch_chat()` tokenized (their
`input_ids` / `attention_mask`, left padding included) and the tile counts of the original `dynamic_preprocess`, for
conversations over every template of the original `conversation.py` (`internvl2_5`, `Hermes-2`, `internlm2-chat`,
`phi3-chat`, `internvl_zh`) with default, changed and empty system messages, multi-turn histories, one to three
images, videos and text only, on the Qwen2 and InternLM2 tokenizers; and the original `get_index` on edge cases
(README there). The cases are in `fixtures/processing_s11/s11_cases.py`, shared with the generator.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).parent))
FIXTURES = Path(__file__).parent / "fixtures" / "processing_s11"
sys.path.insert(0, str(FIXTURES))

from helpers import transformers_warnings  # noqa: E402
from s11_cases import (  # noqa: E402
    BATCH_CASES,
    CHAT_CASES,
    FRAME_INDEX_CASES,
    IMAGES,
    VIDEO_CASES,
    make_image,
)

from transformers_internvl import sample_frame_indices  # noqa: E402
from transformers_internvl.processing.processing_internvl import InternVLChatProcessor  # noqa: E402

EXPECTED = json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8"))
TOKENIZERS = Path(__file__).parent / "fixtures" / "tokenizers"
_TOKENIZER_CACHE: dict[str, object] = {}


def _processor(tokenizer_name: str, template: str, **kwargs) -> InternVLChatProcessor:
    if tokenizer_name not in _TOKENIZER_CACHE:
        _TOKENIZER_CACHE[tokenizer_name] = AutoTokenizer.from_pretrained(TOKENIZERS / tokenizer_name)
    return InternVLChatProcessor(tokenizer=_TOKENIZER_CACHE[tokenizer_name], template=template, **kwargs)


def _messages(turns, system_message):
    messages = [] if system_message is None else [{"role": "system", "content": system_message}]
    for role, names, text in turns:
        items = [{"type": "image", "image": make_image(*IMAGES[name])} for name in names]
        messages.append({"role": role, "content": [*items, {"type": "text", "text": text}]})
    return messages


# ---- apply_chat_template(tokenize=True) == the original chat()'s input_ids -------------------------------------------


def test_fixture_covers_every_original_template():
    templates = {case[1] for case in CHAT_CASES}
    assert templates == {"internvl2_5", "Hermes-2", "internlm2-chat", "phi3-chat", "internvl_zh"}
    assert set(EXPECTED["chat"]) == {case[0] for case in CHAT_CASES}


@pytest.mark.parametrize("case", CHAT_CASES, ids=[case[0] for case in CHAT_CASES])
def test_apply_chat_template_ids_equal_the_original_chat(case):
    case_id, template, tokenizer_name, system_message, turns, max_num = case
    expected = EXPECTED["chat"][case_id]
    processor = _processor(tokenizer_name, template)
    inputs = processor.apply_chat_template(
        _messages(turns, system_message),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        max_dynamic_patch=max_num,
    )
    assert inputs["input_ids"][0].tolist() == expected["input_ids"]
    assert inputs["attention_mask"][0].tolist() == [1] * len(expected["input_ids"])
    if expected["num_tiles"]:
        assert inputs["num_tiles"].tolist() == expected["num_tiles"]
        assert inputs["pixel_values"].shape[0] == sum(expected["num_tiles"])
    else:
        assert inputs["pixel_values"].shape[0] == 0


@pytest.mark.parametrize("case", [c for c in CHAT_CASES if c[3] is not None], ids=lambda c: c[0])
def test_system_message_at_load_time_equals_a_system_turn(case):
    """`InternVLChatProcessor(system_message=...)` (the model config's `system_message`) renders as the original model
    with that `system_message` does, as a leading system turn does."""
    case_id, template, tokenizer_name, system_message, turns, max_num = case
    processor = _processor(tokenizer_name, template, system_message=system_message)
    inputs = processor.apply_chat_template(
        _messages(turns, None), add_generation_prompt=True, tokenize=True, return_dict=True, max_dynamic_patch=max_num
    )
    assert inputs["input_ids"][0] == EXPECTED["chat"][case_id]["input_ids"]


# ---- batches: processor(text=[...]) and batched apply_chat_template == the original batch_chat ---------------------


@pytest.mark.parametrize("case", BATCH_CASES, ids=[case[0] for case in BATCH_CASES])
def test_batch_equals_the_original_batch_chat(case):
    case_id, template, tokenizer_name, rows, max_num = case
    expected = EXPECTED["batch"][case_id]
    processor = _processor(tokenizer_name, template)
    conversations = [
        [
            {
                "role": "user",
                "content": [
                    *([{"type": "image", "image": make_image(*IMAGES[name])}] if name else []),
                    {"type": "text", "text": question},
                ],
            }
        ]
        for name, question in rows
    ]
    batched = processor.apply_chat_template(
        conversations,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        padding=True,
        return_tensors="pt",
        max_dynamic_patch=max_num,
    )
    texts = processor.apply_chat_template(conversations, add_generation_prompt=True)
    images = [[make_image(*IMAGES[name])] for name, _ in rows if name]
    called = processor(text=texts, images=images or None, padding=True, return_tensors="pt", max_dynamic_patch=max_num)
    for inputs in (batched, called):
        assert inputs["input_ids"].tolist() == expected["input_ids"]
        assert inputs["attention_mask"].tolist() == expected["attention_mask"]
        if any(expected["num_tiles"]):
            assert inputs["num_tiles"].tolist() == expected["num_tiles"]


# ---- video prompts --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", VIDEO_CASES, ids=[case[0] for case in VIDEO_CASES])
def test_video_prompt_ids_equal_the_original_readme_video_chat(case):
    case_id, template, tokenizer_name, num_frames, question, label = case
    processor = _processor(tokenizer_name, template, video_frame_template=label)
    frames = [make_image(64 + 8 * i, 48, i) for i in range(num_frames)]
    messages = [{"role": "user", "content": [{"type": "video", "video": frames}, {"type": "text", "text": question}]}]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, num_segments=num_frames
    )
    assert inputs["input_ids"][0] == EXPECTED["video"][case_id]["input_ids"]
    assert list(inputs["num_tiles"]) == [1] * num_frames


# ---- frame indices == the original get_index -------------------------------------------------------------------------


@pytest.mark.parametrize("index", range(len(FRAME_INDEX_CASES)), ids=lambda i: str(FRAME_INDEX_CASES[i]))
def test_frame_indices_equal_the_original_get_index(index):
    num_frames, fps, num_segments, bound, first_idx = FRAME_INDEX_CASES[index]
    indices = sample_frame_indices(
        num_frames, fps, num_segments, bound=bound, first_idx=first_idx, max_frame=num_frames - 1
    )
    assert indices == EXPECTED["frame_indices"][index]


# ---- tokenizer options the processor cannot expand placeholders for: refused by name ---------------------------------
# Before session 11: `is_split_into_words=True` crashed in transformers' token check (`TypeError: 'int' object is not
# iterable`) or claimed "`text[0]` must be a str"; `text_pair` was tokenized after the expanded text with its own
# `<image>` left unexpanded; `text_target` crashed (`object of type 'int' has no len()`); `text_pair_target` was
# silently dropped.

_UNSUPPORTED = [
    ("is_split_into_words", {"is_split_into_words": True}, ["<image>", "Describe", "it"]),
    ("is_split_into_words", {"is_split_into_words": True}, [["<image>", "Describe"], ["Hi"]]),
    ("is_split_into_words", {"text_kwargs": {"is_split_into_words": True}}, ["<image>\nDescribe it"]),
    ("text_pair", {"text_pair": ["<image> and more"]}, ["<image>\nDescribe it"]),
    ("text_pair", {"text_pair": "more"}, "<image>\nDescribe it"),
    ("text_target", {"text_target": "answer"}, "<image>\nDescribe it"),
    ("text_pair_target", {"text_pair_target": "x"}, "<image>\nDescribe it"),
]


@pytest.mark.parametrize("name, options, text", _UNSUPPORTED, ids=[f"{c[0]}-{i}" for i, c in enumerate(_UNSUPPORTED)])
def test_tokenizer_options_without_placeholder_expansion_are_refused_by_name(name, options, text):
    processor = _processor("qwen2-tiny", "internvl2_5")
    with pytest.raises(ValueError, match=f"`{name}`"):
        processor(text=text, images=[make_image(*IMAGES["square"])], **options)
    with pytest.raises(ValueError, match=f"`{name}`"):  # text only as well: the ids would not be the chat format's
        processor(text=text if isinstance(text, str) else text[:1], **options)


def test_false_or_none_values_of_those_options_are_accepted():
    processor = _processor("qwen2-tiny", "internvl2_5")
    plain = processor(text="Hi there")
    for options in ({"is_split_into_words": False}, {"text_pair": None}, {"text_target": None}):
        assert processor(text="Hi there", **options)["input_ids"] == plain["input_ids"]


# ---- return_overflowing_tokens ---------------------------------------------------------------------------------------
# Before session 11 a text-only call failed with "Mismatch in `image` token count ... Got ids=[0, 0, 0, 0, 0] and
# text=[0]" (no image anywhere); with images the same misleading count error.


@pytest.mark.parametrize("tokenizer_name", ["qwen2-tiny", "internlm2-dummy-prefix"])
def test_overflowing_tokens_of_a_text_only_batch_equal_the_tokenizers(tokenizer_name):
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZERS / tokenizer_name)  # its own: the call leaves truncation state
    processor = InternVLChatProcessor(tokenizer=tokenizer, template="internvl2_5")
    texts = ["one two three four five six seven eight nine", "ten eleven"]
    options = dict(truncation=True, max_length=4, stride=1, return_overflowing_tokens=True)
    out = processor(text=texts, return_mm_token_type_ids=True, **options)
    reference = processor.tokenizer(texts, padding_side="left", **options)
    assert out["input_ids"] == reference["input_ids"]
    assert out["overflow_to_sample_mapping"] == reference["overflow_to_sample_mapping"]
    assert out["mm_token_type_ids"] == [[0] * len(row) for row in reference["input_ids"]]


def test_overflowing_tokens_with_images_or_videos_are_refused_by_name():
    processor = _processor("qwen2-tiny", "internvl2_5")
    options = dict(truncation=True, max_length=64, return_overflowing_tokens=True)
    with pytest.raises(ValueError, match="`return_overflowing_tokens=True` with images or videos"):
        processor(text="<image>\nDescribe", images=make_image(*IMAGES["square"]), **options)
    frames = [make_image(40, 30, i) for i in range(2)]
    with pytest.raises(ValueError, match="`return_overflowing_tokens=True` with images or videos"):
        processor(text="<video>\nDescribe", videos=[frames], **options)


# ---- load-time `template` / `system_message` on a SAVED processor ----------------------------------------------------
# Before session 11 `AutoProcessor.from_pretrained(saved, template="phi3-chat", system_message=...)` set the attributes
# (and `chat_eos_token` = `<|end|>`) but kept the saved chat template: the prompts stayed `<|im_start|>...` with the
# saved system message. On an original folder (no saved chat template) the same options already worked.


@pytest.mark.parametrize("case_id", ["phi3_system_text", "hermes_multi_turn_text", "zh_system", "i25_empty_system"])
def test_load_time_template_and_system_message_reach_the_saved_chat_template(tmp_path, case_id):
    from transformers import AutoProcessor

    case = {c[0]: c for c in CHAT_CASES}[case_id]
    _, template, tokenizer_name, system_message, turns, _ = case
    _processor(tokenizer_name, "internvl2_5").save_pretrained(tmp_path)  # another template, the default system
    loaded = AutoProcessor.from_pretrained(tmp_path, template=template, system_message=system_message)
    inputs = loaded.apply_chat_template(_messages(turns, None), add_generation_prompt=True, tokenize=True)
    assert inputs[0] == EXPECTED["chat"][case_id]["input_ids"]
    assert (loaded.template, loaded.system_message) == (template, system_message)
    # and saved again, the options and the prompt stay
    loaded.save_pretrained(tmp_path / "again")
    reloaded = AutoProcessor.from_pretrained(tmp_path / "again")
    assert reloaded.apply_chat_template(_messages(turns, None), add_generation_prompt=True, tokenize=True) == inputs


def test_load_time_system_message_alone_keeps_the_saved_template(tmp_path):
    from transformers import AutoProcessor

    _processor("qwen2-tiny", "Hermes-2").save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path, system_message="Be terse.")
    turns = [("user", [], "Q1"), ("assistant", [], "A1"), ("user", [], "Q2")]
    ids = loaded.apply_chat_template(_messages(turns, None), add_generation_prompt=True, tokenize=True)
    assert ids[0] == EXPECTED["chat"]["hermes_multi_turn_text"]["input_ids"]


def test_a_custom_saved_chat_template_is_kept_with_a_warning(tmp_path, caplog):
    from transformers import AutoProcessor

    custom = "{% for m in messages %}{{ m['content'] }}|{% endfor %}"
    _processor("qwen2-tiny", "internvl2_5").save_pretrained(tmp_path)
    (tmp_path / "chat_template.jinja").write_text(custom, encoding="utf-8")
    with transformers_warnings(caplog):
        loaded = AutoProcessor.from_pretrained(tmp_path, system_message="X")
    assert loaded.chat_template == custom
    assert "system_message" in caplog.text and "custom chat template" in caplog.text


# ---- a call's truncation is not saved with the processor -------------------------------------------------------------
# Before session 11: after `processor(..., truncation=True, max_length=4)`, `save_pretrained` wrote the fast
# tokenizer's call-time truncation into tokenizer.json; transformers loads it as the tokenizer's `max_length`, which
# the processor takes as a default, so the reloaded processor cut EVERY prompt to 4 tokens (and refused images).


@pytest.mark.parametrize("tokenizer_name", ["qwen2-tiny", "internlm2-dummy-prefix"])
def test_a_calls_truncation_does_not_reach_the_saved_processor(tmp_path, tokenizer_name):
    from transformers import AutoProcessor

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZERS / tokenizer_name)
    processor = InternVLChatProcessor(tokenizer=tokenizer, template="internvl2_5")
    text = "<image>\none two three four five six seven eight nine ten"
    image = make_image(*IMAGES["tiny"])
    expected = processor(text=text, images=image)["input_ids"]
    processor(text=["one", "two three"], padding=True)
    processor(text=["one two three four five"], truncation=True, max_length=4)  # the last call before saving
    processor.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert reloaded(text=text, images=image)["input_ids"] == expected
    assert processor(text=text, images=image)["input_ids"] == expected  # the saved processor too
    assert reloaded(text=["one two three four five"], truncation=True, max_length=4)["input_ids"] == [
        processor.tokenizer(["one two three four five"], truncation=True, max_length=4)["input_ids"][0]
    ]
