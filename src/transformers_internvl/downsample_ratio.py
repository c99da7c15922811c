"""The pixel-unshuffle ratios InternVL can apply, checked alike by the model config and the processor."""

from __future__ import annotations

__all__ = ["check_downsample_ratio"]


def check_downsample_ratio(image_size: int, patch_size: int, downsample_ratio: float) -> None:
    """Raise `ValueError` unless `downsample_ratio` is 1/k for an integer k dividing the patch grid side
    (`image_size // patch_size`): the only ratios the pixel unshuffle can apply. The original builds a model with any
    ratio, then fails in `pixel_shuffle` (e.g. 0.3: "shape '[1, 32, 9, 106]' is invalid for input of size 32768"),
    although its `num_image_token` (92 for 0.3) looks fine; the model config and the processor both refuse here."""
    side = image_size // patch_size
    scaled = side * downsample_ratio
    if scaled != int(scaled) or int(1 / downsample_ratio) != 1 / downsample_ratio:
        raise ValueError(
            f"`downsample_ratio` ({downsample_ratio}) must be 1/k for an integer k dividing the patch grid side "
            f"({side})."
        )
