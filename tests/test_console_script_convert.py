"""`transformers-internvl convert` run as the console script (a fresh `python -m transformers_internvl` process).

The console script skips registration at import (so that `tiles` starts fast); a command that reads checkpoints must
register this package's classes itself. Without that, InternLM2 checkpoints (InternVL2.5-8B, the README's example)
were refused with "Unsupported `llm_config.architectures[0]`: 'InternLM2ForCausalLM'", and Qwen2 ones printed
transformers' "model of type `internvl_chat` to instantiate a model of type ``" warning twice.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import original_model_dir
from safetensors import safe_open


def _start(*arguments: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "transformers_internvl", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen) -> subprocess.CompletedProcess:
    """Waits for a process of `_start` (at most 300 s) and returns its outcome as `subprocess.run` would."""
    try:
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _console(*arguments: str) -> subprocess.CompletedProcess:
    return _finish(_start(*arguments))


@pytest.fixture(scope="module")
def first_conversions(tmp_path_factory):
    """The first conversion of each test, both started at once (two fresh interpreters side by side: the pytest
    process only waits meanwhile, so on two cores the second costs no wall time): `{name: (process, tmp_path)}`."""
    internlm2, qwen2 = tmp_path_factory.mktemp("console-internlm2"), tmp_path_factory.mktemp("console-qwen2")
    source = original_model_dir(internlm2 / "src", model="tiny-internlm2", tokenizer="internlm2-dummy-prefix")
    processes = {
        "internlm2": (_start("convert", str(source), str(internlm2 / "hf"), "--to", "hf", "--quiet"), internlm2),
        "qwen2": (
            _start("convert", str(original_model_dir(qwen2 / "src")), str(qwen2 / "hf"), "--to", "hf", "--quiet"),
            qwen2,
        ),
    }
    yield processes
    for process, _ in processes.values():
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow  # two fresh interpreters, ~10-30 s
def test_console_script_converts_internlm2_both_ways(first_conversions):
    process, tmp_path = first_conversions["internlm2"]
    hf, back = tmp_path / "hf", tmp_path / "back"
    completed = _finish(process)  # convert src (tiny-internlm2, internlm2-dummy-prefix tokenizer) hf --to hf --quiet
    assert completed.returncode == 0, completed.stderr
    assert json.loads((hf / "config.json").read_text())["model_type"] == "internvl"
    completed = _console("convert", str(hf), str(back), "--to", "original", "--quiet")
    assert completed.returncode == 0, completed.stderr
    back_config = json.loads((back / "config.json").read_text())
    assert back_config["model_type"] == "internvl_chat"
    assert back_config["llm_config"]["architectures"] == ["InternLM2ForCausalLM"]
    assert "attention.wqkv" in " ".join(safe_open(back / "model.safetensors", "pt").keys())


def test_console_script_reads_the_source_tokenizer_without_a_config_warning(first_conversions):
    process, _ = first_conversions["qwen2"]
    completed = _finish(process)  # convert src (tiny-qwen2, qwen2-tiny tokenizer) hf --to hf --quiet
    assert completed.returncode == 0, completed.stderr
    assert "to instantiate a model of type" not in completed.stderr
