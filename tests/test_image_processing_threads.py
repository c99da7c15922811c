"""Threads of the image processor (issue 12): one bounded, reused pool; a lazily opened PIL image shared by threads."""

from __future__ import annotations

import threading

import numpy as np
from PIL import Image
from resize_helpers import random_photo

from transformers_internvl import InternVLImageProcessor
from transformers_internvl.processing import exact_resize


def test_one_bounded_pool_for_every_num_workers():
    image = random_photo()
    processor = InternVLImageProcessor(max_dynamic_patch=1)
    expected = processor(image, num_workers=1)["pixel_values"]
    before = threading.active_count()
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(num_workers: int) -> None:
        try:
            results[num_workers] = processor(image, num_workers=num_workers)["pixel_values"]
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    callers = [threading.Thread(target=work, args=(n,)) for n in range(2, 12)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert errors == []
    # Ten distinct num_workers: the pixels never depend on it, and only one pool of bounded size exists.
    assert all(np.array_equal(values, expected) for values in results.values()) and len(results) == 10
    pool_threads = [t for t in threading.enumerate() if t.name.startswith("internvl-preprocess")]
    assert 1 <= len(pool_threads) <= exact_resize._MAX_POOL_THREADS
    assert threading.active_count() <= before + exact_resize._MAX_POOL_THREADS
    assert exact_resize._pool() is exact_resize._pool()
    # A huge num_workers is capped to the pool (no thread per requested worker).
    assert np.array_equal(processor(image, num_workers=10_000)["pixel_values"], expected)
    assert (
        len([t for t in threading.enumerate() if t.name.startswith("internvl-preprocess")])
        <= exact_resize._MAX_POOL_THREADS
    )


def test_threaded_resize_gives_the_serial_pixels_and_reports_failures(monkeypatch):
    """With threads, a batch of images (grids with thumbnails) gives the bytes of the one-thread run, and a strip
    resize that fails on a pool thread raises from the call; the pool still works afterwards."""
    import pytest

    images = [random_photo(1000, 800), random_photo(640, 1200), random_photo(900, 300)]
    processor = InternVLImageProcessor(max_dynamic_patch=6)
    expected = processor(images, num_workers=1)["pixel_values"]
    assert expected.shape[0] > 3  # grids with thumbnails
    for workers in (2, 3):
        assert np.array_equal(processor(images, num_workers=workers)["pixel_values"], expected)

    original_resize = Image.Image.resize

    def resize(self, size, *args, **kwargs):  # every resize that runs on a pool thread (a strip) fails
        if threading.current_thread() is not threading.main_thread():
            raise OSError("decoder broke")
        return original_resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", resize)
    with pytest.raises(OSError, match="decoder broke"):
        processor(images[0], num_workers=2)
    monkeypatch.setattr(Image.Image, "resize", original_resize)
    assert np.array_equal(processor(images, num_workers=2)["pixel_values"], expected)
