"""Attacks on the exact-resize scheduler (`exact_resize.resize_jobs`): a writer that resizes again, lazily opened
images shared by jobs, fork while the pool lock is held, many jobs, odd sizes and filters, BaseExceptions."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image
from resize_helpers import collecting_job, random_photo

from transformers_internvl import InternVLImageProcessor
from transformers_internvl.processing import exact_resize
from transformers_internvl.processing.exact_resize import ResizeJob, _run_jobs, _SerialExecutor, resize_jobs

BICUBIC = Image.Resampling.BICUBIC
needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _in_forked_child(check: Callable[[], bool], seconds: int = 20) -> int:
    """Run `check` in a forked child killed by SIGALRM after `seconds` (a deadlock fails instead of hanging the
    suite); the child's exit status: 0 when `check` returned True."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            signal.alarm(seconds)
            code = 0 if check() else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status


def _grid_and_thumbnail_are_exact(image: Image.Image, workers: int) -> bool:
    jobs = [collecting_job(image, (1792, 896)), collecting_job(image, (448, 448))]
    resize_jobs([job for job, _, _ in jobs], BICUBIC, workers)
    return all(
        np.array_equal(got, np.asarray(image.resize(job.size, BICUBIC))) and (covered == 1).all()
        for job, got, covered in jobs
    )


@needs_fork
def test_a_writer_that_calls_the_processor_does_not_deadlock():
    # Both pool threads ran writers that waited on tasks queued behind them in the same pool: a deadlock.
    image = random_photo(1920, 1080)
    processor = InternVLImageProcessor(max_dynamic_patch=6)
    expected = processor(image, num_workers=1)["pixel_values"]

    def check() -> bool:
        inner: list[np.ndarray] = []

        def write(region: np.ndarray, y0: int, x0: int) -> None:
            inner.append(processor(image, num_workers=2)["pixel_values"])

        resize_jobs([ResizeJob(image, (1792, 896), write), ResizeJob(image, (448, 448), write)], BICUBIC, 2)
        return len(inner) >= 2 and all(np.array_equal(values, expected) for values in inner)

    assert _in_forked_child(check) == 0


@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
def test_lazily_opened_image_shared_by_jobs_gives_the_exact_bytes(image_format):
    # The grid and thumbnail strips decoded the same lazily opened file on two threads at once: OSError or
    # AssertionError from the decoder, or wrong pixels.
    buffer = io.BytesIO()
    random_photo(1920, 1080).save(buffer, image_format)
    data = buffer.getvalue()
    for _ in range(3):
        image = Image.open(io.BytesIO(data))
        assert _grid_and_thumbnail_are_exact(image, 2)


@needs_fork
def test_fork_while_another_thread_holds_the_pool_lock():
    image = random_photo(1920, 1080)
    assert _grid_and_thumbnail_are_exact(image, 2)  # the pool exists before the fork
    # A thread of the parent held the pool lock at the fork: the child's first threaded resize waited forever.
    with exact_resize._POOL_LOCK:
        status = _in_forked_child(lambda: _grid_and_thumbnail_are_exact(image, 2))
    assert status == 0
    assert _grid_and_thumbnail_are_exact(image, 2)  # and the parent's pool still works


def test_many_jobs_cost_the_calling_thread_linear_time():
    # Waiting on all pending futures after every finished task cost the caller O(tasks^2): ~1.1 s of its CPU for 2048
    # frames whose tasks finish one by one (1024 frames is MAX_NUM_SEGMENTS).
    image = random_photo(4, 4)
    jobs = [ResizeJob(image, (2, 2), lambda region, y0, x0: time.sleep(0.0005)) for _ in range(2048)]
    start = time.thread_time()
    resize_jobs(jobs, BICUBIC, 2)
    assert time.thread_time() - start < 0.6


@pytest.mark.parametrize(
    "resample",
    [Image.Resampling.BICUBIC, Image.Resampling.BILINEAR, Image.Resampling.LANCZOS, Image.Resampling.BOX],
)
def test_odd_sizes_and_filters_give_the_bytes_of_image_resize(resample):
    cases = [
        ((1, 1), (448, 448)),
        ((1, 5), (3, 1)),
        ((1, 300), (448, 448)),
        ((2000, 1), (7, 3)),
        ((3, 900), (448, 1344)),
        ((5, 7), (5, 3)),
        ((7, 5), (3, 5)),
        ((64, 51), (44, 10)),
        ((37, 23), (60, 11)),
    ]
    for index, (source, size) in enumerate(cases):
        image = random_photo(*source, seed=index)
        expected = np.asarray(image.resize(size, resample))
        for parts in ((1, 3), (4, 2), (500, 500)):  # more strips than rows or columns are clamped
            job, got, covered = collecting_job(image, size)
            _run_jobs([job], resample, [parts], _SerialExecutor())
            assert np.array_equal(got, expected), (source, size, parts)
            assert (covered == 1).all()


@pytest.mark.parametrize("error", [KeyboardInterrupt(), ValueError("writer broke")])
def test_a_failing_writer_raises_its_error_and_nothing_is_written_after_return(error):
    image, small = random_photo(1920, 1080), random_photo(100, 80)
    returned = threading.Event()
    late: list[tuple[int, int]] = []

    def slow_write(region: np.ndarray, y0: int, x0: int) -> None:
        time.sleep(0.01)
        if returned.is_set():
            late.append((y0, x0))

    def failing_write(region: np.ndarray, y0: int, x0: int) -> None:
        raise error

    jobs = [ResizeJob(image, (1792, 896), slow_write), ResizeJob(image, (448, 448), failing_write)]
    jobs += [ResizeJob(small, (448, 448), slow_write) for _ in range(4)]
    with pytest.raises(type(error)):
        resize_jobs(jobs, BICUBIC, 2)
    returned.set()
    time.sleep(0.2)
    assert late == []
    assert _grid_and_thumbnail_are_exact(image, 2)


def test_a_shut_down_pool_runs_the_tasks_in_the_calling_thread(monkeypatch):
    # At interpreter exit `concurrent.futures` shuts every pool down before joining non-daemon threads; a thread
    # still preprocessing then got "RuntimeError: cannot schedule new futures after shutdown" from every call.
    closed = exact_resize.ThreadPoolExecutor(max_workers=1)
    closed.shutdown()
    monkeypatch.setattr(exact_resize, "_POOL", closed)
    monkeypatch.setattr(exact_resize, "_POOL_PID", os.getpid())
    assert _grid_and_thumbnail_are_exact(random_photo(1920, 1080), 2)
