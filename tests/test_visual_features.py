"""`generate(..., visual_features=...)`, the original remote-code argument for image features computed beforehand
(parity with the original: `test_original_parity_s7.py::test_generate_with_visual_features_matches_original`)."""

import pytest
import torch

import transformers_internvl  # noqa: F401


@pytest.fixture(scope="module")
def inputs(qwen2_model, qwen2_io):
    with torch.no_grad():
        features = qwen2_model.extract_feature(qwen2_io["pixel_values"])
    greedy = dict(max_new_tokens=4, do_sample=False)
    return qwen2_io["input_ids"], qwen2_io["pixel_values"], features, greedy


def test_flat_features_and_features_without_pixel_values_give_the_tower_answer(qwen2_model, inputs):
    input_ids, pixel_values, features, greedy = inputs
    with torch.no_grad():
        expected = qwen2_model.generate(input_ids=input_ids, pixel_values=pixel_values, **greedy)
        flat = qwen2_model.generate(
            input_ids=input_ids, pixel_values=pixel_values, visual_features=features.flatten(0, 1), **greedy
        )
        alone = qwen2_model.generate(input_ids=input_ids, visual_features=features, **greedy)
    assert torch.equal(flat, expected) and torch.equal(alone, expected)


def test_pixel_values_are_not_encoded_when_features_are_given(qwen2_model, inputs, monkeypatch):
    input_ids, pixel_values, features, greedy = inputs

    def refuse(*args, **kwargs):
        raise AssertionError("the vision tower ran")

    monkeypatch.setattr(qwen2_model.model, "get_image_features", refuse)
    with torch.no_grad():
        qwen2_model.generate(input_ids=input_ids, pixel_values=pixel_values, visual_features=features, **greedy)


@pytest.mark.parametrize(
    "make,error,message",
    [
        (lambda f: f.tolist(), TypeError, r"`visual_features` must be a tensor .* got list"),
        (lambda f: f.long(), TypeError, r"`visual_features` must be a floating tensor .* got dtype torch.int64"),
        (lambda f: f[..., :-1], ValueError, r"`visual_features` must have shape `\(num_tiles, 256, \d+\)`.* got"),
        (lambda f: f[0, 0], ValueError, r"`visual_features` must have shape"),
    ],
    ids=["list", "integer", "hidden-size", "1-d"],
)
def test_bad_visual_features_are_refused(qwen2_model, inputs, make, error, message):
    input_ids, pixel_values, features, greedy = inputs
    with pytest.raises(error, match=message):
        qwen2_model.generate(input_ids=input_ids, pixel_values=pixel_values, visual_features=make(features), **greedy)


def test_visual_features_and_mm_encoder_outputs_together_are_refused(qwen2_model, inputs):
    input_ids, _, features, greedy = inputs
    encoded = {"image": qwen2_model.get_image_features(inputs[1])}
    with pytest.raises(ValueError, match="either as `visual_features` or as `mm_encoder_outputs`"):
        qwen2_model.generate(input_ids=input_ids, visual_features=features, mm_encoder_outputs=encoded, **greedy)


def test_too_few_features_for_the_image_tokens_name_both_counts(qwen2_model, inputs):
    input_ids, _, features, greedy = inputs
    with pytest.raises(ValueError, match="image tokens"):
        qwen2_model.generate(input_ids=input_ids, visual_features=features[:, :-1], **greedy)
