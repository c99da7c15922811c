"""Session 9 attack (third re-check of issue 12): hostile inputs on ground the earlier rounds left untried.

Each test failed before its fix; the input that triggered the defect is in the test's docstring. Valid neighbours
of each case are checked to still work.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from finetune_helpers import GPT_TURN, HUMAN_TURN, tokenizer, write_image, write_jsonl, write_small_dataset
from helpers import QWEN2_DIR, original_model_dir, small_tiles
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText

import transformers_internvl  # noqa: F401  (registers the classes)
from transformers_internvl import InternVLConfig
from transformers_internvl.processing.image_processing_internvl import InternVLImageProcessor
from transformers_internvl.training.data import InternVLSupervisedDataset, load_meta

GREEDY = {"max_new_tokens": 2, "do_sample": False}


def _config_dict() -> dict:
    return json.loads((QWEN2_DIR / "config.json").read_text())


# ---- 1. LLM config fields that failed deep inside the LLM's constructor -------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "error", "match"),
    [
        # "AssertionError: Padding_idx must be within num_embeddings"
        ("pad_token_id", 1000, ValueError, r"`llm_config.pad_token_id` .*below `llm_config.vocab_size` \(1000\).*1000"),
        ("pad_token_id", 10**6, ValueError, r"`llm_config.pad_token_id` .*got 1000000"),
        ("pad_token_id", -1001, ValueError, r"`llm_config.pad_token_id` .*got -1001"),
        # "KeyError: 'bogus'"
        ("hidden_act", "bogus", ValueError, r"`llm_config.hidden_act` must be an activation name .*got 'bogus'"),
        # "KeyError: 'bogus'" (transformers only logs "Missing validation function")
        ("rope_scaling", {"type": "bogus", "factor": 2.0}, ValueError, r"`llm_config.rope_scaling` .*'bogus'.*'yarn'"),
    ],
)
def test_llm_config_fields_are_named_before_the_model_is_built(tmp_path, field, value, error, match):
    config = _config_dict()
    config["llm_config"][field] = value
    with pytest.raises(error, match=match):
        InternVLConfig.from_dict(config)
    original_model_dir(tmp_path, tokenizer=None)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(error, match=match):
        AutoModelForImageTextToText.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pad_token_id", None),
        ("pad_token_id", 0),
        ("pad_token_id", 999),
        ("pad_token_id", -1),  # torch counts a negative padding index from the end, as old Llama configs use it
        ("hidden_act", "gelu_pytorch_tanh"),
        ("rope_scaling", {"type": "linear", "factor": 2.0}),
        ("rope_scaling", {"rope_type": "dynamic", "factor": 2.0}),
        ("rope_scaling", None),
    ],
)
def test_valid_llm_config_fields_still_build(field, value):
    config = _config_dict()
    config["llm_config"][field] = value
    built = InternVLConfig.from_dict(config).text_config
    assert built.vocab_size == 1000
    if field != "rope_scaling":
        assert getattr(built, field) == value


# ---- 2. from_pretrained on a damaged or escaping shard index -------------------------------------------------------


def _sharded_folder(folder, edit_index):
    """The tiny Qwen2 checkpoint split into two shards with an index that `edit_index(index)` may change."""
    original_model_dir(folder, tokenizer=None)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({key: state[key] for key in keys}, folder / shard, metadata={"format": "pt"})
    index = {
        "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
        "weight_map": {key: shard for shard, keys in shards.items() for key in keys},
    }
    index = edit_index(index)
    text = index if isinstance(index, str) else json.dumps(index)
    (folder / "model.safetensors.index.json").write_text(text)
    return folder


def _pointing_outside(index, target):
    return {**index, "weight_map": {key: target for key in index["weight_map"]}}


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        # JSONDecodeError, KeyError: 'weight_map', AttributeError, KeyError: 'metadata' from transformers before
        (lambda index: "{not json", r"model.safetensors.index.json is not valid JSON"),
        (lambda index: [1, 2], r"model.safetensors.index.json must hold a JSON object"),
        (lambda index: {"metadata": {}}, r"model.safetensors.index.json has no `weight_map`"),
        (lambda index: {**index, "weight_map": [1]}, r"model.safetensors.index.json has no `weight_map`"),
        (lambda index: {"weight_map": index["weight_map"]}, r"model.safetensors.index.json has no `metadata`"),
        (
            lambda index: {**index, "weight_map": dict.fromkeys(index["weight_map"], 5)},
            r"maps 'language_model.* to 5; shards must be file names inside",
        ),
        # loaded without a word before: weights from another folder
        (lambda index: _pointing_outside(index, "../other/model.safetensors"), r"to '../other/model.safetensors'"),
        (lambda index: _pointing_outside(index, "/tmp/model.safetensors"), r"to '/tmp/model.safetensors'"),
    ],
)
def test_a_damaged_or_escaping_shard_index_is_named_at_load(tmp_path, edit, match):
    folder = _sharded_folder(tmp_path / "model", edit)
    with pytest.raises(ValueError, match=match):
        AutoModelForImageTextToText.from_pretrained(folder)


def test_a_sharded_checkpoint_with_a_sound_index_still_loads(tmp_path, qwen2_model):
    folder = _sharded_folder(tmp_path / "model", lambda index: index)
    model = AutoModelForImageTextToText.from_pretrained(folder, image_token_id=qwen2_model.config.image_token_id)
    reference = qwen2_model.state_dict()
    assert all(torch.equal(value, reference[name]) for name, value in model.state_dict().items())


# ---- 3. chat() history of the wrong type -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("history", "got"),
    [(True, "bool"), (5, "int"), ({"a": "b"}, "dict"), ("ab", "str"), (0, "int"), (False, "bool")],
)
def test_chat_names_a_history_that_is_not_a_list_of_pairs(small_tile_qwen2, qwen2_tokenizer, history, got):
    """`history=True` raised "'bool' object is not iterable"; `history=0` / `False` were taken as no history."""
    with pytest.raises(TypeError, match=rf"`history` must be None or a list of \(question, answer\) pairs, got {got}"):
        small_tile_qwen2.chat(qwen2_tokenizer, small_tiles(1), "<image> hi", GREEDY, history=history)


@pytest.mark.parametrize("history", [[], (), [("<image> hi", "ok")], (("<image> hi", "ok"),)])
def test_chat_accepts_lists_and_tuples_of_pairs(small_tile_qwen2, qwen2_tokenizer, history):
    answer = small_tile_qwen2.chat(qwen2_tokenizer, small_tiles(1), "<image> more", GREEDY, history=history)
    assert isinstance(answer, str)


# ---- 4. training meta files and annotation files -----------------------------------------------------------------


H, G = HUMAN_TURN, GPT_TURN


@pytest.fixture
def data_dir(tmp_path):
    return write_small_dataset(tmp_path)


def _from_meta(meta_path):
    args = (tokenizer(), InternVLImageProcessor(), "internvl2_5")
    return InternVLSupervisedDataset.from_meta(meta_path, *args, num_image_token=256, max_dynamic_patch=1)


def _write_meta(folder, **entry):
    meta = {"set": {"root": str(folder), "annotation": str(folder / "a.jsonl"), **entry}}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder / "meta.json"


@pytest.mark.parametrize("repeat_time", [1e300, 2**62])
def test_a_repeat_time_beyond_any_index_is_named(data_dir, repeat_time):
    """`repeat_time: 1e300` raised "OverflowError: cannot fit 'int' into an index-sized integer" from `len()`."""
    with pytest.raises(
        ValueError, match=r"dataset 'set': annotation file .*a.jsonl with repeat_time .* rows, more than"
    ):
        _from_meta(_write_meta(data_dir, repeat_time=repeat_time))


def test_a_large_repeat_time_that_fits_still_works(data_dir):
    assert len(_from_meta(_write_meta(data_dir, repeat_time=10**15))) == 3 * 10**15


def test_a_meta_file_that_is_not_json_names_the_file(data_dir):
    """A bare "JSONDecodeError: Expecting value: line 1 column 1 (char 0)", naming no file."""
    (data_dir / "meta.json").write_text("{'set': 1}")
    with pytest.raises(ValueError, match=r"meta file .*meta.json is not valid JSON"):
        load_meta(data_dir / "meta.json")


def test_an_annotation_file_that_is_not_utf8_names_the_file_and_line(data_dir):
    """A bare "UnicodeDecodeError: 'utf-8' codec can't decode byte 0xe9", naming no file."""
    (data_dir / "a.jsonl").write_bytes(b'{"conversations": []}\n{"conversations": [{"value": "caf\xe9"}]}\n')
    with pytest.raises(ValueError, match=r"a.jsonl.* is not UTF-8 text \(line 2"):
        _from_meta(_write_meta(data_dir))


def test_a_missing_annotation_file_names_the_dataset(data_dir):
    """A bare FileNotFoundError of the annotation path, naming neither the meta file nor the dataset."""
    meta = _write_meta(data_dir, annotation=str(data_dir / "none.jsonl"))
    with pytest.raises(
        FileNotFoundError, match=r"meta file .*meta.json: dataset 'set': annotation file .*none.jsonl does not exist"
    ):
        _from_meta(meta)


# ---- 5. the CLI's --seed -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", ["99999999999999999999999", "-99999999999999999999999", "1.5"])
def test_chat_refuses_a_seed_torch_cannot_take_as_a_usage_error(tmp_path, capsys, seed):
    """`--seed 99999999999999999999999` failed after the model load with "Overflow when unpacking long long"."""
    from transformers_internvl.cli import main

    assert main(["chat", str(tmp_path), "--prompt", "hi", "--seed", seed]) == 2
    assert re.search(r"argument --seed: expected an integer in -2\*\*63\.\.2\*\*64 - 1", capsys.readouterr().err)


def test_the_seed_argument_type_accepts_torchs_range():
    from transformers_internvl.cli.common import seed_int

    assert seed_int("0") == 0 and seed_int(str(2**64 - 1)) == 2**64 - 1 and seed_int(str(-(2**63))) == -(2**63)
    torch.manual_seed(seed_int(str(2**64 - 1)))
    torch.manual_seed(seed_int(str(-(2**63))))


# ---- 6. input_ids the embedding cannot look up ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("input_ids", "error", "match"),
    [
        # "IndexError: index out of range in self" (a device-side assert on a GPU)
        (torch.tensor([[5, 1000]]), ValueError, r"`input_ids` holds the token id 1000, outside .*\(0..999\)"),
        (torch.tensor([[5, -3]]), ValueError, r"`input_ids` holds the token id -3, outside"),
        # "The size of tensor a (4) must match the size of tensor b (16)"; 3-D ids gave (1, 1, 2, vocab) logits
        (torch.tensor([5, 6]), ValueError, r"`input_ids` must have shape \(batch, seq\), got \(2,\)"),
        (torch.tensor([[[5, 6]]]), ValueError, r"`input_ids` must have shape \(batch, seq\), got \(1, 1, 2\)"),
        # "cannot reshape tensor of 0 elements"
        (torch.zeros(1, 0, dtype=torch.long), ValueError, r"`input_ids` holds no token"),
        (torch.tensor([[5.0, 6.0]]), TypeError, r"`input_ids` must be an integer tensor"),
    ],
)
def test_forward_and_generate_name_input_ids_the_embedding_cannot_take(small_tile_qwen2, input_ids, error, match):
    with pytest.raises(error, match=match):
        small_tile_qwen2(input_ids=input_ids)
    with pytest.raises(error, match=match):
        small_tile_qwen2.generate(input_ids=input_ids, max_new_tokens=1, do_sample=False)


def test_ids_at_the_ends_of_the_vocabulary_still_run(small_tile_qwen2):
    ids = torch.tensor([[0, 5, 999]])
    assert small_tile_qwen2(input_ids=ids).logits.shape == (1, 3, 1000)
    assert small_tile_qwen2.generate(input_ids=ids, max_new_tokens=2, do_sample=False).shape == (1, 5)


# ---- 7. the filter command's files -------------------------------------------------------------------------------


def _filter(tmp_path, capsys, source, output):
    from transformers_internvl.cli import main

    code = main(["filter", str(source), "-o", str(output)])
    return code, capsys.readouterr()


def test_filter_drops_a_line_that_is_not_utf8_and_keeps_the_rest(tmp_path, capsys):
    """A Latin-1 line failed the whole command with "'utf-8' codec can't decode byte 0xe9", naming no file."""
    good = json.dumps({"conversations": [H, G]})
    (tmp_path / "in.jsonl").write_bytes(good.encode() + b'\n{"conversations": [{"value": "caf\xe9"}]}\n' + b"\n")
    code, out = _filter(tmp_path, capsys, tmp_path / "in.jsonl", tmp_path / "out.jsonl")
    assert code == 0 and "dropped in.jsonl:2: not UTF-8 text" in out.out.replace(str(tmp_path) + "/", "")
    assert (tmp_path / "out.jsonl").read_text() == good + "\n"


@pytest.mark.parametrize(("output", "match"), [(".", r"is a folder"), ("missing/out.jsonl", r"missing.* does not")])
def test_filter_names_an_output_it_cannot_write(tmp_path, capsys, monkeypatch, output, match):
    """`-o .` failed with "Device or resource busy: '.filter-x.jsonl' -> '.'", `-o missing/out.jsonl` named only the
    temporary file."""
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "in.jsonl", [{"conversations": [H, G]}])
    code, out = _filter(tmp_path, capsys, "in.jsonl", output)
    assert code == 1 and re.search(match, out.err) and ".filter-" not in out.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


# ---- 8. a chat content item with several media sources ---------------------------------------------------------------


@pytest.fixture(scope="module")
def processor():
    from helpers import qwen2_processor

    return qwen2_processor()


@pytest.mark.parametrize(
    "item",
    [
        {"type": "image", "image": "IMG", "url": "http://127.0.0.1:9/x.png"},
        {"type": "image", "image": "IMG", "url": None},
        {"type": "image", "path": "a.png", "base64": "AAAA"},
        {"type": "video", "video": "v.mp4", "path": "w.mp4"},
    ],
)
def test_a_media_item_with_several_sources_is_refused(processor, item):
    """`{"type": "image", "image": img, "url": None}` became two images (transformers takes one per key present) and
    failed with "Text 0 has 1 <image> placeholder(s) but 2 image(s)"."""
    from PIL import Image

    item = {key: Image.new("RGB", (32, 32)) if value == "IMG" else value for key, value in item.items()}
    conversation = [{"role": "user", "content": [item, {"type": "text", "text": "hi"}]}]
    with pytest.raises(ValueError, match=r"conversation\[0\]\['content'\]\[0\] is an? \w+ item with several sources"):
        processor.apply_chat_template(conversation, tokenize=True, return_dict=True)


def test_a_media_item_with_one_source_still_renders(processor):
    from PIL import Image

    conversation = [{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (32, 32))}]}]
    out = processor.apply_chat_template(conversation, tokenize=True, return_dict=True, add_generation_prompt=True)
    assert out["pixel_values"].shape[0] == 1


# ---- 9. thousands of images in one sample ----------------------------------------------------------------------------


def test_more_images_in_one_sample_than_the_bound_are_refused_before_decoding(processor, monkeypatch):
    """5000 images with 5000 `<image>` tags were all decoded and tiled (1000 images: 39 s, 2.4 GB of pixels; 10**5
    would ask for 240 GB) before the prompt's length could matter."""
    from PIL import Image

    from transformers_internvl.processing import image_loading

    assert image_loading.MAX_IMAGES_PER_SAMPLE == 1024
    decoded = []
    monkeypatch.setattr(image_loading, "load_image_source", lambda *a, **k: decoded.append(1))
    too_many = image_loading.MAX_IMAGES_PER_SAMPLE + 1
    with pytest.raises(ValueError, match=rf"`images` holds {too_many} images for one sample, more than"):
        processor(text="<image>" * too_many, images=["missing.png"] * too_many)
    with pytest.raises(ValueError, match=rf"`images\[1\]` holds {too_many} images for one sample"):
        processor.image_processor([["a.png"], ["a.png"] * too_many])
    assert not decoded
    # at the bound, and many samples of a few images each, still work (a bound of 3 keeps this fast)
    monkeypatch.setattr(image_loading, "MAX_IMAGES_PER_SAMPLE", 3)
    small = Image.new("RGB", (14, 14))
    assert processor(text="<image>" * 3, images=[small] * 3)["pixel_values"].shape[0] == 3
    assert processor(text=["<image>"] * 5, images=[[small]] * 5)["pixel_values"].shape[0] == 5
    with pytest.raises(ValueError, match=r"`images` holds 4 images for one sample, more than MAX_IMAGES_PER_SAMPLE"):
        processor(text="<image>" * 4, images=[small] * 4)


def test_a_training_row_with_too_many_images_is_a_skipped_sample(data_dir, monkeypatch):
    """The processor's ValueError escaped `__getitem__` (only SampleError / OSError are bad samples): training
    stopped at that row."""
    from transformers_internvl.training import data

    monkeypatch.setattr(data, "MAX_IMAGES_PER_SAMPLE", 3)
    row = {"image": ["a.png"] * 4, "conversations": [{"from": "human", "value": "<image>" * 4}, G]}
    write_jsonl(data_dir / "b.jsonl", [row, {"image": "a.png", "conversations": [H, G]}])
    args = (tokenizer(), InternVLImageProcessor(), "internvl2_5")
    ds = InternVLSupervisedDataset.from_jsonl(data_dir / "b.jsonl", *args, root=str(data_dir), max_dynamic_patch=1)
    assert ds[0]["pixel_values"].shape[0] == 1  # the next good row
    assert list(ds.skipped.reasons.values()) == ["4 images, more than MAX_IMAGES_PER_SAMPLE (3)"]


# ---- 10. the CLI's image files -------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["tiles"], ["chat", "MODEL", "--prompt", "hi", "--image"]])
def test_the_cli_names_a_decompression_bomb_image(tmp_path, capsys, monkeypatch, command):
    """`tiles bomb.png` printed Pillow's "Image size (196000000 pixels) exceeds limit ...", naming no file."""
    from PIL import Image

    from transformers_internvl.cli import main

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 2 x 1000 pixels: Pillow's error limit
    write_image(tmp_path / "big.png", (50, 50))
    (tmp_path / "MODEL").mkdir()
    original_model_dir(tmp_path / "MODEL", tokenizer=None)
    arguments = [str(tmp_path / "MODEL") if part == "MODEL" else part for part in command]
    assert main([*arguments, str(tmp_path / "big.png")]) == 1
    assert re.search(r"error: cannot read image .*big.png: Image size \(2500 pixels\) exceeds", capsys.readouterr().err)


# ---- 11. checkpoint tensors the config builds no place for -----------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "dropped"),
    [
        ("qkv_bias", False, "vision_model.encoder.layers.0.attn.qkv.bias"),
        ("norm_type", "rms_norm", "vision_model.encoder.layers.0.norm1.bias"),
    ],
)
def test_weights_the_config_has_no_place_for_are_not_dropped_silently(tmp_path, field, value, dropped):
    """`vision_config.qkv_bias: false` over a checkpoint with qkv biases loaded (transformers' report: "UNEXPECTED
    ... can be ignored") and ran every vision layer without its qkv bias."""
    original_model_dir(tmp_path, tokenizer=None)
    config = _config_dict()
    config["vision_config"][field] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"has no place for \(.*`{re.escape(dropped)}`"):
        AutoModelForImageTextToText.from_pretrained(tmp_path)
