"""Multimodal token accounting of `InternVLChatProcessor`, as transformers' `ProcessorMixin` contract names it.

* `num_multimodal_tokens` is `_get_num_multimodal_tokens(image_sizes=..., video_sizes=...)` (what vLLM and TRL ask
  before they process: tokens and tiles per image, tokens per video), computed from sizes alone with the processor's
  own tiling rule (`image_processing_internvl`: the original's grid choice, thumbnail and per-sample tile budget);
* `mm_token_type_ids` is the `mm_token_type_ids` the processor returns: `1` on the tokens of an image
  (`<img>`, `<IMG_CONTEXT>` x (num_image_token x tiles), `</img>`), `2` on those of a video frame, `0` elsewhere.

Counted tokens are the image tokens only: an image is `2 + num_image_token * tiles` tokens; a video frame is one
tile, `2 + num_image_token` tokens (its `Frame-i: ` label and line break are text, type 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers.processing_utils import MultiModalData

from .image_processing_options import resolve_image_options
from .processor_inputs import check_tile_side
from .video_decoding import MAX_NUM_SEGMENTS, check_num_segments
from .video_processing_internvl import call_image_size, call_num_segments

__all__ = ["mm_token_type_ids", "num_multimodal_tokens", "placeholder_kinds"]

IMAGE_TYPE, VIDEO_TYPE = 1, 2  # ProcessorMixin.create_mm_token_type_ids: 0 text, 1 image, 2 video, 3 audio


def _is_size(value: Any) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) >= 2
        and not any(isinstance(item, Sequence) for item in value)
    )


def _check_dims(name: str, value: Any, dims: tuple[str, ...]) -> tuple[int, ...]:
    """`value` as `len(dims)` positive ints (numpy / torch ints accepted) or a ValueError / TypeError naming it."""
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != len(dims):
        raise ValueError(f"`{name}` must be ({', '.join(dims)}), got {value!r}.")
    out = []
    for dim, item in zip(dims, value, strict=True):
        if isinstance(item, bool) or not hasattr(item, "__index__"):
            raise TypeError(f"`{name}`: {dim} must be an int, got {type(item).__name__} ({item!r}).")
        if int(item) < 1:
            raise ValueError(f"`{name}`: {dim} must be >= 1, got {int(item)}.")
        out.append(int(item))
    return tuple(out)


def _image_samples(image_sizes: Any) -> list[list[tuple[int, int]]]:
    """`image_sizes` -> samples of `(height, width)`: a flat list is one image per sample (transformers'
    convention: each count is that of the image alone), a list of lists gives the images of each sample."""
    if not isinstance(image_sizes, Sequence) or isinstance(image_sizes, str):
        raise TypeError(f"`image_sizes` must be a list of (height, width), got {type(image_sizes).__name__}.")
    if all(_is_size(item) for item in image_sizes):
        return [[_check_dims(f"image_sizes[{i}]", item, ("height", "width"))] for i, item in enumerate(image_sizes)]
    samples = []
    for s, sample in enumerate(image_sizes):
        if _is_size(sample) or not isinstance(sample, Sequence) or isinstance(sample, str):
            raise ValueError(
                "`image_sizes` must be a list of (height, width), or a list with one such list per sample; "
                f"image_sizes[{s}] is {sample!r}."
            )
        samples.append(
            [_check_dims(f"image_sizes[{s}][{i}]", item, ("height", "width")) for i, item in enumerate(sample)]
        )
    return samples


def _frames_used(videos_kwargs: dict[str, Any], num_frames: int, default_segments: int) -> int:
    """Frames the processor turns a decoded video of `num_frames` frames into (`InternVLChatVideoProcessor`): when
    the call samples (`num_segments` / `num_frames`, a `bound` or `do_sample_frames=True`; never with
    `do_sample_frames=False`) the `num_segments` sampled frames (`default_segments`, the video processor's, unless
    given), else every frame given."""
    segments = call_num_segments(videos_kwargs.get("num_segments"), videos_kwargs.get("num_frames"))
    if videos_kwargs.get("fps") is not None:
        raise ValueError("`fps` (sampling at a frame rate) is not how InternVL samples: pass `num_segments`.")
    do_sample_frames = videos_kwargs.get("do_sample_frames")
    samples = segments is not None or videos_kwargs.get("bound") is not None or do_sample_frames is True
    if samples and do_sample_frames is not False:
        return check_num_segments("num_segments", default_segments if segments is None else segments)
    if num_frames > MAX_NUM_SEGMENTS:
        raise ValueError(
            f"A video of {num_frames} frames is more than MAX_NUM_SEGMENTS ({MAX_NUM_SEGMENTS}) tiles; pass "
            "`num_segments` to sample fewer."
        )
    return num_frames


def num_multimodal_tokens(processor: Any, image_sizes=None, video_sizes=None, merged: dict | None = None):
    """`MultiModalData` for images of the given sizes and decoded videos of the given `(frames, height, width)`.

    `num_image_patches` are the tiles per image (thumbnail included), `num_image_tokens` = `2 + num_image_token *
    tiles`, `num_video_tokens` = frames x `(2 + num_image_token)`. `merged` is the processor's `_merge_kwargs` output
    (per-call options under the original names and their aliases: `max_dynamic_patch`, `use_thumbnail`,
    `max_total_tiles`, `num_segments`, ...).

    Raises:
        ValueError, TypeError: a malformed size, or an option the processor itself refuses (a per-call tile side
            other than the processor's `image_size`, disagreeing aliases, `fps`).
    """
    merged = merged or {}
    per_tile = processor.num_image_token
    # numpy / torch arrays of sizes, as lists (`(N, 2)` image sizes, `(N, 3)` video sizes)
    image_sizes = image_sizes.tolist() if hasattr(image_sizes, "tolist") else image_sizes
    video_sizes = video_sizes.tolist() if hasattr(video_sizes, "tolist") else video_sizes
    data: dict[str, list[int]] = {}
    if image_sizes is not None:
        images_kwargs = {k: v for k, v in merged.get("images_kwargs", {}).items() if k != "return_tensors"}
        options = resolve_image_options(processor.image_processor, images_kwargs)
        # The tiles of this side get `num_image_token` tokens each; another side is refused, as the processor does.
        check_tile_side(options["image_size"], processor.image_size, per_tile, "image tiles")
        tiles = [
            plan.num_tiles
            for sample in _image_samples(image_sizes)
            for plan in processor.image_processor._plans_for_sample([(w, h) for h, w in sample], options)
        ]
        data["num_image_patches"] = tiles
        data["num_image_tokens"] = [2 + per_tile * count for count in tiles]
    if video_sizes is not None:
        if not isinstance(video_sizes, Sequence) or isinstance(video_sizes, str):
            raise TypeError(f"`video_sizes` must be a list of (frames, height, width), got {video_sizes!r}.")
        videos_kwargs = merged.get("videos_kwargs", {})
        side = call_image_size(processor.video_processor, videos_kwargs.get("image_size"), videos_kwargs.get("size"))
        check_tile_side(side, processor.image_size, per_tile, "video frames")
        frames = [
            _frames_used(
                videos_kwargs,
                _check_dims(f"video_sizes[{i}]", size, ("frames", "height", "width"))[0],
                processor.video_processor.num_segments,
            )
            for i, size in enumerate(video_sizes)
        ]
        data["num_video_tokens"] = [count * (2 + per_tile) for count in frames]
    return MultiModalData(**data)


def placeholder_kinds(
    texts: list[str], pattern: Any, image_placeholder: str, frames_per_video: Sequence[int]
) -> list[list[int]]:
    """Per text, the type of each image and video frame in placeholder order: `1` for an image placeholder, `2` x
    frames for a video placeholder (`frames_per_video` in batch order); `pattern` finds the real placeholders."""
    frames = iter(frames_per_video)
    return [
        [
            kind
            for found in pattern.findall(text)
            for kind in ([IMAGE_TYPE] if found == image_placeholder else [VIDEO_TYPE] * next(frames))
        ]
        for text in texts
    ]


def mm_token_type_ids(input_ids: Any, kinds_per_sample: list[list[int]], start_id: int, end_id: int) -> list[list[int]]:
    """Per token: `kinds_per_sample[b][k]` (1 image, 2 video frame) from the k-th `start_id` of row `b` through its
    `end_id`, 0 elsewhere (padding included). The processor refuses raw image tokens in the text, so every
    `start_id` ... `end_id` run is one image or frame, in placeholder order.

    Raises:
        ValueError: a row has more or fewer runs than images and frames (the text and the ids disagree).
    """
    rows = []
    for row, kinds in zip(input_ids, kinds_per_sample, strict=True):
        row = row.tolist() if hasattr(row, "tolist") else list(row)
        types, pending, current = [], iter(kinds), 0
        for token in row:
            if token == start_id:
                current = next(pending, None)
                if current is None:
                    raise ValueError(f"The ids hold more image runs than the {len(kinds)} images and frames given.")
            types.append(current)
            if token == end_id:
                current = 0
        if next(pending, None) is not None:
            raise ValueError(
                f"The ids hold fewer image runs than the {len(kinds)} images and frames given, likely cut by "
                "truncation: disable truncation or increase `max_length`."
            )
        rows.append(types)
    return rows
