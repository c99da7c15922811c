"""`InternVLProcessor`: tokenizer + dynamic-tiling image processor + video processor, with the original chat format.

Text conventions are those of the original InternVL chat code:

* `<image>` in the text stands for one image; it becomes `<img>` + `<IMG_CONTEXT>` x (num_image_token * tiles) +
  `</img>` (the three token strings come from the tokenizer; num_image_token = (image_size // patch_size)**2 *
  downsample_ratio**2 = 256 for 448 px tiles, 14 px patches and ratio 0.5);
* `<video>` stands for one video; it becomes one line per sampled frame, `Frame-1: <image>` ... `Frame-N: <image>`
  joined by newlines (one tile per frame; the frame label is `video_frame_template`, `"Frame{i}: "` gives the
  pre-2024-12-25 style);
* a sample with images (videos) but no `<image>` (`<video>`) placeholder gets the prefix of the official examples:
  `<image>\\n` for one image, `Image-1: <image>\\nImage-2: <image>\\n...` for several (`<video>\\n` per video);
* `pixel_values` holds the tiles of all images and video frames of the batch in the order their placeholders appear
  in the texts (sample 0 first), which is the order the model fills `<IMG_CONTEXT>` positions; `num_tiles` gives the
  tiles of each image, and 1 for each video frame, in that order.

`apply_chat_template` renders messages with the Jinja template of the model's conversation template (see
`conversation.get_jinja_chat_template`): byte-identical to the original `chat()` prompts.
"""

import inspect
import json
import os
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin, VideosKwargs
from transformers.utils import CONFIG_NAME, PROCESSOR_NAME, cached_file, logging

from ..atomic_save import atomic_save_directory
from ..chat_templates import (
    DEFAULT_VIDEO_FRAME_TEMPLATE,
    IMAGE_CONTEXT_TOKEN,
    IMAGE_END_TOKEN,
    IMAGE_PLACEHOLDER,
    IMAGE_START_TOKEN,
    VIDEO_PLACEHOLDER,
    get_jinja_chat_template,
    image_context_string,
    multi_image_prefix,
    template_data,
    template_eos_token,
    video_frame_prompt,
)
from .control_tokens import (
    PLACEHOLDER_ESCAPE,
    check_no_raw_image_tokens,
    count_placeholders,
    escape_placeholders_in_messages,
    placeholder_pattern,
    special_tokens_around_text,
)
from .image_processing_internvl import InternVLImageProcessorKwargs
from .input_validation import check_texts
from .loading_options import HUB_KWARGS, IMAGE_PROCESSOR_OPTIONS, VIDEO_PROCESSOR_OPTIONS, split_from_pretrained_kwargs

logger = logging.get_logger(__name__)

# The class name written to processor_config.json / tokenizer_config.json. transformers resolves the name
# "InternVLProcessor" to its own processor (converted `-hf` layout) before looking at registered classes, so this
# package's processor is saved and registered under the original's naming (`InternVLChatModel`, `internvl_chat`).
_SAVED_CLASS_NAME = "InternVLChatProcessor"
_PROCESSOR_CLASS_NAMES = ("InternVLChatProcessor", "InternVLProcessor")


class InternVLImagesKwargs(InternVLImageProcessorKwargs, total=False):
    """Per-call image options of `InternVLProcessor`: those of `InternVLImageProcessor` (see
    `InternVLImageProcessorKwargs`: `dynamic_image_size`, `max_dynamic_patch` / `max_num`, `min_dynamic_patch` /
    `min_num`, `use_thumbnail`, `max_total_tiles`, ...); defaults come from the model config."""


class InternVLProcessingKwargs(ProcessingKwargs, total=False):
    images_kwargs: InternVLImagesKwargs
    videos_kwargs: VideosKwargs


# ---------------------------------------------------------------------------------------------------------------------
# Input normalisation
# ---------------------------------------------------------------------------------------------------------------------


def _is_array(value: Any) -> bool:
    return isinstance(value, (np.ndarray, torch.Tensor))


def _is_file_like(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike, bytes, bytearray)) or hasattr(value, "read")


def _is_image(value: Any) -> bool:
    """One image: PIL image, path / URL, encoded bytes / binary file, or a (H, W[, C]) / (C, H, W) array."""
    return isinstance(value, Image.Image) or _is_file_like(value) or (_is_array(value) and value.ndim in (2, 3))


def _is_frame(value: Any) -> bool:
    return isinstance(value, Image.Image) or (_is_array(value) and value.ndim in (2, 3))


def _is_video(value: Any) -> bool:
    """One video: a file (path / URL / encoded bytes / binary file object), a (T, ...) 4-D array, or a non-empty list
    of frames (PIL images or 2-D / 3-D arrays)."""
    if _is_file_like(value):
        return True
    if _is_array(value):
        return value.ndim == 4
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(_is_frame(frame) for frame in value)


def _split_per_sample(items: Any, texts: list[str], placeholder: str, is_item, name: str) -> list[list[Any]]:
    """Group images (or videos) by sample.

    Accepted: `None`; one item; a flat list (one sample, or distributed over the samples by their placeholder counts,
    or one per sample when no text has placeholders); a list with one list per sample.
    """
    batch_size = len(texts)
    if items is None:
        return [[] for _ in texts]
    if is_item(items):
        items = [items]
    elif _is_array(items) and items.ndim == (4 if name == "images" else 5):
        items = list(items)  # a stacked batch of images (N, H, W, C) or of videos (B, T, ...)
    if not isinstance(items, (list, tuple)):
        raise TypeError(f"`{name}` must be an item or a (nested) list of items, got {type(items).__name__}.")
    items = list(items)
    if not items:
        return [[] for _ in texts]
    if all(is_item(item) for item in items):
        if batch_size == 1:
            return [items]
        counts = [count_placeholders(text, placeholder) for text in texts]
        if sum(counts) == len(items):
            grouped, start = [], 0
            for count in counts:
                grouped.append(items[start : start + count])
                start += count
            return grouped
        if sum(counts) == 0 and len(items) == batch_size:
            return [[item] for item in items]
        raise ValueError(
            f"Cannot assign {len(items)} {name} to {batch_size} texts with {counts} {placeholder} placeholder(s); "
            f"pass one list of {name} per text."
        )
    if all(isinstance(sample, (list, tuple)) and all(is_item(item) for item in sample) for sample in items):
        if len(items) != batch_size:
            raise ValueError(f"Got {len(items)} lists of {name} for {batch_size} texts; expected one list per text.")
        return [list(sample) for sample in items]
    raise TypeError(
        f"`{name}` must be an item, a flat list of items or a list of lists (one per text); got an unsupported "
        f"structure."
    )


# ---------------------------------------------------------------------------------------------------------------------
# Defaults from an original config.json
# ---------------------------------------------------------------------------------------------------------------------


def _expansion_offsets(
    segments: list[tuple[str, str, bool]], prefix_length: int
) -> tuple[str, list[dict[str, tuple[int, int]]]]:
    """The text the tokenizer gets, and where each change to the text as given ended up (for assistant masks).

    `segments` are `(given piece, produced piece, is a placeholder)` in order over the text with its added prefix
    (the first `prefix_length` characters). Placeholders become their expansions and placeholder escapes
    (`control_tokens.PLACEHOLDER_ESCAPE`) are removed; each change is `{"span": (start, end) in the text as given,
    "new_span": (start, end) in the produced text}`, and the prefix is one insertion at 0, which is what
    transformers' `ProcessorMixin._adjust_assistant_masks_indices` reads.
    """
    offsets: list[dict[str, tuple[int, int]]] = []
    produced: list[str] = []
    position = new_position = prefix_growth = 0

    def change(given: str, output: str) -> None:
        nonlocal prefix_growth
        if position < prefix_length:
            prefix_growth += len(output) - len(given)
        else:
            start = position - prefix_length
            offsets.append(
                {"span": (start, start + len(given)), "new_span": (new_position, new_position + len(output))}
            )

    for given, output, replaced in segments:
        if replaced:
            change(given, output)
            produced.append(output)
            position += len(given)
            new_position += len(output)
            continue
        for part_index, part in enumerate(given.split(PLACEHOLDER_ESCAPE)):
            if part_index:  # an escape character, removed
                change(PLACEHOLDER_ESCAPE, "")
                position += len(PLACEHOLDER_ESCAPE)
            produced.append(part)
            position += len(part)
            new_position += len(part)
    if prefix_length:
        offsets.insert(0, {"span": (0, 0), "new_span": (0, prefix_length + prefix_growth)})
    return "".join(produced), offsets


def _shift_for_inserted_prefix(
    offsets: list[dict[str, tuple[int, int]]], length: int
) -> list[dict[str, tuple[int, int]]]:
    """`offsets` after `length` characters were put before the produced text (one insertion at 0 in total)."""
    if not length:
        return offsets
    shifted = [
        {"span": entry["span"], "new_span": (entry["new_span"][0] + length, entry["new_span"][1] + length)}
        for entry in offsets
    ]
    if shifted and shifted[0]["span"] == (0, 0):
        shifted[0] = {"span": (0, 0), "new_span": (0, shifted[0]["new_span"][1])}
    else:
        shifted.insert(0, {"span": (0, 0), "new_span": (0, length)})
    return shifted


def _read_json(path: str | None) -> dict[str, Any] | None:
    if path is None:
        return None
    with open(path, encoding="utf-8") as reader:
        return json.load(reader)


def processor_kwargs_from_model_config(model_config: dict[str, Any]) -> dict[str, Any]:
    """`InternVLProcessor` init arguments from an original `config.json` dict (`model_type` `internvl_chat`)."""
    vision_config = model_config.get("vision_config") or {}
    image_size = model_config.get("force_image_size") or vision_config.get("image_size") or 448
    kwargs = {
        "template": model_config.get("template") or "internvl2_5",
        "image_size": int(image_size),
        "patch_size": int(vision_config.get("patch_size", 14)),
        "downsample_ratio": float(model_config.get("downsample_ratio", 0.5)),
    }
    if model_config.get("system_message") is not None:
        kwargs["system_message"] = model_config["system_message"]
    return kwargs


def image_processor_kwargs_from_model_config(model_config: dict[str, Any]) -> dict[str, Any]:
    """`InternVLImageProcessor` init arguments from an original `config.json` dict: `force_image_size` (or the
    vision config's `image_size`), `dynamic_image_size`, `max_dynamic_patch`, `min_dynamic_patch`, `use_thumbnail`
    (defaults: 448, True, 12, 1, True — the original chat examples' `load_image`)."""
    vision_config = model_config.get("vision_config") or {}
    image_size = int(model_config.get("force_image_size") or vision_config.get("image_size") or 448)

    def get(name: str, default: Any) -> Any:
        value = model_config.get(name)
        return default if value is None else value

    return {
        "image_size": image_size,
        "dynamic_image_size": bool(get("dynamic_image_size", True)),
        "min_dynamic_patch": int(get("min_dynamic_patch", 1)),
        "max_dynamic_patch": int(get("max_dynamic_patch", 12)),
        "use_thumbnail": bool(get("use_thumbnail", True)),
    }


def video_processor_kwargs_from_model_config(model_config: dict[str, Any]) -> dict[str, Any]:
    """`InternVLVideoProcessor` init arguments from an original `config.json` dict."""
    vision_config = model_config.get("vision_config") or {}
    image_size = int(model_config.get("force_image_size") or vision_config.get("image_size") or 448)
    return {"image_size": image_size}


def _construct(cls: type, kwargs: dict[str, Any]) -> Any:
    """Instantiate `cls` with the subset of `kwargs` its `__init__` names (all of them if it takes **kwargs)."""
    parameters = inspect.signature(cls.__init__).parameters
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()):
        accepted = kwargs
    else:
        accepted = {key: value for key, value in kwargs.items() if key in parameters}
    ignored = sorted(set(kwargs) - set(accepted))
    if ignored:
        logger.info(f"{cls.__name__} does not take {ignored}; using its defaults for them.")
    return cls(**accepted)


def _image_processor_class() -> type:
    from .image_processing_internvl import InternVLImageProcessor

    return InternVLImageProcessor


def _video_processor_class() -> type:
    from .video_processing_internvl import InternVLVideoProcessor

    return InternVLVideoProcessor


# ---------------------------------------------------------------------------------------------------------------------
# Processor
# ---------------------------------------------------------------------------------------------------------------------


class InternVLChatProcessor(ProcessorMixin):
    r"""
    Processor of InternVL 2.5 (exported as `InternVLProcessor`): an InternVL image processor (dynamic tiling), a
    tokenizer and an InternVL video processor, producing the inputs of the original chat format.

    Args:
        image_processor: `InternVLImageProcessor` (default settings when `None`).
        tokenizer: The checkpoint's tokenizer; it must know `<img>`, `</img>` and `<IMG_CONTEXT>`.
        video_processor: `InternVLVideoProcessor` (default settings when `None`).
        chat_template: Jinja chat template; `None` builds the one of `template` (with `system_message`).
        template: Conversation template name of the model config (`"internvl2_5"`, `"internlm2-chat"`, ...).
        system_message: Default system message; `None` uses the template's own.
        image_size, patch_size, downsample_ratio: Tile size, ViT patch size and pixel-unshuffle ratio; they give
            `num_image_token` (tokens per tile).
        video_frame_template: Label before each video frame, formatted with `i` (1-based).
        image_placeholder, video_placeholder: Placeholders in the text.
        image_start_token, image_end_token, image_context_token: Image token strings; `None` reads the tokenizer's
            `start_image_token` / `end_image_token` / `context_image_token` attributes, else uses `<img>`, `</img>`,
            `<IMG_CONTEXT>`.
    """

    text_kwargs = {"padding_side": "left"}
    valid_processor_kwargs = InternVLProcessingKwargs

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        video_processor=None,
        chat_template: str | None = None,
        template: str = "internvl2_5",
        system_message: str | None = None,
        image_size: int = 448,
        patch_size: int = 14,
        downsample_ratio: float = 0.5,
        video_frame_template: str = DEFAULT_VIDEO_FRAME_TEMPLATE,
        image_placeholder: str = IMAGE_PLACEHOLDER,
        video_placeholder: str = VIDEO_PLACEHOLDER,
        image_start_token: str | None = None,
        image_end_token: str | None = None,
        image_context_token: str | None = None,
        **kwargs,
    ):
        if tokenizer is None:
            raise ValueError("`tokenizer` is required.")
        if image_processor is None:
            image_processor = _image_processor_class()()
        if video_processor is None:
            video_processor = _video_processor_class()()
        template_data(template)  # validates the name
        if "{i}" not in video_frame_template:
            raise ValueError(f"`video_frame_template` must contain '{{i}}', got {video_frame_template!r}.")
        if image_size <= 0 or patch_size <= 0 or image_size % patch_size != 0:
            raise ValueError(f"`image_size` ({image_size}) must be a positive multiple of `patch_size` ({patch_size}).")
        if not 0 < downsample_ratio <= 1:
            raise ValueError(f"`downsample_ratio` must be in (0, 1], got {downsample_ratio}.")
        if chat_template is None:
            chat_template = get_jinja_chat_template(
                template, system_message, image_placeholder=image_placeholder, video_placeholder=video_placeholder
            )

        self.template = template
        self.system_message = system_message
        self.image_size = int(image_size)
        self.patch_size = int(patch_size)
        self.downsample_ratio = float(downsample_ratio)
        self.video_frame_template = video_frame_template
        self.image_placeholder = image_placeholder
        self.video_placeholder = video_placeholder
        self.image_start_token = image_start_token or getattr(tokenizer, "start_image_token", None) or IMAGE_START_TOKEN
        self.image_end_token = image_end_token or getattr(tokenizer, "end_image_token", None) or IMAGE_END_TOKEN
        self.image_context_token = (
            image_context_token or getattr(tokenizer, "context_image_token", None) or IMAGE_CONTEXT_TOKEN
        )
        super().__init__(image_processor, tokenizer, video_processor, chat_template=chat_template, **kwargs)

        # ProcessorMixin conventions: `image_token` is the token that fills the sequence (checked after tokenization,
        # used for mm_token_type_ids); there is no separate video token (frames use image tokens).
        self.image_token = self.image_context_token
        self.image_token_id = self._token_id(self.image_context_token)
        self.image_start_token_id = self._token_id(self.image_start_token)
        self.image_end_token_id = self._token_id(self.image_end_token)
        missing = [
            token
            for token, token_id in (
                (self.image_start_token, self.image_start_token_id),
                (self.image_end_token, self.image_end_token_id),
                (self.image_context_token, self.image_token_id),
            )
            if token_id is None
        ]
        if missing:
            logger.warning(f"The tokenizer has no single token for {missing}; images cannot be processed with it.")

    def check_argument_for_proper_class(self, argument_name, argument):
        """As ProcessorMixin, but the video processor is checked against the classes themselves: transformers only
        exposes `VideoProcessorMixin` at top level when torchvision is installed, and this package does not need it."""
        if argument_name != "video_processor":
            return super().check_argument_for_proper_class(argument_name, argument)
        from transformers.video_processing_utils import VideoProcessorMixin

        proper_classes = (VideoProcessorMixin, _video_processor_class())
        if not isinstance(argument, proper_classes):
            raise TypeError(
                f"Received a {type(argument).__name__} for argument video_processor, but an InternVLVideoProcessor "
                f"(or another VideoProcessorMixin) was expected."
            )
        return proper_classes

    def _token_id(self, token: str) -> int | None:
        """The id of `token` if the tokenizer has it as one token (not the unknown token), else None."""
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or (self.tokenizer.unk_token_id is not None and token_id == self.tokenizer.unk_token_id):
            return None
        return int(token_id)

    @property
    def num_image_token(self) -> int:
        """Tokens per tile: `(image_size // patch_size) ** 2 * downsample_ratio ** 2` (256 for 448 / 14 / 0.5)."""
        return int((self.image_size // self.patch_size) ** 2 * (self.downsample_ratio**2))

    @property
    def image_token_ids(self) -> list[int | None]:
        return [self.image_token_id, self.image_start_token_id, self.image_end_token_id]

    @property
    def chat_eos_token(self) -> str:
        """The string the original chat() stops generation at: the template's `sep.strip()` (`<|im_end|>` for
        InternVL 2.5; not necessarily the tokenizer's `eos_token`, which is `</s>` for InternLM2)."""
        return template_eos_token(self.template)

    @property
    def chat_eos_token_id(self) -> int | None:
        """Id of `chat_eos_token` (pass it as `eos_token_id` to `generate`, as the original chat() does)."""
        return self._token_id(self.chat_eos_token)

    @property
    def model_input_names(self) -> list[str]:
        return list(self.tokenizer.model_input_names) + ["pixel_values", "num_tiles"]

    # ---- text expansion ------------------------------------------------------------------------------------------

    def image_tokens(self, num_tiles: int) -> str:
        """The text that stands for one image of `num_tiles` tiles."""
        return image_context_string(
            num_tiles, self.num_image_token, self.image_start_token, self.image_end_token, self.image_context_token
        )

    def video_prompt(self, num_frames: int) -> str:
        """The frame lines a `<video>` placeholder becomes, before image expansion (`Frame-1: <image>\\n...`)."""
        return video_frame_prompt(num_frames, self.video_frame_template, self.image_placeholder)

    def image_prefix(self, num_images: int) -> str:
        """Placeholders prepended to a text that has images but no placeholder, as in the official examples."""
        return multi_image_prefix(num_images, self.image_placeholder)

    # ---- __call__ ------------------------------------------------------------------------------------------------

    def __call__(
        self,
        images=None,
        text: str | list[str] | None = None,
        videos=None,
        **kwargs,
    ) -> BatchFeature:
        """Expand placeholders, tile images, sample video frames and tokenize.

        Args:
            images: One image, a list (one sample, or distributed over the texts by their `<image>` counts), or one
                list per text. Images are PIL images, paths, URLs or arrays.
            text: One string or a list (the batch).
            videos: Like `images`, with videos (paths, URLs, frame lists or (T, H, W, C) arrays).
            kwargs: Tokenizer options (`padding`, `padding_side` (default "left"), `return_tensors`, ...), image
                options under the original names (`dynamic_image_size`, `max_dynamic_patch` / `max_num`,
                `min_dynamic_patch` / `min_num`, `use_thumbnail`, `max_total_tiles`) and video options
                (`num_frames`, ...), flat or as `text_kwargs` / `images_kwargs` / `videos_kwargs`. An unknown flat
                option is ignored with a warning (transformers' `_merge_kwargs`); an unknown key in `images_kwargs`
                raises `TypeError`.

        Returns:
            `BatchFeature` with `input_ids`, `attention_mask` and, when there are images or videos, `pixel_values`
            `(total_tiles, 3, image_size, image_size)` in placeholder order and `num_tiles` (per image; 1 per frame).
        """
        if text is None:
            raise ValueError("`text` is required: InternVLProcessor builds token ids around the images.")
        texts = [text] if isinstance(text, str) else list(text)
        if not all(isinstance(sample, str) for sample in texts):
            raise TypeError("`text` must be a str or a list of str.")
        check_texts(texts)

        tokenizer_init_kwargs = {k: v for k, v in self.tokenizer.init_kwargs.items() if k != "padding_side"}
        output_kwargs = self._merge_kwargs(
            InternVLProcessingKwargs, tokenizer_init_kwargs=tokenizer_init_kwargs, **kwargs
        )
        text_kwargs = output_kwargs["text_kwargs"]
        return_tensors = text_kwargs.pop("return_tensors", None)
        return_text_replacement_offsets = bool(
            text_kwargs.pop("return_text_replacement_offsets", None)
            or output_kwargs.get("return_text_replacement_offsets", False)
        )
        sanitize_control_tokens = bool(
            text_kwargs.pop("sanitize_control_tokens", None) or output_kwargs.get("sanitize_control_tokens")
        )
        for key in ("return_mm_token_type_ids",):
            text_kwargs.pop(key, None)
        if sanitize_control_tokens:
            # Marked by `apply_chat_template(..., sanitize_control_tokens=True)`: the tokenizer encodes the marked
            # control tokens as plain text (transformers' `encode_marked_chat`).
            text_kwargs["sanitize_control_tokens"] = True
        check_no_raw_image_tokens(texts, (self.image_start_token, self.image_end_token, self.image_context_token))
        return_mm_token_type_ids = output_kwargs.get("return_mm_token_type_ids", False)

        images_per_sample = _split_per_sample(images, texts, self.image_placeholder, _is_image, "images")
        videos_per_sample = _split_per_sample(videos, texts, self.video_placeholder, _is_video, "videos")

        # Prefixes for samples without placeholders, then a count check per sample.
        prefix_lengths = []
        for index, (sample_images, sample_videos) in enumerate(zip(images_per_sample, videos_per_sample)):
            prefix = ""
            if sample_images and not count_placeholders(texts[index], self.image_placeholder):
                prefix += self.image_prefix(len(sample_images))
            if sample_videos and not count_placeholders(texts[index], self.video_placeholder):
                prefix += (self.video_placeholder + "\n") * len(sample_videos)
            texts[index] = prefix + texts[index]
            prefix_lengths.append(len(prefix))
            for placeholder, items, name in (
                (self.image_placeholder, sample_images, "image"),
                (self.video_placeholder, sample_videos, "video"),
            ):
                count = count_placeholders(texts[index], placeholder)
                if count != len(items):
                    raise ValueError(
                        f"Text {index} has {count} {placeholder} placeholder(s) but {len(items)} {name}(s) were given "
                        f"for it."
                    )

        has_images = any(images_per_sample)
        has_videos = any(videos_per_sample)
        if (has_images or has_videos) and None in self.image_token_ids:
            raise ValueError(
                f"The tokenizer has no single token for {self.image_start_token!r}, {self.image_end_token!r} or "
                f"{self.image_context_token!r}; it cannot encode images for InternVL."
            )

        image_chunks = self._process_images_per_sample(images_per_sample, output_kwargs["images_kwargs"])
        video_chunks = self._process_all_videos(videos_per_sample, output_kwargs["videos_kwargs"])

        # Walk the placeholders of every text in order: expand them and collect pixels in the same order.
        pattern = placeholder_pattern(self.image_placeholder, self.video_placeholder)
        expanded_texts: list[str] = []
        pixel_chunks: list[torch.Tensor] = []
        num_tiles: list[int] = []
        # Per text, where each placeholder of the text as given (`span`) ended up in the expanded text (`new_span`);
        # an added prefix is one insertion at 0. transformers shifts assistant-mask character spans with these.
        replacement_offsets: list[list[dict[str, tuple[int, int]]]] = []
        for index, sample_text in enumerate(texts):
            sample_image_chunks = iter(image_chunks[index])
            sample_video_chunks = iter(video_chunks[index])
            segments = []
            for piece in pattern.split(sample_text):
                output = piece
                if piece == self.image_placeholder:
                    pixels = next(sample_image_chunks)
                    output = self.image_tokens(pixels.shape[0])
                    pixel_chunks.append(pixels)
                    num_tiles.append(int(pixels.shape[0]))
                elif piece == self.video_placeholder:
                    frames = next(sample_video_chunks)
                    # Frame lines with one-tile images (placeholders in the user's text are not re-scanned).
                    frame_lines = self.video_prompt(int(frames.shape[0]))
                    output = frame_lines.replace(self.image_placeholder, self.image_tokens(1))
                    pixel_chunks.append(frames)
                    num_tiles.extend([1] * int(frames.shape[0]))
                segments.append((piece, output, piece in (self.image_placeholder, self.video_placeholder)))
            expanded, offsets = _expansion_offsets(segments, prefix_lengths[index])
            replacement_offsets.append(offsets)
            expanded_texts.append(expanded)

        if sanitize_control_tokens and text_kwargs.get("add_special_tokens", True):
            before, after = special_tokens_around_text(self.tokenizer)
            expanded_texts = [before + sample + after for sample in expanded_texts]
            replacement_offsets = [_shift_for_inserted_prefix(offsets, len(before)) for offsets in replacement_offsets]
            text_kwargs["add_special_tokens"] = False
        text_inputs = self.tokenizer(expanded_texts, **text_kwargs)
        self._check_special_mm_tokens(expanded_texts, text_inputs, modalities=["image"])
        data = dict(text_inputs)
        if return_text_replacement_offsets:
            data["text_replacement_offsets"] = replacement_offsets
        if return_mm_token_type_ids:
            data["mm_token_type_ids"] = self.create_mm_token_type_ids(text_inputs["input_ids"])
        if pixel_chunks:
            data["pixel_values"] = torch.cat(pixel_chunks, dim=0)
            data["num_tiles"] = num_tiles
        elif return_tensors == "pt":
            # Same keys with or without images, so that text-only and image samples can be collated into one batch
            # (transformers' pipelines require it); the model treats zero tiles as no image.
            size = self.image_size
            data["pixel_values"] = torch.zeros((0, 3, size, size))
            data["num_tiles"] = torch.zeros((0,), dtype=torch.long)
        return BatchFeature(data=data, tensor_type=return_tensors, skip_tensor_conversion=["text_replacement_offsets"])

    def _process_images_per_sample(
        self, images_per_sample: list[list[Any]], images_kwargs: dict[str, Any]
    ) -> list[list[torch.Tensor]]:
        """Tile the images of all samples in one call (each sample shares its own tile budget); returns per sample,
        per image, its tiles `(num_tiles, 3, image_size, image_size)`."""
        images_kwargs = {key: value for key, value in images_kwargs.items() if key != "return_tensors"}
        samples = [sample_images for sample_images in images_per_sample if sample_images]
        if not samples:
            return [[] for _ in images_per_sample]
        num_images = sum(len(sample_images) for sample_images in samples)
        outputs = self.image_processor(images=samples, return_tensors="pt", **images_kwargs)
        pixel_values = torch.as_tensor(outputs["pixel_values"])
        tiles_per_image = [int(n) for n in torch.as_tensor(outputs["num_tiles"]).reshape(-1).tolist()]
        if len(tiles_per_image) != num_images or sum(tiles_per_image) != pixel_values.shape[0]:
            raise ValueError(
                f"The image processor returned num_tiles={tiles_per_image} and {pixel_values.shape[0]} tiles for "
                f"{num_images} images."
            )
        per_image = iter(torch.split(pixel_values, tiles_per_image, dim=0))
        return [[next(per_image) for _ in sample_images] for sample_images in images_per_sample]

    def _process_all_videos(
        self, videos_per_sample: list[list[Any]], videos_kwargs: dict[str, Any]
    ) -> list[list[torch.Tensor]]:
        """Sample and preprocess all videos of the batch at once; returns per sample, per video frames."""
        flat_videos = [video for sample_videos in videos_per_sample for video in sample_videos]
        if not flat_videos:
            return [[] for _ in videos_per_sample]
        videos_kwargs = {key: value for key, value in videos_kwargs.items() if key != "return_tensors"}
        outputs = self.video_processor(videos=flat_videos, return_tensors="pt", **videos_kwargs)
        frames = torch.as_tensor(outputs["pixel_values_videos"])
        frames_per_video = [int(n) for n in torch.as_tensor(outputs["num_frames"]).reshape(-1).tolist()]
        if len(frames_per_video) != len(flat_videos) or sum(frames_per_video) != frames.shape[0]:
            raise ValueError(
                f"The video processor returned num_frames={frames_per_video} and {frames.shape[0]} frames for "
                f"{len(flat_videos)} videos."
            )
        per_video = iter(torch.split(frames, frames_per_video, dim=0))
        return [[next(per_video) for _ in sample_videos] for sample_videos in videos_per_sample]

    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        """transformers' `apply_chat_template`, where a literal `<image>` / `<video>` inside a typed text item
        (`{"type": "text", "text": ...}`) is text, not a placeholder: only `{"type": "image"}` / `{"type": "video"}`
        items are images and videos (see `control_tokens`). With `tokenize=False` the rendered string keeps the
        escape character (U+F0002) before such text, so that passing it to the processor keeps it text.

        `sanitize_control_tokens=True` (needs `tokenize=True`) encodes the control tokens in the messages
        (`<|im_start|>`, `<|im_end|>`, `<img>`, `<IMG_CONTEXT>`, ...) as plain text; the default (`False`, as in
        transformers and the original `chat()`) lets message text write them, except the image tokens, which the
        processor refuses (`ValueError`)."""
        conversation = escape_placeholders_in_messages(conversation, (self.image_placeholder, self.video_placeholder))
        return super().apply_chat_template(conversation, chat_template, **kwargs)

    # ---- saving / loading ----------------------------------------------------------------------------------------

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """`ProcessorMixin.save_pretrained`, atomic (`atomic_save.atomic_save_directory`): written to a temporary
        folder beside `save_directory` and swapped in; the folder's other files (the model's weights and config
        included) are kept. Returns the saved files' paths under `save_directory`."""
        if push_to_hub:
            kwargs.setdefault("repo_id", os.path.basename(os.path.normpath(save_directory)))
        with atomic_save_directory(save_directory, keep_old_weights=True) as staging:
            files = super().save_pretrained(staging, push_to_hub=push_to_hub, **kwargs)
        if isinstance(files, (list, tuple)):
            files = [
                os.path.join(os.fspath(save_directory), os.path.relpath(path, staging))
                if isinstance(path, str)
                else path
                for path in files
            ]
        return files

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output["processor_class"] = _SAVED_CLASS_NAME
        return output

    @classmethod
    def get_processor_dict(cls, pretrained_model_name_or_path, **kwargs) -> tuple[dict[str, Any], dict[str, Any]]:
        """The saved processor config, or, for an original OpenGVLab directory (no processor_config.json), one built
        from its `config.json` (template, system message, tile size, tiling settings)."""
        hub_kwargs = {key: kwargs[key] for key in HUB_KWARGS if key in kwargs}
        processor_dict, kwargs = super().get_processor_dict(pretrained_model_name_or_path, **kwargs)
        if processor_dict.get("processor_class") in _PROCESSOR_CLASS_NAMES:
            return processor_dict, kwargs

        model_config = _load_model_config(pretrained_model_name_or_path, **hub_kwargs)
        if model_config is None:
            raise OSError(
                f"{pretrained_model_name_or_path} has neither an InternVL {PROCESSOR_NAME} nor a {CONFIG_NAME}: "
                f"cannot derive the processor settings."
            )
        if "chat_template" in processor_dict:
            logger.info(
                "Ignoring the chat template files of an original-layout checkpoint; the template is built from the "
                "config's conversation template."
            )
        processor_dict = dict(processor_kwargs_from_model_config(model_config))
        processor_dict["image_processor"] = image_processor_kwargs_from_model_config(model_config)
        processor_dict["video_processor"] = video_processor_kwargs_from_model_config(model_config)
        return processor_dict, kwargs

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        """Tokenizer with AutoTokenizer; image and video processors from the processor config (our own classes, so
        that class names shared with transformers' InternVL port cannot pick the wrong class).

        Keyword arguments of `from_pretrained` are routed by name (see `split_from_pretrained_kwargs`): tiling
        options under their original names set the image processor's defaults, `num_segments` the video
        processor's, processor init arguments the processor's; the rest must be loading or tokenizer options.

        Raises:
            TypeError: a keyword argument is none of these (it is never stored in the tokenizer).
            ValueError, OSError: the tokenizer is not the class tokenizer_config.json names, or has no vocabulary
                file (see `tokenizer_loading.check_tokenizer`).
        """
        from .tokenizer_loading import load_tokenizer

        processor_dict = processor_dict or {}
        tokenizer_kwargs, image_options, video_options = split_from_pretrained_kwargs(
            cls, pretrained_model_name_or_path, kwargs
        )
        tokenizer_kwargs.setdefault("padding_side", "left")
        # Left padding: InternVL generates (the original batch_chat sets it too), and pipelines collate batches with
        # the tokenizer's own padding side.
        # The class tokenizer_config.json names, with its vocabulary (Phi-3 folders: LlamaTokenizer + tokenizer.model);
        # `load_tokenizer` raises rather than fall back to another class or an empty vocabulary.
        tokenizer = load_tokenizer(pretrained_model_name_or_path, **tokenizer_kwargs)

        sub_processors = []
        for name, factory, options in (
            ("image_processor", _image_processor_class, image_options),
            ("video_processor", _video_processor_class, video_options),
        ):
            sub_processor_class = factory()
            config = dict(processor_dict.get(name) or {})
            # `from_pretrained(..., max_dynamic_patch=6)` and the like set the sub-processor's default; an option
            # given under another name replaces the saved value under every name.
            for key, value in options.items():
                for alias, canonical in {**IMAGE_PROCESSOR_OPTIONS, **VIDEO_PROCESSOR_OPTIONS}.items():
                    if canonical == key:
                        config.pop(alias, None)
                config[key] = value
            type_key = f"{name}_type"
            saved_type = config.pop(type_key, None)
            if saved_type is not None and saved_type != sub_processor_class.__name__:
                raise ValueError(
                    f"The saved {name} is a {saved_type}; InternVLProcessor needs {sub_processor_class.__name__}."
                )
            config.pop("processor_class", None)
            if saved_type is not None and hasattr(sub_processor_class, "from_dict"):
                sub_processors.append(sub_processor_class.from_dict(config))
            else:
                sub_processors.append(_construct(sub_processor_class, config))
        image_processor, video_processor = sub_processors
        return [image_processor, tokenizer, video_processor]


def _load_model_config(pretrained_model_name_or_path, **hub_kwargs) -> dict[str, Any] | None:
    config_file = cached_file(
        pretrained_model_name_or_path,
        CONFIG_NAME,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
        **hub_kwargs,
    )
    return _read_json(config_file)


InternVLProcessor = InternVLChatProcessor

__all__ = ["InternVLChatProcessor", "InternVLProcessor"]
