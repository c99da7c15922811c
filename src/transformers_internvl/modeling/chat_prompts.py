"""The prompt strings of the original `InternVLChatModel.chat()` / `batch_chat()`, rendered by the Jinja chat template.

There is one prompt renderer: `chat_templates.get_jinja_chat_template(template, system_message)`, the template that
`processor.apply_chat_template` uses too. `chat()` turns its history and question into messages whose contents are
plain strings holding the literal `<image>` placeholders, renders them with transformers' Jinja machinery
(`render_jinja_template`, with the generation prompt), then replaces the placeholders with
`chat_templates.expand_image_placeholders`. The result is byte-identical to the original's
`Conversation.get_prompt()` + `query.replace('<image>', image_tokens, 1)` (internvl_chat/internvl/model/internvl_chat/
modeling_internvl_chat.py; checked against fixtures and the `Conversation` renderer in the tests).

Quirks kept on purpose (they change prompts, so they are part of the behaviour): the system block is emitted even when
the system message is empty, and a message that is empty (or `None`) renders as its role only, without separator.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from transformers.utils.chat_template_utils import render_jinja_template

from ..chat_templates import (
    DEFAULT_NUM_IMAGE_TOKEN,
    IMAGE_CONTEXT_TOKEN,
    IMAGE_END_TOKEN,
    IMAGE_PLACEHOLDER,
    IMAGE_START_TOKEN,
    _resolve_num_tiles_list,
    expand_image_placeholders,
    get_jinja_chat_template,
    template_data,
    template_eos_token,
)
from ..llama_slow_tokenization import check_unicode
from .conversation import Conversation
from .input_checks import python_scalar


def _template_and_messages(template: str | Conversation) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Template data (a name is looked up in `chat_templates.TEMPLATES`, which includes templates registered with
    `register_conv_template`), and the messages a `Conversation` already holds (as chat messages)."""
    if not isinstance(template, Conversation):
        return template_data(template), []
    roles = {template.roles[0]: "user", template.roles[1]: "assistant"}
    unknown = [role for role, _ in template.messages if role not in roles]
    if unknown:
        raise ValueError(
            f"The Conversation holds a message with role {unknown[0]!r}; only its own roles {tuple(template.roles)} "
            f"can be rendered."
        )
    messages = [{"role": roles[role], "content": message} for role, message in template.messages]
    return template.to_dict(), messages


def whole_tile_counts(name: str, values: Any) -> list[int]:
    """`values` (a list / tuple / numpy array / tensor of tiles per image, argument `name`) as a list of ints.

    0-d integer tensors / arrays count as their value, as in the original. Integral floats (`2.0`) and bools count as
    the int they equal (the original multiplies the counts into strings, so `True` works there as 1); anything else
    is refused instead of truncated (`int(1.5)` was 1 tile) or failing later inside `sum` or the tokenizer.

    Raises:
        TypeError: `values` is a str / bytes or not iterable, or holds a non-number (a str, None, a nested list).
        ValueError: a count that is not a whole number (1.5, NaN, inf) or is negative.
    """
    values = values.tolist() if hasattr(values, "tolist") else values
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"`{name}` must be a list of tile counts (one per image), got {type(values).__name__}.")
    # 0-d tensors / arrays and numpy scalars as their Python number (`list(torch.tensor([2, 3]))`; the original
    # multiplies strings by them).
    values = [python_scalar(value) for value in values]
    for value in values:
        if not isinstance(value, numbers.Real):
            raise TypeError(f"`{name}` must hold integer tile counts (one per image), got {values!r:.200}.")
        if not isinstance(value, numbers.Integral) and not (math.isfinite(value) and float(value).is_integer()):
            raise ValueError(f"`{name}` must hold whole tile counts (one per image), got {values}.")
    if any(value < 0 for value in values):
        raise ValueError(f"`{name}` must hold non-negative tile counts, got {values}.")
    return [int(value) for value in values]


def whole_tile_count_arguments(**given: Any) -> dict[str, list[int] | None]:
    """Each tile-count argument in `given` (name -> value or None) checked by `whole_tile_counts`, naming it."""
    return {name: None if value is None else whole_tile_counts(name, value) for name, value in given.items()}


def _checked_tile_counts(num_tiles_list: Any, num_patches_list: Any) -> list[int] | None:
    """`chat_templates._resolve_num_tiles_list` on counts checked by `whole_tile_counts` (naming the argument)."""
    checked = whole_tile_count_arguments(num_tiles_list=num_tiles_list, num_patches_list=num_patches_list)
    return _resolve_num_tiles_list(checked["num_tiles_list"], checked["num_patches_list"])


def render_chat_prompt(
    template: str | Conversation,
    turns: Sequence[tuple[str, str | None]],
    system_message: str | None = None,
) -> str:
    """Render `(role, content)` turns (`role` "user" / "assistant") with the Jinja template, plus the generation
    prompt; `system_message=None` keeps the template's own (a `Conversation`'s current one)."""
    data, messages = _template_and_messages(template)
    if system_message is None and isinstance(template, Conversation):
        system_message = template.system_message
    check_unicode("`system_message`", system_message)
    messages += [{"role": role, "content": content} for role, content in turns]
    chat_template = get_jinja_chat_template(data, system_message)
    rendered, _ = render_jinja_template([messages], chat_template=chat_template, add_generation_prompt=True)
    return rendered[0]


def prepare_chat_question(
    question: str,
    history: Sequence[Sequence[str]] | None = None,
    pixel_values_passed: bool = False,
    image_placeholder: str = IMAGE_PLACEHOLDER,
) -> str:
    """The question as the original chat() uses it (and stores it in the history).

    `"<image>\\n"` is prepended only when pixel values are given, `history is None` (an empty list does not count)
    and the question has no placeholder. Raises `TypeError` for a `question` that is not a str or a `history` that
    is not None, a list or a tuple, and `ValueError` for a question that is not valid Unicode (`check_unicode`).
    """
    if not isinstance(question, str):
        raise TypeError(f"`question` must be a str, got {type(question).__name__}.")
    check_unicode("`question`", question)
    if history is not None and (isinstance(history, str | bytes | Mapping) or not isinstance(history, Sequence)):
        # `True` failed as "'bool' object is not iterable"; `0` / `False` were taken for an empty history.
        raise TypeError(
            f"`history` must be None or a list of (question, answer) pairs, got {type(history).__name__} "
            f"({history!r:.80})."
        )
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

    Raises:
        TypeError: `question`, or a question / answer of `history`, is not a str; `history` is not None, a list or a
            tuple. ValueError: a `history` entry is not a pair, an unknown template, a `Conversation` holding a
            message of another role, a text that is not valid Unicode (`check_unicode`), or tile counts that are not
            whole numbers >= 0 (`whole_tile_counts`).
    """
    num_tiles_list = _checked_tile_counts(num_tiles_list, num_patches_list)
    if pixel_values_passed is None:
        pixel_values_passed = bool(num_tiles_list) and sum(num_tiles_list) > 0
    question = prepare_chat_question(question, history, pixel_values_passed)
    turns: list[tuple[str, str | None]] = []
    for index, turn in enumerate(history or []):
        if isinstance(turn, str | bytes) or not isinstance(turn, Sequence) or len(turn) != 2:
            raise ValueError(f"`history[{index}]` must be a (question, answer) pair, got {turn!r}.")
        for part, value in zip(("question", "answer"), turn):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"The {part} of `history[{index}]` must be a str, got {type(value).__name__}.")
            check_unicode(f"The {part} of `history[{index}]`", value)
        turns += [("user", turn[0]), ("assistant", turn[1])]
    turns.append(("user", question))
    prompt = render_chat_prompt(template, turns, system_message)
    if not expand_images:
        return prompt
    return expand_image_placeholders(
        prompt, num_tiles_list or [], num_image_token, image_start_token, image_end_token, image_context_token
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

    Raises:
        TypeError: `questions` is a single str or holds a non-str. ValueError: `num_tiles_list` is missing with pixel
            values, its length differs from the number of questions or its counts are not whole numbers >= 0, or a
            question is not valid Unicode (`check_unicode`).
    """
    if isinstance(questions, str):
        raise TypeError("`questions` must be a list of str, got a single str (use `build_chat_prompt`).")
    num_tiles_list = _checked_tile_counts(num_tiles_list, num_patches_list)
    if pixel_values_passed is None:
        pixel_values_passed = bool(num_tiles_list) and sum(num_tiles_list) > 0
    if num_tiles_list is None:
        if pixel_values_passed:
            raise ValueError(
                "`num_patches_list` (alias `num_tiles_list`: the tiles of each question's image, in order) is "
                "required when pixel values are passed, e.g. `num_patches_list=[pixel_values1.size(0), "
                "pixel_values2.size(0)]` for two questions (the model cards' batch_chat)."
            )
        num_tiles_list = [0] * len(questions)
    if len(num_tiles_list) != len(questions):
        # The original iterates over num_patches_list and silently drops (or fails on) unmatched questions.
        raise ValueError(
            f"`num_patches_list` (alias `num_tiles_list`) must have one entry per question: got "
            f"{len(num_tiles_list)} entries for {len(questions)} questions."
        )
    prompts = []
    for index, (question, num_tiles) in enumerate(zip(questions, num_tiles_list)):
        if not isinstance(question, str):
            raise TypeError(f"Every question must be a str, got {type(question).__name__}.")
        check_unicode(f"`questions[{index}]`", question)
        question = prepare_chat_question(question, None, pixel_values_passed)  # batch_chat has no history
        prompt = render_chat_prompt(template, [("user", question)], system_message)
        if expand_images and IMAGE_PLACEHOLDER in prompt:
            # The original replaces only the first placeholder; a text-only prompt has none and is left as it is.
            prompt = expand_image_placeholders(
                prompt, [num_tiles], num_image_token, image_start_token, image_end_token, image_context_token
            )
        prompts.append(prompt)
    return prompts


def get_eos_token(template: str | Conversation) -> str:
    """The string chat()/batch_chat() convert to the generation `eos_token_id` (`chat_templates.template_eos_token`)."""
    return template_eos_token(template.to_dict() if isinstance(template, Conversation) else template)


def postprocess_response(response: str, template: str | Conversation) -> str:
    """The answer as chat()/batch_chat() return it: the decoded text cut at the template's eos string, stripped."""
    return response.split(get_eos_token(template))[0].strip()


__all__ = [
    "build_batch_chat_prompts",
    "build_chat_prompt",
    "check_unicode",
    "get_eos_token",
    "postprocess_response",
    "prepare_chat_question",
    "render_chat_prompt",
    "whole_tile_count_arguments",
    "whole_tile_counts",
]
