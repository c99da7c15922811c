"""Session-11 attack, round 2: the code paths added in session 11 driven with hostile input and with unusual but
valid input the original accepts.

Expected behaviour comes from first principles (a mask is one 0/1 entry per prompt token; the same prompt with a mask
of ones is the reference) or from the original code where it accepts the input (noted per test).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import load_model, transformers_warnings
from PIL import Image

import transformers_internvl  # noqa: F401

IDS = torch.tensor([[5, 6, 7, 8, 9]])


@pytest.fixture(scope="module")
def model():
    return load_model().eval()


# ---------------------------------------------------------------------------------------------------------------------
# generate(inputs_embeds=..., attention_mask=...) without input_ids (the session's new text-embeddings path)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mask",
    [
        pytest.param(torch.tensor([[1, 1, 3, 1, 1]]), id="three"),
        pytest.param(torch.tensor([[1, 1, -1, 1, 1]]), id="minus-one"),
        pytest.param(torch.tensor([[1.0, 1.0, 0.5, 1.0, 1.0]]), id="half"),
    ],
)
def test_generate_from_embeddings_refuses_mask_values_other_than_0_and_1(model, mask):
    # Before: the positions generate derives from the mask (cumsum) shifted and the scores changed (by ~0.9 on the
    # tiny model) without a word; the same mask with `input_ids` was already refused.
    embeds = model.get_input_embeddings()(IDS)
    with pytest.raises(ValueError, match="`attention_mask` must hold only 1 .* and 0"):
        model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=2, do_sample=False)


@pytest.mark.parametrize(
    "mask",
    [
        pytest.param(torch.ones(1, 3, dtype=torch.long), id="shorter"),
        pytest.param(torch.ones(1, 9, dtype=torch.long), id="longer"),
        pytest.param(torch.ones(2, 5, dtype=torch.long), id="other-batch"),
    ],
)
def test_generate_from_embeddings_refuses_a_mask_of_another_shape(model, mask):
    # Before: "The size of tensor a (5) must match the size of tensor b (3)" from inside transformers (shorter), or the
    # mask silently dropped by transformers' generate (longer).
    embeds = model.get_input_embeddings()(IDS)
    expected = r"`attention_mask` must have the shape \(batch, seq\) of the prompt, \(1, 5\)"
    with pytest.raises(ValueError, match=expected):
        model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=2, do_sample=False)


@pytest.mark.parametrize("dtype", [torch.long, torch.bool, torch.float32])
def test_generate_from_embeddings_with_a_mask_of_ones_still_equals_the_ids(model, dtype):
    expected = model.generate(input_ids=IDS, max_new_tokens=3, do_sample=False)[:, IDS.shape[1] :]
    embeds = model.get_input_embeddings()(IDS)
    mask = torch.ones(IDS.shape, dtype=dtype)
    got = model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=3, do_sample=False)
    assert torch.equal(got, expected)
    both = model.generate(input_ids=IDS, inputs_embeds=embeds, attention_mask=mask, max_new_tokens=3, do_sample=False)
    assert torch.equal(both[:, IDS.shape[1] :], expected)


def test_generate_from_embeddings_left_padded_batch_still_equals_each_row_alone(model):
    alone = model.generate(input_ids=IDS[:, 2:], max_new_tokens=3, do_sample=False)[:, 3:]
    ids = torch.tensor([[0, 0, 7, 8, 9], [1, 2, 3, 4, 5]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    embeds = model.get_input_embeddings()(ids)
    got = model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=3, do_sample=False)
    assert torch.equal(got[:1], alone)


# ---------------------------------------------------------------------------------------------------------------------
# InternVisionModel.resize_pos_embeddings
# ---------------------------------------------------------------------------------------------------------------------


def test_resize_pos_embeddings_takes_numpy_integers_as_the_original(tmp_path):
    # The original (internvl_chat/.../modeling_intern_vit.py) only divides the sizes, so numpy integers (a size read
    # from a numpy array or a pandas table of runs) work there; here they were refused ("must be a positive int").
    import numpy as np

    expected, got = load_model().model.vision_model, load_model().model.vision_model
    expected.resize_pos_embeddings(448, 224, 14)
    got.resize_pos_embeddings(np.int64(448), np.int64(224), np.int32(14))
    assert torch.equal(got.embeddings.position_embedding, expected.embeddings.position_embedding)
    assert type(got.config.image_size) is int and type(got.embeddings.image_size) is int
    got.save_pretrained(tmp_path)  # a numpy integer in the config would not serialise to JSON
    assert (tmp_path / "config.json").read_text(encoding="utf-8").count('"image_size": 224') == 1


@pytest.mark.parametrize("value", [448.0, "448", True, 0, -14, None])
def test_resize_pos_embeddings_still_refuses_non_integer_sizes(value):
    tower = load_model().model.vision_model
    with pytest.raises(ValueError, match="`old_size` must be a positive int"):
        tower.resize_pos_embeddings(value, 224, 14)


# ---------------------------------------------------------------------------------------------------------------------
# InternVLChatProcessor.save_pretrained after a call (`without_call_truncation_or_padding`: the padding sibling)
# ---------------------------------------------------------------------------------------------------------------------

HELDOUT = Path(__file__).parent / "fixtures" / "heldout_s6"
LONG = "<image>\n" + " ".join(["word"] * 40)


@pytest.mark.parametrize("folder", ["qwen2-v1-sl2", "internlm2-dynamic", "llama3-hermes"])
@pytest.mark.parametrize(
    "call",
    [
        pytest.param(dict(padding="max_length", max_length=12), id="padded-to-12"),
        pytest.param(dict(padding=True, pad_to_multiple_of=8), id="multiple-of-8"),
        pytest.param(dict(padding="max_length", max_length=12, truncation=True), id="padded-and-cut"),
    ],
)
def test_a_calls_padding_does_not_reach_the_saved_processor(tmp_path, folder, call):
    # Before: `processor(..., padding="max_length", max_length=12)` left fixed padding in the fast tokenizer's
    # backend, `save_pretrained` wrote it into tokenizer.json, transformers loads it as the tokenizer's `max_length`
    # (and `pad_to_multiple_of`), and the reloaded processor cut EVERY prompt to 12 tokens (Qwen2, Llama) without a
    # word: image token runs cut, "Image features and image tokens do not match".
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(HELDOUT / folder)
    image = Image.new("RGB", (64, 48), (10, 200, 30))
    expected = {
        key: processor(text=[LONG, "hi"], images=[image], padding=True, **options)["input_ids"]
        for key, options in (("plain", {}), ("truncation", {"truncation": True}))
    }
    processor(text=["hello"], **call)  # the last call before saving
    processor.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    for key, options in (("plain", {}), ("truncation", {"truncation": True})):
        assert reloaded(text=[LONG, "hi"], images=[image], padding=True, **options)["input_ids"] == expected[key]
    assert processor(text=[LONG, "hi"], images=[image], padding=True)["input_ids"] == expected["plain"]


# ---------------------------------------------------------------------------------------------------------------------
# examples/finetune_lora.py --packing --max-tokens (the session's clamp of --max-length)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, named",
    [
        (["--packing", "--max-tokens", "0"], "--max-tokens"),
        (["--packing", "--max-tokens", "-5"], "--max-tokens"),
        (["--max-length", "0"], "--max-length"),
        (["--packing", "--max-length", "-1", "--max-tokens", "300"], "--max-length"),
    ],
)
def test_finetune_example_names_a_token_budget_below_one(options, named, capsys):
    # Before: parsed, the model loaded, and then `--packing --max-tokens 0` was clamped into the dataset's max_length
    # and refused as "`max_length` must be >= 1, got 0", naming an option the user had not given.
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
    import finetune_lora

    argv = ["--model", str(HELDOUT / "qwen2-v1-sl2"), "--output-dir", "unused", *options]
    with pytest.raises(SystemExit):
        finetune_lora.parse_args(argv)
    assert f"{named} must be at least 1" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------------
# InternVLChatModel(config, vision_model, language_model): the original constructor's arguments
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["InternViT-300M", 3, {"hidden_size": 64}])
def test_original_constructor_names_a_vision_model_that_is_no_module(model, value):
    # Before: "AttributeError: 'str' object has no attribute 'modules'" from inside the constructor.
    from transformers_internvl import InternVLChatBaseModel

    llm = model.language_model.as_causal_lm()
    with pytest.raises(TypeError, match="`vision_model` must be a torch.nn.Module .* got " + type(value).__name__):
        type(model)(model.config, value, llm)
    with pytest.raises(TypeError, match="`language_model` must be a torch.nn.Module .* got " + type(value).__name__):
        InternVLChatBaseModel(model.config, language_model=value)


def test_original_constructor_still_uses_the_given_towers(model):
    llm = model.language_model.as_causal_lm()
    built = type(model)(model.config, model.model.vision_model, llm).eval()
    assert built.model.vision_model is model.model.vision_model and built.lm_head is model.lm_head
    assert torch.equal(built(input_ids=IDS).logits, model(input_ids=IDS).logits)


# ---------------------------------------------------------------------------------------------------------------------
# InternVisionConfig alone (a vision tower loaded by itself, as the original training scripts load InternViT)
# ---------------------------------------------------------------------------------------------------------------------

TOWER = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=1)


@pytest.mark.parametrize("eps", [float("nan"), float("-inf"), float("inf")])
def test_a_vision_tower_alone_refuses_a_non_finite_layer_norm_eps(eps, tmp_path):
    # Before: only the InternVL chat config named it; `InternVisionModel.from_pretrained(vision_path)` (the original
    # scripts' way, then `InternVLChatModel(config, vision_model, llm)`) built the tower and NaN features came out.
    import json

    from transformers_internvl import InternVisionConfig, InternVisionModel

    with pytest.raises(ValueError, match=r"`vision_config.layer_norm_eps` must be finite and >= 0"):
        InternVisionConfig(**TOWER, layer_norm_eps=eps)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "intern_vit_6b", **TOWER, "layer_norm_eps": eps}))
    with pytest.raises(ValueError, match=r"`vision_config.layer_norm_eps` must be finite and >= 0"):
        InternVisionModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("eps", [0, 1e-6, 1.0, 2])
def test_a_vision_tower_alone_still_takes_finite_eps(eps):
    from transformers_internvl import InternVisionConfig

    assert InternVisionConfig(**TOWER, layer_norm_eps=eps).layer_norm_eps == eps


# ---------------------------------------------------------------------------------------------------------------------
# forward(labels=..., loss_weight=...) under a transformers Trainer (`num_items_in_batch`)
# ---------------------------------------------------------------------------------------------------------------------


def test_weighted_loss_with_num_items_in_batch_warns_about_gradient_accumulation(model, caplog):
    # transformers 5's Trainer passes `num_items_in_batch` to a forward taking **kwargs and then does not divide the
    # loss by the gradient-accumulation steps; the weighted loss is a micro-batch mean (the original's, whose Trainer
    # divided it), so with accumulation it came out that many times the original's, silently.

    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    labels = torch.tensor([[-100, -100, 7, 8, 9, 10]])
    weights = torch.tensor([[0.0, 0.0, 1.0, 2.0, 3.0, 4.0]])
    plain = model(input_ids=ids, labels=labels, loss_weight=weights).loss
    with transformers_warnings(caplog):
        loss = model(input_ids=ids, labels=labels, loss_weight=weights, num_items_in_batch=torch.tensor(8)).loss
    assert torch.equal(loss, plain)  # the original's per-micro-batch value is kept
    assert "gradient-accumulation steps" in caplog.text and "InternVLTrainer" in caplog.text
