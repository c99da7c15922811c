"""CLI reliability (issue 12): a failed or interrupted chat turn keeps the conversation, Ctrl-C at the prompt and
during start-up exits 130 without a traceback, and the `tiles` PNG keeps the user's umask."""

from __future__ import annotations

import io
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from transformers_internvl.cli import main
from transformers_internvl.cli.chat import ChatSession

PROG = "transformers-internvl"


@pytest.fixture(scope="module")
def model_dir(qwen2_model_dir) -> Path:
    return qwen2_model_dir


@pytest.fixture(scope="module")
def model_and_processor(qwen2_model_and_processor):
    return qwen2_model_and_processor


def _greedy(model, processor, messages, max_new_tokens=4):
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.inference_mode():
        sequences = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.tokenizer.decode(sequences[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def _user(text):
    return {"role": "user", "content": [{"type": "text", "text": text}]}


def _assistant(text):
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


class _Lines(io.StringIO):
    """stdin whose `readline` raises KeyboardInterrupt at a chosen line (Ctrl-C at the prompt)."""

    def __init__(self, lines, interrupt_at=None):
        super().__init__("".join(lines))
        self.calls = 0
        self.interrupt_at = interrupt_at

    def readline(self, *args):
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        return super().readline(*args)


def test_failed_turn_prints_one_line_and_the_conversation_goes_on(model_dir, model_and_processor, monkeypatch, capsys):
    original_answer = ChatSession._answer

    def failing_answer(self):
        if "explode" in self.messages[-1]["content"][-1]["text"]:
            raise RuntimeError("CUDA out of memory (simulated)\nsecond line of detail")
        return original_answer(self)

    monkeypatch.setattr(ChatSession, "_answer", failing_answer)
    monkeypatch.setattr(sys, "stdin", _Lines(["Hello there\n", "please explode\n", "What did I say?\n", "exit\n"]))
    assert main(["chat", str(model_dir), "--max-new-tokens", "4"]) == 0
    captured = capsys.readouterr()
    error_lines = [line for line in captured.err.splitlines() if line.startswith(f"{PROG}: error:")]
    assert error_lines == [f"{PROG}: error: RuntimeError: CUDA out of memory (simulated) (turn dropped)"]
    assert "Traceback" not in captured.err
    # The history holds the first turn only: the failed turn left no trace.
    model, processor = model_and_processor
    first = _greedy(model, processor, [_user("Hello there")])
    second = _greedy(model, processor, [_user("Hello there"), _assistant(first), _user("What did I say?")])
    assert [line.strip() for line in captured.out.strip().splitlines()] == [first, second]


def test_ctrl_c_stops_one_answer_then_a_second_quits_with_130(model_dir, model_and_processor, monkeypatch, capsys):
    original_answer = ChatSession._answer

    def interrupted_answer(self):
        if "long" in self.messages[-1]["content"][-1]["text"]:
            raise KeyboardInterrupt
        return original_answer(self)

    monkeypatch.setattr(ChatSession, "_answer", interrupted_answer)
    stdin = _Lines(["Hello there\n", "a long answer please\n", "What did I say?\n", "never read\n"], interrupt_at=4)
    monkeypatch.setattr(sys, "stdin", stdin)
    assert main(["chat", str(model_dir), "--max-new-tokens", "4"]) == 130
    captured = capsys.readouterr()
    assert "answer interrupted" in captured.err and "Traceback" not in captured.err
    model, processor = model_and_processor
    first = _greedy(model, processor, [_user("Hello there")])
    second = _greedy(model, processor, [_user("Hello there"), _assistant(first), _user("What did I say?")])
    assert [line.strip() for line in captured.out.strip().splitlines() if line.strip()] == [first, second]


def test_ctrl_d_after_an_interrupted_answer_exits_0(model_dir, monkeypatch, capsys):
    monkeypatch.setattr(ChatSession, "_answer", lambda self: (_ for _ in ()).throw(KeyboardInterrupt))
    monkeypatch.setattr(sys, "stdin", _Lines(["hello\n"]))  # then end of input (Ctrl-D)
    assert main(["chat", str(model_dir)]) == 0
    assert "answer interrupted" in capsys.readouterr().err


def test_failed_first_turn_keeps_its_images_for_the_next(model_dir, model_and_processor, tmp_path):
    from transformers_internvl.cli import build_parser

    image = tmp_path / "blue.png"
    Image.new("RGB", (64, 64), (0, 0, 255)).save(image)
    model, processor = model_and_processor
    args = build_parser().parse_args(["chat", str(model_dir), "--image", str(image), "--max-new-tokens", "2"])
    chat = ChatSession(model, processor, args)
    real_inputs = chat._inputs
    chat._inputs = lambda: (_ for _ in ()).throw(ValueError("bad turn"))
    with pytest.raises(ValueError, match="bad turn"):
        chat.ask("first")
    assert chat.messages == [] and chat.pending_images == [str(image)]
    chat._inputs = real_inputs
    chat.ask("second")
    assert chat.messages[0]["content"][0] == {"type": "image", "path": str(image)}


def _default_sigint() -> None:
    # The chat must start as a foreground program of a terminal does. A suite started in the background without job
    # control (`pytest ... &` in a script, nohup) has SIGINT ignored, which children inherit and Python keeps
    # ignored (rightly: such a process is not meant to be stopped by Ctrl-C), so Ctrl-C would not reach the chat.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_chat(model_dir: Path) -> subprocess.Popen:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(
        [sys.executable, "-m", "transformers_internvl", "chat", str(model_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        preexec_fn=_default_sigint if os.name == "posix" else None,
    )


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.4, 1.5, 4.0])
def test_ctrl_c_during_start_up_exits_130_without_a_traceback(model_dir, delay):
    process = _start_chat(model_dir)
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    try:
        _, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert "Traceback" not in stderr, stderr
    assert process.returncode == 130, (process.returncode, stderr)


@pytest.mark.slow
def test_ctrl_c_at_the_prompt_exits_130(model_dir):
    process = _start_chat(model_dir)
    # Wait until the weights are loaded (the progress bar reaches 100%); the chat then waits for a message on stdin.
    seen = ""
    while "100%" not in seen:
        character = process.stderr.read(1)
        assert character, seen
        seen += character
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert "Traceback" not in stderr and process.returncode == 130, (process.returncode, stderr)
    assert process.stdout is not None


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_tiles_png_keeps_the_umask(tmp_path, umask):
    image = tmp_path / "in.png"
    Image.new("RGB", (900, 500), (0, 0, 255)).save(image)
    output = tmp_path / f"out-{umask:o}.png"
    previous = os.umask(umask)
    try:
        assert main(["tiles", str(image), "-o", str(output)]) == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE(output.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left
    # Replacing an existing file keeps that file's mode.
    output.chmod(0o640)
    assert main(["tiles", str(image), "-o", str(output)]) == 0
    assert stat.S_IMODE(output.stat().st_mode) == 0o640
