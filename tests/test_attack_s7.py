"""Session 7 attack (re-check of issue 12): hostile inputs on ground earlier rounds left untried.

Each test failed before its fix; the input that triggered the defect is in the test's docstring. Valid neighbours
of each case are checked to still work.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
import threading
import zlib

import numpy as np
import pytest
import torch
from finetune_helpers import GPT_TURN, HUMAN_TURN, dataset, tokenizer, write_image, write_small_dataset
from helpers import QWEN2_IMAGE_TOKEN_ID, original_model_dir, qwen2_processor
from PIL import Image

import transformers_internvl  # noqa: F401  (registers the classes)
from transformers_internvl.processing.image_loading import load_image_source
from transformers_internvl.processing.image_processing_internvl import InternVLImageProcessor
from transformers_internvl.processing.video_decoding import read_video_frames
from transformers_internvl.training.data import InternVLSupervisedDataset, load_meta

GREEDY = {"max_new_tokens": 1, "do_sample": False}


@pytest.fixture(scope="module")
def processor():
    return qwen2_processor()


@pytest.fixture(scope="module")
def bomb_png(tmp_path_factory):
    """A valid grey PNG of 14000 x 14000 px (over Pillow's 2 x MAX_IMAGE_PIXELS limit), a few hundred kB."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    _bomb_png(path)
    return path


def _bomb_png(path, side: int = 14000) -> None:
    packer = zlib.compressobj(9)
    row = b"\x00" * (side + 1)
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


# ---- 1. generate / forward with malformed pixel_values (silently answered before) -----------------------------------


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool])
def test_generate_and_forward_refuse_integer_pixel_values(qwen2_model, qwen2_io, dtype):
    """`model.generate(pixel_values=pixels.to(torch.uint8), ...)` (raw pixels, a mask) was cast to float and answered;
    `chat()` already refused it."""
    inputs = {k: qwen2_io[k] for k in ("input_ids", "attention_mask")}
    pixel_values = qwen2_io["pixel_values"].to(dtype)
    with pytest.raises(TypeError, match=r"`pixel_values` must be a floating tensor .* got dtype torch\."):
        qwen2_model.generate(**inputs, pixel_values=pixel_values, **GREEDY)
    with pytest.raises(TypeError, match="`pixel_values` must be a floating tensor"):
        qwen2_model(**inputs, pixel_values=pixel_values)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_generate_and_forward_refuse_non_finite_pixel_values(qwen2_model, qwen2_io, value):
    """One NaN / inf pixel made NaN image features and logits, and `generate` answered from them."""
    inputs = {k: qwen2_io[k] for k in ("input_ids", "attention_mask")}
    pixel_values = qwen2_io["pixel_values"].clone()
    pixel_values[0, 1, 7, 9] = value
    with pytest.raises(ValueError, match="`pixel_values` holds NaN or infinite values"):
        qwen2_model.generate(**inputs, pixel_values=pixel_values, **GREEDY)
    with pytest.raises(ValueError, match="`pixel_values` holds NaN or infinite values"):
        qwen2_model(**inputs, pixel_values=pixel_values)


def test_generate_names_the_shape_before_the_tile_count(qwen2_model, qwen2_io):
    """`pixel_values` of shape (3, 448, 448) (one tile without its batch axis) was reported as '`num_tiles` sums to 1
    but `pixel_values` holds 3 tiles'."""
    inputs = {k: qwen2_io[k] for k in ("input_ids", "attention_mask")}
    with pytest.raises(ValueError, match=r"must have shape \(num_tiles, 3, 448, 448\), got \(3, 448, 448\)"):
        qwen2_model.generate(**inputs, pixel_values=qwen2_io["pixel_values"][0], num_tiles=[1], **GREEDY)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_floating_pixel_values_of_any_precision_still_generate(qwen2_model, qwen2_io, dtype):
    inputs = {k: qwen2_io[k] for k in ("input_ids", "attention_mask")}
    output = qwen2_model.generate(**inputs, pixel_values=qwen2_io["pixel_values"].to(dtype), **GREEDY)
    assert output.shape == (1, inputs["input_ids"].shape[1] + 1)


# ---- 2. paths that are not regular files (hang / unbounded memory before) -------------------------------------------


def _in_thread_with_timeout(function, seconds: float = 10.0):
    """`function()`'s result or exception, failing the test when it does not return within `seconds`."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = function()
        except BaseException as error:  # noqa: BLE001 - handed to the test
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"no answer within {seconds} s (blocked)")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("kind", ["image", "video"])
def test_a_fifo_path_is_refused_instead_of_blocking(tmp_path, kind):
    """`processor(images="/path/to/fifo")` blocked forever in `open()` (no writer); the video reader too."""
    fifo = tmp_path / "photo.png"
    os.mkfifo(fifo)
    load = (lambda: load_image_source(str(fifo), "images[0]")) if kind == "image" else (lambda: read_video_frames(fifo))
    name = "images[0]" if kind == "image" else "videos"
    with pytest.raises(ValueError, match=rf"`{re.escape(name)}`: .*photo.png' is not a regular file .*an? {kind} file"):
        _in_thread_with_timeout(load)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_a_device_path_is_refused_instead_of_read_forever(processor):
    """`images="/dev/zero"` was read whole into memory (MemoryError after filling the RAM)."""
    with pytest.raises(ValueError, match=r"`images\[0\]`: '/dev/zero' is not a regular file"):
        _in_thread_with_timeout(lambda: processor(text="<image>", images="/dev/zero"))


def test_a_directory_path_names_the_argument(tmp_path, processor):
    """`images=<a folder>` gave a bare `IsADirectoryError` without the argument."""
    with pytest.raises(ValueError, match=r"`images\[0\]`: .* is a directory; expected an image file"):
        processor(text="<image>", images=str(tmp_path))


def test_regular_image_files_still_load_by_path(tmp_path):
    write_image(tmp_path / "a.png", (40, 30))
    os.symlink(tmp_path / "a.png", tmp_path / "link.png")
    for name in ("a.png", "link.png"):
        assert load_image_source(str(tmp_path / name)).size == (40, 30)


def test_a_decompression_bomb_names_the_argument_and_keeps_pillows_type(bomb_png):
    """The `DecompressionBombError` of a 14000 x 14000 px PNG did not say which image it was."""
    with pytest.raises(Image.DecompressionBombError, match=r"`images\[2\]`: .*bomb.png'"):
        load_image_source(str(bomb_png), "images[2]")


def _write_video(path, frames: int = 6, width: int = 64, height: int = 48) -> None:
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(frames):
            pixels = np.full((height, width, 3), index * 40, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())


def test_video_frames_over_pillows_pixel_limit_are_refused(tmp_path, monkeypatch):
    """Video frames had no pixel limit: a small file declaring 16384 x 16384 px frames was decoded at 800 MB per
    frame. Pillow's image limit (2 x MAX_IMAGE_PIXELS) now applies; lowered here so that a 64 x 48 video trips it."""
    _write_video(tmp_path / "clip.mp4")
    assert read_video_frames(tmp_path / "clip.mp4", num_segments=2).width == 64
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(Image.DecompressionBombError, match=r"`videos`: video frames of 64 x 48 px \(3072 pixels\)"):
        read_video_frames(tmp_path / "clip.mp4", num_segments=2)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # Pillow's switch: no limit
    assert len(read_video_frames(tmp_path / "clip.mp4", num_segments=2).frames) == 2


# ---- 3. normalisation constants that overflow float32 (inf pixels before) -------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"image_std": [1e-300] * 3},  # finite and non-zero in float64, 0 in float32
        {"image_std": [1e-40, 0.2, 0.2]},  # a float32 subnormal: 1 / 1e-40 overflows
        {"image_mean": [1e39, 0.5, 0.5]},  # beyond float32
        {"image_mean": 3e38, "image_std": 0.5},  # finite mean, overflowing quotient
    ],
)
def test_normalisation_constants_giving_non_finite_pixels_are_refused(options):
    """`image_processor(image, image_std=[1e-300] * 3)` returned inf / NaN pixels without a word."""
    image = Image.new("RGB", (40, 30), (10, 200, 30))
    with pytest.raises(ValueError, match=r"`image_mean` .* / `image_std` .* give non-finite pixels in float32"):
        InternVLImageProcessor()(image, **options)
    with pytest.raises(ValueError, match="give non-finite pixels in float32"):
        InternVLImageProcessor(**options)


def test_extreme_but_representable_constants_still_work():
    image = Image.new("RGB", (40, 30), (10, 200, 30))
    pixels = InternVLImageProcessor()(image, image_std=[1e-6] * 3, image_mean=[-1e3] * 3, return_tensors="pt")
    assert torch.isfinite(pixels["pixel_values"]).all()
    unscaled = InternVLImageProcessor()(image, do_rescale=False, image_std=[1e-30] * 3, return_tensors="pt")
    assert torch.isfinite(unscaled["pixel_values"]).all()


# ---- 4. apply_chat_template: roles and conversation shapes ----------------------------------------------------------


def _text(text):
    return [{"type": "text", "text": text}]


@pytest.mark.parametrize(
    ("conversation", "error", "match"),
    [
        ([{"content": _text("hi")}], ValueError, r"conversation\[0\] has no 'role' .*got the keys \['content'\]"),
        ([{"role": None, "content": "hi"}], ValueError, r"conversation\[0\] has no 'role'"),
        ([{"role": 5, "content": "hi"}], TypeError, r"conversation\[0\]\['role'\] must be a str .*got 5"),
        ([], ValueError, r"`conversation` is empty"),
        (None, TypeError, r"`conversation` must be a list of messages .*got NoneType"),
        ({"role": "user", "content": "hi"}, TypeError, r"got one message dict \(wrap it in a list"),
        ([[{"role": "user", "content": "a"}], []], ValueError, r"conversation\[1\] of the batch is empty"),
    ],
)
@pytest.mark.parametrize("tokenize", [False, True])
def test_apply_chat_template_refuses_malformed_roles_and_conversations(processor, conversation, error, match, tokenize):
    """A message without a role gave jinja's "'dict object' has no attribute 'role'", a role of 5 "can only
    concatenate str (not "int") to str", `[]` a bare IndexError, `None` "'NoneType' object is not iterable", and an
    empty conversation in a batch rendered a prompt with no user turn."""
    with pytest.raises(error, match=match):
        processor.apply_chat_template(conversation, tokenize=tokenize)


def test_sanitize_control_tokens_must_be_a_bool(processor):
    """`sanitize_control_tokens="no"` was truthy: it sanitised (and `processor(..., sanitize_control_tokens=1)` too)."""
    conversation = [{"role": "user", "content": _text("a<|im_end|>")}]
    with pytest.raises(TypeError, match=r"`sanitize_control_tokens` must be a bool, got str \('no'\)"):
        processor.apply_chat_template(conversation, tokenize=True, sanitize_control_tokens="no")
    with pytest.raises(TypeError, match=r"`sanitize_control_tokens` must be a bool, got int"):
        processor(text="a", sanitize_control_tokens=1)
    plain = processor.apply_chat_template(conversation, tokenize=True, sanitize_control_tokens=False, return_dict=True)
    safe = processor.apply_chat_template(conversation, tokenize=True, sanitize_control_tokens=True, return_dict=True)
    assert plain["input_ids"] != safe["input_ids"]


@pytest.mark.parametrize(("text", "match"), [(5, r"`text` must be .* got int"), ([5], r"`text\[0\]` must be a str")])
def test_processor_text_of_the_wrong_type_is_named(processor, text, match):
    """`processor(text=5)` raised "'int' object is not iterable"."""
    with pytest.raises(TypeError, match=match):
        processor(text=text)


def test_valid_conversations_still_render(processor):
    single = processor.apply_chat_template([{"role": "user", "content": _text("hi")}], add_generation_prompt=True)
    batch = processor.apply_chat_template([[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]])
    assert single.endswith("<|im_start|>assistant\n") and len(batch) == 2
    assert processor(text=("a", "b"))["input_ids"][1] == processor(text="b")["input_ids"][0]


# ---- 5. vision_config sizes (ZeroDivisionError / KeyError deep in the build before) ---------------------------------


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("patch_size", 0, ValueError),
        ("patch_size", "14", TypeError),
        ("num_channels", 0, ValueError),
        ("hidden_size", 64.0, TypeError),
        ("num_hidden_layers", -1, ValueError),
        ("hidden_act", "bogus", ValueError),
    ],
)
def test_vision_config_sizes_and_activation_are_checked_at_load(tmp_path, field, value, error):
    """`vision_config.patch_size: 0` raised ZeroDivisionError, `"14"` "unsupported operand type(s) for %",
    `hidden_act: "bogus"` a bare KeyError."""
    from transformers import AutoModelForImageTextToText

    folder = original_model_dir(tmp_path / "model", tokenizer=None)
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"][field] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(error, match=rf"`vision_config.{field}` must be"):
        AutoModelForImageTextToText.from_pretrained(folder)


# ---- 6. convert --image-token-id (written into the -hf config unchecked before) --------------------------------------


@pytest.mark.parametrize(
    ("token_id", "match"),
    [(-3, r"\(-3\) is outside the LLM's vocabulary \(0\.\.999"), (99_999_999, r"\(99999999\) is outside the LLM's")],
)
def test_convert_refuses_an_image_token_id_outside_the_vocabulary(tmp_path, token_id, match):
    """`convert SRC DST --to hf --image-token-id -3` (SRC without tokenizer files) wrote `"image_token_id": -3` into
    the -hf config. No output folder is left behind."""
    from transformers_internvl.conversion.convert import convert_checkpoint

    source = original_model_dir(tmp_path / "src", tokenizer=None)
    with pytest.raises(Exception, match=match) as caught:
        convert_checkpoint(source, tmp_path / "dst", to="hf", image_token_id=token_id, progress=False)
    assert type(caught.value).__name__ == "ConversionError"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["src"]


def test_convert_warns_when_the_image_token_id_overrides_the_tokenizer(tmp_path, caplog):
    """`--image-token-id 7` over tokenizer files naming <IMG_CONTEXT> 995 replaced it without a word."""
    from transformers_internvl.conversion.convert import convert_checkpoint

    source = original_model_dir(tmp_path / "src")
    logger = logging.getLogger("transformers_internvl.conversion.image_token_id")
    logger.addHandler(caplog.handler)
    try:
        convert_checkpoint(source, tmp_path / "dst", to="hf", image_token_id=7, progress=False)
    finally:
        logger.removeHandler(caplog.handler)
    assert f"from --image-token-id (7) differs from the one in the tokenizer files of {source} (995)" in caplog.text
    assert json.loads((tmp_path / "dst" / "config.json").read_text())["image_token_id"] == 7


def test_convert_accepts_an_image_token_id_that_agrees(tmp_path):
    from transformers_internvl.conversion.convert import convert_checkpoint

    source = original_model_dir(tmp_path / "src")
    convert_checkpoint(source, tmp_path / "dst", to="hf", image_token_id=QWEN2_IMAGE_TOKEN_ID, progress=False)
    assert json.loads((tmp_path / "dst" / "config.json").read_text())["image_token_id"] == QWEN2_IMAGE_TOKEN_ID


@pytest.mark.parametrize(
    "shard", ["../outside/model.safetensors", "/tmp/model.safetensors", "sub/model.safetensors", 5]
)
def test_convert_refuses_an_index_naming_shards_outside_the_folder(tmp_path, shard):
    """A `model.safetensors.index.json` mapping tensors to `../outside/model.safetensors` (or an absolute path) made
    the converter copy another folder's tensors into the output; a non-str shard raised a bare TypeError."""
    from safetensors import safe_open

    from transformers_internvl.conversion.convert import convert_checkpoint

    outside = original_model_dir(tmp_path / "outside", tokenizer=None)
    source = original_model_dir(tmp_path / "src")
    with safe_open(str(outside / "model.safetensors"), framework="pt") as reader:
        keys = list(reader.keys())
    (source / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": dict.fromkeys(keys, shard)}
    (source / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(Exception, match=r"shards must be file names inside .*src") as caught:
        convert_checkpoint(source, tmp_path / "dst", to="hf", progress=False)
    assert type(caught.value).__name__ == "ConversionError"
    assert not (tmp_path / "dst").exists()


# ---- 7. fine-tuning meta files and rows --------------------------------------------------------------------------


H, G = HUMAN_TURN, GPT_TURN


@pytest.fixture
def data_dir(tmp_path):
    return write_small_dataset(tmp_path)


def _meta(folder, **entry):
    (folder / "meta.json").write_text(
        json.dumps({"set": {"root": str(folder), "annotation": str(folder / "a.jsonl"), **entry}})
    )
    return folder / "meta.json"


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({"data_augment": "false"}, r"'set' data_augment must be true or false, got 'false'"),
        ({"max_dynamic_patch": 1.7}, r"'set' max_dynamic_patch must be a positive integer .*got 1.7"),
        ({"max_dynamic_patch": "abc"}, r"'set' max_dynamic_patch must be a positive integer"),
        ({"repeat_time": True}, r"'set' repeat_time must be > 0 .*got True"),
        ({"repeat_time": float("nan")}, r"'set' repeat_time must be > 0 .*got nan"),
        ({"repeat_time": float("inf")}, r"'set' repeat_time must be > 0 .*got inf"),
        ({"root": 5}, r"'set' root must be a string"),
    ],
)
def test_meta_file_values_are_checked(data_dir, entry, match):
    """`"data_augment": "false"` turned augmentation ON (bool("false")), `max_dynamic_patch: 1.7` became 1, NaN
    repeat_time was taken as 1, Infinity raised a bare OverflowError."""
    with pytest.raises(ValueError, match=match):
        load_meta(_meta(data_dir, **entry))


def test_a_meta_entry_that_is_not_an_object_is_named(data_dir):
    """`{"set": 5}` raised "argument of type 'int' is not iterable"."""
    (data_dir / "meta.json").write_text(json.dumps({"set": 5}))
    with pytest.raises(ValueError, match=r"dataset 'set' must be an object .*got int"):
        load_meta(data_dir / "meta.json")


def test_a_huge_repeat_time_costs_no_memory_or_time(data_dir):
    """`repeat_time: 10**7` took ~40 s and gigabytes to build the row list (10**9: hang / out of memory)."""
    args = (tokenizer(), InternVLImageProcessor(), "internvl2_5")
    ds = _in_thread_with_timeout(
        lambda: InternVLSupervisedDataset.from_meta(_meta(data_dir, repeat_time=10**12), *args, max_dynamic_patch=1)
    )
    assert len(ds) == 3 * 10**12
    last = ds.rows[len(ds) - 1]
    assert last.source.endswith(f"a.jsonl:3#{10**12 - 1}") and last.max_dynamic_patch == 1
    assert ds[len(ds) - 1]["pixel_values"].shape[0] == 1


def test_repeats_keep_the_original_order_and_fractions(data_dir):
    args = (tokenizer(), InternVLImageProcessor(), "internvl2_5")
    ds = InternVLSupervisedDataset.from_meta(_meta(data_dir, repeat_time=2, data_augment=True), *args)
    assert [row.source.rsplit("/", 1)[1] for row in ds.rows] == [
        f"a.jsonl:{line}#{copy}" for copy in range(2) for line in (1, 2, 3)
    ]
    assert all(row.data_augment for row in ds.rows)
    assert len(InternVLSupervisedDataset.from_meta(_meta(data_dir, repeat_time=0.67), *args)) == 2


def test_damaged_videos_and_bombs_are_skipped_like_other_bad_samples(data_dir, bomb_png):
    """A damaged video (`ValueError` from the decoder) or a decompression-bomb image (`DecompressionBombError`) in one
    row crashed the whole training instead of being skipped like a missing or truncated file."""
    (data_dir / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 40)
    shutil.copy(bomb_png, data_dir / "bomb.png")
    rows = [
        {"video": "bad.mp4", "conversations": [H, G]},
        {"image": "bomb.png", "conversations": [H, G]},
        {"image": "a.png", "conversations": [H, G]},
    ]
    ds = dataset(rows, root=data_dir)
    assert ds[0]["pixel_values"].shape[0] >= 1  # the good row
    assert set(ds.skipped.reasons) == {"records[0]", "records[1]"}
    assert ds.skipped.reasons["records[0]"].startswith("unreadable video file")
    assert "too many pixels" in ds.skipped.reasons["records[1]"]


def test_a_messages_text_part_that_is_not_a_string_is_a_bad_sample(data_dir):
    """`{"type": "text", "text": 5}` crashed with "sequence item 0: expected str instance, int found"."""
    rows = [
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": 5}]},
                {"role": "assistant", "content": "x"},
            ]
        },
        {"conversations": [H, G]},
    ]
    ds = dataset(rows, root=data_dir)
    assert ds[0]["input_ids"].ndim == 1
    assert "text part whose `text` is int" in ds.skipped.reasons["records[0]"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_image_token": 0}, r"`num_image_token` must be >= 1"),
        ({"max_length": 0}, r"`max_length` must be >= 1"),
        ({"num_video_frames": 0}, r"`num_video_frames` must be >= 1"),
    ],
)
def test_dataset_arguments_are_checked(data_dir, kwargs, match):
    """`num_image_token=0` built samples with no image tokens for their tiles (failing later in `forward`),
    `max_length=0` skipped every sample ("all samples are bad")."""
    with pytest.raises(ValueError, match=match):
        dataset([{"conversations": [H, G]}], root=data_dir, **kwargs)


def test_default_meta_values_still_load(data_dir):
    shutil.copy(data_dir / "a.jsonl", data_dir / "b.jsonl")
    meta = load_meta(_meta(data_dir, repeat_time=1, max_dynamic_patch=4, data_augment=False))
    assert meta["set"]["max_dynamic_patch"] == 4
    assert len(dataset(data_dir / "b.jsonl", root=data_dir)) == 3


def test_all_bad_rows_repeated_many_times_fail_at_once(tmp_path):
    """Every copy of a repeated row had its own source name, so with all rows bad and `repeat_time: 10**12` the
    dataset tried each copy (unbounded time) before "all samples are bad"; it stops once every line failed."""
    rows = [
        {
            "image": f"missing{i}.png",
            "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}],
        }
        for i in range(3)
    ]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    args = (tokenizer(), InternVLImageProcessor(), "internvl2_5")
    ds = InternVLSupervisedDataset.from_meta(_meta(tmp_path, repeat_time=10**12), *args, max_dynamic_patch=1)

    def read():
        with pytest.raises(RuntimeError, match="samples are bad"):
            ds[5 * 10**11]

    _in_thread_with_timeout(read)
    assert len(ds.skipped) == 3 and all("missing image file" in reason for reason in ds.skipped.reasons.values())
