"""Session-7 review of the merged branches: defects found where two changes meet.

* Training video frames: the per-sample seed `seed * 1_000_003 + index` went to numpy's `RandomState`, which only
  takes [0, 2**32): any `seed` >= 4295 (e.g. 12345) or < 0 raised for every video, and for a video FILE the
  `ValueError` was caught as "unreadable video file", so every video sample was silently skipped.
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
