"""A torch `Dataset` for InternVL fine-tuning data: the original JSONL + meta format and transformers' `messages`.

Source of the behaviour: `LazySupervisedDataset` in `internvl_chat/internvl/train/internvl_chat_finetune.py` and
`build_datasets` (meta file). Differences, on purpose:

* Bad samples (missing image or video, `<image>` tags not matching the images, empty conversation, sample longer
  than `max_length`, invalid JSON) are skipped deterministically (the next row is used) and logged once with the
  file, the line and the reason; `skipped` holds them. The original retries a random row and prints the error.
* Tag placement of a single image or video: when no human turn holds the tag, `<image>\\n` / `<video>\\n` is
  prepended to the first HUMAN turn; a tag already in any human turn is used where it is. The original checks and
  prepends to `conversations[0]` only, whatever its role: with a leading system turn it writes the tag into the
  system text (the sample then keeps a literal `<image>` there, or is rejected when the human turn had no tag),
  and a tag in a later human turn gets a second tag prepended to the first turn (the image goes there, the later
  tag stays literal text). A video's `<video>\\n` is replaced by the frame lines in the first human turn only (as
  the original does in `conversations[0]`); a `<video>` tag only in a later turn leaves the frames untagged and
  the sample is skipped.
* `data_augment` (JPEG re-encoding) draws its qualities from a generator seeded per sample (the original's are
  drawn anew each time); like the original it re-encodes the tiles of dynamic tiling, and whole images (video frames,
  `dynamic_image_size` off) before their resize.
* Video frames follow the original training rule (`training.frame_sampling`: a count drawn in
  `[min_num_frame, max_num_frame]`, positions by `sampling_method`), with random generators seeded per sample from
  `seed` and the index (the same frames every epoch; the original draws again each time).
"""

from __future__ import annotations

import io
import json
import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers.utils import logging

from ..chat_templates import DEFAULT_NUM_IMAGE_TOKEN
from ..processing.image_loading import MAX_IMAGES_PER_SAMPLE, load_image_source
from ..processing.input_validation import check_int
from ..processing.video_decoding import check_num_segments
from .frame_sampling import (
    check_frame_range,
    check_sampling_method,
    clip_frame_range,
    sort_frame_files,
    training_frame_indices,
)
from .labels import IMAGE_PLACEHOLDER, SampleError, tokenize_conversation, video_frame_tags
from .messages import VIDEO_PLACEHOLDER, fill_images, image_column, messages_to_conversations
from .meta_files import RowSequence, _Row, load_meta, read_jsonl

logger = logging.get_logger(__name__)

_FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class SkipReport:
    """Skipped samples: `reasons[source] = reason` where source is `"file.jsonl:line"` or `"records[i]"`."""

    reasons: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.reasons)

    def counts(self) -> dict[str, int]:
        """Skipped samples per kind of reason (the reason with paths and numbers replaced by `*`, text after ':'
        dropped)."""
        out: dict[str, int] = {}
        for reason in self.reasons.values():
            key = re.sub(r"\S*/\S*|\d+", "*", reason.split(":")[0])
            out[key] = out.get(key, 0) + 1
        return out


class InternVLSupervisedDataset(torch.utils.data.Dataset):
    """Samples for supervised fine-tuning, with labels as the original and tiles as the original training.

    Each item is a dict: `input_ids` `(seq,)` long, `labels` `(seq,)` long (-100 = no loss), `pixel_values`
    `(tiles, 3, S, S)` float32, `image_flags` `(tiles,)` long (0 for the dummy tile of text-only samples).

    Tile budget (original `LazySupervisedDataset`): one image gets `max_dynamic_patch` grid tiles (+ thumbnail);
    N images get `max(1, max_dynamic_patch // N)` each; video frames one tile each. Text-only samples get one white
    224x224 image tiled to one tile with `image_flags=0` as in the original: the model drops it, and the vision
    tower still takes part in the graph, which distributed training (DDP, DeepSpeed) needs when a batch has no image.

    Args:
        rows: JSONL rows already parsed (dicts), or use `from_meta` / `from_jsonl`. A row has either
            `conversations` (+ `image` str or list, or `video`) or `messages` (transformers' chat format).
        tokenizer: the checkpoint's tokenizer.
        image_processor: an `InternVLChatImageProcessor` (e.g. `AutoProcessor.from_pretrained(...).image_processor`).
        template: the checkpoint's `config.template`.
        num_image_token: `<IMG_CONTEXT>` tokens per tile (`config.num_image_token`, 256 for InternVL 2.5).
        max_length: longest sample in tokens (`None`: `tokenizer.model_max_length` when below 1e6, else no limit).
        truncate: `False` (default): longer samples are skipped; `True`: truncated as the original does (skipped
            only when the cut falls inside an image).
        num_video_frames: frames per video when `min_num_frame` / `max_num_frame` are not given (both = this; one
            end given alone: the other is `num_video_frames` clipped to it).
        min_num_frame, max_num_frame: the original's range of the per-sample frame count (its defaults are 8 and 32).
        sampling_method: the original's `sampling_method`: `"rand"` (default, as the original's training),
            `"middle"` or `"fps<rate>"` (`training.frame_sampling`).
        root, max_dynamic_patch, data_augment: defaults for rows not coming from a meta file.
        seed: seed of the JPEG augmentation (`data_augment`) and of the video frame choice (per sample: with the
            index).
    """

    def __init__(
        self,
        rows: Sequence[dict],
        tokenizer,
        image_processor,
        template: str,
        num_image_token: int = DEFAULT_NUM_IMAGE_TOKEN,
        max_length: int | None = None,
        truncate: bool = False,
        num_video_frames: int = 8,
        min_num_frame: int | None = None,
        max_num_frame: int | None = None,
        sampling_method: str = "rand",
        root: str = "",
        max_dynamic_patch: int = 12,
        data_augment: bool = False,
        seed: int = 0,
    ) -> None:
        if not isinstance(rows, RowSequence):  # a `RowSequence` (from_meta / from_jsonl) builds repeats on access
            rows = [
                r if isinstance(r, _Row) else _Row(f"records[{i}]", r, root, max_dynamic_patch, data_augment)
                for i, r in enumerate(rows)
            ]
        if not len(rows):
            raise ValueError("`rows` is empty: the dataset has no samples.")
        self.rows = rows
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.template = template
        self.num_image_token = check_int("num_image_token", num_image_token)
        if max_length is None and getattr(tokenizer, "model_max_length", None) and tokenizer.model_max_length < 1e6:
            max_length = int(tokenizer.model_max_length)
        self.max_length = None if max_length is None else check_int("max_length", max_length)
        self.truncate = truncate
        # Frame counts are ints in 1..MAX_NUM_SEGMENTS (TypeError / ValueError naming the argument): a larger
        # `max_num_frame` would make every longer video an "unreadable" skipped sample, or read a whole frame folder.
        self.num_video_frames = check_num_segments("num_video_frames", num_video_frames)
        if min_num_frame is not None:
            min_num_frame = check_num_segments("min_num_frame", min_num_frame)
        if max_num_frame is not None:
            max_num_frame = check_num_segments("max_num_frame", max_num_frame)
        # An end not given follows `num_video_frames`, clipped so that one given end alone never conflicts with it.
        self.max_num_frame = max_num_frame if max_num_frame is not None else max(min_num_frame or 0, num_video_frames)
        self.min_num_frame = min_num_frame if min_num_frame is not None else min(self.max_num_frame, num_video_frames)
        check_frame_range(self.min_num_frame, self.max_num_frame)
        check_sampling_method(sampling_method)
        self.sampling_method = sampling_method
        self.seed = seed
        self.skipped = SkipReport()
        self._bad_lines: set[str] = set()  # annotation lines that failed in some copy

    @classmethod
    def from_jsonl(cls, path: str | os.PathLike, *args, root: str = "", **kwargs) -> InternVLSupervisedDataset:
        """Rows from one JSONL file; image paths are relative to `root`."""
        max_patch, augment = kwargs.pop("max_dynamic_patch", 12), kwargs.pop("data_augment", False)
        rows = read_jsonl(str(path), root, max_patch, augment, 1, RowSequence())
        return cls(rows, *args, **kwargs)

    @classmethod
    def from_meta(cls, meta_path: str | os.PathLike, *args, max_dynamic_patch: int = 12, **kwargs):
        """Rows of all datasets of an original meta file, in its order, each with its `repeat_time`,
        `max_dynamic_patch` (default: the argument) and `data_augment` (`build_datasets`)."""
        rows = RowSequence()
        for name, entry in load_meta(meta_path).items():  # values checked there (types, ranges)
            read_jsonl(
                entry["annotation"],
                entry["root"],
                entry.get("max_dynamic_patch", max_dynamic_patch),
                entry.get("data_augment", False),
                entry.get("repeat_time", 1),
                rows,
                where=f"meta file {meta_path}: dataset {name!r}",
            )
        return cls(rows, *args, **kwargs)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """The sample at `index`, or the next good one when it is bad (logged, recorded in `skipped`).

        Raises `RuntimeError` when every row is bad; with repeats (`repeat_time`), once every annotation line has
        failed in some copy, so that a dataset of bad rows repeated 10**12 times fails at once instead of trying each
        copy."""
        distinct = getattr(self.rows, "distinct_rows", len(self.rows))
        for offset in range(len(self.rows)):
            row = self.rows[(index + offset) % len(self.rows)]
            if row.source in self.skipped.reasons:
                continue
            try:
                return self.build_sample(row, index)
            except (SampleError, OSError, json.JSONDecodeError) as error:
                reason = f"{type(error).__name__}: {error}" if not isinstance(error, SampleError) else str(error)
                self.skipped.reasons[row.source] = reason
                logger.warning(f"Skipping sample {row.source}: {reason} ({len(self.skipped)} skipped so far).")
                self._bad_lines.add(row.source.split("#")[0])
                if len(self._bad_lines) >= distinct:
                    break
        raise RuntimeError(f"All {len(self.rows)} samples are bad; reasons: {self.skipped.counts()}.")

    def scan(self) -> SkipReport:
        """Build every sample once (to find the bad ones before training); returns `skipped`."""
        for index in range(len(self.rows)):
            self[index]
        return self.skipped

    # ------------------------------------------------------------------------------------------------------------

    def build_sample(self, row: _Row, index: int = 0) -> dict[str, torch.Tensor]:
        """One sample from one row; raises `SampleError` / `OSError` for bad data."""
        item = json.loads(row.text) if isinstance(row.text, str) else row.text
        check_row_structure(item)
        if "messages" in item:
            conversations, images, video = messages_to_conversations(item["messages"])
            images = fill_images(images, image_column(item, images))
        else:
            conversations = [dict(turn) for turn in item.get("conversations") or []]
            images, video = item.get("image"), item.get("video")
            images = [] if images in (None, "", []) else images
        if not conversations:
            raise SampleError("empty conversation")
        flags = 1
        if images and isinstance(images, (str, os.PathLike)):  # one image: the original adds a missing tag
            images = [images]
            _add_missing_tag(conversations, IMAGE_PLACEHOLDER)
        if images:
            if len(images) > MAX_IMAGES_PER_SAMPLE:  # before decoding any (the processor would refuse them after)
                raise SampleError(f"{len(images)} images, more than MAX_IMAGES_PER_SAMPLE ({MAX_IMAGES_PER_SAMPLE})")
            loaded = [self._load_image(row.root, image) for image in images]
            if row.data_augment and not getattr(self.image_processor, "dynamic_image_size", True):
                loaded = self._jpeg_degrade_images(loaded, index)  # whole images, before the resize
            budget = row.max_dynamic_patch
            tiles = self.image_processor(
                images=loaded, **self._tile_budget(budget), max_total_tiles=budget, return_tensors="pt"
            )
            pixel_values, num_tiles = tiles["pixel_values"], [int(n) for n in tiles["num_tiles"]]
        elif video:
            frames = self._load_video(row.root, video, index, clip=item.get("clip"))
            if row.data_augment:
                frames = self._jpeg_degrade_images(frames, index)  # whole frames, before the resize
            first = _add_missing_tag(conversations, VIDEO_PLACEHOLDER)
            first["value"] = first["value"].replace(VIDEO_PLACEHOLDER + "\n", video_frame_tags(len(frames)) + "\n")
            tiles = self.image_processor(
                images=frames, **self._tile_budget(1), max_total_tiles=None, return_tensors="pt"
            )
            pixel_values, num_tiles = tiles["pixel_values"], [1] * len(frames)
        else:
            tags = sum(turn["value"].count(IMAGE_PLACEHOLDER) for turn in conversations if turn["from"] == "human")
            if tags:  # the original would train on the literal tag text
                raise SampleError(f"{tags} '<image>' tags in human turns but 0 images")
            white = Image.new("RGB", (224, 224), (255, 255, 255))
            tiles = self.image_processor(images=white, **self._tile_budget(1), return_tensors="pt")
            pixel_values = tiles["pixel_values"]
            num_tiles, flags = [], 0
        if row.data_augment and images and getattr(self.image_processor, "dynamic_image_size", True):
            pixel_values = self._jpeg_degrade(pixel_values, index)  # tiles (thumbnail included)
        sample = tokenize_conversation(
            conversations,
            self.tokenizer,
            self.template,
            num_image_tokens=[self.num_image_token * n for n in num_tiles],
            max_length=self.max_length if self.truncate else None,
        )
        if self.max_length is not None and len(sample.input_ids) > self.max_length:
            raise SampleError(f"over-length sample: {len(sample.input_ids)} tokens > max_length={self.max_length}")
        return {
            "input_ids": torch.tensor(sample.input_ids, dtype=torch.long),
            "labels": torch.tensor(sample.labels, dtype=torch.long),
            "pixel_values": torch.as_tensor(pixel_values, dtype=torch.float32),
            "image_flags": torch.full((pixel_values.shape[0],), flags, dtype=torch.long),
        }

    @staticmethod
    def _load_image(root: str, image: Any) -> Image.Image:
        if isinstance(image, Image.Image):
            return image.convert("RGB")
        if not isinstance(image, (str, os.PathLike)):
            raise SampleError(f"image must be a path or a PIL image, got {type(image).__name__}")
        path = os.path.join(root, image)
        if not os.path.isfile(path):
            raise SampleError(f"missing image file {path}")
        return _open_rgb(path)

    def _tile_budget(self, budget: int) -> dict[str, int]:
        """Per-call tile options for a budget of `budget` grid tiles. A processor `min_dynamic_patch` above the budget
        makes every image one plain tile, as the original's empty candidate grid set does (`dynamic_preprocess`
        falls back to 1x1); the processor itself refuses min > max, so both are set to 1 then."""
        if getattr(self.image_processor, "min_dynamic_patch", 1) > budget:
            return {"min_dynamic_patch": 1, "max_dynamic_patch": 1}
        return {"max_dynamic_patch": budget}

    def _load_video(self, root: str, video: Any, index: int, clip: Any = None) -> list[Image.Image]:
        """Frames of sample `index` (`training.frame_sampling`); a video file's `clip` `[start, end]` (seconds, the
        row's `clip`) limits them to that span as in the original; frame folders ignore it, as there."""
        from ..processing.video_decoding import FrameIndexReader, read_video_frames

        path = os.path.join(root, video)
        # numpy's `RandomState` takes seeds in [0, 2**32): a larger `seed` (e.g. 12345 * 1_000_003) or a negative one
        # would raise for every video; small seeds are unchanged.
        seed = (self.seed * 1_000_003 + index) % 2**32
        frames_range = (self.min_num_frame, self.max_num_frame, self.sampling_method, seed)
        if os.path.isdir(path):  # a folder of frames (original `read_frames_folder`)
            names = sort_frame_files([n for n in os.listdir(path) if n.lower().endswith(_FRAME_SUFFIXES)])
            if not names:
                raise SampleError(f"video folder {path} has no frames")
            indices = training_frame_indices(len(names), *frames_range, is_folder=True)
            if not indices:
                raise SampleError(
                    f"no frame of video folder {path} selected by sampling_method={self.sampling_method!r}"
                )
            return [_open_rgb(os.path.join(path, names[i])) for i in indices]
        if not os.path.isfile(path):
            raise SampleError(f"missing video file {path}")
        try:
            with FrameIndexReader(path, "video") as reader:  # original `read_frames_decord`
                num_frames, fps = reader.num_frames, reader.fps
        except (ValueError, Image.DecompressionBombError) as error:  # damaged, no frames, too big: a bad sample
            raise SampleError(f"unreadable video file {path}: {error}") from error
        first = 0
        if clip is not None:
            try:
                first, num_frames = clip_frame_range(clip, fps, num_frames)
            except ValueError as error:
                raise SampleError(f"video {path}: {error}") from error
        # Outside the `try`: a ValueError of the frame choice (bad settings) is an error, not a skipped sample.
        indices = [first + i for i in training_frame_indices(num_frames, *frames_range, is_folder=False, fps=fps)]
        if not indices:
            raise SampleError(f"no frame of video {path} selected by sampling_method={self.sampling_method!r}")
        try:
            return read_video_frames(path, indices=indices).frames
        except (ValueError, Image.DecompressionBombError) as error:  # damaged, too big: a bad sample
            raise SampleError(f"unreadable video file {path}: {error}") from error

    def _jpeg_degrade_images(self, images: list[Image.Image], index: int) -> list[Image.Image]:
        """The original `data_augment` where its transform gets whole images (video frames, `dynamic_image_size`
        off): each image re-encoded as JPEG at a random quality in 75..100 BEFORE the resize to the tile size."""
        rng = random.Random(self.seed * 1_000_003 + index)
        return [_jpeg(image, rng.randint(75, 100)) for image in images]

    def _jpeg_degrade(self, pixel_values: torch.Tensor, index: int) -> torch.Tensor:
        """The original `data_augment` on dynamic tiles: every tile (thumbnail included) re-encoded as JPEG at a
        random quality in 75..100 (`build_transform(is_train=True)`, dataset.py: the transform gets the 448 px crops);
        the tile's uint8 pixels are recovered exactly first."""
        mean = torch.tensor(self.image_processor.image_mean).view(3, 1, 1)
        std = torch.tensor(self.image_processor.image_std).view(3, 1, 1)
        rng = random.Random(self.seed * 1_000_003 + index)
        out = []
        for tile in pixel_values:
            pixels = ((tile * std + mean) * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
            degraded = np.asarray(_jpeg(Image.fromarray(pixels), rng.randint(75, 100)), dtype=np.float32) / 255.0
            out.append((torch.from_numpy(degraded).permute(2, 0, 1) - mean) / std)
        return torch.stack(out)


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    """`image` saved as JPEG at `quality` and decoded again (original `simulate_jpeg_degradation`)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as handle:
        return handle.convert("RGB")


def _open_rgb(path: str) -> Image.Image:
    """The image file `path` as RGB, read by the processor's loader (`load_image_source`: regular files only, Pillow's
    pixel limit kept); an undecodable file or a decompression bomb is a bad sample (`SampleError`)."""
    try:
        image = load_image_source(path, "image")
    except Image.DecompressionBombError as error:
        raise SampleError(f"image file {path} has too many pixels: {error}") from error
    except ValueError as error:
        raise SampleError(f"unreadable image file {path}: {error}") from error
    return image.convert("RGB")


# Token strings the processor and the labels write themselves; in data they would be encoded as control tokens.
_RESERVED_STRINGS = ("<IMG_CONTEXT>", "<img>", "</img>", "<|im_start|>", "<|im_end|>")


def check_row_structure(item: Any) -> None:
    """Raise `SampleError` naming what is wrong when a row is not an InternVL training row (types of `conversations`
    / `messages` / `image` / `video`, turns without a string `from` / `value`, reserved token strings in text)."""
    if not isinstance(item, dict):
        raise SampleError(f"a row must be a JSON object, got {type(item).__name__}")
    if "messages" in item:
        messages = item["messages"]
        if not isinstance(messages, list) or not all(isinstance(message, dict) for message in messages):
            raise SampleError("`messages` must be a list of objects")
        texts = []
        for index, message in enumerate(messages):
            content = message.get("content")
            if isinstance(content, str):
                texts.append(content)
            elif isinstance(content, list) and all(isinstance(part, dict) for part in content):
                for part in content:
                    if part.get("type") == "text" and not isinstance(part.get("text", ""), str):
                        raise SampleError(
                            f"messages[{index}].content has a text part whose `text` is "
                            f"{type(part['text']).__name__}, not a string"
                        )
                texts += [part["text"] for part in content if isinstance(part.get("text"), str)]
            else:
                raise SampleError(f"messages[{index}].content must be a string or a list of objects")
    else:
        conversations = item.get("conversations")
        if conversations is not None and not isinstance(conversations, list):
            raise SampleError(f"`conversations` must be a list, got {type(conversations).__name__}")
        for index, turn in enumerate(conversations or []):
            if not isinstance(turn, dict) or not isinstance(turn.get("from"), str):
                raise SampleError(f"conversations[{index}] must be an object with a string `from`")
            if not isinstance(turn.get("value"), str):
                raise SampleError(
                    f"conversations[{index}].value must be a string, got {type(turn.get('value')).__name__}"
                )
        texts = [turn["value"] for turn in conversations or []]
        image = item.get("image")

        def is_image(value: Any) -> bool:
            return isinstance(value, (str, os.PathLike, Image.Image))

        if image is not None and not (
            is_image(image) or (isinstance(image, list) and all(is_image(value) for value in image))
        ):
            raise SampleError(f"`image` must be a path or a list of paths, got {type(image).__name__}")
        if item.get("video") is not None and not isinstance(item["video"], (str, os.PathLike)):
            raise SampleError(f"`video` must be a path, got {type(item['video']).__name__}")
    for text in texts:
        for reserved in _RESERVED_STRINGS:
            if reserved in text:
                raise SampleError(f"the text holds the reserved token string {reserved!r}")


def _add_missing_tag(conversations: list[dict], tag: str) -> dict:
    """Prepend `tag + "\\n"` to the first human turn when no human turn has `tag`; returns that first human turn.

    The original prepends to `conversations[0]` whatever its role, so a leading system turn got a literal
    `<image>` tag (left as text): here the tag goes to the first human turn instead."""
    humans = [turn for turn in conversations if turn["from"] == "human"]
    if not humans:
        raise SampleError("no human turn to hold the image or video")
    if not any(tag in turn["value"] for turn in humans):
        humans[0]["value"] = tag + "\n" + humans[0]["value"]
    return humans[0]
