"""Core model: parity with the original OpenGVLab implementation on the reference checkpoints, save/load in the
original layout, Auto* resolution, and input validation."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import INTERNLM2_DIR, QWEN2_DIR, QWEN2_TOKENIZER, image_token_id, load_model, model_meta
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText

import transformers_internvl  # noqa: F401  (registers the classes)
from transformers_internvl import (
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLModel,
    InternVLVisionConfig,
)
from transformers_internvl.modeling.modeling_internvl import pixel_unshuffle


def _check_reference_parity(model, io, pad_token_id):
    with torch.no_grad():
        outputs = model(input_ids=io["input_ids"], pixel_values=io["pixel_values"], attention_mask=io["attention_mask"])
        features = model.get_image_features(io["pixel_values"])
    real = io["attention_mask"].bool()
    logits_delta = (outputs.logits - io["logits"])[real].abs().max().item()
    features_delta = (features.pooler_output - io["vit_embeds"]).abs().max().item()
    vision_delta = (features.last_hidden_state[:1] - io["vision_selected_hidden_state_tile0"]).abs().max().item()
    assert features.pooler_output.shape == io["vit_embeds"].shape
    with torch.no_grad():
        assert torch.equal(model.extract_feature(io["pixel_values"]), features.pooler_output)  # original API
    assert logits_delta <= 1e-5, logits_delta
    assert features_delta <= 1e-5, features_delta
    assert vision_delta <= 1e-5, vision_delta

    with torch.no_grad():
        generated = model.generate(
            input_ids=io["input_ids"],
            pixel_values=io["pixel_values"],
            attention_mask=io["attention_mask"],
            max_new_tokens=io["generated_ids"].shape[1],
            do_sample=False,
            eos_token_id=None,
            pad_token_id=pad_token_id,
            output_logits=True,
            return_dict_in_generate=True,
        )
    new_tokens = generated.sequences[:, io["input_ids"].shape[1] :]
    assert torch.equal(new_tokens, io["generated_ids"])
    step_logits = torch.stack(generated.logits, dim=1)
    assert (step_logits - io["generated_step_logits"]).abs().max().item() <= 1e-4


def test_qwen2_reference_parity(qwen2_model, qwen2_io):
    _check_reference_parity(qwen2_model, qwen2_io, pad_token_id=model_meta(QWEN2_DIR)["token_ids"]["pad"])


def test_internlm2_reference_parity():
    model = load_model("tiny-internlm2").eval()
    io = load_file(INTERNLM2_DIR / "io.safetensors")
    assert model.config.vision_config.qk_normalization and model.config.vision_config.norm_type == "rms_norm"
    _check_reference_parity(model, io, pad_token_id=model_meta(INTERNLM2_DIR)["token_ids"]["pad"])


def _drop_text_tokens(input_ids: torch.Tensor, start: int, count: int) -> torch.Tensor:
    return torch.cat([input_ids[:, :start], input_ids[:, start + count :]], dim=1)


def test_left_padded_batch_matches_single_samples(qwen2_model, qwen2_io):
    pad_id = model_meta(QWEN2_DIR)["token_ids"]["pad"]
    long_ids = qwen2_io["input_ids"]
    short_ids = _drop_text_tokens(long_ids, start=5, count=6)  # shorter system text, same image
    batch_ids = torch.full((2, long_ids.shape[1]), pad_id, dtype=torch.long)
    batch_ids[0] = long_ids[0]
    batch_ids[1, -short_ids.shape[1] :] = short_ids[0]
    attention_mask = (torch.arange(long_ids.shape[1]) >= long_ids.shape[1] - short_ids.shape[1]).long()
    attention_mask = torch.stack([torch.ones_like(attention_mask), attention_mask])
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    pixel_values = torch.cat([qwen2_io["pixel_values"], qwen2_io["pixel_values"]])

    with torch.no_grad():
        batch_logits = qwen2_model(
            input_ids=batch_ids, pixel_values=pixel_values, attention_mask=attention_mask, position_ids=position_ids
        ).logits
        short_logits = qwen2_model(input_ids=short_ids, pixel_values=qwen2_io["pixel_values"]).logits
    assert (batch_logits[0] - qwen2_io["logits"][0]).abs().max().item() <= 1e-5
    assert (batch_logits[1, -short_ids.shape[1] :] - short_logits[0]).abs().max().item() <= 1e-5

    generate_kwargs = dict(max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=pad_id)
    with torch.no_grad():
        batch_out = qwen2_model.generate(
            input_ids=batch_ids, pixel_values=pixel_values, attention_mask=attention_mask, **generate_kwargs
        )
        short_out = qwen2_model.generate(input_ids=short_ids, pixel_values=qwen2_io["pixel_values"], **generate_kwargs)
    assert torch.equal(batch_out[0, long_ids.shape[1] :], qwen2_io["generated_ids"][0, :6])
    assert torch.equal(batch_out[1, long_ids.shape[1] :], short_out[0, short_ids.shape[1] :])


def test_sdpa_matches_eager(qwen2_io):
    token_id = image_token_id(QWEN2_DIR)
    eager = AutoModelForImageTextToText.from_pretrained(QWEN2_DIR, image_token_id=token_id, attn_implementation="eager")
    sdpa = AutoModelForImageTextToText.from_pretrained(QWEN2_DIR, image_token_id=token_id, attn_implementation="sdpa")
    assert sdpa.config.vision_config._attn_implementation == "sdpa"
    assert eager.config.vision_config._attn_implementation == "eager"
    with torch.no_grad():
        eager_logits = eager(input_ids=qwen2_io["input_ids"], pixel_values=qwen2_io["pixel_values"]).logits
        sdpa_logits = sdpa(input_ids=qwen2_io["input_ids"], pixel_values=qwen2_io["pixel_values"]).logits
    assert (eager_logits - sdpa_logits).abs().max().item() <= 1e-5


def test_vision_micro_batches_match_one_batch(qwen2_model):
    torch.manual_seed(0)
    pixel_values = torch.randn(3, 3, 448, 448)
    with torch.no_grad():
        full = qwen2_model.get_image_features(pixel_values).pooler_output
        qwen2_model.config.vision_batch_size = 1
        try:
            chunked = qwen2_model.get_image_features(pixel_values, output_hidden_states=True)
        finally:
            qwen2_model.config.vision_batch_size = None
    assert full.shape == (3, qwen2_model.config.num_image_token, qwen2_model.config.text_config.hidden_size)
    assert (chunked.pooler_output - full).abs().max().item() <= 1e-6
    assert len(chunked.hidden_states) == qwen2_model.config.vision_config.num_hidden_layers + 1
    assert chunked.hidden_states[0].shape[0] == 3


def test_pixel_unshuffle_orderings_from_first_principles():
    rows = cols = 4
    channels = 2
    grid = torch.arange(rows * cols * channels, dtype=torch.float32).reshape(1, rows, cols, channels)
    v2 = pixel_unshuffle(grid, 0.5, "v2")
    v1 = pixel_unshuffle(grid, 0.5, "v1")
    assert v2.shape == v1.shape == (1, 2, 2, 4 * channels)
    for i in range(2):
        for j in range(2):
            expected = torch.cat(
                [
                    grid[0, 2 * i, 2 * j],
                    grid[0, 2 * i, 2 * j + 1],
                    grid[0, 2 * i + 1, 2 * j],
                    grid[0, 2 * i + 1, 2 * j + 1],
                ]
            )
            assert torch.equal(v2[0, i, j], expected)
            assert torch.equal(v1[0, j, i], expected)  # v1 leaves the token grid transposed


def _model_with_config_changes(**changes) -> InternVLForConditionalGeneration:
    config = AutoConfig.from_pretrained(QWEN2_DIR, image_token_id=image_token_id(QWEN2_DIR), **changes)
    return AutoModelForImageTextToText.from_pretrained(QWEN2_DIR, config=config).eval()


@pytest.mark.parametrize("select_layer", [-2, 1, 0])
def test_select_layer_uses_that_vision_layer(select_layer, qwen2_io):
    model = _model_with_config_changes(select_layer=select_layer)
    pixel_values = qwen2_io["pixel_values"]
    with torch.no_grad():
        hidden_states = model.model.vision_model(pixel_values, output_hidden_states=True).hidden_states
        features = model.get_image_features(pixel_values)
        selected = hidden_states[select_layer]
        expected = model.model.mlp1(
            pixel_unshuffle(selected[:, 1:].reshape(1, 32, 32, -1), 0.5, "v2").reshape(1, 256, -1)
        )
    assert torch.equal(features.last_hidden_state, selected)
    assert (features.pooler_output - expected).abs().max().item() == 0.0


def test_ps_version_v1_changes_token_order(qwen2_io):
    model = _model_with_config_changes(ps_version="v1")
    with torch.no_grad():
        selected = model.model.vision_model(qwen2_io["pixel_values"]).last_hidden_state
        features = model.get_image_features(qwen2_io["pixel_values"]).pooler_output
        grid = selected[:, 1:].reshape(1, 32, 32, -1)
        transposed = pixel_unshuffle(grid, 0.5, "v2").transpose(1, 2).reshape(1, 256, -1)
    assert (features - model.model.mlp1(transposed)).abs().max().item() == 0.0
    assert (features - qwen2_io["vit_embeds"]).abs().max().item() > 1e-3


def test_tied_embeddings_follow_the_llm_config():
    config = AutoConfig.from_pretrained(QWEN2_DIR)
    text = config.text_config.to_dict()
    text["tie_word_embeddings"] = True
    tied = InternVLConfig(vision_config=config.vision_config.to_dict(), llm_config=text)
    model = InternVLForConditionalGeneration(tied)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    untied = InternVLForConditionalGeneration(config)
    assert untied.lm_head.weight is not untied.get_input_embeddings().weight
    # An explicit top-level value wins, as in original checkpoints (which always write false).
    explicit = InternVLConfig(vision_config=config.vision_config.to_dict(), llm_config=text, tie_word_embeddings=False)
    assert explicit.tie_word_embeddings is False


def test_save_pretrained_round_trip_writes_the_original_layout(qwen2_model, qwen2_io, tmp_path):
    qwen2_model.save_pretrained(tmp_path)
    original_keys = set(load_file(QWEN2_DIR / "model.safetensors"))
    saved_keys = set(load_file(tmp_path / "model.safetensors"))
    assert saved_keys == original_keys

    saved_config = json.loads((tmp_path / "config.json").read_text())
    assert saved_config["model_type"] == "internvl_chat"
    assert saved_config["architectures"] == ["InternVLChatModel"]
    assert "text_config" not in saved_config
    assert saved_config["llm_config"]["architectures"] == ["Qwen2ForCausalLM"]
    assert saved_config["llm_config"]["rope_theta"] == 1e6
    for key in ("ps_version", "select_layer", "downsample_ratio", "template", "max_dynamic_patch", "use_thumbnail"):
        assert saved_config[key] == json.loads((QWEN2_DIR / "config.json").read_text())[key]

    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        before = qwen2_model(input_ids=qwen2_io["input_ids"], pixel_values=qwen2_io["pixel_values"]).logits
        after = reloaded(input_ids=qwen2_io["input_ids"], pixel_values=qwen2_io["pixel_values"]).logits
    assert torch.equal(before, after)


def test_model_built_from_config_saves_the_original_layout(tmp_path):
    config = AutoConfig.from_pretrained(QWEN2_DIR)
    model = InternVLForConditionalGeneration(config)
    model.save_pretrained(tmp_path)
    assert set(load_file(tmp_path / "model.safetensors")) == set(load_file(QWEN2_DIR / "model.safetensors"))


def _original_dir_with_auto_map(tmp_path: Path) -> Path:
    shutil.copy(QWEN2_DIR / "model.safetensors", tmp_path / "model.safetensors")
    config = json.loads((QWEN2_DIR / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
        "AutoModel": "modeling_internvl_chat.InternVLChatModel",
        "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel",
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_auto_classes_resolve_original_directory_without_remote_code(tmp_path, monkeypatch):
    directory = _original_dir_with_auto_map(tmp_path)
    # Remote code would need these files; they do not exist, and no prompt may be shown.
    monkeypatch.setattr("builtins.input", lambda *args: pytest.fail("prompted for trust_remote_code"))
    assert type(AutoConfig.from_pretrained(directory)) is InternVLConfig
    assert type(AutoConfig.from_pretrained(directory).vision_config) is InternVLVisionConfig
    # The original's auto_map makes AutoModel the chat model; the base model loads through its own class.
    assert type(AutoModel.from_pretrained(directory)) is InternVLForConditionalGeneration
    assert type(InternVLModel.from_pretrained(directory)) is InternVLModel
    assert type(AutoModelForImageTextToText.from_pretrained(directory)) is InternVLForConditionalGeneration
    assert type(AutoModelForCausalLM.from_pretrained(directory)) is InternVLForConditionalGeneration


def test_base_model_loads_original_keys(tmp_path, qwen2_model, qwen2_io):
    base = InternVLModel.from_pretrained(QWEN2_DIR, image_token_id=image_token_id(QWEN2_DIR)).eval()
    with torch.no_grad():
        hidden = base(input_ids=qwen2_io["input_ids"], pixel_values=qwen2_io["pixel_values"]).last_hidden_state
        assert torch.equal(
            qwen2_model.lm_head(hidden),
            qwen2_model(input_ids=qwen2_io["input_ids"], pixel_values=qwen2_io["pixel_values"]).logits,
        )


def test_image_token_id_resolution_order(tmp_path):
    shutil.copy(QWEN2_DIR / "model.safetensors", tmp_path / "model.safetensors")
    shutil.copy(QWEN2_DIR / "config.json", tmp_path / "config.json")
    assert AutoModelForImageTextToText.from_pretrained(tmp_path).config.image_token_id is None
    assert AutoModelForImageTextToText.from_pretrained(tmp_path, image_token_id=7).config.image_token_id == 7
    for name in ("tokenizer_config.json", "tokenizer.json", "added_tokens.json"):
        shutil.copy(QWEN2_TOKENIZER / name, tmp_path / name)
    assert AutoModelForImageTextToText.from_pretrained(tmp_path).config.image_token_id == 995
    config = json.loads((tmp_path / "config.json").read_text())
    config["image_token_id"] = 3
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert AutoModelForImageTextToText.from_pretrained(tmp_path).config.image_token_id == 3


def test_missing_image_token_id_error_says_how_to_set_it(qwen2_io):
    model = AutoModelForImageTextToText.from_pretrained(QWEN2_DIR)
    with pytest.raises(ValueError, match="image_token_id"):
        model(input_ids=qwen2_io["input_ids"], pixel_values=qwen2_io["pixel_values"])
    # Text-only input needs no image token id.
    model(input_ids=qwen2_io["input_ids"][:, :10])


def test_image_token_count_mismatch_names_both_counts(qwen2_model, qwen2_io):
    input_ids = _drop_text_tokens(qwen2_io["input_ids"], start=30, count=1)  # one <IMG_CONTEXT> fewer
    with pytest.raises(ValueError, match=r"255 image tokens.*1 tiles x 256 = 256"):
        qwen2_model(input_ids=input_ids, pixel_values=qwen2_io["pixel_values"])


@pytest.mark.parametrize("shape", [(3, 448, 448), (1, 3, 224, 224), (1, 1, 448, 448), (1, 3, 448, 448, 1)], ids=str)
def test_pixel_values_of_wrong_shape_are_rejected(qwen2_model, qwen2_io, shape):
    with pytest.raises(ValueError, match=r"pixel_values.*\(num_tiles, 3, 448, 448\)"):
        qwen2_model(input_ids=qwen2_io["input_ids"], pixel_values=torch.zeros(shape))


def test_num_tiles_must_match_pixel_values(qwen2_model, qwen2_io):
    with pytest.raises(ValueError, match="num_tiles"):
        qwen2_model(input_ids=qwen2_io["input_ids"], pixel_values=qwen2_io["pixel_values"], num_tiles=[2])


def test_unknown_llm_architecture_names_the_field_and_the_value():
    config = json.loads((QWEN2_DIR / "config.json").read_text())
    config["llm_config"]["architectures"] = ["NotARealModelForCausalLM"]
    with pytest.raises(ValueError, match=r"`llm_config\.architectures\[0\]`: 'NotARealModelForCausalLM'"):
        InternVLConfig(**{k: v for k, v in config.items() if k != "model_type"})


def test_config_reads_original_fields_and_exposes_text_config():
    config = AutoConfig.from_pretrained(QWEN2_DIR)
    assert config.text_config.model_type == "qwen2"
    assert config.text_config.hidden_size == config.hidden_size == 64
    assert (config.ps_version, config.select_layer, config.downsample_ratio) == ("v2", -1, 0.5)
    assert (config.force_image_size, config.max_dynamic_patch, config.template) == (448, 12, "internvl2_5")
    assert config.num_image_token == 256
    assert config.get_text_config() is config.text_config


def test_wqkv_of_the_wrong_shape_names_the_shapes(tmp_path):
    from safetensors.torch import save_file

    shutil.copy(INTERNLM2_DIR / "config.json", tmp_path / "config.json")
    state_dict = load_file(INTERNLM2_DIR / "model.safetensors")
    key = "language_model.model.layers.0.attention.wqkv.weight"
    assert state_dict[key].shape == (128, 64)
    state_dict[key] = torch.zeros(192, 64)
    save_file(state_dict, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"wqkv.weight has shape \(192, 64\).*expected \(128, 64\)"):
        AutoModelForImageTextToText.from_pretrained(tmp_path)


def llama_llm_config_like_qwen2(qwen2: dict) -> dict:
    """A `LlamaForCausalLM` llm_config with the sizes of a Qwen2 one (Qwen2 = Llama with q/k/v biases; Llama's
    `attention_bias` also adds an o_proj bias, to be set to zero)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=qwen2["vocab_size"],
        hidden_size=qwen2["hidden_size"],
        intermediate_size=qwen2["intermediate_size"],
        num_hidden_layers=qwen2["num_hidden_layers"],
        num_attention_heads=qwen2["num_attention_heads"],
        num_key_value_heads=qwen2["num_key_value_heads"],
        rms_norm_eps=qwen2["rms_norm_eps"],
        rope_theta=qwen2["rope_theta"],
        attention_bias=True,
        max_position_embeddings=qwen2["max_position_embeddings"],
        tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"],
    ).to_dict()


def test_llama_llm_checkpoint_in_the_original_layout(tmp_path, qwen2_io):
    """A `LlamaForCausalLM` llm_config loads from original keys; with Qwen2's weights (Qwen2 = Llama with q/k/v
    biases; Llama's `attention_bias` also adds an o_proj bias, set to zero here) it reproduces the Qwen2 reference."""
    from safetensors.torch import save_file

    config = json.loads((QWEN2_DIR / "config.json").read_text())
    qwen2 = config["llm_config"]
    llama = llama_llm_config_like_qwen2(qwen2)
    config["llm_config"] = llama
    (tmp_path / "config.json").write_text(json.dumps(config))
    state_dict = load_file(QWEN2_DIR / "model.safetensors")
    for layer in range(qwen2["num_hidden_layers"]):
        state_dict[f"language_model.model.layers.{layer}.self_attn.o_proj.bias"] = torch.zeros(qwen2["hidden_size"])
    save_file(state_dict, tmp_path / "model.safetensors", metadata={"format": "pt"})

    model = AutoModelForImageTextToText.from_pretrained(tmp_path, image_token_id=image_token_id(QWEN2_DIR)).eval()
    assert model.config.text_config.model_type == "llama"
    with torch.no_grad():
        logits = model(input_ids=qwen2_io["input_ids"], pixel_values=qwen2_io["pixel_values"]).logits
    assert (logits - qwen2_io["logits"]).abs().max().item() <= 1e-5
    model.save_pretrained(tmp_path / "saved")
    assert set(load_file(tmp_path / "saved" / "model.safetensors")) == set(state_dict)
