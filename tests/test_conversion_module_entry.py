"""`python -m transformers_internvl.conversion`: the `convert` command without the console script (and without
importing `cli`, which sits above the conversion layer)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import original_model_dir

# Runs the module as `python -m` does, once per argument list (JSON in argv[1]), one after another in this interpreter,
# each with its output (file descriptors 1 and 2) caught apart; then prints `{name: [exit code, cli modules imported by
# then, output]}`. The first run starts from a fresh interpreter; the `cli` check of a later run covers the earlier
# ones too.
_RUN_MODULE = """
import json, os, runpy, sys, tempfile
results = {}
for name, arguments in json.loads(sys.argv[1]).items():
    sys.stdout.flush(); sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile("w+") as output:
        os.dup2(output.fileno(), 1); os.dup2(output.fileno(), 2)
        sys.argv = ["python -m transformers_internvl.conversion", *arguments]
        try:
            runpy.run_module("transformers_internvl.conversion", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exit_request:
            code = exit_request.code
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os.dup2(saved[0], 1); os.dup2(saved[1], 2)
        output.seek(0)
        text = output.read()
    cli = sorted(m for m in sys.modules if m.startswith("transformers_internvl.cli"))
    results[name] = [code, cli, text]
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[dict[str, tuple[int, list[str], str]], Path]:
    """Every run of this module, in one fresh interpreter, the conversion first (`_RUN_MODULE`):
    `({name: (exit code, imported cli modules, output)}, tmp_path)`."""
    tmp_path = tmp_path_factory.mktemp("conversion-module")
    source = original_model_dir(tmp_path / "src")
    arguments = {
        "converts": (str(source), str(tmp_path / "hf"), "--to", "hf", "--quiet"),
        "missing": (str(tmp_path / "missing"), str(tmp_path / "out"), "--to", "hf"),
        "no_to": (str(tmp_path / "missing"), str(tmp_path / "out")),  # --to is required
        "usage": ("--help",),
    }
    result = subprocess.run(
        [sys.executable, "-c", _RUN_MODULE, json.dumps(arguments)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return {name: tuple(run) for name, run in json.loads(result.stdout.strip().splitlines()[-1]).items()}, tmp_path


def test_module_converts_without_importing_cli(runs):
    results, tmp_path = runs
    code, cli_modules, output = results["converts"]  # src (tiny-qwen2 + tokenizer) hf --to hf --quiet
    assert code == 0, output
    assert cli_modules == []
    assert f"wrote {tmp_path / 'hf'}" in output
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "internvl"


def test_module_errors_and_usage_exit_codes(runs):
    missing, no_to, usage = (runs[0][name] for name in ("missing", "no_to", "usage"))
    code, cli_modules, output = missing
    assert (code, cli_modules) == (1, [])
    assert "transformers-internvl: error: source folder" in output and "does not exist" in output
    assert "Traceback" not in output
    code, _, output = no_to
    assert code == 2 and "the following arguments are required: --to" in output
    code, _, output = usage
    assert code == 0 and "--to {hf,original}" in output and "--merge-lora" in output
