"""Session-7 side-by-side review against transformers' own InternVL port (`InternVLForConditionalGeneration`).

Per-call `vision_feature_layer` / `vision_feature_select_strategy`: transformers' port takes them in `forward`,
`get_image_features` and `generate`; they were silently ignored here (the vision features always came from
`config.select_layer`). `vision_feature_layer` is the same quantity as the original's `select_layer` (`-1`: the
last layer's output, else `hidden_states[k]` of `(embeddings, layer_1, ..., layer_N)`, `internvl_chat_model.py`
`extract_feature`), so a per-call value must give what a model whose config says `select_layer = k` gives.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from helpers import QWEN2_DIR, image_token_id, qwen2_processor
from PIL import Image

import transformers_internvl  # noqa: F401  (registers the classes)


@pytest.fixture(scope="module")
def inputs():
    """One 448 px image (one tile) and a short prompt, as the processor builds them."""
    image = Image.fromarray(np.random.default_rng(7).integers(0, 256, (448, 448, 3), dtype=np.uint8))
    return qwen2_processor()(images=[image], text="<image>\nWhat is it?", return_tensors="pt")


def _with_select_layer(model, select_layer: int):
    """A copy of `model` whose config selects `select_layer` (the original's way of choosing the layer)."""
    variant = copy.deepcopy(model)
    variant.config.select_layer = select_layer
    return variant


@pytest.mark.parametrize("layer", [-2, 0, 1])
def test_get_image_features_vision_feature_layer_is_a_per_call_select_layer(qwen2_model, inputs, layer):
    pixel_values = inputs["pixel_values"]
    with torch.no_grad():
        got = qwen2_model.get_image_features(pixel_values, vision_feature_layer=layer).pooler_output
        expected = _with_select_layer(qwen2_model, layer).get_image_features(pixel_values).pooler_output
        default = qwen2_model.get_image_features(pixel_values).pooler_output
    assert torch.equal(got, expected)
    assert not torch.allclose(got, default)  # the layer really changed


def test_base_model_get_image_features_takes_the_same_arguments(qwen2_model, inputs):
    pixel_values = inputs["pixel_values"]
    with torch.no_grad():
        got = qwen2_model.model.get_image_features(
            pixel_values=pixel_values, vision_feature_layer=-2, vision_feature_select_strategy="default"
        ).pooler_output
        expected = _with_select_layer(qwen2_model, -2).model.get_image_features(pixel_values).pooler_output
    assert torch.equal(got, expected)


def test_forward_vision_feature_layer_gives_the_select_layer_logits(qwen2_model, inputs):
    with torch.no_grad():
        got = qwen2_model(**inputs, vision_feature_layer=-2).logits
        expected = _with_select_layer(qwen2_model, -2)(**inputs).logits
        default = qwen2_model(**inputs).logits
    assert torch.equal(got, expected)
    assert not torch.allclose(got, default)


def test_generate_accepts_vision_feature_layer_as_transformers_port_does(qwen2_model, inputs):
    variant = _with_select_layer(qwen2_model, 0)
    got = qwen2_model.generate(**inputs, vision_feature_layer=0, max_new_tokens=6, do_sample=False)
    expected = variant.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert torch.equal(got, expected)


def test_select_strategy_default_is_the_original_drop_cls(qwen2_model, inputs):
    with torch.no_grad():
        got = qwen2_model(**inputs, vision_feature_select_strategy="default").logits
        expected = qwen2_model(**inputs).logits
    assert torch.equal(got, expected)


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"vision_feature_select_strategy": "full"}, ValueError, ["vision_feature_select_strategy", "'full'"]),
        ({"vision_feature_layer": [-1, -2]}, TypeError, ["vision_feature_layer", "list"]),
        ({"vision_feature_layer": 3}, ValueError, ["vision_feature_layer", "3", "2 layers"]),
        ({"vision_feature_layer": -4}, ValueError, ["vision_feature_layer", "-4"]),
    ],
)
def test_vision_feature_options_that_cannot_apply_are_refused_by_name(qwen2_model, inputs, kwargs, error, words):
    for call in (
        lambda: qwen2_model(**inputs, **kwargs),
        lambda: qwen2_model.get_image_features(inputs["pixel_values"], **kwargs),
    ):
        with pytest.raises(error) as raised:
            call()
        for word in words:
            assert word in str(raised.value)


def test_per_call_layer_matches_transformers_own_port(qwen2_model, inputs, tmp_path):
    """The converted `-hf` checkpoint under transformers' `InternVLForConditionalGeneration` with the same per-call
    `vision_feature_layer` gives the same logits."""
    from transformers import InternVLForConditionalGeneration

    from transformers_internvl.conversion.convert import convert_checkpoint

    converted = convert_checkpoint(
        QWEN2_DIR, tmp_path / "hf", to="hf", image_token_id=image_token_id("tiny-qwen2"), progress=False
    ).path
    port = InternVLForConditionalGeneration.from_pretrained(converted).eval()
    port_inputs = {key: value for key, value in inputs.items() if key != "num_tiles"}
    with torch.no_grad():
        for layer in (-1, -2, 1):
            ours = qwen2_model(**inputs, vision_feature_layer=layer).logits
            theirs = port(**port_inputs, vision_feature_layer=layer).logits
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


# ---- `crop_to_patches`: transformers' GotOcr2 name of the original's `dynamic_image_size` ----------------------------
# This package accepts GotOcr2's `max_patches` / `min_patches`; `crop_to_patches=False` (one 448 px tile per image in
# transformers' InternVL port) was dropped with a warning and the image was tiled anyway.


def _wide_image():
    return Image.fromarray(np.random.default_rng(3).integers(0, 256, (300, 500, 3), dtype=np.uint8))


def test_crop_to_patches_false_gives_one_tile_per_image_as_transformers_gotocr2():
    from transformers import GotOcr2ImageProcessorPil

    processor = qwen2_processor()
    image = _wide_image()
    plain = processor(images=[image], text="<image>\nWhat?", dynamic_image_size=False, return_tensors="pt")
    for call in (
        lambda: processor(images=[image], text="<image>\nWhat?", crop_to_patches=False, return_tensors="pt"),
        lambda: processor(
            images=[image], text="<image>\nWhat?", images_kwargs={"crop_to_patches": False}, return_tensors="pt"
        ),
    ):
        got = call()
        assert got["num_tiles"].tolist() == [1]
        assert torch.equal(got["pixel_values"], plain["pixel_values"])
        assert torch.equal(got["input_ids"], plain["input_ids"])
    # GotOcr2 with the settings the `-hf` conversion writes (448 px, ImageNet mean / std, bicubic).
    port = GotOcr2ImageProcessorPil(
        crop_to_patches=False,
        size={"height": 448, "width": 448},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        resample=3,
    )(image, return_tensors="pt")["pixel_values"]
    assert torch.equal(plain["pixel_values"], port)
    tiled = processor(images=[image], text="<image>\nWhat?", crop_to_patches=True, return_tensors="pt")
    assert tiled["num_tiles"].tolist() == [7]  # 500x300: aspect 5:3 -> 3x2 grid (closest within 12) + thumbnail


def test_crop_to_patches_in_the_image_processor_init_call_and_from_pretrained(tmp_path):
    from transformers import AutoImageProcessor, AutoProcessor

    from transformers_internvl.processing.image_processing_internvl import InternVLImageProcessor

    image = _wide_image()
    assert list(InternVLImageProcessor(crop_to_patches=False)(image)["num_tiles"]) == [1]
    assert list(InternVLImageProcessor()(image, crop_to_patches=False)["num_tiles"]) == [1]
    assert list(InternVLImageProcessor()(image)["num_tiles"]) == [7]
    folder = tmp_path / "processor"
    qwen2_processor().save_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder, crop_to_patches=False)
    assert processor.image_processor.dynamic_image_size is False
    assert AutoImageProcessor.from_pretrained(folder, crop_to_patches=False).dynamic_image_size is False


def test_crop_to_patches_and_dynamic_image_size_must_agree():
    with pytest.raises(ValueError, match="dynamic_image_size.*crop_to_patches"):
        qwen2_processor()(
            images=[_wide_image()], text="<image>", dynamic_image_size=True, crop_to_patches=False, return_tensors="pt"
        )


# ---- `num_patches`: the forward docstring calls it an alias of `num_tiles` (GotOcr2's output name) -----------------
# It was popped and dropped, so a wrong count passed unnoticed, unlike the same count under `num_tiles`.


def test_num_patches_is_checked_against_the_tiles_like_num_tiles(qwen2_model, inputs):
    plain = {key: value for key, value in inputs.items() if key != "num_tiles"}
    with torch.no_grad():
        expected = qwen2_model(**inputs).logits
        assert torch.equal(qwen2_model(**plain, num_patches=inputs["num_tiles"]).logits, expected)
        with pytest.raises(ValueError, match="sums to 2 but `pixel_values` holds 1 tiles"):
            qwen2_model(**plain, num_patches=torch.tensor([2]))
        with pytest.raises(ValueError, match="num_tiles.*num_patches.*disagree"):
            qwen2_model(**inputs, num_patches=[0, 1])


def test_generate_takes_num_patches_like_forward(qwen2_model, inputs):
    """`generate(num_patches=...)` was refused by transformers' "model_kwargs are not used" while `forward` took it."""
    plain = {key: value for key, value in inputs.items() if key != "num_tiles"}
    settings = {"max_new_tokens": 3, "do_sample": False}
    expected = qwen2_model.generate(**inputs, **settings)
    assert torch.equal(qwen2_model.generate(**plain, num_patches=inputs["num_tiles"], **settings), expected)
    with pytest.raises(ValueError, match="sums to 2 but `pixel_values` holds 1 tiles"):
        qwen2_model.generate(**plain, num_patches=torch.tensor([2]), **settings)
    with pytest.raises(ValueError, match="num_tiles.*num_patches.*disagree"):
        qwen2_model.generate(**inputs, num_patches=[0, 1], **settings)


# ---- `image_hidden_states`: transformers' InternVL port (5.24) keeps it on its outputs, deprecated, as
# `image_outputs.pooler_output`; here it raised AttributeError. -----------------------------------------------------


def test_outputs_keep_the_deprecated_image_hidden_states_of_transformers_port(qwen2_model, inputs, qwen2_tokenizer):
    with torch.no_grad():
        full = qwen2_model(**inputs)
        base = qwen2_model.model(**inputs)
        text_only = qwen2_model(input_ids=qwen2_tokenizer("Hello", return_tensors="pt")["input_ids"])
    features = full.image_outputs.pooler_output
    assert features.shape == (1, 256, qwen2_model.config.text_config.hidden_size)
    assert full.image_hidden_states is features
    assert base.image_hidden_states is base.image_outputs.pooler_output
    assert torch.equal(base.image_hidden_states, features)
    assert text_only.image_hidden_states is None
    assert "image_hidden_states" not in full.keys()  # a property, as in transformers' port: not an output field


# ---- attribute names of transformers' InternVLProcessor (`image_seq_length`, `start_image_token`, ...) -------------
# Code written for the port read them and got AttributeError; the values are the original's under the port's names.


@pytest.mark.parametrize("size,patch,ratio,expected", [(448, 14, 0.5, 256), (224, 14, 0.5, 64), (448, 14, 0.25, 64)])
def test_processor_has_the_port_attribute_names(size, patch, ratio, expected):
    from transformers_internvl.processing.image_processing_internvl import InternVLImageProcessor
    from transformers_internvl.processing.processing_internvl import InternVLProcessor

    processor = InternVLProcessor(
        image_processor=InternVLImageProcessor(image_size=size),
        tokenizer=qwen2_processor().tokenizer,
        image_size=size,
        patch_size=patch,
        downsample_ratio=ratio,
    )
    # (size / patch)^2 patches per tile, pixel unshuffle keeps ratio^2 of them
    assert processor.image_seq_length == processor.num_image_token == expected
    assert (processor.start_image_token, processor.end_image_token) == ("<img>", "</img>")
    ids = processor.tokenizer.convert_tokens_to_ids(["<img>", "</img>"])
    assert [processor.start_image_token_id, processor.end_image_token_id] == ids
    encoded = processor(images=[Image.new("RGB", (size, size))], text="<image>", return_tensors="pt")["input_ids"][0]
    tile_tokens = encoded.tolist()
    start = tile_tokens.index(processor.start_image_token_id)
    end = tile_tokens.index(processor.end_image_token_id)
    tiles = processor.image_processor(images=[Image.new("RGB", (size, size))])["pixel_values"].shape[0]
    assert end - start - 1 == processor.image_seq_length * tiles
