"""Folders saved by this package before its processor classes were renamed `InternVLChat*`.

Until then the image and video processors were saved as `image_processor_type: "InternVLImageProcessor"` /
`video_processor_type: "InternVLVideoProcessor"`, and the processor (in some versions) as
`processor_class: "InternVLProcessor"`. transformers resolves those names to nothing (image processor) or to its own
classes of the converted `-hf` layout (`InternVLVideoProcessor`, which needs torchvision, and `InternVLProcessor`), so
these helpers tell this package's saved configs from transformers' own by their keys: `AutoImageProcessor`,
`AutoVideoProcessor` and `AutoProcessor` then load such folders with this package's classes (see `auto_loading` and
`auto_processor_checks`).
"""

from __future__ import annotations

import json
import os
from typing import Any

from transformers.utils import IMAGE_PROCESSOR_NAME, PROCESSOR_NAME, cached_file

__all__ = [
    "LEGACY_IMAGE_PROCESSOR_TYPE",
    "LEGACY_PROCESSOR_CLASS",
    "LEGACY_VIDEO_PROCESSOR_TYPE",
    "is_legacy_processor_folder",
    "is_own_saved_config",
    "legacy_processor_dict",
]

LEGACY_IMAGE_PROCESSOR_TYPE = "InternVLImageProcessor"
LEGACY_VIDEO_PROCESSOR_TYPE = "InternVLVideoProcessor"
LEGACY_PROCESSOR_CLASS = "InternVLProcessor"
VIDEO_PROCESSOR_NAME = "video_preprocessor_config.json"
_OWN_PROCESSOR_CLASS = "InternVLChatProcessor"
# Keys only this package's image / video processor configs carry (transformers' InternVL video processor and the
# GotOcr2 image processor of the `-hf` layout use `size`, `max_patches`, `crop_to_patches`, ...).
_OWN_SUB_PROCESSOR_KEYS = frozenset(
    ("image_size", "dynamic_image_size", "max_dynamic_patch", "min_dynamic_patch", "use_thumbnail", "max_total_tiles")
    + ("num_segments",)
)
# Keys only this package's processor_config.json carries.
_OWN_PROCESSOR_KEYS = frozenset(("template", "image_placeholder", "video_frame_template", "image_context_token"))


def read_json_file(
    pretrained_model_name_or_path: Any, filename: str, hub_kwargs: dict[str, Any], lenient: bool = False
) -> dict | None:
    """`filename` of a local folder or Hub repo as a dict; `None` when absent. With `lenient=True` (probing whether a
    folder is a legacy one), an unreadable or non-object file is `None` too; otherwise its error propagates."""
    if lenient and not isinstance(pretrained_model_name_or_path, (str, os.PathLike)):
        return None
    path = cached_file(
        pretrained_model_name_or_path,
        filename,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
        **hub_kwargs,
    )
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as reader:
            content = json.load(reader)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        if not lenient:
            raise
        return None
    return content if isinstance(content, dict) or not lenient else None


def is_own_saved_config(saved: dict[str, Any] | None, type_key: str) -> bool:
    """Whether `saved` (a preprocessor / video preprocessor config dict) was written by this package's
    `InternVLChatImageProcessor` / `InternVLChatVideoProcessor` under the name before the rename (`type_key` is
    `"image_processor_type"` or `"video_processor_type"`).

    An `InternVLImageProcessor` is always ours (transformers has no class of that name); an `InternVLVideoProcessor`
    only with `processor_class: "InternVLChatProcessor"` or one of this package's keys (`num_segments`,
    `image_size`, `max_dynamic_patch`, ...), since transformers' own InternVL video processor has that name too."""
    if not isinstance(saved, dict):
        return False
    saved_type = saved.get(type_key)
    if type_key == "image_processor_type" and saved_type == LEGACY_IMAGE_PROCESSOR_TYPE:
        return True
    if type_key == "video_processor_type" and saved_type == LEGACY_VIDEO_PROCESSOR_TYPE:
        return saved.get("processor_class") == _OWN_PROCESSOR_CLASS or bool(_OWN_SUB_PROCESSOR_KEYS & set(saved))
    return False


def legacy_processor_dict(pretrained_model_name_or_path: Any, hub_kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The processor settings of a folder this package saved as `processor_class: "InternVLProcessor"`, or None.

    The settings are processor_config.json's (with its nested `image_processor` / `video_processor`), completed by
    preprocessor_config.json / video_preprocessor_config.json where those hold this package's (legacy-named) configs.
    A folder of transformers' own InternVL processor (converted `-hf` layout) gives None."""
    processor_config = read_json_file(pretrained_model_name_or_path, PROCESSOR_NAME, hub_kwargs, lenient=True) or {}
    image_config = read_json_file(pretrained_model_name_or_path, IMAGE_PROCESSOR_NAME, hub_kwargs, lenient=True) or {}
    video_config = read_json_file(pretrained_model_name_or_path, VIDEO_PROCESSOR_NAME, hub_kwargs, lenient=True) or {}
    named = LEGACY_PROCESSOR_CLASS in (processor_config.get("processor_class"), image_config.get("processor_class"))
    if not named:
        return None
    nested_image = processor_config.get("image_processor")
    nested_video = processor_config.get("video_processor")
    own = (
        bool(_OWN_PROCESSOR_KEYS & set(processor_config))
        or is_own_saved_config(nested_image, "image_processor_type")
        or is_own_saved_config(nested_video, "video_processor_type")
        or is_own_saved_config(image_config, "image_processor_type")
    )
    if not own:
        return None
    processor_dict = {
        key: value for key, value in processor_config.items() if key not in ("image_processor", "video_processor")
    }
    processor_dict["processor_class"] = _OWN_PROCESSOR_CLASS
    for name, nested, saved, type_key in (
        ("image_processor", nested_image, image_config, "image_processor_type"),
        ("video_processor", nested_video, video_config, "video_processor_type"),
    ):
        if isinstance(nested, dict):
            processor_dict[name] = dict(nested)
        elif is_own_saved_config(saved, type_key) or (saved and saved.get("processor_class") == LEGACY_PROCESSOR_CLASS):
            processor_dict[name] = dict(saved)
    return processor_dict


def is_legacy_processor_folder(pretrained_model_name_or_path: Any, hub_kwargs: dict[str, Any]) -> bool:
    """Whether `AutoProcessor` should load this folder as `InternVLChatProcessor` (see `legacy_processor_dict`)."""
    return legacy_processor_dict(pretrained_model_name_or_path, hub_kwargs) is not None
