"""The exact-resize scheduler (issue 13): several resizes share the pool (an image's grid and thumbnail side by side,
many video frames one task each) and still give `Image.resize`'s bytes; failures stop the call cleanly."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from PIL import Image
from resize_helpers import collecting_job, random_photo

from transformers_internvl.processing import exact_resize
from transformers_internvl.processing.exact_resize import ResizeJob, _splits, resize_jobs

BICUBIC = Image.Resampling.BICUBIC


def test_split_plans():
    big, small = random_photo(1920, 1080), random_photo(64, 48)
    grid, thumb = ResizeJob(big, (1792, 896), None), ResizeJob(big, (448, 448), None)
    tiny = ResizeJob(small, (448, 448), None)
    # One large resize on 2 CPUs: both passes in halves; grid + thumbnail: first passes whole, side by side.
    assert _splits([grid], 2) == [(2, 2)]
    assert _splits([grid, thumb], 2) == [(1, 2), (1, 2)]
    assert _splits([grid, thumb], 8) == [(4, 8), (4, 8)]
    # Small resizes are never cut; many similar jobs are one whole task each; a big job among them is cut alone.
    assert _splits([grid, tiny], 2) == [(2, 2), (0, 0)]
    assert _splits([thumb] * 4, 2) == [(0, 0)] * 4
    assert _splits([grid, thumb, thumb, thumb], 2) == [(2, 2), (0, 0), (0, 0), (0, 0)]
    assert _splits([grid, thumb, grid, thumb], 2) == [(1, 2), (0, 0), (1, 2), (0, 0)]
    assert _splits([ResizeJob(random_photo(1280, 720), (448, 448), None)] * 16, 2) == [(0, 0)] * 16
    assert _splits([tiny], 4) == [(0, 0)]


@pytest.mark.parametrize("workers", [1, 2, 3, 8])
@pytest.mark.parametrize(
    "sizes",
    [
        [((1920, 1080), (1792, 896)), ((1920, 1080), (448, 448))],  # grid + thumbnail
        [((700, 1500), (448, 1344))],  # one resize, vertical pass first on Pillow >= 13
        [((1200, 800), (1344, 896)), ((1200, 800), (448, 448)), ((90, 60), (448, 448))],  # a small one beside
        [((640, 360), (448, 448))] * 9,  # video frames: one whole task each
        [((1000, 1000), (1000, 448)), ((1000, 1000), (448, 1000)), ((448, 448), (448, 448))],  # one pass, no pass
    ],
)
def test_jobs_give_the_bytes_of_image_resize(workers, sizes):
    images = [random_photo(*src, seed=i) for i, (src, _) in enumerate(sizes)]
    jobs = [collecting_job(image, dst) for image, (_, dst) in zip(images, sizes)]
    resize_jobs([job for job, _, _ in jobs], BICUBIC, workers)
    for image, (_, dst), (_, got, covered) in zip(images, sizes, jobs):
        assert np.array_equal(got, np.asarray(image.resize(dst, BICUBIC)))
        assert (covered == 1).all()


def test_a_failing_task_raises_and_no_region_is_written_afterwards():
    image = random_photo(1920, 1080)
    writes_after_return: list[int] = []
    returned = threading.Event()

    def slow_write(region: np.ndarray, y0: int, x0: int) -> None:
        time.sleep(0.05)
        if returned.is_set():
            writes_after_return.append(y0)

    def failing_write(region: np.ndarray, y0: int, x0: int) -> None:
        raise ValueError("writer broke")

    jobs = [ResizeJob(image, (1792, 896), slow_write), ResizeJob(image, (448, 448), failing_write)]
    with pytest.raises(ValueError, match="writer broke"):
        resize_jobs(jobs, BICUBIC, 2)
    returned.set()
    time.sleep(0.3)
    assert writes_after_return == []
    # The pool still serves later calls.
    job, got, _ = collecting_job(image, (448, 448))
    resize_jobs([job], BICUBIC, 2)
    assert np.array_equal(got, np.asarray(image.resize((448, 448), BICUBIC)))


def test_modes_other_than_rgb_and_nearest_run_whole(monkeypatch):
    calls: list[tuple[int, int]] = []
    original = Image.Image.resize

    def resize(self, size, *args, **kwargs):
        calls.append(tuple(size))
        return original(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", resize)
    for image, resample in (
        (random_photo(1920, 1080).convert("L"), BICUBIC),
        (random_photo(1920, 1080), Image.NEAREST),
    ):
        calls.clear()
        job, got, _ = collecting_job(image, (1792, 896))
        resize_jobs([job], resample, 2)
        assert calls == [(1792, 896)]  # one whole Image.resize, no strips
        assert np.array_equal(got, np.asarray(original(image, (1792, 896), resample)))
    assert all(exact_resize._split_resize_is_exact(f) for f in (BICUBIC, Image.BILINEAR, Image.LANCZOS, Image.BOX))


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_num_workers_caps_the_tasks_running_at_once(monkeypatch, workers):
    """`num_workers` bounds concurrency even when the pool has more threads (16 frames, several cut jobs)."""
    monkeypatch.setattr(exact_resize, "_MAX_POOL_THREADS", 8)
    monkeypatch.setattr(exact_resize, "_POOL", None)
    lock, running, most = threading.Lock(), [0], [0]

    def counting(write):
        def counted(region, y0, x0):
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            time.sleep(0.002)
            write(region, y0, x0)
            with lock:
                running[0] -= 1

        return counted

    frames = [collecting_job(random_photo(640, 360, seed=i), (448, 448)) for i in range(16)]
    big = [collecting_job(random_photo(1920, 1080), size) for size in ((1792, 896), (448, 448))]
    for jobs in (frames, big):
        resize_jobs([ResizeJob(job.image, job.size, counting(job.write)) for job, _, _ in jobs], BICUBIC, workers)
        for job, got, covered in jobs:
            assert np.array_equal(got, np.asarray(job.image.resize(job.size, BICUBIC))) and (covered == 1).all()
    assert most[0] <= workers
    assert workers == 1 or most[0] > 1  # and the threads are used
