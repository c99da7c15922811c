"""Exact, threaded PIL resize: `Image.resize`'s bytes, several CPUs at once (this package's speed edge).

PIL's resize is separable: a horizontal and a vertical pass, each rounding to uint8, in an order Pillow picks from the
sizes. Each pass is independent across rows (horizontal) or columns (vertical), so `resize_into_tiles` runs the same
single-axis PIL passes on strips, in threads (PIL releases the GIL), and hands the resized pixels region by region to a
writer (the image processor's normaliser), never building the whole float image. The result is the same bytes as one
`image.resize(size, resample)` call; a self-check at first use (`_split_resize_is_exact`) confirms it for the
installed Pillow and otherwise falls back to plain `Image.resize`. On one CPU the cost is that of `Image.resize`.
Measured in `benchmarks/bench_preprocess.py`.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import numpy as np
import PIL
from PIL import Image
from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = ["resize_into_tiles"]


# ONE thread pool for the whole process, created at first use and shared by every processor and call, whatever their
# `num_workers` (which only sets how many strips a resize is cut into). Its size is bounded by `_MAX_POOL_THREADS`. A
# pool inherited through fork has no live threads, so a child process makes its own (the pid is checked).
_POOL: ThreadPoolExecutor | None = None
_POOL_PID: int | None = None
_POOL_LOCK = threading.Lock()
_MAX_POOL_THREADS = max(1, min(32, os.cpu_count() or 1))
# Below this many source + target pixels, threads cost more than they save.
_MIN_PIXELS_FOR_THREADS = 1 << 19


def _pool() -> ThreadPoolExecutor:
    """The process-wide resize pool (at most `_MAX_POOL_THREADS` threads, created lazily, reused)."""
    global _POOL, _POOL_PID
    with _POOL_LOCK:
        if _POOL is None or _POOL_PID != os.getpid():
            _POOL = ThreadPoolExecutor(max_workers=_MAX_POOL_THREADS, thread_name_prefix="internvl-preprocess")
            _POOL_PID = os.getpid()
        return _POOL


def _pillow_major_version() -> int:
    return int(PIL.__version__.split(".")[0])


def _horizontal_pass_first(src_w: int, src_h: int, dst_w: int, dst_h: int) -> bool:
    """Whether Pillow runs the horizontal pass before the vertical one for this resize.

    Pillow < 13 always does; Pillow 13 (`ImagingResampleInner`) does the vertical pass first when the height shrinks
    by more than twice as many pixels as the width.
    """
    if _pillow_major_version() < 13:
        return True
    return not (src_h - dst_h > 0 and src_h - dst_h > (src_w - dst_w) * 2)


def _strips(length: int, parts: int) -> list[tuple[int, int]]:
    parts = max(1, min(parts, length))
    bounds = np.linspace(0, length, parts + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(bounds) if b > a]


def _split_resize(
    image: Image.Image,
    size: tuple[int, int],
    resample: int,
    parts: int,
    write: Callable[[np.ndarray, int, int], None],
    run: Callable[[Callable[[Any], Any], Sequence[Any]], list[Any]],
) -> None:
    """`image.resize(size, resample)` as single-axis PIL passes on strips; regions go to `write(region, y0, x0)`."""
    src_w, src_h = image.size
    dst_w, dst_h = size
    need_horizontal = dst_w != src_w
    need_vertical = dst_h != src_h

    def horizontal(source: Image.Image, rows: tuple[int, int]) -> Image.Image:
        strip = source.crop((0, rows[0], source.width, rows[1]))
        return strip.resize((dst_w, rows[1] - rows[0]), resample)

    def vertical(source: Image.Image, cols: tuple[int, int]) -> Image.Image:
        strip = source.crop((cols[0], 0, cols[1], source.height))
        return strip.resize((cols[1] - cols[0], dst_h), resample)

    def finish_rows(source: Image.Image) -> None:  # last pass horizontal (or none): split by rows
        def task(rows: tuple[int, int]) -> None:
            if need_horizontal:
                region = np.asarray(horizontal(source, rows))
            else:
                region = np.asarray(source.crop((0, rows[0], source.width, rows[1])))
            write(region, rows[0], 0)

        run(task, _strips(source.height, parts))

    def finish_cols(source: Image.Image) -> None:  # last pass vertical: split by columns
        run(lambda cols: write(np.asarray(vertical(source, cols)), 0, cols[0]), _strips(source.width, parts))

    if need_horizontal and need_vertical:
        if _horizontal_pass_first(src_w, src_h, dst_w, dst_h):
            middle = Image.new(image.mode, (dst_w, src_h))
            row_strips = _strips(src_h, parts)
            for rows, strip in zip(row_strips, run(lambda rows: horizontal(image, rows), row_strips)):
                middle.paste(strip, (0, rows[0]))
            finish_cols(middle)
        else:
            middle = Image.new(image.mode, (src_w, dst_h))
            col_strips = _strips(src_w, parts)
            for cols, strip in zip(col_strips, run(lambda cols: vertical(image, cols), col_strips)):
                middle.paste(strip, (cols[0], 0))
            finish_rows(middle)
    elif need_vertical:
        finish_cols(image)
    else:
        finish_rows(image)


def _serial_run(function: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    return [function(item) for item in items]


@lru_cache(maxsize=1)
def _split_resize_is_exact() -> bool:
    """Self-check: the strip-wise passes give `Image.resize`'s bytes with the installed Pillow (both pass orders)."""
    rng = np.random.default_rng(0)
    cases = [
        ((40, 30), (25, 20)),  # horizontal pass first
        ((37, 23), (60, 11)),  # width grows, height shrinks: vertical first on Pillow >= 13
        ((64, 50), (44, 10)),  # height shrink == 2 x width shrink: horizontal first
        ((64, 51), (44, 10)),  # one more row: vertical first on Pillow >= 13
        ((30, 40), (30, 17)),  # vertical pass only
        ((30, 40), (50, 40)),  # horizontal pass only
        ((10, 12), (30, 25)),  # upscale both ways
        ((90, 70), (17, 13)),  # strong downscale
    ]
    for (src_w, src_h), size in cases:
        image = Image.fromarray(rng.integers(0, 256, (src_h, src_w, 3), dtype=np.uint8), mode="RGB")
        for resample in (Image.Resampling.BICUBIC, Image.Resampling.BILINEAR):
            expected = np.asarray(image.resize(size, resample))
            got = np.empty_like(expected)

            def write(region: np.ndarray, y0: int, x0: int, got: np.ndarray = got) -> None:
                got[y0 : y0 + region.shape[0], x0 : x0 + region.shape[1]] = region

            _split_resize(image, size, resample, 3, write, _serial_run)
            if not np.array_equal(expected, got):
                logger.warning_once(
                    f"Pillow {PIL.__version__}: strip-wise resizing does not reproduce Image.resize; using single "
                    "Image.resize calls (same pixels, slower)."
                )
                return False
    return True


def resize_into_tiles(
    image: Image.Image,
    size: tuple[int, int],
    resample: int,
    write: Callable[[np.ndarray, int, int], None],
    num_workers: int,
) -> None:
    """Resize `image` to `size` exactly as `image.resize(size, resample)` and hand the pixels to `write`.

    `write(region, y0, x0)` receives `(h, w, 3)` uint8 regions that together cover the resized image once.
    """
    src_w, src_h = image.size
    small = src_w * src_h + size[0] * size[1] < _MIN_PIXELS_FOR_THREADS
    if (
        num_workers <= 1
        or small
        or resample == Image.Resampling.NEAREST
        or image.mode != "RGB"
        or not _split_resize_is_exact()
    ):
        resized = image if image.size == tuple(size) else image.resize(size, resample)
        write(np.asarray(resized), 0, 0)
        return
    pool = _pool()
    parts = min(num_workers, _MAX_POOL_THREADS)
    _split_resize(image, size, resample, parts, write, lambda function, items: list(pool.map(function, items)))
