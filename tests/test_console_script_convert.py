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


def _console(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "transformers_internvl", *arguments], capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow  # two fresh interpreters, ~10-30 s
def test_console_script_converts_internlm2_both_ways(tmp_path):
    source = original_model_dir(tmp_path / "src", model="tiny-internlm2", tokenizer="internlm2-dummy-prefix")
    hf, back = tmp_path / "hf", tmp_path / "back"
    completed = _console("convert", str(source), str(hf), "--to", "hf", "--quiet")
    assert completed.returncode == 0, completed.stderr
    assert json.loads((hf / "config.json").read_text())["model_type"] == "internvl"
    completed = _console("convert", str(hf), str(back), "--to", "original", "--quiet")
    assert completed.returncode == 0, completed.stderr
    back_config = json.loads((back / "config.json").read_text())
    assert back_config["model_type"] == "internvl_chat"
    assert back_config["llm_config"]["architectures"] == ["InternLM2ForCausalLM"]
    assert "attention.wqkv" in " ".join(safe_open(back / "model.safetensors", "pt").keys())


def test_console_script_reads_the_source_tokenizer_without_a_config_warning(tmp_path):
    source = original_model_dir(tmp_path / "src")
    completed = _console("convert", str(source), str(tmp_path / "hf"), "--to", "hf", "--quiet")
    assert completed.returncode == 0, completed.stderr
    assert "to instantiate a model of type" not in completed.stderr
