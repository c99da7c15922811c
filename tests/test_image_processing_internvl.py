"""InternVLImageProcessor: reference pixel parity, grouping and budgets, input types, errors, save/load."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
import torch
from helpers import FIXTURES, INTERNLM2_DIR, ORIGINAL_PREPROCESSOR_CONFIG
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file
from transformers.models.auto.image_processing_auto import AutoImageProcessor

from transformers_internvl import InternVLImageProcessor, plan_tiles
from transformers_internvl.processing.exact_resize import ResizeJob, _run_jobs, _SerialExecutor

PREPROCESS = json.loads((FIXTURES / "preprocess" / "preprocess.json").read_text(encoding="utf-8"))
CASES = [(image, case) for image in PREPROCESS["images"] for case in image["cases"]]
TOL = 1e-6


@pytest.fixture(scope="module")
def processor():
    return InternVLImageProcessor()


def _open(image_entry):
    return Image.open(FIXTURES / image_entry["file"])


def _uint8_tiles(processor, image, **kwargs):
    """The resized/cropped uint8 tiles (before ToTensor), as (N, 448, 448, 3)."""
    levels = processor(images=image, do_rescale=False, do_normalize=False, return_tensors="np", **kwargs)
    values = levels["pixel_values"]
    assert np.array_equal(values, np.round(values)) and values.min() >= 0 and values.max() <= 255
    return values.astype(np.uint8).transpose(0, 2, 3, 1)


@pytest.mark.parametrize(("image", "case"), CASES, ids=[case["case_id"] for _, case in CASES])
def test_reference_pixels(processor, image, case):
    pil = _open(image)
    out = processor(
        images=pil, max_dynamic_patch=case["max_num"], min_dynamic_patch=case["min_num"], return_tensors="pt"
    )
    pixel_values = out["pixel_values"]
    assert out["num_tiles"].tolist() == [case["num_tiles"]]
    assert pixel_values.shape == (case["num_tiles"], 3, 448, 448) and pixel_values.dtype == torch.float32

    uint8_tiles = _uint8_tiles(processor, pil, max_dynamic_patch=case["max_num"])
    values = pixel_values.numpy()
    for index, expected in enumerate(case["per_tile"]):
        tile = values[index]
        assert (
            hashlib.sha256(np.ascontiguousarray(uint8_tiles[index]).tobytes()).hexdigest()
            == expected["uint8_hwc_sha256"]
        )
        assert uint8_tiles[index].reshape(-1, 3).astype(np.int64).sum(0).tolist() == expected["uint8_sum_per_channel"]
        assert hashlib.sha256(tile.astype("<f4").tobytes()).hexdigest() == expected["float32_sha256"]
        flat = tile.reshape(3, -1).astype(np.float64)
        np.testing.assert_allclose(flat.mean(1), expected["mean"], atol=TOL, rtol=0)
        np.testing.assert_allclose(flat.std(1), expected["std"], atol=TOL, rtol=0)
        np.testing.assert_allclose(flat.min(1), expected["min"], atol=TOL, rtol=0)
        np.testing.assert_allclose(flat.max(1), expected["max"], atol=TOL, rtol=0)
    for tile, channel, y, x, value in case["samples"]:
        assert abs(float(values[tile, channel, y, x]) - value) <= TOL

    if case["full_tensor"] is not None:
        reference = load_file(FIXTURES / case["full_tensor"]["file"])[case["full_tensor"]["key"]]
        start = case["full_tensor"]["tile_start"]
        reference = reference[start : start + case["full_tensor"]["num_tiles"]]
        assert (pixel_values - reference).abs().max().item() <= TOL


def test_full_tensors_and_model_io(processor):
    full = load_file(FIXTURES / "preprocess" / "full_tensors.safetensors")
    for key, reference in full.items():
        name, max_num = key.split("__max")
        pil = Image.open(FIXTURES / "preprocess" / "images" / f"{name}.png")
        out = processor(images=pil, max_dynamic_patch=int(max_num), return_tensors="pt")
        assert (out["pixel_values"] - reference).abs().max().item() <= TOL
    # tiny-internlm2's pixel_values are the preprocessed rgb_1920x1080 at max 6 (2x1 grid + thumbnail).
    reference = load_file(INTERNLM2_DIR / "io.safetensors")["pixel_values"]
    pil = Image.open(FIXTURES / "preprocess" / "images" / "rgb_1920x1080.png")
    out = processor(images=pil, max_dynamic_patch=6, return_tensors="pt")
    assert out["pixel_values"].shape == reference.shape
    assert (out["pixel_values"] - reference).abs().max().item() <= TOL


@pytest.mark.parametrize("num_workers", [1, 2, 5])
def test_threads_do_not_change_pixels(num_workers):
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (1111, 1717, 3), dtype=np.uint8))
    single = InternVLImageProcessor(num_workers=1)(images=image, return_tensors="np")["pixel_values"]
    threaded = InternVLImageProcessor(num_workers=num_workers)(images=image, return_tensors="np")["pixel_values"]
    assert np.array_equal(single, threaded)
    # And both equal a plain PIL resize + crop (uint8 level check).
    plan = plan_tiles(1717, 1111)
    resized = np.asarray(image.resize(plan.target_size, Image.Resampling.BICUBIC))
    levels = InternVLImageProcessor(num_workers=num_workers)(
        images=image, do_rescale=False, do_normalize=False, return_tensors="np"
    )["pixel_values"]
    for index, (left, top, right, bottom) in enumerate(plan.tile_boxes):
        assert np.array_equal(levels[index].transpose(1, 2, 0), resized[top:bottom, left:right])
    thumbnail = np.asarray(image.resize((448, 448), Image.Resampling.BICUBIC))
    assert np.array_equal(levels[-1].transpose(1, 2, 0), thumbnail)


@settings(max_examples=40, deadline=None)
@given(
    src=st.tuples(st.integers(1, 120), st.integers(1, 120)),
    dst=st.tuples(st.integers(1, 160), st.integers(1, 160)),
    first_parts=st.integers(1, 5),
    last_parts=st.integers(1, 5),
    resample=st.sampled_from([Image.Resampling.BICUBIC, Image.Resampling.BILINEAR, Image.Resampling.LANCZOS]),
)
def test_strip_wise_resize_equals_pil_resize(src, dst, first_parts, last_parts, resample):
    rng = np.random.default_rng(src[0] * 1000 + src[1])
    image = Image.fromarray(rng.integers(0, 256, (src[1], src[0], 3), dtype=np.uint8))
    expected = np.asarray(image.resize(dst, resample))
    got = np.zeros_like(expected)
    covered = np.zeros(expected.shape[:2], dtype=np.int32)

    def write(region, y0, x0):
        got[y0 : y0 + region.shape[0], x0 : x0 + region.shape[1]] = region
        covered[y0 : y0 + region.shape[0], x0 : x0 + region.shape[1]] += 1

    _run_jobs([ResizeJob(image, dst, write)], resample, [(first_parts, last_parts)], _SerialExecutor())
    assert np.array_equal(got, expected)
    assert (covered == 1).all()


def _sizes(processor, images, **kwargs):
    return processor(images=images, **kwargs)["num_tiles"]


def test_grouping_and_budgets(processor):
    wide = Image.new("RGB", (1920, 1080))
    tall = Image.new("RGB", (500, 3000))
    # 1000 px square is past the area threshold of every square grid up to 3x3 (0.5 x 448^2 x 9 px), so it gets the
    # same grids as any larger square at budgets <= 12, for a quarter of the resize work.
    big = Image.new("RGB", (1000, 1000))
    one = plan_tiles(1920, 1080, 12).num_tiles
    # A single image, a flat list (ONE sample) and a list of lists (a batch of samples).
    assert _sizes(processor, wide) == [one]
    assert _sizes(processor, [wide, tall, big]) == [plan_tiles(*im.size, 12).num_tiles for im in (wide, tall, big)]
    # Training rule: max_total_tiles = n_max -> n_max // num_images each.
    assert _sizes(processor, [wide, tall, big], max_total_tiles=12) == [
        plan_tiles(*im.size, 4).num_tiles for im in (wide, tall, big)
    ]
    # Evaluation rule with 8 images: 64 // 8 = 8 each; 20 images: 3 each.
    assert _sizes(processor, [big] * 8) == [plan_tiles(*big.size, 8).num_tiles] * 8
    assert _sizes(processor, [big] * 20) == [plan_tiles(*big.size, 3).num_tiles] * 20
    # No sharing.
    assert _sizes(processor, [big] * 20, max_total_tiles=None) == [plan_tiles(*big.size, 12).num_tiles] * 20
    # Batch of samples: each inner list shares its own budget.
    batch = processor(images=[[big], [big, big, big]], max_total_tiles=12, return_tensors="pt")
    assert (
        batch["num_tiles"].tolist() == [plan_tiles(*big.size, 12).num_tiles] + [plan_tiles(*big.size, 4).num_tiles] * 3
    )
    assert batch["pixel_values"].shape[0] == sum(batch["num_tiles"].tolist())
    # Tiles come in image order: the second sample's first tile is the big image's first 448 crop at budget 4.
    alone = processor(images=big, max_dynamic_patch=4, return_tensors="pt")["pixel_values"]
    first = plan_tiles(*big.size, 12).num_tiles
    assert torch.equal(batch["pixel_values"][first : first + alone.shape[0]], alone)
    # min_dynamic_patch above the per-image budget: the original's candidate set is empty, so each image is one tile.
    assert _sizes(processor, [big] * 8, min_dynamic_patch=12) == [1] * 8


def test_overrides_and_aliases(processor):
    image = Image.new("RGB", (1920, 1080), (10, 200, 30))
    base = processor(images=image, max_dynamic_patch=6, return_tensors="pt")
    for alias in ("max_patches", "max_num"):
        out = processor(images=image, return_tensors="pt", **{alias: 6})
        assert torch.equal(out["pixel_values"], base["pixel_values"])
    assert processor(images=image, min_num=6, max_num=6)["num_tiles"] == [plan_tiles(1920, 1080, 6, 6).num_tiles]
    assert processor(images=image, use_thumbnail=False)["num_tiles"] == [8]
    small = processor(images=image, image_size=224, return_tensors="pt")["pixel_values"]
    assert small.shape == (9, 3, 224, 224)
    assert processor(images=image, force_image_size=224)["pixel_values"].shape[-1] == 224
    assert processor(images=image, size={"height": 224, "width": 224})["pixel_values"].shape[-1] == 224
    configured = InternVLImageProcessor(max_num=6, use_thumbnail=False)
    assert configured.max_dynamic_patch == 6 and configured(images=image)["num_tiles"] == [2]
    with pytest.raises(ValueError, match="alias"):
        processor(images=image, max_dynamic_patch=6, max_num=12)
    # Unnormalised outputs: ToTensor only, or raw levels.
    rescaled = processor(images=image, do_normalize=False, return_tensors="np")["pixel_values"]
    assert rescaled.min() >= 0 and rescaled.max() <= 1


def test_return_types(processor):
    image = Image.new("RGB", (800, 600))
    out = processor(images=image)
    assert isinstance(out["pixel_values"], np.ndarray) and out["num_tiles"] == [13]
    out = processor(images=image, return_tensors="pt")
    assert isinstance(out["pixel_values"], torch.Tensor) and out["num_tiles"].tolist() == [13]
    assert processor.get_number_of_image_tiles(600, 800) == 13
    assert processor.get_number_of_image_patches(600, 800, {"max_dynamic_patch": 6}) == 7


def test_input_types_give_identical_pixels(processor, tmp_path):
    rng = np.random.default_rng(3)
    array = rng.integers(0, 256, (300, 500, 3), dtype=np.uint8)
    pil = Image.fromarray(array)
    reference = processor(images=pil, max_dynamic_patch=4, return_tensors="pt")["pixel_values"]
    path = tmp_path / "image.png"
    pil.save(path)
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    inputs = [
        array,
        torch.from_numpy(array).permute(2, 0, 1),  # (C, H, W)
        torch.from_numpy(array),  # (H, W, C)
        str(path),
        path,
        buffer.getvalue(),
        io.BytesIO(buffer.getvalue()),
        Image.open(path),  # lazily loaded file
    ]
    for item in inputs:
        out = processor(images=item, max_dynamic_patch=4, return_tensors="pt")["pixel_values"]
        assert torch.equal(out, reference), type(item)
    # Channels-first numpy needs to be said when ambiguous-free detection would pick channels-last.
    chw = np.ascontiguousarray(array.transpose(2, 0, 1))
    assert torch.equal(processor(images=chw, max_dynamic_patch=4, return_tensors="pt")["pixel_values"], reference)
    assert torch.equal(
        processor(images=chw, input_data_format="channels_first", max_dynamic_patch=4, return_tensors="pt")[
            "pixel_values"
        ],
        reference,
    )


def test_rgb_conversion_follows_original(processor):
    # RGBA: alpha dropped without compositing (as .convert("RGB")); L: gray replicated.
    rng = np.random.default_rng(4)
    rgba = Image.fromarray(rng.integers(0, 256, (200, 300, 4), dtype=np.uint8), mode="RGBA")
    gray = Image.fromarray(rng.integers(0, 256, (200, 300), dtype=np.uint8), mode="L")
    for image in (rgba, gray):
        out = processor(images=image, return_tensors="pt")["pixel_values"]
        expected = processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]
        assert torch.equal(out, expected)
    levels = processor(images=gray, do_rescale=False, do_normalize=False)["pixel_values"]
    assert np.array_equal(levels[:, 0], levels[:, 1]) and np.array_equal(levels[:, 1], levels[:, 2])
    rgba_array = np.asarray(rgba)
    assert torch.equal(
        processor(images=rgba_array, return_tensors="pt")["pixel_values"],
        processor(images=rgba, return_tensors="pt")["pixel_values"],
    )


def _png_bytes(size=(64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (9, 9, 9)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("images", "kwargs", "error", "match"),
    [
        (b"not an image at all", {}, ValueError, "could not decode"),
        (_png_bytes()[:60], {}, ValueError, "images"),  # truncated PNG
        (None, {}, ValueError, "images"),
        ([], {}, ValueError, "empty"),
        ([[]], {}, ValueError, "empty"),
        (123, {}, TypeError, "images"),
        ([Image.new("RGB", (8, 8)), [Image.new("RGB", (8, 8))]], {}, ValueError, "mixes"),
        (np.zeros((10, 10, 3), dtype=np.float32), {}, TypeError, "uint8"),
        (np.zeros((10, 10, 7), dtype=np.uint8), {}, ValueError, "channel"),
        (Image.new("RGB", (8, 8)), {"max_dynamic_patch": 0}, ValueError, "max_dynamic_patch"),
        (Image.new("RGB", (8, 8)), {"max_dynamic_patch": "12"}, TypeError, "max_dynamic_patch"),
        (Image.new("RGB", (8, 8)), {"min_dynamic_patch": 5, "max_dynamic_patch": 4}, ValueError, "min_dynamic_patch"),
        (Image.new("RGB", (8, 8)), {"max_total_tiles": 0}, ValueError, "max_total_tiles"),
        (Image.new("RGB", (8, 8)), {"use_thumbnail": "yes"}, TypeError, "use_thumbnail"),
        (Image.new("RGB", (8, 8)), {"image_mean": (0.5, 0.5)}, TypeError, "image_mean"),
        (Image.new("RGB", (8, 8)), {"do_resize": False}, ValueError, "do_resize"),
        (Image.new("RGB", (8, 8)), {"not_an_option": 3}, TypeError, "not_an_option"),
    ],
)
def test_bad_input(processor, images, kwargs, error, match):
    with pytest.raises(error, match=match):
        processor(images=images, **kwargs)


def test_missing_file_and_decompression_bomb(processor, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError):
        processor(images=str(tmp_path / "missing.png"))
    path = tmp_path / "large.png"
    Image.new("RGB", (200, 200)).save(path)
    # Pillow's limit is honoured, not disabled: above 2x MAX_IMAGE_PIXELS opening raises.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)
    with pytest.raises(Image.DecompressionBombError):
        processor(images=str(path))


def test_constructor_validation():
    with pytest.raises(ValueError, match="min_dynamic_patch"):
        InternVLImageProcessor(min_dynamic_patch=13)
    with pytest.raises(ValueError, match="max_dynamic_patch"):
        InternVLImageProcessor(max_dynamic_patch=0)
    with pytest.raises(TypeError, match="image_size"):
        InternVLImageProcessor(image_size="448")


def test_save_and_load_round_trip(tmp_path):
    processor = InternVLImageProcessor(max_dynamic_patch=6, min_dynamic_patch=2, max_total_tiles=None, image_size=448)
    processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert config["image_processor_type"] == "InternVLChatImageProcessor"
    assert config["max_dynamic_patch"] == 6 and config["max_total_tiles"] is None
    for loaded in (InternVLImageProcessor.from_pretrained(tmp_path), AutoImageProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is InternVLImageProcessor
        assert loaded.to_dict() == processor.to_dict()
    image = Image.new("RGB", (1000, 700), (4, 5, 6))
    assert torch.equal(
        AutoImageProcessor.from_pretrained(tmp_path)(images=image, return_tensors="pt")["pixel_values"],
        processor(images=image, return_tensors="pt")["pixel_values"],
    )


def test_loads_original_checkpoint_preprocessor_keys(tmp_path):
    # Keys of an OpenGVLab preprocessor_config.json (a CLIP config for a 448 resize + crop) are tolerated.
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(ORIGINAL_PREPROCESSOR_CONFIG))
    loaded = InternVLImageProcessor.from_pretrained(tmp_path)
    assert loaded.image_size == 448 and loaded.max_dynamic_patch == 12


def test_thread_pool_survives_fork():
    # A pool created in the parent has no threads in a forked child (DataLoader workers): the child must make its own.
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork start method on this platform")
    rng = np.random.default_rng(5)
    image = Image.fromarray(rng.integers(0, 256, (800, 1200, 3), dtype=np.uint8))
    processor = InternVLImageProcessor(num_workers=2)
    expected = float(processor(images=image)["pixel_values"].astype(np.float64).sum())
    context = multiprocessing.get_context("fork")
    queue = context.Queue()

    def child(queue):
        queue.put(float(processor(images=image)["pixel_values"].astype(np.float64).sum()))

    process = context.Process(target=child, args=(queue,))
    process.start()
    process.join(60)
    assert process.exitcode == 0
    assert queue.get(timeout=5) == expected


def test_config_saved_under_the_name_before_the_rename_still_loads(tmp_path):
    from transformers_internvl.processing.image_processing_internvl import InternVLChatImageProcessor

    assert InternVLImageProcessor is InternVLChatImageProcessor
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "internvl_chat"}))
    InternVLImageProcessor(max_dynamic_patch=5).save_pretrained(tmp_path)
    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "image_processor_type": "InternVLImageProcessor"}))
    for loaded in (InternVLImageProcessor.from_pretrained(tmp_path), AutoImageProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is InternVLChatImageProcessor and loaded.max_dynamic_patch == 5
