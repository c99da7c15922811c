"""`model.generate(**processor(..., return_mm_token_type_ids=True))`: the processor's media-token marks
(transformers' `mm_token_type_ids`, which vLLM and TRL ask for) reach `generate`, which refused them as unused model
kwargs; they carry nothing this model reads, so the tokens equal those of the same call without them."""

from __future__ import annotations

import pytest
import torch
from helpers import original_model_dir
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

import transformers_internvl  # noqa: F401


@pytest.fixture(scope="module")
def model_and_processor(tmp_path_factory):
    folder = original_model_dir(tmp_path_factory.mktemp("mmtt"))
    return AutoModelForImageTextToText.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)


def test_generate_takes_the_processor_output_with_mm_token_type_ids(model_and_processor):
    model, processor = model_and_processor
    image = Image.new("RGB", (500, 300), (10, 20, 30))
    with_marks = processor(
        text="<image>\nDescribe it.", images=[image], return_tensors="pt", return_mm_token_type_ids=True
    )
    assert "mm_token_type_ids" in with_marks
    image_positions = with_marks["input_ids"] == model.config.image_token_id
    assert bool((with_marks["mm_token_type_ids"][image_positions] == 1).all())  # <img>/</img> are marked too
    without = {key: value for key, value in with_marks.items() if key != "mm_token_type_ids"}
    with torch.no_grad():
        expected = model.generate(**without, max_new_tokens=4, do_sample=False)
        got = model.generate(**with_marks, max_new_tokens=4, do_sample=False)
    assert torch.equal(got, expected)


def test_generate_still_refuses_a_misspelt_model_argument(model_and_processor):
    model, processor = model_and_processor
    inputs = processor(text="Hello", return_tensors="pt")
    with pytest.raises(ValueError, match="mm_token_typ_ids"):
        model.generate(**inputs, mm_token_typ_ids=inputs["input_ids"], max_new_tokens=1)
