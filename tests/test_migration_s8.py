"""Session 8: scripts written for the original remote code, migrated to this package.

* The original evaluation scripts load with `InternVLChatModel.from_pretrained(ckpt, low_cpu_mem_usage=True,
  torch_dtype=torch.bfloat16, load_in_8bit=args.load_in_8bit, load_in_4bit=args.load_in_4bit)`
  (`internvl_chat/internvl/model/__init__.py`, `load_model_and_tokenizer`), and the model cards' 8-bit example passes
  `load_in_8bit=True`. transformers 5 removed both options (its models' `__init__` rejects them), so these lines
  failed with `TypeError: ...__init__() got an unexpected keyword argument 'load_in_8bit'`, even with `False`.
* The model cards' loading lines keep `trust_remote_code=True`: with this package imported, every factory still
  returns this package's classes and no remote code is imported (transformers 5 prefers classes registered from
  outside transformers over a checkpoint's `auto_map`).
"""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from helpers import FIXTURES, QWEN2_DIR, original_model_dir
from transformers import AutoModel, BitsAndBytesConfig, PreTrainedModel

import transformers_internvl  # noqa: F401
from transformers_internvl import InternVLChatBaseModel, InternVLChatModel


@pytest.fixture
def captured_load_kwargs(monkeypatch):
    """Replaces transformers' `PreTrainedModel.from_pretrained` (what this package's loader calls last) by a recorder:
    bitsandbytes and a CUDA device are not needed to see what reaches transformers."""
    seen = {}

    def record(cls, path, *args, **kwargs):
        seen.update(kwargs)
        raise _Stop

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(record))
    return seen


class _Stop(Exception):
    pass


@pytest.mark.parametrize("model_class", [InternVLChatModel, InternVLChatBaseModel, AutoModel])
def test_original_eval_loader_with_quantization_off_loads(model_class):
    """`load_model_and_tokenizer` of the original evaluation scripts, without `--load-in-8bit` / `--load-in-4bit`."""
    model = model_class.from_pretrained(
        QWEN2_DIR, low_cpu_mem_usage=True, torch_dtype=torch.bfloat16, load_in_8bit=False, load_in_4bit=False
    ).eval()
    reference = model_class.from_pretrained(QWEN2_DIR, dtype=torch.bfloat16).eval()
    assert model.dtype == torch.bfloat16
    assert getattr(model.config, "quantization_config", None) is None
    for (name, value), (_, expected) in zip(model.state_dict().items(), reference.state_dict().items(), strict=True):
        assert torch.equal(value, expected), name


@pytest.mark.parametrize(("option", "field"), [("load_in_8bit", "load_in_8bit"), ("load_in_4bit", "load_in_4bit")])
def test_load_in_nbit_true_becomes_a_bitsandbytes_config(option, field, captured_load_kwargs, caplog):
    """The model card's `load_in_8bit=True` (transformers 4's spelling) reaches transformers 5 as the
    `quantization_config=BitsAndBytesConfig(load_in_8bit=True)` that replaced it, with one warning naming it."""
    with pytest.raises(_Stop):
        AutoModel.from_pretrained(
            QWEN2_DIR, torch_dtype=torch.bfloat16, **{option: True}, low_cpu_mem_usage=True, use_flash_attn=True
        )
    config = captured_load_kwargs["quantization_config"]
    assert isinstance(config, BitsAndBytesConfig)
    assert getattr(config, field) is True
    other = "load_in_4bit" if field == "load_in_8bit" else "load_in_8bit"
    assert getattr(config, other) is False
    assert option not in captured_load_kwargs
    assert "BitsAndBytesConfig" in caplog.text


def test_load_in_nbit_false_leaves_nothing_behind(captured_load_kwargs):
    with pytest.raises(_Stop):
        InternVLChatModel.from_pretrained(QWEN2_DIR, load_in_8bit=False, load_in_4bit=False)
    assert "quantization_config" not in captured_load_kwargs
    assert "load_in_8bit" not in captured_load_kwargs and "load_in_4bit" not in captured_load_kwargs


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"load_in_8bit": True, "load_in_4bit": True}, ValueError, "not both"),
        ({"load_in_8bit": True, "quantization_config": BitsAndBytesConfig(load_in_4bit=True)}, ValueError, "not both"),
        ({"load_in_8bit": "yes"}, TypeError, "load_in_8bit"),
        ({"load_in_4bit": 1}, TypeError, "load_in_4bit"),
    ],
)
def test_load_in_nbit_conflicts_and_non_bools(kwargs, error, message):
    with pytest.raises(error, match=message):
        InternVLChatModel.from_pretrained(QWEN2_DIR, **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# The model card's loading lines kept verbatim: trust_remote_code=True, use_flash_attn=True, low_cpu_mem_usage=True
# ---------------------------------------------------------------------------------------------------------------------

HELDOUT_S6 = FIXTURES / "heldout_s6"
sys.path.insert(0, str(HELDOUT_S6))
from heldout_inputs import make_image  # noqa: E402

# The original checkpoints' remote-code files (config.json / tokenizer_config.json `auto_map` point into them).
REMOTE_CODE_FILES = (
    "configuration_intern_vit.py",
    "configuration_internvl_chat.py",
    "modeling_intern_vit.py",
    "modeling_internvl_chat.py",
    "conversation.py",
    "configuration_internlm2.py",
    "modeling_internlm2.py",
    "tokenization_internlm2.py",
    "tokenization_internlm2_fast.py",
)
AUTO_MAP = {
    "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
    "AutoModel": "modeling_internvl_chat.InternVLChatModel",
    "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel",
}


def _hub_like_folder(tmp_path: Path, case: str) -> Path:
    """A held-out checkpoint as the Hub ships it: `auto_map`, `llm_config.attn_implementation: flash_attention_2`,
    `vision_config.use_flash_attn: true`, remote-code files next to the weights; here every code file raises when
    imported, so a load that runs remote code fails."""
    folder = tmp_path / case
    shutil.copytree(HELDOUT_S6 / case, folder, ignore=shutil.ignore_patterns("io.safetensors", "outputs.json"))
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = AUTO_MAP
    config["llm_config"]["attn_implementation"] = "flash_attention_2"
    config["vision_config"]["use_flash_attn"] = True
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    for name in REMOTE_CODE_FILES:
        (folder / name).write_text(f"raise RuntimeError('remote code imported: {name}')\n")
    return folder


def _remote_modules(folder: Path) -> list[str]:
    return [name for name in sys.modules if name.startswith("transformers_modules") and folder.name in name]


def _package_class(obj) -> str:
    return type(obj).__module__.split(".")[0]


@pytest.mark.parametrize(
    "case",
    [pytest.param("internlm2-dynamic", marks=pytest.mark.slow), "llama3-hermes"],  # ~13 s / ~3 s on CPU
)
def test_model_card_loading_with_trust_remote_code_uses_this_package(tmp_path, monkeypatch, case):
    """`AutoModel.from_pretrained(path, torch_dtype=torch.bfloat16, low_cpu_mem_usage=True, use_flash_attn=True,
    trust_remote_code=True).eval()` and `AutoTokenizer.from_pretrained(path, trust_remote_code=True, use_fast=False)`
    as the model cards write them: this package's classes, nothing of the folder's code imported, and the two-turn
    chat answers of the original implementation (recorded on the same checkpoint, `heldout_s6/<case>/outputs.json`)."""
    from transformers import AutoImageProcessor, AutoTokenizer

    monkeypatch.setattr("builtins.input", lambda *args: pytest.fail("prompted for trust_remote_code"))
    folder = _hub_like_folder(tmp_path, case)
    model = AutoModel.from_pretrained(
        folder, torch_dtype=torch.float32, low_cpu_mem_usage=True, use_flash_attn=True, trust_remote_code=True
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True, use_fast=False)
    assert isinstance(model, InternVLChatModel)
    assert _package_class(tokenizer) in ("transformers", "transformers_internvl")
    assert model.config.text_config._attn_implementation == "eager"  # the original's fallback without flash-attn
    assert _remote_modules(folder) == []

    meta = json.loads((HELDOUT_S6 / case / "outputs.json").read_text(encoding="utf-8"))
    processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    pixel_list = [
        processor(images=make_image(w, h, seed), max_dynamic_patch=max_num, return_tensors="pt")["pixel_values"]
        for w, h, seed, max_num in meta["case"]["images"]
    ]
    generation_config = dict(max_new_tokens=meta["case"]["max_new_tokens"], do_sample=False)
    num_patches_list = [p.shape[0] for p in pixel_list]
    answer1, history = model.chat(
        tokenizer,
        torch.cat(pixel_list),
        meta["chat"]["turn1"],
        dict(generation_config),
        num_patches_list=num_patches_list,
        history=None,
        return_history=True,
    )
    answer2, history = model.chat(
        tokenizer,
        torch.cat(pixel_list),
        meta["chat"]["turn2"],
        dict(generation_config),
        num_patches_list=num_patches_list,
        history=history,
        return_history=True,
    )
    assert (answer1, answer2) == (meta["chat"]["answer1"], meta["chat"]["answer2"])


def test_every_factory_with_trust_remote_code_gives_this_package(tmp_path, monkeypatch):
    """AutoConfig, AutoModel.from_config, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor,
    AutoImageProcessor and `pipeline("image-text-to-text", ..., trust_remote_code=True)` on a folder whose remote
    code cannot be imported."""
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
        pipeline,
    )

    monkeypatch.setattr("builtins.input", lambda *args: pytest.fail("prompted for trust_remote_code"))
    folder = _hub_like_folder(tmp_path, "internlm2-dynamic")
    loaded = {
        "AutoConfig": AutoConfig.from_pretrained(folder, trust_remote_code=True),
        "AutoModelForCausalLM": AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True),
        "AutoModel.from_config": AutoModel.from_config(
            AutoConfig.from_pretrained(folder, trust_remote_code=True), trust_remote_code=True
        ),
        "AutoModelForImageTextToText": AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True),
        "AutoProcessor": AutoProcessor.from_pretrained(folder, trust_remote_code=True),
        "AutoImageProcessor": AutoImageProcessor.from_pretrained(folder, trust_remote_code=True),
        "pipeline": pipeline("image-text-to-text", model=str(folder), trust_remote_code=True).model,
    }
    assert {name: _package_class(obj) for name, obj in loaded.items()} == dict.fromkeys(loaded, "transformers_internvl")
    assert _package_class(loaded["AutoProcessor"].tokenizer) == "transformers_internvl"  # InternLM2 tokenizer
    assert _remote_modules(folder) == []


# ---------------------------------------------------------------------------------------------------------------------
# The model cards' chat flows against the original (fixtures/migration_s8, recorded by the original code)
# ---------------------------------------------------------------------------------------------------------------------

MIGRATION_S8 = FIXTURES / "migration_s8"
RECORDED = json.loads((MIGRATION_S8 / "outputs.json").read_text(encoding="utf-8"))
# The model cards' dtype for every case; float32 for one (all six records pass; the others cost ~25 s more on CPU).
FLOW_CASES = [
    pytest.param(key, marks=pytest.mark.slow) if key.startswith("phi3") else key
    for key in sorted(RECORDED)
    if key.endswith("/bfloat16") or key == "qwen2-v1-sl2/float32"
]


def _two_turns(model, tokenizer, pixel_values, questions, config, **kwargs):
    answer1, history = model.chat(
        tokenizer, pixel_values, questions[0], dict(config), history=None, return_history=True, **kwargs
    )
    answer2, _ = model.chat(
        tokenizer, pixel_values, questions[1], dict(config), history=history, return_history=True, **kwargs
    )
    return [answer1, answer2]


@pytest.mark.parametrize("key", FLOW_CASES)
def test_model_card_flows_give_the_original_answers(key, monkeypatch):
    """One model object loaded as the model cards load it, then, in the generator's order (`make_migration_s8.py`):
    a two-turn pure-text chat, two images in one `pixel_values` without `num_patches_list`, a video chat with
    `Frame{i}: <image>` prefixes, and sampling under `torch.manual_seed` (do_sample alone, with transformers 4's
    implicit top_k=50; temperature + top_p; top_k) and beam search."""
    from transformers import AutoImageProcessor, AutoTokenizer

    case, dtype_name = key.split("/")
    expected = RECORDED[key]
    dtype = getattr(torch, dtype_name)
    torch.set_num_threads(1)
    folder = HELDOUT_S6 / case
    model = AutoModel.from_pretrained(folder, torch_dtype=dtype, low_cpu_mem_usage=True, use_flash_attn=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, use_fast=False)
    processor = AutoImageProcessor.from_pretrained(folder)

    def tiles(width, height, seed, max_num):
        image = make_image(width, height, seed)
        return processor(images=image, max_dynamic_patch=max_num, return_tensors="pt")["pixel_values"].to(dtype)

    pixel_list = [tiles(*image) for image in ((900, 500, 11, 6), (300, 640, 12, 6))]
    frames = [tiles(320, 240, 100 + k, 1) for k in range(8)]
    assert [p.shape[0] for p in pixel_list] == expected["num_patches_list"]
    greedy = {"max_new_tokens": 8, "do_sample": False}
    questions = {
        "text": ("Hello, who are you?", "Can you tell me a story?"),
        "combined": ("<image>\nDescribe the two images in detail.", "What are the similarities and differences?"),
    }
    assert _two_turns(model, tokenizer, None, questions["text"], greedy) == expected["text"]
    assert _two_turns(model, tokenizer, torch.cat(pixel_list), questions["combined"], greedy) == expected["combined"]
    prefix = "".join(f"Frame{i + 1}: <image>\n" for i in range(len(frames)))
    video = (prefix + "What is the red panda doing?", "Describe this video in detail.")
    answers = _two_turns(model, tokenizer, torch.cat(frames), video, greedy, num_patches_list=[1] * len(frames))
    assert answers == expected["video"]
    sampled = []
    for settings in (
        {"do_sample": True},
        {"do_sample": True, "temperature": 0.7, "top_p": 0.9},
        {"do_sample": True, "top_k": 5},
        {"do_sample": False, "num_beams": 2},
    ):
        torch.manual_seed(1234)
        config = {"max_new_tokens": 8, **settings}
        sampled.append(model.chat(tokenizer, pixel_list[0], "<image>\nPlease describe the image shortly.", config))
    assert sampled == expected["sampled"]


def test_without_torch_dtype_the_checkpoint_dtype_is_used(tmp_path):
    """README: a script without `torch_dtype` gets the dtype config.json names (transformers 5's `dtype="auto"`
    default; the original under transformers 4 loaded float32), and `dtype=torch.float32` gives the original's."""
    folder = original_model_dir(tmp_path / "bf16", tokenizer=None)
    config = json.loads((folder / "config.json").read_text())
    for part in (config, config["llm_config"], config["vision_config"]):
        part["torch_dtype"] = "bfloat16"
    (folder / "config.json").write_text(json.dumps(config))
    assert AutoModel.from_pretrained(folder).dtype == torch.bfloat16
    assert AutoModel.from_pretrained(folder, dtype=torch.float32).dtype == torch.float32
