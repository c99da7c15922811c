"""Folders saved before the processor classes were renamed `InternVLChat*` still load through the Auto factories.

The JSON below is what the pre-rename code (commit 4a8f71f) wrote: `InternVLImageProcessor.save_pretrained`,
`InternVLVideoProcessor.save_pretrained` and the processor's processor_config.json, with no config.json beside them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import copy_tokenizer
from PIL import Image
from transformers import AutoImageProcessor, AutoProcessor
from transformers.models.auto.video_processing_auto import AutoVideoProcessor

import transformers_internvl  # noqa: F401  (registers the classes, wraps the factories)
from transformers_internvl import InternVLChatImageProcessor, InternVLChatProcessor, InternVLChatVideoProcessor
from transformers_internvl.processing.legacy_folders import is_own_saved_config, legacy_processor_dict

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
OLD_IMAGE_CONFIG = {
    "do_normalize": True,
    "do_rescale": True,
    "dynamic_image_size": True,
    "image_mean": MEAN,
    "image_processor_type": "InternVLImageProcessor",
    "image_size": 448,
    "image_std": STD,
    "max_dynamic_patch": 6,
    "max_total_tiles": 64,
    "min_dynamic_patch": 1,
    "resample": 3,
    "use_thumbnail": False,
}
OLD_VIDEO_CONFIG = {
    "do_normalize": True,
    "do_rescale": True,
    "image_mean": MEAN,
    "image_size": 448,
    "image_std": STD,
    "num_segments": 4,
    "resample": 3,
    "video_processor_type": "InternVLVideoProcessor",
}
OLD_PROCESSOR_SETTINGS = {
    "downsample_ratio": 0.5,
    "image_context_token": "<IMG_CONTEXT>",
    "image_end_token": "</img>",
    "image_placeholder": "<image>",
    "image_size": 448,
    "image_start_token": "<img>",
    "patch_size": 14,
    "system_message": None,
    "template": "internvl2_5",
    "video_frame_template": "Frame-{i}: ",
    "video_placeholder": "<video>",
}
# What transformers' own InternVL (`-hf` layout) video processor saves under the same type name.
TRANSFORMERS_VIDEO_CONFIG = {
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_resize": True,
    "initial_shift": True,
    "size": {"height": 448, "width": 448},
    "video_processor_type": "InternVLVideoProcessor",
}


def _write(folder, name, content):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(content, indent=2))
    return folder


def test_auto_image_processor_loads_pre_rename_folder(tmp_path):
    folder = _write(tmp_path / "image", "preprocessor_config.json", OLD_IMAGE_CONFIG)
    processor = AutoImageProcessor.from_pretrained(folder)
    assert type(processor) is InternVLChatImageProcessor
    assert (processor.max_dynamic_patch, processor.use_thumbnail, processor.max_total_tiles) == (6, False, 64)
    # The loaded processor tiles like one built with the saved settings: 2 x 1 tiles for a 2:1 image, no thumbnail.
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (100, 200, 3), dtype=np.uint8))
    expected = InternVLChatImageProcessor(max_dynamic_patch=6, use_thumbnail=False)(image, return_tensors="pt")
    got = processor(image, return_tensors="pt")
    assert got["pixel_values"].shape == (2, 3, 448, 448)
    assert got["pixel_values"].equal(expected["pixel_values"])


def test_auto_image_processor_options_override_pre_rename_folder(tmp_path):
    folder = _write(tmp_path / "image", "preprocessor_config.json", OLD_IMAGE_CONFIG)
    assert AutoImageProcessor.from_pretrained(folder, max_num=3).max_dynamic_patch == 3


def test_auto_video_processor_loads_pre_rename_folder(tmp_path):
    folder = _write(tmp_path / "video", "video_preprocessor_config.json", OLD_VIDEO_CONFIG)
    processor = AutoVideoProcessor.from_pretrained(folder)
    assert type(processor) is InternVLChatVideoProcessor
    assert processor.num_segments == 4


@pytest.mark.parametrize(
    ("saved", "type_key", "ours"),
    [
        (OLD_IMAGE_CONFIG, "image_processor_type", True),
        (OLD_VIDEO_CONFIG, "video_processor_type", True),
        (
            {"video_processor_type": "InternVLVideoProcessor", "processor_class": "InternVLChatProcessor"},
            "video_processor_type",
            True,
        ),
        (TRANSFORMERS_VIDEO_CONFIG, "video_processor_type", False),
        ({**TRANSFORMERS_VIDEO_CONFIG, "processor_class": "InternVLProcessor"}, "video_processor_type", False),
        ({"image_processor_type": "GotOcr2ImageProcessorFast", "max_patches": 12}, "image_processor_type", False),
        ({"image_processor_type": "InternVLChatImageProcessor"}, "image_processor_type", False),
    ],
)
def test_own_saved_config_is_told_from_transformers_classes(saved, type_key, ours):
    assert is_own_saved_config(saved, type_key) is ours


def _legacy_processor_folder(folder, processor_class="InternVLProcessor"):
    copy_tokenizer("qwen2-tiny", folder)
    return _write(
        folder,
        "processor_config.json",
        {
            **OLD_PROCESSOR_SETTINGS,
            "processor_class": processor_class,
            "image_processor": OLD_IMAGE_CONFIG,
            "video_processor": OLD_VIDEO_CONFIG,
        },
    )


@pytest.mark.parametrize("processor_class", ["InternVLProcessor", "InternVLChatProcessor"])
def test_auto_processor_loads_pre_rename_processor_folder(tmp_path, processor_class):
    folder = _legacy_processor_folder(tmp_path / "processor", processor_class)
    processor = AutoProcessor.from_pretrained(folder)
    assert type(processor) is InternVLChatProcessor
    assert processor.image_processor.max_dynamic_patch == 6
    assert processor.image_processor.use_thumbnail is False
    assert processor.video_processor.num_segments == 4
    assert processor.template == "internvl2_5"


def test_auto_processor_loads_per_file_pre_rename_folder(tmp_path):
    """Sub-processor configs in their own files, `processor_class` in preprocessor_config.json (the
    transformers 4 layout), no processor_config.json and no config.json."""
    folder = copy_tokenizer("qwen2-tiny", tmp_path / "processor")
    _write(folder, "preprocessor_config.json", {**OLD_IMAGE_CONFIG, "processor_class": "InternVLProcessor"})
    _write(folder, "video_preprocessor_config.json", {**OLD_VIDEO_CONFIG, "processor_class": "InternVLProcessor"})
    for load in (AutoProcessor.from_pretrained, InternVLChatProcessor.from_pretrained):
        processor = load(folder)
        assert type(processor) is InternVLChatProcessor
        assert processor.image_processor.max_dynamic_patch == 6
        assert processor.video_processor.num_segments == 4


def test_transformers_hf_processor_folder_is_not_taken(tmp_path):
    """transformers' own InternVL processor also saves `processor_class: "InternVLProcessor"`; its folder is left
    to transformers."""
    folder = _write(
        tmp_path / "hf",
        "processor_config.json",
        {
            "processor_class": "InternVLProcessor",
            "image_seq_length": 256,
            "image_processor": {"image_processor_type": "GotOcr2ImageProcessorFast", "max_patches": 12},
            "video_processor": TRANSFORMERS_VIDEO_CONFIG,
        },
    )
    assert legacy_processor_dict(folder, {}) is None


# Messages name this package's classes, not transformers' own `InternVLProcessor` of the `-hf` layout.


def test_processor_messages_name_the_chat_class(tmp_path):
    from helpers import qwen2_processor

    with pytest.raises(ValueError, match=r"^`text` is required: InternVLChatProcessor builds token ids"):
        qwen2_processor()(images=[Image.new("RGB", (32, 32))])
    folder = _legacy_processor_folder(tmp_path / "processor", "InternVLChatProcessor")
    with pytest.raises(TypeError, match=r"^InternVLChatProcessor\.from_pretrained got unexpected keyword argument"):
        InternVLChatProcessor.from_pretrained(folder, not_an_option=1)
