"""Image processor of InternVL 2.5: dynamic tiling with the original's exact pixels.

The original pipeline (`internvl_chat/internvl/train/dataset.py` `dynamic_preprocess` + `build_transform`) is:
`Image.open(f).convert("RGB")` -> pick a grid (see `tiling.py`) -> one PIL bicubic resize of the whole image to the
grid size -> row-major 448 px crops -> (more than one tile) the whole image resized to 448 x 448 as a thumbnail ->
per tile `ToTensor()` (uint8 / 255 in float32) and `Normalize(ImageNet mean, std)`.

This processor returns the same float32 values bit for bit:

* the normalisation is a 256-entry lookup table per channel, built with the very float32 operations `ToTensor` and
  `Normalize` perform (`v / 255`, `- mean`, `/ std`), so every value is identical, and it is applied to all tiles at
  once straight from the resized uint8 image (no per-tile PIL crop or tensor conversion);
* the PIL resizes (which dominate the cost, and which must stay PIL's to keep the pixels) run on several CPUs: PIL's
  resize is separable, a horizontal pass and a vertical pass, each rounding to uint8, in an order Pillow picks from
  the sizes. Each pass is independent across rows (horizontal) or columns (vertical), so the resize is run as the same
  two single-axis PIL passes on strips, in threads (PIL releases the GIL). The result is the same bytes as one
  `Image.resize` call; a self-check at first use confirms it for the installed Pillow and otherwise falls back to
  plain `Image.resize`. On one CPU the cost is that of the original's two resizes plus the normalisation.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
import PIL
import torch
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.utils import logging

from .image_loading import DEFAULT_URL_TIMEOUT, check_timeout, load_image_source, load_pil_image
from .tiling import (
    DEFAULT_IMAGE_SIZE,
    DEFAULT_MAX_TILES,
    DEFAULT_MAX_TOTAL_TILES,
    TilePlan,
    allocate_tile_budget,
    check_tile_budget,
    plan_tiles,
)

logger = logging.get_logger(__name__)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "InternVLImageProcessor",
    "InternVLImageProcessorKwargs",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Upstream / original names accepted for the tiling arguments (documented in `InternVLImageProcessor`).
_MAX_TILES_ALIASES = ("max_patches", "max_num")
_MIN_TILES_ALIASES = ("min_patches", "min_num")
_IMAGE_SIZE_ALIASES = ("force_image_size", "input_size")
# Keys an original OpenGVLab `preprocessor_config.json` (a CLIP image-processor config) carries; they describe a
# 448 px resize + centre crop that tiling already does, so they are dropped on load.
_LEGACY_CONFIG_KEYS = ("crop_size", "do_center_crop", "do_resize", "image_processor_type", "auto_map")
_UNSET: Any = object()


class InternVLImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    dynamic_image_size (`bool`, *optional*, defaults to `self.dynamic_image_size`):
        `False` gives every image exactly one tile, the whole image resized to `image_size` x `image_size` (the
        original's `dynamic_image_size=False` branch: `images = [image]`, then `build_transform`); the other tiling
        options are then unused.
    max_dynamic_patch (`int`, *optional*, defaults to `self.max_dynamic_patch`):
        Most grid tiles per image (the thumbnail is not counted). Aliases: `max_patches` (transformers' GotOcr2),
        `max_num` (the original `load_image` / `dynamic_preprocess`).
    min_dynamic_patch (`int`, *optional*, defaults to `self.min_dynamic_patch`):
        Fewest grid tiles per image. Aliases: `min_patches`, `min_num`.
    use_thumbnail (`bool`, *optional*, defaults to `self.use_thumbnail`):
        Append the whole image resized to one tile when the grid has more than one tile.
    image_size (`int`, *optional*, defaults to `self.image_size`):
        Tile side in pixels (the checkpoint's `force_image_size`). Alias: `force_image_size`.
    max_total_tiles (`int` or `None`, *optional*, defaults to `self.max_total_tiles`):
        Tile budget shared by the images of one sample, see `allocate_tile_budget`; `None` = no sharing.
    num_workers (`int`, *optional*, defaults to `self.num_workers`):
        Threads for the exact resize/normalise engine (`None`: torch's thread count, at most the CPUs available and 8).
    timeout (`float`, *optional*, defaults to 10):
        Seconds an image URL's server may take to connect and to send each piece of data (`image_loading`).
    """

    dynamic_image_size: bool | None
    max_dynamic_patch: int | None
    min_dynamic_patch: int | None
    use_thumbnail: bool | None
    image_size: int | None
    max_total_tiles: int | None
    num_workers: int | None
    timeout: float | None
    max_patches: int | None
    max_num: int | None
    min_patches: int | None
    min_num: int | None
    force_image_size: int | None


# --------------------------------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------------------------------


def _is_single_image(item: object) -> bool:
    if isinstance(item, Image.Image | str | os.PathLike | bytes | bytearray):
        return True
    if isinstance(item, np.ndarray | torch.Tensor):
        return item.ndim in (2, 3)
    return hasattr(item, "read")


def _array_to_pil(array: np.ndarray, name: str, channels_first: bool | None) -> Image.Image:
    if array.dtype != np.uint8:
        raise TypeError(
            f"`{name}` must hold uint8 pixels (0-255), got dtype {array.dtype}. Convert it, e.g. "
            "`(x * 255).round().clip(0, 255).astype(np.uint8)` for values in [0, 1]."
        )
    if array.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(array), mode="L")
    if array.ndim != 3:
        raise ValueError(f"`{name}` must be (H, W), (H, W, C) or (C, H, W), got shape {tuple(array.shape)}.")
    if channels_first is None:
        # numpy convention (and transformers' inference): channels last unless only the first axis looks like one.
        if array.shape[-1] in (1, 3, 4):
            channels_first = False
        elif array.shape[0] in (1, 3, 4):
            channels_first = True
        else:
            raise ValueError(
                f"`{name}`: cannot tell the channel axis of an array of shape {tuple(array.shape)}; expected 1, 3 or "
                "4 channels first or last (pass `input_data_format`)."
            )
    if channels_first:
        array = np.moveaxis(array, 0, -1)
    channels = array.shape[-1]
    array = np.ascontiguousarray(array)
    if channels == 1:
        return Image.fromarray(array[..., 0], mode="L")
    if channels == 3:
        return Image.fromarray(array, mode="RGB")
    if channels == 4:
        return Image.fromarray(array, mode="RGBA")
    raise ValueError(f"`{name}` must have 1, 3 or 4 channels, got shape {tuple(array.shape)}.")


def _channels_first_flag(input_data_format: object) -> bool | None:
    if input_data_format is None:
        return None
    value = getattr(input_data_format, "value", input_data_format)
    if value in ("channels_first", "first"):
        return True
    if value in ("channels_last", "last"):
        return False
    raise ValueError(
        f"`input_data_format` must be 'channels_first', 'channels_last' or None, got {input_data_format!r}."
    )


def to_rgb_image(
    image: object, name: str = "images", input_data_format: object = None, timeout: float | None = None
) -> Image.Image:
    """Any supported image input -> an RGB PIL image, as the original's `.convert("RGB")` makes it.

    Accepted: PIL images (any mode: RGBA loses its alpha without compositing, L is replicated), numpy arrays
    `(H, W)`, `(H, W, C)` / `(C, H, W)` uint8, torch tensors likewise (`(C, H, W)` preferred when ambiguous), local
    paths, `http(s)` URLs (fetched with `timeout` seconds, default 10), `data:` URLs, base64 strings, encoded bytes and
    binary file objects. No EXIF orientation is applied for any source (as the original for paths; see
    `image_loading`). A lazily opened PIL image shared by threads is decoded once, under a lock.
    """
    channels_first = _channels_first_flag(input_data_format)
    if isinstance(image, Image.Image):
        pil = load_pil_image(image, name)  # decode lazily opened files now, once (threads read the pixels later)
    elif isinstance(image, np.ndarray):
        pil = _array_to_pil(image, name, channels_first)
    elif isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8:
            # Checked here: numpy cannot even hold some dtypes (bfloat16), and float pixels have no agreed range.
            raise TypeError(
                f"`{name}` must hold uint8 pixels (0-255), got a tensor of dtype {image.dtype}. Convert it, e.g. "
                "`(x * 255).round().clamp(0, 255).to(torch.uint8)` for values in [0, 1]."
            )
        array = image.detach().cpu().numpy()
        if channels_first is None and array.ndim == 3 and array.shape[0] in (1, 3, 4):
            channels_first = True  # torch convention
        pil = _array_to_pil(array, name, channels_first)
    elif isinstance(image, str | os.PathLike | bytes | bytearray) or hasattr(image, "read"):
        pil = load_image_source(image, name, timeout)
    else:
        raise TypeError(
            f"`{name}` must be a PIL image, a numpy array, a torch tensor, a path, a URL or bytes, "
            f"got {type(image).__name__}."
        )
    return _convert_to_rgb(pil, name)


def _convert_to_rgb(image: Image.Image, name: str) -> Image.Image:
    """`image.convert("RGB")` as the original, with clear errors.

    Modes Pillow converts directly (P, PA, L, LA, 1, I, I;16, F, RGBA, RGBa, CMYK, YCbCr, ...) are converted exactly
    as the original's `.convert('RGB')` does. `La` (gray with premultiplied alpha), which Pillow cannot convert to RGB
    (the original raises), goes through `LA` (un-premultiplied), as Pillow's own `RGBa -> RGB` does. A float (`F`)
    image with NaN or infinite pixels raises `ValueError` (Pillow would silently turn them into 0 or 255).
    """
    if image.mode == "RGB":
        return image
    if image.mode == "F":
        pixels = np.asarray(image)
        if not np.isfinite(pixels).all():
            raise ValueError(f"`{name}`: the float (mode 'F') image has NaN or infinite pixels.")
    try:
        if image.mode == "La":
            image = image.convert("LA")
        return image.convert("RGB")
    except ValueError as error:
        raise ValueError(f"`{name}`: cannot convert a PIL image of mode {image.mode!r} to RGB: {error}") from error


def group_images(images: object, name: str = "images") -> list[list[Any]]:
    """Normalise the `images` argument to a batch of samples, each a list of images sharing one tile budget.

    A single image -> one sample with one image; a flat list -> ONE sample; a list of lists -> a batch of samples.
    A 4-D array / tensor `(N, H, W, C)` counts as a flat list.
    """
    if images is None:
        raise ValueError(f"`{name}` must be given, got None.")
    if _is_single_image(images):
        return [[images]]
    if isinstance(images, np.ndarray | torch.Tensor):
        if images.ndim == 4:
            return [list(images)]
        raise ValueError(f"`{name}`: an array of images must have 2, 3 or 4 dimensions, got {tuple(images.shape)}.")
    if not isinstance(images, list | tuple):
        raise TypeError(
            f"`{name}` must be an image, a list of images (one sample) or a list of lists (a batch of samples), "
            f"got {type(images).__name__}."
        )
    if len(images) == 0:
        raise ValueError(f"`{name}` is an empty list; expected at least one image.")
    nested = [isinstance(item, list | tuple) for item in images]
    if all(nested):
        samples = [list(sample) for sample in images]
        for index, sample in enumerate(samples):
            if len(sample) == 0:
                raise ValueError(f"`{name}[{index}]` is an empty list; every sample needs at least one image.")
            for inner, item in enumerate(sample):
                if not _is_single_image(item):
                    raise TypeError(
                        f"`{name}[{index}][{inner}]` must be an image, got {type(item).__name__}; nesting deeper "
                        "than a list of lists is not supported."
                    )
        return samples
    if any(nested):
        raise ValueError(
            f"`{name}` mixes images and lists of images; pass either a flat list (one sample) or a list of lists "
            "(a batch of samples)."
        )
    for index, item in enumerate(images):
        if not _is_single_image(item):
            raise TypeError(f"`{name}[{index}]` must be an image, got {type(item).__name__}.")
    return [list(images)]


# --------------------------------------------------------------------------------------------------------------------
# Normalisation lookup table (bit-identical to torchvision ToTensor + Normalize)
# --------------------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=32)
def _normalization_table(
    image_mean: tuple[float, ...], image_std: tuple[float, ...], do_rescale: bool, do_normalize: bool
) -> np.ndarray:
    """(3, 256) float32: the value each uint8 level of each channel becomes.

    Built with the same float32 torch operations as `ToTensor()` (`x.float().div(255)`) followed by
    `Normalize(mean, std)` (`x.sub_(mean).div_(std)` with float32 mean/std), so the table holds exactly the values the
    original computes per pixel.
    """
    levels = torch.arange(256, dtype=torch.float32).expand(3, 256).clone()
    if do_rescale:
        levels = levels.div(255)
    if do_normalize:
        mean = torch.as_tensor(image_mean, dtype=torch.float32)[:, None]
        std = torch.as_tensor(image_std, dtype=torch.float32)[:, None]
        levels = levels.sub(mean).div(std)
    return np.ascontiguousarray(levels.numpy())


def _make_region_writer(
    out_tiles: np.ndarray, table: np.ndarray, tile_size: int, cols: int
) -> Callable[[np.ndarray, int, int], None]:
    """Writer that normalises a `(h, w, 3)` uint8 region at `(y0, x0)` of a resized image into its tiles.

    `out_tiles` is `(num_tiles, 3, tile_size, tile_size)` float32; tile `k` covers row `k // cols`, column `k % cols`.
    """

    def write(region: np.ndarray, y0: int, x0: int) -> None:
        height, width = region.shape[:2]
        for row in range(y0 // tile_size, (y0 + height - 1) // tile_size + 1):
            top, bottom = max(y0, row * tile_size), min(y0 + height, (row + 1) * tile_size)
            for col in range(x0 // tile_size, (x0 + width - 1) // tile_size + 1):
                left, right = max(x0, col * tile_size), min(x0 + width, (col + 1) * tile_size)
                source = region[top - y0 : bottom - y0, left - x0 : right - x0]
                target = out_tiles[
                    row * cols + col,
                    :,
                    top - row * tile_size : bottom - row * tile_size,
                    left - col * tile_size : right - col * tile_size,
                ]
                for channel in range(3):
                    np.take(table[channel], source[..., channel], out=target[channel], mode="clip")

    return write


# --------------------------------------------------------------------------------------------------------------------
# Exact, threaded PIL resize
# --------------------------------------------------------------------------------------------------------------------

# ONE thread pool for the whole process, created at first use and shared by every processor and call, whatever their
# `num_workers` (which only sets how many strips a resize is cut into). Its size is bounded by `_MAX_POOL_THREADS`. A
# pool inherited through fork has no live threads, so a child process makes its own (the pid is checked).
_POOL: ThreadPoolExecutor | None = None
_POOL_PID: int | None = None
_POOL_LOCK = threading.Lock()
_MAX_POOL_THREADS = max(1, min(32, os.cpu_count() or 1))
# Below this many source + target pixels, threads cost more than they save.
_MIN_PIXELS_FOR_THREADS = 1 << 19


def _default_num_workers() -> int:
    """Threads used when `num_workers` is None: torch's intra-op thread count (1 inside DataLoader workers), at most
    the CPUs this process may use, at most 8."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, min(8, available, torch.get_num_threads()))


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


# --------------------------------------------------------------------------------------------------------------------
# The processor
# --------------------------------------------------------------------------------------------------------------------


def _check_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__} ({value!r}).")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}.")
    return int(value)


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"`{name}` must be a bool, got {type(value).__name__} ({value!r}).")
    return bool(value)


def _is_real(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool | np.bool_)


def _check_triple(name: str, value: object) -> tuple[float, float, float]:
    """A float or 3 floats (one per channel), all finite; for `*_std`, also non-zero (it is a divisor)."""
    if _is_real(value):
        values = (float(value),) * 3
    elif isinstance(value, list | tuple) and len(value) == 3 and all(_is_real(v) for v in value):
        values = tuple(float(v) for v in value)
    else:
        raise TypeError(f"`{name}` must be a float or 3 floats (one per channel), got {value!r}.")
    if not all(np.isfinite(values)):
        raise ValueError(f"`{name}` must be finite, got {list(values)}.")
    if name.endswith("std") and any(v == 0 for v in values):
        raise ValueError(f"`{name}` divides the pixels and must be non-zero, got {list(values)}.")
    return values


def _size_to_int(name: str, size: object) -> int:
    """`size` as transformers writes it (int, or {"height": s, "width": s}) -> the tile side."""
    if isinstance(size, dict):
        height, width = size.get("height"), size.get("width")
        if height is None or height != width:
            raise ValueError(f"`{name}` must describe a square tile, e.g. {{'height': 448, 'width': 448}}; got {size}.")
        return _check_int(name, height)
    return _check_int(name, size)


def _pop_alias(kwargs: dict[str, Any], canonical: str, value: Any, aliases: Sequence[str], none_value: Any) -> Any:
    for alias in aliases:
        if alias in kwargs:
            alias_value = kwargs.pop(alias)
            if alias_value is None:
                continue
            if value is not none_value and value != alias_value:
                raise ValueError(f"`{canonical}` ({value}) and its alias `{alias}` ({alias_value}) disagree.")
            value = alias_value
    return value


class InternVLImageProcessor(BaseImageProcessor):
    r"""InternVL 2.5 image processor: dynamic tiling into 448 px tiles, pixel-identical to the original code.

    Call it as `processor(images=..., max_dynamic_patch=12, return_tensors="pt")`. The output `BatchFeature` holds

    * `pixel_values`: `(total_tiles, 3, image_size, image_size)` float32, tiles of all images in order (each image's
      grid tiles row-major, then its thumbnail);
    * `num_tiles`: tiles per image (thumbnail included), in image order (a list, or a tensor with `return_tensors`).

    Grouping of `images`: a single image is one sample; a flat list of images is ONE sample whose images share the
    tile budget; a list of lists is a batch of samples (each inner list shares its budget). Images may be PIL images,
    uint8 numpy arrays `(H, W, C)`, uint8 torch tensors `(C, H, W)` or `(H, W, C)`, local paths, `http(s)` URLs
    (per-call `timeout`, default 10 s), `data:` URLs, base64 strings or encoded bytes. Every image is converted with
    `.convert("RGB")` as in the original (RGBA: alpha dropped without compositing; L: gray replicated); no EXIF
    rotation is applied, whatever the source (the original applies none for paths; see `image_loading`).

    Tile budget of the images of one sample (paper Fig. 3, `tiling.allocate_tile_budget`):
    `max(1, min(max_dynamic_patch, max_total_tiles // num_images))` grid tiles each, plus a thumbnail when the grid
    has more than one tile.

    * `max_total_tiles=64` (default): the evaluation rule of the released numbers (VLMEvalKit); one image gets the
      full `max_dynamic_patch`.
    * `max_total_tiles=max_dynamic_patch`: the training rule `max(1, max_dynamic_patch // num_images)`.
    * `max_total_tiles=None`: every image gets `max_dynamic_patch` (the original multi-image chat example).

    `min_dynamic_patch` is lowered to an image's budget when the budget is smaller.

    Args:
        image_size (`int`, defaults to 448): tile side (`force_image_size` of the checkpoint; alias
            `force_image_size`, and transformers' `size` as an int or `{"height": s, "width": s}`).
        min_dynamic_patch (`int`, defaults to 1): fewest grid tiles (aliases `min_patches`, `min_num`).
        dynamic_image_size (`bool`, defaults to `True`): `False` = one tile per image, a plain resize to
            `image_size` (the original's non-dynamic branch); the tiling options below are then unused.
        max_dynamic_patch (`int`, defaults to 12): most grid tiles (aliases `max_patches`, `max_num`); at most
            `tiling.MAX_TILES_LIMIT` (1024), larger budgets raise `ValueError`.
        use_thumbnail (`bool`, defaults to `True`): append the thumbnail tile to multi-tile images.
        max_total_tiles (`int` or `None`, defaults to 64): shared budget of the images of one sample.
        resample (`int`, defaults to `PIL.Image.BICUBIC`): PIL filter (the original uses PIL's default, bicubic).
        do_rescale (`bool`, defaults to `True`): divide by 255 (`ToTensor`).
        do_normalize (`bool`, defaults to `True`): subtract `image_mean`, divide by `image_std`.
        image_mean, image_std (3 floats, default ImageNet): normalisation constants.
        num_workers (`int`, *optional*): threads for the exact resize/normalise engine (default: torch's thread count,
            which is 1 inside DataLoader workers, at most the CPUs available and at most 8; 1 disables threading).
            The pixels do not depend on it. All processors share one process-wide pool of at most
            `min(32, os.cpu_count())` threads; larger values are capped to it.

    All of these can be overridden per call; the aliases are accepted wherever the canonical name is.
    """

    valid_kwargs = InternVLImageProcessorKwargs
    model_input_names: ClassVar[list[str]] = ["pixel_values"]

    image_size = DEFAULT_IMAGE_SIZE
    min_dynamic_patch = 1
    max_dynamic_patch = DEFAULT_MAX_TILES
    dynamic_image_size = True
    use_thumbnail = True
    max_total_tiles = DEFAULT_MAX_TOTAL_TILES
    resample = int(Image.Resampling.BICUBIC)
    do_rescale = True
    do_normalize = True
    image_mean = IMAGENET_MEAN
    image_std = IMAGENET_STD
    num_workers = None

    def __init__(
        self,
        image_size: int | None = None,
        min_dynamic_patch: int | None = None,
        max_dynamic_patch: int | None = None,
        use_thumbnail: bool = True,
        max_total_tiles: int | None = DEFAULT_MAX_TOTAL_TILES,
        resample: int = int(Image.Resampling.BICUBIC),
        do_rescale: bool = True,
        do_normalize: bool = True,
        image_mean: float | Sequence[float] = IMAGENET_MEAN,
        image_std: float | Sequence[float] = IMAGENET_STD,
        num_workers: int | None = None,
        dynamic_image_size: bool = True,
        **kwargs: Any,
    ) -> None:
        max_dynamic_patch = _pop_alias(kwargs, "max_dynamic_patch", max_dynamic_patch, _MAX_TILES_ALIASES, None)
        min_dynamic_patch = _pop_alias(kwargs, "min_dynamic_patch", min_dynamic_patch, _MIN_TILES_ALIASES, None)
        image_size = _pop_alias(kwargs, "image_size", image_size, _IMAGE_SIZE_ALIASES, None)
        if "size" in kwargs:
            size = kwargs.pop("size")
            if size is not None and image_size is None:
                image_size = _size_to_int("size", size)
        for key in _LEGACY_CONFIG_KEYS:
            kwargs.pop(key, None)
        image_size = DEFAULT_IMAGE_SIZE if image_size is None else image_size
        min_dynamic_patch = 1 if min_dynamic_patch is None else min_dynamic_patch
        max_dynamic_patch = DEFAULT_MAX_TILES if max_dynamic_patch is None else max_dynamic_patch
        super().__init__(**kwargs)
        self.image_size = _check_int("image_size", image_size)
        self.min_dynamic_patch = check_tile_budget(
            "min_dynamic_patch", _check_int("min_dynamic_patch", min_dynamic_patch)
        )
        self.max_dynamic_patch = check_tile_budget(
            "max_dynamic_patch", _check_int("max_dynamic_patch", max_dynamic_patch)
        )
        if self.min_dynamic_patch > self.max_dynamic_patch:
            raise ValueError(
                f"`min_dynamic_patch` ({self.min_dynamic_patch}) must be <= `max_dynamic_patch` "
                f"({self.max_dynamic_patch})."
            )
        self.use_thumbnail = _check_bool("use_thumbnail", use_thumbnail)
        self.dynamic_image_size = _check_bool("dynamic_image_size", dynamic_image_size)
        self.max_total_tiles = None if max_total_tiles is None else _check_int("max_total_tiles", max_total_tiles)
        self.resample = _check_int("resample", int(resample) if isinstance(resample, Image.Resampling) else resample, 0)
        self.do_rescale = _check_bool("do_rescale", do_rescale)
        self.do_normalize = _check_bool("do_normalize", do_normalize)
        self.image_mean = list(_check_triple("image_mean", image_mean))
        self.image_std = list(_check_triple("image_std", image_std))
        self.num_workers = None if num_workers is None else _check_int("num_workers", num_workers)
        self._valid_kwargs_names = list(self.valid_kwargs.__annotations__.keys())

    def __call__(self, images: Any, **kwargs: Unpack[InternVLImageProcessorKwargs]) -> BatchFeature:
        return self.preprocess(images, **kwargs)

    def _resolve(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Per-call options with aliases folded in, defaults filled from `self`, and values validated."""
        kwargs = dict(kwargs)
        max_tiles = _pop_alias(
            kwargs, "max_dynamic_patch", kwargs.pop("max_dynamic_patch", None), _MAX_TILES_ALIASES, None
        )
        min_tiles = _pop_alias(
            kwargs, "min_dynamic_patch", kwargs.pop("min_dynamic_patch", None), _MIN_TILES_ALIASES, None
        )
        image_size = _pop_alias(kwargs, "image_size", kwargs.pop("image_size", None), _IMAGE_SIZE_ALIASES, None)
        size = kwargs.pop("size", None)
        if size is not None:
            size = _size_to_int("size", size)
            if image_size is not None and image_size != size:
                raise ValueError(f"`image_size` ({image_size}) and `size` ({size}) disagree.")
            image_size = size
        options = {
            "max_dynamic_patch": self.max_dynamic_patch if max_tiles is None else max_tiles,
            "min_dynamic_patch": self.min_dynamic_patch if min_tiles is None else min_tiles,
            "image_size": self.image_size if image_size is None else image_size,
        }
        for key in (
            "dynamic_image_size",
            "use_thumbnail",
            "resample",
            "do_rescale",
            "do_normalize",
            "image_mean",
            "image_std",
            "num_workers",
        ):
            value = kwargs.pop(key, None)
            options[key] = getattr(self, key) if value is None else value
        max_total_tiles = kwargs.pop("max_total_tiles", _UNSET)
        options["max_total_tiles"] = self.max_total_tiles if max_total_tiles is _UNSET else max_total_tiles
        options["timeout"] = check_timeout(kwargs.pop("timeout", None))
        options["return_tensors"] = kwargs.pop("return_tensors", None)
        options["input_data_format"] = kwargs.pop("input_data_format", None)
        options["device"] = kwargs.pop("device", None)

        # Standard transformers image kwargs that this processor does not vary: accept the values that match what it
        # does, refuse the others instead of silently ignoring them.
        if kwargs.pop("do_convert_rgb", None) is False:
            raise ValueError("`do_convert_rgb=False` is not supported: InternVL always converts images to RGB.")
        if kwargs.pop("do_resize", None) is False:
            raise ValueError("`do_resize=False` is not supported: dynamic tiling always resizes.")
        data_format = kwargs.pop("data_format", None)
        if data_format is not None and getattr(data_format, "value", data_format) != "channels_first":
            raise ValueError(f"`data_format` must be 'channels_first' (tiles are (3, H, W)), got {data_format!r}.")
        rescale_factor = kwargs.pop("rescale_factor", None)
        if rescale_factor is not None and not np.isclose(rescale_factor, 1 / 255, rtol=0, atol=1e-12):
            raise ValueError(f"`rescale_factor` must be 1/255 (as `ToTensor`), got {rescale_factor}.")
        for key in ("do_center_crop", "do_pad", "crop_size", "pad_size", "default_to_square", "disable_grouping"):
            kwargs.pop(key, None)
        kwargs.pop("image_seq_length", None)
        unknown = sorted(key for key, value in kwargs.items() if value is not None)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected keyword arguments: {', '.join(unknown)}.")

        options["max_dynamic_patch"] = check_tile_budget(
            "max_dynamic_patch", _check_int("max_dynamic_patch", options["max_dynamic_patch"])
        )
        options["min_dynamic_patch"] = check_tile_budget(
            "min_dynamic_patch", _check_int("min_dynamic_patch", options["min_dynamic_patch"])
        )
        if options["min_dynamic_patch"] > options["max_dynamic_patch"]:
            raise ValueError(
                f"`min_dynamic_patch` ({options['min_dynamic_patch']}) must be <= `max_dynamic_patch` "
                f"({options['max_dynamic_patch']})."
            )
        options["image_size"] = _check_int("image_size", options["image_size"])
        options["use_thumbnail"] = _check_bool("use_thumbnail", options["use_thumbnail"])
        if not _check_bool("dynamic_image_size", options.pop("dynamic_image_size")):
            # One 1x1 grid: the image resized to one tile, no thumbnail (a one-tile grid never gets one).
            options["max_dynamic_patch"] = options["min_dynamic_patch"] = 1
        if options["max_total_tiles"] is not None:
            options["max_total_tiles"] = _check_int("max_total_tiles", options["max_total_tiles"])
        resample = options["resample"]
        options["resample"] = _check_int(
            "resample", int(resample) if isinstance(resample, Image.Resampling) else resample, 0
        )
        options["do_rescale"] = _check_bool("do_rescale", options["do_rescale"])
        options["do_normalize"] = _check_bool("do_normalize", options["do_normalize"])
        options["image_mean"] = _check_triple("image_mean", options["image_mean"])
        options["image_std"] = _check_triple("image_std", options["image_std"])
        workers = options["num_workers"]
        options["num_workers"] = _default_num_workers() if workers is None else _check_int("num_workers", workers)
        return options

    def plan_sample(self, sizes: Sequence[tuple[int, int]], **kwargs: Any) -> list[TilePlan]:
        """Tile plans of the images of ONE sample from their `(width, height)` sizes (no pixels needed)."""
        options = self._resolve(kwargs)
        return self._plans_for_sample(sizes, options)

    @staticmethod
    def _plans_for_sample(sizes: Sequence[tuple[int, int]], options: dict[str, Any]) -> list[TilePlan]:
        budget = allocate_tile_budget(len(sizes), options["max_dynamic_patch"], options["max_total_tiles"])
        min_tiles = min(options["min_dynamic_patch"], budget)
        return [
            plan_tiles(int(w), int(h), budget, min_tiles, options["image_size"], options["use_thumbnail"])
            for w, h in sizes
        ]

    def preprocess(self, images: Any, **kwargs: Unpack[InternVLImageProcessorKwargs]) -> BatchFeature:
        """Tile and normalise `images`; see the class docstring for grouping, budgets and outputs."""
        options = self._resolve(kwargs)
        samples = group_images(images)
        rgb_samples = [
            [
                to_rgb_image(
                    image,
                    f"images[{s}][{i}]" if len(samples) > 1 else f"images[{i}]",
                    options["input_data_format"],
                    options["timeout"],
                )
                for i, image in enumerate(sample)
            ]
            for s, sample in enumerate(samples)
        ]
        plans = [
            plan for sample in rgb_samples for plan in self._plans_for_sample([image.size for image in sample], options)
        ]
        flat_images = [image for sample in rgb_samples for image in sample]
        pixel_values = self._tiles_from_plans(flat_images, plans, options)
        num_tiles = [plan.num_tiles for plan in plans]

        return_tensors = options["return_tensors"]
        if options["device"] is not None:
            pixel_tensor = torch.from_numpy(pixel_values).to(options["device"])
            data = {"pixel_values": pixel_tensor, "num_tiles": torch.tensor(num_tiles, device=options["device"])}
            return BatchFeature(data=data)
        return BatchFeature(data={"pixel_values": pixel_values, "num_tiles": num_tiles}, tensor_type=return_tensors)

    @staticmethod
    def _tiles_from_plans(images: list[Image.Image], plans: list[TilePlan], options: dict[str, Any]) -> np.ndarray:
        size = options["image_size"]
        table = _normalization_table(
            options["image_mean"], options["image_std"], options["do_rescale"], options["do_normalize"]
        )
        total = sum(plan.num_tiles for plan in plans)
        pixel_values = np.empty((total, 3, size, size), dtype=np.float32)
        start = 0
        for image, plan in zip(images, plans):
            grid_tiles = pixel_values[start : start + plan.num_grid_tiles]
            writer = _make_region_writer(grid_tiles, table, size, plan.grid[0])
            resize_into_tiles(image, plan.target_size, options["resample"], writer, options["num_workers"])
            if plan.has_thumbnail:
                thumb = pixel_values[start + plan.num_grid_tiles : start + plan.num_tiles]
                writer = _make_region_writer(thumb, table, size, 1)
                resize_into_tiles(image, (size, size), options["resample"], writer, options["num_workers"])
            start += plan.num_tiles
        return pixel_values

    def fetch_images(self, image_url_or_urls: Any, timeout: float | None = DEFAULT_URL_TIMEOUT) -> Any:
        """Load URL / path / base64 strings (nested lists kept) by this processor's rule: no EXIF transpose, a timeout.

        Overrides transformers' `fetch_images` (which transposes by EXIF and waits without limit) so that every path
        into the processor loads a file the same way; see `image_loading`.
        """
        if isinstance(image_url_or_urls, list | tuple):
            return [self.fetch_images(item, timeout) for item in image_url_or_urls]
        if isinstance(image_url_or_urls, str):
            return load_image_source(image_url_or_urls, "images", timeout)
        return image_url_or_urls

    def get_number_of_image_tiles(self, height: int, width: int, images_kwargs: dict | None = None) -> int:
        """Tiles (thumbnail included) of one `height` x `width` image alone in its sample; needs no pixels."""
        options = self._resolve(dict(images_kwargs or {}))
        return self._plans_for_sample([(width, height)], options)[0].num_tiles

    def get_number_of_image_patches(self, height: int, width: int, images_kwargs: dict | None = None) -> int:
        """Alias of `get_number_of_image_tiles` under the name transformers' processors call (upstream "patches")."""
        return self.get_number_of_image_tiles(height, width, images_kwargs)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output.pop("_valid_kwargs_names", None)
        return output
