"""Session-8 attack on loading and chat inputs (issue 12): a config.json the weights cannot fill fails before the
model is built (bounded time and memory), weights stored as integers and damaged safetensors headers are named, damaged
tokenizer files are named, `chat`'s generation settings and `image_flags` values are checked by name."""

from __future__ import annotations

import json
import resource
import struct
import time
from pathlib import Path

import pytest
import torch
from helpers import QWEN2_DIR, QWEN2_IMAGE_TOKEN_ID, original_model_dir
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText, AutoProcessor

import transformers_internvl  # noqa: F401  (registers the classes)
from transformers_internvl import InternVLConfig


def _folder(tmp_path: Path, tokenizer: bool = False, **changes) -> Path:
    """A copy of the tiny Qwen2 checkpoint with `changes` (`"llm_config.hidden_size": -64`) made to its config.json."""
    folder = original_model_dir(tmp_path / "model", tokenizer="qwen2-tiny" if tokenizer else None)
    config = json.loads((folder / "config.json").read_text())
    for path, value in changes.items():
        *parents, key = path.split(".")
        target = config
        for parent in parents:
            target = target[parent]
        target[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---- 1. config sizes the checkpoint cannot fill: refused before the model is built ------------------------------


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        # 100000 layers: minutes of building (27 s for 1000) before the missing-weights error.
        (
            "llm_config.num_hidden_layers",
            100_000,
            r"`llm_config.num_hidden_layers` is 100000 but the checkpoint holds 2",
        ),
        ("vision_config.num_hidden_layers", 100_000, r"`vision_config.num_hidden_layers` is 100000 but .* holds 2"),
        # transformers allocated (and randomly initialised) a 25.6 GB embedding before reporting the mismatch.
        ("llm_config.vocab_size", 10**8, r"`llm_config.vocab_size` is 100000000 but .*embed_tokens.weight' has shape"),
        # "Storage size calculation overflowed with sizes=[3000000000, 1000000000]"
        ("vision_config.hidden_size", 10**9, r"`vision_config.hidden_size` is 1000000000 but .*patch_embedding"),
        ("vision_config.patch_size", 28, r"`vision_config.patch_size` is 28 but .*\(64, 3, 14, 14\) \(axis 2: 14\)"),
    ],
)
def test_config_sizes_the_weights_cannot_fill_are_refused_before_building(tmp_path, field, value, match):
    folder = _folder(tmp_path, **{field: value})
    start, rss = time.monotonic(), _max_rss_bytes()
    with pytest.raises(ValueError, match=match):
        AutoModelForImageTextToText.from_pretrained(folder)
    assert time.monotonic() - start < 10
    assert _max_rss_bytes() - rss < 2**30


def test_a_mismatch_past_the_embeddings_is_named_before_it_is_allocated(tmp_path):
    """`llm_config.intermediate_size: 10**7`: transformers allocated and initialised 15 GB of MLP weights at the
    config's size, then raised "You set `ignore_mismatched_sizes` to `False`"; now the shapes are named at once."""
    folder = _folder(tmp_path, **{"llm_config.intermediate_size": 10**7})
    start, rss = time.monotonic(), _max_rss_bytes()
    with pytest.raises(
        ValueError, match=r"gate_proj.weight has shape \(128, 64\) in the checkpoint, the config implies"
    ):
        AutoModelForImageTextToText.from_pretrained(folder)
    assert time.monotonic() - start < 10
    assert _max_rss_bytes() - rss < 2**30


@pytest.mark.parametrize(
    ("field", "value"),
    [("hidden_size", -64), ("vocab_size", 0), ("num_attention_heads", 0), ("num_key_value_heads", -1),
     ("intermediate_size", 0), ("max_position_embeddings", 0)],
)  # fmt: skip
def test_llm_sizes_below_one_are_refused_by_name(field, value):
    """`hidden_size: -64` raised "Trying to create tensor with negative dimension", `vocab_size: 0` a bare
    AssertionError "Padding_idx must be within num_embeddings"."""
    config = json.loads((QWEN2_DIR / "config.json").read_text())
    config["llm_config"][field] = value
    with pytest.raises(ValueError, match=rf"`llm_config.{field}` must be a positive integer, got {value}"):
        InternVLConfig.from_dict(config)


def test_sharded_checkpoints_are_checked_and_still_load(tmp_path, qwen2_model):
    folder = tmp_path / "sharded"
    qwen2_model.save_pretrained(folder, max_shard_size="300KB")
    assert (folder / "model.safetensors.index.json").exists()
    reloaded = AutoModelForImageTextToText.from_pretrained(folder, image_token_id=QWEN2_IMAGE_TOKEN_ID)
    for (name, mine), (_, theirs) in zip(qwen2_model.state_dict().items(), reloaded.state_dict().items(), strict=True):
        assert torch.equal(mine, theirs), name
    config = json.loads((folder / "config.json").read_text())
    config["llm_config"]["num_hidden_layers"] = 50
    config["llm_config"].pop("layer_types", None)  # transformers checks the count against this list itself
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"`llm_config.num_hidden_layers` is 50 but the checkpoint holds 2 layers"):
        AutoModelForImageTextToText.from_pretrained(folder)


# ---- 2. weight files: integer dtypes, damaged headers -------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.int8, torch.bool, torch.int64])
@pytest.mark.parametrize("key", ["mlp1.1.weight", "vision_model.embeddings.class_embedding"])
def test_weights_stored_as_integers_are_refused_by_name(tmp_path, dtype, key):
    """An int8 `mlp1.1.weight` was cast into the float parameter without a word (a quantized checkpoint without its
    quantization_config loads as garbage)."""
    folder = _folder(tmp_path)
    weights = load_file(folder / "model.safetensors")
    weights[key] = (weights[key] * 100).to(dtype)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"stores the weight '{key}' as (I8|BOOL|I64); .*quantization_config"):
        AutoModelForImageTextToText.from_pretrained(folder)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_weights_of_other_float_precisions_still_load(tmp_path, dtype):
    folder = _folder(tmp_path)
    weights = load_file(folder / "model.safetensors")
    weights["mlp1.1.weight"] = weights["mlp1.1.weight"].to(dtype)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    model = AutoModelForImageTextToText.from_pretrained(folder, image_token_id=QWEN2_IMAGE_TOKEN_ID)
    loaded = model.get_parameter("model.mlp1.1.weight")
    assert torch.equal(loaded, weights["mlp1.1.weight"].to(loaded.dtype))


def _rewrite_header(path: Path, edit) -> None:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    edit(header)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + length :])


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ("shape_lie", r"tensor 'mlp1.1.weight' has shape \[64, 512\] of F32 \(131072 bytes\) but its data_offsets"),
        ("truncated", r"ends at byte \d+ of the data, but the file holds \d+ data bytes \(truncated\?\)"),
        ("huge_header", r"its header claims 4611686018427387904 bytes but the file has"),
        ("empty", r"is not a safetensors file: it has 0 bytes"),
        ("not_json", r"its header is not JSON"),
        ("list_header", r"its header is a list, not a map"),
    ],
)
def test_a_damaged_safetensors_header_names_the_file(tmp_path, damage, match):
    """safetensors said only "Error while deserializing header: ..." without the file or the tensor."""
    folder = _folder(tmp_path)
    path = folder / "model.safetensors"
    raw = path.read_bytes()
    if damage == "shape_lie":
        _rewrite_header(path, lambda header: header["mlp1.1.weight"].update(shape=[64, 512]))
    elif damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "huge_header":
        path.write_bytes(struct.pack("<Q", 2**62) + raw[8:])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "not_json":
        path.write_bytes(struct.pack("<Q", 16) + b"\x00" * 64)
    else:
        path.write_bytes(struct.pack("<Q", 8) + b"[1, 2]  ")
    with pytest.raises(ValueError, match=match) as caught:
        AutoModelForImageTextToText.from_pretrained(folder)
    assert str(path) in str(caught.value)


# ---- 3. damaged tokenizer files ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file", "content", "match"),
    [
        ("added_tokens.json", "[1, 2]", r"added_tokens.json must hold a JSON object, got a list"),
        ("added_tokens.json", '{"<IMG_CONTEXT>": 995', r"added_tokens.json is not valid JSON"),
        (
            "tokenizer_config.json",
            '{"added_tokens_decoder": [1]}',
            r"`added_tokens_decoder` in .* must be a JSON object",
        ),
        ("tokenizer.json", '{"added_tokens": 5}', r"`added_tokens` in .*tokenizer.json must be a JSON list, got int"),
    ],
)
def test_damaged_tokenizer_files_are_named_when_the_model_loads(tmp_path, file, content, match):
    """Loading the model reads `<IMG_CONTEXT>` and the template's stop token from these files: a damaged one raised a
    bare AttributeError ("'list' object has no attribute 'get'") / JSONDecodeError / TypeError."""
    folder = _folder(tmp_path, tokenizer=True)
    order = ["added_tokens.json", "tokenizer_config.json", "tokenizer.json"]
    for earlier in order[: order.index(file)]:
        (folder / earlier).unlink()  # the files are read in this order; the damaged one must be reached
    (folder / file).write_text(content)
    with pytest.raises(ValueError, match=match):
        AutoModelForImageTextToText.from_pretrained(folder)


@pytest.mark.parametrize(
    ("file", "content", "match"),
    [
        ("tokenizer.json", "{not json", r"tokenizer.json is not valid JSON"),
        ("tokenizer_config.json", "[]", r"tokenizer_config.json must hold a JSON object, got a list"),
        ("preprocessor_config.json", "[1]", r"processor file .*preprocessor_config.json must hold a JSON object"),
    ],
)
def test_auto_processor_names_a_damaged_tokenizer_file(tmp_path, file, content, match):
    """transformers raised a bare JSONDecodeError / "'list' object has no attribute 'get'" naming no file."""
    folder = _folder(tmp_path, tokenizer=True)
    (folder / file).write_text(content)
    with pytest.raises(OSError, match=match):
        AutoProcessor.from_pretrained(folder)


# ---- 4. chat generation settings, image_flags values -------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(qwen2_tokenizer):
    return qwen2_tokenizer


@pytest.mark.parametrize(
    ("settings", "error", "match"),
    [
        ({"max_new_tokens": "3"}, TypeError, r"`generation_config.max_new_tokens` .*must be an integer >= 1.*got '3'"),
        ({"max_new_tokens": 2.5}, TypeError, r"`generation_config.max_new_tokens` .*got 2.5 \(float\)"),
        ({"max_new_tokens": 3, "top_p": 5}, ValueError, r"`generation_config.top_p` .*in \(0, 1\].*got 5"),
        ({"max_new_tokens": 3, "do_sample": "false"}, TypeError, r"`generation_config.do_sample` .*must be a bool"),
    ],
)
def test_chat_checks_its_generation_settings_by_name(qwen2_model, tokenizer, settings, error, match):
    """`chat(..., {"max_new_tokens": "3"})` failed inside generate with "'<=' not supported between instances of
    'str' and 'int'" after a misleading cache warning; `do_sample: "false"` sampled."""
    with pytest.raises(error, match=match):
        qwen2_model.chat(tokenizer, None, "hi", settings)
    with pytest.raises(error, match=match):
        qwen2_model.batch_chat(tokenizer, None, ["hi"], settings)


@pytest.mark.parametrize("flags", [[7], [-1], [0.5]])
def test_image_flags_other_than_0_or_1_are_named(qwen2_model, qwen2_io, flags):
    """The original keeps the tiles whose flag == 1: 7 or -1 dropped the tile and the error spoke of token counts."""
    tiles = qwen2_io["pixel_values"].shape[0]
    image_flags = torch.tensor(flags * tiles)
    with pytest.raises(ValueError, match=r"`image_flags` must hold 0 .* or 1 .* per tile, got \["):
        with torch.no_grad():
            qwen2_model(input_ids=qwen2_io["input_ids"], pixel_values=qwen2_io["pixel_values"], image_flags=image_flags)


def test_image_flags_of_ones_in_the_original_shape_still_work(qwen2_model, qwen2_io):
    tiles = qwen2_io["pixel_values"].shape[0]
    with torch.no_grad():
        flagged = qwen2_model(
            input_ids=qwen2_io["input_ids"],
            pixel_values=qwen2_io["pixel_values"],
            image_flags=torch.ones(tiles, 1, dtype=torch.long),  # the original's (num_tiles, 1)
        ).logits
        plain = qwen2_model(input_ids=qwen2_io["input_ids"], pixel_values=qwen2_io["pixel_values"]).logits
    assert torch.equal(flagged, plain)


@pytest.mark.parametrize("architectures", ["Qwen2ForCausalLM", 5, [5], {"Qwen2ForCausalLM": 1}])
def test_llm_architectures_that_are_not_a_list_of_names_are_refused_by_name(architectures):
    """A bare string was read as its first letter: "Unsupported `llm_config.architectures[0]`: 'Q'"; a dict raised
    KeyError 0."""
    config = json.loads((QWEN2_DIR / "config.json").read_text())
    config["llm_config"]["architectures"] = architectures
    with pytest.raises(TypeError, match=r"`llm_config.architectures` must be a list of class names .*got "):
        InternVLConfig.from_dict(config)
