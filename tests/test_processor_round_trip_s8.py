"""Session 8: `save_pretrained` -> `from_pretrained` keeps EVERY processor option, set away from its default.

The options are those of `InternVLChatProcessor` (template, system message, tile geometry, frame template,
placeholders), of its image processor (tile side, tiling budget, thumbnail, resample, normalisation, workers) and of
its video processor (frames, tile side, normalisation). Reloaded by the class and by `AutoProcessor`, from a folder
saved by this package and from an original folder whose `config.json` sets non-default tiling, the processor has the
same settings and gives the same outputs.
"""

import json

import numpy as np
import pytest
import torch
from helpers import MODELS, QWEN2_TOKENIZER, copy_tokenizer
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer

from transformers_internvl.processing.image_processing_internvl import InternVLChatImageProcessor
from transformers_internvl.processing.processing_internvl import InternVLChatProcessor
from transformers_internvl.processing.video_processing_internvl import InternVLChatVideoProcessor

PROCESSOR_OPTIONS = (
    "template",
    "system_message",
    "image_size",
    "patch_size",
    "downsample_ratio",
    "video_frame_template",
    "image_placeholder",
    "video_placeholder",
    "image_start_token",
    "image_end_token",
    "image_context_token",
    "num_image_token",
    "chat_template",
)


def _settings(processor) -> dict:
    settings = {name: getattr(processor, name) for name in PROCESSOR_OPTIONS}
    settings["image_processor"] = (type(processor.image_processor).__name__, processor.image_processor.to_dict())
    settings["video_processor"] = (type(processor.video_processor).__name__, processor.video_processor.to_dict())
    return settings


def _inputs(processor):
    rng = np.random.default_rng(5)
    image = Image.fromarray(rng.integers(0, 256, (90, 260, 3), dtype=np.uint8))
    frames = list(rng.integers(0, 256, (4, 30, 40, 3), dtype=np.uint8))
    text = f"{processor.image_placeholder}\n{processor.video_placeholder}\nWhat?"
    return processor(text=text, images=[image], videos=[frames], return_tensors="pt")


def _assert_same(reloaded, expected_settings, expected_outputs):
    assert _settings(reloaded) == expected_settings
    outputs = _inputs(reloaded)
    assert outputs.keys() == expected_outputs.keys()
    for key in expected_outputs:
        assert torch.equal(outputs[key], expected_outputs[key]), key


def test_every_option_survives_save_and_reload(tmp_path):
    image_processor = InternVLChatImageProcessor(
        image_size=336,
        min_dynamic_patch=2,
        max_dynamic_patch=5,
        dynamic_image_size=True,
        use_thumbnail=False,
        max_total_tiles=None,
        resample=Image.BILINEAR,
        image_mean=(0.5, 0.4, 0.3),
        image_std=(0.25, 0.3, 0.35),
        num_workers=1,
    )
    video_processor = InternVLChatVideoProcessor(
        num_segments=3, image_size=336, resample=Image.BILINEAR, image_mean=0.5, image_std=0.25, num_workers=1
    )
    processor = InternVLChatProcessor(
        image_processor,
        AutoTokenizer.from_pretrained(QWEN2_TOKENIZER),
        video_processor,
        template="Hermes-2",
        system_message="Answer briefly.",
        image_size=336,
        patch_size=14,
        downsample_ratio=0.25,
        video_frame_template="Frame{i}: ",
        image_placeholder="<IMAGE>",
        video_placeholder="<VID>",
    )
    settings, outputs = _settings(processor), _inputs(processor)
    # 260 x 90: the (3, 1) grid among 2..5 tiles, no thumbnail; decoded frames are all used unless the call samples
    assert outputs["num_tiles"].tolist() == [3, 1, 1, 1, 1]
    assert processor.num_image_token == 36  # (336 // 14) ** 2 * 0.25 ** 2
    processor.save_pretrained(tmp_path)
    _assert_same(InternVLChatProcessor.from_pretrained(tmp_path), settings, outputs)
    _assert_same(AutoProcessor.from_pretrained(tmp_path), settings, outputs)


@pytest.mark.parametrize(
    "config_changes",
    [
        {
            "force_image_size": 336,
            "downsample_ratio": 0.25,
            "template": "Hermes-2",
            "max_dynamic_patch": 6,
            "min_dynamic_patch": 2,
            "use_thumbnail": False,
        },
        {
            "force_image_size": None,
            "dynamic_image_size": False,
            "template": "internlm2-chat",
            "system_message": "Be exact.",
        },
    ],
    ids=["336px-ds0.25-hermes", "vision-224px-no-dynamic"],
)
def test_original_folder_settings_survive_save_and_reload(tmp_path, config_changes):
    directory = tmp_path / "original"
    copy_tokenizer("qwen2-tiny", directory)
    config = json.loads((MODELS / "tiny-qwen2" / "config.json").read_text())
    config["vision_config"]["image_size"] = 224  # what `force_image_size: null` falls back to
    config.update(config_changes)
    (directory / "config.json").write_text(json.dumps(config))
    processor = AutoProcessor.from_pretrained(directory)
    # The original model: image_size = force_image_size or vision_config.image_size,
    # num_image_token = int((image_size // patch_size) ** 2 * downsample_ratio ** 2).
    image_size = config["force_image_size"] or 224
    assert processor.image_size == processor.image_processor.image_size == image_size
    assert processor.video_processor.image_size == image_size
    assert processor.num_image_token == int((image_size // 14) ** 2 * config["downsample_ratio"] ** 2)
    assert processor.template == config["template"]
    assert processor.system_message == config.get("system_message")
    for name in ("max_dynamic_patch", "min_dynamic_patch", "use_thumbnail", "dynamic_image_size"):
        if name in config_changes:
            assert getattr(processor.image_processor, name) == config_changes[name], name
    settings, outputs = _settings(processor), _inputs(processor)
    processor.save_pretrained(tmp_path / "saved")
    _assert_same(AutoProcessor.from_pretrained(tmp_path / "saved"), settings, outputs)
