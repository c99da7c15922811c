"""Session-6 held-out re-check of tiling, pixels and video frame indices against the ORIGINAL code's outputs.

`tests/fixtures/processing_heldout_s6/` holds what OpenGVLab/InternVL (2410d1d) `dynamic_preprocess` + ToTensor +
Normalize and the README's `get_index` gave on new cases (see its README; nothing there was computed by this
package). Tiles are compared bit for bit: the SHA-256 of every float32 tile, plus full tensors for three small cases.
"""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from transformers_internvl import InternVLImageProcessor, plan_tiles, sample_frame_indices
from transformers_internvl.processing import exact_resize
from transformers_internvl.processing.video_processing_internvl import InternVLChatVideoProcessor

FIXTURES = Path(__file__).parent / "fixtures" / "processing_heldout_s6"
sys.path.insert(0, str(FIXTURES))
from heldout_cases import make_image  # noqa: E402

RECORD = json.loads((FIXTURES / "original.json").read_text(encoding="utf-8"))
FULL = load_file(str(FIXTURES / "full_tensors.safetensors"))
SAMPLES = load_file(str(FIXTURES / "samples.safetensors"))
STRIDE_Y, STRIDE_X = RECORD["sample_stride"]


def _digests(pixel_values):
    return [hashlib.sha256(tile.contiguous().numpy().tobytes()).hexdigest()[:20] for tile in pixel_values]


def _case_id(entry):
    case = entry["case"]
    return (
        f"{case['width']}x{case['height']}-max{case['max_num']}-min{case['min_num']}-{case['image_size']}px-"
        f"{'thumb' if case['use_thumbnail'] else 'nothumb'}-{case['mode']}"
    )


def _process(entry, **extra):
    case = entry["case"]
    image = make_image(case["width"], case["height"], case["seed"], case["mode"])
    out = InternVLImageProcessor()(
        images=image,
        max_dynamic_patch=case["max_num"],
        min_dynamic_patch=case["min_num"],
        image_size=case["image_size"],
        use_thumbnail=case["use_thumbnail"],
        max_total_tiles=None,
        return_tensors="pt",
        **extra,
    )
    return out["pixel_values"], out["num_tiles"]


def test_fixture_covers_the_brief():
    cases = [entry["case"] for entry in RECORD["images"]]
    assert len(cases) >= 40
    assert {c["mode"] for c in cases} >= {"RGB", "RGBA", "P", "L", "CMYK"}
    assert {c["image_size"] for c in cases} >= {224, 448}
    assert {c["use_thumbnail"] for c in cases} == {True, False}
    assert any(c["min_num"] > 1 for c in cases)
    assert min(c["max_num"] for c in cases) == 1 and max(c["max_num"] for c in cases) == 40
    assert len(RECORD["video_indices"]) >= 40


@pytest.mark.parametrize("entry", RECORD["images"], ids=_case_id)
def test_tiles_match_the_original(entry):
    case = entry["case"]
    plan = plan_tiles(
        case["width"], case["height"], case["max_num"], case["min_num"], case["image_size"], case["use_thumbnail"]
    )
    assert list(plan.grid) == entry["grid"]
    assert plan.num_tiles == entry["num_tiles"]
    pixel_values, num_tiles = _process(entry)
    assert num_tiles.tolist() == [entry["num_tiles"]]
    assert pixel_values.shape == (entry["num_tiles"], 3, case["image_size"], case["image_size"])
    assert pixel_values.dtype == torch.float32
    key = f"image_{RECORD['images'].index(entry)}"
    assert torch.equal(pixel_values[:, :, ::STRIDE_Y, ::STRIDE_X], SAMPLES[key])
    if key in FULL:
        assert torch.equal(pixel_values, FULL[key])
    # Per-tile float64 sums locate a mismatch; the digests make the check bit-exact for every tile.
    sums = [float(tile.double().sum()) for tile in pixel_values]
    assert sums == pytest.approx(entry["tile_sums"], rel=0, abs=1e-6)
    assert _digests(pixel_values) == entry["tile_sha256"]


@pytest.mark.parametrize("num_workers", [1, 3])
@pytest.mark.parametrize("size", [(1, 3000, 12), (1792, 896, 40), (2048, 1536, 16), (2222, 1111, 36)])
def test_threaded_resize_matches_the_original(size, num_workers, monkeypatch):
    (entry,) = [e for e in RECORD["images"] if (e["case"]["width"], e["case"]["height"], e["case"]["max_num"]) == size]
    splits_seen = []
    real_splits = exact_resize._splits

    def spy(jobs, threads):
        parts = real_splits(jobs, threads)
        splits_seen.append(parts)
        return parts

    monkeypatch.setattr(exact_resize, "_splits", spy)
    pixel_values, _ = _process(entry, num_workers=num_workers)
    assert _digests(pixel_values) == entry["tile_sha256"]
    if num_workers > 1 and exact_resize._MAX_POOL_THREADS > 1:  # the large resize really ran in strips
        assert any(first > 0 for parts in splits_seen for first, _ in parts)


@pytest.mark.parametrize("entry", RECORD["multi"], ids=lambda e: f"{len(e['case']['sizes'])}-images")
def test_multi_image_budget_matches_the_original(entry):
    case = entry["case"]
    images = [make_image(w, h, case["seed"] + i) for i, (w, h) in enumerate(case["sizes"])]
    min_num = case.get("min_num", 1)
    out = InternVLImageProcessor()(
        images=[images],
        max_dynamic_patch=case["max_num"],
        min_dynamic_patch=min_num,
        max_total_tiles=case["max_total_tiles"],
        return_tensors="pt",
    )
    assert out["num_tiles"].tolist() == entry["num_tiles"]
    if min_num <= entry["budget"]:
        grids = [list(plan_tiles(w, h, entry["budget"], min_num).grid) for w, h in case["sizes"]]
        assert grids == entry["grids"]
    else:  # the original's candidate set is empty: (1, 1), one tile, no thumbnail
        assert entry["grids"] == [[1, 1]] * len(images) and entry["num_tiles"] == [1] * len(images)
    assert _digests(out["pixel_values"]) == entry["tile_sha256"]


def _video_id(entry):
    return f"max{entry['max_frame']}-fps{entry['fps']}-seg{entry['num_segments']}-{entry['bound']}-first{entry['first_idx']}"


def _selects_frames(entry):
    """Whether the window holds a frame: the original's start index (`max(first_idx, round(start * fps))`) is not
    past its end index (`min(round(end * fps), max_frame)`)."""
    if entry["bound"] is None:
        return True
    start, end = entry["bound"]
    return max(entry["first_idx"], round(start * entry["fps"])) <= min(round(end * entry["fps"]), entry["max_frame"])


VALID_VIDEO = [e for e in RECORD["video_indices"] if _selects_frames(e)]
EMPTY_WINDOW = [e for e in RECORD["video_indices"] if not _selects_frames(e)]


@pytest.mark.parametrize("entry", VALID_VIDEO, ids=_video_id)
def test_frame_indices_match_the_original(entry):
    num_frames = entry["max_frame"] - entry["first_idx"] + 1
    indices = sample_frame_indices(
        num_frames,
        entry["fps"],
        entry["num_segments"],
        bound=entry["bound"],
        first_idx=entry["first_idx"],
        max_frame=entry["max_frame"],
    )
    assert indices == entry["indices"]
    if entry["first_idx"] == 1:  # 1-based frame folders: the original passes max_frame = num_frames
        indices = sample_frame_indices(
            entry["max_frame"], entry["fps"], entry["num_segments"], bound=entry["bound"], first_idx=1
        )
        assert indices == entry["indices"]


@pytest.mark.parametrize("entry", EMPTY_WINDOW, ids=_video_id)
def test_window_outside_the_video_is_refused(entry):
    # The original's start index is past its end index here, and it returns a negative segment size's indices:
    # descending, outside the window or the video, or (one-frame video) frame 0 repeated. This package raises instead.
    assert len(EMPTY_WINDOW) == 5
    with pytest.raises(ValueError, match="bound"):
        sample_frame_indices(
            entry["max_frame"] + 1, entry["fps"], entry["num_segments"], bound=entry["bound"], first_idx=0
        )


@pytest.mark.parametrize("entry", RECORD["video_pixels"], ids=lambda e: f"{e['case']['num_frames']}-frames")
def test_video_frames_match_the_original(entry):
    case = entry["case"]
    frames = np.stack(
        [np.asarray(make_image(case["width"], case["height"], case["seed"] + t)) for t in range(case["num_frames"])]
    )
    out = InternVLChatVideoProcessor()(
        videos=frames,
        num_segments=case["num_segments"],
        video_metadata={"fps": case["fps"]},
        return_metadata=True,
        return_tensors="pt",
    )
    assert list(out["frame_indices"][0]) == entry["indices"]
    assert _digests(out["pixel_values_videos"]) == entry["tile_sha256"]
