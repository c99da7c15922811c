"""Held-out style checks of the tile budget against the original's multi-image rule, from first principles.

The original training code tiles each image of an n-image sample with
`dynamic_preprocess(image, min_num=min_dynamic_patch, max_num=max(1, max_dynamic_patch // n), use_thumbnail=...)`
(`internvl_chat/internvl/train/internvl_chat_finetune.py`, multi-image branch). `dynamic_preprocess`
(`internvl_chat/internvl/train/dataset.py`) builds its candidate grids as the `(i, j)` with
`min_num <= i * j <= max_num`; when `min_num > max_num` that set is empty, `find_closest_aspect_ratio` keeps its initial
`(1, 1)`, and the image becomes ONE tile: the whole image resized to 448 x 448 (PIL's default filter, bicubic), with no
thumbnail because there is a single tile. The expected values below are written out from that, not computed by this
package's tiling code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from transformers_internvl.processing.image_processing_internvl import InternVLImageProcessor

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def _noise(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _one_tile(image: Image.Image) -> torch.Tensor:
    """The original's single tile: `image.resize((448, 448))`, then ToTensor and ImageNet Normalize (float32)."""
    array = np.array(image.resize((448, 448), Image.BICUBIC), dtype=np.uint8)
    return (torch.from_numpy(array).permute(2, 0, 1).float().div(255) - MEAN) / STD


@pytest.mark.parametrize(
    ("num_images", "min_dynamic_patch", "max_dynamic_patch"),
    [(8, 12, 21), (4, 4, 12), (2, 7, 12), (3, 2, 4)],  # budgets 2, 3, 6, 1: each below min_dynamic_patch
)
def test_min_dynamic_patch_above_the_training_budget_gives_one_tile(num_images, min_dynamic_patch, max_dynamic_patch):
    # Wide and tall images whose aspect ratios would pick multi-tile grids under any non-empty candidate set.
    images = [
        _noise(900 + 37 * i, 300 + 11 * i, i) if i % 2 else _noise(250 + 9 * i, 700, i) for i in range(num_images)
    ]
    processor = InternVLImageProcessor(
        max_dynamic_patch=max_dynamic_patch, min_dynamic_patch=min_dynamic_patch, max_total_tiles=max_dynamic_patch
    )
    out = processor(images=images, return_tensors="pt")
    assert out["num_tiles"].tolist() == [1] * num_images
    assert torch.equal(out["pixel_values"], torch.stack([_one_tile(image) for image in images]))


def test_min_dynamic_patch_within_the_budget_is_kept():
    # 2 images, training rule with n_max 12 -> budget 6; min 4 keeps the grids of 4..6 tiles: for a 2:1 image the
    # closest of (4,1) (2,2) (1,4) (5,1) (1,5) (6,1) (3,2) (2,3) (1,6) is (3,2) (|2 - 1.5| = 0.5), plus the thumbnail.
    images = [_noise(1000, 500, 0), _noise(1000, 500, 1)]
    processor = InternVLImageProcessor(max_dynamic_patch=12, min_dynamic_patch=4, max_total_tiles=12)
    assert processor(images=images, return_tensors="pt")["num_tiles"].tolist() == [7, 7]
    # Per-image budget 12 // 3 = 4 with min 5 (above it) -> one tile each; with min 4 -> (4,1) for a 4:1 image + thumb.
    wide = [_noise(1600, 400, 2)] * 3
    assert processor(images=wide, min_dynamic_patch=5, return_tensors="pt")["num_tiles"].tolist() == [1, 1, 1]
    assert processor(images=wide, min_dynamic_patch=4, return_tensors="pt")["num_tiles"].tolist() == [5, 5, 5]
