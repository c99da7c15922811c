"""Exact, threaded PIL resize: `Image.resize`'s bytes, several CPUs at once (this package's speed edge).

PIL's resize is separable: a horizontal and a vertical pass, each rounding to uint8, in an order Pillow picks from the
sizes. Each pass is independent across rows (horizontal) or columns (vertical), so `resize_jobs` runs the same
single-axis PIL passes on strips, in threads (PIL releases the GIL), and hands the resized pixels region by region to a
writer (the image processor's normaliser), never building the whole float image. Several resizes share the pool: an
image's grid and thumbnail run their first passes side by side, many video frames run one whole resize each
(`_splits`). The result is the same bytes as one `image.resize(size, resample)` call per job; a self-check at first
use (`_split_resize_is_exact`) confirms it for the installed Pillow and otherwise falls back to plain `Image.resize`.
On one CPU the cost is that of `Image.resize`. Measured in `benchmarks/bench_preprocess.py`."""

from __future__ import annotations

import itertools
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import PIL
from PIL import Image
from transformers.utils import logging

from .image_loading import load_pil_image

logger = logging.get_logger(__name__)

__all__ = ["ResizeJob", "resize_jobs"]


# ONE thread pool for the whole process, created at first use and shared by every processor and call. Its size is
# bounded by `_MAX_POOL_THREADS`; a call's `num_workers` sets how many of its tasks run at once and how many strips a
# large resize is cut into. A pool inherited through fork has no live threads, so a child process makes its own (the
# pid is checked), and its lock is made anew (a thread of the parent may have held it at the fork).
_POOL: ThreadPoolExecutor | None = None
_POOL_PID: int | None = None
_POOL_LOCK = threading.Lock()
# `active` is set in the pool's own threads: a task (a writer) that resizes again runs serially there, as waiting on
# the pool from inside it could deadlock (every pool thread waiting for tasks queued behind it).
_POOL_THREAD = threading.local()
_MAX_POOL_THREADS = max(1, min(32, os.cpu_count() or 1))
# Below this many source + target pixels a resize is never cut into strips (one whole task).
_MIN_PIXELS_FOR_THREADS = 1 << 19


def _mark_pool_thread() -> None:
    _POOL_THREAD.active = True


def _renew_pool_lock() -> None:
    global _POOL_LOCK
    _POOL_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_pool_lock)


def _pool() -> ThreadPoolExecutor:
    """The process-wide resize pool (at most `_MAX_POOL_THREADS` threads, created lazily, reused)."""
    global _POOL, _POOL_PID
    with _POOL_LOCK:
        if _POOL is None or _POOL_PID != os.getpid():
            _POOL = ThreadPoolExecutor(
                max_workers=_MAX_POOL_THREADS, thread_name_prefix="internvl-preprocess", initializer=_mark_pool_thread
            )
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


Writer = Callable[[np.ndarray, int, int], None]


@dataclass(frozen=True)
class ResizeJob:
    """One exact resize: `image.resize(size, resample)`, its pixels handed to `write(region, y0, x0)` as `(h, w, 3)`
    uint8 regions (`(h, w)` or `(h, w, c)` for other modes, which are never cut) that together cover the resized image
    once (regions of one job may arrive from several threads)."""

    image: Image.Image
    size: tuple[int, int]
    write: Writer


class _SerialExecutor:
    """`submit` runs the function at once in the calling thread (the one-CPU path, the self-check, and the tasks a
    shut-down pool refuses)."""

    def submit(self, function: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(function(*args))
        except Exception as error:  # noqa: BLE001 - handed to the caller through the future, as a pool would
            future.set_exception(error)
        return future


def _horizontal(source: Image.Image, rows: tuple[int, int], width: int, resample: int) -> Image.Image:
    """PIL's horizontal pass over `rows` of `source` (the whole image when the rows cover it: no crop copy)."""
    if rows == (0, source.height):
        return source.resize((width, source.height), resample)
    return source.crop((0, rows[0], source.width, rows[1])).resize((width, rows[1] - rows[0]), resample)


def _vertical(source: Image.Image, cols: tuple[int, int], height: int, resample: int) -> Image.Image:
    """PIL's vertical pass over `cols` of `source`."""
    if cols == (0, source.width):
        return source.resize((source.width, height), resample)
    return source.crop((cols[0], 0, cols[1], source.height)).resize((cols[1] - cols[0], height), resample)


def _start_job(
    job: ResizeJob,
    resample: int,
    first_parts: int,
    last_parts: int,
    submit: Callable[..., None],
) -> None:
    """Submit the tasks of one job as single-axis PIL passes in Pillow's order.

    The first pass (when two are needed) runs on `first_parts` strips; once all are done (`then`, in the calling
    thread) their middle image is assembled and the last pass runs on `last_parts` strips, each writing its region.
    `first_parts == last_parts == 0` asks for one whole `image.resize` task.
    """
    image, write = job.image, job.write
    src_w, src_h = image.size
    dst_w, dst_h = job.size
    if (src_w, src_h) == (dst_w, dst_h):
        submit(lambda _: write(np.asarray(image), 0, 0), None)
        return
    if first_parts == 0:
        submit(lambda _: write(np.asarray(image.resize(job.size, resample)), 0, 0), None)
        return

    def last_by_rows(source: Image.Image) -> None:  # last pass horizontal: split by rows
        for rows in _strips(source.height, last_parts):
            submit(lambda rows: write(np.asarray(_horizontal(source, rows, dst_w, resample)), rows[0], 0), rows)

    def last_by_cols(source: Image.Image) -> None:  # last pass vertical: split by columns
        for cols in _strips(source.width, last_parts):
            submit(lambda cols: write(np.asarray(_vertical(source, cols, dst_h, resample)), 0, cols[0]), cols)

    if dst_h == src_h:
        last_by_rows(image)
        return
    if dst_w == src_w:
        last_by_cols(image)
        return
    horizontal_first = _horizontal_pass_first(src_w, src_h, dst_w, dst_h)
    if horizontal_first:
        strips = _strips(src_h, first_parts)
        middle_size, task = (dst_w, src_h), (lambda rows: _horizontal(image, rows, dst_w, resample))
    else:
        strips = _strips(src_w, first_parts)
        middle_size, task = (src_w, dst_h), (lambda cols: _vertical(image, cols, dst_h, resample))
    done: dict[tuple[int, int], Image.Image] = {}

    def collect(strip: tuple[int, int], result: Image.Image) -> None:
        done[strip] = result
        if len(done) < len(strips):
            return
        if len(strips) == 1:
            middle = result
        else:
            middle = Image.new(image.mode, middle_size, None)  # every pixel is pasted below: no fill needed
            for (start, _), part in done.items():
                middle.paste(part, (0, start) if horizontal_first else (start, 0))
        (last_by_cols if horizontal_first else last_by_rows)(middle)

    for strip in strips:
        submit(task, strip, then=lambda result, strip=strip: collect(strip, result))


def _run_jobs(
    jobs: Sequence[ResizeJob],
    resample: int,
    parts: Sequence[tuple[int, int]],
    executor: Any,
    limit: int | None = None,
) -> None:
    """Run every job's tasks on `executor` (`submit(fn, arg) -> Future`), job `i` cut in `parts[i]`
    (`(first_parts, last_parts)`, see `_start_job`), at most `limit` tasks at a time (None: no limit), in the order
    they become ready; continuations run in the calling thread.

    On the first failure the tasks not yet started are dropped or cancelled, the running ones are waited for (no
    region is written after this returns) and the error is raised. A task the pool refuses (shut down at interpreter
    exit) runs in the calling thread. Finished tasks arrive through a queue, one at a time (waiting on all pending
    futures for each would cost the calling thread time quadratic in the number of tasks).
    """
    ready: deque[tuple[Callable[[Any], Any], Any, Callable[[Any], None] | None]] = deque()
    pending: dict[Future, Callable[[Any], None] | None] = {}
    finished: queue.SimpleQueue[Future] = queue.SimpleQueue()

    def start_ready() -> None:
        while ready and (limit is None or len(pending) < limit):
            function, arg, then = ready.popleft()
            try:
                future = executor.submit(function, arg)
            except RuntimeError:  # the pool takes no more tasks (interpreter exit while a non-daemon thread runs)
                future = _SerialExecutor().submit(function, arg)
            pending[future] = then
            future.add_done_callback(finished.put)

    def submit(function: Callable[[Any], Any], arg: Any, then: Callable[[Any], None] | None = None) -> None:
        ready.append((function, arg, then))
        start_ready()

    try:
        for job, (first_parts, last_parts) in zip(jobs, parts):
            _start_job(job, resample, first_parts, last_parts, submit)
        while pending:
            future = finished.get()
            then = pending.pop(future)
            result = future.result()
            if then is not None:
                then(result)
            start_ready()
    except BaseException:
        ready.clear()
        for future in pending:
            future.cancel()
        wait(list(pending))
        raise


@lru_cache(maxsize=8)
def _split_resize_is_exact(resample: int) -> bool:
    """Self-check, once per filter: the strip-wise passes give `Image.resize`'s bytes with the installed Pillow (both
    pass orders, several strip counts)."""
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
        expected = np.asarray(image.resize(size, resample))
        for first_parts, last_parts in ((1, 3), (3, 2)):
            got = np.empty_like(expected)

            def write(region: np.ndarray, y0: int, x0: int, got: np.ndarray = got) -> None:
                got[y0 : y0 + region.shape[0], x0 : x0 + region.shape[1]] = region

            _run_jobs([ResizeJob(image, size, write)], resample, [(first_parts, last_parts)], _SerialExecutor())
            if not np.array_equal(expected, got):
                logger.warning_once(
                    f"Pillow {PIL.__version__}: strip-wise resizing with filter {resample} does not reproduce "
                    "Image.resize; using single Image.resize calls (same pixels, slower)."
                )
                return False
    return True


def _pixels(job: ResizeJob) -> int:
    return job.image.width * job.image.height + job.size[0] * job.size[1]


def _splits(jobs: Sequence[ResizeJob], threads: int) -> list[tuple[int, int]]:
    """`(first_parts, last_parts)` of each job for `threads` CPUs, by cost (source + target pixels).

    A large job costing more than `1 / (2 * threads)` of the whole call is cut: its first pass in
    `ceil(threads / cut jobs)` strips, its last pass in `threads` strips (the last tasks are short, so the CPUs finish
    together). The other jobs are `(0, 0)`: one whole `Image.resize` task each. So one image's grid and thumbnail on 2
    CPUs run both first passes side by side, then the short last passes in halves; many similar video frames run one
    whole resize per thread; one big image beside small ones is cut, the small ones are not (measured in
    `benchmarks/bench_preprocess.py`)."""
    costs = [_pixels(job) for job in jobs]
    share = sum(costs) / (2 * threads)
    cut = [cost >= _MIN_PIXELS_FOR_THREADS and cost > share for cost in costs]
    if not any(cut):
        return [(0, 0)] * len(jobs)
    first_parts = -(-threads // sum(cut))
    return [(first_parts, threads) if is_cut else (0, 0) for is_cut in cut]


def resize_jobs(jobs: Sequence[ResizeJob], resample: int, num_workers: int) -> None:
    """Run each job: resize `job.image` to `job.size` exactly as `image.resize(size, resample)` and hand the pixels to
    `job.write`. With `num_workers > 1` the jobs run on the process-wide pool, at most `num_workers` tasks at a time
    (and at most the pool's `_MAX_POOL_THREADS`): the grid and the thumbnail of an image
    (or many video frames) resize side by side, a large resize in strips; called from one of the pool's own tasks
    (a writer that resizes again) it runs serially. Lazily opened images are decoded first, in the calling thread
    (`ValueError` if one cannot be). Returns when every region is written; raises the first error of any task.
    """
    if not jobs:
        return
    for index, job in enumerate(jobs):  # decode lazily opened images here, once: threads would decode them together
        load_pil_image(job.image, f"jobs[{index}].image")
    threads = 1 if getattr(_POOL_THREAD, "active", False) else min(num_workers, _MAX_POOL_THREADS)
    parts = _splits(jobs, threads) if threads > 1 else [(0, 0)] * len(jobs)
    if any(first for first, _ in parts) and not (
        resample != Image.Resampling.NEAREST
        and all(job.image.mode == "RGB" for job in jobs)
        and _split_resize_is_exact(resample)
    ):
        parts = [(0, 0)] * len(jobs)
    if threads <= 1 or (len(jobs) == 1 and parts[0] == (0, 0)):  # one CPU, or one whole resize: no hand-over
        _run_jobs(jobs, resample, parts, _SerialExecutor())
        return
    # Largest first, so that the last tasks to start are the short ones.
    order = sorted(range(len(jobs)), key=lambda i: -_pixels(jobs[i]))
    _run_jobs([jobs[i] for i in order], resample, [parts[i] for i in order], _pool(), limit=threads)
