"""Video processor of InternVL 2.5: the original frame sampling, PyAV decoding of only the sampled frames.

The original (`load_video` in the chat README, `get_index` in `eval/mvbench/evaluate_mvbench.py`) opens the video with
decord, samples `num_segments` frame indices at segment midpoints, and turns every frame into ONE 448 x 448 tile
(`dynamic_preprocess(img, max_num=1)`: a PIL bicubic resize, no thumbnail), normalised like image tiles.

Decoding here uses PyAV and touches only what the sampled frames need (`video_decoding.FrameIndexReader`): frame `i`
is the i-th frame in presentation order, as decord numbers it, found through a packet-timestamp index built once per
file; the reader seeks to the keyframe before it and decodes forward to it, or decodes on to nearby targets.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from transformers.image_processing_utils import BatchFeature
from transformers.processing_utils import Unpack, VideosKwargs
from transformers.utils import logging
from transformers.video_processing_utils import VideoProcessorMixin
from transformers.video_utils import VideoMetadata

from .image_loading import check_timeout, to_rgb_image
from .image_processing_internvl import plan_tiles, tiles_from_plans
from .image_processing_options import (
    IMAGE_SIZE_ALIASES,
    LEGACY_CONFIG_KEYS,
    TilePixelDefaults,
    resolve_pixel_options,
    set_pixel_options,
)
from .input_validation import check_bool, check_image_size, drop_saved_aliases, pop_alias, size_to_int
from .video_decoding import (
    DEFAULT_NUM_SEGMENTS,
    MAX_NUM_SEGMENTS,
    DecodedVideo,
    check_fps,
    check_num_segments,
    read_video_frames,
    sample_frame_indices,
)

logger = logging.get_logger(__name__)

__all__ = [
    "DecodedVideo",
    "InternVLChatVideoProcessor",
    "InternVLVideoProcessor",
    "InternVLVideoProcessorKwargs",
    "MAX_NUM_SEGMENTS",
    "check_num_segments",
    "read_video_frames",
    "sample_frame_indices",
]


class InternVLVideoProcessorKwargs(VideosKwargs, total=False):
    r"""
    num_segments (`int`, *optional*, defaults to `self.num_segments`):
        Frames sampled per video with the original segment-midpoint formula. Alias: `num_frames` (transformers).
    bound (`tuple[float, float]`, *optional*):
        `(start_s, end_s)` window to sample from.
    image_size (`int`, *optional*, defaults to `self.image_size`):
        Side of the one tile each frame becomes.
    num_workers (`int`, *optional*):
        Threads for the exact resize/normalise engine.
    timeout (`float`, *optional*, defaults to 10):
        Seconds a video URL's server may take to connect and to send each piece of data.
    """

    num_segments: int | None
    bound: Sequence[float] | None
    image_size: int | None
    num_workers: int | None
    timeout: float | None


def _is_frame(item: object) -> bool:
    if isinstance(item, Image.Image):
        return True
    return isinstance(item, np.ndarray | torch.Tensor) and item.ndim in (2, 3)


def _is_video_file(item: object) -> bool:
    return isinstance(item, str | os.PathLike | bytes | bytearray) or hasattr(item, "read")


def _is_single_video(item: object) -> bool:
    if _is_video_file(item):
        return True
    if isinstance(item, np.ndarray | torch.Tensor):
        return item.ndim == 4
    return isinstance(item, list | tuple) and len(item) > 0 and all(_is_frame(frame) for frame in item)


def call_num_segments(num_segments: Any, alias: Any) -> Any:
    """The per-call `num_segments` or its alias `num_frames` (transformers' name), unchecked; None when neither is
    given. Raises `ValueError` when both are given and disagree."""
    if num_segments is not None and alias is not None and num_segments != alias:
        raise ValueError(f"`num_segments` ({num_segments}) and its alias `num_frames` ({alias}) disagree.")
    return alias if num_segments is None else num_segments


def call_image_size(video_processor: Any, image_size: Any, size: Any) -> int:
    """The frame tile side of a call: `size` (as `size_to_int` reads it) over `image_size`, else the processor's."""
    if size is not None:
        image_size = size_to_int("size", size)
    return video_processor.image_size if image_size is None else check_image_size("image_size", image_size)


def group_videos(videos: object) -> list[Any]:
    """`videos` -> a list of videos: a single video (file, `(T, H, W, C)` array, list of frames) or a list of them."""
    if videos is None:
        raise ValueError("`videos` must be given, got None.")
    if _is_single_video(videos):
        return [videos]
    if isinstance(videos, np.ndarray | torch.Tensor):
        if videos.ndim == 5:
            return list(videos)
        raise ValueError(
            f"`videos`: an array must be one video (T, H, W, C) / (T, C, H, W) or a batch (B, T, ...), "
            f"got shape {tuple(videos.shape)}."
        )
    if not isinstance(videos, list | tuple):
        raise TypeError(
            "`videos` must be a video file (path, URL, bytes), an array of frames, a list of frames, or a list of "
            f"these; got {type(videos).__name__}."
        )
    if len(videos) == 0:
        raise ValueError("`videos` is an empty list; expected at least one video.")
    for index, video in enumerate(videos):
        if not _is_single_video(video):
            if isinstance(video, list | tuple) and len(video) == 0:
                raise ValueError(f"`videos[{index}]` has no frames.")
            raise TypeError(
                f"`videos[{index}]` must be a video file, a (T, H, W, C) array or a list of frames, "
                f"got {type(video).__name__}."
            )
    return list(videos)


class InternVLChatVideoProcessor(TilePixelDefaults, VideoProcessorMixin):
    r"""InternVL 2.5 video processor: `num_segments` frames per video, each one 448 x 448 tile.

    `processor(videos=..., num_segments=8, return_tensors="pt")` returns a `BatchFeature` with

    * `pixel_values_videos`: `(total_frames, 3, image_size, image_size)` float32, frames of all videos in order;
    * `num_frames`: frames per video (a list, or a tensor with `return_tensors`);
    * with `return_metadata=True`: `video_metadata` (transformers `VideoMetadata` per video, `frames_indices`
      filled in), `frame_indices` and `timestamps` (seconds, `index / average_fps`), per video.

    Inputs: a video file (path, `http(s)` URL, encoded bytes or binary file; mp4, webm, mkv, avi, gif, ... whatever
    PyAV/FFmpeg reads), already-decoded frames (a list of PIL images, or a `(T, H, W, C)` numpy array / `(T, C, H, W)`
    or `(T, H, W, C)` torch tensor, uint8), or a list of such videos.

    Sampling: files are sampled with the original formula (`sample_frame_indices`, `max_frame = num_frames - 1`,
    optional `bound=(start_s, end_s)`) and only the sampled frames are decoded. Already-decoded frames are sampled with
    the same formula only when the call asks for it: `num_segments` (or `num_frames`), a `bound` or
    `do_sample_frames=True` (then `num_segments` frames, the processor's unless given); otherwise every frame given is
    used. A `bound` on decoded frames needs their frame rate: `video_metadata={"fps": ...}`.
    `do_sample_frames=False` uses every frame of a file too (decodes it all); with a `bound` it raises `ValueError`.

    Decoding (`read_video_frames`): the file's packets are indexed once without decoding (as decord does); the
    frame count is the number of video packets (a header promising more raises `ValueError`: truncated file). Frame
    `i` is the i-th frame in presentation order (decord's `vr[i]`), for constant and variable frame rates alike: the
    reader seeks to the keyframe before it and decodes forward to the frame with its timestamp; targets less than 48
    frames ahead are reached by decoding on. Pixel values come from FFmpeg's YUV -> RGB conversion in PyAV. Against
    decord 0.6.0, the original's reader, on 15 files (`tests/fixtures/processing_heldout_s8`): frame counts, fps and
    indices are equal, and the frames of 8-bit video of even size are byte-identical. 10-bit and odd-size 4:2:0 frames
    differ (another FFmpeg conversion; mean 1.9-2.5 levels). On HEVC, decord returns wrong frames where this reader
    returns the requested ones.

    Each frame is converted to RGB and resized to `image_size` x `image_size` with PIL bicubic (the original's
    `dynamic_preprocess(frame, max_num=1)`: one tile, no thumbnail), then normalised with `image_mean`/`image_std`
    exactly like image tiles.

    Args:
        num_segments (`int`, defaults to 8): frames per video (the original README example uses 8, `load_video`
            defaults to 32, MVBench 16).
        image_size (`int`, defaults to 448), resample, do_rescale, do_normalize, image_mean, image_std, num_workers:
            as in `InternVLChatImageProcessor`.
    """

    valid_kwargs = InternVLVideoProcessorKwargs
    model_input_names: ClassVar[list[str]] = ["pixel_values_videos"]

    # The tile side, resize and normalisation defaults are the image processor's (`TilePixelDefaults`).
    num_segments = DEFAULT_NUM_SEGMENTS

    def __init__(
        self,
        num_segments: int | None = None,
        image_size: int | None = None,
        resample: int = TilePixelDefaults.resample,
        do_rescale: bool = True,
        do_normalize: bool = True,
        image_mean: float | Sequence[float] = TilePixelDefaults.image_mean,
        image_std: float | Sequence[float] = TilePixelDefaults.image_std,
        num_workers: int | None = None,
        **kwargs: Any,
    ) -> None:
        # Aliases (transformers' `num_frames`, the image processor's tile-size names) must agree with the canonical name.
        num_segments = pop_alias(kwargs, "num_segments", num_segments, ("num_frames",), None)
        image_size = pop_alias(kwargs, "image_size", image_size, IMAGE_SIZE_ALIASES, None)
        if kwargs.get("size") is not None:
            size = size_to_int("size", kwargs.pop("size"))
            if image_size is not None and image_size != size:
                raise ValueError(f"`image_size` ({image_size}) and `size` ({size}) disagree.")
            image_size = size
        # Keys of an image-processor config (`preprocessor_config.json` is read as a fallback) and bookkeeping keys.
        for key in (
            *LEGACY_CONFIG_KEYS,
            "num_frames",
            "force_image_size",
            "size",
            "video_processor_type",
            "min_dynamic_patch",
            "max_dynamic_patch",
            "use_thumbnail",
            "max_total_tiles",
            "do_sample_frames",
        ):
            kwargs.pop(key, None)
        super().__init__(**kwargs)
        self.num_segments = check_num_segments(
            "num_segments", DEFAULT_NUM_SEGMENTS if num_segments is None else num_segments
        )
        self.image_size = check_image_size(
            "image_size", TilePixelDefaults.image_size if image_size is None else image_size
        )
        set_pixel_options(self, resample, do_rescale, do_normalize, image_mean, image_std, num_workers)

    @classmethod
    def from_dict(cls, video_processor_dict: dict[str, Any], **kwargs: Any):
        """As transformers', except that a keyword replaces the saved value under any of its names
        (`from_pretrained(folder, num_frames=16)` with a saved `num_segments`)."""
        groups = (("num_segments", "num_frames"), ("image_size", *IMAGE_SIZE_ALIASES, "size"))
        return super().from_dict(drop_saved_aliases(video_processor_dict, kwargs, groups), **kwargs)

    def __call__(self, videos: Any = None, **kwargs: Unpack[InternVLVideoProcessorKwargs]) -> BatchFeature:
        return self.preprocess(videos, **kwargs)

    def preprocess(self, videos: Any = None, **kwargs: Unpack[InternVLVideoProcessorKwargs]) -> BatchFeature:
        """Sample, decode, resize and normalise `videos`; see the class docstring."""
        kwargs = dict(kwargs)
        num_segments = call_num_segments(kwargs.pop("num_segments", None), kwargs.pop("num_frames", None))
        explicit_segments = num_segments is not None
        num_segments = self.num_segments if num_segments is None else check_num_segments("num_segments", num_segments)
        bound = kwargs.pop("bound", None)
        if bound is not None and (not isinstance(bound, Sequence) or len(bound) != 2):
            raise TypeError(f"`bound` must be (start_s, end_s) or None, got {bound!r}.")
        image_size = call_image_size(self, kwargs.pop("image_size", None), kwargs.pop("size", None))
        options = {"image_size": image_size, **resolve_pixel_options(self, kwargs)}
        timeout = check_timeout(kwargs.pop("timeout", None))
        return_tensors = kwargs.pop("return_tensors", None)
        return_metadata = bool(kwargs.pop("return_metadata", None) or False)
        do_sample_frames = kwargs.pop("do_sample_frames", None)
        if do_sample_frames is not None:  # a string "False" would read as "not False": every frame, silently
            do_sample_frames = check_bool("do_sample_frames", do_sample_frames)
        input_data_format = kwargs.pop("input_data_format", None)
        device = kwargs.pop("device", None)
        video_metadata = kwargs.pop("video_metadata", None)
        if kwargs.pop("fps", None) is not None:
            raise ValueError(
                "`fps` (sampling at a frame rate) is not how InternVL samples: pass `num_segments`; for decoded "
                "frames with a `bound`, give their frame rate as `video_metadata={'fps': ...}`."
            )
        if kwargs.pop("do_convert_rgb", None) is False:
            raise ValueError("`do_convert_rgb=False` is not supported: InternVL always converts frames to RGB.")
        if kwargs.pop("do_resize", None) is False:
            raise ValueError("`do_resize=False` is not supported: every frame becomes one resized tile.")
        for key in ("do_center_crop", "do_pad", "crop_size", "default_to_square", "data_format", "rescale_factor"):
            kwargs.pop(key, None)
        unknown = sorted(key for key, value in kwargs.items() if value is not None)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected keyword arguments: {', '.join(unknown)}.")

        if bound is not None and do_sample_frames is False:
            raise ValueError("`bound` needs frame sampling; it cannot be combined with `do_sample_frames=False`.")
        # Decoded frames are sampled when the call asks for it: `num_segments` / `num_frames`, a `bound` window or
        # `do_sample_frames=True` (files are always sampled unless `do_sample_frames=False`).
        sample_decoded = do_sample_frames is not False and (
            explicit_segments or bound is not None or do_sample_frames is True
        )
        video_list = group_videos(videos)
        metadata_list = self._metadata_per_video(video_metadata, len(video_list))
        frames_per_video: list[list[Image.Image]] = []
        metadata_out: list[VideoMetadata] = []
        for index, video in enumerate(video_list):
            name = f"videos[{index}]" if len(video_list) > 1 else "videos"
            if _is_video_file(video):
                decoded = read_video_frames(
                    video, None if do_sample_frames is False else num_segments, bound=bound, name=name, timeout=timeout
                )
                frames = decoded.frames
                metadata = VideoMetadata(
                    total_num_frames=decoded.num_frames,
                    fps=decoded.fps,
                    width=decoded.width,
                    height=decoded.height,
                    duration=decoded.num_frames / decoded.fps,
                    video_backend="pyav",
                    frames_indices=decoded.frame_indices,
                )
            else:
                all_frames = self._frames_of(video, name)
                given = metadata_list[index] or {}
                fps = given.get("fps") if isinstance(given, dict | VideoMetadata) else None
                indices = list(range(len(all_frames)))
                if sample_decoded:
                    if bound is not None and fps is None:
                        raise ValueError(
                            f"`{name}`: sampling decoded frames with a `bound` needs their frame rate; pass "
                            "`video_metadata={'fps': ...}`."
                        )
                    indices = sample_frame_indices(len(all_frames), 1.0 if fps is None else fps, num_segments, bound)
                if len(indices) > MAX_NUM_SEGMENTS:
                    raise ValueError(
                        f"`{name}` has {len(indices)} frames, more than MAX_NUM_SEGMENTS ({MAX_NUM_SEGMENTS}) tiles; "
                        "pass `num_segments` to sample fewer."
                    )
                frames = [all_frames[i] for i in indices]
                metadata = VideoMetadata(
                    total_num_frames=len(all_frames),
                    fps=None if fps is None else float(fps),
                    width=None,
                    height=None,
                    duration=None if fps is None else len(all_frames) / float(fps),
                    video_backend=None,
                    frames_indices=indices,
                )
            frames_per_video.append([to_rgb_image(frame, name, input_data_format) for frame in frames])
            metadata_out.append(metadata)

        # The image processor's resize and normalisation, one tile per frame (the original's
        # `dynamic_preprocess(frame, max_num=1)`: a 1x1 grid, no thumbnail).
        num_frames = [len(frames) for frames in frames_per_video]
        frames = [frame for video_frames in frames_per_video for frame in video_frames]
        plans = [plan_tiles(frame.width, frame.height, 1, 1, image_size, False) for frame in frames]
        pixel_values = tiles_from_plans(frames, plans, options)

        data: dict[str, Any] = {"pixel_values_videos": pixel_values, "num_frames": num_frames}
        skip: list[str] = []
        if return_metadata:
            data["video_metadata"] = metadata_out
            data["frame_indices"] = [list(m.frames_indices) for m in metadata_out]
            data["timestamps"] = [[i / m.fps for i in m.frames_indices] if m.fps else None for m in metadata_out]
            skip = ["video_metadata", "frame_indices", "timestamps"]
        if device is not None:
            data["pixel_values_videos"] = torch.from_numpy(pixel_values).to(device)
            data["num_frames"] = torch.tensor(num_frames, device=device)
            return BatchFeature(data=data, skip_tensor_conversion=skip)
        return BatchFeature(data=data, tensor_type=return_tensors, skip_tensor_conversion=skip)

    @staticmethod
    def _metadata_per_video(video_metadata: Any, num_videos: int) -> list[Any]:
        if video_metadata is None:
            return [None] * num_videos
        if isinstance(video_metadata, dict | VideoMetadata):
            video_metadata = [video_metadata]
        if not isinstance(video_metadata, list | tuple) or len(video_metadata) != num_videos:
            raise ValueError(f"`video_metadata` must be one dict per video ({num_videos}), got {video_metadata!r}.")
        for index, metadata in enumerate(video_metadata):
            name = f"video_metadata[{index}]" if num_videos > 1 else "video_metadata"
            if metadata is not None and not isinstance(metadata, dict | VideoMetadata):
                raise TypeError(f"`{name}` must be a dict or a VideoMetadata, got {type(metadata).__name__}.")
            fps = None if metadata is None else metadata.get("fps")
            if fps is not None:  # checked before any decoding: it divides frame indices into timestamps
                check_fps(f"{name}['fps']", fps)
        return list(video_metadata)

    @staticmethod
    def _frames_of(video: Any, name: str) -> list[Any]:
        if isinstance(video, np.ndarray | torch.Tensor):
            if video.shape[0] == 0:
                raise ValueError(f"`{name}` has no frames.")
            return list(video)
        frames = list(video)
        if not frames:
            raise ValueError(f"`{name}` has no frames.")
        return frames


# The name before the rename; transformers' own `InternVLVideoProcessor` (converted `-hf` checkpoints) is a different
# class, so configs saved under this name are loaded by `auto_loading` / `loading_options`, not by name.
InternVLVideoProcessor = InternVLChatVideoProcessor
