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
from collections.abc import Sequence

from transformers.utils import logging

from ..chat_templates import (  # noqa: F401  (re-exported: the names this module always offered)
    CHAT_TEMPLATE,
    DEFAULT_NUM_IMAGE_TOKEN,
    DEFAULT_VIDEO_FRAME_TEMPLATE,
    IMAGE_CONTEXT_TOKEN,
    IMAGE_END_TOKEN,
    IMAGE_PLACEHOLDER,
    IMAGE_START_TOKEN,
    INTERNVL2_5_SYSTEM_MESSAGE,
    INTERNVL2_SYSTEM_MESSAGE,
    INTERNVL3_5_GPT_OSS_SYSTEM_MESSAGE,
    JINJA_CHAT_TEMPLATE_BODY,
    TEMPLATES,
    VIDEO_PLACEHOLDER,
    SeparatorStyle,
    _resolve_num_tiles_list,
    expand_image_placeholders,
    expand_video_placeholders,
    image_context_string,
    multi_image_prefix,
    template_eos_token,
    video_frame_prompt,
)
from ..chat_templates import get_jinja_chat_template as _get_jinja_chat_template

logger = logging.get_logger(__name__)


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


for _data in TEMPLATES.values():
    register_conv_template(
        Conversation(**{**_data, "roles": tuple(_data["roles"]), "sep_style": SeparatorStyle(_data["sep_style"])})
    )


def _resolve_template(template: str | Conversation) -> Conversation:
    if isinstance(template, Conversation):
        return template.copy()
    return get_conv_template(template)


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


def get_jinja_chat_template(
    template: str | Conversation,
    system_message: str | None = None,
    image_placeholder: str = IMAGE_PLACEHOLDER,
    video_placeholder: str = VIDEO_PLACEHOLDER,
) -> str:
    """`chat_templates.get_jinja_chat_template`, also accepting a `Conversation`."""
    if isinstance(template, Conversation):
        template = template.to_dict()
    return _get_jinja_chat_template(template, system_message, image_placeholder, video_placeholder)


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
