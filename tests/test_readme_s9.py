"""README checks a newcomer relies on (session 9): code fences close where they should, and the fine-tuning snippet
runs as written on a tiny original-layout checkpoint."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^(\s*)(`{3,})(.*)$")


def _fences(text: str) -> list[tuple[int, str]]:
    """(line number, text after the backticks) of every fence line, in order."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        match = FENCE.match(line)
        if match:
            found.append((number, match.group(3)))
    return found


def test_every_code_fence_of_the_readme_is_closed_by_a_bare_fence():
    # CommonMark: a closing fence may be followed by spaces only; "``` text" does not close the block, and the rest of
    # the README until the next fence renders as code (as it did after the `--template Hermes-2` example).
    fences = _fences(README.read_text(encoding="utf-8"))
    assert len(fences) % 2 == 0, f"odd number of fence lines: {fences}"
    for (open_line, info), (close_line, rest) in zip(fences[0::2], fences[1::2]):
        assert rest.strip() == "", f"README.md:{close_line}: text after the closing fence of line {open_line}: {rest!r}"
        assert "`" not in info, f"README.md:{open_line}: opening fence with backticks in its info string: {info!r}"


def test_fence_check_catches_text_after_a_closing_fence():
    fences = _fences("```bash\ncmd\n``` `--to original` gives\n")
    assert fences == [(1, "bash"), (3, " `--to original` gives")]


def _finetune_snippet() -> str:
    text = README.read_text(encoding="utf-8")
    anchor = text.index("from transformers_internvl.training.trainer import InternVLTrainer")
    start = text.rindex("```python\n", 0, anchor) + len("```python\n")
    return text[start : text.index("\n```", anchor)]


@pytest.mark.slow
def test_readme_fine_tuning_snippet_trains_on_a_tiny_original_checkpoint(tmp_path, monkeypatch, qwen2_model_dir):
    from PIL import Image

    snippet = _finetune_snippet()
    hub_line = 'path = "OpenGVLab/InternVL2_5-1B"'
    assert hub_line in snippet and "max_steps=10" in snippet
    model_dir = tmp_path / "tiny-internvl"
    shutil.copytree(qwen2_model_dir, model_dir)
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (500, 300), (200, 30, 90)).save(images / "cat.png")
    rows = [
        {
            "image": "cat.png",
            "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "Red."}],
        },
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]},
    ]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    meta = {"demo": {"root": str(images), "annotation": str(tmp_path / "train.jsonl"), "repeat_time": 1}}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    monkeypatch.chdir(tmp_path)
    code = snippet.replace(hub_line, f"path = {str(model_dir)!r}").replace("max_steps=10", "max_steps=1")
    code = code.replace('TrainingArguments("out", ', 'TrainingArguments("out", report_to=[], use_cpu=True, ')
    namespace: dict = {}
    exec(compile(code, "README.md (fine-tuning snippet)", "exec"), namespace)
    assert len(namespace["dataset"]) == 2 and len(namespace["dataset"].skipped) == 0
    trainable = [name for name, parameter in namespace["model"].named_parameters() if parameter.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)


@pytest.mark.parametrize("with_tokenizer_option", [False, True])
def test_finetune_example_names_the_missing_tokenizer_files(tmp_path, capsys, with_tokenizer_option):
    # The README's example passes --tokenizer; forgetting it on the fixture model (weights and config only) gave
    # transformers' "Couldn't instantiate the backend tokenizer" with no file or option named.
    import sys

    sys.path.insert(0, str(README.parent / "examples"))
    try:
        import finetune_lora
    finally:
        sys.path.remove(str(README.parent / "examples"))
    model = README.parent / "tests" / "fixtures" / "models" / "tiny-qwen2"
    argv = ["--model", str(model), "--output-dir", str(tmp_path / "out")]
    if with_tokenizer_option:
        argv += ["--tokenizer", str(model)]
    with pytest.raises(SystemExit) as stop:
        finetune_lora.parse_args(argv)
    assert stop.value.code == 2
    message = capsys.readouterr().err
    option = "--tokenizer" if with_tokenizer_option else "--model"
    assert f"{option} {model} holds no tokenizer vocabulary" in message and "tokenizer.json" in message
    good = README.parent / "tests" / "fixtures" / "tokenizers" / "qwen2-tiny"
    args = finetune_lora.parse_args(["--model", str(model), "--tokenizer", str(good), "--output-dir", str(tmp_path)])
    assert args.tokenizer == str(good)
