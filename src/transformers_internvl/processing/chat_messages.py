"""Checks on the messages given to `InternVLChatProcessor.apply_chat_template`.

The chat template renders typed content items (`{"type": "text" | "image" | "video", ...}`) and transformers loads
the media of `image` / `video` items; an item of another shape would be skipped by both without a word (a missing
picture, a lost sentence). `check_chat_messages` refuses such items with the path of the item in the conversation.
Valid transformers-style messages pass unchanged (OpenAI `image_url` items are converted to `image` items by
transformers before this check sees them).
"""

from __future__ import annotations

from typing import Any

from .input_validation import check_bool

__all__ = ["CONTENT_TYPES", "MEDIA_SOURCE_KEYS", "check_chat_messages", "check_conversation_shape"]

# Content item types the InternVL chat template renders.
CONTENT_TYPES = ("text", "image", "video")
# Keys transformers reads an image / video from (`ProcessorMixin._multimodal_inputs_from_conversations`).
MEDIA_SOURCE_KEYS = {"image": ("image", "url", "path", "base64"), "video": ("video", "url", "path")}


def _check_item(item: Any, where: str, system: bool, media_needed: dict[str, bool]) -> None:
    if not isinstance(item, dict):
        raise TypeError(
            f"{where} must be a dict such as {{'type': 'text', 'text': ...}} or {{'type': 'image', 'image': ...}}, "
            f"got {type(item).__name__} ({item!r:.60})."
        )
    if "type" not in item:
        raise ValueError(f"{where} has no 'type' (one of {list(CONTENT_TYPES)}); got the keys {sorted(item)}.")
    kind = item["type"]
    if kind not in CONTENT_TYPES:
        raise ValueError(f"{where} has the unknown type {kind!r}; InternVL renders the types {list(CONTENT_TYPES)}.")
    if kind == "text":
        if not isinstance(item.get("text"), str):
            got = "no 'text'" if "text" not in item else f"'text' of type {type(item['text']).__name__}"
            raise TypeError(f"{where} is a text item and needs a str 'text', got {got}.")
        return
    article = "an" if kind == "image" else "a"
    if system:
        raise ValueError(
            f"{where} is {article} {kind} item in the system message; images and videos go in user or assistant turns."
        )
    given = [key for key in MEDIA_SOURCE_KEYS[kind] if key in item]
    if len(given) > 1:  # transformers takes one image / video per key: {"image": x, "url": y} became two images
        raise ValueError(
            f"{where} is {article} {kind} item with several sources ({', '.join(repr(key) for key in given)}); give "
            f"exactly one of the keys {list(MEDIA_SOURCE_KEYS[kind])}."
        )
    if media_needed[kind] and not any(item.get(key) is not None for key in MEDIA_SOURCE_KEYS[kind]):
        raise ValueError(
            f"{where} is {article} {kind} item without its {kind}: give one of the keys {list(MEDIA_SOURCE_KEYS[kind])}"
            + (" (or pass `images=` with `tokenize=True`)." if kind == "image" else ".")
        )


def check_conversation_shape(conversation: Any) -> None:
    """`conversation` must be a non-empty list of messages, or a batch (list) of such lists; checked before
    transformers indexes it (an empty list would fail there with a bare `IndexError`, `None` with "not iterable").

    Raises:
        TypeError: `conversation` is not a list / tuple (e.g. None, a str, one message dict).
        ValueError: `conversation`, or a conversation of the batch, is empty.
    """
    if hasattr(conversation, "messages"):  # a conversation object; transformers reads its `messages`
        return
    if isinstance(conversation, dict) or not isinstance(conversation, list | tuple):
        got = "one message dict (wrap it in a list: [{...}])" if isinstance(conversation, dict) else None
        raise TypeError(
            "`conversation` must be a list of messages {'role': ..., 'content': ...} (or a list of such lists), got "
            f"{got or type(conversation).__name__}."
        )
    if not conversation:
        raise ValueError("`conversation` is empty; expected at least one message.")
    if isinstance(conversation[0], list | tuple):
        for index, messages in enumerate(conversation):
            if isinstance(messages, list | tuple) and not messages:
                raise ValueError(f"conversation[{index}] of the batch is empty; expected at least one message.")


def _check_role(message: Any, where: str) -> None:
    if not isinstance(message, dict):
        return  # transformers refuses these itself, naming the value
    if "role" not in message:
        raise ValueError(f"{where} has no 'role' ('system', 'user' or 'assistant'); got the keys {sorted(message)}.")
    if not isinstance(message["role"], str):
        raise TypeError(f"{where}['role'] must be a str ('system', 'user' or 'assistant'), got {message['role']!r}.")


def check_chat_messages(conversations: list[list[dict[str, Any]]], is_batched: bool, kwargs: dict[str, Any]) -> None:
    """Refuse message contents the chat template would drop (conversations as transformers normalises them).

    Args:
        conversations: one list of message dicts per conversation (`ProcessorMixin._normalize_conversations`).
        is_batched: whether the caller passed a batch (only changes the paths in messages).
        kwargs: the other `apply_chat_template` arguments. With `tokenize=True` transformers loads each image and
            video from its item, which must then carry it (images may come as `images=` instead); with
            `tokenize=False` (the default) an item without media renders its placeholder, for a later processor call.

    Raises:
        TypeError: a non-bool `sanitize_control_tokens`; a role that is not a str; a content that is neither a str, None nor a list; an item that is not
            a dict; a text item without a str `text`.
        ValueError: a message without a role; an item without `type` or of a type other than text / image / video,
            an image / video in the system message, an image / video item without its media where needed or with
            several sources (`image` and `url`, ...).
        Messages name the item, e.g. `conversation[1]['content'][0]` (`conversation[b][i]...` for a batch).
    """
    if kwargs.get("sanitize_control_tokens") is not None:  # "no" would be truthy: sanitizing on
        check_bool("sanitize_control_tokens", kwargs["sanitize_control_tokens"])
    tokenize = bool(kwargs.get("tokenize", False))
    images_given = kwargs.get("images") is not None or (kwargs.get("processor_kwargs") or {}).get("images") is not None
    media_needed = {"image": tokenize and not images_given, "video": tokenize}
    for batch_index, messages in enumerate(conversations):
        prefix = f"conversation[{batch_index}]" if is_batched else "conversation"
        for index, message in enumerate(messages):
            _check_role(message, f"{prefix}[{index}]")
            content = message.get("content")
            where = f"{prefix}[{index}]['content']"
            if content is None or isinstance(content, str):
                continue
            if not isinstance(content, list | tuple):
                raise TypeError(f"{where} must be a str or a list of content items, got {type(content).__name__}.")
            system = index == 0 and message.get("role") == "system"
            for item_index, item in enumerate(content):
                _check_item(item, f"{where}[{item_index}]", system, media_needed)
