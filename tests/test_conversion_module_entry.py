"""`python -m transformers_internvl.conversion`: the `convert` command without the console script (and without
importing `cli`, which sits above the conversion layer)."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

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


def _run(*arguments: str) -> tuple[int, list[str], str]:
    completed = subprocess.run(
        [sys.executable, "-c", _RUN_MODULE, json.dumps(arguments)], capture_output=True, text=True, timeout=300
    )
    code, cli_modules = json.loads(completed.stdout.strip().splitlines()[-1])
    return code, cli_modules, completed.stdout + completed.stderr


def test_module_converts_without_importing_cli(tmp_path):
    source = original_model_dir(tmp_path / "src")
    code, cli_modules, output = _run(str(source), str(tmp_path / "hf"), "--to", "hf", "--quiet")
    assert code == 0, output
    assert cli_modules == []
    assert f"wrote {tmp_path / 'hf'}" in output
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "internvl"


def test_module_errors_and_usage_exit_codes(tmp_path):
    runs = (
        (str(tmp_path / "missing"), str(tmp_path / "out"), "--to", "hf"),
        (str(tmp_path / "missing"), str(tmp_path / "out")),  # --to is required
        ("--help",),
    )
    with ThreadPoolExecutor(len(runs)) as pool:  # three fresh interpreters side by side (wall time)
        missing, no_to, usage = pool.map(lambda arguments: _run(*arguments), runs)
    code, cli_modules, output = missing
    assert (code, cli_modules) == (1, [])
    assert "transformers-internvl: error: source folder" in output and "does not exist" in output
    assert "Traceback" not in output
    code, _, output = no_to
    assert code == 2 and "the following arguments are required: --to" in output
    code, _, output = usage
    assert code == 0 and "--to {hf,original}" in output and "--merge-lora" in output
