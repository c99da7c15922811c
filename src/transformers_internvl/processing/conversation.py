"""Conversation templates of the original InternVL chat code, and the prompt building of its `chat()` / `batch_chat()`.

The templates are data (system block, default system message, roles, separators, stop strings), rendered exactly as
the original `internvl/conversation.py` renders them. The pure functions below reproduce, byte for byte, the prompt
strings that the original `InternVLChatModel.chat()` and `batch_chat()` hand to the tokenizer:

* `prepare_chat_question`: the automatic `"<image>\\n"` prefix (only with pixel values, no history, no placeholder);
* `build_chat_prompt` / `build_batch_chat_prompts`: history first, then the question and the open assistant turn;
* `expand_image_placeholders`: for each image in order, the FIRST remaining `<image>` becomes
  `<img>` + `<IMG_CONTEXT>` x (num_image_token * num_tiles) + `</img>`;
* `postprocess_response`: the answer is cut at the template's eos string and stripped.

Quirks kept on purpose (they change prompts, so they are part of the behaviour): the system block is emitted even when
the system message is empty, and a message that is empty (or `None`) renders as its role only, without separator.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from enum import Enum

from transformers.utils import logging

logger = logging.get_logger(__name__)

# Defaults of the original chat code; a processor reads the real strings from its tokenizer.
IMAGE_PLACEHOLDER = "<image>"
VIDEO_PLACEHOLDER = "<video>"
IMAGE_START_TOKEN = "<img>"
IMAGE_END_TOKEN = "</img>"
IMAGE_CONTEXT_TOKEN = "<IMG_CONTEXT>"
DEFAULT_NUM_IMAGE_TOKEN = 256

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


@dataclasses.dataclass
class Conversation:
    """One conversation template plus the messages appended to it (a fresh copy comes from `get_conv_template`).

    Attributes:
        name: Template name, as in the model config's `template` field.
        system_template: System block with a `{system_message}` field.
        system_message: The system message (the template's default until changed).
        roles: `(user_role, assistant_role)` strings, emitted verbatim before each message.
        sep_style: How turns are joined.
        sep: Separator after each non-empty message; `sep.strip()` is the eos string chat() generates up to.
        sep2: Second separator (INTERNVL_ZH style only).
        stop_str: Extra stop string(s) of the template (not used by the original chat()).
        stop_token_ids: Extra stop token ids (none for InternVL templates).
        messages: `[role, message]` pairs; `message` None means "open turn".
    """

    name: str
    system_template: str = "{system_message}"
    system_message: str = ""
    roles: tuple[str, str] = ("USER", "ASSISTANT")
    sep_style: SeparatorStyle = SeparatorStyle.MPT
    sep: str = "\n"
    sep2: str | None = None
    stop_str: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    messages: list[list[str | None]] = dataclasses.field(default_factory=list)

    @property
    def eos_token(self) -> str:
        """The string whose token id the original chat()/batch_chat() pass as `eos_token_id`.

        `sep.strip()` (internvl_chat/internvl/model/internvl_chat/modeling_internvl_chat.py); for the MPT_TWO style of
        InternVL3.5 GPT-OSS, whose chat() uses `sep2.strip()` when `sep2` is set
        (internvl_chat_gpt_oss/internvl/model/internvl_chat/modeling_internvl_chat.py), `sep2.strip()` (`<|return|>`).
        """
        if self.sep_style == SeparatorStyle.MPT_TWO and self.sep2 is not None:
            return self.sep2.strip()
        return self.sep.strip()

    @property
    def system_prompt(self) -> str:
        """The system block with the current system message filled in."""
        return self.system_template.format(system_message=self.system_message)

    def append_message(self, role: str, message: str | None) -> None:
        """Append a turn; `message=None` leaves the turn open (the generation prompt)."""
        self.messages.append([role, message])

    def get_prompt(self) -> str:
        """Render the system block and all messages exactly as the original `Conversation.get_prompt()`."""
        if self.sep_style == SeparatorStyle.MPT:
            prompt = self.system_prompt + self.sep
            for role, message in self.messages:
                # An empty string is falsy in the original too: only the role is written, without separator.
                prompt += role + message + self.sep if message else role
            return prompt
        if self.sep_style == SeparatorStyle.MPT_TWO:
            prompt = self.system_prompt + self.sep
            last = len(self.messages) - 1
            for index, (role, message) in enumerate(self.messages):
                if message:
                    final_answer = index == last and role == self.roles[1]
                    prompt += role + message + (self.sep2 if final_answer else self.sep)
                else:
                    prompt += role
            return prompt
        if self.sep_style == SeparatorStyle.INTERNVL_ZH:
            separators = (self.sep2, self.sep)
            prompt = self.system_message + separators[0]
            for index, (role, message) in enumerate(self.messages):
                prompt += role + ": " + message + separators[index % 2] if message else role + ":"
            return prompt
        raise ValueError(f"Unsupported separator style {self.sep_style!r} in template {self.name!r}.")

    def copy(self) -> Conversation:
        """A deep-enough copy: the message list is new, so appending to the copy leaves this one unchanged."""
        return dataclasses.replace(
            self,
            messages=[list(turn) for turn in self.messages],
            stop_str=list(self.stop_str) if isinstance(self.stop_str, list) else self.stop_str,
            stop_token_ids=list(self.stop_token_ids) if self.stop_token_ids is not None else None,
        )

    def to_dict(self) -> dict:
        """The template's fields (without messages) as plain JSON-able data."""
        return {
            "name": self.name,
            "system_template": self.system_template,
            "system_message": self.system_message,
            "roles": list(self.roles),
            "sep_style": self.sep_style.value,
            "sep": self.sep,
            "sep2": self.sep2,
            "stop_str": self.stop_str,
            "stop_token_ids": self.stop_token_ids,
        }


CONV_TEMPLATES: dict[str, Conversation] = {}


def register_conv_template(template: Conversation, override: bool = False) -> None:
    """Add a template to the registry used by `get_conv_template` (`override=True` replaces an existing name)."""
    if template.name in CONV_TEMPLATES and not override:
        raise ValueError(f"A conversation template named {template.name!r} is already registered.")
    CONV_TEMPLATES[template.name] = template


def get_conv_template(name: str) -> Conversation:
    """A fresh copy (no messages) of the registered template `name`."""
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a template name (str), got {type(name).__name__}.")
    if name not in CONV_TEMPLATES:
        raise ValueError(f"Unknown conversation template {name!r}; known templates: {sorted(CONV_TEMPLATES)}.")
    return CONV_TEMPLATES[name].copy()


# The original templates (internvl_chat/internvl/conversation.py).
register_conv_template(
    Conversation(
        name="internvl_zh",
        system_template="",
        roles=("<human>", "<bot>"),
        sep_style=SeparatorStyle.INTERNVL_ZH,
        sep="</s>",
        sep2=" ",
    )
)
# Hermes-2 and internlm2-chat render identically at inference (they differ only in training-time BOS handling).
register_conv_template(
    Conversation(
        name="Hermes-2",
        system_template="<|im_start|>system\n{system_message}",
        system_message=INTERNVL2_SYSTEM_MESSAGE,
        roles=("<|im_start|>user\n", "<|im_start|>assistant\n"),
        sep_style=SeparatorStyle.MPT,
        sep="<|im_end|>",
        stop_str="<|endoftext|>",
    )
)
register_conv_template(
    Conversation(
        name="internlm2-chat",
        system_template="<|im_start|>system\n{system_message}",
        system_message=INTERNVL2_SYSTEM_MESSAGE,
        roles=("<|im_start|>user\n", "<|im_start|>assistant\n"),
        sep_style=SeparatorStyle.MPT,
        sep="<|im_end|>",
    )
)
register_conv_template(
    Conversation(
        name="phi3-chat",
        system_template="<|system|>\n{system_message}",
        system_message=INTERNVL2_SYSTEM_MESSAGE,
        roles=("<|user|>\n", "<|assistant|>\n"),
        sep_style=SeparatorStyle.MPT,
        sep="<|end|>",
    )
)
register_conv_template(
    Conversation(
        name="internvl2_5",
        system_template="<|im_start|>system\n{system_message}",
        system_message=INTERNVL2_5_SYSTEM_MESSAGE,
        roles=("<|im_start|>user\n", "<|im_start|>assistant\n"),
        sep_style=SeparatorStyle.MPT,
        sep="<|im_end|>\n",
    )
)
# InternVL3.5 GPT-OSS (internvl_chat_gpt_oss/internvl/model/internvl_chat/conversation.py of OpenGVLab/InternVL): the
# harmony format; the prompt ends with `<|start|>assistant` and the model writes its channel (`<|channel|>final
# <|message|>...`) itself, ending with `<|return|>` (the chat() eos).
register_conv_template(
    Conversation(
        name="internvl3_5_gpt_oss",
        system_template="<|start|>system<|message|>{system_message}",
        system_message=INTERNVL3_5_GPT_OSS_SYSTEM_MESSAGE,
        roles=("<|start|>user<|message|>", "<|start|>assistant"),
        sep_style=SeparatorStyle.MPT_TWO,
        sep="<|end|>",
        sep2="<|return|>",
    )
)


def _resolve_template(template: str | Conversation) -> Conversation:
    if isinstance(template, Conversation):
        return template.copy()
    return get_conv_template(template)


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
        raise ValueError(f"`num_tiles_list` must hold non-negative tile counts, got {num_tiles_list}.")
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
            f"image(s) were given (num_tiles_list={num_tiles_list})."
        )
        if strict:
            raise ValueError(message)
        logger.warning(message + " Unmatched placeholders stay as text; unmatched images get no tokens.")
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


def prepare_chat_question(
    question: str,
    history: Sequence[Sequence[str]] | None = None,
    pixel_values_passed: bool = False,
    image_placeholder: str = IMAGE_PLACEHOLDER,
) -> str:
    """The question as the original chat() uses it (and stores it in the history).

    `"<image>\\n"` is prepended only when pixel values are given, `history is None` (an empty list does not count)
    and the question has no placeholder.
    """
    if not isinstance(question, str):
        raise TypeError(f"`question` must be a str, got {type(question).__name__}.")
    if history is None and pixel_values_passed and image_placeholder not in question:
        question = image_placeholder + "\n" + question
    return question


def build_chat_prompt(
    template: str | Conversation,
    question: str,
    history: Sequence[Sequence[str]] | None = None,
    system_message: str | None = None,
    num_tiles_list: Sequence[int] | None = None,
    pixel_values_passed: bool | None = None,
    num_image_token: int = DEFAULT_NUM_IMAGE_TOKEN,
    image_start_token: str = IMAGE_START_TOKEN,
    image_end_token: str = IMAGE_END_TOKEN,
    image_context_token: str = IMAGE_CONTEXT_TOKEN,
    expand_images: bool = True,
    *,
    num_patches_list: Sequence[int] | None = None,
) -> str:
    """The prompt string the original `InternVLChatModel.chat()` tokenizes.

    Args:
        template: Template name (the model config's `template`) or a `Conversation`.
        question: The new user message (may contain `<image>` placeholders).
        history: Earlier `(question, answer)` pairs, rendered first; `None` allows the automatic image prefix.
        system_message: Replaces the template's default system message (the original model uses
            `config.system_message` when the config has one).
        num_tiles_list: Tiles per image in placeholder order (alias `num_patches_list`). The original defaults it to
            `[pixel_values.shape[0]]` when pixel values are given, `[]` otherwise; the caller passes that.
        pixel_values_passed: Whether pixel values are given; `None` means `sum(num_tiles_list) > 0`.
        num_image_token: Tokens per tile.
        expand_images: `False` returns the prompt with literal `<image>` placeholders.

    Returns:
        The (expanded) prompt.
    """
    num_tiles_list = _resolve_num_tiles_list(num_tiles_list, num_patches_list)
    if pixel_values_passed is None:
        pixel_values_passed = bool(num_tiles_list) and sum(num_tiles_list) > 0
    question = prepare_chat_question(question, history, pixel_values_passed)
    conversation = _resolve_template(template)
    if system_message is not None:
        conversation.system_message = system_message
    for turn in history or []:
        if len(turn) != 2:
            raise ValueError(f"Each `history` entry must be a (question, answer) pair, got {turn!r}.")
        old_question, old_answer = turn
        conversation.append_message(conversation.roles[0], old_question)
        conversation.append_message(conversation.roles[1], old_answer)
    conversation.append_message(conversation.roles[0], question)
    conversation.append_message(conversation.roles[1], None)
    prompt = conversation.get_prompt()
    if not expand_images:
        return prompt
    return expand_image_placeholders(
        prompt,
        num_tiles_list or [],
        num_image_token,
        image_start_token,
        image_end_token,
        image_context_token,
    )


def build_batch_chat_prompts(
    template: str | Conversation,
    questions: Sequence[str],
    num_tiles_list: Sequence[int] | None = None,
    system_message: str | None = None,
    pixel_values_passed: bool | None = None,
    num_image_token: int = DEFAULT_NUM_IMAGE_TOKEN,
    image_start_token: str = IMAGE_START_TOKEN,
    image_end_token: str = IMAGE_END_TOKEN,
    image_context_token: str = IMAGE_CONTEXT_TOKEN,
    expand_images: bool = True,
    *,
    num_patches_list: Sequence[int] | None = None,
) -> list[str]:
    """The prompt strings the original `InternVLChatModel.batch_chat()` tokenizes (one image per question).

    Each question gets the `"<image>\\n"` prefix when pixel values are given and it has no placeholder (there is no
    history in batch_chat), then only its first placeholder is replaced by its own image
    (`num_tiles_list[i]` tiles). Tokenize the result with left padding, as batch_chat does.

    Args:
        questions: One user message per sample.
        num_tiles_list: Tiles of each question's image (alias `num_patches_list`); `None` for a text-only batch.
        pixel_values_passed: Whether pixel values are given; `None` means `sum(num_tiles_list) > 0`.
        Other arguments: as in `build_chat_prompt`.
    """
    if isinstance(questions, str):
        raise TypeError("`questions` must be a list of str, got a single str (use `build_chat_prompt`).")
    num_tiles_list = _resolve_num_tiles_list(num_tiles_list, num_patches_list)
    if pixel_values_passed is None:
        pixel_values_passed = bool(num_tiles_list) and sum(num_tiles_list) > 0
    if num_tiles_list is None:
        if pixel_values_passed:
            raise ValueError("`num_tiles_list` (tiles per question) is required when pixel values are passed.")
        num_tiles_list = [0] * len(questions)
    if len(num_tiles_list) != len(questions):
        # The original iterates over num_patches_list and silently drops (or fails on) unmatched questions.
        raise ValueError(
            f"`num_tiles_list` must have one entry per question: got {len(num_tiles_list)} entries for "
            f"{len(questions)} questions."
        )
    prompts = []
    for question, num_tiles in zip(questions, num_tiles_list):
        if not isinstance(question, str):
            raise TypeError(f"Every question must be a str, got {type(question).__name__}.")
        if pixel_values_passed and IMAGE_PLACEHOLDER not in question:
            question = IMAGE_PLACEHOLDER + "\n" + question
        conversation = _resolve_template(template)
        if system_message is not None:
            conversation.system_message = system_message
        conversation.append_message(conversation.roles[0], question)
        conversation.append_message(conversation.roles[1], None)
        prompt = conversation.get_prompt()
        if expand_images:
            image_tokens = image_context_string(
                num_tiles, num_image_token, image_start_token, image_end_token, image_context_token
            )
            prompt = prompt.replace(IMAGE_PLACEHOLDER, image_tokens, 1)
        prompts.append(prompt)
    return prompts


def postprocess_response(response: str, template: str | Conversation) -> str:
    """The answer as chat()/batch_chat() return it: the decoded text cut at the template's eos string, stripped."""
    eos_token = _resolve_template(template).eos_token
    return response.split(eos_token)[0].strip()


def get_eos_token(template: str | Conversation) -> str:
    """The string chat()/batch_chat() convert to the generation `eos_token_id` (`sep.strip()`)."""
    return _resolve_template(template).eos_token


# ---------------------------------------------------------------------------------------------------------------------
# Jinja chat template (for `apply_chat_template`)
# ---------------------------------------------------------------------------------------------------------------------

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
    template: str | Conversation,
    system_message: str | None = None,
    image_placeholder: str = IMAGE_PLACEHOLDER,
    video_placeholder: str = VIDEO_PLACEHOLDER,
) -> str:
    """The Jinja chat template that renders messages exactly as the conversation template `template` does.

    Args:
        template: Template name or `Conversation` (any separator style of `SeparatorStyle`).
        system_message: Default system message baked into the template (the template's own when `None`; the
            original model uses `config.system_message` when present).
        image_placeholder, video_placeholder: Placeholders the processor expands.

    Raises:
        ValueError: the system template of an MPT / MPT_TWO template lacks exactly one `{system_message}` field.
    """
    conversation = _resolve_template(template)
    style = conversation.sep_style
    if style == SeparatorStyle.INTERNVL_ZH:
        # `system_message + sep2`, then `role + ": " + message` (the system template is not used by this style).
        system_prefix = system_suffix = ""
        system_sep, even_sep, odd_sep, final_sep = conversation.sep2, conversation.sep2, conversation.sep, None
        role_suffix, open_role_suffix = ": ", ":"
    else:
        if conversation.system_template.count("{system_message}") != 1:
            raise ValueError(
                f"The system template of {conversation.name!r} must contain exactly one '{{system_message}}', got "
                f"{conversation.system_template!r}."
            )
        system_prefix, system_suffix = conversation.system_template.split("{system_message}")
        system_prefix = system_prefix.replace("{{", "{").replace("}}", "}")
        system_suffix = system_suffix.replace("{{", "{").replace("}}", "}")
        system_sep = even_sep = odd_sep = conversation.sep
        final_sep = conversation.sep2 if style == SeparatorStyle.MPT_TWO else None
        role_suffix = open_role_suffix = ""
    variables = {
        "system_prefix": system_prefix,
        "system_suffix": system_suffix,
        "default_system_message": conversation.system_message if system_message is None else system_message,
        "user_role": conversation.roles[0],
        "assistant_role": conversation.roles[1],
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
    header = f"{{#- InternVL conversation template {conversation.name!r} -#}}\n" + header
    return header + JINJA_CHAT_TEMPLATE_BODY.lstrip("\n")


# The chat template of InternVL 2.5 checkpoints (template "internvl2_5").
CHAT_TEMPLATE = get_jinja_chat_template("internvl2_5")


__all__ = [
    "CHAT_TEMPLATE",
    "CONV_TEMPLATES",
    "DEFAULT_VIDEO_FRAME_TEMPLATE",
    "JINJA_CHAT_TEMPLATE_BODY",
    "Conversation",
    "SeparatorStyle",
    "build_batch_chat_prompts",
    "build_chat_prompt",
    "expand_image_placeholders",
    "expand_video_placeholders",
    "get_conv_template",
    "get_eos_token",
    "get_jinja_chat_template",
    "image_context_string",
    "multi_image_prefix",
    "postprocess_response",
    "prepare_chat_question",
    "register_conv_template",
    "video_frame_prompt",
]
