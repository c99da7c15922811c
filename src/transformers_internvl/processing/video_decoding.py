"""Reading the i-th frame of a video file with PyAV, as decord (the original's reader) numbers frames.

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
import os
from typing import Any

from transformers.utils import logging

from .image_loading import fetch_url

logger = logging.get_logger(__name__)

__all__ = ["FrameIndexReader", "open_container"]

# Decode on (instead of seeking) to a target at most this many frames ahead of the last decoded frame.
_DECODE_ON_MAX_GAP = 48


def open_container(source: object, name: str) -> Any:
    """`av.open` on a path, bytes or binary file; errors name the argument (URLs are fetched first, see
    `FrameIndexReader`)."""
    import av

    if isinstance(source, bytes | bytearray):
        source = io.BytesIO(bytes(source))
    elif isinstance(source, os.PathLike):
        source = os.fspath(source)
    if isinstance(source, str) and not os.path.exists(source):
        raise FileNotFoundError(f"`{name}`: no such video file: {source!r}")
    if hasattr(source, "seek"):
        source.seek(0)
    try:
        return av.open(source, mode="r")
    except av.FFmpegError as error:
        shown = source if isinstance(source, str) else type(source).__name__
        raise ValueError(f"`{name}`: could not open {shown!r} as a video: {error}") from error


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
    """

    def __init__(self, source: object, name: str, timeout: float | None = None) -> None:
        import av

        self.name = name
        self._downloaded: Any = None
        if isinstance(source, str) and source.strip()[:8].lower().startswith(("http://", "https://")):
            # Fetched with a timeout and a status check (an error page is not handed to FFmpeg), kept on disk when big.
            self._downloaded = source = fetch_url(source.strip(), name, timeout, spool=True)
        self.source = source
        try:
            self.container = open_container(source, name)
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
            self.container = open_container(self.source, self.name)
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
