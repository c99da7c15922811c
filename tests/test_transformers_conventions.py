"""Conventions every transformers model keeps, checked on tiny random models: the behaviours that transformers'
own ModelTesterMixin / GenerationTesterMixin exercise and that this port had to fix or that it relies on."""

import pytest
import torch
from helpers import tiny_text_config, tiny_vision_config
from torch import nn

import transformers_internvl  # noqa: F401  (registers the classes)
from transformers_internvl import (
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLModel,
)

IMAGE_TOKEN_ID = 1
VOCAB_SIZE = 99


def tiny_config(llm: str = "qwen2", tie_word_embeddings: bool = False, **overrides) -> InternVLConfig:
    """28 px tiles of 14 px patches: 2x2 patches, pixel-unshuffled 0.5 -> 1 LLM token per tile."""
    vision_config = tiny_vision_config(image_size=28, qkv_bias=True, qk_normalization=True, norm_type="rms_norm")
    text_config = tiny_text_config(
        llm,
        vocab_size=VOCAB_SIZE,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return InternVLConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=IMAGE_TOKEN_ID,
        ps_version="v2",
        template="internvl2_5",
        **overrides,
    )


def tiny_inputs(config: InternVLConfig, batch_size: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """One tile per sample; the tile's placeholder sits after one text token."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, VOCAB_SIZE, (batch_size, 8), generator=generator)
    input_ids[:, 1 : 1 + config.num_image_token] = IMAGE_TOKEN_ID
    size = config.vision_image_size
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": torch.randn(batch_size, 3, size, size, generator=generator),
    }


def tiny_model(llm: str = "qwen2", **config_kwargs) -> InternVLForConditionalGeneration:
    torch.manual_seed(0)
    return InternVLForConditionalGeneration(tiny_config(llm, **config_kwargs)).eval()


GREEDY = {"do_sample": False, "max_new_tokens": 3, "pad_token_id": 0, "eos_token_id": None}


@pytest.mark.parametrize("model_class", [InternVLForConditionalGeneration, InternVLModel])
def test_model_builds_on_the_meta_device(model_class):
    with torch.device("meta"):
        model = model_class(tiny_config())
    assert all(parameter.device.type == "meta" for parameter in model.parameters())


@pytest.mark.parametrize("llm", ["qwen2", "internlm2"])
def test_save_and_reload_round_trip(llm, tmp_path):
    model = tiny_model(llm)
    inputs = tiny_inputs(model.config)
    model.save_pretrained(tmp_path)

    reloaded, loading_info = InternVLForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert not loading_info["missing_keys"] and not loading_info["unexpected_keys"]
    original_state, reloaded_state = model.state_dict(), reloaded.state_dict()
    assert original_state.keys() == reloaded_state.keys()
    assert all(torch.equal(original_state[key], reloaded_state[key]) for key in original_state)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, reloaded.eval()(**inputs).logits)

    # A load from an in-memory state dict has no directory to read tokenizer files from.
    from_state_dict = InternVLForConditionalGeneration.from_pretrained(
        None, config=model.config, state_dict=original_state
    )
    assert torch.equal(from_state_dict.lm_head.weight, model.lm_head.weight)


def test_output_hidden_states_and_attentions_cover_vision_and_text():
    model = tiny_model()
    model.set_attn_implementation("eager")  # sdpa does not materialise attention weights
    inputs = tiny_inputs(model.config)
    vision_layers = model.config.vision_config.num_hidden_layers
    text_layers = model.config.text_config.num_hidden_layers
    with torch.no_grad():
        outputs = model(**inputs, output_hidden_states=True, output_attentions=True)
        plain = model(**inputs)
    assert len(outputs.hidden_states) == text_layers + 1 and len(outputs.attentions) == text_layers
    assert len(outputs.image_outputs.hidden_states) == vision_layers + 1
    assert len(outputs.image_outputs.attentions) == vision_layers
    seq_len = inputs["input_ids"].shape[1]
    num_positions = (model.config.vision_image_size // model.config.vision_config.patch_size) ** 2 + 1
    assert outputs.attentions[0].shape == (2, 4, seq_len, seq_len)
    assert outputs.image_outputs.attentions[0].shape == (2, 4, num_positions, num_positions)
    assert plain.hidden_states is None and plain.attentions is None
    assert plain.image_outputs.hidden_states is None and plain.image_outputs.attentions is None
    # sdpa returns no weights: the vision tower then reports none, as the LLM does, rather than a tuple of None.
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        assert model.get_image_features(inputs["pixel_values"], output_attentions=True).attentions == ()


def test_get_image_features_reads_output_hidden_states_from_the_config():
    model = tiny_model()
    pixel_values = tiny_inputs(model.config)["pixel_values"]
    model.config.vision_config.output_hidden_states = True
    with torch.no_grad():
        features = model.get_image_features(pixel_values)
    assert len(features.hidden_states) == model.config.vision_config.num_hidden_layers + 1


def test_return_dict_false_gives_tuples():
    model = tiny_model()
    inputs = tiny_inputs(model.config)
    with torch.no_grad():
        as_dict = model(**inputs)
        as_tuple = model(**inputs, return_dict=False)
        base_tuple = model.model(**inputs, return_dict=False)
        features_tuple = model.get_image_features(inputs["pixel_values"], return_dict=False)
        model.config.return_dict = False
        from_config = model(**inputs)
    for output in (as_tuple, base_tuple, features_tuple, from_config):
        assert isinstance(output, tuple)
    assert torch.equal(as_tuple[0], as_dict.logits) and torch.equal(from_config[0], as_dict.logits)
    assert base_tuple[0].shape == (*inputs["input_ids"].shape, model.config.text_config.hidden_size)
    assert torch.equal(features_tuple[1], as_dict.image_outputs.pooler_output)


def test_generate_with_images_returns_the_llm_hidden_states_and_attentions():
    """`generate` hands the image encoder the model kwargs its signature names; the output flags must still reach
    the LLM (they were swallowed by `get_image_features` before)."""
    model = tiny_model()
    model.set_attn_implementation("eager")
    inputs = tiny_inputs(model.config)
    prompt_length = inputs["input_ids"].shape[1]
    output = model.generate(
        **inputs, **GREEDY, return_dict_in_generate=True, output_hidden_states=True, output_attentions=True
    )
    text_layers = model.config.text_config.num_hidden_layers
    assert len(output.hidden_states) == GREEDY["max_new_tokens"]
    assert len(output.hidden_states[0]) == text_layers + 1
    assert output.hidden_states[0][0].shape[:2] == (2, prompt_length)
    assert output.hidden_states[1][0].shape[:2] == (2, 1)
    assert output.attentions[-1][0].shape[-1] == prompt_length + GREEDY["max_new_tokens"] - 1


def test_beam_search_expands_images_per_sample_not_per_tile():
    """Samples with 2 and 1 tiles: beams of a sample must all see that sample's tiles, in order."""
    model = tiny_model()
    config = model.config
    generator = torch.Generator().manual_seed(1)
    image = torch.full((config.num_image_token,), IMAGE_TOKEN_ID)
    two_tiles = torch.cat([torch.randint(2, VOCAB_SIZE, (2,), generator=generator), image, image, torch.tensor([7, 8])])
    one_tile = torch.cat([torch.randint(2, VOCAB_SIZE, (2,), generator=generator), image, torch.tensor([9, 10])])
    pad = two_tiles.numel() - one_tile.numel()
    input_ids = torch.stack([two_tiles, torch.cat([torch.zeros(pad, dtype=torch.long), one_tile])])
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :pad] = 0
    pixel_values = torch.randn(3, 3, config.vision_image_size, config.vision_image_size, generator=generator)
    beams = {**GREEDY, "num_beams": 2, "num_return_sequences": 2, "bad_words_ids": [[IMAGE_TOKEN_ID]]}

    batched = model.generate(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, **beams)
    first = model.generate(input_ids=two_tiles[None], pixel_values=pixel_values[:2], **beams)
    second = model.generate(input_ids=one_tile[None], pixel_values=pixel_values[2:], **beams)
    assert torch.equal(batched[:2], first)
    assert torch.equal(batched[2:, pad:], second)


@pytest.mark.parametrize("tie_word_embeddings", [False, True])
def test_resize_token_embeddings_keeps_the_head_consistent(tie_word_embeddings):
    model = tiny_model(tie_word_embeddings=tie_word_embeddings)
    inputs = tiny_inputs(model.config)
    model.resize_token_embeddings(VOCAB_SIZE + 21, mean_resizing=False)
    assert model.get_input_embeddings().weight.shape[0] == VOCAB_SIZE + 21
    assert model.lm_head.weight.shape[0] == VOCAB_SIZE + 21
    assert model.config.text_config.vocab_size == VOCAB_SIZE + 21
    assert (model.lm_head.weight is model.get_input_embeddings().weight) == tie_word_embeddings
    with torch.no_grad():
        outputs = model(**inputs, labels=inputs["input_ids"])
    assert outputs.logits.shape[-1] == VOCAB_SIZE + 21 and torch.isfinite(outputs.loss)


def test_inputs_embeds_match_input_ids_for_text_only_prompts():
    model = tiny_model()
    inputs = tiny_inputs(model.config)
    input_ids = inputs["input_ids"].masked_fill(inputs["input_ids"] == IMAGE_TOKEN_ID, 5)
    inputs_embeds = model.get_input_embeddings()(input_ids)
    with torch.no_grad():
        from_ids = model(input_ids=input_ids, attention_mask=inputs["attention_mask"]).logits
        from_embeds = model(inputs_embeds=inputs_embeds, attention_mask=inputs["attention_mask"]).logits
    torch.testing.assert_close(from_embeds, from_ids)
    generated_from_ids = model.generate(input_ids=input_ids, attention_mask=inputs["attention_mask"], **GREEDY)
    generated_from_embeds = model.generate(
        inputs_embeds=inputs_embeds, attention_mask=inputs["attention_mask"], **GREEDY
    )
    assert torch.equal(generated_from_ids[:, input_ids.shape[1] :], generated_from_embeds)


def test_attention_implementation_switching(tmp_path):
    model = tiny_model()
    inputs = tiny_inputs(model.config)
    with torch.no_grad():
        sdpa_logits = model(**inputs).logits
        model.set_attn_implementation("eager")
        sub_configs = (model.config, model.config.vision_config, model.config.text_config)
        assert [config._attn_implementation for config in sub_configs] == ["eager"] * 3
        torch.testing.assert_close(model(**inputs).logits, sdpa_logits, atol=1e-5, rtol=1e-5)

    model.save_pretrained(tmp_path)
    eager = InternVLForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="eager")
    assert eager.model.vision_model.config._attn_implementation == "eager"
    assert eager.model.language_model.config._attn_implementation == "eager"
    mixed = InternVLForConditionalGeneration.from_pretrained(
        tmp_path, attn_implementation={"vision_config": "eager", "text_config": "sdpa", "": "sdpa"}
    )
    assert mixed.model.vision_model.config._attn_implementation == "eager"
    assert mixed.model.language_model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        torch.testing.assert_close(mixed.eval()(**inputs).logits, sdpa_logits, atol=1e-5, rtol=1e-5)


def test_init_weights_gives_finite_weights_with_the_configured_layer_scale(tmp_path):
    config = tiny_config()
    # Every weight comes from `_init_weights` when the state dict is empty.
    model = InternVLForConditionalGeneration.from_pretrained(None, config=config, state_dict={})
    for name, parameter in model.named_parameters():
        assert torch.isfinite(parameter).all(), name
    layer = model.model.vision_model.encoder.layers[0]
    factor = config.vision_config.initializer_factor
    assert torch.equal(layer.ls1, torch.full_like(layer.ls1, factor))
    assert torch.equal(layer.attn.q_norm.weight, torch.ones_like(layer.attn.q_norm.weight))
    assert model.model.mlp1[1].weight.std() > 0


def test_base_model_text_config_and_parameter_count():
    model = tiny_model()
    assert model.base_model is model.model
    assert model.config.get_text_config() is model.config.text_config
    assert model.config.get_text_config(decoder=True) is model.config.text_config
    assert model.num_parameters() == sum(parameter.numel() for parameter in model.parameters())
    # transformers counts `nn.Embedding` weights as the embeddings (an untied head is not one).
    embeddings = model.get_input_embeddings().weight.numel()
    assert model.num_parameters(exclude_embeddings=True) == model.num_parameters() - embeddings
    assert isinstance(model.get_input_embeddings(), nn.Embedding) and model.get_output_embeddings() is model.lm_head


@pytest.mark.parametrize(("llm", "shards_head"), [("qwen2", True), ("internlm2", False)])
def test_tensor_parallel_plan_shards_the_head_only_with_the_embeddings(llm, shards_head):
    model = tiny_model(llm)
    embedding_name = next(name for name, module in model.named_modules() if module is model.get_input_embeddings())
    assert ("lm_head" in model.tp_plan) == shards_head
    assert (embedding_name in model.tp_plan) == shards_head
