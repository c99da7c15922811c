"""Every LLM family the original InternVL layout holds (issue 8, part 1), on tiny configs with the real field sets
(`tests/fixtures/llm_families/`, see its README).

Expected values come from first principles: an original-layout folder is assembled from the LLM's own
transformers class (its `save_pretrained` key set under `language_model.`), the vision tower's and the projector's,
so loading it must reproduce that causal LM's logits bit for bit, and saving must give back exactly that key set.
"""

import json
import math
import re
from pathlib import Path

import pytest
import torch
from helpers import FIXTURES
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, Phi3Config, Phi3ForCausalLM

import transformers_internvl  # noqa: F401  (registers the classes)
from transformers_internvl import InternVLConfig, InternVLForConditionalGeneration
from transformers_internvl.modeling.configuration_intern_vit import InternVLVisionConfig
from transformers_internvl.modeling.conversation import CONV_TEMPLATES
from transformers_internvl.modeling.modeling_intern_vit import InternVLVisionModel

FAMILIES_DIR = FIXTURES / "llm_families"
IMAGE_TOKEN_ID = 5

# family -> (decoder layer class, head name in the original layout, tied embeddings)
FAMILIES = {
    "phi3": ("Phi3DecoderLayer", "lm_head", False),
    "llama_yi": ("LlamaDecoderLayer", "lm_head", False),
    "llama3": ("LlamaDecoderLayer", "lm_head", False),
    "qwen3": ("Qwen3DecoderLayer", "lm_head", False),
    "qwen3_tied": ("Qwen3DecoderLayer", "lm_head", True),
    "qwen3_moe": ("Qwen3MoeDecoderLayer", "lm_head", False),
    "gpt_oss": ("GptOssDecoderLayer", "lm_head", False),
    "internlm3_in_internlm2": ("InternLM2DecoderLayer", "output", False),
}


def read_fixture(family: str) -> dict:
    raw = json.loads((FAMILIES_DIR / f"{family}.json").read_text())
    # The modeling checks here do not depend on the chat template; a template this checkout does not know yet
    # (`internvl3_5_gpt_oss` comes with the processing side of issue 8) is replaced by the InternVL 2.5 one.
    if raw["template"] not in CONV_TEMPLATES:
        raw["template"] = "internvl2_5"
    return raw


def saved_state_dict(model, directory: Path) -> dict[str, torch.Tensor]:
    model.save_pretrained(directory)
    return load_file(directory / "model.safetensors")


def original_folder(family: str, tmp_path: Path, raw: dict | None = None) -> tuple[Path, torch.nn.Module]:
    """An original-layout folder built from the LLM's own class (config: the family's fixture, or `raw`); returns it
    and that causal LM."""
    raw = raw if raw is not None else read_fixture(family)
    config = InternVLConfig(**{k: v for k, v in raw.items() if k != "model_type"})
    torch.manual_seed(0)
    causal_lm = AutoModelForCausalLM.from_config(config.text_config, dtype=torch.float32).eval()
    vision = InternVLVisionModel._from_config(InternVLVisionConfig(**raw["vision_config"]), dtype=torch.float32)
    state_dict = {f"language_model.{k}": v for k, v in saved_state_dict(causal_lm, tmp_path / "llm").items()}
    state_dict.update({f"vision_model.{k}": v for k, v in saved_state_dict(vision, tmp_path / "vision").items()})
    projector_in = raw["vision_config"]["hidden_size"] * 4
    hidden = raw["llm_config"]["hidden_size"]
    generator = torch.Generator().manual_seed(1)
    state_dict.update(
        {
            "mlp1.0.weight": torch.rand(projector_in, generator=generator) + 0.5,
            "mlp1.0.bias": torch.randn(projector_in, generator=generator) * 0.1,
            "mlp1.1.weight": torch.randn(hidden, projector_in, generator=generator) * 0.05,
            "mlp1.1.bias": torch.randn(hidden, generator=generator) * 0.1,
            "mlp1.3.weight": torch.randn(hidden, hidden, generator=generator) * 0.05,
            "mlp1.3.bias": torch.randn(hidden, generator=generator) * 0.1,
        }
    )
    folder = tmp_path / "original"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(raw, indent=2))
    save_file({k: v.contiguous() for k, v in state_dict.items()}, folder / "model.safetensors")
    return folder, causal_lm


def load(folder: Path) -> InternVLForConditionalGeneration:
    model, info = InternVLForConditionalGeneration.from_pretrained(
        folder, dtype=torch.float32, image_token_id=IMAGE_TOKEN_ID, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def text_ids(vocab_size: int, length: int = 7, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(IMAGE_TOKEN_ID + 1, min(vocab_size, 100), (2, length), generator=generator)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_loads_saves_and_reloads_bit_exactly(family, tmp_path):
    decoder_layer, head_name, tied = FAMILIES[family]
    folder, causal_lm = original_folder(family, tmp_path)
    original_keys = set(load_file(folder / "model.safetensors"))
    model = load(folder)

    # Text only, the InternVL model is its LLM: the same logits as the LLM's own class with the same weights.
    input_ids = text_ids(model.config.text_config.vocab_size)
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits
        assert torch.equal(logits, causal_lm(input_ids=input_ids).logits)

    # The head key in the original layout is the LLM class's own (`lm_head` / `output`), absent when tied.
    head_key = f"language_model.{head_name}.weight"
    assert (head_key in original_keys) == (not tied)
    assert any(key.startswith("language_model.model.layers.0.") for key in original_keys)

    # save -> exactly the original key set, same tensors; reload -> bit-identical logits (with an image too).
    saved = saved_state_dict(model, tmp_path / "saved")
    assert set(saved) == original_keys
    reference = load_file(folder / "model.safetensors")
    assert all(torch.equal(saved[key], reference[key]) for key in original_keys)
    saved_config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved_config["architectures"] == ["InternVLChatModel"]
    assert saved_config["llm_config"]["architectures"] == read_fixture(family)["llm_config"]["architectures"]
    reloaded = load(tmp_path / "saved")
    image_ids = input_ids.clone()
    image_ids[:, 2] = IMAGE_TOKEN_ID  # one 28 px tile -> one LLM token per sample
    pixel_values = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=input_ids).logits, logits)
        assert torch.equal(
            reloaded(input_ids=image_ids, pixel_values=pixel_values).logits,
            model(input_ids=image_ids, pixel_values=pixel_values).logits,
        )

    # Device-map and tying facts come from the LLM class.
    assert decoder_layer in model._no_split_modules and "InternVLVisionLayer" in model._no_split_modules
    assert model.config.tie_word_embeddings == tied
    assert (model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()) == tied


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_generates_and_stops_at_eos(family, tmp_path):
    folder, _ = original_folder(family, tmp_path)
    model = load(folder)
    input_ids = text_ids(model.config.text_config.vocab_size)[:1]
    greedy = {"do_sample": False, "pad_token_id": 0}
    generated = model.generate(input_ids=input_ids, max_new_tokens=4, eos_token_id=None, **greedy)
    assert generated.shape == (1, input_ids.shape[1] + 4)
    # With the first generated token as the stop token, generation ends right after it.
    first = int(generated[0, input_ids.shape[1]])
    stopped = model.generate(input_ids=input_ids, max_new_tokens=4, eos_token_id=first, **greedy)
    assert stopped.shape == (1, input_ids.shape[1] + 1) and int(stopped[0, -1]) == first


@pytest.mark.parametrize(("family", "causal_lm_class"), [("qwen3", "Qwen3ForCausalLM"), ("phi3", "Phi3ForCausalLM")])
def test_head_is_sharded_as_the_llm_class_shards_its_own(family, causal_lm_class):
    config = InternVLConfig(**{k: v for k, v in read_fixture(family).items() if k != "model_type"})
    with torch.device("meta"):
        model = InternVLForConditionalGeneration(config)
    import transformers

    assert model.tp_plan["lm_head"] == getattr(transformers, causal_lm_class)._tp_plan["lm_head"]


@pytest.mark.parametrize(
    "rope_scaling",
    [
        {"factor": 6.0, "type": "dynamic"},  # the InternLM2 spelling
        {"factor": 6.0, "rope_type": "dynamic"},  # InternLM3's own config.json spelling
        {"factor": 6.0, "rope_type": "dynamic", "type": "dynamic"},  # both, as InternVL3 configs write them
    ],
)
def test_internlm3_weights_in_the_internlm2_layout_keep_internlm3_numbers(rope_scaling):
    """InternVL3-9B: InternLM2 code (fused `wqkv`, `output` head) with InternLM3's shapes and RoPE."""
    raw = read_fixture("internlm3_in_internlm2")
    raw["llm_config"]["rope_scaling"] = rope_scaling
    config = InternVLConfig(**{k: v for k, v in raw.items() if k != "model_type"})
    text_config = config.text_config
    assert text_config.model_type == "internlm2" and text_config.bias is False
    assert text_config.head_dim == raw["llm_config"]["head_dim"]
    assert text_config.rope_theta == 50000000 and text_config.rope_scaling == {"type": "dynamic", "factor": 6.0}
    with torch.device("meta"):
        model = InternVLForConditionalGeneration(config)
    attention = model.model.language_model.layers[0].attention
    heads, kv_heads, head_dim = 8, 1, 8
    assert tuple(attention.wqkv.weight.shape) == ((heads + 2 * kv_heads) * head_dim, 64)
    assert attention.wqkv.bias is None and attention.wo.bias is None
    saved = InternVLConfig.from_dict(config.to_dict()).to_original_dict()["llm_config"]
    assert saved["rope_scaling"] == {"type": "dynamic", "factor": 6.0} and saved["rope_theta"] == 50000000


def test_phi3_su_rope_is_longrope_with_the_same_numbers(tmp_path):
    raw = read_fixture("phi3")
    config = InternVLConfig(**{k: v for k, v in raw.items() if k != "model_type"})
    llm = raw["llm_config"]
    rope = config.text_config.rope_parameters
    assert rope["rope_type"] == "longrope"
    assert rope["short_factor"] == llm["rope_scaling"]["short_factor"]
    assert rope["long_factor"] == llm["rope_scaling"]["long_factor"]
    assert rope["original_max_position_embeddings"] == llm["original_max_position_embeddings"]

    # transformers' Phi-3 built directly with a "longrope" config with the same factors gives the same logits,
    # below and beyond original_max_position_embeddings (short and long factors).
    direct_config = Phi3Config(
        **{
            key: llm[key]
            for key in (
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
                "num_key_value_heads",
                "max_position_embeddings",
                "original_max_position_embeddings",
                "rms_norm_eps",
                "vocab_size",
                "sliding_window",
                "bos_token_id",
                "eos_token_id",
                "pad_token_id",
            )
        },
        rope_parameters={
            "rope_type": "longrope",
            "rope_theta": llm["rope_theta"],
            "short_factor": llm["rope_scaling"]["short_factor"],
            "long_factor": llm["rope_scaling"]["long_factor"],
        },
    )
    torch.manual_seed(0)
    direct = Phi3ForCausalLM(direct_config).eval()
    model = InternVLForConditionalGeneration._from_config(config, dtype=torch.float32).eval()
    model.model.language_model.load_state_dict(direct.model.state_dict())
    model.lm_head.load_state_dict(direct.lm_head.state_dict())
    input_ids = text_ids(llm["vocab_size"])
    for offset in (0, 5000):  # 5000 + 7 > 4096: the long factors
        position_ids = torch.arange(offset, offset + input_ids.shape[1]).expand_as(input_ids)
        with torch.no_grad():
            ours = model(input_ids=input_ids, position_ids=position_ids).logits
            theirs = direct(input_ids=input_ids, position_ids=position_ids).logits
        assert torch.equal(ours, theirs)

    # First principles (the original Phi3SuScaledRotaryEmbedding): inv_freq = 1 / (factor_i * base^(2i/d)),
    # cos/sin scaled by sqrt(1 + ln(max_pos / original_max) / ln(original_max)).
    rotary = model.model.language_model.rotary_emb
    dim = llm["hidden_size"] // llm["num_attention_heads"]
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    expected_short = 1.0 / (torch.tensor(llm["rope_scaling"]["short_factor"]) * llm["rope_theta"] ** exponents)
    torch.testing.assert_close(rotary.original_inv_freq, expected_short)
    scale = llm["max_position_embeddings"] / llm["original_max_position_embeddings"]
    assert math.isclose(
        rotary.attention_scaling, math.sqrt(1 + math.log(scale) / math.log(llm["original_max_position_embeddings"]))
    )

    # Saved back in the original form, which the original remote-code Phi-3 config accepts (exactly three keys).
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["llm_config"]
    assert saved["rope_scaling"] == llm["rope_scaling"]
    assert InternVLConfig.from_pretrained(tmp_path).text_config.rope_parameters == rope


def test_internvl3_top_level_and_vision_fields_round_trip(tmp_path):
    raw = read_fixture("qwen3_moe")
    config = InternVLConfig(**{k: v for k, v in raw.items() if k != "model_type"})
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["system_message"] is None and saved["image_fold"] is None
    for key in ("use_moe", "num_experts", "moe_intermediate_size", "noisy_gate_policy", "capacity_factor"):
        assert saved["vision_config"][key] == raw["vision_config"][key], key
    for key in ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "norm_topk_prob", "mlp_only_layers"):
        assert saved["llm_config"][key] == raw["llm_config"][key], key


@pytest.mark.parametrize(
    ("architecture", "model_type"),
    [
        ("MistralForCausalLM", "mistral"),  # never in the original's list: resolved by transformers' registry
        ("LlamaForCausalLM", "llama"),  # several model types share the class; the declared one wins
        ("InternLM2ForCausalLM", "internlm2"),  # registered by this package
        ("Gemma2ForCausalLM", "gemma2"),
    ],
)
def test_architecture_resolves_through_the_registries(architecture, model_type):
    from transformers_internvl.modeling.llm_resolution import resolve_text_model_type

    assert resolve_text_model_type({"architectures": [architecture], "model_type": model_type}) == model_type
    assert resolve_text_model_type({"architectures": [architecture]}) == model_type


@pytest.mark.parametrize("llm_config", [{"architectures": ["NoSuchForCausalLM"]}, {"model_type": "no_such_type"}])
def test_unknown_architecture_names_the_field_and_the_value(llm_config):
    field, value = ("architectures[0]", "NoSuchForCausalLM") if "architectures" in llm_config else ("model_type", "no")
    with pytest.raises(ValueError, match=re.escape(f"`llm_config.{field}`: '{value}")):
        InternVLConfig(llm_config={**llm_config, "hidden_size": 64})


@pytest.mark.parametrize("family", ["qwen3", "internlm3_in_internlm2"])
def test_registered_mapping_holds_only_patterns_that_apply(family, tmp_path):
    """What transformers looks up for the model (registry) matches the model's saved keys; the head renaming
    (`language_model.lm_head` or `.output`) is each model's own, never registered for all InternVL models."""
    from transformers.conversion_mapping import get_model_conversion_mapping

    config = InternVLConfig(**{k: v for k, v in read_fixture(family).items() if k != "model_type"})
    model = InternVLForConditionalGeneration._from_config(config, dtype=torch.float32)
    saved_keys = list(saved_state_dict(model, tmp_path))
    for conversion in get_model_conversion_mapping(model, add_legacy=False):
        if conversion.scope_prefix is not None:  # a sub-model's own (transformers checks those on the sub-model)
            continue
        for pattern in conversion.source_patterns:
            assert "lm_head" not in pattern and "output" not in pattern, conversion
            assert any(re.search(pattern, key) for key in saved_keys), (pattern, conversion)
