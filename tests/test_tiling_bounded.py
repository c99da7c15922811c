"""The tile-grid search is near-linear and bounded, and still picks exactly the original's grid (issue 12).

The reference below is a transcription of the original `find_closest_aspect_ratio` / the candidate set of
`dynamic_preprocess` (`internvl_chat/internvl/train/dataset.py`), loops and all.
"""

from __future__ import annotations

import time
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transformers_internvl.processing.tiling import (
    MAX_TILES_LIMIT,
    candidate_grids,
    check_tile_budget,
    find_closest_grid,
    plan_tiles,
)


@cache
def _original_candidates(min_num: int, max_num: int) -> tuple[tuple[int, int], ...]:
    target_ratios = set(
        (i, j)
        for n in range(min_num, max_num + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if i * j <= max_num and i * j >= min_num
    )
    return tuple(sorted(target_ratios, key=lambda x: x[0] * x[1]))


def _original_grid(width: int, height: int, min_num: int, max_num: int, image_size: int = 448) -> tuple[int, int]:
    aspect_ratio = width / height
    best_ratio_diff = float("inf")
    best_ratio = (1, 1)
    area = width * height
    for ratio in _original_candidates(min_num, max_num):
        target_aspect_ratio = ratio[0] / ratio[1]
        ratio_diff = abs(aspect_ratio - target_aspect_ratio)
        if ratio_diff < best_ratio_diff:
            best_ratio_diff = ratio_diff
            best_ratio = ratio
        elif ratio_diff == best_ratio_diff:
            if area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
                best_ratio = ratio
    return best_ratio


def test_candidate_order_equals_the_original_for_every_budget_up_to_64():
    # Every (min, max) pair with 1 <= min <= max <= 64: same grids, same order (ties in the original's set order).
    mismatches = [
        (min_tiles, max_tiles)
        for max_tiles in range(1, 65)
        for min_tiles in range(1, max_tiles + 1)
        if candidate_grids(min_tiles, max_tiles) != _original_candidates(min_tiles, max_tiles)
    ]
    assert mismatches == []


@pytest.mark.parametrize(("min_tiles", "max_tiles"), [(1, 100), (1, 160), (37, 150), (90, 120), (120, 120)])
def test_candidate_order_equals_the_original_for_larger_budgets(min_tiles, max_tiles):
    assert candidate_grids(min_tiles, max_tiles) == _original_candidates(min_tiles, max_tiles)


def _sizes() -> list[tuple[int, int]]:
    # Aspect ratios that hit grid ratios exactly (exact ties between grids), at areas on both sides of the
    # `0.5 * 448^2 * cols * rows` switch, plus ordinary photo and extreme sizes.
    sizes = []
    for cols in range(1, 9):
        for rows in range(1, 9):
            for scale in (1, 7, 112, 224, 225, 449):
                sizes.append((cols * scale, rows * scale))
    sizes += [(449, 447), (898, 894), (1500, 1200), (1920, 1080), (640, 480), (1, 10000), (10000, 1), (3, 2)]
    return sizes


def test_grid_choice_equals_the_original_for_every_budget_up_to_64():
    sizes = _sizes()
    mismatches = []
    for max_tiles in range(1, 65):
        for min_tiles in sorted({1, min(2, max_tiles), max(1, max_tiles // 3), max_tiles}):
            for width, height in sizes:
                expected = _original_grid(width, height, min_tiles, max_tiles)
                if find_closest_grid(width, height, min_tiles, max_tiles) != expected:
                    mismatches.append((width, height, min_tiles, max_tiles))
    assert mismatches == []


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    width=st.integers(1, 5000),
    height=st.integers(1, 5000),
    max_tiles=st.integers(1, 64),
    min_fraction=st.floats(0, 1),
    image_size=st.sampled_from([224, 448]),
)
def test_grid_choice_equals_the_original_random(width, height, max_tiles, min_fraction, image_size):
    min_tiles = max(1, int(min_fraction * max_tiles))
    expected = _original_grid(width, height, min_tiles, max_tiles, image_size)
    assert find_closest_grid(width, height, min_tiles, max_tiles, image_size) == expected


def test_search_is_fast_up_to_the_limit():
    # The original's loop is cubic (36 s at 1600 tiles); here the largest allowed budget takes milliseconds.
    started = time.perf_counter()
    grids = candidate_grids(3, MAX_TILES_LIMIT)
    plan = plan_tiles(123457, 991, MAX_TILES_LIMIT, 3)
    elapsed = time.perf_counter() - started
    assert elapsed < 2.0
    # Every (cols, rows) with 3 <= cols * rows <= limit: all with area <= limit minus (1, 1), (1, 2), (2, 1).
    assert len(grids) == sum(MAX_TILES_LIMIT // i for i in range(1, MAX_TILES_LIMIT + 1)) - 3
    assert plan.num_grid_tiles <= MAX_TILES_LIMIT


@pytest.mark.parametrize("budget", [MAX_TILES_LIMIT + 1, 1600, 10**6, 10**18])
def test_budget_above_the_limit_is_refused_quickly(budget):
    started = time.perf_counter()
    with pytest.raises(ValueError, match=rf"`max_tiles` must be <= {MAX_TILES_LIMIT}.*got {budget}"):
        plan_tiles(1000, 1000, max_tiles=budget)
    with pytest.raises(ValueError, match=rf"`min_tiles` must be <= {MAX_TILES_LIMIT}"):
        plan_tiles(1000, 1000, max_tiles=8, min_tiles=budget)
    with pytest.raises(ValueError, match=rf"must be <= {MAX_TILES_LIMIT}"):
        candidate_grids(budget, budget)
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(("value", "error"), [(0, ValueError), (-3, ValueError), (2.0, TypeError), (True, TypeError)])
def test_check_tile_budget_rejects(value, error):
    with pytest.raises(error, match="`budget`"):
        check_tile_budget("budget", value)
    assert check_tile_budget("budget", MAX_TILES_LIMIT) == MAX_TILES_LIMIT


def test_image_processor_refuses_huge_budgets_by_name():
    from PIL import Image

    from transformers_internvl.processing.image_processing_internvl import InternVLImageProcessor

    with pytest.raises(ValueError, match=r"`max_dynamic_patch` must be <= 1024.*got 1000000"):
        InternVLImageProcessor(max_dynamic_patch=10**6)
    processor = InternVLImageProcessor()
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"`max_dynamic_patch` must be <= 1024"):
        processor(Image.new("RGB", (64, 64)), max_dynamic_patch=10**6)
    with pytest.raises(ValueError, match=r"`max_dynamic_patch` must be <= 1024"):
        processor(Image.new("RGB", (64, 64)), max_num=2000)
    assert time.perf_counter() - started < 1.0
