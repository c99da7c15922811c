"""transformers' `messages` rows -> the original's `conversations` for `InternVLSupervisedDataset`, laid out as the
processor's chat template lays out the same messages at inference (`chat_templates.JINJA_CHAT_TEMPLATE_BODY`)."""

from __future__ import annotations

from typing import Any

from .labels import IMAGE_PLACEHOLDER, SampleError

VIDEO_PLACEHOLDER = "<video>"


def messages_to_conversations(messages: list[dict]) -> tuple[list[dict], list[Any], Any]:
    """transformers `messages` -> (original `conversations`, images, video), laid out as the processor's chat template
    lays out the same messages at inference (`chat_templates.JINJA_CHAT_TEMPLATE_BODY`), so that training and
    inference prompts agree: in each message the image / video placeholders come first, in content order, then the
    texts; with more than one image in the conversation each placeholder is labelled `Image-k: ` (k counted over the
    whole conversation, the official multi-image prompt). A leading system message keeps only its texts."""
    roles = {"system": "system", "user": "human", "assistant": "gpt"}
    body = (
        messages[1:] if messages and isinstance(messages[0], dict) and messages[0].get("role") == "system" else messages
    )
    num_images = sum(
        1
        for message in body
        if isinstance(message, dict) and isinstance(message.get("content"), list)
        for part in message["content"]
        if isinstance(part, dict) and part.get("type") == "image"
    )
    conversations, images, video = [], [], None
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in roles:
            raise SampleError(f"messages[{index}] role must be one of {sorted(roles)}, got {role!r}")
        content = message.get("content", "")
        if isinstance(content, str):
            conversations.append({"from": roles[role], "value": content})
            continue
        placeholders, texts = [], []
        for part in content:
            kind = part.get("type")
            if kind == "text":
                texts.append(part.get("text", ""))
            elif kind in ("image", "video") and role == "system":
                raise SampleError(f"messages[{index}] is a system message with an {kind} (only text is allowed there)")
            elif kind == "image":
                images.append(part.get("image", part.get("url", part.get("path"))))
                label = "" if num_images == 1 else f"Image-{len(images)}: "
                placeholders.append(label + IMAGE_PLACEHOLDER + "\n")
            elif kind == "video":
                video = part.get("video", part.get("url", part.get("path")))
                placeholders.append(VIDEO_PLACEHOLDER + "\n")
            else:
                raise SampleError(f"messages[{index}] has a content part of unknown type {kind!r}")
        conversations.append({"from": roles[role], "value": "".join(placeholders + texts)})
    return conversations, images, video


def image_column(item: dict, images: list[Any]) -> Any:
    """The row's images for the `{"type": "image"}` parts of `messages` that carry none: its `images` list, else (TRL's
    single-image layout, `{"messages": [...], "image": ...}`, which TRL's vision collator reads as `[image]`) its
    `image` wrapped in a list when some part lacks its image; None when there is neither."""
    if "images" in item or item.get("image") is None or all(image is not None for image in images):
        return item.get("images")
    return item["image"] if isinstance(item["image"], list) else [item["image"]]


def fill_images(images: list[Any], column: Any) -> list[Any]:
    """`{"type": "image"}` parts without their image take, in order, the row's `images` list (the layout of TRL's
    vision datasets: `{"messages": [...], "images": [...]}`); an `images` list that repeats the images the parts
    already name is accepted. Raises `SampleError` when the counts differ."""
    missing = sum(image is None for image in images)
    if not missing and (column is None or column == images):
        return images
    if not isinstance(column, list):
        raise SampleError(
            f"{missing} image parts of `messages` carry no image and the row has no `images` list"
            if column is None
            else f"`images` must be a list of paths, got {type(column).__name__}"
        )
    if missing != len(column):
        raise SampleError(f"{missing} image parts of `messages` without an image but {len(column)} `images`")
    supply = iter(column)
    return [next(supply) if image is None else image for image in images]
