"""Image processor of InternVL 2.5: dynamic tiling with the original's exact grid choice and pixels.

The original pipeline (`internvl_chat/internvl/train/dataset.py`: `find_closest_aspect_ratio`, `dynamic_preprocess`,
`build_transform`) is: `Image.open(f).convert("RGB")` -> pick a grid `(cols, rows)` -> one PIL bicubic resize of the
whole image to `(cols * 448, rows * 448)` -> row-major 448 px crops -> (more than one tile) the whole image resized to
448 x 448 as a last, thumbnail tile -> per tile `ToTensor()` (uint8 / 255 in float32) and `Normalize(ImageNet)`.
This module runs them in that order:

1. **Grid choice** (`tiling.py`: sizes only, cached, torch-free): the candidates `min_tiles <= cols * rows <= max_tiles` are scanned in the
   original's order, ascending area (stable sort) and within one area the iteration order of the Python `set` the
   original builds (a deterministic CPython property: small ints hash to themselves, so it depends only on the order
   of the distinct insertions, which `_grids_in_first_seen_order` reproduces without the original's cubic loop). A
   strictly smaller `|w/h - cols/rows|` wins; an exact tie moves to the later grid only if
   `width * height > 0.5 * 448**2 * cols * rows`. Per sample, images share a tile budget (`allocate_tile_budget`).
2. **Resize**: `image.resize(size, BICUBIC)`, exactly; `exact_resize.resize_jobs` computes the same bytes on
   several CPUs (the grid and thumbnail resizes side by side, as strip-wise single-axis PIL passes in threads) and
   hands them over region by region.
3. **Normalisation**: a 256-entry lookup table per channel built with the very float32 operations `ToTensor` and
   `Normalize` perform, applied region by region (as the resize hands them over) straight from the uint8 pixels.

Input decoding is `image_loading.to_rgb_image`; per-call options are resolved by `image_processing_options`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.processing_utils import Unpack

from .exact_resize import ResizeJob, resize_jobs
from .image_loading import DEFAULT_URL_TIMEOUT, group_images, load_image_source, to_rgb_image
from .image_processing_options import (
    DYNAMIC_ALIASES,
    IMAGE_OPTION_GROUPS,
    IMAGE_SIZE_ALIASES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LEGACY_CONFIG_KEYS,
    MAX_TILES_ALIASES,
    MIN_TILES_ALIASES,
    InternVLImageProcessorKwargs,
    TilePixelDefaults,
    resolve_image_options,
    set_pixel_options,
)
from .input_validation import check_bool, check_image_size, check_int, drop_saved_aliases, pop_alias, size_to_int
from .tiling import (  # the grid choice and tile budget: torch-free, so `transformers-internvl tiles` starts fast
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

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_MAX_TILES",
    "DEFAULT_MAX_TOTAL_TILES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MAX_TILES_LIMIT",
    "InternVLChatImageProcessor",
    "InternVLImageProcessor",
    "InternVLImageProcessorKwargs",
    "TilePlan",
    "allocate_tile_budget",
    "candidate_grids",
    "check_tile_budget",
    "find_closest_grid",
    "plan_tiles",
]

# --------------------------------------------------------------------------------------------------------------------
# 2. + 3. Resize and normalisation (lookup table bit-identical to torchvision ToTensor + Normalize)
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
                # uint8 levels index a 256-entry table: mode "wrap" never wraps here, and is numpy's fastest mode.
                for channel in range(3):
                    np.take(table[channel], source[..., channel], out=target[channel], mode="wrap")

    return write


def tiles_from_plans(images: Sequence[Image.Image], plans: Sequence[TilePlan], options: dict[str, Any]) -> np.ndarray:
    """`(sum of num_tiles, 3, size, size)` float32: every image resized and cut by its plan (grid tiles row-major,
    then the thumbnail), normalised. `options` holds `image_size`, `resample`, `image_mean`, `image_std`,
    `do_rescale`, `do_normalize`, `num_workers` (checked). The video processor calls it with one-tile plans."""
    size, resample, workers = options["image_size"], options["resample"], options["num_workers"]
    table = _normalization_table(
        options["image_mean"], options["image_std"], options["do_rescale"], options["do_normalize"]
    )
    pixel_values = np.empty((sum(plan.num_tiles for plan in plans), 3, size, size), dtype=np.float32)
    jobs: list[ResizeJob] = []
    start = 0
    for image, plan in zip(images, plans):
        grid_tiles = pixel_values[start : start + plan.num_grid_tiles]
        jobs.append(ResizeJob(image, plan.target_size, _make_region_writer(grid_tiles, table, size, plan.grid[0])))
        if plan.has_thumbnail:
            thumbnail = pixel_values[start + plan.num_grid_tiles : start + plan.num_tiles]
            jobs.append(ResizeJob(image, (size, size), _make_region_writer(thumbnail, table, size, 1)))
        start += plan.num_tiles
    resize_jobs(jobs, resample, workers)
    return pixel_values


# --------------------------------------------------------------------------------------------------------------------
# The processor
# --------------------------------------------------------------------------------------------------------------------


class InternVLChatImageProcessor(TilePixelDefaults, BaseImageProcessor):
    r"""InternVL 2.5 image processor: dynamic tiling into 448 px tiles, pixel-identical to the original code.

    Call it as `processor(images=..., max_dynamic_patch=12, return_tensors="pt")`. The output `BatchFeature` holds

    * `pixel_values`: `(total_tiles, 3, image_size, image_size)` float32, tiles of all images in order (each image's
      grid tiles row-major, then its thumbnail);
    * `num_tiles`: tiles per image (thumbnail included), in image order (a list, or a tensor with `return_tensors`).

    Grouping of `images`: a single image is one sample; a flat list of images is ONE sample whose images share the
    tile budget; a list of lists is a batch of samples. Images may be PIL images, uint8 numpy arrays / torch tensors,
    paths, `http(s)` URLs (per-call `timeout`, default 10 s), `data:` URLs, base64 strings or encoded bytes; each is
    converted with `.convert("RGB")` as in the original, with no EXIF rotation (see `image_loading.to_rgb_image`).

    Tile budget of each image of a sample (paper Fig. 3, `allocate_tile_budget`):
    `max(1, min(max_dynamic_patch, max_total_tiles // num_images))` grid tiles, plus a thumbnail when the grid has more
    than one tile; `max_total_tiles=64` (default) is the evaluation rule of the released numbers (VLMEvalKit),
    `max_total_tiles=max_dynamic_patch` the training rule, `None` no sharing. When `min_dynamic_patch` exceeds an
    image's budget, the image becomes one tile (a 1x1 grid, no thumbnail), as the original's empty candidate set gives.

    Args:
        image_size (`int`, defaults to 448): tile side (`force_image_size`; aliases `force_image_size`, `input_size`,
            and transformers' `size` as an int or `{"height": s, "width": s}`); at most `MAX_IMAGE_SIZE` (4096).
        max_dynamic_patch (`int`, defaults to 12): most grid tiles, the original's name; documented aliases
            `max_num` (the original `load_image`), `max_patches` (transformers' GotOcr2) and `max_tiles` (this
            package's `plan_tiles`). At most `MAX_TILES_LIMIT` (1024).
        min_dynamic_patch (`int`, defaults to 1): fewest grid tiles (aliases `min_num`, `min_patches`,
            `min_tiles`).
        dynamic_image_size (`bool`, defaults to `True`): `False` = one tile per image, a plain resize to `image_size`
            (the original's non-dynamic branch); alias `crop_to_patches` (transformers' GotOcr2).
        use_thumbnail (`bool`, defaults to `True`): append the thumbnail tile to multi-tile images.
        max_total_tiles (`int` or `None`, defaults to 64): shared budget of the images of one sample.
        resample (`int`, defaults to `PIL.Image.BICUBIC`): PIL filter (the original uses PIL's default, bicubic).
        do_rescale, do_normalize (`bool`, default `True`): `ToTensor`'s division by 255, `Normalize`.
        image_mean, image_std (3 floats, default ImageNet): normalisation constants.
        num_workers (`int`, *optional*): threads of the exact resize (default: torch's thread count, at most the CPUs
            available and 8). The pixels do not depend on it; all processors share one pool of at most
            `min(32, os.cpu_count())` threads.

    All of these can be overridden per call (`InternVLImageProcessorKwargs`). Source: `dynamic_preprocess`,
    `find_closest_aspect_ratio`, `build_transform` (`internvl_chat/internvl/train/dataset.py`).
    """

    valid_kwargs = InternVLImageProcessorKwargs
    model_input_names: ClassVar[list[str]] = ["pixel_values"]

    # The tile side, resize and normalisation defaults come from `TilePixelDefaults` (shared with the video processor).
    min_dynamic_patch = 1
    max_dynamic_patch = DEFAULT_MAX_TILES
    dynamic_image_size = True
    use_thumbnail = True
    max_total_tiles = DEFAULT_MAX_TOTAL_TILES

    def __init__(
        self,
        image_size: int | None = None,
        min_dynamic_patch: int | None = None,
        max_dynamic_patch: int | None = None,
        use_thumbnail: bool = True,
        max_total_tiles: int | None = DEFAULT_MAX_TOTAL_TILES,
        resample: int = TilePixelDefaults.resample,
        do_rescale: bool = True,
        do_normalize: bool = True,
        image_mean: float | Sequence[float] = TilePixelDefaults.image_mean,
        image_std: float | Sequence[float] = TilePixelDefaults.image_std,
        num_workers: int | None = None,
        dynamic_image_size: bool | None = None,
        **kwargs: Any,
    ) -> None:
        dynamic_image_size = pop_alias(kwargs, "dynamic_image_size", dynamic_image_size, DYNAMIC_ALIASES, None)
        max_dynamic_patch = pop_alias(kwargs, "max_dynamic_patch", max_dynamic_patch, MAX_TILES_ALIASES, None)
        min_dynamic_patch = pop_alias(kwargs, "min_dynamic_patch", min_dynamic_patch, MIN_TILES_ALIASES, None)
        image_size = pop_alias(kwargs, "image_size", image_size, IMAGE_SIZE_ALIASES, None)
        size = kwargs.pop("size", None)
        if size is not None:  # transformers' name (and the original CLIP-style preprocessor_config.json's)
            size = size_to_int("size", size)
            if image_size is not None and image_size != size:
                raise ValueError(f"`image_size` ({image_size}) and `size` ({size}) disagree.")
            image_size = size
        for key in LEGACY_CONFIG_KEYS:
            kwargs.pop(key, None)
        super().__init__(**kwargs)
        self.image_size = check_image_size("image_size", DEFAULT_IMAGE_SIZE if image_size is None else image_size)
        self.min_dynamic_patch = check_tile_budget(
            "min_dynamic_patch", 1 if min_dynamic_patch is None else min_dynamic_patch
        )
        self.max_dynamic_patch = check_tile_budget(
            "max_dynamic_patch", DEFAULT_MAX_TILES if max_dynamic_patch is None else max_dynamic_patch
        )
        if self.min_dynamic_patch > self.max_dynamic_patch:
            raise ValueError(
                f"`min_dynamic_patch` ({self.min_dynamic_patch}) must be <= `max_dynamic_patch` "
                f"({self.max_dynamic_patch})."
            )
        self.use_thumbnail = check_bool("use_thumbnail", use_thumbnail)
        self.dynamic_image_size = check_bool(
            "dynamic_image_size", True if dynamic_image_size is None else dynamic_image_size
        )
        self.max_total_tiles = None if max_total_tiles is None else check_int("max_total_tiles", max_total_tiles)
        set_pixel_options(self, resample, do_rescale, do_normalize, image_mean, image_std, num_workers)
        self._valid_kwargs_names = list(self.valid_kwargs.__annotations__.keys())

    @classmethod
    def from_dict(cls, image_processor_dict: dict[str, Any], **kwargs: Any):
        """As transformers', except that a keyword replaces the saved value under any of its names
        (`from_pretrained(folder, max_num=6)` with a saved `max_dynamic_patch`)."""
        saved = drop_saved_aliases(image_processor_dict, kwargs, IMAGE_OPTION_GROUPS)
        return super().from_dict(saved, **kwargs)

    def __call__(self, images: Any, **kwargs: Unpack[InternVLImageProcessorKwargs]) -> BatchFeature:
        return self.preprocess(images, **kwargs)

    @staticmethod
    def _plans_for_sample(sizes: Sequence[tuple[int, int]], options: dict[str, Any]) -> list[TilePlan]:
        """The per-sample tile budget, then one plan per image (budget shared by the images of the sample)."""
        budget = allocate_tile_budget(len(sizes), options["max_dynamic_patch"], options["max_total_tiles"])
        min_tiles = options["min_dynamic_patch"]
        if min_tiles > budget:
            # The original's candidate set is empty when min_num > max_num, so find_closest_aspect_ratio keeps its
            # default (1, 1): one tile, no thumbnail (internvl_chat_finetune.py multi-image branch, dataset.py).
            budget = min_tiles = 1
        return [
            plan_tiles(int(w), int(h), budget, min_tiles, options["image_size"], options["use_thumbnail"])
            for w, h in sizes
        ]

    def preprocess(self, images: Any, **kwargs: Unpack[InternVLImageProcessorKwargs]) -> BatchFeature:
        """Tile and normalise `images`; see the class docstring for grouping, budgets and outputs."""
        options = resolve_image_options(self, kwargs)
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
        plans = [plan for sample in rgb_samples for plan in self._plans_for_sample([im.size for im in sample], options)]
        pixel_values = tiles_from_plans([image for sample in rgb_samples for image in sample], plans, options)
        num_tiles = [plan.num_tiles for plan in plans]
        if options["device"] is not None:
            data = {
                "pixel_values": torch.from_numpy(pixel_values).to(options["device"]),
                "num_tiles": torch.tensor(num_tiles, device=options["device"]),
            }
            return BatchFeature(data=data)
        data = {"pixel_values": pixel_values, "num_tiles": num_tiles}
        return BatchFeature(data=data, tensor_type=options["return_tensors"])

    def fetch_images(self, image_url_or_urls: Any, timeout: float | None = DEFAULT_URL_TIMEOUT) -> Any:
        """Load URL / path / base64 strings (nested lists kept) by `image_loading`'s rule: no EXIF transpose, a
        timeout (transformers' `fetch_images` transposes by EXIF and waits without limit)."""
        if isinstance(image_url_or_urls, list | tuple):
            return [self.fetch_images(item, timeout) for item in image_url_or_urls]
        if isinstance(image_url_or_urls, str):
            return load_image_source(image_url_or_urls, "images", timeout)
        return image_url_or_urls

    def get_number_of_image_tiles(self, height: int, width: int, images_kwargs: dict | None = None) -> int:
        """Tiles (thumbnail included) of one `height` x `width` image alone in its sample; needs no pixels."""
        options = resolve_image_options(self, dict(images_kwargs or {}))
        return self._plans_for_sample([(width, height)], options)[0].num_tiles

    def get_number_of_image_patches(self, height: int, width: int, images_kwargs: dict | None = None) -> int:
        """Alias of `get_number_of_image_tiles` under the name transformers' processors call (upstream "patches")."""
        return self.get_number_of_image_tiles(height, width, images_kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in super().to_dict().items() if key != "_valid_kwargs_names"}


# The name before the rename (saved configs that name it still load).
InternVLImageProcessor = InternVLChatImageProcessor
