"""Session-9 gaps against the ORIGINAL InternVL code: the original's positional `forward`, its plain attributes
(`select_layer`, `ps_version`, `downsample_ratio`, ...), `wrap_llm_lora` / `wrap_backbone_lora` / `num_samples`,
`batch_chat(history=...)`, `downsample_ratio` 0.3 in the processor, a damaged `chat_template.json`, `chat --votes`
bounds and an `image_token_id` outside the vocabulary.

Expected values come from the original (`fixtures/original_api_s9`, `fixtures/models/tiny-qwen2/io.safetensors`) or
from first principles (the same model loaded with the option vs. the attribute assigned).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from helpers import FIXTURES, QWEN2_DIR, QWEN2_IMAGE_TOKEN_ID, load_model, original_model_dir, qwen2_processor
from safetensors.torch import load_file
from transformers import AutoModel, AutoProcessor

from transformers_internvl import InternVLChatConfig, InternVLChatProcessor
from transformers_internvl.cli import main

ORIGINAL_API = FIXTURES / "original_api_s9"
sys.path.insert(0, str(ORIGINAL_API))
from original_api_s9_inputs import (  # noqa: E402
    CASES,
    HELDOUT_S7,
    image_context_id,
    input_ids,
    logit_positions,
    pixel_values,
)


@pytest.fixture(scope="module")
def original_inputs(qwen2_io) -> dict:
    return {key: qwen2_io[key] for key in ("pixel_values", "input_ids", "attention_mask")}


# ---- 1. forward in the original's positional order -------------------------------------------------------------


def test_forward_takes_the_original_positional_order(qwen2_model, qwen2_io, original_inputs):
    pixels, ids, mask = original_inputs["pixel_values"], original_inputs["input_ids"], original_inputs["attention_mask"]
    flags = torch.ones(1, dtype=torch.long)
    with torch.no_grad():
        logits = qwen2_model(pixels, ids, mask).logits
        with_flags = qwen2_model(pixels, ids, mask, None, flags, None, ids)  # ..., image_flags, past_key_values, labels
        keyword = qwen2_model(input_ids=ids, pixel_values=pixels, attention_mask=mask, image_flags=flags, labels=ids)
        as_tuple = qwen2_model(pixels, ids, mask, None, flags, None, None, None, None, None, False)
    assert (logits - qwen2_io["logits"]).abs().max().item() <= 1e-5  # the original's logits
    assert torch.equal(with_flags.logits, keyword.logits)
    assert with_flags.loss is not None and torch.equal(with_flags.loss, keyword.loss)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], logits)


def test_forward_keeps_transformers_positional_order(qwen2_model, qwen2_io, original_inputs):
    import inspect

    pixels, ids, mask = original_inputs["pixel_values"], original_inputs["input_ids"], original_inputs["attention_mask"]
    with torch.no_grad():
        logits = qwen2_model(ids, pixels, mask).logits
        text = ids[:, -6:]
        text_only = qwen2_model(text).logits
        original_order_text_only = qwen2_model(None, text).logits  # pixel_values=None, then the ids
    assert (logits - qwen2_io["logits"]).abs().max().item() <= 1e-5
    assert torch.equal(text_only, original_order_text_only)
    assert list(inspect.signature(qwen2_model.forward).parameters)[:2] == ["input_ids", "pixel_values"]


def test_forward_original_order_refuses_duplicates_and_extra_arguments(qwen2_model, original_inputs):
    pixels, ids = original_inputs["pixel_values"], original_inputs["input_ids"]
    with pytest.raises(TypeError, match="multiple values for argument 'input_ids'"):
        qwen2_model(pixels, ids, input_ids=ids)
    with pytest.raises(TypeError, match="multiple values for argument 'past_key_values'"):
        qwen2_model(pixels, ids, None, None, None, None, past_key_values=None)
    with pytest.raises(TypeError, match="at most 11 .*loss_weight"):
        qwen2_model(pixels, ids, *([None] * 10))


# ---- 2. the original's plain attributes ------------------------------------------------------------------------


@pytest.fixture(scope="module", params=sorted(CASES))
def heldout_case(request):
    case = request.param
    record = json.loads((ORIGINAL_API / f"{case}.json").read_text())
    return case, record, load_file(ORIGINAL_API / f"{case}.safetensors")


def _load_heldout(case: str):
    return AutoModel.from_pretrained(Path(HELDOUT_S7) / case, image_token_id=image_context_id(case)).eval()


def test_select_layer_and_ps_version_assignments_match_the_original(heldout_case):
    case, _, expected = heldout_case
    model = _load_heldout(case)
    tiles = pixel_values(model.config.vision_image_size)
    keys = [key for key in expected if key.startswith("extract_feature.")]
    assert len(keys) == 3
    for key in keys:
        select_layer, ps_version = re.fullmatch(
            r"extract_feature\.select_layer=(-?\d+)\.ps_version=(v\d)", key
        ).groups()
        model.select_layer, model.ps_version = int(select_layer), ps_version
        assert model.config.select_layer == int(select_layer) and model.config.ps_version == ps_version
        with torch.no_grad():
            features = model.extract_feature(tiles)[:, ::17]
        assert (features - expected[key]).abs().max().item() <= 1e-5, key
    # The assignments change the features (with 2 ViT layers, select_layer 1 and -2 are the same layer).
    records = [expected[key] for key in keys]
    assert max((a - b).abs().max().item() for a in records for b in records) > 1e-2


def test_bad_attribute_values_are_refused_and_the_old_value_kept():
    model = load_model()
    layers = model.config.vision_config.num_hidden_layers
    with pytest.raises(ValueError, match="select_layer"):
        model.select_layer = layers + 5
    with pytest.raises(TypeError, match="select_layer"):
        model.select_layer = 1.5
    with pytest.raises(ValueError, match="ps_version"):
        model.ps_version = "v3"
    assert model.select_layer == -1 and model.ps_version == "v2"


def test_attributes_fixed_by_the_weights_refuse_a_change():
    model = load_model()
    with pytest.raises(ValueError, match=r"downsample_ratio.*mlp1"):
        model.downsample_ratio = 0.25
    with pytest.raises(ValueError, match=r"patch_size.*patch embedding"):
        model.patch_size = 16
    with pytest.raises(ValueError, match="llm_arch_name"):
        model.llm_arch_name = "LlamaForCausalLM"
    # The current values can be assigned (scripts re-set them), and change nothing.
    model.downsample_ratio, model.patch_size, model.llm_arch_name = 0.5, 14, "Qwen2ForCausalLM"
    assert (model.downsample_ratio, model.patch_size, model.llm_arch_name) == (0.5, 14, "Qwen2ForCausalLM")


def test_num_samples_and_tower_assignment_as_the_original():
    model = load_model()
    assert model.num_samples == 0  # the original's counter
    model.num_samples += 3
    assert model.num_samples == 3 and type(model).num_samples == 0
    keys = set(model.state_dict())
    vision = model.vision_model
    model.vision_model = vision  # the original's tools/merge_lora.py assigns the towers
    model.language_model = model.language_model
    assert list(model._modules) == ["model", "lm_head"]  # no second, top-level copy
    assert set(model.state_dict()) == keys and model.model.vision_model is vision


# ---- 3. wrap_llm_lora / wrap_backbone_lora ----------------------------------------------------------------------


def _original_name(name: str) -> str:
    name = name.replace("model.language_model.base_model.model.", "language_model.base_model.model.model.")
    return re.sub(r"^model\.(vision_model|mlp1)\.", r"\1.", name)


def test_wrap_lora_matches_the_original(heldout_case, tmp_path):
    case, record, expected = heldout_case
    model = _load_heldout(case)
    ids = input_ids(case, model.num_image_token)
    tiles = pixel_values(model.config.vision_image_size)
    positions = logit_positions(ids.shape[1])
    with torch.no_grad():
        plain = model(input_ids=ids, pixel_values=tiles).logits[:, positions]
    assert model.num_samples == record["num_samples_before_wrap"]
    model.wrap_backbone_lora(r=2, lora_alpha=2, lora_dropout=0.0)
    model.wrap_llm_lora(r=4, lora_alpha=12, lora_dropout=0.0)

    trainable = sorted(_original_name(name) for name, p in model.named_parameters() if p.requires_grad)
    assert trainable == record["trainable"]  # LoRA of both towers + mlp1 (the head is frozen, as in the original)
    scalings = {
        _original_name(name): module.scaling["default"]
        for name, module in model.named_modules()
        if isinstance(getattr(module, "scaling", None), dict)  # PEFT's LoRA layers (InternLM2 attention: a float)
    }
    assert scalings == record["scalings"]  # lora_alpha / r per wrapped layer: 1 in the ViT, 3 in the LLM
    assert model.language_model.get_input_embeddings()(ids[:, :3]).requires_grad  # enable_input_require_grads

    parameters = dict(model.named_parameters())
    loras = [name for name in parameters if ".lora_" in name]
    assert len(loras) == sum(key.startswith("lora.") for key in expected)
    with torch.no_grad():
        for name in loras:
            parameters[name].copy_(expected[f"lora.{_original_name(name)}"])
        wrapped = model(input_ids=ids, pixel_values=tiles).logits[:, positions]
    assert (wrapped - expected["logits"]).abs().max().item() <= 1e-4
    assert (plain - expected["logits"]).abs().max().item() > 0.1  # the LoRA matters

    with pytest.raises(ValueError, match=r"language_model.*merge_and_unload"):
        model.save_pretrained(tmp_path / "wrapped")
    assert not (tmp_path / "wrapped").exists()
    # The original's tools/merge_lora.py, line by line.
    model.language_model.merge_and_unload()
    model.language_model = model.language_model.model
    model.vision_model.merge_and_unload()
    model.vision_model = model.vision_model.model
    model.save_pretrained(tmp_path / "merged")
    reloaded = AutoModel.from_pretrained(tmp_path / "merged", image_token_id=image_context_id(case)).eval()
    with torch.no_grad():
        merged = reloaded(input_ids=ids, pixel_values=tiles).logits[:, positions]
    assert (merged - expected["logits"]).abs().max().item() <= 1e-4


def test_wrap_lora_trains_the_adapters_and_the_projector():
    model = load_model()
    model.wrap_llm_lora(r=2, lora_alpha=4, lora_dropout=0.0)
    model.wrap_backbone_lora(r=2, lora_alpha=4, lora_dropout=0.0)
    model.train()
    ids = torch.tensor([[5, 6] + [QWEN2_IMAGE_TOKEN_ID] * model.num_image_token + [7, 8]])
    model(ids, torch.randn(1, 3, 448, 448), labels=ids).loss.backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert with_grad == trainable
    assert {name.split(".")[1] for name in with_grad} == {"vision_model", "mlp1", "language_model"}
    assert all(".lora_" in name for name in with_grad if not name.startswith("model.mlp1."))
    with pytest.raises(ValueError, match="already wrapped"):
        model.wrap_llm_lora(r=2)
    with pytest.raises(ValueError, match="already wrapped"):
        model.wrap_backbone_lora(r=2)


def test_wrap_llm_lora_without_original_targets_is_not_implemented():
    model = load_model()
    model.config.text_config.architectures = ["Qwen3ForCausalLM"]  # an LLM the original has no targets for
    with pytest.raises(NotImplementedError, match="Qwen3ForCausalLM"):
        model.wrap_llm_lora()
    assert not hasattr(model.model.language_model, "peft_config")


# ---- 4. batch_chat(history=...) ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{"history": []}, {"return_history": True}, {"history": [("q", "a")]}])
def test_batch_chat_history_is_not_implemented_as_in_the_original(qwen2_model, qwen2_tokenizer, kwargs):
    with pytest.raises(NotImplementedError, match="multi-turn"):
        qwen2_model.batch_chat(qwen2_tokenizer, None, ["a", "b"], {"max_new_tokens": 1}, [0, 0], **kwargs)


# ---- 5. downsample_ratio: processor and model config agree -------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.3, 1 / 3, 0.6])
def test_downsample_ratio_the_pixel_unshuffle_cannot_apply_is_refused_everywhere(ratio, qwen2_tokenizer, tmp_path):
    # The original gives num_image_token int(1024 * 0.3**2) = 92 and then fails in pixel_shuffle at the first image.
    image_processor = qwen2_processor().image_processor
    message = rf"`downsample_ratio` \({re.escape(str(ratio))}\) must be 1/k"
    with pytest.raises(ValueError, match=message):
        InternVLChatProcessor(image_processor, qwen2_tokenizer, downsample_ratio=ratio)
    folder = original_model_dir(tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    config["downsample_ratio"] = ratio
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        AutoProcessor.from_pretrained(folder)
    with pytest.raises(ValueError, match=message):
        InternVLChatConfig.from_pretrained(folder)


@pytest.mark.parametrize(("ratio", "tokens"), [(0.5, 256), (0.25, 64), (1.0, 1024)])
def test_downsample_ratios_that_apply_give_the_original_token_count(ratio, tokens, qwen2_tokenizer):
    image_processor = qwen2_processor().image_processor
    processor = InternVLChatProcessor(image_processor, qwen2_tokenizer, downsample_ratio=ratio)
    assert processor.num_image_token == tokens  # int((448 // 14) ** 2 * ratio ** 2)


# ---- 6. a damaged chat_template.json ----------------------------------------------------------------------------


@pytest.mark.parametrize(("content", "problem"), [('{"chat_template": "x", ', "not valid JSON"), ('["x"]', "a list")])
@pytest.mark.parametrize("loader", [AutoProcessor, InternVLChatProcessor])
def test_damaged_chat_template_json_is_named(qwen2_model_dir, tmp_path, content, problem, loader):
    folder = tmp_path / "model"
    folder.mkdir()
    for file in qwen2_model_dir.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    (folder / "chat_template.json").write_text(content)
    with pytest.raises(OSError, match=rf"chat_template\.json.*{problem}"):
        loader.from_pretrained(folder)


# ---- 7. chat --votes has an upper bound --------------------------------------------------------------------------


def test_chat_votes_upper_bound_is_a_usage_error(qwen2_model_dir, capsys):
    from transformers_internvl.cli.common import MAX_VOTES

    assert main(["chat", str(qwen2_model_dir), "--prompt", "2+2?", "--votes", str(10**9)]) == 2
    err = capsys.readouterr().err
    assert f"at most {MAX_VOTES} votes" in err and "Traceback" not in err
    assert main(["chat", str(qwen2_model_dir), "--prompt", "2+2?", "--votes", str(MAX_VOTES + 1)]) == 2
    capsys.readouterr()
    # MAX_VOTES itself passes the parser (this call then stops at the next check: --votes needs --prompt).
    assert main(["chat", str(qwen2_model_dir), "--votes", str(MAX_VOTES)]) == 1
    assert "--votes needs --prompt" in capsys.readouterr().err


# ---- 8. image_token_id outside the vocabulary --------------------------------------------------------------------


@pytest.mark.parametrize("offset", [0, 5, 10**6])
def test_image_token_id_outside_the_vocabulary_is_refused_at_load(tmp_path, offset):
    folder = original_model_dir(tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    vocab_size = config["llm_config"]["vocab_size"]
    config["image_token_id"] = vocab_size + offset
    (folder / "config.json").write_text(json.dumps(config))
    message = (
        rf"`image_token_id` \({vocab_size + offset}\) must be a token id below `llm_config.vocab_size` \({vocab_size}\)"
    )
    with pytest.raises(ValueError, match=message):
        AutoModel.from_pretrained(folder)
    with pytest.raises(ValueError, match=message):
        AutoModel.from_pretrained(QWEN2_DIR, image_token_id=vocab_size + offset)


def test_last_vocabulary_id_is_a_valid_image_token_id():
    vocab_size = json.loads((QWEN2_DIR / "config.json").read_text())["llm_config"]["vocab_size"]
    model = load_model(image_token_id=vocab_size - 1)
    assert model.config.image_token_id == vocab_size - 1
