"""Tests of the `transformers-internvl` console script (transformers_internvl.cli)."""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from helpers import QWEN2_DIR, tokenized_chat
from PIL import Image

import transformers_internvl
from transformers_internvl.cli import build_parser, main
from transformers_internvl.cli.chat import ChatSession
from transformers_internvl.reasoning.prompts import build_cot_prompt

PROG = "transformers-internvl"
BLUE = (0, 0, 255)


def _run_subprocess(*arguments: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, "-m", "transformers_internvl", *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
    )


def _solid_image(path: Path, size: tuple[int, int], color=BLUE) -> Path:
    Image.new("RGB", size, color).save(path)
    return path


def _is_line_color(pixel) -> bool:
    """The grid is drawn in orange-red over a blue image: clearly not the image's own colour."""
    red, green, blue = pixel
    return red > 200 and blue < 100


def _single_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"{PROG}: error: ")
    return lines[0]


# ---- help ---------------------------------------------------------------------------------------------------------


def test_help_as_a_subprocess():
    completed = _run_subprocess("--help")
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith(f"usage: {PROG}")
    for command in ("tiles", "chat"):
        assert command in completed.stdout


@pytest.mark.parametrize("command", [[], ["tiles"], ["chat"]])
def test_help_in_process(command, capsys):
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {PROG} {' '.join(command)}".rstrip())
    if command == ["tiles"]:
        for option in ("--max-tiles", "--min-tiles", "--no-thumbnail", "--output"):
            assert option in out
    if command == ["chat"]:
        for option in ("--prompt", "--image", "--video", "--cot", "--votes", "--dtype", "--device-map", "--seed"):
            assert option in out


def test_version_and_usage_errors(capsys):
    assert main(["--version"]) == 0
    assert transformers_internvl.__version__ in capsys.readouterr().out
    assert main([]) == 2  # a subcommand is required
    assert "usage:" in capsys.readouterr().err
    assert main(["tiles", "x.png", "--max-tiles", "0"]) == 2
    assert "--max-tiles: expected a positive integer, got 0" in capsys.readouterr().err


def test_parser_is_built_from_one_function_per_command():
    from transformers_internvl.cli import app

    subparsers = next(action for action in build_parser()._actions if action.dest == "command")
    assert list(subparsers.choices) == ["tiles", "chat", "convert", "filter", "bench"]
    assert len(app._COMMANDS) == len(subparsers.choices)


# ---- tiles --------------------------------------------------------------------------------------------------------


def test_tiles_as_a_subprocess_writes_the_grid(tmp_path):
    # 800x400 has aspect ratio 2: grid 2x1, resized to 896x448, tiles (0,0,448,448) and (448,0,896,448), + thumbnail.
    image = _solid_image(tmp_path / "wide.png", (800, 400))
    output = tmp_path / "plan.png"
    completed = _run_subprocess("tiles", str(image), "--max-tiles", "12", "-o", str(output))
    assert completed.returncode == 0, completed.stderr
    assert "grid: 2x1" in completed.stdout
    assert "tiles: 3 (2 grid + thumbnail)" in completed.stdout
    assert "tile 0: box (0, 0, 448, 448)" in completed.stdout
    assert "tile 1: box (448, 0, 896, 448)" in completed.stdout
    assert "tile 2: thumbnail" in completed.stdout
    assert "image tokens: 3 x 256 = 768" in completed.stdout

    drawing = Image.open(output)
    assert drawing.format == "PNG"
    # Drawn at the image's own size (it fits in 1024 px), plus a side panel for the thumbnail.
    assert drawing.height == 400 and drawing.width > 800
    # The boundary between the tiles: x = 448 in the resized image = 448 * 800 / 896 = 400 in the drawing.
    assert _is_line_color(drawing.getpixel((400, 200)))
    assert _is_line_color(drawing.getpixel((1, 200))) and _is_line_color(drawing.getpixel((798, 200)))
    for x in (100, 300, 500, 700):  # tile interiors keep the image
        assert drawing.getpixel((x, 200)) == BLUE
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file was renamed away


def test_tiles_tall_image_grid_lines_and_json(tmp_path, capsys):
    # 500x1500 (aspect 1/3) with at most 6 tiles: grid 1x3, resized to 448x1344. Drawn with its longer side at
    # 1024 px: 341x1024, so the tile boundaries y = 448 and 896 land at 448 * 1024 / 1344 = 341.3 and 682.7.
    image = _solid_image(tmp_path / "tall.png", (500, 1500))
    output = tmp_path / "tall_plan.png"
    assert main(["tiles", str(image), "--max-tiles", "6", "-o", str(output), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["grid"] == [1, 3]
    assert plan["resized_to"] == [448, 1344]
    assert plan["tile_boxes"] == [[0, 0, 448, 448], [0, 448, 448, 896], [0, 896, 448, 1344]]
    assert plan["num_tiles"] == 4 and plan["has_thumbnail"] is True
    assert plan["num_image_tokens"] == 4 * 256
    drawing = Image.open(output)
    assert drawing.height == 1024
    for y in (341, 683):
        assert _is_line_color(drawing.getpixel((170, y)))
    for y in (170, 512, 850):
        assert drawing.getpixel((170, y)) == BLUE


def test_tiles_without_thumbnail_and_min_tiles(tmp_path, capsys):
    image = _solid_image(tmp_path / "wide.png", (800, 400))
    output = tmp_path / "plan.png"
    assert main(["tiles", str(image), "--no-thumbnail", "-o", str(output)]) == 0
    out = capsys.readouterr().out
    assert "tiles: 2 (2 grid), 448x448 each" in out and "thumbnail (whole image" not in out
    assert Image.open(output).size == (800, 400)  # no side panel

    # A square image is one tile unless min_tiles forces a grid; a single tile never gets a thumbnail.
    square = _solid_image(tmp_path / "square.png", (300, 300))
    assert main(["tiles", str(square), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["grid"] == [1, 1] and plan["num_tiles"] == 1 and plan["has_thumbnail"] is False
    assert main(["tiles", str(square), "--min-tiles", "4", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["grid"] == [2, 2] and plan["num_tiles"] == 5


# ---- errors -------------------------------------------------------------------------------------------------------


def test_missing_image_as_a_subprocess(tmp_path):
    completed = _run_subprocess("tiles", str(tmp_path / "missing.png"))
    assert completed.returncode != 0
    # Only the last stderr line is ours; importing transformers may log a line of its own before it.
    assert "Traceback" not in completed.stderr
    assert (
        completed.stderr.strip().splitlines()[-1] == f"{PROG}: error: image file not found: {tmp_path / 'missing.png'}"
    )


@pytest.mark.parametrize(
    ("make_arguments", "expected"),
    [
        (lambda d: ["tiles", str(d / "missing.png")], "image file not found"),
        (lambda d: ["tiles", str(d)], "image file is not a file"),
        (lambda d: ["tiles", str(d / "text.png")], "cannot read image"),
        (lambda d: ["tiles", str(d / "truncated.png")], "cannot read image"),
        (lambda d: ["tiles", str(d / "ok.png"), "-o", str(d / "no" / "such" / "dir.png")], "does not exist"),
        (lambda d: ["tiles", str(d / "ok.png"), "-o", str(d / "plan.xyz")], "unknown image file extension"),
        (lambda d: ["tiles", str(d / "ok.png"), "--min-tiles", "5", "--max-tiles", "2"], "--min-tiles (5)"),
        (lambda d: ["chat", str(d / "nowhere"), "--prompt", "hi"], "model directory not found"),
        (lambda d: ["chat", str(d / "ok.png"), "--prompt", "hi"], "not a model directory"),
        (lambda d: ["chat", str(d), "--prompt", "hi"], "has no config.json"),
        (lambda d: ["chat", str(d / "config_only"), "--prompt", "hi"], "cannot load a model from"),
        (lambda d: ["chat", str(d / "bad_json"), "--prompt", "hi"], "cannot load a model from"),
    ],
)
def test_errors_are_one_line_without_traceback(tmp_path, capsys, make_arguments, expected):
    (tmp_path / "text.png").write_text("not an image")
    _solid_image(tmp_path / "ok.png", (64, 32))
    (tmp_path / "truncated.png").write_bytes((tmp_path / "ok.png").read_bytes()[:60])
    (tmp_path / "config_only").mkdir()
    shutil.copy(QWEN2_DIR / "config.json", tmp_path / "config_only" / "config.json")
    (tmp_path / "bad_json").mkdir()
    (tmp_path / "bad_json" / "config.json").write_text("{ not json")

    assert main(make_arguments(tmp_path)) == 1
    captured = capsys.readouterr()
    assert expected in _single_error_line(captured.err)
    assert captured.out == ""


def test_votes_without_prompt_is_an_error(model_dir, capsys):
    assert main(["chat", str(model_dir), "--votes", "3"]) == 1
    assert "--votes needs --prompt" in _single_error_line(capsys.readouterr().err)


# ---- chat ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(qwen2_model_dir) -> Path:
    return qwen2_model_dir


@pytest.fixture(scope="module")
def model_and_processor(qwen2_model_and_processor):
    return qwen2_model_and_processor


def _expected_greedy_text(model, processor, messages, max_new_tokens, processor_kwargs=None):
    inputs = tokenized_chat(processor, messages, processor_kwargs)
    with torch.inference_mode():
        sequences = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new_tokens = sequences[0, inputs["input_ids"].shape[1] :]
    return processor.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()


def test_chat_one_shot_streams_the_greedy_answer(model_dir, model_and_processor, tmp_path, monkeypatch, capsys):
    # 1600x400 (aspect 4): 4x1 grid + thumbnail by default, 2x1 + thumbnail = 3 tiles with --max-tiles 2.
    image = _solid_image(tmp_path / "wide.png", (1600, 400))
    sent = []
    original_inputs = ChatSession._inputs

    def recording_inputs(self):
        inputs = original_inputs(self)
        sent.append(inputs)
        return inputs

    monkeypatch.setattr(ChatSession, "_inputs", recording_inputs)
    arguments = ["chat", str(model_dir), "--prompt", "Describe the image.", "--image", str(image)]
    assert main([*arguments, "--max-new-tokens", "6", "--max-tiles", "2"]) == 0
    streamed = capsys.readouterr().out
    assert sent[0]["pixel_values"].shape[0] == 3

    model, processor = model_and_processor
    messages = [
        {
            "role": "user",
            "content": [{"type": "image", "path": str(image)}, {"type": "text", "text": "Describe the image."}],
        }
    ]
    expected = _expected_greedy_text(model, processor, messages, 6, processor_kwargs={"max_dynamic_patch": 2})
    assert expected
    assert streamed.strip() == expected


def test_chat_interactive_keeps_history_and_quits(model_dir, model_and_processor, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hello there\n\nWhat did I say?\nexit\nnot read\n"))
    assert main(["chat", str(model_dir), "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    model, processor = model_and_processor
    first = [{"role": "user", "content": [{"type": "text", "text": "Hello there"}]}]
    first_answer = _expected_greedy_text(model, processor, first, max_new_tokens=4)
    second = [
        *first,
        {"role": "assistant", "content": [{"type": "text", "text": first_answer}]},
        {"role": "user", "content": [{"type": "text", "text": "What did I say?"}]},
    ]
    second_answer = _expected_greedy_text(model, processor, second, max_new_tokens=4)
    assert [line.strip() for line in out.strip().splitlines()] == [first_answer, second_answer]


def test_chat_later_turns_reuse_the_cache_of_earlier_ones(model_dir, model_and_processor, tmp_path):
    """Issue 13: the interactive chat encodes the image and the history once; later turns run only new tokens."""
    model, processor = model_and_processor
    image = _solid_image(tmp_path / "wide.png", (1600, 400))
    arguments = ["chat", str(model_dir), "--image", str(image), "--max-new-tokens", "4", "--max-tiles", "2"]
    prefill_lengths, vision_calls = [], []
    original_forward = type(model).forward

    @functools.wraps(original_forward)  # generate validates its kwargs against forward's signature
    def recording_forward(self, *args, **kwargs):
        if kwargs["input_ids"].shape[1] > 1:
            prefill_lengths.append(kwargs["input_ids"].shape[1])
        return original_forward(self, *args, **kwargs)

    hook = model.model.vision_model.register_forward_hook(lambda *_: vision_calls.append(1))
    chat = ChatSession(model, processor, build_parser().parse_args(arguments))
    model.clear_chat_cache()
    try:
        with mock.patch.object(type(model), "forward", recording_forward):
            chat.ask("Describe the image.")
            chat.ask("And the colour?")
    finally:
        hook.remove()
    assert len(vision_calls) == 1  # the image is encoded once, in the first turn
    assert prefill_lengths[0] > 3 * 256  # first turn: the whole prompt with 3 tiles of image tokens
    assert len(prefill_lengths) == 2 and prefill_lengths[1] < 64  # second turn: only the tokens after the cache
    # Same answers as without reuse.
    fresh = ChatSession(model, processor, build_parser().parse_args(arguments))
    model.reuse_chat_cache = False
    try:
        fresh.ask("Describe the image.")
        fresh.ask("And the colour?")
    finally:
        model.reuse_chat_cache = True
        model.clear_chat_cache()
    assert [m["content"][-1]["text"] for m in fresh.messages] == [m["content"][-1]["text"] for m in chat.messages]


def test_chat_compile_sets_a_static_cache_and_gives_the_same_answer(model_dir, model_and_processor, capsys):
    """`--compile` decodes with a static cache (compiled on accelerators); greedy answers are unchanged."""
    from transformers_internvl.cli.chat import _load_model_and_processor

    arguments = ["chat", str(model_dir), "--compile", "--max-cache-len", "256", "--max-new-tokens", "4"]
    compiled_model, _ = _load_model_and_processor(build_parser().parse_args(arguments))
    assert compiled_model.generation_config.cache_implementation == "static"
    assert compiled_model.generation_config.max_cache_len == 256
    assert compiled_model.generation_config.compile_config is not None
    assert main([*arguments, "--prompt", "Hello there"]) == 0
    model, processor = model_and_processor
    messages = [{"role": "user", "content": [{"type": "text", "text": "Hello there"}]}]
    assert capsys.readouterr().out.strip() == _expected_greedy_text(model, processor, messages, 4)


def test_chat_end_of_input_quits(model_dir, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(["chat", str(model_dir)]) == 0
    assert capsys.readouterr().out == ""


def test_chat_cot_prompt_and_history(model_dir, model_and_processor):
    model, processor = model_and_processor
    args = build_parser().parse_args(["chat", str(model_dir), "--cot", "--max-new-tokens", "3"])
    chat = ChatSession(model, processor, args)
    chat.ask("What is 2+3?")
    chat.ask("And 3+4?")
    assert [message["role"] for message in chat.messages] == ["user", "assistant", "user", "assistant"]
    assert chat.messages[0]["content"][-1]["text"] == build_cot_prompt("What is 2+3?", kind="open")
    assert chat.messages[2]["content"][-1]["text"] == build_cot_prompt("And 3+4?", kind="open")


def test_chat_votes_are_deterministic_under_a_seed(model_dir, capsys):
    arguments = ["chat", str(model_dir), "--prompt", "2+2?", "--votes", "3", "--max-new-tokens", "4", "--seed", "5"]
    assert main(arguments) == 0
    first = capsys.readouterr().out
    assert main(arguments) == 0
    assert capsys.readouterr().out == first
    assert first.count("--- sample ") == 3
    assert "=== majority answer: " in first.splitlines()[-1]


def test_chat_sampling_is_seeded(model_dir, capsys):
    arguments = ["chat", str(model_dir), "--prompt", "Hi", "--max-new-tokens", "8", "--temperature", "1.5"]
    outputs = []
    for seed in ("1", "1", "2"):
        assert main([*arguments, "--seed", seed]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    assert outputs[0] != outputs[2]  # it really samples (a random tiny model at temperature 1.5)
