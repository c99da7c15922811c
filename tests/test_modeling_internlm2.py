"""InternLM2Config / InternLM2Model / InternLM2ForCausalLM against the original's outputs (tiny-internlm2 fixture)
and first principles."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import INTERNLM2_DIR
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, DynamicCache, StaticCache

from transformers_internvl import InternLM2Config, InternLM2ForCausalLM, InternLM2Model
from transformers_internvl.modeling.modeling_internlm2 import InternLM2RotaryEmbedding, check_wqkv_shape

MODEL_DIR = INTERNLM2_DIR
LOGITS_ATOL = 1e-5


def llm_config_dict() -> dict:
    return json.loads((MODEL_DIR / "config.json").read_text())["llm_config"]


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads((MODEL_DIR / "meta.json").read_text())


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return load_file(MODEL_DIR / "io.safetensors")


@pytest.fixture(scope="module")
def llm_state_dict() -> dict[str, torch.Tensor]:
    prefix = "language_model."
    weights = load_file(MODEL_DIR / "model.safetensors")
    return {key[len(prefix) :]: tensor for key, tensor in weights.items() if key.startswith(prefix)}


def build_model(state_dict, attn_implementation: str = "eager", **config_overrides) -> InternLM2ForCausalLM:
    config = InternLM2Config(**{**llm_config_dict(), **config_overrides})
    config._attn_implementation = attn_implementation
    model = InternLM2ForCausalLM(config)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def model(llm_state_dict) -> InternLM2ForCausalLM:
    return build_model(llm_state_dict)


def merged_embeddings(model, input_ids, vit_embeds, image_token_id: int) -> torch.Tensor:
    """Token embeddings with the `<IMG_CONTEXT>` rows replaced, in order, by the projected image features."""
    inputs_embeds = model.get_input_embeddings()(input_ids).clone()
    image_mask = input_ids == image_token_id
    inputs_embeds[image_mask] = vit_embeds.reshape(-1, inputs_embeds.shape[-1]).to(inputs_embeds.dtype)
    return inputs_embeds


@pytest.fixture(scope="module")
def prompt_embeds(model, reference, meta) -> torch.Tensor:
    return merged_embeddings(
        model, reference["input_ids"], reference["vit_embeds"], meta["token_ids"]["<IMG_CONTEXT>"]
    ).detach()


def greedy_kwargs(meta) -> dict:
    generation = meta["generation"]
    return {
        "max_new_tokens": generation["max_new_tokens"],
        "min_new_tokens": generation["max_new_tokens"],
        "do_sample": False,
        "num_beams": 1,
        "eos_token_id": generation["eos_token_id"],
        "pad_token_id": generation["pad_token_id"],
    }


# ----------------------------------------------------------------------------------------------- config


def test_config_accepts_original_llm_config_verbatim():
    config_dict = llm_config_dict()
    config = InternLM2Config(**config_dict)
    assert config.model_type == "internlm2"
    assert config.rope_scaling == {"type": "dynamic", "factor": 2.0}
    assert config.rope_theta == config_dict["rope_theta"]
    assert config.bias is False and config.tie_word_embeddings is False
    assert config.num_key_value_heads == 2 and config.head_dim == 16
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (2, 1, 2)

    serialised = config.to_dict()
    # The original remote code requires exactly {"type", "factor"} with a float factor, and reads `bias`.
    assert serialised["rope_scaling"] == {"type": "dynamic", "factor": 2.0}
    assert isinstance(serialised["rope_scaling"]["factor"], float)
    assert serialised["bias"] is False and serialised["rope_theta"] == config_dict["rope_theta"]
    assert "rope_parameters" not in serialised
    assert InternLM2Config(**serialised).to_dict() == serialised


def test_config_save_and_auto_load(tmp_path):
    config = InternLM2Config(**llm_config_dict())
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "internlm2"
    assert saved["rope_scaling"] == {"type": "dynamic", "factor": 2.0}
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, InternLM2Config)
    assert loaded.rope_scaling == config.rope_scaling and loaded.bias is False


@pytest.mark.parametrize(
    ("kwargs", "theta", "scaling"),
    [
        ({"rope_scaling": {"rope_type": "linear", "factor": 4}}, 10000.0, {"type": "linear", "factor": 4.0}),
        ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, 10000.0, {"type": "dynamic", "factor": 2.0}),
        ({"rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}, 5e5, None),
        (
            {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e6, "factor": 2.0}},
            1e6,
            {"type": "dynamic", "factor": 2.0},
        ),
    ],
)
def test_config_rope_forms(kwargs, theta, scaling):
    config = InternLM2Config(**kwargs)
    assert config.rope_theta == theta
    assert config.rope_scaling == scaling


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rope_scaling": {"type": "yarn", "factor": 2.0}},
        {"rope_scaling": {"type": "dynamic", "factor": 0.5}},
        {"rope_scaling": {"type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 8}},
        {"num_attention_heads": 32, "num_key_value_heads": 6},
        {"hidden_size": 100, "num_attention_heads": 32},
        {"head_dim": 64, "hidden_size": 4096, "num_attention_heads": 32},
    ],
)
def test_config_rejects_invalid_values(kwargs):
    with pytest.raises(ValueError):
        InternLM2Config(**kwargs)


def test_config_stored_flash_attention_without_flash_attn_falls_back():
    """Original configs often say "flash_attention_2"; without flash-attn the model must still build."""
    from transformers.utils import is_flash_attn_2_available

    if is_flash_attn_2_available():
        pytest.skip("flash-attn is installed, the stored choice is honoured")
    config = InternLM2Config(**{**llm_config_dict(), "attn_implementation": "flash_attention_2"})
    model = InternLM2ForCausalLM(config)
    assert model.config._attn_implementation in ("sdpa", "eager")


def test_rope_scaling_assigned_after_construction_is_honoured():
    config = InternLM2Config(**llm_config_dict())
    config.rope_scaling = {"rope_type": "linear", "factor": 2}
    rotary = InternLM2RotaryEmbedding(config)
    assert (rotary.rope_type, rotary.scaling_factor) == ("linear", 2.0)


# ------------------------------------------------------------------------------------- reference parity


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_logits_match_reference(llm_state_dict, prompt_embeds, reference, attn_implementation):
    model = build_model(llm_state_dict, attn_implementation)
    with torch.no_grad():
        logits = model(inputs_embeds=prompt_embeds, attention_mask=reference["attention_mask"]).logits
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, reference["logits"], atol=LOGITS_ATOL, rtol=0)


@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
def test_greedy_generation_matches_reference(model, prompt_embeds, reference, meta, cache_implementation):
    output = model.generate(
        inputs_embeds=prompt_embeds,
        attention_mask=reference["attention_mask"],
        cache_implementation=cache_implementation,
        output_logits=True,
        return_dict_in_generate=True,
        **greedy_kwargs(meta),
    )
    torch.testing.assert_close(output.sequences, reference["generated_ids"], atol=0, rtol=0)
    step_logits = torch.stack(output.logits, dim=1)
    torch.testing.assert_close(step_logits, reference["generated_step_logits"], atol=LOGITS_ATOL, rtol=0)


def decode_incrementally(model, prompt_embeds, cache, num_tokens: int) -> tuple[list[int], list[torch.Tensor]]:
    tokens, step_logits = [], []
    with torch.no_grad():
        logits = model(inputs_embeds=prompt_embeds, cache=cache, use_cache=True).logits[0, -1]
        for _ in range(num_tokens):
            step_logits.append(logits)
            tokens.append(int(logits.argmax()))
            logits = model(input_ids=torch.tensor([[tokens[-1]]]), cache=cache, use_cache=True).logits[0, -1]
    return tokens, step_logits


def decode_by_recomputation(model, prompt_embeds, num_tokens: int) -> tuple[list[int], list[torch.Tensor]]:
    tokens, step_logits, sequence = [], [], prompt_embeds
    with torch.no_grad():
        for _ in range(num_tokens):
            logits = model(inputs_embeds=sequence).logits[0, -1]
            step_logits.append(logits)
            tokens.append(int(logits.argmax()))
            new_embedding = model.get_input_embeddings()(torch.tensor([[tokens[-1]]]))
            sequence = torch.cat([sequence, new_embedding], dim=1)
    return tokens, step_logits


@pytest.fixture(scope="module")
def unscaled_model(llm_state_dict) -> InternLM2ForCausalLM:
    return build_model(llm_state_dict, rope_scaling=None)


@pytest.fixture(scope="module")
def recomputed(model, unscaled_model, prompt_embeds, reference) -> dict:
    """Greedy decoding by full recomputation (no cache), for the checkpoint's config and without RoPE scaling."""
    num_tokens = reference["generated_ids"].shape[1]
    return {
        "scaled": decode_by_recomputation(model, prompt_embeds, num_tokens),
        "unscaled": decode_by_recomputation(unscaled_model, prompt_embeds, num_tokens),
    }


@pytest.mark.parametrize("cache_class", ["dynamic", "static"])
def test_incremental_decoding_matches_full_recomputation(
    model, unscaled_model, prompt_embeds, reference, recomputed, cache_class
):
    num_tokens = reference["generated_ids"].shape[1]

    def make_cache(model):
        if cache_class == "dynamic":
            return DynamicCache(config=model.config)
        return StaticCache(config=model.config, max_cache_len=prompt_embeds.shape[1] + num_tokens + 5)

    # Dynamic NTK (the checkpoint's config): cached keys keep the base of the forward that stored them, so only
    # the tokens agree with a recomputation (as in the original); the incremental logits are the reference's.
    tokens, step_logits = decode_incrementally(model, prompt_embeds, make_cache(model), num_tokens)
    assert tokens == recomputed["scaled"][0] == reference["generated_ids"][0].tolist()
    torch.testing.assert_close(
        torch.stack(step_logits), reference["generated_step_logits"][0], atol=LOGITS_ATOL, rtol=0
    )

    # Without scaling RoPE is purely relative: cached decoding must equal recomputation numerically.
    tokens, step_logits = decode_incrementally(unscaled_model, prompt_embeds, make_cache(unscaled_model), num_tokens)
    recomputed_tokens, recomputed_logits = recomputed["unscaled"]
    assert tokens == recomputed_tokens
    torch.testing.assert_close(torch.stack(step_logits), torch.stack(recomputed_logits), atol=LOGITS_ATOL, rtol=0)


def left_pad(sequences: list[torch.Tensor], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(sequence) for sequence in sequences)
    input_ids = torch.full((len(sequences), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, length - len(sequence) :] = sequence
        attention_mask[row, length - len(sequence) :] = 1
    return input_ids, attention_mask


def generate_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_left_padded_batch_rows_match_single_runs(llm_state_dict, reference, meta, attn_implementation):
    """Short prompts (<= max_position_embeddings, so dynamic NTK is inactive): padding changes nothing."""
    model = build_model(llm_state_dict, attn_implementation)
    pad_token_id = meta["generation"]["pad_token_id"]
    prompt_ids = reference["input_ids"][0]
    sequences = [prompt_ids[:100], prompt_ids[700:760]]
    input_ids, attention_mask = left_pad(sequences, pad_token_id)
    with torch.no_grad():
        batch_logits = model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=generate_positions(attention_mask)
        ).logits
        for row, sequence in enumerate(sequences):
            single_logits = model(input_ids=sequence[None]).logits[0]
            torch.testing.assert_close(batch_logits[row, -len(sequence) :], single_logits, atol=LOGITS_ATOL, rtol=0)

    batch_generation = model.generate(input_ids=input_ids, attention_mask=attention_mask, **greedy_kwargs(meta))
    for row, sequence in enumerate(sequences):
        single_generation = model.generate(input_ids=sequence[None], **greedy_kwargs(meta))
        assert batch_generation[row, input_ids.shape[1] :].tolist() == single_generation[0, len(sequence) :].tolist()


def test_left_padded_batch_with_reference_prompt(model, prompt_embeds, reference, meta):
    """The unpadded reference prompt batched with a shorter, left-padded one keeps its reference numbers.

    (With dynamic NTK the padded row's base follows the padded key length, as in the original, so only the
    unpadded row is compared with a single-sample run.)"""
    pad_token_id = meta["generation"]["pad_token_id"]
    short_ids = reference["input_ids"][0, 790:]
    input_ids, attention_mask = left_pad([reference["input_ids"][0], short_ids], pad_token_id)
    inputs_embeds = model.get_input_embeddings()(input_ids).detach()
    inputs_embeds[0] = prompt_embeds[0]
    with torch.no_grad():
        logits = model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=generate_positions(attention_mask)
        ).logits
    torch.testing.assert_close(logits[0], reference["logits"][0], atol=LOGITS_ATOL, rtol=0)

    generated = model.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **greedy_kwargs(meta))
    assert generated[0].tolist() == reference["generated_ids"][0].tolist()


# ------------------------------------------------------------------------------------------- mechanics


def test_rotary_dynamic_ntk_from_first_principles():
    config = InternLM2Config(
        hidden_size=64, num_attention_heads=4, max_position_embeddings=128, rope_theta=1e6,
        rope_scaling={"type": "dynamic", "factor": 2.0},
    )  # fmt: skip
    rotary = InternLM2RotaryEmbedding(config)
    head_dim, cpu = 16, torch.device("cpu")
    exponents = torch.arange(0, head_dim, 2).float() / head_dim
    for kv_length in (1, 128, 129, 803, 4096):
        base = 1e6
        if kv_length > 128:
            base = 1e6 * (2.0 * kv_length / 128 - 1.0) ** (head_dim / (head_dim - 2))
        expected = 1.0 / (base**exponents)
        assert torch.equal(rotary.compute_inv_freq(kv_length, cpu), expected)
        # Static caches report their length as a tensor; that path must give the same bits.
        assert torch.equal(rotary.compute_inv_freq(torch.tensor(kv_length), cpu), expected)

    linear = InternLM2RotaryEmbedding(
        InternLM2Config(**{**config.to_dict(), "rope_scaling": {"type": "linear", "factor": 4.0}})
    )
    position_ids = torch.arange(10)[None]
    cos, sin = linear(torch.zeros(1, dtype=torch.float32), position_ids, kv_length=10)
    angles = (position_ids[..., None].float() / 4.0) * (1.0 / (1e6**exponents))
    torch.testing.assert_close(cos, torch.cat([angles, angles], -1).cos(), atol=0, rtol=0)
    torch.testing.assert_close(sin, torch.cat([angles, angles], -1).sin(), atol=0, rtol=0)


def test_wqkv_grouped_head_layout():
    """Query head h attends with key/value head h // G, rows grouped [KV][G + 2][head_dim] (checked without RoPE)."""
    torch.manual_seed(0)
    config = InternLM2Config(
        vocab_size=50, hidden_size=48, intermediate_size=64, num_hidden_layers=1, num_attention_heads=6,
        num_key_value_heads=2, bias=False, pad_token_id=0,
    )  # fmt: skip
    config._attn_implementation = "eager"
    model = InternLM2Model(config).eval()
    attention = model.layers[0].attention
    hidden_states = torch.randn(1, 3, 48)
    # All positions 0: RoPE is the identity, so scores are plain q.k products.
    position_ids = torch.zeros(1, 3, dtype=torch.long)
    with torch.no_grad():
        output = model(inputs_embeds=hidden_states, position_ids=position_ids, output_attentions=True)
    normed = model.layers[0].attention_norm(hidden_states)[0]
    weight = attention.wqkv.weight.view(2, 3 + 2, 8, 48)  # [KV][G + 2][head_dim][hidden]
    for head in range(6):
        group, slot = divmod(head, 3)
        query = normed @ weight[group, slot].T
        key = normed @ weight[group, 3].T
        scores = (query @ key.T) * 8**-0.5 + torch.triu(torch.full((3, 3), float("-inf")), 1)
        torch.testing.assert_close(output.attentions[0][0, head], scores.softmax(-1), atol=1e-6, rtol=0)


def test_wqkv_shape_errors(tmp_path, llm_state_dict):
    with pytest.raises(ValueError, match=r"\(192, 64\).*\(128, 64\)"):
        check_wqkv_shape((192, 64), hidden_size=64, num_attention_heads=4, num_key_value_heads=2)
    with pytest.raises(ValueError, match="not a multiple of num_key_value_heads"):
        check_wqkv_shape((160, 64), hidden_size=64, num_attention_heads=4, num_key_value_heads=3)

    model = build_model(llm_state_dict)
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights["model.layers.1.attention.wqkv.weight"] = torch.zeros(192, 64)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        ValueError, match=r"model\.layers\.1\.attention\.wqkv\.weight has shape \(192, 64\).*\(128, 64\)"
    ):
        InternLM2ForCausalLM.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"\(192, 64\)"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


def test_auto_classes_and_save_load_round_trip(tmp_path, model, reference):
    assert type(AutoModelForCausalLM.from_config(model.config)) is InternLM2ForCausalLM
    assert type(AutoModel.from_config(model.config)) is InternLM2Model

    model.save_pretrained(tmp_path)
    assert set(load_file(tmp_path / "model.safetensors")) == set(model.state_dict())
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert isinstance(reloaded, InternLM2ForCausalLM)
    with torch.no_grad():
        logits = reloaded(input_ids=reference["input_ids"][:, :50]).logits
        expected = model(input_ids=reference["input_ids"][:, :50]).logits
    torch.testing.assert_close(logits, expected, atol=0, rtol=0)


@pytest.mark.parametrize("tie_word_embeddings", [False, True])
def test_word_embedding_tying_follows_config(tie_word_embeddings):
    config = InternLM2Config(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=tie_word_embeddings,
    )  # fmt: skip
    model = InternLM2ForCausalLM(config)
    assert model.get_output_embeddings() is model.output
    assert model.get_input_embeddings() is model.model.tok_embeddings
    shared = model.output.weight.data_ptr() == model.model.tok_embeddings.weight.data_ptr()
    assert shared is tie_word_embeddings


def test_forward_outputs_loss_and_logits_to_keep(model, reference):
    input_ids = reference["input_ids"][:, :40]
    with torch.no_grad():
        full = model(input_ids=input_ids, labels=input_ids, output_hidden_states=True)
        last = model(input_ids=input_ids, logits_to_keep=1)
        base = model.model(inputs_embeds=model.get_input_embeddings()(input_ids))
    expected_loss = torch.nn.functional.cross_entropy(full.logits[0, :-1], input_ids[0, 1:])
    torch.testing.assert_close(full.loss, expected_loss)
    assert len(full.hidden_states) == model.config.num_hidden_layers + 1
    # A one-row GEMM rounds differently from a 40-row one.
    torch.testing.assert_close(last.logits[:, -1], full.logits[:, -1], atol=LOGITS_ATOL, rtol=0)
    assert base.last_hidden_state.shape == (1, 40, model.config.hidden_size)
    torch.testing.assert_close(model.output(base.last_hidden_state), full.logits, atol=0, rtol=0)


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    config = InternLM2Config(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, bias=True,
    )  # fmt: skip
    model = InternLM2ForCausalLM(config).train()
    input_ids = torch.randint(0, 50, (2, 12))
    model(input_ids=input_ids, labels=input_ids).loss.backward()
    gradients = {name: parameter.grad.clone() for name, parameter in model.named_parameters()}
    model.zero_grad()
    getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    model(input_ids=input_ids, labels=input_ids).loss.backward()
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, gradients[name], msg=name)


@pytest.mark.slow  # torch.compile
def test_static_cache_decode_step_compiles_without_graph_breaks(model, reference):
    input_ids = reference["input_ids"][:, :140]  # past max_position_embeddings: dynamic NTK active
    outputs = []
    for compiled in (False, True):
        cache = StaticCache(config=model.config, max_cache_len=150)
        forward = torch.compile(model, backend="eager", fullgraph=True) if compiled else model
        with torch.no_grad():
            model(input_ids=input_ids, cache=cache, use_cache=True)
            step = forward(input_ids=input_ids[:, -1:], cache=cache, use_cache=True, position_ids=torch.tensor([[140]]))
        outputs.append(step.logits)
    torch.testing.assert_close(outputs[1], outputs[0], atol=0, rtol=0)
