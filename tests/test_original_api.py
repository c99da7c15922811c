"""Code copied from OpenGVLab model cards, demos and training scripts runs with only `trust_remote_code` removed:
`use_flash_attn` / `low_cpu_mem_usage`, `AutoModel` + `chat`, the original model's attributes, `split_model()`
device maps, and saving next to the original remote-code files (issue 8, sections 2 and 3)."""

import json
import logging
import math
import shutil
import threading
from pathlib import Path

import pytest
import torch
from helpers import INTERNLM2_DIR, QWEN2_DIR, QWEN2_TOKENIZER, image_token_id
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    AutoTokenizer,
    GenerationMixin,
    TextIteratorStreamer,
)

import transformers_internvl  # noqa: F401
from transformers_internvl import InternVLForConditionalGeneration, InternVLModel
from transformers_internvl.chat_templates import INTERNVL2_5_SYSTEM_MESSAGE
from transformers_internvl.modeling import original_api
from transformers_internvl.modeling.conversation import Conversation

AUTO_MAP = {
    "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
    "AutoModel": "modeling_internvl_chat.InternVLChatModel",
    "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel",
}
# Stand-ins for the original remote-code files (their content only has to travel unchanged).
REMOTE_CODE = {
    "configuration_internvl_chat.py": "# stand-in: InternVLChatConfig\n",
    "configuration_intern_vit.py": "# stand-in: InternVisionConfig\n",
    "modeling_internvl_chat.py": "# stand-in: InternVLChatModel\n",
    "modeling_intern_vit.py": "# stand-in: InternVisionModel\n",
    "conversation.py": "# stand-in: conversation templates\n",
}


def _io(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "io.safetensors")


def _logits(model, io) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=io["input_ids"], pixel_values=io["pixel_values"]).logits


def _original_folder(tmp_path: Path, source: Path = QWEN2_DIR, remote_code: bool = True) -> Path:
    """An original checkpoint folder: weights, config.json with the original auto_map, remote-code files, tokenizer."""
    folder = tmp_path / "original"
    folder.mkdir()
    shutil.copy(source / "model.safetensors", folder / "model.safetensors")
    config = json.loads((source / "config.json").read_text())
    config["auto_map"] = AUTO_MAP
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if remote_code:
        for name, text in REMOTE_CODE.items():
            (folder / name).write_text(text)
    if source == QWEN2_DIR:
        for name in ("tokenizer_config.json", "tokenizer.json", "added_tokens.json", "special_tokens_map.json"):
            shutil.copy(QWEN2_TOKENIZER / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def tokenizer(qwen2_tokenizer):
    return qwen2_tokenizer


@pytest.fixture(scope="module")
def model():
    return AutoModelForImageTextToText.from_pretrained(QWEN2_DIR).eval()


@pytest.fixture
def fresh_model():
    return AutoModelForImageTextToText.from_pretrained(QWEN2_DIR).eval()


class _RecordingGenerate:
    def __init__(self, model):
        self.original = model.generate
        self.calls = []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        return self.original(**kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# 1. use_flash_attn / low_cpu_mem_usage
# ---------------------------------------------------------------------------------------------------------------------


def _attention_implementations(model) -> set[str]:
    return {
        model.config._attn_implementation,
        model.model.language_model.config._attn_implementation,
        model.model.vision_model.config._attn_implementation,
    }


def test_use_flash_attn_false_is_eager_with_the_eager_numbers():
    io = _io(QWEN2_DIR)
    model = AutoModelForImageTextToText.from_pretrained(
        QWEN2_DIR, use_flash_attn=False, low_cpu_mem_usage=True, image_token_id=image_token_id(QWEN2_DIR)
    ).eval()
    assert _attention_implementations(model) == {"eager"}
    assert model.config.vision_config.use_flash_attn is False
    eager = AutoModelForImageTextToText.from_pretrained(
        QWEN2_DIR, attn_implementation="eager", image_token_id=image_token_id(QWEN2_DIR)
    ).eval()
    assert torch.equal(_logits(model, io), _logits(eager, io))
    # The original implementation's logits (fixture) within float32 noise.
    torch.testing.assert_close(_logits(model, io), io["logits"], rtol=1e-4, atol=1e-4)


def test_use_flash_attn_true_without_flash_attn_falls_back_to_eager_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(original_api, "is_flash_attn_2_available", lambda: False)
    logging.Logger.warning_once.cache_clear()  # transformers memoises warning_once per process
    with caplog.at_level(logging.WARNING, logger="transformers_internvl"):
        first = AutoModel.from_pretrained(QWEN2_DIR, use_flash_attn=True, low_cpu_mem_usage=True)
        second = AutoModel.from_pretrained(QWEN2_DIR, use_flash_attn=True)
    assert _attention_implementations(first) == _attention_implementations(second) == {"eager"}
    assert first.config.vision_config.use_flash_attn is False
    warnings = [record for record in caplog.records if "use_flash_attn=True" in record.getMessage()]
    assert len(warnings) == 1
    assert "eager" in warnings[0].getMessage()


def test_use_flash_attn_true_with_flash_attn_selects_flash_attention_2(monkeypatch):
    monkeypatch.setattr(original_api, "is_flash_attn_2_available", lambda: True)
    kwargs = {"use_flash_attn": True, "low_cpu_mem_usage": True, "dtype": torch.bfloat16}
    assert original_api.resolve_attention_options(kwargs) is True
    assert kwargs == {"attn_implementation": "flash_attention_2", "dtype": torch.bfloat16}
    kwargs = {"use_flash_attn": False}
    assert original_api.resolve_attention_options(kwargs) is False
    assert kwargs == {"attn_implementation": "eager"}
    kwargs = {"attn_implementation": "sdpa"}
    assert original_api.resolve_attention_options(kwargs) is None
    assert kwargs == {"attn_implementation": "sdpa"}


def test_use_flash_attn_rejects_conflicts_and_non_bools():
    with pytest.raises(ValueError, match="use_flash_attn.*attn_implementation"):
        AutoModelForImageTextToText.from_pretrained(QWEN2_DIR, use_flash_attn=False, attn_implementation="sdpa")
    with pytest.raises(TypeError, match="use_flash_attn"):
        AutoModelForImageTextToText.from_pretrained(QWEN2_DIR, use_flash_attn="yes")


# ---------------------------------------------------------------------------------------------------------------------
# 2. AutoModel is the chat model
# ---------------------------------------------------------------------------------------------------------------------


def test_model_card_snippet_automodel_chat(tmp_path, monkeypatch, tokenizer, model):
    """The model card's loading lines with `trust_remote_code=True` removed, then `model.chat(...)`."""
    folder = _original_folder(tmp_path)
    monkeypatch.setattr("builtins.input", lambda *args: pytest.fail("prompted for trust_remote_code"))
    card_model = AutoModel.from_pretrained(
        folder, torch_dtype=torch.float32, low_cpu_mem_usage=True, use_flash_attn=True
    ).eval()
    assert type(card_model) is InternVLForConditionalGeneration
    assert isinstance(card_model, GenerationMixin)
    assert isinstance(card_model.base_model, InternVLModel)
    card_tokenizer = AutoTokenizer.from_pretrained(folder, use_fast=False)
    torch.manual_seed(0)
    pixel_values = torch.randn(1, 3, 448, 448)
    generation_config = dict(max_new_tokens=3, do_sample=False)
    question = "<image>\nPlease describe the image shortly."
    response = card_model.chat(card_tokenizer, pixel_values, question, generation_config)
    assert response == model.chat(tokenizer, pixel_values, question, dict(generation_config))
    # The same image twice in a batch: both answers are the single-sample answer.
    responses = card_model.batch_chat(
        card_tokenizer,
        pixel_values.repeat(2, 1, 1, 1),
        [question, question],
        generation_config,
        num_patches_list=[1, 1],
    )
    assert responses == [response, response]


def test_base_model_stays_available():
    base = InternVLModel.from_pretrained(QWEN2_DIR, image_token_id=image_token_id(QWEN2_DIR)).eval()
    full = AutoModel.from_pretrained(QWEN2_DIR, image_token_id=image_token_id(QWEN2_DIR)).eval()
    io = _io(QWEN2_DIR)
    with torch.no_grad():
        hidden = base(input_ids=io["input_ids"], pixel_values=io["pixel_values"]).last_hidden_state
        assert torch.equal(full.lm_head(hidden), _logits(full, io))


# ---------------------------------------------------------------------------------------------------------------------
# 3. The original model's attributes
# ---------------------------------------------------------------------------------------------------------------------

DEFAULT_SYSTEM_BLOCK = "<|im_start|>system\n" + INTERNVL2_5_SYSTEM_MESSAGE + "<|im_end|>\n"
USER_TURN = "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"


def _sent_prompt(model, tokenizer, monkeypatch, call):
    recorder = _RecordingGenerate(model)
    monkeypatch.setattr(model, "generate", recorder)
    call()
    monkeypatch.undo()
    return [
        tokenizer.decode(ids[mask.bool()])
        for ids, mask in zip(recorder.calls[0]["input_ids"], recorder.calls[0]["attention_mask"])
    ]


def test_system_message_assignment(fresh_model, tokenizer, monkeypatch):
    model = fresh_model
    assert model.system_message == INTERNVL2_5_SYSTEM_MESSAGE
    config = dict(max_new_tokens=1, do_sample=False)

    def chat():
        model.chat(tokenizer, None, "Hello", dict(config))

    assert _sent_prompt(model, tokenizer, monkeypatch, chat) == [DEFAULT_SYSTEM_BLOCK + USER_TURN]
    model.system_message = ""
    # An empty system message still renders the system block, as the original's Conversation.get_prompt().
    assert _sent_prompt(model, tokenizer, monkeypatch, chat) == ["<|im_start|>system\n<|im_end|>\n" + USER_TURN]
    model.system_message = "You are a careful assistant."
    expected = "<|im_start|>system\nYou are a careful assistant.<|im_end|>\n" + USER_TURN
    assert _sent_prompt(model, tokenizer, monkeypatch, chat) == [expected]

    def batch_chat():
        model.batch_chat(tokenizer, None, ["Hello", "Hello"], dict(config), num_patches_list=[0, 0])

    assert _sent_prompt(model, tokenizer, monkeypatch, batch_chat) == [expected, expected]
    del model.system_message
    assert model.system_message == INTERNVL2_5_SYSTEM_MESSAGE
    with pytest.raises(TypeError, match="system_message"):
        model.system_message = None


def test_template_assignment_keeps_the_load_time_system_message(fresh_model, tokenizer, monkeypatch):
    model = fresh_model
    assert model.template == "internvl2_5"
    model.template = "Hermes-2"
    prompt = _sent_prompt(
        model, tokenizer, monkeypatch, lambda: model.chat(tokenizer, None, "Hello", {"max_new_tokens": 1})
    )
    # Hermes-2 separators (no newline after <|im_end|>), the system message set at load time (internvl2_5's).
    assert prompt == [
        "<|im_start|>system\n" + INTERNVL2_5_SYSTEM_MESSAGE + "<|im_end|><|im_start|>user\nHello<|im_end|>"
        "<|im_start|>assistant\n"
    ]
    with pytest.raises(ValueError, match="Unknown conversation template"):
        model.template = "no-such-template"


def test_img_context_token_id_is_config_image_token_id(fresh_model, tokenizer):
    model = fresh_model
    assert model.img_context_token_id is None and model.config.image_token_id is None
    model.img_context_token_id = 995
    assert model.config.image_token_id == 995
    model.config.image_token_id = 7
    assert model.img_context_token_id == 7
    model.img_context_token_id = None
    model.chat(tokenizer, None, "Hello", {"max_new_tokens": 1})  # chat sets it from the tokenizer, as the original
    assert model.img_context_token_id == tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>") == 995
    with pytest.raises(TypeError, match="img_context_token_id"):
        model.img_context_token_id = "<IMG_CONTEXT>"


def test_conv_template_and_read_only_attributes(fresh_model):
    model = fresh_model
    conversation = model.conv_template
    assert isinstance(conversation, Conversation)
    assert model.conv_template is conversation  # one object per model, as the original's attribute
    assert conversation.sep == "<|im_end|>\n"
    assert conversation.roles == ("<|im_start|>user\n", "<|im_start|>assistant\n")
    assert conversation.system_message == INTERNVL2_5_SYSTEM_MESSAGE
    conversation.system_message = "S"
    conversation.append_message(conversation.roles[0], "Q")
    conversation.append_message(conversation.roles[1], None)
    assert (
        conversation.get_prompt()
        == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
    )
    with pytest.raises(TypeError, match="conv_template"):
        model.conv_template = "internvl2_5"
    assert model.num_image_token == 256 == model.config.num_image_token
    with pytest.raises(AttributeError, match="num_image_token"):
        model.num_image_token = 64
    assert (model.select_layer, model.downsample_ratio, model.ps_version, model.patch_size) == (-1, 0.5, "v2", 14)
    assert model.llm_arch_name == "Qwen2ForCausalLM"


def test_config_llm_config_is_text_config():
    config = AutoConfig.from_pretrained(QWEN2_DIR)
    assert config.llm_config is config.text_config
    assert config.llm_config.num_hidden_layers == 2
    other = AutoConfig.from_pretrained(INTERNLM2_DIR).text_config
    config.llm_config = other
    assert config.text_config is other


def test_readme_streaming_recipe(model, tokenizer):
    """The README's streaming example: chat() in a thread, a TextIteratorStreamer, `model.conv_template.sep`."""
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=60)
    generation_config = dict(max_new_tokens=6, do_sample=False, streamer=streamer)
    torch.manual_seed(0)
    pixel_values = torch.randn(1, 3, 448, 448)
    question = "<image>\nDescribe the image."
    thread = threading.Thread(
        target=model.chat,
        kwargs=dict(
            tokenizer=tokenizer,
            pixel_values=pixel_values,
            question=question,
            history=None,
            return_history=False,
            generation_config=generation_config,
        ),
    )
    thread.start()
    generated_text = ""
    for new_text in streamer:
        if new_text == model.conv_template.sep:
            break
        generated_text += new_text
    thread.join()
    assert generated_text.strip() == model.chat(
        tokenizer, pixel_values, question, dict(max_new_tokens=6, do_sample=False)
    )


# ---------------------------------------------------------------------------------------------------------------------
# 4. split_model() device maps with the original module names
# ---------------------------------------------------------------------------------------------------------------------


def split_model(num_layers: int, devices: list) -> dict:
    """Shaped like the model cards' split_model(): the first device counts as half (it also holds the ViT), LLM layers
    fill the devices in order, and the ViT, projector, embeddings (both spellings), final norm, rotary embedding,
    head (both spellings) and the last layer go to the first device."""
    per_device = math.ceil(num_layers / (len(devices) - 0.5))
    counts = [per_device] * len(devices)
    counts[0] = math.ceil(counts[0] * 0.5)
    device_map, layer = {}, 0
    for device, count in zip(devices, counts):
        for _ in range(count):
            if layer < num_layers:
                device_map[f"language_model.model.layers.{layer}"] = device
                layer += 1
    for name in (
        "vision_model",
        "mlp1",
        "language_model.model.tok_embeddings",
        "language_model.model.embed_tokens",
        "language_model.output",
        "language_model.model.norm",
        "language_model.model.rotary_emb",
        "language_model.lm_head",
        f"language_model.model.layers.{num_layers - 1}",
    ):
        device_map[name] = devices[0]
    return device_map


@pytest.mark.parametrize(
    "directory, embeddings",
    [(QWEN2_DIR, "embed_tokens"), (INTERNLM2_DIR, "tok_embeddings")],
    ids=["qwen2", "internlm2"],
)
def test_split_model_device_map_loads_with_the_one_device_logits(tmp_path, directory, embeddings):
    device_map = split_model(2, ["cpu", "disk"])
    # Two layers all land on the first device; move layer 0 and the projector to the second to get a real split.
    device_map["language_model.model.layers.0"] = "disk"
    device_map["mlp1"] = "disk"
    token_id = image_token_id(directory)
    split = AutoModel.from_pretrained(
        directory, device_map=device_map, offload_folder=tmp_path / "offload", image_token_id=token_id
    ).eval()
    expected = {
        "model.vision_model": "cpu",
        "model.mlp1": "disk",
        "model.language_model.layers.0": "disk",
        "model.language_model.layers.1": "cpu",
        f"model.language_model.{embeddings}": "cpu",
        "model.language_model.norm": "cpu",
        "model.language_model.rotary_emb": "cpu",
        "lm_head": "cpu",
    }
    assert split.hf_device_map == expected
    one_device = AutoModel.from_pretrained(directory, image_token_id=token_id).eval()
    io = _io(directory)
    assert torch.equal(_logits(split, io), _logits(one_device, io))


def test_original_device_map_on_one_device_and_for_the_base_model():
    device_map = split_model(2, ["cpu"])
    model = AutoModelForImageTextToText.from_pretrained(QWEN2_DIR, device_map=device_map)
    assert {parameter.device.type for parameter in model.parameters()} == {"cpu"}
    names = original_api.module_names(InternVLModel, model.config)
    # The base model has no head: the head entries are dropped, the rest keeps the base model's names.
    assert original_api.translate_device_map(device_map, names) == {
        "language_model.layers.0": "cpu",
        "language_model.layers.1": "cpu",
        "vision_model": "cpu",
        "mlp1": "cpu",
        "language_model.embed_tokens": "cpu",
        "language_model.norm": "cpu",
        "language_model.rotary_emb": "cpu",
    }


def test_device_map_translation_rules():
    config = AutoConfig.from_pretrained(QWEN2_DIR)
    names = original_api.module_names(InternVLForConditionalGeneration, config)
    translate = original_api.translate_device_map
    assert translate({"language_model": 1, "vision_model.encoder.layers.0": 0, "": "cpu"}, names) == {
        "model.language_model": 1,
        "lm_head": 1,
        "model.vision_model.encoder.layers.0": 0,
        "": "cpu",
    }
    # Only the InternLM2 spelling given: it names the Qwen2 module of the same role.
    assert translate({"language_model.model.tok_embeddings": 0, "language_model.output": 1}, names) == {
        "model.language_model.embed_tokens": 0,
        "lm_head": 1,
    }
    # This package's own names pass through, also mixed with original ones.
    assert translate({"model.mlp1": 0, "vision_model": 1}, names) == {"model.mlp1": 0, "model.vision_model": 1}
    # An LLM without a model-level rotary embedding (the original InternLM2): the weightless entry is dropped.
    without_rotary = {name for name in names if "rotary_emb" not in name}
    assert translate({"language_model.model.rotary_emb": 0, "mlp1": 0}, without_rotary) == {"model.mlp1": 0}
    with pytest.raises(ValueError, match=r"language_model\.model\.layers\.7"):
        translate({"language_model.model.layers.7": 0}, names)
    with pytest.raises(ValueError, match="visual"):
        translate({"vision_model": 0, "visual": 0}, names)
    with pytest.raises(ValueError, match="both name the module 'lm_head'"):
        translate({"language_model.lm_head": 0, "language_model.output": 1}, names)
    with pytest.raises(ValueError, match=r"language_model\.model\.layers\.9"):
        AutoModelForImageTextToText.from_pretrained(QWEN2_DIR, device_map={"language_model.model.layers.9": "cpu"})


# ---------------------------------------------------------------------------------------------------------------------
# 5. save_pretrained next to the original remote code
# ---------------------------------------------------------------------------------------------------------------------


def test_save_pretrained_keeps_remote_code_auto_map_and_architecture(tmp_path):
    folder = _original_folder(tmp_path)
    model = AutoModel.from_pretrained(folder)
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    for name, text in REMOTE_CODE.items():
        assert (saved / name).read_text() == text
    config = json.loads((saved / "config.json").read_text())
    assert config["architectures"] == ["InternVLChatModel"]
    assert config["auto_map"] == AUTO_MAP
    assert "llm_config" in config and config["model_type"] == "internvl_chat"
    assert not list(saved.glob(".*.tmp"))
    # The saved folder is itself an original folder: it reloads, and saves its code onwards.
    reloaded = AutoModel.from_pretrained(saved, image_token_id=image_token_id(QWEN2_DIR))
    io = _io(QWEN2_DIR)
    model.config.image_token_id = image_token_id(QWEN2_DIR)
    assert torch.equal(_logits(reloaded.eval(), io), _logits(model.eval(), io))
    again = tmp_path / "again"
    reloaded.save_pretrained(again)
    assert sorted(path.name for path in again.glob("*.py")) == sorted(REMOTE_CODE)
    # Saving onto the folder it was loaded from leaves the files as they are.
    reloaded.save_pretrained(saved)
    assert (saved / "conversation.py").read_text() == REMOTE_CODE["conversation.py"]


def test_save_pretrained_without_remote_code_writes_no_code(tmp_path):
    folder = _original_folder(tmp_path, remote_code=False)
    model = AutoModel.from_pretrained(folder)
    model.save_pretrained(tmp_path / "saved")
    assert not list((tmp_path / "saved").glob("*.py"))
    built = InternVLForConditionalGeneration(AutoConfig.from_pretrained(QWEN2_DIR))
    built.save_pretrained(tmp_path / "built")
    config = json.loads((tmp_path / "built" / "config.json").read_text())
    assert config["architectures"] == ["InternVLChatModel"] and "auto_map" not in config
    assert not list((tmp_path / "built").glob("*.py"))


@pytest.mark.parametrize(
    ("stored_eos", "expected"),
    [(None, "stop"), (0, [0, "stop"]), ([0, 1], [0, 1, "stop"]), ("stop", "stop"), ([0, "stop"], [0, "stop"])],
)
def test_generation_config_gets_the_template_stop_token(tmp_path, stored_eos, expected):
    """The template's end token (what the original chat() passes as `eos_token_id`) joins whatever eos the
    checkpoint's generation_config.json names, so plain `generate` stops where chat() does (Phi-3: `<|end|>` beside
    `<|endoftext|>`)."""
    folder = _original_folder(tmp_path, remote_code=False)
    stop = AutoTokenizer.from_pretrained(folder).convert_tokens_to_ids("<|im_end|>")
    resolve = lambda value: stop if value == "stop" else value  # noqa: E731
    stored = [resolve(v) for v in stored_eos] if isinstance(stored_eos, list) else resolve(stored_eos)
    if stored is not None:
        (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": stored}))
    model = AutoModelForImageTextToText.from_pretrained(folder)
    expected = [resolve(v) for v in expected] if isinstance(expected, list) else resolve(expected)
    assert model.generation_config.eos_token_id == expected
