"""`training.data.InternVLSupervisedDataset`: formats, tile budgets, labels, bad data."""

import json
import logging

import pytest
import torch
from finetune_helpers import dataset, tokenizer, write_image, write_jsonl

from transformers_internvl.processing.image_processing_internvl import InternVLImageProcessor
from transformers_internvl.training.data import InternVLSupervisedDataset, load_meta
from transformers_internvl.training.labels import tokenize_conversation

H = lambda v: {"from": "human", "value": v}  # noqa: E731
G = lambda v: {"from": "gpt", "value": v}  # noqa: E731


@pytest.fixture()
def images(tmp_path):
    write_image(tmp_path / "wide.png", (900, 300), seed=1)  # 3:1 -> grid 2x1 at budget 2 (+ thumbnail)
    write_image(tmp_path / "small.png", (100, 100), seed=2)
    return tmp_path


def test_single_image_gets_max_dynamic_patch_and_a_tag(images):
    ds = dataset([{"image": "wide.png", "conversations": [H("What is it?"), G("Noise.")]}], root=images)
    sample = ds[0]
    assert sample["pixel_values"].shape == (3, 3, 448, 448)  # 2 grid tiles + thumbnail
    assert sample["image_flags"].tolist() == [1, 1, 1]
    expected = tokenize_conversation(
        [H("<image>\nWhat is it?"), G("Noise.")], tokenizer(), "internvl2_5", num_image_tokens=[3 * 256]
    )
    assert sample["input_ids"].tolist() == expected.input_ids
    assert sample["labels"].tolist() == expected.labels


def test_multi_image_shares_the_budget(images):
    row = {"image": ["wide.png", "wide.png"], "conversations": [H("<image>\n<image>\nSame?"), G("Yes.")]}
    sample = dataset([row], root=images, max_dynamic_patch=4)[0]
    # max(1, 4 // 2) = 2 grid tiles each, + thumbnail each
    assert sample["pixel_values"].shape[0] == 6
    assert (sample["input_ids"] == tokenizer().convert_tokens_to_ids("</img>")).sum() == 2


def test_text_only_gets_one_dummy_tile_with_flag_zero():
    sample = dataset([{"conversations": [H("hi"), G("hello")]}])[0]
    assert sample["pixel_values"].shape == (1, 3, 448, 448)
    assert sample["image_flags"].tolist() == [0]
    white = InternVLImageProcessor()(images=torch.full((3, 224, 224), 255, dtype=torch.uint8), return_tensors="pt")
    assert torch.equal(sample["pixel_values"], white["pixel_values"])
    assert tokenizer().convert_tokens_to_ids("<IMG_CONTEXT>") not in sample["input_ids"].tolist()


def test_messages_format_equals_conversations(images):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image", "path": "small.png"}, {"type": "text", "text": "Colour?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Grey."}]},
    ]
    conversations = [{"from": "system", "value": "Be brief."}, H("<image>\nColour?"), G("Grey.")]
    a = dataset([{"messages": messages}], root=images)[0]
    b = dataset([{"image": "small.png", "conversations": conversations}], root=images)[0]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_video_frame_folder_one_tile_per_frame(tmp_path):
    (tmp_path / "clip").mkdir()
    for i in range(6):
        write_image(tmp_path / "clip" / f"{i:03d}.jpg", (320, 240), seed=i)
    row = {"video": "clip", "conversations": [H("<video>\nWhat moves?"), G("Nothing.")]}
    sample = dataset([row], root=tmp_path, num_video_frames=4)[0]
    assert sample["pixel_values"].shape[0] == 4
    text = tokenizer().decode(sample["input_ids"][: 30 + 4 * 260])
    assert "Frame-1: <img>" in text and "Frame-4: <img>" in text


def test_meta_file_repeat_time_and_max_dynamic_patch(images):
    write_jsonl(images / "a.jsonl", [{"image": "wide.png", "conversations": [H("x"), G("y")]}] * 2)
    meta = {
        "a": {"root": str(images), "annotation": str(images / "a.jsonl"), "repeat_time": 3, "max_dynamic_patch": 1},
        "b": {"root": str(images), "annotation": str(images / "a.jsonl"), "repeat_time": 0.5, "data_augment": True},
    }
    (images / "meta.json").write_text(json.dumps(meta))
    ds = InternVLSupervisedDataset.from_meta(
        images / "meta.json", tokenizer(), InternVLImageProcessor(), "internvl2_5", max_dynamic_patch=2
    )
    assert len(ds) == 2 * 3 + 1
    assert ds[0]["pixel_values"].shape[0] == 1  # the meta file's max_dynamic_patch
    augmented = ds[6]["pixel_values"]
    plain = dataset([{"image": "wide.png", "conversations": [H("x"), G("y")]}], root=images)[0]["pixel_values"]
    assert augmented.shape == plain.shape and not torch.equal(augmented, plain)  # JPEG re-encoding
    correlation = torch.corrcoef(torch.stack([augmented.flatten(), plain.flatten()]))[0, 1]
    assert correlation > 0.5  # the same picture, degraded


def test_load_meta_rejects_bad_repeat_time(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"d": {"root": "", "annotation": "x.jsonl", "repeat_time": 1.5}}))
    with pytest.raises(ValueError, match="'d' repeat_time"):
        load_meta(tmp_path / "m.json")


def test_bad_samples_are_skipped_logged_and_counted(images, caplog):
    rows = [
        {"image": "missing.png", "conversations": [H("x"), G("y")]},
        {"image": "small.png", "conversations": [H("<image><image>x"), G("y")]},
        {"conversations": []},
        {"conversations": [H("word " * 1000), G("y")]},
        {"image": "small.png", "conversations": [H("good"), G("sample")]},
    ]
    write_jsonl(images / "data.jsonl", rows)
    (images / "data.jsonl").write_text((images / "data.jsonl").read_text() + "{not json\n")
    ds = dataset(images / "data.jsonl", root=images, max_length=600)
    with caplog.at_level(logging.WARNING):
        report = ds.scan()
    assert len(report) == 5
    reasons = report.reasons
    assert "missing image file" in reasons[f"{images / 'data.jsonl'}:1"]
    assert "2 '<image>' tags" in reasons[f"{images / 'data.jsonl'}:2"]
    assert reasons[f"{images / 'data.jsonl'}:3"] == "empty conversation"
    assert "over-length" in reasons[f"{images / 'data.jsonl'}:4"]
    assert "JSONDecodeError" in reasons[f"{images / 'data.jsonl'}:6"]
    assert f"Skipping sample {images / 'data.jsonl'}:1: missing image file" in caplog.text
    assert ds.skipped.counts() == {
        "missing image file *": 1,
        "* '<image>' tags in human turns but * images": 1,
        "empty conversation": 1,
        "over-length sample": 1,
        "JSONDecodeError": 1,
    }
    # every index yields the good sample; iteration goes on
    good = ds[4]
    for index in range(len(ds)):
        assert torch.equal(ds[index]["input_ids"], good["input_ids"])


def test_image_tags_without_images_are_skipped():
    ds = dataset([{"conversations": [H("<image>\nhi"), G("x")]}, {"conversations": [H("hi"), G("x")]}])
    assert torch.equal(ds[0]["input_ids"], ds[1]["input_ids"])
    assert ds.skipped.reasons == {"records[0]": "1 '<image>' tags in human turns but 0 images"}


def test_all_bad_raises():
    ds = dataset([{"conversations": []}])
    with pytest.raises(RuntimeError, match="All 1 samples are bad"):
        ds[0]


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"conversations": [{"from": "human", "value": 5}, {"from": "gpt", "value": "a"}]}, "value must be a string"),
        ({"conversations": [{"value": "hi"}, {"from": "gpt", "value": "a"}]}, "with a string `from`"),
        ({"conversations": "hello"}, "`conversations` must be a list"),
        ({"conversations": ["hi", "a"]}, "with a string `from`"),
        ({"image": 5, "conversations": [{"from": "human", "value": "hi"}]}, "`image` must be a path"),
        ({"video": 5, "conversations": [{"from": "human", "value": "hi"}]}, "`video` must be a path"),
        ({"messages": [{"role": "user", "content": 5}]}, "content must be a string or a list"),
        ({"messages": "hi"}, "`messages` must be a list of objects"),
        (None, "must be a JSON object"),
        ([1, 2], "must be a JSON object"),
        (
            {"conversations": [{"from": "human", "value": "look <IMG_CONTEXT> here"}, {"from": "gpt", "value": "a"}]},
            "reserved token string '<IMG_CONTEXT>'",
        ),
        (
            {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "a<|im_end|>b"}]},
            "reserved token string '<|im_end|>'",
        ),
    ],
)
def test_malformed_rows_are_skipped_with_the_reason(tmp_path, row, reason):
    """Hostile shapes of a row never crash the dataset: the row is skipped with a reason, the next one is used."""
    from transformers_internvl.training.labels import SampleError  # noqa: F401  (the type the reasons come from)

    good = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps(good) + "\n")
    ds = dataset(path)
    sample = ds[0]
    assert sample["input_ids"].numel() > 0
    ((source, recorded),) = ds.skipped.reasons.items()
    assert source.endswith(":1") and reason in recorded
