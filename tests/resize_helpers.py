"""Shared pieces of the exact-resize tests: random photos and jobs that collect what the scheduler writes."""

from __future__ import annotations

import threading

import numpy as np
from PIL import Image

from transformers_internvl.processing.exact_resize import ResizeJob


def random_photo(width: int = 1000, height: int = 800, seed: int = 0) -> Image.Image:
    """`(width, height)` RGB image of uniform random bytes (the hardest case for any resize shortcut)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), mode="RGB")


def collecting_job(image: Image.Image, size: tuple[int, int]) -> tuple[ResizeJob, np.ndarray, np.ndarray]:
    """A job resizing `image` to `size`, the uint8 array its regions are written into, and how often each pixel was
    written (all ones when the regions cover the image once). Safe for writes from several threads."""
    got = np.zeros((size[1], size[0], *np.asarray(image).shape[2:]), dtype=np.uint8)
    covered = np.zeros((size[1], size[0]), dtype=np.int32)
    lock = threading.Lock()

    def write(region: np.ndarray, y0: int, x0: int) -> None:
        with lock:
            got[y0 : y0 + region.shape[0], x0 : x0 + region.shape[1]] = region
            covered[y0 : y0 + region.shape[0], x0 : x0 + region.shape[1]] += 1

    return ResizeJob(image, size, write), got, covered
