"""Per-call options of the InternVL image processor: the documented kwargs, their aliases, defaults and checks.

`resolve_image_options(processor, kwargs)` folds the aliases into the canonical names (`max_dynamic_patch`: aliases
`max_num` (the original `load_image`), `max_patches` (transformers' GotOcr2) and `max_tiles` (`plan_tiles`);
`min_dynamic_patch`: `min_num`, `min_patches`, `min_tiles`; `image_size`: `force_image_size`, `input_size` and transformers' `size`), fills what is not given from the
processor's attributes, validates every value (a `TypeError` / `ValueError` naming the argument) and refuses the
standard transformers image kwargs that would change what InternVL does (`do_resize=False`, ...).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers.processing_utils import ImagesKwargs

from .image_loading import check_timeout
from .input_validation import check_bool, check_image_size, check_int, check_triple, pop_alias, size_to_int
from .tiling import DEFAULT_IMAGE_SIZE, MAX_TILES_LIMIT, check_tile_budget

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MAX_TILES_LIMIT",
    "PIXEL_OPTIONS",
    "InternVLImageProcessorKwargs",
    "TilePixelDefaults",
    "check_pixel_options",
    "check_tile_budget",
    "default_num_workers",
    "resolve_image_options",
    "resolve_pixel_options",
    "set_pixel_options",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Upstream / original names accepted for the tiling arguments (documented in `InternVLImageProcessorKwargs`).
MAX_TILES_ALIASES = ("max_num", "max_patches", "max_tiles")
MIN_TILES_ALIASES = ("min_num", "min_patches", "min_tiles")
IMAGE_SIZE_ALIASES = ("force_image_size", "input_size")
DYNAMIC_ALIASES = ("crop_to_patches",)  # transformers' GotOcr2 name of `dynamic_image_size`
# Every spelling of one option, for `from_pretrained` keywords that replace a saved value (`drop_saved_aliases`).
IMAGE_OPTION_GROUPS = (
    ("max_dynamic_patch", *MAX_TILES_ALIASES),
    ("min_dynamic_patch", *MIN_TILES_ALIASES),
    ("image_size", *IMAGE_SIZE_ALIASES, "size"),
    ("dynamic_image_size", *DYNAMIC_ALIASES),
)
# Keys an original OpenGVLab `preprocessor_config.json` (a CLIP image-processor config) carries; they describe a
# 448 px resize + centre crop that tiling already does, so they are dropped on load.
LEGACY_CONFIG_KEYS = ("crop_size", "do_center_crop", "do_resize", "image_processor_type", "auto_map")
_UNSET: Any = object()


class InternVLImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    dynamic_image_size (`bool`, *optional*, defaults to `self.dynamic_image_size`):
        `False` gives every image exactly one tile, the whole image resized to `image_size` x `image_size` (the
        original's `dynamic_image_size=False` branch: `images = [image]`, then `build_transform`); the other tiling
        options are then unused. Alias: `crop_to_patches` (transformers' GotOcr2).
    max_dynamic_patch (`int`, *optional*, defaults to `self.max_dynamic_patch`):
        Most grid tiles per image (the thumbnail is not counted). Aliases: `max_patches` (transformers' GotOcr2),
        `max_num` (the original `load_image` / `dynamic_preprocess`), `max_tiles` (`plan_tiles`).
    min_dynamic_patch (`int`, *optional*, defaults to `self.min_dynamic_patch`):
        Fewest grid tiles per image. Aliases: `min_patches`, `min_num`, `min_tiles`.
    use_thumbnail (`bool`, *optional*, defaults to `self.use_thumbnail`):
        Append the whole image resized to one tile when the grid has more than one tile.
    image_size (`int`, *optional*, defaults to `self.image_size`):
        Tile side in pixels (the checkpoint's `force_image_size`), at most `MAX_IMAGE_SIZE` (4096). Alias:
        `force_image_size`.
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
    max_tiles: int | None
    min_patches: int | None
    min_num: int | None
    min_tiles: int | None
    force_image_size: int | None
    crop_to_patches: bool | None


def default_num_workers() -> int:
    """Threads used when `num_workers` is None: torch's intra-op thread count (1 inside DataLoader workers), at most
    the CPUs this process may use, at most 8."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, min(8, available, torch.get_num_threads()))


# The resize and normalisation options that image tiles and video frames share (`tiles_from_plans` reads them).
PIXEL_OPTIONS = ("resample", "do_rescale", "do_normalize", "image_mean", "image_std", "num_workers")


class TilePixelDefaults:
    """Class defaults of the tile side, resize and normalisation, shared by the image and the video processor (a
    video frame becomes one tile exactly like an image does: the original's `build_transform`)."""

    image_size = DEFAULT_IMAGE_SIZE
    resample = int(Image.Resampling.BICUBIC)
    do_rescale = True
    do_normalize = True
    image_mean = IMAGENET_MEAN
    image_std = IMAGENET_STD
    num_workers = None


def check_pixel_options(options: dict[str, Any]) -> dict[str, Any]:
    """The `PIXEL_OPTIONS` of `options`, validated (`TypeError` / `ValueError` naming the argument): `resample` an
    int >= 0 (a `PIL.Image.Resampling` member is accepted), the flags bools, `image_mean` / `image_std` a float or 3
    floats (tuples), `num_workers` None or an int >= 1."""
    resample = options["resample"]
    workers = options["num_workers"]
    checked = {
        "resample": check_int("resample", int(resample) if isinstance(resample, Image.Resampling) else resample, 0),
        "do_rescale": check_bool("do_rescale", options["do_rescale"]),
        "do_normalize": check_bool("do_normalize", options["do_normalize"]),
        "image_mean": check_triple("image_mean", options["image_mean"]),
        "image_std": check_triple("image_std", options["image_std"]),
        "num_workers": None if workers is None else check_int("num_workers", workers),
    }
    if checked["do_normalize"]:
        _check_normalized_range(checked["image_mean"], checked["image_std"], 1.0 if checked["do_rescale"] else 255.0)
    return checked


def _check_normalized_range(mean: tuple[float, ...], std: tuple[float, ...], top: float) -> None:
    """Pixels are normalised in float32 (`(x - mean) / std`, x in 0..top): refuse constants that turn them into inf
    or NaN there (a std below float32's smallest value, `1e-300`, rounds to 0; a mean of `1e39` overflows), which
    finite, non-zero float64 values can still do."""
    with np.errstate(all="ignore"):
        mean32, std32 = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        extremes = (np.float32(0) - mean32) / std32, (np.float32(top) - mean32) / std32
    if not (np.isfinite(mean32).all() and np.isfinite(extremes).all()):
        raise ValueError(
            f"`image_mean` {list(mean)} / `image_std` {list(std)} give non-finite pixels in float32 ((x - mean) / std "
            f"for x in 0..{top:g}); use values float32 can hold (e.g. the ImageNet defaults)."
        )


def set_pixel_options(
    processor: Any,
    resample: int,
    do_rescale: bool,
    do_normalize: bool,
    image_mean: Any,
    image_std: Any,
    num_workers: int | None,
) -> None:
    """`__init__` of both processors: check the `PIXEL_OPTIONS` and set them as attributes of `processor` (means
    and stds as lists, as transformers writes them to the saved config)."""
    options = dict(zip(PIXEL_OPTIONS, (resample, do_rescale, do_normalize, image_mean, image_std, num_workers)))
    for key, value in check_pixel_options(options).items():
        setattr(processor, key, list(value) if key in ("image_mean", "image_std") else value)


def resolve_pixel_options(processor: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Per call: the `PIXEL_OPTIONS` popped from `kwargs` (unset or None = the processor's attribute), checked, and
    `num_workers` None replaced by `default_num_workers()`."""
    given = {key: kwargs.pop(key, None) for key in PIXEL_OPTIONS}
    options = check_pixel_options(
        {key: getattr(processor, key) if value is None else value for key, value in given.items()}
    )
    if options["num_workers"] is None:
        options["num_workers"] = default_num_workers()
    return options


def resolve_image_options(processor: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Per-call options of `processor` (an `InternVLChatImageProcessor`): aliases folded in, defaults filled from
    its attributes, values validated; `TypeError` for unknown keyword arguments."""
    kwargs = dict(kwargs)
    max_tiles = pop_alias(kwargs, "max_dynamic_patch", kwargs.pop("max_dynamic_patch", None), MAX_TILES_ALIASES, None)
    min_tiles = pop_alias(kwargs, "min_dynamic_patch", kwargs.pop("min_dynamic_patch", None), MIN_TILES_ALIASES, None)
    image_size = pop_alias(kwargs, "image_size", kwargs.pop("image_size", None), IMAGE_SIZE_ALIASES, None)
    size = kwargs.pop("size", None)
    if size is not None:
        size = size_to_int("size", size)
        if image_size is not None and image_size != size:
            raise ValueError(f"`image_size` ({image_size}) and `size` ({size}) disagree.")
        image_size = size
    options = {
        "max_dynamic_patch": processor.max_dynamic_patch if max_tiles is None else max_tiles,
        "min_dynamic_patch": processor.min_dynamic_patch if min_tiles is None else min_tiles,
        "image_size": processor.image_size if image_size is None else image_size,
    }
    dynamic = pop_alias(kwargs, "dynamic_image_size", kwargs.pop("dynamic_image_size", None), DYNAMIC_ALIASES, None)
    options["dynamic_image_size"] = processor.dynamic_image_size if dynamic is None else dynamic
    for key in ("use_thumbnail", *PIXEL_OPTIONS):
        value = kwargs.pop(key, None)
        options[key] = getattr(processor, key) if value is None else value
    max_total_tiles = kwargs.pop("max_total_tiles", _UNSET)
    options["max_total_tiles"] = processor.max_total_tiles if max_total_tiles is _UNSET else max_total_tiles
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
        raise TypeError(f"{type(processor).__name__} got unexpected keyword arguments: {', '.join(unknown)}.")

    options["max_dynamic_patch"] = check_tile_budget(
        "max_dynamic_patch", check_int("max_dynamic_patch", options["max_dynamic_patch"])
    )
    options["min_dynamic_patch"] = check_tile_budget(
        "min_dynamic_patch", check_int("min_dynamic_patch", options["min_dynamic_patch"])
    )
    if options["min_dynamic_patch"] > options["max_dynamic_patch"]:
        raise ValueError(
            f"`min_dynamic_patch` ({options['min_dynamic_patch']}) must be <= `max_dynamic_patch` "
            f"({options['max_dynamic_patch']})."
        )
    options["image_size"] = check_image_size("image_size", options["image_size"])
    options["use_thumbnail"] = check_bool("use_thumbnail", options["use_thumbnail"])
    if not check_bool("dynamic_image_size", options.pop("dynamic_image_size")):
        # One 1x1 grid: the image resized to one tile, no thumbnail (a one-tile grid never gets one).
        options["max_dynamic_patch"] = options["min_dynamic_patch"] = 1
    if options["max_total_tiles"] is not None:
        options["max_total_tiles"] = check_int("max_total_tiles", options["max_total_tiles"])
    options.update(check_pixel_options(options))
    if options["num_workers"] is None:
        options["num_workers"] = default_num_workers()
    return options
