"""Video frame selection of the original TRAINING code (not the inference `get_index` of the model cards).

The original fine-tuning dataset (`LazySupervisedDataset.video_get_item`, `internvl_chat/internvl/train/
internvl_chat_finetune.py`) draws a frame count `np.random.randint(min_num_frame, max_num_frame + 1)` per sample and
picks that many frames with `get_frame_indices` (`internvl_chat/internvl/train/dataset.py`):

* a video file (`read_frames_decord`): `get_frame_indices(count, num_frames)`, padded with the last index when the
  video has fewer frames than `count`;
* a folder of frames (`read_frames_folder`): the frames sorted by the number in their `_<N>.jpg` suffix; all of them
  when there are no more than `count`, else `get_frame_indices(count, num_frames)`.

`get_frame_indices` splits `range(num_frames)` into `count` intervals at `np.linspace(0, num_frames, count + 1)`
(truncated to int); `"rand"` takes `random.choice(range(start, end - 1))` in each interval (the last frame of an
interval is never drawn; when an interval leaves nothing to draw, a sorted random permutation prefix is used
instead), `"middle"` the interval's `(start + end - 1) // 2`; `"fpsX"` one frame every `1 / X` seconds.

A row's `clip: [start, end]` (seconds) restricts a video FILE to that span (`read_frames_decord`: `vlen =
int((end - start) * fps)` frames from `int(start * fps)` on; folders and GIFs ignore it there too): `clip_frame_range`.

Here the two random sources of the original (numpy's global generator for the count and the permutation, Python's
`random` for `random.choice`) are explicit generators, so the same seeds give the same frames as the original.
"""

from __future__ import annotations

import os
import random
import re

import numpy as np

SAMPLING_METHODS = ("rand", "middle")
_FRAME_NUMBER = re.compile(r"_(\d+).jpg$")


def check_sampling_method(sampling_method: str) -> None:
    """Raise `ValueError` unless `sampling_method` is `rand`, `middle` or `fps<rate>` with a positive rate (the
    original's methods)."""
    if isinstance(sampling_method, str) and sampling_method in SAMPLING_METHODS:
        return
    if isinstance(sampling_method, str) and sampling_method.startswith("fps"):
        try:
            if float(sampling_method[3:]) > 0:
                return
        except ValueError:
            pass
    raise ValueError(f"`sampling_method` must be 'rand', 'middle' or 'fps<rate>' (rate > 0), got {sampling_method!r}.")


def check_frame_range(min_num_frame: int, max_num_frame: int) -> None:
    """Raise `ValueError` unless `1 <= min_num_frame <= max_num_frame`."""
    if not 1 <= min_num_frame <= max_num_frame:
        raise ValueError(
            f"`min_num_frame` ({min_num_frame}) and `max_num_frame` ({max_num_frame}) must satisfy "
            "1 <= min_num_frame <= max_num_frame."
        )


def get_frame_indices(
    count: int,
    num_frames: int,
    sampling_method: str,
    py_rng: random.Random,
    np_rng: np.random.RandomState,
    fps: float = 1.0,
) -> list[int]:
    """`count` frame indices out of `num_frames`, as the original `get_frame_indices` (module docstring).

    Raises `ValueError` for an unknown `sampling_method` or a non-positive `count` / `num_frames`."""
    check_sampling_method(sampling_method)
    if count < 1 or num_frames < 1:
        raise ValueError(f"`count` and `num_frames` must be >= 1, got {count} and {num_frames}.")
    if sampling_method.startswith("fps"):
        delta = 1 / float(sampling_method[3:])
        seconds = np.arange(delta / 2, num_frames / fps + delta / 2, delta)
        return [int(i) for i in np.around(seconds * fps).astype(int) if i < num_frames]
    taken = min(count, num_frames)
    edges = np.linspace(start=0, stop=num_frames, num=taken + 1).astype(int)
    ranges = [(int(edges[i]), int(edges[i + 1]) - 1) for i in range(taken)]
    if sampling_method == "rand":
        if all(end > start for start, end in ranges):
            indices = [py_rng.choice(range(start, end)) for start, end in ranges]
        else:  # the original's `except` branch (`random.choice` of an empty range raised)
            # It draws choices up to the failing interval first: consume them the same way.
            for start, end in ranges:
                if end <= start:
                    break
                py_rng.choice(range(start, end))
            indices = sorted(int(i) for i in np_rng.permutation(num_frames)[:taken])
    else:
        indices = [(start + end) // 2 for start, end in ranges]
    if len(indices) < count:  # padded with the last frame
        indices = indices + [indices[-1]] * (count - len(indices))
    return indices


def training_frame_indices(
    num_frames: int,
    min_num_frame: int,
    max_num_frame: int,
    sampling_method: str,
    seed: int,
    is_folder: bool,
    fps: float = 1.0,
) -> list[int]:
    """Frames of one training sample: the original's random count in `[min_num_frame, max_num_frame]`, then
    `get_frame_indices`; a folder with no more frames than the count keeps all of them (`read_frames_folder`).

    `seed` seeds both random sources (numpy `RandomState(seed)` for the count, Python `Random(seed)` for the
    positions): the original with `np.random.seed(seed); random.seed(seed)` draws the same frames.

    Raises `ValueError` when `min_num_frame > max_num_frame`, either is < 1, or `num_frames` < 1."""
    check_frame_range(min_num_frame, max_num_frame)
    check_sampling_method(sampling_method)
    if num_frames < 1:
        raise ValueError(f"the video has no frames (num_frames={num_frames}).")
    np_rng, py_rng = np.random.RandomState(seed), random.Random(seed)
    count = int(np_rng.randint(min_num_frame, max_num_frame + 1))
    if is_folder and num_frames <= count:
        return list(range(num_frames))
    return get_frame_indices(count, num_frames, sampling_method, py_rng, np_rng, fps)


def sort_frame_files(names: list[str]) -> list[str]:
    """Frame files in the original's order (`sort_frames`): by the number of a `_<N>.jpg` suffix, names without one
    first (-1); ties by name (the original keeps the `os.listdir` order there, which is arbitrary)."""

    def key(name: str) -> tuple[int, str]:
        match = _FRAME_NUMBER.search(os.path.basename(name))
        return (int(match.group(1)) if match else -1, name)

    return sorted(names, key=key)


def clip_frame_range(clip: object, fps: float, num_frames: int) -> tuple[int, int]:
    """`(first_frame, frame_count)` of a row's `clip: [start, end]` in seconds, as the original `read_frames_decord`
    computes them (`int(start * fps)`, `int((end - start) * fps)`); training indices are drawn in `range(frame_count)`
    and shifted by `first_frame`.

    Raises:
        ValueError: `clip` is not two finite numbers with `0 <= start < end`, the span holds no frame at `fps`, or it
            ends after the video's `num_frames` frames (the original's decord read fails there and the sample is
            replaced).
    """
    if (
        not isinstance(clip, (list, tuple))
        or len(clip) != 2
        or not all(isinstance(t, (int, float)) and not isinstance(t, bool) and np.isfinite(t) for t in clip)
        or not 0 <= clip[0] < clip[1]
    ):
        raise ValueError(f"`clip` must be [start, end] in seconds with 0 <= start < end, got {clip!r}")
    start, end = clip
    first, count = int(start * fps), int((end - start) * fps)
    if count < 1:
        raise ValueError(f"`clip` {list(clip)} holds no frame at {fps:g} fps")
    if first + count > num_frames:
        raise ValueError(
            f"`clip` {list(clip)} (frames {first}..{first + count - 1} at {fps:g} fps) ends after the video's "
            f"{num_frames} frames"
        )
    return first, count
