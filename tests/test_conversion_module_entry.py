"""`python -m transformers_internvl.conversion`: the `convert` command without the console script (and without
importing `cli`, which sits above the conversion layer)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import original_model_dir

# Runs the module as `python -m` does, then reports the exit code and whether any `cli` module was imported.
_RUN_MODULE = """
import json, runpy, sys
sys.argv = ["python -m transformers_internvl.conversion", *json.loads(sys.argv[1])]
try:
    runpy.run_module("transformers_internvl.conversion", run_name="__main__", alter_sys=True)
    code = 0
except SystemExit as exit_request:
    code = exit_request.code
print(json.dumps([code, sorted(m for m in sys.modules if m.startswith("transformers_internvl.cli"))]))
"""


def _start(*arguments: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _RUN_MODULE, json.dumps(arguments)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(process: subprocess.Popen) -> tuple[int, list[str], str]:
    """Exit code, imported `cli` modules and output of a process of `_start` (waited for at most 300 s)."""
    try:
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    code, cli_modules = json.loads(stdout.strip().splitlines()[-1])
    return code, cli_modules, stdout + stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[subprocess.Popen, Path]]:
    """Every run of this module, all started at once (fresh interpreters side by side: the pytest process only waits
    meanwhile, so they cost wall time together, not one after another): `{name: (process, tmp_path)}`."""
    tmp_path = tmp_path_factory.mktemp("conversion-module")
    source = original_model_dir(tmp_path / "src")
    arguments = {
        "converts": (str(source), str(tmp_path / "hf"), "--to", "hf", "--quiet"),
        "missing": (str(tmp_path / "missing"), str(tmp_path / "out"), "--to", "hf"),
        "no_to": (str(tmp_path / "missing"), str(tmp_path / "out")),  # --to is required
        "usage": ("--help",),
    }
    processes = {name: (_start(*values), tmp_path) for name, values in arguments.items()}
    yield processes
    for process, _ in processes.values():
        if process.poll() is None:
            process.kill()
            process.wait()


def test_module_converts_without_importing_cli(runs):
    process, tmp_path = runs["converts"]
    code, cli_modules, output = _result(process)  # src (tiny-qwen2 + tokenizer) hf --to hf --quiet
    assert code == 0, output
    assert cli_modules == []
    assert f"wrote {tmp_path / 'hf'}" in output
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "internvl"


def test_module_errors_and_usage_exit_codes(runs):
    missing, no_to, usage = (_result(runs[name][0]) for name in ("missing", "no_to", "usage"))
    code, cli_modules, output = missing
    assert (code, cli_modules) == (1, [])
    assert "transformers-internvl: error: source folder" in output and "does not exist" in output
    assert "Traceback" not in output
    code, _, output = no_to
    assert code == 2 and "the following arguments are required: --to" in output
    code, _, output = usage
    assert code == 0 and "--to {hf,original}" in output and "--merge-lora" in output
