"""InternLM2 <-> Llama layout export: transformers' LlamaForCausalLM reproduces the original's numbers, round trips
are bit-exact, malformed inputs raise."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import INTERNLM2_DIR
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

from transformers_internvl import InternLM2Config, InternLM2ForCausalLM, InternLM2Model
from transformers_internvl.conversion.internlm2_llama import (
    internlm2_config_to_llama,
    internlm2_state_dict_to_llama,
    llama_config_to_internlm2,
    llama_state_dict_to_internlm2,
)

MODEL_DIR = INTERNLM2_DIR
PREFIX = "language_model."
LOGITS_ATOL = 1e-5


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads((MODEL_DIR / "meta.json").read_text())


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return load_file(MODEL_DIR / "io.safetensors")


@pytest.fixture(scope="module")
def checkpoint() -> dict[str, torch.Tensor]:
    """The whole InternVL checkpoint: vision tower, projector and `language_model.*`."""
    return load_file(MODEL_DIR / "model.safetensors")


@pytest.fixture(scope="module")
def config() -> InternLM2Config:
    return InternLM2Config(**json.loads((MODEL_DIR / "config.json").read_text())["llm_config"])


def assert_same_tensors(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(actual) == set(expected)
    for key, tensor in expected.items():
        assert actual[key].dtype == tensor.dtype and torch.equal(actual[key], tensor), key


def test_config_mapping(config):
    llama_config = internlm2_config_to_llama(config)
    assert isinstance(llama_config, LlamaConfig)
    assert llama_config.rope_parameters == {"rope_type": "dynamic", "rope_theta": 1000000, "factor": 2.0}
    assert (llama_config.num_attention_heads, llama_config.num_key_value_heads, llama_config.head_dim) == (4, 2, 16)
    assert llama_config.attention_bias is False and llama_config.mlp_bias is False
    assert llama_config.tie_word_embeddings is False
    assert llama_config.rms_norm_eps == config.rms_norm_eps
    back = llama_config_to_internlm2(llama_config)
    for name in ("rope_scaling", "rope_theta", "bias", "num_key_value_heads", "max_position_embeddings", "vocab_size"):
        assert getattr(back, name) == getattr(config, name), name


def test_llama_reproduces_reference_logits_and_generation(checkpoint, config, reference, meta):
    llama_state_dict = internlm2_state_dict_to_llama(checkpoint, config, prefix=PREFIX)
    # Keys outside the prefix (vision tower, projector) pass through untouched.
    for key, tensor in checkpoint.items():
        if not key.startswith(PREFIX):
            assert llama_state_dict[key] is tensor

    llama_config = internlm2_config_to_llama(config)
    llama_config._attn_implementation = "eager"
    model = LlamaForCausalLM(llama_config).eval()
    model.load_state_dict(
        {key[len(PREFIX) :]: tensor for key, tensor in llama_state_dict.items() if key.startswith(PREFIX)}, strict=True
    )

    input_ids = reference["input_ids"]
    inputs_embeds = model.get_input_embeddings()(input_ids).detach().clone()
    image_mask = input_ids == meta["token_ids"]["<IMG_CONTEXT>"]
    inputs_embeds[image_mask] = reference["vit_embeds"].reshape(-1, config.hidden_size)
    with torch.no_grad():
        logits = model(inputs_embeds=inputs_embeds, attention_mask=reference["attention_mask"]).logits
    torch.testing.assert_close(logits, reference["logits"], atol=LOGITS_ATOL, rtol=0)

    generation = meta["generation"]
    output = model.generate(
        inputs_embeds=inputs_embeds,
        attention_mask=reference["attention_mask"],
        max_new_tokens=generation["max_new_tokens"],
        min_new_tokens=generation["max_new_tokens"],
        do_sample=False,
        eos_token_id=generation["eos_token_id"],
        pad_token_id=generation["pad_token_id"],
        output_logits=True,
        return_dict_in_generate=True,
    )
    assert output.sequences.tolist() == reference["generated_ids"].tolist()
    torch.testing.assert_close(
        torch.stack(output.logits, dim=1), reference["generated_step_logits"], atol=LOGITS_ATOL, rtol=0
    )


def test_round_trip_is_bit_exact(checkpoint, config):
    llama_state_dict = internlm2_state_dict_to_llama(checkpoint, config, prefix=PREFIX)
    assert_same_tensors(llama_state_dict_to_internlm2(llama_state_dict, config, prefix=PREFIX), checkpoint)
    # The Llama config describes the same heads, so it works for the way back too.
    llama_config = internlm2_config_to_llama(config)
    assert_same_tensors(llama_state_dict_to_internlm2(llama_state_dict, llama_config, prefix=PREFIX), checkpoint)


def random_internlm2(num_heads: int, num_kv_heads: int, bias: bool, rope_scaling: dict | None, seed: int = 0):
    torch.manual_seed(seed)
    config = InternLM2Config(
        vocab_size=64, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads, bias=bias, rope_theta=10000.0, rope_scaling=rope_scaling,
        max_position_embeddings=16, pad_token_id=0,
    )  # fmt: skip
    config._attn_implementation = "eager"
    model = InternLM2ForCausalLM(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)  # biases and norm weights far from their init values
    return model


@pytest.mark.parametrize(
    ("num_heads", "num_kv_heads", "bias", "rope_scaling"),
    [
        (6, 2, True, None),  # grouped-query, with biases
        (6, 6, False, {"type": "linear", "factor": 2.0}),  # multi-head
        (6, 1, True, {"type": "dynamic", "factor": 3.0}),  # multi-query, dynamic NTK active (24 > 16 positions)
    ],
)
def test_random_models_agree_with_llama(num_heads, num_kv_heads, bias, rope_scaling):
    model = random_internlm2(num_heads, num_kv_heads, bias, rope_scaling)
    state_dict = model.state_dict()
    llama_state_dict = internlm2_state_dict_to_llama(state_dict, model.config)
    llama_config = internlm2_config_to_llama(model.config)
    llama_config._attn_implementation = "eager"
    llama = LlamaForCausalLM(llama_config).eval()
    llama.load_state_dict(llama_state_dict, strict=True)

    input_ids = torch.randint(1, 64, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(
            llama(input_ids=input_ids).logits, model(input_ids=input_ids).logits, atol=LOGITS_ATOL, rtol=0
        )
    assert_same_tensors(llama_state_dict_to_internlm2(llama_state_dict, model.config), state_dict)


def test_base_model_state_dicts_without_model_prefix():
    model = random_internlm2(6, 2, True, None)
    base_state_dict = model.model.state_dict()  # tok_embeddings.weight, layers.0...., no `output`
    llama_state_dict = internlm2_state_dict_to_llama(base_state_dict, model.config)
    llama_config = internlm2_config_to_llama(model.config)
    llama_config._attn_implementation = "eager"
    llama_model = LlamaModel(llama_config).eval()
    llama_model.load_state_dict(llama_state_dict, strict=True)
    input_ids = torch.randint(1, 64, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(
            llama_model(input_ids=input_ids).last_hidden_state,
            model.model(input_ids=input_ids).last_hidden_state,
            atol=LOGITS_ATOL,
            rtol=0,
        )
    assert_same_tensors(llama_state_dict_to_internlm2(llama_state_dict, model.config), base_state_dict)
    assert isinstance(model.model, InternLM2Model)


def test_malformed_inputs_raise(checkpoint, config):
    bad = dict(checkpoint)
    bad[PREFIX + "model.layers.0.attention.wqkv.weight"] = torch.zeros(192, 64)
    with pytest.raises(ValueError, match=r"layers\.0\.attention\.wqkv\.weight has shape \(192, 64\).*\(128, 64\)"):
        internlm2_state_dict_to_llama(bad, config, prefix=PREFIX)

    missing = {key: tensor for key, tensor in checkpoint.items() if not key.endswith("layers.1.ffn_norm.weight")}
    with pytest.raises(ValueError, match=r"missing keys \['language_model\.model\.layers\.1\.ffn_norm\.weight'\]"):
        internlm2_state_dict_to_llama(missing, config, prefix=PREFIX)

    unexpected = {**checkpoint, PREFIX + "model.layers.0.attention.rotary_emb.inv_freq": torch.zeros(8)}
    with pytest.raises(ValueError, match="unexpected keys"):
        internlm2_state_dict_to_llama(unexpected, config, prefix=PREFIX)

    with pytest.raises(ValueError, match="prefix 'llm.'"):
        internlm2_state_dict_to_llama(checkpoint, config, prefix="llm.")

    llama_state_dict = internlm2_state_dict_to_llama(checkpoint, config, prefix=PREFIX)
    llama_state_dict[PREFIX + "model.layers.1.self_attn.k_proj.weight"] = torch.zeros(48, 64)
    with pytest.raises(ValueError, match=r"k_proj\.weight has shape \(48, 64\), expected \(32, 64\)"):
        llama_state_dict_to_internlm2(llama_state_dict, config, prefix=PREFIX)

    with pytest.raises(ValueError, match="num_key_value_heads"):
        llama_config_to_internlm2(LlamaConfig(hidden_size=96, num_attention_heads=6, num_key_value_heads=4))
    with pytest.raises(ValueError, match="head_dim"):
        llama_config_to_internlm2(LlamaConfig(hidden_size=64, num_attention_heads=4, head_dim=32))
    with pytest.raises(ValueError, match="rope types"):
        llama_config_to_internlm2(
            LlamaConfig(
                rope_parameters={"rope_type": "yarn", "factor": 2.0, "rope_theta": 1e4}, max_position_embeddings=64
            )
        )
