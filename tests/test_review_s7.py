"""Session-7 review of the merged branches: defects found where two changes meet.

* Training video frames: the per-sample seed `seed * 1_000_003 + index` went to numpy's `RandomState`, which only
  takes [0, 2**32): any `seed` >= 4295 (e.g. 12345) or < 0 raised for every video, and for a video FILE the
  `ValueError` was caught as "unreadable video file", so every video sample was silently skipped.
* A row's `clip: [start, end]` (seconds) was ignored: the original `read_frames_decord` samples only that span
  (`vlen = int((end - start) * fps)` frames from `int(start * fps)`), here frames came from the whole video.
* `max_num_frame` was not bounded like `num_video_frames` (`MAX_NUM_SEGMENTS`): 5000 made every video longer than
  1024 frames an "unreadable video file" skip, and a non-int frame count raised `ValueError` instead of `TypeError`.
"""

from __future__ import annotations

import numpy as np
import pytest
from finetune_helpers import dataset, write_image

from transformers_internvl.training.frame_sampling import training_frame_indices


def _turns(question: str) -> list[dict]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": "Nothing."}]


def _write_video(path, frames: int = 12) -> None:
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        stream.options = {"preset": "ultrafast", "qp": "0"}
        for k in range(frames):
            frame = np.full((64, 64, 3), 16 * k, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.parametrize("seed", [12345, -1, 2**40])
def test_large_or_negative_seeds_still_sample_video_frames(tmp_path, seed):
    (tmp_path / "clip").mkdir()
    for i in range(6):
        write_image(tmp_path / "clip" / f"{i:03d}.jpg", (64, 48), seed=i)
    _write_video(tmp_path / "clip.mp4")
    rows = [{"video": "clip", "conversations": _turns("<video>\nWhat moves?")}]
    rows.append({"video": "clip.mp4", "conversations": _turns("<video>\nWhat moves?")})
    ds = dataset(rows, root=tmp_path, num_video_frames=4, seed=seed)
    for index in range(2):
        assert ds[index]["pixel_values"].shape[0] == 4
    assert ds.skipped.reasons == {}


def test_small_seeds_keep_their_frames(tmp_path):
    """The seed reduction leaves every seed in [0, 2**32) as it was (the original-parity fixtures use small seeds):
    the frames of sample `index` are those of `training_frame_indices(..., seed * 1_000_003 + index)`."""
    _write_video(tmp_path / "clip.mp4", frames=15)
    ds = dataset([{"video": "clip.mp4", "conversations": _turns("<video>\nx")}] * 3, root=tmp_path, seed=3,
                 min_num_frame=2, max_num_frame=9)  # fmt: skip
    for index in range(3):
        expected = training_frame_indices(15, 2, 9, "rand", 3 * 1_000_003 + index, is_folder=False, fps=10.0)
        frames = ds._load_video(str(tmp_path), "clip.mp4", index)
        assert len(frames) == len(expected)
        # grey level 16 * k identifies frame k (lossless encode)
        assert [round(float(np.asarray(frame, dtype=np.float32).mean()) / 16) for frame in frames] == expected


def _grey_levels(frames) -> list[int]:
    return [round(float(np.asarray(frame, dtype=np.float32).mean()) / 16) for frame in frames]


def test_a_rows_clip_limits_the_frames_to_its_span_as_the_original(tmp_path):
    """15 frames at 10 fps, frame k grey 16 k; clip [0.5, 1.0] s is frames 5..9 (first int(0.5 * 10) = 5, count
    int(0.5 * 10) = 5); "middle" with 5 frames of 5 takes each once."""
    _write_video(tmp_path / "clip.mp4", frames=15)
    row = {"video": "clip.mp4", "clip": [0.5, 1.0], "conversations": _turns("<video>\nx")}
    ds = dataset([row], root=tmp_path, num_video_frames=5, sampling_method="middle")
    assert _grey_levels(ds._load_video(str(tmp_path), "clip.mp4", 0, clip=[0.5, 1.0])) == [5, 6, 7, 8, 9]
    assert ds[0]["pixel_values"].shape[0] == 5
    whole = _grey_levels(ds._load_video(str(tmp_path), "clip.mp4", 0))
    assert whole == [1, 4, 7, 10, 13]  # without a clip: intervals of 3 over 15 frames, middles


@pytest.mark.parametrize(
    ("clip", "reason"),
    [
        ([1.0, 2.0], "ends after the video's 15 frames"),
        ([0.5, 0.55], "holds no frame"),
        ([1.0, 0.5], "0 <= start < end"),
        ("0-1", "0 <= start < end"),
    ],
)
def test_a_clip_outside_the_video_or_malformed_is_a_skipped_sample(tmp_path, clip, reason):
    _write_video(tmp_path / "clip.mp4", frames=15)
    rows = [
        {"video": "clip.mp4", "clip": clip, "conversations": _turns("<video>\nx")},
        {"video": "clip.mp4", "conversations": _turns("<video>\nx")},
    ]
    ds = dataset(rows, root=tmp_path, num_video_frames=2)
    assert ds[0]["pixel_values"].shape[0] == 2  # the good row replaces the bad one
    assert reason in ds.skipped.reasons["records[0]"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_num_frame": 5000}, ValueError, r"`max_num_frame` must be <= 1024"),
        ({"min_num_frame": 0}, ValueError, r"`min_num_frame` must be >= 1"),
        ({"min_num_frame": 8.0}, TypeError, r"`min_num_frame`"),
        ({"max_num_frame": True}, TypeError, r"`max_num_frame`"),
        ({"num_video_frames": "8"}, TypeError, r"`num_video_frames`"),
        ({"min_num_frame": 9, "max_num_frame": 4}, ValueError, r"1 <= min_num_frame <= max_num_frame"),
    ],
)
def test_frame_counts_are_checked_by_name(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        dataset([{"conversations": _turns("hi")}], root=tmp_path, **kwargs)


def test_one_frame_bound_alone_follows_num_video_frames(tmp_path):
    rows = [{"conversations": _turns("hi")}]
    ds = dataset(rows, root=tmp_path, min_num_frame=16)
    assert (ds.min_num_frame, ds.max_num_frame) == (16, 16)
    ds = dataset(rows, root=tmp_path, max_num_frame=4)
    assert (ds.min_num_frame, ds.max_num_frame) == (4, 4)
    ds = dataset(rows, root=tmp_path, min_num_frame=8, max_num_frame=32)
    assert (ds.min_num_frame, ds.max_num_frame) == (8, 32)
