"""`--to original` of `-hf` folders that carry no record of the original fields (made by transformers' own
conversion script, the `OpenGVLab/*-hf` repositories, or a model built with transformers' classes): the original
`template` (and `system_message`) is recognised from the folder's chat template, the tiling from its image processor
config; without a chat template a warning names the template chosen and `--template`, which overrides it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from transformers import AutoConfig, InternVLConfig

import transformers_internvl  # noqa: F401  (registers the classes)
from transformers_internvl.chat_templates import get_jinja_chat_template
from transformers_internvl.cli import main
from transformers_internvl.conversion.convert import ConversionError, convert_checkpoint
from transformers_internvl.conversion.original_layout import original_config_for

# The chat template of the -hf repositories converted by transformers' script (same behaviour, written here): every
# message as `<|im_start|>{role}\n{text}<|im_end|>\n`, images as `<image>\n`, no default system message.
HF_REPO_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}{{ '<image>\\n' }}{% elif c['type'] == "
    "'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _hf_config(model_type: str = "qwen2", record: dict | None = None) -> dict:
    text = AutoConfig.for_model(
        model_type, vocab_size=256, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    vision = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
              "image_size": [56, 56], "patch_size": [14, 14]}  # fmt: skip
    config = InternVLConfig(vision_config=vision, text_config=text, image_token_id=250).to_dict()
    if record is not None:
        config["internvl_chat_original"] = record
    return config


def _folder(tmp_path: Path, chat_template: str | None, where: str = "chat_template.jinja") -> Path:
    folder = tmp_path / "hf"
    folder.mkdir()
    if chat_template is not None and where == "chat_template.jinja":
        (folder / where).write_text(chat_template)
    elif chat_template is not None:
        (folder / where).write_text(json.dumps({"chat_template": chat_template}))
    return folder


@pytest.mark.parametrize("where", ["chat_template.jinja", "tokenizer_config.json", "chat_template.json"])
def test_chat_template_of_the_hf_repositories_is_internvl2_5(tmp_path, where):
    """No default system message in the folder's template: the original template keeps its own (no
    `system_message` field), as the InternVL2.5 / InternVL3 checkpoints that script converts."""
    config = original_config_for(_hf_config(), None, source=_folder(tmp_path, HF_REPO_TEMPLATE, where))
    assert config.template == "internvl2_5"
    assert "system_message" not in config.to_dict() or config.to_dict()["system_message"] is None


@pytest.mark.parametrize(
    ("template", "model_type", "architectures"),
    [
        ("Hermes-2", "llama", None),
        ("internlm2-chat", "llama", ["InternLM2ForCausalLM"]),
        ("phi3-chat", "phi3", None),
        ("internvl3_5_gpt_oss", "qwen2", None),
        ("internvl_zh", "llama", None),
        ("internvl2_5", "llama", ["InternLM2ForCausalLM"]),
    ],
)
def test_each_original_template_is_recognised(tmp_path, template, model_type, architectures):
    record = {"llm_architectures": architectures} if architectures else None
    folder = _folder(tmp_path, get_jinja_chat_template(template))
    assert original_config_for(_hf_config(model_type, record), None, source=folder).template == template


def test_custom_default_system_message_is_kept(tmp_path):
    folder = _folder(tmp_path, get_jinja_chat_template("internvl2_5", "You are a careful assistant."))
    config = original_config_for(_hf_config(), None, source=folder)
    assert (config.template, config.system_message) == ("internvl2_5", "You are a careful assistant.")


@pytest.mark.parametrize(
    ("model_type", "expected"), [("qwen2", "internvl2_5"), ("phi3", "phi3-chat"), ("llama", "internvl2_5")]
)
def test_without_a_chat_template_a_warning_names_the_choice_and_the_option(tmp_path, caplog, model_type, expected):
    logger = logging.getLogger("transformers_internvl")
    logger.addHandler(caplog.handler)
    try:
        config = original_config_for(_hf_config(model_type), None, source=_folder(tmp_path, None))
    finally:
        logger.removeHandler(caplog.handler)
    assert config.template == expected
    assert f"template {expected!r}" in caplog.text and "--template" in caplog.text


def test_unrecognised_chat_template_warns(tmp_path, caplog):
    logger = logging.getLogger("transformers_internvl")
    logger.addHandler(caplog.handler)
    try:
        folder = _folder(tmp_path, "{% for m in messages %}[{{ m['role'] }}]{% endfor %}")
        config = original_config_for(_hf_config(), None, source=folder)
    finally:
        logger.removeHandler(caplog.handler)
    assert config.template == "internvl2_5" and "no original template renders" in caplog.text


def test_tiling_comes_from_the_image_processor_config(tmp_path):
    folder = _folder(tmp_path, HF_REPO_TEMPLATE)
    (folder / "preprocessor_config.json").write_text(json.dumps({"crop_to_patches": False, "min_patches": 2,
                                                                 "max_patches": 6}))  # fmt: skip
    config = original_config_for(_hf_config(), None, source=folder)
    assert (config.dynamic_image_size, config.use_thumbnail) == (True, True)
    assert (config.min_dynamic_patch, config.max_dynamic_patch) == (2, 6)


def test_recorded_template_wins_over_the_chat_template_and_template_option_over_both(tmp_path):
    folder = _folder(tmp_path, HF_REPO_TEMPLATE)
    recorded = _hf_config(record={"template": "Hermes-2", "llm_architectures": ["Qwen2ForCausalLM"]})
    assert original_config_for(recorded, None, source=folder).template == "Hermes-2"
    assert original_config_for(recorded, None, source=folder, template="phi3-chat").template == "phi3-chat"
    assert original_config_for(_hf_config(), None, source=folder, template="Hermes-2").template == "Hermes-2"


def test_template_option_on_the_command_line(tmp_path, capsys):
    from test_conversion_tied_s8 import tied_hf_folder

    tied_hf_folder("qwen2", tmp_path / "hf")
    argv = ["convert", str(tmp_path / "hf"), str(tmp_path / "o"), "--to", "original", "--quiet"]
    assert main([*argv, "--template", "internvl_chat_v9"]) == 1
    error = capsys.readouterr().err
    assert "unknown template 'internvl_chat_v9'" in error and "Hermes-2" in error and not (tmp_path / "o").exists()
    assert main([*argv, "--template", "Hermes-2"]) == 0
    assert json.loads((tmp_path / "o" / "config.json").read_text())["template"] == "Hermes-2"
    with pytest.raises(ConversionError, match="template applies to --to original"):
        convert_checkpoint(tmp_path / "o", tmp_path / "h", to="hf", template="Hermes-2", progress=False)
