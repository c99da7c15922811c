"""The original `template` / `system_message` / tiling fields of a `-hf` folder that carries no record of them.

A `-hf` folder made by `--to hf` records the original config's fields (`hf_layout.ORIGINAL_RECORD_KEY`). One made
otherwise (transformers' own conversion script, the `OpenGVLab/*-hf` repositories, a model built with transformers'
classes) has only its chat template and image processor config. The conversation template is recognised by
rendering one probe conversation with an explicit system message through the folder's chat template and through
each template of `chat_templates.TEMPLATES`: the template whose text is identical is the one. (The chat template of
transformers' conversion script, `<|im_start|>{role}\\n...<|im_end|>\\n`, renders as `internvl2_5`, the template of
the InternVL2.5 / InternVL3 checkpoints it converts; that script adds no system message by default, the original
template its own.) `Hermes-2` and `internlm2-chat` render alike: InternLM2 gets `internlm2-chat`, others
`Hermes-2`. Without a chat template, or when none matches, the LLM architecture decides (GPT-OSS:
`internvl3_5_gpt_oss`, Phi-3: `phi3-chat`, else `internvl2_5`) and a warning names the choice and `--template`.
Tiling: transformers' `InternVLProcessor` crops images into tiles by default (`crop_to_patches: True` in its
`images_kwargs`) with the image processor's `min_patches` / `max_patches`, which become `min_dynamic_patch` /
`max_dynamic_patch` (`dynamic_image_size` and `use_thumbnail` true, as the GotOcr2 processor always adds one).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers.utils import logging

from ..chat_templates import TEMPLATES, get_jinja_chat_template

logger = logging.get_logger(__name__)

_PROBE = [
    {"role": "user", "content": [{"type": "text", "text": "U1"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "A1"}]},
    {"role": "user", "content": [{"type": "text", "text": "U2"}]},
]
_SYSTEM = "S0"
_MARKER = "\x00SYSTEM\x00"
# Tie-break between templates that render alike (first wins), and the architecture fallback.
_PREFERENCE = ("internvl2_5", "Hermes-2", "internlm2-chat", "phi3-chat", "internvl3_5_gpt_oss", "internvl_zh")
_BY_ARCHITECTURE = {"GptOssForCausalLM": "internvl3_5_gpt_oss", "Phi3ForCausalLM": "phi3-chat"}


def source_chat_template(source: Path) -> str | None:
    """The chat template of a `-hf` folder: `chat_template.jinja`, `chat_template.json` or the tokenizer config's
    (its `default` entry when it is a list of named templates); `None` when there is none."""
    if (source / "chat_template.jinja").is_file():
        return (source / "chat_template.jinja").read_text(encoding="utf-8")
    for name in ("chat_template.json", "tokenizer_config.json"):
        if not (source / name).is_file():
            continue
        try:
            template = json.loads((source / name).read_text(encoding="utf-8")).get("chat_template")
        except (ValueError, AttributeError):
            continue
        if isinstance(template, list):
            named = {entry.get("name"): entry.get("template") for entry in template if isinstance(entry, dict)}
            template = named.get("default")
        if isinstance(template, str):
            return template
    return None


def _render(chat_template: str, messages: list[dict[str, Any]]) -> str | None:
    from jinja2.exceptions import TemplateError
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        rendered, _ = render_jinja_template(
            [messages], chat_template=chat_template, add_generation_prompt=True, bos_token="", eos_token=""
        )
    except (TemplateError, TypeError, KeyError, ValueError, AttributeError):
        return None
    return rendered[0]


def _system(message: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": [{"type": "text", "text": message}]}, *_PROBE]


def _match_template(chat_template: str, internlm2: bool) -> tuple[str, str | None] | None:
    """`(template name, system message or None for the template's own)` whose rendering equals `chat_template`'s."""
    with_system = _render(chat_template, _system(_SYSTEM))
    if with_system is None:
        return None
    matches = [name for name in TEMPLATES if _render(get_jinja_chat_template(name), _system(_SYSTEM)) == with_system]
    if not matches:
        return None
    if internlm2 and "internlm2-chat" in matches:
        name = "internlm2-chat"
    else:
        name = min(matches, key=lambda m: _PREFERENCE.index(m) if m in _PREFERENCE else len(_PREFERENCE))
    # The default system message: the template's own, or the folder's when it renders one of its own.
    default = _render(chat_template, _PROBE)
    if default is None or default == _render(get_jinja_chat_template(name), _PROBE):
        return name, None
    prefix, _, suffix = (_render(get_jinja_chat_template(name), _system(_MARKER)) or "").partition(_MARKER)
    if suffix and default.startswith(prefix) and default.endswith(suffix):
        message = default[len(prefix) : len(default) - len(suffix)]
        if _render(get_jinja_chat_template(name), _system(message)) == default:
            return name, message
    logger.info(f"the chat template renders no system message by default; the original template {name!r} uses its "
                "own (what the original model was trained with)")  # fmt: skip
    return name, None


def infer_original_fields(
    source: Path, hf: dict[str, Any], architecture: str | None, template: str | None = None
) -> dict[str, Any]:
    """Original config fields of a `-hf` folder whose config records none (see the module docstring): `template`,
    `system_message` when the folder's chat template has another default, and the tiling fields. `template`: the
    user's choice (`--template`), used as given. Warns when the template could not be recognised."""
    fields: dict[str, Any] = {}
    processor = {}
    if (source / "preprocessor_config.json").is_file():
        try:
            processor = json.loads((source / "preprocessor_config.json").read_text(encoding="utf-8"))
        except ValueError:
            processor = {}
    if isinstance(processor, dict):
        for name, field in (("min_patches", "min_dynamic_patch"), ("max_patches", "max_dynamic_patch")):
            if isinstance(processor.get(name), int):
                fields[field] = processor[name]
    if template is not None:
        return {**fields, "template": template}
    chat_template = source_chat_template(source)
    matched = _match_template(chat_template, architecture == "InternLM2ForCausalLM") if chat_template else None
    if matched:
        fields["template"] = matched[0]
        if matched[1] is not None:
            fields["system_message"] = matched[1]
        logger.info(f"{source}: the chat template is the original template {matched[0]!r}")
        return fields
    fields["template"] = _BY_ARCHITECTURE.get(architecture or "", "internvl2_5")
    reason = (
        "has no chat template" if chat_template is None else "has a chat template that no original template renders"
    )
    logger.warning(
        f"{source} records no original template and {reason}; the original config.json gets template "
        f"{fields['template']!r} (the choice for LLM architecture {architecture}). Pass --template NAME (one of "
        f"{', '.join(sorted(TEMPLATES))}) to choose another."
    )
    return fields


__all__ = ["infer_original_fields", "source_chat_template"]
