"""Bounded video sampling (issue 12): `num_segments` has a documented maximum, frame-index helpers validate their input
and never return an index outside the video."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transformers_internvl import InternVLVideoProcessor, sample_frame_indices
from transformers_internvl.processing.video_processing_internvl import (
    MAX_NUM_SEGMENTS,
    check_num_segments,
    read_video_frames,
)


def _original_get_index(bound, fps, max_frame, first_idx=0, num_segments=32):
    # Transcription of the original `get_index` (internvl_chat/eval/mvbench/evaluate_mvbench.py).
    if bound:
        start, end = bound[0], bound[1]
    else:
        start, end = -100000, 100000
    start_idx = max(first_idx, round(start * fps))
    end_idx = min(round(end * fps), max_frame)
    seg_size = float(end_idx - start_idx) / num_segments
    return [int(start_idx + (seg_size / 2) + np.round(seg_size * idx)) for idx in range(num_segments)]


@pytest.mark.parametrize("num_segments", [MAX_NUM_SEGMENTS + 1, 10**6, 10**12])
def test_huge_num_segments_is_refused_at_once(num_segments):
    started = time.perf_counter()
    with pytest.raises(ValueError, match=rf"`num_segments` must be <= {MAX_NUM_SEGMENTS}.*got {num_segments}"):
        sample_frame_indices(100, 30.0, num_segments)
    with pytest.raises(ValueError, match=rf"`num_segments` must be <= {MAX_NUM_SEGMENTS}"):
        InternVLVideoProcessor(num_segments=num_segments)
    with pytest.raises(ValueError, match=rf"`num_segments` must be <= {MAX_NUM_SEGMENTS}"):
        InternVLVideoProcessor()(np.zeros((4, 8, 8, 3), np.uint8), num_segments=num_segments)
    with pytest.raises(ValueError, match=rf"`num_segments` must be <= {MAX_NUM_SEGMENTS}"):
        InternVLVideoProcessor()(np.zeros((4, 8, 8, 3), np.uint8), num_frames=num_segments)
    assert time.perf_counter() - started < 1.0


def test_num_segments_limit_itself_is_accepted():
    assert check_num_segments("num_segments", MAX_NUM_SEGMENTS) == MAX_NUM_SEGMENTS
    assert len(sample_frame_indices(10, 1.0, MAX_NUM_SEGMENTS)) == MAX_NUM_SEGMENTS


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_segments": 2.5}, TypeError, "num_segments"),
        ({"num_segments": True}, TypeError, "num_segments"),
        ({"first_idx": -1}, ValueError, "first_idx"),
        ({"first_idx": 1.5}, TypeError, "first_idx"),
        ({"max_frame": 3.7}, TypeError, "max_frame"),
        ({"max_frame": -1}, ValueError, "max_frame"),
        ({"max_frame": 10}, ValueError, "max_frame"),  # beyond the last frame (0..9)
        ({"first_idx": 1, "max_frame": 0}, ValueError, "max_frame"),
        ({"fps": float("nan")}, ValueError, "fps"),
        ({"fps": "30"}, TypeError, "fps"),
        ({"bound": (float("nan"), 1.0)}, ValueError, "bound"),
        ({"bound": ("a", "b")}, TypeError, "bound"),
        ({"bound": "ab"}, TypeError, "bound"),
    ],
)
def test_sample_frame_indices_validates(kwargs, error, match):
    arguments = {"num_frames": 10, "fps": 1.0} | kwargs
    with pytest.raises(error, match=match):
        sample_frame_indices(**arguments)


def test_bounds_outside_the_video_are_clamped_as_in_the_original():
    # A window that starts before the video and ends after it: the original clamps to 0..max_frame.
    assert sample_frame_indices(10, 1.0, 4, (-50.0, 500.0)) == _original_get_index((-50.0, 500.0), 1.0, 9, 0, 4)
    # Huge finite bounds do not overflow.
    assert sample_frame_indices(10, 30.0, 3, (-1e308, 1e308)) == _original_get_index(None, 30.0, 9, 0, 3)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    num_frames=st.integers(1, 5000),
    fps=st.floats(0.1, 120.0),
    num_segments=st.integers(1, 128),
    first_idx=st.integers(0, 1),
    bound=st.none() | st.tuples(st.floats(-10.0, 200.0), st.floats(0.0, 400.0)),
)
def test_indices_equal_the_original_and_stay_in_range(num_frames, fps, num_segments, first_idx, bound):
    max_frame = first_idx + num_frames - 1
    if bound is not None and bound[0] > bound[1]:
        bound = (bound[1], bound[0])
    try:
        indices = sample_frame_indices(num_frames, fps, num_segments, bound, first_idx)
    except ValueError as error:
        # Only a window entirely after the video may be refused (the original would return indices past the end).
        assert "selects no frame" in str(error)
        assert max(first_idx, round(bound[0] * fps)) > min(round(bound[1] * fps), max_frame)
        return
    assert indices == _original_get_index(bound, fps, max_frame, first_idx, num_segments)
    assert all(first_idx <= index <= max_frame for index in indices)
    assert indices == sorted(indices)


def test_read_video_frames_validates_explicit_indices(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "clip.mp4"
    container = av.open(str(path), "w")
    stream = container.add_stream("mpeg4", rate=5)
    stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
    for index in range(6):
        frame = np.full((32, 32, 3), index * 40, np.uint8)
        for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    assert read_video_frames(path, indices=[0, np.int64(5)]).frame_indices == [0, 5]
    with pytest.raises(TypeError, match="indices"):
        read_video_frames(path, indices=[1.5])
    with pytest.raises(ValueError, match="outside the video"):
        read_video_frames(path, indices=[-1])
    with pytest.raises(ValueError, match="outside the video"):
        read_video_frames(path, indices=[6])
    with pytest.raises(ValueError, match="empty"):
        read_video_frames(path, indices=[])
    with pytest.raises(ValueError, match="MAX_NUM_SEGMENTS"):
        read_video_frames(path, indices=[0] * (MAX_NUM_SEGMENTS + 1))


def test_too_many_decoded_frames_are_refused():
    frames = np.zeros((MAX_NUM_SEGMENTS + 1, 2, 2, 3), np.uint8)
    with pytest.raises(ValueError, match="MAX_NUM_SEGMENTS"):
        InternVLVideoProcessor()(frames)
    assert InternVLVideoProcessor()(frames, num_segments=2, image_size=14)["num_frames"] == [2]
