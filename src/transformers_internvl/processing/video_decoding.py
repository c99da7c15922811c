"""Reading the i-th frame of a video file with PyAV, as decord (the original's reader) numbers frames, and the
original's frame sampling (`sample_frame_indices`, `read_video_frames`).

The original (`load_video` in the chat README, `eval/mvbench/evaluate_mvbench.py`) reads frames with
`decord.VideoReader(path)[i]`: frame `i` is the i-th frame of the stream in presentation order. decord indexes the
file once (every video packet's timestamp) and seeks to the keyframe before a frame, then decodes forward to it.

`FrameIndexReader` does the same: at open it demuxes the stream once (no decoding) and records each packet's
presentation timestamp; sorted, these are the timestamps of frames `0..num_frames - 1`. Frame `i` is then the decoded
frame whose timestamp equals the i-th one, reached by seeking to the last keyframe at or before it (or by decoding on
from the previous request when no keyframe lies in between or it is close). This holds for variable frame rates too:
the mapping index -> frame never goes through `i / fps`. Files whose packets carry no timestamps, or on which a seek
misses, are decoded from the start and frame `i` is the i-th decoded frame.

`http(s)` URLs are downloaded first with `image_loading.fetch_url` (a timeout, default 10 s; an HTTP error status or an
HTML page raises a `ValueError` naming the URL and the status).
"""

from __future__ import annotations

import bisect
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from transformers.utils import logging

from .input_validation import check_int
from .local_files import check_regular_file
from .url_fetching import check_timeout, fetch_url, shown_url

logger = logging.get_logger(__name__)

__all__ = [
    "DEFAULT_NUM_SEGMENTS",
    "MAX_NUM_SEGMENTS",
    "DecodedVideo",
    "FrameIndexReader",
    "check_fps",
    "check_num_segments",
    "open_container",
    "read_video_frames",
    "sample_frame_indices",
]

# Decode on (instead of seeking) to a target at most this many frames ahead of the last decoded frame.
_DECODE_ON_MAX_GAP = 48


def open_container(source: object, name: str, shown: str | None = None) -> Any:
    """`av.open` on a path, bytes or binary file; errors name the argument and `shown` (default: the path or the type;
    URLs are fetched first, see `FrameIndexReader`, which shows the URL)."""
    import av

    if isinstance(source, bytes | bytearray):
        source = io.BytesIO(bytes(source))
    elif isinstance(source, os.PathLike):
        source = os.fspath(source)
    if isinstance(source, str) and not os.path.exists(source):
        raise FileNotFoundError(f"`{name}`: no such video file: {source!r}")
    if isinstance(source, str):
        check_regular_file(source, name, "a video")
    if hasattr(source, "seek"):
        source.seek(0)
    try:
        return av.open(source, mode="r")
    except av.FFmpegError as error:
        shown = shown or (source if isinstance(source, str) else type(source).__name__)
        raise ValueError(f"`{name}`: could not open {shown!r} as a video: {error}") from error


def _check_frame_pixels(width: int, height: int, name: str) -> None:
    """Pillow's decompression-bomb limit for images applies to video frames too: a small file can declare frames of
    16384 x 16384 px, and each decoded frame is held as an RGB image (800 MB there, times the frames sampled).

    Raises:
        PIL.Image.DecompressionBombError: `width * height` above `2 * PIL.Image.MAX_IMAGE_PIXELS` (the limit at which
            Pillow refuses an image; `MAX_IMAGE_PIXELS = None` turns the check off, as for images).
    """
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > 2 * limit:
        raise Image.DecompressionBombError(
            f"`{name}`: video frames of {width} x {height} px ({width * height} pixels) exceed the limit of "
            f"{2 * limit} pixels (2 x PIL.Image.MAX_IMAGE_PIXELS, as for images); could be a decompression bomb."
        )


class FrameIndexReader:
    """Frame `i` of a video in presentation order (decord's numbering), decoding only what the requests need.

    Attributes (after construction):
        num_frames: video packets in the stream (frames, as decord counts them).
        fps: the stream's average frame rate (decord's `get_avg_fps()`).
        frame_pts: presentation timestamp of each frame in stream time-base units, or `None` when the packets carry
            none (then frames are counted while decoding from the start).
        num_decoded: frames decoded so far (the cost measure).

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: a file that is not a video, has no video stream, no frame rate, no frames, or fewer packets than
            its header promises (truncated).
        PIL.Image.DecompressionBombError: frames over Pillow's pixel limit (`_check_frame_pixels`).
    """

    def __init__(self, source: object, name: str, timeout: float | None = None) -> None:
        import av

        self.name = name
        self._downloaded: Any = None
        self._shown: str | None = None
        if isinstance(source, str) and source.strip()[:8].lower().startswith(("http://", "https://")):
            # Fetched with a timeout and a status check (an error page is not handed to FFmpeg), kept on disk when big.
            self._shown = shown_url(source.strip())
            self._downloaded = source = fetch_url(source.strip(), name, timeout, spool=True)
        self.source = source
        try:
            self.container = open_container(source, name, self._shown)
        except BaseException:
            self._close_download()
            raise
        try:
            if not self.container.streams.video:
                raise ValueError(f"`{name}`: the file has no video stream.")
            self.stream = self.container.streams.video[0]
            rate = self.stream.average_rate or self.stream.guessed_rate or self.stream.base_rate
            if not rate or float(rate) <= 0:
                raise ValueError(f"`{name}`: the video stream has no frame rate.")
            self.fps = float(rate)
            _check_frame_pixels(self.stream.codec_context.width, self.stream.codec_context.height, name)
            self.time_base = self.stream.time_base
            packet_pts: list[int | None] = []
            keyframe_pts: list[int] = []
            try:
                for packet in self.container.demux(self.stream):
                    if packet.size <= 0:  # flush packets carry no frame
                        continue
                    packet_pts.append(packet.pts)
                    if packet.is_keyframe and packet.pts is not None:
                        keyframe_pts.append(packet.pts)
            except av.FFmpegError as error:
                raise ValueError(f"`{name}`: could not read the video packets: {error}") from error
            self.num_frames = len(packet_pts)
            promised = int(self.stream.frames or 0)
            if self.num_frames == 0:
                raise ValueError(f"`{name}`: the video has no frames.")
            if promised > self.num_frames:
                raise ValueError(
                    f"`{name}`: the header promises {promised} frames but the file holds {self.num_frames} "
                    "(truncated or damaged file?)."
                )
            has_pts = all(pts is not None for pts in packet_pts) and len(set(packet_pts)) == len(packet_pts)
            self.frame_pts: list[int] | None = sorted(packet_pts) if has_pts else None  # type: ignore[arg-type]
            self.keyframe_pts = sorted(keyframe_pts)
        except BaseException:
            self.close()
            raise
        self.stream.thread_type = "AUTO"
        self.num_decoded = 0
        self.sequential = self.frame_pts is None
        self.decoder: Any = None
        self.last_index = -1  # index of the last decoded frame (meaningful only while `decoder` runs on)
        self.last_pts: int | None = None

    def close(self) -> None:
        self.container.close()
        self._close_download()

    def _close_download(self) -> None:
        if self._downloaded is not None:
            self._downloaded.close()
            self._downloaded = None

    def __enter__(self) -> FrameIndexReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def timestamp(self, index: int) -> float:
        """Presentation time of frame `index` in seconds from the stream start (`index / fps` without timestamps)."""
        if self.frame_pts is None:
            return index / self.fps
        start = self.frame_pts[0]
        return float((self.frame_pts[index] - start) * self.time_base)

    def _restart(self) -> None:
        import av

        try:
            self.container.seek(0)
        except av.FFmpegError:
            self.container.close()
            self.container = open_container(self.source, self.name, self._shown)
            self.stream = self.container.streams.video[0]
            self.stream.thread_type = "AUTO"
        self.decoder = self.container.decode(self.stream)
        self.last_index = -1
        self.last_pts = None

    def _seek_to_keyframe_before(self, target_pts: int) -> bool:
        import av

        position = bisect.bisect_right(self.keyframe_pts, target_pts) - 1
        if position < 0:
            return False
        try:
            self.container.seek(self.keyframe_pts[position], stream=self.stream, backward=True, any_frame=False)
        except av.FFmpegError:
            return False
        self.decoder = self.container.decode(self.stream)
        self.last_pts = None
        return True

    def read(self, index: int) -> Any:
        """The decoded `av.VideoFrame` of frame `index`; requests must come in ascending order."""
        if not 0 <= index < self.num_frames:
            raise ValueError(f"`{self.name}`: frame index {index} is outside the video (0..{self.num_frames - 1}).")
        if self.sequential:
            return self._read_by_count(index)
        target = self.frame_pts[index]  # type: ignore[index]
        decode_on = (
            self.decoder is not None
            and self.last_pts is not None
            and self.last_pts < target
            and (
                index - self.last_index <= _DECODE_ON_MAX_GAP
                or bisect.bisect_right(self.keyframe_pts, target)
                == bisect.bisect_right(self.keyframe_pts, self.last_pts)
            )
        )
        if not decode_on:
            if index == 0 or not self._seek_to_keyframe_before(target):
                self._restart()
        frame = self._decode_to_pts(target)
        if frame is None:
            # A seek that landed after the target, or timestamps the decoder does not reproduce: count instead.
            logger.warning_once(
                f"`{self.name}`: frame timestamps could not be matched after seeking; decoding from the start."
            )
            self.sequential = True
            return self._read_by_count(index)
        self.last_index = index
        return frame

    def _decode_to_pts(self, target: int) -> Any:
        import av

        try:
            for frame in self.decoder:
                self.num_decoded += 1
                pts = frame.pts
                if pts is None:
                    return None
                self.last_pts = pts
                if pts == target:
                    return frame
                if pts > target:
                    return None
        except av.FFmpegError as error:
            raise ValueError(f"`{self.name}`: decoding failed: {error}") from error
        return None

    def _read_by_count(self, index: int) -> Any:
        import av

        if self.decoder is None or self.last_index >= index or self.last_pts is not None:
            self._restart()
        try:
            for frame in self.decoder:
                self.num_decoded += 1
                self.last_index += 1
                if self.last_index == index:
                    return frame
        except av.FFmpegError as error:
            raise ValueError(f"`{self.name}`: decoding failed: {error}") from error
        raise ValueError(f"`{self.name}`: the video ended before frame {index} (truncated or damaged file?).")


DEFAULT_NUM_SEGMENTS = 8
# Most frames sampled per video (`num_segments`); see `check_num_segments`.
MAX_NUM_SEGMENTS = 1024


def check_num_segments(name: str, value: object) -> int:
    """`value` as a frame count: an int in `1..MAX_NUM_SEGMENTS`, else a `TypeError` / `ValueError` naming `name`.

    `MAX_NUM_SEGMENTS` (1024) is 16 times the most frames InternVL 2.5 uses (64, paper Sec. 5); every frame is one
    448 px tile of 256 tokens, so 1024 frames are 262k tokens (8 times the 32k context) and 2.5 GB of float32 pixels.
    """
    value = check_int(name, value)
    if value > MAX_NUM_SEGMENTS:
        raise ValueError(
            f"`{name}` must be <= {MAX_NUM_SEGMENTS} (MAX_NUM_SEGMENTS: 16 x the 64 frames InternVL uses; each frame is "
            f"a 256-token tile), got {value}."
        )
    return value


def _check_index(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__} ({value!r}).")
    return int(value)


# Frame positions beyond this are clamped before rounding (equivalent: indices are clamped to the video anyway), so
# that a huge finite `bound` cannot overflow `round`.
_INDEX_CLAMP = 2.0**62


def check_fps(name: str, fps: object) -> float:
    """`fps` (frames per second) as a float: a positive finite number (it divides frame indices into seconds).

    Raises:
        TypeError: not a number (a bool or a str included).
        ValueError: zero, negative, NaN or infinite; the message names `name` and the value.
    """
    if isinstance(fps, bool) or not isinstance(fps, int | float | np.integer | np.floating):
        raise TypeError(f"`{name}` must be a number, got {type(fps).__name__} ({fps!r}).")
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"`{name}` must be a positive finite number (frames per second), got {fps!r}.")
    return float(fps)


def sample_frame_indices(
    num_frames: int,
    fps: float,
    num_segments: int = DEFAULT_NUM_SEGMENTS,
    bound: Sequence[float] | None = None,
    first_idx: int = 0,
    max_frame: int | None = None,
) -> list[int]:
    """Frame indices of the original `get_index`: the midpoints of `num_segments` equal segments.

    `start, end = bound or (-1e5, 1e5)` seconds; `s = max(first_idx, round(start * fps))`,
    `e = min(round(end * fps), max_frame)`, `seg = (e - s) / num_segments`, frame `k = int(s + seg / 2 +
    np.round(seg * k))`. Python `round` and `np.round` both round halves to even, as in the original
    (`get_index`, `internvl_chat/eval/mvbench/evaluate_mvbench.py`). A `bound` reaching outside the video is clamped
    to it, as in the original; every returned index lies in `first_idx..max_frame`.

    Args:
        num_frames: frames in the video (int >= 1).
        fps: frame rate used to turn `bound` (seconds) into indices (the original: decord's average fps).
        num_segments: frames to sample, an int in `1..MAX_NUM_SEGMENTS` (1024); more segments than frames repeat
            indices, as in the original.
        bound: optional `(start_s, end_s)` window in seconds (finite, `start_s <= end_s`).
        first_idx: index of the first frame (int >= 0): 0 for decoded videos, 1 for 1-based frame folders.
        max_frame: last valid index, an int in `first_idx..first_idx + num_frames - 1`; defaults to
            `first_idx + num_frames - 1` (the original's `len(vr) - 1` for decoded videos and `num_frames` for
            1-based frame folders).

    Returns:
        `num_segments` ints, ascending (repeats possible).

    Raises:
        TypeError: a count or index that is not an int (fractional values are refused, not truncated), a malformed
            `bound`.
        ValueError: values out of range, or a `bound` that selects no frame.
    """
    num_frames = check_int("num_frames", num_frames)
    num_segments = check_num_segments("num_segments", num_segments)
    first_idx = _check_index("first_idx", first_idx)
    if first_idx < 0:
        raise ValueError(f"`first_idx` must be >= 0, got {first_idx}.")
    fps = check_fps("fps", fps)
    last = first_idx + num_frames - 1
    if max_frame is None:
        max_frame = last
    max_frame = _check_index("max_frame", max_frame)
    if not first_idx <= max_frame <= last:
        raise ValueError(
            f"`max_frame` must be in {first_idx}..{last} (first_idx..first_idx + num_frames - 1), got {max_frame}."
        )
    if bound is not None:
        if not isinstance(bound, Sequence) or isinstance(bound, str) or len(bound) != 2:
            raise TypeError(f"`bound` must be (start_s, end_s) or None, got {bound!r}.")
        try:
            start, end = float(bound[0]), float(bound[1])
        except (TypeError, ValueError) as error:
            raise TypeError(f"`bound` must hold two numbers (seconds), got {bound!r}.") from error
        if not (math.isfinite(start) and math.isfinite(end)) or start > end:
            raise ValueError(f"`bound` must be finite with start <= end, got {tuple(bound)}.")
    else:
        start, end = -100000, 100000
    start_idx = max(first_idx, round(min(max(start * fps, -_INDEX_CLAMP), _INDEX_CLAMP)))
    end_idx = min(round(min(max(end * fps, -_INDEX_CLAMP), _INDEX_CLAMP)), max_frame)
    if start_idx > end_idx:
        raise ValueError(
            f"`bound` {tuple(bound) if bound is not None else None} selects no frame: it starts at frame {start_idx} "
            f"but the video ends at frame {end_idx} ({num_frames} frames at {fps} fps)."
        )
    seg_size = float(end_idx - start_idx) / num_segments
    return [int(start_idx + (seg_size / 2) + np.round(seg_size * k)) for k in range(num_segments)]


@dataclass
class DecodedVideo:
    """Frames read from a video file.

    Attributes:
        frames: the requested frames as RGB PIL images, in the order of `frame_indices`.
        frame_indices: index of each returned frame.
        num_frames: frames in the video stream.
        fps: the stream's average frame rate.
        width, height: frame size.
        num_decoded: frames the decoder produced to get them (the cost measure; ≪ `num_frames` for long videos).
    """

    frames: list[Image.Image]
    frame_indices: list[int]
    num_frames: int
    fps: float
    width: int
    height: int
    num_decoded: int = 0
    timestamps: list[float] = field(default_factory=list)


def _check_frame_indices(indices: object, num_frames: int, name: str) -> list[int]:
    """`indices` as a list of ints in `0..num_frames - 1`, at most `MAX_NUM_SEGMENTS` of them."""
    if isinstance(indices, str | bytes) or not isinstance(indices, Sequence | np.ndarray):
        raise TypeError(f"`indices` must be a sequence of ints, got {type(indices).__name__}.")
    checked = [_check_index("indices[]", index) for index in indices]
    if not checked:
        raise ValueError("`indices` is empty; expected at least one frame index.")
    if len(checked) > MAX_NUM_SEGMENTS:
        raise ValueError(
            f"`{name}`: {len(checked)} frames requested, more than MAX_NUM_SEGMENTS ({MAX_NUM_SEGMENTS}); sample "
            "fewer with `num_segments`."
        )
    for index in checked:
        if not 0 <= index < num_frames:
            raise ValueError(f"`{name}`: frame index {index} is outside the video (0..{num_frames - 1}).")
    return checked


def read_video_frames(
    source: str | os.PathLike | bytes | Any,
    num_segments: int | None = DEFAULT_NUM_SEGMENTS,
    bound: Sequence[float] | None = None,
    indices: Sequence[int] | None = None,
    name: str = "videos",
    timeout: float | None = None,
) -> DecodedVideo:
    """Decode only the sampled frames of a video with PyAV.

    Args:
        source: a path, an `http(s)` URL, encoded bytes or a binary file object (mp4, webm, mkv, avi, gif, ...).
        num_segments: frames to sample with `sample_frame_indices` (`None`: every frame).
        bound: optional `(start_s, end_s)` window for the sampling.
        indices: explicit frame indices instead of sampling.
        name: argument name used in error messages.
        timeout: seconds a URL's server may take to connect and to send each piece of data (default 10).

    Frame `i` is the i-th frame in presentation order, as decord numbers it (`video_decoding.FrameIndexReader`), for
    constant and variable frame rates alike; `num_frames` counts the video packets. `timestamps` are the frames'
    presentation times in seconds from the stream start.

    Raises:
        ValueError: an unreadable, damaged or frameless file, bad indices, or more than `MAX_NUM_SEGMENTS` frames.
        FileNotFoundError: a missing path.
        PIL.Image.DecompressionBombError: frames over Pillow's pixel limit (`2 * PIL.Image.MAX_IMAGE_PIXELS`).
    """
    with FrameIndexReader(source, name, check_timeout(timeout)) as reader:
        fps, num_frames = reader.fps, reader.num_frames
        if indices is None:
            if num_segments is None:
                if num_frames > MAX_NUM_SEGMENTS:
                    raise ValueError(
                        f"`{name}`: every frame was asked for, but the video has {num_frames} frames, more than "
                        f"MAX_NUM_SEGMENTS ({MAX_NUM_SEGMENTS}); sample fewer with `num_segments`."
                    )
                indices = list(range(num_frames))
            else:
                indices = sample_frame_indices(num_frames, fps, num_segments, bound)
        indices = _check_frame_indices(indices, num_frames, name)
        found: dict[int, Image.Image] = {}
        for index in sorted(set(indices)):
            found[index] = reader.read(index).to_image()
        width, height = reader.stream.codec_context.width, reader.stream.codec_context.height
        timestamps = [reader.timestamp(i) for i in indices]
    return DecodedVideo(
        frames=[found[i] for i in indices],
        frame_indices=indices,
        num_frames=num_frames,
        fps=fps,
        width=width,
        height=height,
        num_decoded=reader.num_decoded,
        timestamps=timestamps,
    )
