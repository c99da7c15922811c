"""Session-10 held-out checks of fine-tuning (issue 11).

* `messages` rows (transformers' chat format) are rendered as the processor's chat template renders the same
  messages at inference: a model fine-tuned on them then sees the prompt layout it was trained on. Reference: the
  processor itself (`apply_chat_template(..., tokenize=True, return_assistant_tokens_mask=True)`), first principles.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import QWEN2_TOKENIZER
from PIL import Image
from transformers import AutoTokenizer

import transformers_internvl  # noqa: F401
from transformers_internvl.processing.image_processing_internvl import InternVLImageProcessor
from transformers_internvl.processing.processing_internvl import InternVLProcessor
from transformers_internvl.training.data import InternVLSupervisedDataset

TILE = 56  # small tiles: 4 <IMG_CONTEXT> per tile with the processor's 14 px patches and ratio 0.5


def _image(seed: int, width: int, height: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _processor(template: str, max_dynamic_patch: int) -> InternVLProcessor:
    return InternVLProcessor(
        image_processor=InternVLImageProcessor(image_size=TILE, max_dynamic_patch=max_dynamic_patch),
        tokenizer=AutoTokenizer.from_pretrained(QWEN2_TOKENIZER),
        template=template,
        image_size=TILE,
    )


def _user(*parts):
    return {"role": "user", "content": list(parts)}


def _text(text):
    return {"type": "text", "text": text}


def _img(seed, width=90, height=60):
    return {"type": "image", "image": _image(seed, width, height)}


# (name, messages, tile budget): the budget is 1 for several images so that training (max(1, budget // N) tiles per
# image) and inference (budget per image) tile alike and only the prompt layout is compared.
MESSAGE_CASES = [
    ("image_after_text", [_user(_text("What is this?"), _img(0)), {"role": "assistant", "content": "A cat."}], 4),
    (
        "text_around_image",
        [_user(_text("Look: "), _img(1, 40, 100), _text(" and say.")), {"role": "assistant", "content": "Tall."}],
        4,
    ),
    (
        "two_images_one_turn",
        [_user(_img(2), _img(3, 50, 50), _text("Differences?")), {"role": "assistant", "content": "Size."}],
        1,
    ),
    (
        "images_in_two_turns",
        [
            {"role": "system", "content": [_text("Be brief.")]},
            _user(_text("First:"), _img(4)),
            {"role": "assistant", "content": [_text("A dog.")]},
            _user(_img(5, 30, 80), _text("And this?")),
            {"role": "assistant", "content": "A tree."},
        ],
        1,
    ),
]


@pytest.mark.parametrize("template", ["internvl2_5", "Hermes-2"])
@pytest.mark.parametrize("name,messages,budget", MESSAGE_CASES, ids=[case[0] for case in MESSAGE_CASES])
def test_messages_rows_render_as_the_processor_chat_template(template, name, messages, budget):
    if template != "internvl2_5" and messages[0]["role"] == "system":
        messages = messages[1:]  # the original's pre-2.5 preprocess functions refuse a system turn (KeyError)
    processor = _processor(template, budget)
    expected = processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_tensors="pt", return_assistant_tokens_mask=True
    )
    dataset = InternVLSupervisedDataset(
        [{"messages": messages}],
        processor.tokenizer,
        processor.image_processor,
        template,
        num_image_token=4,
        max_dynamic_patch=budget,
    )
    sample = dataset.build_sample(dataset.rows[0])
    assert sample["input_ids"].tolist() == expected["input_ids"][0].tolist()
    assert torch.equal(sample["pixel_values"], expected["pixel_values"])
    if template == "internvl2_5":  # the processor's generation mask is the internvl2_5 label rule
        trained = (sample["labels"] != -100).long().tolist()
        assert trained == expected["assistant_masks"][0].tolist()
        assert sum(trained) > 0
