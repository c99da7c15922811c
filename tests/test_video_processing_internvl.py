"""InternVLVideoProcessor: the original frame indices, PyAV decoding of only the sampled frames, inputs, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import FIXTURES
from PIL import Image

from transformers_internvl import InternVLImageProcessor, InternVLVideoProcessor, sample_frame_indices
from transformers_internvl.processing.video_processing_internvl import read_video_frames

av = pytest.importorskip("av")

FRAME_CASES = json.loads((FIXTURES / "video" / "frame_indices.json").read_text(encoding="utf-8"))["cases"]
SIDE = 64
BLOCK = SIDE // 4


def _frame_with_number(index: int) -> np.ndarray:
    """A 64x64 RGB frame whose 4x4 black/white blocks spell `index` in binary (survives lossy coding)."""
    frame = np.zeros((SIDE, SIDE, 3), dtype=np.uint8)
    for bit in range(16):
        row, col = divmod(bit, 4)
        if (index >> bit) & 1:
            frame[row * BLOCK : (row + 1) * BLOCK, col * BLOCK : (col + 1) * BLOCK] = 255
    return frame


def _number_in_frame(image: Image.Image) -> int:
    gray = np.asarray(image.convert("L").resize((SIDE, SIDE), Image.Resampling.BILINEAR)).astype(np.float64)
    value = 0
    for bit in range(16):
        row, col = divmod(bit, 4)
        block = gray[row * BLOCK + 4 : (row + 1) * BLOCK - 4, col * BLOCK + 4 : (col + 1) * BLOCK - 4]
        value |= int(block.mean() > 128) << bit
    return value


def _write_video(path: Path, num_frames: int, fps: int = 5, codec: str = "libx264", gop: int = 50) -> Path:
    pixel_format = {"gif": "rgb8"}.get(codec, "yuv420p")
    container = av.open(str(path), "w")
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height, stream.pix_fmt = SIDE, SIDE, pixel_format
    if codec != "gif":
        stream.codec_context.gop_size = gop
    if codec == "libx264":
        stream.options = {"preset": "ultrafast"}
    for index in range(num_frames):
        for packet in stream.encode(av.VideoFrame.from_ndarray(_frame_with_number(index), format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


@pytest.fixture(scope="module")
def short_mp4(tmp_path_factory):
    return _write_video(tmp_path_factory.mktemp("video") / "short.mp4", 120, fps=10, gop=12)


@pytest.fixture(scope="module")
def long_mp4(tmp_path_factory):
    # Ten minutes at 5 fps, a keyframe every 50 frames.
    return _write_video(tmp_path_factory.mktemp("video") / "long.mp4", 10 * 60 * 5, fps=5, gop=50)


@pytest.mark.parametrize("case", FRAME_CASES, ids=lambda c: f"{c['num_frames']}f_{c['num_segments']}s_{c['bound']}")
def test_frame_indices_match_reference(case):
    indices = sample_frame_indices(
        case["num_frames"], case["fps"], case["num_segments"], case["bound"], case["first_idx"], case["max_frame"]
    )
    assert indices == case["frame_indices"]
    # The default max_frame is the original's convention: num_frames - 1 for decoded videos (first_idx 0) and
    # num_frames for 1-based frame folders (first_idx 1).
    default = sample_frame_indices(
        case["num_frames"], case["fps"], case["num_segments"], case["bound"], case["first_idx"]
    )
    assert default == case["frame_indices"]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"num_frames": 0, "fps": 30}, ValueError),
        ({"num_frames": 10, "fps": 0}, ValueError),
        ({"num_frames": 10, "fps": 30, "num_segments": 0}, ValueError),
        ({"num_frames": 10.5, "fps": 30}, TypeError),
        ({"num_frames": 10, "fps": 30, "bound": (1.0,)}, TypeError),
        ({"num_frames": 10, "fps": 30, "bound": (2.0, 1.0)}, ValueError),
        ({"num_frames": 10, "fps": 1, "bound": (50.0, 60.0)}, ValueError),  # window after the end
    ],
)
def test_sample_frame_indices_rejects_bad_arguments(kwargs, error):
    with pytest.raises(error):
        sample_frame_indices(**kwargs)


def test_mp4_returns_the_sampled_frames(short_mp4):
    decoded = read_video_frames(short_mp4, num_segments=8)
    expected = sample_frame_indices(120, 10.0, 8)
    assert decoded.num_frames == 120 and decoded.fps == 10.0
    assert decoded.frame_indices == expected
    assert [_number_in_frame(frame) for frame in decoded.frames] == expected
    bounded = read_video_frames(short_mp4, num_segments=4, bound=(2.0, 6.0))
    expected = sample_frame_indices(120, 10.0, 4, (2.0, 6.0))
    assert [_number_in_frame(frame) for frame in bounded.frames] == expected
    # More segments than frames in the window: repeated indices come back as the same frame.
    many = read_video_frames(short_mp4, num_segments=12, bound=(0.0, 0.5))
    assert [_number_in_frame(frame) for frame in many.frames] == sample_frame_indices(120, 10.0, 12, (0.0, 0.5))


def test_processor_pixels_are_one_bicubic_tile_per_frame(short_mp4):
    processor = InternVLVideoProcessor()
    out = processor(videos=str(short_mp4), return_tensors="pt", return_metadata=True)
    indices = sample_frame_indices(120, 10.0, 8)
    assert out["pixel_values_videos"].shape == (8, 3, 448, 448)
    assert out["num_frames"].tolist() == [8]
    assert out["frame_indices"] == [indices]
    assert out["timestamps"] == [[i / 10.0 for i in indices]]
    assert out["video_metadata"][0].total_num_frames == 120
    # Same as the original's per-frame dynamic_preprocess(max_num=1): the frame resized to 448 x 448, normalised.
    frames = read_video_frames(short_mp4, num_segments=8).frames
    expected = InternVLImageProcessor(max_dynamic_patch=1)(images=[[f] for f in frames], return_tensors="pt")
    assert torch.equal(out["pixel_values_videos"], expected["pixel_values"])


def test_long_video_decodes_only_a_fraction(long_mp4):
    decoded = read_video_frames(long_mp4, num_segments=8)
    assert decoded.num_frames == 3000
    assert [_number_in_frame(frame) for frame in decoded.frames] == sample_frame_indices(3000, 5.0, 8)
    # Each sampled frame costs at most one keyframe interval (50) of decoding, not the whole video.
    assert decoded.num_decoded <= 8 * 50
    assert decoded.num_decoded * 5 < decoded.num_frames


@pytest.mark.parametrize(
    ("suffix", "codec"), [("webm", "libvpx-vp9"), ("mkv", "libx264"), ("avi", "mpeg4"), ("gif", "gif")]
)
def test_containers(tmp_path, suffix, codec):
    if codec not in av.codecs_available:
        pytest.skip(f"FFmpeg build has no {codec} encoder")
    path = _write_video(tmp_path / f"clip.{suffix}", 60, fps=10, codec=codec, gop=10)
    decoded = read_video_frames(path, num_segments=6)
    expected = sample_frame_indices(60, 10.0, 6)
    assert decoded.num_frames == 60
    assert [_number_in_frame(frame) for frame in decoded.frames] == expected


def test_bytes_and_batches(short_mp4):
    processor = InternVLVideoProcessor(num_segments=4)
    data = short_mp4.read_bytes()
    from_path = processor(videos=str(short_mp4), return_tensors="pt")["pixel_values_videos"]
    assert torch.equal(processor(videos=data, return_tensors="pt")["pixel_values_videos"], from_path)
    batch = processor(videos=[short_mp4, data], num_segments=3, return_tensors="pt")
    assert batch["num_frames"].tolist() == [3, 3]
    assert batch["pixel_values_videos"].shape == (6, 3, 448, 448)


def test_decoded_frames():
    processor = InternVLVideoProcessor()
    frames = np.stack([_frame_with_number(i) for i in range(20)])
    # Without an explicit num_segments every frame is used.
    assert processor(videos=frames)["num_frames"] == [20]
    listed = processor(videos=[Image.fromarray(f) for f in frames], return_tensors="pt")
    chw = processor(videos=torch.from_numpy(frames).permute(0, 3, 1, 2), return_tensors="pt")
    assert torch.equal(listed["pixel_values_videos"], chw["pixel_values_videos"])
    # With num_segments (or its alias num_frames) the original formula samples them.
    sampled = processor(videos=frames, num_segments=4, return_metadata=True, return_tensors="pt")
    indices = sample_frame_indices(20, 1.0, 4)
    assert sampled["frame_indices"] == [indices]
    assert torch.equal(sampled["pixel_values_videos"], listed["pixel_values_videos"][indices])
    assert processor(videos=frames, num_frames=4)["num_frames"] == [4]
    bounded = processor(
        videos=frames, num_segments=2, bound=(0.5, 1.5), video_metadata={"fps": 10}, return_metadata=True
    )
    assert bounded["frame_indices"] == [sample_frame_indices(20, 10.0, 2, (0.5, 1.5))]
    # A batch of decoded videos.
    batch = processor(videos=[frames, frames[:5]], return_tensors="pt")
    assert batch["num_frames"].tolist() == [20, 5]


def _truncated_faststart_mp4(tmp_path) -> bytes:
    path = tmp_path / "faststart.mp4"
    container = av.open(str(path), "w", options={"movflags": "faststart"})
    stream = container.add_stream("libx264", rate=10)
    stream.width, stream.height, stream.pix_fmt = SIDE, SIDE, "yuv420p"
    stream.options = {"preset": "ultrafast"}
    for index in range(100):
        for packet in stream.encode(av.VideoFrame.from_ndarray(_frame_with_number(index), format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    data = path.read_bytes()
    return data[: len(data) // 2]  # the index (at the front) promises 100 frames; half the data is gone


def _zero_frame_avi(tmp_path) -> Path:
    path = tmp_path / "empty.avi"
    container = av.open(str(path), "w")
    stream = container.add_stream("mpeg4", rate=5)
    stream.width, stream.height, stream.pix_fmt = SIDE, SIDE, "yuv420p"
    container.start_encoding()
    container.close()
    return path


def test_bad_videos(tmp_path, short_mp4):
    processor = InternVLVideoProcessor()
    with pytest.raises(ValueError, match="could not open"):
        processor(videos=b"definitely not a video" * 50)
    with pytest.raises(ValueError, match="ended before frame|could not open|decoding failed|truncated"):
        processor(videos=_truncated_faststart_mp4(tmp_path))
    non_faststart = short_mp4.read_bytes()
    with pytest.raises(ValueError):
        processor(videos=non_faststart[: len(non_faststart) // 2])  # index at the end is gone
    with pytest.raises(ValueError, match="no frames"):
        processor(videos=_zero_frame_avi(tmp_path))
    with pytest.raises(FileNotFoundError):
        processor(videos=str(tmp_path / "missing.mp4"))
    with pytest.raises(ValueError, match="num_segments"):
        processor(videos=short_mp4, num_segments=0)
    with pytest.raises(TypeError, match="videos"):
        processor(videos=123)
    with pytest.raises(ValueError, match="empty"):
        processor(videos=[])
    with pytest.raises(ValueError, match="bound"):
        processor(videos=short_mp4, bound=(100.0, 200.0))
    with pytest.raises(TypeError, match="bound"):
        processor(videos=short_mp4, bound=3.0)
    with pytest.raises(ValueError, match="fps"):
        processor(videos=short_mp4, fps=2)
    with pytest.raises(ValueError, match="video_metadata"):
        processor(videos=np.zeros((4, 8, 8, 3), np.uint8), num_segments=2, bound=(0.0, 1.0))
    with pytest.raises(TypeError, match="uint8"):
        processor(videos=np.zeros((4, 8, 8, 3), np.float32))
    with pytest.raises(TypeError, match="unexpected"):
        processor(videos=short_mp4, not_an_option=1)


def test_save_and_load_round_trip(tmp_path):
    from transformers.models.auto.video_processing_auto import AutoVideoProcessor

    processor = InternVLVideoProcessor(num_segments=16, image_size=448)
    processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "video_preprocessor_config.json").read_text())
    assert config["video_processor_type"] == "InternVLChatVideoProcessor" and config["num_segments"] == 16
    for loaded in (InternVLVideoProcessor.from_pretrained(tmp_path), AutoVideoProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is InternVLVideoProcessor
        assert loaded.to_dict() == processor.to_dict()
    assert InternVLVideoProcessor(num_frames=32).num_segments == 32


def test_config_saved_under_the_name_before_the_rename_loads_this_class_not_transformers(tmp_path):
    """transformers has its own `InternVLVideoProcessor`; a config saved under that name by this package (before
    the rename to `InternVLChatVideoProcessor`) in an InternVL folder loads this package's class."""
    from transformers.models.auto.video_processing_auto import AutoVideoProcessor

    from transformers_internvl.processing.video_processing_internvl import InternVLChatVideoProcessor

    assert InternVLVideoProcessor is InternVLChatVideoProcessor
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "internvl_chat"}))
    InternVLVideoProcessor(num_segments=5).save_pretrained(tmp_path)
    path = tmp_path / "video_preprocessor_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "video_processor_type": "InternVLVideoProcessor"}))
    loaded = AutoVideoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is InternVLChatVideoProcessor and loaded.num_segments == 5
