"""Token strings and conversation-template data of InternVL, and the text-level prompt pieces built from them.

This is the package's leaf module: it imports nothing of `transformers_internvl` (and no transformers at import time),
so processing, modeling, conversion and training all read the same strings from here.

* token strings (`<image>`, `<img>`, `<IMG_CONTEXT>`, ...) and `tokens_per_tile`, the one formula of tokens per tile
  (`DEFAULT_NUM_IMAGE_TOKEN`: 256 for 448 px tiles);
* `TEMPLATES`: the original conversation templates as data (internvl_chat/internvl/conversation.py), and
  `template_eos_token(name)`, the string the original `chat()` stops at;
* the one `<image>` expansion (`image_context_string`, `expand_image_placeholders`), the video frame lines and the
  multi-image prefix;
* `get_jinja_chat_template(name)`: the Jinja chat template that renders messages byte-identically to the original
  `Conversation.get_prompt()`; it serves `apply_chat_template` and `model.chat()` alike.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any

# Defaults of the original chat code; a processor reads the real strings from its tokenizer.
IMAGE_PLACEHOLDER = "<image>"
VIDEO_PLACEHOLDER = "<video>"
IMAGE_START_TOKEN = "<img>"
IMAGE_END_TOKEN = "</img>"
IMAGE_CONTEXT_TOKEN = "<IMG_CONTEXT>"


def tokens_per_tile(image_size: int, patch_size: int, downsample_ratio: float) -> int:
    """`<IMG_CONTEXT>` tokens (LLM positions) per tile: the `(image_size // patch_size) ** 2` ViT patches of a tile
    after pixel unshuffle by `downsample_ratio` (256 for 448 px tiles, 14 px patches, ratio 0.5).

    The original's `num_image_token = int((image_size // patch_size) ** 2 * (downsample_ratio ** 2))`, to the letter
    (`InternVLChatModel.__init__`, `internvl_chat/internvl/model/internvl_chat/modeling_internvl_chat.py`); the model
    config (`InternVLChatConfig.num_image_token`) and the processor both take it from here. Raises `TypeError` /
    `ValueError` naming the argument for a size not an int >= 1, a ratio not in (0, 1], or no token per tile.
    """
    checks = dict(image_size=image_size, patch_size=patch_size, downsample_ratio=downsample_ratio)
    for name, value in checks.items():
        ratio = name == "downsample_ratio"
        expected = "a number in (0, 1]" if ratio else "an int >= 1"
        if isinstance(value, bool) or not isinstance(value, numbers.Real if ratio else numbers.Integral):
            raise TypeError(f"`{name}` must be {expected}, got {type(value).__name__} ({value!r}).")
        if not (0 < value <= 1 if ratio else value >= 1):  # NaN compares False
            raise ValueError(f"`{name}` must be {expected}, got {value!r}.")
    tokens = int((image_size // patch_size) ** 2 * (downsample_ratio**2))
    if tokens < 1:
        raise ValueError(f"`image_size` {image_size} gives no token per tile (needs >= patch_size / downsample_ratio).")
    return tokens


DEFAULT_NUM_IMAGE_TOKEN = tokens_per_tile(448, 14, 0.5)

# Default system messages of the original templates.
INTERNVL2_5_SYSTEM_MESSAGE = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
)
INTERNVL3_5_GPT_OSS_SYSTEM_MESSAGE = (
    "You are InternVL, a large language model trained by Shanghai AI Laboratory.\nKnowledge cutoff: 2024-06\n"
    "Current date: 2025-08-06\n\nReasoning: low\n\n# Valid channels: final. Channel must be included for every message."
)
INTERNVL2_SYSTEM_MESSAGE = (
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
)


class SeparatorStyle(str, Enum):
    """How a template joins its turns (only the styles used by InternVL templates)."""

    MPT = "MPT"
    """`system_block + sep`, then `role + message + sep` per turn; an empty/None message gives `role` alone."""
    INTERNVL_ZH = "INTERNVL_ZH"
    """InternVL-Chat-V1-1: `system_message + sep2`, then `role + ": " + message` with `sep2`/`sep` alternating."""
    MPT_TWO = "MPT_TWO"
    """InternVL3.5 GPT-OSS: as MPT, but the last message, when it is a non-empty answer, ends with `sep2`."""


def _template(name, system_template, system_message, roles, sep_style, sep, sep2=None, stop_str=None):
    return {**locals(), "stop_token_ids": None}  # the fields of the original `Conversation`, in its order


# The original templates (internvl_chat/internvl/conversation.py). Hermes-2 and internlm2-chat render identically at
# inference (they differ only in training-time BOS handling). InternVL3.5 GPT-OSS
# (internvl_chat_gpt_oss/internvl/model/internvl_chat/conversation.py) is the harmony format: the prompt ends with
# `<|start|>assistant` and the model writes its channel itself, ending with `<|return|>` (the chat() eos).
_IM = ("<|im_start|>user\n", "<|im_start|>assistant\n")
TEMPLATES: dict[str, dict[str, Any]] = {
    template["name"]: template
    for template in (
        _template("internvl_zh", "", "", ("<human>", "<bot>"), SeparatorStyle.INTERNVL_ZH, "</s>", " "),
        _template(
            "Hermes-2",
            "<|im_start|>system\n{system_message}",
            INTERNVL2_SYSTEM_MESSAGE,
            _IM,
            SeparatorStyle.MPT,
            "<|im_end|>",
            stop_str="<|endoftext|>",
        ),
        _template(
            "internlm2-chat",
            "<|im_start|>system\n{system_message}",
            INTERNVL2_SYSTEM_MESSAGE,
            _IM,
            SeparatorStyle.MPT,
            "<|im_end|>",
        ),
        _template(
            "phi3-chat",
            "<|system|>\n{system_message}",
            INTERNVL2_SYSTEM_MESSAGE,
            ("<|user|>\n", "<|assistant|>\n"),
            SeparatorStyle.MPT,
            "<|end|>",
        ),
        _template(
            "internvl2_5",
            "<|im_start|>system\n{system_message}",
            INTERNVL2_5_SYSTEM_MESSAGE,
            _IM,
            SeparatorStyle.MPT,
            "<|im_end|>\n",
        ),
        _template(
            "internvl3_5_gpt_oss",
            "<|start|>system<|message|>{system_message}",
            INTERNVL3_5_GPT_OSS_SYSTEM_MESSAGE,
            ("<|start|>user<|message|>", "<|start|>assistant"),
            SeparatorStyle.MPT_TWO,
            "<|end|>",
            "<|return|>",
        ),
    )
}


def template_data(template: str | Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the data of template `template` (a name of `TEMPLATES`, or such a mapping itself).

    Raises:
        TypeError: `template` is neither a str nor a mapping.
        ValueError: unknown template name.
    """
    if isinstance(template, Mapping):
        return dict(template)
    if not isinstance(template, str):
        raise TypeError(f"`template` must be a template name (str), got {type(template).__name__}.")
    if template not in TEMPLATES:
        raise ValueError(f"Unknown conversation template {template!r}; known templates: {sorted(TEMPLATES)}.")
    return dict(TEMPLATES[template])


def register_template(data: Mapping[str, Any], override: bool = False) -> None:
    """Add (or with `override=True` replace) a template in `TEMPLATES`, which the processor, model loading and
    `chat()` all read. `modeling.conversation.register_conv_template` calls this for a `Conversation`.

    Raises:
        ValueError: the name is taken and `override` is False, or a field is missing.
    """
    missing = [field for field in TEMPLATES["internvl2_5"] if field not in data]
    if missing:
        raise ValueError(f"Template data lacks the field(s) {missing}.")
    if data["name"] in TEMPLATES and not override:
        raise ValueError(f"A conversation template named {data['name']!r} is already registered.")
    TEMPLATES[data["name"]] = dict(data)


def template_eos_token(template: str | Mapping[str, Any]) -> str:
    """The string whose token id the original chat()/batch_chat() pass as `eos_token_id`.

    `sep.strip()` (internvl_chat/internvl/model/internvl_chat/modeling_internvl_chat.py); for the MPT_TWO style of
    InternVL3.5 GPT-OSS, whose chat() uses `sep2.strip()` when `sep2` is set
    (internvl_chat_gpt_oss/internvl/model/internvl_chat/modeling_internvl_chat.py), `sep2.strip()` (`<|return|>`).
    """
    data = template_data(template)
    if SeparatorStyle(data["sep_style"]) == SeparatorStyle.MPT_TWO and data["sep2"] is not None:
        return data["sep2"].strip()
    return data["sep"].strip()


def _resolve_num_tiles_list(
    num_tiles_list: Sequence[int] | None, num_patches_list: Sequence[int] | None
) -> list[int] | None:
    """Accept the upstream name `num_patches_list` as an alias of `num_tiles_list`."""
    if num_patches_list is not None:
        if num_tiles_list is not None:
            raise ValueError("Pass either `num_tiles_list` or its alias `num_patches_list`, not both.")
        num_tiles_list = num_patches_list
    if num_tiles_list is None:
        return None
    if hasattr(num_tiles_list, "tolist"):
        num_tiles_list = num_tiles_list.tolist()
    num_tiles_list = [int(n) for n in num_tiles_list]
    if any(n < 0 for n in num_tiles_list):
        raise ValueError(f"`num_patches_list` (alias num_tiles_list) must hold tile counts >= 0, got {num_tiles_list}.")
    return num_tiles_list


def image_context_string(
    num_tiles: int,
    num_image_token: int = DEFAULT_NUM_IMAGE_TOKEN,
    image_start_token: str = IMAGE_START_TOKEN,
    image_end_token: str = IMAGE_END_TOKEN,
    image_context_token: str = IMAGE_CONTEXT_TOKEN,
) -> str:
    """`<img>` + `<IMG_CONTEXT>` x (num_image_token * num_tiles) + `</img>`: the text that stands for one image."""
    return image_start_token + image_context_token * (num_image_token * num_tiles) + image_end_token


def expand_image_placeholders(
    prompt: str,
    num_tiles_list: Sequence[int] | None = None,
    num_image_token: int = DEFAULT_NUM_IMAGE_TOKEN,
    image_start_token: str = IMAGE_START_TOKEN,
    image_end_token: str = IMAGE_END_TOKEN,
    image_context_token: str = IMAGE_CONTEXT_TOKEN,
    image_placeholder: str = IMAGE_PLACEHOLDER,
    strict: bool = False,
    *,
    num_patches_list: Sequence[int] | None = None,
) -> str:
    """Replace `<image>` placeholders by image token runs, as the original chat() does.

    For each `n` in `num_tiles_list`, in order, the FIRST remaining placeholder becomes
    `image_start_token + image_context_token * (num_image_token * n) + image_end_token`.

    Args:
        prompt: Text with literal placeholders.
        num_tiles_list: Tiles per image, in the order of the placeholders (alias `num_patches_list`).
        num_image_token: Tokens per tile (256 for 448 px tiles, 14 px patches, downsample ratio 0.5).
        strict: The original silently ignores extra tile counts and leaves extra placeholders in the text; with
            `strict=True` a count mismatch raises `ValueError` instead.

    Returns:
        The expanded prompt.
    """
    num_tiles_list = _resolve_num_tiles_list(num_tiles_list, num_patches_list) or []
    num_placeholders = prompt.count(image_placeholder)
    if num_placeholders != len(num_tiles_list):
        message = (
            f"The prompt has {num_placeholders} {image_placeholder} placeholder(s) but {len(num_tiles_list)} "
            f"image(s) were given (num_patches_list={num_tiles_list})."
        )
        if strict:
            raise ValueError(message)
        # Imported here: no transformers at import time (`processing.tiling` and the `tiles` CLI start without it).
        from transformers.utils import logging

        logging.get_logger(__name__).warning(
            message + " Unmatched placeholders stay as text; unmatched images get no tokens."
        )
    for num_tiles in num_tiles_list:
        image_tokens = image_context_string(
            num_tiles, num_image_token, image_start_token, image_end_token, image_context_token
        )
        prompt = prompt.replace(image_placeholder, image_tokens, 1)
    return prompt


DEFAULT_VIDEO_FRAME_TEMPLATE = "Frame-{i}: "


def video_frame_prompt(
    num_frames: int,
    frame_template: str = DEFAULT_VIDEO_FRAME_TEMPLATE,
    image_placeholder: str = IMAGE_PLACEHOLDER,
) -> str:
    """One line per frame, `Frame-1: <image>` ... `Frame-N: <image>`, joined by newlines (no trailing newline).

    This is what a `<video>` placeholder stands for: `"<video>\\n" + question` becomes the README prompt
    `Frame-1: <image>\\n...Frame-N: <image>\\n` + question (training replaces `<video>` the same way).
    `frame_template="Frame{i}: "` gives the style used before 2024-12-25 and by the MVBench evaluation.
    """
    if "{i}" not in frame_template:
        raise ValueError(f"`frame_template` must contain '{{i}}', got {frame_template!r}.")
    if num_frames < 1:
        raise ValueError(f"`num_frames` must be >= 1, got {num_frames}.")
    return "\n".join(frame_template.format(i=index + 1) + image_placeholder for index in range(num_frames))


def expand_video_placeholders(
    prompt: str,
    num_frames_list: Sequence[int],
    frame_template: str = DEFAULT_VIDEO_FRAME_TEMPLATE,
    video_placeholder: str = VIDEO_PLACEHOLDER,
    image_placeholder: str = IMAGE_PLACEHOLDER,
) -> str:
    """Replace each `<video>` placeholder, in order, by the frame lines of the next video (see `video_frame_prompt`).

    Raises `ValueError` when the number of placeholders differs from `len(num_frames_list)`.
    """
    num_placeholders = prompt.count(video_placeholder)
    if num_placeholders != len(num_frames_list):
        raise ValueError(
            f"The prompt has {num_placeholders} {video_placeholder} placeholder(s) but {len(num_frames_list)} "
            f"video(s) were given."
        )
    for num_frames in num_frames_list:
        prompt = prompt.replace(
            video_placeholder, video_frame_prompt(int(num_frames), frame_template, image_placeholder), 1
        )
    return prompt


def multi_image_prefix(num_images: int, image_placeholder: str = IMAGE_PLACEHOLDER) -> str:
    """Placeholders for a question with images but none written: `<image>\\n` for one image,
    `Image-1: <image>\\nImage-2: <image>\\n...` for several (the official multi-image examples)."""
    if num_images < 0:
        raise ValueError(f"`num_images` must be >= 0, got {num_images}.")
    if num_images == 1:
        return image_placeholder + "\n"
    return "".join(f"Image-{index + 1}: {image_placeholder}\n" for index in range(num_images))


# ---- Jinja chat template (for `apply_chat_template`) ------------------------------------------------------------------

# The body is shared by all templates; `get_jinja_chat_template` prepends the template's strings as `{% set %}` lines.
# All output goes through `{{ }}` so whitespace control never touches rendered text.
# Rendering rules (byte-identical to `Conversation.get_prompt()` for the same turns, in each separator style):
# * a leading system message replaces the default system message; the system block is always emitted, followed by
#   `system_sep` (MPT / MPT_TWO: `sep`; INTERNVL_ZH: `sep2`);
# * the k-th user/assistant turn (k from 0) is `role + role_suffix + content + separator`, the separator being
#   `even_sep` / `odd_sep` by the parity of k (equal except in INTERNVL_ZH), or `final_sep` (MPT_TWO: `sep2`) for a
#   last message that is an answer with no generation prompt after it; empty content gives `role + open_role_suffix`
#   alone (original quirk);
# * in a turn, media come first, in item order, then the text items concatenated: an image renders as
#   `<image>\n` when the conversation has exactly one image, else `Image-{k}: <image>\n` (k counts images over the
#   whole conversation); a video renders as `<video>\n`, which the processor replaces by its frames
#   (`Frame-1: <image>\n...Frame-N: <image>`), because the frame count is known only after sampling;
# * `add_generation_prompt` appends `assistant_role + open_role_suffix`;
# * `{% generation %}` marks each answer plus its separator without a trailing newline (what the original training
#   supervises), so `return_assistant_tokens_mask=True` works.
JINJA_CHAT_TEMPLATE_BODY = """
{%- set ns = namespace(system_message=default_system_message, num_images=0, image_index=0, content='') -%}
{%- set loop_messages = messages -%}
{%- if messages and messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set ns.system_message = messages[0]['content'] -%}
    {%- else -%}
        {%- set ns.system_message = '' -%}
        {%- for item in messages[0]['content'] -%}
            {%- if item['type'] == 'text' -%}
                {%- set ns.system_message = ns.system_message + item['text'] -%}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if message['content'] is not string and message['content'] is not none -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {%- set ns.num_images = ns.num_images + 1 -%}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
{%- endfor -%}
{{- system_prefix + ns.system_message + system_suffix + system_sep -}}
{%- for message in loop_messages -%}
    {%- if message['role'] == 'user' -%}
        {%- set role = user_role -%}
    {%- elif message['role'] == 'assistant' -%}
        {%- set role = assistant_role -%}
    {%- else -%}
        {{- raise_exception('Only a leading system message and user/assistant messages are supported, got '
                            + message['role']) -}}
    {%- endif -%}
    {%- if message['content'] is string -%}
        {%- set ns.content = message['content'] -%}
    {%- elif message['content'] is none -%}
        {%- set ns.content = '' -%}
    {%- else -%}
        {%- set ns.content = '' -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {%- set ns.image_index = ns.image_index + 1 -%}
                {%- if ns.num_images == 1 -%}
                    {%- set ns.content = ns.content + image_placeholder + '\\n' -%}
                {%- else -%}
                    {%- set image_label = 'Image-' + ns.image_index|string + ': ' -%}
                    {%- set ns.content = ns.content + image_label + image_placeholder + '\\n' -%}
                {%- endif -%}
            {%- elif item['type'] == 'video' -%}
                {%- set ns.content = ns.content + video_placeholder + '\\n' -%}
            {%- endif -%}
        {%- endfor -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'text' -%}
                {%- set ns.content = ns.content + item['text'] -%}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {%- if final_sep is not none and loop.last and not add_generation_prompt and message['role'] == 'assistant' -%}
        {%- set separator = final_sep -%}
    {%- elif loop.index0 % 2 == 0 -%}
        {%- set separator = even_sep -%}
    {%- else -%}
        {%- set separator = odd_sep -%}
    {%- endif -%}
    {%- set separator_trained = separator.rstrip('\\n') -%}
    {%- if ns.content and message['role'] == 'assistant' -%}
        {{- role + role_suffix -}}
        {%- generation -%}
            {{- ns.content + separator_trained -}}
        {%- endgeneration -%}
        {{- separator[separator_trained|length:] -}}
    {%- elif ns.content -%}
        {{- role + role_suffix + ns.content + separator -}}
    {%- else -%}
        {{- role + open_role_suffix -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- assistant_role + open_role_suffix -}}
{%- endif -%}
"""


def _jinja_string_literal(value: str) -> str:
    """A Jinja string literal for `value` (JSON escapes are valid Jinja escapes; non-ASCII is kept verbatim)."""
    return json.dumps(value, ensure_ascii=False)


def get_jinja_chat_template(
    template: str | Mapping[str, Any],
    system_message: str | None = None,
    image_placeholder: str = IMAGE_PLACEHOLDER,
    video_placeholder: str = VIDEO_PLACEHOLDER,
) -> str:
    """The Jinja chat template that renders messages exactly as the conversation template `template` does.

    Args:
        template: Template name of `TEMPLATES`, or a mapping with the same fields (any `SeparatorStyle`).
        system_message: Default system message baked into the template (the template's own when `None`; the
            original model uses `config.system_message` when present).
        image_placeholder, video_placeholder: Placeholders the processor expands.

    Raises:
        ValueError: the system template of an MPT / MPT_TWO template lacks exactly one `{system_message}` field.
    """
    data = template_data(template)
    style = SeparatorStyle(data["sep_style"])
    if style == SeparatorStyle.INTERNVL_ZH:
        # `system_message + sep2`, then `role + ": " + message` (the system template is not used by this style).
        system_prefix = system_suffix = ""
        system_sep, even_sep, odd_sep, final_sep = data["sep2"], data["sep2"], data["sep"], None
        role_suffix, open_role_suffix = ": ", ":"
    else:
        if "{system_message}" not in data["system_template"]:
            # `system_template.format(system_message=...)` in the original gives the template itself (the message
            # is not used): render it as a fixed prefix with an empty message.
            try:
                fixed = data["system_template"].format(system_message="")
            except (IndexError, KeyError, ValueError) as error:
                raise ValueError(
                    f"The system template of {data['name']!r} cannot be formatted: {data['system_template']!r} "
                    f"({type(error).__name__}: {error})."
                ) from None
            data = {**data, "system_template": fixed.replace("{", "{{").replace("}", "}}") + "{system_message}"}
            system_message = ""
        if data["system_template"].count("{system_message}") != 1:
            raise ValueError(
                f"The system template of {data['name']!r} must contain exactly one '{{system_message}}', got "
                f"{data['system_template']!r}."
            )
        system_prefix, system_suffix = data["system_template"].split("{system_message}")
        system_prefix = system_prefix.replace("{{", "{").replace("}}", "}")
        system_suffix = system_suffix.replace("{{", "{").replace("}}", "}")
        system_sep = even_sep = odd_sep = data["sep"]
        final_sep = data["sep2"] if style == SeparatorStyle.MPT_TWO else None
        role_suffix = open_role_suffix = ""
    variables = {
        "system_prefix": system_prefix,
        "system_suffix": system_suffix,
        "default_system_message": data["system_message"] if system_message is None else system_message,
        "user_role": data["roles"][0],
        "assistant_role": data["roles"][1],
        "role_suffix": role_suffix,
        "open_role_suffix": open_role_suffix,
        "system_sep": system_sep,
        "even_sep": even_sep,
        "odd_sep": odd_sep,
        "final_sep": final_sep,
        "image_placeholder": image_placeholder,
        "video_placeholder": video_placeholder,
    }
    header = "".join(
        f"{{%- set {name} = {'none' if value is None else _jinja_string_literal(value)} -%}}\n"
        for name, value in variables.items()
    )
    name = data["name"]
    header = f"{{#- InternVL conversation template {name!r} -#}}\n" + header
    return header + JINJA_CHAT_TEMPLATE_BODY.lstrip("\n")


# The chat template of InternVL 2.5 checkpoints (template "internvl2_5").
CHAT_TEMPLATE = get_jinja_chat_template("internvl2_5")
