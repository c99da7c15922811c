"""Tiling maths: reference grids and candidate order, the original tie-break, budgets, properties, the tile picture."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
from helpers import FIXTURES
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from transformers_internvl import TilePlan, draw_tile_plan, plan_tiles
from transformers_internvl.processing.tiling import (
    allocate_tile_budget,
    candidate_grids,
    find_closest_grid,
    num_image_tokens_for_size,
    num_tiles_for_size,
)

PREPROCESS = json.loads((FIXTURES / "preprocess" / "preprocess.json").read_text(encoding="utf-8"))
CASES = [(image, case) for image in PREPROCESS["images"] for case in image["cases"]]


@pytest.mark.parametrize(("image", "case"), CASES, ids=[case["case_id"] for _, case in CASES])
def test_plan_matches_reference(image, case):
    plan = plan_tiles(
        image["width"], image["height"], case["max_num"], case["min_num"], case["image_size"], case["use_thumbnail"]
    )
    assert plan.grid == (case["grid_cols"], case["grid_rows"])
    assert plan.target_size == (case["target_width"], case["target_height"])
    assert plan.num_grid_tiles == case["num_grid_tiles"]
    assert plan.has_thumbnail == case["thumbnail_appended"]
    assert plan.num_tiles == case["num_tiles"]
    assert [list(grid) for grid in candidate_grids(case["min_num"], case["max_num"])] == case[
        "candidate_ratios_in_reference_order"
    ]


@pytest.mark.parametrize(
    ("min_tiles", "max_tiles"),
    [(low, high) for low in (1, 2, 5) for high in (1, 2, 6, 12, 18, 24, 40, 64) if low <= high],
)
def test_candidate_grids_are_all_grids_in_range_stably_sorted_by_area(min_tiles, max_tiles):
    grids = candidate_grids(min_tiles, max_tiles)
    expected = {
        (c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1) if min_tiles <= c * r <= max_tiles
    }
    assert set(grids) == expected and len(grids) == len(expected)
    areas = [c * r for c, r in grids]
    assert areas == sorted(areas)


@pytest.mark.parametrize(
    ("size", "grid"),
    # Examples of the behaviour spec (original-behaviour.md §4.3) with max 12.
    [((800, 800), (2, 2)), ((1000, 1000), (3, 3)), ((640, 480), (4, 3)), ((1920, 1080), (4, 2))],
)
def test_documented_examples(size, grid):
    assert plan_tiles(*size, max_tiles=12).grid == grid


def test_exact_tie_break():
    # Aspect exactly 1.25 with max 6: |1.25 - 1/1| == |1.25 - 3/2|, an exact tie; the image is large enough
    # (1500 * 1200 > 0.5 * 448^2 * 6), so the later candidate (3, 2) wins.
    assert find_closest_grid(1500, 1200, 1, 6) == (3, 2)
    # 449x447: (1, 1) and (2, 2) tie exactly; the image is too small for 4 tiles, so (1, 1) is kept.
    for max_tiles in (6, 12, 24):
        assert find_closest_grid(449, 447, 1, max_tiles) == (1, 1)
    # The same tie with a larger image switches to (2, 2) (area > 0.5 * 448^2 * 4).
    assert find_closest_grid(449 * 2, 447 * 2, 1, 12) == (2, 2)


def test_budget_rules():
    # Evaluation rule (default, total 64), training rule (total = n_max) and no sharing (None).
    assert allocate_tile_budget(1) == 12
    assert allocate_tile_budget(3) == 12
    assert allocate_tile_budget(8) == 8
    assert allocate_tile_budget(100) == 1
    assert allocate_tile_budget(3, max_tiles=12, max_total_tiles=12) == 4
    assert allocate_tile_budget(13, max_tiles=12, max_total_tiles=12) == 1
    assert allocate_tile_budget(5, max_tiles=24, max_total_tiles=None) == 24
    assert allocate_tile_budget(2, max_tiles=24) == 24
    assert allocate_tile_budget(4, max_tiles=24) == 16


def test_pixel_free_counts():
    assert num_tiles_for_size(1920, 1080) == 9
    assert num_tiles_for_size(1920, 1080, max_tiles=6) == 3
    assert num_tiles_for_size(448, 448) == 1
    assert num_tiles_for_size(1920, 1080, use_thumbnail=False) == 8
    assert num_image_tokens_for_size(1920, 1080) == 9 * 256


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"width": 0, "height": 10}, ValueError),
        ({"width": 10, "height": -1}, ValueError),
        ({"width": 10.0, "height": 10}, TypeError),
        ({"width": 10, "height": 10, "max_tiles": 0}, ValueError),
        ({"width": 10, "height": 10, "max_tiles": 3, "min_tiles": 4}, ValueError),
        ({"width": 10, "height": 10, "max_tiles": "12"}, TypeError),
        ({"width": 10, "height": 10, "image_size": 0}, ValueError),
        ({"width": 10, "height": 10, "use_thumbnail": 1}, TypeError),
    ],
)
def test_plan_tiles_rejects_bad_arguments(kwargs, error):
    with pytest.raises(error):
        plan_tiles(**kwargs)


def _check_plan(width: int, height: int, max_tiles: int, min_tiles: int, use_thumbnail: bool) -> None:
    plan = plan_tiles(width, height, max_tiles, min_tiles, 448, use_thumbnail)
    cols, rows = plan.grid
    # Tile count = grid + thumbnail rule; the grid respects the budget.
    assert min_tiles <= cols * rows <= max_tiles
    assert plan.num_tiles == cols * rows + (1 if use_thumbnail and cols * rows > 1 else 0)
    assert plan.num_tiles <= max_tiles + 1
    # The grid is a closest aspect ratio among all candidates (first principles, exact rationals).
    ratio = Fraction(width, height)
    best = min(abs(ratio - Fraction(c, r)) for c, r in candidate_grids(min_tiles, max_tiles))
    assert abs(ratio - Fraction(cols, rows)) == best
    # Boxes tile the target exactly: every (column, row) cell once, inside the target, no gap, no overlap.
    assert plan.target_size == (cols * 448, rows * 448)
    cells = set()
    for index, (left, top, right, bottom) in enumerate(plan.tile_boxes):
        assert (right - left, bottom - top) == (448, 448)
        assert 0 <= left < right <= plan.target_size[0] and 0 <= top < bottom <= plan.target_size[1]
        assert (left // 448, top // 448) == (index % cols, index // cols)  # row-major
        cells.add((left, top))
    assert len(cells) == len(plan.tile_boxes) == cols * rows
    assert sum((r - l) * (b - t) for l, t, r, b in plan.tile_boxes) == plan.target_size[0] * plan.target_size[1]


@settings(max_examples=300, deadline=None)
@given(
    width=st.integers(1, 10000),
    height=st.integers(1, 300),
    max_tiles=st.integers(1, 40),
    min_fraction=st.floats(0, 1),
    use_thumbnail=st.booleans(),
    transpose=st.booleans(),
)
def test_plan_properties(width, height, max_tiles, min_fraction, use_thumbnail, transpose):
    if transpose:
        width, height = height, width
    min_tiles = max(1, int(min_fraction * max_tiles))
    _check_plan(width, height, max_tiles, min_tiles, use_thumbnail)


def test_draw_tile_plan(tmp_path):
    image = Image.new("RGB", (1920, 1080), (20, 120, 200))
    picture = draw_tile_plan(image, 12)
    assert picture.mode == "RGB"
    # The image is shown at most 1024 px wide, plus a side panel with the thumbnail.
    assert picture.height == 576 and picture.width > 1024
    grid_only = draw_tile_plan(image, plan_tiles(1920, 1080, 12), show_thumbnail=False)
    assert grid_only.size == (1024, 576)
    # Grid lines are drawn in the line colour at tile borders (1792 px target -> 448 px tiles -> 256 px shown).
    assert grid_only.getpixel((256, 100)) == (255, 64, 32)
    assert grid_only.getpixel((128, 100)) == (20, 120, 200)
    path = tmp_path / "image.png"
    image.save(path)
    assert draw_tile_plan(path, 1).size == (1024, 576)  # single tile: no thumbnail panel
    with pytest.raises(ValueError, match="planned for a 100x100"):
        draw_tile_plan(image, plan_tiles(100, 100))
    with pytest.raises(TypeError):
        draw_tile_plan(123)


def test_tile_plan_is_frozen_and_hashable():
    plan = plan_tiles(800, 600, 12)
    assert isinstance(plan, TilePlan)
    assert plan == plan_tiles(800, 600, 12) and hash(plan) == hash(plan_tiles(800, 600, 12))
    with pytest.raises(AttributeError):
        plan.grid = (1, 1)
