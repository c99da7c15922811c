"""Variable-frame-rate video (issue 12): frame `i` is the i-th frame in presentation order (decord's numbering), for
every segment count and with `do_sample_frames=False`."""

from __future__ import annotations

import random
from fractions import Fraction
from pathlib import Path

import pytest
from test_video_processing_internvl import SIDE, _frame_with_number, _number_in_frame

from transformers_internvl import InternVLVideoProcessor, sample_frame_indices
from transformers_internvl.processing.video_processing_internvl import read_video_frames

av = pytest.importorskip("av")

NUM_FRAMES = 100


def _write_vfr(path: Path, bframes: int, seed: int) -> tuple[Path, list[float]]:
    """Frame k shows the number k; the gaps between frames vary from 10 ms to 300 ms (a valid VFR stream)."""
    rng = random.Random(seed)
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=25)
    stream.width, stream.height, stream.pix_fmt = SIDE, SIDE, "yuv420p"
    stream.codec_context.time_base = Fraction(1, 1000)
    stream.codec_context.gop_size = 12
    stream.options = {"preset": "ultrafast", "x264-params": f"bframes={bframes}"}
    pts, times = 0, []
    for index in range(NUM_FRAMES):
        frame = av.VideoFrame.from_ndarray(_frame_with_number(index), format="rgb24")
        frame.pts, frame.time_base = pts, Fraction(1, 1000)
        times.append(pts / 1000)
        pts += rng.choice([10, 40, 40, 100, 300])
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path, times


@pytest.fixture(scope="module", params=[0, 2], ids=["no-bframes", "bframes"])
def vfr_video(request, tmp_path_factory):
    return _write_vfr(tmp_path_factory.mktemp("vfr") / "vfr.mp4", request.param, seed=request.param)


def test_every_segment_count_returns_the_ith_frames(vfr_video):
    path, _ = vfr_video
    with av.open(str(path)) as container:
        fps = float(container.streams.video[0].average_rate)
    for num_segments in range(1, 65):
        decoded = read_video_frames(path, num_segments=num_segments)
        expected = sample_frame_indices(NUM_FRAMES, fps, num_segments)
        assert decoded.num_frames == NUM_FRAMES
        assert decoded.frame_indices == expected
        assert [_number_in_frame(frame) for frame in decoded.frames] == expected, num_segments


def test_all_frames_and_explicit_indices(vfr_video):
    path, times = vfr_video
    everything = read_video_frames(path, num_segments=None)
    assert [_number_in_frame(frame) for frame in everything.frames] == list(range(NUM_FRAMES))
    # Timestamps are the frames' presentation times, not index / average fps.
    assert everything.timestamps == pytest.approx([t - times[0] for t in times], abs=1e-3)
    picked = [3, 4, 5, 60, 61, 99]
    decoded = read_video_frames(path, indices=picked)
    assert [_number_in_frame(frame) for frame in decoded.frames] == picked
    # The processor without sampling uses every frame, in order.
    out = InternVLVideoProcessor()(str(path), do_sample_frames=False, image_size=SIDE, return_metadata=True)
    assert out["num_frames"] == [NUM_FRAMES]
    assert out["frame_indices"] == [list(range(NUM_FRAMES))]


def test_far_targets_seek_instead_of_decoding_everything(tmp_path):
    path, _ = _write_vfr(tmp_path / "long.mp4", 0, seed=5)
    decoded = read_video_frames(path, indices=[0, 95])
    assert [_number_in_frame(frame) for frame in decoded.frames] == [0, 95]
    assert decoded.num_decoded <= 1 + 12  # frame 0, then at most one keyframe interval (gop 12)
