"""Tiling helpers, re-exported: the grid maths lives in `image_processing_internvl` (the image processor's module).

`plan_tiles`, `TilePlan`, `candidate_grids`, `find_closest_grid`, `allocate_tile_budget`, ... are importable from
here as before. Defined here: the pixel-free counts `num_tiles_for_size` / `num_image_tokens_for_size`, and
`draw_tile_plan`, which draws a plan over its image (inspection only).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .image_processing_internvl import (
    DEFAULT_IMAGE_SIZE,
    DEFAULT_MAX_TILES,
    DEFAULT_MAX_TOTAL_TILES,
    MAX_TILES_LIMIT,
    TilePlan,
    allocate_tile_budget,
    candidate_grids,
    check_tile_budget,
    find_closest_grid,
    plan_tiles,
)
from .input_validation import check_int as _check_positive_int

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_MAX_TILES",
    "DEFAULT_MAX_TOTAL_TILES",
    "MAX_TILES_LIMIT",
    "TilePlan",
    "allocate_tile_budget",
    "candidate_grids",
    "check_tile_budget",
    "draw_tile_plan",
    "find_closest_grid",
    "num_image_tokens_for_size",
    "num_tiles_for_size",
    "plan_tiles",
]


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
    tokens_per_tile: int = 256,
) -> int:
    """Number of `<IMG_CONTEXT>` tokens of one image: tiles x `tokens_per_tile` (the model config's
    `num_image_token`: 256 for 448 px tiles, 14 px patches, downsample ratio 0.5)."""
    return num_tiles_for_size(width, height, max_tiles, min_tiles, image_size, use_thumbnail) * tokens_per_tile


def draw_tile_plan(
    image: Image.Image | str | os.PathLike,
    plan_or_max_tiles: TilePlan | int = DEFAULT_MAX_TILES,
    *,
    min_tiles: int = 1,
    image_size: int = DEFAULT_IMAGE_SIZE,
    use_thumbnail: bool = True,
    max_side: int = 1024,
    line_color: tuple[int, int, int] = (255, 64, 32),
    line_width: int | None = None,
    show_thumbnail: bool = True,
) -> Image.Image:
    """Picture of how `image` is tiled: the grid drawn over the image, and the thumbnail in a side panel.

    Args:
        image: a PIL image or a path to one.
        plan_or_max_tiles: a `TilePlan` for this image's size, or `max_tiles` to compute one with `plan_tiles`.
        min_tiles, image_size, use_thumbnail: passed to `plan_tiles` when `plan_or_max_tiles` is an int.
        max_side: the longer side of the drawn image (the input is scaled to fit; it is never shown upscaled beyond
            its own size unless smaller than 256 px).
        line_color, line_width: grid line style (width defaults to ~0.4% of the drawn size, at least 1 px).
        show_thumbnail: add the side panel with the thumbnail tile when the plan has one.

    Returns:
        An RGB PIL image. Tile `k` is labelled `k` at its top-left corner (row-major, as the tiles are ordered).
    """
    from PIL import Image, ImageDraw

    if isinstance(image, str | os.PathLike):
        with Image.open(image) as opened:
            image = opened.convert("RGB")
    elif isinstance(image, Image.Image):
        image = image.convert("RGB")
    else:
        raise TypeError(f"`image` must be a PIL image or a path, got {type(image).__name__}.")
    width, height = image.size
    if isinstance(plan_or_max_tiles, TilePlan):
        plan = plan_or_max_tiles
        if (plan.image_width, plan.image_height) != (width, height):
            raise ValueError(
                f"`plan_or_max_tiles` was planned for a {plan.image_width}x{plan.image_height} image, "
                f"but `image` is {width}x{height}."
            )
    else:
        plan = plan_tiles(width, height, plan_or_max_tiles, min_tiles, image_size, use_thumbnail)

    max_side = _check_positive_int("max_side", max_side)
    scale = min(max_side / max(width, height), max(1.0, 256 / max(width, height)))
    shown_w, shown_h = max(1, round(width * scale)), max(1, round(height * scale))
    canvas_image = image.resize((shown_w, shown_h), Image.Resampling.BICUBIC)
    if line_width is None:
        line_width = max(1, round(0.004 * max(shown_w, shown_h)))

    panel_w = 0
    thumb = None
    if show_thumbnail and plan.has_thumbnail:
        side = min(shown_h, max(64, round(0.35 * shown_w)))
        thumb = image.resize((plan.image_size, plan.image_size), Image.Resampling.BICUBIC).resize(
            (side, side), Image.Resampling.BICUBIC
        )
        panel_w = side + 2 * line_width + 8

    canvas = Image.new("RGB", (shown_w + panel_w, shown_h), (255, 255, 255))
    canvas.paste(canvas_image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    # Tile boxes live in the resized image (target_size); map them back onto the shown image.
    sx = shown_w / plan.target_size[0]
    sy = shown_h / plan.target_size[1]
    for index, (left, top, right, bottom) in enumerate(plan.tile_boxes):
        box = (round(left * sx), round(top * sy), round(right * sx) - 1, round(bottom * sy) - 1)
        draw.rectangle(box, outline=line_color, width=line_width)
        draw.text((box[0] + line_width + 2, box[1] + line_width + 1), str(index), fill=line_color)
    if thumb is not None:
        x0 = shown_w + 4 + line_width
        canvas.paste(thumb, (x0, 0))
        draw.rectangle(
            (x0 - line_width, 0, x0 + thumb.width + line_width - 1, thumb.height + line_width - 1),
            outline=line_color,
            width=line_width,
        )
        draw.text((x0 + 2, thumb.height + line_width + 2), f"{plan.num_tiles - 1}: thumbnail", fill=line_color)
    cols, rows = plan.grid
    draw.text((4, max(0, shown_h - 14)), f"{cols}x{rows} grid, {plan.num_tiles} tiles", fill=line_color)
    return canvas
