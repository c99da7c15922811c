"""Start-up cost: code paths that need no model import no modeling code (issue 13)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

SRC = str(Path(__file__).resolve().parents[1] / "src")

# Modules of the package that only a model needs (configs and llm_resolution are light and needed to register).
MODEL_ONLY_MODULES = (
    "transformers_internvl.modeling.modeling_internvl",
    "transformers_internvl.modeling.modeling_intern_vit",
    "transformers_internvl.modeling.modeling_internlm2",
    "transformers_internvl.modeling.chat",
    "transformers_internvl.modeling.original_api",
)


def _start(code: str, *args: str) -> subprocess.Popen:
    """Runs `code` in a fresh interpreter (with this tree's `src` first) that prints its `sys.modules` keys."""
    script = f"{code}\nimport json, sys\nprint('MODULES=' + json.dumps(sorted(sys.modules)))"
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**__import__("os").environ, "PYTHONPATH": SRC},
    )


def _modules_of(process: subprocess.Popen) -> set[str]:
    """The `sys.modules` keys that a process of `_start` printed."""
    try:
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    line = next(line for line in stdout.splitlines() if line.startswith("MODULES="))
    return set(json.loads(line[len("MODULES=") :]))


def _modules_after(code: str, *args: str) -> set[str]:
    """The `sys.modules` keys after running `code` in a fresh interpreter (with this tree's `src` first)."""
    return _modules_of(_start(code, *args))


# The steps that import torch and transformers (seconds of CPU each in a fresh interpreter), run in this order by ONE
# fresh interpreter that records `sys.modules` after each: a later step sees the modules of the earlier ones too, so
# its "no model-only module" check covers a superset of what it imports alone (at least as strict as a fresh
# interpreter of its own); the only step that loads model code comes last.
IMPORT_STEPS = {
    "tiling": "import transformers_internvl.processing.tiling",
    "processors": (
        "from transformers_internvl.processing.processing_internvl import InternVLChatProcessor\n"
        "from transformers_internvl.processing.image_processing_internvl import InternVLImageProcessor\n"
        "InternVLImageProcessor()"
    ),
    "package": (
        "import transformers_internvl\n"
        "from transformers.models.auto.configuration_auto import CONFIG_MAPPING\n"
        "from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING as M\n"
        "assert CONFIG_MAPPING['internvl_chat'] is transformers_internvl.InternVLConfig\n"
        "assert transformers_internvl.InternVLConfig in M\n"
    ),
    "registered": (
        "import transformers_internvl\n"
        "from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor\n"
        "from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING as M\n"
        "from transformers.models.auto.processing_auto import PROCESSOR_MAPPING as P\n"
        "from transformers_internvl.modeling.modeling_internvl import InternVLForConditionalGeneration as C\n"
        "from transformers_internvl.processing.processing_internvl import InternVLChatProcessor as Q\n"
        "assert M[transformers_internvl.InternVLConfig] is C\n"
        "assert C in M.values() and P[transformers_internvl.InternVLConfig] is Q\n"
        "assert transformers_internvl.InternVLForConditionalGeneration is C\n"
    ),
}

# Runs the steps (JSON in argv[1]) in order, each in a namespace of its own, printing `sys.modules` after each.
_STEPS_SCRIPT = """
import json, sys
for name, code in json.loads(sys.argv[1]).items():
    exec(compile(code, name, "exec"), {})
    print(f"MODULES {name}=" + json.dumps(sorted(sys.modules)), flush=True)
"""


@pytest.fixture(scope="module")
def modules_after() -> tuple[dict[str, set[str]], str]:
    """`({step: sys.modules keys after it}, stderr)` for `IMPORT_STEPS`, run by one fresh interpreter (with this
    tree's `src` first); a step that fails leaves it and the later ones out (their tests show the stderr)."""
    result = subprocess.run(
        [sys.executable, "-c", _STEPS_SCRIPT, json.dumps(IMPORT_STEPS)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": SRC},
    )
    stdout, stderr = result.stdout, result.stderr
    modules = {}
    for line in stdout.splitlines():
        if line.startswith("MODULES "):
            name, _, listed = line[len("MODULES ") :].partition("=")
            modules[name] = set(json.loads(listed))
    return modules, stderr


def _modules_after_step(modules_after, name: str) -> set[str]:
    modules, stderr = modules_after
    assert name in modules, stderr
    return modules[name]


def test_tiling_import_does_not_import_modeling_code(modules_after):
    modules = _modules_after_step(modules_after, "tiling")
    assert "transformers_internvl.processing.tiling" in modules
    assert not modules.intersection(MODEL_ONLY_MODULES)


def test_processors_alone_do_not_import_modeling_code(modules_after):
    modules = _modules_after_step(modules_after, "processors")
    assert "transformers_internvl.processing.processing_internvl" in modules
    assert not modules.intersection(MODEL_ONLY_MODULES)


def test_package_import_registers_without_importing_models(modules_after):
    modules = _modules_after_step(modules_after, "package")
    assert "transformers_internvl.registration" in modules
    assert not modules.intersection(MODEL_ONLY_MODULES)


def test_registered_model_resolves_to_the_class_on_first_use(modules_after):
    modules = _modules_after_step(modules_after, "registered")
    assert "transformers_internvl.modeling.modeling_internvl" in modules


def test_tiles_command_imports_neither_torch_nor_modeling(tmp_path):
    image = tmp_path / "wide.png"
    Image.new("RGB", (900, 300), "white").save(image)
    # What the `transformers-internvl` console-script wrapper does: argv[0] is the script, then `main()`.
    modules = _modules_after(
        "import sys\n"
        "sys.argv = ['transformers-internvl', 'tiles', sys.argv[1], '--json']\n"
        "from transformers_internvl.cli import main\n"
        "assert main() == 0",
        str(image),
    )
    assert "transformers_internvl.processing.tiling" in modules
    assert not {m for m in modules if m.startswith("transformers_internvl.modeling")}
    assert "torch" not in modules
    assert "transformers" not in modules


def test_lazy_attribute_errors_name_the_attribute():
    import pytest

    import transformers_internvl

    with pytest.raises(AttributeError, match="no_such_name"):
        transformers_internvl.no_such_name  # noqa: B018
    assert "InternVLForConditionalGeneration" in dir(transformers_internvl)


def test_lazy_value_dict_resolves_on_every_read_path():
    from transformers_internvl._lazy_registry import LazyValue, LazyValueDict

    calls = []

    def factory():
        calls.append(1)
        return "value"

    table = LazyValueDict()
    table["key"] = LazyValue(factory, "test")
    assert "key" in table and not calls
    assert dict(table) == {"key": "value"}
    assert table.get("key") == "value" and table["key"] == "value"
    assert table.values() == ["value"] and table.items() == [("key", "value")]
    assert calls == [1]  # resolved once, then stored
    assert table.get("missing", 3) == 3


def test_bench_command_hands_every_argument_to_the_benchmark_parser(capsys):
    import pytest

    from transformers_internvl.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "transformers-internvl bench" in out and "--against" in out and "--shape" in out


def test_parser_filter_and_light_reasoning_modules_import_neither_torch_nor_transformers():
    # As the console script (a plain `import transformers_internvl` registers with transformers).
    modules = _modules_after(
        "import sys\n"
        "sys.argv = ['transformers-internvl', 'filter', '--help']\n"
        "from transformers_internvl.cli import build_parser\n"
        "from transformers_internvl.reasoning.answers import parse_boxed_answer\n"
        "from transformers_internvl.reasoning.prompts import build_cot_prompt\n"
        "from transformers_internvl.reasoning.repetition import repetition_ratio\n"
        "from transformers_internvl.training.filtering import repetition_reason\n"
        "build_parser()\n"
        "assert parse_boxed_answer(build_cot_prompt('q', ['x', 'y']) + ' \\\\boxed{B}') == 'B'\n"
        "assert repetition_ratio([1, 2] * 20, 10) == 2 / 31  # 31 10-grams, both distinct ones repeated\n"
        "assert repetition_reason({'conversations': [{'from': 'gpt', 'value': 'a b c'}]}) is None\n"
    )
    assert "transformers_internvl.reasoning.repetition" in modules
    assert "torch" not in modules
    assert "transformers" not in modules
