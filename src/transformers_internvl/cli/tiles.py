"""`transformers-internvl tiles IMAGE`: how an image is cut into 448 px tiles, printed and optionally drawn.

The plan is `processing.tiling.plan_tiles` (the original's grid choice, exactly); `draw_tile_plan` pictures it. This
command imports neither torch nor transformers (it starts in well under a second).
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..chat_templates import tokens_per_tile
from ..processing.tiling import DEFAULT_IMAGE_SIZE, DEFAULT_MAX_TILES, TilePlan, plan_tiles
from .common import CLIError, open_image, positive_int

if TYPE_CHECKING:
    from PIL import Image

# Defaults of InternVL 2.5 (README / config): 448 px tiles of 14 px patches, pixel unshuffle by 0.5.
_PATCH_SIZE = 14
_DOWNSAMPLE_RATIO = 0.5


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

    if isinstance(max_side, bool) or not isinstance(max_side, int):
        raise TypeError(f"`max_side` must be an int, got {type(max_side).__name__} ({max_side!r}).")
    if max_side < 1:
        raise ValueError(f"`max_side` must be >= 1, got {max_side}.")
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


def _new_file_mode(output: Path) -> int:
    """Permission bits for `output`: those of the file it replaces, else 0666 minus the user's umask."""
    try:
        return stat.S_IMODE(output.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _save_image_atomically(image: Any, output: Path) -> None:
    """Write `image` to `output` through a temporary file in the same folder, then rename."""
    from PIL import Image

    extension = output.suffix.lower()
    image_format = Image.registered_extensions().get(extension)
    if image_format is None:
        raise CLIError(f"cannot write {output}: unknown image file extension {extension or '(none)'!r}; use .png")
    folder = output.parent if str(output.parent) else Path(".")
    if not folder.is_dir():
        raise CLIError(f"cannot write {output}: folder {folder} does not exist")
    mode = _new_file_mode(output)
    handle, temporary = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "wb") as file:
            image.save(file, format=image_format)
        # mkstemp creates the file 0600; give it the mode a plain `open(output, "wb")` would have.
        os.chmod(temporary, mode)
        os.replace(temporary, output)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _tokens_per_tile(image_size: int) -> int:
    return tokens_per_tile(image_size, _PATCH_SIZE, _DOWNSAMPLE_RATIO)


def _check_image_size(image_size: int) -> None:
    """The processor's rule (`processing.input_validation`): a tile of whole 14 px patches and at least one token
    (else the printed token count would be 0 or not what the model gets)."""
    if image_size % _PATCH_SIZE:
        raise CLIError(f"--image-size ({image_size}) must be a multiple of the {_PATCH_SIZE} px patch size")
    try:
        _tokens_per_tile(image_size)
    except ValueError as error:
        raise CLIError(f"--image-size ({image_size}): {error}") from None


def _plan_as_dict(plan: Any) -> dict[str, Any]:
    cols, rows = plan.grid
    return {
        "image_size": [plan.image_width, plan.image_height],
        "grid": [cols, rows],
        "resized_to": list(plan.target_size),
        "num_grid_tiles": cols * rows,
        "has_thumbnail": plan.has_thumbnail,
        "num_tiles": plan.num_tiles,
        "tile_boxes": [list(box) for box in plan.tile_boxes],
        "tile_size": plan.image_size,
        "num_image_tokens": plan.num_tiles * _tokens_per_tile(plan.image_size),
    }


def _format_plan(plan: Any) -> str:
    cols, rows = plan.grid
    thumbnail = " + thumbnail" if plan.has_thumbnail else ""
    lines = [
        f"image: {plan.image_width}x{plan.image_height}",
        f"grid: {cols}x{rows} (cols x rows), image resized to {plan.target_size[0]}x{plan.target_size[1]}",
        f"tiles: {plan.num_tiles} ({cols * rows} grid{thumbnail}), {plan.image_size}x{plan.image_size} each",
    ]
    for index, (left, top, right, bottom) in enumerate(plan.tile_boxes):
        lines.append(f"  tile {index}: box ({left}, {top}, {right}, {bottom})")
    if plan.has_thumbnail:
        lines.append(
            f"  tile {plan.num_tiles - 1}: thumbnail (whole image resized to {plan.image_size}x{plan.image_size})"
        )
    per_tile = _tokens_per_tile(plan.image_size)
    lines.append(f"image tokens: {plan.num_tiles} x {per_tile} = {plan.num_tiles * per_tile}")
    return "\n".join(lines)


def run_tiles(args: argparse.Namespace) -> int:
    if args.min_tiles > args.max_tiles:
        raise CLIError(f"--min-tiles ({args.min_tiles}) must be <= --max-tiles ({args.max_tiles})")
    _check_image_size(args.image_size)
    if args.output is not None and os.path.exists(args.output) and os.path.samefile(args.output, args.image):
        # The drawing replaced the photo it was drawn from.
        raise CLIError(f"--output {args.output} is the input image {args.image}; choose another file")
    image = open_image(args.image)
    plan = plan_tiles(
        image.width,
        image.height,
        max_tiles=args.max_tiles,
        min_tiles=args.min_tiles,
        image_size=args.image_size,
        use_thumbnail=not args.no_thumbnail,
    )
    if args.output is not None:
        drawing = draw_tile_plan(image, plan, max_side=args.max_side)
        _save_image_atomically(drawing, Path(args.output))
    if args.json:
        print(json.dumps(_plan_as_dict(plan)))
    else:
        print(_format_plan(plan))
        if args.output is not None:
            print(f"wrote {args.output}")
    return 0


def add_tiles_command(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "tiles",
        help="show how an image is cut into tiles",
        description=(
            "Plan the dynamic tiling of IMAGE exactly as InternVL 2.5 preprocesses it: print the grid, the tile "
            "boxes (in the resized image) and the thumbnail, and optionally draw them into a PNG."
        ),
    )
    parser.add_argument("image", metavar="IMAGE", help="path of the image")
    parser.add_argument("--max-tiles", type=positive_int, default=12, help="most grid tiles (default: 12)")
    parser.add_argument("--min-tiles", type=positive_int, default=1, help="fewest grid tiles (default: 1)")
    parser.add_argument("--image-size", type=positive_int, default=448, help="tile side in pixels (default: 448)")
    parser.add_argument(
        "--no-thumbnail", action="store_true", help="do not add the whole-image thumbnail tile to multi-tile grids"
    )
    parser.add_argument("-o", "--output", metavar="OUT.png", help="write a picture of the grid and thumbnail")
    parser.add_argument(
        "--max-side", type=positive_int, default=1024, help="longer side of the drawn image in pixels (default: 1024)"
    )
    parser.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    parser.set_defaults(handler=run_tiles)


__all__ = ["add_tiles_command", "draw_tile_plan", "run_tiles"]
