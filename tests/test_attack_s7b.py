"""Session 7, second attack (re-check of issue 12): save paths, adapters, loading keywords, the CLI, helpers.

Each test failed before its fix; the input that triggered the defect is in the test's docstring. Valid neighbours
of each case are checked to still work.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from helpers import load_model, original_model_dir
from safetensors import safe_open
from transformers import AutoModelForImageTextToText

import transformers_internvl  # noqa: F401  (registers the classes)
from transformers_internvl.training import adapters as adapter_module

peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def model():
    return load_model()


def _lora(rank: int):
    from transformers_internvl.training.stages import set_trainable

    return set_trainable(load_model(), "llm_lora", lora_rank=rank, vision_lora_rank=0)


def _adapter_rank(folder: Path) -> tuple[int, int]:
    """(`r` of adapter_config.json, rank of the first lora_A tensor of adapter_model.safetensors)."""
    config_rank = json.loads((folder / "adapter_config.json").read_text())["r"]
    with safe_open(folder / "adapter_model.safetensors", framework="pt") as handle:
        key = next(key for key in handle.keys() if "lora_A" in key)
        return config_rank, handle.get_slice(key).get_shape()[0]


# ---- 1. adapter saves: one folder swap, as model saves ------------------------------------------------------------


def test_an_adapter_save_never_shows_a_new_config_beside_old_weights(tmp_path, monkeypatch):
    """`save_adapter_original_layout(rank_8_model, folder_with_rank_4_adapter)` moved its files in one by one: between
    the moves (a kill, a full disk) the folder held the new adapter_config.json (r=8) beside the old rank-4 weights,
    which PEFT then fails to load (or, at one rank, loads as the wrong adapter)."""
    folder = tmp_path / "adapter"
    adapter_module.save_adapter_original_layout(_lora(4), folder)
    (folder / "notes.txt").write_text("mine")
    assert _adapter_rank(folder) == (4, 4)

    seen: list[tuple[int, int]] = []
    real_replace = os.replace

    def watching_replace(source, destination):  # what a reader sees after every file move
        real_replace(source, destination)
        if (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file():
            seen.append(_adapter_rank(folder))

    monkeypatch.setattr(os, "replace", watching_replace)
    written = adapter_module.save_adapter_original_layout(_lora(8), folder)
    assert all(config_rank == weight_rank for config_rank, weight_rank in seen), seen
    assert written == [folder / "adapter_model.safetensors"]
    assert _adapter_rank(folder) == (8, 8)
    assert (folder / "notes.txt").read_text() == "mine"  # files this save does not write are kept
    assert sorted(os.listdir(tmp_path)) == ["adapter"]  # no temporary folder left


def test_a_failed_adapter_save_leaves_the_old_adapter_and_no_temporary_folder(tmp_path, monkeypatch):
    folder = tmp_path / "adapter"
    adapter_module.save_adapter_original_layout(_lora(4), folder)

    def failing_save_file(*args, **kwargs):
        raise OSError("No space left on device (simulated)")

    monkeypatch.setattr(adapter_module, "save_file", failing_save_file)
    with pytest.raises(OSError, match="simulated"):
        adapter_module.save_adapter_original_layout(_lora(8), folder)
    assert _adapter_rank(folder) == (4, 4)
    assert sorted(os.listdir(tmp_path)) == ["adapter"]


# ---- 2. save_pretrained(".") ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", [".", "sub"])
def test_saving_into_the_working_directory_keeps_the_process_there(tmp_path, monkeypatch, model, where):
    """`model.save_pretrained(".")` swapped the folder the process works in: the process was left in the deleted old
    folder (`os.getcwd()` raised FileNotFoundError, a second `save_pretrained(".")` failed, relative paths named
    nothing). Also for a working directory inside the saved folder."""
    folder = original_model_dir(tmp_path / "ckpt", tokenizer=None)
    (folder / "sub").mkdir()
    monkeypatch.chdir(folder / where)
    model.save_pretrained(folder if where == "sub" else ".")
    assert os.getcwd() == os.path.realpath(folder / where)
    model.save_pretrained(".." if where == "sub" else ".")  # a second save from the same place
    assert os.path.samefile(".", folder / where)
    assert AutoModelForImageTextToText.from_pretrained(folder).config.text_config.hidden_size == (
        model.config.text_config.hidden_size
    )
    assert sorted(name for name in os.listdir(tmp_path)) == ["ckpt"]


def test_tiny_model_weights_survive_the_save_into_the_working_directory(tmp_path, monkeypatch, model):
    folder = original_model_dir(tmp_path / "ckpt", tokenizer=None)
    monkeypatch.chdir(folder)
    model.save_pretrained(".")
    reloaded = AutoModelForImageTextToText.from_pretrained(".")
    for (name, value), (_, expected) in zip(reloaded.state_dict().items(), model.state_dict().items()):
        assert torch.equal(value, expected), name


# ---- 3. from_pretrained(device_map=...) with keys naming no module ------------------------------------------------


@pytest.mark.parametrize(
    ("device_map", "named"),
    [
        ({"visual_model": "cpu", "": "cpu"}, "visual_model"),  # a typo of an original name
        ({"model.language_model.layers.9": "cpu", "": "cpu"}, "model.language_model.layers.9"),  # no layer 9 here
        ({"model.vison_tower": "cpu"}, "model.vison_tower"),
    ],
)
def test_a_device_map_key_naming_no_module_is_refused(tmp_path, device_map, named):
    """`from_pretrained(folder, device_map={"visual_model": "cuda:1", "": "cuda:0"})` loaded without a word and put
    everything on cuda:0: keys were checked only when one began with an original root (`vision_model`, `mlp1`,
    `language_model`), and transformers ignores keys that name nothing."""
    folder = original_model_dir(tmp_path / "ckpt", tokenizer=None)
    with pytest.raises(ValueError, match=rf"device map names modules this model does not have: \['{named}'\]"):
        AutoModelForImageTextToText.from_pretrained(folder, device_map=device_map)


def test_a_device_map_key_that_is_not_a_string_is_refused(tmp_path):
    folder = original_model_dir(tmp_path / "ckpt", tokenizer=None)
    with pytest.raises(TypeError, match=r"`device_map` keys must be module names \(str\), got 5 \(int\)"):
        AutoModelForImageTextToText.from_pretrained(folder, device_map={5: "cpu"})


@pytest.mark.parametrize(
    "device_map",
    [
        {"": "cpu"},
        {"model.vision_model": "cpu", "model.mlp1": "cpu", "model.language_model": "cpu", "lm_head": "cpu"},
        {"vision_model": "cpu", "mlp1": "cpu", "language_model": "cpu"},
    ],
)
def test_device_maps_naming_real_modules_still_load(tmp_path, model, device_map):
    folder = original_model_dir(tmp_path / "ckpt", tokenizer=None)
    loaded = AutoModelForImageTextToText.from_pretrained(folder, device_map=device_map)
    assert {parameter.device.type for parameter in loaded.parameters()} == {"cpu"}
    for (name, value), (_, expected) in zip(loaded.state_dict().items(), model.state_dict().items()):
        assert torch.equal(value, expected), name


# ---- 4. dtype naming no torch dtype ---------------------------------------------------------------------------------

_DTYPE_MESSAGE = r"must be a torch.dtype, 'auto' or the name of a torch dtype .*got '{}'"


@pytest.mark.parametrize(
    ("keywords", "where", "value"),
    [
        ({"dtype": "float17"}, "`dtype`", "float17"),
        ({"torch_dtype": "float17"}, "`torch_dtype`", "float17"),
        ({"dtype": "Tensor"}, "`dtype`", "Tensor"),  # an attribute of torch, not a dtype
        ({"dtype": {"": "float32", "text_config": "half_float"}}, "`dtype['text_config']`", "half_float"),
    ],
)
def test_a_dtype_naming_no_torch_dtype_is_refused_by_name(tmp_path, keywords, where, value):
    """`from_pretrained(folder, dtype="float17")` raised `AttributeError: module 'torch' has no attribute 'float17'`
    from inside the config; `dtype="Tensor"` got past that check as a "dtype"."""
    folder = original_model_dir(tmp_path / "ckpt", tokenizer=None)
    with pytest.raises(ValueError, match=re.escape(where) + " " + _DTYPE_MESSAGE.format(value)):
        AutoModelForImageTextToText.from_pretrained(folder, **keywords)


@pytest.mark.parametrize("field", [None, "llm_config", "vision_config"])
def test_a_config_json_dtype_naming_no_torch_dtype_is_refused_by_name(tmp_path, field):
    """A config.json with `"torch_dtype": "bfloat17"` (top level or in a sub-config) raised a bare AttributeError."""
    folder = original_model_dir(tmp_path / "ckpt", tokenizer=None)
    config = json.loads((folder / "config.json").read_text())
    (config if field is None else config[field])["torch_dtype"] = "bfloat17"
    (folder / "config.json").write_text(json.dumps(config))
    where = " in config.json" if field is None else f" of config.json's `{field}`"
    with pytest.raises(ValueError, match=re.escape("`torch_dtype`" + where) + " " + _DTYPE_MESSAGE.format("bfloat17")):
        AutoModelForImageTextToText.from_pretrained(folder)


@pytest.mark.parametrize(
    "dtype", ["bfloat16", "float16", "auto", torch.float32, {"": "float32", "text_config": "float32"}]
)
def test_valid_dtypes_still_load(tmp_path, dtype):
    folder = original_model_dir(tmp_path / "ckpt", tokenizer=None)
    loaded = AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype)
    expected = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype if isinstance(dtype, str) else "")
    assert loaded.dtype == (expected or torch.float32)


# ---- 5. generation_config.json: damaged files and fields of the wrong type --------------------------------------


def _with_generation_file(tmp_path, content: str) -> Path:
    folder = original_model_dir(tmp_path / "ckpt", tokenizer=None)
    (folder / "generation_config.json").write_text(content)
    return folder


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"eos_token_id": [2, 92542], "max_new', r"generation_config.json is not valid JSON \(Unterminated string"),
        ("[1, 2]", r"generation_config.json must hold a JSON object of generation settings, got list"),
        ("null", r"generation_config.json must hold a JSON object of generation settings, got NoneType"),
    ],
)
def test_a_damaged_generation_config_file_is_refused(tmp_path, content, message):
    """A half-written generation_config.json was skipped without a word (transformers logs it at info level), so the
    model generated with other stop tokens / sampling settings than the file holds; `[1, 2]` or `null` failed with
    "'list' object is not a mapping"."""
    folder = _with_generation_file(tmp_path, content)
    with pytest.raises(ValueError, match=message):
        AutoModelForImageTextToText.from_pretrained(folder)


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("do_sample", "false", TypeError),  # a non-empty string: generate sampled
        ("max_new_tokens", "5", TypeError),  # "'<=' not supported between 'str' and 'int'"
        ("max_length", "20", TypeError),  # passed the load, used as given
        ("temperature", "0.7", TypeError),
        ("num_beams", 0, ValueError),  # ZeroDivisionError in generate
        ("top_p", 5.0, ValueError),  # filtered nothing
        ("top_k", 2.5, TypeError),
        ("max_new_tokens", True, TypeError),
    ],
)
def test_generation_fields_of_the_wrong_type_are_refused_by_name(tmp_path, field, value, error):
    """`"do_sample": "false"` in generation_config.json made `generate` sample; `"num_beams": 0` raised a bare
    ZeroDivisionError in `generate`; `"max_new_tokens": "5"` a TypeError comparing str and int."""
    folder = _with_generation_file(tmp_path, json.dumps({field: value, "_from_model_config": True}))
    with pytest.raises(error, match=rf"`generation_config\.{field}` \(from generation_config.json"):
        AutoModelForImageTextToText.from_pretrained(folder)


def test_the_same_fields_are_checked_in_the_generation_config_argument(tmp_path):
    from transformers import GenerationConfig

    folder = original_model_dir(tmp_path / "ckpt", tokenizer=None)
    generation_config = GenerationConfig()
    generation_config.do_sample = "no"
    with pytest.raises(TypeError, match=r"`generation_config\.do_sample` .* must be a bool or None, got 'no' \(str\)"):
        AutoModelForImageTextToText.from_pretrained(folder, generation_config=generation_config)


def test_valid_generation_files_still_load_with_their_settings(tmp_path):
    settings = {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 0, "max_new_tokens": 7, "num_beams": 1}
    folder = _with_generation_file(tmp_path, json.dumps({**settings, "eos_token_id": [2, 5]}))
    loaded = AutoModelForImageTextToText.from_pretrained(folder)
    assert {name: getattr(loaded.generation_config, name) for name in settings} == settings
    assert 2 in loaded.generation_config.eos_token_id and 5 in loaded.generation_config.eos_token_id
    # the original checkpoints' file: {"_from_model_config": true, "transformers_version": ...}
    folder = _with_generation_file(tmp_path / "b", '{"_from_model_config": true, "transformers_version": "4.37.2"}')
    assert AutoModelForImageTextToText.from_pretrained(folder).generation_config.do_sample in (None, False)


# ---- 6. public helpers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "error"), [("256", TypeError), (256.0, TypeError), (-5, ValueError), (0, ValueError)]
)
def test_num_image_tokens_for_size_checks_tokens_per_tile(value, error):
    """`num_image_tokens_for_size(500, 500, tokens_per_tile="256")` returned the string '256' repeated once per tile
    ('256256...'), and `tokens_per_tile=-5` a negative token count."""
    from transformers_internvl.processing.tiling import num_image_tokens_for_size

    with pytest.raises(error, match="`tokens_per_tile` must be"):
        num_image_tokens_for_size(500, 500, tokens_per_tile=value)
    assert num_image_tokens_for_size(500, 500) == 256 * num_image_tokens_for_size(500, 500, tokens_per_tile=1)
    assert num_image_tokens_for_size(896, 448, tokens_per_tile=64) == 3 * 64  # 2 x 1 grid + thumbnail


# ---- 7. InternLM2 tokenizer files -------------------------------------------------------------------------------


def _internlm2_folder(tmp_path) -> Path:
    return original_model_dir(tmp_path / "ckpt", model="tiny-internlm2", tokenizer="internlm2-dummy-prefix")


@pytest.mark.parametrize(
    ("keep", "message"),
    [
        (0.5, r"is not a valid sentencepiece model \(tokenizer.model\).*damaged or truncated"),
        (0.0, "holds no sentencepiece pieces"),
    ],
)
@pytest.mark.parametrize("use_fast", [True, None])
def test_a_damaged_tokenizer_model_is_refused_by_file_name(tmp_path, keep, message, use_fast):
    """A truncated tokenizer.model gave "RuntimeError: Unable to load tokenizer model from SPM, loading from TikToken
    will be attempted instead" (no file named); an empty one "needs a sentencepiece BPE model, got model_type 1"."""
    from transformers import AutoProcessor, AutoTokenizer

    folder = _internlm2_folder(tmp_path)
    model_file = folder / "tokenizer.model"
    model_file.write_bytes(model_file.read_bytes()[: int(model_file.stat().st_size * keep)])
    pattern = re.escape(str(model_file)) + r" \(\d+ bytes\) " + message
    with pytest.raises(ValueError, match=pattern):
        AutoTokenizer.from_pretrained(folder, **({} if use_fast is None else {"use_fast": use_fast}))
    with pytest.raises(ValueError, match=pattern):
        AutoProcessor.from_pretrained(folder)


@pytest.mark.parametrize("name", ["add_bos_token", "add_eos_token"])
@pytest.mark.parametrize("value", ["false", "true", None, 2, [True]])
def test_add_bos_and_eos_token_flags_of_the_wrong_type_are_refused(tmp_path, name, value):
    """`"add_bos_token": "false"` in tokenizer_config.json was taken by transformers for a special token named
    add_bos_token, and the tokenizer added a BOS to every text (the default)."""
    from transformers import AutoTokenizer

    folder = _internlm2_folder(tmp_path)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config[name] = value
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(TypeError, match=rf"`{name}` \(tokenizer_config.json or keyword\) must be true or false, got"):
        AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize(
    ("flags", "bos", "eos"), [((False, False), False, False), ((True, True), True, True), ((0, 1), False, True)]
)
def test_boolean_bos_and_eos_flags_still_apply(tmp_path, flags, bos, eos):
    from transformers import AutoTokenizer

    folder = _internlm2_folder(tmp_path)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["add_bos_token"], config["add_eos_token"] = flags
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    for use_fast in (True, False):
        tokenizer = AutoTokenizer.from_pretrained(folder, use_fast=use_fast)
        ids = tokenizer("hi").input_ids
        assert (ids[0] == tokenizer.bos_token_id, ids[-1] == tokenizer.eos_token_id) == (bos, eos)


# ---- 8. chat CLI: bad argument values and combinations ----------------------------------------------------------


@pytest.fixture(scope="module")
def cli_model_dir(tmp_path_factory) -> Path:
    return original_model_dir(tmp_path_factory.mktemp("cli") / "model")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--top-p", "2"], r"argument --top-p: expected a number in \(0, 1\], got 2"),  # sampled with no filtering
        (["--top-p", "0"], r"argument --top-p: expected a number in \(0, 1\], got 0"),
        (["--top-p", "-0.5"], r"argument --top-p: expected a number in \(0, 1\], got -0.5"),
        (["--temperature", "-1"], "argument --temperature: expected a positive finite number, got -1"),
        (["--temperature", "nan"], "argument --temperature: expected a positive finite number, got nan"),
        (["--temperature", "inf"], "argument --temperature: expected a positive finite number, got inf"),
    ],
)
def test_chat_refuses_sampling_values_out_of_range_as_usage_errors(cli_model_dir, capsys, arguments, message):
    """`chat MODEL --prompt hi --top-p 2` loaded the model and sampled without any nucleus filtering; `--temperature
    -1` loaded the model before transformers refused `temperature` (exit 1, not a usage error)."""
    from transformers_internvl.cli import main

    assert main(["chat", str(cli_model_dir), "--prompt", "hi", "--max-new-tokens", "2", *arguments]) == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--num-frames", "5"], r"--num-frames needs --video"),  # was silently ignored
        (
            ["--compile", "--max-cache-len", "10000000000"],  # asked for 1.28 TB at the first answer
            r"--max-cache-len 10000000000 is larger than the model's context \(max_position_embeddings 32768\)",
        ),
    ],
)
def test_chat_refuses_argument_combinations_that_cannot_work(cli_model_dir, capsys, arguments, message):
    from transformers_internvl.cli import main

    assert main(["chat", str(cli_model_dir), "--prompt", "hi", "--max-new-tokens", "2", *arguments]) == 1
    assert re.search(message, capsys.readouterr().err)


def test_chat_still_samples_with_valid_values(cli_model_dir, capsys):
    from transformers_internvl.cli import main

    arguments = ["--temperature", "0.5", "--top-p", "1", "--seed", "0", "--compile", "--max-cache-len", "64"]
    assert main(["chat", str(cli_model_dir), "--prompt", "hi", "--max-new-tokens", "2", *arguments]) == 0
    assert capsys.readouterr().out.strip()


# ---- 9. tiles CLI: the drawing must not replace its input ------------------------------------------------------


@pytest.mark.parametrize("how", ["same path", "relative", "link"])
def test_tiles_refuses_to_draw_over_its_input_image(tmp_path, monkeypatch, capsys, how):
    """`transformers-internvl tiles photo.png -o photo.png` replaced the photo with the tile drawing (exit 0)."""
    from PIL import Image

    from transformers_internvl.cli import main

    photo = tmp_path / "photo.png"
    Image.new("RGB", (500, 300), (1, 2, 3)).save(photo)
    before = photo.read_bytes()
    monkeypatch.chdir(tmp_path)
    output = {"same path": str(photo), "relative": "./photo.png", "link": str(tmp_path / "link.png")}[how]
    if how == "link":
        os.symlink(photo, output)
    assert main(["tiles", str(photo), "-o", output]) == 1
    assert "is the input image" in capsys.readouterr().err
    assert photo.read_bytes() == before
    assert main(["tiles", str(photo), "-o", str(tmp_path / "drawing.png")]) == 0  # another file is fine
    assert Image.open(tmp_path / "drawing.png").size != (500, 300) and photo.read_bytes() == before


# ---- 10. pipeline(images=URL, text=...): loaded by this package's loader (fixed in session 8, pipeline_images) ------


def _silent(connection, request):
    import time

    time.sleep(30)


def _not_found(connection, request):
    connection.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: 9\r\n\r\nnot here!")


@pytest.mark.parametrize("behaviour", [_silent, _not_found])
def test_pipeline_images_url_fails_fast_naming_the_url(qwen2_model_dir, raw_http_server, behaviour, monkeypatch):
    """`pipe(images=url, text=...)` with no `timeout` waited forever on a silent server and turned a 404 page into
    "cannot identify image file <_io.BytesIO ...>" (transformers' `load_images(timeout=None)`). It now goes through
    `load_image_source`: the default timeout (`DEFAULT_URL_TIMEOUT`, 10 s; lowered to 1 s here to keep the test
    short) bounds it, and the error names the URL."""
    import threading

    from transformers import pipeline

    from transformers_internvl.processing import url_fetching

    monkeypatch.setattr(url_fetching, "DEFAULT_URL_TIMEOUT", 1.0)
    pipe = pipeline("image-text-to-text", model=str(qwen2_model_dir))
    url = raw_http_server(behaviour)
    outcome: dict = {}

    def call():
        try:
            pipe(images=url, text="<image>\nhi", max_new_tokens=1)
        except Exception as error:  # noqa: BLE001 - examined below
            outcome["error"] = error

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(4)
    assert not thread.is_alive(), "pipeline(images=URL) still blocked after 4 s"
    assert "error" in outcome and url in str(outcome["error"])
    expected = TimeoutError if behaviour is _silent else ValueError
    assert isinstance(outcome["error"], expected), repr(outcome["error"])
