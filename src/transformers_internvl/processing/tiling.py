"""Dynamic-tiling maths of InternVL 2.5 (pure, cached, pixel-free).

InternVL cuts an image into a grid of `image_size` x `image_size` *tiles* (448 px; a *patch* is the 14 px ViT unit
inside a tile). The grid `(cols, rows)` is the candidate whose aspect ratio `cols / rows` is closest to the image's
`width / height`, among all grids with `min_tiles <= cols * rows <= max_tiles`. The image is resized (PIL bicubic) to
`(cols * image_size, rows * image_size)` and cut row-major; when the grid has more than one tile and thumbnails are on,
the whole image resized to `image_size` x `image_size` is appended as a last tile.

This module reproduces the original code (`dynamic_preprocess` / `find_closest_aspect_ratio`,
`internvl_chat/internvl/train/dataset.py`) exactly, including its tie-break:

* candidates are sorted by area with a *stable* sort, and within one area they keep the iteration order of the Python
  `set` the original builds. That order is a deterministic property of CPython (small ints hash to themselves and
  the tuple hash is fixed, independent of `PYTHONHASHSEED`) and depends only on the order of the distinct
  insertions, so `candidate_grids` inserts the same grids in the order the original's comprehension first yields them
  (generated directly, in time proportional to the number of grids instead of the original's cubic loop) and sorts
  the set the same way;
* a strictly smaller `|w/h - cols/rows|` wins; an exactly equal difference switches to the later candidate only if
  `width * height > 0.5 * image_size**2 * cols * rows`.

Everything here works on sizes only, so token counts can be computed without pixels (`num_tiles_for_size`,
`num_image_tokens_for_size`); the CLI draws a `TilePlan` for inspection (`cli.tiles.draw_tile_plan`). Tile budgets
are ints in `1..MAX_TILES_LIMIT` (1024, see `check_tile_budget`); the search costs O(max_tiles log max_tiles).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from functools import lru_cache

from ..chat_templates import DEFAULT_NUM_IMAGE_TOKEN

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_MAX_TILES",
    "DEFAULT_MAX_TOTAL_TILES",
    "MAX_IMAGE_SIZE",
    "MAX_TILES_LIMIT",
    "TilePlan",
    "allocate_tile_budget",
    "candidate_grids",
    "check_image_size",
    "check_tile_budget",
    "find_closest_grid",
    "num_image_tokens_for_size",
    "num_tiles_for_size",
    "plan_tiles",
]

DEFAULT_IMAGE_SIZE = 448
DEFAULT_MAX_TILES = 12
DEFAULT_MAX_TOTAL_TILES = 64
# Largest accepted tile budget (`max_tiles` / `min_tiles`); see `check_tile_budget`.
MAX_TILES_LIMIT = 1024
# Largest accepted tile side (`image_size`); see `check_image_size`.
MAX_IMAGE_SIZE = 4096


def check_int(name: str, value: object, minimum: int = 1) -> int:
    """`value` as an int `>= minimum`; a `TypeError` (not an int; bools refused) or `ValueError` naming `name`.

    The one int check of the processors (`input_validation` re-exports it); here because this module stays free of
    NumPy and torch (`numbers.Integral` covers Python and NumPy ints without importing NumPy).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__} ({value!r}).")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}.")
    return int(value)


def _check_tile_range(min_tiles: object, max_tiles: object) -> tuple[int, int]:
    max_tiles = check_tile_budget("max_tiles", max_tiles)
    min_tiles = check_tile_budget("min_tiles", min_tiles)
    if min_tiles > max_tiles:
        raise ValueError(f"`min_tiles` ({min_tiles}) must be <= `max_tiles` ({max_tiles}).")
    return min_tiles, max_tiles


def check_tile_budget(name: str, value: object) -> int:
    """`value` as a tile budget: an int in `1..MAX_TILES_LIMIT`, else a `TypeError` / `ValueError` naming `name`.

    `MAX_TILES_LIMIT` (1024) is 16 times the largest budget any InternVL 2.5 setting uses (64 tiles in total per sample
    in VLMEvalKit; 48 per packed training sample; 24 per image at most). 128 tiles already fill a 32k-token context
    (256 tokens per tile), and 1024 tiles are 2.5 GB of float32 pixels, so a larger budget is a mistake, not a use.
    """
    value = check_int(name, value)
    if value > MAX_TILES_LIMIT:
        raise ValueError(
            f"`{name}` must be <= {MAX_TILES_LIMIT} (MAX_TILES_LIMIT: 16 x the largest budget InternVL uses, 64; "
            f"each tile is 256 tokens), got {value}."
        )
    return value


def check_image_size(name: str, value: object) -> int:
    """`value` as a tile side in pixels: an int in `1..MAX_IMAGE_SIZE`, else a `TypeError` / `ValueError` naming `name`.

    InternVL 2.5 models all use 448 px tiles (`force_image_size`); `MAX_IMAGE_SIZE` (4096) is over 9 times that. One
    4096 px tile is 201 MB of float32 pixels (448 px: 2.4 MB) and a 12-tile grid of them a 200-megapixel resize, so a
    larger side is a mistake (an image's size or a pixel count), not a tile size.
    """
    value = check_int(name, value)
    if value > MAX_IMAGE_SIZE:
        raise ValueError(
            f"`{name}` is a tile side in pixels and must be <= {MAX_IMAGE_SIZE} (MAX_IMAGE_SIZE; InternVL tiles are "
            f"448 px), got {value}."
        )
    return value


def candidate_grids(min_tiles: int = 1, max_tiles: int = DEFAULT_MAX_TILES) -> tuple[tuple[int, int], ...]:
    """Candidate grids `(cols, rows)` with `min_tiles <= cols * rows <= max_tiles`, in the original's scan order.

    The order is: ascending area (stable sort), and within one area the iteration order of the set that the original
    code builds. Raises `TypeError` / `ValueError` for budgets that are not ints in `1..MAX_TILES_LIMIT`.
    """
    min_tiles, max_tiles = _check_tile_range(min_tiles, max_tiles)
    return _candidate_grids(min_tiles, max_tiles)


def _grids_in_first_seen_order(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    """The distinct grids of the original's comprehension, in the order it first yields them, in O(#grids).

    The original loops `for n in range(min_tiles, max_tiles + 1) for i in range(1, n + 1) for j in range(1, n + 1)`
    and keeps `(i, j)` with `min_tiles <= i * j <= max_tiles`: O(max_tiles^3) steps for O(max_tiles log max_tiles)
    grids. A grid first appears at `n = max(i, j, min_tiles)`. At `n = min_tiles` that is every kept `(i, j)` with
    `i, j <= min_tiles`, by `i` then `j`; at a later `n` it is the grids with `max(i, j) == n`, by `i` then `j`:
    `(1, n), ..., (n - 1, n)` and then `(n, 1), ..., (n, n)`. Only the kept ones are generated.
    """
    grids: list[tuple[int, int]] = []
    first = min_tiles
    for i in range(1, first + 1):
        for j in range(-(-min_tiles // i), min(first, max_tiles // i) + 1):
            grids.append((i, j))
    for n in range(first + 1, max_tiles + 1):
        # i < n with j = n: need min_tiles <= i * n <= max_tiles.
        for i in range(max(1, -(-min_tiles // n)), min(n - 1, max_tiles // n) + 1):
            grids.append((i, n))
        # i = n with j <= n: need min_tiles <= n * j <= max_tiles.
        for j in range(max(1, -(-min_tiles // n)), min(n, max_tiles // n) + 1):
            grids.append((n, j))
    return grids


@lru_cache(maxsize=256)
def _candidate_grids(min_tiles: int, max_tiles: int) -> tuple[tuple[int, int], ...]:
    # A CPython set's iteration order depends only on the sequence of its *distinct* insertions (an element seen again
    # leaves the table untouched; no element is ever removed), so inserting the original's grids in the order it first
    # yields them builds the very same table and the same order as the original's set, without its cubic loop.
    # tests/test_tiling.py checks this against a transcription of the original for every budget up to 64 and more.
    grids = set(_grids_in_first_seen_order(min_tiles, max_tiles))
    return tuple(sorted(grids, key=lambda grid: grid[0] * grid[1]))


def find_closest_grid(
    width: int,
    height: int,
    min_tiles: int = 1,
    max_tiles: int = DEFAULT_MAX_TILES,
    image_size: int = DEFAULT_IMAGE_SIZE,
) -> tuple[int, int]:
    """The grid `(cols, rows)` the original `find_closest_aspect_ratio` picks for a `width` x `height` image."""
    width = check_int("width", width)
    height = check_int("height", height)
    image_size = check_image_size("image_size", image_size)
    min_tiles, max_tiles = _check_tile_range(min_tiles, max_tiles)
    return _find_closest_grid(width, height, min_tiles, max_tiles, image_size)


@lru_cache(maxsize=4096)
def _find_closest_grid(width: int, height: int, min_tiles: int, max_tiles: int, image_size: int) -> tuple[int, int]:
    aspect_ratio = width / height
    area = width * height
    best_diff = float("inf")
    best_grid = (1, 1)
    for grid in _candidate_grids(min_tiles, max_tiles):
        diff = abs(aspect_ratio - grid[0] / grid[1])
        if diff < best_diff:
            best_diff = diff
            best_grid = grid
        elif diff == best_diff and area > 0.5 * image_size * image_size * grid[0] * grid[1]:
            # Exact tie: the original moves to the later (larger) grid when the image is big enough, and leaves
            # `best_diff` unchanged.
            best_grid = grid
    return best_grid


@dataclass(frozen=True)
class TilePlan:
    """How one image is tiled (sizes only, no pixels).

    Attributes:
        image_width, image_height: size of the input image.
        grid: `(cols, rows)` of the tile grid.
        target_size: `(width, height)` the whole image is resized to, `(cols * image_size, rows * image_size)`.
        tile_boxes: `(left, top, right, bottom)` of every grid tile in the resized image, row-major.
        has_thumbnail: whether the image resized to `image_size` x `image_size` is appended as a last tile.
        num_tiles: tiles returned for this image: `cols * rows`, plus one if `has_thumbnail`.
        image_size: side of one tile in pixels.
    """

    image_width: int
    image_height: int
    grid: tuple[int, int]
    target_size: tuple[int, int]
    tile_boxes: tuple[tuple[int, int, int, int], ...]
    has_thumbnail: bool
    num_tiles: int
    image_size: int

    @property
    def num_grid_tiles(self) -> int:
        """Number of grid tiles (without the thumbnail)."""
        return self.grid[0] * self.grid[1]


def plan_tiles(
    width: int,
    height: int,
    max_tiles: int = DEFAULT_MAX_TILES,
    min_tiles: int = 1,
    image_size: int = DEFAULT_IMAGE_SIZE,
    use_thumbnail: bool = True,
) -> TilePlan:
    """Tile plan of a `width` x `height` image, exactly as the original `dynamic_preprocess` cuts it.

    Args:
        width, height: image size in pixels.
        max_tiles: most grid tiles (`max_dynamic_patch` / `max_num` upstream); the thumbnail is not counted.
        min_tiles: fewest grid tiles (`min_dynamic_patch` / `min_num`).
        image_size: tile side in pixels (`force_image_size`, 448 for every InternVL 2.5 model).
        use_thumbnail: append the whole image as one more tile when the grid has more than one tile.

    Returns:
        A `TilePlan`; `num_tiles` is at most `max_tiles + 1`.

    Raises:
        TypeError: a size or budget that is not an int, `use_thumbnail` not a bool.
        ValueError: a size below 1, a budget outside `1..MAX_TILES_LIMIT` (1024), or `min_tiles > max_tiles`.
    """
    width = check_int("width", width)
    height = check_int("height", height)
    min_tiles, max_tiles = _check_tile_range(min_tiles, max_tiles)
    image_size = check_image_size("image_size", image_size)
    if not isinstance(use_thumbnail, bool):
        raise TypeError(f"`use_thumbnail` must be a bool, got {type(use_thumbnail).__name__} ({use_thumbnail!r}).")
    return _plan_tiles(width, height, max_tiles, min_tiles, image_size, use_thumbnail)


@lru_cache(maxsize=4096)
def _plan_tiles(
    width: int, height: int, max_tiles: int, min_tiles: int, image_size: int, use_thumbnail: bool
) -> TilePlan:
    cols, rows = _find_closest_grid(width, height, min_tiles, max_tiles, image_size)
    boxes = tuple(
        (col * image_size, row * image_size, (col + 1) * image_size, (row + 1) * image_size)
        for row in range(rows)
        for col in range(cols)
    )
    has_thumbnail = use_thumbnail and cols * rows != 1
    return TilePlan(
        image_width=width,
        image_height=height,
        grid=(cols, rows),
        target_size=(cols * image_size, rows * image_size),
        tile_boxes=boxes,
        has_thumbnail=has_thumbnail,
        num_tiles=cols * rows + int(has_thumbnail),
        image_size=image_size,
    )


def num_tiles_for_size(
    width: int,
    height: int,
    max_tiles: int = DEFAULT_MAX_TILES,
    min_tiles: int = 1,
    image_size: int = DEFAULT_IMAGE_SIZE,
    use_thumbnail: bool = True,
) -> int:
    """Number of tiles (thumbnail included) a `width` x `height` image becomes; needs no pixels."""
    return plan_tiles(width, height, max_tiles, min_tiles, image_size, use_thumbnail).num_tiles


def num_image_tokens_for_size(
    width: int,
    height: int,
    max_tiles: int = DEFAULT_MAX_TILES,
    min_tiles: int = 1,
    image_size: int = DEFAULT_IMAGE_SIZE,
    use_thumbnail: bool = True,
    tokens_per_tile: int = DEFAULT_NUM_IMAGE_TOKEN,
) -> int:
    """Number of `<IMG_CONTEXT>` tokens of one image: tiles x `tokens_per_tile` (`chat_templates.tokens_per_tile`:
    256 for 448 px tiles, 14 px patches, ratio 0.5).

    Raises:
        TypeError / ValueError: as `plan_tiles`, and `tokens_per_tile` not an int >= 1 (a string `"256"` was
            repeated, a negative count multiplied).
    """
    tokens_per_tile = check_int("tokens_per_tile", tokens_per_tile)
    return num_tiles_for_size(width, height, max_tiles, min_tiles, image_size, use_thumbnail) * tokens_per_tile


def allocate_tile_budget(
    num_images: int,
    max_tiles: int = DEFAULT_MAX_TILES,
    max_total_tiles: int | None = DEFAULT_MAX_TOTAL_TILES,
) -> int:
    """Grid-tile budget of each image of a sample that holds `num_images` images (paper Fig. 3).

    `max(1, min(max_tiles, max_total_tiles // num_images))`. The three settings:

    * `max_total_tiles=64` (default): the evaluation rule (VLMEvalKit, a total limit of 64 tiles); a single image
      gets the full `max_tiles`.
    * `max_total_tiles=max_tiles`: the training rule `max(1, max_tiles // num_images)`.
    * `max_total_tiles=None`: no sharing; every image gets `max_tiles` (the original multi-image chat example).

    The thumbnail is not counted in the budget.
    """
    num_images = check_int("num_images", num_images)
    max_tiles = check_int("max_tiles", max_tiles)
    if max_total_tiles is None:
        return max_tiles
    max_total_tiles = check_int("max_total_tiles", max_total_tiles)
    return max(1, min(max_tiles, max_total_tiles // num_images))
