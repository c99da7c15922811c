"""Session-10 review: valid arguments that the session's new checks refused, although the original (and this port
before them) accepted them.

* `num_patches_list` holding 0-d integer tensors (`list(torch.tensor([1, 2]))`): the original multiplies the image
  token string by each count (`str * tensor(2)` works through `__index__`) and sums them;
* `pad_token_id` / `bos_token_id` given as 0-d tensors in the generation dict: transformers' `generate` moves a tensor
  id to the device as it is (`_prepare_special_tokens`);
* a 0-d integer tensor `seed` for `generate_with_votes`, which `torch.manual_seed` takes;
* a `messages` training row whose image parts name their images and whose `images` column repeats them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy
import pytest
import torch
from PIL import Image
from transformers import AutoModel, AutoTokenizer

import transformers_internvl  # noqa: F401
from transformers_internvl.modeling.chat_prompts import whole_tile_counts
from transformers_internvl.processing.image_processing_internvl import InternVLChatImageProcessor
from transformers_internvl.reasoning.voting import _checked_seed
from transformers_internvl.training.data import InternVLSupervisedDataset
from transformers_internvl.training.labels import SampleError
from transformers_internvl.training.messages import fill_images

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "generation_s10"))
from generation_s10_cases import CHECKPOINTS, FIXTURES, tile_size  # noqa: E402

GREEDY = {"max_new_tokens": 4, "do_sample": False}


@pytest.fixture(scope="module")
def qwen2():
    torch.set_num_threads(1)
    folder = FIXTURES / CHECKPOINTS["qwen2-train"][0]
    config = json.loads((folder / "config.json").read_text())
    model = AutoModel.from_pretrained(folder).eval()
    model.reuse_chat_cache = False
    size = tile_size(config)
    pixel_values = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    return model, AutoTokenizer.from_pretrained(folder), pixel_values


def test_whole_tile_counts_takes_zero_dim_integers():
    assert whole_tile_counts("n", [torch.tensor(1), numpy.array(2), numpy.int64(3)]) == [1, 2, 3]
    with pytest.raises(ValueError, match="whole tile counts"):
        whole_tile_counts("n", [torch.tensor(1.5)])
    with pytest.raises(TypeError, match="integer tile counts"):
        whole_tile_counts("n", [torch.tensor([1, 2])])


def test_chat_takes_zero_dim_tensor_tile_counts(qwen2):
    model, tokenizer, pixel_values = qwen2
    question = "<image>\n<image>\nDescribe."
    expected = model.chat(tokenizer, pixel_values, question, GREEDY, num_patches_list=[1, 2])
    counts = list(torch.tensor([1, 2]))
    assert model.chat(tokenizer, pixel_values, question, GREEDY, num_patches_list=counts) == expected
    batch_expected = model.batch_chat(tokenizer, pixel_values, ["a", "b"], GREEDY, num_patches_list=[1, 2])
    assert model.batch_chat(tokenizer, pixel_values, ["a", "b"], GREEDY, num_patches_list=counts) == batch_expected


@pytest.mark.parametrize("name", ["pad_token_id", "bos_token_id"])
def test_chat_takes_zero_dim_tensor_token_ids(qwen2, name):
    model, tokenizer, pixel_values = qwen2
    token_id = tokenizer.pad_token_id if name == "pad_token_id" else 1
    expected = model.chat(tokenizer, pixel_values[:1], "Hi", {**GREEDY, name: token_id})
    assert model.chat(tokenizer, pixel_values[:1], "Hi", {**GREEDY, name: torch.tensor(token_id)}) == expected
    with pytest.raises(TypeError, match=name):
        model.chat(tokenizer, pixel_values[:1], "Hi", {**GREEDY, name: torch.tensor(1.5)})


def test_seed_takes_zero_dim_integers():
    assert _checked_seed(torch.tensor(7)) == 7
    assert _checked_seed(numpy.array(7)) == 7
    assert _checked_seed(numpy.uint64(2**64 - 1)) == 2**64 - 1
    with pytest.raises(TypeError, match="seed"):
        _checked_seed(torch.tensor(1.5))
    with pytest.raises(TypeError, match="seed"):
        _checked_seed(True)


def test_messages_images_column_repeating_the_parts_images_is_accepted(tmp_path):
    """A `messages` row whose image parts name their images AND whose `images` column lists the same ones was
    skipped ("0 image parts of `messages` without an image but 2 `images`"); before the column support it loaded."""
    assert fill_images(["a.png", "b.png"], ["a.png", "b.png"]) == ["a.png", "b.png"]
    with pytest.raises(SampleError, match="without an image but 1"):
        fill_images(["a.png", "b.png"], ["c.png"])  # a different list is still refused
    for seed, name in enumerate(("a.png", "b.png")):
        Image.new("RGB", (70 + 30 * seed, 50), (40 * seed, 90, 160)).save(tmp_path / name)
    parts = [{"type": "image", "path": "a.png"}, {"type": "image", "path": "b.png"}, {"type": "text", "text": "Hi"}]
    messages = [{"role": "user", "content": parts}, {"role": "assistant", "content": "Two."}]
    tokenizer = AutoTokenizer.from_pretrained(FIXTURES / CHECKPOINTS["qwen2-train"][0])
    dataset = InternVLSupervisedDataset(
        [{"messages": messages, "images": ["a.png", "b.png"]}, {"messages": messages}],
        tokenizer,
        InternVLChatImageProcessor(max_dynamic_patch=2),
        "internvl2_5",
        num_image_token=4,
        root=str(tmp_path),
        max_dynamic_patch=2,
    )
    with_column, without = dataset.build_sample(dataset.rows[0]), dataset.build_sample(dataset.rows[1])
    for key in without:
        assert torch.equal(with_column[key], without[key]), key
