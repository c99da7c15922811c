"""Session-11 held-out drop-in checks against what the ORIGINAL InternVL code did (`tests/fixtures/dropin_s11/`, made
by `make_dropin_s11.py` there under transformers 4.47.1 and the OpenGVLab code at 2410d1d; see its README).

* `InternVisionModel.resize_pos_embeddings(old_size, new_size, patch_size)` (the original fine-tuning's
  `force_image_size` path) on 300M- and 6B-style towers: the new position embedding and the tower's outputs;
* the fine-tuning script's whole `force_image_size` sequence on a chat model, and the checkpoint it saves;
* the training forward (`image_flags` with a dummy tile, `labels`, the original's `loss_weight`) per LLM family.
"""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForImageTextToText, AutoTokenizer

import transformers_internvl  # noqa: F401
from transformers_internvl import InternVisionModel

FIXTURES = Path(__file__).parent / "fixtures"
HERE = FIXTURES / "dropin_s11"
sys.path.insert(0, str(HERE))
from dropin_s11_cases import (  # noqa: E402
    ASSEMBLED,
    CHAT_EDGE_FOLDERS,
    CUSTOM_IMAGE_TOKENS,
    CUSTOM_TOKEN_FOLDERS,
    INTERNLM2_CHAT,
    RESIZE_CASES,
    RESIZE_FOLDERS,
    SCRIPT_CASE,
    TRAIN_CASES,
    force_image_size,
    pixels,
)

TOLERANCE = 1e-5  # the fixtures were made with torch 2.14.1; the same code differs by the torch version only


@pytest.fixture(scope="module")
def original():
    torch.set_num_threads(1)
    return load_file(HERE / "original_s11.safetensors"), json.loads((HERE / "original_s11.json").read_text())


def _vision(folder: str, dtype=torch.float32) -> InternVisionModel:
    model = AutoModelForImageTextToText.from_pretrained(FIXTURES / folder, dtype=dtype)
    return model.vision_model.eval()


def _max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


# ---- resize_pos_embeddings ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(RESIZE_FOLDERS))
@pytest.mark.parametrize(("old", "new"), RESIZE_CASES)
def test_resize_pos_embeddings_gives_the_original_embedding_and_outputs(original, key, old, new):
    tensors, meta = original
    vision = _vision(RESIZE_FOLDERS[key])
    vision.resize_pos_embeddings(old_size=old, new_size=new, patch_size=14)
    name = f"{key}_{old}_{new}"
    position = vision.embeddings.position_embedding
    assert isinstance(position, torch.nn.Parameter) and position.requires_grad == meta[f"{name}_requires_grad"]
    assert position.shape == (1, (new // 14) ** 2 + 1, vision.config.hidden_size)
    kept = position if new < 600 else position[:, ::5]
    assert _max_error(kept, tensors[f"{name}_pos"]) <= 1e-6
    assert vision.embeddings.image_size == meta[f"{name}_image_size"] == new
    assert vision.config.image_size == new  # (the original leaves its config to the training script: it sets it next)
    for size in sorted({new, 448}):
        with torch.no_grad():
            out = vision(pixel_values=pixels(2, size, seed=old + new + size))
        assert _max_error(out.last_hidden_state[:, :6], tensors[f"{name}_at{size}_last"]) <= TOLERANCE
        assert _max_error(out.pooler_output, tensors[f"{name}_at{size}_pooler"]) <= TOLERANCE


@pytest.mark.parametrize("key", sorted(RESIZE_FOLDERS))
def test_resize_pos_embeddings_in_bfloat16_rounds_as_the_original(original, key):
    tensors, _ = original
    vision = _vision(RESIZE_FOLDERS[key], torch.bfloat16)
    vision.resize_pos_embeddings(448, 336, 14)
    assert vision.embeddings.position_embedding.dtype == torch.bfloat16
    assert torch.equal(vision.embeddings.position_embedding.float(), tensors[f"{key}_bf16_448_336_pos"])


def test_resize_pos_embeddings_rejects_sizes_that_do_not_fit():
    vision = _vision(RESIZE_FOLDERS["vit300m"])
    before = vision.embeddings.position_embedding
    with pytest.raises(ValueError, match=r"`old_size` \(224\) does not match .* 32x32"):
        vision.resize_pos_embeddings(224, 448, 14)
    with pytest.raises(ValueError, match=r"`new_size` \(300\) must be a multiple of the patch size \(14\)"):
        vision.resize_pos_embeddings(448, 300, 14)
    with pytest.raises(ValueError, match=r"`patch_size` \(16\) must be the vision tower's \(14\)"):
        vision.resize_pos_embeddings(448, 448, 16)
    with pytest.raises(ValueError, match="`new_size` must be a positive int"):
        vision.resize_pos_embeddings(448, 0, 14)
    assert vision.embeddings.position_embedding is before and vision.config.image_size == 448


def test_resized_tower_saves_and_reloads(tmp_path):
    vision = _vision(RESIZE_FOLDERS["vit6b"])
    vision.resize_pos_embeddings(448, 336, 14)
    vision.save_pretrained(tmp_path)
    reloaded = InternVisionModel.from_pretrained(tmp_path).eval()
    assert reloaded.config.image_size == 336
    assert torch.equal(reloaded.embeddings.position_embedding, vision.embeddings.position_embedding)


# ---- the fine-tuning script's force_image_size sequence -------------------------------------------------------------


def _script_batch(tensors):
    return {name: tensors[f"script_batch_{name}"] for name in ("input_ids", "attention_mask", "labels", "image_flags")}


def _check_script_outputs(model, tokenizer, tensors, meta):
    tiles = pixels(3, SCRIPT_CASE["size"], seed=1103)
    with torch.no_grad():
        assert _max_error(model.extract_feature(tiles)[:, :8], tensors["script_features"]) <= TOLERANCE
        out = model(pixel_values=tiles, **_script_batch(tensors))
    assert _max_error(out.logits[:, -6:], tensors["script_logits_last"]) <= TOLERANCE
    assert abs(out.loss.item() - tensors["script_loss"].item()) <= TOLERANCE
    answer = model.chat(tokenizer, tiles[:2], "Describe.", dict(max_new_tokens=6, do_sample=False))
    assert answer == meta["script_chat_answer"]


def test_finetuning_force_image_size_sequence_matches_the_original(original):
    """internvl_chat_finetune.py: resize from `vision_config.image_size`, then set `vision_config.image_size`,
    `force_image_size` and `num_image_token` (64 for 224 px tiles), then train / chat on 224 px tiles."""
    tensors, meta = original
    folder = FIXTURES / SCRIPT_CASE["folder"]
    model = AutoModel.from_pretrained(folder, dtype=torch.float32, use_flash_attn=False).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    force_image_size(model, SCRIPT_CASE["size"])
    assert model.num_image_token == meta["script_num_image_token"] == 64
    _check_script_outputs(model, tokenizer, tensors, meta)


def test_checkpoint_saved_after_the_sequence_loads_with_the_original_numbers(original, tmp_path):
    """The folder the original saved after the sequence (224 px tower and tiles): same numbers, processor tiles at
    224 px with 64 tokens per tile, and a save here writes the original's keys and sizes back."""
    from transformers import AutoProcessor
    from PIL import Image

    tensors, meta = original
    folder = HERE / SCRIPT_CASE["saved"]
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.num_image_token == 64 and model.vision_model.embeddings.image_size == 224
    _check_script_outputs(model, tokenizer, tensors, meta)
    processor = AutoProcessor.from_pretrained(folder)
    inputs = processor(images=Image.new("RGB", (500, 240), "red"), text="<image>\nHi", return_tensors="pt")
    assert inputs["pixel_values"].shape[-2:] == (224, 224)
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 64 * inputs["pixel_values"].shape[0]
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    reference = load_file(folder / "model.safetensors")
    assert sorted(saved) == sorted(reference)
    assert all(torch.equal(saved[key], reference[key]) for key in reference)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["force_image_size"] == config["vision_config"]["image_size"] == 224


# ---- training forward: dummy tile, labels, loss_weight ---------------------------------------------------------------


@pytest.fixture(scope="module", params=sorted(TRAIN_CASES))
def trained(request, original):
    tensors, _ = original
    key = request.param
    model = AutoModelForImageTextToText.from_pretrained(FIXTURES / TRAIN_CASES[key], dtype=torch.float32).eval()
    names = ("input_ids", "attention_mask", "labels", "image_flags", "loss_weight")
    batch = {name: tensors[f"train_{key}_batch_{name}"] for name in names}
    return key, model, batch, tensors


def test_training_forward_with_a_dummy_tile_matches_the_original(trained):
    key, model, batch, tensors = trained
    inputs = {name: value for name, value in batch.items() if name != "loss_weight"}
    with torch.no_grad():
        out = model(pixel_values=pixels(3, 448, seed=1107), **inputs)
    assert _max_error(out.logits[:, -5:], tensors[f"train_{key}_logits_last"]) <= TOLERANCE
    assert abs(out.loss.item() - tensors[f"train_{key}_loss"].item()) <= TOLERANCE


@pytest.mark.parametrize("as_list", [True, False])
def test_loss_weight_gives_the_original_weighted_loss(trained, as_list):
    """The original's `forward(..., loss_weight=...)` (a list, as its training collator passes it, or a tensor):
    `Σ CE·w / Σ w` over the shifted targets. It was accepted and silently ignored (the unweighted loss)."""
    key, model, batch, tensors = trained
    weights = batch["loss_weight"]
    inputs = {name: value for name, value in batch.items() if name != "loss_weight"}
    with torch.no_grad():
        out = model(
            pixel_values=pixels(3, 448, seed=1107),
            **inputs,
            loss_weight=weights.tolist() if as_list else weights,
            loss_reduction_all_gather=False,
            statistics=torch.tensor([2, 3, 1]),
        )
    expected = tensors[f"train_{key}_weighted_loss"].item()
    assert abs(expected - tensors[f"train_{key}_loss"].item()) > 1e-3  # the weights matter on this batch
    assert abs(out.loss.item() - expected) <= TOLERANCE


# ---- the InternLM2 LLM's own chat API (internlm2-chat model cards) ---------------------------------------------------


@pytest.fixture(scope="module")
def internlm2_llm():
    from transformers import AutoModelForCausalLM

    from transformers_internvl import InternLM2ForCausalLM

    folder = HERE / INTERNLM2_CHAT["saved"]
    # The model card's call; the folder's config.json names the remote code in `auto_map` (its files are not here).
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, trust_remote_code=True).eval()
    assert isinstance(model, InternLM2ForCausalLM)
    return model, AutoTokenizer.from_pretrained(folder, trust_remote_code=True)


def _as_lists(history):
    return [list(turn) for turn in history]


def test_internlm2_build_inputs_gives_the_original_ids(internlm2_llm, original):
    model, tokenizer = internlm2_llm
    expected = original[1]["internlm2_chat"]["build_inputs"]
    for (query, history, meta_instruction), ids in zip(INTERNLM2_CHAT["build_inputs"], expected, strict=True):
        inputs = model.build_inputs(tokenizer, query, history, meta_instruction)
        assert inputs["input_ids"].tolist() == ids["input_ids"]
        assert inputs["attention_mask"].tolist() == ids["attention_mask"]


def test_internlm2_chat_gives_the_original_answers_and_history(internlm2_llm, original):
    """`response, history = model.chat(tokenizer, query, history=history)`: was an AttributeError."""
    model, tokenizer = internlm2_llm
    expected = original[1]["internlm2_chat"]
    history = []
    for query, turn in zip(INTERNLM2_CHAT["turns"], expected["chat"], strict=True):
        before = list(history)
        response, history = model.chat(tokenizer, query, history=history, **INTERNLM2_CHAT["greedy"])
        assert response == turn["response"]
        assert _as_lists(history) == turn["history"]
        assert history[:-1] == before  # a new list: the caller's is not changed
    response, _ = model.chat(tokenizer, "Hi", history=[], meta_instruction="", **INTERNLM2_CHAT["greedy"])
    assert response == expected["chat_no_meta"]


def test_internlm2_stream_chat_yields_what_the_original_yields(internlm2_llm, original):
    model, tokenizer = internlm2_llm
    query = INTERNLM2_CHAT["turns"][0]
    steps = list(model.stream_chat(tokenizer, query, history=[], **INTERNLM2_CHAT["greedy"]))
    assert [[response, _as_lists(history)] for response, history in steps] == original[1]["internlm2_chat"][
        "stream_chat"
    ]


def test_internlm2_stream_chat_raises_the_generation_error(internlm2_llm):
    model, tokenizer = internlm2_llm
    stream = model.stream_chat(tokenizer, "hello", history=[], do_sample=False, max_new_tokens=2, num_beams=0)
    with pytest.raises(ValueError, match="num_beams"):
        list(stream)


def test_internlm2_chat_on_the_internvl_language_model(original):
    """`model.language_model.chat(...)` (the original's `language_model` is the InternLM2 causal LM) on the InternVL
    checkpoint the standalone LLM was saved from: the same answers."""
    folder = FIXTURES / INTERNLM2_CHAT["folder"]
    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    turn = original[1]["internlm2_chat"]["chat"][0]
    response, history = model.language_model.chat(
        tokenizer, INTERNLM2_CHAT["turns"][0], history=[], **INTERNLM2_CHAT["greedy"]
    )
    assert response == turn["response"] and _as_lists(history) == turn["history"]


def test_auto_tokenizer_with_trust_remote_code_on_an_internlm2_folder_runs_no_remote_code(tmp_path, monkeypatch):
    """The internlm2-chat model card's `AutoTokenizer.from_pretrained(path, trust_remote_code=True)` on an InternLM2
    LLM folder (model_type internlm2, tokenizer_config `auto_map` to the remote tokenizer): this package's class, as on
    InternVL folders. transformers ran the folder's tokenization_internlm2*.py (InternLM2Config is in its tokenizer
    mapping, which turns off its preference for registered classes)."""
    import shutil

    from transformers_internvl import InternLM2TokenizerFast

    folder = tmp_path / "internlm2"
    shutil.copytree(HERE / INTERNLM2_CHAT["saved"], folder)
    for name in ("tokenization_internlm2.py", "tokenization_internlm2_fast.py"):
        (folder / name).write_text("raise RuntimeError('the remote tokenizer code ran')\n")
    monkeypatch.setattr("builtins.input", lambda *args: pytest.fail("prompted for trust_remote_code"))
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    assert type(tokenizer) is InternLM2TokenizerFast
    reference = AutoTokenizer.from_pretrained(HERE / INTERNLM2_CHAT["saved"])
    assert tokenizer("hello <|im_end|>").input_ids == reference("hello <|im_end|>").input_ids


# ---- assembling a model from a vision tower and an LLM, as the original training scripts do --------------------------


def test_model_assembled_from_a_vision_tower_and_an_llm_as_the_original_training_scripts(original):
    """`InternVLChatConfig(vision_config.to_dict(), llm_config.to_dict(), ...)` (positional, as the original) and
    `InternVLChatModel(config, vision_model, llm)`, then `mlp1.load_state_dict(...)` (`--mlp_path`): the given towers
    are used as they are (not re-initialised) and the logits are the original's. Both calls raised before."""
    from transformers_internvl import InternVLChatConfig, InternVLChatModel

    tensors, meta = original
    folder = FIXTURES / ASSEMBLED["folder"]
    source = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    vision_model, llm = source.vision_model, source.language_model.as_causal_lm()
    weights = {name: tensor.clone() for name, tensor in llm.state_dict().items()}
    config = InternVLChatConfig(vision_model.config.to_dict(), llm.config.to_dict(), **ASSEMBLED["config"])
    assert {key: getattr(config, key) for key in ASSEMBLED["config"]} == meta["assembled_config"]
    config.force_image_size = 448
    model = InternVLChatModel(config, vision_model, llm, use_flash_attn=False).eval()
    assert model.vision_model is vision_model and model.lm_head is llm.get_output_embeddings()
    assert model.config._attn_implementation == "eager"
    assert all(torch.equal(tensor, weights[name]) for name, tensor in llm.state_dict().items())
    model.mlp1.load_state_dict(source.mlp1.state_dict())
    model.img_context_token_id = source.img_context_token_id
    ids = tensors["assembled_input_ids"]
    with torch.no_grad():
        logits = model(pixel_values=pixels(1, 448, seed=1109), input_ids=ids).logits
    assert _max_error(logits[:, -6:], tensors["assembled_logits_last"]) <= TOLERANCE


def test_assembly_arguments_that_do_not_fit_raise():
    from transformers_internvl import InternVLChatConfig, InternVLChatModel

    source = AutoModel.from_pretrained(FIXTURES / ASSEMBLED["folder"], dtype=torch.float32)
    vision, llm = source.config.vision_config.to_dict(), source.config.llm_config.to_dict()
    with pytest.raises(TypeError, match="at most 2 positional arguments"):
        InternVLChatConfig(vision, llm, 0)
    with pytest.raises(TypeError, match="multiple values for argument 'llm_config'"):
        InternVLChatConfig(vision, llm, text_config=llm)
    config = InternVLChatConfig(vision, dict(llm, hidden_size=64, num_attention_heads=4), template="internlm2-chat")
    with pytest.raises(ValueError, match="hidden_size 32, but the config's `llm_config` says 64"):
        InternVLChatModel(config, source.vision_model, source.language_model.as_causal_lm())
    with pytest.raises(TypeError, match="must be a causal LM"):
        InternVLChatModel(config, source.vision_model, torch.nn.Linear(2, 2))


# ---- the original's vision-tower flags and attributes ----------------------------------------------------------------


def test_the_training_scripts_encoder_gradient_checkpointing_flag_checkpoints_every_layer():
    """internvl_chat_finetune.py sets `model.vision_model.encoder.gradient_checkpointing = True` (the original encoder
    reads that flag); it was a plain attribute nothing read, so the layers ran without checkpointing. The gradients
    stay the same."""
    model = AutoModel.from_pretrained(FIXTURES / SCRIPT_CASE["folder"], dtype=torch.float32).train()
    encoder, tiles = model.vision_model.encoder, pixels(1, 448, seed=1111)
    assert encoder.gradient_checkpointing is False
    model.vision_model(pixel_values=tiles).last_hidden_state.square().sum().backward()
    plain = [p.grad.clone() for p in model.vision_model.parameters()]
    model.zero_grad()
    model.vision_model.gradient_checkpointing = True
    model.vision_model.encoder.gradient_checkpointing = True
    assert encoder.gradient_checkpointing and all(layer.gradient_checkpointing for layer in encoder.layers)
    calls = []
    for layer in encoder.layers:
        inner = layer._gradient_checkpointing_func
        layer._gradient_checkpointing_func = lambda *a, inner=inner, **k: calls.append(1) or inner(*a, **k)
    model.vision_model(pixel_values=tiles).last_hidden_state.square().sum().backward()
    assert len(calls) == len(encoder.layers)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.vision_model.parameters(), plain, strict=True))
    encoder.gradient_checkpointing = False
    assert not any(layer.gradient_checkpointing for layer in encoder.layers)


def test_vision_modules_have_the_original_attributes():
    model = AutoModel.from_pretrained(FIXTURES / RESIZE_FOLDERS["vit6b"], dtype=torch.float32, use_flash_attn=False)
    config = model.config.vision_config
    embeddings = model.vision_model.embeddings
    assert (embeddings.image_size, embeddings.patch_size, embeddings.num_patches, embeddings.num_positions) == (
        448,
        14,
        1024,
        1025,
    )
    layer = model.vision_model.encoder.layers[0]
    assert (layer.embed_dim, layer.intermediate_size, layer.norm_type) == (32, 64, "rms_norm")
    assert layer.attn.qk_normalization is True and layer.attn.use_flash_attn is False
    assert layer.attn.scale == layer.attn.scaling == (config.hidden_size // config.num_attention_heads) ** -0.5
    assert layer.mlp.config is config


# ---- chat / batch_chat edge cases ----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(CHAT_EDGE_FOLDERS))
def test_chat_edge_cases_give_the_original_answers(original, key):
    """batch_chat with a text-only question among image questions (`num_patches_list` entry 0: the original renders
    `<img></img>`), a second chat turn that brings a new image, and a third turn without pixel values (the history's
    `<image>` placeholders stay text)."""
    expected = original[1]["chat_edges"][key]
    folder = FIXTURES / CHAT_EDGE_FOLDERS[key]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    greedy = dict(max_new_tokens=6, do_sample=False)
    first, second = pixels(2, 448, seed=1201), pixels(1, 448, seed=1202)
    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    batch = model.batch_chat(
        tokenizer,
        torch.cat([first, second]),
        ["Describe this.", "No picture here?", "<image>\nAnd this one"],
        dict(greedy),
        num_patches_list=[2, 0, 1],
    )
    assert batch == expected["batch_chat"]
    answer1, history = model.chat(tokenizer, first, "What is it?", dict(greedy), return_history=True)
    answer2, history = model.chat(
        tokenizer,
        torch.cat([first, second]),
        "<image>\nCompare with this one.",
        dict(greedy),
        history=history,
        return_history=True,
        num_patches_list=[2, 1],
    )
    answer3, history = model.chat(tokenizer, None, "Thanks, and?", dict(greedy), history=history, return_history=True)
    assert [answer1, answer2, answer3] == expected["chat"]
    assert [list(turn) for turn in history] == expected["history"]


@pytest.mark.parametrize("key", sorted(CUSTOM_TOKEN_FOLDERS))
def test_chat_with_other_image_token_strings_uses_them_as_the_original(original, key, caplog):
    """`chat(..., IMG_CONTEXT_TOKEN="<quad>", IMG_START_TOKEN="<ref>", IMG_END_TOKEN="</ref>")`: the original takes
    the context token's id from the tokenizer on every call (`img_context_token_id`); this raised a ValueError because
    the id differed from the checkpoint's `<IMG_CONTEXT>`."""
    expected = original[1]["custom_image_tokens"][key]
    folder = FIXTURES / CUSTOM_TOKEN_FOLDERS[key]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    greedy, tiles = dict(max_new_tokens=6, do_sample=False), pixels(2, 448, seed=1301)
    assert model.chat(tokenizer, tiles, "Look.", dict(greedy), **CUSTOM_IMAGE_TOKENS) == expected["custom"]
    assert model.img_context_token_id == model.config.image_token_id == expected["custom_id"]
    assert "changes from" in caplog.text
    batch = model.batch_chat(
        tokenizer, tiles, ["One", "Two"], dict(greedy), num_patches_list=[1, 1], **CUSTOM_IMAGE_TOKENS
    )
    assert batch == expected["batch"]
    assert model.chat(tokenizer, tiles, "Look.", dict(greedy)) == expected["default"]
    assert model.img_context_token_id == expected["default_id"]
