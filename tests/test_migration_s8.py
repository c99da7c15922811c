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
