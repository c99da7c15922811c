"""Control tokens and placeholders in user text (issue 12).

Two kinds of strings in a prompt are not plain text for InternVL:

* the tokenizer's control tokens (`<|im_start|>`, `<|im_end|>`, `<img>`, `</img>`, `<IMG_CONTEXT>`, ...), which the
  tokenizer encodes as single special tokens wherever they appear;
* the processor's placeholders `<image>` / `<video>`, which `InternVLChatProcessor` expands into image tokens.

Policy (the default follows the original `chat()` and transformers, which put user text into the prompt as is):

* `apply_chat_template(..., tokenize=True, sanitize_control_tokens=True)` encodes the control tokens found in the
  messages as plain text (transformers' `mark_control_tokens` / `encode_marked_chat`, honoured end to end by the
  processor). Without it (the default, as in transformers) user text may write control tokens; use it for untrusted
  text.
* `<img>`, `</img>` and `<IMG_CONTEXT>` written in the text itself (not marked by `sanitize_control_tokens`) are
  refused with a `ValueError`: they would give image slots without pixels (or shift the ones of real images).
* On the structured-messages path (`apply_chat_template` with content items typed `{"type": "text", ...}`), only
  `{"type": "image"}` / `{"type": "video"}` items are images and videos: a literal `<image>` / `<video>` in a text
  item is text. It is escaped with `PLACEHOLDER_ESCAPE` (a private-use character) before rendering; the processor
  skips escaped placeholders and removes the escape before tokenizing. Plain string contents keep the original's
  convention (`"<image>\\nDescribe"` places the image).
"""

from __future__ import annotations

import re
from typing import Any

from transformers.utils.chat_template_utils import _CONTROL_TOKEN_END, _CONTROL_TOKEN_START

__all__ = [
    "PLACEHOLDER_ESCAPE",
    "check_no_raw_image_tokens",
    "count_placeholders",
    "escape_placeholders_in_messages",
    "placeholder_pattern",
    "remove_escapes",
    "special_tokens_around_text",
]

# Written before a `<image>` / `<video>` that is text, not a placeholder. A plane-15 private-use character, distinct
# from transformers' control-token markers (U+F0000, U+F0001) so that `mark_control_tokens` leaves it alone.
PLACEHOLDER_ESCAPE = "\U000f0002"

_MARKED_RE = re.compile(f"{_CONTROL_TOKEN_START}.*?{_CONTROL_TOKEN_END}", re.DOTALL)


def placeholder_pattern(*placeholders: str) -> re.Pattern:
    """A capturing regex matching the placeholders that are neither escaped nor marked (splits keep them)."""
    alternatives = "|".join(re.escape(placeholder) for placeholder in placeholders)
    return re.compile(f"(?<![{PLACEHOLDER_ESCAPE}{_CONTROL_TOKEN_START}])({alternatives})")


def count_placeholders(text: str, placeholder: str) -> int:
    """Number of real (unescaped) `placeholder`s in `text`."""
    return len(placeholder_pattern(placeholder).findall(text))


def remove_escapes(text: str) -> str:
    """`text` without `PLACEHOLDER_ESCAPE` characters (done after expansion, before tokenizing)."""
    return text.replace(PLACEHOLDER_ESCAPE, "")


def _escape_text(text: str, placeholders: tuple[str, ...]) -> str:
    text = remove_escapes(text)  # an escape typed by the user has no meaning
    for placeholder in placeholders:
        text = text.replace(placeholder, PLACEHOLDER_ESCAPE + placeholder)
    return text


def escape_placeholders_in_messages(conversation: Any, placeholders: tuple[str, ...]) -> Any:
    """Copy of `conversation` (one list of messages, or a batch of them) in which the placeholders inside typed text
    items (`{"type": "text", "text": ...}`) are escaped. Messages whose content is a plain string are unchanged (the
    original's convention: the string may place the image with `<image>`)."""

    def message(item: Any) -> Any:
        if not isinstance(item, dict) or not isinstance(item.get("content"), (list, tuple)):
            return item
        content = []
        for part in item["content"]:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                part = {**part, "text": _escape_text(part["text"], placeholders)}
            content.append(part)
        return {**item, "content": content}

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return message(value)
        if isinstance(value, (list, tuple)):
            return [walk(element) for element in value]
        messages = getattr(value, "messages", None)
        return walk(messages) if messages is not None else value

    return walk(conversation)


def check_no_raw_image_tokens(texts: list[str], image_tokens: tuple[str, ...]) -> None:
    """Refuse image token strings written in the text (before placeholder expansion).

    Occurrences marked by `sanitize_control_tokens=True` are text and allowed.

    Raises:
        ValueError: naming the text index, the token and its position.
    """
    tokens = [token for token in image_tokens if token]
    if not tokens:
        return
    pattern = re.compile("|".join(re.escape(token) for token in sorted(tokens, key=len, reverse=True)))
    for index, text in enumerate(texts):
        unmarked = _MARKED_RE.sub(lambda match: " " * len(match.group(0)), text)
        found = pattern.search(unmarked)
        if found is not None:
            raise ValueError(
                f"`text[{index}]` contains the image token {found.group(0)!r} at position {found.start()}; image "
                f"tokens are written by the processor from `<image>` placeholders and real images. To let user text "
                f"contain it as plain text, use `apply_chat_template(..., tokenize=True, "
                f"sanitize_control_tokens=True)`."
            )


def special_tokens_around_text(tokenizer) -> tuple[str, str]:
    """The token strings `tokenizer` adds before and after a text with `add_special_tokens=True` (`("<s>", "")` for
    InternLM2 and Llama, `("", "")` for Qwen2).

    transformers' sanitized encoding (`encode_marked_chat`) refuses tokenizers that add special tokens themselves, so
    the processor writes them into the text instead (they are not marked, hence encoded as special tokens).

    Raises:
        ValueError: the tokenizer does not keep the text's ids as one contiguous run.
    """
    plain = tokenizer.encode("x", add_special_tokens=False)
    with_specials = tokenizer.encode("x", add_special_tokens=True)
    for start in range(len(with_specials) - len(plain) + 1):
        if with_specials[start : start + len(plain)] == plain:
            before = tokenizer.convert_ids_to_tokens(with_specials[:start])
            after = tokenizer.convert_ids_to_tokens(with_specials[start + len(plain) :])
            return "".join(before), "".join(after)
    raise ValueError(
        f"Cannot tell which special tokens {type(tokenizer).__name__} adds around a text ({plain} became "
        f"{with_specials}); pass `add_special_tokens=False` with `sanitize_control_tokens=True`."
    )
