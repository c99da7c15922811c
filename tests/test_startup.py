"""Start-up cost: code paths that need no model import no modeling code (issue 13)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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


def _modules_after(code: str, *args: str) -> set[str]:
    """The `sys.modules` keys after running `code` in a fresh interpreter (with this tree's `src` first)."""
    script = f"{code}\nimport json, sys\nprint('MODULES=' + json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": SRC},
    )
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("MODULES="))
    return set(json.loads(line[len("MODULES=") :]))


def test_tiling_import_does_not_import_modeling_code():
    modules = _modules_after("import transformers_internvl.processing.tiling")
    assert "transformers_internvl.processing.tiling" in modules
    assert not modules.intersection(MODEL_ONLY_MODULES)


def test_processors_alone_do_not_import_modeling_code():
    modules = _modules_after(
        "from transformers_internvl.processing.processing_internvl import InternVLChatProcessor\n"
        "from transformers_internvl.processing.image_processing_internvl import InternVLImageProcessor\n"
        "InternVLImageProcessor()"
    )
    assert "transformers_internvl.processing.processing_internvl" in modules
    assert not modules.intersection(MODEL_ONLY_MODULES)


def test_package_import_registers_without_importing_models():
    modules = _modules_after(
        "import transformers_internvl\n"
        "from transformers.models.auto.configuration_auto import CONFIG_MAPPING\n"
        "from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING as M\n"
        "assert CONFIG_MAPPING['internvl_chat'] is transformers_internvl.InternVLConfig\n"
        "assert transformers_internvl.InternVLConfig in M\n"
    )
    assert "transformers_internvl.registration" in modules
    assert not modules.intersection(MODEL_ONLY_MODULES)


def test_registered_model_resolves_to_the_class_on_first_use():
    modules = _modules_after(
        "import transformers_internvl\n"
        "from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor\n"
        "from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING as M\n"
        "from transformers.models.auto.processing_auto import PROCESSOR_MAPPING as P\n"
        "from transformers_internvl.modeling.modeling_internvl import InternVLForConditionalGeneration as C\n"
        "from transformers_internvl.processing.processing_internvl import InternVLChatProcessor as Q\n"
        "assert M[transformers_internvl.InternVLConfig] is C\n"
        "assert C in M.values() and P[transformers_internvl.InternVLConfig] is Q\n"
        "assert transformers_internvl.InternVLForConditionalGeneration is C\n"
    )
    assert "transformers_internvl.modeling.modeling_internvl" in modules


def test_tiles_command_imports_no_modeling_code(tmp_path):
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
    # The grid maths lives in the image processor's module (issue 10: pixels -> logits in 4 files), which imports
    # torch and transformers; the model code stays out.
    assert not {m for m in modules if m.startswith("transformers_internvl.modeling")}


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
